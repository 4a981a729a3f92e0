/* Tests of the objectives (loss.h): the bound's terms against their closed
 * forms, every gradient with respect to the network output against central
 * differences for every prediction type (KL terms and the discretized decoder,
 * including the open end bins), min-SNR weighting, importance sampling's
 * per-image weights and terms, and the bound's gradient through the tiny U-Net
 * against finite differences of its parameters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/loss.h"
#include "ddpm/unet.h"
#include "testutil.h"

static ddpm_schedule sched;

static int setup(void **state)
{
    (void)state;
    return ddpm_schedule_init(&sched, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02);
}

static int teardown(void **state)
{
    (void)state;
    ddpm_schedule_free(&sched);
    return 0;
}

enum { D = 40 };

typedef struct {
    float *out;
    const float *x0, *x_t;
    int i;
    ddpm_prediction pred;
} term_ctx;

static double term_value(void *opaque)
{
    term_ctx *c = opaque;
    return ddpm_vlb_term(NULL, 0, c->out, c->x0, c->x_t, c->i, D, c->pred, &sched);
}

static void test_log_ndtr_is_accurate_in_both_tails(void **state)
{
    (void)state;
    const double z[] = {-40, -31, -30, -29, -10, -1, 0, 1, 5, 6, 10};
    for (size_t k = 0; k < sizeof z / sizeof z[0]; k++) {
        double got = ddpm_log_ndtr(z[k]);
        /* reference: log(0.5 erfc(-z/sqrt 2)) is exact in double until erfc underflows (z < -37) */
        double want = z[k] > -37 ? log(0.5 * erfc(-z[k] / M_SQRT2)) : NAN;
        if (z[k] > -37 && fabs(got - want) > 1e-9 * fmax(1, fabs(want)))
            fail_msg("log_ndtr(%g) = %.15g, want %.15g", z[k], got, want);
        assert_true(isfinite(got));
    }
    /* the asymptotic branch continues the erfc one: -40 below -31 by about the quadratic */
    assert_true(ddpm_log_ndtr(-40) < ddpm_log_ndtr(-31));
}

/* With the exact posterior mean the KL term is only the variance part, D kl0. */
static void test_kl_term_of_the_exact_mean_is_the_variance_part(void **state)
{
    (void)state;
    float x0[D], eps[D], x_t[D], target[D];
    tu_grid_image(x0, D, 1);
    tu_fill_uniform(eps, D, 2, -2, 2);
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++) {
        int i = 500;
        ddpm_q_sample(x_t, x0, eps, &i, 1, D, &sched);
        ddpm_pred_target(target, (ddpm_prediction)k, x0, eps, x_t, i, D, &sched);
        double v = sched.beta[i], pv = sched.posterior_var[i];
        double kl0 = 0.5 * (log(v / pv) + pv / v - 1);
        double got = ddpm_vlb_term(NULL, 0, target, x0, x_t, i, D, (ddpm_prediction)k, &sched);
        /* float target, double arithmetic: the mean is off by ~1e-7 relative */
        assert_true(fabs(got - D * kl0) < 1e-3 * D * kl0 + 1e-6);
    }
}

/* d term / d out against central differences in double. The term varies on the
 * scale s = sigma_t / |d mu / d out|; h is the power of two near 1e-3 s and out
 * is snapped to multiples of 4h, so out +- h is exact in float and the only
 * error is truncation, O((h/s)^2) ~ 1e-6 relative: 2e-3 relative is loose for
 * that and tight for any wrong factor.
 * KL terms at several t and the decoder at t = 1 with out near and far from the
 * target (the far case exercises the log-space tails). */
