/* sample.h: the reverse process. The samplers of the table in sampler.h, of
 * which ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) and DDIM (Song et
 * al. 2021) on a subsequence of steps, over a model (model.h), which may wrap
 * a stub network so that the arithmetic is tested on known answers and the same
 * code drives the U-Net. Step indices are 0-based: i = t - 1. */
#ifndef DDPM_SAMPLE_H
#define DDPM_SAMPLE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ddpm/model.h"
#include "ddpm/rng.h"
#include "ddpm/sampler.h"
#include "ddpm/schedule.h"
#include "ddpm/unet.h"

/* sigma_t^2 of the reverse process: beta_t, beta~_t, or learned per value by
 * the network (ddpm_unet_config.learn_sigma; predict.h) */
typedef enum { DDPM_VAR_BETA = 0, DDPM_VAR_BETA_TILDE = 1, DDPM_VAR_LEARNED = 2 } ddpm_var_kind;
#define DDPM_N_VARS 3

/* "beta" "beta-tilde" "learned" <-> kind; parse returns -1 on an unknown name.
 * Inline, so that the recipe reader (and its fuzzer) shares the names without
 * linking the samplers. */
static inline const char *ddpm_var_name(ddpm_var_kind kind)
{
    static const char *const names[DDPM_N_VARS] = {"beta", "beta-tilde", "learned"};
    return (unsigned)kind < DDPM_N_VARS ? names[kind] : "?";
}
static inline int ddpm_var_parse(const char *name, ddpm_var_kind *kind)
{
    for (int k = 0; k < DDPM_N_VARS; k++)
        if (!strcmp(name, ddpm_var_name((ddpm_var_kind)k))) {
            *kind = (ddpm_var_kind)k;
            return 0;
        }
    return -1;
}

typedef struct {
    ddpm_sampler_kind kind; /* a row of the table (sampler.h) */
    int steps;         /* S for a sampler that takes steps (1..T); the others run all T */
    float eta;         /* DDIM: 0 deterministic, 1 ancestral-like */
    ddpm_var_kind var; /* DDPM: sigma_t^2 = beta_t, beta~_t or learned (a learn_sigma model) */
    int clip_x0;       /* clip the predicted x0 to [-1, 1] (see ddpm_ddpm_step) */
    ddpm_spacing spacing; /* a solver row (DDPM_SAMPLER_TAKES_SPACING): where its points fall */
} ddpm_sampler_config;

/* DDPM, all T steps, sigma^2 = beta, clip on; for DDIM: 100 steps, eta 1; for
 * the solvers: log-SNR spacing. */
void ddpm_sampler_config_default(ddpm_sampler_config *c);

/* Called after every step: k counts steps from 0 to n_steps-1, t is the step
 * index just taken, x the new sample, x0 the predicted x0 at that step. */
typedef void (*ddpm_step_fn)(void *ctx, int k, int n_steps, double t, const float *x, const float *x0, int B);
typedef struct {
    ddpm_step_fn fn;
    void *ctx;
} ddpm_sample_watch;

/* The step functions take what the model says (model.h, ddpm_model_predict:
 * the conversion of the output is done there, once).
 *
 * One ancestral step from index i: without clipping it is Algorithm 2,
 * x_{t-1} = mean + sigma_t z with `mean` the model's reverse mean; with clipping
 * the mean is the posterior mean mu~(clip(x0), x_t) (eq. 7), which equals the
 * first whenever x0 is inside [-1, 1] (mean may then be NULL). sigma_t^2 is
 * beta_t or beta~_t, or with var DDPM_VAR_LEARNED exp(logvar_d) per value
 * (logvar from a learn_sigma model). z is ignored at i = 0. x0_out (may be
 * NULL) receives the (clipped) x0. */
void ddpm_ddpm_step(float *x_prev, float *x0_out, const float *x_t, const float *x0, const float *mean,
                    const double *logvar, const float *z, int i, size_t D, const ddpm_schedule *s, ddpm_var_kind var,
                    int clip_x0);
