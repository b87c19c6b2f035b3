/* The .npy header dict parser: a small recursive-descent parser for exactly the Python
 * literals numpy writes, so a corrupt or hostile header is refused with a reason instead
 * of being half-understood. */
#include "support/npy_internal.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct hparser {
    const char *s;
    size_t n, pos;
    char *err;
    size_t errlen;
} hparser;

/* Python's whitespace inside a literal (numpy pads with spaces and ends with '\n'). */
static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static void skip_ws(hparser *p)
{
    while (p->pos < p->n && is_ws(p->s[p->pos])) p->pos++;
}

/* Header bytes as a message may quote them: printable ASCII as is, every other byte (ESC
 * and other control bytes, NUL, bytes of invalid UTF-8) as \xNN, so a damaged or hostile
 * header can neither send escape sequences to the terminal nor make a message invalid
 * text. Truncated to fit buf. Returns buf. */
static const char *quote_bytes(const char *s, size_t n, char *buf, size_t len)
{
    size_t used = 0;
    if (!buf || len == 0) return buf;
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        char piece[8];
        if (c >= 0x20 && c < 0x7f)
            snprintf(piece, sizeof piece, "%c", (char)c);
        else
            snprintf(piece, sizeof piece, "\\x%02x", c);
        const size_t plen = strlen(piece);
        if (used + plen >= len) break;
        memcpy(buf + used, piece, plen);
        used += plen;
    }
    buf[used] = '\0';
    return buf;
}

/* Name what sits at the cursor, for "unexpected X" messages; bytes that are not
 * printable ASCII are shown in hex so the message stays one readable line. */
static const char *describe_here(const hparser *p, char *buf, size_t len)
{
    if (p->pos >= p->n) {
        snprintf(buf, len, "end of header");
    } else {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c >= 0x20 && c < 0x7f)
            snprintf(buf, len, "'%c' at header offset %zu", (char)c, p->pos);
        else
            snprintf(buf, len, "byte 0x%02x at header offset %zu", c, p->pos);
    }
    return buf;
}

static int unexpected(hparser *p, const char *wanted)
{
    char what[64];
    npy__set_err(p->err, p->errlen, "malformed header: expected %s, found %s", wanted,
                 describe_here(p, what, sizeof what));
    return -1;
}

static int expect_char(hparser *p, char c, const char *wanted)
{
    skip_ws(p);
    if (p->pos >= p->n || p->s[p->pos] != c) return unexpected(p, wanted);
    p->pos++;
    return 0;
}

/* A quoted string without escapes (numpy never writes any into these keys/values). It may
 * hold any other byte, NUL included: *outn receives its length. */
static int parse_string(hparser *p, char *out, size_t outlen, size_t *outn)
{
    skip_ws(p);
    if (p->pos >= p->n || (p->s[p->pos] != '\'' && p->s[p->pos] != '"'))
        return unexpected(p, "a quoted string");
    char quote = p->s[p->pos++];
    size_t len = 0;
    for (;;) {
        if (p->pos >= p->n) {
            npy__set_err(p->err, p->errlen, "malformed header: unterminated string");
            return -1;
        }
        char c = p->s[p->pos];
        if (c == quote) break;
        if (c == '\\' || c == '\n' || c == '\r') {
            npy__set_err(p->err, p->errlen,
                         "malformed header: %s inside a string at header offset %zu",
                         c == '\\' ? "escape sequence" : "line break", p->pos);
            return -1;
        }
        if (len + 1 >= outlen) {
            npy__set_err(p->err, p->errlen,
                         "malformed header: string longer than %zu characters at header offset "
                         "%zu",
                         outlen - 1, p->pos);
            return -1;
        }
        out[len++] = c;
        p->pos++;
    }
    p->pos++; /* closing quote */
    out[len] = '\0';
    *outn = len;
    return 0;
}

/* An identifier-like word (True, False, None, ...), for values that are not strings. */
static size_t word_length(const hparser *p)
{
    size_t i = p->pos;
    while (i < p->n) {
        char c = p->s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            break;
        i++;
    }
    return i - p->pos;
}

