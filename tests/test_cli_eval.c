/* Tests of `ddpm eval` as a user drives it: the JSON and --terms outputs, results
 * independent of --batch, and one clear line with a non-zero exit for bad input
 * (an empty folder, images of another size or channel count than the model, --n
 * larger than the folder, bad flags). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "ddpm/imageio.h"
#include "testutil.h"

static char tmp[256];

/* stderr is one line "ddpm: ..." containing each needle (a second line may only
 * point to --help). */
static void assert_one_error_line(const char *needle, const char *needle2)
{
    char *err = tu_slurp(tmp, "err.txt", NULL);
    assert_non_null(err);
    int ok = !strncmp(err, "ddpm: ", 6) && strstr(err, needle) && (!needle2 || strstr(err, needle2));
    char *nl = strchr(err, '\n');
    ok = ok && nl && (nl[1] == '\0' || strstr(nl + 1, "--help"));
    if (!ok)
        fprintf(stderr, "stderr was: %s(wanted one line with '%s'%s%s)\n", err, needle,
                needle2 ? " and " : "", needle2 ? needle2 : "");
    assert_true(ok);
    free(err);
}

static int write_images(const char *dir, int n, int size, int channels)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", tmp, dir);
    if (mkdir(path, 0777))
        return -1;
    uint8_t px[16 * 16 * 3];
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < size * size * channels; i++)
            px[i] = (uint8_t)((i * (k + 5) * 11) & 255);
        snprintf(path, sizeof path, "%s/%s/%02d.png", tmp, dir, k);
        if (ddpm_png_write(path, px, size, size, channels))
            return -1;
    }
    return 0;
}

#define TINY "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 20 --batch 4"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(tmp, sizeof tmp, "cli-eval") || write_images("data", 6, 8, 1) ||
        write_images("rgb", 3, 8, 3) || write_images("big", 3, 16, 1) || write_images("empty", 0, 8, 1))
        return -1;
    return tu_ddpm(tmp, "train data --out run " TINY " --steps 2 --preview-n 0 --quiet") == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

