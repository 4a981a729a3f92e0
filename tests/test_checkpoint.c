/* Tests of checkpoint integrity on load: a flipped bit in any tensor is refused
 * naming the tensor (CRC-32C), a flipped bit anywhere in the header is refused
 * (its own CRC-32C, format version 2), poisoned (NaN, infinite or absurd)
 * weights are refused naming the tensor on every model-loading path, older
 * files (format version 1, with or without tensor checksums) still load, and
 * a config claiming a model its tensors do not hold is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/checkpoint.h"
#include "ddpm/crc32c.h"
#include "ddpm/model.h"
#include "ddpm/error.h"
#include "ddpm/safetensors.h"
#include "ddpm/sha256.h"
#include "ddpm/train.h"
#include "testutil.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(tmpdir, sizeof tmpdir, "checkpoint");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmpdir);
}

/* 8x8 gray, ch 8, two levels: a model of a few thousand weights. */
static void tiny_config(ddpm_run_config *c)
{
    ddpm_run_config_default(c);
    c->model.in_channels = 1;
    c->model.image_size = 8;
    c->model.ch = 8;
    c->model.n_levels = 2;
    c->model.ch_mult[0] = 1, c->model.ch_mult[1] = 2;
    c->model.num_res_blocks = 1;
    c->model.n_attn = 0;
    c->model.groups = 4;
    c->timesteps = 50;
    c->batch = 2;
}

/* A saved fresh run whose arena `which` (0 weights, 1 EMA) has `value` at the
 * first element of tensor `tensor`; returns the trainer (for its table). */
static ddpm_trainer *save_with(const char *path, int which, int tensor, float value)
{
    ddpm_run_config c;
    tiny_config(&c);
    ddpm_trainer *tr = NULL;
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
    if (tensor >= 0)
        (which ? tr->ema : tr->params)[tr->net->tensors[tensor].offset] = value;
    assert_int_equal(ddpm_trainer_save(tr, path), 0);
    return tr;
}

/* The offset in the file of tensor `name`'s first data byte. */
static size_t data_offset(const unsigned char *b, size_t size, const char *name)
{
    ddpm_st_file *f = NULL;
    assert_int_equal(ddpm_safetensors_open_memory(&f, b, size, "x"), 0);
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--)
        header = (header << 8) | b[i];
    const ddpm_st_info *info = ddpm_safetensors_find(f, name);
    assert_non_null(info);
    size_t at = 8 + (size_t)header + (size_t)info->data_begin;
    ddpm_safetensors_close(f);
    return at;
}

static void expect_error(int rc, int code, const char *part1, const char *part2)
{
    if (rc != code || !strstr(ddpm_last_error(), part1) || !strstr(ddpm_last_error(), part2))
        fprintf(stderr, "rc %d, message '%s' (wanted %d, '%s', '%s')\n", rc, ddpm_last_error(), code, part1, part2);
    assert_int_equal(rc, code);
    assert_non_null(strstr(ddpm_last_error(), part1));
    assert_non_null(strstr(ddpm_last_error(), part2));
}

/* The bug report: one bit flipped in a weight (-0.098 -> -3.3e37) passed info,
 * sample and --resume. Now opening the checkpoint fails and names the tensor,
 * for a bit in the raw weights, the EMA weights and Adam's moments alike. */
static void test_a_flipped_bit_in_any_tensor_is_refused_on_open_naming_it(void **state)
{
    (void)state;
    const char *path = tu_path(tmpdir, "flip.safetensors");
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    ddpm_trainer *tr = save_with(p, 0, -1, 0);
    size_t size = 0;
    unsigned char *good = tu_read_file(p, &size);
    assert_non_null(good);
    char name[128];
    const char *prefixes[4] = {"", "ema.", "adam_m.", "adam_v."};
    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "%s%s", prefixes[k], tr->net->tensors[3].name);
        unsigned char *b = malloc(size);
        memcpy(b, good, size);
        b[data_offset(b, size, name) + 4 * 2 + 3] ^= 0x40; /* an exponent bit of element 2 */
        assert_int_equal(tu_write_file(p, b, size), 0);
        ddpm_checkpoint *ck = NULL;
        expect_error(ddpm_checkpoint_open(&ck, p), DDPM_EFORMAT, p, "fails its checksum");
        char quoted[140];
        snprintf(quoted, sizeof quoted, "tensor '%s'", name);
        assert_non_null(strstr(ddpm_last_error(), quoted));
        assert_null(ck);
        free(b);
    }
    assert_int_equal(tu_write_file(p, good, size), 0);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0);
    assert_int_equal(ddpm_checkpoint_checksummed(ck), 1);
    ddpm_checkpoint_close(ck);
    free(good);
    ddpm_trainer_free(tr);
}

