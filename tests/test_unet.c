/* Tests of the whole U-Net: the tensor table, the parameter count of the
 * docs/design.md default, batch independence, and the analytic gradient of every
 * tensor against central finite differences on a tiny config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/ops.h"
#include "ddpm/unet.h"
#include "testutil.h"

static void test_default_config_has_1623169_parameters(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &cfg), 0);
    assert_int_equal(net->n_params, 1623169);
    /* the table tiles the arena without gaps, in order, with unique names */
    size_t off = 0;
    for (int i = 0; i < net->n_tensors; i++) {
        assert_int_equal(net->tensors[i].offset, off);
        off += net->tensors[i].n;
        for (int j = 0; j < i; j++)
            assert_string_not_equal(net->tensors[i].name, net->tensors[j].name);
    }
    assert_int_equal(off, net->n_params);
    /* PyTorch names and shapes of docs/design.md, Network */
    static const struct {
        const char *name;
        int ndim, shape[4];
    } expect[] = {
        {"temb.0.weight", 2, {128, 32}},       {"temb.2.weight", 2, {128, 128}},
        {"conv_in.weight", 4, {32, 1, 3, 3}},  {"down.0.norm1.weight", 1, {32}},
        {"down.2.conv.weight", 4, {32, 32, 3, 3}}, {"down.3.skip.weight", 4, {64, 32, 1, 1}},
        {"down.3.temb_proj.weight", 2, {64, 128}}, {"down.4.q.weight", 4, {64, 64, 1, 1}},
        {"down.9.conv2.weight", 4, {64, 64, 3, 3}}, {"mid.1.proj.bias", 1, {64}},
        {"mid.2.conv1.weight", 4, {64, 64, 3, 3}}, {"up.0.skip.weight", 4, {64, 128, 1, 1}},
        {"up.3.conv.weight", 4, {64, 64, 3, 3}}, {"up.5.norm.weight", 1, {64}},
        {"up.13.skip.weight", 4, {32, 64, 1, 1}}, {"norm_out.bias", 1, {32}},
        {"conv_out.weight", 4, {1, 32, 3, 3}},
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        int k = ddpm_unet_find_tensor(net, expect[i].name);
        if (k < 0)
            fprintf(stderr, "missing tensor %s\n", expect[i].name);
        assert_true(k >= 0);
        assert_int_equal(net->tensors[k].ndim, expect[i].ndim);
        for (int d = 0; d < expect[i].ndim; d++)
            assert_int_equal(net->tensors[k].shape[d], expect[i].shape[d]);
    }
    assert_int_equal(ddpm_unet_find_tensor(net, "up.14.norm1.weight"), -1);
    ddpm_unet_free(net);
}

static void test_impossible_configs_are_refused(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet *net;
    ddpm_unet_config_default(&cfg);
    cfg.image_size = 30; /* not divisible by 4 */
    assert_int_equal(ddpm_unet_create(&net, &cfg), -1);
    assert_non_null(strstr(ddpm_last_error(), "divisible"));
    ddpm_unet_config_default(&cfg);
    cfg.groups = 5; /* does not divide 32 */
    assert_int_equal(ddpm_unet_create(&net, &cfg), -1);
    ddpm_unet_config_default(&cfg);
    cfg.attn_res[0] = 9;
    assert_int_equal(ddpm_unet_create(&net, &cfg), -1);
}

static void test_init_zeroes_residual_outputs_and_bounds_xavier(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &cfg), 0);
    float *p = tu_alloc(net->n_params);
    ddpm_unet_init_params(net, p, 1);
    for (int i = 0; i < net->n_tensors; i++) {
        const ddpm_tensor_info *t = &net->tensors[i];
        double maxabs = 0;
        for (size_t j = 0; j < t->n; j++)
            maxabs = fmax(maxabs, fabs(p[t->offset + j]));
        int zero = strstr(t->name, "conv2.") || strstr(t->name, ".proj.") || strstr(t->name, "conv_out.") ||
                   strstr(t->name, ".bias");
        if (strstr(t->name, "norm") && strstr(t->name, ".weight"))
            assert_close(p[t->offset], 1.0, 0);
        else if (zero)
            assert_close(maxabs, 0.0, 0);
        else {
            size_t rf = t->ndim == 4 ? (size_t)t->shape[2] * t->shape[3] : 1;
            double bound = sqrt(6.0 / ((double)(t->shape[0] + t->shape[1]) * rf));
            assert_true(maxabs <= bound && maxabs > 0.5 * bound);
        }
    }
    free(p);
    ddpm_unet_free(net);
}

/* The tiny network of the gradient check: 8x8 RGB, ch 8, two levels (8 and 16
 * channels, so skip convs exist), attention at 4x4 and in the middle, 2 groups,
 * dropout on (the mask is redrawn identically for every evaluation). */
static void tiny_config(ddpm_unet_config *cfg)
{
    ddpm_unet_config_default(cfg);
    cfg->in_channels = 3;
    cfg->image_size = 8;
    cfg->ch = 8;
    cfg->n_levels = 2;
    cfg->ch_mult[0] = 1, cfg->ch_mult[1] = 2;
    cfg->num_res_blocks = 1;
    cfg->n_attn = 1;
    cfg->attn_res[0] = 4;
    cfg->groups = 2;
    cfg->dropout = 0.2f;
}

typedef struct {
    ddpm_unet *net;
    ddpm_unet_workspace *ws;
    float *params, *x, *eps_pred, *r;
    int *t, B;
    size_t D;
    const int *y; /* class labels (conditional models), or NULL */
} ctx;

/* Random weights everywhere (not the zero init, which would hide most
 * gradients), GroupNorm gammas around 1. */
