/* Tests of channel concatenation: forward against a naive loop, split-backward
 * against finite differences, accumulation and NULL gradients. */
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

/* Ca != Cb so that swapped strides show; HW = 5 x 7 */
enum { B = 3, CA = 5, CB = 3, HW = 35, NA = B * CA * HW, NB = B * CB * HW, NO = NA + NB };

typedef struct {
    float *a, *b, *out, *r;
} cat_case;

static double cat_loss(void *ctx)
{
    cat_case *c = ctx;
    ddpm_concat_forward(c->out, c->a, c->b, B, CA, CB, HW);
    double L = 0;
    for (int i = 0; i < NO; i++)
        L += (double)c->r[i] * c->out[i];
    return L;
}

static void test_concat_forward_matches_naive_loop(void **state)
{
    (void)state;
    float *a = tu_alloc(NA), *b = tu_alloc(NB), *out = tu_alloc(NO);
    fill_grid(a, NA, 1, -1.0f, 1.0f);
    fill_grid(b, NB, 2, -1.0f, 1.0f);
    ddpm_concat_forward(out, a, b, B, CA, CB, HW);
    for (int n = 0; n < B; n++)
        for (int c = 0; c < CA + CB; c++)
            for (int i = 0; i < HW; i++) {
                float want = c < CA ? a[(n * CA + c) * HW + i] : b[(n * CB + c - CA) * HW + i];
                assert_true(out[(n * (CA + CB) + c) * HW + i] == want);
            }
    free(a), free(b), free(out);
}

static void test_concat_backward_matches_finite_differences(void **state)
{
    (void)state;
    cat_case c = {tu_alloc(NA), tu_alloc(NB), tu_alloc(NO), tu_alloc(NO)};
    float *da = tu_alloc(NA), *db = tu_alloc(NB);
    fill_grid(c.a, NA, 3, -1.0f, 1.0f);
    fill_grid(c.b, NB, 4, -1.0f, 1.0f);
    tu_fill_uniform(c.r, NO, 5, -1.0f, 1.0f);
    ddpm_concat_backward(da, db, c.r, B, CA, CB, HW);
    /* a copy: exact perturbations and a linear L, the differences are exact to
     * double rounding. abs 1e-6 + rel 1e-6. */
    assert_int_equal(tu_check_grad("concat da", c.a, da, NA, cat_loss, &c, FD_H, 1e-6, 1e-6), 0);
    assert_int_equal(tu_check_grad("concat db", c.b, db, NB, cat_loss, &c, FD_H, 1e-6, 1e-6), 0);
    free(c.a), free(c.b), free(c.out), free(c.r), free(da), free(db);
}

static void test_concat_backward_accumulates_and_skips_null(void **state)
{
    (void)state;
    float *dout = tu_alloc(NO), *da = tu_alloc(NA), *db = tu_alloc(NB);
    tu_fill_uniform(dout, NO, 6, -1.0f, 1.0f);
    for (int i = 0; i < NA; i++)
        da[i] = 1.0f + (float)(i % 3);
    for (int i = 0; i < NB; i++)
        db[i] = -1.0f - (float)(i % 4);
    ddpm_concat_backward(da, NULL, dout, B, CA, CB, HW);
    ddpm_concat_backward(NULL, db, dout, B, CA, CB, HW);
    for (int n = 0; n < B; n++)
        for (int i = 0; i < CA * HW; i++) {
            int k = n * CA * HW + i;
            assert_true(da[k] == (1.0f + (float)(k % 3)) + dout[n * (CA + CB) * HW + i]);
        }
    for (int n = 0; n < B; n++)
        for (int i = 0; i < CB * HW; i++) {
            int k = n * CB * HW + i;
            assert_true(db[k] == (-1.0f - (float)(k % 4)) + dout[n * (CA + CB) * HW + CA * HW + i]);
        }
    free(dout), free(da), free(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concat_forward_matches_naive_loop),
        cmocka_unit_test(test_concat_backward_matches_finite_differences),
        cmocka_unit_test(test_concat_backward_accumulates_and_skips_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
