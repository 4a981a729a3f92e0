/* train.h: DDPM training (Ho et al. 2020, Algorithm 1; L_simple by default,
 * the other objectives of loss.h, prediction types of predict.h and timestep
 * sampling of timestep.h by config).
 *
 * ddpm_trainer holds one run in memory: the network, its parameter, gradient,
 * Adam and EMA arenas, the schedule, and the state (step, RNG counters).
 * ddpm_trainer_step takes one batch of clean images x0 in [-1, 1]:
 *   t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps,
 *   loss = mean (eps - eps_theta(x_t, t))^2, backward, clip, Adam, EMA.
 * With cfg.t_sampling importance, t is drawn from p_t of the run's loss history
 * and each image's term weighted by 1 / (T p_t) (timestep.h); the history is
 * the trainer's, updated by ddpm_trainer_apply and saved with the run.
 * With another prediction type the MSE compares the output with that type's
 * target (ddpm_pred_target); with another objective, ddpm_loss computes it.
 * A class-conditional model takes a label per image; each label is replaced by
 * "no class" with probability cfg.cond_drop (classifier-free guidance), drawn
 * for image g by ddpm_rng_uniform on stream LABELS from counter noise + g.
 * The trainer does not know where batches come from: a training run (run.h)
 * feeds it from a dataset and saves it.
 *
 * A step is two halves: ddpm_trainer_accumulate computes the gradient of some of
 * the batch's images (a process's share in a data-parallel run, or all of them)
 * in micro-batches of at most micro_batch images, and ddpm_trainer_apply clips,
 * steps Adam and the EMA from the summed gradient. Between the two, processes sum
 * their reduce buffers (dist.h). Each image's randomness is a pure function of
 * the step's counters and its index in the batch (Philox; docs/design.md, Threads
 * and determinism):
 *   t of image g:    ddpm_rng_below(T) on stream NOISE from counter noise + g
 *                    (importance sampling past its warm-up: ddpm_t_draw's
 *                    ddpm_rng_uniform from the same counter)
 *   eps of image g:  ddpm_rng_normal_fill on stream NOISE from counter
 *                    noise + batch + g * ceil(D / 4)
 *   dropout:         ddpm_dropout_draw (unet.h) from the dropout counter
 * so a micro-batch, or a process's share, draws what the whole batch would, and
 * the update equals the whole batch's up to the order of float sums. */
#ifndef DDPM_TRAIN_H
#define DDPM_TRAIN_H

#include "ddpm/checkpoint.h"
#include "ddpm/config.h"
#include "ddpm/schedule.h"
#include "ddpm/timestep.h"
#include "ddpm/unet.h"

typedef struct ddpm_trainer {
    ddpm_run_config cfg;
    ddpm_unet *net;
    ddpm_schedule sched;
    /* arenas of net->n_params floats, one layout (the tensor table) */
    float *params, *grads, *adam_m, *adam_v, *ema;
    /* grads is the reduce buffer of ddpm_trainer_reduce_size floats: n_params
     * gradients, then DDPM_TRAIN_SCALARS floats summed with them (enum below),
     * then with importance sampling one float per image of the batch: image g's
     * unweighted term at n_params + DDPM_TRAIN_SCALARS + g, written by the process
     * that computes it, 0 elsewhere, so that the sum gathers them exactly. */
    ddpm_unet_workspace *ws;             /* for micro_batch images */
    int micro_batch;                     /* images per forward/backward */
    float *x_t, *eps;                    /* [micro_batch, C, S, S] */
    float *eps_pred, *d_eps;             /* the output and its gradient [micro_batch, out channels, S, S] */
    int *t;                              /* [micro_batch] step indices */
    float *target;                       /* [micro_batch, C, S, S] scratch of the loss */
    int *labels;                         /* [micro_batch] labels after the label dropout */
    double *t_weight, *t_term;           /* [micro_batch] importance weights 1/(T p_t) and
                                            unweighted terms (importance sampling only) */
    double *t_prob, *t_cdf;              /* [T] p_t of the step being taken (importance only):
                                            derived from t_history at each use */
    ddpm_t_history t_history;            /* importance sampling's loss history: run state,
                                            saved with the checkpoint (empty for uniform) */
    char **class_names;                  /* [cfg.model.n_classes], saved in the checkpoint */
    /* The one copy of where the run is. The step and the Philox counters of the
     * noise and dropout streams are the trainer's own (each step reads and
     * advances them); data_epoch / data_position are the data feeder's, which
     * writes its position here before it saves (run.c). */
    ddpm_train_state state;
} ddpm_trainer;

