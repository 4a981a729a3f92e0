/* Tests of learned variances (ddpm_unet_config.learn_sigma; predict.h):
 * the log-variance interpolation at its ends, the bound's learned term against
 * the fixed ones and its gradients (prediction and v) against central
 * differences for every prediction type, the hybrid objective's stopped mean
 * gradient, the evaluator's term against the trainer's, the ancestral step and
 * the samplers and the bound with a [B, 2D] model output, guidance leaving v
 * alone, and the gradient through a tiny learn_sigma U-Net. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/eval.h"
#include "ddpm/loss.h"
#include "ddpm/sample.h"
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

static void fill(float *x, float value)
{
    for (int d = 0; d < D; d++)
        x[d] = value;
}

/* v = 1 is log beta_t, v = -1 log beta~_t (beta~_2 at t = 1), v = 0 halfway. */
static void test_log_variance_interpolates_between_the_fixed_choices(void **state)
{
    (void)state;
    const int steps[] = {0, 1, 2, 500, 999};
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        int i = steps[k];
        ddpm_logvar_coef c = ddpm_learned_logvar_coef(i, &sched);
        double lo = log(sched.posterior_var[i > 0 ? i : 1]), hi = log(sched.beta[i]);
        assert_close(c.lo, lo, 1e-12 * fabs(lo));
        assert_close(c.lo + 2 * c.half, hi, 1e-12 * fabs(hi));
        assert_close(c.lo + c.half, 0.5 * (lo + hi), 1e-12 * fabs(lo));
        assert_true(isfinite(c.lo) && c.half >= 0);
    }
}

/* With v = 1 (sigma^2 = beta_t) the learned term is the fixed-variance term of
 * training (ddpm_vlb_term), for every prediction, at every kind of step. */
static void test_learned_term_at_v_1_is_the_fixed_beta_term(void **state)
{
    (void)state;
    float x0[D], eps[D], x_t[D], out[D], v[D];
    tu_grid_image(x0, D, 1);
    tu_fill_uniform(eps, D, 2, -2, 2);
    fill(v, 1.0f);
    const int steps[] = {0, 1, 37, 500, 999};
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++)
        for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
            int i = steps[s];
            ddpm_prediction p = (ddpm_prediction)k;
            ddpm_q_sample(x_t, x0, eps, &i, 1, D, &sched);
            ddpm_pred_target(out, p, x0, eps, x_t, i, D, &sched);
            tu_fill_uniform(eps, D, 3 + (uint64_t)s, -1, 1);
            for (int d = 0; d < D; d++) /* off the target by a fraction of sigma */
                out[d] +=
                    0.3f * eps[d] * (float)(sqrt(sched.beta[i]) / fabs(ddpm_pred_coefs(p, i, &sched).mu_out));
            double fixed = ddpm_vlb_term(NULL, 0, out, x0, x_t, i, D, p, &sched);
            double learned = ddpm_vlb_term_learned(NULL, NULL, 0, 1, out, v, x0, x_t, i, D, p, &sched);
            if (fabs(learned - fixed) > 1e-9 * fabs(fixed) + 1e-12)
                fail_msg("%s i=%d: learned %.15g, fixed %.15g", ddpm_prediction_name(p), i, learned, fixed);
        }
}

typedef struct {
    float *out, *v;
    const float *x0, *x_t;
    int i;
    ddpm_prediction pred;
} term_ctx;

static double term_value(void *opaque)
{
    term_ctx *c = opaque;
    return ddpm_vlb_term_learned(NULL, NULL, 0, 1, c->out, c->v, c->x0, c->x_t, c->i, D, c->pred, &sched);
}

/* d term / d out and d term / d v against central differences in double, at v
 * inside and outside [-1, 1], the output near and far from its target, the KL
 * terms at several t and the decoder at t = 1 (with its open end bins). h is a
 * power of two and the values are snapped to multiples of 4h, so x +- h is
 * exact in float (see test_loss.c). */
