/* Tests of Adam, clipping, warm-up and EMA against hand-computed values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "ddpm/optim.h"
#include "testutil.h"

static void test_adam_first_steps_match_hand_computation(void **state)
{
    (void)state;
    /* Adam's first step moves each parameter by lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|) */
    float p[3] = {1, 2, 3}, m[3] = {0}, v[3] = {0}, g[3] = {0.5f, -2.0f, 1e-3f};
    ddpm_adam_step(p, m, v, g, 3, 1, 0.1f, 0.9f, 0.999f, 1e-8f);
    assert_close(p[0], 0.9, 1e-6);
    assert_close(p[1], 2.1, 1e-6);
    assert_close(p[2], 3.0 - 0.1 * 1e-3 / (1e-3 + 1e-8), 1e-6);
    /* second step with g2, computed in double */
    float g2[3] = {1.0f, 1.0f, -1.0f};
    ddpm_adam_step(p, m, v, g2, 3, 2, 0.1f, 0.9f, 0.999f, 1e-8f);
    double expect[3], p1[3] = {0.9, 2.1, 3.0 - 0.1 * 1e-3 / (1e-3 + 1e-8)};
    for (int i = 0; i < 3; i++) {
        double mm = 0.9 * (0.1 * g[i]) + 0.1 * g2[i];
        double vv = 0.999 * (0.001 * g[i] * g[i]) + 0.001 * g2[i] * g2[i];
        double mhat = mm / (1 - 0.81), vhat = vv / (1 - 0.998001);
        expect[i] = p1[i] - 0.1 * mhat / (sqrt(vhat) + 1e-8);
        assert_close(p[i], expect[i], 1e-5);
    }
}

static void test_clip_scales_to_max_norm_and_leaves_small_gradients(void **state)
{
    (void)state;
    float g[4] = {3, 4, 0, 0};
    double norm = ddpm_clip_global_norm(g, 4, 1.0f);
    assert_close(norm, 5.0, 1e-12);
    assert_close(ddpm_global_norm(g, 4), 1.0, 1e-5);
    assert_close(g[0] / g[1], 0.75, 1e-6);
    float h[2] = {0.3f, 0.4f};
    ddpm_clip_global_norm(h, 2, 1.0f);
    assert_true(h[0] == 0.3f);
    assert_true(h[1] == 0.4f);
}

static void test_global_norm_is_exact_and_thread_count_independent(void **state)
{
    (void)state;
    size_t n = 1000003;
    float *g = tu_alloc(n);
    tu_fill_uniform(g, n, 7, -1, 1);
    double ref = 0;
    for (size_t i = 0; i < n; i++)
        ref += (double)g[i] * g[i];
    omp_set_num_threads(1);
    double a = ddpm_global_norm(g, n);
    omp_set_num_threads(2);
    double b = ddpm_global_norm(g, n);
    assert_true(a == b);
    assert_close(a, sqrt(ref), 1e-9 * sqrt(ref));
    free(g);
}

/* Inputs where the order of the chunk sums decides the result: 32 chunks of 2^16 floats
 * with sums of squares 2^52, 2^52, then 1 in each of the other 30. In chunk order,
 * every 2^53 + 1 rounds back to 2^53 (ties to even): the norm is sqrt(2^53). Split
 * over two threads as an OpenMP reduction does, the second thread's 16 ones add up
 * exactly and 2^53 + 16 survives: the norm differs by about 3 ulps. */
static void test_global_norm_sums_chunks_in_a_fixed_order(void **state)
{
    (void)state;
    const size_t chunk = 1 << 16, n_chunks = 32, n = n_chunks * chunk;
    float *g = calloc(n, sizeof *g);
    assert_non_null(g);
    g[0] = g[chunk] = 67108864.0f; /* 2^26, squared 2^52 */
    for (size_t c = 2; c < n_chunks; c++)
        g[c * chunk] = 1.0f;
    omp_set_num_threads(1);
    double a = ddpm_global_norm(g, n);
    omp_set_num_threads(2);
    double b = ddpm_global_norm(g, n);
    if (a != b)
        fail_msg("norm at 1 thread %.17g, at 2 threads %.17g", a, b);
    assert_true(a == sqrt(9007199254740992.0)); /* the chunk-order sum, 2^53 */
    free(g);
}

static void test_warmup_is_linear_then_constant(void **state)
{
    (void)state;
    ddpm_optim_config c;
    ddpm_optim_config_default(&c);
    c.lr = 1e-3f;
    c.warmup = 100;
    assert_close(ddpm_lr_at(&c, 1), 1e-5, 1e-12);
    assert_close(ddpm_lr_at(&c, 50), 5e-4, 1e-10);
    assert_close(ddpm_lr_at(&c, 100), 1e-3, 1e-10);
    assert_close(ddpm_lr_at(&c, 5000), 1e-3, 1e-10);
    c.warmup = 0;
    assert_close(ddpm_lr_at(&c, 1), 1e-3, 1e-10);
}

