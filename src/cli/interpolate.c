/* interpolate.c: `ddpm interpolate RUN_DIR|CKPT`: a strip of images between two
 * seeds (slerp of x_T) or two noised real images (--at t), decoded with DDIM eta 0;
 * `ddpm interpolate --from STRIP.png` re-creates a strip from its recipe. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
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
"recipes:\n"
"  The strip carries its recipe in PNG tEXt chunks (ddpm version, the\n"
"  checkpoint's SHA-256, path and step, EMA or raw, DDIM steps, clipping, --n,\n"
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
"  --quiet              no summary line\n"
"exit codes: 0 ok, 1 error (bad checkpoint or image, unwritable output, a\n"
"checkpoint or source image that is not the recipe's), 2 usage\n");
}

enum {
    O_SEEDS = 256, O_AT, O_IMAGES, O_SEED, O_N, O_STEPS, O_NO_CLIP, O_OUT, O_PAD, O_PAD_VALUE, O_BATCH, O_THREADS,
    O_NO_EMA, O_QUIET, O_HELP, O_SOURCES, O_FROM, O_CHECKPOINT,
};

/* The flags a recipe sets: refused with --from. */
static int recipe_sets(int opt)
{
    return opt == O_SEEDS || opt == O_AT || opt == O_SEED || opt == O_N || opt == O_STEPS ||
           opt == O_NO_CLIP || opt == O_PAD || opt == O_PAD_VALUE || opt == O_NO_EMA || opt == O_SOURCES;
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
    int rc = ddpm_recipe_read_png(r, from);
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
        {"help", no_argument, 0, O_HELP}, {"sources", no_argument, 0, O_SOURCES},
        {"from", required_argument, 0, O_FROM}, {"checkpoint", required_argument, 0, O_CHECKPOINT},
        {0, 0, 0, 0},
    };
    ddpm_interpolate_png_config pc;
    ddpm_interpolate_png_config_default(&pc);
    ddpm_interpolate_config *ic = &pc.interp;
    const char *images = NULL, *from = NULL, *checkpoint_flag = NULL, *recipe_flag = NULL;
    int have_seeds = 0, steps_given = 0, out_given = 0, threads = 0, no_ema = 0, quiet = 0;
    int opt, bad = 0, longindex = -1;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        if (recipe_sets(opt) && !recipe_flag && longindex >= 0)
            recipe_flag = longopts[longindex].name;
        longindex = -1;
        switch (opt) {
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_SEEDS: bad |= parse_seeds(optarg, &pc.seed_a, &pc.seed_b); have_seeds = 1; break;
        case O_AT: bad |= arg_int("at", optarg, 1, 1000000, &pc.t); break;
        case O_IMAGES: images = optarg; break;
        case O_SEED: bad |= arg_u64("seed", optarg, &pc.seed); break;
        case O_N: bad |= arg_int("n", optarg, 2, 100000, &ic->n); break;
        case O_STEPS: bad |= arg_int("steps", optarg, 1, 100000, &ic->steps); steps_given = 1; break;
        case O_NO_CLIP: ic->clip_x0 = 0; break;
        case O_OUT: pc.out = optarg; out_given = 1; break;
        case O_PAD: bad |= arg_int("pad", optarg, 0, 1000, &pc.pad); break;
        case O_PAD_VALUE: bad |= arg_int("pad-value", optarg, 0, 255, &pc.pad_value); break;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &ic->batch); break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &threads); break;
        case O_NO_EMA: no_ema = 1; break;
        case O_QUIET: quiet = 1; break;
        case O_SOURCES: pc.sources = 1; break;
        case O_FROM: from = optarg; break;
        case O_CHECKPOINT: checkpoint_flag = optarg; break;
        default:
            cli_error("interpolate: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("interpolate");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    const char *ckpt_arg = optind < argc ? argv[optind] : NULL;
    if (optind < argc - 1 || (!from && optind != argc - 1)) {
        cli_error(optind >= argc ? "interpolate: missing RUN_DIR or CHECKPOINT"
                                 : "interpolate: expected one checkpoint");
        return cli_usage_error("interpolate");
    }
    if (checkpoint_flag && !from) {
        cli_error("interpolate: --checkpoint goes with --from (else name the checkpoint as the argument)");
        return DDPM_EXIT_USAGE;
    }
    char path_a[4096], path_b[4096];
    if (images && parse_images(images, path_a, path_b, sizeof path_a))
        return DDPM_EXIT_USAGE;
    int have_images = images != NULL;
    ddpm_recipe from_recipe;
    if (from) {
        if (recipe_flag) {
            cli_error("interpolate: --%s cannot be given with --from (the recipe in %s sets it)", recipe_flag,
                      from);
            return DDPM_EXIT_USAGE;
        }
        if (!out_given) {
            cli_error("interpolate: --from needs --out FILE.png for the re-created strip");
            return DDPM_EXIT_USAGE;
        }
        int rc = read_strip_recipe(&from_recipe, from);
        if (rc)
            return rc;
        if (images && from_recipe.kind != DDPM_RECIPE_INTERP_IMAGES) {
            cli_error("interpolate: %s is a strip between seeds; --images goes with a strip between images",
                      from);
            return DDPM_EXIT_USAGE;
        }
        ckpt_arg = checkpoint_flag ? checkpoint_flag : ckpt_arg ? ckpt_arg : from_recipe.checkpoint;
        ic->n = from_recipe.count;
        ic->steps = from_recipe.sampler.steps;
        ic->clip_x0 = from_recipe.sampler.clip_x0;
        pc.pad = from_recipe.pad;
        pc.pad_value = from_recipe.pad_value;
        no_ema = !from_recipe.ema;
        steps_given = 1;
        if (from_recipe.kind == DDPM_RECIPE_INTERP_SEEDS) {
            have_seeds = 1;
            pc.seed_a = from_recipe.seed;
            pc.seed_b = from_recipe.seed_b;
        } else {
            pc.t = from_recipe.at;
            pc.seed = from_recipe.seed;
            pc.sources = from_recipe.sources;
            if (!have_images) {
                snprintf(path_a, sizeof path_a, "%s", from_recipe.images[0]);
                snprintf(path_b, sizeof path_b, "%s", from_recipe.images[1]);
                have_images = 1;
            }
        }
    } else {
        if (have_seeds == (pc.t || images)) {
            cli_error("interpolate: give either --seeds A,B or --at T --images P1,P2");
            return cli_usage_error("interpolate");
        }
        if (pc.sources && !images) {
            cli_error("interpolate: --sources goes with --at and --images");
            return DDPM_EXIT_USAGE;
        }
        if (!have_seeds && (!pc.t || !images)) {
            cli_error("interpolate: --at and --images go together");
            return DDPM_EXIT_USAGE;
        }
    }
    if (have_images) {
        pc.image_a = path_a;
        pc.image_b = path_b;
    }
    int out_rc = cli_check_writable_parent(pc.out);
    if (out_rc)
        return out_rc;
    cli_set_threads(threads);
    ddpm_model m;
    if ((out_rc = cli_open_model(&m, ckpt_arg, no_ema, quiet, "using")))
        return out_rc;
    /* the recipe: the checkpoint by its hash; --from checks the files against it
       before any work, and writes the names the strip was made with */
    ddpm_recipe recipe;
    ddpm_model_recipe(&m, &recipe);
    if (from) {
        char named[1200];
        snprintf(named, sizeof named, "%.1023s at step %ld", from_recipe.checkpoint, from_recipe.step);
        out_rc = check_sha256(m.path, m.sha256, from_recipe.checkpoint_sha256, from, "checkpoint", named,
                              "pass that one with --checkpoint");
        for (int k = 0; !out_rc && pc.image_a && k < 2; k++)
            out_rc = check_sha256(k ? pc.image_b : pc.image_a, NULL, from_recipe.image_sha256[k], from,
                                  k ? "second source image" : "first source image", from_recipe.images[k],
                                  "pass the source images with --images P1,P2");
        memcpy(recipe.images, from_recipe.images, sizeof recipe.images);
        snprintf(recipe.checkpoint, sizeof recipe.checkpoint, "%.1023s", from_recipe.checkpoint);
    }
    int T = m.sched.T;
    if (!out_rc && pc.t > T) {
        cli_error("%s: %d is more than the model's %d timesteps", from ? "the recipe's step t" : "--at", pc.t, T);
        out_rc = DDPM_EXIT_USAGE;
    }
    int max_steps = pc.t ? pc.t : T;
    if (!out_rc && ic->steps > max_steps && steps_given) {
        cli_error("%s: %d is more than %s %d", from ? "the recipe's steps" : "--steps", ic->steps,
                  pc.t ? "the step t" : "the model's timesteps", max_steps);
        out_rc = DDPM_EXIT_USAGE;
    }
    if (ic->steps > max_steps)
        ic->steps = max_steps;
    pc.recipe = &recipe;
    int rc = out_rc ? 0 : ddpm_interpolate_png(&m, &pc);
    if (rc)
        cli_error("%s", ddpm_last_error());
    else if (!quiet && !out_rc) {
        if (pc.image_a)
            fprintf(stderr,
                    "ddpm: %d images between %s and %s noised to t = %d, DDIM %d steps (eta 0), "
                    "%s weights of step %ld\n",
                    ic->n, pc.image_a, pc.image_b, pc.t, ic->steps, m.ema ? "EMA" : "raw", m.step);
        else
            fprintf(stderr,
                    "ddpm: %d images between seeds %" PRIu64 " and %" PRIu64
                    ", DDIM %d steps (eta 0), %s weights of step %ld\n",
                    ic->n, pc.seed_a, pc.seed_b, ic->steps, m.ema ? "EMA" : "raw", m.step);
        printf("%s\n", pc.out);
    }
    ddpm_model_close(&m);
    return out_rc ? out_rc : rc ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
