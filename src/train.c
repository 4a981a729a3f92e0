#include "ddpm/train.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ddpm/dataset.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/ops.h"
#include "ddpm/optim.h"
#include "ddpm/sample.h"

/* ---------------------------------------------------------------- trainer */

void ddpm_trainer_free(ddpm_trainer *tr)
{
    if (!tr)
        return;
    ddpm_unet_workspace_free(tr->ws);
    ddpm_unet_free(tr->net);
    ddpm_schedule_free(&tr->sched);
    free(tr->params);
    free(tr->grads);
    free(tr->adam_m);
    free(tr->adam_v);
    free(tr->ema);
    free(tr->x_t);
    free(tr->eps);
    free(tr->eps_pred);
    free(tr->d_eps);
    free(tr->t);
    free(tr);
}

static int trainer_alloc(ddpm_trainer **out, const ddpm_run_config *cfg)
{
    *out = NULL;
    ddpm_trainer *tr = ddpm_calloc(1, sizeof *tr);
    if (!tr)
        return DDPM_ENOMEM;
    tr->cfg = *cfg;
    int rc = ddpm_unet_create(&tr->net, &cfg->model);
    if (!rc)
        rc = ddpm_schedule_init(&tr->sched, cfg->schedule, cfg->timesteps, cfg->beta_start, cfg->beta_end);
    if (!rc && (cfg->batch < 1 || cfg->batch > 65536))
        rc = ddpm_error(DDPM_EINVAL, "batch must be in 1..65536, got %d", cfg->batch);
    if (!rc)
        rc = ddpm_unet_workspace_create(&tr->ws, tr->net, cfg->batch, 1);
    if (rc) {
        ddpm_trainer_free(tr);
        return rc;
    }
    size_t n = tr->net->n_params;
    size_t D = (size_t)cfg->model.in_channels * cfg->model.image_size * cfg->model.image_size;
    size_t BD = (size_t)cfg->batch * D;
    tr->params = ddpm_calloc(n, sizeof(float));
    tr->grads = ddpm_calloc(n, sizeof(float));
    tr->adam_m = ddpm_calloc(n, sizeof(float));
    tr->adam_v = ddpm_calloc(n, sizeof(float));
    tr->ema = ddpm_calloc(n, sizeof(float));
    tr->x_t = ddpm_calloc(BD, sizeof(float));
    tr->eps = ddpm_calloc(BD, sizeof(float));
    tr->eps_pred = ddpm_calloc(BD, sizeof(float));
    tr->d_eps = ddpm_calloc(BD, sizeof(float));
    tr->t = ddpm_calloc((size_t)cfg->batch, sizeof(int));
    if (!tr->params || !tr->grads || !tr->adam_m || !tr->adam_v || !tr->ema || !tr->x_t || !tr->eps ||
        !tr->eps_pred || !tr->d_eps || !tr->t) {
        ddpm_trainer_free(tr);
        return DDPM_ENOMEM;
    }
    ddpm_rng_init(&tr->noise_rng, cfg->seed, DDPM_STREAM_NOISE);
    ddpm_rng_init(&tr->dropout_rng, cfg->seed, DDPM_STREAM_DROPOUT);
    *out = tr;
    return DDPM_OK;
}

int ddpm_trainer_create(ddpm_trainer **out, const ddpm_run_config *cfg)
{
    int rc = trainer_alloc(out, cfg);
    if (rc)
        return rc;
    ddpm_trainer *tr = *out;
    ddpm_unet_init_params(tr->net, tr->params, cfg->seed);
    memcpy(tr->ema, tr->params, tr->net->n_params * sizeof(float));
    return DDPM_OK;
}

int ddpm_trainer_from_checkpoint(ddpm_trainer **out, const ddpm_checkpoint *ck)
{
    int rc = trainer_alloc(out, ddpm_checkpoint_config(ck));
    if (rc)
        return rc;
    ddpm_trainer *tr = *out;
    const char *path = ddpm_checkpoint_path(ck);
    if (!ddpm_checkpoint_has(ck, tr->net, "adam_m.") || !ddpm_checkpoint_has(ck, tr->net, "adam_v.") ||
        !ddpm_checkpoint_has(ck, tr->net, "ema."))
        rc = ddpm_error(DDPM_EFORMAT, "%s: holds no optimizer state (adam_m, adam_v, ema): cannot resume from it",
                        path);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "", tr->params);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "ema.", tr->ema);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "adam_m.", tr->adam_m);
    if (!rc)
        rc = ddpm_checkpoint_read(ck, tr->net, "adam_v.", tr->adam_v);
    if (rc) {
        ddpm_trainer_free(tr);
        *out = NULL;
        return rc;
    }
    tr->state = *ddpm_checkpoint_state(ck);
    tr->noise_rng.counter = tr->state.noise_counter;
    tr->dropout_rng.counter = tr->state.dropout_counter;
    return DDPM_OK;
}

