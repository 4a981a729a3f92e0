/* testutil.h: shared helpers for the cmocka tests (header-only). */
#ifndef DDPM_TESTUTIL_H
#define DDPM_TESTUTIL_H

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/crc32c.h"
#include "ddpm/loss.h"
#include "ddpm/model.h"
#include "ddpm/sample.h"
#include "ddpm/rng.h"
#include "ddpm/unet.h"

/* A model over a stub network function whose answer a test knows: images of
 * C x S x S values, the output of kind pred (and v after it with learn_sigma). */
static inline void tu_stub_model(ddpm_model *m, int C, int S, ddpm_prediction pred, int learn_sigma,
                                 const ddpm_schedule *s, ddpm_net_fn fn, void *ctx)
{
    ddpm_unet_config cfg;
    ddpm_unet_config_default(&cfg);
    cfg.in_channels = C;
    cfg.image_size = S;
    cfg.prediction = pred;
    cfg.learn_sigma = learn_sigma;
    cfg.n_classes = 0;
    ddpm_model_from_fn(m, &cfg, s, fn, ctx);
}

/* ddpm_loss with the batch and the output's meaning spelled out. */
static inline double tu_loss(float *d_out, float *target, double *term, const float *out, const float *x0,
                             const float *eps, const float *x_t, const int *i, const double *weight, int B,
                             int B_mean, size_t D, ddpm_prediction pred, int learn_sigma, const ddpm_loss_config *c,
                             const ddpm_schedule *s)
{
    ddpm_loss_batch b = {out, x0, eps, x_t, i, weight, B, B_mean};
    ddpm_head h = {s, pred, learn_sigma, D};
    return ddpm_loss(d_out, target, term, &b, &h, c);
}

/* One step of the ancestral sampler (DDIM: i_prev >= -1 and eta) from a raw
 * output `out` of kind pred at step index i, with v (learned variances; may be
 * NULL), converted by ddpm_pred_convert as the model converts it. */
static inline void tu_sampler_step(float *x_prev, float *x0_out, const float *x_t, ddpm_prediction pred,
                                   const float *out, const float *v, const float *z, int i, size_t D,
                                   const ddpm_schedule *s, ddpm_var_kind var, int clip, int ddim, int i_prev,
                                   float eta)
{
    float *o = (float *)malloc(2 * D * sizeof(float)), *x0 = (float *)malloc(D * sizeof(float));
    float *mean = (float *)malloc(D * sizeof(float)), *eps = (float *)malloc(D * sizeof(float));
    double *logvar = (double *)malloc(D * sizeof(double));
    memcpy(o, out, D * sizeof(float));
    if (v)
        memcpy(o + D, v, D * sizeof(float));
    ddpm_head h = {s, pred, v != NULL, D};
    ddpm_pred_out po = {eps, x0, ddim ? NULL : mean, !ddim && v && var == DDPM_VAR_LEARNED ? logvar : NULL};
    if (ddpm_pred_convert(&po, &h, o, x_t, i))
        abort();
    if (ddim)
        ddpm_ddim_step(x_prev, x0_out, x_t, x0, eps, z, i, i_prev, eta, D, s, clip);
    else
        ddpm_ddpm_step(x_prev, x0_out, x_t, x0, mean, po.logvar, z, i, D, s, var, clip);
    free(o);
    free(x0);
    free(mean);
    free(eps);
    free(logvar);
}

static inline void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    ddpm_rng rng;
    ddpm_rng_init(&rng, seed, 99);
    ddpm_rng_uniform_fill(&rng, x, n);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * x[i];
}

static inline float *tu_alloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p)
        abort();
    return p;
}

/* A scalar function of the parameters under test, evaluated in double: the tests
 * use L = sum_i r_i * out_i for a fixed random projection r. */
typedef double (*tu_scalar_fn)(void *ctx);

/* Central finite differences of f with respect to every element of x, compared
 * with analytic[]: passes when |fd - an| <= atol + rtol * max(|fd|, |an|) for every
 * element. Prints the name, the worst element and the first values on failure.
 * Returns the number of failing elements. */
