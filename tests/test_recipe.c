/* The recipe of a PNG: written as tEXt chunks with valid CRCs, read back field
 * for field; PNGs without it, and broken or hostile chunks, are told apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
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
    r.sampler = (ddpm_sampler_config){DDPM_SAMPLER_DDIM, 37, 0.3f, DDPM_VAR_BETA_TILDE, 0, DDPM_SPACING_TIME};
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

/* precision: a bf16 recipe (of any kind) carries ddpm:precision bf16 and reads
 * back as bf16; a float32 one carries no such chunk (its bytes are those of a
 * recipe written before the field existed); a bad value is refused. */
static void test_precision_is_written_only_for_bf16_and_round_trips(void **state)
{
    (void)state;
    ddpm_recipe r = example(), back;
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage st;
    int slot, n32 = ddpm_recipe_to_text(&r, text, &st, &slot);
    for (int i = 0; i < n32; i++)
        assert_string_not_equal(text[i].key, "ddpm:precision");
    r.precision = DDPM_PRECISION_BF16;
    int n16 = ddpm_recipe_to_text(&r, text, &st, &slot);
    assert_int_equal(n16, n32 + 1);
    assert_string_equal(text[n16 - 1].key, "ddpm:precision");
    assert_string_equal(text[n16 - 1].value, "bf16");
    for (int kind = DDPM_RECIPE_GRID; kind <= DDPM_RECIPE_INTERP_IMAGES; kind++) {
        r.kind = (ddpm_recipe_kind)kind;
        r.count = kind == DDPM_RECIPE_IMAGE ? 1 : 16;
        if (ddpm_recipe_is_strip(r.kind)) /* a strip is DDIM at eta 0 with steps <= at */
            r.sampler.eta = 0, r.at = 100, r.count = 5;
        snprintf(r.images[0], sizeof r.images[0], "a.png");
        snprintf(r.images[1], sizeof r.images[1], "b.png");
        memset(r.image_sha256, 'b', sizeof r.image_sha256[0] - 1);
        memset(r.image_sha256[1], 'c', sizeof r.image_sha256[1] - 1);
        size_t n;
        uint8_t *png = write_png("p.png", &r, &n);
        if (ddpm_recipe_parse_png(&back, png, n, "p.png") != 1)
            fail_msg("kind %d: %s", kind, ddpm_last_error());
        assert_int_equal(back.precision, DDPM_PRECISION_BF16);
        free(png);
    }
    r = example();
    size_t n;
    uint8_t *png = write_png("p32.png", &r, &n);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "p32.png"), 1);
    assert_int_equal(back.precision, DDPM_PRECISION_FP32);
    free(png);
    /* an unknown value */
    int n_text = ddpm_recipe_to_text(&r, text, &st, &slot);
    text[n_text++] = (ddpm_png_text){"ddpm:precision", "fp8"};
    char path[512];
    snprintf(path, sizeof path, "%s/bad.png", dir);
    uint8_t px[16] = {0};
    assert_int_equal(ddpm_png_write_text(path, px, 4, 4, 1, text, n_text), 0);
    png = slurp(path, &n);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "bad.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "ddpm:precision"));
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

/* A recipe written before the class fields existed (a grid from the commit
 * before them, kept in tests/data): it reads as unconditional, and writes back
 * the same 17 chunks in the same order, so re-creating it gives the same bytes. */
static void test_recipe_without_class_fields_reads_as_unconditional(void **state)
{
    (void)state;
    size_t n;
    uint8_t *png = tu_read_file(DDPM_TEST_DATA "/recipe_before_classes.png", &n);
    assert_non_null(png);
    ddpm_recipe r;
    assert_int_equal(ddpm_recipe_parse_png(&r, png, n, "old.png"), 1);
    assert_int_equal(r.kind, DDPM_RECIPE_GRID);
    assert_int_equal(r.class_index, DDPM_NO_CLASS);
    assert_int_equal(r.grid_by_class, 0);
    assert_true(r.guidance == 1.0f);
    assert_string_equal(r.class_name, "");
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage st;
    int slot, n_text = ddpm_recipe_to_text(&r, text, &st, &slot);
    assert_int_equal(n_text, 17);
    size_t at = 8;
    for (int i = 0; i < n_text; i++) { /* each chunk of the file, in order: "<key>\0<value>" */
        size_t key_at = find(png + at, n - at, text[i].key) + at;
        assert_memory_equal(png + key_at - 4, "tEXt", 4);
        uint32_t len = (uint32_t)png[key_at - 8] << 24 | (uint32_t)png[key_at - 7] << 16 |
                       (uint32_t)png[key_at - 6] << 8 | png[key_at - 5];
        size_t nk = strlen(text[i].key) + 1;
        assert_int_equal(len, nk + strlen(text[i].value));
        assert_memory_equal(png + key_at + nk, text[i].value, len - nk);
        at = key_at + len + 4;
    }
    free(png);
}

