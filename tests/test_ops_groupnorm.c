/* Tests of GroupNorm: forward against a naive double implementation, the
 * normalisation itself, the backward pass against central finite differences,
 * accumulation into gradients and independence of the OpenMP thread count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/ops.h"
#include "testutil.h"

#include "../src/ops/sigmoid.h"

/* Inputs and parameters lie on a grid of 2^-14, so that x +- h for h = 2^-8 is exact
 * in float: the finite differences then see exactly the perturbation they divide by. */
#define GRID_BITS 14
#define FD_H (1.0f / 256.0f)

static void fill_grid(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    tu_fill_uniform(x, n, seed, lo, hi);
    for (size_t i = 0; i < n; i++)
        x[i] = ldexpf(rintf(ldexpf(x[i], GRID_BITS)), -GRID_BITS);
}

typedef struct {
    int B, C, HW, G;
    float eps;
    size_t n;
    float *x, *gamma, *beta, *r; /* inputs, parameters, projection of L = sum r * out */
    float *out, *mean, *rstd;    /* the op's outputs */
    double *ref_out, *ref_mean, *ref_rstd;
} gn_case;

static gn_case gn_make(int B, int C, int HW, int G, float eps, uint64_t seed)
{
    gn_case c = {.B = B, .C = C, .HW = HW, .G = G, .eps = eps, .n = (size_t)B * C * HW};
    c.x = tu_alloc(c.n);
    c.r = tu_alloc(c.n);
    c.out = tu_alloc(c.n);
    c.gamma = tu_alloc(C);
    c.beta = tu_alloc(C);
    c.mean = tu_alloc((size_t)B * G);
    c.rstd = tu_alloc((size_t)B * G);
    c.ref_out = calloc(c.n, sizeof(double));
    c.ref_mean = calloc((size_t)B * G, sizeof(double));
    c.ref_rstd = calloc((size_t)B * G, sizeof(double));
    assert_non_null(c.ref_out);
    assert_non_null(c.ref_mean);
    assert_non_null(c.ref_rstd);
    /* an offset of 0.5 so that the group means are not ~0 */
    fill_grid(c.x, c.n, seed, -1.5f, 2.5f);
    fill_grid(c.gamma, C, seed + 1, 0.5f, 1.5f);
    fill_grid(c.beta, C, seed + 2, -0.5f, 0.5f);
    tu_fill_uniform(c.r, c.n, seed + 3, -1.0f, 1.0f);
    return c;
}

static void gn_free(gn_case *c)
{
    free(c->x), free(c->r), free(c->out), free(c->gamma), free(c->beta);
    free(c->mean), free(c->rstd), free(c->ref_out), free(c->ref_mean), free(c->ref_rstd);
}

/* Naive GroupNorm in double, indexed element by element (b, c, hw). */
static void gn_reference(gn_case *c)
{
    const int Cg = c->C / c->G;
    for (int b = 0; b < c->B; b++)
        for (int g = 0; g < c->G; g++) {
            double s = 0, s2 = 0;
            for (int ch = g * Cg; ch < (g + 1) * Cg; ch++)
                for (int i = 0; i < c->HW; i++)
                    s += c->x[((size_t)b * c->C + ch) * c->HW + i];
            const double m = s / ((double)Cg * c->HW);
            for (int ch = g * Cg; ch < (g + 1) * Cg; ch++)
                for (int i = 0; i < c->HW; i++) {
                    double d = c->x[((size_t)b * c->C + ch) * c->HW + i] - m;
                    s2 += d * d;
                }
            const double var = s2 / ((double)Cg * c->HW);
            const double rs = 1.0 / sqrt(var + (double)c->eps);
            c->ref_mean[b * c->G + g] = m;
            c->ref_rstd[b * c->G + g] = rs;
            for (int ch = g * Cg; ch < (g + 1) * Cg; ch++)
                for (int i = 0; i < c->HW; i++) {
                    size_t k = ((size_t)b * c->C + ch) * c->HW + i;
                    c->ref_out[k] = (c->x[k] - m) * rs * c->gamma[ch] + c->beta[ch];
                }
        }
}

static double gn_loss(void *ctx)
{
    gn_case *c = ctx;
    ddpm_groupnorm_forward(c->out, c->mean, c->rstd, c->x, c->gamma, c->beta, c->B, c->C, c->HW, c->G,
                           c->eps);
    double L = 0;
    for (size_t i = 0; i < c->n; i++)
        L += (double)c->r[i] * c->out[i];
    return L;
}

static double gn_loss_reference(void *ctx)
{
    gn_case *c = ctx;
    gn_reference(c);
    double L = 0;
    for (size_t i = 0; i < c->n; i++)
        L += (double)c->r[i] * c->ref_out[i];
    return L;
}

static const int shapes[][4] = {
    /* B, C, HW, G: C not a power of two, odd H x W = 5 x 7 */
    {2, 6, 35, 3},
    {3, 10, 35, 5},
    {2, 6, 35, 1},
    {2, 6, 35, 6},
};
enum { N_SHAPES = sizeof shapes / sizeof shapes[0] };

static void test_groupnorm_forward_matches_double_reference(void **state)
{
    (void)state;
    for (int s = 0; s < N_SHAPES; s++) {
        gn_case c = gn_make(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], 1e-6f, 10 + s);
        gn_loss(&c);
        gn_reference(&c);
        /* out is O(3): float rounding of the result is ~2e-7, 1e-6 is 5 ulp. */
        double worst = 0;
        for (size_t i = 0; i < c.n; i++)
            worst = fmax(worst, fabs(c.out[i] - c.ref_out[i]));
        if (worst > 1e-6)
            fprintf(stderr, "shape %d: max |out - ref| = %g\n", s, worst);
        assert_true(worst <= 1e-6);
        for (int k = 0; k < c.B * c.G; k++) {
            assert_true(fabs(c.mean[k] - c.ref_mean[k]) <= 1e-6 * fabs(c.ref_mean[k]) + 1e-7);
            assert_true(fabs(c.rstd[k] - c.ref_rstd[k]) <= 1e-6 * c.ref_rstd[k]);
        }
        gn_free(&c);
    }
}

