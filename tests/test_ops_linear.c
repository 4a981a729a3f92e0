/* test_ops_linear.c: linear forward against a double reference, backward against
 * central finite differences, gradient accumulation and NULL gradients. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ddpm/ops.h"
#include "testutil.h"

/* Forward (full-precision random data in [-1, 1]): each output is a sum of In <= 7
 * products plus a bias, in float: its rounding error is a few ulps of |out| <= 8,
 * far below 1e-5 + 1e-5*|ref|; using a wrong weight changes an output by ~0.1-1. */
#define FWD_ATOL 1e-5
#define FWD_RTOL 1e-5

/* Backward: L = sum r*out with out from the double reference is affine in each
 * single element, and the data lie on a 2^-10 grid in [-1, 1], so x +- 2^-4 is
 * exact in float and the central difference is the exact derivative up to double
 * rounding. The analytic gradients are float sums of at most 7 products of values
 * in [-1, 1] (a few ulps of <= 7), so 1e-5 + 1e-5*|g| is 4 orders below the error of
 * a wrong index (one whole term, ~0.1-1). */
#define FD_H 0.0625f
#define GRAD_ATOL 1e-5
#define GRAD_RTOL 1e-5

typedef struct {
    int B, In, Out;
    float *in, *weight, *bias, *r, *out;
    float *din, *dweight, *dbias;
    double *ref;
} linear_case;

static void fill_full(float *x, size_t n, uint64_t seed)
{
    tu_fill_uniform(x, n, seed, -1.0f, 1.0f);
}

