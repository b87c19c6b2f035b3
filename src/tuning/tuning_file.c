/* Tuning files (format in the README): a small strict JSON parser of clattn's own (no
 * dependency), bounded in size, depth and values, that never reads past its input, and
 * the reading of its records into tuning overrides for one device. A file that is not
 * JSON, or not a tuning file, is refused whole; a record that is malformed, for another
 * device, or illegal on this one is refused alone. Each refusal is reported once. */
#include "tuning/tuning.h"

#include "core/device.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON ------------------------------------------------------------------------- */
enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };
#define J_MAX_DEPTH 16
#define J_MAX_NODES 65536

/* Nodes in one array; children are linked by index (-1 = none). Strings (values and keys)
 * are decoded into one arena. */
typedef struct jnode {
    int type;
    int first, next; /* first child, next sibling */
    size_t key;      /* object members: arena offset of the key */
    size_t str;      /* strings: arena offset */
    double num;
    bool is_int;     /* a number without fraction or exponent that fits long long */
    long long ival;
    size_t begin, end; /* the value's bytes in the text */
} jnode;

typedef struct jparser {
    const char *s;
    size_t len, pos;
    jnode *nodes;
    int nnodes;
    char *arena;
    size_t arena_used;
    char err[128];
} jparser;

static void jerr(jparser *p, const char *fmt, ...)
{
    if (p->err[0]) return;
    va_list ap;
    va_start(ap, fmt);
    char m[96];
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    snprintf(p->err, sizeof p->err, "%s at byte %zu", m, p->pos);
}

static void jws(jparser *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                               p->s[p->pos] == '\r'))
        p->pos++;
}

static int jnew(jparser *p, int type)
{
    if (p->nnodes >= J_MAX_NODES) {
        jerr(p, "more than %d values", J_MAX_NODES);
        return -1;
    }
    jnode *n = &p->nodes[p->nnodes];
    memset(n, 0, sizeof *n);
    n->type = type;
    n->first = n->next = -1;
    n->begin = p->pos;
    return p->nnodes++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool jhex4(jparser *p, unsigned *out)
{
    if (p->len - p->pos < 4) return false;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p->s[p->pos + (size_t)i]);
        if (h < 0) return false;
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return true;
}

/* A string at p->pos (the opening quote) into the arena; its offset in *off. The arena
 * has room: a decoded string is never longer than its source text. */
static bool jstring(jparser *p, size_t *off)
{
    p->pos++; /* the quote */
    *off = p->arena_used;
    char *out = p->arena + p->arena_used;
    size_t n = 0;
    for (;;) {
        if (p->pos >= p->len) {
            jerr(p, "unterminated string");
            return false;
        }
        unsigned char c = (unsigned char)p->s[p->pos++];
        if (c == '"') break;
        if (c < 0x20) {
            jerr(p, "control character in a string");
            return false;
        }
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (p->pos >= p->len) {
            jerr(p, "unterminated string");
            return false;
        }
        char e = p->s[p->pos++];
        unsigned u;
        switch (e) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u':
            if (!jhex4(p, &u)) {
                jerr(p, "bad \\u escape");
                return false;
            }
            if (u >= 0xd800 && u <= 0xdbff) { /* a surrogate pair: \uD8xx\uDCxx */
                unsigned lo;
                if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    jerr(p, "lone surrogate");
                    return false;
                }
                p->pos += 2;
                if (!jhex4(p, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                    jerr(p, "lone surrogate");
                    return false;
                }
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            } else if (u >= 0xdc00 && u <= 0xdfff) {
                jerr(p, "lone surrogate");
                return false;
            }
            if (u == 0) {
                jerr(p, "\\u0000 in a string");
                return false;
            }
            /* UTF-8: at most 4 bytes for the 6 to 12 bytes of escape read */
            if (u < 0x80) {
                out[n++] = (char)u;
            } else if (u < 0x800) {
                out[n++] = (char)(0xc0 | (u >> 6));
                out[n++] = (char)(0x80 | (u & 0x3f));
            } else if (u < 0x10000) {
                out[n++] = (char)(0xe0 | (u >> 12));
                out[n++] = (char)(0x80 | ((u >> 6) & 0x3f));
                out[n++] = (char)(0x80 | (u & 0x3f));
            } else {
                out[n++] = (char)(0xf0 | (u >> 18));
                out[n++] = (char)(0x80 | ((u >> 12) & 0x3f));
                out[n++] = (char)(0x80 | ((u >> 6) & 0x3f));
                out[n++] = (char)(0x80 | (u & 0x3f));
            }
            break;
        default: jerr(p, "bad escape"); return false;
        }
    }
    out[n] = '\0';
    p->arena_used += n + 1;
    return true;
}

