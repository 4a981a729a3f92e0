/* Tests of the trainer and its checkpoints: the loss falls, the same seed gives
 * the same bytes, checkpoints round-trip exactly, broken checkpoints are refused,
 * NaN stops cleanly; importance-sampled timesteps: the loss history round-trips
 * and resumes bit for bit, the warm-up is uniform, the history takes every
 * image's term in batch order whatever the batch's split. The run loop around it is tested in test_run.c. */
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
#include "ddpm/safetensors.h"
#include "ddpm/imageio.h"
#include "ddpm/sample.h"
#include "ddpm/train.h"
#include "testutil.h"
#include "trainutil.h"

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
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
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
    assert_int_equal(ddpm_trainer_create(&a, &c, 0), 0);
    assert_int_equal(ddpm_trainer_create(&b, &c, 0), 0);
    c.seed = 43;
    assert_int_equal(ddpm_trainer_create(&d, &c, 0), 0);
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
    assert_int_equal(ddpm_trainer_create(&a, &c, 0), 0);
    assert_int_equal(ddpm_trainer_create(&whole, &c, 0), 0);
    run_steps(a, 0, 3);
    a->state.data_epoch = 7;
    a->state.data_position = 5;
    assert_int_equal(ddpm_trainer_save(a, path), 0);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    ddpm_trainer *b;
    assert_int_equal(ddpm_trainer_from_checkpoint(&b, ck, 0), 0);
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
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
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
    assert_true(ddpm_trainer_from_checkpoint(&b, ck, 0) < 0);
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
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
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

/* Micro-batches draw each image's t, eps and dropout mask from its index in the
 * batch, so only the order of the float sums over images differs from the whole
 * batch. Batch 7 in chunks of 1, 3 (3 + 3 + 1) and 7. */
static void test_micro_batches_give_the_whole_batch_update(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    c.batch = 7;
    const long steps = 5;
    ddpm_trainer *whole, *part;
    assert_int_equal(ddpm_trainer_create(&whole, &c, 0), 0);
    float x0[7 * 64];
    size_t n = whole->net->n_params;
    float *grad_whole = malloc((n + DDPM_TRAIN_SCALARS) * sizeof(float));
    /* the first step's gradient, then the weights after `steps` steps */
    synthetic_batch(x0, 7, 8, 0);
    ddpm_trainer_accumulate(whole, x0, 0, 7);
    memcpy(grad_whole, whole->grads, (n + DDPM_TRAIN_SCALARS) * sizeof(float));
    for (long s = 0; s < steps; s++) {
        synthetic_batch(x0, 7, 8, s);
        assert_int_equal(ddpm_trainer_step(whole, x0, NULL), 0);
    }
    const int micro[] = {1, 3, 7};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(ddpm_trainer_create(&part, &c, micro[k]), 0);
        assert_int_equal(part->micro_batch, micro[k]);
        synthetic_batch(x0, 7, 8, 0);
        ddpm_trainer_accumulate(part, x0, 0, 7);
        double dg = tu_max_rel_diff(part->grads, grad_whole, n);
        double dl = fabs(part->grads[n + DDPM_TRAIN_LOSS] - grad_whole[n + DDPM_TRAIN_LOSS]);
        for (long s = 0; s < steps; s++) {
            synthetic_batch(x0, 7, 8, s);
            assert_int_equal(ddpm_trainer_step(part, x0, NULL), 0);
        }
        double dw = tu_max_rel_diff(part->params, whole->params, n);
        fprintf(stderr, "  micro-batch %d: gradient max rel diff %.3g, loss diff %.3g, weights after %ld steps %.3g\n",
                micro[k], dg, dl, steps, dw);
        if (micro[k] == 7) { /* the same code path: the same bytes */
            assert_memory_equal(part->params, whole->params, n * sizeof(float));
            assert_memory_equal(part->ema, whole->ema, n * sizeof(float));
        }
        /* float sums over 1..7 images in another order: a few ulp of the largest
           gradient (2^-24 = 6e-8 each; measured 1.3e-7 here). 2e-6 leaves room and
           is far below what one image's different t, eps or mask changes (> 1e-2) */
        assert_true(dg < 2e-6);
        assert_true(dl < 1e-6);
        /* Adam divides by sqrt(v), which can amplify a rounding difference in a
           near-zero gradient; measured 2.5e-7 of the largest weight after 5 steps */
        assert_true(dw < 1e-5);
        assert_int_equal(part->state.noise_counter, whole->state.noise_counter);
        assert_int_equal(part->state.dropout_counter, whole->state.dropout_counter);
        ddpm_trainer_free(part);
    }
    free(grad_whole);
    ddpm_trainer_free(whole);
}