/* One DDIM step from index i to index i_prev (-1: to x_0, abar = 1) from the
 * model's x0 and eps (x0 clipped, then eps recomputed from it):
 * sigma = eta sqrt((1-abar_prev)/(1-abar) (1 - abar/abar_prev)),
 * x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z. */
void ddpm_ddim_step(float *x_prev, float *x0_out, const float *x_t, const float *x0, const float *eps,
                    const float *z, int i, int i_prev, float eta, size_t D, const ddpm_schedule *s, int clip_x0);

/* The DDIM subsequence: S indices round(k (T-1)/(S-1)), k = 0..S-1, increasing
 * (S = 1 gives {T-1}). Returns S or a negative DDPM_E* if S is not in 1..T. */
int ddpm_ddim_timesteps(int *out, int S, int T);

/* The same spacing ending at step index i_start instead of T-1: S indices
 * round(k i_start/(S-1)), k = 0..S-1 (S = 1 gives {i_start}); S in 1..i_start+1. */
int ddpm_ddim_timesteps_from(int *out, int S, int i_start);

/* Number of steps the config takes from x_T: S for a sampler that takes
 * steps (for a solver row, S network evaluations), else T. */
int ddpm_sampler_n_steps(const ddpm_sampler_config *c, const ddpm_schedule *s);
/* The noise layout of a run from x_T (ddpm_sample_noise's n_steps): DDPM's T,
 * DDIM's S; the solver rows take T whatever their S, so that every solver at
 * any step count starts image k of a seed from the x_T of DDPM and of DDIM
 * with T steps (the ODE reference of docs/samplers.md). */
int ddpm_sampler_noise_steps(const ddpm_sampler_config *c, const ddpm_schedule *s);

/* One sampler run (what a row's run function receives): x [B, D] holds x_t at
 * step index i_start and receives x_0; image b is image first_image + b of the
 * run; rng gives the noise (NULL for a deterministic config), g the classes
 * and guidance (may be NULL), w the per-step callback (may be NULL).
 * ddpm_sample_from has checked the config against the model before. */
typedef struct {
    ddpm_model *model;
    const ddpm_sampler_config *c;
    const ddpm_guide *g;
    float *x;
    int B, first_image, i_start;
    const ddpm_rng *rng;
    const ddpm_sample_watch *w;
} ddpm_sample_job;
typedef int (*ddpm_sampler_run_fn)(const ddpm_sample_job *job);
#define DDPM_SAMPLER_RUN_DECL_(ID, id, name, help, per_step, extra, flags) \
    int ddpm_sampler_run_##id(const ddpm_sample_job *job);
DDPM_SAMPLERS(DDPM_SAMPLER_RUN_DECL_)
#undef DDPM_SAMPLER_RUN_DECL_

/* The normal draws of image `image` at step k of n_steps (x_T is k = n_steps):
 * a pure function of (rng, image, k), so the same seed gives the same images
 * whatever the batch split. */
void ddpm_sample_noise(float *out, size_t D, const ddpm_rng *rng, long image, int k, int n_steps);

/* Draws x_T ~ N(0, I) from rng and runs the sampler: x [B, D] receives x_0.
 * The noise of image b at every step depends only on (rng state, b), so the
 * same seed gives the same images whatever the batch split, as long as
 * first_image is the image's index in the whole run. */
int ddpm_sample(ddpm_model *m, const ddpm_sampler_config *c, const ddpm_guide *g, float *x, int B, int first_image,
                const ddpm_rng *rng, const ddpm_sample_watch *w);

/* The x_T that ddpm_sample draws for image `image` (its index in the whole run)
 * with this sampler config and rng: ddpm_sample = this for each image, then
 * ddpm_sample_from(T - 1). (x_T depends on the config through the step count.) */
void ddpm_sample_initial_noise(float *x_T, size_t D, int image, const ddpm_schedule *s,
                               const ddpm_sampler_config *c, const ddpm_rng *rng);

