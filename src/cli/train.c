/* train.c: `ddpm train DATA_DIR`: flags -> ddpm_run_options -> ddpm_run; the
 * terminal progress, the plain lines and the JSON summary are written here. */
#include <cJSON.h>
#include <getopt.h>
#include <omp.h>
#include <signal.h>
#include <stddef.h>
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
    int quiet;     /* no start lines, no progress (warnings still) */
    int resumed;   /* from on_started: the run continued from its checkpoint ... */
    long start_step; /* ... at this step */
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
    progress_ctx *p = ctx;
    p->resumed = s->resumed;
    p->start_step = s->start_step;
    if (p->quiet)
        return;
    char procs[64] = "", micro[64] = "";
    if (s->n_processes > 1)
        snprintf(procs, sizeof procs, "%d processes x ", s->n_processes);
    if (s->micro_batch < s->batch)
        snprintf(micro, sizeof micro, " (micro-batch %d)", s->micro_batch);
    fprintf(stderr, "ddpm: %s%s: %d images %dx%dx%d, model %zu parameters, batch %d%s, %s%d threads\n",
            s->resumed ? "resuming " : "training on ", cli_q(p->o->data_dir), s->n_images, s->channels, s->image_size,
            s->image_size, s->n_params, s->batch, micro, procs, omp_get_max_threads());
    char mult[64], attn[64];
    ddpm_format_int_list(mult, sizeof mult, s->model->ch_mult, s->model->n_levels);
    ddpm_format_int_list(attn, sizeof attn, s->model->attn_res, s->model->n_attn);
    fprintf(stderr, "ddpm: model --ch %d --ch-mult %s --attn '%s' --groups %d --res-blocks %d --dropout %g%s\n",
            s->model->ch, mult, attn, s->model->groups, s->model->num_res_blocks, s->model->dropout,
            s->precision == DDPM_PRECISION_BF16 ? " --precision bf16" : "");
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
    progress_ctx *p = ctx;
    if (p->line_open && !cli_warnings_off) /* a progress line is open on the terminal */
        fputc('\n', stderr);
    p->line_open = 0;
    cli_warn("%s", line);
}

