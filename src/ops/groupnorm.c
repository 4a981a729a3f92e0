/* GroupNorm (Wu & He 2018) over NCHW: the C/G * HW elements of each (batch, group)
 * share one mean and variance. Statistics are accumulated in double with two passes
 * (mean, then centred squares), so a large common offset does not cancel precision.
 * Every reduction runs over one (batch, group) or one channel in a fixed order, so
 * the result is the same for any OpenMP thread count. */
#include "ddpm/ops.h"
#include "sigmoid.h"

#include <math.h>

#define GN_PARALLEL_MIN 16384

/* The reductions keep ACC partial sums, element i going to partial i % ACC, and
 * add the partials in index order at the end: a fixed order (the same for any
 * thread count) whose ACC independent chains vectorise, instead of one chain of
 * dependent double additions at one add per FP latency. */
#define ACC 8

static double sum_partials(const double *acc)
{
    double s = 0.0;
    for (int j = 0; j < ACC; j++)
        s += acc[j];
    return s;
}

double ddpm_sum_fixed(const float *x, size_t n)
{
    double acc[ACC] = {0};
    size_t i = 0;
    for (; i + ACC <= n; i += ACC)
        for (int j = 0; j < ACC; j++)
            acc[j] += (double)x[i + j];
    for (int j = 0; i < n; i++, j++)
        acc[j] += (double)x[i];
    return sum_partials(acc);
}

/* sum_i (x[i] - mu)^2 */
static double sum_sq_centred(const float *x, size_t n, double mu)
{
    double acc[ACC] = {0};
    size_t i = 0;
    for (; i + ACC <= n; i += ACC)
        for (int j = 0; j < ACC; j++) {
            double d = (double)x[i + j] - mu;
            acc[j] += d * d;
        }
    for (int j = 0; i < n; i++, j++) {
        double d = (double)x[i] - mu;
        acc[j] += d * d;
    }
    return sum_partials(acc);
}

/* *sd += sum_i d[i] k, *sdx += sum_i d[i] k (x[i] - mu) rs, over n elements. */
static void sum_d_dxhat(const float *d, const float *x, int n, double k, double mu, double rs, double *sd,
                        double *sdx)
{
    double a1[ACC] = {0}, a2[ACC] = {0};
    int i = 0;
    for (; i + ACC <= n; i += ACC)
        for (int j = 0; j < ACC; j++) {
            double v = (double)d[i + j] * k;
            a1[j] += v;
            a2[j] += v * (((double)x[i + j] - mu) * rs);
        }
    for (int j = 0; i < n; i++, j++) {
        double v = (double)d[i] * k;
        a1[j] += v;
        a2[j] += v * (((double)x[i] - mu) * rs);
    }
    *sd += sum_partials(a1);
    *sdx += sum_partials(a2);
}

/* The statistics of group (b, g) (one contiguous run of Cg HW values), and the
 * normalised group, SiLU'd or not: norm = GN(x) when norm is not NULL, out =
 * SiLU(GN(x)) when silu (else out = GN(x)). One pass over the group after its
 * statistics, element by element the same float operations as GroupNorm then
 * ddpm_silu_forward. */
static inline void group_forward(float *out, float *norm, int silu, float *mean, float *rstd, const float *in,
                                 const float *gamma, const float *beta, int C, int HW, int G, float eps,
                                 int bg)
{
    const int Cg = C / G, b = bg / G, g = bg % G;
    const size_t group_n = (size_t)Cg * (size_t)HW;
    const size_t base = ((size_t)b * C + (size_t)g * Cg) * (size_t)HW;
    const float *x = in + base;
    const double mu = ddpm_sum_fixed(x, group_n) / (double)group_n;
    const double sq = sum_sq_centred(x, group_n, mu);
    const double var = sq / (double)group_n; /* biased, as PyTorch's GroupNorm */
    const double rs = 1.0 / sqrt(var + (double)eps);
    mean[bg] = (float)mu;
    rstd[bg] = (float)rs;
    for (int c = 0; c < Cg; c++) {
        const int ch = g * Cg + c;
        const double scale = rs * (double)gamma[ch], shift = (double)beta[ch];
        const float *xc = x + (size_t)c * HW;
        float *oc = out + base + (size_t)c * HW;
        if (!silu) {
            for (int i = 0; i < HW; i++)
                oc[i] = (float)(((double)xc[i] - mu) * scale + shift);
        } else if (norm) {
            float *nc = norm + base + (size_t)c * HW;
#pragma omp simd
            for (int i = 0; i < HW; i++) {
                const float a = (float)(((double)xc[i] - mu) * scale + shift);
                nc[i] = a;
                oc[i] = a * sigmoid_stable(a);
            }
        } else {
#pragma omp simd
            for (int i = 0; i < HW; i++) {
                const float a = (float)(((double)xc[i] - mu) * scale + shift);
                oc[i] = a * sigmoid_stable(a);
            }
        }
    }
}

