#include "ddpm/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/rng.h"

/* ------------------------------------------------------------ the terms */

/* u - log1p(u) for u > -1 (L_T's variance part with u = -abar_T): for |u| < 1e-3
 * the difference of two nearly equal numbers is replaced by its series
 * u^2/2 - u^3/3 + ... (truncated after u^8: relative error < u^7 < 1e-21). */
static double u_minus_log1p(double u)
{
    if (fabs(u) < 1e-3)
        return u * u *
               (1.0 / 2 +
                u * (-1.0 / 3 +
                     u * (1.0 / 4 + u * (-1.0 / 5 + u * (1.0 / 6 + u * (-1.0 / 7 + u * (1.0 / 8)))))));
    return u - log1p(u);
}

double ddpm_normal_kl_var_part(double var1, double var2)
{
    /* r - 1 - log r with the log of the ratio: r - 1 is exact near 1 and the
     * function is flat there, so rounding r costs nothing. The logvar form
     * log(var2) - log(var1) + r - 1 of the paper's code would cancel to ~1e-16
     * absolute when var1 ~ var2 (beta_t against beta~_t at large t). */
    double r = var1 / var2;
    return 0.5 * (r - 1 - log(r));
}

double ddpm_normal_kl(double mean1, double var1, double mean2, double var2)
{
    double d = mean1 - mean2;
    return ddpm_normal_kl_var_part(var1, var2) + 0.5 * d * d / var2;
}

double ddpm_log_normal_cdf(double z)
{
    if (isnan(z))
        return z;
    if (z > 0)
        return log1p(-0.5 * erfc(z / M_SQRT2)); /* Phi(z) = 1 - Phi(-z), Phi(-z) < 1/2 */
    if (z > -37)
        return log(0.5 * erfc(-z / M_SQRT2)); /* erfc keeps its relative accuracy here (>= 1e-300) */
    if (isinf(z))
        return -INFINITY;
    /* Phi(z) = phi(z)/|z| (1 - 1/z^2 + 3/z^4 - 15/z^6 + ...) (Abramowitz & Stegun 26.2.12);
     * at |z| >= 37 six terms leave a relative error below 1e-17. */
    double w = 1.0 / (z * z);
    double series = w * (-1 + w * (3 + w * (-15 + w * (105 + w * (-945 + w * 10395)))));
    return -0.5 * z * z - log(-z) - 0.5 * log(2 * M_PI) + log1p(series);
}

double ddpm_log_normal_cdf_diff(double a, double b)
{
    if (a >= 0) /* both in the upper half: Phi(b) - Phi(a) = Phi(-a) - Phi(-b) */
        return ddpm_log_normal_cdf_diff(-b, -a);
    if (b <= 0) { /* both in the lower half: Phi(b) (1 - Phi(a)/Phi(b)) */
        double lb = ddpm_log_normal_cdf(b), la = ddpm_log_normal_cdf(a);
        return lb + log(-expm1(la - lb));
    }
    /* a < 0 < b: 1 - Phi(a) - Phi(-b), both tails below 1/2 */
    double tails = 0.5 * erfc(-a / M_SQRT2) + 0.5 * erfc(b / M_SQRT2);
    if (tails < 0.5)
        return log1p(-tails);
    return log(0.5 * (erf(b / M_SQRT2) + erf(-a / M_SQRT2))); /* a narrow interval: two positive terms */
}

double ddpm_discretized_gaussian_log_likelihood(double x, double mean, double sigma)
{
    const double half_bin = 1.0 / 255.0;
    /* the grid value itself (k/127.5 - 1 in double): float data are off by ~6e-8,
       which would leave gaps and overlaps of that width between adjacent bins */
    x = nearbyint((x + 1) * 127.5) / 127.5 - 1;
    double lo = x < -0.999 ? -INFINITY : (x - half_bin - mean) / sigma;
    double hi = x > 0.999 ? INFINITY : (x + half_bin - mean) / sigma;
    return ddpm_log_normal_cdf_diff(lo, hi);
}

double ddpm_reverse_var(const ddpm_schedule *s, ddpm_var_kind var, int i)
{
    if (i == 0) /* beta~_1 = 0: the paper's code uses beta~_2 for the decoder */
        return s->posterior_var[1];
    return var == DDPM_VAR_BETA ? s->beta[i] : s->posterior_var[i];
}

