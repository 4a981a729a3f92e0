/* Tests of the ddpm binary as a user drives it: exit codes, one-line errors,
 * Ctrl-C saving a checkpoint, resume, byte-identical samples, bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ddpm/imageio.h"
#include "testutil.h"

static char tmp[256];

/* stderr is exactly one line starting "ddpm: " that contains `needle` */
static void assert_one_error_line(const char *needle)
{
    char *err = tu_slurp(tmp, "err.txt", NULL);
    assert_non_null(err);
    if (strncmp(err, "ddpm: ", 6) || !strstr(err, needle))
        fprintf(stderr, "stderr was: %s\n", err);
    assert_int_equal(strncmp(err, "ddpm: ", 6), 0);
    assert_non_null(strstr(err, needle));
    char *nl = strchr(err, '\n');
    assert_non_null(nl);
    /* a second line may only be the pointer to --help */
    assert_true(nl[1] == '\0' || strstr(nl + 1, "--help"));
    free(err);
}

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(tmp, sizeof tmp, "cli"))
        return -1;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data", tmp);
    mkdir(dir, 0777);
    uint8_t px[64];
    for (int k = 0; k < 12; k++) {
        for (int i = 0; i < 64; i++)
            px[i] = (uint8_t)((i * (k + 3) * 7) & 255);
        char path[600];
        snprintf(path, sizeof path, "%s/%02d.png", dir, k);
        if (ddpm_png_write(path, px, 8, 8, 1))
            return -1;
    }
    snprintf(dir, sizeof dir, "%s/data/notes.txt", tmp);
    FILE *f = fopen(dir, "w");
    fputs("not an image\n", f);
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

#define TINY "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 4"

/* A finished 4-step run in tmp/NAME, for the tests that need a checkpoint. */
static void make_run(const char *name)
{
    assert_int_equal(tu_ddpm(tmp, "train data --out %s " TINY " --steps 4 --preview-n 0 --quiet", name), 0);
}

/* Lines in tmp/NAME (0 if it does not exist). */
static int count_lines(const char *name)
{
    long size;
    char *text = tu_slurp(tmp, name, &size);
    int n = 0;
    for (long i = 0; text && i < size; i++)
        n += text[i] == '\n';
    free(text);
    return n;
}

static void test_help_version_and_usage_errors(void **state)
{
    (void)state;
    assert_int_equal(tu_ddpm(tmp, "--help"), 0);
    char *out = tu_slurp(tmp, "out.txt", NULL);
    assert_non_null(strstr(out, "train"));
    assert_non_null(strstr(out, "sample"));
    free(out);
    assert_int_equal(tu_ddpm(tmp, "--version"), 0);
    assert_int_equal(tu_ddpm(tmp, "frobnicate"), 2);
    assert_one_error_line("unknown command");
    assert_int_equal(tu_ddpm(tmp, "train data --no-such-flag"), 2);
    assert_one_error_line("--no-such-flag");
    assert_int_equal(tu_ddpm(tmp, "train data --lr banana"), 2);
    assert_one_error_line("--lr");
    assert_int_equal(tu_ddpm_args(tmp, ""), 2);
    const char *cmds[] = {"train", "sample", "info"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tu_ddpm(tmp, "%s --help", cmds[i]), 0);
        out = tu_slurp(tmp, "out.txt", NULL);
        assert_non_null(strstr(out, "usage: ddpm"));
        free(out);
    }
}

static void test_train_skips_non_images_then_sample_is_byte_identical(void **state)
{
    (void)state;
    assert_int_equal(tu_ddpm(tmp, "train data --out run " TINY " --steps 4 --preview-n 4 --preview-steps 2 --json"), 0);
    char *out = tu_slurp(tmp, "out.txt", NULL), *err = tu_slurp(tmp, "err.txt", NULL);
    assert_non_null(strstr(out, "\"step\":4"));
    assert_non_null(strstr(err, "notes.txt")); /* the skipped file is named */
    free(out);
    free(err);
    /* --strict refuses the text file */
    assert_int_equal(tu_ddpm(tmp, "train data --out run_strict " TINY " --steps 2 --strict"), 1);
    assert_one_error_line("notes.txt");
    /* same seed: byte-identical PNGs; another seed: different ones */
    assert_int_equal(tu_ddpm(tmp, "sample run --n 5 --steps 3 --seed 9 --out a.png --quiet"), 0);
    assert_int_equal(tu_ddpm(tmp, "sample run --n 5 --steps 3 --seed 9 --out b.png --quiet --batch 2"), 0);
    assert_int_equal(tu_ddpm(tmp, "sample run --n 5 --steps 3 --seed 10 --out c.png --quiet"), 0);
    long na = -1, nb = -2, nc = -3;
    char *a = tu_slurp(tmp, "a.png", &na), *b = tu_slurp(tmp, "b.png", &nb), *c = tu_slurp(tmp, "c.png", &nc);
    assert_true(na > 0 && na == nb);
    assert_memory_equal(a, b, (size_t)na);
    assert_true(na != nc || memcmp(a, c, (size_t)na) != 0);
    free(a);
    free(b);
    free(c);
    /* the ancestral sampler and per-image output */
    assert_int_equal(tu_ddpm(tmp, "sample run/checkpoint.safetensors --sampler ddpm --n 3 --out-dir each --no-grid --quiet"), 0);
    struct stat st;
    char path[600];
    snprintf(path, sizeof path, "%s/each/00002.png", tmp);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(tu_ddpm(tmp, "info run --json --tensors"), 0);
    out = tu_slurp(tmp, "out.txt", NULL);
    assert_non_null(strstr(out, "\"parameters\""));
    assert_non_null(strstr(out, "ema.conv_out.weight"));
    free(out);
}