/* NaN or infinity in the EMA weights: `ddpm sample` used them (black cells) and
 * --resume carried them on. Loading the model refuses them naming the tensor;
 * the raw weights, which are fine, still load. Raw weights with an infinity are
 * refused too, and so is resuming (ddpm_trainer_from_checkpoint). */
static void test_non_finite_weights_are_refused_on_every_load_path_naming_the_tensor(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s", tu_path(tmpdir, "nan.safetensors"));
    ddpm_trainer *tr = save_with(p, 1, 5, NAN);
    char ema_name[128];
    snprintf(ema_name, sizeof ema_name, "ema.%s", tr->net->tensors[5].name);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0); /* the checksum matches: the file is as written */
    ddpm_unet *net = NULL;
    float *params = NULL;
    int used_ema = -1;
    expect_error(ddpm_checkpoint_load_model(ck, 1, &net, &params, &used_ema), DDPM_EFORMAT, ema_name, "NaN");
    assert_null(net);
    assert_null(params);
    assert_int_equal(ddpm_checkpoint_load_model(ck, 0, &net, &params, &used_ema), 0);
    assert_int_equal(used_ema, 0);
    free(params);
    ddpm_unet_free(net);
    ddpm_trainer *resumed = NULL;
    expect_error(ddpm_trainer_from_checkpoint(&resumed, ck, 0), DDPM_EFORMAT, ema_name, "NaN");
    assert_null(resumed);
    ddpm_checkpoint_close(ck);
    ddpm_trainer_free(tr);

    tr = save_with(p, 0, 2, -INFINITY);
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0);
    expect_error(ddpm_checkpoint_load_model(ck, 0, &net, &params, &used_ema), DDPM_EFORMAT,
                 tr->net->tensors[2].name, "infinity");
    expect_error(ddpm_trainer_from_checkpoint(&resumed, ck, 0), DDPM_EFORMAT, tr->net->tensors[2].name,
                 "infinity");
    ddpm_checkpoint_close(ck);
    ddpm_trainer_free(tr);
}

/* A checkpoint written before checksums existed (no "crc32c" in its metadata)
 * still opens and loads; ddpm_checkpoint_checksummed says it was not verified. */
static void test_a_checkpoint_without_checksums_still_loads_and_says_so(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s", tu_path(tmpdir, "old.safetensors"));
    ddpm_trainer_free(save_with(p, 0, -1, 0));
    size_t size = 0;
    unsigned char *b = tu_read_file(p, &size);
    assert_non_null(b);
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--)
        header = (header << 8) | b[i];
    cJSON *root = cJSON_ParseWithLength((const char *)b + 8, (size_t)header);
    assert_non_null(root);
    /* as a version 1 file written before checksums: no "crc32c", no "header_crc32c" */
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    cJSON_DeleteItemFromObjectCaseSensitive(meta, "crc32c");
    cJSON_DeleteItemFromObjectCaseSensitive(meta, "header_crc32c");
    cJSON_ReplaceItemInObjectCaseSensitive(meta, "format_version", cJSON_CreateString("1"));
    char *text = cJSON_PrintUnformatted(root);
    size_t len = strlen(text), padded = (len + 7) / 8 * 8, data = size - 8 - (size_t)header;
    unsigned char *old = malloc(8 + padded + data);
    for (int i = 0; i < 8; i++)
        old[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(old + 8, text, len);
    memset(old + 8 + len, ' ', padded - len);
    memcpy(old + 8 + padded, b + 8 + header, data);
    assert_int_equal(tu_write_file(p, old, 8 + padded + data), 0);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0);
    assert_int_equal(ddpm_checkpoint_checksummed(ck), 0);
    ddpm_unet *net = NULL;
    float *params = NULL;
    int used_ema;
    assert_int_equal(ddpm_checkpoint_load_model(ck, 1, &net, &params, &used_ema), 0);
    assert_int_equal(used_ema, 1);
    free(params);
    ddpm_unet_free(net);
    ddpm_checkpoint_close(ck);
    cJSON_free(text);
    cJSON_Delete(root);
    free(old);
    free(b);
}

