/* test_ops_attention.c: the attention core's forward against naive attention in
 * double, softmax stability, backward against central finite differences,
 * gradient accumulation, NULL gradients and the scratch size. */
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ddpm/ops.h"
#include "ddpm/platform.h"
#include "testutil.h"

#include "../src/ops/sigmoid.h"

/* Forward (full-precision q, k in [-2, 2], v in [-1, 1]): scores are float sums
 * of C <= 6 products (a few ulps of |S| <= ~10), the softmax is exact to a few
 * ulps, and h sums N weights times v. Measured worst |error| < 3e-7 on values <= ~2,
 * so 1e-5 + 1e-5*|ref| has a 30x margin, while a transposed score matrix or a
 * softmax over the wrong axis moves values by ~0.1. */
#define FWD_ATOL 1e-5
#define FWD_RTOL 1e-5

/* Backward: central differences of L = sum r*h with h from the double reference.
 * q, k, v lie on a 2^-10 grid and the step is 2^-10, so x +- h is exact in float;
 * the truncation error is h^2/6 |L'''| ~ 2e-7 |L'''| and the double rounding
 * ~1e-12. The analytic gradients are float sums over N <= 15 positions (error a few
 * ulps of values <= ~1). Measured worst |fd - analytic| < 3e-7; 5e-6 + 2e-5*|g|
 * leaves a 15x margin, and a wrong transpose or index shifts gradients by ~1e-2 - 1. */
#define FD_H 0x1p-10f
#define GRAD_ATOL 5e-6
#define GRAD_RTOL 2e-5

#define CANARY 16 /* floats after the scratch, checked to be untouched */

typedef struct {
    int B, C, N;
    size_t n_x, n_w;
    float *q, *k, *v, *h, *w, *r, *scratch;
    float *dq, *dk, *dv;
    double *ref_h, *ref_w;
} attn_case;

static void fill_full(float *x, size_t n, uint64_t seed, float amplitude)
{
    tu_fill_uniform(x, n, seed, -amplitude, amplitude);
}

/* uniform in [-amplitude, amplitude] rounded to multiples of 2^-10, so that
 * x +- 2^-10 is exact in float (amplitude <= 2) */
static void fill_grid(float *x, size_t n, uint64_t seed, float amplitude)
{
    fill_full(x, n, seed, amplitude);
    for (size_t i = 0; i < n; i++)
        x[i] = roundf(x[i] * 1024.0f) / 1024.0f;
}

static void case_init(attn_case *c, int B, int C, int N, uint64_t seed, int on_grid)
{
    memset(c, 0, sizeof(*c));
    c->B = B;
    c->C = C;
    c->N = N;
    c->n_x = (size_t)B * C * N;
    c->n_w = (size_t)B * N * N;
    c->q = tu_alloc(c->n_x);
    c->k = tu_alloc(c->n_x);
    c->v = tu_alloc(c->n_x);
    c->h = tu_alloc(c->n_x);
    c->r = tu_alloc(c->n_x);
    c->w = tu_alloc(c->n_w);
    c->dq = tu_alloc(c->n_x);
    c->dk = tu_alloc(c->n_x);
    c->dv = tu_alloc(c->n_x);
    c->scratch = tu_alloc(ddpm_attention_scratch_floats(N) + CANARY);
    c->ref_h = calloc(c->n_x, sizeof(double));
    c->ref_w = calloc(c->n_w, sizeof(double));
    assert_non_null(c->ref_h);
    assert_non_null(c->ref_w);
    void (*fill)(float *, size_t, uint64_t, float) = on_grid ? fill_grid : fill_full;
    /* q and k in [-2, 2] so that the softmax is far from uniform */
    fill(c->q, c->n_x, seed, 2.0f);
    fill(c->k, c->n_x, seed + 1, 2.0f);
    fill(c->v, c->n_x, seed + 2, 1.0f);
    fill(c->r, c->n_x, seed + 3, 1.0f);
    /* garbage in the scratch: backward must not rely on its contents */
    for (size_t i = 0; i < ddpm_attention_scratch_floats(N) + CANARY; i++)
        c->scratch[i] = NAN;
}

