/* cli.h: the subcommands of the ddpm binary. Each parses its own flags with
 * getopt_long into a config struct and calls the library. Exit codes are
 * DDPM_EXIT_* below. */
#ifndef DDPM_CLI_H
#define DDPM_CLI_H

enum {
    DDPM_EXIT_OK = 0,
    DDPM_EXIT_ERROR = 1,    /* bad input data, a file problem, a failed run */
    DDPM_EXIT_USAGE = 2,    /* unknown subcommand or flag, bad flag value */
    DDPM_EXIT_DIVERGED = 3, /* training stopped on a NaN or infinite loss */
};

int cmd_train(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_interpolate(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_fid(int argc, char **argv);

/* "ddpm: <msg>" on stderr, the whole line escaped (term.h). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#include "term.h"

#endif
