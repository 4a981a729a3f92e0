/* unet.c: the U-Net of DESIGN.md section 2 as a flat list of modules built once
 * from the config. Building the list also lays out the parameter arena (the
 * tensor table, in PyTorch names) and the activation arenas, in floats per
 * image; a workspace multiplies those by its maximum batch. Forward walks the
 * list, backward walks it in reverse, every op from include/ddpm/ops.h. */
#include "ddpm/unet.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/ops.h"

#define GN_EPS 1e-6f

enum module_kind { M_RES, M_ATTN, M_DOWN, M_UP };

/* parameter roles */
enum { P_NORM1_W, P_NORM1_B, P_CONV1_W, P_CONV1_B, P_TEMB_W, P_TEMB_B, P_NORM2_W, P_NORM2_B,
       P_CONV2_W, P_CONV2_B, P_SKIP_W, P_SKIP_B, P_ROLES };
enum { P_NORM_W, P_NORM_B, P_Q_W, P_Q_B, P_K_W, P_K_B, P_V_W, P_V_B, P_PROJ_W, P_PROJ_B };
enum { P_CONV_W, P_CONV_B };
/* activation roles, offsets in floats per image */
enum { A_XCAT, A_A1, A_MEAN1, A_RSTD1, A_S1, A_H1, A_A2, A_MEAN2, A_RSTD2, A_S2, A_MASK, A_D2,
       A_TP, A_ROLES };
enum { A_A, A_MEAN, A_RSTD, A_Q, A_K, A_V, A_W, A_H };
enum { A_U };

typedef struct {
    int kind;
    int cin, cout;   /* cin: channels entering (after the skip concat) */
    int H, W;        /* input resolution */
    int in_slot;     /* input activation */
    int skip_slot;   /* >= 0: input is concat(in_slot, skip_slot) */
    int out_slot;
    int has_skip_conv;
    size_t p[P_ROLES];
    size_t a[A_ROLES];
} module;

typedef struct {
    int C, H, W;
    size_t act;  /* output activation, floats per image */
    size_t dact; /* its gradient */
} slot;

struct ddpm_unet_plan {
    int n_modules, n_slots;
    module *modules;
    slot *slots;
    int emb; /* 4 ch */
    size_t p_temb0_w, p_temb0_b, p_temb2_w, p_temb2_b, p_conv_in_w, p_conv_in_b;
    size_t p_norm_out_w, p_norm_out_b, p_conv_out_w, p_conv_out_b;
    size_t p_class_emb; /* [n_classes + 1, emb] when n_classes > 0 */
    size_t a_x, a_e0, a_t1, a_t1s, a_temb, a_temb_act, a_out_a, a_out_mean, a_out_rstd, a_out_s;
    size_t d_temb_act;
    size_t act_per_image, dact_per_image, tmp_per_image;
};

struct ddpm_unet_workspace {
    int max_batch, training, dropout_applied;
    int *labels; /* [max_batch] class-embedding rows of the last forward */
    float *act, *dact, *tmp, *conv_scratch, *attn_scratch;
    size_t bytes;
    int profile;
    double prof[2][DDPM_PROF_COUNT];
};

/* ---------------------------------------------------------------- config */

void ddpm_unet_config_default(ddpm_unet_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->in_channels = 1;
    cfg->image_size = 28;
    cfg->ch = 32;
    cfg->n_levels = 3;
    cfg->ch_mult[0] = 1, cfg->ch_mult[1] = 2, cfg->ch_mult[2] = 2;
    cfg->num_res_blocks = 2;
    cfg->n_attn = 1;
    cfg->attn_res[0] = 14;
    cfg->groups = 8;
    cfg->dropout = 0.1f;
}

int ddpm_unet_config_check(const ddpm_unet_config *c)
{
    if (c->in_channels != 1 && c->in_channels != 3)
        return ddpm_error(DDPM_EINVAL, "channels must be 1 or 3, got %d", c->in_channels);
    if (c->n_levels < 1 || c->n_levels > DDPM_MAX_LEVELS)
        return ddpm_error(DDPM_EINVAL, "ch-mult must list 1 to %d levels", DDPM_MAX_LEVELS);
    if (c->ch < 2 || c->ch % 2 || c->ch > 4096)
        return ddpm_error(DDPM_EINVAL, "ch must be even and in 2..4096, got %d", c->ch);
    if (c->num_res_blocks < 1 || c->num_res_blocks > 16)
        return ddpm_error(DDPM_EINVAL, "res-blocks must be in 1..16, got %d", c->num_res_blocks);
    if (c->groups < 1)
        return ddpm_error(DDPM_EINVAL, "groups must be positive, got %d", c->groups);
    if (!(c->dropout >= 0 && c->dropout < 1))
        return ddpm_error(DDPM_EINVAL, "dropout must be in [0, 1), got %g", c->dropout);
    int div = 1 << (c->n_levels - 1);
    if (c->image_size < div || c->image_size > 4096 || c->image_size % div)
        return ddpm_error(DDPM_EINVAL,
                          "image size %d is not divisible by 2^(levels-1) = %d (%d levels in ch-mult)",
                          c->image_size, div, c->n_levels);
    for (int i = 0; i < c->n_levels; i++) {
        if (c->ch_mult[i] < 1 || c->ch_mult[i] > 64)
            return ddpm_error(DDPM_EINVAL, "ch-mult entries must be in 1..64, got %d", c->ch_mult[i]);
        int C = c->ch * c->ch_mult[i];
        if (C % c->groups)
            return ddpm_error(DDPM_EINVAL, "groups %d does not divide %d channels (ch %d x ch-mult %d)",
                              c->groups, C, c->ch, c->ch_mult[i]);
    }
    if (c->ch % c->groups)
        return ddpm_error(DDPM_EINVAL, "groups %d does not divide ch %d", c->groups, c->ch);
    if ((unsigned)c->prediction >= DDPM_N_PREDICTIONS)
        return ddpm_error(DDPM_EINVAL, "unknown prediction type %d", (int)c->prediction);
    if (c->n_classes < 0 || c->n_classes > DDPM_MAX_CLASSES)
        return ddpm_error(DDPM_EINVAL, "classes must be in 0..%d, got %d", DDPM_MAX_CLASSES, c->n_classes);
    for (int i = 0; i < c->n_attn; i++) {
        int ok = 0;
        for (int l = 0; l < c->n_levels; l++)
            ok |= c->attn_res[i] == c->image_size >> l;
        if (!ok)
            return ddpm_error(DDPM_EINVAL, "attention resolution %d is not one of the U-Net's resolutions",
                              c->attn_res[i]);
    }
    return DDPM_OK;
}

