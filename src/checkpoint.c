#include "ddpm/checkpoint.h"

#include <cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/options.h"
#include "ddpm/safetensors.h"

struct ddpm_checkpoint {
    ddpm_st_file *file;
    ddpm_run_config config;
    ddpm_train_state state;
    const char *weights; /* exported weights: "ema" or "raw"; NULL for a training checkpoint */
    char **class_names;  /* [config.model.n_classes] */
    int format_version;  /* the file's: 1 or 2 */
};

/* ---------------------------------------------------------------- to JSON */

static cJSON *int_array(const int *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static void add_u64(cJSON *o, const char *key, uint64_t v)
{
    /* JSON numbers are doubles: 64-bit counters and seeds travel as strings */
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    cJSON_AddStringToObject(o, key, buf);
}

/* One option's value as JSON (its row of the option table says how). */
static cJSON *option_to_json(const ddpm_option *opt, const ddpm_run_config *c)
{
    const void *p = (const char *)c + opt->offset;
    char buf[32];
    switch (opt->type) {
    case DDPM_OPT_LIST: return int_array(p, *(const int *)((const char *)c + opt->count_offset));
    case DDPM_OPT_BOOL: return cJSON_CreateBool(*(const int *)p);
    case DDPM_OPT_ENUM: return cJSON_CreateString(opt->name_of(*(const int *)p));
    case DDPM_OPT_U64: /* JSON numbers are doubles: 64-bit counters and seeds travel as strings */
        snprintf(buf, sizeof buf, "%" PRIu64, *(const uint64_t *)p);
        return cJSON_CreateString(buf);
    default: return cJSON_CreateNumber(ddpm_option_number(opt, c));
    }
}

char *ddpm_run_config_to_json(const ddpm_run_config *c)
{
    static const char *const sections[3] = {"model", "schedule", "train"};
    cJSON *root = cJSON_CreateObject();
    for (int k = 0; root && k < 3; k++) {
        cJSON *s = cJSON_AddObjectToObject(root, sections[k]);
        if (!s)
            break;
        for (const ddpm_option *o = ddpm_run_config_options; o->type != DDPM_OPT_END; o++) {
            if (!o->section || strcmp(o->section, sections[k]))
                continue;
            if ((o->flags & DDPM_OPT_OMIT_DEFAULT) && ddpm_option_number(o, c) == o->def)
                continue;
            cJSON_AddItemToObject(s, o->key, option_to_json(o, c));
        }
    }
    char *out = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return out;
}

char *ddpm_train_state_to_json(const ddpm_train_state *st)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON_AddNumberToObject(root, "step", (double)st->step);
    add_u64(root, "noise_counter", st->noise_counter);
    add_u64(root, "dropout_counter", st->dropout_counter);
    add_u64(root, "data_epoch", st->data_epoch);
    cJSON_AddNumberToObject(root, "data_position", st->data_position);
    cJSON_AddNumberToObject(root, "elapsed_seconds", st->elapsed_seconds);
    cJSON_AddNumberToObject(root, "stop_step", (double)st->stop_step);
    cJSON_AddNumberToObject(root, "stop_elapsed_seconds", st->stop_elapsed_seconds);
    cJSON_AddStringToObject(root, "data_fingerprint", st->data_fingerprint);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* ---------------------------------------------------------------- from JSON */

typedef struct {
    const char *what;
    int err;
} parse_ctx;

static const cJSON *field(parse_ctx *p, const cJSON *obj, const char *section, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v && !p->err)
        p->err = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s is missing", p->what, section, key);
    return v;
}

static double get_num(parse_ctx *p, const cJSON *obj, const char *section, const char *key, double lo,
                      double hi)
{
    const cJSON *v = field(p, obj, section, key);
    if (!v)
        return lo;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        if (!p->err)
            p->err = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s must be a number in [%g, %g]",
                                p->what, section, key, lo, hi);
        return lo;
    }
    return v->valuedouble;
}