static float *random_params(const ddpm_unet *net, uint64_t seed)
{
    float *p = tu_alloc(net->n_params);
    tu_fill_uniform(p, net->n_params, seed, -0.3f, 0.3f);
    for (int i = 0; i < net->n_tensors; i++)
        if (strstr(net->tensors[i].name, "norm") && strstr(net->tensors[i].name, ".weight"))
            for (size_t j = 0; j < net->tensors[i].n; j++)
                p[net->tensors[i].offset + j] += 1.0f;
    return p;
}

static double projected_output(void *opaque)
{
    ctx *c = opaque;
    ddpm_dropout_draw drop = {.seed = 77, .counter = 0, .first = 0, .batch = c->B};
    ddpm_unet_forward_class(c->net, c->params, c->ws, c->eps_pred, c->x, c->t, c->y, c->B, &drop);
    double L = 0;
    for (size_t i = 0; i < (size_t)c->B * c->D; i++)
        L += (double)c->r[i] * c->eps_pred[i];
    return L;
}

static void test_unet_backward_matches_finite_differences(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tiny_config(&cfg);
    ctx c = {.B = 2};
    assert_int_equal(ddpm_unet_create(&c.net, &cfg), 0);
    assert_int_equal(ddpm_unet_workspace_create(&c.ws, c.net, c.B, 1), 0);
    c.D = 3 * 8 * 8;
    c.params = random_params(c.net, 11);
    c.x = tu_alloc(c.B * c.D);
    c.eps_pred = tu_alloc(c.B * c.D);
    c.r = tu_alloc(c.B * c.D);
    tu_fill_uniform(c.x, c.B * c.D, 12, -1, 1);
    tu_fill_uniform(c.r, c.B * c.D, 13, -1, 1);
    int t[2] = {3, 917};
    c.t = t;
    float *grads = tu_alloc(c.net->n_params);
    projected_output(&c);
    ddpm_unet_backward(c.net, c.params, grads, c.ws, c.r, c.B);
    /* Float forward, h = 1e-2: the central difference's truncation error is
       O(h^2 f''') ~ 1e-4 here and float rounding of L (|L| ~ 10, eps 6e-8) adds
       ~1e-4; 4e-3 absolute + 2e-2 relative is ten times that, and far below any
       indexing mistake, which changes gradients by O(1). Up to 12 elements of each
       tensor (first, last, and evenly spaced between) are checked. */
    int n_bad = 0;
    for (int i = 0; i < c.net->n_tensors; i++) {
        const ddpm_tensor_info *ti = &c.net->tensors[i];
        size_t n_check = ti->n < 12 ? ti->n : 12;
        for (size_t s = 0; s < n_check; s++) {
            size_t j = n_check == 1 ? 0 : s * (ti->n - 1) / (n_check - 1);
            char name[96];
            snprintf(name, sizeof name, "%s[%zu]", ti->name, j);
            n_bad += tu_check_grad(name, c.params + ti->offset + j, grads + ti->offset + j, 1,
                                   projected_output, &c, 1e-2f, 4e-3, 2e-2);
        }
    }
    assert_int_equal(n_bad, 0);

    /* backward accumulates: a second call doubles every gradient */
    float *twice = tu_alloc(c.net->n_params);
    memcpy(twice, grads, c.net->n_params * sizeof *twice);
    projected_output(&c);
    ddpm_unet_backward(c.net, c.params, twice, c.ws, c.r, c.B);
    for (size_t k = 0; k < c.net->n_params; k++)
        assert_close(twice[k], 2.0 * grads[k], 1e-6 + 1e-5 * fabs(grads[k]));
    free(twice);
    free(grads);
    free(c.x);
    free(c.eps_pred);
    free(c.r);
    free(c.params);
    ddpm_unet_workspace_free(c.ws);
    ddpm_unet_free(c.net);
}

/* The class embedding (a row of class_emb.weight added to the timestep
 * embedding): its gradient, every element, against central differences, with a
 * class used by two images of the batch (their gradients must add) and the "no
 * class" row used by the third; the unused row's gradient must be exactly zero. */
static void test_class_embedding_backward_matches_finite_differences(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tiny_config(&cfg);
    cfg.n_classes = 3;
    int y[3] = {2, DDPM_NO_CLASS, 2}, t[3] = {3, 500, 917};
    ctx c = {.B = 3, .y = y, .t = t, .D = 3 * 8 * 8};
    assert_int_equal(ddpm_unet_create(&c.net, &cfg), 0);
    int k = ddpm_unet_find_tensor(c.net, "class_emb.weight");
    assert_true(k >= 0);
    const ddpm_tensor_info *ti = &c.net->tensors[k];
    assert_int_equal(ti->shape[0], 4); /* n_classes + 1 */
    assert_int_equal(ti->shape[1], 4 * cfg.ch);
    assert_int_equal(ddpm_unet_workspace_create(&c.ws, c.net, c.B, 1), 0);
    c.params = random_params(c.net, 21);
    c.x = tu_alloc(c.B * c.D);
    c.eps_pred = tu_alloc(c.B * c.D);
    c.r = tu_alloc(c.B * c.D);
    tu_fill_uniform(c.x, c.B * c.D, 22, -1, 1);
    tu_fill_uniform(c.r, c.B * c.D, 23, -1, 1);
    float *grads = tu_alloc(c.net->n_params);
    projected_output(&c);
    ddpm_unet_backward(c.net, c.params, grads, c.ws, c.r, c.B);
    /* tolerances as in test_unet_backward_matches_finite_differences */
    int n_bad = tu_check_grad("class_emb.weight", c.params + ti->offset, grads + ti->offset, ti->n,
                              projected_output, &c, 1e-2f, 4e-3, 2e-2);
    assert_int_equal(n_bad, 0);
    size_t E = (size_t)ti->shape[1];
    double used = 0;
    for (size_t j = 0; j < E; j++) {
        assert_true(grads[ti->offset + 0 * E + j] == 0.0f && grads[ti->offset + 1 * E + j] == 0.0f);
        used += fabs(grads[ti->offset + 2 * E + j]) + fabs(grads[ti->offset + 3 * E + j]);
    }
    assert_true(used > 1e-3); /* rows 2 and 3 do get gradients */
    /* and the labels change the output: a different class, a different eps */
    float *out_a = tu_alloc(c.B * c.D);
    projected_output(&c);
    memcpy(out_a, c.eps_pred, c.B * c.D * sizeof(float));
    y[0] = 0;
    projected_output(&c);
    size_t at;
    assert_true(tu_max_abs_diff(out_a, c.eps_pred, c.D, &at) > 1e-4);
    assert_true(tu_max_abs_diff(out_a + c.D, c.eps_pred + c.D, 2 * c.D, &at) == 0); /* images 1, 2 unchanged */
    free(out_a);
    free(grads);
    free(c.x);
    free(c.eps_pred);
    free(c.r);
    free(c.params);
    ddpm_unet_workspace_free(c.ws);
    ddpm_unet_free(c.net);
}

