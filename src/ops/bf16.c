/* bf16.c: the bf16 product kernel (bf16.h) and ddpm_gemm_bf16 (ops.h).
 *
 * The kernel keeps MR x NV accumulators of 16 floats in registers (MR rows of C,
 * NV = 2 vectors: 32 columns, or 1 for a 16-column tail) and adds, per pair kp,
 * the broadcast pair (A(r, 2 kp), A(r, 2 kp + 1)) times B's pairs of 16 columns
 * with _mm512_dpbf16_ps: two multiply-adds per lane per instruction, twice a
 * float32 FMA's. ddpm_gemm_bf16 packs op(A) and op(B) into the kernel's layouts
 * (rounding to bf16, nearest even), runs it into a row-padded float32 product
 * and applies alpha and beta. */
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "ddpm/ops.h"
#include "ddpm/platform.h"

const char *ddpm_precision_name(ddpm_precision p)
{
    return p == DDPM_PRECISION_FP32 ? "fp32" : p == DDPM_PRECISION_BF16 ? "bf16" : NULL;
}

/* The bf16 products need AVX512_BF16 at compile time and on the CPU that runs them. */
int ddpm_bf16_available(void)
{
#if DDPM_HAVE_BF16
    return __builtin_cpu_supports("avx512bf16") != 0;
#else
    return 0;
#endif
}

#if DDPM_HAVE_BF16
#include <immintrin.h>

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

#define MR_BF16 12 /* rows per kernel call: 12 x 2 accumulators + 2 B vectors + 1 broadcast of 32 zmm */
#define MR_MAX 12
#define NV_MAX 2

