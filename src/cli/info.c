/* info.c: `ddpm info CHECKPOINT`: metadata, parameter count, tensor table. */
#include <cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "guard.h"
#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/recipe.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ddpm info RUN_DIR|CHECKPOINT [--json] [--tensors]\n"
               "       ddpm info IMAGE.png [--json]\n\n"
               "Prints a checkpoint's format version, run config (model, schedule,\n"
               "training), state (step, RNG counters, data position, training time) and\n"
               "the model's parameter count, and how training draws t (train.t_sampling;\n"
               "with importance sampling, how many steps' loss histories are full);\n"
               "--tensors adds every tensor's name and shape.\n"
               "An exported weights file (ddpm export) has no optimizer state.\n"
               "For a PNG, prints the recipe ddpm wrote into it (see ddpm sample --help\n"
               "and ddpm interpolate --help) and the command that re-creates it;\n"
               "a PNG without one is an error (exit 1) that says so.\n"
               "  --json      one JSON object on stdout instead of text\n"
               "  --no-warnings  do not print warnings\n"
               "  --tensors   list the tensors\n");
}

/* Whether path starts with the PNG signature. */
static int is_png(const char *path)
{
    static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned char head[8];
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    int yes = fread(head, 1, 8, f) == 8 && !memcmp(head, signature, 8);
    fclose(f);
    return yes;
}

