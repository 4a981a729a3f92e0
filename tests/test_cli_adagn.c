/* AdaGN and the class embedding's initialisation as a user drives them:
 * `ddpm train --classes --scale-shift-norm --class-emb-init normal`, a
 * checkpoint whose config says so (and a plain run's that says nothing of
 * either, so older files keep their bytes), `ddpm info` showing it, a resume,
 * the exported weights sampling as the run does, and a bad value refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cliutil.h"
#include "ddpm/imageio.h"

#define TINY                                                                                                 \
    "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 20 --batch 4 --preview-n 0 --quiet"

static int setup(void **state)
{
    (void)state;
    char path[512];
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli-adagn"))
        return -1;
    snprintf(path, sizeof path, "%s/cdata", cu_dir);
    if (mkdir(path, 0777) || cu_make_gray_folder("cdata/dark", 4, 3) || cu_make_gray_folder("cdata/light", 4, 5))
        return -1;
    if (cu_ddpm("train cdata --classes --out ada " TINY
                " --steps 6 --warmup 0 --lr 1e-2 --scale-shift-norm --class-emb-init normal"))
        return -1;
    if (cu_ddpm("train cdata --classes --out plain " TINY " --steps 2 --class-emb-init zero"))
        return -1;
    return cu_ddpm("train cdata --classes --out auto " TINY " --steps 1");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

/* `ddpm info ARGS`, which must succeed, and what it printed (the caller frees). */
static char *info_of(const char *args)
{
    assert_int_equal(cu_ddpm("info %s", args), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    return out;
}

static void test_info_shows_scale_shift_norm_and_the_class_embedding_init(void **state)
{
    (void)state;
    char *out = info_of("ada");
    assert_non_null(strstr(out, "\"scale_shift_norm\":\ttrue"));
    assert_non_null(strstr(out, "\"class_emb_init\":\t\"normal\""));
    free(out);
    /* the defaults are not written: a plain run's config has the keys of older files */
    out = info_of("plain");
    assert_null(strstr(out, "scale_shift_norm"));
    assert_null(strstr(out, "class_emb_init"));
    free(out);
    /* --classes without --class-emb-init starts the embedding at N(0, 1) and says so */
    out = info_of("auto");
    assert_non_null(strstr(out, "\"class_emb_init\":\t\"normal\""));
    assert_null(strstr(out, "scale_shift_norm"));
    free(out);
    /* the projection has 2 x cout outputs: 2 x 8 in the first ResBlock */
    out = info_of("ada --json --tensors");
    const char *t = strstr(out, "\"down.0.temb_proj.weight\"");
    assert_non_null(t);
    assert_non_null(strstr(t, "16, 32"));
    free(out);
}

static void test_resume_keeps_scale_shift_norm(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train cdata --out ada --resume --steps 8 --quiet"), 0);
    char *out = info_of("ada");
    assert_non_null(strstr(out, "\"scale_shift_norm\":\ttrue"));
    assert_non_null(strstr(out, "step: 8"));
    free(out);
}

static void test_exported_weights_sample_as_the_run_does(void **state)
{
    (void)state;
    const char *flags = "--n 4 --class light --guidance 3 --seed 3 --quiet";
    assert_int_equal(cu_ddpm("export ada w.safetensors --quiet"), 0);
    assert_int_equal(cu_ddpm("sample w.safetensors %s --out w.png", flags), 0);
    assert_int_equal(cu_ddpm("sample ada/checkpoint.safetensors %s --out run.png", flags), 0);
    /* different recipes (the file names differ), the same pixels: 2 x 2 cells of 8 px, pad 2 */
    assert_true(cu_same_pixels("w.png", "run.png", 22));
}

/* The "params" number of `ddpm bench --json ARGS` (which must succeed). */
static long bench_params(const char *args)
{
    assert_int_equal(cu_ddpm("bench --json --seconds 0.02 --batch 2 --threads 1 --size 8 --channels 1 "
                             "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 20 %s",
                             args),
                     0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    const char *p = strstr(out, "\"params\":");
    assert_non_null(p);
    long n = strtol(p + strlen("\"params\":"), NULL, 10);
    free(out);
    return n;
}

/* `ddpm bench --scale-shift-norm` times the AdaGN network a run trains: the
 * same parameter count as an unconditional AdaGN run of that shape, more than
 * the network without it. */
static void test_bench_times_the_adagn_network_a_run_trains(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train cdata/dark --out uada " TINY " --steps 1 --scale-shift-norm"), 0);
    char *out = info_of("uada");
    const char *p = strstr(out, "parameters: ");
    assert_non_null(p);
    long trained = strtol(p + strlen("parameters: "), NULL, 10);
    free(out);
    long ada = bench_params("--scale-shift-norm"), plain = bench_params("");
    assert_true(trained > 0);
    assert_int_equal(ada, trained);
    assert_true(plain < ada);
}

static void test_an_unknown_class_emb_init_is_refused(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train cdata --classes --out bad " TINY " --steps 1 --class-emb-init uniform"), 2);
    assert_true(cu_stderr_one_line("class-emb-init"));
    assert_true(cu_absent("bad/checkpoint.safetensors"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info_shows_scale_shift_norm_and_the_class_embedding_init),
        cmocka_unit_test(test_resume_keeps_scale_shift_norm),
        cmocka_unit_test(test_exported_weights_sample_as_the_run_does),
        cmocka_unit_test(test_bench_times_the_adagn_network_a_run_trains),
        cmocka_unit_test(test_an_unknown_class_emb_init_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
