/* main.c: the ddpm binary: subcommand dispatch, --help, --version. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"train", cmd_train, "train a U-Net on a folder of images"},
    {"sample", cmd_sample, "sample PNG grids from a checkpoint (DDPM or DDIM)"},
    {"bench", cmd_bench, "measure training and sampling speed on this machine"},
    {"info", cmd_info, "print a checkpoint's metadata and tensor table"},
    {"convert", cmd_convert, "convert IDX files (MNIST, Fashion-MNIST, ...) to PNG folders"},
};

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ddpm: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: ddpm <command> [options]\n\n"
               "Denoising Diffusion Probabilistic Models (Ho et al. 2020): train and sample.\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'ddpm <command> --help' lists a command's options.\n"
               "options: --help, --version\n"
               "exit codes: 0 ok, 1 error (bad input, file problem), 2 usage error,\n"
               "            3 training diverged (NaN or infinite loss)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return DDPM_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return DDPM_EXIT_OK;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("ddpm %s\n", DDPM_VERSION);
        return DDPM_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    cli_error("unknown command '%s' (see 'ddpm --help')", cmd);
    return DDPM_EXIT_USAGE;
}
