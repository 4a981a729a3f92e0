/* run.h: a training run, as `ddpm train` does it: the data folder, the run folder
 * (checkpoint, log.jsonl, preview grids in samples/), the checkpoint cadence,
 * resume, the stop conditions (steps, epochs, minutes, a stop flag) and NaN
 * handling. It writes files and never the terminal: what happens reaches the
 * caller through ddpm_run_callbacks while it runs and a ddpm_run_summary at the
 * end. A run folder is never overwritten: a new run refuses a folder that holds a
 * checkpoint; resume continues it bit for bit (trainer state, data position, log).
 *
 * Surviving crashes: one process writes a run folder at a time (an advisory lock
 * on RUN_DIR/lock, held for the whole run; a second run is refused with the
 * first one's pid; the kernel drops the lock of a killed run). At the start, the
 * temporary files that killed writers left are removed (ddpm's own names only,
 * fsutil.h), and on resume log.jsonl is cut back to the checkpoint's step, so
 * that the log never holds a step twice. Before step 1 the folder is proved to
 * take a save (ddpm_probe_folder: a test file created, written, fsync'ed,
 * renamed and removed; free space and the file-size limit against the
 * checkpoint's size). A fresh run saves its step 0 before training, so the
 * folder can always be resumed; a folder without a checkpoint (a run killed
 * before that save) is started from step 0, with or without --resume, with a
 * warning, and its log.jsonl is kept whole as log.orphan[.N].jsonl. A run
 * folder that is, or is inside, the data folder or eval_dir (or holds one) is
 * refused before anything is read. The checkpoint records the stop condition
 * and a fingerprint of the data's contents (ddpm_dataset_fingerprint): a resume
 * without a stop condition continues to the run's own, and a resume on other
 * data is refused unless allow_data_change, naming the first changed file from
 * the folder's data-index.txt. */
#ifndef DDPM_RUN_H
#define DDPM_RUN_H

#include <signal.h>
#include <stddef.h>

#include "ddpm/config.h"
#include "ddpm/sampler.h"

/* Names of the files in a run folder. */
#define DDPM_CHECKPOINT_FILE "checkpoint.safetensors"
#define DDPM_LOG_FILE "log.jsonl"
#define DDPM_SAMPLES_DIR "samples"
#define DDPM_LOCK_FILE "lock" /* flock'ed by the run writing the folder; holds its pid */
#define DDPM_DATA_INDEX_FILE "data-index.txt" /* the data's files (dataset.h), to name a changed one */
#define DDPM_LOG_ASIDE_STEM "log.orphan" /* log.orphan.jsonl, log.orphan.2.jsonl, ...: a log kept aside */
/* The smallest image side a run accepts without allow_small_data. */
#define DDPM_RUN_MIN_SIDE 8