/* A config claiming a much larger model than the tensors in the file: refused
 * for the first missing or misshapen tensor, before the weights are allocated. */
static void test_a_config_larger_than_the_file_is_refused_naming_a_tensor(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_config(&c);
    c.model.ch = 4000;
    c.model.groups = 8;
    c.model.image_size = 64;
    char *cfg = ddpm_run_config_to_json(&c);
    ddpm_train_state st = {0};
    char *sj = ddpm_train_state_to_json(&st);
    ddpm_st_meta meta[4] = {{"format", "ddpm"}, {"format_version", "1"}, {"config", cfg}, {"state", sj}};
    float w[4] = {0};
    ddpm_st_tensor t = {.name = "temb.0.bias", .data = w, .ndim = 1, .shape = {4}};
    char p[256];
    snprintf(p, sizeof p, "%s", tu_path(tmpdir, "claims.safetensors"));
    assert_int_equal(ddpm_safetensors_write(p, &t, 1, meta, 4), 0);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0);
    ddpm_unet *net = NULL;
    float *params = NULL;
    int used_ema;
    expect_error(ddpm_checkpoint_load_model(ck, 1, &net, &params, &used_ema), DDPM_EFORMAT, p, "temb.0.");
    assert_null(params);
    ddpm_checkpoint_close(ck);
    free(cfg);
    free(sj);
}

/* The smallest model: 4x4 gray, ch 2, one level, no attention (777 weights), so
 * that a test can flip every bit of its header. */
static void smallest_config(ddpm_run_config *c)
{
    tiny_config(c);
    c->model.image_size = 4;
    c->model.ch = 2;
    c->model.n_levels = 1;
    c->model.ch_mult[0] = 1;
    c->model.groups = 1;
    c->timesteps = 20;
}

/* The length of the header of the file b. */
static size_t header_len(const unsigned char *b)
{
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | b[i];
    return (size_t)h;
}

/* Replaces the first `from` in the header of b with `to` (not longer), the
 * header keeping its length: what follows moves left and the header ends in
 * more padding. Fails the test when `from` is not in the header. */
static void edit_header(unsigned char *b, const char *from, const char *to)
{
    size_t h = header_len(b), nf = strlen(from), nt = strlen(to);
    assert_true(nt <= nf);
    unsigned char *at = NULL;
    for (size_t i = 8; i + nf <= 8 + h && !at; i++)
        if (!memcmp(b + i, from, nf))
            at = b + i;
    if (!at)
        fail_msg("'%s' is not in the header", from);
    memcpy(at, to, nt);
    memmove(at + nt, at + nf, (size_t)(b + 8 + h - (at + nf)));
    memset(b + 8 + h - (nf - nt), ' ', nf - nt);
}

/* The bug report (issue 26, item 5): the CRC-32Cs covered the tensors only, so
 * one-bit edits of the metadata loaded with exit 0 (timesteps 1000 -> 1001,
 * the step, beta_end, the schedule, the prediction), and a flipped bit in the
 * key "crc32c" made the file an old one without checksums. Now every single
 * bit flip of the header of a format version 2 checkpoint (length field
 * included) is refused, naming the file. */