static bool jdigits(jparser *p)
{
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    return p->pos > start;
}

static int jvalue(jparser *p, int depth);

static bool jnumber(jparser *p, jnode *n)
{
    const size_t start = p->pos;
    bool integral = true;
    if (p->pos < p->len && p->s[p->pos] == '-') p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '0') p->pos++;
    else if (!jdigits(p)) goto bad;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        integral = false;
        if (!jdigits(p)) goto bad;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        integral = false;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (!jdigits(p)) goto bad;
    }
    char buf[64];
    const size_t len = p->pos - start;
    if (len >= sizeof buf) {
        jerr(p, "number too long");
        return false;
    }
    memcpy(buf, p->s + start, len);
    buf[len] = '\0';
    n->num = strtod(buf, NULL);
    if (integral && len <= 18) { /* fits long long */
        n->is_int = true;
        n->ival = strtoll(buf, NULL, 10);
    }
    return true;
bad:
    jerr(p, "bad number");
    return false;
}

static bool jlit(jparser *p, const char *w)
{
    size_t l = strlen(w);
    if (p->len - p->pos < l || memcmp(p->s + p->pos, w, l) != 0) {
        jerr(p, "unexpected character");
        return false;
    }
    p->pos += l;
    return true;
}

/* A container's members; *last links them. */
static int jcontainer(jparser *p, int depth, bool obj)
{
    int self = jnew(p, obj ? J_OBJ : J_ARR);
    if (self < 0) return -1;
    p->pos++;
    jws(p);
    int last = -1;
    if (p->pos < p->len && p->s[p->pos] == (obj ? '}' : ']')) {
        p->pos++;
        p->nodes[self].end = p->pos;
        return self;
    }
    for (;;) {
        size_t key = 0;
        if (obj) {
            jws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                jerr(p, p->pos >= p->len ? "truncated object" : "expected a key");
                return -1;
            }
            if (!jstring(p, &key)) return -1;
            jws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                jerr(p, "expected ':'");
                return -1;
            }
            p->pos++;
        }
        int child = jvalue(p, depth + 1);
        if (child < 0) return -1;
        p->nodes[child].key = key;
        if (last < 0) p->nodes[self].first = child;
        else p->nodes[last].next = child;
        last = child;
        jws(p);
        if (p->pos >= p->len) {
            jerr(p, "truncated");
            return -1;
        }
        char c = p->s[p->pos++];
        if (c == ',') continue;
        if (c == (obj ? '}' : ']')) break;
        jerr(p, "expected ',' or a closing bracket");
        return -1;
    }
    p->nodes[self].end = p->pos;
    return self;
}

static int jvalue(jparser *p, int depth)
{
    if (depth > J_MAX_DEPTH) {
        jerr(p, "nested deeper than %d", J_MAX_DEPTH);
        return -1;
    }
    jws(p);
    if (p->pos >= p->len) {
        jerr(p, "truncated");
        return -1;
    }
    const char c = p->s[p->pos];
    int id;
    if (c == '{' || c == '[') return jcontainer(p, depth, c == '{');
    if (c == '"') {
        id = jnew(p, J_STR);
        if (id < 0 || !jstring(p, &p->nodes[id].str)) return -1;
    } else if (c == 't' || c == 'f' || c == 'n') {
        id = jnew(p, c == 't' ? J_TRUE : c == 'f' ? J_FALSE : J_NULL);
        if (id < 0 || !jlit(p, c == 't' ? "true" : c == 'f' ? "false" : "null")) return -1;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        id = jnew(p, J_NUM);
        if (id < 0 || !jnumber(p, &p->nodes[id])) return -1;
    } else {
        jerr(p, "unexpected character");
        return -1;
    }
    p->nodes[id].end = p->pos;
    return id;
}

