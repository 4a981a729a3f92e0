/* conv3x3.c: 3x3, stride 1, padding 1 convolution (NCHW, float32) by Winograd
 * F(m x m, 3x3), m = 4 or 2 by shape (Lavin & Gray 2016, "Fast Algorithms for
 * Convolutional Neural Networks"), with batched products in the transform domain.
 *
 * Each output m x m tile is y = A^T [(G g G^T) . (B^T d B)] A for its alpha x
 * alpha input window d, alpha = m + 2 (alpha^2 products per tile and channel pair
 * replace 9 m^2 multiply-adds: 36 for 144 with m = 4, 16 for 36 with m = 2). For
 * m = 2
 *     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 *     G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 *     A^T = [1 1 1 0; 0 1 -1 -1];
 * for m = 4 the matrices of the paper (points 0, +-1, +-2), written out at bt_1d,
 * at_1d and G4 below. Per transform point xi (alpha^2 of them) the sum over input
 * channels is a product
 *     Y[xi] [tiles, Cout] = V[xi] [tiles, Cin] x U[xi] [Cin, Cout],
 * done by a register-blocked kernel below (AVX-512 or AVX2 + FMA when compiled
 * for it, plain C over 16-float structs otherwise). Channels are padded to multiples of 16 with
 * zeros inside the transforms. Backward:
 *     din = the same forward applied to dout with the weights rotated by 180
 *           degrees and Cin/Cout swapped (a full correlation is a padded one here);
 *     dU[xi] [Cin, Cout] = sum over tiles of V[xi]^T M[xi], M = A dy A^T the
 *           transformed output gradient; dweight += G^T dU G (the transpose of the
 *           forward's chain of linear maps).
 *
 * Data flow per unit of nb images (nb a power of two with nb * tiles >= 48, a
 * function of the shapes only): each image is packed into a zero-padded
 * channel-blocked buffer P [C/16][Hp][Wp][16] (Hp = m*ceil(H/m) + 2), whose alpha
 * x alpha windows are transformed 16 channels at a time into V [alpha^2][Tp]
 * [Cin_p]; the alpha^2 products give Y [alpha^2][Tp][Cout_p]; the output transform
 * writes O [Cout/16][m TH][m TW][16], which is unpacked into NCHW (adding the bias, or the old din
 * scaled by beta). Units are grouped in LANES fixed lanes run on the OpenMP
 * threads; the weight gradient is summed per lane (units in order), the lanes
 * added in lane order: every result is the same for any thread count. */
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "ddpm/ops.h"

/* The vector type vf of VW floats the transforms and products are written in:
 * AVX-512 (16), AVX2 with FMA (8), or plain C over 16-float structs. The
 * channel-blocked layouts stay 16 channels wide on every path; an 8-float path
 * runs each block as two halves. Every path does the same float operations in
 * the same order (the products accumulate over k by one fused multiply-add per
 * term); the tests hold each build to the same references. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
#define ISA_NAME "avx512"
typedef __m512 vf;
static inline vf v_load(const float *p)
{
    return _mm512_loadu_ps(p);
}
static inline void v_store(float *p, vf a)
{
    _mm512_storeu_ps(p, a);
}
static inline vf v_set1(float x)
{
    return _mm512_set1_ps(x);
}
static inline vf v_zero(void)
{
    return _mm512_setzero_ps();
}
static inline vf v_add(vf a, vf b)
{
    return _mm512_add_ps(a, b);
}
static inline vf v_sub(vf a, vf b)
{
    return _mm512_sub_ps(a, b);
}
static inline vf v_mul(vf a, vf b)
{
    return _mm512_mul_ps(a, b);
}
static inline vf v_fmadd(vf a, vf b, vf c)
{
    return _mm512_fmadd_ps(a, b, c);
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VW 8
#define ISA_NAME "avx2"
typedef __m256 vf;
static inline vf v_load(const float *p)
{
    return _mm256_loadu_ps(p);
}
static inline void v_store(float *p, vf a)
{
    _mm256_storeu_ps(p, a);
}
static inline vf v_set1(float x)
{
    return _mm256_set1_ps(x);
}
static inline vf v_zero(void)
{
    return _mm256_setzero_ps();
}
static inline vf v_add(vf a, vf b)
{
    return _mm256_add_ps(a, b);
}
static inline vf v_sub(vf a, vf b)
{
    return _mm256_sub_ps(a, b);
}
static inline vf v_mul(vf a, vf b)
{
    return _mm256_mul_ps(a, b);
}
static inline vf v_fmadd(vf a, vf b, vf c)
{
    return _mm256_fmadd_ps(a, b, c);
}
#else
#define VW 16
#define ISA_NAME "generic"
typedef struct {
    float f[16];
} vf;
static inline vf v_load(const float *p)
{
    vf r;
    memcpy(r.f, p, sizeof(r.f));
    return r;
}
static inline void v_store(float *p, vf a)
{
    memcpy(p, a.f, sizeof(a.f));
}
static inline vf v_set1(float x)
{
    vf r;
    for (int i = 0; i < 16; i++)
        r.f[i] = x;
    return r;
}
static inline vf v_zero(void)
{
    return v_set1(0.0f);
}
#define V_BINARY(name, expr)                                                                                 \
    static inline vf name(vf a, vf b)                                                                        \
    {                                                                                                        \
        vf r;                                                                                                \
        for (int i = 0; i < 16; i++)                                                                         \
            r.f[i] = expr;                                                                                   \
        return r;                                                                                            \
    }
V_BINARY(v_add, a.f[i] + b.f[i])
V_BINARY(v_sub, a.f[i] - b.f[i])
V_BINARY(v_mul, a.f[i] * b.f[i])
#undef V_BINARY
static inline vf v_fmadd(vf a, vf b, vf c)
{
    vf r;
    for (int i = 0; i < 16; i++)
        r.f[i] = fmaf(a.f[i], b.f[i], c.f[i]);
    return r;
}
#endif

const char *ddpm_conv3x3_isa(void)
{
    return ISA_NAME;
}

#define LANES 8
#define UNIT_TILES 48 /* a unit holds at least this many tiles (or the whole batch) */
/* rows per kernel call in the forward products (tiles) and in the dU products
 * (input channels): MR rows x 2 vectors of accumulators fill the register file
 * without spilling (AVX2: 12 of 16 ymm; AVX-512: 24 of 32 zmm) */
#if VW == 8
#define MR_FWD 6
#define MR_DW 6
#else
#define MR_FWD 12
#define MR_DW 8
#endif
#define MR_MAX 12
#define MAX_ALPHA 6 /* tile side of F(4x4,3x3); F(2x2,3x3) has 4 */

/* ---- the product kernel ------------------------------------------------------
 * C[r][VW v..VW v + VW - 1] (+)= sum_k A(r, k) * B[k][VW v..] for r < MR, v < NV
 * vectors, A(r, k) = a[r*a_rs + k*a_ks]. The MR x NV accumulators stay in
 * registers. */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

#define NV_MAX 2 /* vectors per kernel row: 32 columns (AVX-512, C), 16 (AVX2) */

