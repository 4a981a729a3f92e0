/* Tests of the dataset: folder scan (recursive, sorted, probe-based), size and
 * channel detection, skipped files and --strict, per-epoch shuffles that depend
 * only on (seed, epoch, position), flips, and errors on empty/missing folders. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/dataset.h"
#include "ddpm/fsutil.h"
#include "testutil.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"

enum { S = 8, N_IMAGES = 6, N_FILES = 8 };

static char root[64];   /* the main fixture: 6 images + 2 non-images */
static char scratch[64]; /* a parent for folders made by single tests */

static void path_in(char *buf, size_t len, const char *dir, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < len);
}

/* An asymmetric gray image, distinct for each k, so that identity and flips show. */
static void write_gray(const char *dir, const char *name, int k, int w, int h)
{
    uint8_t img[64 * 64];
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            img[y * w + x] = (uint8_t)((k * 37 + y * 8 + x * 3) % 256);
    char path[256];
    path_in(path, sizeof path, dir, name);
    assert_int_equal(ddpm_png_write(path, img, w, h, 1), 0);
}

static void write_text(const char *dir, const char *name)
{
    char path[256];
    path_in(path, sizeof path, dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("not an image\n", f);
    fclose(f);
}

static void make_dir(char *out, size_t len, const char *parent, const char *name)
{
    path_in(out, len, parent, name);
    assert_int_equal(mkdir(out, 0777), 0);
}

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(root, sizeof root, "dataset") || tu_make_tmpdir(scratch, sizeof scratch, "dataset-scratch"))
        return -1;
    char a[256], sub[256], deep[256];
    make_dir(a, sizeof a, root, "a");
    make_dir(sub, sizeof sub, root, "sub");
    make_dir(deep, sizeof deep, sub, "deeper");
    write_gray(a, "0.png", 0, S, S);
    write_gray(a, "1.png", 1, S, S);
    write_gray(root, "2.png", 2, S, S);
    write_gray(sub, "3.png", 3, S, S);
    write_gray(deep, "4.png", 4, S, S);
    write_gray(root, "wide.png", 5, 2 * S, S); /* the second size: cropped to its centre */
    write_text(root, "notes.txt");
    write_text(sub, "fake.png"); /* an image by name, not by content */
    write_text(root, ".hidden");  /* ignored entirely */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int a = tu_remove_tree(root), b = tu_remove_tree(scratch);
    return a || b ? -1 : 0;
}

typedef struct {
    char lines[16][512];
    int n;
} warnings;

static void collect(void *user, const char *line)
{
    warnings *w = user;
    if (w->n < 16)
        snprintf(w->lines[w->n], sizeof w->lines[0], "%s", line);
    w->n++;
}

static ddpm_dataset *open_root(warnings *w)
{
    ddpm_dataset_options opt = {0};
    if (w) {
        opt.warn = collect;
        opt.warn_user = w;
    }
    ddpm_dataset *ds = NULL;
    int rc = ddpm_dataset_open(&ds, root, &opt);
    if (rc)
        fprintf(stderr, "open failed: %s\n", ddpm_last_error());
    assert_int_equal(rc, 0);
    assert_non_null(ds);
    return ds;
}

static void test_scan_counts_images_and_warns_about_skipped_files(void **state)
{
    (void)state;
    warnings w = {.n = 0};
    ddpm_dataset *ds = open_root(&w);
    assert_int_equal(ddpm_dataset_count(ds), N_IMAGES);
    assert_int_equal(ddpm_dataset_files_found(ds), N_FILES);
    assert_int_equal(ddpm_dataset_skipped(ds), 2);
    assert_int_equal(w.n, 3);
    /* sorted paths: notes.txt comes before sub/fake.png */
    assert_non_null(strstr(w.lines[0], "skipped: "));
    assert_non_null(strstr(w.lines[0], "notes.txt"));
    assert_non_null(strstr(w.lines[1], "sub/fake.png"));
    assert_string_equal(w.lines[2], "skipped 2 of 8 files");
    /* paths are in bytewise sorted order, and recursive */
    for (int i = 1; i < ddpm_dataset_count(ds); i++)
        assert_true(strcmp(ddpm_dataset_path(ds, i - 1), ddpm_dataset_path(ds, i)) < 0);
    assert_non_null(strstr(ddpm_dataset_path(ds, 4), "sub/deeper/4.png"));
    assert_null(ddpm_dataset_path(ds, N_IMAGES));
    ddpm_dataset_close(ds);
}

