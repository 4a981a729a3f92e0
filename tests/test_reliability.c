/* Tests of the ddpm binary against the failures of a long unattended run: bad
 * data folders (symlink loops, image bombs), corrupt or poisoned checkpoints,
 * and a file-size limit. Each test is a defect that was seen: it failed before
 * its fix (see the comment of each). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddpm/checkpoint.h"
#include "ddpm/fsutil.h"
#include "ddpm/imageio.h"
#include "ddpm/train.h"
#include "testutil.h"

static char tmp[256];

/* The OpenBLAS kernel set of the ddpm children: NULL leaves the environment as
 * the test was given it; otherwise the child (only) gets OPENBLAS_CORETYPE set
 * to it and OPENBLAS_L2_SIZE unset. */
static const char *child_coretype;

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
        if (child_coretype) {
            setenv("OPENBLAS_CORETYPE", child_coretype, 1);
            unsetenv("OPENBLAS_L2_SIZE");
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

#define TINY                                                                                                 \
    "--size 8 --ch 8 --ch-mult 1,2 --res-blocks 1 --attn '' --groups 4 --timesteps 50 --batch 2 "            \
    "--preview-n 0"

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
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
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
    int rc = ddpm("train loops --out loops-run --steps 1 " TINY " --batch 1 --allow-small-data");
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
    assert_int_equal(ddpm("train data --out flip-run --resume --steps 2 --quiet --preview-n 0"), 1);
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
    int rc = run_limited((long)n / 2, "train data --out fsize-run --resume --steps 2 --quiet --preview-n 0");
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
    assert_int_equal(ddpm("train bomb --out bomb-run --steps 1 " TINY " --batch 1 --allow-small-data"), 0);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "huge.png: image is 60000 x 60000: too large"));
    free(err);
}

/* Starts `ddpm ARGS` in tmp in the background (output to bg.txt); returns its pid. */
static pid_t start_ddpm(const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cd '%s' && exec '%s' %s >bg.txt 2>&1", tmp, DDPM_BINARY, args);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits up to 60 s for file `name` in tmp to hold at least `lines` lines. */
static void wait_for_lines(const char *name, int lines)
{
    for (int i = 0; i < 6000; i++) {
        size_t n = 0;
        unsigned char *b = tu_read_file(in_tmp(name), &n);
        int count = 0;
        for (size_t k = 0; b && k < n; k++)
            count += b[k] == '\n';
        free(b);
        if (count >= lines)
            return;
        usleep(10000);
    }
    fail_msg("%s never reached %d lines", name, lines);
}

/* The steps of log.jsonl in order, into steps[]; returns how many. */
static int log_steps(const char *name, long *steps, int max)
{
    char *log = slurp(name);
    int n = 0;
    for (char *p = strstr(log, "\"step\":"); p && n < max; p = strstr(p + 1, "\"step\":"))
        steps[n++] = strtol(p + 7, NULL, 10);
    free(log);
    return n;
}

/* Exactly the steps first..last, once each and in order. */
static void assert_log_holds_steps(const char *name, long first, long last)
{
    long steps[512];
    int n = log_steps(name, steps, 512);
    if (n != last - first + 1)
        fprintf(stderr, "%s has %d lines, expected steps %ld..%ld\n", name, n, first, last);
    assert_int_equal(n, last - first + 1);
    for (int i = 0; i < n; i++)
        assert_int_equal(steps[i], first + i);
}

/* The bug report: two `ddpm train --out run2` started together both exited 0,
 * the folder kept only the second run and log.jsonl interleaved both. Now the
 * second is refused while the first runs, naming its pid, with or without
 * --resume; once the first is gone (even by SIGKILL) the folder is free again. */
static void test_a_second_writer_is_refused_with_the_first_ones_pid(void **state)
{
    (void)state;
    pid_t first = start_ddpm(
        "train data --out lock-run --steps 100000 --save-every 100000 --log-every 1 --quiet " TINY);
    wait_for_lines("lock-run/log.jsonl", 1);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)first);
    assert_int_equal(ddpm("train data --out lock-run --steps 5 --quiet " TINY), 1);
    assert_one_error_line("another ddpm", pid);
    assert_int_equal(ddpm("train data --out lock-run --resume --steps 5 --quiet --preview-n 0"), 1);
    assert_one_error_line("another ddpm", pid);
    kill(first, SIGKILL);
    int st;
    waitpid(first, &st, 0);
    assert_int_equal(ddpm("train data --out lock-run --resume --steps 3 --quiet --preview-n 0"), 0);
}