/* Two processes' shares, each accumulated alone and then summed, give the whole
 * batch's gradient and loss: what a data-parallel step all-reduces. */
static void test_shares_of_a_batch_sum_to_its_gradient(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    c.batch = 5;
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, &c, 2), 0);
    size_t n = tr->net->n_params + DDPM_TRAIN_SCALARS;
    float x0[5 * 64], *whole = malloc(n * sizeof(float)), *sum = malloc(n * sizeof(float));
    synthetic_batch(x0, 5, 8, 3);
    ddpm_trainer_accumulate(tr, x0, 0, 5);
    memcpy(whole, tr->grads, n * sizeof(float));
    ddpm_trainer_accumulate(tr, x0, 0, 3);
    memcpy(sum, tr->grads, n * sizeof(float));
    ddpm_trainer_accumulate(tr, x0, 3, 2);
    for (size_t i = 0; i < n; i++)
        sum[i] += tr->grads[i];
    double d = tu_max_rel_diff(sum, whole, n - DDPM_TRAIN_SCALARS);
    fprintf(stderr, "  shares 3 + 2 against 5: gradient max rel diff %.3g\n", d);
    assert_true(d < 2e-6); /* as above: float sums in another order */
    assert_true(fabs(sum[n - DDPM_TRAIN_SCALARS + DDPM_TRAIN_LOSS] - whole[n - DDPM_TRAIN_SCALARS + DDPM_TRAIN_LOSS]) <
                1e-6);
    free(whole);
    free(sum);
    ddpm_trainer_free(tr);
}

/* Samples 4 images with the model's own prediction type; every value finite, and
 * inside [-1, 1] when the predicted x0 is clipped (the last mean is c0 x0 with c0 = 1). */
static void sample_and_check(const ddpm_unet *net, const float *params, const ddpm_schedule *s,
                             ddpm_sampler_kind kind, int clip)
{
    enum { B = 4 };
    size_t D = (size_t)net->cfg.in_channels * net->cfg.image_size * net->cfg.image_size;
    float *x = malloc(B * D * sizeof(float));
    ddpm_sampler_config sc;
    ddpm_sampler_config_default(&sc);
    sc.kind = kind;
    sc.steps = 10;
    sc.clip_x0 = clip;
    ddpm_model m; /* the model converts its own prediction type */
    assert_int_equal(ddpm_model_from_net(&m, net, params, s), 0);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 3, DDPM_STREAM_SAMPLE);
    assert_int_equal(ddpm_sample(&m, &sc, NULL, x, B, 0, &rng, NULL), 0);
    for (size_t k = 0; k < B * D; k++) {
        if (!isfinite(x[k]) || (clip && fabsf(x[k]) > 1.0001f))
            fail_msg("%s, sampler %d, clip %d: sample value %zu is %g", ddpm_prediction_name(net->cfg.prediction),
                     kind, clip, k, x[k]);
    }
    free(x);
    ddpm_model_close(&m);
}

static void test_every_prediction_type_trains_round_trips_and_samples(void **state)
{
    (void)state;
    for (int k = 0; k < DDPM_N_PREDICTIONS; k++) {
        ddpm_run_config c;
        tiny_run_config(&c);
        c.model.prediction = (ddpm_prediction)k;
        ddpm_trainer *tr;
        assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
        float x0[4 * 64];
        ddpm_step_stats st;
        double first = 0, last = 0;
        for (long step = 0; step < 150; step++) {
            synthetic_batch(x0, 4, 8, step);
            assert_int_equal(ddpm_trainer_step(tr, x0, &st), 0);
            first += step < 20 ? st.loss / 20 : 0;
            last += step >= 110 ? st.loss / 40 : 0;
        }
        fprintf(stderr, "  %s: loss first 20 steps %.4f, last 40 %.4f\n", ddpm_prediction_name(c.model.prediction),
                first, last);
        /* every target is learnable on 8 images: the loss at least falls */
        assert_true(last < first);
        char path[512];
        snprintf(path, sizeof path, "%s/pred_%d.safetensors", tmpdir, k);
        assert_int_equal(ddpm_trainer_save(tr, path), 0);
        ddpm_checkpoint *ck;
        assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
        assert_int_equal(ddpm_checkpoint_config(ck)->model.prediction, k);
        ddpm_unet *net;
        float *params;
        int used_ema;
        assert_int_equal(ddpm_checkpoint_load_model(ck, 1, &net, &params, &used_ema), 0);
        ddpm_checkpoint_close(ck);
        assert_true(used_ema);
        assert_int_equal(net->cfg.prediction, k);
        assert_memory_equal(params, tr->ema, net->n_params * sizeof(float));
        sample_and_check(net, params, &tr->sched, DDPM_SAMPLER_DDPM, 1);
        sample_and_check(net, params, &tr->sched, DDPM_SAMPLER_DDIM, 1);
        sample_and_check(net, params, &tr->sched, DDPM_SAMPLER_DDIM, 0);
        free(params);
        ddpm_unet_free(net);
        ddpm_trainer_free(tr);
    }
}