double ddpm_prior_kl(const float *x0, size_t D, const ddpm_schedule *s)
{
    /* KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) per dimension:
     * 0.5 (abar x0^2 + (1 - abar) - 1 - log(1 - abar)) = 0.5 abar x0^2 + 0.5 (u - log1p(u)), u = -abar */
    double abar = s->abar[s->T - 1], sum_sq = 0;
    for (size_t d = 0; d < D; d++)
        sum_sq += (double)x0[d] * x0[d];
    return 0.5 * abar * sum_sq + (double)D * 0.5 * u_minus_log1p(-abar);
}

static inline double clamp1(double v)
{
    return v < -1.0 ? -1.0 : v > 1.0 ? 1.0 : v;
}

double ddpm_bound_term(const float *x0, const float *x_t, const float *eps_pred, int i, size_t D,
                       const ddpm_schedule *s, ddpm_var_kind var, int clip_x0)
{
    return ddpm_bound_term_v(x0, x_t, eps_pred, NULL, i, D, s, var, clip_x0);
}

double ddpm_bound_term_v(const float *x0, const float *x_t, const float *eps_pred, const float *v, int i, size_t D,
                         const ddpm_schedule *s, ddpm_var_kind var, int clip_x0)
{
    int learned = var == DDPM_VAR_LEARNED && v;
    ddpm_logvar_coef lc = learned ? ddpm_learned_logvar_coef(i, s) : (ddpm_logvar_coef){0, 0};
    double var_model = learned ? 1.0 : ddpm_reverse_var(s, var == DDPM_VAR_LEARNED ? DDPM_VAR_BETA : var, i);
    /* x0_pred = (x_t - sqrt(1-abar) eps) / sqrt(abar) (eq. 15); eps form of the mean (eq. 11) */
    double a0 = 1.0 / s->sqrt_abar[i], b0 = s->sqrt_one_minus_abar[i] / s->sqrt_abar[i];
    double ea = 1.0 / sqrt(s->alpha[i]), eb = ea * s->beta[i] / s->sqrt_one_minus_abar[i];
    if (i == 0) {
        /* L_0 = -log p(x0|x_1); the posterior mean at t = 1 is x0 itself (coef_x0 = 1, coef_xt = 0) */
        double sigma = sqrt(var_model), nll = 0;
        for (size_t d = 0; d < D; d++) {
            double mean = clip_x0 ? clamp1(a0 * x_t[d] - b0 * eps_pred[d]) : ea * x_t[d] - eb * eps_pred[d];
            if (learned)
                sigma = exp(0.5 * ddpm_learned_logvar(lc, v[d]));
            nll -= ddpm_discretized_gaussian_log_likelihood(x0[d], mean, sigma);
        }
        return nll;
    }
    double c0 = s->posterior_coef_x0[i], ct = s->posterior_coef_xt[i], sum_sq = 0, kl = 0;
    for (size_t d = 0; d < D; d++) {
        double diff;
        if (clip_x0) /* mu~(x0, x_t) - mu~(clip(x0_pred), x_t): the x_t parts cancel exactly */
            diff = c0 * ((double)x0[d] - clamp1(a0 * x_t[d] - b0 * eps_pred[d]));
        else
            diff = (c0 * x0[d] + ct * x_t[d]) - (ea * x_t[d] - eb * eps_pred[d]);
        if (learned) { /* each value's own variance */
            double var_d = exp(ddpm_learned_logvar(lc, v[d]));
            kl += ddpm_normal_kl_var_part(s->posterior_var[i], var_d) + 0.5 * diff * diff / var_d;
            continue;
        }
        sum_sq += diff * diff;
    }
    if (learned)
        return kl;
    return (double)D * ddpm_normal_kl_var_part(s->posterior_var[i], var_model) + 0.5 * sum_sq / var_model;
}

/* ------------------------------------------------------------ the bound */

void ddpm_bound_config_default(ddpm_bound_config *c)
{
    memset(c, 0, sizeof *c);
    c->var = DDPM_VAR_BETA;
    c->clip_x0 = 1;
    c->mc = 0;
    c->batch = 64;
    c->seed = 0;
}

static uint64_t blocks_of(size_t D)
{
    return (uint64_t)((D + 3) / 4);
}

void ddpm_eval_noise(float *eps, uint64_t seed, long image, int i, int T, size_t D)
{
    ddpm_rng r;
    ddpm_rng_init(&r, seed, DDPM_STREAM_EVAL);
    r.counter = ((uint64_t)image * (uint64_t)T + (uint64_t)i) * blocks_of(D);
    ddpm_rng_normal_fill(&r, eps, D);
}