/* ---------------------------------------------------------------- building */

typedef struct {
    ddpm_unet *net;
    ddpm_unet_plan *plan;
    int cap_tensors, cap_modules, cap_slots;
    size_t act, dact;
    int err;
} builder;

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

static size_t add_param(builder *b, const char *prefix, const char *name, int ndim, int s0, int s1,
                        int s2, int s3, ddpm_init_kind init)
{
    ddpm_unet *net = b->net;
    if (net->n_tensors == b->cap_tensors) {
        int cap = b->cap_tensors ? 2 * b->cap_tensors : 64;
        ddpm_tensor_info *t = realloc(net->tensors, (size_t)cap * sizeof *t);
        if (!t) {
            b->err = 1;
            return 0;
        }
        net->tensors = t;
        b->cap_tensors = cap;
    }
    ddpm_tensor_info *t = &net->tensors[net->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s%s%s", prefix, *prefix ? "." : "", name);
    int shape[4] = {s0, s1, s2, s3};
    t->ndim = ndim;
    t->n = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->n *= (size_t)shape[i];
    }
    t->init = init;
    t->offset = net->n_params;
    net->n_params += t->n;
    return t->offset;
}

/* a per-image activation buffer: its offset in floats per image */
static size_t add_act(builder *b, size_t per_image)
{
    size_t off = b->act;
    b->act += round16(per_image);
    return off;
}

static int add_slot(builder *b, int C, int H, int W)
{
    ddpm_unet_plan *p = b->plan;
    if (p->n_slots == b->cap_slots) {
        int cap = b->cap_slots ? 2 * b->cap_slots : 32;
        slot *s = realloc(p->slots, (size_t)cap * sizeof *s);
        if (!s) {
            b->err = 1;
            return 0;
        }
        p->slots = s;
        b->cap_slots = cap;
    }
    slot *s = &p->slots[p->n_slots];
    s->C = C, s->H = H, s->W = W;
    s->act = add_act(b, (size_t)C * H * W);
    s->dact = b->dact;
    b->dact += round16((size_t)C * H * W);
    return p->n_slots++;
}

static module *add_module(builder *b, int kind)
{
    ddpm_unet_plan *p = b->plan;
    if (p->n_modules == b->cap_modules) {
        int cap = b->cap_modules ? 2 * b->cap_modules : 32;
        module *m = realloc(p->modules, (size_t)cap * sizeof *m);
        if (!m) {
            b->err = 1;
            return NULL;
        }
        p->modules = m;
        b->cap_modules = cap;
    }
    module *m = &p->modules[p->n_modules++];
    memset(m, 0, sizeof *m);
    m->kind = kind;
    m->skip_slot = -1;
    return m;
}

static void tmp_need(builder *b, size_t per_image)
{
    if (per_image > b->plan->tmp_per_image)
        b->plan->tmp_per_image = per_image;
}

