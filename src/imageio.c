/* imageio.c: image files <-> CHW arrays (see include/ddpm/imageio.h). */
#include "ddpm/imageio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
#include <zlib.h>

#include "ddpm/error.h"
#include "ddpm/fsutil.h"

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Width and height from the header of a PNG, GIF, BMP or JPEG file, read without
 * stb_image: stbi_info itself refuses images too large for it to decode and then
 * reports the format as unknown, so this is how such a file is told apart from
 * one that is not an image. Returns 0 if the size was found. */
static int sniff_size(FILE *f, long long *width, long long *height)
{
    uint8_t h[32];
    rewind(f);
    size_t n = fread(h, 1, sizeof h, f);
    rewind(f);
    if (n >= 24 && !memcmp(h, "\x89PNG\r\n\x1a\n", 8) && !memcmp(h + 12, "IHDR", 4)) {
        *width = be32(h + 16), *height = be32(h + 20);
        return 0;
    }
    if (n >= 10 && (!memcmp(h, "GIF87a", 6) || !memcmp(h, "GIF89a", 6))) {
        *width = h[6] | h[7] << 8, *height = h[8] | h[9] << 8;
        return 0;
    }
    if (n >= 26 && h[0] == 'B' && h[1] == 'M' && h[14] >= 40) { /* BITMAPINFOHEADER or later */
        int32_t w = (int32_t)(h[18] | h[19] << 8 | h[20] << 16 | (uint32_t)h[21] << 24);
        int32_t ht = (int32_t)(h[22] | h[23] << 8 | h[24] << 16 | (uint32_t)h[25] << 24);
        *width = w, *height = ht < 0 ? -(long long)ht : ht;
        return 0;
    }
    if (n >= 4 && h[0] == 0xff && h[1] == 0xd8) { /* JPEG: walk the segments to a frame header */
        if (fseek(f, 2, SEEK_SET) != 0)
            return -1;
        for (int segments = 0; segments < 1000; segments++) {
            uint8_t m[9];
            if (fread(m, 1, 4, f) != 4 || m[0] != 0xff)
                break;
            int marker = m[1], len = m[2] << 8 | m[3];
            int is_frame = marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 &&
                           marker != 0xcc;
            if (is_frame) {
                if (fread(m + 4, 1, 5, f) != 5)
                    break;
                *height = m[5] << 8 | m[6], *width = m[7] << 8 | m[8];
                rewind(f);
                return 0;
            }
            if (len < 2 || fseek(f, len - 2, SEEK_CUR) != 0)
                break;
        }
        rewind(f);
    }
    return -1;
}

static int too_large(long long width, long long height)
{
    return width > DDPM_IMAGE_MAX_SIDE || height > DDPM_IMAGE_MAX_SIDE ||
           width * height > DDPM_IMAGE_MAX_PIXELS;
}

static int too_large_error(const char *path, long long width, long long height)
{
    return ddpm_error(DDPM_EFORMAT,
                      "%s: image is %lld x %lld: too large (the limit is %d pixels, sides up to %d)",
                      path, width, height, DDPM_IMAGE_MAX_PIXELS, DDPM_IMAGE_MAX_SIDE);
}

/* The JPEG file f's Huffman tables, each of at most 256 codes. The stb_image we
 * build against (Debian's 2022 snapshot) trusts the 16 code counts of a DHT
 * segment: their sum, up to 4080, indexes arrays of 257 and 256 entries, so a
 * crafted file overwrote the decoder's memory (found by tests/fuzz/fuzz_image.c;
 * later stb_image versions check this). Walks every segment, including those
 * after the entropy-coded data of each scan. Returns 0, or -1 for a bad table. */
