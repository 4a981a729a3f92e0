/* libFuzzer harness for the image path of the data loader: the header probe
 * (stbi_info plus our own size sniffing and limits), the decode, and the crop,
 * channel conversion and resize. Any bytes must be refused with a message naming
 * the file, or decoded into exactly the requested output. The input goes through
 * a file, as in ddpm train, so the real entry points are exercised.
 *
 * A second view of the same bytes feeds ddpm_image_convert_u8 directly: the
 * first four bytes choose width, height, source channels and target size, the
 * rest are the pixels. Build and run: see README.md in this folder. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/error.h"
#include "ddpm/imageio.h"

static char path[64];

static void write_input(const uint8_t *data, size_t size)
{
    if (!path[0])
        snprintf(path, sizeof path, "/tmp/fuzz-image-%ld", (long)getpid());
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
}

static void check_refusal(void)
{
    if (strncmp(ddpm_last_error(), path, strlen(path)) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_input(data, size);
    int w = 0, h = 0, c = 0;
    int probed = ddpm_image_probe(path, &w, &h, &c);
    if (probed != 0)
        check_refusal();
    else if (w < 1 || h < 1 || c < 1 || c > 4 || (long long)w * h > DDPM_IMAGE_MAX_PIXELS)
        abort();
    int S = 1 + (int)(size % 33), C = size & 1 ? 3 : 1;
    uint8_t *out = malloc((size_t)C * S * S);
    if (!out)
        abort();
    int loaded = ddpm_image_load_u8(path, out, S, C);
    if (loaded != 0)
        check_refusal();
    if (loaded == 0 && probed != 0) /* whatever decodes must have probed */
        abort();
    free(out);

    if (size >= 4) {
        int cw = 1 + data[0] % 64, ch = 1 + data[1] % 64, cc = 1 + data[2] % 4, cs = 1 + data[3] % 40;
        int cC = data[2] & 4 ? 3 : 1;
        size_t need = (size_t)cw * ch * cc;
        if (size - 4 >= need) {
            uint8_t *dst = malloc((size_t)cC * cs * cs);
            if (!dst || ddpm_image_convert_u8(dst, data + 4, cw, ch, cc, cs, cC) != 0)
                abort();
            free(dst);
        }
    }
    return 0;
}