/* Every tensor's gradient (up to 12 elements each: first, last and evenly
 * spaced between) against central differences of L = sum r * eps_pred, with the
 * tolerances of test_unet_backward_matches_finite_differences. The attention key
 * biases' exact gradient is zero (a shift shared by a whole row of logits, which
 * softmax ignores), so their float differences are pure rounding noise (measured
 * up to 5e-3 here): they must be zero to float noise instead, |g| <= 1e-5 (the
 * other gradients are O(0.1..10)). Returns the number of elements outside. */
static int check_every_tensor(ctx *c, const float *grads)
{
    int n_bad = 0;
    for (int i = 0; i < c->net->n_tensors; i++) {
        const ddpm_tensor_info *ti = &c->net->tensors[i];
        const size_t len = strlen(ti->name);
        if (len > 7 && !strcmp(ti->name + len - 7, ".k.bias")) {
            for (size_t j = 0; j < ti->n; j++)
                if (!(fabsf(grads[ti->offset + j]) <= 1e-5f)) {
                    fprintf(stderr, "%s[%zu]: gradient %g, not 0\n", ti->name, j, (double)grads[ti->offset + j]);
                    n_bad++;
                }
            continue;
        }
        size_t n_check = ti->n < 12 ? ti->n : 12;
        for (size_t s = 0; s < n_check; s++) {
            size_t j = n_check == 1 ? 0 : s * (ti->n - 1) / (n_check - 1);
            char name[96];
            snprintf(name, sizeof name, "%s[%zu]", ti->name, j);
            n_bad += tu_check_grad(name, c->params + ti->offset + j, grads + ti->offset + j, 1, projected_output, c,
                                   1e-2f, 4e-3, 2e-2);
        }
    }
    return n_bad;
}

/* AdaGN (--scale-shift-norm) through the whole network, class-conditional, with
 * dropout: every tensor against central differences, at batch 3 with two
 * configs: the tiny one (8x8 RGB, two levels) and an odd one (6x6 then 3x3
 * gray, attention at 3x3, 3 groups of 2 and 4 channels). temb_proj has 2 cout
 * outputs (scale, then shift) and every element of its first and last rows is
 * checked, so a scale and shift swapped, or a gradient that reaches only one
 * half, fails. */
static void check_scale_shift_norm_gradients(const ddpm_unet_config *cfg, uint64_t seed)
{
    int y[3] = {1, DDPM_NO_CLASS, 2}, t[3] = {3, 500, 917};
    ctx c = {.B = 3, .y = y, .t = t,
             .D = (size_t)cfg->in_channels * cfg->image_size * cfg->image_size};
    assert_int_equal(ddpm_unet_create(&c.net, cfg), 0);
    assert_int_equal(ddpm_unet_workspace_create(&c.ws, c.net, c.B, 1), 0);
    c.params = random_params(c.net, seed);
    c.x = tu_alloc(c.B * c.D);
    c.eps_pred = tu_alloc(c.B * c.D);
    c.r = tu_alloc(c.B * c.D);
    tu_fill_uniform(c.x, c.B * c.D, seed + 1, -1, 1);
    tu_fill_uniform(c.r, c.B * c.D, seed + 2, -1, 1);
    float *grads = tu_alloc(c.net->n_params);
    projected_output(&c);
    ddpm_unet_backward(c.net, c.params, grads, c.ws, c.r, c.B);
    int n_bad = check_every_tensor(&c, grads);
    /* the first ResBlock's projection: all of row 0 (a scale) and of the last row (a shift) */
    int k = ddpm_unet_find_tensor(c.net, "down.0.temb_proj.weight");
    assert_true(k >= 0);
    const ddpm_tensor_info *ti = &c.net->tensors[k];
    const int cout = ti->shape[0] / 2, E = ti->shape[1];
    assert_int_equal(cout, cfg->ch);
    assert_int_equal(E, 4 * cfg->ch);
    n_bad += tu_check_grad("down.0.temb_proj.weight row 0 (scale)", c.params + ti->offset, grads + ti->offset, E,
                           projected_output, &c, 1e-2f, 4e-3, 2e-2);
    n_bad += tu_check_grad("down.0.temb_proj.weight last row (shift)", c.params + ti->offset + (ti->n - E),
                           grads + ti->offset + (ti->n - E), E, projected_output, &c, 1e-2f, 4e-3, 2e-2);
    assert_int_equal(n_bad, 0);
    free(grads);
    free(c.x);
    free(c.eps_pred);
    free(c.r);
    free(c.params);
    ddpm_unet_workspace_free(c.ws);
    ddpm_unet_free(c.net);
}

