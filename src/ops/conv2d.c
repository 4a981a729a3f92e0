/* conv2d.c: 2-D convolution (K in {1,3}, stride S in {1,2}, padding P in {0,1})
 * as im2col over the whole batch followed by ONE sgemm per product.
 *
 * Let M = B*Ho*Wo and CKK = Cin*K*K. The column matrix col [CKK, M] has row
 * r = (c*K + kh)*K + kw and column m = (b*Ho + oh)*Wo + ow, holding
 * in[b, c, oh*S - P + kh, ow*S - P + kw] (0 outside the image). Then
 *     forward:  out_p [Cout, M] = W [Cout, CKK] x col, permuted to NCHW (+ bias)
 *     backward: dout_p [Cout, M] = dout permuted; dW += dout_p x col^T;
 *               dbias += row sums of dout_p; dcol = W^T x dout_p; din += col2im(dcol)
 * Scratch layout (ddpm_conv2d_scratch_floats): [col: CKK*M][product: Cout*M].
 * In backward the col region is reused for dcol once dW no longer needs col.
 *
 * sgemm is only called from serial code: OpenBLAS must not be entered from inside
 * an OpenMP parallel region (see STYLE.md). The OpenMP loops below partition their
 * outputs, so no two threads write the same element and sums do not depend on the
 * thread count. */
#include <cblas.h>
#include <string.h>

#include "ddpm/ops.h"

static int conv_out_size(int n, int K, int S, int P)
{
    return (n + 2 * P - K) / S + 1;
}

/* Output positions o in [*lo, *hi) read input index o*S - P + k inside [0, n). */
static void valid_range(int n, int n_out, int S, int P, int k, int *lo, int *hi)
{
    int l = 0;
    while (l < n_out && l * S - P + k < 0)
        l++;
    int h = n_out;
    while (h > l && (h - 1) * S - P + k >= n)
        h--;
    *lo = l;
    *hi = h;
}

static int is_pointwise(int K, int S, int P)
{
    return K == 1 && S == 1 && P == 0;
}

/* col [Cin*K*K, B*Ho*Wo] from in [B, Cin, H, W]. */
static void im2col(float *col, const float *in, int B, int Cin, int H, int W, int K, int S, int P,
                   int Ho, int Wo)
{
    const size_t HoWo = (size_t)Ho * Wo;
    const size_t M = (size_t)B * HoWo;
    if (is_pointwise(K, S, P)) {
        /* a 1x1 conv's im2col is the permute [B, Cin, HW] -> [Cin, B*HW] */
#pragma omp parallel for collapse(2) schedule(static)
        for (int c = 0; c < Cin; c++)
            for (int b = 0; b < B; b++)
                memcpy(col + (size_t)c * M + (size_t)b * HoWo, in + ((size_t)b * Cin + c) * HoWo,
                       HoWo * sizeof(float));
        return;
    }
    const int rows = Cin * K * K;
#pragma omp parallel for collapse(2) schedule(static)
    for (int r = 0; r < rows; r++) {
        for (int b = 0; b < B; b++) {
            const int c = r / (K * K), kh = (r / K) % K, kw = r % K;
            const float *src = in + ((size_t)b * Cin + c) * H * W;
            float *dst = col + (size_t)r * M + (size_t)b * HoWo;
            int ow_lo, ow_hi;
            valid_range(W, Wo, S, P, kw, &ow_lo, &ow_hi);
            for (int oh = 0; oh < Ho; oh++) {
                float *d = dst + (size_t)oh * Wo;
                const int ih = oh * S - P + kh;
                if (ih < 0 || ih >= H) {
                    memset(d, 0, (size_t)Wo * sizeof(float));
                    continue;
                }
                const float *s = src + (size_t)ih * W;
                const int off = kw - P; /* iw = ow*S + off */
                for (int ow = 0; ow < ow_lo; ow++)
                    d[ow] = 0.0f;
                for (int ow = ow_lo; ow < ow_hi; ow++)
                    d[ow] = s[ow * S + off];
                for (int ow = ow_hi; ow < Wo; ow++)
                    d[ow] = 0.0f;
            }
        }
    }
}

/* din [B, Cin, H, W] += col2im(dcol [Cin*K*K, B*Ho*Wo]). Each thread owns whole
 * (b, c) planes of din, so the scatter-add has no races. */
