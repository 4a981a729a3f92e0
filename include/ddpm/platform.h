/* platform.h: threads, and what the bytes of a result depend on.
 *
 * ddpm's results do not depend on the thread count (docs/design.md, Threads and
 * determinism). OpenBLAS splits one sgemm over its threads in ways that follow
 * the thread count and, with some kernel sets (Haswell, Sandybridge), change
 * the rounding of the product. So every sgemm in ddpm runs on the thread that
 * calls it: OpenBLAS is kept at one thread, and the parallelism comes from
 * ddpm's own fixed lanes (OpenMP threads over lanes whose number and contents
 * depend on the shapes only). */
#ifndef DDPM_PLATFORM_H
#define DDPM_PLATFORM_H

#include <stddef.h>

/* Uses n OpenMP threads (n <= 0: leave OpenMP's setting) and one OpenBLAS
 * thread. */
void ddpm_threads_set(int n);

/* Keeps OpenBLAS at one thread. The layers that call sgemm call this first, so
 * a program that never called ddpm_threads_set gets the same bytes. Cheap: one
 * query when the setting is already right. */
void ddpm_blas_single_thread(void);

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
