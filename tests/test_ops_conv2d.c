/* test_ops_conv2d.c: conv2d forward against direct convolution loops in double,
 * backward against central finite differences, gradient accumulation, NULL
 * gradients, and the scratch size. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ddpm/ops.h"
#include "testutil.h"

/* Forward (full-precision random data in [-1, 1]): each output is a sum of
 * Cin*K*K <= 45 products plus a bias, accumulated in float by sgemm; its rounding
 * error is a few float ulps of the sum of |terms| (measured worst 7e-7 at |out| =
 * 2.9), so 1e-5 + 1e-5*|ref| has a 50x margin, while one misplaced or missing tap
 * changes an output by ~0.1-1. */
#define FWD_ATOL 1e-5
#define FWD_RTOL 1e-5

/* Backward: central differences of L = sum r*out with out from the double
 * reference below. L is affine in every single input, weight and bias element, and
 * the backward tests put all data on a 2^-10 grid in [-1, 1], so x +- 2^-4 is exact
 * in float: the central difference is the exact derivative up to double rounding
 * (~1e-14). What remains is the float rounding of the analytic gradient, sums of at
 * most ~110 products of values in [-1, 1], a few ulps of ~10 at worst (on grid data
 * most of these sums are even exact: the measured error is 0). 1e-5 + 1e-5*|g| is
 * 4 orders below what a wrong index does (one whole term, ~0.1-1). */
#define FD_H 0.0625f
#define GRAD_ATOL 1e-5
#define GRAD_RTOL 1e-5

#define CANARY 16 /* floats after the scratch, checked to be untouched */

typedef struct {
    int B, Cin, H, W, Cout, K, S, P;
} conv_shape;

typedef struct {
    conv_shape s;
    int Ho, Wo;
    size_t n_in, n_weight, n_out, n_scratch;
    float *in, *weight, *bias, *r, *out, *scratch;
    float *din, *dweight, *dbias;
    double *ref;
} conv_case;

static int out_size(int n, int K, int S, int P)
{
    return (n + 2 * P - K) / S + 1;
}

/* Values uniform in [-1, 1] rounded to multiples of 2^-10, so that x +- 2^-4 is
 * exact in float and a finite-difference step is exactly what it says. */
static void fill_grid(float *x, size_t n, uint64_t seed)
{
    tu_fill_uniform(x, n, seed, -1.0f, 1.0f);
    for (size_t i = 0; i < n; i++)
        x[i] = roundf(x[i] * 1024.0f) / 1024.0f;
}

/* Values uniform in [-1, 1] at full float precision. */
static void fill_full(float *x, size_t n, uint64_t seed)
{
    tu_fill_uniform(x, n, seed, -1.0f, 1.0f);
}

static void fill_nan(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}

static void case_init(conv_case *c, conv_shape s, uint64_t seed, int on_grid)
{
    memset(c, 0, sizeof(*c));
    c->s = s;
    c->Ho = out_size(s.H, s.K, s.S, s.P);
    c->Wo = out_size(s.W, s.K, s.S, s.P);
    c->n_in = (size_t)s.B * s.Cin * s.H * s.W;
    c->n_weight = (size_t)s.Cout * s.Cin * s.K * s.K;
    c->n_out = (size_t)s.B * s.Cout * c->Ho * c->Wo;
    c->n_scratch = ddpm_conv2d_scratch_floats(s.B, s.Cin, s.H, s.W, s.Cout, s.K, s.S, s.P);
    c->in = tu_alloc(c->n_in);
    c->weight = tu_alloc(c->n_weight);
    c->bias = tu_alloc((size_t)s.Cout);
    c->r = tu_alloc(c->n_out);
    c->out = tu_alloc(c->n_out);
    c->scratch = tu_alloc(c->n_scratch + CANARY);
    c->din = tu_alloc(c->n_in);
    c->dweight = tu_alloc(c->n_weight);
    c->dbias = tu_alloc((size_t)s.Cout);
    c->ref = calloc(c->n_out, sizeof(double));
    assert_non_null(c->ref);
    void (*fill)(float *, size_t, uint64_t) = on_grid ? fill_grid : fill_full;
    fill(c->in, c->n_in, seed);
    fill(c->weight, c->n_weight, seed + 1);
    fill(c->bias, (size_t)s.Cout, seed + 2);
    fill(c->r, c->n_out, seed + 3);
    /* garbage in the scratch: the op must not rely on its contents */
    fill_nan(c->scratch, c->n_scratch + CANARY);
}

