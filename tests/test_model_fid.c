/* The FID of a model's samples (model_fid.h) and `ddpm train --eval-fid`, on
 * the reduced-width test Inception (tests/data/inception/inception_w16.pth):
 * the logged value is the FID `ddpm fid` gives for the same samples written by
 * `ddpm sample`, and the library's recomputation from the checkpoint; bad
 * weights or statistics stop the run before step 1, in one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fidutil.h"
#include "ddpm/fid.h"
#include "ddpm/inception.h"
#include "ddpm/model.h"
#include "ddpm/model_fid.h"

#define W16 DDPM_TEST_DATA "/inception/inception_w16.pth"
/* 8x8 gray images, T = 20: the default sampler runs DDIM with min(100, T) = 20 steps */
#define TINY "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 20 --batch 4 --seed 3"

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(cu_dir, sizeof cu_dir, "model_fid"))
        return -1;
    return cu_make_gray_folder("data", 6, 1) || cu_make_gray_folder("ref", 5, 7);
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(cu_dir);
}

/* The eval_fid values of a log, by step: count of lines, steps and values. */
static int read_fid_lines(const char *log_name, long *steps, double *fids, int *ns, int max)
{
    char *text = cu_slurp(log_name, NULL);
    int count = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n"))
        if (strstr(line, "\"eval_fid\"") && count < max) {
            steps[count] = (long)tu_json_number(line, "step");
            fids[count] = tu_json_number(line, "eval_fid");
            ns[count] = (int)tu_json_number(line, "eval_fid_n");
            count++;
        }
    free(text);
    return count;
}

/* Evaluations at every --eval-every steps and at the last step; the last one
 * equals `ddpm fid` of `ddpm sample`'s images of the final checkpoint with the
 * run's seed (another batch size than the run's micro-batch), and the
 * library's FID of the checkpoint's model. */
static void test_train_eval_fid_logs_the_fid_ddpm_fid_gives_for_the_same_samples(void **state)
{
    (void)state;
    assert_int_equal(cu_ddpm("fid --save-stats ref.safetensors ref --inception '%s' --quiet", W16), 0);
    assert_int_equal(cu_ddpm("train data --out run " TINY " --steps 5 --log-every 5 --preview-n 0 --quiet "
                             "--eval-every 2 --eval-fid ref.safetensors --eval-fid-n 7 --inception '%s'",
                             W16),
                     0);
    long steps[8];
    double fids[8];
    int ns[8];
    int count = read_fid_lines("run/log.jsonl", steps, fids, ns, 8);
    assert_int_equal(count, 3);
    assert_int_equal(steps[0], 2);
    assert_int_equal(steps[1], 4);
    assert_int_equal(steps[2], 5);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(ns[k], 7);
        assert_true(isfinite(fids[k]) && fids[k] > 0);
    }

    /* the same images through the files: sample (DDIM, the default, at T steps), then ddpm fid */
    assert_int_equal(
        cu_ddpm("sample run --n 7 --steps 20 --seed 3 --batch 3 --out-dir samples --no-grid --quiet"), 0);
    assert_int_equal(cu_ddpm("fid samples ref.safetensors --inception '%s' --json --quiet", W16), 0);
    char *out = cu_slurp("out.txt", NULL);
    assert_non_null(out);
    double fid_files = tu_json_number(out, "fid");
    free(out);
    /* both are printed with 10 significant digits; the pixels, features and
       statistics are the same numbers, so only the printing rounds */
    assert_close(fids[2], fid_files, 1e-9 * fid_files);

    /* the library from the checkpoint: the same number at full precision */
    char path[512];
    snprintf(path, sizeof path, "%s/run/checkpoint.safetensors", cu_dir);
    ddpm_model m;
    assert_int_equal(ddpm_model_open(&m, path, DDPM_WEIGHTS_EMA), 0);
    ddpm_inception *net = NULL;
    assert_int_equal(ddpm_inception_load(&net, W16), 0);
    ddpm_fid_stats ref;
    snprintf(path, sizeof path, "%s/ref.safetensors", cu_dir);
    assert_int_equal(ddpm_fid_stats_load(&ref, path, ddpm_inception_sha256(net)), 0);
    ddpm_model_fid_config c;
    ddpm_model_fid_config_default(&c, &m);
    assert_int_equal(c.sampler.kind, DDPM_SAMPLER_DPMPP_2M_SDE);
    assert_int_equal(c.sampler.steps, 20);
    c.n = 7;
    c.seed = 3;
    double fid = 0;
    ddpm_fid_stats samples;
    assert_int_equal(ddpm_model_fid(&fid, &m, &c, net, &ref, &samples), 0);
    assert_close(fid, fids[2], 1e-9 * fid);
    assert_int_equal(samples.n, 7);
    /* another seed draws other images: the seed is used */
    c.seed = 4;
    double fid_other = 0;
    assert_int_equal(ddpm_model_fid(&fid_other, &m, &c, net, &ref, NULL), 0);
    assert_true(fabs(fid_other - fid) > 1e-6 * fid);
    ddpm_fid_stats_free(&samples);
    ddpm_fid_stats_free(&ref);
    ddpm_inception_free(net);
    ddpm_model_close(&m);
}

