/* safetensors.c: the .safetensors writer (atomic, through ddpm_atomic_write) and a
 * reader that validates every field of an untrusted file before use. */
#include "ddpm/safetensors.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/crc32c.h"
#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "ddpm/sha256.h"

/* Integers in the header are parsed by cJSON as doubles: only values below 2^53
 * are represented exactly, so larger ones are refused rather than rounded. */
#define JSON_MAX_EXACT_INT 9007199254740992.0
/* Bound on the JSON values (cJSON nodes, ~64 bytes each) a header may hold, checked
 * before parsing so a 100 MB header of "0,0,0,..." cannot ask for gigabytes.
 * DDPM_ST_MAX_TENSORS 8-D tensors need about 15 values each. */
#define MAX_JSON_VALUES ((size_t)2000000)
/* Longest name quoted in an error message. */
#define MSG_NAME 200

static const char METADATA_KEY[] = "__metadata__";
/* The metadata key holding every tensor's CRC-32C (see safetensors.h). */
static const char CHECKSUM_KEY[] = "crc32c";
/* The metadata key holding the header's CRC-32C, and the bytes every header
 * with it begins with: its 8 hex digits follow, then a quote. */
static const char HEADER_CHECKSUM_KEY[] = "header_crc32c";
static const char HEADER_CHECKSUM_PREFIX[] = "{\"__metadata__\":{\"header_crc32c\":\"";
#define HEADER_CHECKSUM_AT (sizeof HEADER_CHECKSUM_PREFIX - 1)

struct ddpm_st_file {
    char *path;
    unsigned char *bytes; /* the whole file */
    size_t n_bytes;
    const unsigned char *data; /* the data section: bytes + 8 + header length */
    uint64_t data_len;
    cJSON *root; /* the parsed header; names and metadata strings point into it */
    ddpm_st_info *infos; /* header order */
    const ddpm_st_info **by_name;
    int n_tensors;
    ddpm_st_meta *meta; /* header order */
    ddpm_st_meta *meta_by_key;
    int n_meta;
    int checksummed; /* every tensor's CRC-32C was in the metadata and matched */
    int header_checksummed; /* the header's CRC-32C was in its place and matched */
};

static int host_is_little_endian(void)
{
    const uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static void swap_bytes_f32(void *p, size_t n)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++, b += 4) {
        unsigned char t0 = b[0], t1 = b[1];
        b[0] = b[3];
        b[1] = b[2];
        b[2] = t1;
        b[3] = t0;
    }
}

static uint64_t read_le64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

static void write_le64(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

/* prod(shape[0..ndim-1]) into *n; returns 0, or -1 if the count or 4x it
 * overflows int64. A zero dimension makes the product 0 whatever the others. */
static int element_count(const int64_t *shape, int ndim, int64_t *n)
{
    int64_t p = 1;
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) {
            *n = 0;
            return 0;
        }
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || __builtin_mul_overflow(p, shape[d], &p))
            return -1;
    if (p > INT64_MAX / 4)
        return -1;
    *n = p;
    return 0;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_put(strbuf *sb, const char *s, size_t n)
{
    if (sb->failed)
        return;
    if (n > SIZE_MAX - sb->len - 1) {
        sb->failed = 1;
        return;
    }
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 4096;
        while (cap < sb->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        char *q = realloc(sb->p, cap);
        if (!q) {
            sb->failed = 1;
            return;
        }
        sb->p = q;
        sb->cap = cap;
    }
    memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
}

static void sb_puts(strbuf *sb, const char *s) { sb_put(sb, s, strlen(s)); }

static void sb_printf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *sb, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        sb->failed = 1;
        return;
    }
    sb_put(sb, tmp, (size_t)n);
}

/* A JSON string literal: quotes, backslashes and control bytes escaped; other
 * bytes (UTF-8 included) copied as they are. */
