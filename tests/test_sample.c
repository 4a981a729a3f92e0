/* Tests of the samplers on stub eps functions: single steps by hand, DDIM vs
 * DDPM equivalence, reproducibility, and sampling a known distribution with its
 * exact eps (so an off-by-one step between sampler and network shows up). And
 * sampling a U-Net to files: grid, per-image PNGs, trajectory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>

#include "ddpm/sample.h"
#include "ddpm/solver.h"
#include "ddpm/vp.h"
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

static void test_ddpm_step_matches_algorithm_2_by_hand(void **state)
{
    (void)state;
    enum { D = 5 };
    float x_t[D] = {0.3f, -1.2f, 2.0f, 0.0f, 0.7f}, eps[D] = {0.1f, -0.4f, 1.5f, 0.2f, -0.9f};
    float z[D] = {1.0f, -0.5f, 0.25f, 2.0f, -1.0f}, out[D], x0[D];
    const int steps[] = {1, 17, 500, 999};
    for (size_t k = 0; k < 4; k++) {
        int i = steps[k];
        double beta = 1e-4 + (0.02 - 1e-4) * i / 999.0, abar = 1;
        for (int j = 0; j <= i; j++)
            abar *= 1 - (1e-4 + (0.02 - 1e-4) * j / 999.0);
        tu_sampler_step(out, x0, x_t, DDPM_PRED_EPS, eps, NULL, z, i, D, &sched, DDPM_VAR_BETA, 0, 0, 0, 0);
        for (int d = 0; d < D; d++) {
            double expect = (x_t[d] - beta / sqrt(1 - abar) * eps[d]) / sqrt(1 - beta) + sqrt(beta) * z[d];
            assert_close(out[d], expect, 2e-6 * (1 + fabs(expect)));
            assert_close(x0[d], (x_t[d] - sqrt(1 - abar) * eps[d]) / sqrt(abar), 1e-5 / sqrt(abar));
        }
    }
    /* at t = 1 no noise is added */
    tu_sampler_step(out, NULL, x_t, DDPM_PRED_EPS, eps, NULL, z, 0, D, &sched, DDPM_VAR_BETA, 0, 0, 0, 0);
    for (int d = 0; d < D; d++)
        assert_close(out[d], (x_t[d] - 1e-4 / sqrt(1e-4) * eps[d]) / sqrt(1 - 1e-4), 1e-5);
}

static void test_ddpm_clipped_mean_equals_eps_form_when_x0_is_inside(void **state)
{
    (void)state;
    enum { D = 4 };
    /* x_t built from an x0 inside [-1, 1], so clipping changes nothing */
    float x0[D] = {0.5f, -0.25f, 0.9f, -0.8f}, e[D] = {0.3f, -1.0f, 0.6f, 0.1f}, x_t[D];
    float z[D] = {0.5f, 0.5f, -0.5f, 1.0f}, a[D], b[D];
    for (int i = 1; i < 1000; i += 111) {
        ddpm_q_sample(x_t, x0, e, &i, 1, D, &sched);
        tu_sampler_step(a, NULL, x_t, DDPM_PRED_EPS, e, NULL, z, i, D, &sched, DDPM_VAR_BETA_TILDE, 0, 0, 0, 0);
        tu_sampler_step(b, NULL, x_t, DDPM_PRED_EPS, e, NULL, z, i, D, &sched, DDPM_VAR_BETA_TILDE, 1, 0, 0, 0);
        assert_true(tu_max_abs_diff(a, b, D, NULL) < 1e-5);
    }
    /* and clipping bounds the predicted x0 when it is outside */
    float big[D] = {5, -5, 5, -5}, x0c[D];
    tu_sampler_step(a, x0c, big, DDPM_PRED_EPS, e, NULL, z, 10, D, &sched, DDPM_VAR_BETA, 1, 0, 0, 0);
    for (int d = 0; d < D; d++)
        assert_true(fabsf(x0c[d]) <= 1.0f);
}