static int build_res(builder *b, const char *prefix, int in_slot, int skip_slot, int cout)
{
    const ddpm_unet_config *c = &b->net->cfg;
    ddpm_unet_plan *p = b->plan;
    slot in = p->slots[in_slot];
    int cin = in.C + (skip_slot >= 0 ? p->slots[skip_slot].C : 0);
    int H = in.H, W = in.W, G = c->groups;
    size_t HW = (size_t)H * W;
    module *m = add_module(b, M_RES);
    if (!m)
        return -1;
    m->cin = cin, m->cout = cout, m->H = H, m->W = W;
    m->in_slot = in_slot, m->skip_slot = skip_slot;
    m->has_skip_conv = cin != cout;
    m->p[P_NORM1_W] = add_param(b, prefix, "norm1.weight", 1, cin, 0, 0, 0, DDPM_INIT_ONE);
    m->p[P_NORM1_B] = add_param(b, prefix, "norm1.bias", 1, cin, 0, 0, 0, DDPM_INIT_ZERO);
    m->p[P_CONV1_W] = add_param(b, prefix, "conv1.weight", 4, cout, cin, 3, 3, DDPM_INIT_XAVIER);
    m->p[P_CONV1_B] = add_param(b, prefix, "conv1.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    m->p[P_TEMB_W] = add_param(b, prefix, "temb_proj.weight", 2, cout, p->emb, 0, 0, DDPM_INIT_XAVIER);
    m->p[P_TEMB_B] = add_param(b, prefix, "temb_proj.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    m->p[P_NORM2_W] = add_param(b, prefix, "norm2.weight", 1, cout, 0, 0, 0, DDPM_INIT_ONE);
    m->p[P_NORM2_B] = add_param(b, prefix, "norm2.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    m->p[P_CONV2_W] = add_param(b, prefix, "conv2.weight", 4, cout, cout, 3, 3, DDPM_INIT_ZERO);
    m->p[P_CONV2_B] = add_param(b, prefix, "conv2.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    if (m->has_skip_conv) {
        m->p[P_SKIP_W] = add_param(b, prefix, "skip.weight", 4, cout, cin, 1, 1, DDPM_INIT_XAVIER);
        m->p[P_SKIP_B] = add_param(b, prefix, "skip.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    }
    m->a[A_XCAT] = skip_slot >= 0 ? add_act(b, cin * HW) : 0;
    m->a[A_A1] = add_act(b, cin * HW);
    m->a[A_MEAN1] = add_act(b, (size_t)G);
    m->a[A_RSTD1] = add_act(b, (size_t)G);
    m->a[A_S1] = add_act(b, cin * HW);
    m->a[A_H1] = add_act(b, cout * HW);
    m->a[A_A2] = add_act(b, cout * HW);
    m->a[A_MEAN2] = add_act(b, (size_t)G);
    m->a[A_RSTD2] = add_act(b, (size_t)G);
    m->a[A_S2] = add_act(b, cout * HW);
    m->a[A_TP] = add_act(b, (size_t)cout);
    if (c->dropout > 0) {
        m->a[A_MASK] = add_act(b, cout * HW);
        m->a[A_D2] = add_act(b, cout * HW);
    }
    /* backward temporaries: dxcat, two of [cout], dh1, ds1, da1, dtp (+ forward's skip) */
    tmp_need(b, round16(cin * HW) * 3 + round16(cout * HW) * 4 + round16((size_t)cout));
    m->out_slot = add_slot(b, cout, H, W);
    return m->out_slot;
}

static int build_attn(builder *b, const char *prefix, int in_slot)
{
    const ddpm_unet_config *c = &b->net->cfg;
    ddpm_unet_plan *p = b->plan;
    slot in = p->slots[in_slot];
    int C = in.C;
    size_t N = (size_t)in.H * in.W;
    module *m = add_module(b, M_ATTN);
    if (!m)
        return -1;
    m->cin = m->cout = C, m->H = in.H, m->W = in.W, m->in_slot = in_slot;
    m->p[P_NORM_W] = add_param(b, prefix, "norm.weight", 1, C, 0, 0, 0, DDPM_INIT_ONE);
    m->p[P_NORM_B] = add_param(b, prefix, "norm.bias", 1, C, 0, 0, 0, DDPM_INIT_ZERO);
    static const char *names[] = {"q", "k", "v", "proj"};
    for (int i = 0; i < 4; i++) {
        char w[16], bias[16];
        snprintf(w, sizeof w, "%s.weight", names[i]);
        snprintf(bias, sizeof bias, "%s.bias", names[i]);
        m->p[P_Q_W + 2 * i] = add_param(b, prefix, w, 4, C, C, 1, 1, i == 3 ? DDPM_INIT_ZERO : DDPM_INIT_XAVIER);
        m->p[P_Q_B + 2 * i] = add_param(b, prefix, bias, 1, C, 0, 0, 0, DDPM_INIT_ZERO);
    }
    m->a[A_A] = add_act(b, C * N);
    m->a[A_MEAN] = add_act(b, (size_t)c->groups);
    m->a[A_RSTD] = add_act(b, (size_t)c->groups);
    m->a[A_Q] = add_act(b, C * N);
    m->a[A_K] = add_act(b, C * N);
    m->a[A_V] = add_act(b, C * N);
    m->a[A_W] = add_act(b, N * N);
    m->a[A_H] = add_act(b, C * N);
    tmp_need(b, round16(C * N) * 5);
    m->out_slot = add_slot(b, C, in.H, in.W);
    return m->out_slot;
}

static int build_resample(builder *b, const char *prefix, int in_slot, int up)
{
    ddpm_unet_plan *p = b->plan;
    slot in = p->slots[in_slot];
    module *m = add_module(b, up ? M_UP : M_DOWN);
    if (!m)
        return -1;
    m->cin = m->cout = in.C, m->H = in.H, m->W = in.W, m->in_slot = in_slot;
    char conv[DDPM_MAX_NAME];
    snprintf(conv, sizeof conv, "%s.conv", prefix);
    m->p[P_CONV_W] = add_param(b, conv, "weight", 4, in.C, in.C, 3, 3, DDPM_INIT_XAVIER);
    m->p[P_CONV_B] = add_param(b, conv, "bias", 1, in.C, 0, 0, 0, DDPM_INIT_ZERO);
    if (up) {
        m->a[A_U] = add_act(b, (size_t)in.C * in.H * in.W * 4);
        tmp_need(b, round16((size_t)in.C * in.H * in.W * 4));
        m->out_slot = add_slot(b, in.C, in.H * 2, in.W * 2);
    } else {
        m->out_slot = add_slot(b, in.C, in.H / 2, in.W / 2);
    }
    return m->out_slot;
}

static int has_attn(const ddpm_unet_config *c, int res)
{
    for (int i = 0; i < c->n_attn; i++)
        if (c->attn_res[i] == res)
            return 1;
    return 0;
}

void ddpm_unet_free(ddpm_unet *net)
{
    if (!net)
        return;
    if (net->plan) {
        free(net->plan->modules);
        free(net->plan->slots);
        free(net->plan);
    }
    free(net->tensors);
    free(net);
}

int ddpm_unet_create(ddpm_unet **out, const ddpm_unet_config *cfg)
{
    *out = NULL;
    int rc = ddpm_unet_config_check(cfg);
    if (rc)
        return rc;
    ddpm_unet *net = ddpm_calloc(1, sizeof *net);
    if (!net)
        return DDPM_ENOMEM;
    net->cfg = *cfg;
    net->plan = ddpm_calloc(1, sizeof *net->plan);
    if (!net->plan) {
        free(net);
        return DDPM_ENOMEM;
    }
    builder b = {.net = net, .plan = net->plan};
    ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    int S = c->image_size, E = 4 * c->ch, G = c->groups;
    p->emb = E;

    p->p_temb0_w = add_param(&b, "temb.0", "weight", 2, E, c->ch, 0, 0, DDPM_INIT_XAVIER);
    p->p_temb0_b = add_param(&b, "temb.0", "bias", 1, E, 0, 0, 0, DDPM_INIT_ZERO);
    p->p_temb2_w = add_param(&b, "temb.2", "weight", 2, E, E, 0, 0, DDPM_INIT_XAVIER);
    p->p_temb2_b = add_param(&b, "temb.2", "bias", 1, E, 0, 0, 0, DDPM_INIT_ZERO);
    if (c->n_classes > 0) /* zero init: a fresh conditional model is the unconditional one */
        p->p_class_emb = add_param(&b, "class_emb", "weight", 2, c->n_classes + 1, E, 0, 0, DDPM_INIT_ZERO);
    p->p_conv_in_w = add_param(&b, "conv_in", "weight", 4, c->ch, c->in_channels, 3, 3, DDPM_INIT_XAVIER);
    p->p_conv_in_b = add_param(&b, "conv_in", "bias", 1, c->ch, 0, 0, 0, DDPM_INIT_ZERO);

    p->a_x = add_act(&b, (size_t)c->in_channels * S * S);
    p->a_e0 = add_act(&b, (size_t)c->ch);
    p->a_t1 = add_act(&b, (size_t)E);
    p->a_t1s = add_act(&b, (size_t)E);
    p->a_temb = add_act(&b, (size_t)E);
    p->a_temb_act = add_act(&b, (size_t)E);
    p->d_temb_act = b.dact;
    b.dact += round16((size_t)E);
    tmp_need(&b, round16((size_t)E) * 3);

    int stack[4 * DDPM_MAX_LEVELS * 17 + 4], sp = 0;
    int h = add_slot(&b, c->ch, S, S); /* conv_in's output */
    stack[sp++] = h;
    char prefix[DDPM_MAX_NAME];
    int k = 0;
    for (int i = 0; i < c->n_levels; i++) {
        int res = S >> i, cout = c->ch * c->ch_mult[i];
        for (int j = 0; j < c->num_res_blocks; j++) {
            snprintf(prefix, sizeof prefix, "down.%d", k++);
            h = build_res(&b, prefix, h, -1, cout);
            if (has_attn(c, res)) {
                snprintf(prefix, sizeof prefix, "down.%d", k++);
                h = build_attn(&b, prefix, h);
            }
            stack[sp++] = h;
        }
        if (i != c->n_levels - 1) {
            snprintf(prefix, sizeof prefix, "down.%d", k++);
            h = build_resample(&b, prefix, h, 0);
            stack[sp++] = h;
        }
    }
    int mid_c = c->ch * c->ch_mult[c->n_levels - 1];
    h = build_res(&b, "mid.0", h, -1, mid_c);
    h = build_attn(&b, "mid.1", h); /* DESIGN.md: the middle always has attention */
    h = build_res(&b, "mid.2", h, -1, mid_c);
    k = 0;
    for (int i = c->n_levels - 1; i >= 0; i--) {
        int res = S >> i, cout = c->ch * c->ch_mult[i];
        for (int j = 0; j < c->num_res_blocks + 1; j++) {
            snprintf(prefix, sizeof prefix, "up.%d", k++);
            h = build_res(&b, prefix, h, stack[--sp], cout);
            if (has_attn(c, res)) {
                snprintf(prefix, sizeof prefix, "up.%d", k++);
                h = build_attn(&b, prefix, h);
            }
        }
        if (i != 0) {
            snprintf(prefix, sizeof prefix, "up.%d", k++);
            h = build_resample(&b, prefix, h, 1);
        }
    }
    p->p_norm_out_w = add_param(&b, "norm_out", "weight", 1, c->ch, 0, 0, 0, DDPM_INIT_ONE);
    p->p_norm_out_b = add_param(&b, "norm_out", "bias", 1, c->ch, 0, 0, 0, DDPM_INIT_ZERO);
    p->p_conv_out_w = add_param(&b, "conv_out", "weight", 4, c->in_channels, c->ch, 3, 3, DDPM_INIT_ZERO);
    p->p_conv_out_b = add_param(&b, "conv_out", "bias", 1, c->in_channels, 0, 0, 0, DDPM_INIT_ZERO);
    size_t HW = (size_t)S * S;
    p->a_out_a = add_act(&b, c->ch * HW);
    p->a_out_mean = add_act(&b, (size_t)G);
    p->a_out_rstd = add_act(&b, (size_t)G);
    p->a_out_s = add_act(&b, c->ch * HW);
    tmp_need(&b, round16(c->ch * HW) * 2);
    p->act_per_image = b.act;
    p->dact_per_image = b.dact;
    if (b.err || sp != 0) {
        ddpm_unet_free(net);
        return b.err ? ddpm_error(DDPM_ENOMEM, "out of memory building the U-Net")
                     : ddpm_error(DDPM_EINVAL, "internal error: skip stack not empty");
    }
    *out = net;
    return DDPM_OK;
}

int ddpm_unet_find_tensor(const ddpm_unet *net, const char *name)
{
    for (int i = 0; i < net->n_tensors; i++)
        if (!strcmp(net->tensors[i].name, name))
            return i;
    return -1;
}

void ddpm_unet_init_params(const ddpm_unet *net, float *params, uint64_t seed)
{
    ddpm_rng rng;
    ddpm_rng_init(&rng, seed, DDPM_STREAM_INIT);
    for (int i = 0; i < net->n_tensors; i++) {
        const ddpm_tensor_info *t = &net->tensors[i];
        float *w = params + t->offset;
        if (t->init == DDPM_INIT_XAVIER) {
            /* Glorot uniform: bound sqrt(6 / (fan_in + fan_out)), receptive field counted */
            size_t rf = t->ndim == 4 ? (size_t)t->shape[2] * t->shape[3] : 1;
            double fan_in = (double)t->shape[1] * rf, fan_out = (double)t->shape[0] * rf;
            float bound = (float)sqrt(6.0 / (fan_in + fan_out));
            ddpm_rng_uniform_fill(&rng, w, t->n);
            for (size_t j = 0; j < t->n; j++)
                w[j] = bound * (2.0f * w[j] - 1.0f);
        } else {
            float v = t->init == DDPM_INIT_ONE ? 1.0f : 0.0f;
            for (size_t j = 0; j < t->n; j++)
                w[j] = v;
        }
    }
}

double ddpm_unet_forward_flops(const ddpm_unet *net)
{
    const ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    double S2 = (double)c->image_size * c->image_size, E = p->emb, f = 0;
    f += 2.0 * (c->ch * E + E * E);                      /* time MLP */
    f += 2.0 * S2 * c->ch * c->in_channels * 9 * 2;      /* conv_in, conv_out */
    for (int i = 0; i < p->n_modules; i++) {
        const module *m = &p->modules[i];
        double HW = (double)m->H * m->W;
        switch (m->kind) {
        case M_RES:
            f += 2.0 * HW * m->cout * (m->cin * 9.0 + m->cout * 9.0 + (m->has_skip_conv ? m->cin : 0));
            f += 2.0 * E * m->cout;
            break;
        case M_ATTN:
            f += 2.0 * HW * m->cin * m->cin * 4 + 2.0 * 2.0 * HW * HW * m->cin;
            break;
        case M_DOWN:
            f += 2.0 * (HW / 4) * m->cin * m->cin * 9;
            break;
        case M_UP:
            f += 2.0 * (HW * 4) * m->cin * m->cin * 9;
            break;
        }
    }
    return f;
}

/* ---------------------------------------------------------------- workspace */

static size_t conv_scratch_need(const ddpm_unet *net, int B)
{
    const ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    int S = c->image_size;
    size_t need = ddpm_conv2d_scratch_floats(B, c->in_channels, S, S, c->ch, 3, 1, 1);
    size_t n = ddpm_conv2d_scratch_floats(B, c->ch, S, S, c->in_channels, 3, 1, 1);
    need = n > need ? n : need;
    for (int i = 0; i < p->n_modules; i++) {
        const module *m = &p->modules[i];
        size_t s[3] = {0, 0, 0};
        switch (m->kind) {
        case M_RES:
            s[0] = ddpm_conv2d_scratch_floats(B, m->cin, m->H, m->W, m->cout, 3, 1, 1);
            s[1] = ddpm_conv2d_scratch_floats(B, m->cout, m->H, m->W, m->cout, 3, 1, 1);
            s[2] = ddpm_conv2d_scratch_floats(B, m->cin, m->H, m->W, m->cout, 1, 1, 0);
            break;
        case M_ATTN:
            s[0] = ddpm_conv2d_scratch_floats(B, m->cin, m->H, m->W, m->cin, 1, 1, 0);
            break;
        case M_DOWN:
            s[0] = ddpm_conv2d_scratch_floats(B, m->cin, m->H, m->W, m->cin, 3, 2, 1);
            break;
        case M_UP:
            s[0] = ddpm_conv2d_scratch_floats(B, m->cin, 2 * m->H, 2 * m->W, m->cin, 3, 1, 1);
            break;
        }
        for (int j = 0; j < 3; j++)
            need = s[j] > need ? s[j] : need;
    }
    return need;
}

static float *alloc_floats(size_t n, size_t *bytes)
{
    float *p = NULL;
    size_t sz = (n ? n : 1) * sizeof(float);
    sz = (sz + 63) & ~(size_t)63;
    if (posix_memalign((void **)&p, 64, sz)) {
        ddpm_error(DDPM_ENOMEM, "out of memory allocating %zu MB of activations", sz >> 20);
        return NULL;
    }
    memset(p, 0, sz); /* touch the pages now, not in the first step */
    *bytes += sz;
    return p;
}

void ddpm_unet_workspace_free(ddpm_unet_workspace *ws)
{
    if (!ws)
        return;
    free(ws->act);
    free(ws->dact);
    free(ws->tmp);
    free(ws->conv_scratch);
    free(ws->attn_scratch);
    free(ws->labels);
    free(ws);
}

int ddpm_unet_workspace_create(ddpm_unet_workspace **out, const ddpm_unet *net, int max_batch,
                               int training)
{
    *out = NULL;
    if (max_batch < 1 || max_batch > 65536)
        return ddpm_error(DDPM_EINVAL, "batch must be in 1..65536, got %d", max_batch);
    const ddpm_unet_plan *p = net->plan;
    ddpm_unet_workspace *ws = ddpm_calloc(1, sizeof *ws);
    if (!ws)
        return DDPM_ENOMEM;
    ws->max_batch = max_batch;
    ws->training = training;
    size_t B = (size_t)max_batch;
    int max_n = 1;
    for (int i = 0; i < p->n_modules; i++)
        if (p->modules[i].kind == M_ATTN && p->modules[i].H * p->modules[i].W > max_n)
            max_n = p->modules[i].H * p->modules[i].W;
    ws->act = alloc_floats(p->act_per_image * B, &ws->bytes);
    ws->tmp = ws->act ? alloc_floats(p->tmp_per_image * B, &ws->bytes) : NULL;
    ws->conv_scratch = ws->tmp ? alloc_floats(conv_scratch_need(net, max_batch), &ws->bytes) : NULL;
    ws->attn_scratch = ws->conv_scratch ? alloc_floats(training ? ddpm_attention_scratch_floats(max_n) : 1, &ws->bytes) : NULL;
    ws->dact = ws->attn_scratch && training ? alloc_floats(p->dact_per_image * B, &ws->bytes) : NULL;
    ws->labels = ddpm_calloc(B, sizeof *ws->labels);
    if (!ws->attn_scratch || (training && !ws->dact) || !ws->labels) {
        ddpm_unet_workspace_free(ws);
        return DDPM_ENOMEM;
    }
    *out = ws;
    return DDPM_OK;
}

size_t ddpm_unet_workspace_bytes(const ddpm_unet_workspace *ws) { return ws->bytes; }

void ddpm_unet_profile_enable(ddpm_unet_workspace *ws, int on)
{
    ws->profile = on;
    memset(ws->prof, 0, sizeof ws->prof);
}

void ddpm_unet_profile_read(const ddpm_unet_workspace *ws, double fwd[DDPM_PROF_COUNT],
                            double bwd[DDPM_PROF_COUNT])
{
    for (int k = 0; k < DDPM_PROF_COUNT; k++) {
        fwd[k] = ws->prof[0][k];
        bwd[k] = ws->prof[1][k];
    }
}

const char *ddpm_unet_profile_name(int kind)
{
    static const char *names[DDPM_PROF_COUNT] = {"conv2d", "linear", "groupnorm", "attention",
                                                 "elementwise", "zero-fill"};
    return kind >= 0 && kind < DDPM_PROF_COUNT ? names[kind] : "?";
}

/* Time a statement into ws->prof[phase][kind] when profiling is on. */
#define PROF(phase, kind, stmt)                                                          \
    do {                                                                                 \
        if (ws->profile) {                                                               \
            double t0_ = omp_get_wtime();                                                \
            stmt;                                                                        \
            ws->prof[phase][kind] += omp_get_wtime() - t0_;                              \
        } else {                                                                         \
            stmt;                                                                        \
        }                                                                                \
    } while (0)

#define ACT(off) (ws->act + (off) * (size_t)ws->max_batch)
#define DACT(off) (ws->dact + (off) * (size_t)ws->max_batch)
#define PARAM(off) (params + (off))
#define GRAD(off) (grads + (off))

static void zero(ddpm_unet_workspace *ws, float *x, size_t n)
{
    PROF(1, DDPM_PROF_ZERO, memset(x, 0, n * sizeof *x));
}

/* ---------------------------------------------------------------- forward */

static void res_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                        const module *m, int B, ddpm_rng *dropout_rng)
{
    const ddpm_unet_plan *p = net->plan;
    int G = net->cfg.groups, HW = m->H * m->W, cin = m->cin, cout = m->cout;
    size_t n_in = (size_t)B * cin * HW, n_out = (size_t)B * cout * HW;
    const float *x = ACT(p->slots[m->in_slot].act);
    if (m->skip_slot >= 0) {
        float *xcat = ACT(m->a[A_XCAT]);
        int Ca = p->slots[m->in_slot].C;
        PROF(0, DDPM_PROF_ELEMENTWISE,
             ddpm_concat_forward(xcat, x, ACT(p->slots[m->skip_slot].act), B, Ca, cin - Ca, HW));
        x = xcat;
    }
    float *a1 = ACT(m->a[A_A1]), *s1 = ACT(m->a[A_S1]), *h1 = ACT(m->a[A_H1]);
    float *a2 = ACT(m->a[A_A2]), *s2 = ACT(m->a[A_S2]), *tp = ACT(m->a[A_TP]);
    float *out = ACT(p->slots[m->out_slot].act);
    PROF(0, DDPM_PROF_NORM,
         ddpm_groupnorm_forward(a1, ACT(m->a[A_MEAN1]), ACT(m->a[A_RSTD1]), x, PARAM(m->p[P_NORM1_W]),
                                PARAM(m->p[P_NORM1_B]), B, cin, HW, G, GN_EPS));
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_silu_forward(s1, a1, n_in));
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward(h1, ws->conv_scratch, s1, PARAM(m->p[P_CONV1_W]), PARAM(m->p[P_CONV1_B]), B,
                             cin, m->H, m->W, cout, 3, 1, 1));
    PROF(0, DDPM_PROF_LINEAR,
         ddpm_linear_forward(tp, ACT(p->a_temb_act), PARAM(m->p[P_TEMB_W]), PARAM(m->p[P_TEMB_B]), B,
                             p->emb, cout));
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_channel_forward(h1, tp, B, cout, HW));
    PROF(0, DDPM_PROF_NORM,
         ddpm_groupnorm_forward(a2, ACT(m->a[A_MEAN2]), ACT(m->a[A_RSTD2]), h1, PARAM(m->p[P_NORM2_W]),
                                PARAM(m->p[P_NORM2_B]), B, cout, HW, G, GN_EPS));
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_silu_forward(s2, a2, n_out));
    const float *d2 = s2;
    if (ws->dropout_applied) {
        float *d2buf = ACT(m->a[A_D2]);
        PROF(0, DDPM_PROF_ELEMENTWISE,
             ddpm_dropout_forward(d2buf, ACT(m->a[A_MASK]), s2, net->cfg.dropout, n_out, dropout_rng->seed,
                                  dropout_rng->counter));
        dropout_rng->counter += (n_out + 3) / 4;
        d2 = d2buf;
    }
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward(out, ws->conv_scratch, d2, PARAM(m->p[P_CONV2_W]), PARAM(m->p[P_CONV2_B]), B,
                             cout, m->H, m->W, cout, 3, 1, 1));
    if (m->has_skip_conv) {
        float *sk = ws->tmp;
        PROF(0, DDPM_PROF_CONV,
             ddpm_conv2d_forward(sk, ws->conv_scratch, x, PARAM(m->p[P_SKIP_W]), PARAM(m->p[P_SKIP_B]), B,
                                 cin, m->H, m->W, cout, 1, 1, 0));
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(out, out, sk, n_out));
    } else {
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(out, out, x, n_out));
    }
}

