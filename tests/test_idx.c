/* Tests of the IDX parser (untrusted input: truncation, wrong magic, overflowing
 * sizes) and of `ddpm convert` end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddpm/error.h"
#include "ddpm/idx.h"
#include "ddpm/imageio.h"
#include "testutil.h"

enum { N = 3, ROWS = 2, COLS = 5 };

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    return tu_make_tmpdir(tmpdir, sizeof tmpdir, "idx");
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmpdir);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static uint8_t pixel(int i, int y, int x) { return (uint8_t)(i * 50 + y * 10 + x); }

/* A [N, ROWS, COLS] image file; returns its length. */
static size_t make_images(uint8_t *buf)
{
    put_be32(buf, 0x00000803);
    put_be32(buf + 4, N);
    put_be32(buf + 8, ROWS);
    put_be32(buf + 12, COLS);
    for (int i = 0; i < N; i++)
        for (int y = 0; y < ROWS; y++)
            for (int x = 0; x < COLS; x++)
                buf[16 + (i * ROWS + y) * COLS + x] = pixel(i, y, x);
    return 16 + N * ROWS * COLS;
}

static size_t make_labels(uint8_t *buf, const uint8_t *labels, int n)
{
    put_be32(buf, 0x00000801);
    put_be32(buf + 4, (uint32_t)n);
    memcpy(buf + 8, labels, (size_t)n);
    return 8 + (size_t)n;
}

static void test_generated_image_and_label_files_parse(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t len = make_images(buf);
    ddpm_idx idx;
    assert_int_equal(ddpm_idx_parse(&idx, buf, len, 3, "img"), 0);
    assert_int_equal(idx.n_dims, 3);
    assert_int_equal(idx.dims[0], N);
    assert_int_equal(idx.dims[1], ROWS);
    assert_int_equal(idx.dims[2], COLS);
    assert_int_equal(idx.n_bytes, N * ROWS * COLS);
    assert_ptr_equal(idx.data, buf + 16);
    assert_int_equal(idx.data[(2 * ROWS + 1) * COLS + 4], pixel(2, 1, 4));
    assert_int_equal(ddpm_idx_parse(&idx, buf, len, 0, "img"), 0); /* either kind */

    const uint8_t labels[4] = {9, 0, 3, 255};
    len = make_labels(buf, labels, 4);
    assert_int_equal(ddpm_idx_parse(&idx, buf, len, 1, "lab"), 0);
    assert_int_equal(idx.n_dims, 1);
    assert_int_equal(idx.dims[0], 4);
    assert_memory_equal(idx.data, labels, 4);
}

static void test_every_truncation_is_an_error_not_a_crash(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t len = make_images(buf);
    for (size_t cut = 0; cut < len; cut++) {
        /* a heap copy of exactly `cut` bytes, so ASan sees any read past the end */
        uint8_t *copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, buf, cut);
        ddpm_idx idx;
        assert_int_equal(ddpm_idx_parse(&idx, copy, cut, 3, "cut.idx"), DDPM_EFORMAT);
        assert_non_null(strstr(ddpm_last_error(), "cut.idx"));
        free(copy);
    }
    /* one trailing byte is refused too */
    ddpm_idx idx;
    buf[len] = 0;
    assert_int_equal(ddpm_idx_parse(&idx, buf, len + 1, 3, "long.idx"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "trailing"));
}

static void test_wrong_magic_and_wrong_kind_are_errors(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t len = make_images(buf);
    ddpm_idx idx;
    const uint32_t bad[] = {0x01000803, 0x00010803, 0x00000903, 0x00000d03, 0x00000802,
                            0x00000800, 0x89504e47 /* PNG */};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        put_be32(buf, bad[k]);
        assert_int_equal(ddpm_idx_parse(&idx, buf, len, 0, "bad.idx"), DDPM_EFORMAT);
    }
    make_images(buf);
    assert_int_equal(ddpm_idx_parse(&idx, buf, len, 1, "img.idx"), DDPM_EFORMAT); /* not labels */
    assert_non_null(strstr(ddpm_last_error(), "0x00000801"));
    const uint8_t gz[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
    assert_int_equal(ddpm_idx_parse(&idx, gz, sizeof gz, 3, "x.gz"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "gunzip"));
}

static void test_sizes_that_overflow_or_exceed_the_file_are_errors(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t len = make_images(buf);
    ddpm_idx idx;
    /* product of three 2^32-1 sizes overflows 64 bits */
    put_be32(buf + 4, 0xFFFFFFFFu);
    put_be32(buf + 8, 0xFFFFFFFFu);
    put_be32(buf + 12, 0xFFFFFFFFu);
    assert_int_equal(ddpm_idx_parse(&idx, buf, len, 3, "big.idx"), DDPM_EFORMAT);
    /* sizes whose product wraps to exactly the data length in 32 bits: 2^16 * 2^16 * 30 */
    put_be32(buf + 4, 30);
    put_be32(buf + 8, 1u << 16);
    put_be32(buf + 12, 1u << 16);
    assert_int_equal(ddpm_idx_parse(&idx, buf, len, 3, "wrap.idx"), DDPM_EFORMAT);
    /* a large count with the real image size: more data claimed than present */
    make_images(buf);
    put_be32(buf + 4, 0x7FFFFFFFu);
    assert_int_equal(ddpm_idx_parse(&idx, buf, len, 3, "many.idx"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "truncated"));
    /* zero-sized images */
    make_images(buf);
    put_be32(buf + 8, 0);
    assert_int_equal(ddpm_idx_parse(&idx, buf, 16, 3, "zero.idx"), DDPM_EFORMAT);
}

