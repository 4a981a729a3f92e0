/* inception.c: the FID Inception-v3 forward pass (see include/ddpm/inception.h).
 *
 * Images go through the network in groups of GROUP. The stem (Conv2d_1a ..
 * Conv2d_4a and its two max pools) runs image by image: its products are large
 * already (up to 147x147 columns), and one image's stem temporaries are the
 * largest buffers of the network. From Mixed_5b on, a group's activations are
 * one tensor [C, GROUP, H, W]: channel-major with the group's images side by
 * side. A 1x1 convolution multiplies the input itself, any other one goes
 * through one im2col of the group into [Cin*kh*kw, GROUP*Ho*Wo]; the product
 * is then one sgemm per image on its own columns (leading dimension
 * GROUP*Ho*Wo), because OpenBLAS rounds a column by where it falls in a
 * product. 3x3 stride-1 convolutions of 16 and more channels at 17x17 and up
 * go to conv2d's Winograd as a batch of the group's images, so its weight
 * transform is paid once per group. A group always has GROUP slots (missing
 * images of the last group are zero planes whose features are dropped), so
 * every product has the same shape whatever the number of images in the call:
 * an image's features are the same bytes alone, in any slot, in any batch.
 * Groups run in parallel over OpenMP threads, each group whole on one thread
 * with single-threaded sgemm calls, so the thread count does not change them
 * either.
 *
 * Each thread works in a workspace that is a stack of floats: a block takes its
 * output and temporaries from it and gives the temporaries back; its size is
 * found at load time by running the forward once in a measuring mode that only
 * counts. Branch outputs are written straight into their channel slice of the
 * block's output, so concatenation costs nothing. */
#include "ddpm/inception.h"
#include "ddpm/platform.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/ops.h"
#include "ddpm/pth.h"

typedef struct {
    int cin, cout, kh, kw, sh, sw, ph, pw;
    float *weight; /* [cout, cin, kh, kw], BatchNorm folded in */
    float *bias;   /* [cout] */
} conv;

typedef struct {
    conv b1x1, b5x5_1, b5x5_2, dbl_1, dbl_2, dbl_3, pool;
    int cout;
} block_a;
typedef struct {
    conv b3x3, dbl_1, dbl_2, dbl_3;
    int cout;
} block_b;
typedef struct {
    conv b1x1, b7_1, b7_2, b7_3, dbl_1, dbl_2, dbl_3, dbl_4, dbl_5, pool;
    int cout;
} block_c;
typedef struct {
    conv b3_1, b3_2, b7_1, b7_2, b7_3, b7_4;
    int cout;
} block_d;
typedef struct {
    conv b1x1, b3_1, b3_2a, b3_2b, dbl_1, dbl_2, dbl_3a, dbl_3b, pool;
    int cout, max_pool;
} block_e;

typedef struct {
    float *base;
    size_t used, peak;
    int measure; /* count only: base is NULL and no op runs */
} workspace;

struct ddpm_inception {
    conv c1a, c2a, c2b, c3b, c4a;
    block_a m5b, m5c, m5d;
    block_b m6a;
    block_c m6b, m6c, m6d, m6e;
    block_d m7a;
    block_e m7b, m7c;
    int n_features;
    char sha256[65];
    float *params;
    size_t n_params, used_params;
    size_t ws_floats;
    workspace *ws;
    int n_ws;
};

/* ---- workspace ---------------------------------------------------------- */

static float *ws_alloc(workspace *ws, size_t n)
{
    n = (n + 15) & ~(size_t)15; /* 64-byte steps */
    float *p = ws->measure ? NULL : ws->base + ws->used;
    ws->used += n;
    if (ws->used > ws->peak)
        ws->peak = ws->used;
    return p;
}

/* ---- layers --------------------------------------------------------------- */

enum { GROUP = 8 }; /* images per group (see the top of the file); 4 and 16 ran as fast */
enum { WINOGRAD_MIN_SIDE = 16 };

static int out_size(int n, int k, int s, int p)
{
    return (n + 2 * p - k) / s + 1;
}

/* Output positions o in [*lo, *hi) read input index o*s - p + k inside [0, n). */
static void valid_range(int n, int n_out, int s, int p, int k, int *lo, int *hi)
{
    int l = 0;
    while (l < n_out && l * s - p + k < 0)
        l++;
    int h = n_out;
    while (h > l && (h - 1) * s - p + k >= n)
        h--;
    *lo = l;
    *hi = h;
}

/* col [cin*kh*kw, G*Ho*Wo] of in [cin, G, H, W] (zero outside the image): row
 * (ci*kh + i)*kw + j, column (g*Ho + oy)*Wo + ox. */
static void im2col(float *col, const float *in, const conv *c, int G, int H, int W, int Ho, int Wo)
{
    size_t HoWo = (size_t)Ho * Wo;
    for (int ci = 0; ci < c->cin; ci++)
        for (int i = 0; i < c->kh; i++)
            for (int j = 0; j < c->kw; j++) {
                float *row = col + ((size_t)(ci * c->kh + i) * c->kw + j) * G * HoWo;
                int y_lo, y_hi, x_lo, x_hi;
                valid_range(H, Ho, c->sh, c->ph, i, &y_lo, &y_hi);
                valid_range(W, Wo, c->sw, c->pw, j, &x_lo, &x_hi);
                for (int g = 0; g < G; g++) {
                    const float *plane = in + ((size_t)ci * G + g) * H * W;
                    float *r = row + (size_t)g * HoWo;
                    memset(r, 0, sizeof(float) * (size_t)y_lo * Wo);
                    for (int oy = y_lo; oy < y_hi; oy++) {
                        float *ro = r + (size_t)oy * Wo;
                        const float *src = plane + (size_t)(oy * c->sh - c->ph + i) * W - c->pw + j;
                        for (int ox = 0; ox < x_lo; ox++)
                            ro[ox] = 0.0f;
                        if (c->sw == 1)
                            memcpy(ro + x_lo, src + x_lo, sizeof(float) * (size_t)(x_hi - x_lo));
                        else
                            for (int ox = x_lo; ox < x_hi; ox++)
                                ro[ox] = src[ox * c->sw];
                        for (int ox = x_hi; ox < Wo; ox++)
                            ro[ox] = 0.0f;
                    }
                    memset(r + (size_t)y_hi * Wo, 0, sizeof(float) * (size_t)(Ho - y_hi) * Wo);
                }
            }
}

