/* ops.h: the U-Net's layers. Each is a _forward / _backward pair of pure
 * functions over flat float arrays (NCHW), in the argument order
 *     outputs, what forward saves for backward, inputs, parameters, sizes.
 * No allocation inside: the caller passes scratch memory where an op needs it.
 * Backward passes ACCUMULATE (+=) into every parameter gradient. Those whose
 * input gradient is often the first write into a buffer (conv2d, SiLU, dropout,
 * GroupNorm, attention) take a `beta` after it, as sgemm does:
 * din = beta * din + (the gradient), so beta = 1 accumulates and beta = 0
 * overwrites without reading din (which may then be uninitialised memory): the
 * caller never clears a buffer only to add into it once. The others always
 * accumulate. A gradient pointer may be NULL when that gradient is not wanted.
 * One source file per op under src/ops/ (conv2d.c, groupnorm.c, ...). */
#ifndef DDPM_OPS_H
#define DDPM_OPS_H

#include <stddef.h>
#include <stdint.h>

/* sum_i x[i] in double over 8 partial sums (element i to partial i % 8, added in
 * order at the end): a fixed order, independent of threads, whose 8 chains
 * vectorise. Bias gradients and GroupNorm statistics use it. */
double ddpm_sum_fixed(const float *x, size_t n);

/* ---- conv2d (src/ops/conv2d.c) -------------------------------------------
 * in [B,Cin,H,W], weight [Cout,Cin,K,K], bias [Cout] (may be NULL),
 * out [B,Cout,Ho,Wo], Ho = (H + 2P - K)/S + 1 (likewise Wo). K in {1,3},
 * S in {1,2}, P in {0,1}. im2col + sgemm per unit of a few images (one image
 * when H*W >= 256), the units spread over OpenMP threads in 8 fixed lanes, so the
 * results do not depend on the thread count (see conv2d.c). scratch holds
 * ddpm_conv2d_scratch_floats(...) floats, enough for forward and for backward.
 * Forward overwrites out. When compiled with AVX-512 or AVX2 + FMA, 3x3
 * stride-1 pad-1 convs with >= 16 input and output channels run ddpm_conv3x3
 * (Winograd) instead. */
size_t ddpm_conv2d_scratch_floats(int B, int Cin, int H, int W, int Cout, int K, int S, int P);
/* The arithmetic of a layer's products: float32, or bf16 inputs with float32
 * accumulation (ddpm_gemm, ddpm_conv3x3_forward_precision,
 * ddpm_conv3x3_backward_precision). */
typedef enum { DDPM_PRECISION_FP32 = 0, DDPM_PRECISION_BF16 = 1 } ddpm_precision;
/* "fp32", "bf16"; NULL for any other value. */
const char *ddpm_precision_name(ddpm_precision p);
/* ddpm_conv2d_forward with its products in `precision`: ddpm_conv3x3's
 * (ddpm_conv3x3_forward_precision) or im2col's (ddpm_gemm). */
void ddpm_conv2d_forward_precision(float *out, float *scratch, const float *in, const float *weight,
                                   const float *bias, int B, int Cin, int H, int W, int Cout, int K,
                                   int S, int P, ddpm_precision precision);
void ddpm_conv2d_forward(float *out, float *scratch, const float *in, const float *weight,
                         const float *bias, int B, int Cin, int H, int W, int Cout, int K,
                         int S, int P);
/* din = beta din + dL/din; dweight, dbias accumulate. */
void ddpm_conv2d_backward(float *din, float beta, float *dweight, float *dbias, float *scratch,
                          const float *dout, const float *in, const float *weight, int B,
                          int Cin, int H, int W, int Cout, int K, int S, int P);
/* ddpm_conv2d_backward with its products in `precision`
 * (ddpm_conv3x3_backward_precision, or ddpm_gemm). */
void ddpm_conv2d_backward_precision(float *din, float beta, float *dweight, float *dbias, float *scratch,
                                    const float *dout, const float *in, const float *weight, int B,
                                    int Cin, int H, int W, int Cout, int K, int S, int P,
                                    ddpm_precision precision);