/* The floats after the gradients in the reduce buffer (tr->grads + n_params). */
enum {
    DDPM_TRAIN_LOSS,   /* the accumulated images' share of the batch's L_simple */
    /* the run's votes (run.c), cleared by accumulate: processes that failed,
       that were asked to stop (a signal), whose time limit is up */
    DDPM_TRAIN_FAILED,
    DDPM_TRAIN_STOP,
    DDPM_TRAIN_TIME_UP,
    DDPM_TRAIN_SCALARS
};

typedef struct {
    double loss;      /* the objective of the batch (L_simple by default) */
    double grad_norm; /* before clipping */
    float lr;         /* the step's learning rate */
} ddpm_step_stats;

/* Floats in the reduce buffer tr->grads (what a data-parallel step sums). */
size_t ddpm_trainer_reduce_size(const ddpm_trainer *tr);

/* A fresh run: weights initialised from cfg->seed, EMA = weights, Adam zero.
 * micro_batch: images per forward/backward, which sizes the activation memory
 * (0 or more than cfg->batch: the whole batch). It is a resource choice, not part
 * of the run: a resumed run may change it. */
int ddpm_trainer_create(ddpm_trainer **out, const ddpm_run_config *cfg, int micro_batch);
/* A run continued from a checkpoint: its config, weights, EMA, Adam and state
 * (with importance sampling its loss history; empty if the file has none). */
int ddpm_trainer_from_checkpoint(ddpm_trainer **out, const ddpm_checkpoint *ck, int micro_batch);
void ddpm_trainer_free(ddpm_trainer *tr);
/* One training step on x0 [cfg.batch, C, S, S]: accumulate all of it, apply.
 * Returns DDPM_ENAN (and changes neither the weights nor the state) if the loss
 * or the gradient is not finite. */
int ddpm_trainer_step(ddpm_trainer *tr, const float *x0, ddpm_step_stats *stats);
/* ddpm_trainer_step with labels[cfg.batch] (ddpm_trainer_accumulate_class). */
int ddpm_trainer_step_class(ddpm_trainer *tr, const float *x0, const int *labels, ddpm_step_stats *stats);
/* Copies the names of the n = cfg.model.n_classes classes (saved with the run). */
int ddpm_trainer_set_class_names(ddpm_trainer *tr, const char *const *names);
/* Clears the reduce buffer, then accumulates the gradient and the loss share of
 * images [first, first + count) of the batch x0 [cfg.batch, C, S, S]. */
void ddpm_trainer_accumulate(ddpm_trainer *tr, const float *x0, int first, int count);
/* The same for a class-conditional model: labels[cfg.batch], indexed like x0,
 * in 0..n_classes-1 (NULL: every image unlabelled). */
void ddpm_trainer_accumulate_class(ddpm_trainer *tr, const float *x0, const int *labels, int first, int count);
/* The step from the reduce buffer (gradients of the whole batch): clip, Adam,
 * EMA, advance the step and the counters; with importance sampling, add the
 * batch's terms to the loss history in batch order. DDPM_ENAN as
 * ddpm_trainer_step. */
int ddpm_trainer_apply(ddpm_trainer *tr, ddpm_step_stats *stats);
/* Saves weights, EMA, Adam and state (with the loss history) atomically. */
int ddpm_trainer_save(const ddpm_trainer *tr, const char *path);
/* The same, and sha256 (65 bytes, may be NULL) receives the SHA-256 of the
 * bytes written (ddpm_checkpoint_save). */
int ddpm_trainer_save_sha256(const ddpm_trainer *tr, const char *path, char *sha256);

#endif