static void test_scale_shift_norm_backward_matches_finite_differences(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tiny_config(&cfg);
    cfg.scale_shift_norm = 1;
    cfg.n_classes = 3;
    check_scale_shift_norm_gradients(&cfg, 41);
}

static void test_scale_shift_norm_backward_matches_finite_differences_odd_sizes(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tiny_config(&cfg);
    cfg.in_channels = 1, cfg.image_size = 6, cfg.ch = 6, cfg.groups = 3;
    cfg.attn_res[0] = 3;
    cfg.scale_shift_norm = 1;
    cfg.n_classes = 3;
    check_scale_shift_norm_gradients(&cfg, 51);
}

/* A new AdaGN model starts as the plain GroupNorm: temb_proj is [2 cout, 4 ch]
 * and zero after init, and a network whose other weights are random gives the
 * bytes of the plain network with the same weights and a zero temb_proj (which
 * adds nothing). A non-zero scale then changes the output: the embedding
 * reaches GN2. */
static void test_scale_shift_norm_starts_as_the_plain_groupnorm(void **state)
{
    (void)state;
    ddpm_unet_config cfg, cfg_ss;
    tiny_config(&cfg);
    cfg.dropout = 0;
    cfg_ss = cfg;
    cfg_ss.scale_shift_norm = 1;
    ddpm_unet *plain, *ss;
    assert_int_equal(ddpm_unet_create(&plain, &cfg), 0);
    assert_int_equal(ddpm_unet_create(&ss, &cfg_ss), 0);
    assert_int_equal(plain->n_tensors, ss->n_tensors);
    float *pp = random_params(plain, 61), *ps = tu_alloc(ss->n_params);
    ddpm_unet_init_params(ss, ps, 7);
    int n_proj = 0;
    for (int i = 0; i < ss->n_tensors; i++) {
        const ddpm_tensor_info *a = &plain->tensors[i], *b = &ss->tensors[i];
        assert_string_equal(a->name, b->name);
        if (strstr(a->name, "temb_proj")) { /* zero after init, twice as many outputs */
            n_proj++;
            assert_int_equal(b->shape[0], 2 * a->shape[0]);
            for (size_t j = 0; j < b->n; j++)
                assert_true(ps[b->offset + j] == 0.0f);
            memset(pp + a->offset, 0, a->n * sizeof(float));
        } else {
            assert_int_equal(a->n, b->n);
            memcpy(ps + b->offset, pp + a->offset, a->n * sizeof(float));
        }
    }
    assert_int_equal(n_proj, 16); /* weight and bias of the tiny net's 8 ResBlocks: 2 down, 2 middle, 4 up */
    enum { B = 2 };
    const size_t D = 3 * 8 * 8;
    ddpm_unet_workspace *wp, *wss;
    assert_int_equal(ddpm_unet_workspace_create(&wp, plain, B, 0), 0);
    assert_int_equal(ddpm_unet_workspace_create(&wss, ss, B, 0), 0);
    float *x = tu_alloc(B * D), *op = tu_alloc(B * D), *os = tu_alloc(B * D);
    tu_fill_uniform(x, B * D, 62, -1, 1);
    int t[B] = {10, 700};
    ddpm_unet_forward(plain, pp, wp, op, x, t, B, NULL);
    ddpm_unet_forward(ss, ps, wss, os, x, t, B, NULL);
    assert_memory_equal(op, os, B * D * sizeof(float));
    int k = ddpm_unet_find_tensor(ss, "mid.0.temb_proj.bias");
    ps[ss->tensors[k].offset] = 0.5f; /* channel 0's scale */
    ddpm_unet_forward(ss, ps, wss, os, x, t, B, NULL);
    assert_true(tu_max_abs_diff(op, os, B * D, NULL) > 1e-3);
    free(pp), free(ps), free(x), free(op), free(os);
    ddpm_unet_workspace_free(wp);
    ddpm_unet_workspace_free(wss);
    ddpm_unet_free(plain);
    ddpm_unet_free(ss);
}

/* The default model with AdaGN: every ResBlock's temb_proj doubles, 4ch x cout
 * + cout more parameters per block (5 blocks of 32 channels, 12 of 64): 1,623,169
 * + 5 x 4,128 + 12 x 8,256 = 1,742,881, the figure docs/usage.md gives. */
static void test_scale_shift_norm_default_model_has_1742881_parameters(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    cfg.scale_shift_norm = 1;
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &cfg), 0);
    assert_int_equal(net->n_params, 1742881);
    int k = ddpm_unet_find_tensor(net, "up.13.temb_proj.weight");
    assert_true(k >= 0);
    assert_int_equal(net->tensors[k].shape[0], 64);
    assert_int_equal(net->tensors[k].shape[1], 128);
    ddpm_unet_free(net);
}

/* --class-emb-init normal: class_emb.weight is N(0, 1) by its moments (101 x 128
 * = 12,928 values: the mean within 4 standard errors, 4/sqrt(n) = 0.035, the
 * variance within 4 x sqrt(2/n) = 0.05, the kurtosis within 0.2 of 3 (its standard
 * error is sqrt(24/n) = 0.043) and the share within one sigma within 0.02 of
 * 0.6827), a function of the seed (same seed, same bytes; another seed, other
 * values), and zero by default. */