static void test_groupnorm_normalizes_each_group_to_mean_zero_unit_variance(void **state)
{
    (void)state;
    const int B = 3, C = 10, HW = 35, G = 5, Cg = C / G;
    gn_case c = gn_make(B, C, HW, G, 1e-6f, 77);
    /* a large common offset: a one-pass E[x^2] - E[x]^2 in float would fail here */
    for (size_t i = 0; i < c.n; i++)
        c.x[i] = 3.0f * c.x[i] + 40.0f;
    for (int ch = 0; ch < C; ch++)
        c.gamma[ch] = 1.0f, c.beta[ch] = 0.0f;
    gn_loss(&c);
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            const float *o = c.out + ((size_t)b * C + (size_t)g * Cg) * HW;
            double s = 0, s2 = 0;
            for (int i = 0; i < Cg * HW; i++)
                s += o[i];
            double m = s / (Cg * HW);
            for (int i = 0; i < Cg * HW; i++)
                s2 += (o[i] - m) * (o[i] - m);
            double var = s2 / (Cg * HW);
            /* var/(var + eps) with var ~ 10 differs from 1 by 1e-7: 1e-5 is float noise. */
            if (fabs(m) > 1e-5 || fabs(var - 1) > 1e-5)
                fprintf(stderr, "b %d g %d: mean %g var %g\n", b, g, m, var);
            assert_true(fabs(m) <= 1e-5);
            assert_true(fabs(var - 1.0) <= 1e-5);
        }
    gn_free(&c);
}

/* Analytic gradients of L = sum r * out, with dout = r, into zeroed buffers. */
static void gn_analytic(gn_case *c, float *din, float *dgamma, float *dbeta)
{
    gn_loss(c);
    ddpm_groupnorm_backward(din, 1.0f, dgamma, dbeta, c->r, c->x, c->mean, c->rstd, c->gamma, c->B, c->C,
                            c->HW, c->G);
}

static void check_groupnorm_gradients(float eps)
{
    for (int s = 0; s < N_SHAPES; s++) {
        gn_case c = gn_make(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], eps, 20 + s);
        float *din = tu_alloc(c.n), *dgamma = tu_alloc(c.C), *dbeta = tu_alloc(c.C);
        gn_analytic(&c, din, dgamma, dbeta);
        int bad = 0;
        /* (1) Differences of the float op itself, h = 2^-8. Moving one x moves the whole
         * group's statistics, so all Cg*HW <= 70 outputs of the group change, each rounded
         * to float (half an ulp <= 2.4e-7 at |out| < 4): the rounding noise of L(x+h) - L(x-h)
         * is ~sqrt(70) * 2.4e-7 * |r| typically, 70 * 4.8e-7 at worst, i.e. 2e-4 .. 4e-3
         * after dividing by 2h. Truncation h^2/6 |L'''| ~ 3e-6 * O(rstd^3) is smaller. So
         * abs 1e-3 + rel 1e-2: still catches a wrong index or a missing term, whose error
         * is O(|gradient|) ~ 0.1 .. 1. The tight check is (2). */
        bad += tu_check_grad("groupnorm din (float fd)", c.x, din, c.n, gn_loss, &c, FD_H, 1e-3, 1e-2);
        bad +=
            tu_check_grad("groupnorm dgamma (float fd)", c.gamma, dgamma, c.C, gn_loss, &c, FD_H, 1e-3, 1e-2);
        bad += tu_check_grad("groupnorm dbeta (float fd)", c.beta, dbeta, c.C, gn_loss, &c, FD_H, 1e-3, 1e-2);
        /* (2) Differences of the double reference with the same exact perturbation: no
         * rounding noise (1e-16 * |L| / h ~ 1e-13), only the truncation h^2/6 |L'''|, and
         * the float analytic gradient's own rounding (~1e-7 relative). Measured worst
         * difference: below 1e-7 (and ~8e-5 for (1)). abs 2e-6 + rel 2e-5 leaves a 20x
         * margin and is 500x tighter than (1): a 0.1% error in dgamma fails it. */
        bad += tu_check_grad("groupnorm din (double fd)", c.x, din, c.n, gn_loss_reference, &c, FD_H, 2e-6,
                             2e-5);
        bad += tu_check_grad("groupnorm dgamma (double fd)", c.gamma, dgamma, c.C, gn_loss_reference, &c,
                             FD_H, 2e-6, 2e-5);
        bad += tu_check_grad("groupnorm dbeta (double fd)", c.beta, dbeta, c.C, gn_loss_reference, &c, FD_H,
                             2e-6, 2e-5);
        if (bad)
            fprintf(stderr, "shape B %d C %d HW %d G %d eps %g\n", c.B, c.C, c.HW, c.G, (double)eps);
        assert_int_equal(bad, 0);
        free(din), free(dgamma), free(dbeta);
        gn_free(&c);
    }
}

static void test_groupnorm_backward_matches_finite_differences(void **state)
{
    (void)state;
    check_groupnorm_gradients(1e-6f);
}

/* A large eps makes rstd != 1/std, so a backward that ignored eps would fail. */
static void test_groupnorm_backward_matches_finite_differences_large_eps(void **state)
{
    (void)state;
    check_groupnorm_gradients(0.5f);
}