static void test_vlb_gradient_matches_finite_differences_for_every_prediction(void **state)
{
    (void)state;
    float x0[D], eps[D], x_t[D], out[D], grad[D];
    tu_grid_image(x0, D, 3);
    tu_fill_uniform(eps, D, 4, -2, 2);
    const int steps[] = {0, 1, 7, 300, 999};
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++)
        for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++)
            for (int far = 0; far < 2; far++) {
                int i = steps[s];
                ddpm_prediction p = (ddpm_prediction)k;
                ddpm_q_sample(x_t, x0, eps, &i, 1, D, &sched);
                ddpm_pred_target(out, p, x0, eps, x_t, i, D, &sched);
                /* perturb the output: a little (near the bin) or a lot, scaled so
                   that the mean moves by about 0.5 sigma (near) or 8 sigma (far) */
                ddpm_pred_coef c = ddpm_pred_coefs(p, i, &sched);
                double scale = sqrt(sched.beta[i]) / fabs(c.mu_out), shift = (far ? 8 : 0.5) * scale;
                double h = ldexp(1.0, (int)floor(log2(1e-3 * scale)));
                float noise[D];
                tu_fill_uniform(noise, D, 5 + (uint64_t)s, -1, 1);
                for (int d = 0; d < D; d++)
                    out[d] = (float)(nearbyint((out[d] + shift * noise[d]) / (4 * h)) * 4 * h);
                memset(grad, 0, sizeof grad);
                ddpm_vlb_term(grad, 1.0, out, x0, x_t, i, D, p, &sched);
                term_ctx ctx = {out, x0, x_t, i, p};
                char name[64];
                snprintf(name, sizeof name, "%s i=%d far=%d", ddpm_prediction_name(p), i, far);
                assert_int_equal(tu_check_grad(name, out, grad, D, term_value, &ctx, (float)h, 1e-6, 2e-3),
                                 0);
            }
}

/* The decoder term against its definition: -log of the probability of x0's bin
 * under N(mu, beta_1), bins of half-width 1/255, open at -1 and 1. */
static void test_decoder_term_is_the_discretized_gaussian(void **state)
{
    (void)state;
    float x0[3] = {-1.0f, 0.2f - 0.2f / 255, 1.0f}, x_t[3] = {0, 0, 0}, out[3];
    /* eps prediction at i = 0 with x_t = 0: mu = -beta_1 / (sqrt(alpha_1) sqrt(1-abar_1)) out */
    ddpm_pred_coef c = ddpm_pred_coefs(DDPM_PRED_EPS, 0, &sched);
    double mu[3] = {-0.995, 0.21, 0.99};
    for (int d = 0; d < 3; d++)
        out[d] = (float)(mu[d] / c.mu_out);
    double sigma = sqrt(sched.beta[0]), want = 0;
    for (int d = 0; d < 3; d++) {
        double m = c.mu_out * out[d]; /* what the code sees after float rounding */
        double lo = d == 0 ? 0 : 0.5 * erfc(-((x0[d] - 1.0 / 255) - m) / sigma / M_SQRT2);
        double hi = d == 2 ? 1 : 0.5 * erfc(-((x0[d] + 1.0 / 255) - m) / sigma / M_SQRT2);
        want -= log(hi - lo);
    }
    double got = 0;
    for (int d = 0; d < 3; d++)
        got += ddpm_vlb_term(NULL, 0, out + d, x0 + d, x_t + d, 0, 1, DDPM_PRED_EPS, &sched);
    fprintf(stderr, "  decoder: %.9f nats, by definition %.9f\n", got, want);
    assert_true(fabs(got - want) < 1e-6 * fabs(want));
}

/* min-SNR-gamma: each image's MSE times min(SNR, gamma)/SNR (eps), min(SNR, gamma)
 * (x0) or min(SNR, gamma)/(SNR + 1) (v); the gradient scaled alike. */
static void test_min_snr_weights_each_image(void **state)
{
    (void)state;
    enum { B = 2 };
    float x0[B * D], eps[B * D], x_t[B * D], out[B * D], d_out[B * D], target[B * D], d_plain[B * D];
    tu_grid_image(x0, D, 7);
    tu_grid_image(x0 + D, D, 8);
    tu_fill_uniform(eps, B * D, 9, -2, 2);
    tu_fill_uniform(out, B * D, 10, -1, 1);
    int i[B] = {3, 800}; /* SNR about 2500 and 0.0025 */
    ddpm_q_sample(x_t, x0, eps, i, B, D, &sched);
    for (int k = 0; k < 3; k++) {
        ddpm_prediction p = (ddpm_prediction)k;
        ddpm_loss_config plain, snr;
        ddpm_loss_config_default(&plain);
        snr = plain;
        snr.snr_gamma = 5;
        assert_int_equal(ddpm_loss_config_check(&snr, p, 0), 0);
        tu_loss(d_plain, target, NULL, out, x0, eps, x_t, i, NULL, B, B, D, p, 0, &plain, &sched);
        double got = tu_loss(d_out, target, NULL, out, x0, eps, x_t, i, NULL, B, B, D, p, 0, &snr, &sched);
        double want = 0;
        for (int b = 0; b < B; b++) {
            double abar = sched.abar[i[b]], r = abar / (1 - abar), m = r < 5 ? r : 5;
            double w = p == DDPM_PRED_EPS ? m / r : p == DDPM_PRED_X0 ? m : m / (r + 1);
            double sum = 0;
            for (int d = 0; d < D; d++) {
                double e = (double)out[b * D + d] - target[b * D + d];
                sum += e * e;
                assert_true(fabs(d_out[b * D + d] - w * d_plain[b * D + d]) <=
                            1e-6 * (1 + fabs(d_out[b * D + d])));
            }
            want += w * sum / (B * D);
        }
        assert_true(fabs(got - want) < 1e-9 * (1 + want));
    }
    ddpm_loss_config bad;
    ddpm_loss_config_default(&bad);
    bad.snr_gamma = 5;
    assert_true(ddpm_loss_config_check(&bad, DDPM_PRED_MU, 0) < 0);
}