static int parse_descr(hparser *p, clattn_dtype *dtype)
{
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == '[') {
        npy__set_err(p->err, p->errlen,
                     "structured dtypes are not supported ('descr' is a list of fields)");
        return -1;
    }
    if (p->pos >= p->n || (p->s[p->pos] != '\'' && p->s[p->pos] != '"'))
        return unexpected(p, "a string for 'descr'");
    char d[64], shown[4 * sizeof d];
    size_t dn;
    if (parse_string(p, d, sizeof d, &dn)) return -1;
    static const struct {
        const char *descr;
        clattn_dtype dtype;
    } known[] = {{"<f4", CLATTN_F32}, {"<f2", CLATTN_F16}, {"|b1", CLATTN_BOOL},
                 {"<i4", CLATTN_I32}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (dn == strlen(known[i].descr) && strcmp(d, known[i].descr) == 0) {
            *dtype = known[i].dtype;
            return 0;
        }
    quote_bytes(d, dn, shown, sizeof shown);
    if (d[0] == '>' && dn > 1)
        npy__set_err(p->err, p->errlen,
                     "big-endian dtype '%s' is not supported (convert with arr.astype('<%s'))",
                     shown, shown + 1);
    else if (dn == 3 && strcmp(d, "<f8") == 0)
        npy__set_err(p->err, p->errlen,
                     "dtype '<f8' (float64) is not supported (convert with "
                     "arr.astype(np.float32))");
    else
        npy__set_err(p->err, p->errlen,
                     "unsupported dtype '%s' (clattn reads <f4, <f2, |b1 and <i4)", shown);
    return -1;
}

static int parse_bool_value(hparser *p, bool *value)
{
    skip_ws(p);
    size_t len = word_length(p);
    if (len == 4 && memcmp(p->s + p->pos, "True", 4) == 0) {
        *value = true;
    } else if (len == 5 && memcmp(p->s + p->pos, "False", 5) == 0) {
        *value = false;
    } else {
        return unexpected(p, "True or False for 'fortran_order'");
    }
    p->pos += len;
    return 0;
}

/* A non-negative integer; Python 2 era files may carry a long suffix ("3L"). */
static int parse_dim(hparser *p, int64_t *value)
{
    skip_ws(p);
    size_t start = p->pos;
    bool negative = false;
    if (p->pos < p->n && (p->s[p->pos] == '-' || p->s[p->pos] == '+')) {
        negative = p->s[p->pos] == '-';
        p->pos++;
    }
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9') {
        p->pos = start;
        return unexpected(p, "an integer in 'shape'");
    }
    int64_t v = 0;
    bool overflow = false;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        int digit = p->s[p->pos] - '0';
        if (v > (INT64_MAX - digit) / 10) overflow = true;
        else v = v * 10 + digit;
        p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'L' || p->s[p->pos] == 'l')) p->pos++;
    if (overflow) {
        npy__set_err(p->err, p->errlen, "dimension '%.*s' in 'shape' is too large",
                     (int)(p->pos - start > 40 ? 40 : p->pos - start), p->s + start);
        return -1;
    }
    if (negative && v != 0) {
        npy__set_err(p->err, p->errlen, "negative dimension -%lld in 'shape'", (long long)v);
        return -1;
    }
    *value = v;
    return 0;
}

/* A tuple of integers: (), (3,), (2, 3), (2, 3,). "(3)" is the integer 3 in Python, so it
 * is refused as numpy would. */