static void case_free(conv_case *c)
{
    free(c->in);
    free(c->weight);
    free(c->bias);
    free(c->r);
    free(c->out);
    free(c->scratch);
    free(c->din);
    free(c->dweight);
    free(c->dbias);
    free(c->ref);
}

static void assert_canary_intact(const conv_case *c)
{
    for (int i = 0; i < CANARY; i++)
        if (!isnan(c->scratch[c->n_scratch + i]))
            fail_msg("scratch overrun: float %d past ddpm_conv2d_scratch_floats was written", i);
}

/* Direct convolution in double: out[b,co,oh,ow] = bias[co] +
 * sum_{ci,kh,kw} w[co,ci,kh,kw] in[b,ci,oh*S-P+kh,ow*S-P+kw]. */
static void conv_reference(double *out, const float *in, const float *weight, const float *bias,
                           const conv_shape *s)
{
    const int Ho = out_size(s->H, s->K, s->S, s->P), Wo = out_size(s->W, s->K, s->S, s->P);
    for (int b = 0; b < s->B; b++)
        for (int co = 0; co < s->Cout; co++)
            for (int oh = 0; oh < Ho; oh++)
                for (int ow = 0; ow < Wo; ow++) {
                    double acc = bias ? bias[co] : 0.0;
                    for (int ci = 0; ci < s->Cin; ci++)
                        for (int kh = 0; kh < s->K; kh++)
                            for (int kw = 0; kw < s->K; kw++) {
                                const int ih = oh * s->S - s->P + kh;
                                const int iw = ow * s->S - s->P + kw;
                                if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W)
                                    continue;
                                acc += (double)weight[((co * s->Cin + ci) * s->K + kh) * s->K + kw] *
                                       in[((b * s->Cin + ci) * s->H + ih) * s->W + iw];
                            }
                    out[((b * s->Cout + co) * Ho + oh) * Wo + ow] = acc;
                }
}

/* L = sum r * out, out from the double reference. */
static double loss_reference(void *ctx)
{
    conv_case *c = ctx;
    conv_reference(c->ref, c->in, c->weight, c->bias, &c->s);
    double L = 0.0;
    for (size_t i = 0; i < c->n_out; i++)
        L += (double)c->r[i] * c->ref[i];
    return L;
}

static void backward(conv_case *c, float *din, float *dweight, float *dbias)
{
    const conv_shape *s = &c->s;
    /* dL/dout = r */
    ddpm_conv2d_backward(din, 1.0f, dweight, dbias, c->scratch, c->r, c->in, c->weight, s->B, s->Cin,
                         s->H, s->W, s->Cout, s->K, s->S, s->P);
}

static void check_forward(conv_shape s, uint64_t seed)
{
    conv_case c;
    case_init(&c, s, seed, 0);
    ddpm_conv2d_forward(c.out, c.scratch, c.in, c.weight, c.bias, s.B, s.Cin, s.H, s.W, s.Cout, s.K,
                        s.S, s.P);
    assert_canary_intact(&c);
    conv_reference(c.ref, c.in, c.weight, c.bias, &s);
    int n_bad = 0;
    size_t worst = 0;
    double worst_excess = -1e300;
    for (size_t i = 0; i < c.n_out; i++) {
        const double diff = fabs((double)c.out[i] - c.ref[i]);
        const double excess = diff - (FWD_ATOL + FWD_RTOL * fabs(c.ref[i]));
        if (!(excess <= 0))
            n_bad++;
        if (excess > worst_excess || isnan(excess)) {
            worst_excess = excess;
            worst = i;
        }
    }
    if (n_bad)
        fail_msg("conv forward B%d Cin%d %dx%d Cout%d K%d S%d P%d: %d of %zu outputs off; "
                 "worst at %zu: got %.8g want %.8g",
                 s.B, s.Cin, s.H, s.W, s.Cout, s.K, s.S, s.P, n_bad, c.n_out, worst,
                 (double)c.out[worst], c.ref[worst]);
    case_free(&c);
}