static int jpeg_tables_ok(FILE *f)
{
    if (fseek(f, 1, SEEK_SET) != 0) /* the SOI marker, after any fill bytes, is skipped below */
        return 0;
    /* Like stb_image, bytes that are not a marker are skipped one at a time: this
     * also walks the entropy-coded data of each scan, where 0xff is followed by 0
     * (stuffing) or a restart marker, and finds every table however it is placed. */
    int c, ok = 0;
    while (!ok && (c = getc(f)) != EOF) {
        if (c != 0xff)
            continue;
        while ((c = getc(f)) == 0xff) /* fill bytes */
            ;
        if (c == EOF || c == 0xd9) /* end of image */
            break;
        if (c == 0x00 || c == 0x01 || (c >= 0xd0 && c <= 0xd8)) /* stuffing, markers without a length */
            continue;
        int hi = getc(f), lo = getc(f);
        if (hi == EOF || lo == EOF)
            break;
        long len = (long)(hi << 8 | lo) - 2;
        if (c != 0xc4) {
            if (len > 0 && fseek(f, len, SEEK_CUR) != 0)
                break;
            continue;
        }
        while (len > 0) { /* DHT: tables of 1 + 16 + n bytes, read while any length is left */
            uint8_t counts[17] = {0};
            size_t got = fread(counts, 1, 17, f);
            int n = 0;
            for (int i = 1; i < 17; i++)
                n += counts[i];
            if (n > 256)
                ok = -1;
            if (ok || got < 17 || fseek(f, n, SEEK_CUR) != 0)
                break;
            len -= 17 + n;
        }
    }
    rewind(f);
    return ok;
}

/* The chunks of the PNG file f (file_size bytes), each inside the file, and no
 * empty IDAT. stb_image grows its buffer for the compressed data to the next
 * power of two above the lengths the IDAT chunks claim before it reads them, so a
 * 60-byte file claiming a 2 GB chunk made it allocate 2 GB (libFuzzer's
 * out-of-memory report, found by tests/fuzz/fuzz_image.c); an empty IDAT before
 * any data makes it add 0 to a null pointer (UBSan). Walks chunk by chunk to IEND
 * or the end of the file. Returns 0, or -1 for a chunk that cannot be. */
static int png_chunks_ok(FILE *f, long long file_size)
{
    if (fseek(f, 8, SEEK_SET) != 0)
        return 0;
    long long at = 8;
    int ok = 0;
    uint8_t head[8];
    while (!ok && fread(head, 1, 8, f) == 8) {
        long long len = (long long)be32(head);
        if (len > file_size - at - 12 || (len == 0 && !memcmp(head + 4, "IDAT", 4)))
            ok = -1;
        else if (!memcmp(head + 4, "IEND", 4) || fseek(f, (long)len + 4, SEEK_CUR) != 0)
            break;
        at += 12 + len;
    }
    rewind(f);
    return ok;
}

/* The three header numbers of a binary PGM/PPM file (P5, P6) f, each at most
 * 2^24. stb_image parses them into an int without an overflow check (UBSan:
 * "322222222 * 10 cannot be represented in type 'int'", found by
 * tests/fuzz/fuzz_image.c). Whitespace and comments are skipped as stb_image
 * skips them. Returns 0, or -1 for a number too large. */
static int pnm_numbers_ok(FILE *f)
{
    if (fseek(f, 2, SEEK_SET) != 0)
        return 0;
    int c = getc(f), ok = 0;
    for (int k = 0; k < 3 && !ok; k++) {
        for (;;) { /* whitespace, and comments from '#' to the end of the line */
            while (c == ' ' || (c >= '\t' && c <= '\r'))
                c = getc(f);
            if (c != '#')
                break;
            while (c != EOF && c != '\n' && c != '\r')
                c = getc(f);
        }
        long value = 0;
        for (; c >= '0' && c <= '9'; c = getc(f))
            if ((value = value * 10 + (c - '0')) > (1L << 24)) {
                ok = -1;
                break;
            }
    }
    rewind(f);
    return ok;
}