static void test_class_embedding_normal_init_is_standard_normal_and_seeded(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    cfg.n_classes = 100;
    ddpm_unet *zero_net, *net;
    assert_int_equal(ddpm_unet_create(&zero_net, &cfg), 0);
    cfg.class_emb_init = DDPM_CLASS_EMB_NORMAL;
    assert_int_equal(ddpm_unet_create(&net, &cfg), 0);
    int k = ddpm_unet_find_tensor(net, "class_emb.weight");
    assert_true(k >= 0);
    const ddpm_tensor_info *ti = &net->tensors[k];
    const size_t n = ti->n;
    assert_int_equal(n, 101 * 128);
    float *p = tu_alloc(net->n_params), *q = tu_alloc(net->n_params);
    ddpm_unet_init_params(net, p, 5);
    const float *w = p + ti->offset;
    double m = 0, m2 = 0, m4 = 0;
    size_t within = 0;
    for (size_t j = 0; j < n; j++)
        m += w[j];
    m /= (double)n;
    for (size_t j = 0; j < n; j++) {
        double d = w[j] - m;
        m2 += d * d, m4 += d * d * d * d;
        within += fabsf(w[j]) < 1.0f;
    }
    m2 /= (double)n, m4 /= (double)n;
    const double kurt = m4 / (m2 * m2), share = (double)within / (double)n;
    if (!(fabs(m) < 0.035 && fabs(m2 - 1) < 0.05 && fabs(kurt - 3) < 0.2 && fabs(share - 0.6827) < 0.02))
        fail_msg("class_emb: mean %g variance %g kurtosis %g share within 1 sigma %g", m, m2, kurt, share);
    ddpm_unet_init_params(net, q, 5);
    assert_memory_equal(p, q, net->n_params * sizeof(float));
    ddpm_unet_init_params(net, q, 6);
    size_t same = 0;
    for (size_t j = 0; j < n; j++)
        same += q[ti->offset + j] == w[j];
    assert_true(same < n / 100);
    /* the default: zero */
    k = ddpm_unet_find_tensor(zero_net, "class_emb.weight");
    ddpm_unet_init_params(zero_net, q, 5);
    for (size_t j = 0; j < zero_net->tensors[k].n; j++)
        assert_true(q[zero_net->tensors[k].offset + j] == 0.0f);
    free(p), free(q);
    ddpm_unet_free(zero_net);
    ddpm_unet_free(net);
}

static void test_each_image_is_independent_of_the_rest_of_the_batch(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tiny_config(&cfg);
    cfg.dropout = 0;
    ddpm_unet *net;
    ddpm_unet_workspace *ws3, *ws1;
    assert_int_equal(ddpm_unet_create(&net, &cfg), 0);
    assert_int_equal(ddpm_unet_workspace_create(&ws3, net, 3, 0), 0);
    assert_int_equal(ddpm_unet_workspace_create(&ws1, net, 1, 0), 0);
    float *p = tu_alloc(net->n_params);
    tu_fill_uniform(p, net->n_params, 5, -0.3f, 0.3f);
    size_t D = 3 * 64;
    float *x = tu_alloc(3 * D), *out3 = tu_alloc(3 * D), *out1 = tu_alloc(D);
    tu_fill_uniform(x, 3 * D, 6, -1, 1);
    int t[3] = {0, 500, 999};
    ddpm_unet_forward(net, p, ws3, out3, x, t, 3, NULL);
    for (int b = 0; b < 3; b++) {
        ddpm_unet_forward(net, p, ws1, out1, x + b * D, t + b, 1, NULL);
        /* only GEMM blocking differs: a few float ulps */
        assert_true(tu_max_abs_diff(out1, out3 + b * D, D, NULL) < 1e-4);
    }
    /* and a smaller batch in a larger workspace gives the same as its own */
    ddpm_unet_forward(net, p, ws3, out3, x, t, 1, NULL);
    ddpm_unet_forward(net, p, ws1, out1, x, t, 1, NULL);
    assert_true(tu_max_abs_diff(out1, out3, D, NULL) < 1e-4);
    free(x);
    free(out3);
    free(out1);
    free(p);
    ddpm_unet_workspace_free(ws3);
    ddpm_unet_workspace_free(ws1);
    ddpm_unet_free(net);
}

/* One image's dropout masks depend on its index in the step's batch, not on
 * which forward computes it: images 0..2 in one forward equal each alone with
 * its index as `first`, and not with another index. Also at an odd size, where
 * C*H*W is not a multiple of 4 and each image's mask starts a fresh counter. */
static void check_dropout_masks_follow_the_image_index(const ddpm_unet_config *cfg)
{
    ddpm_unet *net;
    ddpm_unet_workspace *ws3, *ws1;
    assert_int_equal(ddpm_unet_create(&net, cfg), 0);
    assert_int_equal(ddpm_unet_workspace_create(&ws3, net, 3, 1), 0);
    assert_int_equal(ddpm_unet_workspace_create(&ws1, net, 1, 1), 0);
    float *p = tu_alloc(net->n_params);
    tu_fill_uniform(p, net->n_params, 5, -0.3f, 0.3f); /* conv2 not zero: masks matter */
    size_t D = (size_t)cfg->in_channels * cfg->image_size * cfg->image_size;
    float *x = tu_alloc(3 * D), *out3 = tu_alloc(3 * D), *out1 = tu_alloc(D);
    tu_fill_uniform(x, 3 * D, 6, -1, 1);
    int t[3] = {0, 500, 999};
    float *d = tu_alloc(3 * D), *g3 = tu_alloc(net->n_params), *g1 = tu_alloc(net->n_params);
    tu_fill_uniform(d, 3 * D, 7, -1, 1);
    ddpm_dropout_draw all = {.seed = 9, .counter = 1000, .first = 0, .batch = 3};
    ddpm_unet_forward(net, p, ws3, out3, x, t, 3, &all);
    ddpm_unet_backward(net, p, g3, ws3, d, 3);
    for (int b = 0; b < 3; b++) {
        ddpm_dropout_draw one = {.seed = 9, .counter = 1000, .first = b, .batch = 3};
        ddpm_unet_forward(net, p, ws1, out1, x + b * D, t + b, 1, &one);
        assert_true(tu_max_abs_diff(out1, out3 + b * D, D, NULL) < 1e-4); /* GEMM blocking only */
        ddpm_unet_backward(net, p, g1, ws1, d + b * D, 1); /* backward redraws the same masks */
        one.first = (b + 1) % 3; /* another image's masks */
        ddpm_unet_forward(net, p, ws1, out1, x + b * D, t + b, 1, &one);
        assert_true(tu_max_abs_diff(out1, out3 + b * D, D, NULL) > 1e-3);
    }
    /* the three images' gradients summed one by one: float sums in another order */
    assert_true(tu_max_rel_diff(g1, g3, net->n_params) < 1e-5);
    free(d), free(g3), free(g1);
    assert_true(ddpm_unet_dropout_counters(net, 3) == 3 * ddpm_unet_dropout_counters(net, 1));
    free(x);
    free(out3);
    free(out1);
    free(p);
    ddpm_unet_workspace_free(ws3);
    ddpm_unet_workspace_free(ws1);
    ddpm_unet_free(net);
}

