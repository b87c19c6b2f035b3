/* Validation of an attention call's descriptors and options into a clattn__problem.
 * Every path and the CPU reference start here, so each rule of SPEC §1 about shapes,
 * dtypes, strides and option values is checked once, with a message naming the argument. */
#include "core/problem.h"

#include <math.h>
#include <string.h>

#define FAILP(st, ...) return clattn__failbuf(err, errlen, (st), __VA_ARGS__)

int64_t clattn__tensor_numel(const clattn_tensor *t)
{
    /* An empty tensor first: its other extents are not bounded by any memory and their
     * product alone may overflow. */
    for (int i = 0; i < 4; i++)
        if (t->ne[i] == 0) return 0;
    /* Broadcast (stride-0) views may have extents whose product does not fit: such a
     * tensor is not empty, and INT64_MAX says "more than can be counted". */
    int64_t n = 1;
    for (int i = 0; i < 4; i++)
        if (!clattn__mul_ok(n, t->ne[i], &n)) return INT64_MAX;
    return n;
}

bool clattn__tensor_span(const clattn_tensor *t, size_t *span)
{
    size_t es = clattn_dtype_size(t->dtype);
    *span = 0;
    for (int i = 0; i < 4; i++)
        if (t->ne[i] == 0) return true;
    size_t last = 0;
    for (int i = 0; i < 4; i++) {
        size_t step = (size_t)(t->ne[i] - 1);
        size_t stride = (size_t)t->nb[i];
        if (stride != 0 && step > SIZE_MAX / stride) return false;
        if (last > SIZE_MAX - step * stride) return false;
        last += step * stride;
    }
    if (last > SIZE_MAX - es) return false;
    *span = last + es;
    return true;
}

/* Checks common to every descriptor: one buffer, a known dtype, sane extents and
 * strides, an aligned offset, a span that does not overflow. */
static clattn_status check_tensor(const char *name, const clattn_tensor *t, bool host_only,
                                  char *err, size_t errlen)
{
    if (t->dtype < CLATTN_F32 || t->dtype > CLATTN_I32)
        FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s: unknown dtype %d", name, (int)t->dtype);
    size_t es = clattn_dtype_size(t->dtype);
    if (host_only && t->host == NULL)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s: the CPU reference needs a host pointer",
              name);
    if ((t->host == NULL) == (t->buffer == NULL))
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
              "%s: exactly one of host and buffer must be set (host=%p, buffer=%p)", name,
              t->host, (void *)t->buffer);
    for (int i = 0; i < 4; i++) {
        if (t->ne[i] < 0)
            FAILP(CLATTN_ERROR_INVALID_SHAPE, "%s: extent ne[%d] = %lld is negative", name, i,
                  (long long)t->ne[i]);
        if (t->nb[i] < 0)
            FAILP(CLATTN_ERROR_INVALID_STRIDE, "%s: stride nb[%d] = %lld is negative", name, i,
                  (long long)t->nb[i]);
        if (t->nb[i] % (int64_t)es != 0)
            FAILP(CLATTN_ERROR_INVALID_STRIDE,
                  "%s: stride nb[%d] = %lld bytes is not a multiple of the %s size (%zu)", name,
                  i, (long long)t->nb[i], clattn_dtype_name(t->dtype), es);
    }
    if (t->offset % es != 0)
        FAILP(CLATTN_ERROR_INVALID_STRIDE, "%s: offset %zu is not a multiple of the %s size",
              name, t->offset, clattn_dtype_name(t->dtype));
    size_t span;
    if (!clattn__tensor_span(t, &span) || span > SIZE_MAX - t->offset)
        FAILP(CLATTN_ERROR_INVALID_STRIDE, "%s: extents and strides overflow the address space",
              name);
    return CLATTN_SUCCESS;
}

/* An option that is one value per batch or head: a tensor (check_tensor) of dtype `want`
 * (`want_name` in the message) and shape [n, 1, 1, 1], n being extent `dim` (kv_lens:
 * [B] of int32, alibi: [Hq] of f32). */
static clattn_status check_vector(const char *name, const clattn_tensor *t, bool host_only,
                                  clattn_dtype want, const char *want_name, const char *dim,
                                  int64_t n, char *err, size_t errlen)
{
    clattn_status st = check_tensor(name, t, host_only, err, errlen);
    if (st) return st;
    if (t->dtype != want)
        FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s: dtype %s is not %s", name,
              clattn_dtype_name(t->dtype), want_name);
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "%s: shape must be [%s] = [%lld]", name, dim, (long long)n);
    return CLATTN_SUCCESS;
}

/* An output must not write one element twice: sorted by stride, each dimension with more
 * than one element must step past everything the inner ones cover. */