static void case_free(attn_case *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->h);
    free(c->r);
    free(c->w);
    free(c->dq);
    free(c->dk);
    free(c->dv);
    free(c->scratch);
    free(c->ref_h);
    free(c->ref_w);
}

static void assert_canary_intact(const attn_case *c)
{
    const size_t n = ddpm_attention_scratch_floats(c->N);
    for (int i = 0; i < CANARY; i++)
        if (!isnan(c->scratch[n + i]))
            fail_msg("scratch overrun: float %d past ddpm_attention_scratch_floats was written", i);
}

/* Naive attention in double, straight from the definition:
 * w[b,i,j] = softmax_j(sum_c q[b,c,i] k[b,c,j] / sqrt(C)), h[b,c,i] = sum_j w[b,i,j] v[b,c,j]. */
static void attention_reference(double *h, double *w, const float *q, const float *k, const float *v, int B,
                                int C, int N)
{
    for (int b = 0; b < B; b++) {
        const float *qb = q + (size_t)b * C * N, *kb = k + (size_t)b * C * N;
        const float *vb = v + (size_t)b * C * N;
        for (int i = 0; i < N; i++) {
            double *wi = w + ((size_t)b * N + i) * N;
            double m = -INFINITY;
            for (int j = 0; j < N; j++) {
                double s = 0.0;
                for (int c = 0; c < C; c++)
                    s += (double)qb[c * N + i] * kb[c * N + j];
                wi[j] = s / sqrt((double)C);
                m = fmax(m, wi[j]);
            }
            double sum = 0.0;
            for (int j = 0; j < N; j++) {
                wi[j] = exp(wi[j] - m);
                sum += wi[j];
            }
            for (int j = 0; j < N; j++)
                wi[j] /= sum;
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int j = 0; j < N; j++)
                    acc += wi[j] * vb[c * N + j];
                h[((size_t)b * C + c) * N + i] = acc;
            }
        }
    }
}

static double loss_reference(void *ctx)
{
    attn_case *c = ctx;
    attention_reference(c->ref_h, c->ref_w, c->q, c->k, c->v, c->B, c->C, c->N);
    double L = 0.0;
    for (size_t i = 0; i < c->n_x; i++)
        L += (double)c->r[i] * c->ref_h[i];
    return L;
}

static void forward(attn_case *c)
{
    ddpm_attention_forward(c->h, c->w, c->q, c->k, c->v, c->B, c->C, c->N);
}

static void backward(attn_case *c, float *dq, float *dk, float *dv)
{
    /* dL/dh = r */
    ddpm_attention_backward(dq, dk, dv, 1.0f, c->scratch, c->r, c->w, c->q, c->k, c->v, c->B, c->C, c->N);
}

static void expect_close(const char *what, const float *got, const double *want, size_t n, double atol,
                         double rtol)
{
    for (size_t i = 0; i < n; i++) {
        const double diff = fabs((double)got[i] - want[i]);
        if (!(diff <= atol + rtol * fabs(want[i])))
            fail_msg("%s[%zu] = %.8g, want %.8g (|diff| %.3g)", what, i, (double)got[i], want[i], diff);
    }
}

static void check_forward(int B, int C, int N, uint64_t seed)
{
    attn_case c;
    case_init(&c, B, C, N, seed, 0);
    forward(&c);
    attention_reference(c.ref_h, c.ref_w, c.q, c.k, c.v, B, C, N);
    expect_close("attention w", c.w, c.ref_w, c.n_w, FWD_ATOL, FWD_RTOL);
    expect_close("attention h", c.h, c.ref_h, c.n_x, FWD_ATOL, FWD_RTOL);
    case_free(&c);
}

