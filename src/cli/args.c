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

int arg_precision(const char *value, ddpm_precision *out)
{
    if (!strcmp(value, "fp32")) {
        *out = DDPM_PRECISION_FP32;
        return 0;
    }
    if (strcmp(value, "bf16")) {
        cli_error("--precision: '%s' is not fp32 or bf16", value);
        return -1;
    }
    if (arg_bf16_refused())
        return -1;
    *out = DDPM_PRECISION_BF16;
    return 0;
}

int arg_bf16_refused(void)
{
    /* DDPM_NO_BF16 (any value): act as on a CPU without AVX512_BF16, for the tests */
    if (ddpm_bf16_available() && !getenv("DDPM_NO_BF16"))
        return 0;
    cli_error("--precision bf16: this %s has no AVX512_BF16 (bf16 dot products); use --precision fp32",
              ddpm_bf16_available() ? "CPU" : "build or CPU");
    return -1;
}

int arg_sampler(const char *flag, const char *value, ddpm_sampler_kind *out)
{
    if (ddpm_sampler_parse(value, out) == 0)
        return 0;
    char list[256] = "";
    for (int k = 0; k < DDPM_N_SAMPLERS; k++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "",
                 ddpm_sampler_name((ddpm_sampler_kind)k));
    cli_error("--%s: '%s' is not one of %s", flag, value, list);
    return -1;
}

int arg_spacing(const char *flag, const char *value, ddpm_spacing *out)
{
    if (ddpm_spacing_parse(value, out)) {
        cli_error("--%s: '%s' is not one of time, logsnr, karras", flag, value);
        return -1;
    }
    return 0;
}

int cli_check_writable_parent(const char *path)
{
    return cli_check_writable_file("--out", path, "samples.png");
}

int cli_check_writable_file(const char *flag, const char *path, const char *example)
{
    char buf[4096];
    struct stat st;
    if (!path[0]) {
        cli_error("%s: the file name is empty", flag);
        return DDPM_EXIT_USAGE;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        cli_error("%s: is a folder; name the file to write (like %s/%s)", path, path, example);
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
    static const char *const model_flags[] = {"size", "channels", "ch", "ch-mult", "res-blocks",
                                              "attn", "groups", "dropout", "timesteps", "scale-shift-norm"};
    for (size_t k = 0; k < sizeof model_flags / sizeof model_flags[0]; k++)
        if (!strcmp(name, model_flags[k]))
            return cli_option_parse(ddpm_option_find(ddpm_run_config_options, name), cfg, value);
    return 1;
}

int cli_option_parse(const ddpm_option *opt, void *base, const char *value)
{
    if (ddpm_option_parse(opt, base, value)) {
        cli_error("--%s: %s", opt->name, ddpm_last_error());
        return -1;
    }
    return 0;
}

/* Writes `text` from column `col` on, wrapped at 79 columns with continuation
 * lines indented to column `indent`. */
static void print_wrapped(FILE *f, const char *text, int col, int indent)
{
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        int room = 79 - col, n = (int)strlen(p);
        if (n > room) { /* break at the last space that fits (or the first after a long word) */
            n = room;
            while (n > 0 && p[n] != ' ')
                n--;
            if (n == 0)
                n = (int)strcspn(p, " ");
        }
        fprintf(f, "%.*s\n", n, p);
        p += n;
        if (*p)
            fprintf(f, "%*s", indent, "");
        col = indent;
    }
}

void cli_option_help(FILE *f, const ddpm_option *opt, const void *defaults)
{
    enum { HELP_COLUMN = 23 };
    char flag[96], text[2048], value[256] = "";
    int n = snprintf(flag, sizeof flag, "  --%s%s%s", opt->name, opt->metavar ? " " : "",
                     opt->metavar ? opt->metavar : "");
    if (opt->def_text)
        snprintf(value, sizeof value, "%s", opt->def_text);
    else if (opt->type != DDPM_OPT_BOOL) {
        size_t used = strlen(opt->prefix ? opt->prefix : "");
        snprintf(value, sizeof value, "%s", opt->prefix ? opt->prefix : "");
        ddpm_option_format(opt, defaults, value + used, sizeof value - used);
        if (opt->unit)
            snprintf(value + strlen(value), sizeof value - strlen(value), " %s", opt->unit);
    }
    if (value[0])
        snprintf(text, sizeof text, "%s (default %s)", opt->help, value);
    else
        snprintf(text, sizeof text, "%s", opt->help);
    if (n + 2 > HELP_COLUMN) {
        fprintf(f, "%s  ", flag);
        print_wrapped(f, text, n + 2, HELP_COLUMN);
    } else {
        fprintf(f, "%-*s", HELP_COLUMN, flag);
        print_wrapped(f, text, HELP_COLUMN, HELP_COLUMN);
    }
}

void cli_checkpoint_path(char *out, size_t size, const char *arg)
{
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(out, size, "%s/%s", arg, DDPM_CHECKPOINT_FILE);
    else
        snprintf(out, size, "%s", arg);
}

int cli_open_model(ddpm_model *m, const char *arg, int no_ema, const char *doing)
{
    if (ddpm_model_open(m, arg, no_ema ? DDPM_WEIGHTS_RAW : DDPM_WEIGHTS_EMA)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if (m->ema_missing)
        cli_warn("%s has no EMA weights; %s the raw weights", m->path, doing);
    return 0;
}

int cli_find_inception(char *out, size_t size, const char *flag)
{
    if (flag) {
        snprintf(out, size, "%s", flag);
        return 0;
    }
    const char *env = getenv("DDPM_INCEPTION");
    if (env && *env) {
        snprintf(out, size, "%s", env);
        return 0;
    }
    const char *home = getenv("HOME");
    snprintf(out, size, "%s/.cache/ddpm/" CLI_INCEPTION_NAME, home ? home : ".");
    struct stat st;
    if (stat(out, &st) == 0 && S_ISREG(st.st_mode))
        return 0;
    cli_error("%s: no Inception weights: download " CLI_INCEPTION_URL " there, or pass --inception FILE", out);
    return -1;
}