static int info_png(const char *path, int json)
{
    ddpm_recipe r;
    int rc = ddpm_recipe_read_png(&r, path);
    if (rc < 0) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    if (rc == 0) {
        cli_error("%s: this PNG carries no ddpm recipe (no ddpm tEXt chunks: not written by ddpm, or "
                  "its text was stripped)",
                  path);
        return DDPM_EXIT_ERROR;
    }
    const char *sampler = ddpm_sampler_name(r.sampler.kind);
    const char *var = ddpm_var_name(r.sampler.var);
    int strip = ddpm_recipe_is_strip(r.kind);
    const char *recreate = strip ? "interpolate" : "sample";
    char seed[32], seed_b[32];
    snprintf(seed, sizeof seed, "%" PRIu64, r.seed);
    snprintf(seed_b, sizeof seed_b, "%" PRIu64, r.seed_b);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "image", path);
        cJSON_AddStringToObject(o, "version", r.version);
        cJSON_AddStringToObject(o, "checkpoint", r.checkpoint);
        cJSON_AddStringToObject(o, "checkpoint_sha256", r.checkpoint_sha256);
        cJSON_AddNumberToObject(o, "step", (double)r.step);
        cJSON_AddStringToObject(o, "weights", r.ema ? "ema" : "raw");
        cJSON_AddStringToObject(o, "sampler", sampler);
        cJSON_AddNumberToObject(o, "steps", r.sampler.steps);
        if (ddpm_sampler_has(r.sampler.kind, DDPM_SAMPLER_TAKES_SPACING)) {
            cJSON_AddStringToObject(o, "spacing", ddpm_spacing_name(r.sampler.spacing));
            cJSON_AddNumberToObject(o, "evaluations", (double)ddpm_sampler_evals(r.sampler.kind, r.sampler.steps, 0));
        }
        cJSON_AddNumberToObject(o, "eta", r.sampler.eta);
        cJSON_AddStringToObject(o, "var", var);
        cJSON_AddBoolToObject(o, "clip", r.sampler.clip_x0);
        cJSON_AddStringToObject(o, "kind", ddpm_recipe_kind_name(r.kind));
        if (r.precision == DDPM_PRECISION_BF16)
            cJSON_AddStringToObject(o, "precision", "bf16");
        cJSON_AddNumberToObject(o, "count", r.count);
        cJSON_AddNumberToObject(o, "pad", r.pad);
        cJSON_AddNumberToObject(o, "pad_value", r.pad_value);
        if (!strip) {
            cJSON_AddStringToObject(o, "seed", seed);
            cJSON_AddNumberToObject(o, "index", r.first_index);
            cJSON_AddNumberToObject(o, "nrow", r.nrow);
            if (r.class_index != DDPM_NO_CLASS) {
                cJSON_AddNumberToObject(o, "class", r.class_index);
                cJSON_AddStringToObject(o, "class_name", r.class_name);
            }
            if (r.grid_by_class)
                cJSON_AddNumberToObject(o, "grid_by_class", r.grid_by_class);
            if (r.class_index != DDPM_NO_CLASS || r.grid_by_class)
                cJSON_AddNumberToObject(o, "guidance", r.guidance);
        } else if (r.kind == DDPM_RECIPE_INTERP_SEEDS) {
            cJSON *seeds = cJSON_AddArrayToObject(o, "seeds");
            cJSON_AddItemToArray(seeds, cJSON_CreateString(seed));
            cJSON_AddItemToArray(seeds, cJSON_CreateString(seed_b));
        } else {
            cJSON_AddNumberToObject(o, "at", r.at);
            cJSON_AddStringToObject(o, "seed", seed);
            cJSON *images = cJSON_AddArrayToObject(o, "images");
            for (int k = 0; k < 2; k++) {
                cJSON *im = cJSON_CreateObject();
                cJSON_AddStringToObject(im, "path", r.images[k]);
                cJSON_AddStringToObject(im, "sha256", r.image_sha256[k]);
                cJSON_AddItemToArray(images, im);
            }
            cJSON_AddBoolToObject(o, "sources", r.sources);
        }
        char *text = cJSON_Print(o);
        printf("%s\n", text ? text : "{}");
        free(text);
        cJSON_Delete(o);
        return DDPM_EXIT_OK;
    }
    printf("image: %s\nmade by: ddpm %s\ncheckpoint: %s\ncheckpoint sha256: %s\nstep: %ld\nweights: %s\n", cli_q(path),
           cli_q(r.version), cli_q(r.checkpoint), r.checkpoint_sha256[0] ? r.checkpoint_sha256 : "(none: weights between checkpoints)",
           r.step, r.ema ? "EMA" : "raw");
    printf("sampler: %s", sampler); /* the options the sampler's row takes */
    if (ddpm_sampler_has(r.sampler.kind, DDPM_SAMPLER_TAKES_SPACING))
        printf(", %ld network evaluations, %s spacing", ddpm_sampler_evals(r.sampler.kind, r.sampler.steps, 0),
               ddpm_spacing_name(r.sampler.spacing));
    else if (ddpm_sampler_has(r.sampler.kind, DDPM_SAMPLER_TAKES_STEPS))
        printf(", %d steps", r.sampler.steps);
    else
        printf(", all steps");
    if (ddpm_sampler_has(r.sampler.kind, DDPM_SAMPLER_TAKES_ETA))
        printf(", eta %g", r.sampler.eta);
    if (ddpm_sampler_has(r.sampler.kind, DDPM_SAMPLER_TAKES_VAR))
        printf(", var %s", var);
    printf(", clip %s\n", r.sampler.clip_x0 ? "on" : "off");
    if (r.precision == DDPM_PRECISION_BF16)
        printf("precision: bf16 (the network's convolutions and attention products)\n");
    if (r.kind == DDPM_RECIPE_INTERP_SEEDS) {
        printf("seeds: %s, %s\n", seed, seed_b);
        printf("contents: interpolation strip of %d images between the samples of seeds %s and %s "
               "(slerp of x_T), pad %d of gray %d\n",
               r.count, seed, seed_b, r.pad, r.pad_value);
    } else if (r.kind == DDPM_RECIPE_INTERP_IMAGES) {
        printf("seed: %s\n", seed);
        printf("contents: interpolation strip of %d images between two images noised to t = %d%s, "
               "pad %d of gray %d\n",
               r.count, r.at, r.sources ? ", the two images at the ends" : "", r.pad, r.pad_value);
        for (int k = 0; k < 2; k++)
            printf("source image %d: %s\nsource image %d sha256: %s\n", k + 1, cli_q(r.images[k]), k + 1,
                   r.image_sha256[k]);
    } else {
        printf("seed: %s\n", seed);
        char guidance[32];
        ddpm_recipe_float_text(guidance, r.guidance);
        if (r.class_index != DDPM_NO_CLASS)
            printf("class: %d (%s), guidance %s\n", r.class_index, cli_q(r.class_name), guidance);
        else if (r.grid_by_class)
            printf("class: one row per class, %d images each, guidance %s\n", r.grid_by_class, guidance);
        else
            printf("class: none (unconditional)\n");
        if (r.kind == DDPM_RECIPE_IMAGE)
            printf("contents: image %d\n", r.first_index);
        else if (r.kind == DDPM_RECIPE_GRID)
            printf("contents: grid of images %d..%d, %d per row, pad %d of gray %d\n", r.first_index,
                   r.first_index + r.count - 1, r.nrow, r.pad, r.pad_value);
        else
            printf("contents: trajectory of images %d..%d, %d columns, pad %d of gray %d\n", r.first_index,
                   r.first_index + r.count - 1, r.nrow, r.pad, r.pad_value);
    }
    printf("re-create: ddpm %s --from %s --out copy.png\n", recreate, cli_q(path));
    return DDPM_EXIT_OK;
}

