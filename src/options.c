/* options.c: the run config's option table and the functions that walk one
 * (options.h). */
#include "ddpm/options.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"

/* Enums are stored and read as int (ddpm_option_number, ddpm_option_parse). */
_Static_assert(sizeof(ddpm_prediction) == sizeof(int), "enum size");
_Static_assert(sizeof(ddpm_schedule_kind) == sizeof(int), "enum size");
_Static_assert(sizeof(ddpm_lr_schedule) == sizeof(int), "enum size");
_Static_assert(sizeof(ddpm_loss_kind) == sizeof(int), "enum size");
_Static_assert(sizeof(ddpm_t_sampling) == sizeof(int), "enum size");
_Static_assert(sizeof(ddpm_precision) == sizeof(int), "enum size");

/* The modules own their names; these adapt their functions to an int. */
static const char *prediction_name(int v) { return ddpm_prediction_name((ddpm_prediction)v); }
static const char *schedule_name(int v) { return ddpm_schedule_name((ddpm_schedule_kind)v); }
static const char *lr_schedule_name(int v) { return ddpm_lr_schedule_name((ddpm_lr_schedule)v); }
static const char *loss_name(int v) { return ddpm_loss_name((ddpm_loss_kind)v); }
static const char *t_sampling_name(int v) { return ddpm_t_sampling_name((ddpm_t_sampling)v); }
static const char *class_emb_init_name(int v) { return ddpm_class_emb_init_name((ddpm_class_emb_init)v); }
static const char *precision_name(int v) { return ddpm_precision_name((ddpm_precision)v); }

#define OFF(field) offsetof(ddpm_run_config, field)
#define FIXED DDPM_OPT_FIXED
#define OPTIONAL (DDPM_OPT_FIXED | DDPM_OPT_OPTIONAL)

/* Bounds: the widest range in which every value works. Where the command line
 * and the checkpoint reader used to disagree, that picked the reader's for
 * dropout, lr and ema (0.999, 0 and 1 all train) and min-SNR gamma (0 is "off",
 * which every checkpoint without weighting holds), and the command line's for
 * the betas (0 and 1 break the linear schedule). Rows without a flag are in the
 * checkpoint only. The order is the checkpoint's JSON order: keep it (the
 * bytes of a config are pinned by tests). */
