#include "ddpm/plot.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/error.h"
#include "ddpm/imageio.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-braces"
#include <stb_easy_font.h>
#pragma GCC diagnostic pop

/* ---------------------------------------------------------------- canvas */

int ddpm_canvas_create(ddpm_canvas *c, int width, int height, const uint8_t bg[3])
{
    memset(c, 0, sizeof *c);
    if (width < 16 || height < 16 || width > 8192 || height > 8192)
        return ddpm_error(DDPM_EINVAL, "a plot must be 16..8192 pixels wide and high, got %d x %d", width,
                          height);
    c->rgb = ddpm_malloc((size_t)width * height, 3);
    if (!c->rgb)
        return DDPM_ENOMEM;
    c->width = width;
    c->height = height;
    c->clip_x1 = width;
    c->clip_y1 = height;
    for (size_t p = 0; p < (size_t)width * height; p++)
        memcpy(c->rgb + 3 * p, bg, 3);
    return DDPM_OK;
}

void ddpm_canvas_free(ddpm_canvas *c)
{
    free(c->rgb);
    c->rgb = NULL;
}

static void blend(ddpm_canvas *c, int x, int y, const uint8_t rgb[3], double alpha)
{
    uint8_t *p = c->rgb + 3 * ((size_t)y * c->width + x);
    for (int k = 0; k < 3; k++)
        p[k] = (uint8_t)lround(p[k] + alpha * (rgb[k] - p[k]));
}

void ddpm_canvas_fill_rect(ddpm_canvas *c, double x0, double y0, double x1, double y1, const uint8_t rgb[3])
{
    /* pixel x covers [x, x+1): its centre x + 0.5 is inside when x0 <= x + 0.5 < x1 */
    int ia = (int)ceil(x0 - 0.5), ib = (int)ceil(x1 - 0.5), ja = (int)ceil(y0 - 0.5),
        jb = (int)ceil(y1 - 0.5);
    ia = ia < 0 ? 0 : ia;
    ja = ja < 0 ? 0 : ja;
    ib = ib > c->width ? c->width : ib;
    jb = jb > c->height ? c->height : jb;
    for (int y = ja; y < jb; y++)
        for (int x = ia; x < ib; x++)
            memcpy(c->rgb + 3 * ((size_t)y * c->width + x), rgb, 3);
}

void ddpm_canvas_line(ddpm_canvas *c, double x0, double y0, double x1, double y1, double width,
                      const uint8_t rgb[3])
{
    if (!isfinite(x0) || !isfinite(y0) || !isfinite(x1) || !isfinite(y1))
        return;
    double r = width / 2, pad = r + 1;
    double lo_x = fmin(x0, x1) - pad, hi_x = fmax(x0, x1) + pad, lo_y = fmin(y0, y1) - pad,
           hi_y = fmax(y0, y1) + pad;
    int ia = (int)fmax(floor(lo_x), c->clip_x0), ib = (int)fmin(ceil(hi_x), c->clip_x1 - 1);
    int ja = (int)fmax(floor(lo_y), c->clip_y0), jb = (int)fmin(ceil(hi_y), c->clip_y1 - 1);
    double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    for (int y = ja; y <= jb; y++)
        for (int x = ia; x <= ib; x++) {
            double px = x + 0.5 - x0, py = y + 0.5 - y0;
            double u = len2 > 0 ? (px * dx + py * dy) / len2 : 0;
            u = u < 0 ? 0 : u > 1 ? 1 : u;
            double ex = px - u * dx, ey = py - u * dy, dist = sqrt(ex * ex + ey * ey);
            double cover = r + 0.5 - dist;
            if (cover > 0)
                blend(c, x, y, rgb, cover > 1 ? 1 : cover);
        }
}

enum { TEXT_MAX = 200 };