static void conv1x1_forward(ddpm_unet_workspace *ws, float *out, const float *in, const float *w,
                            const float *b, int B, int C, int H, int W)
{
    PROF(0, DDPM_PROF_CONV, ddpm_conv2d_forward(out, ws->conv_scratch, in, w, b, B, C, H, W, C, 1, 1, 0));
}

static void attn_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                         const module *m, int B)
{
    const ddpm_unet_plan *p = net->plan;
    int C = m->cin, H = m->H, W = m->W, N = H * W;
    const float *x = ACT(p->slots[m->in_slot].act);
    float *a = ACT(m->a[A_A]), *q = ACT(m->a[A_Q]), *k = ACT(m->a[A_K]), *v = ACT(m->a[A_V]);
    float *h = ACT(m->a[A_H]), *out = ACT(p->slots[m->out_slot].act);
    PROF(0, DDPM_PROF_NORM,
         ddpm_groupnorm_forward(a, ACT(m->a[A_MEAN]), ACT(m->a[A_RSTD]), x, PARAM(m->p[P_NORM_W]),
                                PARAM(m->p[P_NORM_B]), B, C, N, net->cfg.groups, GN_EPS));
    conv1x1_forward(ws, q, a, PARAM(m->p[P_Q_W]), PARAM(m->p[P_Q_B]), B, C, H, W);
    conv1x1_forward(ws, k, a, PARAM(m->p[P_K_W]), PARAM(m->p[P_K_B]), B, C, H, W);
    conv1x1_forward(ws, v, a, PARAM(m->p[P_V_W]), PARAM(m->p[P_V_B]), B, C, H, W);
    PROF(0, DDPM_PROF_ATTN, ddpm_attention_forward(h, ACT(m->a[A_W]), q, k, v, B, C, N));
    conv1x1_forward(ws, out, h, PARAM(m->p[P_PROJ_W]), PARAM(m->p[P_PROJ_B]), B, C, H, W);
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(out, out, x, (size_t)B * C * N));
}

