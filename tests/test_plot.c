/* Tests of the plot module: ticks, the canvas, reading log.jsonl (malformed lines,
 * unknown fields, repeated steps), the chart's series and sizes, and the errors of
 * `ddpm plot` on missing, empty and garbage logs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <stb_image.h>

#include "ddpm/error.h"
#include "ddpm/plot.h"
#include "testutil.h"

static char tmp[256];

/* "tmp/name" in one of four static buffers: two may be passed to one call */
static const char *in_tmp(const char *name)
{
    static char path[4][600];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", tmp, name);
    return p;
}

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(in_tmp(name), "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(tmp, sizeof tmp, "plot");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

static void assert_ticks(const double *want, int n_want, double lo, double hi, int log10_scale)
{
    double t[64];
    int n = ddpm_plot_ticks(t, 64, lo, hi, log10_scale);
    if (n != n_want)
        fprintf(stderr, "ticks of [%g, %g]%s: got %d, want %d\n", lo, hi, log10_scale ? " log" : "", n,
                n_want);
    assert_int_equal(n, n_want);
    for (int k = 0; k < n; k++)
        assert_close(t[k], want[k], 1e-12 * fabs(want[k]));
}

static void test_ticks_are_nice_numbers_inside_the_range(void **state)
{
    (void)state;
    assert_ticks((double[]){0, 1000, 2000, 3000}, 4, 0, 3060, 0);
    assert_ticks((double[]){0, 500, 1000, 1500, 2000, 2500}, 6, 0, 2700, 0);
    assert_ticks((double[]){0, 20, 40, 60, 80}, 5, 0, 82, 0);
    assert_ticks((double[]){-0.2, 0, 0.2, 0.4}, 4, -0.25, 0.5, 0);
    /* log: powers of ten when two or more fall inside, else 1-2-5 */
    assert_ticks((double[]){1e-3, 1e-2, 1e-1, 1, 10}, 5, 9e-4, 11, 1);
    assert_ticks((double[]){0.05, 0.1, 0.2, 0.5}, 4, 0.03, 0.55, 1);
    double t[8];
    assert_int_equal(ddpm_plot_ticks(t, 8, 1, 1, 0), 0);    /* empty range */
    assert_int_equal(ddpm_plot_ticks(t, 8, -1, 1, 1), 0);   /* log of a negative */
    assert_int_equal(ddpm_plot_ticks(t, 2, 0, 3060, 0), 2); /* at most max */
}

static int is_color(const uint8_t *p, const uint8_t rgb[3])
{
    return p[0] == rgb[0] && p[1] == rgb[1] && p[2] == rgb[2];
}

static void test_canvas_draws_lines_rects_and_text_where_asked(void **state)
{
    (void)state;
    const uint8_t white[3] = {255, 255, 255}, red[3] = {200, 0, 0}, blue[3] = {0, 0, 200};
    ddpm_canvas c;
    assert_int_equal(ddpm_canvas_create(&c, 64, 40, white), 0);
    ddpm_canvas_line(&c, 4, 10.5, 60, 10.5, 1.6, red);
    assert_true(is_color(c.rgb + 3 * (10 * 64 + 30), red));   /* on the line: full colour */
    assert_true(is_color(c.rgb + 3 * (20 * 64 + 30), white)); /* far from it: untouched */
    assert_true(is_color(c.rgb + 3 * (10 * 64 + 1), white));  /* past its end */
    /* clipping */
    c.clip_x0 = 0, c.clip_x1 = 32;
    ddpm_canvas_line(&c, 4, 30.5, 60, 30.5, 1.6, blue);
    assert_true(is_color(c.rgb + 3 * (30 * 64 + 20), blue));
    assert_true(is_color(c.rgb + 3 * (30 * 64 + 40), white));
    c.clip_x1 = 64;
    ddpm_canvas_fill_rect(&c, 2, 2, 4, 3, blue);
    assert_true(is_color(c.rgb + 3 * (2 * 64 + 2), blue));
    assert_true(is_color(c.rgb + 3 * (2 * 64 + 3), blue));
    assert_true(is_color(c.rgb + 3 * (2 * 64 + 4), white));
    /* text: some ink inside its box, none right of its width */
    uint8_t *before = malloc((size_t)64 * 40 * 3);
    memcpy(before, c.rgb, (size_t)64 * 40 * 3);
    double w = ddpm_canvas_text(&c, 2, 14, "0.5", 1, red);
    assert_true(w > 8 && w < 20);
    int ink = 0, outside = 0;
    for (int y = 0; y < 40; y++)
        for (int x = 0; x < 64; x++)
            if (memcmp(before + 3 * (y * 64 + x), c.rgb + 3 * (y * 64 + x), 3)) {
                ink++;
                outside += x >= 2 + w || y < 14 || y > 14 + 12;
            }
    assert_true(ink > 10);
    assert_int_equal(outside, 0);
    free(before);
    ddpm_canvas_free(&c);
}

static const char *LOG =
    "{\"step\":50,\"loss\":0.5,\"lr\":1e-3,\"images_per_sec\":70.5,\"note\":\"text\",\"nested\":{\"a\":1}}\n"
    "\n"
    "{\"step\":100,\"loss\":0.25,\"images_per_sec\":71,\"heldout_loss\":0.3}\n"
    "not json at all\n"
    "{\"step\":150,\"loss\":0.2,\"images_per_sec\":72}\n"
    "{\"loss\":0.1}\n"
    "{\"step\":200,\"loss\":0.1,\"images_per_sec\":73,\"heldout_loss\":0.12,\"eval_bpd\":4.5}\n"
    /* a run resumed from the checkpoint of step 100 logs 150 and 200 again */
    "{\"step\":150,\"loss\":0.18,\"images_per_sec\":60}\n"
    "{\"step\":200,\"loss\":0.09,\"images_per_sec\":61}\n"
    "{\"step\":250,\"loss\":0.08,\"images_per_sec\":62,\"future_field\":[1,2]}\n"
    "{\"step\":250,\"heldout_loss\":0.085}\n" /* an evaluation line of its own */
    "{\"step\":300,\"loss\":0.07,\"ima";      /* cut short by a crash */

static void test_log_reader_skips_malformed_lines_and_replays_resumed_steps(void **state)
{
    (void)state;
    write_file("log.jsonl", LOG);
    ddpm_train_log log;
    assert_int_equal(ddpm_train_log_read(&log, in_tmp("log.jsonl")), 0);
    assert_int_equal(log.n_lines, 11);  /* the blank line is not counted */
    assert_int_equal(log.n_skipped, 3); /* garbage, no step, cut short */
    assert_int_equal(log.first_skipped, 4);
    const ddpm_log_series *loss = ddpm_train_log_find(&log, "loss");
    assert_non_null(loss);
    /* 50 100 150 200 250: the second session's 150 and 200 replace the first's */
    assert_int_equal(loss->n, 5);
    const double steps[5] = {50, 100, 150, 200, 250}, values[5] = {0.5, 0.25, 0.18, 0.09, 0.08};
    for (int k = 0; k < 5; k++) {
        assert_true(loss->x[k] == steps[k]);
        assert_true(loss->y[k] == values[k]);
    }
    const ddpm_log_series *held = ddpm_train_log_find(&log, "heldout_loss");
    assert_non_null(held);
    assert_int_equal(held->n, 3);
    assert_true(held->x[2] == 250 && held->y[2] == 0.085);
    assert_non_null(ddpm_train_log_find(&log, "eval_bpd"));
    assert_null(ddpm_train_log_find(&log, "note"));   /* a string */
    assert_null(ddpm_train_log_find(&log, "nested")); /* an object */
    assert_null(ddpm_train_log_find(&log, "step"));
    ddpm_train_log_free(&log);
}

/* Pixels of colour rgb in rows [y0, y1) of a decoded RGB PNG. */
static int count_color(const unsigned char *px, int w, int y0, int y1, const uint8_t rgb[3])
{
    int n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = 0; x < w; x++)
            n += is_color(px + 3 * ((size_t)y * w + x), rgb);
    return n;
}

