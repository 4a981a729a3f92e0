/* optim.h: Adam, global-norm gradient clipping, linear learning-rate warm-up and
 * an exponential moving average of the weights, all as loops over the flat
 * parameter / gradient arenas (so they serve any network and a future
 * all-reduced gradient alike). Results do not depend on the thread count. */
#ifndef DDPM_OPTIM_H
#define DDPM_OPTIM_H

#include <stddef.h>

typedef struct {
    float lr;        /* peak learning rate */
    int warmup;      /* steps of linear warm-up from 0 to lr */
    float beta1, beta2, eps;
    float clip;      /* max global gradient norm; <= 0 disables */
    float ema_decay; /* 0 disables the EMA */
} ddpm_optim_config;

/* lr 1e-3, warm-up 100, Adam (0.9, 0.999, 1e-8), clip 1.0, EMA 0.999 (see README). */
void ddpm_optim_config_default(ddpm_optim_config *c);

/* Learning rate for 1-based step `step`: lr * min(1, step / warmup). */
float ddpm_lr_at(const ddpm_optim_config *c, long step);

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