static void test_default_size_is_most_common_and_channels_gray(void **state)
{
    (void)state;
    ddpm_dataset *ds = open_root(NULL);
    assert_int_equal(ddpm_dataset_size(ds), S);
    assert_int_equal(ddpm_dataset_channels(ds), 1);
    /* image 0 (2.png, k = 2) is stored exactly; wide.png (16 x 8) is its centre 8 x 8 */
    const uint8_t *img0 = ddpm_dataset_image_u8(ds, 0);
    const uint8_t *wide = ddpm_dataset_image_u8(ds, 5);
    assert_non_null(strstr(ddpm_dataset_path(ds, 0), "/2.png"));
    assert_non_null(strstr(ddpm_dataset_path(ds, 5), "wide.png"));
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            assert_int_equal(img0[y * S + x], (2 * 37 + y * 8 + x * 3) % 256);
            assert_int_equal(wide[y * S + x], (5 * 37 + y * 8 + (x + S / 2) * 3) % 256);
        }
    ddpm_dataset_close(ds);
}

static void test_options_override_size_and_channels(void **state)
{
    (void)state;
    ddpm_dataset_options opt = {.size = 4, .channels = 3};
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, root, &opt), 0);
    assert_int_equal(ddpm_dataset_size(ds), 4);
    assert_int_equal(ddpm_dataset_channels(ds), 3);
    const uint8_t *img = ddpm_dataset_image_u8(ds, 2);
    for (int i = 0; i < 16; i++) /* gray replicated to R, G, B */
        assert_true(img[i] == img[16 + i] && img[i] == img[32 + i]);
    ddpm_dataset_close(ds);

    opt = (ddpm_dataset_options){.channels = 2};
    assert_int_equal(ddpm_dataset_open(&ds, root, &opt), DDPM_EINVAL);
    assert_null(ds);
}

static void test_rgb_image_makes_default_three_channels_and_nonsquare_majority_its_short_side(
    void **state)
{
    (void)state;
    char dir[256];
    make_dir(dir, sizeof dir, scratch, "mixed");
    write_gray(dir, "g0.png", 0, 10, 6);
    write_gray(dir, "g1.png", 1, 10, 6);
    write_gray(dir, "g2.png", 2, 5, 5);
    uint8_t rgb[10 * 6 * 3] = {0};
    rgb[(3 * 10 + 5) * 3] = 255; /* one red pixel inside the crop: colour by content, not by header */
    char path[300];
    path_in(path, sizeof path, dir, "rgb.png");
    assert_int_equal(ddpm_png_write(path, rgb, 10, 6, 3), 0);
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), 0);
    assert_int_equal(ddpm_dataset_count(ds), 4);
    assert_int_equal(ddpm_dataset_size(ds), 6); /* 10 x 6 is the most common: short side */
    assert_int_equal(ddpm_dataset_channels(ds), 3);
    ddpm_dataset_close(ds);
}

static void test_strict_mode_refuses_a_non_image_naming_it(void **state)
{
    (void)state;
    ddpm_dataset_options opt = {.strict = 1};
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, root, &opt), DDPM_EFORMAT);
    assert_null(ds);
    assert_non_null(strstr(ddpm_last_error(), "notes.txt"));
}

static void test_batches_are_in_range_and_match_the_stored_images(void **state)
{
    (void)state;
    ddpm_dataset *ds = open_root(NULL);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 7, DDPM_STREAM_DATA);
    float x[N_IMAGES * S * S], ref[S * S];
    assert_int_equal(ddpm_dataset_next_batch(ds, x, N_IMAGES, &rng, 0), 0);
    assert_int_equal(rng.counter, 0); /* the caller's counter is not advanced */
    for (int i = 0; i < N_IMAGES * S * S; i++)
        assert_true(x[i] >= -1.0f && x[i] <= 1.0f);
    /* each batch image equals some stored image exactly */
    for (int b = 0; b < N_IMAGES; b++) {
        int found = 0;
        for (int i = 0; i < N_IMAGES && !found; i++) {
            assert_int_equal(ddpm_dataset_get(ds, ref, i), 0);
            found = memcmp(ref, x + b * S * S, sizeof ref) == 0;
        }
        assert_true(found);
    }
    ddpm_dataset_close(ds);
}

