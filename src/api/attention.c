/* clattn_attention: validate the call, stage host tensors on the device, dispatch to a
 * path, and bring host outputs back. Empty problems (B, Hq or Lq = 0) do no work. */
#include "api/attention.h"
#include "core/context.h"
#include "paths/path.h"

#include <string.h>

clattn_status clattn__call_begin_as(clattn_context *ctx, const char *what, const clattn_tensor *q,
                                    const clattn_tensor *k, const clattn_tensor *v, clattn_tensor *o,
                                    const clattn_options *opt, cl_event *event, clattn_options *full,
                                    clattn__problem *p)
{
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !o, CLATTN_ERROR_INVALID_ARGUMENT, "o is NULL");
    char err[1024];
    clattn_status st = clattn__options_read(opt, full, err, sizeof err);
    if (st == CLATTN_SUCCESS) st = clattn__problem_init(p, q, k, v, o, full, err, sizeof err);
    if (st != CLATTN_SUCCESS)
        return what ? clattn__fail(ctx, st, "%s: %s", what, err) : clattn__fail(ctx, st, "%s", err);
    return CLATTN_SUCCESS;
}

clattn_status clattn__call_begin(clattn_context *ctx, const clattn_tensor *q,
                                 const clattn_tensor *k, const clattn_tensor *v, clattn_tensor *o,
                                 const clattn_options *opt, cl_event *event, clattn_options *full,
                                 clattn__problem *p)
{
    return clattn__call_begin_as(ctx, NULL, q, k, v, o, opt, event, full, p);
}

clattn_status clattn__call_run(clattn_context *ctx, const clattn__problem *p,
                               const clattn_options *full, clattn__call_work work, void *arg,
                               cl_event *event)
{
    CLATTN_FORWARD(clattn__enqueue_wait(ctx, full->wait_events, full->num_wait_events));

    if (clattn__tensor_numel(p->o) == 0) {
        if (event) CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
        return CLATTN_SUCCESS;
    }
    clattn__dev_problem dp;
    CLATTN_FORWARD(clattn__stage(ctx, p, &dp));
    cl_event ev = NULL;
    const clattn_status st = work(ctx, &dp, arg, &ev);
    return clattn__stage_complete(ctx, &dp, st, ev, event);
}

static clattn_status dispatch_work(clattn_context *ctx, const clattn__dev_problem *dp, void *arg,
                                   cl_event *ev)
{
    (void)arg;
    return clattn__dispatch(ctx, dp, ev);
}

clattn_status clattn_attention(clattn_context *ctx, const clattn_tensor *q, const clattn_tensor *k,
                               const clattn_tensor *v, clattn_tensor *o, const clattn_options *opt,
                               cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn__problem p;
    clattn_options full;
    CLATTN_FORWARD(clattn__call_begin(ctx, q, k, v, o, opt, event, &full, &p));
    return clattn__call_run(ctx, &p, &full, dispatch_work, NULL, event);
}
