/* Tests of the additions: the per-(batch, channel) broadcast add and its backward
 * (a sum over H, W) against finite differences, and the residual add in place. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/ops.h"
#include "testutil.h"

#define GRID_BITS 14
#define FD_H (1.0f / 64.0f)

static void fill_grid(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    tu_fill_uniform(x, n, seed, lo, hi);
    for (size_t i = 0; i < n; i++)
        x[i] = ldexpf(rintf(ldexpf(x[i], GRID_BITS)), -GRID_BITS);
}

enum { B = 3, C = 6, HW = 35, N = B * C * HW };

typedef struct {
    float *x, *v, *out, *r;
} add_case;

static double add_channel_loss(void *ctx)
{
    add_case *c = ctx;
    memcpy(c->out, c->x, N * sizeof(float));
    ddpm_add_channel_forward(c->out, c->v, B, C, HW);
    double L = 0;
    for (int i = 0; i < N; i++)
        L += (double)c->r[i] * c->out[i];
    return L;
}

static void test_add_channel_forward_matches_naive_broadcast(void **state)
{
    (void)state;
    float *x = tu_alloc(N), *x0 = tu_alloc(N), *v = tu_alloc(B * C);
    fill_grid(x0, N, 1, -1.0f, 1.0f);
    fill_grid(v, B * C, 2, -1.0f, 1.0f);
    memcpy(x, x0, N * sizeof(float));
    ddpm_add_channel_forward(x, v, B, C, HW);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) {
                int k = (b * C + c) * HW + i;
                assert_true(x[k] == x0[k] + v[b * C + c]);
            }
    free(x), free(x0), free(v);
}

static void test_add_channel_backward_matches_finite_differences(void **state)
{
    (void)state;
    add_case c = {tu_alloc(N), tu_alloc(B * C), tu_alloc(N), tu_alloc(N)};
    float *dv = tu_alloc(B * C);
    fill_grid(c.x, N, 3, -1.0f, 1.0f);
    fill_grid(c.v, B * C, 4, -1.0f, 1.0f);
    tu_fill_uniform(c.r, N, 5, -1.0f, 1.0f);
    ddpm_add_channel_backward(dv, c.r, B, C, HW);
    /* x + v of two 2^-14-grid values in [-1, 1] is exact in float and L is linear:
     * the differences are exact to double rounding; dv is a double sum of 35 r's
     * rounded once to float (rel 6e-8). abs 1e-6 + rel 1e-6. */
    assert_int_equal(
        tu_check_grad("add_channel dv", c.v, dv, B * C, add_channel_loss, &c, FD_H, 1e-6, 1e-6), 0);
    free(c.x), free(c.v), free(c.out), free(c.r), free(dv);
}

static void test_add_channel_backward_accumulates(void **state)
{
    (void)state;
    float *dout = tu_alloc(N), dv[B * C] = {0}, dv2[B * C];
    tu_fill_uniform(dout, N, 6, -1.0f, 1.0f);
    ddpm_add_channel_backward(dv, dout, B, C, HW);
    for (int i = 0; i < B * C; i++)
        dv2[i] = 3.0f - (float)i;
    ddpm_add_channel_backward(dv2, dout, B, C, HW);
    for (int i = 0; i < B * C; i++) {
        float want = (3.0f - (float)i) + dv[i];
        assert_true(fabsf(dv2[i] - want) <= 1e-6f * (1.0f + fabsf(want)));
    }
    ddpm_add_channel_backward(NULL, dout, B, C, HW);
    free(dout);
}

static void test_add_forward_matches_naive_sum_and_may_alias(void **state)
{
    (void)state;
    float *a = tu_alloc(N), *b = tu_alloc(N), *out = tu_alloc(N);
    tu_fill_uniform(a, N, 7, -1.0f, 1.0f);
    tu_fill_uniform(b, N, 8, -1.0f, 1.0f);
    ddpm_add_forward(out, a, b, N);
    for (int i = 0; i < N; i++)
        assert_true(out[i] == a[i] + b[i]);
    ddpm_add_forward(a, a, b, N); /* out == a */
    assert_memory_equal(a, out, N * sizeof(float));
    free(a), free(b), free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_channel_forward_matches_naive_broadcast),
        cmocka_unit_test(test_add_channel_backward_matches_finite_differences),
        cmocka_unit_test(test_add_channel_backward_accumulates),
        cmocka_unit_test(test_add_forward_matches_naive_sum_and_may_alias),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
