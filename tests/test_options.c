/* Tests of the option table (options.h): that the table, `ddpm train --help`
 * and the checkpoint's config agree, and that a value outside an option's
 * bounds is refused with the same bounds on the command line and in a
 * checkpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ddpm/checkpoint.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/options.h"
#include "testutil.h"

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(tmp, sizeof tmp, "options"))
        return -1;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data", tmp);
    if (mkdir(dir, 0777))
        return -1;
    uint8_t px[64];
    for (int k = 0; k < 6; k++) {
        for (int i = 0; i < 64; i++)
            px[i] = (uint8_t)((i * (k + 3) * 5) & 255);
        char path[600];
        snprintf(path, sizeof path, "%s/%02d.png", dir, k);
        if (ddpm_png_write(path, px, 8, 8, 1))
            return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

static const ddpm_option *row(const char *section, const char *key)
{
    const ddpm_option *o = ddpm_option_find_key(ddpm_run_config_options, section, key);
    assert_non_null(o);
    return o;
}

/* Whether option o holds the same value in a and b. */
static int same_value(const ddpm_option *o, const ddpm_run_config *a, const ddpm_run_config *b)
{
    char x[256], y[256];
    ddpm_option_format(o, a, x, sizeof x);
    ddpm_option_format(o, b, y, sizeof y);
    return !strcmp(x, y) && ddpm_option_number(o, a) == ddpm_option_number(o, b);
}

/* Every option with a flag is in `ddpm train --help`, and its entry shows the
 * table's default (or the row's own words for a data-driven one). */
static void test_every_flag_of_the_table_is_in_the_help_with_its_default(void **state)
{
    (void)state;
    assert_int_equal(tu_ddpm(tmp, "train --help"), 0);
    char *help = tu_slurp(tmp, "out.txt", NULL);
    assert_non_null(help);
    ddpm_run_config d;
    ddpm_run_config_default(&d);
    int n_flags = 0;
    for (const ddpm_option *o = ddpm_run_config_options; o->type != DDPM_OPT_END; o++) {
        if (!o->name)
            continue;
        n_flags++;
        char flag[96], want[300], value[256];
        /* with its metavar: the model heading's prose starts a line with "--ch-mult 1,2,2" */
        snprintf(flag, sizeof flag, "\n  --%s %s", o->name, o->metavar ? o->metavar : "");
        const char *at = strstr(help, flag);
        if (!at)
            fail_msg("--%s is not in ddpm train --help", o->name);
        /* the entry runs to the next flag or heading; join its lines */
        char entry[4096];
        size_t n = 0;
        for (const char *p = at + 1; *p && n + 1 < sizeof entry; p++) {
            if (*p == '\n' && (p[1] != ' ' || !strncmp(p + 1, "  --", 4)))
                break;
            if (*p == '\n' || (*p == ' ' && n && entry[n - 1] == ' '))
                continue;
            entry[n++] = *p == '\n' ? ' ' : *p;
        }
        entry[n] = '\0';
        if (o->def_text)
            snprintf(value, sizeof value, "%s", o->def_text);
        else
            ddpm_option_format(o, &d, value, sizeof value);
        snprintf(want, sizeof want, "(default %s", value);
        if (!strstr(entry, want))
            fail_msg("--%s: '%s' is not in its help entry '%s'", o->name, want, entry);
    }
    assert_true(n_flags >= 25);
    free(help);
}

/* A config with every option at a value other than its default (and a
 * combination the checks accept) goes through the checkpoint's JSON and
 * comes back the same, option by option and byte by byte. */