static ALWAYS_INLINE void kernel_body(const int MR, const int NV, int K, const float *a, ptrdiff_t a_rs,
                                      ptrdiff_t a_ks, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                                      int accumulate)
{
    vf acc[MR_MAX][NV_MAX];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = accumulate ? v_load(c + r * ldc + VW * v) : v_zero();
    for (int k = 0; k < K; k++) {
        vf bv[NV_MAX];
        for (int v = 0; v < NV; v++)
            bv[v] = v_load(b + k * ldb + VW * v);
        const float *ak = a + k * a_ks;
        for (int r = 0; r < MR; r++) {
            const vf ar = v_set1(ak[r * a_rs]);
            for (int v = 0; v < NV; v++)
                acc[r][v] = v_fmadd(ar, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            v_store(c + r * ldc + VW * v, acc[r][v]);
}

#define DEFINE_KERNEL(MR, NV)                                                                                \
    static void kernel_##MR##x##NV(int K, const float *a, ptrdiff_t a_rs, ptrdiff_t a_ks, const float *b,    \
                                   ptrdiff_t ldb, float *c, ptrdiff_t ldc, int accumulate)                   \
    {                                                                                                        \
        kernel_body(MR, NV, K, a, a_rs, a_ks, b, ldb, c, ldc, accumulate);                                   \
    }
/* the 1-vector kernels run the 16-column tail of a 32-column path */
#if VW == 16
#define DEFINE_KERNELS(MR) DEFINE_KERNEL(MR, 1) DEFINE_KERNEL(MR, 2)
#else
#define DEFINE_KERNELS(MR) DEFINE_KERNEL(MR, 2)
#endif
DEFINE_KERNELS(1)
DEFINE_KERNELS(2)
DEFINE_KERNELS(3)
DEFINE_KERNELS(4)
DEFINE_KERNELS(5)
DEFINE_KERNELS(6)
#if MR_FWD > 6 || MR_DW > 6
DEFINE_KERNELS(7)
DEFINE_KERNELS(8)
DEFINE_KERNELS(9)
DEFINE_KERNELS(10)
DEFINE_KERNELS(11)
DEFINE_KERNELS(12)
#endif
#undef DEFINE_KERNELS
#undef DEFINE_KERNEL

typedef void (*kernel_fn)(int, const float *, ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t, float *,
                          ptrdiff_t, int);
/* wide[mr]: 2 vectors (32 columns with 16-float vectors, 16 with 8-float ones);
 * tail[mr]: the 16-column remainder of a 32-column path. A row tail of mr < MR
 * rows gets its own register block. */
#if VW == 16
static const kernel_fn wide[MR_MAX + 1] = {NULL,        kernel_1x2,  kernel_2x2, kernel_3x2, kernel_4x2,
                                           kernel_5x2,  kernel_6x2,  kernel_7x2, kernel_8x2, kernel_9x2,
                                           kernel_10x2, kernel_11x2, kernel_12x2};
static const kernel_fn tail[MR_MAX + 1] = {NULL,        kernel_1x1,  kernel_2x1, kernel_3x1, kernel_4x1,
                                           kernel_5x1,  kernel_6x1,  kernel_7x1, kernel_8x1, kernel_9x1,
                                           kernel_10x1, kernel_11x1, kernel_12x1};
#else
static const kernel_fn wide[7] = {NULL,       kernel_1x2, kernel_2x2, kernel_3x2,
                                  kernel_4x2, kernel_5x2, kernel_6x2};
#endif

/* C [M, N] (+)= A [M, K] x B [K, N] in blocks of MR rows and 2 VW columns,
 * N a multiple of 16, A(r, k) = a[r*a_rs + k*a_ks], B and C row-major with ldb,
 * ldc. */
static void product(int MR, int M, int N, int K, const float *a, ptrdiff_t a_rs, ptrdiff_t a_ks,
                    const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, int accumulate)
{
    for (int r0 = 0; r0 < M; r0 += MR) {
        const int mr = M - r0 < MR ? M - r0 : MR;
        const float *ar = a + r0 * a_rs;
        float *cr = c + r0 * ldc;
        int n0 = 0;
        for (; n0 + 2 * VW <= N; n0 += 2 * VW)
            wide[mr](K, ar, a_rs, a_ks, b + n0, ldb, cr + n0, ldc, accumulate);
#if VW == 16
        if (n0 < N)
            tail[mr](K, ar, a_rs, a_ks, b + n0, ldb, cr + n0, ldc, accumulate);
#endif
    }
}

/* ---- geometry and scratch ----------------------------------------------------- */

static int round_up(int n, int m)
{
    return (n + m - 1) / m * m;
}

typedef struct {
    int B, Cin, H, W, Cout;
    int m, alpha, n_xi;        /* F(m x m, 3x3): output tile m, input tile alpha = m + 2 */
    int Cin_p, Cout_p, C_max;  /* channels padded to 16 */
    int TH, TW, tiles, Hp, Wp; /* tiles per image; padded plane of P */
    int nb, n_units, n_lanes, Tp;
    size_t u_floats;     /* transformed weights, shared */
    size_t dU_floats;    /* one lane's weight-gradient sum */
    size_t plane_floats; /* P or O for one image */
    size_t unit_floats;  /* V, or Y = M, for one unit */
    size_t lane_floats;  /* P + 2 unit buffers + dU */
} geometry;

static int forced_tile = 0;

void ddpm_conv3x3_force_tile(int m)
{
    forced_tile = m == 2 || m == 4 ? m : 0;
}

/* The output tile: F(4x4,3x3) needs 2.25 products per output against F(2x2)'s 4,
 * and writes fewer transformed values per output, but it computes whole 4x4
 * tiles: on a 14x14 image 16x16 outputs against F(2x2)'s 14x14. Measured (one
 * thread, CPU time, batch 64, forward / backward ms, F(2x2) -> F(4x4)): 28x28
 * 32 ch 7.6 -> 5.3 / 15.5 -> 11.0; 14x14 64 ch 5.9 -> 6.8 / 12.3 -> 14.2; 7x7
 * 64 ch (both compute 8x8) 2.5 -> 2.2 / 5.7 -> 4.7. So F(4x4) unless it computes
 * more outputs than F(2x2). */
static int tile_size(int H, int W)
{
    if (forced_tile)
        return forced_tile;
    const long f4 = (long)((H + 3) / 4 * 4) * ((W + 3) / 4 * 4);
    const long f2 = (long)((H + 1) / 2 * 2) * ((W + 1) / 2 * 2);
    return f4 <= f2 ? 4 : 2;
}

static geometry make_geometry(int B, int Cin, int H, int W, int Cout)
{
    geometry g;
    g.B = B, g.Cin = Cin, g.H = H, g.W = W, g.Cout = Cout;
    g.m = tile_size(H, W), g.alpha = g.m + 2, g.n_xi = g.alpha * g.alpha;
    g.Cin_p = round_up(Cin, 16), g.Cout_p = round_up(Cout, 16);
    g.C_max = g.Cin_p > g.Cout_p ? g.Cin_p : g.Cout_p;
    g.TH = (H + g.m - 1) / g.m, g.TW = (W + g.m - 1) / g.m;
    g.tiles = g.TH * g.TW;
    g.Hp = g.m * g.TH + 2, g.Wp = g.m * g.TW + 2;
    g.nb = 1;
    while (g.nb < B && g.nb * g.tiles < UNIT_TILES)
        g.nb *= 2;
    g.n_units = (B + g.nb - 1) / g.nb;
    g.n_lanes = g.n_units < LANES ? g.n_units : LANES;
    g.Tp = g.nb * g.tiles;
    g.u_floats = (size_t)g.n_xi * g.Cin_p * g.Cout_p;
    g.dU_floats = g.u_floats;
    g.plane_floats = (size_t)g.C_max * g.Hp * g.Wp; /* >= C_max * mTH * mTW for O */
    g.unit_floats = (size_t)g.n_xi * g.Tp * g.C_max;
    g.lane_floats = g.plane_floats + 2 * g.unit_floats + g.dU_floats;
    return g;
}

size_t ddpm_conv3x3_scratch_floats(int B, int Cin, int H, int W, int Cout)
{
    const geometry g = make_geometry(B, Cin, H, W, Cout);
    /* + the bf16 forward's pair-interleaved weights after the lanes (bf16_weights) */
    return g.u_floats + (size_t)g.n_lanes * g.lane_floats + (DDPM_HAVE_BF16 ? g.u_floats / 2 : 0);
}

typedef struct {
    float *P, *V, *Y, *M, *dU;
} lane_buffers;

static lane_buffers lane_at(const geometry *g, float *scratch, int lane)
{
    float *base = scratch + g->u_floats + (size_t)lane * g->lane_floats;
    lane_buffers lb;
    lb.P = base;
    lb.V = lb.P + g->plane_floats;
    /* M (the weight gradient's) is dead before Y (din's forward) is written */
    lb.M = lb.Y = lb.V + g->unit_floats;
    lb.dU = lb.Y + g->unit_floats;
    return lb;
}

static int lanes_in_parallel(const geometry *g)
{
    return g->n_lanes > 1 && omp_get_max_threads() > 1 && !omp_in_parallel();
}

static void unit_range(const geometry *g, int lane, int *u0, int *u1)
{
    *u0 = (int)((long)lane * g->n_units / g->n_lanes);
    *u1 = (int)((long)(lane + 1) * g->n_units / g->n_lanes);
}

/* ---- transforms ------------------------------------------------------------------ */

/* G of F(2x2,3x3) and F(4x4,3x3) (Lavin & Gray's points 0, +-1, +-2 for m = 4) */
static const double G2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double G4[6][3] = {{1.0 / 4, 0, 0},
                                {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                {0, 0, 1}};

/* G of the geometry's tile into a local table. */
static void load_G(const geometry *g, double G[MAX_ALPHA][3])
{
    for (int i = 0; i < g->alpha; i++)
        for (int j = 0; j < 3; j++)
            G[i][j] = g->m == 2 ? G2[i][j] : G4[i][j];
}

/* The weight transforms run WT_LANES filters side by side (consecutive columns
 * of U, or consecutive output channels of dweight), one array element per
 * filter, so that the compiler turns each double operation into vector code;
 * every filter sees the same double operations in the same order as a loop
 * over one filter would do (the build does not contract a * b + c into an
 * FMA: -std=c11 implies -ffp-contract=off in gcc). */
#define WT_LANES 16

/* U[xi][r][c0 + l] for l < n (n <= WT_LANES) from filters f(r, c) = weight + r*rs
 * + c*cs (3x3 row-major, read rotated by 180 degrees when rot): U = G f G^T in
 * double, rounded once. */
static ALWAYS_INLINE void weight_transform_block(const int a, double G[MAX_ALPHA][3], float *U,
                                                 const float *weight, int r, int c0, int n, int rows_p,
                                                 int cols_p, ptrdiff_t rs, ptrdiff_t cs, int rot)
{
    double f[9][WT_LANES], t[MAX_ALPHA][3][WT_LANES];
    for (int l = 0; l < WT_LANES; l++) {
        const float *w = weight + r * rs + (ptrdiff_t)(c0 + (l < n ? l : 0)) * cs;
        for (int i = 0; i < 9; i++)
            f[i][l] = rot ? w[8 - i] : w[i];
    }
    for (int i = 0; i < a; i++)
        for (int j = 0; j < 3; j++)
            for (int l = 0; l < WT_LANES; l++)
                t[i][j][l] = G[i][0] * f[j][l] + G[i][1] * f[3 + j][l] + G[i][2] * f[6 + j][l];
    for (int i = 0; i < a; i++)
        for (int j = 0; j < a; j++) {
            float u[WT_LANES];
            for (int l = 0; l < WT_LANES; l++)
                u[l] = (float)(t[i][0][l] * G[j][0] + t[i][1][l] * G[j][1] + t[i][2][l] * G[j][2]);
            float *dst = U + ((size_t)(i * a + j) * rows_p + r) * cols_p + c0;
            /* a whole block as one fixed-size copy (vector stores): a copy of a
             * variable n floats compiles to `rep movs`, slow at this size */
            if (n == WT_LANES)
                memcpy(dst, u, sizeof u);
            else
                for (int l = 0; l < n; l++)
                    dst[l] = u[l];
        }
}

/* U [n_xi][rows_p][cols_p] from filters f(row, col) = weight + row*rs + col*cs
 * (3x3 row-major, read rotated by 180 degrees when rot), zero for padded
 * rows/cols: U = G f G^T, in double, rounded once. */
static void weight_transform(const geometry *g, float *U, const float *weight, int rows, int cols, int rows_p,
                             int cols_p, ptrdiff_t rs, ptrdiff_t cs, int rot)
{
    const int a = g->alpha;
    double G[MAX_ALPHA][3];
    load_G(g, G);
    if (rows < rows_p || cols < cols_p)
        memset(U, 0, (size_t)g->n_xi * rows_p * cols_p * sizeof(float));
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > 1024 && !omp_in_parallel())
    for (int r = 0; r < rows; r++)
        for (int c0 = 0; c0 < cols; c0 += WT_LANES) {
            const int n = cols - c0 < WT_LANES ? cols - c0 : WT_LANES;
            if (a == 4)
                weight_transform_block(4, G, U, weight, r, c0, n, rows_p, cols_p, rs, cs, rot);
            else
                weight_transform_block(6, G, U, weight, r, c0, n, rows_p, cols_p, rs, cs, rot);
        }
}

/* dweight[co0 + l][ci] += G^T dU G for l < n (n <= WT_LANES), dU[xi][ci][co0 + l]
 * the lanes' summed weight gradient (row stride ldu floats per xi), in double. */
static ALWAYS_INLINE void weight_grad_transform_block(const int a, const geometry *g, double G[MAX_ALPHA][3],
                                                      float *dweight, const float *dU, size_t ldu, int ci,
                                                      int co0, int n)
{
    double m[MAX_ALPHA * MAX_ALPHA][WT_LANES], t[3][MAX_ALPHA][WT_LANES];
    for (int xi = 0; xi < a * a; xi++) {
        const float *src = dU + (size_t)xi * ldu + co0;
        for (int l = 0; l < WT_LANES; l++)
            m[xi][l] = l < n ? (double)src[l] : 0.0;
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < a; j++)
            for (int l = 0; l < WT_LANES; l++) {
                double s = 0.0;
                for (int k = 0; k < a; k++)
                    s += G[k][i] * m[k * a + j][l];
                t[i][j][l] = s;
            }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            float dw[WT_LANES];
            for (int l = 0; l < WT_LANES; l++) {
                double s = 0.0;
                for (int k = 0; k < a; k++)
                    s += t[i][k][l] * G[k][j];
                dw[l] = (float)s;
            }
            for (int l = 0; l < n; l++)
                dweight[((size_t)(co0 + l) * g->Cin + ci) * 9 + i * 3 + j] += dw[l];
        }
}

/* dweight[co][ci] += G^T dU[.][ci][co] G for every filter, dU [n_xi][Cin_p][Cout_p]. */
static void weight_grad_transform(const geometry *g, float *dweight, const float *dU)
{
    double G[MAX_ALPHA][3];
    load_G(g, G);
    const size_t ldu = (size_t)g->Cin_p * g->Cout_p;
#pragma omp parallel for schedule(static) if ((size_t)g->Cout * g->Cin > 256)
    for (int ci = 0; ci < g->Cin; ci++)
        for (int co0 = 0; co0 < g->Cout; co0 += WT_LANES) {
            const int n = g->Cout - co0 < WT_LANES ? g->Cout - co0 : WT_LANES;
            const float *dUc = dU + (size_t)ci * g->Cout_p;
            if (g->alpha == 4)
                weight_grad_transform_block(4, g, G, dweight, dUc, ldu, ci, co0, n);
            else
                weight_grad_transform_block(6, g, G, dweight, dUc, ldu, ci, co0, n);
        }
}

/* P [C_p/16][Hp][Wp][16] = x [C, H, W] shifted by (1, 1), zero elsewhere. */
#if defined(__AVX512F__)
/* r[i] (row i, 16 columns) becomes column i: 16x16 transpose in three rounds of
 * shuffles (32-bit pairs, 64-bit pairs, 128-bit lanes). */
static inline void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    /* r[4i + k], 128-bit lane L: rows 4i..4i+3 of column 4L + k */
    for (int k = 0; k < 4; k++) {
        const __m512 x = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88),
                     y = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
        const __m512 z = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
        const __m512 w = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
        t[k] = _mm512_shuffle_f32x4(x, z, 0x88);
        t[8 + k] = _mm512_shuffle_f32x4(x, z, 0xdd);
        t[4 + k] = _mm512_shuffle_f32x4(y, w, 0x88);
        t[12 + k] = _mm512_shuffle_f32x4(y, w, 0xdd);
    }
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

