/* FID and KID against scipy and the reference formulas
 * (tests/reference/make_inception_reference.py wrote the two feature sets and
 * the expected numbers into tests/data/inception/reference.safetensors), and
 * the statistics file round trip and refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/error.h"
#include "ddpm/fid.h"
#include "ddpm/imageio.h"
#include "ddpm/safetensors.h"
#include "testutil.h"

#define REF DDPM_TEST_DATA "/inception/reference.safetensors"
enum { NA = 50, NB = 12, D = 16 };

typedef struct {
    ddpm_st_file *ref;
    float fa[NA * D], fb[NB * D];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || ddpm_safetensors_open(&f->ref, REF) || ddpm_safetensors_read_f32(f->ref, "fa", f->fa, NA * D) ||
        ddpm_safetensors_read_f32(f->ref, "fb", f->fb, NB * D)) {
        fprintf(stderr, "%s\n", ddpm_last_error());
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ddpm_safetensors_close(f->ref);
    free(f);
    return 0;
}

static double meta_double(const ddpm_st_file *ref, const char *key)
{
    const char *v = ddpm_safetensors_meta(ref, key);
    assert_non_null(v);
    return strtod(v, NULL);
}

/* FID of 50 and 12 rows of 16 features (the second covariance singular, as with
 * fewer images than features) to 1e-6 relative of scipy.linalg.sqrtm's (the two
 * Python values agree to 3e-9) and of the eigenvalue formula's. */
static void test_fid_matches_scipy_sqrtm_and_eigen_reference(void **state)
{
    fixture *f = *state;
    ddpm_fid_stats a, b;
    assert_int_equal(ddpm_fid_stats_compute(&a, f->fa, NA, D), 0);
    assert_int_equal(ddpm_fid_stats_compute(&b, f->fb, NB, D), 0);
    double fid = -1;
    assert_int_equal(ddpm_fid_distance(&a, &b, &fid), 0);
    double want_scipy = meta_double(f->ref, "fid_scipy"), want_eigen = meta_double(f->ref, "fid_eigen");
    if (fabs(fid - want_scipy) > 1e-6 * want_scipy || fabs(fid - want_eigen) > 1e-6 * want_eigen)
        fail_msg("FID %.12g, scipy %.12g, eigen %.12g", fid, want_scipy, want_eigen);
    /* A set against itself: 0 up to rounding (the square root is exact). */
    double self = 1;
    assert_int_equal(ddpm_fid_distance(&a, &a, &self), 0);
    assert_true(fabs(self) < 1e-9 * want_scipy);
    ddpm_fid_stats_free(&a);
    ddpm_fid_stats_free(&b);
}

/* KID with one subset that holds all 12 rows of each set is the unbiased MMD^2
 * of the reference, and the same over any number of such subsets (std 0). */
static void test_kid_matches_reference_unbiased_mmd(void **state)
{
    fixture *f = *state;
    double mean = 0, std = 1, want = meta_double(f->ref, "kid_full");
    assert_int_equal(ddpm_fid_kid(f->fa, 12, f->fb, 12, D, 5, 1000, 7, &mean, &std), 0);
    if (fabs(mean - want) > 1e-6 * fabs(want))
        fail_msg("KID %.12g, reference %.12g", mean, want);
    assert_true(std < 1e-9 * fabs(want));
    /* Subsets of 6 of 12: a different, seed-determined estimate with a spread. */
    double m1, s1, m2, s2;
    assert_int_equal(ddpm_fid_kid(f->fa, NA, f->fb, NB, D, 20, 6, 3, &m1, &s1), 0);
    assert_int_equal(ddpm_fid_kid(f->fa, NA, f->fb, NB, D, 20, 6, 3, &m2, &s2), 0);
    assert_true(m1 == m2 && s1 == s2 && s1 > 0);
    assert_int_equal(ddpm_fid_kid(f->fa, 1, f->fb, NB, D, 20, 6, 3, &m1, &s1), DDPM_EINVAL);
}

/* Saved statistics read back to the same doubles (to 2^-46), the same FID,
 * and are refused for other weights; fewer than 2 images are refused. */
