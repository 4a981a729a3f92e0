/* Tests of safetensors: exact round trips, a header other readers accept, refusal
 * (never a crash) of every truncation and of each kind of corruption with a
 * message naming the file, and the atomic writer's behaviour on failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/crc32c.h"
#include "ddpm/error.h"
#include "ddpm/safetensors.h"
#include "testutil.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(tmpdir, sizeof tmpdir, "st");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmpdir);
}



static unsigned char *read_all(const char *path, size_t *n)
{
    unsigned char *b = tu_read_file(path, n);
    assert_non_null(b);
    return b;
}

static void write_all(const char *path, const void *b, size_t n) { assert_int_equal(tu_write_file(path, b, n), 0); }

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* The message names the file and contains `part`. */
static void assert_message(const char *name, const char *part)
{
    const char *msg = ddpm_last_error();
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s: ", name);
    if (!starts_with(msg, prefix) || !strstr(msg, part)) {
        fprintf(stderr, "message '%s' lacks '%s' or '%s'\n", msg, prefix, part);
        fail();
    }
}

/* A fixed set of tensors covering shapes [1], 2-D, 4-D, 0-D, a zero-size one and
 * awkward names, filled with values including NaN, -0, infinities, denormals. */
typedef struct {
    float a[3 * 5], one[1], conv[4 * 3 * 3 * 3], scalar[1], big[1000];
    ddpm_st_tensor t[6];
    ddpm_st_meta m[4];
} fixture;

static void make_fixture(fixture *fx)
{
    tu_fill_uniform(fx->a, 15, 1, -2.0f, 2.0f);
    fx->one[0] = 0.125f;
    tu_fill_uniform(fx->conv, 108, 2, -1.0f, 1.0f);
    fx->conv[0] = NAN;
    fx->conv[1] = -0.0f;
    fx->conv[2] = INFINITY;
    fx->conv[3] = -INFINITY;
    fx->conv[4] = 1e-45f; /* denormal */
    fx->scalar[0] = -3.5f;
    tu_fill_uniform(fx->big, 1000, 3, -10.0f, 10.0f);
    fx->t[0] = (ddpm_st_tensor){"a", fx->a, 2, {3, 5}};
    fx->t[1] = (ddpm_st_tensor){"one", fx->one, 1, {1}};
    fx->t[2] = (ddpm_st_tensor){"down.0.conv.weight", fx->conv, 4, {4, 3, 3, 3}};
    fx->t[3] = (ddpm_st_tensor){"scalar", fx->scalar, 0, {0}};
    fx->t[4] = (ddpm_st_tensor){"empty \"quoted\" \\ name\n", NULL, 2, {0, 7}};
    fx->t[5] = (ddpm_st_tensor){"ema.big\xc3\xa9", fx->big, 3, {10, 10, 10}};
    fx->m[0] = (ddpm_st_meta){"format", "ddpm-1"};
    fx->m[1] = (ddpm_st_meta){"config", "{\"ch\": 32, \"ch_mult\": [1, 2, 2]}"};
    fx->m[2] = (ddpm_st_meta){"empty", ""};
    fx->m[3] = (ddpm_st_meta){"step", "1234"};
}

