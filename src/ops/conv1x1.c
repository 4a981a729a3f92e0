/* conv1x1.c: pointwise convolution (1x1, stride 1, no padding; NCHW, float32) by
 * the register-blocked product of simd.h, one image at a time:
 *     forward   y_b [Cout, HW] = W [Cout, Cin] x_b [Cin, HW] + bias
 *     din       dx_b [Cin, HW] = beta dx_b + W^T dy_b
 *     dweight   dW [Cout, Cin] += sum over b of dy_b x_b^T
 * The product kernel wants its right-hand matrix in rows of whole vectors: the
 * first HW - HW % 16 columns of x_b (or dy_b) go to it in place, the last HW % 16
 * through a zero-padded 16-column copy; for dW, x_b is transposed into
 * [HW, Cin_p] (Cin padded to 16 with zeros). Every output element is one chain
 * of fused multiply-adds over k in order, started from the bias (forward), from
 * beta dx (din) or from zero.
 *
 * The images are split into LANES fixed lanes run on the OpenMP threads; each
 * lane sums its dW over its images in order into its own buffer, and the lanes
 * are added in lane order: every result is the same for any thread count. */
#include <omp.h>
#include <stddef.h>
#include <string.h>

#include "ddpm/ops.h"
#include "simd.h"

#define LANES 8

static int round16(int n)
{
    return (n + 15) / 16 * 16;
}

typedef struct {
    int B, Cin, HW, Cout, Cin_p, n_lanes;
    size_t tail_b, tail_c, xt, dw; /* per-lane buffer sizes in floats */
    size_t lane_floats;
} geometry;

static geometry make_geometry(int B, int Cin, int HW, int Cout)
{
    geometry g;
    g.B = B, g.Cin = Cin, g.HW = HW, g.Cout = Cout;
    g.Cin_p = round16(Cin);
    g.n_lanes = B < LANES ? B : LANES;
    const int c_max = Cin > Cout ? Cin : Cout;
    g.tail_b = (size_t)c_max * 16; /* [K][16], K = Cin (forward) or Cout (din) */
    g.tail_c = (size_t)c_max * 16; /* [M][16], M = Cout (forward) or Cin (din) */
    g.xt = (size_t)HW * g.Cin_p;
    g.dw = (size_t)Cout * g.Cin_p;
    g.lane_floats = g.tail_b + g.tail_c + g.xt + g.dw;
    return g;
}

size_t ddpm_conv1x1_scratch_floats(int B, int Cin, int HW, int Cout)
{
    const geometry g = make_geometry(B, Cin, HW, Cout);
    return (size_t)g.n_lanes * g.lane_floats;
}

static int lanes_in_parallel(const geometry *g)
{
    return g->n_lanes > 1 && omp_get_max_threads() > 1 && !omp_in_parallel();
}

static void image_range(const geometry *g, int lane, int *b0, int *b1)
{
    *b0 = (int)((long)lane * g->B / g->n_lanes);
    *b1 = (int)((long)(lane + 1) * g->B / g->n_lanes);
}

/* c [M, HW] (+)= A [M, K] x b [K, HW], A(r, k) = a[r*a_rs + k*a_ks], c and b
 * row-major with row length HW; tb, tc: 16 K and 16 M floats for the last
 * HW % 16 columns. */
static void product_rows(int M, int HW, int K, const float *a, ptrdiff_t a_rs, ptrdiff_t a_ks, const float *b,
                         float *c, int accumulate, float *tb, float *tc)
{
    const int n16 = HW / 16 * 16, rest = HW - n16;
    if (n16)
        product(MR_FWD, M, n16, K, a, a_rs, a_ks, b, HW, c, HW, accumulate);
    if (!rest)
        return;
    for (int k = 0; k < K; k++) {
        float *row = tb + (size_t)k * 16;
        memcpy(row, b + (size_t)k * HW + n16, (size_t)rest * sizeof(float));
        memset(row + rest, 0, (size_t)(16 - rest) * sizeof(float));
    }
    if (accumulate)
        for (int r = 0; r < M; r++)
            memcpy(tc + (size_t)r * 16, c + (size_t)r * HW + n16, (size_t)rest * sizeof(float));
    product(MR_FWD, M, 16, K, a, a_rs, a_ks, tb, 16, tc, 16, accumulate);
    for (int r = 0; r < M; r++)
        memcpy(c + (size_t)r * HW + n16, tc + (size_t)r * 16, (size_t)rest * sizeof(float));
}

