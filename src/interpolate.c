#include "ddpm/interpolate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "ddpm/imageio.h"
#include "ddpm/recipe.h"
#include "ddpm/rng.h"
#include "ddpm/sha256.h"

void ddpm_lerp(float *out, const float *a, const float *b, size_t D, double l)
{
    if (l == 0.0 || l == 1.0) {
        memmove(out, l == 0.0 ? a : b, D * sizeof *out);
        return;
    }
    for (size_t d = 0; d < D; d++)
        out[d] = (float)((1.0 - l) * a[d] + l * b[d]);
}

void ddpm_slerp(float *out, const float *a, const float *b, size_t D, double l)
{
    if (l == 0.0 || l == 1.0) {
        memmove(out, l == 0.0 ? a : b, D * sizeof *out);
        return;
    }
    double ab = 0, aa = 0, bb = 0;
    for (size_t d = 0; d < D; d++) {
        ab += (double)a[d] * b[d];
        aa += (double)a[d] * a[d];
        bb += (double)b[d] * b[d];
    }
    double cosine = aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 1.0;
    cosine = cosine > 1 ? 1 : cosine < -1 ? -1 : cosine;
    double theta = acos(cosine);
    if (theta < 1e-6) {
        ddpm_lerp(out, a, b, D, l);
        return;
    }
    double ca = sin((1.0 - l) * theta) / sin(theta), cb = sin(l * theta) / sin(theta);
    for (size_t d = 0; d < D; d++)
        out[d] = (float)(ca * a[d] + cb * b[d]);
}

void ddpm_interpolate_config_default(ddpm_interpolate_config *c)
{
    c->n = 10;
    c->steps = 100;
    c->clip_x0 = 1;
    c->batch = 64;
    c->sampler = DDPM_SAMPLER_DDIM;
    c->spacing = DDPM_SPACING_LOGSNR;
}

void ddpm_interpolate_sampler(ddpm_sampler_config *out, const ddpm_interpolate_config *c)
{
    ddpm_sampler_config_default(out);
    out->kind = c->sampler;
    out->steps = c->steps;
    out->eta = 0.0f;
    out->clip_x0 = c->clip_x0;
    out->spacing = c->spacing;
}

/* Decodes the latents x [n, D] at step index i_start in place, batch by batch. */
static int decode(ddpm_model *m, float *x, int i_start, const ddpm_interpolate_config *c)
{
    ddpm_sampler_config sc;
    ddpm_interpolate_sampler(&sc, c);
    int B = c->batch < c->n ? c->batch : c->n, rc = DDPM_OK;
    for (int first = 0; !rc && first < c->n; first += B) {
        int nb = c->n - first < B ? c->n - first : B;
        rc = ddpm_sample_from(m, &sc, NULL, x + (size_t)first * ddpm_model_D(m), nb, first, i_start, NULL, NULL);
    }
    return rc;
}

static int check_config(const ddpm_interpolate_config *c, int max_steps, const char *what)
{
    if (c->n < 2)
        return ddpm_error(DDPM_EINVAL, "an interpolation needs at least 2 images, got %d", c->n);
    if (c->batch < 1)
        return ddpm_error(DDPM_EINVAL, "batch must be at least 1, got %d", c->batch);
    if (!ddpm_sampler_deterministic(c->sampler, 0.0f))
        return ddpm_error(DDPM_EINVAL, "an interpolation needs a deterministic sampler that takes steps, not %s",
                          ddpm_sampler_name(c->sampler));
    if (c->steps < 1 || c->steps > max_steps)
        return ddpm_error(DDPM_EINVAL, "%s steps must be in 1..%d (%s), got %d", ddpm_sampler_name(c->sampler),
                          max_steps, what, c->steps);
    return DDPM_OK;
}

