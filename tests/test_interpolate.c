/* Tests of interpolation: slerp and lerp keep their ends exactly and slerp keeps
 * the norm; a seed strip starts and ends on the samples of its seeds (on a stub
 * eps and, through the binary, on a tiny trained model byte for byte); an image
 * strip decodes the noised pixel blend from step t. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <stb_image.h>

#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/interpolate.h"
#include "ddpm/recipe.h"
#include "ddpm/rng.h"
#include "ddpm/sha256.h"
#include "testutil.h"

static void test_slerp_and_lerp_keep_their_ends_and_slerp_the_norm(void **state)
{
    (void)state;
    enum { D = 4099 };
    float *a = tu_alloc(D), *b = tu_alloc(D), *m = tu_alloc(D);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 5, 1);
    ddpm_rng_normal_fill(&rng, a, D);
    ddpm_rng_normal_fill(&rng, b, D);
    ddpm_slerp(m, a, b, D, 0.0);
    assert_memory_equal(m, a, D * sizeof(float));
    ddpm_slerp(m, a, b, D, 1.0);
    assert_memory_equal(m, b, D * sizeof(float));
    ddpm_lerp(m, a, b, D, 0.0);
    assert_memory_equal(m, a, D * sizeof(float));
    ddpm_lerp(m, a, b, D, 1.0);
    assert_memory_equal(m, b, D * sizeof(float));
    /* two independent N(0, I) draws are nearly orthogonal with norms near sqrt(D):
       the slerp midpoint keeps that norm, the lerp midpoint shrinks it by ~1/sqrt(2) */
    double na = 0, nb = 0, ns = 0, nl = 0;
    for (int d = 0; d < D; d++)
        na += (double)a[d] * a[d], nb += (double)b[d] * b[d];
    ddpm_slerp(m, a, b, D, 0.5);
    for (int d = 0; d < D; d++)
        ns += (double)m[d] * m[d];
    ddpm_lerp(m, a, b, D, 0.5);
    for (int d = 0; d < D; d++)
        nl += (double)m[d] * m[d];
    double mean_norm = 0.5 * (sqrt(na) + sqrt(nb));
    /* on the arc between a and b the norm stays between the two norms (to float rounding) */
    assert_true(sqrt(ns) >= fmin(sqrt(na), sqrt(nb)) - 1e-3 && sqrt(ns) <= fmax(sqrt(na), sqrt(nb)) + 1e-3);
    assert_true(sqrt(nl) < 0.8 * mean_norm);
    ddpm_slerp(m, a, a, D, 0.5); /* identical ends: no NaN from sin(0)/sin(0) */
    for (int d = 0; d < D; d++)
        assert_true(m[d] == a[d]);
    free(a);
    free(b);
    free(m);
}

/* A stand-in for the network: eps = 0.3 x_t + 0.01 i (any smooth map will do). */
static void stub_eps(void *ctx, float *eps, const float *x_t, const double *i, const int *y, int B)
{
    (void)y;
    size_t D = *(size_t *)ctx;
    for (int b = 0; b < B; b++)
        for (size_t d = 0; d < D; d++)
            eps[(size_t)b * D + d] = 0.3f * x_t[(size_t)b * D + d] + 0.01f * (float)i[b];
}

