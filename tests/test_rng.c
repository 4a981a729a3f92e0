/* Tests of the Philox generator: moments, reproducibility, thread independence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/rng.h"

enum { N = 1 << 20 };

static void test_normal_fill_has_mean_zero_and_unit_variance(void **state)
{
    (void)state;
    float *z = malloc(N * sizeof *z);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 1234, DDPM_STREAM_NOISE);
    ddpm_rng_normal_fill(&rng, z, N);
    double s = 0, s2 = 0, s4 = 0;
    for (int i = 0; i < N; i++) {
        s += z[i];
        s2 += (double)z[i] * z[i];
        s4 += pow(z[i], 4);
    }
    double mean = s / N, var = s2 / N - mean * mean;
    /* standard errors at n = 2^20: mean 1e-3, variance 1.4e-3, 4th moment ~1e-2: 5 sigma */
    assert_true(fabs(mean) < 5e-3);
    assert_true(fabs(var - 1) < 7e-3);
    assert_true(fabs(s4 / N - 3) < 5e-2);
    free(z);
}

static void test_uniform_fill_is_in_open_unit_interval_with_right_moments(void **state)
{
    (void)state;
    float *u = malloc(N * sizeof *u);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 99, 7);
    ddpm_rng_uniform_fill(&rng, u, N);
    double s = 0, s2 = 0;
    for (int i = 0; i < N; i++) {
        assert_true(u[i] > 0.0f && u[i] < 1.0f);
        s += u[i];
        s2 += (double)u[i] * u[i];
    }
    /* mean 1/2 (se 2.8e-4), variance 1/12 (se 7e-5): 5 sigma */
    assert_true(fabs(s / N - 0.5) < 1.5e-3);
    assert_true(fabs(s2 / N - 0.25 - (s / N - 0.5) - 1.0 / 12) < 1.5e-3);
    free(u);
}

static void test_same_seed_same_stream_and_different_seed_differs(void **state)
{
    (void)state;
    float a[1000], b[1000], c[1000];
    ddpm_rng r1, r2, r3;
    ddpm_rng_init(&r1, 42, 1);
    ddpm_rng_init(&r2, 42, 1);
    ddpm_rng_init(&r3, 43, 1);
    ddpm_rng_normal_fill(&r1, a, 1000);
    ddpm_rng_normal_fill(&r2, b, 1000);
    ddpm_rng_normal_fill(&r3, c, 1000);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    assert_int_equal(r1.counter, 250);
    /* resuming from a saved state continues the same sequence */
    ddpm_rng saved = r1;
    ddpm_rng_normal_fill(&r1, a, 1000);
    ddpm_rng_normal_fill(&saved, b, 1000);
    assert_memory_equal(a, b, sizeof a);
}

static void test_fill_is_the_same_for_any_thread_count(void **state)
{
    (void)state;
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    ddpm_rng r1, r2;
    ddpm_rng_init(&r1, 5, 2);
    ddpm_rng_init(&r2, 5, 2);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    ddpm_rng_normal_fill(&r1, a, N - 3);
    omp_set_num_threads(2);
    ddpm_rng_normal_fill(&r2, b, N - 3);
    omp_set_num_threads(saved);
    assert_memory_equal(a, b, (N - 3) * sizeof *a);
    free(a);
    free(b);
}

static void test_below_is_uniform_and_shuffle_is_a_permutation(void **state)
{
    (void)state;
    ddpm_rng rng;
    ddpm_rng_init(&rng, 3, 1);
    int counts[7] = {0};
    for (int i = 0; i < 70000; i++) {
        uint64_t x = ddpm_rng_below(&rng, 7);
        assert_true(x < 7);
        counts[x]++;
    }
    for (int k = 0; k < 7; k++) /* expected 10000, sd 93: 5 sigma */
        assert_true(abs(counts[k] - 10000) < 470);
    int idx[100], seen[100] = {0};
    for (int i = 0; i < 100; i++)
        idx[i] = i;
    ddpm_rng_shuffle(&rng, idx, 100);
    int moved = 0;
    for (int i = 0; i < 100; i++) {
        seen[idx[i]]++;
        moved += idx[i] != i;
    }
    for (int i = 0; i < 100; i++)
        assert_int_equal(seen[i], 1);
    assert_true(moved > 80);
}

static void test_streams_are_independent(void **state)
{
    (void)state;
    uint32_t a[4], b[4];
    ddpm_philox(a, 1, 1, 0);
    ddpm_philox(b, 1, 2, 0);
    assert_memory_not_equal(a, b, sizeof a);
    /* Philox4x32-10 known-answer vector (Random123 kat_vectors): ctr 0, key 0 */
    ddpm_philox(a, 0, 0, 0);
    assert_int_equal(a[0], 0x6627e8d5u);
    assert_int_equal(a[1], 0xe169c58du);
    assert_int_equal(a[2], 0xbc57ac4cu);
    assert_int_equal(a[3], 0x9b00dbd8u);
}

/* The 16-counter vector Philox gives ddpm_philox's words for each counter: key
 * and stream words with their high halves set, counters whose low word wraps
 * inside the block (the high word then differs between lanes), and the
 * known-answer vector. */
static void test_philox_block_gives_the_words_of_ddpm_philox(void **state)
{
    (void)state;
    const uint64_t seeds[] = {0, 1, 0x9e3779b97f4a7c15ull, 0xffffffffffffffffull};
    const uint64_t streams[] = {0, DDPM_STREAM_DROPOUT, 0x123456789abcdef0ull};
    const uint64_t counters[] = {0, 5, 0xfffffff8ull, 0x00000001fffffffbull, 0xfffffffffffffff9ull};
    for (size_t a = 0; a < sizeof seeds / sizeof seeds[0]; a++)
        for (size_t b = 0; b < sizeof streams / sizeof streams[0]; b++)
            for (size_t c = 0; c < sizeof counters / sizeof counters[0]; c++) {
                uint32_t block[4 * DDPM_PHILOX_BLOCK];
                ddpm_philox_block(block, seeds[a], streams[b], counters[c]);
                for (int i = 0; i < DDPM_PHILOX_BLOCK; i++) {
                    uint32_t w[4];
                    ddpm_philox(w, seeds[a], streams[b], counters[c] + (uint64_t)i);
                    if (memcmp(w, block + 4 * i, sizeof w))
                        fail_msg("seed %llx stream %llx counter %llx + %d: block %08x %08x %08x %08x, "
                                 "ddpm_philox %08x %08x %08x %08x",
                                 (unsigned long long)seeds[a], (unsigned long long)streams[b],
                                 (unsigned long long)counters[c], i, block[4 * i], block[4 * i + 1],
                                 block[4 * i + 2], block[4 * i + 3], w[0], w[1], w[2], w[3]);
                }
            }
    uint32_t block[4 * DDPM_PHILOX_BLOCK];
    ddpm_philox_block(block, 0, 0, 0);
    assert_int_equal(block[0], 0x6627e8d5u);
    assert_int_equal(block[3], 0x9b00dbd8u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normal_fill_has_mean_zero_and_unit_variance),
        cmocka_unit_test(test_uniform_fill_is_in_open_unit_interval_with_right_moments),
        cmocka_unit_test(test_same_seed_same_stream_and_different_seed_differs),
        cmocka_unit_test(test_fill_is_the_same_for_any_thread_count),
        cmocka_unit_test(test_below_is_uniform_and_shuffle_is_a_permutation),
        cmocka_unit_test(test_streams_are_independent),
        cmocka_unit_test(test_philox_block_gives_the_words_of_ddpm_philox),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
