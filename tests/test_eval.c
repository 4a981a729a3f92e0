/* Tests of the variational bound (eval.h): each term against an independent
 * computation in long double (closed-form KL, numerical integration of the
 * Gaussian density over each decoder bin, the L_T formula), the whole bound of a
 * model whose eps is exact for a Gaussian data set against its analytic value,
 * the Monte Carlo estimate against the exact bound, independence from the batch
 * split, and the whole bound of the tiny reference U-Net against PyTorch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/eval.h"
#include "ddpm/safetensors.h"
#include "testutil.h"

static ddpm_schedule sched; /* linear, T = 1000, 1e-4 .. 0.02 (the paper's) */

static int setup(void **state)
{
    (void)state;
    return ddpm_schedule_init(&sched, DDPM_SCHEDULE_LINEAR, 1000, 1e-4, 0.02);
}

static int teardown(void **state)
{
    (void)state;
    ddpm_schedule_free(&sched);
    return 0;
}

/* ------------------------------------------------ independent references */

/* The linear schedule recomputed here in long double from its definition. */
typedef struct {
    long double beta, alpha, abar, abar_prev;
} ref_step;

static ref_step ref_linear(int i, int T, long double b0, long double b1)
{
    ref_step r = {0, 0, 1, 1};
    for (int j = 0; j <= i; j++) {
        long double beta = b0 + (b1 - b0) * j / (T - 1);
        r.abar_prev = r.abar;
        r.abar *= 1 - beta;
        r.beta = beta;
        r.alpha = 1 - beta;
    }
    return r;
}

/* KL(N(m1, v1) || N(m2, v2)), the textbook formula in long double. */
static long double ref_kl(long double m1, long double v1, long double m2, long double v2)
{
    return 0.5L * (logl(v2 / v1) + (v1 + (m1 - m2) * (m1 - m2)) / v2 - 1);
}

/* log of the standard normal mass on [a, b] (a may be -inf, b +inf) by composite
 * Simpson in long double. The integrand is written exp(-(z^2 - c^2)/2) times
 * exp(-c^2/2) with c the point of [a, b] nearest 0, so it is at most 1 and the
 * deep tails (c = 300: mass e^-45000) stay in range; the interval is cut where
 * the integrand falls below e^-45, which changes the mass by < 1e-19 relative.
 * With 4000 panels Simpson's error is below 1e-10 relative for every case here
 * (the steepest, c = 300, has h c = 0.011). */
static long double ref_log_mass(long double a, long double b)
{
    long double c = a > 0 ? a : b < 0 ? b : 0;
    long double r = sqrtl(c * c + 90);
    long double lo = a < -r ? -r : a, hi = b > r ? r : b;
    enum { N = 4000 };
    long double h = (hi - lo) / N, sum = 0;
    for (int k = 0; k <= N; k++) {
        long double z = lo + k * h, w = (k == 0 || k == N) ? 1 : (k % 2 ? 4 : 2);
        sum += w * expl(-(z * z - c * c) / 2);
    }
    return -c * c / 2 - 0.5L * logl(2 * 3.14159265358979323846264338327950288L) + logl(sum * h / 3);
}

/* The decoder's log p(x) for a grid value x, from ref_log_mass, with the bin of
 * the exact grid value k/127.5 - 1 nearest x. */
static long double ref_decoder(double x, long double mean, long double sigma)
{
    x = (double)(roundl(((long double)x + 1) * 127.5L) / 127.5L - 1);
    long double a = x < -0.999 ? -INFINITY : ((long double)x - 1.0L / 255 - mean) / sigma;
    long double b = x > 0.999 ? INFINITY : ((long double)x + 1.0L / 255 - mean) / sigma;
    return ref_log_mass(a, b);
}

/* k-th value of the 256-level grid, as the data set produces it. */
static float grid(int k)
{
    return (float)k / 127.5f - 1.0f;
}

/* ------------------------------------------------ the terms */

