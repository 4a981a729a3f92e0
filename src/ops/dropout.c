/* Inverted dropout (Srivastava et al. 2014): kept elements are scaled by 1/(1-p) so
 * that the expectation is unchanged and sampling (p = 0) needs no rescaling.
 *
 * Element i takes lane i % 4 of ddpm_philox(seed, DDPM_STREAM_DROPOUT, counter + i/4),
 * so the mask is a pure function of (seed, counter, i), whatever the thread count.
 * A call uses the counters [counter, counter + ceil(n/4)): the caller advances its
 * counter by that much between calls so that two layers never share a mask. */
#include "ddpm/ops.h"

#include "ddpm/rng.h"

#define DROPOUT_PARALLEL_MIN 16384

void ddpm_dropout_forward(float *out, float *mask, const float *in, float p, size_t n,
                          uint64_t seed, uint64_t counter)
{
    if (!(p > 0.0f)) {
        /* p == 0 (sampling): identity, and no random numbers are drawn. */
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) {
            mask[i] = 1.0f;
            out[i] = in[i];
        }
        return;
    }
    /* p >= 1 drops everything; guarded so that 1/(1-p) is never evaluated. */
    const float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const size_t n_blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
    for (size_t blk = 0; blk < n_blocks; blk++) {
        uint32_t w[4];
        ddpm_philox(w, seed, DDPM_STREAM_DROPOUT, counter + blk);
        for (size_t l = 0; l < 4 && blk * 4 + l < n; l++) {
            const size_t i = blk * 4 + l;
            /* 24 random bits centred in their bin: u in (0, 1), P(u < p) = p to 2^-24. */
            const float u = ((float)(w[l] >> 8) + 0.5f) * (1.0f / 16777216.0f);
            const float m = u < p ? 0.0f : keep_scale;
            mask[i] = m;
            out[i] = in[i] * m;
        }
    }
}

/* din = beta din + dout mask; with beta = 0 din is never read. */
void ddpm_dropout_backward(float *din, float beta, const float *dout, const float *mask, size_t n)
{
    if (!din)
        return;
    if (beta == 0.0f) {
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++)
            din[i] = dout[i] * mask[i];
    } else {
#pragma omp parallel for schedule(static) if (n > DROPOUT_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++)
            din[i] = beta * din[i] + dout[i] * mask[i];
    }
}