static int conv2d_supports(const conv *c)
{
    return c->kh == c->kw && (c->kh == 1 || c->kh == 3) && c->sh == c->sw && (c->sh == 1 || c->sh == 2) &&
           c->ph == c->pw && (c->ph == 0 || c->ph == 1);
}

/* A 3x3 stride-1 conv that conv2d hands to Winograd (ddpm_conv3x3: built with
 * AVX-512, >= 16 channels in and out), padding 1 or 0: a padding-0 conv is the
 * interior of the padding-1 one (its output (y, x) is the padded conv's
 * (y + 1, x + 1)), which costs (H / (H - 2))^2 more outputs (6% for Conv2d_4a's
 * 73x73) and runs at about twice sgemm's speed per multiply-add. */
static int winograd_fits(const conv *c)
{
#if defined(__AVX512F__)
    return c->kh == 3 && c->kw == 3 && c->sh == 1 && c->sw == 1 && c->ph == c->pw && c->ph <= 1 &&
           c->cin >= 16 && c->cout >= 16;
#else
    (void)c;
    return 0;
#endif
}

/* out = ReLU(in), or its interior (a border of `crop` pixels removed) for
 * out [C, G, H - 2 crop, W - 2 crop] from in [G, C, H, W]. */
static void relu_from_nchw(float *out, const float *in, int C, int G, int H, int W, int crop)
{
    int Ho = H - 2 * crop, Wo = W - 2 * crop;
    for (int c = 0; c < C; c++)
        for (int g = 0; g < G; g++) {
            const float *src = in + ((size_t)g * C + c) * H * W;
            float *dst = out + ((size_t)c * G + g) * Ho * Wo;
            for (int y = 0; y < Ho; y++)
                for (int x = 0; x < Wo; x++) {
                    float v = src[(size_t)(y + crop) * W + x + crop];
                    dst[(size_t)y * Wo + x] = v > 0.0f ? v : 0.0f;
                }
        }
}

/* out [cout, G, Ho, Wo] = ReLU(conv(in) + bias) of in [cin, G, H, W]; returns
 * Ho, Wo. Three ways: the stem's (G = 1) 1x1 and 3x3 convs through
 * ddpm_conv2d_forward, 3x3 stride-1 ones of the blocks through it too as a
 * batch of G images (Winograd; the group moved to [G, cin, H, W] and back),
 * and the rest as one im2col + sgemm over the group. */
static void conv_relu(workspace *ws, const conv *c, float *out, const float *in, int G, int H, int W,
                      int *Ho_out, int *Wo_out)
{
    int Ho = out_size(H, c->kh, c->sh, c->ph), Wo = out_size(W, c->kw, c->sw, c->pw);
    *Ho_out = Ho;
    *Wo_out = Wo;
    size_t mark = ws->used, cols = (size_t)G * Ho * Wo, HW = (size_t)H * W;
    /* At 8x8 (Mixed_7b/7c) Winograd's weight transform, redone every call,
     * costs more than it saves: 7% slower there than the im2col product. */
    if (winograd_fits(c) && H >= WINOGRAD_MIN_SIDE) {
        int crop = 1 - c->ph; /* a padding-0 conv: the interior of the padding-1 one */
        const float *x = in;
        if (G > 1) {
            float *xt = ws_alloc(ws, (size_t)c->cin * G * HW);
            if (!ws->measure)
                for (int g = 0; g < G; g++)
                    for (int ci = 0; ci < c->cin; ci++)
                        memcpy(xt + ((size_t)g * c->cin + ci) * HW, in + ((size_t)ci * G + g) * HW,
                               sizeof(float) * HW);
            x = xt;
        }
        float *y = ws_alloc(ws, (size_t)c->cout * G * HW);
        float *scratch = ws_alloc(ws, ddpm_conv2d_scratch_floats(G, c->cin, H, W, c->cout, 3, 1, 1));
        if (!ws->measure) {
            ddpm_conv2d_forward(y, scratch, x, c->weight, c->bias, G, c->cin, H, W, c->cout, 3, 1, 1);
            relu_from_nchw(out, y, c->cout, G, H, W, crop);
        }
    } else if (G == 1 && conv2d_supports(c)) {
        float *scratch =
            ws_alloc(ws, ddpm_conv2d_scratch_floats(1, c->cin, H, W, c->cout, c->kh, c->sh, c->ph));
        if (!ws->measure) {
            ddpm_conv2d_forward(out, scratch, in, c->weight, c->bias, 1, c->cin, H, W, c->cout, c->kh, c->sh,
                                c->ph);
            for (size_t k = 0; k < (size_t)c->cout * cols; k++)
                out[k] = out[k] > 0.0f ? out[k] : 0.0f;
        }
    } else {
        int K = c->cin * c->kh * c->kw;
        const float *x = in; /* a 1x1 stride-1 conv multiplies the input itself */
        if (c->kh != 1 || c->kw != 1 || c->sh != 1 || c->sw != 1 || c->ph != 0 || c->pw != 0) {
            float *col = ws_alloc(ws, (size_t)K * cols);
            if (!ws->measure)
                im2col(col, in, c, G, H, W, Ho, Wo);
            x = col;
        }
        if (!ws->measure) {
            /* One product per image, on its columns of the group (leading
             * dimension G*Ho*Wo): OpenBLAS rounds a column differently by where
             * it falls in a product (its edge kernels; with the Haswell kernels
             * anywhere), so one product over the group would give an image
             * other bytes in another slot or alone. */
            int HWo = Ho * Wo;
            for (int g = 0; g < G; g++)
                ddpm_sgemm(0, 0, c->cout, HWo, K, 1.0f, c->weight, K, x + (size_t)g * HWo, (int)cols, 0.0f,
                           out + (size_t)g * HWo, (int)cols);
            for (int o = 0; o < c->cout; o++) {
                float *r = out + (size_t)o * cols, b = c->bias[o];
                for (size_t k = 0; k < cols; k++) {
                    float v = r[k] + b;
                    r[k] = v > 0.0f ? v : 0.0f;
                }
            }
        }
    }
    ws->used = mark;
}

