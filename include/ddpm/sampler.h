/* sampler.h: the table of samplers, one row each.
 *
 * A row gives the sampler's identifier (ddpm_sampler_kind DDPM_SAMPLER_<ID>),
 * its name on the command line and in recipes, a one-line help, what a run of
 * S steps costs in network evaluations (evals_per_step S + evals_extra; a
 * sampler without DDPM_SAMPLER_TAKES_STEPS runs all T steps, one evaluation
 * each), its flags, and its run function ddpm_sampler_run_<id> (sample.h's
 * ddpm_sampler_run_fn). `ddpm sample` (its --sampler and --help), the recipe
 * reader and writer, `ddpm info`, the interpolation and the training previews
 * all read the table; nothing else names a sampler. Adding one is a file with
 * its run function and a row here (docs/design.md, Extending).
 *
 * The names and flags are inline, so that the recipe reader (and its fuzzer)
 * shares them without linking the samplers. */
#ifndef DDPM_SAMPLER_H
#define DDPM_SAMPLER_H

#include <string.h>

/* flags of a row */
enum {
    DDPM_SAMPLER_STOCHASTIC = 1,    /* draws noise at every step whatever its options */
    DDPM_SAMPLER_TAKES_STEPS = 2,   /* --steps S (1..T); else all T steps */
    DDPM_SAMPLER_TAKES_ETA = 4,     /* --eta E in [0, 1]: noise when E > 0 */
    DDPM_SAMPLER_TAKES_VAR = 8,     /* --var: sigma_t^2 beta, beta~ or learned */
    DDPM_SAMPLER_TAKES_SPACING = 16, /* --spacing: where the points fall (a solver of solver.h) */
    DDPM_SAMPLER_SINGLESTEP = 32     /* two evaluations a step: S evaluations are (S + 1) / 2 points */
};

/* X(ID, id, name, help, evals_per_step, evals_extra, flags) */
#define DDPM_SAMPLERS(X)                                                                                            \
    X(DDPM, ddpm, "ddpm", "ancestral sampling (DDPM paper, Algorithm 2), all T steps", 1, 0,                    \
      DDPM_SAMPLER_STOCHASTIC | DDPM_SAMPLER_TAKES_VAR)                                                             \
    X(DDIM, ddim, "ddim", "DDIM (Song et al. 2021) on S evenly spaced steps", 1, 0,             \
      DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_ETA)                                                            \
    X(DPMPP_2M, dpmpp_2m, "dpm++2m", "DPM-Solver++(2M), second-order multistep ODE solver", 1, 0,                   \
      DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING)                                                        \
    X(DPMPP_3M, dpmpp_3m, "dpm++3m", "DPM-Solver++(3M), third-order multistep ODE solver", 1, 0,                    \
      DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING)                                                        \
    X(DPMPP_2S, dpmpp_2s, "dpm++2s", "DPM-Solver++(2S), second-order singlestep ODE solver", 1, 0,                  \
      DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING | DDPM_SAMPLER_SINGLESTEP)                              \
    X(DPMPP_2M_SDE, dpmpp_2m_sde, "dpm++2m-sde", "SDE-DPM-Solver++(2M), stochastic multistep solver", 1, 0,         \
      DDPM_SAMPLER_STOCHASTIC | DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING)                              \
    X(UNIPC, unipc, "unipc", "UniPC-bh2 order 2, predictor-corrector ODE solver", 1, 0,                             \
      DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING)                                                        \
    X(UNIPC3, unipc3, "unipc3", "UniPC-bh2 order 3, predictor-corrector ODE solver", 1, 0,                          \
      DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING)                                                        \
    X(HEUN, heun, "heun", "Heun's second-order ODE solver (Karras et al. 2022, no churn)", 1, 0,                    \
      DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING | DDPM_SAMPLER_SINGLESTEP)                              \
    X(EULER_A, euler_a, "euler-a", "Euler ancestral (k-diffusion), stochastic", 1, 0,                               \
      DDPM_SAMPLER_STOCHASTIC | DDPM_SAMPLER_TAKES_STEPS | DDPM_SAMPLER_TAKES_SPACING)

#define DDPM_SAMPLER_ENUM_(ID, id, name, help, per_step, extra, flags) DDPM_SAMPLER_##ID,
typedef enum { DDPM_SAMPLERS(DDPM_SAMPLER_ENUM_) DDPM_N_SAMPLERS } ddpm_sampler_kind;
#undef DDPM_SAMPLER_ENUM_

typedef struct {
    const char *name;
    const char *help;
    int evals_per_step, evals_extra;
    int flags;
} ddpm_sampler_info;

