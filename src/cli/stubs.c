/* stubs.c: subcommands not yet built (each moves to its own file when it is). */
#include "cli.h"

#define STUB(fn, name)                                                                 \
    int fn(int argc, char **argv)                                                      \
    {                                                                                  \
        (void)argc;                                                                    \
        (void)argv;                                                                    \
        cli_error("'%s' is not built yet", name);                                      \
        return DDPM_EXIT_ERROR;                                                        \
    }
