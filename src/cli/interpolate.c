/* interpolate.c: `ddpm interpolate RUN_DIR|CKPT`: a strip of images between two
 * seeds (slerp of x_T) or two noised real images (--at t), decoded with DDIM eta 0. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "cli.h"
#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/interpolate.h"

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddpm interpolate RUN_DIR|CHECKPOINT --seeds A,B [options]\n"
"       ddpm interpolate RUN_DIR|CHECKPOINT --at T --images P1.png,P2.png [options]\n"
"\n"
"Writes a strip of --n images (one row) that moves from one image to another\n"
"through the model's latents. Every image is decoded with deterministic DDIM\n"
"(eta 0, predicted x0 clipped to [-1, 1] as in ddpm sample).\n"
"\n"
"  --seeds A,B          between the samples of seeds A and B: the x_T of each is\n"
"                       drawn exactly as `ddpm sample --seed A` draws image 0's,\n"
"                       and the x_T in between by spherical interpolation (slerp).\n"
"                       The ends equal `ddpm sample --seed A --n 1 --eta 0` (same\n"
"                       --steps, --no-ema and --no-clip) byte for byte\n"
"  --at T --images P1,P2  between two real images, as in the DDPM paper's\n"
"                       Figure 8: both are noised to step T (1..T of the model)\n"
"                       with the same noise (image 0's x_T of --seed), the two\n"
"                       latents are blended linearly (the paper's choice) and\n"
"                       each blend is decoded from step T. The images are loaded\n"
"                       as ddpm train loads them (center crop, resize to the\n"
"                       model's size and channels). The paper uses T = 500 of\n"
"                       1000; small T reconstructs the two images, large T\n"
"                       invents new ones\n"
"  --seed N             noise seed of --at (default 0)\n"
"  --sources            with --at: put the two images (as loaded) at the ends,\n"
"                       so the strip is --n + 2 images wide\n"
"  --n N                images in the strip, both ends included (default 10)\n"
"  --steps S            DDIM steps (default 100, or the model's T or --at's T\n"
"                       when smaller; at most that T)\n"
"  --no-clip            do not clip the predicted x0\n"
"output:\n"
"  --out FILE.png       the strip (default interpolation.png)\n"
"  --pad P              pixels between images (default 2)\n"
"  --pad-value V        padding gray level 0..255 (default 255)\n"
"run:\n"
"  --batch N            images per network call; bounds memory (default 64)\n"
"  --threads N          threads for OpenMP and OpenBLAS (default: all cores)\n"
"  --no-ema             use the raw weights, not the EMA weights\n"
"  --quiet              no summary line\n"
"exit codes: 0 ok, 1 error (bad checkpoint or image, unwritable output), 2 usage\n");
}

enum {
    O_SEEDS = 256, O_AT, O_IMAGES, O_SEED, O_N, O_STEPS, O_NO_CLIP, O_OUT, O_PAD, O_PAD_VALUE, O_BATCH, O_THREADS,
    O_NO_EMA, O_QUIET, O_HELP, O_SOURCES,
};

/* "A,B" -> two seeds */
static int parse_seeds(const char *value, uint64_t *a, uint64_t *b)
{
    const char *comma = strchr(value, ',');
    char first[64];
    if (!comma || (size_t)(comma - value) >= sizeof first) {
        cli_error("--seeds: '%s' is not two seeds A,B", value);
        return -1;
    }
    memcpy(first, value, (size_t)(comma - value));
    first[comma - value] = '\0';
    return arg_u64("seeds", first, a) || arg_u64("seeds", comma + 1, b) ? -1 : 0;
}