/* The header of the open file f, checked against the size limits; the file
 * position is left at the start. Besides the pixel limit, an image must not
 * claim more than MAX_PIXELS_PER_BYTE pixels per byte of file: no format
 * stb_image reads packs more (GIF's LZW manages about 2,700 at best, PNG's
 * deflate about 1,030, the RLE formats 128), so a tiny or truncated file cannot
 * make the decoder allocate and fill a large image (a fuzzer's 74-byte TGA
 * claimed 2586 x 8196 pixels). */
enum { MAX_PIXELS_PER_BYTE = 4096 };

/* Whether f starts with a JPEG start-of-image marker as stb_image reads one: 0xff,
 * any number of 0xff fill bytes, then 0xd8 (a fuzzer's "ff ff d8" file passed a
 * check for "ff d8" alone and reached the Huffman bug below). */
static int is_jpeg(FILE *f)
{
    rewind(f);
    int c = getc(f);
    if (c != 0xff)
        return 0;
    while ((c = getc(f)) == 0xff)
        ;
    return c == 0xd8;
}

/* file_size: the bytes of the file behind f (-1: unknown, then asked of fstat) */
static int read_header(FILE *f, long long file_size, const char *path, int *width, int *height, int *channels)
{
    int w = 0, h = 0, n = 0;
    uint8_t magic[2] = {0, 0};
    if (is_jpeg(f) && jpeg_tables_ok(f) != 0)
        return ddpm_error(DDPM_EFORMAT, "%s: corrupt JPEG (a Huffman table of more than 256 codes)", path);
    rewind(f);
    if (fread(magic, 1, 2, f) == 2 && magic[0] == 'P' && (magic[1] == '5' || magic[1] == '6') && pnm_numbers_ok(f) != 0)
        return ddpm_error(DDPM_EFORMAT, "%s: corrupt PGM/PPM (a header number over 2^24)", path);
    struct stat st;
    if (file_size < 0 && fstat(fileno(f), &st) == 0)
        file_size = (long long)st.st_size;
    rewind(f);
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t sig[8];
    if (file_size >= 0 && fread(sig, 1, 8, f) == 8 && !memcmp(sig, png_magic, 8) && png_chunks_ok(f, file_size) != 0)
        return ddpm_error(DDPM_EFORMAT, "%s: corrupt PNG (a chunk longer than the file, or an empty IDAT)", path);
    rewind(f);
    if (!stbi_info_from_file(f, &w, &h, &n)) {
        const char *why = stbi_failure_reason();
        long long sw, sh;
        if (sniff_size(f, &sw, &sh) == 0 && too_large(sw, sh))
            return too_large_error(path, sw, sh);
        return ddpm_error(DDPM_EFORMAT, "%s: not an image stb_image reads (%s)", path,
                          why ? why : "unknown format");
    }
    if (w <= 0 || h <= 0 || n < 1 || n > 4)
        return ddpm_error(DDPM_EFORMAT, "%s: bad image header (%d x %d, %d channels)", path, w, h, n);
    if (too_large(w, h))
        return too_large_error(path, w, h);
    if (file_size >= 0 && (long long)w * h > (long long)MAX_PIXELS_PER_BYTE * file_size)
        return ddpm_error(DDPM_EFORMAT, "%s: a %d x %d image cannot fit in %lld bytes (truncated or corrupt)",
                          path, w, h, file_size);
    *width = w;
    *height = h;
    *channels = n;
    return 0;
}

int ddpm_image_probe(const char *path, int *width, int *height, int *channels)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    int rc = read_header(f, -1, path, width, height, channels);
    fclose(f);
    return rc;
}