static void col2im_add(float *din, const float *dcol, int B, int Cin, int H, int W, int K, int S,
                       int P, int Ho, int Wo)
{
    const size_t HoWo = (size_t)Ho * Wo;
    const size_t M = (size_t)B * HoWo;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int c = 0; c < Cin; c++) {
            float *dst = din + ((size_t)b * Cin + c) * H * W;
            if (is_pointwise(K, S, P)) {
                const float *src = dcol + (size_t)c * M + (size_t)b * HoWo;
                for (size_t i = 0; i < HoWo; i++)
                    dst[i] += src[i];
                continue;
            }
            for (int kh = 0; kh < K; kh++) {
                for (int kw = 0; kw < K; kw++) {
                    const int r = (c * K + kh) * K + kw;
                    const float *src = dcol + (size_t)r * M + (size_t)b * HoWo;
                    int ow_lo, ow_hi;
                    valid_range(W, Wo, S, P, kw, &ow_lo, &ow_hi);
                    for (int oh = 0; oh < Ho; oh++) {
                        const int ih = oh * S - P + kh;
                        if (ih < 0 || ih >= H)
                            continue;
                        float *d = dst + (size_t)ih * W;
                        const int off = kw - P; /* iw = ow*S + off */
                        const float *s = src + (size_t)oh * Wo;
                        for (int ow = ow_lo; ow < ow_hi; ow++)
                            d[ow * S + off] += s[ow];
                    }
                }
            }
        }
    }
}

size_t ddpm_conv2d_scratch_floats(int B, int Cin, int H, int W, int Cout, int K, int S, int P)
{
    const size_t M = (size_t)B * conv_out_size(H, K, S, P) * conv_out_size(W, K, S, P);
    return ((size_t)Cin * K * K + (size_t)Cout) * M;
}

void ddpm_conv2d_forward(float *out, float *scratch, const float *in, const float *weight,
                         const float *bias, int B, int Cin, int H, int W, int Cout, int K,
                         int S, int P)
{
    const int Ho = conv_out_size(H, K, S, P), Wo = conv_out_size(W, K, S, P);
    const size_t HoWo = (size_t)Ho * Wo;
    const int M = B * Ho * Wo;
    const int CKK = Cin * K * K;
    float *col = scratch;
    float *out_p = scratch + (size_t)CKK * M;

    im2col(col, in, B, Cin, H, W, K, S, P, Ho, Wo);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cout, M, CKK, 1.0f, weight, CKK, col,
                M, 0.0f, out_p, M);

    /* [Cout, B*HoWo] -> [B, Cout, HoWo], adding the bias on the way */
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int co = 0; co < Cout; co++) {
            const float bv = bias ? bias[co] : 0.0f;
            const float *src = out_p + (size_t)co * M + (size_t)b * HoWo;
            float *dst = out + ((size_t)b * Cout + co) * HoWo;
            for (size_t i = 0; i < HoWo; i++)
                dst[i] = src[i] + bv;
        }
    }
}

void ddpm_conv2d_backward(float *din, float *dweight, float *dbias, float *scratch,
                          const float *dout, const float *in, const float *weight, int B,
                          int Cin, int H, int W, int Cout, int K, int S, int P)
{
    const int Ho = conv_out_size(H, K, S, P), Wo = conv_out_size(W, K, S, P);
    const size_t HoWo = (size_t)Ho * Wo;
    const int M = B * Ho * Wo;
    const int CKK = Cin * K * K;
    float *col = scratch;
    float *dout_p = scratch + (size_t)CKK * M;
    const int need_permute = din || dweight;

    /* dout [B, Cout, HoWo] -> dout_p [Cout, B*HoWo]; dbias += its row sums (in double,
     * in a fixed order, so the result does not depend on the thread count) */
#pragma omp parallel for schedule(static)
    for (int co = 0; co < Cout; co++) {
        double sum = 0.0;
        for (int b = 0; b < B; b++) {
            const float *src = dout + ((size_t)b * Cout + co) * HoWo;
            if (need_permute)
                memcpy(dout_p + (size_t)co * M + (size_t)b * HoWo, src, HoWo * sizeof(float));
            for (size_t i = 0; i < HoWo; i++)
                sum += src[i];
        }
        if (dbias)
            dbias[co] += (float)sum;
    }

    if (dweight) {
        /* recomputed: nothing in scratch is assumed to survive from the forward */
        im2col(col, in, B, Cin, H, W, K, S, P, Ho, Wo);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Cout, CKK, M, 1.0f, dout_p, M, col,
                    M, 1.0f, dweight, CKK);
    }
    if (din) {
        /* dcol = W^T dout_p overwrites col, which dW no longer needs */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CKK, M, Cout, 1.0f, weight, CKK,
                    dout_p, M, 0.0f, col, M);
        col2im_add(din, col, B, Cin, H, W, K, S, P, Ho, Wo);
    }
}
