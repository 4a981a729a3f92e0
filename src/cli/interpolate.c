/* interpolate.c: `ddpm interpolate RUN_DIR|CKPT`: a strip of images between two
 * seeds (slerp of x_T) or two noised real images (--at t), decoded with a
 * deterministic sampler of the table (DDIM eta 0 by default);
 * `ddpm interpolate --from STRIP.png` re-creates a strip from its recipe. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "guard.h"
#include "ddpm/model.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/interpolate.h"
#include "ddpm/recipe.h"
#include "ddpm/sha256.h"

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddpm interpolate RUN_DIR|CHECKPOINT --seeds A,B [options]\n"
"       ddpm interpolate RUN_DIR|CHECKPOINT --at T --images P1.png,P2.png [options]\n"
"       ddpm interpolate --from STRIP.png --out FILE.png [--checkpoint PATH]\n"
"                        [--images P1,P2] [RUN_DIR|CHECKPOINT]\n"
"\n"
"Writes a strip of --n images (one row) that moves from one image to another\n"
"through the model's latents. Every image is decoded with a deterministic\n"
"sampler (default DDIM at eta 0; predicted x0 clipped to [-1, 1] as in ddpm\n"
"sample).\n"
"\n"
"  --seeds A,B          between the samples of seeds A and B: the x_T of each is\n"
"                       drawn exactly as `ddpm sample --seed A` draws image 0's,\n"
"                       and the x_T in between by spherical interpolation (slerp).\n"
"                       The ends equal `ddpm sample --seed A --n 1 --eta 0` (same\n"
"                       --sampler, --steps, --spacing, --no-ema and --no-clip;\n"
"                       --eta 0 only for ddim) byte for byte\n"
"  --at T --images P1,P2  between two real images, as in the DDPM paper's\n"
"                       Figure 8: both are noised to step T (1..T of the model)\n"
"                       with the same noise (image 0's x_T of --seed), the two\n"
"                       latents are blended linearly (the paper's choice) and\n"
"                       each blend is decoded from step T (a solver runs from\n"
"                       continuous t = T - 1, the step's index, to 0). The\n"
"                       images are loaded\n"
"                       as ddpm train loads them (center crop, resize to the\n"
"                       model's size and channels). The paper uses T = 500 of\n"
"                       1000; small T reconstructs the two images, large T\n"
"                       invents new ones\n"
"  --seed N             noise seed of --at (default 0)\n"
"  --sources            with --at: put the two images (as loaded) at the ends,\n"
"                       so the strip is --n + 2 images wide\n"
"  --n N                images in the strip, both ends included (default 10)\n"
"  --sampler NAME       a deterministic sampler: ddim (eta 0; the default) or\n"
"                       one of the ODE solvers dpm++2m, dpm++3m, dpm++2s, unipc,\n"
"                       unipc3, heun (see ddpm sample --help); the stochastic\n"
"                       ones (ddpm, dpm++2m-sde, euler-a) are refused\n"
"  --steps S            the sampler's steps, network evaluations for a solver\n"
"                       (default 100, or the model's T or --at's T when\n"
"                       smaller; at most that T)\n"
"  --spacing time|logsnr|karras  where a solver's points fall (default logsnr;\n"
"                       as ddpm sample --spacing)\n"
"  --no-clip            do not clip the predicted x0\n");
    fprintf(f,
"recipes:\n"
"  The strip carries its recipe in PNG tEXt chunks (ddpm version, the\n"
"  checkpoint's SHA-256, path and step, EMA or raw, the sampler, its steps and\n"
"  (for a solver) spacing, clipping, --n,\n"
"  --seeds, or --at, --seed, the two image paths with the SHA-256 of each file\n"
"  and --sources, --pad and --pad-value); `ddpm info STRIP.png` prints it.\n"
"  --from STRIP.png     re-create STRIP.png byte for byte from its recipe into\n"
"                       --out, which is required. The checkpoint is --checkpoint,\n"
"                       else RUN_DIR|CHECKPOINT, else the path in the recipe; the\n"
"                       source images of --at are --images, else the paths in\n"
"                       the recipe. A checkpoint or a source image whose SHA-256\n"
"                       differs from the recipe's is refused. The flags that the\n"
"                       recipe sets are refused with --from. (Grids and images\n"
"                       of ddpm sample are re-created by `ddpm sample --from`.)\n"
"  --checkpoint PATH    the checkpoint for --from (a file or a RUN_DIR)\n"
"output:\n"
"  --out FILE.png       the strip (default interpolation.png)\n"
"  --pad P              pixels between images (default 2)\n"
"  --pad-value V        padding gray level 0..255 (default 255)\n"
"run:\n"
"  --batch N            images per network call; bounds memory (default 64)\n"
"  --threads N          threads for OpenMP and OpenBLAS (default: all cores)\n"
"  --no-ema             use the raw weights, not the EMA weights\n"
"  --quiet              no summary line (warnings stay)\n"
CLI_HELP_PRECISION
CLI_HELP_NO_WARNINGS
"exit codes: 0 ok, 1 error (bad checkpoint or image, unwritable output, a\n"
"checkpoint or source image that is not the recipe's), 2 usage\n");
}

enum {
    O_SEEDS = 256, O_AT, O_IMAGES, O_SEED, O_N, O_STEPS, O_NO_CLIP, O_OUT, O_PAD, O_PAD_VALUE, O_BATCH, O_THREADS,
    O_NO_EMA, O_QUIET, O_HELP, O_SOURCES, O_FROM, O_CHECKPOINT, O_SAMPLER, O_SPACING, O_PRECISION,
};

/* The flags a recipe sets: refused with --from. */
static int recipe_sets(int opt)
{
    return opt == O_SEEDS || opt == O_AT || opt == O_SEED || opt == O_N || opt == O_STEPS ||
           opt == O_NO_CLIP || opt == O_PAD || opt == O_PAD_VALUE || opt == O_NO_EMA || opt == O_SOURCES ||
           opt == O_SAMPLER || opt == O_SPACING || opt == O_PRECISION;
}

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

