/* Validation of a backward call (clattn_attention_backward and its float64 reference):
 * the forward problem through clattn__problem_init, then the backward's own tensors, each
 * refused with a message naming it, before anything is staged or written. */
#include "backward/backward.h"

#include <string.h>

#define FAILP(st, ...) return clattn__failbuf(err, errlen, (st), __VA_ARGS__)

static bool is_float_storage(clattn_dtype d)
{
    return d == CLATTN_F32 || d == CLATTN_F16 || d == CLATTN_BF16;
}

/* A descriptor with float storage and the given extents. */
static clattn_status check_shaped(const char *name, const clattn_tensor *t, const int64_t ne[4],
                                  const char *shape_name, bool host_only, char *err, size_t errlen)
{
    clattn_status st = clattn__check_tensor(name, t, host_only, err, errlen);
    if (st) return st;
    if (!is_float_storage(t->dtype))
        FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s: dtype %s is not f32, f16 or bf16", name,
              clattn_dtype_name(t->dtype));
    if (t->ne[0] != ne[0] || t->ne[1] != ne[1] || t->ne[2] != ne[2] || t->ne[3] != ne[3])
        FAILP(CLATTN_ERROR_INVALID_SHAPE,
              "%s: shape [%lld,%lld,%lld,%lld] should be %s = [%lld,%lld,%lld,%lld]", name,
              (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
              shape_name, (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3]);
    return CLATTN_SUCCESS;
}

/* Do the bytes two descriptors touch overlap (same host memory or same cl_mem)? Span
 * intervals are compared, so interleaved views of one buffer count as overlapping: a
 * conservative rule, but it never lets a gradient clobber an input mid-call. */
static bool overlaps(const clattn_tensor *a, const clattn_tensor *b)
{
    if (!a || !b) return false;
    size_t sa = 0, sb = 0;
    clattn__tensor_span(a, &sa);
    clattn__tensor_span(b, &sb);
    if (!sa || !sb) return false;
    uintptr_t a0, b0;
    if (a->host && b->host) {
        a0 = (uintptr_t)a->host + a->offset;
        b0 = (uintptr_t)b->host + b->offset;
    } else if (a->buffer && a->buffer == b->buffer) {
        a0 = a->offset;
        b0 = b->offset;
    } else {
        return false;
    }
    return a0 < b0 + sb && b0 < a0 + sa;
}

clattn_status clattn__bwd_problem_init(clattn__bwd_problem *bp, const clattn_tensor *q,
                                       const clattn_tensor *k, const clattn_tensor *v,
                                       const clattn_tensor *o, const clattn_tensor *d_o,
                                       const clattn_tensor *lse, clattn_tensor *dq,
                                       clattn_tensor *dk, clattn_tensor *dv,
                                       clattn_tensor *d_mask, bool want_dmask,
                                       const clattn_options *opt, bool ref, char *err,
                                       size_t errlen)
{
    memset(bp, 0, sizeof *bp);
    clattn_options fwd;
    if (opt) fwd = *opt;
    else clattn_options_init(&fwd);
    /* the forward call's LSE output and path choice have no meaning here */
    fwd.lse = NULL;
    fwd.path = CLATTN_PATH_AUTO;
    if (!ref && !o) FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "o (the forward output) is NULL");
    clattn_status st =
        clattn__problem_init(&bp->p, q, k, v, ref ? NULL : (clattn_tensor *)o, &fwd, err, errlen);
    if (st) return st;
    const clattn__problem *p = &bp->p;
    const int64_t o_ne[4] = {p->B, p->Hq, p->Lq, p->Dv};
    const int64_t q_ne[4] = {p->B, p->Hq, p->Lq, p->D};
    const int64_t k_ne[4] = {p->B, p->Hkv, p->Lk, p->D};
    const int64_t v_ne[4] = {p->B, p->Hkv, p->Lk, p->Dv};

    if (!d_o) FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "d_o (the gradient of O) is NULL");
    st = check_shaped("d_o", d_o, o_ne, "O's shape [B,Hq,Lq,Dv]", ref, err, errlen);
    if (st) return st;
    bp->d_o = d_o;

    if (want_dmask || d_mask) {
        if (!p->mask || p->mask->dtype != CLATTN_F32)
            FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
                  "d_mask: a mask gradient needs a float (f32) additive mask in the options");
    }
    if (ref) return CLATTN_SUCCESS;

    if (!lse)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
              "lse is NULL: the backward pass needs the forward call's log-sum-exp "
              "(clattn_options.lse)");
    st = clattn__check_tensor("lse", lse, false, err, errlen);
    if (st) return st;
    if (lse->dtype != CLATTN_F32)
        FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "lse: dtype %s is not f32",
              clattn_dtype_name(lse->dtype));
    if (lse->ne[0] != p->B || lse->ne[1] != p->Hq || lse->ne[2] != p->Lq || lse->ne[3] != 1)
        FAILP(CLATTN_ERROR_INVALID_SHAPE,
              "lse: shape [%lld,%lld,%lld,%lld] should be [B,Hq,Lq,1] = [%lld,%lld,%lld,1]",
              (long long)lse->ne[0], (long long)lse->ne[1], (long long)lse->ne[2],
              (long long)lse->ne[3], (long long)p->B, (long long)p->Hq, (long long)p->Lq);
    bp->lse = lse;

    clattn_tensor *outs[4] = {dq, dk, dv, d_mask};
    const char *names[4] = {"dq", "dk", "dv", "d_mask"};
    const int64_t *shapes[3] = {q_ne, k_ne, v_ne};
    const char *shape_names[3] = {"q's shape [B,Hq,Lq,D]", "k's shape [B,Hkv,Lk,D]",
                                  "v's shape [B,Hkv,Lk,Dv]"};
    for (int i = 0; i < 3; i++) {
        if (!outs[i]) FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s is NULL", names[i]);
        st = check_shaped(names[i], outs[i], shapes[i], shape_names[i], false, err, errlen);
        if (st) return st;
    }
    if (d_mask) {
        st = clattn__check_tensor("d_mask", d_mask, false, err, errlen);
        if (st) return st;
        if (d_mask->dtype != CLATTN_F32)
            FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "d_mask: dtype %s is not f32",
                  clattn_dtype_name(d_mask->dtype));
        for (int a = 0; a < 4; a++)
            if (d_mask->ne[a] != p->mask->ne[a])
                FAILP(CLATTN_ERROR_INVALID_SHAPE,
                      "d_mask: extent ne[%d] = %lld differs from the mask's %lld", a,
                      (long long)d_mask->ne[a], (long long)p->mask->ne[a]);
    }
    const clattn_tensor *ins[9] = {q, k, v, o, d_o, lse, p->mask, p->kv_lens, p->alibi};
    const char *in_names[9] = {"q", "k", "v", "o", "d_o", "lse", "mask", "kv_lens", "alibi"};
    for (int i = 0; i < 4; i++) {
        if (!outs[i]) continue;
        st = clattn__check_no_self_overlap(names[i], outs[i], err, errlen);
        if (st) return st;
        for (int j = 0; j < 9; j++)
            if (overlaps(outs[i], ins[j]))
                FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s overlaps the input %s", names[i],
                      in_names[j]);
        for (int j = 0; j < i; j++)
            if (overlaps(outs[i], outs[j]))
                FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s and %s overlap", names[j], names[i]);
    }
    bp->dq = dq;
    bp->dk = dk;
    bp->dv = dv;
    bp->d_mask = d_mask;
    return CLATTN_SUCCESS;
}
