/* The .npy reader and writer (see npy.h for the rules). The header dict is parsed by a
 * small recursive-descent parser for exactly the Python literals numpy writes, so a
 * corrupt or hostile header is refused with a reason instead of being half-understood.
 * The reader works on a FILE or on a memory image through one "source", so the fuzz-style
 * tests exercise the same code the CLI runs. */
#include "support/npy.h"

#include "core/common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool host_is_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* .npy data is little-endian; a big-endian host swaps each element in place. */
static void swap_bytes(void *data, size_t count, size_t es)
{
    unsigned char *p = data;
    if (es == 1) return;
    for (size_t i = 0; i < count; i++, p += es)
        for (size_t a = 0, b = es - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

const char *npy_descr(clattn_dtype dtype)
{
    switch (dtype) {
    case CLATTN_F32: return "<f4";
    case CLATTN_F16: return "<f2";
    case CLATTN_BOOL: return "|b1";
    case CLATTN_I32: return "<i4";
    case CLATTN_BF16: return NULL; /* numpy has no bfloat16 */
    }
    return NULL;
}

const char *npy_dtype_label(clattn_dtype dtype)
{
    switch (dtype) {
    case CLATTN_F32: return "float32";
    case CLATTN_F16: return "float16";
    case CLATTN_BOOL: return "bool";
    case CLATTN_I32: return "int32";
    case CLATTN_BF16: return "bfloat16";
    }
    return "unknown";
}

const char *npy_shape_string(int rank, const int64_t *shape, char *buf, size_t len)
{
    if (!buf || len == 0) return buf;
    size_t used = 0;
    buf[0] = '\0';
#define APPEND(...)                                                                       \
    do {                                                                                  \
        if (used < len) {                                                                 \
            int n_ = snprintf(buf + used, len - used, __VA_ARGS__);                        \
            if (n_ > 0) used += (size_t)n_;                                               \
        }                                                                                 \
    } while (0)
    APPEND("(");
    for (int i = 0; i < rank; i++) APPEND(i ? ", %lld" : "%lld", (long long)shape[i]);
    APPEND(rank == 1 ? ",)" : ")");
#undef APPEND
    return buf;
}

/* ---- The header dict parser ------------------------------------------------------ */

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
    set_err(p->err, p->errlen, "malformed header: expected %s, found %s", wanted,
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
            set_err(p->err, p->errlen, "malformed header: unterminated string");
            return -1;
        }
        char c = p->s[p->pos];
        if (c == quote) break;
        if (c == '\\' || c == '\n' || c == '\r') {
            set_err(p->err, p->errlen,
                    "malformed header: %s inside a string at header offset %zu",
                    c == '\\' ? "escape sequence" : "line break", p->pos);
            return -1;
        }
        if (len + 1 >= outlen) {
            set_err(p->err, p->errlen,
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
        set_err(p->err, p->errlen,
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
        set_err(p->err, p->errlen,
                "big-endian dtype '%s' is not supported (convert with arr.astype('<%s'))", shown,
                shown + 1);
    else if (dn == 3 && strcmp(d, "<f8") == 0)
        set_err(p->err, p->errlen,
                "dtype '<f8' (float64) is not supported (convert with "
                "arr.astype(np.float32))");
    else
        set_err(p->err, p->errlen,
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
        set_err(p->err, p->errlen, "dimension '%.*s' in 'shape' is too large",
                (int)(p->pos - start > 40 ? 40 : p->pos - start), p->s + start);
        return -1;
    }
    if (negative && v != 0) {
        set_err(p->err, p->errlen, "negative dimension -%lld in 'shape'", (long long)v);
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
        set_err(p->err, p->errlen, "'shape' must be a tuple, not a list");
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
            set_err(p->err, p->errlen, "'shape' has more than %d dimensions", NPY_MAX_RANK);
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
        set_err(p->err, p->errlen,
                "'shape' must be a tuple: (%lld) is an integer, a 1-D shape is (%lld,)",
                (long long)shape[0], (long long)shape[0]);
        return -1;
    }
    *rank = r;
    return 0;
}

enum { KEY_DESCR = 1, KEY_FORTRAN = 2, KEY_SHAPE = 4 };

static int parse_header(const char *s, size_t n, npy_array *out, char *err, size_t errlen)
{
    hparser p = {s, n, 0, err, errlen};
    skip_ws(&p);
    if (p.pos >= p.n || p.s[p.pos] != '{') {
        char what[64];
        set_err(err, errlen, "header is not a dict (found %s)",
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
            set_err(err, errlen,
                    "unexpected key '%s' in header (a .npy header has exactly 'descr', "
                    "'fortran_order' and 'shape')",
                    quote_bytes(key, keylen, shown, sizeof shown));
            return -1;
        }
        if (seen & bit) {
            set_err(err, errlen, "key '%s' appears twice in header", key);
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
            set_err(err, errlen, "header has no '%s' key", keys[i].name);
            return -1;
        }
    if (fortran) {
        /* Column-major order only matters when two or more dimensions exceed 1. */
        int big = 0;
        for (int i = 0; i < out->rank; i++) big += out->shape[i] > 1;
        if (big > 1) {
            set_err(err, errlen,
                    "fortran_order True (column-major data) is not supported (save "
                    "np.ascontiguousarray(arr))");
            return -1;
        }
    }
    return 0;
}

/* ---- Reading --------------------------------------------------------------------- */

/* Where the bytes come from: a memory image or an open file. size is the total length
 * when known (memory, regular files), -1 otherwise (pipes). */
typedef struct source {
    const unsigned char *mem;
    size_t memlen;
    FILE *f;
    size_t pos;
    long long size;
} source;

static size_t src_read(source *s, void *dst, size_t n)
{
    size_t got;
    if (s->f) {
        got = n ? fread(dst, 1, n, s->f) : 0;
    } else {
        size_t avail = s->memlen - s->pos;
        got = n < avail ? n : avail;
        if (got) memcpy(dst, s->mem + s->pos, got);
    }
    s->pos += got;
    return got;
}

static int read_source(source *s, npy_array *out, char *err, size_t errlen)
{
    unsigned char pre[12];
    size_t got = src_read(s, pre, 8);
    if (got == 0) {
        set_err(err, errlen, "empty file, not a .npy file");
        return -1;
    }
    if (memcmp(pre, npy_magic, got < 6 ? got : 6) != 0) {
        set_err(err, errlen, "not a .npy file (bad magic bytes)");
        return -1;
    }
    if (got < 8) {
        set_err(err, errlen, "truncated header (the file is only %zu bytes)", got);
        return -1;
    }
    unsigned major = pre[6], minor = pre[7];
    if (major < 1 || major > 3 || minor != 0) {
        set_err(err, errlen, "unsupported .npy format version %u.%u (known: 1.0, 2.0, 3.0)",
                major, minor);
        return -1;
    }
    size_t lensize = major == 1 ? 2 : 4;
    got = src_read(s, pre + 8, lensize);
    if (got < lensize) {
        set_err(err, errlen, "truncated header (the file is only %zu bytes)", 8 + got);
        return -1;
    }
    size_t hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    if (lensize == 4) hlen |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    if (hlen > NPY_MAX_HEADER_BYTES) {
        set_err(err, errlen, "header length %zu exceeds the %u-byte limit", hlen,
                NPY_MAX_HEADER_BYTES);
        return -1;
    }
    char *header = malloc(hlen + 1);
    if (!header) {
        set_err(err, errlen, "out of memory reading a %zu-byte header", hlen);
        return -1;
    }
    got = src_read(s, header, hlen);
    if (got < hlen) {
        free(header);
        set_err(err, errlen, "truncated header (expected %zu header bytes, found %zu)", hlen,
                got);
        return -1;
    }
    header[hlen] = '\0';
    int rc = parse_header(header, hlen, out, err, errlen);
    free(header);
    if (rc) return -1;

    char shape_str[128];
    npy_shape_string(out->rank, out->shape, shape_str, sizeof shape_str);
    size_t es = clattn_dtype_size(out->dtype);
    size_t count = 1;
    bool overflow = false;
    for (int i = 0; i < out->rank; i++) {
        uint64_t d = (uint64_t)out->shape[i];
        if (d > SIZE_MAX) overflow = true;
        else if (d != 0 && count > SIZE_MAX / d) overflow = true;
        else count *= (size_t)d;
    }
    /* A zero dimension makes the array empty whatever the others say, except that the
     * dimensions themselves were already refused above if they overflow int64. */
    for (int i = 0; i < out->rank; i++)
        if (out->shape[i] == 0) {
            overflow = false;
            count = 0;
        }
    if (overflow || count > (SIZE_MAX / 2) / es) {
        set_err(err, errlen, "shape %s of %s is too large for this machine", shape_str,
                npy_dtype_label(out->dtype));
        return -1;
    }
    size_t nbytes = count * es;
    size_t data_start = 8 + lensize + hlen;
    if (s->size >= 0) {
        /* Check the length before allocating, so a corrupt shape cannot ask for
         * gigabytes that the file does not hold. */
        size_t avail = (unsigned long long)s->size > data_start
                           ? (size_t)((unsigned long long)s->size - data_start)
                           : 0;
        if (avail < nbytes) {
            set_err(err, errlen, "truncated data (expected %zu bytes, found %zu)", nbytes,
                    avail);
            return -1;
        }
        if (avail > nbytes) {
            set_err(err, errlen,
                    "%zu bytes of unexpected data after the array (shape %s, %s: %zu bytes)",
                    avail - nbytes, shape_str, npy_dtype_label(out->dtype), nbytes);
            return -1;
        }
    }
    void *data = malloc(nbytes ? nbytes : 1);
    if (!data) {
        set_err(err, errlen, "out of memory reading %zu bytes of data", nbytes);
        return -1;
    }
    got = src_read(s, data, nbytes);
    if (got < nbytes) {
        free(data);
        if (s->f && ferror(s->f))
            set_err(err, errlen, "read error: %s", strerror(errno));
        else
            set_err(err, errlen, "truncated data (expected %zu bytes, found %zu)", nbytes, got);
        return -1;
    }
    if (s->size < 0) {
        unsigned char extra;
        if (src_read(s, &extra, 1) == 1) {
            free(data);
            set_err(err, errlen, "unexpected data after the array (shape %s, %s)", shape_str,
                    npy_dtype_label(out->dtype));
            return -1;
        }
    }
    if (!host_is_little_endian()) swap_bytes(data, count, es);
    out->data = data;
    out->count = count;
    out->nbytes = nbytes;
    return 0;
}

static void clear_array(npy_array *a)
{
    memset(a, 0, sizeof *a);
}

int npy_parse(const void *buf, size_t len, npy_array *out, char *err, size_t errlen)
{
    if (!out) return -1;
    clear_array(out);
    if (!buf && len) {
        set_err(err, errlen, "no data");
        return -1;
    }
    source s = {buf, len, NULL, 0, (long long)len};
    if (read_source(&s, out, err, errlen)) {
        clear_array(out);
        return -1;
    }
    return 0;
}

int npy_read(const char *path, npy_array *out, char *err, size_t errlen)
{
    if (!out) return -1;
    clear_array(out);
    if (!path || !*path) {
        set_err(err, errlen, "empty file name");
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    source s = {NULL, 0, f, 0, -1};
    struct stat st;
    if (fstat(fileno(f), &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            fclose(f);
            set_err(err, errlen, "%s: is a directory", path);
            return -1;
        }
        if (S_ISREG(st.st_mode)) s.size = (long long)st.st_size;
    }
    char reason[512];
    int rc = read_source(&s, out, reason, sizeof reason);
    fclose(f);
    if (rc) {
        clear_array(out);
        set_err(err, errlen, "%s: %s", path, reason);
        return -1;
    }
    return 0;
}

void npy_free(npy_array *a)
{
    if (!a) return;
    free(a->data);
    clear_array(a);
}

/* ---- Writing --------------------------------------------------------------------- */

static char *dup_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* The header numpy itself would write: the dict, padded with spaces so the data starts
 * on a 64-byte boundary, ending in '\n'. Returns the preamble + header length. */
static size_t build_header(unsigned char *buf, size_t cap, const char *descr, int rank,
                           const int64_t *shape)
{
    char shape_str[NPY_MAX_RANK * 22 + 8];
    npy_shape_string(rank, shape, shape_str, sizeof shape_str);
    char dict[sizeof shape_str + 96];
    int dlen = snprintf(dict, sizeof dict,
                        "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr,
                        shape_str);
    size_t pre = 10; /* version 1.0: 2-byte length */
    size_t total = pre + (size_t)dlen + 1;
    total = (total + 63) / 64 * 64;
    if (total - pre > 65535) { /* version 2.0: 4-byte length */
        pre = 12;
        total = (pre + (size_t)dlen + 1 + 63) / 64 * 64;
    }
    if (total > cap) return 0;
    size_t hlen = total - pre;
    memcpy(buf, npy_magic, 6);
    buf[6] = pre == 10 ? 1 : 2;
    buf[7] = 0;
    for (size_t i = 0; i < pre - 8; i++) buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + pre, dict, (size_t)dlen);
    memset(buf + pre + dlen, ' ', hlen - (size_t)dlen - 1);
    buf[total - 1] = '\n';
    return total;
}

/* Write the elements as little-endian file_dtype, converting through a staging buffer. */
static bool write_data(FILE *f, const void *data, size_t count, clattn_dtype data_dtype,
                       clattn_dtype file_dtype)
{
    size_t in_es = clattn_dtype_size(data_dtype);
    size_t out_es = clattn_dtype_size(file_dtype);
    bool little = host_is_little_endian();
    if (data_dtype == file_dtype && little)
        return count == 0 || fwrite(data, out_es, count, f) == count;
    enum { CHUNK = 8192 };
    unsigned char stage[CHUNK * 4];
    const unsigned char *src = data;
    for (size_t done = 0; done < count;) {
        size_t n = count - done < CHUNK ? count - done : CHUNK;
        if (data_dtype == file_dtype) {
            memcpy(stage, src + done * in_es, n * in_es);
            swap_bytes(stage, n, in_es);
        } else { /* F32 -> F16 */
            for (size_t i = 0; i < n; i++) {
                float v;
                memcpy(&v, src + (done + i) * in_es, sizeof v);
                uint16_t h = clattn__float_to_half(v);
                stage[2 * i] = (unsigned char)(h & 0xff);
                stage[2 * i + 1] = (unsigned char)(h >> 8);
            }
        }
        if (fwrite(stage, out_es, n, f) != n) return false;
        done += n;
    }
    return true;
}

int npy_write_begin(npy_pending *pw, const char *path, clattn_dtype file_dtype, int rank,
                    const int64_t *shape, const void *data, clattn_dtype data_dtype,
                    char *err, size_t errlen)
{
    if (!pw) return -1;
    pw->tmp_path = NULL;
    pw->final_path = NULL;
    if (!path || !*path) {
        set_err(err, errlen, "empty output file name");
        return -1;
    }
    const char *descr = npy_descr(file_dtype);
    if (!descr) {
        set_err(err, errlen, "%s: a .npy file cannot hold %s", path,
                clattn_dtype_name(file_dtype));
        return -1;
    }
    if (data_dtype != file_dtype && !(data_dtype == CLATTN_F32 && file_dtype == CLATTN_F16)) {
        set_err(err, errlen, "%s: cannot convert %s data to %s", path,
                npy_dtype_label(data_dtype), npy_dtype_label(file_dtype));
        return -1;
    }
    if (rank < 0 || rank > NPY_MAX_RANK || (rank > 0 && !shape)) {
        set_err(err, errlen, "%s: rank %d is outside 0..%d", path, rank, NPY_MAX_RANK);
        return -1;
    }
    size_t count = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0) {
            set_err(err, errlen, "%s: negative dimension %lld", path, (long long)shape[i]);
            return -1;
        }
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && (d > SIZE_MAX || count > SIZE_MAX / 4 / d)) {
            set_err(err, errlen, "%s: shape too large", path);
            return -1;
        }
        count *= (size_t)d;
    }
    if (count && !data) {
        set_err(err, errlen, "%s: no data to write", path);
        return -1;
    }

    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    char *final = dup_string(path);
    if (!tmp || !final) {
        free(tmp);
        free(final);
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    /* "x": never clobber a file we did not create (e.g. the other output of this run). */
    FILE *f = fopen(tmp, "wbx");
    if (!f) {
        set_err(err, errlen, "%s: cannot create temporary file %s: %s", path, tmp,
                strerror(errno));
        free(tmp);
        free(final);
        return -1;
    }
    unsigned char header[NPY_MAX_RANK * 22 + 256];
    size_t hsize = build_header(header, sizeof header, descr, rank, shape);
    bool ok = hsize > 0 && fwrite(header, 1, hsize, f) == hsize &&
              write_data(f, data, count, data_dtype, file_dtype);
    int saved = ok ? 0 : errno;
    if (ok && fflush(f) != 0) {
        ok = false;
        saved = errno;
    }
    /* Flush to disk before the rename, so a crash cannot leave a renamed but empty file.
     * Filesystems that cannot sync (EINVAL, ENOTSUP) are not an error. */
    if (ok && fsync(fileno(f)) != 0 && errno != EINVAL && errno != ENOTSUP) {
        ok = false;
        saved = errno;
    }
    if (fclose(f) != 0 && ok) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        remove(tmp);
        set_err(err, errlen, "%s: write failed: %s", path, strerror(saved ? saved : EIO));
        free(tmp);
        free(final);
        return -1;
    }
    pw->tmp_path = tmp;
    pw->final_path = final;
    return 0;
}

int npy_write_commit(npy_pending *pw, char *err, size_t errlen)
{
    if (!pw || !pw->tmp_path) {
        set_err(err, errlen, "nothing to commit");
        return -1;
    }
    int rc = 0;
    if (rename(pw->tmp_path, pw->final_path) != 0) {
        set_err(err, errlen, "%s: cannot rename %s over it: %s", pw->final_path, pw->tmp_path,
                strerror(errno));
        remove(pw->tmp_path);
        rc = -1;
    }
    free(pw->tmp_path);
    free(pw->final_path);
    pw->tmp_path = NULL;
    pw->final_path = NULL;
    return rc;
}

void npy_write_abort(npy_pending *pw)
{
    if (!pw) return;
    if (pw->tmp_path) remove(pw->tmp_path);
    free(pw->tmp_path);
    free(pw->final_path);
    pw->tmp_path = NULL;
    pw->final_path = NULL;
}

int npy_write(const char *path, clattn_dtype file_dtype, int rank, const int64_t *shape,
              const void *data, clattn_dtype data_dtype, char *err, size_t errlen)
{
    npy_pending pw;
    if (npy_write_begin(&pw, path, file_dtype, rank, shape, data, data_dtype, err, errlen))
        return -1;
    return npy_write_commit(&pw, err, errlen);
}
