/* bench.c: `ddpm bench`: how fast a training step and a sampling forward run on
 * this machine, against what OpenBLAS sgemm reaches in the same process.
 *
 * Each phase warms up, then runs REPS timed repetitions of about seconds/REPS
 * each; the reported figure is the median repetition. FLOP convention: a
 * sampling forward costs F = ddpm_unet_forward_flops() per image (multiply-adds
 * x 2 of the convs, linears and attention products); a training step costs 3F
 * per image (forward F, backward 2F: one product for the input gradient and one
 * for the weight gradient per layer). Elementwise work, GroupNorm, softmax and
 * Adam are not counted, so the achieved GFLOP/s is a lower bound on the work
 * done, comparable with PyTorch's usual 3x convention. */
#include <cjson/cJSON.h>
#include <cblas.h>
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "args.h"
#include "cli.h"
#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/ops.h"
#include "ddpm/rng.h"
#include "ddpm/train.h"
#include "ddpm/unet.h"

#define REPS 5

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddpm bench [options]\n"
"\n"
"Measures a training step (forward, MSE, backward, clipping, Adam, EMA on random\n"
"images) and a sampling forward (one network evaluation per image, no dropout)\n"
"of the configured U-Net, and OpenBLAS sgemm in the same process. Prints ms per\n"
"step, images/s, achieved GFLOP/s (training step = 3 x forward FLOPs, from the\n"
"exact count of the network's convs, linears and attention products), sgemm\n"
"GFLOP/s, their ratio and the peak resident memory. Each phase warms up, then\n"
"runs %d repetitions; figures are the median repetition.\n"
"\n"
"  --batch N            images per step (default 64)\n"
"  --micro-batch N      images per forward/backward of the training step\n"
"                       (default: the whole batch; as ddpm train)\n"
"  --threads N          threads for OpenMP and OpenBLAS (default: all cores)\n"
"  --seconds S          timed seconds per phase, split into %d repetitions\n"
"                       (default 10)\n"
"  --profile            also print the per-op-kind time of a training step\n"
"                       (forward and backward) and of a sampling forward, in\n"
"                       ms per step and %% of the step\n"
"  --ops                also time ddpm_conv2d_forward and ddpm_conv2d_backward\n"
"                       (din, dweight, dbias) alone at the default model's\n"
"                       largest shapes (batch --batch, 3x3 stride 1 pad 1,\n"
"                       Cin = Cout = 32 and 64 at 28x28 and 14x14, 64 at 7x7),\n"
"                       in GFLOP/s (backward = 2 x forward FLOPs), im2col path\n"
"                       (ddpm_conv2d with Winograd disabled), next to one\n"
"                       cblas_sgemm call on the same product (M = Cout,\n"
"                       N = batch*H*W, K = Cin*9; OpenBLAS's own threads) and\n"
"                       ddpm_conv3x3_forward/_backward alone (Winograd);\n"
"                       medians of %d repetitions of about --seconds/100 s each\n"
"  --json               print one JSON object on stdout instead of text\n"
"  --precision fp32|bf16  arithmetic of the convolutions' and attention's products\n"
"                       in both phases (as ddpm train --precision and ddpm\n"
"                       sample --precision; default fp32). bf16: products of\n"
"                       bf16 inputs with float32 accumulation (AVX512_BF16\n"
"                       CPUs only)\n"
CLI_HELP_NO_WARNINGS
"model (as ddpm train; docs/design.md, The network):\n"
"  --size S             image side in pixels (default 28)\n"
"  --channels C         1 or 3 (default 1)\n"
ARG_MODEL_HELP
"  --timesteps T        diffusion steps (default 1000)\n"
"\n"
"Run scripts/bench.sh for the table of README.md.\n",
            REPS, REPS, REPS);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef int (*step_fn)(void *ctx);

