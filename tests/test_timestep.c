/* Tests of timestep sampling (timestep.h): the importance probabilities against
 * an independent computation from a given history, the warm-up (uniform until
 * every step holds 10 values), the uniform mix, the rolling history, and that
 * the 1 / (T p_t) weighting keeps the estimate of sum_t L_t unbiased. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/rng.h"
#include "ddpm/timestep.h"
#include "testutil.h"

/* Fills step i's history with n values v(i, k), added one call per value. */
static void fill(ddpm_t_history *h, int i, int n, double (*v)(int, int))
{
    for (int k = 0; k < n; k++) {
        float x = (float)v(i, k);
        ddpm_t_history_add(h, &i, &x, 1);
    }
}

static double spread_values(int i, int k)
{
    return 0.05 + 3.0 * exp(-0.7 * i) * (1.0 + 0.4 * sin(1.3 * k + i));
}

/* p_t = (1 - 0.001) w_t / sum_s w_s + 0.001 / T, w_t = sqrt(mean of v^2) of the
 * last 10 values, written out here in long double from the values themselves. */
static void reference_probabilities(long double *p, int T, int n_added, double (*v)(int, int))
{
    long double w[64], total = 0;
    for (int i = 0; i < T; i++) {
        long double sq = 0;
        for (int k = n_added - 10; k < n_added; k++) {
            long double x = (float)v(i, k);
            sq += x * x;
        }
        w[i] = sqrtl(sq / 10);
        total += w[i];
    }
    for (int i = 0; i < T; i++)
        p[i] = 0.999L * w[i] / total + 0.001L / T;
}

static void test_probabilities_match_an_independent_computation_from_a_history(void **state)
{
    (void)state;
    enum { T = 13 };
    ddpm_t_history h;
    assert_int_equal(ddpm_t_history_init(&h, T), 0);
    for (int i = 0; i < T; i++)
        fill(&h, i, 14, spread_values); /* 14 values: the first 4 must have been dropped */
    double p[T], cdf[T];
    long double ref[T];
    assert_int_equal(ddpm_t_probabilities(p, cdf, &h), 1);
    reference_probabilities(ref, T, 14, spread_values);
    double sum = 0;
    for (int i = 0; i < T; i++) {
        /* double against long double of the same formula: a few ulp */
        if (fabsl(p[i] - ref[i]) > 1e-14L * ref[i])
            fail_msg("p[%d] = %.17g, reference %.17Lg", i, p[i], ref[i]);
        sum += p[i];
        assert_true(i == 0 || cdf[i] >= cdf[i - 1]);
        assert_close(cdf[i], sum, 1e-14);
    }
    assert_true(cdf[T - 1] == 1.0);
    /* the terms fall by e^-0.7 per step: p must follow them, not stay uniform */
    assert_true(p[0] > 10 * p[T - 1]);
    ddpm_t_history_free(&h);
}

static void test_history_keeps_the_last_ten_values_oldest_first(void **state)
{
    (void)state;
    ddpm_t_history h;
    assert_int_equal(ddpm_t_history_init(&h, 3), 0);
    /* one call, step 1 repeated and interleaved with step 0: batch order counts */
    int i[16];
    float v[16];
    for (int k = 0; k < 16; k++)
        i[k] = k % 4 == 3 ? 0 : 1, v[k] = (float)k;
    ddpm_t_history_add(&h, i, v, 16);
    assert_int_equal(h.count[0], 4);
    assert_int_equal(h.count[1], 10);
    assert_int_equal(h.count[2], 0);
    const float want0[10] = {3, 7, 11, 15, 0, 0, 0, 0, 0, 0}; /* unused slots stay 0 */
    assert_memory_equal(h.loss, want0, sizeof want0);
    /* step 1 got 0,1,2,4,5,6,8,9,10,12,13,14: the last ten, oldest first */
    const float last1[10] = {2, 4, 5, 6, 8, 9, 10, 12, 13, 14};
    assert_memory_equal(h.loss + 10, last1, sizeof last1);
    assert_false(ddpm_t_history_warm(&h));
    ddpm_t_history_free(&h);
}

static double constant_one(int i, int k)
{
    (void)i, (void)k;
    return 1.0;
}