const ddpm_option ddpm_run_config_options[] = {
    /* model */
    {.name = "channels", .metavar = "C", .section = "model", .key = "in_channels", .type = DDPM_OPT_INT,
     .offset = OFF(model.in_channels), .def = 1, .min = 1, .max = 3, .group = "data",
     .def_text = "1 if every pixel of every image has R = G = B, so gray pictures saved as RGB train as gray",
     .help = "1 or 3", .flags = FIXED},
    {.name = "size", .metavar = "S", .section = "model", .key = "image_size", .type = DDPM_OPT_INT,
     .offset = OFF(model.image_size), .def = 28, .min = 1, .max = 4096, .unit = "px", .group = "data",
     .def_text = "the shorter side of the most common image size in DATA_DIR",
     .help = "image side in pixels. Every image, square or not, is centre-cropped to its largest square, then "
             "resized to S x S (a 640x480 photo keeps its middle 480x480)",
     .flags = FIXED},
    {.name = "ch", .metavar = "N", .section = "model", .key = "ch", .type = DDPM_OPT_INT, .offset = OFF(model.ch),
     .def = 32, .min = 2, .max = 4096, .def_text = "from S, see above", .group = "model", .help = "base channels",
     .flags = FIXED},
    {.name = "ch-mult", .metavar = "LIST", .section = "model", .key = "ch_mult", .type = DDPM_OPT_LIST,
     .offset = OFF(model.ch_mult), .count_offset = OFF(model.n_levels), .def_list = "1,2,2", .min = 1, .max = 64,
     .min_count = 1, .def_text = "from S", .group = "model", .help = "channel multiplier per level",
     .flags = FIXED},
    {.name = "res-blocks", .metavar = "N", .section = "model", .key = "num_res_blocks", .type = DDPM_OPT_INT,
     .offset = OFF(model.num_res_blocks), .def = 2, .min = 1, .max = 16, .group = "model",
     .help = "ResBlocks per level", .flags = FIXED},
    {.name = "attn", .metavar = "LIST", .section = "model", .key = "attn_res", .type = DDPM_OPT_LIST,
     .offset = OFF(model.attn_res), .count_offset = OFF(model.n_attn), .def_list = "14", .min = 1, .max = 4096,
     .min_count = 0, .unit = "px", .def_text = "from S", .group = "model",
     .help = "resolutions with self-attention, '' for none", .flags = FIXED},
    {.name = "groups", .metavar = "N", .section = "model", .key = "groups", .type = DDPM_OPT_INT,
     .offset = OFF(model.groups), .def = 8, .min = 1, .max = 4096, .def_text = "from --ch", .group = "model",
     .help = "GroupNorm groups", .flags = FIXED},
    {.name = "dropout", .metavar = "P", .section = "model", .key = "dropout", .type = DDPM_OPT_FLOAT,
     .offset = OFF(model.dropout), .def = 0.1, .min = 0, .max = 0.999, .group = "model",
     .help = "dropout probability in ResBlocks", .flags = FIXED},
    {.section = "model", .key = "n_classes", .type = DDPM_OPT_INT, .offset = OFF(model.n_classes), .def = 0,
     .min = 0, .max = DDPM_MAX_CLASSES, .help = "classes of a class-conditional model (0: unconditional)",
     .flags = OPTIONAL},
    {.name = "prediction", .metavar = "KIND", .section = "model", .key = "prediction", .type = DDPM_OPT_ENUM,
     .offset = OFF(model.prediction), .def = DDPM_PRED_EPS, .name_of = prediction_name,
     .n_values = DDPM_N_PREDICTIONS, .group = "objective",
     .help = "what the network predicts: eps, x0, v, or mu (the posterior mean mu~, the DDPM paper's baseline)",
     .flags = OPTIONAL},
    {.name = "learn-sigma", .section = "model", .key = "learn_sigma", .type = DDPM_OPT_BOOL,
     .offset = OFF(model.learn_sigma), .def = 0, .def_text = "off", .group = "objective",
     .help = "learn the reverse variances (Nichol & Dhariwal 2021): the network also outputs v, and sigma^2 = "
             "exp((1+v)/2 log beta_t + (1-v)/2 log beta~_t) per value; needs --loss vlb (the bound trains mean and "
             "variance: the DDPM paper's learned diagonal Sigma) or hybrid (L_simple trains the mean, lambda vlb "
             "only the variance). ddpm sample and ddpm eval use the learned variances by default",
     .flags = OPTIONAL | DDPM_OPT_OMIT_DEFAULT},
    {.name = "scale-shift-norm", .section = "model", .key = "scale_shift_norm", .type = DDPM_OPT_BOOL,
     .offset = OFF(model.scale_shift_norm), .def = 0, .def_text = "off", .group = "model",
     .help = "AdaGN (guided-diffusion's use_scale_shift_norm): each ResBlock's second GroupNorm becomes "
             "GN(h) (1 + scale) + shift, with scale and shift a linear map of SiLU(temb) (timestep and class), "
             "zero at the start, in place of adding that map's output to h",
     .flags = OPTIONAL | DDPM_OPT_OMIT_DEFAULT},
    {.name = "class-emb-init", .metavar = "KIND", .section = "model", .key = "class_emb_init",
     .type = DDPM_OPT_ENUM, .offset = OFF(model.class_emb_init), .def = DDPM_CLASS_EMB_ZERO,
     .name_of = class_emb_init_name, .n_values = DDPM_N_CLASS_EMB_INITS, .group = "model",
     .help = "with --classes: the class embedding's initialisation, zero (a new model starts unconditional) or "
             "normal (N(0, 1) per element, as PyTorch's nn.Embedding); ddpm train --classes uses normal unless "
             "given, a config without the key means zero",
     .flags = OPTIONAL | DDPM_OPT_OMIT_DEFAULT},
    /* schedule */
    {.name = "schedule", .metavar = "NAME", .section = "schedule", .key = "kind", .type = DDPM_OPT_ENUM,
     .offset = OFF(schedule), .def = DDPM_SCHEDULE_LINEAR, .name_of = schedule_name, .n_values = 2,
     .group = "diffusion", .help = "the noise schedule: linear or cosine (Nichol & Dhariwal 2021)", .flags = FIXED},
    {.name = "timesteps", .metavar = "T", .section = "schedule", .key = "timesteps", .type = DDPM_OPT_INT,
     .offset = OFF(timesteps), .def = 1000, .min = 1, .max = 100000, .group = "diffusion",
     .help = "diffusion steps", .flags = FIXED},
    {.name = "beta-start", .metavar = "B", .section = "schedule", .key = "beta_start", .type = DDPM_OPT_DOUBLE,
     .offset = OFF(beta_start), .def = 1e-4, .min = 1e-12, .max = 0.999, .group = "diffusion",
     .help = "linear schedule's first beta", .flags = FIXED},
    {.name = "beta-end", .metavar = "B", .section = "schedule", .key = "beta_end", .type = DDPM_OPT_DOUBLE,
     .offset = OFF(beta_end), .def = 0.02, .min = 1e-12, .max = 0.999, .group = "diffusion",
     .help = "linear schedule's last beta", .flags = FIXED},
    /* train */
    {.name = "batch", .metavar = "N", .section = "train", .key = "batch", .type = DDPM_OPT_INT, .offset = OFF(batch),
     .def = 32, .min = 1, .max = 65536, .unit = "images", .group = "optimiser",
     .help = "images per step (docs/defaults.md)", .flags = FIXED},
    {.name = "lr", .metavar = "LR", .section = "train", .key = "lr", .type = DDPM_OPT_FLOAT, .offset = OFF(optim.lr),
     .def = 1e-3, .min = 0, .max = 10, .group = "optimiser", .help = "Adam learning rate after warm-up",
     .flags = FIXED},
    {.name = "warmup", .metavar = "N", .section = "train", .key = "warmup", .type = DDPM_OPT_INT,
     .offset = OFF(optim.warmup), .def = 100, .min = 0, .max = 1 << 30, .unit = "steps", .group = "optimiser",
     .help = "steps of linear learning-rate warm-up", .flags = FIXED},
    {.name = "lr-schedule", .metavar = "NAME", .section = "train", .key = "lr_schedule", .type = DDPM_OPT_ENUM,
     .offset = OFF(optim.lr_schedule), .def = DDPM_LR_CONSTANT, .name_of = lr_schedule_name, .n_values = 2,
     .group = "optimiser",
     .help = "learning rate after the warm-up: constant or cosine, a half cosine from --lr down to --lr-min at the "
             "run's final step, the stop step of --steps/--epochs (cosine needs one of them; a --minutes limit may "
             "stop the run before that step). Fixed in the checkpoint: a resumed run keeps it and stays at "
             "--lr-min past its end",
     .flags = OPTIONAL},
    {.name = "lr-min", .metavar = "LR", .section = "train", .key = "lr_min", .type = DDPM_OPT_FLOAT,
     .offset = OFF(optim.lr_min), .def = 0, .min = 0, .max = 10, .group = "optimiser",
     .help = "cosine's final learning rate; at most --lr", .flags = OPTIONAL},
    {.section = "train", .key = "lr_final_step", .type = DDPM_OPT_LONG, .offset = OFF(optim.lr_final_step),
     .def = 0, .min = 0, .max = 1e15, .help = "cosine: the 1-based step where the decay ends (the run's last)",
     .flags = OPTIONAL},
    {.section = "train", .key = "beta1", .type = DDPM_OPT_FLOAT, .offset = OFF(optim.beta1), .def = 0.9, .min = 0,
     .max = 1, .help = "Adam's beta1", .flags = FIXED},
    {.section = "train", .key = "beta2", .type = DDPM_OPT_FLOAT, .offset = OFF(optim.beta2), .def = 0.999, .min = 0,
     .max = 1, .help = "Adam's beta2", .flags = FIXED},
    {.section = "train", .key = "adam_eps", .type = DDPM_OPT_FLOAT, .offset = OFF(optim.eps), .def = 1e-8, .min = 0,
     .max = 1, .help = "Adam's epsilon", .flags = FIXED},
    {.name = "clip", .metavar = "X", .section = "train", .key = "clip", .type = DDPM_OPT_FLOAT,
     .offset = OFF(optim.clip), .def = 1.0, .min = 0, .max = 1e30, .group = "optimiser",
     .help = "max global gradient norm; 0: off", .flags = FIXED},
    {.name = "ema", .metavar = "D", .section = "train", .key = "ema", .type = DDPM_OPT_FLOAT,
     .offset = OFF(optim.ema_decay), .def = 0.999, .min = 0, .max = 1, .group = "optimiser",
     .help = "EMA decay, warmed up as min(D, (1+n)/(10+n)) after n updates, so D "
             "takes over after (10D-1)/(1-D) updates (8,990 for 0.999); 0: EMA = raw weights", .flags = FIXED},
    {.name = "flip", .section = "train", .key = "flip", .type = DDPM_OPT_BOOL, .offset = OFF(flip), .def = 0,
     .def_text = "off", .group = "data", .help = "random horizontal flips", .flags = FIXED},
    {.name = "seed", .metavar = "N", .section = "train", .key = "seed", .type = DDPM_OPT_U64, .offset = OFF(seed),
     .def = 0, .group = "optimiser", .help = "seed of every random choice", .flags = FIXED},
    {.name = "loss", .metavar = "KIND", .section = "train", .key = "loss", .type = DDPM_OPT_ENUM,
     .offset = OFF(loss.kind), .def = DDPM_LOSS_SIMPLE, .name_of = loss_name, .n_values = 3, .group = "objective",
     .help = "simple (L_simple, the MSE to the prediction's target), vlb (the variational bound with sigma_t^2 = "
             "beta_t: KL terms and the discretized decoder, in nats per dimension, times T), or hybrid (simple + "
             "lambda vlb)",
     .flags = OPTIONAL},
    {.name = "snr-weighting", .metavar = "min-snr:G", .prefix = "min-snr:", .section = "train", .key = "snr_gamma",
     .type = DDPM_OPT_FLOAT, .offset = OFF(loss.snr_gamma), .def = 0, .min = 0, .max = 1e6,
     .def_text = "off", .group = "objective",
     .help = "weight each image's MSE by min-SNR-gamma with gamma G (Hang et al. 2023; eps, x0 or v prediction; "
             "simple or hybrid loss); G 0: unweighted",
     .flags = OPTIONAL},
    {.name = "vlb-weight", .metavar = "L", .section = "train", .key = "vlb_weight", .type = DDPM_OPT_FLOAT,
     .offset = OFF(loss.vlb_weight), .def = 0.001, .min = 0, .max = 1e6, .group = "objective",
     .help = "lambda of --loss hybrid", .flags = OPTIONAL},
    {.name = "cond-drop", .metavar = "P", .section = "train", .key = "cond_drop", .type = DDPM_OPT_FLOAT,
     .offset = OFF(cond_drop), .def = 0.1, .min = 0, .max = 1, .group = "data",
     .help = "with --classes: probability that an image's label is dropped for classifier-free guidance",
     .flags = OPTIONAL},
    {.name = "t-sampling", .metavar = "KIND", .section = "train", .key = "t_sampling", .type = DDPM_OPT_ENUM,
     .offset = OFF(t_sampling), .def = DDPM_T_UNIFORM, .name_of = t_sampling_name, .n_values = 2,
     .group = "objective",
     .help = "how each image's t is drawn: uniform or importance (Nichol & Dhariwal 2021, sec. 3.3; --loss vlb or "
             "hybrid only): p_t proportional to sqrt(E[L_t^2]) over the last 10 values of step t's term, mixed with "
             "0.001 uniform so every p_t >= 0.001/T, and each image's term weighted by 1/(T p_t): an unbiased "
             "estimate of the same objective. t stays uniform until every t has 10 values (about 23,000 images at "
             "T 1000: 360 steps of batch 64). With hybrid the whole term (MSE + lambda vlb) is sampled and weighted. "
             "The history is saved in the checkpoint; the logged loss is the weighted estimate",
     .flags = OPTIONAL},
    {.name = "precision", .metavar = "P", .section = "train", .key = "precision", .type = DDPM_OPT_ENUM,
     .offset = OFF(precision), .def = DDPM_PRECISION_FP32, .name_of = precision_name, .n_values = 2,
     .group = "optimiser",
     .help = "arithmetic of the convolutions' and attention's products, forward and backward: fp32, or bf16 "
             "(products of bf16-rounded inputs accumulated in float32, AVX512_BF16 CPUs only; weights, gradients, "
             "Adam, GroupNorm, SiLU, softmax and the linears stay float32). A resumed run keeps its precision",
     .flags = FIXED | OPTIONAL | DDPM_OPT_OMIT_DEFAULT},
    {.type = DDPM_OPT_END},
};