static int64_t numel(const ddpm_st_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

static void test_round_trip_preserves_every_byte_shape_name_and_metadata(void **state)
{
    (void)state;
    fixture fx;
    make_fixture(&fx);
    const char *path = tu_path(tmpdir, "round.safetensors");
    assert_int_equal(ddpm_safetensors_write(path, fx.t, 6, fx.m, 4), 0);

    ddpm_st_file *f = NULL;
    int rc = ddpm_safetensors_open(&f, path);
    if (rc)
        fprintf(stderr, "%s\n", ddpm_last_error());
    assert_int_equal(rc, 0);
    assert_string_equal(ddpm_safetensors_path(f), path);
    assert_int_equal(ddpm_safetensors_count(f), 6);
    for (int i = 0; i < 6; i++) {
        const ddpm_st_tensor *t = &fx.t[i];
        const ddpm_st_info *info = ddpm_safetensors_at(f, i);
        assert_non_null(info);
        assert_string_equal(info->name, t->name);
        assert_ptr_equal(ddpm_safetensors_find(f, t->name), info);
        assert_int_equal(info->ndim, t->ndim);
        for (int d = 0; d < t->ndim; d++)
            assert_int_equal(info->shape[d], t->shape[d]);
        int64_t n = numel(t);
        assert_int_equal(info->n_elements, n);
        assert_int_equal(info->data_end - info->data_begin, 4 * (uint64_t)n);
        float *back = tu_alloc((size_t)n);
        assert_int_equal(ddpm_safetensors_read_f32(f, t->name, back, (size_t)n), 0);
        if (n > 0)
            assert_memory_equal(back, t->data, (size_t)n * sizeof(float));
        free(back);
    }
    assert_null(ddpm_safetensors_at(f, 6));
    assert_null(ddpm_safetensors_at(f, -1));
    assert_null(ddpm_safetensors_find(f, "absent"));

    /* the writer's "header_crc32c" first, the 4 given, the writer's "crc32c" */
    assert_int_equal(ddpm_safetensors_meta_count(f), 6);
    const char *k;
    assert_int_equal(ddpm_safetensors_meta_at(f, 0, &k, NULL), 0);
    assert_string_equal(k, "header_crc32c");
    for (int i = 0; i < 4; i++) {
        assert_string_equal(ddpm_safetensors_meta(f, fx.m[i].key), fx.m[i].value);
        const char *v;
        assert_int_equal(ddpm_safetensors_meta_at(f, i + 1, &k, &v), 0);
        assert_string_equal(k, fx.m[i].key);
        assert_string_equal(v, fx.m[i].value);
    }
    assert_int_equal(ddpm_safetensors_meta_at(f, 5, &k, NULL), 0);
    assert_string_equal(k, "crc32c");
    assert_int_equal(ddpm_safetensors_checksummed(f), 1);
    assert_int_equal(ddpm_safetensors_header_checksummed(f), 1);
    assert_null(ddpm_safetensors_meta(f, "absent"));
    assert_int_not_equal(ddpm_safetensors_meta_at(f, 6, NULL, NULL), 0);
    ddpm_safetensors_close(f);
    assert_int_equal(tu_count_entries_containing(tmpdir, ".tmp."), 0);
}

static void test_read_f32_refuses_wrong_count_and_unknown_name_naming_file(void **state)
{
    (void)state;
    fixture fx;
    make_fixture(&fx);
    const char *path = tu_path(tmpdir, "mismatch.safetensors");
    assert_int_equal(ddpm_safetensors_write(path, fx.t, 6, NULL, 0), 0);
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open(&f, path), 0);
    assert_int_equal(ddpm_safetensors_meta_count(f), 2); /* "header_crc32c" and "crc32c" alone */
    assert_null(ddpm_safetensors_meta(f, "format"));
    float buf[16];
    assert_int_equal(ddpm_safetensors_read_f32(f, "a", buf, 14), DDPM_EFORMAT);
    assert_message(path, "'a' has 15 elements, expected 14");
    assert_int_equal(ddpm_safetensors_read_f32(f, "nope", buf, 1), DDPM_EFORMAT);
    assert_message(path, "no tensor named 'nope'");
    ddpm_safetensors_close(f);
}