static int get_int(parse_ctx *p, const cJSON *obj, const char *section, const char *key, int lo, int hi)
{
    double d = get_num(p, obj, section, key, lo, hi);
    if (d != floor(d) && !p->err)
        p->err = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s must be an integer", p->what, section,
                            key);
    return (int)d;
}

static uint64_t get_u64(parse_ctx *p, const cJSON *obj, const char *section, const char *key)
{
    const cJSON *v = field(p, obj, section, key);
    if (!v)
        return 0;
    const char *s = cJSON_GetStringValue(v);
    char *end = NULL;
    unsigned long long x = s && *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
    if (!s || !end || *end || *s < '0' || *s > '9') {
        if (!p->err)
            p->err = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s must be a decimal string", p->what,
                                section, key);
        return 0;
    }
    return (uint64_t)x;
}

static const cJSON *section(parse_ctx *p, const cJSON *root, const char *name)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!cJSON_IsObject(s) && !p->err)
        p->err = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: section '%s' is missing", p->what, name);
    return cJSON_IsObject(s) ? s : NULL;
}

/* Reads one option from its section (its row of the option table says the
 * type, the bounds and whether an older file may lack it). */
static int option_from_json(parse_ctx *p, const ddpm_option *opt, const cJSON *sec, ddpm_run_config *c)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sec, opt->key);
    const char *what = p->what, *s = opt->section, *key = opt->key;
    if (!v) {
        if (opt->flags & DDPM_OPT_OPTIONAL)
            return DDPM_OK; /* added after the first files: the default */
        return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s is missing", what, s, key);
    }
    char bounds[64], text[64];
    ddpm_option_bounds(opt, bounds, sizeof bounds);
    void *at = (char *)c + opt->offset;
    switch (opt->type) {
    case DDPM_OPT_BOOL:
        if (!cJSON_IsBool(v))
            return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s must be true or false", what, s, key);
        *(int *)at = cJSON_IsTrue(v);
        return DDPM_OK;
    case DDPM_OPT_ENUM:
    case DDPM_OPT_U64:
        if (!cJSON_IsString(v) || ddpm_option_parse(opt, c, v->valuestring)) {
            snprintf(text, sizeof text, "%s", cJSON_IsString(v) ? v->valuestring : "?");
            if (opt->type == DDPM_OPT_U64)
                return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s must be a decimal string", what, s,
                                  key);
            ddpm_option_parse(opt, c, text); /* for its message: "'x1' is not eps, x0, v or mu" */
            return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s %s", what, s, key, ddpm_last_error());
        }
        return DDPM_OK;
    case DDPM_OPT_LIST: {
        int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
        if (n < opt->min_count || n > DDPM_MAX_LEVELS)
            return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s must be a list of %d to %d integers",
                              what, s, key, opt->min_count, DDPM_MAX_LEVELS);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(v, i);
            if (!cJSON_IsNumber(e) || !ddpm_option_in_bounds(opt, e->valuedouble))
                return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s[%d] must be an integer in %s", what,
                                  s, key, i, bounds);
            ((int *)at)[i] = (int)e->valuedouble;
        }
        *(int *)((char *)c + opt->count_offset) = n;
        return DDPM_OK;
    }
    default:
        if (!cJSON_IsNumber(v) || !ddpm_option_in_bounds(opt, v->valuedouble))
            return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: %s.%s must be %s in %s", what, s, key,
                              opt->type == DDPM_OPT_INT || opt->type == DDPM_OPT_LONG ? "an integer" : "a number",
                              bounds);
        switch (opt->type) {
        case DDPM_OPT_INT: *(int *)at = (int)v->valuedouble; break;
        case DDPM_OPT_LONG: *(long *)at = (long)v->valuedouble; break;
        case DDPM_OPT_FLOAT: *(float *)at = (float)v->valuedouble; break;
        default: *(double *)at = v->valuedouble; break;
        }
        return DDPM_OK;
    }
}

/* need_train 0: an exported weights file, whose config has no train section
 * (the training fields keep their defaults and mean nothing). */
