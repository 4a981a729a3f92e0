/* Tests of the ddpm binary against the failures of a long unattended run: bad
 * data folders (symlink loops, image bombs), corrupt or poisoned checkpoints,
 * and a file-size limit. Each test is a defect that was seen: it failed before
 * its fix (see the comment of each). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddpm/checkpoint.h"
#include "ddpm/imageio.h"
#include "ddpm/train.h"
#include "testutil.h"

static char tmp[256];

/* Runs `ddpm ARGS` in tmp through /bin/sh, stdout and stderr to out.txt and
 * err.txt, with RLIMIT_FSIZE = fsize bytes when fsize > 0. Returns the exit
 * code, or 128 + the signal that killed it (SIGALRM after 120 s: 142). */
static int run_limited(long fsize, const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && exec '%s' %s >out.txt 2>err.txt", tmp, DDPM_BINARY, args);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(120); /* a hang (the symlink loop before its fix) ends as exit 142 */
        if (fsize > 0) {
            struct rlimit rl = {(rlim_t)fsize, (rlim_t)fsize};
            setrlimit(RLIMIT_FSIZE, &rl);
        }
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#define ddpm(...) run_limited(0, __VA_ARGS__)

static char *in_tmp(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    return path;
}

static char *slurp(const char *name)
{
    size_t n = 0;
    unsigned char *b = tu_read_file(in_tmp(name), &n);
    assert_non_null(b);
    char *s = realloc(b, n + 1);
    assert_non_null(s);
    s[n] = '\0';
    return s;
}

/* stderr is exactly one line, "ddpm: ...", holding every given part. */
static void assert_one_error_line(const char *part1, const char *part2)
{
    char *err = slurp("err.txt");
    int ok = !strncmp(err, "ddpm: ", 6) && strstr(err, part1) && (!part2 || strstr(err, part2)) &&
             strchr(err, '\n') && strchr(err, '\n')[1] == '\0';
    if (!ok)
        fprintf(stderr, "stderr was: %s\n", err);
    assert_true(ok);
    free(err);
}

static void write_gray_png(const char *dir, const char *name, int k)
{
    uint8_t px[64];
    for (int i = 0; i < 64; i++)
        px[i] = (uint8_t)((i * (k + 3) * 7) & 255);
    char path[600];
    snprintf(path, sizeof path, "%s/%s/%s", tmp, dir, name);
    assert_int_equal(ddpm_png_write(path, px, 8, 8, 1), 0);
}

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(tmp, sizeof tmp, "reliability"))
        return -1;
    mkdir(in_tmp("data"), 0777);
    for (int k = 0; k < 6; k++) {
        char name[16];
        snprintf(name, sizeof name, "%02d.png", k);
        write_gray_png("data", name, k);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

#define TINY "--size 8 --ch 8 --ch-mult 1,2 --res-blocks 1 --attn '' --groups 4 --timesteps 50 --batch 2 --preview-n 0"

/* A checkpoint of a fresh tiny run at `name`, with `value` in the first element
 * of tensor 3 of the EMA weights (ema) or of the raw weights. */
static void save_tiny_checkpoint(const char *name, int ema, float value)
{
    ddpm_run_config c;
    ddpm_run_config_default(&c);
    c.model.in_channels = 1, c.model.image_size = 8, c.model.ch = 8, c.model.n_levels = 2;
    c.model.ch_mult[0] = 1, c.model.ch_mult[1] = 2, c.model.num_res_blocks = 1, c.model.n_attn = 0;
    c.model.groups = 4, c.timesteps = 50, c.batch = 2;
    ddpm_trainer *tr = NULL;
    assert_int_equal(ddpm_trainer_create(&tr, &c), 0);
    (ema ? tr->ema : tr->params)[tr->net->tensors[3].offset] = value;
    assert_int_equal(ddpm_trainer_save(tr, in_tmp(name)), 0);
    ddpm_trainer_free(tr);
}

/* The bug report: a data folder with `self -> .` and `up -> ../DIR` made the
 * scan run forever (15 GB in 10 minutes); `self` alone turned 1 image into 41.
 * Before the fix this test hung until its 120 s alarm (exit 142). */
static void test_train_on_a_folder_with_symlink_loops_counts_one_image_and_warns(void **state)
{
    (void)state;
    mkdir(in_tmp("loops"), 0777);
    write_gray_png("loops", "only.png", 1);
    assert_int_equal(symlink(".", in_tmp("loops/self")), 0);
    assert_int_equal(symlink("../loops", in_tmp("loops/up")), 0);
    int rc = ddpm("train loops --out loops-run --steps 1 --batch 1 " TINY);
    assert_int_equal(rc, 0);
    char *err = slurp("err.txt");
    if (!strstr(err, " 1 images"))
        fprintf(stderr, "stderr was: %s\n", err);
    assert_non_null(strstr(err, " 1 images"));
    assert_non_null(strstr(err, "loops/self: link to the folder"));
    assert_non_null(strstr(err, "loops/up: link to the folder"));
    free(err);
}

/* The bug report: NaN in the EMA weights, and `ddpm sample` exited 0 with a grid
 * of black cells. Now it exits 1 with one line naming the tensor; `info` still
 * describes the file (it loads no weights). */
static void test_sample_refuses_nan_in_the_ema_weights_with_one_line(void **state)
{
    (void)state;
    save_tiny_checkpoint("nan.safetensors", 1, NAN);
    assert_int_equal(ddpm("sample nan.safetensors --n 1 --steps 2 --out nan.png --quiet"), 1);
    assert_one_error_line("ema.", "NaN");
    assert_int_equal(access(in_tmp("nan.png"), F_OK), -1);
    assert_int_equal(ddpm("sample nan.safetensors --n 1 --steps 2 --out raw.png --quiet --no-ema"), 0);
    save_tiny_checkpoint("inf.safetensors", 0, INFINITY);
    assert_int_equal(ddpm("sample inf.safetensors --n 1 --steps 2 --out inf.png --quiet --no-ema"), 1);
    assert_one_error_line("infinity", NULL);
}

/* The bug report: one bit flipped in the tensor data (-0.098 became -3.3e37)
 * passed info, sample and --resume. Now each refuses the file naming the tensor. */
static void test_a_flipped_bit_is_refused_by_info_sample_and_resume(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out flip-run --steps 1 " TINY), 0);
    const char *ck = "flip-run/checkpoint.safetensors";
    size_t n = 0;
    unsigned char *b = tu_read_file(in_tmp(ck), &n);
    assert_non_null(b);
    b[n - 4 * 100 + 2] ^= 0x10; /* a bit of a weight near the end: adam_v's last tensor */
    assert_int_equal(tu_write_file(in_tmp(ck), b, n), 0);
    free(b);
    assert_int_equal(ddpm("info flip-run"), 1);
    assert_one_error_line("fails its checksum", "adam_v.");
    assert_int_equal(ddpm("sample flip-run --n 1 --steps 2 --out flip.png --quiet"), 1);
    assert_one_error_line("fails its checksum", NULL);
    assert_int_equal(ddpm("train data --out flip-run --resume --steps 2 --quiet"), 1);
    assert_one_error_line("fails its checksum", NULL);
}

/* The bug report: under a file-size limit (prlimit --fsize) SIGXFSZ killed ddpm
 * (exit 153, no message, a temporary file left). Now the write fails cleanly:
 * exit 1, one line saying "File too large", the old checkpoint intact, no
 * temporary file. */
static void test_a_file_size_limit_gives_one_error_and_keeps_the_old_checkpoint(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out fsize-run --steps 1 --quiet " TINY), 0);
    size_t n = 0;
    unsigned char *before = tu_read_file(in_tmp("fsize-run/checkpoint.safetensors"), &n);
    assert_non_null(before);
    int rc = run_limited((long)n / 2, "train data --out fsize-run --resume --steps 2 --quiet");
    assert_int_equal(rc, 1);
    assert_one_error_line("File too large", NULL);
    size_t m = 0;
    unsigned char *after = tu_read_file(in_tmp("fsize-run/checkpoint.safetensors"), &m);
    assert_non_null(after);
    assert_int_equal(m, n);
    assert_memory_equal(after, before, n);
    assert_int_equal(tu_count_entries_containing(in_tmp("fsize-run"), ".tmp."), 0);
    free(before);
    free(after);
    /* sample's PNG under a 100-byte limit: the same clean path */
    rc = run_limited(100, "sample fsize-run --n 4 --steps 2 --out limited.png --quiet");
    assert_int_equal(rc, 1);
    assert_one_error_line("File too large", NULL);
    assert_int_equal(tu_count_entries_containing(tmp, ".tmp."), 0);
}

/* The bug report: a 60000 x 60000 PNG was skipped as "unknown image type".
 * Now the warning says it is too large. */
static void test_a_huge_png_in_the_data_is_skipped_as_too_large(void **state)
{
    (void)state;
    mkdir(in_tmp("bomb"), 0777);
    write_gray_png("bomb", "ok.png", 2);
    write_gray_png("bomb", "huge.png", 3);
    FILE *f = fopen(in_tmp("bomb/huge.png"), "r+b");
    assert_non_null(f);
    const uint8_t dims[8] = {0, 0, 0xea, 0x60, 0, 0, 0xea, 0x60}; /* 60000 x 60000 */
    assert_int_equal(fseek(f, 16, SEEK_SET), 0);
    assert_int_equal(fwrite(dims, 1, 8, f), 8);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(ddpm("train bomb --out bomb-run --steps 1 --batch 1 " TINY), 0);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "huge.png: image is 60000 x 60000: too large"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_on_a_folder_with_symlink_loops_counts_one_image_and_warns),
        cmocka_unit_test(test_sample_refuses_nan_in_the_ema_weights_with_one_line),
        cmocka_unit_test(test_a_flipped_bit_is_refused_by_info_sample_and_resume),
        cmocka_unit_test(test_a_file_size_limit_gives_one_error_and_keeps_the_old_checkpoint),
        cmocka_unit_test(test_a_huge_png_in_the_data_is_skipped_as_too_large),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