static void test_header_is_valid_safetensors_json_padded_with_contiguous_offsets(void **state)
{
    (void)state;
    fixture fx;
    make_fixture(&fx);
    const char *path = tu_path(tmpdir, "header.safetensors");
    assert_int_equal(ddpm_safetensors_write(path, fx.t, 6, fx.m, 4), 0);
    size_t size;
    unsigned char *b = read_all(path, &size);
    assert_true(size >= 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | b[i];
    assert_int_equal(n % 8, 0);
    assert_true(n <= size - 8);
    assert_int_equal(b[8], '{');

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)b + 8, (size_t)n, &end, 0);
    assert_non_null(root);
    for (const char *c = end; c < (const char *)b + 8 + n; c++)
        assert_int_equal(*c, ' '); /* padding is spaces only */
    assert_true(cJSON_IsObject(root));
    assert_int_equal(cJSON_GetArraySize(root), 7); /* 6 tensors + __metadata__ */

    cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    assert_true(cJSON_IsObject(meta));
    assert_int_equal(cJSON_GetArraySize(meta), 6); /* "header_crc32c" + 4 + "crc32c" */
    for (int i = 0; i < 4; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, fx.m[i].key);
        assert_true(cJSON_IsString(v));
        assert_string_equal(v->valuestring, fx.m[i].value);
    }

    double expected_begin = 0;
    for (int i = 0; i < 6; i++) {
        const ddpm_st_tensor *t = &fx.t[i];
        cJSON *e = cJSON_GetObjectItemCaseSensitive(root, t->name);
        assert_true(cJSON_IsObject(e));
        assert_int_equal(cJSON_GetArraySize(e), 3);
        cJSON *dtype = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        assert_true(cJSON_IsString(dtype));
        assert_string_equal(dtype->valuestring, "F32");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        assert_true(cJSON_IsArray(shape));
        assert_int_equal(cJSON_GetArraySize(shape), t->ndim);
        for (int d = 0; d < t->ndim; d++)
            assert_true(cJSON_GetArrayItem(shape, d)->valuedouble == (double)t->shape[d]);
        cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        assert_true(cJSON_IsArray(off));
        assert_int_equal(cJSON_GetArraySize(off), 2);
        double begin = cJSON_GetArrayItem(off, 0)->valuedouble;
        double stop = cJSON_GetArrayItem(off, 1)->valuedouble;
        assert_true(begin == expected_begin); /* contiguous, in the order given */
        assert_true(stop - begin == 4.0 * (double)numel(t));
        /* The bytes at those offsets are the tensor's. */
        if (numel(t) > 0)
            assert_memory_equal(b + 8 + n + (size_t)begin, t->data, (size_t)(stop - begin));
        expected_begin = stop;
    }
    assert_true(expected_begin == (double)(size - 8 - n)); /* data fills the rest */
    cJSON_Delete(root);
    free(b);
}

static void test_empty_file_set_round_trips(void **state)
{
    (void)state;
    const char *path = tu_path(tmpdir, "empty.safetensors");
    assert_int_equal(ddpm_safetensors_write(path, NULL, 0, NULL, 0), 0);
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open(&f, path), 0);
    assert_int_equal(ddpm_safetensors_count(f), 0);
    assert_null(ddpm_safetensors_find(f, "a"));
    ddpm_safetensors_close(f);
}

static void test_every_truncation_is_refused_with_the_file_named(void **state)
{
    (void)state;
    float w[6] = {1, 2, 3, 4, 5, 6}, b[2] = {-1, 7};
    ddpm_st_tensor t[2] = {{"w", w, 2, {2, 3}}, {"b", b, 1, {2}}};
    ddpm_st_meta m[1] = {{"step", "7"}};
    const char *path = tu_path(tmpdir, "trunc.safetensors");
    assert_int_equal(ddpm_safetensors_write(path, t, 2, m, 1), 0);
    size_t size;
    unsigned char *bytes = read_all(path, &size);

    /* Every prefix, in memory: 0, 4, 8, mid-header, header only, mid-data, one short. */
    for (size_t cut = 0; cut < size; cut++) {
        ddpm_st_file *f = (ddpm_st_file *)1;
        int rc = ddpm_safetensors_open_memory(&f, bytes, cut, "cut.safetensors");
        if (rc == 0)
            fprintf(stderr, "truncation at %zu of %zu bytes accepted\n", cut, size);
        assert_int_equal(rc, DDPM_EFORMAT);
        assert_null(f);
        assert_message("cut.safetensors", "");
    }
    /* And a few through the file system, so the message carries the path. */
    size_t cuts[] = {0, 4, 8, 20, size - 1};
    const char *cut_path = tu_path(tmpdir, "cut.safetensors");
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        write_all(cut_path, bytes, cuts[i]);
        ddpm_st_file *f = NULL;
        assert_int_equal(ddpm_safetensors_open(&f, cut_path), DDPM_EFORMAT);
        assert_null(f);
        assert_message(cut_path, cuts[i] < 8 ? "too short" : cuts[i] == size - 1 ? "past the" : "");
    }
    /* The whole file still opens. */
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open_memory(&f, bytes, size, "whole"), 0);
    ddpm_safetensors_close(f);
    free(bytes);
}

