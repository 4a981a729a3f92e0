/* vp.c: the trained schedule's continuous functions (schedule.c) as a ddpm_vp. */
#include "ddpm/vp.h"

#include "ddpm/error.h"

int ddpm_vp_discrete_init(ddpm_vp_discrete *d, const ddpm_schedule *s)
{
    d->s = NULL;
    if (!s || s->T < 2)
        return ddpm_error(DDPM_EINVAL, "a continuous schedule needs at least 2 trained steps");
    for (int i = 0; i < s->T; i++)
        if (!(s->abar[i] > 0 && s->abar[i] < 1) || (i > 0 && !(s->abar[i] < s->abar[i - 1])))
            return ddpm_error(DDPM_EINVAL, "abar must decrease strictly inside (0, 1) (step %d)", i);
    d->s = s;
    return 0;
}

void ddpm_vp_discrete_free(ddpm_vp_discrete *d) { d->s = NULL; }

static double discrete_log_alpha(const void *ctx, double t)
{
    return ddpm_schedule_log_alpha(((const ddpm_vp_discrete *)ctx)->s, t);
}

static double discrete_t_of_lambda(const void *ctx, double lambda)
{
    return ddpm_schedule_t_of_lambda(((const ddpm_vp_discrete *)ctx)->s, lambda);
}

ddpm_vp ddpm_vp_discrete_view(const ddpm_vp_discrete *d)
{
    ddpm_vp vp = {.ctx = d, .log_alpha = discrete_log_alpha, .t_of_lambda = discrete_t_of_lambda};
    return vp;
}
