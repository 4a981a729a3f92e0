#include "ddpm/run.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ddpm/checkpoint.h"
#include "ddpm/dataset.h"
#include "ddpm/dist.h"
#include "ddpm/error.h"
#include "ddpm/eval.h"
#include "ddpm/fsutil.h"
#include "ddpm/recipe.h"
#include "ddpm/sha256.h"
#include "ddpm/model.h"
#include "ddpm/model_fid.h"
#include "ddpm/sample.h"
#include "ddpm/train.h"

void ddpm_run_options_default(ddpm_run_options *o)
{
    memset(o, 0, sizeof *o);
    ddpm_run_config_default(&o->cfg);
    ddpm_unet_config_set_auto(&o->cfg.model);
    o->out_dir = "runs/ddpm";
    o->save_every = 500;
    o->sample_every = 0;
    o->log_every = 50;
    o->preview_n = 64;
    /* ddpm sample's default sampler and evaluations (sample.c) */
    o->preview_steps = 20;
    o->preview_sampler = DDPM_SAMPLER_DPMPP_2M_SDE;
    o->preview_spacing = DDPM_SPACING_LOGSNR;
    o->eval_every = 500;
    o->eval_n = 0;
    o->eval_mc = 0;
    o->eval_fid_n = 0;
}

/* One session of a run: what ddpm_run opens and closes. */
typedef struct {
    const ddpm_run_options *o;
    char ckpt_path[3072], log_path[3072], samples_dir[3072]; /* out_dir is at most 3000 bytes */
    char ckpt_sha256[65]; /* of the bytes session_save last wrote (with previews on), for their recipes */
    ddpm_dataset *ds;
    ddpm_trainer *tr;
    FILE *log;
    float *x0;
    int *labels;         /* [batch] */
    float *eval_x0;      /* [eval_n, D] held-out images, NULL without eval_dir */
    int eval_n;
    ddpm_inception *fid_net; /* rank 0 with eval_fid: the network and the reference statistics */
    ddpm_fid_stats fid_ref;
    long fid_step;           /* the step of the last FID (-1: none yet) */
    long stop_step;      /* 0: none */
    double stop_elapsed; /* total training seconds at which to stop; 0: none */
    int lock_fd;         /* the run folder's lock (process 0), held for the whole session */
    int resume;          /* continuing from a checkpoint (not: --resume of a folder without one) */
    int rank, n_ranks; /* this process in a data-parallel run (dist.h); rank 0 writes the files */
} run_session;

static void session_close(run_session *r)
{
    if (r->log)
        fclose(r->log);
    ddpm_unlock_folder(r->lock_fd);
    r->lock_fd = -1;
    free(r->x0);
    free(r->labels);
    free(r->eval_x0);
    ddpm_inception_free(r->fid_net);
    r->fid_net = NULL;
    ddpm_fid_stats_free(&r->fid_ref);
    ddpm_trainer_free(r->tr);
    ddpm_dataset_close(r->ds);
}

/* The model config's error (just set) as a bad value of the caller's: exit 2 in the CLI. */
static int usage_error(void)
{
    char why[900];
    snprintf(why, sizeof why, "%s", ddpm_last_error());
    return ddpm_error(DDPM_EUSAGE, "model: %s", why);
}

