/* optim.h: Adam, global-norm gradient clipping, linear learning-rate warm-up and
 * an exponential moving average of the weights, all as loops over the flat
 * parameter / gradient arenas (so they serve any network and a future
 * all-reduced gradient alike). Results do not depend on the thread count. */
#ifndef DDPM_OPTIM_H
#define DDPM_OPTIM_H

#include <stddef.h>

/* The learning rate after the warm-up: constant at lr, or a half cosine from lr
 * down to lr_min at step lr_final_step (Loshchilov & Hutter, SGDR, without restarts). */
typedef enum { DDPM_LR_CONSTANT = 0, DDPM_LR_COSINE = 1 } ddpm_lr_schedule;

typedef struct {
    float lr;        /* peak learning rate */
    int warmup;      /* steps of linear warm-up from 0 to lr */
    ddpm_lr_schedule lr_schedule;
    float lr_min;       /* cosine: the learning rate at lr_final_step and after */
    long lr_final_step; /* cosine: the 1-based step where the decay ends (the run's last) */
    float beta1, beta2, eps;
    float clip;      /* max global gradient norm; <= 0 disables */
    float ema_decay; /* 0 disables the EMA */
} ddpm_optim_config;

/* lr 1e-3, warm-up 100, constant schedule (lr_min 0, lr_final_step 0), Adam
 * (0.9, 0.999, 1e-8), clip 1.0, EMA 0.999 (see README). */
void ddpm_optim_config_default(ddpm_optim_config *c);

/* Learning rate for 1-based step `step`. During the warm-up (step < warmup):
 * lr * step / warmup. After it, constant: lr; cosine:
 *   lr_min + (lr - lr_min) (1 + cos(pi p)) / 2,  p = (step - warmup) / (lr_final_step - warmup)
 * clamped to [0, 1], so lr at the end of the warm-up and lr_min from lr_final_step on
 * (also when lr_final_step <= warmup). */
float ddpm_lr_at(const ddpm_optim_config *c, long step);

/* "constant" / "cosine" <-> the enum; parse returns 0 or -1 for another name. */
const char *ddpm_lr_schedule_name(ddpm_lr_schedule s);
int ddpm_lr_schedule_parse(const char *name, ddpm_lr_schedule *out);

/* sqrt(sum g^2), summed in double over fixed chunks (thread-count independent). */
double ddpm_global_norm(const float *g, size_t n);
/* Scales g so that its global norm is at most max_norm; returns the norm before. */
double ddpm_clip_global_norm(float *g, size_t n, float max_norm);

/* One Adam step (Kingma & Ba, with bias correction) at 1-based step `step`. */
void ddpm_adam_step(float *params, float *m, float *v, const float *g, size_t n, long step,
                    float lr, float beta1, float beta2, float eps);

/* EMA decay after n updates: min(decay, (1 + n) / (10 + n)). The warm-up keeps a
 * short run's EMA from holding the random init (docs/design.md, Short runs). */
float ddpm_ema_decay_at(float decay, long n);
/* ema = decay * ema + (1 - decay) * params */
void ddpm_ema_update(float *ema, const float *params, size_t n, float decay);

#endif
