/* `ddpm fid` through the binary, on the reduced-width test weights
 * (tests/data/inception/inception_w16.pth): two folders, statistics files,
 * and the refusals, each one line on stderr and exit 1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fidutil.h"
#include "ddpm/fid.h"

#define W16 DDPM_TEST_DATA "/inception/inception_w16.pth"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli_fid"))
        return -1;
    return cu_make_gray_folder("a", 5, 1) || cu_make_gray_folder("b", 4, 7) || cu_make_gray_folder("one", 1, 3) ||
           cu_make_gray_folder("empty", 0, 1);
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

/* FID of two folders; the same from a saved statistics file of the first; a
 * folder against itself is 0. */
static void test_cli_fid_folders_and_saved_stats_agree(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("fid a b --inception '%s' --json --quiet --kid", W16), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    double fid = tu_json_number(out, "fid"), n_a = tu_json_number(out, "n_a"), n_b = tu_json_number(out, "n_b");
    assert_true(fid > 0 && isfinite(fid));
    assert_true(n_a == 5 && n_b == 4);
    assert_true(isfinite(tu_json_number(out, "kid")) && tu_json_number(out, "features_per_sec") > 0);
    free(out);
    assert_int_equal(cu_ddpm("fid --save-stats a.safetensors a --inception '%s' --quiet", W16), 0);
    assert_int_equal(cu_ddpm("fid a.safetensors b --inception '%s' --json --quiet", W16), 0);
    out = cu_slurp("out.txt", NULL);
    double fid2 = tu_json_number(out, "fid");
    free(out);
    if (!(fabs(fid2 - fid) <= 1e-6 * fid))
        fail_msg("FID from folders %.10g, from statistics %.10g", fid, fid2);
    assert_int_equal(cu_ddpm("fid a a --inception '%s' --json --quiet", W16), 0);
    out = cu_slurp("out.txt", NULL);
    assert_true(fabs(tu_json_number(out, "fid")) < 1e-6 * fid);
    free(out);
}

static void test_cli_fid_refuses_empty_folder_and_one_image(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("fid a empty --inception '%s' --quiet", W16), 1);
    assert_true(cu_stderr_one_line("empty: no images"));
    assert_int_equal(cu_ddpm("fid one a --inception '%s' --quiet", W16), 1);
    assert_true(cu_stderr_one_line("one: 1 image; FID needs at least 2"));
}

/* Weights without the network's tensors; no weights at all (the message says
 * what to download and where); statistics made with other weights. */
static void test_cli_fid_refuses_wrong_or_missing_weights_and_foreign_stats(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("fid a b --inception '%s' --quiet", DDPM_TEST_DATA "/inception/small_zip.pth"), 1);
    assert_true(cu_stderr_one_line("tensor 'Conv2d_1a_3x3.conv.weight' is missing"));
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cd '%s' && env -u DDPM_INCEPTION HOME='%s' '%s' fid a b --quiet >out.txt 2>err.txt",
             cu_dir, cu_dir, DDPM_BINARY);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    assert_true(cu_stderr_one_line("pt_inception-2015-12-05-6726825d.pth"));
    assert_true(cu_stderr_has(".cache/ddpm/"));
    assert_true(cu_stderr_has("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"));

    cu_write_foreign_stats("other.safetensors", 4);
    assert_int_equal(cu_ddpm("fid other.safetensors b --inception '%s' --quiet", W16), 1);
    assert_true(cu_stderr_one_line("other.safetensors: statistics made with other Inception weights"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_fid_folders_and_saved_stats_agree),
        cmocka_unit_test(test_cli_fid_refuses_empty_folder_and_one_image),
        cmocka_unit_test(test_cli_fid_refuses_wrong_or_missing_weights_and_foreign_stats),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
