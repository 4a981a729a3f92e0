/* Tests of a training run (run.h): resume equals an uninterrupted run, a run
 * folder is never overwritten, everything the run has to say reaches the caller
 * through its callbacks and summary (nothing on the terminal), the stop flag
 * saves a checkpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/run.h"
#include "testutil.h"
#include "trainutil.h"

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(tmpdir, sizeof tmpdir, "run");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmpdir);
}

/* A data folder of 10 synthetic 8x8 PNGs. */
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

static void run_options(ddpm_run_options *o, const char *data, const char *out, long steps)
{
    ddpm_run_options_default(o);
    tiny_run_config(&o->cfg);
    o->cfg.model.image_size = 0; /* from the data */
    o->cfg.model.in_channels = 0;
    o->data_dir = data;
    o->out_dir = out;
    o->steps = steps;
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
    ddpm_run_options o;
    /* 7 steps of batch 4 over 10 images cross two epoch boundaries */
    run_options(&o, data, whole, 7);
    assert_int_equal(ddpm_run(&o, NULL, NULL), 0);
    run_options(&o, data, split, 3);
    assert_int_equal(ddpm_run(&o, NULL, NULL), 0);
    /* a second fresh run into the same folder is refused and changes nothing */
    char ckpt[600];
    snprintf(ckpt, sizeof ckpt, "%s/%s", split, DDPM_CHECKPOINT_FILE);
    long size_before = file_size(ckpt);
    run_options(&o, data, split, 7);
    assert_true(ddpm_run(&o, NULL, NULL) < 0);
    assert_non_null(strstr(ddpm_last_error(), "--resume"));
    assert_int_equal(file_size(ckpt), size_before);
    o.resume = 1;
    assert_int_equal(ddpm_run(&o, NULL, NULL), 0);
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
    ddpm_run_options o;
    run_options(&o, data, out, 3);
    assert_true(ddpm_run(&o, NULL, NULL) < 0);
    assert_non_null(strstr(ddpm_last_error(), data));
    assert_int_equal(file_size(out), -1); /* no run folder was made */
}

static void test_bad_options_are_refused_before_any_file_is_made(void **state)
{
    (void)state;
    char data[300], out[300];
    snprintf(data, sizeof data, "%s/data_opts", tmpdir);
    snprintf(out, sizeof out, "%s/run_opts", tmpdir);
    make_data_folder(data);
    ddpm_run_options o;
    run_options(&o, data, out, 3);
    o.log_every = 0; /* would divide by zero */
    assert_int_equal(ddpm_run(&o, NULL, NULL), DDPM_EINVAL);
    run_options(&o, data, out, 3);
    o.preview_steps = 0;
    assert_int_equal(ddpm_run(&o, NULL, NULL), DDPM_EINVAL);
    run_options(&o, NULL, out, 3);
    assert_int_equal(ddpm_run(&o, NULL, NULL), DDPM_EINVAL);
    assert_int_equal(file_size(out), -1);
}

/* What the callbacks were told. */
typedef struct {
    int n_started, n_progress, n_warnings;
    ddpm_run_start start;
    long steps[16];
    double losses[16];
    char warnings[4][512];
    volatile sig_atomic_t *stop;
    long stop_at; /* set *stop when this step is reported */
} record;

static void on_started(void *ctx, const ddpm_run_start *s)
{
    record *r = ctx;
    r->n_started++;
    r->start = *s;
}

static void on_progress(void *ctx, const ddpm_run_progress *p)
{
    record *r = ctx;
    if (r->n_progress < 16) {
        r->steps[r->n_progress] = p->step;
        r->losses[r->n_progress] = p->loss;
    }
    r->n_progress++;
    if (r->stop && p->step == r->stop_at)
        *r->stop = 1;
}

static void on_warning(void *ctx, const char *line)
{
    record *r = ctx;
    if (r->n_warnings < 4)
        snprintf(r->warnings[r->n_warnings], sizeof r->warnings[0], "%s", line);
    r->n_warnings++;
}

/* Runs ddpm_run with stdout and stderr sent to a file; returns its status and
 * the number of bytes that reached the two streams. */
static int run_capturing_terminal(const ddpm_run_options *o, const ddpm_run_callbacks *cb,
                                  ddpm_run_summary *s, long *terminal_bytes)
{
    char path[300];
    snprintf(path, sizeof path, "%s/terminal.txt", tmpdir);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    assert_true(saved_out >= 0 && saved_err >= 0 && fd >= 0);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    int rc = ddpm_run(o, cb, s);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    *terminal_bytes = file_size(path);
    return rc;
}