/* Seconds per call: warm-up, calibrate, then REPS repetitions of ~rep_seconds. */
static int time_phase(step_fn fn, void *ctx, double rep_seconds, double *sec_per_call, long *calls)
{
    int rc;
    for (int i = 0; i < 2; i++)
        if ((rc = fn(ctx)))
            return rc;
    double t0 = omp_get_wtime();
    if ((rc = fn(ctx)))
        return rc;
    double one = omp_get_wtime() - t0;
    long n = (long)(rep_seconds / (one > 1e-6 ? one : 1e-6));
    n = n < 1 ? 1 : n;
    double per[REPS];
    for (int r = 0; r < REPS; r++) {
        t0 = omp_get_wtime();
        for (long i = 0; i < n; i++)
            if ((rc = fn(ctx)))
                return rc;
        per[r] = (omp_get_wtime() - t0) / (double)n;
    }
    *sec_per_call = median(per, REPS);
    *calls = n * REPS;
    return 0;
}

typedef struct {
    ddpm_trainer *tr;
    const float *x0;
} train_ctx;

static int train_step(void *p)
{
    train_ctx *c = p;
    return ddpm_trainer_step(c->tr, c->x0, NULL);
}

typedef struct {
    const ddpm_unet *net;
    const float *params;
    ddpm_unet_workspace *ws;
    float *eps, *x;
    int *t;
    int B;
} sample_ctx;

static int sample_forward(void *p)
{
    sample_ctx *c = p;
    ddpm_unet_forward(c->net, c->params, c->ws, c->eps, c->x, c->t, c->B, NULL);
    return 0;
}

typedef struct {
    int M, N, K;
    float *a, *b, *c;
} gemm_ctx;

static int gemm_call(void *p)
{
    gemm_ctx *g = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->M, g->N, g->K, 1.0f, g->a, g->K, g->b, g->N, 0.0f,
                g->c, g->N);
    return 0;
}

/* GFLOP/s of C[M,N] = A[M,K] B[K,N]. */
static double bench_sgemm(int M, int N, int K, double seconds)
{
    gemm_ctx g = {M, N, K, NULL, NULL, NULL};
    g.a = malloc((size_t)M * K * sizeof(float));
    g.b = malloc((size_t)K * N * sizeof(float));
    g.c = malloc((size_t)M * N * sizeof(float));
    double gflops = 0;
    if (g.a && g.b && g.c) {
        for (size_t i = 0; i < (size_t)M * K; i++)
            g.a[i] = (float)(i % 7) * 0.1f;
        for (size_t i = 0; i < (size_t)K * N; i++)
            g.b[i] = (float)(i % 5) * 0.1f;
        double s;
        long calls;
        time_phase(gemm_call, &g, seconds / REPS, &s, &calls);
        gflops = 2.0 * M * N * K / s * 1e-9;
    }
    free(g.a);
    free(g.b);
    free(g.c);
    return gflops;
}

/* ---- --ops: conv2d alone against sgemm on the same product ---------------- */

typedef struct {
    int B, C, HW; /* Cin = Cout = C, H = W = HW, 3x3 stride 1 pad 1 */
    float *in, *weight, *bias, *out, *scratch, *dout, *din, *dweight, *dbias, *scratch3;
} conv_ctx;

static int conv_forward_call(void *p)
{
    conv_ctx *c = p;
    ddpm_conv2d_forward(c->out, c->scratch, c->in, c->weight, c->bias, c->B, c->C, c->HW, c->HW, c->C, 3, 1, 1);
    return 0;
}

static int conv_backward_call(void *p)
{
    conv_ctx *c = p;
    ddpm_conv2d_backward(c->din, 1.0f, c->dweight, c->dbias, c->scratch, c->dout, c->in, c->weight, c->B, c->C, c->HW,
                         c->HW, c->C, 3, 1, 1);
    return 0;
}

static int conv3x3_forward_call(void *p)
{
    conv_ctx *c = p;
    ddpm_conv3x3_forward(c->out, c->scratch3, c->in, c->weight, c->bias, c->B, c->C, c->HW, c->HW, c->C);
    return 0;
}

