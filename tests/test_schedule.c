/* Tests of the noise schedule against the closed forms of DDPM section 2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>

#include "ddpm/schedule.h"
#include "testutil.h"

static void test_linear_betas_are_evenly_spaced_from_start_to_end(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02), 0);
    assert_close(s.beta[0], 1e-4, 1e-15);
    assert_close(s.beta[999], 0.02, 1e-15);
    for (int i = 1; i < 1000; i++)
        assert_close(s.beta[i] - s.beta[i - 1], (0.02 - 1e-4) / 999, 1e-15);
    /* the paper's schedule leaves almost no signal at t = T: abar_T ~ 4e-5 */
    assert_true(s.abar[999] < 1e-4 && s.abar[999] > 1e-5);
    ddpm_schedule_free(&s);
}

static void test_abar_is_the_running_product_of_alpha(void **state)
{
    (void)state;
    for (int kind = 0; kind < 2; kind++) {
        ddpm_schedule s;
        assert_int_equal(ddpm_schedule_init(&s, (ddpm_schedule_kind)kind, 500, 1e-4, 0.02), 0);
        long double prod = 1.0L;
        for (int i = 0; i < s.T; i++) {
            prod *= 1.0L - (long double)s.beta[i];
            assert_close(s.alpha[i], 1.0 - s.beta[i], 0);
            assert_close(s.abar[i], (double)prod, 1e-13 * (double)prod + 1e-300);
            assert_close(s.abar_prev[i], i == 0 ? 1.0 : s.abar[i - 1], 0);
            assert_close(s.sqrt_abar[i] * s.sqrt_abar[i], s.abar[i], 1e-15);
        }
        ddpm_schedule_free(&s);
    }
}

static void test_posterior_variance_matches_formula(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02), 0);
    assert_close(s.posterior_var[0], 0.0, 0); /* beta~_1 = 0: abar_0 = 1 */
    for (int i = 1; i < s.T; i++) {
        double expect = (1 - s.abar[i - 1]) / (1 - s.abar[i]) * s.beta[i];
        assert_close(s.posterior_var[i], expect, 1e-15);
        assert_true(s.posterior_var[i] <= s.beta[i]);
    }
    ddpm_schedule_free(&s);
}

static void test_cosine_abar_matches_f_t_over_f_0(void **state)
{
    (void)state;
    const int T = 1000;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_COSINE, T, 0, 0), 0);
    double f0 = pow(cos((0.008 / 1.008) * M_PI / 2), 2);
    for (int i = 0; i < T; i++) {
        if (s.beta[i] >= 0.999)
            break; /* clipped steps leave the closed form by design */
        double t = i + 1;
        double f = pow(cos(((t / T) + 0.008) / 1.008 * M_PI / 2), 2);
        assert_close(s.abar[i], f / f0, 1e-12);
    }
    for (int i = 0; i < T; i++)
        assert_true(s.beta[i] > 0 && s.beta[i] <= 0.999);
    assert_close(s.beta[T - 1], 0.999, 0); /* the last step is clipped */
    ddpm_schedule_free(&s);
}

static void test_posterior_mean_from_x0_equals_eps_form_with_true_noise(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02), 0);
    enum { D = 37 };
    float x0[D], eps[D], x_t[D], m1[D], m2[D], x0_back[D];
    tu_fill_uniform(x0, D, 1, -1, 1);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 2, 0);
    ddpm_rng_normal_fill(&rng, eps, D);
    const int steps[] = {0, 1, 10, 500, 998, 999};
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        int i = steps[k];
        ddpm_q_sample(x_t, x0, eps, &i, 1, D, &s);
        ddpm_posterior_mean(m1, x0, x_t, i, D, &s);
        ddpm_eps_mean(m2, x_t, eps, i, D, &s);
        /* float arithmetic on O(1) values; the eps form divides by sqrt(alpha) <= 1.01 */
        assert_true(tu_max_abs_diff(m1, m2, D, NULL) < 2e-5);
        ddpm_predict_x0(x0_back, x_t, eps, i, D, &s);
        /* 1/sqrt(abar) amplifies float rounding: about 1e-7 / sqrt(abar_T) ~ 2e-5 at i = 999 */
        assert_true(tu_max_abs_diff(x0_back, x0, D, NULL) < 1e-6 / s.sqrt_abar[i] + 1e-6);
    }
    ddpm_schedule_free(&s);
}