static void test_every_option_round_trips_through_the_checkpoint_config(void **state)
{
    (void)state;
    ddpm_run_config c, d, back;
    ddpm_run_config_default(&c);
    ddpm_run_config_default(&d);
    ddpm_unet_config *m = &c.model;
    m->in_channels = 3, m->image_size = 16, m->ch = 16;
    m->n_levels = 2, m->ch_mult[0] = 1, m->ch_mult[1] = 3;
    m->num_res_blocks = 3, m->n_attn = 2, m->attn_res[0] = 8, m->attn_res[1] = 16;
    m->groups = 4, m->dropout = 0.25f, m->n_classes = 7, m->prediction = DDPM_PRED_V, m->learn_sigma = 1;
    m->scale_shift_norm = 1, m->class_emb_init = DDPM_CLASS_EMB_NORMAL;
    c.schedule = DDPM_SCHEDULE_COSINE, c.timesteps = 321, c.beta_start = 2e-4, c.beta_end = 0.03;
    c.batch = 9, c.optim.lr = 3e-4f, c.optim.warmup = 7, c.optim.lr_schedule = DDPM_LR_COSINE;
    c.optim.lr_min = 1e-5f, c.optim.lr_final_step = 999, c.optim.beta1 = 0.8f, c.optim.beta2 = 0.99f;
    c.optim.eps = 1e-7f, c.optim.clip = 2.5f, c.optim.ema_decay = 0.99f, c.flip = 1;
    c.seed = 9223372036854775813ull; /* above 2^53: a double would round it */
    c.loss.kind = DDPM_LOSS_HYBRID, c.loss.snr_gamma = 5, c.loss.vlb_weight = 0.01f, c.cond_drop = 0.25f;
    c.t_sampling = DDPM_T_IMPORTANCE, c.precision = DDPM_PRECISION_BF16;
    assert_int_equal(ddpm_run_config_check(&c), 0);
    for (const ddpm_option *o = ddpm_run_config_options; o->type != DDPM_OPT_END; o++)
        if (same_value(o, &c, &d))
            fail_msg("%s.%s is at its default: give it another value here", o->section, o->key);
    char *json = ddpm_run_config_to_json(&c);
    assert_non_null(json);
    assert_int_equal(ddpm_run_config_from_json(&back, json, "x.safetensors"), 0);
    for (const ddpm_option *o = ddpm_run_config_options; o->type != DDPM_OPT_END; o++)
        if (!same_value(o, &c, &back))
            fail_msg("%s.%s did not survive the round trip", o->section, o->key);
    char *again = ddpm_run_config_to_json(&back);
    assert_string_equal(json, again);
    free(again);
    free(json);
    /* and the defaults come back as themselves, learn_sigma, scale_shift_norm and
       class_emb_init written not at all (the configs of older files keep their bytes) */
    json = ddpm_run_config_to_json(&d);
    assert_null(strstr(json, "learn_sigma"));
    assert_null(strstr(json, "scale_shift_norm"));
    assert_null(strstr(json, "class_emb_init"));
    assert_int_equal(ddpm_run_config_from_json(&back, json, "x.safetensors"), 0);
    for (const ddpm_option *o = ddpm_run_config_options; o->type != DDPM_OPT_END; o++)
        assert_true(same_value(o, &d, &back));
    free(json);
}

/* An option that is optional in a checkpoint, left out, reads as its default;
 * a required one left out is refused naming it. */
static void test_an_absent_optional_key_is_its_default_and_a_required_one_is_refused(void **state)
{
    (void)state;
    ddpm_run_config c, back;
    ddpm_run_config_default(&c);
    c.cond_drop = 0.5f, c.loss.vlb_weight = 0.5f;
    char *json = ddpm_run_config_to_json(&c);
    char *p = strstr(json, ",\"cond_drop\":0.5"), cut[4096];
    assert_non_null(p);
    snprintf(cut, sizeof cut, "%.*s%s", (int)(p - json), json, p + strlen(",\"cond_drop\":0.5"));
    assert_int_equal(ddpm_run_config_from_json(&back, cut, "old.safetensors"), 0);
    assert_true(back.cond_drop == (float)row("train", "cond_drop")->def);
    assert_true(back.loss.vlb_weight == 0.5f);
    p = strstr(json, ",\"warmup\":100");
    assert_non_null(p);
    snprintf(cut, sizeof cut, "%.*s%s", (int)(p - json), json, p + strlen(",\"warmup\":100"));
    assert_true(ddpm_run_config_from_json(&back, cut, "old.safetensors") < 0);
    assert_non_null(strstr(ddpm_last_error(), "train.warmup is missing"));
    free(json);
}

/* Replaces the number after the config key `key` in the checkpoint file at
 * path with `number` of the same length (the header keeps its size), and
 * re-seals the header checksum: what is tested is the value's check. */