int ddpm_eval_pick(int *idx, int n, int count, uint64_t seed)
{
    if (n < 1 || n > count)
        return ddpm_error(DDPM_EINVAL, "cannot pick %d of %d images", n, count);
    int *perm = ddpm_malloc((size_t)count, sizeof *perm);
    if (!perm)
        return DDPM_ENOMEM;
    for (int k = 0; k < count; k++)
        perm[k] = k;
    ddpm_rng r;
    ddpm_rng_init(&r, seed, DDPM_STREAM_EVAL_PICK);
    ddpm_rng_shuffle(&r, perm, (size_t)count);
    memcpy(idx, perm, (size_t)n * sizeof *idx);
    free(perm);
    return DDPM_OK;
}

static const char *channels_name(int c)
{
    return c == 1 ? "gray" : c == 3 ? "RGB" : "?";
}

int ddpm_eval_load(float **x0, int *n, int *count, const char *dir, int S, int C, int default_n,
                   uint64_t seed, ddpm_dataset_warn_fn warn, void *warn_user)
{
    *x0 = NULL;
    ddpm_dataset *ds = NULL;
    ddpm_dataset_options dopt = {.warn = warn, .warn_user = warn_user};
    int rc = ddpm_dataset_open(&ds, dir, &dopt);
    if (rc)
        return rc;
    int have = ddpm_dataset_count(ds), ds_c = ddpm_dataset_channels(ds), ds_s = ddpm_dataset_size(ds);
    if (count)
        *count = have;
    if (ds_s != S || ds_c != C)
        rc = ddpm_error(DDPM_EINVAL, "%s: images are %dx%d %s, the model takes %dx%d %s", dir, ds_s, ds_s,
                        channels_name(ds_c), S, S, channels_name(C));
    else if (*n > have)
        rc = ddpm_error(DDPM_EINVAL, "%s: --n %d is more than the %d images in the folder", dir, *n, have);
    if (!rc && *n == 0)
        *n = have < default_n ? have : default_n;
    size_t D = (size_t)C * S * S;
    int *idx = NULL;
    if (!rc) {
        idx = ddpm_malloc((size_t)*n, sizeof *idx);
        *x0 = ddpm_malloc((size_t)*n * D, sizeof(float));
        if (!idx || !*x0)
            rc = DDPM_ENOMEM;
    }
    if (!rc)
        rc = ddpm_eval_pick(idx, *n, have, seed);
    for (int k = 0; !rc && k < *n; k++)
        rc = ddpm_dataset_get(ds, *x0 + (size_t)k * D, idx[k]);
    if (rc) {
        free(*x0);
        *x0 = NULL;
    }
    free(idx);
    ddpm_dataset_close(ds);
    return rc;
}

/* The j-th Monte Carlo step index of image k: uniform in 1..T-1 (t = 2..T). */
static int mc_step(uint64_t seed, long k, int j, int K, int T)
{
    ddpm_rng r;
    ddpm_rng_init(&r, seed, DDPM_STREAM_EVAL_MC);
    r.counter = (uint64_t)k * (uint64_t)K + (uint64_t)j;
    int i = 1 + (int)(ddpm_rng_uniform(&r) * (T - 1));
    return i < T ? i : T - 1;
}

void ddpm_bound_result_free(ddpm_bound_result *r)
{
    free(r->term_mean);
    free(r->term_se);
    free(r->term_n);
    memset(r, 0, sizeof *r);
}

/* Mean and standard error of v[0..n) in bits/dim from nats. */
static ddpm_estimate estimate(const double *v, int n, double to_bpd)
{
    double sum = 0, ss = 0;
    for (int k = 0; k < n; k++)
        sum += v[k];
    double mean = sum / n;
    for (int k = 0; k < n; k++)
        ss += (v[k] - mean) * (v[k] - mean);
    ddpm_estimate e = {mean * to_bpd, n > 1 ? sqrt(ss / (n - 1) / n) * to_bpd : 0.0};
    return e;
}

typedef struct {
    float *x_t, *eps, *eps_pred;
    int *steps;
    long *image;
    double *per_image;           /* [4, n]: L_T, sum L_{t-1}, L_0, total (nats) */
    double *term_mean, *term_m2; /* Welford per index */
} bound_buffers;