static void test_q_sample_uses_each_images_own_step(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 100, 1e-4, 0.02), 0);
    float x0[2 * 3] = {1, 1, 1, -1, -1, -1}, eps[6] = {0, 0, 0, 1, 1, 1}, x_t[6];
    int i[2] = {0, 99};
    ddpm_q_sample(x_t, x0, eps, i, 2, 3, &s);
    assert_close(x_t[0], (float)s.sqrt_abar[0], 1e-7);
    assert_close(x_t[5], (float)(-s.sqrt_abar[99] + s.sqrt_one_minus_abar[99]), 1e-6);
    ddpm_schedule_free(&s);
}

static void test_invalid_schedules_are_refused(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_not_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 0, 1e-4, 0.02), 0);
    assert_int_not_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 10, 0.5, 0.1), 0);
    assert_int_not_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 10, 1e-4, 1.0), 0);
    ddpm_schedule_kind k;
    assert_int_equal(ddpm_schedule_parse("cosine", &k), 0);
    assert_int_equal(k, DDPM_SCHEDULE_COSINE);
    assert_int_not_equal(ddpm_schedule_parse("quadratic", &k), 0);
}

/* The continuous schedule: at every trained index alpha and sigma are the
 * stored values and lambda their half log-SNR; between two indices log alpha is
 * the straight line between its two knots (checked at a quarter and a half);
 * lambda decreases strictly; t(lambda) inverts lambda on and between the knots
 * (DPM-Solver's discrete NoiseScheduleVP does the same). */
static void test_continuous_schedule_knots_interpolation_and_inverse(void **state)
{
    (void)state;
    for (int kind = 0; kind < 2; kind++) {
        ddpm_schedule s;
        assert_int_equal(ddpm_schedule_init(&s, (ddpm_schedule_kind)kind, 1000, 1e-4, 0.02), 0);
        double prev = INFINITY;
        for (int i = 0; i < 1000; i++) {
            assert_true(ddpm_schedule_alpha(&s, i) == s.sqrt_abar[i]);
            assert_true(ddpm_schedule_sigma(&s, i) == s.sqrt_one_minus_abar[i]);
            double lambda = ddpm_schedule_lambda(&s, i);
            assert_close(lambda, 0.5 * log(s.abar[i] / (1 - s.abar[i])), 1e-9 * fmax(1, fabs(lambda)));
            assert_true(lambda < prev);
            prev = lambda;
            /* the inverse returns the knot */
            assert_close(ddpm_schedule_t_of_lambda(&s, lambda), i, 1e-6);
            if (i == 999)
                break;
            double la0 = 0.5 * log(s.abar[i]), la1 = 0.5 * log(s.abar[i + 1]);
            for (int q = 1; q <= 2; q++) {
                double f = 0.25 * q, t = i + f;
                double la = ddpm_schedule_log_alpha(&s, t);
                assert_close(la, la0 + f * (la1 - la0), 1e-12 * fmax(1, fabs(la)));
                double a = ddpm_schedule_alpha(&s, t), sg = ddpm_schedule_sigma(&s, t);
                assert_close(a * a + sg * sg, 1, 1e-12);
                assert_true(a < s.sqrt_abar[i] && a > s.sqrt_abar[i + 1]);
                double l = ddpm_schedule_lambda(&s, t);
                assert_true(l < ddpm_schedule_lambda(&s, i) && l > ddpm_schedule_lambda(&s, i + 1));
                assert_close(ddpm_schedule_t_of_lambda(&s, l), t, 1e-6);
            }
        }
        ddpm_schedule_free(&s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_betas_are_evenly_spaced_from_start_to_end),
        cmocka_unit_test(test_abar_is_the_running_product_of_alpha),
        cmocka_unit_test(test_posterior_variance_matches_formula),
        cmocka_unit_test(test_cosine_abar_matches_f_t_over_f_0),
        cmocka_unit_test(test_posterior_mean_from_x0_equals_eps_form_with_true_noise),
        cmocka_unit_test(test_q_sample_uses_each_images_own_step),
        cmocka_unit_test(test_invalid_schedules_are_refused),
        cmocka_unit_test(test_continuous_schedule_knots_interpolation_and_inverse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
