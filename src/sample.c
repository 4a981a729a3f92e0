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
    c->prediction = DDPM_PRED_EPS;
    c->learned_var = 0;
}

static inline float clampf(float v) { return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; }

void ddpm_ddpm_step(float *x_prev, float *x0_out, const float *x_t, ddpm_prediction pred,
                    const float *out, const float *z, int i, size_t D, const ddpm_schedule *s,
                    ddpm_var_kind var, int clip_x0)
{
    ddpm_ddpm_step_v(x_prev, x0_out, x_t, pred, out, NULL, z, i, D, s, var, clip_x0);
}

void ddpm_ddpm_step_v(float *x_prev, float *x0_out, const float *x_t, ddpm_prediction pred, const float *out,
                      const float *v, const float *z, int i, size_t D, const ddpm_schedule *s, ddpm_var_kind var,
                      int clip_x0)
{
    int learned = var == DDPM_VAR_LEARNED && v;
    double sigma = i == 0 || learned ? 0.0 : sqrt(var == DDPM_VAR_BETA ? s->beta[i] : s->posterior_var[i]);
    float sig = (float)sigma;
    ddpm_logvar_coef lc = learned ? ddpm_learned_logvar_coef(i, s) : (ddpm_logvar_coef){0, 0};
    /* x0 of the output (for the clipped mean and the trajectory), and the
       unclipped mean: Algorithm 2's eps form for eps, eq. 7 of x0 otherwise */
    ddpm_pred_coef pc = ddpm_pred_coefs(pred, i, s);
    float xo = (float)pc.x0_out, xx = (float)pc.x0_xt, mo = (float)pc.mu_out, mx = (float)pc.mu_xt;
    float cx0 = (float)s->posterior_coef_x0[i], cxt = (float)s->posterior_coef_xt[i];
    for (size_t d = 0; d < D; d++) {
        float x0 = pred == DDPM_PRED_X0 ? out[d] : xo * out[d] + xx * x_t[d];
        float mean;
        if (clip_x0) {
            x0 = clampf(x0);
            mean = cx0 * x0 + cxt * x_t[d]; /* mu~(x0, x_t), eq. 7 */
        } else {
            mean = mx * x_t[d] + mo * out[d]; /* Algorithm 2, line 4, for eps */
        }
        if (x0_out)
            x0_out[d] = x0;
        if (learned && i > 0)
            sig = (float)exp(0.5 * ddpm_learned_logvar(lc, v[d]));
        x_prev[d] = i == 0 ? mean : mean + sig * z[d];
    }
}

void ddpm_ddim_step(float *x_prev, float *x0_out, const float *x_t, ddpm_prediction pred,
                    const float *out, const float *z, int i, int i_prev, float eta, size_t D,
                    const ddpm_schedule *s, int clip_x0)
{
    double abar = s->abar[i], abar_prev = i_prev >= 0 ? s->abar[i_prev] : 1.0;
    double sigma = eta * sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev));
    double dir = 1.0 - abar_prev - sigma * sigma;
    float c_x0 = (float)sqrt(abar_prev), c_eps = (float)sqrt(dir > 0 ? dir : 0), sig = (float)sigma;
    ddpm_pred_coef pc = ddpm_pred_coefs(pred, i, s);
    float xo = (float)pc.x0_out, xx = (float)pc.x0_xt, eo = (float)pc.eps_out, ex = (float)pc.eps_xt;
    float ra = (float)sqrt(abar), rb = (float)(1.0 / sqrt(1.0 - abar));
    for (size_t d = 0; d < D; d++) {
        float x0 = pred == DDPM_PRED_X0 ? out[d] : xo * out[d] + xx * x_t[d];
        float e = pred == DDPM_PRED_EPS ? out[d] : eo * out[d] + ex * x_t[d];
        if (clip_x0) {
            float c = clampf(x0);
            if (c != x0) /* keep x0 and eps consistent: eps = (x_t - sqrt(abar) x0)/sqrt(1-abar) */
                e = (x_t[d] - ra * c) * rb;
            x0 = c;
        }
        if (x0_out)
            x0_out[d] = x0;
        float v = c_x0 * x0 + c_eps * e;
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
    return c->kind == DDPM_SAMPLER_DDIM ? c->steps : s->T;
}

/* The normal draws of image g at step k: independent of the batch split. */
static void image_noise(float *out, size_t D, const ddpm_rng *rng, long g, int k, int n_steps)
{
    ddpm_rng r = *rng;
    r.counter += ((uint64_t)g * (uint64_t)(n_steps + 1) + (uint64_t)k) * ((D + 3) / 4);
    ddpm_rng_normal_fill(&r, out, D);
}