static void free_buffers(bound_buffers *b)
{
    free(b->x_t);
    free(b->eps);
    free(b->eps_pred);
    free(b->steps);
    free(b->image);
    free(b->per_image);
    free(b->term_mean);
    free(b->term_m2);
}

int ddpm_bound(ddpm_bound_result *r, const float *x0, int n, size_t D, const ddpm_schedule *s,
               const ddpm_bound_config *c, ddpm_eps_fn eps_fn, void *eps_ctx, ddpm_eval_progress_fn progress,
               void *progress_ctx)
{
    memset(r, 0, sizeof *r);
    int T = s->T, K = c->mc, B = c->batch;
    if (n < 1 || D < 1)
        return ddpm_error(DDPM_EINVAL, "the bound needs at least one image");
    if (T < 2)
        return ddpm_error(DDPM_EINVAL, "the bound needs T >= 2 (the decoder variance is beta~_2), got T = %d",
                          T);
    if (B < 1 || K < 0)
        return ddpm_error(DDPM_EINVAL, "bad bound config: batch %d, mc %d", B, K);
    if ((unsigned)c->var >= DDPM_N_VARS || (c->var == DDPM_VAR_LEARNED && !c->learned_var))
        return ddpm_error(DDPM_EINVAL, "the variance '%s' needs a model with learned variances",
                          ddpm_var_name(c->var));
    long per_image = K > 0 ? K + 1 : T, total = (long)n * per_image;
    size_t out_D = c->learned_var ? 2 * D : D;
    bound_buffers b = {0};
    b.x_t = ddpm_malloc((size_t)B * D, sizeof(float));
    b.eps = ddpm_malloc((size_t)B * D, sizeof(float));
    b.eps_pred = ddpm_malloc((size_t)B * out_D, sizeof(float));
    b.steps = ddpm_malloc((size_t)B, sizeof(int));
    b.image = ddpm_malloc((size_t)B, sizeof(long));
    b.per_image = ddpm_calloc(4 * (size_t)n, sizeof(double));
    b.term_mean = ddpm_calloc((size_t)T, sizeof(double));
    b.term_m2 = ddpm_calloc((size_t)T, sizeof(double));
    r->term_mean = ddpm_malloc((size_t)T, sizeof(double));
    r->term_se = ddpm_malloc((size_t)T, sizeof(double));
    r->term_n = ddpm_calloc((size_t)T, sizeof(long));
    if (!b.x_t || !b.eps || !b.eps_pred || !b.steps || !b.image || !b.per_image || !b.term_mean ||
        !b.term_m2 || !r->term_mean || !r->term_se || !r->term_n) {
        free_buffers(&b);
        ddpm_bound_result_free(r);
        return DDPM_ENOMEM;
    }
    double *prior = b.per_image, *vb = prior + n, *decoder = vb + n, *tot = decoder + n;
    int rc = DDPM_OK;
    /* Work items (image k, slot j) in image-major order, B per network call at
     * mixed steps. Every sum below runs in item order, so the result does not
     * depend on B. */
    for (long q0 = 0; q0 < total && !rc; q0 += B) {
        int nb = (int)(total - q0 < B ? total - q0 : B);
        for (int m = 0; m < nb; m++) {
            long q = q0 + m, k = q / per_image;
            int j = (int)(q % per_image);
            int i = K > 0 ? (j == 0 ? 0 : mc_step(c->seed, k, j - 1, K, T)) : j;
            b.image[m] = k;
            b.steps[m] = i;
            float *eps = b.eps + (size_t)m * D;
            if (c->noise_fn)
                c->noise_fn(c->noise_ctx, eps, k, i, D);
            else
                ddpm_eval_noise(eps, c->seed, k, i, T, D);
            ddpm_q_sample(b.x_t + (size_t)m * D, x0 + (size_t)k * D, eps, &i, 1, D, s);
        }
        eps_fn(eps_ctx, b.eps_pred, b.x_t, b.steps, nb);
        for (int m = 0; m < nb && !rc; m++) {
            long k = b.image[m];
            int i = b.steps[m];
            size_t o = (size_t)m * D;
            const float *out = b.eps_pred + (size_t)m * out_D;
            double term = ddpm_bound_term_v(x0 + (size_t)k * D, b.x_t + o, out, c->learned_var ? out + D : NULL, i, D,
                                            s, c->var, c->clip_x0);
            if (!isfinite(term)) {
                rc = ddpm_error(DDPM_ENAN, "the bound's term at t = %d of image %ld is not finite (%g)",
                                i + 1, k, term);
                break;
            }
            if (i == 0)
                decoder[k] = term;
            else
                vb[k] += K > 0 ? term * (double)(T - 1) / K : term;
            long cnt = ++r->term_n[i]; /* Welford's running mean and M2, in item order */
            double delta = term - b.term_mean[i];
            b.term_mean[i] += delta / cnt;
            b.term_m2[i] += delta * (term - b.term_mean[i]);
        }
        r->n_evals += nb;
        if (progress)
            progress(progress_ctx, q0 + nb, total);
    }
    if (!rc) {
        double to_bpd = 1.0 / ((double)D * M_LN2);
        for (int k = 0; k < n; k++) {
            prior[k] = ddpm_prior_kl(x0 + (size_t)k * D, D, s);
            tot[k] = prior[k] + vb[k] + decoder[k];
        }
        r->n_images = n;
        r->T = T;
        r->mc = K;
        r->D = D;
        r->prior = estimate(prior, n, to_bpd);
        r->vb = estimate(vb, n, to_bpd);
        r->decoder = estimate(decoder, n, to_bpd);
        r->total = estimate(tot, n, to_bpd);
        for (int i = 0; i < T; i++) {
            long cnt = r->term_n[i];
            r->term_mean[i] = cnt ? b.term_mean[i] * to_bpd : NAN;
            r->term_se[i] = cnt > 1 ? sqrt(b.term_m2[i] / (cnt - 1) / cnt) * to_bpd : 0.0;
        }
    }
    free_buffers(&b);
    if (rc)
        ddpm_bound_result_free(r);
    return rc;
}