/* Statistics of other weights, missing weights, a missing statistics file:
 * one line, exit 1, and no run folder; flags without their partner: exit 2. */
static void test_train_eval_fid_refuses_bad_weights_and_statistics_before_step_1(void **state)
{
    (void)state;
    cu_write_foreign_stats("foreign.safetensors", 128);
    assert_int_equal(cu_ddpm("fid --save-stats own.safetensors ref --inception '%s' --quiet", W16), 0);

    assert_int_equal(cu_ddpm("train data --out bad1 " TINY
                             " --steps 2 --quiet --eval-fid foreign.safetensors "
                             "--eval-fid-n 4 --inception '%s'",
                             W16),
                     1);
    assert_true(cu_stderr_one_line("foreign.safetensors: statistics made with other Inception weights"));
    assert_true(cu_absent("bad1"));

    assert_int_equal(cu_ddpm("train data --out bad2 " TINY
                             " --steps 2 --quiet --eval-fid own.safetensors --eval-fid-n 4 "
                             "--inception missing.pth"),
                     1);
    assert_true(cu_stderr_one_line("missing.pth"));
    assert_true(cu_absent("bad2"));

    assert_int_equal(cu_ddpm("train data --out bad3 " TINY
                             " --steps 2 --quiet --eval-fid nothing.safetensors "
                             "--eval-fid-n 4 --inception '%s'",
                             W16),
                     1);
    assert_true(cu_stderr_one_line("nothing.safetensors"));
    assert_true(cu_absent("bad3"));

    /* no --inception, no $DDPM_INCEPTION, nothing in ~/.cache/ddpm: what to download */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && env -u DDPM_INCEPTION HOME='%s' '%s' train data --out bad4 " TINY
             " --steps 2 --quiet --eval-fid own.safetensors --eval-fid-n 4 >out.txt 2>err.txt",
             cu_dir, cu_dir, DDPM_BINARY);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    assert_true(cu_stderr_one_line("pt_inception-2015-12-05-6726825d.pth"));
    assert_true(cu_stderr_has("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"));
    assert_true(cu_absent("bad4"));

    assert_int_equal(cu_ddpm("train data --out bad5 " TINY " --steps 2 --quiet --eval-fid own.safetensors "
                             "--inception '%s'",
                             W16),
                     2);
    assert_true(cu_stderr_has("--eval-fid needs --eval-fid-n"));
    assert_int_equal(cu_ddpm("train data --out bad6 " TINY " --steps 2 --quiet --eval-fid-n 4"), 2);
    assert_true(cu_stderr_has("--eval-fid-n applies to --eval-fid"));
    assert_true(cu_absent("bad5") && cu_absent("bad6"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_eval_fid_logs_the_fid_ddpm_fid_gives_for_the_same_samples),
        cmocka_unit_test(test_train_eval_fid_refuses_bad_weights_and_statistics_before_step_1),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
