/* Channel concatenation (the U-Net's skip connections): out[b] = [a[b]; b[b]]. */
#include "ddpm/ops.h"

#include <string.h>

#define CONCAT_PARALLEL_MIN 32768

void ddpm_concat_forward(float *out, const float *a, const float *b, int B, int Ca, int Cb,
                         int HW)
{
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for schedule(static) if ((size_t)B * (na + nb) > CONCAT_PARALLEL_MIN)
    for (int n = 0; n < B; n++) {
        float *o = out + (size_t)n * (na + nb);
        memcpy(o, a + (size_t)n * na, na * sizeof(float));
        memcpy(o + na, b + (size_t)n * nb, nb * sizeof(float));
    }
}

void ddpm_concat_backward(float *da, float *db, const float *dout, int B, int Ca, int Cb,
                          int HW)
{
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for schedule(static) if ((size_t)B * (na + nb) > CONCAT_PARALLEL_MIN)
    for (int n = 0; n < B; n++) {
        const float *d = dout + (size_t)n * (na + nb);
        if (da) {
            float *g = da + (size_t)n * na;
            for (size_t i = 0; i < na; i++)
                g[i] += d[i];
        }
        if (db) {
            float *g = db + (size_t)n * nb;
            for (size_t i = 0; i < nb; i++)
                g[i] += d[na + i];
        }
    }
}
