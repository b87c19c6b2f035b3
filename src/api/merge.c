/* Merge of partial attention states: (O_i, LSE_i) pairs computed over disjoint key sets
 * (split-KV, a shared prefix and a suffix, chunks of a long context) into the exact
 * attention over their union, on the device with cl/merge.cl, and the float64 CPU
 * reference of the same. Outputs go through the staging of every other call, and the
 * device writes them in one launch (merge_finish), so a failure leaves them untouched. */
#include "core/program.h"
#include "core/kernel_args.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FAILP(st, ...) return clattn__failbuf(err, errlen, (st), __VA_ARGS__)

static bool is_float_storage(clattn_dtype d)
{
    return d == CLATTN_F32 || d == CLATTN_F16 || d == CLATTN_BF16;
}

/* Do a and b share a byte (host memory by address, cl_mem by offset in one buffer)? */
static bool tensors_overlap(const clattn_tensor *a, const clattn_tensor *b)
{
    if (a->buffer != b->buffer) return false;
    size_t sa = 0, sb = 0;
    clattn__tensor_span(a, &sa);
    clattn__tensor_span(b, &sb);
    if (sa == 0 || sb == 0) return false;
    const uintptr_t pa = (uintptr_t)a->host + a->offset, pb = (uintptr_t)b->host + b->offset;
    return pa < pb + sb && pb < pa + sa;
}

/* Every rule of the merge's arguments; o may be NULL (the reference checks parts only,
 * against parts[0]'s shape). host_only: the reference needs host pointers. */
static clattn_status merge_validate(size_t n_parts, const clattn_tensor *o_parts,
                                    const clattn_tensor *lse_parts, const clattn_tensor *o,
                                    const clattn_tensor *lse, bool host_only, char *err,
                                    size_t errlen)
{
    if (n_parts == 0) FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "n_parts is 0: nothing to merge");
    if (!o_parts || !lse_parts)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s is NULL", !o_parts ? "o_parts" : "lse_parts");
    const clattn_tensor *shape = o ? o : &o_parts[0];
    char name[64];
    if (o) {
        clattn_status st = clattn__check_tensor("o", o, false, err, errlen);
        if (st) return st;
        if (!is_float_storage(o->dtype))
            FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "o: dtype %s is not f32, f16 or bf16",
                  clattn_dtype_name(o->dtype));
        st = clattn__check_no_self_overlap("o", o, err, errlen);
        if (st) return st;
    }
    if (lse) {
        clattn_status st = clattn__check_tensor("lse", lse, false, err, errlen);
        if (st) return st;
        if (lse->dtype != CLATTN_F32)
            FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "lse: dtype %s is not f32",
                  clattn_dtype_name(lse->dtype));
        if (lse->ne[0] != shape->ne[0] || lse->ne[1] != shape->ne[1] ||
            lse->ne[2] != shape->ne[2] || lse->ne[3] != 1)
            FAILP(CLATTN_ERROR_INVALID_SHAPE,
                  "lse: shape [%lld,%lld,%lld,%lld] should be [B,H,Lq,1] = [%lld,%lld,%lld,1]",
                  (long long)lse->ne[0], (long long)lse->ne[1], (long long)lse->ne[2],
                  (long long)lse->ne[3], (long long)shape->ne[0], (long long)shape->ne[1],
                  (long long)shape->ne[2]);
        st = clattn__check_no_self_overlap("lse", lse, err, errlen);
        if (st) return st;
        /* both outputs are written by the same launch: one must not land on the other */
        if (o && tensors_overlap(o, lse))
            FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "o and lse overlap in memory");
    }
    for (size_t i = 0; i < n_parts; i++) {
        const clattn_tensor *op = &o_parts[i], *lp = &lse_parts[i];
        snprintf(name, sizeof name, "o_parts[%zu]", i);
        clattn_status st = clattn__check_tensor(name, op, host_only, err, errlen);
        if (st) return st;
        if (!is_float_storage(op->dtype))
            FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s: dtype %s is not f32, f16 or bf16", name,
                  clattn_dtype_name(op->dtype));
        for (int a = 0; a < 4; a++)
            if (op->ne[a] != shape->ne[a])
                FAILP(CLATTN_ERROR_INVALID_SHAPE,
                      "%s: shape [%lld,%lld,%lld,%lld] differs from %s's [%lld,%lld,%lld,%lld]",
                      name, (long long)op->ne[0], (long long)op->ne[1], (long long)op->ne[2],
                      (long long)op->ne[3], o ? "o" : "o_parts[0]", (long long)shape->ne[0],
                      (long long)shape->ne[1], (long long)shape->ne[2], (long long)shape->ne[3]);
        snprintf(name, sizeof name, "lse_parts[%zu]", i);
        st = clattn__check_tensor(name, lp, host_only, err, errlen);
        if (st) return st;
        if (lp->dtype != CLATTN_F32)
            FAILP(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s: dtype %s is not f32", name,
                  clattn_dtype_name(lp->dtype));
        if (lp->ne[0] != shape->ne[0] || lp->ne[1] != shape->ne[1] ||
            lp->ne[2] != shape->ne[2] || lp->ne[3] != 1)
            FAILP(CLATTN_ERROR_INVALID_SHAPE,
                  "%s: shape [%lld,%lld,%lld,%lld] should be [B,H,Lq,1] = [%lld,%lld,%lld,1]",
                  name, (long long)lp->ne[0], (long long)lp->ne[1], (long long)lp->ne[2],
                  (long long)lp->ne[3], (long long)shape->ne[0], (long long)shape->ne[1],
                  (long long)shape->ne[2]);
    }
    return CLATTN_SUCCESS;
}

