#include "ddpm/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/loss.h"
#include "ddpm/ops.h"
#include "ddpm/optim.h"
#include "ddpm/options.h"
#include "ddpm/rng.h"

void ddpm_trainer_free(ddpm_trainer *tr)
{
    if (!tr)
        return;
    ddpm_unet_workspace_free(tr->ws);
    ddpm_unet_free(tr->net);
    ddpm_schedule_free(&tr->sched);
    free(tr->params);
    free(tr->grads);
    free(tr->adam_m);
    free(tr->adam_v);
    free(tr->ema);
    free(tr->x_t);
    free(tr->eps);
    free(tr->eps_pred);
    free(tr->d_eps);
    free(tr->t);
    free(tr->target);
    free(tr->labels);
    free(tr->t_weight);
    free(tr->t_term);
    free(tr->t_prob);
    free(tr->t_cdf);
    ddpm_t_history_free(&tr->t_history);
    for (int k = 0; tr->class_names && k < tr->cfg.model.n_classes; k++)
        free(tr->class_names[k]);
    free(tr->class_names);
    free(tr);
}

static int trainer_alloc(ddpm_trainer **out, const ddpm_run_config *cfg, int micro_batch)
{
    *out = NULL;
    ddpm_trainer *tr = ddpm_calloc(1, sizeof *tr);
    if (!tr)
        return DDPM_ENOMEM;
    tr->cfg = *cfg;
    int rc = ddpm_unet_create(&tr->net, &cfg->model);
    if (!rc)
        rc = ddpm_schedule_init(&tr->sched, cfg->schedule, cfg->timesteps, cfg->beta_start, cfg->beta_end);
    if (!rc) /* every option within its bounds (options.h) */
        rc = ddpm_run_config_check(cfg);
    if (!rc && micro_batch < 0)
        rc = ddpm_error(DDPM_EINVAL, "micro-batch must be >= 0, got %d", micro_batch);
    tr->micro_batch = micro_batch > 0 && micro_batch < cfg->batch ? micro_batch : cfg->batch;
    if (!rc)
        rc = ddpm_loss_config_check(&cfg->loss, cfg->model.prediction, cfg->model.learn_sigma);
    if (!rc && cfg->model.learn_sigma && cfg->timesteps < 2)
        rc = ddpm_error(DDPM_EINVAL, "learned variances need at least 2 timesteps (beta~_2), got %d", cfg->timesteps);
    if (!rc)
        rc = ddpm_t_sampling_check(cfg->t_sampling, cfg->loss.kind);
    if (!rc)
        rc = ddpm_unet_workspace_create(&tr->ws, tr->net, tr->micro_batch, 1);
    if (!rc && ddpm_unet_workspace_set_precision(tr->ws, cfg->precision))
        rc = ddpm_error(DDPM_EINVAL, "the run trains with precision %s (--precision, kept on --resume), which needs "
                                     "AVX512_BF16: this build or CPU has none",
                        ddpm_precision_name(cfg->precision));
    if (rc) {
        ddpm_trainer_free(tr);
        return rc;
    }
    size_t n = tr->net->n_params;
    size_t D = (size_t)cfg->model.in_channels * cfg->model.image_size * cfg->model.image_size;
    size_t BD = (size_t)tr->micro_batch * D, B_out = BD * (cfg->model.learn_sigma ? 2 : 1);
    tr->params = ddpm_calloc(n, sizeof(float));
    tr->grads = ddpm_calloc(ddpm_trainer_reduce_size(tr), sizeof(float));
    tr->adam_m = ddpm_calloc(n, sizeof(float));
    tr->adam_v = ddpm_calloc(n, sizeof(float));
    tr->ema = ddpm_calloc(n, sizeof(float));
    tr->x_t = ddpm_calloc(BD, sizeof(float));
    tr->eps = ddpm_calloc(BD, sizeof(float));
    tr->eps_pred = ddpm_calloc(B_out, sizeof(float));
    tr->d_eps = ddpm_calloc(B_out, sizeof(float));
    tr->t = ddpm_calloc((size_t)tr->micro_batch, sizeof(int));
    tr->target = ddpm_calloc(BD, sizeof(float));
    tr->labels = ddpm_calloc((size_t)tr->micro_batch, sizeof(int));
    int importance = cfg->t_sampling == DDPM_T_IMPORTANCE;
    if (importance) {
        tr->t_weight = ddpm_calloc((size_t)tr->micro_batch, sizeof(double));
        tr->t_term = ddpm_calloc((size_t)tr->micro_batch, sizeof(double));
        tr->t_prob = ddpm_calloc((size_t)cfg->timesteps, sizeof(double));
        tr->t_cdf = ddpm_calloc((size_t)cfg->timesteps, sizeof(double));
    }
    if (!tr->params || !tr->grads || !tr->adam_m || !tr->adam_v || !tr->ema || !tr->x_t || !tr->eps ||
        !tr->eps_pred || !tr->d_eps || !tr->t || !tr->target || !tr->labels ||
        (importance && (!tr->t_weight || !tr->t_term || !tr->t_prob || !tr->t_cdf ||
                        ddpm_t_history_init(&tr->t_history, cfg->timesteps)))) {
        ddpm_trainer_free(tr);
        return DDPM_ENOMEM;
    }
    *out = tr;
    return DDPM_OK;
}