static void check_backward_fd(conv_shape s, uint64_t seed)
{
    conv_case c;
    case_init(&c, s, seed, 1);
    backward(&c, c.din, c.dweight, c.dbias);
    assert_canary_intact(&c);
    int n_bad = 0;
    n_bad += tu_check_grad("conv din", c.in, c.din, c.n_in, loss_reference, &c, FD_H, GRAD_ATOL,
                           GRAD_RTOL);
    n_bad += tu_check_grad("conv dweight", c.weight, c.dweight, c.n_weight, loss_reference, &c,
                           FD_H, GRAD_ATOL, GRAD_RTOL);
    n_bad += tu_check_grad("conv dbias", c.bias, c.dbias, (size_t)s.Cout, loss_reference, &c, FD_H,
                           GRAD_ATOL, GRAD_RTOL);
    if (n_bad)
        fail_msg("conv backward B%d Cin%d %dx%d Cout%d K%d S%d P%d: %d gradient elements off",
                 s.B, s.Cin, s.H, s.W, s.Cout, s.K, s.S, s.P, n_bad);
    case_free(&c);
}

static const conv_shape shape_3x3_s1 = {2, 3, 5, 7, 5, 3, 1, 1};
static const conv_shape shape_3x3_s2_odd = {2, 3, 7, 5, 6, 3, 2, 1};
static const conv_shape shape_3x3_s2_even = {3, 5, 6, 8, 3, 3, 2, 1};
static const conv_shape shape_1x1 = {3, 5, 5, 7, 6, 1, 1, 0};
/* the other legal (K, S, P) combinations, and images smaller than the kernel */
static const conv_shape shapes_other[] = {
    {2, 3, 5, 7, 4, 3, 1, 0}, {2, 3, 7, 7, 5, 3, 2, 0}, {3, 5, 5, 7, 3, 1, 2, 0},
    {2, 3, 5, 5, 6, 1, 1, 1}, {2, 6, 5, 6, 5, 1, 2, 1}, {2, 3, 1, 2, 5, 3, 2, 1},
    {3, 2, 2, 1, 3, 3, 1, 1},
};

static void test_conv2d_forward_matches_direct_convolution(void **state)
{
    (void)state;
    check_forward(shape_3x3_s1, 11);
    check_forward(shape_3x3_s2_odd, 12);
    check_forward(shape_3x3_s2_even, 13);
    check_forward(shape_1x1, 14);
    for (size_t i = 0; i < sizeof(shapes_other) / sizeof(shapes_other[0]); i++)
        check_forward(shapes_other[i], 20 + i);
}

static void test_conv2d_forward_without_bias_equals_zero_bias(void **state)
{
    (void)state;
    const conv_shape s = shape_3x3_s2_odd;
    conv_case c;
    case_init(&c, s, 31, 0);
    float *out_null = tu_alloc(c.n_out);
    memset(c.bias, 0, sizeof(float) * (size_t)s.Cout);
    ddpm_conv2d_forward(c.out, c.scratch, c.in, c.weight, c.bias, s.B, s.Cin, s.H, s.W, s.Cout, s.K,
                        s.S, s.P);
    ddpm_conv2d_forward(out_null, c.scratch, c.in, c.weight, NULL, s.B, s.Cin, s.H, s.W, s.Cout,
                        s.K, s.S, s.P);
    size_t at;
    const double d = tu_max_abs_diff(c.out, out_null, c.n_out, &at);
    if (d != 0.0)
        fail_msg("bias NULL differs from a zero bias by %g at %zu", d, at);
    free(out_null);
    case_free(&c);
}

