/* Staging: presenting every tensor of a call to the kernels as (buffer, element offset,
 * element strides). cl_mem tensors are used in place, with no copies. Host tensors are
 * copied, whole span at once, to new buffers; outputs too, so the bytes between strided
 * elements survive the copy back (a padded view must not lose its padding). */
#include "core/program.h"
#include "core/kernel_args.h"

#include <stdlib.h>
#include <string.h>

/* ---- Enqueues other than kernels, each through the fault check ------------------- */

/* The outcome of an enqueue that moves `bytes` bytes: success, or the call's error saying
 * what failed ("filling 64 bytes on DEVICE failed: ..."). */
static clattn_status bytes_moved(clattn_context *ctx, cl_int err, const char *doing, size_t bytes,
                                 const char *where)
{
    if (err != CL_SUCCESS)
        return clattn__fail(ctx, (clattn_status)err, "%s %zu bytes %s %s failed: %s", doing, bytes, where,
                            ctx->props.name, clattn_status_string(err));
    return CLATTN_SUCCESS;
}

clattn_status clattn__enqueue_marker(clattn_context *ctx, cl_event *event)
{
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    if (err == CL_SUCCESS) err = clEnqueueMarkerWithWaitList(ctx->queue, 0, NULL, event);
    if (err != CL_SUCCESS)
        return clattn__fail(ctx, (clattn_status)err, "enqueueing a marker on %s failed: %s",
                            ctx->props.name, clattn_status_string(err));
    return CLATTN_SUCCESS;
}

clattn_status clattn__enqueue_wait(clattn_context *ctx, const cl_event *events, cl_uint n)
{
    if (n == 0) return CLATTN_SUCCESS;
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    if (err == CL_SUCCESS) err = clEnqueueBarrierWithWaitList(ctx->queue, n, events, NULL);
    if (err != CL_SUCCESS)
        return clattn__fail(ctx, (clattn_status)err,
                            "waiting for options.wait_events (%u) on %s failed: %s",
                            (unsigned)n, ctx->props.name, clattn_status_string(err));
    return CLATTN_SUCCESS;
}

clattn_status clattn__enqueue_fill(clattn_context *ctx, cl_mem mem, const void *pattern,
                                   size_t pattern_size, size_t offset, size_t bytes)
{
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    if (err == CL_SUCCESS)
        err = clEnqueueFillBuffer(ctx->queue, mem, pattern, pattern_size, offset, bytes, 0, NULL, NULL);
    return bytes_moved(ctx, err, "filling", bytes, "on");
}

clattn_status clattn__enqueue_copy(clattn_context *ctx, cl_mem src, size_t src_off, cl_mem dst,
                                   size_t dst_off, size_t bytes)
{
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    if (err == CL_SUCCESS)
        err = clEnqueueCopyBuffer(ctx->queue, src, dst, src_off, dst_off, bytes, 0, NULL, NULL);
    return bytes_moved(ctx, err, "copying", bytes, "on");
}

clattn_status clattn__enqueue_copy_rect(clattn_context *ctx, cl_mem src, size_t src_off,
                                        size_t src_pitch, cl_mem dst, size_t dst_off, size_t dst_pitch,
                                        size_t width, size_t rows)
{
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    const size_t so[3] = {src_off, 0, 0}, dof[3] = {dst_off, 0, 0}, region[3] = {width, rows, 1};
    if (err == CL_SUCCESS)
        err = clEnqueueCopyBufferRect(ctx->queue, src, dst, so, dof, region, src_pitch, 0, dst_pitch, 0,
                                      0, NULL, NULL);
    if (err != CL_SUCCESS)
        return clattn__fail(ctx, (clattn_status)err, "copying %zu rows of %zu bytes on %s failed: %s",
                            rows, width, ctx->props.name, clattn_status_string(err));
    return CLATTN_SUCCESS;
}

clattn_status clattn__read(clattn_context *ctx, cl_mem mem, size_t offset, size_t bytes, void *dst)
{
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_MAP);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, mem, CL_TRUE, offset, bytes, dst, 0, NULL, NULL);
    return bytes_moved(ctx, err, "reading", bytes, "back from");
}

/* ---- Device buffers --------------------------------------------------------------- */