/* Parse text; the root node's index, or -1 with p->err set. Free with jfree. */
static int jparse(jparser *p, const char *text, size_t len)
{
    memset(p, 0, sizeof *p);
    p->s = text;
    p->len = len;
    p->nodes = malloc(sizeof(jnode) * (len < J_MAX_NODES ? len + 1 : J_MAX_NODES));
    p->arena = malloc(len + 1);
    if (!p->nodes || !p->arena) {
        snprintf(p->err, sizeof p->err, "out of memory");
        return -1;
    }
    int root = jvalue(p, 0);
    if (root < 0) return -1;
    jws(p);
    if (p->pos != p->len) {
        jerr(p, "text after the JSON value");
        return -1;
    }
    return root;
}

static void jfree(jparser *p)
{
    free(p->nodes);
    free(p->arena);
}

static const char *jkey(const jparser *p, int n) { return p->arena + p->nodes[n].key; }
static const char *jstr(const jparser *p, int n) { return p->arena + p->nodes[n].str; }

/* ---- Records ------------------------------------------------------------------------ */
static const char *const type_names[] = {"", "cpu", "gpu", "accelerator", "other"};
static const char *const dtype_names[] = {"f32", "f16", "bf16"};

static int name_index(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (names[i][0] && strcmp(s, names[i]) == 0) return i;
    return -1;
}

/* An integer member value in [lo, hi]. */
static bool jint(const jparser *p, int n, long long lo, long long hi, int *out)
{
    const jnode *v = &p->nodes[n];
    if (v->type == J_TRUE || v->type == J_FALSE) {
        if (lo > 0 || hi < 1) return false;
        *out = v->type == J_TRUE;
        return true;
    }
    if (v->type != J_NUM || !v->is_int || v->ival < lo || v->ival > hi) return false;
    *out = (int)v->ival;
    return true;
}

typedef struct rec_ctx {
    const jparser *p;
    const clattn__tdevice *dev;
    char err[160];
    bool foreign;
} rec_ctx;

#define REC_FAIL(rc, ...)                                                                  \
    do {                                                                                   \
        snprintf((rc)->err, sizeof (rc)->err, __VA_ARGS__);                                \
        return false;                                                                      \
    } while (0)

/* The device object: does it name this device? Unknown keys or wrong types refuse it. */
static bool read_device(rec_ctx *rc, int obj)
{
    const jparser *p = rc->p;
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "\"device\" is not an object");
    int keys = 0;
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next, keys++) {
        const char *k = jkey(p, m);
        const int t = p->nodes[m].type;
        if (strcmp(k, "vendor_id") == 0) {
            const jnode *v = &p->nodes[m];
            if (t != J_NUM || !v->is_int || v->ival < 0 || v->ival > 0xffffffffll)
                REC_FAIL(rc, "device.vendor_id is not an unsigned 32-bit integer");
            if ((uint32_t)v->ival != rc->dev->vendor_id) rc->foreign = true;
        } else if (strcmp(k, "arch") == 0 || strcmp(k, "name") == 0) {
            if (t != J_STR) REC_FAIL(rc, "device.%s is not a string", k);
            if (k[0] == 'a' ? !clattn__ieq(jstr(p, m), rc->dev->arch)
                            : !clattn__tuning_name_matches(jstr(p, m), rc->dev->name))
                rc->foreign = true;
        } else if (strcmp(k, "type") == 0) {
            const int ty = t == J_STR ? name_index(jstr(p, m), type_names, 5) : -1;
            if (ty < 1) REC_FAIL(rc, "device.type is not cpu, gpu, accelerator or other");
            if (ty != (int)rc->dev->type) rc->foreign = true;
        } else {
            REC_FAIL(rc, "unknown device key \"%.40s\"", k);
        }
    }
    if (keys == 0) REC_FAIL(rc, "\"device\" names nothing");
    return true;
}

