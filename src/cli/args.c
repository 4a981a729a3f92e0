#include "args.h"

#include <cblas.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "ddpm/error.h"
#include "ddpm/run.h"

int arg_long(const char *flag, const char *value, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (end == value || *end || errno || v < lo || v > hi) {
        cli_error("--%s: '%s' is not an integer in %ld..%ld", flag, value, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int arg_int(const char *flag, const char *value, long lo, long hi, int *out)
{
    long v;
    if (arg_long(flag, value, lo, hi, &v))
        return -1;
    *out = (int)v;
    return 0;
}

int arg_double(const char *flag, const char *value, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (end == value || *end || errno || !(v >= lo && v <= hi)) {
        cli_error("--%s: '%s' is not a number in [%g, %g]", flag, value, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int arg_float(const char *flag, const char *value, double lo, double hi, float *out)
{
    double v;
    if (arg_double(flag, value, lo, hi, &v))
        return -1;
    *out = (float)v;
    return 0;
}

int arg_u64(const char *flag, const char *value, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (end == value || *end || errno || *value == '-') {
        cli_error("--%s: '%s' is not a non-negative integer", flag, value);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

void cli_set_threads(int n)
{
    if (n <= 0)
        return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int cli_usage_error(const char *cmd)
{
    fprintf(stderr, "ddpm: 'ddpm %s --help' lists the options\n", cmd);
    return DDPM_EXIT_USAGE;
}

int arg_var(const char *value, ddpm_var_kind *out)
{
    if (ddpm_var_parse(value, out)) {
        cli_error("--var: '%s' is not beta, beta-tilde or learned", value);
        return -1;
    }
    return 0;
}

int cli_check_writable_parent(const char *path)
{
    char buf[4096];
    struct stat st;
    if (!path[0]) {
        cli_error("--out: the file name is empty");
        return DDPM_EXIT_USAGE;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        cli_error("%s: is a folder; name the file to write (like %s/samples.png)", path, path);
        return DDPM_EXIT_ERROR;
    }
    snprintf(buf, sizeof buf, "%s", path);
    const char *dir = dirname(buf);
    if (access(dir, W_OK) != 0) {
        cli_error("%s: cannot write there: %s", path, strerror(errno));
        return DDPM_EXIT_ERROR;
    }
    return 0;
}

int arg_model_flag(const char *name, const char *value, ddpm_run_config *cfg)
{
    ddpm_unet_config *m = &cfg->model;
    if (!strcmp(name, "size"))
        return arg_int(name, value, 1, 4096, &m->image_size);
    if (!strcmp(name, "channels")) {
        if (arg_int(name, value, 1, 3, &m->in_channels))
            return -1;
        if (m->in_channels == 2) {
            cli_error("--channels: must be 1 or 3");
            return -1;
        }
        return 0;
    }
    if (!strcmp(name, "ch"))
        return arg_int(name, value, 2, 4096, &m->ch);
    if (!strcmp(name, "ch-mult")) {
        m->n_levels = ddpm_parse_int_list(value, m->ch_mult, DDPM_MAX_LEVELS);
        if (m->n_levels < 1) {
            cli_error("--ch-mult: '%s' is not a list of 1 to %d integers like 1,2,2", value, DDPM_MAX_LEVELS);
            return -1;
        }
        return 0;
    }
    if (!strcmp(name, "res-blocks"))
        return arg_int(name, value, 1, 16, &m->num_res_blocks);
    if (!strcmp(name, "attn")) {
        m->n_attn = ddpm_parse_int_list(value, m->attn_res, DDPM_MAX_LEVELS);
        if (m->n_attn < 0) {
            cli_error("--attn: '%s' is not a list of resolutions like 14 or 16,8", value);
            return -1;
        }
        return 0;
    }
    if (!strcmp(name, "groups"))
        return arg_int(name, value, 1, 4096, &m->groups);
    if (!strcmp(name, "dropout"))
        return arg_float(name, value, 0, 0.99, &m->dropout);
    if (!strcmp(name, "timesteps"))
        return arg_int(name, value, 1, 100000, &cfg->timesteps);
    return 1;
}

void cli_checkpoint_path(char *out, size_t size, const char *arg)
{
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(out, size, "%s/%s", arg, DDPM_CHECKPOINT_FILE);
    else
        snprintf(out, size, "%s", arg);
}

int cli_open_model(ddpm_model *m, const char *arg, int no_ema, int quiet, const char *doing)
{
    if (ddpm_model_open(m, arg, no_ema ? DDPM_WEIGHTS_RAW : DDPM_WEIGHTS_EMA)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if (m->ema_missing && !quiet)
        fprintf(stderr, "ddpm: %s has no EMA weights; %s the raw weights\n", m->path, doing);
    return 0;
}
