/* The C U-Net against an independent PyTorch build of docs/design.md, Network (in
 * the manner of llm.c's test_gpt2): the finite-difference check in test_unet.c
 * proves the backward is the derivative of the forward; this proves the forward
 * IS the specified network, and its gradients the network's gradients.
 *
 * tests/data/unet_reference.bin is written by tests/reference/make_unet_reference.py
 * (see tests/reference/README.md; CI does not run Python, only this test against
 * the committed file). Format, all little-endian, floats IEEE binary32:
 *   "DDPMREF1", u32 version (1), u32 n_cases, then per case:
 *     u32 name length + name bytes;
 *     24 x i32 config: in_channels, image_size, ch, n_levels, ch_mult[8],
 *       num_res_blocks, n_attn, attn_res[8], groups, B;
 *     u32 n_tensors, then per tensor: u32 name length + name bytes, u32 dtype
 *       (0 float32, 1 int32), u32 ndim (0..4), ndim x u32 dims, the data.
 *   Tensors: x_t [B,C,S,S], t int32 [B] (0-based step indices), eps, eps_pred,
 *   loss [1], every parameter by its docs/design.md name, and grad.<name> for each;
 *   with dropout on, then "dropout" [1] (p) and "dropout_seed" int32 [1]: the
 *   reference applied the masks that ddpm's dropout draws from a dropout RNG with
 *   that seed and counter 0 (the script reimplements the Philox draw); with AdaGN
 *   (scale_shift_norm), then "scale_shift_norm" int32 [1]; class-conditional,
 *   then "n_classes" int32 [1] and "y" int32 [B] (-1: "no class").
 * The reference eps_pred, loss and gradients were computed in float64 from the
 * float32 inputs and parameters (uniform(-0.3, 0.3) everywhere, GroupNorm
 * weights 1 + that, so no gradient is trivially zero) and rounded to float32.
 *
 * The file is untrusted input as far as crashing goes: every count and size is
 * checked against the bytes that remain, and a bad or missing file fails the
 * test with a message (it never skips). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/ops.h"
#include "ddpm/unet.h"
#include "testutil.h"

#define REF_PATH DDPM_TEST_DATA "/unet_reference.bin"
#define REF_MAX_BYTES (64u << 20)
#define REF_MAX_NAME 128

/* ---------------------------------------------------------------- tolerances
 *
 * Each element must satisfy |c - r| <= ATOL * s + RTOL * |r|, where r is the
 * reference, c the C value and s a per-tensor scale: max |r| over the tensor,
 * but at least 1e-3 of the largest |gradient| of the case. The floor is for the
 * attention key biases, whose gradient is exactly zero (adding a constant to
 * every key shifts all logits of a row by the same amount, which softmax
 * ignores): their float32 values are pure rounding noise, ~5e-10 in PyTorch.
 *
 * Measured float32 noise (PyTorch float32 against float64, same inputs and
 * weights; make_unet_reference.py prints it): eps_pred max|diff| / max|r| =
 * 8.3e-7 and 5.8e-7 for the two cases, the loss 9e-8 and 6e-8 relative, and
 * every gradient tensor's max|diff| / s <= 5.6e-6 (up.4.norm2.weight of case 2;
 * most are ~1e-6). The C code sums in other orders (im2col GEMM blocking, double
 * GroupNorm statistics), so its noise is of the same order but not the same;
 * measured (this test prints it): eps_pred 8.4e-7 and 4.5e-7, the loss 5e-8 and
 * 9e-9 relative, gradients <= 4.0e-6 of s. The bounds below are 10-20x the
 * worst noise of either; a wrong formula, index, transpose or missing term
 * moves values by O(1) relative to s, 10^4 times more (an off-by-one step index,
 * q and k weights swapped, or a flipped 3x3 kernel each fail every tensor). */
#define EPS_ATOL 1e-5
#define EPS_RTOL 1e-5
#define LOSS_RTOL 1e-6
#define GRAD_ATOL 5e-5
#define GRAD_RTOL 1e-4
#define GRAD_FLOOR 1e-3

