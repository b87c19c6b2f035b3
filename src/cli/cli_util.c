/* Shared CLI helpers (see cli_util.h): one-line errors, strict number parsing, getopt
 * error reporting and JSON strings. */
#include "cli_util.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Long enough for any message of ours; a kernel build log gets cut with "..." so one
 * failing build cannot flood the terminal on one line. */
#define CLI_ERROR_MAX 2048

void cli_error(const char *cmd, const char *fmt, ...)
{
    char msg[CLI_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) snprintf(msg, sizeof msg, "(unprintable error message)");
    else if ((size_t)n >= sizeof msg) memcpy(msg + sizeof msg - 4, "...", 4);
    /* One line: control characters become spaces, runs of them collapse. */
    char *w = msg;
    bool space = false;
    for (const char *r = msg; *r; r++) {
        unsigned char c = (unsigned char)*r;
        if (c < 0x20 || c == 0x7f) {
            if (!space && w != msg) *w++ = ' ';
            space = true;
            continue;
        }
        space = false;
        *w++ = (char)c;
    }
    while (w > msg && w[-1] == ' ') w--;
    *w = '\0';
    if (cmd && *cmd)
        fprintf(stderr, "clattn %s: %s\n", cmd, msg);
    else
        fprintf(stderr, "clattn: %s\n", msg);
    fflush(stderr);
}

/* strtod accepts leading spaces, "inf", "nan" and hex floats; refuse what a user would
 * not mean as a plain number: leading whitespace, empty text, trailing text, non-finite. */
bool cli_parse_double(const char *s, double *out)
{
    if (!s || !*s || (*s == ' ' || *s == '\t' || *s == '\n')) return false;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0') return false;
    if (!isfinite(v)) return false;
    /* ERANGE: overflow (±HUGE_VAL, caught above) or underflow to a tiny value; a value
     * that underflows to something other than what was written is refused too. */
    if (errno == ERANGE) return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *s, float *out)
{
    double v;
    if (!cli_parse_double(s, &v)) return false;
    if (fabs(v) > FLT_MAX) return false;
    *out = (float)v;
    return true;
}

bool cli_parse_int64(const char *s, int64_t *out)
{
    if (!s || !*s || !(*s == '-' || *s == '+' || (*s >= '0' && *s <= '9'))) return false;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE) return false;
    *out = (int64_t)v;
    return true;
}

void cli_getopt_reset(void)
{
    optind = 0; /* glibc: full re-initialisation, including permutation state */
    opterr = 0;
}

const char *cli_option_name(const struct option *longopts, int val, char *buf, size_t len)
{
    for (const struct option *o = longopts; o && o->name; o++)
        if (o->val == val && o->flag == NULL) {
            snprintf(buf, len, "--%s", o->name);
            return buf;
        }
    if (val > 0 && val < 128) snprintf(buf, len, "-%c", (char)val);
    else snprintf(buf, len, "an option");
    return buf;
}

void cli_getopt_error(const char *cmd, int c, char **argv, const struct option *longopts)
{
    char name[128];
    /* The argument getopt_long was looking at: for long options it is argv[optind - 1]. */
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    if (!arg) arg = "";
    if (c == ':') {
        cli_error(cmd, "option %s needs a value",
                  cli_option_name(longopts, optopt, name, sizeof name));
        return;
    }
    if (optopt != 0) {
        /* A known option used wrongly: a flag given "=value", or an unknown short one. */
        bool is_long = false;
        for (const struct option *o = longopts; o && o->name; o++)
            if (o->val == optopt && o->flag == NULL && strncmp(arg, "--", 2) == 0) is_long = true;
        if (is_long && strchr(arg, '=')) {
            cli_error(cmd, "option %s takes no value",
                      cli_option_name(longopts, optopt, name, sizeof name));
            return;
        }
        if (optopt > 0 && optopt < 128 && optopt != '?') {
            cli_error(cmd, "unknown option '-%c' (see clattn %s --help)", (char)optopt, cmd);
            return;
        }
    }
    /* An unknown or ambiguous long option: name it without any "=value" part. */
    size_t n = strcspn(arg, "=");
    bool ambiguous = false;
    if (strncmp(arg, "--", 2) == 0 && n > 2) {
        int matches = 0;
        for (const struct option *o = longopts; o && o->name; o++)
            if (strncmp(o->name, arg + 2, n - 2) == 0) matches++;
        ambiguous = matches > 1;
    }
    cli_error(cmd, "%s option '%.*s' (see clattn %s --help)", ambiguous ? "ambiguous" : "unknown",
              (int)(n > 200 ? 200 : n), arg, cmd);
}

/* Length of the valid UTF-8 sequence at s, or 0 when it is not one. */
static size_t utf8_sequence(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

void cli_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
            p++;
        } else if (c == '\n') {
            fputs("\\n", f);
            p++;
        } else if (c == '\t') {
            fputs("\\t", f);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            fputc(c, f);
            p++;
        } else {
            size_t len = utf8_sequence(p);
            if (len) {
                fwrite(p, 1, len, f);
                p += len;
            } else {
                fputs("\\ufffd", f);
                p++;
            }
        }
    }
    fputc('"', f);
}

clattn_status cli_open_device(const char *cmd, size_t index, clattn_context **ctx,
                              clattn_device_props *props)
{
    clattn_device_props local;
    if (!props) props = &local;
    clattn_status st = clattn_device_get_props(index, props);
    if (st == CLATTN_SUCCESS) {
        char spec[32];
        snprintf(spec, sizeof spec, "%zu", index);
        st = clattn_context_create(spec, ctx);
        if (st != CLATTN_SUCCESS)
            cli_error(cmd, "cannot open device %zu (%s): %s", index, props->name,
                      clattn_status_string(st));
    } else {
        cli_error(cmd, "cannot open device %zu: %s", index, clattn_status_string(st));
    }
    return st;
}

double cli_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void cli_sort_doubles(double *v, size_t n) { qsort(v, n, sizeof v[0], cmp_double); }

const cli_choice cli_dtypes[] = {
    {"f32", CLATTN_F32}, {"f16", CLATTN_F16}, {"bf16", CLATTN_BF16}, {NULL, 0}};
const cli_choice cli_causal_modes[] = {{"none", CLATTN_CAUSAL_NONE},
                                       {"top-left", CLATTN_CAUSAL_TOP_LEFT},
                                       {"bottom-right", CLATTN_CAUSAL_BOTTOM_RIGHT},
                                       {NULL, 0}};

bool cli_choose(const char *cmd, const char *where, const char *option, const char *s,
                const cli_choice *table, const char *names, int *value)
{
    for (const cli_choice *c = table; c->name; c++)
        if (strcmp(s, c->name) == 0) {
            *value = c->value;
            return true;
        }
    cli_error(cmd, "%s%s: '%s' is not %s", where, option, s, names);
    return false;
}

int cli_no_operands(const char *cmd, int argc, char **argv, const char *hint)
{
    if (optind >= argc) return CLI_EXIT_OK;
    cli_error(cmd, "unexpected argument '%s'%s", argv[optind], hint ? hint : "");
    return CLI_EXIT_USAGE;
}

int cli_parse_stop(int rc, bool help, void (*usage)(FILE *f))
{
    if (rc == CLI_EXIT_OK && help) usage(stdout);
    return rc;
}
