/* solver_unipc.c: UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-
 * Corrector Framework for Fast Sampling of Diffusion Models"), the B(h) =
 * e^-h - 1 variant (bh2), data prediction. Formulas in docs/samplers.md. */
#include <math.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/solver.h"
#include "solver_internal.h"

/* Solves A y = c for p <= 3 by Gaussian elimination with partial pivoting, in
 * place (A row-major p x p). Returns -1 if A is singular. */
static int solve_small(double A[3][3], double *c, double *y, int p)
{
    for (int col = 0; col < p; col++) {
        int piv = col;
        for (int row = col + 1; row < p; row++)
            if (fabs(A[row][col]) > fabs(A[piv][col]))
                piv = row;
        if (A[piv][col] == 0.0)
            return -1;
        if (piv != col) {
            for (int j = 0; j < p; j++) {
                double tmp = A[col][j];
                A[col][j] = A[piv][j], A[piv][j] = tmp;
            }
            double tmp = c[col];
            c[col] = c[piv], c[piv] = tmp;
        }
        for (int row = col + 1; row < p; row++) {
            double f = A[row][col] / A[col][col];
            for (int j = col; j < p; j++)
                A[row][j] -= f * A[col][j];
            c[row] -= f * c[col];
        }
    }
    for (int row = p - 1; row >= 0; row--) {
        double s = c[row];
        for (int j = row + 1; j < p; j++)
            s -= A[row][j] * y[j];
        y[row] = s / A[row][row];
    }
    return 0;
}

/* The coefficients of one UniPC step of order p from lambda_s to lambda_t = lambda_s + h,
 * with rk[j] = (lambda_{s_{j+1}} - lambda_s) / h for the p - 1 older predictions
 * and rk[p-1] = 1 (the new point):
 *   b_i = h phi_i(h) i! / B(h), phi from phi_1 = (e^-h - 1)/(-h) - 1 by
 *   phi_{i+1} = phi_i / (-h) - 1/(i+1)!, and R[i][j] = rk[j]^i (i, j < p);
 * predictor rho_p solves R[:p-1, :p-1] rho = b[:p-1] (rho = 1/2 at p = 2),
 * corrector rho_c solves R rho = b (rho = 1/2 at p = 1). */
static int unipc_coefs(double h, const double *rk, int p, double *rho_p, double *rho_c)
{
    double hh = -h, B_h = expm1(hh);
    double phi = expm1(hh) / hh - 1.0, fact = 1.0, b[3] = {0, 0, 0}, R[3][3];
    for (int i = 1; i <= p; i++) {
        b[i - 1] = phi * fact / B_h;
        fact *= i + 1;
        phi = phi / hh - 1.0 / fact;
    }
    for (int i = 0; i < p; i++)
        for (int j = 0; j < p; j++)
            R[i][j] = pow(rk[j], i);
    if (p == 2)
        rho_p[0] = 0.5;
    if (p == 3) {
        double A[3][3] = {{R[0][0], R[0][1], 0}, {R[1][0], R[1][1], 0}, {0, 0, 0}}, c[3] = {b[0], b[1], 0};
        if (solve_small(A, c, rho_p, 2))
            return -1;
    }
    if (p == 1) {
        rho_c[0] = 0.5;
    } else {
        double c[3] = {b[0], b[1], b[2]};
        if (solve_small(R, c, rho_c, p))
            return -1;
    }
    return 0;
}

static int unipc(const char *name, float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                 const ddpm_solver_env *env, int order)
{
    solver_run r;
    int rc = solver_begin(&r, name, x, scratch, B, D, t, n_points, env, 0, 1);
    if (rc)
        return rc;
    size_t n = r.n;
    /* m[0] the newest data prediction, at lam[0]; m_new the prediction at the
     * predicted point; xb the first-order (DDIM) part of the step */
    float *m[3] = {scratch, scratch + n, scratch + 2 * n}, *m_new = scratch + 3 * n, *xb = scratch + 4 * n;
    double lam[3] = {0, 0, 0};
    solver_point s = solver_point_at(env->vp, t[0]);
    lam[0] = s.lambda;
    if ((rc = solver_denoise(&r, m[0], x, t[0])))
        goto done;
    for (int k = 0; k + 1 < n_points; k++) {
        int j = k + 1; /* the step to point j; its order: at most j predictions, and low near the end */
        int p = order < j ? order : j;
        if (p > n_points + 1 - j) /* the reference's lower_order_final: order <= 2 into the last point */
            p = n_points + 1 - j;
        solver_point q = solver_point_at(env->vp, t[j]);
        double h = q.lambda - s.lambda, rk[3], rho_p[3] = {0, 0, 0}, rho_c[3] = {0, 0, 0};
        for (int i = 1; i < p; i++)
            rk[i - 1] = (lam[i] - lam[0]) / h;
        rk[p - 1] = 1.0;
        if (unipc_coefs(h, rk, p, rho_p, rho_c)) {
            rc = ddpm_error(DDPM_EINVAL, "%s: singular step between t = %g and t = %g", name, s.t, q.t);
            goto done;
        }
        double cx = q.sigma / s.sigma, cm = -q.alpha * expm1(-h), cb = q.alpha * expm1(-h); /* alpha_t B(h) */
        /* predictor: x_t = xb - alpha_t B(h) sum_i rho_p[i] D1_i, D1_i = (m_i - m0) / rk_i */
        for (size_t e = 0; e < n; e++) {
            double base = cx * x[e] + cm * m[0][e], res = 0;
            for (int i = 1; i < p; i++)
                res += rho_p[i - 1] * (m[i][e] - m[0][e]) / rk[i - 1];
            xb[e] = (float)base;
            x[e] = (float)(base - cb * res);
        }
        if ((rc = solver_denoise(&r, m_new, x, t[j])))
            goto done;
        /* corrector with the prediction at the new point; the last point's
         * result is not used (the final step returns m_new), so it is skipped */
        if (j < n_points - 1) {
            for (size_t e = 0; e < n; e++) {
                double res = rho_c[p - 1] * ((double)m_new[e] - m[0][e]);
                for (int i = 1; i < p; i++)
                    res += rho_c[i - 1] * (m[i][e] - m[0][e]) / rk[i - 1];
                x[e] = (float)(xb[e] - cb * res);
            }
        }
        float *oldest = m[2];
        m[2] = m[1], m[1] = m[0], m[0] = m_new, m_new = oldest;
        lam[2] = lam[1], lam[1] = lam[0], lam[0] = q.lambda;
        s = q;
        solver_report(&r, t[j], x, m[0]);
    }
    solver_finish(&r, x, m[0]);
done:
    solver_end(&r);
    return rc;
}

int ddpm_solve_unipc2(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                      const ddpm_solver_env *env)
{
    return unipc("unipc", x, scratch, B, D, t, n_points, env, 2);
}

int ddpm_solve_unipc3(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                      const ddpm_solver_env *env)
{
    return unipc("unipc3", x, scratch, B, D, t, n_points, env, 3);
}
