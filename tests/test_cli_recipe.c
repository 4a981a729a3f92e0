/* PNG recipes as a user meets them: `ddpm sample --from IMAGE.png` re-creates a
 * grid, one image of --out-dir, a trajectory and a training preview byte for
 * byte, refuses another checkpoint and a PNG without a recipe; `ddpm info
 * IMAGE.png` prints the recipe or says there is none. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cliutil.h"
#include "ddpm/imageio.h"
#include "testutil.h"

#define TINY "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 4"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli_recipe"))
        return -1;
    if (cu_make_gray_folder("data", 8, 7))
        return -1;
    /* two runs: the second's checkpoint is another file */
    if (cu_ddpm("train data --out run " TINY " --steps 4 --preview-n 4 --preview-steps 3 --quiet") ||
        cu_ddpm("train data --out other " TINY " --steps 4 --seed 9 --preview-n 0 --quiet"))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

static void test_from_recreates_grid_image_trajectory_and_preview_byte_for_byte(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample run --n 6 --steps 5 --eta 0.5 --seed 7 --nrow 4 --pad 1 --pad-value 9 "
                             "--out grid.png --out-dir each --trajectory traj.png --trajectory-k 3 --quiet"),
                     0);
    static const char *files[] = {"grid.png", "each/00000.png", "each/00004.png", "traj.png",
                                  "run/samples/step_0000004.png"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        /* another batch size on purpose: an image's noise depends on its index only */
        assert_int_equal(cu_ddpm("sample --from %s --out again.png --batch 3 --quiet", files[i]), 0);
        if (!cu_same_bytes(files[i], "again.png"))
            fail_msg("--from %s did not re-create it byte for byte", files[i]);
    }
    /* the checkpoint named by --checkpoint or the argument, when the hash matches */
    assert_int_equal(cu_ddpm("sample --from each/00004.png --checkpoint run --out again.png --quiet"), 0);
    assert_true(cu_same_bytes("each/00004.png", "again.png"));
    /* what the recipe sets cannot be changed */
    assert_int_equal(cu_ddpm("sample --from grid.png --out again.png --seed 3"), 2);
    assert_true(cu_stderr_has("--seed cannot be given with --from"));
}

static void test_from_refuses_a_checkpoint_with_another_hash(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample run --n 2 --steps 3 --out g.png --quiet"), 0);
    assert_int_equal(cu_ddpm("sample --from g.png --checkpoint other --out x.png"), 1);
    assert_true(cu_stderr_has("is not the checkpoint g.png was made from"));
    struct stat st;
    char path[512];
    snprintf(path, sizeof path, "%s/x.png", cu_dir);
    assert_int_not_equal(stat(path, &st), 0);
}

static void test_info_prints_the_recipe_or_says_there_is_none(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample run --n 2 --steps 3 --seed 11 --out g.png --quiet"), 0);
    assert_int_equal(cu_ddpm("info g.png"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "seed: 11"));
    assert_non_null(strstr(out, "sampler: ddim, 3 steps"));
    assert_non_null(strstr(out, "contents: grid of images 0..1"));
    free(out);
    assert_int_equal(cu_ddpm("info data/00.png"), 1);
    assert_true(cu_stderr_has("carries no ddpm recipe"));
    assert_int_equal(cu_ddpm("sample --from data/00.png --out x.png"), 1);
    assert_true(cu_stderr_has("carries no ddpm recipe"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_recreates_grid_image_trajectory_and_preview_byte_for_byte),
        cmocka_unit_test(test_from_refuses_a_checkpoint_with_another_hash),
        cmocka_unit_test(test_info_prints_the_recipe_or_says_there_is_none),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
