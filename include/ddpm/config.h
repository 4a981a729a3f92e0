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
    float cond_drop;       /* class-conditional models: probability that an image's
                              label is replaced by "no class" (classifier-free
                              guidance, Ho & Salimans 2022); default 0.1 */
} ddpm_run_config;

/* The defaults: model for 28x28 gray (unet.h; eps prediction, unconditional),
 * linear schedule 1e-4..0.02 over T = 1000, batch 64, no flips, seed 0, the
 * optimiser of optim.h, L_simple, label dropout 0.1 (used only with classes). */
void ddpm_run_config_default(ddpm_run_config *c);

/* "1,2,2" <-> int list (non-negative values up to 10^6). Parse returns the count
 * (0 for "") or -1 when s is not such a list or has more than max entries. */
int ddpm_parse_int_list(const char *s, int *out, int max);
void ddpm_format_int_list(char *buf, size_t size, const int *v, int n);

#endif