/* Two synthetic classes, dark (a bright square on black) and bright (its
 * negative): a tiny conditional model trained on them with label dropout samples
 * the class it is asked for. Mean intensity of 8 samples per class, ancestral
 * sampling: the data means are -0.72 and +0.72; a model that ignored the label
 * would give the same mean for both (measured after 800 steps: -0.60 and +0.55;
 * after 300 steps the tiny model had barely begun to use the label). */
static double class_mean(const ddpm_trainer *tr, int cls, float guidance, const char *path)
{
    ddpm_sample_files_config fc;
    ddpm_sample_files_config_default(&fc);
    fc.n = 8;
    fc.batch = 8;
    fc.seed = 5;
    fc.sampler.kind = DDPM_SAMPLER_DDPM;
    fc.class_index = cls;
    fc.guidance = guidance;
    fc.grid_path = NULL;
    fc.each_dir = path;
    ddpm_model m;
    assert_int_equal(ddpm_model_from_trainer(&m, tr, DDPM_WEIGHTS_EMA), 0);
    assert_int_equal(ddpm_sample_files(&m, &fc, NULL, NULL), 0);
    ddpm_model_close(&m);
    double sum = 0;
    for (int k = 0; k < 8; k++) {
        char file[600];
        snprintf(file, sizeof file, "%s/%05d.png", path, k);
        float img[64];
        int S = 8, C = 1;
        assert_int_equal(ddpm_image_load(file, img, S, C), 0);
        for (int d = 0; d < 64; d++)
            sum += img[d];
    }
    return sum / (8 * 64);
}

static void test_class_conditional_model_samples_the_requested_class(void **state)
{
    (void)state;
    ddpm_run_config c;
    tiny_run_config(&c);
    c.model.n_classes = 2;
    c.model.dropout = 0;
    c.batch = 8;
    /* T = 100 with the paper's betas ends at abar_T = 0.37: x_T would still show
       the class, and N(0, I) noise would not be x_T. beta_end 0.2 ends at 5e-5. */
    c.beta_end = 0.2;
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
    const char *names[2] = {"dark", "bright"};
    assert_int_equal(ddpm_trainer_set_class_names(tr, names), 0);
    float x0[8 * 64];
    int labels[8];
    for (long step = 0; step < 800; step++) {
        synthetic_batch(x0, 8, 8, step);
        for (int b = 0; b < 8; b++) {
            labels[b] = (int)((step + b) % 2);
            if (labels[b] == 1)
                for (int d = 0; d < 64; d++)
                    x0[b * 64 + d] = -x0[b * 64 + d];
        }
        assert_int_equal(ddpm_trainer_step_class(tr, x0, labels, NULL), 0);
    }
    char dark[512], bright[512], guided[512];
    snprintf(dark, sizeof dark, "%s/dark", tmpdir);
    snprintf(bright, sizeof bright, "%s/bright", tmpdir);
    snprintf(guided, sizeof guided, "%s/guided", tmpdir);
    double m0 = class_mean(tr, 0, 1, dark), m1 = class_mean(tr, 1, 1, bright), g1 = class_mean(tr, 1, 3, guided);
    fprintf(stderr, "  mean intensity: class dark %.3f, class bright %.3f, bright with guidance 3: %.3f\n", m0, m1, g1);
    assert_true(m0 < -0.3);
    assert_true(m1 > 0.3);
    assert_true(g1 > 0.3);
    assert_true(m1 - m0 > 0.7);
    /* the class names travel with the checkpoint */
    char path[512];
    snprintf(path, sizeof path, "%s/cond.safetensors", tmpdir);
    assert_int_equal(ddpm_trainer_save(tr, path), 0);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    assert_int_equal(ddpm_checkpoint_config(ck)->model.n_classes, 2);
    assert_string_equal(ddpm_checkpoint_class_names(ck)[0], "dark");
    assert_string_equal(ddpm_checkpoint_class_names(ck)[1], "bright");
    ddpm_trainer *back;
    assert_int_equal(ddpm_trainer_from_checkpoint(&back, ck, 0), 0);
    /* and with exported weights */
    char exported[512];
    snprintf(exported, sizeof exported, "%s/cond_export.safetensors", tmpdir);
    assert_int_equal(ddpm_checkpoint_export(ck, exported, 0, NULL), 0);
    ddpm_checkpoint_close(ck);
    assert_int_equal(ddpm_checkpoint_open(&ck, exported), 0);
    assert_int_equal(ddpm_checkpoint_config(ck)->model.n_classes, 2);
    assert_string_equal(ddpm_checkpoint_class_names(ck)[0], "dark");
    ddpm_checkpoint_close(ck);
    assert_memory_equal(back->ema, tr->ema, tr->net->n_params * sizeof(float));
    assert_string_equal(back->class_names[1], "bright");
    ddpm_trainer_free(back);
    ddpm_trainer_free(tr);
}

