/* Staging: presenting every tensor of a call to the kernels as (buffer, element offset,
 * element strides). cl_mem tensors are used in place, with no copies. Host tensors are
 * copied, whole span at once, to new buffers; outputs too, so the bytes between strided
 * elements survive the copy back (a padded view must not lose its padding). */
#include "context.h"

#include <string.h>

clattn_status clattn__buffer_create_copy(clattn_context *ctx, size_t bytes, const void *host,
                                         cl_mem *mem)
{
    cl_int err;
    const size_t size = bytes ? bytes : 16;
    cl_mem_flags flags = CL_MEM_READ_WRITE | (host && bytes ? CL_MEM_COPY_HOST_PTR : 0);
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

clattn_status clattn__stage_finish(clattn_context *ctx, clattn__dev_problem *dp, bool ok)
{
    clattn_status st = CLATTN_SUCCESS;
    clattn__dev_tensor *all[] = {&dp->q, &dp->k, &dp->v, &dp->o,
                                 &dp->mask, &dp->kv_lens, &dp->alibi, &dp->lse};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        clattn__dev_tensor *d = all[i];
        if (ok && st == CLATTN_SUCCESS && d->download && d->mem && d->span) {
            cl_int err = clEnqueueReadBuffer(ctx->queue, d->mem, CL_TRUE, 0, d->span,
                                             (char *)d->src->host + d->span_base, 0, NULL, NULL);
            if (err != CL_SUCCESS)
                st = clattn__fail(ctx, (clattn_status)err, "reading results back failed: %s",
                                  clattn_status_string(err));
        }
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
    if (st == CLATTN_SUCCESS && event && !ev)
        st = (clattn_status)clEnqueueMarkerWithWaitList(ctx->queue, 0, NULL, &ev);
    clattn_status fin = clattn__stage_finish(ctx, dp, st == CLATTN_SUCCESS);
    if (st == CLATTN_SUCCESS) st = fin;
    if (st != CLATTN_SUCCESS || !event) {
        if (ev) clReleaseEvent(ev);
        return st;
    }
    *event = ev;
    return CLATTN_SUCCESS;
}
