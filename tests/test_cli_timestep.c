/* `ddpm train --t-sampling` through the binary: uniform sampling trains the
 * bytes it trained before the option existed; an importance-sampled run resumed
 * mid-run (in the warm-up and after it) ends with the bytes of one never
 * interrupted, and 1 and 2 threads give the same bytes; --loss simple is
 * refused with one line and exit 2; ddpm info shows how t is drawn. */
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
#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/sha256.h"
#include "testutil.h"
#include "trainutil.h"

/* A tiny model (test_mpi.c's), one thread. */
#define TINY                                                                                                 \
    "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 5 --preview-n 0 "        \
    "--quiet"

/* The tensor bytes of cu_dir/RUN/checkpoint.safetensors (*n of them). */
static unsigned char *checkpoint_tensors(const char *run, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/checkpoint.safetensors", cu_dir, run);
    unsigned char *b = tu_checkpoint_tensors(path, n);
    assert_non_null(b);
    return b;
}

static void checkpoint_tensors_sha256(const char *run, char hex[65])
{
    size_t n = 0;
    unsigned char *b = checkpoint_tensors(run, &n);
    ddpm_sha256_bytes_hex(b, n, hex);
    free(b);
}

/* cu_dir/NAME exists. */
static int exists(const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", cu_dir, name);
    return stat(path, &st) == 0;
}

/* The two runs' checkpoints hold the same tensor bytes. */
static void assert_same_tensors(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    unsigned char *x = checkpoint_tensors(a, &na), *y = checkpoint_tensors(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x);
    free(y);
}

/* Steps of cu_dir/RUN's checkpoint whose loss history holds 10 values. */
static int full_history_steps(const char *run)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/checkpoint.safetensors", cu_dir, run);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    ddpm_t_history h;
    assert_int_equal(ddpm_t_history_init(&h, ddpm_checkpoint_config(ck)->timesteps), 0);
    if (ddpm_checkpoint_read_t_history(ck, &h))
        fail_msg("%s", ddpm_last_error());
    int full = 0;
    for (int i = 0; i < h.T; i++)
        full += h.count[i] == DDPM_T_HISTORY;
    ddpm_t_history_free(&h);
    ddpm_checkpoint_close(ck);
    return full;
}

/* The tensors (weights, EMA, Adam moments) after 8 steps of each objective with
 * uniform t, as the trainer wrote them before --t-sampling existed (commit
 * 7611e3b, this test run on it), re-recorded when attention's softmax changed
 * its rounding (its exp and its row sums, src/ops/attention.c) and nothing
 * else. The bytes depend on the compiler, the
 * instructions the build may use and the OpenBLAS build and kernel set, so
 * these are recorded beside the hashes, as `ddpm --version` reports them; the
 * hashes are checked where a ddpm child, run with the OpenBLAS variables unset
 * in its own environment (ddpm then picks its kernels itself), reports the same,
 * and elsewhere the test says what differs and skips. */
static const char *const pinned_version[] = {
    "build: gcc 12.2.0, avx512\n",
    "openblas: OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY USE_OPENMP SkylakeX MAX_THREADS=64\n",
    "openblas kernels: SkylakeX\n",
};
static const struct {
    const char *loss;
    const char *sha256;
} pinned[] = {
    {"simple", "a9072ef3f045046a15276700b0f4c23e7ffb65ef4f445ba62ee5722f573f909b"},
    {"vlb", "fd743cbb2f82ea31a1bc1836bff97ef7662e3b8f5c54e4b945ccac948caf72a9"},
    {"hybrid", "5002303e59fe0754cf3264e68875fb4aab176a8e9e817642b1064534bc7f67d5"},
};
#define CHILD_ENV "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "

static void test_uniform_sampling_trains_the_bytes_it_did_before_the_option(void **state)
{
    (void)state;
    /* the child's conditions, in the child's environment only */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s' && " CHILD_ENV "'%s' --version >version.txt 2>&1", cu_dir, DDPM_BINARY);
    assert_int_equal(system(cmd), 0);
    char *version = cu_slurp("version.txt", NULL);
    assert_non_null(version);
    const char *differs = NULL;
    for (size_t k = 0; k < sizeof pinned_version / sizeof pinned_version[0] && !differs; k++)
        if (!strstr(version, pinned_version[k]))
            differs = pinned_version[k];
    for (size_t k = 0; k < sizeof pinned / sizeof pinned[0]; k++) {
        char run[64], hex[65];
        snprintf(run, sizeof run, "uniform_%s", pinned[k].loss);
        snprintf(cmd, sizeof cmd,
                 "cd '%s' && " CHILD_ENV "'%s' train data --out %s " TINY
                 " --threads 1 --steps 8 --loss %s >out.txt 2>err.txt",
                 cu_dir, DDPM_BINARY, run, pinned[k].loss);
        assert_int_equal(system(cmd), 0);
        checkpoint_tensors_sha256(run, hex);
        fprintf(stderr, "  --loss %s, 8 steps: tensors sha256 %s\n", pinned[k].loss, hex);
        if (!differs)
            assert_string_equal(hex, pinned[k].sha256);
    }
    if (differs) {
        fprintf(stderr, "  SKIP: the hashes were recorded where ddpm --version said \"%.*s\"; this one says:\n%s",
                (int)strlen(differs) - 1, differs, version);
        free(version);
        skip();
    }
    free(version);
}

