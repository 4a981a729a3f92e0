/* term.h: everything the CLI writes to the terminal about a file or a value a
 * user chose goes through here, so that a name holding ESC or a newline can
 * neither drive the terminal nor break the one-line error. */
#ifndef DDPM_CLI_TERM_H
#define DDPM_CLI_TERM_H

#include <stddef.h>

/* Copies s into out (always NUL-terminated, cut to size - 1 bytes) with each
 * byte that could move the cursor or end the line escaped as \xNN: the C0
 * controls (newline, ESC, ...), DEL, UTF-8's C1 controls (U+0080..U+009F) and
 * every byte that is not part of valid UTF-8. Printable ASCII and valid UTF-8
 * pass unchanged. Returns out. */
char *cli_escape(char *out, size_t size, const char *s);
/* cli_escape into one of a few rotating static buffers, for a printf argument:
 * at most CLI_QUOTE_SLOTS calls may share one statement. */
enum { CLI_QUOTE_SLOTS = 8 };
const char *cli_q(const char *s);

/* Warnings (a skipped file, a removed log line, a missing EMA copy) reach
 * stderr unless --no-warnings was given: --quiet silences progress only.
 * main() removes --no-warnings from the arguments of every command. */
extern int cli_warnings_off;
/* "ddpm: warning: <msg>" on stderr (the whole line escaped), unless
 * cli_warnings_off. */
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "ddpm: <msg>" on stderr, the whole line escaped: a summary or note that
 * --quiet silences (the caller checks quiet). */
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The --help line of --no-warnings, which every command takes. */
#define CLI_HELP_NO_WARNINGS "  --no-warnings        do not print warnings (--quiet keeps them)\n"

#endif