static int conv3x3_backward_call(void *p)
{
    conv_ctx *c = p;
    ddpm_conv3x3_backward(c->din, 1.0f, c->dweight, c->dbias, c->scratch3, c->dout, c->in, c->weight, c->B, c->C,
                          c->HW, c->HW, c->C);
    return 0;
}

#define N_OP_SHAPES 5

typedef struct {
    int C, HW;
    double fwd_gflops, bwd_gflops, sgemm_gflops, wino_fwd_gflops, wino_bwd_gflops;
} op_result;

/* Times one conv shape; 0 or DDPM_ENOMEM. */
static int bench_conv_shape(int B, op_result *r, double rep_seconds)
{
    conv_ctx c = {B, r->C, r->HW, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    const size_t act = (size_t)B * r->C * r->HW * r->HW, wn = (size_t)r->C * r->C * 9;
    const size_t sn = ddpm_conv2d_scratch_floats(B, r->C, r->HW, r->HW, r->C, 3, 1, 1);
    c.in = ddpm_malloc(act, sizeof(float));
    c.out = ddpm_malloc(act, sizeof(float));
    c.dout = ddpm_malloc(act, sizeof(float));
    c.din = ddpm_calloc(act, sizeof(float));
    c.weight = ddpm_malloc(wn, sizeof(float));
    c.dweight = ddpm_calloc(wn, sizeof(float));
    c.bias = ddpm_calloc((size_t)r->C, sizeof(float));
    c.dbias = ddpm_calloc((size_t)r->C, sizeof(float));
    c.scratch = ddpm_malloc(sn, sizeof(float));
    c.scratch3 = ddpm_malloc(ddpm_conv3x3_scratch_floats(B, r->C, r->HW, r->HW, r->C), sizeof(float));
    int rc = 0;
    if (!c.in || !c.out || !c.dout || !c.din || !c.weight || !c.dweight || !c.bias || !c.dbias || !c.scratch ||
        !c.scratch3) {
        rc = DDPM_ENOMEM;
    } else {
        ddpm_rng rng;
        ddpm_rng_init(&rng, 2, DDPM_STREAM_INIT);
        ddpm_rng_normal_fill(&rng, c.in, act);
        ddpm_rng_normal_fill(&rng, c.dout, act);
        ddpm_rng_normal_fill(&rng, c.weight, wn);
        const double flop = 2.0 * r->C * (double)B * r->HW * r->HW * r->C * 9;
        double s;
        long calls;
        ddpm_conv2d_enable_winograd(0); /* the im2col path */
        time_phase(conv_forward_call, &c, rep_seconds, &s, &calls);
        r->fwd_gflops = flop / s * 1e-9;
        time_phase(conv_backward_call, &c, rep_seconds, &s, &calls);
        r->bwd_gflops = 2 * flop / s * 1e-9;
        ddpm_conv2d_enable_winograd(1);
        time_phase(conv3x3_forward_call, &c, rep_seconds, &s, &calls);
        r->wino_fwd_gflops = flop / s * 1e-9;
        time_phase(conv3x3_backward_call, &c, rep_seconds, &s, &calls);
        r->wino_bwd_gflops = 2 * flop / s * 1e-9;
        r->sgemm_gflops = bench_sgemm(r->C, B * r->HW * r->HW, r->C * 9, rep_seconds * REPS);
    }
    free(c.in);
    free(c.out);
    free(c.dout);
    free(c.din);
    free(c.weight);
    free(c.dweight);
    free(c.bias);
    free(c.dbias);
    free(c.scratch);
    free(c.scratch3);
    return rc;
}

static int bench_ops(int B, double seconds, op_result *res)
{
    static const int shapes[N_OP_SHAPES][2] = {{32, 28}, {64, 28}, {32, 14}, {64, 14}, {64, 7}};
    for (int i = 0; i < N_OP_SHAPES; i++) {
        res[i].C = shapes[i][0];
        res[i].HW = shapes[i][1];
        int rc = bench_conv_shape(B, &res[i], seconds / 100 > 0.01 ? seconds / 100 : 0.01);
        if (rc)
            return rc;
    }
    return 0;
}

static void print_ops(int B, const op_result *res)
{
    printf("\nconv2d 3x3 stride 1 pad 1, batch %d, Cin = Cout (GFLOP/s of direct-convolution FLOPs;\n"
           "backward = din + dweight + dbias, 2 x forward FLOPs; forward/backward: conv2d's im2col\n"
           "path; sgemm = one cblas_sgemm M = Cout, N = batch*H*W, K = Cin*9; wino = ddpm_conv3x3 alone, Winograd F(4x4) or F(2x2))\n", B);
    printf("  %-14s %-16s %9s %9s %9s %8s %8s %9s %9s\n", "shape", "sgemm MxNxK", "forward", "backward", "sgemm",
           "fwd/gemm", "bwd/gemm", "wino fwd", "wino bwd");
    for (int i = 0; i < N_OP_SHAPES; i++) {
        char shape[32], mnk[32];
        snprintf(shape, sizeof shape, "C%d %dx%d", res[i].C, res[i].HW, res[i].HW);
        snprintf(mnk, sizeof mnk, "%dx%dx%d", res[i].C, B * res[i].HW * res[i].HW, res[i].C * 9);
        printf("  %-14s %-16s %9.1f %9.1f %9.1f %8.2f %8.2f %9.1f %9.1f\n", shape, mnk, res[i].fwd_gflops,
               res[i].bwd_gflops, res[i].sgemm_gflops, res[i].fwd_gflops / res[i].sgemm_gflops,
               res[i].bwd_gflops / res[i].sgemm_gflops, res[i].wino_fwd_gflops, res[i].wino_bwd_gflops);
    }
}

static cJSON *ops_json(int B, const op_result *res)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < N_OP_SHAPES; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "op", "conv2d 3x3 s1 p1");
        cJSON_AddNumberToObject(o, "batch", B);
        cJSON_AddNumberToObject(o, "cin", res[i].C);
        cJSON_AddNumberToObject(o, "cout", res[i].C);
        cJSON_AddNumberToObject(o, "h", res[i].HW);
        cJSON_AddNumberToObject(o, "w", res[i].HW);
        cJSON_AddNumberToObject(o, "forward_gflops", res[i].fwd_gflops);
        cJSON_AddNumberToObject(o, "backward_gflops", res[i].bwd_gflops);
        cJSON_AddNumberToObject(o, "conv3x3_forward_gflops", res[i].wino_fwd_gflops);
        cJSON_AddNumberToObject(o, "conv3x3_backward_gflops", res[i].wino_bwd_gflops);
        char mnk[48];
        snprintf(mnk, sizeof mnk, "%dx%dx%d", res[i].C, B * res[i].HW * res[i].HW, res[i].C * 9);
        cJSON_AddStringToObject(o, "sgemm_shape", mnk);
        cJSON_AddNumberToObject(o, "sgemm_gflops", res[i].sgemm_gflops);
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