static void test_sample_bad_input_exits_nonzero_with_one_line(void **state)
{
    (void)state;
    make_run("run_b");
    assert_int_equal(tu_ddpm(tmp, "sample missing_run --out x.png"), 1);
    assert_one_error_line("missing_run");
    assert_int_equal(tu_ddpm(tmp, "sample data/00.png --out x.png"), 1); /* not a checkpoint */
    assert_one_error_line("00.png");
    assert_int_equal(tu_ddpm(tmp, "sample run_b --n 0"), 2);
    assert_one_error_line("--n");
    assert_int_equal(tu_ddpm(tmp, "sample run_b --steps 51 --quiet"), 2); /* T is 50 */
    assert_one_error_line("50 timesteps");
    assert_int_equal(tu_ddpm(tmp, "sample run_b --out /nonexistent/dir/x.png"), 1);
    assert_one_error_line("/nonexistent/dir/x.png");
    assert_int_equal(tu_ddpm(tmp, "train data --out run_b --steps 8 " TINY), 1); /* would overwrite */
    assert_one_error_line("--resume");
    assert_int_equal(tu_ddpm(tmp, "train data --out run_b --resume --lr 0.1"), 2); /* run flags are fixed */
    assert_one_error_line("--lr");
    assert_int_equal(tu_ddpm(tmp, "train empty_or_missing --out r2 --steps 1"), 1);
    assert_one_error_line("empty_or_missing");
}

static void test_sigint_saves_a_checkpoint_and_resume_continues(void **state)
{
    (void)state;
    /* SIGINT once a run that would take hours has logged a step: exit 0, a
       checkpoint, a hint. The wait is on the log, not on a clock, so a loaded
       machine (ctest -j) only makes it slower. */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "exec '%s' train data --out run_int " TINY " --steps 100000000 --preview-n 0 --log-every 1",
             DDPM_BINARY);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* the shell execs ddpm, so pid is ddpm's */
        if (chdir(tmp) || !freopen("out.txt", "w", stdout) || !freopen("err.txt", "w", stderr))
            _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    const struct timespec poll = {0, 20 * 1000 * 1000};
    int waited_ms = 0;
    while (count_lines("run_int/log.jsonl") < 1 && waited_ms < 240000 && waitpid(pid, NULL, WNOHANG) == 0) {
        nanosleep(&poll, NULL);
        waited_ms += 20;
    }
    int logged = count_lines("run_int/log.jsonl") >= 1;
    kill(pid, logged ? SIGINT : SIGKILL);
    /* it must stop by itself after the signal (a generous bound, then SIGKILL) */
    int st = 0;
    pid_t done = 0;
    for (waited_ms = 0; (done = waitpid(pid, &st, WNOHANG)) == 0 && waited_ms < 120000; waited_ms += 20)
        nanosleep(&poll, NULL);
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    assert_true(logged);
    assert_int_equal(done, pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    char *err = tu_slurp(tmp, "err.txt", NULL);
    assert_non_null(strstr(err, "--resume"));
    free(err);
    assert_int_equal(tu_ddpm(tmp, "info run_int --json"), 0);
    char *out = tu_slurp(tmp, "out.txt", NULL);
    char *p = strstr(out, "\"step\":");
    assert_non_null(p);
    long step = strtol(p + 7, NULL, 10);
    free(out);
    assert_true(step > 0);
    assert_int_equal(tu_ddpm(tmp, "train data --out run_int --resume --steps %ld --preview-n 0 --json", step + 2), 0);
    out = tu_slurp(tmp, "out.txt", NULL);
    char want[64];
    snprintf(want, sizeof want, "\"step\":%ld", step + 2);
    assert_non_null(strstr(out, want));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_version_and_usage_errors),
        cmocka_unit_test(test_train_skips_non_images_then_sample_is_byte_identical),
        cmocka_unit_test(test_sample_bad_input_exits_nonzero_with_one_line),
        cmocka_unit_test(test_sigint_saves_a_checkpoint_and_resume_continues),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
