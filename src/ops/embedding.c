/* Sinusoidal timestep embedding (Vaswani et al. 2017, as in the DDPM code; docs/design.md, Network):
 * half = dim/2, freq_i = exp(-ln(10000) * i/(half-1)), out = [sin(t freq), cos(t freq)].
 * Computed in double: t * freq reaches ~1000 rad, where a float argument would be
 * off by ~6e-5. */
#include "ddpm/ops.h"

#include <math.h>

/* One image's embedding at the (possibly fractional) step index t. */
static void embed_one(float *o, double t, int dim)
{
    const int half = dim / 2;
    const double log_max_period = log(10000.0);
    for (int i = 0; i < half; i++) {
        /* half == 1 would divide by zero: its single frequency is then 1. */
        const double frac = half > 1 ? (double)i / (double)(half - 1) : 0.0;
        const double arg = t * exp(-log_max_period * frac);
        o[i] = (float)sin(arg);
        o[half + i] = (float)cos(arg);
    }
    if (dim % 2) /* dim must be even; an odd one gets a zero last element, not garbage */
        o[dim - 1] = 0.0f;
}

void ddpm_timestep_embedding(float *out, const int *t, int B, int dim)
{
    for (int b = 0; b < B; b++)
        embed_one(out + (size_t)b * dim, (double)t[b], dim);
}

void ddpm_timestep_embedding_t(float *out, const double *t, int B, int dim)
{
    for (int b = 0; b < B; b++)
        embed_one(out + (size_t)b * dim, t[b], dim);
}

void ddpm_embedding_add_forward(float *out, const int *idx, const float *table, int B, int dim)
{
    for (int b = 0; b < B; b++) {
        const float *row = table + (size_t)idx[b] * dim;
        float *o = out + (size_t)b * dim;
        for (int k = 0; k < dim; k++)
            o[k] += row[k];
    }
}

void ddpm_embedding_add_backward(float *d_table, const float *d_out, const int *idx, int B, int dim)
{
    /* serial over b: two images of one class add to the same row in a fixed order */
    for (int b = 0; b < B; b++) {
        float *row = d_table + (size_t)idx[b] * dim;
        const float *d = d_out + (size_t)b * dim;
        for (int k = 0; k < dim; k++)
            row[k] += d[k];
    }
}
