/* libFuzzer harness for the IDX parser: any bytes must be either refused with a
 * message naming the input or accepted with sizes that multiply out to exactly
 * the bytes that follow the header. Build and run: see README.md in this folder. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/idx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int wanted[3] = {0, 1, 3};
    for (int k = 0; k < 3; k++) {
        ddpm_idx idx;
        int rc = ddpm_idx_parse(&idx, data, size, wanted[k], "fuzz");
        if (rc != 0) {
            if (strncmp(ddpm_last_error(), "fuzz: ", 6) != 0 || idx.data != NULL)
                abort();
            continue;
        }
        if (idx.n_dims != 1 && idx.n_dims != 3)
            abort();
        if (wanted[k] && idx.n_dims != wanted[k])
            abort();
        size_t product = 1;
        for (int d = 0; d < idx.n_dims; d++)
            product *= idx.dims[d];
        size_t header = 4 + 4 * (size_t)idx.n_dims;
        if (product != idx.n_bytes || header + idx.n_bytes != size || idx.data != data + header)
            abort();
        /* Touch every accepted byte: ASan reports a read past the input. */
        unsigned sum = 0;
        for (size_t i = 0; i < idx.n_bytes; i++)
            sum += idx.data[i];
        if (idx.n_dims == 3 && (idx.dims[1] == 0 || idx.dims[2] == 0))
            abort();
        (void)sum;
    }
    return 0;
}
