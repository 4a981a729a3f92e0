/* unet.h: the epsilon-predicting U-Net of docs/design.md (Network; Ho et al. 2020,
 * appendix B): config, parameter arena with a name table, forward and backward.
 *
 * All parameters live in one contiguous float arena; gradients, Adam moments and
 * EMA weights are arenas with the same layout, so optimisers, checkpoints and a
 * data-parallel all-reduce are loops over flat arrays and the tensor table.
 * Forward and backward take the parameter arena as an argument, so the same
 * network runs with raw or EMA weights. Activations live in a workspace sized
 * once for a maximum batch: no allocation in a training step. */
#ifndef DDPM_UNET_H
#define DDPM_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/ops.h"
#include "ddpm/predict.h"
#include "ddpm/rng.h"

#define DDPM_MAX_LEVELS 8
#define DDPM_MAX_NAME 64
#define DDPM_MAX_CLASSES 10000

typedef struct {
    int in_channels;    /* 1 (gray) or 3 (RGB) */
    int image_size;     /* square side, divisible by 2^(levels-1) */
    int ch;             /* base channels */
    int n_levels;       /* entries of ch_mult */
    int ch_mult[DDPM_MAX_LEVELS];
    int num_res_blocks;
    int n_attn;         /* entries of attn_res */
    int attn_res[DDPM_MAX_LEVELS]; /* resolutions (side in pixels) with attention */
    int groups;         /* GroupNorm groups; must divide every channel count */
    float dropout;      /* training dropout probability in ResBlocks */
    ddpm_prediction prediction; /* what the output means (predict.h; default eps) */
    int n_classes;      /* 0: unconditional; else a learned class embedding
                           class_emb.weight [n_classes + 1, 4 ch] (row n_classes:
                           "no class") added to the timestep embedding */
    int learn_sigma;    /* 1: the output has 2 x in_channels channels, the
                           prediction's then v, which sets the reverse variance
                           per value (Nichol & Dhariwal 2021, eq. 15; predict.h) */
    int scale_shift_norm; /* 1: AdaGN in every ResBlock (guided-diffusion's
                             use_scale_shift_norm): the second GroupNorm becomes
                             GN(h) (1 + scale) + shift with [scale, shift] =
                             temb_proj(SiLU(temb)) [2 cout], zero-initialised, in
                             place of adding temb_proj's output to h */
    int class_emb_init;   /* ddpm_class_emb_init: how class_emb.weight starts */
} ddpm_unet_config;

/* The class embedding's initialisation: zero (a new conditional model is the
 * unconditional one) or N(0, 1) per element (PyTorch's nn.Embedding, as in
 * guided-diffusion), drawn from the init stream. */
typedef enum { DDPM_CLASS_EMB_ZERO, DDPM_CLASS_EMB_NORMAL, DDPM_N_CLASS_EMB_INITS } ddpm_class_emb_init;
/* "zero", "normal"; "?" out of range. */
const char *ddpm_class_emb_init_name(ddpm_class_emb_init kind);

/* Channels of the network's output: in_channels, twice that with learn_sigma. */
static inline int ddpm_unet_out_channels(const ddpm_unet_config *cfg)
{
    return cfg->in_channels * (cfg->learn_sigma ? 2 : 1);
}

/* docs/design.md defaults for 28x28 gray images: ch 32, ch_mult 1,2,2, 2 res blocks,
 * attention at 14, 8 groups, dropout 0.1. */
void ddpm_unet_config_default(ddpm_unet_config *cfg);
/* 0, or DDPM_EINVAL with a message saying what is impossible. */
int ddpm_unet_config_check(const ddpm_unet_config *cfg);

typedef enum { DDPM_INIT_XAVIER, DDPM_INIT_ZERO, DDPM_INIT_ONE, DDPM_INIT_NORMAL } ddpm_init_kind;

/* One row of the tensor table: PyTorch names and shapes. */
typedef struct {
    char name[DDPM_MAX_NAME];
    size_t offset; /* into the parameter arena, in floats */
    size_t n;      /* number of floats */
    int ndim;
    int shape[4];
    ddpm_init_kind init;
} ddpm_tensor_info;

typedef struct ddpm_unet_plan ddpm_unet_plan; /* the module list (internal) */

typedef struct {
    ddpm_unet_config cfg;
    size_t n_params;
    int n_tensors;
    ddpm_tensor_info *tensors;
    ddpm_unet_plan *plan;
} ddpm_unet;

int ddpm_unet_create(ddpm_unet **out, const ddpm_unet_config *cfg);
void ddpm_unet_free(ddpm_unet *net);
/* Index of a tensor by name, or -1. */
int ddpm_unet_find_tensor(const ddpm_unet *net, const char *name);
/* The docs/design.md init into params[n_params]: Glorot/Xavier uniform weights, zero
 * biases, GroupNorm gamma 1, and zero for ResBlock conv2, AttnBlock proj, conv_out
 * (and for temb_proj with scale_shift_norm; class_emb per class_emb_init). The
 * tensors draw from one init stream in table order. */
void ddpm_unet_init_params(const ddpm_unet *net, float *params, uint64_t seed);
/* Multiply-adds x 2 of one forward pass for one image (convs, linears, attention). */
double ddpm_unet_forward_flops(const ddpm_unet *net);

