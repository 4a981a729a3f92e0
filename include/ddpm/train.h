/* train.h: DDPM training (Ho et al. 2020, Algorithm 1, L_simple).
 *
 * ddpm_trainer holds one run in memory: the network, its parameter, gradient,
 * Adam and EMA arenas, the schedule, and the state (step, RNG counters).
 * ddpm_trainer_step takes one batch of clean images x0 in [-1, 1]:
 *   t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps,
 *   loss = mean (eps - eps_theta(x_t, t))^2, backward, clip, Adam, EMA.
 * The trainer does not know where batches come from: a training run (run.h)
 * feeds it from a dataset and saves it. */
#ifndef DDPM_TRAIN_H
#define DDPM_TRAIN_H

#include "ddpm/checkpoint.h"
#include "ddpm/config.h"
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
    /* The one copy of where the run is. The step and the Philox counters of the
     * noise and dropout streams are the trainer's own (each step reads and
     * advances them); data_epoch / data_position are the data feeder's, which
     * writes its position here before it saves (run.c). */
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
/* One training step on x0 [cfg.batch, C, S, S]. Returns DDPM_ENAN (and changes
 * neither the weights nor the state) if the loss or the gradient is not finite. */
int ddpm_trainer_step(ddpm_trainer *tr, const float *x0, ddpm_step_stats *stats);
/* Saves weights, EMA, Adam and state atomically. */
int ddpm_trainer_save(const ddpm_trainer *tr, const char *path);

#endif