static inline int tu_check_grad(const char *name, float *x, const float *analytic, size_t n,
                                tu_scalar_fn f, void *ctx, float h, double atol, double rtol)
{
    int n_bad = 0;
    double worst = 0.0;
    size_t worst_i = 0;
    double worst_fd = 0, worst_an = 0;
    for (size_t i = 0; i < n; i++) {
        float saved = x[i];
        x[i] = saved + h;
        double fp = f(ctx);
        x[i] = saved - h;
        double fm = f(ctx);
        x[i] = saved;
        double fd = (fp - fm) / (2.0 * (double)h);
        double an = analytic[i];
        double diff = fabs(fd - an);
        double allowed = atol + rtol * fmax(fabs(fd), fabs(an));
        if (diff > allowed)
            n_bad++;
        if (diff - allowed > worst || i == 0) {
            worst = diff - allowed;
            worst_i = i;
            worst_fd = fd;
            worst_an = an;
        }
    }
    if (n_bad) {
        fprintf(stderr, "gradient check %s: %d of %zu elements off; worst at %zu: fd %.8g analytic %.8g\n",
                name, n_bad, n, worst_i, worst_fd, worst_an);
        for (size_t i = 0; i < n && i < 6; i++)
            fprintf(stderr, "  [%zu] analytic %.8g\n", i, (double)analytic[i]);
    }
    return n_bad;
}

/* max |a - b| over n elements, with the first index where it occurs. */
static inline double tu_max_abs_diff(const float *a, const float *b, size_t n, size_t *at)
{
    double m = 0;
    size_t where = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) {
            m = d;
            where = i;
        }
    }
    if (at)
        *at = where;
    return m;
}

/* max |a - b| over n elements relative to max |b| (1 if b is all zero). */
static inline double tu_max_rel_diff(const float *a, const float *b, size_t n)
{
    double d = tu_max_abs_diff(a, b, n, NULL), m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)b[i]));
    return d / (m > 0 ? m : 1);
}

/* A new empty folder /tmp/ddpm-test-<tag>-XXXXXX in dir[size]; 0 or -1. */
static inline int tu_make_tmpdir(char *dir, size_t size, const char *tag)
{
    snprintf(dir, size, "/tmp/ddpm-test-%s-XXXXXX", tag);
    return mkdtemp(dir) ? 0 : -1;
}

/* rm -rf dir; 0 or -1. */
static inline int tu_remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The whole file in a malloc'ed buffer (*n bytes); NULL if it cannot be read. */
static inline unsigned char *tu_read_file(const char *path, size_t *n)
{
    *n = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    unsigned char *b = NULL;
    long size = fseek(fp, 0, SEEK_END) == 0 ? ftell(fp) : -1;
    if (size >= 0 && fseek(fp, 0, SEEK_SET) == 0 && (b = malloc(size > 0 ? (size_t)size : 1)) &&
        fread(b, 1, (size_t)size, fp) != (size_t)size) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    if (b)
        *n = (size_t)size;
    return b;
}

/* The tensor bytes of a safetensors file (everything after its JSON header,
 * which a checkpoint also uses for the run's elapsed seconds and config), in a
 * malloc'ed buffer of *n bytes; NULL if the file cannot be read or is not one. */
static inline unsigned char *tu_checkpoint_tensors(const char *path, size_t *n)
{
    size_t len = 0;
    unsigned char *b = tu_read_file(path, &len);
    *n = 0;
    if (!b || len < 8) {
        free(b);
        return NULL;
    }
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | b[i];
    if (h > len - 8) {
        free(b);
        return NULL;
    }
    *n = len - 8 - (size_t)h;
    memmove(b, b + 8 + h, *n);
    return b;
}

/* A forged file: after a test edits the header of a .safetensors file in
 * memory (b[0..size)), its header checksum (safetensors.h: the 8 hex digits
 * after the header's first bytes, the CRC-32C of length field and header with
 * those digits as "00000000") is made to match again. A header without one
 * is left as it is. Returns 0, or -1 when b is not such a file. */
static inline int tu_reseal_header(unsigned char *b, size_t size)
{
    static const char prefix[] = "{\"__metadata__\":{\"header_crc32c\":\"";
    const size_t at = 8 + sizeof prefix - 1;
    if (size < 8)
        return -1;
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | b[i];
    if (h > size - 8)
        return -1;
    if (h < sizeof prefix + 8 || memcmp(b + 8, prefix, sizeof prefix - 1))
        return 0;
    memcpy(b + at, "00000000", 8);
    char hex[9];
    snprintf(hex, sizeof hex, "%08x", (unsigned)ddpm_crc32c(0, b, 8 + (size_t)h));
    memcpy(b + at, hex, 8);
    return 0;
}