static void test_every_single_bit_flip_of_the_header_is_refused_naming_the_file(void **state)
{
    (void)state;
    ddpm_run_config c;
    smallest_config(&c);
    ddpm_trainer *tr = NULL;
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
    char p[256];
    snprintf(p, sizeof p, "%s", tu_path(tmpdir, "bits.safetensors"));
    assert_int_equal(ddpm_trainer_save(tr, p), 0);
    ddpm_trainer_free(tr);
    size_t size = 0;
    unsigned char *b = tu_read_file(p, &size);
    assert_non_null(b);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open_memory(&ck, b, size, "flipped.safetensors"), 0);
    assert_int_equal(ddpm_checkpoint_header_checksummed(ck), 1);
    ddpm_checkpoint_close(ck);
    size_t end = 8 + header_len(b), accepted = 0;
    for (size_t i = 0; i < end; i++)
        for (int bit = 0; bit < 8; bit++) {
            b[i] ^= (unsigned char)(1u << bit);
            int rc = ddpm_checkpoint_open_memory(&ck, b, size, "flipped.safetensors");
            b[i] ^= (unsigned char)(1u << bit);
            if (rc == 0) {
                if (accepted++ < 5)
                    fprintf(stderr, "accepted: bit %d of byte %zu ('%c')\n", bit, i, b[i]);
                ddpm_checkpoint_close(ck);
            } else if (!strstr(ddpm_last_error(), "flipped.safetensors")) {
                fail_msg("byte %zu bit %d: '%s' does not name the file", i, bit, ddpm_last_error());
            }
        }
    fprintf(stderr, "  %zu header bits flipped one at a time, %zu accepted\n", 8 * end, accepted);
    assert_int_equal(accepted, 0);
    free(b);
}

/* The reproductions of issue 26, item 5, on a training checkpoint: each edit
 * of the metadata is refused naming the file; so is a version 2 file whose
 * header checksum entry is gone (a flip in its key) or whose tensor checksum
 * table is gone with the header re-sealed over it (a forged file: version 2
 * promises both). */
static void test_the_header_edits_of_issue_26_are_refused_naming_the_file(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s", tu_path(tmpdir, "edits.safetensors"));
    ddpm_trainer_free(save_with(p, 0, -1, 0));
    size_t size = 0;
    unsigned char *good = tu_read_file(p, &size);
    assert_non_null(good);
    static const char *const edits[][2] = {
        {"\\\"timesteps\\\":50", "\\\"timesteps\\\":51"}, /* one bit each, but the last two */
        {"\"step\\\":0", "\"step\\\":1"},
        {"\\\"beta_end\\\":0.02", "\\\"beta_end\\\":0.03"},
        {"\"linear\\\"", "\"cosine\\\""},
        {"\\\"eps\\\"", "\\\"x0\\\""},
        {",\"crc32c\":", ",\"crc32s\":"},
        {"\"header_crc32c\"", "\"header_crc32s\""},
        {"\"format_version\":\"2\"", "\"format_version\":\"1\""},
    };
    unsigned char *b = malloc(size);
    assert_non_null(b);
    for (size_t k = 0; k < sizeof edits / sizeof edits[0]; k++) {
        memcpy(b, good, size);
        edit_header(b, edits[k][0], edits[k][1]);
        ddpm_checkpoint *ck = NULL;
        int rc = ddpm_checkpoint_open_memory(&ck, b, size, "edited.safetensors");
        if (rc == 0)
            fail_msg("%s -> %s was accepted", edits[k][0], edits[k][1]);
        assert_int_equal(rc, DDPM_EFORMAT);
        assert_non_null(strstr(ddpm_last_error(), "edited.safetensors"));
    }
    /* without the tensor checksums, the header re-sealed: refused as damaged */
    memcpy(b, good, size);
    edit_header(b, ",\"crc32c\":", ",\"crc32s\":");
    assert_int_equal(tu_reseal_header(b, size), 0);
    ddpm_checkpoint *ck = NULL;
    expect_error(ddpm_checkpoint_open_memory(&ck, b, size, "forged.safetensors"), DDPM_EFORMAT, "forged.safetensors",
                 "without its tensor checksums");
    /* the same edit re-sealed where it is harmless (the step) opens: the
       refusals above are the checksum's */
    memcpy(b, good, size);
    edit_header(b, "\"step\\\":0", "\"step\\\":1");
    assert_int_equal(tu_reseal_header(b, size), 0);
    assert_int_equal(ddpm_checkpoint_open_memory(&ck, b, size, "forged.safetensors"), 0);
    assert_int_equal(ddpm_checkpoint_state(ck)->step, 1);
    ddpm_checkpoint_close(ck);
    free(b);
    free(good);
}