const ddpm_option *ddpm_option_find(const ddpm_option *table, const char *name)
{
    for (const ddpm_option *o = table; o->type != DDPM_OPT_END; o++)
        if (o->name && !strcmp(o->name, name))
            return o;
    return NULL;
}

const ddpm_option *ddpm_option_find_key(const ddpm_option *table, const char *section, const char *key)
{
    for (const ddpm_option *o = table; o->type != DDPM_OPT_END; o++)
        if (o->section && !strcmp(o->section, section) && !strcmp(o->key, key))
            return o;
    return NULL;
}

static void *at(const ddpm_option *opt, void *base) { return (char *)base + opt->offset; }
static const void *cat(const ddpm_option *opt, const void *base) { return (const char *)base + opt->offset; }

static int is_integer_type(ddpm_opt_type t)
{
    return t == DDPM_OPT_INT || t == DDPM_OPT_LONG || t == DDPM_OPT_LIST;
}

int ddpm_option_in_bounds(const ddpm_option *opt, double v)
{
    if (is_integer_type(opt->type))
        return v >= opt->min && v <= opt->max && v == floor(v);
    if (opt->type == DDPM_OPT_FLOAT) { /* as stored: 0.99 read back from a file is (float)0.99 */
        if (!(v >= -3.4e38 && v <= 3.4e38))
            return 0;
        float f = (float)v;
        return f >= (float)opt->min && f <= (float)opt->max;
    }
    return v >= opt->min && v <= opt->max;
}

