/* Tests of inverted dropout: the kept fraction and scale, the Philox lane layout
 * and the saved mask bits, reproducibility, independence of the thread count,
 * p = 0, and the backward pass from the saved bits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/ops.h"
#include "ddpm/rng.h"
#include "testutil.h"

enum { BIG = 1 << 20 };

/* Forward, and the mask it applied as floats (the forward of ones, not saving its
 * bits) and as the bits it saved (bits may be NULL). */
static void forward_with_bits(float *out, float *mask, uint8_t *bits, const float *x, float p, size_t n,
                              uint64_t seed, uint64_t counter)
{
    for (size_t i = 0; i < n; i++)
        mask[i] = 1.0f;
    ddpm_dropout_forward(mask, NULL, mask, p, n, seed, counter);
    ddpm_dropout_forward(out, bits, x, p, n, seed, counter);
}

static void forward_with_mask(float *out, float *mask, const float *x, float p, size_t n, uint64_t seed,
                              uint64_t counter)
{
    forward_with_bits(out, mask, NULL, x, p, n, seed, counter);
}

static int bit(const uint8_t *bits, size_t i)
{
    return (bits[i / 8] >> (i % 8)) & 1;
}

static void check_kept_fraction_and_scale(float p)
{
    float *x = tu_alloc(BIG), *out = tu_alloc(BIG), *mask = tu_alloc(BIG);
    tu_fill_uniform(x, BIG, 1, 0.5f, 1.5f); /* never 0, so a dropped element is visible */
    forward_with_mask(out, mask, x, p, BIG, 42, 1000);
    size_t kept = 0;
    const double scale = 1.0 / (1.0 - (double)p);
    for (size_t i = 0; i < BIG; i++) {
        if (mask[i] != 0.0f) {
            kept++;
            /* the scale 1/(1-p) is rounded to float once, out = x * scale once more */
            assert_true(fabs(mask[i] - scale) <= 1e-7 * scale);
            assert_true(fabs(out[i] - x[i] * scale) <= 2.4e-7 * x[i] * scale);
        } else {
            assert_true(out[i] == 0.0f);
        }
    }
    /* binomial standard deviation of the fraction: sqrt(p(1-p)/n) <= 4.9e-4 at
     * n = 2^20; 6 sigma (<= 2.9e-3) cannot fail by chance, and the sequence is fixed */
    double frac = (double)kept / BIG, sd = sqrt((double)p * (1 - p) / BIG);
    if (fabs(frac - (1.0 - p)) > 6 * sd)
        fprintf(stderr, "p %g: kept fraction %.6f, expected %.6f +- %.2g\n", (double)p, frac,
                1.0 - p, 6 * sd);
    assert_true(fabs(frac - (1.0 - p)) <= 6 * sd);
    free(x), free(out), free(mask);
}

static void test_dropout_keeps_one_minus_p_and_scales_by_inverse_keep(void **state)
{
    (void)state;
    check_kept_fraction_and_scale(0.1f);
    check_kept_fraction_and_scale(0.5f);
    check_kept_fraction_and_scale(0.9f);
}

static void test_dropout_mask_is_philox_lane_i_mod_4_of_counter_plus_i_div_4(void **state)
{
    (void)state;
    enum { N = 103 }; /* not a multiple of 4: the last block is partial */
    const float p = 0.3f;
    float x[N], out[N], mask[N];
    uint8_t bits[(N + 7) / 8];
    assert_int_equal(ddpm_dropout_mask_bytes(N), sizeof bits);
    for (int i = 0; i < N; i++)
        x[i] = 1.0f;
    forward_with_bits(out, mask, bits, x, p, N, 7, 55);
    for (int i = 0; i < N; i++) {
        uint32_t w[4];
        ddpm_philox(w, 7, DDPM_STREAM_DROPOUT, 55 + (uint64_t)i / 4);
        float u = ((float)(w[i % 4] >> 8) + 0.5f) / 16777216.0f;
        assert_true((mask[i] == 0.0f) == (u < p));
        assert_int_equal(bit(bits, i), !(u < p)); /* the saved bit: kept */
    }
    /* the unused bits of the last byte (N % 8 = 7 used) are clear */
    assert_int_equal(bits[N / 8] >> (N % 8), 0);
}

static void test_dropout_same_seed_and_counter_give_the_same_mask(void **state)
{
    (void)state;
    enum { N = 4099 };
    float *x = tu_alloc(N), *out = tu_alloc(N), *m1 = tu_alloc(N), *m2 = tu_alloc(N);
    tu_fill_uniform(x, N, 2, -1.0f, 1.0f);
    forward_with_mask(out, m1, x, 0.25f, N, 9, 123);
    forward_with_mask(out, m2, x, 0.25f, N, 9, 123);
    assert_memory_equal(m1, m2, N * sizeof(float));
    /* another counter or another seed gives another mask */
    forward_with_mask(out, m2, x, 0.25f, N, 9, 124);
    assert_memory_not_equal(m1, m2, N * sizeof(float));
    forward_with_mask(out, m2, x, 0.25f, N, 10, 123);
    assert_memory_not_equal(m1, m2, N * sizeof(float));
    free(x), free(out), free(m1), free(m2);
}

