/* Tests of the prediction types (predict.h): each conversion of the network
 * output to eps, x0 and the reverse mean against the closed forms written out
 * here independently, in double precision, for random x0, eps and steps of both
 * schedules; the float array functions against them; and round trips through
 * each type's training target. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/predict.h"
#include "testutil.h"

enum { D = 257, N_STEPS = 12 };

/* The closed forms (DDPM eqs. 4, 7, 11; v of Salimans & Ho 2022), from x0 and eps. */
typedef struct {
    double x_t, eps, x0, v, mu;
} truth;

static truth closed_form(double x0, double eps, int i, const ddpm_schedule *s)
{
    double abar = s->abar[i], abar_prev = i > 0 ? s->abar[i - 1] : 1.0, beta = s->beta[i];
    truth r;
    r.x0 = x0;
    r.eps = eps;
    r.x_t = sqrt(abar) * x0 + sqrt(1 - abar) * eps;
    r.v = sqrt(abar) * eps - sqrt(1 - abar) * x0;
    r.mu = sqrt(abar_prev) * beta / (1 - abar) * x0 + sqrt(1 - beta) * (1 - abar_prev) / (1 - abar) * r.x_t;
    return r;
}

static double out_of(ddpm_prediction k, const truth *t)
{
    return k == DDPM_PRED_EPS ? t->eps : k == DDPM_PRED_X0 ? t->x0 : k == DDPM_PRED_V ? t->v : t->mu;
}

/* Steps spread over 0..T-1, always including both ends. */
static void pick_steps(int *steps, int T)
{
    ddpm_rng r;
    ddpm_rng_init(&r, 7, 1);
    steps[0] = 0, steps[1] = T - 1, steps[2] = 1;
    for (int k = 3; k < N_STEPS; k++)
        steps[k] = (int)ddpm_rng_below(&r, (uint64_t)T);
}

static void check_coefs_on_schedule(const ddpm_schedule *s)
{
    float x0[D], eps[D];
    tu_fill_uniform(x0, D, 11, -1, 1);
    ddpm_rng r;
    ddpm_rng_init(&r, 12, 1);
    ddpm_rng_normal_fill(&r, eps, D);
    int steps[N_STEPS];
    pick_steps(steps, s->T);
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++) {
        double worst = 0;
        for (int n = 0; n < N_STEPS; n++) {
            int i = steps[n];
            ddpm_pred_coef c = ddpm_pred_coefs((ddpm_prediction)k, i, s);
            for (int d = 0; d < D; d++) {
                truth t = closed_form(x0[d], eps[d], i, s);
                double out = out_of((ddpm_prediction)k, &t);
                double e = c.eps_out * out + c.eps_xt * t.x_t, x = c.x0_out * out + c.x0_xt * t.x_t;
                double mu = c.mu_out * out + c.mu_xt * t.x_t;
                /* double arithmetic on O(1) values, amplified by at most 1/c0 ~ 1e4 for mu
                   at t = T (x0 = (mu - c1 x_t) / c0): 1e-9 is ~1e3 ulps of that */
                double err = fmax(fabs(e - t.eps), fmax(fabs(x - t.x0), fabs(mu - t.mu)));
                if (err > worst)
                    worst = err;
                if (err > 1e-9)
                    fail_msg(
                        "%s at i %d, d %d: eps %.12g want %.12g, x0 %.12g want %.12g, mu %.12g want %.12g",
                        ddpm_prediction_name((ddpm_prediction)k), i, d, e, t.eps, x, t.x0, mu, t.mu);
            }
        }
        fprintf(stderr, "  %s (%s): worst |closed form - conversion| %.3g\n",
                ddpm_prediction_name((ddpm_prediction)k), ddpm_schedule_name(s->kind), worst);
    }
}

static void test_conversions_match_closed_forms_in_double(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02), 0);
    check_coefs_on_schedule(&s);
    ddpm_schedule_free(&s);
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_COSINE, 300, 0, 0), 0);
    check_coefs_on_schedule(&s);
    ddpm_schedule_free(&s);
}

