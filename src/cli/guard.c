/* guard.c: outputs that are inputs, inputs that are not files (guard.h). */
#include "guard.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "args.h"
#include "cli.h"
#include "ddpm/run.h"

/* a and b exist and are one file (or folder). */
static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* out exists and lies under folder (at any depth), through links and `..`. */
static int inside_folder(const char *out, const char *folder)
{
    char ro[PATH_MAX], rf[PATH_MAX];
    if (!realpath(out, ro) || !realpath(folder, rf))
        return 0;
    size_t n = strlen(rf);
    if (n == 1) /* "/" holds everything */
        return 1;
    return !strncmp(ro, rf, n) && ro[n] == '/';
}

/* The folder part of path ("." when it has none). */
static void parent_of(char *out, size_t size, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, size, ".");
    else if (slash == path)
        snprintf(out, size, "/");
    else
        snprintf(out, size, "%.*s", (int)(slash - path), path);
}

static int refuse(const char *flag, const char *out, const char *what, const char *input)
{
    cli_error("%s: %s would overwrite %s %s, which this command reads; write the output elsewhere", out, flag,
              what, input);
    return DDPM_EXIT_USAGE;
}

/* When `file` is a run folder's checkpoint.safetensors or log.jsonl: whether
 * out is that folder or one of its files (checkpoint, log, lock). */
static int refuse_run_folder(const char *flag, const char *out, const char *file)
{
    char dir[4096], other[4200];
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (strcmp(base, DDPM_CHECKPOINT_FILE) && strcmp(base, DDPM_LOG_FILE))
        return 0;
    parent_of(dir, sizeof dir, file);
    if (same_file(out, dir))
        return refuse(flag, out, "the run folder", dir);
    static const char *const run_files[] = {DDPM_CHECKPOINT_FILE, DDPM_LOG_FILE, DDPM_LOCK_FILE};
    for (size_t f = 0; f < sizeof run_files / sizeof run_files[0]; f++) {
        snprintf(other, sizeof other, "%s/%s", dir, run_files[f]);
        if (same_file(out, other))
            return refuse(flag, out, "a file of the run folder", dir);
    }
    return 0;
}

int cli_check_output(const char *flag, const char *out, int out_is_folder, const cli_input *inputs, int n)
{
    struct stat st;
    if (!out || !out[0] || stat(out, &st) != 0)
        return 0; /* nothing there yet: it is not one of the inputs */
    for (int k = 0; k < n; k++) {
        const char *in = inputs[k].path;
        if (!in || !in[0])
            continue;
        switch (inputs[k].kind) {
        case CLI_IN_FILE:
            if (same_file(out, in))
                return refuse(flag, out, "the file", in);
            if (refuse_run_folder(flag, out, in))
                return DDPM_EXIT_USAGE;
            break;
        case CLI_IN_CHECKPOINT: {
            char ckpt[4096];
            cli_checkpoint_path(ckpt, sizeof ckpt, in);
            if (same_file(out, ckpt))
                return refuse(flag, out, "the checkpoint", ckpt);
            if (refuse_run_folder(flag, out, ckpt))
                return DDPM_EXIT_USAGE;
            break;
        }
        case CLI_IN_FOLDER:
            if (same_file(out, in))
                return refuse(flag, out, out_is_folder ? "files in the folder" : "the folder", in);
            if (!out_is_folder && inside_folder(out, in))
                return refuse(flag, out, "a file in the folder", in);
            break;
        }
    }
    return 0;
}

int cli_check_input_file(const char *path, cli_input_kind kind, const char *what)
{
    char resolved[4096];
    struct stat st;
    if (!path)
        return 0;
    if (!path[0]) {
        cli_error("%s: the path is empty", what);
        return DDPM_EXIT_USAGE;
    }
    if (kind == CLI_IN_CHECKPOINT)
        cli_checkpoint_path(resolved, sizeof resolved, path);
    else
        snprintf(resolved, sizeof resolved, "%s", path);
    if (stat(resolved, &st) != 0 || S_ISREG(st.st_mode))
        return 0;
    const char *type = S_ISDIR(st.st_mode)    ? "a folder"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a file";
    cli_error("%s: %s is %s, not a regular file", resolved, what, type);
    return DDPM_EXIT_ERROR;
}