/* One pixel of `src` (src_channels 1..4) as `channels` (1 or 3) values. */
static inline void convert_pixel(uint8_t *dst, const uint8_t *src, int src_channels, int channels)
{
    if (channels == 1) {
        if (src_channels <= 2) {
            dst[0] = src[0];
        } else {
            /* ITU-R BT.601 luma, rounded half up, in exact integer arithmetic */
            unsigned y = 299u * src[0] + 587u * src[1] + 114u * src[2];
            dst[0] = (uint8_t)((y + 500u) / 1000u);
        }
    } else if (src_channels <= 2) {
        dst[0] = dst[1] = dst[2] = src[0];
    } else {
        dst[0] = src[0], dst[1] = src[1], dst[2] = src[2];
    }
}

static int check_convert_args(int width, int height, int src_channels, int size, int channels)
{
    if (width <= 0 || height <= 0 || too_large(width, height))
        return ddpm_error(DDPM_EINVAL, "image size %d x %d out of range (1..%d a side, %d pixels)",
                          width, height, DDPM_IMAGE_MAX_SIDE, DDPM_IMAGE_MAX_PIXELS);
    if (src_channels < 1 || src_channels > 4)
        return ddpm_error(DDPM_EINVAL, "image has %d channels (1..4 supported)", src_channels);
    if (channels != 1 && channels != 3)
        return ddpm_error(DDPM_EINVAL, "target channel count %d (must be 1 or 3)", channels);
    if (size <= 0 || size > DDPM_IMAGE_MAX_SIDE)
        return ddpm_error(DDPM_EINVAL, "target size %d out of range (1..%d)", size, DDPM_IMAGE_MAX_SIDE);
    return 0;
}

/* ddpm_image_convert_u8 on pixels it may overwrite: the crop and the channel
 * conversion are done in place in buf, so that a large image costs no second
 * copy of itself. A gray source wanted as RGB is cropped and resized as gray and
 * replicated at the end: the resize works on each channel alone, so the result is
 * the same as replicating first. */
static int convert_in_place(uint8_t *out, uint8_t *buf, int width, int height, int src_channels,
                            int size, int channels)
{
    int rc = check_convert_args(width, height, src_channels, size, channels);
    if (rc)
        return rc;
    /* Largest centred square: offsets (x0, y0), side m. */
    int m = width < height ? width : height;
    int x0 = (width - m) / 2, y0 = (height - m) / 2;
    int work = channels == 3 && src_channels <= 2 ? 1 : channels; /* channels resized */
    /* The cropped square, converted to `work` channels, HWC, at the start of buf.
     * Pixel (x, y) moves from ((y0 + y) * width + x0 + x) * src_channels to
     * (y * m + x) * work, never a later offset (m <= width, work <= src_channels),
     * and each pixel's values are read before any is written. */
    for (int y = 0; y < m; y++) {
        const uint8_t *row = buf + ((size_t)(y0 + y) * width + x0) * src_channels;
        uint8_t *dst = buf + (size_t)y * m * work;
        for (int x = 0; x < m; x++) {
            uint8_t px[4];
            memcpy(px, row + (size_t)x * src_channels, (size_t)src_channels);
            convert_pixel(dst + (size_t)x * work, px, src_channels, work);
        }
    }
    size_t plane = (size_t)size * size;
    const uint8_t *hwc = buf;
    uint8_t *resized = NULL;
    if (m != size) {
        resized = ddpm_malloc(plane, (size_t)work);
        if (!resized)
            return DDPM_ENOMEM;
        if (!stbir_resize_uint8(buf, m, m, 0, resized, size, size, 0, work)) {
            free(resized);
            return ddpm_error(DDPM_ENOMEM, "stb_image_resize failed (%d x %d -> %d x %d)", m, m,
                              size, size);
        }
        hwc = resized;
    }
    /* HWC -> CHW (a gray `work` feeds every output channel) */
    for (int c = 0; c < channels; c++)
        for (size_t i = 0; i < plane; i++)
            out[c * plane + i] = hwc[i * work + (work == 1 ? 0 : c)];
    free(resized);
    return 0;
}

