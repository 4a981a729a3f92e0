/* PNG recipes as a user meets them: `ddpm sample --from IMAGE.png` re-creates a
 * grid, one image of --out-dir, a trajectory and a training preview byte for
 * byte, unconditional or of a class (with its guidance, or rows by class),
 * refuses another checkpoint, a class the checkpoint does not have and a PNG
 * without a recipe; `ddpm interpolate --from STRIP.png` re-creates both kinds
 * of strip and refuses another checkpoint or a changed source image; each
 * command sends the other's PNGs to it; `ddpm info IMAGE.png` prints the
 * recipe or says there is none. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <stb_image.h>

#include "cliutil.h"
#include "ddpm/imageio.h"
#include "ddpm/recipe.h"
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
    /* a class-conditional run: three class folders; lr 1e-2 without warm-up so
       that 8 steps already make the class and the guidance change the pixels */
    char path[512];
    snprintf(path, sizeof path, "%s/cdata", cu_dir);
    if (mkdir(path, 0777) || cu_make_gray_folder("cdata/cat", 4, 3) ||
        cu_make_gray_folder("cdata/dog", 4, 5) || cu_make_gray_folder("cdata/owl", 4, 11) ||
        cu_make_gray_folder("src", 2, 13))
        return -1;
    if (cu_ddpm("train cdata --classes --out crun " TINY
                " --steps 8 --warmup 0 --lr 1e-2 --preview-n 0 --quiet"))
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
    assert_int_equal(cu_ddpm("sample run --sampler ddim --n 2 --steps 3 --seed 11 --out g.png --quiet"), 0);
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

/* The decoded pixels of cu_dir/NAME (gray), *n of them. */
static unsigned char *pixels(const char *name, int *n)
{
    char path[512];
    int w, h, ch;
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    unsigned char *px = stbi_load(path, &w, &h, &ch, 1);
    if (!px)
        fail_msg("%s: %s", path, stbi_failure_reason());
    *n = w * h;
    return px;
}

/* The two PNGs decode to different pixels (of the same size). */
static int pixels_differ(const char *a, const char *b)
{
    int na, nb;
    unsigned char *x = pixels(a, &na), *y = pixels(b, &nb);
    int differ = na == nb && memcmp(x, y, (size_t)na) != 0;
    stbi_image_free(x);
    stbi_image_free(y);
    return differ;
}

/* A training preview drawn with a solver (--preview-sampler) is `ddpm sample`
 * of the same checkpoint, seed and settings, and its recipe re-creates it; the
 * flags a row does not take are refused. */
static void test_preview_with_a_solver_equals_ddpm_sample_and_its_recipe_recreates_it(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train data --out prun " TINY
                             " --steps 4 --seed 6 --preview-n 4 --preview-sampler "
                             "dpm++2m --preview-steps 3 --preview-spacing karras --quiet"),
                     0);
    const char *preview = "prun/samples/step_0000004.png";
    ddpm_recipe r;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cu_dir, preview);
    assert_int_equal(ddpm_recipe_read_png(&r, path), 1);
    assert_int_equal(r.sampler.kind, DDPM_SAMPLER_DPMPP_2M);
    assert_int_equal(r.sampler.spacing, DDPM_SPACING_KARRAS);
    assert_int_equal(r.sampler.steps, 3);
    assert_int_equal(cu_ddpm("sample --from %s --out again.png --batch 3 --quiet", preview), 0);
    assert_true(cu_same_bytes(preview, "again.png"));
    assert_int_equal(cu_ddpm("sample prun --n 4 --seed 6 --sampler dpm++2m --steps 3 --spacing karras "
                             "--out ps.png --quiet"),
                     0);
    int na, nb;
    unsigned char *x = pixels(preview, &na), *y = pixels("ps.png", &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, (size_t)na);
    stbi_image_free(x);
    stbi_image_free(y);
    /* another spacing gives other pixels: the preview used the one asked for */
    assert_int_equal(cu_ddpm("sample prun --n 4 --seed 6 --sampler dpm++2m --steps 3 --spacing time "
                             "--out pt.png --quiet"),
                     0);
    assert_true(pixels_differ(preview, "pt.png"));
    assert_int_equal(
        cu_ddpm("train data --out prun2 " TINY " --steps 1 --preview-sampler ddim --preview-spacing karras"),
        2);
    assert_true(cu_stderr_one_line("--preview-spacing does not apply to --preview-sampler ddim"));
    assert_int_equal(
        cu_ddpm("train data --out prun2 " TINY " --steps 1 --preview-sampler ddpm --preview-steps 5"), 2);
    assert_true(cu_stderr_one_line("--preview-steps does not apply to --preview-sampler ddpm"));
    assert_int_equal(cu_ddpm("train data --out prun2 " TINY " --steps 1 --preview-sampler nope"), 2);
    assert_true(cu_absent("prun2"));
}

