/* test_ops_conv1x1.c: the pointwise (1x1, stride 1, no padding) convolution of
 * src/ops/conv1x1.c against loops in double and against conv2d's im2col + sgemm
 * path (forward, input gradient, weight and bias gradients), on position counts
 * below, at and past multiples of 16 (the padded tail), channel counts that are
 * not multiples of 16 and B > 1; beta semantics, NULL gradients, the scratch
 * size, identical bytes for 1, 2 and 3 threads, and that conv2d routes 1x1
 * shapes here. */
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ddpm/ops.h"
#include "testutil.h"

/* Tolerance, relative to the sum of |terms| of each output: every output is one
 * float chain of fused multiply-adds, whose error is at most K ulps of the sum
 * of |terms| (K <= 128 here, 6e-8 each: 8e-6) and in practice ~sqrt(K) ulps.
 * A missing or misplaced term changes an output by a whole term, ~1/K of the sum
 * of |terms| (> 7e-3 at these sizes). */
#define REL_TOL 8e-6
#define ABS_TOL 1e-6

#define CANARY 16

typedef struct {
    int B, Cin, HW, Cout;
} shape1;

/* HW below 16 (tail only), 16 (no tail), 33 and 49 (whole vectors and a tail),
 * the default model's 196 and 256 positions; channels not multiples of 16;
 * B below and above the 8 lanes; one output channel */
static const shape1 shapes[] = {
    {1, 3, 7, 17},    {3, 17, 33, 5},    {4, 16, 16, 16}, {9, 33, 49, 3},
    {2, 64, 196, 64}, {3, 96, 256, 32},  {2, 128, 9, 1},  {11, 5, 17, 40},
};
#define N_SHAPES (sizeof(shapes) / sizeof(shapes[0]))

typedef struct {
    shape1 s;
    size_t n_in, n_w, n_out, n_scratch;
    float *in, *w, *bias, *dout, *scratch;
    double *out_ref, *out_mag, *din_ref, *din_mag, *dw_ref, *dw_mag, *db_ref, *db_mag;
} case1;

static double *dalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p)
        abort();
    return p;
}

static void case_init(case1 *c, shape1 s, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    c->s = s;
    c->n_in = (size_t)s.B * s.Cin * s.HW;
    c->n_w = (size_t)s.Cout * s.Cin;
    c->n_out = (size_t)s.B * s.Cout * s.HW;
    c->n_scratch = ddpm_conv1x1_scratch_floats(s.B, s.Cin, s.HW, s.Cout);
    c->in = tu_alloc(c->n_in);
    c->w = tu_alloc(c->n_w);
    c->bias = tu_alloc((size_t)s.Cout);
    c->dout = tu_alloc(c->n_out);
    c->scratch = tu_alloc(c->n_scratch + CANARY);
    tu_fill_uniform(c->in, c->n_in, seed, -1.0f, 1.0f);
    tu_fill_uniform(c->w, c->n_w, seed + 1, -1.0f, 1.0f);
    tu_fill_uniform(c->bias, (size_t)s.Cout, seed + 2, -1.0f, 1.0f);
    tu_fill_uniform(c->dout, c->n_out, seed + 3, -1.0f, 1.0f);
    /* NaN garbage in the scratch: the op must not read what it did not write */
    for (size_t i = 0; i < c->n_scratch + CANARY; i++)
        c->scratch[i] = NAN;
}