void ddpm_sample_initial_noise(float *x_T, size_t D, int image, const ddpm_schedule *s,
                               const ddpm_sampler_config *c, const ddpm_rng *rng)
{
    int n = ddpm_sampler_n_steps(c, s);
    image_noise(x_T, D, rng, image, n, n);
}

int ddpm_sample(float *x, float *scratch, int B, size_t D, int first_image,
                const ddpm_schedule *s, const ddpm_sampler_config *c, ddpm_eps_fn eps_fn,
                void *eps_ctx, const ddpm_rng *rng, ddpm_step_fn step_fn, void *step_ctx)
{
    for (int b = 0; b < B; b++)
        ddpm_sample_initial_noise(x + (size_t)b * D, D, first_image + b, s, c, rng);
    return ddpm_sample_from(x, scratch, B, D, first_image, s->T - 1, s, c, eps_fn, eps_ctx, rng, step_fn,
                            step_ctx);
}

int ddpm_sample_from(float *x, float *scratch, int B, size_t D, int first_image, int i_start,
                     const ddpm_schedule *s, const ddpm_sampler_config *c, ddpm_eps_fn eps_fn,
                     void *eps_ctx, const ddpm_rng *rng, ddpm_step_fn step_fn, void *step_ctx)
{
    if (i_start < 0 || i_start >= s->T)
        return ddpm_error(DDPM_EINVAL, "the start step index must be in 0..%d, got %d", s->T - 1, i_start);
    if (c->kind == DDPM_SAMPLER_DDIM && (c->steps < 1 || c->steps > i_start + 1))
        return ddpm_error(DDPM_EINVAL, "DDIM steps must be in 1..%d (%s), got %d", i_start + 1,
                          i_start == s->T - 1 ? "the model's timesteps" : "the start step", c->steps);
    if (c->kind == DDPM_SAMPLER_DDIM && !(c->eta >= 0 && c->eta <= 1))
        return ddpm_error(DDPM_EINVAL, "eta must be in [0, 1], got %g", c->eta);
    int n = c->kind == DDPM_SAMPLER_DDIM ? c->steps : i_start + 1;
    if ((c->kind == DDPM_SAMPLER_DDPM || c->eta > 0) && !rng)
        return ddpm_error(DDPM_EINVAL, "a stochastic sampler needs a random stream");
    if ((unsigned)c->var >= DDPM_N_VARS || (c->var == DDPM_VAR_LEARNED && !c->learned_var))
        return ddpm_error(DDPM_EINVAL, "the variance '%s' needs a model with learned variances",
                          ddpm_var_name(c->var));
    int *seq = ddpm_malloc((size_t)n, sizeof *seq);
    int *ivec = ddpm_malloc((size_t)B, sizeof *ivec);
    if (!seq || !ivec) {
        free(seq);
        free(ivec);
        return DDPM_ENOMEM;
    }
    if (c->kind == DDPM_SAMPLER_DDIM)
        ddpm_ddim_timesteps_from(seq, n, i_start);
    else
        for (int k = 0; k < n; k++)
            seq[k] = k;
    size_t BD = (size_t)B * D, out_D = c->learned_var ? 2 * D : D;
    float *z = scratch + BD, *x0 = z + BD, *xn = x0 + BD;
    /* a learned-variance model writes 2D values per image: more than scratch's first slot */
    float *own = c->learned_var ? ddpm_malloc((size_t)B * out_D, sizeof(float)) : NULL;
    float *eps = own ? own : scratch;
    if (c->learned_var && !own) {
        free(seq);
        free(ivec);
        return DDPM_ENOMEM;
    }
    for (int k = 0; k < n; k++) {
        int idx = n - 1 - k, i = seq[idx], i_prev = idx > 0 ? seq[idx - 1] : -1;
        for (int b = 0; b < B; b++)
            ivec[b] = i;
        eps_fn(eps_ctx, eps, x, ivec, B);
        int need_z = c->kind == DDPM_SAMPLER_DDPM ? i > 0 : (c->eta > 0 && i_prev >= 0);
        for (int b = 0; b < B; b++) {
            size_t o = (size_t)b * D;
            const float *out = eps + (size_t)b * out_D;
            if (need_z)
                image_noise(z + o, D, rng, first_image + b, k, n);
            if (c->kind == DDPM_SAMPLER_DDPM)
                ddpm_ddpm_step_v(xn + o, x0 + o, x + o, c->prediction, out, c->learned_var ? out + D : NULL, z + o,
                                 i, D, s, c->var, c->clip_x0);
            else
                ddpm_ddim_step(xn + o, x0 + o, x + o, c->prediction, out, z + o, i, i_prev, c->eta, D, s, c->clip_x0);
        }
        memcpy(x, xn, BD * sizeof *x);
        if (step_fn)
            step_fn(step_ctx, k, n, i, x, x0, B);
    }
    free(seq);
    free(ivec);
    free(own);
    return DDPM_OK;
}

