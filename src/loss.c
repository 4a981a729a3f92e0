/* loss.c: L_simple (optionally min-SNR weighted), the variational bound and
 * their sum, with gradients with respect to the network output (loss.h). */
#include "ddpm/loss.h"

#include <math.h>
#include <string.h>

#include "ddpm/config.h"
#include "ddpm/error.h"
#include "ddpm/ops.h"

static const char *const names[3] = {"simple", "vlb", "hybrid"};

void ddpm_loss_config_default(ddpm_loss_config *c)
{
    ddpm_run_config r; /* the defaults are the option table's (options.h) */
    ddpm_run_config_default(&r);
    *c = r.loss;
}

const char *ddpm_loss_name(ddpm_loss_kind kind)
{
    return (unsigned)kind < 3 ? names[kind] : "?";
}

int ddpm_loss_parse(const char *name, ddpm_loss_kind *kind)
{
    for (int k = 0; k < 3; k++)
        if (!strcmp(name, names[k])) {
            *kind = (ddpm_loss_kind)k;
            return 0;
        }
    return -1;
}

int ddpm_loss_config_check(const ddpm_loss_config *c, ddpm_prediction pred, int learn_sigma)
{
    if ((unsigned)c->kind > DDPM_LOSS_HYBRID)
        return ddpm_error(DDPM_EINVAL, "unknown loss kind %d", (int)c->kind);
    if (learn_sigma && c->kind == DDPM_LOSS_SIMPLE)
        return ddpm_error(DDPM_EINVAL, "learned variances need --loss vlb or hybrid: L_simple does not train them");
    if (c->snr_gamma > 0 && pred == DDPM_PRED_MU)
        return ddpm_error(DDPM_EINVAL, "min-SNR weighting is defined for eps, x0 and v prediction, not mu");
    if (c->snr_gamma > 0 && c->kind == DDPM_LOSS_VLB)
        return ddpm_error(DDPM_EINVAL, "min-SNR weighting applies to the simple (or hybrid) loss, not vlb");
    return DDPM_OK;
}

/* min-SNR-gamma weight of one image's MSE (Hang et al. 2023, eq. 8 and sec. 3.4) */
static double snr_weight(ddpm_prediction pred, double gamma, double abar)
{
    double snr = abar / (1.0 - abar), m = snr < gamma ? snr : gamma;
    switch (pred) {
    case DDPM_PRED_X0: return m;
    case DDPM_PRED_V: return m / (snr + 1.0);
    default: return m / snr;
    }
}

double ddpm_log_ndtr(double z)
{
    if (z > 5)
        return log1p(-0.5 * erfc(z / M_SQRT2));
    if (z > -30)
        return log(0.5 * erfc(-z / M_SQRT2));
    /* Phi(z) = phi(z)/(-z) (1 - 1/z^2 + 3/z^4 - 15/z^6 + ...): relative error < 1e-9 here */
    double z2 = z * z;
    return -0.5 * z2 - log(-z) - 0.5 * log(2 * M_PI) + log1p(-1 / z2 + 3 / (z2 * z2) - 15 / (z2 * z2 * z2));
}

/* log(Phi(b) - Phi(a)) for a < b (a = -INFINITY or b = INFINITY for the open
 * ends), without cancellation: both tails are mapped to the left one. */
static double log_ndtr_diff(double a, double b)
{
    if (a == -INFINITY)
        return ddpm_log_ndtr(b);
    if (b == INFINITY)
        return ddpm_log_ndtr(-a);
    if (a > 0) { /* Phi(b) - Phi(a) = Phi(-a) - Phi(-b) */
        double t = -a;
        a = -b;
        b = t;
    }
    if (b > 0) /* straddles 0: no cancellation */
        return log(0.5 * (erf(b / M_SQRT2) - erf(a / M_SQRT2)));
    double lb = ddpm_log_ndtr(b), la = ddpm_log_ndtr(a);
    return lb + log1p(-exp(la - lb));
}

static double log_phi(double u)
{
    return -0.5 * u * u - 0.5 * log(2 * M_PI);
}