/* The row of kind, or NULL for a kind outside the table. */
static inline const ddpm_sampler_info *ddpm_sampler_get(ddpm_sampler_kind kind)
{
#define DDPM_SAMPLER_INFO_(ID, id, name, help, per_step, extra, flags) {name, help, per_step, extra, flags},
    static const ddpm_sampler_info rows[DDPM_N_SAMPLERS] = {DDPM_SAMPLERS(DDPM_SAMPLER_INFO_)};
#undef DDPM_SAMPLER_INFO_
    return (unsigned)kind < DDPM_N_SAMPLERS ? &rows[kind] : NULL;
}

static inline const char *ddpm_sampler_name(ddpm_sampler_kind kind)
{
    const ddpm_sampler_info *r = ddpm_sampler_get(kind);
    return r ? r->name : "?";
}

/* name -> kind; -1 on an unknown name. */
static inline int ddpm_sampler_parse(const char *name, ddpm_sampler_kind *kind)
{
    for (int k = 0; k < DDPM_N_SAMPLERS; k++)
        if (!strcmp(name, ddpm_sampler_get((ddpm_sampler_kind)k)->name)) {
            *kind = (ddpm_sampler_kind)k;
            return 0;
        }
    return -1;
}

static inline int ddpm_sampler_has(ddpm_sampler_kind kind, int flag)
{
    const ddpm_sampler_info *r = ddpm_sampler_get(kind);
    return r && (r->flags & flag);
}

/* A row that draws no noise with this eta (DDIM at eta 0, every solver without
 * DDPM_SAMPLER_STOCHASTIC) and takes --steps: what an interpolation decodes with. */
static inline int ddpm_sampler_deterministic(ddpm_sampler_kind kind, float eta)
{
    return ddpm_sampler_has(kind, DDPM_SAMPLER_TAKES_STEPS) && !ddpm_sampler_has(kind, DDPM_SAMPLER_STOCHASTIC) &&
           (!ddpm_sampler_has(kind, DDPM_SAMPLER_TAKES_ETA) || eta == 0);
}

/* Steps the sampler takes from step index i_start down to x_0 (S, or all
 * i_start + 1), and the network evaluations they cost. */
static inline int ddpm_sampler_steps_from(ddpm_sampler_kind kind, int steps, int i_start)
{
    return ddpm_sampler_has(kind, DDPM_SAMPLER_TAKES_STEPS) ? steps : i_start + 1;
}
/* A singlestep solver (Heun, DPM-Solver++(2S)) evaluates twice on every step
 * but the final one: --steps S gives (S + 1) / 2 points and 2 points - 1
 * evaluations (S, or S - 1 for an even S). */
static inline long ddpm_sampler_evals(ddpm_sampler_kind kind, int steps, int T)
{
    const ddpm_sampler_info *r = ddpm_sampler_get(kind);
    if (!r)
        return 0;
    if (r->flags & DDPM_SAMPLER_SINGLESTEP)
        steps = 2 * ((steps + 1) / 2) - 1;
    return r->flags & DDPM_SAMPLER_TAKES_STEPS ? (long)r->evals_per_step * steps + r->evals_extra : T;
}
/* The time points of a solver row (TAKES_SPACING) given S evaluations. */
static inline int ddpm_sampler_points(ddpm_sampler_kind kind, int steps)
{
    int n = ddpm_sampler_has(kind, DDPM_SAMPLER_SINGLESTEP) ? (steps + 1) / 2 : steps;
    return n < 1 ? 1 : n;
}

/* Where a solver's points fall (solver.h, ddpm_solver_spacing): uniform in the
 * step index t, in the half log-SNR lambda, or Karras et al.'s rho = 7 in
 * sigma / alpha. */
typedef enum { DDPM_SPACING_TIME = 0, DDPM_SPACING_LOGSNR = 1, DDPM_SPACING_KARRAS = 2 } ddpm_spacing;
#define DDPM_N_SPACINGS 3
/* "time" "logsnr" "karras" <-> kind; parse returns -1 on an unknown name. */
static inline const char *ddpm_spacing_name(ddpm_spacing kind)
{
    static const char *const names[DDPM_N_SPACINGS] = {"time", "logsnr", "karras"};
    return (unsigned)kind < DDPM_N_SPACINGS ? names[kind] : "?";
}
static inline int ddpm_spacing_parse(const char *name, ddpm_spacing *kind)
{
    for (int k = 0; k < DDPM_N_SPACINGS; k++)
        if (!strcmp(name, ddpm_spacing_name((ddpm_spacing)k))) {
            *kind = (ddpm_spacing)k;
            return 0;
        }
    return -1;
}

#endif
