/* `ddpm train --t-sampling` through the binary: uniform sampling trains the
 * bytes it trained before the option existed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cliutil.h"
#include "ddpm/sha256.h"
#include "testutil.h"
#include "trainutil.h"

/* A tiny model (test_mpi.c's), one thread. */
#define TINY                                                                                                 \
    "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 5 --preview-n 0 "        \
    "--quiet"

/* SHA-256 of the tensor bytes of cu_dir/NAME: everything after the JSON header,
 * which also holds the run's elapsed seconds and the config. */
static void checkpoint_tensors_sha256(const char *name, char hex[65])
{
    char path[512];
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    unsigned char *b = tu_read_file(path, &len);
    assert_non_null(b);
    assert_true(len > 8);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | b[i];
    assert_true(h <= len - 8);
    ddpm_sha256 s;
    uint8_t digest[32];
    ddpm_sha256_init(&s);
    ddpm_sha256_update(&s, b + 8 + h, len - 8 - (size_t)h);
    ddpm_sha256_final(&s, digest);
    ddpm_sha256_hex(hex, digest);
    free(b);
}

/* The tensors (weights, EMA, Adam moments) after 8 steps of each objective with
 * uniform t, as the trainer wrote them before --t-sampling existed (commit
 * 7611e3b, this test run on it). The bytes depend on the OpenBLAS kernels and on
 * the instructions the compiler may use (-march=native, DDPM_NATIVE): the hashes
 * hold for the OpenBLAS kernels this machine gets ("Prescott": Debian's
 * dynamic-arch OpenBLAS does not recognise its virtual Xeon) and an AVX-512
 * build, the machine they were recorded on; elsewhere the test says so and
 * skips. */
static const char *const pinned_core = "Prescott";
static const struct {
    const char *loss;
    const char *sha256;
} pinned[] = {
    {"simple", "e44a8d90b9312cc49aec6f5881bf8a59662e1b63aa56c0b0b9200f474e1cb832"},
    {"vlb", "8552419f39dc2f55a8a42b9549be9b3c324b221569321e1b748927747b3acc0c"},
    {"hybrid", "49a3c37e960f9c1dc5f4c6546a8488ce851835b0b7984d67746df8d7ce116f66"},
};

static void test_uniform_sampling_trains_the_bytes_it_did_before_the_option(void **state)
{
    (void)state;
    const char *core = openblas_get_corename();
#ifdef __AVX512F__
    int avx512 = 1;
#else
    int avx512 = 0;
#endif
    int pinned_here = core && !strcmp(core, pinned_core) && avx512;
    for (size_t k = 0; k < sizeof pinned / sizeof pinned[0]; k++) {
        char run[64], ckpt[96], hex[65];
        snprintf(run, sizeof run, "uniform_%s", pinned[k].loss);
        assert_int_equal(cu_ddpm("train data --out %s " TINY " --threads 1 --steps 8 --loss %s", run, pinned[k].loss),
                         0);
        snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", run);
        checkpoint_tensors_sha256(ckpt, hex);
        fprintf(stderr, "  --loss %s, 8 steps: tensors sha256 %s\n", pinned[k].loss, hex);
        if (pinned_here)
            assert_string_equal(hex, pinned[k].sha256);
    }
    if (!pinned_here) {
        fprintf(stderr, "  SKIP: the hashes were recorded with OpenBLAS %s kernels and an AVX-512 build; "
                        "this is %s%s\n", pinned_core, core ? core : "(unknown)", avx512 ? "" : " without AVX-512");
        skip();
    }
}

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "cli_timestep"))
        return -1;
    char data[300];
    snprintf(data, sizeof data, "%s/data", cu_dir);
    return synthetic_png_folder(data, 12);
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uniform_sampling_trains_the_bytes_it_did_before_the_option),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
