/* eval.h: the variational bound of DDPM in bits/dim (Ho et al. 2020, eq. 5 and
 * Table 1's NLL column) and the held-out L_simple, over an abstract eps function
 * (model.h's ddpm_eps_fn: a model through ddpm_model_eps, or a stub) so that the arithmetic is tested on a stub and the same code drives
 * the U-Net.
 *
 *   L = L_T + sum_{t>1} L_{t-1} + L_0
 *   L_T     = KL(q(x_T|x_0) || N(0, I))
 *   L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t))   (t = 2..T)
 *   L_0     = -log p_theta(x_0|x_1), the discretized Gaussian decoder (sec. 3.3)
 * in nats per image; bits/dim divides by D ln 2. Step indices are 0-based
 * (i = t - 1): "the term at index i" is L_0 for i = 0 and L_{t-1} = L_i for i >= 1,
 * so the term at index i is the one the network evaluates at step t = i + 1.
 *
 * p_theta(x_{t-1}|x_t) = N(mu_theta, sigma_t^2 I):
 *   mu_theta  = mu~(clip(x0_pred), x_t) (eq. 7) with x0_pred from eps (eq. 15), as
 *               the paper's code computes its bound; without clipping, eq. 11's
 *               eps form 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps);
 *   sigma_t^2 = beta_t (default, the paper's reported choice) or beta~_t; at t = 1
 *               (i = 0) both use beta~_2, as the paper's code does (beta~_1 = 0).
 * The decoder integrates N(mu_theta, sigma_1^2) over the bin of each value of the
 * 256-level grid in [-1, 1]: [x - 1/255, x + 1/255], with the lowest bin open
 * below (x = -1: (-inf, -1 + 1/255]) and the highest open above. It is the exact
 * erf-based form (the paper's code uses a tanh approximation of the normal CDF),
 * computed without cancellation in either tail: see ddpm_log_normal_cdf_diff.
 *
 * Randomness: x_t of image k (its index in the evaluated set) at step i uses
 * eps from Philox (seed, DDPM_STREAM_EVAL) at counters ((k T + i) ceil(D/4)), the
 * Monte Carlo steps and the L_simple (t, eps) have streams of their own: the noise,
 * the steps and the order of every sum depend on the seed and the images, never on
 * the batch split (with an eps_fn whose outputs do not depend on the batch the
 * results are bit-identical; the U-Net's float rounding varies with the GEMM sizes
 * by ~1e-10 relative). */
#ifndef DDPM_EVAL_H
#define DDPM_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/dataset.h"
#include "ddpm/sample.h"
#include "ddpm/schedule.h"

/* Philox streams of the evaluator (rng.h's well-known streams end at 5). */
enum {
    DDPM_STREAM_EVAL = 16,          /* eps of x_t for each (image, step) */
    DDPM_STREAM_EVAL_MC = 17,       /* the Monte Carlo steps of each image */
    DDPM_STREAM_EVAL_L_SIMPLE = 18, /* L_simple's step and eps of each image */
    DDPM_STREAM_EVAL_PICK = 19,     /* which images of a folder are evaluated */
};

/* The images to evaluate: idx[0..n) receives the first n entries of a seeded
 * permutation of 0..count-1, so a larger n extends a smaller one's set. Returns 0,
 * or DDPM_EINVAL when n is not in 1..count. */
int ddpm_eval_pick(int *idx, int n, int count, uint64_t seed);

/* Loads *n images of the folder dir, picked with ddpm_eval_pick(seed), into *x0
 * (malloc'ed [n, C, S, S] in [-1, 1]; the caller frees it). *n = 0 takes
 * min(default_n, the images in the folder). *count (may be NULL) receives the
 * number of images in the folder. Errors name dir: no images, images that are not
 * S x S with C channels (the model's), *n larger than the folder. warn (may be
 * NULL) receives the lines about skipped files. */
int ddpm_eval_load(float **x0, int *n, int *count, const char *dir, int S, int C, int default_n,
                   uint64_t seed, ddpm_dataset_warn_fn warn, void *warn_user);

/* ------------------------------------------------------------ the terms */

/* KL(N(mean1, var1) || N(mean2, var2)) of one dimension, nats, in closed form:
 * 0.5 (r - 1 - log r + (mean1 - mean2)^2 / var2), r = var1/var2, with the log of
 * the ratio (not a difference of log-variances, which cancels when var1 ~ var2,
 * as beta_t and beta~_t are at large t). var1, var2 > 0. */
double ddpm_normal_kl(double mean1, double var1, double mean2, double var2);
/* The variance part alone: 0.5 (r - 1 - log r), r = var1/var2. */
double ddpm_normal_kl_var_part(double var1, double var2);

/* log Phi(z), the standard normal CDF, accurate to a few ulps for every z:
 * log1p(-erfc(z/sqrt2)/2) above 0, log(erfc(-z/sqrt2)/2) down to z = -37, and the
 * asymptotic series of the Mills ratio below (where erfc underflows). */
double ddpm_log_normal_cdf(double z);
/* log(Phi(b) - Phi(a)) for a < b (a may be -INFINITY, b INFINITY), without
 * cancellation: an interval in the upper half is mirrored into the lower one
 * (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)); one below 0 is
 * log Phi(b) + log(-expm1(log Phi(a) - log Phi(b))); one around 0 is
 * log1p(-(Phi(a) + Phi(-b))) when the tails are small, else the log of the sum of
 * two positive erf values. */