static void test_ddim_step_eta0_and_eta1_by_hand(void **state)
{
    (void)state;
    enum { D = 3 };
    float x_t[D] = {0.4f, -0.7f, 1.1f}, eps[D] = {0.2f, 0.9f, -0.3f}, z[D] = {1.0f, -2.0f, 0.5f}, out[D];
    int i = 600, ip = 500;
    double a = sched.abar[i], ap = sched.abar[ip];
    for (int pass = 0; pass < 2; pass++) {
        float eta = pass ? 1.0f : 0.0f;
        tu_sampler_step(out, NULL, x_t, DDPM_PRED_EPS, eps, NULL, z, i, D, &sched, DDPM_VAR_BETA, 0, 1, ip, eta);
        double sigma = eta * sqrt((1 - ap) / (1 - a) * (1 - a / ap));
        for (int d = 0; d < D; d++) {
            double x0 = (x_t[d] - sqrt(1 - a) * eps[d]) / sqrt(a);
            double expect = sqrt(ap) * x0 + sqrt(1 - ap - sigma * sigma) * eps[d] + sigma * z[d];
            assert_close(out[d], expect, 1e-5 * (1 + fabs(expect)));
        }
    }
    /* the last DDIM step returns the predicted x0 */
    tu_sampler_step(out, NULL, x_t, DDPM_PRED_EPS, eps, NULL, z, 0, D, &sched, DDPM_VAR_BETA, 0, 1, -1, 1.0f);
    for (int d = 0; d < D; d++)
        assert_close(out[d], (x_t[d] - sched.sqrt_one_minus_abar[0] * eps[d]) / sched.sqrt_abar[0], 1e-5);
}

static void test_ddim_all_steps_eta1_equals_ddpm_beta_tilde_step_by_step(void **state)
{
    (void)state;
    enum { D = 16 };
    float x_t[D], eps[D], z[D], a[D], b[D];
    tu_fill_uniform(x_t, D, 1, -2, 2);
    tu_fill_uniform(eps, D, 2, -2, 2);
    tu_fill_uniform(z, D, 3, -2, 2);
    for (int i = 0; i < 1000; i++) {
        tu_sampler_step(a, NULL, x_t, DDPM_PRED_EPS, eps, NULL, z, i, D, &sched, DDPM_VAR_BETA, 0, 1, i - 1, 1.0f);
        tu_sampler_step(b, NULL, x_t, DDPM_PRED_EPS, eps, NULL, z, i, D, &sched, DDPM_VAR_BETA_TILDE, 0, 0, 0, 0);
        /* both are O(1) sums of a few float products */
        if (tu_max_abs_diff(a, b, D, NULL) > 2e-5)
            fprintf(stderr, "step %d differs by %g\n", i, tu_max_abs_diff(a, b, D, NULL));
        assert_true(tu_max_abs_diff(a, b, D, NULL) < 2e-5);
    }
}

static void test_ddim_timesteps_are_an_increasing_uniform_subsequence(void **state)
{
    (void)state;
    int seq[1000];
    assert_int_equal(ddpm_ddim_timesteps(seq, 1000, 1000), 1000);
    for (int k = 0; k < 1000; k++)
        assert_int_equal(seq[k], k);
    assert_int_equal(ddpm_ddim_timesteps(seq, 10, 1000), 10);
    assert_int_equal(seq[0], 0);
    assert_int_equal(seq[1], 111);
    assert_int_equal(seq[9], 999);
    assert_int_equal(ddpm_ddim_timesteps(seq, 1, 1000), 1);
    assert_int_equal(seq[0], 999);
    assert_true(ddpm_ddim_timesteps(seq, 1001, 1000) < 0);
    assert_true(ddpm_ddim_timesteps(seq, 0, 1000) < 0);
}

/* Data x0 ~ N(mu, s^2) per dimension: then x_t ~ N(sqrt(abar) mu, abar s^2 + 1 - abar)
 * and the exact eps prediction E[eps | x_t] = sqrt(1-abar)(x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar). */
typedef struct {
    const ddpm_schedule *s;
    double mu, var;
    size_t D;
    long calls;
    ddpm_prediction pred; /* what the stub returns: the exact eps in this form */
} gauss_ctx;

static void gaussian_eps(void *opaque, float *eps, const float *x_t, const double *t, const int *y, int B)
{
    (void)y;
    gauss_ctx *g = opaque;
    for (int b = 0; b < B; b++) {
        int i = (int)t[b];
        assert_true(i == t[b]); /* DDPM and DDIM evaluate at the trained steps */
        double abar = g->s->abar[i];
        double scale = sqrt(1 - abar) / (abar * g->var + 1 - abar);
        double abar_prev = i > 0 ? g->s->abar[i - 1] : 1.0, beta = g->s->beta[i];
        for (size_t d = 0; d < g->D; d++) {
            size_t k = (size_t)b * g->D + d;
            double e = scale * (x_t[k] - sqrt(abar) * g->mu);
            /* the same prediction in the other forms, closed forms written out here */
            double x0 = (x_t[k] - sqrt(1 - abar) * e) / sqrt(abar);
            double v = sqrt(abar) * e - sqrt(1 - abar) * x0;
            double mu = sqrt(abar_prev) * beta / (1 - abar) * x0 + sqrt(1 - beta) * (1 - abar_prev) / (1 - abar) * x_t[k];
            double out = g->pred == DDPM_PRED_X0 ? x0 : g->pred == DDPM_PRED_V ? v : g->pred == DDPM_PRED_MU ? mu : e;
            eps[k] = (float)out;
        }
    }
    g->calls++;
}