/* How the run draws t; with importance sampling, how far its loss history is. */
static void print_t_sampling(const ddpm_checkpoint *ck, const ddpm_run_config *cfg)
{
    printf("timestep sampling: %s", ddpm_t_sampling_name(cfg->t_sampling));
    ddpm_t_history h;
    if (cfg->t_sampling == DDPM_T_IMPORTANCE && !ddpm_t_history_init(&h, cfg->timesteps)) {
        if (ddpm_checkpoint_read_t_history(ck, &h) == DDPM_OK) {
            int full = 0;
            for (int i = 0; i < h.T; i++)
                full += h.count[i] == DDPM_T_HISTORY;
            printf(" (loss history full for %d of %d steps: %s)", full, h.T,
                   full == h.T ? "p_t from the history" : "still uniform, warming up");
        } else {
            printf(" (loss history unreadable: %s)", cli_q(ddpm_last_error()));
        }
        ddpm_t_history_free(&h);
    }
    printf("\n");
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
    int in_rc = cli_check_input_file(argv[optind], CLI_IN_CHECKPOINT, "the file");
    if (in_rc)
        return in_rc;
    if (is_png(argv[optind]))
        return info_png(argv[optind], json);
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
    const char *exported = ddpm_checkpoint_weights(ck);
    if (exported) { /* an export has no training config and no run state: show none */
        cJSON *c = cJSON_Parse(config_json);
        cJSON_DeleteItemFromObjectCaseSensitive(c, "train");
        free(config_json);
        config_json = cJSON_PrintUnformatted(c);
        cJSON_Delete(c);
        free(state_json);
        state_json = malloc(64);
        if (state_json)
            snprintf(state_json, 64, "{\"step\":%ld}", s->step);
    }
    int n = ddpm_checkpoint_tensor_count(ck);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "checkpoint", path);
        cJSON_AddNumberToObject(o, "format_version", ddpm_checkpoint_format_version(ck));
        cJSON_AddItemToObject(o, "config", cJSON_Parse(config_json));
        cJSON_AddItemToObject(o, "state", cJSON_Parse(state_json));
        cJSON_AddNumberToObject(o, "parameters", (double)net->n_params);
        cJSON_AddNumberToObject(o, "tensors_in_file", n);
        cJSON_AddBoolToObject(o, "has_ema", ddpm_checkpoint_has(ck, net, "ema."));
        cJSON_AddBoolToObject(o, "has_optimizer", ddpm_checkpoint_has(ck, net, "adam_m."));
        cJSON_AddBoolToObject(o, "checksums_verified", ddpm_checkpoint_checksummed(ck));
        cJSON_AddBoolToObject(o, "header_checksum_verified", ddpm_checkpoint_header_checksummed(ck));
        if (exported)
            cJSON_AddStringToObject(o, "exported_weights", exported);
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
        if (exported)
            printf("exported weights: %s\nformat version: %d\nparameters: %zu\nstep: %ld\n"
                   "weights: %s (no optimizer state)\ntensors in file: %d\nconfig: %s\n",
                   cli_q(path), ddpm_checkpoint_format_version(ck), net->n_params, s->step,
                   strcmp(exported, "ema") ? "raw" : "EMA", n, cp ? cp : "?");
        else
            printf("checkpoint: %s\nformat version: %d\nparameters: %zu\nstep: %ld\ntraining time: %.1f s\n"
                   "EMA weights: %s\noptimizer state: %s\ntensors in file: %d\nconfig: %s\nstate: %s\n",
                   cli_q(path), ddpm_checkpoint_format_version(ck), net->n_params, s->step, s->elapsed_seconds,
                   ddpm_checkpoint_has(ck, net, "ema.") ? "yes" : "no",
                   ddpm_checkpoint_has(ck, net, "adam_m.") ? "yes" : "no", n, cp ? cp : "?", sp ? sp : "?");
        printf("checksums: %s\n", ddpm_checkpoint_header_checksummed(ck) ? "crc32c of the header and of every tensor verified"
                                   : ddpm_checkpoint_checksummed(ck)
                                       ? "crc32c of every tensor verified (format version 1: no header checksum)"
                                       : "none (an older file; its data is not verified)");
        printf("variances: %s\n", net->cfg.learn_sigma ? "learned (--learn-sigma: the network outputs v; sample and eval "
                                                          "use them unless --var says otherwise)"
                                                        : "fixed (sample and eval take --var beta or beta-tilde)");
        if (!exported)
            print_t_sampling(ck, cfg);
        const char *const *names = ddpm_checkpoint_class_names(ck);
        for (int k = 0; names && k < net->cfg.n_classes; k++)
            printf(k ? ", %s" : "classes: %s", cli_q(names[k]));
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
                printf("  %-40s [", cli_q(name));
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
