/* main.c: the ddpm binary: subcommand dispatch, --help, --version. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "term.h"
#include "ddpm/platform.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"train", cmd_train, "train a U-Net on a folder of images"},
    {"sample", cmd_sample, "sample PNG grids from a checkpoint (DDPM or DDIM)"},
    {"bench", cmd_bench, "measure training and sampling speed on this machine"},
    {"interpolate", cmd_interpolate, "a strip between two seeds or two noised images (DDIM eta 0)"},
    {"plot", cmd_plot, "draw a run's loss and images/s from its log.jsonl into a PNG"},
    {"info", cmd_info, "print a checkpoint's metadata and tensor table"},
    {"eval", cmd_eval, "the variational bound in bits/dim and held-out loss on a folder"},
    {"fid", cmd_fid, "FID (and KID) of two image folders with pytorch-fid's Inception"},
    {"export", cmd_export, "write a checkpoint's EMA (or raw) weights alone, to share"},
    {"convert", cmd_convert, "convert IDX files (MNIST, Fashion-MNIST, ...) to PNG folders"},
};

/* Removes every --no-warnings before a "--" from argv (setting
 * cli_warnings_off), so that each command takes it without a row of its own;
 * returns the new argc. */
static int take_no_warnings(int argc, char **argv)
{
    int n = 0, options = 1;
    for (int k = 0; k < argc; k++) {
        if (options && !strcmp(argv[k], "--"))
            options = 0;
        if (options && k > 0 && !strcmp(argv[k], "--no-warnings")) {
            cli_warnings_off = 1;
            continue;
        }
        argv[n++] = argv[k];
    }
    argv[n] = NULL;
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: ddpm <command> [options]\n\n"
               "Denoising Diffusion Probabilistic Models (Ho et al. 2020): train and sample.\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'ddpm <command> --help' lists a command's options.\n"
               "options: --help, --version; every command takes --no-warnings\n"
               "exit codes: 0 ok, 1 error (bad input, file problem), 2 usage error,\n"
               "            3 training diverged (NaN or infinite loss)\n");
}

/* Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) picks its Haswell kernels on AVX-512 AMD
 * CPUs; its SkylakeX kernels run sgemm about 1.7x faster there (ddpm bench: sgemm
 * 1024^3 192 -> 314 GFLOP/s on 2 cores). The core is chosen when the library is
 * loaded, before main(), so the only way to pick it is the environment of a fresh
 * process: when OPENBLAS_CORETYPE is unset and the CPU has AVX-512F, set it and
 * re-exec ourselves once. A value the user set (any value) is left alone, and
 * DDPM_NO_REEXEC=1 turns this off. If the exec fails we simply run as we are. */
static void pick_openblas_core(char **argv)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (getenv("OPENBLAS_CORETYPE") || getenv("DDPM_NO_REEXEC"))
        return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f"))
        return;
    if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1))
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* exec failed: carry on with the default kernels */
#else
    (void)argv;
#endif
}

int main(int argc, char **argv)
{
    pick_openblas_core(argv);
    /* Past a file-size limit (ulimit -f) a write fails with EFBIG instead of the
     * process being killed by SIGXFSZ: the error path then removes the temporary
     * file, keeps the old checkpoint and says "File too large". */
    signal(SIGXFSZ, SIG_IGN);
    ddpm_threads_set(0);
    if (argc < 2) {
        usage(stderr);
        return DDPM_EXIT_USAGE;
    }
    argc = take_no_warnings(argc, argv);
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
        ddpm_platform pf;
        ddpm_platform_get(&pf);
        printf("ddpm %s\nbuild: %s, %s\nopenblas: %s\nopenblas kernels: %s\n", DDPM_VERSION, pf.compiler,
               pf.isa, pf.openblas, pf.blas_core);
        return DDPM_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    cli_error("unknown command '%s' (see 'ddpm --help')", cmd);
    return DDPM_EXIT_USAGE;
}
