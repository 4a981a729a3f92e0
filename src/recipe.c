/* recipe.c: a PNG's recipe <-> its tEXt chunks (see include/ddpm/recipe.h). */
#include "ddpm/recipe.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ddpm/error.h"

/* The fields in the order they are written. */
enum {
    F_SOFTWARE,
    F_SHA256,
    F_CHECKPOINT,
    F_STEP,
    F_WEIGHTS,
    F_SAMPLER,
    F_STEPS,
    F_ETA,
    F_VAR,
    F_CLIP,
    F_SEED,
    F_KIND,
    F_INDEX,
    F_COUNT,
    F_NROW,
    F_PAD,
    F_PAD_VALUE,
    F_COUNT_FIELDS
};
static const char *const keys[F_COUNT_FIELDS] = {
    "Software",        "ddpm:checkpoint_sha256",
    "ddpm:checkpoint", "ddpm:step",
    "ddpm:weights",    "ddpm:sampler",
    "ddpm:steps",      "ddpm:eta",
    "ddpm:var",        "ddpm:clip",
    "ddpm:seed",       "ddpm:kind",
    "ddpm:index",      "ddpm:count",
    "ddpm:nrow",       "ddpm:pad",
    "ddpm:pad_value",
};
static const char *const kind_names[3] = {"grid", "image", "trajectory"};

const char *ddpm_recipe_kind_name(ddpm_recipe_kind k)
{
    return k >= DDPM_RECIPE_GRID && k <= DDPM_RECIPE_TRAJECTORY ? kind_names[k] : "?";
}

int ddpm_recipe_to_text(const ddpm_recipe *r, ddpm_png_text *text, ddpm_recipe_storage *st, int *index_slot)
{
    char(*b)[72] = st->buf;
    snprintf(b[F_SOFTWARE], 72, "ddpm %s", r->version);
    snprintf(b[F_SHA256], 72, "%.64s", r->checkpoint_sha256);
    snprintf(b[F_STEP], 72, "%ld", r->step);
    snprintf(b[F_WEIGHTS], 72, "%s", r->ema ? "ema" : "raw");
    snprintf(b[F_SAMPLER], 72, "%s", r->sampler.kind == DDPM_SAMPLER_DDIM ? "ddim" : "ddpm");
    snprintf(b[F_STEPS], 72, "%d", r->sampler.steps);
    snprintf(b[F_ETA], 72, "%.9g", (double)r->sampler.eta);
    snprintf(b[F_VAR], 72, "%s", r->sampler.var == DDPM_VAR_BETA_TILDE ? "beta-tilde" : "beta");
    snprintf(b[F_CLIP], 72, "%d", r->sampler.clip_x0 ? 1 : 0);
    snprintf(b[F_SEED], 72, "%" PRIu64, r->seed);
    snprintf(b[F_KIND], 72, "%s", ddpm_recipe_kind_name(r->kind));
    snprintf(b[F_INDEX], 72, "%d", r->first_index);
    snprintf(b[F_COUNT], 72, "%d", r->count);
    snprintf(b[F_NROW], 72, "%d", r->nrow);
    snprintf(b[F_PAD], 72, "%d", r->pad);
    snprintf(b[F_PAD_VALUE], 72, "%d", r->pad_value);
    for (int i = 0; i < F_COUNT_FIELDS; i++)
        text[i] = (ddpm_png_text){keys[i], i == F_CHECKPOINT ? r->checkpoint : b[i]};
    if (index_slot)
        *index_slot = F_INDEX;
    return F_COUNT_FIELDS;
}

/* ---------------------------------------------------------------- reading */

typedef struct {
    ddpm_recipe *r;
    const char *name;
    unsigned seen;
    int any; /* a ddpm chunk was met */
} parse_state;

static int bad_value(const parse_state *p, const char *key, const char *value)
{
    return ddpm_error(DDPM_EFORMAT, "%s: recipe field %s has a bad value '%.64s'", p->name, key, value);
}