static inline __mmask16 first_n(int n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

static void pack_plane(float *P, const float *x, int C, int C_p, int H, int W, int Hp, int Wp)
{
    const size_t HW = (size_t)H * W;
    const __m512 zero = _mm512_setzero_ps();
    for (int cb = 0; cb < C_p / 16; cb++) {
        float *Pc = P + (size_t)cb * Hp * Wp * 16;
        const int nc = C - cb * 16 < 16 ? C - cb * 16 : 16;
        /* the border: row 0, rows past H, column 0 and columns past W */
        memset(Pc, 0, (size_t)Wp * 16 * sizeof(float));
        memset(Pc + (size_t)(H + 1) * Wp * 16, 0, (size_t)(Hp - H - 1) * Wp * 16 * sizeof(float));
        for (int y = 0; y < H; y++) {
            float *row = Pc + (size_t)(y + 1) * Wp * 16;
            _mm512_storeu_ps(row, zero);
            for (int xx = W + 1; xx < Wp; xx++)
                _mm512_storeu_ps(row + (size_t)xx * 16, zero);
            for (int x0 = 0; x0 < W; x0 += 16) {
                const int n = W - x0 < 16 ? W - x0 : 16;
                const __mmask16 m = first_n(n);
                __m512 r[16];
                for (int c = 0; c < 16; c++)
                    r[c] = c < nc
                               ? _mm512_maskz_loadu_ps(m, x + (size_t)(cb * 16 + c) * HW + (size_t)y * W + x0)
                               : zero;
                transpose16(r);
                for (int j = 0; j < n; j++)
                    _mm512_storeu_ps(row + (size_t)(x0 + 1 + j) * 16, r[j]);
            }
        }
    }
}
#elif defined(__AVX2__) && defined(__FMA__)
/* r[i] (row i, 8 columns) becomes column i: 8x8 transpose (32-bit pairs, 64-bit
 * pairs within 128-bit lanes, then the lanes). */
static inline void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4i + k], 128-bit lane L: rows 4i..4i+3 of column 4L + k */
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

