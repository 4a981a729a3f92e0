/* eval.c: `ddpm eval RUN_DIR|CKPT DATA_DIR`: the variational bound in bits/dim
 * and the held-out L_simple of a checkpoint on a folder of images. */
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "cli.h"
#include "guard.h"
#include "ddpm/model.h"
#include "ddpm/error.h"
#include "ddpm/eval.h"
#include "ddpm/fsutil.h"

enum { DEFAULT_N = 64 };

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddpm eval RUN_DIR|CHECKPOINT DATA_DIR [options]\n"
"\n"
"The variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 of the DDPM paper (eq. 5;\n"
"Table 1's NLL) of a trained model on the images of DATA_DIR, in bits/dim (nats\n"
"divided by D ln 2, D = channels x height x width), with each part and its\n"
"standard error over images, and the held-out L_simple (the training loss on\n"
"DATA_DIR's images). The model, its schedule and T come from the checkpoint;\n"
"DATA_DIR's images must have the model's size and channel count.\n"
"\n"
"The bound (per image, then averaged over the --n images):\n"
"  L_T          KL(q(x_T|x_0) || N(0, I)), exact\n"
"  L_{t-1}      KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t = 2..T, Gaussian KL in\n"
"               closed form, at one x_t ~ q(x_t|x_0) per term (as the paper's code)\n"
"  L_0          -log p(x_0|x_1): the decoder Gaussian integrated over each pixel's\n"
"               bin of the 256-level grid in [-1, 1] (half-width 1/255; the bins of\n"
"               -1 and 1 open to -inf and +inf), with the exact erf-based normal\n"
"               CDF computed without cancellation in the tails (the paper's code\n"
"               uses a tanh approximation)\n"
"  p(x_{t-1}|x_t) has mean mu~(clip(x0_pred), x_t), the posterior mean of the\n"
"  predicted x0 clipped to [-1, 1] (as the paper's code computes its bound), and\n"
"  variance sigma_t^2 (--var). At t = 1 the decoder variance is beta~_2 for both\n"
"  --var choices (beta~_1 = 0), as in the paper's code.\n"
"\n"
"cost: the exact bound evaluates the network at all T steps of every image (T\n"
"forward passes per image); with the default model (T = 1000, 28x28) at the\n"
"~220-250 evaluations/s of sampling on 2 idle cores, the default 64 images take\n"
"4 to 5 minutes (a loaded machine can be 50x slower).\n"
"--mc K costs K + 1 passes per image (seconds) for an unbiased estimate.\n"
"\n"
"options:\n"
"  --n N                images to evaluate, a seeded random subset of DATA_DIR\n"
"                       (default 64, or every image if DATA_DIR has fewer); more\n"
"                       than DATA_DIR holds is an error\n"
"  --mc K               fast unbiased estimate instead of the exact bound: K steps\n"
"                       t drawn uniformly from 2..T per image, the mean of their\n"
"                       L_{t-1} times T - 1, plus the exact L_T and L_0; its\n"
"                       standard error includes the draws (default 0: exact)\n"
"  --var beta|beta-tilde|learned  sigma_t^2 = beta_t (default; the choice the\n"
"                       paper reports its bound with), beta~_t (the posterior\n"
"                       variance), or the model's own (learned: the default\n"
"                       for a model trained with --learn-sigma)\n"
"  --no-clip            mean from eq. 11's eps form, 1/sqrt(alpha_t) (x_t -\n"
"                       beta_t/sqrt(1-abar_t) eps), without clipping x0\n"
"  --seed S             seed of the image subset, x_t noise, --mc steps and\n"
"                       L_simple's steps and noise (default 0); --batch and\n"
"                       --threads change only the network's float rounding\n"
"  --batch B            network evaluations per forward pass, at mixed steps;\n"
"                       bounds memory (default 64)\n"
"  --no-ema             use the raw weights, not the EMA weights\n"
"  --terms FILE.csv     write the mean and standard error of each term by t\n"
"                       (columns t,term,bpd_mean,bpd_stderr,n_images: t = 1 is\n"
"                       L_0, t >= 2 is L_{t-1}), to plot the bound over t\n"
"  --threads N          threads for OpenMP and OpenBLAS (default: all cores)\n"
"  --json               print one JSON object on stdout (n_images, bpd_total,\n"
"                       bpd_stderr, bpd_prior, bpd_vb, bpd_decoder and their\n"
"                       stderrs, l_simple, l_simple_stderr, and the options)\n"
"  --quiet              no progress output (warnings stay)\n");
    fprintf(f, CLI_HELP_PRECISION
CLI_HELP_NO_WARNINGS
"exit codes: 0 ok, 1 error (bad checkpoint or images, --n larger than DATA_DIR),\n"
"            2 usage\n");
}