/* A decimal integer in [lo, hi], the whole string. */
static int parse_long(const char *s, long long lo, long long hi, long long *out)
{
    if (!(*s >= '0' && *s <= '9') && *s != '-')
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int pick(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

static int on_text(void *ctx, const char *key, const char *value)
{
    parse_state *p = ctx;
    int f = pick(key, keys, F_COUNT_FIELDS);
    if (f < 0)
        return 0; /* not ours, or a field of a later version */
    if (f == F_SOFTWARE && strncmp(value, "ddpm ", 5))
        return 0; /* another program's Software chunk */
    p->any = 1;
    if (p->seen & (1u << f))
        return ddpm_error(DDPM_EFORMAT, "%s: recipe field %s appears twice", p->name, key);
    p->seen |= 1u << f;
    ddpm_recipe *r = p->r;
    long long v = 0;
    int bad = 0;
    static const char *const samplers[2] = {"ddpm", "ddim"}, *const vars[2] = {"beta", "beta-tilde"},
                             *const weights[2] = {"raw", "ema"};
    switch (f) {
    case F_SOFTWARE:
        bad = strlen(value + 5) >= sizeof r->version;
        if (!bad)
            snprintf(r->version, sizeof r->version, "%s", value + 5);
        break;
    case F_SHA256: {
        size_t n = strlen(value);
        bad = n != 0 && n != 64;
        for (size_t i = 0; !bad && i < n; i++)
            bad = !((value[i] >= '0' && value[i] <= '9') || (value[i] >= 'a' && value[i] <= 'f'));
        if (!bad)
            snprintf(r->checkpoint_sha256, sizeof r->checkpoint_sha256, "%s", value);
        break;
    }
    case F_CHECKPOINT:
        bad = strlen(value) >= sizeof r->checkpoint;
        if (!bad)
            snprintf(r->checkpoint, sizeof r->checkpoint, "%s", value);
        break;
    case F_STEP:
        bad = parse_long(value, 0, 1000000000000000LL, &v);
        r->step = (long)v;
        break;
    case F_WEIGHTS:
        r->ema = pick(value, weights, 2);
        bad = r->ema < 0;
        break;
    case F_SAMPLER:
        v = pick(value, samplers, 2);
        bad = v < 0;
        r->sampler.kind = v == 1 ? DDPM_SAMPLER_DDIM : DDPM_SAMPLER_DDPM;
        break;
    case F_STEPS:
        bad = parse_long(value, 1, 100000, &v);
        r->sampler.steps = (int)v;
        break;
    case F_ETA: {
        char *end;
        errno = 0;
        float eta = strtof(value, &end);
        bad = end == value || *end || errno || !(eta >= 0 && eta <= 1);
        r->sampler.eta = bad ? 0 : eta;
        break;
    }
    case F_VAR:
        v = pick(value, vars, 2);
        bad = v < 0;
        r->sampler.var = v == 1 ? DDPM_VAR_BETA_TILDE : DDPM_VAR_BETA;
        break;
    case F_CLIP:
        bad = parse_long(value, 0, 1, &v);
        r->sampler.clip_x0 = (int)v;
        break;
    case F_SEED: {
        char *end;
        errno = 0;
        unsigned long long s = *value >= '0' && *value <= '9' ? strtoull(value, &end, 10) : 0;
        bad = !(*value >= '0' && *value <= '9') || *end || errno;
        r->seed = (uint64_t)s;
        break;
    }
    case F_KIND:
        v = pick(value, kind_names, 3);
        bad = v < 0;
        r->kind = v == 2 ? DDPM_RECIPE_TRAJECTORY : v == 1 ? DDPM_RECIPE_IMAGE : DDPM_RECIPE_GRID;
        break;
    case F_INDEX:
        bad = parse_long(value, 0, 999999999, &v);
        r->first_index = (int)v;
        break;
    case F_COUNT:
        bad = parse_long(value, 1, 1000000, &v);
        r->count = (int)v;
        break;
    case F_NROW:
        bad = parse_long(value, 1, 100000, &v);
        r->nrow = (int)v;
        break;
    case F_PAD:
        bad = parse_long(value, 0, 1000, &v);
        r->pad = (int)v;
        break;
    case F_PAD_VALUE:
        bad = parse_long(value, 0, 255, &v);
        r->pad_value = (int)v;
        break;
    }
    return bad ? bad_value(p, key, value) : 0;
}

int ddpm_recipe_parse_png(ddpm_recipe *r, const uint8_t *bytes, size_t n, const char *name)
{
    memset(r, 0, sizeof *r);
    parse_state p = {r, name, 0, 0};
    int rc = ddpm_png_read_text(bytes, n, name, on_text, &p);
    if (rc)
        return rc;
    if (!p.any)
        return 0;
    for (int f = 0; f < F_COUNT_FIELDS; f++)
        if (!(p.seen & (1u << f)))
            return ddpm_error(DDPM_EFORMAT, "%s: the ddpm recipe lacks %s", name, keys[f]);
    if (r->kind == DDPM_RECIPE_IMAGE && r->count != 1)
        return ddpm_error(DDPM_EFORMAT, "%s: the recipe of one image says count %d", name, r->count);
    if (r->first_index > 999999999 - r->count)
        return ddpm_error(DDPM_EFORMAT, "%s: recipe index %d + count %d is out of range", name,
                          r->first_index, r->count);
    return 1;
}

int ddpm_recipe_read_png(ddpm_recipe *r, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (1LL << 30)) {
        fclose(f);
        return ddpm_error(DDPM_EIO, "%s: not a regular file of at most 1 GiB", path);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *bytes = ddpm_malloc(n ? n : 1, 1);
    if (!bytes) {
        fclose(f);
        return DDPM_ENOMEM;
    }
    int ok = fread(bytes, 1, n, f) == n;
    fclose(f);
    int rc = ok ? ddpm_recipe_parse_png(r, bytes, n, path) : ddpm_error(DDPM_EIO, "%s: read error", path);
    free(bytes);
    return rc;
}
