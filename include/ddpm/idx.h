/* idx.h: the IDX file format of MNIST and Fashion-MNIST (LeCun et al.).
 *
 * Layout: 2 zero bytes, a type byte (0x08 = uint8, the only type read here), a
 * dimension count byte, then one big-endian uint32 size per dimension, then the
 * data in row-major order. Image files are 0x00000803 [n, rows, cols], label files
 * 0x00000801 [n]. Files are untrusted: every size is checked against the file
 * length (which must match exactly) before it is used, and products are computed
 * without overflow. Gzipped files are recognised and refused with a hint (zlib is
 * not a dependency): decompress them first, e.g. `gunzip -c f.gz | ddpm convert - OUT`. */
#ifndef DDPM_IDX_H
#define DDPM_IDX_H

#include <stddef.h>
#include <stdint.h>

/* Largest file read (bytes): far above any IDX data set in use. */
#define DDPM_IDX_MAX_BYTES ((size_t)1 << 32)

typedef struct {
    int n_dims;          /* 1 (labels) or 3 (images) */
    uint32_t dims[3];    /* dims[0] = n; images: dims[1] = rows, dims[2] = cols */
    const uint8_t *data; /* dims[0] * ... bytes, row-major */
    size_t n_bytes;      /* of data */
    uint8_t *owned;      /* the file's bytes when read by ddpm_idx_read (else NULL) */
} ddpm_idx;

/* Parses buf[0..len) as a uint8 IDX file with n_dims dimensions (3 images, 1
 * labels, 0 either). idx->data points into buf (nothing is copied or allocated).
 * `name` names the file in error messages. DDPM_EFORMAT on any inconsistency. */
int ddpm_idx_parse(ddpm_idx *idx, const uint8_t *buf, size_t len, int n_dims, const char *name);

/* Reads and parses the file `path` ("-" = standard input). Free with ddpm_idx_free. */
int ddpm_idx_read(ddpm_idx *idx, const char *path, int n_dims);

void ddpm_idx_free(ddpm_idx *idx);

#endif
