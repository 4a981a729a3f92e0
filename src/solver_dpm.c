/* solver_dpm.c: DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for
 * Guided Sampling of Diffusion Probabilistic Models"), multistep, data
 * prediction: 2M (Algorithm 2), 3M, the 2M solver of the reverse SDE, and the
 * singlestep 2S (Algorithm 1).
 * Formulas in docs/samplers.md. */
#include <math.h>

#include "ddpm/solver.h"
#include "solver_internal.h"

/* One run of the family: order 2 or 3; sde 1 for SDE-DPM-Solver++(2M). The
 * last data predictions are m[0] (newest), m[1], m[2], taken at lam[0..2]. */
static int dpmpp(const char *name, float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                 const ddpm_solver_env *env, int order, int sde)
{
    solver_run r;
    int rc = solver_begin(&r, name, x, scratch, B, D, t, n_points, env, sde, 1);
    if (rc)
        return rc;
    size_t n = r.n;
    float *m[3] = {scratch, scratch + n, scratch + 2 * n}, *z = scratch + 3 * n;
    double lam[3] = {0, 0, 0};
    for (int k = 0; k < n_points; k++) {
        float *oldest = m[2];
        m[2] = m[1], m[1] = m[0], m[0] = oldest;
        lam[2] = lam[1], lam[1] = lam[0];
        solver_point s = solver_point_at(env->vp, t[k]);
        lam[0] = s.lambda;
        if ((rc = solver_denoise(&r, m[0], x, t[k])))
            break;
        if (k == n_points - 1) {
            solver_finish(&r, x, m[0]);
            break;
        }
        /* the step from t[k] to t[k+1] with the k+1 predictions made so far;
         * 3M lowers the order of the step to the last point on short grids */
        int p = k + 1 < order ? k + 1 : order;
        if (order == 3 && n_points < 15 && k + 1 == n_points - 1 && p > 2)
            p = 2;
        solver_point q = solver_point_at(env->vp, t[k + 1]);
        double h = q.lambda - s.lambda;
        /* x_t = cx x_s + sum_j cm[j] m[j] (+ cz z) */
        double cx, cm[3] = {0, 0, 0}, cz = 0;
        if (!sde) {
            double phi1 = expm1(-h);      /* e^-h - 1 */
            double phi2 = phi1 / h + 1.0; /* (e^-h - 1 + h) / h */
            double phi3 = phi2 / h - 0.5; /* (e^-h - 1 + h) / h^2 - 1/2 */
            cx = q.sigma / s.sigma;
            if (p == 1) {
                cm[0] = -q.alpha * phi1;
            } else if (p == 2) {
                /* D = m0 + (m0 - m1) / (2 r0), r0 = h0 / h (Algorithm 2) */
                double r0 = (lam[0] - lam[1]) / h;
                cm[0] = -q.alpha * phi1 * (1.0 + 0.5 / r0);
                cm[1] = q.alpha * phi1 * 0.5 / r0;
            } else {
                /* The quadratic through the three predictions in lambda,
                 * m0 + c1 u + c2 u^2 (u = lambda - lambda_s), integrated
                 * exactly against e^lambda: with D1 = h c1 and D2 = h^2 c2,
                 *   D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1,
                 *   D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1),
                 *   x_t = cx x - alpha phi1 m0 + alpha phi2 D1 - 2 alpha phi3 D2.
                 * The reference implementations weigh D2 by alpha phi3, half
                 * the integral of c2 u^2, which makes the step second order
                 * (docs/samplers.md; test_solver's order test fails on it). */
                double r0 = (lam[0] - lam[1]) / h, r1 = (lam[1] - lam[2]) / h;
                double a0 = 1.0 / r0, a1 = 1.0 / r1; /* D1_0 = a0 (m0 - m1), D1_1 = a1 (m1 - m2) */
                double w = r0 / (r0 + r1), v = 1.0 / (r0 + r1);
                /* D1 = (1 + w) D1_0 - w D1_1, D2 = v (D1_0 - D1_1) */
                double c10 = q.alpha * (phi2 * (1.0 + w) - 2 * phi3 * v),
                       c11 = q.alpha * (-phi2 * w + 2 * phi3 * v);
                cm[0] = -q.alpha * phi1 + c10 * a0;
                cm[1] = -c10 * a0 + c11 * a1;
                cm[2] = -c11 * a1;
            }
        } else {
            /* SDE-DPM-Solver++: x_t = sigma_t/sigma_s e^-h x_s + alpha_t (1 - e^-2h) D
             * + sigma_t sqrt(1 - e^-2h) z, D = m0 (first order) or m0 + (m0 - m1)/(2 r0) */
            double one_minus_e2h = -expm1(-2.0 * h);
            cx = q.sigma / s.sigma * exp(-h);
            cz = q.sigma * sqrt(one_minus_e2h);
            if (p == 1) {
                cm[0] = q.alpha * one_minus_e2h;
            } else {
                double r0 = (lam[0] - lam[1]) / h;
                cm[0] = q.alpha * one_minus_e2h * (1.0 + 0.5 / r0);
                cm[1] = -q.alpha * one_minus_e2h * 0.5 / r0;
            }
            solver_noise(&r, z, k);
        }
        for (size_t i = 0; i < n; i++) {
            double v = cx * x[i] + cm[0] * m[0][i];
            if (p > 1)
                v += cm[1] * m[1][i];
            if (p > 2)
                v += cm[2] * m[2][i];
            if (sde)
                v += cz * z[i];
            x[i] = (float)v;
        }
        solver_report(&r, t[k + 1], x, m[0]);
    }
    solver_end(&r);
    return rc;
}