static void sb_json_string(strbuf *sb, const char *s)
{
    sb_put(sb, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"')
            sb_put(sb, "\\\"", 2);
        else if (*c == '\\')
            sb_put(sb, "\\\\", 2);
        else if (*c < 0x20)
            sb_printf(sb, "\\u%04x", *c);
        else
            sb_put(sb, (const char *)c, 1);
    }
    sb_put(sb, "\"", 1);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks that the n strings names[] are distinct; returns the duplicate or NULL. */
static const char *find_duplicate(const char **names, int n)
{
    qsort(names, (size_t)n, sizeof *names, cmp_str_ptr);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

static int check_write_args(const char *path, const ddpm_st_tensor *tensors, int n_tensors,
                            const ddpm_st_meta *meta, int n_meta)
{
    if (n_tensors < 0 || n_tensors > DDPM_ST_MAX_TENSORS || (n_tensors > 0 && !tensors))
        return ddpm_error(DDPM_EINVAL, "%s: invalid tensor count %d (0..%d)", path, n_tensors,
                          DDPM_ST_MAX_TENSORS);
    if (n_meta < 0 || n_meta > DDPM_ST_MAX_TENSORS || (n_meta > 0 && !meta))
        return ddpm_error(DDPM_EINVAL, "%s: invalid metadata count %d (0..%d)", path, n_meta,
                          DDPM_ST_MAX_TENSORS);
    for (int i = 0; i < n_tensors; i++) {
        const ddpm_st_tensor *t = &tensors[i];
        if (!t->name || !t->name[0])
            return ddpm_error(DDPM_EINVAL, "%s: tensor %d has no name", path, i);
        size_t len = strlen(t->name);
        if (len > DDPM_ST_MAX_NAME)
            return ddpm_error(DDPM_EINVAL, "%s: tensor name '%.*s...' is %zu bytes, over the %d-byte limit",
                              path, MSG_NAME, t->name, len, DDPM_ST_MAX_NAME);
        if (strcmp(t->name, METADATA_KEY) == 0)
            return ddpm_error(DDPM_EINVAL, "%s: '%s' is reserved and cannot name a tensor", path,
                              METADATA_KEY);
        if (t->ndim < 0 || t->ndim > DDPM_ST_WRITE_MAX_DIMS)
            return ddpm_error(DDPM_EINVAL, "%s: tensor '%s' has %d dimensions (0..%d supported)", path,
                              t->name, t->ndim, DDPM_ST_WRITE_MAX_DIMS);
        int64_t n;
        if (element_count(t->shape, t->ndim, &n) != 0)
            return ddpm_error(DDPM_EINVAL, "%s: tensor '%s' has a negative dimension or too many elements",
                              path, t->name);
        if (n > 0 && !t->data)
            return ddpm_error(DDPM_EINVAL, "%s: tensor '%s' has no data", path, t->name);
    }
    for (int i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value)
            return ddpm_error(DDPM_EINVAL, "%s: metadata entry %d has no key or no value", path, i);
        size_t len = strlen(meta[i].key);
        if (len > DDPM_ST_MAX_NAME)
            return ddpm_error(DDPM_EINVAL, "%s: metadata key '%.*s...' is %zu bytes, over the %d-byte limit",
                              path, MSG_NAME, meta[i].key, len, DDPM_ST_MAX_NAME);
        if (strcmp(meta[i].key, CHECKSUM_KEY) == 0 || strcmp(meta[i].key, HEADER_CHECKSUM_KEY) == 0)
            return ddpm_error(DDPM_EINVAL, "%s: metadata key '%s' is reserved for the checksums", path,
                              meta[i].key);
    }
    int n_names = n_tensors > n_meta ? n_tensors : n_meta;
    const char **names = ddpm_malloc(n_names ? (size_t)n_names : 1, sizeof *names);
    if (!names)
        return DDPM_ENOMEM;
    int rc = 0;
    for (int i = 0; i < n_tensors; i++)
        names[i] = tensors[i].name;
    const char *dup = find_duplicate(names, n_tensors);
    if (dup)
        rc = ddpm_error(DDPM_EINVAL, "%s: two tensors are named '%.*s'", path, MSG_NAME, dup);
    if (rc == 0) {
        for (int i = 0; i < n_meta; i++)
            names[i] = meta[i].key;
        dup = find_duplicate(names, n_meta);
        if (dup)
            rc = ddpm_error(DDPM_EINVAL, "%s: metadata key '%.*s' appears twice", path, MSG_NAME, dup);
    }
    free(names);
    return rc;
}

/* The JSON header, padded with spaces to a multiple of 8 bytes. Arguments are
 * already checked. */
static int build_header(strbuf *sb, const char *path, const ddpm_st_tensor *tensors, int n_tensors,
                        const ddpm_st_meta *meta, int n_meta)
{
    sb_puts(sb, "{");
    if (n_meta > 0) {
        sb_json_string(sb, METADATA_KEY);
        sb_puts(sb, ":{");
        for (int i = 0; i < n_meta; i++) {
            if (i)
                sb_puts(sb, ",");
            sb_json_string(sb, meta[i].key);
            sb_puts(sb, ":");
            sb_json_string(sb, meta[i].value);
        }
        sb_puts(sb, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < n_tensors; i++) {
        const ddpm_st_tensor *t = &tensors[i];
        int64_t n = 0;
        element_count(t->shape, t->ndim, &n);
        uint64_t bytes = 4 * (uint64_t)n;
        if (bytes > UINT64_MAX - offset)
            return ddpm_error(DDPM_EINVAL, "%s: total tensor size overflows", path);
        if (i || n_meta > 0)
            sb_puts(sb, ",");
        sb_json_string(sb, t->name);
        sb_puts(sb, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++)
            sb_printf(sb, d ? ",%" PRId64 : "%" PRId64, t->shape[d]);
        sb_printf(sb, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, offset + bytes);
        offset += bytes;
    }
    sb_puts(sb, "}");
    while (!sb->failed && sb->len % 8 != 0)
        sb_puts(sb, " ");
    if (sb->failed)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory building the header", path);
    return 0;
}

/* Writes n floats as little-endian: straight through on a little-endian host, in
 * byte-swapped chunks otherwise; sha (may be NULL) hashes the bytes written.
 * Returns 0 or -1 with errno set. */
static int write_f32_le(FILE *fp, const float *x, size_t n, float *chunk, size_t chunk_len, ddpm_sha256 *sha)
{
    if (host_is_little_endian()) {
        const size_t step = (size_t)1 << 24; /* 64 MB per fwrite call */
        for (size_t i = 0; i < n; i += step) {
            size_t m = n - i < step ? n - i : step;
            if (fwrite(x + i, sizeof(float), m, fp) != m)
                return -1;
            if (sha)
                ddpm_sha256_update(sha, x + i, m * sizeof(float));
        }
        return 0;
    }
    for (size_t i = 0; i < n; i += chunk_len) {
        size_t m = n - i < chunk_len ? n - i : chunk_len;
        memcpy(chunk, x + i, m * sizeof(float));
        swap_bytes_f32(chunk, m);
        if (fwrite(chunk, sizeof(float), m, fp) != m)
            return -1;
        if (sha)
            ddpm_sha256_update(sha, chunk, m * sizeof(float));
    }
    return 0;
}

/* CRC-32C of n floats as stored: little-endian bytes. */
static uint32_t crc_f32_le(const float *x, size_t n)
{
    if (host_is_little_endian())
        return ddpm_crc32c(0, x, n * sizeof(float));
    uint32_t crc = 0;
    float chunk[256];
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        memcpy(chunk, x + i, m * sizeof(float));
        swap_bytes_f32(chunk, m);
        crc = ddpm_crc32c(crc, chunk, m * sizeof(float));
    }
    return crc;
}

/* The checksum metadata value: {"<tensor>":"<crc32c as 8 hex digits>",...}. */
static int build_checksums(strbuf *sb, const char *path, const ddpm_st_tensor *tensors, int n_tensors)
{
    sb_puts(sb, "{");
    for (int i = 0; i < n_tensors; i++) {
        int64_t n = 0;
        element_count(tensors[i].shape, tensors[i].ndim, &n);
        if (i)
            sb_puts(sb, ",");
        sb_json_string(sb, tensors[i].name);
        sb_printf(sb, ":\"%08" PRIx32 "\"", n ? crc_f32_le(tensors[i].data, (size_t)n) : ddpm_crc32c(0, "", 0));
    }
    sb_puts(sb, "}");
    if (sb->failed)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory building the checksums", path);
    return 0;
}

/* The CRC-32C of the length field and the header (header_len bytes at header),
 * its own 8 hex digits (at HEADER_CHECKSUM_AT) taken as "00000000". */
static uint32_t header_crc(const unsigned char *header, uint64_t header_len)
{
    unsigned char len_field[8];
    write_le64(len_field, header_len);
    uint32_t crc = ddpm_crc32c(0, len_field, 8);
    crc = ddpm_crc32c(crc, header, HEADER_CHECKSUM_AT);
    crc = ddpm_crc32c(crc, "00000000", 8);
    return ddpm_crc32c(crc, header + HEADER_CHECKSUM_AT + 8, (size_t)header_len - HEADER_CHECKSUM_AT - 8);
}

typedef struct {
    const strbuf *header;
    const ddpm_st_tensor *tensors;
    int n_tensors;
    float *chunk;
    size_t chunk_len;
    ddpm_sha256 *sha; /* NULL, or hashes every byte written */
} st_writer;

static int write_file(void *ctx, FILE *fp)
{
    const st_writer *w = ctx;
    unsigned char len_field[8];
    write_le64(len_field, (uint64_t)w->header->len);
    if (fwrite(len_field, 1, 8, fp) != 8 || fwrite(w->header->p, 1, w->header->len, fp) != w->header->len)
        return -1;
    if (w->sha) { /* started here: a retried write hashes from the start */
        ddpm_sha256_init(w->sha);
        ddpm_sha256_update(w->sha, len_field, 8);
        ddpm_sha256_update(w->sha, w->header->p, w->header->len);
    }
    for (int i = 0; i < w->n_tensors; i++) {
        int64_t n = 0;
        element_count(w->tensors[i].shape, w->tensors[i].ndim, &n);
        if (write_f32_le(fp, w->tensors[i].data, (size_t)n, w->chunk, w->chunk_len, w->sha))
            return -1;
    }
    return 0;
}

int ddpm_safetensors_write(const char *path, const ddpm_st_tensor *tensors, int n_tensors,
                           const ddpm_st_meta *meta, int n_meta)
{
    return ddpm_safetensors_write_sha256(path, tensors, n_tensors, meta, n_meta, NULL);
}

int ddpm_safetensors_write_sha256(const char *path, const ddpm_st_tensor *tensors, int n_tensors,
                                  const ddpm_st_meta *meta, int n_meta, char sha256[65])
{
    if (!path || !path[0])
        return ddpm_error(DDPM_EINVAL, "safetensors: no output path given");
    int rc = check_write_args(path, tensors, n_tensors, meta, n_meta);
    if (rc)
        return rc;

    /* The header checksum's place first, the caller's metadata, the tensor
       checksums: all in the header before the data. */
    strbuf sums = {0}, header = {0};
    ddpm_st_meta *all_meta = ddpm_malloc((size_t)n_meta + 2, sizeof *all_meta);
    rc = all_meta ? build_checksums(&sums, path, tensors, n_tensors) : DDPM_ENOMEM;
    if (!rc) {
        all_meta[0] = (ddpm_st_meta){HEADER_CHECKSUM_KEY, "00000000"};
        if (n_meta)
            memcpy(all_meta + 1, meta, (size_t)n_meta * sizeof *meta);
        all_meta[n_meta + 1] = (ddpm_st_meta){CHECKSUM_KEY, sums.p};
        rc = build_header(&header, path, tensors, n_tensors, all_meta, n_meta + 2);
    }
    free(all_meta);
    free(sums.p);
    if (!rc && (header.len < HEADER_CHECKSUM_AT + 9 || memcmp(header.p, HEADER_CHECKSUM_PREFIX, HEADER_CHECKSUM_AT)))
        rc = ddpm_error(DDPM_EINVAL, "%s: internal error: the header does not begin with its checksum", path);
    if (rc) {
        free(header.p);
        return rc;
    }
    char hex[9];
    snprintf(hex, sizeof hex, "%08" PRIx32, header_crc((const unsigned char *)header.p, header.len));
    memcpy(header.p + HEADER_CHECKSUM_AT, hex, 8);
    const size_t chunk_len = (size_t)1 << 16;
    float *chunk = host_is_little_endian() ? NULL : malloc(chunk_len * sizeof(float));
    if (!host_is_little_endian() && !chunk) {
        free(header.p);
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory", path);
    }
    ddpm_sha256 sha;
    st_writer w = {&header, tensors, n_tensors, chunk, chunk_len, sha256 ? &sha : NULL};
    rc = ddpm_atomic_write(path, write_file, &w);
    if (sha256 && rc == 0) {
        uint8_t digest[32];
        ddpm_sha256_final(&sha, digest);
        ddpm_sha256_hex(sha256, digest);
    } else if (sha256) {
        sha256[0] = '\0';
    }
    free(header.p);
    free(chunk);
    return rc;
}

/* ---------------------------------------------------------------- reader */

void ddpm_safetensors_close(ddpm_st_file *f)
{
    if (!f)
        return;
    cJSON_Delete(f->root);
    free(f->infos);
    free(f->by_name);
    free(f->meta);
    free(f->meta_by_key);
    free(f->bytes);
    free(f->path);
    free(f);
}

/* Upper bound on the values cJSON would allocate for s[0..n): one per comma or
 * opening bracket outside strings, plus one. */
static size_t count_json_values(const char *s, size_t n)
{
    size_t count = 1;
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == ',' || c == '[' || c == '{') {
            count++;
        }
    }
    return count;
}