static void test_conv2d_backward_matches_finite_differences_3x3_stride1(void **state)
{
    (void)state;
    check_backward_fd(shape_3x3_s1, 41);
}

static void test_conv2d_backward_matches_finite_differences_stride2(void **state)
{
    (void)state;
    check_backward_fd(shape_3x3_s2_odd, 42);
}

static void test_conv2d_backward_matches_finite_differences_stride2_even_size(void **state)
{
    (void)state;
    check_backward_fd(shape_3x3_s2_even, 43);
}

static void test_conv2d_backward_matches_finite_differences_1x1(void **state)
{
    (void)state;
    check_backward_fd(shape_1x1, 44);
}

static void test_conv2d_backward_matches_finite_differences_other_kernels(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(shapes_other) / sizeof(shapes_other[0]); i++)
        check_backward_fd(shapes_other[i], 50 + i);
}

/* result must equal prefill + gradient: sgemm with beta = 1, never a copy */
static void check_accumulates(conv_shape s, uint64_t seed)
{
    conv_case c;
    case_init(&c, s, seed, 1);
    backward(&c, c.din, c.dweight, c.dbias); /* from zero: the gradient itself */
    const float prefill = 0.375f;
    float *din = tu_alloc(c.n_in), *dweight = tu_alloc(c.n_weight);
    float *dbias = tu_alloc((size_t)s.Cout);
    for (size_t i = 0; i < c.n_in; i++)
        din[i] = prefill;
    for (size_t i = 0; i < c.n_weight; i++)
        dweight[i] = prefill;
    for (int i = 0; i < s.Cout; i++)
        dbias[i] = prefill;
    for (int times = 1; times <= 2; times++) {
        backward(&c, din, dweight, dbias);
        tu_expect_accumulated("din", din, c.din, c.n_in, prefill, times);
        tu_expect_accumulated("dweight", dweight, c.dweight, c.n_weight, prefill, times);
        tu_expect_accumulated("dbias", dbias, c.dbias, (size_t)s.Cout, prefill, times);
    }
    free(din);
    free(dweight);
    free(dbias);
    case_free(&c);
}

static void test_conv2d_backward_accumulates_into_gradients(void **state)
{
    (void)state;
    check_accumulates(shape_3x3_s1, 61);
    check_accumulates(shape_3x3_s2_odd, 62);
    check_accumulates(shape_1x1, 63);
}

/* Each gradient alone (the others NULL) equals the one computed with all three. */
static void test_conv2d_backward_null_gradients_are_skipped(void **state)
{
    (void)state;
    const conv_shape shapes[] = {shape_3x3_s2_even, shape_1x1};
    for (int k = 0; k < 2; k++) {
        const conv_shape s = shapes[k];
        conv_case c;
        case_init(&c, s, 71 + k, 1);
        backward(&c, c.din, c.dweight, c.dbias);
        float *din = tu_alloc(c.n_in), *dweight = tu_alloc(c.n_weight);
        float *dbias = tu_alloc((size_t)s.Cout);
        backward(&c, din, NULL, NULL);
        backward(&c, NULL, dweight, NULL);
        backward(&c, NULL, NULL, dbias);
        backward(&c, NULL, NULL, NULL);
        assert_canary_intact(&c);
        size_t at;
        double d;
        if ((d = tu_max_abs_diff(din, c.din, c.n_in, &at)) > 1e-6)
            fail_msg("din alone differs by %g at %zu", d, at);
        if ((d = tu_max_abs_diff(dweight, c.dweight, c.n_weight, &at)) > 1e-6)
            fail_msg("dweight alone differs by %g at %zu", d, at);
        if ((d = tu_max_abs_diff(dbias, c.dbias, (size_t)s.Cout, &at)) > 1e-6)
            fail_msg("dbias alone differs by %g at %zu", d, at);
        free(din);
        free(dweight);
        free(dbias);
        case_free(&c);
    }
}

/* beta = 0 overwrites din (whatever it held) with exactly what _backward adds
 * to a zeroed din, and still accumulates dweight and dbias. */