/* The bug report: log.jsonl pointed at /dev/full, and a run exited 0 with all
 * its lines lost. Every log write is checked: exit 1, one line naming the log. */
static void test_a_failing_log_write_is_an_error(void **state)
{
    (void)state;
    mkdir(in_tmp("full-run"), 0777);
    assert_int_equal(symlink("/dev/full", in_tmp("full-run/log.jsonl")), 0);
    assert_int_equal(ddpm("train data --out full-run --steps 3 --log-every 1 --quiet --no-warnings " TINY), 1);
    assert_one_error_line("log.jsonl", "No space left on device");
}

/* The bug report: a run killed before its first checkpoint left a folder that
 * neither --resume ("no checkpoint") nor a fresh run ("already holds a
 * log.jsonl") would take. Now both start it from step 0 with a warning, and the
 * new log holds the new run's steps only (the old one is kept aside: see
 * test_a_log_without_a_checkpoint_is_kept_aside_not_cut). */
static void test_a_run_folder_without_a_checkpoint_can_be_resumed_or_restarted(void **state)
{
    (void)state;
    const char *old_log = "{\"step\":1,\"loss\":1}\n{\"step\":2,\"loss\":1}\n";
    const char *names[2] = {"nockpt-a", "nockpt-b"};
    for (int k = 0; k < 2; k++) {
        char path[600];
        mkdir(in_tmp(names[k]), 0777);
        snprintf(path, sizeof path, "%s/log.jsonl", in_tmp(names[k]));
        assert_int_equal(tu_write_file(path, old_log, strlen(old_log)), 0);
        int rc = ddpm("train data --out %s %s --steps 3 --log-every 1 " TINY, names[k], k ? "" : "--resume");
        assert_int_equal(rc, 0);
        char *err = slurp("err.txt");
        assert_non_null(strstr(err, k ? "starting afresh" : "starting from step 0"));
        free(err);
        snprintf(path, sizeof path, "%s/log.jsonl", names[k]);
        assert_log_holds_steps(path, 1, 3);
    }
}

/* The bug report: SIGKILL left checkpoint.safetensors.tmp.<pid> files (17 after
 * 65 kills) that nothing removed, and log.jsonl, written before the save, held
 * steps past the checkpoint that the resumed run logged again (11 duplicates in
 * 35 kills). Now both are cleaned at the start of the next run (the temporary
 * files under the names ddpm_temp_name makes). */
static void test_stale_temp_files_go_and_the_log_is_cut_back_to_the_checkpoint(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out cut-run --steps 4 --log-every 1 --quiet " TINY), 0);
    /* what a kill after the log write of step 6 and during the save looks like */
    FILE *f = fopen(in_tmp("cut-run/log.jsonl"), "a");
    assert_non_null(f);
    fputs("{\"step\":5,\"loss\":0.5}\n{\"step\":6,\"loss\":0.5}\n{\"step\":7,\"lo", f);
    fclose(f);
    const char *stale = "cut-run/.checkpoint.safetensors" DDPM_TEMP_MARKER "4194303.0"; /* above pid_max: dead */
    assert_int_equal(tu_write_file(in_tmp(stale), "x", 1), 0);
    assert_int_equal(ddpm("train data --out cut-run --resume --steps 8 --log-every 1 --preview-n 0"), 0);
    assert_int_equal(tu_count_entries_containing(in_tmp("cut-run"), DDPM_TEMP_MARKER), 0);
    assert_log_holds_steps("cut-run/log.jsonl", 1, 8);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "removed 1 temporary file left"));
    assert_non_null(strstr(err, "removed 3 lines past the checkpoint's step 4"));
    free(err);
}

/* The bug report: the Ctrl-C hint `ddpm train DATA --out RUN --resume` omitted
 * the stop condition, so running it printed "done" at once (the default of one
 * epoch was long past). Now the stop condition is part of the run: --resume
 * alone trains on to the original --steps. */