static void test_learned_term_gradients_match_finite_differences(void **state)
{
    (void)state;
    float x0[D], eps[D], x_t[D], out[D], v[D], g_out[D], g_v[D], noise[D];
    tu_grid_image(x0, D, 4);
    tu_fill_uniform(eps, D, 5, -2, 2);
    const int steps[] = {0, 1, 7, 300, 999};
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++)
        for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++)
            for (int far = 0; far < 2; far++) {
                int i = steps[s];
                ddpm_prediction p = (ddpm_prediction)k;
                ddpm_q_sample(x_t, x0, eps, &i, 1, D, &sched);
                ddpm_pred_target(out, p, x0, eps, x_t, i, D, &sched);
                ddpm_pred_coef c = ddpm_pred_coefs(p, i, &sched);
                double scale = sqrt(sched.beta[i]) / fabs(c.mu_out), shift = (far ? 8 : 0.5) * scale;
                double h = ldexp(1.0, (int)floor(log2(1e-3 * scale)));
                tu_fill_uniform(noise, D, 6 + (uint64_t)s, -1, 1);
                for (int d = 0; d < D; d++)
                    out[d] = (float)(nearbyint((out[d] + shift * noise[d]) / (4 * h)) * 4 * h);
                tu_fill_uniform(v, D, 7 + (uint64_t)s, -1.25f, 1.25f);
                double hv = ldexp(1.0, -12);
                for (int d = 0; d < D; d++)
                    v[d] = (float)(nearbyint(v[d] / (4 * hv)) * 4 * hv);
                memset(g_out, 0, sizeof g_out);
                memset(g_v, 0, sizeof g_v);
                ddpm_vlb_term_learned(g_out, g_v, 1.0, 1, out, v, x0, x_t, i, D, p, &sched);
                term_ctx ctx = {out, v, x0, x_t, i, p};
                char name[64];
                snprintf(name, sizeof name, "%s i=%d far=%d out", ddpm_prediction_name(p), i, far);
                assert_int_equal(tu_check_grad(name, out, g_out, D, term_value, &ctx, (float)h, 1e-6, 2e-3),
                                 0);
                snprintf(name, sizeof name, "%s i=%d far=%d v", ddpm_prediction_name(p), i, far);
                assert_int_equal(tu_check_grad(name, v, g_v, D, term_value, &ctx, (float)hv, 1e-6, 2e-3), 0);
                /* mean_grad 0 leaves d_out alone (hybrid's stopped gradient) */
                memset(g_out, 0, sizeof g_out);
                ddpm_vlb_term_learned(g_out, NULL, 1.0, 0, out, v, x0, x_t, i, D, p, &sched);
                for (int d = 0; d < D; d++)
                    assert_true(g_out[d] == 0.0f);
            }
}

/* ddpm_loss with learn_sigma on B = 3 images of a batch of 4, weighted:
 * vlb's gradient (both halves) is the finite difference of the loss; hybrid's
 * prediction half is exactly the MSE's gradient (the bound's is stopped) and
 * its v half the finite difference; the value is the weighted sum of the
 * per-image terms, each MSE + lambda T L / D. */
typedef struct {
    float *out, *d_out, *target;
    const float *x0, *eps, *x_t;
    const int *i;
    const double *w;
    ddpm_prediction pred;
    ddpm_loss_config c;
} loss_ctx;

enum { LB = 3, LB_MEAN = 4 };

static double loss_value(void *opaque)
{
    loss_ctx *c = opaque;
    return tu_loss(c->d_out, c->target, NULL, c->out, c->x0, c->eps, c->x_t, c->i, c->w, LB, LB_MEAN, D,
                     c->pred, 1, &c->c, &sched);
}