static int config_from_json(ddpm_run_config *c, const char *json, const char *what, int need_train)
{
    parse_ctx p = {.what = what};
    ddpm_run_config_default(c);
    cJSON *root = cJSON_Parse(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: config is not a JSON object", what);
    }
    const cJSON *sections[3] = {section(&p, root, "model"), section(&p, root, "schedule"),
                                need_train ? section(&p, root, "train") : NULL};
    static const char *const names[3] = {"model", "schedule", "train"};
    for (const ddpm_option *o = ddpm_run_config_options; !p.err && o->type != DDPM_OPT_END; o++)
        for (int k = 0; k < 3 && !p.err; k++)
            if (o->section && sections[k] && !strcmp(o->section, names[k]))
                p.err = option_from_json(&p, o, sections[k], c);
    cJSON_Delete(root);
    if (p.err)
        return p.err;
    if (ddpm_unet_config_check(&c->model))
        return ddpm_error(DDPM_EFORMAT, "%s: checkpoint model config is invalid: %s", what, ddpm_last_error());
    if (ddpm_loss_config_check(&c->loss, c->model.prediction, need_train && c->model.learn_sigma) || ddpm_t_sampling_check(c->t_sampling, c->loss.kind))
        return ddpm_error(DDPM_EFORMAT, "%s: checkpoint loss config is invalid: %s", what, ddpm_last_error());
    return DDPM_OK;
}

int ddpm_run_config_from_json(ddpm_run_config *c, const char *json, const char *what)
{
    return config_from_json(c, json, what, 1);
}

/* step_only: an export's state, the step alone. */
static int state_from_json(ddpm_train_state *st, const char *json, const char *what, int step_only)
{
    parse_ctx p = {.what = what};
    memset(st, 0, sizeof *st);
    cJSON *root = cJSON_Parse(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: state is not a JSON object", what);
    }
    st->step = (long)get_num(&p, root, "state", "step", 0, 1e15);
    if (step_only) {
        cJSON_Delete(root);
        return p.err;
    }
    st->noise_counter = get_u64(&p, root, "state", "noise_counter");
    st->dropout_counter = get_u64(&p, root, "state", "dropout_counter");
    st->data_epoch = get_u64(&p, root, "state", "data_epoch");
    st->data_position = get_int(&p, root, "state", "data_position", 0, 1 << 30);
    st->elapsed_seconds = get_num(&p, root, "state", "elapsed_seconds", 0, 1e12);
    /* added later: optional, so that older checkpoints still load */
    if (cJSON_GetObjectItemCaseSensitive(root, "stop_step"))
        st->stop_step = (long)get_num(&p, root, "state", "stop_step", 0, 1e15);
    if (cJSON_GetObjectItemCaseSensitive(root, "stop_elapsed_seconds"))
        st->stop_elapsed_seconds = get_num(&p, root, "state", "stop_elapsed_seconds", 0, 1e12);
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(root, "data_fingerprint");
    if (fp && !p.err) {
        if (!cJSON_IsString(fp) || strlen(fp->valuestring) >= sizeof st->data_fingerprint)
            p.err = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: state.data_fingerprint must be a short string",
                               what);
        else
            snprintf(st->data_fingerprint, sizeof st->data_fingerprint, "%s", fp->valuestring);
    }
    cJSON_Delete(root);
    return p.err;
}

int ddpm_train_state_from_json(ddpm_train_state *st, const char *json, const char *what)
{
    return state_from_json(st, json, what, 0);
}

/* ---------------------------------------------------------------- files */

/* The tensor sets of net that are not NULL, under their prefixes, then the
 * n_extra tensors of the run's state, with the metadata entries given. */
