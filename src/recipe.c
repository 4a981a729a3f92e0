/* recipe.c: a PNG's recipe <-> its tEXt chunks (see include/ddpm/recipe.h). */
#include "ddpm/recipe.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    /* conditional samples */
    F_CLASS,
    F_CLASS_NAME,
    F_GRID_BY_CLASS,
    F_GUIDANCE,
    /* interpolation strips */
    F_SEEDS,
    F_AT,
    F_IMAGE_A,
    F_IMAGE_B,
    F_IMAGE_A_SHA256,
    F_IMAGE_B_SHA256,
    F_SOURCES,
    /* a solver row's step spacing */
    F_SPACING,
    /* a forward in bf16 (absent: float32) */
    F_PRECISION,
    F_COUNT_FIELDS
};
_Static_assert(F_COUNT_FIELDS <= 32 && (int)F_COUNT_FIELDS <= (int)DDPM_RECIPE_MAX_TEXT,
               "one bit and one text entry a field");
static const char *const keys[F_COUNT_FIELDS] = {
    "Software",
    "ddpm:checkpoint_sha256",
    "ddpm:checkpoint",
    "ddpm:step",
    "ddpm:weights",
    "ddpm:sampler",
    "ddpm:steps",
    "ddpm:eta",
    "ddpm:var",
    "ddpm:clip",
    "ddpm:seed",
    "ddpm:kind",
    "ddpm:index",
    "ddpm:count",
    "ddpm:nrow",
    "ddpm:pad",
    "ddpm:pad_value",
    "ddpm:class",
    "ddpm:class_name",
    "ddpm:grid_by_class",
    "ddpm:guidance",
    "ddpm:seeds",
    "ddpm:at",
    "ddpm:image_a",
    "ddpm:image_b",
    "ddpm:image_a_sha256",
    "ddpm:image_b_sha256",
    "ddpm:sources",
    "ddpm:spacing",
    "ddpm:precision",
};
static const char *const precision_names[2] = {"fp32", "bf16"};
enum { N_KINDS = 5 };
static const char *const kind_names[N_KINDS] = {"grid", "image", "trajectory", "interpolation-seeds",
                                                "interpolation-images"};

#define BIT(f) (1u << (f))
/* The fields every kind has, and what each kind adds (required, then optional). */
static const uint32_t common_fields = BIT(F_SOFTWARE) | BIT(F_SHA256) | BIT(F_CHECKPOINT) | BIT(F_STEP) |
                                      BIT(F_WEIGHTS) | BIT(F_SAMPLER) | BIT(F_STEPS) | BIT(F_ETA) |
                                      BIT(F_VAR) | BIT(F_CLIP) | BIT(F_KIND) | BIT(F_COUNT) | BIT(F_PAD) |
                                      BIT(F_PAD_VALUE);
static const uint32_t sample_fields = BIT(F_SEED) | BIT(F_INDEX) | BIT(F_NROW);
static const uint32_t class_fields =
    BIT(F_CLASS) | BIT(F_CLASS_NAME) | BIT(F_GRID_BY_CLASS) | BIT(F_GUIDANCE);
static const uint32_t seeds_fields = BIT(F_SEEDS);
static const uint32_t images_fields = BIT(F_AT) | BIT(F_SEED) | BIT(F_IMAGE_A) | BIT(F_IMAGE_B) |
                                      BIT(F_IMAGE_A_SHA256) | BIT(F_IMAGE_B_SHA256) | BIT(F_SOURCES);

static uint32_t required_fields(ddpm_recipe_kind k)
{
    return common_fields | (k == DDPM_RECIPE_INTERP_SEEDS    ? seeds_fields
                            : k == DDPM_RECIPE_INTERP_IMAGES ? images_fields
                                                             : sample_fields);
}

int ddpm_recipe_is_strip(ddpm_recipe_kind k)
{
    return k == DDPM_RECIPE_INTERP_SEEDS || k == DDPM_RECIPE_INTERP_IMAGES;
}

const char *ddpm_recipe_kind_name(ddpm_recipe_kind k)
{
    return k >= DDPM_RECIPE_GRID && k <= DDPM_RECIPE_INTERP_IMAGES ? kind_names[k] : "?";
}

