/* Statistics "made with other Inception weights" for the FID tests: a few
 * feature vectors of dimension dim, saved under cu_dir/name with a SHA-256
 * that no weights file has. */
#ifndef DDPM_TESTS_FIDUTIL_H
#define DDPM_TESTS_FIDUTIL_H

#include "cliutil.h"
#include "ddpm/fid.h"

static inline void cu_write_foreign_stats(const char *name, int dim)
{
    float *feat = malloc(3 * (size_t)dim * sizeof *feat);
    assert_non_null(feat);
    for (int i = 0; i < 3 * dim; i++)
        feat[i] = (float)((i * 37) % 11);
    ddpm_fid_stats s;
    assert_int_equal(ddpm_fid_stats_compute(&s, feat, 3, dim), 0);
    free(feat);
    snprintf(s.sha256, sizeof s.sha256, "%s", "0123456789abcdef");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    assert_int_equal(ddpm_fid_stats_save(path, &s), 0);
    ddpm_fid_stats_free(&s);
}

#endif