typedef struct {
    double fwd[DDPM_PROF_COUNT], bwd[DDPM_PROF_COUNT];
    double step; /* seconds per step, profiling on */
} profile;

/* Runs `steps` calls with profiling on and returns per-step averages. */
static int run_profile(step_fn fn, void *ctx, ddpm_unet_workspace *ws, long steps, profile *pr)
{
    ddpm_unet_profile_enable(ws, 1);
    double t0 = omp_get_wtime();
    int rc = 0;
    for (long i = 0; i < steps && !rc; i++)
        rc = fn(ctx);
    pr->step = (omp_get_wtime() - t0) / (double)steps;
    ddpm_unet_profile_read(ws, pr->fwd, pr->bwd);
    ddpm_unet_profile_enable(ws, 0);
    for (int k = 0; k < DDPM_PROF_COUNT; k++) {
        pr->fwd[k] /= (double)steps;
        pr->bwd[k] /= (double)steps;
    }
    return rc;
}

static void print_profile(const char *title, const profile *pr, int with_backward)
{
    printf("\n%s: %.2f ms per step with profiling on\n", title, pr->step * 1e3);
    printf("  %-12s %10s %6s", "op kind", "forward ms", "%");
    if (with_backward)
        printf(" %11s %6s", "backward ms", "%");
    printf("\n");
    double sf = 0, sb = 0;
    for (int k = 0; k < DDPM_PROF_COUNT; k++) {
        sf += pr->fwd[k];
        sb += pr->bwd[k];
        if (!with_backward && k == DDPM_PROF_ZERO)
            continue;
        printf("  %-12s %10.2f %5.1f%%", ddpm_unet_profile_name(k), pr->fwd[k] * 1e3, 100 * pr->fwd[k] / pr->step);
        if (with_backward)
            printf(" %11.2f %5.1f%%", pr->bwd[k] * 1e3, 100 * pr->bwd[k] / pr->step);
        printf("\n");
    }
    printf("  %-12s %10.2f %5.1f%%", "total", sf * 1e3, 100 * sf / pr->step);
    if (with_backward)
        printf(" %11.2f %5.1f%%", sb * 1e3, 100 * sb / pr->step);
    printf("\n");
    double other = pr->step - sf - sb;
    printf("  %-12s %10.2f %5.1f%%  (%s)\n", "other", other * 1e3, 100 * other / pr->step,
           with_backward ? "q_sample, MSE, zero-grad, clipping, Adam, EMA" : "outside the ops");
}

