/* unet.c: the U-Net of docs/design.md (Network) as a flat list of modules built once
 * from the config. Building the list also lays out the parameter arena (the
 * tensor table, in PyTorch names); a workspace lays out the activations of every
 * module for a maximum batch, as a struct of named pointers per module. Forward
 * walks the list, backward walks it in reverse, every op from include/ddpm/ops.h. */
#include "ddpm/unet.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/config.h"
#include "ddpm/error.h"
#include "ddpm/ops.h"

#define GN_EPS 1e-6f

enum module_kind { M_RES, M_ATTN, M_DOWN, M_UP };

/* Parameter offsets into the arena, per module kind. */
typedef struct {
    size_t norm1_w, norm1_b, conv1_w, conv1_b, temb_w, temb_b, norm2_w, norm2_b, conv2_w, conv2_b;
    size_t skip_w, skip_b; /* only when cin != cout */
} res_params;
typedef struct {
    size_t norm_w, norm_b, q_w, q_b, k_w, k_b, v_w, v_b, proj_w, proj_b;
} attn_params;
typedef struct {
    size_t conv_w, conv_b;
} resample_params;

typedef struct {
    int kind;
    int cin, cout;   /* cin: channels entering (after the skip concat) */
    int H, W;        /* input resolution */
    int in_slot;     /* input activation */
    int skip_slot;   /* >= 0: input is concat(in_slot, skip_slot) */
    int out_slot;
    int has_skip_conv;
    union {
        res_params res;
        attn_params attn;
        resample_params resample;
    } p;
} module;

/* A tensor between modules: conv_in's output, then each module's output. It is
 * written at step `producer` (the module's index, -1 for conv_in) and read last at
 * step `last_use` (n_modules for the head): its lifetime in forward, and, in
 * reverse, the lifetime of its gradient in backward. */
typedef struct {
    int C, H, W;
    int producer, last_use;
} slot;

/* Slots whose lifetimes do not overlap share a buffer: buffer[slot], and each
 * buffer's size in floats per image. */
typedef struct {
    int n;
    int *of_slot;
    size_t *size;
} buffer_plan;

struct ddpm_unet_plan {
    int n_modules, n_slots;
    module *modules;
    slot *slots;
    int emb; /* 4 ch */
    size_t p_temb0_w, p_temb0_b, p_temb2_w, p_temb2_b, p_conv_in_w, p_conv_in_b;
    size_t p_norm_out_w, p_norm_out_b, p_conv_out_w, p_conv_out_b;
    size_t p_class_emb; /* [n_classes + 1, emb] when n_classes > 0 */
    size_t tmp_per_image;   /* backward temporaries, floats per image */
    /* the slots by lifetime: their buffers in a forward-only workspace, and their
     * gradients' buffers in a training one (the same lifetimes, run in reverse) */
    buffer_plan by_lifetime;
};

/* Each block's activations, [B, ...] each (B the batch). In a training workspace
 * the "kept" ones are the block's own memory, kept from forward to backward; the
 * "transient" ones live in a scratch region that every block reuses, written by
 * forward and written again by backward from what was kept: a GroupNorm output
 * from its input and statistics, SiLU from the GroupNorm output, the dropout
 * output from the mask's bits, the concat and the upsample from their sources. In a
 * forward-only workspace every buffer of a block is in the scratch region, and
 * some alias (SiLU in place). */
typedef struct {
    /* kept */
    float *mean1, *rstd1;     /* GN1's statistics [B,G] */
    float *tp;                /* temb_proj(SiLU(temb)) [B,cout]; with scale_shift_norm
                                 [B,2 cout], AdaGN's scale then shift */
    float *h1;                /* conv1(s1) + tp [B,cout,HW]; conv1(s1) with AdaGN */
    float *mean2, *rstd2;     /* GN2's statistics */
    uint64_t dropout_counter; /* the first Philox counter of this block's dropout mask */
    uint8_t *mask;            /* the dropout mask as bits, ddpm_dropout_mask_bytes(cout HW) per image */
    /* transient */
    float *xcat; /* concat(h, skip) [B,cin,HW]; NULL without a skip input */
    float *a1;   /* GN1(x) [B,cin,HW] */
    float *s1;   /* SiLU(a1): conv1's input */
    float *a2;   /* GN2(h1) [B,cout,HW] */
    float *s2;   /* Dropout(SiLU(a2)): conv2's input; then the skip conv's output */
    float *affine; /* AdaGN: GN2's per-image affine [B,2 cout]; NULL without */
} res_acts;

typedef struct {
    float *mean, *rstd; /* kept: GN's statistics [B,G] */
    float *a;           /* transient: GN(x) [B,C,N] */
    float *q, *k, *v;   /* kept: the 1x1 convs of a [B,C,N] */
    float *w;           /* kept: softmax weights [B,N,N] */
    float *h;           /* kept: attention output [B,C,N], proj's input */
} attn_acts;

typedef struct {
    float *u; /* transient: nearest 2x upsample of the input [B,C,2H,2W], the conv's input */
} up_acts;

typedef union {
    res_acts res;
    attn_acts attn;
    up_acts up;
} module_acts;

struct ddpm_unet_workspace {
    int max_batch, training, dropout_applied;
    ddpm_precision precision; /* of the convs' and attention's products, forward and backward */
    int *labels; /* [max_batch] class-embedding rows of the last forward */
    uint64_t dropout_seed;
    int dropout_first; /* ddpm_dropout_draw.first of the last forward */
    float *arena;      /* the kept activations (training) or the slots (forward only) */
    float *block;      /* the transient activations of one block at a time */
    float *grad_arena; /* the activation gradients (training only) */
    float **h, **dh;   /* per slot: the activation and its gradient */
    module_acts *acts; /* per module */
    struct {
        float *x;                     /* x_t [B,in_channels,S,S], kept for conv_in's backward */
        float *emb;                   /* sinusoidal embedding [B,ch] */
        float *t1, *t1s;              /* Linear0(emb) and its SiLU [B,4ch] */
        float *temb, *temb_act;       /* Linear2(t1s) and its SiLU, read by every ResBlock */
        float *d_temb_act;            /* gradient of temb_act, summed over the ResBlocks */
    } time;
    struct {
        float *mean, *rstd; /* GN(h)'s statistics, kept */
        float *a, *s;       /* GN(h) and SiLU(a): conv_out's input, transient */
    } head;
    float *tmp, *conv_scratch, *attn_scratch;
    size_t bytes;
    int profile;
    double prof[2][DDPM_PROF_COUNT];
};

/* ---------------------------------------------------------------- config */

const char *ddpm_class_emb_init_name(ddpm_class_emb_init kind)
{
    static const char *names[DDPM_N_CLASS_EMB_INITS] = {"zero", "normal"};
    return (unsigned)kind < DDPM_N_CLASS_EMB_INITS ? names[kind] : "?";
}

