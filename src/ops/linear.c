/* linear.c: fully connected layer, out = in W^T + bias, with W [Out, In] in
 * PyTorch's layout. One sgemm per product; the backward accumulates with beta = 1:
 *     din [B,In]   += dout [B,Out] x W [Out,In]
 *     dW  [Out,In] += dout^T [Out,B] x in [B,In]
 *     dbias [Out]  += column sums of dout
 * Called from serial code; ddpm_sgemm runs each product on the calling thread
 * (platform.h): OpenBLAS's split of a product over threads would follow the
 * thread count, and with it the rounding. */
#include <string.h>

#include "ddpm/ops.h"
#include "ddpm/platform.h"

void ddpm_linear_forward(float *out, const float *in, const float *weight, const float *bias, int B, int In,
                         int Out)
{
    float beta = 0.0f;
    if (bias) {
        /* start every row from the bias and let sgemm add the product (beta = 1) */
        for (int b = 0; b < B; b++)
            memcpy(out + (size_t)b * Out, bias, (size_t)Out * sizeof(float));
        beta = 1.0f;
    }
    ddpm_sgemm(0, 1, B, Out, In, 1.0f, in, In, weight, In, beta, out, Out);
}

void ddpm_linear_backward(float *din, float *dweight, float *dbias, const float *dout, const float *in,
                          const float *weight, int B, int In, int Out)
{
    if (din)
        ddpm_sgemm(0, 0, B, In, Out, 1.0f, dout, Out, weight, In, 1.0f, din, In);
    if (dweight)
        ddpm_sgemm(1, 0, Out, In, B, 1.0f, dout, Out, in, In, 1.0f, dweight, In);
    if (dbias) {
        for (int o = 0; o < Out; o++) {
            double sum = 0.0;
            for (int b = 0; b < B; b++)
                sum += dout[(size_t)b * Out + o];
            dbias[o] += (float)sum;
        }
    }
}