int ddpm_trainer_step(ddpm_trainer *tr, const float *x0, ddpm_step_stats *stats)
{
    const ddpm_run_config *c = &tr->cfg;
    int B = c->batch;
    size_t D = (size_t)c->model.in_channels * c->model.image_size * c->model.image_size, BD = (size_t)B * D;
    size_t n = tr->net->n_params;
    /* Algorithm 1: t uniform in {1..T} (index t-1), eps ~ N(0, I) */
    for (int b = 0; b < B; b++)
        tr->t[b] = (int)ddpm_rng_below(&tr->noise_rng, (uint64_t)c->timesteps);
    ddpm_rng_normal_fill(&tr->noise_rng, tr->eps, BD);
    ddpm_q_sample(tr->x_t, x0, tr->eps, tr->t, B, D, &tr->sched);
    ddpm_unet_forward(tr->net, tr->params, tr->ws, tr->eps_pred, tr->x_t, tr->t, B, &tr->dropout_rng);
    double loss = ddpm_mse_forward(tr->eps_pred, tr->eps, BD);
    if (stats)
        stats->loss = loss;
    if (!isfinite(loss))
        return ddpm_error(DDPM_ENAN, "loss became %s at step %ld", isnan(loss) ? "NaN" : "infinite",
                          tr->state.step + 1);
    memset(tr->d_eps, 0, BD * sizeof(float));
    ddpm_mse_backward(tr->d_eps, tr->eps_pred, tr->eps, BD);
    memset(tr->grads, 0, n * sizeof(float));
    ddpm_unet_backward(tr->net, tr->params, tr->grads, tr->ws, tr->d_eps, B);
    double norm = ddpm_clip_global_norm(tr->grads, n, c->optim.clip);
    if (!isfinite(norm))
        return ddpm_error(DDPM_ENAN, "gradient norm became %s at step %ld", isnan(norm) ? "NaN" : "infinite",
                          tr->state.step + 1);
    long step = tr->state.step + 1;
    float lr = ddpm_lr_at(&c->optim, step);
    ddpm_adam_step(tr->params, tr->adam_m, tr->adam_v, tr->grads, n, step, lr, c->optim.beta1, c->optim.beta2,
                   c->optim.eps);
    if (c->optim.ema_decay > 0)
        ddpm_ema_update(tr->ema, tr->params, n, ddpm_ema_decay_at(c->optim.ema_decay, tr->state.step));
    else
        memcpy(tr->ema, tr->params, n * sizeof(float));
    tr->state.step = step;
    tr->state.noise_counter = tr->noise_rng.counter;
    tr->state.dropout_counter = tr->dropout_rng.counter;
    if (stats) {
        stats->grad_norm = norm;
        stats->lr = lr;
    }
    return DDPM_OK;
}

int ddpm_trainer_save(const ddpm_trainer *tr, const char *path)
{
    return ddpm_checkpoint_save(path, &tr->cfg, &tr->state, tr->net, tr->params, tr->ema, tr->adam_m,
                                tr->adam_v);
}

/* ---------------------------------------------------------------- the command */

void ddpm_train_options_default(ddpm_train_options *o)
{
    memset(o, 0, sizeof *o);
    ddpm_run_config_default(&o->cfg);
    o->cfg.model.image_size = 0;
    o->cfg.model.in_channels = 0;
    o->out_dir = "runs/ddpm";
    o->save_every = 500;
    o->sample_every = 0;
    o->log_every = 50;
    o->preview_n = 64;
    o->preview_steps = 50;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            return DDPM_OK;
        return ddpm_error(DDPM_EIO, "%s: exists and is not a folder", path);
    }
    return ddpm_error(DDPM_EIO, "%s: cannot create the folder: %s", path, strerror(errno));
}

