#include "ddpm/model_fid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/rng.h"

void ddpm_model_fid_config_default(ddpm_model_fid_config *c, const ddpm_model *m)
{
    memset(c, 0, sizeof *c);
    ddpm_sample_files_config files; /* `ddpm sample`'s defaults: one place says what they are */
    ddpm_sample_files_config_default(&files);
    c->batch = files.batch;
    c->seed = files.seed;
    c->sampler = files.sampler;
    if (c->sampler.steps > m->sched.T)
        c->sampler.steps = m->sched.T;
    if (m->cfg.learn_sigma) /* as `ddpm sample` does without --var */
        c->sampler.var = DDPM_VAR_LEARNED;
}

int ddpm_model_fid(double *fid, ddpm_model *m, const ddpm_model_fid_config *c, ddpm_inception *net,
                   const ddpm_fid_stats *ref, ddpm_fid_stats *samples)
{
    if (samples)
        memset(samples, 0, sizeof *samples);
    if (c->n < 2 || c->batch < 1)
        return ddpm_error(DDPM_EINVAL, "FID of a model needs n >= 2 samples and batch >= 1, got n %d, batch %d",
                          c->n, c->batch);
    const char *sha = ddpm_inception_sha256(net);
    if (ref->sha256[0] && strcmp(ref->sha256, sha))
        return ddpm_error(DDPM_EINVAL, "statistics made with other Inception weights (%.12s...) than %.12s...",
                          ref->sha256, sha);
    int F = ddpm_inception_n_features(net);
    if (ref->dim != F)
        return ddpm_error(DDPM_EINVAL, "statistics of %d features, the Inception network gives %d", ref->dim, F);
    int B = c->batch < c->n ? c->batch : c->n, C = m->cfg.in_channels, S = m->cfg.image_size;
    size_t D = ddpm_model_D(m), HW = (size_t)S * S;
    float *x = ddpm_malloc((size_t)B * D, sizeof(float));
    uint8_t *chw = ddpm_malloc(D, 1), *hwc = ddpm_malloc((size_t)B * D, 1);
    float *feat = ddpm_malloc((size_t)c->n * F, sizeof(float));
    ddpm_inception_image *ims = ddpm_calloc((size_t)B, sizeof *ims);
    int rc = !x || !chw || !hwc || !feat || !ims ? DDPM_ENOMEM : DDPM_OK;
    ddpm_rng rng;
    ddpm_rng_init(&rng, c->seed, DDPM_STREAM_SAMPLE);
    ddpm_guide g = {NULL, 1}; /* unconditional, as `ddpm sample` without --class */
    for (int first = 0; !rc && first < c->n; first += B) {
        int b = c->n - first < B ? c->n - first : B;
        rc = ddpm_sample(m, &c->sampler, &g, x, b, first, &rng, NULL);
        for (int k = 0; !rc && k < b; k++) {
            /* the PNG's pixels: [-1, 1] CHW to uint8 HWC */
            ddpm_image_float_to_u8(chw, x + (size_t)k * D, D);
            uint8_t *px = hwc + (size_t)k * D;
            for (int ch = 0; ch < C; ch++)
                for (size_t p = 0; p < HW; p++)
                    px[p * C + ch] = chw[(size_t)ch * HW + p];
            ims[k] = (ddpm_inception_image){px, S, S, C};
        }
        if (!rc)
            rc = ddpm_inception_features(net, feat + (size_t)first * F, ims, b);
    }
    ddpm_fid_stats st = {0};
    if (!rc)
        rc = ddpm_fid_stats_compute(&st, feat, c->n, F);
    if (!rc) {
        snprintf(st.sha256, sizeof st.sha256, "%s", sha);
        rc = ddpm_fid_distance(&st, ref, fid);
    }
    if (!rc && samples)
        *samples = st;
    else
        ddpm_fid_stats_free(&st);
    free(x);
    free(chw);
    free(hwc);
    free(feat);
    free(ims);
    return rc;
}