static void check_gaussian_samples(const ddpm_sampler_config *c, ddpm_prediction pred, double mean_tol,
                                   double var_rel_tol)
{
    enum { N = 4000, D = 1 };
    float *x = tu_alloc(N * D);
    gauss_ctx g = {.s = &sched, .mu = 0.3, .var = 0.04, .D = D, .pred = pred};
    ddpm_model m;
    tu_stub_model(&m, D, 1, pred, 0, &sched, gaussian_eps, &g);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 2024, DDPM_STREAM_SAMPLE);
    assert_int_equal(ddpm_sample(&m, c, NULL, x, N, 0, &rng, NULL), 0);
    assert_int_equal(g.calls, ddpm_sampler_n_steps(c, &sched));
    double mean = 0, v = 0;
    for (int k = 0; k < N; k++)
        mean += x[k];
    mean /= N;
    for (int k = 0; k < N; k++)
        v += (x[k] - mean) * (x[k] - mean);
    v /= N - 1;
    fprintf(stderr, "  sampler %d (%s) steps %d eta %g: mean %.4f (want 0.3), var %.5f (want 0.04)\n", c->kind,
            ddpm_prediction_name(pred), ddpm_sampler_n_steps(c, &sched), c->eta, mean, v);
    assert_close(mean, 0.3, mean_tol);
    assert_close(v, 0.04, 0.04 * var_rel_tol);
    free(x);
    ddpm_model_close(&m);
}

static void test_samplers_recover_a_gaussian_from_its_exact_eps(void **state)
{
    (void)state;
    /* mean se = 0.2/sqrt(4000) = 3e-3, variance rel. se = sqrt(2/4000) = 2.2%: bounds at about 5 se */
    ddpm_sampler_config c;
    ddpm_sampler_config_default(&c);
    c.clip_x0 = 0;
    check_gaussian_samples(&c, DDPM_PRED_EPS, 0.015, 0.12);
    c.var = DDPM_VAR_BETA_TILDE;
    check_gaussian_samples(&c, DDPM_PRED_EPS, 0.015, 0.12);
    /* deterministic DDIM is an ODE solver: its variance error shrinks with S
       (measured 0.0094 at S = 10, 0.030 at 50, 0.037 at 200, 0.039 at 1000) */
    c.kind = DDPM_SAMPLER_DDIM;
    c.steps = 1000;
    c.eta = 0;
    check_gaussian_samples(&c, DDPM_PRED_EPS, 0.015, 0.12);
    c.steps = 200;
    check_gaussian_samples(&c, DDPM_PRED_EPS, 0.015, 0.12);
    /* eta = 1 on all steps is ancestral sampling with beta~ (tested step by step
       above); on a subsequence it loses variance like DDPM with few steps (0.034 at 200) */
    c.eta = 1;
    c.steps = 1000;
    check_gaussian_samples(&c, DDPM_PRED_EPS, 0.015, 0.12);
}

/* The same exact model given as x0, v or mu: each sampler's one conversion of
 * the output must recover the same Gaussian (a sign or coefficient error in any
 * conversion moves the mean or the variance far outside these bounds). */
static void test_samplers_recover_a_gaussian_from_every_prediction_type(void **state)
{
    (void)state;
    for (int k = 1; k < DDPM_N_PREDICTIONS; k++) {
        ddpm_sampler_config c;
        ddpm_sampler_config_default(&c);
        c.clip_x0 = 0;
        check_gaussian_samples(&c, (ddpm_prediction)k, 0.015, 0.12);
        c.clip_x0 = 1; /* the data lies inside [-1, 1]: clipping changes almost nothing */
        check_gaussian_samples(&c, (ddpm_prediction)k, 0.015, 0.12);
        c.kind = DDPM_SAMPLER_DDIM;
        c.steps = 200;
        c.eta = 0;
        check_gaussian_samples(&c, (ddpm_prediction)k, 0.015, 0.12);
        c.eta = 1;
        c.steps = 1000;
        check_gaussian_samples(&c, (ddpm_prediction)k, 0.015, 0.12);
    }
}

