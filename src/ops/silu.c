/* SiLU (Elfwing et al. 2018; "swish"): out = x * sigmoid(x). */
#include "ddpm/ops.h"
#include "sigmoid.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Below this many elements a call stays serial: a thread team costs more than it saves. */
#define SILU_PARALLEL_MIN 32768

void ddpm_silu_forward(float *out, const float *in, size_t n)
{
    /* out may equal in: each element is read before it is written. */
#pragma omp parallel for simd schedule(static) if (n > SILU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        out[i] = x * sigmoid_stable(x);
    }
}

/* d/dx x s(x) = s + x s (1 - s) = s (1 + x (1 - s)); finite for every finite x. */
static inline float silu_grad(float dout, float x)
{
    float s = sigmoid_stable(x);
    return dout * s * (1.0f + x * (1.0f - s));
}

/* din = beta din + dout silu'(in); with beta = 0 din is never read. */
void ddpm_silu_backward(float *din, float beta, const float *dout, const float *in, size_t n)
{
    if (!din)
        return;
    if (beta == 0.0f) {
#pragma omp parallel for simd schedule(static) if (n > SILU_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++)
            din[i] = silu_grad(dout[i], in[i]);
    } else {
#pragma omp parallel for simd schedule(static) if (n > SILU_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++)
            din[i] = beta * din[i] + silu_grad(dout[i], in[i]);
    }
}
