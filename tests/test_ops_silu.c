/* Tests of SiLU: forward against double precision (including |x| where a naive
 * exp overflows), in-place use, backward against finite differences, accumulation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/ops.h"
#include "testutil.h"

#include "../src/ops/sigmoid.h"

/* Inputs on a 2^-14 grid: x +- h, h = 2^-8, is exact in float. */
#define GRID_BITS 14
#define FD_H (1.0f / 256.0f)

static void fill_grid(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    tu_fill_uniform(x, n, seed, lo, hi);
    for (size_t i = 0; i < n; i++)
        x[i] = ldexpf(rintf(ldexpf(x[i], GRID_BITS)), -GRID_BITS);
}

static double silu_ref(double x) { return x / (1.0 + exp(-x)); }

/* 2 x 6 x 5 x 7 */
enum { N = 2 * 6 * 5 * 7 };

typedef struct {
    float *x, *out, *r;
    size_t n;
} silu_case;

static double silu_loss(void *ctx)
{
    silu_case *c = ctx;
    ddpm_silu_forward(c->out, c->x, c->n);
    double L = 0;
    for (size_t i = 0; i < c->n; i++)
        L += (double)c->r[i] * c->out[i];
    return L;
}

static double silu_loss_reference(void *ctx)
{
    silu_case *c = ctx;
    double L = 0;
    for (size_t i = 0; i < c->n; i++)
        L += (double)c->r[i] * silu_ref(c->x[i]);
    return L;
}

static void test_silu_forward_matches_double_reference_and_is_stable_for_large_x(void **state)
{
    (void)state;
    float x[N + 12], out[N + 12];
    fill_grid(x, N, 1, -12.0f, 12.0f);
    const float extremes[12] = {-1e30f, -1000.0f, -104.0f, -88.5f, -30.0f, -0.0f,
                                0.0f,   30.0f,    88.5f,   104.0f, 1000.0f, 1e30f};
    memcpy(x + N, extremes, sizeof extremes);
    ddpm_silu_forward(out, x, N + 12);
    for (int i = 0; i < N + 12; i++) {
        double ref = silu_ref(x[i]);
        assert_true(isfinite(out[i]));
        /* a few float ulp (expf, one division, one product): rel 1e-6; the absolute
         * 1e-38 term covers the denormal results at x ~ -100, where ref ~ 1e-42 */
        if (fabs(out[i] - ref) > 1e-6 * fabs(ref) + 1e-38)
            fprintf(stderr, "silu(%g) = %.9g, reference %.9g\n", (double)x[i], (double)out[i], ref);
        assert_true(fabs(out[i] - ref) <= 1e-6 * fabs(ref) + 1e-38);
    }
    assert_true(out[N + 10] == 1000.0f && out[N + 11] == 1e30f);
    assert_true(out[N + 0] == 0.0f && out[N + 1] == 0.0f);
}

static void test_silu_forward_in_place_equals_out_of_place(void **state)
{
    (void)state;
    float x[N], out[N];
    fill_grid(x, N, 2, -8.0f, 8.0f);
    ddpm_silu_forward(out, x, N);
    ddpm_silu_forward(x, x, N);
    assert_memory_equal(x, out, sizeof x);
}

static void test_silu_backward_matches_finite_differences(void **state)
{
    (void)state;
    silu_case c = {tu_alloc(N), tu_alloc(N), tu_alloc(N), N};
    float *din = tu_alloc(N);
    fill_grid(c.x, N, 3, -6.0f, 6.0f);
    tu_fill_uniform(c.r, N, 4, -1.0f, 1.0f);
    ddpm_silu_backward(din, 1.0f, c.r, c.x, N);
    /* (1) the float op: only out[i] moves with x[i]; its float rounding (half an ulp,
     * <= 2.4e-7 at |out| < 6) in both evaluations gives <= 4.8e-7 / 2h = 6e-5;
     * truncation h^2/6 max|silu'''| ~ 1e-6. abs 1e-4 + rel 1e-3.
     * (2) the double reference with the same exact perturbation: only truncation
     * (~1e-6) and the float rounding of the analytic value: abs 3e-6 + rel 1e-5. */
    assert_int_equal(tu_check_grad("silu din (float fd)", c.x, din, N, silu_loss, &c, FD_H, 1e-4, 1e-3), 0);
    assert_int_equal(tu_check_grad("silu din (double fd)", c.x, din, N, silu_loss_reference, &c, FD_H,
                                   3e-6, 1e-5),
                     0);
    free(c.x), free(c.out), free(c.r), free(din);
}

static void test_silu_backward_is_finite_and_exact_at_large_x(void **state)
{
    (void)state;
    const float x[6] = {-1e30f, -1000.0f, -104.0f, 104.0f, 1000.0f, 1e30f};
    const float dout[6] = {1, 1, 1, 1, 1, 1};
    float din[6] = {0};
    ddpm_silu_backward(din, 1.0f, dout, x, 6);
    for (int i = 0; i < 6; i++)
        assert_true(isfinite(din[i]));
    for (int i = 0; i < 3; i++)
        assert_true(fabsf(din[i]) < 1e-30f);
    for (int i = 3; i < 6; i++)
        assert_true(din[i] == 1.0f);
}