int ddpm_interpolate_seeds(ddpm_model *m, float *x, uint64_t seed_a, uint64_t seed_b,
                           const ddpm_interpolate_config *c)
{
    const ddpm_schedule *s = &m->sched;
    size_t D = ddpm_model_D(m);
    int rc = check_config(c, s->T, "the model's timesteps");
    if (rc)
        return rc;
    ddpm_sampler_config sc;
    ddpm_interpolate_sampler(&sc, c);
    float *a = x, *b = x + (size_t)(c->n - 1) * D;
    ddpm_rng rng;
    ddpm_rng_init(&rng, seed_a, DDPM_STREAM_SAMPLE);
    ddpm_sample_initial_noise(a, D, 0, s, &sc, &rng);
    ddpm_rng_init(&rng, seed_b, DDPM_STREAM_SAMPLE);
    ddpm_sample_initial_noise(b, D, 0, s, &sc, &rng);
    for (int k = 1; k < c->n - 1; k++)
        ddpm_slerp(x + (size_t)k * D, a, b, D, (double)k / (c->n - 1));
    return decode(m, x, s->T - 1, c);
}

int ddpm_interpolate_images(ddpm_model *m, float *x, const float *x0_a, const float *x0_b, int t, uint64_t seed,
                            const ddpm_interpolate_config *c)
{
    const ddpm_schedule *s = &m->sched;
    size_t D = ddpm_model_D(m);
    if (t < 1 || t > s->T)
        return ddpm_error(DDPM_EINVAL, "the step t must be in 1..%d (the model's timesteps), got %d", s->T,
                          t);
    int rc = check_config(c, t, "the step t");
    if (rc)
        return rc;
    ddpm_sampler_config sc;
    ddpm_interpolate_sampler(&sc, c);
    float *eps = ddpm_malloc(D, sizeof *eps);
    if (!eps)
        return DDPM_ENOMEM;
    ddpm_rng rng;
    ddpm_rng_init(&rng, seed, DDPM_STREAM_SAMPLE);
    ddpm_sample_initial_noise(eps, D, 0, s, &sc, &rng);
    int i = t - 1; /* the network's step index */
    float *a = x, *b = x + (size_t)(c->n - 1) * D;
    ddpm_q_sample(a, x0_a, eps, &i, 1, D, s);
    ddpm_q_sample(b, x0_b, eps, &i, 1, D, s);
    free(eps);
    for (int k = 1; k < c->n - 1; k++)
        ddpm_lerp(x + (size_t)k * D, a, b, D, (double)k / (c->n - 1));
    return decode(m, x, i, c);
}

/* ---------------------------------------------------------------- to a file */

void ddpm_interpolate_png_config_default(ddpm_interpolate_png_config *c)
{
    memset(c, 0, sizeof *c);
    ddpm_interpolate_config_default(&c->interp);
    c->out = "interpolation.png";
    c->pad = 2;
    c->pad_value = 255;
}

/* The source image at path, read through one open: its pixels into x0 (C x S x
 * S in [-1, 1]) and the SHA-256 of the same bytes into hex, so that the recipe
 * names the file the pixels came from even if it is replaced meanwhile. */
static int load_source(const char *path, float *x0, int S, int C, char hex[65])
{
    unsigned char *bytes = NULL;
    size_t n = 0;
    size_t D = (size_t)C * S * S;
    uint8_t *u8 = ddpm_malloc(D, 1);
    int rc = u8 ? ddpm_read_file(path, DDPM_IMAGE_MAX_FILE_BYTES, &bytes, &n) : DDPM_ENOMEM;
    if (!rc)
        rc = ddpm_image_decode_u8(path, bytes, n, u8, S, C);
    if (!rc) {
        ddpm_sha256_bytes_hex(bytes, n, hex);
        ddpm_image_u8_to_float(x0, u8, D);
    }
    free(bytes);
    free(u8);
    return rc;
}

/* The strip's recipe from the template c->recipe, the config and the hashes
 * of the source images (NULL for a seed interpolation). */
