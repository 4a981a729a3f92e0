/* --precision fp32|bf16 as a user meets it: `ddpm sample --precision bf16` on a
 * tiny model whose 3x3 convolutions run Winograd (16 and 32 channels) writes a
 * PNG whose recipe says bf16, `ddpm info` prints it and `ddpm sample --from`
 * re-creates it byte for byte; `--precision fp32` gives the bytes of no option;
 * interpolate and eval take the option too; `ddpm train --precision bf16` is a
 * setting of the run (in its checkpoint's config, kept on --resume, the same
 * bytes at any thread count); a build or CPU without AVX512_BF16 (or
 * DDPM_NO_BF16, which makes ddpm act as one) refuses bf16 on every command with
 * one line and exit code 2 before doing any work. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cliutil.h"
#include "ddpm/error.h"
#include "ddpm/ops.h"
#include "ddpm/recipe.h"
#include "testutil.h"

/* 16 and 32 channels: the ResBlocks' convs go to ddpm_conv3x3 (>= 16 in and out) */
#define TINY "--ch 16 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 4"
#define SAMPLE "sample run --n 4 --steps 3 --quiet"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli_precision"))
        return -1;
    if (cu_make_gray_folder("data", 8, 7))
        return -1;
    /* lr 1e-2 without warm-up: 6 steps move the zero-initialised convs off zero */
    return cu_ddpm("train data --out run " TINY " --steps 6 --warmup 0 --lr 1e-2 --preview-n 0 --quiet");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

static ddpm_precision recipe_precision(const char *name)
{
    char path[512];
    ddpm_recipe r;
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    if (ddpm_recipe_read_png(&r, path) != 1)
        fail_msg("%s: no recipe: %s", name, ddpm_last_error());
    return r.precision;
}

/* The refusal: exit 2, one line naming AVX512_BF16, no output written. */
static void expect_refused(const char *args, const char *out)
{
    int rc = cu_ddpm("%s", args);
    if (rc != 2)
        fail_msg("ddpm %s: exit %d, wanted 2", args, rc);
    assert_true(cu_stderr_one_line("AVX512_BF16"));
    if (out)
        assert_true(cu_absent(out));
}

static void test_sample_bf16_writes_its_precision_into_the_recipe_and_fp32_is_the_default(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm(SAMPLE " --out none.png"), 0);
    assert_int_equal(cu_ddpm(SAMPLE " --out f32.png --precision fp32"), 0);
    assert_true(cu_same_bytes("none.png", "f32.png"));
    assert_int_equal(recipe_precision("f32.png"), DDPM_PRECISION_FP32);
    if (!ddpm_bf16_available()) {
        expect_refused(SAMPLE " --out b.png --precision bf16", "b.png");
        return;
    }
    assert_int_equal(cu_ddpm(SAMPLE " --out b.png --precision bf16"), 0);
    assert_int_equal(recipe_precision("b.png"), DDPM_PRECISION_BF16);
    /* the bf16 products ran: the 22x22 grid's pixels are not the float32 ones */
    assert_false(cu_same_pixels("b.png", "f32.png", 22));
    assert_int_equal(cu_ddpm("info b.png"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "precision: bf16"));
    free(out);
    /* the recipe re-creates it (in bf16), and the recipe's precision is not a flag to give with --from */
    assert_int_equal(cu_ddpm("sample --from b.png --out b2.png --quiet"), 0);
    assert_true(cu_same_bytes("b.png", "b2.png"));
    assert_int_equal(cu_ddpm("sample --from b.png --out b3.png --precision fp32"), 2);
    assert_true(cu_stderr_one_line("--precision cannot be given with --from"));
    /* the same pixels at any thread count (the bf16 lanes are fixed, as float32's) */
    assert_int_equal(cu_ddpm(SAMPLE " --out t1.png --precision bf16 --threads 1"), 0);
    assert_int_equal(cu_ddpm(SAMPLE " --out t3.png --precision bf16 --threads 3"), 0);
    assert_true(cu_same_pixels("t1.png", "t3.png", 22));
    assert_true(cu_same_pixels("t1.png", "b.png", 22));
    /* an image of --out-dir carries it too */
    assert_int_equal(cu_ddpm(SAMPLE " --no-grid --out-dir each --precision bf16"), 0);
    assert_int_equal(recipe_precision("each/00000.png"), DDPM_PRECISION_BF16);
}

static void test_interpolate_and_eval_take_the_precision(void **state)
{
    (void)state;
    if (!ddpm_bf16_available()) {
        expect_refused("interpolate run --seeds 1,2 --n 3 --steps 3 --out s.png --precision bf16", "s.png");
        expect_refused("eval run data --n 4 --mc 1 --precision bf16", NULL);
        return;
    }
    assert_int_equal(
        cu_ddpm("interpolate run --seeds 1,2 --n 3 --steps 3 --out s.png --precision bf16 --quiet"), 0);
    assert_int_equal(recipe_precision("s.png"), DDPM_PRECISION_BF16);
    assert_int_equal(cu_ddpm("interpolate --from s.png --out s2.png --quiet"), 0);
    assert_true(cu_same_bytes("s.png", "s2.png"));
    assert_int_equal(cu_ddpm("eval run data --n 4 --mc 1 --precision bf16 --json --quiet"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "\"precision\":\"bf16\""));
    free(out);
}