/* An exact non-negative integer below 2^53 from a JSON number. */
static int json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return -1;
    double d = item->valuedouble;
    if (!(d >= 0.0 && d < JSON_MAX_EXACT_INT) || d != (double)(uint64_t)d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_info_name(const void *a, const void *b)
{
    return strcmp((*(const ddpm_st_info *const *)a)->name, (*(const ddpm_st_info *const *)b)->name);
}

static int cmp_info_offsets(const void *a, const void *b)
{
    const ddpm_st_info *x = *(const ddpm_st_info *const *)a, *y = *(const ddpm_st_info *const *)b;
    if (x->data_begin != y->data_begin)
        return x->data_begin < y->data_begin ? -1 : 1;
    if (x->data_end != y->data_end)
        return x->data_end < y->data_end ? -1 : 1;
    return 0;
}

static int cmp_meta_key(const void *a, const void *b)
{
    return strcmp(((const ddpm_st_meta *)a)->key, ((const ddpm_st_meta *)b)->key);
}

static int parse_metadata(ddpm_st_file *f, const cJSON *obj)
{
    const char *p = f->path;
    if (!cJSON_IsObject(obj))
        return ddpm_error(DDPM_EFORMAT, "%s: %s is not a JSON object", p, METADATA_KEY);
    int n = cJSON_GetArraySize(obj);
    if (n > DDPM_ST_MAX_TENSORS)
        return ddpm_error(DDPM_EFORMAT, "%s: %s has %d entries, over the limit of %d", p, METADATA_KEY,
                          n, DDPM_ST_MAX_TENSORS);
    f->meta = ddpm_malloc(n ? (size_t)n : 1, sizeof *f->meta);
    f->meta_by_key = ddpm_malloc(n ? (size_t)n : 1, sizeof *f->meta_by_key);
    if (!f->meta || !f->meta_by_key)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory for %d metadata entries", p, n);
    int i = 0;
    for (const cJSON *e = obj->child; e; e = e->next, i++) {
        size_t len = strlen(e->string);
        if (len > DDPM_ST_MAX_NAME)
            return ddpm_error(DDPM_EFORMAT, "%s: metadata key '%.*s...' is %zu bytes, over the %d-byte limit",
                              p, MSG_NAME, e->string, len, DDPM_ST_MAX_NAME);
        if (!cJSON_IsString(e) || !e->valuestring)
            return ddpm_error(DDPM_EFORMAT, "%s: metadata value for '%.*s' is not a string", p, MSG_NAME,
                              e->string);
        f->meta[i].key = e->string;
        f->meta[i].value = e->valuestring;
    }
    f->n_meta = i;
    memcpy(f->meta_by_key, f->meta, (size_t)i * sizeof *f->meta);
    qsort(f->meta_by_key, (size_t)i, sizeof *f->meta_by_key, cmp_meta_key);
    for (int k = 1; k < i; k++)
        if (strcmp(f->meta_by_key[k - 1].key, f->meta_by_key[k].key) == 0)
            return ddpm_error(DDPM_EFORMAT, "%s: metadata key '%.*s' appears twice", p, MSG_NAME,
                              f->meta_by_key[k].key);
    return 0;
}

static int parse_tensor(ddpm_st_file *f, const cJSON *entry, ddpm_st_info *info)
{
    const char *p = f->path;
    const char *name = entry->string;
    size_t len = strlen(name);
    if (len == 0)
        return ddpm_error(DDPM_EFORMAT, "%s: a tensor has an empty name", p);
    if (len > DDPM_ST_MAX_NAME)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor name '%.*s...' is %zu bytes, over the %d-byte limit", p,
                          MSG_NAME, name, len, DDPM_ST_MAX_NAME);
    if (!cJSON_IsObject(entry))
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' is not a JSON object", p, MSG_NAME, name);

    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const cJSON *field = entry->child; field; field = field->next) {
        const cJSON **slot = strcmp(field->string, "dtype") == 0           ? &dtype
                             : strcmp(field->string, "shape") == 0         ? &shape
                             : strcmp(field->string, "data_offsets") == 0 ? &offsets
                                                                           : NULL;
        if (!slot)
            return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has an unknown field '%.*s'", p, MSG_NAME,
                              name, MSG_NAME, field->string);
        if (*slot)
            return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has field '%s' twice", p, MSG_NAME, name,
                              field->string);
        *slot = field;
    }
    if (!dtype || !shape || !offsets)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has no %s", p, MSG_NAME, name,
                          !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

    if (!cJSON_IsString(dtype) || !dtype->valuestring)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has a dtype that is not a string", p, MSG_NAME,
                          name);
    if (strcmp(dtype->valuestring, "F32") != 0)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has dtype %.32s; only F32 is supported", p,
                          MSG_NAME, name, dtype->valuestring);

    if (!cJSON_IsArray(shape))
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has a shape that is not an array", p, MSG_NAME,
                          name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > DDPM_ST_MAX_DIMS)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has %d dimensions; at most %d are supported", p,
                          MSG_NAME, name, ndim, DDPM_ST_MAX_DIMS);
    info->name = name;
    info->ndim = ndim;
    int d = 0;
    for (const cJSON *dim = shape->child; dim; dim = dim->next, d++) {
        uint64_t v;
        if (json_uint(dim, &v) != 0)
            return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has shape[%d] that is not a non-negative integer",
                              p, MSG_NAME, name, d);
        info->shape[d] = (int64_t)v;
    }
    if (element_count(info->shape, ndim, &info->n_elements) != 0)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has a shape whose element count overflows", p,
                          MSG_NAME, name);

    uint64_t begin, end;
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        json_uint(offsets->child, &begin) != 0 || json_uint(offsets->child->next, &end) != 0)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' data_offsets is not two non-negative integers",
                          p, MSG_NAME, name);
    if (begin > end)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                          p, MSG_NAME, name, begin, end);
    if (end > f->data_len)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: tensor '%.*s' data_offsets end at %" PRIu64 ", past the %" PRIu64
                          " bytes of data (truncated or corrupt file)",
                          p, MSG_NAME, name, end, f->data_len);
    if (end - begin != 4 * (uint64_t)info->n_elements)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: tensor '%.*s' data_offsets span %" PRIu64 " bytes but its shape needs %" PRIu64,
                          p, MSG_NAME, name, end - begin, 4 * (uint64_t)info->n_elements);
    info->data_begin = begin;
    info->data_end = end;
    return 0;
}