clattn_status clattn__buffer_create_copy(clattn_context *ctx, size_t bytes, const void *host,
                                         cl_mem *mem)
{
    const size_t size = bytes ? bytes : 16;
    cl_mem_flags flags = CL_MEM_READ_WRITE | (host && bytes ? CL_MEM_COPY_HOST_PTR : 0);
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ALLOC);
    *mem = NULL;
    if (err == CL_SUCCESS)
        *mem = clCreateBuffer(ctx->cl_ctx, flags, size, host && bytes ? (void *)host : NULL, &err);
    if (err != CL_SUCCESS) {
        *mem = NULL;
        return clattn__fail(ctx, (clattn_status)err, "allocating %zu bytes on %s failed: %s",
                            bytes, ctx->props.name, clattn_status_string(err));
    }
    ctx->device_bytes += size;
    if (ctx->device_bytes > ctx->device_bytes_peak) ctx->device_bytes_peak = ctx->device_bytes;
    return CLATTN_SUCCESS;
}

clattn_status clattn__buffer_create(clattn_context *ctx, size_t bytes, cl_mem *mem)
{
    return clattn__buffer_create_copy(ctx, bytes, NULL, mem);
}

bool clattn__alloc_retryable(clattn_status st)
{
    return st == (clattn_status)CL_MEM_OBJECT_ALLOCATION_FAILURE ||
           st == (clattn_status)CL_OUT_OF_RESOURCES || st == (clattn_status)CL_INVALID_BUFFER_SIZE ||
           st == CLATTN_ERROR_OUT_OF_MEMORY;
}

void clattn__buffer_release(clattn_context *ctx, cl_mem mem)
{
    if (!mem) return;
    size_t size = 0;
    if (clGetMemObjectInfo(mem, CL_MEM_SIZE, sizeof size, &size, NULL) == CL_SUCCESS)
        ctx->device_bytes -= size <= ctx->device_bytes ? size : ctx->device_bytes;
    clReleaseMemObject(mem);
}

uint64_t clattn__alloc_cap(const clattn_context *ctx)
{
    return ctx->props.max_alloc_bytes ? ctx->props.max_alloc_bytes : UINT64_MAX;
}

uint64_t clattn__scratch_cap(const clattn_context *ctx)
{
    const uint64_t ws = (uint64_t)ctx->workspace_bytes, cap = clattn__alloc_cap(ctx);
    return ws < cap ? ws : cap;
}

uint64_t clattn_context_peak_device_bytes(const clattn_context *ctx)
{
    return ctx ? ctx->device_bytes_peak : 0;
}

void clattn_context_reset_peak_device_bytes(clattn_context *ctx)
{
    if (ctx) ctx->device_bytes_peak = ctx->device_bytes;
}

static clattn_status stage_one(clattn_context *ctx, const char *name, const clattn_tensor *t,
                               bool output, clattn__dev_tensor *d)
{
    memset(d, 0, sizeof *d);
    if (!t) return CLATTN_SUCCESS;
    const cl_long es = (cl_long)clattn_dtype_size(t->dtype);
    d->dtype = t->dtype;
    d->src = t;
    for (int i = 0; i < 4; i++) d->st[i] = t->ne[i] == 1 ? 0 : t->nb[i] / es;
    if (t->buffer) {
        d->mem = t->buffer;
        d->off = (cl_long)(t->offset / (size_t)es);
        size_t size = 0, span = 0;
        clGetMemObjectInfo(t->buffer, CL_MEM_SIZE, sizeof size, &size, NULL);
        clattn__tensor_span(t, &span);
        CLATTN_RETURN_IF(ctx, size && t->offset + span > size, CLATTN_ERROR_INVALID_ARGUMENT,
                         "%s: offset %zu + span %zu bytes runs past the end of its %zu-byte buffer",
                         name, t->offset, span, size);
        return CLATTN_SUCCESS;
    }
    clattn__tensor_span(t, &d->span);
    d->span_base = t->offset;
    d->off = 0;
    d->owned = true;
    d->download = output;
    return clattn__buffer_create_copy(ctx, d->span, (const char *)t->host + t->offset, &d->mem);
}

clattn_status clattn__stage_tensor(clattn_context *ctx, const char *name, const clattn_tensor *t,
                                   bool output, clattn__dev_tensor *d)
{
    return stage_one(ctx, name, t, output, d);
}