/* ---------------------------------------------------------------- the file */

typedef struct {
    char name[REF_MAX_NAME];
    uint32_t dtype, ndim, dims[4];
    size_t n;
    float *f;   /* dtype 0 */
    int32_t *i; /* dtype 1 */
} ref_tensor;

typedef struct {
    char name[REF_MAX_NAME];
    ddpm_unet_config cfg;
    int B;
    int n_tensors;
    ref_tensor *tensors;
} ref_case;

typedef struct {
    int n_cases;
    ref_case *cases;
} ref_file;

typedef struct {
    const unsigned char *p;
    size_t pos, size;
    char *err;
} cursor;

static int bad(cursor *c, const char *what)
{
    snprintf(c->err, 256, "%s at byte %zu of %zu", what, c->pos, c->size);
    return -1;
}

static int take_u32(cursor *c, uint32_t *v)
{
    if (c->size - c->pos < 4)
        return bad(c, "truncated");
    const unsigned char *b = c->p + c->pos;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    c->pos += 4;
    return 0;
}

static int take_i32(cursor *c, int *v)
{
    uint32_t u;
    if (take_u32(c, &u))
        return -1;
    int32_t s;
    memcpy(&s, &u, sizeof s);
    *v = s;
    return 0;
}

static int take_name(cursor *c, char out[REF_MAX_NAME])
{
    uint32_t len;
    if (take_u32(c, &len))
        return -1;
    if (len == 0 || len >= REF_MAX_NAME)
        return bad(c, "name length out of range");
    if (c->size - c->pos < len)
        return bad(c, "truncated name");
    memcpy(out, c->p + c->pos, len);
    out[len] = '\0';
    if (strlen(out) != len)
        return bad(c, "NUL in name");
    c->pos += len;
    return 0;
}

static int take_tensor(cursor *c, ref_tensor *t)
{
    if (take_name(c, t->name) || take_u32(c, &t->dtype) || take_u32(c, &t->ndim))
        return -1;
    if (t->dtype > 1)
        return bad(c, "unknown dtype");
    if (t->ndim > 4)
        return bad(c, "more than 4 dimensions");
    t->n = 1;
    for (uint32_t d = 0; d < t->ndim; d++) {
        if (take_u32(c, &t->dims[d]))
            return -1;
        /* n * 4 must fit in what remains; this bounds n before any overflow */
        if (t->dims[d] > (c->size - c->pos) / 4 || (t->dims[d] && t->n > (c->size - c->pos) / 4 / t->dims[d]))
            return bad(c, "tensor larger than the file");
        t->n *= t->dims[d];
    }
    if (t->n > (c->size - c->pos) / 4)
        return bad(c, "truncated tensor data");
    void *data = malloc(t->n ? t->n * 4 : 4);
    if (!data)
        return bad(c, "out of memory");
    for (size_t k = 0; k < t->n; k++) {
        uint32_t u = 0;
        take_u32(c, &u); /* cannot fail: checked above */
        memcpy((char *)data + 4 * k, &u, 4);
    }
    if (t->dtype == 0)
        t->f = data;
    else
        t->i = data;
    return 0;
}

static void ref_free(ref_file *r)
{
    for (int k = 0; k < r->n_cases; k++) {
        for (int j = 0; j < r->cases[k].n_tensors; j++) {
            free(r->cases[k].tensors[j].f);
            free(r->cases[k].tensors[j].i);
        }
        free(r->cases[k].tensors);
    }
    free(r->cases);
    memset(r, 0, sizeof *r);
}