/* Rows B*H*Lq and the float32 scratch (acc [rows, Dv], m and s [rows]) in bytes; false
 * when the counts do not fit. */
static bool merge_sizes(const clattn_tensor *o, int64_t *rows, uint64_t *acc_bytes,
                        uint64_t *row_bytes)
{
    int64_t r, n;
    if (!clattn__mul_ok(o->ne[0], o->ne[1], &r) || !clattn__mul_ok(r, o->ne[2], &r) ||
        !clattn__mul_ok(r, o->ne[3], &n) || !clattn__mul_ok(n, (int64_t)sizeof(float), &n))
        return false;
    *rows = r;
    *acc_bytes = (uint64_t)n;
    *row_bytes = (uint64_t)r * sizeof(float);
    return true;
}

clattn_status clattn_merge_states(clattn_context *ctx, size_t n_parts,
                                  const clattn_tensor *o_parts, const clattn_tensor *lse_parts,
                                  clattn_tensor *o, clattn_tensor *lse, cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !o, CLATTN_ERROR_INVALID_ARGUMENT, "o is NULL");
    char err[1024];
    clattn_status st = merge_validate(n_parts, o_parts, lse_parts, o, lse, false, err, sizeof err);
    if (st != CLATTN_SUCCESS) return clattn__fail(ctx, st, "merge: %s", err);

    int64_t rows;
    uint64_t acc_bytes, row_bytes;
    CLATTN_RETURN_IF(ctx, !merge_sizes(o, &rows, &acc_bytes, &row_bytes), CLATTN_ERROR_INVALID_SHAPE,
                     "merge: o's element count does not fit 64 bits");
    if (rows == 0) { /* nothing to write (Dv = 0 with rows still merges the LSE) */
        if (event) CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
        return CLATTN_SUCCESS;
    }
    CLATTN_RETURN_IF(ctx, acc_bytes > clattn__alloc_cap(ctx), CLATTN_ERROR_OUT_OF_MEMORY,
                     "merge: the float32 accumulator of %llu bytes exceeds the largest buffer "
                     "%s can allocate; merge fewer rows per call",
                     (unsigned long long)acc_bytes, ctx->props.name);

    /* Kernels first: a build failure must come before anything is enqueued or staged. */
    cl_kernel kfinish;
    char opts[96];
    snprintf(opts, sizeof opts, " -DV_DT=%d -DO_DT=%d", (int)o_parts[0].dtype, (int)o->dtype);
    CLATTN_FORWARD(clattn__kernel_get(ctx, "merge.cl", opts, "merge_finish", &kfinish));
    for (size_t i = 0; i < n_parts; i++) {
        cl_kernel kacc;
        snprintf(opts, sizeof opts, " -DV_DT=%d -DO_DT=%d", (int)o_parts[i].dtype, (int)o->dtype);
        CLATTN_FORWARD(clattn__kernel_get(ctx, "merge.cl", opts, "merge_accum", &kacc));
    }

    /* The outputs as the staging of clattn_attention presents them (host outputs come
     * back only when everything succeeded); the parts one at a time, as inputs. */
    clattn__dev_problem dp;
    memset(&dp, 0, sizeof dp);
    st = clattn__stage_tensor(ctx, "o", o, true, &dp.o);
    if (st == CLATTN_SUCCESS) st = clattn__stage_tensor(ctx, "lse", lse, true, &dp.lse);
    cl_mem acc = NULL, mrow = NULL, srow = NULL;
    if (st == CLATTN_SUCCESS) st = clattn__buffer_create(ctx, (size_t)acc_bytes, &acc);
    if (st == CLATTN_SUCCESS) st = clattn__buffer_create(ctx, (size_t)row_bytes, &mrow);
    if (st == CLATTN_SUCCESS) st = clattn__buffer_create(ctx, (size_t)row_bytes, &srow);

    const cl_long H = o->ne[1], Lq = o->ne[2], Dv = o->ne[3], nrows = rows;
    const size_t g[1] = {(size_t)rows};
    for (size_t i = 0; i < n_parts && st == CLATTN_SUCCESS; i++) {
        clattn__dev_tensor dop, dlp;
        memset(&dlp, 0, sizeof dlp);
        char on[32], ln[32];
        snprintf(on, sizeof on, "o_parts[%zu]", i);
        snprintf(ln, sizeof ln, "lse_parts[%zu]", i);
        st = clattn__stage_tensor(ctx, on, &o_parts[i], false, &dop);
        if (st == CLATTN_SUCCESS) st = clattn__stage_tensor(ctx, ln, &lse_parts[i], false, &dlp);
        cl_kernel kacc = NULL;
        snprintf(opts, sizeof opts, " -DV_DT=%d -DO_DT=%d", (int)o_parts[i].dtype, (int)o->dtype);
        if (st == CLATTN_SUCCESS) st = clattn__kernel_get(ctx, "merge.cl", opts, "merge_accum", &kacc);
        const cl_int first = i == 0;
        cl_uint a = 0;
#define TRY(x)                                                                             \
    if (st == CLATTN_SUCCESS) st = (x)
        TRY(clattn__set_tensor_args(ctx, kacc, &a, &dop));
        TRY(clattn__set_tensor_args(ctx, kacc, &a, &dlp));
        TRY(CLATTN_ARG(ctx, kacc, &a, acc));
        TRY(CLATTN_ARG(ctx, kacc, &a, mrow));
        TRY(CLATTN_ARG(ctx, kacc, &a, srow));
        TRY(CLATTN_ARG(ctx, kacc, &a, H));
        TRY(CLATTN_ARG(ctx, kacc, &a, Lq));
        TRY(CLATTN_ARG(ctx, kacc, &a, Dv));
        TRY(CLATTN_ARG(ctx, kacc, &a, nrows));
        TRY(CLATTN_ARG(ctx, kacc, &a, first));
        TRY(clattn__enqueue(ctx, kacc, 1, g, NULL, NULL));
        /* staging copies may go while the launch is queued: OpenCL keeps them alive */
        if (dop.owned) clattn__buffer_release(ctx, dop.mem);
        if (dlp.owned) clattn__buffer_release(ctx, dlp.mem);
    }

    cl_event ev = NULL;
    cl_uint a = 0;
    const cl_int has_lse = dp.lse.mem != NULL;
    TRY(CLATTN_ARG(ctx, kfinish, &a, acc));
    TRY(CLATTN_ARG(ctx, kfinish, &a, mrow));
    TRY(CLATTN_ARG(ctx, kfinish, &a, srow));
    TRY(clattn__set_tensor_args(ctx, kfinish, &a, &dp.o));
    TRY(CLATTN_ARG(ctx, kfinish, &a, dp.lse.mem));
    TRY(CLATTN_ARG(ctx, kfinish, &a, dp.lse.off));
    for (int i = 0; i < 3; i++) TRY(CLATTN_ARG(ctx, kfinish, &a, dp.lse.st[i]));
    TRY(CLATTN_ARG(ctx, kfinish, &a, has_lse));
    TRY(CLATTN_ARG(ctx, kfinish, &a, H));
    TRY(CLATTN_ARG(ctx, kfinish, &a, Lq));
    TRY(CLATTN_ARG(ctx, kfinish, &a, Dv));
    TRY(CLATTN_ARG(ctx, kfinish, &a, nrows));
    TRY(clattn__enqueue(ctx, kfinish, 1, g, NULL, &ev));
