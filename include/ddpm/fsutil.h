/* fsutil.h: the file-system and clock helpers every module shares.
 *
 * ddpm_atomic_write is how the library writes every file (checkpoints, PNGs):
 * the bytes go to a temporary file in the destination folder
 * ("<path>.tmp.<pid>.<n>"), which is flushed, fsync'ed and renamed over `path`,
 * and the folder is fsync'ed so the rename itself is durable. A failed or
 * interrupted write never leaves a truncated file under the final name and never
 * destroys the file that was there. */
#ifndef DDPM_FSUTIL_H
#define DDPM_FSUTIL_H

#include <stdio.h>

/* mkdir -p: creates `path` and any missing parents. An existing folder is fine;
 * an existing file of that name is DDPM_EIO. */
int ddpm_mkdir_p(const char *path);

/* Whether something (file or folder) exists at `path`. */
int ddpm_path_exists(const char *path);

/* Seconds on the monotonic clock (for durations only). */
double ddpm_now_seconds(void);

/* Writes the contents of a file into f. Returns 0, or -1 when a write failed
 * (errno tells why), or a DDPM_E* code below -1 after setting its own message. */
typedef int (*ddpm_write_fn)(void *ctx, FILE *f);

/* Writes `path` atomically and durably through write(ctx, f) as described above.
 * Errors name `path` and the failed step. */
int ddpm_atomic_write(const char *path, ddpm_write_fn write, void *ctx);

#endif
