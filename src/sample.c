#include "ddpm/sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/recipe.h"

void ddpm_sampler_config_default(ddpm_sampler_config *c)
{
    c->kind = DDPM_SAMPLER_DDPM;
    c->steps = 100;
    c->eta = 1.0f;
    c->var = DDPM_VAR_BETA;
    c->clip_x0 = 1;
    c->spacing = DDPM_SPACING_LOGSNR;
}

static inline float clampf(float v) { return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; }

void ddpm_ddpm_step(float *x_prev, float *x0_out, const float *x_t, const float *x0, const float *mean,
                    const double *logvar, const float *z, int i, size_t D, const ddpm_schedule *s, ddpm_var_kind var,
                    int clip_x0)
{
    int learned = var == DDPM_VAR_LEARNED && logvar;
    double sigma = i == 0 || learned ? 0.0 : sqrt(var == DDPM_VAR_BETA ? s->beta[i] : s->posterior_var[i]);
    float sig = (float)sigma;
    float cx0 = (float)s->posterior_coef_x0[i], cxt = (float)s->posterior_coef_xt[i];
    for (size_t d = 0; d < D; d++) {
        float x0d = x0[d], m;
        if (clip_x0) {
            x0d = clampf(x0d);
            m = cx0 * x0d + cxt * x_t[d]; /* mu~(x0, x_t), eq. 7 */
        } else {
            m = mean[d]; /* Algorithm 2, line 4, for eps */
        }
        if (x0_out)
            x0_out[d] = x0d;
        if (learned && i > 0)
            sig = (float)exp(0.5 * logvar[d]);
        x_prev[d] = i == 0 ? m : m + sig * z[d];
    }
}

void ddpm_ddim_step(float *x_prev, float *x0_out, const float *x_t, const float *x0, const float *eps,
                    const float *z, int i, int i_prev, float eta, size_t D, const ddpm_schedule *s, int clip_x0)
{
    double abar = s->abar[i], abar_prev = i_prev >= 0 ? s->abar[i_prev] : 1.0;
    double sigma = eta * sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev));
    double dir = 1.0 - abar_prev - sigma * sigma;
    float c_x0 = (float)sqrt(abar_prev), c_eps = (float)sqrt(dir > 0 ? dir : 0), sig = (float)sigma;
    float ra = (float)sqrt(abar), rb = (float)(1.0 / sqrt(1.0 - abar));
    for (size_t d = 0; d < D; d++) {
        float x0d = x0[d], e = eps[d];
        if (clip_x0) {
            float c = clampf(x0d);
            if (c != x0d) /* keep x0 and eps consistent: eps = (x_t - sqrt(abar) x0)/sqrt(1-abar) */
                e = (x_t[d] - ra * c) * rb;
            x0d = c;
        }
        if (x0_out)
            x0_out[d] = x0d;
        float v = c_x0 * x0d + c_eps * e;
        x_prev[d] = sig > 0 ? v + sig * z[d] : v;
    }
}

int ddpm_ddim_timesteps(int *out, int S, int T)
{
    if (S < 1 || S > T)
        return ddpm_error(DDPM_EINVAL, "DDIM steps must be in 1..%d (the model's timesteps), got %d", T, S);
    return ddpm_ddim_timesteps_from(out, S, T - 1);
}

int ddpm_ddim_timesteps_from(int *out, int S, int i_start)
{
    if (S < 1 || S > i_start + 1)
        return ddpm_error(DDPM_EINVAL, "DDIM steps from step index %d must be in 1..%d, got %d", i_start,
                          i_start + 1, S);
    if (S == 1) {
        out[0] = i_start;
        return 1;
    }
    for (int k = 0; k < S; k++)
        out[k] = (int)floor((double)k * i_start / (S - 1) + 0.5);
    return S;
}

int ddpm_sampler_n_steps(const ddpm_sampler_config *c, const ddpm_schedule *s)
{
    return ddpm_sampler_steps_from(c->kind, c->steps, s->T - 1);
}

