/* Tests of the ddpm binary as a careless user drives it: an output named like
 * one of the command's inputs, special files (FIFOs, /dev/zero) where a file is
 * read, --quiet and warnings, file names holding terminal control bytes, and
 * the small messages of issue 26. Each test failed on the code before its fix
 * (a hang ended by the child's alarm shows as exit 142). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddpm/imageio.h"
#include "ddpm/recipe.h"
#include "testutil.h"

static char tmp[256];

/* Runs `ddpm ARGS` in tmp through /bin/sh, stdout and stderr to out.txt and
 * err.txt. The child has 30 s (SIGALRM: exit 142), so a command that hangs on
 * a FIFO or reads /dev/zero forever fails the test instead of stalling it. */
static int ddpm(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int ddpm(const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && exec '%s' %s >out.txt 2>err.txt </dev/null", tmp, DDPM_BINARY, args);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(30);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *in_tmp(const char *name)
{
    static char path[2][512];
    static int slot;
    slot ^= 1;
    snprintf(path[slot], sizeof path[slot], "%s/%s", tmp, name);
    return path[slot];
}

/* The bytes of tmp/NAME, NUL-terminated; *n gets the length (n may be NULL). */
static char *slurp_n(const char *name, size_t *n)
{
    size_t len = 0;
    unsigned char *b = tu_read_file(in_tmp(name), &len);
    assert_non_null(b);
    char *s = realloc(b, len + 1);
    assert_non_null(s);
    s[len] = '\0';
    if (n)
        *n = len;
    return s;
}

static char *slurp(const char *name) { return slurp_n(name, NULL); }

/* stderr is exactly one line "ddpm: ..." holding `part`. */
static void assert_one_error_line(const char *part)
{
    char *err = slurp("err.txt");
    const char *nl = strchr(err, '\n');
    int ok = !strncmp(err, "ddpm: ", 6) && strstr(err, part) && nl && nl[1] == '\0';
    if (!ok)
        fprintf(stderr, "stderr was: %s(wanted one line with '%s')\n", err, part);
    assert_true(ok);
    free(err);
}

static int stderr_has(const char *part)
{
    char *err = slurp("err.txt");
    int has = strstr(err, part) != NULL;
    free(err);
    return has;
}

/* tmp/A and tmp/B hold the same bytes. */
static void assert_same_bytes(const char *a, const char *b)
{
    size_t na, nb;
    char *x = slurp_n(a, &na), *y = slurp_n(b, &nb);
    if (na != nb || memcmp(x, y, na))
        fail_msg("%s (%zu bytes) is not the copy %s (%zu bytes): a command overwrote it", a, na, b, nb);
    free(x);
    free(y);
}

static void copy_file(const char *from, const char *to)
{
    size_t n;
    char *b = slurp_n(from, &n);
    FILE *f = fopen(in_tmp(to), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    free(b);
}

static void write_text(const char *name, const char *text)
{
    FILE *f = fopen(in_tmp(name), "wb");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void write_gray_png(const char *dir, int k)
{
    uint8_t px[64];
    for (int i = 0; i < 64; i++)
        px[i] = (uint8_t)((i * (k + 3) * 7) & 255);
    char name[64];
    snprintf(name, sizeof name, "%s/%02d.png", dir, k);
    assert_int_equal(ddpm_png_write(in_tmp(name), px, 8, 8, 1), 0);
}

#define TINY                                                                                                 \
    "--size 8 --ch 8 --ch-mult 1,2 --res-blocks 1 --attn '' --groups 4 --timesteps 50 --batch 2 "            \
    "--preview-n 0 --threads 1"

/* Each test gets a fresh folder: data/ (6 gray 8x8 PNGs) and the run folder R
 * of 2 tiny training steps, with copies of its checkpoint and log to compare. */
static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(tmp, sizeof tmp, "cli_reliability") || mkdir(in_tmp("data"), 0777))
        return -1;
    for (int k = 0; k < 6; k++)
        write_gray_png("data", k);
    if (ddpm("train data --out R " TINY " --steps 2 --quiet"))
        return -1;
    copy_file("R/checkpoint.safetensors", "ckpt.copy");
    copy_file("R/log.jsonl", "log.copy");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

/* The run folder's checkpoint and log are what setup made. */
static void assert_run_intact(void)
{
    assert_same_bytes("R/checkpoint.safetensors", "ckpt.copy");
    assert_same_bytes("R/log.jsonl", "log.copy");
}

/* Issue 26, item 1: `sample R/checkpoint.safetensors --out R/checkpoint.safetensors`
 * left a 1 kB PNG where the checkpoint was, `export R R/checkpoint.safetensors`
 * replaced it with weights only, `plot R --out R/log.jsonl` turned the log into
 * a PNG, all with exit 0. Every command now refuses, in one line with exit 2
 * and before any work, an output that is one of its inputs: by name, through a
 * symlink, through `..`, or a file of the run folder it reads. */
static void test_an_output_that_is_an_input_is_refused_with_exit_2_and_nothing_changes(void **state)
{
    (void)state;
    assert_int_equal(symlink("R/checkpoint.safetensors", in_tmp("link.safetensors")), 0);
    copy_file("data/00.png", "a.png");
    copy_file("data/01.png", "b.png");
    write_text("weights.pth", "not really weights");
    copy_file("weights.pth", "weights.copy");
    copy_file("data/02.png", "data02.copy");
    static const struct {
        const char *args, *part;
    } cases[] = {
        {"sample R/checkpoint.safetensors --out R/checkpoint.safetensors --n 1 --steps 1", "--out would overwrite"},
        {"sample R --out R/log.jsonl --n 1 --steps 1", "R/log.jsonl: --out would overwrite a file of the run"},
        {"sample R --out R/../R/./checkpoint.safetensors --n 1 --steps 1", "the checkpoint"},
        {"sample R --out link.safetensors --n 1 --steps 1", "link.safetensors: --out would overwrite"},
        {"sample R --out s.png --trajectory R/log.jsonl --n 1 --steps 1", "--trajectory would overwrite"},
        {"interpolate R --seeds 1,2 --n 2 --steps 1 --out R/checkpoint.safetensors", "--out would overwrite"},
        {"interpolate R --at 5 --images a.png,b.png --n 2 --steps 1 --out a.png", "the file a.png"},
        {"export R R/checkpoint.safetensors", "OUT would overwrite the checkpoint"},
        {"export R/checkpoint.safetensors link.safetensors", "OUT would overwrite the checkpoint"},
        {"plot R --out R/log.jsonl", "--out would overwrite"},
        {"plot R/log.jsonl --out R/checkpoint.safetensors", "--out would overwrite"},
        {"eval R data --n 2 --terms data/02.png", "--terms would overwrite a file in the folder data"},
        {"eval R data --n 2 --terms R/log.jsonl", "--terms would overwrite"},
        {"fid --inception weights.pth --save-stats weights.pth data", "--save-stats would overwrite"},
        {"fid --inception weights.pth --save-stats data/../data/02.png data", "a file in the folder data"},
        {"convert weights.pth weights.pth", "OUT_DIR would overwrite"},
        {"train data --out data/. " TINY " --steps 1", "the run folder is inside the data folder"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int rc = ddpm("%s", cases[k].args);
        if (rc != 2)
            fail_msg("ddpm %s: exit %d, want 2 (%s)", cases[k].args, rc, slurp("err.txt"));
        assert_one_error_line(cases[k].part);
        assert_run_intact();
        assert_same_bytes("a.png", "data/00.png");
        assert_same_bytes("weights.pth", "weights.copy");
        assert_same_bytes("data/02.png", "data02.copy");
    }
    /* an output beside the inputs is fine */
    assert_int_equal(ddpm("sample R --out R/grid.png --n 1 --steps 1 --quiet"), 0);
    assert_int_equal(ddpm("sample R --out R/grid.png --n 1 --steps 1 --quiet"), 0);
    assert_int_equal(ddpm("export R R/model.safetensors --quiet"), 0);
    assert_run_intact();
}

/* Issue 26, item 4: `ddpm plot /dev/zero` read 2.1 GB in 10 s and a FIFO
 * blocked the open forever. Both now give one line and exit 1 at once. */
static void test_plot_of_dev_zero_or_a_fifo_is_one_line_not_a_hang(void **state)
{
    (void)state;
    assert_int_equal(mkfifo(in_tmp("fifo"), 0600), 0);
    assert_int_equal(ddpm("plot /dev/zero --out z.png"), 1);
    assert_one_error_line("/dev/zero: the log is a device, not a regular file");
    assert_int_equal(ddpm("plot fifo --out z.png"), 1);
    assert_one_error_line("fifo: the log is a FIFO");
    assert_int_equal(mkdir(in_tmp("F"), 0777), 0);
    assert_int_equal(symlink("../fifo", in_tmp("F/log.jsonl")), 0);
    assert_int_equal(ddpm("plot F --out z.png"), 1);
    assert_one_error_line("F/log.jsonl: the log is a FIFO");
    assert_true(access(in_tmp("z.png"), F_OK) != 0);
}

/* Issue 26, item 4: a recipe whose checkpoint or source image is a FIFO or
 * /dev/zero, and --from naming a FIFO, hung (the file was hashed or opened
 * before anything checked that it is a regular file). */
static void test_a_recipe_naming_a_fifo_or_dev_zero_is_refused_without_hanging(void **state)
{
    (void)state;
    copy_file("data/00.png", "a.png");
    copy_file("data/01.png", "b.png");
    assert_int_equal(symlink("R/checkpoint.safetensors", in_tmp("ck")), 0);
    assert_int_equal(ddpm("sample ck --out s.png --n 1 --steps 1 --sampler ddim --quiet"), 0);
    assert_int_equal(ddpm("interpolate ck --at 5 --images a.png,b.png --n 2 --steps 1 --out strip.png --quiet"),
                     0);
    assert_int_equal(unlink(in_tmp("ck")), 0);
    assert_int_equal(mkfifo(in_tmp("ck"), 0600), 0);
    assert_int_equal(ddpm("sample --from s.png --out t.png"), 1);
    assert_one_error_line("ck: the checkpoint is a FIFO");
    assert_int_equal(ddpm("sample --from s.png --checkpoint /dev/zero --out t.png"), 1);
    assert_one_error_line("/dev/zero: the checkpoint is a device");
    assert_int_equal(ddpm("interpolate --from strip.png --checkpoint R --images fifo-a.png,b.png --out t.png"), 1);
    assert_true(stderr_has("fifo-a.png")); /* missing: the reader's own message */
    assert_int_equal(unlink(in_tmp("a.png")), 0);
    assert_int_equal(mkfifo(in_tmp("a.png"), 0600), 0);
    assert_int_equal(ddpm("interpolate --from strip.png --checkpoint R --out t.png"), 1);
    assert_one_error_line("a.png: the first source image is a FIFO");
    assert_int_equal(mkfifo(in_tmp("from.png"), 0600), 0);
    assert_int_equal(ddpm("sample --from from.png --out t.png"), 1);
    assert_one_error_line("from.png: --from is a FIFO");
    assert_int_equal(ddpm("interpolate --from from.png --out t.png"), 1);
    assert_one_error_line("from.png: --from is a FIFO");
    assert_int_equal(ddpm("info from.png"), 1);
    assert_one_error_line("from.png: the file is a FIFO");
    assert_true(access(in_tmp("t.png"), F_OK) != 0);
}

/* Issue 26, item 10: --quiet hid every warning (a skipped data file, a
 * malformed log line, a checkpoint without EMA weights). --quiet now silences
 * progress only; --no-warnings, which every command takes, silences them. */
static void test_quiet_keeps_warnings_and_no_warnings_silences_them(void **state)
{
    (void)state;
    write_text("data/zz-broken.png", "not a png");
    assert_int_equal(ddpm("train data --out R5 " TINY " --steps 1 --quiet"), 0);
    assert_true(stderr_has("ddpm: warning: skipped"));
    assert_int_equal(ddpm("train data --out R6 " TINY " --steps 1 --quiet --no-warnings"), 0);
    char *err = slurp("err.txt");
    assert_string_equal(err, "");
    free(err);
    /* plot: a malformed line */
    copy_file("R/log.jsonl", "log.jsonl");
    FILE *f = fopen(in_tmp("log.jsonl"), "ab");
    assert_non_null(f);
    fputs("{\"step\": oops\n", f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(ddpm("plot log.jsonl --out p.png --quiet"), 0);
    assert_one_error_line("warning: log.jsonl: skipped 1 malformed line of");
    assert_int_equal(ddpm("plot log.jsonl --out p.png --quiet --no-warnings"), 0);
    err = slurp("err.txt");
    assert_string_equal(err, "");
    free(err);
    /* sample: weights without EMA (an export of the raw weights) */
    assert_int_equal(ddpm("export R raw.safetensors --raw --quiet"), 0);
    assert_int_equal(ddpm("sample raw.safetensors --out s.png --n 1 --steps 1 --quiet"), 0);
    assert_one_error_line("warning: raw.safetensors has no EMA weights");
    assert_int_equal(ddpm("sample raw.safetensors --out s.png --n 1 --steps 1 --quiet --no-warnings"), 0);
    err = slurp("err.txt");
    assert_string_equal(err, "");
    free(err);
}

/* No byte below 0x20 but the line ends, and no DEL, in the file. */
static void assert_no_control_bytes(const char *name)
{
    size_t n;
    char *s = slurp_n(name, &n);
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] < 0x20 && s[i] != '\n') || (unsigned char)s[i] == 0x7f)
            fail_msg("%s holds the control byte 0x%02x at %zu: %s", name, (unsigned char)s[i], i, s);
    free(s);
}

/* Issue 26, item 11: a data file named with ESC [2J cleared the screen when
 * its warning was printed, and a newline in a path broke the one-line error.
 * Every path and recipe string printed now shows control bytes as \xNN. */
static void test_control_bytes_in_names_are_escaped_in_every_message(void **state)
{
    (void)state;
    write_text("data/bad\033[2J\nname.png", "not a png");
    assert_int_equal(ddpm("train data --out R5 " TINY " --steps 1"), 0);
    assert_no_control_bytes("err.txt");
    assert_true(stderr_has("data/bad\\x1b[2J\\x0aname.png"));
    assert_int_equal(ddpm("sample 'no\033]0;title\007such\n' --out s.png"), 1);
    assert_one_error_line("no\\x1b]0;title\\x07such\\x0a");
    assert_no_control_bytes("err.txt");
    /* a recipe's class-free fields: the checkpoint path is printed by info */
    assert_int_equal(symlink("R/checkpoint.safetensors", in_tmp("c\033[31mk")), 0);
    assert_int_equal(ddpm("sample 'c\033[31mk' --out s.png --n 1 --steps 1"), 0);
    assert_no_control_bytes("err.txt");
    assert_no_control_bytes("out.txt");
    assert_int_equal(ddpm("info s.png"), 0);
    assert_no_control_bytes("out.txt");
    char *out = slurp("out.txt");
    assert_non_null(strstr(out, "checkpoint: c\\x1b[31mk"));
    free(out);
    /* valid UTF-8 is left alone; a stray byte and the C1 control CSI (U+009B,
       which some terminals obey like ESC [) are escaped */
    assert_int_equal(ddpm("plot 'données.jsonl' --out p.png"), 1);
    assert_one_error_line("données.jsonl: cannot open");
    assert_int_equal(ddpm("plot 'a\377b\302\2332J.jsonl' --out p.png"), 1);
    assert_one_error_line("a\\xffb\\xc2\\x9b2J.jsonl: cannot open");
}

/* Issue 26, item 12: the smaller messages. */
static void test_beta_end_below_beta_start_exits_2(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out R2 " TINY " --steps 1 --beta-start 0.01 --beta-end 0.001"), 2);
    assert_one_error_line("--beta-end 0.001 is below --beta-start 0.01");
    assert_true(access(in_tmp("R2"), F_OK) != 0);
}

static void test_export_to_a_folder_is_one_clear_line(void **state)
{
    (void)state;
    assert_int_equal(mkdir(in_tmp("somedir"), 0777), 0);
    assert_int_equal(ddpm("export R somedir"), 1);
    assert_one_error_line("somedir: is a folder; name the file to write (like somedir/model.safetensors)");
}

static void test_a_recipe_with_an_empty_checkpoint_path_says_so(void **state)
{
    (void)state;
    assert_int_equal(ddpm("sample R --out s.png --n 1 --steps 1 --sampler ddim --quiet"), 0);
    ddpm_recipe r;
    assert_int_equal(ddpm_recipe_read_png(&r, in_tmp("s.png")), 1);
    r.checkpoint[0] = '\0';
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage storage;
    int n = ddpm_recipe_to_text(&r, text, &storage, NULL);
    uint8_t px[64] = {0};
    assert_int_equal(ddpm_png_write_text(in_tmp("empty.png"), px, 8, 8, 1, text, n), 0);
    assert_int_equal(ddpm("sample --from empty.png --out t.png"), 1);
    assert_one_error_line("empty.png: its recipe names no checkpoint path; pass the checkpoint with --checkpoint");
    assert_int_equal(ddpm("sample --from empty.png --checkpoint '' --out t.png"), 2);
    assert_one_error_line("--checkpoint: the path is empty");
    assert_int_equal(ddpm("sample '' --out t.png"), 2);
    assert_one_error_line("the checkpoint: the path is empty");
}

/* `--resume --steps 50` on a run at step 120 said only "done at step 120". */
static void test_a_resume_already_past_its_steps_says_why_nothing_was_trained(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out R --resume --steps 1 --quiet"), 0);
    assert_one_error_line("warning: nothing trained: the run was already at step 2, at or past the stop asked for "
                          "(--steps 1)");
    assert_run_intact();
}

/* The samplers heading of `ddpm sample --help` appears once. */
static void test_sample_help_has_one_samplers_heading(void **state)
{
    (void)state;
    assert_int_equal(ddpm("sample --help"), 0);
    char *out = slurp("out.txt");
    const char *first = strstr(out, "\nsamplers");
    assert_non_null(first);
    assert_null(strstr(first + 1, "\nsamplers"));
    assert_non_null(strstr(out, "--no-warnings"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_an_output_that_is_an_input_is_refused_with_exit_2_and_nothing_changes,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_plot_of_dev_zero_or_a_fifo_is_one_line_not_a_hang, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_recipe_naming_a_fifo_or_dev_zero_is_refused_without_hanging, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_quiet_keeps_warnings_and_no_warnings_silences_them, setup, teardown),
        cmocka_unit_test_setup_teardown(test_control_bytes_in_names_are_escaped_in_every_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_beta_end_below_beta_start_exits_2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_to_a_folder_is_one_clear_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_recipe_with_an_empty_checkpoint_path_says_so, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_resume_already_past_its_steps_says_why_nothing_was_trained, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sample_help_has_one_samplers_heading, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