static void test_seed_strip_ends_are_the_samples_of_the_two_seeds(void **state)
{
    (void)state;
    size_t D = 3 * 5 * 5;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 40, 1e-4, 0.02), 0);
    ddpm_interpolate_config ic;
    ddpm_interpolate_config_default(&ic);
    ic.n = 6;
    ic.steps = 7;
    ic.batch = 4; /* the ends fall in batches of 4 and 2 */
    float *strip = tu_alloc(ic.n * D), *one = tu_alloc(D);
    ddpm_model m;
    tu_stub_model(&m, 3, 5, DDPM_PRED_EPS, 0, &s, stub_eps, &D);
    assert_int_equal(ddpm_interpolate_seeds(&m, strip, 11, 12, &ic), 0);
    ddpm_sampler_config sc;
    ddpm_interpolate_sampler(&sc, &ic);
    assert_true(sc.kind == DDPM_SAMPLER_DDIM && sc.eta == 0.0f && sc.steps == 7);
    const uint64_t seeds[2] = {11, 12};
    for (int e = 0; e < 2; e++) {
        ddpm_rng rng;
        ddpm_rng_init(&rng, seeds[e], DDPM_STREAM_SAMPLE);
        assert_int_equal(ddpm_sample(&m, &sc, NULL, one, 1, 0, &rng, NULL), 0);
        assert_memory_equal(strip + (size_t)(e ? ic.n - 1 : 0) * D, one, D * sizeof(float));
    }
    /* the inside differs from both ends */
    assert_true(memcmp(strip + D, strip, D * sizeof(float)) != 0);
    assert_true(memcmp(strip + D, strip + (size_t)(ic.n - 1) * D, D * sizeof(float)) != 0);
    /* bad configs are refused with a message */
    ic.steps = 41;
    assert_true(ddpm_interpolate_seeds(&m, strip, 11, 12, &ic) < 0);
    ic.steps = 7;
    ic.n = 1;
    assert_true(ddpm_interpolate_seeds(&m, strip, 11, 12, &ic) < 0);
    free(strip);
    free(one);
    ddpm_model_close(&m);
    ddpm_schedule_free(&s);
}

/* An oracle network that knows the clean image of each strip position (the pixel
 * blend of the two ends): eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar). It also
 * records the highest step index it was asked about. */
typedef struct {
    const ddpm_schedule *s;
    const float *a, *b;
    size_t D;
    int n, max_i;
} oracle_ctx;

static void oracle_eps(void *opaque, float *eps, const float *x_t, const double *t, const int *y, int B)
{
    (void)y;
    oracle_ctx *o = opaque;
    assert_int_equal(B, o->n); /* one batch: position b is strip image b */
    for (int b = 0; b < B; b++) {
        int i = (int)t[b];
        assert_true(i == t[b]); /* DDIM evaluates at trained steps */
        double l = (double)b / (o->n - 1), ra = o->s->sqrt_abar[i], rb = o->s->sqrt_one_minus_abar[i];
        if (i > o->max_i)
            o->max_i = i;
        for (size_t d = 0; d < o->D; d++) {
            double x0 = (1 - l) * o->a[d] + l * o->b[d];
            eps[(size_t)b * o->D + d] = (float)((x_t[(size_t)b * o->D + d] - ra * x0) / rb);
        }
    }
}

static void test_image_strip_decodes_the_noised_pixel_blend_from_step_t(void **state)
{
    (void)state;
    size_t D = 2 * 6 * 6;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 100, 1e-4, 0.02), 0);
    float *a = tu_alloc(D), *b = tu_alloc(D);
    tu_fill_uniform(a, D, 1, -0.9f, 0.9f);
    tu_fill_uniform(b, D, 2, -0.9f, 0.9f);
    ddpm_interpolate_config ic;
    ddpm_interpolate_config_default(&ic);
    ic.n = 5;
    ic.steps = 10;
    float *strip = tu_alloc(ic.n * D);
    oracle_ctx o = {&s, a, b, D, ic.n, -1};
    ddpm_model m;
    tu_stub_model(&m, 2, 6, DDPM_PRED_EPS, 0, &s, oracle_eps, &o);
    const int t = 60;
    assert_int_equal(ddpm_interpolate_images(&m, strip, a, b, t, 3, &ic), 0);
    assert_int_equal(o.max_i, t - 1); /* decoding starts at the paper's t, index t - 1 */
    /* the latents are the linear blend of two latents with the same noise, i.e. the
       noised pixel blend, so the oracle's decode returns the pixel blend; float
       rounding through 10 steps of x / sqrt(abar) stays below 1e-4 */
    for (int k = 0; k < ic.n; k++) {
        double l = (double)k / (ic.n - 1), worst = 0;
        for (size_t d = 0; d < D; d++)
            worst = fmax(worst, fabs(strip[(size_t)k * D + d] - ((1 - l) * a[d] + l * b[d])));
        if (worst > 1e-4)
            fprintf(stderr, "strip image %d is %.3g off the pixel blend\n", k, worst);
        assert_true(worst <= 1e-4);
    }
    assert_true(ddpm_interpolate_images(&m, strip, a, b, 101, 3, &ic) < 0);
    ic.steps = 61; /* more DDIM steps than t */
    assert_true(ddpm_interpolate_images(&m, strip, a, b, t, 3, &ic) < 0);
    free(a);
    free(b);
    free(strip);
    ddpm_model_close(&m);
    ddpm_schedule_free(&s);
}

