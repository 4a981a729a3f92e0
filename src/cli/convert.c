/* convert.c: `ddpm convert`: IDX image files (MNIST, Fashion-MNIST, ...) to a
 * folder of PNGs that `ddpm train` reads. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "guard.h"
#include "ddpm/error.h"
#include "ddpm/fsutil.h"
#include "ddpm/idx.h"
#include "ddpm/imageio.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ddpm convert IMAGES.idx OUT_DIR [options]\n\n"
            "Writes each image of a uint8 IDX image file (magic 0x00000803, [n, rows, cols])\n"
            "as a gray PNG: OUT_DIR/00000.png, OUT_DIR/00001.png, ... (numbered from 0 in file\n"
            "order, more digits when n > 100000). IMAGES.idx may be '-' for standard input;\n"
            "gzipped files must be decompressed first:\n"
            "    gunzip -c train-images-idx3-ubyte.gz | ddpm convert - data/train\n"
            "OUT_DIR and its parents are created; it must be new or empty unless --force.\n"
            "Each PNG is written to a hidden temporary name (.NNNNN.png.ddpm.tmp.PID.N, which\n"
            "`ddpm train` never reads) and renamed into place; the temporary files an\n"
            "interrupted convert left in OUT_DIR are removed at the start of the next one.\n\n"
            "options:\n"
            "  --labels FILE  IDX label file (magic 0x00000801, [n]) of the same length: write\n"
            "                 OUT_DIR/<label>/NNNNN.png instead (NNNNN stays the index in the\n"
            "                 file). Default: none, one flat folder\n"
            "  --limit N      convert only the first N images (N >= 1). Default: all\n"
            "  --force        write into an OUT_DIR that already holds files, replacing PNGs of\n"
            "                 the same names. Default: off (refuse)\n"
            "  --quiet        no progress and no summary line. Default: off\n"
            "  --no-warnings  do not print warnings (--quiet keeps them)\n"
            "  --help         this text\n\n"
            "exit codes: 0 ok, 1 bad input or a file problem, 2 usage error\n");
}

static int folder_is_empty(const char *path, int *empty)
{
    DIR *d = opendir(path);
    if (!d)
        return ddpm_error(DDPM_EIO, "%s: cannot open folder: %s", path, strerror(errno));
    struct dirent *de;
    *empty = 1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            *empty = 0;
            break;
        }
    closedir(d);
    return 0;
}

/* What an interrupted convert left: its temporary files (ddpm_temp_name's
 * hidden names, which `ddpm train` never reads) in OUT_DIR and in the label
 * folders 0..255 below it, when the process that wrote them is gone. */
static int remove_own_leftovers(const char *out_dir, int *n_removed)
{
    int rc = ddpm_remove_stale_temps(out_dir, n_removed);
    size_t len = strlen(out_dir) + 8;
    char *sub = malloc(len);
    if (!sub)
        return rc ? rc : ddpm_error(DDPM_ENOMEM, "out of memory");
    for (int l = 0; l < 256 && !rc; l++) {
        int n = 0;
        snprintf(sub, len, "%s/%d", out_dir, l);
        struct stat st;
        if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            rc = ddpm_remove_stale_temps(sub, &n);
        *n_removed += n;
    }
    free(sub);
    return rc;
}

typedef struct {
    const char *images_path, *labels_path, *out_dir;
    long limit; /* 0 = all */
    int force, quiet;
} convert_config;

