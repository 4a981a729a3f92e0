/* Times the elementwise kernels of a training step alone, one thread, at the
 * default model's largest activation (batch 64 x 64 channels x 14x14, 802,816
 * floats; 8 GroupNorm groups): the fused GroupNorm + SiLU forward, SiLU forward
 * and backward, dropout backward from the saved bits; and the GroupNorm backward
 * (beta 0, as the ResNet blocks call it) at that shape and at 64 x 32 channels x
 * 28x28, with an FNV-1a hash of its outputs, so that two builds can be compared
 * for bytes as well as time. Prints the minimum of
 * --reps calls of each (the minimum, not the median: on a shared machine the
 * other processes only ever add time). Link it against a build's libddpm.a
 * (docs/speed.md, Measuring, has the commands):
 *   gcc -O2 -std=c11 -fopenmp -Iinclude bench/elementwise.c BUILD/libddpm.a -lm -o elementwise */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/ops.h"

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211u;
    return h;
}

/* The minimum over reps calls of ddpm_groupnorm_backward at B x C x HW, G groups,
 * on x and d of B C HW floats; *hash the FNV-1a of din, dgamma, dbeta after the
 * first call (dgamma, dbeta zeroed before it). */
static double time_groupnorm_backward(int reps, const float *x, const float *d, float *din, int B, int C,
                                      int HW, int G, uint64_t *hash)
{
    float *out = malloc((size_t)B * C * HW * sizeof *out), *mean = malloc((size_t)B * G * sizeof *mean);
    float *rstd = malloc((size_t)B * G * sizeof *rstd), *gamma = malloc((size_t)C * sizeof *gamma);
    float *beta = malloc((size_t)C * sizeof *beta), *dgamma = calloc((size_t)C, sizeof *dgamma);
    float *dbeta = calloc((size_t)C, sizeof *dbeta);
    double best = 1e9;
    if (!out || !mean || !rstd || !gamma || !beta || !dgamma || !dbeta)
        exit(1);
    for (int c = 0; c < C; c++)
        gamma[c] = 1.0f + 0.01f * (float)c, beta[c] = 0.1f * (float)c - 3.0f;
    ddpm_groupnorm_forward(out, mean, rstd, x, gamma, beta, B, C, HW, G, 1e-5f);
    for (int r = 0; r < reps; r++) {
        double t = omp_get_wtime();
        ddpm_groupnorm_backward(din, 0.0f, dgamma, dbeta, d, x, mean, rstd, gamma, B, C, HW, G);
        t = omp_get_wtime() - t;
        if (t < best)
            best = t;
        if (r == 0)
            *hash = fnv1a(fnv1a(fnv1a(14695981039346656037u, din, (size_t)B * C * HW * sizeof *din), dgamma,
                                (size_t)C * sizeof *dgamma),
                          dbeta, (size_t)C * sizeof *dbeta);
    }
    free(out), free(mean), free(rstd), free(gamma), free(beta), free(dgamma), free(dbeta);
    return best;
}

static double best_of(double *best, double t0, double t1)
{
    if (t1 - t0 < *best)
        *best = t1 - t0;
    return t1;
}

int main(int argc, char **argv)
{
    int reps = 50;
    if (argc == 3 && strcmp(argv[1], "--reps") == 0)
        reps = atoi(argv[2]);
    if (reps < 1) {
        fprintf(stderr, "usage: elementwise [--reps N]\n");
        return 2;
    }
    omp_set_num_threads(1);
    const int B = 64, C = 64, HW = 196, G = 8;
    const size_t n = (size_t)B * C * HW;
    float *x = malloc(n * sizeof *x), *out = malloc(n * sizeof *out), *norm = malloc(n * sizeof *norm);
    float *d = malloc(n * sizeof *d), *din = malloc(n * sizeof *din);
    float gamma[64], beta[64], mean[64 * 8], rstd[64 * 8];
    uint8_t *bits = malloc(ddpm_dropout_mask_bytes(n));
    if (!x || !out || !norm || !d || !din || !bits)
        return 1;
    unsigned s = 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        x[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 6.0f;
        d[i] = 0.3f * x[i];
    }
    for (int c = 0; c < C; c++)
        gamma[c] = 1.0f + 0.01f * (float)c, beta[c] = 0.1f * (float)c - 3.0f;
    ddpm_dropout_forward(out, bits, x, 0.1f, n, 1, 0);
    double best[5] = {1e9, 1e9, 1e9, 1e9, 1e9};
    for (int r = 0; r < reps; r++) {
        double t = omp_get_wtime();
        ddpm_groupnorm_silu_forward(out, norm, mean, rstd, x, gamma, beta, B, C, HW, G, 1e-5f);
        t = best_of(&best[0], t, omp_get_wtime());
        ddpm_silu_forward(out, x, n);
        t = best_of(&best[1], t, omp_get_wtime());
        ddpm_silu_backward(din, 0.0f, d, x, n);
        t = best_of(&best[2], t, omp_get_wtime());
        ddpm_dropout_backward(din, 0.0f, d, bits, 0.1f, n);
        t = best_of(&best[3], t, omp_get_wtime());
        ddpm_dropout_backward(din, 1.0f, d, bits, 0.1f, n);
        best_of(&best[4], t, omp_get_wtime());
    }
    printf("%zu floats, 1 thread, min of %d calls (ms): groupnorm_silu_forward %.3f  silu_forward %.3f  "
           "silu_backward %.3f  dropout_backward %.3f  dropout_backward(beta 1) %.3f\n",
           n, reps, best[0] * 1e3, best[1] * 1e3, best[2] * 1e3, best[3] * 1e3, best[4] * 1e3);
    uint64_t h14, h28;
    const double gn14 = time_groupnorm_backward(reps, x, d, din, B, C, HW, G, &h14);
    /* 64 x 32 x 28x28 is twice the floats: the same values twice over */
    float *x2 = malloc(2 * n * sizeof *x2), *d2 = malloc(2 * n * sizeof *d2),
          *din2 = malloc(2 * n * sizeof *din2);
    if (!x2 || !d2 || !din2)
        return 1;
    for (size_t i = 0; i < 2 * n; i++)
        x2[i] = x[i % n], d2[i] = d[(i + 1) % n];
    const double gn28 = time_groupnorm_backward(reps, x2, d2, din2, B, 32, 784, G, &h28);
    free(x2), free(d2), free(din2);
    printf("groupnorm_backward (beta 0, G 8), min of %d calls (ms): 64x64x14x14 %.3f (hash %016llx)  "
           "64x32x28x28 %.3f (hash %016llx)\n",
           reps, gn14 * 1e3, (unsigned long long)h14, gn28 * 1e3, (unsigned long long)h28);
    free(x), free(out), free(norm), free(d), free(din), free(bits);
    return 0;
}