/* Index of the stored image equal to img, or -1. */
static int identify(const ddpm_dataset *ds, const float *img)
{
    float ref[S * S];
    for (int i = 0; i < ddpm_dataset_count(ds); i++) {
        ddpm_dataset_get(ds, ref, i);
        if (!memcmp(ref, img, sizeof ref))
            return i;
    }
    return -1;
}

static void test_every_image_is_seen_once_per_epoch_across_batch_boundaries(void **state)
{
    (void)state;
    ddpm_dataset *ds = open_root(NULL);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 11, DDPM_STREAM_DATA);
    enum { B = 4, EPOCHS = 6 };
    int order[EPOCHS][N_IMAGES];
    float x[B * S * S];
    for (int served = 0; served < EPOCHS * N_IMAGES; served += B) {
        assert_int_equal(ddpm_dataset_next_batch(ds, x, B, &rng, 0), 0);
        for (int b = 0; b < B; b++) {
            int k = served + b;
            int id = identify(ds, x + b * S * S);
            assert_true(id >= 0);
            order[k / N_IMAGES][k % N_IMAGES] = id;
        }
    }
    assert_int_equal(ddpm_dataset_epoch(ds), EPOCHS);
    assert_int_equal(ddpm_dataset_position(ds), 0);
    int n_same_as_first = 0;
    for (int e = 0; e < EPOCHS; e++) {
        int seen[N_IMAGES] = {0};
        for (int p = 0; p < N_IMAGES; p++)
            seen[order[e][p]]++;
        for (int i = 0; i < N_IMAGES; i++)
            assert_int_equal(seen[i], 1);
        n_same_as_first += !memcmp(order[e], order[0], sizeof order[0]);
    }
    assert_true(n_same_as_first < EPOCHS); /* epochs are reshuffled */
    ddpm_dataset_close(ds);
}

static void test_same_seed_same_order_other_seed_other_order(void **state)
{
    (void)state;
    ddpm_dataset *a = open_root(NULL), *b = open_root(NULL), *c = open_root(NULL);
    ddpm_rng r1, r2;
    ddpm_rng_init(&r1, 5, DDPM_STREAM_DATA);
    ddpm_rng_init(&r2, 6, DDPM_STREAM_DATA);
    enum { B = 5, STEPS = 6 };
    float xa[B * S * S], xb[B * S * S], xc[B * S * S];
    int differs = 0;
    for (int s = 0; s < STEPS; s++) {
        assert_int_equal(ddpm_dataset_next_batch(a, xa, B, &r1, 1), 0);
        assert_int_equal(ddpm_dataset_next_batch(b, xb, B, &r1, 1), 0);
        assert_int_equal(ddpm_dataset_next_batch(c, xc, B, &r2, 1), 0);
        assert_memory_equal(xa, xb, sizeof xa);
        differs |= memcmp(xa, xc, sizeof xa) != 0;
    }
    assert_true(differs);
    ddpm_dataset_close(a);
    ddpm_dataset_close(b);
    ddpm_dataset_close(c);
}

static void test_resume_from_epoch_and_position_continues_exactly(void **state)
{
    (void)state;
    ddpm_dataset *a = open_root(NULL), *b = open_root(NULL);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 1234, DDPM_STREAM_DATA);
    enum { B = 4 };
    float xa[B * S * S], xb[B * S * S];
    for (int s = 0; s < 7; s++) /* 28 images: epoch 4, position 4 */
        assert_int_equal(ddpm_dataset_next_batch(a, xa, B, &rng, 1), 0);
    uint64_t epoch = ddpm_dataset_epoch(a);
    int position = ddpm_dataset_position(a);
    assert_int_equal(epoch, 4);
    assert_int_equal(position, 4);
    /* a fresh dataset and a fresh rng with the same seed: only (epoch, position) carried */
    ddpm_rng rng2;
    ddpm_rng_init(&rng2, 1234, DDPM_STREAM_DATA);
    assert_int_equal(ddpm_dataset_seek(b, epoch, position), 0);
    for (int s = 0; s < 5; s++) {
        assert_int_equal(ddpm_dataset_next_batch(a, xa, B, &rng, 1), 0);
        assert_int_equal(ddpm_dataset_next_batch(b, xb, B, &rng2, 1), 0);
        assert_memory_equal(xa, xb, sizeof xa);
    }
    assert_int_equal(ddpm_dataset_seek(b, 0, N_IMAGES), DDPM_EINVAL);
    assert_int_equal(ddpm_dataset_seek(b, 0, -1), DDPM_EINVAL);
    ddpm_dataset_close(a);
    ddpm_dataset_close(b);
}

