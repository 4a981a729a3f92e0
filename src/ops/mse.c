/* Mean squared error, L_simple of DDPM eq. 14 when pred = eps_theta, target = eps. */
#include "ddpm/ops.h"

#define MSE_PARALLEL_MIN 32768

double ddpm_mse_forward(const float *pred, const float *target, size_t n)
{
    if (n == 0)
        return 0.0;
    /* Serial and in double: a fixed summation order, so the loss is bit-identical for
     * any thread count (n is a batch of images: microseconds). */
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)pred[i] - (double)target[i];
        sum += d * d;
    }
    return sum / (double)n;
}

void ddpm_mse_backward(float *dpred, const float *pred, const float *target, size_t n, size_t n_mean)
{
    if (!dpred || n == 0 || n_mean == 0)
        return;
    const double scale = 2.0 / (double)n_mean;
#pragma omp parallel for schedule(static) if (n > MSE_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        dpred[i] += (float)(scale * ((double)pred[i] - (double)target[i]));
}