static void test_learned_loss_gradients_and_stopped_mean(void **state)
{
    (void)state;
    float x0[LB * D], eps[LB * D], x_t[LB * D], out[LB * 2 * D], d_out[LB * 2 * D], grad[LB * 2 * D];
    float target[LB * D], mse_grad[LB * D], mean_out[LB * D];
    int steps[LB] = {0, 9, 640};
    double w[LB] = {0.5, 2.0, 1.25}, term[LB];
    for (int b = 0; b < LB; b++)
        tu_grid_image(x0 + b * D, D, 10 + (uint64_t)b);
    tu_fill_uniform(eps, LB * D, 20, -2, 2);
    ddpm_q_sample(x_t, x0, eps, steps, LB, D, &sched);
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++) {
        ddpm_prediction p = (ddpm_prediction)k;
        for (int b = 0; b < LB; b++) { /* the target plus 0.5 sigma of noise, snapped */
            float *o = out + b * 2 * D;
            ddpm_pred_target(o, p, x0 + b * D, eps + b * D, x_t + b * D, steps[b], D, &sched);
            double scale = sqrt(sched.beta[steps[b]]) / fabs(ddpm_pred_coefs(p, steps[b], &sched).mu_out);
            double h = ldexp(1.0, (int)floor(log2(1e-3 * scale)));
            float noise[D];
            tu_fill_uniform(noise, D, 30 + (uint64_t)b, -1, 1);
            for (int d = 0; d < D; d++)
                o[d] = (float)(nearbyint((o[d] + 0.5 * scale * noise[d]) / (4 * h)) * 4 * h);
            tu_fill_uniform(o + D, D, 40 + (uint64_t)b, -1, 1);
            for (int d = 0; d < D; d++)
                o[D + d] = (float)(nearbyint(o[D + d] * 1024) / 1024);
        }
        loss_ctx c = {out, grad, target, x0, eps, x_t, steps, w, p, {0}};
        ddpm_loss_config_default(&c.c);
        /* vlb: every value of the output, by image (each its own step size) */
        c.c.kind = DDPM_LOSS_VLB;
        memset(d_out, 0, sizeof d_out);
        tu_loss(d_out, target, NULL, out, x0, eps, x_t, steps, w, LB, LB_MEAN, D, p, 1, &c.c, &sched);
        for (int b = 0; b < LB; b++) {
            double scale = sqrt(sched.beta[steps[b]]) / fabs(ddpm_pred_coefs(p, steps[b], &sched).mu_out);
            float h = (float)ldexp(1.0, (int)floor(log2(1e-3 * scale)));
            char name[64];
            snprintf(name, sizeof name, "vlb %s image %d out", ddpm_prediction_name(p), b);
            assert_int_equal(
                tu_check_grad(name, out + b * 2 * D, d_out + b * 2 * D, D, loss_value, &c, h, 1e-7, 3e-3), 0);
            snprintf(name, sizeof name, "vlb %s image %d v", ddpm_prediction_name(p), b);
            assert_int_equal(tu_check_grad(name, out + b * 2 * D + D, d_out + b * 2 * D + D, D, loss_value,
                                           &c, 1.0f / 4096, 1e-7, 3e-3),
                             0);
        }
        if (p == DDPM_PRED_MU)
            continue; /* hybrid below also checks min-SNR, which mu does not take */
        /* hybrid with min-SNR: the prediction's gradient is the weighted MSE's alone */
        c.c.kind = DDPM_LOSS_HYBRID;
        c.c.vlb_weight = 0.01f;
        c.c.snr_gamma = 5;
        double L =
            tu_loss(d_out, target, term, out, x0, eps, x_t, steps, w, LB, LB_MEAN, D, p, 1, &c.c, &sched);
        ddpm_loss_config simple = c.c;
        simple.kind = DDPM_LOSS_SIMPLE;
        for (int b = 0; b < LB; b++)
            memcpy(mean_out + b * D, out + b * 2 * D, D * sizeof(float));
        double mse = tu_loss(mse_grad, target, NULL, mean_out, x0, eps, x_t, steps, w, LB, LB_MEAN, D, p, 0,
                               &simple, &sched);
        double sum = 0;
        for (int b = 0; b < LB; b++) {
            for (int d = 0; d < D; d++)
                if (d_out[b * 2 * D + d] != mse_grad[b * D + d])
                    fail_msg("hybrid %s: d out[%d, %d] = %.9g, the MSE's alone is %.9g",
                             ddpm_prediction_name(p), b, d, (double)d_out[b * 2 * D + d],
                             (double)mse_grad[b * D + d]);
            double vb = ddpm_vlb_term_learned(NULL, NULL, 0, 1, out + b * 2 * D, out + b * 2 * D + D,
                                              x0 + b * D, x_t + b * D, steps[b], D, p, &sched);
            double mse_b = 0;
            ddpm_pred_target(target, p, x0 + b * D, eps + b * D, x_t + b * D, steps[b], D, &sched);
            for (int d = 0; d < D; d++)
                mse_b += ((double)out[b * 2 * D + d] - target[d]) * ((double)out[b * 2 * D + d] - target[d]);
            double snr = sched.abar[steps[b]] / (1 - sched.abar[steps[b]]);
            double w_snr = p == DDPM_PRED_X0  ? fmin(snr, 5)
                           : p == DDPM_PRED_V ? fmin(snr, 5) / (snr + 1)
                                              : fmin(snr, 5) / snr;
            double want = w_snr * mse_b / D + (double)0.01f * sched.T * vb / D;
            assert_close(term[b], want, 1e-9 * fabs(want));
            sum += w[b] * want / LB_MEAN;
        }
        assert_close(L, sum, 1e-9 * fabs(sum));
        assert_true(L > mse); /* the bound's part is there */
        for (int b = 0; b < LB; b++) {
            char name[64];
            snprintf(name, sizeof name, "hybrid %s image %d v", ddpm_prediction_name(p), b);
            assert_int_equal(tu_check_grad(name, out + b * 2 * D + D, d_out + b * 2 * D + D, D, loss_value,
                                           &c, 1.0f / 4096, 1e-8, 3e-3),
                             0);
        }
    }
}

