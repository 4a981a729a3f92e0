/* predict.h: what the network predicts, and the one place where its output is
 * turned into what a sampler, the trainer or the evaluator needs.
 *
 * The network's output `out` at step index i (i = t - 1) means, by kind:
 *   eps  the noise eps of x_t = sqrt(abar) x0 + sqrt(1-abar) eps (the default;
 *        DDPM eq. 11),
 *   x0   the clean image x0,
 *   v    v = sqrt(abar) eps - sqrt(1-abar) x0 (Salimans & Ho 2022),
 *   mu   the posterior mean mu~(x_t, x0) = c0 x0 + c1 x_t of q(x_{t-1}|x_t,x0)
 *        (DDPM eq. 7: the paper's "mu~ prediction" baseline of Table 2).
 * Every conversion is affine in (out, x_t) with coefficients that depend only on
 * (kind, i, schedule), so ddpm_pred_coefs is the single source of this math:
 *   eps = eps_out out + eps_xt x_t,   x0 = x0_out out + x0_xt x_t,
 *   mu  = mu_out out + mu_xt x_t      (the reverse-process mean, eq. 7 of x0).
 * Guidance (a combination of two outputs with weights summing to 1) commutes
 * with these maps, so it may be applied to `out` directly. */
#ifndef DDPM_PREDICT_H
#define DDPM_PREDICT_H

#include <stddef.h>

#include "ddpm/schedule.h"

typedef enum { DDPM_PRED_EPS = 0, DDPM_PRED_X0 = 1, DDPM_PRED_V = 2, DDPM_PRED_MU = 3 } ddpm_prediction;
#define DDPM_N_PREDICTIONS 4

/* "eps" "x0" "v" "mu" <-> kind; parse returns -1 on an unknown name. */
const char *ddpm_prediction_name(ddpm_prediction kind);
int ddpm_prediction_parse(const char *name, ddpm_prediction *kind);

/* The affine maps of the header comment at step index i, in double. */
typedef struct {
    double eps_out, eps_xt;
    double x0_out, x0_xt;
    double mu_out, mu_xt;
} ddpm_pred_coef;
ddpm_pred_coef ddpm_pred_coefs(ddpm_prediction kind, int i, const ddpm_schedule *s);

/* The maps of eps and x0 at a continuous step index t (schedule.h): from
 * alpha(t) and sigma(t), and at an integer t exactly ddpm_pred_coefs. The mean
 * is defined at the trained steps only: between them (and for an mu
 * prediction's eps and x0, which need the posterior there) the maps that need
 * it are NaN. */
ddpm_pred_coef ddpm_pred_coefs_t(ddpm_prediction kind, double t, const ddpm_schedule *s);

/* What a network's output means: the schedule it was trained with, what it
 * predicts, whether D values of v follow the prediction's D (learned
 * variances), and D, the values of one image. The model (model.h) has one;
 * the loss and the conversion below take it. */
typedef struct {
    const ddpm_schedule *sched;
    ddpm_prediction kind;
    int learn_sigma;
    size_t D;
} ddpm_head;

/* Values of one image's output: D, or 2 D with learned variances. */
static inline size_t ddpm_head_out_size(const ddpm_head *h)
{
    return h->learn_sigma ? 2 * h->D : h->D;
}

/* What a sampler or the evaluator asks of one image's output; each pointer
 * (D values) may be NULL when not wanted:
 *   eps     eps_theta
 *   x0      the predicted x0, not clipped
 *   mean    the reverse-process mean mu_out out + mu_xt x_t (eq. 7 of the
 *           unclipped x0; Algorithm 2's eps form for an eps network)
 *   logvar  log sigma^2 of each value from v (learned variances only)
 * mean and logvar exist at the trained steps only (integer t). */
typedef struct {
    float *eps, *x0, *mean;
    double *logvar;
} ddpm_pred_out;

/* The one conversion of a network output: one image's `out` (the head's
 * layout) at x_t and continuous step index t into what o asks for. Returns 0,
 * or DDPM_EINVAL with a message when o asks for what t does not define. */
int ddpm_pred_convert(const ddpm_pred_out *o, const ddpm_head *h, const float *out, const float *x_t, double t);

/* eps and x0 (either may be NULL) of one image's D values from the network
 * output at step index i: ddpm_pred_convert at a trained step. */
void ddpm_pred_to_eps_x0(float *eps, float *x0, ddpm_prediction kind, const float *out, const float *x_t,
                         int i, size_t D, const ddpm_schedule *s);
/* What the network of this kind is trained to output for one image, given the
 * clean image x0, the noise eps and x_t = q_sample(x0, eps, i). */
void ddpm_pred_target(float *target, ddpm_prediction kind, const float *x0, const float *eps,
                      const float *x_t, int i, size_t D, const ddpm_schedule *s);

/* Learned variances (ddpm_unet_config.learn_sigma; Nichol & Dhariwal 2021,
 * eq. 15): the network outputs, after the prediction's D values, D more values
 * v, and the reverse process's variance of value d is
 *     log sigma_d^2 = frac log beta_t + (1 - frac) log beta~_t,  frac = (v_d + 1) / 2,
 * an interpolation between the two fixed choices of the DDPM paper in the log
 * domain (v is not clamped: as in the paper's code, it may leave [-1, 1]).
 * beta~_1 = 0, so t = 1 uses beta~_2, as the evaluator's decoder does.
 * log sigma_d^2 = lo + half (v_d + 1). */
typedef struct {
    double lo;   /* log beta~_t (log beta~_2 at t = 1) */
    double half; /* (log beta_t - lo) / 2 */
} ddpm_logvar_coef;
ddpm_logvar_coef ddpm_learned_logvar_coef(int i, const ddpm_schedule *s);
/* log sigma^2 of one value v under the coefficients of its step. */
static inline double ddpm_learned_logvar(ddpm_logvar_coef c, float v)
{
    return c.lo + c.half * ((double)v + 1.0);
}

#endif