void ddpm_unet_config_default(ddpm_unet_config *cfg)
{
    ddpm_run_config c; /* the defaults are the option table's (options.h) */
    ddpm_run_config_default(&c);
    *cfg = c.model;
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
    if (c->learn_sigma != 0 && c->learn_sigma != 1)
        return ddpm_error(DDPM_EINVAL, "learn_sigma must be 0 or 1, got %d", c->learn_sigma);
    if (c->scale_shift_norm != 0 && c->scale_shift_norm != 1)
        return ddpm_error(DDPM_EINVAL, "scale_shift_norm must be 0 or 1, got %d", c->scale_shift_norm);
    if ((unsigned)c->class_emb_init >= DDPM_N_CLASS_EMB_INITS)
        return ddpm_error(DDPM_EINVAL, "unknown class embedding init %d", c->class_emb_init);
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
    s->producer = p->n_modules - 1; /* the module being built, or -1: conv_in */
    s->last_use = -1;
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
    ddpm_unet_plan *p = b->plan;
    slot in = p->slots[in_slot];
    int cin = in.C + (skip_slot >= 0 ? p->slots[skip_slot].C : 0);
    int H = in.H, W = in.W;
    size_t HW = (size_t)H * W;
    module *m = add_module(b, M_RES);
    if (!m)
        return -1;
    m->cin = cin, m->cout = cout, m->H = H, m->W = W;
    m->in_slot = in_slot, m->skip_slot = skip_slot;
    m->has_skip_conv = cin != cout;
    res_params *P = &m->p.res;
    P->norm1_w = add_param(b, prefix, "norm1.weight", 1, cin, 0, 0, 0, DDPM_INIT_ONE);
    P->norm1_b = add_param(b, prefix, "norm1.bias", 1, cin, 0, 0, 0, DDPM_INIT_ZERO);
    P->conv1_w = add_param(b, prefix, "conv1.weight", 4, cout, cin, 3, 3, DDPM_INIT_XAVIER);
    P->conv1_b = add_param(b, prefix, "conv1.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    /* AdaGN: [scale, shift], zero so that a new block's GN2 is the plain GroupNorm */
    const int ss = b->net->cfg.scale_shift_norm, n_tp = ss ? 2 * cout : cout;
    P->temb_w =
        add_param(b, prefix, "temb_proj.weight", 2, n_tp, p->emb, 0, 0, ss ? DDPM_INIT_ZERO : DDPM_INIT_XAVIER);
    P->temb_b = add_param(b, prefix, "temb_proj.bias", 1, n_tp, 0, 0, 0, DDPM_INIT_ZERO);
    P->norm2_w = add_param(b, prefix, "norm2.weight", 1, cout, 0, 0, 0, DDPM_INIT_ONE);
    P->norm2_b = add_param(b, prefix, "norm2.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    P->conv2_w = add_param(b, prefix, "conv2.weight", 4, cout, cout, 3, 3, DDPM_INIT_ZERO);
    P->conv2_b = add_param(b, prefix, "conv2.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    if (m->has_skip_conv) {
        P->skip_w = add_param(b, prefix, "skip.weight", 4, cout, cin, 1, 1, DDPM_INIT_XAVIER);
        P->skip_b = add_param(b, prefix, "skip.bias", 1, cout, 0, 0, 0, DDPM_INIT_ZERO);
    }
    /* backward temporaries: dxcat, dd2 (then ds2, da2 in place), dh1, ds1 (then da1), dtp,
       and AdaGN's d_affine */
    tmp_need(b, round16(cin * HW) * 2 + round16(cout * HW) * 2 + round16((size_t)n_tp) * (ss ? 2 : 1));
    m->out_slot = add_slot(b, cout, H, W);
    return m->out_slot;
}

static int build_attn(builder *b, const char *prefix, int in_slot)
{
    ddpm_unet_plan *p = b->plan;
    slot in = p->slots[in_slot];
    int C = in.C;
    size_t N = (size_t)in.H * in.W;
    module *m = add_module(b, M_ATTN);
    if (!m)
        return -1;
    m->cin = m->cout = C, m->H = in.H, m->W = in.W, m->in_slot = in_slot;
    attn_params *P = &m->p.attn;
    P->norm_w = add_param(b, prefix, "norm.weight", 1, C, 0, 0, 0, DDPM_INIT_ONE);
    P->norm_b = add_param(b, prefix, "norm.bias", 1, C, 0, 0, 0, DDPM_INIT_ZERO);
    size_t *w[4] = {&P->q_w, &P->k_w, &P->v_w, &P->proj_w}, *bias[4] = {&P->q_b, &P->k_b, &P->v_b, &P->proj_b};
    static const char *names[] = {"q", "k", "v", "proj"};
    for (int i = 0; i < 4; i++) {
        char wn[16], bn[16];
        snprintf(wn, sizeof wn, "%s.weight", names[i]);
        snprintf(bn, sizeof bn, "%s.bias", names[i]);
        *w[i] = add_param(b, prefix, wn, 4, C, C, 1, 1, i == 3 ? DDPM_INIT_ZERO : DDPM_INIT_XAVIER);
        *bias[i] = add_param(b, prefix, bn, 1, C, 0, 0, 0, DDPM_INIT_ZERO);
    }
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
    m->p.resample.conv_w = add_param(b, conv, "weight", 4, in.C, in.C, 3, 3, DDPM_INIT_XAVIER);
    m->p.resample.conv_b = add_param(b, conv, "bias", 1, in.C, 0, 0, 0, DDPM_INIT_ZERO);
    if (up) {
        tmp_need(b, round16((size_t)in.C * in.H * in.W * 4)); /* du */
        m->out_slot = add_slot(b, in.C, in.H * 2, in.W * 2);
    } else {
        m->out_slot = add_slot(b, in.C, in.H / 2, in.W / 2);
    }
    return m->out_slot;
}

/* Greedy lifetime allocation over the steps -1 (conv_in) .. n_modules (the head): at
 * step t, each slot written there takes a free buffer (the smallest that is large
 * enough, else the largest, grown), then the slots read last at t free theirs. A
 * slot never shares with one whose lifetime [producer, last_use] overlaps its own,
 * which makes it right both for the activations in forward and for their
 * gradients in backward (written first by the last reader, read last by the
 * producer). 0, or -1 out of memory. */
static int plan_buffers(const ddpm_unet_plan *p, buffer_plan *bp)
{
    bp->of_slot = malloc((size_t)p->n_slots * sizeof *bp->of_slot);
    bp->size = calloc((size_t)p->n_slots, sizeof *bp->size);
    int *busy = calloc((size_t)p->n_slots, sizeof *busy);
    if (!bp->of_slot || !bp->size || !busy) {
        free(busy);
        return -1;
    }
    bp->n = 0;
    for (int t = -1; t <= p->n_modules; t++) {
        for (int s = 0; s < p->n_slots; s++) {
            if (p->slots[s].producer != t)
                continue;
            const size_t need = (size_t)p->slots[s].C * p->slots[s].H * p->slots[s].W;
            int pick = -1;
            for (int k = 0; k < bp->n; k++) {
                if (busy[k])
                    continue;
                if (pick < 0)
                    pick = k;
                else if (bp->size[k] >= need ? bp->size[pick] < need || bp->size[k] < bp->size[pick]
                                             : bp->size[pick] < need && bp->size[k] > bp->size[pick])
                    pick = k;
            }
            if (pick < 0)
                pick = bp->n++;
            if (bp->size[pick] < need)
                bp->size[pick] = need;
            busy[pick] = 1;
            bp->of_slot[s] = pick;
        }
        for (int s = 0; s < p->n_slots; s++)
            if (p->slots[s].last_use == t)
                busy[bp->of_slot[s]] = 0;
    }
    free(busy);
    return 0;
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
        free(net->plan->by_lifetime.of_slot);
        free(net->plan->by_lifetime.size);
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
    int S = c->image_size, E = 4 * c->ch;
    p->emb = E;

    p->p_temb0_w = add_param(&b, "temb.0", "weight", 2, E, c->ch, 0, 0, DDPM_INIT_XAVIER);
    p->p_temb0_b = add_param(&b, "temb.0", "bias", 1, E, 0, 0, 0, DDPM_INIT_ZERO);
    p->p_temb2_w = add_param(&b, "temb.2", "weight", 2, E, E, 0, 0, DDPM_INIT_XAVIER);
    p->p_temb2_b = add_param(&b, "temb.2", "bias", 1, E, 0, 0, 0, DDPM_INIT_ZERO);
    if (c->n_classes > 0) /* zero init: a fresh conditional model is the unconditional one */
        p->p_class_emb = add_param(&b, "class_emb", "weight", 2, c->n_classes + 1, E, 0, 0,
                                   c->class_emb_init == DDPM_CLASS_EMB_NORMAL ? DDPM_INIT_NORMAL : DDPM_INIT_ZERO);
    p->p_conv_in_w = add_param(&b, "conv_in", "weight", 4, c->ch, c->in_channels, 3, 3, DDPM_INIT_XAVIER);
    p->p_conv_in_b = add_param(&b, "conv_in", "bias", 1, c->ch, 0, 0, 0, DDPM_INIT_ZERO);
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
    h = build_attn(&b, "mid.1", h); /* docs/design.md: the middle always has attention */
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
    p->p_conv_out_w = add_param(&b, "conv_out", "weight", 4, ddpm_unet_out_channels(c), c->ch, 3, 3, DDPM_INIT_ZERO);
    p->p_conv_out_b = add_param(&b, "conv_out", "bias", 1, ddpm_unet_out_channels(c), 0, 0, 0, DDPM_INIT_ZERO);
    tmp_need(&b, round16(c->ch * (size_t)S * S) * 2);
    if (!b.err && sp == 0) {
        for (int i = 0; i < p->n_modules; i++) {
            p->slots[p->modules[i].in_slot].last_use = i;
            if (p->modules[i].skip_slot >= 0)
                p->slots[p->modules[i].skip_slot].last_use = i;
        }
        p->slots[p->n_slots - 1].last_use = p->n_modules; /* the head */
        b.err = plan_buffers(p, &p->by_lifetime);
    }
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
        } else if (t->init == DDPM_INIT_NORMAL) {
            ddpm_rng_normal_fill(&rng, w, t->n);
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
    f += 2.0 * S2 * c->ch * (c->in_channels + ddpm_unet_out_channels(c)) * 9; /* conv_in, conv_out */
    for (int i = 0; i < p->n_modules; i++) {
        const module *m = &p->modules[i];
        double HW = (double)m->H * m->W;
        switch (m->kind) {
        case M_RES:
            f += 2.0 * HW * m->cout * (m->cin * 9.0 + m->cout * 9.0 + (m->has_skip_conv ? m->cin : 0));
            f += 2.0 * E * m->cout * (c->scale_shift_norm ? 2 : 1);
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
    size_t n = ddpm_conv2d_scratch_floats(B, c->ch, S, S, ddpm_unet_out_channels(c), 3, 1, 1);
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

/* Uninitialised memory: every buffer is written before it is read, so a page that
 * the run never uses is never touched (no memset of whole arenas). */
static float *alloc_floats(size_t n, size_t *bytes)
{
    float *p = NULL;
    size_t sz = (n ? n : 1) * sizeof(float);
    sz = (sz + 63) & ~(size_t)63;
    if (posix_memalign((void **)&p, 64, sz)) {
        ddpm_error(DDPM_ENOMEM, "out of memory allocating %zu MB of activations", sz >> 20);
        return NULL;
    }
    *bytes += sz;
    return p;
}

/* Buffers of batch x per-image floats laid out one after the other in an arena:
 * a first pass with base NULL only counts, the second hands out pointers. Each
 * buffer holds its images contiguously, so a batch B <= max_batch is its prefix. */
typedef struct {
    float *base;
    size_t used, batch, peak;
} layout;

static float *take(layout *L, size_t per_image)
{
    size_t off = L->used;
    L->used += round16(per_image) * L->batch;
    if (L->used > L->peak)
        L->peak = L->used;
    return L->base ? L->base + off : NULL;
}

/* The arenas of a workspace: K the kept activations (training) or the slots
 * (forward only), T the transient region that each block reuses from its start,
 * G the slot gradients (training). */
static void lay_out(ddpm_unet_workspace *ws, const ddpm_unet *net, layout *K, layout *T, layout *G)
{
    const ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    const size_t S2 = (size_t)c->image_size * c->image_size, E = (size_t)p->emb, groups = (size_t)c->groups;
    const int training = ws->training;
    /* a kept buffer in training, a transient one in forward only */
    layout *KT = training ? K : T;
    ws->time.x = training ? take(K, c->in_channels * S2) : NULL;
    ws->time.emb = take(K, (size_t)c->ch);
    ws->time.t1 = take(K, E);
    ws->time.t1s = take(K, E);
    ws->time.temb = take(K, E);
    ws->time.temb_act = take(K, E);
    if (training) {
        for (int s = 0; s < p->n_slots; s++)
            ws->h[s] = take(K, (size_t)p->slots[s].C * p->slots[s].H * p->slots[s].W);
        ws->time.d_temb_act = take(G, E);
    }
    /* the slots (forward only) or their gradients (training) by lifetime */
    for (int k = 0; k < p->by_lifetime.n; k++) {
        float *buf = take(training ? G : K, p->by_lifetime.size[k]);
        for (int s = 0; s < p->n_slots; s++)
            if (p->by_lifetime.of_slot[s] == k)
                *(training ? &ws->dh[s] : &ws->h[s]) = buf;
    }
    for (int i = 0; i < p->n_modules; i++) {
        const module *m = &p->modules[i];
        const size_t HW = (size_t)m->H * m->W, cin = (size_t)m->cin, cout = (size_t)m->cout;
        module_acts *a = &ws->acts[i];
        T->used = 0; /* every block's transient buffers start over */
        switch (m->kind) {
        case M_RES: {
            res_acts *r = &a->res;
            /* a1 and s1 are dead once conv1 has run (in forward) or before a2 is
             * needed again (in backward): a2 reuses a1's buffer and s2 s1's. With
             * no backward, SiLU runs in place: one buffer for all four. */
            const size_t cmax = cin > cout ? cin : cout;
            r->xcat = m->skip_slot >= 0 ? take(T, cin * HW) : NULL;
            r->a1 = take(T, cmax * HW);
            r->s1 = training ? take(T, cmax * HW) : r->a1;
            r->a2 = r->a1;
            r->s2 = r->s1;
            r->mean1 = take(KT, groups);
            r->rstd1 = take(KT, groups);
            r->tp = take(KT, c->scale_shift_norm ? 2 * cout : cout);
            r->affine = c->scale_shift_norm ? take(T, 2 * cout) : NULL;
            r->h1 = take(KT, cout * HW);
            r->mean2 = take(KT, groups);
            r->rstd2 = take(KT, groups);
            /* kept from forward to backward, as bits: a 32nd of the dropout output */
            r->mask = training && c->dropout > 0
                          ? (uint8_t *)take(K, (ddpm_dropout_mask_bytes(cout * HW) + sizeof(float) - 1) / sizeof(float))
                          : NULL;
            break;
        }
        case M_ATTN: {
            attn_acts *t = &a->attn;
            t->a = take(T, cin * HW);
            t->mean = take(KT, groups);
            t->rstd = take(KT, groups);
            t->q = take(KT, cin * HW);
            t->k = take(KT, cin * HW);
            t->v = take(KT, cin * HW);
            t->w = take(KT, HW * HW);
            t->h = take(KT, cin * HW);
            break;
        }
        case M_UP:
            a->up.u = take(T, cin * HW * 4);
            break;
        case M_DOWN:
            break;
        }
    }
    T->used = 0;
    ws->head.a = take(T, c->ch * S2);
    ws->head.mean = take(KT, groups);
    ws->head.rstd = take(KT, groups);
    ws->head.s = training ? take(T, c->ch * S2) : ws->head.a;
}

void ddpm_unet_workspace_free(ddpm_unet_workspace *ws)
{
    if (!ws)
        return;
    free(ws->arena);
    free(ws->block);
    free(ws->grad_arena);
    free(ws->h);
    free(ws->dh);
    free(ws->acts);
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
    ws->h = ddpm_calloc((size_t)p->n_slots, sizeof *ws->h);
    ws->dh = ddpm_calloc((size_t)p->n_slots, sizeof *ws->dh);
    ws->acts = ddpm_calloc((size_t)p->n_modules, sizeof *ws->acts);
    ws->labels = ddpm_calloc(B, sizeof *ws->labels);
    if (!ws->h || !ws->dh || !ws->acts || !ws->labels) {
        ddpm_unet_workspace_free(ws);
        return DDPM_ENOMEM;
    }
    layout K = {NULL, 0, B, 0}, T = {NULL, 0, B, 0}, G = {NULL, 0, B, 0};
    lay_out(ws, net, &K, &T, &G);
    int ok = (ws->arena = alloc_floats(K.peak, &ws->bytes)) && (ws->block = alloc_floats(T.peak, &ws->bytes)) &&
             (!training || (ws->grad_arena = alloc_floats(G.peak, &ws->bytes))) &&
             (!training || (ws->tmp = alloc_floats(p->tmp_per_image * B, &ws->bytes))) &&
             (ws->conv_scratch = alloc_floats(conv_scratch_need(net, max_batch), &ws->bytes)) &&
             (!training || (ws->attn_scratch = alloc_floats(ddpm_attention_scratch_floats(max_n), &ws->bytes)));
    if (!ok) {
        ddpm_unet_workspace_free(ws);
        return DDPM_ENOMEM;
    }
    K = (layout){ws->arena, 0, B, 0}, T = (layout){ws->block, 0, B, 0}, G = (layout){ws->grad_arena, 0, B, 0};
    lay_out(ws, net, &K, &T, &G);
    *out = ws;
    return DDPM_OK;
}

size_t ddpm_unet_workspace_bytes(const ddpm_unet_workspace *ws) { return ws->bytes; }

int ddpm_unet_workspace_set_precision(ddpm_unet_workspace *ws, ddpm_precision precision)
{
    if (precision == DDPM_PRECISION_FP32) {
        ws->precision = precision;
        return DDPM_OK;
    }
    if (precision != DDPM_PRECISION_BF16)
        return ddpm_error(DDPM_EINVAL, "unknown precision %d", (int)precision);
    if (!ddpm_bf16_available())
        return ddpm_error(DDPM_EINVAL, "bf16 needs AVX512_BF16, which this build or CPU does not have");
    ws->precision = precision;
    return DDPM_OK;
}

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

#define PARAM(off) (params + (off))
#define GRAD(off) (grads + (off))

static void zero(ddpm_unet_workspace *ws, float *x, size_t n)
{
    PROF(1, DDPM_PROF_ZERO, memset(x, 0, n * sizeof *x));
}

/* Consecutive [B, per_image] temporaries carved from ws->tmp (sized by tmp_need). */
static float *carve(const ddpm_unet_workspace *ws, float **cursor, size_t per_image)
{
    float *t = *cursor;
    *cursor += round16(per_image) * (size_t)ws->max_batch;
    return t;
}

/* ---------------------------------------------------------------- forward */

/* Counters per image of a ResBlock's dropout mask (ddpm_dropout_draw). */
static uint64_t dropout_counters_per_image(const module *m)
{
    return ((uint64_t)m->cout * m->H * m->W + 3) / 4;
}

uint64_t ddpm_unet_dropout_counters(const ddpm_unet *net, int batch)
{
    uint64_t n = 0;
    if (!(net->cfg.dropout > 0))
        return 0;
    for (int i = 0; i < net->plan->n_modules; i++)
        if (net->plan->modules[i].kind == M_RES)
            n += (uint64_t)batch * dropout_counters_per_image(&net->plan->modules[i]);
    return n;
}

/* Dropout in place over the B images of a ResBlock's conv2 input x [B,cout,HW]:
 * forward draws the mask of image b from block + (first + b) * per_image
 * (ddpm_dropout_draw) and saves its bits; apply (backward's recompute of the
 * output, and the gradient, d = 0 * d + dL/dx) multiplies by the saved mask.
 * One call when every image starts on a counter and a mask byte boundary, one
 * per image otherwise. */
static void res_dropout(const ddpm_unet *net, const ddpm_unet_workspace *ws, const module *m, uint8_t *mask,
                        float *x, int B, uint64_t block, int apply)
{
    const size_t n_img = (size_t)m->cout * m->H * m->W, mask_img = ddpm_dropout_mask_bytes(n_img);
    const uint64_t per_image = dropout_counters_per_image(m);
    const int n_calls = n_img % 8 == 0 ? 1 : B;
    const size_t n = n_calls == 1 ? (size_t)B * n_img : n_img;
    for (int b = 0; b < n_calls; b++) {
        float *xb = x + (size_t)b * n_img;
        uint8_t *mb = mask + (size_t)b * mask_img;
        uint64_t counter = block + (uint64_t)(ws->dropout_first + b) * per_image;
        if (apply)
            ddpm_dropout_backward(xb, 0.0f, xb, mb, net->cfg.dropout, n);
        else
            ddpm_dropout_forward(xb, mb, xb, net->cfg.dropout, n, ws->dropout_seed, counter);
    }
}

/* h = conv1(SiLU(GN1(x))) + temb_proj(SiLU(temb)); out = skip(x) + conv2(Dropout(SiLU(GN2(h)))),
 * x = concat(in, skip input) on the up path. With AdaGN: h = conv1(SiLU(GN1(x))),
 * [scale, shift] = temb_proj(SiLU(temb)), and GN2(h) (1 + scale) + shift in place of
 * GN2(h). counter: the block's first dropout counter for the step's batch, advanced
 * past it. */
static void res_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, int i, int B,
                        const ddpm_dropout_draw *dropout, uint64_t *counter)
{
    const module *m = &net->plan->modules[i];
    const res_params *P = &m->p.res;
    res_acts *A = &ws->acts[i].res;
    const int G = net->cfg.groups, H = m->H, W = m->W, HW = H * W, cin = m->cin, cout = m->cout;
    const size_t n_out = (size_t)B * cout * HW;
    const float *x = ws->h[m->in_slot];
    float *out = ws->h[m->out_slot];
    if (A->xcat) {
        const int Ca = net->plan->slots[m->in_slot].C;
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_concat_forward(A->xcat, x, ws->h[m->skip_slot], B, Ca, cin - Ca, HW));
        x = A->xcat;
    }
    /* GN's output itself is only needed in backward, which recomputes it */
    PROF(0, DDPM_PROF_NORM,
         ddpm_groupnorm_silu_forward(A->s1, NULL, A->mean1, A->rstd1, x, PARAM(P->norm1_w), PARAM(P->norm1_b), B, cin,
                                     HW, G, GN_EPS));
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward_precision(A->h1, ws->conv_scratch, A->s1, PARAM(P->conv1_w), PARAM(P->conv1_b), B, cin,
                                       H, W, cout, 3, 1, 1, ws->precision));
    const int n_tp = A->affine ? 2 * cout : cout;
    PROF(0, DDPM_PROF_LINEAR,
         ddpm_linear_forward(A->tp, ws->time.temb_act, PARAM(P->temb_w), PARAM(P->temb_b), B, net->plan->emb, n_tp));
    if (A->affine) { /* AdaGN: GN2(h1) (1 + scale) + shift */
        PROF(0, DDPM_PROF_NORM,
             ddpm_groupnorm_silu_scale_shift_forward(A->s2, NULL, A->mean2, A->rstd2, A->affine, A->h1,
                                                     PARAM(P->norm2_w), PARAM(P->norm2_b), A->tp, B, cout, HW, G,
                                                     GN_EPS));
    } else {
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_channel_forward(A->h1, A->tp, B, cout, HW));
        PROF(0, DDPM_PROF_NORM,
             ddpm_groupnorm_silu_forward(A->s2, NULL, A->mean2, A->rstd2, A->h1, PARAM(P->norm2_w), PARAM(P->norm2_b),
                                         B, cout, HW, G, GN_EPS));
    }
    if (ws->dropout_applied) {
        A->dropout_counter = *counter;
        PROF(0, DDPM_PROF_ELEMENTWISE, res_dropout(net, ws, m, A->mask, A->s2, B, A->dropout_counter, 0));
        *counter += (uint64_t)dropout->batch * dropout_counters_per_image(m);
    }
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward_precision(out, ws->conv_scratch, A->s2, PARAM(P->conv2_w), PARAM(P->conv2_b), B, cout, H,
                                       W, cout, 3, 1, 1, ws->precision));
    if (m->has_skip_conv) {
        float *sk = A->s2; /* conv2 has read it */
        PROF(0, DDPM_PROF_CONV,
             ddpm_conv2d_forward_precision(sk, ws->conv_scratch, x, PARAM(P->skip_w), PARAM(P->skip_b), B,
                                           cin, H, W, cout, 1, 1, 0, ws->precision));
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(out, out, sk, n_out));
    } else {
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(out, out, x, n_out));
    }
}

