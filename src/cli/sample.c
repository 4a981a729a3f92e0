/* sample.c: `ddpm sample RUN_DIR|CKPT`: DDPM or DDIM sampling into PNG grids. */
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "cli.h"
#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "ddpm/recipe.h"
#include "ddpm/sample.h"
#include "ddpm/sha256.h"

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddpm sample RUN_DIR|CHECKPOINT [options]\n"
"       ddpm sample --from IMAGE.png --out FILE.png [--checkpoint PATH] [RUN_DIR|CHECKPOINT]\n"
"\n"
"Samples images from a trained model and writes them as a PNG grid (and/or one\n"
"PNG per image). RUN_DIR is a `ddpm train --out` folder (its\n"
"checkpoint.safetensors is used). The model, its schedule and T come from the\n"
"checkpoint. Same checkpoint, seed and flags: identical PNG bytes, any --threads.\n"
"\n"
"Every PNG carries its recipe in tEXt chunks (ddpm version, the checkpoint's\n"
"SHA-256, path and step, EMA or raw, sampler, steps, eta, variance, clipping,\n"
"seed, the image's index or the grid's first index, count, nrow and pad, and\n"
"for a class-conditional sample the class index and name or --grid-by-class,\n"
"and --guidance); `ddpm info IMAGE.png` prints it.\n"
"recipes:\n"
"  --from IMAGE.png     re-create IMAGE.png (a grid, one image of --out-dir, or a\n"
"                       trajectory, conditional or not) byte for byte from its\n"
"                       recipe into --out, which is required. The checkpoint is\n"
"                       --checkpoint, else RUN_DIR|CHECKPOINT, else the path in\n"
"                       the recipe; one whose SHA-256 differs from the recipe's\n"
"                       is refused, and so is a recipe whose class the\n"
"                       checkpoint does not have. The flags that the recipe sets\n"
"                       are refused with --from. A strip of ddpm interpolate is\n"
"                       re-created by `ddpm interpolate --from`, not here.\n"
"  --checkpoint PATH    the checkpoint for --from (a file or a RUN_DIR)\n"
"\n"
"samplers (each network evaluation costs one forward pass per image):\n");
    fprintf(f, /* two strings: C99 compilers need only take 4095 characters in one */
"samplers (each network evaluation costs one forward pass per image):\n"
"  --sampler ddim       DDIM (Song et al. 2021) on S evenly spaced steps (default;\n"
"                       S network evaluations). The predicted x0 is clipped to\n"
"                       [-1, 1] and eps recomputed from it.\n"
"  --sampler ddpm       ancestral sampling, Algorithm 2 of the DDPM paper: all T\n"
"                       steps (T evaluations: 10x the default DDIM's cost). With\n"
"                       clipping (default) the mean is the posterior mean of the\n"
"                       clipped predicted x0; with --no-clip it is Algorithm 2's\n"
"                       eps form exactly.\n"
"  --steps S            DDIM steps, 1..T (default 100)\n"
"  --eta E              DDIM noise, 0 deterministic .. 1 ancestral (default 1:\n"
"                       on briefly trained models eta 0 leaves many cells as\n"
"                       textured blobs, eta 1 almost none; see README)\n"
"  --var beta|beta-tilde|learned  DDPM's sigma_t^2 (default beta; learned, the\n"
"                       model's own, for a model trained with --learn-sigma)\n"
"  --no-clip            do not clip the predicted x0\n"
"class-conditional models (ddpm train --classes):\n"
"  --class NAME|INDEX   sample this class (a name from the checkpoint, or its\n"
"                       index); default: unconditional (the \"no class\" row)\n"
"  --guidance W         classifier-free guidance: out = out_uncond + W (out_cond -\n"
"                       out_uncond). 1 (default) the conditional model, one\n"
"                       forward pass per step; 0 unconditional; > 1 guided, two\n"
"                       forward passes per step\n"
"  --grid-by-class      one grid row per class, --n images each (default n 8\n"
"                       with this flag)\n"
"output:\n"
"  --out FILE.png       the grid (default samples.png)\n"
"  --out-dir DIR        also one PNG per image, DIR/00000.png ...\n"
"  --no-grid            write only --out-dir, no grid\n"
"  --n N                number of images (default 64)\n"
"  --nrow N             images per grid row (default ceil(sqrt(n)))\n"
"  --pad P              pixels between cells (default 2)\n"
"  --pad-value V        padding gray level 0..255 (default 255)\n"
"  --trajectory FILE.png  also a progressive-generation figure: one row per\n"
"                       sample (the first 16 at most), the predicted x0 at K\n"
"                       evenly spaced steps from t = T to the end\n"
"  --trajectory-k K     columns of the trajectory (default 10)\n"
"run:\n"
"  --seed N             noise seed (default 0)\n"
"  --batch N            images per network call; bounds memory (default 64)\n"
"  --threads N          threads for OpenMP and OpenBLAS (default: all cores)\n"
"  --no-ema             use the raw weights, not the EMA weights\n"
"  --quiet              no progress output\n"
"  --json               print a JSON summary on stdout\n"
"exit codes: 0 ok, 1 error (bad checkpoint, unwritable output), 2 usage\n");
}