typedef struct ddpm_unet_workspace ddpm_unet_workspace;

/* Activation memory for batches of up to max_batch images; forward and backward
 * take any B <= max_batch (a micro-batch uses the first B images of every buffer).
 * A training workspace keeps what backward cannot cheaply recompute (GroupNorm
 * statistics, conv1 outputs, attention's q, k, v, weights and output, the module
 * outputs) and recomputes the rest in backward (GroupNorm outputs from their input
 * and statistics, SiLU outputs, dropout masks from their Philox counter, concat
 * and upsample outputs); the activation gradients share buffers by lifetime. training = 0 makes a forward-only workspace (sampling,
 * evaluation): the module outputs share buffers by lifetime (the skip stack and
 * the few live ones) and each block's activations live only while it runs.
 * Memory is allocated, not touched: pages the run never uses stay unmapped. */
int ddpm_unet_workspace_create(ddpm_unet_workspace **out, const ddpm_unet *net, int max_batch,
                               int training);
void ddpm_unet_workspace_free(ddpm_unet_workspace *ws);
/* Bytes the workspace allocates (activations, gradients, scratch). */
size_t ddpm_unet_workspace_bytes(const ddpm_unet_workspace *ws);
/* The arithmetic of the products of every convolution and of attention, forward
 * and (training workspace) backward (ddpm_conv2d_forward_precision,
 * ddpm_conv2d_backward_precision, ddpm_attention_forward_precision, ...):
 * DDPM_PRECISION_FP32 (the default) or DDPM_PRECISION_BF16 (bf16 inputs, float32
 * accumulation; GroupNorm, SiLU, softmax, the time embedding's linears, the
 * gradients and the weights stay float32). bf16 only where ddpm_bf16_available():
 * else DDPM_EINVAL with a message, the precision unchanged. */
int ddpm_unet_workspace_set_precision(ddpm_unet_workspace *ws, ddpm_precision precision);

/* The dropout masks of one training forward. A step's masks are a pure function
 * of (seed, counter, the image's index in the step's batch): ResBlock k of image g
 * draws from counter + batch * (counters per image of the ResBlocks before k)
 * + g * ceil(n / 4), n the size of its dropout input per image (element j takes
 * word j % 4 of counter j / 4 past that). So a forward over images [first,
 * first + B) of a batch, a micro-batch or one process's share, draws exactly the
 * masks that the forward over the whole batch draws for them. */
typedef struct {
    uint64_t seed;    /* key of stream DDPM_STREAM_DROPOUT */
    uint64_t counter; /* the step's first counter */
    int first;        /* index in the step's batch of this forward's image 0 */
    int batch;        /* images in the step's batch */
} ddpm_dropout_draw;

/* Counters a step of `batch` images draws (0 without dropout): the next step
 * starts at counter + this. */
uint64_t ddpm_unet_dropout_counters(const ddpm_unet *net, int batch);

/* eps_pred [B,C,S,S] = eps_theta(x_t, t) with t the 0-based step index per image.
 * dropout: NULL for no dropout (sampling, evaluation). B <= the workspace's
 * max_batch. */
void ddpm_unet_forward(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                       float *eps_pred, const float *x_t, const int *t, int B,
                       const ddpm_dropout_draw *dropout);
/* The same with class labels y[B] for a model with n_classes > 0: y[b] in
 * 0..n_classes-1 selects a row of class_emb, DDPM_NO_CLASS (or y NULL) the "no
 * class" row. Unconditional models ignore y. */
#define DDPM_NO_CLASS (-1)
void ddpm_unet_forward_class(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws,
                             float *eps_pred, const float *x_t, const int *t, const int *y, int B,
                             const ddpm_dropout_draw *dropout);
/* A forward without dropout at continuous step indices t[B] (index units,
 * 0..T-1; the samplers between trained steps): an integer t gives exactly the
 * bytes of ddpm_unet_forward_class. */
void ddpm_unet_forward_t(const ddpm_unet *net, const float *params, ddpm_unet_workspace *ws, float *out,
                         const float *x_t, const double *t, const int *y, int B);
/* Backward of the last forward on this workspace (which must be a training one):
 * ACCUMULATES d loss / d params into grads[n_params] given d loss / d eps_pred. */
void ddpm_unet_backward(const ddpm_unet *net, const float *params, float *grads,
                        ddpm_unet_workspace *ws, const float *d_eps_pred, int B);

/* Optional per-op timing for `ddpm bench --profile`: seconds accumulated per
 * op kind since the last reset. */
enum {
    DDPM_PROF_CONV, DDPM_PROF_LINEAR, DDPM_PROF_NORM, DDPM_PROF_ATTN, DDPM_PROF_ELEMENTWISE,
    DDPM_PROF_ZERO, DDPM_PROF_COUNT
};
void ddpm_unet_profile_enable(ddpm_unet_workspace *ws, int on);
void ddpm_unet_profile_read(const ddpm_unet_workspace *ws, double seconds[DDPM_PROF_COUNT],
                            double seconds_backward[DDPM_PROF_COUNT]);
const char *ddpm_unet_profile_name(int kind);

#endif