int ddpm_sampler_noise_steps(const ddpm_sampler_config *c, const ddpm_schedule *s)
{
    return ddpm_sampler_has(c->kind, DDPM_SAMPLER_TAKES_SPACING) ? s->T : ddpm_sampler_n_steps(c, s);
}

void ddpm_sample_noise(float *out, size_t D, const ddpm_rng *rng, long image, int k, int n_steps)
{
    ddpm_rng r = *rng;
    r.counter += ((uint64_t)image * (uint64_t)(n_steps + 1) + (uint64_t)k) * ((D + 3) / 4);
    ddpm_rng_normal_fill(&r, out, D);
}

void ddpm_sample_initial_noise(float *x_T, size_t D, int image, const ddpm_schedule *s,
                               const ddpm_sampler_config *c, const ddpm_rng *rng)
{
    int n = ddpm_sampler_noise_steps(c, s);
    ddpm_sample_noise(x_T, D, rng, image, n, n);
}

int ddpm_sample(ddpm_model *m, const ddpm_sampler_config *c, const ddpm_guide *g, float *x, int B, int first_image,
                const ddpm_rng *rng, const ddpm_sample_watch *w)
{
    size_t D = ddpm_model_D(m);
    for (int b = 0; b < B; b++)
        ddpm_sample_initial_noise(x + (size_t)b * D, D, first_image + b, &m->sched, c, rng);
    return ddpm_sample_from(m, c, g, x, B, first_image, m->sched.T - 1, rng, w);
}

int ddpm_sample_from(ddpm_model *m, const ddpm_sampler_config *c, const ddpm_guide *g, float *x, int B,
                     int first_image, int i_start, const ddpm_rng *rng, const ddpm_sample_watch *w)
{
    static const ddpm_sampler_run_fn runs[DDPM_N_SAMPLERS] = {
#define DDPM_SAMPLER_RUN_(ID, id, name, help, per_step, extra, flags) ddpm_sampler_run_##id,
        DDPM_SAMPLERS(DDPM_SAMPLER_RUN_)
#undef DDPM_SAMPLER_RUN_
    };
    const ddpm_schedule *s = &m->sched;
    const ddpm_sampler_info *row = ddpm_sampler_get(c->kind);
    if (!row)
        return ddpm_error(DDPM_EINVAL, "no sampler %d", (int)c->kind);
    if (i_start < 0 || i_start >= s->T)
        return ddpm_error(DDPM_EINVAL, "the start step index must be in 0..%d, got %d", s->T - 1, i_start);
    int takes_steps = row->flags & DDPM_SAMPLER_TAKES_STEPS, takes_eta = row->flags & DDPM_SAMPLER_TAKES_ETA;
    if (takes_steps && (c->steps < 1 || c->steps > i_start + 1))
        return ddpm_error(DDPM_EINVAL, "%s steps must be in 1..%d (%s), got %d", row->name, i_start + 1,
                          i_start == s->T - 1 ? "the model's timesteps" : "the start step", c->steps);
    if (takes_eta && !(c->eta >= 0 && c->eta <= 1))
        return ddpm_error(DDPM_EINVAL, "eta must be in [0, 1], got %g", c->eta);
    if ((row->flags & DDPM_SAMPLER_STOCHASTIC || (takes_eta && c->eta > 0)) && !rng)
        return ddpm_error(DDPM_EINVAL, "a stochastic sampler needs a random stream");
    if (row->flags & DDPM_SAMPLER_TAKES_SPACING && (unsigned)c->spacing >= DDPM_N_SPACINGS)
        return ddpm_error(DDPM_EINVAL, "no step spacing %d", (int)c->spacing);
    if (row->flags & DDPM_SAMPLER_TAKES_SPACING && m->cfg.prediction == DDPM_PRED_MU)
        return ddpm_error(DDPM_EINVAL,
                          "--sampler %s evaluates the model between trained steps, where a mu-prediction "
                          "model's output is not defined: use ddim or ddpm",
                          row->name);
    if ((unsigned)c->var >= DDPM_N_VARS || (c->var == DDPM_VAR_LEARNED && !m->cfg.learn_sigma))
        return ddpm_error(DDPM_EINVAL, "the variance '%s' needs a model with learned variances",
                          ddpm_var_name(c->var));
    ddpm_sample_job job = {m, c, g, x, B, first_image, i_start, rng, w};
    return runs[c->kind](&job);
}

