/* `ddpm export`: the weights alone (EMA or --raw) under plain names, which
 * sample the same pixels as the run they came from, a quarter of its size. */
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
#include "ddpm/safetensors.h"
#include "testutil.h"

#define TINY "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 4"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli_export"))
        return -1;
    if (cu_make_gray_folder("data", 8, 11))
        return -1;
    /* enough steps that the EMA and the raw weights differ visibly */
    return cu_ddpm("train data --out run " TINY " --steps 12 --preview-n 0 --quiet");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

/* The pixels of a 22 x 22 grid (4 images of 8 px, pad 2); the PNG's text chunks
 * name the checkpoint, so the files differ while the pixels must not. */
static void grid_pixels(const char *name, uint8_t px[22 * 22])
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    assert_int_equal(ddpm_image_load_u8(path, px, 22, 1), 0);
}

static long file_size(const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void test_exported_weights_sample_the_same_pixels_as_the_run(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("export run w.safetensors --quiet"), 0);
    assert_int_equal(cu_ddpm("export run/checkpoint.safetensors wraw.safetensors --raw --quiet"), 0);
    const char *flags = "--n 4 --nrow 2 --steps 5 --seed 3 --quiet";
    assert_int_equal(cu_ddpm("sample run %s --out run_ema.png", flags), 0);
    assert_int_equal(cu_ddpm("sample run %s --no-ema --out run_raw.png", flags), 0);
    assert_int_equal(cu_ddpm("sample w.safetensors %s --out w.png", flags), 0);
    assert_int_equal(cu_ddpm("sample wraw.safetensors %s --out wraw.png", flags), 0);
    uint8_t a[22 * 22], b[22 * 22], c[22 * 22], d[22 * 22];
    grid_pixels("run_ema.png", a);
    grid_pixels("w.png", b);
    grid_pixels("run_raw.png", c);
    grid_pixels("wraw.png", d);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(c, d, sizeof c);
    assert_memory_not_equal(a, c, sizeof a); /* the two exports are different weights */
    /* the recipe says EMA for the EMA export, and --from works on it */
    assert_int_equal(cu_ddpm("info w.png"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "weights: EMA"));
    free(out);
    assert_int_equal(cu_ddpm("sample --from w.png --out again.png --quiet"), 0);
    assert_true(cu_same_bytes("w.png", "again.png"));
}

static void test_export_holds_only_plain_names_and_a_quarter_of_the_bytes(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("export run w2.safetensors --quiet"), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/w2.safetensors", cu_dir);
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open(&f, path), 0);
    int n = ddpm_safetensors_count(f);
    assert_true(n > 10);
    for (int i = 0; i < n; i++) {
        const char *name = ddpm_safetensors_at(f, i)->name;
        assert_true(strncmp(name, "ema.", 4) && strncmp(name, "adam_", 5));
    }
    assert_string_equal(ddpm_safetensors_meta(f, "weights"), "ema");
    assert_null(strstr(ddpm_safetensors_meta(f, "config"), "\"train\""));
    ddpm_safetensors_close(f);
    long full = file_size("run/checkpoint.safetensors"), small = file_size("w2.safetensors");
    assert_true(small > 0 && small < full / 3);
    /* info names it an export; a run cannot resume from it */
    assert_int_equal(cu_ddpm("info w2.safetensors"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "exported weights:"));
    free(out);
    snprintf(path, sizeof path, "%s/rx", cu_dir);
    mkdir(path, 0777);
    assert_int_equal(cu_ddpm("export run rx/checkpoint.safetensors --quiet"), 0);
    assert_int_equal(cu_ddpm("train data --out rx --resume --steps 20 --quiet"), 1);
    assert_true(cu_stderr_has("cannot resume from it"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exported_weights_sample_the_same_pixels_as_the_run),
        cmocka_unit_test(test_export_holds_only_plain_names_and_a_quarter_of_the_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