static void test_conv2d_backward_beta0_overwrites_din_and_accumulates_parameters(void **state)
{
    (void)state;
    const conv_shape shapes[] = {shape_3x3_s1, shape_3x3_s2_odd, shape_1x1};
    for (int k = 0; k < 3; k++) {
        const conv_shape s = shapes[k];
        conv_case c;
        case_init(&c, s, 81 + k, 0);
        backward(&c, c.din, c.dweight, c.dbias); /* from zero */
        float *din = tu_alloc(c.n_in), *dweight = tu_alloc(c.n_weight), *dbias = tu_alloc((size_t)s.Cout);
        for (size_t i = 0; i < c.n_in; i++)
            din[i] = NAN; /* never read with beta = 0: a read would spread the NaN */
        ddpm_conv2d_backward(din, 0.0f, dweight, dbias, c.scratch, c.r, c.in, c.weight, s.B, s.Cin, s.H, s.W,
                                s.Cout, s.K, s.S, s.P);
        ddpm_conv2d_backward(din, 0.0f, dweight, dbias, c.scratch, c.r, c.in, c.weight, s.B, s.Cin, s.H, s.W,
                                s.Cout, s.K, s.S, s.P);
        assert_canary_intact(&c);
        for (size_t i = 0; i < c.n_in; i++)
            if (din[i] != c.din[i])
                fail_msg("shape %d: din[%zu] = %g, want %g (as beta = 1 into zeros)", k, i, (double)din[i],
                         (double)c.din[i]);
        /* twice from zero: 2g, up to one rounding of the float addition */
        for (size_t i = 0; i < c.n_weight; i++)
            assert_true(fabsf(dweight[i] - 2 * c.dweight[i]) <= 1e-6f * (1.0f + fabsf(c.dweight[i])));
        for (int i = 0; i < s.Cout; i++)
            assert_true(fabsf(dbias[i] - 2 * c.dbias[i]) <= 1e-6f * (1.0f + fabsf(c.dbias[i])));
        free(din);
        free(dweight);
        free(dbias);
        case_free(&c);
    }
}

/* ---- the default model's shapes: 28x28 and 14x14, B >= 9 ------------------------
 * At these sizes the op takes the paths that the small shapes above never reach:
 * one image per unit at 28x28 (HoWo >= 256), two or eight per unit with the NCHW
 * permute at 14x14 and 7x7, more units than the 8 lanes (a lane sums two units'
 * weight gradients), a last unit with fewer images. Finite differences are too slow
 * here, so the backward is checked against the direct backward in double. */

/* din, dweight, dbias of L = sum r * conv(in) by direct loops in double, and for
 * each the sum of |terms| (the scale of float rounding in any order of summation). */
static void conv_backward_reference(double *din, double *din_abs, double *dweight, double *dweight_abs,
                                    double *dbias, double *dbias_abs, const float *r, const float *in,
                                    const float *weight, const conv_shape *s)
{
    const int Ho = out_size(s->H, s->K, s->S, s->P), Wo = out_size(s->W, s->K, s->S, s->P);
    for (int b = 0; b < s->B; b++)
        for (int co = 0; co < s->Cout; co++)
            for (int oh = 0; oh < Ho; oh++)
                for (int ow = 0; ow < Wo; ow++) {
                    const double g = r[((b * s->Cout + co) * Ho + oh) * Wo + ow];
                    dbias[co] += g;
                    dbias_abs[co] += fabs(g);
                    for (int ci = 0; ci < s->Cin; ci++)
                        for (int kh = 0; kh < s->K; kh++)
                            for (int kw = 0; kw < s->K; kw++) {
                                const int ih = oh * s->S - s->P + kh, iw = ow * s->S - s->P + kw;
                                if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W)
                                    continue;
                                const size_t wi = (size_t)((co * s->Cin + ci) * s->K + kh) * s->K + kw;
                                const size_t xi = (size_t)((b * s->Cin + ci) * s->H + ih) * s->W + iw;
                                dweight[wi] += g * in[xi];
                                dweight_abs[wi] += fabs(g * in[xi]);
                                din[xi] += g * weight[wi];
                                din_abs[xi] += fabs(g * weight[wi]);
                            }
                }
}

