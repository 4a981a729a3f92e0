#include "ddpm/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "ddpm/error.h"

int ddpm_path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

double ddpm_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int ddpm_mkdir_p(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            rc = ddpm_error(DDPM_EIO, "%s: cannot create the folder: %s", p, strerror(errno));
            break;
        }
        *s = saved;
        if (saved == '\0')
            break;
    }
    free(p);
    if (rc)
        return rc;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return ddpm_error(DDPM_EIO, "%s: exists and is not a folder", path);
    return DDPM_OK;
}

/* fsync of the folder holding `path`, so the rename itself is durable. */
static int sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (!dir)
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)) {
        /* EINVAL: the filesystem does not sync folders; nothing more can be done. */
        rc = ddpm_error(DDPM_EIO, "%s: written, but syncing its folder %s failed: %s", path, dir,
                        strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

static atomic_uint tmp_counter; /* two threads writing one path get two temp names */

char *ddpm_temp_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
    size_t len = strlen(path) + sizeof DDPM_TEMP_MARKER + 48;
    char *tmp = ddpm_malloc(len, 1);
    if (!tmp)
        return NULL;
    /* "<dir>/.<name>.ddpm-tmp.<pid>.<n>": hidden, so that a folder scan skips it */
    snprintf(tmp, len, "%.*s.%s" DDPM_TEMP_MARKER "%ld.%u", (int)dir_len, path, path + dir_len, (long)getpid(),
             atomic_fetch_add(&tmp_counter, 1));
    return tmp;
}

/* The pid of a name made by ddpm_temp_name (".<name>.ddpm-tmp.<pid>.<n>", both
 * numbers decimal and nothing after them), or -1 for any other name. */
static long temp_name_pid(const char *name)
{
    if (name[0] != '.')
        return -1;
    const char *tag = NULL;
    for (const char *p = strstr(name + 1, DDPM_TEMP_MARKER); p; p = strstr(p + 1, DDPM_TEMP_MARKER))
        tag = p; /* the last one: a user's name may hold the marker too */
    if (!tag || tag == name + 1)
        return -1;
    const char *digits = tag + strlen(DDPM_TEMP_MARKER), *end = digits;
    while (*end >= '0' && *end <= '9')
        end++;
    if (end == digits || end - digits > 18 || *end != '.')
        return -1;
    const char *n = end + 1, *n_end = n;
    while (*n_end >= '0' && *n_end <= '9')
        n_end++;
    if (n_end == n || n_end - n > 10 || *n_end != '\0')
        return -1;
    return strtol(digits, NULL, 10);
}

int ddpm_atomic_write(const char *path, ddpm_write_fn write, void *ctx)
{
    if (!path || !path[0])
        return ddpm_error(DDPM_EINVAL, "no output path given");
    char *tmp = ddpm_temp_name(path);
    if (!tmp)
        return DDPM_ENOMEM;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        int rc = ddpm_error(DDPM_EIO, "%s: cannot create temporary file %s: %s", path, tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        free(tmp);
        return rc;
    }
    errno = 0;
    const char *step = "writing";
    int rc = write(ctx, f);
    int ok = rc == 0;
    if (ok && fflush(f) != 0) {
        ok = 0;
        step = "flushing";
    }
    if (ok && fsync(fileno(f)) != 0) {
        ok = 0;
        step = "syncing";
    }
    int saved_errno = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        step = "closing";
        saved_errno = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        step = "renaming";
        saved_errno = errno;
    }
    if (!ok) {
        /* rc < -1: the writer set its own message; else an I/O step failed */
        if (rc >= -1)
            rc = ddpm_error(DDPM_EIO, "%s: %s %s failed: %s", path, step, tmp,
                            saved_errno ? strerror(saved_errno) : "short write");
        unlink(tmp);
    }
    free(tmp);
    return rc ? rc : sync_parent_dir(path);
}