enum { POOL_MAX, POOL_AVG_EXCLUDE_PAD };

/* 3x3 pooling of the planes in [n_planes, H, W] with stride s and padding p.
 * POOL_MAX ignores the padding (it is -inf); POOL_AVG_EXCLUDE_PAD divides by
 * the number of window pixels inside the image (pytorch-fid's
 * count_include_pad=False). */
static void pool3x3(workspace *ws, float *out, const float *in, int n_planes, int H, int W, int s, int p,
                    int mode)
{
    if (ws->measure)
        return;
    int Ho = out_size(H, 3, s, p), Wo = out_size(W, 3, s, p);
    for (int ch = 0; ch < n_planes; ch++) {
        const float *plane = in + (size_t)ch * H * W;
        float *o = out + (size_t)ch * Ho * Wo;
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                int y0 = oy * s - p, x0 = ox * s - p;
                int ya = y0 < 0 ? 0 : y0, yb = y0 + 3 > H ? H : y0 + 3;
                int xa = x0 < 0 ? 0 : x0, xb = x0 + 3 > W ? W : x0 + 3;
                float acc = mode == POOL_MAX ? -INFINITY : 0.0f;
                for (int y = ya; y < yb; y++)
                    for (int x = xa; x < xb; x++) {
                        float v = plane[(size_t)y * W + x];
                        acc = mode == POOL_MAX ? (v > acc ? v : acc) : acc + v;
                    }
                o[(size_t)oy * Wo + ox] = mode == POOL_MAX ? acc : acc / (float)((yb - ya) * (xb - xa));
            }
    }
}

/* ---- blocks (pytorch-fid's FIDInceptionA/C/E_1/E_2, torchvision's B and D) --
 * x [cin, G, H, W] -> out [cout, G, Ho, Wo]; a branch's output is the channel
 * slice out + off * G*Ho*Wo. */

static float *block_a_forward(workspace *ws, const block_a *b, const float *x, int G, int H, int W)
{
    size_t HW = (size_t)G * H * W;
    float *out = ws_alloc(ws, (size_t)b->cout * HW);
    size_t mark = ws->used;
    int h, w, off = 0;
    conv_relu(ws, &b->b1x1, out, x, G, H, W, &h, &w);
    off += b->b1x1.cout;
    float *t = ws_alloc(ws, (size_t)b->b5x5_1.cout * HW);
    conv_relu(ws, &b->b5x5_1, t, x, G, H, W, &h, &w);
    conv_relu(ws, &b->b5x5_2, out ? out + off * HW : NULL, t, G, H, W, &h, &w);
    off += b->b5x5_2.cout;
    float *t1 = ws_alloc(ws, (size_t)b->dbl_1.cout * HW), *t2 = ws_alloc(ws, (size_t)b->dbl_2.cout * HW);
    conv_relu(ws, &b->dbl_1, t1, x, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_2, t2, t1, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_3, out ? out + off * HW : NULL, t2, G, H, W, &h, &w);
    off += b->dbl_3.cout;
    float *p = ws_alloc(ws, (size_t)b->pool.cin * HW);
    pool3x3(ws, p, x, b->pool.cin * G, H, W, 1, 1, POOL_AVG_EXCLUDE_PAD);
    conv_relu(ws, &b->pool, out ? out + off * HW : NULL, p, G, H, W, &h, &w);
    ws->used = mark;
    return out;
}

static float *block_b_forward(workspace *ws, const block_b *b, const float *x, int cin, int G, int H, int W,
                              int *Ho, int *Wo)
{
    int h = out_size(H, 3, 2, 0), w = out_size(W, 3, 2, 0);
    size_t HW = (size_t)G * h * w, HWin = (size_t)G * H * W;
    float *out = ws_alloc(ws, (size_t)b->cout * HW);
    size_t mark = ws->used;
    int off = 0;
    conv_relu(ws, &b->b3x3, out, x, G, H, W, Ho, Wo);
    off += b->b3x3.cout;
    float *t1 = ws_alloc(ws, (size_t)b->dbl_1.cout * HWin), *t2 = ws_alloc(ws, (size_t)b->dbl_2.cout * HWin);
    conv_relu(ws, &b->dbl_1, t1, x, G, H, W, Ho, Wo);
    conv_relu(ws, &b->dbl_2, t2, t1, G, H, W, Ho, Wo);
    conv_relu(ws, &b->dbl_3, out ? out + off * HW : NULL, t2, G, H, W, Ho, Wo);
    off += b->dbl_3.cout;
    pool3x3(ws, out ? out + off * HW : NULL, x, cin * G, H, W, 2, 0, POOL_MAX);
    ws->used = mark;
    *Ho = h;
    *Wo = w;
    return out;
}