void ddpm_option_bounds(const ddpm_option *opt, char *buf, size_t size)
{
    if (is_integer_type(opt->type))
        snprintf(buf, size, "%.0f..%.0f", opt->min, opt->max);
    else
        snprintf(buf, size, "[%g, %g]", opt->min, opt->max);
}

double ddpm_option_number(const ddpm_option *opt, const void *base)
{
    const void *p = cat(opt, base);
    switch (opt->type) {
    case DDPM_OPT_INT:
    case DDPM_OPT_BOOL:
    case DDPM_OPT_ENUM: return *(const int *)p;
    case DDPM_OPT_LONG: return (double)*(const long *)p;
    case DDPM_OPT_FLOAT: return *(const float *)p;
    case DDPM_OPT_DOUBLE: return *(const double *)p;
    case DDPM_OPT_U64: return (double)*(const uint64_t *)p;
    default: return 0;
    }
}

/* Stores number v (already checked) in the option's type. */
static void set_number(const ddpm_option *opt, void *base, double v)
{
    void *p = at(opt, base);
    switch (opt->type) {
    case DDPM_OPT_INT:
    case DDPM_OPT_BOOL:
    case DDPM_OPT_ENUM: *(int *)p = (int)v; break;
    case DDPM_OPT_LONG: *(long *)p = (long)v; break;
    case DDPM_OPT_FLOAT: *(float *)p = (float)v; break;
    case DDPM_OPT_DOUBLE: *(double *)p = v; break;
    case DDPM_OPT_U64: *(uint64_t *)p = (uint64_t)v; break;
    default: break;
    }
}