static const char *write_file(const char *name, const uint8_t *data, size_t len)
{
    static char path[4][256];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return p;
}

static void test_read_from_file_and_missing_file(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t len = make_images(buf);
    const char *path = write_file("images.idx", buf, len);
    ddpm_idx idx;
    assert_int_equal(ddpm_idx_read(&idx, path, 3), 0);
    assert_int_equal(idx.dims[0], N);
    assert_memory_equal(idx.data, buf + 16, N * ROWS * COLS);
    ddpm_idx_free(&idx);
    assert_null(idx.owned);

    char missing[256];
    snprintf(missing, sizeof missing, "%s/missing.idx", tmpdir);
    assert_int_equal(ddpm_idx_read(&idx, missing, 3), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), "missing.idx"));
}

/* Runs `ddpm convert ARGS` through the shell; returns the exit status and the
 * first line of stderr in err. */
static int run_convert(const char *args, char *err, size_t err_len)
{
    char cmd[1024], err_path[300];
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", tmpdir);
    snprintf(cmd, sizeof cmd, "'%s' convert %s 2>'%s' >/dev/null", DDPM_BINARY, args, err_path);
    int status = system(cmd);
    err[0] = '\0';
    FILE *f = fopen(err_path, "r");
    if (f) {
        if (!fgets(err, (int)err_len, f))
            err[0] = '\0';
        fclose(f);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_convert_writes_pngs_flat_and_by_label(void **state)
{
    (void)state;
    uint8_t buf[64], lab[16];
    const uint8_t labels[N] = {7, 2, 7};
    const char *images = write_file("conv.idx", buf, make_images(buf));
    const char *label_file = write_file("conv-labels.idx", lab, make_labels(lab, labels, N));
    char args[900], err[512], path[300];

    snprintf(args, sizeof args, "'%s' '%s/flat/nested' --quiet", images, tmpdir);
    assert_int_equal(run_convert(args, err, sizeof err), 0);
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof path, "%s/flat/nested/%05d.png", tmpdir, i);
        int w, h, c;
        assert_int_equal(ddpm_image_probe(path, &w, &h, &c), 0);
        assert_int_equal(w, COLS);
        assert_int_equal(h, ROWS);
        assert_int_equal(c, 1);
    }
    /* the PNG holds the bytes exactly (square crop aside: load at full width via stb) */
    snprintf(path, sizeof path, "%s/flat/nested/%05d.png", tmpdir, 2);
    uint8_t out[ROWS * ROWS];
    assert_int_equal(ddpm_image_load_u8(path, out, ROWS, 1), 0); /* centre 2 x 2 of 5 x 2 */
    for (int y = 0; y < ROWS; y++)
        for (int x = 0; x < ROWS; x++)
            assert_int_equal(out[y * ROWS + x], pixel(2, y, x + 1));

    /* into a folder that is not empty: refused, one line naming it */
    assert_int_equal(run_convert(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "ddpm: "));
    assert_non_null(strstr(err, "flat/nested"));

    snprintf(args, sizeof args, "'%s' '%s/bylabel' --labels '%s' --limit 2 --quiet", images,
             tmpdir, label_file);
    assert_int_equal(run_convert(args, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/bylabel/7/00000.png", tmpdir);
    assert_int_equal(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/bylabel/2/00001.png", tmpdir);
    assert_int_equal(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/bylabel/7/00002.png", tmpdir); /* past --limit */
    assert_int_equal(access(path, F_OK), -1);
}

static void test_convert_reads_stdin_and_reports_errors_with_exit_codes(void **state)
{
    (void)state;
    uint8_t buf[64];
    const char *images = write_file("stdin.idx", buf, make_images(buf));
    const char *cut = write_file("cut.idx", buf, 20);
    char args[900], err[512];

    snprintf(args, sizeof args, "- '%s/from-stdin' --quiet < '%s'", tmpdir, images);
    assert_int_equal(run_convert(args, err, sizeof err), 0);
    snprintf(args, sizeof args, "%s/from-stdin/00002.png", tmpdir);
    assert_int_equal(access(args, F_OK), 0);

    snprintf(args, sizeof args, "'%s' '%s/never'", cut, tmpdir);
    assert_int_equal(run_convert(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "cut.idx"));
    snprintf(args, sizeof args, "%s/never", tmpdir);
    assert_int_equal(access(args, F_OK), -1); /* nothing created for a bad input */

    snprintf(args, sizeof args, "'%s' '%s/x' --no-such-flag", images, tmpdir);
    assert_int_equal(run_convert(args, err, sizeof err), 2);
    snprintf(args, sizeof args, "'%s'", images);
    assert_int_equal(run_convert(args, err, sizeof err), 2);
    snprintf(args, sizeof args, "'%s' '%s/x' --limit 0", images, tmpdir);
    assert_int_equal(run_convert(args, err, sizeof err), 2);
    assert_int_equal(run_convert("--help", err, sizeof err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generated_image_and_label_files_parse),
        cmocka_unit_test(test_every_truncation_is_an_error_not_a_crash),
        cmocka_unit_test(test_wrong_magic_and_wrong_kind_are_errors),
        cmocka_unit_test(test_sizes_that_overflow_or_exceed_the_file_are_errors),
        cmocka_unit_test(test_read_from_file_and_missing_file),
        cmocka_unit_test(test_convert_writes_pngs_flat_and_by_label),
        cmocka_unit_test(test_convert_reads_stdin_and_reports_errors_with_exit_codes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