static int parse_case(cursor *c, ref_case *rc)
{
    int v[24];
    if (take_name(c, rc->name))
        return -1;
    for (int k = 0; k < 24; k++)
        if (take_i32(c, &v[k]))
            return -1;
    ddpm_unet_config *cfg = &rc->cfg;
    memset(cfg, 0, sizeof *cfg);
    cfg->in_channels = v[0], cfg->image_size = v[1], cfg->ch = v[2], cfg->n_levels = v[3];
    memcpy(cfg->ch_mult, v + 4, sizeof cfg->ch_mult);
    cfg->num_res_blocks = v[12], cfg->n_attn = v[13];
    memcpy(cfg->attn_res, v + 14, sizeof cfg->attn_res);
    cfg->groups = v[22];
    cfg->dropout = 0.0f;
    rc->B = v[23];
    /* ddpm_unet_create checks the rest; these bound what the test indexes with */
    if (cfg->n_levels < 1 || cfg->n_levels > DDPM_MAX_LEVELS || cfg->n_attn < 0 ||
        cfg->n_attn > DDPM_MAX_LEVELS || rc->B < 1 || rc->B > 64)
        return bad(c, "config out of range");
    uint32_t n;
    if (take_u32(c, &n))
        return -1;
    if (n < 1 || n > 100000 || n > (c->size - c->pos) / 16) /* a tensor takes >= 16 bytes */
        return bad(c, "tensor count out of range");
    rc->tensors = calloc(n, sizeof *rc->tensors);
    if (!rc->tensors)
        return bad(c, "out of memory");
    for (uint32_t k = 0; k < n; k++) {
        rc->n_tensors = (int)k + 1; /* so that ref_free frees a partial case */
        if (take_tensor(c, &rc->tensors[k]))
            return -1;
    }
    return 0;
}

/* 0, or -1 with err[256] saying what is wrong. */
static int ref_load(ref_file *r, const char *path, char *err)
{
    memset(r, 0, sizeof *r);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, 256, "cannot open (run tests/reference/make_unet_reference.py)");
        return -1;
    }
    unsigned char *buf = malloc(REF_MAX_BYTES);
    size_t size = buf ? fread(buf, 1, REF_MAX_BYTES, fp) : 0;
    int too_big = buf && size == REF_MAX_BYTES && fgetc(fp) != EOF;
    int read_error = ferror(fp);
    fclose(fp);
    if (!buf || too_big || read_error) {
        free(buf);
        snprintf(err, 256, "%s", !buf ? "out of memory" : too_big ? "larger than 64 MB" : "read error");
        return -1;
    }
    cursor c = {.p = buf, .size = size, .err = err};
    uint32_t version, n_cases;
    int rc = -1;
    if (size < 8 || memcmp(buf, "DDPMREF1", 8)) {
        bad(&c, "bad magic (not a DDPMREF1 file)");
        goto out;
    }
    c.pos = 8;
    if (take_u32(&c, &version) || take_u32(&c, &n_cases))
        goto out;
    if (version != 1) {
        bad(&c, "unsupported version");
        goto out;
    }
    if (n_cases < 1 || n_cases > 16) {
        bad(&c, "case count out of range");
        goto out;
    }
    r->cases = calloc(n_cases, sizeof *r->cases);
    if (!r->cases) {
        bad(&c, "out of memory");
        goto out;
    }
    for (uint32_t k = 0; k < n_cases; k++) {
        r->n_cases = (int)k + 1;
        if (parse_case(&c, &r->cases[k]))
            goto out;
    }
    if (c.pos != size) {
        bad(&c, "trailing bytes after the last case");
        goto out;
    }
    rc = 0;
out:
    free(buf);
    if (rc)
        ref_free(r);
    return rc;
}

static const ref_tensor *ref_find(const ref_case *rc, const char *name)
{
    for (int k = 0; k < rc->n_tensors; k++)
        if (!strcmp(rc->tensors[k].name, name))
            return &rc->tensors[k];
    return NULL;
}

