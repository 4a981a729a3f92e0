/* options.h: every option of a run described once, as one row of a table
 * (FFmpeg's AVOption is the model): its flag, the key it has in a checkpoint's
 * config JSON, its type, default, bounds, unit, help line and whether a resumed
 * run may change it.
 *
 * The run config's table (ddpm_run_config_options) drives everything that
 * touches these values: ddpm_run_config_default, the range check
 * (ddpm_run_config_check), the checkpoint's config writer and reader
 * (checkpoint.h), and the command line of `ddpm train` (its getopt_long
 * options and its --help), so the bounds of an option are written in exactly
 * one place. A table of the same rows, with offsets into another struct, can
 * describe other flags (the CLI's session flags do). docs/design.md,
 * Extending, says how to add an option. */
#ifndef DDPM_OPTIONS_H
#define DDPM_OPTIONS_H

#include <stddef.h>

#include "ddpm/config.h"

typedef enum {
    DDPM_OPT_END = 0, /* the row that ends a table */
    DDPM_OPT_INT,     /* int */
    DDPM_OPT_LONG,    /* long */
    DDPM_OPT_FLOAT,   /* float (bounds compared in float, as stored) */
    DDPM_OPT_DOUBLE,  /* double */
    DDPM_OPT_BOOL,    /* int 0 or 1: a flag without a value; JSON true/false */
    DDPM_OPT_U64,     /* uint64_t: a decimal string in JSON (doubles cannot hold it) */
    DDPM_OPT_ENUM,    /* an enum stored as int: its names come from name(k), k < n_values */
    DDPM_OPT_LIST,    /* int array "1,2,2" with its count in the int at count_offset */
    DDPM_OPT_STRING,  /* const char * (a path); command line only */
} ddpm_opt_type;

enum {
    DDPM_OPT_FIXED = 1u << 0,        /* defines the run: refused with --resume */
    DDPM_OPT_OPTIONAL = 1u << 1,     /* may be absent from a checkpoint (older files): the default */
    DDPM_OPT_OMIT_DEFAULT = 1u << 2, /* written to JSON only when not the default */
};

typedef struct {
    const char *name;    /* the flag, --name; NULL: not on the command line */
    const char *metavar; /* the value in --help ("N", "LIST"); NULL for a bool */
    const char *prefix;  /* text the flag's value starts with ("min-snr:"), or NULL */
    const char *section; /* the checkpoint config's section ("model", "schedule",
                            "train"); NULL: not in the checkpoint */
    const char *key;     /* the JSON key in that section */
    ddpm_opt_type type;
    size_t offset;       /* of the value in the struct the table describes */
    size_t count_offset; /* LIST: of its int count */
    double def;          /* the default: a number, an enum's index, a bool's 0 or 1 */
    const char *def_list; /* LIST: the default as text ("1,2,2") */
    double min, max;     /* inclusive bounds of the value (LIST: of each entry) */
    int min_count;       /* LIST: fewest entries (the most is DDPM_MAX_LEVELS) */
    const char *(*name_of)(int value); /* ENUM: the name of a value */
    int n_values;        /* ENUM: values 0..n_values-1 */
    const char *unit;    /* after the default in --help ("steps"), or NULL */
    const char *def_text; /* --help's default when it is not the value (data-driven
                             ones: "from S"); NULL: the formatted default */
    const char *group;   /* --help's heading: "data", "model", "diffusion", ... */
    const char *help;    /* the help line(s), without the default */
    unsigned flags;      /* DDPM_OPT_* */
} ddpm_option;

/* The run config's options, in the order of the checkpoint's config JSON;
 * ended by a row of type DDPM_OPT_END. */
extern const ddpm_option ddpm_run_config_options[];

/* The row of `table` whose flag is `name`, or NULL. */
const ddpm_option *ddpm_option_find(const ddpm_option *table, const char *name);
/* The row of `table` with JSON section and key, or NULL. */
const ddpm_option *ddpm_option_find_key(const ddpm_option *table, const char *section, const char *key);

/* Sets the option in `base` (the struct the table describes) to its default. */
void ddpm_option_set_default(const ddpm_option *opt, void *base);
/* Parses `text` (after the row's prefix, which it must start with) into the
 * option in `base`, checking the type and bounds. 0, or DDPM_EINVAL with a
 * message "'TEXT' is not <what> <bounds>"; base is unchanged then. A BOOL takes
 * no text (NULL) and becomes 1. */
int ddpm_option_parse(const ddpm_option *opt, void *base, const char *text);
/* Whether number v is within the option's bounds (in the stored type: a FLOAT
 * is compared after rounding to float, an integer type must be whole). */
int ddpm_option_in_bounds(const ddpm_option *opt, double v);
/* The bounds as text: "1..100000" for integers, "[0, 1]" for reals; for a
 * LIST, an entry's. The same text in every message that refuses a value. */
void ddpm_option_bounds(const ddpm_option *opt, char *buf, size_t size);
/* The value in `base` as the command line writes it ("0.1", "1,2,2", "cosine",
 * "min-snr:5" without the prefix). */
void ddpm_option_format(const ddpm_option *opt, const void *base, char *buf, size_t size);
/* The number held by a numeric, BOOL or ENUM option in `base`. */
double ddpm_option_number(const ddpm_option *opt, const void *base);
/* Checks the option in `base` against its bounds: 0, or DDPM_EINVAL with
 * "<flag or key> must be <bounds>, got <value>". */
int ddpm_option_check(const ddpm_option *opt, const void *base);

/* Every option of c within its bounds (the first one that is not, in the
 * message). The combinations (min-SNR with mu, ...) are checked by their
 * modules (loss.h, timestep.h, unet.h). */
int ddpm_run_config_check(const ddpm_run_config *c);

#endif
