/* Dispatch: the table of paths, the choice among them, and the fallback chain.
 * Each path has a supports() check. A forced path (options.path or CLATTN_PATH) runs
 * alone and its failure is the call's. In auto mode the supported paths are tried in
 * order of preference; one that fails to build or launch is recorded for this device
 * and problem class (so it is not retried on every call) and the next one answers; one
 * that runs out of device memory is passed over for this call only. */
#include "core/faults.h"
#include "core/program.h"
#include "paths/path.h"
#include "tuning/tuning.h"

#include <stdlib.h>
#include <string.h>

/* Every path this build has, in auto mode's default order of preference. */
static const clattn__path_impl *const path_table[] = {
    &clattn__path_decode,
    &clattn__path_fused,
#if CLATTN_WITH_CLBLAST
    &clattn__path_clblast, /* after fused: moved ahead only where it measures faster */
#endif
    &clattn__path_unfused,
};
#define NPATHS (sizeof path_table / sizeof path_table[0])

static const clattn__path_impl *find_impl(clattn_path id)
{
    for (size_t i = 0; i < NPATHS; i++)
        if (path_table[i]->id == id) return path_table[i];
    return NULL;
}

int clattn_path_available(clattn_path path)
{
    return path == CLATTN_PATH_AUTO || find_impl(path) != NULL;
}

/* The class of problems a failure applies to: what selects a kernel build (decode or
 * prefill as the tuning layer classes it). */
static void failure_config(const clattn_context *ctx, const clattn__problem *p, char *buf, size_t cap)
{
    clattn__tclass cls;
    clattn__tclass_of(ctx, CLATTN__TP_FUSED, p, -1, &cls);
    snprintf(buf, cap, "D=%lld Dv=%lld dt=%d%d%d%d mask=%d causal=%d win=%d kvl=%d cap=%d alibi=%d lse=%d dec=%d",
             (long long)p->D, (long long)p->Dv, (int)p->q->dtype, (int)p->k->dtype,
             (int)p->v->dtype, (int)p->o->dtype, p->mask ? (int)p->mask->dtype + 1 : 0,
             (int)p->causal, p->win_left >= 0 || p->win_right >= 0, p->kv_lens != NULL,
             p->softcap > 0, p->alibi != NULL, p->lse != NULL, cls.decode);
}

static const clattn__failure *find_failure(const clattn_context *ctx, clattn_path path,
                                           const char *config)
{
    for (int i = 0; i < ctx->nfailures; i++)
        if (ctx->failures[i].path == path && strcmp(ctx->failures[i].config, config) == 0)
            return &ctx->failures[i];
    return NULL;
}

static void record_failure(clattn_context *ctx, clattn_path path, const char *config,
                           clattn_status st)
{
    int n = sizeof ctx->failures / sizeof ctx->failures[0];
    /* keep the newest: a full table drops its oldest entry */
    if (ctx->nfailures == n) {
        memmove(&ctx->failures[0], &ctx->failures[1], (size_t)(n - 1) * sizeof ctx->failures[0]);
        ctx->nfailures--;
    }
    clattn__failure *f = &ctx->failures[ctx->nfailures++];
    f->path = path;
    snprintf(f->config, sizeof f->config, "%s", config);
    f->status = st;
    clattn__copy_str(f->reason, sizeof f->reason, ctx->last_error);
}

size_t clattn_context_failure_count(const clattn_context *ctx)
{
    return ctx ? (size_t)ctx->nfailures : 0;
}

clattn_status clattn_context_failure_get(const clattn_context *ctx, size_t i, clattn_path *path,
                                         clattn_status *status, const char **reason)
{
    if (!ctx || i >= (size_t)ctx->nfailures) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (path) *path = ctx->failures[i].path;
    if (status) *status = ctx->failures[i].status;
    if (reason) *reason = ctx->failures[i].reason;
    return CLATTN_SUCCESS;
}

/* Auto mode's order: the table's, which lists paths from the most specialised to the
 * most general; a path that does not fit is filtered by its supports(). The CLBlast path
 * moves ahead of the fused one where the tuning row says it measures faster
 * (prefer_clblast, tuning.c); it stays in the chain after fused everywhere else. */
static size_t clattn__path_order(const clattn_context *ctx, const clattn__problem *p,
                                 const clattn__path_impl *const *table, size_t n,
                                 const clattn__path_impl **order)
{
    size_t fused = n, clblast = n;
    for (size_t i = 0; i < n; i++) {
        order[i] = table[i];
        if (table[i]->id == CLATTN_PATH_FUSED) fused = i;
        if (table[i]->id == CLATTN_PATH_CLBLAST) clblast = i;
    }
    clattn__trow tu = {0};
    if (fused < clblast && clblast < n)
        clattn__tuning_row_for(ctx, CLATTN__TP_DISPATCH, p, -1, &tu, NULL);
    if (fused < clblast && clblast < n && tu.prefer_clblast) {
        const clattn__path_impl *c = order[clblast];
        memmove(&order[fused + 1], &order[fused], (clblast - fused) * sizeof order[0]);
        order[fused] = c;
    }
    return n;
}