/* A header that begins with the header checksum's place must match it; one that
 * does not has no header checksum (f->header_checksummed stays 0). Checked
 * before the JSON is parsed, so a damaged header never reaches the parser. */
static int verify_header_checksum(ddpm_st_file *f, const unsigned char *header, uint64_t header_len)
{
    if (header_len < HEADER_CHECKSUM_AT + 9 || memcmp(header, HEADER_CHECKSUM_PREFIX, HEADER_CHECKSUM_AT) != 0)
        return 0;
    /* lower-case only, as written: a flipped bit 5 makes 'b' a 'B' of the same value */
    const unsigned char *hex = header + HEADER_CHECKSUM_AT;
    int is_hex = hex[8] == '"';
    for (int k = 0; is_hex && k < 8; k++)
        is_hex = (hex[k] >= '0' && hex[k] <= '9') || (hex[k] >= 'a' && hex[k] <= 'f');
    if (!is_hex)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: the header's checksum (metadata '%s') is not 8 lower-case hex digits: the file is corrupt",
                          f->path, HEADER_CHECKSUM_KEY);
    char stored_hex[9];
    memcpy(stored_hex, hex, 8);
    stored_hex[8] = '\0';
    uint32_t stored = (uint32_t)strtoul(stored_hex, NULL, 16), crc = header_crc(header, header_len);
    if (crc != stored)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: the header (metadata and tensor table) fails its checksum (stored crc32c %08" PRIx32
                          ", header %08" PRIx32 "): the file is corrupt",
                          f->path, stored, crc);
    f->header_checksummed = 1;
    return 0;
}