/* ---- 3x3 convolution, stride 1, padding 1 (src/ops/conv3x3.c) ---------------
 * The same op as ddpm_conv2d with K = 3, S = 1, P = 1 (Ho = H, Wo = W), computed
 * by Winograd F(4x4,3x3) or F(2x2,3x3) (by shape: F(2x2) where 4x4 tiles would
 * compute more outputs, e.g. 14x14): 36 products per 4x4 output tile and channel
 * pair (16 per 2x2) instead of 144 (36) multiply-adds, vectorised with AVX-512
 * or AVX2 + FMA when compiled for it (ddpm_conv3x3_isa says which).
 * Results differ from conv2d's by float rounding only (~1e-6 of the sum of
 * |terms|); they do not depend on the thread count. scratch holds
 * ddpm_conv3x3_scratch_floats(...) floats (forward and backward). Forward
 * overwrites out; backward sets din = beta * din + dL/din (beta 0: overwrite,
 * 1: accumulate) and accumulates into dweight and dbias; any of the three may be
 * NULL. */
size_t ddpm_conv3x3_scratch_floats(int B, int Cin, int H, int W, int Cout);
void ddpm_conv3x3_forward(float *out, float *scratch, const float *in, const float *weight,
                          const float *bias, int B, int Cin, int H, int W, int Cout);
void ddpm_conv3x3_backward(float *din, float beta, float *dweight, float *dbias, float *scratch,
                           const float *dout, const float *in, const float *weight, int B,
                           int Cin, int H, int W, int Cout);
/* ddpm_conv3x3_forward, with DDPM_PRECISION_BF16: the transform-domain products
 * take V and U rounded to bf16 (nearest even, relative error <= 2^-8 each) and
 * accumulate in float32 (AVX512_BF16's vdpbf16ps); transforms and output stay
 * float32. Where ddpm_bf16_available() is 0 it is the float32 forward. Same
 * scratch; results do not depend on the thread count. */
void ddpm_conv3x3_forward_precision(float *out, float *scratch, const float *in, const float *weight,
                                    const float *bias, int B, int Cin, int H, int W, int Cout,
                                    ddpm_precision precision);
/* ddpm_conv3x3_backward, with DDPM_PRECISION_BF16: both of its products in
 * bf16 with float32 accumulation: din's (the forward's chain on dout, as
 * ddpm_conv3x3_forward_precision) and dU = V^T M's, whose V and M are rounded
 * to bf16 in pairs of tiles (the sum over tiles runs two tiles per
 * instruction). The lane sums, the weight-gradient transform and the bias
 * gradient stay float32. Where ddpm_bf16_available() is 0 it is the float32
 * backward. Same scratch; results do not depend on the thread count. */
void ddpm_conv3x3_backward_precision(float *din, float beta, float *dweight, float *dbias, float *scratch,
                                     const float *dout, const float *in, const float *weight, int B,
                                     int Cin, int H, int W, int Cout, ddpm_precision precision);
/* C [M, N] = alpha op(A) op(B) + beta C, row-major (op(X) = X or X^T by trans_X),
 * as ddpm_sgemm (platform.h) in float32; with DDPM_PRECISION_BF16 where
 * ddpm_bf16_available(), op(A) and op(B) are rounded to bf16 (nearest even) and
 * their products summed in float32 by pairs of k with vdpbf16ps (src/ops/bf16.c):
 * |C - exact| <= (2u + u^2 + (K + 2) 2^-24) |alpha| sum_k |A| |B| + float32's
 * rounding of alpha and beta, u = 2^-8. On the calling thread; beta 0 does not
 * read C. */
