/* loss.h: the training objectives, each with its gradient with respect to the
 * network output (whatever the output means: predict.h).
 *
 *   simple  L_simple (DDPM eq. 14): the mean squared error between the output
 *           and its target (eps, x0, v or mu~), optionally weighted per image
 *           by min-SNR-gamma (Hang et al. 2023) for eps, x0 and v:
 *           SNR = abar/(1-abar), w = min(SNR, gamma) / SNR (eps),
 *           min(SNR, gamma) (x0), min(SNR, gamma) / (SNR + 1) (v).
 *   vlb     the variational bound L (DDPM eq. 5) with the reverse variance fixed
 *           at sigma_t^2 = beta_t (the samplers' default): per image, for t > 1
 *           L_{t-1} = KL(q(x_{t-1}|x_t,x0) || N(mu_theta, beta_t I))
 *                   = sum_d (mu~ - mu_theta)^2 / (2 beta_t) + D kl0(beta~_t, beta_t),
 *           and for t = 1 the discretized Gaussian decoder L_0 = -log p(x0|x_1)
 *           (section 3.3: bins of half-width 1/255, open ends at +-1). The
 *           batch value is T times the mean over images of L_{t-1} / D: with t
 *           uniform, an unbiased estimate of sum_{t>=1} L_{t-1} in nats per
 *           dimension (the bound without the constant L_T).
 *   hybrid  simple + vlb_weight vlb (Nichol & Dhariwal 2021 eq. 16, lambda
 *           0.001; with fixed variances the bound also trains the mean, with
 *           learned ones only the variance, as in that paper).
 * mu_theta is affine in the output (predict.h, mu_out and mu_xt), so the
 * gradients are closed forms: d L_{t-1}/d out = mu_out (mu_theta - mu~) / beta_t
 * and d L_0 / d mu = (phi(u+) - phi(u-)) / (sigma P) with u+- the bin edges in
 * units of sigma and P the bin's probability, computed in log space. */
#ifndef DDPM_LOSS_H
#define DDPM_LOSS_H

#include <stddef.h>

#include "ddpm/predict.h"
#include "ddpm/schedule.h"

typedef enum { DDPM_LOSS_SIMPLE = 0, DDPM_LOSS_VLB = 1, DDPM_LOSS_HYBRID = 2 } ddpm_loss_kind;

typedef struct {
    ddpm_loss_kind kind;
    float snr_gamma;  /* min-SNR-gamma of the MSE term; 0: unweighted */
    float vlb_weight; /* lambda of hybrid */
} ddpm_loss_config;

/* simple, unweighted, lambda 0.001. */
void ddpm_loss_config_default(ddpm_loss_config *c);
/* 0, or DDPM_EINVAL when the combination makes no sense (min-SNR with mu;
 * learned variances with L_simple, which does not train them). */
int ddpm_loss_config_check(const ddpm_loss_config *c, ddpm_prediction pred, int learn_sigma);
/* "simple" "vlb" "hybrid" <-> kind; parse returns -1 on an unknown name. */
const char *ddpm_loss_name(ddpm_loss_kind kind);
int ddpm_loss_parse(const char *name, ddpm_loss_kind *kind);

/* A batch (or micro-batch) of images as the trainer drew it. */
typedef struct {
    const float *out;     /* [B, output values] the network output (h's layout) */
    const float *x0;      /* [B, D] clean images */
    const float *eps;     /* [B, D] the noise */
    const float *x_t;     /* [B, D] q_sample(x0, eps, i) */
    const int *i;         /* [B] step indices */
    const double *weight; /* [B] per-image weights, NULL: every weight 1 */
    int B, B_mean;        /* images here, and in the whole batch (B <= B_mean) */
} ddpm_loss_batch;

/* The objective of the B images of b that are part of a batch of B_mean >= B
 * (a micro-batch) under the output meaning h (predict.h): returns their share
 * of the batch's mean and OVERWRITES d_out[B, output values] with its gradient
 * with respect to out. target [B, D] is scratch.
 * Image b's term, its share of the batch mean times B_mean (mse_b / D, min-SNR
 * weighted, for simple; T L_{t-1} / D for vlb; their lambda-sum for hybrid), is
 * multiplied by weight[b] in the value and the gradient (importance sampling's
 * 1 / (T p_t), timestep.h); weight NULL is the code path of uniform t.
 * term[B], when not NULL, receives each image's unweighted term.
 * learn_sigma: out and d_out hold 2D values per image, the prediction's and
 * v's (predict.h); vlb trains both through the bound with sigma_d^2 of v, and
 * hybrid trains the prediction by the MSE and v by lambda times the bound,
 * whose gradient to the prediction is stopped (Nichol & Dhariwal 2021, 3.1). */
double ddpm_loss(float *d_out, float *target, double *term, const ddpm_loss_batch *b, const ddpm_head *h,
                 const ddpm_loss_config *c);

/* The bound's term of one image at step index i in nats (summed over its D
 * values): L_{t-1} for i > 0, L_0 for i = 0. When d_out is not NULL,
 * d_out += scale * d term / d out. */
double ddpm_vlb_term(float *d_out, double scale, const float *out, const float *x0, const float *x_t, int i,
                     size_t D, ddpm_prediction pred, const ddpm_schedule *s);

/* The same term with learned variances: v[D] the network's variance output
 * (predict.h). d_out += scale * d term / d out when d_out and mean_grad;
 * d_v += scale * d term / d v when d_v is not NULL. For t > 1
 * L_{t-1} = sum_d 0.5 (r_d - 1 - log r_d) + (mu~ - mu_theta)^2 / (2 sigma_d^2),
 * r_d = beta~_t / sigma_d^2; L_0 is the decoder with sigma_d. */
double ddpm_vlb_term_learned(float *d_out, float *d_v, double scale, int mean_grad, const float *out,
                             const float *v, const float *x0, const float *x_t, int i, size_t D, ddpm_prediction pred,
                             const ddpm_schedule *s);

/* log Phi(z), the standard normal CDF, without underflow for any z. */
double ddpm_log_ndtr(double z);

#endif