enum {
    O_OUT = 256, O_OUT_DIR, O_NO_GRID, O_N, O_NROW, O_PAD, O_PAD_VALUE, O_SAMPLER, O_STEPS, O_ETA, O_VAR,
    O_NO_CLIP, O_TRAJ, O_TRAJ_K, O_SEED, O_BATCH, O_THREADS, O_NO_EMA, O_QUIET, O_JSON, O_HELP, O_FROM,
    O_CHECKPOINT,
    O_CLASS, O_GUIDANCE, O_GRID_BY_CLASS,
};

/* The flags a recipe sets: refused with --from. */
static int recipe_sets(int opt)
{
    return opt == O_OUT_DIR || opt == O_NO_GRID || opt == O_N || opt == O_NROW || opt == O_PAD ||
           opt == O_PAD_VALUE || opt == O_SAMPLER || opt == O_STEPS || opt == O_ETA || opt == O_VAR ||
           opt == O_NO_CLIP || opt == O_TRAJ || opt == O_TRAJ_K || opt == O_SEED || opt == O_NO_EMA ||
           opt == O_CLASS || opt == O_GUIDANCE || opt == O_GRID_BY_CLASS;
}

/* The sampling config that re-creates the file the recipe describes into out. */
static void config_from_recipe(ddpm_sample_files_config *fc, const ddpm_recipe *r, const char *out)
{
    fc->sampler = r->sampler;
    fc->seed = r->seed;
    fc->first_index = r->first_index;
    fc->n = r->count;
    fc->grid_path = NULL;
    fc->class_index = r->class_index;
    fc->guidance = r->guidance;
    fc->grid_by_class = r->grid_by_class > 0;
    if (r->grid_by_class) /* the grid's rows (a trajectory's first rows) of grid_by_class images each */
        fc->n = r->grid_by_class;
    switch (r->kind) {
    case DDPM_RECIPE_GRID:
        fc->grid_path = out;
        fc->nrow = r->nrow;
        fc->pad = r->pad;
        fc->pad_value = r->pad_value;
        break;
    case DDPM_RECIPE_IMAGE: fc->image_path = out; break;
    case DDPM_RECIPE_TRAJECTORY:
        fc->trajectory_path = out;
        fc->trajectory_k = r->nrow;
        fc->pad = r->pad;
        fc->pad_value = r->pad_value;
        break;
    case DDPM_RECIPE_INTERP_SEEDS:
    case DDPM_RECIPE_INTERP_IMAGES: break; /* refused before: ddpm interpolate --from */
    }
}

/* A copy of the checkpoint's class names (NULL for an unconditional model), for
 * the recipes written after the checkpoint is closed; free with free(). */
