/* timestep.h: how the trainer draws each image's timestep.
 *
 *   uniform     t ~ U{1..T} (DDPM Algorithm 1), every image's weight 1.
 *   importance  Nichol & Dhariwal 2021 ("Improved DDPM"), section 3.3:
 *               p_t proportional to sqrt(E[L_t^2]), estimated from the last
 *               DDPM_T_HISTORY (10) values of step t's loss term, and each
 *               image's term weighted by 1 / (T p_t), so that the batch
 *               objective stays an unbiased estimate of sum_t L_t (the same
 *               expectation as with uniform t, a smaller variance when the
 *               history predicts the terms). Until every step holds 10 values
 *               t is drawn uniformly, with weight 1 (the warm-up). As in the
 *               paper's code (improved-diffusion, LossSecondMomentResampler),
 *               p is mixed with a uniform probability of DDPM_T_UNIFORM_MIX
 *               (0.001) in total,
 *                   p_t = (1 - 0.001) w_t / sum_s w_s + 0.001 / T,
 *                   w_t = sqrt(mean of the 10 values^2),
 *               so every p_t >= 0.001 / T and no weight exceeds 1000.
 *
 * It is meant for the bound (--loss vlb), whose terms span orders of magnitude
 * over t (L_0 and the first KL terms dominate), so uniform t gives a very noisy
 * estimate. With --loss hybrid it samples and weights the whole per-image term
 * (L_simple + lambda L_vlb), as the paper's code does: t is one draw per image
 * shared by both parts, and weighting only the vlb part would leave the MSE
 * part averaged over p instead of uniform t, which changes the objective. With
 * --loss simple it is refused (ddpm_t_sampling_check): L_simple is defined by
 * uniform t, and the paper uses importance sampling for L_vlb only.
 *
 * The history is part of the run's state (the trainer owns it; checkpoint.h
 * saves it as two tensors). Step index i (0..T-1, docs/design.md) holds its
 * values oldest first; a new value past 10 drops the oldest. The trainer adds
 * every image's term of the whole batch in batch order g = 0..B-1, after the
 * step's sum over processes, so the history does not depend on --threads,
 * --micro-batch or the process count beyond the terms' own float values. */
#ifndef DDPM_TIMESTEP_H
#define DDPM_TIMESTEP_H

#include "ddpm/loss.h"
#include "ddpm/rng.h"

typedef enum { DDPM_T_UNIFORM = 0, DDPM_T_IMPORTANCE = 1 } ddpm_t_sampling;

#define DDPM_T_HISTORY 10        /* loss values kept per step */
#define DDPM_T_UNIFORM_MIX 0.001 /* total probability spread uniformly over the steps */

/* "uniform" "importance" <-> kind; parse returns -1 on an unknown name. */
const char *ddpm_t_sampling_name(ddpm_t_sampling s);
int ddpm_t_sampling_parse(const char *name, ddpm_t_sampling *s);
/* 0, or DDPM_EINVAL with one line: an unknown kind, or importance with a loss
 * other than vlb and hybrid. */
int ddpm_t_sampling_check(ddpm_t_sampling s, ddpm_loss_kind loss);

/* The last loss values of each step. */
typedef struct {
    int T;
    float *loss; /* [T, DDPM_T_HISTORY]: step i's values at loss[i * 10 + k], oldest first; 0 past count[i] */
    int *count;  /* [T]: values held, 0..DDPM_T_HISTORY */
} ddpm_t_history;

/* An empty history of T steps (1..100000); 0 or DDPM_ENOMEM / DDPM_EINVAL. */
int ddpm_t_history_init(ddpm_t_history *h, int T);
void ddpm_t_history_free(ddpm_t_history *h);
/* Adds value[k] to the history of step index i[k], for k = 0..n-1 in that order. */
void ddpm_t_history_add(ddpm_t_history *h, const int *i, const float *value, int n);
/* 1 when every step holds DDPM_T_HISTORY values. */
int ddpm_t_history_warm(const ddpm_t_history *h);

/* The distribution of t: p[T] and its running sum cdf[T] (cdf[T-1] = 1).
 * Uniform (p = 1/T) during the warm-up, and when every w_t is 0. Returns 1 when
 * p comes from the history (importance weights), 0 when uniform. */
int ddpm_t_probabilities(double *p, double *cdf, const ddpm_t_history *h);

/* One image's step index and weight from r, which is positioned at the image's
 * counter: with warm 0, ddpm_rng_below(T) (the uniform draw, one counter) and
 * weight 1; with warm 1, the i with cdf[i-1] <= u < cdf[i] for u =
 * ddpm_rng_uniform (one counter) and weight 1 / (T p[i]). */
int ddpm_t_draw(double *weight, const double *p, const double *cdf, int T, int warm, ddpm_rng *r);

#endif