/* the mask of the first n (0..8) of 8 lanes, for maskload/maskstore */
static inline __m256i first_n(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static void pack_plane(float *P, const float *x, int C, int C_p, int H, int W, int Hp, int Wp)
{
    const size_t HW = (size_t)H * W;
    const __m256 zero = _mm256_setzero_ps();
    for (int cb = 0; cb < C_p / 16; cb++) {
        float *Pc = P + (size_t)cb * Hp * Wp * 16;
        /* the border: row 0, rows past H, column 0 and columns past W */
        memset(Pc, 0, (size_t)Wp * 16 * sizeof(float));
        memset(Pc + (size_t)(H + 1) * Wp * 16, 0, (size_t)(Hp - H - 1) * Wp * 16 * sizeof(float));
        for (int y = 0; y < H; y++) {
            float *row = Pc + (size_t)(y + 1) * Wp * 16;
            memset(row, 0, 16 * sizeof(float));
            memset(row + (size_t)(W + 1) * 16, 0, (size_t)(Wp - W - 1) * 16 * sizeof(float));
            for (int h = 0; h < 16; h += 8) {
                const int c0 = cb * 16 + h;
                const int nc = C - c0 < 0 ? 0 : C - c0 < 8 ? C - c0 : 8;
                for (int x0 = 0; x0 < W; x0 += 8) {
                    const int n = W - x0 < 8 ? W - x0 : 8;
                    const __m256i m = first_n(n);
                    __m256 r[8];
                    for (int c = 0; c < 8; c++)
                        r[c] = c < nc ? _mm256_maskload_ps(x + (size_t)(c0 + c) * HW + (size_t)y * W + x0, m)
                                      : zero;
                    transpose8(r);
                    for (int j = 0; j < n; j++)
                        _mm256_storeu_ps(row + (size_t)(x0 + 1 + j) * 16 + h, r[j]);
                }
            }
        }
    }
}
#else
static void pack_plane(float *P, const float *x, int C, int C_p, int H, int W, int Hp, int Wp)
{
    memset(P, 0, (size_t)C_p * Hp * Wp * sizeof(float));
    for (int c = 0; c < C; c++) {
        float *dst = P + (size_t)(c / 16) * Hp * Wp * 16 + c % 16;
        const float *src = x + (size_t)c * H * W;
        for (int y = 0; y < H; y++) {
            float *d = dst + ((size_t)(y + 1) * Wp + 1) * 16;
            const float *s = src + (size_t)y * W;
            for (int xx = 0; xx < W; xx++)
                d[(size_t)xx * 16] = s[xx];
        }
    }
}
#endif

/* 1-D transforms of F(m x m, 3x3) on vectors of 16 channels:
 * B^T d (alpha -> alpha), A^T m (alpha -> m), A y (m -> alpha). */
static ALWAYS_INLINE void bt_1d(const int m, const vf *d, vf *r)
{
    if (m == 2) {
        r[0] = v_sub(d[0], d[2]);
        r[1] = v_add(d[1], d[2]);
        r[2] = v_sub(d[2], d[1]);
        r[3] = v_sub(d[1], d[3]);
    } else {
        /* B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
         *        0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1] */
        const vf four = v_set1(4.0f), five = v_set1(5.0f), two = v_set1(2.0f);
        const vf a = v_sub(d[4], v_mul(four, d[2])); /* d4 - 4 d2 */
        const vf b = v_sub(d[3], v_mul(four, d[1])); /* d3 - 4 d1 */
        const vf c = v_sub(d[4], d[2]);              /* d4 - d2 */
        const vf e = v_mul(two, v_sub(d[3], d[1]));  /* 2 (d3 - d1) */
        r[0] = v_add(v_sub(v_mul(four, d[0]), v_mul(five, d[2])), d[4]);
        r[1] = v_add(a, b);
        r[2] = v_sub(a, b);
        r[3] = v_add(c, e);
        r[4] = v_sub(c, e);
        r[5] = v_add(v_sub(v_mul(four, d[1]), v_mul(five, d[3])), d[5]);
    }
}

static ALWAYS_INLINE void at_1d(const int m, const vf *t, vf *o)
{
    if (m == 2) {
        o[0] = v_add(v_add(t[0], t[1]), t[2]);
        o[1] = v_sub(v_sub(t[1], t[2]), t[3]);
    } else {
        /* A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1] */
        const vf s12 = v_add(t[1], t[2]), d12 = v_sub(t[1], t[2]);
        const vf s34 = v_add(t[3], t[4]), d34 = v_sub(t[3], t[4]);
        o[0] = v_add(v_add(t[0], s12), s34);
        o[1] = v_fmadd(v_set1(2.0f), d34, d12);
        o[2] = v_fmadd(v_set1(4.0f), s34, s12);
        o[3] = v_add(v_fmadd(v_set1(8.0f), d34, d12), t[5]);
    }
}

static ALWAYS_INLINE void a_1d(const int m, const vf *y, vf *r)
{
    if (m == 2) {
        r[0] = y[0];
        r[1] = v_add(y[0], y[1]);
        r[2] = v_sub(y[0], y[1]);
        r[3] = v_sub(v_zero(), y[1]);
    } else {
        /* A = (A^T)^T: rows [1 0 0 0; 1 1 1 1; 1 -1 1 -1; 1 2 4 8; 1 -2 4 -8; 0 0 0 1] */
        const vf e = v_add(y[0], y[2]), o = v_add(y[1], y[3]);
        const vf e4 = v_fmadd(v_set1(4.0f), y[2], y[0]), o8 = v_fmadd(v_set1(4.0f), y[3], y[1]);
        r[0] = y[0];
        r[1] = v_add(e, o);
        r[2] = v_sub(e, o);
        r[3] = v_fmadd(v_set1(2.0f), o8, e4);
        r[4] = v_sub(e4, v_mul(v_set1(2.0f), o8));
        r[5] = y[3];
    }
}

/* V[xi][t0 + t][c0..c0 + VW - 1] = B^T d B for every tile t of one packed image.
 * bf16 (the bf16 forward only): V is uint16_t [xi][Tp][C_p], each value rounded
 * to bf16 (nearest even), so the channels (k, k + 1) of a row form one 32-bit
 * pair. */
static ALWAYS_INLINE void input_transform_m(const int m, const int bf16, void *V, const float *P,
                                            const geometry *g, int C_p, int t0)
{
    (void)bf16;
    const int a = m + 2;
    const size_t xi_stride = (size_t)g->Tp * C_p;
    for (int c0 = 0; c0 < C_p; c0 += VW) {
        const float *Pc = P + (size_t)(c0 / 16) * g->Hp * g->Wp * 16 + c0 % 16;
        for (int ty = 0; ty < g->TH; ty++)
            for (int tx = 0; tx < g->TW; tx++) {
                const float *p = Pc + ((size_t)(m * ty) * g->Wp + m * tx) * 16;
                vf t[MAX_ALPHA][MAX_ALPHA], d[MAX_ALPHA], r[MAX_ALPHA];
                for (int j = 0; j < a; j++) {
                    for (int i = 0; i < a; i++)
                        d[i] = v_load(p + ((size_t)i * g->Wp + j) * 16);
                    bt_1d(m, d, r);
                    for (int i = 0; i < a; i++)
                        t[i][j] = r[i];
                }
                const size_t out = (size_t)(t0 + ty * g->TW + tx) * C_p + c0;
                for (int i = 0; i < a; i++) {
                    bt_1d(m, t[i], r);
                    for (int j = 0; j < a; j++) {
                        const size_t o = out + (size_t)(a * i + j) * xi_stride;
#if DDPM_HAVE_BF16
                        if (bf16) {
                            _mm256_storeu_si256((__m256i *)((uint16_t *)V + o),
                                                (__m256i)_mm512_cvtneps_pbh(r[j]));
                            continue;
                        }
#endif
                        v_store((float *)V + o, r[j]);
                    }
                }
            }
    }
}

static void input_transform(float *V, const float *P, const geometry *g, int C_p, int t0)
{
    if (g->m == 2)
        input_transform_m(2, 0, V, P, g, C_p, t0);
    else
        input_transform_m(4, 0, V, P, g, C_p, t0);
}

/* M[xi][t0 + t][c0..] = A dy A^T for the m x m output-gradient tile dy of every
 * tile t of one packed image (dy at P offset (1, 1)). */
static ALWAYS_INLINE void grad_transform_m(const int m, float *M, const float *P, const geometry *g, int C_p,
                                           int t0)
{
    const int a = m + 2;
    const size_t xi_stride = (size_t)g->Tp * C_p;
    for (int c0 = 0; c0 < C_p; c0 += VW) {
        const float *Pc = P + (size_t)(c0 / 16) * g->Hp * g->Wp * 16 + c0 % 16;
        for (int ty = 0; ty < g->TH; ty++)
            for (int tx = 0; tx < g->TW; tx++) {
                const float *p = Pc + ((size_t)(m * ty + 1) * g->Wp + m * tx + 1) * 16;
                vf t[MAX_ALPHA][4], y[4], r[MAX_ALPHA];
                for (int j = 0; j < m; j++) {
                    for (int i = 0; i < m; i++)
                        y[i] = v_load(p + ((size_t)i * g->Wp + j) * 16);
                    a_1d(m, y, r);
                    for (int i = 0; i < a; i++)
                        t[i][j] = r[i];
                }
                float *out = M + (size_t)(t0 + ty * g->TW + tx) * C_p + c0;
                for (int i = 0; i < a; i++) {
                    a_1d(m, t[i], r);
                    for (int j = 0; j < a; j++)
                        v_store(out + (size_t)(a * i + j) * xi_stride, r[j]);
                }
            }
    }
}

static void grad_transform(float *M, const float *P, const geometry *g, int C_p, int t0)
{
    if (g->m == 2)
        grad_transform_m(2, M, P, g, C_p, t0);
    else
        grad_transform_m(4, M, P, g, C_p, t0);
}

/* O [C_p/16][m TH][m TW][16] = A^T Y A from Y[xi][t0 + t][..] for one image. */
static ALWAYS_INLINE void output_transform_m(const int m, float *O, const float *Y, const geometry *g,
                                             int C_p, int t0)
{
    const int a = m + 2;
    const size_t xi_stride = (size_t)g->Tp * C_p;
    const int OW = m * g->TW;
    for (int c0 = 0; c0 < C_p; c0 += VW) {
        float *Oc = O + (size_t)(c0 / 16) * (m * g->TH) * OW * 16 + c0 % 16;
        for (int ty = 0; ty < g->TH; ty++)
            for (int tx = 0; tx < g->TW; tx++) {
                const float *y = Y + (size_t)(t0 + ty * g->TW + tx) * C_p + c0;
                vf t[4][MAX_ALPHA], col[MAX_ALPHA], r[4];
                for (int j = 0; j < a; j++) {
                    for (int i = 0; i < a; i++)
                        col[i] = v_load(y + (size_t)(a * i + j) * xi_stride);
                    at_1d(m, col, r);
                    for (int i = 0; i < m; i++)
                        t[i][j] = r[i];
                }
                float *o = Oc + ((size_t)(m * ty) * OW + m * tx) * 16;
                for (int i = 0; i < m; i++) {
                    at_1d(m, t[i], r);
                    for (int j = 0; j < m; j++)
                        v_store(o + ((size_t)i * OW + j) * 16, r[j]);
                }
            }
    }
}

static void output_transform(float *O, const float *Y, const geometry *g, int C_p, int t0)
{
    if (g->m == 2)
        output_transform_m(2, O, Y, g, C_p, t0);
    else
        output_transform_m(4, O, Y, g, C_p, t0);
}

/* y [C, H, W] = O (+ bias[c]) when beta == 0, else beta * y + O. */
#if defined(__AVX512F__)
static void unpack_plane(float *y, const float *O, const float *bias, float beta, int C, int H, int W, int OH,
                         int OW)
{
    const size_t HW = (size_t)H * W;
    const __m512 vbeta = _mm512_set1_ps(beta);
    for (int cb = 0; cb * 16 < C; cb++) {
        const float *Oc = O + (size_t)cb * OH * OW * 16;
        const int nc = C - cb * 16 < 16 ? C - cb * 16 : 16;
        for (int yy = 0; yy < H; yy++)
            for (int x0 = 0; x0 < W; x0 += 16) {
                const int n = W - x0 < 16 ? W - x0 : 16;
                const __mmask16 m = first_n(n);
                __m512 r[16];
                for (int j = 0; j < 16; j++)
                    r[j] =
                        j < n ? _mm512_loadu_ps(Oc + ((size_t)yy * OW + x0 + j) * 16) : _mm512_setzero_ps();
                transpose16(r);
                for (int c = 0; c < nc; c++) {
                    float *d = y + (size_t)(cb * 16 + c) * HW + (size_t)yy * W + x0;
                    __m512 v = r[c];
                    if (beta == 0.0f) {
                        if (bias)
                            v = _mm512_add_ps(v, _mm512_set1_ps(bias[cb * 16 + c]));
                    } else {
                        v = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m, d), v);
                    }
                    _mm512_mask_storeu_ps(d, m, v);
                }
            }
    }
}
#elif defined(__AVX2__) && defined(__FMA__)
static void unpack_plane(float *y, const float *O, const float *bias, float beta, int C, int H, int W, int OH,
                         int OW)
{
    const size_t HW = (size_t)H * W;
    const __m256 vbeta = _mm256_set1_ps(beta), zero = _mm256_setzero_ps();
    for (int c0 = 0; c0 < C; c0 += 8) {
        const float *Oc = O + (size_t)(c0 / 16) * OH * OW * 16 + c0 % 16;
        const int nc = C - c0 < 8 ? C - c0 : 8;
        for (int yy = 0; yy < H; yy++)
            for (int x0 = 0; x0 < W; x0 += 8) {
                const int n = W - x0 < 8 ? W - x0 : 8;
                const __m256i m = first_n(n);
                __m256 r[8];
                for (int j = 0; j < 8; j++)
                    r[j] = j < n ? _mm256_loadu_ps(Oc + ((size_t)yy * OW + x0 + j) * 16) : zero;
                transpose8(r);
                for (int c = 0; c < nc; c++) {
                    float *d = y + (size_t)(c0 + c) * HW + (size_t)yy * W + x0;
                    __m256 v = r[c];
                    if (beta == 0.0f) {
                        if (bias)
                            v = _mm256_add_ps(v, _mm256_set1_ps(bias[c0 + c]));
                    } else {
                        v = _mm256_fmadd_ps(vbeta, _mm256_maskload_ps(d, m), v);
                    }
                    _mm256_maskstore_ps(d, m, v);
                }
            }
    }
}
#else
static void unpack_plane(float *y, const float *O, const float *bias, float beta, int C, int H, int W, int OH,
                         int OW)
{
    for (int c = 0; c < C; c++) {
        const float *src = O + (size_t)(c / 16) * OH * OW * 16 + c % 16;
        float *dst = y + (size_t)c * H * W;
        const float bv = bias ? bias[c] : 0.0f;
        for (int yy = 0; yy < H; yy++) {
            const float *s = src + (size_t)yy * OW * 16;
            float *d = dst + (size_t)yy * W;
            if (beta == 0.0f)
                for (int xx = 0; xx < W; xx++)
                    d[xx] = s[(size_t)xx * 16] + bv;
            else
                for (int xx = 0; xx < W; xx++)
                    d[xx] = beta * d[xx] + s[(size_t)xx * 16];
        }
    }
}
#endif