/* A checkpoint written before the prediction types (no "prediction", no
 * "n_classes", no loss fields) is an eps, L_simple, unconditional model; an
 * unknown prediction is refused with its name. */
static void test_old_configs_load_as_eps_and_unknown_prediction_is_refused(void **state)
{
    (void)state;
    ddpm_run_config c, back;
    tiny_run_config(&c);
    c.model.prediction = DDPM_PRED_V;
    char *json = ddpm_run_config_to_json(&c);
    assert_non_null(strstr(json, "\"prediction\":\"v\""));
    assert_int_equal(ddpm_run_config_from_json(&back, json, "x"), 0);
    assert_int_equal(back.model.prediction, DDPM_PRED_V);
    char *p = strstr(json, "\"prediction\":\"v\""), changed[4096];
    snprintf(changed, sizeof changed, "%.*s\"prediction\":\"x1\"%s", (int)(p - json), json, p + 16);
    assert_true(ddpm_run_config_from_json(&back, changed, "old.safetensors") < 0);
    assert_non_null(strstr(ddpm_last_error(), "x1"));
    free(json);
    /* the earlier form: "prediction":"eps" and none of the new fields */
    const char *old = "{\"model\":{\"in_channels\":1,\"image_size\":8,\"ch\":8,\"ch_mult\":[1,2],"
                      "\"num_res_blocks\":1,\"attn_res\":[4],\"groups\":4,\"dropout\":0.1,\"prediction\":\"eps\"},"
                      "\"schedule\":{\"kind\":\"linear\",\"timesteps\":100,\"beta_start\":0.0001,\"beta_end\":0.02},"
                      "\"train\":{\"batch\":4,\"lr\":0.002,\"warmup\":10,\"beta1\":0.9,\"beta2\":0.999,"
                      "\"adam_eps\":1e-8,\"clip\":1,\"ema\":0.999,\"flip\":false,\"seed\":\"42\"}}";
    assert_int_equal(ddpm_run_config_from_json(&back, old, "old.safetensors"), 0);
    assert_int_equal(back.model.prediction, DDPM_PRED_EPS);
    assert_int_equal(back.model.n_classes, 0);
    assert_int_equal(back.loss.kind, DDPM_LOSS_SIMPLE);
    assert_true(back.loss.snr_gamma == 0);
}

/* The same with labels, label dropout and the other objectives: a micro-batch's
 * share of the loss and its gradient are scaled to the whole batch (a loss
 * normalised by the micro-batch instead would be 7/3 times too large). */