static void on_fid(void *ctx, long step, int n, double fid, double seconds)
{
    progress_ctx *p = ctx;
    fprintf(stderr, "%sddpm: step %ld: FID %.4f of %d samples of the EMA weights (%.1f s)\n", p->line_open ? "\n" : "",
            step, fid, n, seconds);
    p->line_open = 0;
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

/* Everything `ddpm train` parses: the run's options (the run config's rows of
 * options.h, at o.cfg) and the session's (below, at the rest). */
typedef struct {
    ddpm_run_options o;
    int threads, quiet, json, help;
    int no_warnings; /* main() takes --no-warnings out of argv (term.h); the row is for --help */
} train_args;

#define SOFF(field) offsetof(train_args, field)
#define NO_DEFAULT "" /* def_text of a flag whose absence means "not given" */

static const char *sampler_name(int k) { return ddpm_sampler_name((ddpm_sampler_kind)k); }
static const char *spacing_name(int k) { return ddpm_spacing_name((ddpm_spacing)k); }

/* The flags of one session of a run: not in the checkpoint, so they may change
 * on --resume (except --classes, which decides the model). Their defaults are
 * ddpm_run_options_default's (--help reads them from it). */
static const ddpm_option session_options[] = {
    {.name = "out", .metavar = "DIR", .type = DDPM_OPT_STRING, .offset = SOFF(o.out_dir), .group = "run",
     .help = "run folder; refused if it holds a run"},
    {.name = "resume", .type = DDPM_OPT_BOOL, .offset = SOFF(o.resume), .group = "run",
     .help = "continue the run in --out exactly where it stopped; the model, schedule and optimiser come from its "
             "checkpoint"},
    {.name = "steps", .metavar = "N", .type = DDPM_OPT_LONG, .offset = SOFF(o.steps), .min = 1, .max = 1e9,
     .def_text = NO_DEFAULT, .group = "run", .help = "stop at total step N"},
    {.name = "epochs", .metavar = "E", .type = DDPM_OPT_DOUBLE, .offset = SOFF(o.epochs), .min = 1e-9, .max = 1e6,
     .def_text = "1 when no stop condition is given; --resume alone keeps the run's own", .group = "run",
     .help = "stop after E epochs in total"},
    {.name = "minutes", .metavar = "M", .type = DDPM_OPT_DOUBLE, .offset = SOFF(o.minutes), .min = 1e-9,
     .max = 1e7, .def_text = NO_DEFAULT, .group = "run", .help = "stop after M more minutes of training"},
    {.name = "allow-data-change", .type = DDPM_OPT_BOOL, .offset = SOFF(o.allow_data_change), .group = "run",
     .def_text = "refused: files, sizes and names differ",
     .help = "with --resume: continue on a DATA_DIR other than the run's"},
    {.name = "allow-small-data", .type = DDPM_OPT_BOOL, .offset = SOFF(o.allow_small_data), .group = "run",
     .def_text = "refused: fewer images than --batch, or images under 8 px",
     .help = "train on fewer images than one batch or on images smaller than 8 px on a side"},
    {.name = "save-every", .metavar = "N", .type = DDPM_OPT_LONG, .offset = SOFF(o.save_every), .min = 0,
     .max = 1e9, .unit = "steps", .group = "run", .help = "checkpoint every N steps; 0: at the end only"},
    {.name = "sample-every", .metavar = "N", .type = DDPM_OPT_LONG, .offset = SOFF(o.sample_every), .min = 0,
     .max = 1e9, .unit = "steps", .group = "run", .help = "preview grid every N steps; 0: at the end only"},
    {.name = "preview-n", .metavar = "N", .type = DDPM_OPT_INT, .offset = SOFF(o.preview_n), .min = 0, .max = 4096,
     .unit = "images", .group = "run", .help = "images in a preview grid; 0: no previews"},
    {.name = "preview-steps", .metavar = "S", .type = DDPM_OPT_INT, .offset = SOFF(o.preview_steps), .min = 1,
     .max = 100000, .group = "run",
     .help = "steps of a preview (network evaluations for a solver; at most T), from the EMA weights"},
    {.name = "preview-sampler", .metavar = "NAME", .type = DDPM_OPT_ENUM, .offset = SOFF(o.preview_sampler),
     .def = DDPM_SAMPLER_DPMPP_2M_SDE, .name_of = sampler_name, .n_values = DDPM_N_SAMPLERS, .group = "run",
     .help = "the sampler of a preview, any row of `ddpm sample --sampler` (ddim at eta 1), by default `ddpm sample`'s: the same grid as "
             "`ddpm sample RUN_DIR --sampler NAME --steps S --seed SEED`, SEED the run's --seed)"},
    {.name = "preview-spacing", .metavar = "NAME", .type = DDPM_OPT_ENUM, .offset = SOFF(o.preview_spacing),
     .def = DDPM_SPACING_LOGSNR, .name_of = spacing_name, .n_values = DDPM_N_SPACINGS, .group = "run",
     .help = "time, logsnr or karras: where a solver's points fall (as `ddpm sample --spacing`)"},
    {.name = "log-every", .metavar = "N", .type = DDPM_OPT_LONG, .offset = SOFF(o.log_every), .min = 1, .max = 1e9,
     .unit = "steps", .group = "run", .help = "log.jsonl line and progress line every N steps"},
    {.name = "eval-dir", .metavar = "DIR", .type = DDPM_OPT_STRING, .offset = SOFF(o.eval_dir),
     .def_text = "no evaluation", .group = "run",
     .help = "held-out images (of the model's size and channels): every --eval-every steps, a log.jsonl line "
             "{step, eval_n, eval_l_simple, eval_l_simple_stderr} with the held-out L_simple of the EMA weights on "
             "the same --eval-n images and noise each time"},
    {.name = "eval-every", .metavar = "N", .type = DDPM_OPT_LONG, .offset = SOFF(o.eval_every), .min = 1,
     .max = 1e9, .unit = "steps", .group = "run", .help = "steps between evaluations"},
    {.name = "eval-n", .metavar = "N", .type = DDPM_OPT_INT, .offset = SOFF(o.eval_n), .min = 1, .max = 1e8,
     .def_text = "256, or all if fewer", .group = "run",
     .help = "held-out images; costs N forward passes per evaluation"},
    {.name = "eval-mc", .metavar = "K", .type = DDPM_OPT_INT, .offset = SOFF(o.eval_mc), .min = 0, .max = 1e6,
     .group = "run",
     .help = "also the bound in bits/dim by `ddpm eval --mc K` (eval_bpd, eval_bpd_stderr); costs (K+1) N passes; "
             "0: off"},
    {.name = "eval-fid", .metavar = "STATS", .type = DDPM_OPT_STRING, .offset = SOFF(o.eval_fid),
     .def_text = "no FID", .group = "run",
     .help = "statistics of reference images (`ddpm fid --save-stats STATS DIR`): every --eval-every steps and at "
             "the end, a log.jsonl line {step, eval_fid_n, eval_fid} with the FID of --eval-fid-n samples of the EMA "
             "weights, drawn as `ddpm sample` does by default (dpm++2m-sde, at most 20 evaluations) with the run's --seed, "
             "so every evaluation sees the same noise. Statistics made with other Inception weights than --inception "
             "are refused before step 1"},
    {.name = "eval-fid-n", .metavar = "N", .type = DDPM_OPT_INT, .offset = SOFF(o.eval_fid_n), .min = 2,
     .max = 1e7, .unit = "samples", .def_text = "none: required with --eval-fid", .group = "run",
     .help = "samples per FID; costs N samples and N Inception passes (about 1 s each for the full network on 2 "
             "cores, docs/fid.md). FID grows as N shrinks: compare values of the same N only"},
    {.name = "inception", .metavar = "FILE", .type = DDPM_OPT_STRING, .offset = SOFF(o.inception),
     .def_text = "$DDPM_INCEPTION, else ~/.cache/ddpm/" CLI_INCEPTION_NAME, .group = "run",
     .help = "the Inception weights of --eval-fid (as `ddpm fid --inception`)"},
    {.name = "threads", .metavar = "N", .type = DDPM_OPT_INT, .offset = SOFF(threads), .min = 1, .max = 1024,
     .def_text = "all cores, divided among the processes on this machine", .group = "run",
     .help = "threads for OpenMP and OpenBLAS, per process"},
    {.name = "strict", .type = DDPM_OPT_BOOL, .offset = SOFF(o.strict), .def_text = "skipped with a warning",
     .group = "run", .help = "a file under DATA_DIR that is not an image is an error"},
    {.name = "quiet", .type = DDPM_OPT_BOOL, .offset = SOFF(quiet), .group = "run", .help = "no progress output (warnings stay)"},
    {.name = "no-warnings", .type = DDPM_OPT_BOOL, .offset = SOFF(no_warnings), .group = "run",
     .help = "do not print warnings (a skipped file, log lines removed, ...)"},
    {.name = "json", .type = DDPM_OPT_BOOL, .offset = SOFF(json), .group = "run",
     .help = "print a JSON summary on stdout at the end"},
    {.name = "help", .type = DDPM_OPT_BOOL, .offset = SOFF(help), .group = "run", .help = "this text"},
    {.name = "classes", .type = DDPM_OPT_BOOL, .offset = SOFF(o.classes), .def_text = "off: unconditional",
     .group = "data",
     .help = "class-conditional: DATA_DIR holds one subfolder per class (as `ddpm convert --labels` writes them); "
             "the classes are the subfolder names, sorted (numerically when all are numbers) and stored in the "
             "checkpoint. Adds a learned class embedding to the timestep embedding",
     .flags = DDPM_OPT_FIXED},
    {.name = "micro-batch", .metavar = "N", .type = DDPM_OPT_INT, .offset = SOFF(o.micro_batch), .min = 1,
     .max = 65536, .def_text = "the whole batch", .group = "optimiser",
     .help = "images per forward/backward pass; gradients of the chunks are summed into one step, the same update "
             "up to float rounding, with activation memory for N images; may change on --resume"},
    {.type = DDPM_OPT_END},
};

/* The help groups in order, each with its heading. */
static const struct {
    const char *group, *heading;
} help_groups[] = {
    {"run", "run:\n"},
    {"data", "data:\n"},
    {"model", "model (docs/design.md, The network). Each flag not given is chosen from the\n"
              "image side S and channels (explicit flags always win):\n"
              "  levels: halve S while it stays whole and >= 7 px (lowest resolution 7..13 px);\n"
              "  --ch-mult 1,2,2... (1 then 2s; 1,1,2,2,... from 5 levels); --ch 32 up to 32 px,\n"
              "  64 above; --attn the level's resolution nearest 16; --groups the largest of\n"
              "  8,4,2,1 dividing --ch. So 28 px: ch 32, 1,2,2, attn 14; 32 px: ch 32, 1,2,2,\n"
              "  attn 16; 64 px: ch 64, 1,2,2,2, attn 16; 128 px: ch 64, 1,1,2,2,2, attn 16.\n"
              "  A size that the levels cannot halve (e.g. --size 30 with --ch-mult 1,2,2)\n"
              "  is refused.\n"},
    {"diffusion", "diffusion:\n"},
    {"objective", "objective (README, Experiments):\n"},
    {"optimiser", "optimiser:\n"},
};

static void usage(FILE *f)
{
    fputs("usage: ddpm train DATA_DIR [options]\n"
          "\n"
          "Trains a U-Net (DDPM, Ho et al. 2020, Algorithm 1: eps prediction and L_simple\n"
          "unless --prediction or --loss say otherwise) on the images under DATA_DIR\n"
          "(searched recursively; PNG, JPEG, BMP, TGA, GIF, PSD, HDR, PNM). Writes\n"
          "RUN_DIR/checkpoint.safetensors, RUN_DIR/log.jsonl and preview grids in\n"
          "RUN_DIR/samples/. Ctrl-C (SIGINT, SIGTERM or SIGUSR1) saves a checkpoint\n"
          "and stops; --resume continues. The flags under data, model, diffusion and\n"
          "objective, and the optimiser's but --micro-batch, define the run: they are\n"
          "saved in its checkpoint and refused with --resume.\n"
          "\n",
          f);
    train_args defaults;
    memset(&defaults, 0, sizeof defaults);
    ddpm_run_options_default(&defaults.o);
    for (size_t g = 0; g < sizeof help_groups / sizeof help_groups[0]; g++) {
        fputs(help_groups[g].heading, f);
        const ddpm_option *tables[2] = {ddpm_run_config_options, session_options};
        for (int t = 0; t < 2; t++)
            for (const ddpm_option *r = tables[t]; r->type != DDPM_OPT_END; r++)
                if (r->name && r->group && !strcmp(r->group, help_groups[g].group))
                    cli_option_help(f, r, t == 0 ? (const void *)&defaults.o.cfg : (const void *)&defaults);
    }
    fputs("\n"
          "Same flags, same seed: the same checkpoint, bit for bit, whatever --threads\n"
          "is (on the same machine and OpenBLAS kernels; --micro-batch and the process\n"
          "count under mpirun change the order of float sums, so the last bits).\n"
          "Under mpirun (README: Training on several processes or machines), each\n"
          "process computes its share of every --batch; process 0 writes the run folder\n"
          "and prints progress.\n"
          "exit codes: 0 done or interrupted (checkpoint saved), 1 error, 2 usage,\n"
          "            3 diverged (NaN or infinite loss; the last checkpoint is kept)\n",
          f);
}

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

enum { MAX_FLAGS = 96 };

/* The flags of both tables, in getopt_long's form: flag k is rows[k], which
 * getopt_long returns as 256 + k. */
typedef struct {
    const ddpm_option *rows[MAX_FLAGS];
    struct option longopts[MAX_FLAGS + 1];
    int n;
} flag_set;

static void flag_set_init(flag_set *fs)
{
    const ddpm_option *tables[2] = {ddpm_run_config_options, session_options};
    memset(fs, 0, sizeof *fs);
    for (int t = 0; t < 2; t++)
        for (const ddpm_option *r = tables[t]; r->type != DDPM_OPT_END && fs->n < MAX_FLAGS; r++)
            if (r->name) {
                int has_arg = r->type == DDPM_OPT_BOOL ? no_argument : required_argument;
                fs->longopts[fs->n] = (struct option){r->name, has_arg, NULL, 256 + fs->n};
                fs->rows[fs->n++] = r;
            }
}

/* What one flag cannot check alone. Returns -1 to go on, else the exit code. */
static int check_flags(const ddpm_run_options *o, const char *fixed_given, int lr_min_given, int preview_given)
{
    if ((preview_given & 1) && !ddpm_sampler_has(o->preview_sampler, DDPM_SAMPLER_TAKES_STEPS)) {
        cli_error("train: --preview-steps does not apply to --preview-sampler %s (it runs all T steps)",
                  ddpm_sampler_name(o->preview_sampler));
        return DDPM_EXIT_USAGE;
    }
    if ((preview_given & 2) && !ddpm_sampler_has(o->preview_sampler, DDPM_SAMPLER_TAKES_SPACING)) {
        cli_error("train: --preview-spacing does not apply to --preview-sampler %s",
                  ddpm_sampler_name(o->preview_sampler));
        return DDPM_EXIT_USAGE;
    }
    char ckpt[4200];
    snprintf(ckpt, sizeof ckpt, "%s/%s", o->out_dir, DDPM_CHECKPOINT_FILE);
    if (o->resume && fixed_given && access(ckpt, F_OK) == 0) { /* without a checkpoint, the flags start it */
        cli_error("train: --%s cannot be changed on --resume (the run's config is in its checkpoint)", fixed_given);
        return DDPM_EXIT_USAGE;
    }
    if (!o->resume && o->cfg.precision == DDPM_PRECISION_BF16 && arg_bf16_refused())
        return DDPM_EXIT_USAGE;
    if (!o->resume && (ddpm_loss_config_check(&o->cfg.loss, o->cfg.model.prediction, o->cfg.model.learn_sigma) ||
                       ddpm_t_sampling_check(o->cfg.t_sampling, o->cfg.loss.kind))) {
        cli_error("train: %s", ddpm_last_error());
        return DDPM_EXIT_USAGE;
    }
    if (!o->eval_fid && (o->eval_fid_n || o->inception)) {
        cli_error("train: --%s applies to --eval-fid", o->eval_fid_n ? "eval-fid-n" : "inception");
        return DDPM_EXIT_USAGE;
    }
    if (o->eval_fid && !o->eval_fid_n) {
        cli_error("train: --eval-fid needs --eval-fid-n N, the samples per evaluation");
        return DDPM_EXIT_USAGE;
    }
    if (lr_min_given && o->cfg.optim.lr_schedule != DDPM_LR_COSINE) {
        cli_error("train: --lr-min applies to --lr-schedule cosine");
        return DDPM_EXIT_USAGE;
    }
    if (o->cfg.optim.lr_min > o->cfg.optim.lr) {
        cli_error("train: --lr-min %g is above --lr %g", o->cfg.optim.lr_min, o->cfg.optim.lr);
        return DDPM_EXIT_USAGE;
    }
    if (o->cfg.beta_end < o->cfg.beta_start) {
        cli_error("train: --beta-end %g is below --beta-start %g", o->cfg.beta_end, o->cfg.beta_start);
        return DDPM_EXIT_USAGE;
    }
    /* a run folder that is, or is inside, the data folder or the held-out
       one is refused by ddpm_run_start (run.c), before anything is read */
    return -1;
}

/* Parses the flags into a (after the defaults) and checks them. Returns -1
 * to go on, else the exit code (--help: 0). */
static int parse_flags(int argc, char **argv, train_args *a)
{
    flag_set fs;
    flag_set_init(&fs);
    memset(a, 0, sizeof *a);
    ddpm_run_options_default(&a->o);
    const char *fixed_given = NULL; /* the first flag given that defines the run */
    int opt, lr_min_given = 0, preview_given = 0, class_emb_init_given = 0;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", fs.longopts, NULL)) != -1) {
        if (opt == 'h') {
            usage(stdout);
            return DDPM_EXIT_OK;
        }
        if (opt < 256 || opt >= 256 + fs.n) {
            cli_error("train: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("train");
        }
        const ddpm_option *r = fs.rows[opt - 256];
        if (cli_option_parse(r, r->section ? (void *)&a->o.cfg : (void *)a, optarg))
            return DDPM_EXIT_USAGE;
        if (a->help) {
            usage(stdout);
            return DDPM_EXIT_OK;
        }
        if ((r->flags & DDPM_OPT_FIXED) && !fixed_given)
            fixed_given = r->name;
        lr_min_given |= !strcmp(r->name, "lr-min");
        class_emb_init_given |= !strcmp(r->name, "class-emb-init");
        preview_given |= (!strcmp(r->name, "preview-steps") ? 1 : 0) | (!strcmp(r->name, "preview-spacing") ? 2 : 0);
    }
    if (optind != argc - 1) {
        cli_error(optind >= argc ? "train: missing DATA_DIR" : "train: expected one DATA_DIR, got '%s' too",
                  optind < argc ? argv[optind + 1] : "");
        return cli_usage_error("train");
    }
    a->o.data_dir = argv[optind];
    /* a new class-conditional model starts its class embedding at N(0, 1)
       unless told otherwise: its samples follow their label far sooner than
       from zero (docs/defaults.md, Class conditioning); the option table's
       default stays zero, what a config without the key (an older file) means */
    if (a->o.classes && !class_emb_init_given)
        a->o.cfg.model.class_emb_init = DDPM_CLASS_EMB_NORMAL;
    return check_flags(&a->o, fixed_given, lr_min_given, preview_given);
}

static int train_main(int argc, char **argv)
{
    train_args a;
    int code = parse_flags(argc, argv, &a);
    if (code >= 0)
        return code;
    ddpm_run_options o = a.o;
    int quiet = a.quiet, json = a.json, threads = a.threads;
    char weights[4096];
    if (o.eval_fid) { /* with several processes, process 0's load says what is missing */
        if (cli_find_inception(weights, sizeof weights, o.inception) && ddpm_dist_size() == 1)
            return DDPM_EXIT_ERROR;
        o.inception = weights;
    }
    ddpm_threads_set(threads ? threads : default_threads());
    int rank = ddpm_dist_rank();
    stop_requested = 0;
    o.stop = &stop_requested;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL); /* mpirun forwards it to every process */
    progress_ctx pc = {&o, isatty(fileno(stderr)), 0, quiet, 0, 0};
    ddpm_run_callbacks cb = {&pc, NULL, NULL, NULL, NULL};
    if (rank == 0) /* one voice for a run of several processes; --quiet keeps the warnings */
        cb = (ddpm_run_callbacks){&pc, on_started, quiet ? NULL : on_progress, on_warning, quiet ? NULL : on_fid};
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
    if (pc.resumed && summary.step <= pc.start_step && !summary.interrupted) {
        char asked[64] = "";
        if (o.steps > 0)
            snprintf(asked, sizeof asked, " (--steps %ld)", o.steps);
        cli_warn("nothing trained: the run was already at step %ld, at or past the stop asked for%s; --steps and "
                 "--epochs count from the run's start, not from this session",
                 summary.step, asked);
    }
    if (!quiet) {
        if (summary.preview[0] && o.preview_sampler == DDPM_SAMPLER_DDIM)
            fprintf(stderr, "ddpm: preview grid (EMA weights, DDIM %d steps, eta 1): %s\n", o.preview_steps,
                    cli_q(summary.preview));
        else if (summary.preview[0])
            fprintf(stderr, "ddpm: preview grid (EMA weights, %s, %d %s%s%s): %s\n",
                    ddpm_sampler_name(o.preview_sampler), o.preview_steps,
                    ddpm_sampler_has(o.preview_sampler, DDPM_SAMPLER_TAKES_SPACING) ? "evaluations" : "steps",
                    ddpm_sampler_has(o.preview_sampler, DDPM_SAMPLER_TAKES_SPACING) ? ", spacing " : "",
                    ddpm_sampler_has(o.preview_sampler, DDPM_SAMPLER_TAKES_SPACING)
                        ? ddpm_spacing_name(o.preview_spacing)
                        : "",
                    cli_q(summary.preview));
        if (summary.interrupted)
            fprintf(stderr,
                    "ddpm: interrupted at step %ld; checkpoint saved. Continue with: ddpm train %s --out %s --resume\n",
                    summary.step, cli_q(o.data_dir), cli_q(o.out_dir));
        else
            fprintf(stderr, "ddpm: done at step %ld; checkpoint: %s\n", summary.step, cli_q(summary.checkpoint));
    }
    if (json)
        print_summary(&summary);
    return DDPM_EXIT_OK;
}
