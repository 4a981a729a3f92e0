/* solver.h: fast samplers that solve the probability-flow ODE (or the reverse
 * SDE) of a VP diffusion in continuous time: DPM-Solver++ (2M, 3M, 2M-SDE; Lu
 * et al. 2022), UniPC-bh2 (Zhao et al. 2023), Heun's method and Euler
 * ancestral in sigma = sigma_t / alpha_t (Karras et al. 2022; k-diffusion), and
 * the three step spacings they run on. The math, and how steps map to network
 * evaluations: docs/samplers.md.
 *
 * Every solver works over an abstract data-prediction model (ddpm_denoise_fn:
 * x0 and eps at continuous times t, index units 0..T-1) and an abstract
 * continuous schedule (vp.h), so its arithmetic is tested on closed forms and
 * the same code drives the U-Net.
 *
 * The time grid. A solver takes n_points decreasing times t[0] > ... >
 * t[n_points-1] (ddpm_solver_spacing: from T-1 down to 0) and evaluates the
 * model at each of them; after the last one it takes a final step to sigma = 0,
 * where every solver's update reduces to the data prediction there: the result
 * is the model's x0 at (x_{t[n_points-1]}, t[n_points-1]), as DDIM's last step
 * to abar = 1 and k-diffusion's last step to sigma = 0. So n_points is the
 * number of network evaluations, except for the singlestep solvers (Heun,
 * DPM-Solver++(2S)), which evaluate twice on every step but the final one:
 * 2 n_points - 1 (ddpm_solver_n_evals).
 *
 * The state x [B, D] holds x_t = alpha_t x_0 + sigma_t eps in the VP units the
 * network takes (x_T ~ N(0, I) at the start); it is overwritten by the sample. */
#ifndef DDPM_SOLVER_H
#define DDPM_SOLVER_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/rng.h"
#include "ddpm/sampler.h"
#include "ddpm/vp.h"

/* The model at continuous times t[b] (index units) for B images of D values:
 * x0 receives the predicted clean images, eps the predicted noise; either may
 * be NULL, and the solvers here ask only for x0. */
typedef void (*ddpm_denoise_fn)(void *ctx, float *x0, float *eps, const float *x_t, const double *t, int B);

/* Standard normal noise z [D] for image `image` (its index in the whole run) at
 * slot k. A stochastic solver draws slot k on its step k (k = 0 .. n_points-2),
 * so each image's noise depends only on (noise source, image, step), never on
 * the batch split. */
typedef void (*ddpm_noise_fn)(void *ctx, float *z, int image, int k, size_t D);

/* Called after every solver step with the evaluations made so far (of n_evals),
 * the time reached (-1 after the final step to sigma = 0), the new state x and
 * the latest data prediction x0 (both [B, D]). */
typedef void (*ddpm_solver_step_fn)(void *ctx, int evals_done, int n_evals, double t, const float *x,
                                    const float *x0, int B);

/* What a solver run needs besides the state and the time grid. */
typedef struct {
    ddpm_denoise_fn model;
    void *model_ctx;
    const ddpm_vp *vp;
    int clip_x0;         /* clip every data prediction to [-1, 1] before it is used */
    int first_image;     /* the index of x's first image in the whole run */
    ddpm_noise_fn noise; /* stochastic solvers only (NULL for the others) */
    void *noise_ctx;
    ddpm_solver_step_fn on_step; /* may be NULL */
    void *step_ctx;
} ddpm_solver_env;

/* Every solver's run function: x [B, D] holds x at t[0] and receives the
 * sample; scratch holds DDPM_SOLVER_SCRATCH * B * D floats; t has n_points >= 1
 * strictly decreasing times. Returns 0, or a negative DDPM_E* with a message
 * (bad arguments, an allocation, a non-finite model output). */
typedef int (*ddpm_solver_run_fn)(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                                  const ddpm_solver_env *env);
enum { DDPM_SOLVER_SCRATCH = 5 };

/* DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction;
 * the first step first order. */
int ddpm_solve_dpmpp_2m(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                        const ddpm_solver_env *env);
/* DPM-Solver++(3M): the third-order multistep update; first order on the first
 * step, second order on the second, and second order on the step to the last
 * point when n_points < 15 (the reference's lower_order_final). */
int ddpm_solve_dpmpp_3m(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                        const ddpm_solver_env *env);
/* DPM-Solver++(2S) (Algorithm 1, r = 1/2): singlestep, one extra evaluation at
 * the midpoint in lambda of every step but the final one: 2 n_points - 1
 * evaluations, as Heun. */