static int save_arenas(const char *path, const ddpm_unet *net, const float *const arenas[4],
                       const ddpm_st_tensor *extra, int n_extra, const ddpm_st_meta *meta, int n_meta,
                       char *sha256)
{
    const char *prefixes[4] = {"", "ema.", "adam_m.", "adam_v."};
    int n_sets = 0;
    for (int k = 0; k < 4; k++)
        n_sets += arenas[k] != NULL;
    size_t n = (size_t)n_sets * net->n_tensors + (size_t)n_extra;
    ddpm_st_tensor *t = ddpm_calloc(n, sizeof *t);
    char *names = ddpm_calloc(n, DDPM_MAX_NAME + 8);
    int rc = DDPM_ENOMEM;
    if (t && names) {
        size_t j = 0;
        for (int k = 0; k < 4; k++) {
            if (!arenas[k])
                continue;
            for (int i = 0; i < net->n_tensors; i++, j++) {
                const ddpm_tensor_info *ti = &net->tensors[i];
                char *name = names + j * (DDPM_MAX_NAME + 8);
                snprintf(name, DDPM_MAX_NAME + 8, "%s%s", prefixes[k], ti->name);
                t[j].name = name;
                t[j].data = arenas[k] + ti->offset;
                t[j].ndim = ti->ndim;
                for (int d = 0; d < ti->ndim; d++)
                    t[j].shape[d] = ti->shape[d];
            }
        }
        for (int k = 0; k < n_extra; k++)
            t[j++] = extra[k];
        rc = ddpm_safetensors_write_sha256(path, t, (int)n, meta, n_meta, sha256);
    } else {
        ddpm_error(DDPM_ENOMEM, "%s: out of memory preparing the checkpoint", path);
    }
    free(t);
    free(names);
    return rc;
}

/* The class names as a JSON array (index strings when names is NULL). */
static char *class_names_to_json(const char *const *names, int n)
{
    cJSON *a = cJSON_CreateArray();
    char buf[16];
    for (int k = 0; a && k < n; k++) {
        snprintf(buf, sizeof buf, "%d", k);
        cJSON_AddItemToArray(a, cJSON_CreateString(names && names[k] ? names[k] : buf));
    }
    char *out = a ? cJSON_PrintUnformatted(a) : NULL;
    cJSON_Delete(a);
    return out;
}

int ddpm_checkpoint_save(const char *path, const ddpm_run_config *cfg, const ddpm_train_state *st,
                         const ddpm_unet *net, const float *params, const float *ema,
                         const float *adam_m, const float *adam_v, const char *const *class_names,
                         const ddpm_t_history *t_history, char *sha256)
{
    const float *const arenas[4] = {params, ema, adam_m, adam_v};
    /* the loss history as float32 tensors, so that they carry the file's CRC-32C;
       counts 0..10 are exact in float */
    float *counts = NULL;
    ddpm_st_tensor extra[2];
    int n_extra = 0;
    if (t_history) {
        if (!(counts = ddpm_malloc((size_t)t_history->T, sizeof *counts)))
            return ddpm_error(DDPM_ENOMEM, "%s: out of memory preparing the checkpoint", path);
        for (int i = 0; i < t_history->T; i++)
            counts[i] = (float)t_history->count[i];
        extra[0] = (ddpm_st_tensor){.name = DDPM_T_HISTORY_TENSOR, .data = t_history->loss, .ndim = 2,
                                    .shape = {t_history->T, DDPM_T_HISTORY}};
        extra[1] = (ddpm_st_tensor){.name = DDPM_T_COUNT_TENSOR, .data = counts, .ndim = 1, .shape = {t_history->T}};
        n_extra = 2;
    }
    char *config_json = ddpm_run_config_to_json(cfg), *state_json = ddpm_train_state_to_json(st);
    int n_classes = cfg->model.n_classes;
    char *classes_json = n_classes > 0 ? class_names_to_json(class_names, n_classes) : NULL;
    int rc;
    if (config_json && state_json && (n_classes == 0 || classes_json)) {
        char version[16];
        snprintf(version, sizeof version, "%d", DDPM_CHECKPOINT_FORMAT_VERSION);
        ddpm_st_meta meta[5] = {{"format", "ddpm"}, {"format_version", version}, {"config", config_json},
                                {"state", state_json}, {"classes", classes_json}};
        rc = save_arenas(path, net, arenas, extra, n_extra, meta, n_classes > 0 ? 5 : 4, sha256);
    } else {
        rc = ddpm_error(DDPM_ENOMEM, "%s: out of memory preparing the checkpoint", path);
    }
    free(counts);
    free(config_json);
    free(state_json);
    free(classes_json);
    return rc;
}

