/* The backward pass's kernel forms as a table (forms.h): the CPU form (cl/backward_cpu.cl),
 * the GPU form (cl/backward_gpu.cl), both with cl/backward.cl's row sums, and the unfused
 * form (cl/backward_unfused.cl); for each, how its plan fits the device, its build
 * options, its scratch and its launches. */
#include "backward/forms.h"
#include "core/program.h"
#include "core/kernel_args.h"

#include <string.h>

/* The GPU form's local memory takes at most this much (or the device's, when less). */
#define BWD_LOCAL_BUDGET 32768u
/* The CPU form's partial dQ may take at most this much (and at least one split). */
#define BWD_PART_BUDGET ((uint64_t)64 << 20)
/* Floats of one CPU-form work-item's scratch (SCR_FLOATS in cl/backward_cpu.cl). */
static uint64_t cpu_scratch_floats(const clattn__problem *p, int bn)
{
    const uint64_t dp = (uint64_t)(p->D + 15) / 16 * 16, dvp = (uint64_t)(p->Dv + 15) / 16 * 16;
    return (uint64_t)(p->D + p->Dv) * (uint64_t)bn + (uint64_t)bn * dp + (dp > dvp ? dp : dvp) + dp;
}

/* Local memory of the GPU form in bytes (cl/backward_gpu.cl). */
static uint64_t local_bytes(const clattn__problem *p, int bm, int bn)
{
    return 4u * ((uint64_t)(bm + bn) * (uint64_t)(p->D + p->Dv) + 2u * (uint64_t)bm * (uint64_t)bn +
                 4u * (uint64_t)bm);
}

static void cpu_fit(const clattn_context *ctx, const clattn__bwd_problem *bp, clattn__bwd_plan *pl)
{
    const clattn__problem *p = &bp->p;
    /* dK and dV of a block live in private float16 vectors: keep them within 32 KiB
     * (a CPU core's L1), halving the block for wide heads */
    const int64_t vec = (p->D + 15) / 16 + (p->Dv + 15) / 16;
    while (pl->bn > 16 && (int64_t)pl->bn * vec * 64 > 32768) pl->bn /= 2;
    pl->q_direct = p->q->dtype == CLATTN_F32 && p->q->nb[3] == (int64_t)sizeof(float) &&
                   p->D % 16 == 0;
    pl->k_direct = p->k->dtype == CLATTN_F32 && p->k->nb[3] == (int64_t)sizeof(float) &&
                   p->D % 16 == 0;
    pl->do_direct = bp->d_o->dtype == CLATTN_F32 &&
                    bp->d_o->nb[3] == (int64_t)sizeof(float) && p->Dv % 16 == 0;
    /* enough work-items to fill the device (4 per compute unit, so the last ones to
     * finish leave few cores idle), each with its own partial dQ within the budget */
    const int64_t bk = p->B * p->Hkv, nkb = (p->Lk + pl->bn - 1) / pl->bn;
    const int64_t want = 4 * (int64_t)(ctx->props.compute_units ? ctx->props.compute_units : 1);
    int64_t ns = bk > 0 ? (want + bk - 1) / bk : 1;
    if (ns > nkb) ns = nkb;
    const uint64_t part = (uint64_t)(p->B * p->Hq * p->Lq) * (uint64_t)((p->D + 15) / 16 * 16) * 4u;
    while (ns > 1 && (uint64_t)ns * part > BWD_PART_BUDGET) ns--;
    pl->nsplit = ns < 1 ? 1 : ns;
    size_t span = 0;
    const clattn_tensor *dq = bp->dq;
    pl->dq_direct = pl->nsplit == 1 && dq->dtype == CLATTN_F32 && dq->nb[3] == (int64_t)sizeof(float) &&
                    p->D % 16 == 0 && clattn__tensor_span(dq, &span) &&
                    (uint64_t)span == (uint64_t)(p->B * p->Hq * p->Lq * p->D) * sizeof(float);
    pl->in_place = pl->dq_direct && bp->dq->buffer && bp->dk->buffer && bp->dv->buffer && !bp->d_mask;
}

static void gpu_fit(const clattn_context *ctx, const clattn__bwd_problem *bp, clattn__bwd_plan *pl)
{
    const clattn__problem *p = &bp->p;
    uint64_t budget = ctx->props.local_mem_bytes;
    if (budget == 0 || budget > BWD_LOCAL_BUDGET) budget = BWD_LOCAL_BUDGET;
    while (local_bytes(p, pl->bm, pl->bn) > budget) {
        if (pl->bm > pl->bn) pl->bm /= 2;
        else if (pl->bn > 1) pl->bn /= 2;
        else break;
    }
    while (pl->wg > 1 && (size_t)pl->wg > ctx->props.max_work_group_size) pl->wg /= 2;
}

/* The CPU form's dense rows of Q and dO (unless read in place), per-work-item scratch and
 * partial dQ (unless accumulated in the output). */
