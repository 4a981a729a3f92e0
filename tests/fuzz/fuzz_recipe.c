/* libFuzzer harness for the PNG recipe reader: any bytes must be refused with a
 * message naming the input, read as "no recipe", or read as a recipe whose
 * every field is inside its documented range and that writes back to text
 * which reads back as the same recipe. Build and run: see README.md in this
 * folder. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ddpm/error.h"
#include "ddpm/recipe.h"

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* A PNG holding only the text chunks (the reader needs no IHDR); the caller frees. */
static uint8_t *text_png(const ddpm_png_text *text, int n, size_t *size)
{
    size_t total = 8 + 12;
    for (int i = 0; i < n; i++)
        total += 12 + strlen(text[i].key) + 1 + strlen(text[i].value);
    uint8_t *png = malloc(total), *p = png;
    if (!png)
        abort();
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    p += 8;
    for (int i = 0; i <= n; i++) {
        size_t nk = i < n ? strlen(text[i].key) : 0, nv = i < n ? strlen(text[i].value) : 0;
        size_t len = i < n ? nk + 1 + nv : 0;
        put_u32(p, (uint32_t)len);
        memcpy(p + 4, i < n ? "tEXt" : "IEND", 4);
        if (i < n) {
            memcpy(p + 8, text[i].key, nk + 1);
            memcpy(p + 8 + nk + 1, text[i].value, nv);
        }
        put_u32(p + 8 + len, (uint32_t)crc32(crc32(0L, Z_NULL, 0), p + 4, (uInt)len + 4));
        p += 12 + len;
    }
    *size = total;
    return png;
}

static int fields_in_range(const ddpm_recipe *r)
{
    if (r->count < 1 || r->pad < 0 || r->pad_value < 0 || r->pad_value > 255 || r->sampler.steps < 1 ||
        !(r->sampler.eta >= 0) || r->sampler.eta > 1 || strlen(r->checkpoint_sha256) % 64 || r->step < 0)
        return 0;
    if (ddpm_recipe_is_strip(r->kind)) {
        if (r->count < 2 || r->sampler.kind != DDPM_SAMPLER_DDIM || r->sampler.eta != 0 ||
            r->class_index != DDPM_NO_CLASS || r->grid_by_class || r->guidance != 1)
            return 0;
        if (r->kind == DDPM_RECIPE_INTERP_IMAGES &&
            (r->at < 1 || r->sampler.steps > r->at || !r->images[0][0] || !r->images[1][0] ||
             strlen(r->image_sha256[0]) != 64 || strlen(r->image_sha256[1]) != 64))
            return 0;
        return 1;
    }
    if (r->kind != DDPM_RECIPE_GRID && r->kind != DDPM_RECIPE_IMAGE && r->kind != DDPM_RECIPE_TRAJECTORY)
        return 0;
    if (r->first_index < 0 || r->first_index > 999999999 - r->count || r->nrow < 1 ||
        (r->kind == DDPM_RECIPE_IMAGE && r->count != 1))
        return 0;
    /* one class with its name, or rows by class, or neither; guidance only with a class */
    if (r->class_index != DDPM_NO_CLASS && (r->class_index < 0 || !r->class_name[0] || r->grid_by_class))
        return 0;
    if (r->class_index == DDPM_NO_CLASS && r->class_name[0])
        return 0;
    if (r->grid_by_class < 0 || (r->grid_by_class && r->kind == DDPM_RECIPE_IMAGE))
        return 0;
    if (!(r->guidance >= 0 && r->guidance <= 1000) ||
        (r->class_index == DDPM_NO_CLASS && !r->grid_by_class && r->guidance != 1))
        return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ddpm_recipe r;
    int rc = ddpm_recipe_parse_png(&r, data, size, "fuzz");
    if (rc < 0) {
        if (strncmp(ddpm_last_error(), "fuzz: ", 6) != 0)
            abort();
        return 0;
    }
    if (rc == 0)
        return 0;
    if (rc != 1 || !fields_in_range(&r))
        abort();
    /* an accepted recipe writes back to text that reads back as the same recipe */
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage storage;
    int slot = -1, n = ddpm_recipe_to_text(&r, text, &storage, &slot);
    if (n < 1 || n > DDPM_RECIPE_MAX_TEXT || (slot >= 0) == ddpm_recipe_is_strip(r.kind) || slot >= n)
        abort();
    for (int i = 0; i < n; i++)
        if (!text[i].key || !text[i].value || strlen(text[i].value) > DDPM_PNG_TEXT_MAX)
            abort();
    size_t png_size;
    uint8_t *png = text_png(text, n, &png_size);
    ddpm_recipe back;
    if (ddpm_recipe_parse_png(&back, png, png_size, "fuzz") != 1 || memcmp(&back, &r, sizeof r))
        abort();
    free(png);
    return 0;
}