static void test_micro_batches_with_labels_and_other_objectives_give_the_whole_batch_gradient(void **state)
{
    (void)state;
    const ddpm_loss_kind kinds[2] = {DDPM_LOSS_SIMPLE, DDPM_LOSS_HYBRID};
    for (int r = 0; r < 2; r++) {
        ddpm_run_config c;
        tiny_run_config(&c);
        c.batch = 7;
        c.model.n_classes = 3;
        c.model.prediction = DDPM_PRED_V;
        c.loss.kind = kinds[r];
        c.loss.snr_gamma = 5;
        c.cond_drop = 0.3f;
        float x0[7 * 64];
        int labels[7] = {0, 1, 2, 0, 1, 2, 0};
        synthetic_batch(x0, 7, 8, 0);
        ddpm_trainer *whole, *part;
        assert_int_equal(ddpm_trainer_create(&whole, &c, 0), 0);
        assert_int_equal(ddpm_trainer_create(&part, &c, 3), 0);
        ddpm_trainer_accumulate_class(whole, x0, labels, 0, 7);
        ddpm_trainer_accumulate_class(part, x0, labels, 0, 7);
        size_t n = whole->net->n_params;
        double dg = tu_max_rel_diff(part->grads, whole->grads, n);
        double dl = fabs(part->grads[n + DDPM_TRAIN_LOSS] - whole->grads[n + DDPM_TRAIN_LOSS]);
        fprintf(stderr, "  %s, v, min-SNR 5, 3 classes, micro-batch 3: gradient max rel diff %.3g, loss diff %.3g\n",
                ddpm_loss_name(kinds[r]), dg, dl);
        /* tolerances of test_micro_batches_give_the_whole_batch_update */
        assert_true(dg < 2e-6);
        assert_true(dl < 1e-6 * (1 + fabs(whole->grads[n + DDPM_TRAIN_LOSS])));
        ddpm_trainer_free(whole);
        ddpm_trainer_free(part);
    }
}

/* A tiny importance-sampled run of the bound: T 10, so the warm-up (10 values
 * for each of the 10 steps, about 155 images) ends within 25 steps of batch 8. */
static void importance_config(ddpm_run_config *c)
{
    tiny_run_config(c);
    c->timesteps = 10;
    c->batch = 8;
    c->loss.kind = DDPM_LOSS_VLB;
    c->t_sampling = DDPM_T_IMPORTANCE;
}

static void run_batches(ddpm_trainer *tr, long from, long to)
{
    float x0[8 * 64];
    for (long step = from; step < to; step++) {
        synthetic_batch(x0, tr->cfg.batch, 8, step);
        assert_int_equal(ddpm_trainer_step(tr, x0, NULL), 0);
    }
}

static void assert_same_history(const ddpm_trainer *a, const ddpm_trainer *b)
{
    int T = a->cfg.timesteps;
    assert_int_equal(a->t_history.T, T);
    assert_int_equal(b->t_history.T, T);
    assert_memory_equal(a->t_history.count, b->t_history.count, (size_t)T * sizeof(int));
    assert_memory_equal(a->t_history.loss, b->t_history.loss, (size_t)T * DDPM_T_HISTORY * sizeof(float));
}

static ddpm_trainer *reopen(const ddpm_trainer *tr, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    assert_int_equal(ddpm_trainer_save(tr, path), 0);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    ddpm_trainer *back = NULL;
    if (ddpm_trainer_from_checkpoint(&back, ck, 0))
        fail_msg("%s", ddpm_last_error());
    ddpm_checkpoint_close(ck);
    return back;
}

/* The history is run state: saved with the checkpoint (as CRC-checked tensors)
 * and read back exactly, mid-warm-up and warmed up; a checkpoint written
 * without it resumes with an empty history; a broken one is refused. */
static void test_loss_history_round_trips_through_the_checkpoint(void **state)
{
    (void)state;
    ddpm_run_config c;
    importance_config(&c);
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
    run_batches(tr, 0, 4);
    assert_false(ddpm_t_history_warm(&tr->t_history));
    ddpm_trainer *back = reopen(tr, "hist_a.safetensors");
    assert_int_equal(back->cfg.t_sampling, DDPM_T_IMPORTANCE);
    assert_same_history(tr, back);
    ddpm_trainer_free(back);
    run_batches(tr, 4, 40);
    assert_true(ddpm_t_history_warm(&tr->t_history));
    back = reopen(tr, "hist_b.safetensors");
    assert_same_history(tr, back);
    ddpm_trainer_free(back);
    /* a checkpoint of the same run without the two tensors (as written before
       importance sampling existed) resumes with an empty history */
    char path[512];
    snprintf(path, sizeof path, "%s/hist_old.safetensors", tmpdir);
    assert_int_equal(ddpm_checkpoint_save(path, &tr->cfg, &tr->state, tr->net, tr->params, tr->ema, tr->adam_m,
                                          tr->adam_v, NULL, NULL, NULL),
                     0);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    assert_int_equal(ddpm_trainer_from_checkpoint(&back, ck, 0), 0);
    ddpm_checkpoint_close(ck);
    for (int i = 0; i < c.timesteps; i++)
        assert_int_equal(back->t_history.count[i], 0);
    ddpm_trainer_free(back);
    /* a count outside 0..10 is refused, naming the tensor */
    tr->t_history.count[3] = 11;
    assert_int_equal(ddpm_trainer_save(tr, path), 0);
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    back = NULL;
    assert_true(ddpm_trainer_from_checkpoint(&back, ck, 0) < 0);
    assert_null(back);
    assert_non_null(strstr(ddpm_last_error(), DDPM_T_COUNT_TENSOR));
    ddpm_checkpoint_close(ck);
    ddpm_trainer_free(tr);
}