static clattn_status cpu_stage(clattn_context *ctx, const clattn__problem *p, const clattn__bwd_plan *pl,
                               clattn__bwd_state *s)
{
    const int64_t rows = p->B * p->Hq * p->Lq;
    const size_t nrows = (size_t)(rows > 0 ? rows : 1);
    const size_t dp = (size_t)((p->D + 15) / 16 * 16), dvp = (size_t)((p->Dv + 15) / 16 * 16);
    const size_t items = (size_t)(p->B * p->Hkv * pl->nsplit);
    if (!pl->q_direct)
        CLATTN_FORWARD(clattn__buffer_create(ctx, nrows * dp * sizeof(float), &s->qp));
    if (!pl->do_direct)
        CLATTN_FORWARD(clattn__buffer_create(ctx, nrows * dvp * sizeof(float), &s->dop));
    CLATTN_FORWARD(clattn__buffer_create(
        ctx, (items > 0 ? items : 1) * (size_t)cpu_scratch_floats(p, pl->bn) * sizeof(float), &s->scr));
    if (!pl->dq_direct)
        CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)pl->nsplit * nrows * dp * sizeof(float), &s->part));
    return CLATTN_SUCCESS;
}

static bool cpu_options(const clattn__bwd_plan *pl, char *opts, size_t cap)
{
    return clattn__opts_add(opts, cap,
                            " -DBN=%d -DRB=%d -DQ_DIRECT=%d -DDO_DIRECT=%d -DK_DIRECT=%d -DDQ_DIRECT=%d",
                            pl->bn, pl->bm, pl->q_direct ? 1 : 0, pl->do_direct ? 1 : 0,
                            pl->k_direct ? 1 : 0, pl->dq_direct ? 1 : 0);
}

static bool gpu_options(const clattn__bwd_plan *pl, char *opts, size_t cap)
{
    return clattn__opts_add(opts, cap, " -DBM=%d -DBN=%d -DWG=%d", pl->bm, pl->bn, pl->wg);
}

static void cpu_log(clattn_context *ctx, const clattn__bwd_plan *pl)
{
    clattn__log(ctx, "backward: backward_cpu.cl, bn %d, rb %d, %lld splits%s%s", pl->bn, pl->bm,
                (long long)pl->nsplit, pl->dq_direct ? ", dQ in the output" : "",
                pl->in_place ? ", outputs in place" : "");
}

static void gpu_log(clattn_context *ctx, const clattn__bwd_plan *pl)
{
    clattn__log(ctx, "backward: backward_gpu.cl, bm %d, bn %d, wg %d", pl->bm, pl->bn, pl->wg);
}

static void unfused_log(clattn_context *ctx, const clattn__bwd_plan *pl)
{
    (void)pl;
    clattn__log(ctx, "backward: backward_unfused.cl");
}

clattn_status clattn__bwd_set_inputs(clattn_context *ctx, cl_kernel k, cl_uint *a, const clattn__bwd_state *s,
                                     bool row_sums)
{
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.k));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.v));
    if (!row_sums) CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.o));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->d_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.off));
    for (int i = 0; i < 3; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.st[i]));
    return row_sums ? CLATTN_ARG(ctx, k, a, s->dl) : CLATTN_SUCCESS;
}

clattn_status clattn__bwd_set_tail(clattn_context *ctx, cl_kernel k, cl_uint *a, const clattn__bwd_state *s)
{
    const clattn__problem *p = s->dp.p;
    const cl_long B = p->B, Hq = p->Hq, Hkv = p->Hkv;
    CLATTN_FORWARD(clattn__set_mask_args(ctx, k, a, &s->dp));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Hq));
    return CLATTN_ARG(ctx, k, a, Hkv);
}

/* B, Hq, Lq as k's last arguments, then k over every query row (bwd_rowdot, bwd_dqsum). */
static clattn_status enqueue_per_row(clattn_context *ctx, cl_kernel k, cl_uint *a, const clattn__problem *p)
{
    const cl_long B = p->B, Hq = p->Hq, Lq = p->Lq;
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Lq));
    const size_t g[1] = {(size_t)(p->B * p->Hq * p->Lq)}, l[1] = {64};
    return clattn__enqueue(ctx, k, 1, g, l, NULL);
}

/* D = rowsum(dO ∘ O), before the tiled forms' gradient kernels; the CPU form's bwd_rowdot
 * also makes its dense rows and zeroes its partial dQ. */
static clattn_status enqueue_rowdot(clattn_context *ctx, const clattn__bwd_kernels *kn, const clattn__bwd_plan *pl,
                                    clattn__bwd_state *s)
{
    const clattn__problem *p = s->dp.p;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->dp.q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->dp.o));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->d_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->dl));
    const cl_long nsplit = pl->nsplit; /* 0 but in the CPU form */
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->qp)); /* NULL: the GPU form, or in place */
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->dop));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->part));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, nsplit));
    return enqueue_per_row(ctx, kn->rowdot, &a, p);
}