static clattn_status check_no_self_overlap(const char *name, const clattn_tensor *t,
                                           char *err, size_t errlen)
{
    /* an empty output writes nothing, whatever its strides (dense ones may be 0) */
    if (clattn__tensor_numel(t) == 0) return CLATTN_SUCCESS;
    int order[4] = {0, 1, 2, 3};
    for (int a = 1; a < 4; a++)
        for (int b = a; b > 0 && t->nb[order[b]] < t->nb[order[b - 1]]; b--) {
            int tmp = order[b];
            order[b] = order[b - 1];
            order[b - 1] = tmp;
        }
    int64_t covered = (int64_t)clattn_dtype_size(t->dtype);
    /* nb * ne can pass INT64_MAX even when the span fits in a size_t; then no stride can
     * step past what is covered, and computing the product would overflow. */
    bool covered_beyond_int64 = false;
    for (int a = 0; a < 4; a++) {
        int d = order[a];
        if (t->ne[d] <= 1) continue;
        if (covered_beyond_int64 || t->nb[d] < covered)
            FAILP(CLATTN_ERROR_INVALID_STRIDE,
                  "%s: strides make elements overlap (nb[%d] = %lld < %s%lld); an output needs "
                  "distinct elements",
                  name, d, (long long)t->nb[d], covered_beyond_int64 ? "more than " : "",
                  (long long)covered);
        if (t->nb[d] > INT64_MAX / t->ne[d]) covered_beyond_int64 = true;
        else covered = t->nb[d] * t->ne[d];
    }
    return CLATTN_SUCCESS;
}

static bool is_float_storage(clattn_dtype d)
{
    return d == CLATTN_F32 || d == CLATTN_F16 || d == CLATTN_BF16;
}

clattn_status clattn__problem_init(clattn__problem *p, const clattn_tensor *q,
                                   const clattn_tensor *k, const clattn_tensor *v,
                                   clattn_tensor *o, const clattn_options *opt, char *err,
                                   size_t errlen)
{
    const bool ref = (o == NULL);
    memset(p, 0, sizeof *p);
    clattn_options whole; /* the caller's struct may be an older, smaller one */
    clattn_status ost = clattn__options_read(opt, &whole, err, errlen);
    if (ost != CLATTN_SUCCESS) return ost;
    opt = &whole;
    if (!q || !k || !v)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s is NULL", !q ? "q" : !k ? "k" : "v");

    const clattn_tensor *ts[4] = {q, k, v, o};
    const char *names[4] = {"q", "k", "v", "o"};
    for (int i = 0; i < 4; i++) {
        if (!ts[i]) continue;
        clattn_status st = check_tensor(names[i], ts[i], ref, err, errlen);
        if (st) return st;
        if (!is_float_storage(ts[i]->dtype))
            FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s: dtype %s is not f32, f16 or bf16",
                  names[i], clattn_dtype_name(ts[i]->dtype));
    }

    p->B = q->ne[0];
    p->Hq = q->ne[1];
    p->Lq = q->ne[2];
    p->D = q->ne[3];
    p->Hkv = k->ne[1];
    p->Lk = k->ne[2];
    p->Dv = v->ne[3];
    if (k->ne[0] != p->B || v->ne[0] != p->B)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "batch sizes differ: q %lld, k %lld, v %lld",
              (long long)p->B, (long long)k->ne[0], (long long)v->ne[0]);
    if (p->Hkv < 1)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "k: needs at least one head (ne[1] = %lld)",
              (long long)p->Hkv);
    if (v->ne[1] != p->Hkv)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "k and v head counts differ: %lld vs %lld",
              (long long)p->Hkv, (long long)v->ne[1]);
    if (p->Hq % p->Hkv != 0)
        FAILP(CLATTN_ERROR_INVALID_SHAPE,
              "q heads (%lld) must be a multiple of k/v heads (%lld)", (long long)p->Hq,
              (long long)p->Hkv);
    if (v->ne[2] != p->Lk)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "k and v key counts differ: %lld vs %lld",
              (long long)p->Lk, (long long)v->ne[2]);
    if (k->ne[3] != p->D)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "q and k head dims differ: %lld vs %lld",
              (long long)p->D, (long long)k->ne[3]);
    if (p->D < 1 || p->D > 256)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "head dim D = %lld is outside 1..256",
              (long long)p->D);
    if (p->Dv < 1 || p->Dv > 256)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "value head dim Dv = %lld is outside 1..256",
              (long long)p->Dv);
    p->group = p->Hq / p->Hkv;
    if (o) {
        if (o->ne[0] != p->B || o->ne[1] != p->Hq || o->ne[2] != p->Lq || o->ne[3] != p->Dv)
            FAILP(CLATTN_ERROR_INVALID_SHAPE,
                  "o: shape [%lld,%lld,%lld,%lld] should be [B,Hq,Lq,Dv] = "
                  "[%lld,%lld,%lld,%lld]",
                  (long long)o->ne[0], (long long)o->ne[1], (long long)o->ne[2],
                  (long long)o->ne[3], (long long)p->B, (long long)p->Hq, (long long)p->Lq,
                  (long long)p->Dv);
        clattn_status st = check_no_self_overlap("o", o, err, errlen);
        if (st) return st;
    }

    /* Options. */
    if (isinf(opt->scale))
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "scale must be finite (NaN = default 1/sqrt(D))");
    p->scale = isnan(opt->scale) ? (float)(1.0 / sqrt((double)p->D)) : opt->scale;
    if (!(opt->softcap >= 0.0f) || isinf(opt->softcap))
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "softcap = %g must be finite and >= 0 (0 = off)",
              (double)opt->softcap);
    p->softcap = opt->softcap;
    if (opt->causal != CLATTN_CAUSAL_NONE && opt->causal != CLATTN_CAUSAL_TOP_LEFT &&
        opt->causal != CLATTN_CAUSAL_BOTTOM_RIGHT)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "causal = %d is not a clattn_causal value",
              (int)opt->causal);
    p->causal = opt->causal;
    if (opt->window_left < -1 || opt->window_right < -1)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
              "window (%lld, %lld): each side must be >= 0, or -1 for unbounded",
              (long long)opt->window_left, (long long)opt->window_right);
    p->win_left = opt->window_left;
    p->win_right = opt->window_right;
    /* A side of Lq + Lk or more excludes no key (query positions i' lie in -Lq..Lk-1), so
     * it is the same as unbounded; say so, because the key range is computed as i' - left
     * and i' + right + 1, which overflow for sides near INT64_MAX (a caller's "no limit")
     * in the reference and in the kernels, where the wrapped bound hid every key. */
    const int64_t reach = p->Lq > INT64_MAX - p->Lk ? INT64_MAX : p->Lq + p->Lk;
    if (p->win_left >= reach) p->win_left = -1;
    if (p->win_right >= reach) p->win_right = -1;
    if ((int)opt->path < 0 || opt->path >= CLATTN_PATH_COUNT_)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "path = %d is not a clattn_path value",
              (int)opt->path);
    p->path = opt->path;

    if (opt->mask) {
        const int64_t full[4] = {p->B, p->Hq, p->Lq, p->Lk};
        static const char *const dims[4] = {"B", "Hq", "Lq", "Lk"};
        clattn_status st = clattn__check_mask(opt->mask, full, dims, ref, "", err, errlen);
        if (st) return st;
        p->mask = opt->mask;
    }
    if (opt->kv_lens) {
        const clattn_tensor *t = opt->kv_lens;
        clattn_status st = check_vector("kv_lens", t, ref, CLATTN_I32, "int32", "B", p->B, err, errlen);
        if (st) return st;
        if (t->host) {
            for (int64_t b = 0; b < p->B; b++) {
                double len = clattn__host_get(t, b, 0, 0, 0);
                if (len < 0 || len > (double)p->Lk)
                    FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
                          "kv_lens[%lld] = %.0f is outside 0..Lk (%lld)", (long long)b, len,
                          (long long)p->Lk);
            }
        }
        p->kv_lens = t;
    }
    if (opt->alibi) {
        const clattn_tensor *t = opt->alibi;
        clattn_status st = check_vector("alibi", t, ref, CLATTN_F32, "f32", "Hq", p->Hq, err, errlen);
        if (st) return st;
        p->alibi = t;
    }
    if (opt->lse && !ref) {
        clattn_tensor *t = opt->lse;
        clattn_status st = check_tensor("lse", t, false, err, errlen);
        if (st) return st;
        if (t->dtype != CLATTN_F32)
            FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "lse: dtype %s is not f32",
                  clattn_dtype_name(t->dtype));
        if (t->ne[0] != p->B || t->ne[1] != p->Hq || t->ne[2] != p->Lq || t->ne[3] != 1)
            FAILP(CLATTN_ERROR_INVALID_SHAPE, "lse: shape must be [B,Hq,Lq] = [%lld,%lld,%lld]",
                  (long long)p->B, (long long)p->Hq, (long long)p->Lq);
        st = check_no_self_overlap("lse", t, err, errlen);
        if (st) return st;
        p->lse = t;
    }
    p->q = q;
    p->k = k;
    p->v = v;
    p->o = o;
    return CLATTN_SUCCESS;
}