static void test_groupnorm_backward_accumulates_and_skips_null(void **state)
{
    (void)state;
    gn_case c = gn_make(2, 6, 35, 3, 1e-6f, 31);
    float *din = tu_alloc(c.n), *dgamma = tu_alloc(c.C), *dbeta = tu_alloc(c.C);
    float *din2 = tu_alloc(c.n), *dgamma2 = tu_alloc(c.C), *dbeta2 = tu_alloc(c.C);
    gn_analytic(&c, din, dgamma, dbeta);
    for (size_t i = 0; i < c.n; i++)
        din2[i] = 0.375f - (float)(i % 7);
    for (int i = 0; i < c.C; i++)
        dgamma2[i] = 1.5f + i, dbeta2[i] = -2.25f + i;
    ddpm_groupnorm_backward(din2, 1.0f, dgamma2, dbeta2, c.r, c.x, c.mean, c.rstd, c.gamma, c.B, c.C, c.HW,
                            c.G);
    /* prefill + gradient, up to the one rounding of the float addition */
    for (size_t i = 0; i < c.n; i++) {
        float want = (0.375f - (float)(i % 7)) + din[i];
        assert_true(fabsf(din2[i] - want) <= 1e-6f * (1.0f + fabsf(want)));
    }
    for (int i = 0; i < c.C; i++) {
        assert_true(fabsf(dgamma2[i] - (1.5f + i + dgamma[i])) <= 1e-5f);
        assert_true(fabsf(dbeta2[i] - (-2.25f + i + dbeta[i])) <= 1e-5f);
    }
    /* NULL gradients are skipped; the others are unaffected */
    memset(din2, 0, c.n * sizeof(float));
    ddpm_groupnorm_backward(din2, 1.0f, NULL, NULL, c.r, c.x, c.mean, c.rstd, c.gamma, c.B, c.C, c.HW, c.G);
    assert_memory_equal(din2, din, c.n * sizeof(float));
    memset(dgamma2, 0, c.C * sizeof(float));
    ddpm_groupnorm_backward(NULL, 1.0f, dgamma2, NULL, c.r, c.x, c.mean, c.rstd, c.gamma, c.B, c.C, c.HW,
                            c.G);
    assert_memory_equal(dgamma2, dgamma, c.C * sizeof(float));
    free(din), free(dgamma), free(dbeta), free(din2), free(dgamma2), free(dbeta2);
    gn_free(&c);
}

/* The same bytes of out, din, dgamma and dbeta at 1, 2 and 3 threads: above the size
 * where the loops go parallel (16,384 elements), HW a multiple of 8 and odd (13 x 15:
 * the partials' tail), a batch larger than the backward's chunk of images (512
 * channels: 8 images a chunk, so 9 is two chunks), and a layer too wide for the
 * chunk (3,000 channels: the three-pass route). */
static void test_groupnorm_is_identical_for_one_two_and_three_threads(void **state)
{
    (void)state;
    static const int sh[][4] = {{4, 64, 256, 8}, {3, 64, 195, 8}, {9, 512, 5, 4}, {2, 3000, 3, 3}};
    const int saved = omp_get_max_threads();
    for (int s = 0; s < (int)(sizeof sh / sizeof sh[0]); s++) {
        gn_case c = gn_make(sh[s][0], sh[s][1], sh[s][2], sh[s][3], 1e-6f, 41 + s);
        float *out1 = tu_alloc(c.n), *din1 = tu_alloc(c.n), *dg1 = tu_alloc(c.C), *db1 = tu_alloc(c.C);
        float *din2 = tu_alloc(c.n), *dg2 = tu_alloc(c.C), *db2 = tu_alloc(c.C);
        omp_set_num_threads(1);
        gn_analytic(&c, din1, dg1, db1);
        memcpy(out1, c.out, c.n * sizeof(float));
        for (int threads = 2; threads <= 3; threads++) {
            memset(din2, 0, c.n * sizeof(float));
            memset(dg2, 0, c.C * sizeof(float));
            memset(db2, 0, c.C * sizeof(float));
            omp_set_num_threads(threads);
            gn_analytic(&c, din2, dg2, db2);
            if (memcmp(out1, c.out, c.n * sizeof(float)) || memcmp(din1, din2, c.n * sizeof(float)) ||
                memcmp(dg1, dg2, c.C * sizeof(float)) || memcmp(db1, db2, c.C * sizeof(float)))
                fail_msg("B %d C %d HW %d G %d: %d threads differ from 1", c.B, c.C, c.HW, c.G, threads);
        }
        omp_set_num_threads(saved);
        free(out1), free(din1), free(dg1), free(db1), free(din2), free(dg2), free(db2);
        gn_free(&c);
    }
}

/* dL/din, dL/dgamma, dL/dbeta of L = sum r * out in double, from the double
 * statistics: xhat = (x - m) rs, dxhat = r gamma, din = rs (dxhat - mean(dxhat)
 * - xhat mean(dxhat xhat)), dgamma = sum r xhat, dbeta = sum r. */