static void case_reference(case1 *c)
{
    const shape1 s = c->s;
    c->out_ref = dalloc(c->n_out), c->out_mag = dalloc(c->n_out);
    c->din_ref = dalloc(c->n_in), c->din_mag = dalloc(c->n_in);
    c->dw_ref = dalloc(c->n_w), c->dw_mag = dalloc(c->n_w);
    c->db_ref = dalloc((size_t)s.Cout), c->db_mag = dalloc((size_t)s.Cout);
    for (int b = 0; b < s.B; b++)
        for (int co = 0; co < s.Cout; co++)
            for (int p = 0; p < s.HW; p++) {
                const size_t o = ((size_t)b * s.Cout + co) * s.HW + p;
                const double g = c->dout[o];
                double acc = c->bias[co], mag = fabs((double)c->bias[co]);
                c->db_ref[co] += g;
                c->db_mag[co] += fabs(g);
                for (int ci = 0; ci < s.Cin; ci++) {
                    const size_t i = ((size_t)b * s.Cin + ci) * s.HW + p;
                    const size_t k = (size_t)co * s.Cin + ci;
                    const double t = (double)c->w[k] * c->in[i];
                    acc += t;
                    mag += fabs(t);
                    c->din_ref[i] += (double)c->w[k] * g;
                    c->din_mag[i] += fabs((double)c->w[k] * g);
                    c->dw_ref[k] += g * c->in[i];
                    c->dw_mag[k] += fabs(g * c->in[i]);
                }
                c->out_ref[o] = acc;
                c->out_mag[o] = mag;
            }
}

static void case_free(case1 *c)
{
    free(c->in), free(c->w), free(c->bias), free(c->dout), free(c->scratch);
    free(c->out_ref), free(c->out_mag), free(c->din_ref), free(c->din_mag);
    free(c->dw_ref), free(c->dw_mag), free(c->db_ref), free(c->db_mag);
}

static void assert_canary_intact(const case1 *c)
{
    for (int i = 0; i < CANARY; i++)
        if (!isnan(c->scratch[c->n_scratch + i]))
            fail_msg("scratch overrun: float %d past ddpm_conv1x1_scratch_floats was written", i);
}

/* got[i] - offset[i] against ref[i] within ABS_TOL + REL_TOL * mag[i]. */
static void expect_close(const char *what, const shape1 *s, const float *got, const float *offset,
                         const double *ref, const double *mag, size_t n)
{
    size_t n_bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        const double g = (double)got[i] - (offset ? (double)offset[i] : 0.0);
        const double d = fabs(g - ref[i]), allowed = ABS_TOL + REL_TOL * mag[i];
        if (!(d <= allowed))
            n_bad++;
        if (!(d - allowed <= worst_excess)) {
            worst_excess = d - allowed;
            worst = i;
        }
    }
    if (n_bad) {
        fprintf(stderr, "%s (B %d Cin %d HW %d Cout %d): %zu of %zu off; worst [%zu] got %.9g want %.9g (|terms| %.4g)\n",
                what, s->B, s->Cin, s->HW, s->Cout, n_bad, n, worst, (double)got[worst], ref[worst], mag[worst]);
        fail_msg("%s differs from the double reference", what);
    }
}

static void forward1(case1 *c, float *out)
{
    const shape1 s = c->s;
    ddpm_conv1x1_forward(out, c->scratch, c->in, c->w, c->bias, s.B, s.Cin, s.HW, s.Cout);
}

static void backward1(case1 *c, float *din, float beta, float *dw, float *db)
{
    const shape1 s = c->s;
    ddpm_conv1x1_backward(din, beta, dw, db, c->scratch, c->dout, c->in, c->w, s.B, s.Cin, s.HW, s.Cout);
}

static void test_conv1x1_forward_matches_double_reference(void **state)
{
    (void)state;
    for (size_t k = 0; k < N_SHAPES; k++) {
        case1 c;
        case_init(&c, shapes[k], 100 + 10 * k);
        case_reference(&c);
        float *out = tu_alloc(c.n_out);
        for (size_t i = 0; i < c.n_out; i++)
            out[i] = NAN; /* forward overwrites */
        forward1(&c, out);
        assert_canary_intact(&c);
        expect_close("forward", &c.s, out, NULL, c.out_ref, c.out_mag, c.n_out);
        free(out);
        case_free(&c);
    }
}

/* beta = 0 overwrites din (NaN before), dweight and dbias accumulate onto their
 * nonzero prefill. */
