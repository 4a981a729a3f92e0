/* term.c: escaped terminal output (see term.h). */
#include "term.h"

#include <stdarg.h>
#include <stdio.h>

#include "cli.h"

int cli_warnings_off;

/* The length of the valid UTF-8 sequence at p that is not a C1 control, or 0. */
static int utf8_printable_length(const unsigned char *p)
{
    int n;
    unsigned min;
    unsigned c = p[0];
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, c &= 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, c &= 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, c &= 0x07, min = 0x10000;
    else
        return 0;
    for (int k = 1; k < n; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[k] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff) || (c >= 0x80 && c <= 0x9f))
        return 0;
    return n;
}

char *cli_escape(char *out, size_t size, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    if (size == 0)
        return out;
    while (*p) {
        if (*p >= 0x20 && *p < 0x7f) {
            if (o + 1 >= size)
                break;
            out[o++] = (char)*p++;
            continue;
        }
        int n = *p >= 0x80 ? utf8_printable_length(p) : 0;
        if (n > 0) {
            if (o + (size_t)n >= size)
                break;
            for (int k = 0; k < n; k++)
                out[o++] = (char)*p++;
            continue;
        }
        if (o + 4 >= size)
            break;
        out[o++] = '\\', out[o++] = 'x', out[o++] = hex[*p >> 4], out[o++] = hex[*p & 15];
        p++;
    }
    out[o] = '\0';
    return out;
}

const char *cli_q(const char *s)
{
    static char slots[CLI_QUOTE_SLOTS][4 * 4096 + 1];
    static int next;
    char *out = slots[next];
    next = (next + 1) % CLI_QUOTE_SLOTS;
    return cli_escape(out, sizeof slots[0], s ? s : "(null)");
}

/* prefix + the formatted message, escaped, and a newline on stderr. */
static void print_line(const char *prefix, const char *fmt, va_list ap)
{
    char raw[8192], line[4 * 8192 + 1];
    vsnprintf(raw, sizeof raw, fmt, ap);
    cli_escape(line, sizeof line, raw);
    fprintf(stderr, "%s%s\n", prefix, line);
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_line("ddpm: ", fmt, ap);
    va_end(ap);
}

void cli_warn(const char *fmt, ...)
{
    if (cli_warnings_off)
        return;
    va_list ap;
    va_start(ap, fmt);
    print_line("ddpm: warning: ", fmt, ap);
    va_end(ap);
}

void cli_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_line("ddpm: ", fmt, ap);
    va_end(ap);
}
