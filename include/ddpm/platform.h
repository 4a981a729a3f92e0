/* platform.h: threads, and what the bytes of a result depend on.
 *
 * ddpm's results do not depend on the thread count (docs/design.md, Threads and
 * determinism). OpenBLAS splits one sgemm over its threads in ways that follow
 * the thread count and, with some kernel sets (Haswell, Sandybridge), change
 * the rounding of the product. So every sgemm in ddpm runs on the thread that
 * calls it (ddpm_sgemm), and the parallelism comes from ddpm's own fixed lanes
 * (OpenMP threads over lanes whose number and contents depend on the shapes
 * only). */
#ifndef DDPM_PLATFORM_H
#define DDPM_PLATFORM_H

#include <stddef.h>

/* Uses n OpenMP threads (n <= 0: leave OpenMP's setting) and one OpenBLAS
 * thread. */
void ddpm_threads_set(int n);

/* cblas_sgemm (row-major) on the calling thread only: every product in ddpm
 * goes through this. From serial code, OpenMP is held at one thread for the
 * call, since the OpenMP build of OpenBLAS may raise its own thread count back
 * to OpenMP's (seen with Debian's 0.3.21: a product at --threads 2 then ran on
 * two threads and rounded differently with the Haswell kernels); inside a
 * parallel region OpenBLAS runs on the calling thread by itself. */
void ddpm_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc);

/* The mechanism of ddpm_sgemm, for other BLAS and LAPACK work made from serial
 * code (the FID's dgemm, dsyrk and dsyevd): ddpm_blas_hold holds OpenMP at one
 * thread (in a parallel region it does nothing) and returns what
 * ddpm_blas_release takes to restore it. */
int ddpm_blas_hold(void);
void ddpm_blas_release(int held);

/* What the bytes of a training run or a sample depend on besides the inputs:
 * the compiler, the instruction set the build may use, the OpenBLAS version and
 * the kernel set it runs. */
typedef struct {
    char compiler[64];  /* "gcc 12.2.0" */
    char isa[32];       /* "avx512", "avx2", "x86-64" (what the build may use) */
    char openblas[96];  /* openblas_get_config(): "OpenBLAS 0.3.21 DYNAMIC_ARCH ..." */
    char blas_core[32]; /* openblas_get_corename(): "SkylakeX", "Haswell", ... */
} ddpm_platform;
void ddpm_platform_get(ddpm_platform *p);

#endif