/* "P1,P2" -> two paths of at most size - 1 bytes */
static int parse_images(const char *value, char *a, char *b, size_t size)
{
    const char *comma = strchr(value, ',');
    if (!comma || comma == value || !comma[1] || (size_t)(comma - value) >= size ||
        strlen(comma + 1) >= size) {
        cli_error("--images: '%s' is not two paths P1,P2", value);
        return -1;
    }
    memcpy(a, value, (size_t)(comma - value));
    a[comma - value] = '\0';
    strcpy(b, comma + 1);
    return 0;
}

/* Reads the recipe of --from and checks that it is a strip; exit code or 0. */
static int read_strip_recipe(ddpm_recipe *r, const char *from)
{
    int rc = cli_check_input_file(from, CLI_IN_FILE, "--from");
    if (rc)
        return rc;
    rc = ddpm_recipe_read_png(r, from);
    if (rc < 0) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if (rc == 0) {
        cli_error("%s: this PNG carries no ddpm recipe (no ddpm tEXt chunks); it cannot be re-created", from);
        return DDPM_EXIT_ERROR;
    }
    if (!ddpm_recipe_is_strip(r->kind)) {
        cli_error("%s: a %s of ddpm sample, not an interpolation strip; re-create it with "
                  "`ddpm sample --from %s --out FILE.png`",
                  from, ddpm_recipe_kind_name(r->kind), from);
        return DDPM_EXIT_ERROR;
    }
    if (!r->checkpoint_sha256[0]) {
        cli_error("%s: its recipe names no checkpoint SHA-256; it cannot be re-created", from);
        return DDPM_EXIT_ERROR;
    }
    return 0;
}

/* The file at path has the SHA-256 `want` (what the recipe of `from` says of
 * `what`; known: its SHA-256 when already computed, else NULL); else one
 * line and the exit code. */
