/* checkpoint.h: a training run as one .safetensors file.
 *
 * Tensors: the model weights under their PyTorch names (unet.h), the EMA
 * weights under "ema.<name>", Adam's moments under "adam_m.<name>" and
 * "adam_v.<name>", and for a run with importance-sampled timesteps its loss
 * history (timestep.h) as "t_sampling.loss_history" [T, 10] and
 * "t_sampling.loss_count" [T] (float32 counts 0..10). "__metadata__" holds "format" = "ddpm", "format_version",
 * "config" (the run config as JSON: model, schedule, training) and "state"
 * (step, RNG counters, data position, elapsed time, as JSON), so that sampling
 * and a resumed run need no other file. Every file is treated as untrusted:
 * safetensors.c validates the container, this module the metadata and every
 * tensor's shape against the config. Writes are atomic (temp file, fsync, rename). */
#ifndef DDPM_CHECKPOINT_H
#define DDPM_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/config.h"
#include "ddpm/timestep.h"
#include "ddpm/unet.h"

/* The version written. 2: the header carries its own checksum (safetensors.h),
 * and a file without it or without the tensor checksums is refused. 1 (read
 * still): no header checksum; the tensor checksums when present are checked. */
#define DDPM_CHECKPOINT_FORMAT_VERSION 2
/* Largest |weight| a model loads: trained weights are O(1); a larger one is a
 * damaged or forged file. */
#define DDPM_MAX_ABS_WEIGHT 1e6
#define DDPM_T_HISTORY_TENSOR "t_sampling.loss_history"
#define DDPM_T_COUNT_TENSOR "t_sampling.loss_count"

/* Where a run is: enough to continue it bit for bit. */
typedef struct {
    long step;                /* optimiser steps taken */
    uint64_t noise_counter;   /* Philox counter of the timestep/eps stream */
    uint64_t dropout_counter; /* Philox counter of the dropout stream */
    uint64_t data_epoch;      /* dataset position (dataset.h) */
    int data_position;
    double elapsed_seconds;   /* training time over all sessions */
    /* The run's stop condition, so that --resume alone continues to it: the total
     * step (from --steps/--epochs) and the total training time (from --minutes)
     * at which the run ends; 0: none. Absent in older checkpoints (then 0). */
    long stop_step;
    double stop_elapsed_seconds;
    /* The data folder the run trains on (ddpm_dataset_fingerprint); "" unknown. */
    char data_fingerprint[96];
} ddpm_train_state;

/* The config / state as a JSON object string (malloc'ed; NULL on no memory). */
char *ddpm_run_config_to_json(const ddpm_run_config *c);
char *ddpm_train_state_to_json(const ddpm_train_state *s);
/* Parses and validates; errors name `what` (a file) and the field. */
int ddpm_run_config_from_json(ddpm_run_config *c, const char *json, const char *what);
int ddpm_train_state_from_json(ddpm_train_state *s, const char *json, const char *what);

/* Writes the checkpoint atomically. ema, adam_m, adam_v may be NULL (not saved).
 * A class-conditional model (cfg->model.n_classes > 0) stores its class names
 * (class_names[n_classes], the data folder's subfolders) as the metadata key
 * "classes", a JSON list; NULL stores the indices "0", "1", ...
 * t_history, when not NULL, is saved as the two loss-history tensors.
 * sha256, when not NULL (65 bytes), receives the SHA-256 of the bytes written,
 * hashed as they are written (ddpm_safetensors_write_sha256): a preview's recipe
 * names the checkpoint by it without reading the file back. */
int ddpm_checkpoint_save(const char *path, const ddpm_run_config *cfg, const ddpm_train_state *st,
                         const ddpm_unet *net, const float *params, const float *ema,
                         const float *adam_m, const float *adam_v, const char *const *class_names,
                         const ddpm_t_history *t_history, char *sha256);

typedef struct ddpm_checkpoint ddpm_checkpoint;

/* Opens and validates a checkpoint: container, the header's checksum and every
 * tensor's (required from format version 2; a version 1 file has no header
 * checksum and may lack the tensor ones: see ddpm_checkpoint_checksummed),
 * format, config, state. The file is read once (ddpm_read_file: a regular
 * file within DDPM_ST_MAX_FILE bytes); a run folder is not a path here. */