static void test_conv1x1_backward_matches_double_reference(void **state)
{
    (void)state;
    for (size_t k = 0; k < N_SHAPES; k++) {
        case1 c;
        case_init(&c, shapes[k], 200 + 10 * k);
        case_reference(&c);
        float *din = tu_alloc(c.n_in), *dw = tu_alloc(c.n_w), *db = tu_alloc((size_t)c.s.Cout);
        float *dw0 = tu_alloc(c.n_w), *db0 = tu_alloc((size_t)c.s.Cout);
        for (size_t i = 0; i < c.n_in; i++)
            din[i] = NAN;
        tu_fill_uniform(dw0, c.n_w, 7, -1.0f, 1.0f);
        tu_fill_uniform(db0, (size_t)c.s.Cout, 8, -1.0f, 1.0f);
        memcpy(dw, dw0, c.n_w * sizeof(float));
        memcpy(db, db0, (size_t)c.s.Cout * sizeof(float));
        backward1(&c, din, 0.0f, dw, db);
        assert_canary_intact(&c);
        expect_close("din", &c.s, din, NULL, c.din_ref, c.din_mag, c.n_in);
        /* the prefill adds one rounding of |prefill| <= 1 */
        for (size_t i = 0; i < c.n_w; i++)
            c.dw_mag[i] += 1.0;
        for (int i = 0; i < c.s.Cout; i++)
            c.db_mag[i] += 1.0;
        expect_close("dweight", &c.s, dw, dw0, c.dw_ref, c.dw_mag, c.n_w);
        expect_close("dbias", &c.s, db, db0, c.db_ref, c.db_mag, (size_t)c.s.Cout);
        free(din), free(dw), free(db), free(dw0), free(db0);
        case_free(&c);
    }
}

/* conv2d with K = 1 runs this kernel (its output is the same bytes), and with
 * the fast paths off its im2col + sgemm path agrees within the tolerance. */
static void test_conv1x1_is_what_conv2d_runs_and_matches_its_im2col_path(void **state)
{
    (void)state;
    for (size_t k = 0; k < N_SHAPES; k++) {
        case1 c;
        case_init(&c, shapes[k], 300 + 10 * k);
        case_reference(&c); /* for the magnitudes */
        const shape1 s = c.s;
        const int H = 1, W = s.HW;
        float *scratch2 = tu_alloc(ddpm_conv2d_scratch_floats(s.B, s.Cin, H, W, s.Cout, 1, 1, 0));
        float *out = tu_alloc(c.n_out), *out1 = tu_alloc(c.n_out), *out2 = tu_alloc(c.n_out);
        float *din = tu_alloc(c.n_in), *din1 = tu_alloc(c.n_in), *din2 = tu_alloc(c.n_in);
        float *dw = tu_alloc(c.n_w), *dw1 = tu_alloc(c.n_w), *dw2 = tu_alloc(c.n_w);
        float *db = tu_alloc((size_t)s.Cout), *db1 = tu_alloc((size_t)s.Cout), *db2 = tu_alloc((size_t)s.Cout);
        forward1(&c, out);
        backward1(&c, din, 0.0f, dw, db);
        ddpm_conv2d_forward(out1, scratch2, c.in, c.w, c.bias, s.B, s.Cin, H, W, s.Cout, 1, 1, 0);
        ddpm_conv2d_backward(din1, 0.0f, dw1, db1, scratch2, c.dout, c.in, c.w, s.B, s.Cin, H, W, s.Cout, 1, 1, 0);
        if (strcmp(ddpm_conv3x3_isa(), "generic") != 0) {
            assert_memory_equal(out, out1, c.n_out * sizeof(float));
            assert_memory_equal(din, din1, c.n_in * sizeof(float));
            assert_memory_equal(dw, dw1, c.n_w * sizeof(float));
            assert_memory_equal(db, db1, (size_t)s.Cout * sizeof(float));
        }
        ddpm_conv2d_enable_winograd(0);
        ddpm_conv2d_forward(out2, scratch2, c.in, c.w, c.bias, s.B, s.Cin, H, W, s.Cout, 1, 1, 0);
        ddpm_conv2d_backward(din2, 0.0f, dw2, db2, scratch2, c.dout, c.in, c.w, s.B, s.Cin, H, W, s.Cout, 1, 1, 0);
        ddpm_conv2d_enable_winograd(1);
        const size_t n_max = c.n_in > c.n_out ? (c.n_in > c.n_w ? c.n_in : c.n_w) : (c.n_out > c.n_w ? c.n_out : c.n_w);
        double *ref = dalloc(n_max);
        for (size_t i = 0; i < c.n_out; i++)
            ref[i] = out2[i];
        expect_close("forward vs im2col", &s, out, NULL, ref, c.out_mag, c.n_out);
        for (size_t i = 0; i < c.n_in; i++)
            ref[i] = din2[i];
        expect_close("din vs im2col", &s, din, NULL, ref, c.din_mag, c.n_in);
        for (size_t i = 0; i < c.n_w; i++)
            ref[i] = dw2[i];
        expect_close("dweight vs im2col", &s, dw, NULL, ref, c.dw_mag, c.n_w);
        for (int i = 0; i < s.Cout; i++)
            ref[i] = db2[i];
        expect_close("dbias vs im2col", &s, db, NULL, ref, c.db_mag, (size_t)s.Cout);
        free(ref), free(scratch2);
        free(out), free(out1), free(out2), free(din), free(din1), free(din2);
        free(dw), free(dw1), free(dw2), free(db), free(db1), free(db2);
        case_free(&c);
    }
}