static void test_conditional_recipe_round_trips_class_and_guidance_exactly(void **state)
{
    (void)state;
    /* guidance weights that need 1 to 9 significant digits, and neighbours of a
       short one that must not collapse onto it */
    const float weights[] = {0.0f,
                             1.0f,
                             2.7f,
                             0.1f,
                             1000.0f,
                             1e-7f,
                             3.14159274f,
                             7.5f,
                             999.999939f,
                             nextafterf(2.7f, 3.0f),
                             nextafterf(2.7f, 2.0f),
                             1.00000012f};
    for (size_t w = 0; w < sizeof weights / sizeof weights[0]; w++) {
        ddpm_recipe r = example(), back;
        r.kind = DDPM_RECIPE_IMAGE;
        r.count = 1;
        r.class_index = 7;
        snprintf(r.class_name, sizeof r.class_name, "ankle boot");
        r.guidance = weights[w];
        size_t n;
        uint8_t *png = write_png("c.png", &r, &n);
        assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "c.png"), 1);
        if (!(back.guidance == weights[w]))
            fail_msg("guidance %.9g read back as %.9g", (double)weights[w], (double)back.guidance);
        assert_int_equal(back.class_index, 7);
        assert_string_equal(back.class_name, "ankle boot");
        assert_int_equal(back.grid_by_class, 0);
        free(png);
    }
    char text[32];
    ddpm_recipe_float_text(text, 2.7f); /* the shortest text, not 2.70000005 */
    assert_string_equal(text, "2.7");
    ddpm_recipe_float_text(text, 1.0f);
    assert_string_equal(text, "1");
    /* rows by class: the images per class come back */
    ddpm_recipe r = example(), back;
    r.kind = DDPM_RECIPE_GRID;
    r.count = 30;
    r.nrow = 3;
    r.grid_by_class = 3;
    r.guidance = 0.5f;
    size_t n;
    uint8_t *png = write_png("g.png", &r, &n);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "g.png"), 1);
    assert_int_equal(back.grid_by_class, 3);
    assert_int_equal(back.class_index, DDPM_NO_CLASS);
    assert_true(back.guidance == 0.5f);
    free(png);
}

static void test_strip_recipes_round_trip_and_carry_only_their_fields(void **state)
{
    (void)state;
    ddpm_recipe r = example(), back;
    r.kind = DDPM_RECIPE_INTERP_SEEDS;
    r.sampler.eta = 0;
    r.count = 9;
    r.seed = UINT64_MAX;
    r.seed_b = 12;
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage st;
    int slot = 0, n_text = ddpm_recipe_to_text(&r, text, &st, &slot);
    assert_int_equal(slot, -1);      /* no per-image index */
    for (int i = 0; i < n_text; i++) /* no sample-only field */
        assert_true(strcmp(text[i].key, "ddpm:index") && strcmp(text[i].key, "ddpm:seed") &&
                    strcmp(text[i].key, "ddpm:nrow") && strcmp(text[i].key, "ddpm:class"));
    size_t n;
    uint8_t *png = write_png("s.png", &r, &n);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "s.png"), 1);
    assert_int_equal(back.kind, DDPM_RECIPE_INTERP_SEEDS);
    assert_true(back.seed == UINT64_MAX && back.seed_b == 12 && back.count == 9);
    assert_true(back.sampler.steps == 37 && back.sampler.clip_x0 == 0 && back.ema == 1);
    assert_true(back.pad == 3 && back.pad_value == 17);
    free(png);

    r = example();
    r.kind = DDPM_RECIPE_INTERP_IMAGES;
    r.sampler.eta = 0;
    r.count = 4;
    r.at = 40;
    r.seed = 5;
    r.sources = 1;
    snprintf(r.images[0], sizeof r.images[0], "data/a b.png");
    snprintf(r.images[1], sizeof r.images[1], "../x/y.jpg");
    memset(r.image_sha256[0], 'c', 64);
    memset(r.image_sha256[1], '0', 64);
    png = write_png("i.png", &r, &n);
    assert_int_equal(ddpm_recipe_parse_png(&back, png, n, "i.png"), 1);
    assert_int_equal(back.kind, DDPM_RECIPE_INTERP_IMAGES);
    assert_true(back.at == 40 && back.seed == 5 && back.sources == 1 && back.count == 4);
    assert_string_equal(back.images[0], "data/a b.png");
    assert_string_equal(back.images[1], "../x/y.jpg");
    assert_string_equal(back.image_sha256[0], r.image_sha256[0]);
    assert_string_equal(back.image_sha256[1], r.image_sha256[1]);
    free(png);
}