/* Validates f->bytes and fills in the rest of f. */
static int parse(ddpm_st_file *f)
{
    const char *p = f->path;
    if (f->n_bytes < 8)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: file is %zu bytes, too short for the 8-byte header length "
                          "(truncated or not a safetensors file)",
                          p, f->n_bytes);
    uint64_t header_len = read_le64(f->bytes);
    uint64_t rest = (uint64_t)(f->n_bytes - 8);
    if (header_len > DDPM_ST_MAX_HEADER)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: header length %" PRIu64 " is over the %" PRIu64
                          "-byte limit (corrupt or not a safetensors file)",
                          p, header_len, DDPM_ST_MAX_HEADER);
    if (header_len > rest)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: header length %" PRIu64 " runs past the end of the file (%" PRIu64
                          " bytes follow the length field): truncated or not a safetensors file",
                          p, header_len, rest);
    const char *header = (const char *)f->bytes + 8;
    f->data = f->bytes + 8 + header_len;
    f->data_len = rest - header_len;
    if (f->data_len > DDPM_ST_MAX_DATA)
        return ddpm_error(DDPM_EFORMAT, "%s: %" PRIu64 " bytes of tensor data, over the %" PRIu64 "-byte limit", p,
                          f->data_len, DDPM_ST_MAX_DATA);
    int rc = verify_header_checksum(f, (const unsigned char *)header, header_len);
    if (rc)
        return rc;

    if (count_json_values(header, (size_t)header_len) > MAX_JSON_VALUES)
        return ddpm_error(DDPM_EFORMAT, "%s: header holds more than %zu JSON values", p, MAX_JSON_VALUES);
    const char *end = NULL;
    f->root = cJSON_ParseWithLengthOpts(header, (size_t)header_len, &end, 0);
    if (!f->root) {
        size_t at = end && end >= header && end <= header + header_len ? (size_t)(end - header) : 0;
        return ddpm_error(DDPM_EFORMAT, "%s: header is not valid JSON (error near byte %zu of %" PRIu64 ")",
                          p, at, header_len);
    }
    for (const char *c = end; c < header + header_len; c++)
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r')
            return ddpm_error(DDPM_EFORMAT, "%s: header has bytes after its JSON object (at byte %zu)", p,
                              (size_t)(c - header));
    if (!cJSON_IsObject(f->root))
        return ddpm_error(DDPM_EFORMAT, "%s: header is not a JSON object", p);

    int n_entries = 0;
    const cJSON *metadata = NULL;
    for (const cJSON *e = f->root->child; e; e = e->next) {
        if (strcmp(e->string, METADATA_KEY) == 0) {
            if (metadata)
                return ddpm_error(DDPM_EFORMAT, "%s: header has %s twice", p, METADATA_KEY);
            metadata = e;
        } else if (++n_entries > DDPM_ST_MAX_TENSORS) {
            return ddpm_error(DDPM_EFORMAT, "%s: header lists more than %d tensors", p, DDPM_ST_MAX_TENSORS);
        }
    }
    if (metadata && (rc = parse_metadata(f, metadata)))
        return rc;
    /* the entry is only ever where the writer puts it, where it was checked */
    if (ddpm_safetensors_meta(f, HEADER_CHECKSUM_KEY) && !f->header_checksummed)
        return ddpm_error(DDPM_EFORMAT, "%s: metadata '%s' is not at the start of the header, where its writer puts it",
                          p, HEADER_CHECKSUM_KEY);

    f->infos = ddpm_calloc(n_entries ? (size_t)n_entries : 1, sizeof *f->infos);
    f->by_name = ddpm_malloc(n_entries ? (size_t)n_entries : 1, sizeof *f->by_name);
    if (!f->infos || !f->by_name)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory for %d tensors", p, n_entries);
    int i = 0;
    for (const cJSON *e = f->root->child; e; e = e->next) {
        if (e == metadata)
            continue;
        if ((rc = parse_tensor(f, e, &f->infos[i])))
            return rc;
        f->by_name[i] = &f->infos[i];
        i++;
    }
    f->n_tensors = i;

    /* Overlaps: sorted by offsets, each tensor must start at or after the end of
     * the one before. by_name serves as scratch space first. */
    qsort(f->by_name, (size_t)i, sizeof *f->by_name, cmp_info_offsets);
    for (int k = 1; k < i; k++)
        if (f->by_name[k]->data_begin < f->by_name[k - 1]->data_end)
            return ddpm_error(DDPM_EFORMAT, "%s: tensors '%.*s' and '%.*s' overlap in the data", p, MSG_NAME,
                              f->by_name[k - 1]->name, MSG_NAME, f->by_name[k]->name);
    qsort(f->by_name, (size_t)i, sizeof *f->by_name, cmp_info_name);
    for (int k = 1; k < i; k++)
        if (strcmp(f->by_name[k - 1]->name, f->by_name[k]->name) == 0)
            return ddpm_error(DDPM_EFORMAT, "%s: two tensors are named '%.*s'", p, MSG_NAME,
                              f->by_name[k]->name);
    return 0;
}

