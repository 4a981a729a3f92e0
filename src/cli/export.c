/* export.c: `ddpm export RUN_DIR|CKPT OUT.safetensors [--raw]`: the weights to
 * share, without the optimizer state. */
#include <getopt.h>
#include <stdio.h>
#include <sys/stat.h>

#include "args.h"
#include "cli.h"
#include "guard.h"
#include "ddpm/checkpoint.h"
#include "ddpm/error.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ddpm export RUN_DIR|CHECKPOINT OUT.safetensors [--raw] [--quiet]\n\n"
               "Writes the weights a user shares: the EMA weights (--raw: the raw ones)\n"
               "under their plain PyTorch names, and the model and schedule metadata;\n"
               "no Adam moments, no ema. prefix, no training state. A checkpoint holds\n"
               "four copies of the weights (raw, EMA, two Adam moments); the export\n"
               "holds one, a quarter of the size (6.5 MB for the default 28 px model).\n"
               "ddpm sample, info and eval read it; it loads into the PyTorch reference\n"
               "U-Net (tests/reference/) with strict names; training cannot resume from it.\n"
               "  --raw       the raw weights instead of the EMA weights\n"
               "  --quiet     do not print what was written (warnings stay)\n"
               "  --no-warnings  do not print warnings\n"
               "exit codes: 0 ok, 1 error (bad checkpoint, unwritable output), 2 usage\n");
}

int cmd_export(int argc, char **argv)
{
    static const struct option longopts[] = {{"raw", no_argument, 0, 'r'},
                                             {"quiet", no_argument, 0, 'q'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    int raw = 0, quiet = 0, opt;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': usage(stdout); return DDPM_EXIT_OK;
        case 'r': raw = 1; break;
        case 'q': quiet = 1; break;
        default: cli_error("export: unknown option '%s'", argv[optind - 1]); return cli_usage_error("export");
        }
    }
    if (optind != argc - 2) {
        cli_error("export: expected RUN_DIR|CHECKPOINT and OUT.safetensors");
        return cli_usage_error("export");
    }
    char path[4096];
    cli_checkpoint_path(path, sizeof path, argv[optind]);
    const char *out = argv[optind + 1];
    const cli_input in[1] = {{argv[optind], CLI_IN_CHECKPOINT}};
    int rc = cli_check_input_file(argv[optind], CLI_IN_CHECKPOINT, "the checkpoint");
    if (!rc)
        rc = cli_check_output("OUT", out, 0, in, 1);
    if (!rc)
        rc = cli_check_writable_file("OUT", out, "model.safetensors");
    if (rc)
        return rc;
    ddpm_checkpoint *ck = NULL;
    int used_ema = 0;
    rc = ddpm_checkpoint_open(&ck, path);
    if (!rc)
        rc = ddpm_checkpoint_export(ck, out, raw, &used_ema);
    if (rc) {
        cli_error("%s", ddpm_last_error());
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_ERROR;
    }
    if (!raw && !used_ema)
        cli_warn("%s has no EMA weights; exported the raw ones", path);
    if (!quiet) {
        struct stat a, b;
        double in_mb = stat(path, &a) == 0 ? a.st_size / 1e6 : 0,
               out_mb = stat(out, &b) == 0 ? b.st_size / 1e6 : 0;
        cli_note("%s weights of step %ld: %s (%.1f MB, from %.1f MB)",
                used_ema ? "EMA" : "raw", ddpm_checkpoint_state(ck)->step, out, out_mb, in_mb);
    }
    ddpm_checkpoint_close(ck);
    return DDPM_EXIT_OK;
}
