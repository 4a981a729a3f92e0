/* fid.c: FID, KID, statistics files and image folders for them (see
 * include/ddpm/fid.h). */
#include "ddpm/fid.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <stb_image.h>

#include "ddpm/dataset.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/platform.h"
#include "ddpm/rng.h"
#include "ddpm/safetensors.h"

/* LAPACK from OpenBLAS (Fortran calling convention; no LAPACKE header here). */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
             double *work, const int *lwork, int *iwork, const int *liwork, int *info);

enum { STREAM_KID = 24 }; /* Philox stream of the KID subsets */

void ddpm_fid_stats_free(ddpm_fid_stats *s)
{
    if (!s)
        return;
    free(s->mu);
    free(s->sigma);
    s->mu = s->sigma = NULL;
}

static int stats_alloc(ddpm_fid_stats *s, int dim)
{
    s->dim = dim;
    s->mu = ddpm_calloc((size_t)dim, sizeof(double));
    s->sigma = ddpm_calloc((size_t)dim * dim, sizeof(double));
    if (!s->mu || !s->sigma) {
        ddpm_fid_stats_free(s);
        return DDPM_ENOMEM;
    }
    return 0;
}

static int fid_stats_compute(ddpm_fid_stats *s, const float *features, int64_t n, int dim)
{
    memset(s, 0, sizeof *s);
    if (n < 2 || dim < 1)
        return ddpm_error(DDPM_EINVAL, "statistics need at least 2 images (got %lld)", (long long)n);
    if (stats_alloc(s, dim))
        return DDPM_ENOMEM;
    s->n = n;
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < dim; k++)
            s->mu[k] += features[i * dim + k];
    for (int k = 0; k < dim; k++)
        s->mu[k] /= (double)n;
    /* Centred rows in double, 256 at a time, accumulated by dsyrk into the upper triangle. */
    enum { ROWS = 256 };
    double *c = ddpm_malloc((size_t)ROWS * dim, sizeof(double));
    if (!c) {
        ddpm_fid_stats_free(s);
        return DDPM_ENOMEM;
    }
    for (int64_t i0 = 0; i0 < n; i0 += ROWS) {
        int rows = (int)(n - i0 < ROWS ? n - i0 : ROWS);
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < dim; k++)
                c[(size_t)r * dim + k] = features[(i0 + r) * dim + k] - s->mu[k];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, dim, rows, 1.0, c, dim, 1.0, s->sigma, dim);
    }
    free(c);
    for (int a = 0; a < dim; a++)
        for (int b = a; b < dim; b++) {
            double v = s->sigma[(size_t)a * dim + b] / (double)(n - 1);
            s->sigma[(size_t)a * dim + b] = s->sigma[(size_t)b * dim + a] = v;
        }
    return 0;
}

/* Eigenvalues (ascending) into w and, with vectors, the eigenvectors into the
 * columns of a (column-major: as row-major, a's rows are the vectors). */
static int eigen(double *a, double *w, int n, int vectors)
{
    char jobz = vectors ? 'V' : 'N', uplo = 'U';
    int lwork = -1, liwork = -1, info = 0, iwq = 0;
    double wq = 0;
    dsyevd_(&jobz, &uplo, &n, a, &n, w, &wq, &lwork, &iwq, &liwork, &info);
    if (info)
        return ddpm_error(DDPM_EINVAL, "dsyevd workspace query failed (info %d)", info);
    lwork = (int)wq;
    liwork = iwq;
    double *work = ddpm_malloc((size_t)lwork, sizeof(double));
    int *iwork = ddpm_malloc((size_t)(liwork > 0 ? liwork : 1), sizeof(int));
    if (!work || !iwork) {
        free(work);
        free(iwork);
        return DDPM_ENOMEM;
    }
    dsyevd_(&jobz, &uplo, &n, a, &n, w, work, &lwork, iwork, &liwork, &info);
    free(work);
    free(iwork);
    if (info)
        return ddpm_error(DDPM_ENAN, "the eigendecomposition did not converge (dsyevd info %d)", info);
    return 0;
}