/* Checks every tensor's bytes against the CRC-32C stored in the metadata, when
 * there is one (files written before checksums existed have none). */
static int verify_checksums(ddpm_st_file *f)
{
    const char *p = f->path;
    const char *value = ddpm_safetensors_meta(f, CHECKSUM_KEY);
    if (!value)
        return 0;
    cJSON *sums = cJSON_Parse(value);
    unsigned char *seen = ddpm_calloc(f->n_tensors ? (size_t)f->n_tensors : 1, 1);
    int rc = seen ? 0 : DDPM_ENOMEM;
    if (!rc && !cJSON_IsObject(sums))
        rc = ddpm_error(DDPM_EFORMAT, "%s: metadata '%s' is not a JSON object", p, CHECKSUM_KEY);
    for (const cJSON *e = rc ? NULL : sums->child; !rc && e; e = e->next) {
        const ddpm_st_info *info = ddpm_safetensors_find(f, e->string);
        const char *hex = cJSON_GetStringValue(e);
        int is_hex = hex && strlen(hex) == 8;
        for (int k = 0; is_hex && k < 8; k++)
            is_hex = isxdigit((unsigned char)hex[k]) != 0;
        unsigned long stored = is_hex ? strtoul(hex, NULL, 16) : 0;
        if (!info)
            rc = ddpm_error(DDPM_EFORMAT, "%s: metadata '%s' names a tensor '%.*s' that is not in the file", p,
                            CHECKSUM_KEY, MSG_NAME, e->string);
        else if (seen[info - f->infos]++)
            rc = ddpm_error(DDPM_EFORMAT, "%s: metadata '%s' lists tensor '%.*s' twice", p, CHECKSUM_KEY,
                            MSG_NAME, e->string);
        else if (!is_hex)
            rc = ddpm_error(DDPM_EFORMAT, "%s: the checksum of tensor '%.*s' is not 8 hex digits", p, MSG_NAME,
                            e->string);
        else {
            uint32_t crc = ddpm_crc32c(0, f->data + info->data_begin, (size_t)(info->data_end - info->data_begin));
            if (crc != (uint32_t)stored)
                rc = ddpm_error(DDPM_EFORMAT,
                                "%s: tensor '%.*s' fails its checksum (stored crc32c %08lx, data %08" PRIx32
                                "): the file is corrupt",
                                p, MSG_NAME, e->string, stored, crc);
        }
    }
    for (int i = 0; !rc && i < f->n_tensors; i++)
        if (!seen[i])
            rc = ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has no checksum in metadata '%s'", p, MSG_NAME,
                            f->infos[i].name, CHECKSUM_KEY);
    free(seen);
    cJSON_Delete(sums);
    f->checksummed = rc == 0;
    return rc;
}