static void test_chart_draws_heldout_loss_only_when_the_log_has_it(void **state)
{
    (void)state;
    const uint8_t loss_blue[3] = {31, 119, 180}, heldout_orange[3] = {255, 127, 14},
                  rate_green[3] = {44, 160, 44};
    write_file("with.jsonl", LOG);
    write_file("without.jsonl", "{\"step\":1,\"loss\":1.0,\"images_per_sec\":5}\n"
                                "{\"step\":2,\"loss\":0.5,\"images_per_sec\":6}\n"
                                "{\"step\":3,\"loss\":0.4,\"images_per_sec\":6}\n");
    ddpm_plot_options o;
    ddpm_plot_options_default(&o);
    o.width = 500;
    o.height = 400;
    ddpm_plot_summary sum;
    assert_int_equal(ddpm_plot_training_log(in_tmp("with.jsonl"), in_tmp("with.png"), &o, &sum), 0);
    assert_int_equal(sum.n_skipped, 3);
    assert_int_equal(sum.n_series, 4); /* loss, heldout_loss | eval_bpd | images/s */
    assert_string_equal(sum.names[0], "loss");
    assert_string_equal(sum.names[1], "heldout_loss");
    int w, h, ch;
    unsigned char *px = stbi_load(in_tmp("with.png"), &w, &h, &ch, 3);
    assert_non_null(px);
    assert_int_equal(w, 500);
    assert_int_equal(h, 400);
    assert_true(count_color(px, w, 0, h / 2, loss_blue) > 20);
    assert_true(count_color(px, w, 0, h / 2, heldout_orange) > 20);
    assert_true(count_color(px, w, h / 2, h, rate_green) > 20);
    stbi_image_free(px);
    assert_int_equal(ddpm_plot_training_log(in_tmp("without.jsonl"), in_tmp("without.png"), &o, &sum), 0);
    assert_int_equal(sum.n_series, 2);
    px = stbi_load(in_tmp("without.png"), &w, &h, &ch, 3);
    assert_non_null(px);
    assert_true(count_color(px, w, 0, h, loss_blue) > 20);
    assert_int_equal(count_color(px, w, 0, h, heldout_orange), 0);
    stbi_image_free(px);
}