int ddpm_lock_folder(const char *dir, const char *name, int *fd_out)
{
    *fd_out = -1;
    char path[4200];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return ddpm_error(DDPM_EINVAL, "%s: path too long", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return ddpm_error(DDPM_EIO, "%s: cannot create the lock file: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (e == EWOULDBLOCK)
            return ddpm_error(DDPM_EBUSY, "%s: another ddpm (pid %s) is writing this run folder; wait for it or "
                                          "stop it first",
                              dir, pid[0] ? pid : "unknown");
        return ddpm_error(DDPM_EIO, "%s: cannot lock: %s", path, strerror(e));
    }
    /* Ours: record our pid for the message of a second writer. */
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        int rc = ddpm_error(DDPM_EIO, "%s: cannot write the lock file: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

void ddpm_unlock_folder(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

int ddpm_remove_stale_temps(const char *dir, int *n_removed)
{
    *n_removed = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : ddpm_error(DDPM_EIO, "%s: cannot list: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        long pid = temp_name_pid(de->d_name);
        if (pid < 0)
            continue; /* not one of ddpm_temp_name's names: never ours to remove */
        /* A writer that is still alive (not us: our own writes are finished when
         * this runs) keeps its file; pid 0 or a dead pid means nobody will finish it. */
        if (pid > 0 && pid != (long)getpid() && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
            continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue; /* ddpm_atomic_write makes regular files only */
        if (unlink(path) == 0)
            ++*n_removed;
        else if (errno != ENOENT && !rc)
            rc = ddpm_error(DDPM_EIO, "%s: cannot remove a stale temporary file: %s", path, strerror(errno));
    }
    closedir(d);
    return rc;
}

/* Writes n bytes at fd, retrying short writes. */
static int write_all(int fd, const char *bytes, size_t n)
{
    while (n) {
        ssize_t w = write(fd, bytes, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return -1;
        }
        bytes += w;
        n -= (size_t)w;
    }
    return 0;
}

int ddpm_probe_folder(const char *dir, unsigned long long need_bytes)
{
    size_t len = strlen(dir) + 16;
    char *base = ddpm_malloc(len, 1);
    if (!base)
        return DDPM_ENOMEM;
    snprintf(base, len, "%s/write-probe", dir);
    char *a = ddpm_temp_name(base), *b = ddpm_temp_name(base);
    free(base);
    if (!a || !b) {
        free(a);
        free(b);
        return DDPM_ENOMEM;
    }
    /* create, write, fsync, rename, sync the folder, remove: every step a save takes */
    char block[DDPM_PROBE_BYTES];
    memset(block, 'p', sizeof block);
    const char *step = "creating";
    int ok = 0, created = 0, renamed = 0, e = 0;
    int fd = open(a, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
        created = 1;
        step = "writing";
        if (write_all(fd, block, sizeof block) == 0) {
            step = "syncing";
            if (fsync(fd) == 0)
                ok = 1;
        }
        e = errno;
        if (close(fd) != 0 && ok) {
            ok = 0;
            step = "closing";
            e = errno;
        }
    } else {
        e = errno;
    }
    if (ok) {
        step = "renaming";
        ok = rename(a, b) == 0;
        e = errno;
        renamed = ok;
    }
    int rc = 0;
    if (!ok)
        rc = ddpm_error(DDPM_EIO, "%s: cannot save in this folder: %s a test file failed: %s", dir, step,
                        strerror(e));
    if (!rc)
        rc = sync_parent_dir(b);
    if (created && unlink(renamed ? b : a) != 0 && !rc)
        rc = ddpm_error(DDPM_EIO, "%s: cannot save in this folder: removing a test file failed: %s", dir,
                        strerror(errno));
    free(a);
    free(b);
    if (rc)
        return rc;
    /* room for one more file of need_bytes: a save writes the new file beside the old one */
    struct statvfs vfs;
    if (statvfs(dir, &vfs) == 0) {
        unsigned long long avail = (unsigned long long)vfs.f_bavail * vfs.f_frsize;
        if (avail < need_bytes)
            return ddpm_error(DDPM_EIO, "%s: %s: %llu bytes free, a checkpoint needs %llu", dir, strerror(ENOSPC),
                              avail, need_bytes);
        if (vfs.f_files > 0 && vfs.f_favail < 2) /* f_files 0: the file system does not count inodes */
            return ddpm_error(DDPM_EIO, "%s: %s: no free inodes (%llu left) for the next checkpoint", dir,
                              strerror(ENOSPC), (unsigned long long)vfs.f_favail);
    }
    struct rlimit lim;
    if (getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
        (unsigned long long)lim.rlim_cur < need_bytes)
        return ddpm_error(DDPM_EIO, "%s: %s: the file-size limit (ulimit -f) is %llu bytes, a checkpoint needs %llu",
                          dir, strerror(EFBIG), (unsigned long long)lim.rlim_cur, need_bytes);
    return DDPM_OK;
}

/* What a path that is not a regular file is, for the message. */
static const char *file_kind(mode_t mode)
{
    return S_ISDIR(mode)    ? "a folder"
           : S_ISFIFO(mode) ? "a FIFO (named pipe)"
           : S_ISCHR(mode)  ? "a character device"
           : S_ISBLK(mode)  ? "a block device"
           : S_ISSOCK(mode) ? "a socket"
                            : "not a regular file";
}

int ddpm_read_file(const char *path, size_t max_size, unsigned char **bytes_out, size_t *size_out)
{
    *bytes_out = NULL;
    *size_out = 0;
    /* A FIFO blocks open() until a writer comes and a device reads without end:
       both are refused before they are opened, and the open itself does not
       block (O_NONBLOCK) in case the path changed in between; fstat decides. */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return ddpm_error(DDPM_EIO, "%s: is %s, not a regular file", path, file_kind(st.st_mode));
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return ddpm_error(DDPM_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ddpm_error(DDPM_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ddpm_error(DDPM_EIO, "%s: is %s, not a regular file", path, file_kind(st.st_mode));
    }
    if ((uint64_t)st.st_size > (uint64_t)max_size) {
        close(fd);
        return ddpm_error(DDPM_EFORMAT, "%s: is %jd bytes, more than the %ju its format allows", path,
                          (intmax_t)st.st_size, (uintmax_t)max_size);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *bytes = malloc(size ? size : 1);
    if (!bytes) {
        close(fd);
        return ddpm_error(DDPM_ENOMEM, "%s: out of memory reading %zu bytes", path, size);
    }
    /* size + 1 bytes asked: a file that grew after fstat is seen, and never read
       past the size it had */
    size_t got = 0;
    unsigned char extra;
    for (;;) {
        ssize_t r = got < size ? read(fd, bytes + got, size - got) : read(fd, &extra, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(bytes);
            return ddpm_error(DDPM_EIO, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0 && got < size) {
            close(fd);
            free(bytes);
            return ddpm_error(DDPM_EIO, "%s: file shrank while being read (%zu of %zu bytes)", path, got, size);
        }
        if (r > 0 && got == size) {
            close(fd);
            free(bytes);
            return ddpm_error(DDPM_EIO, "%s: file grew while being read (past its %zu bytes): is something writing it?",
                              path, size);
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *bytes_out = bytes;
    *size_out = size;
    return DDPM_OK;
}