static char **copy_class_names(const ddpm_checkpoint *ck, int n_classes)
{
    const char *const *names = ddpm_checkpoint_class_names(ck);
    if (!names || n_classes <= 0)
        return NULL;
    size_t bytes = (size_t)n_classes * sizeof(char *);
    for (int k = 0; k < n_classes; k++)
        bytes += strlen(names[k]) + 1;
    char **copy = ddpm_malloc(bytes, 1);
    if (!copy)
        return NULL;
    char *at = (char *)(copy + n_classes);
    for (int k = 0; k < n_classes; k++) {
        size_t len = strlen(names[k]) + 1;
        memcpy(at, names[k], len);
        copy[k] = at;
        at += len;
    }
    return copy;
}

typedef struct {
    int tty;
    double t_start;
} progress_ctx;

static void on_progress(void *opaque, const ddpm_sample_progress *p)
{
    const progress_ctx *pc = opaque;
    int k = p->step - 1, n_steps = p->n_steps;
    double work_done = p->first + (double)p->B * (k + 1) / n_steps;
    int report = pc->tty ? 1 : ((k + 1) % (n_steps / 4 > 0 ? n_steps / 4 : 1) == 0);
    if (!report)
        return;
    double el = ddpm_now_seconds() - pc->t_start;
    double ips = work_done * n_steps / el; /* image-steps per second */
    double eta = (p->n - work_done) * n_steps / ips;
    fprintf(stderr, "%sstep %d/%d  images %d-%d of %d  %.0f image-steps/s  ETA %.0fs%s", pc->tty ? "\r\033[K" : "",
            k + 1, n_steps, p->first + 1, p->first + p->B, p->n, ips, eta, pc->tty ? "" : "\n");
    fflush(stderr);
}