static void patch_config_number(const char *path, const char *key, const char *number)
{
    size_t size;
    unsigned char *b = tu_read_file(path, &size);
    assert_non_null(b);
    char pattern[64];
    snprintf(pattern, sizeof pattern, "%s\\\":", key); /* the config is a JSON string in the header */
    unsigned char *at = NULL;
    for (size_t i = 0; i + strlen(pattern) < size && !at; i++)
        if (!memcmp(b + i, pattern, strlen(pattern)))
            at = b + i + strlen(pattern);
    assert_non_null(at);
    size_t n = strspn((const char *)at, "0123456789.e+-");
    assert_int_equal(n, strlen(number));
    memcpy(at, number, n);
    assert_int_equal(tu_reseal_header(b, size), 0); /* a forged file: its checksum matches */
    assert_int_equal(tu_write_file(path, b, size), 0);
    free(b);
}

/* stderr (err.txt) is one line "ddpm: ..." holding both needles. */
static void assert_one_line(const char *a, const char *b)
{
    char *err = tu_slurp(tmp, "err.txt", NULL);
    assert_non_null(err);
    int ok = !strncmp(err, "ddpm: ", 6) && strstr(err, a) && strstr(err, b) && strchr(err, '\n') &&
             strchr(err, '\n')[1] == '\0';
    if (!ok)
        fail_msg("stderr '%s' is not one line with '%s' and '%s'", err, a, b);
    free(err);
}

#define TINY "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 20 --batch 2 --preview-n 0 --quiet"

/* The bug of the issue: min-SNR gamma was 1e-6..1e6 on the command line and
 * 0..1e6 in a checkpoint. Now one row holds the bounds, and the command line
 * (exit 2) and a checkpoint (exit 1) refuse a value outside them with the
 * same bounds in one line; so does cond_drop. */
static void test_out_of_range_values_are_refused_with_the_same_bounds_on_the_cli_and_in_a_checkpoint(void **state)
{
    (void)state;
    const struct {
        const char *flag, *cli_value, *key, *ckpt_value, *bad_value;
    } cases[2] = {
        {"snr-weighting", "min-snr:2000000", "snr_gamma", "1000000", "2000000"},
        {"cond-drop", "1.5", "cond_drop", "0.10000000149011612", "1.50000000000000000"},
    };
    char ckpt[600];
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoint.safetensors", tmp);
    assert_int_equal(tu_ddpm(tmp, "train data --out run " TINY " --steps 1 --snr-weighting min-snr:1000000"), 0);
    size_t size;
    unsigned char *good = tu_read_file(ckpt, &size);
    assert_non_null(good);
    for (int k = 0; k < 2; k++) {
        char bounds[64], flag[64], key[64];
        ddpm_option_bounds(row("train", cases[k].key), bounds, sizeof bounds);
        snprintf(flag, sizeof flag, "--%s", cases[k].flag);
        snprintf(key, sizeof key, "train.%s", cases[k].key);
        assert_int_equal(tu_ddpm(tmp, "train data --out r2 " TINY " --steps 1 %s %s", flag, cases[k].cli_value), 2);
        assert_one_line(flag, bounds);
        assert_int_equal(tu_write_file(ckpt, good, size), 0);
        patch_config_number(ckpt, cases[k].key, cases[k].bad_value);
        assert_int_equal(tu_ddpm(tmp, "info run"), 1);
        assert_one_line(key, bounds);
        /* the library's check says the same */
        ddpm_run_config c;
        ddpm_run_config_default(&c);
        if (k == 0)
            c.loss.snr_gamma = 2e6f;
        else
            c.cond_drop = 1.5f;
        assert_true(ddpm_run_config_check(&c) < 0);
        assert_non_null(strstr(ddpm_last_error(), bounds));
    }
    /* in range, the patched file opens: what was refused is the value alone */
    assert_int_equal(tu_write_file(ckpt, good, size), 0);
    patch_config_number(ckpt, "cond_drop", "1.00000000000000000");
    assert_int_equal(tu_ddpm(tmp, "info run"), 0);
    /* gamma 0 is the bound's low end and means unweighted, as in every checkpoint */
    assert_int_equal(tu_ddpm(tmp, "train data --out r3 " TINY " --steps 1 --snr-weighting min-snr:0"), 0);
    free(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_flag_of_the_table_is_in_the_help_with_its_default),
        cmocka_unit_test(test_every_option_round_trips_through_the_checkpoint_config),
        cmocka_unit_test(test_an_absent_optional_key_is_its_default_and_a_required_one_is_refused),
        cmocka_unit_test(test_out_of_range_values_are_refused_with_the_same_bounds_on_the_cli_and_in_a_checkpoint),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