static cJSON *profile_json(const profile *pr, int with_backward)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "ms_per_step", pr->step * 1e3);
    cJSON *f = cJSON_AddObjectToObject(o, "forward_ms");
    cJSON *b = with_backward ? cJSON_AddObjectToObject(o, "backward_ms") : NULL;
    double s = 0;
    for (int k = 0; k < DDPM_PROF_COUNT; k++) {
        cJSON_AddNumberToObject(f, ddpm_unet_profile_name(k), pr->fwd[k] * 1e3);
        if (b)
            cJSON_AddNumberToObject(b, ddpm_unet_profile_name(k), pr->bwd[k] * 1e3);
        s += pr->fwd[k] + pr->bwd[k];
    }
    cJSON_AddNumberToObject(o, "other_ms", (pr->step - s) * 1e3);
    return o;
}

enum {
    O_BATCH = 256, O_THREADS, O_SECONDS, O_PROFILE, O_OPS, O_JSON, O_HELP, O_MODEL, O_MICRO_BATCH, O_PRECISION,
};

/* What one bench run measured. */
typedef struct {
    const ddpm_unet_config *m;
    size_t n_params;
    double flops;
    int B, micro_batch, n_threads;
    const char *cfgstr, *coretype;
    double s_train, s_sample;
    long n_train, n_sample;
    double g_square, g_model;
    int gm, gn, gk;
    double rss_mb;
    int do_profile;
    const profile *ptrain, *psample;
    int do_ops;
    const op_result *ops;
    double train_ips, sample_ips, train_gf, sample_gf;
    ddpm_precision precision; /* the convs' and attention's products, both phases */
} bench_results;