static void test_normal_kl_matches_closed_form_on_random_means_and_variances(void **state)
{
    (void)state;
    enum { N = 2000 };
    float u[4 * N];
    tu_fill_uniform(u, 4 * N, 11, 0, 1);
    int n_bad = 0;
    for (int k = 0; k < N; k++) {
        double m1 = 6 * u[4 * k] - 3, m2 = 6 * u[4 * k + 1] - 3;
        double v1 = exp(-14 + 16 * u[4 * k + 2]), v2 = exp(-14 + 16 * u[4 * k + 3]);
        /* every fourth pair has nearly equal variances, where the textbook form cancels
           (beta_t vs beta~_t at large t differ by ~1e-6 relative) */
        if (k % 4 == 0)
            v1 = v2 * (1 + (u[4 * k + 2] - 0.5) * pow(10, -2 - 8 * u[4 * k]));
        if (k % 8 == 0)
            m1 = m2;
        long double want = ref_kl(m1, v1, m2, v2);
        double got = ddpm_normal_kl(m1, v1, m2, v2);
        /* long double's own rounding is ~1e-19 of the O(1) quantities it adds;
           log(v2) - log(v1) in double is off by ~1e-16 when var1 ~ var2 */
        double tol = 2e-18 + 1e-12 * fabsl(want);
        if (!(fabs(got - (double)want) <= tol)) {
            if (n_bad++ < 5)
                fprintf(stderr, "KL(N(%g,%g)||N(%g,%g)) = %.17g, reference %.17Lg\n", m1, v1, m2, v2, got,
                        want);
        }
    }
    assert_int_equal(n_bad, 0);
    /* the variance part alone is 0 for equal variances and never negative */
    assert_true(ddpm_normal_kl_var_part(0.3, 0.3) == 0.0);
    assert_true(ddpm_normal_kl_var_part(0.3 * (1 + 1e-12), 0.3) >= 0.0);
}

static void test_decoder_matches_integrated_density_in_every_bin_including_open_ends(void **state)
{
    (void)state;
    /* sigma from the decoder's own (sqrt(beta~_2) = 0.0074, 0.95 of a bin) to wide;
       means inside, on the edge and outside [-1, 1]: z reaches 310, where the
       mass of a bin is e^-48000 */
    const double sigmas[] = {sqrt(sched.posterior_var[1]), 0.004, 0.05, 0.3, 1.5};
    const double means[] = {-1.3, -1.0, -0.5, 0.0, 0.3337, 0.99, 1.2};
    int n_bad = 0;
    for (size_t si = 0; si < sizeof sigmas / sizeof *sigmas; si++)
        for (size_t mi = 0; mi < sizeof means / sizeof *means; mi++) {
            double logsum = -INFINITY;
            for (int k = 0; k < 256; k++) {
                double x = grid(k);
                long double want = ref_decoder(x, means[mi], sigmas[si]);
                double got = ddpm_discretized_gaussian_log_likelihood(x, means[mi], sigmas[si]);
                /* Simpson's error (< 1e-10 relative of the mass) plus double rounding of
                   a log of up to 5e4 */
                double tol = 1e-9 + 1e-12 * fabsl(want);
                if (!(fabs(got - (double)want) <= tol) && n_bad++ < 8)
                    fprintf(stderr, "bin %d (x %.6f) mean %g sigma %g: log p %.15g, integrated %.15Lg\n", k,
                            x, means[mi], sigmas[si], got, want);
                double hi = fmax(logsum, got);
                logsum = hi + log(exp(logsum - hi) + exp(got - hi));
            }
            /* the 256 bins cover the line: their masses sum to 1 */
            if (!(fabs(logsum) < 1e-12) && n_bad++ < 8)
                fprintf(stderr, "mean %g sigma %g: log of the total mass %.3g\n", means[mi], sigmas[si],
                        logsum);
        }
    assert_int_equal(n_bad, 0);
}

static void test_log_normal_cdf_is_accurate_in_both_tails(void **state)
{
    (void)state;
    /* against the same Simpson integration: the lower tail below erfc's underflow
       (z < -38), around the switch to the series at -37, and the upper tail where
       Phi is 1 - tiny */
    const double zs[] = {-300, -60, -38.5, -37.0001, -36.9999, -20, -3, -0.5, 0, 0.7, 5, 9, 30};
    for (size_t k = 0; k < sizeof zs / sizeof *zs; k++) {
        long double want = ref_log_mass(-INFINITY, zs[k]);
        double got = ddpm_log_normal_cdf(zs[k]);
        assert_close(got, (double)want, 1e-10 * (1 + fabsl(want)) + 1e-30);
    }
    assert_true(isinf(ddpm_log_normal_cdf(-INFINITY)) && ddpm_log_normal_cdf(-INFINITY) < 0);
    assert_true(ddpm_log_normal_cdf(INFINITY) == 0.0);
    /* the upper tail keeps its relative accuracy: log Phi(9) = -1.13e-19 */
    assert_close(ddpm_log_normal_cdf(9) / -1.1285884059538408e-19, 1.0, 1e-9);
}