void ddpm_groupnorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                            const float *beta, int B, int C, int HW, int G, float eps)
{
    const size_t total = (size_t)B * C * HW;
#pragma omp parallel for schedule(static) if (total > GN_PARALLEL_MIN)
    for (int bg = 0; bg < B * G; bg++)
        group_forward(out, NULL, 0, mean, rstd, in, gamma, beta, C, HW, G, eps, bg);
}

void ddpm_groupnorm_silu_forward(float *out, float *norm, float *mean, float *rstd, const float *in,
                                 const float *gamma, const float *beta, int B, int C, int HW, int G,
                                 float eps)
{
    const size_t total = (size_t)B * C * HW;
#pragma omp parallel for schedule(static) if (total > GN_PARALLEL_MIN)
    for (int bg = 0; bg < B * G; bg++)
        group_forward(out, norm, 1, mean, rstd, in, gamma, beta, C, HW, G, eps, bg);
}

void ddpm_groupnorm_backward(float *din, float beta, float *dgamma, float *dbeta, const float *dout,
                             const float *in, const float *mean, const float *rstd, const float *gamma, int B,
                             int C, int HW, int G)
{
    const int Cg = C / G;
    const size_t group_n = (size_t)Cg * (size_t)HW;
    const int n_groups = B * G;
    const size_t total = (size_t)n_groups * group_n;

    if (din) {
        /* With xhat = (x - mean) rstd and dxhat = dout * gamma, over the N elements of a
         * group: din = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)). This is exact
         * for rstd = 1/sqrt(var + eps): eps does not change the form of the derivative. */
#pragma omp parallel for schedule(static) if (total > GN_PARALLEL_MIN)
        for (int bg = 0; bg < n_groups; bg++) {
            const int b = bg / G, g = bg % G;
            const size_t base = ((size_t)b * C + (size_t)g * Cg) * (size_t)HW;
            const double mu = mean[bg], rs = rstd[bg];
            double s1 = 0.0, s2 = 0.0;
            for (int c = 0; c < Cg; c++)
                sum_d_dxhat(dout + base + (size_t)c * HW, in + base + (size_t)c * HW, HW, gamma[g * Cg + c],
                            mu, rs, &s1, &s2);
            const double m1 = s1 / (double)group_n, m2 = s2 / (double)group_n;
            for (int c = 0; c < Cg; c++) {
                const double gm = gamma[g * Cg + c];
                const float *xc = in + base + (size_t)c * HW;
                const float *dc = dout + base + (size_t)c * HW;
                float *ic = din + base + (size_t)c * HW;
                for (int i = 0; i < HW; i++) {
                    double dxhat = (double)dc[i] * gm;
                    double xhat = ((double)xc[i] - mu) * rs;
                    const float d = (float)(rs * (dxhat - m1 - xhat * m2));
                    ic[i] = beta == 0.0f ? d : beta * ic[i] + d; /* beta 0: din is never read */
                }
            }
        }
    }

    if (dgamma || dbeta) {
        /* One channel per iteration, summed over b then HW in that order. */
#pragma omp parallel for schedule(static) if (total > GN_PARALLEL_MIN)
        for (int ch = 0; ch < C; ch++) {
            const int g = ch / Cg;
            double sg = 0.0, sb = 0.0;
            for (int b = 0; b < B; b++) {
                const double mu = mean[b * G + g], rs = rstd[b * G + g];
                const size_t base = ((size_t)b * C + (size_t)ch) * (size_t)HW;
                sum_d_dxhat(dout + base, in + base, HW, 1.0, mu, rs, &sb, &sg);
            }
            if (dgamma)
                dgamma[ch] += (float)sg;
            if (dbeta)
                dbeta[ch] += (float)sb;
        }
    }
}

