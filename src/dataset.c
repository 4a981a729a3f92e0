/* dataset.c: folder scan, in-memory uint8 images, per-epoch shuffled batches
 * (see include/ddpm/dataset.h). */
#include "ddpm/dataset.h"

#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <search.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/crc32c.h"
#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "ddpm/imageio.h"
#include "ddpm/sha256.h"

#define EPOCH_SHIFT 40
#define FLIP_OFFSET (UINT64_C(1) << 39)
#define MAX_EPOCH (UINT64_C(1) << 24)

struct ddpm_dataset {
    int n, size, channels;
    int n_found, n_skipped;
    long long total_bytes; /* of the image files loaded */
    uint32_t names_crc;    /* CRC-32C of their paths relative to the folder, in order */
    char contents[17];     /* SHA-256 (16 hex digits) of every (path, bytes, CRC-32C of the file) */
    uint32_t *crcs;        /* [n] CRC-32C of each file's bytes, as decoded */
    long long *file_bytes; /* [n] */
    size_t root_len;       /* paths[i] + root_len: the path relative to the folder */
    int smallest_side, smallest; /* the shorter side of the smallest source image, and its index */
    size_t item_len; /* C * S * S */
    uint8_t *pixels; /* [n, C, S, S] */
    char **paths;    /* [n] */
    int n_classes;
    char **class_names; /* [n_classes] */
    int *labels;        /* [n] with classes, else NULL */
    /* iteration */
    uint64_t epoch;
    int position;
    int *perm; /* permutation of the epoch perm_epoch for (perm_seed, perm_stream) */
    int perm_valid;
    uint64_t perm_epoch, perm_seed, perm_stream;
};

/* One file met by the scan. */
typedef struct {
    char *path;
    char *reason; /* why it is skipped (a whole message naming the file), or NULL */
    int width, height, channels;
    long long bytes; /* file size */
    uint32_t crc;    /* CRC-32C of the bytes decoded */
} entry;

typedef struct {
    entry *items;
    size_t n, cap;
} entry_list;

static int entry_push(entry_list *list, char *path, char *reason)
{
    if (list->n == list->cap) {
        size_t cap = list->cap ? 2 * list->cap : 256;
        entry *items = realloc(list->items, cap * sizeof *items);
        if (!items)
            return ddpm_error(DDPM_ENOMEM, "out of memory listing files");
        list->items = items;
        list->cap = cap;
    }
    list->items[list->n++] = (entry){path, reason, 0, 0, 0, 0, 0};
    return 0;
}

static void entry_list_free(entry_list *list)
{
    for (size_t i = 0; i < list->n; i++) {
        free(list->items[i].path);
        free(list->items[i].reason);
    }
    free(list->items);
}

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    while (a > 1 && dir[a - 1] == '/') /* "data/" + "x" -> "data/x", "/" stays */
        a--;
    char *p = ddpm_malloc(a + b + 2, 1);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (!(a == 1 && dir[0] == '/'))
        p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

static char *format_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format_message(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0)
        return NULL;
    char *s = malloc((size_t)len + 1);
    if (!s)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)len + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Adds a skipped entry whose reason is `reason_fmt` applied to the path. */
static int push_skipped(entry_list *list, char *path, const char *why)
{
    char *reason = format_message("%s: %s", path, why);
    if (!reason) {
        free(path);
        return ddpm_error(DDPM_ENOMEM, "out of memory listing files");
    }
    int rc = entry_push(list, path, reason);
    if (rc) {
        free(path);
        free(reason);
    }
    return rc;
}

static int compare_entries(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->path, ((const entry *)b)->path);
}

/* A real folder already entered, by (device, inode), with the path it was
 * entered under (for the warning about a second link to it). */
typedef struct {
    dev_t dev;
    ino_t ino;
    char *path;
} folder_id;

static int compare_folders(const void *a, const void *b)
{
    const folder_id *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    return (x->ino > y->ino) - (x->ino < y->ino);
}

static void free_folder(void *p)
{
    folder_id *f = p;
    free(f->path);
    free(f);
}

typedef struct {
    entry_list files;
    void *folders;     /* tsearch tree of folder_id: every real folder entered */
    entry_list links;  /* folder links not followed (loops, repeats, too deep): path + message */
    volatile sig_atomic_t *stop;
    int too_many;
} scan_state;

static int stop_requested(const scan_state *sc) { return sc->stop && *sc->stop; }

/* Records the folder st as entered under `path`. Returns 1 if it is new, 0 if it
 * was entered before (*first = the path it was entered under), <0 on no memory. */
