/* solver.c: what the solver families share (solver_internal.h), the table of
 * solvers, the step spacings and the Philox noise source (solver.h). */
#include "ddpm/solver.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "solver_internal.h"

int solver_begin(solver_run *r, const char *name, float *x, float *scratch, int B, size_t D, const double *t,
                 int n_points, const ddpm_solver_env *env, int stochastic, int evals_per_point)
{
    memset(r, 0, sizeof(*r));
    if (!x || !scratch || !t || !env || !env->model || !env->vp)
        return ddpm_error(DDPM_EINVAL, "%s: missing state, scratch, times, model or schedule", name);
    if (B < 1 || D < 1)
        return ddpm_error(DDPM_EINVAL, "%s: empty batch (B %d, D %zu)", name, B, D);
    if (n_points < 1)
        return ddpm_error(DDPM_EINVAL, "%s: needs at least one time point (got %d)", name, n_points);
    for (int k = 0; k < n_points; k++) {
        if (!isfinite(t[k]))
            return ddpm_error(DDPM_EINVAL, "%s: time %d is not finite", name, k);
        if (k > 0 && !(t[k] < t[k - 1]))
            return ddpm_error(DDPM_EINVAL, "%s: times must decrease strictly (t[%d] = %g, t[%d] = %g)", name,
                              k - 1, t[k - 1], k, t[k]);
    }
    if (stochastic && !env->noise)
        return ddpm_error(DDPM_EINVAL, "%s: a stochastic solver needs a noise source", name);
    if ((size_t)B > SIZE_MAX / D)
        return ddpm_error(DDPM_EINVAL, "%s: B D overflows", name);
    r->t_batch = ddpm_malloc((size_t)B, sizeof(double));
    if (!r->t_batch)
        return DDPM_ENOMEM;
    r->env = env;
    r->B = B;
    r->D = D;
    r->n = (size_t)B * D;
    r->n_evals = evals_per_point == 2 ? 2 * n_points - 1 : n_points;
    return 0;
}

void solver_end(solver_run *r)
{
    free(r->t_batch);
    r->t_batch = NULL;
}

solver_point solver_point_at(const ddpm_vp *vp, double t)
{
    solver_point p;
    double la = ddpm_vp_log_alpha(vp, t);
    p.t = t;
    p.alpha = exp(la);
    p.sigma = sqrt(-expm1(2.0 * la));
    p.lambda = la - log(p.sigma);
    return p;
}

int solver_denoise(solver_run *r, float *x0, const float *x, double t)
{
    for (int b = 0; b < r->B; b++)
        r->t_batch[b] = t;
    r->env->model(r->env->model_ctx, x0, NULL, x, r->t_batch, r->B);
    r->evals++;
    for (size_t i = 0; i < r->n; i++) {
        if (!isfinite(x0[i]))
            return ddpm_error(DDPM_ENAN, "the model returned a non-finite value at t = %g", t);
        if (r->env->clip_x0)
            x0[i] = x0[i] < -1.0f ? -1.0f : x0[i] > 1.0f ? 1.0f : x0[i];
    }
    return 0;
}

void solver_report(const solver_run *r, double t, const float *x, const float *x0)
{
    if (r->env->on_step)
        r->env->on_step(r->env->step_ctx, r->evals, r->n_evals, t, x, x0, r->B);
}

void solver_noise(const solver_run *r, float *z, int k)
{
    for (int b = 0; b < r->B; b++)
        r->env->noise(r->env->noise_ctx, z + (size_t)b * r->D, r->env->first_image + b, k, r->D);
}

void solver_finish(solver_run *r, float *x, const float *x0)
{
    memcpy(x, x0, r->n * sizeof(float));
    solver_report(r, -1.0, x, x0);
}

/* ---------------------------------------------------------------- table */