static void test_dropout_mask_does_not_depend_on_thread_count(void **state)
{
    (void)state;
    /* BIG is above the size where the loop goes parallel */
    float *x = tu_alloc(BIG), *o1 = tu_alloc(BIG), *o2 = tu_alloc(BIG);
    float *m1 = tu_alloc(BIG), *m2 = tu_alloc(BIG);
    uint8_t *b1 = malloc(BIG / 8), *b2 = malloc(BIG / 8);
    assert_non_null(b1);
    assert_non_null(b2);
    tu_fill_uniform(x, BIG, 3, -1.0f, 1.0f);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    forward_with_bits(o1, m1, b1, x, 0.1f, BIG, 11, 77);
    omp_set_num_threads(2);
    forward_with_bits(o2, m2, b2, x, 0.1f, BIG, 11, 77);
    omp_set_num_threads(saved);
    assert_memory_equal(m1, m2, BIG * sizeof(float));
    assert_memory_equal(o1, o2, BIG * sizeof(float));
    assert_memory_equal(b1, b2, BIG / 8);
    free(x), free(o1), free(o2), free(m1), free(m2), free(b1), free(b2);
}

static void test_dropout_p_zero_is_identity_with_unit_mask_in_place(void **state)
{
    (void)state;
    enum { N = 1001 };
    float x[N], x0[N], mask[N];
    tu_fill_uniform(x0, N, 4, -1.0f, 1.0f);
    memcpy(x, x0, sizeof x);
    forward_with_mask(x, mask, x, 0.0f, N, 5, 0);
    assert_memory_equal(x, x0, sizeof x);
    for (int i = 0; i < N; i++)
        assert_true(mask[i] == 1.0f);
}

static void test_dropout_in_place_equals_out_of_place(void **state)
{
    (void)state;
    enum { N = 1001 };
    float x[N], out[N], m1[N], m2[N];
    tu_fill_uniform(x, N, 6, -1.0f, 1.0f);
    forward_with_mask(out, m1, x, 0.2f, N, 5, 9);
    forward_with_mask(x, m2, x, 0.2f, N, 5, 9);
    assert_memory_equal(x, out, sizeof x);
    assert_memory_equal(m1, m2, sizeof m1);
}

typedef struct {
    float *x, *out, *mask, *r;
    size_t n;
    uint8_t *bits;
} drop_case;

static double drop_loss(void *ctx)
{
    drop_case *c = ctx;
    forward_with_bits(c->out, c->mask, c->bits, c->x, 0.25f, c->n, 13, 31);
    double L = 0;
    for (size_t i = 0; i < c->n; i++)
        L += (double)c->r[i] * c->out[i];
    return L;
}

static void test_dropout_backward_matches_finite_differences_and_accumulates(void **state)
{
    (void)state;
    enum { N = 2 * 6 * 35 };
    uint8_t bits[(N + 7) / 8];
    drop_case c = {tu_alloc(N), tu_alloc(N), tu_alloc(N), tu_alloc(N), N, bits};
    float *din = tu_alloc(N), *din2 = tu_alloc(N);
    tu_fill_uniform(c.x, N, 7, -1.0f, 1.0f);
    tu_fill_uniform(c.r, N, 8, -1.0f, 1.0f);
    drop_loss(&c);
    ddpm_dropout_backward(din, 1.0f, c.r, bits, 0.25f, N);
    /* out = x * 4/3 (float): linear, so only rounding remains: x +- h and x * scale
     * each rounded (rel 6e-8, |out| < 1.4) give <~ 4e-7 / 2h = 1.3e-5 with h = 2^-6.
     * abs 3e-5 + rel 1e-5; a wrong mask or index is off by O(1). */
    assert_int_equal(tu_check_grad("dropout din", c.x, din, N, drop_loss, &c, 1.0f / 64, 3e-5, 1e-5), 0);
    for (size_t i = 0; i < N; i++)
        din2[i] = 1.0f - (float)(i % 3);
    ddpm_dropout_backward(din2, 1.0f, c.r, bits, 0.25f, N);
    for (size_t i = 0; i < N; i++) {
        float want = (1.0f - (float)(i % 3)) + din[i];
        assert_true(fabsf(din2[i] - want) <= 1e-6f * (1.0f + fabsf(want)));
    }
    ddpm_dropout_backward(NULL, 1.0f, c.r, bits, 0.25f, N);
    free(c.x), free(c.out), free(c.mask), free(c.r), free(din), free(din2);
}

