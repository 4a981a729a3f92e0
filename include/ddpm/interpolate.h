/* interpolate.h: images between two others through the diffusion latents.
 *
 * Between seeds (DDIM, Song et al. 2021, section 5.3): the x_T of two seeds,
 * drawn exactly as ddpm_sample draws image 0 of each, are joined by spherical
 * interpolation (slerp: Gaussian noise of dimension D lies near a sphere of
 * radius sqrt(D), which a straight line would leave through its middle) and each
 * point is decoded with a deterministic sampler (DDIM at eta 0 by default, or an
 * ODE solver of the sampler table). The first and last images are
 * the plain samples of the two seeds.
 *
 * Between images (DDPM paper, section 4.3 and Figure 8): two images x0, x0' are
 * noised to step t with the same eps, x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps,
 * the latents are interpolated linearly as in the paper,
 * (1 - lambda) x_t + lambda x_t', and each point is decoded from step t with
 * the same deterministic sampler (a solver runs from continuous t = that step
 * index down to 0). With a shared eps the linear blend is the noised pixel
 * blend, and the reverse process turns it into an image of the data; with a small
 * t the ends reconstruct the two images, with a large one they drift away.
 *
 * lambda runs over k / (n - 1), k = 0..n-1; lambda 0 and 1 copy the ends exactly. */
#ifndef DDPM_INTERPOLATE_H
#define DDPM_INTERPOLATE_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/sample.h"
#include "ddpm/schedule.h"

/* out = sin((1-l) theta)/sin(theta) a + sin(l theta)/sin(theta) b, theta the angle
 * between a and b (computed in double); the linear blend when theta is below 1e-6;
 * exactly a at l = 0 and b at l = 1. */
void ddpm_slerp(float *out, const float *a, const float *b, size_t D, double l);
/* out = (1 - l) a + l b; exactly a at l = 0 and b at l = 1. */
void ddpm_lerp(float *out, const float *a, const float *b, size_t D, double l);

typedef struct {
    int n;       /* images, both ends included, >= 2 (default 10) */
    int steps;   /* the sampler's steps, network evaluations for a solver row
                    (default 100; at most T, or t for images) */
    int clip_x0; /* clip the predicted x0 as ddpm_sample does (default 1) */
    int batch;   /* images per network call (default 64) */
    ddpm_sampler_kind sampler; /* a deterministic row of sampler.h: ddim (at eta 0,
                                  the default) or a solver without
                                  DDPM_SAMPLER_STOCHASTIC */
    ddpm_spacing spacing;      /* a solver row's spacing (default logsnr, as ddpm sample) */
} ddpm_interpolate_config;

void ddpm_interpolate_config_default(ddpm_interpolate_config *c);

/* The sampler config these functions decode with: c->sampler, c->steps, eta 0,
 * c->clip_x0, c->spacing. `ddpm sample` with these flags gives the ends of a
 * seed interpolation. */
void ddpm_interpolate_sampler(ddpm_sampler_config *out, const ddpm_interpolate_config *c);

/* x [c->n, D] receives the strip between the model's samples of seed_a and
 * seed_b (the DDPM_STREAM_SAMPLE stream of each seed, image 0). */
int ddpm_interpolate_seeds(ddpm_model *m, float *x, uint64_t seed_a, uint64_t seed_b,
                           const ddpm_interpolate_config *c);

/* x [c->n, D] receives the strip between the images x0_a and x0_b [D] (in
 * [-1, 1]) noised to the paper's step t (1..T, index t - 1) with eps = the x_T
 * that seed `seed` gives image 0. */
int ddpm_interpolate_images(ddpm_model *m, float *x, const float *x0_a, const float *x0_b, int t, uint64_t seed,
                            const ddpm_interpolate_config *c);

/* ---------------------------------------------------------------- to a file */

/* A strip into a PNG carrying its recipe (recipe.h): interp.n images in one row,
 * between two seeds (ddpm_interpolate_seeds) or between two image files
 * (ddpm_interpolate_images; loaded as ddpm train loads them, at the model's
 * size and channels), `pad` pixels of gray `pad_value` between and around them. */
typedef struct {
    ddpm_interpolate_config interp; /* n, steps, clip, batch (defaults as above) */
    const char *image_a, *image_b;  /* NULL: between seeds; else between these files */
    uint64_t seed_a, seed_b;        /* between seeds */
    int t;                          /* between images: the paper's step t, 1..T */
    uint64_t seed;                  /* between images: the noise seed (default 0) */
    int sources;                    /* between images: the two images as loaded at the
                                       ends, so the strip has n + 2 cells (default 0) */
    const char *out;                /* the PNG (default "interpolation.png") */
    int pad, pad_value;             /* default 2, 255 */
    /* NULL (the default): a PNG without a recipe. Else the version, checkpoint
     * hash and path, step and weights come from here, and so do the source
     * images' names when recipe->images[0] is not empty (a strip re-created from
     * sources that moved keeps the names it was made with; empty: image_a and
     * image_b); the rest, and the SHA-256 of each source file, from this config. */
    const struct ddpm_recipe *recipe;
} ddpm_interpolate_png_config;

void ddpm_interpolate_png_config_default(ddpm_interpolate_png_config *c);

/* Computes the strip c describes with the model and writes c->out. */
int ddpm_interpolate_png(ddpm_model *m, const ddpm_interpolate_png_config *c);

#endif
