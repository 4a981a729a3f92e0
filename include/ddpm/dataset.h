/* dataset.h: a folder of images held in memory, served as shuffled batches.
 *
 * ddpm_dataset_open scans a folder recursively (entries whose name starts with
 * '.' are ignored). Symbolic links are followed, but each real folder (device,
 * inode) is entered once: a link back to a folder already scanned (`self -> .`,
 * `up -> ../data`, a second link to the same folder) is skipped with one warning
 * naming it, so loops end and no image is counted twice through them. The scan
 * enters at most DDPM_DATASET_MAX_DEPTH nested folders (deeper ones are skipped
 * with a warning) and refuses a folder holding more than DDPM_DATASET_MAX_FILES
 * files. It sorts the file paths bytewise so the order never depends on
 * the file system, keeps the files stb_image can read (decided by probing each
 * file's header, not by its extension) and decodes each one once into uint8 CHW
 * at the target size and channel count (see imageio.h for the crop, resize and
 * channel rules). Decoding runs in parallel with OpenMP; the result is the same
 * for any thread count.
 *
 * Batches: the items are served in a per-epoch permutation. The permutation of
 * epoch e and the flip of the item at (e, position p) are pure functions of
 * (seed, stream, e, p), computed with Philox counters
 *     permutation of epoch e:  counters from e * 2^40 (Fisher-Yates, ddpm_rng_shuffle)
 *     flip at (e, p):          the low bit of Philox at counter e * 2^40 + 2^39 + p
 * so a resumed run needs only (epoch, position) besides the seed; see
 * ddpm_dataset_seek. A batch that crosses the end of an epoch takes the rest of
 * that epoch and continues with the next epoch's permutation: every image is seen
 * exactly once per epoch and every batch is full. */
#ifndef DDPM_DATASET_H
#define DDPM_DATASET_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "ddpm/rng.h"

typedef struct ddpm_dataset ddpm_dataset;

/* Bounds of the folder scan (see above). */
enum { DDPM_DATASET_MAX_DEPTH = 64, DDPM_DATASET_MAX_FILES = 10000000 };
/* Largest image file (each is read whole into memory once, hashed and decoded). */
#define DDPM_DATASET_MAX_FILE_BYTES (1LL << 30)
#define DDPM_DATASET_MAX_CLASSES 10000

/* Receives each warning line (no trailing newline). */
typedef void (*ddpm_dataset_warn_fn)(void *user, const char *line);

typedef struct {
    int size;     /* image side S; 0 = the most common image size in the folder (the
                     shorter side if that size is not square; ties go to the size
                     met first in path order) */
    int channels; /* 1 or 3; 0 = 1 if every image is gray by content (every pixel
                     has R = G = B after decoding, whatever the file header says;
                     alpha ignored), else 3 */
    int strict;   /* nonzero: a file that is not a readable image is an error */
    int classes;  /* nonzero: one subfolder per class; an image's label is the
                     index of its top-level subfolder among the sorted names of
                     the subfolders that hold images (numerically when every
                     name is a decimal number, as `ddpm convert --labels` writes
                     them; else bytewise). An image directly in the folder is an
                     error. */
    /* Receives the warnings, one line each: "skipped: <file>: <reason>", the
     * summary "skipped N of M files" and "skipped: <link>: ..." for a symlink to a
     * folder already scanned. NULL: no warnings. The library never prints. */
    ddpm_dataset_warn_fn warn;
    void *warn_user;
    /* When set, checked between files while scanning, probing and decoding (a
     * signal handler sets *stop to ask for a stop): the open then fails with
     * DDPM_EINTR. NULL: never stopped. */
    volatile sig_atomic_t *stop;
} ddpm_dataset_options;

/* Opens the folder `dir`. opt may be NULL (all defaults, no warnings). Errors: a
 * missing or unreadable folder (DDPM_EIO), no images in it (DDPM_EINVAL), a
 * skipped file in strict mode (DDPM_EFORMAT), bad options or too many files
 * (DDPM_EINVAL), a stop request (DDPM_EINTR). */
int ddpm_dataset_open(ddpm_dataset **out, const char *dir, const ddpm_dataset_options *opt);
void ddpm_dataset_close(ddpm_dataset *ds);

int ddpm_dataset_count(const ddpm_dataset *ds);    /* images loaded */
int ddpm_dataset_size(const ddpm_dataset *ds);     /* S */
int ddpm_dataset_channels(const ddpm_dataset *ds); /* C */
/* What identifies the data: the number of images loaded, their total size in
 * bytes, a CRC-32C of their paths relative to the folder and a hash of their
 * contents (16 hex digits of the SHA-256 of every image's relative path, size
 * and CRC-32C of its bytes, computed from the bytes as they are decoded, so it
 * costs no second read), as one line such as
 * "60000 images, 17890234 bytes, names 1a2b3c4d, contents 0123456789abcdef".
 * A resumed run compares it with the one its checkpoint recorded. */
