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
    /* chunks of DDPM_PHILOX_BLOCK blocks of four (64 elements, 8 mask bytes): the
     * counters of a chunk are drawn at once as vector code, and no two threads
     * write one byte of the mask */
    enum { CHUNK = 4 * DDPM_PHILOX_BLOCK };
    const size_t n_chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
    for (size_t c = 0; c < n_chunks; c++) {
        uint32_t w[CHUNK];
        float m[CHUNK];
        ddpm_philox_block(w, seed, DDPM_STREAM_DROPOUT, counter + c * DDPM_PHILOX_BLOCK);
        for (int l = 0; l < CHUNK; l++) {
            /* 24 random bits centred in their bin: u in (0, 1), P(u < p) = p to 2^-24 */
            const float u = ((float)(w[l] >> 8) + 0.5f) * (1.0f / 16777216.0f);
            m[l] = u < p ? 0.0f : keep_scale;
        }
        const size_t i0 = c * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
        for (size_t l = 0; l < len; l++)
            out[i0 + l] = in[i0 + l] * m[l];
        if (mask)
            for (size_t byte = 0; byte < (len + 7) / 8; byte++) {
                unsigned bits = 0;
                for (size_t l = 0; l < 8 && 8 * byte + l < len; l++)
                    bits |= (unsigned)(m[8 * byte + l] != 0.0f) << l;
                mask[i0 / 8 + byte] = (uint8_t)bits;
            }
    }
}

/* The 8 elements of one mask byte, m its 8 mask values: di = d m, or beta di + d m
 * when accumulate. The products go through t, so that all of d is read before di
 * is written (di may be d: the recompute runs in place) and the 8 are one vector
 * operation. */
static inline void backward8(float *di, const float *d, const float *m, int accumulate, float beta)
{
    float t[8];
    for (int l = 0; l < 8; l++)
        t[l] = d[l] * m[l];
    if (accumulate)
        for (int l = 0; l < 8; l++)
            di[l] = beta * di[l] + t[l];
    else
        for (int l = 0; l < 8; l++)
            di[l] = t[l];
}

/* din = beta din + dout * mask, the mask read from forward's bits: the same
 * product as forward's, so beta = 0 on forward's input gives forward's output.
 * With beta = 0 din is never read.
 * The bits are expanded through a table of the 256 bytes' 8 mask values, so that
 * each byte's 8 elements are one vector product; the mask[i / 8] >> i % 8 of
 * each element is a gather and a branch, which gcc does not vectorise. */
void ddpm_dropout_backward(float *din, float beta, const float *dout, const uint8_t *mask, float p, size_t n)
{
    if (!din)
        return;
    /* p == 0 (sampling): the mask is 1 everywhere, and no bits are read */
    const int all = !(p > 0.0f);
    const float keep_scale = all ? 1.0f : keep_scale_of(p);
    float table[256][8];
    for (int b = 0; b < 256; b++)
        for (int l = 0; l < 8; l++)
            table[b][l] = (b >> l) & 1 ? keep_scale : 0.0f;
    const size_t n_bytes = ddpm_dropout_mask_bytes(n);
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
    for (size_t byte = 0; byte < n_bytes; byte++) {
        const float *m = table[all ? 0xff : mask[byte]];
        float *di = din + 8 * byte;
        const float *d = dout + 8 * byte;
        if (8 * byte + 8 <= n) {
            backward8(di, d, m, beta != 0.0f, beta);
        } else {
            for (size_t l = 0; 8 * byte + l < n; l++)
                di[l] = beta == 0.0f ? d[l] * m[l] : beta * di[l] + d[l] * m[l];
        }
    }
}