static void test_cosine_schedule_matches_closed_form_after_warmup(void **state)
{
    (void)state;
    ddpm_optim_config c;
    ddpm_optim_config_default(&c);
    assert_int_equal(c.lr_schedule, DDPM_LR_CONSTANT); /* the default stays constant */
    c.lr = 1e-3f;
    c.warmup = 100;
    c.lr_schedule = DDPM_LR_COSINE;
    c.lr_min = 1e-5f;
    c.lr_final_step = 1100;
    /* float results of double arithmetic: a few ulps of 1e-3 */
    const double tol = 1e-9, lr = 1e-3, lo = 1e-5;
    assert_close(ddpm_lr_at(&c, 50), 5e-4, tol); /* warm-up unchanged */
    assert_close(ddpm_lr_at(&c, 100), lr, tol);  /* p = 0 */
    for (long step = 100; step <= 1100; step += 50) {
        double p = (step - 100) / 1000.0;
        assert_close(ddpm_lr_at(&c, step), lo + (lr - lo) * 0.5 * (1 + cos(M_PI * p)), tol);
    }
    assert_close(ddpm_lr_at(&c, 600), (lr + lo) / 2, tol); /* halfway: the mean */
    assert_close(ddpm_lr_at(&c, 1100), lo, tol);          /* the final step: lr_min */
    assert_close(ddpm_lr_at(&c, 5000), lo, tol);          /* and after it */
    for (long step = 101; step <= 1100; step++)
        assert_true(ddpm_lr_at(&c, step) <= ddpm_lr_at(&c, step - 1));
    /* no warm-up: the decay starts at step 0 */
    c.warmup = 0;
    c.lr_final_step = 10;
    assert_close(ddpm_lr_at(&c, 5), lo + (lr - lo) * 0.5 * (1 + cos(M_PI * 0.5)), tol);
    /* a final step inside the warm-up: lr_min once the warm-up is over */
    c.warmup = 100;
    c.lr_final_step = 50;
    assert_close(ddpm_lr_at(&c, 100), lo, tol);
    ddpm_lr_schedule k;
    assert_int_equal(ddpm_lr_schedule_parse("cosine", &k), 0);
    assert_int_equal(k, DDPM_LR_COSINE);
    assert_int_equal(ddpm_lr_schedule_parse("constant", &k), 0);
    assert_int_equal(k, DDPM_LR_CONSTANT);
    assert_int_equal(ddpm_lr_schedule_parse("linear", &k), -1);
}

static void test_ema_decay_warms_up_and_update_is_a_convex_mix(void **state)
{
    (void)state;
    assert_close(ddpm_ema_decay_at(0.999f, 0), 0.1, 1e-7);
    assert_close(ddpm_ema_decay_at(0.999f, 90), 0.91, 1e-6);
    assert_close(ddpm_ema_decay_at(0.999f, 100000), 0.999, 1e-7);
    float ema[2] = {1, -1}, p[2] = {3, 1};
    ddpm_ema_update(ema, p, 2, 0.75f);
    assert_close(ema[0], 1.5, 1e-6);
    assert_close(ema[1], -0.5, 1e-6);
}

static void test_adam_minimises_a_quadratic(void **state)
{
    (void)state;
    /* f(p) = sum (p - target)^2 / 2: Adam must land within 1e-3 of the target */
    float p[5] = {0}, m[5] = {0}, v[5] = {0}, g[5], target[5] = {1, -2, 0.5f, 3, -0.25f};
    for (long step = 1; step <= 3000; step++) {
        for (int i = 0; i < 5; i++)
            g[i] = p[i] - target[i];
        ddpm_adam_step(p, m, v, g, 5, step, step < 2000 ? 0.05f : 0.005f, 0.9f, 0.999f, 1e-8f);
    }
    for (int i = 0; i < 5; i++)
        assert_close(p[i], target[i], 1e-3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adam_first_steps_match_hand_computation),
        cmocka_unit_test(test_clip_scales_to_max_norm_and_leaves_small_gradients),
        cmocka_unit_test(test_global_norm_is_exact_and_thread_count_independent),
        cmocka_unit_test(test_global_norm_sums_chunks_in_a_fixed_order),
        cmocka_unit_test(test_warmup_is_linear_then_constant),
        cmocka_unit_test(test_cosine_schedule_matches_closed_form_after_warmup),
        cmocka_unit_test(test_ema_decay_warms_up_and_update_is_a_convex_mix),
        cmocka_unit_test(test_adam_minimises_a_quadratic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