int cmd_interpolate(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"seeds", required_argument, 0, O_SEEDS}, {"at", required_argument, 0, O_AT},
        {"images", required_argument, 0, O_IMAGES}, {"seed", required_argument, 0, O_SEED},
        {"n", required_argument, 0, O_N}, {"steps", required_argument, 0, O_STEPS},
        {"no-clip", no_argument, 0, O_NO_CLIP}, {"out", required_argument, 0, O_OUT},
        {"pad", required_argument, 0, O_PAD}, {"pad-value", required_argument, 0, O_PAD_VALUE},
        {"batch", required_argument, 0, O_BATCH}, {"threads", required_argument, 0, O_THREADS},
        {"no-ema", no_argument, 0, O_NO_EMA}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP}, {"sources", no_argument, 0, O_SOURCES}, {0, 0, 0, 0},
    };
    ddpm_interpolate_config ic;
    ddpm_interpolate_config_default(&ic);
    const char *out = "interpolation.png", *images = NULL;
    uint64_t seed_a = 0, seed_b = 0, seed = 0;
    int have_seeds = 0, at = 0, steps_given = 0, pad = 2, pad_value = 255, threads = 0, no_ema = 0, quiet = 0;
    int sources = 0;
    int opt, bad = 0;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_SEEDS: bad |= parse_seeds(optarg, &seed_a, &seed_b); have_seeds = 1; break;
        case O_AT: bad |= arg_int("at", optarg, 1, 1000000, &at); break;
        case O_IMAGES: images = optarg; break;
        case O_SEED: bad |= arg_u64("seed", optarg, &seed); break;
        case O_N: bad |= arg_int("n", optarg, 2, 100000, &ic.n); break;
        case O_STEPS: bad |= arg_int("steps", optarg, 1, 100000, &ic.steps); steps_given = 1; break;
        case O_NO_CLIP: ic.clip_x0 = 0; break;
        case O_OUT: out = optarg; break;
        case O_PAD: bad |= arg_int("pad", optarg, 0, 1000, &pad); break;
        case O_PAD_VALUE: bad |= arg_int("pad-value", optarg, 0, 255, &pad_value); break;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &ic.batch); break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &threads); break;
        case O_NO_EMA: no_ema = 1; break;
        case O_QUIET: quiet = 1; break;
        case O_SOURCES: sources = 1; break;
        default:
            cli_error("interpolate: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("interpolate");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        cli_error(optind >= argc ? "interpolate: missing RUN_DIR or CHECKPOINT"
                                 : "interpolate: expected one checkpoint");
        return cli_usage_error("interpolate");
    }
    if (have_seeds == (at || images)) {
        cli_error("interpolate: give either --seeds A,B or --at T --images P1,P2");
        return cli_usage_error("interpolate");
    }
    if (sources && !images) {
        cli_error("interpolate: --sources goes with --at and --images");
        return DDPM_EXIT_USAGE;
    }
    if (!have_seeds && (!at || !images)) {
        cli_error("interpolate: --at and --images go together");
        return DDPM_EXIT_USAGE;
    }
    char path_a[4096], path_b[4096];
    if (images) {
        const char *comma = strchr(images, ',');
        if (!comma || comma == images || !comma[1] || (size_t)(comma - images) >= sizeof path_a ||
            strlen(comma + 1) >= sizeof path_b) {
            cli_error("--images: '%s' is not two paths P1,P2", images);
            return DDPM_EXIT_USAGE;
        }
        memcpy(path_a, images, (size_t)(comma - images));
        path_a[comma - images] = '\0';
        strcpy(path_b, comma + 1);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", out);
    if (access(dirname(dir), W_OK) != 0) {
        cli_error("%s: cannot write there: %s", out, strerror(errno));
        return DDPM_EXIT_ERROR;
    }
    char ckpt_path[4096];
    cli_checkpoint_path(ckpt_path, sizeof ckpt_path, argv[optind]);
    cli_set_threads(threads);

    ddpm_checkpoint *ck = NULL;
    if (ddpm_checkpoint_open(&ck, ckpt_path)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    const ddpm_run_config cfg = *ddpm_checkpoint_config(ck);
    int T = cfg.timesteps, C = cfg.model.in_channels, S = cfg.model.image_size;
    long ck_step = ddpm_checkpoint_state(ck)->step;
    if (at > T) {
        cli_error("--at: %d is more than the model's %d timesteps", at, T);
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_USAGE;
    }
    int max_steps = at ? at : T;
    if (ic.steps > max_steps) {
        if (steps_given) {
            cli_error("--steps: %d is more than %s %d", ic.steps, at ? "--at" : "the model's timesteps", max_steps);
            ddpm_checkpoint_close(ck);
            return DDPM_EXIT_USAGE;
        }
        ic.steps = max_steps;
    }
    ddpm_unet *net = NULL;
    float *params = NULL;
    int used_ema = 0;
    int rc = ddpm_checkpoint_load_model(ck, !no_ema, &net, &params, &used_ema);
    ddpm_checkpoint_close(ck);
    ddpm_schedule sched;
    memset(&sched, 0, sizeof sched);
    if (!rc)
        rc = ddpm_schedule_init(&sched, cfg.schedule, T, cfg.beta_start, cfg.beta_end);
    size_t D = (size_t)C * S * S;
    float *x = NULL, *x0_a = NULL, *x0_b = NULL;
    ddpm_unet_workspace *ws = NULL;
    if (!rc)
        rc = ddpm_unet_workspace_create(&ws, net, ic.batch < ic.n ? ic.batch : ic.n, 0);
    /* with --sources the strip is framed by the two images as loaded */
    int n_cells = ic.n + (sources ? 2 : 0);
    if (!rc && !(x = ddpm_malloc((size_t)n_cells * D, sizeof *x)))
        rc = DDPM_ENOMEM;
    if (!rc && images) {
        x0_a = ddpm_malloc(D, sizeof *x0_a);
        x0_b = ddpm_malloc(D, sizeof *x0_b);
        rc = !x0_a || !x0_b ? DDPM_ENOMEM : ddpm_image_load(path_a, x0_a, S, C);
        if (!rc)
            rc = ddpm_image_load(path_b, x0_b, S, C);
    }
    if (!rc && !used_ema && !no_ema && !quiet)
        fprintf(stderr, "ddpm: %s has no EMA weights; using the raw weights\n", ckpt_path);
    /* the interpolation's sampler takes eps: convert the output of an x0, v or mu model */
    ddpm_unet_eps_ctx ctx = {.net = net, .params = params, .ws = ws, .to_eps = &sched};
    if (!rc)
        rc = images ? ddpm_interpolate_images(x + (sources ? D : 0), D, x0_a, x0_b, at, seed, &sched, &ic,
                                              ddpm_unet_eps, &ctx)
                    : ddpm_interpolate_seeds(x, D, seed_a, seed_b, &sched, &ic, ddpm_unet_eps, &ctx);
    if (!rc && sources) {
        memcpy(x, x0_a, D * sizeof *x);
        memcpy(x + (size_t)(n_cells - 1) * D, x0_b, D * sizeof *x);
    }
    if (!rc)
        rc = ddpm_image_save_grid(out, x, n_cells, C, S, n_cells, pad, pad_value);
    if (rc)
        cli_error("%s", ddpm_last_error());
    else if (!quiet) {
        if (images)
            fprintf(stderr, "ddpm: %d images between %s and %s noised to t = %d, DDIM %d steps (eta 0), %s weights of step %ld\n",
                    ic.n, path_a, path_b, at, ic.steps, used_ema ? "EMA" : "raw", ck_step);
        else
            fprintf(stderr, "ddpm: %d images between seeds %" PRIu64 " and %" PRIu64 ", DDIM %d steps (eta 0), %s weights of step %ld\n",
                    ic.n, seed_a, seed_b, ic.steps, used_ema ? "EMA" : "raw", ck_step);
        printf("%s\n", out);
    }
    free(x);
    free(x0_a);
    free(x0_b);
    ddpm_unet_workspace_free(ws);
    ddpm_schedule_free(&sched);
    free(params);
    ddpm_unet_free(net);
    return rc ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