static bool read_class(rec_ctx *rc, int obj, clattn__tclass *c)
{
    const jparser *p = rc->p;
    c->dtype = c->head = c->decode = c->causal = c->group = c->kv = -2;
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "\"class\" is not an object");
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next) {
        const char *k = jkey(p, m);
        const int t = p->nodes[m].type;
        const char *s = t == J_STR ? jstr(p, m) : "";
        if (strcmp(k, "dtype") == 0) {
            c->dtype = name_index(s, dtype_names, 3);
            if (c->dtype < 0) REC_FAIL(rc, "class.dtype is not f32, f16 or bf16");
        } else if (strcmp(k, "head") == 0) {
            if (!jint(p, m, 1, 256, &c->head) || (c->head != 64 && c->head != 128 && c->head != 256))
                REC_FAIL(rc, "class.head is not 64, 128 or 256");
        } else if (strcmp(k, "phase") == 0) {
            c->decode = strcmp(s, "decode") == 0 ? 1 : strcmp(s, "prefill") == 0 ? 0 : -1;
            if (c->decode < 0) REC_FAIL(rc, "class.phase is not prefill or decode");
        } else if (strcmp(k, "causal") == 0) {
            if (t != J_TRUE && t != J_FALSE) REC_FAIL(rc, "class.causal is not true or false");
            c->causal = t == J_TRUE;
        } else if (strcmp(k, "group") == 0) {
            if (!jint(p, m, 1, 16, &c->group) || (c->group & (c->group - 1)))
                REC_FAIL(rc, "class.group is not 1, 2, 4, 8 or 16");
        } else if (strcmp(k, "kv") == 0) {
            clattn_kv_format f;
            if (t == J_STR && strcmp(s, "none") == 0) c->kv = -1;
            else if (t == J_STR && clattn_kv_format_from_name(s, &f) == CLATTN_SUCCESS) c->kv = (int)f;
            else REC_FAIL(rc, "class.kv is not none or a KV format name");
        } else {
            REC_FAIL(rc, "unknown class key \"%.40s\"", k);
        }
    }
    return true;
}

static bool read_params(rec_ctx *rc, int obj, clattn__trecord *r)
{
    const jparser *p = rc->p;
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "\"params\" is not an object");
    size_t np;
    const clattn__tparam_info *pi = clattn__tparams(&np);
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next) {
        const char *k = jkey(p, m);
        size_t i = 0;
        while (i < np && strcmp(pi[i].name, k) != 0) i++;
        if (i == np || !(pi[i].paths & (1u << r->path)))
            REC_FAIL(rc, "\"%.40s\" is not a parameter of the %s path", k, clattn__tpath_name(r->path));
        int v;
        if (strcmp(k, "form") == 0 && p->nodes[m].type == J_STR) {
            v = -1;
            for (int f = 0; f < clattn__tform_count(r->path); f++)
                if (strcmp(jstr(p, m), clattn__tform_name(r->path, f)) == 0) v = f;
            if (v < 0) REC_FAIL(rc, "form \"%.40s\" is not a form of the %s path", jstr(p, m),
                                clattn__tpath_name(r->path));
        } else if (!jint(p, m, -1000000000ll, 1000000000ll, &v)) {
            REC_FAIL(rc, "params.%s is not an integer", k);
        }
        *clattn__trow_field(&r->row, &pi[i]) = v;
        r->given |= 1u << i;
    }
    if (!r->given) REC_FAIL(rc, "\"params\" is empty");
    return true;
}

/* One record; true when it applies to rc->dev and is legal there (r filled). */
static bool read_record(rec_ctx *rc, int obj, clattn__trecord *r)
{
    const jparser *p = rc->p;
    memset(r, 0, sizeof *r);
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "not an object");
    int dev = -1, path = -1, cls = -1, prm = -1;
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next) {
        const char *k = jkey(p, m);
        int *slot = strcmp(k, "device") == 0 ? &dev : strcmp(k, "path") == 0 ? &path
                  : strcmp(k, "class") == 0 ? &cls : strcmp(k, "params") == 0 ? &prm : NULL;
        if (slot) {
            if (*slot >= 0) REC_FAIL(rc, "\"%s\" given twice", k);
            *slot = m;
        } else if (strcmp(k, "time_ms") == 0 || strcmp(k, "default_ms") == 0) {
            if (p->nodes[m].type != J_NUM) REC_FAIL(rc, "%s is not a number", k);
        } else {
            REC_FAIL(rc, "unknown key \"%.40s\"", k);
        }
    }
    if (dev < 0 || path < 0 || prm < 0) REC_FAIL(rc, "needs \"device\", \"path\" and \"params\"");
    if (p->nodes[path].type != J_STR || !clattn__tpath_from_name(jstr(p, path), &r->path))
        REC_FAIL(rc, "\"path\" is not fused, decode, unfused, kv, dispatch or backward");
    if (!read_device(rc, dev)) return false;
    if (cls >= 0) {
        if (!read_class(rc, cls, &r->cls)) return false;
    } else {
        r->cls.dtype = r->cls.head = r->cls.decode = r->cls.causal = r->cls.group = r->cls.kv = -2;
    }
    if (!read_params(rc, prm, r)) return false;
    if (rc->foreign) REC_FAIL(rc, "for another device");
    /* legal as it would be used: the built-in row, the record's form, its values */
    clattn__trow row;
    clattn__tuning_builtin(rc->dev, r->path, &row, NULL);
    if ((r->given & 1u) && r->row.form != row.form) clattn__tuning_apply_form(r->path, r->row.form, &row);
    size_t np;
    const clattn__tparam_info *pi = clattn__tparams(&np);
    for (size_t i = 0; i < np; i++)
        if (r->given & (1u << i)) *clattn__trow_field(&row, &pi[i]) = *clattn__trow_field(&r->row, &pi[i]);
    char why[128];
    if (!clattn__tuning_legal(rc->dev, r->path, &row, r->cls.head, why, sizeof why))
        REC_FAIL(rc, "illegal on this device: %s", why);
    return true;
}