/* got - start against want: |err| <= 1e-6 + 2e-5 * sum|terms|. A float sum of n terms in
 * any order is within n * 2^-24 * sum|terms| (7056 terms: 4.2e-4) and in practice
 * within a few sqrt(n) ulps (measured below 4e-7 * sum|terms|); one term too many or
 * too few moves it by about sum|terms| / n, at least 50 times the bound. */
static int count_off(const char *name, const float *got, const float *start, const double *want,
                     const double *abs_terms, size_t n)
{
    int n_bad = 0;
    for (size_t i = 0; i < n; i++) {
        const double g = (double)got[i] - (start ? (double)start[i] : 0.0);
        const double tol = 1e-6 + 2e-5 * abs_terms[i];
        if (!(fabs(g - want[i]) <= tol)) {
            if (n_bad < 5)
                fprintf(stderr, "%s[%zu]: got %.9g want %.9g (tolerance %.3g)\n", name, i, g, want[i], tol);
            n_bad++;
        }
    }
    return n_bad;
}

static void check_large(conv_shape s, uint64_t seed)
{
    check_forward(s, seed);
    conv_case c;
    case_init(&c, s, seed, 0);
    double *din = calloc(c.n_in, sizeof(double)), *din_abs = calloc(c.n_in, sizeof(double));
    double *dw = calloc(c.n_weight, sizeof(double)), *dw_abs = calloc(c.n_weight, sizeof(double));
    double *db = calloc((size_t)s.Cout, sizeof(double)), *db_abs = calloc((size_t)s.Cout, sizeof(double));
    assert_true(din && din_abs && dw && dw_abs && db && db_abs);
    conv_backward_reference(din, din_abs, dw, dw_abs, db, db_abs, c.r, c.in, c.weight, &s);
    /* accumulate onto nonzero gradients (beta = 1), and overwrite NaN (beta = 0) */
    float *din0 = tu_alloc(c.n_in), *dw0 = tu_alloc(c.n_weight), *db0 = tu_alloc((size_t)s.Cout);
    fill_full(din0, c.n_in, seed + 7);
    fill_full(dw0, c.n_weight, seed + 8);
    fill_full(db0, (size_t)s.Cout, seed + 9);
    memcpy(c.din, din0, c.n_in * sizeof(float));
    memcpy(c.dweight, dw0, c.n_weight * sizeof(float));
    memcpy(c.dbias, db0, (size_t)s.Cout * sizeof(float));
    backward(&c, c.din, c.dweight, c.dbias);
    assert_canary_intact(&c);
    int n_bad = count_off("din", c.din, din0, din, din_abs, c.n_in);
    n_bad += count_off("dweight", c.dweight, dw0, dw, dw_abs, c.n_weight);
    n_bad += count_off("dbias", c.dbias, db0, db, db_abs, (size_t)s.Cout);
    fill_nan(c.din, c.n_in);
    ddpm_conv2d_backward(c.din, 0.0f, NULL, NULL, c.scratch, c.r, c.in, c.weight, s.B, s.Cin, s.H, s.W, s.Cout,
                         s.K, s.S, s.P);
    n_bad += count_off("din (beta 0)", c.din, NULL, din, din_abs, c.n_in);
    if (n_bad)
        fail_msg("conv backward B%d Cin%d %dx%d Cout%d K%d S%d P%d: %d gradient elements off the direct backward",
                 s.B, s.Cin, s.H, s.W, s.Cout, s.K, s.S, s.P, n_bad);
    free(din), free(din_abs), free(dw), free(dw_abs), free(db), free(db_abs);
    free(din0), free(dw0), free(db0);
    case_free(&c);
}

static void test_conv2d_28x28_batch9_matches_direct_convolution_stride1(void **state)
{
    (void)state;
    check_large((conv_shape){9, 4, 28, 28, 5, 3, 1, 1}, 101); /* 9 units of one image over 8 lanes */
}