/* Backward applies the forward's saved mask: beta = 0 gives exactly dout * mask
 * (and never reads din), beta = 1 adds it; beta = 0 on forward's input gives
 * forward's output to the bit (the network's recompute of it); with p = 0 the
 * mask is all ones and is not read. */
static void test_dropout_backward_applies_the_saved_mask_beta0_overwrites(void **state)
{
    (void)state;
    enum { N = 301 };
    float x[N], out[N], mask[N], d[N], want[N] = {0}, got[N];
    uint8_t bits[(N + 7) / 8];
    tu_fill_uniform(x, N, 12, -1.0f, 1.0f);
    for (int i = 0; i < N; i++)
        d[i] = (float)(i % 13) - 6.5f, got[i] = NAN;
    forward_with_bits(out, mask, bits, x, 0.4f, N, 5, 3);
    ddpm_dropout_backward(want, 1.0f, d, bits, 0.4f, N);
    ddpm_dropout_backward(got, 0.0f, d, bits, 0.4f, N);
    for (int i = 0; i < N; i++)
        if (got[i] != want[i] || got[i] != d[i] * mask[i])
            fail_msg("din[%d] = %g and %g, want %g", i, (double)got[i], (double)want[i], (double)(d[i] * mask[i]));
    memcpy(got, x, sizeof got);
    ddpm_dropout_backward(got, 0.0f, got, bits, 0.4f, N);
    assert_memory_equal(got, out, sizeof got);
    ddpm_dropout_backward(got, 0.0f, d, NULL, 0.0f, N);
    assert_memory_equal(got, d, sizeof got);
}

/* The backward, vectorised per mask byte, gives the bytes of the element-by-element
 * formula din = beta din + dout * (bit i of the mask ? 1/(1-p) : 0): n with and
 * without a partial last byte, large enough to run in parallel, beta 0 (din not
 * read: NaN there stays unseen) and 1.5, p = 0 (the bits are not read), p = 1,
 * and in place (din = dout). */
static void test_dropout_backward_gives_the_bytes_of_the_element_formula(void **state)
{
    (void)state;
    const size_t sizes[] = {1, 7, 8, 301, BIG + 5};
    const float ps[] = {0.3f, 0.0f, 1.0f};
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++)
        for (size_t b = 0; b < sizeof ps / sizeof ps[0]; b++)
            for (int k = 0; k < 3; k++) {
                const size_t n = sizes[a];
                const float p = ps[b], beta = k == 1 ? 1.5f : 0.0f;
                const int in_place = k == 2;
                const float keep = !(p > 0.0f) ? 1.0f : p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
                float *d = tu_alloc(n), *din = tu_alloc(n), *want = tu_alloc(n), *x = tu_alloc(n);
                uint8_t *bits = malloc(ddpm_dropout_mask_bytes(n));
                assert_non_null(bits);
                tu_fill_uniform(x, n, 30 + a, -1.0f, 1.0f);
                tu_fill_uniform(d, n, 40 + a, -2.0f, 2.0f);
                ddpm_dropout_forward(din, bits, x, p > 0.0f ? p : 0.5f, n, 9, 77);
                for (size_t i = 0; i < n; i++) {
                    const float m = !(p > 0.0f) ? 1.0f : bit(bits, i) ? keep : 0.0f;
                    const float old = beta == 0.0f ? NAN : (float)(i % 5) - 2.0f;
                    want[i] = beta == 0.0f ? d[i] * m : beta * old + d[i] * m;
                    din[i] = in_place ? d[i] : old;
                }
                ddpm_dropout_backward(din, beta, in_place ? din : d, p > 0.0f ? bits : NULL, p, n);
                for (size_t i = 0; i < n; i++)
                    if (memcmp(&din[i], &want[i], sizeof(float)) != 0)
                        fail_msg("n %zu p %g beta %g%s: din[%zu] = %a, want %a", n, (double)p, (double)beta,
                                 in_place ? " in place" : "", i, (double)din[i], (double)want[i]);
                free(d), free(din), free(want), free(x), free(bits);
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropout_keeps_one_minus_p_and_scales_by_inverse_keep),
        cmocka_unit_test(test_dropout_mask_is_philox_lane_i_mod_4_of_counter_plus_i_div_4),
        cmocka_unit_test(test_dropout_same_seed_and_counter_give_the_same_mask),
        cmocka_unit_test(test_dropout_mask_does_not_depend_on_thread_count),
        cmocka_unit_test(test_dropout_p_zero_is_identity_with_unit_mask_in_place),
        cmocka_unit_test(test_dropout_in_place_equals_out_of_place),
        cmocka_unit_test(test_dropout_backward_matches_finite_differences_and_accumulates),
        cmocka_unit_test(test_dropout_backward_applies_the_saved_mask_beta0_overwrites),
        cmocka_unit_test(test_dropout_backward_gives_the_bytes_of_the_element_formula),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