/* uniform in [-1, 1] rounded to multiples of 2^-10: x +- 2^-4 is exact in float */
static void fill_grid(float *x, size_t n, uint64_t seed)
{
    fill_full(x, n, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = roundf(x[i] * 1024.0f) / 1024.0f;
}

static void case_init(linear_case *c, int B, int In, int Out, uint64_t seed, int on_grid)
{
    memset(c, 0, sizeof(*c));
    c->B = B;
    c->In = In;
    c->Out = Out;
    c->in = tu_alloc((size_t)B * In);
    c->weight = tu_alloc((size_t)Out * In);
    c->bias = tu_alloc((size_t)Out);
    c->r = tu_alloc((size_t)B * Out);
    c->out = tu_alloc((size_t)B * Out);
    c->din = tu_alloc((size_t)B * In);
    c->dweight = tu_alloc((size_t)Out * In);
    c->dbias = tu_alloc((size_t)Out);
    c->ref = calloc((size_t)B * Out, sizeof(double));
    assert_non_null(c->ref);
    void (*fill)(float *, size_t, uint64_t) = on_grid ? fill_grid : fill_full;
    fill(c->in, (size_t)B * In, seed);
    fill(c->weight, (size_t)Out * In, seed + 1);
    fill(c->bias, (size_t)Out, seed + 2);
    fill(c->r, (size_t)B * Out, seed + 3);
}

static void case_free(linear_case *c)
{
    free(c->in);
    free(c->weight);
    free(c->bias);
    free(c->r);
    free(c->out);
    free(c->din);
    free(c->dweight);
    free(c->dbias);
    free(c->ref);
}

/* out[b,o] = bias[o] + sum_i weight[o,i] in[b,i], in double */
static void linear_reference(double *out, const float *in, const float *weight, const float *bias,
                             int B, int In, int Out)
{
    for (int b = 0; b < B; b++)
        for (int o = 0; o < Out; o++) {
            double acc = bias ? bias[o] : 0.0;
            for (int i = 0; i < In; i++)
                acc += (double)weight[o * In + i] * in[b * In + i];
            out[b * Out + o] = acc;
        }
}

static double loss_reference(void *ctx)
{
    linear_case *c = ctx;
    linear_reference(c->ref, c->in, c->weight, c->bias, c->B, c->In, c->Out);
    double L = 0.0;
    for (int i = 0; i < c->B * c->Out; i++)
        L += (double)c->r[i] * c->ref[i];
    return L;
}

static void backward(linear_case *c, float *din, float *dweight, float *dbias)
{
    /* dL/dout = r */
    ddpm_linear_backward(din, dweight, dbias, c->r, c->in, c->weight, c->B, c->In, c->Out);
}

static void check_forward(int B, int In, int Out, uint64_t seed, int with_bias)
{
    linear_case c;
    case_init(&c, B, In, Out, seed, 0);
    const float *bias = with_bias ? c.bias : NULL;
    ddpm_linear_forward(c.out, c.in, c.weight, bias, B, In, Out);
    linear_reference(c.ref, c.in, c.weight, bias, B, In, Out);
    for (int i = 0; i < B * Out; i++) {
        const double diff = fabs((double)c.out[i] - c.ref[i]);
        if (!(diff <= FWD_ATOL + FWD_RTOL * fabs(c.ref[i])))
            fail_msg("linear forward B%d In%d Out%d bias %d: out[%d] = %.8g, want %.8g", B, In,
                     Out, with_bias, i, (double)c.out[i], c.ref[i]);
    }
    case_free(&c);
}

static void test_linear_forward_matches_reference(void **state)
{
    (void)state;
    check_forward(3, 5, 7, 1, 1);
    check_forward(2, 6, 3, 2, 1);
    check_forward(1, 3, 5, 3, 1);
}

static void test_linear_forward_without_bias_matches_reference(void **state)
{
    (void)state;
    check_forward(3, 5, 7, 4, 0);
    check_forward(2, 6, 3, 5, 0);
}

static void check_backward_fd(int B, int In, int Out, uint64_t seed)
{
    linear_case c;
    case_init(&c, B, In, Out, seed, 1);
    backward(&c, c.din, c.dweight, c.dbias);
    int n_bad = 0;
    n_bad += tu_check_grad("linear din", c.in, c.din, (size_t)B * In, loss_reference, &c, FD_H,
                           GRAD_ATOL, GRAD_RTOL);
    n_bad += tu_check_grad("linear dweight", c.weight, c.dweight, (size_t)Out * In,
                           loss_reference, &c, FD_H, GRAD_ATOL, GRAD_RTOL);
    n_bad += tu_check_grad("linear dbias", c.bias, c.dbias, (size_t)Out, loss_reference, &c, FD_H,
                           GRAD_ATOL, GRAD_RTOL);
    if (n_bad)
        fail_msg("linear backward B%d In%d Out%d: %d gradient elements off", B, In, Out, n_bad);
    case_free(&c);
}

static void test_linear_backward_matches_finite_differences(void **state)
{
    (void)state;
    check_backward_fd(3, 5, 7, 11);
    check_backward_fd(2, 6, 3, 12);
}

static void test_linear_backward_accumulates_into_gradients(void **state)
{
    (void)state;
    const int B = 3, In = 5, Out = 7;
    linear_case c;
    case_init(&c, B, In, Out, 21, 1);
    backward(&c, c.din, c.dweight, c.dbias); /* from zero: the gradient itself */
    const float prefill = -0.625f;
    float *din = tu_alloc((size_t)B * In), *dweight = tu_alloc((size_t)Out * In);
    float *dbias = tu_alloc((size_t)Out);
    for (int i = 0; i < B * In; i++)
        din[i] = prefill;
    for (int i = 0; i < Out * In; i++)
        dweight[i] = prefill;
    for (int i = 0; i < Out; i++)
        dbias[i] = prefill;
    for (int times = 1; times <= 2; times++) {
        backward(&c, din, dweight, dbias);
        tu_expect_accumulated("din", din, c.din, (size_t)B * In, prefill, times);
        tu_expect_accumulated("dweight", dweight, c.dweight, (size_t)Out * In, prefill, times);
        tu_expect_accumulated("dbias", dbias, c.dbias, (size_t)Out, prefill, times);
    }
    free(din);
    free(dweight);
    free(dbias);
    case_free(&c);
}

static void test_linear_backward_null_gradients_are_skipped(void **state)
{
    (void)state;
    const int B = 2, In = 6, Out = 3;
    linear_case c;
    case_init(&c, B, In, Out, 31, 1);
    backward(&c, c.din, c.dweight, c.dbias);
    float *din = tu_alloc((size_t)B * In), *dweight = tu_alloc((size_t)Out * In);
    float *dbias = tu_alloc((size_t)Out);
    backward(&c, din, NULL, NULL);
    backward(&c, NULL, dweight, NULL);
    backward(&c, NULL, NULL, dbias);
    backward(&c, NULL, NULL, NULL);
    size_t at;
    double d;
    if ((d = tu_max_abs_diff(din, c.din, (size_t)B * In, &at)) > 1e-6)
        fail_msg("din alone differs by %g at %zu", d, at);
    if ((d = tu_max_abs_diff(dweight, c.dweight, (size_t)Out * In, &at)) > 1e-6)
        fail_msg("dweight alone differs by %g at %zu", d, at);
    if ((d = tu_max_abs_diff(dbias, c.dbias, (size_t)Out, &at)) > 1e-6)
        fail_msg("dbias alone differs by %g at %zu", d, at);
    free(din);
    free(dweight);
    free(dbias);
    case_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_forward_matches_reference),
        cmocka_unit_test(test_linear_forward_without_bias_matches_reference),
        cmocka_unit_test(test_linear_backward_matches_finite_differences),
        cmocka_unit_test(test_linear_backward_accumulates_into_gradients),
        cmocka_unit_test(test_linear_backward_null_gradients_are_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
