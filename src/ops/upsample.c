/* Nearest-neighbour 2x upsampling: out[2i+a][2j+b] = in[i][j] for a, b in {0, 1}. */
#include "ddpm/ops.h"

#define UPSAMPLE_PARALLEL_MIN 16384

void ddpm_upsample_forward(float *out, const float *in, int B, int C, int H, int W)
{
    const int n_planes = B * C;
    const size_t hw = (size_t)H * W, W2 = 2 * (size_t)W;
#pragma omp parallel for schedule(static) if ((size_t)n_planes * hw > UPSAMPLE_PARALLEL_MIN)
    for (int p = 0; p < n_planes; p++) {
        const float *ip = in + (size_t)p * hw;
        float *op = out + (size_t)p * 4 * hw;
        for (int i = 0; i < H; i++) {
            float *row0 = op + (size_t)(2 * i) * W2, *row1 = row0 + W2;
            for (int j = 0; j < W; j++) {
                float v = ip[(size_t)i * W + j];
                row0[2 * j] = v;
                row0[2 * j + 1] = v;
                row1[2 * j] = v;
                row1[2 * j + 1] = v;
            }
        }
    }
}

void ddpm_upsample_backward(float *din, const float *dout, int B, int C, int H, int W)
{
    if (!din)
        return;
    const int n_planes = B * C;
    const size_t hw = (size_t)H * W, W2 = 2 * (size_t)W;
    /* Each input gradient sums the gradients of the 4 pixels it was copied to. */
#pragma omp parallel for schedule(static) if ((size_t)n_planes * hw > UPSAMPLE_PARALLEL_MIN)
    for (int p = 0; p < n_planes; p++) {
        float *ip = din + (size_t)p * hw;
        const float *op = dout + (size_t)p * 4 * hw;
        for (int i = 0; i < H; i++) {
            const float *row0 = op + (size_t)(2 * i) * W2, *row1 = row0 + W2;
            for (int j = 0; j < W; j++)
                ip[(size_t)i * W + j] +=
                    (row0[2 * j] + row0[2 * j + 1]) + (row1[2 * j] + row1[2 * j + 1]);
        }
    }
}
