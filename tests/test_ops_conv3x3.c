/* test_ops_conv3x3.c: the Winograd 3x3 stride-1 convolution, with both output
 * tiles (F(2x2,3x3) and F(4x4,3x3), forced in turn), against direct convolution
 * loops in double and against conv2d's im2col path (forward, input gradient,
 * weight and bias gradients), on odd sizes, partial units and channel counts
 * that are not multiples of 16; accumulate/overwrite semantics (beta), NULL
 * gradients, the scratch size, and identical bytes for 1, 2 and 3 threads. */
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

/* Tolerance, relative to the sum of |terms| of each output (not to the output
 * itself, which can cancel to ~0): Winograd forms each output from transformed
 * values (sums of up to 6x6 inputs and 3x3 weights with factors up to 5 and 1/24),
 * multiplied, summed over channels and transformed back (factors up to 8): its
 * float rounding error is a few ulps times a constant times the sum of |terms|.
 * Measured worst over these shapes: F(2x2,3x3) 1.4e-7 forward, 2.1e-7 din, 1.4e-7
 * dweight; F(4x4,3x3) 2.2e-6, 2.9e-6, 1.2e-6. 2e-5 leaves a 7x margin for F(4x4).
 * A missing or misplaced tap changes an output by a whole term, ~1e-2 of the sum
 * of |terms| at these sizes. */
#define REL_TOL 2e-5
#define ABS_TOL 1e-6

#define CANARY 16

typedef struct {
    int B, Cin, H, W, Cout;
} shape3;

/* odd sizes, channels not multiples of 16, units that are partly filled (7x7:
 * 4 images per unit), and the default model's shapes */
static const shape3 shapes[] = {
    {1, 3, 5, 7, 17},    {3, 17, 13, 13, 33}, {9, 33, 7, 7, 3},  {2, 32, 28, 28, 32},
    {3, 64, 14, 14, 64}, {9, 64, 7, 7, 64},   {4, 16, 6, 9, 16},
};
#define N_SHAPES (sizeof(shapes) / sizeof(shapes[0]))

typedef struct {
    shape3 s;
    size_t n_in, n_w, n_out, n_scratch;
    float *in, *w, *bias, *dout, *scratch;
    /* references in double, with the sum of |terms| of each element */
    double *out_ref, *out_mag, *din_ref, *din_mag, *dw_ref, *dw_mag, *db_ref, *db_mag;
} case3;

static double *dalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p)
        abort();
    return p;
}