static void test_prior_kl_matches_its_formula(void **state)
{
    (void)state;
    enum { D = 50 };
    float x0[D];
    for (int d = 0; d < D; d++)
        x0[d] = grid((d * 37) % 256);
    ddpm_schedule cos_s;
    assert_int_equal(ddpm_schedule_init(&cos_s, DDPM_SCHEDULE_COSINE, 500, 0, 0), 0);
    const ddpm_schedule *ss[] = {&sched, &cos_s};
    for (int k = 0; k < 2; k++) {
        long double abar = 1;
        for (int i = 0; i < ss[k]->T; i++)
            abar *= 1 - (long double)ss[k]->beta[i];
        long double want = 0;
        for (int d = 0; d < D; d++)
            want += ref_kl(sqrtl(abar) * x0[d], 1 - abar, 0, 1);
        double got = ddpm_prior_kl(x0, D, ss[k]);
        fprintf(stderr, "  L_T (%s, T %d): %.10g nats, reference %.10Lg\n", ddpm_schedule_name(ss[k]->kind),
                ss[k]->T, got, want);
        /* abar_T is 4e-5 (linear) and ~1e-9 (cosine): the terms cancel to ~abar^2 per
           dimension, which long double resolves to ~1e-19 / abar^2 relative */
        assert_close(got, (double)want, 1e-8 * fabsl(want) + 1e-17);
    }
    ddpm_schedule_free(&cos_s);
}

/* The term at index i from the textbook formulas, in long double, on the schedule
 * recomputed from its definition. */
static long double ref_term(const float *x0, const float *x_t, const float *eps, int i, int D, int var_beta,
                            int clip)
{
    ref_step r = ref_linear(i, 1000, 1e-4L, 0.02L);
    long double cx0 = sqrtl(r.abar_prev) * r.beta / (1 - r.abar);
    long double cxt = sqrtl(r.alpha) * (1 - r.abar_prev) / (1 - r.abar);
    long double post_var = (1 - r.abar_prev) / (1 - r.abar) * r.beta;
    ref_step r2 = ref_linear(1, 1000, 1e-4L, 0.02L);
    long double var = i == 0 ? (1 - r2.abar_prev) / (1 - r2.abar) * r2.beta : var_beta ? r.beta : post_var;
    long double sum = 0;
    for (int d = 0; d < D; d++) {
        long double x0p = (x_t[d] - sqrtl(1 - r.abar) * eps[d]) / sqrtl(r.abar);
        if (clip)
            x0p = x0p < -1 ? -1 : x0p > 1 ? 1 : x0p;
        long double mean =
            clip ? cx0 * x0p + cxt * x_t[d] : (x_t[d] - r.beta / sqrtl(1 - r.abar) * eps[d]) / sqrtl(r.alpha);
        if (i == 0)
            sum -= ref_decoder(x0[d], mean, sqrtl(var));
        else
            sum += ref_kl(cx0 * x0[d] + cxt * x_t[d], post_var, mean, var);
    }
    return sum;
}

static void test_bound_term_matches_textbook_formulas_for_both_variances_and_clipping(void **state)
{
    (void)state;
    enum { D = 24 };
    float x0[D], noise[D], eps[D], x_t[D];
    tu_fill_uniform(noise, D, 5, -2.5f, 2.5f);
    for (int d = 0; d < D; d++)
        x0[d] = grid((d * 53 + 7) % 256);
    x0[0] = -1.0f; /* both open ends */
    x0[1] = 1.0f;
    const int steps[] = {0, 1, 2, 17, 400, 998, 999};
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        int i = steps[k];
        ddpm_q_sample(x_t, x0, noise, &i, 1, D, &sched);
        /* eps_pred = the true noise plus an error, so that some predicted x0 leave [-1, 1] */
        tu_fill_uniform(eps, D, 100 + k, -0.3f, 0.3f);
        for (int d = 0; d < D; d++)
            eps[d] += noise[d];
        for (int var_beta = 0; var_beta < 2; var_beta++)
            for (int clip = 0; clip < 2; clip++) {
                long double want = ref_term(x0, x_t, eps, i, D, var_beta, clip);
                double got = ddpm_bound_term(x0, x_t, eps, i, D, &sched,
                                             var_beta ? DDPM_VAR_BETA : DDPM_VAR_BETA_TILDE, clip);
                /* double against long double on the same float inputs: ~1e-13 relative;
                   the decoder term carries the integration's 1e-10 */
                double tol = 1e-9 * (1 + fabsl(want));
                if (!(fabs(got - (double)want) <= tol))
                    fprintf(stderr, "i %d var %s clip %d: term %.15g, reference %.15Lg\n", i,
                            var_beta ? "beta" : "beta~", clip, got, want);
                assert_close(got, (double)want, tol);
            }
    }
    /* t = 1: both variance choices give the same decoder (beta~_2) */
    int i0 = 0;
    ddpm_q_sample(x_t, x0, noise, &i0, 1, D, &sched);
    assert_true(ddpm_bound_term(x0, x_t, eps, 0, D, &sched, DDPM_VAR_BETA, 1) ==
                ddpm_bound_term(x0, x_t, eps, 0, D, &sched, DDPM_VAR_BETA_TILDE, 1));
    assert_true(ddpm_reverse_var(&sched, DDPM_VAR_BETA, 0) == sched.posterior_var[1]);
}