static void test_same_seed_same_images_for_any_batch_split(void **state)
{
    (void)state;
    enum { N = 6, D = 10 };
    gauss_ctx g = {.s = &sched, .mu = 0.0, .var = 0.5, .D = D};
    ddpm_sampler_config c;
    ddpm_sampler_config_default(&c);
    c.kind = DDPM_SAMPLER_DDIM;
    c.steps = 20;
    c.eta = 0.5f;
    ddpm_rng rng;
    ddpm_rng_init(&rng, 7, DDPM_STREAM_SAMPLE);
    float whole[N * D], again[N * D], split[N * D];
    ddpm_model m;
    tu_stub_model(&m, D, 1, DDPM_PRED_EPS, 0, &sched, gaussian_eps, &g);
    assert_int_equal(ddpm_sample(&m, &c, NULL, whole, N, 0, &rng, NULL), 0);
    assert_int_equal(ddpm_sample(&m, &c, NULL, again, N, 0, &rng, NULL), 0);
    assert_memory_equal(whole, again, sizeof whole);
    assert_int_equal(ddpm_sample(&m, &c, NULL, split, 4, 0, &rng, NULL), 0);
    assert_int_equal(ddpm_sample(&m, &c, NULL, split + 4 * D, 2, 4, &rng, NULL), 0);
    assert_memory_equal(whole, split, sizeof whole);
    ddpm_rng other;
    ddpm_rng_init(&other, 8, DDPM_STREAM_SAMPLE);
    assert_int_equal(ddpm_sample(&m, &c, NULL, again, N, 0, &other, NULL), 0);
    assert_memory_not_equal(whole, again, sizeof whole);
    ddpm_model_close(&m);
}

static void test_bad_sampler_settings_are_refused(void **state)
{
    (void)state;
    float x[4];
    gauss_ctx g = {.s = &sched, .mu = 0, .var = 1, .D = 4};
    ddpm_model m;
    tu_stub_model(&m, 4, 1, DDPM_PRED_EPS, 0, &sched, gaussian_eps, &g);
    ddpm_sampler_config c;
    ddpm_sampler_config_default(&c);
    c.kind = DDPM_SAMPLER_DDIM;
    c.steps = 1001;
    ddpm_rng rng;
    ddpm_rng_init(&rng, 1, DDPM_STREAM_SAMPLE);
    assert_true(ddpm_sample(&m, &c, NULL, x, 1, 0, &rng, NULL) < 0);
    c.steps = 10;
    c.eta = 1.5f;
    assert_true(ddpm_sample(&m, &c, NULL, x, 1, 0, &rng, NULL) < 0);
    c.eta = 1;
    c.kind = DDPM_N_SAMPLERS; /* not a row of the table */
    assert_true(ddpm_sample(&m, &c, NULL, x, 1, 0, &rng, NULL) < 0);
    ddpm_model_close(&m);
}

/* The progress reports of one ddpm_sample_files call. */
typedef struct {
    int calls, bad;
    int last_first, last_step;
} progress_log;

static void log_progress(void *ctx, const ddpm_sample_progress *p)
{
    progress_log *l = ctx;
    /* steps count 1..n_steps within each batch; batches come in image order */
    int want_step = l->calls == 0 || l->last_step == p->n_steps ? 1 : l->last_step + 1;
    if (p->step != want_step || p->n != 5 || p->first + p->B > p->n)
        l->bad++;
    l->calls++;
    l->last_first = p->first;
    l->last_step = p->step;
}

static unsigned char *load_png(const char *path, int *w, int *h)
{
    int ch;
    unsigned char *px = stbi_load(path, w, h, &ch, 1);
    assert_non_null(px);
    return px;
}