void ddpm_option_set_default(const ddpm_option *opt, void *base)
{
    if (opt->type == DDPM_OPT_LIST) {
        int *n = (int *)((char *)base + opt->count_offset);
        *n = ddpm_parse_int_list(opt->def_list, at(opt, base), DDPM_MAX_LEVELS);
    } else if (opt->type == DDPM_OPT_STRING) {
        *(const char **)at(opt, base) = NULL;
    } else {
        set_number(opt, base, opt->def);
    }
}

/* "a, b or c" for an enum's names. */
static void enum_names(const ddpm_option *opt, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < opt->n_values && used < size; k++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s", k == 0 ? "" : k == opt->n_values - 1 ? " or " : ", ",
                                 opt->name_of(k));
}

static int refuse(const ddpm_option *opt, const char *text)
{
    char bounds[64], names[128];
    switch (opt->type) {
    case DDPM_OPT_INT:
    case DDPM_OPT_LONG:
        ddpm_option_bounds(opt, bounds, sizeof bounds);
        return ddpm_error(DDPM_EINVAL, "'%s' is not an integer in %s", text, bounds);
    case DDPM_OPT_FLOAT:
    case DDPM_OPT_DOUBLE:
        ddpm_option_bounds(opt, bounds, sizeof bounds);
        return ddpm_error(DDPM_EINVAL, "'%s' is not a number in %s", text, bounds);
    case DDPM_OPT_U64: return ddpm_error(DDPM_EINVAL, "'%s' is not a non-negative integer", text);
    case DDPM_OPT_ENUM:
        enum_names(opt, names, sizeof names);
        return ddpm_error(DDPM_EINVAL, "'%s' is not %s", text, names);
    case DDPM_OPT_LIST:
        ddpm_option_bounds(opt, bounds, sizeof bounds);
        return ddpm_error(DDPM_EINVAL, "'%s' is not a list of %d to %d integers in %s like %s", text,
                          opt->min_count, DDPM_MAX_LEVELS, bounds, opt->def_list);
    default: return ddpm_error(DDPM_EINVAL, "'%s' is not a valid value", text);
    }
}