/* ---- one unit: the forward chain (also din's, on dout with rotated weights) ---- */

/* y [nb, Co, H, W] (beta, bias as unpack_plane) = conv(x [nb, Ci, H, W]) with the
 * transformed weights U [16][Ci_p][Co_p]. */
static void forward_unit(const geometry *g, const lane_buffers *lb, float *y, float beta, const float *x,
                         const float *U, const float *bias, int Ci, int Co, int nb)
{
    const int Ci_p = round_up(Ci, 16), Co_p = round_up(Co, 16);
    const int nt = nb * g->tiles;
    const size_t HW = (size_t)g->H * g->W;
    for (int b = 0; b < nb; b++) {
        pack_plane(lb->P, x + (size_t)b * Ci * HW, Ci, Ci_p, g->H, g->W, g->Hp, g->Wp);
        input_transform(lb->V, lb->P, g, Ci_p, b * g->tiles);
    }
    for (int xi = 0; xi < g->n_xi; xi++)
        product(MR_FWD, nt, Co_p, Ci_p, lb->V + (size_t)xi * g->Tp * Ci_p, Ci_p, 1,
                U + (size_t)xi * Ci_p * Co_p, Co_p, lb->Y + (size_t)xi * g->Tp * Co_p, Co_p, 0);
    for (int b = 0; b < nb; b++) {
        output_transform(lb->P, lb->Y, g, Co_p, b * g->tiles);
        unpack_plane(y + (size_t)b * Co * HW, lb->P, bias, beta, Co, g->H, g->W, g->m * g->TH, g->m * g->TW);
    }
}