/* The tensor `name`, which must have this dtype and shape; fails the test otherwise. */
static const ref_tensor *ref_get(const ref_case *rc, const char *name, uint32_t dtype, int ndim,
                                 const int *shape)
{
    const ref_tensor *t = ref_find(rc, name);
    if (!t)
        fail_msg("%s: case %s has no tensor %s", REF_PATH, rc->name, name);
    int ok = t->dtype == dtype && t->ndim == (uint32_t)ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->dims[d] == (uint32_t)shape[d];
    if (!ok) {
        char want[64] = "", got[64] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", d ? "," : "", shape[d]);
        for (uint32_t d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%u", d ? "," : "", t->dims[d]);
        fail_msg("%s: case %s: tensor %s is dtype %u [%s], the C network needs dtype %u [%s]", REF_PATH,
                 rc->name, name, t->dtype, got, dtype, want);
    }
    return t;
}

/* ---------------------------------------------------------------- comparing */

typedef struct {
    double worst_ratio;  /* max over elements of |c - r| / allowed */
    double worst_scaled; /* max over elements of |c - r| / scale */
    char worst_name[REF_MAX_NAME + 8];
    int n_bad_tensors;   /* only the first few are printed in full */
} summary;

/* Elements with |c - r| > atol * scale + rtol * |r|: prints the tensor, its worst
 * element and the first values when there are any (for the first 12 failing
 * tensors of a summary), returns their count. */
static int compare(const char *what, const char *name, const float *c, const float *r, size_t n,
                   double scale, double atol, double rtol, summary *sum)
{
    int n_bad = 0;
    size_t worst_i = 0;
    double worst = -1;
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)c[i] - (double)r[i]);
        double allowed = atol * scale + rtol * fabs((double)r[i]);
        double ratio = diff / allowed;
        if (!(diff <= allowed)) /* NaN fails too */
            n_bad++;
        sum->worst_scaled = fmax(sum->worst_scaled, diff / scale);
        if (!(ratio <= worst)) {
            worst = ratio;
            worst_i = i;
        }
    }
    if (!(worst <= sum->worst_ratio)) {
        sum->worst_ratio = worst;
        snprintf(sum->worst_name, sizeof sum->worst_name, "%s", name);
    }
    if (n_bad && sum->n_bad_tensors++ == 12)
        fprintf(stderr, "(further failing tensors are not printed)\n");
    if (n_bad && sum->n_bad_tensors <= 12) {
        fprintf(stderr,
                "%s %s: %d of %zu elements off; worst [%zu]: C %.9g reference %.9g |diff| %.3g > allowed %.3g "
                "(scale %.3g)\n",
                what, name, n_bad, n, worst_i, (double)c[worst_i], (double)r[worst_i],
                fabs((double)c[worst_i] - (double)r[worst_i]),
                atol * scale + rtol * fabs((double)r[worst_i]), scale);
        for (size_t i = 0; i < n && i < 4; i++)
            fprintf(stderr, "  [%zu] C %.9g reference %.9g\n", i, (double)c[i], (double)r[i]);
    }
    return n_bad;
}

static double max_abs(const float *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)x[i]));
    return m;
}

/* ---------------------------------------------------------------- the tests */