static float *block_c_forward(workspace *ws, const block_c *b, const float *x, int G, int H, int W)
{
    size_t HW = (size_t)G * H * W;
    float *out = ws_alloc(ws, (size_t)b->cout * HW);
    size_t mark = ws->used;
    int h, w, off = 0;
    conv_relu(ws, &b->b1x1, out, x, G, H, W, &h, &w);
    off += b->b1x1.cout;
    float *t1 = ws_alloc(ws, (size_t)b->b7_1.cout * HW), *t2 = ws_alloc(ws, (size_t)b->b7_1.cout * HW);
    conv_relu(ws, &b->b7_1, t1, x, G, H, W, &h, &w);
    conv_relu(ws, &b->b7_2, t2, t1, G, H, W, &h, &w);
    conv_relu(ws, &b->b7_3, out ? out + off * HW : NULL, t2, G, H, W, &h, &w);
    off += b->b7_3.cout;
    conv_relu(ws, &b->dbl_1, t1, x, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_2, t2, t1, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_3, t1, t2, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_4, t2, t1, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_5, out ? out + off * HW : NULL, t2, G, H, W, &h, &w);
    off += b->dbl_5.cout;
    float *p = ws_alloc(ws, (size_t)b->pool.cin * HW);
    pool3x3(ws, p, x, b->pool.cin * G, H, W, 1, 1, POOL_AVG_EXCLUDE_PAD);
    conv_relu(ws, &b->pool, out ? out + off * HW : NULL, p, G, H, W, &h, &w);
    ws->used = mark;
    return out;
}

static float *block_d_forward(workspace *ws, const block_d *b, const float *x, int cin, int G, int H, int W,
                              int *Ho, int *Wo)
{
    int h = out_size(H, 3, 2, 0), w = out_size(W, 3, 2, 0);
    size_t HW = (size_t)G * h * w, HWin = (size_t)G * H * W;
    float *out = ws_alloc(ws, (size_t)b->cout * HW);
    size_t mark = ws->used;
    int off = 0;
    float *t1 = ws_alloc(ws, (size_t)b->b3_1.cout * HWin);
    conv_relu(ws, &b->b3_1, t1, x, G, H, W, Ho, Wo);
    conv_relu(ws, &b->b3_2, out, t1, G, H, W, Ho, Wo);
    off += b->b3_2.cout;
    float *t2 = ws_alloc(ws, (size_t)b->b7_1.cout * HWin);
    conv_relu(ws, &b->b7_1, t1, x, G, H, W, Ho, Wo);
    conv_relu(ws, &b->b7_2, t2, t1, G, H, W, Ho, Wo);
    conv_relu(ws, &b->b7_3, t1, t2, G, H, W, Ho, Wo);
    conv_relu(ws, &b->b7_4, out ? out + off * HW : NULL, t1, G, H, W, Ho, Wo);
    off += b->b7_4.cout;
    pool3x3(ws, out ? out + off * HW : NULL, x, cin * G, H, W, 2, 0, POOL_MAX);
    ws->used = mark;
    *Ho = h;
    *Wo = w;
    return out;
}

static float *block_e_forward(workspace *ws, const block_e *b, const float *x, int G, int H, int W)
{
    size_t HW = (size_t)G * H * W;
    float *out = ws_alloc(ws, (size_t)b->cout * HW);
    size_t mark = ws->used;
    int h, w, off = 0;
    conv_relu(ws, &b->b1x1, out, x, G, H, W, &h, &w);
    off += b->b1x1.cout;
    float *t1 = ws_alloc(ws, (size_t)b->b3_1.cout * HW);
    conv_relu(ws, &b->b3_1, t1, x, G, H, W, &h, &w);
    conv_relu(ws, &b->b3_2a, out ? out + off * HW : NULL, t1, G, H, W, &h, &w);
    off += b->b3_2a.cout;
    conv_relu(ws, &b->b3_2b, out ? out + off * HW : NULL, t1, G, H, W, &h, &w);
    off += b->b3_2b.cout;
    ws->used = mark;
    t1 = ws_alloc(ws, (size_t)b->dbl_1.cout * HW);
    float *t2 = ws_alloc(ws, (size_t)b->dbl_2.cout * HW);
    conv_relu(ws, &b->dbl_1, t1, x, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_2, t2, t1, G, H, W, &h, &w);
    conv_relu(ws, &b->dbl_3a, out ? out + off * HW : NULL, t2, G, H, W, &h, &w);
    off += b->dbl_3a.cout;
    conv_relu(ws, &b->dbl_3b, out ? out + off * HW : NULL, t2, G, H, W, &h, &w);
    off += b->dbl_3b.cout;
    ws->used = mark;
    float *p = ws_alloc(ws, (size_t)b->pool.cin * HW);
    /* 7b averages without the padding; 7c takes the maximum (pytorch-fid's E_2). */
    pool3x3(ws, p, x, b->pool.cin * G, H, W, 1, 1, b->max_pool ? POOL_MAX : POOL_AVG_EXCLUDE_PAD);
    conv_relu(ws, &b->pool, out ? out + off * HW : NULL, p, G, H, W, &h, &w);
    ws->used = mark;
    return out;
}

static int prepare(float *x, const ddpm_inception_image *im);

/* The stem of one image x [3, 299, 299] -> [c4a.cout, 35, 35] (for the
 * published weights), H and W its sides. */
