/* fid.h: Frechet Inception Distance and Kernel Inception Distance of two image
 * sets, from Inception features (inception.h), and statistics files.
 *
 * FID (Heusel et al. 2017, as pytorch-fid computes it):
 *     |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))
 * with mu the mean and S the unbiased covariance (divisor n - 1) of the
 * features, all in double. Tr((S1 S2)^(1/2)) is the sum of the square roots of
 * the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2), which has the
 * eigenvalues of S1 S2 (two symmetric eigendecompositions, LAPACK dsyevd;
 * eigenvalues below 0, which are rounding, count as 0).
 *
 * KID (Binkowski et al. 2018, as torch-fidelity computes it): the unbiased
 * MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3 between m features drawn
 * without replacement from each set, averaged over n_subsets draws (defaults
 * 100 and 1000, m limited to the smaller set); std is the population standard
 * deviation over the subsets. The draws are Philox streams of a seed, so KID is
 * the same on every run.
 *
 * Statistics file (`ddpm fid --save-stats`): a safetensors file with float32
 * tensors mu [d], sigma [d, d] and their float32 remainders mu.lo, sigma.lo
 * (value - (float)value), which together carry each double to 2^-48 relative;
 * metadata format "ddpm-fid-stats", n (images), dims, and inception_sha256 (the
 * SHA-256 of the weights file that made the features). */
#ifndef DDPM_FID_H
#define DDPM_FID_H

#include <stdint.h>

#include "ddpm/inception.h"

typedef struct {
    int dim;
    int64_t n;       /* images */
    double *mu;      /* [dim] */
    double *sigma;   /* [dim, dim] */
    char sha256[65]; /* of the Inception weights; "" if unknown */
} ddpm_fid_stats;

/* mu and sigma of features[n, dim] (n >= 2). */
int ddpm_fid_stats_compute(ddpm_fid_stats *s, const float *features, int64_t n, int dim);
void ddpm_fid_stats_free(ddpm_fid_stats *s);

/* FID of two statistics of the same dimension. */
int ddpm_fid_distance(const ddpm_fid_stats *a, const ddpm_fid_stats *b, double *fid);

enum { DDPM_KID_SUBSETS = 100, DDPM_KID_SUBSET_SIZE = 1000 };
/* KID mean and std over subsets (see above); subset size min(subset_size, na, nb) >= 2. */
int ddpm_fid_kid(const float *fa, int64_t na, const float *fb, int64_t nb, int dim, int n_subsets,
                 int subset_size, uint64_t seed, double *mean, double *std);

/* Writes / reads a statistics file (written atomically). Loading checks the
 * format, shapes and values; a file made with other weights than `sha256`
 * (when not NULL) is refused. */
int ddpm_fid_stats_save(const char *path, const ddpm_fid_stats *s);
int ddpm_fid_stats_load(ddpm_fid_stats *s, const char *path, const char *sha256);

/* The image files under dir, as the training data's scan finds them
 * (ddpm_dataset_list_images: recursively, each real folder once whatever links
 * lead to it, at most DDPM_DATASET_MAX_DEPTH deep, sorted bytewise, names
 * starting with '.' skipped, only files stb_image can read by their header).
 * *paths is an array of *n strings; free with ddpm_fid_free_paths. */
int ddpm_fid_list_images(const char *dir, char ***paths, int *n);
void ddpm_fid_free_paths(char **paths, int n);

/* Progress after each batch: images done of total. */
typedef void (*ddpm_fid_progress_fn)(void *user, int done, int total);

/* Features [n, n_features] (allocated, caller frees) of the images at paths,
 * batch images at a time. */
int ddpm_fid_features(ddpm_inception *net, char *const *paths, int n, int batch, float **features,
                      ddpm_fid_progress_fn progress, void *user);

#endif
