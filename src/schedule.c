#include "ddpm/schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"

const char *ddpm_schedule_name(ddpm_schedule_kind kind)
{
    return kind == DDPM_SCHEDULE_COSINE ? "cosine" : "linear";
}

int ddpm_schedule_parse(const char *name, ddpm_schedule_kind *kind)
{
    if (!strcmp(name, "linear"))
        *kind = DDPM_SCHEDULE_LINEAR;
    else if (!strcmp(name, "cosine"))
        *kind = DDPM_SCHEDULE_COSINE;
    else
        return -1;
    return 0;
}

void ddpm_schedule_free(ddpm_schedule *s)
{
    free(s->beta); /* one block holds every array */
    memset(s, 0, sizeof *s);
}

static double cosine_f(double t, int T)
{
    const double s = 0.008;
    double c = cos(((t / T) + s) / (1.0 + s) * M_PI / 2.0);
    return c * c;
}

int ddpm_schedule_init(ddpm_schedule *s, ddpm_schedule_kind kind, int T, double beta_start,
                       double beta_end)
{
    memset(s, 0, sizeof *s);
    if (T < 1 || T > 100000)
        return ddpm_error(DDPM_EINVAL, "timesteps must be in 1..100000, got %d", T);
    if (kind == DDPM_SCHEDULE_LINEAR &&
        !(beta_start > 0 && beta_end >= beta_start && beta_end < 1))
        return ddpm_error(DDPM_EINVAL, "betas must satisfy 0 < beta-start <= beta-end < 1, got %g and %g",
                          beta_start, beta_end);
    enum { N_ARRAYS = 10 };
    double *block = ddpm_malloc((size_t)N_ARRAYS * (size_t)T, sizeof(double));
    if (!block)
        return DDPM_ENOMEM;
    double **arrays[N_ARRAYS] = {&s->beta, &s->alpha, &s->abar, &s->abar_prev, &s->sqrt_abar,
                                 &s->sqrt_one_minus_abar, &s->posterior_var,
                                 &s->posterior_coef_x0, &s->posterior_coef_xt, NULL};
    for (int a = 0; a < N_ARRAYS - 1; a++)
        *arrays[a] = block + (size_t)a * T;
    s->kind = kind;
    s->T = T;
    s->beta_start = beta_start;
    s->beta_end = beta_end;
    for (int i = 0; i < T; i++) {
        if (kind == DDPM_SCHEDULE_LINEAR)
            s->beta[i] = T == 1 ? beta_start : beta_start + (beta_end - beta_start) * i / (T - 1);
        else {
            /* step t = i + 1: beta_t = 1 - abar(t)/abar(t-1), clipped at 0.999 */
            double b = 1.0 - cosine_f(i + 1, T) / cosine_f(i, T);
            s->beta[i] = b < 0.999 ? b : 0.999;
        }
    }
    double prod = 1.0;
    for (int i = 0; i < T; i++) {
        s->alpha[i] = 1.0 - s->beta[i];
        s->abar_prev[i] = prod;
        prod *= s->alpha[i];
        s->abar[i] = prod;
        s->sqrt_abar[i] = sqrt(prod);
        s->sqrt_one_minus_abar[i] = sqrt(1.0 - prod);
        double one_minus = 1.0 - s->abar[i];
        s->posterior_var[i] = (1.0 - s->abar_prev[i]) / one_minus * s->beta[i];
        s->posterior_coef_x0[i] = sqrt(s->abar_prev[i]) * s->beta[i] / one_minus;
        s->posterior_coef_xt[i] = sqrt(s->alpha[i]) * (1.0 - s->abar_prev[i]) / one_minus;
    }
    return DDPM_OK;
}

void ddpm_q_sample(float *x_t, const float *x0, const float *eps, const int *i, int B, size_t D,
                   const ddpm_schedule *s)
{
    for (int b = 0; b < B; b++) {
        float ca = (float)s->sqrt_abar[i[b]], cb = (float)s->sqrt_one_minus_abar[i[b]];
        const float *x = x0 + (size_t)b * D, *e = eps + (size_t)b * D;
        float *y = x_t + (size_t)b * D;
        for (size_t d = 0; d < D; d++)
            y[d] = ca * x[d] + cb * e[d];
    }
}

void ddpm_predict_x0(float *x0, const float *x_t, const float *eps, int i, size_t D,
                     const ddpm_schedule *s)
{
    double inv = 1.0 / s->sqrt_abar[i];
    float a = (float)inv, b = (float)(s->sqrt_one_minus_abar[i] * inv);
    for (size_t d = 0; d < D; d++)
        x0[d] = a * x_t[d] - b * eps[d];
}

void ddpm_posterior_mean(float *mean, const float *x0, const float *x_t, int i, size_t D,
                         const ddpm_schedule *s)
{
    float a = (float)s->posterior_coef_x0[i], b = (float)s->posterior_coef_xt[i];
    for (size_t d = 0; d < D; d++)
        mean[d] = a * x0[d] + b * x_t[d];
}

void ddpm_eps_mean(float *mean, const float *x_t, const float *eps, int i, size_t D,
                   const ddpm_schedule *s)
{
    double inv_sqrt_alpha = 1.0 / sqrt(s->alpha[i]);
    float a = (float)inv_sqrt_alpha;
    float b = (float)(inv_sqrt_alpha * s->beta[i] / s->sqrt_one_minus_abar[i]);
    for (size_t d = 0; d < D; d++)
        mean[d] = a * x_t[d] - b * eps[d];
}