/* Importance sampling's weights (timestep.h): image b's term, reported
 * unweighted in term[b] (its share of the batch mean times B), enters the value
 * and the gradient times weight[b]; with every weight 1 the value is the
 * unweighted one. vlb and hybrid with min-SNR, a micro-batch of 3 in a batch
 * of 5, steps including the decoder term (i = 0). */
static void test_weights_scale_each_images_term_and_gradient(void **state)
{
    (void)state;
    enum { B = 3, B_MEAN = 5 };
    float x0[B * D], eps[B * D], x_t[B * D], out[B * D], d_out[B * D], d_one[B * D], target[B * D];
    for (int b = 0; b < B; b++)
        tu_grid_image(x0 + b * D, D, 20 + (uint64_t)b);
    tu_fill_uniform(eps, B * D, 21, -2, 2);
    tu_fill_uniform(out, B * D, 22, -1, 1);
    int i[B] = {0, 37, 640};
    ddpm_q_sample(x_t, x0, eps, i, B, D, &sched);
    const double weight[B] = {0.25, 3.0, 40.0}, ones[B] = {1, 1, 1};
    const ddpm_loss_kind kinds[2] = {DDPM_LOSS_VLB, DDPM_LOSS_HYBRID};
    for (int k = 0; k < 2; k++) {
        ddpm_loss_config c;
        ddpm_loss_config_default(&c);
        c.kind = kinds[k];
        c.snr_gamma = kinds[k] == DDPM_LOSS_HYBRID ? 5 : 0;
        c.vlb_weight = 0.01f;
        double term[B], term_one[B];
        double plain = tu_loss(d_one, target, NULL, out, x0, eps, x_t, i, NULL, B, B_MEAN, D, DDPM_PRED_EPS, 0, &c,
                                 &sched);
        double one = tu_loss(d_out, target, term_one, out, x0, eps, x_t, i, ones, B, B_MEAN, D, DDPM_PRED_EPS, 0, &c,
                               &sched);
        double got = tu_loss(d_out, target, term, out, x0, eps, x_t, i, weight, B, B_MEAN, D, DDPM_PRED_EPS, 0, &c,
                               &sched);
        double want = 0, from_terms = 0;
        for (int b = 0; b < B; b++) {
            assert_true(term[b] == term_one[b]); /* the term is unweighted */
            want += weight[b] * term[b] / B_MEAN;
            from_terms += term[b] / B_MEAN;
        }
        fprintf(stderr, "  %s: terms %.6g %.6g %.6g, weighted %.9g, want %.9g\n", ddpm_loss_name(c.kind), term[0],
                term[1], term[2], got, want);
        /* sums of the same doubles in another order: 1e-12 relative */
        assert_close(got, want, 1e-12 * fabs(want));
        assert_close(one, plain, 1e-12 * fabs(plain));
        assert_close(from_terms, plain, 1e-12 * fabs(plain));
        /* the gradient of image b is weight[b] times the unweighted one: both are
           rounded to float once, 2 ulp of float */
        for (int b = 0; b < B; b++)
            for (int d = 0; d < D; d++) {
                double g = d_out[b * D + d], g1 = weight[b] * d_one[b * D + d];
                if (fabs(g - g1) > 2.4e-7 * fabs(g1) + 1e-30)
                    fail_msg("%s: d_out[%d, %d] = %.9g, weight %g times the unweighted %.9g = %.9g",
                             ddpm_loss_name(c.kind), b, d, g, weight[b], (double)d_one[b * D + d], g1);
            }
    }
}

/* The bound through the tiny U-Net: d L_vlb / d params by ddpm_loss and
 * ddpm_unet_backward against central differences of the parameters. */
typedef struct {
    ddpm_unet *net;
    ddpm_unet_workspace *ws;
    float *params, *x0, *eps, *x_t, *out, *d_out, *target;
    int *i, B;
    size_t D;
    ddpm_loss_config loss;
    ddpm_prediction pred;
} net_ctx;

