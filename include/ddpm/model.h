/* model.h: a trained network and what it means, as one object.
 *
 * A model holds the network configuration, the chosen weights (EMA or raw),
 * the schedule rebuilt from the checkpoint's own metadata, what the output
 * means (the head: prediction kind and learned variances, predict.h), the
 * classes and their names, and where the weights come from (path, SHA-256 of
 * the file, step, EMA or raw). The samplers, the interpolation, the evaluator
 * and the training previews take a model instead of a network, its weights and
 * its schedule.
 *
 * ddpm_model_predict answers "what does the model say at (x_t, t)" for a batch:
 * eps, x0, the reverse mean and log-variance, with classifier-free guidance
 * applied. Step indices are continuous (index units, t = i at the trained step
 * i; an integer t gives exactly the bytes of the trained step), so that
 * samplers may evaluate the network between trained steps. */
#ifndef DDPM_MODEL_H
#define DDPM_MODEL_H

#include <stddef.h>

#include "ddpm/predict.h"
#include "ddpm/schedule.h"
#include "ddpm/unet.h"

typedef enum { DDPM_WEIGHTS_EMA = 0, DDPM_WEIGHTS_RAW = 1 } ddpm_weights_kind;

struct ddpm_trainer;
struct ddpm_recipe;

/* A network function: out [B, output values] at x_t [B, D], continuous step
 * indices t[B] and labels y[B] (NULL: "no class"). The U-Net is one; a test
 * passes a stub whose answer it knows. */
typedef void (*ddpm_net_fn)(void *ctx, float *out, const float *x_t, const double *t, const int *y, int B);

typedef struct {
    /* what the network is and what its output means */
    ddpm_unet_config cfg;  /* image size, channels, prediction, learn_sigma, n_classes, ... */
    ddpm_schedule sched;   /* the checkpoint's schedule */
    ddpm_head head;        /* the output's meaning: &sched, cfg.prediction, cfg.learn_sigma, D */
    int n_classes;         /* cfg.n_classes: 0 unconditional */
    char **class_names;    /* [n_classes] the classes' names; NULL for an unconditional model */
    /* where the weights come from (empty path and sha256 for a model not read from a file) */
    char path[4096];       /* the checkpoint or exported file */
    char sha256[65];       /* SHA-256 of the bytes loaded, lower-case hex */
    long step;             /* training steps the weights have seen */
    int ema;               /* 1: the EMA weights, 0: the raw ones */
    int ema_missing;       /* EMA asked for, but the file has none: raw weights */
    ddpm_precision precision; /* the forward's products (ddpm_model_set_precision); FP32 by default */
    /* the network (NULL for a stub) and its weights */
    const ddpm_unet *net;
    const float *params;
    /* private */
    ddpm_net_fn fn;
    void *fn_ctx;
    ddpm_unet *own_net;
    float *own_params;
    int own_sched;
    ddpm_unet_workspace *ws, *own_ws;
    int ws_batch, buf_batch;
    float *out, *uncond; /* [buf_batch, output values] the raw and unconditional outputs */
    double *steps;       /* [buf_batch] the integer steps of ddpm_model_eps as doubles */
} ddpm_model;

/* Opens a model from a training checkpoint or an exported weights file (a run
 * folder names its checkpoint.safetensors): the file is read once, hashed and
 * parsed from memory; the EMA weights when asked and present (else the raw ones,
 * m->ema_missing set), the schedule, the classes. 0, or a negative DDPM_E* with
 * a one-line message naming the file. Close with ddpm_model_close. */
int ddpm_model_open(ddpm_model *m, const char *path, ddpm_weights_kind weights);
/* A model over a trainer's network and weights (EMA or raw), for the run's
 * previews and evaluations: nothing is copied, the trainer must outlive it;
 * it borrows the trainer's workspace for batches up to its micro-batch. */
int ddpm_model_from_trainer(ddpm_model *m, const struct ddpm_trainer *tr, ddpm_weights_kind weights);
/* A model over a network and weights the caller owns, with the schedule s
 * (borrowed: it must outlive the model). */
int ddpm_model_from_net(ddpm_model *m, const ddpm_unet *net, const float *params, const ddpm_schedule *s);
/* A model over a network function (tests): cfg gives in_channels, image_size,
 * prediction, learn_sigma and n_classes; s is borrowed. */
int ddpm_model_from_fn(ddpm_model *m, const ddpm_unet_config *cfg, const ddpm_schedule *s, ddpm_net_fn fn,
                       void *fn_ctx);
void ddpm_model_close(ddpm_model *m);

/* Values per image (in_channels x image_size^2) and of its output (twice that
 * with learned variances). */
static inline size_t ddpm_model_D(const ddpm_model *m) { return m->head.D; }
static inline size_t ddpm_model_out_size(const ddpm_model *m) { return ddpm_head_out_size(&m->head); }

/* Runs the network's convolutions and attention products in `precision` from now on
 * (ddpm_unet_workspace_set_precision): 0, or DDPM_EINVAL with a message when
 * bf16 is asked of a build or CPU without AVX512_BF16 or of a model that borrows
 * a trainer's workspace. The recipe records a bf16 model's precision. */
int ddpm_model_set_precision(ddpm_model *m, ddpm_precision precision);

/* The class of a name, or of an index written in decimal: 0 and *index, or
 * DDPM_EINVAL with a message when the model has no such class. */
int ddpm_model_class(const ddpm_model *m, const char *name_or_index, int *index);

/* A recipe (recipe.h) initialised and naming the model's weights: the
 * version, the file's path and SHA-256, the step, EMA or raw. */
void ddpm_model_recipe(const ddpm_model *m, struct ddpm_recipe *r);

/* Classifier-free guidance (Ho & Salimans 2022) of a class-conditional model:
 * out = out_uncond + W (out_cond - out_uncond), out_uncond the output for "no
 * class". W = 1 is the conditional model (one forward pass), W = 0 the
 * unconditional one (one pass), other W two passes. The combination has weights
 * summing to 1, so it commutes with the affine conversions of predict.h and is
 * applied to the raw output; with learned variances only the prediction is
 * guided and v is the conditional model's (as GLIDE does). */
typedef struct {
    const int *labels; /* [B] classes of the images, NULL: unconditional ("no class") */
    float guidance;    /* W, used when labels is not NULL */
} ddpm_guide;

/* What the model says at x_t [B, D] and continuous step indices t[B]: each
 * array of o that is not NULL receives B * D values (image b at b * D), as
 * ddpm_pred_convert defines them. g may be NULL (unconditional). Returns 0, or
 * a negative DDPM_E* (no memory; a mean or variance between trained steps). */
int ddpm_model_predict(ddpm_model *m, const ddpm_pred_out *o, const float *x_t, const double *t, int B,
                       const ddpm_guide *g);

/* The raw, guided network output [B, ddpm_model_out_size] (what the loss and
 * the reference checks compare). */
int ddpm_model_output(ddpm_model *m, float *out, const float *x_t, const double *t, int B, const ddpm_guide *g);

/* eps_theta at (x_t, i) for B images of D values at integer step indices i[b];
 * a learned-variance model follows each image's D values by D values of v, so
 * the output is [B, 2D]. What the evaluator (eval.h) takes: a model, or a stub
 * whose answer a test knows. */
typedef void (*ddpm_eps_fn)(void *ctx, float *eps, const float *x_t, const int *i, int B);

/* The model as a ddpm_eps_fn (ctx a ddpm_model, unconditional): eps_theta at integer steps, followed by the D
 * values of v for a learned-variance model. */
void ddpm_model_eps(void *model, float *eps, const float *x_t, const int *i, int B);

#endif
