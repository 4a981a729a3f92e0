/* testutil.h: shared helpers for the cmocka tests (header-only). */
#ifndef DDPM_TESTUTIL_H
#define DDPM_TESTUTIL_H

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ddpm/rng.h"

static inline void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    ddpm_rng rng;
    ddpm_rng_init(&rng, seed, 99);
    ddpm_rng_uniform_fill(&rng, x, n);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * x[i];
}

static inline float *tu_alloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p)
        abort();
    return p;
}

/* A scalar function of the parameters under test, evaluated in double: the tests
 * use L = sum_i r_i * out_i for a fixed random projection r. */
typedef double (*tu_scalar_fn)(void *ctx);

/* Central finite differences of f with respect to every element of x, compared
 * with analytic[]: passes when |fd - an| <= atol + rtol * max(|fd|, |an|) for every
 * element. Prints the name, the worst element and the first values on failure.
 * Returns the number of failing elements. */
static inline int tu_check_grad(const char *name, float *x, const float *analytic, size_t n,
                                tu_scalar_fn f, void *ctx, float h, double atol, double rtol)
{
    int n_bad = 0;
    double worst = 0.0;
    size_t worst_i = 0;
    double worst_fd = 0, worst_an = 0;
    for (size_t i = 0; i < n; i++) {
        float saved = x[i];
        x[i] = saved + h;
        double fp = f(ctx);
        x[i] = saved - h;
        double fm = f(ctx);
        x[i] = saved;
        double fd = (fp - fm) / (2.0 * (double)h);
        double an = analytic[i];
        double diff = fabs(fd - an);
        double allowed = atol + rtol * fmax(fabs(fd), fabs(an));
        if (diff > allowed)
            n_bad++;
        if (diff - allowed > worst || i == 0) {
            worst = diff - allowed;
            worst_i = i;
            worst_fd = fd;
            worst_an = an;
        }
    }
    if (n_bad) {
        fprintf(stderr, "gradient check %s: %d of %zu elements off; worst at %zu: fd %.8g analytic %.8g\n",
                name, n_bad, n, worst_i, worst_fd, worst_an);
        for (size_t i = 0; i < n && i < 6; i++)
            fprintf(stderr, "  [%zu] analytic %.8g\n", i, (double)analytic[i]);
    }
    return n_bad;
}

/* max |a - b| over n elements, with the first index where it occurs. */
static inline double tu_max_abs_diff(const float *a, const float *b, size_t n, size_t *at)
{
    double m = 0;
    size_t where = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) {
            m = d;
            where = i;
        }
    }
    if (at)
        *at = where;
    return m;
}

/* |a - b| <= tol, printing both values on failure (cmocka 1.1.6 has no
 * assert_double_equal). Include <cmocka.h> before this header to use it. */
#ifdef cmocka_unit_test
#define assert_close(a, b, tol)                                                              \
    do {                                                                                     \
        double tu_a_ = (double)(a), tu_b_ = (double)(b), tu_t_ = (double)(tol);              \
        if (!(fabs(tu_a_ - tu_b_) <= tu_t_)) {                                               \
            fprintf(stderr, "%s:%d: %s = %.12g, %s = %.12g, |diff| %.3g > %.3g\n", __FILE__,  \
                    __LINE__, #a, tu_a_, #b, tu_b_, fabs(tu_a_ - tu_b_), tu_t_);              \
            fail();                                                                          \
        }                                                                                    \
    } while (0)
#endif

#endif