/* Writes the text of r with entry `drop` left out (-1: none) and `extra` (key,
 * value; NULL: none) added, and parses it: returns the parser's result. */
static int parse_edited(const ddpm_recipe *r, const char *drop, const char *extra_key,
                        const char *extra_value)
{
    char path[512];
    snprintf(path, sizeof path, "%s/e.png", dir);
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT + 1];
    ddpm_recipe_storage st;
    int slot, n_text = ddpm_recipe_to_text(r, text, &st, &slot), k = 0;
    for (int i = 0; i < n_text; i++)
        if (!drop || strcmp(text[i].key, drop))
            text[k++] = text[i];
    if (extra_key)
        text[k++] = (ddpm_png_text){extra_key, extra_value};
    uint8_t px[4] = {0};
    assert_int_equal(ddpm_png_write_text(path, px, 2, 2, 1, text, k), 0);
    size_t n;
    uint8_t *png = slurp(path, &n);
    ddpm_recipe back;
    int rc = ddpm_recipe_parse_png(&back, png, n, "e.png");
    free(png);
    return rc;
}

static void expect_refused(int rc, const char *needle)
{
    assert_int_equal(rc, DDPM_EFORMAT);
    if (!strstr(ddpm_last_error(), needle) || strncmp(ddpm_last_error(), "e.png: ", 7))
        fail_msg("the error '%s' does not say '%s' after the file name", ddpm_last_error(), needle);
}

static void test_new_fields_out_of_place_or_alone_are_refused(void **state)
{
    (void)state;
    ddpm_recipe c = example();
    c.kind = DDPM_RECIPE_GRID;
    c.class_index = 2;
    snprintf(c.class_name, sizeof c.class_name, "owl");
    c.guidance = 3;
    assert_int_equal(parse_edited(&c, NULL, NULL, NULL), 1);
    expect_refused(parse_edited(&c, "ddpm:class_name", NULL, NULL), "ddpm:class without");
    expect_refused(parse_edited(&c, "ddpm:guidance", NULL, NULL), "a class but no ddpm:guidance");
    expect_refused(parse_edited(&c, NULL, "ddpm:grid_by_class", "4"),
                   "both ddpm:class and ddpm:grid_by_class");
    expect_refused(parse_edited(&c, NULL, "ddpm:seeds", "1,2"),
                   "ddpm:seeds does not belong to a grid recipe");
    expect_refused(parse_edited(&c, "ddpm:guidance", "ddpm:guidance", "nan"),
                   "ddpm:guidance has a bad value");
    expect_refused(parse_edited(&c, "ddpm:guidance", "ddpm:guidance", "1001"),
                   "ddpm:guidance has a bad value");
    expect_refused(parse_edited(&c, "ddpm:class_name", "ddpm:class_name", ""),
                   "ddpm:class_name has a bad value");
    ddpm_recipe u = example(); /* unconditional: guidance alone means nothing */
    expect_refused(parse_edited(&u, NULL, "ddpm:guidance", "2"), "ddpm:guidance but no class");
    ddpm_recipe s = example();
    s.kind = DDPM_RECIPE_INTERP_SEEDS;
    s.sampler.eta = 0;
    s.count = 3;
    assert_int_equal(parse_edited(&s, NULL, NULL, NULL), 1);
    expect_refused(parse_edited(&s, NULL, "ddpm:class", "1"),
                   "does not belong to a interpolation-seeds recipe");
    expect_refused(parse_edited(&s, "ddpm:seeds", NULL, NULL), "lacks ddpm:seeds");
    expect_refused(parse_edited(&s, "ddpm:seeds", "ddpm:seeds", "1,"), "ddpm:seeds has a bad value");
    expect_refused(parse_edited(&s, "ddpm:seeds", "ddpm:seeds", "1,-2"), "ddpm:seeds has a bad value");
    expect_refused(parse_edited(&s, "ddpm:eta", "ddpm:eta", "0.5"), "DDIM at eta 0");
    expect_refused(parse_edited(&s, "ddpm:count", "ddpm:count", "1"), "2..100000 images");
    ddpm_recipe i = s;
    i.kind = DDPM_RECIPE_INTERP_IMAGES;
    i.at = 40;
    snprintf(i.images[0], sizeof i.images[0], "a.png");
    snprintf(i.images[1], sizeof i.images[1], "b.png");
    memset(i.image_sha256[0], 'a', 64);
    memset(i.image_sha256[1], 'b', 64);
    assert_int_equal(parse_edited(&i, NULL, NULL, NULL), 1);
    expect_refused(parse_edited(&i, "ddpm:image_b_sha256", NULL, NULL), "lacks ddpm:image_b_sha256");
    expect_refused(parse_edited(&i, "ddpm:image_a_sha256", "ddpm:image_a_sha256", "abc"),
                   "ddpm:image_a_sha256 has a bad value");
    expect_refused(parse_edited(&i, "ddpm:at", "ddpm:at", "36"), "steps 37 are more than its step t 36");
}