static void test_sample_files_writes_grid_each_and_trajectory_independent_of_batch(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tu_make_tmpdir(dir, sizeof dir, "sample"), 0);
    ddpm_unet_config mc;
    tu_tiny_unet_config(&mc);
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &mc), 0);
    float *params = tu_alloc(net->n_params);
    tu_fill_uniform(params, net->n_params, 3, -0.2f, 0.2f); /* no zero-initialised layers */
    ddpm_schedule s50;
    assert_int_equal(ddpm_schedule_init(&s50, DDPM_SCHEDULE_LINEAR, 50, 1e-4, 0.02), 0);
    char grid[2][300], traj[2][300], each[2][300];
    const int batches[2] = {5, 2};
    progress_log logs[2] = {{0}};
    for (int k = 0; k < 2; k++) {
        snprintf(grid[k], sizeof grid[k], "%s/grid%d.png", dir, k);
        snprintf(traj[k], sizeof traj[k], "%s/traj%d.png", dir, k);
        snprintf(each[k], sizeof each[k], "%s/each%d", dir, k);
        ddpm_sample_files_config c;
        ddpm_sample_files_config_default(&c);
        c.n = 5;
        c.batch = batches[k];
        c.seed = 11;
        c.sampler.steps = 6;
        c.grid_path = grid[k];
        c.each_dir = each[k];
        c.trajectory_path = traj[k];
        c.trajectory_k = 4;
        ddpm_model m;
        assert_int_equal(ddpm_model_from_net(&m, net, params, &s50), 0);
        assert_int_equal(ddpm_sample_files(&m, &c, log_progress, &logs[k]), 0);
        ddpm_model_close(&m);
    }
    /* every step of every batch reported, in order */
    assert_int_equal(logs[0].calls, 6);
    assert_int_equal(logs[1].calls, 3 * 6);
    assert_int_equal(logs[0].bad + logs[1].bad, 0);
    assert_int_equal(logs[1].last_first, 4);
    /* grid: 5 images, ceil(sqrt(5)) = 3 per row, 2 rows, pad 2; trajectory: 5 rows of 4 */
    int w, h, w2, h2;
    unsigned char *g0 = load_png(grid[0], &w, &h), *g1 = load_png(grid[1], &w2, &h2);
    assert_int_equal(w, 3 * 8 + 4 * 2);
    assert_int_equal(h, 2 * 8 + 3 * 2);
    assert_true(w2 == w && h2 == h);
    assert_memory_equal(g0, g1, (size_t)w * h); /* the batch split changes nothing */
    int tw, th;
    unsigned char *t0 = load_png(traj[0], &tw, &th), *t1 = load_png(traj[1], &w2, &h2);
    assert_int_equal(tw, 4 * 8 + 5 * 2);
    assert_int_equal(th, 5 * 8 + 6 * 2);
    assert_memory_equal(t0, t1, (size_t)tw * th);
    /* DDIM's last step lands on its predicted x0: the trajectory's last column is
       the image, and the per-image file is the grid's cell */
    for (int b = 0; b < 5; b++) {
        char path[400];
        snprintf(path, sizeof path, "%s/%05d.png", each[1], b);
        int ew, eh;
        unsigned char *e = load_png(path, &ew, &eh);
        assert_true(ew == 8 && eh == 8);
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) {
                unsigned char in_grid = g0[(2 + (b / 3) * 10 + y) * w + 2 + (b % 3) * 10 + x];
                unsigned char in_traj = t0[(2 + b * 10 + y) * tw + 2 + 3 * 10 + x];
                assert_int_equal(e[y * 8 + x], in_grid);
                assert_int_equal(e[y * 8 + x], in_traj);
            }
        stbi_image_free(e);
    }
    stbi_image_free(g0);
    stbi_image_free(g1);
    stbi_image_free(t0);
    stbi_image_free(t1);
    ddpm_schedule_free(&s50);
    free(params);
    ddpm_unet_free(net);
    tu_remove_tree(dir);
}

/* Classifier-free guidance on a conditional U-Net with random weights (the class
 * embedding too, so that classes differ): W = 1 is exactly the conditional model
 * and runs one forward pass (the model never makes the unconditional pass's
 * buffer), W = 0 the "no class" model, W = 3 the formula. */
static void test_guidance_1_is_the_conditional_model_0_the_unconditional(void **state)
{
    (void)state;
    ddpm_unet_config mc;
    tu_tiny_unet_config(&mc);
    mc.n_classes = 3;
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &mc), 0);
    enum { B = 3, D = 64 };
    float *params = tu_alloc(net->n_params);
    tu_fill_uniform(params, net->n_params, 5, -0.2f, 0.2f);
    ddpm_unet_workspace *ws;
    assert_int_equal(ddpm_unet_workspace_create(&ws, net, B, 0), 0);
    float x[B * D], cond[B * D], none[B * D], out[B * D];
    tu_fill_uniform(x, B * D, 6, -1, 1);
    int i[B] = {10, 500, 999}, y[B] = {0, 2, 1};
    double t[B] = {10, 500, 999};
    ddpm_unet_forward_class(net, params, ws, cond, x, i, y, B, NULL);
    ddpm_unet_forward_class(net, params, ws, none, x, i, NULL, B, NULL);
    size_t at;
    assert_true(tu_max_abs_diff(cond, none, B * D, &at) > 1e-3); /* the classes matter */
    ddpm_model m;
    assert_int_equal(ddpm_model_from_net(&m, net, params, &sched), 0);
    ddpm_guide g = {y, 1};
    assert_int_equal(ddpm_model_output(&m, out, x, t, B, &g), 0);
    assert_memory_equal(out, cond, sizeof out);
    g.guidance = 0;
    assert_int_equal(ddpm_model_output(&m, out, x, t, B, &g), 0);
    assert_memory_equal(out, none, sizeof out);
    assert_null(m.uncond); /* W = 1 and W = 0: one pass each */
    g.labels = NULL; /* no labels: unconditional whatever W */
    g.guidance = 3;
    assert_int_equal(ddpm_model_output(&m, out, x, t, B, &g), 0);
    assert_memory_equal(out, none, sizeof out);
    g.labels = y;
    assert_int_equal(ddpm_model_output(&m, out, x, t, B, &g), 0);
    for (int k = 0; k < B * D; k++)
        assert_true(fabsf(out[k] - (none[k] + 3 * (cond[k] - none[k]))) <= 1e-5f * (1 + fabsf(out[k])));
    ddpm_model_close(&m);
    ddpm_unet_workspace_free(ws);
    free(params);
    ddpm_unet_free(net);
}