/* The fields `ddpm train --eval-dir DIR --eval-mc K` writes: the held-out
 * L_simple joins the training loss in the loss panel, the bound gets a panel of
 * its own, and neither the standard errors nor the settings (eval_n, eval_mc)
 * are drawn. The first version matched held-out losses by "loss" in the name,
 * so eval_l_simple went into a panel with eval_n = 256 and was flat at 0. */
static void test_chart_draws_the_fields_that_train_eval_dir_writes(void **state)
{
    (void)state;
    const uint8_t loss_blue[3] = {31, 119, 180}, heldout_orange[3] = {255, 127, 14};
    char log[2048] = "", line[256];
    for (int step = 50; step <= 600; step += 50) {
        snprintf(line, sizeof line, "{\"step\":%d,\"loss\":%g,\"lr\":0.001,\"images_per_sec\":60}\n", step,
                 0.5 / step + 0.04);
        strcat(log, line);
        if (step % 200 == 0) {
            snprintf(line, sizeof line,
                     "{\"step\":%d,\"eval_n\":256,\"eval_l_simple\":%g,\"eval_l_simple_stderr\":0.005,"
                     "\"eval_mc\":4,\"eval_bpd\":%g,\"eval_bpd_stderr\":0.4}\n",
                     step, 0.6 / step + 0.035, 4.0 - step / 1000.0);
            strcat(log, line);
        }
    }
    write_file("eval.jsonl", log);
    ddpm_plot_options o;
    ddpm_plot_options_default(&o);
    o.width = 500;
    o.height = 400;
    ddpm_plot_summary sum;
    assert_int_equal(ddpm_plot_training_log(in_tmp("eval.jsonl"), in_tmp("eval.png"), &o, &sum), 0);
    assert_int_equal(sum.n_series, 4); /* loss, eval_l_simple | eval_bpd | images/s */
    assert_string_equal(sum.names[0], "loss");
    assert_string_equal(sum.names[1], "eval_l_simple");
    assert_string_equal(sum.names[2], "eval_bpd");
    assert_string_equal(sum.names[3], "images_per_sec");
    int w, h, ch;
    unsigned char *px = stbi_load(in_tmp("eval.png"), &w, &h, &ch, 3);
    assert_non_null(px);
    /* both losses in the top panel (half the height) */
    assert_true(count_color(px, w, 0, h / 2, loss_blue) > 20);
    assert_true(count_color(px, w, 0, h / 2, heldout_orange) > 20);
    stbi_image_free(px);
}