double ddpm_canvas_text(ddpm_canvas *c, double x, double y, const char *text, double scale,
                        const uint8_t rgb[3])
{
    char buf[TEXT_MAX + 1];
    snprintf(buf, sizeof buf, "%s", text);
    /* stb_easy_font: about 270 bytes of quads per character (it truncates beyond) */
    char quads[TEXT_MAX * 300];
    int n = stb_easy_font_print(0, 0, buf, NULL, quads, (int)sizeof quads);
    for (int q = 0; q < n; q++) {
        const float *v0 = (const float *)(quads + (size_t)q * 64),
                    *v2 = (const float *)(quads + (size_t)q * 64 + 32);
        ddpm_canvas_fill_rect(c, x + v0[0] * scale, y + v0[1] * scale, x + v2[0] * scale, y + v2[1] * scale,
                              rgb);
    }
    return ddpm_canvas_text_width(text, scale);
}

double ddpm_canvas_text_width(const char *text, double scale)
{
    char buf[TEXT_MAX + 1];
    snprintf(buf, sizeof buf, "%s", text);
    return stb_easy_font_width(buf) * scale;
}

int ddpm_canvas_write_png(const ddpm_canvas *c, const char *path)
{
    return ddpm_png_write(path, c->rgb, c->width, c->height, 3);
}

/* ---------------------------------------------------------------- axes */

/* 1, 2 or 5 x 10^k: the smallest such step giving at most `most` intervals */
static double nice_step(double span, int most)
{
    double raw = span / most, p = pow(10, floor(log10(raw)));
    const double m[] = {1, 2, 5, 10};
    for (int k = 0; k < 4; k++)
        if (m[k] * p >= raw * (1 - 1e-9))
            return m[k] * p;
    return 10 * p;
}

static int linear_ticks(double *ticks, int max, double lo, double hi)
{
    double step = nice_step(hi - lo, 6);
    int n = 0;
    for (double k = ceil(lo / step - 1e-9); n < max; k++) {
        double v = k * step;
        if (v > hi + step * 1e-9)
            break;
        ticks[n++] = fabs(v) < step * 1e-9 ? 0 : v;
    }
    return n;
}

int ddpm_plot_ticks(double *ticks, int max, double lo, double hi, int log10_scale)
{
    if (!(lo < hi) || !isfinite(lo) || !isfinite(hi) || max < 1)
        return 0;
    if (!log10_scale)
        return linear_ticks(ticks, max, lo, hi);
    if (lo <= 0)
        return 0;
    int n = 0;
    for (int e = (int)floor(log10(lo)); e <= (int)ceil(log10(hi)) && n < max; e++) {
        double v = pow(10, e);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9))
            ticks[n++] = v;
    }
    if (n >= 2)
        return n;
    n = 0;
    for (int e = (int)floor(log10(lo)); e <= (int)ceil(log10(hi)) && n < max; e++)
        for (int k = 0; k < 3 && n < max; k++) {
            double v = (k == 0 ? 1 : k == 1 ? 2 : 5) * pow(10, e);
            if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9))
                ticks[n++] = v;
        }
    if (n >= 2)
        return n;
    return linear_ticks(ticks, max, lo, hi);
}

/* a tick label: whole numbers in full (steps), others in %g with enough digits
   to tell neighbouring ticks apart */
static void tick_label(char *buf, size_t size, double v, double step)
{
    if (v == 0) {
        snprintf(buf, size, "0");
        return;
    }
    if (fabs(v) >= 1 && fabs(v) < 1e9 && step >= 1 && v == floor(v)) {
        snprintf(buf, size, "%.0f", v);
        return;
    }
    int digits = 1 + (int)ceil(log10(fabs(v) / step) - 1e-9);
    digits = digits < 1 ? 1 : digits > 6 ? 6 : digits;
    snprintf(buf, size, "%.*g", digits, v);
}

static const uint8_t INK[3] = {40, 40, 40}, GRID[3] = {226, 226, 226}, WHITE[3] = {255, 255, 255},
                     FRAME[3] = {150, 150, 150};

enum { FONT_SCALE = 2 };