static void test_dropout_masks_follow_the_image_index_in_the_batch(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    tiny_config(&cfg);
    check_dropout_masks_follow_the_image_index(&cfg);
    /* 3x3 images, ch 6: 54 mask elements per image */
    cfg.image_size = 3;
    cfg.ch = 6;
    cfg.n_levels = 1;
    cfg.ch_mult[0] = 1;
    cfg.n_attn = 0;
    cfg.groups = 3;
    check_dropout_masks_follow_the_image_index(&cfg);
}

/* One training step's network part (forward with dropout, the MSE loss, backward) of
 * the default model at batch 9 gives the same bytes at 1 and 2 threads: the loss,
 * eps_pred and every parameter gradient (README: results do not depend on the thread
 * count). Batch 9 puts more units than lanes in the 28x28 convs. */
static void check_step_same_bytes_at_one_and_two_threads(const ddpm_unet_config *cfg)
{
    ddpm_unet *net;
    ddpm_unet_workspace *ws;
    enum { B = 9 };
    const size_t D = 28 * 28;
    assert_int_equal(ddpm_unet_create(&net, cfg), 0);
    assert_int_equal(ddpm_unet_workspace_create(&ws, net, B, 1), 0);
    float *p = tu_alloc(net->n_params);
    tu_fill_uniform(p, net->n_params, 21, -0.1f, 0.1f); /* no zero layers: every gradient flows */
    float *x = tu_alloc(B * D), *eps = tu_alloc(B * D);
    tu_fill_uniform(x, B * D, 22, -1, 1);
    tu_fill_uniform(eps, B * D, 23, -1, 1);
    int t[B] = {0, 17, 999, 250, 500, 3, 731, 64, 998};
    float *pred[2], *d_pred[2], *grads[2];
    double loss[2];
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        pred[k] = tu_alloc(B * D), d_pred[k] = tu_alloc(B * D), grads[k] = tu_alloc(net->n_params);
        ddpm_dropout_draw drop = {.seed = 9, .counter = 0, .first = 0, .batch = B};
        ddpm_unet_forward(net, p, ws, pred[k], x, t, B, &drop);
        loss[k] = ddpm_mse_forward(pred[k], eps, B * D);
        ddpm_mse_backward(d_pred[k], pred[k], eps, B * D, B * D);
        ddpm_unet_backward(net, p, grads[k], ws, d_pred[k], B);
    }
    omp_set_num_threads(2);
    assert_true(loss[0] == loss[1]);
    assert_memory_equal(pred[0], pred[1], B * D * sizeof(float));
    assert_memory_equal(grads[0], grads[1], net->n_params * sizeof(float));
    for (int k = 0; k < 2; k++)
        free(pred[k]), free(d_pred[k]), free(grads[k]);
    free(x), free(eps), free(p);
    ddpm_unet_workspace_free(ws);
    ddpm_unet_free(net);
}

static void test_default_model_step_same_bytes_at_one_and_two_threads(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    check_step_same_bytes_at_one_and_two_threads(&cfg);
}

/* The same with AdaGN in every ResBlock (--scale-shift-norm). */
static void test_default_model_with_scale_shift_norm_same_bytes_at_one_and_two_threads(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    cfg.scale_shift_norm = 1;
    check_step_same_bytes_at_one_and_two_threads(&cfg);
}

/* The workspace kinds and batch sizes compute the same network: a forward-only
 * workspace (module outputs sharing buffers by lifetime, each block's activations
 * in one reused region) gives the training workspace's eps_pred bytes, and a
 * batch of 3 in a training workspace for 5 (a micro-batch) gives the bytes and
 * gradients of a workspace for exactly 3. The default model, so that the skip stack
 * and the 28x28, 14x14 and 7x7 paths are all there. */