static int check_sha256(const char *path, const char *known, const char *want, const char *from, const char *what,
                        const char *named, const char *hint)
{
    char have[65];
    if (known)
        snprintf(have, sizeof have, "%s", known);
    else if (ddpm_sha256_file(path, have)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if (strcmp(have, want)) {
        cli_error("%s: SHA-256 %.12s... is not the %s %s was made from (%.12s..., %s); %s", path, have, what,
                  from, want, named, hint);
        return DDPM_EXIT_ERROR;
    }
    return 0;
}

/* Everything the command line says. */
typedef struct {
    ddpm_interpolate_png_config pc;
    const char *images, *from, *checkpoint_flag, *recipe_flag, *ckpt_arg;
    int have_seeds, have_images, steps_given, out_given, threads, no_ema, quiet, spacing_given;
    ddpm_precision precision;
    char path_a[4096], path_b[4096];
    ddpm_recipe from_recipe;
} interp_args;

/* The flags into a; -1 to go on, else the exit code. */
static int parse_flags(interp_args *a, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"seeds", required_argument, 0, O_SEEDS}, {"at", required_argument, 0, O_AT},
        {"images", required_argument, 0, O_IMAGES}, {"seed", required_argument, 0, O_SEED},
        {"n", required_argument, 0, O_N}, {"steps", required_argument, 0, O_STEPS},
        {"no-clip", no_argument, 0, O_NO_CLIP}, {"out", required_argument, 0, O_OUT},
        {"pad", required_argument, 0, O_PAD}, {"pad-value", required_argument, 0, O_PAD_VALUE},
        {"batch", required_argument, 0, O_BATCH}, {"threads", required_argument, 0, O_THREADS},
        {"no-ema", no_argument, 0, O_NO_EMA}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP}, {"sources", no_argument, 0, O_SOURCES},
        {"from", required_argument, 0, O_FROM}, {"checkpoint", required_argument, 0, O_CHECKPOINT},
        {"sampler", required_argument, 0, O_SAMPLER}, {"spacing", required_argument, 0, O_SPACING},
        {"precision", required_argument, 0, O_PRECISION}, {0, 0, 0, 0},
    };
    ddpm_interpolate_png_config *pc = &a->pc;
    ddpm_interpolate_config *ic = &pc->interp;
    int opt, bad = 0, longindex = -1;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        if (recipe_sets(opt) && !a->recipe_flag && longindex >= 0)
            a->recipe_flag = longopts[longindex].name;
        longindex = -1;
        switch (opt) {
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_SEEDS: bad |= parse_seeds(optarg, &pc->seed_a, &pc->seed_b); a->have_seeds = 1; break;
        case O_AT: bad |= arg_int("at", optarg, 1, 1000000, &pc->t); break;
        case O_IMAGES: a->images = optarg; break;
        case O_SEED: bad |= arg_u64("seed", optarg, &pc->seed); break;
        case O_N: bad |= arg_int("n", optarg, 2, 100000, &ic->n); break;
        case O_STEPS: bad |= arg_int("steps", optarg, 1, 100000, &ic->steps); a->steps_given = 1; break;
        case O_NO_CLIP: ic->clip_x0 = 0; break;
        case O_OUT: pc->out = optarg; a->out_given = 1; break;
        case O_PAD: bad |= arg_int("pad", optarg, 0, 1000, &pc->pad); break;
        case O_PAD_VALUE: bad |= arg_int("pad-value", optarg, 0, 255, &pc->pad_value); break;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &ic->batch); break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &a->threads); break;
        case O_NO_EMA: a->no_ema = 1; break;
        case O_QUIET: a->quiet = 1; break;
        case O_SOURCES: pc->sources = 1; break;
        case O_FROM: a->from = optarg; break;
        case O_CHECKPOINT: a->checkpoint_flag = optarg; break;
        case O_SAMPLER: bad |= arg_sampler("sampler", optarg, &ic->sampler); break;
        case O_SPACING: bad |= arg_spacing("spacing", optarg, &ic->spacing); a->spacing_given = 1; break;
        case O_PRECISION: bad |= arg_precision(optarg, &a->precision); break;
        default:
            cli_error("interpolate: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("interpolate");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    a->ckpt_arg = optind < argc ? argv[optind] : NULL;
    if (optind < argc - 1 || (!a->from && optind != argc - 1)) {
        cli_error(optind >= argc ? "interpolate: missing RUN_DIR or CHECKPOINT"
                                 : "interpolate: expected one checkpoint");
        return cli_usage_error("interpolate");
    }
    if (a->checkpoint_flag && !a->from) {
        cli_error("interpolate: --checkpoint goes with --from (else name the checkpoint as the argument)");
        return DDPM_EXIT_USAGE;
    }
    if (!ddpm_sampler_deterministic(ic->sampler, 0.0f)) {
        cli_error("interpolate: --sampler %s draws noise at every step; an interpolation needs a deterministic "
                  "one (ddim, dpm++2m, dpm++3m, dpm++2s, unipc, unipc3, heun)",
                  ddpm_sampler_name(ic->sampler));
        return DDPM_EXIT_USAGE;
    }
    if (a->spacing_given && !ddpm_sampler_has(ic->sampler, DDPM_SAMPLER_TAKES_SPACING) &&
        !(ic->sampler == DDPM_SAMPLER_DDIM && ic->spacing == DDPM_SPACING_TIME)) {
        cli_error("interpolate: --spacing %s does not apply to --sampler %s (its steps are uniform in t)",
                  ddpm_spacing_name(ic->spacing), ddpm_sampler_name(ic->sampler));
        return DDPM_EXIT_USAGE;
    }
    if (a->images && parse_images(a->images, a->path_a, a->path_b, sizeof a->path_a))
        return DDPM_EXIT_USAGE;
    a->have_images = a->images != NULL;
    return -1;
}