void ddpm_plot_draw_panel(ddpm_canvas *c, const ddpm_plot_panel *p, double x_lo, double x_hi, int left,
                          int top, int width, int height, int x_labels)
{
    /* the y range over every drawable point */
    double y_lo = DBL_MAX, y_hi = -DBL_MAX;
    for (int s = 0; s < p->n_series; s++)
        for (int k = 0; k < p->series[s].n; k++) {
            double v = p->series[s].y[k];
            if (isfinite(v) && (!p->log_y || v > 0))
                y_lo = fmin(y_lo, v), y_hi = fmax(y_hi, v);
        }
    ddpm_canvas_text(c, left, top - 8 * FONT_SCALE - 4, p->title, FONT_SCALE, INK);
    if (y_lo > y_hi)
        return;
    if (!p->log_y && y_lo > 0)
        y_lo = 0; /* positive numbers (rates) read best from zero */
    if (y_lo == y_hi) {
        double d = y_lo != 0 ? fabs(y_lo) * 0.1 : 1;
        y_lo = p->log_y ? y_lo / 1.5 : y_lo - d;
        y_hi = p->log_y ? y_hi * 1.5 : y_hi + d;
    }
    double ty_lo = p->log_y ? log10(y_lo) : y_lo, ty_hi = p->log_y ? log10(y_hi) : y_hi;
    double margin = 0.05 * (ty_hi - ty_lo);
    if (!(p->log_y == 0 && y_lo == 0))
        ty_lo -= margin;
    ty_hi += margin;
    if (x_hi <= x_lo)
        x_hi = x_lo + 1;
#define MAP_X(v) (left + ((v)-x_lo) / (x_hi - x_lo) * width)
#define MAP_Y(v) (top + height - (((p->log_y ? log10(v) : (v)) - ty_lo) / (ty_hi - ty_lo)) * height)
    double ticks[64];
    char label[64];
    /* grid and y labels */
    double y_min = p->log_y ? pow(10, ty_lo) : ty_lo, y_max = p->log_y ? pow(10, ty_hi) : ty_hi;
    int nt = ddpm_plot_ticks(ticks, 64, y_min, y_max, p->log_y);
    for (int k = 0; k < nt; k++) {
        double y = MAP_Y(ticks[k]);
        ddpm_canvas_fill_rect(c, left, y - 0.5, left + width, y + 0.5, GRID);
        double step = k + 1 < nt ? ticks[k + 1] - ticks[k] : k > 0 ? ticks[k] - ticks[k - 1] : fabs(ticks[k]);
        tick_label(label, sizeof label, ticks[k], p->log_y ? ticks[k] : step);
        double w = ddpm_canvas_text_width(label, FONT_SCALE);
        ddpm_canvas_text(c, left - w - 8, y - 4 * FONT_SCALE, label, FONT_SCALE, INK);
    }
    nt = ddpm_plot_ticks(ticks, 64, x_lo, x_hi, 0);
    for (int k = 0; k < nt; k++) {
        double x = MAP_X(ticks[k]);
        ddpm_canvas_fill_rect(c, x - 0.5, top, x + 0.5, top + height, GRID);
        if (x_labels) {
            double step = nt > 1 ? ticks[1] - ticks[0] : fabs(ticks[k]);
            tick_label(label, sizeof label, ticks[k], step);
            double w = ddpm_canvas_text_width(label, FONT_SCALE);
            ddpm_canvas_text(c, x - w / 2, top + height + 8, label, FONT_SCALE, INK);
        }
    }
    /* the frame */
    ddpm_canvas_fill_rect(c, left, top, left + width, top + 1, FRAME);
    ddpm_canvas_fill_rect(c, left, top + height - 1, left + width, top + height, FRAME);
    ddpm_canvas_fill_rect(c, left, top, left + 1, top + height, FRAME);
    ddpm_canvas_fill_rect(c, left + width - 1, top, left + width, top + height, FRAME);
    /* the series, clipped to the frame */
    c->clip_x0 = left, c->clip_y0 = top, c->clip_x1 = left + width, c->clip_y1 = top + height;
    for (int s = 0; s < p->n_series; s++) {
        const ddpm_plot_series *se = &p->series[s];
        int have_prev = 0;
        double px = 0, py = 0;
        for (int k = 0; k < se->n; k++) {
            double v = se->y[k];
            if (!isfinite(v) || (p->log_y && v <= 0) || !isfinite(se->x[k])) {
                have_prev = 0;
                continue;
            }
            double x = MAP_X(se->x[k]), y = MAP_Y(v);
            if (have_prev)
                ddpm_canvas_line(c, px, py, x, y, 1.6, se->rgb);
            else if (se->n == 1)
                ddpm_canvas_line(c, x, y, x, y, 1.6, se->rgb);
            if (se->n <= 25) /* sparse series (held-out evaluations): mark the points */
                ddpm_canvas_line(c, x, y, x, y, 6, se->rgb);
            px = x, py = y, have_prev = 1;
        }
    }
    c->clip_x0 = 0, c->clip_y0 = 0, c->clip_x1 = c->width, c->clip_y1 = c->height;
    /* legend, top right, when there is more than the title names (a panel of one
       series is titled by it) */
    double lw = 0;
    if (p->n_series < 2)
        return;
    for (int s = 0; s < p->n_series; s++)
        lw = fmax(lw, ddpm_canvas_text_width(p->series[s].name, FONT_SCALE));
    double box_w = lw + 44, row = 12 * FONT_SCALE, box_x = left + width - box_w - 8, box_y = top + 8;
    ddpm_canvas_fill_rect(c, box_x, box_y, box_x + box_w, box_y + row * p->n_series + 8, WHITE);
    for (int s = 0; s < p->n_series; s++) {
        double y = box_y + 4 + row * s + row / 2 - 2;
        ddpm_canvas_line(c, box_x + 6, y, box_x + 30, y, 2.5, p->series[s].rgb);
        ddpm_canvas_text(c, box_x + 36, y - 4 * FONT_SCALE + 1, p->series[s].name, FONT_SCALE, INK);
    }
#undef MAP_X
#undef MAP_Y
}

