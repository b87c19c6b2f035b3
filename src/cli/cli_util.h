/* Helpers shared by the clattn subcommands: the one-line error report that SPEC §2 asks
 * for, strict number parsing, getopt_long error reporting and JSON string output. Kept
 * apart from the commands so every subcommand reports errors the same way. */
#ifndef CLATTN_CLI_UTIL_H
#define CLATTN_CLI_UTIL_H

#include "clattn.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Exit statuses of every subcommand. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILURE = 1, /* bad input file, library or device failure, I/O error */
    CLI_EXIT_USAGE = 2    /* bad command line */
};

/* Print "clattn <cmd>: <message>" as exactly one line on stderr. Control characters in
 * the message (a kernel build log's line breaks) become spaces and very long messages are
 * cut, so scripts can rely on one line per error. */
void cli_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Strict parsers: the whole string must be the number (no spaces, no trailing text), and
 * floating-point values must be finite and in range. Return true on success. */
bool cli_parse_double(const char *s, double *out);
bool cli_parse_float(const char *s, float *out); /* also finite as a float */
bool cli_parse_int64(const char *s, int64_t *out);

/* A name a command line may give and the value it stands for; tables end in {NULL, 0}. */
typedef struct cli_choice {
    const char *name;
    int value;
} cli_choice;
extern const cli_choice cli_dtypes[];       /* f32, f16, bf16 */
extern const cli_choice cli_causal_modes[]; /* none, top-left, bottom-right */
/* The value of name s in table into *value; when s is not one of its names, false and
 * one error line "<where><option>: 's' is not <names>". */
bool cli_choose(const char *cmd, const char *where, const char *option, const char *s,
                const cli_choice *table, const char *names, int *value);

/* Prepare getopt_long for a fresh argument vector (glibc re-initialises on optind = 0),
 * with its own messages turned off: the caller reports errors through cli_error. */
void cli_getopt_reset(void);

/* Report what getopt_long's '?' or ':' return means (unknown or ambiguous option, missing
 * value, value given to a flag) as one cli_error line. argv/longopts are those passed to
 * getopt_long; the optstring must start with ':'. */
void cli_getopt_error(const char *cmd, int c, char **argv, const struct option *longopts);

/* After getopt_long: an operand left over is a usage error, reported as "unexpected
 * argument 'X'" followed by hint (NULL for none). Returns CLI_EXIT_OK or CLI_EXIT_USAGE. */
int cli_no_operands(const char *cmd, int argc, char **argv, const char *hint);

/* A command's return once its parser said stop (call when rc != CLI_EXIT_OK or help):
 * the parser's status, or after --help the usage text on stdout and CLI_EXIT_OK. */
int cli_parse_stop(int rc, bool help, void (*usage)(FILE *f));

/* The long name of the option whose val is `val` ("--q"), for messages. */
const char *cli_option_name(const struct option *longopts, int val, char *buf, size_t len);

/* Write s as a JSON string literal (quotes included); invalid UTF-8 becomes U+FFFD. */
void cli_json_string(FILE *f, const char *s);

/* Milliseconds on a monotonic clock, for timing runs. */
double cli_now_ms(void);
/* Sort n doubles in ascending order (medians of timed runs). */
void cli_sort_doubles(double *v, size_t n);

/* A context on device `index` (clattn_device_find's numbering) and, when props is not
 * NULL, the device's properties. On failure one error line for cmd names the device and
 * why, and the status is returned. */
clattn_status cli_open_device(const char *cmd, size_t index, clattn_context **ctx,
                              clattn_device_props *props);

#endif /* CLATTN_CLI_UTIL_H */