/* The buffers of DDPM and DDIM: for B images, x0, z, the next x, and what each
 * asks of the model (mean, logvar or eps). */
typedef struct {
    float *x0, *z, *xn, *mean, *eps;
    double *logvar, *t;
} step_buffers;

static void free_buffers(step_buffers *b)
{
    free(b->x0);
    free(b->z);
    free(b->xn);
    free(b->mean);
    free(b->eps);
    free(b->logvar);
    free(b->t);
}

static int alloc_buffers(step_buffers *b, int B, size_t D, int mean, int logvar, int eps)
{
    size_t BD = (size_t)B * D;
    memset(b, 0, sizeof *b);
    b->x0 = ddpm_malloc(BD, sizeof(float));
    b->z = ddpm_malloc(BD, sizeof(float));
    b->xn = ddpm_malloc(BD, sizeof(float));
    b->mean = mean ? ddpm_malloc(BD, sizeof(float)) : NULL;
    b->eps = eps ? ddpm_malloc(BD, sizeof(float)) : NULL;
    b->logvar = logvar ? ddpm_malloc(BD, sizeof(double)) : NULL;
    b->t = ddpm_malloc((size_t)B, sizeof(double));
    if (!b->x0 || !b->z || !b->xn || (mean && !b->mean) || (eps && !b->eps) || (logvar && !b->logvar) || !b->t) {
        free_buffers(b);
        return DDPM_ENOMEM;
    }
    return DDPM_OK;
}

/* The end of step k: x = the next x, then the callback. */
static void finish_step(const ddpm_sample_job *j, step_buffers *b, int k, int n, int i)
{
    memcpy(j->x, b->xn, (size_t)j->B * ddpm_model_D(j->model) * sizeof(float));
    if (j->w && j->w->fn)
        j->w->fn(j->w->ctx, k, n, i, j->x, b->x0, j->B);
}

int ddpm_sampler_run_ddpm(const ddpm_sample_job *j)
{
    const ddpm_sampler_config *c = j->c;
    ddpm_model *m = j->model;
    const ddpm_schedule *s = &m->sched;
    size_t D = ddpm_model_D(m);
    int n = j->i_start + 1, learned = c->var == DDPM_VAR_LEARNED;
    step_buffers b;
    int rc = alloc_buffers(&b, j->B, D, !c->clip_x0, learned, 0);
    for (int k = 0; !rc && k < n; k++) {
        int i = n - 1 - k;
        for (int q = 0; q < j->B; q++)
            b.t[q] = i;
        ddpm_pred_out o = {.x0 = b.x0, .mean = b.mean, .logvar = b.logvar};
        rc = ddpm_model_predict(m, &o, j->x, b.t, j->B, j->g);
        for (int q = 0; !rc && q < j->B; q++) {
            size_t at = (size_t)q * D;
            if (i > 0)
                ddpm_sample_noise(b.z + at, D, j->rng, j->first_image + q, k, n);
            ddpm_ddpm_step(b.xn + at, b.x0 + at, j->x + at, b.x0 + at, b.mean ? b.mean + at : NULL,
                           b.logvar ? b.logvar + at : NULL, b.z + at, i, D, s, c->var, c->clip_x0);
        }
        if (!rc)
            finish_step(j, &b, k, n, i);
    }
    free_buffers(&b);
    return rc;
}

