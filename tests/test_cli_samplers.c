/* The solver rows of the sampler table as a user drives them (`ddpm sample
 * --sampler dpm++2m|dpm++3m|dpm++2s|dpm++2m-sde|unipc|unipc3|heun|euler-a
 * --spacing time|logsnr|karras`): every one samples a tiny model and its
 * recipe re-creates the grid byte for byte; a stochastic and a deterministic
 * one give the same bytes at --threads 1 and 2 and any --batch split; --steps
 * counts network evaluations (heun: S or S - 1) in --json and `ddpm info`;
 * class-conditional sampling with guidance and a learned-variance model work;
 * a wrong --sampler or --spacing is one line and exit 2, a mu-prediction model
 * one line and exit 1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>

#include "cliutil.h"
#include "ddpm/sampler.h"
#include "testutil.h"

/* lr 1e-2 without warm-up: 8 steps leave a network whose eps is far from 0, so
   that the sampler, the spacing, the class and the guidance reach the pixels
   (with eps = 0 every ODE solver returns x_T / alpha_T, whatever its points) */
#define TINY                                                                                                 \
    "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 4 --warmup 0 --lr 1e-2 " \
    "--preview-n 0 --quiet"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli_samplers") || cu_make_gray_folder("data", 8, 7))
        return -1;
    char path[512];
    snprintf(path, sizeof path, "%s/cdata", cu_dir);
    if (mkdir(path, 0777) || cu_make_gray_folder("cdata/cat", 4, 3) ||
        cu_make_gray_folder("cdata/dog", 4, 11))
        return -1;
    if (cu_ddpm("train data --out run " TINY " --steps 8") ||
        cu_ddpm("train cdata --classes --out crun " TINY " --steps 8") ||
        cu_ddpm("train data --out lrun " TINY " --steps 6 --learn-sigma --loss hybrid --vlb-weight 0.1"))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

static unsigned char *pixels(const char *name, int *n)
{
    char path[512];
    int w, h, c;
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    unsigned char *p = stbi_load(path, &w, &h, &c, 1);
    assert_non_null(p);
    *n = w * h;
    return p;
}

static int pixels_differ(const char *a, const char *b)
{
    int na, nb;
    unsigned char *x = pixels(a, &na), *y = pixels(b, &nb);
    int differ = na == nb && memcmp(x, y, (size_t)na) != 0;
    stbi_image_free(x);
    stbi_image_free(y);
    return differ;
}

/* out.txt holds needle (printed when not). */
static int stdout_has(const char *needle)
{
    char *out = cu_slurp("out.txt", NULL);
    int ok = out && strstr(out, needle);
    if (!ok)
        fprintf(stderr, "stdout was: %s(wanted '%s')\n", out ? out : "(none)", needle);
    free(out);
    return ok;
}

static void test_every_solver_row_samples_and_its_recipe_recreates_the_grid_byte_for_byte(void **state)
{
    (void)state;
    static const char *const spacings[] = {"karras", "time", "logsnr"};
    int n_rows = 0;
    for (int k = 0; k < DDPM_N_SAMPLERS; k++) {
        if (!ddpm_sampler_has((ddpm_sampler_kind)k, DDPM_SAMPLER_TAKES_SPACING))
            continue;
        const char *name = ddpm_sampler_name((ddpm_sampler_kind)k), *spacing = spacings[n_rows++ % 3];
        assert_int_equal(cu_ddpm("sample run --sampler %s --steps 7 --spacing %s --n 5 --seed 3 --out g.png "
                                 "--trajectory tr.png --trajectory-k 3 --quiet",
                                 name, spacing),
                         0);
        /* another batch split on purpose: an image's noise depends on (seed, image, step) only */
        static const char *const files[] = {"g.png", "tr.png"};
        for (int f = 0; f < 2; f++) {
            assert_int_equal(cu_ddpm("sample --from %s --out again.png --batch 2 --quiet", files[f]), 0);
            if (!cu_same_bytes(files[f], "again.png"))
                fail_msg("%s --spacing %s: --from %s did not re-create it byte for byte", name, spacing,
                         files[f]);
        }
        /* the spacing reaches the pixels, so a recipe that lost it would differ */
        const char *other = strcmp(spacing, "logsnr") ? "logsnr" : "karras";
        assert_int_equal(
            cu_ddpm("sample run --sampler %s --steps 7 --spacing %s --n 5 --seed 3 --out o.png --quiet", name,
                    other),
            0);
        if (!pixels_differ("g.png", "o.png"))
            fail_msg("%s: --spacing %s and %s gave the same pixels", name, spacing, other);
        assert_int_equal(cu_ddpm("info g.png"), 0);
        char want[128];
        snprintf(want, sizeof want, "sampler: %s, %ld network evaluations, %s spacing, clip on\n", name,
                 ddpm_sampler_evals((ddpm_sampler_kind)k, 7, 50), spacing);
        assert_true(stdout_has(want));
    }
    assert_int_equal(n_rows, 8);
}

