/* train.c: `ddpm train DATA_DIR`: flags -> ddpm_run_options -> ddpm_run; the
 * terminal progress, the plain lines and the JSON summary are written here. */
#include <cJSON.h>
#include <getopt.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "cli.h"
#include "ddpm/dist.h"
#include "ddpm/error.h"
#include "ddpm/run.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    if (stop_requested) /* a second Ctrl-C stops at once */
        _exit(130);
    stop_requested = 1;
}

typedef struct {
    const ddpm_run_options *o;
    int tty;
    int line_open; /* a progress line without its newline is on the terminal */
} progress_ctx;

static void format_duration(char *buf, size_t size, double seconds)
{
    if (!(seconds >= 0) || seconds > 1e8) {
        snprintf(buf, size, "?");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

static void on_started(void *ctx, const ddpm_run_start *s)
{
    const progress_ctx *p = ctx;
    char procs[64] = "", micro[64] = "";
    if (s->n_processes > 1)
        snprintf(procs, sizeof procs, "%d processes x ", s->n_processes);
    if (s->micro_batch < s->batch)
        snprintf(micro, sizeof micro, " (micro-batch %d)", s->micro_batch);
    fprintf(stderr, "ddpm: %s%s: %d images %dx%dx%d, model %zu parameters, batch %d%s, %s%d threads\n",
            s->resumed ? "resuming " : "training on ", p->o->data_dir, s->n_images, s->channels, s->image_size,
            s->image_size, s->n_params, s->batch, micro, procs, omp_get_max_threads());
    char mult[64], attn[64];
    ddpm_format_int_list(mult, sizeof mult, s->model->ch_mult, s->model->n_levels);
    ddpm_format_int_list(attn, sizeof attn, s->model->attn_res, s->model->n_attn);
    fprintf(stderr, "ddpm: model --ch %d --ch-mult %s --attn '%s' --groups %d --res-blocks %d --dropout %g\n",
            s->model->ch, mult, attn, s->model->groups, s->model->num_res_blocks, s->model->dropout);
    if (s->resumed)
        fprintf(stderr, "ddpm: continuing from step %ld\n", s->start_step);
}

/* One line per report: rewritten in place on a terminal, appended otherwise. */
static void on_progress(void *ctx, const ddpm_run_progress *r)
{
    progress_ctx *p = ctx;
    char eta_s[32], el_s[32], total[32] = "";
    format_duration(eta_s, sizeof eta_s, r->eta_seconds);
    format_duration(el_s, sizeof el_s, r->session_seconds);
    if (r->stop_step)
        snprintf(total, sizeof total, "/%ld", r->stop_step);
    fprintf(stderr, "%sstep %ld%s  loss %.4f  %.1f img/s  elapsed %s  ETA %s%s", p->tty ? "\r\033[K" : "", r->step,
            total, r->loss, r->images_per_sec, el_s, eta_s, p->tty ? "" : "\n");
    fflush(stderr);
    p->line_open = p->tty;
}

static void on_warning(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "ddpm: warning: %s\n", line);
}

static void print_summary(const ddpm_run_summary *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return;
    cJSON_AddNumberToObject(o, "step", (double)s->step);
    cJSON_AddNumberToObject(o, "loss", s->loss);
    cJSON_AddStringToObject(o, "checkpoint", s->checkpoint);
    cJSON_AddBoolToObject(o, "interrupted", s->interrupted);
    cJSON_AddNumberToObject(o, "elapsed", s->elapsed_seconds);
    char *text = cJSON_PrintUnformatted(o);
    if (text)
        printf("%s\n", text);
    free(text);
    cJSON_Delete(o);
}

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddpm train DATA_DIR [options]\n"
"\n"
"Trains a U-Net (DDPM, Ho et al. 2020, Algorithm 1: eps prediction and L_simple\n"
"unless --prediction or --loss say otherwise) on the images under DATA_DIR\n"
"(searched recursively; PNG, JPEG, BMP, TGA, GIF, PSD, HDR, PNM). Writes\n"
"RUN_DIR/checkpoint.safetensors, RUN_DIR/log.jsonl and preview grids in\n"
"RUN_DIR/samples/. Ctrl-C (SIGINT, SIGTERM or SIGUSR1) saves a checkpoint\n"
"and stops; --resume continues.\n"
"\n"
"run:\n"
"  --out DIR            run folder (default runs/ddpm); refused if it holds a run\n"
"  --resume             continue the run in --out exactly where it stopped; the\n"
"                       model, schedule and optimiser come from its checkpoint\n"
"  --steps N            stop at total step N\n"
"  --epochs E           stop after E epochs in total (default 1 when no stop\n"
"                       condition is given; --resume alone keeps the run's own)\n"
"  --minutes M          stop after M more minutes of training\n"
"  --allow-data-change  with --resume: continue on a DATA_DIR other than the\n"
"                       run's (default: refused; files, sizes and names differ)\n"
"  --save-every N       checkpoint every N steps (default 500; 0: at the end only)\n"
"  --sample-every N     preview grid every N steps (default 0: at the end only)\n"
"  --preview-n N        images in a preview grid (default 64; 0: no previews)\n"
"  --preview-steps S    DDIM steps (eta 1) of a preview, from the EMA weights\n"
"                       (default 50)\n"
"  --log-every N        log.jsonl line and progress line every N steps (default 50)\n"
"  --eval-dir DIR       held-out images (of the model's size and channels): every\n"
"                       --eval-every steps, a log.jsonl line {step, eval_n,\n"
"                       eval_l_simple, eval_l_simple_stderr} with the held-out\n"
"                       L_simple of the EMA weights on the same --eval-n images\n"
"                       and noise each time (default: no evaluation)\n"
"  --eval-every N       steps between evaluations (default 500)\n"
"  --eval-n N           held-out images (default 256, or all if fewer); costs N\n"
"                       forward passes per evaluation\n"
"  --eval-mc K          also the bound in bits/dim by `ddpm eval --mc K` (eval_bpd,\n"
"                       eval_bpd_stderr); costs (K+1) N passes (default 0: off)\n"
"  --threads N          threads for OpenMP and OpenBLAS, per process (default:\n"
"                       all cores, divided among the processes on this machine)\n"
"  --strict             a file under DATA_DIR that is not an image is an error\n"
"                       (default: skipped with a warning)\n"
"  --quiet              no progress output\n"
"  --json               print a JSON summary on stdout at the end\n"
"data:\n"
"  --size S             image side in pixels (default: the shorter side of the\n"
"                       most common image size in DATA_DIR). Every image, square\n"
"                       or not, is centre-cropped to its largest square, then\n"
"                       resized to S x S (a 640x480 photo keeps its middle\n"
"                       480x480)\n"
"  --channels C         1 or 3 (default: 1 if every pixel of every image has\n"
"                       R = G = B, so gray pictures saved as RGB train as gray)\n"
"  --flip               random horizontal flips (default off)\n"
"  --classes            class-conditional: DATA_DIR holds one subfolder per class\n"
"                       (as `ddpm convert --labels` writes them); the classes are\n"
"                       the subfolder names, sorted (numerically when all are\n"
"                       numbers) and stored in the checkpoint. Adds a learned\n"
"                       class embedding to the timestep embedding (default off:\n"
"                       unconditional)\n"
"  --cond-drop P        with --classes: probability that an image's label is\n"
"                       dropped for classifier-free guidance (default 0.1)\n");
    fprintf(f,
"model (docs/design.md, The network). Each flag not given is chosen from the\n"
"image side S and channels (explicit flags always win):\n"
"  levels: halve S while it stays whole and >= 7 px (lowest resolution 7..13 px);\n"
"  --ch-mult 1,2,2... (1 then 2s; 1,1,2,2,... from 5 levels); --ch 32 up to 32 px,\n"
"  64 above; --attn the level's resolution nearest 16; --groups the largest of\n"
"  8,4,2,1 dividing --ch. So 28 px: ch 32, 1,2,2, attn 14; 32 px: ch 32, 1,2,2,\n"
"  attn 16; 64 px: ch 64, 1,2,2,2, attn 16; 128 px: ch 64, 1,1,2,2,2, attn 16.\n"
"  A size that the levels cannot halve (e.g. --size 30 with --ch-mult 1,2,2)\n"
"  is refused.\n"
"  --ch N               base channels (default: from S, see above)\n"
"  --ch-mult LIST       channel multiplier per level (default: from S)\n"
"  --res-blocks N       ResBlocks per level (default 2)\n"
"  --attn LIST          resolutions with self-attention, '' for none (default:\n"
"                       from S)\n"
"  --groups N           GroupNorm groups (default: from --ch)\n"
"  --dropout P          dropout in ResBlocks (default 0.1)\n"
"diffusion:\n"
"  --timesteps T        diffusion steps (default 1000)\n"
"  --schedule NAME      linear or cosine (default linear)\n"
"  --beta-start B       linear schedule's first beta (default 1e-4)\n"
"  --beta-end B         linear schedule's last beta (default 0.02)\n"
    );
    fprintf(f,
"objective (README, Experiments):\n"
"  --prediction KIND    what the network predicts: eps (default), x0, v, or mu\n"
"                       (the posterior mean mu~, the DDPM paper's baseline)\n"
"  --loss KIND          simple (default: L_simple, the MSE to the prediction's\n"
"                       target), vlb (the variational bound with sigma_t^2 =\n"
"                       beta_t: KL terms and the discretized decoder, in nats\n"
"                       per dimension, times T), or hybrid (simple + lambda vlb)\n"
"  --vlb-weight L       lambda of --loss hybrid (default 0.001)\n"
"  --learn-sigma        learn the reverse variances (Nichol & Dhariwal 2021): the\n"
"                       network also outputs v, and sigma^2 = exp((1+v)/2 log\n"
"                       beta_t + (1-v)/2 log beta~_t) per value; needs --loss vlb\n"
"                       (the bound trains mean and variance: the DDPM paper's\n"
"                       learned diagonal Sigma) or hybrid (L_simple trains the\n"
"                       mean, lambda vlb only the variance). ddpm sample and\n"
"                       ddpm eval use the learned variances by default\n"
"  --snr-weighting min-snr:G  weight each image's MSE by min-SNR-gamma with\n"
"                       gamma G (Hang et al. 2023; eps, x0 or v; default off)\n"
"  --t-sampling KIND    how each image's t is drawn: uniform (default) or\n"
"                       importance (Nichol & Dhariwal 2021, sec. 3.3; --loss vlb\n"
"                       or hybrid only): p_t proportional to sqrt(E[L_t^2]) over\n"
"                       the last 10 values of step t's term, mixed with 0.001\n"
"                       uniform so every p_t >= 0.001/T, and each image's term\n"
"                       weighted by 1/(T p_t): an unbiased estimate of the same\n"
"                       objective. t stays uniform until every t has 10 values\n"
"                       (about 23,000 images at T 1000: 360 steps of batch 64).\n"
"                       With hybrid the whole term (MSE + lambda vlb) is sampled\n"
"                       and weighted. The history is saved in the checkpoint;\n"
"                       the logged loss is the weighted estimate\n"
"optimiser:\n"
"  --batch N            images per step (default 32; docs/defaults.md)\n"
"  --micro-batch N      images per forward/backward pass (default: the whole\n"
"                       batch); gradients of the chunks are summed into one\n"
"                       step, the same update up to float rounding, with\n"
"                       activation memory for N images; may change on --resume\n"
"  --lr LR              Adam learning rate after warm-up (default 1e-3)\n"
"  --warmup N           steps of linear learning-rate warm-up (default 100)\n"
"  --lr-schedule NAME   learning rate after the warm-up: constant (default) or\n"
"                       cosine, a half cosine from --lr down to --lr-min at the\n"
"                       run's final step, the stop step of --steps/--epochs\n"
"                       (cosine needs one of them; a --minutes limit may stop\n"
"                       the run before that step). Fixed in the checkpoint: a\n"
"                       resumed run keeps it and stays at --lr-min past its end\n"
"  --lr-min LR          cosine's final learning rate (default 0)\n"
"  --clip X             max global gradient norm (default 1.0; 0: off)\n"
"  --ema D              EMA decay, warmed up as min(D, (1+n)/(10+n)) (default\n"
"                       0.999; 0: EMA = raw weights)\n"
"  --seed N             seed of every random choice (default 0)\n"
"\n"
"Same flags, same seed: the same checkpoint, bit for bit, whatever --threads\n"
"is (on the same machine and OpenBLAS kernels; --micro-batch and the process\n"
"count under mpirun change the order of float sums, so the last bits).\n"
"Under mpirun (README: Training on several processes or machines), each\n"
"process computes its share of every --batch; process 0 writes the run folder\n"
"and prints progress.\n"
"exit codes: 0 done or interrupted (checkpoint saved), 1 error, 2 usage,\n"
"            3 diverged (NaN or infinite loss; the last checkpoint is kept)\n");
}