/* Writes n bytes to path (created or truncated); 0 or -1. */
static inline int tu_write_file(const char *path, const void *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    int ok = fwrite(b, 1, n, fp) == n;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

/* "dir/name" in a static buffer (valid until the next call). */
static inline const char *tu_path(const char *dir, const char *name)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

/* Entries of dir (including dot files) whose name contains part; -1 if dir
 * cannot be read. */
static inline int tu_count_entries_containing(const char *dir, const char *part)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, part))
            n++;
    closedir(d);
    return n;
}

/* The bytes of dir/name, NUL-terminated (malloc'ed), or NULL when it cannot be
 * opened; *size (may be NULL) gets the length, or -1 when the read fell short. */
static inline char *tu_slurp(const char *dir, const char *name, long *size)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = calloc((size_t)(n > 0 ? n : 0) + 1, 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        buf[0] = '\0';
        n = -1;
    }
    fclose(f);
    if (size)
        *size = n;
    return buf;
}

#ifdef DDPM_BINARY
#include <sys/wait.h>
/* Runs `ddpm ARGS` through the shell in dir, stdout to dir/out.txt and stderr to
 * dir/err.txt; returns the exit code (128 + signal if killed). */
static inline int tu_ddpm_args(const char *dir, const char *args)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s >out.txt 2>err.txt", dir, DDPM_BINARY, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
/* tu_ddpm_args with printf-style ARGS. */
static inline int tu_ddpm(const char *dir, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int tu_ddpm(const char *dir, const char *fmt, ...)
{
    char args[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return tu_ddpm_args(dir, args);
}
#endif

/* |a - b| <= tol, printing both values on failure (cmocka 1.1.6 has no
 * assert_double_equal). Include <cmocka.h> before this header to use it. */
#ifdef cmocka_unit_test
#define assert_close(a, b, tol)                                                              \
    do {                                                                                     \
        double tu_a_ = (double)(a), tu_b_ = (double)(b), tu_t_ = (double)(tol);              \
        if (!(fabs(tu_a_ - tu_b_) <= tu_t_)) {                                               \
            fprintf(stderr, "%s:%d: %s = %.12g, %s = %.12g, |diff| %.3g > %.3g\n", __FILE__,  \
                    __LINE__, #a, tu_a_, #b, tu_b_, fabs(tu_a_ - tu_b_), tu_t_);              \
            fail();                                                                          \
        }                                                                                    \
    } while (0)
/* got[i] == prefill + times * g[i] for every i: a backward pass called `times`
 * times on gradients prefilled with `prefill` accumulated instead of overwriting. */
static inline void tu_expect_accumulated(const char *name, const float *got, const float *g, size_t n,
                                         float prefill, int times)
{
    for (size_t i = 0; i < n; i++) {
        const double want = (double)prefill + times * (double)g[i];
        /* float rounding of the sum, a few ulps of |want| */
        if (fabs((double)got[i] - want) > 1e-6 * (1.0 + fabs(want)))
            fail_msg("%s[%zu] = %.8g after %d backward calls on prefill %g, want %.8g "
                     "(gradient %.8g): the backward overwrote instead of accumulating",
                     name, i, (double)got[i], times, (double)prefill, want, (double)g[i]);
    }
}
#endif

/* The number after "key": in a JSON text (NAN if absent). */
static inline double tu_json_number(const char *text, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(text, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* x0[n] on the 256-level grid in [-1, 1] from seed, with both ends present. */
static inline void tu_grid_image(float *x0, size_t n, uint64_t seed)
{
    tu_fill_uniform(x0, n, seed, 0, 1);
    for (size_t d = 0; d < n; d++)
        x0[d] = (float)floor(x0[d] * 255.999) / 127.5f - 1.0f;
    x0[0] = -1.0f, x0[1] = 1.0f;
}

/* The tiny U-Net of the gradient and sampler tests: 8x8 gray, ch 8, ch_mult
 * 1,2, one res block, no attention, 4 groups; the rest as the defaults. */
static inline void tu_tiny_unet_config(ddpm_unet_config *c)
{
    ddpm_unet_config_default(c);
    c->in_channels = 1, c->image_size = 8, c->ch = 8, c->n_levels = 2, c->ch_mult[1] = 2;
    c->num_res_blocks = 1, c->n_attn = 0, c->groups = 4;
}

#endif
