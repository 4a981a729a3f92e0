/* attention.c: the core of the spatial self-attention block (docs/design.md, Network).
 * Per image, with Q, K, V, H the [C, N] matrices (channel the row, position the
 * column, as in NCHW) and a = 1/sqrt(C):
 *     S = a Q^T K            [N, N]   S[i,j] = a sum_c q[c,i] k[c,j]
 *     w = softmax over j of S         saved for backward
 *     H = V w^T              [C, N]   h[c,i] = sum_j w[i,j] v[c,j]
 * Backward, dW the gradient of w and dS that of S:
 *     dV += dH w             dW = dH^T V
 *     dS = w * (dW - rowsum(w * dW))  (softmax Jacobian, per row)
 *     dQ += a K dS^T         dK += a Q dS
 * Every image is independent: the images are split into LANES fixed lanes run on
 * OpenMP threads, each calling its products (ddpm_gemm: OpenBLAS's sgemm on
 * the calling thread, platform.h, docs/style.md; or the bf16 product) with its
 * own slice of the scratch. Each image's
 * result is computed the same way for any thread count. With a pthread
 * OpenBLAS the lanes run one after the other. */
#include <cblas.h> /* openblas_get_parallel */
#include <math.h>
#include <omp.h>
#include <stddef.h>

#include "ddpm/ops.h"
#include "ddpm/platform.h"
#include "sigmoid.h"

#define LANES 8

static int n_lanes(int B)
{
    return B < LANES ? B : LANES;
}

static int lanes_in_parallel(int lanes)
{
    return lanes > 1 && openblas_get_parallel() == 2 && !omp_in_parallel();
}

/* The row sums keep ACC partial sums in double, element j going to partial
 * j % ACC, added in index order at the end: a fixed order (any thread count)
 * whose independent chains vectorise, instead of one chain of dependent double
 * additions at one add per FP latency. */
#define ACC 8

/* row softmax in place, stable: subtract the row maximum before exp, so that exp
 * only sees t <= 0 (exp_nonpositive, which vectorises where libm's expf is a call
 * per element) */
static void softmax_rows(float *w, int rows, int N)
{
    for (int row = 0; row < rows; row++) {
        float *s = w + (size_t)row * N;
        float m = s[0];
        for (int j = 1; j < N; j++)
            m = s[j] > m ? s[j] : m;
#pragma omp simd
        for (int j = 0; j < N; j++)
            s[j] = exp_nonpositive(s[j] - m);
        double acc[ACC] = {0};
        int j = 0;
        for (; j + ACC <= N; j += ACC)
            for (int l = 0; l < ACC; l++)
                acc[l] += s[j + l];
        for (int l = 0; j < N; j++, l++)
            acc[l] += s[j];
        double sum = 0.0;
        for (int l = 0; l < ACC; l++)
            sum += acc[l];
        const float inv = (float)(1.0 / sum); /* sum >= 1: the maximum contributes exp(0) */
        for (j = 0; j < N; j++)
            s[j] *= inv;
    }
}

/* sum_j w[j] d[j] in double, in ACC fixed partials */
static double dot_fixed(const float *w, const float *d, int N)
{
    double acc[ACC] = {0};
    int j = 0;
    for (; j + ACC <= N; j += ACC)
        for (int l = 0; l < ACC; l++)
            acc[l] += (double)w[j + l] * d[j + l];
    for (int l = 0; j < N; j++, l++)
        acc[l] += (double)w[j] * d[j];
    double sum = 0.0;
    for (int l = 0; l < ACC; l++)
        sum += acc[l];
    return sum;
}

void ddpm_attention_forward(float *h, float *w, const float *q, const float *k, const float *v, int B, int C,
                            int N)
{
    ddpm_attention_forward_precision(h, w, q, k, v, B, C, N, DDPM_PRECISION_FP32);
}

void ddpm_attention_forward_precision(float *h, float *w, const float *q, const float *k, const float *v,
                                      int B, int C, int N, ddpm_precision precision)
{
    const float scale = (float)(1.0 / sqrt((double)C));
    const size_t CN = (size_t)C * N, NN = (size_t)N * N;
    const int lanes = n_lanes(B);
#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(lanes))
    for (int lane = 0; lane < lanes; lane++) {
        const int b0 = (int)((long)lane * B / lanes), b1 = (int)((long)(lane + 1) * B / lanes);
        for (int b = b0; b < b1; b++) {
            float *w_b = w + b * NN;
            ddpm_gemm(precision, 1, 0, N, N, C, scale, q + b * CN, N, k + b * CN, N, 0.0f, w_b, N);
            softmax_rows(w_b, N, N);
            ddpm_gemm(precision, 0, 1, C, N, N, 1.0f, v + b * CN, N, w_b, N, 0.0f, h + b * CN, N);
        }
    }
}

size_t ddpm_attention_scratch_floats(int N)
{
    return (size_t)LANES * N * N; /* per lane: dW, then dS in place, one image at a time */
}

/* beta = 1 accumulates into dq, dk, dv; beta = 0 overwrites them (sgemm's beta). */
void ddpm_attention_backward(float *dq, float *dk, float *dv, float beta, float *scratch, const float *dh,
                             const float *w, const float *q, const float *k, const float *v, int B, int C,
                             int N)
{
    ddpm_attention_backward_precision(dq, dk, dv, beta, scratch, dh, w, q, k, v, B, C, N,
                                      DDPM_PRECISION_FP32);
}

void ddpm_attention_backward_precision(float *dq, float *dk, float *dv, float beta, float *scratch,
                                       const float *dh, const float *w, const float *q, const float *k,
                                       const float *v, int B, int C, int N, ddpm_precision precision)
{
    const float scale = (float)(1.0 / sqrt((double)C));
    const size_t CN = (size_t)C * N, NN = (size_t)N * N;
    const int lanes = n_lanes(B);
#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(lanes))
    for (int lane = 0; lane < lanes; lane++) {
        float *dS = scratch + (size_t)lane * NN;
        const int b0 = (int)((long)lane * B / lanes), b1 = (int)((long)(lane + 1) * B / lanes);
        for (int b = b0; b < b1; b++) {
            const float *dh_b = dh + b * CN, *w_b = w + b * NN;
            if (dv)
                ddpm_gemm(precision, 0, 0, C, N, N, 1.0f, dh_b, N, w_b, N, beta, dv + b * CN, N);
            if (!dq && !dk)
                continue;
            /* dW = dH^T V, into the lane's scratch */
            ddpm_gemm(precision, 1, 0, N, N, C, 1.0f, dh_b, N, v + b * CN, N, 0.0f, dS, N);
            /* dS = w * (dW - sum_j w dW), row by row, in place */
            for (int i = 0; i < N; i++) {
                const float *wi = w_b + (size_t)i * N;
                float *di = dS + (size_t)i * N;
                const float d = (float)dot_fixed(wi, di, N);
                for (int j = 0; j < N; j++)
                    di[j] = wi[j] * (di[j] - d);
            }
            if (dq)
                ddpm_gemm(precision, 0, 1, C, N, N, scale, k + b * CN, N, dS, N, beta, dq + b * CN, N);
            if (dk)
                ddpm_gemm(precision, 0, 0, C, N, N, scale, q + b * CN, N, dS, N, beta, dk + b * CN, N);
        }
    }
}