static void case_init(case3 *c, shape3 s, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    c->s = s;
    c->n_in = (size_t)s.B * s.Cin * s.H * s.W;
    c->n_w = (size_t)s.Cout * s.Cin * 9;
    c->n_out = (size_t)s.B * s.Cout * s.H * s.W;
    c->n_scratch = ddpm_conv3x3_scratch_floats(s.B, s.Cin, s.H, s.W, s.Cout);
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

/* Direct convolution and its gradients in double, with the sum of |terms|. */
static void case_reference(case3 *c)
{
    const shape3 s = c->s;
    const int H = s.H, W = s.W;
    c->out_ref = dalloc(c->n_out), c->out_mag = dalloc(c->n_out);
    c->din_ref = dalloc(c->n_in), c->din_mag = dalloc(c->n_in);
    c->dw_ref = dalloc(c->n_w), c->dw_mag = dalloc(c->n_w);
    c->db_ref = dalloc((size_t)s.Cout), c->db_mag = dalloc((size_t)s.Cout);
    for (int b = 0; b < s.B; b++)
        for (int co = 0; co < s.Cout; co++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    const size_t o = (((size_t)b * s.Cout + co) * H + y) * W + x;
                    const double g = c->dout[o];
                    double acc = c->bias[co], mag = fabs((double)c->bias[co]);
                    c->db_ref[co] += g;
                    c->db_mag[co] += fabs(g);
                    for (int ci = 0; ci < s.Cin; ci++)
                        for (int kh = 0; kh < 3; kh++)
                            for (int kw = 0; kw < 3; kw++) {
                                const int iy = y + kh - 1, ix = x + kw - 1;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                    continue;
                                const size_t i = (((size_t)b * s.Cin + ci) * H + iy) * W + ix;
                                const size_t k = (((size_t)co * s.Cin + ci) * 3 + kh) * 3 + kw;
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

static void case_free(case3 *c)
{
    free(c->in), free(c->w), free(c->bias), free(c->dout), free(c->scratch);
    free(c->out_ref), free(c->out_mag), free(c->din_ref), free(c->din_mag);
    free(c->dw_ref), free(c->dw_mag), free(c->db_ref), free(c->db_mag);
}

static void assert_canary_intact(const case3 *c)
{
    for (int i = 0; i < CANARY; i++)
        if (!isnan(c->scratch[c->n_scratch + i]))
            fail_msg("scratch overrun: float %d past ddpm_conv3x3_scratch_floats was written", i);
}

/* got[i] - offset[i] against ref[i] within ABS_TOL + REL_TOL * mag[i]; offset may
 * be NULL. Prints the worst element and the first values on failure. */
static void expect_close(const char *what, const shape3 *s, const float *got, const float *offset,
                         const double *ref, const double *mag, size_t n)
{
    size_t n_bad = 0, worst = 0;
    double worst_excess = -1.0, worst_rel = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double g = (double)got[i] - (offset ? (double)offset[i] : 0.0);
        const double d = fabs(g - ref[i]), allowed = ABS_TOL + REL_TOL * mag[i];
        if (!(d <= allowed))
            n_bad++;
        if (!(d - allowed <= worst_excess)) {
            worst_excess = d - allowed;
            worst = i;
        }
        if (mag[i] > 0 && d / mag[i] > worst_rel)
            worst_rel = d / mag[i];
    }
    if (n_bad) {
        fprintf(
            stderr,
            "%s (B %d Cin %d %dx%d Cout %d): %zu of %zu off; worst [%zu] got %.9g want %.9g (|terms| %.4g)\n",
            what, s->B, s->Cin, s->H, s->W, s->Cout, n_bad, n, worst, (double)got[worst], ref[worst],
            mag[worst]);
        for (size_t i = 0; i < n && i < 4; i++)
            fprintf(stderr, "  [%zu] got %.9g want %.9g\n", i, (double)got[i], ref[i]);
        fail_msg("%s differs from the double reference", what);
    }
    (void)worst_rel;
}

/* Runs body with F(2x2,3x3), then F(4x4,3x3), then back to the choice by shape. */
static void for_both_tiles(void (*body)(void))
{
    ddpm_conv3x3_force_tile(2);
    body();
    ddpm_conv3x3_force_tile(4);
    body();
    ddpm_conv3x3_force_tile(0);
}

/* The precision forward3 and backward3 run in: float32 but while a bf16
 * wrapper below runs the beta, NULL-gradient and thread-count tests again. */
static ddpm_precision precision3 = DDPM_PRECISION_FP32;

static void forward3(case3 *c, float *out)
{
    const shape3 s = c->s;
    if (precision3 == DDPM_PRECISION_FP32)
        ddpm_conv3x3_forward(out, c->scratch, c->in, c->w, c->bias, s.B, s.Cin, s.H, s.W, s.Cout);
    else
        ddpm_conv3x3_forward_precision(out, c->scratch, c->in, c->w, c->bias, s.B, s.Cin, s.H, s.W, s.Cout,
                                       precision3);
}

static void backward3(case3 *c, float *din, float beta, float *dw, float *db)
{
    const shape3 s = c->s;
    if (precision3 == DDPM_PRECISION_FP32)
        ddpm_conv3x3_backward(din, beta, dw, db, c->scratch, c->dout, c->in, c->w, s.B, s.Cin, s.H, s.W,
                              s.Cout);
    else
        ddpm_conv3x3_backward_precision(din, beta, dw, db, c->scratch, c->dout, c->in, c->w, s.B, s.Cin, s.H,
                                        s.W, s.Cout, precision3);
}

static void test_conv3x3_forward_matches_direct_convolution_tile(void)
{
    for (size_t k = 0; k < N_SHAPES; k++) {
        case3 c;
        case_init(&c, shapes[k], 100 + 10 * k);
        case_reference(&c);
        float *out = tu_alloc(c.n_out);
        for (size_t i = 0; i < c.n_out; i++)
            out[i] = 1e30f; /* forward overwrites */
        forward3(&c, out);
        assert_canary_intact(&c);
        expect_close("forward", &c.s, out, NULL, c.out_ref, c.out_mag, c.n_out);
        free(out);
        case_free(&c);
    }
}

static void test_conv3x3_forward_matches_direct_convolution(void **state)
{
    (void)state;
    for_both_tiles(test_conv3x3_forward_matches_direct_convolution_tile);
}

/* beta = 0 overwrites din (garbage before), dweight and dbias accumulate onto
 * their nonzero prefill. */
static void test_conv3x3_backward_matches_direct_convolution_tile(void)
{
    for (size_t k = 0; k < N_SHAPES; k++) {
        case3 c;
        case_init(&c, shapes[k], 200 + 10 * k);
        case_reference(&c);
        float *din = tu_alloc(c.n_in), *dw = tu_alloc(c.n_w), *db = tu_alloc((size_t)c.s.Cout);
        float *dw0 = tu_alloc(c.n_w), *db0 = tu_alloc((size_t)c.s.Cout);
        for (size_t i = 0; i < c.n_in; i++)
            din[i] = 1e30f;
        tu_fill_uniform(dw0, c.n_w, 7, -1.0f, 1.0f);
        tu_fill_uniform(db0, (size_t)c.s.Cout, 8, -1.0f, 1.0f);
        memcpy(dw, dw0, c.n_w * sizeof(float));
        memcpy(db, db0, (size_t)c.s.Cout * sizeof(float));
        backward3(&c, din, 0.0f, dw, db);
        assert_canary_intact(&c);
        expect_close("din", &c.s, din, NULL, c.din_ref, c.din_mag, c.n_in);
        /* the prefill adds one rounding of |prefill| <= 1: within ABS_TOL + its ulp */
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

static void test_conv3x3_backward_matches_direct_convolution(void **state)
{
    (void)state;
    for_both_tiles(test_conv3x3_backward_matches_direct_convolution_tile);
}

/* The im2col + sgemm path of conv2d and this kernel agree within the same
 * tolerance (both are within a few ulps of the sum of |terms|). */
static void test_conv3x3_matches_conv2d_im2col_path_tile(void)
{
    for (size_t k = 0; k < N_SHAPES; k++) {
        case3 c;
        case_init(&c, shapes[k], 300 + 10 * k);
        case_reference(&c); /* for the magnitudes */
        const shape3 s = c.s;
        float *scratch2 = tu_alloc(ddpm_conv2d_scratch_floats(s.B, s.Cin, s.H, s.W, s.Cout, 3, 1, 1));
        float *out = tu_alloc(c.n_out), *out2 = tu_alloc(c.n_out);
        float *din = tu_alloc(c.n_in), *din2 = tu_alloc(c.n_in);
        float *dw = tu_alloc(c.n_w), *dw2 = tu_alloc(c.n_w);
        float *db = tu_alloc((size_t)s.Cout), *db2 = tu_alloc((size_t)s.Cout);
        forward3(&c, out);
        backward3(&c, din, 0.0f, dw, db);
        ddpm_conv2d_enable_winograd(0); /* conv2d would run this very kernel */
        ddpm_conv2d_forward(out2, scratch2, c.in, c.w, c.bias, s.B, s.Cin, s.H, s.W, s.Cout, 3, 1, 1);
        ddpm_conv2d_backward(din2, 0.0f, dw2, db2, scratch2, c.dout, c.in, c.w, s.B, s.Cin, s.H, s.W, s.Cout,
                             3, 1, 1);
        ddpm_conv2d_enable_winograd(1);
        /* compare with the im2col result as the reference; its own error (a few ulps
         * of the sum of |terms|) is inside the tolerance's margin */
        double *ref = dalloc(c.n_in > c.n_out ? (c.n_in > c.n_w ? c.n_in : c.n_w)
                                              : (c.n_out > c.n_w ? c.n_out : c.n_w));
        for (size_t i = 0; i < c.n_out; i++)
            ref[i] = out2[i];
        expect_close("forward vs conv2d", &s, out, NULL, ref, c.out_mag, c.n_out);
        for (size_t i = 0; i < c.n_in; i++)
            ref[i] = din2[i];
        expect_close("din vs conv2d", &s, din, NULL, ref, c.din_mag, c.n_in);
        for (size_t i = 0; i < c.n_w; i++)
            ref[i] = dw2[i];
        expect_close("dweight vs conv2d", &s, dw, NULL, ref, c.dw_mag, c.n_w);
        for (int i = 0; i < s.Cout; i++)
            ref[i] = db2[i];
        expect_close("dbias vs conv2d", &s, db, NULL, ref, c.db_mag, (size_t)s.Cout);
        free(ref), free(scratch2), free(out), free(out2), free(din), free(din2);
        free(dw), free(dw2), free(db), free(db2);
        case_free(&c);
    }
}

static void test_conv3x3_matches_conv2d_im2col_path(void **state)
{
    (void)state;
    for_both_tiles(test_conv3x3_matches_conv2d_im2col_path_tile);
}

/* beta = 1 adds the input gradient onto what din held; dweight and dbias always
 * accumulate; beta = 0 gives exactly the gradient whatever din held. */
static void test_conv3x3_backward_beta_accumulates_or_overwrites_tile(void)
{
    const size_t picks[] = {1, 5};
    for (size_t p = 0; p < 2; p++) {
        case3 c;
        case_init(&c, shapes[picks[p]], 400 + p);
        const shape3 s = c.s;
        float *din = tu_alloc(c.n_in), *dw = tu_alloc(c.n_w), *db = tu_alloc((size_t)s.Cout);
        backward3(&c, din, 0.0f, dw, db); /* the gradient, from zero */
        float *din2 = tu_alloc(c.n_in), *dw2 = tu_alloc(c.n_w), *db2 = tu_alloc((size_t)s.Cout);
        for (size_t i = 0; i < c.n_in; i++)
            din2[i] = 0.5f;
        for (size_t i = 0; i < c.n_w; i++)
            dw2[i] = 0.5f;
        for (int i = 0; i < s.Cout; i++)
            db2[i] = 0.5f;
        backward3(&c, din2, 1.0f, dw2, db2);
        backward3(&c, din2, 1.0f, dw2, db2);
        tu_expect_accumulated("din", din2, din, c.n_in, 0.5f, 2);
        tu_expect_accumulated("dweight", dw2, dw, c.n_w, 0.5f, 2);
        tu_expect_accumulated("dbias", db2, db, (size_t)s.Cout, 0.5f, 2);
        for (size_t i = 0; i < c.n_in; i++)
            din2[i] = 1e30f;
        backward3(&c, din2, 0.0f, NULL, NULL);
        if (memcmp(din2, din, c.n_in * sizeof(float)))
            fail_msg("beta 0 did not overwrite din exactly");
        assert_canary_intact(&c);
        free(din), free(dw), free(db), free(din2), free(dw2), free(db2);
        case_free(&c);
    }
}

static void test_conv3x3_backward_beta_accumulates_or_overwrites(void **state)
{
    (void)state;
    for_both_tiles(test_conv3x3_backward_beta_accumulates_or_overwrites_tile);
}

/* Each gradient alone (the others NULL) is the same bytes as all three together. */
static void test_conv3x3_backward_null_gradients_are_skipped_tile(void)
{
    case3 c;
    case_init(&c, shapes[1], 500);
    const shape3 s = c.s;
    float *din = tu_alloc(c.n_in), *dw = tu_alloc(c.n_w), *db = tu_alloc((size_t)s.Cout);
    float *din1 = tu_alloc(c.n_in), *dw1 = tu_alloc(c.n_w), *db1 = tu_alloc((size_t)s.Cout);
    backward3(&c, din, 0.0f, dw, db);
    backward3(&c, din1, 0.0f, NULL, NULL);
    backward3(&c, NULL, 0.0f, dw1, NULL);
    backward3(&c, NULL, 0.0f, NULL, db1);
    backward3(&c, NULL, 0.0f, NULL, NULL);
    assert_canary_intact(&c);
    assert_memory_equal(din, din1, c.n_in * sizeof(float));
    assert_memory_equal(dw, dw1, c.n_w * sizeof(float));
    assert_memory_equal(db, db1, (size_t)s.Cout * sizeof(float));
    free(din), free(dw), free(db), free(din1), free(dw1), free(db1);
    case_free(&c);
}

static void test_conv3x3_backward_null_gradients_are_skipped(void **state)
{
    (void)state;
    for_both_tiles(test_conv3x3_backward_null_gradients_are_skipped_tile);
}

/* Forward and backward give the same bytes for 1, 2 and 3 threads: units and
 * lanes depend on the shapes only, and lanes are summed in lane order. */
static void test_conv3x3_is_identical_for_one_two_and_three_threads_tile(void)
{
    const size_t picks[] = {2, 3, 5};
    const int saved = omp_get_max_threads();
    for (size_t p = 0; p < 3; p++) {
        case3 c;
        case_init(&c, shapes[picks[p]], 600 + p);
        const shape3 s = c.s;
        float *out[3], *din[3], *dw[3], *db[3];
        for (int t = 0; t < 3; t++) {
            omp_set_num_threads(t + 1);
            out[t] = tu_alloc(c.n_out), din[t] = tu_alloc(c.n_in), dw[t] = tu_alloc(c.n_w);
            db[t] = tu_alloc((size_t)s.Cout);
            forward3(&c, out[t]);
            backward3(&c, din[t], 0.0f, dw[t], db[t]);
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

static void test_conv3x3_is_identical_for_one_two_and_three_threads(void **state)
{
    (void)state;
    for_both_tiles(test_conv3x3_is_identical_for_one_two_and_three_threads_tile);
}

/* The kernels are the ones this build asked for: an AVX2 build (-march=haswell,
 * tests/haswell_ops.sh) that fell back to the plain-C path would pass every test
 * above without testing the AVX2 code. */
static void test_conv3x3_runs_the_instruction_set_it_was_compiled_for(void **state)
{
    (void)state;
#if defined(__AVX512F__)
    const char *expected = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    const char *expected = "avx2";
#else
    const char *expected = "generic";
#endif
    assert_string_equal(ddpm_conv3x3_isa(), expected);
}

/* ---- the bf16 forward ------------------------------------------------------------
 * ddpm_conv3x3_forward_precision(..., DDPM_PRECISION_BF16) rounds the transformed
 * input V and weights U to bf16 before the products. Its error bound, derived
 * per output: each product U V of the transform domain becomes U~ V~ with
 * |U~ V~ - U V| <= (2u + u^2) |U| |V|, u = 2^-8 (bf16 has 8 significant bits,
 * round to nearest even); the float32 sum over Cin of those exact products adds
 * at most (Cin + 2) 2^-24 of the sum of |U| |V|; the output transform A^T . A
 * carries these errors with |A^T| . |A|. So
 *     |bf16 - fp32 Winograd| <= e |A^T| (sum_ci |U| |V|) |A|,  e = 2u + u^2 + (Cin + 2) 2^-24,
 * computed here in double from the same G, B^T, A^T (the test's own Winograd of
 * magnitudes), plus the float32 path's own tolerance (REL_TOL, ABS_TOL above)
 * against the double reference. Measured worst |bf16 - double reference| /
 * (e x bound) over these shapes, both tiles (2026-12-07): 0.34 for Cin 3, 0.06 to
 * 0.15 for 16 to 64 channels (the errors of a sum partly cancel). Crossing the
 * channels k and k + 1 of U's pairs fails it. */
#define BF16_U 0.00390625 /* 2^-8 */

static const double BT2[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
static const double AT2[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
static const double G2t[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double BT4[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                 {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const double AT4[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
static const double G4t[6][3] = {{1.0 / 4, 0, 0},
                                 {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                 {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                 {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                 {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                 {0, 0, 1}};

/* Vmag[ci][xi] = |B^T d B| of input tile (ty, tx) of image b, every channel, in
 * double (BT the tile's B^T, alpha = m + 2). */
static void input_tile_magnitudes(const case3 *c, int m, double BT[6][6], int b, int ty, int tx, double *Vmag)
{
    const shape3 s = c->s;
    const int a = m + 2;
    for (int ci = 0; ci < s.Cin; ci++) {
        double d[6][6], t[6][6];
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++) {
                const int y = m * ty - 1 + i, x = m * tx - 1 + j;
                d[i][j] = y < 0 || y >= s.H || x < 0 || x >= s.W
                              ? 0.0
                              : c->in[(((size_t)b * s.Cin + ci) * s.H + y) * s.W + x];
            }
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++) {
                double sum = 0.0;
                for (int k = 0; k < a; k++)
                    sum += BT[i][k] * d[k][j];
                t[i][j] = sum;
            }
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++) {
                double sum = 0.0;
                for (int k = 0; k < a; k++)
                    sum += t[i][k] * BT[j][k];
                Vmag[(size_t)ci * 36 + i * a + j] = fabs(sum);
            }
    }
}

/* bound[o] = |A^T| (sum_ci |U| |V|) |A| for every output o of the case, with the
 * F(m x m, 3x3) tiles of ddpm_conv3x3 (tile (ty, tx) reads rows m ty - 1 ..). */
static double *bf16_bound(const case3 *c, int m)
{
    const shape3 s = c->s;
    const int a = m + 2, TH = (s.H + m - 1) / m, TW = (s.W + m - 1) / m;
    double BT[6][6], AT[4][6], G[6][3];
    for (int i = 0; i < a; i++) {
        for (int j = 0; j < a; j++)
            BT[i][j] = m == 2 ? BT2[i][j] : BT4[i][j];
        for (int j = 0; j < 3; j++)
            G[i][j] = m == 2 ? G2t[i][j] : G4t[i][j];
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < a; j++)
            AT[i][j] = fabs(m == 2 ? AT2[i][j] : AT4[i][j]);
    double *Umag = dalloc((size_t)s.Cout * s.Cin * 36), *Vmag = dalloc((size_t)s.Cin * 36);
    double *bound = dalloc(c->n_out);
    for (int co = 0; co < s.Cout; co++)
        for (int ci = 0; ci < s.Cin; ci++) {
            const float *w = c->w + ((size_t)co * s.Cin + ci) * 9;
            double t[6][3];
            for (int i = 0; i < a; i++)
                for (int j = 0; j < 3; j++)
                    t[i][j] = G[i][0] * w[j] + G[i][1] * w[3 + j] + G[i][2] * w[6 + j];
            for (int i = 0; i < a; i++)
                for (int j = 0; j < a; j++)
                    Umag[((size_t)co * s.Cin + ci) * 36 + i * a + j] =
                        fabs(t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2]);
        }
    for (int b = 0; b < s.B; b++)
        for (int ty = 0; ty < TH; ty++)
            for (int tx = 0; tx < TW; tx++) {
                input_tile_magnitudes(c, m, BT, b, ty, tx, Vmag);
                for (int co = 0; co < s.Cout; co++) {
                    double M[36] = {0};
                    for (int ci = 0; ci < s.Cin; ci++)
                        for (int xi = 0; xi < a * a; xi++)
                            M[xi] += Umag[((size_t)co * s.Cin + ci) * 36 + xi] * Vmag[(size_t)ci * 36 + xi];
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < m; j++) {
                            const int y = m * ty + i, x = m * tx + j;
                            if (y >= s.H || x >= s.W)
                                continue;
                            double sum = 0.0;
                            for (int p = 0; p < a; p++)
                                for (int q = 0; q < a; q++)
                                    sum += AT[i][p] * M[p * a + q] * AT[j][q];
                            bound[(((size_t)b * s.Cout + co) * s.H + y) * s.W + x] = sum;
                        }
                }
            }
    free(Umag), free(Vmag);
    return bound;
}

static void forward3_bf16(case3 *c, float *out)
{
    const shape3 s = c->s;
    ddpm_conv3x3_forward_precision(out, c->scratch, c->in, c->w, c->bias, s.B, s.Cin, s.H, s.W, s.Cout,
                                   DDPM_PRECISION_BF16);
}

static int bf16_tile; /* the tile forced for the _tile bodies below */

static void for_both_tiles_bf16(void (*body)(void))
{
    for (int m = 2; m <= 4; m += 2) {
        bf16_tile = m;
        ddpm_conv3x3_force_tile(m);
        body();
    }
    ddpm_conv3x3_force_tile(0);
}

/* Within the bf16 bound (see above) of the double reference and of the float32
 * forward, on every shape (odd sizes, B > 1, channels not multiples of 16), and
 * not the float32 bytes. Where the build or CPU has no AVX512_BF16 the call is
 * documented to be the float32 forward: then its bytes are exactly those. */
static void test_conv3x3_bf16_forward_is_within_bf16_rounding_tile(void)
{
    for (size_t k = 0; k < N_SHAPES; k++) {
        case3 c;
        case_init(&c, shapes[k], 700 + 10 * k);
        float *out = tu_alloc(c.n_out), *out32 = tu_alloc(c.n_out);
        for (size_t i = 0; i < c.n_out; i++)
            out[i] = 1e30f; /* forward overwrites */
        forward3(&c, out32);
        forward3_bf16(&c, out);
        assert_canary_intact(&c);
        if (!ddpm_bf16_available()) {
            assert_memory_equal(out, out32, c.n_out * sizeof(float));
            free(out), free(out32);
            case_free(&c);
            continue;
        }
        case_reference(&c);
        double *bound = bf16_bound(&c, bf16_tile);
        const double e = 2 * BF16_U + BF16_U * BF16_U + (c.s.Cin + 2) * ldexp(1.0, -24);
        /* against the double reference: the float32 tolerance on the sum of |terms|, plus e x bound */
        double *mag = dalloc(c.n_out), *ref32 = dalloc(c.n_out), *mag32 = dalloc(c.n_out);
        for (size_t i = 0; i < c.n_out; i++) {
            /* expect_close allows ABS_TOL + REL_TOL * mag: fold e x bound into mag */
            mag[i] = c.out_mag[i] + e * bound[i] / REL_TOL;
            ref32[i] = out32[i];
            mag32[i] = 2 * c.out_mag[i] + e * bound[i] / REL_TOL + ABS_TOL / REL_TOL;
        }
        expect_close("bf16 forward", &c.s, out, NULL, c.out_ref, mag, c.n_out);
        expect_close("bf16 forward vs fp32", &c.s, out, NULL, ref32, mag32, c.n_out);
        if (c.s.Cin > 1 && !memcmp(out, out32, c.n_out * sizeof(float)))
            fail_msg("the bf16 forward gave the float32 bytes (B %d Cin %d %dx%d Cout %d)", c.s.B, c.s.Cin,
                     c.s.H, c.s.W, c.s.Cout);
        free(bound), free(mag), free(ref32), free(mag32), free(out), free(out32);
        case_free(&c);
    }
}

static void test_conv3x3_bf16_forward_is_within_bf16_rounding(void **state)
{
    (void)state;
    for_both_tiles_bf16(test_conv3x3_bf16_forward_is_within_bf16_rounding_tile);
}

/* The bf16 forward gives the same bytes for 1, 2 and 3 threads. */
static void test_conv3x3_bf16_forward_is_identical_for_one_two_and_three_threads_tile(void)
{
    const size_t picks[] = {1, 3, 5};
    const int saved = omp_get_max_threads();
    for (size_t p = 0; p < 3; p++) {
        case3 c;
        case_init(&c, shapes[picks[p]], 800 + p);
        float *out[3];
        for (int t = 0; t < 3; t++) {
            omp_set_num_threads(t + 1);
            out[t] = tu_alloc(c.n_out);
            forward3_bf16(&c, out[t]);
        }
        omp_set_num_threads(saved);
        for (int t = 1; t < 3; t++)
            assert_memory_equal(out[0], out[t], c.n_out * sizeof(float));
        for (int t = 0; t < 3; t++)
            free(out[t]);
        case_free(&c);
    }
}

static void test_conv3x3_bf16_forward_is_identical_for_one_two_and_three_threads(void **state)
{
    (void)state;
    for_both_tiles_bf16(test_conv3x3_bf16_forward_is_identical_for_one_two_and_three_threads_tile);
}

/* ---- the bf16 backward -----------------------------------------------------------
 * ddpm_conv3x3_backward_precision(..., DDPM_PRECISION_BF16). din is the bf16
 * forward's chain run on dout with the filters rotated by 180 degrees and Cin,
 * Cout swapped, so its bound is bf16_bound of that forward (a case whose input
 * is dout and whose weights are the rotated ones). dweight = G^T dU G with
 * dU[xi][ci][co] = sum over tiles of V[xi][ci] M[xi][co], whose inputs are
 * rounded to bf16: each product is off by at most (2u + u^2) |V| |M| and the
 * float32 sum over the tiles (nt per unit) adds (nt + 2) 2^-24 of sum |V| |M|,
 * carried to dweight by |G^T| . |G|:
 *     |bf16 - fp32| <= e sum_xi |G[i][kh]| |G[j][kw]| sum_t |V_t[xi][ci]| |M_t[xi][co]|,
 * with M = A^T-transpose dy A^T of each output tile (the transpose of the
 * forward's output transform), in double here. Measured worst |bf16 - double
 * reference| / (e x bound) over these shapes, both tiles (2026-12-07): din 0.06
 * to 0.31, dweight 0.04 to 0.24. Pairing tile t of V with tile t + 1 of M, or
 * dropping an odd unit's last tile, fails it. */

/* the weights of din's forward: w'[ci][co][kh][kw] = w[co][ci][2 - kh][2 - kw] */
static float *rotated_weights(const case3 *c)
{
    const shape3 s = c->s;
    float *r = tu_alloc(c->n_w);
    for (int co = 0; co < s.Cout; co++)
        for (int ci = 0; ci < s.Cin; ci++)
            for (int k = 0; k < 9; k++)
                r[((size_t)ci * s.Cout + co) * 9 + k] = c->w[((size_t)co * s.Cin + ci) * 9 + 8 - k];
    return r;
}

/* bound[(co ci kh kw)] = sum_xi |G[i][kh]| |G[j][kw]| sum_t |V_t[xi][ci]| |M_t[xi][co]|
 * (see above) for the F(m x m, 3x3) tiles of ddpm_conv3x3. */
static double *bf16_dw_bound(const case3 *c, int m)
{
    const shape3 s = c->s;
    const int a = m + 2, TH = (s.H + m - 1) / m, TW = (s.W + m - 1) / m;
    double BT[6][6], AT[4][6], G[6][3];
    for (int i = 0; i < a; i++) {
        for (int j = 0; j < a; j++)
            BT[i][j] = m == 2 ? BT2[i][j] : BT4[i][j];
        for (int j = 0; j < 3; j++)
            G[i][j] = fabs(m == 2 ? G2t[i][j] : G4t[i][j]);
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < a; j++)
            AT[i][j] = m == 2 ? AT2[i][j] : AT4[i][j];
    double *S = dalloc((size_t)s.Cout * s.Cin * 36);
    double *Vmag = dalloc((size_t)s.Cin * 36), *Mmag = dalloc((size_t)s.Cout * 36);
    for (int b = 0; b < s.B; b++)
        for (int ty = 0; ty < TH; ty++)
            for (int tx = 0; tx < TW; tx++) {
                input_tile_magnitudes(c, m, BT, b, ty, tx, Vmag);
                for (int co = 0; co < s.Cout; co++) {
                    double dy[4][4];
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < m; j++) {
                            const int y = m * ty + i, x = m * tx + j;
                            dy[i][j] = y >= s.H || x >= s.W
                                           ? 0.0
                                           : c->dout[(((size_t)b * s.Cout + co) * s.H + y) * s.W + x];
                        }
                    for (int p = 0; p < a; p++)
                        for (int q = 0; q < a; q++) {
                            double sum = 0.0;
                            for (int i = 0; i < m; i++)
                                for (int j = 0; j < m; j++)
                                    sum += AT[i][p] * dy[i][j] * AT[j][q];
                            Mmag[(size_t)co * 36 + p * a + q] = fabs(sum);
                        }
                }
                for (int co = 0; co < s.Cout; co++)
                    for (int ci = 0; ci < s.Cin; ci++)
                        for (int xi = 0; xi < a * a; xi++)
                            S[((size_t)co * s.Cin + ci) * 36 + xi] +=
                                Vmag[(size_t)ci * 36 + xi] * Mmag[(size_t)co * 36 + xi];
            }
    double *bound = dalloc(c->n_w);
    for (int co = 0; co < s.Cout; co++)
        for (int ci = 0; ci < s.Cin; ci++)
            for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++) {
                    double sum = 0.0;
                    for (int i = 0; i < a; i++)
                        for (int j = 0; j < a; j++)
                            sum += G[i][kh] * G[j][kw] * S[((size_t)co * s.Cin + ci) * 36 + i * a + j];
                    bound[((size_t)co * s.Cin + ci) * 9 + kh * 3 + kw] = sum;
                }
    free(S), free(Vmag), free(Mmag);
    return bound;
}

static void backward3_bf16(case3 *c, float *din, float beta, float *dw, float *db)
{
    const shape3 s = c->s;
    ddpm_conv3x3_backward_precision(din, beta, dw, db, c->scratch, c->dout, c->in, c->w, s.B, s.Cin, s.H, s.W,
                                    s.Cout, DDPM_PRECISION_BF16);
}

/* din (beta 0 over garbage; beta 1 onto a prefill for one shape), dweight and
 * dbias (onto a prefill) within the bounds above of the double reference, and
 * not the float32 bytes; the float32 backward's bytes where bf16 is not
 * available. */
static void test_conv3x3_bf16_backward_is_within_bf16_rounding_tile(void)
{
    for (size_t k = 0; k < N_SHAPES; k++) {
        case3 c;
        case_init(&c, shapes[k], 900 + 10 * k);
        const shape3 s = c.s;
        const float beta = k == 1 ? 1.0f : 0.0f;
        float *din = tu_alloc(c.n_in), *dw = tu_alloc(c.n_w), *db = tu_alloc((size_t)s.Cout);
        float *din0 = tu_alloc(c.n_in), *dw0 = tu_alloc(c.n_w), *db0 = tu_alloc((size_t)s.Cout);
        float *din32 = tu_alloc(c.n_in), *dw32 = tu_alloc(c.n_w), *db32 = tu_alloc((size_t)s.Cout);
        if (beta == 0.0f)
            for (size_t i = 0; i < c.n_in; i++)
                din0[i] = 1e30f;
        else
            tu_fill_uniform(din0, c.n_in, 5, -1.0f, 1.0f);
        tu_fill_uniform(dw0, c.n_w, 7, -1.0f, 1.0f);
        tu_fill_uniform(db0, (size_t)s.Cout, 8, -1.0f, 1.0f);
        memcpy(din, din0, c.n_in * sizeof(float)), memcpy(din32, din0, c.n_in * sizeof(float));
        memcpy(dw, dw0, c.n_w * sizeof(float)), memcpy(dw32, dw0, c.n_w * sizeof(float));
        memcpy(db, db0, (size_t)s.Cout * sizeof(float)), memcpy(db32, db0, (size_t)s.Cout * sizeof(float));
        backward3(&c, din32, beta, dw32, db32);
        backward3_bf16(&c, din, beta, dw, db);
        assert_canary_intact(&c);
        if (!ddpm_bf16_available()) {
            assert_memory_equal(din, din32, c.n_in * sizeof(float));
            assert_memory_equal(dw, dw32, c.n_w * sizeof(float));
            assert_memory_equal(db, db32, (size_t)s.Cout * sizeof(float));
        } else {
            case_reference(&c);
            /* din: the bound of its forward, on dout with the rotated weights */
            case3 t = c;
            t.s = (shape3){s.B, s.Cout, s.H, s.W, s.Cin};
            t.in = c.dout;
            t.w = rotated_weights(&c);
            t.n_out = c.n_in;
            double *bound = bf16_bound(&t, bf16_tile);
            const double e_in = 2 * BF16_U + BF16_U * BF16_U + (s.Cout + 2) * ldexp(1.0, -24);
            for (size_t i = 0; i < c.n_in; i++)
                c.din_mag[i] += e_in * bound[i] / REL_TOL + (beta != 0.0f ? 1.0 : 0.0);
            expect_close("bf16 din", &s, din, beta != 0.0f ? din0 : NULL, c.din_ref, c.din_mag, c.n_in);
            free(bound), free(t.w);
            /* dweight: e x the bound above, the prefill's rounding as the float32 test */
            bound = bf16_dw_bound(&c, bf16_tile);
            const long tiles =
                (long)((s.H + bf16_tile - 1) / bf16_tile) * ((s.W + bf16_tile - 1) / bf16_tile);
            const double e_w = 2 * BF16_U + BF16_U * BF16_U + (s.B * tiles + 2) * ldexp(1.0, -24);
            for (size_t i = 0; i < c.n_w; i++)
                c.dw_mag[i] += 1.0 + e_w * bound[i] / REL_TOL;
            expect_close("bf16 dweight", &s, dw, dw0, c.dw_ref, c.dw_mag, c.n_w);
            free(bound);
            /* dbias sums dout in float32 on both paths */
            assert_memory_equal(db, db32, (size_t)s.Cout * sizeof(float));
            if (s.Cin > 1 && s.Cout > 1 &&
                (!memcmp(din, din32, c.n_in * sizeof(float)) || !memcmp(dw, dw32, c.n_w * sizeof(float))))
                fail_msg("the bf16 backward gave the float32 bytes (B %d Cin %d %dx%d Cout %d)", s.B, s.Cin,
                         s.H, s.W, s.Cout);
        }
        free(din), free(dw), free(db), free(din0), free(dw0), free(db0), free(din32), free(dw32), free(db32);
        case_free(&c);
    }
}

static void test_conv3x3_bf16_backward_is_within_bf16_rounding(void **state)
{
    (void)state;
    for_both_tiles_bf16(test_conv3x3_bf16_backward_is_within_bf16_rounding_tile);
}

/* The beta, NULL-gradient and thread-count tests above, with the bf16
 * products (forward and backward): accumulate or overwrite, each gradient alone
 * the bytes of all together, the same bytes for 1, 2 and 3 threads. */
static void test_conv3x3_bf16_beta_null_gradients_and_threads(void **state)
{
    (void)state;
    precision3 = DDPM_PRECISION_BF16;
    for_both_tiles(test_conv3x3_backward_beta_accumulates_or_overwrites_tile);
    for_both_tiles(test_conv3x3_backward_null_gradients_are_skipped_tile);
    for_both_tiles(test_conv3x3_is_identical_for_one_two_and_three_threads_tile);
    precision3 = DDPM_PRECISION_FP32;
}

/* ddpm_bf16_available says what the build has: 0 without __AVX512BF16__ (the
 * -march=haswell build of tests/haswell_ops.sh), else what the CPU says. */
static void test_bf16_available_matches_the_build(void **state)
{
    (void)state;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    assert_int_equal(ddpm_bf16_available(), __builtin_cpu_supports("avx512bf16") != 0);
#else
    assert_int_equal(ddpm_bf16_available(), 0);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv3x3_forward_matches_direct_convolution),
        cmocka_unit_test(test_conv3x3_backward_matches_direct_convolution),
        cmocka_unit_test(test_conv3x3_matches_conv2d_im2col_path),
        cmocka_unit_test(test_conv3x3_backward_beta_accumulates_or_overwrites),
        cmocka_unit_test(test_conv3x3_backward_null_gradients_are_skipped),
        cmocka_unit_test(test_conv3x3_is_identical_for_one_two_and_three_threads),
        cmocka_unit_test(test_conv3x3_runs_the_instruction_set_it_was_compiled_for),
        cmocka_unit_test(test_conv3x3_bf16_forward_is_within_bf16_rounding),
        cmocka_unit_test(test_conv3x3_bf16_forward_is_identical_for_one_two_and_three_threads),
        cmocka_unit_test(test_conv3x3_bf16_backward_is_within_bf16_rounding),
        cmocka_unit_test(test_conv3x3_bf16_beta_null_gradients_and_threads),
        cmocka_unit_test(test_bf16_available_matches_the_build),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
