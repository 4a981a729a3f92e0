/* platform.c: threads and the build's description (platform.h). */
#include "ddpm/platform.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

void ddpm_threads_set(int n)
{
    const int omp_n = n > 0 ? n : omp_get_max_threads();
    /* The OpenMP build of OpenBLAS sets OpenMP's thread count along with its
       own, so OpenMP's is set after it. OpenBLAS then stays at one thread: it
       adopts OpenMP's count only while its own is above one. */
    openblas_set_num_threads(1);
    omp_set_num_threads(omp_n);
}

void ddpm_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc)
{
    const enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans,
                               tb = trans_b ? CblasTrans : CblasNoTrans;
    const int held = ddpm_blas_hold();
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    ddpm_blas_release(held);
}

int ddpm_blas_hold(void)
{
    const int held = omp_in_parallel() ? 0 : omp_get_max_threads();
    if (held > 1)
        omp_set_num_threads(1);
    return held;
}

void ddpm_blas_release(int held)
{
    if (held > 1)
        omp_set_num_threads(held);
}

void ddpm_platform_get(ddpm_platform *p)
{
    memset(p, 0, sizeof *p);
#if defined(__clang__)
    snprintf(p->compiler, sizeof p->compiler, "clang %d.%d.%d", __clang_major__, __clang_minor__,
             __clang_patchlevel__);
#elif defined(__GNUC__)
    snprintf(p->compiler, sizeof p->compiler, "gcc %d.%d.%d", __GNUC__, __GNUC_MINOR__, __GNUC_PATCHLEVEL__);
#else
    snprintf(p->compiler, sizeof p->compiler, "unknown");
#endif
#if defined(__AVX512F__)
    snprintf(p->isa, sizeof p->isa, "avx512");
#elif defined(__AVX2__) && defined(__FMA__)
    snprintf(p->isa, sizeof p->isa, "avx2");
#elif defined(__x86_64__)
    snprintf(p->isa, sizeof p->isa, "x86-64");
#else
    snprintf(p->isa, sizeof p->isa, "other");
#endif
    const char *cfg = openblas_get_config();
    snprintf(p->openblas, sizeof p->openblas, "%s", cfg ? cfg : "?");
    const char *core = openblas_get_corename();
    snprintf(p->blas_core, sizeof p->blas_core, "%s", core ? core : "?");
}
