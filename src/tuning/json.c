/* The tuning files' JSON parser (see json.h): values into one array of nodes linked by
 * index, strings decoded into one arena, every limit checked before it is reached. */
#include "tuning/json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define J_MAX_DEPTH 16
#define J_MAX_NODES 65536

static void jerr(clattn__jparser *p, const char *fmt, ...)
{
    if (p->err[0]) return;
    va_list ap;
    va_start(ap, fmt);
    char m[96];
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    snprintf(p->err, sizeof p->err, "%s at byte %zu", m, p->pos);
}

static void jws(clattn__jparser *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                               p->s[p->pos] == '\r'))
        p->pos++;
}

static int jnew(clattn__jparser *p, int type)
{
    if (p->nnodes >= J_MAX_NODES) {
        jerr(p, "more than %d values", J_MAX_NODES);
        return -1;
    }
    clattn__jnode *n = &p->nodes[p->nnodes];
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

static bool jhex4(clattn__jparser *p, unsigned *out)
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
static bool jstring(clattn__jparser *p, size_t *off)
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

static bool jdigits(clattn__jparser *p)
{
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    return p->pos > start;
}

static int jvalue(clattn__jparser *p, int depth);

static bool jnumber(clattn__jparser *p, clattn__jnode *n)
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

static bool jlit(clattn__jparser *p, const char *w)
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
static int jcontainer(clattn__jparser *p, int depth, bool obj)
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

static int jvalue(clattn__jparser *p, int depth)
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

/* Parse text; the root node's index, or -1 with p->err set. Free with clattn__jfree. */
int clattn__jparse(clattn__jparser *p, const char *text, size_t len)
{
    memset(p, 0, sizeof *p);
    p->s = text;
    p->len = len;
    p->nodes = malloc(sizeof(clattn__jnode) * (len < J_MAX_NODES ? len + 1 : J_MAX_NODES));
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

void clattn__jfree(clattn__jparser *p)
{
    free(p->nodes);
    free(p->arena);
}