static void test_attention_forward_matches_naive_attention(void **state)
{
    (void)state;
    check_forward(2, 5, 15, 1); /* 3x5 positions */
    check_forward(3, 6, 7, 2);
    check_forward(2, 3, 1, 3);   /* one position: w = 1, h = v */
    check_forward(2, 8, 196, 4); /* the default model's 14x14: rows of whole and partial 8-sums */
}

/* Scores of several hundred overflow expf without the row maximum subtracted. */
static void test_attention_softmax_is_stable_for_large_scores(void **state)
{
    (void)state;
    const int B = 2, C = 5, N = 15;
    attn_case c;
    case_init(&c, B, C, N, 4, 0);
    for (size_t i = 0; i < c.n_x; i++) {
        c.q[i] *= 10.0f;
        c.k[i] *= 10.0f;
    }
    forward(&c);
    attention_reference(c.ref_h, c.ref_w, c.q, c.k, c.v, B, C, N);
    for (int row = 0; row < B * N; row++) {
        double sum = 0.0;
        for (int j = 0; j < N; j++) {
            const float x = c.w[(size_t)row * N + j];
            if (!isfinite(x) || x < 0.0f)
                fail_msg("w[%d,%d] = %g is not a probability", row, j, (double)x);
            sum += x;
        }
        if (fabs(sum - 1.0) > 1e-5)
            fail_msg("row %d of w sums to %.8g", row, sum);
    }
    /* float scores of magnitude ~1e2 carry absolute errors ~1e-5, which w inherits
     * as relative errors (measured worst |error| < 3e-7, as the rows are peaked):
     * compare at 1e-4 */
    expect_close("attention w (large scores)", c.w, c.ref_w, c.n_w, 1e-4, 1e-4);
    expect_close("attention h (large scores)", c.h, c.ref_h, c.n_x, 1e-4, 1e-4);
    case_free(&c);
}

__attribute__((noinline)) static float exp_scalar(float t)
{
    return exp_nonpositive(t);
}

/* The softmax of attention.c one element per call (scalar instructions in any
 * build): row maximum, exp of the difference, the sum in 8 double partials
 * (element j to partial j % 8, added in order), one reciprocal. */
static void softmax_scalar(float *s, int N)
{
    float m = s[0];
    for (int j = 1; j < N; j++)
        m = s[j] > m ? s[j] : m;
    double acc[8] = {0};
    for (int j = 0; j < N; j++) {
        s[j] = exp_scalar(s[j] - m);
        acc[j % 8] += s[j];
    }
    double sum = 0.0;
    for (int l = 0; l < 8; l++)
        sum += acc[l];
    const float inv = (float)(1.0 / sum);
    for (int j = 0; j < N; j++)
        s[j] *= inv;
}

/* The vectorised softmax (AVX-512 masks or AVX2 blends) gives the weights of the
 * scalar one byte for byte, the scores made by the same sgemm call; large scores
 * send exp below its clamp at -104 (weights of 0). B > 1, odd N, 196 positions. */
static void test_attention_weights_are_the_bytes_of_the_scalar_softmax(void **state)
{
    (void)state;
    const struct {
        int B, C, N;
    } shapes[] = {{3, 5, 15}, {2, 8, 196}, {2, 6, 49}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int B = shapes[k].B, C = shapes[k].C, N = shapes[k].N;
        attn_case c;
        case_init(&c, B, C, N, 40 + k, 0);
        for (size_t i = 0; i < c.n_x; i++)
            c.q[i] *= 8.0f * (float)k + 1.0f, c.k[i] *= 4.0f;
        forward(&c);
        const float scale = (float)(1.0 / sqrt((double)C));
        float *S = tu_alloc((size_t)N * N);
        size_t bad = 0, tiny = 0;
        for (int b = 0; b < B; b++) {
            const size_t CN = (size_t)C * N, NN = (size_t)N * N;
            ddpm_sgemm(1, 0, N, N, C, scale, c.q + b * CN, N, c.k + b * CN, N, 0.0f, S, N);
            for (int i = 0; i < N; i++)
                softmax_scalar(S + (size_t)i * N, N);
            for (size_t i = 0; i < NN; i++) {
                if (memcmp(&S[i], &c.w[b * NN + i], sizeof(float)) != 0 && bad++ < 5)
                    fprintf(stderr, "shape %zu image %d: w[%zu] = %a, scalar %a\n", k, b, i,
                            (double)c.w[b * NN + i], (double)S[i]);
                tiny += S[i] == 0.0f; /* exp below -104, or underflowed */
            }
        }
        if (bad)
            fail_msg("shape %zu: %zu weights differ from the scalar softmax", k, bad);
        if (k > 0)
            assert_true(tiny > 0);
        free(S);
        case_free(&c);
    }
}