static void test_resume_without_a_stop_condition_continues_to_the_runs_own(void **state)
{
    (void)state;
    pid_t pid = start_ddpm("train data --out stop-run --steps 40 --log-every 1 --save-every 100 " TINY);
    wait_for_lines("stop-run/log.jsonl", 5);
    kill(pid, SIGINT);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(ddpm("train data --out stop-run --resume --log-every 1 --preview-n 0"), 0);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "done at step 40"));
    free(err);
    assert_log_holds_steps("stop-run/log.jsonl", 1, 40);
}

/* Whether process pid has a file under tmp/dir open (its /proc/PID/fd links). */
static int has_open_file_under(pid_t pid, const char *dir)
{
    char fd_dir[64], link[600], target[1024], prefix[600];
    snprintf(fd_dir, sizeof fd_dir, "/proc/%ld/fd", (long)pid);
    snprintf(prefix, sizeof prefix, "%s/", in_tmp(dir));
    DIR *d = opendir(fd_dir);
    if (!d)
        return 0;
    int found = 0;
    for (struct dirent *e; !found && (e = readdir(d));) {
        snprintf(link, sizeof link, "%s/%s", fd_dir, e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = '\0';
            found = !strncmp(target, prefix, strlen(prefix));
        }
    }
    closedir(d);
    return found;
}

/* The issue: SIGINT and SIGTERM must be honoured while the data loads, not only
 * once training runs (the symlink-loop scan ignored SIGTERM and a first
 * Ctrl-C). SIGTERM arrives while ddpm reads the files of a 3000-image folder:
 * it stops there, exit 1 with one line saying so, and no checkpoint. Before
 * the stop flag reached the loader, the run loaded everything, then stopped at
 * its first step with a checkpoint and exit 0. */
static void test_sigterm_while_loading_stops_the_load(void **state)
{
    (void)state;
    mkdir(in_tmp("many"), 0777);
    for (int k = 0; k < 3000; k++) {
        char name[16];
        snprintf(name, sizeof name, "%05d.png", k);
        write_gray_png("many", name, k);
    }
    pid_t pid = start_ddpm("train many --out load-run --steps 100000 --save-every 100000 " TINY);
    int seen = 0;
    for (int i = 0; i < 600000 && !seen; i++) { /* up to 60 s */
        seen = has_open_file_under(pid, "many");
        if (!seen)
            usleep(100);
    }
    assert_true(seen);
    kill(pid, SIGTERM);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    char *out = slurp("bg.txt");
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 1))
        fprintf(stderr, "status %d, output: %s\n", st, out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    assert_non_null(strstr(out, "interrupted while"));
    assert_int_equal(strchr(out, '\n')[1], '\0'); /* one line */
    free(out);
    struct stat sb;
    assert_int_not_equal(stat(in_tmp("load-run/checkpoint.safetensors"), &sb), 0);
}

/* The tensor bytes of a checkpoint in tmp (*n of them). */
static unsigned char *checkpoint_tensors(const char *name, size_t *n)
{
    unsigned char *b = tu_checkpoint_tensors(in_tmp(name), n);
    assert_non_null(b);
    return b;
}

/* The OpenBLAS kernel sets the thread-count test runs under, with what the CPU
 * must have to run them (OpenBLAS would stop on an illegal instruction). */
static struct {
    const char *core;
    int runs_here;
} kernel_sets[] = {
    {"SkylakeX", 0}, /* runs_here filled in by the test from the CPU's flags */
    {"Haswell", 0},
    {"Sandybridge", 0},
    {"Prescott", 0},
};

/* The kernel set a ddpm child reports under child_coretype (`ddpm --version`). */
static void assert_child_kernels(const char *core)
{
    assert_int_equal(ddpm("--version"), 0);
    char *out = slurp("out.txt");
    char want[64];
    snprintf(want, sizeof want, "openblas kernels: %s\n", core);
    if (!strstr(out, want))
        fprintf(stderr, "asked OpenBLAS for %s kernels; ddpm --version says:\n%s", core, out);
    assert_non_null(strstr(out, want));
    free(out);
}