static void test_silu_backward_accumulates(void **state)
{
    (void)state;
    float x[N], dout[N], din[N] = {0}, din2[N];
    fill_grid(x, N, 5, -6.0f, 6.0f);
    tu_fill_uniform(dout, N, 6, -1.0f, 1.0f);
    ddpm_silu_backward(din, 1.0f, dout, x, N);
    for (int i = 0; i < N; i++)
        din2[i] = 0.5f * (float)(i % 5) - 1.0f;
    ddpm_silu_backward(din2, 1.0f, dout, x, N);
    for (int i = 0; i < N; i++) {
        float want = (0.5f * (float)(i % 5) - 1.0f) + din[i];
        assert_true(fabsf(din2[i] - want) <= 1e-6f * (1.0f + fabsf(want)));
    }
    ddpm_silu_backward(NULL, 1.0f, dout, x, N); /* NULL: nothing to do, no crash */
}

/* beta = 0 overwrites din with exactly what _backward adds to zeros. */
static void test_silu_backward_beta0_overwrites(void **state)
{
    (void)state;
    float *x = tu_alloc(N), *d = tu_alloc(N), *want = tu_alloc(N), *got = tu_alloc(N);
    tu_fill_uniform(x, N, 91, -12.0f, 12.0f);
    tu_fill_uniform(d, N, 92, -1.0f, 1.0f);
    ddpm_silu_backward(want, 1.0f, d, x, N);
    for (size_t i = 0; i < N; i++)
        got[i] = NAN;
    ddpm_silu_backward(got, 0.0f, d, x, N);
    for (size_t i = 0; i < N; i++)
        if (got[i] != want[i])
            fail_msg("din[%zu] = %g, want %g", i, (double)got[i], (double)want[i]);
    ddpm_silu_backward(NULL, 0.0f, d, x, N); /* NULL is skipped */
    free(x), free(d), free(want), free(got);
}

/* The library's sigmoid, one element per call: scalar instructions in any build,
 * the reference for the vectorised loops of ddpm_silu_forward and _backward. */
__attribute__((noinline)) static float silu_scalar(float x)
{
    return x * sigmoid_stable(x);
}

__attribute__((noinline)) static float silu_grad_scalar(float dout, float x)
{
    const float s = sigmoid_stable(x);
    return dout * s * (1.0f + x * (1.0f - s));
}

static int same_float(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0 || (isnan(a) && isnan(b));
}

/* Every 251st float bit pattern (17 million inputs: every exponent, both signs,
 * denormals, the clamp of exp at -104, infinities and NaNs): the vectorised loops
 * (AVX-512 or AVX2 blends, whichever this build compiled) give the bytes of the
 * scalar sigmoid, forward and backward, with beta 0 and 1, in parallel calls. */
static void test_silu_gives_the_bytes_of_the_scalar_sigmoid_over_the_float_range(void **state)
{
    (void)state;
    const uint64_t stride = 251;
    const size_t n = (size_t)((UINT64_C(1) << 32) / stride) + 1;
    float *x = tu_alloc(n), *out = tu_alloc(n), *dout = tu_alloc(n), *din = tu_alloc(n);
    for (size_t i = 0; i < n; i++) {
        const uint32_t u = (uint32_t)(i * stride);
        memcpy(&x[i], &u, sizeof u);
        dout[i] = (float)(i % 7) * 0.25f - 0.75f;
    }
    size_t bad = 0;
    ddpm_silu_forward(out, x, n);
    for (size_t i = 0; i < n; i++)
        if (!same_float(out[i], silu_scalar(x[i])) && bad++ < 5)
            fprintf(stderr, "silu(%a) = %a, scalar %a\n", (double)x[i], (double)out[i], (double)silu_scalar(x[i]));
    ddpm_silu_backward(din, 0.0f, dout, x, n);
    for (size_t i = 0; i < n; i++)
        if (!same_float(din[i], silu_grad_scalar(dout[i], x[i])) && bad++ < 10)
            fprintf(stderr, "silu'(%a) dout %g = %a, scalar %a\n", (double)x[i], (double)dout[i], (double)din[i],
                    (double)silu_grad_scalar(dout[i], x[i]));
    for (size_t i = 0; i < n; i++)
        din[i] = (float)(i % 3);
    ddpm_silu_backward(din, 1.0f, dout, x, n);
    for (size_t i = 0; i < n; i++)
        if (!same_float(din[i], 1.0f * (float)(i % 3) + silu_grad_scalar(dout[i], x[i])) && bad++ < 15)
            fprintf(stderr, "accumulated silu'(%a) = %a\n", (double)x[i], (double)din[i]);
    if (bad)
        fail_msg("%zu of %zu elements differ from the scalar sigmoid", bad, 3 * n);
    free(x), free(out), free(dout), free(din);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_silu_forward_matches_double_reference_and_is_stable_for_large_x),
        cmocka_unit_test(test_silu_forward_in_place_equals_out_of_place),
        cmocka_unit_test(test_silu_backward_matches_finite_differences),
        cmocka_unit_test(test_silu_backward_is_finite_and_exact_at_large_x),
        cmocka_unit_test(test_silu_backward_accumulates),
        cmocka_unit_test(test_silu_backward_beta0_overwrites),
        cmocka_unit_test(test_silu_gives_the_bytes_of_the_scalar_sigmoid_over_the_float_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