/* ---- AdaGN: GroupNorm scaled and shifted per image (Dhariwal & Nichol 2021,
 * use_scale_shift_norm). (xhat gamma + beta)(1 + scale) + shift is GroupNorm with
 * the per-image affine gamma (1 + scale), beta (1 + scale) + shift, so the forward
 * is the GN+SiLU kernel above with each image's own affine, and the backward is
 * GroupNorm's backward per image with respect to that affine, chained to gamma,
 * beta, scale and shift. */

void ddpm_groupnorm_silu_scale_shift_forward(float *out, float *norm, float *mean, float *rstd, float *affine,
                                             const float *in, const float *gamma, const float *beta,
                                             const float *scale_shift, int B, int C, int HW, int G, float eps)
{
    for (int b = 0; b < B; b++) {
        const float *scale = scale_shift + (size_t)b * 2 * C, *shift = scale + C;
        float *g_eff = affine + (size_t)b * 2 * C, *b_eff = g_eff + C;
        for (int c = 0; c < C; c++) {
            const double s1 = 1.0 + (double)scale[c];
            g_eff[c] = (float)((double)gamma[c] * s1);
            b_eff[c] = (float)((double)beta[c] * s1 + (double)shift[c]);
        }
    }
    const size_t total = (size_t)B * C * HW;
#pragma omp parallel for schedule(static) if (total > GN_PARALLEL_MIN)
    for (int bg = 0; bg < B * G; bg++) {
        const float *g_eff = affine + (size_t)(bg / G) * 2 * C;
        group_forward(out, norm, 1, mean, rstd, in, g_eff, g_eff + C, C, HW, G, eps, bg);
    }
}

void ddpm_groupnorm_scale_shift_backward(float *din, float din_beta, float *dgamma, float *dbeta,
                                         float *dscale_shift, float *d_affine, const float *dout, const float *in,
                                         const float *mean, const float *rstd, const float *affine,
                                         const float *gamma, const float *beta, const float *scale_shift, int B,
                                         int C, int HW, int G)
{
    const size_t img = (size_t)C * HW;
    for (int b = 0; b < B; b++) {
        float *dg_eff = d_affine + (size_t)b * 2 * C, *db_eff = dg_eff + C;
        for (int c = 0; c < 2 * C; c++)
            dg_eff[c] = 0.0f;
        ddpm_groupnorm_backward(din ? din + b * img : NULL, din_beta, dg_eff, db_eff, dout + b * img, in + b * img,
                                mean + (size_t)b * G, rstd + (size_t)b * G, affine + (size_t)b * 2 * C, 1, C, HW, G);
    }
    /* d gamma = (1 + scale) d g_eff, d beta = (1 + scale) d b_eff, summed over the
     * images in order; d scale = gamma d g_eff + beta d b_eff, d shift = d b_eff */
    for (int c = 0; c < C; c++) {
        double sg = 0.0, sb = 0.0;
        for (int b = 0; b < B; b++) {
            const float *dg_eff = d_affine + (size_t)b * 2 * C, *db_eff = dg_eff + C;
            const double s1 = 1.0 + (double)scale_shift[(size_t)b * 2 * C + c];
            sg += s1 * (double)dg_eff[c];
            sb += s1 * (double)db_eff[c];
            float *ds = dscale_shift + (size_t)b * 2 * C;
            ds[c] += (float)((double)gamma[c] * dg_eff[c] + (double)beta[c] * db_eff[c]);
            ds[C + c] += db_eff[c];
        }
        if (dgamma)
            dgamma[c] += (float)sg;
        if (dbeta)
            dbeta[c] += (float)sb;
    }
}