/* Re-writes the recipe of cu_dir/FROM, changed by `edit`, into cu_dir/TO (a
 * 2x2 image: --from reads the recipe only). */
static void write_edited_recipe(const char *from, const char *to, void (*edit)(ddpm_recipe *))
{
    char path[512];
    ddpm_recipe r;
    snprintf(path, sizeof path, "%s/%s", cu_dir, from);
    assert_int_equal(ddpm_recipe_read_png(&r, path), 1);
    edit(&r);
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage st;
    int slot, n = ddpm_recipe_to_text(&r, text, &st, &slot);
    uint8_t px[4] = {0};
    snprintf(path, sizeof path, "%s/%s", cu_dir, to);
    assert_int_equal(ddpm_png_write_text(path, px, 2, 2, 1, text, n), 0);
}

static void test_from_recreates_conditional_grids_images_and_trajectories_byte_for_byte(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample crun --class dog --guidance 2.5 --n 3 --steps 3 --seed 4 --out cg.png "
                             "--out-dir ceach --trajectory ct.png --trajectory-k 2 --quiet"),
                     0);
    /* the class and the guidance reach the pixels of this model: a --from that
       lost either would differ in its pixels, not only in its text */
    assert_int_equal(cu_ddpm("sample crun --n 3 --steps 3 --seed 4 --out ug.png --quiet"), 0);
    assert_true(pixels_differ("cg.png", "ug.png"));
    assert_int_equal(cu_ddpm("sample crun --class dog --n 3 --steps 3 --seed 4 --out cg1.png --quiet"), 0);
    assert_true(pixels_differ("cg.png", "cg1.png"));
    static const char *files[] = {"cg.png", "ceach/00002.png", "ct.png"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        assert_int_equal(cu_ddpm("sample --from %s --out again.png --batch 2 --quiet", files[i]), 0);
        if (!cu_same_bytes(files[i], "again.png"))
            fail_msg("--from %s did not re-create it byte for byte", files[i]);
    }
    assert_int_equal(cu_ddpm("info cg.png"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "class: 1 (dog), guidance 2.5\n"));
    free(out);
    /* one row per class: the grid, and an image of the second row, which carries its own class */
    assert_int_equal(cu_ddpm("sample crun --grid-by-class --guidance 0.5 --n 2 --steps 3 --out gb.png "
                             "--out-dir gbeach --quiet"),
                     0);
    static const char *by_class[] = {"gb.png", "gbeach/00003.png"};
    for (size_t i = 0; i < sizeof by_class / sizeof by_class[0]; i++) {
        assert_int_equal(cu_ddpm("sample --from %s --out again.png --quiet", by_class[i]), 0);
        if (!cu_same_bytes(by_class[i], "again.png"))
            fail_msg("--from %s did not re-create it byte for byte", by_class[i]);
    }
    assert_int_equal(cu_ddpm("info gb.png"), 0);
    out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "class: one row per class, 2 images each, guidance 0.5\n"));
    free(out);
    assert_int_equal(cu_ddpm("info gbeach/00003.png"), 0);
    out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "class: 1 (dog), guidance 0.5\n"));
    free(out);
    /* the recipe sets the class */
    assert_int_equal(cu_ddpm("sample --from cg.png --out again.png --class cat"), 2);
    assert_true(cu_stderr_one_line("--class cannot be given with --from"));
}

static void class_out_of_range(ddpm_recipe *r)
{
    r->class_index = 3;
}
static void class_misnamed(ddpm_recipe *r)
{
    r->class_index = 0;
}
static void class_on_unconditional(ddpm_recipe *r)
{
    r->class_index = 0;
    snprintf(r->class_name, sizeof r->class_name, "cat");
    r->guidance = 2;
}

