/* cliutil.h: running the ddpm binary from a test (header-only): the command
 * through the shell in a temporary folder, its output files, one-line errors. */
#ifndef DDPM_CLIUTIL_H
#define DDPM_CLIUTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "ddpm/imageio.h"
#include "testutil.h"

/* The folder the commands run in (set by the test's setup). */
static char cu_dir[256];

/* Runs `ddpm ARGS` in cu_dir, stdout to out.txt and stderr to err.txt; returns
 * the exit code. */
static inline int cu_ddpm(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int cu_ddpm(const char *fmt, ...)
{
    char args[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return tu_ddpm_args(cu_dir, args);
}

/* The bytes of cu_dir/NAME (NUL-terminated), or NULL; *size gets the length. */
static inline char *cu_slurp(const char *name, long *size) { return tu_slurp(cu_dir, name, size); }

/* cu_dir/A and cu_dir/B exist and hold the same bytes. */
static inline int cu_same_bytes(const char *a, const char *b)
{
    long na = -1, nb = -2;
    char *x = cu_slurp(a, &na), *y = cu_slurp(b, &nb);
    int same = x && y && na == nb && na >= 0 && !memcmp(x, y, (size_t)na);
    free(x);
    free(y);
    return same;
}

/* cu_dir/A and cu_dir/B decode to the same gray pixels at size x size (their
 * bytes, and so their recipes, may differ). */
static inline int cu_same_pixels(const char *a, const char *b, int size)
{
    char path[512];
    size_t n = (size_t)size * size;
    uint8_t *pa = malloc(n), *pb = malloc(n);
    snprintf(path, sizeof path, "%s/%s", cu_dir, a);
    int same = pa && pb && ddpm_image_load_u8(path, pa, size, 1) == 0;
    snprintf(path, sizeof path, "%s/%s", cu_dir, b);
    same = same && ddpm_image_load_u8(path, pb, size, 1) == 0 && !memcmp(pa, pb, n);
    free(pa);
    free(pb);
    return same;
}

/* cu_dir/NAME with n 8x8 gray PNGs of a pattern that depends on k and mult;
 * returns 0 or -1. */
static inline int cu_make_gray_folder(const char *name, int n, int mult)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    if (mkdir(path, 0777))
        return -1;
    uint8_t px[64];
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < 64; i++)
            px[i] = (uint8_t)((i * (k + 3) * mult) & 255);
        snprintf(path, sizeof path, "%s/%s/%02d.png", cu_dir, name, k);
        if (ddpm_png_write(path, px, 8, 8, 1))
            return -1;
    }
    return 0;
}

/* Prints err.txt when it does not contain needle; returns whether it does. */
static inline int cu_stderr_has(const char *needle)
{
    char *err = cu_slurp("err.txt", NULL);
    int ok = err && strstr(err, needle) != NULL;
    if (!ok)
        fprintf(stderr, "stderr was: %s\n", err ? err : "(none)");
    free(err);
    return ok;
}

/* err.txt is one line "ddpm: ..." that contains needle (printed when not);
 * returns whether it is. */
static inline int cu_stderr_one_line(const char *needle)
{
    char *err = cu_slurp("err.txt", NULL);
    const char *nl = err ? strchr(err, '\n') : NULL;
    int ok = err && !strncmp(err, "ddpm: ", 6) && strstr(err, needle) && nl && nl[1] == '\0';
    if (!ok)
        fprintf(stderr, "stderr was: %s(wanted one line 'ddpm: ...' with '%s')\n", err ? err : "(none)",
                needle);
    free(err);
    return ok;
}

/* cu_dir/NAME does not exist. */
static inline int cu_absent(const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    return stat(path, &st) != 0;
}

#endif
