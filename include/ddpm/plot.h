/* plot.h: the training curves of a run as a PNG, without a plotting library.
 *
 * A small RGB canvas (anti-aliased lines, filled rectangles, text in
 * stb_easy_font's segment font), chart panels with "nice" ticks on a linear or
 * log10 axis, a reader for a run's log.jsonl, and the chart `ddpm plot` writes:
 * one panel of the training loss (log scale) with every held-out loss of the log,
 * one of other eval_* numbers when the log has any, one of the FID of `ddpm train
 * --eval-fid` when it has one, one of images/s, all against the step. Pictures are written with the project's PNG writer (imageio.h). */
#ifndef DDPM_PLOT_H
#define DDPM_PLOT_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- canvas */

typedef struct {
    int width, height;
    uint8_t *rgb;                           /* [height, width, 3] */
    int clip_x0, clip_y0, clip_x1, clip_y1; /* lines draw only inside [x0, x1) x [y0, y1) */
} ddpm_canvas;

/* A canvas filled with bg; the clip rectangle is the whole canvas. */
int ddpm_canvas_create(ddpm_canvas *c, int width, int height, const uint8_t bg[3]);
void ddpm_canvas_free(ddpm_canvas *c);
/* Pixels whose centres lie in [x0, x1) x [y0, y1) (not clipped). */
void ddpm_canvas_fill_rect(ddpm_canvas *c, double x0, double y0, double x1, double y1, const uint8_t rgb[3]);
/* A segment `width` pixels wide, anti-aliased by the distance of each pixel
 * centre to the segment, inside the clip rectangle. */
void ddpm_canvas_line(ddpm_canvas *c, double x0, double y0, double x1, double y1, double width,
                      const uint8_t rgb[3]);
/* Text with its top-left corner at (x, y), `scale` pixels per font unit (a
 * capital is 7 units tall); returns its width in pixels. */
double ddpm_canvas_text(ddpm_canvas *c, double x, double y, const char *text, double scale,
                        const uint8_t rgb[3]);
double ddpm_canvas_text_width(const char *text, double scale);
/* Writes the canvas as an RGB PNG (through a temporary file). */
int ddpm_canvas_write_png(const ddpm_canvas *c, const char *path);

/* ---------------------------------------------------------------- axes */

/* Tick positions for [lo, hi] (lo < hi), at most max of them, increasing.
 * Linear: multiples of 1, 2 or 5 x 10^k, about 4 to 8 ticks. log10: the powers
 * of ten inside the range, or 1-2-5 multiples of them when fewer than two powers
 * fall inside, or linear ticks when the range is narrower still. */
int ddpm_plot_ticks(double *ticks, int max, double lo, double hi, int log10_scale);

typedef struct {
    const char *name;
    const double *x, *y;
    int n;
    uint8_t rgb[3];
} ddpm_plot_series;

typedef struct {
    const char *title;
    int log_y; /* log10 y axis: values <= 0 are left out */
    const ddpm_plot_series *series;
    int n_series;
} ddpm_plot_panel;

/* Draws a panel into the rectangle (left, top, width, height) of c: title, frame,
 * grid, y tick labels, the series (with markers when a series has few points),
 * a legend, and x tick labels under the frame when x_labels. */
void ddpm_plot_draw_panel(ddpm_canvas *c, const ddpm_plot_panel *p, double x_lo, double x_hi, int left,
                          int top, int width, int height, int x_labels);

/* ---------------------------------------------------------------- log.jsonl */

typedef struct {
    char name[64];
    double *x, *y; /* step, value */
    int n, cap;
} ddpm_log_series;

/* Every numeric field of a log.jsonl as a series against "step". A line that is
 * not a JSON object with a numeric "step" is skipped and counted; fields that are
 * not numbers are ignored, so logs with new fields still read. When the step does
 * not increase (a run resumed from an earlier checkpoint logs some steps again),
 * the later lines replace the earlier points from that step on. */
typedef struct {
    ddpm_log_series *series;
    int n_series;
    int n_lines;       /* non-blank lines */
    int n_skipped;     /* of which malformed */
    int first_skipped; /* 1-based line number of the first malformed line (0: none) */
} ddpm_train_log;

/* The largest log read: about four million lines of a training run. */
#define DDPM_LOG_MAX_BYTES (1L << 30)
/* Returns DDPM_EIO when the file cannot be read or is not a regular file (a
 * FIFO is refused without blocking, /dev/zero without reading) or is larger
 * than DDPM_LOG_MAX_BYTES (no more is ever read, also from a growing file),
 * DDPM_EFORMAT (message naming the file) when it has no line or no valid line. */
int ddpm_train_log_read(ddpm_train_log *log, const char *path);
void ddpm_train_log_free(ddpm_train_log *log);
/* The series of field `name`, or NULL. */
const ddpm_log_series *ddpm_train_log_find(const ddpm_train_log *log, const char *name);

/* ---------------------------------------------------------------- the chart */

typedef struct {
    int width, height; /* pixels (default 960 x 640) */
} ddpm_plot_options;

void ddpm_plot_options_default(ddpm_plot_options *o);

typedef struct {
    int n_lines, n_skipped, first_skipped; /* as in ddpm_train_log */
    int n_series;                          /* series drawn */
    char names[8][64];                     /* their fields, the first 8 */
} ddpm_plot_summary;

/* Reads log_path and writes the chart to png_path: "loss" and every other numeric
 * field whose name contains "loss" (heldout_loss, eval_loss, ...) on a log10
 * axis; other "eval_*" fields on a linear one; "eval_fid" on a linear one of its
 * own, titled with the last "eval_fid_n"; "images_per_sec" on a linear one
 * from 0. A log without "loss" values is refused. summary may be NULL. */
int ddpm_plot_training_log(const char *log_path, const char *png_path, const ddpm_plot_options *o,
                           ddpm_plot_summary *summary);

#endif