static void test_warm_up_draws_uniformly_until_every_step_holds_ten_values(void **state)
{
    (void)state;
    enum { T = 6 };
    ddpm_t_history h;
    assert_int_equal(ddpm_t_history_init(&h, T), 0);
    for (int i = 0; i < T; i++)
        fill(&h, i, i == 4 ? 9 : 10, i == 0 ? spread_values : constant_one);
    double p[T], cdf[T];
    assert_int_equal(ddpm_t_probabilities(p, cdf, &h), 0);
    for (int i = 0; i < T; i++)
        assert_true(p[i] == 1.0 / T);
    /* the warm-up draw is the uniform draw (ddpm_rng_below, one counter), weight 1 */
    for (uint64_t g = 0; g < 200; g++) {
        ddpm_rng a, b;
        ddpm_rng_init(&a, 7, DDPM_STREAM_NOISE);
        ddpm_rng_init(&b, 7, DDPM_STREAM_NOISE);
        a.counter = b.counter = 1000 + g;
        double w = 0;
        assert_int_equal(ddpm_t_draw(&w, p, cdf, T, 0, &a), (int)ddpm_rng_below(&b, T));
        assert_true(w == 1.0);
    }
    /* the tenth value of step 4 ends the warm-up */
    fill(&h, 4, 1, constant_one);
    assert_int_equal(ddpm_t_probabilities(p, cdf, &h), 1);
    assert_true(p[0] != p[1]);
    ddpm_t_history_free(&h);
}

static double zero_but_step_two(int i, int k)
{
    (void)k;
    return i == 2 ? 0.5 : 0.0;
}

static double zero_everywhere(int i, int k)
{
    (void)i, (void)k;
    return 0.0;
}

static void test_uniform_mix_keeps_every_probability_positive(void **state)
{
    (void)state;
    enum { T = 8 };
    ddpm_t_history h;
    assert_int_equal(ddpm_t_history_init(&h, T), 0);
    for (int i = 0; i < T; i++)
        fill(&h, i, 10, zero_but_step_two);
    double p[T], cdf[T];
    assert_int_equal(ddpm_t_probabilities(p, cdf, &h), 1);
    for (int i = 0; i < T; i++) {
        double want = i == 2 ? 0.999 + 0.001 / T : 0.001 / T;
        assert_close(p[i], want, 1e-16);
    }
    /* a step whose history is all zero is still drawn, with weight 1 / (T 0.001 / T) = 1000 */
    ddpm_rng r;
    ddpm_rng_init(&r, 3, DDPM_STREAM_NOISE);
    int n_other = 0;
    for (int k = 0; k < 20000; k++) {
        double w;
        int i = ddpm_t_draw(&w, p, cdf, T, 1, &r);
        assert_true(i >= 0 && i < T);
        if (i != 2) {
            n_other++;
            assert_close(w, 1000.0, 1e-9);
        }
    }
    /* expected 20000 * 0.001 * 7/8 = 17.5 draws of the other steps */
    fprintf(stderr, "  draws of the zero-loss steps: %d of 20000 (expected 17.5)\n", n_other);
    assert_true(n_other >= 5 && n_other <= 35);
    /* every value zero: nothing to weight by, uniform */
    for (int i = 0; i < T; i++)
        fill(&h, i, 10, zero_everywhere);
    assert_int_equal(ddpm_t_probabilities(p, cdf, &h), 0);
    for (int i = 0; i < T; i++)
        assert_true(p[i] == 1.0 / T);
    ddpm_t_history_free(&h);
}

/* A fixed synthetic table of the bound's per-step terms L_t, falling over three
 * orders of magnitude as the real ones do (L_0 and the first KL terms dominate). */
static double table_term(int i)
{
    return 2.0 * exp(-0.25 * i) + 0.002;
}

static double noisy_table(int i, int k)
{
    return table_term(i) * (1.0 + 0.3 * sin(0.9 * k + 2.1 * i));
}

/* Mean and standard error over n draws of the trainer's per-image estimate:
 * weight * T L_t (ddpm_loss's term of image b is T L_t / D per dimension, and
 * the batch value is the mean of weight * term). With the importance weight its
 * expectation is sum_t p_t T L_t / (T p_t) = sum_t L_t. weight_one: drop the
 * weight (what a trainer that forgot it would estimate). */
