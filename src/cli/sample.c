/* sample.c: `ddpm sample RUN_DIR|CKPT`: sampling with any row of the sampler
 * table into PNG grids. */
#include <cJSON.h>
#include <ctype.h>
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
#include "guard.h"
#include "ddpm/model.h"
#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "ddpm/recipe.h"
#include "ddpm/sample.h"

static void usage(FILE *f)
{
    ddpm_sample_files_config defaults;
    ddpm_sample_files_config_default(&defaults);
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
"and --guidance, and precision bf16 when given); `ddpm info IMAGE.png` prints\n"
"it.\n"
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
"samplers (each network evaluation costs one forward pass per image):\n"
"  --sampler NAME       one of (default %s):\n", ddpm_sampler_name(defaults.sampler.kind));
    for (int k = 0; k < DDPM_N_SAMPLERS; k++) { /* the table of sampler.h */
        const ddpm_sampler_info *r = ddpm_sampler_get((ddpm_sampler_kind)k);
        char evals[64] = "T";
        if (r->flags & DDPM_SAMPLER_SINGLESTEP)
            snprintf(evals, sizeof evals, "S, or S - 1 for an even S,");
        else if (r->flags & DDPM_SAMPLER_TAKES_STEPS && r->evals_per_step == 1)
            snprintf(evals, sizeof evals, "S");
        else if (r->flags & DDPM_SAMPLER_TAKES_STEPS)
            snprintf(evals, sizeof evals, "%d S", r->evals_per_step);
        if (r->flags & DDPM_SAMPLER_TAKES_STEPS && r->evals_extra)
            snprintf(evals + strlen(evals), sizeof evals - strlen(evals), " %c %d", r->evals_extra < 0 ? '-' : '+',
                     abs(r->evals_extra));
        fprintf(f, "      %-17s%s\n%23s(%s evaluations%s%s%s%s)\n", r->name, r->help, "", evals,
                r->flags & DDPM_SAMPLER_TAKES_STEPS ? "; --steps" : "", r->flags & DDPM_SAMPLER_TAKES_ETA ? ", --eta" : "",
                r->flags & DDPM_SAMPLER_TAKES_SPACING ? ", --spacing" : "",
                r->flags & DDPM_SAMPLER_TAKES_VAR ? "; --var" : "");
    }
    fprintf(f,
"                       The predicted x0 is clipped to [-1, 1] (default): DDIM\n"
"                       recomputes eps from it, DDPM's mean is the posterior\n"
"                       mean of the clipped x0, the solvers (dpm++*, unipc*,\n"
"                       heun, euler-a) clip every data prediction they use;\n"
"                       with --no-clip DDPM is Algorithm 2's eps form exactly.\n"
"                       The solvers evaluate the network at continuous step\n"
"                       indices and ignore learned variances; from one seed\n"
"                       they all start from the x_T of DDPM and of DDIM with\n"
"                       --steps T. DDPM costs T evaluations: 50x the default.\n"
"  --steps S            network evaluations of a sampler that takes steps, 1..T\n"
"                       (default 20): DDIM's steps; a multistep solver's time\n"
"                       points; heun and dpm++2s take (S + 1) / 2 points and\n"
"                       2 evaluations on each but the last\n"
"  --spacing time|logsnr|karras  where a solver's points fall between step T-1\n"
"                       and 0: uniform in t, uniform in the log-SNR\n"
"                       (default, DPM-Solver's choice), or Karras et al.'s\n"
"                       rho = 7 in sigma; DDIM's steps are uniform in t\n"
"  --eta E              with --sampler ddim: its noise, 0 deterministic .. 1\n"
"                       ancestral (default 1:\n"
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
"  --quiet              no progress output (warnings stay)\n"
CLI_HELP_PRECISION
CLI_HELP_NO_WARNINGS
"  --json               print a JSON summary on stdout\n"
"exit codes: 0 ok, 1 error (bad checkpoint, unwritable output), 2 usage\n");
}

enum {
    O_OUT = 256, O_OUT_DIR, O_NO_GRID, O_N, O_NROW, O_PAD, O_PAD_VALUE, O_SAMPLER, O_STEPS, O_ETA, O_VAR,
    O_NO_CLIP, O_TRAJ, O_TRAJ_K, O_SEED, O_BATCH, O_THREADS, O_NO_EMA, O_QUIET, O_JSON, O_HELP, O_FROM,
    O_CHECKPOINT,
    O_CLASS, O_GUIDANCE, O_GRID_BY_CLASS, O_SPACING, O_PRECISION,
};