void ddpm_unet_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                       float *eps_pred, const float *x_t, const int *t, int B,
                       ddpm_rng *dropout_rng)
{
    ddpm_unet_forward_class(net, params, ws, eps_pred, x_t, t, NULL, B, dropout_rng);
}

void ddpm_unet_forward_class(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                             float *eps_pred, const float *x_t, const int *t, const int *y, int B,
                             ddpm_rng *dropout_rng)
{
    const ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    int S = c->image_size, HW = S * S, E = p->emb;
    ws->dropout_applied = ws->training && dropout_rng && c->dropout > 0;
    float *x = ACT(p->a_x);
    memcpy(x, x_t, (size_t)B * c->in_channels * HW * sizeof *x);
    float *e0 = ACT(p->a_e0), *t1 = ACT(p->a_t1), *t1s = ACT(p->a_t1s);
    float *temb = ACT(p->a_temb), *temb_act = ACT(p->a_temb_act);
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_timestep_embedding(e0, t, B, c->ch));
    PROF(0, DDPM_PROF_LINEAR, ddpm_linear_forward(t1, e0, PARAM(p->p_temb0_w), PARAM(p->p_temb0_b), B, c->ch, E));
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_silu_forward(t1s, t1, (size_t)B * E));
    PROF(0, DDPM_PROF_LINEAR, ddpm_linear_forward(temb, t1s, PARAM(p->p_temb2_w), PARAM(p->p_temb2_b), B, E, E));
    if (c->n_classes > 0) { /* temb += class_emb[y] (row n_classes: no class) */
        for (int b = 0; b < B; b++)
            ws->labels[b] = y && y[b] >= 0 && y[b] < c->n_classes ? y[b] : c->n_classes;
        ddpm_embedding_add_forward(temb, ws->labels, PARAM(p->p_class_emb), B, E);
    }
    /* every ResBlock uses SiLU(temb): compute it once */
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_silu_forward(temb_act, temb, (size_t)B * E));
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward(ACT(p->slots[0].act), ws->conv_scratch, x, PARAM(p->p_conv_in_w),
                             PARAM(p->p_conv_in_b), B, c->in_channels, S, S, c->ch, 3, 1, 1));
    for (int i = 0; i < p->n_modules; i++) {
        const module *m = &p->modules[i];
        const float *in = ACT(p->slots[m->in_slot].act);
        float *out = ACT(p->slots[m->out_slot].act);
        switch (m->kind) {
        case M_RES:
            res_forward(net, params, ws, m, B, dropout_rng);
            break;
        case M_ATTN:
            attn_forward(net, params, ws, m, B);
            break;
        case M_DOWN:
            PROF(0, DDPM_PROF_CONV,
                 ddpm_conv2d_forward(out, ws->conv_scratch, in, PARAM(m->p[P_CONV_W]), PARAM(m->p[P_CONV_B]), B,
                                     m->cin, m->H, m->W, m->cin, 3, 2, 1));
            break;
        case M_UP: {
            float *u = ACT(m->a[A_U]);
            PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_upsample_forward(u, in, B, m->cin, m->H, m->W));
            PROF(0, DDPM_PROF_CONV,
                 ddpm_conv2d_forward(out, ws->conv_scratch, u, PARAM(m->p[P_CONV_W]), PARAM(m->p[P_CONV_B]), B,
                                     m->cin, 2 * m->H, 2 * m->W, m->cin, 3, 1, 1));
            break;
        }
        }
    }
    const float *h = ACT(p->slots[p->n_slots - 1].act);
    float *oa = ACT(p->a_out_a), *os = ACT(p->a_out_s);
    PROF(0, DDPM_PROF_NORM,
         ddpm_groupnorm_forward(oa, ACT(p->a_out_mean), ACT(p->a_out_rstd), h, PARAM(p->p_norm_out_w),
                                PARAM(p->p_norm_out_b), B, c->ch, HW, c->groups, GN_EPS));
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_silu_forward(os, oa, (size_t)B * c->ch * HW));
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward(eps_pred, ws->conv_scratch, os, PARAM(p->p_conv_out_w), PARAM(p->p_conv_out_b), B,
                             c->ch, S, S, c->in_channels, 3, 1, 1));
}