/* The issue: the same seed gives the same bytes whatever --threads is, for
 * training and for sampling, under every OpenBLAS kernel set this CPU can run
 * (the variable set in the children's environment only). The run takes the
 * default model's code paths at a small width: 28x28 gray (Winograd F(4x4) at
 * 28 and 7 px, F(2x2) at 14, attention at 14, dropout, the time embedding's
 * linear layers), an odd batch of 5, at 1, 2 and 3 threads. A lane or
 * reduction split that followed the thread count failed this; so did a
 * multi-threaded OpenBLAS call (the linear layers' sgemm split over the
 * threads rounds differently with the Haswell kernels). */
static void test_training_and_sampling_give_the_same_bytes_at_any_thread_count(void **state)
{
    (void)state;
    mkdir(in_tmp("d28"), 0777);
    uint8_t px[28 * 28];
    for (int k = 0; k < 7; k++) {
        for (int i = 0; i < 28 * 28; i++)
            px[i] = (uint8_t)((i * (k + 5) * 13 + (i / 28) * k) & 255);
        char path[600];
        snprintf(path, sizeof path, "%s/d28/%d.png", tmp, k);
        assert_int_equal(ddpm_png_write(path, px, 28, 28, 1), 0);
    }
    __builtin_cpu_init();
    kernel_sets[0].runs_here = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    kernel_sets[1].runs_here = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    kernel_sets[2].runs_here = __builtin_cpu_supports("avx");
    kernel_sets[3].runs_here = 1;
    int n_run = 0;
    for (size_t s = 0; s < sizeof kernel_sets / sizeof kernel_sets[0]; s++) {
        const char *core = kernel_sets[s].core;
        if (!kernel_sets[s].runs_here) {
            fprintf(stderr, "  this CPU cannot run OpenBLAS's %s kernels: not tested\n", core);
            continue;
        }
        child_coretype = core;
        assert_child_kernels(core);
        unsigned char *first = NULL, *grid0 = NULL;
        size_t n_first = 0, n_grid0 = 0;
        for (int threads = 1; threads <= 3; threads++) {
            assert_int_equal(ddpm("train d28 --out thr%s%d --steps 3 --batch 5 --ch 8 --timesteps 100 "
                                  "--dropout 0.2 --preview-n 0 --threads %d",
                                  core, threads, threads),
                             0);
            /* the run really used that many OpenMP threads (a thread count that
               OpenBLAS reset to 1 made every count give 1 thread's bytes) */
            char said[32];
            snprintf(said, sizeof said, ", %d threads\n", threads);
            char *err = slurp("err.txt");
            if (!strstr(err, said))
                fprintf(stderr, "ddpm train --threads %d said:\n%s", threads, err);
            assert_non_null(strstr(err, said));
            free(err);
            char name[64];
            snprintf(name, sizeof name, "thr%s%d/checkpoint.safetensors", core, threads);
            size_t n = 0;
            unsigned char *t = checkpoint_tensors(name, &n);
            assert_int_equal(
                ddpm("sample thr%s1 --n 3 --steps 5 --seed 4 --out g%s%d.png --quiet --threads %d", core,
                     core, threads, threads),
                0);
            snprintf(name, sizeof name, "g%s%d.png", core, threads);
            size_t ng = 0;
            unsigned char *g = tu_read_file(in_tmp(name), &ng);
            assert_non_null(g);
            if (!first) {
                first = t, n_first = n, grid0 = g, n_grid0 = ng;
                continue;
            }
            if (n != n_first || memcmp(t, first, n) || ng != n_grid0 || memcmp(g, grid0, ng))
                fprintf(stderr, "  OpenBLAS %s kernels: %d threads give other bytes than 1 thread (%s)\n",
                        core, threads, n != n_first || memcmp(t, first, n) ? "training" : "sampling");
            assert_int_equal(n, n_first);
            assert_memory_equal(t, first, n);
            assert_int_equal(ng, n_grid0);
            assert_memory_equal(g, grid0, ng);
            free(t);
            free(g);
        }
        free(first);
        free(grid0);
        child_coretype = NULL;
        n_run++;
    }
    assert_true(n_run >= 1); /* Prescott runs anywhere */
}

/* The bug report: --resume on another data folder quietly turned 32x32 RGB
 * images into the run's 16x16 gray. The checkpoint records the data's
 * fingerprint; other data is refused unless --allow-data-change. */