int ddpm_solve_dpmpp_2s(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                        const ddpm_solver_env *env);
/* SDE-DPM-Solver++(2M), midpoint form (eta 1): the 2M update of the reverse SDE
 * with fresh noise z on every step; stochastic (needs env->noise). */
int ddpm_solve_dpmpp_2m_sde(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                            const ddpm_solver_env *env);
/* UniPC with B(h) = expm1(-h) (bh2), data prediction: the UniP predictor of
 * order 2 (3) and the UniC corrector after every step but the final one, which
 * reuses the model's output at the predicted point: one evaluation per point. */
int ddpm_solve_unipc2(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                      const ddpm_solver_env *env);
int ddpm_solve_unipc3(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                      const ddpm_solver_env *env);
/* Heun's second-order method (Karras et al. 2022, Algorithm 1 without churn) on
 * dx~/dsigma~ = (x~ - x0) / sigma~, x~ = x / alpha, sigma~ = sigma / alpha: two
 * evaluations per step, one (Euler) on the final step to sigma~ = 0. */
int ddpm_solve_heun(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                    const ddpm_solver_env *env);
/* Euler ancestral (k-diffusion's sample_euler_ancestral, eta 1) in x~, sigma~;
 * stochastic (needs env->noise). */
int ddpm_solve_euler_ancestral(float *x, float *scratch, int B, size_t D, const double *t, int n_points,
                               const ddpm_solver_env *env);

/* ------------------------------------------------------------ the table */

typedef struct {
    const char *name;    /* "dpm++2m", ... as --sampler takes it */
    const char *help;    /* one line */
    int stochastic;      /* draws noise on its steps (env->noise) */
    int evals_per_point; /* 1, or 2 for Heun and 2S: 2 n_points - 1 evaluations */
    ddpm_solver_run_fn run;
} ddpm_solver_info;

extern const ddpm_solver_info ddpm_solvers[];
extern const int ddpm_n_solvers;
/* The row of a name, or NULL. */
const ddpm_solver_info *ddpm_solver_find(const char *name);
/* Network evaluations of a run on n_points times: n_points, or 2 n_points - 1. */
int ddpm_solver_n_evals(const ddpm_solver_info *s, int n_points);
/* The number of time points whose run costs at most n_evals evaluations (and
 * exactly n_evals when it can): n_evals, or (n_evals + 1) / 2 for Heun and
 * 2S; >= 1. */
int ddpm_solver_n_points(const ddpm_solver_info *s, int n_evals);

/* ---------------------------------------------------------- step spacing */

/* ddpm_spacing, its names and ddpm_spacing_parse are in sampler.h. */
/* n_points decreasing times from t_start to t_end (n_points = 1: {t_start}),
 * k = 0 .. n-1, u = k / (n - 1):
 *   time    t_k = t_start + u (t_end - t_start)
 *   logsnr  lambda_k = lambda(t_start) + u (lambda(t_end) - lambda(t_start)), t_k = t(lambda_k)
 *   karras  s_k = (s_max^(1/7) + u (s_min^(1/7) - s_max^(1/7)))^7 in sigma~ = sigma/alpha
 *           = exp(-lambda), s_max = sigma~(t_start), s_min = sigma~(t_end); t_k = t(-log s_k)
 * The ends are set to t_start and t_end exactly. Returns 0 or DDPM_EINVAL
 * (n_points < 1, t_start <= t_end with n_points > 1, an unknown spacing). */
int ddpm_solver_spacing(double *t, int n_points, ddpm_spacing spacing, const ddpm_vp *vp, double t_start,
                        double t_end);

/* ------------------------------------------------------ the noise source */

/* Philox noise: image g's slot k is the normal fill of counter
 * rng.counter + (g n_slots + k) ceil(D/4) (stream and seed of rng). With
 * n_slots = n_points + 1, slots 0 .. n_points-2 serve the steps and slot
 * n_points (ddpm_solver_initial_noise) the starting x_T, so every number an
 * image uses is its own. */
typedef struct {
    ddpm_rng rng;
    int n_slots;
} ddpm_solver_philox;
void ddpm_solver_philox_noise(void *ctx, float *z, int image, int k, size_t D);
/* x_T [D] of image `image`: its slot n_slots - 1. */
void ddpm_solver_initial_noise(float *x_T, int image, size_t D, const ddpm_solver_philox *p);

#endif