void ddpm_gemm(ddpm_precision precision, int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* 1 when this build has the bf16 products (compiled with __AVX512BF16__) and the
 * CPU running it has AVX512_BF16, else 0. */
int ddpm_bf16_available(void);
/* The output tile m of F(m x m, 3x3): 2 or 4 forces it, 0 (default) chooses by
 * shape. Process-wide, for tests and benchmarks; set it while no call runs (the
 * scratch size depends on it). */
void ddpm_conv3x3_force_tile(int m);
/* The instruction set ddpm_conv3x3 was compiled for, chosen at compile time:
 * "avx512" (__AVX512F__), "avx2" (__AVX2__ and __FMA__) or "generic" (plain C). */
const char *ddpm_conv3x3_isa(void);

/* Whether conv2d may hand shapes to ddpm_conv3x3 (default 1). 0 forces the
 * im2col path everywhere: for tests and `ddpm bench --ops`, which compare the
 * two. Process-wide; set it while no conv2d call is running. */
void ddpm_conv2d_enable_winograd(int enabled);

/* ---- linear (src/ops/linear.c) --------------------------------------------
 * in [B,In], weight [Out,In] (PyTorch layout), bias [Out] (may be NULL), out [B,Out]. */
void ddpm_linear_forward(float *out, const float *in, const float *weight, const float *bias,
                         int B, int In, int Out);
void ddpm_linear_backward(float *din, float *dweight, float *dbias, const float *dout,
                          const float *in, const float *weight, int B, int In, int Out);

/* ---- SiLU (src/ops/silu.c): out = x * sigmoid(x); out may equal in, din dout. */
void ddpm_silu_forward(float *out, const float *in, size_t n);
void ddpm_silu_backward(float *din, float beta, const float *dout, const float *in, size_t n);

/* ---- GroupNorm (src/ops/groupnorm.c) ----------------------------------------
 * in/out [B,C,HW], G groups dividing C; mean/rstd [B*G] saved for backward;
 * gamma/beta [C]. out = (x - mean) * rstd * gamma + beta, rstd = 1/sqrt(var + eps),
 * var the biased variance over the C/G * HW elements of a group. */
void ddpm_groupnorm_forward(float *out, float *mean, float *rstd, const float *in,
                            const float *gamma, const float *beta, int B, int C, int HW, int G,
                            float eps);
/* din = beta din + dL/din; dgamma, dbeta accumulate. */
void ddpm_groupnorm_backward(float *din, float beta, float *dgamma, float *dbeta, const float *dout,
                             const float *in, const float *mean, const float *rstd,
                             const float *gamma, int B, int C, int HW, int G);
/* out = SiLU(GroupNorm(in)) in one pass over memory after the statistics, and
 * norm = GroupNorm(in) (what ddpm_silu_backward needs) unless norm is NULL: the
 * same bytes as ddpm_groupnorm_forward then ddpm_silu_forward. out must not
 * alias in or norm. */
void ddpm_groupnorm_silu_forward(float *out, float *norm, float *mean, float *rstd, const float *in,
                                 const float *gamma, const float *beta, int B, int C, int HW, int G, float eps);
/* AdaGN (Dhariwal & Nichol 2021, use_scale_shift_norm): out = SiLU(GN(in) (1 + scale)
 * + shift) with scale_shift [B, 2C] per image (scale in [b, 0..C), shift in
 * [b, C..2C)), and norm = the scaled and shifted GroupNorm, SiLU's input, unless
 * norm is NULL. affine [B, 2C] receives each image's affine, gamma (1 + scale) then
 * beta (1 + scale) + shift: the per-image scale and shift fold into GroupNorm's
 * per-channel affine, so this runs the GN+SiLU kernel. */
void ddpm_groupnorm_silu_scale_shift_forward(float *out, float *norm, float *mean, float *rstd, float *affine,
                                             const float *in, const float *gamma, const float *beta,
                                             const float *scale_shift, int B, int C, int HW, int G, float eps);
/* The backward of y = GN(in) (1 + scale) + shift given dout = dL/dy, with the
 * statistics and the affine the forward saved: din = din_beta din + dL/din (din
 * may be NULL); dgamma, dbeta [C] and dscale_shift [B, 2C] accumulate. d_affine
 * [B, 2C] is scratch (the gradient of each image's affine). */
void ddpm_groupnorm_scale_shift_backward(float *din, float din_beta, float *dgamma, float *dbeta,
                                         float *dscale_shift, float *d_affine, const float *dout, const float *in,
                                         const float *mean, const float *rstd, const float *affine,
                                         const float *gamma, const float *beta, const float *scale_shift, int B,
                                         int C, int HW, int G);

/* ---- nearest 2x upsample (src/ops/upsample.c): in [B,C,H,W] -> out [B,C,2H,2W] */
void ddpm_upsample_forward(float *out, const float *in, int B, int C, int H, int W);
void ddpm_upsample_backward(float *din, const float *dout, int B, int C, int H, int W);

/* ---- channel concat (src/ops/concat.c): a [B,Ca,HW], b [B,Cb,HW] -> out [B,Ca+Cb,HW] */
void ddpm_concat_forward(float *out, const float *a, const float *b, int B, int Ca, int Cb,
                         int HW);
void ddpm_concat_backward(float *da, float *db, const float *dout, int B, int Ca, int Cb,
                          int HW);

/* ---- per-(batch, channel) broadcast add (src/ops/add.c) -------------------
 * x [B,C,HW] += v[B,C] broadcast over HW (the time-embedding projection), in place. */
void ddpm_add_channel_forward(float *x, const float *v, int B, int C, int HW);
void ddpm_add_channel_backward(float *dv, const float *dout, int B, int C, int HW);
/* out[i] = a[i] + b[i] (out may alias a or b); the residual connections. */
void ddpm_add_forward(float *out, const float *a, const float *b, size_t n);

/* ---- dropout (src/ops/dropout.c) ---------------------------------------------
 * Inverted dropout: out = in * mask, mask[i] = 0 with probability p, else 1/(1-p).
 * The mask is a pure function of (seed, stream DDPM_STREAM_DROPOUT, counter, i), the
 * same for any thread count; forward saves it as bits in mask (bit i % 8 of byte
 * i / 8 set when element i is kept; ddpm_dropout_mask_bytes(n) bytes; NULL: not
 * saved), and backward (and a recompute of forward's output: backward with
 * beta = 0 on forward's input) reads them. A call uses the counters
 * [counter, counter + ceil(n/4)). p == 0 is the identity (mask all ones, and
 * backward does not read it). out may equal in, din may equal dout. */
size_t ddpm_dropout_mask_bytes(size_t n);
void ddpm_dropout_forward(float *out, uint8_t *mask, const float *in, float p, size_t n, uint64_t seed,
                          uint64_t counter);
void ddpm_dropout_backward(float *din, float beta, const float *dout, const uint8_t *mask, float p, size_t n);

/* ---- sinusoidal timestep embedding (src/ops/embedding.c), forward only -------
 * out [B,dim], dim even, half = dim/2, freq_i = exp(-ln(10000) * i/(half-1)),
 * out[b] = [sin(t_b * freq), cos(t_b * freq)] with t the 0-based step index. */
void ddpm_timestep_embedding(float *out, const int *t, int B, int dim);
/* The same at continuous step indices t (index units, 0..T-1): an integer t
 * gives exactly the bytes of the int version (samplers between trained steps). */
void ddpm_timestep_embedding_t(float *out, const double *t, int B, int dim);

/* ---- learned embedding rows (src/ops/embedding.c): the class embedding ------
 * out[b, :] += table[idx[b], :] for b < B (rows of dim floats), and its backward
 * d_table[idx[b], :] += d_out[b, :] (rows hit twice accumulate twice). */
void ddpm_embedding_add_forward(float *out, const int *idx, const float *table, int B, int dim);
void ddpm_embedding_add_backward(float *d_table, const float *d_out, const int *idx, int B, int dim);

/* ---- spatial self-attention core (src/ops/attention.c) -----------------------
 * q, k, v, h [B,C,N] (N = H*W positions, channels first as in NCHW).
 * w[b,i,j] = softmax_j(sum_c q[b,c,i] k[b,c,j] / sqrt(C)), saved [B,N,N];
 * h[b,c,i] = sum_j w[b,i,j] v[b,c,j]. Batched sgemm, numerically stable softmax.
 * Images run in parallel lanes. Backward scratch: ddpm_attention_scratch_floats(N)
 * floats (one [N,N] per lane). */
void ddpm_attention_forward(float *h, float *w, const float *q, const float *k, const float *v,
                            int B, int C, int N);
size_t ddpm_attention_scratch_floats(int N);
/* dq = beta dq + dL/dq, likewise dk and dv. */
void ddpm_attention_backward(float *dq, float *dk, float *dv, float beta, float *scratch,
                             const float *dh, const float *w, const float *q, const float *k,
                             const float *v, int B, int C, int N);
/* The same with the five products per image in `precision` (ddpm_gemm): bf16
 * rounds q, k, v, the softmax weights and the gradients to bf16 before each
 * product; the softmax and its backward stay float32. */
void ddpm_attention_forward_precision(float *h, float *w, const float *q, const float *k, const float *v,
                                      int B, int C, int N, ddpm_precision precision);
void ddpm_attention_backward_precision(float *dq, float *dk, float *dv, float beta, float *scratch,
                                       const float *dh, const float *w, const float *q, const float *k,
                                       const float *v, int B, int C, int N, ddpm_precision precision);

/* ---- mean squared error (src/ops/mse.c) -----------------------------------
 * loss = mean_i (pred_i - target_i)^2, summed in double. Backward: these n
 * elements are part of a mean over n_mean >= n (a micro-batch of a batch; n_mean
 * = n for the whole), dpred += 2 (pred - target) / n_mean. */
double ddpm_mse_forward(const float *pred, const float *target, size_t n);
void ddpm_mse_backward(float *dpred, const float *pred, const float *target, size_t n, size_t n_mean);

#endif
