#include "ddpm/vp.h"

#include <stdlib.h>

#include "ddpm/error.h"

int ddpm_vp_discrete_init(ddpm_vp_discrete *d, const ddpm_schedule *s)
{
    d->T = 0;
    d->log_alpha = NULL;
    if (!s || s->T < 2)
        return ddpm_error(DDPM_EINVAL, "a continuous schedule needs at least 2 trained steps");
    d->log_alpha = ddpm_malloc((size_t)s->T, sizeof(double));
    if (!d->log_alpha)
        return DDPM_ENOMEM;
    for (int i = 0; i < s->T; i++) {
        if (!(s->abar[i] > 0 && s->abar[i] < 1) || (i > 0 && !(s->abar[i] < s->abar[i - 1]))) {
            free(d->log_alpha);
            d->log_alpha = NULL;
            return ddpm_error(DDPM_EINVAL, "abar must decrease strictly inside (0, 1) (step %d)", i);
        }
        d->log_alpha[i] = 0.5 * log(s->abar[i]);
    }
    d->T = s->T;
    return 0;
}

void ddpm_vp_discrete_free(ddpm_vp_discrete *d)
{
    free(d->log_alpha);
    d->log_alpha = NULL;
    d->T = 0;
}

/* The segment [i, i+1] that holds t, the end segments covering the outside. */
static double discrete_log_alpha(const void *ctx, double t)
{
    const ddpm_vp_discrete *d = ctx;
    double f = floor(t);
    int i = f < 0 ? 0 : f > d->T - 2 ? d->T - 2 : (int)f;
    return d->log_alpha[i] + (t - i) * (d->log_alpha[i + 1] - d->log_alpha[i]);
}

static double discrete_t_of_lambda(const void *ctx, double lambda)
{
    const ddpm_vp_discrete *d = ctx;
    double la = ddpm_vp_log_alpha_of_lambda(lambda);
    /* log_alpha[] decreases: find the last i with log_alpha[i] >= la, in [0, T-2] */
    int lo = 0, hi = d->T - 2;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (d->log_alpha[mid] >= la)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo + (la - d->log_alpha[lo]) / (d->log_alpha[lo + 1] - d->log_alpha[lo]);
}

ddpm_vp ddpm_vp_discrete_view(const ddpm_vp_discrete *d)
{
    ddpm_vp vp = {.ctx = d, .log_alpha = discrete_log_alpha, .t_of_lambda = discrete_t_of_lambda};
    return vp;
}