void ddpm_conv3x3_forward(float *out, float *scratch, const float *in, const float *weight, const float *bias,
                          int B, int Cin, int H, int W, int Cout)
{
    const geometry g = make_geometry(B, Cin, H, W, Cout);
    float *U = scratch;
    /* U [16][Cin_p][Cout_p] from weight [Cout][Cin][3][3]: rows ci, columns co */
    weight_transform(&g, U, weight, Cin, Cout, g.Cin_p, g.Cout_p, 9, (ptrdiff_t)Cin * 9, 0);
    const size_t in_image = (size_t)Cin * H * W, out_image = (size_t)Cout * H * W;
#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(&g))
    for (int lane = 0; lane < g.n_lanes; lane++) {
        const lane_buffers lb = lane_at(&g, scratch, lane);
        int u0, u1;
        unit_range(&g, lane, &u0, &u1);
        for (int u = u0; u < u1; u++) {
            const int b0 = u * g.nb, nb = B - b0 < g.nb ? B - b0 : g.nb;
            forward_unit(&g, &lb, out + (size_t)b0 * out_image, 0.0f, in + (size_t)b0 * in_image, U, bias,
                         Cin, Cout, nb);
        }
    }
}

/* ---- the bf16 forward (also din's in a bf16 backward) -----------------------------
 * The same chain as the float32 forward, but the products Y[xi] = V[xi] U[xi]
 * take V and U rounded to bf16 (nearest even) and accumulate in float32 with
 * _mm512_dpbf16_ps, which multiplies a pair of bf16 values of channels (k, k + 1)
 * by the matching pair and adds both products to a float32 lane: twice the
 * multiply-adds per instruction of a float32 FMA. V is written as bf16 by the
 * input transform ([xi][Tp][Cin_p], a row's (k, k + 1) one 32-bit word to
 * broadcast); U is converted once per call to [xi][Cin_p/2][Cout_p][2] (the
 * pairs of one column side by side). The transforms, the accumulation and the
 * output stay float32. */