#define MAX_RECORDS 4096

bool clattn__tuning_parse(const char *text, size_t len, const char *name, const clattn__tdevice *dev,
                          clattn__trecord **records, size_t *nrecords, clattn__treport report, void *arg)
{
    char msg[512];
    if (len > CLATTN__TUNING_FILE_MAX) {
        snprintf(msg, sizeof msg, "%.300s: larger than %zu bytes; ignored", name, CLATTN__TUNING_FILE_MAX);
        report(arg, msg);
        return false;
    }
    jparser p;
    int root = jparse(&p, text, len);
    int recs = -1, version = -1;
    if (root >= 0) {
        if (p.nodes[root].type != J_OBJ) {
            snprintf(p.err, sizeof p.err, "the top level is not an object");
        } else {
            for (int m = p.nodes[root].first; m >= 0 && !p.err[0]; m = p.nodes[m].next) {
                if (strcmp(jkey(&p, m), "clattn_tuning") == 0) version = m;
                else if (strcmp(jkey(&p, m), "records") == 0) recs = m;
                else snprintf(p.err, sizeof p.err, "unknown top-level key \"%.40s\"", jkey(&p, m));
            }
            int v = 0;
            if (!p.err[0] && (version < 0 || !jint(&p, version, 1, 1, &v)))
                snprintf(p.err, sizeof p.err, "\"clattn_tuning\": 1 (the format version) is missing");
            else if (!p.err[0] && (recs < 0 || p.nodes[recs].type != J_ARR))
                snprintf(p.err, sizeof p.err, "\"records\" is missing or not an array");
        }
    } else if (!p.err[0]) {
        snprintf(p.err, sizeof p.err, "not JSON");
    }
    if (p.err[0]) {
        snprintf(msg, sizeof msg, "%.300s: not a tuning file (%s); ignored", name, p.err);
        report(arg, msg);
        jfree(&p);
        return false;
    }
    int index = 0;
    for (int m = p.nodes[recs].first; m >= 0; m = p.nodes[m].next, index++) {
        rec_ctx rc;
        memset(&rc, 0, sizeof rc);
        rc.p = &p;
        rc.dev = dev;
        clattn__trecord r;
        if (!read_record(&rc, m, &r)) {
            snprintf(msg, sizeof msg, "%.300s: record %d %s; ignored", name, index, rc.err);
            report(arg, msg);
            continue;
        }
        if (*nrecords >= MAX_RECORDS) {
            snprintf(msg, sizeof msg, "%.300s: more than %d records; the rest ignored", name, MAX_RECORDS);
            report(arg, msg);
            break;
        }
        snprintf(r.source, sizeof r.source, "file %.120s, record %d", name, index);
        clattn__trecord *grown = realloc(*records, (*nrecords + 1) * sizeof **records);
        if (!grown) break;
        *records = grown;
        (*records)[(*nrecords)++] = r;
    }
    jfree(&p);
    return true;
}