static void test_resume_on_other_data_is_refused_unless_allowed(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out data-run --steps 1 --quiet " TINY), 0);
    mkdir(in_tmp("other"), 0777);
    write_gray_png("other", "x.png", 9);
    write_gray_png("other", "y.png", 10); /* a batch's worth: fewer is refused as too small */
    assert_int_equal(ddpm("train other --out data-run --resume --steps 2 --quiet --preview-n 0"), 1);
    assert_one_error_line("not the data this run was trained on", "--allow-data-change");
    assert_int_equal(
        ddpm("train other --out data-run --resume --steps 2 --quiet --allow-data-change --preview-n 0"), 0);
    assert_int_equal(
        ddpm("train data --out data-run --resume --steps 3 --quiet --allow-data-change --preview-n 0"), 0);
}

/* The bug report: --size 7, --attn 99 and --ch 3 exited 1, though README gives
 * 2 for a bad value; --out '' printed "ddpm: : ..."; sample --out EXISTING_DIR
 * failed only after all the sampling. */
static void test_bad_flag_values_exit_2_and_bad_outputs_are_refused_before_work(void **state)
{
    (void)state;
    const char *bad[] = {"--size 7", "--attn 99", "--ch 3"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            ddpm("train data --out bad-run --steps 1 --quiet --ch 8 --ch-mult 1,2 --groups 4 %s", bad[i]), 2);
        assert_one_error_line("model", NULL);
    }
    assert_int_equal(access(in_tmp("bad-run"), F_OK), -1); /* refused before any file */
    assert_int_equal(ddpm("train data --out '' --steps 1 --quiet " TINY), 2);
    assert_one_error_line("--out: the run folder's name is empty", NULL);
    assert_int_equal(ddpm("train data --out fresh-run --steps 1 --quiet " TINY), 0);
    mkdir(in_tmp("a-folder"), 0777);
    assert_int_equal(ddpm("sample fresh-run --n 4096 --sampler ddpm --quiet --out a-folder"), 1);
    assert_one_error_line("a-folder: is a folder", NULL);
    assert_int_equal(ddpm("sample fresh-run --n 4096 --sampler ddpm --quiet --out no/such/dir/x.png"), 1);
    assert_one_error_line("cannot write there", NULL);
    assert_int_equal(ddpm("sample fresh-run --n 4096 --sampler ddpm --quiet --out ''"), 2);
    assert_one_error_line("--out: the file name is empty", NULL);
}

/* Counts the lines of a file in tmp (0 when it is missing). */
static int count_lines(const char *name)
{
    size_t n = 0;
    unsigned char *b = tu_read_file(in_tmp(name), &n);
    int lines = 0;
    for (size_t i = 0; b && i < n; i++)
        lines += b[i] == '\n';
    free(b);
    return lines;
}

/* Issue 26, item 3: a resumed run learned that it could not write only at its
 * first save, losing every step before it. Under a file-size limit below the
 * probe's test file (100 bytes) and one between it and the checkpoint, the
 * resume now stops before step 1: exit 1, one line, the log untouched (before,
 * it logged steps 2..30 and then failed). */
static void test_a_resume_that_cannot_save_is_refused_before_step_1(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out probe-run --steps 1 --log-every 1 --quiet " TINY), 0);
    size_t n = 0;
    unsigned char *ckpt = tu_read_file(in_tmp("probe-run/checkpoint.safetensors"), &n);
    assert_non_null(ckpt);
    free(ckpt);
    assert_true(n > 2 * DDPM_PROBE_BYTES);
    const long limits[2] = {100, (long)n / 2};
    for (int k = 0; k < 2; k++) {
        int rc = run_limited(limits[k], "train data --out probe-run --resume --steps 30 --save-every 0 "
                                        "--log-every 1 --quiet --preview-n 0");
        assert_int_equal(rc, 1);
        assert_one_error_line("probe-run", "File too large");
        assert_int_equal(count_lines("probe-run/log.jsonl"), 1);
        assert_int_equal(tu_count_entries_containing(in_tmp("probe-run"), DDPM_TEMP_MARKER), 0);
    }
    assert_int_equal(ddpm("train data --out probe-run --resume --steps 3 --quiet --preview-n 0"), 0);
}

