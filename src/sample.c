#include "ddpm/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"

void ddpm_sampler_config_default(ddpm_sampler_config *c)
{
    c->kind = DDPM_SAMPLER_DDPM;
    c->steps = 100;
    c->eta = 1.0f;
    c->var = DDPM_VAR_BETA;
    c->clip_x0 = 1;
}

static inline float clampf(float v) { return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; }

void ddpm_ddpm_step(float *x_prev, float *x0_out, const float *x_t, const float *eps,
                    const float *z, int i, size_t D, const ddpm_schedule *s, ddpm_var_kind var,
                    int clip_x0)
{
    double sigma = i == 0 ? 0.0 : sqrt(var == DDPM_VAR_BETA ? s->beta[i] : s->posterior_var[i]);
    float sig = (float)sigma;
    /* x0 from eps (eq. 15 rearranged), used for the clipped mean and the trajectory */
    double inv = 1.0 / s->sqrt_abar[i];
    float a0 = (float)inv, b0 = (float)(s->sqrt_one_minus_abar[i] * inv);
    float cx0 = (float)s->posterior_coef_x0[i], cxt = (float)s->posterior_coef_xt[i];
    double inv_sqrt_alpha = 1.0 / sqrt(s->alpha[i]);
    float ea = (float)inv_sqrt_alpha, eb = (float)(inv_sqrt_alpha * s->beta[i] / s->sqrt_one_minus_abar[i]);
    for (size_t d = 0; d < D; d++) {
        float x0 = a0 * x_t[d] - b0 * eps[d];
        float mean;
        if (clip_x0) {
            x0 = clampf(x0);
            mean = cx0 * x0 + cxt * x_t[d]; /* mu~(x0, x_t), eq. 7 */
        } else {
            mean = ea * x_t[d] - eb * eps[d]; /* Algorithm 2, line 4 */
        }
        if (x0_out)
            x0_out[d] = x0;
        x_prev[d] = i == 0 ? mean : mean + sig * z[d];
    }
}

void ddpm_ddim_step(float *x_prev, float *x0_out, const float *x_t, const float *eps,
                    const float *z, int i, int i_prev, float eta, size_t D,
                    const ddpm_schedule *s, int clip_x0)
{
    double abar = s->abar[i], abar_prev = i_prev >= 0 ? s->abar[i_prev] : 1.0;
    double sigma = eta * sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev));
    double dir = 1.0 - abar_prev - sigma * sigma;
    float c_x0 = (float)sqrt(abar_prev), c_eps = (float)sqrt(dir > 0 ? dir : 0), sig = (float)sigma;
    float a0 = (float)(1.0 / sqrt(abar)), b0 = (float)(sqrt(1.0 - abar) / sqrt(abar));
    float ra = (float)sqrt(abar), rb = (float)(1.0 / sqrt(1.0 - abar));
    for (size_t d = 0; d < D; d++) {
        float x0 = a0 * x_t[d] - b0 * eps[d];
        float e = eps[d];
        if (clip_x0) {
            float c = clampf(x0);
            if (c != x0) /* keep x0 and eps consistent: eps = (x_t - sqrt(abar) x0)/sqrt(1-abar) */
                e = (x_t[d] - ra * c) * rb;
            x0 = c;
        }
        if (x0_out)
            x0_out[d] = x0;
        float v = c_x0 * x0 + c_eps * e;
        x_prev[d] = sig > 0 ? v + sig * z[d] : v;
    }
}

int ddpm_ddim_timesteps(int *out, int S, int T)
{
    if (S < 1 || S > T)
        return ddpm_error(DDPM_EINVAL, "DDIM steps must be in 1..%d (the model's timesteps), got %d", T, S);
    return ddpm_ddim_timesteps_from(out, S, T - 1);
}

int ddpm_ddim_timesteps_from(int *out, int S, int i_start)
{
    if (S < 1 || S > i_start + 1)
        return ddpm_error(DDPM_EINVAL, "DDIM steps from step index %d must be in 1..%d, got %d", i_start,
                          i_start + 1, S);
    if (S == 1) {
        out[0] = i_start;
        return 1;
    }
    for (int k = 0; k < S; k++)
        out[k] = (int)floor((double)k * i_start / (S - 1) + 0.5);
    return S;
}

int ddpm_sampler_n_steps(const ddpm_sampler_config *c, const ddpm_schedule *s)
{
    return c->kind == DDPM_SAMPLER_DDIM ? c->steps : s->T;
}