int ddpm_sampler_run_ddim(const ddpm_sample_job *j)
{
    const ddpm_sampler_config *c = j->c;
    ddpm_model *m = j->model;
    const ddpm_schedule *s = &m->sched;
    size_t D = ddpm_model_D(m);
    int n = c->steps;
    int *seq = ddpm_malloc((size_t)n, sizeof *seq);
    step_buffers b;
    int rc = seq ? alloc_buffers(&b, j->B, D, 0, 0, 1) : DDPM_ENOMEM;
    if (rc) {
        free(seq);
        return rc;
    }
    ddpm_ddim_timesteps_from(seq, n, j->i_start);
    for (int k = 0; !rc && k < n; k++) {
        int idx = n - 1 - k, i = seq[idx], i_prev = idx > 0 ? seq[idx - 1] : -1;
        for (int q = 0; q < j->B; q++)
            b.t[q] = i;
        ddpm_pred_out o = {.eps = b.eps, .x0 = b.x0};
        rc = ddpm_model_predict(m, &o, j->x, b.t, j->B, j->g);
        int need_z = c->eta > 0 && i_prev >= 0;
        for (int q = 0; !rc && q < j->B; q++) {
            size_t at = (size_t)q * D;
            if (need_z)
                ddpm_sample_noise(b.z + at, D, j->rng, j->first_image + q, k, n);
            ddpm_ddim_step(b.xn + at, b.x0 + at, j->x + at, b.x0 + at, b.eps + at, b.z + at, i, i_prev, c->eta, D,
                           s, c->clip_x0);
        }
        if (!rc)
            finish_step(j, &b, k, n, i);
    }
    free(seq);
    free_buffers(&b);
    return rc;
}

/* ---------------------------------------------------------------- to files */

void ddpm_sample_files_config_default(ddpm_sample_files_config *c)
{
    memset(c, 0, sizeof *c);
    c->n = 64;
    c->batch = 64;
    ddpm_sampler_config_default(&c->sampler);
    /* SDE-DPM-Solver++(2M) at 20 network evaluations: on the 20-minute
       Fashion-MNIST model it beat DDIM at 100 steps with eta 1 on the domain FID
       (docs/samplers.md, "Measured on a Fashion-MNIST model") */
    c->sampler.kind = DDPM_SAMPLER_DPMPP_2M_SDE;
    c->sampler.steps = 20;
    c->grid_path = "samples.png";
    c->pad = 2;
    c->pad_value = 255;
    c->trajectory_k = 10;
    c->class_index = DDPM_NO_CLASS;
    c->guidance = 1;
}

typedef struct {
    ddpm_sample_progress p;
    ddpm_sample_progress_fn fn;
    void *fn_ctx;
    float *traj; /* [rows, K, D] */
    int traj_rows, K;
    int last_k; /* the previous call's step (-1 before the first) */
    size_t D;
} files_step_ctx;

/* Keeps the predicted x0 at the trajectory's columns and reports progress. */
static void files_on_step(void *opaque, int k, int n_steps, double t, const float *x, const float *x0, int B)
{
    (void)t;
    (void)x;
    files_step_ctx *f = opaque;
    int first = f->p.first;
    /* k grows within a batch (by 1, or by 2 on a singlestep solver's steps): a
       column is taken at the first step at or after its position */
    int prev = k <= f->last_k ? -1 : f->last_k;
    f->last_k = k;
    for (int col = 0; f->traj && first < f->traj_rows && col < f->K; col++) {
        int at = f->K == 1 ? n_steps - 1 : (int)floor((double)col * (n_steps - 1) / (f->K - 1) + 0.5);
        if (at > k || at <= prev)
            continue;
        for (int b = 0; b < B && first + b < f->traj_rows; b++)
            memcpy(f->traj + ((size_t)(first + b) * f->K + col) * f->D, x0 + (size_t)b * f->D,
                   f->D * sizeof(float));
    }
    if (f->fn) {
        f->p.step = k + 1;
        f->p.n_steps = n_steps;
        f->fn(f->fn_ctx, &f->p);
    }
}