int ddpm_checkpoint_export(const ddpm_checkpoint *ck, const char *path, int raw, int *used_ema)
{
    ddpm_unet *net = NULL;
    float *params = NULL;
    int ema = 0;
    int rc = ddpm_checkpoint_load_model(ck, !raw, &net, &params, &ema);
    if (rc)
        return rc;
    /* the config without its train section, the state without the run's counters */
    char *full = ddpm_run_config_to_json(&ck->config), *config_json = NULL;
    cJSON *root = full ? cJSON_Parse(full) : NULL;
    if (root) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, "train");
        config_json = cJSON_PrintUnformatted(root);
    }
    char state_json[64], version[16];
    snprintf(state_json, sizeof state_json, "{\"step\":%ld}", ck->state.step);
    snprintf(version, sizeof version, "%d", DDPM_CHECKPOINT_FORMAT_VERSION);
    int n_classes = ck->config.model.n_classes;
    char *classes_json =
        n_classes > 0 ? class_names_to_json((const char *const *)ck->class_names, n_classes) : NULL;
    if (config_json && (n_classes == 0 || classes_json)) {
        ddpm_st_meta meta[6] = {{"format", "ddpm"}, {"format_version", version}, {"config", config_json},
                                {"state", state_json}, {"weights", ema ? "ema" : "raw"}, {"classes", classes_json}};
        const float *const arenas[4] = {params, NULL, NULL, NULL};
        rc = save_arenas(path, net, arenas, NULL, 0, meta, n_classes > 0 ? 6 : 5, NULL);
    } else {
        rc = ddpm_error(DDPM_ENOMEM, "%s: out of memory preparing the export", path);
    }
    cJSON_Delete(root);
    free(full);
    free(config_json);
    free(classes_json);
    free(params);
    ddpm_unet_free(net);
    if (!rc && used_ema)
        *used_ema = ema;
    return rc;
}

/* The "classes" metadata of a conditional model: a JSON array of n_classes
 * non-empty strings. */
static int read_class_names(ddpm_checkpoint *ck, const char *path)
{
    int n = ck->config.model.n_classes;
    const char *json = ddpm_safetensors_meta(ck->file, "classes");
    if (!json)
        return ddpm_error(DDPM_EFORMAT, "%s: a model with %d classes has no class names in its metadata", path, n);
    cJSON *a = cJSON_Parse(json);
    int rc = DDPM_OK;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n)
        rc = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: classes must be a list of %d names", path, n);
    if (!rc && !(ck->class_names = ddpm_calloc((size_t)n, sizeof *ck->class_names)))
        rc = DDPM_ENOMEM;
    for (int k = 0; !rc && k < n; k++) {
        const char *name = cJSON_GetStringValue(cJSON_GetArrayItem(a, k));
        if (!name || !*name || strlen(name) > 255)
            rc = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata: class %d has no valid name", path, k);
        else if (!(ck->class_names[k] = strdup(name)))
            rc = ddpm_error(DDPM_ENOMEM, "%s: out of memory", path);
    }
    cJSON_Delete(a);
    return rc;
}