static void check_backward_fd(int B, int C, int N, uint64_t seed)
{
    attn_case c;
    case_init(&c, B, C, N, seed, 1);
    forward(&c);
    backward(&c, c.dq, c.dk, c.dv);
    assert_canary_intact(&c);
    int n_bad = 0;
    n_bad += tu_check_grad("attention dq", c.q, c.dq, c.n_x, loss_reference, &c, FD_H, GRAD_ATOL, GRAD_RTOL);
    n_bad += tu_check_grad("attention dk", c.k, c.dk, c.n_x, loss_reference, &c, FD_H, GRAD_ATOL, GRAD_RTOL);
    n_bad += tu_check_grad("attention dv", c.v, c.dv, c.n_x, loss_reference, &c, FD_H, GRAD_ATOL, GRAD_RTOL);
    if (n_bad)
        fail_msg("attention backward B%d C%d N%d: %d gradient elements off", B, C, N, n_bad);
    case_free(&c);
}

static void test_attention_backward_matches_finite_differences(void **state)
{
    (void)state;
    check_backward_fd(2, 5, 15, 11); /* 3x5 positions, C = 5 */
    check_backward_fd(3, 6, 7, 12);
}

static void test_attention_backward_accumulates_into_gradients(void **state)
{
    (void)state;
    const int B = 2, C = 5, N = 15;
    attn_case c;
    case_init(&c, B, C, N, 21, 1);
    forward(&c);
    backward(&c, c.dq, c.dk, c.dv); /* from zero: the gradient itself */
    const float prefill = 0.75f;
    float *dq = tu_alloc(c.n_x), *dk = tu_alloc(c.n_x), *dv = tu_alloc(c.n_x);
    for (size_t i = 0; i < c.n_x; i++)
        dq[i] = dk[i] = dv[i] = prefill;
    for (int times = 1; times <= 2; times++) {
        backward(&c, dq, dk, dv);
        tu_expect_accumulated("dq", dq, c.dq, c.n_x, prefill, times);
        tu_expect_accumulated("dk", dk, c.dk, c.n_x, prefill, times);
        tu_expect_accumulated("dv", dv, c.dv, c.n_x, prefill, times);
    }
    free(dq);
    free(dk);
    free(dv);
    case_free(&c);
}

static void test_attention_backward_null_gradients_are_skipped(void **state)
{
    (void)state;
    const int B = 3, C = 6, N = 7;
    attn_case c;
    case_init(&c, B, C, N, 31, 1);
    forward(&c);
    backward(&c, c.dq, c.dk, c.dv);
    float *dq = tu_alloc(c.n_x), *dk = tu_alloc(c.n_x), *dv = tu_alloc(c.n_x);
    backward(&c, dq, NULL, NULL);
    backward(&c, NULL, dk, NULL);
    backward(&c, NULL, NULL, dv);
    backward(&c, NULL, NULL, NULL);
    assert_canary_intact(&c);
    size_t at;
    double d;
    if ((d = tu_max_abs_diff(dq, c.dq, c.n_x, &at)) > 1e-6)
        fail_msg("dq alone differs by %g at %zu", d, at);
    if ((d = tu_max_abs_diff(dk, c.dk, c.n_x, &at)) > 1e-6)
        fail_msg("dk alone differs by %g at %zu", d, at);
    if ((d = tu_max_abs_diff(dv, c.dv, c.n_x, &at)) > 1e-6)
        fail_msg("dv alone differs by %g at %zu", d, at);
    free(dq);
    free(dk);
    free(dv);
    case_free(&c);
}