/* Resumed from a checkpoint after the warm-up (importance weights in use), the
 * run continues with the bytes of one never interrupted: weights, EMA, Adam,
 * counters and the history. */
static void test_importance_sampling_resumes_bit_for_bit(void **state)
{
    (void)state;
    ddpm_run_config c;
    importance_config(&c);
    ddpm_trainer *whole, *first;
    assert_int_equal(ddpm_trainer_create(&whole, &c, 0), 0);
    assert_int_equal(ddpm_trainer_create(&first, &c, 0), 0);
    run_batches(whole, 0, 45);
    run_batches(first, 0, 30);
    assert_true(ddpm_t_history_warm(&first->t_history));
    ddpm_trainer *resumed = reopen(first, "resume_imp.safetensors");
    ddpm_trainer_free(first);
    run_batches(resumed, 30, 45);
    size_t bytes = whole->net->n_params * sizeof(float);
    assert_memory_equal(whole->params, resumed->params, bytes);
    assert_memory_equal(whole->ema, resumed->ema, bytes);
    assert_memory_equal(whole->adam_m, resumed->adam_m, bytes);
    assert_memory_equal(whole->adam_v, resumed->adam_v, bytes);
    assert_true(whole->state.noise_counter == resumed->state.noise_counter);
    assert_same_history(whole, resumed);
    /* and importance sampling changed the run: uniform t trains other bytes */
    c.t_sampling = DDPM_T_UNIFORM;
    ddpm_trainer *uniform;
    assert_int_equal(ddpm_trainer_create(&uniform, &c, 0), 0);
    run_batches(uniform, 0, 45);
    assert_memory_not_equal(whole->params, uniform->params, bytes);
    ddpm_trainer_free(uniform);
    ddpm_trainer_free(whole);
    ddpm_trainer_free(resumed);
}

/* During the warm-up t is drawn as uniform sampling draws it and every weight is
 * exactly 1: with --loss vlb an importance run takes the same bytes as a uniform
 * run until the history is full, and other bytes after. */
static void test_importance_warm_up_trains_the_uniform_bytes(void **state)
{
    (void)state;
    ddpm_run_config c;
    importance_config(&c);
    ddpm_trainer *imp, *uni;
    assert_int_equal(ddpm_trainer_create(&imp, &c, 0), 0);
    c.t_sampling = DDPM_T_UNIFORM;
    assert_int_equal(ddpm_trainer_create(&uni, &c, 0), 0);
    size_t bytes = imp->net->n_params * sizeof(float);
    long step = 0;
    for (; !ddpm_t_history_warm(&imp->t_history); step++) {
        run_batches(imp, step, step + 1);
        run_batches(uni, step, step + 1);
        if (!ddpm_t_history_warm(&imp->t_history))
            assert_memory_equal(imp->params, uni->params, bytes);
    }
    fprintf(stderr, "  warm-up over after %ld steps of 8 images (T = 10)\n", step);
    assert_true(step > 5 && step < 60);
    run_batches(imp, step, step + 3);
    run_batches(uni, step, step + 3);
    assert_memory_not_equal(imp->params, uni->params, bytes);
    ddpm_trainer_free(imp);
    ddpm_trainer_free(uni);
}

/* The first step's history by hand: image g's term (from the reduce buffer,
 * whose mean is the step's loss, as every weight is 1 in the warm-up) added at
 * image g's t (the uniform draw from its counter), in batch order. */
