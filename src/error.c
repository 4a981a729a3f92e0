#include "ddpm/error.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char error_message[1024];

int ddpm_error(int code, const char *fmt, ...)
{
    /* format into a local buffer first: callers may pass ddpm_last_error() as an
       argument to prefix it with context */
    char buf[sizeof error_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(error_message, buf, sizeof buf);
    return code;
}

const char *ddpm_last_error(void) { return error_message; }

void ddpm_clear_error(void) { error_message[0] = '\0'; }

void *ddpm_malloc(size_t n_items, size_t item_size)
{
    if (item_size != 0 && n_items > SIZE_MAX / item_size) {
        ddpm_error(DDPM_ENOMEM, "allocation of %zu x %zu bytes overflows", n_items, item_size);
        return NULL;
    }
    size_t bytes = n_items * item_size;
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        ddpm_error(DDPM_ENOMEM, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *ddpm_calloc(size_t n_items, size_t item_size)
{
    void *p = calloc(n_items ? n_items : 1, item_size ? item_size : 1);
    if (!p)
        ddpm_error(DDPM_ENOMEM, "out of memory allocating %zu x %zu bytes", n_items, item_size);
    return p;
}