static clattn_status gpu_enqueue(clattn_context *ctx, const clattn__bwd_kernels *kn, const clattn__bwd_plan *pl,
                                 clattn__bwd_state *s, cl_event *event)
{
    (void)event;
    const clattn__problem *p = s->dp.p;
    CLATTN_FORWARD(enqueue_rowdot(ctx, kn, pl, s));
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__bwd_set_inputs(ctx, kn->dkdv, &a, s, true));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[1]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[2]));
    CLATTN_FORWARD(clattn__bwd_set_tail(ctx, kn->dkdv, &a, s));
    const size_t wg = (size_t)pl->wg;
    const size_t g_kv[2] = {(size_t)((p->Lk + pl->bn - 1) / pl->bn) * wg, (size_t)(p->B * p->Hkv)};
    const size_t l2[2] = {wg, 1};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->dkdv, 2, g_kv, l2, NULL));

    a = 0;
    CLATTN_FORWARD(clattn__bwd_set_inputs(ctx, kn->dq, &a, s, true));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dq, &a, &s->out[0]));
    CLATTN_FORWARD(clattn__bwd_set_tail(ctx, kn->dq, &a, s));
    const size_t g_q[2] = {(size_t)((p->Lq + pl->bm - 1) / pl->bm) * wg, (size_t)(p->B * p->Hq)};
    return clattn__enqueue(ctx, kn->dq, 2, g_q, l2, NULL);
}

static clattn_status cpu_enqueue(clattn_context *ctx, const clattn__bwd_kernels *kn, const clattn__bwd_plan *pl,
                                 clattn__bwd_state *s, cl_event *event)
{
    const clattn__problem *p = s->dp.p;
    CLATTN_FORWARD(enqueue_rowdot(ctx, kn, pl, s));
    const cl_long nsplit = pl->nsplit;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__bwd_set_inputs(ctx, kn->dkdv, &a, s, true));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[1]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[2]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[0]));
    CLATTN_FORWARD(clattn__bwd_set_tail(ctx, kn->dkdv, &a, s));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->qp));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->dop));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->scr));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->part));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, nsplit));
    const size_t g_kv[2] = {(size_t)nsplit, (size_t)(p->B * p->Hkv)}, l1[2] = {1, 1};
    /* with outputs written in place, this launch is the call's last and its event */
    if (pl->in_place && g_kv[1] > 0) return clattn__enqueue(ctx, kn->dkdv, 2, g_kv, l1, event);
    if (g_kv[1] > 0) CLATTN_FORWARD(clattn__enqueue(ctx, kn->dkdv, 2, g_kv, l1, NULL));
    if (pl->dq_direct) return CLATTN_SUCCESS;

    a = 0;
    const cl_float scale = p->scale;
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, s->part));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, nsplit));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dq, &a, &s->out[0]));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, scale));
    return enqueue_per_row(ctx, kn->dq, &a, p);
}

static clattn_status unfused_enqueue(clattn_context *ctx, const clattn__bwd_kernels *kn, const clattn__bwd_plan *pl,
                                     clattn__bwd_state *s, cl_event *event)
{
    (void)pl;
    (void)event;
    const clattn__problem *p = s->dp.p;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__bwd_set_inputs(ctx, kn->dq, &a, s, false));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dq, &a, &s->out[0]));
    CLATTN_FORWARD(clattn__bwd_set_tail(ctx, kn->dq, &a, s));
    const size_t g_q[1] = {(size_t)(p->B * p->Hq * p->Lq)}, l_q[1] = {64};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->dq, 1, g_q, l_q, NULL));
    a = 0;
    CLATTN_FORWARD(clattn__bwd_set_inputs(ctx, kn->dkdv, &a, s, false));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[1]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[2]));
    CLATTN_FORWARD(clattn__bwd_set_tail(ctx, kn->dkdv, &a, s));
    const size_t g_kv[2] = {(size_t)p->Lk, (size_t)(p->B * p->Hkv)}, l_kv[2] = {64, 1};
    return clattn__enqueue(ctx, kn->dkdv, 2, g_kv, l_kv, NULL);
}

static const clattn__bwd_form bwd_forms[] = {
    {"backward_cpu.cl", "bwd_cpu_kv", "bwd_dqsum", "backward.cl", "bwd_dmask", true, cpu_fit, cpu_options,
     cpu_log, cpu_stage, cpu_enqueue},
    {"backward_gpu.cl", "bwd_dkdv", "bwd_dq", "backward.cl", "bwd_dmask", true, gpu_fit, gpu_options, gpu_log,
     NULL, gpu_enqueue},
    {"backward_unfused.cl", "bwdu_dkdv", "bwdu_dq", "backward_unfused.cl", "bwdu_dmask", false, NULL, NULL,
     unfused_log, NULL, unfused_enqueue},
};

const clattn__bwd_form *clattn__bwd_form_at(int form) { return &bwd_forms[form]; }