static void gn_backward_reference(gn_case *c, double *din, double *dgamma, double *dbeta)
{
    const int Cg = c->C / c->G;
    const double N = (double)Cg * c->HW;
    gn_reference(c);
    for (int ch = 0; ch < c->C; ch++)
        dgamma[ch] = dbeta[ch] = 0.0;
    for (int b = 0; b < c->B; b++)
        for (int g = 0; g < c->G; g++) {
            const double m = c->ref_mean[b * c->G + g], rs = c->ref_rstd[b * c->G + g];
            double s1 = 0, s2 = 0;
            for (int ch = g * Cg; ch < (g + 1) * Cg; ch++)
                for (int i = 0; i < c->HW; i++) {
                    const size_t k = ((size_t)b * c->C + ch) * c->HW + i;
                    const double xhat = (c->x[k] - m) * rs, dxhat = (double)c->r[k] * c->gamma[ch];
                    s1 += dxhat, s2 += dxhat * xhat;
                    dgamma[ch] += (double)c->r[k] * xhat;
                    dbeta[ch] += c->r[k];
                }
            for (int ch = g * Cg; ch < (g + 1) * Cg; ch++)
                for (int i = 0; i < c->HW; i++) {
                    const size_t k = ((size_t)b * c->C + ch) * c->HW + i;
                    const double xhat = (c->x[k] - m) * rs, dxhat = (double)c->r[k] * c->gamma[ch];
                    din[k] = rs * (dxhat - s1 / N - xhat * s2 / N);
                }
        }
}

static int check_close(const char *name, const float *got, const double *want, size_t n, double abs_tol,
                       double rel_tol)
{
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs(got[i] - want[i]) / (abs_tol + rel_tol * fabs(want[i]));
        if (!(e <= worst))
            worst = e, at = i;
    }
    if (worst > 1.0) {
        fprintf(stderr,
                "%s: worst at %zu: %.9g, want %.9g (error %.3g of the tolerance); first values:", name, at,
                (double)got[at], want[at], worst);
        for (size_t i = 0; i < n && i < 4; i++)
            fprintf(stderr, " %.9g/%.9g", (double)got[i], want[i]);
        fprintf(stderr, "\n");
    }
    return worst > 1.0;
}

/* The analytic gradients against the double formulas, on the three routes of the
 * backward: one chunk of images, several chunks (512 channels), and the three-pass
 * route (3,000 channels), with odd HW and one group. The float op normalises with
 * the float mean and rstd (relative rounding 6e-8) and rounds din to float (6e-8
 * relative, din O(1)): abs 2e-7 + rel 2e-6 is a few times that; dgamma sums
 * B HW <= 105 terms r xhat of size <= 3, each off by ~1e-7 relative: abs 1e-6 +
 * rel 1e-6. Measured worst: a quarter of either tolerance. A dropped or doubled
 * image, channel or chunk is off by O(0.1 .. 1). */
static void test_groupnorm_backward_matches_double_formulas_on_every_route(void **state)
{
    (void)state;
    static const int sh[][4] = {
        {3, 10, 35, 5}, {3, 6, 35, 1}, {9, 512, 5, 4}, {2, 3000, 3, 3}, {5, 3000, 7, 1000}};
    for (int s = 0; s < (int)(sizeof sh / sizeof sh[0]); s++) {
        gn_case c = gn_make(sh[s][0], sh[s][1], sh[s][2], sh[s][3], 1e-5f, 60 + s);
        float *din = tu_alloc(c.n), *dgamma = tu_alloc(c.C), *dbeta = tu_alloc(c.C);
        double *rdin = calloc(c.n, sizeof(double)), *rdg = calloc(c.C, sizeof(double));
        double *rdb = calloc(c.C, sizeof(double));
        assert_non_null(rdin);
        assert_non_null(rdg);
        assert_non_null(rdb);
        gn_analytic(&c, din, dgamma, dbeta);
        gn_backward_reference(&c, rdin, rdg, rdb);
        int bad = check_close("din", din, rdin, c.n, 2e-7, 2e-6);
        bad += check_close("dgamma", dgamma, rdg, c.C, 1e-6, 1e-6);
        bad += check_close("dbeta", dbeta, rdb, c.C, 1e-6, 1e-6);
        if (bad)
            fail_msg("B %d C %d HW %d G %d", c.B, c.C, c.HW, c.G);
        free(din), free(dgamma), free(dbeta), free(rdin), free(rdg), free(rdb);
        gn_free(&c);
    }
}

/* Groups are independent: the backward of a layer gives, byte for byte, what it
 * gives for each group's channels as a layer of their own (C = C/G, one group).
 * The whole layer and its slices take different routes: 512 channels in chunks of
 * 8 images against 128 channels in one chunk; 3,000 channels by three passes
 * against 1,000 in chunks of 3 images. The parameter gradients add each channel's
 * double sums over the images in order on every route. */
static void test_groupnorm_backward_gives_each_groups_bytes_alone(void **state)
{
    (void)state;
    static const int sh[][4] = {{9, 512, 5, 4}, {5, 3000, 3, 3}};
    for (int s = 0; s < (int)(sizeof sh / sizeof sh[0]); s++) {
        gn_case c = gn_make(sh[s][0], sh[s][1], sh[s][2], sh[s][3], 1e-5f, 80 + s);
        const int Cg = c.C / c.G;
        const size_t slab = (size_t)Cg * c.HW, part = (size_t)c.B * slab;
        float *din = tu_alloc(c.n), *dgamma = tu_alloc(c.C), *dbeta = tu_alloc(c.C);
        float *x = tu_alloc(part), *r = tu_alloc(part), *pdin = tu_alloc(part);
        float *mean = tu_alloc(c.B), *rstd = tu_alloc(c.B), *pdg = tu_alloc(Cg), *pdb = tu_alloc(Cg);
        gn_analytic(&c, din, dgamma, dbeta);
        for (int g = 0; g < c.G; g++) {
            for (int b = 0; b < c.B; b++) {
                const size_t from = ((size_t)b * c.C + (size_t)g * Cg) * c.HW;
                memcpy(x + b * slab, c.x + from, slab * sizeof(float));
                memcpy(r + b * slab, c.r + from, slab * sizeof(float));
                mean[b] = c.mean[b * c.G + g], rstd[b] = c.rstd[b * c.G + g];
            }
            memset(pdg, 0, Cg * sizeof(float));
            memset(pdb, 0, Cg * sizeof(float));
            ddpm_groupnorm_backward(pdin, 0.0f, pdg, pdb, r, x, mean, rstd, c.gamma + g * Cg, c.B, Cg, c.HW,
                                    1);
            for (int b = 0; b < c.B; b++)
                if (memcmp(pdin + b * slab, din + ((size_t)b * c.C + (size_t)g * Cg) * c.HW,
                           slab * sizeof(float)))
                    fail_msg("C %d: din of image %d, group %d differs from the group alone", c.C, b, g);
            if (memcmp(pdg, dgamma + g * Cg, Cg * sizeof(float)) ||
                memcmp(pdb, dbeta + g * Cg, Cg * sizeof(float)))
                fail_msg("C %d: dgamma or dbeta of group %d differs from the group alone", c.C, g);
        }
        free(din), free(dgamma), free(dbeta), free(x), free(r), free(pdin), free(mean), free(rstd), free(pdg),
            free(pdb);
        gn_free(&c);
    }
}