int ddpm_image_convert_u8(uint8_t *out, const uint8_t *src, int width, int height,
                          int src_channels, int size, int channels)
{
    int rc = check_convert_args(width, height, src_channels, size, channels);
    if (rc)
        return rc;
    size_t n = (size_t)width * height * src_channels;
    uint8_t *copy = ddpm_malloc(n, 1);
    if (!copy)
        return DDPM_ENOMEM;
    memcpy(copy, src, n);
    rc = convert_in_place(out, copy, width, height, src_channels, size, channels);
    free(copy);
    return rc;
}

static int check_load_args(const char *path, int size, int channels)
{
    if (channels != 1 && channels != 3)
        return ddpm_error(DDPM_EINVAL, "%s: channel count %d (must be 1 or 3)", path, channels);
    if (size <= 0 || size > DDPM_IMAGE_MAX_SIDE)
        return ddpm_error(DDPM_EINVAL, "%s: target size %d out of range (1..%d)", path, size,
                          DDPM_IMAGE_MAX_SIDE);
    return 0;
}

/* Decodes the image f holds (its file has file_size bytes, -1: ask fstat) into out. */
static int load_stream(FILE *f, long long file_size, const char *path, uint8_t *out, int size, int channels)
{
    int w = 0, h = 0, n = 0;
    /* The header is checked before decoding, so a huge image cannot exhaust memory. */
    int rc = read_header(f, file_size, path, &w, &h, &n);
    if (rc)
        return rc;
    uint8_t *pixels = stbi_load_from_file(f, &w, &h, &n, 0);
    if (!pixels) {
        const char *why = stbi_failure_reason();
        return ddpm_error(DDPM_EFORMAT, "%s: cannot decode (%s)", path, why ? why : "unknown error");
    }
    rc = convert_in_place(out, pixels, w, h, n, size, channels);
    stbi_image_free(pixels);
    if (rc) {
        char why[512];
        snprintf(why, sizeof why, "%s", ddpm_last_error());
        return ddpm_error(rc, "%s: %s", path, why);
    }
    return 0;
}

int ddpm_image_load_u8(const char *path, uint8_t *out, int size, int channels)
{
    int rc = check_load_args(path, size, channels);
    if (rc)
        return rc;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    rc = load_stream(f, -1, path, out, size, channels);
    fclose(f);
    return rc;
}

int ddpm_image_decode_u8(const char *name, const uint8_t *bytes, size_t n_bytes, uint8_t *out, int size,
                         int channels)
{
    int rc = check_load_args(name, size, channels);
    if (rc)
        return rc;
    if (n_bytes == 0)
        return ddpm_error(DDPM_EFORMAT, "%s: empty file", name);
    FILE *f = fmemopen((void *)bytes, n_bytes, "rb"); /* read only: "rb" never writes the buffer */
    if (!f)
        return ddpm_error(DDPM_ENOMEM, "%s: cannot read from memory: %s", name, strerror(errno));
    rc = load_stream(f, (long long)n_bytes, name, out, size, channels);
    fclose(f);
    return rc;
}

int ddpm_image_load(const char *path, float *out, int size, int channels)
{
    if (size <= 0 || size > DDPM_IMAGE_MAX_SIDE || (channels != 1 && channels != 3))
        return ddpm_image_load_u8(path, NULL, size, channels); /* reports the bad argument */
    size_t n = (size_t)channels * size * size;
    uint8_t *u8 = ddpm_malloc(n, 1);
    if (!u8)
        return DDPM_ENOMEM;
    int rc = ddpm_image_load_u8(path, u8, size, channels);
    if (!rc)
        ddpm_image_u8_to_float(out, u8, n);
    free(u8);
    return rc;
}

void ddpm_image_u8_to_float(float *out, const uint8_t *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (float)in[i] / 127.5f - 1.0f;
}