int ddpm_eval_l_simple(ddpm_estimate *out, const float *x0, int n, size_t D, const ddpm_schedule *s,
                       int batch, uint64_t seed, int learned_var, ddpm_eps_fn eps_fn, void *eps_ctx,
                       ddpm_eval_progress_fn progress, void *progress_ctx)
{
    if (n < 1 || D < 1 || batch < 1)
        return ddpm_error(DDPM_EINVAL, "L_simple needs at least one image and a batch >= 1");
    int B = batch < n ? batch : n;
    float *x_t = ddpm_malloc((size_t)B * D, sizeof(float)), *eps = ddpm_malloc((size_t)B * D, sizeof(float));
    size_t out_D = learned_var ? 2 * D : D;
    float *eps_pred = ddpm_malloc((size_t)B * out_D, sizeof(float));
    int *steps = ddpm_malloc((size_t)B, sizeof(int));
    double *loss = ddpm_malloc((size_t)n, sizeof(double));
    int rc = DDPM_OK;
    if (!x_t || !eps || !eps_pred || !steps || !loss)
        rc = DDPM_ENOMEM;
    for (int k0 = 0; k0 < n && !rc; k0 += B) {
        int nb = n - k0 < B ? n - k0 : B;
        for (int m = 0; m < nb; m++) {
            long k = k0 + m;
            ddpm_rng r;
            ddpm_rng_init(&r, seed, DDPM_STREAM_EVAL_L_SIMPLE);
            r.counter = (uint64_t)k; /* the step: counters 0..n-1 */
            int i = (int)(ddpm_rng_uniform(&r) * s->T);
            steps[m] = i < s->T ? i : s->T - 1;
            r.counter = ((uint64_t)1 << 40) + (uint64_t)k * blocks_of(D); /* eps: from 2^40 on */
            ddpm_rng_normal_fill(&r, eps + (size_t)m * D, D);
        }
        ddpm_q_sample(x_t, x0 + (size_t)k0 * D, eps, steps, nb, D, s);
        eps_fn(eps_ctx, eps_pred, x_t, steps, nb);
        for (int m = 0; m < nb; m++) {
            double sum = 0;
            for (size_t d = 0; d < D; d++) {
                double e = (double)eps[(size_t)m * D + d] - eps_pred[(size_t)m * out_D + d];
                sum += e * e;
            }
            loss[k0 + m] = sum / (double)D;
            if (!isfinite(loss[k0 + m])) {
                rc = ddpm_error(DDPM_ENAN, "L_simple of image %d is not finite", k0 + m);
                break;
            }
        }
        if (progress)
            progress(progress_ctx, k0 + nb, n);
    }
    if (!rc)
        *out = estimate(loss, n, 1.0);
    free(x_t);
    free(eps);
    free(eps_pred);
    free(steps);
    free(loss);
    return rc;
}
