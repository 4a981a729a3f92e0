/* The C FID Inception against an independent PyTorch build of pytorch-fid's
 * architecture at 1/16 width with random weights (tests/reference/
 * make_inception_reference.py writes tests/data/inception/: the weights as
 * torch.save wrote them, test images, their features computed in float64, and
 * torch's bilinear resizes). CI runs no Python: only this test against the
 * committed files. Also the .pth reader on both torch.save formats and its
 * refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ddpm/error.h"
#include "ddpm/inception.h"
#include "ddpm/platform.h"
#include "ddpm/pth.h"
#include "ddpm/safetensors.h"
#include "testutil.h"

#define DIR DDPM_TEST_DATA "/inception/"
enum { N_IMAGES = 6 };

static ddpm_st_file *open_reference(void)
{
    ddpm_st_file *ref = NULL;
    if (ddpm_safetensors_open(&ref, DIR "reference.safetensors"))
        fail_msg("%s", ddpm_last_error());
    return ref;
}

/* img<k> [H, W, C] as uint8 (the reference stores the 0..255 values as floats). */
static uint8_t *load_image(const ddpm_st_file *ref, int k, ddpm_inception_image *im)
{
    char name[16];
    snprintf(name, sizeof name, "img%d", k);
    const ddpm_st_info *info = ddpm_safetensors_find(ref, name);
    assert_non_null(info);
    assert_int_equal(info->ndim, 3);
    size_t n = (size_t)info->n_elements;
    float *f = tu_alloc(n);
    uint8_t *px = malloc(n);
    assert_non_null(px);
    assert_int_equal(ddpm_safetensors_read_f32(ref, name, f, n), 0);
    for (size_t i = 0; i < n; i++)
        px[i] = (uint8_t)f[i];
    free(f);
    *im = (ddpm_inception_image){px, (int)info->shape[0], (int)info->shape[1], (int)info->shape[2]};
    return px;
}

/* Features within 1e-4 of the largest reference feature: the float64 reference
 * and PyTorch's own float32 run differ by ~2e-6 of it (float32_gap in the
 * file's metadata), the folded BatchNorm and a different summation order add
 * rounding of the same size; a wrong pooling, padding, resize or weight moves
 * features by 1e-2 and more. */
static void test_inception_features_match_pytorch_reference_on_every_image_size(void **state)
{
    (void)state;
    ddpm_st_file *ref = open_reference();
    ddpm_inception *net = NULL;
    if (ddpm_inception_load(&net, DIR "inception_w16.pth"))
        fail_msg("%s", ddpm_last_error());
    int D = ddpm_inception_n_features(net);
    assert_int_equal(D, 128); /* 2048 / 16, taken from the weights' shapes */
    ddpm_inception_image ims[N_IMAGES];
    uint8_t *px[N_IMAGES];
    for (int k = 0; k < N_IMAGES; k++)
        px[k] = load_image(ref, k, &ims[k]);
    float *want = tu_alloc((size_t)N_IMAGES * D), *got = tu_alloc((size_t)N_IMAGES * D);
    assert_int_equal(ddpm_safetensors_read_f32(ref, "feat", want, (size_t)N_IMAGES * D), 0);
    assert_int_equal(ddpm_inception_features(net, got, ims, N_IMAGES), 0);
    double scale = 0.0;
    for (int i = 0; i < N_IMAGES * D; i++)
        scale = fmax(scale, fabs(want[i]));
    for (int k = 0; k < N_IMAGES; k++) {
        size_t at = 0;
        double diff = tu_max_abs_diff(got + (size_t)k * D, want + (size_t)k * D, (size_t)D, &at);
        if (!(diff <= 1e-4 * scale))
            fail_msg("image %d (%dx%d, %d ch): feature %zu is %.7g, reference %.7g (max diff %.3g, %.3g of the "
                     "largest feature)",
                     k, ims[k].width, ims[k].height, ims[k].channels, at, got[k * D + at], want[k * D + at], diff,
                     diff / scale);
    }
    /* The same image alone gives the same bytes as within the batch. */
    float *one = tu_alloc((size_t)D);
    assert_int_equal(ddpm_inception_features(net, one, &ims[1], 1), 0);
    assert_memory_equal(one, got + D, sizeof(float) * D);
    free(one);
    for (int k = 0; k < N_IMAGES; k++)
        free(px[k]);
    free(want);
    free(got);
    ddpm_inception_free(net);
    ddpm_safetensors_close(ref);
}