#if DDPM_HAVE_BF16
/* Where the pair-interleaved weights live: after the lanes. */
static uint16_t *bf16_weights(const geometry *g, float *scratch)
{
    return (uint16_t *)(scratch + g->u_floats + (size_t)g->n_lanes * g->lane_floats);
}

/* Ub [n_xi][rows_p/2][cols_p][2] = U [n_xi][rows_p][cols_p] in pairs of rows
 * (ddpm_bf16_pair_rows): Ub[xi][kp][col] holds (U[xi][2 kp][col], U[xi][2 kp + 1][col]),
 * as the products pair them with a broadcast (V[2 kp], V[2 kp + 1]). */
static void weights_to_bf16(uint16_t *Ub, const float *U, const geometry *g, int rows_p, int cols_p)
{
    const long n_pairs = (long)g->n_xi * (rows_p / 2);
#pragma omp parallel for schedule(static) if (n_pairs * cols_p > 32768 && !omp_in_parallel())
    for (long row = 0; row < n_pairs; row++)
        ddpm_bf16_pair_rows(Ub + (size_t)row * cols_p * 2, cols_p, U + (size_t)(2 * row) * cols_p, cols_p, 2,
                            cols_p);
}

/* forward_unit with the bf16 products: y [nb, Co, H, W] (beta, bias as
 * unpack_plane) = conv(x [nb, Ci, H, W]) with the pair-interleaved weights Ub. */
static void forward_unit_bf16(const geometry *g, const lane_buffers *lb, float *y, float beta, const float *x,
                              const uint16_t *Ub, const float *bias, int Ci, int Co, int nb)
{
    const int Ci_p = round_up(Ci, 16), Co_p = round_up(Co, 16);
    const int nt = nb * g->tiles;
    const size_t HW = (size_t)g->H * g->W;
    uint16_t *Vb = (uint16_t *)lb->V; /* half of V's floats */
    for (int b = 0; b < nb; b++) {
        pack_plane(lb->P, x + (size_t)b * Ci * HW, Ci, Ci_p, g->H, g->W, g->Hp, g->Wp);
        if (g->m == 2)
            input_transform_m(2, 1, Vb, lb->P, g, Ci_p, b * g->tiles);
        else
            input_transform_m(4, 1, Vb, lb->P, g, Ci_p, b * g->tiles);
    }
    for (int xi = 0; xi < g->n_xi; xi++)
        ddpm_bf16_product(nt, Co_p, Ci_p / 2, Vb + (size_t)xi * g->Tp * Ci_p, Ci_p, 2,
                          Ub + (size_t)xi * Ci_p * Co_p, lb->Y + (size_t)xi * g->Tp * Co_p, Co_p, 0);
    for (int b = 0; b < nb; b++) {
        output_transform(lb->P, lb->Y, g, Co_p, b * g->tiles);
        unpack_plane(y + (size_t)b * Co * HW, lb->P, bias, beta, Co, g->H, g->W, g->m * g->TH, g->m * g->TW);
    }
}

static void forward_bf16(float *out, float *scratch, const float *in, const float *weight, const float *bias,
                         int B, int Cin, int H, int W, int Cout)
{
    const geometry g = make_geometry(B, Cin, H, W, Cout);
    float *U = scratch;
    weight_transform(&g, U, weight, Cin, Cout, g.Cin_p, g.Cout_p, 9, (ptrdiff_t)Cin * 9, 0);
    uint16_t *Ub = bf16_weights(&g, scratch);
    weights_to_bf16(Ub, U, &g, g.Cin_p, g.Cout_p);
    const size_t in_image = (size_t)Cin * H * W, out_image = (size_t)Cout * H * W;
#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(&g))
    for (int lane = 0; lane < g.n_lanes; lane++) {
        const lane_buffers lb = lane_at(&g, scratch, lane);
        int u0, u1;
        unit_range(&g, lane, &u0, &u1);
        for (int u = u0; u < u1; u++) {
            const int b0 = u * g.nb, nb = B - b0 < g.nb ? B - b0 : g.nb;
            forward_unit_bf16(&g, &lb, out + (size_t)b0 * out_image, 0.0f, in + (size_t)b0 * in_image, Ub,
                              bias, Cin, Cout, nb);
        }
    }
}
#endif

void ddpm_conv3x3_forward_precision(float *out, float *scratch, const float *in, const float *weight,
                                    const float *bias, int B, int Cin, int H, int W, int Cout,
                                    ddpm_precision precision)
{
#if DDPM_HAVE_BF16
    if (precision == DDPM_PRECISION_BF16 && ddpm_bf16_available()) {
        forward_bf16(out, scratch, in, weight, bias, B, Cin, H, W, Cout);
        return;
    }
#endif
    (void)precision;
    ddpm_conv3x3_forward(out, scratch, in, weight, bias, B, Cin, H, W, Cout);
}