/* The float functions: target of (x0, eps) -> ddpm_pred_to_eps_x0 gives back x0
 * and eps. Float rounding of the output is amplified by the conversion's
 * coefficient (|x0_out| up to 1/c0 for mu at large t), so the tolerance is that
 * coefficient times a few float ulps of the inputs. */
static void test_float_round_trip_through_each_target(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02), 0);
    float x0[D], eps[D], x_t[D], target[D], e2[D], x2[D];
    tu_fill_uniform(x0, D, 21, -1, 1);
    ddpm_rng r;
    ddpm_rng_init(&r, 22, 1);
    ddpm_rng_normal_fill(&r, eps, D);
    int steps[N_STEPS];
    pick_steps(steps, s.T);
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++)
        for (int n = 0; n < N_STEPS; n++) {
            int i = steps[n];
            ddpm_prediction p = (ddpm_prediction)k;
            ddpm_q_sample(x_t, x0, eps, &i, 1, D, &s);
            ddpm_pred_target(target, p, x0, eps, x_t, i, D, &s);
            ddpm_pred_to_eps_x0(e2, x2, p, target, x_t, i, D, &s);
            ddpm_pred_coef c = ddpm_pred_coefs(p, i, &s);
            double amp = 1 + fabs(c.eps_out) + fabs(c.eps_xt) + fabs(c.x0_out) + fabs(c.x0_xt);
            double tol = 8 * 6e-8 * 4 * amp; /* 8 ulps of values up to 4 */
            size_t at;
            double de = tu_max_abs_diff(e2, eps, D, &at), dx = tu_max_abs_diff(x2, x0, D, &at);
            if (de > tol || dx > tol)
                fail_msg("%s at i %d: eps off by %.3g, x0 by %.3g (tolerance %.3g)", ddpm_prediction_name(p),
                         i, de, dx, tol);
            /* and each target against its closed form */
            for (int d = 0; d < D; d++) {
                truth t = closed_form(x0[d], eps[d], i, &s);
                assert_true(fabs(target[d] - out_of(p, &t)) < 1e-5);
            }
        }
    ddpm_schedule_free(&s);
}

static void test_eps_mean_is_algorithm_2_and_equals_eq_7_of_x0(void **state)
{
    (void)state;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02), 0);
    for (int i = 0; i < 1000; i += 37) {
        ddpm_pred_coef c = ddpm_pred_coefs(DDPM_PRED_EPS, i, &s);
        assert_true(fabs(c.mu_xt - 1 / sqrt(s.alpha[i])) < 1e-12);
        assert_true(fabs(c.mu_out + s.beta[i] / (sqrt(s.alpha[i]) * s.sqrt_one_minus_abar[i])) < 1e-12);
        /* eq. 7 of x0(eps) */
        double c0 = s.posterior_coef_x0[i], c1 = s.posterior_coef_xt[i];
        assert_true(fabs(c.mu_out - c0 * c.x0_out) < 1e-9);
        assert_true(fabs(c.mu_xt - (c0 * c.x0_xt + c1)) < 1e-9);
    }
    ddpm_schedule_free(&s);
}

static void test_names_parse_and_unknown_is_refused(void **state)
{
    (void)state;
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++) {
        ddpm_prediction p;
        assert_int_equal(ddpm_prediction_parse(ddpm_prediction_name((ddpm_prediction)k), &p), 0);
        assert_int_equal(p, k);
    }
    ddpm_prediction p;
    assert_int_equal(ddpm_prediction_parse("epsilon", &p), -1);
    assert_int_equal(ddpm_prediction_parse("", &p), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conversions_match_closed_forms_in_double),
        cmocka_unit_test(test_float_round_trip_through_each_target),
        cmocka_unit_test(test_eps_mean_is_algorithm_2_and_equals_eq_7_of_x0),
        cmocka_unit_test(test_names_parse_and_unknown_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