double ddpm_vlb_term(float *d_out, double scale, const float *out, const float *x0, const float *x_t, int i,
                     size_t D, ddpm_prediction pred, const ddpm_schedule *s)
{
    ddpm_pred_coef pc = ddpm_pred_coefs(pred, i, s);
    double var = s->beta[i]; /* sigma_t^2 = beta_t */
    double sum = 0;
    if (i > 0) {
        double c0 = s->posterior_coef_x0[i], c1 = s->posterior_coef_xt[i], pv = s->posterior_var[i];
        /* KL(N(m1, v1) || N(m2, v2)) = 0.5 (log(v2/v1) + v1/v2 - 1) + (m1 - m2)^2 / (2 v2) */
        double kl0 = 0.5 * (log(var / pv) + pv / var - 1.0);
        for (size_t d = 0; d < D; d++) {
            double mu_q = c0 * x0[d] + c1 * x_t[d];
            double mu_p = pc.mu_out * out[d] + pc.mu_xt * x_t[d];
            double diff = mu_p - mu_q;
            sum += diff * diff / (2 * var);
            if (d_out)
                d_out[d] += (float)(scale * pc.mu_out * diff / var);
        }
        return sum + (double)D * kl0;
    }
    /* L_0: -log of the probability of x0's bin under N(mu_theta, beta_1) */
    const double half_bin = 1.0 / 255.0, sigma = sqrt(var);
    for (size_t d = 0; d < D; d++) {
        double x = x0[d], mu = pc.mu_out * out[d] + pc.mu_xt * x_t[d];
        double a = x < -0.999 ? -INFINITY : (x - half_bin - mu) / sigma;
        double b = x > 0.999 ? INFINITY : (x + half_bin - mu) / sigma;
        double log_p = log_ndtr_diff(a, b);
        sum -= log_p;
        if (d_out) {
            double pb = b == INFINITY ? 0 : exp(log_phi(b) - log_p),
                   pa = a == -INFINITY ? 0 : exp(log_phi(a) - log_p);
            d_out[d] += (float)(scale * pc.mu_out * (pb - pa) / sigma);
        }
    }
    return sum;
}

double ddpm_vlb_term_learned(float *d_out, float *d_v, double scale, int mean_grad, const float *out,
                             const float *v, const float *x0, const float *x_t, int i, size_t D, ddpm_prediction pred,
                             const ddpm_schedule *s)
{
    ddpm_pred_coef pc = ddpm_pred_coefs(pred, i, s);
    ddpm_logvar_coef lc = ddpm_learned_logvar_coef(i, s);
    double sum = 0;
    if (i > 0) {
        double c0 = s->posterior_coef_x0[i], c1 = s->posterior_coef_xt[i], log_pv = log(s->posterior_var[i]);
        for (size_t d = 0; d < D; d++) {
            double lv = ddpm_learned_logvar(lc, v[d]), inv_var = exp(-lv);
            double mu_q = c0 * x0[d] + c1 * x_t[d];
            double mu_p = pc.mu_out * out[d] + pc.mu_xt * x_t[d];
            double diff = mu_p - mu_q, log_r = log_pv - lv; /* r = beta~_t / sigma_d^2 */
            /* KL = 0.5 (r - 1 - log r) + diff^2 / (2 sigma^2) */
            sum += 0.5 * (expm1(log_r) - log_r) + 0.5 * diff * diff * inv_var;
            if (d_out && mean_grad)
                d_out[d] += (float)(scale * pc.mu_out * diff * inv_var);
            if (d_v) /* d KL / d lv = 0.5 - 0.5 (beta~ + diff^2) / sigma^2 */
                d_v[d] += (float)(scale * lc.half * (0.5 - 0.5 * (exp(log_r) + diff * diff * inv_var)));
        }
        return sum;
    }
    const double half_bin = 1.0 / 255.0;
    for (size_t d = 0; d < D; d++) {
        double lv = ddpm_learned_logvar(lc, v[d]), sigma = exp(0.5 * lv);
        double x = x0[d], mu = pc.mu_out * out[d] + pc.mu_xt * x_t[d];
        double a = x < -0.999 ? -INFINITY : (x - half_bin - mu) / sigma;
        double b = x > 0.999 ? INFINITY : (x + half_bin - mu) / sigma;
        double log_p = log_ndtr_diff(a, b);
        sum -= log_p;
        double pb = b == INFINITY ? 0 : exp(log_phi(b) - log_p), pa = a == -INFINITY ? 0 : exp(log_phi(a) - log_p);
        if (d_out && mean_grad)
            d_out[d] += (float)(scale * pc.mu_out * (pb - pa) / sigma);
        if (d_v) { /* d(-log P)/d lv = (b phi(b) - a phi(a)) / (2 P), 0 at an open end */
            double bb = b == INFINITY ? 0 : b * pb, aa = a == -INFINITY ? 0 : a * pa;
            d_v[d] += (float)(scale * lc.half * 0.5 * (bb - aa));
        }
    }
    return sum;
}

/* ddpm_loss of a network with learned variances: out and d_out hold 2D values
 * per image (the prediction, then v). vlb: the bound trains both; hybrid: the
 * MSE trains the prediction and the bound, with the mean's gradient stopped,
 * the variance (Nichol & Dhariwal 2021, section 3.1). */