/* A file with the given header JSON (not padded) followed by n_data zero bytes. */
static unsigned char *make_file(const char *header, uint64_t header_len_field, size_t n_data, size_t *size)
{
    size_t h = strlen(header);
    *size = 8 + h + n_data;
    unsigned char *b = calloc(*size, 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(header_len_field >> (8 * i));
    memcpy(b + 8, header, h);
    return b;
}

/* The header is refused with DDPM_EFORMAT and a message naming the file and
 * containing `part`; once from memory and once from disk. */
static void expect_refused_len(const char *header, uint64_t header_len_field, size_t n_data,
                               const char *part)
{
    size_t size;
    unsigned char *b = make_file(header, header_len_field, n_data, &size);
    ddpm_st_file *f = NULL;
    int rc = ddpm_safetensors_open_memory(&f, b, size, "corrupt.safetensors");
    if (rc != DDPM_EFORMAT)
        fprintf(stderr, "header %.100s: rc %d (%s)\n", header, rc, ddpm_last_error());
    assert_int_equal(rc, DDPM_EFORMAT);
    assert_null(f);
    assert_message("corrupt.safetensors", part);

    const char *path = tu_path(tmpdir, "corrupt.safetensors");
    write_all(path, b, size);
    assert_int_equal(ddpm_safetensors_open(&f, path), DDPM_EFORMAT);
    assert_null(f);
    assert_message(path, part);
    free(b);
}

static void expect_refused(const char *header, size_t n_data, const char *part)
{
    expect_refused_len(header, strlen(header), n_data, part);
}

static void expect_accepted(const char *header, size_t n_data)
{
    size_t size;
    unsigned char *b = make_file(header, strlen(header), n_data, &size);
    ddpm_st_file *f = NULL;
    int rc = ddpm_safetensors_open_memory(&f, b, size, "ok.safetensors");
    if (rc)
        fprintf(stderr, "header %.100s refused: %s\n", header, ddpm_last_error());
    assert_int_equal(rc, 0);
    ddpm_safetensors_close(f);
    free(b);
}

#define T(name, shape, offsets) "\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":" offsets "}"

static void test_header_length_huge_or_past_eof_is_refused(void **state)
{
    (void)state;
    const char *h = "{" T("x", "[2]", "[0,8]") "}";
    expect_refused_len(h, UINT64_MAX, 8, "over the");
    expect_refused_len(h, (uint64_t)1 << 40, 8, "over the");
    expect_refused_len(h, strlen(h) + 9, 8, "runs past the end");
    expect_refused_len(h, 0, 8, "not valid JSON");
}

static void test_malformed_json_and_non_object_headers_are_refused(void **state)
{
    (void)state;
    expect_refused("{\"x\": {", 0, "not valid JSON");
    expect_refused("{\"x\": {\"dtype\": \"F32\",}}", 0, "not valid JSON");
    expect_refused("[1, 2, 3]", 0, "not a JSON object");
    expect_refused("{} {}", 0, "bytes after its JSON");
    expect_refused("{\"x\": 5}", 0, "'x' is not a JSON object");
    expect_refused("\x01\x02\x03", 0, "not valid JSON");
}

static void test_dtypes_other_than_f32_are_refused_naming_the_tensor(void **state)
{
    (void)state;
    expect_refused("{\"half\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                   "tensor 'half' has dtype F16; only F32 is supported");
    expect_refused("{\"x\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "F64");
    expect_refused("{\"x\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "not a string");
}

static void test_bad_shapes_are_refused(void **state)
{
    (void)state;
    expect_refused("{" T("neg", "[-1]", "[0,0]") "}", 0, "'neg' has shape[0] that is not a non-negative integer");
    expect_refused("{" T("frac", "[1.5]", "[0,4]") "}", 8, "shape[0]");
    expect_refused("{" T("str", "[\"2\"]", "[0,8]") "}", 8, "shape[0]");
    expect_refused("{" T("huge", "[1e300]", "[0,8]") "}", 8, "shape[0]");
    /* 2^40 * 2^40 overflows int64. */
    expect_refused("{" T("ovf", "[1099511627776,1099511627776]", "[0,0]") "}", 0, "overflows");
    /* 2^31 * 2^31 fits int64 but 4 bytes each does not. */
    expect_refused("{" T("ovf4", "[2147483648,2147483648]", "[0,0]") "}", 0, "overflows");
    expect_refused("{" T("deep", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4, "9 dimensions");
    expect_refused("{" T("notarr", "5", "[0,4]") "}", 4, "not an array");
    /* A zero dimension makes an empty tensor whatever the others are. */
    expect_accepted("{" T("z", "[1099511627776,0,1099511627776]", "[0,0]") "}", 0);
    expect_accepted("{" T("s", "[]", "[0,4]") "}", 4);
}

static void test_bad_offsets_are_refused(void **state)
{
    (void)state;
    expect_refused("{" T("x", "[4]", "[0,1000]") "}", 16, "past the 16 bytes of data");
    expect_refused("{" T("x", "[4]", "[0,8]") "}", 16, "span 8 bytes but its shape needs 16");
    expect_refused("{" T("x", "[2]", "[8,0]") "}", 16, "end before they begin");
    expect_refused("{" T("x", "[2]", "[0]") "}", 16, "not two non-negative integers");
    expect_refused("{" T("x", "[2]", "[0,8,8]") "}", 16, "not two non-negative integers");
    expect_refused("{" T("x", "[2]", "[-8,0]") "}", 16, "not two non-negative integers");
    expect_refused("{" T("x", "[0]", "[9007199254740993,9007199254740993]") "}", 16,
                   "not two non-negative integers");
    expect_refused("{" T("a", "[4]", "[0,16]") "," T("b", "[4]", "[8,24]") "}", 24,
                   "tensors 'a' and 'b' overlap");
    expect_refused("{" T("a", "[4]", "[0,16]") "," T("b", "[0]", "[8,8]") "}", 24, "overlap");
    expect_refused("{" T("a", "[2]", "[0,8]") "," T("b", "[2]", "[0,8]") "}", 8, "overlap");
    /* Tensors listed out of data order, and gaps, are fine. */
    expect_accepted("{" T("b", "[2]", "[8,16]") "," T("a", "[1]", "[0,4]") "}", 20);
}

static void test_bad_entries_names_and_metadata_are_refused(void **state)
{
    (void)state;
    expect_refused("{\"__metadata__\":{\"step\":5}}", 0, "metadata value for 'step' is not a string");
    expect_refused("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, "not a string");
    expect_refused("{\"__metadata__\":[\"a\"]}", 0, "__metadata__ is not a JSON object");
    expect_refused("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0, "metadata key 'a' appears twice");
    expect_refused("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ twice");
    expect_refused("{" T("a", "[1]", "[0,4]") "," T("a", "[1]", "[4,8]") "}", 8, "two tensors are named 'a'");
    expect_refused("{" T("", "[1]", "[0,4]") "}", 4, "empty name");
    expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "'x' has no data_offsets");
    expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4,
                   "unknown field 'extra'");
    expect_refused("{\"x\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "field 'dtype' twice");

    /* Name length limit: 1024 bytes accepted, 1025 refused. */
    char name[1100];
    memset(name, 'n', sizeof name);
    char header[1300];
    name[1024] = '\0';
    snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", name);
    expect_accepted(header, 4);
    name[1024] = 'n';
    name[1025] = '\0';
    snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", name);
    expect_refused(header, 4, "over the 1024-byte limit");
}

static void test_more_tensors_than_the_limit_are_refused(void **state)
{
    (void)state;
    size_t cap = (size_t)(DDPM_ST_MAX_TENSORS + 1) * 16 + 16;
    char *h = malloc(cap);
    assert_non_null(h);
    size_t len = 0;
    h[len++] = '{';
    for (int i = 0; i <= DDPM_ST_MAX_TENSORS; i++)
        len += (size_t)snprintf(h + len, cap - len, "%s\"t%d\":{}", i ? "," : "", i);
    h[len++] = '}';
    h[len] = '\0';
    expect_refused(h, 0, "more than 100000 tensors");
    free(h);
}

static void test_unaligned_data_reads_correctly(void **state)
{
    (void)state;
    /* Header of odd length and an odd data offset: the floats sit at no 4-byte
     * boundary, so read_f32 must copy bytewise. */
    const char *h = "{" T("x", "[3]", "[1,13]") "}  ";
    size_t size;
    unsigned char *b = make_file(h, strlen(h), 13, &size);
    assert_true((8 + strlen(h) + 1) % 4 != 0);
    const float want[3] = {1.5f, -2.25f, 1e30f};
    memcpy(b + 8 + strlen(h) + 1, want, sizeof want); /* the test host is little-endian */
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open_memory(&f, b, size, "unaligned"), 0);
    float got[3];
    assert_int_equal(ddpm_safetensors_read_f32(f, "x", got, 3), 0);
    assert_memory_equal(got, want, sizeof want);
    ddpm_safetensors_close(f);
    free(b);
}

static void test_open_refuses_missing_files_and_folders(void **state)
{
    (void)state;
    ddpm_st_file *f = NULL;
    const char *path = tu_path(tmpdir, "does-not-exist.safetensors");
    assert_int_equal(ddpm_safetensors_open(&f, path), DDPM_EIO);
    assert_null(f);
    assert_message(path, "No such file or directory");
    assert_int_equal(ddpm_safetensors_open(&f, tmpdir), DDPM_EIO);
    assert_message(tmpdir, "not a regular file");
}

static void test_write_into_missing_folder_fails_cleanly(void **state)
{
    (void)state;
    float x[2] = {1, 2};
    ddpm_st_tensor t = {"x", x, 1, {2}};
    const char *path = tu_path(tmpdir, "no/such/folder/x.safetensors");
    assert_int_equal(ddpm_safetensors_write(path, &t, 1, NULL, 0), DDPM_EIO);
    assert_message(path, "No such file or directory");
}

static void test_write_under_a_regular_file_fails_and_leaves_no_temp(void **state)
{
    (void)state;
    float x[2] = {1, 2};
    ddpm_st_tensor t = {"x", x, 1, {2}};
    const char *plain = tu_path(tmpdir, "plain");
    write_all(plain, "not a folder", 12);
    char path[300];
    snprintf(path, sizeof path, "%s/x.safetensors", plain);
    assert_int_equal(ddpm_safetensors_write(path, &t, 1, NULL, 0), DDPM_EIO);
    assert_message(path, "Not a directory");
    size_t n;
    unsigned char *b = read_all(plain, &n);
    assert_int_equal(n, 12);
    assert_memory_equal(b, "not a folder", 12);
    free(b);
    assert_int_equal(tu_count_entries_containing(tmpdir, ".tmp."), 0);
}

static void test_write_replaces_an_existing_file(void **state)
{
    (void)state;
    const char *path = tu_path(tmpdir, "replace.safetensors");
    float a[4] = {1, 2, 3, 4}, b[2] = {9, 8};
    ddpm_st_tensor ta = {"a", a, 1, {4}}, tb = {"b", b, 2, {1, 2}};
    ddpm_st_meta m = {"version", "2"};
    assert_int_equal(ddpm_safetensors_write(path, &ta, 1, NULL, 0), 0);
    assert_int_equal(ddpm_safetensors_write(path, &tb, 1, &m, 1), 0);
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open(&f, path), 0);
    assert_int_equal(ddpm_safetensors_count(f), 1);
    assert_null(ddpm_safetensors_find(f, "a"));
    float got[2];
    assert_int_equal(ddpm_safetensors_read_f32(f, "b", got, 2), 0);
    assert_memory_equal(got, b, sizeof b);
    assert_string_equal(ddpm_safetensors_meta(f, "version"), "2");
    ddpm_safetensors_close(f);
    assert_int_equal(tu_count_entries_containing(tmpdir, ".tmp."), 0);
}

/* A write that fails part-way (the file size limit stands in for a full disk:
 * both fail inside write(2)) leaves the previous file byte for byte and no
 * temporary file. */
static void test_failed_write_keeps_the_old_file_and_removes_the_temp(void **state)
{
    (void)state;
    const char *path = tu_path(tmpdir, "keep.safetensors");
    float small[4] = {1, 2, 3, 4};
    ddpm_st_tensor ts = {"small", small, 1, {4}};
    assert_int_equal(ddpm_safetensors_write(path, &ts, 1, NULL, 0), 0);
    size_t n_old;
    unsigned char *old = read_all(path, &n_old);

    enum { N_BIG = 1 << 16 };
    float *big = tu_alloc(N_BIG);
    ddpm_st_tensor tb = {"big", big, 1, {N_BIG}};
    struct rlimit saved;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = saved;
    lim.rlim_cur = 4096;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = ddpm_safetensors_write(path, &tb, 1, NULL, 0);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ddpm_last_error());
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, old_handler);

    assert_int_equal(rc, DDPM_EIO);
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s: ", path);
    assert_true(starts_with(msg, prefix));
    assert_non_null(strstr(msg, "File too large"));
    size_t n_now;
    unsigned char *now = read_all(path, &n_now);
    assert_int_equal(n_now, n_old);
    assert_memory_equal(now, old, n_old);
    assert_int_equal(tu_count_entries_containing(tmpdir, ".tmp."), 0);
    free(now);
    free(old);
    free(big);
}

static void test_write_refuses_bad_arguments_without_creating_a_file(void **state)
{
    (void)state;
    const char *path = tu_path(tmpdir, "args.safetensors");
    float x[2] = {1, 2};
    ddpm_st_tensor dup[2] = {{"x", x, 1, {2}}, {"x", x, 1, {2}}};
    assert_int_equal(ddpm_safetensors_write(path, dup, 2, NULL, 0), DDPM_EINVAL);
    assert_message(path, "two tensors are named 'x'");
    ddpm_st_tensor reserved = {"__metadata__", x, 1, {2}};
    assert_int_equal(ddpm_safetensors_write(path, &reserved, 1, NULL, 0), DDPM_EINVAL);
    assert_message(path, "reserved");
    ddpm_st_tensor neg = {"n", x, 1, {-2}};
    assert_int_equal(ddpm_safetensors_write(path, &neg, 1, NULL, 0), DDPM_EINVAL);
    assert_message(path, "negative dimension");
    ddpm_st_tensor five = {"f", x, 5, {1, 1, 1, 1}};
    assert_int_equal(ddpm_safetensors_write(path, &five, 1, NULL, 0), DDPM_EINVAL);
    ddpm_st_tensor nodata = {"d", NULL, 1, {2}};
    assert_int_equal(ddpm_safetensors_write(path, &nodata, 1, NULL, 0), DDPM_EINVAL);
    ddpm_st_meta m[2] = {{"k", "1"}, {"k", "2"}};
    assert_int_equal(ddpm_safetensors_write(path, NULL, 0, m, 2), DDPM_EINVAL);
    assert_message(path, "metadata key 'k' appears twice");
    assert_int_equal(tu_count_entries_containing(tmpdir, "args"), 0);
}

/* One flipped bit in a tensor's data (the bug report turned -0.098 into -3.3e37
 * this way and every command used it) is refused on open, naming the tensor. */
static void test_a_flipped_bit_in_tensor_data_is_refused_naming_the_tensor(void **state)
{
    (void)state;
    fixture fx;
    make_fixture(&fx);
    const char *path = tu_path(tmpdir, "flip.safetensors");
    assert_int_equal(ddpm_safetensors_write(path, fx.t, 6, fx.m, 4), 0);
    size_t size;
    unsigned char *b = read_all(path, &size);
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open_memory(&f, b, size, "flip"), 0);
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--)
        header = (header << 8) | b[i];
    const ddpm_st_info *info = ddpm_safetensors_find(f, "down.0.conv.weight");
    size_t at = 8 + (size_t)header + (size_t)info->data_begin + 4 * 50 + 3; /* element 50's top byte */
    ddpm_safetensors_close(f);
    b[at] ^= 0x20;
    write_all(path, b, size);
    assert_int_equal(ddpm_safetensors_open(&f, path), DDPM_EFORMAT);
    assert_null(f);
    assert_message(path, "tensor 'down.0.conv.weight' fails its checksum");
    b[at] ^= 0x20; /* flipped back: opens again */
    assert_int_equal(ddpm_safetensors_open_memory(&f, b, size, "flip"), 0);
    assert_int_equal(ddpm_safetensors_checksummed(f), 1);
    ddpm_safetensors_close(f);
    free(b);
}

