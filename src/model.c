/* model.c: a trained network and what it means (model.h). */
#include "ddpm/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "ddpm/recipe.h"
#include "ddpm/run.h"
#include "ddpm/safetensors.h"
#include "ddpm/sha256.h"
#include "ddpm/train.h"

static void set_head(ddpm_model *m)
{
    m->head.sched = &m->sched;
    m->head.kind = m->cfg.prediction;
    m->head.learn_sigma = m->cfg.learn_sigma;
    m->head.D = (size_t)m->cfg.in_channels * m->cfg.image_size * m->cfg.image_size;
    m->n_classes = m->cfg.n_classes;
}

/* A copy of n names in one block (free with free()); NULL on no memory. */
static char **copy_names(const char *const *names, int n)
{
    size_t bytes = (size_t)n * sizeof(char *);
    for (int k = 0; k < n; k++)
        bytes += strlen(names[k]) + 1;
    char **copy = ddpm_malloc(bytes, 1);
    if (!copy)
        return NULL;
    char *at = (char *)(copy + n);
    for (int k = 0; k < n; k++) {
        size_t len = strlen(names[k]) + 1;
        memcpy(at, names[k], len);
        copy[k] = at;
        at += len;
    }
    return copy;
}

int ddpm_model_open(ddpm_model *m, const char *path, ddpm_weights_kind weights)
{
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) /* a run folder: its checkpoint */
        snprintf(m->path, sizeof m->path, "%s/%s", path, DDPM_CHECKPOINT_FILE);
    else
        snprintf(m->path, sizeof m->path, "%s", path);
    /* read once: the bytes hashed are the bytes parsed */
    unsigned char *bytes = NULL;
    size_t size = 0;
    int rc = ddpm_read_file(m->path, DDPM_ST_MAX_READ, &bytes, &size);
    if (rc)
        return rc;
    ddpm_sha256_bytes_hex(bytes, size, m->sha256);
    ddpm_checkpoint *ck = NULL;
    rc = ddpm_checkpoint_open_memory(&ck, bytes, size, m->path);
    free(bytes);
    if (rc)
        return rc;
    const ddpm_run_config *cfg = ddpm_checkpoint_config(ck);
    m->cfg = cfg->model;
    m->step = ddpm_checkpoint_state(ck)->step;
    int prefer_ema = weights == DDPM_WEIGHTS_EMA;
    rc = ddpm_checkpoint_load_model(ck, prefer_ema, &m->own_net, &m->own_params, &m->ema);
    if (!rc)
        rc = ddpm_schedule_init(&m->sched, cfg->schedule, cfg->timesteps, cfg->beta_start, cfg->beta_end);
    m->own_sched = 1;
    const char *const *names = ddpm_checkpoint_class_names(ck);
    if (!rc && m->cfg.n_classes > 0 && names && !(m->class_names = copy_names(names, m->cfg.n_classes)))
        rc = DDPM_ENOMEM;
    ddpm_checkpoint_close(ck);
    if (rc) {
        ddpm_model_close(m);
        return rc;
    }
    m->ema_missing = prefer_ema && !m->ema;
    m->net = m->own_net;
    m->params = m->own_params;
    set_head(m);
    return DDPM_OK;
}

int ddpm_model_from_net(ddpm_model *m, const ddpm_unet *net, const float *params, const ddpm_schedule *s)
{
    memset(m, 0, sizeof *m);
    m->cfg = net->cfg;
    m->sched = *s; /* borrowed: own_sched 0 */
    m->net = net;
    m->params = params;
    set_head(m);
    return DDPM_OK;
}