/* Saying --t-sampling uniform is the default, byte for byte (on any machine). */
static void test_t_sampling_uniform_is_the_default(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train data --out said_uniform " TINY " --threads 1 --steps 8 --loss hybrid "
                             "--t-sampling uniform"),
                     0);
    assert_int_equal(cu_ddpm("train data --out unsaid_uniform " TINY " --threads 1 --steps 8 --loss hybrid"), 0);
    assert_same_tensors("said_uniform", "unsaid_uniform");
}

/* T 10 and batch 8: the warm-up (10 values for each step) ends after about 18
 * steps, so a run of 40 steps uses importance weights for most of its steps. */
#define IMPORTANCE TINY " --timesteps 10 --batch 8 --t-sampling importance"

/* Interrupted at step 12 (in the warm-up) and at step 25 (after it), each time
 * resumed from the checkpoint: the same tensors, the loss history included, as
 * 40 steps in one go. */
static void test_importance_run_resumed_mid_run_gives_the_bytes_of_an_uninterrupted_one(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train data --out straight " IMPORTANCE " --loss vlb --threads 1 --steps 40"), 0);
    assert_int_equal(cu_ddpm("train data --out resumed " IMPORTANCE " --loss vlb --threads 1 --steps 12"), 0);
    int at12 = full_history_steps("resumed");
    assert_int_equal(cu_ddpm("train data --out resumed --resume --threads 1 --quiet --preview-n 0 --steps 25"), 0);
    int at25 = full_history_steps("resumed");
    assert_int_equal(cu_ddpm("train data --out resumed --resume --threads 1 --quiet --preview-n 0 --steps 40"), 0);
    fprintf(stderr, "  steps with a full history: %d of 10 at step 12, %d at step 25\n", at12, at25);
    assert_true(at12 < 10);
    assert_int_equal(at25, 10);
    assert_same_tensors("resumed", "straight");
    /* the run's config is its checkpoint's: --t-sampling cannot change on resume */
    assert_int_equal(cu_ddpm("train data --out resumed --resume --t-sampling uniform --steps 45"), 2);
}

static void test_importance_sampling_gives_the_same_bytes_at_1_and_2_threads(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train data --out thr1 " IMPORTANCE " --loss hybrid --threads 1 --steps 30"), 0);
    assert_int_equal(cu_ddpm("train data --out thr2 " IMPORTANCE " --loss hybrid --threads 2 --steps 30"), 0);
    assert_int_equal(full_history_steps("thr1"), 10);
    assert_same_tensors("thr1", "thr2");
}

static void test_importance_sampling_with_the_simple_loss_is_refused_with_one_line(void **state)
{
    (void)state;
    const char *const losses[2] = {"", "--loss simple"};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(cu_ddpm("train data --out refused " IMPORTANCE " --steps 3 %s", losses[k]), 2);
        char *err = cu_slurp("err.txt", NULL);
        assert_non_null(err);
        fprintf(stderr, "  %s", err);
        assert_non_null(strstr(err, "--t-sampling importance needs --loss vlb or hybrid"));
        assert_non_null(strchr(err, '\n'));
        assert_string_equal(strchr(err, '\n'), "\n"); /* one line */
        free(err);
        assert_false(exists("refused"));
    }
    assert_int_equal(cu_ddpm("train data --out refused " TINY " --t-sampling loss-aware --steps 3"), 2);
}

static void test_info_shows_how_t_is_drawn(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("train data --out info_run " IMPORTANCE " --loss hybrid --threads 1 --steps 30"), 0);
    assert_int_equal(cu_ddpm("info info_run"), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "\"t_sampling\":\t\"importance\"")); /* the config, as cJSON prints it */
    assert_non_null(strstr(out, "timestep sampling: importance (loss history full for 10 of 10 steps"));
    free(out);
    assert_int_equal(cu_ddpm("info info_run --json --tensors"), 0);
    out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "\"t_sampling\":\t\"importance\""));
    assert_non_null(strstr(out, DDPM_T_HISTORY_TENSOR));
    free(out);
    assert_int_equal(cu_ddpm("train data --out plain " TINY " --steps 1"), 0);
    assert_int_equal(cu_ddpm("info plain"), 0);
    out = cu_slurp("out.txt", NULL);
    assert_non_null(strstr(out, "timestep sampling: uniform\n"));
    free(out);
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
        cmocka_unit_test(test_t_sampling_uniform_is_the_default),
        cmocka_unit_test(test_importance_run_resumed_mid_run_gives_the_bytes_of_an_uninterrupted_one),
        cmocka_unit_test(test_importance_sampling_gives_the_same_bytes_at_1_and_2_threads),
        cmocka_unit_test(test_importance_sampling_with_the_simple_loss_is_refused_with_one_line),
        cmocka_unit_test(test_info_shows_how_t_is_drawn),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