int ddpm_checkpoint_open(ddpm_checkpoint **out, const char *path);
/* The same over bytes in memory (copied); `name` stands for the path in messages. */
int ddpm_checkpoint_open_memory(ddpm_checkpoint **out, const void *bytes, size_t n_bytes, const char *name);
/* 1 if every tensor was checked against its stored CRC-32C on open; 0 for a
 * checkpoint written before checksums (loaded, but nothing vouches for its data). */
int ddpm_checkpoint_checksummed(const ddpm_checkpoint *ck);
/* The file's format version (1 or 2; DDPM_CHECKPOINT_FORMAT_VERSION is what is written). */
int ddpm_checkpoint_format_version(const ddpm_checkpoint *ck);
/* 1 if the header (metadata, format version, tensor table and checksums) was
 * checked against its stored CRC-32C on open; 0 for a format version 1 file. */
int ddpm_checkpoint_header_checksummed(const ddpm_checkpoint *ck);
void ddpm_checkpoint_close(ddpm_checkpoint *ck);
const ddpm_run_config *ddpm_checkpoint_config(const ddpm_checkpoint *ck);
const ddpm_train_state *ddpm_checkpoint_state(const ddpm_checkpoint *ck);
const char *ddpm_checkpoint_path(const ddpm_checkpoint *ck);
/* The class names of a class-conditional model ([n_classes]); NULL otherwise. */
const char *const *ddpm_checkpoint_class_names(const ddpm_checkpoint *ck);
/* Whether every tensor of net exists under prefix ("" for the weights, "ema.", ...). */
int ddpm_checkpoint_has(const ddpm_checkpoint *ck, const ddpm_unet *net, const char *prefix);
/* Reads every tensor of net's table under prefix into dst[n_params], checking
 * each shape against the table. Values that are NaN or infinite, and weights
 * (prefix "" or "ema.") beyond +-DDPM_MAX_ABS_WEIGHT, are refused with
 * DDPM_EFORMAT and a message naming the file and the tensor: every path that
 * loads a model (sample, eval, resume) goes through here. */
int ddpm_checkpoint_read(const ddpm_checkpoint *ck, const ddpm_unet *net, const char *prefix,
                         float *dst);
/* Reads the loss history into h (initialised for the config's T). A file
 * without the two tensors (written before importance sampling, or by a uniform
 * run) gives an empty history; counts outside 0..10, values that are not finite
 * or wrong shapes are refused with DDPM_EFORMAT. */
int ddpm_checkpoint_read_t_history(const ddpm_checkpoint *ck, ddpm_t_history *h);
/* Builds the network of the checkpoint's config and reads its weights: the EMA
 * weights when prefer_ema and they exist (*used_ema = 1), else the raw ones.
 * Every tensor's presence and shape is checked before the weights are allocated.
 * *net and *params are the caller's to free (ddpm_unet_free, free). */
int ddpm_checkpoint_load_model(const ddpm_checkpoint *ck, int prefer_ema, ddpm_unet **net,
                               float **params, int *used_ema);

/* Exported weights (`ddpm export`): a .safetensors file with only the weights
 * under their plain PyTorch names (the EMA weights, or the raw ones when raw or
 * when the checkpoint has no EMA; *used_ema says which, may be NULL) and the
 * metadata "format", "format_version", "config" (model and schedule only),
 * "state" ({"step": N}) and "weights" ("ema" or "raw"). No Adam moments, no
 * "ema." prefix: it loads into the PyTorch reference U-Net with strict names.
 * ddpm_checkpoint_open reads it (train config at defaults, state step only) and
 * ddpm_checkpoint_load_model loads it, so sample, info and eval take it; a
 * run cannot resume from it. */
int ddpm_checkpoint_export(const ddpm_checkpoint *ck, const char *path, int raw, int *used_ema);
/* "ema" or "raw" for an exported weights file, NULL for a training checkpoint. */
const char *ddpm_checkpoint_weights(const ddpm_checkpoint *ck);

/* Number of tensors in the file and the i-th one's name / shape (for `ddpm info`). */
int ddpm_checkpoint_tensor_count(const ddpm_checkpoint *ck);
const char *ddpm_checkpoint_tensor(const ddpm_checkpoint *ck, int i, int *ndim, int64_t shape[8]);

#endif
