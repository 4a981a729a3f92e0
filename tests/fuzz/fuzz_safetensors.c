/* libFuzzer harness for the safetensors reader: any bytes must be either refused
 * with a message naming the input or accepted with every accessor staying inside
 * the data. Build and run: see README.md in this folder. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ddpm_st_file *f = NULL;
    int rc = ddpm_safetensors_open_memory(&f, data, size, "fuzz");
    if (rc != 0) {
        /* Refusals name the input and leave nothing open. */
        if (f != NULL || strncmp(ddpm_last_error(), "fuzz: ", 6) != 0)
            abort();
        return 0;
    }
    int n = ddpm_safetensors_count(f);
    for (int i = 0; i < n; i++) {
        const ddpm_st_info *info = ddpm_safetensors_at(f, i);
        if (!info || ddpm_safetensors_find(f, info->name) != info)
            abort();
        if (info->data_end - info->data_begin != 4 * (uint64_t)info->n_elements)
            abort();
        /* Accepted tensors are bounded by the input, so this allocation is too. */
        size_t n_el = (size_t)info->n_elements;
        float *dst = malloc(n_el ? n_el * sizeof(float) : 1);
        if (!dst)
            abort();
        if (ddpm_safetensors_read_f32(f, info->name, dst, n_el) != 0)
            abort();
        if (n_el > 0 && ddpm_safetensors_read_f32(f, info->name, dst, n_el - 1) == 0)
            abort();
        free(dst);
    }
    int n_meta = ddpm_safetensors_meta_count(f);
    for (int i = 0; i < n_meta; i++) {
        const char *key, *value;
        if (ddpm_safetensors_meta_at(f, i, &key, &value) != 0)
            abort();
        const char *found = ddpm_safetensors_meta(f, key);
        if (!found || strcmp(found, value) != 0)
            abort();
    }
    ddpm_safetensors_close(f);
    return 0;
}