/* The fields `ddpm train --eval-fid STATS --eval-fid-n N` writes: the FID in a
 * panel of its own in its colour (with the bound present, between the bound's
 * panel and images/s: merged into the bound's panel it would take the bound
 * panel's palette colour, and its scale), eval_fid_n not drawn. */
static void test_chart_draws_eval_fid_in_a_panel_of_its_own(void **state)
{
    (void)state;
    const uint8_t fid_olive[3] = {188, 189, 34};
    char log[4096] = "", line[256];
    for (int step = 50; step <= 600; step += 50) {
        snprintf(line, sizeof line, "{\"step\":%d,\"loss\":%g,\"lr\":0.001,\"images_per_sec\":60}\n", step,
                 0.5 / step + 0.04);
        strcat(log, line);
        if (step % 200 == 0) {
            snprintf(line, sizeof line,
                     "{\"step\":%d,\"eval_n\":256,\"eval_l_simple\":%g,\"eval_mc\":4,\"eval_bpd\":%g}\n"
                     "{\"step\":%d,\"eval_fid_n\":1000,\"eval_fid\":%g}\n",
                     step, 0.6 / step + 0.035, 4.0 - step / 1000.0, step, 200.0 - step / 5.0);
            strcat(log, line);
        }
    }
    write_file("fid.jsonl", log);
    ddpm_plot_options o;
    ddpm_plot_options_default(&o);
    o.width = 500;
    o.height = 400;
    ddpm_plot_summary sum;
    assert_int_equal(ddpm_plot_training_log(in_tmp("fid.jsonl"), in_tmp("fid.png"), &o, &sum), 0);
    assert_int_equal(sum.n_series, 5); /* loss, eval_l_simple | eval_bpd | eval_fid | images/s */
    assert_string_equal(sum.names[2], "eval_bpd");
    assert_string_equal(sum.names[3], "eval_fid");
    assert_string_equal(sum.names[4], "images_per_sec");
    int w, h, ch;
    unsigned char *px = stbi_load(in_tmp("fid.png"), &w, &h, &ch, 3);
    assert_non_null(px);
    /* 400 px, 4 panels: loss 36..100, bound 148..180, FID 228..260, speed 308..340 */
    assert_true(count_color(px, w, 200, 280, fid_olive) > 20);
    assert_int_equal(count_color(px, w, 0, 200, fid_olive), 0);
    assert_int_equal(count_color(px, w, 280, h, fid_olive), 0);
    stbi_image_free(px);
}