typedef struct {
    ddpm_run_config cfg; /* model fields left auto (the default here, see
                            ddpm_unet_config_fit_data) are chosen from the data */
    const char *data_dir;
    const char *out_dir;         /* the run folder; created with its parents */
    int resume;                  /* continue the run in out_dir (cfg is then its checkpoint's) */
    /* The stop condition. None given: on resume the run's own (saved in its
     * checkpoint), else one epoch. */
    long steps;                  /* stop at this total step (0: no limit) */
    double epochs;               /* stop after this many epochs in total (0: no limit) */
    double minutes;              /* stop after this many more minutes of training (0: no limit) */
    long save_every;             /* checkpoint every N steps (0: only at the end) */
    long sample_every;           /* preview grid every N steps (0: only at the end) */
    long log_every;              /* log.jsonl line and progress callback every N steps */
    int preview_n;               /* images in a preview grid (0: no previews) */
    int preview_steps;           /* the preview sampler's steps, network evaluations for a
                                    solver (EMA weights; at most T) */
    ddpm_sampler_kind preview_sampler; /* a row of sampler.h (default ddim, at eta 1) */
    ddpm_spacing preview_spacing;      /* a solver row's spacing (default logsnr) */
    int strict;                  /* non-image files in the data folder are an error */
    int classes;                 /* class-conditional: one subfolder of data_dir per class
                                    (dataset.h); the model gets n_classes from the data */
    const char *eval_dir;        /* held-out images (NULL: no evaluation): every eval_every
                                    steps, L_simple of the EMA weights on eval_n of them
                                    (and with eval_mc > 0 the --mc bound, eval.h) goes to
                                    log.jsonl as {"step", "eval_l_simple", ...} */
    long eval_every;             /* (default 500) */
    int eval_n;                  /* images (default 256, or all if the folder has fewer) */
    int eval_mc;                 /* Monte Carlo steps of the bound (default 0: no bound) */
    const char *eval_fid;        /* FID statistics (fid.h) of reference images (NULL: no FID):
                                    every eval_every steps and at the session's last step, the
                                    FID of eval_fid_n samples of the EMA weights against them
                                    (model_fid.h: `ddpm sample`'s default sampler, the run's
                                    seed, so each evaluation sees the same noise) goes to
                                    log.jsonl as {"step", "eval_fid_n", "eval_fid"} */
    const char *inception;       /* the Inception weights the statistics name (their SHA-256);
                                    both are checked before step 1 */
    int eval_fid_n;              /* samples per FID (>= 2; required with eval_fid) */
    int allow_data_change;       /* resume on a data folder other than the run's (see below) */
    int allow_small_data;        /* train on fewer images than a batch, or on images (or a
                                    model) smaller than DDPM_RUN_MIN_SIDE px: refused without */
    int micro_batch;             /* images per forward/backward (0: the whole batch); a
                                    memory choice, same update; may change on resume */
    volatile sig_atomic_t *stop; /* may be NULL; when it becomes nonzero (a signal
                                    handler sets it) the run saves and stops */
} ddpm_run_options;

/* out_dir runs/ddpm, save every 500, log every 50, previews of 64 images with 50
 * DDIM steps at the end only, no stop condition (set one). */
void ddpm_run_options_default(ddpm_run_options *o);

/* Once the data is loaded and the run folder is ready. */
typedef struct {
    int n_images, channels, image_size;
    size_t n_params;
    int batch;
    int resumed;     /* continuing a run from its checkpoint */
    long start_step; /* steps already taken */
    long stop_step;  /* 0: no step limit */
    int n_processes; /* of a data-parallel run (dist.h); 1 alone */
    int micro_batch; /* images per forward/backward */
    const ddpm_unet_config *model; /* the model trained (data-driven defaults filled) */
    ddpm_precision precision;      /* of the convolutions' and attention's products */
} ddpm_run_start;

/* Every log_every steps and at the last step: the same numbers as the log.jsonl line. */
typedef struct {
    long step, stop_step;   /* stop_step 0: no step limit */
    double loss;            /* mean L_simple of the steps since the last report */
    double lr, grad_norm;   /* of the last step */
    double images_per_sec;  /* since the last report */
    double epoch;           /* images seen / images in the data set */
    double session_seconds; /* wall time of this session */
    double eta_seconds;     /* time left by the stop conditions; -1: unknown */
} ddpm_run_progress;

/* Each member may be NULL. */
typedef struct {
    void *ctx;
    void (*started)(void *ctx, const ddpm_run_start *s);
    void (*progress)(void *ctx, const ddpm_run_progress *p);
    /* A line about the data (a skipped file, how many were skipped), no newline. */
    void (*warning)(void *ctx, const char *line);
    /* After each FID evaluation (eval_fid): the step, the samples, the FID, its seconds. */
    void (*fid)(void *ctx, long step, int n, double fid, double seconds);
} ddpm_run_callbacks;

typedef struct {
    long step;              /* total steps at the end */
    double loss;            /* L_simple of the last step of this session (0 if none) */
    int interrupted;        /* stopped by the stop flag */
    double elapsed_seconds; /* training time over all sessions */
    char checkpoint[4096];  /* the checkpoint's path */
    char preview[4096];     /* the final preview grid's path ("" when none was made) */
} ddpm_run_summary;

/* Runs until a stop condition. Returns 0 when the run ended normally or on the
 * stop flag (a checkpoint was saved and *summary filled); DDPM_ENAN on divergence
 * (the last good checkpoint is kept, the message says which step it holds);
 * another negative DDPM_E* with a message otherwise. cb and summary may be NULL. */
int ddpm_run(const ddpm_run_options *o, const ddpm_run_callbacks *cb, ddpm_run_summary *summary);

#endif