static int fid_distance(const ddpm_fid_stats *a, const ddpm_fid_stats *b, double *fid)
{
    if (a->dim != b->dim)
        return ddpm_error(DDPM_EINVAL, "statistics of %d and %d features cannot be compared", a->dim, b->dim);
    int d = a->dim;
    size_t dd = (size_t)d * d;
    double *v = ddpm_malloc(dd, sizeof(double)), *r = ddpm_malloc(dd, sizeof(double));
    double *t = ddpm_malloc(dd, sizeof(double)), *w = ddpm_malloc((size_t)d, sizeof(double));
    int rc = !v || !r || !t || !w ? DDPM_ENOMEM : 0;
    if (!rc) {
        memcpy(v, a->sigma, dd * sizeof(double));
        rc = eigen(v, w, d, 1); /* S1 = V diag(w) V^T; row k of v is eigenvector k (symmetric: layout-free) */
    }
    if (!rc) {
        /* R = S1^(1/2) = V diag(sqrt(w+)) V^T: t = diag(sqrt(w+)) V^T (scaled rows), R = V t. */
        for (int k = 0; k < d; k++) {
            double sq = w[k] > 0.0 ? sqrt(w[k]) : 0.0;
            for (int j = 0; j < d; j++)
                t[(size_t)k * d + j] = sq * v[(size_t)k * d + j];
        }
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, d, 1.0, v, d, t, d, 0.0, r, d);
        /* M = R S2 R, symmetrised against rounding. */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, r, d, b->sigma, d, 0.0, t, d);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, t, d, r, d, 0.0, v, d);
        for (int i = 0; i < d; i++)
            for (int j = i + 1; j < d; j++)
                v[(size_t)i * d + j] = v[(size_t)j * d + i] =
                    0.5 * (v[(size_t)i * d + j] + v[(size_t)j * d + i]);
        rc = eigen(v, w, d, 0);
    }
    if (!rc) {
        double tr_sqrt = 0.0, tr = 0.0, diff = 0.0;
        for (int k = 0; k < d; k++) {
            tr_sqrt += w[k] > 0.0 ? sqrt(w[k]) : 0.0;
            tr += a->sigma[(size_t)k * d + k] + b->sigma[(size_t)k * d + k];
            diff += (a->mu[k] - b->mu[k]) * (a->mu[k] - b->mu[k]);
        }
        *fid = diff + tr - 2.0 * tr_sqrt;
        if (!isfinite(*fid))
            rc = ddpm_error(DDPM_ENAN, "FID is not finite (statistics hold NaN or infinity)");
    }
    free(v);
    free(r);
    free(t);
    free(w);
    return rc;
}

/* m distinct indices below n, from the Philox stream (partial Fisher-Yates). */
static void draw_subset(ddpm_rng *rng, int *perm, int64_t n, int m)
{
    for (int64_t i = 0; i < n; i++)
        perm[i] = (int)i;
    for (int i = 0; i < m; i++) {
        int64_t j = i + (int64_t)ddpm_rng_below(rng, (uint64_t)(n - i));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

/* Sum of k over the m x m kernel matrix of the dot products in g (x.y in double). */
static double kernel_sum(const double *g, int m, int d, int skip_diagonal)
{
    double s = 0.0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++) {
            if (skip_diagonal && i == j)
                continue;
            double u = g[(size_t)i * m + j] / d + 1.0;
            s += u * u * u;
        }
    return s;
}

static int fid_kid(const float *fa, int64_t na, const float *fb, int64_t nb, int dim, int n_subsets,
                   int subset_size, uint64_t seed, double *mean, double *std)
{
    int64_t m64 = subset_size;
    if (na < m64)
        m64 = na;
    if (nb < m64)
        m64 = nb;
    if (m64 < 2 || n_subsets < 1)
        return ddpm_error(DDPM_EINVAL, "KID needs at least 2 images in each set and one subset");
    int m = (int)m64;
    double *x = ddpm_malloc((size_t)m * dim, sizeof(double)),
           *y = ddpm_malloc((size_t)m * dim, sizeof(double));
    double *g = ddpm_malloc((size_t)m * m, sizeof(double)),
           *vals = ddpm_malloc((size_t)n_subsets, sizeof(double));
    int *pa = ddpm_malloc((size_t)na, sizeof(int)), *pb = ddpm_malloc((size_t)nb, sizeof(int));
    int rc = !x || !y || !g || !vals || !pa || !pb ? DDPM_ENOMEM : 0;
    ddpm_rng rng;
    ddpm_rng_init(&rng, seed, STREAM_KID);
    for (int s = 0; s < n_subsets && !rc; s++) {
        draw_subset(&rng, pa, na, m);
        draw_subset(&rng, pb, nb, m);
        for (int i = 0; i < m; i++)
            for (int k = 0; k < dim; k++) {
                x[(size_t)i * dim + k] = fa[(size_t)pa[i] * dim + k];
                y[(size_t)i * dim + k] = fb[(size_t)pb[i] * dim + k];
            }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, dim, 1.0, x, dim, x, dim, 0.0, g, m);
        double kxx = kernel_sum(g, m, dim, 1);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, dim, 1.0, y, dim, y, dim, 0.0, g, m);
        double kyy = kernel_sum(g, m, dim, 1);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, dim, 1.0, x, dim, y, dim, 0.0, g, m);
        double kxy = kernel_sum(g, m, dim, 0);
        vals[s] = (kxx + kyy) / ((double)m * (m - 1)) - 2.0 * kxy / ((double)m * m);
    }
    if (!rc) {
        double sum = 0.0, sq = 0.0;
        for (int s = 0; s < n_subsets; s++)
            sum += vals[s];
        *mean = sum / n_subsets;
        for (int s = 0; s < n_subsets; s++)
            sq += (vals[s] - *mean) * (vals[s] - *mean);
        *std = sqrt(sq / n_subsets);
    }
    free(x);
    free(y);
    free(g);
    free(vals);
    free(pa);
    free(pb);
    return rc;
}