/* The normal draws of image g at step k: independent of the batch split. */
static void image_noise(float *out, size_t D, const ddpm_rng *rng, long g, int k, int n_steps)
{
    ddpm_rng r = *rng;
    r.counter += ((uint64_t)g * (uint64_t)(n_steps + 1) + (uint64_t)k) * ((D + 3) / 4);
    ddpm_rng_normal_fill(&r, out, D);
}

void ddpm_sample_initial_noise(float *x_T, size_t D, int image, const ddpm_schedule *s,
                               const ddpm_sampler_config *c, const ddpm_rng *rng)
{
    int n = ddpm_sampler_n_steps(c, s);
    image_noise(x_T, D, rng, image, n, n);
}

int ddpm_sample(float *x, float *scratch, int B, size_t D, int first_image,
                const ddpm_schedule *s, const ddpm_sampler_config *c, ddpm_eps_fn eps_fn,
                void *eps_ctx, const ddpm_rng *rng, ddpm_step_fn step_fn, void *step_ctx)
{
    for (int b = 0; b < B; b++)
        ddpm_sample_initial_noise(x + (size_t)b * D, D, first_image + b, s, c, rng);
    return ddpm_sample_from(x, scratch, B, D, first_image, s->T - 1, s, c, eps_fn, eps_ctx, rng, step_fn,
                            step_ctx);
}

int ddpm_sample_from(float *x, float *scratch, int B, size_t D, int first_image, int i_start,
                     const ddpm_schedule *s, const ddpm_sampler_config *c, ddpm_eps_fn eps_fn,
                     void *eps_ctx, const ddpm_rng *rng, ddpm_step_fn step_fn, void *step_ctx)
{
    if (i_start < 0 || i_start >= s->T)
        return ddpm_error(DDPM_EINVAL, "the start step index must be in 0..%d, got %d", s->T - 1, i_start);
    if (c->kind == DDPM_SAMPLER_DDIM && (c->steps < 1 || c->steps > i_start + 1))
        return ddpm_error(DDPM_EINVAL, "DDIM steps must be in 1..%d (%s), got %d", i_start + 1,
                          i_start == s->T - 1 ? "the model's timesteps" : "the start step", c->steps);
    if (c->kind == DDPM_SAMPLER_DDIM && !(c->eta >= 0 && c->eta <= 1))
        return ddpm_error(DDPM_EINVAL, "eta must be in [0, 1], got %g", c->eta);
    int n = c->kind == DDPM_SAMPLER_DDIM ? c->steps : i_start + 1;
    if ((c->kind == DDPM_SAMPLER_DDPM || c->eta > 0) && !rng)
        return ddpm_error(DDPM_EINVAL, "a stochastic sampler needs a random stream");
    int *seq = ddpm_malloc((size_t)n, sizeof *seq);
    int *ivec = ddpm_malloc((size_t)B, sizeof *ivec);
    if (!seq || !ivec) {
        free(seq);
        free(ivec);
        return DDPM_ENOMEM;
    }
    if (c->kind == DDPM_SAMPLER_DDIM)
        ddpm_ddim_timesteps_from(seq, n, i_start);
    else
        for (int k = 0; k < n; k++)
            seq[k] = k;
    size_t BD = (size_t)B * D;
    float *eps = scratch, *z = scratch + BD, *x0 = z + BD, *xn = x0 + BD;
    for (int k = 0; k < n; k++) {
        int idx = n - 1 - k, i = seq[idx], i_prev = idx > 0 ? seq[idx - 1] : -1;
        for (int b = 0; b < B; b++)
            ivec[b] = i;
        eps_fn(eps_ctx, eps, x, ivec, B);
        int need_z = c->kind == DDPM_SAMPLER_DDPM ? i > 0 : (c->eta > 0 && i_prev >= 0);
        for (int b = 0; b < B; b++) {
            size_t o = (size_t)b * D;
            if (need_z)
                image_noise(z + o, D, rng, first_image + b, k, n);
            if (c->kind == DDPM_SAMPLER_DDPM)
                ddpm_ddpm_step(xn + o, x0 + o, x + o, eps + o, z + o, i, D, s, c->var, c->clip_x0);
            else
                ddpm_ddim_step(xn + o, x0 + o, x + o, eps + o, z + o, i, i_prev, c->eta, D, s, c->clip_x0);
        }
        memcpy(x, xn, BD * sizeof *x);
        if (step_fn)
            step_fn(step_ctx, k, n, i, x, x0, B);
    }
    free(seq);
    free(ivec);
    return DDPM_OK;
}

void ddpm_unet_eps(void *opaque, float *eps, const float *x_t, const int *i, int B)
{
    ddpm_unet_eps_ctx *c = opaque;
    ddpm_unet_forward(c->net, c->params, c->ws, eps, x_t, i, B, NULL);
}
