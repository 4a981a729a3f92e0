/* solver_karras.c: the samplers of Karras et al. 2022 ("Elucidating the Design
 * Space of Diffusion-Based Generative Models") as k-diffusion runs them on a VP
 * model: the ODE dx~/dsigma~ = (x~ - x0(x~, sigma~)) / sigma~ in the scaled
 * variables x~ = x / alpha_t, sigma~ = sigma_t / alpha_t = e^-lambda_t.
 * Heun (Algorithm 1, no churn) and Euler ancestral. The state between steps is
 * kept in VP units (x = alpha x~), the units the network takes. */
#include <math.h>

#include "ddpm/solver.h"
#include "solver_internal.h"

int ddpm_solve_heun(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                    const ddpm_solver_env *env)
{
    solver_run r;
    int rc = solver_begin(&r, "heun", x, scratch, B, D, t, n_points, env, 0, 2);
    if (rc)
        return rc;
    size_t n = r.n;
    float *den = scratch, *x2 = scratch + n, *den2 = scratch + 2 * n;
    for (int k = 0; k < n_points; k++) {
        if ((rc = solver_denoise(&r, den, x, t[k])))
            break;
        if (k == n_points - 1) { /* the Euler step to sigma~ = 0 lands on x0 */
            solver_finish(&r, x, den);
            break;
        }
        solver_point s = solver_point_at(env->vp, t[k]), q = solver_point_at(env->vp, t[k + 1]);
        double sig = s.sigma / s.alpha, sig_next = q.sigma / q.alpha, dt = sig_next - sig;
        /* Euler predictor: x~2 = x~ + dt d, d = (x~ - x0) / sigma~ */
        for (size_t i = 0; i < n; i++) {
            double xt = x[i] / s.alpha, d = (xt - den[i]) / sig;
            x2[i] = (float)(q.alpha * (xt + dt * d));
        }
        if ((rc = solver_denoise(&r, den2, x2, t[k + 1])))
            break;
        /* trapezoidal corrector: x~' = x~ + dt (d + d2) / 2, d2 = (x~2 - x0(x~2)) / sigma~' */
        for (size_t i = 0; i < n; i++) {
            double xt = x[i] / s.alpha, d = (xt - den[i]) / sig;
            double xt2 = xt + dt * d, d2 = (xt2 - den2[i]) / sig_next;
            x[i] = (float)(q.alpha * (xt + dt * 0.5 * (d + d2)));
        }
        solver_report(&r, t[k + 1], x, den2);
    }
    solver_end(&r);
    return rc;
}

int ddpm_solve_euler_ancestral(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                               const ddpm_solver_env *env)
{
    solver_run r;
    int rc = solver_begin(&r, "euler-a", x, scratch, B, D, t, n_points, env, 1, 1);
    if (rc)
        return rc;
    size_t n = r.n;
    float *den = scratch, *z = scratch + n;
    for (int k = 0; k < n_points; k++) {
        if ((rc = solver_denoise(&r, den, x, t[k])))
            break;
        if (k == n_points - 1) {
            solver_finish(&r, x, den);
            break;
        }
        solver_point s = solver_point_at(env->vp, t[k]), q = solver_point_at(env->vp, t[k + 1]);
        double sig = s.sigma / s.alpha, sig_next = q.sigma / q.alpha;
        /* the ancestral split of eta 1: sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2,
         * sigma_down^2 = sigma'^2 - sigma_up^2; an Euler step to sigma_down, then noise sigma_up */
        double up = sig_next * sqrt((sig * sig - sig_next * sig_next) / (sig * sig));
        if (up > sig_next)
            up = sig_next;
        double down = sqrt(sig_next * sig_next - up * up);
        solver_noise(&r, z, k);
        for (size_t i = 0; i < n; i++) {
            double xt = x[i] / s.alpha, d = (xt - den[i]) / sig;
            x[i] = (float)(q.alpha * (xt + (down - sig) * d + up * z[i]));
        }
        solver_report(&r, t[k + 1], x, den);
    }
    solver_end(&r);
    return rc;
}