enum {
    O_OUT = 256, O_RESUME, O_STEPS, O_EPOCHS, O_MINUTES, O_SAVE_EVERY, O_SAMPLE_EVERY, O_PREVIEW_N,
    O_PREVIEW_STEPS, O_LOG_EVERY, O_EVAL_DIR, O_EVAL_EVERY, O_EVAL_N, O_EVAL_MC, O_THREADS, O_STRICT, O_QUIET,
    O_JSON, O_HELP, O_ALLOW_DATA_CHANGE, O_MICRO_BATCH,
    /* flags that define the run: refused with --resume */
    O_FIRST_RUN_FLAG, O_MODEL = O_FIRST_RUN_FLAG, O_FLIP, O_SCHEDULE, O_BETA_START, O_BETA_END, O_BATCH, O_LR, O_WARMUP, O_CLIP,
    O_EMA, O_SEED, O_LR_SCHEDULE, O_LR_MIN, O_PREDICTION, O_LOSS, O_VLB_WEIGHT, O_SNR, O_CLASSES, O_COND_DROP,
    O_T_SAMPLING, O_LEARN_SIGMA,
};

/* The default thread count of one of the processes of a run on this machine. */
static int default_threads(void)
{
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int n_local = local ? atoi(local) : 1, cores = omp_get_num_procs();
    if (ddpm_dist_size() == 1 || n_local <= 1)
        return 0; /* OpenMP's own default */
    return cores / n_local > 1 ? cores / n_local : 1;
}