/* Validates the ddpm metadata of an opened container; takes ownership of file. */
static int checkpoint_from_file(ddpm_checkpoint **out, ddpm_st_file *file)
{
    ddpm_checkpoint *ck = ddpm_calloc(1, sizeof *ck);
    if (!ck) {
        ddpm_safetensors_close(file);
        return DDPM_ENOMEM;
    }
    ck->file = file;
    const char *path = ddpm_safetensors_path(file);
    const char *format = ddpm_safetensors_meta(ck->file, "format");
    const char *version = ddpm_safetensors_meta(ck->file, "format_version");
    const char *config = ddpm_safetensors_meta(ck->file, "config");
    const char *state = ddpm_safetensors_meta(ck->file, "state");
    int rc = 0;
    ck->weights = ddpm_safetensors_meta(ck->file, "weights");
    if (ck->weights && strcmp(ck->weights, "ema") && strcmp(ck->weights, "raw"))
        rc = ddpm_error(DDPM_EFORMAT, "%s: metadata 'weights' must be ema or raw", path);
    else if (!format || strcmp(format, "ddpm"))
        rc = ddpm_error(DDPM_EFORMAT, "%s: not a ddpm checkpoint (a safetensors file without ddpm metadata)", path);
    else if (!version || (strcmp(version, "1") && strcmp(version, "2")))
        rc = ddpm_error(DDPM_EFORMAT, "%s: checkpoint format version %.20s is not supported (this ddpm reads 1 to %d)",
                        path, version ? version : "(missing)", DDPM_CHECKPOINT_FORMAT_VERSION);
    /* Version 2 carries checksums of its header and of every tensor: without
       them it is damaged (a flipped bit in the key "header_crc32c" or "crc32c"),
       not an older file. Only version 1, written before header checksums, may
       lack them. */
    else if (strcmp(version, "1") && !ddpm_safetensors_header_checksummed(file))
        rc = ddpm_error(DDPM_EFORMAT, "%s: a format version %s checkpoint without its header checksum: the header is "
                        "damaged", path, version);
    else if (strcmp(version, "1") && !ddpm_safetensors_checksummed(file))
        rc = ddpm_error(DDPM_EFORMAT, "%s: a format version %s checkpoint without its tensor checksums: the header is "
                        "damaged", path, version);
    else if (!config || !state)
        rc = ddpm_error(DDPM_EFORMAT, "%s: checkpoint metadata lacks %s", path, config ? "state" : "config");
    else if (!(rc = config_from_json(&ck->config, config, path, !ck->weights)))
        rc = state_from_json(&ck->state, state, path, ck->weights != NULL);
    if (!rc && ck->config.model.n_classes > 0)
        rc = read_class_names(ck, path);
    if (!rc)
        ck->format_version = version[0] - '0';
    if (rc) {
        ddpm_checkpoint_close(ck);
        return rc;
    }
    *out = ck;
    return DDPM_OK;
}

int ddpm_checkpoint_open(ddpm_checkpoint **out, const char *path)
{
    *out = NULL;
    ddpm_st_file *file = NULL;
    int rc = ddpm_safetensors_open(&file, path);
    return rc ? rc : checkpoint_from_file(out, file);
}

int ddpm_checkpoint_open_memory(ddpm_checkpoint **out, const void *bytes, size_t n_bytes, const char *name)
{
    *out = NULL;
    ddpm_st_file *file = NULL;
    int rc = ddpm_safetensors_open_memory(&file, bytes, n_bytes, name);
    return rc ? rc : checkpoint_from_file(out, file);
}

int ddpm_checkpoint_checksummed(const ddpm_checkpoint *ck) { return ddpm_safetensors_checksummed(ck->file); }
int ddpm_checkpoint_format_version(const ddpm_checkpoint *ck) { return ck->format_version; }
int ddpm_checkpoint_header_checksummed(const ddpm_checkpoint *ck)
{
    return ddpm_safetensors_header_checksummed(ck->file);
}

void ddpm_checkpoint_close(ddpm_checkpoint *ck)
{
    if (!ck)
        return;
    ddpm_safetensors_close(ck->file);
    for (int k = 0; ck->class_names && k < ck->config.model.n_classes; k++)
        free(ck->class_names[k]);
    free(ck->class_names);
    free(ck);
}

const ddpm_run_config *ddpm_checkpoint_config(const ddpm_checkpoint *ck) { return &ck->config; }
const ddpm_train_state *ddpm_checkpoint_state(const ddpm_checkpoint *ck) { return &ck->state; }
const char *ddpm_checkpoint_path(const ddpm_checkpoint *ck) { return ddpm_safetensors_path(ck->file); }
const char *ddpm_checkpoint_weights(const ddpm_checkpoint *ck) { return ck->weights; }
const char *const *ddpm_checkpoint_class_names(const ddpm_checkpoint *ck)
{
    return (const char *const *)ck->class_names;
}