/* The flags a recipe sets: refused with --from. */
static int recipe_sets(int opt)
{
    return opt == O_OUT_DIR || opt == O_NO_GRID || opt == O_N || opt == O_NROW || opt == O_PAD ||
           opt == O_PAD_VALUE || opt == O_SAMPLER || opt == O_STEPS || opt == O_ETA || opt == O_VAR ||
           opt == O_NO_CLIP || opt == O_TRAJ || opt == O_TRAJ_K || opt == O_SEED || opt == O_NO_EMA ||
           opt == O_CLASS || opt == O_GUIDANCE || opt == O_GRID_BY_CLASS || opt == O_SPACING ||
           opt == O_PRECISION;
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

/* Everything the command line says. */
typedef struct {
    ddpm_sample_files_config fc;
    const char *out, *from, *checkpoint_flag, *recipe_flag, *class_arg, *ckpt_arg;
    int threads, no_ema, quiet, json, no_grid, steps_given, out_given, n_given, var_given, spacing_given;
    ddpm_precision precision;
    ddpm_recipe from_recipe;
} sample_args;

static int parse_sampler(const char *name, ddpm_sampler_kind *kind)
{
    if (ddpm_sampler_parse(name, kind) == 0)
        return 0;
    char list[256] = "";
    for (int k = 0; k < DDPM_N_SAMPLERS; k++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "",
                 ddpm_sampler_name((ddpm_sampler_kind)k));
    cli_error("--sampler: '%s' is not one of %s", name, list);
    return 1;
}

/* The flags into a; -1 to go on, else the exit code. */
static int parse_flags(sample_args *a, int argc, char **argv)
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
        {"grid-by-class", no_argument, 0, O_GRID_BY_CLASS}, {"spacing", required_argument, 0, O_SPACING},
        {"precision", required_argument, 0, O_PRECISION}, {0, 0, 0, 0},
    };
    ddpm_sample_files_config *fc = &a->fc;
    ddpm_sampler_config *sc = &fc->sampler;
    int opt, bad = 0, longindex = -1;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        if (recipe_sets(opt) && !a->recipe_flag && longindex >= 0)
            a->recipe_flag = longopts[longindex].name;
        longindex = -1;
        switch (opt) {
        case O_FROM: a->from = optarg; break;
        case O_CHECKPOINT: a->checkpoint_flag = optarg; break;
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_OUT: a->out = optarg; a->out_given = 1; break;
        case O_OUT_DIR: fc->each_dir = optarg; break;
        case O_NO_GRID: a->no_grid = 1; break;
        case O_N: bad |= arg_int("n", optarg, 1, 1000000, &fc->n); a->n_given = 1; break;
        case O_CLASS: a->class_arg = optarg; break;
        case O_GUIDANCE: bad |= arg_float("guidance", optarg, 0, 1000, &fc->guidance); break;
        case O_GRID_BY_CLASS: fc->grid_by_class = 1; break;
        case O_NROW: bad |= arg_int("nrow", optarg, 1, 100000, &fc->nrow); break;
        case O_PAD: bad |= arg_int("pad", optarg, 0, 1000, &fc->pad); break;
        case O_PAD_VALUE: bad |= arg_int("pad-value", optarg, 0, 255, &fc->pad_value); break;
        case O_SAMPLER: bad |= parse_sampler(optarg, &sc->kind); break;
        case O_STEPS: bad |= arg_int("steps", optarg, 1, 100000, &sc->steps); a->steps_given = 1; break;
        case O_ETA: bad |= arg_float("eta", optarg, 0, 1, &sc->eta); break;
        case O_SPACING:
            if (ddpm_spacing_parse(optarg, &sc->spacing)) {
                cli_error("--spacing: '%s' is not one of time, logsnr, karras", optarg);
                bad = 1;
            }
            a->spacing_given = 1;
            break;
        case O_VAR: bad |= arg_var(optarg, &sc->var), a->var_given = 1; break;
        case O_NO_CLIP: sc->clip_x0 = 0; break;
        case O_TRAJ: fc->trajectory_path = optarg; break;
        case O_TRAJ_K: bad |= arg_int("trajectory-k", optarg, 1, 1000, &fc->trajectory_k); break;
        case O_SEED: bad |= arg_u64("seed", optarg, &fc->seed); break;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &fc->batch); break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &a->threads); break;
        case O_NO_EMA: a->no_ema = 1; break;
        case O_QUIET: a->quiet = 1; break;
        case O_JSON: a->json = 1; break;
        case O_PRECISION: bad |= arg_precision(optarg, &a->precision); break;
        default:
            cli_error("sample: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("sample");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    a->ckpt_arg = optind < argc ? argv[optind] : NULL;
    if (optind < argc - 1 || (!a->from && optind != argc - 1)) {
        cli_error(optind >= argc ? "sample: missing RUN_DIR or CHECKPOINT" : "sample: expected one checkpoint");
        return cli_usage_error("sample");
    }
    if (a->checkpoint_flag && !a->from) {
        cli_error("sample: --checkpoint goes with --from (else name the checkpoint as the argument)");
        return DDPM_EXIT_USAGE;
    }
    return -1;
}

