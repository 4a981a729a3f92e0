/* timestep.c: uniform and importance sampling of the training timestep, and the
 * loss history importance sampling reads (timestep.h). */
#include "ddpm/timestep.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"

static const char *const names[2] = {"uniform", "importance"};

const char *ddpm_t_sampling_name(ddpm_t_sampling s)
{
    return (unsigned)s < 2 ? names[s] : "?";
}

int ddpm_t_sampling_parse(const char *name, ddpm_t_sampling *s)
{
    for (int k = 0; k < 2; k++)
        if (!strcmp(name, names[k])) {
            *s = (ddpm_t_sampling)k;
            return 0;
        }
    return -1;
}

int ddpm_t_sampling_check(ddpm_t_sampling s, ddpm_loss_kind loss)
{
    if ((unsigned)s > DDPM_T_IMPORTANCE)
        return ddpm_error(DDPM_EINVAL, "unknown timestep sampling %d", (int)s);
    if (s == DDPM_T_IMPORTANCE && loss != DDPM_LOSS_VLB && loss != DDPM_LOSS_HYBRID)
        return ddpm_error(DDPM_EINVAL,
                          "--t-sampling importance needs --loss vlb or hybrid (it samples t by the "
                          "bound's terms; L_simple is defined with uniform t)");
    return DDPM_OK;
}

int ddpm_t_history_init(ddpm_t_history *h, int T)
{
    memset(h, 0, sizeof *h);
    if (T < 1 || T > 100000)
        return ddpm_error(DDPM_EINVAL, "timesteps must be in 1..100000, got %d", T);
    h->loss = ddpm_calloc((size_t)T * DDPM_T_HISTORY, sizeof *h->loss);
    h->count = ddpm_calloc((size_t)T, sizeof *h->count);
    if (!h->loss || !h->count) {
        ddpm_t_history_free(h);
        return DDPM_ENOMEM;
    }
    h->T = T;
    return DDPM_OK;
}

void ddpm_t_history_free(ddpm_t_history *h)
{
    free(h->loss);
    free(h->count);
    memset(h, 0, sizeof *h);
}

void ddpm_t_history_add(ddpm_t_history *h, const int *i, const float *value, int n)
{
    for (int k = 0; k < n; k++) {
        float *row = h->loss + (size_t)i[k] * DDPM_T_HISTORY;
        int *c = &h->count[i[k]];
        if (*c == DDPM_T_HISTORY) { /* full: the oldest goes */
            memmove(row, row + 1, (DDPM_T_HISTORY - 1) * sizeof *row);
            row[DDPM_T_HISTORY - 1] = value[k];
        } else {
            row[(*c)++] = value[k];
        }
    }
}

int ddpm_t_history_warm(const ddpm_t_history *h)
{
    for (int i = 0; i < h->T; i++)
        if (h->count[i] < DDPM_T_HISTORY)
            return 0;
    return 1;
}

int ddpm_t_probabilities(double *p, double *cdf, const ddpm_t_history *h)
{
    int T = h->T, warm = ddpm_t_history_warm(h);
    double total = 0;
    if (warm) {
        /* w_t = sqrt(E[L_t^2]) over the history (section 3.3) */
        for (int i = 0; i < T; i++) {
            const float *row = h->loss + (size_t)i * DDPM_T_HISTORY;
            double sq = 0;
            for (int k = 0; k < DDPM_T_HISTORY; k++)
                sq += (double)row[k] * row[k];
            p[i] = sqrt(sq / DDPM_T_HISTORY);
            total += p[i];
        }
        warm = total > 0 && isfinite(total);
    }
    for (int i = 0; i < T; i++)
        p[i] = warm ? (1.0 - DDPM_T_UNIFORM_MIX) * (p[i] / total) + DDPM_T_UNIFORM_MIX / T : 1.0 / T;
    double run = 0;
    for (int i = 0; i < T; i++)
        cdf[i] = run += p[i];
    cdf[T - 1] = 1.0; /* so that every u in (0, 1) falls in some step's interval */
    return warm;
}

int ddpm_t_draw(double *weight, const double *p, const double *cdf, int T, int warm, ddpm_rng *r)
{
    if (!warm) {
        *weight = 1.0;
        return (int)ddpm_rng_below(r, (uint64_t)T);
    }
    double u = ddpm_rng_uniform(r);
    int lo = 0, hi = T - 1; /* the smallest i with u < cdf[i] */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (u < cdf[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    *weight = 1.0 / (T * p[lo]);
    return lo;
}