/* ---------------------------------------------------------------- log.jsonl */

void ddpm_train_log_free(ddpm_train_log *log)
{
    for (int s = 0; s < log->n_series; s++) {
        free(log->series[s].x);
        free(log->series[s].y);
    }
    free(log->series);
    memset(log, 0, sizeof *log);
}

const ddpm_log_series *ddpm_train_log_find(const ddpm_train_log *log, const char *name)
{
    for (int s = 0; s < log->n_series; s++)
        if (!strcmp(log->series[s].name, name))
            return &log->series[s];
    return NULL;
}

enum { MAX_SERIES = 64 };

static int log_add(ddpm_train_log *log, const char *name, double step, double value)
{
    ddpm_log_series *se = (ddpm_log_series *)ddpm_train_log_find(log, name);
    if (!se) {
        if (log->n_series >= MAX_SERIES || strlen(name) >= sizeof se->name)
            return DDPM_OK; /* a field too many or too long to plot: ignored */
        if (!log->series && !(log->series = ddpm_calloc(MAX_SERIES, sizeof *log->series)))
            return DDPM_ENOMEM;
        se = &log->series[log->n_series++];
        strcpy(se->name, name);
    }
    while (se->n > 0 && se->x[se->n - 1] >= step) /* a resumed run logs these steps again */
        se->n--;
    if (se->n == se->cap) {
        int cap = se->cap ? 2 * se->cap : 256;
        double *x = realloc(se->x, (size_t)cap * sizeof *x);
        if (x)
            se->x = x;
        double *y = x ? realloc(se->y, (size_t)cap * sizeof *y) : NULL;
        if (!x || !y)
            return ddpm_error(DDPM_ENOMEM, "out of memory reading a log");
        se->y = y;
        se->cap = cap;
    }
    se->x[se->n] = step;
    se->y[se->n] = value;
    se->n++;
    return DDPM_OK;
}

