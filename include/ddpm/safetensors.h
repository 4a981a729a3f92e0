/* safetensors.h: reading and writing .safetensors files (float32 tensors).
 *
 * The format: an 8-byte little-endian u64 header length N, N bytes of JSON, then
 * the raw little-endian tensor data. The JSON is an object mapping each tensor
 * name to {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]} (byte
 * offsets relative to the start of the data section, which follows the header),
 * plus an optional "__metadata__" object whose values are all strings.
 *
 * Writing goes to `path` + ".tmp.<pid>" in the same folder, which is flushed,
 * fsync'ed and renamed over `path`, and then the folder is fsync'ed: a crash or a
 * full disk never leaves a truncated file under the final name and never destroys
 * the previous file. The header is padded with spaces to a multiple of 8 bytes (as
 * the reference writer does), so every F32 tensor starts 4-byte aligned.
 *
 * Integrity: the writer stores the CRC-32C (crc32c.h) of every tensor's bytes in
 * the metadata entry "crc32c", a JSON object {"<tensor>": "<8 hex digits>", ...}
 * (a string, as the format wants metadata values), and the CRC-32C of the whole
 * header in the metadata entry "header_crc32c", which it writes first, so that
 * every header it writes begins with the bytes
 *     {"__metadata__":{"header_crc32c":"XXXXXXXX"
 * The header checksum covers the 8-byte length field and every byte of the JSON
 * header (the metadata, the tensor checksums, the padding), computed with its
 * own 8 hex digits XXXXXXXX taken as "00000000". The reader checks the header
 * before it parses it and every tensor against its checksum on open, and
 * refuses the file naming the header or the first tensor whose bytes do not
 * match. A file without these entries (written before checksums, or by another
 * writer) is read without the checks: ddpm_safetensors_checksummed() and
 * ddpm_safetensors_header_checksummed() say which were made, and the format
 * above (checkpoint.h) decides whether their absence is acceptable.
 *
 * Reading treats the file as untrusted: ddpm_safetensors_open() validates the
 * whole header (lengths, JSON, dtypes, shapes and their overflow, offsets against
 * the data section, overlaps, duplicate names, metadata types, size limits)
 * before it returns, so the accessors below need no further checks. Every error
 * sets one message "<path>: <problem>" (see error.h). */
#ifndef DDPM_SAFETENSORS_H
#define DDPM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

enum {
    DDPM_ST_MAX_DIMS = 8,          /* most dimensions a tensor read may have */
    DDPM_ST_WRITE_MAX_DIMS = 4,    /* most dimensions a tensor written may have */
    DDPM_ST_MAX_TENSORS = 100000,  /* most tensors (and most metadata entries) */
    DDPM_ST_MAX_NAME = 1024,       /* longest tensor name or metadata key, bytes */
};
/* Largest accepted JSON header, bytes (the reference implementation's limit). */
#define DDPM_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
/* Largest accepted data section, bytes: 64 GiB, 16 G floats (a training
 * checkpoint of a 4-G-parameter model with its EMA and Adam moments). */
#define DDPM_ST_MAX_DATA ((uint64_t)1 << 36)
/* Largest file ddpm_safetensors_open reads: length field, header, data. */
#define DDPM_ST_MAX_FILE (8 + DDPM_ST_MAX_HEADER + DDPM_ST_MAX_DATA)
/* The same as a read limit for ddpm_read_file (what a size_t can hold on a
 * 32-bit host). */
#define DDPM_ST_MAX_READ ((size_t)(DDPM_ST_MAX_FILE < SIZE_MAX ? DDPM_ST_MAX_FILE : SIZE_MAX))

/* One tensor to write: data holds prod(shape[0..ndim-1]) floats (1 when ndim is 0),
 * in row-major order. ndim is 0..DDPM_ST_WRITE_MAX_DIMS. */
typedef struct {
    const char *name;
    const float *data;
    int ndim;
    int64_t shape[DDPM_ST_WRITE_MAX_DIMS];
} ddpm_st_tensor;

/* One "__metadata__" entry (both strings, as the format requires). */
typedef struct {
    const char *key;
    const char *value;
} ddpm_st_meta;