/* The PNG text of one output file, or 0 entries when there is no recipe. */
typedef struct {
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage storage;
    ddpm_recipe recipe;
    int n, index_slot;
} file_text;

/* class_index: the class of the file's images (DDPM_NO_CLASS: none, or the
 * rows by class of a grid-by-class grid or trajectory, when c->grid_by_class). */
static void make_file_text(file_text *t, const ddpm_sample_files_config *c, const char *const *class_names,
                           ddpm_recipe_kind kind, int first, int count, int nrow, int pad, int pad_value,
                           int class_index)
{
    t->n = 0;
    t->index_slot = -1;
    if (!c->recipe)
        return;
    t->recipe = *c->recipe;
    ddpm_recipe *r = &t->recipe;
    r->sampler = c->sampler;
    r->seed = c->seed;
    r->kind = kind;
    r->first_index = first;
    r->count = count;
    r->nrow = nrow;
    r->pad = pad;
    r->pad_value = pad_value;
    r->class_index = class_index;
    r->class_name[0] = '\0';
    r->grid_by_class = class_index == DDPM_NO_CLASS && c->grid_by_class ? c->n : 0;
    r->guidance = class_index != DDPM_NO_CLASS || r->grid_by_class ? c->guidance : 1;
    if (class_index != DDPM_NO_CLASS) {
        if (class_names)
            snprintf(r->class_name, sizeof r->class_name, "%s", class_names[class_index]);
        else
            snprintf(r->class_name, sizeof r->class_name, "%d", class_index);
    }
    t->n = ddpm_recipe_to_text(r, t->text, &t->storage, &t->index_slot);
}

