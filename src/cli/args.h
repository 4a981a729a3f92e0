/* args.h: checked flag-value parsing for the subcommands. Each returns 0, or
 * prints "ddpm: --flag: <problem>" and returns -1 (the caller exits 2). */
#ifndef DDPM_CLI_ARGS_H
#define DDPM_CLI_ARGS_H

#include <stdint.h>

int arg_int(const char *flag, const char *value, long lo, long hi, int *out);
int arg_long(const char *flag, const char *value, long lo, long hi, long *out);
int arg_double(const char *flag, const char *value, double lo, double hi, double *out);
int arg_float(const char *flag, const char *value, double lo, double hi, float *out);
int arg_u64(const char *flag, const char *value, uint64_t *out);
/* Sets OpenMP's and OpenBLAS's thread counts (0: leave the defaults). */
void cli_set_threads(int n);
/* "'ddpm CMD --help' lists the options" after an unknown flag. */
int cli_usage_error(const char *cmd);

#endif
