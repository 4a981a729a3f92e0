/* recipe.h: how a PNG was made, carried in its tEXt chunks, so that anyone can
 * re-create it (`ddpm sample --from IMAGE.png`, `ddpm interpolate --from
 * STRIP.png`) and see what made it (`ddpm info IMAGE.png`).
 *
 * Every PNG that ddpm_sample_files writes (grids, per-image files, trajectories,
 * the training previews) and every strip that ddpm_interpolate_png writes
 * carries one tEXt chunk per field of its kind, keyword "ddpm:<field>"
 * ("Software" for the version). The checkpoint is named by the SHA-256 of its
 * file's bytes, and so are the two source images of an image interpolation:
 * re-creating a PNG from any other file is refused. Numbers are written so that
 * they read back exactly: eta with 9 significant digits (which round-trips
 * every float), the guidance weight as the shortest text that reads back as
 * the same float ("2.7", not "2.70000005").
 *
 * Fields of every kind: Software, checkpoint_sha256, checkpoint, step, weights,
 * sampler, steps, eta, var, clip, kind, count, pad, pad_value; a sampler
 * that takes a step spacing (sampler.h, DDPM_SAMPLER_TAKES_SPACING) adds
 * spacing ("time", "logsnr" or "karras"), and only such a sampler has it.
 * grid, image, trajectory: + seed, index, nrow; a conditional sample adds
 *   class and class_name (one class) or grid_by_class (images per class, one
 *   row per class), and guidance. A recipe without them (every recipe written
 *   before they existed) is unconditional.
 * interpolation-seeds: + seeds ("A,B").
 * interpolation-images: + at, seed, image_a, image_b, image_a_sha256,
 *   image_b_sha256, sources.
 * Any kind: precision ("bf16") when the network's products ran in bf16
 *   (--precision bf16); absent, as in every recipe before it, for float32.
 * A field that does not belong to the recipe's kind is refused. */
#ifndef DDPM_RECIPE_H
#define DDPM_RECIPE_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/imageio.h"
#include "ddpm/ops.h"
#include "ddpm/sample.h"

typedef enum {
    DDPM_RECIPE_GRID = 0,
    DDPM_RECIPE_IMAGE = 1,
    DDPM_RECIPE_TRAJECTORY = 2,
    DDPM_RECIPE_INTERP_SEEDS = 3,  /* `ddpm interpolate --seeds A,B` */
    DDPM_RECIPE_INTERP_IMAGES = 4, /* `ddpm interpolate --at T --images P1,P2` */
} ddpm_recipe_kind;

/* Whether the kind is an interpolation strip (re-created by ddpm interpolate). */
int ddpm_recipe_is_strip(ddpm_recipe_kind k);

typedef struct ddpm_recipe {
    char version[32];            /* ddpm version that wrote the PNG */
    char checkpoint_sha256[65];  /* 64 hex digits; "" when the weights were not a
                                    file on disk (a preview between checkpoints) */
    char checkpoint[1024];       /* the checkpoint's path as it was given (a hint) */
    long step;                   /* training step of the weights */
    int ema;                     /* 1 EMA weights, 0 raw */
    ddpm_sampler_config sampler; /* kind, steps (DDIM), eta, var, clip_x0; strips:
                                    always DDIM with eta 0 */
    uint64_t seed;               /* samples: the noise seed; strips: seed A of
                                    --seeds, or the noise seed of --at */
    ddpm_recipe_kind kind;
    int first_index;          /* image: its index; grid: the first image's index */
    int count;                /* grid: images in it; trajectory: rows; image: 1;
                                 strips: --n, the interpolated images (>= 2) */
    int nrow, pad, pad_value; /* grid and trajectory layout (trajectory: nrow =
                                 columns K); strips: pad and pad value, nrow 0 */
    /* class-conditional samples (grid, image, trajectory) */
    int class_index;      /* the class of every image, DDPM_NO_CLASS: none */
    char class_name[256]; /* its name in the checkpoint ("" without a class) */
    int grid_by_class;    /* 0, or the images per class of a --grid-by-class run
                             (image k has class k / grid_by_class) */
    float guidance;       /* classifier-free guidance weight W (1 without a class) */
    /* interpolation strips */
    uint64_t seed_b;          /* interpolation-seeds: seed B */
    int at;                   /* interpolation-images: the step t of --at (1..) */
    char images[2][1024];     /* interpolation-images: the two paths as given */
    char image_sha256[2][65]; /* ... and the SHA-256 of each file's bytes */
    int sources;              /* interpolation-images: the two images at the ends */
    ddpm_precision precision; /* the forward's products (bf16 written, fp32 not) */
} ddpm_recipe;

/* An empty recipe: zero fields, no class (DDPM_NO_CLASS) and guidance 1. Start
 * from this, not from a zeroed struct, whose class_index 0 names a class. */
void ddpm_recipe_init(ddpm_recipe *r);

/* The fields as PNG text: fills text[DDPM_RECIPE_MAX_TEXT] with pointers into
 * storage and into r (both must outlive text) and returns the count (the fields
 * of r's kind only). *index_slot gets the entry holding the index, for per-image
 * files (ddpm_image_save_each_text), or -1 for a strip. */
enum { DDPM_RECIPE_MAX_TEXT = 32 };
typedef struct {
    char buf[DDPM_RECIPE_MAX_TEXT][72];
} ddpm_recipe_storage;
int ddpm_recipe_to_text(const ddpm_recipe *r, ddpm_png_text *text, ddpm_recipe_storage *storage,
                        int *index_slot);

/* Reads the recipe of a PNG in memory (untrusted bytes: see ddpm_png_read_text).
 * Returns 1 when the PNG carries a complete recipe, 0 when it carries none (no
 * ddpm chunk at all), DDPM_EFORMAT with "<name>: ..." when it is not a PNG or its
 * recipe is incomplete, has a bad value or a field of another kind. */
int ddpm_recipe_parse_png(ddpm_recipe *r, const uint8_t *bytes, size_t n, const char *name);
/* The same for a file (at most 1 GiB). */
int ddpm_recipe_read_png(ddpm_recipe *r, const char *path);

/* Whether the classes a sample recipe names fit a checkpoint with n_classes
 * classes called names[] (NULL when n_classes is 0): DDPM_EFORMAT with
 * "<name>: ..." when the recipe names a class (or rows by class) and the model
 * is unconditional, its class index is out of range, its class name is not the
 * checkpoint's name of that index, or a grid-by-class grid or trajectory does
 * not hold the count that n_classes rows give. 0 otherwise. */
int ddpm_recipe_check_classes(const ddpm_recipe *r, int n_classes, const char *const *names,
                              const char *name);

/* v as the shortest decimal text that strtof reads back as v exactly (at most
 * 9 significant digits), as the recipe writes the guidance weight. */
void ddpm_recipe_float_text(char out[32], float v);

/* The kind's name as written: "grid", "image", "trajectory",
 * "interpolation-seeds", "interpolation-images". */
const char *ddpm_recipe_kind_name(ddpm_recipe_kind k);

#endif