size_t ddpm_trainer_reduce_size(const ddpm_trainer *tr)
{
    size_t terms = tr->cfg.t_sampling == DDPM_T_IMPORTANCE ? (size_t)tr->cfg.batch : 0;
    return tr->net->n_params + DDPM_TRAIN_SCALARS + terms;
}

int ddpm_trainer_create(ddpm_trainer **out, const ddpm_run_config *cfg, int micro_batch)
{
    int rc = trainer_alloc(out, cfg, micro_batch);
    if (rc)
        return rc;
    ddpm_trainer *tr = *out;
    ddpm_unet_init_params(tr->net, tr->params, cfg->seed);
    memcpy(tr->ema, tr->params, tr->net->n_params * sizeof(float));
    return DDPM_OK;
}

int ddpm_trainer_from_checkpoint(ddpm_trainer **out, const ddpm_checkpoint *ck, int micro_batch)
{
    int rc = trainer_alloc(out, ddpm_checkpoint_config(ck), micro_batch);
    if (rc)
        return rc;
    ddpm_trainer *tr = *out;
    const char *path = ddpm_checkpoint_path(ck);
    if (!ddpm_checkpoint_has(ck, tr->net, "adam_m.") || !ddpm_checkpoint_has(ck, tr->net, "adam_v.") ||
        !ddpm_checkpoint_has(ck, tr->net, "ema."))
        rc = ddpm_error(DDPM_EFORMAT, "%s: holds no optimizer state (adam_m, adam_v, ema): cannot resume from it",
                        path);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "", tr->params);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "ema.", tr->ema);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "adam_m.", tr->adam_m);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "adam_v.", tr->adam_v);
    if (rc) {
        ddpm_trainer_free(tr);
        *out = NULL;
        return rc;
    }
    tr->state = *ddpm_checkpoint_state(ck);
    if (tr->cfg.t_sampling == DDPM_T_IMPORTANCE && (rc = ddpm_checkpoint_read_t_history(ck, &tr->t_history))) {
        ddpm_trainer_free(tr);
        *out = NULL;
        return rc;
    }
    if (tr->cfg.model.n_classes > 0 && (rc = ddpm_trainer_set_class_names(tr, ddpm_checkpoint_class_names(ck)))) {
        ddpm_trainer_free(tr);
        *out = NULL;
        return rc;
    }
    return DDPM_OK;
}

int ddpm_trainer_set_class_names(ddpm_trainer *tr, const char *const *names)
{
    int n = tr->cfg.model.n_classes;
    if (n <= 0 || !names)
        return DDPM_OK;
    char **copy = ddpm_calloc((size_t)n, sizeof *copy);
    if (!copy)
        return DDPM_ENOMEM;
    for (int k = 0; k < n; k++)
        if (!(copy[k] = strdup(names[k]))) {
            while (k--)
                free(copy[k]);
            free(copy);
            return ddpm_error(DDPM_ENOMEM, "out of memory copying class names");
        }
    for (int k = 0; tr->class_names && k < n; k++)
        free(tr->class_names[k]);
    free(tr->class_names);
    tr->class_names = copy;
    return DDPM_OK;
}

