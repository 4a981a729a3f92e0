/* Tests of the trainer, checkpoints and the run loop: the loss falls, the same
 * seed gives the same bytes, checkpoints round-trip exactly, broken checkpoints
 * are refused, a resumed run equals an uninterrupted one, NaN stops cleanly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/safetensors.h"
#include "ddpm/train.h"
#include "testutil.h"

/* 8x8 gray, ch 8, two levels, attention at 4, dropout on, batch 4, T 100 */
static void tiny_run_config(ddpm_run_config *c)
{
    ddpm_run_config_default(c);
    c->model.in_channels = 1;
    c->model.image_size = 8;
    c->model.ch = 8;
    c->model.n_levels = 2;
    c->model.ch_mult[0] = 1, c->model.ch_mult[1] = 2;
    c->model.num_res_blocks = 1;
    c->model.attn_res[0] = 4;
    c->model.groups = 4;
    c->model.dropout = 0.1f;
    c->timesteps = 100;
    c->batch = 4;
    c->optim.lr = 2e-3f;
    c->optim.warmup = 10;
    c->seed = 42;
}

/* Images of the synthetic data set: bright squares at a few positions. */
static void synthetic_image(float *x, int k, int S)
{
    int r0 = (k * 3) % (S - 3), c0 = (k * 5) % (S - 3);
    for (int r = 0; r < S; r++)
        for (int c = 0; c < S; c++)
            x[r * S + c] = (r >= r0 && r < r0 + 3 && c >= c0 && c < c0 + 3) ? 1.0f : -1.0f;
}

static void synthetic_batch(float *x, int B, int S, long step)
{
    for (int b = 0; b < B; b++)
        synthetic_image(x + (size_t)b * S * S, (int)((step * B + b) % 8), S);
}

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(tmpdir, sizeof tmpdir, "train");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmpdir);
}

static void test_training_reduces_the_loss_on_synthetic_images(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    c.batch = 8;
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, &c), 0);
    float x0[8 * 64];
    double first = 0, last = 0;
    ddpm_step_stats st;
    for (long step = 0; step < 400; step++) {
        synthetic_batch(x0, 8, 8, step);
        assert_int_equal(ddpm_trainer_step(tr, x0, &st), 0);
        if (step < 20)
            first += st.loss / 20;
        if (step >= 350)
            last += st.loss / 50;
    }
    fprintf(stderr, "  L_simple: first 20 steps %.4f, last 50 steps %.4f\n", first, last);
    /* conv_out starts at zero, so the first losses are E[eps^2] = 1; a model that
       learns this 8-image data set must at least halve it in 400 steps */
    assert_true(first > 0.8);
    assert_true(last < 0.5 * first);
    assert_int_equal(tr->state.step, 400);
    ddpm_trainer_free(tr);
}

static void run_steps(ddpm_trainer *tr, long from, long to)
{
    float x0[4 * 64];
    for (long step = from; step < to; step++) {
        synthetic_batch(x0, tr->cfg.batch, 8, step);
        assert_int_equal(ddpm_trainer_step(tr, x0, NULL), 0);
    }
}

static void test_same_seed_same_weights_bit_for_bit(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    ddpm_trainer *a, *b, *d;
    assert_int_equal(ddpm_trainer_create(&a, &c), 0);
    assert_int_equal(ddpm_trainer_create(&b, &c), 0);
    c.seed = 43;
    assert_int_equal(ddpm_trainer_create(&d, &c), 0);
    run_steps(a, 0, 5);
    run_steps(b, 0, 5);
    run_steps(d, 0, 5);
    size_t bytes = a->net->n_params * sizeof(float);
    assert_memory_equal(a->params, b->params, bytes);
    assert_memory_equal(a->ema, b->ema, bytes);
    assert_memory_not_equal(a->params, d->params, bytes);
    ddpm_trainer_free(a);
    ddpm_trainer_free(b);
    ddpm_trainer_free(d);
}