static double net_loss(void *opaque)
{
    net_ctx *c = opaque;
    ddpm_unet_forward(c->net, c->params, c->ws, c->out, c->x_t, c->i, c->B, NULL);
    return tu_loss(c->d_out, c->target, NULL, c->out, c->x0, c->eps, c->x_t, c->i, NULL, c->B, c->B, c->D, c->pred, 0,
                     &c->loss, &sched);
}

static void test_vlb_gradient_through_the_tiny_network(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tu_tiny_unet_config(&cfg);
    cfg.dropout = 0;
    net_ctx c = {.B = 3, .D = 64};
    int steps[3] = {0, 40, 700};
    c.i = steps;
    assert_int_equal(ddpm_unet_create(&c.net, &cfg), 0);
    assert_int_equal(ddpm_unet_workspace_create(&c.ws, c.net, c.B, 1), 0);
    c.params = tu_alloc(c.net->n_params);
    tu_fill_uniform(c.params, c.net->n_params, 31, -0.3f, 0.3f);
    size_t BD = (size_t)c.B * c.D;
    c.x0 = tu_alloc(BD), c.eps = tu_alloc(BD), c.x_t = tu_alloc(BD), c.out = tu_alloc(BD);
    c.d_out = tu_alloc(BD), c.target = tu_alloc(BD);
    tu_fill_uniform(c.x0, BD, 32, -1, 1);
    tu_fill_uniform(c.eps, BD, 33, -2, 2);
    ddpm_q_sample(c.x_t, c.x0, c.eps, c.i, c.B, c.D, &sched);
    ddpm_loss_config_default(&c.loss);
    c.loss.kind = DDPM_LOSS_HYBRID;
    c.loss.vlb_weight = 1e-3f;
    float *grads = tu_alloc(c.net->n_params);
    const ddpm_prediction preds[2] = {DDPM_PRED_EPS, DDPM_PRED_MU};
    const ddpm_loss_kind kinds[2] = {DDPM_LOSS_HYBRID, DDPM_LOSS_VLB};
    for (int r = 0; r < 2; r++) {
        c.pred = preds[r];
        c.loss.kind = kinds[r];
        memset(grads, 0, c.net->n_params * sizeof *grads);
        double L = net_loss(&c);
        ddpm_unet_backward(c.net, c.params, grads, c.ws, c.d_out, c.B);
        fprintf(stderr, "  %s %s loss %.4f\n", ddpm_prediction_name(c.pred), ddpm_loss_name(c.loss.kind), L);
        /* float forward, h = 1e-2 as in the U-Net's own check; the loss is O(1..100)
           so its float rounding is ~1e-5: 1e-2 * |L| absolute + 3e-2 relative */
        int n_bad = 0;
        const char *names[] = {"conv_out.weight", "conv_out.bias", "temb.0.weight", "down.0.conv1.weight",
                               "up.0.conv2.bias"};
        for (size_t t = 0; t < sizeof names / sizeof names[0]; t++) {
            int k = ddpm_unet_find_tensor(c.net, names[t]);
            assert_true(k >= 0);
            const ddpm_tensor_info *ti = &c.net->tensors[k];
            for (size_t j = 0; j < ti->n && j < 6; j++)
                n_bad += tu_check_grad(names[t], c.params + ti->offset + j * (ti->n / 6 + 1) % ti->n,
                                       grads + ti->offset + j * (ti->n / 6 + 1) % ti->n, 1, net_loss, &c,
                                       1e-2f, 1e-4 * (1 + fabs(L)), 3e-2);
        }
        assert_int_equal(n_bad, 0);
    }
    free(grads);
    free(c.x0), free(c.eps), free(c.x_t), free(c.out), free(c.d_out), free(c.target), free(c.params);
    ddpm_unet_workspace_free(c.ws);
    ddpm_unet_free(c.net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_ndtr_is_accurate_in_both_tails),
        cmocka_unit_test(test_kl_term_of_the_exact_mean_is_the_variance_part),
        cmocka_unit_test(test_vlb_gradient_matches_finite_differences_for_every_prediction),
        cmocka_unit_test(test_decoder_term_is_the_discretized_gaussian),
        cmocka_unit_test(test_min_snr_weights_each_image),
        cmocka_unit_test(test_weights_scale_each_images_term_and_gradient),
        cmocka_unit_test(test_vlb_gradient_through_the_tiny_network),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