static void estimate(double *mean, double *se, const double *p, const double *cdf, int T, int warm, int n,
                     int weight_one)
{
    ddpm_rng r;
    ddpm_rng_init(&r, 11, DDPM_STREAM_NOISE);
    double sum = 0, sum2 = 0;
    for (int k = 0; k < n; k++) {
        double w;
        int i = ddpm_t_draw(&w, p, cdf, T, warm, &r);
        double x = (weight_one ? 1.0 : w) * T * table_term(i);
        sum += x;
        sum2 += x * x;
    }
    *mean = sum / n;
    *se = sqrt((sum2 / n - *mean * *mean) / (n - 1));
}

static void test_importance_weighting_keeps_the_estimate_unbiased(void **state)
{
    (void)state;
    enum { T = 40, N = 200000 };
    ddpm_t_history h;
    assert_int_equal(ddpm_t_history_init(&h, T), 0);
    for (int i = 0; i < T; i++)
        fill(&h, i, 10, noisy_table);
    double p[T], cdf[T], truth = 0;
    for (int i = 0; i < T; i++)
        truth += table_term(i);
    assert_int_equal(ddpm_t_probabilities(p, cdf, &h), 1);
    double m_imp, se_imp, m_uni, se_uni, m_bad, se_bad;
    estimate(&m_imp, &se_imp, p, cdf, T, 1, N, 0);
    estimate(&m_uni, &se_uni, p, cdf, T, 0, N, 0);
    estimate(&m_bad, &se_bad, p, cdf, T, 1, N, 1);
    fprintf(stderr,
            "  sum_t L_t %.6f; importance %.6f +- %.6f; uniform %.6f +- %.6f; importance without the weight "
            "%.6f +- %.6f\n",
            truth, m_imp, se_imp, m_uni, se_uni, m_bad, se_bad);
    /* unbiased: within 4 standard errors (a fixed seed: this is deterministic;
       4 SE would be exceeded by chance with probability 6e-5) */
    assert_true(fabs(m_imp - truth) < 4 * se_imp);
    assert_true(fabs(m_uni - truth) < 4 * se_uni);
    /* the point of it: a history that predicts the terms cuts the standard error
       (measured 44x smaller here: 0.0009 against 0.040) */
    assert_true(se_imp < 0.5 * se_uni);
    /* and the test can tell: without the weight the estimate is far off */
    assert_true(fabs(m_bad - truth) > 20 * se_bad);
    ddpm_t_history_free(&h);
}

static void test_names_parse_and_simple_loss_is_refused(void **state)
{
    (void)state;
    ddpm_t_sampling s = DDPM_T_UNIFORM;
    assert_int_equal(ddpm_t_sampling_parse("importance", &s), 0);
    assert_int_equal(s, DDPM_T_IMPORTANCE);
    assert_string_equal(ddpm_t_sampling_name(s), "importance");
    assert_int_equal(ddpm_t_sampling_parse("uniform", &s), 0);
    assert_int_equal(s, DDPM_T_UNIFORM);
    assert_int_equal(ddpm_t_sampling_parse("loss-aware", &s), -1);
    assert_int_equal(ddpm_t_sampling_check(DDPM_T_IMPORTANCE, DDPM_LOSS_VLB), 0);
    assert_int_equal(ddpm_t_sampling_check(DDPM_T_IMPORTANCE, DDPM_LOSS_HYBRID), 0);
    assert_int_equal(ddpm_t_sampling_check(DDPM_T_UNIFORM, DDPM_LOSS_SIMPLE), 0);
    assert_true(ddpm_t_sampling_check(DDPM_T_IMPORTANCE, DDPM_LOSS_SIMPLE) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probabilities_match_an_independent_computation_from_a_history),
        cmocka_unit_test(test_history_keeps_the_last_ten_values_oldest_first),
        cmocka_unit_test(test_warm_up_draws_uniformly_until_every_step_holds_ten_values),
        cmocka_unit_test(test_uniform_mix_keeps_every_probability_positive),
        cmocka_unit_test(test_importance_weighting_keeps_the_estimate_unbiased),
        cmocka_unit_test(test_names_parse_and_simple_loss_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