static void print_json(const bench_results *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *mo = cJSON_AddObjectToObject(o, "model");
    char list[128];
    cJSON_AddNumberToObject(mo, "size", r->m->image_size);
    cJSON_AddNumberToObject(mo, "channels", r->m->in_channels);
    cJSON_AddNumberToObject(mo, "ch", r->m->ch);
    ddpm_format_int_list(list, sizeof list, r->m->ch_mult, r->m->n_levels);
    cJSON_AddStringToObject(mo, "ch_mult", list);
    cJSON_AddNumberToObject(mo, "res_blocks", r->m->num_res_blocks);
    ddpm_format_int_list(list, sizeof list, r->m->attn_res, r->m->n_attn);
    cJSON_AddStringToObject(mo, "attn", list);
    cJSON_AddNumberToObject(mo, "groups", r->m->groups);
    cJSON_AddNumberToObject(mo, "dropout", r->m->dropout);
    cJSON_AddBoolToObject(mo, "scale_shift_norm", r->m->scale_shift_norm);
    cJSON_AddNumberToObject(mo, "params", (double)r->n_params);
    cJSON_AddNumberToObject(mo, "forward_gflop_per_image", r->flops * 1e-9);
    cJSON_AddNumberToObject(o, "batch", r->B);
    cJSON_AddNumberToObject(o, "micro_batch", r->micro_batch);
    cJSON_AddNumberToObject(o, "threads", r->n_threads);
    cJSON_AddStringToObject(o, "openblas", r->cfgstr ? r->cfgstr : "");
    cJSON_AddStringToObject(o, "openblas_coretype", r->coretype ? r->coretype : "");
    cJSON_AddStringToObject(o, "kernels", ddpm_conv3x3_isa());
    cJSON_AddStringToObject(o, "flop_convention", "train step = 3 x forward FLOPs");
    cJSON *jt = cJSON_AddObjectToObject(o, "train");
    cJSON_AddNumberToObject(jt, "ms_per_step", r->s_train * 1e3);
    cJSON_AddNumberToObject(jt, "images_per_sec", r->train_ips);
    cJSON_AddNumberToObject(jt, "gflops", r->train_gf);
    cJSON_AddNumberToObject(jt, "steps_timed", (double)r->n_train);
    cJSON *js = cJSON_AddObjectToObject(o, "sample_forward");
    cJSON_AddNumberToObject(js, "ms_per_step", r->s_sample * 1e3);
    cJSON_AddNumberToObject(js, "images_per_sec", r->sample_ips);
    cJSON_AddNumberToObject(js, "gflops", r->sample_gf);
    cJSON_AddNumberToObject(js, "steps_timed", (double)r->n_sample);
    cJSON_AddStringToObject(js, "precision", r->precision == DDPM_PRECISION_BF16 ? "bf16" : "fp32");
    cJSON_AddStringToObject(jt, "precision", r->precision == DDPM_PRECISION_BF16 ? "bf16" : "fp32");
    cJSON *jg = cJSON_AddObjectToObject(o, "sgemm");
    cJSON_AddNumberToObject(jg, "gflops_1024", r->g_square);
    snprintf(list, sizeof list, "%dx%dx%d", r->gm, r->gn, r->gk);
    cJSON_AddStringToObject(jg, "model_shape", list);
    cJSON_AddNumberToObject(jg, "gflops_model_shape", r->g_model);
    cJSON_AddNumberToObject(o, "train_vs_sgemm", r->train_gf / r->g_square);
    cJSON_AddNumberToObject(o, "sample_vs_sgemm", r->sample_gf / r->g_square);
    cJSON_AddNumberToObject(o, "peak_rss_mb", r->rss_mb);
    if (r->do_profile) {
        cJSON_AddItemToObject(o, "profile_train", profile_json(r->ptrain, 1));
        cJSON_AddItemToObject(o, "profile_sample", profile_json(r->psample, 0));
    }
    if (r->do_ops)
        cJSON_AddItemToObject(o, "ops", ops_json(r->B, r->ops));
    char *s = cJSON_PrintUnformatted(o);
    if (s)
        puts(s);
    free(s);
    cJSON_Delete(o);
}