int ddpm_checkpoint_has(const ddpm_checkpoint *ck, const ddpm_unet *net, const char *prefix)
{
    char name[DDPM_MAX_NAME + 16];
    for (int i = 0; i < net->n_tensors; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, net->tensors[i].name);
        if (!ddpm_safetensors_find(ck->file, name))
            return 0;
    }
    return 1;
}

/* The tensor prefix + ti->name of the file, if its shape is ti's; else an error. */
static const ddpm_st_info *find_tensor(const ddpm_checkpoint *ck, const ddpm_tensor_info *ti, const char *prefix,
                                       char name[DDPM_MAX_NAME + 16], int *rc)
{
    const char *path = ddpm_checkpoint_path(ck);
    snprintf(name, DDPM_MAX_NAME + 16, "%s%s", prefix, ti->name);
    const ddpm_st_info *info = ddpm_safetensors_find(ck->file, name);
    if (!info) {
        *rc = ddpm_error(DDPM_EFORMAT, "%s: tensor %s is missing", path, name);
        return NULL;
    }
    int ok = info->ndim == ti->ndim;
    for (int d = 0; ok && d < ti->ndim; d++)
        ok = info->shape[d] == ti->shape[d];
    if (!ok) {
        *rc = ddpm_error(DDPM_EFORMAT, "%s: tensor %s has the wrong shape for the model in its config", path, name);
        return NULL;
    }
    return info;
}

/* Every tensor of net under prefix is in the file with its shape. Checked before
 * anything is allocated for them, so a config that claims a huge model cannot
 * ask for more memory than the file's own data holds. */
static int check_tensors(const ddpm_checkpoint *ck, const ddpm_unet *net, const char *prefix)
{
    char name[DDPM_MAX_NAME + 16];
    int rc = 0;
    for (int i = 0; i < net->n_tensors && !rc; i++)
        find_tensor(ck, &net->tensors[i], prefix, name, &rc);
    return rc;
}

int ddpm_checkpoint_read(const ddpm_checkpoint *ck, const ddpm_unet *net, const char *prefix, float *dst)
{
    char name[DDPM_MAX_NAME + 16];
    const char *path = ddpm_checkpoint_path(ck);
    for (int i = 0; i < net->n_tensors; i++) {
        const ddpm_tensor_info *ti = &net->tensors[i];
        int rc = 0;
        if (!find_tensor(ck, ti, prefix, name, &rc))
            return rc;
        float *x = dst + ti->offset;
        if ((rc = ddpm_safetensors_read_f32(ck->file, name, x, ti->n)))
            return rc;
        /* Poisoned weights (NaN or infinite) are refused: sampling with them gives
         * black images, and training from them carries the poison on. So are
         * weights no training makes (|w| > DDPM_MAX_ABS_WEIGHT: a 3e38 saturates
         * every pixel); Adam's moments need only be finite. */
        int is_weight = !strcmp(prefix, "") || !strcmp(prefix, "ema.");
        for (size_t k = 0; k < ti->n; k++) {
            if (!isfinite(x[k]))
                return ddpm_error(DDPM_EFORMAT, "%s: tensor %s holds %s at element %zu: the weights are unusable", path,
                                  name, isnan(x[k]) ? "NaN" : "an infinity", k);
            if (is_weight && fabsf(x[k]) > DDPM_MAX_ABS_WEIGHT)
                return ddpm_error(DDPM_EFORMAT,
                                  "%s: tensor %s holds %g at element %zu, beyond the %g no trained weight reaches: the "
                                  "weights are unusable",
                                  path, name, (double)x[k], k, DDPM_MAX_ABS_WEIGHT);
        }
    }
    return DDPM_OK;
}

int ddpm_checkpoint_tensor_count(const ddpm_checkpoint *ck) { return ddpm_safetensors_count(ck->file); }

