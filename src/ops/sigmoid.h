/* sigmoid.h: exp of a non-positive argument that vectorises (attention's softmax
 * in attention.c), and the numerically stable sigmoid that SiLU (silu.c) and the
 * fused GroupNorm + SiLU (groupnorm.c) share, so that both give the same bytes. */
#ifndef DDPM_OPS_SIGMOID_H
#define DDPM_OPS_SIGMOID_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* exp(t) for t <= 0, written so that the compiler vectorises it (libm's expf is a
 * call per element). t = n ln2 + r with n = round(t / ln2), |r| <= ln2/2; exp(r)
 * by its Taylor series to r^7 (truncation r^8/8! < 6e-9 relative, under one float
 * ulp); 2^n applied as two normal-range factors so that results down to the
 * smallest denormal come out right. exp(t) < 2^-150 rounds to 0, as expf's does. */
static inline float exp_nonpositive(float t)
{
    const float tc = t < -104.0f ? -104.0f : t; /* also maps -inf and NaN-free huge |t| */
    /* round to nearest by the 1.5 * 2^23 trick (exact for |t/ln2| < 2^22) */
    const float n = (tc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    /* ln2 split so that n * LN2_HI is exact (LN2_HI has 16 significant bits, |n| <= 150) */
    const float r = (tc - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t ni = (int32_t)n, k1 = ni / 2, k2 = ni - k1; /* each in [-75, 0] */
    const float e = p * bits_to_float((uint32_t)(k1 + 127) << 23) * bits_to_float((uint32_t)(k2 + 127) << 23);
    return t < -104.0f ? 0.0f : e;
}

/* sigmoid without overflow: exp only ever sees -|x| <= 0, so it lies in (0, 1]. */
static inline float sigmoid_stable(float x)
{
    float e = exp_nonpositive(-fabsf(x));
    float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

#endif