static double loss_learned(float *d_out, float *target, double *term, const float *out, const float *x0,
                           const float *eps, const float *x_t, const int *i, const double *weight, int B, int B_mean,
                           size_t D, ddpm_prediction pred, const ddpm_loss_config *c, const ddpm_schedule *s)
{
    double n_mean = (double)B_mean * D, loss = 0;
    double lambda = c->kind == DDPM_LOSS_HYBRID ? c->vlb_weight : 1.0;
    memset(d_out, 0, (size_t)B * 2 * D * sizeof *d_out);
    for (int b = 0; b < B; b++) {
        const float *o = out + (size_t)b * 2 * D, *xb = x0 + (size_t)b * D, *xt = x_t + (size_t)b * D;
        float *g = d_out + (size_t)b * 2 * D;
        double w = weight ? weight[b] : 1.0, mse = 0;
        if (c->kind == DDPM_LOSS_HYBRID) {
            float *tg = target + (size_t)b * D;
            ddpm_pred_target(tg, pred, xb, eps + (size_t)b * D, xt, i[b], D, s);
            double w_snr = c->snr_gamma > 0 ? snr_weight(pred, c->snr_gamma, s->abar[i[b]]) : 1.0;
            for (size_t d = 0; d < D; d++) {
                double e = (double)o[d] - (double)tg[d];
                mse += e * e;
                g[d] = (float)(2.0 * w * w_snr * e / n_mean);
            }
            mse *= w_snr;
        }
        double scale = w * lambda * s->T / n_mean;
        double v = ddpm_vlb_term_learned(g, g + D, scale, c->kind == DDPM_LOSS_VLB, o, o + D, xb, xt, i[b], D, pred, s);
        double t_b = mse / (double)D + lambda * s->T * v / (double)D; /* the image's term, as in ddpm_loss */
        loss += w * t_b * (double)D / n_mean;
        if (term)
            term[b] = t_b;
    }
    return loss;
}

double ddpm_loss(float *d_out, float *target, double *term, const ddpm_loss_batch *batch, const ddpm_head *h,
                 const ddpm_loss_config *c)
{
    const float *out = batch->out, *x0 = batch->x0, *eps = batch->eps, *x_t = batch->x_t;
    const int *i = batch->i;
    const double *weight = batch->weight;
    int B = batch->B, B_mean = batch->B_mean;
    size_t D = h->D;
    ddpm_prediction pred = h->kind;
    const ddpm_schedule *s = h->sched;
    if (h->learn_sigma)
        return loss_learned(d_out, target, term, out, x0, eps, x_t, i, weight, B, B_mean, D, pred, c, s);
    size_t BD = (size_t)B * D, n_mean = (size_t)B_mean * D; /* the mean is over the whole batch */
    double loss = 0;
    memset(d_out, 0, BD * sizeof *d_out);
    for (int b = 0; term && b < B; b++)
        term[b] = 0;
    if (c->kind != DDPM_LOSS_VLB) {
        for (int b = 0; b < B; b++)
            ddpm_pred_target(target + (size_t)b * D, pred, x0 + (size_t)b * D, eps + (size_t)b * D,
                             x_t + (size_t)b * D, i[b], D, s);
        if (c->snr_gamma > 0 || weight || term) {
            for (int b = 0; b < B; b++) {
                const float *o = out + (size_t)b * D, *g = target + (size_t)b * D;
                double w_snr = c->snr_gamma > 0 ? snr_weight(pred, c->snr_gamma, s->abar[i[b]]) : 1.0;
                double w = weight ? w_snr * weight[b] : w_snr;
                double scale = 2.0 * w / (double)n_mean, sum = 0;
                for (size_t d = 0; d < D; d++) {
                    double e = (double)o[d] - (double)g[d];
                    sum += e * e;
                    d_out[(size_t)b * D + d] = (float)(scale * e);
                }
                loss += w * sum / (double)n_mean;
                if (term)
                    term[b] = w_snr * sum / (double)D;
            }
        } else {
            /* L_simple exactly as Algorithm 1 and the earlier trainer computed it */
            loss = ddpm_mse_forward(out, target, BD) * ((double)B / B_mean);
            ddpm_mse_backward(d_out, out, target, BD, n_mean);
        }
    }
    if (c->kind != DDPM_LOSS_SIMPLE) {
        double lambda = c->kind == DDPM_LOSS_HYBRID ? c->vlb_weight : 1.0;
        double scale = lambda * s->T / (double)n_mean, vlb = 0;
        for (int b = 0; b < B; b++) {
            size_t o = (size_t)b * D;
            double scale_b = weight ? scale * weight[b] : scale;
            double v = ddpm_vlb_term(d_out + o, scale_b, out + o, x0 + o, x_t + o, i[b], D, pred, s);
            if (weight)
                loss += scale_b * v;
            else
                vlb += v;
            if (term)
                term[b] += lambda * s->T * v / (double)D;
        }
        loss += scale * vlb;
    }
    return loss;
}