int ddpm_model_from_trainer(ddpm_model *m, const ddpm_trainer *tr, ddpm_weights_kind weights)
{
    ddpm_model_from_net(m, tr->net, weights == DDPM_WEIGHTS_EMA ? tr->ema : tr->params, &tr->sched);
    m->step = tr->state.step;
    m->ema = weights == DDPM_WEIGHTS_EMA;
    m->class_names = tr->class_names; /* borrowed: not freed by close */
    m->ws = tr->ws;                    /* the training workspace: forward without dropout */
    m->ws_batch = tr->micro_batch;
    return DDPM_OK;
}

int ddpm_model_from_fn(ddpm_model *m, const ddpm_unet_config *cfg, const ddpm_schedule *s, ddpm_net_fn fn,
                       void *fn_ctx)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->sched = *s;
    m->fn = fn;
    m->fn_ctx = fn_ctx;
    set_head(m);
    return DDPM_OK;
}

void ddpm_model_close(ddpm_model *m)
{
    if (!m)
        return;
    if (m->own_sched)
        ddpm_schedule_free(&m->sched);
    if (m->own_net) /* opened from a file: the names are the model's own */
        free(m->class_names);
    ddpm_unet_free(m->own_net);
    free(m->own_params);
    ddpm_unet_workspace_free(m->own_ws);
    free(m->out);
    free(m->uncond);
    free(m->steps);
    memset(m, 0, sizeof *m);
}

int ddpm_model_class(const ddpm_model *m, const char *name, int *index)
{
    if (m->n_classes == 0)
        return ddpm_error(DDPM_EINVAL, "%s: the model is not class-conditional (trained without --classes)",
                          m->path[0] ? m->path : "the model");
    for (int k = 0; m->class_names && k < m->n_classes; k++) /* a name first, then an index */
        if (!strcmp(m->class_names[k], name)) {
            *index = k;
            return DDPM_OK;
        }
    char *end;
    errno = 0;
    long v = strtol(name, &end, 10);
    if (*name && !*end && errno == 0 && v >= 0 && v < m->n_classes) {
        *index = (int)v;
        return DDPM_OK;
    }
    return ddpm_error(DDPM_EINVAL, "'%s' is not one of the model's %d classes (%s, ...) nor an index 0..%d", name,
                      m->n_classes, m->class_names ? m->class_names[0] : "0", m->n_classes - 1);
}

void ddpm_model_recipe(const ddpm_model *m, ddpm_recipe *r)
{
    ddpm_recipe_init(r);
    snprintf(r->version, sizeof r->version, "%s", DDPM_VERSION);
    snprintf(r->checkpoint, sizeof r->checkpoint, "%.1023s", m->path);
    snprintf(r->checkpoint_sha256, sizeof r->checkpoint_sha256, "%s", m->sha256);
    r->step = m->step;
    r->ema = m->ema;
    r->precision = m->precision;
}

int ddpm_model_set_precision(ddpm_model *m, ddpm_precision precision)
{
    if (precision == DDPM_PRECISION_BF16 && !ddpm_bf16_available())
        return ddpm_error(DDPM_EINVAL, "bf16 needs AVX512_BF16, which this build or CPU does not have");
    if (m->ws && m->ws != m->own_ws && precision != DDPM_PRECISION_FP32)
        return ddpm_error(DDPM_EINVAL, "a model over a trainer's workspace computes in float32");
    if (m->own_ws) {
        int rc = ddpm_unet_workspace_set_precision(m->own_ws, precision);
        if (rc)
            return rc;
    }
    m->precision = precision;
    return DDPM_OK;
}