static void test_missing_empty_and_garbage_logs_are_errors_naming_the_file(void **state)
{
    (void)state;
    ddpm_plot_options o;
    ddpm_plot_options_default(&o);
    char out[600];
    snprintf(out, sizeof out, "%s", in_tmp("never.png"));
    char path[600];
    snprintf(path, sizeof path, "%s", in_tmp("missing.jsonl"));
    assert_int_equal(ddpm_plot_training_log(path, out, &o, NULL), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), path));
    write_file("empty.jsonl", "\n\n");
    snprintf(path, sizeof path, "%s", in_tmp("empty.jsonl"));
    assert_int_equal(ddpm_plot_training_log(path, out, &o, NULL), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "empty"));
    write_file("garbage.jsonl", "hello\n{\"loss\":1}\n[1,2]\n");
    snprintf(path, sizeof path, "%s", in_tmp("garbage.jsonl"));
    assert_int_equal(ddpm_plot_training_log(path, out, &o, NULL), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "no valid log line"));
    write_file("noloss.jsonl", "{\"step\":1,\"images_per_sec\":3}\n");
    snprintf(path, sizeof path, "%s", in_tmp("noloss.jsonl"));
    assert_int_equal(ddpm_plot_training_log(path, out, &o, NULL), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "\"loss\""));
    struct stat st;
    assert_int_equal(stat(out, &st), -1); /* no picture from a bad log */
}

#define ddpm(...) tu_ddpm(tmp, __VA_ARGS__)

static char *slurp(const char *name)
{
    FILE *f = fopen(in_tmp(name), "rb");
    assert_non_null(f);
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_binary_plots_a_run_dir_and_reports_bad_logs_in_one_line(void **state)
{
    (void)state;
    assert_int_equal(mkdir(in_tmp("run"), 0777), 0);
    write_file("run/log.jsonl", LOG);
    assert_int_equal(ddpm("plot run --out curves.png --width 600 --height 400"), 0);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "ddpm: warning: run/log.jsonl: skipped 3 malformed lines"));
    int w, h, ch;
    unsigned char *px = stbi_load(in_tmp("curves.png"), &w, &h, &ch, 3);
    assert_non_null(px);
    assert_int_equal(w, 600);
    stbi_image_free(px);
    /* a run folder without a log: one line naming the file, exit 1 */
    assert_int_equal(mkdir(in_tmp("nolog"), 0777), 0);
    assert_int_equal(ddpm("plot nolog --out x.png"), 1);
    err = slurp("err.txt");
    assert_int_equal(strncmp(err, "ddpm: nolog/log.jsonl: ", 23), 0);
    assert_non_null(strchr(err, '\n'));
    assert_int_equal(strchr(err, '\n')[1], '\0');
    write_file("empty.jsonl", "");
    assert_int_equal(ddpm("plot empty.jsonl --out x.png"), 1);
    assert_int_equal(strncmp(slurp("err.txt"), "ddpm: empty.jsonl: empty", 24), 0);
    assert_int_equal(ddpm("plot"), 2);
    assert_int_equal(ddpm("plot run --width 5"), 2);
    assert_int_equal(ddpm("plot --help"), 0);
    assert_non_null(strstr(slurp("out.txt"), "usage: ddpm plot"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ticks_are_nice_numbers_inside_the_range),
        cmocka_unit_test(test_canvas_draws_lines_rects_and_text_where_asked),
        cmocka_unit_test(test_log_reader_skips_malformed_lines_and_replays_resumed_steps),
        cmocka_unit_test(test_chart_draws_heldout_loss_only_when_the_log_has_it),
        cmocka_unit_test(test_missing_empty_and_garbage_logs_are_errors_naming_the_file),
        cmocka_unit_test(test_chart_draws_the_fields_that_train_eval_dir_writes),
        cmocka_unit_test(test_chart_draws_eval_fid_in_a_panel_of_its_own),
        cmocka_unit_test(test_binary_plots_a_run_dir_and_reports_bad_logs_in_one_line),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
