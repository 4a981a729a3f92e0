/* predict.c: the network output's meaning (predict.h). */
#include "ddpm/predict.h"

#include <math.h>
#include <string.h>

#include "ddpm/error.h"

static const char *const names[DDPM_N_PREDICTIONS] = {"eps", "x0", "v", "mu"};

const char *ddpm_prediction_name(ddpm_prediction kind)
{
    return (unsigned)kind < DDPM_N_PREDICTIONS ? names[kind] : "?";
}

int ddpm_prediction_parse(const char *name, ddpm_prediction *kind)
{
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++)
        if (!strcmp(name, names[k])) {
            *kind = (ddpm_prediction)k;
            return 0;
        }
    return -1;
}

ddpm_pred_coef ddpm_pred_coefs(ddpm_prediction kind, int i, const ddpm_schedule *s)
{
    double sa = s->sqrt_abar[i], so = s->sqrt_one_minus_abar[i];
    double c0 = s->posterior_coef_x0[i], c1 = s->posterior_coef_xt[i];
    ddpm_pred_coef c;
    switch (kind) {
    case DDPM_PRED_X0: /* eps = (x_t - sqrt(abar) x0) / sqrt(1-abar) (eq. 4 solved for eps) */
        c.x0_out = 1, c.x0_xt = 0;
        c.eps_out = -sa / so, c.eps_xt = 1 / so;
        break;
    case DDPM_PRED_V: /* x_t = sa x0 + so eps, v = sa eps - so x0, sa^2 + so^2 = 1 */
        c.x0_out = -so, c.x0_xt = sa;
        c.eps_out = sa, c.eps_xt = so;
        break;
    case DDPM_PRED_MU: /* eq. 7 solved for x0: x0 = (mu - c1 x_t) / c0; c0 > 0 for every t */
        c.x0_out = 1 / c0, c.x0_xt = -c1 / c0;
        c.eps_out = -sa / so * c.x0_out, c.eps_xt = (1 - sa * c.x0_xt) / so;
        break;
    case DDPM_PRED_EPS:
    default: /* x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar) */
        c.eps_out = 1, c.eps_xt = 0;
        c.x0_out = -so / sa, c.x0_xt = 1 / sa;
        break;
    }
    if (kind == DDPM_PRED_MU) {
        c.mu_out = 1, c.mu_xt = 0;      /* the output is the mean itself: no round trip */
    } else if (kind == DDPM_PRED_EPS) { /* eq. 11 as Algorithm 2 writes it (equal to eq. 7 of x0) */
        double inv_sqrt_alpha = 1.0 / sqrt(s->alpha[i]);
        c.mu_out = -inv_sqrt_alpha * s->beta[i] / so, c.mu_xt = inv_sqrt_alpha;
    } else
        c.mu_out = c0 * c.x0_out, c.mu_xt = c0 * c.x0_xt + c1;
    return c;
}

ddpm_pred_coef ddpm_pred_coefs_t(ddpm_prediction kind, double t, const ddpm_schedule *s)
{
    if (t >= 0 && t <= s->T - 1 && t == floor(t))
        return ddpm_pred_coefs(kind, (int)t, s);
    double sa = ddpm_schedule_alpha(s, t), so = ddpm_schedule_sigma(s, t);
    ddpm_pred_coef c = {NAN, NAN, NAN, NAN, NAN, NAN};
    switch (kind) {
    case DDPM_PRED_X0: c.x0_out = 1, c.x0_xt = 0, c.eps_out = -sa / so, c.eps_xt = 1 / so; break;
    case DDPM_PRED_V: c.x0_out = -so, c.x0_xt = sa, c.eps_out = sa, c.eps_xt = so; break;
    case DDPM_PRED_MU: break; /* the posterior exists at the trained steps only */
    case DDPM_PRED_EPS:
    default: c.eps_out = 1, c.eps_xt = 0, c.x0_out = -so / sa, c.x0_xt = 1 / sa; break;
    }
    return c;
}

int ddpm_pred_convert(const ddpm_pred_out *o, const ddpm_head *h, const float *out, const float *x_t, double t)
{
    const ddpm_schedule *s = h->sched;
    int trained = t >= 0 && t <= s->T - 1 && t == floor(t);
    if (!trained && (o->mean || o->logvar || h->kind == DDPM_PRED_MU))
        return ddpm_error(DDPM_EINVAL, "step index %g: the %s is defined at the trained steps 0..%d only", t,
                          h->kind == DDPM_PRED_MU ? "mu prediction" : "reverse mean and variance", s->T - 1);
    if (o->logvar && !h->learn_sigma)
        return ddpm_error(DDPM_EINVAL, "the model has fixed variances: it has no learned log-variance");
    ddpm_pred_coef c = ddpm_pred_coefs_t(h->kind, t, s);
    float eo = (float)c.eps_out, ex = (float)c.eps_xt, xo = (float)c.x0_out, xx = (float)c.x0_xt;
    float mo = (float)c.mu_out, mx = (float)c.mu_xt;
    ddpm_prediction kind = h->kind;
    for (size_t d = 0; d < h->D; d++) {
        float v = out[d], x = x_t[d];
        if (o->eps)
            o->eps[d] = kind == DDPM_PRED_EPS ? v : eo * v + ex * x;
        if (o->x0)
            o->x0[d] = kind == DDPM_PRED_X0 ? v : xo * v + xx * x;
        if (o->mean)
            o->mean[d] = mx * x + mo * v;
    }
    if (o->logvar) {
        ddpm_logvar_coef lc = ddpm_learned_logvar_coef((int)t, s);
        for (size_t d = 0; d < h->D; d++)
            o->logvar[d] = ddpm_learned_logvar(lc, out[h->D + d]);
    }
    return DDPM_OK;
}

void ddpm_pred_to_eps_x0(float *eps, float *x0, ddpm_prediction kind, const float *out, const float *x_t,
                         int i, size_t D, const ddpm_schedule *s)
{
    ddpm_head h = {s, kind, 0, D};
    ddpm_pred_out o = {eps, x0, NULL, NULL};
    ddpm_pred_convert(&o, &h, out, x_t, i); /* a trained step and no mean: cannot fail */
}

void ddpm_pred_target(float *target, ddpm_prediction kind, const float *x0, const float *eps,
                      const float *x_t, int i, size_t D, const ddpm_schedule *s)
{
    float sa = (float)s->sqrt_abar[i], so = (float)s->sqrt_one_minus_abar[i];
    float c0 = (float)s->posterior_coef_x0[i], c1 = (float)s->posterior_coef_xt[i];
    for (size_t d = 0; d < D; d++) {
        switch (kind) {
        case DDPM_PRED_X0: target[d] = x0[d]; break;
        case DDPM_PRED_V: target[d] = sa * eps[d] - so * x0[d]; break;
        case DDPM_PRED_MU: target[d] = c0 * x0[d] + c1 * x_t[d]; break;
        case DDPM_PRED_EPS:
        default: target[d] = eps[d]; break;
        }
    }
}

ddpm_logvar_coef ddpm_learned_logvar_coef(int i, const ddpm_schedule *s)
{
    double lo = log(s->posterior_var[i > 0 ? i : (s->T > 1 ? 1 : 0)]), hi = log(s->beta[i]);
    ddpm_logvar_coef c = {lo, 0.5 * (hi - lo)};
    return c;
}