/* --from: the strip's recipe sets the config; -1 to go on, else the exit code. */
static int apply_recipe(interp_args *a)
{
    ddpm_interpolate_png_config *pc = &a->pc;
    ddpm_interpolate_config *ic = &pc->interp;
    ddpm_recipe *r = &a->from_recipe;
    if (a->recipe_flag) {
        cli_error("interpolate: --%s cannot be given with --from (the recipe in %s sets it)", a->recipe_flag,
                  a->from);
        return DDPM_EXIT_USAGE;
    }
    if (!a->out_given) {
        cli_error("interpolate: --from needs --out FILE.png for the re-created strip");
        return DDPM_EXIT_USAGE;
    }
    int rc = read_strip_recipe(r, a->from);
    if (rc)
        return rc;
    if (a->images && r->kind != DDPM_RECIPE_INTERP_IMAGES) {
        cli_error("interpolate: %s is a strip between seeds; --images goes with a strip between images", a->from);
        return DDPM_EXIT_USAGE;
    }
    a->ckpt_arg = a->checkpoint_flag ? a->checkpoint_flag : a->ckpt_arg ? a->ckpt_arg : r->checkpoint;
    if (!a->ckpt_arg[0] && a->checkpoint_flag) {
        cli_error("--checkpoint: the path is empty");
        return DDPM_EXIT_USAGE;
    }
    if (!a->ckpt_arg[0]) {
        cli_error("%s: its recipe names no checkpoint path; pass the checkpoint with --checkpoint PATH", a->from);
        return DDPM_EXIT_ERROR;
    }
    if (r->precision == DDPM_PRECISION_BF16 && !ddpm_bf16_available()) {
        cli_error("%s: made with --precision bf16, which this build or CPU cannot run (no AVX512_BF16)", a->from);
        return DDPM_EXIT_ERROR;
    }
    a->precision = r->precision;
    ic->n = r->count;
    ic->sampler = r->sampler.kind;
    ic->steps = r->sampler.steps;
    ic->spacing = r->sampler.spacing;
    ic->clip_x0 = r->sampler.clip_x0;
    pc->pad = r->pad;
    pc->pad_value = r->pad_value;
    a->no_ema = !r->ema;
    a->steps_given = 1;
    if (r->kind == DDPM_RECIPE_INTERP_SEEDS) {
        a->have_seeds = 1;
        pc->seed_a = r->seed;
        pc->seed_b = r->seed_b;
        return -1;
    }
    pc->t = r->at;
    pc->seed = r->seed;
    pc->sources = r->sources;
    if (!a->have_images) {
        snprintf(a->path_a, sizeof a->path_a, "%s", r->images[0]);
        snprintf(a->path_b, sizeof a->path_b, "%s", r->images[1]);
        a->have_images = 1;
    }
    return -1;
}

/* Seeds or images, not both: -1 to go on, else the exit code. */
static int check_modes(const interp_args *a)
{
    const ddpm_interpolate_png_config *pc = &a->pc;
    if (a->have_seeds == (pc->t || a->images)) {
        cli_error("interpolate: give either --seeds A,B or --at T --images P1,P2");
        return cli_usage_error("interpolate");
    }
    if (pc->sources && !a->images) {
        cli_error("interpolate: --sources goes with --at and --images");
        return DDPM_EXIT_USAGE;
    }
    if (!a->have_seeds && (!pc->t || !a->images)) {
        cli_error("interpolate: --at and --images go together");
        return DDPM_EXIT_USAGE;
    }
    return -1;
}

/* The files against the recipe (--from) and the steps against the model: 0 or
 * the exit code. Fills the recipe the strip carries. */