static void conv1x1_forward(ddpm_unet_workspace *ws, float *out, const float *in, const float *w,
                            const float *b, int B, int C, int H, int W)
{
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward_precision(out, ws->conv_scratch, in, w, b, B, C, H, W, C, 1, 1, 0,
                                       ws->precision));
}

/* a = GN(x); q, k, v = 1x1 convs of a; h = attention(q, k, v); out = x + proj(h). */
static void attn_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, int i, int B)
{
    const module *m = &net->plan->modules[i];
    const attn_params *P = &m->p.attn;
    attn_acts *A = &ws->acts[i].attn;
    const int C = m->cin, H = m->H, W = m->W, N = H * W;
    const float *x = ws->h[m->in_slot];
    float *out = ws->h[m->out_slot];
    PROF(0, DDPM_PROF_NORM,
         ddpm_groupnorm_forward(A->a, A->mean, A->rstd, x, PARAM(P->norm_w), PARAM(P->norm_b), B, C, N,
                                net->cfg.groups, GN_EPS));
    conv1x1_forward(ws, A->q, A->a, PARAM(P->q_w), PARAM(P->q_b), B, C, H, W);
    conv1x1_forward(ws, A->k, A->a, PARAM(P->k_w), PARAM(P->k_b), B, C, H, W);
    conv1x1_forward(ws, A->v, A->a, PARAM(P->v_w), PARAM(P->v_b), B, C, H, W);
    PROF(0, DDPM_PROF_ATTN,
         ddpm_attention_forward_precision(A->h, A->w, A->q, A->k, A->v, B, C, N, ws->precision));
    conv1x1_forward(ws, out, A->h, PARAM(P->proj_w), PARAM(P->proj_b), B, C, H, W);
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(out, out, x, (size_t)B * C * N));
}