/* din = beta din + dL/din in float, element by element: with beta 0.75 the result
 * is exactly 0.75 * prefill + (what beta 0 writes), in the vector body and the
 * tail (HW = 35 = 4 x 8 + 3), on both routes. */
static void test_groupnorm_backward_beta_scales_din_exactly(void **state)
{
    (void)state;
    static const int sh[][4] = {{3, 8, 35, 4}, {2, 3000, 3, 3}};
    for (int s = 0; s < (int)(sizeof sh / sizeof sh[0]); s++) {
        gn_case c = gn_make(sh[s][0], sh[s][1], sh[s][2], sh[s][3], 1e-5f, 90 + s);
        float *din0 = tu_alloc(c.n), *din = tu_alloc(c.n), *dg = tu_alloc(c.C), *db = tu_alloc(c.C);
        gn_loss(&c);
        ddpm_groupnorm_backward(din0, 0.0f, dg, db, c.r, c.x, c.mean, c.rstd, c.gamma, c.B, c.C, c.HW, c.G);
        for (size_t i = 0; i < c.n; i++)
            din[i] = 0.375f - (float)(i % 7);
        ddpm_groupnorm_backward(din, 0.75f, NULL, NULL, c.r, c.x, c.mean, c.rstd, c.gamma, c.B, c.C, c.HW,
                                c.G);
        for (size_t i = 0; i < c.n; i++) {
            const float want = 0.75f * (0.375f - (float)(i % 7)) + din0[i];
            if (din[i] != want)
                fail_msg("C %d: din[%zu] = %.9g, want %.9g", c.C, i, (double)din[i], (double)want);
        }
        free(din0), free(din), free(dg), free(db);
        gn_free(&c);
    }
}

/* beta = 0 overwrites din with exactly what _backward adds to zeros, and
 * still accumulates dgamma and dbeta. */
static void test_groupnorm_backward_beta0_overwrites_din_and_accumulates_parameters(void **state)
{
    (void)state;
    gn_case c = gn_make(3, 8, 27, 4, 1e-5f, 41);
    float *din = tu_alloc(c.n), *dgamma = tu_alloc(c.C), *dbeta = tu_alloc(c.C);
    float *din2 = tu_alloc(c.n), *dgamma2 = tu_alloc(c.C), *dbeta2 = tu_alloc(c.C);
    gn_analytic(&c, din, dgamma, dbeta);
    for (size_t i = 0; i < c.n; i++)
        din2[i] = NAN;
    for (int i = 0; i < c.C; i++)
        dgamma2[i] = 1.5f + i, dbeta2[i] = -2.25f + i;
    ddpm_groupnorm_backward(din2, 0.0f, dgamma2, dbeta2, c.r, c.x, c.mean, c.rstd, c.gamma, c.B, c.C, c.HW,
                            c.G);
    for (size_t i = 0; i < c.n; i++)
        if (din2[i] != din[i])
            fail_msg("din[%zu] = %g, want %g", i, (double)din2[i], (double)din[i]);
    for (int i = 0; i < c.C; i++) {
        assert_true(fabsf(dgamma2[i] - (1.5f + i + dgamma[i])) <= 1e-5f);
        assert_true(fabsf(dbeta2[i] - (-2.25f + i + dbeta[i])) <= 1e-5f);
    }
    free(din), free(dgamma), free(dbeta), free(din2), free(dgamma2), free(dbeta2);
    gn_free(&c);
}

/* The fused GroupNorm + SiLU gives exactly the bytes of ddpm_groupnorm_forward
 * then ddpm_silu_forward (out, the saved norm, mean, rstd), with and without the
 * norm output, at 1, 2 and 3 threads: odd HW, B > 1, one group, and the default
 * model's 14x14 attention-level shape (large enough to run in parallel). gamma
 * up to 3 sends SiLU's inputs to both tails of the sigmoid. Its backward is
 * ddpm_silu_backward then ddpm_groupnorm_backward, each tested above and in
 * test_ops_silu.c: equal forward bytes are what makes that composition exact. */
