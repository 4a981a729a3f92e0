#include "ddpm/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/error.h"
#include "ddpm/options.h"

void ddpm_run_config_default(ddpm_run_config *c)
{
    /* every field has a row in the option table (options.h), which holds its default */
    memset(c, 0, sizeof *c);
    for (const ddpm_option *o = ddpm_run_config_options; o->type != DDPM_OPT_END; o++)
        ddpm_option_set_default(o, c);
}

void ddpm_unet_config_set_auto(ddpm_unet_config *m)
{
    m->image_size = 0;
    m->in_channels = 0;
    m->ch = 0;
    m->n_levels = 0;
    m->n_attn = DDPM_ATTN_AUTO;
    m->groups = 0;
}

int ddpm_unet_config_fit_data(ddpm_unet_config *m, int image_size, int in_channels)
{
    if (!m->image_size)
        m->image_size = image_size;
    if (!m->in_channels)
        m->in_channels = in_channels;
    int S = m->image_size;
    if (S < 1 || S > 4096)
        return ddpm_error(DDPM_EINVAL, "image size %d is out of range (1..4096)", S);
    if (!m->n_levels) {
        int L = 1;
        /* the loop bound keeps the last entry for the 5-level extra 1 below */
        for (int s = S; s % 2 == 0 && s / 2 >= 7 && L < DDPM_MAX_LEVELS; s /= 2)
            L++;
        m->n_levels = L;
        for (int l = 0; l < L; l++)
            m->ch_mult[l] = l == 0 || (L >= 5 && l == 1) ? 1 : 2;
    }
    if (!m->ch)
        m->ch = S <= 32 ? 32 : 64;
    if (!m->groups) {
        int g = 8;
        while (g > 1 && m->ch % g)
            g /= 2;
        m->groups = g;
    }
    int div = 1 << (m->n_levels - 1);
    if (S % div)
        return ddpm_error(DDPM_EINVAL,
                          "image size %d cannot go through %d levels (--ch-mult has %d entries: the size "
                          "must be divisible by 2^%d = %d); give --size or a shorter --ch-mult",
                          S, m->n_levels, m->n_levels, m->n_levels - 1, div);
    if (m->n_attn == DDPM_ATTN_AUTO) {
        int best = S;
        for (int l = 1; l < m->n_levels; l++) {
            int r = S >> l, d = abs(r - 16), db = abs(best - 16);
            if (d < db || (d == db && r < best))
                best = r;
        }
        m->n_attn = 1;
        m->attn_res[0] = best;
    }
    return DDPM_OK;
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
