/* model_fid.h: the FID of a model's samples against reference statistics
 * (fid.h), what `ddpm train --eval-fid` logs during training.
 *
 * n images are sampled from the model as `ddpm sample --seed SEED --n N` draws
 * them (image k's noise depends only on (seed, k), DDPM_STREAM_SAMPLE, so the
 * batch size does not change them), turned into 8-bit pixels as the PNG writer
 * does (imageio.h: u = round((x + 1) 127.5), clamped), featurised by the
 * Inception network in memory and compared with the reference statistics: the
 * same number `ddpm fid` prints for those images written as PNGs and the
 * statistics file. */
#ifndef DDPM_MODEL_FID_H
#define DDPM_MODEL_FID_H

#include <stdint.h>

#include "ddpm/fid.h"
#include "ddpm/inception.h"
#include "ddpm/model.h"
#include "ddpm/sample.h"

typedef struct {
    int n;                       /* samples (>= 2) */
    int batch;                   /* images per network call (default 64) */
    uint64_t seed;               /* noise seed, as `ddpm sample --seed` (default 0) */
    ddpm_sampler_config sampler; /* default: `ddpm sample`'s (sample.h, ddpm_sample_files_config_default)
                                    with its steps limited to the model's T, and the learned
                                    variances of a learn_sigma model */
} ddpm_model_fid_config;

/* The defaults above for model m, with n 0 (to be set). */
void ddpm_model_fid_config_default(ddpm_model_fid_config *c, const ddpm_model *m);

/* *fid of c->n unconditional samples of m against ref, featurised by net. A
 * reference made with other Inception weights than net's is refused
 * (DDPM_EINVAL). samples, when not NULL, receives the samples' statistics
 * (free with ddpm_fid_stats_free). 0 or a negative DDPM_E* with a message. */
int ddpm_model_fid(double *fid, ddpm_model *m, const ddpm_model_fid_config *c, ddpm_inception *net,
                   const ddpm_fid_stats *ref, ddpm_fid_stats *samples);

#endif