/* The descriptor checks above, for the backward pass's extra tensors (backward.c). */
clattn_status clattn__check_tensor(const char *name, const clattn_tensor *t, bool host_only,
                                   char *err, size_t errlen)
{
    return check_tensor(name, t, host_only, err, errlen);
}

clattn_status clattn__check_mask(const clattn_tensor *m, const int64_t full[4], const char *const dims[4],
                                 bool host_only, const char *note, char *err, size_t errlen)
{
    clattn_status st = check_tensor("mask", m, host_only, err, errlen);
    if (st) return st;
    if (m->dtype != CLATTN_BOOL && m->dtype != CLATTN_F32)
        FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "mask: dtype %s is not bool or f32", clattn_dtype_name(m->dtype));
    for (int i = 0; i < 4; i++)
        if (m->ne[i] != 1 && m->ne[i] != full[i])
            FAILP(CLATTN_ERROR_INVALID_SHAPE, "mask: extent ne[%d] = %lld must be 1 or %s = %lld to broadcast%s",
                  i, (long long)m->ne[i], dims[i], (long long)full[i], note);
    return CLATTN_SUCCESS;
}

clattn_status clattn__check_no_self_overlap(const char *name, const clattn_tensor *t, char *err,
                                            size_t errlen)
{
    return check_no_self_overlap(name, t, err, errlen);
}