/* out = conv3x3 stride 2 (x) */
static void down_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, int i, int B)
{
    const module *m = &net->plan->modules[i];
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward_precision(ws->h[m->out_slot], ws->conv_scratch, ws->h[m->in_slot],
                                       PARAM(m->p.resample.conv_w), PARAM(m->p.resample.conv_b), B, m->cin,
                                       m->H, m->W, m->cin, 3, 2, 1, ws->precision));
}

/* u = nearest 2x upsample (x); out = conv3x3 (u) */
static void up_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, int i, int B)
{
    const module *m = &net->plan->modules[i];
    up_acts *A = &ws->acts[i].up;
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_upsample_forward(A->u, ws->h[m->in_slot], B, m->cin, m->H, m->W));
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward_precision(ws->h[m->out_slot], ws->conv_scratch, A->u, PARAM(m->p.resample.conv_w),
                                       PARAM(m->p.resample.conv_b), B, m->cin, 2 * m->H, 2 * m->W, m->cin, 3, 1, 1,
                                       ws->precision));
}

void ddpm_unet_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                       float *eps_pred, const float *x_t, const int *t, int B,
                       const ddpm_dropout_draw *dropout)
{
    ddpm_unet_forward_class(net, params, ws, eps_pred, x_t, t, NULL, B, dropout);
}