/* Takes ownership of bytes (freed on failure too). */
static int open_owned(ddpm_st_file **out, unsigned char *bytes, size_t n_bytes, const char *name)
{
    ddpm_st_file *f = calloc(1, sizeof *f);
    char *path = strdup(name);
    if (!f || !path) {
        free(f);
        free(path);
        free(bytes);
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory", name);
    }
    f->path = path;
    f->bytes = bytes;
    f->n_bytes = n_bytes;
    int rc = parse(f);
    if (!rc)
        rc = verify_checksums(f);
    if (rc) {
        ddpm_safetensors_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int ddpm_safetensors_open_memory(ddpm_st_file **out, const void *bytes, size_t n_bytes, const char *name)
{
    if (!out)
        return ddpm_error(DDPM_EINVAL, "safetensors: no output pointer given");
    *out = NULL;
    if (!name)
        name = "(memory)";
    if (!bytes && n_bytes > 0)
        return ddpm_error(DDPM_EINVAL, "%s: no bytes given", name);
    unsigned char *copy = malloc(n_bytes ? n_bytes : 1);
    if (!copy)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory for %zu bytes", name, n_bytes);
    if (n_bytes)
        memcpy(copy, bytes, n_bytes);
    return open_owned(out, copy, n_bytes, name);
}

int ddpm_safetensors_open(ddpm_st_file **out, const char *path)
{
    if (!out || !path)
        return ddpm_error(DDPM_EINVAL, "safetensors: no path or output pointer given");
    *out = NULL;
    unsigned char *bytes = NULL;
    size_t size = 0;
    int rc = ddpm_read_file(path, DDPM_ST_MAX_READ, &bytes, &size);
    return rc ? rc : open_owned(out, bytes, size, path);
}

int ddpm_safetensors_count(const ddpm_st_file *f) { return f ? f->n_tensors : 0; }

const ddpm_st_info *ddpm_safetensors_at(const ddpm_st_file *f, int i)
{
    if (!f || i < 0 || i >= f->n_tensors)
        return NULL;
    return &f->infos[i];
}

static int cmp_name_key(const void *key, const void *elem)
{
    return strcmp((const char *)key, (*(const ddpm_st_info *const *)elem)->name);
}

const ddpm_st_info *ddpm_safetensors_find(const ddpm_st_file *f, const char *name)
{
    if (!f || !name || f->n_tensors == 0)
        return NULL;
    const ddpm_st_info *const *hit =
        bsearch(name, f->by_name, (size_t)f->n_tensors, sizeof *f->by_name, cmp_name_key);
    return hit ? *hit : NULL;
}

int ddpm_safetensors_read_f32(const ddpm_st_file *f, const char *name, float *dst, size_t n_expected)
{
    if (!f || !name)
        return ddpm_error(DDPM_EINVAL, "safetensors: no file or tensor name given");
    const ddpm_st_info *info = ddpm_safetensors_find(f, name);
    if (!info)
        return ddpm_error(DDPM_EFORMAT, "%s: no tensor named '%.*s'", f->path, MSG_NAME, name);
    if ((uint64_t)info->n_elements != (uint64_t)n_expected)
        return ddpm_error(DDPM_EFORMAT, "%s: tensor '%.*s' has %" PRId64 " elements, expected %zu", f->path,
                          MSG_NAME, name, info->n_elements, n_expected);
    if (n_expected == 0)
        return 0;
    if (!dst)
        return ddpm_error(DDPM_EINVAL, "%s: no destination for tensor '%.*s'", f->path, MSG_NAME, name);
    /* memcpy: the data of an untrusted file need not be 4-byte aligned. */
    memcpy(dst, f->data + info->data_begin, n_expected * sizeof(float));
    if (!host_is_little_endian())
        swap_bytes_f32(dst, n_expected);
    return 0;
}

static int cmp_meta_lookup(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const ddpm_st_meta *)elem)->key);
}

const char *ddpm_safetensors_meta(const ddpm_st_file *f, const char *key)
{
    if (!f || !key || f->n_meta == 0)
        return NULL;
    const ddpm_st_meta *hit =
        bsearch(key, f->meta_by_key, (size_t)f->n_meta, sizeof *f->meta_by_key, cmp_meta_lookup);
    return hit ? hit->value : NULL;
}

int ddpm_safetensors_meta_count(const ddpm_st_file *f) { return f ? f->n_meta : 0; }

int ddpm_safetensors_meta_at(const ddpm_st_file *f, int i, const char **key, const char **value)
{
    if (!f || i < 0 || i >= f->n_meta)
        return ddpm_error(DDPM_EINVAL, "safetensors: metadata index %d out of range", i);
    if (key)
        *key = f->meta[i].key;
    if (value)
        *value = f->meta[i].value;
    return 0;
}

const char *ddpm_safetensors_path(const ddpm_st_file *f) { return f ? f->path : NULL; }

int ddpm_safetensors_checksummed(const ddpm_st_file *f) { return f ? f->checksummed : 0; }

int ddpm_safetensors_header_checksummed(const ddpm_st_file *f) { return f ? f->header_checksummed : 0; }
