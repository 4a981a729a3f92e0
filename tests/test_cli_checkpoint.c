/* Tests of the ddpm binary against damaged and hostile checkpoint paths
 * (issue 26, items 4, 5 and 9): a FIFO or a device named as the checkpoint,
 * directly or by a recipe, is refused in one line without hanging; a one-bit
 * edit of the header is refused by info, sample and a resume, which writes
 * nothing; absurd weights are refused in one line. Each command runs in a
 * child with an alarm, so that a hang ends the child (exit 142), not the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddpm/imageio.h"
#include "ddpm/sha256.h"
#include "ddpm/train.h"
#include "testutil.h"

static char tmp[256];

#define TINY                                                                                                 \
    "--size 8 --ch 8 --ch-mult 1,2 --res-blocks 1 --attn '' --groups 4 --timesteps 50 --batch 2 "            \
    "--preview-n 0 --threads 1"

/* Runs `ddpm ARGS` in tmp, stdout and stderr to out.txt and err.txt, in a
 * child that SIGALRM ends after 60 s. Returns the exit code, or 128 + the
 * signal that ended it (a hang: 142). */
static int ddpm(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int ddpm(const char *fmt, ...)
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
        alarm(60); /* kept across exec: ends a ddpm that blocks on a FIFO */
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* tmp/NAME (in one static buffer: one call per expression). */
static char *in_tmp(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    return path;
}

static int exists(const char *name) { return access(in_tmp(name), F_OK) == 0; }

/* stderr is exactly one line "ddpm: ..." holding both parts (part2 may be NULL). */
static void assert_one_error_line(const char *part1, const char *part2)
{
    char *err = tu_slurp(tmp, "err.txt", NULL);
    assert_non_null(err);
    int ok = !strncmp(err, "ddpm: ", 6) && strstr(err, part1) && (!part2 || strstr(err, part2)) &&
             strchr(err, '\n') && strchr(err, '\n')[1] == '\0';
    if (!ok)
        fprintf(stderr, "stderr was: %s(wanted one line with '%s' and '%s')\n", err, part1, part2 ? part2 : "");
    assert_true(ok);
    free(err);
}

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(tmp, sizeof tmp, "cli_checkpoint"))
        return -1;
    mkdir(in_tmp("data"), 0777);
    uint8_t px[64];
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 64; i++)
            px[i] = (uint8_t)((i * (k + 3) * 7) & 255);
        char name[64];
        snprintf(name, sizeof name, "data/%02d.png", k);
        if (ddpm_png_write(in_tmp(name), px, 8, 8, 1))
            return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

/* The bug report (issue 26, item 4): `ddpm sample /dev/zero` and `ddpm
 * interpolate /dev/zero --seeds 1,2` were to run forever, and a FIFO blocked
 * the open of every command that reads a checkpoint, also when a recipe
 * (--from) names it. Each is now one line naming the path, exit 1, at once
 * (before the fix the FIFO cases ended by the child's alarm: exit 142). */
static void test_a_fifo_or_device_as_checkpoint_is_one_line_without_a_hang(void **state)
{
    (void)state;
    assert_int_equal(mkfifo(in_tmp("fifo"), 0666), 0);
    const char *paths[2] = {"/dev/zero", "fifo"};
    for (int k = 0; k < 2; k++) {
        const char *p = paths[k];
        assert_int_equal(ddpm("sample %s --out y.png --n 1 --steps 1", p), 1);
        assert_one_error_line(p, "not a regular file");
        assert_false(exists("y.png"));
        assert_int_equal(ddpm("interpolate %s --seeds 1,2 --out strip.png", p), 1);
        assert_one_error_line(p, "not a regular file");
        assert_false(exists("strip.png"));
        assert_int_equal(ddpm("export %s x.safetensors", p), 1);
        assert_one_error_line(p, "not a regular file");
        assert_false(exists("x.safetensors"));
        assert_int_equal(ddpm("eval %s data --n 2 --quiet", p), 1);
        assert_one_error_line(p, "not a regular file");
    }
    /* a recipe naming a checkpoint that has become a FIFO */
    assert_int_equal(ddpm("train data --out run --steps 1 --quiet " TINY), 0);
    assert_int_equal(ddpm("sample run --n 1 --steps 1 --out made.png --quiet"), 0);
    char moved[512];
    snprintf(moved, sizeof moved, "%s", in_tmp("moved.safetensors"));
    assert_int_equal(rename(in_tmp("run/checkpoint.safetensors"), moved), 0);
    assert_int_equal(mkfifo(in_tmp("run/checkpoint.safetensors"), 0666), 0);
    assert_int_equal(ddpm("sample --from made.png --out again.png --quiet"), 1);
    assert_one_error_line("run/checkpoint.safetensors", "not a regular file");
    assert_false(exists("again.png"));
}

