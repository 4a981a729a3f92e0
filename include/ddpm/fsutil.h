/* fsutil.h: the file-system and clock helpers every module shares.
 *
 * ddpm_atomic_write is how the library writes every file (checkpoints, PNGs):
 * the bytes go to a temporary file in the destination folder
 * ("<dir>/.<name>.ddpm.tmp.<pid>.<n>", ddpm_temp_name: hidden, so the folder
 * scans of dataset.h skip it), which is flushed, fsync'ed and renamed over `path`,
 * and the folder is fsync'ed so the rename itself is durable. A failed or
 * interrupted write never leaves a truncated file under the final name and never
 * destroys the file that was there. */
#ifndef DDPM_FSUTIL_H
#define DDPM_FSUTIL_H

#include <stdio.h>

/* The marker of ddpm's temporary names; DDPM_PROBE_BYTES: the test file of ddpm_probe_folder. */
#define DDPM_TEMP_MARKER ".ddpm.tmp."
enum { DDPM_PROBE_BYTES = 4096 };

/* A new temporary name beside path, "<dir>/.<name>.ddpm.tmp.<pid>.<n>" (n counts
 * the calls of this process), malloc'ed; NULL when out of memory (message set). */
char *ddpm_temp_name(const char *path);

/* Proves before a run's first step that its folder can take a save: creates a
 * temporary file, writes DDPM_PROBE_BYTES into it, fsyncs it, renames it, syncs
 * the folder and removes it; then checks that the file system has need_bytes
 * free (statvfs f_bavail) and two free inodes (where it counts them), and that
 * the file-size limit (RLIMIT_FSIZE) allows a file of need_bytes. DDPM_EIO with
 * a message naming dir and the step or the figure that failed. */
int ddpm_probe_folder(const char *dir, unsigned long long need_bytes);

/* mkdir -p: creates `path` and any missing parents. An existing folder is fine;
 * an existing file of that name is DDPM_EIO. */
int ddpm_mkdir_p(const char *path);

/* Whether something (file or folder) exists at `path`. */
int ddpm_path_exists(const char *path);

/* Seconds on the monotonic clock (for durations only). */
double ddpm_now_seconds(void);

/* The whole regular file at path into *bytes (malloc'ed; the caller frees it)
 * and *size, read through one open. A path that is not a regular file (a
 * folder, FIFO, device or socket) is refused before it is opened, so that a
 * FIFO cannot block and /dev/zero cannot be read without end (DDPM_EIO); a
 * file over max_size bytes (what its format allows) is refused before any
 * allocation (DDPM_EFORMAT). Also DDPM_EIO when the file shrinks or grows
 * while being read, DDPM_ENOMEM; every message names the file. */
int ddpm_read_file(const char *path, size_t max_size, unsigned char **bytes, size_t *size);

/* Writes the contents of a file into f. Returns 0, or -1 when a write failed
 * (errno tells why), or a DDPM_E* code below -1 after setting its own message. */
typedef int (*ddpm_write_fn)(void *ctx, FILE *f);

/* Writes `path` atomically and durably through write(ctx, f) as described above.
 * Errors name `path` and the failed step. */
int ddpm_atomic_write(const char *path, ddpm_write_fn write, void *ctx);

/* One writer per folder: takes an advisory lock (flock) on dir/name, creating
 * it, and writes our pid into it. The lock lasts until ddpm_unlock_folder or the
 * process ends, however it ends, so a lock left by a killed process never blocks.
 * While another process holds it: DDPM_EBUSY, the message naming its pid. */
int ddpm_lock_folder(const char *dir, const char *name, int *fd_out);
void ddpm_unlock_folder(int fd);

/* Removes the temporary files of ddpm_atomic_write in dir whose writer is no
 * longer running: what a killed writer leaves. Only regular files whose whole
 * name has the form ddpm_temp_name makes (".<name>.ddpm.tmp.<pid>.<n>") are
 * removed; any other file, whatever its name, is left alone. Meant for a folder
 * whose lock we hold. *n_removed counts them. */
int ddpm_remove_stale_temps(const char *dir, int *n_removed);

#endif
