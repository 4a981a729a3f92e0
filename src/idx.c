/* idx.c: IDX parsing (see include/ddpm/idx.h). */
#include "ddpm/idx.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int ddpm_idx_parse(ddpm_idx *idx, const uint8_t *buf, size_t len, int n_dims, const char *name)
{
    memset(idx, 0, sizeof *idx);
    if (n_dims != 0 && n_dims != 1 && n_dims != 3)
        return ddpm_error(DDPM_EINVAL, "%s: IDX dimension count %d requested (0, 1 or 3)", name,
                          n_dims);
    if (len >= 2 && buf[0] == 0x1f && buf[1] == 0x8b)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: gzip-compressed; decompress it first (gunzip -c FILE.gz | ddpm "
                          "convert - OUT_DIR)",
                          name);
    if (len < 4)
        return ddpm_error(DDPM_EFORMAT, "%s: truncated IDX file (%zu bytes, no header)", name, len);
    uint32_t magic = be32(buf);
    if (buf[0] != 0 || buf[1] != 0)
        return ddpm_error(DDPM_EFORMAT, "%s: not an IDX file (magic 0x%08x)", name, (unsigned)magic);
    if (buf[2] != 0x08)
        return ddpm_error(DDPM_EFORMAT, "%s: IDX data type 0x%02x not supported (only 0x08, uint8)",
                          name, buf[2]);
    int dims = buf[3];
    if (dims != 1 && dims != 3)
        return ddpm_error(DDPM_EFORMAT, "%s: IDX file with %d dimensions (magic 0x%08x); expected "
                                        "images (0x00000803) or labels (0x00000801)",
                          name, dims, (unsigned)magic);
    if (n_dims && dims != n_dims)
        return ddpm_error(DDPM_EFORMAT, "%s: IDX magic 0x%08x, expected 0x%08x (%s)", name,
                          (unsigned)magic, 0x800u | (unsigned)n_dims,
                          n_dims == 3 ? "images" : "labels");
    size_t header = 4 + 4 * (size_t)dims;
    if (len < header)
        return ddpm_error(DDPM_EFORMAT, "%s: truncated IDX header (%zu of %zu bytes)", name, len,
                          header);
    size_t product = 1;
    for (int d = 0; d < dims; d++) {
        uint32_t size = be32(buf + 4 + 4 * d);
        idx->dims[d] = size;
        if (size == 0) {
            product = 0;
        } else if (product > SIZE_MAX / size) {
            return ddpm_error(DDPM_EFORMAT, "%s: IDX sizes overflow (dimension %d is %u)", name, d,
                              (unsigned)size);
        } else {
            product *= size;
        }
    }
    if (dims == 3 && (idx->dims[1] == 0 || idx->dims[2] == 0 || idx->dims[1] > 1u << 15 ||
                      idx->dims[2] > 1u << 15))
        return ddpm_error(DDPM_EFORMAT, "%s: IDX image size %u x %u out of range", name,
                          (unsigned)idx->dims[1], (unsigned)idx->dims[2]);
    if (idx->dims[0] > (uint32_t)INT32_MAX)
        return ddpm_error(DDPM_EFORMAT, "%s: IDX item count %u out of range", name,
                          (unsigned)idx->dims[0]);
    if (len - header != product)
        return ddpm_error(DDPM_EFORMAT, "%s: IDX sizes say %zu data bytes, the file has %zu%s",
                          name, product, len - header,
                          len - header < product ? " (truncated)" : " (trailing bytes)");
    idx->n_dims = dims;
    idx->data = buf + header;
    idx->n_bytes = product;
    return 0;
}

/* Reads all of f into a malloc'd buffer. */
static int read_all(FILE *f, const char *name, uint8_t **out, size_t *out_len)
{
    size_t cap = 1 << 20, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory reading", name);
    for (;;) {
        if (len == cap) {
            if (cap >= DDPM_IDX_MAX_BYTES) {
                free(buf);
                return ddpm_error(DDPM_EFORMAT, "%s: larger than %zu bytes", name,
                                  (size_t)DDPM_IDX_MAX_BYTES);
            }
            cap *= 2;
            uint8_t *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                return ddpm_error(DDPM_ENOMEM, "%s: out of memory reading (%zu bytes)", name, cap);
            }
            buf = grown;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) {
                int rc = ddpm_error(DDPM_EIO, "%s: read error: %s", name, strerror(errno));
                free(buf);
                return rc;
            }
            break; /* end of file */
        }
    }
    *out = buf;
    *out_len = len;
    return 0;
}

int ddpm_idx_read(ddpm_idx *idx, const char *path, int n_dims)
{
    memset(idx, 0, sizeof *idx);
    int is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "<stdin>" : path;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = read_all(f, name, &buf, &len);
    if (!is_stdin)
        fclose(f);
    if (rc)
        return rc;
    rc = ddpm_idx_parse(idx, buf, len, n_dims, name);
    if (rc) {
        free(buf);
        return rc;
    }
    idx->owned = buf;
    return 0;
}

void ddpm_idx_free(ddpm_idx *idx)
{
    free(idx->owned);
    memset(idx, 0, sizeof *idx);
}