static void test_from_refuses_a_class_the_checkpoint_does_not_have(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("sample crun --class owl --n 1 --steps 2 --out owl.png --quiet"), 0);
    write_edited_recipe("owl.png", "bad_index1.png", class_out_of_range);
    assert_int_equal(cu_ddpm("sample --from bad_index1.png --out x1.png"), 1);
    assert_true(
        cu_stderr_one_line("bad_index1.png: recipe class 3 ('owl') is out of range: the checkpoint has 3 "
                           "classes (0..2)"));
    write_edited_recipe("owl.png", "bad_name.png", class_misnamed);
    assert_int_equal(cu_ddpm("sample --from bad_name.png --out x1.png"), 1);
    assert_true(cu_stderr_one_line("recipe class 0 is 'owl', but the checkpoint's class 0 is 'cat'"));
    assert_int_equal(cu_ddpm("sample run --n 1 --steps 2 --out plain.png --quiet"), 0);
    write_edited_recipe("plain.png", "bad_class.png", class_on_unconditional);
    assert_int_equal(cu_ddpm("sample --from bad_class.png --out x1.png"), 1);
    assert_true(
        cu_stderr_one_line("bad_class.png: its recipe samples class 0 ('cat'), but the checkpoint is not "
                           "class-conditional"));
    assert_true(cu_absent("x1.png"));
}

static void test_interpolate_from_recreates_both_kinds_of_strip_byte_for_byte(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("interpolate run --seeds 3,8 --n 4 --steps 3 --pad 1 --out ss.png --quiet"), 0);
    assert_int_equal(cu_ddpm("interpolate --from ss.png --out again.png --batch 3 --quiet"), 0);
    assert_true(cu_same_bytes("ss.png", "again.png"));
    assert_int_equal(
        cu_ddpm("interpolate run --at 20 --images src/00.png,src/01.png --n 3 --steps 4 --seed 5 "
                "--sources --pad-value 7 --out is.png --quiet"),
        0);
    assert_int_equal(cu_ddpm("interpolate --from is.png --out again.png --batch 2 --quiet"), 0);
    assert_true(cu_same_bytes("is.png", "again.png"));
    /* sources that moved, named with --images: the same strip, names and all */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s' && mkdir moved && cp src/00.png src/01.png moved/", cu_dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(
        cu_ddpm("interpolate --from is.png --images moved/00.png,moved/01.png --out again.png --quiet"), 0);
    assert_true(cu_same_bytes("is.png", "again.png"));
    assert_int_equal(cu_ddpm("info ss.png"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "seeds: 3, 8\n"));
    assert_non_null(strstr(out, "re-create: ddpm interpolate --from ss.png"));
    free(out);
    assert_int_equal(cu_ddpm("info is.png"), 0);
    out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "noised to t = 20, the two images at the ends"));
    assert_non_null(strstr(out, "source image 2: src/01.png\n"));
    free(out);
    assert_int_equal(cu_ddpm("interpolate --from is.png --out x.png --seed 2"), 2);
    assert_true(cu_stderr_one_line("--seed cannot be given with --from"));
}

static void strip_to_euler_a(ddpm_recipe *r)
{
    r->sampler.kind = DDPM_SAMPLER_EULER_A;
}

/* Strips decoded with a solver record the sampler and its spacing and are
 * re-created byte for byte; a DDIM strip's recipe has no spacing (its bytes are
 * those of the strips before solvers); a recipe with a stochastic sampler is
 * refused. */
static void test_interpolate_from_recreates_solver_strips_byte_for_byte(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("interpolate run --seeds 3,8 --n 4 --sampler unipc --steps 5 --spacing time "
                             "--out us.png --quiet"),
                     0);
    assert_int_equal(cu_ddpm("interpolate --from us.png --out again.png --batch 3 --quiet"), 0);
    assert_true(cu_same_bytes("us.png", "again.png"));
    assert_int_equal(cu_ddpm("interpolate run --at 30 --images src/00.png,src/01.png --n 3 --sampler dpm++2s "
                             "--steps 5 --spacing karras --seed 2 --out ds.png --quiet"),
                     0);
    assert_int_equal(cu_ddpm("interpolate --from ds.png --out again.png --batch 2 --quiet"), 0);
    assert_true(cu_same_bytes("ds.png", "again.png"));
    char path[512];
    ddpm_recipe r;
    snprintf(path, sizeof path, "%s/ds.png", cu_dir);
    assert_int_equal(ddpm_recipe_read_png(&r, path), 1);
    assert_int_equal(r.sampler.kind, DDPM_SAMPLER_DPMPP_2S);
    assert_int_equal(r.sampler.spacing, DDPM_SPACING_KARRAS);
    assert_int_equal(r.sampler.steps, 5);
    /* the same strip with another spacing differs: the recipe's spacing is used */
    assert_int_equal(cu_ddpm("interpolate run --at 30 --images src/00.png,src/01.png --n 3 --sampler dpm++2s "
                             "--steps 5 --spacing logsnr --seed 2 --out dl.png --quiet"),
                     0);
    assert_false(cu_same_bytes("ds.png", "dl.png"));
    assert_int_equal(cu_ddpm("interpolate --from ds.png --out x.png --sampler heun"), 2);
    assert_true(cu_stderr_one_line("--sampler cannot be given with --from"));
    /* DDIM, named or not: the same bytes, and no spacing in the recipe */
    assert_int_equal(cu_ddpm("interpolate run --seeds 3,8 --n 4 --steps 3 --out dd1.png --quiet"), 0);
    assert_int_equal(
        cu_ddpm("interpolate run --seeds 3,8 --n 4 --steps 3 --sampler ddim --out dd2.png --quiet"), 0);
    assert_true(cu_same_bytes("dd1.png", "dd2.png"));
    long len = 0;
    char *bytes = cu_slurp("dd1.png", &len);
    assert_null(memmem(bytes, (size_t)len, "ddpm:spacing", 12));
    free(bytes);
    bytes = cu_slurp("us.png", &len);
    assert_non_null(memmem(bytes, (size_t)len, "ddpm:spacing", 12));
    free(bytes);
    write_edited_recipe("us.png", "noisy.png", strip_to_euler_a);
    assert_int_equal(cu_ddpm("interpolate --from noisy.png --out x.png"), 1);
    assert_true(
        cu_stderr_one_line("noisy.png: an interpolation strip is decoded with a deterministic sampler"));
    assert_true(cu_absent("x.png"));
}

