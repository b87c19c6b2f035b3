/* Tuning files (format in the README): the reading of their records, parsed by json.c,
 * into tuning overrides for one device, and the writing of a record for clattn tune. A
 * file that is not JSON, or not a tuning file, is refused whole; a record that is
 * malformed, for another device, or illegal on this one is refused alone. Each refusal
 * is reported once. */
#include "tuning/tuning.h"

#include "core/device.h"
#include "tuning/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
static bool jint(const clattn__jparser *p, int n, long long lo, long long hi, int *out)
{
    const clattn__jnode *v = &p->nodes[n];
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
    const clattn__jparser *p;
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
    const clattn__jparser *p = rc->p;
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "\"device\" is not an object");
    int keys = 0;
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next, keys++) {
        const char *k = clattn__jkey(p, m);
        const int t = p->nodes[m].type;
        if (strcmp(k, "vendor_id") == 0) {
            const clattn__jnode *v = &p->nodes[m];
            if (t != J_NUM || !v->is_int || v->ival < 0 || v->ival > 0xffffffffll)
                REC_FAIL(rc, "device.vendor_id is not an unsigned 32-bit integer");
            if ((uint32_t)v->ival != rc->dev->vendor_id) rc->foreign = true;
        } else if (strcmp(k, "arch") == 0 || strcmp(k, "name") == 0) {
            if (t != J_STR) REC_FAIL(rc, "device.%s is not a string", k);
            if (k[0] == 'a' ? !clattn__ieq(clattn__jstr(p, m), rc->dev->arch)
                            : !clattn__tuning_name_matches(clattn__jstr(p, m), rc->dev->name))
                rc->foreign = true;
        } else if (strcmp(k, "type") == 0) {
            const int ty = t == J_STR ? name_index(clattn__jstr(p, m), type_names, 5) : -1;
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
    const clattn__jparser *p = rc->p;
    c->dtype = c->head = c->decode = c->causal = c->group = c->kv = -2;
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "\"class\" is not an object");
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next) {
        const char *k = clattn__jkey(p, m);
        const int t = p->nodes[m].type;
        const char *s = t == J_STR ? clattn__jstr(p, m) : "";
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
    const clattn__jparser *p = rc->p;
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "\"params\" is not an object");
    size_t np;
    const clattn__tparam_info *pi = clattn__tparams(&np);
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next) {
        const char *k = clattn__jkey(p, m);
        size_t i = 0;
        while (i < np && strcmp(pi[i].name, k) != 0) i++;
        if (i == np || !(pi[i].paths & (1u << r->path)))
            REC_FAIL(rc, "\"%.40s\" is not a parameter of the %s path", k, clattn__tpath_name(r->path));
        int v;
        if (strcmp(k, "form") == 0 && p->nodes[m].type == J_STR) {
            v = -1;
            for (int f = 0; f < clattn__tform_count(r->path); f++)
                if (strcmp(clattn__jstr(p, m), clattn__tform_name(r->path, f)) == 0) v = f;
            if (v < 0) REC_FAIL(rc, "form \"%.40s\" is not a form of the %s path", clattn__jstr(p, m),
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
    const clattn__jparser *p = rc->p;
    memset(r, 0, sizeof *r);
    if (p->nodes[obj].type != J_OBJ) REC_FAIL(rc, "not an object");
    int dev = -1, path = -1, cls = -1, prm = -1;
    for (int m = p->nodes[obj].first; m >= 0; m = p->nodes[m].next) {
        const char *k = clattn__jkey(p, m);
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
    if (p->nodes[path].type != J_STR || !clattn__tpath_from_name(clattn__jstr(p, path), &r->path))
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
    clattn__jparser p;
    int root = clattn__jparse(&p, text, len);
    int recs = -1, version = -1;
    if (root >= 0) {
        if (p.nodes[root].type != J_OBJ) {
            snprintf(p.err, sizeof p.err, "the top level is not an object");
        } else {
            for (int m = p.nodes[root].first; m >= 0 && !p.err[0]; m = p.nodes[m].next) {
                if (strcmp(clattn__jkey(&p, m), "clattn_tuning") == 0) version = m;
                else if (strcmp(clattn__jkey(&p, m), "records") == 0) recs = m;
                else snprintf(p.err, sizeof p.err, "unknown top-level key \"%.40s\"", clattn__jkey(&p, m));
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
        clattn__jfree(&p);
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
    clattn__jfree(&p);
    return true;
}

bool clattn__tuning_record_spans(const char *text, size_t len,
                                 void (*each)(void *arg, const char *rec, size_t n), void *arg)
{
    clattn__jparser p;
    int root = clattn__jparse(&p, text, len);
    bool ok = root >= 0 && p.nodes[root].type == J_OBJ;
    for (int m = ok ? p.nodes[root].first : -1; m >= 0; m = p.nodes[m].next) {
        if (strcmp(clattn__jkey(&p, m), "records") != 0 || p.nodes[m].type != J_ARR) continue;
        for (int r = p.nodes[m].first; r >= 0; r = p.nodes[r].next)
            each(arg, text + p.nodes[r].begin, p.nodes[r].end - p.nodes[r].begin);
    }
    clattn__jfree(&p);
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