/* The evaluator's term (eps form of the mean, no clipping) is the trainer's,
 * with learned variances; at v = +-1 it is the fixed beta / beta~ term. */
static void test_evaluator_term_is_the_trainers_and_the_fixed_ones_at_the_ends(void **state)
{
    (void)state;
    float x0[D], eps[D], x_t[D], out[D], v[D];
    tu_grid_image(x0, D, 50);
    const int steps[] = {0, 1, 100, 999};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        int i = steps[s];
        tu_fill_uniform(eps, D, 51, -2, 2);
        ddpm_q_sample(x_t, x0, eps, &i, 1, D, &sched);
        tu_fill_uniform(out, D, 52, -0.2f, 0.2f);
        for (int d = 0; d < D; d++)
            out[d] += eps[d];
        tu_fill_uniform(v, D, 53, -1.2f, 1.2f);
        double train = ddpm_vlb_term_learned(NULL, NULL, 0, 1, out, v, x0, x_t, i, D, DDPM_PRED_EPS, &sched);
        double eval = ddpm_bound_term_v(x0, x_t, out, v, i, D, &sched, DDPM_VAR_LEARNED, 0);
        if (fabs(train - eval) > 1e-7 * fabs(eval))
            fail_msg("i=%d: trainer %.12g, evaluator %.12g", i, train, eval);
        for (int end = 0; end < 2; end++) { /* v = 1: beta; v = -1: beta~ (both beta~_2 at t = 1) */
            fill(v, end ? -1.0f : 1.0f);
            ddpm_var_kind fixed_kind = end ? DDPM_VAR_BETA_TILDE : DDPM_VAR_BETA;
            if (i == 0 && !end)
                continue; /* the evaluator's fixed decoder is beta~_2 for both kinds; v = 1 is beta_1 */
            for (int clip = 0; clip < 2; clip++) {
                double l = ddpm_bound_term_v(x0, x_t, out, v, i, D, &sched, DDPM_VAR_LEARNED, clip);
                double f = ddpm_bound_term(x0, x_t, out, i, D, &sched, fixed_kind, clip);
                if (fabs(l - f) > 1e-9 * fabs(f) + 1e-12)
                    fail_msg("i=%d v=%d clip=%d: learned %.15g, fixed %.15g", i, end ? -1 : 1, clip, l, f);
            }
        }
    }
}

/* The ancestral step: v = 1 is the beta step, v = -1 the beta~ step, and in
 * general x_prev - mean = sigma_d z_d with log sigma_d^2 from v_d. */
static void test_ancestral_step_uses_each_values_variance(void **state)
{
    (void)state;
    float x_t[D], out[D], v[D], z[D], a[D], b[D], mean[D];
    tu_fill_uniform(x_t, D, 60, -2, 2);
    tu_fill_uniform(out, D, 61, -1, 1);
    tu_fill_uniform(z, D, 62, -2, 2);
    const int steps[] = {0, 1, 400, 999};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        int i = steps[s];
        for (int end = 0; end < 2; end++) {
            fill(v, end ? -1.0f : 1.0f);
            tu_sampler_step(a, NULL, x_t, DDPM_PRED_EPS, out, v, z, i, D, &sched, DDPM_VAR_LEARNED, 1, 0, 0, 0);
            tu_sampler_step(b, NULL, x_t, DDPM_PRED_EPS, out, NULL, z, i, D, &sched, end ? DDPM_VAR_BETA_TILDE : DDPM_VAR_BETA, 1, 0, 0, 0);
            for (int d = 0; d < D; d++)
                assert_true(fabsf(a[d] - b[d]) <= 2e-6f * (1 + fabsf(b[d])));
        }
        tu_fill_uniform(v, D, 63, -1.5f, 1.5f);
        tu_sampler_step(a, NULL, x_t, DDPM_PRED_EPS, out, v, z, i, D, &sched, DDPM_VAR_LEARNED, 1, 0, 0, 0);
        float zero[D] = {0};
        tu_sampler_step(mean, NULL, x_t, DDPM_PRED_EPS, out, v, zero, i, D, &sched, DDPM_VAR_LEARNED, 1, 0, 0, 0);
        ddpm_logvar_coef lc = ddpm_learned_logvar_coef(i, &sched);
        for (int d = 0; d < D; d++) {
            double sigma = i == 0 ? 0 : exp(0.5 * (lc.lo + lc.half * (v[d] + 1.0)));
            assert_true(fabs((a[d] - mean[d]) - sigma * z[d]) <= 1e-5 * (1 + fabs(mean[d])));
        }
    }
}