int ddpm_train_log_read(ddpm_train_log *log, const char *path)
{
    memset(log, 0, sizeof *log);
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then says
       what it is. A regular file ignores the flag. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ddpm_error(DDPM_EIO, "%s: not a regular file (a log.jsonl is one)", path);
    }
    if (st.st_size > DDPM_LOG_MAX_BYTES) {
        close(fd);
        return ddpm_error(DDPM_EIO, "%s: %lld bytes is larger than a training log can be (%ld)", path,
                          (long long)st.st_size, (long)DDPM_LOG_MAX_BYTES);
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long total = 0;
    int line_no = 0, rc = DDPM_OK;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        total += (long)len;
        if (total > DDPM_LOG_MAX_BYTES) { /* it grew while read */
            rc = ddpm_error(DDPM_EIO, "%s: grew past %ld bytes while read", path, (long)DDPM_LOG_MAX_BYTES);
            break;
        }
        line_no++;
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (!*p)
            continue;
        log->n_lines++;
        cJSON *o = (size_t)len == strlen(line) ? cJSON_Parse(p) : NULL; /* a NUL inside: not text */
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
        if (!cJSON_IsObject(o) || !cJSON_IsNumber(step) || !isfinite(step->valuedouble)) {
            if (!log->n_skipped++)
                log->first_skipped = line_no;
            cJSON_Delete(o);
            continue;
        }
        for (const cJSON *it = o->child; !rc && it; it = it->next)
            if (it->string && strcmp(it->string, "step") && cJSON_IsNumber(it) && isfinite(it->valuedouble))
                rc = log_add(log, it->string, step->valuedouble, it->valuedouble);
        cJSON_Delete(o);
    }
    int read_error = ferror(f);
    free(line);
    fclose(f);
    if (!rc && read_error)
        rc = ddpm_error(DDPM_EIO, "%s: read error", path);
    else if (!rc && log->n_lines == 0)
        rc = ddpm_error(DDPM_EFORMAT, "%s: empty: no log lines", path);
    else if (!rc && log->n_skipped == log->n_lines)
        rc = ddpm_error(DDPM_EFORMAT,
                        "%s: no valid log line (%d line%s, none a JSON object with a numeric \"step\")", path,
                        log->n_lines, log->n_lines == 1 ? "" : "s");
    if (rc) {
        int keep_lines = log->n_lines;
        ddpm_train_log_free(log);
        log->n_lines = keep_lines;
    }
    return rc;
}

/* ---------------------------------------------------------------- the chart */

void ddpm_plot_options_default(ddpm_plot_options *o)
{
    o->width = 960;
    o->height = 640;
}

static const uint8_t PALETTE[][3] = {
    {31, 119, 180}, {255, 127, 14},  {214, 39, 40},  {148, 103, 189},
    {140, 86, 75},  {227, 119, 194}, {23, 190, 207},
};
static const uint8_t RATE_COLOR[3] = {44, 160, 44}, FID_COLOR[3] = {188, 189, 34};