static void test_conv2d_28x28_batch9_matches_direct_convolution_stride2(void **state)
{
    (void)state;
    check_large((conv_shape){9, 4, 28, 28, 6, 3, 2, 1}, 111); /* 14x14 out: 2 images a unit, a short last */
}

static void test_conv2d_14x14_batch11_matches_direct_convolution_stride1_and_1x1(void **state)
{
    (void)state;
    check_large((conv_shape){11, 6, 14, 14, 7, 3, 1, 1}, 121);
    check_large((conv_shape){11, 6, 14, 14, 5, 1, 1, 0}, 122); /* the skip and attention 1x1s */
}

static void test_conv2d_14x14_batch11_matches_direct_convolution_stride2(void **state)
{
    (void)state;
    check_large((conv_shape){11, 6, 14, 14, 7, 3, 2, 1}, 131); /* 7x7 out: 8 images a unit */
}

/* Forward and backward give the same bytes at 1 and 2 threads (README: results do not
 * depend on the thread count). */
static void test_conv2d_same_bytes_at_one_and_two_threads(void **state)
{
    (void)state;
    const conv_shape shapes[] = {{9, 4, 28, 28, 5, 3, 1, 1}, {11, 6, 14, 14, 7, 3, 2, 1}, {11, 6, 14, 14, 5, 1, 1, 0}};
    for (int k = 0; k < 3; k++) {
        const conv_shape s = shapes[k];
        conv_case c;
        case_init(&c, s, 141 + k, 0);
        float *out[2], *din[2], *dw[2], *db[2];
        for (int t = 0; t < 2; t++) {
            omp_set_num_threads(t + 1);
            out[t] = tu_alloc(c.n_out), din[t] = tu_alloc(c.n_in);
            dw[t] = tu_alloc(c.n_weight), db[t] = tu_alloc((size_t)s.Cout);
            ddpm_conv2d_forward(out[t], c.scratch, c.in, c.weight, c.bias, s.B, s.Cin, s.H, s.W, s.Cout, s.K, s.S,
                                s.P);
            backward(&c, din[t], dw[t], db[t]);
        }
        assert_memory_equal(out[0], out[1], c.n_out * sizeof(float));
        assert_memory_equal(din[0], din[1], c.n_in * sizeof(float));
        assert_memory_equal(dw[0], dw[1], c.n_weight * sizeof(float));
        assert_memory_equal(db[0], db[1], (size_t)s.Cout * sizeof(float));
        for (int t = 0; t < 2; t++)
            free(out[t]), free(din[t]), free(dw[t]), free(db[t]);
        case_free(&c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv2d_forward_matches_direct_convolution),
        cmocka_unit_test(test_conv2d_forward_without_bias_equals_zero_bias),
        cmocka_unit_test(test_conv2d_backward_matches_finite_differences_3x3_stride1),
        cmocka_unit_test(test_conv2d_backward_matches_finite_differences_stride2),
        cmocka_unit_test(test_conv2d_backward_matches_finite_differences_stride2_even_size),
        cmocka_unit_test(test_conv2d_backward_matches_finite_differences_1x1),
        cmocka_unit_test(test_conv2d_backward_matches_finite_differences_other_kernels),
        cmocka_unit_test(test_conv2d_backward_accumulates_into_gradients),
        cmocka_unit_test(test_conv2d_backward_null_gradients_are_skipped),
        cmocka_unit_test(test_conv2d_backward_beta0_overwrites_din_and_accumulates_parameters),
        cmocka_unit_test(test_conv2d_28x28_batch9_matches_direct_convolution_stride1),
        cmocka_unit_test(test_conv2d_28x28_batch9_matches_direct_convolution_stride2),
        cmocka_unit_test(test_conv2d_14x14_batch11_matches_direct_convolution_stride1_and_1x1),
        cmocka_unit_test(test_conv2d_14x14_batch11_matches_direct_convolution_stride2),
        cmocka_unit_test(test_conv2d_same_bytes_at_one_and_two_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