static ALWAYS_INLINE void kernel_bf16_body(const int MR, const int NV, int KP, const uint16_t *a,
                                           ptrdiff_t a_rs, ptrdiff_t a_ks, const uint16_t *b, ptrdiff_t ldb,
                                           float *c, ptrdiff_t ldc, int accumulate)
{
    __m512 acc[MR_MAX][NV_MAX];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
    for (int kp = 0; kp < KP; kp++) {
        __m512bh bv[NV_MAX];
        for (int v = 0; v < NV; v++)
            bv[v] = (__m512bh)_mm512_loadu_si512(b + kp * ldb + 32 * v);
        const uint16_t *ak = a + kp * a_ks;
        for (int r = 0; r < MR; r++) {
            uint32_t pair; /* the pair (k, k + 1) = (2 kp, 2 kp + 1) of row r */
            memcpy(&pair, ak + r * a_rs, sizeof pair);
            const __m512bh ar = (__m512bh)_mm512_set1_epi32((int)pair);
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, bv[v]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
}

#define DEFINE_KERNEL_BF16(MR, NV)                                                                           \
    static void kernel_bf16_##MR##x##NV(int KP, const uint16_t *a, ptrdiff_t a_rs, ptrdiff_t a_ks,           \
                                        const uint16_t *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,           \
                                        int accumulate)                                                      \
    {                                                                                                        \
        kernel_bf16_body(MR, NV, KP, a, a_rs, a_ks, b, ldb, c, ldc, accumulate);                             \
    }
#define DEFINE_KERNELS_BF16(MR) DEFINE_KERNEL_BF16(MR, 1) DEFINE_KERNEL_BF16(MR, 2)
DEFINE_KERNELS_BF16(1)
DEFINE_KERNELS_BF16(2)
DEFINE_KERNELS_BF16(3)
DEFINE_KERNELS_BF16(4)
DEFINE_KERNELS_BF16(5)
DEFINE_KERNELS_BF16(6)
DEFINE_KERNELS_BF16(7)
DEFINE_KERNELS_BF16(8)
DEFINE_KERNELS_BF16(9)
DEFINE_KERNELS_BF16(10)
DEFINE_KERNELS_BF16(11)
DEFINE_KERNELS_BF16(12)
#undef DEFINE_KERNELS_BF16
#undef DEFINE_KERNEL_BF16

typedef void (*kernel_bf16_fn)(int, const uint16_t *, ptrdiff_t, ptrdiff_t, const uint16_t *, ptrdiff_t,
                               float *, ptrdiff_t, int);
static const kernel_bf16_fn wide_bf16[MR_BF16 + 1] = {NULL,
                                                      kernel_bf16_1x2,
                                                      kernel_bf16_2x2,
                                                      kernel_bf16_3x2,
                                                      kernel_bf16_4x2,
                                                      kernel_bf16_5x2,
                                                      kernel_bf16_6x2,
                                                      kernel_bf16_7x2,
                                                      kernel_bf16_8x2,
                                                      kernel_bf16_9x2,
                                                      kernel_bf16_10x2,
                                                      kernel_bf16_11x2,
                                                      kernel_bf16_12x2};
static const kernel_bf16_fn tail_bf16[MR_BF16 + 1] = {NULL,
                                                      kernel_bf16_1x1,
                                                      kernel_bf16_2x1,
                                                      kernel_bf16_3x1,
                                                      kernel_bf16_4x1,
                                                      kernel_bf16_5x1,
                                                      kernel_bf16_6x1,
                                                      kernel_bf16_7x1,
                                                      kernel_bf16_8x1,
                                                      kernel_bf16_9x1,
                                                      kernel_bf16_10x1,
                                                      kernel_bf16_11x1,
                                                      kernel_bf16_12x1};

void ddpm_bf16_product(int M, int N, int KP, const uint16_t *a, ptrdiff_t a_rs, ptrdiff_t a_ks,
                       const uint16_t *b, float *c, ptrdiff_t ldc, int accumulate)
{
    for (int r0 = 0; r0 < M; r0 += MR_BF16) {
        const int mr = M - r0 < MR_BF16 ? M - r0 : MR_BF16;
        const uint16_t *ar = a + r0 * a_rs;
        float *cr = c + r0 * ldc;
        int n0 = 0;
        for (; n0 + 32 <= N; n0 += 32)
            wide_bf16[mr](KP, ar, a_rs, a_ks, b + 2 * n0, 2 * (ptrdiff_t)N, cr + n0, ldc, accumulate);
        if (n0 < N)
            tail_bf16[mr](KP, ar, a_rs, a_ks, b + 2 * n0, 2 * (ptrdiff_t)N, cr + n0, ldc, accumulate);
    }
}

/* ---- ddpm_gemm_bf16 ---------------------------------------------------------------- */

static int round_up(int n, int m)
{
    return (n + m - 1) / m * m;
}

static __mmask16 first16(int n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* 16 floats of s (the first n, zeros after) rounded to bf16, each widened to
 * the low half of a 32-bit lane. */
static inline __m512i bf16_lanes(const float *s, int n)
{
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(first16(n), s)));
}

