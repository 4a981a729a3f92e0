/* Inverted dropout (Srivastava et al. 2014): kept elements are scaled by 1/(1-p) so
 * that the expectation is unchanged and sampling (p = 0) needs no rescaling.
 * Forward draws the mask and saves it as bits (bit i % 8 of byte i / 8 set: kept);
 * backward reads them instead of drawing the mask again.
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

size_t ddpm_dropout_mask_bytes(size_t n)
{
    return (n + 7) / 8;
}

void ddpm_dropout_forward(float *out, uint8_t *mask, const float *in, float p, size_t n, uint64_t seed,
                          uint64_t counter)
{
    const size_t n_bytes = ddpm_dropout_mask_bytes(n);
    if (!(p > 0.0f)) {
        /* p == 0 (sampling): identity, and no random numbers are drawn. */
        if (out != in)
            memcpy(out, in, n * sizeof *out);
        if (mask)
            memset(mask, 0xff, n_bytes);
        return;
    }
    const float keep_scale = keep_scale_of(p);
    const size_t n_blocks = (n + 3) / 4;
    /* a byte of the mask is two blocks of four: no two threads write one byte */
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
    for (size_t byte = 0; byte < n_bytes; byte++) {
        float m[8] = {0}; /* m[4..7] unused past the last block */
        mask_block(m, p, keep_scale, seed, counter + 2 * byte);
        if (2 * byte + 1 < n_blocks)
            mask_block(m + 4, p, keep_scale, seed, counter + 2 * byte + 1);
        unsigned bits = 0;
        for (size_t l = 0; l < 8 && 8 * byte + l < n; l++) {
            out[8 * byte + l] = in[8 * byte + l] * m[l];
            bits |= (unsigned)(m[l] != 0.0f) << l;
        }
        if (mask)
            mask[byte] = (uint8_t)bits;
    }
}

/* din = beta din + dout * mask, the mask read from forward's bits: the same
 * product as forward's, so beta = 0 on forward's input gives forward's output.
 * With beta = 0 din is never read. */
void ddpm_dropout_backward(float *din, float beta, const float *dout, const uint8_t *mask, float p, size_t n)
{
    if (!din)
        return;
    const float keep_scale = keep_scale_of(p);
#pragma omp parallel for simd schedule(static) if (n > DROPOUT_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        const float m = !(p > 0.0f) ? 1.0f : (mask[i / 8] >> (i % 8)) & 1u ? keep_scale : 0.0f;
        const float d = dout[i] * m;
        din[i] = beta == 0.0f ? d : beta * din[i] + d;
    }
}