/* ---- statistics files --------------------------------------------------------- */

/* The public entry points hold OpenMP at one thread around their BLAS and
 * LAPACK calls (platform.h), so the numbers do not depend on --threads. */
int ddpm_fid_stats_compute(ddpm_fid_stats *s, const float *features, int64_t n, int dim)
{
    const int held = ddpm_blas_hold();
    const int rc = fid_stats_compute(s, features, n, dim);
    ddpm_blas_release(held);
    return rc;
}

int ddpm_fid_distance(const ddpm_fid_stats *a, const ddpm_fid_stats *b, double *fid)
{
    const int held = ddpm_blas_hold();
    const int rc = fid_distance(a, b, fid);
    ddpm_blas_release(held);
    return rc;
}

int ddpm_fid_kid(const float *fa, int64_t na, const float *fb, int64_t nb, int dim, int n_subsets,
                 int subset_size, uint64_t seed, double *mean, double *std)
{
    const int held = ddpm_blas_hold();
    const int rc = fid_kid(fa, na, fb, nb, dim, n_subsets, subset_size, seed, mean, std);
    ddpm_blas_release(held);
    return rc;
}

int ddpm_fid_stats_save(const char *path, const ddpm_fid_stats *s)
{
    size_t d = (size_t)s->dim, dd = d * d;
    float *buf = ddpm_malloc(2 * (d + dd), sizeof(float));
    if (!buf)
        return DDPM_ENOMEM;
    float *mu = buf, *mu_lo = buf + d, *sg = buf + 2 * d, *sg_lo = sg + dd;
    for (size_t k = 0; k < d; k++) {
        mu[k] = (float)s->mu[k];
        mu_lo[k] = (float)(s->mu[k] - (double)mu[k]);
    }
    for (size_t k = 0; k < dd; k++) {
        sg[k] = (float)s->sigma[k];
        sg_lo[k] = (float)(s->sigma[k] - (double)sg[k]);
    }
    char n[32], dims[32];
    snprintf(n, sizeof n, "%lld", (long long)s->n);
    snprintf(dims, sizeof dims, "%d", s->dim);
    ddpm_st_tensor t[4] = {
        {"mu", mu, 1, {s->dim}},
        {"mu.lo", mu_lo, 1, {s->dim}},
        {"sigma", sg, 2, {s->dim, s->dim}},
        {"sigma.lo", sg_lo, 2, {s->dim, s->dim}},
    };
    ddpm_st_meta meta[4] = {
        {"format", "ddpm-fid-stats"}, {"n", n}, {"dims", dims}, {"inception_sha256", s->sha256}};
    int rc = ddpm_safetensors_write(path, t, 4, meta, 4);
    free(buf);
    return rc;
}

