/* simd.h: the vector type and the register-blocked product kernel that the
 * Winograd convolution (conv3x3.c) multiplies with. Internal to src/ops.
 *
 * vf is a vector of VW floats: AVX-512 (16), AVX2 with FMA (8), or plain C over
 * 16-float structs, chosen at compile time from the target macros
 * (SIMD_ISA_NAME says which). Every path does the same float operations in the
 * same order: the products accumulate over k by one fused multiply-add per term,
 * so a result does not depend on the vector width. */
#ifndef DDPM_OPS_SIMD_H
#define DDPM_OPS_SIMD_H

#include <math.h>
#include <stddef.h>
#include <string.h>


/* The vector type vf of VW floats the transforms and products are written in:
 * AVX-512 (16), AVX2 with FMA (8), or plain C over 16-float structs. The
 * channel-blocked layouts stay 16 channels wide on every path; an 8-float path
 * runs each block as two halves. Every path does the same float operations in
 * the same order (the products accumulate over k by one fused multiply-add per
 * term); the tests hold each build to the same references. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
#define SIMD_ISA_NAME "avx512"
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
#define SIMD_ISA_NAME "avx2"
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
#define SIMD_ISA_NAME "generic"
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

/* rows per kernel call: MR rows x 2 vectors of accumulators fill the register
 * file without spilling (AVX2: 12 of 16 ymm; AVX-512: 24 of 32 zmm) */
#if VW == 8
#define MR_FWD 6
#define MR_DW 6
#else
#define MR_FWD 12
#define MR_DW 8
#endif
#define MR_MAX 12

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

#endif