/* --from: the recipe of the PNG sets the config; -1 to go on, else the exit code. */
static int apply_recipe(sample_args *a)
{
    const char *from = a->from;
    ddpm_recipe *r = &a->from_recipe;
    if (a->recipe_flag) {
        cli_error("sample: --%s cannot be given with --from (the recipe in %s sets it)", a->recipe_flag, from);
        return DDPM_EXIT_USAGE;
    }
    if (!a->out_given) {
        cli_error("sample: --from needs --out FILE.png for the re-created image");
        return DDPM_EXIT_USAGE;
    }
    int rc = cli_check_input_file(from, CLI_IN_FILE, "--from");
    if (rc)
        return rc;
    rc = ddpm_recipe_read_png(r, from);
    if (rc == 0)
        cli_error("%s: this PNG carries no ddpm recipe (no ddpm tEXt chunks); it cannot be re-created", from);
    else if (rc < 0)
        cli_error("%s", ddpm_last_error());
    if (rc <= 0)
        return DDPM_EXIT_ERROR;
    if (ddpm_recipe_is_strip(r->kind)) {
        cli_error("%s: an interpolation strip; re-create it with `ddpm interpolate --from %s --out FILE.png`", from,
                  from);
        return DDPM_EXIT_ERROR;
    }
    if (!r->checkpoint_sha256[0]) {
        cli_error("%s: made from the weights of step %ld, which were never saved as a checkpoint (a training "
                  "preview between checkpoints); it cannot be re-created",
                  from, r->step);
        return DDPM_EXIT_ERROR;
    }
    if (a->checkpoint_flag)
        a->ckpt_arg = a->checkpoint_flag;
    else if (!a->ckpt_arg)
        a->ckpt_arg = r->checkpoint;
    if (!a->ckpt_arg[0] && a->checkpoint_flag) {
        cli_error("--checkpoint: the path is empty");
        return DDPM_EXIT_USAGE;
    }
    if (!a->ckpt_arg[0]) {
        cli_error("%s: its recipe names no checkpoint path; pass the checkpoint with --checkpoint PATH", from);
        return DDPM_EXIT_ERROR;
    }
    if (r->precision == DDPM_PRECISION_BF16 && !ddpm_bf16_available()) {
        cli_error("%s: made with --precision bf16, which this build or CPU cannot run (no AVX512_BF16)", from);
        return DDPM_EXIT_ERROR;
    }
    config_from_recipe(&a->fc, r, a->out);
    a->precision = r->precision;
    a->no_ema = !r->ema;
    a->no_grid = a->fc.grid_path == NULL;
    a->n_given = 1; /* the recipe's n, also with rows by class */
    return -1;
}

/* The inputs are files and the output files can be written without
 * overwriting them, before minutes of work: 0 or the exit code. */