void ddpm_image_float_to_u8(uint8_t *out, const float *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = (in[i] + 1.0f) * 127.5f;
        if (!(v >= 0.0f)) /* also catches NaN */
            v = 0.0f;
        if (v > 255.0f)
            v = 255.0f;
        out[i] = (uint8_t)(v + 0.5f);
    }
}

/* A growing byte buffer for the PNG in memory. */
typedef struct {
    uint8_t *data;
    size_t n, cap;
    int failed;
} byte_buffer;

static void buffer_append(byte_buffer *b, const void *data, size_t n)
{
    if (b->failed)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->n, data, n);
    b->n += n;
}

static void png_sink_write(void *context, void *data, int n)
{
    if (n > 0)
        buffer_append(context, data, (size_t)n);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int valid_key(const char *key)
{
    size_t n = strlen(key);
    if (n < 1 || n > DDPM_PNG_KEY_MAX || key[0] == ' ' || key[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 32 || (c > 126 && c < 161))
            return 0;
    }
    return 1;
}

/* One tEXt chunk: length, type, keyword, NUL, text, CRC over type and data. */
static void append_text_chunk(byte_buffer *b, const char *key, const char *value)
{
    size_t nk = strlen(key), nv = strlen(value), len = nk + 1 + nv;
    uint8_t head[8];
    put_u32(head, (uint32_t)len);
    memcpy(head + 4, "tEXt", 4);
    buffer_append(b, head, 8);
    buffer_append(b, key, nk + 1);
    buffer_append(b, value, nv);
    if (b->failed)
        return;
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, b->data + b->n - len - 4, (uInt)(len + 4));
    uint8_t tail[4];
    put_u32(tail, (uint32_t)crc);
    buffer_append(b, tail, 4);
}

typedef struct {
    const uint8_t *data;
    size_t n;
} png_bytes;

static int write_png_bytes(void *ctx, FILE *f)
{
    const png_bytes *p = ctx;
    return fwrite(p->data, 1, p->n, f) == p->n ? 0 : -1;
}

int ddpm_png_write_text(const char *path, const uint8_t *pixels, int width, int height, int channels,
                        const ddpm_png_text *text, int n_text)
{
    if (width <= 0 || height <= 0 || width > DDPM_IMAGE_MAX_SIDE || height > DDPM_IMAGE_MAX_SIDE ||
        channels < 1 || channels > 4)
        return ddpm_error(DDPM_EINVAL, "%s: cannot write a %d x %d image with %d channels", path,
                          width, height, channels);
    for (int i = 0; i < n_text; i++)
        if (!valid_key(text[i].key) || strlen(text[i].value) > DDPM_PNG_TEXT_MAX)
            return ddpm_error(DDPM_EINVAL, "%s: PNG text '%.80s' has a bad keyword or is too long", path,
                              text[i].key);
    byte_buffer png = {0};
    int ok = stbi_write_png_to_func(png_sink_write, &png, width, height, channels, pixels, width * channels);
    /* stb_image_write ends with the 12-byte IEND chunk: cut it, add the text, put it back */
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    if (ok && !png.failed && (png.n < 8 + 12 || memcmp(png.data + png.n - 12, iend, 12))) {
        free(png.data);
        return ddpm_error(DDPM_EFORMAT, "%s: the PNG encoder did not end with IEND", path);
    }
    if (ok && !png.failed) {
        png.n -= 12;
        for (int i = 0; i < n_text; i++)
            append_text_chunk(&png, text[i].key, text[i].value);
        buffer_append(&png, iend, 12);
    }
    if (!ok || png.failed) {
        free(png.data);
        return ddpm_error(DDPM_ENOMEM, "%s: PNG encoding failed (out of memory)", path);
    }
    png_bytes pb = {png.data, png.n};
    int rc = ddpm_atomic_write(path, write_png_bytes, &pb);
    free(png.data);
    return rc;
}

int ddpm_png_write(const char *path, const uint8_t *pixels, int width, int height, int channels)
{
    return ddpm_png_write_text(path, pixels, width, height, channels, NULL, 0);
}