/* The network output, guided when labels are given. */
static void unet_output(ddpm_unet_eps_ctx *c, float *out, const float *x_t, const int *i, int B)
{
    const ddpm_unet *net = c->net;
    if (net->cfg.n_classes == 0 || !c->labels || c->guidance == 0) {
        ddpm_unet_forward_class(net, c->params, c->ws, out, x_t, i, NULL, B, NULL);
        return;
    }
    ddpm_unet_forward_class(net, c->params, c->ws, out, x_t, i, c->labels, B, NULL);
    if (c->guidance == 1) /* the conditional model: one pass */
        return;
    size_t D = (size_t)net->cfg.in_channels * net->cfg.image_size * net->cfg.image_size;
    size_t out_D = net->cfg.learn_sigma ? 2 * D : D; /* guide the prediction; v stays the conditional one */
    ddpm_unet_forward_class(net, c->params, c->ws, c->uncond, x_t, i, NULL, B, NULL);
    float w = c->guidance;
    for (int b = 0; b < B; b++)
        for (size_t d = 0; d < D; d++) {
            size_t k = (size_t)b * out_D + d;
            out[k] = c->uncond[k] + w * (out[k] - c->uncond[k]);
        }
}

void ddpm_unet_eps(void *opaque, float *eps, const float *x_t, const int *i, int B)
{
    ddpm_unet_eps_ctx *c = opaque;
    unet_output(c, eps, x_t, i, B);
    if (!c->to_eps || c->net->cfg.prediction == DDPM_PRED_EPS)
        return;
    size_t D = (size_t)c->net->cfg.in_channels * c->net->cfg.image_size * c->net->cfg.image_size;
    size_t out_D = c->net->cfg.learn_sigma ? 2 * D : D;
    for (int b = 0; b < B; b++) /* in place: each element reads its output, then writes eps */
        ddpm_pred_to_eps_x0(eps + (size_t)b * out_D, NULL, c->net->cfg.prediction, eps + (size_t)b * out_D,
                            x_t + (size_t)b * D, i[b], D, c->to_eps);
}

/* ---------------------------------------------------------------- to files */

void ddpm_sample_files_config_default(ddpm_sample_files_config *c)
{
    memset(c, 0, sizeof *c);
    c->n = 64;
    c->batch = 64;
    ddpm_sampler_config_default(&c->sampler);
    c->sampler.kind = DDPM_SAMPLER_DDIM;
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
    size_t D;
} files_step_ctx;

/* Keeps the predicted x0 at the trajectory's columns and reports progress. */
static void files_on_step(void *opaque, int k, int n_steps, int i, const float *x, const float *x0, int B)
{
    (void)i;
    (void)x;
    files_step_ctx *f = opaque;
    int first = f->p.first;
    for (int col = 0; f->traj && first < f->traj_rows && col < f->K; col++) {
        int at = f->K == 1 ? n_steps - 1 : (int)floor((double)col * (n_steps - 1) / (f->K - 1) + 0.5);
        if (at != k)
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
static void make_file_text(file_text *t, const ddpm_sample_files_config *c, ddpm_recipe_kind kind, int first,
                           int count, int nrow, int pad, int pad_value, int class_index)
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
        if (c->class_names)
            snprintf(r->class_name, sizeof r->class_name, "%s", c->class_names[class_index]);
        else
            snprintf(r->class_name, sizeof r->class_name, "%d", class_index);
    }
    t->n = ddpm_recipe_to_text(r, t->text, &t->storage, &t->index_slot);
}

