/* The unfused path: four kernels per chunk of query rows (QKᵀ, scale + mask, softmax,
 * P·V) through a float32 score buffer. The slowest path but the simplest, supporting
 * every problem on every device; it is the last link of the fallback chain. Chunks of
 * rows keep the score buffer within the context's workspace bound whatever Lq and Lk are. */
#include "core/program.h"
#include "core/kernel_args.h"
#include "paths/path.h"
#include "tuning/tuning.h"

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

clattn_status clattn__softmax_kernels_get(clattn_context *ctx, const clattn__dev_problem *dp,
                                          clattn__softmax_kernels *k)
{
    /* the softmax work-group: the tuned size (tuning.c), halved until the device takes it */
    clattn__trow tu;
    clattn__tuning_row_for(ctx, CLATTN__TP_UNFUSED, dp->p, -1, &tu, NULL);
    k->wg = tu.softmax_wg > 0 ? (size_t)tu.softmax_wg : 1;
    while (k->wg > 1 && k->wg > ctx->props.max_work_group_size) k->wg >>= 1;
    /* each kernel built with only the options it reads, so more problems share builds */
    char omask[256] = "", osoft[64] = "";
    bool ok = clattn__feature_options(dp, omask, sizeof omask) &&
              clattn__opts_add(osoft, sizeof osoft, "-DWG=%zu", k->wg);
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "softmax: build options too long");
    CLATTN_FORWARD(clattn__kernel_get(ctx, "unfused_scale_mask.cl", omask, "unfused_scale_mask", &k->mask));
    return clattn__kernel_get(ctx, "unfused_softmax.cl", osoft, "unfused_softmax", &k->soft);
}

/* S, ldS, row0, n, Hq: the chunk both steps begin with. */
static clattn_status set_chunk_args(clattn_context *ctx, cl_kernel k, cl_uint *a, const clattn__problem *p,
                                    cl_mem S, cl_long ldS, cl_long row0, cl_long n)
{
    const cl_long Hq = p->Hq;
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, S));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, ldS));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, row0));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, n));
    return CLATTN_ARG(ctx, k, a, Hq);
}

clattn_status clattn__softmax_enqueue(clattn_context *ctx, const clattn__dev_problem *dp,
                                      const clattn__softmax_kernels *k, cl_mem S, cl_long ldS,
                                      cl_long row0, cl_long n)
{
    const clattn__problem *p = dp->p;
    const cl_long Lq = p->Lq, Lk = p->Lk;
    cl_uint a = 0;
    CLATTN_FORWARD(set_chunk_args(ctx, k->mask, &a, p, S, ldS, row0, n));
    CLATTN_FORWARD(clattn__set_mask_args(ctx, k->mask, &a, dp));
    const size_t gm[2] = {(size_t)Lk, (size_t)n};
    CLATTN_FORWARD(clattn__enqueue(ctx, k->mask, 2, gm, NULL, NULL));

    a = 0;
    CLATTN_FORWARD(set_chunk_args(ctx, k->soft, &a, p, S, ldS, row0, n));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k->soft, &a, Lq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k->soft, &a, Lk));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k->soft, &a, dp->lse.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k->soft, &a, dp->lse.off));
    for (int i = 0; i < 3; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, k->soft, &a, dp->lse.st[i]));
    const size_t gs[2] = {k->wg, (size_t)n}, ls[2] = {k->wg, 1};
    return clattn__enqueue(ctx, k->soft, 2, gs, ls, NULL);
}

/* Side of the square QKᵀ and P·V tiles: the tuned side (tuning.c), halved until the
 * device takes tile^2 work-items per group. */
static size_t tile_side(const clattn_context *ctx, const clattn__problem *p)
{
    clattn__trow tu;
    clattn__tuning_row_for(ctx, CLATTN__TP_UNFUSED, p, -1, &tu, NULL);
    size_t t = tu.tile > 0 ? (size_t)tu.tile : 1;
    while (t > 1 && t * t > ctx->props.max_work_group_size) t >>= 1;
    return t;
}

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* One chunk of query rows: `nh` whole heads from flattened head bh0 (ni = Lq, i0 = 0), or
 * the queries [i0, i0 + ni) of head bh0 (nh = 1). Its score rows are contiguous in the
 * flattened [B, Hq, Lq] order, from row0 = bh0*Lq + i0. */
typedef struct chunk {
    cl_long bh0, nh, i0, ni;
} chunk;

/* bh0, i0, ni, Hq, Lk, group: the chunk's rows, which the QKᵀ and P·V kernels end with. */
static clattn_status set_block_args(clattn_context *ctx, cl_kernel k, cl_uint *a, const clattn__problem *p,
                                    const chunk *c)
{
    const cl_long Hq = p->Hq, Lk = p->Lk, group = p->group;
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, c->bh0));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, c->i0));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, c->ni));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Lk));
    return CLATTN_ARG(ctx, k, a, group);
}

