/* plot.c: `ddpm plot RUN_DIR|LOG`: the training curves of a run's log.jsonl as a PNG. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "args.h"
#include "cli.h"
#include "guard.h"
#include "ddpm/error.h"
#include "ddpm/plot.h"
#include "ddpm/run.h"

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddpm plot RUN_DIR|LOG.jsonl [options]\n"
"\n"
"Draws the curves of a training run against the step into a PNG: the training\n"
"loss (L_simple, log scale) with every other numeric log field whose name\n"
"contains \"loss\" (a held-out loss, eval_loss, ...), other eval_* fields in a\n"
"panel of their own, the FID of `ddpm train --eval-fid` in another, and\n"
"images/s. RUN_DIR is a `ddpm train --out` folder (its log.jsonl is read); a\n"
"path to a .jsonl file is read as it is.\n"
"\n"
"Lines that are not a JSON object with a numeric \"step\" (a line cut short\n"
"by a crash, garbage) are skipped and counted in a warning; unknown fields are\n"
"ignored. When steps repeat (a run resumed from an earlier checkpoint), the\n"
"later lines win. A log with no valid line or no \"loss\" is an error.\n"
"\n"
"  --out FILE.png       the picture (default loss.png)\n"
"  --width W            pixels (default 960)\n"
"  --height H           pixels (default 640)\n"
"  --quiet              no summary line (warnings stay)\n"
CLI_HELP_NO_WARNINGS
"exit codes: 0 ok, 1 error (missing, empty or unreadable log, unwritable\n"
"            output), 2 usage\n");
}

enum { O_OUT = 256, O_WIDTH, O_HEIGHT, O_QUIET, O_HELP };

int cmd_plot(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"out", required_argument, 0, O_OUT}, {"width", required_argument, 0, O_WIDTH},
        {"height", required_argument, 0, O_HEIGHT}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0},
    };
    const char *out = "loss.png";
    int quiet = 0, opt, bad = 0;
    ddpm_plot_options po;
    ddpm_plot_options_default(&po);
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h':
        case O_HELP: usage(stdout); return DDPM_EXIT_OK;
        case O_OUT: out = optarg; break;
        case O_WIDTH: bad |= arg_int("width", optarg, 200, 8192, &po.width); break;
        case O_HEIGHT: bad |= arg_int("height", optarg, 200, 8192, &po.height); break;
        case O_QUIET: quiet = 1; break;
        default:
            cli_error("plot: unknown or incomplete option '%s'", argv[optind - 1]);
            return cli_usage_error("plot");
        }
        if (bad)
            return DDPM_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        cli_error(optind >= argc ? "plot: missing RUN_DIR or LOG" : "plot: expected one RUN_DIR or LOG");
        return cli_usage_error("plot");
    }
    const char *arg = argv[optind];
    char log_path[4096];
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(log_path, sizeof log_path, "%s/%s", arg, DDPM_LOG_FILE);
    else
        snprintf(log_path, sizeof log_path, "%s", arg);
    int is_run = stat(arg, &st) == 0 && S_ISDIR(st.st_mode);
    const cli_input in[2] = {{log_path, CLI_IN_FILE}, {is_run ? arg : NULL, CLI_IN_CHECKPOINT}};
    int rc;
    if ((rc = cli_check_input_file(log_path, CLI_IN_FILE, "the log")) ||
        (rc = cli_check_output("--out", out, 0, in, 2)) || (rc = cli_check_writable_parent(out)))
        return rc;
    ddpm_plot_summary sum;
    if (ddpm_plot_training_log(log_path, out, &po, &sum)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if (sum.n_skipped)
        cli_warn("%s: skipped %d malformed line%s of %d (the first is line %d)", log_path, sum.n_skipped,
                 sum.n_skipped == 1 ? "" : "s", sum.n_lines, sum.first_skipped);
    if (!quiet) {
        char names[1024] = "";
        for (int s = 0; s < sum.n_series && s < 8; s++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s %s", s ? "," : "", sum.names[s]);
        cli_note("%d log lines of %s:%s", sum.n_lines - sum.n_skipped, log_path, names);
        printf("%s\n", cli_q(out));
    }
    return DDPM_EXIT_OK;
}