/* ------------------------------------------------ the bound over stub models */

/* Data x0[d] ~ N(mu[d], s2[d]), independent dimensions: then x_t ~ N(sqrt(abar) mu,
 * abar s2 + 1 - abar) and the exact eps prediction is
 * E[eps | x_t] = sqrt(1-abar) (x_t - sqrt(abar) mu) / (abar s2 + 1 - abar), times
 * `scale` (1: exact; other values make an imperfect model). */
typedef struct {
    const ddpm_schedule *s;
    const double *mu, *s2;
    size_t D;
    double scale;
} gauss_model;

static void gauss_model_eps(void *opaque, float *eps, const float *x_t, const int *i, int B)
{
    const gauss_model *g = opaque;
    for (int b = 0; b < B; b++) {
        double abar = g->s->abar[i[b]];
        for (size_t d = 0; d < g->D; d++) {
            size_t k = (size_t)b * g->D + d;
            double v = abar * g->s2[d] + 1 - abar;
            eps[k] = (float)(g->scale * sqrt(1 - abar) * (x_t[k] - sqrt(abar) * g->mu[d]) / v);
        }
    }
}

enum { GD = 16 };
static double g_mu[GD], g_s2[GD];

/* n images from the Gaussian data set (continuous values, not on the grid). */
static float *gauss_data(int n, uint64_t seed)
{
    for (int d = 0; d < GD; d++) {
        g_mu[d] = -0.5 + d / (double)(GD - 1);
        g_s2[d] = pow(0.1 + 0.4 * ((d * 7) % GD) / (GD - 1), 2);
    }
    float *x = tu_alloc((size_t)n * GD);
    ddpm_rng r;
    ddpm_rng_init(&r, seed, 77);
    ddpm_rng_normal_fill(&r, x, (size_t)n * GD);
    for (int k = 0; k < n; k++)
        for (int d = 0; d < GD; d++)
            x[(size_t)k * GD + d] = (float)(g_mu[d] + sqrt(g_s2[d]) * x[(size_t)k * GD + d]);
    return x;
}

/* E[L_i] (nats) of one image for i >= 1 under the exact eps, no clipping:
 * mu~(x0, x_t) - mu_theta(x_t) = coef_x0 (x0 - E[x0|x_t]) with
 * Var(x0|x_t) = s2 (1-abar) / (abar s2 + 1 - abar) per dimension. */
static double analytic_term(int i, ddpm_var_kind var)
{
    ref_step r = ref_linear(i, 1000, 1e-4L, 0.02L);
    double cx0 = (double)(sqrtl(r.abar_prev) * r.beta / (1 - r.abar));
    double post_var = (double)((1 - r.abar_prev) / (1 - r.abar) * r.beta);
    double v = var == DDPM_VAR_BETA ? (double)r.beta : post_var, abar = (double)r.abar, sum = 0;
    for (int d = 0; d < GD; d++) {
        double cond_var = g_s2[d] * (1 - abar) / (abar * g_s2[d] + 1 - abar);
        sum += cx0 * cx0 * cond_var / (2 * v) + 0.5 * (post_var / v - 1 - log(post_var / v));
    }
    return sum;
}

static void test_exact_eps_of_a_gaussian_data_set_gives_the_analytic_bound(void **state)
{
    (void)state;
    enum { N = 400 };
    float *x0 = gauss_data(N, 3);
    gauss_model g = {&sched, g_mu, g_s2, GD, 1.0};
    const double to_bpd = 1.0 / (GD * M_LN2);
    for (int v = 0; v < 2; v++) {
        ddpm_bound_config c;
        ddpm_bound_config_default(&c);
        c.var = v ? DDPM_VAR_BETA_TILDE : DDPM_VAR_BETA;
        c.clip_x0 = 0;
        c.batch = 100;
        ddpm_bound_result r;
        assert_int_equal(ddpm_bound(&r, x0, N, GD, &sched, &c, gauss_model_eps, &g, NULL, NULL), 0);
        assert_int_equal(r.n_evals, (long)N * 1000);
        double vb_want = 0;
        int n_bad = 0;
        for (int i = 1; i < 1000; i++) {
            double want = analytic_term(i, c.var) * to_bpd;
            vb_want += want;
            assert_int_equal(r.term_n[i], N);
            /* each index's mean over 400 images within 5 standard errors (999 checks:
               the largest of 999 normal deviations is ~3.3); an index off by one moves
               the small-t terms by 20% (beta_2 / beta_1), about 10 standard errors */
            if (!(fabs(r.term_mean[i] - want) <= 5 * r.term_se[i]) && n_bad++ < 5)
                fprintf(stderr, "var %d, t %d: term %.6g bits/dim, analytic %.6g, se %.3g\n", v, i + 1,
                        r.term_mean[i], want, r.term_se[i]);
        }
        /* L_T: E over the data of 0.5 (abar (mu^2 + s2) + (1 - abar) - 1 - log(1 - abar)) per dimension */
        double abar = sched.abar[999], prior_want = 0;
        for (int d = 0; d < GD; d++)
            prior_want += 0.5 * (abar * (g_mu[d] * g_mu[d] + g_s2[d]) - abar - log1p(-abar));
        prior_want *= to_bpd;
        fprintf(stderr,
                "  var %s: sum L_{t-1} %.5f +- %.5f bits/dim (analytic %.5f), L_T %.3g (analytic %.3g)\n",
                v ? "beta~" : "beta", r.vb.mean, r.vb.se, vb_want, r.prior.mean, prior_want);
        assert_int_equal(n_bad, 0);
        assert_true(fabs(r.vb.mean - vb_want) <= 4 * r.vb.se);
        assert_true(fabs(r.prior.mean - prior_want) <= 4 * r.prior.se);
        ddpm_bound_result_free(&r);
    }
    free(x0);
}