static float *stem_forward(const ddpm_inception *net, workspace *ws, const float *x, int *H_out, int *W_out)
{
    int H = DDPM_INCEPTION_SIZE, W = DDPM_INCEPTION_SIZE, h, w;
    float *a = ws_alloc(ws, (size_t)net->c1a.cout * out_size(H, 3, 2, 0) * out_size(W, 3, 2, 0));
    conv_relu(ws, &net->c1a, a, x, 1, H, W, &H, &W);
    float *b = ws_alloc(ws, (size_t)net->c2a.cout * (H - 2) * (W - 2));
    conv_relu(ws, &net->c2a, b, a, 1, H, W, &H, &W);
    float *c = ws_alloc(ws, (size_t)net->c2b.cout * H * W);
    conv_relu(ws, &net->c2b, c, b, 1, H, W, &H, &W);
    h = out_size(H, 3, 2, 0), w = out_size(W, 3, 2, 0);
    float *d = ws_alloc(ws, (size_t)net->c2b.cout * h * w);
    pool3x3(ws, d, c, net->c2b.cout, H, W, 2, 0, POOL_MAX);
    H = h, W = w;
    float *e = ws_alloc(ws, (size_t)net->c3b.cout * H * W);
    conv_relu(ws, &net->c3b, e, d, 1, H, W, &H, &W);
    float *f = ws_alloc(ws, (size_t)net->c4a.cout * (H - 2) * (W - 2));
    conv_relu(ws, &net->c4a, f, e, 1, H, W, &H, &W);
    h = out_size(H, 3, 2, 0), w = out_size(W, 3, 2, 0);
    float *g = ws_alloc(ws, (size_t)net->c4a.cout * h * w);
    pool3x3(ws, g, f, net->c4a.cout, H, W, 2, 0, POOL_MAX);
    *H_out = h;
    *W_out = w;
    return g;
}

/* features[m, n_features] of the images ims[0..m), m <= GROUP. Returns nonzero
 * when an image cannot be prepared (out of memory). */
static int forward(const ddpm_inception *net, workspace *ws, float *features, const ddpm_inception_image *ims,
                   int m)
{
    const int G = GROUP;
    ws->used = 0;
    int H = out_size(DDPM_INCEPTION_SIZE, 3, 2, 0) - 2; /* the stem's sides: 1a, 2a: 147 */
    H = out_size(H, 3, 2, 0) - 2;                        /* max pool, 4a: 71 */
    H = out_size(H, 3, 2, 0);                            /* max pool: 35 */
    int W = H;
    size_t HW = (size_t)H * W, C = (size_t)net->c4a.cout;
    float *g = ws_alloc(ws, C * G * HW); /* [C, G, 35, 35] */
    size_t mark = ws->used;
    for (int k = 0; k < G; k++) {
        if (!ws->measure && k >= m) { /* missing images of the last group: zero planes */
            for (size_t ch = 0; ch < C; ch++)
                memset(g + (ch * G + k) * HW, 0, sizeof(float) * HW);
            continue;
        }
        float *x = ws_alloc(ws, (size_t)3 * DDPM_INCEPTION_SIZE * DDPM_INCEPTION_SIZE);
        if (!ws->measure && prepare(x, &ims[k]))
            return DDPM_ENOMEM;
        int h, w;
        const float *s = stem_forward(net, ws, x, &h, &w);
        if (!ws->measure)
            for (size_t ch = 0; ch < C; ch++)
                memcpy(g + (ch * G + k) * HW, s + ch * HW, sizeof(float) * HW);
        ws->used = mark;
    }
    g = block_a_forward(ws, &net->m5b, g, G, H, W);
    g = block_a_forward(ws, &net->m5c, g, G, H, W);
    g = block_a_forward(ws, &net->m5d, g, G, H, W);
    g = block_b_forward(ws, &net->m6a, g, net->m5d.cout, G, H, W, &H, &W);
    g = block_c_forward(ws, &net->m6b, g, G, H, W);
    g = block_c_forward(ws, &net->m6c, g, G, H, W);
    g = block_c_forward(ws, &net->m6d, g, G, H, W);
    g = block_c_forward(ws, &net->m6e, g, G, H, W);
    g = block_d_forward(ws, &net->m7a, g, net->m6e.cout, G, H, W, &H, &W);
    g = block_e_forward(ws, &net->m7b, g, G, H, W);
    g = block_e_forward(ws, &net->m7c, g, G, H, W);
    if (ws->measure)
        return 0;
    HW = (size_t)H * W;
    for (int k = 0; k < m; k++)
        for (int ch = 0; ch < net->n_features; ch++) { /* global average pool, summed in double */
            const float *plane = g + ((size_t)ch * G + k) * HW;
            double s = 0.0;
            for (size_t i = 0; i < HW; i++)
                s += plane[i];
            features[(size_t)k * net->n_features + ch] = (float)(s / (double)HW);
        }
    return 0;
}

/* ---- resize ----------------------------------------------------------------- */

/* PyTorch's source index and weight for output o, in float. The source
 * coordinate of a 299-pixel side is only known to float's 3e-5 there, and
 * PyTorch's kernel rounds it differently (its results differ from these by up to
 * 1.2e-5 on values in [0, 1], far below one grey level, 4e-3). */
static void bilinear_coord(int o, int in, int out, int *i0, int *i1, float *l1)
{
    float scale = (float)in / (float)out;
    float src = scale * ((float)o + 0.5f) - 0.5f;
    if (src < 0.0f)
        src = 0.0f;
    int i = (int)floorf(src);
    if (i > in - 1)
        i = in - 1;
    float l = src - (float)i;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *l1 = l < 0.0f ? 0.0f : l > 1.0f ? 1.0f : l;
}