/* Issue 26, item 2: a run folder that had lost its checkpoint had its log.jsonl
 * cut to nothing. Now the old log is kept whole as log.orphan.jsonl (then
 * log.orphan.2.jsonl) and the warning says so. */
static void test_a_log_without_a_checkpoint_is_kept_aside_not_cut(void **state)
{
    (void)state;
    const char *old_log = "{\"step\":1,\"loss\":1}\n{\"step\":2,\"loss\":1}\n";
    mkdir(in_tmp("aside-run"), 0777);
    assert_int_equal(tu_write_file(in_tmp("aside-run/log.jsonl"), old_log, strlen(old_log)), 0);
    assert_int_equal(ddpm("train data --out aside-run --steps 2 --log-every 1 " TINY), 0);
    char *kept = slurp("aside-run/log.orphan.jsonl");
    assert_string_equal(kept, old_log);
    free(kept);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "kept as"));
    assert_non_null(strstr(err, "log.orphan.jsonl"));
    free(err);
    /* a second time: the first kept log stays, the next goes beside it */
    assert_int_equal(unlink(in_tmp("aside-run/checkpoint.safetensors")), 0);
    assert_int_equal(ddpm("train data --out aside-run --steps 2 --log-every 1 --quiet " TINY), 0);
    kept = slurp("aside-run/log.orphan.jsonl");
    assert_string_equal(kept, old_log);
    free(kept);
    assert_int_equal(count_lines("aside-run/log.orphan.2.jsonl"), 2);
    assert_int_equal(count_lines("aside-run/log.jsonl"), 2);
}

/* Issue 26, item 2: the stale-temporary cleanup deleted any file named like
 * x.tmp.99999 (a dead pid) in the run folder or samples/. Files of the user's,
 * whatever their names, now stay; only ddpm's own hidden temporary names of a
 * dead writer go. */
static void test_cleanup_keeps_user_files_named_like_temporaries(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out keep-run --steps 1 --quiet " TINY), 0);
    mkdir(in_tmp("keep-run/samples"), 0777);
    const char *users[] = {"keep-run/notes.tmp.4194303", "keep-run/checkpoint.safetensors.tmp.4194303.0",
                           "keep-run/samples/mine.png.tmp.4194303.1", "keep-run/.x.ddpm.tmp.4194303.0.bak"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(tu_write_file(in_tmp(users[i]), "mine", 4), 0);
    const char *ours = "keep-run/samples/.step_0000001.png" DDPM_TEMP_MARKER "4194303.0";
    assert_int_equal(tu_write_file(in_tmp(ours), "x", 1), 0);
    assert_int_equal(ddpm("train data --out keep-run --resume --steps 2 --quiet --preview-n 0"), 0);
    for (int i = 0; i < 4; i++) {
        if (access(in_tmp(users[i]), F_OK) != 0)
            fprintf(stderr, "%s was removed\n", users[i]);
        assert_int_equal(access(in_tmp(users[i]), F_OK), 0);
    }
    assert_int_equal(access(in_tmp(ours), F_OK), -1);
}

/* A P5 PGM of 8 x 8 pixels: the same size in bytes whatever its pixels. */
static void write_pgm(const char *dir, const char *name, int k)
{
    char path[600], text[80];
    snprintf(path, sizeof path, "%s/%s/%s", tmp, dir, name);
    int h = snprintf(text, sizeof text, "P5\n8 8\n255\n");
    for (int i = 0; i < 64; i++)
        text[h + i] = (char)((i * (k + 3) * 5) & 255);
    assert_int_equal(tu_write_file(path, text, (size_t)h + 64), 0);
}

/* Issue 26, item 7: the data fingerprint was names, count and bytes, so a run
 * resumed on other images of the same names and sizes went on with exit 0.
 * Now the contents are hashed as they are loaded, and the refusal names the
 * first changed file. */
static void test_resume_on_changed_image_contents_is_refused_naming_the_file(void **state)
{
    (void)state;
    mkdir(in_tmp("cdata"), 0777);
    const char *names[4] = {"a.pgm", "b.pgm", "c.pgm", "d.pgm"};
    for (int k = 0; k < 4; k++)
        write_pgm("cdata", names[k], k);
    assert_int_equal(ddpm("train cdata --out cdata-run --steps 1 --quiet " TINY), 0);
    write_pgm("cdata", "c.pgm", 11); /* other pixels, same name, same size */
    assert_int_equal(ddpm("train cdata --out cdata-run --resume --steps 2 --quiet --preview-n 0"), 1);
    assert_one_error_line("cdata/c.pgm: its contents changed", "--allow-data-change");
    assert_int_equal(
        ddpm("train cdata --out cdata-run --resume --steps 2 --allow-data-change --preview-n 0"), 0);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "cdata/c.pgm: its contents changed"));
    free(err);
    /* the run now knows the new contents: a plain resume is accepted */
    assert_int_equal(ddpm("train cdata --out cdata-run --resume --steps 3 --quiet --preview-n 0"), 0);
}