/* mkdir -p */
static int make_dirs(const char *path)
{
    char buf[4096];
    if (strlen(path) >= sizeof buf)
        return ddpm_error(DDPM_EINVAL, "%s: path too long", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (!file_exists(buf)) {
                int rc = make_dir(buf);
                if (rc)
                    return rc;
            }
            *p = '/';
        }
    }
    return make_dir(buf);
}

static void format_duration(char *buf, size_t size, double seconds)
{
    if (!(seconds >= 0) || seconds > 1e8) {
        snprintf(buf, size, "?");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

typedef struct {
    const ddpm_trainer *tr;
    ddpm_unet_eps_ctx eps;
} preview_ctx;

/* A DDIM grid from the EMA weights, with the same noise every time so that
 * previews of one run are comparable. Uses the training workspace. */
static int write_preview(ddpm_trainer *tr, const ddpm_train_options *o, const char *path)
{
    const ddpm_run_config *c = &tr->cfg;
    int n = o->preview_n, C = c->model.in_channels, S = c->model.image_size;
    size_t D = (size_t)C * S * S;
    int steps = o->preview_steps < c->timesteps ? o->preview_steps : c->timesteps;
    float *x = ddpm_malloc((size_t)n * D, sizeof(float));
    float *scratch = ddpm_malloc(4 * (size_t)c->batch * D, sizeof(float));
    int rc = x && scratch ? DDPM_OK : DDPM_ENOMEM;
    ddpm_sampler_config sc;
    ddpm_sampler_config_default(&sc);
    sc.kind = DDPM_SAMPLER_DDIM;
    sc.steps = steps;
    sc.eta = 1; /* see ddpm sample --help: cleaner than eta 0 early in training */
    ddpm_rng rng;
    ddpm_rng_init(&rng, c->seed, DDPM_STREAM_SAMPLE);
    ddpm_unet_eps_ctx ctx = {tr->net, tr->ema, tr->ws};
    for (int first = 0; !rc && first < n; first += c->batch) {
        int B = n - first < c->batch ? n - first : c->batch;
        rc = ddpm_sample(x + (size_t)first * D, scratch, B, D, first, &tr->sched, &sc, ddpm_unet_eps, &ctx, &rng,
                         NULL, NULL);
    }
    int nrow = (int)ceil(sqrt((double)n));
    if (!rc)
        rc = ddpm_image_save_grid(path, x, n, C, S, nrow, 2, 255);
    free(x);
    free(scratch);
    return rc;
}

static void print_warning(void *user, const char *line)
{
    (void)user;
    fprintf(stderr, "ddpm: warning: %s\n", line);
}

static void print_summary(const ddpm_trainer *tr, double loss, const char *ckpt_path, int interrupted)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return;
    cJSON_AddNumberToObject(o, "step", (double)tr->state.step);
    cJSON_AddNumberToObject(o, "loss", loss);
    cJSON_AddStringToObject(o, "checkpoint", ckpt_path);
    cJSON_AddBoolToObject(o, "interrupted", interrupted);
    cJSON_AddNumberToObject(o, "elapsed", tr->state.elapsed_seconds);
    char *text = cJSON_PrintUnformatted(o);
    if (text)
        printf("%s\n", text);
    free(text);
    cJSON_Delete(o);
}

int ddpm_train_run(const ddpm_train_options *o)
{
    char ckpt_path[4096], log_path[4096], samples_dir[4096], buf[8192];
    if (strlen(o->out_dir) > 3000)
        return ddpm_error(DDPM_EINVAL, "--out: path too long");
    snprintf(ckpt_path, sizeof ckpt_path, "%s/%s", o->out_dir, DDPM_CHECKPOINT_FILE);
    snprintf(log_path, sizeof log_path, "%s/%s", o->out_dir, DDPM_LOG_FILE);
    snprintf(samples_dir, sizeof samples_dir, "%s/%s", o->out_dir, DDPM_SAMPLES_DIR);
    int rc;
    ddpm_checkpoint *ck = NULL;
    ddpm_run_config cfg = o->cfg;
    if (o->resume) {
        if (!file_exists(ckpt_path))
            return ddpm_error(DDPM_EIO, "%s: no checkpoint to resume from", ckpt_path);
        if ((rc = ddpm_checkpoint_open(&ck, ckpt_path)))
            return rc;
        cfg = *ddpm_checkpoint_config(ck);
    } else if (file_exists(ckpt_path)) {
        return ddpm_error(DDPM_EINVAL,
                          "%s: the run folder already holds a checkpoint; continue it with --resume or choose "
                          "another --out",
                          o->out_dir);
    } else if (file_exists(log_path)) {
        return ddpm_error(DDPM_EINVAL, "%s: the run folder already holds a %s; choose another --out", o->out_dir,
                          DDPM_LOG_FILE);
    }

    /* the data: its size and channels define the model unless given */
    ddpm_dataset_options dopt = {.size = cfg.model.image_size, .channels = cfg.model.in_channels,
                                 .strict = o->strict, .warn = o->quiet ? NULL : print_warning};
    ddpm_dataset *ds = NULL;
    if ((rc = ddpm_dataset_open(&ds, o->data_dir, &dopt))) {
        ddpm_checkpoint_close(ck);
        return rc;
    }
    cfg.model.image_size = ddpm_dataset_size(ds);
    cfg.model.in_channels = ddpm_dataset_channels(ds);
    long stop_step = o->steps > 0 ? o->steps : 0;
    if (o->epochs > 0) {
        long e = (long)ceil(o->epochs * ddpm_dataset_count(ds) / cfg.batch);
        stop_step = stop_step ? (e < stop_step ? e : stop_step) : e;
    }
    /* A cosine decay ends at the run's final step: the stop step of --steps/--epochs
       (a --minutes limit may stop the run before it). It is fixed in the checkpoint,
       so a resumed run keeps the first session's schedule. */
    rc = DDPM_OK;
    if (!ck && cfg.optim.lr_schedule == DDPM_LR_COSINE) {
        if (!stop_step)
            rc = ddpm_error(DDPM_EINVAL, "--lr-schedule cosine needs --steps or --epochs (its final step)");
        cfg.optim.lr_final_step = stop_step;
    }
    ddpm_trainer *tr = NULL;
    if (!rc)
        rc = ck ? ddpm_trainer_from_checkpoint(&tr, ck) : ddpm_trainer_create(&tr, &cfg);
    ddpm_checkpoint_close(ck);
    if (!rc && o->resume)
        rc = ddpm_dataset_seek(ds, tr->state.data_epoch, tr->state.data_position);
    if (!rc)
        rc = make_dirs(o->out_dir);
    if (!rc && o->preview_n > 0)
        rc = make_dir(samples_dir);
    FILE *log = NULL;
    if (!rc && !(log = fopen(log_path, "a")))
        rc = ddpm_error(DDPM_EIO, "%s: cannot open for writing: %s", log_path, strerror(errno));
    if (rc) {
        ddpm_trainer_free(tr);
        ddpm_dataset_close(ds);
        return rc;
    }

    const ddpm_run_config *c = &tr->cfg;
    int B = c->batch, count = ddpm_dataset_count(ds);
    size_t D = (size_t)c->model.in_channels * c->model.image_size * c->model.image_size;
    float *x0 = ddpm_malloc((size_t)B * D, sizeof(float));
    if (!x0) {
        fclose(log);
        ddpm_trainer_free(tr);
        ddpm_dataset_close(ds);
        return DDPM_ENOMEM;
    }
    int tty = isatty(fileno(stderr));
    if (!o->quiet) {
        fprintf(stderr, "ddpm: %s%s: %d images %dx%dx%d, model %zu parameters, batch %d, %d threads\n",
                o->resume ? "resuming " : "training on ", o->data_dir, count, c->model.in_channels,
                c->model.image_size, c->model.image_size, tr->net->n_params, B, omp_get_max_threads());
        if (o->resume)
            fprintf(stderr, "ddpm: continuing from step %ld\n", tr->state.step);
    }
    ddpm_rng data_rng;
    ddpm_rng_init(&data_rng, c->seed, DDPM_STREAM_DATA);
    long start_step = tr->state.step, last_saved = tr->state.step;
    double t_start = now_seconds(), t_last = t_start, elapsed_before = tr->state.elapsed_seconds;
    double loss_sum = 0;
    long loss_n = 0, imgs_since = 0;
    int interrupted = 0, diverged = 0;
    ddpm_step_stats st = {0};
    while (!rc) {
        if (stop_step && tr->state.step >= stop_step)
            break;
        if (o->minutes > 0 && now_seconds() - t_start >= o->minutes * 60)
            break;
        if (o->stop && *o->stop) {
            interrupted = 1;
            break;
        }
        if ((rc = ddpm_dataset_next_batch(ds, x0, B, &data_rng, c->flip)))
            break;
        rc = ddpm_trainer_step(tr, x0, &st);
        if (rc == DDPM_ENAN) {
            diverged = 1;
            break;
        }
        if (rc)
            break;
        tr->state.data_epoch = ddpm_dataset_epoch(ds);
        tr->state.data_position = ddpm_dataset_position(ds);
        loss_sum += st.loss;
        loss_n++;
        imgs_since += B;
        long step = tr->state.step;
        double t = now_seconds();
        tr->state.elapsed_seconds = elapsed_before + (t - t_start);
        int log_now = step % o->log_every == 0 || (stop_step && step == stop_step);
        if (log_now) {
            double ips = imgs_since / (t - t_last);
            fprintf(log,
                    "{\"step\":%ld,\"loss\":%.6g,\"lr\":%.6g,\"grad_norm\":%.6g,\"images_per_sec\":%.2f,"
                    "\"epoch\":%.4f,\"elapsed\":%.2f}\n",
                    step, loss_sum / loss_n, (double)st.lr, st.grad_norm, ips, (double)step * B / count,
                    tr->state.elapsed_seconds);
            fflush(log);
            if (!o->quiet) {
                double eta = -1;
                if (stop_step)
                    eta = (stop_step - step) * B / ips;
                if (o->minutes > 0) {
                    double left = o->minutes * 60 - (t - t_start);
                    eta = eta >= 0 && eta < left ? eta : left;
                }
                char eta_s[32], el_s[32];
                format_duration(eta_s, sizeof eta_s, eta);
                format_duration(el_s, sizeof el_s, t - t_start);
                char total[32] = "";
                if (stop_step)
                    snprintf(total, sizeof total, "/%ld", stop_step);
                fprintf(stderr, "%sstep %ld%s  loss %.4f  %.1f img/s  elapsed %s  ETA %s%s", tty ? "\r\033[K" : "",
                        step, total, loss_sum / loss_n, ips, el_s, eta_s, tty ? "" : "\n");
                fflush(stderr);
            }
            loss_sum = 0, loss_n = 0, imgs_since = 0;
            t_last = t;
        }
        if (o->save_every > 0 && step % o->save_every == 0) {
            if ((rc = ddpm_trainer_save(tr, ckpt_path)))
                break;
            last_saved = step;
        }
        if (o->sample_every > 0 && o->preview_n > 0 && step % o->sample_every == 0) {
            snprintf(buf, sizeof buf, "%s/step_%07ld.png", samples_dir, step);
            if ((rc = write_preview(tr, o, buf)))
                break;
        }
    }
    if (tty && !o->quiet)
        fputc('\n', stderr);
    if (diverged) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ddpm_last_error());
        if (last_saved > 0 || o->resume)
            ddpm_error(DDPM_ENAN, "%s; stopped, the last good checkpoint (step %ld) is kept in %s", msg, last_saved,
                       ckpt_path);
        else
            ddpm_error(DDPM_ENAN, "%s; stopped before any checkpoint was saved (try a lower --lr)", msg);
        rc = DDPM_ENAN;
    } else if (!rc) {
        if (tr->state.step > last_saved || !file_exists(ckpt_path))
            rc = ddpm_trainer_save(tr, ckpt_path);
        if (!rc && o->preview_n > 0 && tr->state.step > start_step) {
            snprintf(buf, sizeof buf, "%s/step_%07ld.png", samples_dir, tr->state.step);
            rc = write_preview(tr, o, buf);
            if (!rc && !o->quiet)
                fprintf(stderr, "ddpm: preview grid (EMA weights, DDIM %d steps, eta 1): %s\n", o->preview_steps, buf);
        }
        if (!rc && !o->quiet) {
            if (interrupted)
                fprintf(stderr, "ddpm: interrupted at step %ld; checkpoint saved. Continue with: ddpm train %s --out %s --resume\n",
                        tr->state.step, o->data_dir, o->out_dir);
            else
                fprintf(stderr, "ddpm: done at step %ld; checkpoint: %s\n", tr->state.step, ckpt_path);
        }
        if (!rc && o->json)
            print_summary(tr, st.loss, ckpt_path, interrupted);
    }
    fclose(log);
    free(x0);
    ddpm_trainer_free(tr);
    ddpm_dataset_close(ds);
    return rc;
}