static void test_groupnorm_silu_forward_gives_the_bytes_of_groupnorm_then_silu(void **state)
{
    (void)state;
    const struct {
        int B, C, HW, G;
    } shapes[] = {{3, 6, 25, 3}, {2, 4, 7, 1}, {5, 64, 196, 8}};
    const int saved = omp_get_max_threads();
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        gn_case c = gn_make(shapes[k].B, shapes[k].C, shapes[k].HW, shapes[k].G, 1e-5f, 70 + k);
        fill_grid(c.gamma, c.C, 80 + k, -3.0f, 3.0f);
        c.gamma[0] = 3.0f, c.gamma[c.C - 1] = -3.0f;
        const size_t ng = (size_t)c.B * c.G;
        float *ref = tu_alloc(c.n), *norm = tu_alloc(c.n), *out = tu_alloc(c.n);
        float *mean = tu_alloc(ng), *rstd = tu_alloc(ng);
        ddpm_groupnorm_forward(c.out, c.mean, c.rstd, c.x, c.gamma, c.beta, c.B, c.C, c.HW, c.G, c.eps);
        ddpm_silu_forward(ref, c.out, c.n);
        for (int t = 1; t <= 3; t++) {
            omp_set_num_threads(t);
            memset(norm, 0, c.n * sizeof(float));
            ddpm_groupnorm_silu_forward(out, norm, mean, rstd, c.x, c.gamma, c.beta, c.B, c.C, c.HW, c.G,
                                        c.eps);
            assert_memory_equal(out, ref, c.n * sizeof(float));
            assert_memory_equal(norm, c.out, c.n * sizeof(float));
            assert_memory_equal(mean, c.mean, ng * sizeof(float));
            assert_memory_equal(rstd, c.rstd, ng * sizeof(float));
            memset(out, 0, c.n * sizeof(float));
            ddpm_groupnorm_silu_forward(out, NULL, mean, rstd, c.x, c.gamma, c.beta, c.B, c.C, c.HW, c.G,
                                        c.eps);
            assert_memory_equal(out, ref, c.n * sizeof(float));
        }
        omp_set_num_threads(saved);
        /* the GroupNorm outputs reach both sides of the sigmoid, beyond +-2 */
        float lo = 0.0f, hi = 0.0f;
        for (size_t i = 0; i < c.n; i++)
            lo = c.out[i] < lo ? c.out[i] : lo, hi = c.out[i] > hi ? c.out[i] : hi;
        if (!(lo < -2.0f && hi > 2.0f))
            fail_msg("shape %zu: GroupNorm outputs in [%g, %g]", k, (double)lo, (double)hi);
        free(ref), free(norm), free(out), free(mean), free(rstd);
        gn_free(&c);
    }
}

/* The library's sigmoid, one element per call: scalar instructions in any build. */
__attribute__((noinline)) static float silu_scalar(float x)
{
    return x * sigmoid_stable(x);
}

/* The fused loop's SiLU, vectorised (AVX-512 masks or AVX2 blends), gives the
 * bytes of the scalar SiLU of the GroupNorm output it writes beside it, at odd
 * HW, B > 1, one group and the 14x14 x 64 shape, inputs reaching both tails. */
static void test_groupnorm_silu_forward_gives_the_bytes_of_the_scalar_silu(void **state)
{
    (void)state;
    const struct {
        int B, C, HW, G;
    } shapes[] = {{3, 6, 25, 3}, {2, 4, 7, 1}, {5, 64, 196, 8}, {2, 32, 784, 8}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        gn_case c = gn_make(shapes[k].B, shapes[k].C, shapes[k].HW, shapes[k].G, 1e-5f, 90 + k);
        fill_grid(c.gamma, c.C, 95 + k, -40.0f, 40.0f);
        float *norm = tu_alloc(c.n);
        ddpm_groupnorm_silu_forward(c.out, norm, c.mean, c.rstd, c.x, c.gamma, c.beta, c.B, c.C, c.HW, c.G,
                                    c.eps);
        size_t bad = 0, tails = 0;
        for (size_t i = 0; i < c.n; i++) {
            const float want = silu_scalar(norm[i]);
            if (memcmp(&want, &c.out[i], sizeof want) != 0 && bad++ < 5)
                fprintf(stderr, "shape %zu: silu(%a) = %a, scalar %a\n", k, (double)norm[i], (double)c.out[i],
                        (double)want);
            tails += fabsf(norm[i]) > 20.0f;
        }
        if (bad)
            fail_msg("shape %zu: %zu of %zu elements differ from the scalar SiLU", k, bad, c.n);
        assert_true(tails > 0);
        free(norm);
        gn_free(&c);
    }
}

/* ---- AdaGN: y = GN(x) (1 + scale) + shift, scale and shift per image and channel */

typedef struct {
    gn_case g;
    float *ss;              /* [B, 2C]: scale, then shift */
    float *affine, *norm;   /* the op's per-image affine and y (SiLU's input) */
    double *ref_y;
} ss_case;

static ss_case ss_make(int B, int C, int HW, int G, uint64_t seed)
{
    ss_case c = {.g = gn_make(B, C, HW, G, 1e-5f, seed)};
    c.ss = tu_alloc((size_t)B * 2 * C);
    c.affine = tu_alloc((size_t)B * 2 * C);
    c.norm = tu_alloc(c.g.n);
    c.ref_y = calloc(c.g.n, sizeof(double));
    assert_non_null(c.ref_y);
    fill_grid(c.ss, (size_t)B * 2 * C, seed + 5, -0.75f, 0.75f);
    return c;
}

static void ss_free(ss_case *c)
{
    free(c->ss), free(c->affine), free(c->norm), free(c->ref_y);
    gn_free(&c->g);
}

/* The naive definition in double: ((x - m) rstd gamma + beta) (1 + scale) + shift. */
static void ss_reference(ss_case *c)
{
    gn_case *g = &c->g;
    gn_reference(g);
    for (int b = 0; b < g->B; b++)
        for (int ch = 0; ch < g->C; ch++) {
            const double s1 = 1.0 + c->ss[(size_t)b * 2 * g->C + ch], sh = c->ss[(size_t)b * 2 * g->C + g->C + ch];
            for (int i = 0; i < g->HW; i++) {
                size_t k = ((size_t)b * g->C + ch) * g->HW + i;
                c->ref_y[k] = g->ref_out[k] * s1 + sh;
            }
        }
}