static void strip_recipe(ddpm_recipe *r, const ddpm_interpolate_png_config *c, char hex[2][65])
{
    *r = *c->recipe;
    ddpm_interpolate_sampler(&r->sampler, &c->interp);
    r->kind = c->image_a ? DDPM_RECIPE_INTERP_IMAGES : DDPM_RECIPE_INTERP_SEEDS;
    r->first_index = 0;
    r->count = c->interp.n;
    r->nrow = 0;
    r->pad = c->pad;
    r->pad_value = c->pad_value;
    r->class_index = DDPM_NO_CLASS;
    r->class_name[0] = '\0';
    r->grid_by_class = 0;
    r->guidance = 1;
    if (!c->image_a) {
        r->seed = c->seed_a;
        r->seed_b = c->seed_b;
        return;
    }
    r->seed = c->seed;
    r->at = c->t;
    r->sources = c->sources ? 1 : 0;
    if (!c->recipe->images[0][0]) {
        snprintf(r->images[0], sizeof r->images[0], "%.1023s", c->image_a);
        snprintf(r->images[1], sizeof r->images[1], "%.1023s", c->image_b);
    }
    memcpy(r->image_sha256[0], hex[0], 65);
    memcpy(r->image_sha256[1], hex[1], 65);
}

int ddpm_interpolate_png(ddpm_model *m, const ddpm_interpolate_png_config *c)
{
    int images = c->image_a != NULL;
    if (images != (c->image_b != NULL))
        return ddpm_error(DDPM_EINVAL, "%s: an image interpolation needs two images", c->out);
    if (c->sources && !images)
        return ddpm_error(DDPM_EINVAL, "%s: the sources of a seed interpolation are not images", c->out);
    if (c->interp.n < 2 || c->interp.n > 100000)
        return ddpm_error(DDPM_EINVAL, "%s: an interpolation has 2..100000 images, got %d", c->out,
                          c->interp.n);
    if (c->interp.batch < 1)
        return ddpm_error(DDPM_EINVAL, "%s: batch must be at least 1, got %d", c->out, c->interp.batch);
    int C = m->cfg.in_channels, S = m->cfg.image_size, n_cells = c->interp.n + (c->sources ? 2 : 0);
    size_t D = (size_t)C * S * S;
    ddpm_recipe *recipe = NULL;
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage *storage = NULL;
    int n_text = 0, rc = DDPM_OK;
    float *x = NULL, *x0_a = NULL, *x0_b = NULL;
    char hex[2][65] = {"", ""};
    if (!(x = ddpm_malloc((size_t)n_cells * D, sizeof *x)))
        rc = DDPM_ENOMEM;
    if (!rc && images) {
        x0_a = ddpm_malloc(D, sizeof *x0_a);
        x0_b = ddpm_malloc(D, sizeof *x0_b);
        rc = !x0_a || !x0_b ? DDPM_ENOMEM : load_source(c->image_a, x0_a, S, C, hex[0]);
        if (!rc)
            rc = load_source(c->image_b, x0_b, S, C, hex[1]);
    }
    if (!rc && c->recipe) {
        recipe = ddpm_malloc(1, sizeof *recipe);
        storage = ddpm_malloc(1, sizeof *storage);
        if (!recipe || !storage)
            rc = DDPM_ENOMEM;
        else {
            strip_recipe(recipe, c, hex);
            n_text = ddpm_recipe_to_text(recipe, text, storage, NULL);
        }
    }
    if (!rc)
        rc = images ? ddpm_interpolate_images(m, x + (c->sources ? D : 0), x0_a, x0_b, c->t, c->seed, &c->interp)
                    : ddpm_interpolate_seeds(m, x, c->seed_a, c->seed_b, &c->interp);
    if (!rc && c->sources) {
        memcpy(x, x0_a, D * sizeof *x);
        memcpy(x + (size_t)(n_cells - 1) * D, x0_b, D * sizeof *x);
    }
    if (!rc)
        rc = ddpm_image_save_grid_text(c->out, x, n_cells, C, S, n_cells, c->pad, c->pad_value, text, n_text);
    free(x);
    free(x0_a);
    free(x0_b);
    free(recipe);
    free(storage);
    return rc;
}
