/* guard.h: the checks every command makes on its paths before any work: an
 * output is never one of the command's inputs (nor a file of a run folder it
 * reads), and an input that must be a file is a regular file (a FIFO would
 * block the open, /dev/zero would never end). */
#ifndef DDPM_CLI_GUARD_H
#define DDPM_CLI_GUARD_H

typedef enum {
    CLI_IN_FILE,       /* a file the command reads (a PNG, a log, a stats file, weights);
                          a run folder's log.jsonl brings its folder's files along */
    CLI_IN_CHECKPOINT, /* a RUN_DIR|CHECKPOINT argument: the checkpoint it names and,
                          when that is a run folder's checkpoint.safetensors, the
                          run's log.jsonl and lock beside it */
    CLI_IN_FOLDER,     /* a folder whose files the command reads (a data folder) */
} cli_input_kind;

typedef struct {
    const char *path; /* NULL: no input (skipped) */
    cli_input_kind kind;
} cli_input;

/* Whether output `out` (given by `flag`, "--out" or "OUT") would write over
 * one of the n inputs. Paths are compared by device and inode where they
 * exist, so links, `..` and other spellings of one file are caught; an
 * existing file anywhere under a CLI_IN_FOLDER input is one of its inputs,
 * and a folder output (out_is_folder) may not be an input folder itself.
 * 0 when out is safe; else prints one line, "ddpm: <out>: <flag> is <the
 * input> that this command reads; ...", and returns DDPM_EXIT_USAGE. */
int cli_check_output(const char *flag, const char *out, int out_is_folder, const cli_input *inputs, int n);

/* An input that must be a file: 0 when `path` is a regular file or does not
 * exist (the reader then says so); else prints "ddpm: <path>: <what> is a
 * FIFO (a device, a folder, ...), not a regular file" and returns
 * DDPM_EXIT_ERROR (an empty path: "<what>: the path is empty", DDPM_EXIT_USAGE). CLI_IN_CHECKPOINT paths
 * are resolved first (a RUN_DIR names its checkpoint). */
int cli_check_input_file(const char *path, cli_input_kind kind, const char *what);

#endif