static void test_checkpoint_round_trip_is_exact_and_resume_continues_identically(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", tmpdir);
    ddpm_trainer *a, *whole;
    assert_int_equal(ddpm_trainer_create(&a, &c), 0);
    assert_int_equal(ddpm_trainer_create(&whole, &c), 0);
    run_steps(a, 0, 3);
    a->state.data_epoch = 7;
    a->state.data_position = 5;
    assert_int_equal(ddpm_trainer_save(a, path), 0);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    ddpm_trainer *b;
    assert_int_equal(ddpm_trainer_from_checkpoint(&b, ck), 0);
    ddpm_checkpoint_close(ck);
    size_t bytes = a->net->n_params * sizeof(float);
    assert_memory_equal(a->params, b->params, bytes);
    assert_memory_equal(a->ema, b->ema, bytes);
    assert_memory_equal(a->adam_m, b->adam_m, bytes);
    assert_memory_equal(a->adam_v, b->adam_v, bytes);
    assert_int_equal(b->state.step, 3);
    assert_int_equal(b->state.noise_counter, a->state.noise_counter);
    assert_int_equal(b->state.dropout_counter, a->state.dropout_counter);
    assert_int_equal(b->state.data_epoch, 7);
    assert_int_equal(b->state.data_position, 5);
    assert_int_equal(b->cfg.model.n_levels, a->cfg.model.n_levels);
    assert_memory_equal(b->cfg.model.ch_mult, a->cfg.model.ch_mult, a->cfg.model.n_levels * sizeof(int));
    assert_true(b->cfg.model.dropout == a->cfg.model.dropout && b->cfg.model.groups == a->cfg.model.groups);
    assert_true(b->cfg.optim.lr == a->cfg.optim.lr && b->cfg.seed == a->cfg.seed);
    /* three more steps after the reload equal six uninterrupted steps */
    run_steps(b, 3, 6);
    run_steps(whole, 0, 6);
    assert_memory_equal(whole->params, b->params, bytes);
    assert_memory_equal(whole->ema, b->ema, bytes);
    assert_memory_equal(whole->adam_v, b->adam_v, bytes);
    ddpm_trainer_free(a);
    ddpm_trainer_free(b);
    ddpm_trainer_free(whole);
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void copy_prefix(const char *from, const char *to, long n, long flip_at)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    for (long i = 0; i < n; i++) {
        int ch = fgetc(in);
        if (i == flip_at)
            ch ^= 0x5a;
        fputc(ch, out);
    }
    fclose(in);
    fclose(out);
}

static void test_truncated_corrupt_and_foreign_checkpoints_are_refused(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s/good.safetensors", tmpdir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", tmpdir);
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, &c), 0);
    assert_int_equal(ddpm_trainer_save(tr, good), 0);
    long size = file_size(good);
    assert_true(size > 1000);
    const long cuts[] = {0, 7, 8, 100, size / 2, size - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        copy_prefix(good, bad, cuts[k], -1);
        ddpm_checkpoint *ck = NULL;
        assert_true(ddpm_checkpoint_open(&ck, bad) < 0);
        assert_null(ck);
        assert_non_null(strstr(ddpm_last_error(), bad)); /* the message names the file */
    }
    /* a corrupted byte in the JSON header */
    copy_prefix(good, bad, size, 20);
    ddpm_checkpoint *ck = NULL;
    assert_true(ddpm_checkpoint_open(&ck, bad) < 0);
    /* a valid safetensors file that is not a ddpm checkpoint */
    float w[3] = {1, 2, 3};
    ddpm_st_tensor t = {.name = "weight", .data = w, .ndim = 1, .shape = {3}};
    assert_int_equal(ddpm_safetensors_write(bad, &t, 1, NULL, 0), 0);
    assert_true(ddpm_checkpoint_open(&ck, bad) < 0);
    assert_non_null(strstr(ddpm_last_error(), "not a ddpm checkpoint"));
    /* a ddpm checkpoint whose tensors do not fit its config */
    char *cfg_json = ddpm_run_config_to_json(&c), *st_json = ddpm_train_state_to_json(&tr->state);
    ddpm_st_meta meta[4] = {{"format", "ddpm"}, {"format_version", "1"}, {"config", cfg_json}, {"state", st_json}};
    ddpm_st_tensor wrong = {.name = "conv_in.weight", .data = w, .ndim = 1, .shape = {3}};
    assert_int_equal(ddpm_safetensors_write(bad, &wrong, 1, meta, 4), 0);
    assert_int_equal(ddpm_checkpoint_open(&ck, bad), 0);
    ddpm_trainer *b = NULL;
    assert_true(ddpm_trainer_from_checkpoint(&b, ck) < 0);
    assert_null(b);
    ddpm_checkpoint_close(ck);
    /* a config that is valid JSON but an impossible model */
    char *broken = strdup(cfg_json);
    char *p = strstr(broken, "\"groups\":4");
    assert_non_null(p);
    p[9] = '3'; /* 3 groups cannot divide 8 channels */
    meta[2].value = broken;
    assert_int_equal(ddpm_safetensors_write(bad, &wrong, 1, meta, 4), 0);
    assert_true(ddpm_checkpoint_open(&ck, bad) < 0);
    fprintf(stderr, "  refused: %s\n", ddpm_last_error());
    assert_non_null(strstr(ddpm_last_error(), "groups"));
    free(broken);
    free(cfg_json);
    free(st_json);
    ddpm_trainer_free(tr);
}