static int enter_folder(scan_state *sc, const char *path, const struct stat *st, const char **first)
{
    folder_id *f = malloc(sizeof *f);
    if (!f)
        return ddpm_error(DDPM_ENOMEM, "out of memory listing files");
    *f = (folder_id){st->st_dev, st->st_ino, strdup(path)};
    if (!f->path) {
        free(f);
        return ddpm_error(DDPM_ENOMEM, "out of memory listing files");
    }
    folder_id **slot = tsearch(f, &sc->folders, compare_folders);
    if (!slot) {
        free_folder(f);
        return ddpm_error(DDPM_ENOMEM, "out of memory listing files");
    }
    if (*slot != f) {
        *first = (*slot)->path;
        free_folder(f);
        return 0;
    }
    return 1;
}

/* Appends every file under dir (not sorted); dir (whose stat is st) is entered
 * unless it was before. Only a failure to open the top folder, too many files,
 * a stop request or no memory is an error here; other problems become skipped
 * entries. */
static int scan(scan_state *sc, const char *dir, const struct stat *st, int depth)
{
    const char *first = NULL;
    int rc = enter_folder(sc, dir, st, &first);
    if (rc < 0)
        return rc;
    if (rc == 0) { /* a link to a folder entered before: a loop or a repeat */
        char *path = strdup(dir), *why = format_message("link to the folder %s, already scanned", first);
        rc = path && why ? push_skipped(&sc->links, path, why)
                         : ddpm_error(DDPM_ENOMEM, "out of memory listing files");
        if (!why)
            free(path);
        free(why);
        return rc;
    }
    DIR *d = opendir(dir);
    if (!d) {
        if (depth == 0)
            return ddpm_error(DDPM_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
        char *path = strdup(dir);
        if (!path)
            return ddpm_error(DDPM_ENOMEM, "out of memory listing files");
        return push_skipped(&sc->files, path, "cannot open folder");
    }
    /* The folder's names, sorted, so that which of two links to one folder is
     * followed does not depend on the file system's order. */
    entry_list names = {0};
    rc = 0;
    struct dirent *de;
    while (!rc && (errno = 0, de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') /* ".", "..", hidden files and folders */
            continue;
        if (sc->files.n + names.n >= DDPM_DATASET_MAX_FILES) {
            sc->too_many = 1;
            rc = DDPM_EINVAL;
            break;
        }
        char *path = join_path(dir, de->d_name);
        if (!path)
            rc = DDPM_ENOMEM;
        else if ((rc = entry_push(&names, path, NULL)))
            free(path);
    }
    if (!rc && errno != 0 && de == NULL)
        rc = ddpm_error(DDPM_EIO, "%s: cannot read folder: %s", dir, strerror(errno));
    closedir(d);
    if (names.n > 1)
        qsort(names.items, names.n, sizeof *names.items, compare_entries);
    for (size_t i = 0; !rc && i < names.n; i++) {
        if (stop_requested(sc)) {
            rc = DDPM_EINTR;
            break;
        }
        char *path = names.items[i].path;
        names.items[i].path = NULL; /* owned here from now on */
        struct stat est;
        if (stat(path, &est) != 0) {
            rc = push_skipped(&sc->files, path, strerror(errno));
        } else if (S_ISDIR(est.st_mode)) {
            if (depth + 1 >= DDPM_DATASET_MAX_DEPTH) {
                char why[96];
                snprintf(why, sizeof why, "folder nested deeper than %d levels, not entered",
                         DDPM_DATASET_MAX_DEPTH);
                rc = push_skipped(&sc->links, path, why);
            } else {
                rc = scan(sc, path, &est, depth + 1);
                free(path);
            }
        } else if (!S_ISREG(est.st_mode)) {
            rc = push_skipped(&sc->files, path, "not a regular file");
        } else {
            rc = entry_push(&sc->files, path, NULL);
            if (rc)
                free(path);
            else
                sc->files.items[sc->files.n - 1].bytes = (long long)est.st_size;
        }
    }
    entry_list_free(&names);
    return rc;
}

typedef struct {
    int width, height, first;
    int count;
} size_count;

static int compare_sizes(const void *a, const void *b)
{
    const size_count *x = a, *y = b;
    if (x->width != y->width)
        return x->width < y->width ? -1 : 1;
    if (x->height != y->height)
        return x->height < y->height ? -1 : 1;
    return (x->first > y->first) - (x->first < y->first);
}

/* The most common (width, height) among the entries that probed well; ties go to
 * the size whose first file comes first. Returns its shorter side. */
static int most_common_side(const entry_list *list)
{
    size_count *s = malloc((list->n ? list->n : 1) * sizeof *s);
    if (!s)
        return ddpm_error(DDPM_ENOMEM, "out of memory choosing the image size");
    size_t m = 0;
    for (size_t i = 0; i < list->n; i++)
        if (!list->items[i].reason)
            s[m++] = (size_count){list->items[i].width, list->items[i].height, (int)i, 1};
    qsort(s, m, sizeof *s, compare_sizes);
    size_count best = {0, 0, 0, 0};
    for (size_t i = 0; i < m;) {
        size_t j = i;
        while (j < m && s[j].width == s[i].width && s[j].height == s[i].height)
            j++;
        int count = (int)(j - i); /* s[i] has the smallest first index of its run */
        if (count > best.count || (count == best.count && s[i].first < best.first))
            best = (size_count){s[i].width, s[i].height, s[i].first, count};
        i = j;
    }
    free(s);
    return best.width < best.height ? best.width : best.height;
}

/* One warning per folder link not followed, then one for every skipped file (in
 * path order) and the summary line. */
static void emit_warnings(const ddpm_dataset_options *opt, const entry_list *links,
                          const entry_list *list, int n_skipped)
{
    if (!opt->warn)
        return;
    char line[1200];
    for (size_t i = 0; i < links->n; i++) {
        snprintf(line, sizeof line, "skipped: %s", links->items[i].reason);
        opt->warn(opt->warn_user, line);
    }
    if (!n_skipped)
        return;
    for (size_t i = 0; i < list->n; i++)
        if (list->items[i].reason) {
            snprintf(line, sizeof line, "skipped: %s", list->items[i].reason);
            opt->warn(opt->warn_user, line);
        }
    snprintf(line, sizeof line, "skipped %d of %zu files", n_skipped, list->n);
    opt->warn(opt->warn_user, line);
}

static int first_skipped_error(const entry_list *list)
{
    for (size_t i = 0; i < list->n; i++)
        if (list->items[i].reason)
            return ddpm_error(DDPM_EFORMAT, "%s (--strict refuses files that are not images)",
                              list->items[i].reason);
    return 0;
}

/* Moves the thread-local error message of a failed probe/load into the entry. */
static void set_reason_from_error(entry *e)
{
    e->reason = strdup(ddpm_last_error());
    if (!e->reason) /* keep the entry marked as skipped even without a message */
        e->reason = format_message("%s", "?");
}

/* Decimal names sort as numbers, others bytewise. */
static int is_decimal(const char *s)
{
    if (!*s || strlen(s) > 9)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static int compare_names_bytewise(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int compare_names_decimal(const void *a, const void *b)
{
    long u = atol(*(const char *const *)a), v = atol(*(const char *const *)b);
    return u != v ? (u < v ? -1 : 1) : compare_names_bytewise(a, b);
}

/* The top-level subfolder of path under dir, as a new string; NULL (and a
 * message) when the file is directly in dir. */
static char *top_folder(const char *dir, const char *path)
{
    const char *rel = path + strlen(dir);
    while (*rel == '/')
        rel++;
    const char *slash = strchr(rel, '/');
    if (!slash) {
        ddpm_error(DDPM_EINVAL, "%s: with classes every image must be in a class subfolder of %s", path, dir);
        return NULL;
    }
    return strndup(rel, (size_t)(slash - rel));
}

/* Class names and labels from the paths (options.classes). */
static int assign_classes(ddpm_dataset *ds, const char *dir)
{
    char **names = ddpm_calloc((size_t)ds->n, sizeof *names);
    ds->labels = ddpm_malloc((size_t)ds->n, sizeof *ds->labels);
    if (!names || !ds->labels) {
        free(names);
        return DDPM_ENOMEM;
    }
    int rc = DDPM_OK, n = 0;
    for (int i = 0; i < ds->n && !rc; i++) {
        char *t = top_folder(dir, ds->paths[i]);
        if (!t) {
            rc = DDPM_EINVAL;
            break;
        }
        int seen = 0;
        for (int k = n - 1; k >= 0 && !seen; k--) /* paths are sorted: the same folder is usually the last */
            seen = !strcmp(names[k], t);
        if (seen)
            free(t);
        else
            names[n++] = t;
    }
    if (!rc && n > DDPM_DATASET_MAX_CLASSES)
        rc = ddpm_error(DDPM_EINVAL, "%s: %d class folders (at most %d)", dir, n, DDPM_DATASET_MAX_CLASSES);
    if (!rc) {
        int all_decimal = 1;
        for (int k = 0; k < n; k++)
            all_decimal &= is_decimal(names[k]);
        int (*cmp)(const void *, const void *) = all_decimal ? compare_names_decimal : compare_names_bytewise;
        qsort(names, (size_t)n, sizeof *names, cmp);
        for (int i = 0; i < ds->n && !rc; i++) {
            char *t = top_folder(dir, ds->paths[i]);
            char **hit = t ? bsearch(&t, names, (size_t)n, sizeof *names, cmp) : NULL;
            free(t);
            ds->labels[i] = hit ? (int)(hit - names) : -1;
        }
    }
    if (rc) {
        for (int k = 0; k < n; k++)
            free(names[k]);
        free(names);
        return rc;
    }
    ds->class_names = names;
    ds->n_classes = n;
    return DDPM_OK;
}

/* Gray by content: when every pixel of every decoded image has R = G = B, keep
 * one plane per image. The crop and the resize treat the three planes alike, so
 * equal planes after decoding means the picture is gray, whatever its file
 * header says (screenshots, scans and exports often save gray as RGB). */
static void collapse_if_gray(ddpm_dataset *ds)
{
    size_t plane = (size_t)ds->size * ds->size;
    for (int i = 0; i < ds->n; i++) {
        const uint8_t *img = ds->pixels + (size_t)i * ds->item_len;
        if (memcmp(img, img + plane, plane) || memcmp(img, img + 2 * plane, plane))
            return;
    }
    for (int i = 0; i < ds->n; i++) /* destination never passes the source */
        memmove(ds->pixels + (size_t)i * plane, ds->pixels + (size_t)i * ds->item_len, plane);
    ds->channels = 1;
    ds->item_len = plane;
    uint8_t *p = realloc(ds->pixels, (size_t)ds->n * plane);
    if (p)
        ds->pixels = p;
}

/* The folder's files (scanned, sorted by path) with each one's header probed:
 * a file that is not a readable image carries its reason. */
static int list_and_probe(const char *dir, const struct stat *st, const ddpm_dataset_options *opt,
                          entry_list *list_out, entry_list *links_out)
{
    scan_state sc = {.stop = opt->stop};
    int rc = scan(&sc, dir, st, 0);
    tdestroy(sc.folders, free_folder);
    entry_list list = sc.files, links = sc.links;
    if (rc == DDPM_EINTR)
        rc = ddpm_error(DDPM_EINTR, "%s: interrupted while listing files (%zu found so far)", dir, list.n);
    else if (sc.too_many)
        rc = ddpm_error(DDPM_EINVAL, "%s: more than %d files; point ddpm at a smaller folder", dir,
                        DDPM_DATASET_MAX_FILES);
    if (rc) {
        entry_list_free(&list);
        entry_list_free(&links);
        return rc;
    }
    if (list.n > 1)
        qsort(list.items, list.n, sizeof *list.items, compare_entries);
    long n_files = (long)list.n;

    /* Probe every file's header. Each thread's error message is its own. */
    volatile sig_atomic_t *stop = opt->stop; /* only read in the loops: no data race */
#pragma omp parallel for schedule(dynamic, 64)
    for (long i = 0; i < n_files; i++) {
        entry *e = &list.items[i];
        if (e->reason || (stop && *stop))
            continue;
        if (ddpm_image_probe(e->path, &e->width, &e->height, &e->channels) != 0)
            set_reason_from_error(e);
    }
    if (stop && *stop) {
        entry_list_free(&list);
        entry_list_free(&links);
        return ddpm_error(DDPM_EINTR, "%s: interrupted while reading image headers (%ld files)", dir,
                          n_files);
    }
    *list_out = list;
    *links_out = links;
    return 0;
}

/* Reads e's file once (a regular file of at most DDPM_DATASET_MAX_FILE_BYTES),
 * hashes those bytes and decodes them: the fingerprint covers exactly the bytes
 * trained on, at no second read. */
static int load_entry(entry *e, uint8_t *out, int size, int channels)
{
    int fd = open(e->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", e->path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0)
        rc = ddpm_error(DDPM_EIO, "%s: cannot stat: %s", e->path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = ddpm_error(DDPM_EIO, "%s: not a regular file", e->path);
    else if (st.st_size > DDPM_DATASET_MAX_FILE_BYTES)
        rc = ddpm_error(DDPM_EFORMAT, "%s: too large (%lld bytes; an image file may have %lld)", e->path,
                        (long long)st.st_size, (long long)DDPM_DATASET_MAX_FILE_BYTES);
    size_t len = rc ? 0 : (size_t)st.st_size, got = 0;
    uint8_t *bytes = rc ? NULL : ddpm_malloc(len ? len : 1, 1);
    if (!rc && !bytes)
        rc = DDPM_ENOMEM;
    while (!rc && got < len) { /* at most the size fstat gave */
        ssize_t r = read(fd, bytes + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            rc = ddpm_error(DDPM_EIO, "%s: read failed: %s", e->path, strerror(errno));
        else if (r == 0)
            rc = ddpm_error(DDPM_EIO, "%s: shrank while being read", e->path);
        else
            got += (size_t)r;
    }
    close(fd);
    if (!rc)
        rc = ddpm_image_decode_u8(e->path, bytes, len, out, size, channels);
    if (!rc) {
        e->crc = ddpm_crc32c(0, bytes, len);
        e->bytes = (long long)len;
    }
    free(bytes);
    return rc;
}

/* The contents hash: SHA-256 over each image's relative path (with its NUL),
 * its size (8 bytes, little-endian) and its CRC-32C (4 bytes, little-endian). */
static void hash_contents(ddpm_dataset *ds)
{
    ddpm_sha256 h;
    ddpm_sha256_init(&h);
    for (int i = 0; i < ds->n; i++) {
        const char *rel = ds->paths[i] + ds->root_len;
        uint8_t num[12];
        for (int k = 0; k < 8; k++)
            num[k] = (uint8_t)((unsigned long long)ds->file_bytes[i] >> (8 * k));
        for (int k = 0; k < 4; k++)
            num[8 + k] = (uint8_t)(ds->crcs[i] >> (8 * k));
        ddpm_sha256_update(&h, rel, strlen(rel) + 1);
        ddpm_sha256_update(&h, num, sizeof num);
    }
    uint8_t digest[32];
    char hex[65];
    ddpm_sha256_final(&h, digest);
    ddpm_sha256_hex(hex, digest);
    memcpy(ds->contents, hex, 16);
    ds->contents[16] = '\0';
}

int ddpm_dataset_open(ddpm_dataset **out, const char *dir, const ddpm_dataset_options *opt_in)
{
    *out = NULL;
    ddpm_dataset_options opt = {0};
    if (opt_in)
        opt = *opt_in;
    if (opt.channels != 0 && opt.channels != 1 && opt.channels != 3)
        return ddpm_error(DDPM_EINVAL, "%s: channel count %d (must be 0 for auto, 1 or 3)", dir,
                          opt.channels);
    if (opt.size < 0 || opt.size > DDPM_IMAGE_MAX_SIDE)
        return ddpm_error(DDPM_EINVAL, "%s: image size %d out of range (0 for auto, 1..%d)", dir,
                          opt.size, DDPM_IMAGE_MAX_SIDE);

    struct stat st;
    if (stat(dir, &st) != 0)
        return ddpm_error(DDPM_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return ddpm_error(DDPM_EIO, "%s: not a folder", dir);

    size_t root_len = strlen(dir); /* paths are dir (without trailing '/') + '/' + name */
    while (root_len > 1 && dir[root_len - 1] == '/')
        root_len--;
    root_len += !(root_len == 1 && dir[0] == '/');
    entry_list list, links;
    int rc = list_and_probe(dir, &st, &opt, &list, &links);
    if (rc)
        return rc;
    long n_files = (long)list.n;
    volatile sig_atomic_t *stop = opt.stop; /* only read in the loops: no data race */
    int n_ok = 0, all_gray = 1;
    for (size_t i = 0; i < list.n; i++) {
        if (list.items[i].reason)
            continue;
        n_ok++;
        if (list.items[i].channels > 2)
            all_gray = 0;
    }
    if (opt.strict && n_ok < (int)list.n) {
        rc = first_skipped_error(&list);
        entry_list_free(&list);
        entry_list_free(&links);
        return rc;
    }

    ddpm_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) {
        entry_list_free(&list);
        entry_list_free(&links);
        return ddpm_error(DDPM_ENOMEM, "out of memory opening %s", dir);
    }
    ds->root_len = root_len;
    if (n_ok > 0) {
        ds->size = opt.size ? opt.size : most_common_side(&list);
        ds->channels = opt.channels ? opt.channels : (all_gray ? 1 : 3);
        if (ds->size < 0) {
            rc = ds->size;
            goto fail;
        }
        ds->item_len = (size_t)ds->channels * ds->size * ds->size;
        ds->pixels = ddpm_malloc((size_t)n_ok, ds->item_len);
        ds->paths = ddpm_calloc((size_t)n_ok, sizeof *ds->paths);
        ds->crcs = ddpm_malloc((size_t)n_ok, sizeof *ds->crcs);
        ds->file_bytes = ddpm_malloc((size_t)n_ok, sizeof *ds->file_bytes);
        if (!ds->pixels || !ds->paths || !ds->crcs || !ds->file_bytes) {
            rc = ddpm_error(DDPM_ENOMEM, "%s: out of memory for %d images of %zu bytes", dir, n_ok,
                            ds->item_len);
            goto fail;
        }
        /* Slot k of the good entries, in path order. */
        int *slot = ddpm_malloc(list.n ? list.n : 1, sizeof *slot);
        if (!slot) {
            rc = DDPM_ENOMEM;
            goto fail;
        }
        for (size_t i = 0, k = 0; i < list.n; i++)
            slot[i] = list.items[i].reason ? -1 : (int)k++;
        size_t item_len = ds->item_len;
        uint8_t *pixels = ds->pixels;
        int size = ds->size, channels = ds->channels;
#pragma omp parallel for schedule(dynamic, 16)
        for (long i = 0; i < n_files; i++) {
            if (slot[i] < 0 || (stop && *stop))
                continue;
            entry *e = &list.items[i];
            if (load_entry(e, pixels + (size_t)slot[i] * item_len, size, channels))
                set_reason_from_error(e);
        }
        if (stop && *stop) {
            free(slot);
            rc = ddpm_error(DDPM_EINTR, "%s: interrupted while decoding %d images", dir, n_ok);
            goto fail;
        }
        /* Compact: drop the files that probed but did not decode. */
        int k = 0;
        for (size_t i = 0; i < list.n; i++) {
            if (slot[i] < 0 || list.items[i].reason)
                continue;
            if (slot[i] != k)
                memmove(pixels + (size_t)k * item_len, pixels + (size_t)slot[i] * item_len,
                        item_len);
            const entry *e = &list.items[i];
            int side = e->width < e->height ? e->width : e->height;
            if (k == 0 || side < ds->smallest_side) {
                ds->smallest_side = side;
                ds->smallest = k;
            }
            ds->crcs[k] = e->crc;
            ds->file_bytes[k] = e->bytes;
            ds->paths[k++] = list.items[i].path;
            ds->total_bytes += list.items[i].bytes;
            const char *rel = list.items[i].path + root_len;
            ds->names_crc = ddpm_crc32c(ds->names_crc, rel, strlen(rel) + 1);
            list.items[i].path = NULL; /* now owned by ds */
        }
        free(slot);
        ds->n = k;
        hash_contents(ds);
    }
    ds->n_found = (int)list.n;
    ds->n_skipped = (int)list.n - ds->n;
    if (opt.strict && ds->n_skipped) {
        rc = first_skipped_error(&list);
        goto fail;
    }
    emit_warnings(&opt, &links, &list, ds->n_skipped);
    if (ds->n == 0) {
        if (list.n == 0 && links.n)
            rc = ddpm_error(DDPM_EINVAL,
                            "%s: no files found: %zu folder%s not entered (nested too deep, or links to "
                            "folders already seen; see the warnings)",
                            dir, links.n, links.n == 1 ? "" : "s");
        else if (list.n == 0)
            rc = ddpm_error(DDPM_EINVAL, "%s: no files in the folder", dir);
        else
            rc = ddpm_error(DDPM_EINVAL, "%s: no images found (%zu files, none readable by stb_image)",
                            dir, list.n);
        goto fail;
    }
    if (!opt.channels && ds->channels == 3)
        collapse_if_gray(ds);
    ds->perm = ddpm_malloc((size_t)ds->n, sizeof *ds->perm);
    if (!ds->perm) {
        rc = DDPM_ENOMEM;
        goto fail;
    }
    if (opt.classes && (rc = assign_classes(ds, dir)))
        goto fail;
    if (ds->n < n_ok) { /* give back the slots of files that failed to decode */
        uint8_t *p = realloc(ds->pixels, (size_t)ds->n * ds->item_len);
        if (p)
            ds->pixels = p;
    }
    entry_list_free(&list);
    entry_list_free(&links);
    *out = ds;
    return 0;

fail:
    entry_list_free(&list);
    entry_list_free(&links);
    ddpm_dataset_close(ds);
    return rc;
}

void ddpm_dataset_close(ddpm_dataset *ds)
{
    if (!ds)
        return;
    if (ds->paths)
        for (int i = 0; i < ds->n; i++)
            free(ds->paths[i]);
    free(ds->paths);
    for (int k = 0; k < ds->n_classes; k++)
        free(ds->class_names[k]);
    free(ds->class_names);
    free(ds->labels);
    free(ds->pixels);
    free(ds->perm);
    free(ds->crcs);
    free(ds->file_bytes);
    free(ds);
}

int ddpm_dataset_count(const ddpm_dataset *ds) { return ds->n; }

void ddpm_dataset_fingerprint(const ddpm_dataset *ds, char *out, size_t size)
{
    snprintf(out, size, "%d images, %lld bytes, names %08x, contents %s", ds->n, ds->total_bytes,
             (unsigned)ds->names_crc, ds->contents);
}

int ddpm_dataset_fingerprint_matches(const ddpm_dataset *ds, const char *recorded)
{
    char now[160];
    ddpm_dataset_fingerprint(ds, now, sizeof now);
    if (strstr(recorded, ", contents "))
        return strcmp(now, recorded) == 0;
    /* the form without contents: what it holds must match */
    snprintf(now, sizeof now, "%d images, %lld bytes, names %08x", ds->n, ds->total_bytes,
             (unsigned)ds->names_crc);
    return strcmp(now, recorded) == 0;
}

/* One byte of a path in the index: control bytes, DEL and '\\' as \xNN. */
static void put_escaped(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '\\')
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
}

static int write_index(void *ctx, FILE *f)
{
    const ddpm_dataset *ds = ctx;
    fputs(DDPM_DATASET_INDEX_HEADER "\n", f);
    for (int i = 0; i < ds->n; i++) {
        fprintf(f, "%08x %lld ", (unsigned)ds->crcs[i], ds->file_bytes[i]);
        put_escaped(f, ds->paths[i] + ds->root_len);
        fputc('\n', f);
    }
    return ferror(f) ? -1 : 0;
}

int ddpm_dataset_write_index(const ddpm_dataset *ds, const char *path)
{
    return ddpm_atomic_write(path, write_index, (void *)ds);
}

/* Decodes \xNN in place; 0 on success. */
static int unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r;) {
        if (*r == '\\') {
            unsigned v;
            if (r[1] != 'x' || sscanf(r + 2, "%2x", &v) != 1 || !r[2] || !r[3] || v == 0)
                return -1;
            *w++ = (char)v;
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return 0;
}

int ddpm_dataset_first_change(const ddpm_dataset *ds, const char *index_path, char *why, size_t size)
{
    why[0] = '\0';
    struct stat st;
    if (stat(index_path, &st) != 0)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", index_path, strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size > DDPM_DATASET_MAX_INDEX_BYTES)
        return ddpm_error(DDPM_EFORMAT, "%s: not a data index ddpm wrote", index_path);
    FILE *f = fopen(index_path, "rb");
    if (!f)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", index_path, strerror(errno));
    size_t len = (size_t)st.st_size;
    char *text = ddpm_malloc(len + 1, 1);
    size_t got = text ? fread(text, 1, len, f) : 0;
    fclose(f);
    if (!text)
        return DDPM_ENOMEM;
    text[got] = '\0';
    size_t header = strlen(DDPM_DATASET_INDEX_HEADER);
    if (got < header + 1 || memcmp(text, DDPM_DATASET_INDEX_HEADER "\n", header + 1) != 0) {
        free(text);
        return ddpm_error(DDPM_EFORMAT, "%s: not a data index ddpm wrote", index_path);
    }
    const char *root = ds->n ? ds->paths[0] : "";
    int root_len = (int)ds->root_len;
    int i = 0, rc = 1;
    char *line = text + header + 1;
    while (rc == 1) {
        char *nl = line && *line ? strchr(line, '\n') : NULL;
        char *rel = NULL;
        unsigned crc = 0;
        long long bytes = 0;
        if (nl) {
            *nl = '\0';
            int used = 0;
            if (sscanf(line, "%8x %lld%n", &crc, &bytes, &used) != 2 || line[used] != ' ' ||
                unescape(line + used + 1)) {
                rc = ddpm_error(DDPM_EFORMAT, "%s: not a data index ddpm wrote", index_path);
                break;
            }
            rel = line + used + 1;
        }
        if (!rel && i == ds->n)
            break; /* no difference */
        int cmp = !rel ? -1 : i == ds->n ? 1 : strcmp(ds->paths[i] + root_len, rel);
        if (cmp < 0) {
            snprintf(why, size, "%s: new since the run began", ds->paths[i]);
            rc = 0;
        } else if (cmp > 0) {
            snprintf(why, size, "%.*s%s: gone since the run began", root_len, root, rel);
            rc = 0;
        } else if (ds->file_bytes[i] != bytes || ds->crcs[i] != crc) {
            snprintf(why, size, "%s: its contents changed since the run began (%lld bytes, CRC-32C %08x; "
                                "then %lld bytes, %08x)",
                     ds->paths[i], ds->file_bytes[i], (unsigned)ds->crcs[i], bytes, crc);
            rc = 0;
        } else {
            i++;
            line = nl + 1;
        }
    }
    free(text);
    return rc;
}

int ddpm_dataset_smallest_side(const ddpm_dataset *ds, int *index)
{
    if (index)
        *index = ds->smallest;
    return ds->smallest_side;
}

int ddpm_dataset_list_images(const char *dir, const ddpm_dataset_options *opt_in, char ***paths_out, int *n_out)
{
    *paths_out = NULL;
    *n_out = 0;
    ddpm_dataset_options opt = {0};
    if (opt_in)
        opt = *opt_in;
    struct stat st;
    if (stat(dir, &st) != 0)
        return ddpm_error(DDPM_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return ddpm_error(DDPM_EIO, "%s: not a folder", dir);
    entry_list list, links;
    int rc = list_and_probe(dir, &st, &opt, &list, &links);
    if (rc)
        return rc;
    int n_ok = 0;
    for (size_t i = 0; i < list.n; i++)
        n_ok += !list.items[i].reason;
    if (opt.strict && n_ok < (int)list.n)
        rc = first_skipped_error(&list);
    char **paths = rc ? NULL : ddpm_calloc((size_t)(n_ok ? n_ok : 1), sizeof *paths);
    if (!rc && !paths)
        rc = DDPM_ENOMEM;
    if (!rc) {
        emit_warnings(&opt, &links, &list, (int)list.n - n_ok);
        int k = 0;
        for (size_t i = 0; i < list.n; i++)
            if (!list.items[i].reason) {
                paths[k++] = list.items[i].path;
                list.items[i].path = NULL;
            }
        *paths_out = paths;
        *n_out = n_ok;
    }
    entry_list_free(&list);
    entry_list_free(&links);
    return rc;
}
int ddpm_dataset_n_classes(const ddpm_dataset *ds) { return ds->n_classes; }
const char *ddpm_dataset_class_name(const ddpm_dataset *ds, int k)
{
    return k >= 0 && k < ds->n_classes ? ds->class_names[k] : NULL;
}
const char *const *ddpm_dataset_class_names(const ddpm_dataset *ds)
{
    return (const char *const *)ds->class_names;
}
int ddpm_dataset_label(const ddpm_dataset *ds, int i)
{
    return ds->labels && i >= 0 && i < ds->n ? ds->labels[i] : -1;
}
int ddpm_dataset_size(const ddpm_dataset *ds) { return ds->size; }
int ddpm_dataset_channels(const ddpm_dataset *ds) { return ds->channels; }
int ddpm_dataset_files_found(const ddpm_dataset *ds) { return ds->n_found; }
int ddpm_dataset_skipped(const ddpm_dataset *ds) { return ds->n_skipped; }
uint64_t ddpm_dataset_epoch(const ddpm_dataset *ds) { return ds->epoch; }
int ddpm_dataset_position(const ddpm_dataset *ds) { return ds->position; }

const char *ddpm_dataset_path(const ddpm_dataset *ds, int i)
{
    return i >= 0 && i < ds->n ? ds->paths[i] : NULL;
}

const uint8_t *ddpm_dataset_image_u8(const ddpm_dataset *ds, int i)
{
    return i >= 0 && i < ds->n ? ds->pixels + (size_t)i * ds->item_len : NULL;
}

int ddpm_dataset_get(const ddpm_dataset *ds, float *x, int i)
{
    if (i < 0 || i >= ds->n)
        return ddpm_error(DDPM_EINVAL, "dataset image %d out of range (0..%d)", i, ds->n - 1);
    ddpm_image_u8_to_float(x, ds->pixels + (size_t)i * ds->item_len, ds->item_len);
    return 0;
}

int ddpm_dataset_seek(ddpm_dataset *ds, uint64_t epoch, int position)
{
    if (epoch >= MAX_EPOCH || position < 0 || position >= ds->n)
        return ddpm_error(DDPM_EINVAL, "dataset position (epoch %llu, position %d) out of range "
                                       "(%d images)",
                          (unsigned long long)epoch, position, ds->n);
    ds->epoch = epoch;
    ds->position = position;
    return 0;
}

/* The permutation of the current epoch, rebuilt from scratch whenever the epoch
 * or the key changes, so that it depends on nothing but (seed, stream, epoch). */
static void ensure_permutation(ddpm_dataset *ds, const ddpm_rng *rng)
{
    if (ds->perm_valid && ds->perm_epoch == ds->epoch && ds->perm_seed == rng->seed &&
        ds->perm_stream == rng->stream)
        return;
    for (int i = 0; i < ds->n; i++)
        ds->perm[i] = i;
    ddpm_rng shuffle_rng = {rng->seed, rng->stream, ds->epoch << EPOCH_SHIFT};
    ddpm_rng_shuffle(&shuffle_rng, ds->perm, (size_t)ds->n);
    ds->perm_valid = 1;
    ds->perm_epoch = ds->epoch;
    ds->perm_seed = rng->seed;
    ds->perm_stream = rng->stream;
}

int ddpm_dataset_next_batch(ddpm_dataset *ds, float *x, int B, const ddpm_rng *rng, int flip)
{
    return ddpm_dataset_next_batch_labeled(ds, x, NULL, B, rng, flip);
}

int ddpm_dataset_next_batch_labeled(ddpm_dataset *ds, float *x, int *labels, int B, const ddpm_rng *rng,
                                    int flip)
{
    if (B <= 0 || !x || !rng)
        return ddpm_error(DDPM_EINVAL, "dataset batch: bad arguments (B = %d)", B);
    int S = ds->size, C = ds->channels;
    for (int b = 0; b < B; b++) {
        if (ds->epoch >= MAX_EPOCH)
            return ddpm_error(DDPM_EINVAL, "dataset: epoch limit %llu reached",
                              (unsigned long long)MAX_EPOCH);
        ensure_permutation(ds, rng);
        const uint8_t *src = ds->pixels + (size_t)ds->perm[ds->position] * ds->item_len;
        if (labels)
            labels[b] = ds->labels ? ds->labels[ds->perm[ds->position]] : -1;
        float *dst = x + (size_t)b * ds->item_len;
        int mirror = 0;
        if (flip) {
            uint32_t w[4];
            ddpm_philox(w, rng->seed, rng->stream,
                        (ds->epoch << EPOCH_SHIFT) + FLIP_OFFSET + (uint64_t)ds->position);
            mirror = (int)(w[0] & 1u);
        }
        if (mirror) {
            for (int r = 0; r < C * S; r++) /* every row of every channel */
                for (int c = 0; c < S; c++)
                    dst[(size_t)r * S + c] = (float)src[(size_t)r * S + (S - 1 - c)] / 127.5f - 1.0f;
        } else {
            ddpm_image_u8_to_float(dst, src, ds->item_len);
        }
        if (++ds->position == ds->n) {
            ds->position = 0;
            ds->epoch++;
        }
    }
    return 0;
}
