/* inception.h: the Inception-v3 network of FID (pytorch-fid's "FID Inception",
 * the TensorFlow 2015 weights), forward only, from its PyTorch state_dict.
 *
 * The network: five stem convolutions with two 3x3 stride-2 max pools, then
 * Mixed_5b..5d (block A), 6a (B), 6b..6e (C), 7a (D), 7b (E with an average
 * pool) and 7c (E with a max pool), and the global average of 7c's output: the
 * "pool3" features (2,048 for the published weights). Every convolution is
 * pytorch-fid's BasicConv2d: conv without bias, BatchNorm (eps 0.001, running
 * statistics) and ReLU; the BatchNorm is folded into the conv's weight and a
 * bias when the weights are loaded. The pool branches of blocks A, C and 7b
 * average 3x3 windows (stride 1, padding 1) over the pixels inside the image
 * only (count_include_pad=False); 7c's takes their maximum. Channel counts are
 * read from the weights' shapes (kernel sizes, strides and paddings are the
 * architecture's), so a reduced-width copy of the same network loads and runs.
 *
 * Input: an image of any size, gray (repeated to RGB) or RGB, as pytorch-fid
 * feeds it: u / 255, resized to 299x299 bilinearly (PyTorch's
 * F.interpolate(mode="bilinear", align_corners=False), no antialiasing), then
 * 2x - 1.
 *
 * Threads: images go through the network in groups of 8 (the last group of a
 * call padded with zero planes), groups in parallel over OpenMP threads, each
 * group whole on one thread with single-threaded sgemm calls, and every
 * product over one image's columns: an image's features are the same bytes at
 * any thread count, in any position of a call, and alone. A call of fewer than
 * 8 images costs as much as 8 from Mixed_5b on. A network object holds the
 * per-thread workspaces: one call at a time per object. */
#ifndef DDPM_INCEPTION_H
#define DDPM_INCEPTION_H

#include <stddef.h>
#include <stdint.h>

enum { DDPM_INCEPTION_SIZE = 299 };

typedef struct ddpm_inception ddpm_inception;

/* Loads the weights (a .pth, see pth.h). Fails with DDPM_EFORMAT and one message
 * naming the file and the tensor when a tensor is missing, not float32, or of a
 * shape that does not fit the architecture or the previous layer's width. */
int ddpm_inception_load(ddpm_inception **out, const char *path);
void ddpm_inception_free(ddpm_inception *net);

int ddpm_inception_n_features(const ddpm_inception *net);
/* SHA-256 of the weights file (64 hex digits): what statistics files name. */
const char *ddpm_inception_sha256(const ddpm_inception *net);

/* An image: pixels HWC uint8, channels 1 (gray) or 3 (RGB). */
typedef struct {
    const uint8_t *pixels;
    int height, width, channels;
} ddpm_inception_image;

/* features[n, n_features] of n images. Sizes up to DDPM_IMAGE_MAX_SIDE. */
int ddpm_inception_features(ddpm_inception *net, float *features, const ddpm_inception_image *images, int n);

/* in [C, H, W] -> out [C, Ho, Wo], bilinear as PyTorch's align_corners=False
 * (source coordinate (o + 0.5) H / Ho - 0.5, clamped at 0, no antialiasing). */
void ddpm_inception_resize(float *out, const float *in, int C, int H, int W, int Ho, int Wo);

#endif
