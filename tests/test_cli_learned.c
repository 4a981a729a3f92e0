/* Learned variances as a user drives them: `ddpm train --learn-sigma` with the
 * bound or the hybrid objective (refused with L_simple), a checkpoint that says
 * so and resumes, `ddpm sample` using the learned variances by default (the
 * recipe says "learned" and re-creates the grid byte for byte) or a fixed one
 * on request, `--var learned` refused for a fixed-variance model, `ddpm eval`
 * with either, and the exported weights sampling as the run does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>

#include "cliutil.h"

#define TINY                                                                                                 \
    "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 20 --batch 4 --preview-n 0 --quiet"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli-learned") || cu_make_gray_folder("data", 6, 7))
        return -1;
    if (cu_ddpm("train data --out run " TINY " --steps 6 --learn-sigma --loss hybrid --vlb-weight 0.1"))
        return -1;
    return cu_ddpm("train data --out fixed " TINY " --steps 2");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

static void test_learned_sigma_needs_the_bound(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train data --out bad " TINY " --steps 1 --learn-sigma"), 2);
    assert_true(cu_stderr_one_line("learned variances need --loss vlb or hybrid"));
    assert_true(cu_absent("bad/checkpoint.safetensors"));
    assert_int_equal(
        cu_ddpm("train data --out vlb " TINY " --steps 2 --learn-sigma --loss vlb --prediction mu"), 0);
}

static void test_checkpoint_says_learned_and_resumes(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("info run"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "variances: learned"));
    assert_non_null(strstr(out, "\"learn_sigma\":\ttrue"));
    free(out);
    assert_int_equal(cu_ddpm("info fixed"), 0);
    out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "variances: fixed"));
    assert_null(strstr(out, "learn_sigma"));
    free(out);
    assert_int_equal(cu_ddpm("train data --out run --resume --steps 8 --quiet"), 0);
    assert_int_equal(cu_ddpm("info run"), 0);
    out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "variances: learned"));
    assert_non_null(strstr(out, "step: 8"));
    free(out);
}

static void test_sample_uses_the_learned_variances_and_recreates(void **state)
{
    (void)state;
    const char *flags = "--n 4 --sampler ddpm --seed 3 --quiet";
    assert_int_equal(cu_ddpm("sample run/checkpoint.safetensors %s --out learned.png", flags), 0);
    assert_int_equal(cu_ddpm("sample run/checkpoint.safetensors %s --var learned --out learned2.png", flags),
                     0);
    assert_true(cu_same_bytes("learned.png", "learned2.png"));
    assert_int_equal(cu_ddpm("sample run/checkpoint.safetensors %s --var beta --out beta.png", flags), 0);
    assert_false(cu_same_bytes("learned.png", "beta.png")); /* the variance is used */
    assert_int_equal(cu_ddpm("info learned.png"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "learned"));
    free(out);
    assert_int_equal(cu_ddpm("sample --from learned.png --out again.png --quiet"), 0);
    assert_true(cu_same_bytes("learned.png", "again.png"));
    /* DDIM reads the two-part output too, and trajectories work */
    assert_int_equal(
        cu_ddpm("sample run/checkpoint.safetensors --n 3 --steps 5 --trajectory traj.png --out ddim.png "
                "--quiet"),
        0);
    /* the exported EMA weights sample as the run's EMA weights do */
    assert_int_equal(cu_ddpm("export run w.safetensors --quiet"), 0);
    assert_int_equal(cu_ddpm("sample w.safetensors %s --out w.png", flags), 0);
    assert_int_equal(cu_ddpm("sample run/checkpoint.safetensors %s --out run.png", flags), 0);
    /* different recipes (the file names differ), the same pixels: 2 x 2 cells of 8 px, pad 2 */
    assert_true(cu_same_pixels("w.png", "run.png", 22));
}

static void test_fixed_model_refuses_var_learned(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample fixed --sampler ddpm --var learned --n 1 --out x.png"), 2);
    assert_true(cu_stderr_one_line("has fixed variances"));
    assert_true(cu_absent("x.png"));
    assert_int_equal(cu_ddpm("sample fixed --sampler ddpm --var sideways --n 1 --out x.png"), 2);
    assert_true(cu_stderr_has("not beta, beta-tilde or learned"));
}

static void test_eval_uses_the_learned_variances(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("eval run data --n 3 --json --quiet"), 0);
    char *a = cu_slurp("out.txt", NULL);
    assert_non_null(a);
    assert_non_null(strstr(a, "\"var\":\"learned\""));
    assert_int_equal(cu_ddpm("eval run data --n 3 --var beta --json --quiet"), 0);
    char *b = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(b, "\"var\":\"beta\""));
    double la = tu_json_number(a, "bpd_total"), lb = tu_json_number(b, "bpd_total");
    assert_true(isfinite(la) && isfinite(lb) && la != lb);
    /* L_simple does not depend on the variance */
    assert_true(tu_json_number(a, "l_simple") == tu_json_number(b, "l_simple"));
    free(a);
    free(b);
    assert_int_equal(cu_ddpm("eval fixed data --n 2 --var learned --quiet"), 1);
    assert_true(cu_stderr_one_line("needs a model with learned variances"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_learned_sigma_needs_the_bound),
        cmocka_unit_test(test_checkpoint_says_learned_and_resumes),
        cmocka_unit_test(test_sample_uses_the_learned_variances_and_recreates),
        cmocka_unit_test(test_fixed_model_refuses_var_learned),
        cmocka_unit_test(test_eval_uses_the_learned_variances),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