static int parse_shape(hparser *p, int *rank, int64_t *shape)
{
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == '[') {
        npy__set_err(p->err, p->errlen, "'shape' must be a tuple, not a list");
        return -1;
    }
    if (p->pos >= p->n || p->s[p->pos] != '(') return unexpected(p, "a tuple for 'shape'");
    p->pos++;
    int r = 0;
    bool trailing_comma = false;
    for (;;) {
        skip_ws(p);
        if (p->pos < p->n && p->s[p->pos] == ')') {
            p->pos++;
            break;
        }
        if (r == NPY_MAX_RANK) {
            npy__set_err(p->err, p->errlen, "'shape' has more than %d dimensions",
                         NPY_MAX_RANK);
            return -1;
        }
        if (parse_dim(p, &shape[r])) return -1;
        r++;
        skip_ws(p);
        if (p->pos < p->n && p->s[p->pos] == ',') {
            p->pos++;
            trailing_comma = true;
            continue;
        }
        trailing_comma = false;
        if (p->pos < p->n && p->s[p->pos] == ')') {
            p->pos++;
            break;
        }
        return unexpected(p, "',' or ')' in 'shape'");
    }
    if (r == 1 && !trailing_comma) {
        npy__set_err(p->err, p->errlen,
                     "'shape' must be a tuple: (%lld) is an integer, a 1-D shape is (%lld,)",
                     (long long)shape[0], (long long)shape[0]);
        return -1;
    }
    *rank = r;
    return 0;
}

enum { KEY_DESCR = 1, KEY_FORTRAN = 2, KEY_SHAPE = 4 };

int npy__parse_header(const char *s, size_t n, npy_array *out, char *err, size_t errlen)
{
    hparser p = {s, n, 0, err, errlen};
    skip_ws(&p);
    if (p.pos >= p.n || p.s[p.pos] != '{') {
        char what[64];
        npy__set_err(err, errlen, "header is not a dict (found %s)",
                     describe_here(&p, what, sizeof what));
        return -1;
    }
    p.pos++;
    unsigned seen = 0;
    bool fortran = false;
    for (;;) {
        skip_ws(&p);
        if (p.pos < p.n && p.s[p.pos] == '}') {
            p.pos++;
            break;
        }
        char key[64];
        size_t keylen;
        if (parse_string(&p, key, sizeof key, &keylen)) return -1;
        /* a NUL inside the key must not make it look like a known one */
        unsigned bit = keylen != strlen(key)               ? 0
                       : strcmp(key, "descr") == 0         ? KEY_DESCR
                       : strcmp(key, "fortran_order") == 0 ? KEY_FORTRAN
                       : strcmp(key, "shape") == 0         ? KEY_SHAPE
                                                           : 0;
        if (bit == 0) {
            char shown[4 * sizeof key];
            npy__set_err(err, errlen,
                         "unexpected key '%s' in header (a .npy header has exactly 'descr', "
                         "'fortran_order' and 'shape')",
                         quote_bytes(key, keylen, shown, sizeof shown));
            return -1;
        }
        if (seen & bit) {
            npy__set_err(err, errlen, "key '%s' appears twice in header", key);
            return -1;
        }
        seen |= bit;
        if (expect_char(&p, ':', "':' after a key")) return -1;
        int rc = bit == KEY_DESCR     ? parse_descr(&p, &out->dtype)
                 : bit == KEY_FORTRAN ? parse_bool_value(&p, &fortran)
                                      : parse_shape(&p, &out->rank, out->shape);
        if (rc) return -1;
        skip_ws(&p);
        if (p.pos < p.n && p.s[p.pos] == ',') {
            p.pos++;
            continue;
        }
        if (p.pos < p.n && p.s[p.pos] == '}') {
            p.pos++;
            break;
        }
        return unexpected(&p, "',' or '}' in the header dict");
    }
    skip_ws(&p);
    if (p.pos < p.n) return unexpected(&p, "only padding after the header dict");
    static const struct {
        unsigned bit;
        const char *name;
    } keys[] = {{KEY_DESCR, "descr"}, {KEY_FORTRAN, "fortran_order"}, {KEY_SHAPE, "shape"}};
    for (size_t i = 0; i < 3; i++)
        if (!(seen & keys[i].bit)) {
            npy__set_err(err, errlen, "header has no '%s' key", keys[i].name);
            return -1;
        }
    if (fortran) {
        /* Column-major order only matters when two or more dimensions exceed 1. */
        int big = 0;
        for (int i = 0; i < out->rank; i++) big += out->shape[i] > 1;
        if (big > 1) {
            npy__set_err(err, errlen,
                         "fortran_order True (column-major data) is not supported (save "
                         "np.ascontiguousarray(arr))");
            return -1;
        }
    }
    return 0;
}