/* The header edit at `from` -> `to` (same length) of cu/NAME's header. */
static void edit_header_of(const char *name, const char *from, const char *to)
{
    size_t size = 0;
    unsigned char *b = tu_read_file(in_tmp(name), &size);
    assert_non_null(b);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | b[i];
    size_t n = strlen(from);
    assert_int_equal(strlen(to), n);
    unsigned char *at = NULL;
    for (size_t i = 8; i + n <= 8 + h && !at; i++)
        if (!memcmp(b + i, from, n))
            at = b + i;
    assert_non_null(at);
    memcpy(at, to, n);
    assert_int_equal(tu_write_file(in_tmp(name), b, size), 0);
    free(b);
}

/* The bug report (issue 26, item 5): one-bit edits of the metadata loaded and
 * resumed with exit 0 ("timesteps" 50 -> 51 here, the step, the schedule).
 * Each is now refused in one line naming the file by info, sample and a
 * resume, and the resume writes nothing: the checkpoint and the log keep
 * their bytes and no temporary file is left. */
static void test_a_header_edit_is_refused_by_info_sample_and_resume_which_writes_nothing(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out edit --steps 2 --quiet " TINY), 0);
    const char *ck = "edit/checkpoint.safetensors";
    static const char *const edits[][2] = {
        {"\\\"timesteps\\\":50", "\\\"timesteps\\\":51"},
        {"\"step\\\":2", "\"step\\\":3"},
        {"\"linear\\\"", "\"cosine\\\""},
    };
    size_t n_good = 0;
    unsigned char *good = tu_read_file(in_tmp(ck), &n_good);
    assert_non_null(good);
    for (size_t k = 0; k < sizeof edits / sizeof edits[0]; k++) {
        assert_int_equal(tu_write_file(in_tmp(ck), good, n_good), 0);
        edit_header_of(ck, edits[k][0], edits[k][1]);
        size_t n_before = 0, n_log = 0;
        unsigned char *before = tu_read_file(in_tmp(ck), &n_before);
        unsigned char *log = tu_read_file(in_tmp("edit/log.jsonl"), &n_log);
        assert_non_null(before);
        assert_non_null(log);
        assert_int_equal(ddpm("info edit"), 1);
        assert_one_error_line(ck, "fails its checksum");
        assert_int_equal(ddpm("sample edit --n 1 --steps 1 --out e.png --quiet"), 1);
        assert_one_error_line(ck, "fails its checksum");
        assert_false(exists("e.png"));
        assert_int_equal(ddpm("train data --out edit --resume --steps 4 --quiet --preview-n 0"), 1);
        assert_one_error_line(ck, "fails its checksum");
        size_t n_after = 0, n_log_after = 0;
        unsigned char *after = tu_read_file(in_tmp(ck), &n_after);
        unsigned char *log_after = tu_read_file(in_tmp("edit/log.jsonl"), &n_log_after);
        assert_int_equal(n_after, n_before);
        assert_memory_equal(after, before, n_before);
        assert_int_equal(n_log_after, n_log);
        assert_memory_equal(log_after, log, n_log);
        assert_int_equal(tu_count_entries_containing(in_tmp("edit"), ".tmp."), 0);
        free(before);
        free(after);
        free(log);
        free(log_after);
    }
    free(good);
}

/* The bug report (issue 26, item 9): weights of 3e38 with checksums that
 * match sampled an all-0/255 grid with exit 0. Now one line names the file
 * and the tensor, and no image is written. */
