/* trainutil.h: the tiny model and synthetic images that the trainer and run
 * tests share. */
#ifndef DDPM_TRAINUTIL_H
#define DDPM_TRAINUTIL_H

#include <stddef.h>
#include <sys/stat.h>

#include "ddpm/config.h"
#include "ddpm/imageio.h"

/* 8x8 gray, ch 8, two levels, attention at 4, dropout on, batch 4, T 100 */
static inline void tiny_run_config(ddpm_run_config *c)
{
    ddpm_run_config_default(c);
    c->model.in_channels = 1;
    c->model.image_size = 8;
    c->model.ch = 8;
    c->model.n_levels = 2;
    c->model.ch_mult[0] = 1, c->model.ch_mult[1] = 2;
    c->model.num_res_blocks = 1;
    c->model.attn_res[0] = 4;
    c->model.groups = 4;
    c->model.dropout = 0.1f;
    c->timesteps = 100;
    c->batch = 4;
    c->optim.lr = 2e-3f;
    c->optim.warmup = 10;
    c->seed = 42;
}

/* Images of the synthetic data set: bright squares at a few positions. */
static inline void synthetic_image(float *x, int k, int S)
{
    int r0 = (k * 3) % (S - 3), c0 = (k * 5) % (S - 3);
    for (int r = 0; r < S; r++)
        for (int c = 0; c < S; c++)
            x[r * S + c] = (r >= r0 && r < r0 + 3 && c >= c0 && c < c0 + 3) ? 1.0f : -1.0f;
}

static inline void synthetic_batch(float *x, int B, int S, long step)
{
    for (int b = 0; b < B; b++)
        synthetic_image(x + (size_t)b * S * S, (int)((step * B + b) % 8), S);
}

/* The 8 synthetic images as 8x8 gray PNGs dir/00.png.. (n of them); 0 or -1. */
static inline int synthetic_png_folder(const char *dir, int n)
{
    float x[64];
    uint8_t px[64];
    char path[600];
    if (mkdir(dir, 0777))
        return -1;
    for (int k = 0; k < n; k++) {
        synthetic_image(x, k % 8, 8);
        for (int i = 0; i < 64; i++)
            px[i] = (uint8_t)(x[i] > 0 ? 255 - 9 * k : 9 * k); /* 12 distinct images */
        snprintf(path, sizeof path, "%s/%02d.png", dir, k);
        if (ddpm_png_write(path, px, 8, 8, 1))
            return -1;
    }
    return 0;
}

/* Size of a file in bytes, -1 if it does not exist. */
static inline long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

#endif
