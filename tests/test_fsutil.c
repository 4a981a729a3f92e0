/* Tests of the shared file helpers: mkdir -p, the atomic write (a failed write
 * keeps the old file and leaves no temporary file), the monotonic clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mkdir_p_makes_parents_and_refuses_a_file_in_the_way),
        cmocka_unit_test(test_atomic_write_replaces_whole_or_keeps_the_old_file),
        cmocka_unit_test(test_clock_does_not_go_back),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