static double ss_loss(void *ctx)
{
    ss_case *c = ctx;
    gn_case *g = &c->g;
    ddpm_groupnorm_silu_scale_shift_forward(g->out, c->norm, g->mean, g->rstd, c->affine, g->x, g->gamma, g->beta,
                                            c->ss, g->B, g->C, g->HW, g->G, g->eps);
    double L = 0;
    for (size_t i = 0; i < g->n; i++)
        L += (double)g->r[i] * c->norm[i];
    return L;
}

static double ss_loss_reference(void *ctx)
{
    ss_case *c = ctx;
    ss_reference(c);
    double L = 0;
    for (size_t i = 0; i < c->g.n; i++)
        L += (double)c->g.r[i] * c->ref_y[i];
    return L;
}

static const int ss_shapes[][4] = {
    /* B, C, HW, G: odd 5 x 7 and 3 x 3, B > 1, one group, one channel per group */
    {3, 6, 35, 3},
    {2, 10, 9, 5},
    {2, 4, 35, 1},
    {3, 6, 35, 6},
};
enum { N_SS_SHAPES = sizeof ss_shapes / sizeof ss_shapes[0] };

/* Forward: y and SiLU(y) against the double definition. y is O(5) here; folding
 * the scale into gamma rounds gamma (1 + scale) and beta (1 + scale) + shift to
 * float once more than GN then the affine would (2 ulp of y, ~1e-6), so 2e-6 + 1e-6
 * relative; a missing (1 + scale), scale and shift swapped, or another image's
 * row move y by O(0.1..1). Zero scale and shift give the plain kernel's bytes. */
static void test_groupnorm_scale_shift_forward_matches_double_reference(void **state)
{
    (void)state;
    for (int s = 0; s < N_SS_SHAPES; s++) {
        ss_case c = ss_make(ss_shapes[s][0], ss_shapes[s][1], ss_shapes[s][2], ss_shapes[s][3], 300 + s);
        gn_case *g = &c.g;
        ss_loss(&c);
        ss_reference(&c);
        double worst = 0, worst_silu = 0;
        for (size_t i = 0; i < g->n; i++) {
            const double y = c.ref_y[i];
            worst = fmax(worst, fabs(c.norm[i] - y) / (2e-6 + 1e-6 * fabs(y)));
            worst_silu = fmax(worst_silu, fabs(g->out[i] - y / (1.0 + exp(-y))) / (2e-6 + 1e-6 * fabs(y)));
        }
        if (worst > 1 || worst_silu > 1)
            fail_msg("shape %d: |y - ref| %g, |SiLU(y) - ref| %g of the tolerance", s, worst, worst_silu);
        for (int k = 0; k < g->B * g->G; k++)
            assert_true(fabs(g->rstd[k] - g->ref_rstd[k]) <= 1e-6 * g->ref_rstd[k]);
        /* zero scale and shift: exactly ddpm_groupnorm_silu_forward */
        const size_t nss = (size_t)g->B * 2 * g->C;
        memset(c.ss, 0, nss * sizeof(float));
        ss_loss(&c);
        float *plain = tu_alloc(g->n), *plain_norm = tu_alloc(g->n);
        ddpm_groupnorm_silu_forward(plain, plain_norm, g->mean, g->rstd, g->x, g->gamma, g->beta, g->B, g->C, g->HW,
                                    g->G, g->eps);
        assert_memory_equal(plain, g->out, g->n * sizeof(float));
        assert_memory_equal(plain_norm, c.norm, g->n * sizeof(float));
        free(plain), free(plain_norm);
        ss_free(&c);
    }
}

/* Backward against central differences of the float op and of the double
 * definition, for x, gamma, beta, scale and shift: the tolerances and their
 * reasons are those of check_groupnorm_gradients, (1) and (2), with y up to
 * 1.75x GroupNorm's output (so (2)'s 2e-6 + 2e-5 is kept at 4e-6 + 4e-5). Then
 * accumulation: din_beta 1 adds to din, the parameter and scale-shift gradients
 * add to what they held. */