static void test_nan_loss_stops_without_touching_the_weights(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, &c), 0);
    run_steps(tr, 0, 2);
    size_t bytes = tr->net->n_params * sizeof(float);
    float *before = malloc(bytes);
    memcpy(before, tr->params, bytes);
    float x0[4 * 64];
    synthetic_batch(x0, 4, 8, 0);
    x0[17] = NAN;
    assert_int_equal(ddpm_trainer_step(tr, x0, NULL), DDPM_ENAN);
    assert_memory_equal(before, tr->params, bytes);
    assert_int_equal(tr->state.step, 2);
    free(before);
    ddpm_trainer_free(tr);
}

/* The whole command: a data folder of PNGs, a run folder, resume. */
static void make_data_folder(const char *dir)
{
    assert_int_equal(mkdir(dir, 0777), 0);
    float x[64];
    uint8_t px[64];
    for (int k = 0; k < 10; k++) {
        synthetic_image(x, k, 8);
        ddpm_image_float_to_u8(px, x, 64);
        char path[512];
        snprintf(path, sizeof path, "%s/img%02d.png", dir, k);
        assert_int_equal(ddpm_png_write(path, px, 8, 8, 1), 0);
    }
}

static void run_options(ddpm_train_options *o, const char *data, const char *out, long steps)
{
    ddpm_train_options_default(o);
    tiny_run_config(&o->cfg);
    o->cfg.model.image_size = 0; /* from the data */
    o->cfg.model.in_channels = 0;
    o->data_dir = data;
    o->out_dir = out;
    o->steps = steps;
    o->quiet = 1;
    o->log_every = 1;
    o->save_every = 0;
    o->preview_n = 4;
    o->preview_steps = 3;
}

static void read_arena(const char *run, const char *prefix, float **out, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", run, DDPM_CHECKPOINT_FILE);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    ddpm_unet *net;
    assert_int_equal(ddpm_unet_create(&net, &ddpm_checkpoint_config(ck)->model), 0);
    *n = net->n_params;
    *out = malloc(*n * sizeof(float));
    assert_int_equal(ddpm_checkpoint_read(ck, net, prefix, *out), 0);
    ddpm_unet_free(net);
    ddpm_checkpoint_close(ck);
}