enum {
    O_N = 256, O_MC, O_VAR, O_NO_CLIP, O_SEED, O_BATCH, O_NO_EMA, O_TERMS, O_THREADS, O_JSON, O_QUIET, O_HELP,
    O_PRECISION,
};

typedef struct {
    int quiet, tty;
    const char *what;
    long offset, grand_total; /* evaluations before this phase, of all phases */
    double t_start, last;
} progress_ctx;

static void on_progress(void *opaque, long done, long total)
{
    progress_ctx *p = opaque;
    (void)total;
    if (p->quiet)
        return;
    double t = ddpm_now_seconds();
    long all = p->offset + done;
    if (all < p->grand_total && t - p->last < (p->tty ? 0.5 : 30.0))
        return;
    p->last = t;
    double rate = all / (t - p->t_start);
    fprintf(stderr, "%s%s: %ld/%ld network evaluations, %.0f/s, ETA %.0f s%s", p->tty ? "\r\033[K" : "", p->what,
            all, p->grand_total, rate, (p->grand_total - all) / rate, p->tty ? "" : "\n");
    fflush(stderr);
}

/* The per-t table (written atomically through ddpm_atomic_write). */
static int write_terms_csv(void *ctx, FILE *f)
{
    const ddpm_bound_result *r = ctx;
    fprintf(f, "t,term,bpd_mean,bpd_stderr,n_images\n");
    for (int i = 0; i < r->T; i++) {
        char name[32];
        snprintf(name, sizeof name, i == 0 ? "L_0" : "L_%d", i);
        if (r->term_n[i])
            fprintf(f, "%d,%s,%.9g,%.9g,%ld\n", i + 1, name, r->term_mean[i], r->term_se[i], r->term_n[i]);
        else
            fprintf(f, "%d,%s,,,0\n", i + 1, name);
    }
    return ferror(f) ? -1 : 0;
}

static void on_warning(void *ctx, const char *line)
{
    (void)ctx;
    cli_warn("%s", line);
}

