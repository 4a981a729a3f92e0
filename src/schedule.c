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
                                 &s->posterior_coef_x0, &s->posterior_coef_xt, &s->log_alpha};
    for (int a = 0; a < N_ARRAYS; a++)
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
        s->log_alpha[i] = 0.5 * log(prod);
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

/* ---------------------------------------------------------------- continuous t */

/* t is an index 0..T-1 exactly: its stored values are used. */
static int at_knot(const ddpm_schedule *s, double t)
{
    return t >= 0 && t <= s->T - 1 && t == floor(t);
}

double ddpm_schedule_log_alpha(const ddpm_schedule *s, double t)
{
    if (at_knot(s, t) || s->T == 1)
        return s->log_alpha[s->T == 1 ? 0 : (int)t];
    int k = t < 0 ? 0 : t > s->T - 2 ? s->T - 2 : (int)floor(t); /* the segment [k, k + 1] */
    return s->log_alpha[k] + (t - k) * (s->log_alpha[k + 1] - s->log_alpha[k]);
}

double ddpm_schedule_alpha(const ddpm_schedule *s, double t)
{
    return at_knot(s, t) ? s->sqrt_abar[(int)t] : exp(ddpm_schedule_log_alpha(s, t));
}

double ddpm_schedule_sigma(const ddpm_schedule *s, double t)
{
    return at_knot(s, t) ? s->sqrt_one_minus_abar[(int)t] : sqrt(-expm1(2.0 * ddpm_schedule_log_alpha(s, t)));
}

double ddpm_schedule_lambda(const ddpm_schedule *s, double t)
{
    double la = ddpm_schedule_log_alpha(s, t);
    return la - 0.5 * log(-expm1(2.0 * la));
}

double ddpm_schedule_t_of_lambda(const ddpm_schedule *s, double lambda)
{
    /* alpha^2 = e^(2 lambda) / (1 + e^(2 lambda)), in the form that does not overflow */
    double la = lambda < 0 ? lambda - 0.5 * log1p(exp(2.0 * lambda)) : -0.5 * log1p(exp(-2.0 * lambda));
    const double *k = s->log_alpha;
    int T = s->T;
    if (T == 1)
        return 0.0;
    /* log_alpha decreases with t: find the segment [lo, lo + 1] holding la
       (the end segments for values outside the knots) */
    int lo = 0, hi = T - 1;
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (k[mid] >= la)
            lo = mid;
        else
            hi = mid;
    }
    return lo + (la - k[lo]) / (k[lo + 1] - k[lo]);
}