/* A stub model that returns eps = 0.1 x_t and, with learned variances, v = vv
 * after it: the samplers and the evaluator must read the [B, 2D] layout. */
typedef struct {
    int learned;
    float vv;
} stub_ctx;

static void stub_net(void *opaque, float *out, const float *x_t, const double *t, const int *y, int B)
{
    (void)y;
    stub_ctx *c = opaque;
    size_t out_D = c->learned ? 2 * D : D;
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) {
            out[b * out_D + d] = 0.1f * x_t[b * D + d] + 0.001f * (float)t[b] / 1000;
            if (c->learned)
                out[b * out_D + D + d] = c->vv;
        }
}

/* The same as the evaluator's eps function (integer steps). */
static void stub_model(void *opaque, float *out, const float *x_t, const int *i, int B)
{
    double t[8];
    assert_true(B <= 8);
    for (int b = 0; b < B; b++)
        t[b] = i[b];
    stub_net(opaque, out, x_t, t, NULL, B);
}

static void test_samplers_and_bound_read_the_two_part_output(void **state)
{
    (void)state;
    enum { B = 3 };
    ddpm_schedule s50;
    assert_int_equal(ddpm_schedule_init(&s50, DDPM_SCHEDULE_LINEAR, 50, 1e-4, 0.2), 0);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 7, DDPM_STREAM_SAMPLE);
    float xa[B * D], xb[B * D];
    stub_ctx fixed = {0, 0}, learned = {1, 1.0f};
    ddpm_model mf, ml; /* D = 40 values: 10 channels of 2 x 2 */
    tu_stub_model(&mf, 10, 2, DDPM_PRED_EPS, 0, &s50, stub_net, &fixed);
    tu_stub_model(&ml, 10, 2, DDPM_PRED_EPS, 1, &s50, stub_net, &learned);
    for (int kind = 0; kind < 2; kind++) {
        ddpm_sampler_config c;
        ddpm_sampler_config_default(&c);
        c.kind = kind ? DDPM_SAMPLER_DDIM : DDPM_SAMPLER_DDPM;
        c.steps = 20;
        assert_int_equal(ddpm_sample(&mf, &c, NULL, xa, B, 0, &rng, NULL),
                         0);
        c.var = kind ? DDPM_VAR_BETA : DDPM_VAR_LEARNED; /* v = 1: beta */
        assert_int_equal(ddpm_sample(&ml, &c, NULL, xb, B, 0, &rng, NULL),
                         0);
        for (int k = 0; k < B * D; k++)
            assert_true(fabsf(xa[k] - xb[k]) <= 1e-5f * (1 + fabsf(xa[k])));
        learned.vv = -1.0f; /* beta~: another sample for DDPM, the same for DDIM */
        assert_int_equal(ddpm_sample(&ml, &c, NULL, xb, B, 0, &rng, NULL),
                         0);
        size_t at;
        if (kind)
            assert_true(tu_max_abs_diff(xa, xb, B * D, &at) <= 1e-5);
        else
            assert_true(tu_max_abs_diff(xa, xb, B * D, &at) > 1e-3);
        learned.vv = 1.0f;
    }
    /* var learned without a learned-variance model is refused */
    ddpm_sampler_config c;
    ddpm_sampler_config_default(&c);
    c.var = DDPM_VAR_LEARNED;
    assert_true(ddpm_sample(&mf, &c, NULL, xa, B, 0, &rng, NULL) < 0);

    /* the bound and L_simple: v = -1 with var learned is the beta~ bound, L_simple the same */
    float x0[B * D];
    for (int b = 0; b < B; b++)
        tu_grid_image(x0 + b * D, D, 70 + (uint64_t)b);
    ddpm_bound_config bc;
    ddpm_bound_config_default(&bc);
    bc.batch = 2;
    bc.var = DDPM_VAR_BETA_TILDE;
    ddpm_bound_result rf, rl;
    assert_int_equal(ddpm_bound(&rf, x0, B, D, &s50, &bc, stub_model, &fixed, NULL, NULL), 0);
    bc.var = DDPM_VAR_LEARNED;
    bc.learned_var = 1;
    learned.vv = -1.0f;
    assert_int_equal(ddpm_bound(&rl, x0, B, D, &s50, &bc, stub_model, &learned, NULL, NULL), 0);
    assert_close(rl.total.mean, rf.total.mean, 1e-9 * rf.total.mean);
    assert_close(rl.decoder.mean, rf.decoder.mean, 1e-9 * rf.decoder.mean);
    learned.vv = 0.0f; /* halfway: another bound */
    ddpm_bound_result_free(&rl);
    assert_int_equal(ddpm_bound(&rl, x0, B, D, &s50, &bc, stub_model, &learned, NULL, NULL), 0);
    assert_true(fabs(rl.total.mean - rf.total.mean) > 1e-4);
    bc.learned_var = 0; /* var learned needs the layout */
    ddpm_bound_result r3;
    assert_true(ddpm_bound(&r3, x0, B, D, &s50, &bc, stub_model, &fixed, NULL, NULL) < 0);
    ddpm_estimate ea, eb;
    assert_int_equal(ddpm_eval_l_simple(&ea, x0, B, D, &s50, 2, 3, 0, stub_model, &fixed, NULL, NULL), 0);
    assert_int_equal(ddpm_eval_l_simple(&eb, x0, B, D, &s50, 2, 3, 1, stub_model, &learned, NULL, NULL), 0);
    assert_true(ea.mean == eb.mean && ea.se == eb.se);
    ddpm_bound_result_free(&rf);
    ddpm_bound_result_free(&rl);
    ddpm_model_close(&mf);
    ddpm_model_close(&ml);
    ddpm_schedule_free(&s50);
}

