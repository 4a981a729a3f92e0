/* config.h: the run config (everything that defines a training run) and its
 * defaults, and the list syntax the command line uses for its list flags.
 *
 * A run config is saved in every checkpoint (checkpoint.h) and a resumed run may
 * not change it. The defaults are the model of docs/design.md, The network, for
 * 28x28 gray images and the short-run optimiser recipe of optim.h. */
#ifndef DDPM_CONFIG_H
#define DDPM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/loss.h"
#include "ddpm/optim.h"
#include "ddpm/schedule.h"
#include "ddpm/timestep.h"
#include "ddpm/unet.h"

/* Everything that defines a run: what a resumed run must not change. */
typedef struct {
    ddpm_unet_config model;
    ddpm_schedule_kind schedule;
    int timesteps;
    double beta_start, beta_end;
    ddpm_optim_config optim;
    int batch;
    int flip; /* random horizontal flips of training images */
    uint64_t seed;
    ddpm_loss_config loss; /* the objective (loss.h; default L_simple) */
    ddpm_t_sampling t_sampling; /* how t is drawn (timestep.h; default uniform) */
    float cond_drop;       /* class-conditional models: probability that an image's
                              label is replaced by "no class" (classifier-free
                              guidance, Ho & Salimans 2022); default 0.1 */
    ddpm_precision precision; /* the products of the convolutions and attention,
                                 forward and backward (ops.h): fp32 (default) or bf16 */
} ddpm_run_config;

/* The defaults, which are the option table's (options.h): model for 28x28 gray (unet.h; eps prediction, unconditional),
 * linear schedule 1e-4..0.02 over T = 1000, batch 32, no flips, seed 0, the
 * optimiser of optim.h, L_simple with uniform t, label dropout 0.1 (used only
 * with classes). */
void ddpm_run_config_default(ddpm_run_config *c);

/* Data-driven model defaults. A model field may be left "auto" (ch, n_levels or
 * groups 0, n_attn -1; image_size and in_channels 0); ddpm_unet_config_fit_data
 * then chooses it from the image side S and the channel count C:
 *   levels    1 + the number of halvings of S that stay whole and >= 7 px, so
 *             the lowest resolution is 7..13 px (28 -> 28,14,7; 32 -> 32,16,8;
 *             64 -> 4 levels down to 8; 128 -> 5 levels down to 8);
 *   ch_mult   1 then 2 for every further level, with a second 1 from 5 levels
 *             on (1,2,2 / 1,2,2,2 / 1,1,2,2,2): wide channels only where the
 *             pixels are few, so 128 px stays trainable on a CPU;
 *   ch        32 up to 32 px, 64 above;
 *   attn_res  the one resolution the levels reach that is nearest 16 (ties:
 *             the smaller; 14 at 28 px, 16 at 32, 64 and 128 px);
 *   groups    the largest of 8, 4, 2, 1 that divides ch (so every channel count).
 * res blocks (2) and dropout (0.1) do not depend on the data. Fields already set
 * are kept (an explicit flag always wins). Returns 0, or DDPM_EINVAL with one
 * line when the result cannot work (an explicit ch_mult whose levels do not
 * divide S, an explicit attention resolution the levels never reach, ...). */
#define DDPM_ATTN_AUTO (-1)
void ddpm_unet_config_set_auto(ddpm_unet_config *m);
int ddpm_unet_config_fit_data(ddpm_unet_config *m, int image_size, int in_channels);

/* "1,2,2" <-> int list (non-negative values up to 10^6). Parse returns the count
 * (0 for "") or -1 when s is not such a list or has more than max entries. */
int ddpm_parse_int_list(const char *s, int *out, int max);
void ddpm_format_int_list(char *buf, size_t size, const int *v, int n);

#endif