/* The loaded weights of file `path` under prefix are its tensors' bytes. */
static void assert_loads_its_bytes(const char *path, int prefer_ema, const char *prefix)
{
    ddpm_checkpoint *ck = NULL;
    if (ddpm_checkpoint_open(&ck, path))
        fail_msg("%s", ddpm_last_error());
    ddpm_unet *net = NULL;
    float *params = NULL;
    int used_ema = -1;
    if (ddpm_checkpoint_load_model(ck, prefer_ema, &net, &params, &used_ema))
        fail_msg("%s", ddpm_last_error());
    size_t size = 0;
    unsigned char *b = tu_read_file(path, &size);
    assert_non_null(b);
    for (int i = 0; i < net->n_tensors; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, net->tensors[i].name);
        size_t at = data_offset(b, size, name);
        assert_memory_equal(params + net->tensors[i].offset, b + at, net->tensors[i].n * sizeof(float));
    }
    free(b);
    free(params);
    ddpm_unet_free(net);
    ddpm_checkpoint_close(ck);
}

/* Format version 2 must keep version 1 loading unchanged: today's training
 * checkpoint (class-conditional, EMA and Adam, written by f4352b4), its
 * export, and the older seeds of the fuzz corpus open with their tensor
 * checksums verified and no header checksum, say so, and load their weights
 * byte for byte. */
static void test_format_version_1_files_load_unchanged(void **state)
{
    (void)state;
    const char *ckpt = DDPM_TEST_DATA "/checkpoint_v1_classes.safetensors",
               *exported = DDPM_TEST_DATA "/export_v1.safetensors";
    ddpm_checkpoint *ck = NULL;
    if (ddpm_checkpoint_open(&ck, ckpt))
        fail_msg("%s", ddpm_last_error());
    assert_int_equal(ddpm_checkpoint_checksummed(ck), 1);
    assert_int_equal(ddpm_checkpoint_header_checksummed(ck), 0);
    assert_int_equal(ddpm_checkpoint_state(ck)->step, 2);
    assert_int_equal(ddpm_checkpoint_config(ck)->timesteps, 20);
    assert_int_equal(ddpm_checkpoint_config(ck)->model.n_classes, 2);
    assert_string_equal(ddpm_checkpoint_class_names(ck)[0], "a");
    assert_string_equal(ddpm_checkpoint_class_names(ck)[1], "b");
    ddpm_trainer *tr = NULL; /* a resume reads the whole run */
    if (ddpm_trainer_from_checkpoint(&tr, ck, 0))
        fail_msg("%s", ddpm_last_error());
    assert_int_equal(tr->state.step, 2);
    ddpm_trainer_free(tr);
    ddpm_checkpoint_close(ck);
    assert_loads_its_bytes(ckpt, 1, "ema.");
    assert_loads_its_bytes(ckpt, 0, "");
    assert_loads_its_bytes(exported, 1, "");
    assert_loads_its_bytes(DDPM_TEST_DATA "/../fuzz/corpus/checkpoint/two_levels_attn", 1, "ema.");
    assert_loads_its_bytes(DDPM_TEST_DATA "/../fuzz/corpus/checkpoint/weights_only", 1, "");
    ddpm_model m;
    if (ddpm_model_open(&m, exported, DDPM_WEIGHTS_EMA))
        fail_msg("%s", ddpm_last_error());
    assert_int_equal(m.step, 2);
    assert_int_equal(m.ema, 1);
    ddpm_model_close(&m);
}