#define TRAIN "train data " TINY " --warmup 0 --lr 1e-2 --preview-n 0 --quiet"

static char *info_of(const char *run)
{
    if (cu_ddpm("info %s --json", run) != 0)
        fail_msg("ddpm info %s failed", run);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    return out;
}

/* The checkpoints' tensor bytes (weights, EMA, Adam) are the same; the
 * header, which records the elapsed time, may differ. */
static int same_tensors(const char *run_a, const char *run_b)
{
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/%s/checkpoint.safetensors", cu_dir, run_a);
    snprintf(b, sizeof b, "%s/%s/checkpoint.safetensors", cu_dir, run_b);
    size_t na = 0, nb = 0;
    unsigned char *ta = tu_checkpoint_tensors(a, &na), *tb = tu_checkpoint_tensors(b, &nb);
    assert_non_null(ta);
    assert_non_null(tb);
    const int same = na == nb && !memcmp(ta, tb, na);
    free(ta), free(tb);
    return same;
}

static void test_train_bf16_is_a_setting_of_the_run(void **state)
{
    (void)state;
    if (!ddpm_bf16_available()) {
        expect_refused(TRAIN " --out tb --steps 2 --precision bf16", "tb");
        return;
    }
    assert_int_equal(cu_ddpm(TRAIN " --out tb1 --steps 4 --precision bf16 --threads 1"), 0);
    assert_int_equal(cu_ddpm(TRAIN " --out tb3 --steps 4 --precision bf16 --threads 3"), 0);
    assert_int_equal(cu_ddpm(TRAIN " --out tf --steps 4 --threads 1"), 0);
    /* the same tensors at any thread count; not the float32 run's */
    assert_true(same_tensors("tb1", "tb3"));
    assert_false(same_tensors("tb1", "tf"));
    /* the config says bf16; a float32 run's says nothing (older files keep their bytes) */
    char *out = info_of("tb1");
    assert_non_null(strstr(out, "\"precision\":\t\"bf16\""));
    free(out);
    out = info_of("tf");
    assert_null(strstr(out, "precision"));
    free(out);
    /* --resume keeps it: 2 + 2 steps give the 4-step run's bytes; it cannot be changed */
    assert_int_equal(cu_ddpm(TRAIN " --out tb2 --steps 2 --precision bf16 --threads 2"), 0);
    assert_int_equal(cu_ddpm("train data --out tb2 --resume --steps 4 --quiet --threads 2"), 0);
    assert_true(same_tensors("tb1", "tb2"));
    assert_int_equal(cu_ddpm("train data --out tb2 --resume --steps 6 --precision fp32 --quiet"), 2);
    assert_true(cu_stderr_one_line("--precision cannot be changed on --resume"));
}

/* DDPM_NO_BF16 takes the path of a CPU without AVX512_BF16 on this machine. */
static void test_bf16_is_refused_without_avx512_bf16_before_any_work(void **state)
{
    (void)state;
    assert_int_equal(setenv("DDPM_NO_BF16", "1", 1), 0);
    expect_refused(SAMPLE " --out r.png --precision bf16", "r.png");
    expect_refused("interpolate run --seeds 1,2 --n 3 --out r.png --precision bf16", "r.png");
    expect_refused("eval run data --n 4 --mc 1 --precision bf16", NULL);
    expect_refused("bench --seconds 0.1 " TINY " --precision bf16", NULL);
    /* fp32 stays available */
    expect_refused("train data --out rt " TINY " --steps 2 --preview-n 0 --quiet --precision bf16", "rt");
    assert_int_equal(cu_ddpm(SAMPLE " --out r32.png --precision fp32"), 0);
    assert_int_equal(unsetenv("DDPM_NO_BF16"), 0);
    assert_int_equal(cu_ddpm(SAMPLE " --out rnone.png"), 0);
    assert_true(cu_same_bytes("rnone.png", "r32.png"));
    /* and a value that is neither */
    assert_int_equal(cu_ddpm(SAMPLE " --out r.png --precision fp16"), 2);
    assert_true(cu_stderr_one_line("'fp16' is not fp32 or bf16"));
    assert_true(cu_absent("r.png"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sample_bf16_writes_its_precision_into_the_recipe_and_fp32_is_the_default),
        cmocka_unit_test(test_interpolate_and_eval_take_the_precision),
        cmocka_unit_test(test_train_bf16_is_a_setting_of_the_run),
        cmocka_unit_test(test_bf16_is_refused_without_avx512_bf16_before_any_work),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
