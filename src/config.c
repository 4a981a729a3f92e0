#include "ddpm/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ddpm_run_config_default(ddpm_run_config *c)
{
    memset(c, 0, sizeof *c);
    ddpm_unet_config_default(&c->model);
    c->schedule = DDPM_SCHEDULE_LINEAR;
    c->timesteps = 1000;
    c->beta_start = 1e-4;
    c->beta_end = 0.02;
    ddpm_optim_config_default(&c->optim);
    c->batch = 64;
    c->flip = 0;
    c->seed = 0;
    ddpm_loss_config_default(&c->loss);
    c->cond_drop = 0.1f;
}

int ddpm_parse_int_list(const char *s, int *out, int max)
{
    int n = 0;
    if (!*s)
        return 0;
    for (;;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 1000000 || n >= max)
            return -1;
        out[n++] = (int)v;
        if (*end == '\0')
            return n;
        if (*end != ',')
            return -1;
        s = end + 1;
    }
}

void ddpm_format_int_list(char *buf, size_t size, const int *v, int n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ",%d" : "%d", v[i]);
}