/* The bug report (issue 26, item 9): weights of 3e38, checksums fixed up,
 * sampled an all-0/255 grid with exit 0. Weights beyond +-1e6 are refused on
 * every load path like NaN, naming the file and the tensor; 1e6 itself loads,
 * and Adam's moments may be large (a resume reads them). */
static void test_weights_beyond_1e6_are_refused_naming_the_file_and_the_tensor(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s", tu_path(tmpdir, "huge.safetensors"));
    ddpm_trainer *tr = save_with(p, 1, 4, 3e38f);
    char ema_name[128];
    snprintf(ema_name, sizeof ema_name, "ema.%s", tr->net->tensors[4].name);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0);
    ddpm_unet *net = NULL;
    float *params = NULL;
    int used_ema = -1;
    expect_error(ddpm_checkpoint_load_model(ck, 1, &net, &params, &used_ema), DDPM_EFORMAT, p, ema_name);
    assert_non_null(strstr(ddpm_last_error(), "3e+38"));
    assert_null(params);
    ddpm_trainer *resumed = NULL;
    expect_error(ddpm_trainer_from_checkpoint(&resumed, ck, 0), DDPM_EFORMAT, p, ema_name);
    ddpm_checkpoint_close(ck);
    ddpm_model m;
    expect_error(ddpm_model_open(&m, p, DDPM_WEIGHTS_EMA), DDPM_EFORMAT, p, ema_name);
    ddpm_trainer_free(tr);

    tr = save_with(p, 0, 2, -2e6f); /* the raw weights, negative */
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0);
    expect_error(ddpm_checkpoint_load_model(ck, 0, &net, &params, &used_ema), DDPM_EFORMAT, p,
                 tr->net->tensors[2].name);
    ddpm_checkpoint_close(ck);
    ddpm_trainer_free(tr);

    tr = save_with(p, 0, 2, 1e6f); /* the bound itself */
    tr->adam_v[tr->net->tensors[2].offset] = 1e12f; /* a squared gradient of 1e6 */
    assert_int_equal(ddpm_trainer_save(tr, p), 0);
    assert_int_equal(ddpm_checkpoint_open(&ck, p), 0);
    assert_int_equal(ddpm_checkpoint_load_model(ck, 0, &net, &params, &used_ema), 0);
    free(params);
    ddpm_unet_free(net);
    if (ddpm_trainer_from_checkpoint(&resumed, ck, 0))
        fail_msg("%s", ddpm_last_error());
    ddpm_trainer_free(resumed);
    ddpm_checkpoint_close(ck);
    ddpm_trainer_free(tr);
}

/* ddpm_trainer_save_sha256 hashes the bytes as it writes them: the SHA-256 it
 * gives is the file's. */
static void test_save_gives_the_sha256_of_the_bytes_it_wrote(void **state)
{
    (void)state;
    ddpm_run_config c;
    smallest_config(&c);
    ddpm_trainer *tr = NULL;
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
    char p[256], written[65], file[65];
    snprintf(p, sizeof p, "%s", tu_path(tmpdir, "hashed.safetensors"));
    assert_int_equal(ddpm_trainer_save_sha256(tr, p, written), 0);
    assert_int_equal(ddpm_sha256_file(p, file), 0);
    assert_string_equal(written, file);
    ddpm_trainer_free(tr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_flipped_bit_in_any_tensor_is_refused_on_open_naming_it),
        cmocka_unit_test(test_non_finite_weights_are_refused_on_every_load_path_naming_the_tensor),
        cmocka_unit_test(test_a_checkpoint_without_checksums_still_loads_and_says_so),
        cmocka_unit_test(test_a_config_larger_than_the_file_is_refused_naming_a_tensor),
        cmocka_unit_test(test_every_single_bit_flip_of_the_header_is_refused_naming_the_file),
        cmocka_unit_test(test_the_header_edits_of_issue_26_are_refused_naming_the_file),
        cmocka_unit_test(test_format_version_1_files_load_unchanged),
        cmocka_unit_test(test_weights_beyond_1e6_are_refused_naming_the_file_and_the_tensor),
        cmocka_unit_test(test_save_gives_the_sha256_of_the_bytes_it_wrote),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