int ddpm_solve_dpmpp_2m(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                        const ddpm_solver_env *env)
{
    return dpmpp("dpm++2m", x, scratch, B, D, t, n_points, env, 2, 0);
}

int ddpm_solve_dpmpp_3m(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                        const ddpm_solver_env *env)
{
    return dpmpp("dpm++3m", x, scratch, B, D, t, n_points, env, 3, 0);
}

int ddpm_solve_dpmpp_2m_sde(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                            const ddpm_solver_env *env)
{
    return dpmpp("dpm++2m-sde", x, scratch, B, D, t, n_points, env, 2, 1);
}

/* DPM-Solver++(2S), Algorithm 1 with r = 1/2: a first-order step to the
 * midpoint in lambda, u = sigma_m/sigma_s x_s - alpha_m (e^-h/2 - 1) m_s, and the
 * full step with the prediction there, x_t = sigma_t/sigma_s x_s - alpha_t (e^-h - 1) x0(u, t_m). */
int ddpm_solve_dpmpp_2s(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                        const ddpm_solver_env *env)
{
    solver_run r;
    int rc = solver_begin(&r, "dpm++2s", x, scratch, B, D, t, n_points, env, 0, 2);
    if (rc)
        return rc;
    size_t n = r.n;
    float *m = scratch, *u = scratch + n, *m_mid = scratch + 2 * n;
    for (int k = 0; k < n_points; k++) {
        if ((rc = solver_denoise(&r, m, x, t[k])))
            break;
        if (k == n_points - 1) {
            solver_finish(&r, x, m);
            break;
        }
        solver_point s = solver_point_at(env->vp, t[k]), q = solver_point_at(env->vp, t[k + 1]);
        double h = q.lambda - s.lambda;
        solver_point mid = solver_point_at(env->vp, ddpm_vp_t_of_lambda(env->vp, s.lambda + 0.5 * h));
        double hm = mid.lambda - s.lambda; /* h/2 up to the inversion's rounding */
        double cu = mid.sigma / s.sigma, cmu = -mid.alpha * expm1(-hm);
        for (size_t i = 0; i < n; i++)
            u[i] = (float)(cu * x[i] + cmu * m[i]);
        if ((rc = solver_denoise(&r, m_mid, u, mid.t)))
            break;
        double cx = q.sigma / s.sigma, cm = -q.alpha * expm1(-h);
        for (size_t i = 0; i < n; i++)
            x[i] = (float)(cx * x[i] + cm * m_mid[i]);
        solver_report(&r, t[k + 1], x, m_mid);
    }
    solver_end(&r);
    return rc;
}