/* A tensor of an opened file. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[DDPM_ST_MAX_DIMS];
    int64_t n_elements;  /* prod(shape), 1 for ndim 0 */
    uint64_t data_begin; /* byte offsets in the data section; end - begin == 4 * n_elements */
    uint64_t data_end;
} ddpm_st_info;

typedef struct ddpm_st_file ddpm_st_file;

/* Writes n_tensors tensors (stored in the order given, contiguously) and n_meta
 * metadata entries to `path`, atomically as described above. Names must be
 * unique, 1..DDPM_ST_MAX_NAME bytes, and not "__metadata__"; metadata keys
 * unique, and not "crc32c" or "header_crc32c" (the writer's own). On any failure the temporary file is removed, the old file at `path`
 * (if any) is untouched, and DDPM_EINVAL (bad arguments) or DDPM_EIO is returned.
 * The one exception: if only the final fsync of the folder fails, the new file is
 * already in place and DDPM_EIO says so. */
int ddpm_safetensors_write(const char *path, const ddpm_st_tensor *tensors, int n_tensors,
                           const ddpm_st_meta *meta, int n_meta);

/* The same, and sha256 (65 bytes: 64 hex digits and a NUL) receives the SHA-256
 * of the bytes written, hashed as they are written: what names the file in a
 * recipe, without reading it back. */
int ddpm_safetensors_write_sha256(const char *path, const ddpm_st_tensor *tensors, int n_tensors,
                                  const ddpm_st_meta *meta, int n_meta, char sha256[65]);

/* Reads (ddpm_read_file: a regular file of at most DDPM_ST_MAX_FILE bytes, one
 * open) and validates the whole file. On success *out owns a copy of the file
 * and must be closed; on failure *out is NULL and DDPM_EIO (cannot read),
 * DDPM_EFORMAT (not a valid F32 safetensors file) or DDPM_ENOMEM is returned. */
int ddpm_safetensors_open(ddpm_st_file **out, const char *path);

/* The same over bytes already in memory (copied; the caller keeps `bytes`).
 * `name` is used in the error messages in place of a path. */
int ddpm_safetensors_open_memory(ddpm_st_file **out, const void *bytes, size_t n_bytes,
                                 const char *name);

void ddpm_safetensors_close(ddpm_st_file *f);

/* Tensors, in the order the header lists them. */
int ddpm_safetensors_count(const ddpm_st_file *f);
const ddpm_st_info *ddpm_safetensors_at(const ddpm_st_file *f, int i); /* NULL if out of range */
/* NULL when there is no tensor of that name (does not set the error message). */
const ddpm_st_info *ddpm_safetensors_find(const ddpm_st_file *f, const char *name);

/* Copies the tensor `name` into dst[n_expected], converting from little-endian if
 * the host is not. Fails with DDPM_EFORMAT (message naming the file and the
 * tensor) when there is no such tensor or it does not hold n_expected floats. */
int ddpm_safetensors_read_f32(const ddpm_st_file *f, const char *name, float *dst,
                              size_t n_expected);

/* The metadata value for `key`, or NULL when absent. */
const char *ddpm_safetensors_meta(const ddpm_st_file *f, const char *key);
/* Metadata entries in header order: count, then the i-th key and value
 * (returns DDPM_EINVAL if i is out of range). */
int ddpm_safetensors_meta_count(const ddpm_st_file *f);
int ddpm_safetensors_meta_at(const ddpm_st_file *f, int i, const char **key, const char **value);

/* 1 if every tensor's bytes were checked against a stored CRC-32C on open, 0 if
 * the file carries no checksums (then nothing vouches for the data). */
int ddpm_safetensors_checksummed(const ddpm_st_file *f);
/* 1 if the header was checked against its stored CRC-32C on open, 0 if the
 * file carries no header checksum (then nothing vouches for the metadata). */
int ddpm_safetensors_header_checksummed(const ddpm_st_file *f);

/* The name the file was opened under (its path, or open_memory's name). */
const char *ddpm_safetensors_path(const ddpm_st_file *f);

#endif