int ddpm_fid_stats_load(ddpm_fid_stats *s, const char *path, const char *sha256)
{
    memset(s, 0, sizeof *s);
    ddpm_st_file *f = NULL;
    int rc = ddpm_safetensors_open(&f, path);
    if (rc)
        return rc;
    const char *format = ddpm_safetensors_meta(f, "format"), *n = ddpm_safetensors_meta(f, "n");
    const char *dims = ddpm_safetensors_meta(f, "dims"), *sha = ddpm_safetensors_meta(f, "inception_sha256");
    long long n_images = 0;
    int dim = 0;
    char end;
    if (!format || strcmp(format, "ddpm-fid-stats") || !n || !dims || !sha ||
        sscanf(n, "%lld%c", &n_images, &end) != 1 || sscanf(dims, "%d%c", &dim, &end) != 1 || n_images < 2 ||
        dim < 1 || dim > 65536) {
        ddpm_safetensors_close(f);
        return ddpm_error(DDPM_EFORMAT, "%s: not a statistics file of ddpm fid --save-stats", path);
    }
    if (sha256 && strcmp(sha, sha256)) {
        /* the message first: sha lives in the file's header, freed by close */
        rc = ddpm_error(
            DDPM_EFORMAT,
            "%s: statistics made with other Inception weights (SHA-256 %.8s..., these are %.8s...)", path,
            sha, sha256);
        ddpm_safetensors_close(f);
        return rc;
    }
    if ((rc = stats_alloc(s, dim))) {
        ddpm_safetensors_close(f);
        return rc;
    }
    size_t d = (size_t)dim, dd = d * d;
    float *buf = ddpm_malloc(2 * (d + dd), sizeof(float));
    if (!buf)
        rc = DDPM_ENOMEM;
    if (!rc)
        rc = ddpm_safetensors_read_f32(f, "mu", buf, d);
    if (!rc)
        rc = ddpm_safetensors_read_f32(f, "mu.lo", buf + d, d);
    if (!rc)
        rc = ddpm_safetensors_read_f32(f, "sigma", buf + 2 * d, dd);
    if (!rc)
        rc = ddpm_safetensors_read_f32(f, "sigma.lo", buf + 2 * d + dd, dd);
    for (size_t k = 0; k < d && !rc; k++)
        s->mu[k] = (double)buf[k] + (double)buf[d + k];
    for (size_t k = 0; k < dd && !rc; k++)
        s->sigma[k] = (double)buf[2 * d + k] + (double)buf[2 * d + dd + k];
    for (size_t k = 0; k < dd && !rc; k++)
        if (!isfinite(s->sigma[k]) || (k < d && !isfinite(s->mu[k])))
            rc = ddpm_error(DDPM_EFORMAT, "%s: statistics hold a value that is not finite", path);
    free(buf);
    s->n = n_images;
    snprintf(s->sha256, sizeof s->sha256, "%s", sha);
    ddpm_safetensors_close(f);
    if (rc)
        ddpm_fid_stats_free(s);
    return rc;
}

/* ---- folders ---------------------------------------------------------------------- */

void ddpm_fid_free_paths(char **paths, int n)
{
    for (int k = 0; k < n; k++)
        free(paths[k]);
    free(paths);
}

int ddpm_fid_list_images(const char *dir, char ***paths, int *n)
{
    /* dataset.c's scan: each real folder once (symlink loops), the depth and count bounds */
    return ddpm_dataset_list_images(dir, NULL, paths, n);
}

/* An image's pixels at its own size: gray files as 1 channel, others as RGB
 * (alpha dropped, as PIL's convert("RGB")). */
static int load_native(const char *path, ddpm_inception_image *im)
{
    int w, h, c;
    int rc = ddpm_image_probe(path, &w, &h, &c); /* the size limits, before decoding */
    if (rc)
        return rc;
    int want = c <= 2 ? 1 : 3;
    uint8_t *px = stbi_load(path, &w, &h, &c, want);
    if (!px) {
        const char *why = stbi_failure_reason();
        return ddpm_error(DDPM_EFORMAT, "%s: cannot decode (%s)", path, why ? why : "unknown error");
    }
    *im = (ddpm_inception_image){px, h, w, want};
    return 0;
}

int ddpm_fid_features(ddpm_inception *net, char *const *paths, int n, int batch, float **features,
                      ddpm_fid_progress_fn progress, void *user)
{
    int D = ddpm_inception_n_features(net);
    *features = NULL;
    if (batch < 1)
        batch = 1;
    float *feat = ddpm_malloc((size_t)(n ? n : 1) * D, sizeof(float));
    ddpm_inception_image *ims = ddpm_calloc((size_t)batch, sizeof *ims);
    int rc = !feat || !ims ? DDPM_ENOMEM : 0;
    for (int i0 = 0; i0 < n && !rc; i0 += batch) {
        int m = n - i0 < batch ? n - i0 : batch;
        int loaded = 0;
        for (; loaded < m && !rc; loaded++)
            rc = load_native(paths[i0 + loaded], &ims[loaded]);
        if (rc)
            loaded--;
        if (!rc)
            rc = ddpm_inception_features(net, feat + (size_t)i0 * D, ims, m);
        for (int k = 0; k < loaded; k++)
            stbi_image_free((void *)ims[k].pixels);
        if (!rc && progress)
            progress(user, i0 + m, n);
    }
    free(ims);
    if (rc) {
        free(feat);
        return rc;
    }
    *features = feat;
    return 0;
}