static void test_resumed_run_equals_uninterrupted_run(void **state)
{
    (void)state;
    char data[300], whole[300], split[300];
    snprintf(data, sizeof data, "%s/data", tmpdir);
    snprintf(whole, sizeof whole, "%s/whole", tmpdir);
    snprintf(split, sizeof split, "%s/split", tmpdir);
    make_data_folder(data);
    ddpm_train_options o;
    /* 7 steps of batch 4 over 10 images cross two epoch boundaries */
    run_options(&o, data, whole, 7);
    assert_int_equal(ddpm_train_run(&o), 0);
    run_options(&o, data, split, 3);
    assert_int_equal(ddpm_train_run(&o), 0);
    /* a second fresh run into the same folder is refused and changes nothing */
    char ckpt[600];
    snprintf(ckpt, sizeof ckpt, "%s/%s", split, DDPM_CHECKPOINT_FILE);
    long size_before = file_size(ckpt);
    run_options(&o, data, split, 7);
    assert_true(ddpm_train_run(&o) < 0);
    assert_non_null(strstr(ddpm_last_error(), "--resume"));
    assert_int_equal(file_size(ckpt), size_before);
    o.resume = 1;
    assert_int_equal(ddpm_train_run(&o), 0);
    const char *prefixes[] = {"", "ema.", "adam_m.", "adam_v."};
    for (int k = 0; k < 4; k++) {
        float *a, *b;
        size_t n;
        read_arena(whole, prefixes[k], &a, &n);
        read_arena(split, prefixes[k], &b, &n);
        assert_memory_equal(a, b, n * sizeof(float));
        free(a);
        free(b);
    }
    /* log.jsonl: one line per step across both sessions, with the same losses */
    char log_a[600], log_b[600], line_a[512], line_b[512];
    snprintf(log_a, sizeof log_a, "%s/%s", whole, DDPM_LOG_FILE);
    snprintf(log_b, sizeof log_b, "%s/%s", split, DDPM_LOG_FILE);
    FILE *fa = fopen(log_a, "r"), *fb = fopen(log_b, "r");
    assert_non_null(fa);
    assert_non_null(fb);
    int lines = 0;
    while (fgets(line_a, sizeof line_a, fa)) {
        assert_non_null(fgets(line_b, sizeof line_b, fb));
        /* equal up to the timing fields */
        *strstr(line_a, ",\"images_per_sec\"") = '\0';
        *strstr(line_b, ",\"images_per_sec\"") = '\0';
        assert_string_equal(line_a, line_b);
        lines++;
    }
    assert_int_equal(lines, 7);
    fclose(fa);
    fclose(fb);
    /* the preview grid of the last step exists: 4 images of 8x8 in a 2x2 grid */
    char grid[600];
    snprintf(grid, sizeof grid, "%s/%s/step_0000007.png", split, DDPM_SAMPLES_DIR);
    int w, h, ch;
    assert_int_equal(ddpm_image_probe(grid, &w, &h, &ch), 0);
    assert_int_equal(w, 2 * 8 + 3 * 2);
    assert_int_equal(h, 2 * 8 + 3 * 2);
}

static void test_empty_data_folder_is_an_error_naming_it(void **state)
{
    (void)state;
    char data[300], out[300];
    snprintf(data, sizeof data, "%s/empty", tmpdir);
    snprintf(out, sizeof out, "%s/run_empty", tmpdir);
    assert_int_equal(mkdir(data, 0777), 0);
    ddpm_train_options o;
    run_options(&o, data, out, 3);
    assert_true(ddpm_train_run(&o) < 0);
    assert_non_null(strstr(ddpm_last_error(), data));
    assert_int_equal(file_size(out), -1); /* no run folder was made */
}

