/* bf16.h: products of bf16 inputs with float32 accumulation (AVX512_BF16's
 * vdpbf16ps), shared by the Winograd convolution (conv3x3.c) and the bf16
 * matrix product (bf16.c, ddpm_gemm_bf16 in ops.h). Internal to src/ops. */
#ifndef DDPM_OPS_BF16_H
#define DDPM_OPS_BF16_H

#include <stddef.h>
#include <stdint.h>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define DDPM_HAVE_BF16 1
#else
#define DDPM_HAVE_BF16 0
#endif

#if DDPM_HAVE_BF16
/* C [M, N] (+)= A [M, 2 KP] x B: the pair (A(r, 2 kp), A(r, 2 kp + 1)) is the
 * 32-bit word at a + r*a_rs + kp*a_ks (uint16_t units), B bf16 [KP][N][2] (the
 * pair of column n side by side), N a multiple of 16, C row-major with ldc.
 * Each C entry sums its pairs in kp order, both products of a pair in one
 * vdpbf16ps. */
void ddpm_bf16_product(int M, int N, int KP, const uint16_t *a, ptrdiff_t a_rs, ptrdiff_t a_ks,
                       const uint16_t *b, float *c, ptrdiff_t ldc, int accumulate);

/* Pairs of rows rounded to bf16 (nearest even): d [ceil(K/2)][C_p][2] from the K
 * rows of s (row k at s + k*lds, C values; C_p = C rounded up to 16, zeros
 * beyond C), d[kp][c] = (s[2 kp][c], s[2 kp + 1][c]), low half first, as
 * _mm512_dpbf16_ps pairs them; an odd K's last pair has a zero high half. With
 * lds = C_p = C, d may be s itself: pair kp is written over s's row kp, which
 * pairs < kp have already read. */
void ddpm_bf16_pair_rows(uint16_t *d, int C_p, const float *s, ptrdiff_t lds, int K, int C);
#endif

#endif