static clattn_status run_path(clattn_context *ctx, const clattn__path_impl *impl,
                              const clattn__dev_problem *dp, cl_event *event)
{
    clattn__running_path_set(ctx, impl->id);
    clattn_status st = impl->run(ctx, dp, event);
    clattn__running_path_set(ctx, CLATTN_PATH_AUTO);
    return st;
}

/* The requested path: options first, then CLATTN_PATH as read at context creation. */
static clattn_status requested_path(clattn_context *ctx, const clattn__problem *p, clattn_path *out)
{
    *out = p->path;
    if (*out != CLATTN_PATH_AUTO) return CLATTN_SUCCESS;
    const char *env = ctx->env.path;
    if (*env && clattn_path_from_name(env, out) != CLATTN_SUCCESS)
        return clattn__fail(ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                            "CLATTN_PATH=%s is not one of auto, fused, decode, clblast, unfused", env);
    return CLATTN_SUCCESS;
}

clattn_status clattn__dispatch(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event)
{
    const clattn__problem *p = dp->p;
    clattn_path want;
    CLATTN_FORWARD(requested_path(ctx, p, &want));
    const char *why = "";

    if (want != CLATTN_PATH_AUTO) {
        const clattn__path_impl *impl = find_impl(want);
        CLATTN_RETURN_IF(ctx, !impl, CLATTN_ERROR_PATH_UNAVAILABLE,
                         "path '%s' is not available in this build of clattn", clattn_path_name(want));
        CLATTN_RETURN_IF(ctx, !impl->supports(ctx, p, &why), CLATTN_ERROR_PATH_UNSUPPORTED,
                         "path '%s' cannot run this problem on %s: %s", clattn_path_name(want),
                         ctx->props.name, why);
        CLATTN_FORWARD(run_path(ctx, impl, dp, event));
        ctx->last_path = want;
        snprintf(ctx->last_reason, sizeof ctx->last_reason, "forced");
        return CLATTN_SUCCESS;
    }

    char config[192];
    failure_config(ctx, p, config, sizeof config);
    char skipped[512] = "";
    clattn_status last_st = CLATTN_ERROR_NO_USABLE_PATH;
    char last_err[512] = "no path supports this problem";
    const clattn__path_impl *order[NPATHS];
    size_t n = clattn__path_order(ctx, p, path_table, NPATHS, order);
    for (size_t i = 0; i < n; i++) {
        const clattn__path_impl *impl = order[i];
        const char *name = clattn_path_name(impl->id);
        if (!impl->supports(ctx, p, &why)) {
            clattn__log(ctx, "path %s skipped: %s", name, why);
            clattn__opts_add(skipped, sizeof skipped, "%s%s: %s", *skipped ? "; " : "", name, why);
            continue;
        }
        const clattn__failure *f = find_failure(ctx, impl->id, config);
        if (f) {
            clattn__log(ctx, "path %s skipped: it failed before on this device (%s)", name,
                        clattn_status_string(f->status));
            clattn__opts_add(skipped, sizeof skipped, "%s%s: failed before (%s)",
                             *skipped ? "; " : "", name, clattn_status_string(f->status));
            continue;
        }
        clattn_status st = run_path(ctx, impl, dp, event);
        if (st == CLATTN_SUCCESS) {
            ctx->last_path = impl->id;
            if (*skipped)
                snprintf(ctx->last_reason, sizeof ctx->last_reason, "after %.240s", skipped);
            else
                clattn__copy_str(ctx->last_reason, sizeof ctx->last_reason, "first supported path");
            clattn__log(ctx, "path %s ran (%s)", name, ctx->last_reason);
            return CLATTN_SUCCESS;
        }
        clattn__log(ctx, "path %s failed (%s), falling back", name, clattn_status_string(st));
        /* A device out of memory now may not be next call (other buffers freed): only
         * failures of the path itself (builds, launches) are remembered. */
        if (st != (clattn_status)CL_MEM_OBJECT_ALLOCATION_FAILURE && st != (clattn_status)CL_OUT_OF_HOST_MEMORY &&
            st != CLATTN_ERROR_OUT_OF_MEMORY)
            record_failure(ctx, impl->id, config, st);
        clattn__opts_add(skipped, sizeof skipped, "%s%s: %s", *skipped ? "; " : "", name,
                         clattn_status_string(st));
        last_st = st;
        clattn__copy_str(last_err, sizeof last_err, ctx->last_error);
    }
    return clattn__fail(ctx, CLATTN_ERROR_NO_USABLE_PATH,
                        "no path could compute this problem on %s (%s); last error: %s (%s)",
                        ctx->props.name, *skipped ? skipped : "none supports it",
                        clattn_status_string(last_st), last_err);
}