static void check_workspaces_give_the_same_bytes(const ddpm_unet_config *cfg)
{
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, cfg), 0);
    enum { B = 3 };
    const size_t D = 28 * 28;
    ddpm_unet_workspace *fwd, *tr3, *tr5;
    assert_int_equal(ddpm_unet_workspace_create(&fwd, net, 4, 0), 0);
    assert_int_equal(ddpm_unet_workspace_create(&tr3, net, B, 1), 0);
    assert_int_equal(ddpm_unet_workspace_create(&tr5, net, 5, 1), 0);
    float *p = tu_alloc(net->n_params);
    tu_fill_uniform(p, net->n_params, 31, -0.1f, 0.1f);
    float *x = tu_alloc(B * D), *d = tu_alloc(B * D);
    tu_fill_uniform(x, B * D, 32, -1, 1);
    tu_fill_uniform(d, B * D, 33, -1, 1);
    int t[B] = {5, 600, 998};
    float *out_fwd = tu_alloc(B * D), *out3 = tu_alloc(B * D), *out5 = tu_alloc(B * D);
    float *g3 = tu_alloc(net->n_params), *g5 = tu_alloc(net->n_params);
    ddpm_unet_forward(net, p, fwd, out_fwd, x, t, B, NULL);
    ddpm_unet_forward(net, p, tr3, out3, x, t, B, NULL);
    assert_memory_equal(out_fwd, out3, B * D * sizeof(float));
    ddpm_dropout_draw drop3 = {.seed = 4, .counter = 0, .first = 0, .batch = B}, drop5 = drop3;
    ddpm_unet_forward(net, p, tr3, out3, x, t, B, &drop3);
    ddpm_unet_backward(net, p, g3, tr3, d, B);
    ddpm_unet_forward(net, p, tr5, out5, x, t, B, &drop5);
    ddpm_unet_backward(net, p, g5, tr5, d, B);
    assert_memory_equal(out3, out5, B * D * sizeof(float));
    assert_memory_equal(g3, g5, net->n_params * sizeof(float));
    assert_true(ddpm_unet_dropout_counters(net, B) > 0);
    free(p), free(x), free(d), free(out_fwd), free(out3), free(out5), free(g3), free(g5);
    ddpm_unet_workspace_free(fwd);
    ddpm_unet_workspace_free(tr3);
    ddpm_unet_workspace_free(tr5);
    ddpm_unet_free(net);
}

static void test_forward_only_and_micro_batch_workspaces_give_the_same_bytes(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    check_workspaces_give_the_same_bytes(&cfg);
}

/* With AdaGN, whose per-image affine lives in each block's reused region. */
static void test_forward_only_and_micro_batch_workspaces_give_the_same_bytes_scale_shift_norm(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    cfg.scale_shift_norm = 1;
    check_workspaces_give_the_same_bytes(&cfg);
}

/* A forward-only workspace holds the skip stack and a few live buffers, not the
 * training activations: for the default model each image of the batch adds
 * under 2 MB (measured 1.70 MB: 0.73 MB of module outputs sharing buffers by
 * lifetime, 0.67 MB for the largest block, the rest conv scratch lanes; keeping
 * every module output instead adds 0.9 MB more, the training arena it replaced
 * took 13 MB). */
static void test_forward_only_workspace_is_planned_from_lifetimes(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &cfg), 0);
    ddpm_unet_workspace *ws1, *ws64;
    assert_int_equal(ddpm_unet_workspace_create(&ws1, net, 1, 0), 0);
    assert_int_equal(ddpm_unet_workspace_create(&ws64, net, 64, 0), 0);
    double per_image = (double)(ddpm_unet_workspace_bytes(ws64) - ddpm_unet_workspace_bytes(ws1)) / 63;
    if (!(per_image < 2e6))
        fail_msg("a forward-only workspace takes %.0f bytes per image", per_image);
    ddpm_unet_workspace_free(ws1);
    ddpm_unet_workspace_free(ws64);
    ddpm_unet_free(net);
}

/* --precision bf16 at the network level, on the default model: a forward-only
 * and a training workspace take it where AVX512_BF16 is (elsewhere it is
 * refused and nothing changes). The bf16 forward is not the float32 bytes and
 * stays within 2% of the output's largest magnitude (each product rounds its
 * inputs to 8 bits, 2^-8 relative; measured 2026-12-07: 0.8% to 1.0%); a
 * training workspace's bf16 forward is the forward-only one's bytes. Its
 * backward's gradients are not the float32 ones; the rounding of every layer's
 * products compounds through the backward, so the bounds are looser: the whole
 * gradient within 5% of the float32 one in L2 (measured 2026-12-07: 2.2% to 2.3%), each
 * conv weight's gradient within 20% of that tensor's largest float32 entry,
 * or of 1e-4 of the largest entry of all when the tensor's gradient is below it
 * (attention's keys at init, whose gradient is near zero): measured 2026-12-07
 * under OpenBLAS's SkylakeX and Haswell kernels (which the time embedding's
 * linears still use), 7.9% to 8.4% at worst (attention's v and projection in
 * the up path, gradients that come through the softmax). A crossed bf16 pair or a lost tile is off by the gradient itself. Whether training keeps its quality is measured by training
 * (docs/speed.md, bf16 training). Set back to float32, both give the float32
 * bytes. */