double ddpm_log_normal_cdf_diff(double a, double b);
/* log p(x) of the decoder's discretized Gaussian N(mean, sigma^2) for a value x of
 * the 256-level grid (bins as above; x < -0.999 and x > 0.999 are the open ends).
 * x is first rounded to the nearest grid value k/127.5 - 1 in double, so that the
 * 256 bins tile the line exactly even when x is a float. */
double ddpm_discretized_gaussian_log_likelihood(double x, double mean, double sigma);

/* sigma_t^2 of p_theta at index i (beta~_2 at i = 0 for both choices; T >= 2). */
double ddpm_reverse_var(const ddpm_schedule *s, ddpm_var_kind var, int i);
/* L_T of one image x0[D], nats. */
double ddpm_prior_kl(const float *x0, size_t D, const ddpm_schedule *s);
/* The term at index i of one image, nats: -log p_theta(x0|x_1) for i = 0, else
 * KL(q(x_{i-1}..) || p_theta) = L_i (see the top of this file), from x0, the x_t
 * at that step and the network's eps_pred there. */
double ddpm_bound_term(const float *x0, const float *x_t, const float *eps_pred, int i, size_t D,
                       const ddpm_schedule *s, ddpm_var_kind var, int clip_x0);
/* The same with the variance output v[D] of a learned-variance model: with var
 * DDPM_VAR_LEARNED sigma_d^2 follows v_d (predict.h; the decoder at t = 1 too),
 * each value's KL with its own variance. v is ignored for the fixed ones. */
double ddpm_bound_term_v(const float *x0, const float *x_t, const float *eps_pred, const float *v, int i, size_t D,
                         const ddpm_schedule *s, ddpm_var_kind var, int clip_x0);

/* ------------------------------------------------------------ the bound */

/* The eps of x_t for image k at index i (D values); the default draws it from
 * Philox as described above. A test may pass its own (e.g. a reference's noise). */
typedef void (*ddpm_noise_fn)(void *ctx, float *eps, long image, int i, size_t D);
void ddpm_eval_noise(float *eps, uint64_t seed, long image, int i, int T, size_t D);

/* Called after each network call: done and total count network evaluations
 * (one per image and step). May be NULL. */
typedef void (*ddpm_eval_progress_fn)(void *ctx, long done, long total);

typedef struct {
    ddpm_var_kind var;      /* sigma_t^2: beta_t (default), beta~_t, or learned */
    int learned_var;        /* eps_fn writes 2D values per image, eps then v (model.h);
                               needed by var learned, ignored by the others (default 0) */
    int clip_x0;            /* model mean from the clipped predicted x0 (default 1) */
    int mc;                 /* 0: the exact bound, all T terms (default); K > 0: K steps
                               drawn uniformly from t = 2..T per image, their mean scaled
                               by T - 1, plus the exact L_T and L_0 */
    int batch;              /* network evaluations per eps_fn call (default 64) */
    uint64_t seed;          /* (default 0) */
    ddpm_noise_fn noise_fn; /* NULL: ddpm_eval_noise with seed */
    void *noise_ctx;
} ddpm_bound_config;

void ddpm_bound_config_default(ddpm_bound_config *c);

typedef struct {
    double mean, se; /* mean over images and its standard error (sd / sqrt(n); 0 for n = 1) */
} ddpm_estimate;

typedef struct {
    int n_images, T, mc;
    size_t D;
    /* bits/dim, per image, then mean and standard error over images */
    ddpm_estimate total, prior, vb, decoder; /* L, L_T, sum_{t>1} L_{t-1}, L_0 */
    /* per index i (0..T-1): the mean and standard error, in bits/dim, of the
     * term at index i over the images whose draws hit it (all of them for the
     * exact bound), and how many did; NaN mean when none did */
    double *term_mean, *term_se;
    long *term_n;
    long n_evals; /* network evaluations made */
} ddpm_bound_result;

/* The bound of n images x0[n, D] (values on the 256-level grid in [-1, 1]) under
 * eps_fn: the exact bound costs T network evaluations per image, --mc K costs
 * K + 1. eps_fn is called with up to c->batch (image, step) pairs at mixed steps.
 * On success *r owns its arrays (ddpm_bound_result_free). Errors: DDPM_EINVAL (n
 * < 1, T < 2, batch < 1, mc < 0), DDPM_ENOMEM, DDPM_ENAN (a non-finite term). */
int ddpm_bound(ddpm_bound_result *r, const float *x0, int n, size_t D, const ddpm_schedule *s,
               const ddpm_bound_config *c, ddpm_eps_fn eps_fn, void *eps_ctx, ddpm_eval_progress_fn progress,
               void *progress_ctx);
void ddpm_bound_result_free(ddpm_bound_result *r);

/* Held-out L_simple: for image k a step i and eps drawn from (seed, k), the mean
 * over D of (eps - eps_theta(x_t, i))^2; *out gets its mean and standard error
 * over the n images. One network evaluation per image, batch per call.
 * learned_var: eps_fn writes 2D values per image, of which the first D are eps. */
int ddpm_eval_l_simple(ddpm_estimate *out, const float *x0, int n, size_t D, const ddpm_schedule *s,
                       int batch, uint64_t seed, int learned_var, ddpm_eps_fn eps_fn, void *eps_ctx,
                       ddpm_eval_progress_fn progress, void *progress_ctx);

#endif