static void test_interpolate_from_refuses_another_checkpoint_or_a_changed_source(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("interpolate run --seeds 1,2 --n 2 --steps 2 --out s2.png --quiet"), 0);
    assert_int_equal(cu_ddpm("interpolate --from s2.png --checkpoint other --out x2.png"), 1);
    assert_true(cu_stderr_one_line("is not the checkpoint s2.png was made from"));
    /* a source image changed after the strip was made */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s' && mkdir src2 && cp src/00.png src/01.png src2/", cu_dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(
        cu_ddpm("interpolate run --at 10 --images src2/00.png,src2/01.png --n 2 --steps 2 --out i2.png "
                "--quiet"),
        0);
    uint8_t px[64];
    memset(px, 99, sizeof px);
    char path[512];
    snprintf(path, sizeof path, "%s/src2/01.png", cu_dir);
    assert_int_equal(ddpm_png_write(path, px, 8, 8, 1), 0);
    assert_int_equal(cu_ddpm("interpolate --from i2.png --out x2.png"), 1);
    assert_true(cu_stderr_one_line("src2/01.png: SHA-256"));
    assert_true(cu_stderr_one_line("is not the second source image i2.png was made from"));
    assert_true(cu_absent("x2.png"));
}

static void test_sample_and_interpolate_send_each_others_pngs_to_the_right_command(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("interpolate run --seeds 1,2 --n 2 --steps 2 --out s3.png --quiet"), 0);
    assert_int_equal(cu_ddpm("sample --from s3.png --out x3.png"), 1);
    assert_true(
        cu_stderr_one_line("s3.png: an interpolation strip; re-create it with `ddpm interpolate --from "
                           "s3.png"));
    assert_int_equal(cu_ddpm("sample run --n 1 --steps 2 --out g3.png --quiet"), 0);
    assert_int_equal(cu_ddpm("interpolate --from g3.png --out x3.png"), 1);
    assert_true(
        cu_stderr_one_line("g3.png: a grid of ddpm sample, not an interpolation strip; re-create it with "
                           "`ddpm sample --from g3.png"));
    assert_true(cu_absent("x3.png"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_recreates_grid_image_trajectory_and_preview_byte_for_byte),
        cmocka_unit_test(test_from_refuses_a_checkpoint_with_another_hash),
        cmocka_unit_test(test_preview_with_a_solver_equals_ddpm_sample_and_its_recipe_recreates_it),
        cmocka_unit_test(test_info_prints_the_recipe_or_says_there_is_none),
        cmocka_unit_test(test_from_recreates_conditional_grids_images_and_trajectories_byte_for_byte),
        cmocka_unit_test(test_from_refuses_a_class_the_checkpoint_does_not_have),
        cmocka_unit_test(test_interpolate_from_recreates_both_kinds_of_strip_byte_for_byte),
        cmocka_unit_test(test_interpolate_from_recreates_solver_strips_byte_for_byte),
        cmocka_unit_test(test_interpolate_from_refuses_another_checkpoint_or_a_changed_source),
        cmocka_unit_test(test_sample_and_interpolate_send_each_others_pngs_to_the_right_command),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