#undef TRY
    clattn__buffer_release(ctx, acc);
    clattn__buffer_release(ctx, mrow);
    clattn__buffer_release(ctx, srow);
    return clattn__stage_complete(ctx, &dp, st, ev, event);
}

clattn_status clattn_reference_merge_states(size_t n_parts, const clattn_tensor *o_parts,
                                            const clattn_tensor *lse_parts, double *o,
                                            double *lse)
{
    char err[256];
    clattn_status st = merge_validate(n_parts, o_parts, lse_parts, NULL, NULL, true, err, sizeof err);
    if (st != CLATTN_SUCCESS) return st;
    const clattn_tensor *s = &o_parts[0];
    int64_t rows, n;
    if (!clattn__mul_ok(s->ne[0], s->ne[1], &rows) || !clattn__mul_ok(rows, s->ne[2], &rows) ||
        !clattn__mul_ok(rows, s->ne[3], &n))
        return CLATTN_ERROR_INVALID_SHAPE;
    if (rows == 0) return CLATTN_SUCCESS;
    if (!o) return CLATTN_ERROR_INVALID_ARGUMENT;
    const int64_t Dv = s->ne[3];
    for (int64_t b = 0; b < s->ne[0]; b++)
        for (int64_t h = 0; h < s->ne[1]; h++)
            for (int64_t i = 0; i < s->ne[2]; i++) {
                const int64_t row = (b * s->ne[1] + h) * s->ne[2] + i;
                /* the largest LSE first, so no exp overflows and -inf parts weigh 0 */
                double mx = -INFINITY;
                for (size_t p = 0; p < n_parts; p++) {
                    const double l = clattn__host_get(&lse_parts[p], b, h, i, 0);
                    if (l > mx) mx = l;
                }
                double *out = o + row * Dv;
                for (int64_t d = 0; d < Dv; d++) out[d] = 0.0;
                if (mx == -INFINITY) {
                    if (lse) lse[row] = -INFINITY;
                    continue;
                }
                double sum = 0.0;
                for (size_t p = 0; p < n_parts; p++) {
                    const double l = clattn__host_get(&lse_parts[p], b, h, i, 0);
                    if (l == -INFINITY) continue;
                    const double w = exp(l - mx);
                    sum += w;
                    for (int64_t d = 0; d < Dv; d++)
                        out[d] += w * clattn__host_get(&o_parts[p], b, h, i, d);
                }
                for (int64_t d = 0; d < Dv; d++) out[d] /= sum;
                if (lse) lse[row] = mx + log(sum);
            }
    return CLATTN_SUCCESS;
}