static void test_flip_mirrors_about_half_the_images(void **state)
{
    (void)state;
    ddpm_dataset *ds = open_root(NULL);
    ddpm_rng rng;
    ddpm_rng_init(&rng, 3, DDPM_STREAM_DATA);
    enum { DRAWS = 600 };
    float x[S * S], mirrored[S * S], ref[S * S];
    int n_flipped = 0;
    for (int d = 0; d < DRAWS; d++) {
        assert_int_equal(ddpm_dataset_next_batch(ds, x, 1, &rng, 1), 0);
        int id = identify(ds, x);
        const float *unflipped = x;
        if (id < 0) {
            for (int y = 0; y < S; y++)
                for (int c = 0; c < S; c++)
                    mirrored[y * S + c] = x[y * S + S - 1 - c];
            id = identify(ds, mirrored);
            assert_true(id >= 0); /* a left-right mirror of a stored image */
            unflipped = mirrored;
            n_flipped++;
        }
        /* the draw is stored image id, as drawn or mirrored about the vertical axis */
        ddpm_dataset_get(ds, ref, id);
        assert_memory_equal(ref, unflipped, sizeof ref);
    }
    /* Binomial(600, 1/2): sd 12.2, so 300 +- 61 is 5 sd */
    assert_true(n_flipped > 239 && n_flipped < 361);
    ddpm_dataset_close(ds);
}

static void test_empty_missing_and_imageless_folders_are_errors_naming_them(void **state)
{
    (void)state;
    char dir[256];
    ddpm_dataset *ds = NULL;
    make_dir(dir, sizeof dir, scratch, "empty");
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), DDPM_EINVAL);
    assert_null(ds);
    assert_non_null(strstr(ddpm_last_error(), dir));

    path_in(dir, sizeof dir, scratch, "missing");
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), DDPM_EIO);
    assert_null(ds);
    assert_non_null(strstr(ddpm_last_error(), dir));

    make_dir(dir, sizeof dir, scratch, "text-only");
    write_text(dir, "a.png");
    write_text(dir, "b.jpg");
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), DDPM_EINVAL);
    assert_null(ds);
    assert_non_null(strstr(ddpm_last_error(), dir));

    /* a file where a folder is expected */
    path_in(dir, sizeof dir, scratch, "text-only/a.png");
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), DDPM_EIO);
    assert_non_null(strstr(ddpm_last_error(), "not a folder"));
}

/* A folder with one image and the two loops of the bug report (`self -> .` and
 * `up -> ../DIR`): the scan ends, counts 1 image, and warns once about each link,
 * naming it. Before the (device, inode) check the scan ran until the depth limit
 * (2^64 paths for two links) and `self` alone made 1 image count as 64. */
