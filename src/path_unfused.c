/* The unfused path: four kernels per chunk of query rows (QKᵀ, scale + mask, softmax,
 * P·V) through a float32 score buffer. The slowest path but the simplest, supporting
 * every problem on every device; it is the last link of the fallback chain. Chunks of
 * rows keep the score buffer within the context's workspace bound whatever Lq and Lk are. */
#include "context.h"

#include <string.h>

static bool unfused_supports(const clattn_context *ctx, const clattn__problem *p, const char **why)
{
    /* one row of scores must fit the workspace */
    if ((uint64_t)p->Lk * sizeof(float) > (uint64_t)ctx->workspace_bytes) {
        *why = "one row of Lk scores exceeds the workspace bound";
        return false;
    }
    return true;
}

/* Largest power of two <= n and <= 64: the softmax work-group. */
static size_t softmax_wg(const clattn_context *ctx)
{
    size_t wg = 64;
    while (wg > 1 && wg > ctx->props.max_work_group_size) wg >>= 1;
    return wg;
}

static clattn_status unfused_run(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event)
{
    const clattn__problem *p = dp->p;
    const cl_long rows = p->B * p->Hq * p->Lq;
    const cl_long ldS = p->Lk > 0 ? p->Lk : 1;
    cl_long chunk = ctx->workspace_bytes / (ldS * (cl_long)sizeof(float));
    if (chunk > rows) chunk = rows;
    CLATTN_RETURN_IF(ctx, chunk < 1, CLATTN_ERROR_OUT_OF_MEMORY,
                     "unfused: a row of %lld scores does not fit the %lld-byte workspace",
                     (long long)p->Lk, (long long)ctx->workspace_bytes);

    const size_t wg = softmax_wg(ctx);
    char opts[512] = "";
    bool ok = clattn__mask_options(dp, opts, sizeof opts) &&
              clattn__opts_add(opts, sizeof opts, " -DD=%lld -DDV=%lld -DWG=%zu -DHAS_LSE=%d",
                               (long long)p->D, (long long)p->Dv, wg, p->lse ? 1 : 0);
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "unfused: build options too long");

    cl_kernel kqk, kmask, ksoft, kpv;
    CLATTN_FORWARD(clattn__kernel_get(ctx, "unfused_qk.cl", opts, "unfused_qk", &kqk));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "unfused_scale_mask.cl", opts, "unfused_scale_mask", &kmask));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "unfused_softmax.cl", opts, "unfused_softmax", &ksoft));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "unfused_pv.cl", opts, "unfused_pv", &kpv));

    cl_mem S;
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)(chunk * ldS) * sizeof(float), &S));
    clattn_status st = CLATTN_SUCCESS;
    const cl_long Hq = p->Hq, Lq = p->Lq, Lk = p->Lk, group = p->group;
    for (cl_long row0 = 0; row0 < rows && st == CLATTN_SUCCESS; row0 += chunk) {
        const cl_long n = rows - row0 < chunk ? rows - row0 : chunk;
        const bool last = row0 + n >= rows;
        cl_uint a;
#define TRY(x)                                                                             \
    if (st == CLATTN_SUCCESS) st = (x)
        a = 0;
        TRY(clattn__set_tensor_args(ctx, kqk, &a, &dp->q));
        TRY(clattn__set_tensor_args(ctx, kqk, &a, &dp->k));
        TRY(CLATTN_ARG(ctx, kqk, &a, S));
        TRY(CLATTN_ARG(ctx, kqk, &a, ldS));
        TRY(CLATTN_ARG(ctx, kqk, &a, row0));
        TRY(CLATTN_ARG(ctx, kqk, &a, n));
        TRY(CLATTN_ARG(ctx, kqk, &a, Hq));
        TRY(CLATTN_ARG(ctx, kqk, &a, Lq));
        TRY(CLATTN_ARG(ctx, kqk, &a, Lk));
        TRY(CLATTN_ARG(ctx, kqk, &a, group));
        size_t g2[2] = {(size_t)Lk, (size_t)n};
        TRY(clattn__enqueue(ctx, kqk, 2, g2, NULL, NULL));

        a = 0;
        TRY(CLATTN_ARG(ctx, kmask, &a, S));
        TRY(CLATTN_ARG(ctx, kmask, &a, ldS));
        TRY(CLATTN_ARG(ctx, kmask, &a, row0));
        TRY(CLATTN_ARG(ctx, kmask, &a, n));
        TRY(CLATTN_ARG(ctx, kmask, &a, Hq));
        TRY(clattn__set_mask_args(ctx, kmask, &a, dp));
        TRY(clattn__enqueue(ctx, kmask, 2, g2, NULL, NULL));

        a = 0;
        TRY(CLATTN_ARG(ctx, ksoft, &a, S));
        TRY(CLATTN_ARG(ctx, ksoft, &a, ldS));
        TRY(CLATTN_ARG(ctx, ksoft, &a, row0));
        TRY(CLATTN_ARG(ctx, ksoft, &a, n));
        TRY(CLATTN_ARG(ctx, ksoft, &a, Hq));
        TRY(CLATTN_ARG(ctx, ksoft, &a, Lq));
        TRY(CLATTN_ARG(ctx, ksoft, &a, Lk));
        TRY(CLATTN_ARG(ctx, ksoft, &a, dp->lse.mem));
        TRY(CLATTN_ARG(ctx, ksoft, &a, dp->lse.off));
        for (int i = 0; i < 3; i++) TRY(CLATTN_ARG(ctx, ksoft, &a, dp->lse.st[i]));
        size_t gs[2] = {wg, (size_t)n}, ls[2] = {wg, 1};
        TRY(clattn__enqueue(ctx, ksoft, 2, gs, ls, NULL));

        a = 0;
        TRY(CLATTN_ARG(ctx, kpv, &a, S));
        TRY(CLATTN_ARG(ctx, kpv, &a, ldS));
        TRY(clattn__set_tensor_args(ctx, kpv, &a, &dp->v));
        TRY(clattn__set_tensor_args(ctx, kpv, &a, &dp->o));
        TRY(CLATTN_ARG(ctx, kpv, &a, row0));
        TRY(CLATTN_ARG(ctx, kpv, &a, n));
        TRY(CLATTN_ARG(ctx, kpv, &a, Hq));
        TRY(CLATTN_ARG(ctx, kpv, &a, Lq));
        TRY(CLATTN_ARG(ctx, kpv, &a, Lk));
        TRY(CLATTN_ARG(ctx, kpv, &a, group));
        size_t gp[2] = {(size_t)p->Dv, (size_t)n};
        TRY(clattn__enqueue(ctx, kpv, 2, gp, NULL, last ? event : NULL));
#undef TRY
    }
    /* Releasing S while kernels are queued is safe: OpenCL keeps it until they finish. */
    clattn__buffer_release(ctx, S);
    return st;
}

const clattn__path_impl clattn__path_unfused = {CLATTN_PATH_UNFUSED, unfused_supports, unfused_run};