void ddpm_inception_resize(float *out, const float *in, int C, int H, int W, int Ho, int Wo)
{
    for (int oy = 0; oy < Ho; oy++) {
        int y0, y1;
        float ly;
        bilinear_coord(oy, H, Ho, &y0, &y1, &ly);
        for (int ox = 0; ox < Wo; ox++) {
            int x0, x1;
            float lx;
            bilinear_coord(ox, W, Wo, &x0, &x1, &lx);
            for (int c = 0; c < C; c++) {
                const float *p = in + (size_t)c * H * W;
                float top = (1.0f - lx) * p[(size_t)y0 * W + x0] + lx * p[(size_t)y0 * W + x1];
                float bot = (1.0f - lx) * p[(size_t)y1 * W + x0] + lx * p[(size_t)y1 * W + x1];
                out[((size_t)c * Ho + oy) * Wo + ox] = (1.0f - ly) * top + ly * bot;
            }
        }
    }
}

/* ---- loading ---------------------------------------------------------------- */

typedef struct {
    ddpm_inception *net;
    const ddpm_pth *f;
    int counting; /* first pass: only add up the parameter count */
} loader;

/* Reads prefix.conv.weight [cout, cin, kh, kw] and prefix.bn.*, folds the
 * BatchNorm (eps 0.001) into weight and bias. */
static int load_conv(loader *L, conv *c, const char *prefix, int cin, int kh, int kw, int sh, int sw, int ph,
                     int pw)
{
    char name[128];
    const char *file = ddpm_pth_name(L->f);
    snprintf(name, sizeof name, "%s.conv.weight", prefix);
    const ddpm_pth_tensor *t = ddpm_pth_find(L->f, name);
    if (!t)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%s' is missing (not the FID Inception's weights)", file,
                          name);
    if (t->ndim != 4 || t->shape[0] < 1 || t->shape[0] > 65536 || t->shape[1] != cin || t->shape[2] != kh ||
        t->shape[3] != kw)
        return ddpm_error(
            DDPM_EFORMAT, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [*, %d, %d, %d]",
            file, name, (long long)(t->ndim > 0 ? t->shape[0] : 0),
            (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)(t->ndim > 2 ? t->shape[2] : 0),
            (long long)(t->ndim > 3 ? t->shape[3] : 0), cin, kh, kw);
    *c = (conv){
        .cin = cin, .cout = (int)t->shape[0], .kh = kh, .kw = kw, .sh = sh, .sw = sw, .ph = ph, .pw = pw};
    size_t n_w = (size_t)c->cout * cin * kh * kw;
    if (L->counting) {
        L->net->n_params += n_w + (size_t)c->cout;
        return 0;
    }
    ddpm_inception *net = L->net;
    c->weight = net->params + net->used_params;
    c->bias = c->weight + n_w;
    net->used_params += n_w + (size_t)c->cout;
    int rc = ddpm_pth_read_f32(L->f, name, c->weight, n_w);
    if (rc)
        return rc;
    float *bn = malloc(sizeof(float) * 4 * (size_t)c->cout);
    if (!bn)
        return ddpm_error(DDPM_ENOMEM, "out of memory");
    static const char *const parts[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int k = 0; k < 4 && !rc; k++) {
        snprintf(name, sizeof name, "%s.bn.%s", prefix, parts[k]);
        rc = ddpm_pth_read_f32(L->f, name, bn + (size_t)k * c->cout, (size_t)c->cout);
    }
    for (int o = 0; o < c->cout && !rc; o++) {
        double gamma = bn[o], beta = bn[c->cout + o], mean = bn[2 * c->cout + o], var = bn[3 * c->cout + o];
        if (!(var >= 0.0) || !isfinite(gamma) || !isfinite(beta) || !isfinite(mean) || !isfinite(var)) {
            rc = ddpm_error(DDPM_EFORMAT, "%s: %s.bn holds a negative variance or a value that is not finite",
                            file, prefix);
            break;
        }
        double scale = gamma / sqrt(var + 0.001);
        size_t per = (size_t)cin * kh * kw;
        for (size_t k = 0; k < per; k++)
            c->weight[o * per + k] = (float)(c->weight[o * per + k] * scale);
        c->bias[o] = (float)(beta - mean * scale);
    }
    free(bn);
    return rc;
}

#define LOAD(c, name, cin, kh, kw, sh, sw, ph, pw)                                                           \
    do {                                                                                                     \
        int rc_ = load_conv(L, c, name, cin, kh, kw, sh, sw, ph, pw);                                        \
        if (rc_)                                                                                             \
            return rc_;                                                                                      \
    } while (0)