static void test_symlink_loops_end_fast_count_each_image_once_and_warn_once_each(void **state)
{
    (void)state;
    char dir[256], link[256], target[300];
    make_dir(dir, sizeof dir, scratch, "loops");
    write_gray(dir, "only.png", 7, S, S);
    path_in(link, sizeof link, dir, "self");
    assert_int_equal(symlink(".", link), 0);
    path_in(link, sizeof link, dir, "up");
    snprintf(target, sizeof target, "../%s", strrchr(dir, '/') + 1);
    assert_int_equal(symlink(target, link), 0);
    warnings w = {.n = 0};
    ddpm_dataset_options opt = {.warn = collect, .warn_user = &w};
    ddpm_dataset *ds = NULL;
    int rc = ddpm_dataset_open(&ds, dir, &opt);
    if (rc)
        fprintf(stderr, "open failed: %s\n", ddpm_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(ddpm_dataset_count(ds), 1);
    assert_int_equal(ddpm_dataset_files_found(ds), 1);
    assert_int_equal(ddpm_dataset_skipped(ds), 0);
    assert_int_equal(w.n, 2);
    assert_non_null(strstr(w.lines[0], "/self: "));
    assert_non_null(strstr(w.lines[0], "already scanned"));
    assert_non_null(strstr(w.lines[1], "/up: "));
    ddpm_dataset_close(ds);
}

/* Two links to one outside folder: its images are loaded once, through the first
 * link in path order; a real folder nested deeper than the bound is not entered. */
static void test_second_link_to_a_folder_and_too_deep_folders_are_skipped_with_a_warning(void **state)
{
    (void)state;
    char dir[256], outside[256], link[256], deep[4096];
    make_dir(dir, sizeof dir, scratch, "twice");
    make_dir(outside, sizeof outside, scratch, "outside");
    write_gray(outside, "o.png", 8, S, S);
    path_in(link, sizeof link, dir, "a");
    assert_int_equal(symlink(outside, link), 0);
    path_in(link, sizeof link, dir, "b");
    assert_int_equal(symlink(outside, link), 0);
    snprintf(deep, sizeof deep, "%s", dir);
    for (int d = 0; d < DDPM_DATASET_MAX_DEPTH + 2; d++) {
        strcat(deep, "/d");
        assert_int_equal(mkdir(deep, 0777), 0);
    }
    write_gray(deep, "deep.png", 9, S, S);
    warnings w = {.n = 0};
    ddpm_dataset_options opt = {.warn = collect, .warn_user = &w};
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, dir, &opt), 0);
    assert_int_equal(ddpm_dataset_count(ds), 1);
    assert_non_null(strstr(ddpm_dataset_path(ds, 0), "/a/o.png"));
    int saw_b = 0, saw_deep = 0;
    for (int i = 0; i < w.n && i < 16; i++) {
        saw_b += strstr(w.lines[i], "/b: link to the folder") != NULL;
        saw_deep += strstr(w.lines[i], "nested deeper than") != NULL;
    }
    assert_int_equal(saw_b, 1);
    assert_int_equal(saw_deep, 1);
    ddpm_dataset_close(ds);
}

/* Issue 26, item 12: a folder whose only images are nested too deep said "no
 * files in the folder" after the warning that it skipped them; the error now
 * says that folders were not entered. */
static void test_a_folder_with_only_too_deep_images_says_folders_were_not_entered(void **state)
{
    (void)state;
    char dir[256], deep[4096];
    make_dir(dir, sizeof dir, scratch, "only-deep");
    snprintf(deep, sizeof deep, "%s", dir);
    for (int d = 0; d < DDPM_DATASET_MAX_DEPTH + 2; d++) {
        strcat(deep, "/d");
        assert_int_equal(mkdir(deep, 0777), 0);
    }
    write_gray(deep, "deep.png", 9, S, S);
    warnings w = {.n = 0};
    ddpm_dataset_options opt = {.warn = collect, .warn_user = &w};
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, dir, &opt), DDPM_EINVAL);
    assert_null(ds);
    const char *err = ddpm_last_error();
    assert_non_null(strstr(err, "1 folder not entered"));
    assert_null(strstr(err, "no files in the folder"));
}

/* A stop request (what the CLI's SIGINT/SIGTERM handler sets) makes the open
 * fail with DDPM_EINTR and a message saying so, instead of loading on. */
static void test_stop_request_interrupts_loading_with_a_clear_error(void **state)
{
    (void)state;
    volatile sig_atomic_t stop = 1;
    ddpm_dataset_options opt = {.stop = &stop};
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, root, &opt), DDPM_EINTR);
    assert_null(ds);
    assert_non_null(strstr(ddpm_last_error(), "interrupted"));
    assert_non_null(strstr(ddpm_last_error(), root));
    stop = 0; /* not set: loads as usual */
    assert_int_equal(ddpm_dataset_open(&ds, root, &opt), 0);
    assert_int_equal(ddpm_dataset_count(ds), N_IMAGES);
    ddpm_dataset_close(ds);
}

/* Class folders: numeric names sort as numbers ("2" before "10"), other names
 * bytewise; each image's label is its folder's index, also in batches; an image
 * directly in the data folder is refused. */