static int check_model(interp_args *a, const ddpm_model *m, ddpm_recipe *recipe)
{
    ddpm_interpolate_png_config *pc = &a->pc;
    ddpm_interpolate_config *ic = &pc->interp;
    const ddpm_recipe *r = &a->from_recipe;
    const char *from = a->from;
    int rc = 0;
    /* the recipe: the checkpoint by its hash; --from checks the files against it
       before any work, and writes the names the strip was made with */
    ddpm_model_recipe(m, recipe);
    if (from) {
        char named[1200];
        snprintf(named, sizeof named, "%.1023s at step %ld", r->checkpoint, r->step);
        rc = check_sha256(m->path, m->sha256, r->checkpoint_sha256, from, "checkpoint", named,
                          "pass that one with --checkpoint");
        for (int k = 0; !rc && pc->image_a && k < 2; k++)
            rc = check_sha256(k ? pc->image_b : pc->image_a, NULL, r->image_sha256[k], from,
                              k ? "second source image" : "first source image", r->images[k],
                              "pass the source images with --images P1,P2");
        memcpy(recipe->images, r->images, sizeof recipe->images);
        snprintf(recipe->checkpoint, sizeof recipe->checkpoint, "%.1023s", r->checkpoint);
    }
    int T = m->sched.T, max_steps = pc->t ? pc->t : T;
    if (!rc && pc->t > T) {
        cli_error("%s: %d is more than the model's %d timesteps", from ? "the recipe's step t" : "--at", pc->t, T);
        return DDPM_EXIT_USAGE;
    }
    if (!rc && ic->steps > max_steps && a->steps_given) {
        cli_error("%s: %d is more than %s %d", from ? "the recipe's steps" : "--steps", ic->steps,
                  pc->t ? "the step t" : "the model's timesteps", max_steps);
        return DDPM_EXIT_USAGE;
    }
    if (ic->steps > max_steps)
        ic->steps = max_steps;
    return rc;
}

int cmd_interpolate(int argc, char **argv)
{
    interp_args a;
    memset(&a, 0, sizeof a);
    ddpm_interpolate_png_config_default(&a.pc);
    ddpm_interpolate_png_config *pc = &a.pc;
    int rc = parse_flags(&a, argc, argv);
    if (rc < 0)
        rc = a.from ? apply_recipe(&a) : check_modes(&a);
    if (rc >= 0)
        return rc;
    if (a.have_images) {
        pc->image_a = a.path_a;
        pc->image_b = a.path_b;
    }
    const cli_input in[4] = {{a.ckpt_arg, CLI_IN_CHECKPOINT},
                             {a.from, CLI_IN_FILE},
                             {pc->image_a, CLI_IN_FILE},
                             {pc->image_b, CLI_IN_FILE}};
    if ((rc = cli_check_input_file(a.ckpt_arg, CLI_IN_CHECKPOINT, "the checkpoint")) ||
        (rc = cli_check_input_file(pc->image_a, CLI_IN_FILE, "the first source image")) ||
        (rc = cli_check_input_file(pc->image_b, CLI_IN_FILE, "the second source image")) ||
        (rc = cli_check_output("--out", pc->out, 0, in, 4)) || (rc = cli_check_writable_parent(pc->out)))
        return rc;
    ddpm_threads_set(a.threads);
    ddpm_model m;
    if ((rc = cli_open_model(&m, a.ckpt_arg, a.no_ema, "using")))
        return rc;
    ddpm_recipe recipe;
    if (ddpm_model_set_precision(&m, a.precision)) {
        cli_error("%s", ddpm_last_error());
        ddpm_model_close(&m);
        return DDPM_EXIT_ERROR;
    }
    if ((rc = check_model(&a, &m, &recipe))) {
        ddpm_model_close(&m);
        return rc;
    }
    pc->recipe = &recipe;
    const ddpm_interpolate_config *ic = &pc->interp;
    if ((rc = ddpm_interpolate_png(&m, pc)))
        cli_error("%s", ddpm_last_error());
    else if (!a.quiet) {
        char how[128];
        if (ic->sampler == DDPM_SAMPLER_DDIM)
            snprintf(how, sizeof how, "DDIM %d steps (eta 0)", ic->steps);
        else
            snprintf(how, sizeof how, "%s %d evaluations, spacing %s", ddpm_sampler_name(ic->sampler), ic->steps,
                     ddpm_spacing_name(ic->spacing));
        if (pc->image_a)
            fprintf(stderr,
                    "ddpm: %d images between %s and %s noised to t = %d, %s, %s weights of step %ld\n",
                    ic->n, cli_q(pc->image_a), cli_q(pc->image_b), pc->t, how, m.ema ? "EMA" : "raw", m.step);
        else
            fprintf(stderr,
                    "ddpm: %d images between seeds %" PRIu64 " and %" PRIu64
                    ", %s, %s weights of step %ld\n",
                    ic->n, pc->seed_a, pc->seed_b, how, m.ema ? "EMA" : "raw", m.step);
        printf("%s\n", cli_q(pc->out));
    }
    ddpm_model_close(&m);
    return rc ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