/* Files without "crc32c" (older ones, other writers) are read, and say so. */
static void test_a_file_without_checksums_opens_unchecked(void **state)
{
    (void)state;
    const char *header = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t size;
    unsigned char *b = make_file(header, strlen(header), 4, &size);
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open_memory(&f, b, size, "old"), 0);
    assert_int_equal(ddpm_safetensors_checksummed(f), 0);
    ddpm_safetensors_close(f);
    free(b);
}

/* The checksum table must cover each tensor exactly once with 8 hex digits. */
static void test_malformed_checksum_tables_are_refused(void **state)
{
    (void)state;
    char zero4[9], header[512];
    snprintf(zero4, sizeof zero4, "%08x", (unsigned)ddpm_crc32c(0, "\0\0\0\0", 4));
    const char *x = "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
    const char *y = "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}";
    struct {
        const char *sums, *part;
    } cases[] = {
        {"{\\\"x\\\":\\\"%s\\\"}", "tensor 'y' has no checksum"},
        {"{\\\"x\\\":\\\"%s\\\",\\\"y\\\":\\\"%s\\\",\\\"z\\\":\\\"00000000\\\"}", "names a tensor 'z'"},
        {"{\\\"x\\\":\\\"%s\\\",\\\"x\\\":\\\"%s\\\"}", "lists tensor 'x' twice"},
        {"{\\\"x\\\":\\\"%s\\\",\\\"y\\\":\\\"0x123456\\\"}", "not 8 hex digits"},
        {"{\\\"x\\\":\\\"%s\\\",\\\"y\\\":\\\"00000001\\\"}", "tensor 'y' fails its checksum"},
        {"[]", "is not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char sums[256];
        snprintf(sums, sizeof sums, cases[i].sums, zero4, zero4);
        snprintf(header, sizeof header, "{\"__metadata__\":{\"crc32c\":\"%s\"},%s,%s}", sums, x, y);
        expect_refused(header, 8, cases[i].part);
    }
    snprintf(header, sizeof header, "{\"__metadata__\":{\"crc32c\":\"{\\\"y\\\":\\\"%s\\\",\\\"x\\\":\\\"%s\\\"}\"},%s,%s}",
             zero4, zero4, x, y);
    size_t size;
    unsigned char *b = make_file(header, strlen(header), 8, &size);
    ddpm_st_file *f = NULL;
    int rc = ddpm_safetensors_open_memory(&f, b, size, "good");
    if (rc)
        fprintf(stderr, "%s\n", ddpm_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(ddpm_safetensors_checksummed(f), 1);
    ddpm_safetensors_close(f);
    free(b);
    /* and the writer keeps the key for itself */
    float v = 1;
    ddpm_st_tensor t = {"v", &v, 1, {1}};
    ddpm_st_meta m = {"crc32c", "0"};
    assert_int_equal(ddpm_safetensors_write(tu_path(tmpdir, "reserved.safetensors"), &t, 1, &m, 1), DDPM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_preserves_every_byte_shape_name_and_metadata),
        cmocka_unit_test(test_read_f32_refuses_wrong_count_and_unknown_name_naming_file),
        cmocka_unit_test(test_header_is_valid_safetensors_json_padded_with_contiguous_offsets),
        cmocka_unit_test(test_empty_file_set_round_trips),
        cmocka_unit_test(test_every_truncation_is_refused_with_the_file_named),
        cmocka_unit_test(test_header_length_huge_or_past_eof_is_refused),
        cmocka_unit_test(test_malformed_json_and_non_object_headers_are_refused),
        cmocka_unit_test(test_dtypes_other_than_f32_are_refused_naming_the_tensor),
        cmocka_unit_test(test_bad_shapes_are_refused),
        cmocka_unit_test(test_bad_offsets_are_refused),
        cmocka_unit_test(test_bad_entries_names_and_metadata_are_refused),
        cmocka_unit_test(test_more_tensors_than_the_limit_are_refused),
        cmocka_unit_test(test_unaligned_data_reads_correctly),
        cmocka_unit_test(test_open_refuses_missing_files_and_folders),
        cmocka_unit_test(test_write_into_missing_folder_fails_cleanly),
        cmocka_unit_test(test_write_under_a_regular_file_fails_and_leaves_no_temp),
        cmocka_unit_test(test_write_replaces_an_existing_file),
        cmocka_unit_test(test_failed_write_keeps_the_old_file_and_removes_the_temp),
        cmocka_unit_test(test_write_refuses_bad_arguments_without_creating_a_file),
        cmocka_unit_test(test_a_flipped_bit_in_tensor_data_is_refused_naming_the_tensor),
        cmocka_unit_test(test_a_file_without_checksums_opens_unchecked),
        cmocka_unit_test(test_malformed_checksum_tables_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