/* A checkpoint of an older ddpm records the fingerprint without contents
 * ("N images, B bytes, names X"): it still resumes on the same data, and is
 * still refused on data of other names. */
static void test_an_old_fingerprint_without_contents_still_resumes(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out oldfp-run --steps 1 --quiet " TINY), 0);
    ddpm_checkpoint *ck = NULL;
    assert_int_equal(ddpm_checkpoint_open(&ck, in_tmp("oldfp-run/checkpoint.safetensors")), 0);
    ddpm_trainer *tr = NULL;
    assert_int_equal(ddpm_trainer_from_checkpoint(&tr, ck, 0), 0);
    ddpm_checkpoint_close(ck);
    char *cut = strstr(tr->state.data_fingerprint, ", contents ");
    assert_non_null(cut);
    *cut = '\0';
    assert_int_equal(ddpm_trainer_save(tr, in_tmp("oldfp-run/checkpoint.safetensors")), 0);
    ddpm_trainer_free(tr);
    assert_int_equal(ddpm("train data --out oldfp-run --resume --steps 2 --quiet --preview-n 0"), 0);
    mkdir(in_tmp("oldfp-other"), 0777);
    write_gray_png("oldfp-other", "p.png", 4);
    write_gray_png("oldfp-other", "q.png", 5);
    assert_int_equal(ddpm("train oldfp-other --out oldfp-run --resume --steps 3 --quiet --preview-n 0"), 1);
    assert_one_error_line("not the data this run was trained on", NULL);
}

/* Issue 26, item 8: `--out data/run` trained, and its previews joined the data
 * (the resume was then refused, and --allow-data-change trained on them). A run
 * folder inside its data folder, by any spelling (.., a link), is refused with
 * exit 2 before anything is made. */
static void test_a_run_folder_inside_its_data_folder_is_refused(void **state)
{
    (void)state;
    mkdir(in_tmp("ndata"), 0777);
    for (int k = 0; k < 2; k++) {
        char name[16];
        snprintf(name, sizeof name, "%d.png", k);
        write_gray_png("ndata", name, k);
    }
    assert_int_equal(symlink("ndata", in_tmp("ndata-link")), 0);
    const char *outs[] = {"ndata/run", "ndata/new/../run", "ndata-link/run", "ndata", "./ndata/"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ddpm("train ndata --out %s --steps 1 --quiet " TINY, outs[i]), 2);
        assert_one_error_line("inside", "data folder");
    }
    assert_int_equal(access(in_tmp("ndata/run"), F_OK), -1);
    assert_int_equal(access(in_tmp("ndata/new"), F_OK), -1);
    /* and the data inside the run folder (its samples) */
    assert_int_equal(ddpm("train data --out nest-run --steps 1 --quiet " TINY), 0);
    mkdir(in_tmp("nest-run/samples"), 0777);
    write_gray_png("nest-run/samples", "s.png", 1);
    write_gray_png("nest-run/samples", "t.png", 2);
    assert_int_equal(ddpm("train nest-run/samples --out nest-run --resume --allow-data-change --quiet"), 2);
    assert_one_error_line("inside the run folder", NULL);
}

/* Issue 26, item 9: one 1x1 image trained a 1x1 model, exit 0. Fewer images
 * than a batch, or images under 8 px, are refused with the reason unless
 * --allow-small-data. */