static void test_held_out_l_simple_of_the_exact_eps_is_the_analytic_loss(void **state)
{
    (void)state;
    enum { N = 4000 };
    float *x0 = gauss_data(N, 4);
    gauss_model g = {&sched, g_mu, g_s2, GD, 1.0};
    ddpm_estimate e;
    assert_int_equal(ddpm_eval_l_simple(&e, x0, N, GD, &sched, 64, 0, 0, gauss_model_eps, &g, NULL, NULL), 0);
    /* E[(eps - E[eps|x_t])^2] = Var(eps|x_t) = abar s2 / (abar s2 + 1 - abar), averaged over t and d */
    double want = 0;
    for (int i = 0; i < 1000; i++)
        for (int d = 0; d < GD; d++) {
            double abar = sched.abar[i];
            want += abar * g_s2[d] / (abar * g_s2[d] + 1 - abar) / (1000.0 * GD);
        }
    fprintf(stderr, "  L_simple %.5f +- %.5f, analytic %.5f\n", e.mean, e.se, want);
    assert_true(fabs(e.mean - want) <= 4 * e.se);
    free(x0);
}

static void test_mc_estimate_averages_to_the_exact_bound(void **state)
{
    (void)state;
    enum { N = 32, SEEDS_EXACT = 8, SEEDS_MC = 200, K = 8 };
    float *x0 = gauss_data(N, 5);
    /* an imperfect model, so that the terms vary strongly over t */
    gauss_model g = {&sched, g_mu, g_s2, GD, 0.9};
    ddpm_bound_config c;
    ddpm_bound_config_default(&c);
    c.clip_x0 = 0;
    double ex[SEEDS_EXACT], mc[SEEDS_MC];
    /* the same images each time: both are unbiased for the same conditional mean,
       so the spread over seeds is the right yardstick */
    for (int s = 0; s < SEEDS_EXACT; s++) {
        ddpm_bound_result r;
        c.seed = 1000 + (uint64_t)s;
        assert_int_equal(ddpm_bound(&r, x0, N, GD, &sched, &c, gauss_model_eps, &g, NULL, NULL), 0);
        ex[s] = r.total.mean;
        ddpm_bound_result_free(&r);
    }
    c.mc = K;
    double se_mc_reported = 0;
    for (int s = 0; s < SEEDS_MC; s++) {
        ddpm_bound_result r;
        c.seed = (uint64_t)s;
        assert_int_equal(ddpm_bound(&r, x0, N, GD, &sched, &c, gauss_model_eps, &g, NULL, NULL), 0);
        assert_int_equal(r.n_evals, (long)N * (K + 1));
        assert_int_equal(r.term_n[0], N); /* L_0 once per image, exactly */
        mc[s] = r.total.mean;
        se_mc_reported += r.total.se / SEEDS_MC;
        ddpm_bound_result_free(&r);
    }
    double m_ex = 0, m_mc = 0, v_ex = 0, v_mc = 0;
    for (int s = 0; s < SEEDS_EXACT; s++)
        m_ex += ex[s] / SEEDS_EXACT;
    for (int s = 0; s < SEEDS_MC; s++)
        m_mc += mc[s] / SEEDS_MC;
    for (int s = 0; s < SEEDS_EXACT; s++)
        v_ex += (ex[s] - m_ex) * (ex[s] - m_ex) / (SEEDS_EXACT - 1);
    for (int s = 0; s < SEEDS_MC; s++)
        v_mc += (mc[s] - m_mc) * (mc[s] - m_mc) / (SEEDS_MC - 1);
    double se = sqrt(v_ex / SEEDS_EXACT + v_mc / SEEDS_MC);
    fprintf(stderr,
            "  exact %.5f (sd over seeds %.2g), mc K=%d %.5f (sd over seeds %.2g, reported se %.2g)\n", m_ex,
            sqrt(v_ex), K, m_mc, sqrt(v_mc), se_mc_reported);
    assert_true(fabs(m_mc - m_ex) <= 4 * se);
    /* the reported standard error (over images) covers the spread of the draws:
       it also holds the spread of the images, so it is at least as large */
    assert_true(se_mc_reported >= 0.8 * sqrt(v_mc));
    free(x0);
}