static void check_case(const char *case_name)
{
    ref_file rf;
    char err[256];
    if (ref_load(&rf, REF_PATH, err))
        fail_msg("%s: %s", REF_PATH, err);
    const ref_case *rc = NULL;
    for (int k = 0; k < rf.n_cases; k++)
        if (!strcmp(rf.cases[k].name, case_name))
            rc = &rf.cases[k];
    if (!rc)
        fail_msg("%s: no case %s", REF_PATH, case_name);

    /* dropout on: the config's p, masks from the file's seed (counter 0) */
    const ref_tensor *drop_p = ref_find(rc, "dropout");
    int one = 1;
    ddpm_unet_config cfg_case = rc->cfg;
    ddpm_dropout_draw drop_draw, *drop = NULL;
    if (drop_p) {
        const ref_tensor *seed = ref_get(rc, "dropout_seed", 1, 1, &one);
        assert_int_equal(drop_p->n, 1);
        cfg_case.dropout = drop_p->f[0];
        /* the whole batch: its masks are the reference's (blocks in forward order,
           each image's mask where the flat whole-batch draw puts it, as C*H*W is
           a multiple of 4 here) */
        drop_draw = (ddpm_dropout_draw){.seed = (uint64_t)seed->i[0], .counter = 0, .first = 0, .batch = rc->B};
        drop = &drop_draw;
    }
    /* AdaGN and classes: the labels of the batch */
    const ref_tensor *ss = ref_find(rc, "scale_shift_norm"), *n_classes = ref_find(rc, "n_classes");
    const int *y = NULL;
    if (ss) {
        assert_true(ss->dtype == 1 && ss->n == 1 && ss->i[0] == 1);
        cfg_case.scale_shift_norm = 1;
    }
    if (n_classes) {
        assert_true(n_classes->dtype == 1 && n_classes->n == 1);
        cfg_case.n_classes = n_classes->i[0];
        const ref_tensor *labels = ref_get(rc, "y", 1, 1, &rc->B);
        for (int b = 0; b < rc->B; b++)
            assert_true(labels->i[b] >= -1 && labels->i[b] < cfg_case.n_classes);
        y = labels->i; /* -1 is DDPM_NO_CLASS */
    }
    ddpm_unet *net;
    if (ddpm_unet_create(&net, &cfg_case))
        fail_msg("%s: case %s: the C network refuses its config", REF_PATH, rc->name);
    const ddpm_unet_config *cfg = &net->cfg;
    int B = rc->B, S = cfg->image_size, C = cfg->in_channels;
    size_t D = (size_t)C * S * S, n = (size_t)B * D;
    int img_shape[4] = {B, C, S, S};
    const ref_tensor *x_t = ref_get(rc, "x_t", 0, 4, img_shape);
    const ref_tensor *t = ref_get(rc, "t", 1, 1, &B);
    const ref_tensor *eps = ref_get(rc, "eps", 0, 4, img_shape);
    const ref_tensor *eps_pred_ref = ref_get(rc, "eps_pred", 0, 4, img_shape);
    const ref_tensor *loss_ref = ref_get(rc, "loss", 0, 1, &one);

    /* the file holds exactly the C network's tensors, each with its gradient */
    assert_int_equal(rc->n_tensors, 5 + 2 * net->n_tensors + (drop ? 2 : 0) + (ss ? 1 : 0) + (n_classes ? 2 : 0));
    float *params = tu_alloc(net->n_params), *grads = tu_alloc(net->n_params);
    for (int i = 0; i < net->n_tensors; i++) {
        const ddpm_tensor_info *ti = &net->tensors[i];
        const ref_tensor *p = ref_get(rc, ti->name, 0, ti->ndim, ti->shape);
        memcpy(params + ti->offset, p->f, ti->n * sizeof(float));
    }

    int *steps = malloc((size_t)B * sizeof *steps);
    assert_non_null(steps);
    for (int b = 0; b < B; b++)
        steps[b] = t->i[b];
    float *eps_pred = tu_alloc(n), *d_eps_pred = tu_alloc(n);
    ddpm_unet_workspace *ws;
    assert_int_equal(ddpm_unet_workspace_create(&ws, net, B, 1), 0);
    ddpm_unet_forward_class(net, params, ws, eps_pred, x_t->f, steps, y, B, drop);

    summary s_eps = {0}, s_grad = {0};
    int n_bad = compare("eps_pred", "eps_pred", eps_pred, eps_pred_ref->f, n, max_abs(eps_pred_ref->f, n),
                        EPS_ATOL, EPS_RTOL, &s_eps);
    double loss = ddpm_mse_forward(eps_pred, eps->f, n);
    double loss_diff = fabs(loss - loss_ref->f[0]);
    if (!(loss_diff <= LOSS_RTOL * fabs(loss_ref->f[0]))) {
        fprintf(stderr, "loss: C %.9g reference %.9g\n", loss, (double)loss_ref->f[0]);
        n_bad++;
    }

    ddpm_mse_backward(d_eps_pred, eps_pred, eps->f, n, n);
    ddpm_unet_backward(net, params, grads, ws, d_eps_pred, B);
    double grad_max = 0;
    for (int i = 0; i < net->n_tensors; i++) {
        char gname[REF_MAX_NAME];
        snprintf(gname, sizeof gname, "grad.%s", net->tensors[i].name);
        const ref_tensor *g = ref_get(rc, gname, 0, net->tensors[i].ndim, net->tensors[i].shape);
        grad_max = fmax(grad_max, max_abs(g->f, g->n));
    }
    for (int i = 0; i < net->n_tensors; i++) {
        const ddpm_tensor_info *ti = &net->tensors[i];
        char gname[REF_MAX_NAME];
        snprintf(gname, sizeof gname, "grad.%s", ti->name);
        const ref_tensor *g = ref_find(rc, gname);
        double scale = fmax(max_abs(g->f, g->n), GRAD_FLOOR * grad_max);
        n_bad += compare("gradient", gname, grads + ti->offset, g->f, ti->n, scale, GRAD_ATOL, GRAD_RTOL, &s_grad);
    }

    /* The sampler's way: a forward-only workspace and a config with dropout on
     * (as a trained checkpoint has), no dropout RNG: the same network (for the
     * cases whose reference has no dropout). */
    if (!drop) {
        ddpm_unet_config cfg_drop = *cfg;
        cfg_drop.dropout = 0.1f;
        ddpm_unet *net_drop;
        ddpm_unet_workspace *ws_fwd;
        assert_int_equal(ddpm_unet_create(&net_drop, &cfg_drop), 0);
        assert_int_equal(net_drop->n_params, net->n_params);
        assert_int_equal(ddpm_unet_workspace_create(&ws_fwd, net_drop, B, 0), 0);
        float *eps_pred2 = tu_alloc(n);
        ddpm_unet_forward_class(net_drop, params, ws_fwd, eps_pred2, x_t->f, steps, y, B, NULL);
        summary s_eps2 = {0};
        n_bad += compare("eps_pred (forward-only workspace, dropout 0.1, no RNG)", "eps_pred", eps_pred2,
                         eps_pred_ref->f, n, max_abs(eps_pred_ref->f, n), EPS_ATOL, EPS_RTOL, &s_eps2);
        free(eps_pred2);
        ddpm_unet_workspace_free(ws_fwd);
        ddpm_unet_free(net_drop);
    }

    /* The measured margins, for the record: 1 would be the tolerance. */
    printf("[ ref      ] %s: %zu parameters; worst |diff|/allowed: eps_pred %.3g, loss %.3g, "
           "gradients %.3g (%s); worst |diff|/scale: eps_pred %.3g, gradients %.3g; loss |diff|/loss %.3g\n",
           rc->name, net->n_params, s_eps.worst_ratio, loss_diff / (LOSS_RTOL * fabs(loss_ref->f[0])),
           s_grad.worst_ratio, s_grad.worst_name, s_eps.worst_scaled, s_grad.worst_scaled,
           loss_diff / fabs(loss_ref->f[0]));

    free(eps_pred);
    free(d_eps_pred);
    free(steps);
    free(params);
    free(grads);
    ddpm_unet_workspace_free(ws);
    ddpm_unet_free(net);
    ref_free(&rf);
    assert_int_equal(n_bad, 0);
}