static void print_text(const bench_results *r)
{
    printf("model     %dx%dx%d, ch %d, ch-mult ", r->m->image_size, r->m->image_size, r->m->in_channels, r->m->ch);
    for (int i = 0; i < r->m->n_levels; i++)
        printf(i ? ",%d" : "%d", r->m->ch_mult[i]);
    printf(", %d res blocks, attn ", r->m->num_res_blocks);
    for (int i = 0; i < r->m->n_attn; i++)
        printf(i ? ",%d" : "%d", r->m->attn_res[i]);
    printf("%s; %zu params, %.3f GFLOP/image forward\n", r->m->n_attn ? "" : "none", r->n_params,
           r->flops * 1e-9);
    printf("setup     batch %d (micro-batch %d), %d threads, %s kernels, %s%s%s\n", r->B, r->micro_batch, r->n_threads,
           ddpm_conv3x3_isa(), r->cfgstr ? r->cfgstr : "OpenBLAS",
           r->coretype ? ", OPENBLAS_CORETYPE=" : "", r->coretype ? r->coretype : "");
    printf("train     %8.2f ms/step  %8.1f images/s  %7.1f GFLOP/s  (3 x forward FLOPs%s)\n", r->s_train * 1e3,
           r->train_ips, r->train_gf, r->precision == DDPM_PRECISION_BF16 ? "; products in bf16" : "");
    printf("sample    %8.2f ms/step  %8.1f images/s  %7.1f GFLOP/s  (one forward, no dropout%s)\n",
           r->s_sample * 1e3, r->sample_ips, r->sample_gf,
           r->precision == DDPM_PRECISION_BF16 ? "; products in bf16" : "");
    printf("sgemm     %7.1f GFLOP/s at 1024^3, %.1f GFLOP/s at %dx%dx%d (model shape)\n", r->g_square, r->g_model,
           r->gm, r->gn, r->gk);
    printf("ratio     train %.2f, sample %.2f of sgemm 1024^3\n", r->train_gf / r->g_square, r->sample_gf / r->g_square);
    printf("peak RSS  %.1f MB\n", r->rss_mb);
    if (r->do_profile) {
        print_profile("training step", r->ptrain, 1);
        print_profile("sampling forward", r->psample, 0);
    }
    if (r->do_ops)
        print_ops(r->B, r->ops);
}

