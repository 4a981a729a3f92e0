#include "ddpm/optim.h"

#include <math.h>
#include <string.h>

#include "ddpm/config.h"

void ddpm_optim_config_default(ddpm_optim_config *c)
{
    ddpm_run_config r; /* the defaults are the option table's (options.h) */
    ddpm_run_config_default(&r);
    *c = r.optim;
}

float ddpm_lr_at(const ddpm_optim_config *c, long step)
{
    if (c->warmup > 0 && step < c->warmup)
        return c->lr * (float)step / (float)c->warmup;
    if (c->lr_schedule != DDPM_LR_COSINE)
        return c->lr;
    long span = c->lr_final_step - c->warmup;
    double p = span > 0 ? (double)(step - c->warmup) / (double)span : 1.0;
    p = p < 0 ? 0 : p > 1 ? 1 : p;
    return (float)(c->lr_min + (c->lr - c->lr_min) * 0.5 * (1.0 + cos(M_PI * p)));
}

const char *ddpm_lr_schedule_name(ddpm_lr_schedule s)
{
    return s == DDPM_LR_COSINE ? "cosine" : "constant";
}

int ddpm_lr_schedule_parse(const char *name, ddpm_lr_schedule *out)
{
    if (!strcmp(name, "constant"))
        *out = DDPM_LR_CONSTANT;
    else if (!strcmp(name, "cosine"))
        *out = DDPM_LR_COSINE;
    else
        return -1;
    return 0;
}

enum { CHUNK = 1 << 16, CHUNKS_PER_ROUND = 64 };

double ddpm_global_norm(const float *g, size_t n)
{
    const size_t n_chunks = (n + CHUNK - 1) / CHUNK;
    double total = 0;
    /* Each chunk's sum of squares is computed alone, in index order, into a fixed
     * partial; the partials are then added in chunk order by one thread. That order
     * is a function of n only, so the result is the same for any number of threads
     * (an OpenMP reduction(+) adds per-thread sums, whose split depends on it). */
    for (size_t c0 = 0; c0 < n_chunks; c0 += CHUNKS_PER_ROUND) {
        const size_t c1 = c0 + CHUNKS_PER_ROUND < n_chunks ? c0 + CHUNKS_PER_ROUND : n_chunks;
        double partial[CHUNKS_PER_ROUND];
#pragma omp parallel for schedule(static) if (c1 - c0 > 1)
        for (size_t c = c0; c < c1; c++) {
            double s = 0;
            const size_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
            for (size_t i = c * CHUNK; i < end; i++)
                s += (double)g[i] * g[i];
            partial[c - c0] = s;
        }
        for (size_t c = c0; c < c1; c++)
            total += partial[c - c0];
    }
    return sqrt(total);
}

double ddpm_clip_global_norm(float *g, size_t n, float max_norm)
{
    double norm = ddpm_global_norm(g, n);
    if (max_norm > 0 && norm > max_norm) {
        float scale = (float)(max_norm / (norm + 1e-6));
#pragma omp parallel for schedule(static) if (n > CHUNK)
        for (size_t i = 0; i < n; i++)
            g[i] *= scale;
    }
    return norm;
}

void ddpm_adam_step(float *params, float *m, float *v, const float *g, size_t n, long step,
                    float lr, float beta1, float beta2, float eps)
{
    double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    float step_size = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
#pragma omp parallel for schedule(static) if (n > CHUNK)
    for (size_t i = 0; i < n; i++) {
        float mi = beta1 * m[i] + (1.0f - beta1) * g[i];
        float vi = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        params[i] -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}

float ddpm_ema_decay_at(float decay, long n)
{
    float warm = (float)(1.0 + (double)n) / (float)(10.0 + (double)n);
    return warm < decay ? warm : decay;
}

void ddpm_ema_update(float *ema, const float *params, size_t n, float decay)
{
    float keep = decay, take = 1.0f - decay;
#pragma omp parallel for schedule(static) if (n > CHUNK)
    for (size_t i = 0; i < n; i++)
        ema[i] = keep * ema[i] + take * params[i];
}