void ddpm_recipe_init(ddpm_recipe *r)
{
    memset(r, 0, sizeof *r);
    r->class_index = DDPM_NO_CLASS;
    r->guidance = 1;
}

void ddpm_recipe_float_text(char out[32], float v)
{
    for (int digits = 1; digits <= 9; digits++) { /* 9 significant digits round-trip every float */
        snprintf(out, 32, "%.*g", digits, (double)v);
        if (strtof(out, NULL) == v)
            return;
    }
}

int ddpm_recipe_to_text(const ddpm_recipe *r, ddpm_png_text *text, ddpm_recipe_storage *st, int *index_slot)
{
    char(*b)[72] = st->buf;
    uint32_t fields = required_fields(r->kind);
    if (!ddpm_recipe_is_strip(r->kind) && r->class_index != DDPM_NO_CLASS)
        fields |= BIT(F_CLASS) | BIT(F_CLASS_NAME) | BIT(F_GUIDANCE);
    if (!ddpm_recipe_is_strip(r->kind) && r->grid_by_class > 0)
        fields |= BIT(F_GRID_BY_CLASS) | BIT(F_GUIDANCE);
    if (ddpm_sampler_has(r->sampler.kind, DDPM_SAMPLER_TAKES_SPACING))
        fields |= BIT(F_SPACING);
    if (r->precision == DDPM_PRECISION_BF16) /* float32 recipes keep the bytes they always had */
        fields |= BIT(F_PRECISION);
    snprintf(b[F_SOFTWARE], 72, "ddpm %s", r->version);
    snprintf(b[F_SHA256], 72, "%.64s", r->checkpoint_sha256);
    snprintf(b[F_STEP], 72, "%ld", r->step);
    snprintf(b[F_WEIGHTS], 72, "%s", r->ema ? "ema" : "raw");
    snprintf(b[F_SAMPLER], 72, "%s", ddpm_sampler_name(r->sampler.kind));
    snprintf(b[F_STEPS], 72, "%d", r->sampler.steps);
    snprintf(b[F_ETA], 72, "%.9g", (double)r->sampler.eta);
    snprintf(b[F_VAR], 72, "%s", ddpm_var_name(r->sampler.var));
    snprintf(b[F_CLIP], 72, "%d", r->sampler.clip_x0 ? 1 : 0);
    snprintf(b[F_SEED], 72, "%" PRIu64, r->seed);
    snprintf(b[F_KIND], 72, "%s", ddpm_recipe_kind_name(r->kind));
    snprintf(b[F_INDEX], 72, "%d", r->first_index);
    snprintf(b[F_COUNT], 72, "%d", r->count);
    snprintf(b[F_NROW], 72, "%d", r->nrow);
    snprintf(b[F_PAD], 72, "%d", r->pad);
    snprintf(b[F_PAD_VALUE], 72, "%d", r->pad_value);
    snprintf(b[F_CLASS], 72, "%d", r->class_index);
    snprintf(b[F_GRID_BY_CLASS], 72, "%d", r->grid_by_class);
    ddpm_recipe_float_text(b[F_GUIDANCE], r->guidance);
    snprintf(b[F_SEEDS], 72, "%" PRIu64 ",%" PRIu64, r->seed, r->seed_b);
    snprintf(b[F_AT], 72, "%d", r->at);
    snprintf(b[F_IMAGE_A_SHA256], 72, "%.64s", r->image_sha256[0]);
    snprintf(b[F_IMAGE_B_SHA256], 72, "%.64s", r->image_sha256[1]);
    snprintf(b[F_SOURCES], 72, "%d", r->sources ? 1 : 0);
    snprintf(b[F_SPACING], 72, "%s", ddpm_spacing_name(r->sampler.spacing));
    snprintf(b[F_PRECISION], 72, "%s", precision_names[r->precision == DDPM_PRECISION_BF16]);
    int n = 0;
    if (index_slot)
        *index_slot = -1;
    for (int f = 0; f < F_COUNT_FIELDS; f++) {
        if (!(fields & BIT(f)))
            continue;
        const char *value = f == F_CHECKPOINT   ? r->checkpoint
                            : f == F_CLASS_NAME ? r->class_name
                            : f == F_IMAGE_A    ? r->images[0]
                            : f == F_IMAGE_B    ? r->images[1]
                                                : b[f];
        if (f == F_INDEX && index_slot)
            *index_slot = n;
        text[n++] = (ddpm_png_text){keys[f], value};
    }
    return n;
}

