/* sample.h: the reverse process. Ancestral DDPM sampling (Ho et al. 2020,
 * Algorithm 2) and DDIM (Song et al. 2021) on a subsequence of steps, over an
 * abstract eps function so that the arithmetic is tested on a stub and the same
 * code drives the U-Net. Step indices are 0-based: i = t - 1. */
#ifndef DDPM_SAMPLE_H
#define DDPM_SAMPLE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ddpm/rng.h"
#include "ddpm/schedule.h"
#include "ddpm/unet.h"

typedef enum { DDPM_SAMPLER_DDPM = 0, DDPM_SAMPLER_DDIM = 1 } ddpm_sampler_kind;
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
    ddpm_sampler_kind kind;
    int steps;         /* DDIM: number of steps S (1..T); DDPM always runs all T */
    float eta;         /* DDIM: 0 deterministic, 1 ancestral-like */
    ddpm_var_kind var; /* DDPM: sigma_t^2 = beta_t, beta~_t or learned */
    int clip_x0;       /* clip the predicted x0 to [-1, 1] (see ddpm_ddpm_step) */
    ddpm_prediction prediction; /* what the model function returns (predict.h);
                                   ddpm_sample_files takes it from the network */
    int learned_var;   /* 1: the model function writes 2 D values per image, its
                          prediction and then v (predict.h); ddpm_sample_files
                          takes it from the network (learn_sigma). var learned
                          needs it; the other variances ignore v */
} ddpm_sampler_config;

/* DDPM, all T steps, sigma^2 = beta, clip on, eps prediction; for DDIM: 100
 * steps, eta 1. */
void ddpm_sampler_config_default(ddpm_sampler_config *c);

/* The model's output at (x_t, i) for B images of D values; i[b] the 0-based step
 * index. Its meaning is the sampler config's prediction (eps_theta by default);
 * with learned_var each image's D values are followed by D values of v, so
 * the output is [B, 2D]. */
typedef void (*ddpm_eps_fn)(void *ctx, float *eps, const float *x_t, const int *i, int B);
/* Called after every step: k counts steps from 0 to n_steps-1, i is the step just
 * taken, x the new sample, x0 the predicted x0 at that step. May be NULL. */
typedef void (*ddpm_step_fn)(void *ctx, int k, int n_steps, int i, const float *x, const float *x0,
                             int B);

/* The step functions take the model output `out` of kind `pred` and turn it into
 * eps and x0 through ddpm_pred_coefs (predict.h), their one conversion.
 *
 * One ancestral step from index i: without clipping it is Algorithm 2,
 * x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps) + sigma_t z; with clipping
 * the mean is the posterior mean mu~(clip(x0_pred), x_t) (eq. 7), which equals
 * the first form whenever x0_pred is inside [-1, 1]. z is ignored at i = 0.
 * x0_out (may be NULL) receives the (clipped) predicted x0. */
void ddpm_ddpm_step(float *x_prev, float *x0_out, const float *x_t, ddpm_prediction pred,
                    const float *out, const float *z, int i, size_t D, const ddpm_schedule *s,
                    ddpm_var_kind var, int clip_x0);
/* The same with the variance output v[D] of a learn_sigma network: with var
 * DDPM_VAR_LEARNED, sigma_d^2 of value d follows v_d (predict.h); v may be NULL
 * for the fixed variances. */
void ddpm_ddpm_step_v(float *x_prev, float *x0_out, const float *x_t, ddpm_prediction pred, const float *out,
                      const float *v, const float *z, int i, size_t D, const ddpm_schedule *s, ddpm_var_kind var,
                      int clip_x0);
/* One DDIM step from index i to index i_prev (-1: to x_0, abar = 1):
 * x0 = (x_t - sqrt(1-abar) eps)/sqrt(abar) (clipped, then eps recomputed from it),
 * sigma = eta sqrt((1-abar_prev)/(1-abar) (1 - abar/abar_prev)),
 * x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z. */
void ddpm_ddim_step(float *x_prev, float *x0_out, const float *x_t, ddpm_prediction pred,
                    const float *out, const float *z, int i, int i_prev, float eta, size_t D,
                    const ddpm_schedule *s, int clip_x0);

/* The DDIM subsequence: S indices round(k (T-1)/(S-1)), k = 0..S-1, increasing
 * (S = 1 gives {T-1}). Returns S or a negative DDPM_E* if S is not in 1..T. */
int ddpm_ddim_timesteps(int *out, int S, int T);

/* The same spacing ending at step index i_start instead of T-1: S indices
 * round(k i_start/(S-1)), k = 0..S-1 (S = 1 gives {i_start}); S in 1..i_start+1. */
int ddpm_ddim_timesteps_from(int *out, int S, int i_start);

/* Number of network evaluations the config costs (from x_T). */
int ddpm_sampler_n_steps(const ddpm_sampler_config *c, const ddpm_schedule *s);

/* Draws x_T ~ N(0, I) from rng and runs the sampler: x [B, D] receives x_0.
 * scratch holds 4 * B * D floats. The noise of image b at every step depends
 * only on (rng state, b), so the same seed gives the same images whatever the
 * batch split, as long as first_image is the image's index in the whole run. */