/* Runs the sampler on x [B, D] holding x_t at step index i_start (T - 1: x_T)
 * down to x_0: checks the config against the model, then calls the run
 * function of the config's row. A sampler that takes steps takes c->steps
 * (<= i_start + 1; DDIM on ddpm_ddim_timesteps_from(i_start)); the others all
 * i_start + 1. rng gives the per-step noise as in ddpm_sample; it may be NULL
 * for a deterministic config (DDIM with eta 0). */
int ddpm_sample_from(ddpm_model *m, const ddpm_sampler_config *c, const ddpm_guide *g, float *x, int B,
                     int first_image, int i_start, const ddpm_rng *rng, const ddpm_sample_watch *w);

/* ---------------------------------------------------------------- to files */

/* Sampling n images from a model into files: a PNG grid, one PNG per image,
 * and a trajectory figure (one row per image, the first DDPM_TRAJECTORY_MAX_ROWS
 * at most: the predicted x0 at trajectory_k evenly spaced steps from t = T to the
 * end). Images are sampled in batches; image k's noise depends only on (seed, k),
 * so the files do not depend on the batch size. A grid from a model in 5 lines:
 *     ddpm_sample_files_config c;
 *     ddpm_sample_files_config_default(&c);
 *     c.n = 16;
 *     c.grid_path = "grid.png";
 *     rc = ddpm_sample_files(&model, &c, NULL, NULL); */
enum { DDPM_TRAJECTORY_MAX_ROWS = 16 };

typedef struct {
    int n;                       /* images (default 64) */
    int batch;                   /* images per network call; bounds memory (default 64) */
    uint64_t seed;               /* noise seed, stream DDPM_STREAM_SAMPLE (default 0) */
    ddpm_sampler_config sampler; /* default dpm++2m-sde, 20 evaluations (<= T), clipped */
    const char *grid_path;       /* the grid PNG (default "samples.png"; NULL: none) */
    int nrow;                    /* images per grid row (default 0: ceil(sqrt(n))) */
    int pad, pad_value;          /* pixels between cells and their gray level (default 2, 255) */
    const char *each_dir;        /* one PNG per image, each_dir/00000.png ... (default NULL: none) */
    const char *trajectory_path; /* the trajectory PNG (default NULL: none) */
    int trajectory_k;            /* columns of the trajectory (default 10) */
    int first_index;             /* the images are first_index .. first_index + n - 1
                                    of the seed's sequence (default 0) */
    const char *image_path;      /* n must be 1: that image alone, as each_dir
                                    would write it (default NULL: none) */
    /* The recipe every PNG carries (recipe.h): version, checkpoint hash and
     * path, step and weights are taken from here, the rest (sampler, seed,
     * layout, and the class, its name and the guidance of a conditional
     * sample) from this config.
     * NULL (the default): PNGs without a recipe. */
    const struct ddpm_recipe *recipe;
    /* class-conditional models (ignored by unconditional ones) */
    int class_index;   /* the class of every image (default DDPM_NO_CLASS: unconditional) */
    float guidance;    /* classifier-free guidance weight W (default 1) */
    int grid_by_class; /* n images of every class, one grid row per class (image
                          k has class k / n; the grid has n_classes * n images;
                          the recipes name the classes by the model's names) */
} ddpm_sample_files_config;

void ddpm_sample_files_config_default(ddpm_sample_files_config *c);

/* Where a ddpm_sample_files call is: step (1..n_steps) of the batch of images
 * first .. first + B - 1 out of n. */
typedef struct {
    int step, n_steps;
    int first, B, n;
} ddpm_sample_progress;
typedef void (*ddpm_sample_progress_fn)(void *ctx, const ddpm_sample_progress *p);

/* Samples c->n images from the model and writes the files c names. progress
 * may be NULL. The arrays live for the call: n * D floats for the images (plus
 * the trajectory), and the sampler's scratch for one batch. */
int ddpm_sample_files(ddpm_model *m, const ddpm_sample_files_config *c, ddpm_sample_progress_fn progress,
                      void *progress_ctx);

#endif