void ddpm_bf16_pair_rows(uint16_t *d, int C_p, const float *s, ptrdiff_t lds, int K, int C)
{
    for (int kp = 0; kp < (K + 1) / 2; kp++) {
        const float *s0 = s + (ptrdiff_t)(2 * kp) * lds, *s1 = s0 + lds;
        uint16_t *dk = d + (size_t)kp * C_p * 2;
        for (int c = 0; c < C_p; c += 16) {
            const __m512i lo = bf16_lanes(s0 + c, C - c);
            const __m512i hi = 2 * kp + 1 < K ? bf16_lanes(s1 + c, C - c) : _mm512_setzero_si512();
            _mm512_storeu_si512(dk + 2 * c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

/* d [R][K_p] from the R rows of s (row r at s + r*lds, K values; K_p = K rounded
 * up to 2, a zero after an odd K): each row in bf16, its pairs (2 kp, 2 kp + 1)
 * one 32-bit word. */
static void pack_rows(uint16_t *d, int K_p, const float *s, ptrdiff_t lds, int R, int K)
{
    for (int r = 0; r < R; r++) {
        const float *sr = s + (ptrdiff_t)r * lds;
        uint16_t *dr = d + (size_t)r * K_p;
        for (int k = 0; k < K_p; k += 32) {
            const __m512 lo = _mm512_maskz_loadu_ps(first16(K - k), sr + k);
            const __m512 hi = _mm512_maskz_loadu_ps(first16(K - k - 16), sr + k + 16);
            const int n = K_p - k < 32 ? K_p - k : 32;
            _mm512_mask_storeu_epi16(dr + k, n >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << n) - 1),
                                     (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

/* 16 vectors of 16 32-bit lanes transposed: r[i] lane j <- r[j] lane i. */
static inline void transpose16x16(__m512i r[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

/* d [ceil(K/2)][C_p][2] from s holding C rows of K values (row c at s + c*lds):
 * the pairs (2 kp, 2 kp + 1) of row c, one 32-bit word each, transposed so that
 * a pair row holds every c. 16 rows and 16 pairs at a time. */
static void pack_transposed_pairs(uint16_t *d, int C_p, const float *s, ptrdiff_t lds, int C, int K)
{
    const int KP = (K + 1) / 2;
    for (int c0 = 0; c0 < C_p; c0 += 16)
        for (int kp0 = 0; kp0 < KP; kp0 += 16) {
            __m512i w[16];
            const int k = 2 * kp0;
            for (int i = 0; i < 16; i++) {
                if (c0 + i >= C) {
                    w[i] = _mm512_setzero_si512();
                    continue;
                }
                const float *sr = s + (ptrdiff_t)(c0 + i) * lds + k;
                const __m512 lo = _mm512_maskz_loadu_ps(first16(K - k), sr);
                const __m512 hi = _mm512_maskz_loadu_ps(first16(K - k - 16), sr + 16);
                w[i] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            }
            transpose16x16(w);
            for (int j = 0; j < 16 && kp0 + j < KP; j++)
                _mm512_storeu_si512(d + ((size_t)(kp0 + j) * C_p + c0) * 2, w[j]);
        }
}

/* C = alpha op(A) op(B) + beta C in bf16 (see ddpm_gemm); -1 when its buffers
 * cannot be allocated, C untouched. */
static int gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return 0;
    const int K_p = round_up(K > 0 ? K : 1, 2), KP = K_p / 2, M_p = round_up(M, 16), N_p = round_up(N, 16);
    /* op(A) in the kernel's rows: [M][K_p] (a_rs K_p, a_ks 2) from a row-major A,
       [KP][M_p][2] (a_rs 2, a_ks 2 M_p) from a transposed one */
    const size_t a_n = trans_a ? (size_t)KP * M_p * 2 : (size_t)M * K_p, b_n = (size_t)KP * N_p * 2;
    uint16_t *ap = malloc((a_n + b_n) * sizeof(uint16_t));
    float *cp = malloc((size_t)M * N_p * sizeof(float));
    if (!ap || !cp) {
        free(ap), free(cp);
        return -1;
    }
    uint16_t *bp = ap + a_n;
    if (K > 0) {
        if (trans_a)
            ddpm_bf16_pair_rows(ap, M_p, A, lda, K, M); /* A is [K][M] */
        else
            pack_rows(ap, K_p, A, lda, M, K);
        if (trans_b)
            pack_transposed_pairs(bp, N_p, B, ldb, N, K); /* B is [N][K] */
        else
            ddpm_bf16_pair_rows(bp, N_p, B, ldb, K, N);
    } else {
        memset(ap, 0, (a_n + b_n) * sizeof(uint16_t));
    }
    ddpm_bf16_product(M, N_p, KP, ap, trans_a ? 2 : K_p, trans_a ? 2 * (ptrdiff_t)M_p : 2, bp, cp, N_p, 0);
    for (int r = 0; r < M; r++) {
        const float *pr = cp + (size_t)r * N_p;
        float *cr = C + (size_t)r * ldc;
        if (beta == 0.0f)
            for (int n = 0; n < N; n++)
                cr[n] = alpha * pr[n];
        else
            for (int n = 0; n < N; n++)
                cr[n] = alpha * pr[n] + beta * cr[n];
    }
    free(ap), free(cp);
    return 0;
}
#endif

void ddpm_gemm(ddpm_precision precision, int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
#if DDPM_HAVE_BF16
    if (precision == DDPM_PRECISION_BF16 && ddpm_bf16_available() &&
        !gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
#else
    (void)precision;
#endif
    ddpm_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