/* The workspace and the output buffers for B images. */
static int reserve(ddpm_model *m, int B, int guided)
{
    size_t out_D = ddpm_model_out_size(m);
    if (m->net && (!m->ws || m->ws_batch < B)) {
        ddpm_unet_workspace_free(m->own_ws);
        m->own_ws = NULL;
        m->ws = NULL;
        int rc = ddpm_unet_workspace_create(&m->own_ws, m->net, B, 0);
        if (!rc)
            rc = ddpm_unet_workspace_set_precision(m->own_ws, m->precision);
        if (rc)
            return rc;
        m->ws = m->own_ws;
        m->ws_batch = B;
    }
    if (m->buf_batch < B) {
        free(m->out);
        free(m->uncond);
        free(m->steps);
        m->uncond = NULL;
        m->buf_batch = 0;
        m->out = ddpm_malloc((size_t)B * out_D, sizeof(float));
        m->steps = ddpm_malloc((size_t)B, sizeof(double));
        if (!m->out || !m->steps)
            return DDPM_ENOMEM;
        m->buf_batch = B;
    }
    if (guided && !m->uncond && !(m->uncond = ddpm_malloc((size_t)m->buf_batch * out_D, sizeof(float))))
        return DDPM_ENOMEM;
    return DDPM_OK;
}

static void net_call(ddpm_model *m, float *out, const float *x_t, const double *t, const int *y, int B)
{
    if (m->fn)
        m->fn(m->fn_ctx, out, x_t, t, y, B);
    else
        ddpm_unet_forward_t(m->net, m->params, m->ws, out, x_t, t, y, B);
}

int ddpm_model_output(ddpm_model *m, float *out, const float *x_t, const double *t, int B, const ddpm_guide *g)
{
    int conditional = m->n_classes > 0 && g && g->labels && g->guidance != 0;
    int guided = conditional && g->guidance != 1;
    int rc = reserve(m, B, guided);
    if (rc)
        return rc;
    net_call(m, out, x_t, t, conditional ? g->labels : NULL, B);
    if (!guided) /* the conditional model (W = 1) or the unconditional one: one pass */
        return DDPM_OK;
    net_call(m, m->uncond, x_t, t, NULL, B);
    size_t D = ddpm_model_D(m), out_D = ddpm_model_out_size(m); /* guide the prediction; v stays conditional */
    float w = g->guidance;
    for (int b = 0; b < B; b++)
        for (size_t d = 0; d < D; d++) {
            size_t k = (size_t)b * out_D + d;
            out[k] = m->uncond[k] + w * (out[k] - m->uncond[k]);
        }
    return DDPM_OK;
}

int ddpm_model_predict(ddpm_model *m, const ddpm_pred_out *o, const float *x_t, const double *t, int B,
                       const ddpm_guide *g)
{
    int rc = reserve(m, B, 0);
    if (!rc)
        rc = ddpm_model_output(m, m->out, x_t, t, B, g);
    size_t D = ddpm_model_D(m), out_D = ddpm_model_out_size(m);
    for (int b = 0; !rc && b < B; b++) {
        size_t at = (size_t)b * D;
        ddpm_pred_out ob = {o->eps ? o->eps + at : NULL, o->x0 ? o->x0 + at : NULL, o->mean ? o->mean + at : NULL,
                            o->logvar ? o->logvar + at : NULL};
        rc = ddpm_pred_convert(&ob, &m->head, m->out + (size_t)b * out_D, x_t + at, t[b]);
    }
    return rc;
}

void ddpm_model_eps(void *model, float *eps, const float *x_t, const int *i, int B)
{
    ddpm_model *m = model;
    size_t D = ddpm_model_D(m), out_D = ddpm_model_out_size(m);
    /* the raw output in place, then each image's eps over its prediction (v stays) */
    int rc = reserve(m, B, 0);
    double *t = m->steps;
    for (int b = 0; !rc && b < B; b++)
        t[b] = i[b];
    if (rc || ddpm_model_output(m, eps, x_t, t, B, NULL)) {
        for (size_t k = 0; k < (size_t)B * out_D; k++) /* no memory: NaN, which the evaluator refuses */
            eps[k] = NAN;
        return;
    }
    for (int b = 0; b < B; b++) {
        float *e = eps + (size_t)b * out_D;
        ddpm_pred_out ob = {.eps = e};
        ddpm_pred_convert(&ob, &m->head, e, x_t + (size_t)b * D, t[b]);
    }
}