static void test_bound_and_l_simple_do_not_depend_on_the_batch_split(void **state)
{
    (void)state;
    enum { N = 5 };
    float *x0 = gauss_data(N, 6);
    gauss_model g = {&sched, g_mu, g_s2, GD, 0.7};
    ddpm_bound_config c;
    ddpm_bound_config_default(&c);
    c.seed = 42;
    for (int mc = 0; mc <= 3; mc += 3) {
        c.mc = mc;
        ddpm_bound_result r[3];
        const int batches[3] = {1, 7, 5000};
        for (int k = 0; k < 3; k++) {
            c.batch = batches[k];
            assert_int_equal(ddpm_bound(&r[k], x0, N, GD, &sched, &c, gauss_model_eps, &g, NULL, NULL), 0);
        }
        for (int k = 1; k < 3; k++) {
            assert_memory_equal(&r[0].total, &r[k].total, sizeof r[0].total);
            assert_memory_equal(&r[0].vb, &r[k].vb, sizeof r[0].vb);
            assert_memory_equal(&r[0].decoder, &r[k].decoder, sizeof r[0].decoder);
            assert_memory_equal(r[0].term_n, r[k].term_n, 1000 * sizeof(long));
        }
        for (int k = 0; k < 3; k++)
            ddpm_bound_result_free(&r[k]);
    }
    ddpm_estimate a, b;
    assert_int_equal(ddpm_eval_l_simple(&a, x0, N, GD, &sched, 1, 9, 0, gauss_model_eps, &g, NULL, NULL), 0);
    assert_int_equal(ddpm_eval_l_simple(&b, x0, N, GD, &sched, 4, 9, 0, gauss_model_eps, &g, NULL, NULL), 0);
    assert_memory_equal(&a, &b, sizeof a);
    free(x0);
}

static void nan_eps(void *ctx, float *eps, const float *x_t, const int *i, int B)
{
    (void)ctx;
    (void)x_t;
    (void)i;
    (void)B;
    eps[0] = NAN;
}

static void test_bad_settings_and_non_finite_models_are_refused(void **state)
{
    (void)state;
    float x0[GD] = {0};
    gauss_model g = {&sched, g_mu, g_s2, GD, 1.0};
    ddpm_bound_config c;
    ddpm_bound_config_default(&c);
    ddpm_bound_result r;
    ddpm_schedule one;
    assert_int_equal(ddpm_schedule_init(&one, DDPM_SCHEDULE_LINEAR, 1, 1e-4, 0.02), 0);
    assert_int_equal(ddpm_bound(&r, x0, 1, GD, &one, &c, gauss_model_eps, &g, NULL, NULL), DDPM_EINVAL);
    assert_non_null(strstr(ddpm_last_error(), "T >= 2"));
    ddpm_schedule_free(&one);
    assert_int_equal(ddpm_bound(&r, x0, 0, GD, &sched, &c, gauss_model_eps, &g, NULL, NULL), DDPM_EINVAL);
    c.batch = 0;
    assert_int_equal(ddpm_bound(&r, x0, 1, GD, &sched, &c, gauss_model_eps, &g, NULL, NULL), DDPM_EINVAL);
    c.batch = 64;
    c.mc = 2;
    assert_int_equal(ddpm_bound(&r, x0, 1, GD, &sched, &c, nan_eps, NULL, NULL, NULL), DDPM_ENAN);
    ddpm_estimate e;
    assert_int_equal(ddpm_eval_l_simple(&e, x0, 1, GD, &sched, 4, 0, 0, nan_eps, NULL, NULL, NULL), DDPM_ENAN);
}

static void test_pick_takes_a_prefix_of_one_seeded_permutation(void **state)
{
    (void)state;
    int a[10], b[4], seen[10] = {0};
    assert_int_equal(ddpm_eval_pick(a, 10, 10, 3), 0);
    assert_int_equal(ddpm_eval_pick(b, 4, 10, 3), 0);
    assert_memory_equal(a, b, sizeof b);
    for (int k = 0; k < 10; k++)
        seen[a[k]]++;
    for (int k = 0; k < 10; k++)
        assert_int_equal(seen[k], 1);
    assert_int_equal(ddpm_eval_pick(a, 11, 10, 3), DDPM_EINVAL);
    assert_int_equal(ddpm_eval_pick(a, 0, 10, 3), DDPM_EINVAL);
}

