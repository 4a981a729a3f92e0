/* The data-driven model defaults as a user meets them: `ddpm train DIR --out RUN`
 * with no model flag on 28, 32, 64 and 128 px folders, gray and RGB, builds the
 * model of the rule (config.h) and trains; explicit flags win; what cannot work
 * is refused with one line; gray pictures saved as RGB train as 1 channel. */
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
#include "ddpm/checkpoint.h"
#include "ddpm/dataset.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "testutil.h"

/* n PNGs of side S with file channels fc in cu_dir/NAME; gray content (R = G = B)
 * when gray, else a red/blue pattern. */
static void make_folder(const char *name, int S, int fc, int gray, int n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    assert_int_equal(mkdir(path, 0777), 0);
    uint8_t *px = malloc((size_t)S * S * fc);
    assert_non_null(px);
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < S * S; i++) {
            uint8_t v = (uint8_t)((i * (k + 3) * 7 + i / S * 13) & 255);
            for (int c = 0; c < fc; c++)
                px[i * fc + c] = gray ? v : (uint8_t)(v + 85 * c);
        }
        snprintf(path, sizeof path, "%s/%s/img%02d.png", cu_dir, name, k);
        assert_int_equal(ddpm_png_write(path, px, S, S, fc), 0);
    }
    free(px);
}

static ddpm_run_config run_config(const char *run)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/checkpoint.safetensors", cu_dir, run);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    ddpm_run_config c = *ddpm_checkpoint_config(ck);
    ddpm_checkpoint_close(ck);
    return c;
}

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli_defaults");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

typedef struct {
    int S, ch, n_levels, mult[5], attn;
} expected_model;

static const expected_model expected[] = {
    {28, 32, 3, {1, 2, 2}, 14},
    {32, 32, 3, {1, 2, 2}, 16},
    {64, 64, 4, {1, 2, 2, 2}, 16},
    {128, 64, 5, {1, 1, 2, 2, 2}, 16},
};

static void check_model(const ddpm_unet_config *m, const expected_model *e, int C)
{
    assert_int_equal(m->image_size, e->S);
    assert_int_equal(m->in_channels, C);
    assert_int_equal(m->ch, e->ch);
    assert_int_equal(m->n_levels, e->n_levels);
    for (int l = 0; l < e->n_levels; l++)
        assert_int_equal(m->ch_mult[l], e->mult[l]);
    assert_int_equal(m->n_attn, 1);
    assert_int_equal(m->attn_res[0], e->attn);
    assert_int_equal(m->groups, 8);
    assert_int_equal(m->num_res_blocks, 2);
}

static void test_fit_data_gives_the_documented_model_for_each_size(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        ddpm_unet_config m;
        ddpm_unet_config_default(&m);
        ddpm_unet_config_set_auto(&m);
        assert_int_equal(ddpm_unet_config_fit_data(&m, expected[i].S, 3), 0);
        check_model(&m, &expected[i], 3);
        assert_int_equal(ddpm_unet_config_check(&m), 0);
    }
    /* explicit fields win: ch 48 keeps its value and picks groups dividing it */
    ddpm_unet_config m;
    ddpm_unet_config_default(&m);
    ddpm_unet_config_set_auto(&m);
    m.ch = 12;
    assert_int_equal(ddpm_unet_config_fit_data(&m, 64, 1), 0);
    assert_int_equal(m.ch, 12);
    assert_int_equal(m.groups, 4);
    /* an explicit ch-mult that the size cannot go through is refused */
    ddpm_unet_config_set_auto(&m);
    m.n_levels = 3;
    assert_int_equal(ddpm_unet_config_fit_data(&m, 30, 1), DDPM_EINVAL);
    /* an odd size gets the levels it can halve to */
    ddpm_unet_config_set_auto(&m);
    assert_int_equal(ddpm_unet_config_fit_data(&m, 30, 1), 0);
    assert_int_equal(m.n_levels, 2);
    assert_int_equal(m.attn_res[0], 15);
}

/* `ddpm train DIR --out RUN` with no model flag, one step, every size, gray and RGB. */
static void test_train_with_default_flags_on_each_size_gray_and_rgb(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        for (int C = 1; C <= 3; C += 2) {
            const expected_model *e = &expected[i];
            char data[64], run[64];
            snprintf(data, sizeof data, "data%d_%d", e->S, C);
            snprintf(run, sizeof run, "run%d_%d", e->S, C);
            make_folder(data, e->S, C, C == 1, 2);
            int rc = cu_ddpm("train %s --out %s --steps 1 --batch 2 --preview-n 0 --quiet", data, run);
            if (rc)
                cu_stderr_has("");
            assert_int_equal(rc, 0);
            ddpm_run_config c = run_config(run);
            check_model(&c.model, e, C);
        }
    }
}

static void test_explicit_flags_win_and_impossible_sizes_are_refused(void **state)
{
    (void)state;
    make_folder("d32", 32, 3, 0, 2);
    assert_int_equal(cu_ddpm("train d32 --out r32 --steps 1 --batch 2 --preview-n 0 --quiet --ch 16 --attn 8 "
                             "--ch-mult 1,2,2,2"),
                     0);
    ddpm_run_config c = run_config("r32");
    assert_int_equal(c.model.ch, 16);
    assert_int_equal(c.model.n_levels, 4);
    assert_int_equal(c.model.attn_res[0], 8);
    assert_int_equal(c.model.in_channels, 3);
    /* 30 px cannot go through 3 levels: one line, before any file is written */
    assert_int_equal(cu_ddpm("train d32 --out r30 --size 30 --ch-mult 1,2,2 --steps 1"), 1);
    assert_true(cu_stderr_has("image size 30 cannot go through 3 levels"));
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/r30", cu_dir);
    assert_int_not_equal(stat(path, &st), 0);
}

/* Gray pictures saved as RGB (R = G = B everywhere) train as 1 channel; one
 * colour pixel makes the folder RGB; --channels overrides. */
static void test_gray_saved_as_rgb_trains_as_one_channel(void **state)
{
    (void)state;
    make_folder("grayrgb", 28, 3, 1, 3);
    assert_int_equal(cu_ddpm("train grayrgb --out rg --steps 1 --batch 2 --preview-n 0 --quiet"), 0);
    assert_int_equal(run_config("rg").model.in_channels, 1);
    assert_int_equal(
        cu_ddpm("train grayrgb --out rg3 --channels 3 --steps 1 --batch 2 --preview-n 0 --quiet"), 0);
    assert_int_equal(run_config("rg3").model.in_channels, 3);
    /* one pixel off gray in one image: the folder is colour */
    char path[512];
    snprintf(path, sizeof path, "%s/grayrgb/zz.png", cu_dir);
    uint8_t px[28 * 28 * 3];
    memset(px, 100, sizeof px);
    px[3 * 400 + 1] = 101;
    assert_int_equal(ddpm_png_write(path, px, 28, 28, 3), 0);
    snprintf(path, sizeof path, "%s/grayrgb", cu_dir);
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, path, NULL), 0);
    assert_int_equal(ddpm_dataset_channels(ds), 3);
    assert_int_equal(ddpm_dataset_count(ds), 4);
    ddpm_dataset_close(ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_data_gives_the_documented_model_for_each_size),
        cmocka_unit_test_setup_teardown(test_train_with_default_flags_on_each_size_gray_and_rgb, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_explicit_flags_win_and_impossible_sizes_are_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_gray_saved_as_rgb_trains_as_one_channel, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