int ddpm_png_read_text(const uint8_t *bytes, size_t n, const char *name, ddpm_png_text_fn fn, void *ctx)
{
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n < 8 || memcmp(bytes, signature, 8))
        return ddpm_error(DDPM_EFORMAT, "%s: not a PNG file", name);
    size_t at = 8;
    for (;;) {
        if (n - at < 12)
            return ddpm_error(DDPM_EFORMAT, "%s: PNG truncated (no IEND chunk)", name);
        uint32_t len = get_u32(bytes + at);
        const uint8_t *type = bytes + at + 4, *data = bytes + at + 8;
        if (len > 0x7fffffffu || len > n - at - 12)
            return ddpm_error(DDPM_EFORMAT, "%s: PNG chunk at byte %zu claims %u bytes, past the end", name, at,
                              len);
        uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), type, (uInt)len + 4);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
        crc = get_u32(data + len); /* let the fuzzer past the CRC into the chunk parsing */
#endif
        if (crc != get_u32(data + len))
            return ddpm_error(DDPM_EFORMAT, "%s: PNG chunk %.4s at byte %zu has a bad CRC", name, (const char *)type,
                              at);
        if (!memcmp(type, "IEND", 4))
            return 0;
        if (!memcmp(type, "tEXt", 4) && len <= DDPM_PNG_KEY_MAX + 1 + DDPM_PNG_TEXT_MAX) {
            char buf[DDPM_PNG_KEY_MAX + 1 + DDPM_PNG_TEXT_MAX + 1];
            memcpy(buf, data, len);
            buf[len] = '\0';
            size_t nk = strnlen(buf, len);
            /* a keyword, its NUL, and a text without NUL; anything else is skipped */
            if (nk >= 1 && nk <= DDPM_PNG_KEY_MAX && nk < len && strlen(buf + nk + 1) == len - nk - 1) {
                int rc = fn(ctx, buf, buf + nk + 1);
                if (rc)
                    return rc;
            }
        }
        at += (size_t)len + 12;
    }
}

static int check_batch(const char *path, int B, int C, int S)
{
    if (B <= 0 || (C != 1 && C != 3) || S <= 0 || S > DDPM_IMAGE_MAX_SIDE)
        return ddpm_error(DDPM_EINVAL, "%s: bad batch shape [%d, %d, %d, %d] (C must be 1 or 3)",
                          path, B, C, S, S);
    return 0;
}

/* Image b of x[B, C, S, S] into dst (HWC rows of `stride` bytes). */
static void chw_to_hwc_u8(uint8_t *dst, size_t stride, const float *img, int C, int S)
{
    size_t plane = (size_t)S * S;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            for (int c = 0; c < C; c++)
                ddpm_image_float_to_u8(dst + y * stride + (size_t)x * C + c,
                                       img + c * plane + (size_t)y * S + x, 1);
}

int ddpm_image_save_grid(const char *path, const float *x, int B, int C, int S, int nrow, int pad,
                         int pad_value)
{
    return ddpm_image_save_grid_text(path, x, B, C, S, nrow, pad, pad_value, NULL, 0);
}