int cmd_sample(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"out", required_argument, 0, O_OUT}, {"out-dir", required_argument, 0, O_OUT_DIR},
        {"no-grid", no_argument, 0, O_NO_GRID}, {"n", required_argument, 0, O_N},
        {"nrow", required_argument, 0, O_NROW}, {"pad", required_argument, 0, O_PAD},
        {"pad-value", required_argument, 0, O_PAD_VALUE}, {"sampler", required_argument, 0, O_SAMPLER},
        {"steps", required_argument, 0, O_STEPS}, {"eta", required_argument, 0, O_ETA},
        {"var", required_argument, 0, O_VAR}, {"no-clip", no_argument, 0, O_NO_CLIP},
        {"trajectory", required_argument, 0, O_TRAJ}, {"trajectory-k", required_argument, 0, O_TRAJ_K},
        {"seed", required_argument, 0, O_SEED}, {"batch", required_argument, 0, O_BATCH},
        {"threads", required_argument, 0, O_THREADS}, {"no-ema", no_argument, 0, O_NO_EMA},
        {"quiet", no_argument, 0, O_QUIET}, {"json", no_argument, 0, O_JSON}, {"help", no_argument, 0, O_HELP},
        {"from", required_argument, 0, O_FROM}, {"checkpoint", required_argument, 0, O_CHECKPOINT},
        {"class", required_argument, 0, O_CLASS}, {"guidance", required_argument, 0, O_GUIDANCE},
        {"grid-by-class", no_argument, 0, O_GRID_BY_CLASS}, {0, 0, 0, 0},
    };
    ddpm_sample_files_config fc;
    ddpm_sample_files_config_default(&fc);
    const char *out = fc.grid_path;
    int threads = 0, no_ema = 0, quiet = 0, json = 0, no_grid = 0, steps_given = 0, out_given = 0, n_given = 0;
    int var_given = 0;
    const char *from = NULL, *checkpoint_flag = NULL, *recipe_flag = NULL;
    const char *class_arg = NULL;
    ddpm_sampler_config *sc = &fc.sampler;
    int opt, bad = 0, longindex = -1;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        if (recipe_sets(opt) && !recipe_flag && longindex >= 0)
            recipe_flag = longopts[longindex].name;
        longindex = -1;
        switch (opt) {
        case O_FROM: from = optarg; break;
        case O_CHECKPOINT: checkpoint_flag = optarg; break;
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_OUT: out = optarg; out_given = 1; break;
        case O_OUT_DIR: fc.each_dir = optarg; break;
        case O_NO_GRID: no_grid = 1; break;
        case O_N: bad |= arg_int("n", optarg, 1, 1000000, &fc.n); n_given = 1; break;
        case O_CLASS: class_arg = optarg; break;
        case O_GUIDANCE: bad |= arg_float("guidance", optarg, 0, 1000, &fc.guidance); break;
        case O_GRID_BY_CLASS: fc.grid_by_class = 1; break;
        case O_NROW: bad |= arg_int("nrow", optarg, 1, 100000, &fc.nrow); break;
        case O_PAD: bad |= arg_int("pad", optarg, 0, 1000, &fc.pad); break;
        case O_PAD_VALUE: bad |= arg_int("pad-value", optarg, 0, 255, &fc.pad_value); break;
        case O_SAMPLER:
            if (!strcmp(optarg, "ddpm"))
                sc->kind = DDPM_SAMPLER_DDPM;
            else if (!strcmp(optarg, "ddim"))
                sc->kind = DDPM_SAMPLER_DDIM;
            else {
                cli_error("--sampler: '%s' is not ddpm or ddim", optarg);
                bad = 1;
            }
            break;
        case O_STEPS: bad |= arg_int("steps", optarg, 1, 100000, &sc->steps); steps_given = 1; break;
        case O_ETA: bad |= arg_float("eta", optarg, 0, 1, &sc->eta); break;
        case O_VAR: bad |= arg_var(optarg, &sc->var), var_given = 1; break;
        case O_NO_CLIP: sc->clip_x0 = 0; break;
        case O_TRAJ: fc.trajectory_path = optarg; break;
        case O_TRAJ_K: bad |= arg_int("trajectory-k", optarg, 1, 1000, &fc.trajectory_k); break;
        case O_SEED: bad |= arg_u64("seed", optarg, &fc.seed); break;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &fc.batch); break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &threads); break;
        case O_NO_EMA: no_ema = 1; break;
        case O_QUIET: quiet = 1; break;
        case O_JSON: json = 1; break;
        default:
            cli_error("sample: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("sample");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    ddpm_recipe from_recipe;
    const char *ckpt_arg = optind < argc ? argv[optind] : NULL;
    if (optind < argc - 1 || (!from && optind != argc - 1)) {
        cli_error(optind >= argc ? "sample: missing RUN_DIR or CHECKPOINT" : "sample: expected one checkpoint");
        return cli_usage_error("sample");
    }
    if (checkpoint_flag && !from) {
        cli_error("sample: --checkpoint goes with --from (else name the checkpoint as the argument)");
        return DDPM_EXIT_USAGE;
    }
    if (from) {
        if (recipe_flag) {
            cli_error("sample: --%s cannot be given with --from (the recipe in %s sets it)", recipe_flag, from);
            return DDPM_EXIT_USAGE;
        }
        if (!out_given) {
            cli_error("sample: --from needs --out FILE.png for the re-created image");
            return DDPM_EXIT_USAGE;
        }
        int rc = ddpm_recipe_read_png(&from_recipe, from);
        if (rc == 0)
            cli_error("%s: this PNG carries no ddpm recipe (no ddpm tEXt chunks); it cannot be re-created", from);
        else if (rc < 0)
            cli_error("%s", ddpm_last_error());
        if (rc <= 0)
            return DDPM_EXIT_ERROR;
        if (ddpm_recipe_is_strip(from_recipe.kind)) {
            cli_error("%s: an interpolation strip; re-create it with "
                      "`ddpm interpolate --from %s --out FILE.png`",
                      from, from);
            return DDPM_EXIT_ERROR;
        }
        if (!from_recipe.checkpoint_sha256[0]) {
            cli_error("%s: made from the weights of step %ld, which were never saved as a checkpoint (a training "
                      "preview between checkpoints); it cannot be re-created",
                      from, from_recipe.step);
            return DDPM_EXIT_ERROR;
        }
        if (checkpoint_flag)
            ckpt_arg = checkpoint_flag;
        else if (!ckpt_arg)
            ckpt_arg = from_recipe.checkpoint;
        config_from_recipe(&fc, &from_recipe, out);
        no_ema = !from_recipe.ema;
        no_grid = fc.grid_path == NULL;
        n_given = 1; /* the recipe's n, also with rows by class */
    }
    if (no_grid && !fc.each_dir && !from) {
        cli_error("sample: --no-grid needs --out-dir");
        return DDPM_EXIT_USAGE;
    }
    if (steps_given && sc->kind == DDPM_SAMPLER_DDPM) {
        cli_error("sample: --steps applies to --sampler ddim (ddpm always runs all T steps)");
        return DDPM_EXIT_USAGE;
    }
    char ckpt_path[4096];
    struct stat st;
    cli_checkpoint_path(ckpt_path, sizeof ckpt_path, ckpt_arg);
    int out_rc = 0;
    if ((!no_grid && (out_rc = cli_check_writable_parent(out))) ||
        (fc.trajectory_path && (out_rc = cli_check_writable_parent(fc.trajectory_path))))
        return out_rc;
    if (fc.each_dir && !fc.each_dir[0]) {
        cli_error("--out-dir: the folder name is empty");
        return DDPM_EXIT_USAGE;
    }
    if (fc.each_dir && stat(fc.each_dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        cli_error("%s: is a file; --out-dir names a folder", fc.each_dir);
        return DDPM_EXIT_ERROR;
    }
    if (fc.each_dir && stat(fc.each_dir, &st) != 0 && (out_rc = cli_check_writable_parent(fc.each_dir)))
        return out_rc;
    if (from && (out_rc = cli_check_writable_parent(out)))
        return out_rc;
    cli_set_threads(threads);

    ddpm_recipe recipe;
    ddpm_recipe_init(&recipe);
    if (ddpm_sha256_file(ckpt_path, recipe.checkpoint_sha256)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if (from && strcmp(recipe.checkpoint_sha256, from_recipe.checkpoint_sha256)) {
        cli_error("%s: SHA-256 %.12s... is not the checkpoint %s was made from (%.12s..., %s at step %ld); pass "
                  "that one with --checkpoint",
                  ckpt_path, recipe.checkpoint_sha256, from, from_recipe.checkpoint_sha256, from_recipe.checkpoint,
                  from_recipe.step);
        return DDPM_EXIT_ERROR;
    }

    ddpm_checkpoint *ck = NULL;
    if (ddpm_checkpoint_open(&ck, ckpt_path)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    const ddpm_run_config *cfg = ddpm_checkpoint_config(ck);
    if (sc->kind == DDPM_SAMPLER_DDIM && sc->steps > cfg->timesteps) {
        cli_error("--steps: %d is more than the model's %d timesteps", sc->steps, cfg->timesteps);
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_USAGE;
    }
    if (!from && !var_given && cfg->model.learn_sigma) /* a learned-variance model samples with its own */
        sc->var = DDPM_VAR_LEARNED;
    if (sc->var == DDPM_VAR_LEARNED && !cfg->model.learn_sigma) {
        cli_error("--var learned: %s has fixed variances (it was not trained with --learn-sigma)", ckpt_path);
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_USAGE;
    }
    int n_classes = cfg->model.n_classes;
    if (from && ddpm_recipe_check_classes(&from_recipe, n_classes, ddpm_checkpoint_class_names(ck), from)) {
        cli_error("%s", ddpm_last_error());
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_ERROR;
    }
    if ((class_arg || fc.grid_by_class) && n_classes == 0) {
        cli_error("%s: the model is not class-conditional (trained without --classes)", ckpt_path);
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_USAGE;
    }
    if (class_arg && fc.grid_by_class) {
        cli_error("sample: --class and --grid-by-class exclude each other");
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_USAGE;
    }
    if (class_arg) { /* a name first, then an index */
        const char *const *names = ddpm_checkpoint_class_names(ck);
        for (int k = 0; k < n_classes && fc.class_index == DDPM_NO_CLASS; k++)
            if (!strcmp(names[k], class_arg))
                fc.class_index = k;
        char *end;
        long v = strtol(class_arg, &end, 10);
        if (fc.class_index == DDPM_NO_CLASS && *class_arg && !*end && v >= 0 && v < n_classes)
            fc.class_index = (int)v;
        if (fc.class_index == DDPM_NO_CLASS) {
            cli_error("--class: '%s' is not one of the model's %d classes (%s, ...) nor an index 0..%d", class_arg,
                      n_classes, names[0], n_classes - 1);
            ddpm_checkpoint_close(ck);
            return DDPM_EXIT_USAGE;
        }
    }
    if (fc.grid_by_class && !n_given)
        fc.n = 8;
    char **class_names = copy_class_names(ck, n_classes);
    ddpm_unet *net = NULL;
    float *params = NULL;
    int used_ema = 0;
    int rc = n_classes > 0 && !class_names ? DDPM_ENOMEM : DDPM_OK;
    if (!rc)
        rc = ddpm_checkpoint_load_model(ck, !no_ema, &net, &params, &used_ema);
    long ck_step = ddpm_checkpoint_state(ck)->step;
    ddpm_schedule sched;
    memset(&sched, 0, sizeof sched);
    if (!rc)
        rc = ddpm_schedule_init(&sched, cfg->schedule, cfg->timesteps, cfg->beta_start, cfg->beta_end);
    ddpm_checkpoint_close(ck);
    if (rc) {
        cli_error("%s", ddpm_last_error());
        free(params);
        ddpm_unet_free(net);
        free(class_names);
        return DDPM_EXIT_ERROR;
    }
    if (!used_ema && !no_ema && !quiet)
        fprintf(stderr, "ddpm: %s has no EMA weights; sampling with the raw weights\n", ckpt_path);
    if (!from)
        fc.grid_path = no_grid ? NULL : out;
    snprintf(recipe.version, sizeof recipe.version, "%s", DDPM_VERSION);
    snprintf(recipe.checkpoint, sizeof recipe.checkpoint, "%.1023s", from ? from_recipe.checkpoint : ckpt_path);
    recipe.step = ck_step;
    recipe.ema = used_ema;
    fc.recipe = &recipe;
    fc.class_names = (const char *const *)class_names;
    progress_ctx pc = {isatty(fileno(stderr)), ddpm_now_seconds()};
    rc = ddpm_sample_files(net, params, &sched, &fc, NULL, quiet ? NULL : on_progress, &pc);
    double seconds = ddpm_now_seconds() - pc.t_start;
    if (pc.tty && !quiet)
        fputc('\n', stderr);
    int n_steps = ddpm_sampler_n_steps(sc, &sched), n = fc.grid_by_class ? fc.n * n_classes : fc.n;
    if (rc)
        cli_error("%s", ddpm_last_error());
    else if (!quiet) {
        fprintf(stderr, "ddpm: %d images, %s %d steps, %s weights of step %ld, %.1f s (%.0f image-steps/s)\n", n,
                sc->kind == DDPM_SAMPLER_DDIM ? "DDIM" : "DDPM", n_steps, used_ema ? "EMA" : "raw", ck_step, seconds,
                (double)n * n_steps / seconds);
        if (!no_grid || from)
            printf("%s\n", out);
    }
    if (!rc && json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "checkpoint", ckpt_path);
        cJSON_AddNumberToObject(o, "step", (double)ck_step);
        cJSON_AddStringToObject(o, "sampler", sc->kind == DDPM_SAMPLER_DDIM ? "ddim" : "ddpm");
        cJSON_AddNumberToObject(o, "steps", n_steps);
        cJSON_AddNumberToObject(o, "n", n);
        cJSON_AddBoolToObject(o, "ema", used_ema);
        if (!no_grid)
            cJSON_AddStringToObject(o, "grid", out);
        if (fc.each_dir)
            cJSON_AddStringToObject(o, "out_dir", fc.each_dir);
        cJSON_AddNumberToObject(o, "seconds", seconds);
        cJSON_AddNumberToObject(o, "image_steps_per_sec", (double)n * n_steps / seconds);
        char *text = cJSON_PrintUnformatted(o);
        if (text)
            printf("%s\n", text);
        free(text);
        cJSON_Delete(o);
    }
    ddpm_schedule_free(&sched);
    free(params);
    ddpm_unet_free(net);
    free(class_names);
    return rc ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