static void test_class_folders_give_sorted_names_and_labels(void **state)
{
    (void)state;
    char dir[256], sub[256];
    make_dir(dir, sizeof dir, scratch, "numeric");
    make_dir(sub, sizeof sub, dir, "10");
    write_gray(sub, "a.png", 1, 8, 8);
    write_gray(sub, "b.png", 2, 8, 8);
    make_dir(sub, sizeof sub, dir, "2");
    write_gray(sub, "c.png", 3, 8, 8);
    ddpm_dataset_options opt = {.classes = 1};
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, dir, &opt), 0);
    assert_int_equal(ddpm_dataset_n_classes(ds), 2);
    assert_string_equal(ddpm_dataset_class_name(ds, 0), "2");
    assert_string_equal(ddpm_dataset_class_name(ds, 1), "10");
    for (int i = 0; i < ddpm_dataset_count(ds); i++) {
        const char *p = ddpm_dataset_path(ds, i);
        assert_int_equal(ddpm_dataset_label(ds, i), strstr(p, "/10/") ? 1 : 0);
    }
    /* batches carry the labels of their images */
    float x[3 * 64];
    int labels[3];
    ddpm_rng rng;
    ddpm_rng_init(&rng, 4, DDPM_STREAM_DATA);
    assert_int_equal(ddpm_dataset_next_batch_labeled(ds, x, labels, 3, &rng, 0), 0);
    for (int b = 0; b < 3; b++) {
        int i = identify(ds, x + b * 64);
        assert_true(i >= 0);
        assert_int_equal(labels[b], ddpm_dataset_label(ds, i));
    }
    ddpm_dataset_close(ds);
    /* names: bytewise; without the option: no classes */
    make_dir(dir, sizeof dir, scratch, "named");
    make_dir(sub, sizeof sub, dir, "shirt");
    write_gray(sub, "a.png", 4, 8, 8);
    make_dir(sub, sizeof sub, dir, "boot");
    write_gray(sub, "b.png", 5, 8, 8);
    assert_int_equal(ddpm_dataset_open(&ds, dir, &opt), 0);
    assert_string_equal(ddpm_dataset_class_name(ds, 0), "boot");
    assert_string_equal(ddpm_dataset_class_name(ds, 1), "shirt");
    ddpm_dataset_close(ds);
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), 0);
    assert_int_equal(ddpm_dataset_n_classes(ds), 0);
    assert_int_equal(ddpm_dataset_label(ds, 0), -1);
    ddpm_dataset_close(ds);
    write_gray(dir, "loose.png", 6, 8, 8);
    assert_int_equal(ddpm_dataset_open(&ds, dir, &opt), DDPM_EINVAL);
    assert_null(ds);
    assert_non_null(strstr(ddpm_last_error(), "loose.png"));
}

typedef struct {
    const char *dir;
    int count;
} count_while_writing;

/* A writer for ddpm_atomic_write that writes a whole PNG into its temporary
 * file and, before the rename, opens the folder as a data set. */
static int write_png_then_scan(void *ctx, FILE *f)
{
    count_while_writing *c = ctx;
    char path[256];
    path_in(path, sizeof path, c->dir, "first.png");
    size_t n = 0;
    unsigned char *png = tu_read_file(path, &n);
    if (!png || fwrite(png, 1, n, f) != n || fflush(f) != 0) {
        free(png);
        return -1;
    }
    free(png);
    ddpm_dataset *ds = NULL;
    if (ddpm_dataset_open(&ds, c->dir, NULL) == 0)
        c->count = ddpm_dataset_count(ds);
    ddpm_dataset_close(ds);
    return 0;
}

/* Issue 26, item 8: an interrupted `ddpm convert` left whole PNGs under
 * "x.png.tmp.PID.N", and train counted them (20,002 images from 20,000). A file
 * being written (complete but not yet renamed) now has a hidden name that the
 * scan never reads. */
static void test_a_file_being_written_is_not_read_as_data(void **state)
{
    (void)state;
    char dir[256], path[300];
    make_dir(dir, sizeof dir, scratch, "writing");
    write_gray(dir, "first.png", 1, S, S);
    write_gray(dir, "second.png", 2, S, S);
    count_while_writing c = {dir, -1};
    snprintf(path, sizeof path, "%s/third.png", dir);
    assert_int_equal(ddpm_atomic_write(path, write_png_then_scan, &c), 0);
    assert_int_equal(c.count, 2);
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), 0);
    assert_int_equal(ddpm_dataset_count(ds), 3); /* renamed into place: now it is data */
    ddpm_dataset_close(ds);
}

/* Issue 26, item 7: the fingerprint covers the files' contents (read once, as
 * they are decoded): other pixels under the same names and sizes give another
 * fingerprint, and the data index names the changed file; a fingerprint of the
 * older form (no contents) still matches the same data. */