/* The same strip decoded with a deterministic solver of the sampler table: the
 * ends are ddpm_sample with that solver (steps are evaluations; the singlestep
 * heun too), and a stochastic row is refused. */
static void test_solver_strip_ends_are_the_solver_samples_and_stochastic_rows_are_refused(void **state)
{
    (void)state;
    size_t D = 2 * 4 * 4;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 40, 1e-4, 0.02), 0);
    ddpm_model m;
    tu_stub_model(&m, 2, 4, DDPM_PRED_EPS, 0, &s, stub_eps, &D);
    const ddpm_sampler_kind kinds[2] = {DDPM_SAMPLER_DPMPP_2M, DDPM_SAMPLER_HEUN};
    float *strip = tu_alloc(5 * D), *one = tu_alloc(D), *ddim = tu_alloc(5 * D);
    ddpm_interpolate_config ic;
    ddpm_interpolate_config_default(&ic);
    ic.n = 5;
    ic.steps = 6;
    ic.batch = 3;
    assert_int_equal(ddpm_interpolate_seeds(&m, ddim, 4, 9, &ic), 0);
    for (int k = 0; k < 2; k++) {
        ic.sampler = kinds[k];
        ic.spacing = k ? DDPM_SPACING_KARRAS : DDPM_SPACING_LOGSNR;
        assert_int_equal(ddpm_interpolate_seeds(&m, strip, 4, 9, &ic), 0);
        ddpm_sampler_config sc;
        ddpm_interpolate_sampler(&sc, &ic);
        assert_true(sc.kind == kinds[k] && sc.steps == 6 && sc.spacing == ic.spacing);
        const uint64_t seeds[2] = {4, 9};
        for (int e = 0; e < 2; e++) {
            ddpm_rng rng;
            ddpm_rng_init(&rng, seeds[e], DDPM_STREAM_SAMPLE);
            assert_int_equal(ddpm_sample(&m, &sc, NULL, one, 1, 0, &rng, NULL), 0);
            assert_memory_equal(strip + (size_t)(e ? ic.n - 1 : 0) * D, one, D * sizeof(float));
        }
        /* the solver, not DDIM, decoded it */
        assert_true(memcmp(strip, ddim, D * sizeof(float)) != 0);
    }
    const ddpm_sampler_kind noisy[3] = {DDPM_SAMPLER_DDPM, DDPM_SAMPLER_DPMPP_2M_SDE, DDPM_SAMPLER_EULER_A};
    for (int k = 0; k < 3; k++) {
        ic.sampler = noisy[k];
        assert_int_equal(ddpm_interpolate_seeds(&m, strip, 4, 9, &ic), DDPM_EINVAL);
        assert_non_null(strstr(ddpm_last_error(), "deterministic"));
    }
    free(strip);
    free(one);
    free(ddim);
    ddpm_model_close(&m);
    ddpm_schedule_free(&s);
}