/* Features of n images at `threads` threads (the network's workspaces are made
 * for the thread count at load time). */
static float *features_at(int threads, const ddpm_inception_image *ims, int n)
{
    ddpm_threads_set(threads);
    ddpm_inception *net = NULL;
    if (ddpm_inception_load(&net, DIR "inception_w16.pth"))
        fail_msg("%s", ddpm_last_error());
    int D = ddpm_inception_n_features(net);
    float *f = tu_alloc((size_t)n * D);
    if (ddpm_inception_features(net, f, ims, n))
        fail_msg("%s", ddpm_last_error());
    ddpm_inception_free(net);
    return f;
}

enum { N_SPREAD = 11 }; /* a full group of 8 and a partial one of 3 */

/* Returns the number of images whose features differ (as bytes) between one
 * call of N_SPREAD images at 1 thread and: the same call at 2 threads, the
 * images in reverse order (each image in another group slot and group), and
 * each image alone (slot 0 of a group of zero planes). */
static int count_feature_byte_differences(void)
{
    ddpm_st_file *ref = open_reference();
    ddpm_inception_image ims[N_SPREAD], rev[N_SPREAD];
    uint8_t *px[N_IMAGES];
    for (int k = 0; k < N_IMAGES; k++)
        px[k] = load_image(ref, k, &ims[k]);
    for (int i = N_IMAGES; i < N_SPREAD; i++)
        ims[i] = ims[(i * 5) % N_IMAGES];
    for (int i = 0; i < N_SPREAD; i++)
        rev[i] = ims[N_SPREAD - 1 - i];
    const int D = 128;
    float *one = features_at(1, ims, N_SPREAD), *two = features_at(2, ims, N_SPREAD);
    float *back = features_at(2, rev, N_SPREAD);
    int n_diff = 0;
    for (int i = 0; i < N_SPREAD; i++) {
        float *alone = features_at(2, &ims[i], 1);
        const float *want = one + (size_t)i * D;
        int threads = memcmp(two + (size_t)i * D, want, sizeof(float) * D) != 0;
        int slot = memcmp(back + (size_t)(N_SPREAD - 1 - i) * D, want, sizeof(float) * D) != 0;
        int batch = memcmp(alone, want, sizeof(float) * D) != 0;
        int bad = threads || slot || batch;
        if (bad)
            fprintf(stderr, "image %d (%dx%d): features differ%s%s%s\n", i, ims[i].width, ims[i].height,
                    threads ? " at 2 threads" : "", slot ? " in another slot" : "", batch ? " alone" : "");
        n_diff += bad;
        free(alone);
    }
    free(one);
    free(two);
    free(back);
    for (int k = 0; k < N_IMAGES; k++)
        free(px[k]);
    ddpm_safetensors_close(ref);
    return n_diff;
}

/* An image's features are the same bytes at 1 and 2 threads, in any slot of
 * any group and alone: with the environment as it is, and in a child with
 * OpenBLAS's Haswell kernels (OPENBLAS_CORETYPE is read when the library
 * loads), whose rounding has depended on how a product was split. */