/* ---------------------------------------------------------------- reading */

typedef struct {
    ddpm_recipe *r;
    const char *name;
    uint32_t seen;
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

/* An unsigned 64-bit decimal, digits only, ending at `stop` (or at the NUL). */
static int parse_u64(const char *s, char stop, uint64_t *out)
{
    if (!(*s >= '0' && *s <= '9'))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != stop || errno)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* A float written with %.9g, finite and in [lo, hi]. */
static int parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

/* Exactly 64 lowercase hex digits (empty too when allow_empty). */
static int parse_sha256(const char *s, int allow_empty, char out[65])
{
    size_t n = strlen(s);
    if (!(n == 64 || (allow_empty && n == 0)))
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return -1;
    memcpy(out, s, n + 1);
    return 0;
}

/* A string of 1..size-1 bytes (0..size-1 when allow_empty). */
static int parse_string(const char *s, int allow_empty, char *out, size_t size)
{
    size_t n = strlen(s);
    if (n >= size || (!allow_empty && n == 0))
        return -1;
    memcpy(out, s, n + 1);
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
    if (p->seen & BIT(f))
        return ddpm_error(DDPM_EFORMAT, "%s: recipe field %s appears twice", p->name, key);
    p->seen |= BIT(f);
    ddpm_recipe *r = p->r;
    long long v = 0;
    int bad = 0;
    static const char *const weights[2] = {"raw", "ema"};
    switch (f) {
    case F_SOFTWARE: bad = parse_string(value + 5, 1, r->version, sizeof r->version); break;
    case F_SHA256: bad = parse_sha256(value, 1, r->checkpoint_sha256); break;
    case F_CHECKPOINT: bad = parse_string(value, 1, r->checkpoint, sizeof r->checkpoint); break;
    case F_STEP:
        bad = parse_long(value, 0, 1000000000000000LL, &v);
        r->step = (long)v;
        break;
    case F_WEIGHTS:
        r->ema = pick(value, weights, 2);
        bad = r->ema < 0;
        break;
    case F_SAMPLER:
        bad = ddpm_sampler_parse(value, &r->sampler.kind) != 0;
        break;
    case F_STEPS:
        bad = parse_long(value, 1, 100000, &v);
        r->sampler.steps = (int)v;
        break;
    case F_ETA: bad = parse_float(value, 0, 1, &r->sampler.eta); break;
    case F_VAR:
        bad = ddpm_var_parse(value, &r->sampler.var) != 0;
        break;
    case F_CLIP:
        bad = parse_long(value, 0, 1, &v);
        r->sampler.clip_x0 = (int)v;
        break;
    case F_SEED: bad = parse_u64(value, '\0', &r->seed); break;
    case F_KIND:
        v = pick(value, kind_names, N_KINDS);
        bad = v < 0;
        r->kind = bad ? DDPM_RECIPE_GRID : (ddpm_recipe_kind)v;
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
    case F_CLASS:
        bad = parse_long(value, 0, 1000000, &v);
        r->class_index = bad ? DDPM_NO_CLASS : (int)v;
        break;
    case F_CLASS_NAME: bad = parse_string(value, 0, r->class_name, sizeof r->class_name); break;
    case F_GRID_BY_CLASS:
        bad = parse_long(value, 1, 1000000, &v);
        r->grid_by_class = (int)v;
        break;
    case F_GUIDANCE: bad = parse_float(value, 0, 1000, &r->guidance); break;
    case F_SEEDS: {
        const char *comma = strchr(value, ',');
        bad = !comma || parse_u64(value, ',', &r->seed) || parse_u64(comma + 1, '\0', &r->seed_b);
        break;
    }
    case F_AT:
        bad = parse_long(value, 1, 1000000, &v);
        r->at = (int)v;
        break;
    case F_IMAGE_A:
    case F_IMAGE_B: bad = parse_string(value, 0, r->images[f == F_IMAGE_B], sizeof r->images[0]); break;
    case F_IMAGE_A_SHA256:
    case F_IMAGE_B_SHA256: bad = parse_sha256(value, 0, r->image_sha256[f == F_IMAGE_B_SHA256]); break;
    case F_SOURCES:
        bad = parse_long(value, 0, 1, &v);
        r->sources = (int)v;
        break;
    case F_SPACING: bad = ddpm_spacing_parse(value, &r->sampler.spacing) != 0; break;
    case F_PRECISION:
        v = pick(value, precision_names, 2);
        bad = v < 0;
        r->precision = v == 1 ? DDPM_PRECISION_BF16 : DDPM_PRECISION_FP32;
        break;
    }
    return bad ? bad_value(p, key, value) : 0;
}

/* What the fields say together, once all are read. */
static int check_recipe(const ddpm_recipe *r, uint32_t seen, const char *name)
{
    const char *kind = ddpm_recipe_kind_name(r->kind);
    if (!(seen & BIT(F_KIND)))
        return ddpm_error(DDPM_EFORMAT, "%s: the ddpm recipe lacks %s", name, keys[F_KIND]);
    uint32_t required = required_fields(r->kind), allowed = required | BIT(F_PRECISION);
    if (!ddpm_recipe_is_strip(r->kind))
        allowed |= class_fields;
    if ((seen & BIT(F_SAMPLER)) && ddpm_sampler_has(r->sampler.kind, DDPM_SAMPLER_TAKES_SPACING))
        required |= BIT(F_SPACING), allowed |= BIT(F_SPACING);
    for (int f = 0; f < F_COUNT_FIELDS; f++) {
        if ((seen & BIT(f)) && !(allowed & BIT(f)))
            return ddpm_error(DDPM_EFORMAT, "%s: recipe field %s does not belong to a %s recipe", name,
                              keys[f], kind);
        if ((required & BIT(f)) && !(seen & BIT(f)))
            return ddpm_error(DDPM_EFORMAT, "%s: the ddpm recipe lacks %s", name, keys[f]);
    }
    if (ddpm_recipe_is_strip(r->kind)) {
        if (!ddpm_sampler_deterministic(r->sampler.kind, r->sampler.eta))
            return ddpm_error(DDPM_EFORMAT,
                              "%s: an interpolation strip is decoded with a deterministic sampler (DDIM at "
                              "eta 0 or an ODE solver); its recipe says %s, eta %g",
                              name, ddpm_sampler_name(r->sampler.kind), (double)r->sampler.eta);
        if (r->count < 2 || r->count > 100000)
            return ddpm_error(DDPM_EFORMAT,
                              "%s: an interpolation strip has 2..100000 images; its recipe says %d", name,
                              r->count);
        if (r->kind == DDPM_RECIPE_INTERP_IMAGES && r->sampler.steps > r->at)
            return ddpm_error(DDPM_EFORMAT, "%s: recipe steps %d are more than its step t %d", name,
                              r->sampler.steps, r->at);
        return 1;
    }
    if (r->kind == DDPM_RECIPE_IMAGE && r->count != 1)
        return ddpm_error(DDPM_EFORMAT, "%s: the recipe of one image says count %d", name, r->count);
    if (r->first_index > 999999999 - r->count)
        return ddpm_error(DDPM_EFORMAT, "%s: recipe index %d + count %d is out of range", name,
                          r->first_index, r->count);
    int has_class = (seen & BIT(F_CLASS)) != 0, by_class = (seen & BIT(F_GRID_BY_CLASS)) != 0;
    if (has_class != ((seen & BIT(F_CLASS_NAME)) != 0))
        return ddpm_error(DDPM_EFORMAT, "%s: the ddpm recipe has %s without %s", name,
                          keys[has_class ? F_CLASS : F_CLASS_NAME], keys[has_class ? F_CLASS_NAME : F_CLASS]);
    if (has_class && by_class)
        return ddpm_error(DDPM_EFORMAT, "%s: the ddpm recipe has both %s and %s", name, keys[F_CLASS],
                          keys[F_GRID_BY_CLASS]);
    if ((has_class || by_class) != ((seen & BIT(F_GUIDANCE)) != 0))
        return ddpm_error(DDPM_EFORMAT, "%s: the ddpm recipe has %s", name,
                          has_class || by_class ? "a class but no ddpm:guidance"
                                                : "ddpm:guidance but no class");
    if (by_class && r->kind == DDPM_RECIPE_IMAGE)
        return ddpm_error(DDPM_EFORMAT, "%s: the recipe of one image has %s (it names its class)", name,
                          keys[F_GRID_BY_CLASS]);
    if (by_class && r->kind == DDPM_RECIPE_GRID &&
        (r->nrow != r->grid_by_class || r->count % r->grid_by_class))
        return ddpm_error(DDPM_EFORMAT, "%s: a grid of %d images in rows of %d is not %d images per class",
                          name, r->count, r->nrow, r->grid_by_class);
    return 1;
}

int ddpm_recipe_parse_png(ddpm_recipe *r, const uint8_t *bytes, size_t n, const char *name)
{
    ddpm_recipe_init(r); /* recipes without the class fields are unconditional */
    parse_state p = {r, name, 0, 0};
    int rc = ddpm_png_read_text(bytes, n, name, on_text, &p);
    if (rc)
        return rc;
    if (!p.any)
        return 0;
    return check_recipe(r, p.seen, name);
}

int ddpm_recipe_check_classes(const ddpm_recipe *r, int n_classes, const char *const *names, const char *name)
{
    if (ddpm_recipe_is_strip(r->kind) || (r->class_index == DDPM_NO_CLASS && r->grid_by_class == 0))
        return DDPM_OK;
    if (n_classes <= 0) {
        if (r->class_index != DDPM_NO_CLASS)
            return ddpm_error(DDPM_EFORMAT,
                              "%s: its recipe samples class %d ('%s'), but the checkpoint is not "
                              "class-conditional",
                              name, r->class_index, r->class_name);
        return ddpm_error(DDPM_EFORMAT,
                          "%s: its recipe samples one row per class, but the checkpoint is not "
                          "class-conditional",
                          name);
    }
    if (r->class_index != DDPM_NO_CLASS && r->class_index >= n_classes)
        return ddpm_error(DDPM_EFORMAT,
                          "%s: recipe class %d ('%s') is out of range: the checkpoint has %d classes "
                          "(0..%d)",
                          name, r->class_index, r->class_name, n_classes, n_classes - 1);
    if (r->class_index != DDPM_NO_CLASS && names && strcmp(names[r->class_index], r->class_name))
        return ddpm_error(DDPM_EFORMAT, "%s: recipe class %d is '%s', but the checkpoint's class %d is '%s'",
                          name, r->class_index, r->class_name, r->class_index, names[r->class_index]);
    if (r->grid_by_class) {
        long total = (long)r->grid_by_class * n_classes;
        long want = r->kind == DDPM_RECIPE_TRAJECTORY && total > DDPM_TRAJECTORY_MAX_ROWS
                        ? DDPM_TRAJECTORY_MAX_ROWS
                        : total;
        if (r->count != want)
            return ddpm_error(DDPM_EFORMAT,
                              "%s: its recipe holds %d %s for %d images per class, but the "
                              "checkpoint's %d classes give %ld",
                              name, r->count, r->kind == DDPM_RECIPE_TRAJECTORY ? "rows" : "images",
                              r->grid_by_class, n_classes, want);
    }
    return DDPM_OK;
}

int ddpm_recipe_read_png(ddpm_recipe *r, const char *path)
{
    if (!path[0])
        return ddpm_error(DDPM_EIO, "the PNG's path is empty");
    /* O_NONBLOCK: a FIFO is refused by fstat below instead of blocking the open */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    FILE *f = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (1LL << 30) || !(f = fdopen(fd, "rb"))) {
        close(fd);
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