static void expect_first_step_history(const ddpm_run_config *c, const float *x0)
{
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, c, 0), 0);
    size_t at = tr->net->n_params + DDPM_TRAIN_SCALARS;
    ddpm_trainer_accumulate(tr, x0, 0, c->batch);
    float terms[8];
    int t[8];
    double mean = 0;
    for (int g = 0; g < c->batch; g++) {
        terms[g] = tr->grads[at + g];
        mean += terms[g] / c->batch;
        ddpm_rng r;
        ddpm_rng_init(&r, c->seed, DDPM_STREAM_NOISE);
        r.counter = tr->state.noise_counter + (uint64_t)g;
        t[g] = (int)ddpm_rng_below(&r, (uint64_t)c->timesteps);
    }
    assert_close(mean, tr->grads[at - DDPM_TRAIN_SCALARS + DDPM_TRAIN_LOSS], 1e-6 * mean);
    ddpm_t_history want;
    assert_int_equal(ddpm_t_history_init(&want, c->timesteps), 0);
    ddpm_t_history_add(&want, t, terms, c->batch);
    assert_int_equal(ddpm_trainer_apply(tr, NULL), 0);
    assert_memory_equal(tr->t_history.count, want.count, (size_t)c->timesteps * sizeof(int));
    assert_memory_equal(tr->t_history.loss, want.loss, (size_t)c->timesteps * DDPM_T_HISTORY * sizeof(float));
    ddpm_t_history_free(&want);
    ddpm_trainer_free(tr);
}

/* Each image's term reaches the history through its own slot of the reduce
 * buffer (0 in every other process's buffer): two processes, each computing its
 * share and applying the summed buffer as after the all-reduce, and
 * micro-batches add every image's term of the batch in batch order, as the whole
 * batch does. The terms themselves are the network's outputs, which can differ
 * in their last bit with the split (sgemm's blocking follows the number of
 * images: measured up to 1.2e-7 relative), as the gradients do; so the histories
 * agree exactly in which steps got values and to float rounding in the values.
 * A lost share, a process's own terms only, or another order moves a value by
 * far more: two images' terms differ by 1e-3 or more. */
static void test_loss_history_takes_every_images_term_in_batch_order_whatever_the_split(void **state)
{
    (void)state;
    ddpm_run_config c;
    importance_config(&c);
    c.loss.kind = DDPM_LOSS_HYBRID;
    c.loss.vlb_weight = 0.01f;
    float x0[8 * 64];
    synthetic_batch(x0, 8, 8, 0);
    expect_first_step_history(&c, x0);
    ddpm_trainer *whole, *proc0, *proc1, *micro;
    assert_int_equal(ddpm_trainer_create(&whole, &c, 0), 0);
    assert_int_equal(ddpm_trainer_create(&proc0, &c, 0), 0);
    assert_int_equal(ddpm_trainer_create(&proc1, &c, 0), 0);
    assert_int_equal(ddpm_trainer_create(&micro, &c, 3), 0);
    size_t n = ddpm_trainer_reduce_size(whole), at = whole->net->n_params + DDPM_TRAIN_SCALARS;
    assert_int_equal(n, at + 8);
    int T = c.timesteps;
    size_t hist = (size_t)T * DDPM_T_HISTORY;
    float shares[8];
    double worst = 0;
    ddpm_trainer *const others[3] = {proc0, proc1, micro};
    const char *const names[3] = {"process 0 of 2", "process 1 of 2", "micro-batches of 3"};
    for (long step = 0; step < 30; step++) {
        synthetic_batch(x0, 8, 8, step);
        /* the same weights and history at the start of each step: only the
           split differs */
        for (int k = 0; k < 3; k++) {
            memcpy(others[k]->params, whole->params, whole->net->n_params * sizeof(float));
            memcpy(others[k]->t_history.loss, whole->t_history.loss, hist * sizeof(float));
            memcpy(others[k]->t_history.count, whole->t_history.count, (size_t)T * sizeof(int));
        }
        ddpm_trainer_accumulate(proc0, x0, 0, 3);
        ddpm_trainer_accumulate(proc1, x0, 3, 5);
        memcpy(shares, proc0->grads + at, 3 * sizeof(float));
        memcpy(shares + 3, proc1->grads + at + 3, 5 * sizeof(float));
        for (size_t k = 0; k < n; k++) /* the all-reduce */
            proc0->grads[k] = proc1->grads[k] = proc0->grads[k] + proc1->grads[k];
        /* the sum holds each process's own terms, exactly */
        assert_memory_equal(proc0->grads + at, shares, sizeof shares);
        assert_int_equal(ddpm_trainer_apply(proc0, NULL), 0);
        assert_int_equal(ddpm_trainer_apply(proc1, NULL), 0);
        assert_int_equal(ddpm_trainer_step(micro, x0, NULL), 0);
        assert_int_equal(ddpm_trainer_step(whole, x0, NULL), 0);
        assert_memory_equal(proc0->t_history.loss, proc1->t_history.loss, hist * sizeof(float));
        for (int k = 0; k < 3; k++) {
            assert_memory_equal(others[k]->t_history.count, whole->t_history.count, (size_t)T * sizeof(int));
            for (size_t j = 0; j < hist; j++) {
                double a = whole->t_history.loss[j], b = others[k]->t_history.loss[j];
                double d = fabs(a - b) / fmax(fabs(a), 1e-30);
                worst = fmax(worst, d);
                if (d > 1e-6)
                    fail_msg("step %ld, %s: history value %zu is %.9g, the whole batch's %.9g", step, names[k], j, b,
                             a);
            }
        }
    }
    fprintf(stderr, "  history against the whole batch's, 30 steps: max rel diff %.3g\n", worst);
    assert_true(ddpm_t_history_warm(&whole->t_history));
    ddpm_trainer_free(whole);
    ddpm_trainer_free(proc0);
    ddpm_trainer_free(proc1);
    ddpm_trainer_free(micro);
}