static void test_recipe_classes_are_checked_against_the_checkpoint(void **state)
{
    (void)state;
    const char *const names[3] = {"cat", "dog", "owl"};
    ddpm_recipe r = example();
    r.kind = DDPM_RECIPE_GRID;
    assert_int_equal(ddpm_recipe_check_classes(&r, 0, NULL, "x.png"), 0); /* unconditional fits any */
    assert_int_equal(ddpm_recipe_check_classes(&r, 3, names, "x.png"), 0);
    r.class_index = 2;
    snprintf(r.class_name, sizeof r.class_name, "owl");
    assert_int_equal(ddpm_recipe_check_classes(&r, 3, names, "x.png"), 0);
    assert_int_equal(ddpm_recipe_check_classes(&r, 0, NULL, "x.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(),
                           "x.png: its recipe samples class 2 ('owl'), but the checkpoint is "
                           "not class-conditional"));
    assert_int_equal(ddpm_recipe_check_classes(&r, 2, names, "x.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(),
                           "x.png: recipe class 2 ('owl') is out of range: the checkpoint has 2 "
                           "classes (0..1)"));
    snprintf(r.class_name, sizeof r.class_name, "bat");
    assert_int_equal(ddpm_recipe_check_classes(&r, 3, names, "x.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "the checkpoint's class 2 is 'owl'"));
    /* rows by class: the grid holds per-class x classes images, a trajectory the first 16 rows */
    r.class_index = DDPM_NO_CLASS;
    r.grid_by_class = 4;
    r.count = 12;
    assert_int_equal(ddpm_recipe_check_classes(&r, 3, names, "x.png"), 0);
    assert_int_equal(ddpm_recipe_check_classes(&r, 2, names, "x.png"), DDPM_EFORMAT);
    assert_int_equal(ddpm_recipe_check_classes(&r, 0, NULL, "x.png"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "one row per class"));
    r.kind = DDPM_RECIPE_TRAJECTORY;
    r.grid_by_class = 8;
    r.count = 16;
    assert_int_equal(ddpm_recipe_check_classes(&r, 3, names, "x.png"), 0);
    r.count = 12;
    assert_int_equal(ddpm_recipe_check_classes(&r, 3, names, "x.png"), DDPM_EFORMAT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recipe_round_trips_every_field_through_png_text),
        cmocka_unit_test(test_png_without_recipe_reads_as_none),
        cmocka_unit_test(test_broken_and_hostile_pngs_are_refused_naming_the_input),
        cmocka_unit_test(test_recipe_without_class_fields_reads_as_unconditional),
        cmocka_unit_test(test_conditional_recipe_round_trips_class_and_guidance_exactly),
        cmocka_unit_test(test_strip_recipes_round_trip_and_carry_only_their_fields),
        cmocka_unit_test(test_new_fields_out_of_place_or_alone_are_refused),
        cmocka_unit_test(test_recipe_classes_are_checked_against_the_checkpoint),
        cmocka_unit_test(test_precision_is_written_only_for_bf16_and_round_trips),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