static int load_a(loader *L, block_a *b, const char *m, int cin)
{
    char n[96];
#define P(s) (snprintf(n, sizeof n, "%s.%s", m, s), n)
    LOAD(&b->b1x1, P("branch1x1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b5x5_1, P("branch5x5_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b5x5_2, P("branch5x5_2"), b->b5x5_1.cout, 5, 5, 1, 1, 2, 2);
    LOAD(&b->dbl_1, P("branch3x3dbl_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->dbl_2, P("branch3x3dbl_2"), b->dbl_1.cout, 3, 3, 1, 1, 1, 1);
    LOAD(&b->dbl_3, P("branch3x3dbl_3"), b->dbl_2.cout, 3, 3, 1, 1, 1, 1);
    LOAD(&b->pool, P("branch_pool"), cin, 1, 1, 1, 1, 0, 0);
    b->cout = b->b1x1.cout + b->b5x5_2.cout + b->dbl_3.cout + b->pool.cout;
    return 0;
}

static int load_b(loader *L, block_b *b, const char *m, int cin)
{
    char n[96];
    LOAD(&b->b3x3, P("branch3x3"), cin, 3, 3, 2, 2, 0, 0);
    LOAD(&b->dbl_1, P("branch3x3dbl_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->dbl_2, P("branch3x3dbl_2"), b->dbl_1.cout, 3, 3, 1, 1, 1, 1);
    LOAD(&b->dbl_3, P("branch3x3dbl_3"), b->dbl_2.cout, 3, 3, 2, 2, 0, 0);
    b->cout = b->b3x3.cout + b->dbl_3.cout + cin;
    return 0;
}

static int load_c(loader *L, block_c *b, const char *m, int cin)
{
    char n[96];
    LOAD(&b->b1x1, P("branch1x1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b7_1, P("branch7x7_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b7_2, P("branch7x7_2"), b->b7_1.cout, 1, 7, 1, 1, 0, 3);
    LOAD(&b->b7_3, P("branch7x7_3"), b->b7_2.cout, 7, 1, 1, 1, 3, 0);
    LOAD(&b->dbl_1, P("branch7x7dbl_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->dbl_2, P("branch7x7dbl_2"), b->dbl_1.cout, 7, 1, 1, 1, 3, 0);
    LOAD(&b->dbl_3, P("branch7x7dbl_3"), b->dbl_2.cout, 1, 7, 1, 1, 0, 3);
    LOAD(&b->dbl_4, P("branch7x7dbl_4"), b->dbl_3.cout, 7, 1, 1, 1, 3, 0);
    LOAD(&b->dbl_5, P("branch7x7dbl_5"), b->dbl_4.cout, 1, 7, 1, 1, 0, 3);
    LOAD(&b->pool, P("branch_pool"), cin, 1, 1, 1, 1, 0, 0);
    if (b->b7_2.cout != b->b7_1.cout || b->dbl_1.cout != b->b7_1.cout || b->dbl_2.cout != b->b7_1.cout ||
        b->dbl_3.cout != b->b7_1.cout || b->dbl_4.cout != b->b7_1.cout)
        return ddpm_error(DDPM_EFORMAT, "%s: %s's 7x7 branches have different widths", ddpm_pth_name(L->f),
                          m);
    b->cout = b->b1x1.cout + b->b7_3.cout + b->dbl_5.cout + b->pool.cout;
    return 0;
}

static int load_d(loader *L, block_d *b, const char *m, int cin)
{
    char n[96];
    LOAD(&b->b3_1, P("branch3x3_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b3_2, P("branch3x3_2"), b->b3_1.cout, 3, 3, 2, 2, 0, 0);
    LOAD(&b->b7_1, P("branch7x7x3_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b7_2, P("branch7x7x3_2"), b->b7_1.cout, 1, 7, 1, 1, 0, 3);
    LOAD(&b->b7_3, P("branch7x7x3_3"), b->b7_2.cout, 7, 1, 1, 1, 3, 0);
    LOAD(&b->b7_4, P("branch7x7x3_4"), b->b7_3.cout, 3, 3, 2, 2, 0, 0);
    if (b->b7_1.cout != b->b3_1.cout || b->b7_2.cout != b->b7_1.cout ||
        b->b7_3.cout != b->b7_1.cout) /* t1, t2 */
        return ddpm_error(DDPM_EFORMAT, "%s: %s's branches have different widths", ddpm_pth_name(L->f), m);
    b->cout = b->b3_2.cout + b->b7_4.cout + cin;
    return 0;
}

static int load_e(loader *L, block_e *b, const char *m, int cin, int max_pool)
{
    char n[96];
    LOAD(&b->b1x1, P("branch1x1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b3_1, P("branch3x3_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->b3_2a, P("branch3x3_2a"), b->b3_1.cout, 1, 3, 1, 1, 0, 1);
    LOAD(&b->b3_2b, P("branch3x3_2b"), b->b3_1.cout, 3, 1, 1, 1, 1, 0);
    LOAD(&b->dbl_1, P("branch3x3dbl_1"), cin, 1, 1, 1, 1, 0, 0);
    LOAD(&b->dbl_2, P("branch3x3dbl_2"), b->dbl_1.cout, 3, 3, 1, 1, 1, 1);
    LOAD(&b->dbl_3a, P("branch3x3dbl_3a"), b->dbl_2.cout, 1, 3, 1, 1, 0, 1);
    LOAD(&b->dbl_3b, P("branch3x3dbl_3b"), b->dbl_2.cout, 3, 1, 1, 1, 1, 0);
    LOAD(&b->pool, P("branch_pool"), cin, 1, 1, 1, 1, 0, 0);
#undef P
    b->max_pool = max_pool;
    b->cout = b->b1x1.cout + b->b3_2a.cout + b->b3_2b.cout + b->dbl_3a.cout + b->dbl_3b.cout + b->pool.cout;
    return 0;
}

static int load_all(loader *L)
{
    ddpm_inception *net = L->net;
    LOAD(&net->c1a, "Conv2d_1a_3x3", 3, 3, 3, 2, 2, 0, 0);
    LOAD(&net->c2a, "Conv2d_2a_3x3", net->c1a.cout, 3, 3, 1, 1, 0, 0);
    LOAD(&net->c2b, "Conv2d_2b_3x3", net->c2a.cout, 3, 3, 1, 1, 1, 1);
    LOAD(&net->c3b, "Conv2d_3b_1x1", net->c2b.cout, 1, 1, 1, 1, 0, 0);
    LOAD(&net->c4a, "Conv2d_4a_3x3", net->c3b.cout, 3, 3, 1, 1, 0, 0);
    int rc;
    if ((rc = load_a(L, &net->m5b, "Mixed_5b", net->c4a.cout)) ||
        (rc = load_a(L, &net->m5c, "Mixed_5c", net->m5b.cout)) ||
        (rc = load_a(L, &net->m5d, "Mixed_5d", net->m5c.cout)) ||
        (rc = load_b(L, &net->m6a, "Mixed_6a", net->m5d.cout)) ||
        (rc = load_c(L, &net->m6b, "Mixed_6b", net->m6a.cout)) ||
        (rc = load_c(L, &net->m6c, "Mixed_6c", net->m6b.cout)) ||
        (rc = load_c(L, &net->m6d, "Mixed_6d", net->m6c.cout)) ||
        (rc = load_c(L, &net->m6e, "Mixed_6e", net->m6d.cout)) ||
        (rc = load_d(L, &net->m7a, "Mixed_7a", net->m6e.cout)) ||
        (rc = load_e(L, &net->m7b, "Mixed_7b", net->m7a.cout, 0)) ||
        (rc = load_e(L, &net->m7c, "Mixed_7c", net->m7b.cout, 1)))
        return rc;
    net->n_features = net->m7c.cout;
    return 0;
}

void ddpm_inception_free(ddpm_inception *net)
{
    if (!net)
        return;
    for (int k = 0; k < net->n_ws; k++)
        free(net->ws[k].base);
    free(net->ws);
    free(net->params);
    free(net);
}

int ddpm_inception_load(ddpm_inception **out, const char *path)
{
    *out = NULL;
    ddpm_pth *f = NULL;
    int rc = ddpm_pth_open(&f, path);
    if (rc)
        return rc;
    ddpm_inception *net = calloc(1, sizeof *net);
    if (!net) {
        ddpm_pth_close(f);
        return ddpm_error(DDPM_ENOMEM, "out of memory");
    }
    snprintf(net->sha256, sizeof net->sha256, "%s", ddpm_pth_sha256(f));
    loader L = {net, f, 1};
    rc = load_all(&L);
    if (!rc) {
        net->params = ddpm_malloc(net->n_params, sizeof(float));
        if (!net->params)
            rc = DDPM_ENOMEM;
    }
    if (!rc) {
        L.counting = 0;
        rc = load_all(&L);
    }
    ddpm_pth_close(f);
    if (!rc) {
        workspace measure = {.measure = 1};
        forward(net, &measure, NULL, NULL, GROUP);
        net->ws_floats = measure.peak;
        net->n_ws = omp_get_max_threads();
        net->ws = calloc((size_t)net->n_ws, sizeof(workspace));
        if (!net->ws)
            rc = ddpm_error(DDPM_ENOMEM, "out of memory");
    }
    if (rc) {
        ddpm_inception_free(net);
        return rc;
    }
    *out = net;
    return 0;
}

int ddpm_inception_n_features(const ddpm_inception *net)
{
    return net->n_features;
}
const char *ddpm_inception_sha256(const ddpm_inception *net)
{
    return net->sha256;
}

/* x [3, 299, 299] in [-1, 1] from an image, as pytorch-fid: u / 255, resize, 2x - 1. */
static int prepare(float *x, const ddpm_inception_image *im)
{
    int H = im->height, W = im->width, C = im->channels;
    float *src = malloc(sizeof(float) * 3 * (size_t)H * W);
    if (!src)
        return DDPM_ENOMEM;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < (size_t)H * W; i++)
            src[(size_t)c * H * W + i] = (float)im->pixels[i * C + (C == 3 ? c : 0)] / 255.0f;
    ddpm_inception_resize(x, src, 3, H, W, DDPM_INCEPTION_SIZE, DDPM_INCEPTION_SIZE);
    free(src);
    for (size_t i = 0; i < (size_t)3 * DDPM_INCEPTION_SIZE * DDPM_INCEPTION_SIZE; i++)
        x[i] = 2.0f * x[i] - 1.0f;
    return 0;
}

int ddpm_inception_features(ddpm_inception *net, float *features, const ddpm_inception_image *images, int n)
{
    for (int i = 0; i < n; i++) {
        const ddpm_inception_image *im = &images[i];
        if ((im->channels != 1 && im->channels != 3) || im->height < 1 || im->width < 1 ||
            im->height > DDPM_IMAGE_MAX_SIDE || im->width > DDPM_IMAGE_MAX_SIDE)
            return ddpm_error(DDPM_EINVAL, "image %d: %dx%d with %d channels (1 or 3, sides 1..%d)", i,
                              im->width, im->height, im->channels, DDPM_IMAGE_MAX_SIDE);
    }
    for (int k = 0; k < net->n_ws; k++)
        if (!net->ws[k].base) {
            net->ws[k].base = ddpm_malloc(net->ws_floats, sizeof(float));
            if (!net->ws[k].base)
                return DDPM_ENOMEM;
        }
    int failed = 0, n_groups = (n + GROUP - 1) / GROUP;
    /* Always the whole team, even for one group: inside a parallel region every
     * sgemm and conv2d call runs on its calling thread alone. */
#pragma omp parallel for schedule(dynamic, 1) num_threads(net->n_ws)
    for (int k = 0; k < n_groups; k++) {
        int i0 = k * GROUP, m = n - i0 < GROUP ? n - i0 : GROUP;
        if (forward(net, &net->ws[omp_get_thread_num()], features + (size_t)i0 * net->n_features, images + i0,
                    m)) {
#pragma omp atomic write
            failed = 1;
        }
    }
    return failed ? ddpm_error(DDPM_ENOMEM, "out of memory preparing an image") : 0;
}