int ddpm_sample_files(const ddpm_unet *net, const float *params, const ddpm_schedule *s,
                      const ddpm_sample_files_config *c, ddpm_unet_workspace *ws,
                      ddpm_sample_progress_fn progress, void *progress_ctx)
{
    if (c->n < 1 || c->batch < 1)
        return ddpm_error(DDPM_EINVAL, "sampling needs n >= 1 and batch >= 1, got n %d, batch %d", c->n,
                          c->batch);
    if (c->trajectory_path && c->trajectory_k < 1)
        return ddpm_error(DDPM_EINVAL, "%s: trajectory_k must be >= 1", c->trajectory_path);
    int n_classes = net->cfg.n_classes;
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
    int C = net->cfg.in_channels, S = net->cfg.image_size;
    size_t D = (size_t)C * S * S;
    ddpm_unet_workspace *own_ws = NULL;
    int rc = ws ? DDPM_OK : ddpm_unet_workspace_create(&own_ws, net, B, 0);
    if (rc)
        return rc;
    files_step_ctx f = {.p = {.n = n}, .fn = progress, .fn_ctx = progress_ctx, .K = c->trajectory_k, .D = D};
    float *x = ddpm_malloc((size_t)n * D, sizeof(float));
    float *scratch = ddpm_malloc(4 * (size_t)B * D, sizeof(float));
    if (c->trajectory_path) {
        f.traj_rows = n < DDPM_TRAJECTORY_MAX_ROWS ? n : DDPM_TRAJECTORY_MAX_ROWS;
        f.traj = ddpm_calloc((size_t)f.traj_rows * f.K * D, sizeof(float));
    }
    /* labels of every image (conditional sampling), and the unconditional pass's output */
    int conditional = n_classes > 0 && (c->grid_by_class || c->class_index != DDPM_NO_CLASS);
    int *labels = conditional ? ddpm_malloc((size_t)n, sizeof *labels) : NULL;
    size_t out_D = net->cfg.learn_sigma ? 2 * D : D;
    float *uncond = conditional && c->guidance != 0 && c->guidance != 1 ? ddpm_malloc((size_t)B * out_D, sizeof(float))
                                                                          : NULL;
    if (!x || !scratch || (c->trajectory_path && !f.traj) || (conditional && !labels) ||
        (conditional && c->guidance != 0 && c->guidance != 1 && !uncond))
        rc = DDPM_ENOMEM;
    for (int k = 0; labels && k < n; k++)
        labels[k] = c->grid_by_class ? k / per_class : c->class_index;
    ddpm_rng rng;
    ddpm_rng_init(&rng, c->seed, DDPM_STREAM_SAMPLE);
    ddpm_unet_eps_ctx eps_ctx = {net, params, ws ? ws : own_ws, NULL, c->guidance, uncond, NULL};
    ddpm_sampler_config sc = c->sampler;
    sc.prediction = net->cfg.prediction; /* what this network's output means */
    sc.learned_var = net->cfg.learn_sigma;
    for (int first = 0; !rc && first < n; first += B) {
        f.p.first = first;
        f.p.B = n - first < B ? n - first : B;
        eps_ctx.labels = labels ? labels + first : NULL;
        rc = ddpm_sample(x + (size_t)first * D, scratch, f.p.B, D, c->first_index + first, s, &sc, ddpm_unet_eps,
                         &eps_ctx, &rng, files_on_step, &f);
    }
    file_text *t = rc ? NULL : ddpm_malloc(1, sizeof *t);
    if (!rc && !t)
        rc = DDPM_ENOMEM;
    int nrow = c->grid_by_class ? per_class : c->nrow ? c->nrow : (int)ceil(sqrt((double)n)), first = c->first_index;
    /* the class of every image, when they share one */
    int one_class = conditional && !c->grid_by_class ? c->class_index : DDPM_NO_CLASS;
    if (!rc && c->grid_path) {
        make_file_text(t, c, DDPM_RECIPE_GRID, first, n, nrow, c->pad, c->pad_value, one_class);
        rc = ddpm_image_save_grid_text(c->grid_path, x, n, C, S, nrow, c->pad, c->pad_value, t->text, t->n);
    }
    /* one image: as a grid of one without padding (the same pixels); with rows
       by class, each class's images carry that class in their recipe */
    int blocks = c->grid_by_class ? n_classes : 1, block = n / blocks;
    for (int k = 0; !rc && c->each_dir && k < blocks; k++) {
        make_file_text(t, c, DDPM_RECIPE_IMAGE, first, 1, 1, 0, 0, c->grid_by_class ? k : one_class);
        rc = ddpm_image_save_part_text(c->each_dir, x + (size_t)k * block * D, block, C, S, first + k * block,
                                       first + n - 1, t->text, t->n, t->index_slot);
    }
    if (!rc && c->image_path) {
        make_file_text(t, c, DDPM_RECIPE_IMAGE, first, 1, 1, 0, 0, c->grid_by_class ? 0 : one_class);
        rc = ddpm_image_save_grid_text(c->image_path, x, 1, C, S, 1, 0, 0, t->text, t->n);
    }
    if (!rc && c->trajectory_path) {
        make_file_text(t, c, DDPM_RECIPE_TRAJECTORY, first, f.traj_rows, f.K, c->pad, c->pad_value,
                       one_class);
        rc = ddpm_image_save_grid_text(c->trajectory_path, f.traj, f.traj_rows * f.K, C, S, f.K, c->pad,
                                       c->pad_value, t->text, t->n);
    }
    free(t);
    free(f.traj);
    free(x);
    free(scratch);
    free(labels);
    free(uncond);
    ddpm_unet_workspace_free(own_ws);
    return rc;
}