/* For the evaluator: ddpm_model_eps returns eps_theta whatever the network
 * predicts (here v: eps = sqrt(1-abar) x_t + sqrt(abar) v), and the model's x0
 * is x0 = sqrt(abar) x_t - sqrt(1-abar) v, at trained steps and between them
 * (alpha and sigma of the continuous schedule). */
static void test_model_converts_a_v_network_to_eps_and_x0(void **state)
{
    (void)state;
    ddpm_unet_config mc;
    tu_tiny_unet_config(&mc);
    mc.prediction = DDPM_PRED_V;
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &mc), 0);
    enum { B = 2, D = 64 };
    float *params = tu_alloc(net->n_params);
    tu_fill_uniform(params, net->n_params, 8, -0.2f, 0.2f);
    float x[B * D], raw[B * D], eps[B * D], x0[B * D];
    tu_fill_uniform(x, B * D, 9, -1, 1);
    int i[B] = {20, 900};
    ddpm_model m;
    assert_int_equal(ddpm_model_from_net(&m, net, params, &sched), 0);
    const double steps[2][B] = {{20, 900}, {20.25, 899.5}};
    for (int q = 0; q < 2; q++) {
        assert_int_equal(ddpm_model_output(&m, raw, x, steps[q], B, NULL), 0);
        if (q == 0)
            ddpm_model_eps(&m, eps, x, i, B);
        else {
            ddpm_pred_out po = {.eps = eps};
            assert_int_equal(ddpm_model_predict(&m, &po, x, steps[q], B, NULL), 0);
        }
        ddpm_pred_out po = {.x0 = x0};
        assert_int_equal(ddpm_model_predict(&m, &po, x, steps[q], B, NULL), 0);
        for (int b = 0; b < B; b++) {
            double a = ddpm_schedule_alpha(&sched, steps[q][b]), sg = ddpm_schedule_sigma(&sched, steps[q][b]);
            for (int d = 0; d < D; d++) {
                double want_eps = sg * x[b * D + d] + a * raw[b * D + d];
                double want_x0 = a * x[b * D + d] - sg * raw[b * D + d];
                assert_true(fabs(eps[b * D + d] - want_eps) < 1e-6);
                assert_true(fabs(x0[b * D + d] - want_x0) < 1e-6);
            }
        }
    }
    /* the mean and the variance exist at the trained steps only */
    float mean[B * D];
    ddpm_pred_out pm = {.mean = mean};
    assert_true(ddpm_model_predict(&m, &pm, x, steps[1], B, NULL) < 0);
    assert_int_equal(ddpm_model_predict(&m, &pm, x, steps[0], B, NULL), 0);
    ddpm_model_close(&m);
    free(params);
    ddpm_unet_free(net);
}

/* The exact eps of the Gaussian data set N(mu, var) at continuous t (the
 * model's schedule between the trained steps): sigma (x - alpha mu) /
 * (alpha^2 var + sigma^2). */
static void gaussian_eps_continuous(void *opaque, float *eps, const float *x_t, const double *t, const int *y, int B)
{
    (void)y;
    gauss_ctx *g = opaque;
    for (int b = 0; b < B; b++) {
        double a = ddpm_schedule_alpha(g->s, t[b]), sg = ddpm_schedule_sigma(g->s, t[b]);
        for (size_t d = 0; d < g->D; d++) {
            size_t k = (size_t)b * g->D + d;
            eps[k] = (float)(sg * (x_t[k] - a * g->mu) / (a * a * g->var + sg * sg));
        }
    }
    g->calls++;
}

