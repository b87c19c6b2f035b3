/* What every context sets up from its device and the environment read at its creation
 * (device properties, the log switch, the workspace bound, the armed faults), and its
 * release. The public calls that create and free contexts are api/context.c's. */
#include "core/context.h"
#include "core/device.h"
#include "core/program.h"
#include "core/staging.h"

#include <stdlib.h>
#include <string.h>

#define DEFAULT_WORKSPACE ((int64_t)256 << 20)

void clattn__context_init(clattn_context *ctx)
{
    clattn__device_props_of(ctx->device, &ctx->props);
    const char *log = ctx->env.log;
    ctx->log = *log && strcmp(log, "0") != 0;
    if (ctx->env.too_long)
        clattn__log(ctx, "ignoring an environment variable too long for clattn's buffers");
    ctx->workspace_bytes = DEFAULT_WORKSPACE;
    const char *ws = ctx->env.workspace_bytes;
    if (*ws) {
        char *end;
        long long v = strtoll(ws, &end, 10);
        if (*end == '\0' && v >= CLATTN__MIN_WORKSPACE) ctx->workspace_bytes = v;
        else clattn__log(ctx, "ignoring CLATTN_WORKSPACE_BYTES=%s (need an integer >= %lld)", ws,
                         (long long)CLATTN__MIN_WORKSPACE);
    }
    if ((uint64_t)ctx->workspace_bytes > clattn__alloc_cap(ctx))
        ctx->workspace_bytes = (int64_t)clattn__alloc_cap(ctx);
    ctx->last_path = CLATTN_PATH_AUTO;
    clattn__faults_init(ctx);
    clattn__log(ctx, "context on %s (%s, driver %s)", ctx->props.name, ctx->props.platform_name,
                ctx->props.driver_version);
}

void clattn__context_release(clattn_context *ctx)
{
    clattn__programs_free(ctx);
    if (ctx->queue) clReleaseCommandQueue(ctx->queue);
    if (ctx->cl_ctx) clReleaseContext(ctx->cl_ctx);
    free(ctx);
}
