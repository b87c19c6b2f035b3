/* Contexts, the public calls: on a device clattn opens itself, or on the caller's own
 * cl_context and queue; their parameters (workspace bound, logging) and accessors. What
 * every context sets up from its device and environment is core/context.c's; the
 * tuning state, a layer above core, is set up here. */
#include "core/context.h"
#include "core/device.h"
#include "core/staging.h"
#include "tuning/tuning.h"

#include <stdlib.h>

/* The core settings, then the tuning state: after the log switch, so refused tuning
 * records are reported. */
static clattn_status context_init(clattn_context *ctx)
{
    clattn__context_init(ctx);
    return clattn__tuning_init(ctx);
}

clattn_status clattn_context_create(const char *spec, clattn_context **out)
{
    if (!out) return CLATTN_ERROR_INVALID_ARGUMENT;
    *out = NULL;
    size_t index;
    char err[512];
    clattn_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return CLATTN_ERROR_OUT_OF_MEMORY;
    clattn__env_read(&ctx->env); /* the only read of the environment for this context */
    /* Without a context there is nowhere to keep the message: callers that want it
     * resolve the spec with clattn_device_find first (the CLI does). */
    clattn_status st = clattn__device_find(spec, ctx->env.device, &index, err, sizeof err);
    const clattn__device_entry *e = st == CLATTN_SUCCESS ? clattn__device_entry_get(index) : NULL;
    if (st == CLATTN_SUCCESS && !e) st = CLATTN_ERROR_NO_DEVICE;
    if (st != CLATTN_SUCCESS) {
        free(ctx);
        return st;
    }
    cl_int clerr;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)e->platform, 0};
    ctx->device = e->device;
    ctx->cl_ctx = clCreateContext(props, 1, &e->device, NULL, NULL, &clerr);
    if (clerr == CL_SUCCESS)
        ctx->queue = clCreateCommandQueue(ctx->cl_ctx, e->device, CL_QUEUE_PROFILING_ENABLE, &clerr);
    if (clerr != CL_SUCCESS) {
        clattn_context_free(ctx);
        return (clattn_status)clerr;
    }
    st = context_init(ctx);
    if (st != CLATTN_SUCCESS) {
        clattn_context_free(ctx);
        return st;
    }
    *out = ctx;
    return CLATTN_SUCCESS;
}

clattn_status clattn_context_create_from_cl(cl_context cl_ctx, cl_device_id device,
                                            cl_command_queue queue, clattn_context **out)
{
    if (!out) return CLATTN_ERROR_INVALID_ARGUMENT;
    *out = NULL;
    if (!cl_ctx || !device || !queue) return CLATTN_ERROR_INVALID_ARGUMENT;
    cl_context qctx = NULL;
    cl_device_id qdev = NULL;
    cl_command_queue_properties qprops = 0;
    cl_int err = clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof qctx, &qctx, NULL);
    if (err == CL_SUCCESS)
        err = clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof qdev, &qdev, NULL);
    if (err == CL_SUCCESS)
        err = clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof qprops, &qprops, NULL);
    if (err != CL_SUCCESS) return (clattn_status)err;
    /* The queue must belong to the context and device, and run commands in order: clattn
     * chains its kernels without events. */
    if (qctx != cl_ctx || qdev != device || (qprops & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE))
        return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return CLATTN_ERROR_OUT_OF_MEMORY;
    clattn__env_read(&ctx->env); /* the only read of the environment for this context */
    clRetainContext(cl_ctx);
    clRetainCommandQueue(queue);
    ctx->cl_ctx = cl_ctx;
    ctx->device = device;
    ctx->queue = queue;
    clattn_status st = context_init(ctx);
    if (st != CLATTN_SUCCESS) {
        clattn_context_free(ctx);
        return st;
    }
    *out = ctx;
    return CLATTN_SUCCESS;
}

void clattn_context_free(clattn_context *ctx)
{
    if (!ctx) return;
    clattn__tuning_free(ctx);
    clattn__context_release(ctx);
}

cl_context clattn_context_cl_context(const clattn_context *ctx) { return ctx ? ctx->cl_ctx : NULL; }
cl_device_id clattn_context_cl_device(const clattn_context *ctx) { return ctx ? ctx->device : NULL; }
cl_command_queue clattn_context_cl_queue(const clattn_context *ctx)
{
    return ctx ? ctx->queue : NULL;
}

clattn_status clattn_context_device_props(const clattn_context *ctx, clattn_device_props *props)
{
    if (!ctx || !props) return CLATTN_ERROR_INVALID_ARGUMENT;
    *props = ctx->props;
    return CLATTN_SUCCESS;
}

clattn_status clattn_param_bounds(const clattn_context *ctx, clattn_param p, clattn_bounds *b)
{
    if (!ctx || !b) return CLATTN_ERROR_INVALID_ARGUMENT;
    switch (p) {
    case CLATTN_PARAM_WORKSPACE_BYTES:
        b->lower = CLATTN__MIN_WORKSPACE;
        b->upper = clattn__alloc_cap(ctx) < (uint64_t)INT64_MAX ? (int64_t)clattn__alloc_cap(ctx) : INT64_MAX;
        return CLATTN_SUCCESS;
    case CLATTN_PARAM_LOG:
        b->lower = 0;
        b->upper = 1;
        return CLATTN_SUCCESS;
    }
    return clattn__fail((clattn_context *)ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                        "unknown parameter %d", (int)p);
}

clattn_status clattn_context_set_param(clattn_context *ctx, clattn_param p, int64_t value)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_bounds b;
    CLATTN_FORWARD(clattn_param_bounds(ctx, p, &b));
    CLATTN_RETURN_IF(ctx, value < b.lower || value > b.upper, CLATTN_ERROR_INVALID_ARGUMENT,
                     "parameter %d = %lld is outside %lld..%lld", (int)p, (long long)value,
                     (long long)b.lower, (long long)b.upper);
    switch (p) {
    case CLATTN_PARAM_WORKSPACE_BYTES: ctx->workspace_bytes = value; break;
    case CLATTN_PARAM_LOG: ctx->log = value != 0; break;
    }
    return CLATTN_SUCCESS;
}

clattn_status clattn_context_get_param(const clattn_context *ctx, clattn_param p, int64_t *value)
{
    if (!ctx || !value) return CLATTN_ERROR_INVALID_ARGUMENT;
    switch (p) {
    case CLATTN_PARAM_WORKSPACE_BYTES: *value = ctx->workspace_bytes; return CLATTN_SUCCESS;
    case CLATTN_PARAM_LOG: *value = ctx->log; return CLATTN_SUCCESS;
    }
    return clattn__fail((clattn_context *)ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                        "unknown parameter %d", (int)p);
}

clattn_path clattn_context_last_path(const clattn_context *ctx)
{
    return ctx ? ctx->last_path : CLATTN_PATH_AUTO;
}

const char *clattn_context_last_path_reason(const clattn_context *ctx)
{
    return ctx ? ctx->last_reason : "";
}
