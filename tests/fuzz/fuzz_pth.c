/* libFuzzer harness for the PyTorch state_dict reader (pth.h): any bytes must be
 * refused with a message naming the input, or accepted with every tensor's
 * data readable within the input. Build and run: see README.md in this folder. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/pth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ddpm_pth *f = NULL;
    int rc = ddpm_pth_open_memory(&f, data, size, "fuzz");
    if (rc != 0) {
        if (f != NULL || strncmp(ddpm_last_error(), "fuzz: ", 6) != 0)
            abort();
        return 0;
    }
    int n = ddpm_pth_count(f);
    for (int i = 0; i < n; i++) {
        const ddpm_pth_tensor *t = ddpm_pth_at(f, i);
        if (!t || ddpm_pth_find(f, t->name) != t)
            abort();
        if (t->dtype != DDPM_PTH_F32)
            continue;
        /* an accepted tensor lies inside the input, so this allocation is bounded by it */
        size_t n_el = (size_t)t->n_elements;
        float *dst = malloc(n_el ? n_el * sizeof(float) : 1);
        if (!dst)
            abort();
        if (ddpm_pth_read_f32(f, t->name, dst, n_el) != 0)
            abort();
        free(dst);
    }
    ddpm_pth_close(f);
    return 0;
}
