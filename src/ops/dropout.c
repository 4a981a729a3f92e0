/* Inverted dropout (Srivastava et al. 2014): kept elements are scaled by 1/(1-p) so
 * that the expectation is unchanged and sampling (p = 0) needs no rescaling.
 *
 * Element i takes lane i % 4 of ddpm_philox(seed, DDPM_STREAM_DROPOUT, counter + i/4),
 * so the mask is a pure function of (seed, counter, i), whatever the thread count.
 * A call uses the counters [counter, counter + ceil(n/4)): the caller advances its
 * counter by that much between calls so that two layers never share a mask. */
#include "ddpm/ops.h"

#include <string.h>

#include "ddpm/rng.h"

#define DROPOUT_PARALLEL_MIN 16384

/* The mask of elements [4 blk, 4 blk + 4) of (seed, counter): 0 with probability p,
 * else keep_scale. 24 random bits centred in their bin: u in (0, 1), P(u < p) = p
 * to 2^-24. */
static inline void mask_block(float m[4], float p, float keep_scale, uint64_t seed, uint64_t counter)
{
    uint32_t w[4];
    ddpm_philox(w, seed, DDPM_STREAM_DROPOUT, counter);
    for (int l = 0; l < 4; l++) {
        const float u = ((float)(w[l] >> 8) + 0.5f) * (1.0f / 16777216.0f);
        m[l] = u < p ? 0.0f : keep_scale;
    }
}

/* p >= 1 drops everything; guarded so that 1/(1-p) is never evaluated. */
static inline float keep_scale_of(float p) { return p < 1.0f ? 1.0f / (1.0f - p) : 0.0f; }

void ddpm_dropout_forward(float *out, const float *in, float p, size_t n, uint64_t seed, uint64_t counter)
{
    if (!(p > 0.0f)) {
        /* p == 0 (sampling): identity, and no random numbers are drawn. */
        if (out != in)
            memcpy(out, in, n * sizeof *out);
        return;
    }
    const float keep_scale = keep_scale_of(p);
    const size_t n_blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
    for (size_t blk = 0; blk < n_blocks; blk++) {
        float m[4];
        mask_block(m, p, keep_scale, seed, counter + blk);
        for (size_t l = 0; l < 4 && blk * 4 + l < n; l++)
            out[blk * 4 + l] = in[blk * 4 + l] * m[l];
    }
}

/* din = beta din + dout * mask, the mask drawn again from (seed, counter): nothing
 * is stored between forward and backward. With beta = 0 din is never read. */
void ddpm_dropout_backward(float *din, float beta, const float *dout, float p, size_t n, uint64_t seed,
                           uint64_t counter)
{
    if (!din)
        return;
    const float keep_scale = keep_scale_of(p);
    const size_t n_blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
    for (size_t blk = 0; blk < n_blocks; blk++) {
        float m[4] = {1.0f, 1.0f, 1.0f, 1.0f};
        if (p > 0.0f)
            mask_block(m, p, keep_scale, seed, counter + blk);
        for (size_t l = 0; l < 4 && blk * 4 + l < n; l++) {
            const size_t i = blk * 4 + l;
            const float d = dout[i] * m[l];
            din[i] = beta == 0.0f ? d : beta * din[i] + d;
        }
    }
}