/* The same data prediction in double, for the solvers called directly. */
static void gaussian_x0_continuous(void *opaque, float *x0, float *eps, const float *x_t, const double *t, int B)
{
    (void)eps;
    gauss_ctx *g = opaque;
    for (int b = 0; b < B; b++) {
        double a = ddpm_schedule_alpha(g->s, t[b]), sg = ddpm_schedule_sigma(g->s, t[b]);
        for (size_t d = 0; d < g->D; d++) {
            size_t k = (size_t)b * g->D + d;
            double e = sg * (x_t[k] - a * g->mu) / (a * a * g->var + sg * sg);
            x0[k] = (float)((x_t[k] - sg * e) / a);
        }
    }
}

/* Every solver row of the table, run by ddpm_sample on a model, is its solver
 * of solver.h run by hand: x_T of image k is DDPM's (and DDIM's with T steps),
 * the points are the row's spacing from T-1 to 0 with (S+1)/2 points for a
 * singlestep solver, the noise of image k at step j is Philox slot j in the
 * layout of T + 1 slots, the model is called at the continuous points and the
 * network evaluations are the table's count. */
static void test_solver_rows_run_their_solver_on_the_model_from_ddpms_x_T(void **state)
{
    (void)state;
    enum { B = 3, D = 6, FIRST = 5, S = 9 };
    gauss_ctx g = {.s = &sched, .mu = 0.3, .var = 0.04, .D = D, .pred = DDPM_PRED_EPS};
    ddpm_model m;
    tu_stub_model(&m, D, 1, DDPM_PRED_EPS, 0, &sched, gaussian_eps_continuous, &g);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 77, DDPM_STREAM_SAMPLE);
    ddpm_vp_discrete disc;
    assert_int_equal(ddpm_vp_discrete_init(&disc, &sched), 0);
    ddpm_vp vp = ddpm_vp_discrete_view(&disc);
    int n_rows = 0;
    for (int k = 0; k < DDPM_N_SAMPLERS; k++) {
        ddpm_sampler_kind kind = (ddpm_sampler_kind)k;
        if (!ddpm_sampler_has(kind, DDPM_SAMPLER_TAKES_SPACING))
            continue;
        n_rows++;
        const ddpm_solver_info *solver = ddpm_solver_find(ddpm_sampler_name(kind));
        assert_non_null(solver);
        assert_int_equal(solver->stochastic, ddpm_sampler_has(kind, DDPM_SAMPLER_STOCHASTIC));
        ddpm_sampler_config c, c_ddpm;
        ddpm_sampler_config_default(&c_ddpm);
        ddpm_sampler_config_default(&c);
        c.kind = kind;
        c.steps = S;
        c.spacing = (ddpm_spacing)(k % DDPM_N_SPACINGS);
        float x[B * D], want[B * D], scratch[DDPM_SOLVER_SCRATCH * B * D];
        g.calls = 0;
        assert_int_equal(ddpm_sample(&m, &c, NULL, x, B, FIRST, &rng, NULL), 0);
        assert_int_equal(g.calls, ddpm_sampler_evals(kind, S, sched.T));
        /* by hand */
        for (int b = 0; b < B; b++)
            ddpm_sample_initial_noise(want + b * D, D, FIRST + b, &sched, &c_ddpm, &rng);
        int n_points = ddpm_sampler_points(kind, S);
        assert_int_equal(ddpm_solver_n_evals(solver, n_points), ddpm_sampler_evals(kind, S, sched.T));
        double t[S];
        assert_int_equal(ddpm_solver_spacing(t, n_points, c.spacing, &vp, sched.T - 1, 0.0), 0);
        ddpm_solver_philox noise = {rng, sched.T + 1};
        ddpm_solver_env env = {.model = gaussian_x0_continuous, .model_ctx = &g, .vp = &vp, .clip_x0 = 1,
                               .first_image = FIRST, .noise = ddpm_solver_philox_noise, .noise_ctx = &noise};
        assert_int_equal(solver->run(want, scratch, B, D, t, n_points, &env), 0);
        double diff = tu_max_abs_diff(x, want, B * D, NULL);
        if (!(diff < 1e-4))
            fail_msg("%s --spacing %s: the row and its solver by hand differ by %g", ddpm_sampler_name(kind),
                     ddpm_spacing_name(c.spacing), diff);
    }
    assert_int_equal(n_rows, 8);
    ddpm_vp_discrete_free(&disc);
    ddpm_model_close(&m);
}

/* The sampler table: every row's name parses back to its kind, an unknown
 * name and kind are refused, and the costs follow the rows' flags. */