/* got[i] == prefill + times * g[i] up to the rounding of the chains: din's chain
 * of multiply-adds starts from beta * din, so its roundings are those of values
 * near prefill + times * g, not of g alone (REL_TOL of the sum of |terms| plus
 * |prefill|). An overwrite is off by the whole prefill. */
static void expect_accumulated(const char *what, const float *got, const float *g, const double *mag, size_t n,
                               float prefill, int times)
{
    for (size_t i = 0; i < n; i++) {
        const double want = (double)prefill + times * (double)g[i];
        const double allowed = ABS_TOL + REL_TOL * (times * mag[i] + fabs((double)prefill));
        if (!(fabs((double)got[i] - want) <= allowed))
            fail_msg("%s[%zu] = %.8g after %d backward calls on prefill %g, want %.8g (gradient %.8g)", what, i,
                     (double)got[i], times, (double)prefill, want, (double)g[i]);
    }
}

/* beta = 1 adds the input gradient onto din; beta = 0.5 scales what din held;
 * dweight and dbias accumulate; beta = 0 gives exactly the gradient. */
static void test_conv1x1_backward_beta_accumulates_or_overwrites(void **state)
{
    (void)state;
    const size_t picks[] = {1, 4};
    for (size_t p = 0; p < 2; p++) {
        case1 c;
        case_init(&c, shapes[picks[p]], 400 + p);
        case_reference(&c); /* for the magnitudes */
        const shape1 s = c.s;
        float *din = tu_alloc(c.n_in), *dw = tu_alloc(c.n_w), *db = tu_alloc((size_t)s.Cout);
        backward1(&c, din, 0.0f, dw, db);
        float *din2 = tu_alloc(c.n_in), *dw2 = tu_alloc(c.n_w), *db2 = tu_alloc((size_t)s.Cout);
        for (size_t i = 0; i < c.n_in; i++)
            din2[i] = 0.5f;
        for (size_t i = 0; i < c.n_w; i++)
            dw2[i] = 0.5f;
        for (int i = 0; i < s.Cout; i++)
            db2[i] = 0.5f;
        backward1(&c, din2, 1.0f, dw2, db2);
        backward1(&c, din2, 1.0f, dw2, db2);
        expect_accumulated("din", din2, din, c.din_mag, c.n_in, 0.5f, 2);
        expect_accumulated("dweight", dw2, dw, c.dw_mag, c.n_w, 0.5f, 2);
        expect_accumulated("dbias", db2, db, c.db_mag, (size_t)s.Cout, 0.5f, 2);
        for (size_t i = 0; i < c.n_in; i++)
            din2[i] = 4.0f;
        backward1(&c, din2, 0.5f, NULL, NULL);
        expect_accumulated("din with beta 0.5", din2, din, c.din_mag, c.n_in, 2.0f, 1);
        for (size_t i = 0; i < c.n_in; i++)
            din2[i] = NAN;
        backward1(&c, din2, 0.0f, NULL, NULL);
        if (memcmp(din2, din, c.n_in * sizeof(float)))
            fail_msg("beta 0 did not overwrite din exactly");
        assert_canary_intact(&c);
        free(din), free(dw), free(db), free(din2), free(dw2), free(db2);
        case_free(&c);
    }
}