static void test_fingerprint_covers_contents_and_the_index_names_the_changed_file(void **state)
{
    (void)state;
    char dir[256], index[300], before[160], after[160], why[600];
    make_dir(dir, sizeof dir, scratch, "contents");
    for (int k = 0; k < 3; k++) {
        char name[16];
        snprintf(name, sizeof name, "%d.pgm", k);
        char path[300], text[80];
        path_in(path, sizeof path, dir, name);
        int h = snprintf(text, sizeof text, "P5\n8 8\n255\n");
        memset(text + h, 10 * k, 64);
        assert_int_equal(tu_write_file(path, text, (size_t)h + 64), 0);
    }
    ddpm_dataset *ds = NULL;
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), 0);
    ddpm_dataset_fingerprint(ds, before, sizeof before);
    assert_non_null(strstr(before, "3 images, 225 bytes, names "));
    assert_non_null(strstr(before, ", contents "));
    assert_true(ddpm_dataset_fingerprint_matches(ds, before));
    char old_form[160];
    snprintf(old_form, sizeof old_form, "%.*s", (int)(strstr(before, ", contents ") - before), before);
    assert_true(ddpm_dataset_fingerprint_matches(ds, old_form));
    snprintf(index, sizeof index, "%s/index.txt", scratch);
    assert_int_equal(ddpm_dataset_write_index(ds, index), 0);
    assert_int_equal(ddpm_dataset_first_change(ds, index, why, sizeof why), 1); /* the same data */
    ddpm_dataset_close(ds);
    /* one pixel of 1.pgm */
    char path[300];
    path_in(path, sizeof path, dir, "1.pgm");
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 11 + 30, SEEK_SET), 0);
    fputc(99, f);
    fclose(f);
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), 0);
    ddpm_dataset_fingerprint(ds, after, sizeof after);
    assert_string_not_equal(before, after);
    assert_false(ddpm_dataset_fingerprint_matches(ds, before));
    assert_true(ddpm_dataset_fingerprint_matches(ds, old_form)); /* the older form cannot see contents */
    assert_int_equal(ddpm_dataset_first_change(ds, index, why, sizeof why), 0);
    assert_non_null(strstr(why, "/1.pgm: its contents changed"));
    ddpm_dataset_close(ds);
    /* a file gone, then a file added, are named as such */
    path_in(path, sizeof path, dir, "0.pgm");
    assert_int_equal(unlink(path), 0);
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), 0);
    assert_int_equal(ddpm_dataset_first_change(ds, index, why, sizeof why), 0);
    assert_non_null(strstr(why, "/0.pgm: gone since the run began"));
    assert_int_equal(ddpm_dataset_write_index(ds, index), 0);
    ddpm_dataset_close(ds);
    write_gray(dir, "00.png", 3, S, S);
    assert_int_equal(ddpm_dataset_open(&ds, dir, NULL), 0);
    assert_int_equal(ddpm_dataset_first_change(ds, index, why, sizeof why), 0);
    assert_non_null(strstr(why, "/00.png: new since the run began"));
    ddpm_dataset_close(ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_counts_images_and_warns_about_skipped_files),
        cmocka_unit_test(test_default_size_is_most_common_and_channels_gray),
        cmocka_unit_test(test_options_override_size_and_channels),
        cmocka_unit_test(test_rgb_image_makes_default_three_channels_and_nonsquare_majority_its_short_side),
        cmocka_unit_test(test_strict_mode_refuses_a_non_image_naming_it),
        cmocka_unit_test(test_batches_are_in_range_and_match_the_stored_images),
        cmocka_unit_test(test_every_image_is_seen_once_per_epoch_across_batch_boundaries),
        cmocka_unit_test(test_same_seed_same_order_other_seed_other_order),
        cmocka_unit_test(test_resume_from_epoch_and_position_continues_exactly),
        cmocka_unit_test(test_flip_mirrors_about_half_the_images),
        cmocka_unit_test(test_empty_missing_and_imageless_folders_are_errors_naming_them),
        cmocka_unit_test(test_symlink_loops_end_fast_count_each_image_once_and_warn_once_each),
        cmocka_unit_test(test_second_link_to_a_folder_and_too_deep_folders_are_skipped_with_a_warning),
        cmocka_unit_test(test_a_folder_with_only_too_deep_images_says_folders_were_not_entered),
        cmocka_unit_test(test_stop_request_interrupts_loading_with_a_clear_error),
        cmocka_unit_test(test_class_folders_give_sorted_names_and_labels),
        cmocka_unit_test(test_a_file_being_written_is_not_read_as_data),
        cmocka_unit_test(test_fingerprint_covers_contents_and_the_index_names_the_changed_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