/* An oracle at continuous t (the solvers evaluate between trained steps):
 * eps = (x_t - alpha(t) x0) / sigma(t) for the pixel blend x0 of the position. */
typedef struct {
    const ddpm_schedule *s;
    const float *a, *b;
    size_t D;
    int n;
    double max_t;
} oracle_cont_ctx;

static void oracle_cont_eps(void *opaque, float *eps, const float *x_t, const double *t, const int *y, int B)
{
    (void)y;
    oracle_cont_ctx *o = opaque;
    assert_int_equal(B, o->n);
    for (int b = 0; b < B; b++) {
        double l = (double)b / (o->n - 1), al = ddpm_schedule_alpha(o->s, t[b]),
               sg = ddpm_schedule_sigma(o->s, t[b]);
        if (t[b] > o->max_t)
            o->max_t = t[b];
        for (size_t d = 0; d < o->D; d++) {
            double x0 = (1 - l) * o->a[d] + l * o->b[d];
            eps[(size_t)b * o->D + d] = (float)((x_t[(size_t)b * o->D + d] - al * x0) / sg);
        }
    }
}

/* --at t with a solver: it starts at continuous t = the step index t - 1, and
 * with an oracle that knows x0 it returns the pixel blend (a data-prediction
 * solver is exact for a constant x0). */
static void test_solver_image_strip_starts_at_step_t_and_decodes_the_blend(void **state)
{
    (void)state;
    size_t D = 2 * 6 * 6;
    ddpm_schedule s;
    assert_int_equal(ddpm_schedule_init(&s, DDPM_SCHEDULE_LINEAR, 100, 1e-4, 0.02), 0);
    float *a = tu_alloc(D), *b = tu_alloc(D);
    tu_fill_uniform(a, D, 1, -0.9f, 0.9f);
    tu_fill_uniform(b, D, 2, -0.9f, 0.9f);
    ddpm_interpolate_config ic;
    ddpm_interpolate_config_default(&ic);
    ic.n = 4;
    ic.steps = 8;
    ic.sampler = DDPM_SAMPLER_DPMPP_3M;
    float *strip = tu_alloc(ic.n * D);
    oracle_cont_ctx o = {&s, a, b, D, ic.n, -1};
    ddpm_model m;
    tu_stub_model(&m, 2, 6, DDPM_PRED_EPS, 0, &s, oracle_cont_eps, &o);
    const int t = 45;
    assert_int_equal(ddpm_interpolate_images(&m, strip, a, b, t, 3, &ic), 0);
    assert_true(fabs(o.max_t - (t - 1)) < 1e-9);
    for (int k = 0; k < ic.n; k++) {
        double l = (double)k / (ic.n - 1), worst = 0;
        for (size_t d = 0; d < D; d++)
            worst = fmax(worst, fabs(strip[(size_t)k * D + d] - ((1 - l) * a[d] + l * b[d])));
        if (worst > 1e-4)
            fprintf(stderr, "strip image %d is %.3g off the pixel blend\n", k, worst);
        assert_true(worst <= 1e-4);
    }
    ic.steps = 46; /* more evaluations than t */
    assert_true(ddpm_interpolate_images(&m, strip, a, b, t, 3, &ic) < 0);
    free(a);
    free(b);
    free(strip);
    ddpm_model_close(&m);
    ddpm_schedule_free(&s);
}

/* ---------------------------------------------------------------- the binary */

static char tmp[256];

#define ddpm(...) tu_ddpm(tmp, __VA_ARGS__)

static const char *in_tmp(const char *name)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    return path;
}

static unsigned char *load_png(const char *name, int *w, int *h)
{
    int ch;
    unsigned char *px = stbi_load(in_tmp(name), w, h, &ch, 1);
    if (!px)
        fprintf(stderr, "%s: %s\n", in_tmp(name), stbi_failure_reason());
    assert_non_null(px);
    return px;
}

#define TINY "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 4"