static void test_run_reports_through_callbacks_and_writes_nothing_to_the_terminal(void **state)
{
    (void)state;
    char data[300], out[300], path[600];
    snprintf(data, sizeof data, "%s/data_notes", tmpdir);
    snprintf(out, sizeof out, "%s/run_cb", tmpdir);
    make_data_folder(data);
    snprintf(path, sizeof path, "%s/notes.txt", data);
    FILE *f = fopen(path, "w");
    fputs("not an image\n", f);
    fclose(f);
    ddpm_run_options o;
    run_options(&o, data, out, 5);
    o.log_every = 2;
    record r = {0};
    ddpm_run_callbacks cb = {&r, on_started, on_progress, on_warning, NULL};
    ddpm_run_summary s;
    long terminal_bytes = -1;
    assert_int_equal(run_capturing_terminal(&o, &cb, &s, &terminal_bytes), 0);
    assert_int_equal(terminal_bytes, 0);
    /* started once, with the data's numbers */
    assert_int_equal(r.n_started, 1);
    assert_int_equal(r.start.n_images, 10);
    assert_int_equal(r.start.image_size, 8);
    assert_int_equal(r.start.channels, 1);
    assert_int_equal(r.start.batch, 4);
    assert_int_equal(r.start.stop_step, 5);
    assert_false(r.start.resumed);
    /* progress every log_every steps and at the last one */
    assert_int_equal(r.n_progress, 3);
    assert_int_equal(r.steps[0], 2);
    assert_int_equal(r.steps[1], 4);
    assert_int_equal(r.steps[2], 5);
    for (int i = 0; i < 3; i++)
        assert_true(r.losses[i] > 0 && r.losses[i] < 10);
    /* the skipped file and the count, as lines */
    assert_int_equal(r.n_warnings, 2);
    assert_non_null(strstr(r.warnings[0], "notes.txt"));
    assert_non_null(strstr(r.warnings[1], "skipped 1 of 11"));
    /* the summary names what was written */
    assert_int_equal(s.step, 5);
    assert_false(s.interrupted);
    assert_true(s.loss > 0);
    assert_true(file_size(s.checkpoint) > 0);
    assert_non_null(strstr(s.checkpoint, out));
    assert_true(file_size(s.preview) > 0);
    assert_non_null(strstr(s.preview, "step_0000005.png"));
}

static void test_stop_flag_saves_a_checkpoint_and_says_interrupted(void **state)
{
    (void)state;
    char data[300], out[300];
    snprintf(data, sizeof data, "%s/data_stop", tmpdir);
    snprintf(out, sizeof out, "%s/run_stop", tmpdir);
    make_data_folder(data);
    static volatile sig_atomic_t stop;
    stop = 0;
    ddpm_run_options o;
    run_options(&o, data, out, 1000000);
    o.preview_n = 0;
    o.stop = &stop;
    record r = {.stop = &stop, .stop_at = 3};
    ddpm_run_callbacks cb = {&r, NULL, on_progress, NULL, NULL};
    ddpm_run_summary s;
    assert_int_equal(ddpm_run(&o, &cb, &s), 0);
    assert_true(s.interrupted);
    assert_int_equal(s.step, 3);
    assert_string_equal(s.preview, "");
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, s.checkpoint), 0);
    assert_int_equal(ddpm_checkpoint_state(ck)->step, 3);
    /* the data position in the checkpoint is the dataset's after 3 batches of 4 of 10 */
    assert_int_equal(ddpm_checkpoint_state(ck)->data_epoch, 1);
    assert_int_equal(ddpm_checkpoint_state(ck)->data_position, 2);
    ddpm_checkpoint_close(ck);
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
    ddpm_run_options o;
    run_options(&o, data, out, 6);
    o.cfg.optim.warmup = 2;
    o.cfg.optim.lr_schedule = DDPM_LR_COSINE;
    o.cfg.optim.lr_min = 1e-4f;
    o.preview_n = 0;
    assert_int_equal(ddpm_run(&o, NULL, NULL), 0);
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
    assert_true(ddpm_run(&o, NULL, NULL) < 0);
    assert_non_null(strstr(ddpm_last_error(), "--steps or --epochs"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resumed_run_equals_uninterrupted_run),
        cmocka_unit_test(test_empty_data_folder_is_an_error_naming_it),
        cmocka_unit_test(test_bad_options_are_refused_before_any_file_is_made),
        cmocka_unit_test(test_run_reports_through_callbacks_and_writes_nothing_to_the_terminal),
        cmocka_unit_test(test_stop_flag_saves_a_checkpoint_and_says_interrupted),
        cmocka_unit_test(test_cosine_run_ends_at_lr_min_on_its_final_step),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