/* 8x8 RGB, ch 8, ch_mult 1,2, one res block per level, attention at 4x4 (and in
 * the middle), 2 groups: skip convs, Downsample, Upsample, every kind of tensor. */
static void test_unet_matches_pytorch_reference_rgb_two_levels(void **state)
{
    (void)state;
    check_case("rgb8_ch8_mult1-2_res1_attn4_g2");
}

/* 8x8 gray, ch 4, ch_mult 1,2,2, two res blocks per level, attention at 8x8 and
 * 2x2: three levels, two resamplings each way, a skip stack nine deep. */
static void test_unet_matches_pytorch_reference_gray_three_levels(void **state)
{
    (void)state;
    check_case("gray8_ch4_mult1-2-2_res2_attn8-2_g2");
}

/* Case 1's network with dropout 0.2 in every ResBlock, the masks drawn from the
 * dropout RNG (seed 77, counter 0) and given to the reference: the backward through
 * the masks, in forward and in reverse order of the ResBlocks. */
static void test_unet_matches_pytorch_reference_with_dropout(void **state)
{
    (void)state;
    check_case("rgb8_ch8_mult1-2_res1_attn4_g2_dropout0.2");
}

/* Case 1's network with AdaGN (--scale-shift-norm) in every ResBlock and three
 * classes, labels 2, "no class" and 0: temb_proj's 2 cout outputs as scale then
 * shift, the class embedding's row per image, and the "no class" row. */