/* A class-conditional learn_sigma U-Net with random weights: the output has 2C
 * channels; guidance W = 3 guides the prediction half and keeps the
 * conditional v; the model's eps is the first half. */
static void test_guidance_guides_the_prediction_and_keeps_v(void **state)
{
    (void)state;
    ddpm_unet_config mc;
    tu_tiny_unet_config(&mc);
    mc.n_classes = 3, mc.learn_sigma = 1;
    assert_int_equal(ddpm_unet_out_channels(&mc), 2);
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &mc), 0);
    int k = ddpm_unet_find_tensor(net, "conv_out.weight");
    assert_int_equal(net->tensors[k].shape[0], 2);
    enum { B = 3, N = 64 };
    float *params = tu_alloc(net->n_params);
    tu_fill_uniform(params, net->n_params, 8, -0.2f, 0.2f);
    ddpm_unet_workspace *ws;
    assert_int_equal(ddpm_unet_workspace_create(&ws, net, B, 0), 0);
    float x[B * N], cond[B * 2 * N], none[B * 2 * N], out[B * 2 * N], eps[B * N];
    tu_fill_uniform(x, B * N, 9, -1, 1);
    int i[B] = {10, 500, 999}, y[B] = {0, 2, 1};
    double t[B] = {10, 500, 999};
    ddpm_unet_forward_class(net, params, ws, cond, x, i, y, B, NULL);
    ddpm_unet_forward_class(net, params, ws, none, x, i, NULL, B, NULL);
    ddpm_model m;
    assert_int_equal(ddpm_model_from_net(&m, net, params, &sched), 0);
    ddpm_guide g = {y, 3};
    assert_int_equal(ddpm_model_output(&m, out, x, t, B, &g), 0);
    for (int b = 0; b < B; b++)
        for (int d = 0; d < N; d++) {
            int m = b * 2 * N + d;
            assert_true(fabsf(out[m] - (none[m] + 3 * (cond[m] - none[m]))) <= 1e-5f * (1 + fabsf(out[m])));
            assert_true(out[m + N] == cond[m + N]);
        }
    size_t at;
    assert_true(tu_max_abs_diff(cond, none, B * 2 * N, &at) > 1e-3);
    g.guidance = 1;
    ddpm_pred_out po = {.eps = eps}; /* eps prediction: the output's first half itself */
    assert_int_equal(ddpm_model_predict(&m, &po, x, t, B, &g), 0);
    for (int b = 0; b < B; b++)
        assert_memory_equal(eps + b * N, cond + b * 2 * N, N * sizeof(float));
    ddpm_model_close(&m);
    ddpm_unet_workspace_free(ws);
    free(params);
    ddpm_unet_free(net);
}

