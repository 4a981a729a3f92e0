/* SiLU (Elfwing et al. 2018; "swish"): out = x * sigmoid(x). */
#include "ddpm/ops.h"

#include <math.h>

/* Below this many elements a call stays serial: a thread team costs more than it saves. */
#define SILU_PARALLEL_MIN 32768

/* sigmoid without overflow: exp() only ever sees -|x| <= 0, so it lies in (0, 1]. */
static inline float sigmoid_stable(float x)
{
    float e = expf(-fabsf(x));
    float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

void ddpm_silu_forward(float *out, const float *in, size_t n)
{
    /* out may equal in: each element is read before it is written. */
#pragma omp parallel for schedule(static) if (n > SILU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        out[i] = x * sigmoid_stable(x);
    }
}

void ddpm_silu_backward(float *din, const float *dout, const float *in, size_t n)
{
    if (!din)
        return;
    /* d/dx x s(x) = s + x s (1 - s) = s (1 + x (1 - s)); finite for every finite x. */
#pragma omp parallel for schedule(static) if (n > SILU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float s = sigmoid_stable(x);
        din[i] += dout[i] * s * (1.0f + x * (1.0f - s));
    }
}
