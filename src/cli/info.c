/* info.c: `ddpm info CHECKPOINT`: metadata, parameter count, tensor table. */
#include <cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "ddpm/checkpoint.h"
#include "ddpm/error.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ddpm info RUN_DIR|CHECKPOINT [--json] [--tensors]\n\n"
               "Prints a checkpoint's format version, run config (model, schedule,\n"
               "training), state (step, RNG counters, data position, training time) and\n"
               "the model's parameter count; --tensors adds every tensor's name and shape.\n"
               "  --json      one JSON object on stdout instead of text\n"
               "  --tensors   list the tensors\n");
}

int cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, 0, 'j'}, {"tensors", no_argument, 0, 't'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int json = 0, tensors = 0, opt;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': usage(stdout); return DDPM_EXIT_OK;
        case 'j': json = 1; break;
        case 't': tensors = 1; break;
        default:
            cli_error("info: unknown option '%s'", argv[optind - 1]);
            return cli_usage_error("info");
        }
    }
    if (optind != argc - 1) {
        cli_error("info: expected one RUN_DIR or CHECKPOINT");
        return cli_usage_error("info");
    }
    char path[4096];
    cli_checkpoint_path(path, sizeof path, argv[optind]);
    ddpm_checkpoint *ck;
    if (ddpm_checkpoint_open(&ck, path)) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    const ddpm_run_config *cfg = ddpm_checkpoint_config(ck);
    const ddpm_train_state *s = ddpm_checkpoint_state(ck);
    ddpm_unet *net = NULL;
    if (ddpm_unet_create(&net, &cfg->model)) {
        cli_error("%s: %s", path, ddpm_last_error());
        ddpm_checkpoint_close(ck);
        return DDPM_EXIT_ERROR;
    }
    char *config_json = ddpm_run_config_to_json(cfg), *state_json = ddpm_train_state_to_json(s);
    int n = ddpm_checkpoint_tensor_count(ck);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "checkpoint", path);
        cJSON_AddNumberToObject(o, "format_version", DDPM_CHECKPOINT_FORMAT_VERSION);
        cJSON_AddItemToObject(o, "config", cJSON_Parse(config_json));
        cJSON_AddItemToObject(o, "state", cJSON_Parse(state_json));
        cJSON_AddNumberToObject(o, "parameters", (double)net->n_params);
        cJSON_AddNumberToObject(o, "tensors_in_file", n);
        cJSON_AddBoolToObject(o, "has_ema", ddpm_checkpoint_has(ck, net, "ema."));
        cJSON_AddBoolToObject(o, "has_optimizer", ddpm_checkpoint_has(ck, net, "adam_m."));
        if (tensors) {
            cJSON *list = cJSON_AddArrayToObject(o, "tensors");
            for (int i = 0; i < n; i++) {
                int ndim;
                int64_t shape[8];
                const char *name = ddpm_checkpoint_tensor(ck, i, &ndim, shape);
                cJSON *t = cJSON_CreateObject(), *sh = cJSON_AddArrayToObject(t, "shape");
                cJSON_AddStringToObject(t, "name", name);
                for (int d = 0; d < ndim; d++)
                    cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)shape[d]));
                cJSON_AddItemToArray(list, t);
            }
        }
        char *text = cJSON_Print(o);
        printf("%s\n", text ? text : "{}");
        free(text);
        cJSON_Delete(o);
    } else {
        cJSON *c = cJSON_Parse(config_json), *stj = cJSON_Parse(state_json);
        char *cp = cJSON_Print(c), *sp = cJSON_Print(stj);
        printf("checkpoint: %s\nformat version: %d\nparameters: %zu\nstep: %ld\ntraining time: %.1f s\n"
               "EMA weights: %s\noptimizer state: %s\ntensors in file: %d\nconfig: %s\nstate: %s\n",
               path, DDPM_CHECKPOINT_FORMAT_VERSION, net->n_params, s->step, s->elapsed_seconds,
               ddpm_checkpoint_has(ck, net, "ema.") ? "yes" : "no", ddpm_checkpoint_has(ck, net, "adam_m.") ? "yes" : "no",
               n, cp ? cp : "?", sp ? sp : "?");
        const char *const *names = ddpm_checkpoint_class_names(ck);
        for (int k = 0; names && k < net->cfg.n_classes; k++)
            printf(k ? ", %s" : "classes: %s", names[k]);
        if (names)
            printf("\n");
        free(cp);
        free(sp);
        cJSON_Delete(c);
        cJSON_Delete(stj);
        if (tensors)
            for (int i = 0; i < n; i++) {
                int ndim;
                int64_t shape[8];
                const char *name = ddpm_checkpoint_tensor(ck, i, &ndim, shape);
                printf("  %-40s [", name);
                for (int d = 0; d < ndim; d++)
                    printf(d ? ", %" PRId64 : "%" PRId64, shape[d]);
                printf("]\n");
            }
    }
    free(config_json);
    free(state_json);
    ddpm_unet_free(net);
    ddpm_checkpoint_close(ck);
    return DDPM_EXIT_OK;
}