static void test_binary_strip_ends_equal_plain_samples_byte_for_byte(void **state)
{
    (void)state;
    assert_int_equal(tu_make_tmpdir(tmp, sizeof tmp, "interpolate"), 0);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data", tmp);
    assert_int_equal(mkdir(dir, 0777), 0);
    uint8_t px[64];
    for (int k = 0; k < 8; k++) {
        for (int i = 0; i < 64; i++)
            px[i] = (uint8_t)((i * (k + 3) * 7) & 255);
        char path[600];
        snprintf(path, sizeof path, "%s/%02d.png", dir, k);
        assert_int_equal(ddpm_png_write(path, px, 8, 8, 1), 0);
    }
    assert_int_equal(ddpm("train data --out run " TINY " --steps 6 --preview-n 0 --quiet"), 0);
    assert_int_equal(
        ddpm("sample run --sampler ddim --seed 3 --n 1 --eta 0 --steps 5 --pad 0 --out a.png --quiet"), 0);
    assert_int_equal(
        ddpm("sample run --sampler ddim --seed 8 --n 1 --eta 0 --steps 5 --pad 0 --out b.png --quiet"), 0);
    /* --batch 2: the two ends are decoded in batches of different sizes */
    assert_int_equal(
        ddpm("interpolate run --seeds 3,8 --n 5 --steps 5 --pad 0 --batch 2 --out strip.png --quiet"), 0);
    int wa, ha, wb, hb, ws, hs;
    unsigned char *a = load_png("a.png", &wa, &ha), *b = load_png("b.png", &wb, &hb),
                  *s = load_png("strip.png", &ws, &hs);
    assert_int_equal(wa, 8);
    assert_int_equal(ws, 5 * 8);
    assert_int_equal(hs, 8);
    int differs_a = 0, differs_b = 0;
    for (int r = 0; r < 8; r++) {
        assert_memory_equal(s + r * ws, a + r * 8, 8);              /* first cell */
        assert_memory_equal(s + r * ws + 4 * 8, b + r * 8, 8);      /* last cell */
        differs_a |= memcmp(s + r * ws + 2 * 8, a + r * 8, 8) != 0; /* the middle */
        differs_b |= memcmp(s + r * ws + 2 * 8, b + r * 8, 8) != 0;
    }
    assert_true(differs_a && differs_b);
    stbi_image_free(a);
    stbi_image_free(b);
    stbi_image_free(s);
    /* between two real images at t: a strip of the model's size */
    assert_int_equal(
        ddpm("interpolate run --at 20 --images data/00.png,data/05.png --n 4 --pad 0 --out at.png --quiet"),
        0);
    s = load_png("at.png", &ws, &hs);
    assert_int_equal(ws, 4 * 8);
    /* its recipe names each source image by the SHA-256 of the bytes it decoded */
    ddpm_recipe *rec = malloc(sizeof *rec);
    assert_non_null(rec);
    assert_int_equal(ddpm_recipe_read_png(rec, in_tmp("at.png")), 1); /* 1: a complete recipe */
    char want[65];
    assert_int_equal(ddpm_sha256_file(in_tmp("data/00.png"), want), 0);
    assert_string_equal(rec->image_sha256[0], want);
    assert_int_equal(ddpm_sha256_file(in_tmp("data/05.png"), want), 0);
    assert_string_equal(rec->image_sha256[1], want);
    free(rec);
    /* --sources frames it with the two images as loaded */
    assert_int_equal(ddpm("interpolate run --at 20 --images data/00.png,data/05.png --n 4 --pad 0 --sources "
                          "--out at2.png --quiet"),
                     0);
    unsigned char *s2 = load_png("at2.png", &ws, &hs), *src = load_png("data/05.png", &wa, &ha);
    assert_int_equal(ws, 6 * 8);
    for (int r = 0; r < 8; r++) {
        assert_memory_equal(s2 + r * ws + 8, s + r * 4 * 8, 8 * 4); /* the same strip inside */
        assert_memory_equal(s2 + r * ws + 5 * 8, src + r * 8, 8);   /* the second image last */
    }
    stbi_image_free(s2);
    stbi_image_free(src);
    stbi_image_free(s);
    assert_int_equal(ddpm("interpolate run --seeds 1,2 --sources"), 2);
    /* usage errors: exit 2 */
    assert_int_equal(ddpm("interpolate run --seeds 3 --out x.png"), 2);
    assert_int_equal(ddpm("interpolate run --seeds 3,8 --at 10 --images data/00.png,data/01.png"), 2);
    assert_int_equal(ddpm("interpolate run --at 51 --images data/00.png,data/01.png"), 2);
    assert_int_equal(ddpm("interpolate run --seeds 1,2 --steps 51"), 2);
    /* a missing image: exit 1, the file named */
    assert_int_equal(ddpm("interpolate run --at 10 --images data/00.png,nope.png --out y.png"), 1);
    FILE *f = fopen(in_tmp("err.txt"), "r");
    char line[512] = "";
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_non_null(strstr(line, "ddpm: "));
    assert_non_null(strstr(line, "nope.png"));
    assert_int_equal(ddpm("interpolate --help"), 0);
    /* a solver: the ends are `ddpm sample` with the same sampler and spacing */
    assert_int_equal(ddpm("sample run --seed 3 --n 1 --sampler dpm++2m --steps 5 --spacing karras --pad 0 "
                          "--out sa.png --quiet"),
                     0);
    assert_int_equal(ddpm("interpolate run --seeds 3,8 --n 3 --sampler dpm++2m --steps 5 --spacing karras "
                          "--pad 0 --out solver.png --quiet"),
                     0);
    a = load_png("sa.png", &wa, &ha);
    s = load_png("solver.png", &ws, &hs);
    assert_int_equal(ws, 3 * 8);
    for (int r = 0; r < 8; r++)
        assert_memory_equal(s + r * ws, a + r * 8, 8);
    stbi_image_free(a);
    stbi_image_free(s);
    assert_int_equal(ddpm("interpolate run --at 20 --images data/00.png,data/05.png --n 3 --sampler heun "
                          "--steps 7 --out heun.png --quiet"),
                     0);
    /* stochastic samplers and a spacing DDIM does not take: one line, exit 2 */
    assert_int_equal(ddpm("interpolate run --seeds 3,8 --sampler euler-a --out z.png"), 2);
    f = fopen(in_tmp("err.txt"), "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    assert_null(fgets(line + 256, 256, f));
    fclose(f);
    assert_non_null(strstr(line, "--sampler euler-a draws noise at every step"));
    assert_int_equal(ddpm("interpolate run --seeds 3,8 --sampler dpm++2m-sde --out z.png"), 2);
    assert_int_equal(ddpm("interpolate run --seeds 3,8 --sampler ddpm --out z.png"), 2);
    assert_int_equal(ddpm("interpolate run --seeds 3,8 --spacing karras --out z.png"), 2);
    assert_int_equal(ddpm("interpolate run --seeds 3,8 --sampler nope --out z.png"), 2);
    f = fopen(in_tmp("z.png"), "r");
    assert_null(f);
    assert_int_equal(tu_remove_tree(tmp), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slerp_and_lerp_keep_their_ends_and_slerp_the_norm),
        cmocka_unit_test(test_seed_strip_ends_are_the_samples_of_the_two_seeds),
        cmocka_unit_test(test_image_strip_decodes_the_noised_pixel_blend_from_step_t),
        cmocka_unit_test(test_solver_strip_ends_are_the_solver_samples_and_stochastic_rows_are_refused),
        cmocka_unit_test(test_solver_image_strip_starts_at_step_t_and_decodes_the_blend),
        cmocka_unit_test(test_binary_strip_ends_equal_plain_samples_byte_for_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