/* Each gradient alone (the others NULL) is the same bytes as all three together. */
static void test_conv1x1_backward_null_gradients_are_skipped(void **state)
{
    (void)state;
    case1 c;
    case_init(&c, shapes[3], 500);
    const shape1 s = c.s;
    float *din = tu_alloc(c.n_in), *dw = tu_alloc(c.n_w), *db = tu_alloc((size_t)s.Cout);
    float *din1 = tu_alloc(c.n_in), *dw1 = tu_alloc(c.n_w), *db1 = tu_alloc((size_t)s.Cout);
    backward1(&c, din, 0.0f, dw, db);
    backward1(&c, din1, 0.0f, NULL, NULL);
    backward1(&c, NULL, 0.0f, dw1, NULL);
    backward1(&c, NULL, 0.0f, NULL, db1);
    backward1(&c, NULL, 0.0f, NULL, NULL);
    assert_canary_intact(&c);
    assert_memory_equal(din, din1, c.n_in * sizeof(float));
    assert_memory_equal(dw, dw1, c.n_w * sizeof(float));
    assert_memory_equal(db, db1, (size_t)s.Cout * sizeof(float));
    free(din), free(dw), free(db), free(din1), free(dw1), free(db1);
    case_free(&c);
}

/* The same bytes for 1, 2 and 3 threads: lanes depend on B only and are summed
 * in lane order. */
static void test_conv1x1_is_identical_for_one_two_and_three_threads(void **state)
{
    (void)state;
    const size_t picks[] = {3, 4, 7};
    const int saved = omp_get_max_threads();
    for (size_t p = 0; p < 3; p++) {
        case1 c;
        case_init(&c, shapes[picks[p]], 600 + p);
        const shape1 s = c.s;
        float *out[3], *din[3], *dw[3], *db[3];
        for (int t = 0; t < 3; t++) {
            omp_set_num_threads(t + 1);
            out[t] = tu_alloc(c.n_out), din[t] = tu_alloc(c.n_in), dw[t] = tu_alloc(c.n_w);
            db[t] = tu_alloc((size_t)s.Cout);
            forward1(&c, out[t]);
            backward1(&c, din[t], 0.0f, dw[t], db[t]);
        }
        omp_set_num_threads(saved);
        for (int t = 1; t < 3; t++) {
            assert_memory_equal(out[0], out[t], c.n_out * sizeof(float));
            assert_memory_equal(din[0], din[t], c.n_in * sizeof(float));
            assert_memory_equal(dw[0], dw[t], c.n_w * sizeof(float));
            assert_memory_equal(db[0], db[t], (size_t)s.Cout * sizeof(float));
        }
        for (int t = 0; t < 3; t++)
            free(out[t]), free(din[t]), free(dw[t]), free(db[t]);
        case_free(&c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv1x1_forward_matches_double_reference),
        cmocka_unit_test(test_conv1x1_backward_matches_double_reference),
        cmocka_unit_test(test_conv1x1_is_what_conv2d_runs_and_matches_its_im2col_path),
        cmocka_unit_test(test_conv1x1_backward_beta_accumulates_or_overwrites),
        cmocka_unit_test(test_conv1x1_backward_null_gradients_are_skipped),
        cmocka_unit_test(test_conv1x1_is_identical_for_one_two_and_three_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