/* A stream positioned at a counter kept in the trainer's state. */
static ddpm_rng stream_at(uint64_t seed, uint64_t stream, uint64_t counter)
{
    ddpm_rng r;
    ddpm_rng_init(&r, seed, stream);
    r.counter = counter;
    return r;
}

/* Counters of stream NOISE a step draws: one per image for t, then each image's eps. */
static uint64_t noise_counters_per_image(const ddpm_trainer *tr)
{
    size_t D = (size_t)tr->cfg.model.in_channels * tr->cfg.model.image_size * tr->cfg.model.image_size;
    return 1 + (D + 3) / 4;
}

void ddpm_trainer_accumulate(ddpm_trainer *tr, const float *x0, int first, int count)
{
    ddpm_trainer_accumulate_class(tr, x0, NULL, first, count);
}

void ddpm_trainer_accumulate_class(ddpm_trainer *tr, const float *x0, const int *labels, int first, int count)
{
    const ddpm_run_config *c = &tr->cfg;
    int B = c->batch;
    size_t D = (size_t)c->model.in_channels * c->model.image_size * c->model.image_size;
    size_t n = tr->net->n_params;
    uint64_t noise = tr->state.noise_counter, eps_per_image = (D + 3) / 4;
    int n_classes = c->model.n_classes, importance = c->t_sampling == DDPM_T_IMPORTANCE;
    int warm = importance ? ddpm_t_probabilities(tr->t_prob, tr->t_cdf, &tr->t_history) : 0;
    float *terms = tr->grads + n + DDPM_TRAIN_SCALARS; /* [B], importance only */
    double loss_share = 0;
    ddpm_head head = {&tr->sched, c->model.prediction, c->model.learn_sigma, D}; /* what the output means */
    memset(tr->grads, 0, ddpm_trainer_reduce_size(tr) * sizeof(float));
    for (int g0 = first; g0 < first + count; g0 += tr->micro_batch) {
        int b = first + count - g0 < tr->micro_batch ? first + count - g0 : tr->micro_batch;
        /* Algorithm 1: t uniform in {1..T} (index t-1), or by importance
           (timestep.h), eps ~ N(0, I), per image g (the counter layout of train.h) */
        for (int i = 0; i < b; i++) {
            uint64_t g = (uint64_t)(g0 + i);
            ddpm_rng r = stream_at(c->seed, DDPM_STREAM_NOISE, noise + g);
            if (importance)
                tr->t[i] = ddpm_t_draw(&tr->t_weight[i], tr->t_prob, tr->t_cdf, c->timesteps, warm, &r);
            else
                tr->t[i] = (int)ddpm_rng_below(&r, (uint64_t)c->timesteps);
            r = stream_at(c->seed, DDPM_STREAM_NOISE, noise + (uint64_t)B + g * eps_per_image);
            ddpm_rng_normal_fill(&r, tr->eps + i * D, D);
            if (n_classes > 0) { /* classifier-free guidance: drop the label with probability cond_drop */
                int y = labels && labels[g] >= 0 && labels[g] < n_classes ? labels[g] : DDPM_NO_CLASS;
                r = stream_at(c->seed, DDPM_STREAM_LABELS, noise + g);
                tr->labels[i] = ddpm_rng_uniform(&r) < c->cond_drop ? DDPM_NO_CLASS : y;
            }
        }
        ddpm_q_sample(tr->x_t, x0 + (size_t)g0 * D, tr->eps, tr->t, b, D, &tr->sched);
        ddpm_dropout_draw drop = {c->seed, tr->state.dropout_counter, g0, B};
        ddpm_unet_forward_class(tr->net, tr->params, tr->ws, tr->eps_pred, tr->x_t, tr->t,
                                n_classes > 0 ? tr->labels : NULL, b, &drop);
        /* this micro-batch's part of the batch mean (L_simple: the MSE to the target) */
        ddpm_loss_batch lb = {tr->eps_pred, x0 + (size_t)g0 * D, tr->eps, tr->x_t, tr->t,
                              importance ? tr->t_weight : NULL, b, B};
        loss_share += ddpm_loss(tr->d_eps, tr->target, importance ? tr->t_term : NULL, &lb, &head, &c->loss);
        for (int i = 0; importance && i < b; i++)
            terms[g0 + i] = (float)tr->t_term[i];
        ddpm_unet_backward(tr->net, tr->params, tr->grads, tr->ws, tr->d_eps, b);
    }
    tr->grads[n + DDPM_TRAIN_LOSS] = (float)loss_share;
}