const ddpm_solver_info ddpm_solvers[] = {
    {"dpm++2m", "DPM-Solver++(2M): second-order multistep ODE solver", 0, 1, ddpm_solve_dpmpp_2m},
    {"dpm++3m", "DPM-Solver++(3M): third-order multistep ODE solver", 0, 1, ddpm_solve_dpmpp_3m},
    {"dpm++2s", "DPM-Solver++(2S): second-order singlestep ODE solver (2 evaluations per step)", 0, 2,
     ddpm_solve_dpmpp_2s},
    {"dpm++2m-sde", "SDE-DPM-Solver++(2M): second-order multistep SDE solver (stochastic)", 1, 1,
     ddpm_solve_dpmpp_2m_sde},
    {"unipc", "UniPC-bh2, order 2: predictor-corrector ODE solver", 0, 1, ddpm_solve_unipc2},
    {"unipc3", "UniPC-bh2, order 3: predictor-corrector ODE solver", 0, 1, ddpm_solve_unipc3},
    {"heun", "Heun's second-order ODE solver of Karras et al. (2 evaluations per step)", 0, 2,
     ddpm_solve_heun},
    {"euler-a", "Euler ancestral (stochastic)", 1, 1, ddpm_solve_euler_ancestral},
};
const int ddpm_n_solvers = (int)(sizeof(ddpm_solvers) / sizeof(ddpm_solvers[0]));

const ddpm_solver_info *ddpm_solver_find(const char *name)
{
    for (int k = 0; name && k < ddpm_n_solvers; k++)
        if (!strcmp(name, ddpm_solvers[k].name))
            return &ddpm_solvers[k];
    return NULL;
}

int ddpm_solver_n_evals(const ddpm_solver_info *s, int n_points)
{
    return s->evals_per_point == 2 ? 2 * n_points - 1 : n_points;
}

int ddpm_solver_n_points(const ddpm_solver_info *s, int n_evals)
{
    int n = s->evals_per_point == 2 ? (n_evals + 1) / 2 : n_evals;
    return n < 1 ? 1 : n;
}

/* -------------------------------------------------------------- spacing */

int ddpm_solver_spacing(double *t, int n_points, ddpm_spacing spacing, const ddpm_vp *vp, double t_start,
                        double t_end)
{
    if (n_points < 1)
        return ddpm_error(DDPM_EINVAL, "a step spacing needs at least one point (got %d)", n_points);
    if ((unsigned)spacing >= DDPM_N_SPACINGS)
        return ddpm_error(DDPM_EINVAL, "unknown step spacing %d", (int)spacing);
    t[0] = t_start;
    if (n_points == 1)
        return 0;
    if (!(t_start > t_end))
        return ddpm_error(DDPM_EINVAL, "a step spacing runs from a later to an earlier time (%g to %g)",
                          t_start, t_end);
    double lam_start = ddpm_vp_lambda(vp, t_start), lam_end = ddpm_vp_lambda(vp, t_end);
    /* Karras et al. 2022, eq. 5, rho = 7, in sigma~ = exp(-lambda) */
    const double rho = 7.0;
    double a_max = exp(-lam_start / rho), a_min = exp(-lam_end / rho);
    for (int k = 1; k < n_points - 1; k++) {
        double u = (double)k / (n_points - 1);
        switch (spacing) {
        case DDPM_SPACING_TIME: t[k] = t_start + u * (t_end - t_start); break;
        case DDPM_SPACING_LOGSNR:
            t[k] = ddpm_vp_t_of_lambda(vp, lam_start + u * (lam_end - lam_start));
            break;
        case DDPM_SPACING_KARRAS:
            t[k] = ddpm_vp_t_of_lambda(vp, -rho * log(a_max + u * (a_min - a_max)));
            break;
        }
    }
    t[n_points - 1] = t_end;
    return 0;
}

/* ---------------------------------------------------------------- noise */

void ddpm_solver_philox_noise(void *ctx, float *z, int image, int k, size_t D)
{
    const ddpm_solver_philox *p = ctx;
    ddpm_rng r = p->rng;
    r.counter += ((uint64_t)image * (uint64_t)p->n_slots + (uint64_t)k) * ((D + 3) / 4);
    ddpm_rng_normal_fill(&r, z, D);
}

void ddpm_solver_initial_noise(float *x_T, int image, size_t D, const ddpm_solver_philox *p)
{
    ddpm_solver_philox_noise((void *)p, x_T, image, p->n_slots - 1, D);
}