int cmd_bench(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"batch", required_argument, 0, O_BATCH}, {"threads", required_argument, 0, O_THREADS},
        {"seconds", required_argument, 0, O_SECONDS}, {"profile", no_argument, 0, O_PROFILE},
        {"ops", no_argument, 0, O_OPS}, {"micro-batch", required_argument, 0, O_MICRO_BATCH},
        {"json", no_argument, 0, O_JSON}, {"help", no_argument, 0, O_HELP},
        {"precision", required_argument, 0, O_PRECISION}, ARG_MODEL_LONGOPTS(O_MODEL), {0, 0, 0, 0},
    };
    ddpm_run_config cfg;
    ddpm_run_config_default(&cfg);
    cfg.batch = 64;
    int threads = 0, micro_batch = 0, opt, bad = 0, do_profile = 0, do_ops = 0, json = 0, longindex = 0;
    double seconds = 10;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        switch (opt) {
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_BATCH: bad |= arg_int("batch", optarg, 1, 65536, &cfg.batch); break;
        case O_THREADS: bad |= arg_int("threads", optarg, 1, 1024, &threads); break;
        case O_MICRO_BATCH: bad |= arg_int("micro-batch", optarg, 1, 65536, &micro_batch); break;
        case O_SECONDS: bad |= arg_double("seconds", optarg, 0.01, 1e6, &seconds); break;
        case O_PROFILE: do_profile = 1; break;
        case O_OPS: do_ops = 1; break;
        case O_JSON: json = 1; break;
        case O_PRECISION: bad |= arg_precision(optarg, &cfg.precision); break;
        case O_MODEL:
            bad |= arg_model_flag(longopts[longindex].name, optarg, &cfg) != 0;
            break;
        default:
            cli_error("bench: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("bench");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    if (optind != argc) {
        cli_error("bench: unexpected argument '%s'", argv[optind]);
        return cli_usage_error("bench");
    }
    ddpm_threads_set(threads);
    int n_threads = omp_get_max_threads(), B = cfg.batch;

    ddpm_trainer *tr = NULL;
    ddpm_unet_workspace *fws = NULL;
    float *x0 = NULL, *xs = NULL, *eps = NULL;
    int *t = NULL;
    int rc = ddpm_trainer_create(&tr, &cfg, micro_batch);
    const ddpm_unet_config *m = &cfg.model;
    size_t D = (size_t)m->in_channels * m->image_size * m->image_size;
    if (!rc)
        rc = ddpm_unet_workspace_create(&fws, tr->net, B, 0);
    if (!rc)
        rc = ddpm_unet_workspace_set_precision(fws, cfg.precision);
    if (!rc) {
        x0 = ddpm_malloc((size_t)B * D, sizeof(float));
        xs = ddpm_malloc((size_t)B * D, sizeof(float));
        eps = ddpm_malloc((size_t)B * D, sizeof(float));
        t = ddpm_calloc((size_t)B, sizeof(int));
        if (!x0 || !xs || !eps || !t)
            rc = DDPM_ENOMEM;
    }
    if (rc) {
        cli_error("%s", ddpm_last_error());
        goto done;
    }
    /* random images in [-1, 1] and random steps: the speed does not depend on them */
    ddpm_rng rng;
    ddpm_rng_init(&rng, 1, DDPM_STREAM_INIT);
    ddpm_rng_uniform_fill(&rng, x0, (size_t)B * D);
    for (size_t i = 0; i < (size_t)B * D; i++)
        x0[i] = 2 * x0[i] - 1;
    ddpm_rng_normal_fill(&rng, xs, (size_t)B * D);
    for (int b = 0; b < B; b++)
        t[b] = (int)ddpm_rng_below(&rng, (uint64_t)cfg.timesteps);

    double flops = ddpm_unet_forward_flops(tr->net);
    double rep = seconds / REPS;
    if (!json)
        fprintf(stderr, "ddpm bench: %zu parameters, %.3f GFLOP per image forward, batch %d, %d threads, "
                        "%.1f s per phase...\n",
                tr->net->n_params, flops * 1e-9, B, n_threads, seconds);

    double s_train, s_sample;
    long n_train, n_sample;
    train_ctx tc = {tr, x0};
    if ((rc = time_phase(train_step, &tc, rep, &s_train, &n_train))) {
        cli_error("%s", ddpm_last_error());
        goto done;
    }
    /* the EMA weights are what sampling uses */
    sample_ctx sc = {tr->net, tr->ema, fws, eps, xs, t, B};
    time_phase(sample_forward, &sc, rep, &s_sample, &n_sample);

    /* sgemm: a square 1024^3 and the model's largest conv product shape */
    double g_square = bench_sgemm(1024, 1024, 1024, seconds / 4);
    int mc = m->ch * m->ch_mult[0];
    int gm = mc, gn = B * m->image_size * m->image_size, gk = mc * 9;
    double g_model = bench_sgemm(gm, gn, gk, seconds / 4);

    double train_ips = B / s_train, sample_ips = B / s_sample;
    double train_gf = 3 * flops * train_ips * 1e-9, sample_gf = flops * sample_ips * 1e-9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mb = (double)ru.ru_maxrss / 1024.0;

    profile ptrain, psample;
    if (do_profile) {
        long steps = n_train / REPS > 3 ? n_train / REPS : 3;
        if ((rc = run_profile(train_step, &tc, tr->ws, steps, &ptrain))) {
            cli_error("%s", ddpm_last_error());
            goto done;
        }
        steps = n_sample / REPS > 3 ? n_sample / REPS : 3;
        run_profile(sample_forward, &sc, fws, steps, &psample);
    }
    op_result ops[N_OP_SHAPES];
    if (do_ops && (rc = bench_ops(B, seconds, ops))) {
        cli_error("%s", ddpm_last_error());
        goto done;
    }
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    char *cfgstr = openblas_get_config();

    bench_results res = {m, tr->net->n_params, flops, B, tr->micro_batch, n_threads, cfgstr, coretype, s_train,
                         s_sample, n_train, n_sample, g_square, g_model, gm, gn, gk, rss_mb, do_profile, &ptrain,
                         &psample, do_ops, ops, train_ips, sample_ips, train_gf, sample_gf, cfg.precision};
    if (json)
        print_json(&res);
    else
        print_text(&res);
done:
    free(x0);
    free(xs);
    free(eps);
    free(t);
    ddpm_unet_workspace_free(fws);
    ddpm_trainer_free(tr);
    return rc ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