static void test_unet_matches_pytorch_reference_scale_shift_norm_with_classes(void **state)
{
    (void)state;
    check_case("rgb8_ch8_mult1-2_res1_attn4_g2_adagn_classes3");
}

/* The parser refuses damaged files with a message instead of crashing. */
static void test_reference_parser_refuses_damaged_files(void **state)
{
    (void)state;
    FILE *fp = fopen(REF_PATH, "rb");
    if (!fp)
        fail_msg("%s: cannot open", REF_PATH);
    unsigned char *buf = malloc(REF_MAX_BYTES);
    assert_non_null(buf);
    size_t size = fread(buf, 1, REF_MAX_BYTES, fp);
    fclose(fp);
    assert_true(size > 64);
    char tmp[] = "/tmp/ddpm_ref_XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    fp = fdopen(fd, "wb");
    assert_non_null(fp);
    ref_file rf;
    char err[256];
    /* truncations at many points, including inside headers and data */
    size_t cuts[] = {0, 7, 12, 16, 20, 40, 200, size / 3, size / 2, size - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        assert_int_equal(ftruncate(fileno(fp), 0), 0);
        rewind(fp);
        assert_int_equal(fwrite(buf, 1, cuts[k], fp), cuts[k]);
        fflush(fp);
        err[0] = '\0';
        assert_int_equal(ref_load(&rf, tmp, err), -1);
        assert_true(err[0] != '\0');
    }
    /* a huge dimension in the first tensor's header */
    {
        /* magic 8, version 4, n_cases 4, case name (4 + len), config 96, n_tensors 4,
           then the first tensor: name (4 + len), dtype 4, ndim 4, dims */
        uint32_t len = (uint32_t)buf[16] | (uint32_t)buf[17] << 8;
        size_t first = 20 + len + 96 + 4;
        uint32_t tlen = (uint32_t)buf[first] | (uint32_t)buf[first + 1] << 8;
        size_t dim0 = first + 4 + tlen + 8;
        unsigned char saved[4];
        memcpy(saved, buf + dim0, 4);
        memset(buf + dim0, 0xff, 4);
        assert_int_equal(ftruncate(fileno(fp), 0), 0);
        rewind(fp);
        assert_int_equal(fwrite(buf, 1, size, fp), size);
        fflush(fp);
        assert_int_equal(ref_load(&rf, tmp, err), -1);
        assert_non_null(strstr(err, "larger than the file"));
        memcpy(buf + dim0, saved, 4);
    }
    fclose(fp);
    remove(tmp);
    assert_int_equal(ref_load(&rf, "/nonexistent/unet_reference.bin", err), -1);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unet_matches_pytorch_reference_rgb_two_levels),
        cmocka_unit_test(test_unet_matches_pytorch_reference_gray_three_levels),
        cmocka_unit_test(test_unet_matches_pytorch_reference_with_dropout),
        cmocka_unit_test(test_unet_matches_pytorch_reference_scale_shift_norm_with_classes),
        cmocka_unit_test(test_reference_parser_refuses_damaged_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