static void warn(const ddpm_run_callbacks *cb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(const ddpm_run_callbacks *cb, const char *fmt, ...)
{
    if (!cb || !cb->warning)
        return;
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cb->warning(cb->ctx, line);
}

typedef struct {
    const char *text;
    size_t len;
} text_span;

static int write_span(void *ctx, FILE *f)
{
    const text_span *t = ctx;
    return t->len && fwrite(t->text, 1, t->len, f) != t->len ? -1 : 0;
}

/* Cuts log.jsonl back to the lines of steps <= max_step, so that a resumed run,
 * which logs the steps after its checkpoint again, never holds a step twice: a
 * run killed between a log line and the next checkpoint wrote lines past it. A
 * last line without its newline (cut by the kill) goes too. Only a regular file
 * is rewritten (atomically); *n_cut counts the lines removed. */
static int cut_log(const char *path, long max_step, int *n_cut)
{
    *n_cut = 0;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ddpm_error(DDPM_EIO, "%s: cannot read: %s", path, strerror(errno));
    char *text = ddpm_malloc((size_t)st.st_size + 1, 1);
    size_t len = text ? fread(text, 1, (size_t)st.st_size, f) : 0;
    int read_error = ferror(f);
    fclose(f);
    if (!text)
        return DDPM_ENOMEM;
    if (read_error) {
        free(text);
        return ddpm_error(DDPM_EIO, "%s: cannot read", path);
    }
    text[len] = '\0';
    size_t kept = 0;
    for (size_t at = 0; at < len;) {
        char *nl = memchr(text + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - text) + 1 : len;
        const char *key = strstr(text + at, "\"step\":");
        long step = key && key < text + end ? strtol(key + 7, NULL, 10) : -1;
        if (nl && step >= 0 && step <= max_step) {
            memmove(text + kept, text + at, end - at);
            kept += end - at;
        } else {
            ++*n_cut;
        }
        at = end;
    }
    int rc = 0;
    if (*n_cut) {
        text_span t = {text, kept};
        rc = ddpm_atomic_write(path, write_span, &t);
    }
    free(text);
    return rc;
}

/* Moves a log.jsonl that has no checkpoint beside it to the first free name of
 * log.orphan.jsonl, log.orphan.2.jsonl, ... in its folder; aside receives that
 * name ("" when there was nothing to move: no log, an empty one, or not a
 * regular file). The run folder's lock makes the free-name test safe. */
static int set_log_aside(const char *log_path, char *aside, size_t size)
{
    aside[0] = '\0';
    struct stat st;
    if (lstat(log_path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        return DDPM_OK;
    size_t dir_len = strlen(log_path) - strlen(DDPM_LOG_FILE);
    for (int k = 1; k < 1000; k++) {
        char name[64];
        if (k == 1)
            snprintf(name, sizeof name, DDPM_LOG_ASIDE_STEM ".jsonl");
        else
            snprintf(name, sizeof name, DDPM_LOG_ASIDE_STEM ".%d.jsonl", k);
        snprintf(aside, size, "%.*s%s", (int)dir_len, log_path, name);
        if (lstat(aside, &st) == 0)
            continue;
        if (errno != ENOENT)
            break;
        if (rename(log_path, aside) != 0)
            return ddpm_error(DDPM_EIO, "%s: cannot keep it as %s: %s", log_path, aside, strerror(errno));
        return DDPM_OK;
    }
    int rc = ddpm_error(DDPM_EIO, "%s: has no checkpoint beside it and no free name to keep it under (%s...)",
                        log_path, DDPM_LOG_ASIDE_STEM);
    aside[0] = '\0';
    return rc;
}

/* What a checkpoint of tr holds at least: four arenas (weights, EMA, Adam's two
 * moments) of float32 (design.md, Files); the header and an importance-sampling
 * history add a little. */
static unsigned long long checkpoint_bytes(const ddpm_trainer *tr)
{
    return 4ull * sizeof(float) * (unsigned long long)tr->net->n_params;
}

/* Makes the run folder, takes its lock and removes what killed writers left. */
static int lock_and_clean(run_session *r, const ddpm_run_callbacks *cb)
{
    const char *dir = r->o->out_dir;
    int rc = ddpm_mkdir_p(dir);
    if (!rc)
        rc = ddpm_lock_folder(dir, DDPM_LOCK_FILE, &r->lock_fd);
    int n_stale = 0, n_stale_samples = 0;
    if (!rc && !(rc = ddpm_remove_stale_temps(dir, &n_stale)))
        rc = ddpm_remove_stale_temps(r->samples_dir, &n_stale_samples);
    if (!rc && n_stale + n_stale_samples)
        warn(cb, "%s: removed %d temporary file%s left by a stopped run", dir, n_stale + n_stale_samples,
             n_stale + n_stale_samples == 1 ? "" : "s");
    if (rc) {
        ddpm_unlock_folder(r->lock_fd);
        r->lock_fd = -1;
    }
    return rc;
}

/* The stop step of --steps / --epochs, one epoch when no stop condition is given at
 * all; 0: none (a --minutes limit alone). */
static long given_stop_step(const ddpm_run_options *o, int n_images, int batch)
{
    int given = o->steps > 0 || o->epochs > 0 || o->minutes > 0;
    double epochs = given ? o->epochs : 1;
    long stop_step = o->steps > 0 ? o->steps : 0;
    if (epochs > 0) {
        long e = (long)ceil(epochs * n_images / batch);
        stop_step = stop_step ? (e < stop_step ? e : stop_step) : e;
    }
    return stop_step;
}

/* The absolute path `path` names, through links and "..": the real path of its
 * longest existing prefix, then the rest (which does not exist, so holds no
 * link) with "." and ".." applied. malloc'ed; NULL when nothing resolves. */
static char *resolve_path(const char *path)
{
    char *head = strdup(path);
    if (!head)
        return NULL;
    size_t cut = strlen(path); /* head is path[0, cut) */
    char *real;
    for (;;) {
        head[cut] = '\0';
        real = realpath(cut ? head : ".", NULL);
        if (real || cut == 0)
            break;
        size_t before = cut;
        while (cut > 0 && path[cut - 1] != '/') /* drop the last component */
            cut--;
        while (cut > 1 && path[cut - 1] == '/') /* and the slashes before it, "/" stays */
            cut--;
        if (cut == before) /* "/" itself did not resolve */
            break;
    }
    const char *rest = path + cut;
    if (!real) {
        free(head);
        return NULL;
    }
    free(head);
    size_t cap = strlen(real) + strlen(rest) + 2;
    char *out = malloc(cap);
    if (!out) {
        free(real);
        return NULL;
    }
    snprintf(out, cap, "%s", real);
    free(real);
    for (const char *c = rest; *c;) {
        size_t len = strcspn(c, "/");
        if (len == 2 && c[0] == '.' && c[1] == '.') {
            char *slash = strrchr(out, '/');
            if (slash && slash != out)
                *slash = '\0';
            else
                snprintf(out, cap, "/");
        } else if (len && !(len == 1 && c[0] == '.')) {
            size_t n = strlen(out);
            snprintf(out + n, cap - n, "%s%.*s", n > 1 ? "/" : "", (int)len, c);
        }
        c += len;
        while (*c == '/')
            c++;
    }
    return out;
}

/* Whether `inner` is `outer` or a folder below it (both resolved). */
static int path_within(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    if (n == 1 && outer[0] == '/')
        return 1;
    return strncmp(inner, outer, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

/* A run folder inside a folder the run reads images from would read its own
 * previews as data (and the data inside the run folder its previews): refused
 * before anything is read or written. */
static int check_nesting(const char *out_dir, const char *data_dir, const char *flag)
{
    if (!data_dir)
        return DDPM_OK;
    char *out = resolve_path(out_dir), *data = resolve_path(data_dir);
    int rc = DDPM_OK;
    if (!out || !data)
        rc = DDPM_OK; /* a path that cannot be resolved is reported by what opens it */
    else if (path_within(out, data))
        rc = ddpm_error(DDPM_EUSAGE,
                        "%s: the run folder is inside the %s folder %s (its previews would be read as images); "
                        "choose an --out outside it",
                        out_dir, flag, data_dir);
    else if (path_within(data, out))
        rc = ddpm_error(DDPM_EUSAGE,
                        "%s: the %s folder is inside the run folder %s (the run's previews would be read as "
                        "images); move it out",
                        data_dir, flag, out_dir);
    free(out);
    free(data);
    return rc;
}

/* The Inception network and the reference statistics of eval_fid, checked
 * against each other before anything else: statistics of other weights, or
 * weights that cannot be read, stop the run before its folder is touched. */
static int fid_open(run_session *r)
{
    const ddpm_run_options *o = r->o;
    if (!o->eval_fid)
        return DDPM_OK;
    if (!o->inception || !o->inception[0])
        return ddpm_error(DDPM_EUSAGE, "--eval-fid: no Inception weights given");
    if (o->eval_fid_n < 2)
        return ddpm_error(DDPM_EUSAGE, "--eval-fid needs --eval-fid-n N (N >= 2 samples per evaluation)");
    int rc = ddpm_inception_load(&r->fid_net, o->inception);
    if (!rc)
        rc = ddpm_fid_stats_load(&r->fid_ref, o->eval_fid, ddpm_inception_sha256(r->fid_net));
    return rc;
}

/* Data too small to learn from is a mistake more often than a wish: fewer images
 * than one batch (each batch would repeat images), or images smaller than
 * DDPM_RUN_MIN_SIDE pixels (a 1x1 model). allow_small_data skips this. */
static int check_plausible(const run_session *r)
{
    int n = ddpm_dataset_count(r->ds), batch = r->tr->cfg.batch, size = r->tr->cfg.model.image_size;
    int first = 0, side = ddpm_dataset_smallest_side(r->ds, &first);
    if (n < batch)
        return ddpm_error(DDPM_EINVAL,
                          "%s: %d image%s, fewer than one batch of %d; pass --allow-small-data if you mean it",
                          r->o->data_dir, n, n == 1 ? "" : "s", batch);
    if (side < DDPM_RUN_MIN_SIDE)
        return ddpm_error(DDPM_EINVAL, "%s: %d px on its shorter side, smaller than %d px; pass --allow-small-data if "
                                       "you mean it",
                          ddpm_dataset_path(r->ds, first), side, DDPM_RUN_MIN_SIDE);
    if (size < DDPM_RUN_MIN_SIDE)
        return ddpm_error(DDPM_EINVAL, "%s: a model of %d x %d px, smaller than %d px; pass --allow-small-data if "
                                       "you mean it",
                          r->o->data_dir, size, size, DDPM_RUN_MIN_SIDE);
    return DDPM_OK;
}

/* Refuses to overwrite a run, loads the data and the trainer (fresh or from the
 * checkpoint), makes the run folder and opens the log. */
static int session_open(run_session *r, const ddpm_run_options *o, const ddpm_run_callbacks *cb)
{
    memset(r, 0, sizeof *r);
    r->o = o;
    r->rank = ddpm_dist_rank();
    r->n_ranks = ddpm_dist_size();
    if (!o->data_dir || !o->out_dir)
        return ddpm_error(DDPM_EINVAL, "a run needs a data folder and a run folder");
    if (strlen(o->out_dir) > 3000)
        return ddpm_error(DDPM_EINVAL, "--out: path too long");
    if (o->log_every < 1 || o->save_every < 0 || o->sample_every < 0 || o->preview_n < 0 ||
        (o->preview_n > 0 && o->preview_steps < 1) || !ddpm_sampler_get(o->preview_sampler) ||
        (unsigned)o->preview_spacing >= DDPM_N_SPACINGS)
        return ddpm_error(DDPM_EINVAL, "run options: log_every must be >= 1, save_every, sample_every and "
                                       "preview_n >= 0, preview_steps >= 1, preview_sampler a row of the "
                                       "sampler table and preview_spacing time, logsnr or karras");
    snprintf(r->ckpt_path, sizeof r->ckpt_path, "%s/%s", o->out_dir, DDPM_CHECKPOINT_FILE);
    snprintf(r->log_path, sizeof r->log_path, "%s/%s", o->out_dir, DDPM_LOG_FILE);
    snprintf(r->samples_dir, sizeof r->samples_dir, "%s/%s", o->out_dir, DDPM_SAMPLES_DIR);
    r->lock_fd = -1;
    r->fid_step = -1;
    if (!o->out_dir[0])
        return ddpm_error(DDPM_EUSAGE, "--out: the run folder's name is empty");
    int rc = check_nesting(o->out_dir, o->data_dir, "data");
    if (!rc)
        rc = check_nesting(o->out_dir, o->eval_dir, "--eval-dir");
    if (rc)
        return rc;
    rc = r->rank == 0 ? fid_open(r) : 0;
    if (rc) {
        session_close(r);
        return rc;
    }
    /* One writer per run folder (process 0), from here to session_close. A folder
     * that does not exist yet is made and locked in session_files, so that bad
     * data leaves no folder behind. */
    rc = r->rank == 0 && ddpm_path_exists(o->out_dir) ? lock_and_clean(r, cb) : 0;
    if (rc) {
        session_close(r);
        return rc;
    }
    ddpm_checkpoint *ck = NULL;
    ddpm_run_config cfg = o->cfg;
    int has_ckpt = ddpm_path_exists(r->ckpt_path);
    r->resume = o->resume && has_ckpt;
    if (o->resume && !has_ckpt) {
        if (r->rank == 0)
            warn(cb, "%s: no checkpoint yet (the run stopped before its first save): starting from step 0",
                 o->out_dir);
    } else if (o->resume) {
        if ((rc = ddpm_checkpoint_open(&ck, r->ckpt_path))) {
            session_close(r);
            return rc;
        }
        cfg = *ddpm_checkpoint_config(ck);
    } else if (r->rank > 0) {
        /* a new run's folder is process 0's to judge and to make */
    } else if (has_ckpt) {
        session_close(r);
        return ddpm_error(
            DDPM_EINVAL,
            "%s: the run folder already holds a checkpoint; continue it with --resume or choose "
            "another --out",
            o->out_dir);
    }

    /* the data: its size and channels define the model unless given; a size given
     * with a model that cannot take it is refused before the data is read */
    if (!ck && cfg.model.image_size) {
        ddpm_unet_config probe = cfg.model;
        if (ddpm_unet_config_fit_data(&probe, cfg.model.image_size, 1) || ddpm_unet_config_check(&probe)) {
            rc = usage_error();
            session_close(r);
            return rc;
        }
    }
    ddpm_dataset_options dopt = {.size = cfg.model.image_size,
                                 .channels = cfg.model.in_channels,
                                 .strict = o->strict,
                                 .classes = o->classes || cfg.model.n_classes > 0,
                                 .warn = cb ? cb->warning : NULL,
                                 .warn_user = cb ? cb->ctx : NULL,
                                 .stop = o->stop};
    if ((rc = ddpm_dataset_open(&r->ds, o->data_dir, &dopt))) {
        ddpm_checkpoint_close(ck);
        session_close(r);
        return rc;
    }
    if (!ck && (ddpm_unet_config_fit_data(&cfg.model, ddpm_dataset_size(r->ds), ddpm_dataset_channels(r->ds)) ||
                ddpm_unet_config_check(&cfg.model))) {
        rc = usage_error();
        session_close(r);
        return rc;
    }
    char fingerprint[sizeof r->tr->state.data_fingerprint];
    ddpm_dataset_fingerprint(r->ds, fingerprint, sizeof fingerprint);
    /* A cosine decay ends at the run's final step: the stop step of --steps/--epochs
       (a --minutes limit may stop the run before it). It is fixed in the checkpoint,
       so a resumed run keeps the first session's schedule. */
    if (!ck && cfg.optim.lr_schedule == DDPM_LR_COSINE) {
        long final_step = given_stop_step(o, ddpm_dataset_count(r->ds), cfg.batch);
        if (!final_step)
            rc = ddpm_error(DDPM_EINVAL, "--lr-schedule cosine needs --steps or --epochs (its final step)");
        cfg.optim.lr_final_step = final_step;
    }
    if (o->classes && !ck)
        cfg.model.n_classes = ddpm_dataset_n_classes(r->ds);
    if (!rc)
        rc = ck ? ddpm_trainer_from_checkpoint(&r->tr, ck, o->micro_batch)
                : ddpm_trainer_create(&r->tr, &cfg, o->micro_batch);
    if (!rc && !ck)
        rc = ddpm_trainer_set_class_names(r->tr, ddpm_dataset_class_names(r->ds));
    for (int k = 0; !rc && ck && k < cfg.model.n_classes; k++) /* a resumed run must see the same classes */
        if (ddpm_dataset_n_classes(r->ds) != cfg.model.n_classes ||
            strcmp(ddpm_dataset_class_name(r->ds, k), ddpm_checkpoint_class_names(ck)[k]))
            rc = ddpm_error(DDPM_EINVAL, "%s: its class folders are not the %d classes of the run in %s",
                            o->data_dir, cfg.model.n_classes, o->out_dir);
    ddpm_checkpoint_close(ck);
    ddpm_train_state *state = r->tr ? &r->tr->state : NULL;
    if (!rc && r->resume && state->data_fingerprint[0] && !ddpm_dataset_fingerprint_matches(r->ds, state->data_fingerprint)) {
        /* which file: the run folder's data index names it (a run of an older ddpm has none) */
        char why[1200], index_path[3100];
        snprintf(index_path, sizeof index_path, "%s/%s", o->out_dir, DDPM_DATA_INDEX_FILE);
        if (ddpm_dataset_first_change(r->ds, index_path, why, sizeof why) != 0)
            snprintf(why, sizeof why, "%s: other images (now %s; the run's: %s)", o->data_dir, fingerprint,
                     state->data_fingerprint);
        if (!o->allow_data_change)
            rc = ddpm_error(DDPM_EINVAL,
                            "%s; not the data this run was trained on: pass --allow-data-change to continue with "
                            "it anyway",
                            why);
        else if (r->rank == 0)
            warn(cb, "%s; continuing with the data as it is now (--allow-data-change)", why);
    }
    if (!rc && r->resume && state->data_position >= ddpm_dataset_count(r->ds))
        state->data_position = 0; /* fewer images than before (--allow-data-change): next epoch's start */
    if (!rc && r->resume)
        rc = ddpm_dataset_seek(r->ds, state->data_epoch, state->data_position);
    if (!rc)
        snprintf(state->data_fingerprint, sizeof state->data_fingerprint, "%s", fingerprint);
    if (!rc) {
        const ddpm_run_config *c = &r->tr->cfg;
        size_t D = (size_t)c->model.in_channels * c->model.image_size * c->model.image_size;
        r->x0 = ddpm_malloc((size_t)c->batch * D, sizeof(float));
        r->labels = ddpm_malloc((size_t)c->batch, sizeof(int));
        if (!r->x0 || !r->labels)
            rc = DDPM_ENOMEM;
    }
    if (!rc && !o->allow_small_data)
        rc = check_plausible(r);
    if (!rc && o->eval_dir) { /* the same images every time (the run's seed), checked against the model */
        const ddpm_unet_config *m = &r->tr->cfg.model;
        r->eval_n = o->eval_n;
        rc = ddpm_eval_load(&r->eval_x0, &r->eval_n, NULL, o->eval_dir, m->image_size, m->in_channels, 256,
                            r->tr->cfg.seed, cb ? cb->warning : NULL, cb ? cb->ctx : NULL);
    }
    if (rc) {
        session_close(r);
        return rc;
    }
    /* The stop condition: the one given, else on resume the run's own, else one epoch. */
    ddpm_train_state *s = &r->tr->state;
    int given = o->steps > 0 || o->epochs > 0 || o->minutes > 0;
    if (!given && r->resume && (s->stop_step > 0 || s->stop_elapsed_seconds > 0)) {
        r->stop_step = s->stop_step;
        r->stop_elapsed = s->stop_elapsed_seconds;
    } else {
        r->stop_step = given_stop_step(o, ddpm_dataset_count(r->ds), r->tr->cfg.batch);
        r->stop_elapsed = o->minutes > 0 ? s->elapsed_seconds + o->minutes * 60 : 0;
    }
    s->stop_step = r->stop_step;
    s->stop_elapsed_seconds = r->stop_elapsed;
    return DDPM_OK;
}

/* Process 0 makes the run folder and opens the log, once every process has
 * loaded its data and trainer (so a process that cannot read the data leaves
 * no half-made run behind). */
static int session_files(run_session *r, const ddpm_run_callbacks *cb)
{
    const ddpm_run_options *o = r->o;
    if (r->rank > 0)
        return DDPM_OK;
    int rc = 0;
    if (r->lock_fd < 0 && !(rc = lock_and_clean(r, cb)) && !r->resume && ddpm_path_exists(r->ckpt_path))
        rc = ddpm_error(DDPM_EINVAL, "%s: another run saved a checkpoint here meanwhile", o->out_dir);
    /* Before anything is written: the folder takes a save (a test file through
     * every step of one) and has room for the next checkpoint beside the one on
     * disk; a fresh run also for the step-0 checkpoint it saves now. */
    if (!rc) {
        struct stat st;
        unsigned long long need = r->resume && stat(r->ckpt_path, &st) == 0
                                      ? (unsigned long long)st.st_size
                                      : 2 * checkpoint_bytes(r->tr);
        rc = ddpm_probe_folder(o->out_dir, need);
    }
    if (r->resume) {
        /* The log holds no step past the checkpoint: a run killed between a log
           line and its next save wrote lines that the resumed run writes again. */
        long step = r->tr->state.step;
        int n_cut = 0;
        if (!rc && !(rc = cut_log(r->log_path, step, &n_cut)) && n_cut)
            warn(cb, "%s: removed %d line%s past the checkpoint's step %ld", r->log_path, n_cut, n_cut == 1 ? "" : "s",
                 step);
    } else if (!rc) {
        /* A log without a checkpoint (a run stopped before its first save) is kept
           under another name, never cut: the new run starts a new log. */
        char aside[3100];
        if (!(rc = set_log_aside(r->log_path, aside, sizeof aside)) && aside[0])
            warn(cb, "%s: had no checkpoint beside it (a run stopped before its first save): kept as %s; starting "
                     "afresh",
                 r->log_path, aside);
    }
    if (!rc && o->preview_n > 0)
        rc = ddpm_mkdir_p(r->samples_dir);
    if (!rc && !(r->log = fopen(r->log_path, "a")))
        rc = ddpm_error(DDPM_EIO, "%s: cannot open for writing: %s", r->log_path, strerror(errno));
    /* A fresh run saves its step 0 at once, so that the folder can always be resumed. */
    if (!rc && !r->resume)
        rc = ddpm_trainer_save(r->tr, r->ckpt_path);
    /* the files of the data as this session reads them, to name a changed one later */
    if (!rc) {
        char index_path[3100];
        snprintf(index_path, sizeof index_path, "%s/%s", o->out_dir, DDPM_DATA_INDEX_FILE);
        rc = ddpm_dataset_write_index(r->ds, index_path);
    }
    return rc;
}

/* Every process learns whether any failed: rc if this one did, DDPM_EPEER if
 * only another did, 0 if none. One float summed; a no-op for one process. */
static int agree(int rc)
{
    float failed = rc != 0;
    int rc_sum = ddpm_dist_sum(&failed, 1);
    if (rc)
        return rc;
    if (rc_sum)
        return rc_sum;
    return failed > 0 ? ddpm_error(DDPM_EPEER, "stopped: another process of the run failed") : DDPM_OK;
}

/* The checkpoint, with the data position read from the dataset that owns it. */
static int session_save(run_session *r)
{
    if (r->rank > 0)
        return DDPM_OK;
    r->tr->state.data_epoch = ddpm_dataset_epoch(r->ds);
    r->tr->state.data_position = ddpm_dataset_position(r->ds);
    /* hashed as written when a preview may name it: the file is not read back */
    return ddpm_trainer_save_sha256(r->tr, r->ckpt_path, r->o->preview_n > 0 ? r->ckpt_sha256 : NULL);
}

/* One log.jsonl line (the file's format: docs/design.md, Files on disk). The
 * line is built first, so that the library's only stdio output calls are
 * writes to files. */
static int log_line(run_session *r, const ddpm_run_progress *p, double elapsed_seconds)
{
    if (r->rank > 0)
        return DDPM_OK;
    char line[512];
    int n = snprintf(line, sizeof line,
                     "{\"step\":%ld,\"loss\":%.6g,\"lr\":%.6g,\"grad_norm\":%.6g,\"images_per_sec\":%.2f,"
                     "\"epoch\":%.4f,\"elapsed\":%.2f}\n",
                     p->step, p->loss, p->lr, p->grad_norm, p->images_per_sec, p->epoch, elapsed_seconds);
    if (n < 0 || (size_t)n >= sizeof line || fwrite(line, 1, (size_t)n, r->log) != (size_t)n ||
        fflush(r->log))
        return ddpm_error(DDPM_EIO, "%s: cannot write: %s", r->log_path, strerror(errno));
    return DDPM_OK;
}

/* Held-out L_simple (and with eval_mc the Monte Carlo bound) of the EMA weights,
 * as one log.jsonl line. Uses the training workspace without dropout; its own
 * Philox streams leave the trainer's untouched, so a run with evaluations trains
 * exactly as one without. Rank 0 alone evaluates and writes. */
static int session_eval(run_session *r)
{
    if (r->rank > 0)
        return DDPM_OK;
    const ddpm_run_options *o = r->o;
    ddpm_trainer *tr = r->tr;
    const ddpm_unet_config *m = &tr->cfg.model;
    size_t D = (size_t)m->in_channels * m->image_size * m->image_size;
    /* the evaluator takes eps_theta: the model converts an x0, v or mu output (predict.h) */
    ddpm_model model;
    ddpm_model_from_trainer(&model, tr, DDPM_WEIGHTS_EMA);
    ddpm_estimate ls;
    int rc = ddpm_eval_l_simple(&ls, r->eval_x0, r->eval_n, D, &tr->sched, tr->micro_batch, tr->cfg.seed,
                                m->learn_sigma, ddpm_model_eps, &model, NULL, NULL);
    char line[512];
    int n = rc ? 0
               : snprintf(line, sizeof line, "{\"step\":%ld,\"eval_n\":%d,\"eval_l_simple\":%.6g,"
                                             "\"eval_l_simple_stderr\":%.3g",
                          tr->state.step, r->eval_n, ls.mean, ls.se);
    if (!rc && o->eval_mc > 0) {
        ddpm_bound_config bc;
        ddpm_bound_config_default(&bc);
        bc.mc = o->eval_mc;
        bc.batch = tr->micro_batch; /* the workspace's size */
        bc.seed = tr->cfg.seed;
        bc.learned_var = m->learn_sigma; /* a learned-variance model's bound is with its variances */
        if (m->learn_sigma)
            bc.var = DDPM_VAR_LEARNED;
        ddpm_bound_result br;
        rc = ddpm_bound(&br, r->eval_x0, r->eval_n, D, &tr->sched, &bc, ddpm_model_eps, &model, NULL, NULL);
        if (!rc)
            n += snprintf(line + n, sizeof line - (size_t)n, ",\"eval_mc\":%d,\"eval_bpd\":%.6g,\"eval_bpd_stderr\":%.3g",
                          o->eval_mc, br.total.mean, br.total.se);
        ddpm_bound_result_free(&br);
    }
    ddpm_model_close(&model);
    if (rc)
        return rc;
    n += snprintf(line + n, sizeof line - (size_t)n, "}\n");
    if ((size_t)n >= sizeof line || fwrite(line, 1, (size_t)n, r->log) != (size_t)n || fflush(r->log))
        return ddpm_error(DDPM_EIO, "%s: cannot write: %s", r->log_path, strerror(errno));
    return DDPM_OK;
}

/* FID of o->eval_fid_n samples of the EMA weights against the reference
 * statistics, as one log.jsonl line. The samples are `ddpm sample`'s with the
 * run's seed: the same noise at every evaluation, and the images `ddpm sample
 * --checkpoint RUN_DIR --seed SEED --n N` draws from a checkpoint of that step.
 * Uses the training workspace and its own Philox stream: the training is the
 * same with or without it. Rank 0 alone evaluates and writes. */
static int session_fid(run_session *r, const ddpm_run_callbacks *cb)
{
    ddpm_trainer *tr = r->tr;
    if (r->rank > 0 || !r->fid_net)
        return DDPM_OK;
    double t0 = ddpm_now_seconds();
    ddpm_model model;
    ddpm_model_from_trainer(&model, tr, DDPM_WEIGHTS_EMA);
    ddpm_model_fid_config c;
    ddpm_model_fid_config_default(&c, &model);
    c.n = r->o->eval_fid_n;
    c.batch = tr->micro_batch; /* the workspace's size */
    c.seed = tr->cfg.seed;
    double fid = 0;
    int rc = ddpm_model_fid(&fid, &model, &c, r->fid_net, &r->fid_ref, NULL);
    ddpm_model_close(&model);
    if (rc)
        return rc;
    r->fid_step = tr->state.step;
    char line[256];
    int n = snprintf(line, sizeof line, "{\"step\":%ld,\"eval_fid_n\":%d,\"eval_fid\":%.10g}\n", tr->state.step,
                     c.n, fid);
    if (n < 0 || (size_t)n >= sizeof line || fwrite(line, 1, (size_t)n, r->log) != (size_t)n || fflush(r->log))
        return ddpm_error(DDPM_EIO, "%s: cannot write: %s", r->log_path, strerror(errno));
    if (cb->fid)
        cb->fid(cb->ctx, tr->state.step, c.n, fid, ddpm_now_seconds() - t0);
    return DDPM_OK;
}

/* A grid from the EMA weights (DDIM at eta 1, or the preview sampler), with the same noise every time so that
 * previews of one run are comparable. Uses the training workspace. Its recipe
 * names the checkpoint by hash when the checkpoint on disk holds these weights
 * (saved_now), else by path alone (the weights of a step between checkpoints). */
static int session_preview(run_session *r, char *path, size_t size, int saved_now)
{
    const ddpm_run_options *o = r->o;
    ddpm_trainer *tr = r->tr;
    if (r->rank > 0)
        return DDPM_OK;
    snprintf(path, size, "%s/step_%07ld.png", r->samples_dir, tr->state.step);
    ddpm_sample_files_config c;
    ddpm_sample_files_config_default(&c);
    c.n = o->preview_n;
    c.batch = tr->micro_batch; /* the workspace's size */
    c.seed = tr->cfg.seed;
    c.sampler.steps = o->preview_steps < tr->cfg.timesteps ? o->preview_steps : tr->cfg.timesteps;
    c.sampler.eta = 1; /* see ddpm sample --help: cleaner than eta 0 early in training */
    c.sampler.kind = o->preview_sampler;
    c.sampler.spacing = o->preview_spacing;
    c.grid_path = path;
    int n_classes = tr->cfg.model.n_classes;
    if (n_classes > 0 && n_classes <= o->preview_n) { /* one row per class, conditional (W = 1) */
        c.grid_by_class = 1;
        c.n = o->preview_n / n_classes;
    }
    ddpm_recipe recipe;
    ddpm_recipe_init(&recipe);
    snprintf(recipe.version, sizeof recipe.version, "%s", DDPM_VERSION);
    snprintf(recipe.checkpoint, sizeof recipe.checkpoint, "%.1023s", r->ckpt_path);
    recipe.step = tr->state.step;
    recipe.ema = 1;
    if (saved_now) /* the bytes session_save wrote at this step */
        snprintf(recipe.checkpoint_sha256, sizeof recipe.checkpoint_sha256, "%s", r->ckpt_sha256);
    int rc = DDPM_OK;
    c.recipe = &recipe;
    ddpm_model model;
    ddpm_model_from_trainer(&model, tr, DDPM_WEIGHTS_EMA);
    if (!rc)
        rc = ddpm_sample_files(&model, &c, NULL, NULL);
    ddpm_model_close(&model);
    return rc;
}

/* The images of every batch this process computes: an equal share of the
 * global batch, in its global order (rank r: [B r / N, B (r + 1) / N)). */
static void share_of(const run_session *r, int B, int *first, int *count)
{
    *first = (int)((long)B * r->rank / r->n_ranks);
    *count = (int)((long)B * (r->rank + 1) / r->n_ranks) - *first;
}

int ddpm_run(const ddpm_run_options *o, const ddpm_run_callbacks *cb, ddpm_run_summary *summary)
{
    static const ddpm_run_callbacks none = {0};
    if (!cb)
        cb = &none;
    run_session r;
    int rc = session_open(&r, o, cb), opened = rc == DDPM_OK; /* a failed open has closed itself */
    if (ddpm_dist_size() > 1) {
        /* every process must reach the first step, or none */
        if ((rc = agree(rc)) == DDPM_OK)
            rc = agree(session_files(&r, cb));
    } else if (!rc) {
        rc = session_files(&r, cb);
    }
    if (rc) {
        if (opened)
            session_close(&r);
        return rc;
    }
    ddpm_trainer *tr = r.tr;
    const ddpm_run_config *c = &tr->cfg;
    int B = c->batch, count = ddpm_dataset_count(r.ds), share_first, share_count;
    share_of(&r, B, &share_first, &share_count);
    if (cb->started) {
        ddpm_run_start s = {count,     c->model.in_channels, c->model.image_size, tr->net->n_params, B,
                            r.resume, tr->state.step,       r.stop_step,         r.n_ranks,
                            tr->micro_batch, &c->model,  c->precision};
        cb->started(cb->ctx, &s);
    }
    ddpm_rng data_rng;
    ddpm_rng_init(&data_rng, c->seed, DDPM_STREAM_DATA);
    long start_step = tr->state.step, last_saved = tr->state.step, stop_step = r.stop_step;
    double t_start = ddpm_now_seconds(), t_last = t_start, elapsed_before = tr->state.elapsed_seconds;
    double loss_sum = 0;
    long loss_n = 0, imgs_since = 0;
    int interrupted = 0, diverged = 0, stop_agreed = 0, time_up_agreed = 0;
    ddpm_step_stats st = {0};
    char preview[4096] = "";
    float *votes = tr->grads + tr->net->n_params; /* the scalars after the gradients */
    for (;;) {
        if (stop_step && tr->state.step >= stop_step)
            break;
        /* The other stop conditions are each process's own (a clock, a signal):
           with several processes they are voted on in the step's sum and take
           effect after that step, on every process at once. */
        int time_up = r.stop_elapsed > 0 && elapsed_before + (ddpm_now_seconds() - t_start) >= r.stop_elapsed;
        int stop = o->stop && *o->stop;
        if (r.n_ranks == 1 ? time_up : time_up_agreed)
            break;
        if (r.n_ranks == 1 ? stop : stop_agreed) {
            interrupted = 1;
            break;
        }
        if (rc && r.n_ranks == 1)
            break;
        /* every process fills the whole batch (a pure function of the data
           position) and computes its share of it */
        if (!rc)
            rc = ddpm_dataset_next_batch_labeled(r.ds, r.x0, r.labels, B, &data_rng, c->flip);
        if (!rc)
            ddpm_trainer_accumulate_class(tr, r.x0, c->model.n_classes > 0 ? r.labels : NULL, share_first,
                                          share_count);
        else
            memset(tr->grads, 0, ddpm_trainer_reduce_size(tr) * sizeof(float));
        votes[DDPM_TRAIN_FAILED] = rc != 0;
        votes[DDPM_TRAIN_STOP] = (float)stop;
        votes[DDPM_TRAIN_TIME_UP] = (float)time_up;
        /* gradients, the loss, the votes and (importance sampling) each image's
           term in its own slot: one all-reduce */
        int rc_sum = ddpm_dist_sum(tr->grads, ddpm_trainer_reduce_size(tr));
        if (rc || rc_sum) {
            rc = rc ? rc : rc_sum;
            break;
        }
        if (votes[DDPM_TRAIN_FAILED] > 0) {
            rc = ddpm_error(DDPM_EPEER, "stopped: another process of the run failed");
            break;
        }
        stop_agreed = votes[DDPM_TRAIN_STOP] > 0;
        time_up_agreed = votes[DDPM_TRAIN_TIME_UP] > 0;
        rc = ddpm_trainer_apply(tr, &st);
        if (rc == DDPM_ENAN)
            diverged = 1;
        if (rc)
            break;
        loss_sum += st.loss;
        loss_n++;
        imgs_since += B;
        long step = tr->state.step;
        double t = ddpm_now_seconds();
        tr->state.elapsed_seconds = elapsed_before + (t - t_start);
        /* Below, only process 0 writes; if it fails, the others learn it in the
           next step's sum (or stop with it at the last step). */
        if (step % o->log_every == 0 || (stop_step && step == stop_step)) {
            ddpm_run_progress p = {.step = step,
                                   .stop_step = stop_step,
                                   .loss = loss_sum / loss_n,
                                   .lr = st.lr,
                                   .grad_norm = st.grad_norm,
                                   .images_per_sec = imgs_since / (t - t_last),
                                   .epoch = (double)step * B / count,
                                   .session_seconds = t - t_start,
                                   .eta_seconds = -1};
            if ((rc = log_line(&r, &p, tr->state.elapsed_seconds)))
                continue;
            if (stop_step)
                p.eta_seconds = (stop_step - step) * B / p.images_per_sec;
            if (r.stop_elapsed > 0) {
                double left = r.stop_elapsed - tr->state.elapsed_seconds;
                p.eta_seconds = p.eta_seconds >= 0 && p.eta_seconds < left ? p.eta_seconds : left;
            }
            if (cb->progress)
                cb->progress(cb->ctx, &p);
            loss_sum = 0, loss_n = 0, imgs_since = 0;
            t_last = t;
        }
        if (o->save_every > 0 && step % o->save_every == 0) {
            if ((rc = session_save(&r)))
                continue;
            last_saved = step;
        }
        if (o->sample_every > 0 && o->preview_n > 0 && step % o->sample_every == 0)
            rc = session_preview(&r, preview, sizeof preview, last_saved == step);
        if (!rc && r.eval_x0 && o->eval_every > 0 && step % o->eval_every == 0)
            rc = session_eval(&r);
        if (!rc && o->eval_every > 0 && step % o->eval_every == 0)
            rc = session_fid(&r, cb);
    }
    if (diverged) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ddpm_last_error());
        if (last_saved > 0 || r.resume)
            ddpm_error(DDPM_ENAN, "%s; stopped, the last good checkpoint (step %ld) is kept in %s", msg,
                       last_saved, r.ckpt_path);
        else
            ddpm_error(DDPM_ENAN, "%s; stopped before any checkpoint was saved (try a lower --lr)", msg);
        rc = DDPM_ENAN;
    } else if (!rc) {
        if (r.rank == 0 && (tr->state.step > last_saved || !ddpm_path_exists(r.ckpt_path)))
            rc = session_save(&r);
        /* the FID of the final weights, unless the last step had one (not after
           an interrupt: the user asked to stop) */
        if (!rc && !interrupted && tr->state.step > start_step && r.fid_step != tr->state.step)
            rc = session_fid(&r, cb);
        preview[0] = '\0';
        if (!rc && o->preview_n > 0 && tr->state.step > start_step)
            rc = session_preview(&r, preview, sizeof preview, 1);
        if (!rc && summary) {
            summary->step = tr->state.step;
            summary->loss = st.loss;
            summary->interrupted = interrupted;
            summary->elapsed_seconds = tr->state.elapsed_seconds;
            snprintf(summary->checkpoint, sizeof summary->checkpoint, "%s", r.ckpt_path);
            snprintf(summary->preview, sizeof summary->preview, "%s", preview);
        }
    }
    session_close(&r);
    return rc;
}