/* The same grid at --threads 1 --batch 5 and --threads 2 --batch 2 (batches of
 * 2, 2, 1), for one deterministic and one stochastic solver. */
static void test_solvers_give_the_same_bytes_at_any_thread_count_and_batch_split(void **state)
{
    (void)state;
    static const char *const names[] = {"dpm++2m", "dpm++2m-sde", "euler-a", "heun"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        assert_int_equal(cu_ddpm("sample run --sampler %s --steps 6 --n 5 --seed 11 --threads 1 --batch 5 "
                                 "--out a.png --quiet",
                                 names[k]),
                         0);
        assert_int_equal(cu_ddpm("sample run --sampler %s --steps 6 --n 5 --seed 11 --threads 2 --batch 2 "
                                 "--out b.png --quiet",
                                 names[k]),
                         0);
        if (!cu_same_bytes("a.png", "b.png"))
            fail_msg("--sampler %s: --threads 1 --batch 5 and --threads 2 --batch 2 differ", names[k]);
    }
    /* the comparison has power: another seed gives other pixels */
    assert_int_equal(cu_ddpm("sample run --sampler euler-a --steps 6 --n 5 --seed 12 --out c.png --quiet"),
                     0);
    assert_true(pixels_differ("b.png", "c.png"));
}

static void test_dpmpp2m_with_20_steps_reports_20_evaluations_and_heun_an_odd_count(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample run --sampler dpm++2m --steps 20 --n 2 --out d.png --json --quiet"), 0);
    assert_true(stdout_has("\"sampler\":\"dpm++2m\",\"steps\":20,\"evaluations\":20,\"spacing\":\"logsnr\""));
    assert_int_equal(cu_ddpm("sample run --sampler heun --steps 20 --n 2 --out h.png --json --quiet"), 0);
    assert_true(stdout_has("\"steps\":19,\"evaluations\":19"));
    assert_int_equal(cu_ddpm("sample run --sampler heun --steps 21 --n 2 --out h.png --json --quiet"), 0);
    assert_true(stdout_has("\"steps\":21,\"evaluations\":21"));
    /* DDIM's summary is as it was: its steps, no spacing */
    assert_int_equal(cu_ddpm("sample run --sampler ddim --steps 4 --n 2 --out d.png --json --quiet"), 0);
    assert_true(stdout_has("\"sampler\":\"ddim\",\"steps\":4,\"evaluations\":4,\"n\""));
    /* the help lists every row and the flag */
    assert_int_equal(cu_ddpm("sample --help"), 0);
    assert_true(stdout_has("--spacing time|logsnr|karras"));
    for (int k = 0; k < DDPM_N_SAMPLERS; k++) {
        char row[64];
        snprintf(row, sizeof row, "      %s ", ddpm_sampler_name((ddpm_sampler_kind)k));
        assert_true(stdout_has(row));
    }
}

