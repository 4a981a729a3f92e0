/* Tests of the shared file helpers: mkdir -p, the atomic write (a failed write
 * keeps the old file and leaves no temporary file), reading a whole file (only
 * a regular file, within a size), the monotonic clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "testutil.h"

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(tmpdir, sizeof tmpdir, "fsutil");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmpdir);
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void test_mkdir_p_makes_parents_and_refuses_a_file_in_the_way(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/a/b/c", tmpdir);
    assert_int_equal(ddpm_mkdir_p(path), 0);
    assert_true(is_dir(path));
    assert_int_equal(ddpm_mkdir_p(path), 0); /* existing: fine */
    snprintf(path, sizeof path, "%s/a/b/c/", tmpdir);
    assert_int_equal(ddpm_mkdir_p(path), 0); /* trailing slash */
    snprintf(path, sizeof path, "%s/file", tmpdir);
    FILE *f = fopen(path, "w");
    fclose(f);
    assert_int_equal(ddpm_mkdir_p(path), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), "not a folder"));
    snprintf(path, sizeof path, "%s/file/below", tmpdir);
    assert_int_equal(ddpm_mkdir_p(path), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), path));
}

typedef struct {
    const char *text;
    int fail; /* 0 ok, -1 an I/O failure after writing half, or a DDPM_E* code */
} writer;

static int write_text(void *ctx, FILE *f)
{
    const writer *w = ctx;
    size_t n = strlen(w->text);
    if (w->fail) {
        fwrite(w->text, 1, n / 2, f);
        if (w->fail == -1) {
            errno = ENOSPC;
            return -1;
        }
        return ddpm_error(w->fail, "encoder: out of memory");
    }
    return fwrite(w->text, 1, n, f) == n ? 0 : -1;
}

static char *slurp(const char *path)
{
    static char buf[256];
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_atomic_write_replaces_whole_or_keeps_the_old_file(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/out.txt", tmpdir);
    writer w = {"first version\n", 0};
    assert_int_equal(ddpm_atomic_write(path, write_text, &w), 0);
    assert_string_equal(slurp(path), "first version\n");
    w = (writer){"second version\n", 0};
    assert_int_equal(ddpm_atomic_write(path, write_text, &w), 0);
    assert_string_equal(slurp(path), "second version\n");
    /* an I/O failure: DDPM_EIO naming the file and why, the old file intact */
    w = (writer){"third version, never complete\n", -1};
    assert_int_equal(ddpm_atomic_write(path, write_text, &w), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), path));
    assert_non_null(strstr(ddpm_last_error(), strerror(ENOSPC)));
    assert_string_equal(slurp(path), "second version\n");
    /* the writer's own error and message pass through */
    w = (writer){"fourth\n", DDPM_ENOMEM};
    assert_int_equal(ddpm_atomic_write(path, write_text, &w), DDPM_ENOMEM);
    assert_string_equal(ddpm_last_error(), "encoder: out of memory");
    assert_string_equal(slurp(path), "second version\n");
    assert_int_equal(tu_count_entries_containing(tmpdir, ".tmp."), 0);
    /* a folder that does not exist */
    snprintf(path, sizeof path, "%s/no/such/out.txt", tmpdir);
    assert_int_equal(ddpm_atomic_write(path, write_text, &w), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), path));
}

/* In a child that SIGALRM ends after 20 s: ddpm_read_file(path) is refused
 * with `code` and a message holding path and `kind`. Returns the child's exit
 * code: 0 when so, 1 when not, 128 + 14 when the read blocked or ran on. */
static int read_refused_in_child(const char *path, int code, const char *kind)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(20);
        unsigned char *b = NULL;
        size_t n = 0;
        int rc = ddpm_read_file(path, 1 << 20, &b, &n);
        int ok = rc == code && !b && strstr(ddpm_last_error(), path) && strstr(ddpm_last_error(), kind);
        if (!ok)
            fprintf(stderr, "%s: rc %d, '%s'\n", path, rc, ddpm_last_error());
        _exit(ok ? 0 : 1);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The bug report (issue 26, item 4): a FIFO named as a checkpoint blocked its
 * open for ever, and /dev/zero could be read without end. ddpm_read_file, which
 * reads every checkpoint, refuses both before reading a byte, and a folder;
 * a file over the size its format allows is refused before any allocation,
 * and one at the limit is read whole. */
static void test_read_file_refuses_special_and_oversized_files_without_blocking(void **state)
{
    (void)state;
    char fifo[400], file[400];
    snprintf(fifo, sizeof fifo, "%s/fifo", tmpdir);
    snprintf(file, sizeof file, "%s/hundred.bin", tmpdir);
    assert_int_equal(mkfifo(fifo, 0666), 0);
    assert_int_equal(read_refused_in_child(fifo, DDPM_EIO, "FIFO"), 0);
    assert_int_equal(read_refused_in_child("/dev/zero", DDPM_EIO, "character device"), 0);
    assert_int_equal(read_refused_in_child(tmpdir, DDPM_EIO, "folder"), 0);
    unsigned char hundred[100];
    for (int i = 0; i < 100; i++)
        hundred[i] = (unsigned char)(i * 7);
    assert_int_equal(tu_write_file(file, hundred, 100), 0);
    unsigned char *b = NULL;
    size_t n = 0;
    assert_int_equal(ddpm_read_file(file, 99, &b, &n), DDPM_EFORMAT);
    assert_null(b);
    assert_non_null(strstr(ddpm_last_error(), file));
    assert_non_null(strstr(ddpm_last_error(), "more than the 99"));
    assert_int_equal(ddpm_read_file(file, 100, &b, &n), 0);
    assert_int_equal(n, 100);
    assert_memory_equal(b, hundred, 100);
    free(b);
}