/* ---------------------------------------------------------------- backward */

static void res_backward(const ddpm_unet *net, const float *params, float *grads,
                         ddpm_unet_workspace *ws, const module *m, int B)
{
    const ddpm_unet_plan *p = net->plan;
    int G = net->cfg.groups, HW = m->H * m->W, cin = m->cin, cout = m->cout;
    size_t n_in = (size_t)B * cin * HW, n_out = (size_t)B * cout * HW;
    size_t B_ = (size_t)ws->max_batch;
    /* temporaries, carved from ws->tmp in floats-per-image units x max batch */
    float *t_cat = ws->tmp;
    float *t_a = t_cat + round16((size_t)cin * HW) * B_;
    float *t_b = t_a + round16((size_t)cout * HW) * B_;
    float *t_dh1 = t_b + round16((size_t)cout * HW) * B_;
    float *t_ds1 = t_dh1 + round16((size_t)cout * HW) * B_;
    float *t_da1 = t_ds1 + round16((size_t)cin * HW) * B_;
    float *t_dtp = t_da1 + round16((size_t)cin * HW) * B_;

    const float *dout = DACT(p->slots[m->out_slot].dact);
    const float *x = m->skip_slot >= 0 ? ACT(m->a[A_XCAT]) : ACT(p->slots[m->in_slot].act);
    float *dx = DACT(p->slots[m->in_slot].dact);
    /* with a concat in front, dx is a temporary that the first write overwrites */
    const int cat = m->skip_slot >= 0;
    if (cat)
        dx = t_cat;
    /* out = skip(x) + conv2(...) */
    if (m->has_skip_conv && cat)
        PROF(1, DDPM_PROF_CONV,
             ddpm_conv2d_backward_to(dx, GRAD(m->p[P_SKIP_W]), GRAD(m->p[P_SKIP_B]), ws->conv_scratch, dout, x,
                                     PARAM(m->p[P_SKIP_W]), B, cin, m->H, m->W, cout, 1, 1, 0));
    else if (m->has_skip_conv)
        PROF(1, DDPM_PROF_CONV,
             ddpm_conv2d_backward(dx, GRAD(m->p[P_SKIP_W]), GRAD(m->p[P_SKIP_B]), ws->conv_scratch, dout, x,
                                  PARAM(m->p[P_SKIP_W]), B, cin, m->H, m->W, cout, 1, 1, 0));
    else if (cat)
        PROF(1, DDPM_PROF_ELEMENTWISE, memcpy(dx, dout, n_out * sizeof *dx));
    else
        PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(dx, dx, dout, n_out));
    const float *d2 = ws->dropout_applied ? ACT(m->a[A_D2]) : ACT(m->a[A_S2]);
    float *dd2 = t_a;
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_to(dd2, GRAD(m->p[P_CONV2_W]), GRAD(m->p[P_CONV2_B]), ws->conv_scratch, dout, d2,
                              PARAM(m->p[P_CONV2_W]), B, cout, m->H, m->W, cout, 3, 1, 1));
    float *ds2 = dd2, *spare = t_b;
    if (ws->dropout_applied) {
        PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_dropout_backward_to(spare, dd2, ACT(m->a[A_MASK]), n_out));
        ds2 = spare;
        spare = dd2;
    }
    float *da2 = spare;
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward_to(da2, ds2, ACT(m->a[A_A2]), n_out));
    float *dh1 = t_dh1;
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_backward_to(dh1, GRAD(m->p[P_NORM2_W]), GRAD(m->p[P_NORM2_B]), da2, ACT(m->a[A_H1]),
                                 ACT(m->a[A_MEAN2]), ACT(m->a[A_RSTD2]), PARAM(m->p[P_NORM2_W]), B, cout, HW, G));
    zero(ws, t_dtp, (size_t)B * cout);
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_add_channel_backward(t_dtp, dh1, B, cout, HW));
    PROF(1, DDPM_PROF_LINEAR,
         ddpm_linear_backward(DACT(p->d_temb_act), GRAD(m->p[P_TEMB_W]), GRAD(m->p[P_TEMB_B]), t_dtp,
                              ACT(p->a_temb_act), PARAM(m->p[P_TEMB_W]), B, p->emb, cout));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_to(t_ds1, GRAD(m->p[P_CONV1_W]), GRAD(m->p[P_CONV1_B]), ws->conv_scratch, dh1,
                              ACT(m->a[A_S1]), PARAM(m->p[P_CONV1_W]), B, cin, m->H, m->W, cout, 3, 1, 1));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward_to(t_da1, t_ds1, ACT(m->a[A_A1]), n_in));
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_backward(dx, GRAD(m->p[P_NORM1_W]), GRAD(m->p[P_NORM1_B]), t_da1, x, ACT(m->a[A_MEAN1]),
                                 ACT(m->a[A_RSTD1]), PARAM(m->p[P_NORM1_W]), B, cin, HW, G));
    if (m->skip_slot >= 0) {
        int Ca = p->slots[m->in_slot].C;
        PROF(1, DDPM_PROF_ELEMENTWISE,
             ddpm_concat_backward(DACT(p->slots[m->in_slot].dact), DACT(p->slots[m->skip_slot].dact), t_cat, B,
                                  Ca, cin - Ca, HW));
    }
}