const char *ddpm_checkpoint_tensor(const ddpm_checkpoint *ck, int i, int *ndim, int64_t shape[8])
{
    const ddpm_st_info *info = ddpm_safetensors_at(ck->file, i);
    if (!info)
        return NULL;
    *ndim = info->ndim;
    for (int d = 0; d < info->ndim && d < 8; d++)
        shape[d] = info->shape[d];
    return info->name;
}

int ddpm_checkpoint_load_model(const ddpm_checkpoint *ck, int prefer_ema, ddpm_unet **net, float **params,
                               int *used_ema)
{
    *net = NULL;
    *params = NULL;
    int rc = ddpm_unet_create(net, &ck->config.model);
    if (rc)
        return rc;
    *used_ema = prefer_ema && ddpm_checkpoint_has(ck, *net, "ema.");
    const char *prefix = *used_ema ? "ema." : "";
    rc = check_tensors(ck, *net, prefix);
    if (!rc && !(*params = ddpm_malloc((*net)->n_params, sizeof(float))))
        rc = DDPM_ENOMEM;
    if (!rc)
        rc = ddpm_checkpoint_read(ck, *net, prefix, *params);
    if (ck->weights) /* an export's plain names hold the weights it says */
        *used_ema = !strcmp(ck->weights, "ema");
    if (rc) {
        free(*params);
        ddpm_unet_free(*net);
        *params = NULL;
        *net = NULL;
    }
    return rc;
}

int ddpm_checkpoint_read_t_history(const ddpm_checkpoint *ck, ddpm_t_history *h)
{
    const char *path = ddpm_checkpoint_path(ck);
    int T = ck->config.timesteps;
    const ddpm_st_info *loss = ddpm_safetensors_find(ck->file, DDPM_T_HISTORY_TENSOR),
                       *count = ddpm_safetensors_find(ck->file, DDPM_T_COUNT_TENSOR);
    if (h->T != T)
        return ddpm_error(DDPM_EINVAL, "%s: a loss history of %d steps for a run of %d", path, h->T, T);
    if (!loss && !count) { /* written before importance sampling: an empty history */
        memset(h->loss, 0, (size_t)T * DDPM_T_HISTORY * sizeof *h->loss);
        memset(h->count, 0, (size_t)T * sizeof *h->count);
        return DDPM_OK;
    }
    if (!loss || !count || loss->ndim != 2 || loss->shape[0] != T || loss->shape[1] != DDPM_T_HISTORY ||
        count->ndim != 1 || count->shape[0] != T)
        return ddpm_error(DDPM_EFORMAT, "%s: the loss history (%s [%d, %d] and %s [%d]) is incomplete or of the wrong "
                          "shape", path, DDPM_T_HISTORY_TENSOR, T, DDPM_T_HISTORY, DDPM_T_COUNT_TENSOR, T);
    float *counts = ddpm_malloc((size_t)T, sizeof *counts);
    if (!counts)
        return DDPM_ENOMEM;
    int rc = ddpm_safetensors_read_f32(ck->file, DDPM_T_HISTORY_TENSOR, h->loss, (size_t)T * DDPM_T_HISTORY);
    if (!rc)
        rc = ddpm_safetensors_read_f32(ck->file, DDPM_T_COUNT_TENSOR, counts, (size_t)T);
    for (int i = 0; !rc && i < T; i++) {
        if (!(counts[i] >= 0 && counts[i] <= DDPM_T_HISTORY && counts[i] == floorf(counts[i])))
            rc = ddpm_error(DDPM_EFORMAT, "%s: %s[%d] is %g, not a count of 0..%d values", path, DDPM_T_COUNT_TENSOR, i,
                            counts[i], DDPM_T_HISTORY);
        else
            h->count[i] = (int)counts[i];
        for (int k = 0; !rc && k < DDPM_T_HISTORY; k++)
            if (!isfinite(h->loss[(size_t)i * DDPM_T_HISTORY + k]))
                rc = ddpm_error(DDPM_EFORMAT, "%s: %s holds a value that is not finite at step index %d", path,
                                DDPM_T_HISTORY_TENSOR, i);
    }
    free(counts);
    return rc;
}