static void test_clock_does_not_go_back(void **state)
{
    (void)state;
    double a = ddpm_now_seconds();
    for (int i = 0; i < 1000; i++) {
        double b = ddpm_now_seconds();
        assert_true(b >= a);
        a = b;
    }
    assert_true(a > 0);
}

/* Issue 26, item 2: the cleanup deleted any file named like x.tmp.99999 (a dead
 * pid). It now removes only regular files of exactly the form ddpm_temp_name
 * makes, of a writer that is gone; the user's files stay, whatever their names. */
static void test_stale_cleanup_removes_only_ddpm_temporary_names(void **state)
{
    (void)state;
    char dir[400], path[600];
    snprintf(dir, sizeof dir, "%s/stale", tmpdir);
    assert_int_equal(ddpm_mkdir_p(dir), 0);
    const char *users[] = {"x.tmp.99999", "log.jsonl.tmp.4194303.0", ".x.tmp.4194303.0",
                           ".x" DDPM_TEMP_MARKER "4194303.0.old", ".x" DDPM_TEMP_MARKER "4194303",
                           DDPM_TEMP_MARKER "4194303.0", "x" DDPM_TEMP_MARKER "4194303.0"};
    enum { N_USERS = sizeof users / sizeof *users };
    for (int i = 0; i < N_USERS; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, users[i]);
        assert_int_equal(tu_write_file(path, "mine", 4), 0);
    }
    snprintf(path, sizeof path, "%s/.ckpt" DDPM_TEMP_MARKER "4194303.7", dir); /* pid above pid_max: dead */
    assert_int_equal(tu_write_file(path, "x", 1), 0);
    char live[600]; /* our own pid's name of a write that is not finished is ours too */
    char *name = ddpm_temp_name("folder-of-its-own/y.png");
    assert_non_null(name);
    assert_non_null(strstr(name, "folder-of-its-own/.y.png" DDPM_TEMP_MARKER));
    free(name);
    snprintf(live, sizeof live, "%s/.held" DDPM_TEMP_MARKER "1.0", dir); /* pid 1 is alive */
    assert_int_equal(tu_write_file(live, "x", 1), 0);
    int n = -1;
    assert_int_equal(ddpm_remove_stale_temps(dir, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(access(live, F_OK), 0);
    for (int i = 0; i < N_USERS; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, users[i]);
        if (access(path, F_OK) != 0)
            fprintf(stderr, "removed a user's file: %s\n", users[i]);
        assert_int_equal(access(path, F_OK), 0);
    }
}

/* The start-of-run probe: a folder that takes files passes, and a file-size
 * limit below the size asked for (set in a child, as `ulimit -f` would) is
 * refused naming the folder and the limit; a limit below the test file makes
 * the test write itself fail. Neither leaves a file behind. */
static void test_probe_folder_refuses_a_file_size_limit_and_leaves_nothing(void **state)
{
    (void)state;
    char dir[400];
    snprintf(dir, sizeof dir, "%s/probe", tmpdir);
    assert_int_equal(ddpm_mkdir_p(dir), 0);
    assert_int_equal(ddpm_probe_folder(dir, 1000), 0);
    snprintf(dir, sizeof dir, "%s/probe/missing", tmpdir);
    assert_int_equal(ddpm_probe_folder(dir, 1000), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), "creating a test file failed"));
    snprintf(dir, sizeof dir, "%s/probe", tmpdir);
    const long limits[2] = {100000, 100};
    const char *why[2] = {"file-size limit", "writing a test file failed"};
    for (int k = 0; k < 2; k++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            signal(SIGXFSZ, SIG_IGN); /* as the CLI does: a failed write, not a killed process */
            struct rlimit rl = {(rlim_t)limits[k], (rlim_t)limits[k]};
            setrlimit(RLIMIT_FSIZE, &rl);
            int rc = ddpm_probe_folder(dir, 1000000);
            _exit(rc == DDPM_EIO && strstr(ddpm_last_error(), why[k]) && strstr(ddpm_last_error(), dir) &&
                          strstr(ddpm_last_error(), strerror(EFBIG))
                      ? 0
                      : 1);
        }
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    assert_int_equal(tu_count_entries_containing(dir, DDPM_TEMP_MARKER), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mkdir_p_makes_parents_and_refuses_a_file_in_the_way),
        cmocka_unit_test(test_atomic_write_replaces_whole_or_keeps_the_old_file),
        cmocka_unit_test(test_read_file_refuses_special_and_oversized_files_without_blocking),
        cmocka_unit_test(test_clock_does_not_go_back),
        cmocka_unit_test(test_stale_cleanup_removes_only_ddpm_temporary_names),
        cmocka_unit_test(test_probe_folder_refuses_a_file_size_limit_and_leaves_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