int ddpm_sample(float *x, float *scratch, int B, size_t D, int first_image,
                const ddpm_schedule *s, const ddpm_sampler_config *c, ddpm_eps_fn eps_fn,
                void *eps_ctx, const ddpm_rng *rng, ddpm_step_fn step_fn, void *step_ctx);

/* The x_T that ddpm_sample draws for image `image` (its index in the whole run)
 * with this sampler config and rng: ddpm_sample = this for each image, then
 * ddpm_sample_from(T - 1). (x_T depends on the config through the step count.) */
void ddpm_sample_initial_noise(float *x_T, size_t D, int image, const ddpm_schedule *s,
                               const ddpm_sampler_config *c, const ddpm_rng *rng);

/* Runs the sampler on x [B, D] holding x_t at step index i_start (T - 1: x_T)
 * down to x_0. DDIM takes c->steps steps on ddpm_ddim_timesteps_from(i_start)
 * (c->steps <= i_start + 1); DDPM all i_start + 1 steps. rng gives the per-step
 * noise as in ddpm_sample; it may be NULL for DDIM with eta 0 (deterministic). */
int ddpm_sample_from(float *x, float *scratch, int B, size_t D, int first_image, int i_start,
                     const ddpm_schedule *s, const ddpm_sampler_config *c, ddpm_eps_fn eps_fn,
                     void *eps_ctx, const ddpm_rng *rng, ddpm_step_fn step_fn, void *step_ctx);

/* The U-Net as an eps function: ctx is a ddpm_unet_eps_ctx; no dropout.
 * A class-conditional model with labels samples with classifier-free guidance
 * (Ho & Salimans 2022): out = out_uncond + W (out_cond - out_uncond), where
 * out_uncond is the output for "no class". W = 1 is the conditional model (one
 * forward pass), W = 0 the unconditional one (one pass), other W two passes.
 * The combination is applied to the network output: its weights sum to 1, so
 * it equals the combination of the eps (or x0, mu) it converts to (predict.h).
 * With learned variances only the prediction is guided; v is the conditional
 * model's (as GLIDE does). The output is [B, 2D] for a learn_sigma network
 * (sample.h's model function), with to_eps converting the first D of each. */
typedef struct {
    const ddpm_unet *net;
    const float *params;
    ddpm_unet_workspace *ws;
    /* class-conditional models; zero-initialised means unconditional */
    const int *labels; /* [B] classes of the images of the call; NULL: "no class" */
    float guidance;    /* W, used when labels is not NULL */
    float *uncond;     /* [B, D] scratch, needed when labels and W != 0, 1 */
    /* NULL: the raw output, whose meaning is net->cfg.prediction (what the
     * samplers take); a schedule: the output converted to eps_theta with
     * ddpm_pred_to_eps_x0, for code that needs eps itself (the evaluator) */
    const ddpm_schedule *to_eps;
} ddpm_unet_eps_ctx;
void ddpm_unet_eps(void *ctx, float *eps, const float *x_t, const int *i, int B);

/* ---------------------------------------------------------------- to files */

/* Sampling n images from a network into files: a PNG grid, one PNG per image,
 * and a trajectory figure (one row per image, the first DDPM_TRAJECTORY_MAX_ROWS
 * at most: the predicted x0 at trajectory_k evenly spaced steps from t = T to the
 * end). Images are sampled in batches; image k's noise depends only on (seed, k),
 * so the files do not depend on the batch size. A grid from a model in 5 lines:
 *     ddpm_sample_files_config c;
 *     ddpm_sample_files_config_default(&c);
 *     c.n = 16;
 *     c.grid_path = "grid.png";
 *     rc = ddpm_sample_files(net, params, &sched, &c, NULL, NULL, NULL); */
enum { DDPM_TRAJECTORY_MAX_ROWS = 16 };

typedef struct {
    int n;                       /* images (default 64) */
    int batch;                   /* images per network call; bounds memory (default 64) */
    uint64_t seed;               /* noise seed, stream DDPM_STREAM_SAMPLE (default 0) */
    ddpm_sampler_config sampler; /* default DDIM, 100 steps (<= T), eta 1, clipped */
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
                          k has class k / n; the grid has n_classes * n images) */
    const char *const *class_names; /* the model's class names [n_classes], for the
                                       recipe (default NULL: the indices "0", "1", ...) */
} ddpm_sample_files_config;

void ddpm_sample_files_config_default(ddpm_sample_files_config *c);

/* Where a ddpm_sample_files call is: step (1..n_steps) of the batch of images
 * first .. first + B - 1 out of n. */
typedef struct {
    int step, n_steps;
    int first, B, n;
} ddpm_sample_progress;
typedef void (*ddpm_sample_progress_fn)(void *ctx, const ddpm_sample_progress *p);

/* Samples c->n images from eps_theta = the U-Net (net, params) with the schedule
 * s and writes the files c names. ws: a workspace for at least c->batch images,
 * or NULL to make (and free) a forward-only one. progress may be NULL. The arrays
 * live for the call: n * D floats for the images (plus the trajectory), 4 * batch * D
 * of scratch. */
int ddpm_sample_files(const ddpm_unet *net, const float *params, const ddpm_schedule *s,
                      const ddpm_sample_files_config *c, ddpm_unet_workspace *ws,
                      ddpm_sample_progress_fn progress, void *progress_ctx);

#endif