void ddpm_dataset_fingerprint(const ddpm_dataset *ds, char *out, size_t size);
/* Whether `recorded` (a checkpoint's fingerprint) names this data. A fingerprint
 * of the older form without ", contents ..." (count, bytes and names only) is
 * compared on what it holds: such a run resumes on the same names and sizes. */
int ddpm_dataset_fingerprint_matches(const ddpm_dataset *ds, const char *recorded);

/* The data index: one line per image, "<CRC-32C, 8 hex> <bytes> <path relative
 * to the folder>" (control bytes, DEL and '\' of the path as \xNN), after the
 * header line below; written atomically. A run keeps one in its folder so that
 * a resume on changed data can name the first file that changed. */
#define DDPM_DATASET_INDEX_HEADER "ddpm data index 1: crc32c bytes path"
#define DDPM_DATASET_MAX_INDEX_BYTES (1LL << 31)
int ddpm_dataset_write_index(const ddpm_dataset *ds, const char *path);
/* The first difference, in path order, between the data and an index written
 * by ddpm_dataset_write_index, as one line in why ("<file>: its contents
 * changed since the run began (...)", "... new since ...", "... gone since
 * ..."): returns 0 when one was found, 1 when the index lists this data
 * exactly, a negative DDPM_E* (message set) when the index cannot be read. */
int ddpm_dataset_first_change(const ddpm_dataset *ds, const char *index_path, char *why, size_t size);

/* The shorter side, in pixels, of the smallest source image (before the
 * resize), and in *index (may be NULL) which image it is. */
int ddpm_dataset_smallest_side(const ddpm_dataset *ds, int *index);

/* The folder's image files as the scan above finds them (each real folder
 * once, depth and count bounds, sorted by path), each checked to be an image
 * stb_image reads by its header, without decoding: *paths (n of them, each
 * malloc'ed, the array too; free both) for callers that read the images
 * themselves (fid.c). Only opt's strict, warn and stop are used; opt may be NULL. */
int ddpm_dataset_list_images(const char *dir, const ddpm_dataset_options *opt, char ***paths, int *n);

/* Files found in the folder and files skipped (count + skipped = found). */
int ddpm_dataset_files_found(const ddpm_dataset *ds);
int ddpm_dataset_skipped(const ddpm_dataset *ds);
/* Path of image i (0 <= i < count), in sorted order; NULL if out of range. */
const char *ddpm_dataset_path(const ddpm_dataset *ds, int i);
/* Image i as uint8 CHW [C, S, S]; NULL if out of range. */
const uint8_t *ddpm_dataset_image_u8(const ddpm_dataset *ds, int i);
/* Image i into x[C, S, S] in [-1, 1]. */
int ddpm_dataset_get(const ddpm_dataset *ds, float *x, int i);

/* Classes (options.classes): their number (0 without), the name of class k, and
 * the label of image i (-1 without classes or out of range). */
int ddpm_dataset_n_classes(const ddpm_dataset *ds);
const char *ddpm_dataset_class_name(const ddpm_dataset *ds, int k);
const char *const *ddpm_dataset_class_names(const ddpm_dataset *ds);
int ddpm_dataset_label(const ddpm_dataset *ds, int i);

/* Fills x[B, C, S, S] with the next B images of the shuffled order, in [-1, 1],
 * each flipped left-right with probability 1/2 when flip is nonzero. Only
 * rng->seed and rng->stream are read (use DDPM_STREAM_DATA, and keep that stream
 * for the dataset alone); the counter is neither used nor advanced. */
int ddpm_dataset_next_batch(ddpm_dataset *ds, float *x, int B, const ddpm_rng *rng, int flip);
/* The same, with each image's label in labels[B] (may be NULL). */
int ddpm_dataset_next_batch_labeled(ddpm_dataset *ds, float *x, int *labels, int B, const ddpm_rng *rng,
                                    int flip);

/* The epoch and the position within it of the next image to be served (a fresh
 * dataset is at 0, 0). */
uint64_t ddpm_dataset_epoch(const ddpm_dataset *ds);
int ddpm_dataset_position(const ddpm_dataset *ds);
/* Continue from (epoch, position), as saved from the two functions above:
 * 0 <= position < count, epoch < 2^24. */
int ddpm_dataset_seek(ddpm_dataset *ds, uint64_t epoch, int position);

#endif
