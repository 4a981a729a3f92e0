#include "ddpm/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int ddpm_atomic_write(const char *path, ddpm_write_fn write, void *ctx)
{
    if (!path || !path[0])
        return ddpm_error(DDPM_EINVAL, "no output path given");
    size_t len = strlen(path) + 48;
    char *tmp = ddpm_malloc(len, 1);
    if (!tmp)
        return DDPM_ENOMEM;
    snprintf(tmp, len, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&tmp_counter, 1));
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
