/* sample_solver.c: the run functions of the solver rows of the sampler table
 * (sampler.h, DDPM_SAMPLER_TAKES_SPACING): each adapts a ddpm_sample_job to a
 * solver of solver.h. The model is evaluated at the solver's continuous step
 * indices (ddpm_model_predict, guided as the job says); the schedule is the
 * model's own (schedule.h's continuous functions, through vp.h); the noise of
 * image k at step j is Philox slot j of image k in the layout of
 * ddpm_sample_noise with T steps, and x_T (ddpm_sample) its slot T, so the
 * bytes depend on neither the batch split nor the thread count. */
#include <math.h>
#include <stdlib.h>

#include "ddpm/error.h"
#include "ddpm/sample.h"
#include "ddpm/solver.h"
#include "ddpm/vp.h"

typedef struct {
    ddpm_model *m;
    const ddpm_guide *g;
    int rc; /* the first failure of ddpm_model_predict */
} denoise_ctx;

/* The model's data prediction (and eps when asked) at continuous t. A failure
 * is kept in rc and answered with NaN, which stops the solver (DDPM_ENAN). */
static void denoise(void *opaque, float *x0, float *eps, const float *x_t, const double *t, int B)
{
    denoise_ctx *d = opaque;
    size_t n = (size_t)B * ddpm_model_D(d->m);
    if (!d->rc) {
        ddpm_pred_out o = {.eps = eps, .x0 = x0};
        d->rc = ddpm_model_predict(d->m, &o, x_t, t, B, d->g);
    }
    for (size_t i = 0; d->rc && x0 && i < n; i++)
        x0[i] = NAN;
}

/* A solver reports after every step with the evaluations made so far; the
 * watch sees evaluation counts as its steps (k = evals - 1 of n_evals: a
 * singlestep solver advances k by 2), and t = 0 after the final step. */
static void on_step(void *opaque, int evals_done, int n_evals, double t, const float *x, const float *x0, int B)
{
    const ddpm_sample_watch *w = opaque;
    if (w && w->fn)
        w->fn(w->ctx, evals_done - 1, n_evals, t < 0 ? 0.0 : t, x, x0, B);
}

static int run_solver(const ddpm_sample_job *j, ddpm_solver_run_fn solve)
{
    const ddpm_sampler_config *c = j->c;
    ddpm_model *m = j->model;
    size_t D = ddpm_model_D(m);
    int n_points = ddpm_sampler_points(c->kind, c->steps);
    if (n_points > j->i_start + 1) /* a solver needs distinct points down to t = 0 */
        n_points = j->i_start + 1;
    ddpm_vp_discrete disc;
    int rc = ddpm_vp_discrete_init(&disc, &m->sched);
    if (rc)
        return rc;
    ddpm_vp vp = ddpm_vp_discrete_view(&disc);
    double *t = ddpm_malloc((size_t)n_points, sizeof *t);
    float *scratch = ddpm_malloc((size_t)DDPM_SOLVER_SCRATCH * (size_t)j->B * D, sizeof *scratch);
    rc = t && scratch ? ddpm_solver_spacing(t, n_points, c->spacing, &vp, j->i_start, 0.0) : DDPM_ENOMEM;
    denoise_ctx dc = {m, j->g, 0};
    ddpm_solver_philox noise = {.n_slots = m->sched.T + 1};
    if (j->rng)
        noise.rng = *j->rng;
    ddpm_solver_env env = {.model = denoise,
                           .model_ctx = &dc,
                           .vp = &vp,
                           .clip_x0 = c->clip_x0,
                           .first_image = j->first_image,
                           .noise = j->rng ? ddpm_solver_philox_noise : NULL,
                           .noise_ctx = &noise,
                           .on_step = on_step,
                           .step_ctx = (void *)j->w};
    if (!rc)
        rc = solve(j->x, scratch, j->B, D, t, n_points, &env);
    if (dc.rc) /* the model's own failure, not the NaN that stopped the solver */
        rc = dc.rc;
    free(scratch);
    free(t);
    ddpm_vp_discrete_free(&disc);
    return rc;
}

int ddpm_sampler_run_dpmpp_2m(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_dpmpp_2m); }
int ddpm_sampler_run_dpmpp_3m(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_dpmpp_3m); }
int ddpm_sampler_run_dpmpp_2s(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_dpmpp_2s); }
int ddpm_sampler_run_dpmpp_2m_sde(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_dpmpp_2m_sde); }
int ddpm_sampler_run_unipc(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_unipc2); }
int ddpm_sampler_run_unipc3(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_unipc3); }
int ddpm_sampler_run_heun(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_heun); }
int ddpm_sampler_run_euler_a(const ddpm_sample_job *j) { return run_solver(j, ddpm_solve_euler_ancestral); }