int cmd_eval(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"n", required_argument, 0, O_N}, {"mc", required_argument, 0, O_MC},
        {"var", required_argument, 0, O_VAR}, {"no-clip", no_argument, 0, O_NO_CLIP},
        {"seed", required_argument, 0, O_SEED}, {"batch", required_argument, 0, O_BATCH},
        {"no-ema", no_argument, 0, O_NO_EMA}, {"terms", required_argument, 0, O_TERMS},
        {"threads", required_argument, 0, O_THREADS}, {"json", no_argument, 0, O_JSON},
        {"quiet", no_argument, 0, O_QUIET}, {"help", no_argument, 0, O_HELP},
        {"precision", required_argument, 0, O_PRECISION}, {0, 0, 0, 0},
    };
    ddpm_bound_config bc;
    ddpm_bound_config_default(&bc);
    int n = 0, threads = 0, no_ema = 0, json = 0, quiet = 0, opt, bad = 0, var_set = 0;
    ddpm_precision precision = DDPM_PRECISION_FP32;
    const char *terms_path = NULL;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_N: bad |= arg_int("n", optarg, 1, 100000000, &n); break;
        case O_MC: bad |= arg_int("mc", optarg, 1, 1000000, &bc.mc); break;
        case O_VAR: bad |= arg_var(optarg, &bc.var), var_set = 1; break;
        case O_NO_CLIP: bc.clip_x0 = 0; break;
        case O_SEED: bad |= arg_u64("seed", optarg, &bc.seed); break;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &bc.batch); break;
        case O_NO_EMA: no_ema = 1; break;
        case O_TERMS: terms_path = optarg; break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &threads); break;
        case O_JSON: json = 1; break;
        case O_QUIET: quiet = 1; break;
        case O_PRECISION: bad |= arg_precision(optarg, &precision); break;
        default:
            cli_error("eval: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("eval");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    if (optind != argc - 2) {
        cli_error(optind >= argc - 1 ? "eval: needs RUN_DIR|CHECKPOINT and DATA_DIR"
                                     : "eval: expected a checkpoint and one data folder");
        return cli_usage_error("eval");
    }
    const char *data_dir = argv[optind + 1];
    int out_rc;
    const cli_input in[2] = {{argv[optind], CLI_IN_CHECKPOINT}, {data_dir, CLI_IN_FOLDER}};
    if ((out_rc = cli_check_input_file(argv[optind], CLI_IN_CHECKPOINT, "the checkpoint")) ||
        (terms_path && (out_rc = cli_check_output("--terms", terms_path, 0, in, 2))) ||
        (terms_path && (out_rc = cli_check_writable_parent(terms_path))))
        return out_rc;
    ddpm_threads_set(threads);
    ddpm_model m;
    if ((out_rc = cli_open_model(&m, argv[optind], no_ema, "evaluating")))
        return out_rc;
    int C = m.cfg.in_channels, S = m.cfg.image_size, rc = DDPM_OK, count = 0, B = bc.batch;
    const ddpm_schedule *sched = &m.sched;
    if (ddpm_model_set_precision(&m, precision))
        rc = DDPM_EINVAL;
    else if (sched->T < 2)
        rc = ddpm_error(DDPM_EINVAL, "%s: the bound needs T >= 2 timesteps, the model has %d", m.path, sched->T);
    float *x0 = NULL;
    if (!rc)
        rc = ddpm_eval_load(&x0, &n, &count, data_dir, S, C, DEFAULT_N, bc.seed, on_warning, NULL);
    size_t D = ddpm_model_D(&m);
    bc.learned_var = m.cfg.learn_sigma; /* default: the model's own variances */
    if (m.cfg.learn_sigma && !var_set)
        bc.var = DDPM_VAR_LEARNED;
    long per_image = bc.mc > 0 ? bc.mc + 1 : sched->T;
    progress_ctx pc = {.quiet = quiet, .tty = isatty(fileno(stderr)), .what = "bound",
                       .grand_total = (long)n * per_image + n};
    ddpm_bound_result br;
    memset(&br, 0, sizeof br);
    ddpm_estimate ls = {0, 0};
    pc.t_start = pc.last = ddpm_now_seconds();
    /* the bound and L_simple take eps_theta: the model converts an x0, v or mu output (predict.h) */
    if (!rc)
        rc = ddpm_bound(&br, x0, n, D, sched, &bc, ddpm_model_eps, &m, on_progress, &pc);
    if (!rc) {
        pc.what = "L_simple";
        pc.offset = (long)n * per_image;
        rc = ddpm_eval_l_simple(&ls, x0, n, D, sched, B, bc.seed, bc.learned_var, ddpm_model_eps, &m, on_progress,
                                &pc);
    }
    double seconds = ddpm_now_seconds() - pc.t_start;
    if (pc.tty && !quiet)
        fputc('\n', stderr);
    if (!rc && terms_path)
        rc = ddpm_atomic_write(terms_path, write_terms_csv, &br);
    const char *var_name = ddpm_var_name(bc.var);
    if (rc)
        cli_error("%s", ddpm_last_error());
    else if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "checkpoint", m.path);
        cJSON_AddNumberToObject(o, "step", (double)m.step);
        cJSON_AddBoolToObject(o, "ema", m.ema);
        if (precision == DDPM_PRECISION_BF16)
            cJSON_AddStringToObject(o, "precision", "bf16");
        cJSON_AddStringToObject(o, "data_dir", data_dir);
        cJSON_AddNumberToObject(o, "images_in_folder", count);
        cJSON_AddNumberToObject(o, "n_images", n);
        cJSON_AddNumberToObject(o, "timesteps", sched->T);
        cJSON_AddStringToObject(o, "method", bc.mc > 0 ? "mc" : "exact");
        cJSON_AddNumberToObject(o, "mc", bc.mc);
        cJSON_AddStringToObject(o, "var", var_name);
        cJSON_AddBoolToObject(o, "clip", bc.clip_x0);
        cJSON_AddNumberToObject(o, "seed", (double)bc.seed);
        cJSON_AddNumberToObject(o, "batch", B);
        cJSON_AddNumberToObject(o, "bpd_total", br.total.mean);
        cJSON_AddNumberToObject(o, "bpd_stderr", br.total.se);
        cJSON_AddNumberToObject(o, "bpd_prior", br.prior.mean);
        cJSON_AddNumberToObject(o, "bpd_prior_stderr", br.prior.se);
        cJSON_AddNumberToObject(o, "bpd_vb", br.vb.mean);
        cJSON_AddNumberToObject(o, "bpd_vb_stderr", br.vb.se);
        cJSON_AddNumberToObject(o, "bpd_decoder", br.decoder.mean);
        cJSON_AddNumberToObject(o, "bpd_decoder_stderr", br.decoder.se);
        cJSON_AddNumberToObject(o, "l_simple", ls.mean);
        cJSON_AddNumberToObject(o, "l_simple_stderr", ls.se);
        cJSON_AddNumberToObject(o, "network_evals", (double)(br.n_evals + n));
        cJSON_AddNumberToObject(o, "seconds", seconds);
        if (terms_path)
            cJSON_AddStringToObject(o, "terms", terms_path);
        char *text = cJSON_PrintUnformatted(o);
        if (text)
            printf("%s\n", text);
        free(text);
        cJSON_Delete(o);
    } else {
        printf("checkpoint %s (step %ld, %s weights), %d of %d images of %s\n", cli_q(m.path), m.step,
               m.ema ? "EMA" : "raw", n, count, cli_q(data_dir));
        if (bc.mc > 0)
            printf("Monte Carlo estimate: %d of %d steps per image, seed %llu\n", bc.mc, sched->T - 1,
                   (unsigned long long)bc.seed);
        else
            printf("exact bound: all %d terms per image, seed %llu\n", sched->T, (unsigned long long)bc.seed);
        printf("sigma_t^2 = %s, model mean from the %s\n", var_name,
               bc.clip_x0 ? "clipped predicted x0" : "eps form (no clipping)");
        if (precision == DDPM_PRECISION_BF16)
            printf("network: convolutions and attention products in bf16 (--precision bf16)\n");
        printf("%-28s %10s %10s\n", "bits/dim", "mean", "stderr");
        printf("%-28s %10.4f %10.4f\n", "total (L)", br.total.mean, br.total.se);
        printf("%-28s %10.4f %10.4f\n", "  L_T (prior)", br.prior.mean, br.prior.se);
        printf("%-28s %10.4f %10.4f\n", "  sum_{t>1} L_{t-1}", br.vb.mean, br.vb.se);
        printf("%-28s %10.4f %10.4f\n", "  L_0 (decoder)", br.decoder.mean, br.decoder.se);
        printf("%-28s %10.5f %10.5f\n", "held-out L_simple", ls.mean, ls.se);
        printf("%ld network evaluations in %.1f s (%.0f/s)\n", br.n_evals + n, seconds,
               (br.n_evals + n) / seconds);
    }
    ddpm_bound_result_free(&br);
    free(x0);
    ddpm_model_close(&m);
    return rc ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