static void forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, float *eps_pred,
                    const float *x_t, const int *t, const double *t_cont, const int *y, int B,
                    const ddpm_dropout_draw *dropout);

void ddpm_unet_forward_class(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                             float *eps_pred, const float *x_t, const int *t, const int *y, int B,
                             const ddpm_dropout_draw *dropout)
{
    forward(net, params, ws, eps_pred, x_t, t, NULL, y, B, dropout);
}

void ddpm_unet_forward_t(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, float *out,
                         const float *x_t, const double *t, const int *y, int B)
{
    forward(net, params, ws, out, x_t, NULL, t, y, B, NULL);
}

/* t (integer step indices) or t_cont (continuous ones): one of the two. */
static void forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, float *eps_pred,
                    const float *x_t, const int *t, const double *t_cont, const int *y, int B,
                    const ddpm_dropout_draw *dropout)
{
    const ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    const int S = c->image_size, HW = S * S, E = p->emb;
    ws->dropout_applied = ws->training && dropout && c->dropout > 0;
    ws->dropout_seed = dropout ? dropout->seed : 0;
    ws->dropout_first = dropout ? dropout->first : 0;
    uint64_t dropout_counter = dropout ? dropout->counter : 0;

    /* temb = Linear2(SiLU(Linear0(embedding(t)))); every ResBlock reads SiLU(temb) */
    if (t_cont)
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_timestep_embedding_t(ws->time.emb, t_cont, B, c->ch));
    else
        PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_timestep_embedding(ws->time.emb, t, B, c->ch));
    PROF(0, DDPM_PROF_LINEAR,
         ddpm_linear_forward(ws->time.t1, ws->time.emb, PARAM(p->p_temb0_w), PARAM(p->p_temb0_b), B, c->ch, E));
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_silu_forward(ws->time.t1s, ws->time.t1, (size_t)B * E));
    PROF(0, DDPM_PROF_LINEAR,
         ddpm_linear_forward(ws->time.temb, ws->time.t1s, PARAM(p->p_temb2_w), PARAM(p->p_temb2_b), B, E, E));
    if (c->n_classes > 0) { /* temb += class_emb[y] (row n_classes: no class) */
        for (int b = 0; b < B; b++)
            ws->labels[b] = y && y[b] >= 0 && y[b] < c->n_classes ? y[b] : c->n_classes;
        ddpm_embedding_add_forward(ws->time.temb, ws->labels, PARAM(p->p_class_emb), B, E);
    }
    PROF(0, DDPM_PROF_ELEMENTWISE, ddpm_silu_forward(ws->time.temb_act, ws->time.temb, (size_t)B * E));

    /* h = conv_in(x_t), then the down path, the middle and the up path */
    const float *x = x_t;
    if (ws->time.x) { /* training: kept for conv_in's backward */
        memcpy(ws->time.x, x_t, (size_t)B * c->in_channels * HW * sizeof(float));
        x = ws->time.x;
    }
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward_precision(ws->h[0], ws->conv_scratch, x, PARAM(p->p_conv_in_w), PARAM(p->p_conv_in_b),
                                       B, c->in_channels, S, S, c->ch, 3, 1, 1, ws->precision));
    for (int i = 0; i < p->n_modules; i++) {
        switch (p->modules[i].kind) {
        case M_RES: res_forward(net, params, ws, i, B, dropout, &dropout_counter); break;
        case M_ATTN: attn_forward(net, params, ws, i, B); break;
        case M_DOWN: down_forward(net, params, ws, i, B); break;
        case M_UP: up_forward(net, params, ws, i, B); break;
        }
    }

    /* eps_pred = conv_out(SiLU(GN(h))) */
    PROF(0, DDPM_PROF_NORM,
         ddpm_groupnorm_silu_forward(ws->head.s, NULL, ws->head.mean, ws->head.rstd, ws->h[p->n_slots - 1],
                                     PARAM(p->p_norm_out_w), PARAM(p->p_norm_out_b), B, c->ch, HW, c->groups, GN_EPS));
    PROF(0, DDPM_PROF_CONV,
         ddpm_conv2d_forward_precision(eps_pred, ws->conv_scratch, ws->head.s, PARAM(p->p_conv_out_w),
                                       PARAM(p->p_conv_out_b), B, c->ch, S, S, ddpm_unet_out_channels(c), 3, 1, 1,
                                       ws->precision));
}