static int check_outputs(const sample_args *a)
{
    const ddpm_sample_files_config *fc = &a->fc;
    struct stat st;
    int rc = 0;
    const cli_input in[2] = {{a->ckpt_arg, CLI_IN_CHECKPOINT}, {a->from, CLI_IN_FILE}};
    if ((rc = cli_check_input_file(a->ckpt_arg, CLI_IN_CHECKPOINT, "the checkpoint")))
        return rc;
    if ((!a->no_grid || a->from) && (rc = cli_check_output("--out", a->out, 0, in, 2)))
        return rc;
    if (fc->trajectory_path && (rc = cli_check_output("--trajectory", fc->trajectory_path, 0, in, 2)))
        return rc;
    if ((!a->no_grid && (rc = cli_check_writable_parent(a->out))) ||
        (fc->trajectory_path && (rc = cli_check_writable_parent(fc->trajectory_path))))
        return rc;
    if (fc->each_dir && !fc->each_dir[0]) {
        cli_error("--out-dir: the folder name is empty");
        return DDPM_EXIT_USAGE;
    }
    if (fc->each_dir && stat(fc->each_dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        cli_error("%s: is a file; --out-dir names a folder", fc->each_dir);
        return DDPM_EXIT_ERROR;
    }
    if (fc->each_dir && stat(fc->each_dir, &st) != 0 && (rc = cli_check_writable_parent(fc->each_dir)))
        return rc;
    return a->from ? cli_check_writable_parent(a->out) : 0;
}

/* The flags against the model (steps, variance, classes): 0 or the exit code. */
static int check_model(sample_args *a, const ddpm_model *m)
{
    ddpm_sample_files_config *fc = &a->fc;
    ddpm_sampler_config *sc = &fc->sampler;
    if (ddpm_sampler_has(sc->kind, DDPM_SAMPLER_TAKES_STEPS) && sc->steps > m->sched.T) {
        cli_error("--steps: %d is more than the model's %d timesteps", sc->steps, m->sched.T);
        return DDPM_EXIT_USAGE;
    }
    if (!a->from && !a->var_given && m->cfg.learn_sigma) /* a learned-variance model samples with its own */
        sc->var = DDPM_VAR_LEARNED;
    if (sc->var == DDPM_VAR_LEARNED && !m->cfg.learn_sigma) {
        cli_error("--var learned: %s has fixed variances (it was not trained with --learn-sigma)", m->path);
        return DDPM_EXIT_USAGE;
    }
    if (a->from &&
        ddpm_recipe_check_classes(&a->from_recipe, m->n_classes, (const char *const *)m->class_names, a->from)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if ((a->class_arg || fc->grid_by_class) && m->n_classes == 0) {
        cli_error("%s: the model is not class-conditional (trained without --classes)", m->path);
        return DDPM_EXIT_USAGE;
    }
    if (a->class_arg && fc->grid_by_class) {
        cli_error("sample: --class and --grid-by-class exclude each other");
        return DDPM_EXIT_USAGE;
    }
    if (a->class_arg && ddpm_model_class(m, a->class_arg, &fc->class_index)) {
        cli_error("--class: %s", ddpm_last_error());
        return DDPM_EXIT_USAGE;
    }
    if (fc->grid_by_class && !a->n_given)
        fc->n = 8;
    return 0;
}

/* The summary line and the --json object. */
static void report(const sample_args *a, const ddpm_model *m, double seconds)
{
    const ddpm_sample_files_config *fc = &a->fc;
    int n_steps = (int)ddpm_sampler_evals(fc->sampler.kind, fc->sampler.steps, m->sched.T);
    int n = fc->grid_by_class ? fc->n * m->n_classes : fc->n;
    int spaced = ddpm_sampler_has(fc->sampler.kind, DDPM_SAMPLER_TAKES_SPACING);
    const char *name = ddpm_sampler_name(fc->sampler.kind);
    if (!a->quiet) {
        char upper[32];
        size_t k = 0;
        for (; name[k] && k < sizeof upper - 1; k++)
            upper[k] = (char)toupper((unsigned char)name[k]);
        upper[k] = '\0';
        fprintf(stderr, "ddpm: %d images, %s %d %s%s%s, %s weights of step %ld, %.1f s (%.0f image-steps/s)\n", n,
                upper, n_steps, spaced ? "evaluations" : "steps", spaced ? ", spacing " : "",
                spaced ? ddpm_spacing_name(fc->sampler.spacing) : "", m->ema ? "EMA" : "raw", m->step, seconds,
                (double)n * n_steps / seconds);
        if (!a->no_grid || a->from)
            printf("%s\n", cli_q(a->out));
    }
    if (!a->json)
        return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "checkpoint", m->path);
    cJSON_AddNumberToObject(o, "step", (double)m->step);
    cJSON_AddStringToObject(o, "sampler", name);
    cJSON_AddNumberToObject(o, "steps", n_steps); /* network evaluations per image */
    cJSON_AddNumberToObject(o, "evaluations", n_steps);
    if (spaced)
        cJSON_AddStringToObject(o, "spacing", ddpm_spacing_name(fc->sampler.spacing));
    cJSON_AddNumberToObject(o, "n", n);
    cJSON_AddBoolToObject(o, "ema", m->ema);
    if (m->precision == DDPM_PRECISION_BF16)
        cJSON_AddStringToObject(o, "precision", "bf16");
    if (!a->no_grid)
        cJSON_AddStringToObject(o, "grid", a->out);
    if (fc->each_dir)
        cJSON_AddStringToObject(o, "out_dir", fc->each_dir);
    cJSON_AddNumberToObject(o, "seconds", seconds);
    cJSON_AddNumberToObject(o, "image_steps_per_sec", (double)n * n_steps / seconds);
    char *text = cJSON_PrintUnformatted(o);
    if (text)
        printf("%s\n", text);
    free(text);
    cJSON_Delete(o);
}

int cmd_sample(int argc, char **argv)
{
    sample_args a;
    memset(&a, 0, sizeof a);
    ddpm_sample_files_config_default(&a.fc);
    a.out = a.fc.grid_path;
    int rc = parse_flags(&a, argc, argv);
    if (rc < 0 && a.from)
        rc = apply_recipe(&a);
    if (rc >= 0)
        return rc;
    if (a.no_grid && !a.fc.each_dir && !a.from) {
        cli_error("sample: --no-grid needs --out-dir");
        return DDPM_EXIT_USAGE;
    }
    if (a.steps_given && !ddpm_sampler_has(a.fc.sampler.kind, DDPM_SAMPLER_TAKES_STEPS)) {
        cli_error("sample: --steps does not apply to --sampler %s (it runs all T steps)",
                  ddpm_sampler_name(a.fc.sampler.kind));
        return DDPM_EXIT_USAGE;
    }
    if (a.spacing_given && !ddpm_sampler_has(a.fc.sampler.kind, DDPM_SAMPLER_TAKES_SPACING) &&
        !(a.fc.sampler.kind == DDPM_SAMPLER_DDIM && a.fc.sampler.spacing == DDPM_SPACING_TIME)) {
        cli_error("sample: --spacing %s does not apply to --sampler %s (%s)", ddpm_spacing_name(a.fc.sampler.spacing),
                  ddpm_sampler_name(a.fc.sampler.kind),
                  a.fc.sampler.kind == DDPM_SAMPLER_DDIM ? "its steps are uniform in t" : "it runs all T steps");
        return DDPM_EXIT_USAGE;
    }
    if ((rc = check_outputs(&a)))
        return rc;
    ddpm_threads_set(a.threads);
    ddpm_model m;
    if ((rc = cli_open_model(&m, a.ckpt_arg, a.no_ema, "sampling with")))
        return rc;
    if (a.from && strcmp(m.sha256, a.from_recipe.checkpoint_sha256)) {
        cli_error("%s: SHA-256 %.12s... is not the checkpoint %s was made from (%.12s..., %s at step %ld); pass "
                  "that one with --checkpoint",
                  m.path, m.sha256, a.from, a.from_recipe.checkpoint_sha256, a.from_recipe.checkpoint,
                  a.from_recipe.step);
        ddpm_model_close(&m);
        return DDPM_EXIT_ERROR;
    }
    if ((rc = check_model(&a, &m)) || (rc = ddpm_model_set_precision(&m, a.precision))) {
        if (rc < 0)
            cli_error("%s", ddpm_last_error());
        ddpm_model_close(&m);
        return rc < 0 ? DDPM_EXIT_ERROR : rc;
    }
    if (!a.from)
        a.fc.grid_path = a.no_grid ? NULL : a.out;
    ddpm_recipe recipe;
    ddpm_model_recipe(&m, &recipe);
    if (a.from) /* the name the image was made with */
        snprintf(recipe.checkpoint, sizeof recipe.checkpoint, "%.1023s", a.from_recipe.checkpoint);
    a.fc.recipe = &recipe;
    progress_ctx pc = {isatty(fileno(stderr)), ddpm_now_seconds()};
    rc = ddpm_sample_files(&m, &a.fc, a.quiet ? NULL : on_progress, &pc);
    double seconds = ddpm_now_seconds() - pc.t_start;
    if (pc.tty && !a.quiet)
        fputc('\n', stderr);
    if (rc)
        cli_error("%s", ddpm_last_error());
    else
        report(&a, &m, seconds);
    ddpm_model_close(&m);
    return rc ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