clattn_status clattn__stage(clattn_context *ctx, const clattn__problem *p, clattn__dev_problem *dp)
{
    memset(dp, 0, sizeof *dp);
    dp->p = p;
    struct {
        const char *name;
        const clattn_tensor *t;
        bool output;
        clattn__dev_tensor *d;
    } all[] = {{"q", p->q, false, &dp->q},          {"k", p->k, false, &dp->k},
               {"v", p->v, false, &dp->v},          {"o", p->o, true, &dp->o},
               {"mask", p->mask, false, &dp->mask}, {"kv_lens", p->kv_lens, false, &dp->kv_lens},
               {"alibi", p->alibi, false, &dp->alibi}, {"lse", p->lse, true, &dp->lse}};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        clattn_status st = stage_one(ctx, all[i].name, all[i].t, all[i].output, all[i].d);
        if (st != CLATTN_SUCCESS) {
            clattn__stage_finish(ctx, dp, false);
            return st;
        }
    }
    return CLATTN_SUCCESS;
}

/* Host outputs come back through host scratch: every read-back must succeed before the
 * first byte of any caller output changes, so a failed read leaves them all as they were
 * (a driver may have written part of a failed read's destination). */
clattn_status clattn__download(clattn_context *ctx, const clattn__dev_tensor *const *outs, int n,
                               const char *what)
{
    if (n > CLATTN__DOWNLOAD_MAX)
        return clattn__fail(ctx, CLATTN_ERROR_INTERNAL, "%d outputs to read back, at most %d", n,
                            CLATTN__DOWNLOAD_MAX);
    void *tmp[CLATTN__DOWNLOAD_MAX] = {NULL};
    clattn_status st = CLATTN_SUCCESS;
    for (int i = 0; i < n && st == CLATTN_SUCCESS; i++) {
        const clattn__dev_tensor *d = outs[i];
        if (!d->download || !d->mem || !d->span) continue;
        tmp[i] = malloc(d->span);
        if (!tmp[i])
            st = clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "reading %s back: out of host memory", what);
        else
            st = clattn__read(ctx, d->mem, 0, d->span, tmp[i]);
    }
    for (int i = 0; i < n; i++) {
        if (st == CLATTN_SUCCESS && tmp[i])
            memcpy((char *)outs[i]->src->host + outs[i]->span_base, tmp[i], outs[i]->span);
        free(tmp[i]);
    }
    return st;
}

clattn_status clattn__stage_finish(clattn_context *ctx, clattn__dev_problem *dp, bool ok)
{
    const clattn__dev_tensor *outs[2] = {&dp->o, &dp->lse};
    clattn_status st = ok ? clattn__download(ctx, outs, 2, "results") : CLATTN_SUCCESS;
    clattn__dev_tensor *all[] = {&dp->q, &dp->k, &dp->v, &dp->o,
                                 &dp->mask, &dp->kv_lens, &dp->alibi, &dp->lse};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        clattn__dev_tensor *d = all[i];
        if (d->owned) clattn__buffer_release(ctx, d->mem);
        d->mem = NULL;
        d->owned = false;
    }
    return st;
}

clattn_status clattn__stage_complete(clattn_context *ctx, clattn__dev_problem *dp, clattn_status st,
                                     cl_event ev, cl_event *event)
{
    /* work with nothing to enqueue (Lk = 0 chunks) leaves no event: give a marker */
    if (st == CLATTN_SUCCESS && event && !ev) st = clattn__enqueue_marker(ctx, &ev);
    clattn_status fin = clattn__stage_finish(ctx, dp, st == CLATTN_SUCCESS);
    if (st == CLATTN_SUCCESS) st = fin;
    if (st != CLATTN_SUCCESS || !event) {
        if (ev) clReleaseEvent(ev);
        return st;
    }
    *event = ev;
    return CLATTN_SUCCESS;
}

/* ---- Outputs written in more than one launch -------------------------------------- */
/* A path that writes O or LSE in several launches (chunks, or LSE before O) would leave
 * the caller's buffers half written if a later launch failed to enqueue. Such a path
 * works on scratch copies of the caller's cl_mem outputs instead (host outputs already
 * are staging copies) and commits them in one launch of cl/commit.cl: that launch is
 * either queued, and writes everything, or not, and writes nothing. The copies start as
 * the caller's bytes, so padding between strided elements survives the commit. */