int ddpm_option_parse(const ddpm_option *opt, void *base, const char *text)
{
    if (opt->type == DDPM_OPT_BOOL) {
        *(int *)at(opt, base) = 1;
        return DDPM_OK;
    }
    if (opt->type == DDPM_OPT_STRING) {
        *(const char **)at(opt, base) = text;
        return DDPM_OK;
    }
    const char *full = text;
    if (opt->prefix) {
        size_t n = strlen(opt->prefix);
        if (strncmp(text, opt->prefix, n))
            return ddpm_error(DDPM_EINVAL, "'%s' is not %s", full, opt->metavar);
        text += n;
    }
    if (opt->type == DDPM_OPT_ENUM) {
        for (int k = 0; k < opt->n_values; k++)
            if (!strcmp(text, opt->name_of(k))) {
                *(int *)at(opt, base) = k;
                return DDPM_OK;
            }
        return refuse(opt, full);
    }
    if (opt->type == DDPM_OPT_LIST) {
        int v[DDPM_MAX_LEVELS];
        int n = ddpm_parse_int_list(text, v, DDPM_MAX_LEVELS);
        int ok = n >= opt->min_count;
        for (int i = 0; ok && i < n; i++)
            ok = ddpm_option_in_bounds(opt, v[i]);
        if (!ok)
            return refuse(opt, full);
        memcpy(at(opt, base), v, (size_t)n * sizeof *v);
        *(int *)((char *)base + opt->count_offset) = n;
        return DDPM_OK;
    }
    char *end;
    errno = 0;
    if (opt->type == DDPM_OPT_U64) {
        unsigned long long v = strtoull(text, &end, 10);
        if (end == text || *end || errno || *text == '-')
            return refuse(opt, full);
        *(uint64_t *)at(opt, base) = (uint64_t)v;
        return DDPM_OK;
    }
    double v = is_integer_type(opt->type) ? (double)strtol(text, &end, 10) : strtod(text, &end);
    if (end == text || *end || errno || !ddpm_option_in_bounds(opt, v))
        return refuse(opt, full);
    set_number(opt, base, v);
    return DDPM_OK;
}

