/* The fallback between the kernel forms of one path (form_fallback.h). */
#include "paths/form_fallback.h"

clattn_status clattn__run_with_form_fallback(clattn_context *ctx, clattn__tpath tpath,
                                             const clattn__path_impl *path,
                                             const clattn__dev_problem *dp, cl_event *event,
                                             clattn__form_run_fn run)
{
    for (;;) {
        int form = 0;
        clattn_status st = run(ctx, dp, event, &form);
        if (st != CLATTN_ERROR_BUILD_FAILED || !clattn__tuning_form_failed(ctx, tpath, dp->p, form))
            return st;
        const char *why = "";
        if (!path->supports(ctx, dp->p, &why)) return st;
    }
}