/* beta = 0 overwrites dq, dk, dv with exactly what _backward adds to zeros. */
static void test_attention_backward_beta0_overwrites(void **state)
{
    (void)state;
    attn_case c;
    case_init(&c, 3, 4, 13, 51, 0);
    forward(&c);
    backward(&c, c.dq, c.dk, c.dv); /* from zero */
    float *dq = tu_alloc(c.n_x), *dk = tu_alloc(c.n_x), *dv = tu_alloc(c.n_x);
    for (size_t i = 0; i < c.n_x; i++)
        dq[i] = dk[i] = dv[i] = NAN;
    ddpm_attention_backward(dq, dk, dv, 0.0f, c.scratch, c.r, c.w, c.q, c.k, c.v, c.B, c.C, c.N);
    for (size_t i = 0; i < c.n_x; i++)
        if (dq[i] != c.dq[i] || dk[i] != c.dk[i] || dv[i] != c.dv[i])
            fail_msg("at %zu: dq %g/%g dk %g/%g dv %g/%g (got/want)", i, (double)dq[i], (double)c.dq[i],
                     (double)dk[i], (double)c.dk[i], (double)dv[i], (double)c.dv[i]);
    free(dq);
    free(dk);
    free(dv);
    case_free(&c);
}

/* Forward and backward give the same bytes at 1 and 2 threads, at the default model's
 * 14x14 attention with more images than lanes (README: results do not depend on the
 * thread count). */
static void test_attention_same_bytes_at_one_and_two_threads(void **state)
{
    (void)state;
    attn_case c;
    case_init(&c, 11, 8, 196, 61, 0);
    float *h[2], *w[2], *dq[2], *dk[2], *dv[2];
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        h[t] = tu_alloc(c.n_x), w[t] = tu_alloc(c.n_w);
        dq[t] = tu_alloc(c.n_x), dk[t] = tu_alloc(c.n_x), dv[t] = tu_alloc(c.n_x);
        ddpm_attention_forward(h[t], w[t], c.q, c.k, c.v, c.B, c.C, c.N);
        ddpm_attention_backward(dq[t], dk[t], dv[t], 0.0f, c.scratch, c.r, w[t], c.q, c.k, c.v, c.B, c.C,
                                c.N);
    }
    assert_memory_equal(h[0], h[1], c.n_x * sizeof(float));
    assert_memory_equal(w[0], w[1], c.n_w * sizeof(float));
    assert_memory_equal(dq[0], dq[1], c.n_x * sizeof(float));
    assert_memory_equal(dk[0], dk[1], c.n_x * sizeof(float));
    assert_memory_equal(dv[0], dv[1], c.n_x * sizeof(float));
    for (int t = 0; t < 2; t++)
        free(h[t]), free(w[t]), free(dq[t]), free(dk[t]), free(dv[t]);
    case_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_forward_matches_naive_attention),
        cmocka_unit_test(test_attention_softmax_is_stable_for_large_scores),
        cmocka_unit_test(test_attention_weights_are_the_bytes_of_the_scalar_softmax),
        cmocka_unit_test(test_attention_backward_matches_finite_differences),
        cmocka_unit_test(test_attention_backward_accumulates_into_gradients),
        cmocka_unit_test(test_attention_backward_null_gradients_are_skipped),
        cmocka_unit_test(test_attention_backward_beta0_overwrites),
        cmocka_unit_test(test_attention_same_bytes_at_one_and_two_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
