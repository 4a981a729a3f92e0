/* train.h: DDPM training (Ho et al. 2020, Algorithm 1, L_simple).
 *
 * ddpm_trainer holds one run in memory: the network, its parameter, gradient,
 * Adam and EMA arenas, the schedule, the RNG streams and the step counter.
 * ddpm_trainer_step takes one batch of clean images x0 in [-1, 1]:
 *   t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps,
 *   loss = mean (eps - eps_theta(x_t, t))^2, backward, clip, Adam, EMA.
 * ddpm_train_run is the whole `ddpm train` command: data folder, run folder,
 * stop conditions, progress, log.jsonl, checkpoints, previews, signals. */
#ifndef DDPM_TRAIN_H
#define DDPM_TRAIN_H

#include <signal.h>
#include <stdio.h>

#include "ddpm/checkpoint.h"
#include "ddpm/rng.h"
#include "ddpm/schedule.h"
#include "ddpm/unet.h"

typedef struct {
    ddpm_run_config cfg;
    ddpm_unet *net;
    ddpm_schedule sched;
    /* arenas of net->n_params floats, one layout (the tensor table) */
    float *params, *grads, *adam_m, *adam_v, *ema;
    ddpm_unet_workspace *ws;
    float *x_t, *eps, *eps_pred, *d_eps; /* [batch, C, S, S] */
    int *t;                              /* [batch] step indices */
    ddpm_rng noise_rng, dropout_rng;
    ddpm_train_state state;
} ddpm_trainer;

typedef struct {
    double loss;      /* L_simple of the batch */
    double grad_norm; /* before clipping */
    float lr;         /* the step's learning rate */
} ddpm_step_stats;

/* A fresh run: weights initialised from cfg->seed, EMA = weights, Adam zero. */
int ddpm_trainer_create(ddpm_trainer **out, const ddpm_run_config *cfg);
/* A run continued from a checkpoint: its config, weights, EMA, Adam and state. */
int ddpm_trainer_from_checkpoint(ddpm_trainer **out, const ddpm_checkpoint *ck);
void ddpm_trainer_free(ddpm_trainer *tr);
/* One training step on x0 [cfg.batch, C, S, S]. Returns DDPM_ENAN (and changes no
 * weights) if the loss is not finite. */
int ddpm_trainer_step(ddpm_trainer *tr, const float *x0, ddpm_step_stats *stats);
/* Saves weights, EMA, Adam and state atomically. */
int ddpm_trainer_save(const ddpm_trainer *tr, const char *path);

typedef struct {
    ddpm_run_config cfg;  /* model image_size / in_channels 0: taken from the data */
    const char *data_dir;
    const char *out_dir;
    int resume;
    long steps;           /* stop at this total step (0: no limit) */
    double epochs;        /* stop after this many epochs in total (0: no limit) */
    double minutes;       /* stop after this many minutes of this session (0: no limit) */
    long save_every;      /* checkpoint every N steps (0: only at the end) */
    long sample_every;    /* preview grid every N steps (0: only at the end) */
    long log_every;       /* log.jsonl / plain progress line every N steps */
    int preview_n;        /* images in a preview grid (0: no previews) */
    int preview_steps;    /* DDIM steps of a preview */
    int strict;           /* non-image files in the data folder are an error */
    int quiet;
    int json;             /* print a JSON summary on stdout at the end */
    volatile sig_atomic_t *stop; /* set by a signal handler: save and stop */
} ddpm_train_options;

void ddpm_train_options_default(ddpm_train_options *o);
/* 0 when the run ended normally or on a stop request (a checkpoint was saved);
 * DDPM_ENAN on divergence (the last good checkpoint is kept); another negative
 * DDPM_E* with a message otherwise. */
int ddpm_train_run(const ddpm_train_options *o);

/* Names of the files in a run folder. */
#define DDPM_CHECKPOINT_FILE "checkpoint.safetensors"
#define DDPM_LOG_FILE "log.jsonl"
#define DDPM_SAMPLES_DIR "samples"

#endif