static void test_eval_prints_the_bound_as_json_and_writes_terms_by_t(void **state)
{
    (void)state;
    assert_int_equal(tu_ddpm(tmp, "eval run data --n 4 --json --terms terms.csv --quiet --seed 3"), 0);
    char *out = tu_slurp(tmp, "out.txt", NULL);
    const char *keys[] = {"n_images", "bpd_total",   "bpd_stderr", "bpd_prior",
                          "bpd_vb",   "bpd_decoder", "l_simple"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        if (isnan(tu_json_number(out, keys[k])))
            fail_msg("no \"%s\" in %s", keys[k], out);
    assert_true(tu_json_number(out, "n_images") == 4);
    double total = tu_json_number(out, "bpd_total");
    double parts =
        tu_json_number(out, "bpd_prior") + tu_json_number(out, "bpd_vb") + tu_json_number(out, "bpd_decoder");
    assert_close(total, parts, 1e-9 * total);
    assert_non_null(strstr(out, "\"var\":\"beta\""));
    /* --terms: a header and one row per t = 1..T (T = 20) */
    char *csv = tu_slurp(tmp, "terms.csv", NULL);
    assert_non_null(csv);
    int lines = 0;
    for (char *p = csv; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 21);
    assert_non_null(strstr(csv, "\n1,L_0,"));
    assert_non_null(strstr(csv, "\n20,L_19,"));
    /* the same numbers whatever --batch is: the same noise and steps; only the
       network's float rounding may change with the GEMM sizes (measured: 4e-11
       relative between --batch 3 and 64); a different noise or step assignment
       moves the bound of 4 images by percents */
    assert_int_equal(tu_ddpm(tmp, "eval run/checkpoint.safetensors data --n 4 --json --quiet --seed 3 --batch 3"), 0);
    char *out2 = tu_slurp(tmp, "out.txt", NULL);
    assert_close(tu_json_number(out2, "bpd_total"), total, 1e-8 * total);
    assert_close(tu_json_number(out2, "l_simple"), tu_json_number(out, "l_simple"), 1e-8);
    /* the fast estimate and the text report */
    assert_int_equal(tu_ddpm(tmp, "eval run data --mc 3 --var beta-tilde --no-clip --no-ema --quiet"), 0);
    char *text = tu_slurp(tmp, "out.txt", NULL);
    assert_non_null(strstr(text, "total (L)"));
    assert_non_null(strstr(text, "held-out L_simple"));
    free(out);
    free(out2);
    free(csv);
    free(text);
}

static void test_eval_bad_input_gets_one_line_and_a_nonzero_exit(void **state)
{
    (void)state;
    assert_int_equal(tu_ddpm(tmp, "eval run empty"), 1);
    assert_one_error_line("empty", "no files");
    assert_int_equal(tu_ddpm(tmp, "eval run rgb"), 1);
    assert_one_error_line("rgb", "RGB");
    assert_int_equal(tu_ddpm(tmp, "eval run big"), 1);
    assert_one_error_line("big", "16x16");
    assert_int_equal(tu_ddpm(tmp, "eval run data --n 7"), 1);
    assert_one_error_line("data", "--n 7 is more than the 6 images");
    assert_int_equal(tu_ddpm(tmp, "eval run missing_folder"), 1);
    assert_one_error_line("missing_folder", NULL);
    assert_int_equal(tu_ddpm(tmp, "eval no_such_run data"), 1);
    assert_one_error_line("no_such_run", NULL);
    assert_int_equal(tu_ddpm(tmp, "eval run data --terms /nonexistent/dir/t.csv"), 1);
    assert_one_error_line("/nonexistent/dir/t.csv", NULL);
    /* usage errors: exit 2 */
    assert_int_equal(tu_ddpm(tmp, "eval run"), 2);
    assert_one_error_line("DATA_DIR", NULL);
    assert_int_equal(tu_ddpm(tmp, "eval run data --var sigma"), 2);
    assert_one_error_line("--var", NULL);
    assert_int_equal(tu_ddpm(tmp, "eval run data --mc 0"), 2);
    assert_one_error_line("--mc", NULL);
    assert_int_equal(tu_ddpm(tmp, "eval run data --n 0"), 2);
    assert_one_error_line("--n", NULL);
    assert_int_equal(tu_ddpm(tmp, "eval run data --frobnicate"), 2);
    assert_one_error_line("--frobnicate", NULL);
    /* --help documents every flag */
    assert_int_equal(tu_ddpm(tmp, "eval --help"), 0);
    char *out = tu_slurp(tmp, "out.txt", NULL);
    const char *flags[] = {"--n ",     "--mc ",    "--var ",     "--no-clip", "--seed ", "--batch ",
                           "--no-ema", "--terms ", "--threads ", "--json",    "--quiet", "beta~_2"};
    for (size_t k = 0; k < sizeof flags / sizeof *flags; k++)
        if (!strstr(out, flags[k]))
            fail_msg("eval --help does not mention %s", flags[k]);
    free(out);
}

/* The lines of `file` that contain `part`, concatenated (caller frees). */
static char *lines_with(const char *file, const char *part, int *count)
{
    char *text = tu_slurp(tmp, file, NULL), *out = calloc(1, text ? strlen(text) + 1 : 1);
    *count = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n"))
        if (strstr(line, part)) {
            strcat(out, line);
            strcat(out, "\n");
            (*count)++;
        }
    free(text);
    return out;
}

static void test_train_eval_dir_logs_held_out_loss_without_changing_the_training(void **state)
{
    (void)state;
    assert_int_equal(tu_ddpm(tmp, "train data --out run_ev " TINY " --steps 4 --log-every 2 --preview-n 0 --quiet --micro-batch 2 "
                          "--eval-dir data --eval-every 2 --eval-n 3 --eval-mc 2"),
                     0);
    assert_int_equal(
        tu_ddpm(tmp, "train data --out run_plain " TINY " --steps 4 --log-every 2 --preview-n 0 --quiet --micro-batch 2"), 0);
    int n_eval, n_loss_ev, n_loss_plain;
    char *ev = lines_with("run_ev/log.jsonl", "eval_l_simple", &n_eval);
    assert_int_equal(n_eval, 2);
    assert_non_null(strstr(ev, "\"step\":2,\"eval_n\":3,"));
    assert_non_null(strstr(ev, "\"eval_bpd\":"));
    /* the training itself is unchanged: the same losses at steps 2 and 4 */
    char *a = lines_with("run_ev/log.jsonl", "\"loss\"", &n_loss_ev);
    char *b = lines_with("run_plain/log.jsonl", "\"loss\"", &n_loss_plain);
    assert_int_equal(n_loss_ev, 2);
    assert_int_equal(n_loss_plain, 2);
    for (char *p = strstr(a, "\"loss\":"), *q = strstr(b, "\"loss\":"); p && q;
         p = strstr(p + 1, "\"loss\":"), q = strstr(q + 1, "\"loss\":"))
        assert_true(strtod(p + 7, NULL) == strtod(q + 7, NULL));
    free(ev);
    free(a);
    free(b);
    /* held-out images the model cannot take: refused before training */
    assert_int_equal(tu_ddpm(tmp, "train data --out run_bad " TINY " --steps 2 --preview-n 0 --quiet --eval-dir rgb"),
                     1);
    assert_one_error_line("rgb", "RGB");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_prints_the_bound_as_json_and_writes_terms_by_t),
        cmocka_unit_test(test_eval_bad_input_gets_one_line_and_a_nonzero_exit),
        cmocka_unit_test(test_train_eval_dir_logs_held_out_loss_without_changing_the_training),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