/* ---------------------------------------------------------------- backward */

static void res_backward(const ddpm_unet *net, const float *params, float *grads, ddpm_unet_workspace *ws, int i,
                         int B)
{
    const module *m = &net->plan->modules[i];
    const res_params *P = &m->p.res;
    const res_acts *A = &ws->acts[i].res;
    const int G = net->cfg.groups, H = m->H, W = m->W, HW = H * W, cin = m->cin, cout = m->cout;
    const size_t n_in = (size_t)B * cin * HW, n_out = (size_t)B * cout * HW;
    float *cursor = ws->tmp;
    float *d_xcat = carve(ws, &cursor, (size_t)cin * HW), *dd2 = carve(ws, &cursor, (size_t)cout * HW);
    float *dh1 = carve(ws, &cursor, (size_t)cout * HW), *ds1 = carve(ws, &cursor, (size_t)cin * HW);
    const int n_tp = A->affine ? 2 * cout : cout;
    float *dtp = carve(ws, &cursor, (size_t)n_tp);
    float *d_affine = A->affine ? carve(ws, &cursor, (size_t)n_tp) : NULL;

    const float *dout = ws->dh[m->out_slot];
    const float *x = ws->h[m->in_slot];
    if (A->xcat) { /* the concat again, from the two slots it copies */
        const int Ca = net->plan->slots[m->in_slot].C;
        PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_concat_forward(A->xcat, x, ws->h[m->skip_slot], B, Ca, cin - Ca, HW));
        x = A->xcat;
    }
    /* with a concat in front, dx is a temporary that the first write overwrites */
    float *dx = A->xcat ? d_xcat : ws->dh[m->in_slot];
    const float dx_beta = A->xcat ? 0.0f : 1.0f;
    /* out = skip(x) + conv2(...) */
    if (m->has_skip_conv)
        PROF(1, DDPM_PROF_CONV,
             ddpm_conv2d_backward_precision(dx, dx_beta, GRAD(P->skip_w), GRAD(P->skip_b), ws->conv_scratch,
                                            dout, x, PARAM(P->skip_w), B, cin, H, W, cout, 1, 1, 0,
                                            ws->precision));
    else if (A->xcat)
        PROF(1, DDPM_PROF_ELEMENTWISE, memcpy(dx, dout, n_out * sizeof *dx));
    else
        PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(dx, dx, dout, n_out));
    /* conv2's input again: Dropout(SiLU(GN2(h1))), with forward's mask */
    if (A->affine) {
        PROF(1, DDPM_PROF_NORM,
             ddpm_groupnorm_silu_scale_shift_forward(A->s2, A->a2, A->mean2, A->rstd2, A->affine, A->h1,
                                                     PARAM(P->norm2_w), PARAM(P->norm2_b), A->tp, B, cout, HW, G,
                                                     GN_EPS));
    } else {
        PROF(1, DDPM_PROF_NORM,
             ddpm_groupnorm_silu_forward(A->s2, A->a2, A->mean2, A->rstd2, A->h1, PARAM(P->norm2_w), PARAM(P->norm2_b),
                                         B, cout, HW, G, GN_EPS));
    }
    if (ws->dropout_applied)
        PROF(1, DDPM_PROF_ELEMENTWISE, res_dropout(net, ws, m, A->mask, A->s2, B, A->dropout_counter, 1));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(dd2, 0.0f, GRAD(P->conv2_w), GRAD(P->conv2_b), ws->conv_scratch, dout,
                                        A->s2, PARAM(P->conv2_w), B, cout, H, W, cout, 3, 1, 1,
                                        ws->precision));
    /* dd2 -> ds2 -> da2, in place */
    if (ws->dropout_applied)
        PROF(1, DDPM_PROF_ELEMENTWISE, res_dropout(net, ws, m, A->mask, dd2, B, A->dropout_counter, 1));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward(dd2, 0.0f, dd2, A->a2, n_out));
    zero(ws, dtp, (size_t)B * n_tp);
    if (A->affine) {
        PROF(1, DDPM_PROF_NORM,
             ddpm_groupnorm_scale_shift_backward(dh1, 0.0f, GRAD(P->norm2_w), GRAD(P->norm2_b), dtp, d_affine, dd2,
                                                 A->h1, A->mean2, A->rstd2, A->affine, PARAM(P->norm2_w),
                                                 PARAM(P->norm2_b), A->tp, B, cout, HW, G));
    } else {
        PROF(1, DDPM_PROF_NORM,
             ddpm_groupnorm_backward(dh1, 0.0f, GRAD(P->norm2_w), GRAD(P->norm2_b), dd2, A->h1, A->mean2, A->rstd2,
                                     PARAM(P->norm2_w), B, cout, HW, G));
        PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_add_channel_backward(dtp, dh1, B, cout, HW));
    }
    PROF(1, DDPM_PROF_LINEAR,
         ddpm_linear_backward(ws->time.d_temb_act, GRAD(P->temb_w), GRAD(P->temb_b), dtp, ws->time.temb_act,
                              PARAM(P->temb_w), B, net->plan->emb, n_tp));
    /* conv1's input again: SiLU(GN1(x)) */
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_silu_forward(A->s1, A->a1, A->mean1, A->rstd1, x, PARAM(P->norm1_w), PARAM(P->norm1_b), B, cin,
                                     HW, G, GN_EPS));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(ds1, 0.0f, GRAD(P->conv1_w), GRAD(P->conv1_b), ws->conv_scratch, dh1,
                                        A->s1, PARAM(P->conv1_w), B, cin, H, W, cout, 3, 1, 1,
                                        ws->precision));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward(ds1, 0.0f, ds1, A->a1, n_in)); /* ds1 -> da1 */
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_backward(dx, 1.0f, GRAD(P->norm1_w), GRAD(P->norm1_b), ds1, x, A->mean1, A->rstd1,
                                 PARAM(P->norm1_w), B, cin, HW, G));
    if (A->xcat) {
        const int Ca = net->plan->slots[m->in_slot].C;
        PROF(1, DDPM_PROF_ELEMENTWISE,
             ddpm_concat_backward(ws->dh[m->in_slot], ws->dh[m->skip_slot], d_xcat, B, Ca, cin - Ca, HW));
    }
}

