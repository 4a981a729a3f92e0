/* schedule.h: the forward-process noise schedule of DDPM (Ho et al. 2020, sec. 2)
 * and every coefficient derived from it.
 *
 * Indexing, once for all code: arrays are 0-based and i = t - 1, so beta[i] is
 * the paper's beta_t, abar[0] = alpha_1, and the network receives i (0..T-1).
 * Products are computed in double. One schedule object, built from a
 * checkpoint's own metadata, serves the trainer, the samplers and the evaluator. */
#ifndef DDPM_SCHEDULE_H
#define DDPM_SCHEDULE_H

#include <stddef.h>

typedef enum { DDPM_SCHEDULE_LINEAR = 0, DDPM_SCHEDULE_COSINE = 1 } ddpm_schedule_kind;

typedef struct {
    ddpm_schedule_kind kind;
    int T;
    double beta_start, beta_end; /* linear schedule only */
    double *beta;                /* beta_t */
    double *alpha;               /* 1 - beta_t */
    double *abar;                /* prod_{s<=t} alpha_s */
    double *abar_prev;           /* abar_{t-1}, with abar_0 = 1 */
    double *sqrt_abar, *sqrt_one_minus_abar;
    double *posterior_var;       /* beta~_t = (1-abar_{t-1})/(1-abar_t) beta_t (0 at t = 1) */
    double *posterior_coef_x0;   /* sqrt(abar_{t-1}) beta_t / (1-abar_t) */
    double *posterior_coef_xt;   /* sqrt(alpha_t) (1-abar_{t-1}) / (1-abar_t) */
    double *log_alpha;           /* log sqrt(abar_t): the knots of the continuous schedule */
} ddpm_schedule;

/* Builds the schedule; returns 0 or a negative DDPM_E* with a message.
 * Linear: beta evenly spaced from beta_start to beta_end (paper: 1e-4, 0.02).
 * Cosine (Nichol & Dhariwal 2021): abar(t) = f(t)/f(0), f(t) = cos^2(((t/T)+s)/(1+s) pi/2),
 * s = 0.008, beta_t = min(1 - abar_t/abar_{t-1}, 0.999); beta_start/end ignored. */
int ddpm_schedule_init(ddpm_schedule *s, ddpm_schedule_kind kind, int T, double beta_start,
                       double beta_end);
void ddpm_schedule_free(ddpm_schedule *s);
/* "linear" / "cosine" <-> kind; parse returns -1 on an unknown name. */
const char *ddpm_schedule_name(ddpm_schedule_kind kind);
int ddpm_schedule_parse(const char *name, ddpm_schedule_kind *kind);

/* The continuous schedule over step indices t in index units (t = i at the
 * trained step i; samplers that step between trained indices use it), as
 * DPM-Solver's discrete NoiseScheduleVP: log alpha(t), alpha = sqrt(abar), is
 * piecewise linear between the trained indices 0..T-1 (and continues the end
 * segments linearly outside them); sigma(t) = sqrt(1 - alpha^2),
 * lambda(t) = log(alpha / sigma), the half log-SNR, strictly decreasing in t.
 * At an integer t in 0..T-1 alpha and sigma are the stored sqrt_abar[t] and
 * sqrt_one_minus_abar[t] exactly. */
double ddpm_schedule_log_alpha(const ddpm_schedule *s, double t);
double ddpm_schedule_alpha(const ddpm_schedule *s, double t);
double ddpm_schedule_sigma(const ddpm_schedule *s, double t);
double ddpm_schedule_lambda(const ddpm_schedule *s, double t);
/* The inverse of lambda(t): the t whose lambda is `lambda` (log alpha solved in
 * closed form, then its segment by bisection over the knots). */
double ddpm_schedule_t_of_lambda(const ddpm_schedule *s, double lambda);

/* x_t = sqrt(abar) x0 + sqrt(1-abar) eps for each image b at step index i[b]
 * (q(x_t|x_0), eq. 4). Arrays [B, D]. */
void ddpm_q_sample(float *x_t, const float *x0, const float *eps, const int *i, int B, size_t D,
                   const ddpm_schedule *s);
/* x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar) at step index i (one image, D values). */
void ddpm_predict_x0(float *x0, const float *x_t, const float *eps, int i, size_t D,
                     const ddpm_schedule *s);
/* mu~(x_t, x0) of q(x_{t-1}|x_t,x_0) (eq. 7). */
void ddpm_posterior_mean(float *mean, const float *x0, const float *x_t, int i, size_t D,
                         const ddpm_schedule *s);
/* The eps-parameterised mean of Algorithm 2 (eq. 11):
 * 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1-abar_t) eps). */
void ddpm_eps_mean(float *mean, const float *x_t, const float *eps, int i, size_t D,
                   const ddpm_schedule *s);

#endif