bool clattn__tuning_record_spans(const char *text, size_t len,
                                 void (*each)(void *arg, const char *rec, size_t n), void *arg)
{
    jparser p;
    int root = jparse(&p, text, len);
    bool ok = root >= 0 && p.nodes[root].type == J_OBJ;
    for (int m = ok ? p.nodes[root].first : -1; m >= 0; m = p.nodes[m].next) {
        if (strcmp(jkey(&p, m), "records") != 0 || p.nodes[m].type != J_ARR) continue;
        for (int r = p.nodes[m].first; r >= 0; r = p.nodes[r].next)
            each(arg, text + p.nodes[r].begin, p.nodes[r].end - p.nodes[r].begin);
    }
    jfree(&p);
    return ok;
}

/* ---- Writing ------------------------------------------------------------------------- */
static bool put(char *buf, size_t cap, size_t *at, const char *fmt, ...)
{
    if (*at >= cap) return false;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *at, cap - *at, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *at) return false;
    *at += (size_t)n;
    return true;
}

/* A JSON string of s (quotes, backslashes and control characters escaped). */
static bool put_str(char *buf, size_t cap, size_t *at, const char *s)
{
    bool ok = put(buf, cap, at, "\"");
    for (; ok && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') ok = put(buf, cap, at, "\\%c", c);
        else if (c < 0x20) ok = put(buf, cap, at, "\\u%04x", c);
        else ok = put(buf, cap, at, "%c", c);
    }
    return ok && put(buf, cap, at, "\"");
}

bool clattn__tuning_format_record(const clattn__tdevice *dev, clattn__tpath path, const clattn__tclass *cls,
                                  const clattn__trow *row, double ms, double default_ms, char *buf, size_t cap)
{
    size_t at = 0;
    bool ok = put(buf, cap, &at, "{\"device\": {\"vendor_id\": %u, \"arch\": ", dev->vendor_id) &&
              put_str(buf, cap, &at, dev->arch) && put(buf, cap, &at, ", \"name\": ") &&
              put_str(buf, cap, &at, dev->name) &&
              put(buf, cap, &at, ", \"type\": \"%s\"}, \"path\": \"%s\", \"class\": {",
                  (unsigned)dev->type < 5 && dev->type ? type_names[dev->type] : "other", clattn__tpath_name(path));
    const char *sep = "";
    if (ok && cls->dtype >= 0 && cls->dtype < 3) {
        ok = put(buf, cap, &at, "\"dtype\": \"%s\"", dtype_names[cls->dtype]);
        sep = ", ";
    }
    if (ok && cls->head > 0) {
        ok = put(buf, cap, &at, "%s\"head\": %d", sep, cls->head);
        sep = ", ";
    }
    if (ok && cls->decode >= 0) {
        ok = put(buf, cap, &at, "%s\"phase\": \"%s\"", sep, cls->decode ? "decode" : "prefill");
        sep = ", ";
    }
    if (ok && cls->causal >= 0) {
        ok = put(buf, cap, &at, "%s\"causal\": %s", sep, cls->causal ? "true" : "false");
        sep = ", ";
    }
    if (ok && cls->group > 0) {
        ok = put(buf, cap, &at, "%s\"group\": %d", sep, cls->group);
        sep = ", ";
    }
    if (ok && cls->kv >= -1) {
        const char *kv = cls->kv == -1 ? "none" : clattn_kv_format_name((clattn_kv_format)cls->kv);
        ok = put(buf, cap, &at, "%s\"kv\": \"%s\"", sep, kv ? kv : "none");
    }
    ok = ok && put(buf, cap, &at, "}, \"params\": {");
    size_t np;
    const clattn__tparam_info *pi = clattn__tparams(&np);
    sep = "";
    for (size_t i = 0; ok && i < np; i++) {
        if (!(pi[i].paths & (1u << path))) continue;
        const int v = *clattn__trow_field((clattn__trow *)row, &pi[i]);
        if (strcmp(pi[i].name, "form") == 0) ok = put(buf, cap, &at, "%s\"form\": \"%s\"", sep, clattn__tform_name(path, v));
        else ok = put(buf, cap, &at, "%s\"%s\": %d", sep, pi[i].name, v);
        sep = ", ";
    }
    ok = ok && put(buf, cap, &at, "}");
    if (ok && isfinite(ms) && ms > 0) ok = put(buf, cap, &at, ", \"time_ms\": %.4f", ms);
    if (ok && isfinite(default_ms) && default_ms > 0) ok = put(buf, cap, &at, ", \"default_ms\": %.4f", default_ms);
    return ok && put(buf, cap, &at, "}");
}