static void attn_backward(const ddpm_unet *net, const float *params, float *grads, ddpm_unet_workspace *ws, int i,
                          int B)
{
    const module *m = &net->plan->modules[i];
    const attn_params *P = &m->p.attn;
    const attn_acts *A = &ws->acts[i].attn;
    const int C = m->cin, H = m->H, W = m->W, N = H * W;
    float *cursor = ws->tmp;
    float *dh = carve(ws, &cursor, (size_t)C * N), *dq = carve(ws, &cursor, (size_t)C * N);
    float *dk = carve(ws, &cursor, (size_t)C * N), *dv = carve(ws, &cursor, (size_t)C * N);
    float *da = carve(ws, &cursor, (size_t)C * N);
    const float *dout = ws->dh[m->out_slot];
    float *dx = ws->dh[m->in_slot];
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_add_forward(dx, dx, dout, (size_t)B * C * N));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(dh, 0.0f, GRAD(P->proj_w), GRAD(P->proj_b), ws->conv_scratch, dout,
                                        A->h, PARAM(P->proj_w), B, C, H, W, C, 1, 1, 0, ws->precision));
    PROF(1, DDPM_PROF_ATTN,
         ddpm_attention_backward_precision(dq, dk, dv, 0.0f, ws->attn_scratch, dh, A->w, A->q, A->k, A->v, B,
                                           C, N, ws->precision));
    /* the 1x1 convs' input again: GN(x); the q conv writes da, k and v add to it */
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_forward(A->a, A->mean, A->rstd, ws->h[m->in_slot], PARAM(P->norm_w), PARAM(P->norm_b), B, C, N,
                                net->cfg.groups, GN_EPS));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(da, 0.0f, GRAD(P->q_w), GRAD(P->q_b), ws->conv_scratch, dq, A->a,
                                        PARAM(P->q_w), B, C, H, W, C, 1, 1, 0, ws->precision));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(da, 1.0f, GRAD(P->k_w), GRAD(P->k_b), ws->conv_scratch, dk, A->a,
                                        PARAM(P->k_w), B, C, H, W, C, 1, 1, 0, ws->precision));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(da, 1.0f, GRAD(P->v_w), GRAD(P->v_b), ws->conv_scratch, dv, A->a,
                                        PARAM(P->v_w), B, C, H, W, C, 1, 1, 0, ws->precision));
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_backward(dx, 1.0f, GRAD(P->norm_w), GRAD(P->norm_b), da, ws->h[m->in_slot], A->mean, A->rstd,
                                 PARAM(P->norm_w), B, C, N, net->cfg.groups));
}