/* The bound through a tiny learn_sigma U-Net: d loss / d params by ddpm_loss and
 * ddpm_unet_backward against central differences of the parameters, for vlb
 * (eps and mu) and hybrid (eps), batch 3 at t = 1 and two KL steps. conv_out's
 * rows of both halves are checked. */
typedef struct {
    ddpm_unet *net;
    ddpm_unet_workspace *ws;
    float *params, *x0, *eps, *x_t, *out, *d_out, *target;
    int *i, B;
    size_t D;
    ddpm_loss_config loss;
    ddpm_prediction pred;
    float *frozen; /* hybrid: the prediction at the base point, [B, D] */
} net_ctx;

/* vlb: the loss. hybrid: the objective whose gradient the trainer follows,
 * MSE(prediction) + lambda T/n sum_b L(frozen prediction, v): its bound sees
 * the prediction of the base point, as the stopped gradient does. */
static double net_loss(void *opaque)
{
    net_ctx *c = opaque;
    ddpm_unet_forward(c->net, c->params, c->ws, c->out, c->x_t, c->i, c->B, NULL);
    if (!c->frozen)
        return tu_loss(c->d_out, c->target, NULL, c->out, c->x0, c->eps, c->x_t, c->i, NULL, c->B, c->B,
                         c->D, c->pred, 1, &c->loss, &sched);
    ddpm_loss_config simple = c->loss;
    simple.kind = DDPM_LOSS_SIMPLE;
    float *mean = tu_alloc((size_t)c->B * c->D), *g = tu_alloc((size_t)c->B * c->D);
    for (int b = 0; b < c->B; b++)
        memcpy(mean + b * c->D, c->out + b * 2 * c->D, c->D * sizeof(float));
    double L = tu_loss(g, c->target, NULL, mean, c->x0, c->eps, c->x_t, c->i, NULL, c->B, c->B, c->D,
                         c->pred, 0, &simple, &sched);
    for (int b = 0; b < c->B; b++)
        L += c->loss.vlb_weight * sched.T / ((double)c->B * c->D) *
             ddpm_vlb_term_learned(NULL, NULL, 0, 1, c->frozen + b * c->D, c->out + b * 2 * c->D + c->D,
                                   c->x0 + b * c->D, c->x_t + b * c->D, c->i[b], c->D, c->pred, &sched);
    free(mean);
    free(g);
    return L;
}