static void test_lr_schedule_round_trips_and_older_configs_load_as_constant(void **state)
{
    (void)state;
    ddpm_run_config c, back;
    tiny_run_config(&c);
    c.optim.lr_schedule = DDPM_LR_COSINE;
    c.optim.lr_min = 2.5e-5f;
    c.optim.lr_final_step = 1234;
    char *json = ddpm_run_config_to_json(&c);
    assert_non_null(json);
    assert_int_equal(ddpm_run_config_from_json(&back, json, "x"), 0);
    assert_int_equal(back.optim.lr_schedule, DDPM_LR_COSINE);
    assert_true(back.optim.lr_min == c.optim.lr_min);
    assert_int_equal(back.optim.lr_final_step, 1234);
    /* a config written before the schedule existed has none of the three keys */
    cJSON *root = cJSON_Parse(json), *t = cJSON_GetObjectItem(root, "train");
    cJSON_DeleteItemFromObject(t, "lr_schedule");
    cJSON_DeleteItemFromObject(t, "lr_min");
    cJSON_DeleteItemFromObject(t, "lr_final_step");
    char *old = cJSON_PrintUnformatted(root);
    assert_null(strstr(old, "lr_"));
    assert_int_equal(ddpm_run_config_from_json(&back, old, "x"), 0);
    assert_int_equal(back.optim.lr_schedule, DDPM_LR_CONSTANT);
    assert_true(back.optim.lr_min == 0.0f);
    assert_int_equal(back.optim.lr_final_step, 0);
    free(old);
    /* an unknown schedule name is refused */
    cJSON_AddItemToObject(t, "lr_schedule", cJSON_CreateString("step"));
    char *bad = cJSON_PrintUnformatted(root);
    assert_true(ddpm_run_config_from_json(&back, bad, "x") < 0);
    assert_non_null(strstr(ddpm_last_error(), "lr_schedule"));
    free(bad);
    cJSON_Delete(root);
    free(json);
}

/* The last line's lr of a run's log.jsonl. */
static double last_logged_lr(const char *run)
{
    char path[600], line[512];
    snprintf(path, sizeof path, "%s/%s", run, DDPM_LOG_FILE);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    double lr = -1;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"lr\":");
        assert_non_null(p);
        lr = strtod(p + 5, NULL);
    }
    fclose(f);
    return lr;
}

static void test_cosine_run_ends_at_lr_min_on_its_final_step(void **state)
{
    (void)state;
    char data[300], out[300], out2[300];
    snprintf(data, sizeof data, "%s/data_cos", tmpdir);
    snprintf(out, sizeof out, "%s/run_cos", tmpdir);
    snprintf(out2, sizeof out2, "%s/run_cos_minutes", tmpdir);
    make_data_folder(data);
    ddpm_train_options o;
    run_options(&o, data, out, 6);
    o.cfg.optim.warmup = 2;
    o.cfg.optim.lr_schedule = DDPM_LR_COSINE;
    o.cfg.optim.lr_min = 1e-4f;
    o.preview_n = 0;
    assert_int_equal(ddpm_train_run(&o), 0);
    assert_close(last_logged_lr(out), 1e-4, 1e-10);
    char ckpt[600];
    snprintf(ckpt, sizeof ckpt, "%s/%s", out, DDPM_CHECKPOINT_FILE);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, ckpt), 0);
    assert_int_equal(ddpm_checkpoint_config(ck)->optim.lr_final_step, 6);
    assert_int_equal(ddpm_checkpoint_config(ck)->optim.lr_schedule, DDPM_LR_COSINE);
    ddpm_checkpoint_close(ck);
    /* a time limit alone gives the decay no end */
    run_options(&o, data, out2, 0);
    o.minutes = 1;
    o.cfg.optim.lr_schedule = DDPM_LR_COSINE;
    assert_true(ddpm_train_run(&o) < 0);
    assert_non_null(strstr(ddpm_last_error(), "--steps or --epochs"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_training_reduces_the_loss_on_synthetic_images),
        cmocka_unit_test(test_same_seed_same_weights_bit_for_bit),
        cmocka_unit_test(test_checkpoint_round_trip_is_exact_and_resume_continues_identically),
        cmocka_unit_test(test_truncated_corrupt_and_foreign_checkpoints_are_refused),
        cmocka_unit_test(test_nan_loss_stops_without_touching_the_weights),
        cmocka_unit_test(test_resumed_run_equals_uninterrupted_run),
        cmocka_unit_test(test_empty_data_folder_is_an_error_naming_it),
        cmocka_unit_test(test_lr_schedule_round_trips_and_older_configs_load_as_constant),
        cmocka_unit_test(test_cosine_run_ends_at_lr_min_on_its_final_step),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
