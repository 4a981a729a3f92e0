/* error.h: status codes, a thread-local error message, checked allocation.
 *
 * Functions that can fail return 0 on success or a negative DDPM_E* code and
 * set a message with ddpm_error(); the CLI prints it as one line. Nothing below
 * the CLI calls exit(). */
#ifndef DDPM_ERROR_H
#define DDPM_ERROR_H

#include <stddef.h>

enum {
    DDPM_OK = 0,
    DDPM_EINVAL = -1,  /* bad argument or configuration */
    DDPM_EIO = -2,     /* a file could not be opened, read or written */
    DDPM_EFORMAT = -3, /* a file's contents are not what they must be */
    DDPM_ENOMEM = -4,  /* an allocation failed */
    DDPM_ENAN = -5,    /* a loss or value became NaN or infinite */
    DDPM_EPEER = -9,   /* another process of a data-parallel run failed (its message is its own) */
};

/* Sets the thread-local message (printf-style) and returns `code`. */
int ddpm_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message set on this thread ("" if none). */
const char *ddpm_last_error(void);
void ddpm_clear_error(void);

/* malloc/calloc that set an error message on failure (and on size overflow). */
void *ddpm_malloc(size_t n_items, size_t item_size);
void *ddpm_calloc(size_t n_items, size_t item_size);

#endif
