/* test_ops_gemm.c: ddpm_gemm (ops.h). In float32 it is OpenBLAS's sgemm; with
 * DDPM_PRECISION_BF16 its own packing and bf16 product kernel (src/ops/bf16.c).
 * Both against a product in double, for every transposition, ragged sizes
 * (M, N, K odd, below and above the kernel's 12 rows and 16 or 32 columns,
 * K = 1 and 0), leading dimensions larger than the rows, alpha and beta (beta 0
 * never reads C: NaN there stays out of the result). The bf16 bound is the one
 * ops.h states: (2u + u^2 + (K + 2) 2^-24) |alpha| sum_k |A| |B| plus float32's
 * last rounding of each term, u = 2^-8. Where bf16 is not available the bf16
 * call must be the float32 one, byte for byte. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ddpm/ops.h"
#include "testutil.h"

typedef struct {
    int ta, tb, M, N, K;
} gcase;

static const gcase cases[] = {
    {0, 0, 1, 1, 1},    {0, 0, 5, 7, 3},     {1, 0, 13, 17, 9},    {0, 1, 12, 33, 64},
    {1, 1, 25, 16, 31}, {0, 0, 64, 196, 64}, {1, 0, 196, 196, 64}, {0, 1, 64, 196, 196},
    {0, 1, 32, 9, 784}, {1, 1, 3, 40, 2},    {0, 0, 1, 50, 288},   {1, 0, 9, 30, 0},
};
#define N_CASES (sizeof(cases) / sizeof(cases[0]))

/* A and B in memory with leading dimensions 3 more than their rows hold */
static void run_case(const gcase *g, float alpha, float beta, uint64_t seed)
{
    const int ar = g->ta ? g->K : g->M, ac = g->ta ? g->M : g->K;
    const int br = g->tb ? g->N : g->K, bc = g->tb ? g->K : g->N;
    const int lda = ac + 3, ldb = bc + 3, ldc = g->N + 3;
    float *A = tu_alloc((size_t)(ar ? ar : 1) * lda), *B = tu_alloc((size_t)(br ? br : 1) * ldb);
    float *C32 = tu_alloc((size_t)g->M * ldc), *C16 = tu_alloc((size_t)g->M * ldc);
    float *C0 = tu_alloc((size_t)g->M * ldc);
    tu_fill_uniform(A, (size_t)(ar ? ar : 1) * lda, seed, -1, 1);
    tu_fill_uniform(B, (size_t)(br ? br : 1) * ldb, seed + 1, -1, 1);
    tu_fill_uniform(C0, (size_t)g->M * ldc, seed + 2, -1, 1);
    if (beta == 0.0f)
        for (size_t i = 0; i < (size_t)g->M * ldc; i++)
            C0[i] = NAN;
    memcpy(C32, C0, (size_t)g->M * ldc * sizeof(float));
    memcpy(C16, C0, (size_t)g->M * ldc * sizeof(float));
    ddpm_gemm(DDPM_PRECISION_FP32, g->ta, g->tb, g->M, g->N, g->K, alpha, A, lda, B, ldb, beta, C32, ldc);
    ddpm_gemm(DDPM_PRECISION_BF16, g->ta, g->tb, g->M, g->N, g->K, alpha, A, lda, B, ldb, beta, C16, ldc);
    const double u = 1.0 / 256, e16 = 2 * u + u * u + (g->K + 2) * ldexp(1.0, -24);
    const double e32 = (g->K + 2) * ldexp(1.0, -24);
    int bf16_differs = 0;
    for (int r = 0; r < g->M; r++)
        for (int n = 0; n < g->N; n++) {
            double sum = 0, mag = 0;
            for (int k = 0; k < g->K; k++) {
                const double a = g->ta ? A[(size_t)k * lda + r] : A[(size_t)r * lda + k];
                const double b = g->tb ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n];
                sum += a * b;
                mag += fabs(a * b);
            }
            const double c0 = beta == 0.0f ? 0.0 : C0[(size_t)r * ldc + n];
            const double want = alpha * sum + beta * c0;
            /* the last roundings: alpha's product, beta's, their sum */
            const double last = 3 * ldexp(1.0, -24) * (fabs(alpha) * mag + fabs(beta * c0)) + 1e-30;
            const double got32 = C32[(size_t)r * ldc + n], got16 = C16[(size_t)r * ldc + n];
            if (!(fabs(got32 - want) <= e32 * fabs(alpha) * mag + last))
                fail_msg("fp32 ta %d tb %d %dx%dx%d [%d,%d]: got %.9g want %.9g", g->ta, g->tb, g->M, g->N,
                         g->K, r, n, got32, want);
            if (!ddpm_bf16_available()) {
                if (memcmp(&got32, &got16, sizeof got32) && !(isnan(got32) && isnan(got16)))
                    fail_msg("without bf16, the bf16 call is not the float32 one");
                continue;
            }
            if (!(fabs(got16 - want) <= e16 * fabs(alpha) * mag + last))
                fail_msg("bf16 ta %d tb %d %dx%dx%d [%d,%d]: got %.9g want %.9g (sum |ab| %.4g)", g->ta,
                         g->tb, g->M, g->N, g->K, r, n, got16, want, mag);
            bf16_differs |= got16 != got32;
        }
    /* the padding columns of C stay as they were */
    for (int r = 0; r < g->M; r++)
        for (int n = g->N; n < ldc; n++)
            if (memcmp(&C16[(size_t)r * ldc + n], &C0[(size_t)r * ldc + n], sizeof(float)))
                fail_msg("bf16 wrote C[%d][%d] beyond N = %d", r, n, g->N);
    if (ddpm_bf16_available() && g->K > 1 && g->M * g->N > 1)
        assert_true(bf16_differs); /* the bf16 path ran */
    free(A), free(B), free(C32), free(C16), free(C0);
}

static void test_gemm_matches_the_double_product_in_both_precisions(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CASES; i++) {
        run_case(&cases[i], 1.0f, 0.0f, 10 + 3 * i);
        run_case(&cases[i], 0.5f, 1.0f, 50 + 3 * i);
        run_case(&cases[i], -2.0f, 0.25f, 90 + 3 * i);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_matches_the_double_product_in_both_precisions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