static clattn_status shadow_one(clattn_context *ctx, clattn__dev_tensor *d, cl_mem *scratch,
                                size_t *base, size_t *span, bool written_whole)
{
    if (!d->mem || d->owned || !d->src) return CLATTN_SUCCESS; /* absent, or a staging copy */
    clattn__tensor_span(d->src, span);
    *base = d->src->offset;
    CLATTN_FORWARD(clattn__buffer_create(ctx, *span, scratch));
    /* a dense output that the path writes whole has no bytes of the caller's to keep */
    const bool dense = (uint64_t)clattn__tensor_numel(d->src) * clattn_dtype_size(d->src->dtype) == (uint64_t)*span;
    if (!(written_whole && dense))
        CLATTN_FORWARD(clattn__enqueue_copy(ctx, d->mem, *base, *scratch, 0, *span));
    d->mem = *scratch;
    d->off = 0; /* the copy starts at the tensor's first byte */
    /* from here on the tensor is clattn's scratch (released by clattn__shadow_release):
     * a path run on it that shadows its own outputs (the fused path when it splits its
     * heads, under varlen's shadow) leaves it alone, as it does a staging copy; d->src
     * still describes the caller's bytes, not this buffer's */
    d->owned = true;
    return CLATTN_SUCCESS;
}

clattn_status clattn__shadow_begin(clattn_context *ctx, const clattn__dev_problem *dp, bool needed,
                                   clattn__dev_problem *out, clattn__shadow *sh)
{
    return clattn__shadow_begin_whole(ctx, dp, needed, false, out, sh);
}

clattn_status clattn__shadow_begin_whole(clattn_context *ctx, const clattn__dev_problem *dp, bool needed,
                                         bool written_whole, clattn__dev_problem *out, clattn__shadow *sh)
{
    *out = *dp;
    memset(sh, 0, sizeof *sh);
    const bool caller_o = dp->o.mem && !dp->o.owned, caller_lse = dp->lse.mem && !dp->lse.owned;
    if (!needed || (!caller_o && !caller_lse)) return CLATTN_SUCCESS;
    /* the kernel first: a build failure must come before anything is enqueued */
    CLATTN_FORWARD(clattn__kernel_get(ctx, "commit.cl", "", "commit_spans", &sh->commit));
    sh->active = true;
    sh->o_dst = caller_o ? dp->o.mem : NULL;
    sh->lse_dst = caller_lse ? dp->lse.mem : NULL;
    clattn_status st = shadow_one(ctx, &out->o, &sh->o, &sh->o_base, &sh->o_span, written_whole);
    if (st == CLATTN_SUCCESS) st = shadow_one(ctx, &out->lse, &sh->lse, &sh->lse_base, &sh->lse_span, written_whole);
    if (st != CLATTN_SUCCESS) clattn__shadow_release(ctx, sh);
    return st;
}

clattn_status clattn__shadow_commit(clattn_context *ctx, clattn__shadow *sh, cl_event *event)
{
    if (!sh->active) return CLATTN_SUCCESS;
    /* in 2-byte units: every output dtype is 2 or 4 bytes, offsets whole elements */
    const cl_ulong o_off = sh->o_base / 2, o_n = sh->o_span / 2;
    const cl_ulong l_off = sh->lse_base / 2, l_n = sh->lse_span / 2;
    cl_uint a = 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, sh->o_dst));
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, o_off));
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, sh->o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, o_n));
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, sh->lse_dst));
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, l_off));
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, sh->lse));
    CLATTN_FORWARD(CLATTN_ARG(ctx, sh->commit, &a, l_n));
    /* COMMIT_RUN units per work-item (cl/commit.cl) */
    const cl_ulong n = o_n > l_n ? o_n : l_n;
    const size_t g[1] = {(size_t)((n + 63) / 64)};
    return clattn__enqueue(ctx, sh->commit, 1, g, NULL, event);
}

void clattn__shadow_release(clattn_context *ctx, clattn__shadow *sh)
{
    /* safe while the commit is queued: OpenCL keeps the buffers until it is done */
    clattn__buffer_release(ctx, sh->o);
    clattn__buffer_release(ctx, sh->lse);
    sh->o = sh->lse = NULL;
    sh->active = false;
}