static void attn_backward(const ddpm_unet *net, const float *params, float *grads,
                          ddpm_unet_workspace *ws, const module *m, int B)
{
    const ddpm_unet_plan *p = net->plan;
    int C = m->cin, H = m->H, W = m->W, N = H * W;
    size_t n = (size_t)B * C * N, stride = round16((size_t)C * N) * (size_t)ws->max_batch;
    float *dh = ws->tmp, *dq = dh + stride, *dk = dq + stride, *dv = dk + stride, *da = dv + stride;
    const float *dout = DACT(p->slots[m->out_slot].dact);
    float *dx = DACT(p->slots[m->in_slot].dact);
    const float *x = ACT(p->slots[m->in_slot].act), *a = ACT(m->a[A_A]);
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(dx, dx, dout, n));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_to(dh, GRAD(m->p[P_PROJ_W]), GRAD(m->p[P_PROJ_B]), ws->conv_scratch, dout,
                              ACT(m->a[A_H]), PARAM(m->p[P_PROJ_W]), B, C, H, W, C, 1, 1, 0));
    PROF(1, DDPM_PROF_ATTN,
         ddpm_attention_backward_to(dq, dk, dv, ws->attn_scratch, dh, ACT(m->a[A_W]), ACT(m->a[A_Q]),
                                 ACT(m->a[A_K]), ACT(m->a[A_V]), B, C, N));
    const float *dqkv[3] = {dq, dk, dv};
    /* the q conv writes da, k and v add to it */
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_to(da, GRAD(m->p[P_Q_W]), GRAD(m->p[P_Q_B]), ws->conv_scratch, dq, a,
                                 PARAM(m->p[P_Q_W]), B, C, H, W, C, 1, 1, 0));
    for (int i = 1; i < 3; i++)
        PROF(1, DDPM_PROF_CONV,
             ddpm_conv2d_backward(da, GRAD(m->p[P_Q_W + 2 * i]), GRAD(m->p[P_Q_B + 2 * i]), ws->conv_scratch,
                                  dqkv[i], a, PARAM(m->p[P_Q_W + 2 * i]), B, C, H, W, C, 1, 1, 0));
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_backward(dx, GRAD(m->p[P_NORM_W]), GRAD(m->p[P_NORM_B]), da, x, ACT(m->a[A_MEAN]),
                                 ACT(m->a[A_RSTD]), PARAM(m->p[P_NORM_W]), B, C, N, net->cfg.groups));
}