static void test_sample_refuses_weights_of_3e38_in_one_line(void **state)
{
    (void)state;
    ddpm_run_config c;
    ddpm_run_config_default(&c);
    c.model.in_channels = 1, c.model.image_size = 8, c.model.ch = 8, c.model.n_levels = 2;
    c.model.ch_mult[0] = 1, c.model.ch_mult[1] = 2, c.model.num_res_blocks = 1, c.model.n_attn = 0;
    c.model.groups = 4, c.timesteps = 50, c.batch = 2;
    ddpm_trainer *tr = NULL;
    assert_int_equal(ddpm_trainer_create(&tr, &c, 0), 0);
    tr->ema[tr->net->tensors[3].offset] = 3e38f;
    char tensor[160];
    snprintf(tensor, sizeof tensor, "ema.%s", tr->net->tensors[3].name);
    assert_int_equal(ddpm_trainer_save(tr, in_tmp("huge.safetensors")), 0);
    ddpm_trainer_free(tr);
    assert_int_equal(ddpm("sample huge.safetensors --n 1 --steps 2 --out huge.png --quiet"), 1);
    assert_one_error_line("huge.safetensors", tensor);
    assert_false(exists("huge.png"));
}

/* `ddpm info` printed the format version this ddpm writes, whatever the
 * file's. It says the file's, and what its checksums covered: a format
 * version 1 file (today's fixture of the older format) has no header
 * checksum; a new run's checkpoint has both. */
static void test_info_says_the_files_format_version_and_what_was_verified(void **state)
{
    (void)state;
    assert_int_equal(ddpm("info '%s/checkpoint_v1_classes.safetensors'", DDPM_TEST_DATA), 0);
    char *out = tu_slurp(tmp, "out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "format version: 1\n"));
    assert_non_null(strstr(out, "crc32c of every tensor verified (format version 1: no header checksum)"));
    free(out);
    assert_int_equal(ddpm("train data --out fresh --steps 1 --quiet " TINY), 0);
    assert_int_equal(ddpm("info fresh"), 0);
    out = tu_slurp(tmp, "out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "format version: 2\n"));
    assert_non_null(strstr(out, "checksums: crc32c of the header and of every tensor verified\n"));
    free(out);
}

/* A preview grid's recipe names the checkpoint saved at its step by the
 * SHA-256 of the bytes the save wrote, hashed while writing (the file is not
 * read back): it is the SHA-256 of the file on disk, at a save in the loop and
 * at the end of the run. */
static void test_a_previews_recipe_names_the_checkpoint_by_the_bytes_written(void **state)
{
    (void)state;
    assert_int_equal(ddpm("train data --out prev --steps 3 --save-every 2 --sample-every 2 --preview-n 2 "
                          "--preview-steps 2 --quiet --size 8 --ch 8 --ch-mult 1,2 --res-blocks 1 --attn '' "
                          "--groups 4 --timesteps 50 --batch 2 --threads 1"),
                     0);
    char file_sha[65];
    assert_int_equal(ddpm_sha256_file(in_tmp("prev/checkpoint.safetensors"), file_sha), 0);
    /* step 3, the end: saved and previewed with the final weights */
    assert_int_equal(ddpm("info prev/samples/step_0000003.png"), 0);
    char *out = tu_slurp(tmp, "out.txt", NULL), want[128];
    assert_non_null(out);
    snprintf(want, sizeof want, "checkpoint sha256: %s\n", file_sha);
    if (!strstr(out, want))
        fail_msg("info says:\n%s\nwanted '%s'", out, want);
    free(out);
    /* step 2: saved in the loop, then replaced by step 3's; its recipe names
       the step 2 file, which is not the one on disk any more */
    assert_int_equal(ddpm("info prev/samples/step_0000002.png"), 0);
    out = tu_slurp(tmp, "out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "checkpoint sha256: "));
    assert_null(strstr(out, want));
    assert_null(strstr(out, "(none"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_fifo_or_device_as_checkpoint_is_one_line_without_a_hang),
        cmocka_unit_test(test_a_header_edit_is_refused_by_info_sample_and_resume_which_writes_nothing),
        cmocka_unit_test(test_sample_refuses_weights_of_3e38_in_one_line),
        cmocka_unit_test(test_info_says_the_files_format_version_and_what_was_verified),
        cmocka_unit_test(test_a_previews_recipe_names_the_checkpoint_by_the_bytes_written),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