static void test_fid_stats_file_round_trip_and_refusals(void **state)
{
    fixture *f = *state;
    char dir[256];
    assert_int_equal(tu_make_tmpdir(dir, sizeof dir, "fidstats"), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    ddpm_fid_stats a, b, back;
    assert_int_equal(ddpm_fid_stats_compute(&a, f->fa, NA, D), 0);
    assert_int_equal(ddpm_fid_stats_compute(&b, f->fb, NB, D), 0);
    snprintf(a.sha256, sizeof a.sha256, "%s", "ab12");
    assert_int_equal(ddpm_fid_stats_save(path, &a), 0);
    assert_int_equal(ddpm_fid_stats_load(&back, path, "ab12"), 0);
    assert_int_equal(back.n, NA);
    assert_int_equal(back.dim, D);
    for (int k = 0; k < D * D; k++)
        assert_true(fabs(back.sigma[k] - a.sigma[k]) <= 1.5e-14 * fabs(a.sigma[k]) + 1e-300);
    for (int k = 0; k < D; k++)
        assert_true(fabs(back.mu[k] - a.mu[k]) <= 1.5e-14 * fabs(a.mu[k]) + 1e-300);
    double f1, f2;
    assert_int_equal(ddpm_fid_distance(&a, &b, &f1), 0);
    assert_int_equal(ddpm_fid_distance(&back, &b, &f2), 0);
    /* S2 is singular: its zero eigenvalues come out as +-1e-15 and their square
     * roots (3e-8) move with the last bits of the input; 1e-7 covers that. */
    if (!(fabs(f1 - f2) < 1e-7 * f1))
        fail_msg("FID from memory %.15g, from the file %.15g", f1, f2);
    ddpm_fid_stats_free(&back);
    assert_int_equal(ddpm_fid_stats_load(&back, path, "cd34"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "other Inception weights"));
    assert_int_equal(ddpm_fid_stats_load(&back, REF, NULL), DDPM_EFORMAT); /* not a statistics file */
    assert_non_null(strstr(ddpm_last_error(), "not a statistics file"));
    assert_int_equal(ddpm_fid_stats_compute(&back, f->fa, 1, D), DDPM_EINVAL);
    ddpm_fid_stats_free(&a);
    ddpm_fid_stats_free(&b);
    tu_remove_tree(dir);
}

/* src/fid.c had its own folder scan without dataset.c's loop check: a
 * `self -> .` link listed each image once per level down to depth 64. It now
 * lists through dataset.c's scan: each image once, sorted, non-images left out. */
static void test_fid_listing_counts_each_image_once_through_a_symlink_loop(void **state)
{
    (void)state;
    char dir[128], path[256];
    assert_int_equal(tu_make_tmpdir(dir, sizeof dir, "fidlist"), 0);
    const uint8_t px[64] = {1, 2, 3};
    snprintf(path, sizeof path, "%s/b.png", dir);
    assert_int_equal(ddpm_png_write(path, px, 8, 8, 1), 0);
    snprintf(path, sizeof path, "%s/a.png", dir);
    assert_int_equal(ddpm_png_write(path, px, 8, 8, 1), 0);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    assert_int_equal(tu_write_file(path, "text", 4), 0);
    snprintf(path, sizeof path, "%s/self", dir);
    assert_int_equal(symlink(".", path), 0);
    char **paths = NULL;
    int n = 0;
    assert_int_equal(ddpm_fid_list_images(dir, &paths, &n), 0);
    assert_int_equal(n, 2);
    assert_non_null(strstr(paths[0], "/a.png"));
    assert_non_null(strstr(paths[1], "/b.png"));
    ddpm_fid_free_paths(paths, n);
    tu_remove_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fid_matches_scipy_sqrtm_and_eigen_reference),
        cmocka_unit_test(test_kid_matches_reference_unbiased_mmd),
        cmocka_unit_test(test_fid_stats_file_round_trip_and_refusals),
        cmocka_unit_test(test_fid_listing_counts_each_image_once_through_a_symlink_loop),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