static void test_importance_sampling_with_the_simple_loss_is_refused(void **state)
{
    (void)state;
    ddpm_run_config c;
    importance_config(&c);
    c.loss.kind = DDPM_LOSS_SIMPLE;
    ddpm_trainer *tr = NULL;
    assert_true(ddpm_trainer_create(&tr, &c, 0) < 0);
    assert_null(tr);
    assert_non_null(strstr(ddpm_last_error(), "--loss vlb or hybrid"));
    /* and a config that says so in a checkpoint is refused on open */
    ddpm_run_config back;
    char *json = ddpm_run_config_to_json(&c);
    assert_non_null(strstr(json, "\"t_sampling\":\"importance\""));
    assert_true(ddpm_run_config_from_json(&back, json, "x.safetensors") < 0);
    free(json);
    /* an older config without the key is uniform */
    c.loss.kind = DDPM_LOSS_VLB;
    json = ddpm_run_config_to_json(&c);
    cJSON *root = cJSON_Parse(json);
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(root, "train"), "t_sampling");
    char *old = cJSON_PrintUnformatted(root);
    assert_int_equal(ddpm_run_config_from_json(&back, old, "old.safetensors"), 0);
    assert_int_equal(back.t_sampling, DDPM_T_UNIFORM);
    assert_int_equal(ddpm_run_config_from_json(&back, json, "new.safetensors"), 0);
    assert_int_equal(back.t_sampling, DDPM_T_IMPORTANCE);
    free(old);
    cJSON_Delete(root);
    free(json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_training_reduces_the_loss_on_synthetic_images),
        cmocka_unit_test(test_same_seed_same_weights_bit_for_bit),
        cmocka_unit_test(test_checkpoint_round_trip_is_exact_and_resume_continues_identically),
        cmocka_unit_test(test_truncated_corrupt_and_foreign_checkpoints_are_refused),
        cmocka_unit_test(test_nan_loss_stops_without_touching_the_weights),
        cmocka_unit_test(test_lr_schedule_round_trips_and_older_configs_load_as_constant),
        cmocka_unit_test(test_micro_batches_give_the_whole_batch_update),
        cmocka_unit_test(test_shares_of_a_batch_sum_to_its_gradient),
        cmocka_unit_test(test_every_prediction_type_trains_round_trips_and_samples),
        cmocka_unit_test(test_old_configs_load_as_eps_and_unknown_prediction_is_refused),
        cmocka_unit_test(test_class_conditional_model_samples_the_requested_class),
        cmocka_unit_test(test_micro_batches_with_labels_and_other_objectives_give_the_whole_batch_gradient),
        cmocka_unit_test(test_loss_history_round_trips_through_the_checkpoint),
        cmocka_unit_test(test_importance_sampling_resumes_bit_for_bit),
        cmocka_unit_test(test_importance_warm_up_trains_the_uniform_bytes),
        cmocka_unit_test(test_loss_history_takes_every_images_term_in_batch_order_whatever_the_split),
        cmocka_unit_test(test_importance_sampling_with_the_simple_loss_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
