/* Tests of nearest 2x upsampling: forward against a naive loop, backward against
 * finite differences (exact here: the op is linear), accumulation. */
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

enum { B = 2, C = 3, H = 5, W = 7, N_IN = B * C * H * W, N_OUT = 4 * N_IN };

typedef struct {
    float *x, *out, *r;
} up_case;

static double up_loss(void *ctx)
{
    up_case *c = ctx;
    ddpm_upsample_forward(c->out, c->x, B, C, H, W);
    double L = 0;
    for (int i = 0; i < N_OUT; i++)
        L += (double)c->r[i] * c->out[i];
    return L;
}

static void test_upsample_forward_matches_naive_nearest(void **state)
{
    (void)state;
    float *x = tu_alloc(N_IN), *out = tu_alloc(N_OUT);
    fill_grid(x, N_IN, 1, -1.0f, 1.0f);
    ddpm_upsample_forward(out, x, B, C, H, W);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < 2 * H; i++)
                for (int j = 0; j < 2 * W; j++)
                    assert_true(out[((b * C + c) * 2 * H + i) * 2 * W + j] ==
                                x[((b * C + c) * H + i / 2) * W + j / 2]);
    free(x), free(out);
}

static void test_upsample_backward_matches_finite_differences(void **state)
{
    (void)state;
    up_case c = {tu_alloc(N_IN), tu_alloc(N_OUT), tu_alloc(N_OUT)};
    float *din = tu_alloc(N_IN);
    fill_grid(c.x, N_IN, 2, -1.0f, 1.0f);
    tu_fill_uniform(c.r, N_OUT, 3, -1.0f, 1.0f);
    ddpm_upsample_backward(din, c.r, B, C, H, W);
    /* out copies x, x +- h is exact and L is linear: the differences equal the sum of
     * the 4 r's up to double rounding (~1e-16 |L| / h); the analytic value is a float
     * sum of 4 terms (rel ~2e-7). abs 1e-6 + rel 1e-6. */
    assert_int_equal(tu_check_grad("upsample din", c.x, din, N_IN, up_loss, &c, FD_H, 1e-6, 1e-6), 0);
    free(c.x), free(c.out), free(c.r), free(din);
}

static void test_upsample_backward_accumulates(void **state)
{
    (void)state;
    float *dout = tu_alloc(N_OUT), *din = tu_alloc(N_IN), *din2 = tu_alloc(N_IN);
    tu_fill_uniform(dout, N_OUT, 4, -1.0f, 1.0f);
    ddpm_upsample_backward(din, dout, B, C, H, W);
    for (int i = 0; i < N_IN; i++)
        din2[i] = 2.0f - 0.25f * (float)(i % 9);
    ddpm_upsample_backward(din2, dout, B, C, H, W);
    for (int i = 0; i < N_IN; i++) {
        float want = (2.0f - 0.25f * (float)(i % 9)) + din[i];
        assert_true(fabsf(din2[i] - want) <= 1e-6f * (1.0f + fabsf(want)));
    }
    ddpm_upsample_backward(NULL, dout, B, C, H, W);
    free(dout), free(din), free(din2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upsample_forward_matches_naive_nearest),
        cmocka_unit_test(test_upsample_backward_matches_finite_differences),
        cmocka_unit_test(test_upsample_backward_accumulates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