static void test_groupnorm_scale_shift_backward_matches_finite_differences(void **state)
{
    (void)state;
    for (int s = 0; s < N_SS_SHAPES; s++) {
        ss_case c = ss_make(ss_shapes[s][0], ss_shapes[s][1], ss_shapes[s][2], ss_shapes[s][3], 400 + s);
        gn_case *g = &c.g;
        const size_t nss = (size_t)g->B * 2 * g->C;
        float *din = tu_alloc(g->n), *dgamma = tu_alloc(g->C), *dbeta = tu_alloc(g->C), *dss = tu_alloc(nss);
        float *d_affine = tu_alloc(nss);
        ss_loss(&c);
        ddpm_groupnorm_scale_shift_backward(din, 0.0f, dgamma, dbeta, dss, d_affine, g->r, g->x, g->mean, g->rstd,
                                            c.affine, g->gamma, g->beta, c.ss, g->B, g->C, g->HW, g->G);
        int bad = 0;
        bad += tu_check_grad("adagn din (float fd)", g->x, din, g->n, ss_loss, &c, FD_H, 1e-3, 1e-2);
        bad += tu_check_grad("adagn dgamma (float fd)", g->gamma, dgamma, g->C, ss_loss, &c, FD_H, 1e-3, 1e-2);
        bad += tu_check_grad("adagn dbeta (float fd)", g->beta, dbeta, g->C, ss_loss, &c, FD_H, 1e-3, 1e-2);
        bad += tu_check_grad("adagn dscale_shift (float fd)", c.ss, dss, nss, ss_loss, &c, FD_H, 1e-3, 1e-2);
        bad += tu_check_grad("adagn din (double fd)", g->x, din, g->n, ss_loss_reference, &c, FD_H, 4e-6, 4e-5);
        bad += tu_check_grad("adagn dgamma (double fd)", g->gamma, dgamma, g->C, ss_loss_reference, &c, FD_H, 4e-6,
                             4e-5);
        bad += tu_check_grad("adagn dbeta (double fd)", g->beta, dbeta, g->C, ss_loss_reference, &c, FD_H, 4e-6,
                             4e-5);
        bad += tu_check_grad("adagn dscale_shift (double fd)", c.ss, dss, nss, ss_loss_reference, &c, FD_H, 4e-6,
                             4e-5);
        if (bad)
            fprintf(stderr, "shape B %d C %d HW %d G %d\n", g->B, g->C, g->HW, g->G);
        assert_int_equal(bad, 0);

        /* accumulation into prefilled gradients */
        float *din2 = tu_alloc(g->n), *dgamma2 = tu_alloc(g->C), *dbeta2 = tu_alloc(g->C), *dss2 = tu_alloc(nss);
        for (size_t i = 0; i < g->n; i++)
            din2[i] = 0.5f;
        for (int i = 0; i < g->C; i++)
            dgamma2[i] = 1.5f, dbeta2[i] = -2.0f;
        for (size_t i = 0; i < nss; i++)
            dss2[i] = 0.25f;
        ss_loss(&c);
        ddpm_groupnorm_scale_shift_backward(din2, 1.0f, dgamma2, dbeta2, dss2, d_affine, g->r, g->x, g->mean,
                                            g->rstd, c.affine, g->gamma, g->beta, c.ss, g->B, g->C, g->HW, g->G);
        for (size_t i = 0; i < g->n; i++)
            assert_true(fabsf(din2[i] - (0.5f + din[i])) <= 1e-6f * (1.0f + fabsf(din[i])));
        for (int i = 0; i < g->C; i++) {
            assert_true(fabsf(dgamma2[i] - (1.5f + dgamma[i])) <= 1e-5f * (1.0f + fabsf(dgamma[i])));
            assert_true(fabsf(dbeta2[i] - (-2.0f + dbeta[i])) <= 1e-5f * (1.0f + fabsf(dbeta[i])));
        }
        for (size_t i = 0; i < nss; i++)
            assert_true(fabsf(dss2[i] - (0.25f + dss[i])) <= 1e-5f * (1.0f + fabsf(dss[i])));
        free(din2), free(dgamma2), free(dbeta2), free(dss2);
        free(din), free(dgamma), free(dbeta), free(dss), free(d_affine);
        ss_free(&c);
    }
}

/* The AdaGN forward and backward give the same bytes at 1 and 2 threads, at a
 * size where GroupNorm's loops run in parallel (the default model's 28x28 level). */
static void test_groupnorm_scale_shift_is_identical_for_one_and_two_threads(void **state)
{
    (void)state;
    ss_case c = ss_make(3, 32, 784, 8, 500);
    gn_case *g = &c.g;
    const size_t nss = (size_t)g->B * 2 * g->C;
    float *out[2], *din[2], *dg[2], *db[2], *dss[2], *d_affine = tu_alloc(nss);
    const int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        out[k] = tu_alloc(g->n), din[k] = tu_alloc(g->n), dg[k] = tu_alloc(g->C), db[k] = tu_alloc(g->C);
        dss[k] = tu_alloc(nss);
        ss_loss(&c);
        memcpy(out[k], g->out, g->n * sizeof(float));
        ddpm_groupnorm_scale_shift_backward(din[k], 0.0f, dg[k], db[k], dss[k], d_affine, g->r, g->x, g->mean,
                                            g->rstd, c.affine, g->gamma, g->beta, c.ss, g->B, g->C, g->HW, g->G);
    }
    omp_set_num_threads(saved);
    assert_memory_equal(out[0], out[1], g->n * sizeof(float));
    assert_memory_equal(din[0], din[1], g->n * sizeof(float));
    assert_memory_equal(dg[0], dg[1], g->C * sizeof(float));
    assert_memory_equal(db[0], db[1], g->C * sizeof(float));
    assert_memory_equal(dss[0], dss[1], nss * sizeof(float));
    for (int k = 0; k < 2; k++)
        free(out[k]), free(din[k]), free(dg[k]), free(db[k]), free(dss[k]);
    free(d_affine);
    ss_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groupnorm_forward_matches_double_reference),
        cmocka_unit_test(test_groupnorm_normalizes_each_group_to_mean_zero_unit_variance),
        cmocka_unit_test(test_groupnorm_backward_matches_finite_differences),
        cmocka_unit_test(test_groupnorm_backward_matches_finite_differences_large_eps),
        cmocka_unit_test(test_groupnorm_backward_accumulates_and_skips_null),
        cmocka_unit_test(test_groupnorm_is_identical_for_one_two_and_three_threads),
        cmocka_unit_test(test_groupnorm_backward_matches_double_formulas_on_every_route),
        cmocka_unit_test(test_groupnorm_backward_gives_each_groups_bytes_alone),
        cmocka_unit_test(test_groupnorm_backward_beta_scales_din_exactly),
        cmocka_unit_test(test_groupnorm_backward_beta0_overwrites_din_and_accumulates_parameters),
        cmocka_unit_test(test_groupnorm_silu_forward_gives_the_bytes_of_groupnorm_then_silu),
        cmocka_unit_test(test_groupnorm_silu_forward_gives_the_bytes_of_the_scalar_silu),
        cmocka_unit_test(test_groupnorm_scale_shift_forward_matches_double_reference),
        cmocka_unit_test(test_groupnorm_scale_shift_backward_matches_finite_differences),
        cmocka_unit_test(test_groupnorm_scale_shift_is_identical_for_one_and_two_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