int ddpm_sample_files(ddpm_model *m, const ddpm_sample_files_config *c, ddpm_sample_progress_fn progress,
                      void *progress_ctx)
{
    if (c->n < 1 || c->batch < 1)
        return ddpm_error(DDPM_EINVAL, "sampling needs n >= 1 and batch >= 1, got n %d, batch %d", c->n,
                          c->batch);
    if (c->trajectory_path && c->trajectory_k < 1)
        return ddpm_error(DDPM_EINVAL, "%s: trajectory_k must be >= 1", c->trajectory_path);
    int n_classes = m->n_classes;
    if (n_classes == 0 && (c->grid_by_class || c->class_index != DDPM_NO_CLASS))
        return ddpm_error(DDPM_EINVAL, "the model is not class-conditional: it has no classes to sample");
    if (c->class_index < DDPM_NO_CLASS || (n_classes > 0 && c->class_index >= n_classes))
        return ddpm_error(DDPM_EINVAL, "class %d is not in 0..%d", c->class_index, n_classes - 1);
    if (!(c->guidance >= 0 && c->guidance <= 1000))
        return ddpm_error(DDPM_EINVAL, "guidance must be in [0, 1000], got %g", c->guidance);
    if (c->grid_by_class && (long)c->n * n_classes > 1000000)
        return ddpm_error(DDPM_EINVAL, "%d images for each of %d classes is too many", c->n, n_classes);
    if (c->first_index < 0 || c->first_index > 999999999 - c->n * (c->grid_by_class ? n_classes : 1))
        return ddpm_error(DDPM_EINVAL, "sampling: first index %d is out of range", c->first_index);
    if (c->image_path && c->n != 1)
        return ddpm_error(DDPM_EINVAL, "%s: one image alone needs n 1, got %d", c->image_path, c->n);
    int per_class = c->n, n = c->grid_by_class ? c->n * n_classes : c->n, B = c->batch < n ? c->batch : n;
    int C = m->cfg.in_channels, S = m->cfg.image_size, rc = DDPM_OK;
    size_t D = ddpm_model_D(m);
    files_step_ctx f = {.p = {.n = n}, .fn = progress, .fn_ctx = progress_ctx, .K = c->trajectory_k, .last_k = -1, .D = D};
    float *x = ddpm_malloc((size_t)n * D, sizeof(float));
    if (c->trajectory_path) {
        f.traj_rows = n < DDPM_TRAJECTORY_MAX_ROWS ? n : DDPM_TRAJECTORY_MAX_ROWS;
        f.traj = ddpm_calloc((size_t)f.traj_rows * f.K * D, sizeof(float));
    }
    /* labels of every image (conditional sampling) */
    int conditional = n_classes > 0 && (c->grid_by_class || c->class_index != DDPM_NO_CLASS);
    int *labels = conditional ? ddpm_malloc((size_t)n, sizeof *labels) : NULL;
    if (!x || (c->trajectory_path && !f.traj) || (conditional && !labels))
        rc = DDPM_ENOMEM;
    for (int k = 0; labels && k < n; k++)
        labels[k] = c->grid_by_class ? k / per_class : c->class_index;
    ddpm_rng rng;
    ddpm_rng_init(&rng, c->seed, DDPM_STREAM_SAMPLE);
    ddpm_sample_watch watch = {files_on_step, &f};
    for (int first = 0; !rc && first < n; first += B) {
        f.p.first = first;
        f.p.B = n - first < B ? n - first : B;
        ddpm_guide g = {labels ? labels + first : NULL, c->guidance};
        rc = ddpm_sample(m, &c->sampler, &g, x + (size_t)first * D, f.p.B, c->first_index + first, &rng, &watch);
    }
    const char *const *names = (const char *const *)m->class_names;
    file_text *t = rc ? NULL : ddpm_malloc(1, sizeof *t);
    if (!rc && !t)
        rc = DDPM_ENOMEM;
    int nrow = c->grid_by_class ? per_class : c->nrow ? c->nrow : (int)ceil(sqrt((double)n)), first = c->first_index;
    /* the class of every image, when they share one */
    int one_class = conditional && !c->grid_by_class ? c->class_index : DDPM_NO_CLASS;
    if (!rc && c->grid_path) {
        make_file_text(t, c, names, DDPM_RECIPE_GRID, first, n, nrow, c->pad, c->pad_value, one_class);
        rc = ddpm_image_save_grid_text(c->grid_path, x, n, C, S, nrow, c->pad, c->pad_value, t->text, t->n);
    }
    /* one image: as a grid of one without padding (the same pixels); with rows
       by class, each class's images carry that class in their recipe */
    int blocks = c->grid_by_class ? n_classes : 1, block = n / blocks;
    for (int k = 0; !rc && c->each_dir && k < blocks; k++) {
        make_file_text(t, c, names, DDPM_RECIPE_IMAGE, first, 1, 1, 0, 0, c->grid_by_class ? k : one_class);
        rc = ddpm_image_save_part_text(c->each_dir, x + (size_t)k * block * D, block, C, S, first + k * block,
                                       first + n - 1, t->text, t->n, t->index_slot);
    }
    if (!rc && c->image_path) {
        make_file_text(t, c, names, DDPM_RECIPE_IMAGE, first, 1, 1, 0, 0, c->grid_by_class ? 0 : one_class);
        rc = ddpm_image_save_grid_text(c->image_path, x, 1, C, S, 1, 0, 0, t->text, t->n);
    }
    if (!rc && c->trajectory_path) {
        make_file_text(t, c, names, DDPM_RECIPE_TRAJECTORY, first, f.traj_rows, f.K, c->pad, c->pad_value,
                       one_class);
        rc = ddpm_image_save_grid_text(c->trajectory_path, f.traj, f.traj_rows * f.K, C, S, f.K, c->pad,
                                       c->pad_value, t->text, t->n);
    }
    free(t);
    free(f.traj);
    free(x);
    free(labels);
    return rc;
}
