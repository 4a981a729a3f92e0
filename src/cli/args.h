/* args.h: checked flag-value parsing for the subcommands. Each returns 0, or
 * prints "ddpm: --flag: <problem>" and returns -1 (the caller exits 2). */
#ifndef DDPM_CLI_ARGS_H
#define DDPM_CLI_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddpm/config.h"
#include "ddpm/model.h"
#include "ddpm/options.h"
#include "ddpm/platform.h"
#include "ddpm/sample.h"

int arg_int(const char *flag, const char *value, long lo, long hi, int *out);
int arg_long(const char *flag, const char *value, long lo, long hi, long *out);
int arg_double(const char *flag, const char *value, double lo, double hi, double *out);
int arg_float(const char *flag, const char *value, double lo, double hi, float *out);
int arg_u64(const char *flag, const char *value, uint64_t *out);
/* --var beta|beta-tilde (sample and eval). */
int arg_var(const char *value, ddpm_var_kind *out);
/* --precision fp32|bf16 (sample, interpolate, eval, bench): bf16 is refused
 * where ddpm_bf16_available() is 0, or when DDPM_NO_BF16 is set (the tests'
 * way to take the path of a CPU without AVX512_BF16). */
int arg_precision(const char *value, ddpm_precision *out);
/* 0 where bf16 runs; else -1 after the line arg_precision prints (ddpm train
 * --precision bf16, parsed by the option table, asks this). */
int arg_bf16_refused(void);
#define CLI_HELP_PRECISION                                                                            \
    "  --precision fp32|bf16  arithmetic of the network's convolutions and attention\n"           \
    "                       products (default fp32); bf16: their products take bf16\n"           \
    "                       inputs and accumulate in float32 (AVX512_BF16 CPUs\n"                 \
    "                       only; normalisation, activations and linears stay float32)\n"
/* --FLAG NAME of a sampler-table row (the message lists the rows), and
 * --FLAG time|logsnr|karras. */
int arg_sampler(const char *flag, const char *value, ddpm_sampler_kind *out);
int arg_spacing(const char *flag, const char *value, ddpm_spacing *out);
/* The model and diffusion flags shared by train and bench (--size --channels
 * --ch --ch-mult --res-blocks --attn --groups --dropout --timesteps): parses
 * `value` of flag `name` into cfg. Returns 0, -1 after printing the problem, or
 * 1 when `name` is not one of these flags. */
int arg_model_flag(const char *name, const char *value, ddpm_run_config *cfg);
/* Parses `value` into option `opt` of `base` (options.h); 0, or -1 after
 * printing "ddpm: --flag: <problem>". */
int cli_option_parse(const ddpm_option *opt, void *base, const char *value);
/* The --help entry of `opt`: "--flag METAVAR", its help line and its default
 * (the row's def_text, or the value in `defaults`, the struct the row
 * describes at its defaults; "" def_text: none), wrapped at 79 columns. */
void cli_option_help(FILE *f, const ddpm_option *opt, const void *defaults);
/* The getopt_long entries of those flags, each returning `val` (the caller then
 * passes longopts[longindex].name to arg_model_flag). */
#define ARG_MODEL_LONGOPTS(val)                                                                       \
    {"size", required_argument, 0, (val)}, {"channels", required_argument, 0, (val)},                 \
        {"ch", required_argument, 0, (val)}, {"ch-mult", required_argument, 0, (val)},                \
        {"res-blocks", required_argument, 0, (val)}, {"attn", required_argument, 0, (val)},           \
        {"groups", required_argument, 0, (val)}, {"dropout", required_argument, 0, (val)},            \
        {"timesteps", required_argument, 0, (val)}, {"scale-shift-norm", no_argument, 0, (val)}
/* --help lines of the network flags (the defaults of unet.h). */
#define ARG_MODEL_HELP                                                                                \
    "  --ch N               base channels (default 32)\n" \
    "  --ch-mult LIST       channel multiplier per level (default 1,2,2)\n" \
    "  --res-blocks N       ResBlocks per level (default 2)\n" \
    "  --attn LIST          resolutions with self-attention (default 14; '' for none)\n" \
    "  --groups N           GroupNorm groups (default 8)\n" \
    "  --dropout P          dropout in ResBlocks (default 0.1)\n" \
    "  --scale-shift-norm   AdaGN: the embedding scales and shifts each ResBlock's\n" \
    "                       second GroupNorm\n"
/* The checkpoint a RUN_DIR|CHECKPOINT argument names: RUN_DIR/checkpoint.safetensors
 * when arg is a folder, else arg itself. */
void cli_checkpoint_path(char *out, size_t size, const char *arg);
/* An output file, checked before minutes of work: 0 when `path` is a name (not a
 * folder) in a writable folder; else prints one line and returns the exit code
 * (DDPM_EXIT_USAGE for an empty name, DDPM_EXIT_ERROR otherwise). */
int cli_check_writable_parent(const char *path);
/* The same for the output of `flag` ("--out", "OUT"), whose folder hint names
 * `example` ("model.safetensors"). */
int cli_check_writable_file(const char *flag, const char *path, const char *example);
/* Opens the model of a RUN_DIR|CHECKPOINT argument (ddpm_model_open), EMA
 * weights unless no_ema; on an error prints it and returns the exit code;
 * warns (cli_warn) "<path> has no EMA weights; <doing> the raw weights" when
 * the file has none. 0 on success (close with ddpm_model_close). */
int cli_open_model(ddpm_model *m, const char *arg, int no_ema, const char *doing);
/* The FID Inception weights pytorch-fid publishes, and where to get them. */
#define CLI_INCEPTION_NAME "pt_inception-2015-12-05-6726825d.pth"
#define CLI_INCEPTION_URL "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" CLI_INCEPTION_NAME
/* The Inception weights of `ddpm fid` and `ddpm train --eval-fid`: the flag's
 * value, else $DDPM_INCEPTION, else ~/.cache/ddpm/CLI_INCEPTION_NAME when it
 * exists. 0, or -1 after printing one line saying what to download and where. */
int cli_find_inception(char *out, size_t size, const char *flag);
/* "'ddpm CMD --help' lists the options" after an unknown flag. */
int cli_usage_error(const char *cmd);

#endif
