#include "args.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

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
