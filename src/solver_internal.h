/* solver_internal.h: what the solver families (solver_dpm.c, solver_unipc.c,
 * solver_karras.c) share: argument checks, the model call with clipping and a
 * finiteness check, the per-point schedule values, progress reports. */
#ifndef DDPM_SOLVER_INTERNAL_H
#define DDPM_SOLVER_INTERNAL_H

#include <stddef.h>

#include "ddpm/solver.h"

/* A time point with its schedule values. */
typedef struct {
    double t, alpha, sigma, lambda;
} solver_point;

typedef struct {
    const ddpm_solver_env *env;
    int B;
    size_t D, n;     /* n = B D */
    double *t_batch; /* [B]: the time of the current call, for every image */
    int evals, n_evals;
} solver_run;

/* Checks the arguments (stochastic: env->noise is needed) and allocates the
 * run's buffer; 0 or a negative DDPM_E* with a message. */
int solver_begin(solver_run *r, const char *name, float *x, float *scratch, int B, size_t D, const double *t,
                 int n_points, const ddpm_solver_env *env, int stochastic, int evals_per_point);
void solver_end(solver_run *r);
solver_point solver_point_at(const ddpm_vp *vp, double t);
/* x0 [B, D] = the model's data prediction at (x, t), clipped to [-1, 1] when
 * env->clip_x0; counts one evaluation. DDPM_ENAN on a non-finite output. */
int solver_denoise(solver_run *r, float *x0, const float *x, double t);
void solver_report(const solver_run *r, double t, const float *x, const float *x0);
/* z [B, D]: image b's noise at slot k from env->noise. */
void solver_noise(const solver_run *r, float *z, int k);
/* The final step to sigma = 0: x = x0 (the last data prediction). */
void solver_finish(solver_run *r, float *x, const float *x0);

#endif
