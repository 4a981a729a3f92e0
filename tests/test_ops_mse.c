/* Tests of the mean squared error: the loss against a naive double sum, the
 * gradient against finite differences of the loss, accumulation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>

#include "ddpm/ops.h"
#include "testutil.h"

#define GRID_BITS 14

static void fill_grid(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    tu_fill_uniform(x, n, seed, lo, hi);
    for (size_t i = 0; i < n; i++)
        x[i] = ldexpf(rintf(ldexpf(x[i], GRID_BITS)), -GRID_BITS);
}

enum { N = 2 * 3 * 5 * 7 };

typedef struct {
    float *pred, *target;
} mse_case;

static double mse_loss(void *ctx)
{
    mse_case *c = ctx;
    return ddpm_mse_forward(c->pred, c->target, N);
}

static void test_mse_forward_matches_naive_mean_of_squares(void **state)
{
    (void)state;
    float pred[N], target[N];
    tu_fill_uniform(pred, N, 1, -2.0f, 2.0f);
    tu_fill_uniform(target, N, 2, -2.0f, 2.0f);
    long double s = 0;
    for (int i = 0; i < N; i++)
        s += ((long double)pred[i] - target[i]) * ((long double)pred[i] - target[i]);
    double want = (double)(s / N);
    assert_true(fabs(ddpm_mse_forward(pred, target, N) - want) <= 1e-14 * want);
    assert_true(ddpm_mse_forward(pred, pred, N) == 0.0);
}

static void test_mse_backward_matches_finite_differences_and_accumulates(void **state)
{
    (void)state;
    mse_case c = {tu_alloc(N), tu_alloc(N)};
    float *dpred = tu_alloc(N), *dpred2 = tu_alloc(N);
    fill_grid(c.pred, N, 3, -2.0f, 2.0f);
    fill_grid(c.target, N, 4, -2.0f, 2.0f);
    ddpm_mse_backward(dpred, c.pred, c.target, N, N);
    /* The loss is computed in double from exact float inputs (pred +- 2^-8 is exact
     * on the grid) and is quadratic, so the central difference is exact up to double
     * rounding (~1e-16 / h); the analytic value is rounded to float (rel 6e-8).
     * abs 1e-9 + rel 1e-6. */
    assert_int_equal(tu_check_grad("mse dpred", c.pred, dpred, N, mse_loss, &c, 1.0f / 256, 1e-9, 1e-6), 0);
    for (int i = 0; i < N; i++)
        dpred2[i] = 0.5f * (float)(i % 5);
    ddpm_mse_backward(dpred2, c.pred, c.target, N, N);
    for (int i = 0; i < N; i++) {
        float want = 0.5f * (float)(i % 5) + dpred[i];
        assert_true(fabsf(dpred2[i] - want) <= 1e-6f * (1.0f + fabsf(want)));
    }
    ddpm_mse_backward(NULL, c.pred, c.target, N, N);
    free(c.pred), free(c.target), free(dpred), free(dpred2);
}

/* A micro-batch's share of the mean: the first third of the elements with n_mean
 * = N gets exactly (the same double scale, one rounding) the whole call's values. */
static void test_mse_backward_of_a_part_scales_by_the_whole_count(void **state)
{
    (void)state;
    mse_case c = {tu_alloc(N), tu_alloc(N)};
    float *whole = tu_alloc(N), *part = tu_alloc(N);
    fill_grid(c.pred, N, 3, -2.0f, 2.0f);
    fill_grid(c.target, N, 4, -2.0f, 2.0f);
    ddpm_mse_backward(whole, c.pred, c.target, N, N);
    ddpm_mse_backward(part, c.pred, c.target, N / 3, N);
    assert_memory_equal(part, whole, (N / 3) * sizeof(float));
    free(c.pred), free(c.target), free(whole), free(part);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mse_forward_matches_naive_mean_of_squares),
        cmocka_unit_test(test_mse_backward_matches_finite_differences_and_accumulates),
        cmocka_unit_test(test_mse_backward_of_a_part_scales_by_the_whole_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
