/* recipe.h: how a PNG was made, carried in its tEXt chunks, so that anyone can
 * re-create it (`ddpm sample --from IMAGE.png`) and see what made it
 * (`ddpm info IMAGE.png`).
 *
 * Every PNG that ddpm_sample_files writes (grids, per-image files, trajectories,
 * the training previews) carries one tEXt chunk per field below, keyword
 * "ddpm:<field>" ("Software" for the version). The checkpoint is named by the
 * SHA-256 of its file's bytes: re-creating an image from any other file is
 * refused. Numbers are written so that they read back exactly (eta with 9
 * significant digits, which round-trips every float). */
#ifndef DDPM_RECIPE_H
#define DDPM_RECIPE_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/imageio.h"
#include "ddpm/sample.h"

typedef enum { DDPM_RECIPE_GRID = 0, DDPM_RECIPE_IMAGE = 1, DDPM_RECIPE_TRAJECTORY = 2 } ddpm_recipe_kind;

typedef struct ddpm_recipe {
    char version[32];            /* ddpm version that wrote the PNG */
    char checkpoint_sha256[65];  /* 64 hex digits; "" when the weights were not a
                                    file on disk (a preview between checkpoints) */
    char checkpoint[1024];       /* the checkpoint's path as it was given (a hint) */
    long step;                   /* training step of the weights */
    int ema;                     /* 1 EMA weights, 0 raw */
    ddpm_sampler_config sampler; /* kind, steps (DDIM), eta, var, clip_x0 */
    uint64_t seed;
    ddpm_recipe_kind kind;
    int first_index;          /* image: its index; grid: the first image's index */
    int count;                /* grid: images in it; trajectory: rows; image: 1 */
    int nrow, pad, pad_value; /* grid and trajectory layout (trajectory: nrow = columns K) */
} ddpm_recipe;

/* The fields as PNG text: fills text[DDPM_RECIPE_MAX_TEXT] with pointers into
 * storage (which must outlive text) and returns the count. *index_slot gets
 * the entry holding the index, for per-image files (ddpm_image_save_each_text). */
enum { DDPM_RECIPE_MAX_TEXT = 20 };
typedef struct {
    char buf[DDPM_RECIPE_MAX_TEXT][72];
} ddpm_recipe_storage;
int ddpm_recipe_to_text(const ddpm_recipe *r, ddpm_png_text *text, ddpm_recipe_storage *storage,
                        int *index_slot);

/* Reads the recipe of a PNG in memory (untrusted bytes: see ddpm_png_read_text).
 * Returns 1 when the PNG carries a complete recipe, 0 when it carries none (no
 * ddpm chunk at all), DDPM_EFORMAT with "<name>: ..." when it is not a PNG or its
 * recipe is incomplete or has a bad value. */
int ddpm_recipe_parse_png(ddpm_recipe *r, const uint8_t *bytes, size_t n, const char *name);
/* The same for a file (at most 1 GiB). */
int ddpm_recipe_read_png(ddpm_recipe *r, const char *path);

/* The names the recipe uses: "ddpm"/"ddim", "beta"/"beta-tilde", "grid"/"image"/"trajectory". */
const char *ddpm_recipe_kind_name(ddpm_recipe_kind k);

#endif