static void test_gradient_through_a_tiny_learn_sigma_network(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tu_tiny_unet_config(&cfg);
    cfg.dropout = 0, cfg.learn_sigma = 1;
    net_ctx c = {.B = 3, .D = 64};
    int steps[3] = {0, 40, 700};
    c.i = steps;
    assert_int_equal(ddpm_unet_create(&c.net, &cfg), 0);
    assert_int_equal(ddpm_unet_workspace_create(&c.ws, c.net, c.B, 1), 0);
    c.params = tu_alloc(c.net->n_params);
    tu_fill_uniform(c.params, c.net->n_params, 31, -0.3f, 0.3f);
    /* a smaller head, so that v stays near [-1, 1]: the bound is exponential in
       v, and far outside, h = 1e-2 differences measure curvature, not slope */
    const ddpm_tensor_info *head = &c.net->tensors[ddpm_unet_find_tensor(c.net, "conv_out.weight")];
    for (size_t j = 0; j < head->n; j++)
        c.params[head->offset + j] *= 0.1f;
    size_t BD = (size_t)c.B * c.D;
    c.x0 = tu_alloc(BD), c.eps = tu_alloc(BD), c.x_t = tu_alloc(BD), c.out = tu_alloc(2 * BD);
    c.d_out = tu_alloc(2 * BD), c.target = tu_alloc(BD);
    tu_fill_uniform(c.x0, BD, 32, -1, 1);
    tu_fill_uniform(c.eps, BD, 33, -2, 2);
    ddpm_q_sample(c.x_t, c.x0, c.eps, c.i, c.B, c.D, &sched);
    ddpm_loss_config_default(&c.loss);
    float *grads = tu_alloc(c.net->n_params);
    const ddpm_prediction preds[3] = {DDPM_PRED_EPS, DDPM_PRED_MU, DDPM_PRED_EPS};
    const ddpm_loss_kind kinds[3] = {DDPM_LOSS_VLB, DDPM_LOSS_VLB, DDPM_LOSS_HYBRID};
    for (int r = 0; r < 3; r++) {
        c.pred = preds[r];
        c.loss.kind = kinds[r];
        c.loss.vlb_weight = 0.05f; /* a bound's share large enough to see in the head's gradient */
        memset(grads, 0, c.net->n_params * sizeof *grads);
        c.frozen = NULL;
        double L = net_loss(&c);
        ddpm_unet_backward(c.net, c.params, grads, c.ws, c.d_out, c.B);
        if (c.loss.kind == DDPM_LOSS_HYBRID) {
            c.frozen = tu_alloc(BD);
            for (int b = 0; b < c.B; b++)
                memcpy(c.frozen + b * c.D, c.out + b * 2 * c.D, c.D * sizeof(float));
        }
        float v_lo = 0, v_hi = 0;
        for (size_t j = 0; j < BD; j++) {
            float v = c.out[(j / c.D) * 2 * c.D + c.D + j % c.D];
            v_lo = v < v_lo ? v : v_lo, v_hi = v > v_hi ? v : v_hi;
        }
        fprintf(stderr, "  learned %s %s loss %.4f, v in [%.2f, %.2f]\n", ddpm_prediction_name(c.pred),
                ddpm_loss_name(c.loss.kind), L, v_lo, v_hi);
        int n_bad = 0;
        const char *names[] = {"conv_out.weight", "conv_out.bias", "temb.0.weight", "down.0.conv1.weight",
                               "up.0.conv2.bias"};
        for (size_t t = 0; t < sizeof names / sizeof names[0]; t++) {
            int k = ddpm_unet_find_tensor(c.net, names[t]);
            assert_true(k >= 0);
            const ddpm_tensor_info *ti = &c.net->tensors[k];
            for (size_t j = 0; j < ti->n && j < 6; j++) { /* spread over the tensor: both output halves */
                size_t at = j * (ti->n / 6 + 1) % ti->n;
                if (t == 1)
                    at = j % ti->n;
                n_bad += tu_check_grad(names[t], c.params + ti->offset + at, grads + ti->offset + at, 1,
                                       net_loss, &c, 1e-2f, 1e-4 * (1 + fabs(L)), 3e-2);
            }
        }
        assert_int_equal(n_bad, 0);
        free(c.frozen);
    }
    free(grads);
    free(c.x0), free(c.eps), free(c.x_t), free(c.out), free(c.d_out), free(c.target), free(c.params);
    ddpm_unet_workspace_free(c.ws);
    ddpm_unet_free(c.net);
}

/* L_simple does not train a variance: refused; vlb and hybrid are fine. */
static void test_learned_variance_needs_the_bound(void **state)
{
    (void)state;
    ddpm_loss_config c;
    ddpm_loss_config_default(&c);
    assert_true(ddpm_loss_config_check(&c, DDPM_PRED_EPS, 1) < 0);
    assert_int_equal(ddpm_loss_config_check(&c, DDPM_PRED_EPS, 0), 0);
    c.kind = DDPM_LOSS_VLB;
    assert_int_equal(ddpm_loss_config_check(&c, DDPM_PRED_MU, 1), 0);
    c.kind = DDPM_LOSS_HYBRID;
    assert_int_equal(ddpm_loss_config_check(&c, DDPM_PRED_V, 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_variance_interpolates_between_the_fixed_choices),
        cmocka_unit_test(test_learned_term_at_v_1_is_the_fixed_beta_term),
        cmocka_unit_test(test_learned_term_gradients_match_finite_differences),
        cmocka_unit_test(test_learned_loss_gradients_and_stopped_mean),
        cmocka_unit_test(test_evaluator_term_is_the_trainers_and_the_fixed_ones_at_the_ends),
        cmocka_unit_test(test_ancestral_step_uses_each_values_variance),
        cmocka_unit_test(test_samplers_and_bound_read_the_two_part_output),
        cmocka_unit_test(test_guidance_guides_the_prediction_and_keeps_v),
        cmocka_unit_test(test_gradient_through_a_tiny_learn_sigma_network),
        cmocka_unit_test(test_learned_variance_needs_the_bound),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