static clattn_status run_chunk(clattn_context *ctx, const clattn__dev_problem *dp, cl_kernel kqk,
                               const clattn__softmax_kernels *ksm, cl_kernel kpv, cl_mem S,
                               chunk c, size_t tile, cl_event *event)
{
    const clattn__problem *p = dp->p;
    const cl_long ldS = p->Lk > 0 ? p->Lk : 1;
    const cl_long Lk = p->Lk;
    const cl_long row0 = c.bh0 * p->Lq + c.i0, n = c.nh * c.ni;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kqk, &a, &dp->q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kqk, &a, &dp->k));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kqk, &a, S));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kqk, &a, ldS));
    CLATTN_FORWARD(set_block_args(ctx, kqk, &a, p, &c));
    const size_t lt[3] = {tile, tile, 1};
    const size_t *local = tile > 1 ? lt : NULL;
    const size_t gqk[3] = {round_up((size_t)Lk, tile), round_up((size_t)c.ni, tile), (size_t)c.nh};
    CLATTN_FORWARD(clattn__enqueue(ctx, kqk, 3, gqk, local, NULL));

    CLATTN_FORWARD(clattn__softmax_enqueue(ctx, dp, ksm, S, ldS, row0, n));

    a = 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, kpv, &a, S));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kpv, &a, ldS));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kpv, &a, &dp->v));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kpv, &a, &dp->o));
    CLATTN_FORWARD(set_block_args(ctx, kpv, &a, p, &c));
    const size_t gpv[3] = {round_up((size_t)p->Dv, tile), round_up((size_t)c.ni, tile), (size_t)c.nh};
    return clattn__enqueue(ctx, kpv, 3, gpv, local, event);
}

static clattn_status unfused_run(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event)
{
    const clattn__problem *p = dp->p;
    const cl_long heads = p->B * p->Hq;
    const cl_long row_bytes = (p->Lk > 0 ? p->Lk : 1) * (cl_long)sizeof(float);
    cl_long rows_fit = ctx->workspace_bytes / row_bytes;
    CLATTN_RETURN_IF(ctx, rows_fit < 1, CLATTN_ERROR_OUT_OF_MEMORY,
                     "unfused: a row of %lld scores does not fit the %lld-byte workspace",
                     (long long)p->Lk, (long long)ctx->workspace_bytes);
    if (rows_fit > heads * p->Lq) rows_fit = heads * p->Lq;

    const size_t tile = tile_side(ctx, p);
    /* Each kernel is built with only the options it depends on, so problems that differ
     * in what one kernel does not read share that kernel's build (builds dominate the
     * first call on CPU drivers: about a second each on PoCL). */
    char oqk[160] = "", opv[160] = "";
    bool ok = clattn__opts_add(oqk, sizeof oqk, "-DQ_DT=%d -DK_DT=%d -DD=%lld -DTILE=%zu",
                               (int)p->q->dtype, (int)p->k->dtype, (long long)p->D, tile) &&
              clattn__opts_add(opv, sizeof opv, "-DV_DT=%d -DO_DT=%d -DDV=%lld -DTILE=%zu",
                               (int)p->v->dtype, (int)p->o->dtype, (long long)p->Dv, tile);
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "unfused: build options too long");

    cl_kernel kqk, kpv;
    clattn__softmax_kernels ksm;
    CLATTN_FORWARD(clattn__kernel_get(ctx, "unfused_qk.cl", oqk, "unfused_qk", &kqk));
    CLATTN_FORWARD(clattn__softmax_kernels_get(ctx, dp, &ksm));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "unfused_pv.cl", opv, "unfused_pv", &kpv));

    /* The score buffer; when the device cannot allocate it, smaller chunks of rows (half
     * as many each time, down to one row) before this path gives up. */
    cl_mem S = NULL;
    cl_long heads_per_chunk, rows_per_chunk, nh_max;
    for (;;) {
        /* whole heads per chunk when a head's scores fit, else a block of one head's queries */
        heads_per_chunk = rows_fit / p->Lq;
        rows_per_chunk = heads_per_chunk >= 1 ? p->Lq : rows_fit;
        nh_max = heads_per_chunk >= 1 ? (heads_per_chunk < heads ? heads_per_chunk : heads) : 1;
        clattn_status st = clattn__buffer_create(ctx, (size_t)(nh_max * rows_per_chunk * row_bytes), &S);
        if (st == CLATTN_SUCCESS) break;
        if (!clattn__alloc_retryable(st) || rows_fit == 1) return st;
        rows_fit = nh_max * rows_per_chunk / 2 > 0 ? nh_max * rows_per_chunk / 2 : 1;
        clattn__log(ctx, "unfused: retrying with chunks of %lld rows", (long long)rows_fit);
    }

    /* O and LSE are written per chunk, and LSE (softmax) before O (P·V): unless one launch
     * writes everything, the caller's cl_mem outputs are shadowed (staging.c). */
    const bool one_chunk = nh_max >= heads && rows_per_chunk >= p->Lq;
    clattn__dev_problem sp;
    clattn__shadow sh;
    clattn_status st = clattn__shadow_begin(ctx, dp, !one_chunk || p->lse, &sp, &sh);
    cl_event *last_event = sh.active ? NULL : event;
    for (cl_long bh0 = 0; bh0 < heads && st == CLATTN_SUCCESS; bh0 += nh_max) {
        const cl_long nh = heads - bh0 < nh_max ? heads - bh0 : nh_max;
        for (cl_long i0 = 0; i0 < p->Lq && st == CLATTN_SUCCESS; i0 += rows_per_chunk) {
            chunk c = {bh0, nh, i0, p->Lq - i0 < rows_per_chunk ? p->Lq - i0 : rows_per_chunk};
            const bool last = bh0 + nh >= heads && i0 + c.ni >= p->Lq;
            st = run_chunk(ctx, &sp, kqk, &ksm, kpv, S, c, tile, last ? last_event : NULL);
        }
    }
    if (st == CLATTN_SUCCESS) st = clattn__shadow_commit(ctx, &sh, event);
    clattn__shadow_release(ctx, &sh);
    /* Releasing S while kernels are queued is safe: OpenCL keeps it until they finish. */
    clattn__buffer_release(ctx, S);
    return st;
}

const clattn__path_impl clattn__path_unfused = {CLATTN_PATH_UNFUSED, unfused_supports, unfused_run};