static int train_main(int argc, char **argv);

int cmd_train(int argc, char **argv)
{
    if (ddpm_dist_init(&argc, &argv)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    int code = train_main(argc, argv);
    ddpm_dist_finalize();
    return code;
}

static int train_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"out", required_argument, 0, O_OUT}, {"resume", no_argument, 0, O_RESUME},
        {"steps", required_argument, 0, O_STEPS}, {"epochs", required_argument, 0, O_EPOCHS},
        {"minutes", required_argument, 0, O_MINUTES}, {"save-every", required_argument, 0, O_SAVE_EVERY},
        {"sample-every", required_argument, 0, O_SAMPLE_EVERY}, {"preview-n", required_argument, 0, O_PREVIEW_N},
        {"preview-steps", required_argument, 0, O_PREVIEW_STEPS}, {"log-every", required_argument, 0, O_LOG_EVERY},
        {"eval-dir", required_argument, 0, O_EVAL_DIR}, {"eval-every", required_argument, 0, O_EVAL_EVERY},
        {"eval-n", required_argument, 0, O_EVAL_N}, {"eval-mc", required_argument, 0, O_EVAL_MC},
        {"threads", required_argument, 0, O_THREADS}, {"strict", no_argument, 0, O_STRICT},
        {"quiet", no_argument, 0, O_QUIET}, {"json", no_argument, 0, O_JSON}, {"help", no_argument, 0, O_HELP},
        {"allow-data-change", no_argument, 0, O_ALLOW_DATA_CHANGE}, {"micro-batch", required_argument, 0, O_MICRO_BATCH},
        ARG_MODEL_LONGOPTS(O_MODEL), {"flip", no_argument, 0, O_FLIP},
        {"schedule", required_argument, 0, O_SCHEDULE}, {"beta-start", required_argument, 0, O_BETA_START},
        {"beta-end", required_argument, 0, O_BETA_END}, {"batch", required_argument, 0, O_BATCH},
        {"lr", required_argument, 0, O_LR}, {"warmup", required_argument, 0, O_WARMUP},
        {"clip", required_argument, 0, O_CLIP}, {"ema", required_argument, 0, O_EMA},
        {"seed", required_argument, 0, O_SEED}, {"lr-schedule", required_argument, 0, O_LR_SCHEDULE},
        {"lr-min", required_argument, 0, O_LR_MIN},
        {"prediction", required_argument, 0, O_PREDICTION},
        {"loss", required_argument, 0, O_LOSS}, {"vlb-weight", required_argument, 0, O_VLB_WEIGHT},
        {"snr-weighting", required_argument, 0, O_SNR}, {"classes", no_argument, 0, O_CLASSES},
        {"cond-drop", required_argument, 0, O_COND_DROP}, {"t-sampling", required_argument, 0, O_T_SAMPLING},
        {"learn-sigma", no_argument, 0, O_LEARN_SIGMA}, {0, 0, 0, 0},
    };
    ddpm_run_options o;
    ddpm_run_options_default(&o);
    int quiet = 0, json = 0, threads = 0, opt, bad = 0, longindex = -1;
    const char *run_flag_given = NULL;
    int lr_min_given = 0;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        if (opt >= O_FIRST_RUN_FLAG && !run_flag_given && longindex >= 0)
            run_flag_given = longopts[longindex].name;
        switch (opt) {
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_OUT: o.out_dir = optarg; break;
        case O_RESUME: o.resume = 1; break;
        case O_STEPS: bad |= arg_long("steps", optarg, 1, 1000000000L, &o.steps); break;
        case O_EPOCHS: bad |= arg_double("epochs", optarg, 1e-9, 1e6, &o.epochs); break;
        case O_MINUTES: bad |= arg_double("minutes", optarg, 1e-9, 1e7, &o.minutes); break;
        case O_SAVE_EVERY: bad |= arg_long("save-every", optarg, 0, 1000000000L, &o.save_every); break;
        case O_SAMPLE_EVERY: bad |= arg_long("sample-every", optarg, 0, 1000000000L, &o.sample_every); break;
        case O_PREVIEW_N: bad |= arg_int("preview-n", optarg, 0, 4096, &o.preview_n); break;
        case O_PREVIEW_STEPS: bad |= arg_int("preview-steps", optarg, 1, 100000, &o.preview_steps); break;
        case O_LOG_EVERY: bad |= arg_long("log-every", optarg, 1, 1000000000L, &o.log_every); break;
        case O_EVAL_DIR: o.eval_dir = optarg; break;
        case O_EVAL_EVERY: bad |= arg_long("eval-every", optarg, 1, 1000000000L, &o.eval_every); break;
        case O_EVAL_N: bad |= arg_int("eval-n", optarg, 1, 100000000, &o.eval_n); break;
        case O_EVAL_MC: bad |= arg_int("eval-mc", optarg, 0, 1000000, &o.eval_mc); break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &threads); break;
        case O_STRICT: o.strict = 1; break;
        case O_MICRO_BATCH: bad |= arg_int("micro-batch", optarg, 1, 65536, &o.micro_batch); break;
        case O_QUIET: quiet = 1; break;
        case O_JSON: json = 1; break;
        case O_ALLOW_DATA_CHANGE: o.allow_data_change = 1; break;
        case O_MODEL:
            bad |= arg_model_flag(longopts[longindex].name, optarg, &o.cfg) != 0;
            break;
        case O_FLIP: o.cfg.flip = 1; break;
        case O_SCHEDULE:
            if (ddpm_schedule_parse(optarg, &o.cfg.schedule)) {
                cli_error("--schedule: '%s' is not linear or cosine", optarg);
                bad = 1;
            }
            break;
        case O_BETA_START: bad |= arg_double("beta-start", optarg, 1e-12, 0.999, &o.cfg.beta_start); break;
        case O_BETA_END: bad |= arg_double("beta-end", optarg, 1e-12, 0.999, &o.cfg.beta_end); break;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &o.cfg.batch); break;
        case O_LR: bad |= arg_float("lr", optarg, 1e-12, 10, &o.cfg.optim.lr); break;
        case O_WARMUP: bad |= arg_int("warmup", optarg, 0, 1 << 30, &o.cfg.optim.warmup); break;
        case O_CLIP: bad |= arg_float("clip", optarg, 0, 1e30, &o.cfg.optim.clip); break;
        case O_EMA: bad |= arg_float("ema", optarg, 0, 0.999999, &o.cfg.optim.ema_decay); break;
        case O_SEED: bad |= arg_u64("seed", optarg, &o.cfg.seed); break;
        case O_LEARN_SIGMA: o.cfg.model.learn_sigma = 1; break;
        case O_PREDICTION:
            if (ddpm_prediction_parse(optarg, &o.cfg.model.prediction)) {
                cli_error("--prediction: '%s' is not eps, x0, v or mu", optarg);
                bad = 1;
            }
            break;
        case O_LOSS:
            if (ddpm_loss_parse(optarg, &o.cfg.loss.kind)) {
                cli_error("--loss: '%s' is not simple, vlb or hybrid", optarg);
                bad = 1;
            }
            break;
        case O_T_SAMPLING:
            if (ddpm_t_sampling_parse(optarg, &o.cfg.t_sampling)) {
                cli_error("--t-sampling: '%s' is not uniform or importance", optarg);
                bad = 1;
            }
            break;
        case O_CLASSES: o.classes = 1; break;
        case O_COND_DROP: bad |= arg_float("cond-drop", optarg, 0, 1, &o.cfg.cond_drop); break;
        case O_VLB_WEIGHT: bad |= arg_float("vlb-weight", optarg, 0, 1e6, &o.cfg.loss.vlb_weight); break;
        case O_SNR:
            if (strncmp(optarg, "min-snr:", 8)) {
                cli_error("--snr-weighting: '%s' is not min-snr:GAMMA", optarg);
                bad = 1;
            } else {
                bad |= arg_float("snr-weighting", optarg + 8, 1e-6, 1e6, &o.cfg.loss.snr_gamma);
            }
            break;
        case O_LR_SCHEDULE:
            if (ddpm_lr_schedule_parse(optarg, &o.cfg.optim.lr_schedule)) {
                cli_error("--lr-schedule: '%s' is not constant or cosine", optarg);
                bad = 1;
            }
            break;
        case O_LR_MIN: bad |= arg_float("lr-min", optarg, 0, 10, &o.cfg.optim.lr_min); lr_min_given = 1; break;
        default:
            cli_error("train: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("train");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        cli_error(optind >= argc ? "train: missing DATA_DIR" : "train: expected one DATA_DIR, got '%s' too",
                  optind < argc ? argv[optind + 1] : "");
        return cli_usage_error("train");
    }
    char ckpt[4200];
    snprintf(ckpt, sizeof ckpt, "%s/%s", o.out_dir, DDPM_CHECKPOINT_FILE);
    if (o.resume && run_flag_given && access(ckpt, F_OK) == 0) { /* without a checkpoint, the flags start it */
        cli_error("train: --%s cannot be changed on --resume (the run's config is in its checkpoint)", run_flag_given);
        return DDPM_EXIT_USAGE;
    }
    if (!o.resume && (ddpm_loss_config_check(&o.cfg.loss, o.cfg.model.prediction, o.cfg.model.learn_sigma) ||
                      ddpm_t_sampling_check(o.cfg.t_sampling, o.cfg.loss.kind))) {
        cli_error("train: %s", ddpm_last_error());
        return DDPM_EXIT_USAGE;
    }
    if (lr_min_given && o.cfg.optim.lr_schedule != DDPM_LR_COSINE) {
        cli_error("train: --lr-min applies to --lr-schedule cosine");
        return DDPM_EXIT_USAGE;
    }
    if (o.cfg.optim.lr_min > o.cfg.optim.lr) {
        cli_error("train: --lr-min %g is above --lr %g", o.cfg.optim.lr_min, o.cfg.optim.lr);
        return DDPM_EXIT_USAGE;
    }
    o.data_dir = argv[optind];
    cli_set_threads(threads ? threads : default_threads());
    int rank = ddpm_dist_rank();
    stop_requested = 0;
    o.stop = &stop_requested;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL); /* mpirun forwards it to every process */
    progress_ctx pc = {&o, isatty(fileno(stderr)), 0};
    ddpm_run_callbacks cb = {&pc, NULL, NULL, NULL};
    if (!quiet && rank == 0) /* one voice for a run of several processes */
        cb = (ddpm_run_callbacks){&pc, on_started, on_progress, on_warning};
    ddpm_run_summary summary;
    int rc = ddpm_run(&o, &cb, &summary);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    if (pc.line_open)
        fputc('\n', stderr);
    if (rc) {
        /* A failure every process saw (divergence) is told by process 0; one
           process's own failure by that process, naming it; DDPM_EPEER (another
           one failed) is silent: the failing process has said why. */
        if (ddpm_dist_size() == 1)
            cli_error("%s", ddpm_last_error());
        else if (rc != DDPM_EPEER && (rank == 0 || rc != DDPM_ENAN))
            cli_error("process %d of %d: %s", rank, ddpm_dist_size(), ddpm_last_error());
        return rc == DDPM_ENAN ? DDPM_EXIT_DIVERGED : rc == DDPM_EUSAGE ? DDPM_EXIT_USAGE : DDPM_EXIT_ERROR;
    }
    if (rank > 0)
        return DDPM_EXIT_OK;
    if (!quiet) {
        if (summary.preview[0])
            fprintf(stderr, "ddpm: preview grid (EMA weights, DDIM %d steps, eta 1): %s\n", o.preview_steps,
                    summary.preview);
        if (summary.interrupted)
            fprintf(stderr,
                    "ddpm: interrupted at step %ld; checkpoint saved. Continue with: ddpm train %s --out %s --resume\n",
                    summary.step, o.data_dir, o.out_dir);
        else
            fprintf(stderr, "ddpm: done at step %ld; checkpoint: %s\n", summary.step, summary.checkpoint);
    }
    if (json)
        print_summary(&summary);
    return DDPM_EXIT_OK;
}
