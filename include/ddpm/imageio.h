/* imageio.h: reading images into CHW arrays and writing PNGs (single and grids).
 *
 * Reading goes through stb_image (PNG, JPEG, BMP, TGA, GIF first frame, PSD, HDR,
 * PNM); writing through stb_image_write (PNG). Pixel values map linearly between
 * {0..255} and [-1, 1]: x = u / 127.5 - 1 and u = round((x + 1) * 127.5), clamped.
 *
 * Geometry on load: the largest centred square is cropped from the image (the
 * extra columns or rows are split evenly, the odd one going to the right/bottom),
 * then that square is resized to S x S with stb_image_resize (its default
 * filters: Mitchell when shrinking, Catmull-Rom when enlarging, in linear space).
 * A square image already at S x S is copied exactly.
 *
 * Channels on load: gray + alpha and RGBA lose their alpha (no compositing);
 * RGB -> gray is ITU-R BT.601 luma, round(0.299 R + 0.587 G + 0.114 B);
 * gray -> RGB replicates the gray value.
 *
 * Writing: PNGs are written atomically (ddpm_atomic_write in fsutil.h: a temporary
 * file in the destination folder, fsync, rename), so a failed write never leaves a
 * truncated file under the final name. */
#ifndef DDPM_IMAGEIO_H
#define DDPM_IMAGEIO_H

#include <stddef.h>
#include <stdint.h>

/* Largest accepted side (source or target) and largest source image, in pixels.
 * Both are checked on the file's header before anything is decoded; a larger
 * image is refused with "too large". 2^25 pixels (33.5 megapixels: a 6000 x 4000
 * photo fits) bound what decoding one image may hold: stb_image's decoded pixels
 * (at most 4 bytes a pixel, 128 MB) plus, for PNG, its inflated rows (about as
 * much again) and the file itself. The crop and channel conversion then work in
 * place in the decoded pixels, and only the S x S result is allocated besides. */
enum { DDPM_IMAGE_MAX_SIDE = 1 << 15, DDPM_IMAGE_MAX_PIXELS = 1 << 25 };
/* The largest image file read into memory whole (ddpm interpolate's source
 * images, hashed and decoded from the same bytes): 2^25 pixels of 16-bit RGBA
 * uncompressed are 256 MB, so no image within the pixel limit is refused. */
#define DDPM_IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)

/* Width, height and channel count (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) of an
 * image file, read from its header without decoding the pixels (stbi_info).
 * Returns DDPM_EIO if the file cannot be opened, DDPM_EFORMAT if it is not an
 * image stb_image reads or is over the limits above ("too large"; the size of a
 * PNG, GIF, BMP or JPEG too large for stb_image to describe is read from the
 * header directly so that it is reported as such). */
int ddpm_image_probe(const char *path, int *width, int *height, int *channels);

/* Decodes `path` into out[channels * size * size] (CHW, uint8), converting the
 * channels and cropping/resizing as described above. channels is 1 or 3. */
int ddpm_image_load_u8(const char *path, uint8_t *out, int size, int channels);

/* ddpm_image_load_u8 of a file's bytes already in memory (bytes[n_bytes]);
 * `name` is the file's name for the messages. */
int ddpm_image_decode_u8(const char *name, const uint8_t *bytes, size_t n_bytes, uint8_t *out, int size,
                         int channels);

/* The same into floats in [-1, 1]. */
int ddpm_image_load(const char *path, float *out, int size, int channels);

/* The conversion and geometry step alone, on pixels already in memory:
 * src is HWC uint8 with src_channels in 1..4 (within the limits above); out is
 * CHW [channels, size, size]. Works on a copy of src. */
int ddpm_image_convert_u8(uint8_t *out, const uint8_t *src, int width, int height,
                          int src_channels, int size, int channels);

/* uint8 <-> [-1, 1] float, n values. */
void ddpm_image_u8_to_float(float *out, const uint8_t *in, size_t n);
void ddpm_image_float_to_u8(uint8_t *out, const float *in, size_t n);

/* Writes HWC uint8 pixels (channels 1..4) as a PNG, through a temporary file. */
int ddpm_png_write(const char *path, const uint8_t *pixels, int width, int height, int channels);

/* PNG tEXt chunks (PNG spec 11.3.4.3): a keyword of 1..79 printable Latin-1
 * characters and a text without NUL. ddpm writes and reads pairs whose key and
 * value each fit DDPM_PNG_TEXT_MAX bytes; longer chunks are not ddpm's. */
enum { DDPM_PNG_TEXT_MAX = 1024, DDPM_PNG_KEY_MAX = 79 };
typedef struct {
    const char *key;
    const char *value;
} ddpm_png_text;

/* ddpm_png_write with n_text tEXt chunks (text may be NULL when n_text is 0),
 * placed after the pixels and before IEND. The pixels are encoded by
 * stb_image_write; the chunks' CRCs come from zlib's crc32. */
int ddpm_png_write_text(const char *path, const uint8_t *pixels, int width, int height, int channels,
                        const ddpm_png_text *text, int n_text);

/* Walks the chunks of a PNG held in memory (untrusted: every length is checked
 * against the bytes left and the PNG limit of 2^31 - 1, every CRC is checked)
 * and calls fn(ctx, key, value) for each tEXt chunk that fits the limits above,
 * in file order; fn returns 0 to go on. Stops at IEND. Returns 0, fn's nonzero
 * value, or DDPM_EFORMAT with "<name>: <what is wrong>" (not a PNG, truncated,
 * bad CRC, no IEND). */
typedef int (*ddpm_png_text_fn)(void *ctx, const char *key, const char *value);
int ddpm_png_read_text(const uint8_t *bytes, size_t n, const char *name, ddpm_png_text_fn fn, void *ctx);

/* Writes the batch x[B, C, S, S] (floats in [-1, 1], clamped and rounded; C is 1 or
 * 3) as one PNG grid: min(nrow, B) images per row, ceil(B / that) rows, `pad`
 * pixels of value pad_value (0..255, every channel) between the cells and around
 * the border; cells past the last image are left at pad_value. So the width is
 * ncol * S + (ncol + 1) * pad and the height nrows * S + (nrows + 1) * pad. */
int ddpm_image_save_grid(const char *path, const float *x, int B, int C, int S, int nrow, int pad,
                         int pad_value);
/* The same, with tEXt chunks (ddpm_png_write_text). */
int ddpm_image_save_grid_text(const char *path, const float *x, int B, int C, int S, int nrow, int pad,
                              int pad_value, const ddpm_png_text *text, int n_text);

/* Writes each image of x[B, C, S, S] as dir/%05d.png numbered from first_index
 * (more digits once the numbers need them). Creates dir if it does not exist
 * (its parent must). */
int ddpm_image_save_each(const char *dir, const float *x, int B, int C, int S, int first_index);
/* The same, with tEXt chunks; when index_slot >= 0, text[index_slot]'s value is
 * replaced in each file by that image's index (the caller's array is not changed). */
int ddpm_image_save_each_text(const char *dir, const float *x, int B, int C, int S, int first_index,
                              const ddpm_png_text *text, int n_text, int index_slot);
/* The same for images first_index .. first_index + B - 1 of a set whose last
 * index is last_index: the names have the set's width, so a set written in
 * parts (each with its own text) is named as if it were written at once. */
int ddpm_image_save_part_text(const char *dir, const float *x, int B, int C, int S, int first_index,
                              int last_index, const ddpm_png_text *text, int n_text, int index_slot);

#endif
