/* platform.c: threads and the build's description (platform.h). */
#include "ddpm/platform.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

void ddpm_threads_set(int n)
{
    if (n > 0)
        omp_set_num_threads(n);
    openblas_set_num_threads(1);
}

void ddpm_blas_single_thread(void)
{
    if (openblas_get_num_threads() != 1)
        openblas_set_num_threads(1);
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
