/* clattn_attention: validate the call, stage host tensors on the device, dispatch to a
 * path, and bring host outputs back. Empty problems (B, Hq or Lq = 0) do no work. */
#include "context.h"

#include <string.h>

clattn_status clattn_attention(clattn_context *ctx, const clattn_tensor *q, const clattn_tensor *k,
                               const clattn_tensor *v, clattn_tensor *o, const clattn_options *opt,
                               cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !o, CLATTN_ERROR_INVALID_ARGUMENT, "o is NULL");
    clattn__problem p;
    char err[1024];
    clattn_options full; /* the caller's struct may be an older, smaller one */
    clattn_status st = clattn__options_read(opt, &full, err, sizeof err);
    if (st == CLATTN_SUCCESS) st = clattn__problem_init(&p, q, k, v, o, &full, err, sizeof err);
    if (st != CLATTN_SUCCESS) return clattn__fail(ctx, st, "%s", err);
    CLATTN_FORWARD(clattn__enqueue_wait(ctx, full.wait_events, full.num_wait_events));

    if (clattn__tensor_numel(o) == 0) {
        if (event) CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
        return CLATTN_SUCCESS;
    }
    clattn__dev_problem dp;
    CLATTN_FORWARD(clattn__stage(ctx, &p, &dp));
    cl_event ev = NULL;
    st = clattn__dispatch(ctx, &dp, &ev);
    return clattn__stage_complete(ctx, &dp, st, ev, event);
}
