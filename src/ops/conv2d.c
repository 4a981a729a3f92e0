/* conv2d.c: 2-D convolution (K in {1,3}, stride S in {1,2}, padding P in {0,1})
 * as im2col + sgemm over units of nb images, the units spread over OpenMP threads.
 *
 * A unit is nb consecutive images, nb the smallest power of two with
 * nb*Ho*Wo >= UNIT_COLUMNS (1 for 1x1 convs): a function of the shapes only, so
 * every result is the same for any thread count. With Mu = nb*Ho*Wo and
 * CKK = Cin*K*K, the unit's column matrix col [CKK, Mu] has row r = (c*K + kh)*K + kw
 * and column m = (b*Ho + oh)*Wo + ow, holding in[b, c, oh*S - P + kh, ow*S - P + kw]
 * (0 outside the image). Then per unit
 *     forward:  out_p [Cout, Mu] = W [Cout, CKK] x col (+ bias), permuted to NCHW
 *     backward: dW_lane += dout_p x col^T; dcol = W^T x dout_p; din += col2im(dcol)
 * With nb = 1 the product IS the image's NCHW block, so there is no permute, and a
 * 1x1 conv needs no im2col either (col is the image itself) and accumulates its
 * input gradient straight into din with beta = 1.
 *
 * The units are split into LANES fixed lanes (contiguous runs of units); each
 * lane owns a slice of the scratch and is run by one thread, which calls sgemm
 * from inside the parallel region: the OpenMP build of OpenBLAS then runs that
 * sgemm on the calling thread only (docs/style.md), so the two cores work on two
 * lanes with no fork/join inside a unit and the unit's data stays in cache.
 * The weight gradient is summed per lane (units in order) and the lanes are
 * added in lane order, so the sum does not depend on the thread count. OpenBLAS
 * is kept at one thread (platform.h), so with a pthread OpenBLAS, whose sgemm
 * may not be entered from several threads at once, the lanes run one after the
 * other and compute the same bytes on one core.
 *
 * With vector kernels (AVX-512 or AVX2 + FMA), 3x3 stride-1 pad-1 convs with
 * >= 16 channels in and out go to ddpm_conv3x3 (Winograd F(4x4,3x3) or
 * F(2x2,3x3), src/ops/conv3x3.c) instead: 2.25-4x fewer multiply-adds and no
 * im2col; see use_winograd. */
#include <cblas.h> /* openblas_get_parallel */
#include <omp.h>
#include <string.h>

#include "ddpm/ops.h"
#include "ddpm/platform.h"

#define LANES 8
#define UNIT_COLUMNS 256

static int conv_out_size(int n, int K, int S, int P)
{
    return (n + 2 * P - K) / S + 1;
}

static int is_pointwise(int K, int S, int P)
{
    return K == 1 && S == 1 && P == 0;
}

