/* train.h: DDPM training (Ho et al. 2020, Algorithm 1; L_simple by default,
 * the other objectives of loss.h and prediction types of predict.h by config).
 *
 * ddpm_trainer holds one run in memory: the network, its parameter, gradient,
 * Adam and EMA arenas, the schedule, and the state (step, RNG counters).
 * ddpm_trainer_step takes one batch of clean images x0 in [-1, 1]:
 *   t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps,
 *   loss = mean (eps - eps_theta(x_t, t))^2, backward, clip, Adam, EMA.
 * With another prediction type the MSE compares the output with that type's
 * target (ddpm_pred_target); with another objective, ddpm_loss computes it.
 * A class-conditional model takes a label per image; each label is replaced by
 * "no class" with probability cfg.cond_drop, drawn per image from the noise
 * stream (after the timesteps), so that the model also learns the unconditional
 * output that classifier-free guidance needs.
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
    float *x_t, *eps, *eps_pred, *d_eps; /* [batch, C, S, S]; eps_pred: the network output */
    float *target;                       /* [batch, C, S, S] scratch of the loss */
    int *t;                              /* [batch] step indices */
    int *labels;                         /* [batch] labels after the label dropout */
    char **class_names;                  /* [cfg.model.n_classes], saved in the checkpoint */
    /* The one copy of where the run is. The step and the Philox counters of the
     * noise and dropout streams are the trainer's own (each step reads and
     * advances them); data_epoch / data_position are the data feeder's, which
     * writes its position here before it saves (run.c). */
    ddpm_train_state state;
} ddpm_trainer;

typedef struct {
    double loss;      /* the objective of the batch (L_simple by default) */
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
/* The same for a class-conditional model: labels[cfg.batch] in 0..n_classes-1
 * (NULL: every image unlabelled). */
int ddpm_trainer_step_class(ddpm_trainer *tr, const float *x0, const int *labels, ddpm_step_stats *stats);
/* Copies the names of the n = cfg.model.n_classes classes (saved with the run). */
int ddpm_trainer_set_class_names(ddpm_trainer *tr, const char *const *names);
/* Saves weights, EMA, Adam and state atomically. */
int ddpm_trainer_save(const ddpm_trainer *tr, const char *path);

#endif