void ddpm_option_format(const ddpm_option *opt, const void *base, char *buf, size_t size)
{
    const void *p = cat(opt, base);
    switch (opt->type) {
    case DDPM_OPT_LIST:
        ddpm_format_int_list(buf, size, p, *(const int *)((const char *)base + opt->count_offset));
        break;
    case DDPM_OPT_STRING: snprintf(buf, size, "%s", *(const char *const *)p ? *(const char *const *)p : ""); break;
    case DDPM_OPT_U64: snprintf(buf, size, "%" PRIu64, *(const uint64_t *)p); break;
    case DDPM_OPT_ENUM: snprintf(buf, size, "%s", opt->name_of(*(const int *)p)); break;
    case DDPM_OPT_BOOL: snprintf(buf, size, "%s", *(const int *)p ? "on" : "off"); break;
    default: snprintf(buf, size, "%g", ddpm_option_number(opt, base)); break;
    }
}

int ddpm_option_check(const ddpm_option *opt, const void *base)
{
    const char *what = opt->name ? opt->name : opt->key;
    char bounds[64];
    ddpm_option_bounds(opt, bounds, sizeof bounds);
    if (opt->type == DDPM_OPT_LIST) {
        int n = *(const int *)((const char *)base + opt->count_offset);
        const int *v = cat(opt, base);
        if (n < opt->min_count || n > DDPM_MAX_LEVELS)
            return ddpm_error(DDPM_EINVAL, "%s must list %d to %d entries, got %d", what, opt->min_count,
                              DDPM_MAX_LEVELS, n);
        for (int i = 0; i < n; i++)
            if (!ddpm_option_in_bounds(opt, v[i]))
                return ddpm_error(DDPM_EINVAL, "%s entries must be in %s, got %d", what, bounds, v[i]);
        return DDPM_OK;
    }
    if (opt->type == DDPM_OPT_ENUM) {
        int v = *(const int *)cat(opt, base);
        if (v < 0 || v >= opt->n_values)
            return ddpm_error(DDPM_EINVAL, "unknown %s %d", what, v);
        return DDPM_OK;
    }
    if (opt->type == DDPM_OPT_BOOL) {
        int v = *(const int *)cat(opt, base);
        if (v != 0 && v != 1)
            return ddpm_error(DDPM_EINVAL, "%s must be 0 or 1, got %d", what, v);
        return DDPM_OK;
    }
    if (opt->type == DDPM_OPT_U64 || opt->type == DDPM_OPT_STRING)
        return DDPM_OK;
    double v = ddpm_option_number(opt, base);
    if (!ddpm_option_in_bounds(opt, v))
        return ddpm_error(DDPM_EINVAL, "%s must be in %s, got %g", what, bounds, v);
    return DDPM_OK;
}

int ddpm_run_config_check(const ddpm_run_config *c)
{
    for (const ddpm_option *o = ddpm_run_config_options; o->type != DDPM_OPT_END; o++) {
        int rc = ddpm_option_check(o, c);
        if (rc)
            return rc;
    }
    return DDPM_OK;
}
