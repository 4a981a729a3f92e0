/* vp.h: the continuous variance-preserving schedule the ODE/SDE solvers work on
 * (solver.h), and its discrete instance built from a trained schedule.
 *
 * q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I), alpha_t^2 + sigma_t^2 = 1, with t a
 * continuous time in index units (t = i is the trained step index i, 0..T-1),
 * and lambda_t = log(alpha_t / sigma_t), half the log signal-to-noise ratio.
 * A schedule is two functions: log alpha_t, and t(lambda), the inverse of
 * lambda_t; alpha, sigma and lambda follow from log alpha (inline below).
 *
 * The discrete instance (ddpm_vp_discrete) is a view of a trained schedule's
 * continuous functions (schedule.h): log alpha_t piecewise linear in t between
 * the trained points log alpha_i = 0.5 log abar_i, as DPM-Solver's discrete
 * NoiseScheduleVP does (its t = (i + 1) / T is our t = i), with the end
 * segments extended linearly outside [0, T-1]. */
#ifndef DDPM_VP_H
#define DDPM_VP_H

#include <math.h>

#include "ddpm/schedule.h"

typedef struct ddpm_vp {
    const void *ctx;
    double (*log_alpha)(const void *ctx, double t);        /* log alpha_t, decreasing in t */
    double (*t_of_lambda)(const void *ctx, double lambda); /* the t with lambda_t = lambda */
} ddpm_vp;

static inline double ddpm_vp_log_alpha(const ddpm_vp *vp, double t)
{
    return vp->log_alpha(vp->ctx, t);
}
static inline double ddpm_vp_alpha(const ddpm_vp *vp, double t)
{
    return exp(ddpm_vp_log_alpha(vp, t));
}
/* sigma_t = sqrt(1 - alpha_t^2), without cancellation when alpha_t is near 1 */
static inline double ddpm_vp_sigma(const ddpm_vp *vp, double t)
{
    return sqrt(-expm1(2.0 * ddpm_vp_log_alpha(vp, t)));
}
static inline double ddpm_vp_lambda(const ddpm_vp *vp, double t)
{
    double la = ddpm_vp_log_alpha(vp, t);
    return la - 0.5 * log(-expm1(2.0 * la));
}
static inline double ddpm_vp_t_of_lambda(const ddpm_vp *vp, double lambda)
{
    return vp->t_of_lambda(vp->ctx, lambda);
}
/* log alpha of a given lambda: alpha^2 = sigmoid(2 lambda), written stably */
static inline double ddpm_vp_log_alpha_of_lambda(double lambda)
{
    double x = -2.0 * lambda; /* log alpha = -0.5 log(1 + e^x) */
    return x > 0 ? -0.5 * (x + log1p(exp(-x))) : -0.5 * log1p(exp(x));
}

/* The continuous schedule of a trained one (schedule.h's ddpm_schedule_log_alpha
 * and ddpm_schedule_t_of_lambda: the one implementation of the piecewise-linear
 * log alpha), as a ddpm_vp. It borrows the schedule: s must outlive it. */
typedef struct {
    const ddpm_schedule *s;
} ddpm_vp_discrete;

/* Checks s (T >= 2, abar decreasing strictly inside (0, 1)) and borrows it;
 * returns 0 or a negative DDPM_E* with a message. */
int ddpm_vp_discrete_init(ddpm_vp_discrete *d, const ddpm_schedule *s);
void ddpm_vp_discrete_free(ddpm_vp_discrete *d);
/* The schedule as a ddpm_vp; d (and its schedule) must outlive it. */
ddpm_vp ddpm_vp_discrete_view(const ddpm_vp_discrete *d);

#endif