static void test_sampler_table_names_round_trip_and_costs(void **state)
{
    (void)state;
    assert_true(DDPM_N_SAMPLERS >= 2);
    for (int k = 0; k < DDPM_N_SAMPLERS; k++) {
        ddpm_sampler_kind back = DDPM_N_SAMPLERS;
        const ddpm_sampler_info *r = ddpm_sampler_get((ddpm_sampler_kind)k);
        assert_non_null(r);
        assert_true(r->help[0] != '\0');
        assert_int_equal(ddpm_sampler_parse(r->name, &back), 0);
        assert_int_equal(back, k);
    }
    ddpm_sampler_kind kind;
    assert_true(ddpm_sampler_parse("no-such-sampler", &kind) < 0);
    assert_null(ddpm_sampler_get(DDPM_N_SAMPLERS));
    assert_string_equal(ddpm_sampler_name(DDPM_N_SAMPLERS), "?");
    /* ancestral sampling runs all T steps whatever S; DDIM S */
    assert_int_equal(ddpm_sampler_evals(DDPM_SAMPLER_DDPM, 50, 1000), 1000);
    assert_int_equal(ddpm_sampler_evals(DDPM_SAMPLER_DDIM, 50, 1000), 50);
    ddpm_sampler_config c;
    ddpm_sampler_config_default(&c);
    c.steps = 50;
    assert_int_equal(ddpm_sampler_n_steps(&c, &sched), 1000);
    c.kind = DDPM_SAMPLER_DDIM;
    assert_int_equal(ddpm_sampler_n_steps(&c, &sched), 50);
    assert_true(ddpm_sampler_has(DDPM_SAMPLER_DDPM, DDPM_SAMPLER_STOCHASTIC));
    assert_false(ddpm_sampler_has(DDPM_SAMPLER_DDIM, DDPM_SAMPLER_STOCHASTIC));
    /* --steps counts evaluations: a singlestep solver takes (S + 1) / 2 points,
       2 points - 1 evaluations; the others S; every solver row's noise layout is T's */
    assert_int_equal(ddpm_sampler_evals(DDPM_SAMPLER_HEUN, 20, 1000), 19);
    assert_int_equal(ddpm_sampler_evals(DDPM_SAMPLER_HEUN, 21, 1000), 21);
    assert_int_equal(ddpm_sampler_points(DDPM_SAMPLER_DPMPP_2S, 21), 11);
    assert_int_equal(ddpm_sampler_evals(DDPM_SAMPLER_DPMPP_2M, 20, 1000), 20);
    assert_int_equal(ddpm_sampler_points(DDPM_SAMPLER_UNIPC, 20), 20);
    c.kind = DDPM_SAMPLER_DPMPP_3M;
    assert_int_equal(ddpm_sampler_noise_steps(&c, &sched), 1000);
    c.kind = DDPM_SAMPLER_DDIM;
    assert_int_equal(ddpm_sampler_noise_steps(&c, &sched), 50);
    assert_true(ddpm_sampler_has(DDPM_SAMPLER_EULER_A, DDPM_SAMPLER_STOCHASTIC));
    assert_true(ddpm_sampler_has(DDPM_SAMPLER_DPMPP_2M_SDE, DDPM_SAMPLER_STOCHASTIC));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ddpm_step_matches_algorithm_2_by_hand),
        cmocka_unit_test(test_ddpm_clipped_mean_equals_eps_form_when_x0_is_inside),
        cmocka_unit_test(test_ddim_step_eta0_and_eta1_by_hand),
        cmocka_unit_test(test_ddim_all_steps_eta1_equals_ddpm_beta_tilde_step_by_step),
        cmocka_unit_test(test_ddim_timesteps_are_an_increasing_uniform_subsequence),
        cmocka_unit_test(test_samplers_recover_a_gaussian_from_its_exact_eps),
        cmocka_unit_test(test_samplers_recover_a_gaussian_from_every_prediction_type),
        cmocka_unit_test(test_same_seed_same_images_for_any_batch_split),
        cmocka_unit_test(test_bad_sampler_settings_are_refused),
        cmocka_unit_test(test_sample_files_writes_grid_each_and_trajectory_independent_of_batch),
        cmocka_unit_test(test_guidance_1_is_the_conditional_model_0_the_unconditional),
        cmocka_unit_test(test_model_converts_a_v_network_to_eps_and_x0),
        cmocka_unit_test(test_sampler_table_names_round_trip_and_costs),
        cmocka_unit_test(test_solver_rows_run_their_solver_on_the_model_from_ddpms_x_T),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