/* ------------------------------------------------ the reference network */

/* tests/data/bound_reference.safetensors is written by
 * tests/reference/make_bound_reference.py (see its docstring): the tiny U-Net of
 * make_unet_reference.py with random weights, 3 images on the grid (with -1 and 1),
 * the noise of every (image, step), and the bound computed with numpy/PyTorch in
 * float64 (decoder masses with mpmath at 50 digits) for both variances, with and
 * without clipping. The C bound runs the same network in float32 on the same
 * x_0 and noise.
 *
 * Tolerance: the script measures that running its network in float32 moves the
 * bits/dim by at most 2.4e-8 relative. The C code also forms x_t in float32 and
 * sums in other orders; measured here (the test prints it): 7.1e-8 relative on
 * the totals and 2.4e-7 of |term| + 1e-4 bits/dim on single terms. The bounds
 * are 1e-6 relative on the four totals and 2e-5 + 1e-6 |term| bits/dim on each
 * term, over 10x the measured noise; a wrong index, variance, clip or bin moves
 * them far more (beta_1 instead of beta~_2 as the t = 1 variance, or sigma^2 of
 * step t - 1, each fail this test: tried). */
#define BOUND_REF DDPM_TEST_DATA "/bound_reference.safetensors"

typedef struct {
    const float *noise; /* [n, T, D] */
    long first;         /* image index of the run's image 0 */
    int T;
} ref_noise_ctx;

static void ref_noise(void *opaque, float *eps, long image, int i, size_t D)
{
    const ref_noise_ctx *c = opaque;
    memcpy(eps, c->noise + ((size_t)(c->first + image) * c->T + i) * D, D * sizeof(float));
}

static int json_int(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("%s: config has no number %s", BOUND_REF, key);
    return v->valueint;
}

static int json_list(const cJSON *o, const char *key, int *out)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key), *v;
    int n = 0;
    cJSON_ArrayForEach(v, a)
    {
        if (n < DDPM_MAX_LEVELS)
            out[n] = v->valueint;
        n++;
    }
    if (!cJSON_IsArray(a) || n > DDPM_MAX_LEVELS)
        fail_msg("%s: config %s is not a short list", BOUND_REF, key);
    return n;
}