static int unit_images(int B, int HoWo, int pointwise)
{
    int nb = 1;
    if (!pointwise)
        while (nb < B && (size_t)nb * HoWo < UNIT_COLUMNS)
            nb *= 2;
    return nb;
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

/* col [Cin*K*K, nb*Ho*Wo] from in [nb, Cin, H, W]. Serial: called per unit. */
static void im2col(float *col, const float *in, int nb, int Cin, int H, int W, int K, int S, int P, int Ho,
                   int Wo)
{
    const size_t HoWo = (size_t)Ho * Wo;
    const size_t M = (size_t)nb * HoWo;
    const int rows = Cin * K * K;
    for (int r = 0; r < rows; r++) {
        const int c = r / (K * K), kh = (r / K) % K, kw = r % K;
        int ow_lo, ow_hi;
        valid_range(W, Wo, S, P, kw, &ow_lo, &ow_hi);
        const int off = kw - P; /* iw = ow*S + off */
        for (int b = 0; b < nb; b++) {
            const float *src = in + ((size_t)b * Cin + c) * H * W;
            float *dst = col + (size_t)r * M + (size_t)b * HoWo;
            for (int oh = 0; oh < Ho; oh++) {
                float *d = dst + (size_t)oh * Wo;
                const int ih = oh * S - P + kh;
                if (ih < 0 || ih >= H) {
                    memset(d, 0, (size_t)Wo * sizeof(float));
                    continue;
                }
                const float *s = src + (size_t)ih * W;
                for (int ow = 0; ow < ow_lo; ow++)
                    d[ow] = 0.0f;
                if (S == 1)
                    memcpy(d + ow_lo, s + ow_lo + off, (size_t)(ow_hi - ow_lo) * sizeof(float));
                else
                    for (int ow = ow_lo; ow < ow_hi; ow++)
                        d[ow] = s[ow * S + off];
                for (int ow = ow_hi; ow < Wo; ow++)
                    d[ow] = 0.0f;
            }
        }
    }
}

/* din [nb, Cin, H, W] += col2im(dcol [Cin*K*K, nb*Ho*Wo]). Serial: called per unit. */
static void col2im_add(float *din, const float *dcol, int nb, int Cin, int H, int W, int K, int S, int P,
                       int Ho, int Wo)
{
    const size_t HoWo = (size_t)Ho * Wo;
    const size_t M = (size_t)nb * HoWo;
    for (int b = 0; b < nb; b++) {
        for (int c = 0; c < Cin; c++) {
            float *dst = din + ((size_t)b * Cin + c) * H * W;
            for (int kh = 0; kh < K; kh++) {
                for (int kw = 0; kw < K; kw++) {
                    const int r = (c * K + kh) * K + kw;
                    const float *src = dcol + (size_t)r * M + (size_t)b * HoWo;
                    int ow_lo, ow_hi;
                    valid_range(W, Wo, S, P, kw, &ow_lo, &ow_hi);
                    const int off = kw - P; /* iw = ow*S + off */
                    for (int oh = 0; oh < Ho; oh++) {
                        const int ih = oh * S - P + kh;
                        if (ih < 0 || ih >= H)
                            continue;
                        float *d = dst + (size_t)ih * W + off;
                        const float *s = src + (size_t)oh * Wo;
                        if (S == 1)
                            for (int ow = ow_lo; ow < ow_hi; ow++)
                                d[ow] += s[ow];
                        else
                            for (int ow = ow_lo; ow < ow_hi; ow++)
                                d[ow * S] += s[ow];
                    }
                }
            }
        }
    }
}

typedef struct {
    int B, Cin, H, W, Cout, K, S, P, Ho, Wo, HoWo, CKK, nb, n_units, n_lanes;
    size_t lane_floats, col_floats, prod_floats;
    ddpm_precision precision; /* of the products (ddpm_gemm) */
} geometry;

static geometry conv_geometry(int B, int Cin, int H, int W, int Cout, int K, int S, int P)
{
    geometry g;
    g.precision = DDPM_PRECISION_FP32;
    g.B = B, g.Cin = Cin, g.H = H, g.W = W, g.Cout = Cout, g.K = K, g.S = S, g.P = P;
    g.Ho = conv_out_size(H, K, S, P), g.Wo = conv_out_size(W, K, S, P);
    g.HoWo = g.Ho * g.Wo;
    g.CKK = Cin * K * K;
    const int pw = is_pointwise(K, S, P);
    g.nb = unit_images(B, g.HoWo, pw);
    g.n_units = (B + g.nb - 1) / g.nb;
    g.n_lanes = g.n_units < LANES ? g.n_units : LANES;
    const size_t Mu = (size_t)g.nb * g.HoWo;
    /* col (not for 1x1), product / permuted dout (only when nb > 1), dW of the lane */
    g.col_floats = pw ? 0 : (size_t)g.CKK * Mu;
    g.prod_floats = g.nb > 1 ? (size_t)Cout * Mu : 0;
    g.lane_floats = g.col_floats + g.prod_floats + (size_t)Cout * g.CKK;
    /* 1x1 backward writes dcol into the col slot only when it cannot add into din
     * directly, which never happens (nb = 1): no extra room needed */
    return g;
}

/* Whether this shape goes to ddpm_conv3x3 (Winograd, src/ops/conv3x3.c):
 * 3x3 stride 1 pad 1 when conv3x3 is vectorised (AVX-512 or AVX2), and at least 16 channels on both sides
 * (below that the channel padding to 16 wastes most of its products; the model's first and last convs, 1 ->
 * 32 and 32 -> 1 channels, stay on im2col). */
static int winograd_enabled = 1;

void ddpm_conv2d_enable_winograd(int enabled)
{
    winograd_enabled = enabled != 0;
}

static int winograd_shape(int Cin, int Cout, int K, int S, int P)
{
    /* the plain-C Winograd path (no AVX2) is slower than im2col + sgemm */
    return strcmp(ddpm_conv3x3_isa(), "generic") != 0 && K == 3 && S == 1 && P == 1 && Cin >= 16 &&
           Cout >= 16;
}

static int use_winograd(int Cin, int Cout, int K, int S, int P)
{
    return winograd_enabled && winograd_shape(Cin, Cout, K, S, P);
}

/* Room for either path, so that the scratch size does not depend on
 * ddpm_conv2d_enable_winograd. */
size_t ddpm_conv2d_scratch_floats(int B, int Cin, int H, int W, int Cout, int K, int S, int P)
{
    geometry g = conv_geometry(B, Cin, H, W, Cout, K, S, P);
    size_t n = g.lane_floats * (size_t)g.n_lanes;
    if (winograd_shape(Cin, Cout, K, S, P)) {
        const size_t w = ddpm_conv3x3_scratch_floats(B, Cin, H, W, Cout);
        n = w > n ? w : n;
    }
    return n;
}

/* Whether the lanes run on OpenMP threads (sgemm single-threaded inside each). */
static int lanes_in_parallel(const geometry *g)
{
    return g->n_lanes > 1 && openblas_get_parallel() == 2 && !omp_in_parallel();
}

static void unit_range(const geometry *g, int lane, int *u0, int *u1)
{
    *u0 = (int)((long)lane * g->n_units / g->n_lanes);
    *u1 = (int)((long)(lane + 1) * g->n_units / g->n_lanes);
}

static void forward_unit(const geometry *g, float *out, float *lane_scratch, const float *in,
                         const float *weight, const float *bias, int u)
{
    const int b0 = u * g->nb, nb = g->B - b0 < g->nb ? g->B - b0 : g->nb;
    const int Mu = nb * g->HoWo, HoWo = g->HoWo, Cout = g->Cout;
    const float *x = in + (size_t)b0 * g->Cin * g->H * g->W;
    float *y = out + (size_t)b0 * Cout * HoWo;
    const float *col = x; /* a 1x1 conv's column matrix is the image itself */
    if (g->col_floats) {
        im2col(lane_scratch, x, nb, g->Cin, g->H, g->W, g->K, g->S, g->P, g->Ho, g->Wo);
        col = lane_scratch;
    }
    if (nb == 1) {
        /* the product [Cout, HoWo] is the image's NCHW block: start it at the bias */
        if (bias)
            for (int co = 0; co < Cout; co++)
                for (int i = 0; i < HoWo; i++)
                    y[(size_t)co * HoWo + i] = bias[co];
        ddpm_gemm(g->precision, 0, 0, Cout, HoWo, g->CKK, 1.0f, weight, g->CKK, col, HoWo, bias ? 1.0f : 0.0f,
                  y, HoWo);
        return;
    }
    float *prod = lane_scratch + g->col_floats;
    ddpm_gemm(g->precision, 0, 0, Cout, Mu, g->CKK, 1.0f, weight, g->CKK, col, Mu, 0.0f, prod, Mu);
    /* [Cout, nb*HoWo] -> [nb, Cout, HoWo], adding the bias on the way */
    for (int b = 0; b < nb; b++)
        for (int co = 0; co < Cout; co++) {
            const float bv = bias ? bias[co] : 0.0f;
            const float *s = prod + (size_t)co * Mu + (size_t)b * HoWo;
            float *d = y + ((size_t)b * Cout + co) * HoWo;
            for (int i = 0; i < HoWo; i++)
                d[i] = s[i] + bv;
        }
}

void ddpm_conv2d_forward_precision(float *out, float *scratch, const float *in, const float *weight,
                                   const float *bias, int B, int Cin, int H, int W, int Cout, int K, int S,
                                   int P, ddpm_precision precision)
{
    if (use_winograd(Cin, Cout, K, S, P)) {
        ddpm_conv3x3_forward_precision(out, scratch, in, weight, bias, B, Cin, H, W, Cout, precision);
        return;
    }
    geometry g = conv_geometry(B, Cin, H, W, Cout, K, S, P);
    g.precision = precision;
#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(&g))
    for (int lane = 0; lane < g.n_lanes; lane++) {
        int u0, u1;
        unit_range(&g, lane, &u0, &u1);
        for (int u = u0; u < u1; u++)
            forward_unit(&g, out, scratch + (size_t)lane * g.lane_floats, in, weight, bias, u);
    }
}

void ddpm_conv2d_forward(float *out, float *scratch, const float *in, const float *weight, const float *bias,
                         int B, int Cin, int H, int W, int Cout, int K, int S, int P)
{
    ddpm_conv2d_forward_precision(out, scratch, in, weight, bias, B, Cin, H, W, Cout, K, S, P,
                                  DDPM_PRECISION_FP32);
}

/* One unit of the backward: dW_lane (+)= dout_p col^T (beta 0 on the lane's first
 * unit), din = beta din + col2im(W^T dout_p) (with beta = 0 the unit's din block is
 * cleared here, while it is about to be in cache anyway, and never read). */
static void backward_unit(const geometry *g, float *din, float beta, float *dw_lane, int first,
                          float *lane_scratch, const float *dout, const float *in, const float *weight, int u)
{
    const int b0 = u * g->nb, nb = g->B - b0 < g->nb ? g->B - b0 : g->nb;
    const int Mu = nb * g->HoWo, HoWo = g->HoWo, Cout = g->Cout, CKK = g->CKK;
    const size_t in_image = (size_t)g->Cin * g->H * g->W;
    const float *x = in + (size_t)b0 * in_image;
    const float *dy = dout + (size_t)b0 * Cout * HoWo;
    float *col = lane_scratch;
    const float *dout_p = dy; /* nb = 1: dout's NCHW block is already [Cout, HoWo] */
    if (nb > 1) {
        float *p = lane_scratch + g->col_floats;
        for (int b = 0; b < nb; b++)
            for (int co = 0; co < Cout; co++)
                memcpy(p + (size_t)co * Mu + (size_t)b * HoWo, dy + ((size_t)b * Cout + co) * HoWo,
                       (size_t)HoWo * sizeof(float));
        dout_p = p;
    }
    if (dw_lane) {
        const float *c = x;
        if (g->col_floats) {
            im2col(col, x, nb, g->Cin, g->H, g->W, g->K, g->S, g->P, g->Ho, g->Wo);
            c = col;
        }
        ddpm_gemm(g->precision, 0, 1, Cout, CKK, Mu, 1.0f, dout_p, Mu, c, Mu, first ? 0.0f : 1.0f, dw_lane,
                  CKK);
    }
    if (din) {
        float *dx = din + (size_t)b0 * in_image;
        if (!g->col_floats) {
            /* 1x1 (nb = 1): dx [Cin, HW] = beta dx + W^T dout_p, straight from sgemm */
            ddpm_gemm(g->precision, 1, 0, CKK, Mu, Cout, 1.0f, weight, CKK, dout_p, Mu, beta, dx, Mu);
            return;
        }
        const size_t n_dx = (size_t)nb * in_image;
        if (beta == 0.0f)
            memset(dx, 0, n_dx * sizeof(float));
        else if (beta != 1.0f)
            for (size_t i = 0; i < n_dx; i++)
                dx[i] *= beta;
        ddpm_gemm(g->precision, 1, 0, CKK, Mu, Cout, 1.0f, weight, CKK, dout_p, Mu, 0.0f, col, Mu);
        col2im_add(dx, col, nb, g->Cin, g->H, g->W, g->K, g->S, g->P, g->Ho, g->Wo);
    }
}

void ddpm_conv2d_backward_precision(float *din, float beta, float *dweight, float *dbias, float *scratch,
                                    const float *dout, const float *in, const float *weight, int B, int Cin,
                                    int H, int W, int Cout, int K, int S, int P, ddpm_precision precision)
{
    if (use_winograd(Cin, Cout, K, S, P)) {
        ddpm_conv3x3_backward_precision(din, beta, dweight, dbias, scratch, dout, in, weight, B, Cin, H, W,
                                        Cout, precision);
        return;
    }
    geometry g = conv_geometry(B, Cin, H, W, Cout, K, S, P);
    g.precision = precision;
    const size_t HoWo = (size_t)g.HoWo;
    const size_t dw_offset = g.col_floats + g.prod_floats;

    /* dbias += row sums of dout over (b, HoWo), in double, in a fixed order */
    if (dbias) {
#pragma omp parallel for schedule(static) if (Cout * HoWo * B > 32768)
        for (int co = 0; co < Cout; co++) {
            double sum = 0.0;
            for (int b = 0; b < B; b++)
                sum += ddpm_sum_fixed(dout + ((size_t)b * Cout + co) * HoWo, HoWo);
            dbias[co] += (float)sum;
        }
    }
    if (!din && !dweight)
        return;

#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(&g))
    for (int lane = 0; lane < g.n_lanes; lane++) {
        float *ls = scratch + (size_t)lane * g.lane_floats;
        int u0, u1;
        unit_range(&g, lane, &u0, &u1);
        for (int u = u0; u < u1; u++)
            backward_unit(&g, din, beta, dweight ? ls + dw_offset : NULL, u == u0, ls, dout, in, weight, u);
    }

    if (dweight) {
        /* dweight += the lanes' sums, added in lane order */
        const size_t n = (size_t)Cout * g.CKK;
#pragma omp parallel for schedule(static) if (n * g.n_lanes > 32768)
        for (size_t i = 0; i < n; i++) {
            float s = 0.0f;
            for (int lane = 0; lane < g.n_lanes; lane++)
                s += scratch[(size_t)lane * g.lane_floats + dw_offset + i];
            dweight[i] += s;
        }
    }
}

void ddpm_conv2d_backward(float *din, float beta, float *dweight, float *dbias, float *scratch,
                          const float *dout, const float *in, const float *weight, int B, int Cin, int H,
                          int W, int Cout, int K, int S, int P)
{
    ddpm_conv2d_backward_precision(din, beta, dweight, dbias, scratch, dout, in, weight, B, Cin, H, W, Cout,
                                   K, S, P, DDPM_PRECISION_FP32);
}