/* ---- backward ---------------------------------------------------------------------- */

/* V [xi][Tp][Cin_p] and M [xi][Tp][Cout_p] of a unit: the transformed input and
 * output gradient. */
static void weight_grad_transforms(const geometry *g, const lane_buffers *lb, const float *x, const float *dy,
                                   int nb)
{
    const size_t HW = (size_t)g->H * g->W;
    for (int b = 0; b < nb; b++) {
        pack_plane(lb->P, x + (size_t)b * g->Cin * HW, g->Cin, g->Cin_p, g->H, g->W, g->Hp, g->Wp);
        input_transform(lb->V, lb->P, g, g->Cin_p, b * g->tiles);
        pack_plane(lb->P, dy + (size_t)b * g->Cout * HW, g->Cout, g->Cout_p, g->H, g->W, g->Hp, g->Wp);
        grad_transform(lb->M, lb->P, g, g->Cout_p, b * g->tiles);
    }
}

/* dU_lane (+)= sum over the unit's tiles of V^T M (first: overwrite). */
static void weight_grad_unit(const geometry *g, const lane_buffers *lb, const float *x, const float *dy,
                             int nb, int first)
{
    const int nt = nb * g->tiles;
    weight_grad_transforms(g, lb, x, dy, nb);
    for (int xi = 0; xi < g->n_xi; xi++)
        product(MR_DW, g->Cin_p, g->Cout_p, nt, lb->V + (size_t)xi * g->Tp * g->Cin_p, 1, g->Cin_p,
                lb->M + (size_t)xi * g->Tp * g->Cout_p, g->Cout_p, lb->dU + (size_t)xi * g->Cin_p * g->Cout_p,
                g->Cout_p, !first);
}

#if DDPM_HAVE_BF16
/* weight_grad_unit with the bf16 products: V and M are rounded to bf16 in pairs
 * of tiles, in place ([xi][Tp/2][C_p][2], ddpm_bf16_pair_rows), and dU[xi] (+)= V^T M
 * takes the pair (t, t + 1) of an input channel as one broadcast word. */
static void weight_grad_unit_bf16(const geometry *g, const lane_buffers *lb, const float *x, const float *dy,
                                  int nb, int first)
{
    const int nt = nb * g->tiles, kp = (nt + 1) / 2;
    weight_grad_transforms(g, lb, x, dy, nb);
    for (int xi = 0; xi < g->n_xi; xi++) {
        float *V = lb->V + (size_t)xi * g->Tp * g->Cin_p, *M = lb->M + (size_t)xi * g->Tp * g->Cout_p;
        ddpm_bf16_pair_rows((uint16_t *)V, g->Cin_p, V, g->Cin_p, nt, g->Cin_p);
        ddpm_bf16_pair_rows((uint16_t *)M, g->Cout_p, M, g->Cout_p, nt, g->Cout_p);
        ddpm_bf16_product(g->Cin_p, g->Cout_p, kp, (const uint16_t *)V, 2, 2 * (ptrdiff_t)g->Cin_p,
                          (const uint16_t *)M, lb->dU + (size_t)xi * g->Cin_p * g->Cout_p, g->Cout_p, !first);
    }
}
#endif

void ddpm_conv3x3_backward_precision(float *din, float beta, float *dweight, float *dbias, float *scratch,
                                     const float *dout, const float *in, const float *weight, int B, int Cin,
                                     int H, int W, int Cout, ddpm_precision precision)
{
    const geometry g = make_geometry(B, Cin, H, W, Cout);
    const size_t HW = (size_t)H * W;
#if DDPM_HAVE_BF16
    const int bf16 = precision == DDPM_PRECISION_BF16 && ddpm_bf16_available();
#else
    const int bf16 = 0;
    (void)precision;
#endif

    if (dbias) {
#pragma omp parallel for schedule(static) if ((size_t)Cout * HW * B > 32768)
        for (int co = 0; co < Cout; co++) {
            double sum = 0.0;
            for (int b = 0; b < B; b++)
                sum += ddpm_sum_fixed(dout + ((size_t)b * Cout + co) * HW, HW);
            dbias[co] += (float)sum;
        }
    }
    if (!din && !dweight)
        return;

    float *U = scratch;
    /* din's forward runs on dout: U [16][Cout_p][Cin_p] from the rotated filters,
     * rows co, columns ci */
    if (din)
        weight_transform(&g, U, weight, Cout, Cin, g.Cout_p, g.Cin_p, (ptrdiff_t)Cin * 9, 9, 1);
#if DDPM_HAVE_BF16
    uint16_t *Ub = bf16_weights(&g, scratch);
    if (din && bf16)
        weights_to_bf16(Ub, U, &g, g.Cout_p, g.Cin_p);
#endif

#pragma omp parallel for schedule(static, 1) if (lanes_in_parallel(&g))
    for (int lane = 0; lane < g.n_lanes; lane++) {
        const lane_buffers lb = lane_at(&g, scratch, lane);
        int u0, u1;
        unit_range(&g, lane, &u0, &u1);
        for (int u = u0; u < u1; u++) {
            const int b0 = u * g.nb, nb = B - b0 < g.nb ? B - b0 : g.nb;
            const float *dy = dout + (size_t)b0 * Cout * HW, *x = in + (size_t)b0 * Cin * HW;
            float *dx = din ? din + (size_t)b0 * Cin * HW : NULL;
#if DDPM_HAVE_BF16
            if (bf16) {
                if (dweight)
                    weight_grad_unit_bf16(&g, &lb, x, dy, nb, u == u0);
                if (din)
                    forward_unit_bf16(&g, &lb, dx, beta, dy, Ub, NULL, Cout, Cin, nb);
                continue;
            }
#endif
            if (dweight)
                weight_grad_unit(&g, &lb, x, dy, nb, u == u0);
            if (din)
                forward_unit(&g, &lb, dx, beta, dy, U, NULL, Cout, Cin, nb);
        }
    }

    if (dweight) {
        /* dweight[co][ci] += G^T (sum of the lanes' dU, in lane order) G: the lanes
         * are added into lane 0's dU, element by element in lane order */
        float *dU0 = lane_at(&g, scratch, 0).dU;
        const size_t n = g.dU_floats;
#pragma omp parallel for schedule(static) if (n * g.n_lanes > 32768)
        for (size_t i = 0; i < n; i++) {
            float s = dU0[i];
            for (int lane = 1; lane < g.n_lanes; lane++)
                s += dU0[(size_t)lane * g.lane_floats + i];
            dU0[i] = s;
        }
        weight_grad_transform(&g, dweight, dU0);
    }
}

void ddpm_conv3x3_backward(float *din, float beta, float *dweight, float *dbias, float *scratch,
                           const float *dout, const float *in, const float *weight, int B, int Cin, int H,
                           int W, int Cout)
{
    ddpm_conv3x3_backward_precision(din, beta, dweight, dbias, scratch, dout, in, weight, B, Cin, H, W, Cout,
                                    DDPM_PRECISION_FP32);
}