static int run(const convert_config *cfg)
{
    ddpm_idx images = {0}, labels = {0};
    int rc = ddpm_idx_read(&images, cfg->images_path, 3);
    if (rc)
        return rc;
    if (cfg->labels_path) {
        rc = ddpm_idx_read(&labels, cfg->labels_path, 1);
        if (!rc && labels.dims[0] != images.dims[0])
            rc = ddpm_error(DDPM_EFORMAT, "%s: %u labels for %u images", cfg->labels_path,
                            (unsigned)labels.dims[0], (unsigned)images.dims[0]);
        if (rc) {
            ddpm_idx_free(&images);
            return rc;
        }
    }
    const char *images_name = strcmp(cfg->images_path, "-") ? cfg->images_path : "<stdin>";
    long n = (long)images.dims[0];
    if (cfg->limit > 0 && cfg->limit < n)
        n = cfg->limit;
    int rows = (int)images.dims[1], cols = (int)images.dims[2];
    size_t image_bytes = (size_t)rows * cols;
    if (n == 0)
        rc = ddpm_error(DDPM_EFORMAT, "%s: holds no images", images_name);

    int empty = 1, n_stale = 0;
    if (!rc)
        rc = ddpm_mkdir_p(cfg->out_dir);
    if (!rc)
        rc = remove_own_leftovers(cfg->out_dir, &n_stale);
    if (!rc && n_stale)
        fprintf(stderr, "ddpm: warning: %s: removed %d temporary file%s left by an interrupted convert\n",
                cfg->out_dir, n_stale, n_stale == 1 ? "" : "s");
    if (!rc)
        rc = folder_is_empty(cfg->out_dir, &empty);
    if (!rc && !empty && !cfg->force)
        rc = ddpm_error(DDPM_EIO, "%s: folder is not empty (use --force to write into it)",
                        cfg->out_dir);
    /* One subfolder per label present. */
    size_t dir_len = strlen(cfg->out_dir);
    char *sub = malloc(dir_len + 16);
    if (!rc && !sub)
        rc = ddpm_error(DDPM_ENOMEM, "out of memory");
    if (!rc && cfg->labels_path) {
        int present[256] = {0};
        for (long i = 0; i < n; i++)
            present[labels.data[i]] = 1;
        for (int l = 0; l < 256 && !rc; l++)
            if (present[l]) {
                snprintf(sub, dir_len + 16, "%s/%d", cfg->out_dir, l);
                rc = ddpm_mkdir_p(sub);
            }
    }
    free(sub);

    int digits = 5;
    for (long limit = 100000; n - 1 >= limit; limit *= 10)
        digits++;
    int tty = isatty(fileno(stderr));
    long done = 0;
    int failed = 0;
    char first_error[1024] = "";
    size_t path_len = dir_len + 32;
#pragma omp parallel if (!rc)
    {
        char *path = malloc(path_len);
#pragma omp for schedule(dynamic, 64)
        for (long i = 0; i < n; i++) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop || rc)
                continue;
            int err = path ? 0 : ddpm_error(DDPM_ENOMEM, "out of memory");
            if (!err) {
                if (cfg->labels_path)
                    snprintf(path, path_len, "%s/%d/%0*ld.png", cfg->out_dir, labels.data[i],
                             digits & 15, i);
                else
                    snprintf(path, path_len, "%s/%0*ld.png", cfg->out_dir, digits & 15, i);
                err = ddpm_png_write(path, images.data + (size_t)i * image_bytes, cols, rows, 1);
            }
            if (err) {
#pragma omp critical(convert_error)
                if (!failed) {
                    failed = err;
                    snprintf(first_error, sizeof first_error, "%s", ddpm_last_error());
                }
                continue;
            }
            long k;
#pragma omp atomic capture
            k = ++done;
            if (!cfg->quiet && tty && (k % 1000 == 0 || k == n)) {
#pragma omp critical(convert_progress)
                fprintf(stderr, "\rconvert: %ld/%ld", k, n);
            }
        }
        free(path);
    }
    if (!rc && failed)
        rc = ddpm_error(failed, "%s", first_error);
    if (!cfg->quiet && tty && done > 0)
        fputc('\n', stderr);
    if (!rc && !cfg->quiet)
        fprintf(stderr, "convert: wrote %ld images (%d x %d gray) from %s to %s%s\n", n, cols,
                rows, cli_q(images_name), cli_q(cfg->out_dir),
                cfg->labels_path ? "/<label>/" : "/");
    ddpm_idx_free(&images);
    ddpm_idx_free(&labels);
    return rc;
}

int cmd_convert(int argc, char **argv)
{
    static const struct option options[] = {
        {"labels", required_argument, NULL, 'l'}, {"limit", required_argument, NULL, 'n'},
        {"force", no_argument, NULL, 'f'},        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    convert_config cfg = {0};
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case 'l':
            cfg.labels_path = optarg;
            break;
        case 'n': {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || v < 1) {
                cli_error("convert: --limit wants a positive integer, got '%s'", optarg);
                return DDPM_EXIT_USAGE;
            }
            cfg.limit = v;
            break;
        }
        case 'f':
            cfg.force = 1;
            break;
        case 'q':
            cfg.quiet = 1;
            break;
        case 'h':
            usage(stdout);
            return DDPM_EXIT_OK;
        case ':':
            cli_error("convert: option '%s' needs a value (see 'ddpm convert --help')",
                      argv[optind - 1]);
            return DDPM_EXIT_USAGE;
        default:
            cli_error("convert: unknown option '%s' (see 'ddpm convert --help')", argv[optind - 1]);
            return DDPM_EXIT_USAGE;
        }
    }
    if (argc - optind != 2) {
        cli_error("convert: expected IMAGES.idx and OUT_DIR, got %d arguments (see 'ddpm convert "
                  "--help')",
                  argc - optind);
        return DDPM_EXIT_USAGE;
    }
    cfg.images_path = argv[optind];
    cfg.out_dir = argv[optind + 1];
    if (!cfg.images_path[0] || !cfg.out_dir[0]) {
        cli_error("convert: empty file or folder name");
        return DDPM_EXIT_USAGE;
    }
    const cli_input in[2] = {{cfg.images_path, CLI_IN_FILE}, {cfg.labels_path, CLI_IN_FILE}};
    int out_rc = cli_check_output("OUT_DIR", cfg.out_dir, 1, in, 2);
    if (out_rc)
        return out_rc;
    if (run(&cfg) != 0) {
        cli_error("%s", ddpm_last_error());
        return DDPM_EXIT_ERROR;
    }
    return DDPM_EXIT_OK;
}
