/* Tests of the sinusoidal timestep embedding against its formula in double. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ddpm/ops.h"

static void check_embedding(int dim)
{
    enum { B = 6 };
    const int t[B] = {0, 1, 17, 500, 998, 999};
    float out[B * 256];
    assert_true(dim <= 256);
    ddpm_timestep_embedding(out, t, B, dim);
    const int half = dim / 2;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < half; i++) {
            double freq = exp(-log(10000.0) * i / (half - 1));
            double s = sin(t[b] * freq), c = cos(t[b] * freq);
            /* values in [-1, 1] rounded to float once: 6e-8. 1e-6 also rejects an
             * argument computed in float, off by ~999 * 6e-8 = 6e-5 at t = 999. */
            if (fabs(out[b * dim + i] - s) > 1e-6 || fabs(out[b * dim + half + i] - c) > 1e-6)
                fprintf(stderr, "dim %d t %d i %d: got %.9g %.9g, want %.9g %.9g\n", dim, t[b], i,
                        (double)out[b * dim + i], (double)out[b * dim + half + i], s, c);
            assert_true(fabs(out[b * dim + i] - s) <= 1e-6);
            assert_true(fabs(out[b * dim + half + i] - c) <= 1e-6);
        }
    /* t = 0: sin 0 = 0 and cos 0 = 1 exactly */
    for (int i = 0; i < half; i++) {
        assert_true(out[i] == 0.0f);
        assert_true(out[half + i] == 1.0f);
    }
    /* the first frequency is 1 and the last 1e-4: at t = 999 these are sin 999 and sin 0.0999 */
    assert_true(fabs(out[5 * dim] - sin(999.0)) <= 1e-6);
    assert_true(fabs(out[5 * dim + half - 1] - sin(0.0999)) <= 1e-6);
}

static void test_embedding_matches_formula_for_default_dim(void **state)
{
    (void)state;
    check_embedding(32); /* ch = 32, the default model */
}

static void test_embedding_matches_formula_for_other_dims(void **state)
{
    (void)state;
    check_embedding(6);
    check_embedding(128);
}

/* Continuous steps: an integer t gives the int version's bytes exactly (so a
 * sampler on trained steps is unchanged), a fractional one the formula. */
static void test_continuous_embedding_equals_integer_bytes_and_the_formula_between(void **state)
{
    (void)state;
    enum { B = 5, DIM = 32, HALF = DIM / 2 };
    const int t[B] = {0, 1, 17, 500, 999};
    const double td[B] = {0, 1, 17, 500, 999}, frac[B] = {0.5, 1.25, 17.75, 499.5, 998.125};
    float a[B * DIM], b[B * DIM];
    ddpm_timestep_embedding(a, t, B, DIM);
    ddpm_timestep_embedding_t(b, td, B, DIM);
    assert_memory_equal(a, b, sizeof a);
    ddpm_timestep_embedding_t(b, frac, B, DIM);
    for (int q = 0; q < B; q++)
        for (int i = 0; i < HALF; i++) {
            double freq = exp(-log(10000.0) * i / (HALF - 1));
            assert_true(fabs(b[q * DIM + i] - sin(frac[q] * freq)) <= 1e-6);
            assert_true(fabs(b[q * DIM + HALF + i] - cos(frac[q] * freq)) <= 1e-6);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding_matches_formula_for_default_dim),
        cmocka_unit_test(test_embedding_matches_formula_for_other_dims),
        cmocka_unit_test(test_continuous_embedding_equals_integer_bytes_and_the_formula_between),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