void ddpm_unet_backward(const ddpm_unet *net, const float *params, float *grads,
                        ddpm_unet_workspace *ws, const float *d_eps_pred, int B)
{
    const ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    int S = c->image_size, HW = S * S, E = p->emb;
    size_t B_ = (size_t)ws->max_batch;
    if (!ws->training)
        return;
    /* every activation gradient accumulates from its consumers: clear them once */
    zero(ws, ws->dact, p->dact_per_image * B_);

    /* out = conv_out(SiLU(GN(h))) */
    size_t n_top = (size_t)B * c->ch * HW;
    float *ds = ws->tmp, *da = ws->tmp + round16((size_t)c->ch * HW) * B_;
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_to(ds, GRAD(p->p_conv_out_w), GRAD(p->p_conv_out_b), ws->conv_scratch, d_eps_pred,
                              ACT(p->a_out_s), PARAM(p->p_conv_out_w), B, c->ch, S, S, c->in_channels, 3, 1, 1));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward_to(da, ds, ACT(p->a_out_a), n_top));
    const slot *last = &p->slots[p->n_slots - 1];
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_backward(DACT(last->dact), GRAD(p->p_norm_out_w), GRAD(p->p_norm_out_b), da,
                                 ACT(last->act), ACT(p->a_out_mean), ACT(p->a_out_rstd), PARAM(p->p_norm_out_w), B,
                                 c->ch, HW, c->groups));
    for (int i = p->n_modules - 1; i >= 0; i--) {
        const module *m = &p->modules[i];
        const float *in = ACT(p->slots[m->in_slot].act);
        float *din = DACT(p->slots[m->in_slot].dact);
        const float *dout = DACT(p->slots[m->out_slot].dact);
        switch (m->kind) {
        case M_RES:
            res_backward(net, params, grads, ws, m, B);
            break;
        case M_ATTN:
            attn_backward(net, params, grads, ws, m, B);
            break;
        case M_DOWN:
            PROF(1, DDPM_PROF_CONV,
                 ddpm_conv2d_backward(din, GRAD(m->p[P_CONV_W]), GRAD(m->p[P_CONV_B]), ws->conv_scratch, dout, in,
                                      PARAM(m->p[P_CONV_W]), B, m->cin, m->H, m->W, m->cin, 3, 2, 1));
            break;
        case M_UP: {
            float *du = ws->tmp;
            PROF(1, DDPM_PROF_CONV,
                 ddpm_conv2d_backward_to(du, GRAD(m->p[P_CONV_W]), GRAD(m->p[P_CONV_B]), ws->conv_scratch, dout,
                                      ACT(m->a[A_U]), PARAM(m->p[P_CONV_W]), B, m->cin, 2 * m->H, 2 * m->W,
                                      m->cin, 3, 1, 1));
            PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_upsample_backward(din, du, B, m->cin, m->H, m->W));
            break;
        }
        }
    }
    /* conv_in: no gradient for the input image */
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward(NULL, GRAD(p->p_conv_in_w), GRAD(p->p_conv_in_b), ws->conv_scratch,
                              DACT(p->slots[0].dact), ACT(p->a_x), PARAM(p->p_conv_in_w), B, c->in_channels, S, S,
                              c->ch, 3, 1, 1));
    /* time MLP: temb_act = SiLU(Linear2(SiLU(Linear0(emb)))) */
    size_t nE = (size_t)B * E, sE = round16((size_t)E) * B_;
    float *dtemb = ws->tmp, *dt1s = dtemb + sE, *dt1 = dt1s + sE;
    zero(ws, dt1s, sE);
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward_to(dtemb, DACT(p->d_temb_act), ACT(p->a_temb), nE));
    if (c->n_classes > 0)
        ddpm_embedding_add_backward(GRAD(p->p_class_emb), dtemb, ws->labels, B, E);
    PROF(1, DDPM_PROF_LINEAR,
         ddpm_linear_backward(dt1s, GRAD(p->p_temb2_w), GRAD(p->p_temb2_b), dtemb, ACT(p->a_t1s),
                              PARAM(p->p_temb2_w), B, E, E));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward_to(dt1, dt1s, ACT(p->a_t1), nE));
    PROF(1, DDPM_PROF_LINEAR,
         ddpm_linear_backward(NULL, GRAD(p->p_temb0_w), GRAD(p->p_temb0_b), dt1, ACT(p->a_e0),
                              PARAM(p->p_temb0_w), B, c->ch, E));
}