/* Adds the terms of every image of the batch (the reduce buffer's, summed over
 * the processes) to the loss history, in batch order. Each image's t is drawn
 * again from its counter and the distribution its step used, which is the
 * history's before this update: the same on every process. */
static void update_t_history(ddpm_trainer *tr)
{
    const ddpm_run_config *c = &tr->cfg;
    const float *terms = tr->grads + tr->net->n_params + DDPM_TRAIN_SCALARS;
    int warm = ddpm_t_probabilities(tr->t_prob, tr->t_cdf, &tr->t_history);
    for (int g = 0; g < c->batch; g++) {
        ddpm_rng r = stream_at(c->seed, DDPM_STREAM_NOISE, tr->state.noise_counter + (uint64_t)g);
        double weight;
        int i = ddpm_t_draw(&weight, tr->t_prob, tr->t_cdf, c->timesteps, warm, &r);
        /* p and cdf were computed before the first add: every draw reads the
           distribution the step used */
        ddpm_t_history_add(&tr->t_history, &i, &terms[g], 1);
    }
}

int ddpm_trainer_apply(ddpm_trainer *tr, ddpm_step_stats *stats)
{
    const ddpm_run_config *c = &tr->cfg;
    size_t n = tr->net->n_params;
    double loss = tr->grads[n + DDPM_TRAIN_LOSS];
    if (stats)
        stats->loss = loss;
    if (!isfinite(loss))
        return ddpm_error(DDPM_ENAN, "loss became %s at step %ld", isnan(loss) ? "NaN" : "infinite",
                          tr->state.step + 1);
    double norm = ddpm_clip_global_norm(tr->grads, n, c->optim.clip);
    if (!isfinite(norm))
        return ddpm_error(DDPM_ENAN, "gradient norm became %s at step %ld", isnan(norm) ? "NaN" : "infinite",
                          tr->state.step + 1);
    long step = tr->state.step + 1;
    float lr = ddpm_lr_at(&c->optim, step);
    ddpm_adam_step(tr->params, tr->adam_m, tr->adam_v, tr->grads, n, step, lr, c->optim.beta1, c->optim.beta2,
                   c->optim.eps);
    if (c->optim.ema_decay > 0)
        ddpm_ema_update(tr->ema, tr->params, n, ddpm_ema_decay_at(c->optim.ema_decay, tr->state.step));
    else
        memcpy(tr->ema, tr->params, n * sizeof(float));
    if (c->t_sampling == DDPM_T_IMPORTANCE)
        update_t_history(tr);
    tr->state.step = step;
    tr->state.noise_counter += (uint64_t)c->batch * noise_counters_per_image(tr);
    tr->state.dropout_counter += ddpm_unet_dropout_counters(tr->net, c->batch);
    if (stats) {
        stats->grad_norm = norm;
        stats->lr = lr;
    }
    return DDPM_OK;
}

int ddpm_trainer_step(ddpm_trainer *tr, const float *x0, ddpm_step_stats *stats)
{
    ddpm_trainer_accumulate(tr, x0, 0, tr->cfg.batch);
    return ddpm_trainer_apply(tr, stats);
}

int ddpm_trainer_step_class(ddpm_trainer *tr, const float *x0, const int *labels, ddpm_step_stats *stats)
{
    ddpm_trainer_accumulate_class(tr, x0, labels, 0, tr->cfg.batch);
    return ddpm_trainer_apply(tr, stats);
}

int ddpm_trainer_save(const ddpm_trainer *tr, const char *path) { return ddpm_trainer_save_sha256(tr, path, NULL); }

int ddpm_trainer_save_sha256(const ddpm_trainer *tr, const char *path, char *sha256)
{
    return ddpm_checkpoint_save(path, &tr->cfg, &tr->state, tr->net, tr->params, tr->ema, tr->adam_m,
                                tr->adam_v, (const char *const *)tr->class_names,
                                tr->cfg.t_sampling == DDPM_T_IMPORTANCE ? &tr->t_history : NULL, sha256);
}