static void test_implausibly_small_data_is_refused_unless_allowed(void **state)
{
    (void)state;
    mkdir(in_tmp("dot"), 0777);
    const uint8_t px = 200;
    char path[600];
    snprintf(path, sizeof path, "%s/dot/dot.png", tmp);
    assert_int_equal(ddpm_png_write(path, &px, 1, 1, 1), 0);
    assert_int_equal(ddpm("train dot --out dot-run --steps 1 --quiet --batch 1 --preview-n 0"), 1);
    assert_one_error_line("dot/dot.png: 1 px", "--allow-small-data");
    assert_int_equal(access(in_tmp("dot-run"), F_OK), -1);
    /* 6 images of 8 x 8 and a batch of 8 */
    assert_int_equal(ddpm("train data --out few-run --steps 1 --quiet " TINY " --batch 8"), 1);
    assert_one_error_line("6 images, fewer than one batch of 8", "--allow-small-data");
    assert_int_equal(ddpm("train data --out few-run --steps 1 --quiet " TINY " --batch 8 --allow-small-data"), 0);
}

/* Issue 26, item 8: an interrupted `ddpm convert` left complete PNGs under
 * temporary names that train counted as images. Its temporary names are now
 * hidden (train never reads them), and the next convert into the folder
 * removes the ones whose writer is gone. */
static void test_convert_removes_what_an_interrupted_convert_left(void **state)
{
    (void)state;
    uint8_t idx[16 + 3 * 64] = {0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 8};
    for (int i = 0; i < 3 * 64; i++)
        idx[16 + i] = (uint8_t)(i * 5);
    assert_int_equal(tu_write_file(in_tmp("three.idx"), idx, sizeof idx), 0);
    mkdir(in_tmp("conv"), 0777);
    const char *left = "conv/.00002.png" DDPM_TEMP_MARKER "4194303.0"; /* a complete PNG, never renamed */
    write_gray_png("conv", ".00002.png" DDPM_TEMP_MARKER "4194303.0", 1);
    assert_int_equal(ddpm("convert three.idx conv --force --quiet"), 0);
    assert_int_equal(access(in_tmp(left), F_OK), -1);
    char *err = slurp("err.txt");
    assert_non_null(strstr(err, "removed 1 temporary file left by an interrupted convert"));
    free(err);
    assert_int_equal(tu_count_entries_containing(in_tmp("conv"), ".png"), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_on_a_folder_with_symlink_loops_counts_one_image_and_warns),
        cmocka_unit_test(test_sample_refuses_nan_in_the_ema_weights_with_one_line),
        cmocka_unit_test(test_a_flipped_bit_is_refused_by_info_sample_and_resume),
        cmocka_unit_test(test_a_file_size_limit_gives_one_error_and_keeps_the_old_checkpoint),
        cmocka_unit_test(test_a_huge_png_in_the_data_is_skipped_as_too_large),
        cmocka_unit_test(test_a_second_writer_is_refused_with_the_first_ones_pid),
        cmocka_unit_test(test_a_failing_log_write_is_an_error),
        cmocka_unit_test(test_a_run_folder_without_a_checkpoint_can_be_resumed_or_restarted),
        cmocka_unit_test(test_stale_temp_files_go_and_the_log_is_cut_back_to_the_checkpoint),
        cmocka_unit_test(test_resume_without_a_stop_condition_continues_to_the_runs_own),
        cmocka_unit_test(test_sigterm_while_loading_stops_the_load),
        cmocka_unit_test(test_training_and_sampling_give_the_same_bytes_at_any_thread_count),
        cmocka_unit_test(test_resume_on_other_data_is_refused_unless_allowed),
        cmocka_unit_test(test_bad_flag_values_exit_2_and_bad_outputs_are_refused_before_work),
        cmocka_unit_test(test_a_resume_that_cannot_save_is_refused_before_step_1),
        cmocka_unit_test(test_a_log_without_a_checkpoint_is_kept_aside_not_cut),
        cmocka_unit_test(test_cleanup_keeps_user_files_named_like_temporaries),
        cmocka_unit_test(test_resume_on_changed_image_contents_is_refused_naming_the_file),
        cmocka_unit_test(test_an_old_fingerprint_without_contents_still_resumes),
        cmocka_unit_test(test_a_run_folder_inside_its_data_folder_is_refused),
        cmocka_unit_test(test_implausibly_small_data_is_refused_unless_allowed),
        cmocka_unit_test(test_convert_removes_what_an_interrupted_convert_left),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