static void down_backward(const ddpm_unet *net, const float *params, float *grads, ddpm_unet_workspace *ws, int i,
                          int B)
{
    const module *m = &net->plan->modules[i];
    const resample_params *P = &m->p.resample;
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(ws->dh[m->in_slot], 1.0f, GRAD(P->conv_w), GRAD(P->conv_b),
                                        ws->conv_scratch, ws->dh[m->out_slot], ws->h[m->in_slot],
                                        PARAM(P->conv_w), B, m->cin, m->H, m->W, m->cin, 3, 2, 1,
                                        ws->precision));
}

static void up_backward(const ddpm_unet *net, const float *params, float *grads, ddpm_unet_workspace *ws, int i,
                        int B)
{
    const module *m = &net->plan->modules[i];
    const resample_params *P = &m->p.resample;
    float *du = ws->tmp, *u = ws->acts[i].up.u;
    /* the conv's input again: the upsample of the kept input slot */
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_upsample_forward(u, ws->h[m->in_slot], B, m->cin, m->H, m->W));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(du, 0.0f, GRAD(P->conv_w), GRAD(P->conv_b), ws->conv_scratch,
                                        ws->dh[m->out_slot], u, PARAM(P->conv_w), B, m->cin, 2 * m->H,
                                        2 * m->W, m->cin, 3, 1, 1, ws->precision));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_upsample_backward(ws->dh[m->in_slot], du, B, m->cin, m->H, m->W));
}

/* Clears the gradients of the slots whose last reader in forward is step t. */
static void zero_gradients_first_written_at(const ddpm_unet *net, ddpm_unet_workspace *ws, int t, int B)
{
    const ddpm_unet_plan *p = net->plan;
    for (int s = 0; s < p->n_slots; s++)
        if (p->slots[s].last_use == t)
            zero(ws, ws->dh[s], (size_t)B * p->slots[s].C * p->slots[s].H * p->slots[s].W);
}

void ddpm_unet_backward(const ddpm_unet *net, const float *params, float *grads,
                        ddpm_unet_workspace *ws, const float *d_eps_pred, int B)
{
    const ddpm_unet_plan *p = net->plan;
    const ddpm_unet_config *c = &net->cfg;
    const int S = c->image_size, HW = S * S, E = p->emb;
    if (!ws->training)
        return;
    /* every activation gradient accumulates from its consumers: each is cleared when
     * its lifetime starts, before its last reader in forward (the first in backward) */
    zero(ws, ws->time.d_temb_act, (size_t)B * E);
    zero_gradients_first_written_at(net, ws, p->n_modules, B);

    /* eps_pred = conv_out(SiLU(GN(h))) */
    const size_t n_head = (size_t)B * c->ch * HW;
    float *cursor = ws->tmp;
    float *ds = carve(ws, &cursor, (size_t)c->ch * HW), *da = carve(ws, &cursor, (size_t)c->ch * HW);
    /* conv_out's input again: SiLU(GN(h)) */
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_silu_forward(ws->head.s, ws->head.a, ws->head.mean, ws->head.rstd, ws->h[p->n_slots - 1],
                                     PARAM(p->p_norm_out_w), PARAM(p->p_norm_out_b), B, c->ch, HW, c->groups, GN_EPS));
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(ds, 0.0f, GRAD(p->p_conv_out_w), GRAD(p->p_conv_out_b),
                                        ws->conv_scratch, d_eps_pred, ws->head.s, PARAM(p->p_conv_out_w), B,
                                        c->ch, S, S, ddpm_unet_out_channels(c), 3, 1, 1, ws->precision));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward(da, 0.0f, ds, ws->head.a, n_head));
    PROF(1, DDPM_PROF_NORM,
         ddpm_groupnorm_backward(ws->dh[p->n_slots - 1], 1.0f, GRAD(p->p_norm_out_w), GRAD(p->p_norm_out_b), da,
                                 ws->h[p->n_slots - 1], ws->head.mean, ws->head.rstd, PARAM(p->p_norm_out_w), B, c->ch,
                                 HW, c->groups));
    for (int i = p->n_modules - 1; i >= 0; i--) {
        zero_gradients_first_written_at(net, ws, i, B);
        switch (p->modules[i].kind) {
        case M_RES: res_backward(net, params, grads, ws, i, B); break;
        case M_ATTN: attn_backward(net, params, grads, ws, i, B); break;
        case M_DOWN: down_backward(net, params, grads, ws, i, B); break;
        case M_UP: up_backward(net, params, grads, ws, i, B); break;
        }
    }
    /* conv_in: no gradient for the input image */
    PROF(1, DDPM_PROF_CONV,
         ddpm_conv2d_backward_precision(NULL, 0.0f, GRAD(p->p_conv_in_w), GRAD(p->p_conv_in_b),
                                        ws->conv_scratch, ws->dh[0], ws->time.x, PARAM(p->p_conv_in_w), B,
                                        c->in_channels, S, S, c->ch, 3, 1, 1, ws->precision));
    /* time MLP: temb_act = SiLU(Linear2(SiLU(Linear0(emb)))) */
    const size_t nE = (size_t)B * E;
    cursor = ws->tmp;
    float *dtemb = carve(ws, &cursor, (size_t)E), *dt1s = carve(ws, &cursor, (size_t)E);
    float *dt1 = carve(ws, &cursor, (size_t)E);
    zero(ws, dt1s, nE);
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward(dtemb, 0.0f, ws->time.d_temb_act, ws->time.temb, nE));
    if (c->n_classes > 0)
        ddpm_embedding_add_backward(GRAD(p->p_class_emb), dtemb, ws->labels, B, E);
    PROF(1, DDPM_PROF_LINEAR,
         ddpm_linear_backward(dt1s, GRAD(p->p_temb2_w), GRAD(p->p_temb2_b), dtemb, ws->time.t1s, PARAM(p->p_temb2_w),
                              B, E, E));
    PROF(1, DDPM_PROF_ELEMENTWISE, ddpm_silu_backward(dt1, 0.0f, dt1s, ws->time.t1, nE));
    PROF(1, DDPM_PROF_LINEAR,
         ddpm_linear_backward(NULL, GRAD(p->p_temb0_w), GRAD(p->p_temb0_b), dt1, ws->time.emb, PARAM(p->p_temb0_w),
                              B, c->ch, E));
}