int ddpm_plot_training_log(const char *log_path, const char *png_path, const ddpm_plot_options *o,
                           ddpm_plot_summary *summary)
{
    ddpm_train_log log;
    int rc = ddpm_train_log_read(&log, log_path);
    if (rc)
        return rc;
    const ddpm_log_series *loss = ddpm_train_log_find(&log, "loss");
    if (!loss) {
        rc = ddpm_error(DDPM_EFORMAT, "%s: no \"loss\" values in %d log lines", log_path, log.n_lines);
        ddpm_train_log_free(&log);
        return rc;
    }
    /* the panels: losses (log10: the training loss and every held-out loss,
       "eval_l_simple" as `ddpm train --eval-dir` writes it), other eval_*
       measures (the bound, eval_bpd), the FID of `--eval-fid` (its own
       panel: tens to hundreds, not bits), images/s. Standard errors and the
       evaluation's settings (eval_n, eval_mc, eval_fid_n) are not curves. */
    ddpm_plot_series losses[8], evals[8], fid[1], rate[1];
    int n_loss = 0, n_eval = 0, n_fid = 0, n_rate = 0;
    losses[n_loss++] = (ddpm_plot_series){"loss (train)", loss->x, loss->y, loss->n, {0}};
    double x_lo = DBL_MAX, x_hi = -DBL_MAX;
    for (int s = 0; s < log.n_series; s++) {
        const ddpm_log_series *se = &log.series[s];
        ddpm_plot_series ps = {se->name, se->x, se->y, se->n, {0}};
        int plotted = 1;
        size_t len = strlen(se->name);
        int stderr_field = len >= 7 && !strcmp(se->name + len - 7, "_stderr");
        int setting = !strcmp(se->name, "eval_n") || !strcmp(se->name, "eval_mc") || !strcmp(se->name, "eval_fid_n");
        if (se == loss)
            ;
        else if (stderr_field || setting)
            plotted = 0;
        else if ((strstr(se->name, "loss") || strstr(se->name, "l_simple")) && n_loss < 8)
            losses[n_loss++] = ps;
        else if (!strcmp(se->name, "eval_fid"))
            fid[n_fid++] = ps;
        else if (!strncmp(se->name, "eval_", 5) && n_eval < 8)
            evals[n_eval++] = ps;
        else if (!strcmp(se->name, "images_per_sec"))
            rate[n_rate++] = ps;
        else
            plotted = 0;
        if (plotted)
            for (int k = 0; k < se->n; k++)
                x_lo = fmin(x_lo, se->x[k]), x_hi = fmax(x_hi, se->x[k]);
    }
    for (int s = 0; s < n_loss; s++)
        memcpy(losses[s].rgb, PALETTE[s % 7], 3);
    for (int s = 0; s < n_eval; s++)
        memcpy(evals[s].rgb, PALETTE[(s + 2) % 7], 3);
    if (n_fid)
        memcpy(fid[0].rgb, FID_COLOR, 3);
    if (n_rate)
        memcpy(rate[0].rgb, RATE_COLOR, 3);
    x_lo = fmin(x_lo, 0); /* steps from 0, and a little room after the last */
    x_hi = x_hi > x_lo ? x_hi + 0.02 * (x_hi - x_lo) : x_lo + 1;
    ddpm_plot_panel panels[4];
    int n_panels = 0;
    char fid_title[96] = "FID";
    const ddpm_log_series *fid_n = ddpm_train_log_find(&log, "eval_fid_n");
    if (fid_n && fid_n->n > 0) /* FID depends on the sample count: say it */
        snprintf(fid_title, sizeof fid_title, "FID of %.0f EMA samples", fid_n->y[fid_n->n - 1]);
    panels[n_panels++] = (ddpm_plot_panel){"loss (log scale)", 1, losses, n_loss};
    if (n_eval)
        panels[n_panels++] = (ddpm_plot_panel){n_eval == 1 ? evals[0].name : "evaluation", 0, evals, n_eval};
    if (n_fid)
        panels[n_panels++] = (ddpm_plot_panel){fid_title, 0, fid, 1};
    if (n_rate)
        panels[n_panels++] = (ddpm_plot_panel){"training speed, images/s", 0, rate, 1};

    ddpm_canvas c;
    const uint8_t bg[3] = {255, 255, 255};
    if ((rc = ddpm_canvas_create(&c, o->width, o->height, bg))) {
        ddpm_train_log_free(&log);
        return rc;
    }
    /* layout: the loss panel twice as tall as each other panel */
    int left = 100, right = 24, top_pad = 36, gap = 48, bottom = 60;
    int avail = o->height - top_pad - bottom - gap * (n_panels - 1), weight = 2 + (n_panels - 1);
    int plot_w = o->width - left - right, unit = avail / weight;
    if (plot_w < 40 || unit < 30) {
        ddpm_canvas_free(&c);
        ddpm_train_log_free(&log);
        return ddpm_error(DDPM_EINVAL, "%s: %d x %d pixels are too few for %d panels", png_path, o->width,
                          o->height, n_panels);
    }
    int top = top_pad;
    for (int k = 0; k < n_panels; k++) {
        int h = k == 0 ? 2 * unit : unit;
        ddpm_plot_draw_panel(&c, &panels[k], x_lo, x_hi, left, top, plot_w, h, k == n_panels - 1);
        top += h + gap;
    }
    const char *x_name = "step";
    ddpm_canvas_text(&c, left + (plot_w - ddpm_canvas_text_width(x_name, FONT_SCALE)) / 2,
                     o->height - 8 * FONT_SCALE - 4, x_name, FONT_SCALE, INK);
    rc = ddpm_canvas_write_png(&c, png_path);
    if (!rc && summary) {
        memset(summary, 0, sizeof *summary);
        summary->n_lines = log.n_lines;
        summary->n_skipped = log.n_skipped;
        summary->first_skipped = log.first_skipped;
        for (int k = 0; k < n_panels; k++)
            for (int s = 0; s < panels[k].n_series; s++) {
                if (summary->n_series < 8) {
                    const char *name = k == 0 && s == 0 ? "loss" : panels[k].series[s].name;
                    snprintf(summary->names[summary->n_series], sizeof summary->names[0], "%s", name);
                }
                summary->n_series++;
            }
    }
    ddpm_canvas_free(&c);
    ddpm_train_log_free(&log);
    return rc;
}