int ddpm_image_save_grid_text(const char *path, const float *x, int B, int C, int S, int nrow, int pad,
                              int pad_value, const ddpm_png_text *text, int n_text)
{
    int rc = check_batch(path, B, C, S);
    if (rc)
        return rc;
    if (nrow <= 0 || pad < 0 || pad > DDPM_IMAGE_MAX_SIDE || pad_value < 0 || pad_value > 255)
        return ddpm_error(DDPM_EINVAL, "%s: bad grid layout (nrow %d, pad %d, pad value %d)", path,
                          nrow, pad, pad_value);
    int ncol = nrow < B ? nrow : B;
    int nrows = (B + ncol - 1) / ncol;
    long long width = (long long)ncol * S + (long long)(ncol + 1) * pad;
    long long height = (long long)nrows * S + (long long)(nrows + 1) * pad;
    if (width > DDPM_IMAGE_MAX_SIDE || height > DDPM_IMAGE_MAX_SIDE)
        return ddpm_error(DDPM_EINVAL, "%s: grid of %lld x %lld pixels is too large (max side %d)",
                          path, width, height, DDPM_IMAGE_MAX_SIDE);
    size_t stride = (size_t)width * C;
    uint8_t *grid = ddpm_malloc((size_t)height, stride);
    if (!grid)
        return DDPM_ENOMEM;
    memset(grid, pad_value, (size_t)height * stride);
    size_t image_len = (size_t)C * S * S;
    for (int b = 0; b < B; b++) {
        size_t top = (size_t)pad + (size_t)(b / ncol) * (size_t)(S + pad);
        size_t left = (size_t)pad + (size_t)(b % ncol) * (size_t)(S + pad);
        chw_to_hwc_u8(grid + top * stride + left * C, stride, x + b * image_len, C, S);
    }
    rc = ddpm_png_write_text(path, grid, (int)width, (int)height, C, text, n_text);
    free(grid);
    return rc;
}

int ddpm_image_save_each(const char *dir, const float *x, int B, int C, int S, int first_index)
{
    return ddpm_image_save_each_text(dir, x, B, C, S, first_index, NULL, 0, -1);
}

int ddpm_image_save_each_text(const char *dir, const float *x, int B, int C, int S, int first_index,
                              const ddpm_png_text *text, int n_text, int index_slot)
{
    /* out of range: the check below refuses it (and the sum is not formed) */
    int last = B > 0 && first_index >= 0 && first_index <= 999999999 - B ? first_index + B - 1 : first_index;
    return ddpm_image_save_part_text(dir, x, B, C, S, first_index, last, text, n_text, index_slot);
}

int ddpm_image_save_part_text(const char *dir, const float *x, int B, int C, int S, int first_index,
                              int last_index, const ddpm_png_text *text, int n_text, int index_slot)
{
    int rc = check_batch(dir, B, C, S);
    if (rc)
        return rc;
    if (first_index < 0 || first_index > 999999999 - B || last_index < first_index + B - 1 ||
        last_index > 999999999)
        return ddpm_error(DDPM_EINVAL, "%s: bad first index %d (last %d)", dir, first_index, last_index);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ddpm_error(DDPM_EIO, "%s: cannot create folder: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return ddpm_error(DDPM_EIO, "%s: not a folder", dir);
    int digits = 5;
    for (long long limit = 100000; last_index >= limit; limit *= 10)
        digits++;
    size_t len = strlen(dir) + 32;
    char *path = ddpm_malloc(len, 1);
    uint8_t *pixels = ddpm_malloc((size_t)C * S, (size_t)S);
    ddpm_png_text *own = n_text > 0 ? ddpm_malloc((size_t)n_text, sizeof *own) : NULL;
    if (!path || !pixels || (n_text > 0 && !own)) {
        free(path);
        free(pixels);
        free(own);
        return DDPM_ENOMEM;
    }
    if (n_text > 0)
        memcpy(own, text, (size_t)n_text * sizeof *own);
    char index_text[16];
    if (index_slot >= 0 && index_slot < n_text)
        own[index_slot].value = index_text;
    size_t image_len = (size_t)C * S * S;
    for (int b = 0; b < B && !rc; b++) {
        snprintf(path, len, "%s/%0*d.png", dir, digits & 15, first_index + b); /* digits <= 10 */
        chw_to_hwc_u8(pixels, (size_t)S * C, x + b * image_len, C, S);
        snprintf(index_text, sizeof index_text, "%d", first_index + b);
        rc = ddpm_png_write_text(path, pixels, S, S, C, own, n_text);
    }
    free(path);
    free(pixels);
    free(own);
    return rc;
}
