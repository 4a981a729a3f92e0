/* The recipe of a PNG: written as tEXt chunks with valid CRCs, read back field
 * for field; PNGs without it, and broken or hostile chunks, are told apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ddpm/error.h"
#include "ddpm/recipe.h"
#include "testutil.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(dir, sizeof dir, "recipe");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(dir);
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static ddpm_recipe example(void)
{
    ddpm_recipe r;
    ddpm_recipe_init(&r);
    snprintf(r.version, sizeof r.version, "9.8.7");
    memset(r.checkpoint_sha256, 'a', 64);
    r.checkpoint_sha256[7] = '3';
    snprintf(r.checkpoint, sizeof r.checkpoint, "runs/x y/checkpoint.safetensors");
    r.step = 123456789012L;
    r.ema = 1;
    r.sampler = (ddpm_sampler_config){DDPM_SAMPLER_DDIM, 37, 0.3f, DDPM_VAR_BETA_TILDE, 0, DDPM_PRED_EPS};
    r.seed = UINT64_MAX - 5;
    r.kind = DDPM_RECIPE_TRAJECTORY;
    r.first_index = 40;
    r.count = 16;
    r.nrow = 10;
    r.pad = 3;
    r.pad_value = 17;
    return r;
}

/* Writes a 4x4 gray PNG with the recipe r (or none) to dir/name and returns its bytes. */
static uint8_t *write_png(const char *name, const ddpm_recipe *r, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint8_t px[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage st;
    int slot, n_text = r ? ddpm_recipe_to_text(r, text, &st, &slot) : 0;
    assert_int_equal(ddpm_png_write_text(path, px, 4, 4, 1, text, n_text), 0);
    return slurp(path, n);
}

static void test_recipe_round_trips_every_field_through_png_text(void **state)
{
    (void)state;
    ddpm_recipe r = example(), back;
    size_t n;
    uint8_t *png = write_png("r.png", &r, &n);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "r.png"), 1);
    assert_string_equal(back.version, r.version);
    assert_string_equal(back.checkpoint_sha256, r.checkpoint_sha256);
    assert_string_equal(back.checkpoint, r.checkpoint);
    assert_true(back.step == r.step && back.ema == 1 && back.seed == r.seed);
    assert_int_equal(back.sampler.kind, DDPM_SAMPLER_DDIM);
    assert_int_equal(back.sampler.steps, 37);
    assert_true(back.sampler.eta == 0.3f); /* exactly: written with 9 digits */
    assert_int_equal(back.sampler.var, DDPM_VAR_BETA_TILDE);
    assert_int_equal(back.sampler.clip_x0, 0);
    assert_int_equal(back.kind, DDPM_RECIPE_TRAJECTORY);
    assert_true(back.first_index == 40 && back.count == 16 && back.nrow == 10 && back.pad == 3 &&
                back.pad_value == 17);
    /* the pixels are still a PNG that stb_image reads */
    char path[512];
    snprintf(path, sizeof path, "%s/r.png", dir);
    uint8_t px[16];
    assert_int_equal(ddpm_image_load_u8(path, px, 4, 1), 0);
    assert_int_equal(px[5], 6);
    free(png);
}

static void test_png_without_recipe_reads_as_none(void **state)
{
    (void)state;
    ddpm_recipe back;
    size_t n;
    uint8_t *png = write_png("plain.png", NULL, &n);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "plain.png"), 0);
    free(png);
}

/* Rewrites the CRC of the chunk starting at `at` after its data changed. */
static void fix_crc(uint8_t *png, size_t at)
{
    uint32_t len =
        (uint32_t)png[at] << 24 | (uint32_t)png[at + 1] << 16 | (uint32_t)png[at + 2] << 8 | png[at + 3];
    uLong crc = crc32(crc32(0L, Z_NULL, 0), png + at + 4, len + 4);
    for (int i = 0; i < 4; i++)
        png[at + 8 + len + i] = (uint8_t)(crc >> (24 - 8 * i));
}

static size_t find(const uint8_t *png, size_t n, const char *s)
{
    size_t k = strlen(s);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(png + i, s, k))
            return i;
    fail_msg("'%s' not in the PNG", s);
    return 0;
}

static void test_broken_and_hostile_pngs_are_refused_naming_the_input(void **state)
{
    (void)state;
    ddpm_recipe r = example(), back;
    size_t n;
    uint8_t *png = write_png("h.png", &r, &n);
    /* a flipped bit in a chunk: bad CRC */
    size_t at = find(png, n, "ddpm:seed") - 8;
    png[at + 9] ^= 1;
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "h.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "bad CRC"));
    png[at + 9] ^= 1;
    /* a bad value with a valid CRC: refused, naming the field */
    size_t v = find(png, n, "ddpm:steps") + strlen("ddpm:steps") + 1;
    png[v] = 'x';
    fix_crc(png, find(png, n, "ddpm:steps") - 8);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "h.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "ddpm:steps"));
    free(png);
    /* a chunk length past the end, and truncation anywhere */
    png = write_png("h.png", &r, &n);
    at = find(png, n, "ddpm:kind") - 8;
    png[at] = 0x7f;
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "h.png"), DDPM_EFORMAT);
    png[at] = 0;
    for (size_t cut = 0; cut < n; cut += 7)
        assert_int_equal(ddpm_recipe_parse_png(&back, png, cut, "h.png"), DDPM_EFORMAT);
    assert_int_equal(strncmp(ddpm_last_error(), "h.png: ", 7), 0);
    /* a recipe missing a field: its name is said */
    at = find(png, n, "ddpm:pad_value") - 8;
    memcpy(png + at + 8, "ddpm:pad_valuX", 14); /* an unknown key: the field is missing */
    fix_crc(png, at);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "h.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "lacks ddpm:pad_value"));
    free(png);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recipe_round_trips_every_field_through_png_text),
        cmocka_unit_test(test_png_without_recipe_reads_as_none),
        cmocka_unit_test(test_broken_and_hostile_pngs_are_refused_naming_the_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