static void test_solvers_sample_a_class_with_guidance_and_a_learned_variance_model(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample crun --sampler unipc --steps 6 --class dog --guidance 3 --n 3 --seed 2 "
                             "--out cg.png --quiet"),
                     0);
    assert_int_equal(cu_ddpm("sample crun --sampler unipc --steps 6 --class cat --guidance 3 --n 3 --seed 2 "
                             "--out cc.png --quiet"),
                     0);
    assert_true(pixels_differ("cg.png", "cc.png"));
    assert_int_equal(
        cu_ddpm("sample crun --sampler unipc --steps 6 --class dog --n 3 --seed 2 --out c1.png --quiet"), 0);
    assert_true(pixels_differ("cg.png", "c1.png"));
    assert_int_equal(cu_ddpm("sample --from cg.png --out again.png --batch 1 --quiet"), 0);
    assert_true(cu_same_bytes("cg.png", "again.png"));
    /* the ODE solvers ignore v; the recipe re-creates the grid */
    assert_int_equal(cu_ddpm("sample lrun --sampler dpm++3m --steps 5 --n 3 --out l.png --quiet"), 0);
    assert_int_equal(cu_ddpm("sample --from l.png --out again.png --quiet"), 0);
    assert_true(cu_same_bytes("l.png", "again.png"));
}

static void test_a_wrong_sampler_or_spacing_is_one_line_and_exit_2(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample run --sampler dpm++9m --out x.png"), 2);
    assert_true(cu_stderr_one_line("--sampler: 'dpm++9m' is not one of ddpm, ddim, dpm++2m"));
    assert_int_equal(cu_ddpm("sample run --sampler heun --spacing cosine --out x.png"), 2);
    assert_true(cu_stderr_one_line("--spacing: 'cosine' is not one of time, logsnr, karras"));
    assert_int_equal(cu_ddpm("sample run --sampler ddim --spacing karras --out x.png"), 2);
    assert_true(cu_stderr_one_line("--spacing karras does not apply to --sampler ddim"));
    assert_int_equal(cu_ddpm("sample run --sampler ddpm --spacing time --out x.png"), 2);
    assert_true(cu_stderr_one_line("--spacing time does not apply to --sampler ddpm"));
    assert_true(cu_absent("x.png"));
    /* DDIM takes its own spacing by name */
    assert_int_equal(cu_ddpm("sample run --sampler ddim --spacing time --steps 3 --n 1 --out x.png --quiet"),
                     0);
    /* the recipe sets the spacing */
    assert_int_equal(cu_ddpm("sample run --sampler heun --steps 3 --n 1 --out y.png --quiet"), 0);
    assert_int_equal(cu_ddpm("sample --from y.png --out z.png --spacing time"), 2);
    assert_true(cu_stderr_one_line("--spacing cannot be given with --from"));
    /* a mu-prediction model's output is defined at the trained steps only */
    assert_int_equal(cu_ddpm("train data --out murun " TINY " --steps 1 --prediction mu"), 0);
    assert_int_equal(cu_ddpm("sample murun --sampler dpm++2m --steps 3 --out mu.png"), 1);
    assert_true(cu_stderr_one_line("where a mu-prediction model's output is not defined: use ddim or ddpm"));
    assert_true(cu_absent("mu.png"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_solver_row_samples_and_its_recipe_recreates_the_grid_byte_for_byte),
        cmocka_unit_test(test_solvers_give_the_same_bytes_at_any_thread_count_and_batch_split),
        cmocka_unit_test(test_dpmpp2m_with_20_steps_reports_20_evaluations_and_heun_an_odd_count),
        cmocka_unit_test(test_solvers_sample_a_class_with_guidance_and_a_learned_variance_model),
        cmocka_unit_test(test_a_wrong_sampler_or_spacing_is_one_line_and_exit_2),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