void ddpm_conv1x1_forward(float *out, float *scratch, const float *in, const float *weight, const float *bias,
                          int B, int Cin, int HW, int Cout)
{
    const geometry g = make_geometry(B, Cin, HW, Cout);
#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(&g))
    for (int lane = 0; lane < g.n_lanes; lane++) {
        float *tb = scratch + (size_t)lane * g.lane_floats, *tc = tb + g.tail_b;
        int b0, b1;
        image_range(&g, lane, &b0, &b1);
        for (int b = b0; b < b1; b++) {
            float *y = out + (size_t)b * Cout * HW;
            if (bias)
                for (int co = 0; co < Cout; co++)
                    for (int i = 0; i < HW; i++)
                        y[(size_t)co * HW + i] = bias[co];
            product_rows(Cout, HW, Cin, weight, Cin, 1, in + (size_t)b * Cin * HW, y, bias != NULL, tb, tc);
        }
    }
}

/* xt [HW, Cin_p] = x [Cin, HW] transposed, zero in the padded columns. */
static void transpose_image(float *xt, const float *x, int Cin, int Cin_p, int HW)
{
    for (int p0 = 0; p0 < HW; p0 += 16) {
        const int np = HW - p0 < 16 ? HW - p0 : 16;
        for (int ci = 0; ci < Cin; ci++) {
            const float *s = x + (size_t)ci * HW + p0;
            for (int p = 0; p < np; p++)
                xt[(size_t)(p0 + p) * Cin_p + ci] = s[p];
        }
        for (int p = 0; p < np; p++)
            memset(xt + (size_t)(p0 + p) * Cin_p + Cin, 0, (size_t)(Cin_p - Cin) * sizeof(float));
    }
}

void ddpm_conv1x1_backward(float *din, float beta, float *dweight, float *dbias, float *scratch,
                           const float *dout, const float *in, const float *weight, int B, int Cin, int HW,
                           int Cout)
{
    const geometry g = make_geometry(B, Cin, HW, Cout);

    /* dbias += row sums of dout over (b, HW), in double, in a fixed order */
    if (dbias) {
#pragma omp parallel for schedule(static) if ((size_t)Cout * HW * B > 32768)
        for (int co = 0; co < Cout; co++) {
            double sum = 0.0;
            for (int b = 0; b < B; b++)
                sum += ddpm_sum_fixed(dout + ((size_t)b * Cout + co) * HW, (size_t)HW);
            dbias[co] += (float)sum;
        }
    }
    if (!din && !dweight)
        return;

#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(&g))
    for (int lane = 0; lane < g.n_lanes; lane++) {
        float *tb = scratch + (size_t)lane * g.lane_floats, *tc = tb + g.tail_b;
        float *xt = tc + g.tail_c, *dw = xt + g.xt;
        int b0, b1;
        image_range(&g, lane, &b0, &b1);
        for (int b = b0; b < b1; b++) {
            const float *dy = dout + (size_t)b * Cout * HW;
            if (dweight) {
                /* dw [Cout, Cin_p] (+)= dy [Cout, HW] x xt [HW, Cin_p] */
                transpose_image(xt, in + (size_t)b * Cin * HW, Cin, g.Cin_p, HW);
                product(MR_DW, Cout, g.Cin_p, HW, dy, HW, 1, xt, g.Cin_p, dw, g.Cin_p, b > b0);
            }
            if (din) {
                float *dx = din + (size_t)b * Cin * HW;
                const size_t n = (size_t)Cin * HW;
                if (beta != 0.0f && beta != 1.0f)
                    for (size_t i = 0; i < n; i++)
                        dx[i] *= beta;
                /* dx [Cin, HW] (+)= W^T [Cin, Cout] x dy [Cout, HW]: A(ci, co) = W[co][ci] */
                product_rows(Cin, HW, Cout, weight, 1, Cin, dy, dx, beta != 0.0f, tb, tc);
            }
        }
    }

    if (dweight) {
        /* dweight += the lanes' sums, added in lane order */
#pragma omp parallel for schedule(static) if ((size_t)Cout * Cin * g.n_lanes > 32768)
        for (int co = 0; co < Cout; co++)
            for (int ci = 0; ci < Cin; ci++) {
                float s = 0.0f;
                for (int lane = 0; lane < g.n_lanes; lane++)
                    s += scratch[(size_t)lane * g.lane_floats + g.tail_b + g.tail_c + g.xt +
                                 (size_t)co * g.Cin_p + ci];
                dweight[(size_t)co * Cin + ci] += s;
            }
    }
}