static void test_bound_of_the_reference_unet_matches_pytorch(void **state)
{
    (void)state;
    ddpm_st_file *f;
    if (ddpm_safetensors_open(&f, BOUND_REF))
        fail_msg("%s (run tests/reference/make_bound_reference.py)", ddpm_last_error());
    const char *cfg_text = ddpm_safetensors_meta(f, "config"),
               *exp_text = ddpm_safetensors_meta(f, "expected");
    assert_non_null(cfg_text);
    assert_non_null(exp_text);
    cJSON *cfg = cJSON_Parse(cfg_text), *expected = cJSON_Parse(exp_text);
    assert_non_null(cfg);
    assert_non_null(expected);
    ddpm_unet_config uc;
    memset(&uc, 0, sizeof uc);
    uc.in_channels = json_int(cfg, "in_channels");
    uc.image_size = json_int(cfg, "image_size");
    uc.ch = json_int(cfg, "ch");
    uc.n_levels = json_list(cfg, "ch_mult", uc.ch_mult);
    uc.num_res_blocks = json_int(cfg, "num_res_blocks");
    uc.n_attn = json_list(cfg, "attn_res", uc.attn_res);
    uc.groups = json_int(cfg, "groups");
    int T = json_int(cfg, "timesteps"), n = json_int(cfg, "n_images");
    double b0 = cJSON_GetObjectItemCaseSensitive(cfg, "beta_start")->valuedouble;
    double b1 = cJSON_GetObjectItemCaseSensitive(cfg, "beta_end")->valuedouble;
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &uc), 0);
    float *params = tu_alloc(net->n_params);
    for (int k = 0; k < net->n_tensors; k++)
        if (ddpm_safetensors_read_f32(f, net->tensors[k].name, params + net->tensors[k].offset,
                                      net->tensors[k].n))
            fail_msg("%s", ddpm_last_error());
    size_t D = (size_t)uc.in_channels * uc.image_size * uc.image_size;
    float *x0 = tu_alloc((size_t)n * D), *noise = tu_alloc((size_t)n * T * D),
          *terms = tu_alloc((size_t)n * T);
    assert_int_equal(ddpm_safetensors_read_f32(f, "x0", x0, (size_t)n * D), 0);
    assert_int_equal(ddpm_safetensors_read_f32(f, "noise", noise, (size_t)n * T * D), 0);
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, T, b0, b1), 0);
    ddpm_model model;
    assert_int_equal(ddpm_model_from_net(&model, net, params, &s), 0);
    ref_noise_ctx nctx = {noise, 0, T};
    const double to_bpd = 1.0 / ((double)D * M_LN2);
    double worst_total = 0, worst_term = 0;
    int n_bad = 0;
    for (int v = 0; v < 2; v++)
        for (int clip = 1; clip >= 0; clip--) {
            char key[64];
            snprintf(key, sizeof key, "%s.%s", v ? "beta-tilde" : "beta", clip ? "clip" : "noclip");
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(expected, key);
            assert_non_null(e);
            char tname[80];
            snprintf(tname, sizeof tname, "terms.%s", key);
            assert_int_equal(ddpm_safetensors_read_f32(f, tname, terms, (size_t)n * T), 0);
            ddpm_bound_config c;
            ddpm_bound_config_default(&c);
            c.var = v ? DDPM_VAR_BETA_TILDE : DDPM_VAR_BETA;
            c.clip_x0 = clip;
            c.batch = 7; /* mixed steps in one forward pass */
            c.noise_fn = ref_noise;
            c.noise_ctx = &nctx;
            /* all images at once: the four totals */
            nctx.first = 0;
            ddpm_bound_result r;
            assert_int_equal(ddpm_bound(&r, x0, n, D, &s, &c, ddpm_model_eps, &model, NULL, NULL), 0);
            const char *names[4] = {"total", "prior", "vb", "decoder"};
            const double got[4] = {r.total.mean, r.prior.mean, r.vb.mean, r.decoder.mean};
            for (int q = 0; q < 4; q++) {
                double want = cJSON_GetObjectItemCaseSensitive(e, names[q])->valuedouble;
                double rel = fabs(got[q] - want) / fabs(want);
                worst_total = fmax(worst_total, rel);
                if (!(rel <= 1e-6) && n_bad++ < 8)
                    fprintf(stderr, "%s %s: %.9f bits/dim, PyTorch %.9f (rel. %.2g)\n", key, names[q], got[q],
                            want, rel);
            }
            ddpm_bound_result_free(&r);
            /* one image at a time: every term of every image */
            for (int k = 0; k < n; k++) {
                nctx.first = k;
                assert_int_equal(
                    ddpm_bound(&r, x0 + (size_t)k * D, 1, D, &s, &c, ddpm_model_eps, &model, NULL, NULL), 0);
                for (int i = 0; i < T; i++) {
                    double want = terms[(size_t)k * T + i] * to_bpd, diff = fabs(r.term_mean[i] - want);
                    worst_term = fmax(worst_term, diff / (1e-4 + fabs(want)));
                    if (!(diff <= 2e-5 + 1e-6 * fabs(want)) && n_bad++ < 8)
                        fprintf(stderr, "%s image %d t %d: %.9g bits/dim, PyTorch %.9g\n", key, k, i + 1,
                                r.term_mean[i], want);
                }
                ddpm_bound_result_free(&r);
            }
        }
    fprintf(stderr, "  worst relative difference: of a total %.2g, of a term %.2g\n", worst_total,
            worst_term);
    assert_int_equal(n_bad, 0);
    cJSON_Delete(cfg);
    cJSON_Delete(expected);
    ddpm_model_close(&model);
    ddpm_schedule_free(&s);
    ddpm_unet_free(net);
    free(params);
    free(x0);
    free(noise);
    free(terms);
    ddpm_safetensors_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normal_kl_matches_closed_form_on_random_means_and_variances),
        cmocka_unit_test(test_decoder_matches_integrated_density_in_every_bin_including_open_ends),
        cmocka_unit_test(test_log_normal_cdf_is_accurate_in_both_tails),
        cmocka_unit_test(test_prior_kl_matches_its_formula),
        cmocka_unit_test(test_bound_term_matches_textbook_formulas_for_both_variances_and_clipping),
        cmocka_unit_test(test_exact_eps_of_a_gaussian_data_set_gives_the_analytic_bound),
        cmocka_unit_test(test_held_out_l_simple_of_the_exact_eps_is_the_analytic_loss),
        cmocka_unit_test(test_mc_estimate_averages_to_the_exact_bound),
        cmocka_unit_test(test_bound_and_l_simple_do_not_depend_on_the_batch_split),
        cmocka_unit_test(test_bad_settings_and_non_finite_models_are_refused),
        cmocka_unit_test(test_pick_takes_a_prefix_of_one_seeded_permutation),
        cmocka_unit_test(test_bound_of_the_reference_unet_matches_pytorch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
