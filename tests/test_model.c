/* Tests of the model object: opening a checkpoint (weights, identity, classes),
 * a run folder and a bad file; the class lookup; the model's output against the
 * U-Net's own forward. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/model.h"
#include "ddpm/run.h"
#include "ddpm/sha256.h"
#include "ddpm/train.h"
#include "testutil.h"

/* A conditional tiny run of two steps, saved as dir/checkpoint.safetensors. */
static ddpm_trainer *tiny_run(const char *dir, char *path, size_t size)
{
    ddpm_run_config cfg;
    ddpm_run_config_default(&cfg);
    tu_tiny_unet_config(&cfg.model);
    cfg.model.n_classes = 2;
    cfg.timesteps = 50;
    cfg.batch = 4;
    ddpm_trainer *tr;
    assert_int_equal(ddpm_trainer_create(&tr, &cfg, 0), 0);
    const char *names[2] = {"boot", "shirt"};
    assert_int_equal(ddpm_trainer_set_class_names(tr, names), 0);
    float x0[4 * 64];
    int labels[4] = {0, 1, 0, 1};
    for (int step = 0; step < 2; step++) {
        tu_grid_image(x0, 4 * 64, 3 + (uint64_t)step);
        assert_int_equal(ddpm_trainer_step_class(tr, x0, labels, NULL), 0);
    }
    snprintf(path, size, "%s/%s", dir, DDPM_CHECKPOINT_FILE);
    assert_int_equal(ddpm_trainer_save(tr, path), 0);
    return tr;
}

static void test_open_reads_weights_identity_and_classes_once(void **state)
{
    (void)state;
    char dir[256], path[512], hex[65];
    assert_int_equal(tu_make_tmpdir(dir, sizeof dir, "model"), 0);
    ddpm_trainer *tr = tiny_run(dir, path, sizeof path);
    assert_int_equal(ddpm_sha256_file(path, hex), 0);
    size_t n = tr->net->n_params;
    for (int w = 0; w < 2; w++) {
        ddpm_model m;
        /* the run folder names its checkpoint */
        assert_int_equal(ddpm_model_open(&m, w ? path : dir, w ? DDPM_WEIGHTS_RAW : DDPM_WEIGHTS_EMA), 0);
        assert_string_equal(m.path, path);
        assert_string_equal(m.sha256, hex);
        assert_int_equal(m.step, 2);
        assert_int_equal(m.ema, !w);
        assert_int_equal(m.ema_missing, 0);
        assert_memory_equal(m.params, w ? tr->params : tr->ema, n * sizeof(float));
        assert_true(memcmp(tr->params, tr->ema, n * sizeof(float)) != 0); /* the choice matters */
        assert_int_equal(m.sched.T, 50);
        assert_int_equal(ddpm_model_D(&m), 64);
        assert_int_equal(m.n_classes, 2);
        assert_string_equal(m.class_names[1], "shirt");
        int k = -1;
        assert_int_equal(ddpm_model_class(&m, "shirt", &k), 0);
        assert_int_equal(k, 1);
        assert_int_equal(ddpm_model_class(&m, "0", &k), 0);
        assert_int_equal(k, 0);
        assert_true(ddpm_model_class(&m, "2", &k) < 0);
        assert_true(ddpm_model_class(&m, "sock", &k) < 0);
        assert_non_null(strstr(ddpm_last_error(), "sock"));
        ddpm_model_close(&m);
    }
    ddpm_trainer_free(tr);
    tu_remove_tree(dir);
}

static void test_open_refuses_a_missing_or_damaged_file_naming_it(void **state)
{
    (void)state;
    char dir[256], path[512];
    assert_int_equal(tu_make_tmpdir(dir, sizeof dir, "model"), 0);
    ddpm_model m;
    snprintf(path, sizeof path, "%s/none.safetensors", dir);
    assert_true(ddpm_model_open(&m, path, DDPM_WEIGHTS_EMA) < 0);
    assert_non_null(strstr(ddpm_last_error(), path));
    assert_int_equal(tu_write_file(path, "not a checkpoint", 16), 0);
    assert_true(ddpm_model_open(&m, path, DDPM_WEIGHTS_EMA) < 0);
    assert_non_null(strstr(ddpm_last_error(), path));
    tu_remove_tree(dir);
}

/* The model's output at integer steps is the U-Net's forward byte for byte,
 * conditional or not; at a fractional step it differs (the embedding moves). */
static void test_output_at_integer_steps_is_the_unet_forward(void **state)
{
    (void)state;
    char dir[256], path[512];
    assert_int_equal(tu_make_tmpdir(dir, sizeof dir, "model"), 0);
    ddpm_trainer *tr = tiny_run(dir, path, sizeof path);
    ddpm_model m;
    assert_int_equal(ddpm_model_open(&m, path, DDPM_WEIGHTS_EMA), 0);
    enum { B = 3, D = 64 };
    float x[B * D], want[B * D], got[B * D];
    tu_fill_uniform(x, B * D, 4, -1, 1);
    int i[B] = {0, 17, 49}, y[B] = {1, 0, DDPM_NO_CLASS};
    double t[B] = {0, 17, 49};
    ddpm_unet_workspace *ws;
    assert_int_equal(ddpm_unet_workspace_create(&ws, m.net, B, 0), 0);
    for (int cond = 0; cond < 2; cond++) {
        ddpm_unet_forward_class(m.net, m.params, ws, want, x, i, cond ? y : NULL, B, NULL);
        ddpm_guide g = {y, 1};
        assert_int_equal(ddpm_model_output(&m, got, x, t, B, cond ? &g : NULL), 0);
        assert_memory_equal(got, want, sizeof got);
    }
    t[1] = 17.5;
    assert_int_equal(ddpm_model_output(&m, got, x, t, B, NULL), 0);
    assert_true(memcmp(got + D, want + D, D * sizeof(float)) != 0);
    ddpm_unet_workspace_free(ws);
    ddpm_model_close(&m);
    ddpm_trainer_free(tr);
    tu_remove_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_reads_weights_identity_and_classes_once),
        cmocka_unit_test(test_open_refuses_a_missing_or_damaged_file_naming_it),
        cmocka_unit_test(test_output_at_integer_steps_is_the_unet_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