static void test_bf16_precision_forward_and_backward(void **state)
{
    (void)state;
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    cfg.dropout = 0;
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &cfg), 0);
    const int B = 2;
    ddpm_unet_workspace *f32, *f16, *tr;
    assert_int_equal(ddpm_unet_workspace_create(&f32, net, B, 0), 0);
    assert_int_equal(ddpm_unet_workspace_create(&f16, net, B, 0), 0);
    assert_int_equal(ddpm_unet_workspace_create(&tr, net, B, 1), 0);
    const int avail = ddpm_bf16_available();
    assert_int_equal(ddpm_unet_workspace_set_precision(f16, DDPM_PRECISION_BF16), avail ? 0 : DDPM_EINVAL);
    float *p = tu_alloc(net->n_params);
    tu_fill_uniform(p, net->n_params, 11, -0.1f, 0.1f);
    const size_t D = 28 * 28, n = net->n_params;
    float *x = tu_alloc(B * D), *o32 = tu_alloc(B * D), *o16 = tu_alloc(B * D), *otr = tu_alloc(B * D);
    float *dout = tu_alloc(B * D), *g32 = tu_alloc(n), *g16 = tu_alloc(n);
    tu_fill_uniform(x, B * D, 12, -1, 1);
    tu_fill_uniform(dout, B * D, 13, -1, 1);
    int t[2] = {10, 700};
    ddpm_unet_forward(net, p, f32, o32, x, t, B, NULL);
    ddpm_unet_forward(net, p, f16, o16, x, t, B, NULL);
    ddpm_unet_forward(net, p, tr, otr, x, t, B, NULL);
    assert_memory_equal(o32, otr, B * D * sizeof(float));
    memset(g32, 0, n * sizeof(float));
    ddpm_unet_backward(net, p, g32, tr, dout, B);
    assert_int_equal(ddpm_unet_workspace_set_precision(tr, DDPM_PRECISION_BF16), avail ? 0 : DDPM_EINVAL);
    ddpm_unet_forward(net, p, tr, otr, x, t, B, NULL);
    memset(g16, 0, n * sizeof(float));
    ddpm_unet_backward(net, p, g16, tr, dout, B);
    if (!avail) {
        assert_memory_equal(o32, o16, B * D * sizeof(float));
        assert_memory_equal(o32, otr, B * D * sizeof(float));
        assert_memory_equal(g32, g16, n * sizeof(float));
    } else {
        double big = 0;
        for (size_t i = 0; i < B * D; i++)
            big = fabs(o32[i]) > big ? fabs(o32[i]) : big;
        size_t at;
        const double diff = tu_max_abs_diff(o16, o32, B * D, &at);
        if (!(diff > 0 && diff <= 0.02 * big))
            fail_msg("bf16 forward: max |bf16 - fp32| %.3g at %zu (fp32 %.6g, bf16 %.6g), max |fp32| %.3g", diff,
                     at, (double)o32[at], (double)o16[at], big);
        assert_memory_equal(o16, otr, B * D * sizeof(float));
        assert_true(memcmp(g16, g32, n * sizeof(float)) != 0);
        /* the whole gradient, and each conv weight's (sums over many positions, without the
           cancellation of a bias's or an embedding's sum) */
        double d2 = 0, g2 = 0;
        for (size_t i = 0; i < n; i++) {
            d2 += ((double)g16[i] - g32[i]) * ((double)g16[i] - g32[i]);
            g2 += (double)g32[i] * g32[i];
        }
        if (!(sqrt(d2) <= 0.05 * sqrt(g2)))
            fail_msg("bf16 backward: |g_bf16 - g_fp32| / |g_fp32| = %.3g", sqrt(d2 / g2));
        double gall = 0;
        for (size_t i = 0; i < n; i++)
            gall = fabs(g32[i]) > gall ? fabs(g32[i]) : gall;
        for (int k = 0; k < net->n_tensors; k++) {
            const ddpm_tensor_info *pi = &net->tensors[k];
            if (pi->ndim != 4)
                continue;
            /* a tensor whose whole gradient is below 1e-4 of the largest (the keys' at init) is held to that floor */
            double gbig = 1e-4 * gall, gdiff = 0;
            for (size_t i = pi->offset; i < pi->offset + pi->n; i++) {
                gbig = fabs(g32[i]) > gbig ? fabs(g32[i]) : gbig;
                gdiff = fabs((double)g16[i] - g32[i]) > gdiff ? fabs((double)g16[i] - g32[i]) : gdiff;
            }
            if (!(gdiff <= 0.2 * gbig))
                fail_msg("bf16 backward: %s: max |bf16 - fp32| %.3g, max |fp32| %.3g", pi->name, gdiff, gbig);
        }
    }
    /* back to float32: the float32 bytes */
    assert_int_equal(ddpm_unet_workspace_set_precision(f16, DDPM_PRECISION_FP32), 0);
    assert_int_equal(ddpm_unet_workspace_set_precision(tr, DDPM_PRECISION_FP32), 0);
    ddpm_unet_forward(net, p, f16, o16, x, t, B, NULL);
    assert_memory_equal(o32, o16, B * D * sizeof(float));
    ddpm_unet_forward(net, p, tr, otr, x, t, B, NULL);
    memset(g16, 0, n * sizeof(float));
    ddpm_unet_backward(net, p, g16, tr, dout, B);
    assert_memory_equal(g32, g16, n * sizeof(float));
    free(p), free(x), free(o32), free(o16), free(otr), free(dout), free(g32), free(g16);
    ddpm_unet_workspace_free(f32);
    ddpm_unet_workspace_free(f16);
    ddpm_unet_workspace_free(tr);
    ddpm_unet_free(net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_config_has_1623169_parameters),
        cmocka_unit_test(test_bf16_precision_forward_and_backward),
        cmocka_unit_test(test_impossible_configs_are_refused),
        cmocka_unit_test(test_init_zeroes_residual_outputs_and_bounds_xavier),
        cmocka_unit_test(test_unet_backward_matches_finite_differences),
        cmocka_unit_test(test_class_embedding_backward_matches_finite_differences),
        cmocka_unit_test(test_each_image_is_independent_of_the_rest_of_the_batch),
        cmocka_unit_test(test_dropout_masks_follow_the_image_index_in_the_batch),
        cmocka_unit_test(test_default_model_step_same_bytes_at_one_and_two_threads),
        cmocka_unit_test(test_default_model_with_scale_shift_norm_same_bytes_at_one_and_two_threads),
        cmocka_unit_test(test_forward_only_and_micro_batch_workspaces_give_the_same_bytes),
        cmocka_unit_test(test_forward_only_and_micro_batch_workspaces_give_the_same_bytes_scale_shift_norm),
        cmocka_unit_test(test_scale_shift_norm_backward_matches_finite_differences),
        cmocka_unit_test(test_scale_shift_norm_backward_matches_finite_differences_odd_sizes),
        cmocka_unit_test(test_scale_shift_norm_starts_as_the_plain_groupnorm),
        cmocka_unit_test(test_scale_shift_norm_default_model_has_1742881_parameters),
        cmocka_unit_test(test_class_embedding_normal_init_is_standard_normal_and_seeded),
        cmocka_unit_test(test_forward_only_workspace_is_planned_from_lifetimes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