static void test_inception_features_same_bytes_any_threads_slot_or_batch(void **state)
{
    (void)state;
    assert_int_equal(count_feature_byte_differences(), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("OPENBLAS_CORETYPE", "Haswell", 1);
        execl("/proc/self/exe", "test_inception", "--determinism-child", (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Resizes to several sizes, up and down, square and not, against torch's
 * F.interpolate(bilinear, align_corners=False). Both compute the source
 * coordinate in float32, whose resolution near 299 is 3e-5, and round it
 * differently, so the weights and results agree to ~1.5e-5 of values in [0, 1]
 * (measured: 8.3e-6 at most): 3e-5 is the tolerance. align_corners=True, a
 * missing half-pixel offset or a missing clamp at 0 each move values by 1e-3
 * to 1e-1. */
static void test_inception_resize_matches_torch_bilinear(void **state)
{
    (void)state;
    ddpm_st_file *ref = open_reference();
    const char *sizes = ddpm_safetensors_meta(ref, "sizes");
    assert_non_null(sizes);
    int hw[N_IMAGES][2];
    const char *p = sizes + 1; /* "[[h, w], [h, w], ...]" */
    for (int k = 0; k < N_IMAGES; k++) {
        p = strchr(p, '[');
        assert_non_null(p);
        assert_int_equal(sscanf(p, "[%d, %d]", &hw[k][0], &hw[k][1]), 2);
        p++;
    }
    for (int k = 0; k <= N_IMAGES; k++) {
        ddpm_inception_image im;
        uint8_t *px = load_image(ref, k == N_IMAGES ? 0 : k, &im);
        int C = im.channels, H = im.height, W = im.width;
        float *src = tu_alloc((size_t)C * H * W);
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++)
                src[(size_t)c * H * W + i] = (float)px[(size_t)i * C + c] / 255.0f;
        int Ho = k == N_IMAGES ? 299 : hw[k][0], Wo = k == N_IMAGES ? 299 : hw[k][1];
        float *out = tu_alloc((size_t)C * Ho * Wo);
        ddpm_inception_resize(out, src, C, H, W, Ho, Wo);
        char name[16];
        if (k == N_IMAGES) { /* rs299: every 7th row and column of img0 at 299 */
            float *want = tu_alloc((size_t)C * 43 * 43);
            assert_int_equal(ddpm_safetensors_read_f32(ref, "rs299", want, (size_t)C * 43 * 43), 0);
            for (int c = 0; c < C; c++)
                for (int y = 0; y < 43; y++)
                    for (int x = 0; x < 43; x++) {
                        float g = out[((size_t)c * 299 + 7 * y) * 299 + 7 * x], w = want[(c * 43 + y) * 43 + x];
                        if (fabsf(g - w) > 3e-5f)
                            fail_msg("resize 28->299 at (%d, %d): %.8g, torch %.8g", 7 * y, 7 * x, g, w);
                    }
            free(want);
        } else {
            snprintf(name, sizeof name, "rs%d", k);
            float *want = tu_alloc((size_t)C * Ho * Wo);
            assert_int_equal(ddpm_safetensors_read_f32(ref, name, want, (size_t)C * Ho * Wo), 0);
            size_t at = 0;
            double diff = tu_max_abs_diff(out, want, (size_t)C * Ho * Wo, &at);
            if (diff > 3e-5)
                fail_msg("resize %dx%d -> %dx%d: value %zu is %.8g, torch %.8g", H, W, Ho, Wo, at, out[at], want[at]);
            free(want);
        }
        free(out);
        free(src);
        free(px);
    }
    ddpm_safetensors_close(ref);
}

/* The same three-tensor state_dict written by torch.save in the zip format and
 * in the legacy format reads to the same tensors, including a view at an offset
 * into its storage and an int64 scalar. */
static void test_pth_reads_zip_and_legacy_torch_save(void **state)
{
    (void)state;
    const char *files[2] = {DIR "small_zip.pth", DIR "small_legacy.pth"};
    for (int k = 0; k < 2; k++) {
        ddpm_pth *f = NULL;
        if (ddpm_pth_open(&f, files[k]))
            fail_msg("%s", ddpm_last_error());
        assert_int_equal(ddpm_pth_count(f), 4);
        assert_string_equal(ddpm_pth_at(f, 0)->name, "a.weight");
        const ddpm_pth_tensor *a = ddpm_pth_find(f, "a.weight");
        assert_int_equal(a->ndim, 2);
        assert_int_equal(a->shape[0], 2);
        assert_int_equal(a->shape[1], 3);
        float v[6];
        assert_int_equal(ddpm_pth_read_f32(f, "a.weight", v, 6), 0);
        for (int i = 0; i < 6; i++)
            assert_true(v[i] == (float)i / 4);
        assert_int_equal(ddpm_pth_read_f32(f, "c.view", v, 6), 0);
        for (int i = 0; i < 6; i++)
            assert_true(v[i] == (float)(4 + i));
        assert_int_equal(ddpm_pth_read_f32(f, "b", v, 3), 0);
        assert_true(v[0] == -1.5f && v[1] == 2.25f && v[2] == 1e-3f);
        assert_int_equal(ddpm_pth_find(f, "a.count")->dtype, DDPM_PTH_I64);
        assert_int_equal(ddpm_pth_find(f, "a.count")->ndim, 0);
        assert_int_equal(ddpm_pth_read_f32(f, "a.count", v, 1), DDPM_EFORMAT); /* not float32 */
        assert_int_equal(ddpm_pth_read_f32(f, "b", v, 2), DDPM_EFORMAT);       /* wrong count */
        assert_int_equal(ddpm_pth_read_f32(f, "nope", v, 1), DDPM_EFORMAT);
        assert_non_null(strstr(ddpm_last_error(), "'nope' is missing"));
        ddpm_pth_close(f);
    }
}

static unsigned char *read_all(const char *path, size_t *n)
{
    unsigned char *b = tu_read_file(path, n);
    if (!b)
        fail_msg("cannot read %s", path);
    return b;
}

/* A damaged byte in a stored entry fails its CRC; a truncated file, a pickle that
 * calls anything but OrderedDict/_rebuild_tensor_v2, and random bytes are
 * refused with one message naming the input. */
static void test_pth_refuses_damaged_and_foreign_files(void **state)
{
    (void)state;
    size_t n;
    unsigned char *b = read_all(DIR "small_zip.pth", &n);
    ddpm_pth *f = NULL;
    /* find the bytes of b's data (-1.5f = 0xbfc00000, little-endian) and flip one */
    size_t at = SIZE_MAX;
    for (size_t i = 0; i + 4 <= n; i++)
        if (b[i] == 0x00 && b[i + 1] == 0x00 && b[i + 2] == 0xc0 && b[i + 3] == 0xbf)
            at = i;
    assert_true(at != SIZE_MAX);
    b[at + 1] ^= 1;
    assert_int_equal(ddpm_pth_open_memory(&f, b, n, "damaged.pth"), DDPM_EFORMAT);
    assert_null(f);
    assert_non_null(strstr(ddpm_last_error(), "damaged.pth: "));
    assert_non_null(strstr(ddpm_last_error(), "CRC-32"));
    b[at + 1] ^= 1;
    assert_int_equal(ddpm_pth_open_memory(&f, b, n / 2, "half.pth"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "half.pth: "));
    free(b);

    b = read_all(DIR "small_legacy.pth", &n);
    for (size_t i = 0; i + 11 <= n; i++) /* a global no state_dict names */
        if (!memcmp(b + i, "OrderedDict", 11)) {
            memcpy(b + i, "system\nabcd", 11);
            break;
        }
    assert_int_equal(ddpm_pth_open_memory(&f, b, n, "evil.pth"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "evil.pth: "));
    assert_int_equal(ddpm_pth_open_memory(&f, b, 40, "short.pth"), DDPM_EFORMAT);
    free(b);
    assert_int_equal(ddpm_pth_open_memory(&f, "hello world", 11, "text.pth"), DDPM_EFORMAT);
    assert_non_null(strstr(ddpm_last_error(), "not a PyTorch file"));
}

/* A weights file without a tensor the network needs, or with one of a shape
 * that does not fit, is refused naming the tensor. (small_zip.pth is a valid
 * state_dict of other tensors.) */
static void test_inception_refuses_missing_tensor(void **state)
{
    (void)state;
    ddpm_inception *net = NULL;
    assert_int_equal(ddpm_inception_load(&net, DIR "small_zip.pth"), DDPM_EFORMAT);
    assert_null(net);
    assert_non_null(strstr(ddpm_last_error(), "small_zip.pth: tensor 'Conv2d_1a_3x3.conv.weight' is missing"));
}

/* A tensor of the wrong shape is refused with its name and both shapes. */
static void test_inception_refuses_misshaped_tensor(void **state)
{
    (void)state;
    ddpm_inception *net = NULL;
    assert_int_equal(ddpm_inception_load(&net, DIR "misshaped.pth"), DDPM_EFORMAT);
    assert_null(net);
    assert_non_null(strstr(ddpm_last_error(), "misshaped.pth: tensor 'Conv2d_1a_3x3.conv.weight' has shape [8, 2, 3, 3]"));
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--determinism-child")) /* see the test above */
        return count_feature_byte_differences() ? 1 : 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inception_features_match_pytorch_reference_on_every_image_size),
        cmocka_unit_test(test_inception_features_same_bytes_any_threads_slot_or_batch),
        cmocka_unit_test(test_inception_resize_matches_torch_bilinear),
        cmocka_unit_test(test_pth_reads_zip_and_legacy_torch_save),
        cmocka_unit_test(test_pth_refuses_damaged_and_foreign_files),
        cmocka_unit_test(test_inception_refuses_missing_tensor),
        cmocka_unit_test(test_inception_refuses_misshaped_tensor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
