/* clattn_attention_backward: the gradients of attention on the device. The tiled forms of
 * cl/backward.cl (CPU: one pass over the keys; GPU: FlashAttention-2's two kernels; no
 * atomics, deterministic) come from the tuning layer's backward path, with the unfused
 * form of cl/backward_unfused.cl at the end of the fallback chain. Inputs are staged as
 * the forward call stages them; every output is written into scratch (staging copies for
 * host outputs, copies of the caller's spans for cl_mem outputs) and reaches the caller
 * only after every launch was queued: one commit launch for cl_mem outputs, an
 * all-or-nothing read-back for host ones; or, when a single launch writes every output
 * and is the call's last command (the CPU form, in_place below), in place. So a failed
 * call leaves every output as it was.
 * Memory beyond the tensors: one float per query row (D = rowsum(dO ∘ O)); the CPU form
 * adds its partial dQ (NSPLIT x rows x D floats, bounded below; none with one split and
 * a dense float32 dQ), dense copies of Q and dO where they cannot be read in place, and
 * a few KiB per work-item. */
#include "backward/backward.h"
#include "core/program.h"
#include "core/faults.h"
#include "core/kernel_args.h"
#include "tuning/tuning.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Testing only: -1 = the form the tuning layer gives the device; 0 or 1 forces one. */
int clattn__backward_force_form = -1;
/* Testing only: the form of the calling thread's last successful call (0 CPU, 1 GPU, 2
 * unfused). */
_Thread_local int clattn__backward_last_form = -1; /* per thread: no race between threads */
#define BWD_LOCAL_BUDGET 32768u

typedef struct bwd_plan {
    int form, bm, bn, wg;
    int commit_unit; /* bytes per work-item of the commit: 16 or 2 */
    /* CPU form: Q, dO and K rows read in place (f32, unit stride, D or Dv % 16 == 0);
     * dQ accumulated in the output (one split, f32, dense, unit stride, D % 16 == 0) */
    bool q_direct, do_direct, k_direct, dq_direct;
    /* CPU form, dq_direct, every output a cl_mem tensor and no d_mask: one launch writes
     * dQ, dK and dV in the caller's buffers, so no copies and no commit are needed (it
     * is the call's last command: queued whole or not at all) */
    bool in_place;
    int64_t nsplit; /* CPU form: work-items per (batch, KV head), each with a partial dQ */
} bwd_plan;

/* The CPU form's partial dQ may take at most this much (and at least one split). */
#define BWD_PART_BUDGET ((uint64_t)64 << 20)
/* Floats of one CPU-form work-item's scratch (SCR_FLOATS in cl/backward.cl). */
static uint64_t cpu_scratch_floats(const clattn__problem *p, int bn)
{
    const uint64_t dp = (uint64_t)(p->D + 15) / 16 * 16, dvp = (uint64_t)(p->Dv + 15) / 16 * 16;
    return (uint64_t)(p->D + p->Dv) * (uint64_t)bn + (uint64_t)bn * dp + (dp > dvp ? dp : dvp) + dp;
}

static uint64_t local_bytes(const clattn__problem *p, int bm, int bn)
{
    return 4u * ((uint64_t)(bm + bn) * (uint64_t)(p->D + p->Dv) + 2u * (uint64_t)bm * (uint64_t)bn +
                 4u * (uint64_t)bm);
}

/* The plan of a tiled form: the tuning layer's backward row (src/tuning.c), its form
 * unless that failed to build for this class on ctx (then the other), or a forced one. */
static void make_plan(const clattn_context *ctx, const clattn__bwd_problem *bp, bwd_plan *pl)
{
    const clattn__problem *p = &bp->p;
    memset(pl, 0, sizeof *pl);
    clattn__trow tu;
    clattn__tsource src;
    clattn__tuning_row_for(ctx, CLATTN__TP_BACKWARD, p, -1, &tu, &src);
    int form = clattn__tuning_form(ctx, CLATTN__TP_BACKWARD, p, &tu);
    if (clattn__backward_force_form >= 0) form = clattn__backward_force_form;
    if (form != tu.form) clattn__tuning_apply_form(CLATTN__TP_BACKWARD, form, &tu);
    pl->form = form;
    /* the commit copies 16 bytes per work-item when every cl_mem output's offset and span
     * allow it */
    pl->commit_unit = 16;
    const clattn_tensor *outs[4] = {bp->dq, bp->dk, bp->dv, bp->d_mask};
    for (int i = 0; i < 4; i++) {
        size_t span = 0;
        if (!outs[i] || !outs[i]->buffer || !clattn__tensor_span(outs[i], &span)) continue;
        if (outs[i]->offset % 16 || span % 16) pl->commit_unit = 2;
    }
    pl->bm = tu.block_m;
    pl->bn = tu.block_n;
    pl->wg = tu.wg;
    clattn__log(ctx, "backward: tuning row from %s", src.text);
    if (pl->form == 0) {
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
        return;
    }
    uint64_t budget = ctx->props.local_mem_bytes;
    if (budget == 0 || budget > BWD_LOCAL_BUDGET) budget = BWD_LOCAL_BUDGET;
    while (local_bytes(p, pl->bm, pl->bn) > budget) {
        if (pl->bm > pl->bn) pl->bm /= 2;
        else if (pl->bn > 1) pl->bn /= 2;
        else break;
    }
    while (pl->wg > 1 && (size_t)pl->wg > ctx->props.max_work_group_size) pl->wg /= 2;
}

typedef struct bwd_kernels {
    cl_kernel rowdot, dkdv, dq, dmask, commit; /* CPU form: dkdv = bwd_cpu_kv, dq = bwd_dqsum */
} bwd_kernels;

/* A cl_mem output moved to scratch until the commit. */
typedef struct bwd_shadow {
    cl_mem dst, scratch;
    size_t base, span;
} bwd_shadow;

typedef struct bwd_state {
    clattn__dev_problem dp; /* q, k, v, o, mask, kv_lens, alibi (all inputs here) */
    clattn__dev_tensor d_o, lse, out[4]; /* out: dq, dk, dv, d_mask */
    bwd_shadow sh[4];
    cl_mem dl;
    cl_mem qp, dop; /* the CPU form's dense float32 rows of Q and dO (NULL: read in place) */
    cl_mem scr;     /* its per-work-item scratch */
    cl_mem part;    /* its partial dQ, one per split */
} bwd_state;

static void state_release(clattn_context *ctx, bwd_state *s)
{
    clattn__dev_tensor *all[] = {&s->dp.q, &s->dp.k, &s->dp.v, &s->dp.o, &s->dp.mask,
                                 &s->dp.kv_lens, &s->dp.alibi, &s->d_o, &s->lse,
                                 &s->out[0], &s->out[1], &s->out[2], &s->out[3]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (all[i]->owned) clattn__buffer_release(ctx, all[i]->mem);
        all[i]->mem = NULL;
        all[i]->owned = false;
    }
    for (int i = 0; i < 4; i++) {
        clattn__buffer_release(ctx, s->sh[i].scratch);
        s->sh[i].scratch = NULL;
    }
    clattn__buffer_release(ctx, s->dl);
    clattn__buffer_release(ctx, s->qp);
    clattn__buffer_release(ctx, s->dop);
    clattn__buffer_release(ctx, s->scr);
    clattn__buffer_release(ctx, s->part);
    s->dl = s->qp = s->dop = s->scr = s->part = NULL;
}

static clattn_status stage_all(clattn_context *ctx, const clattn__bwd_problem *bp,
                               const bwd_plan *pl, bwd_state *s)
{
    const clattn__problem *p = &bp->p;
    s->dp.p = p;
    struct {
        const char *name;
        const clattn_tensor *t;
        bool output;
        clattn__dev_tensor *d;
    } all[] = {{"q", p->q, false, &s->dp.q},
               {"k", p->k, false, &s->dp.k},
               {"v", p->v, false, &s->dp.v},
               {"o", p->o, false, &s->dp.o},
               {"mask", p->mask, false, &s->dp.mask},
               {"kv_lens", p->kv_lens, false, &s->dp.kv_lens},
               {"alibi", p->alibi, false, &s->dp.alibi},
               {"d_o", bp->d_o, false, &s->d_o},
               {"lse", bp->lse, false, &s->lse},
               {"dq", bp->dq, true, &s->out[0]},
               {"dk", bp->dk, true, &s->out[1]},
               {"dv", bp->dv, true, &s->out[2]},
               {"d_mask", bp->d_mask, true, &s->out[3]}};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        CLATTN_FORWARD(clattn__stage_tensor(ctx, all[i].name, all[i].t, all[i].output, all[i].d));
    /* cl_mem outputs: kernels write a copy of the caller's span (padding included),
     * unless one launch writes them all in place */
    for (int i = 0; i < 4 && !pl->in_place; i++) {
        clattn__dev_tensor *d = &s->out[i];
        if (!d->mem || d->owned) continue;
        bwd_shadow *sh = &s->sh[i];
        clattn__tensor_span(d->src, &sh->span);
        if (!sh->span) continue;
        sh->base = d->src->offset;
        sh->dst = d->mem;
        CLATTN_FORWARD(clattn__buffer_create(ctx, sh->span, &sh->scratch));
        /* the kernels write every element; only a span with gaps (padding between rows)
         * needs the caller's bytes in the copy, so the commit leaves the gaps as they were */
        const clattn_tensor *t = d->src;
        const uint64_t dense = (uint64_t)t->ne[0] * (uint64_t)t->ne[1] * (uint64_t)t->ne[2] *
                               (uint64_t)t->ne[3] * (uint64_t)clattn_dtype_size(t->dtype);
        if (dense != (uint64_t)sh->span)
            CLATTN_FORWARD(clattn__enqueue_copy(ctx, d->mem, sh->base, sh->scratch, 0, sh->span));
        d->mem = sh->scratch;
        d->off = 0;
    }
    const int64_t rows = p->B * p->Hq * p->Lq;
    if (pl->form == 0) {
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
    }
    if (pl->form == 2) return CLATTN_SUCCESS; /* the unfused form recomputes D per row */
    return clattn__buffer_create(ctx, (size_t)(rows > 0 ? rows : 1) * sizeof(float), &s->dl);
}

/* Host outputs: every read-back must succeed before the first caller byte changes. */
static clattn_status download(clattn_context *ctx, bwd_state *s)
{
    const clattn__dev_tensor *outs[4] = {&s->out[0], &s->out[1], &s->out[2], &s->out[3]};
    return clattn__download(ctx, outs, 4, "gradients");
}

static clattn_status get_kernels(clattn_context *ctx, const clattn__bwd_problem *bp,
                                 const clattn__dev_problem *dp, const bwd_plan *pl,
                                 bwd_kernels *kn)
{
    const clattn__problem *p = &bp->p;
    char opts[640] = "";
    bool ok = clattn__mask_options(dp, opts, sizeof opts) &&
              clattn__opts_add(opts, sizeof opts,
                               " -DDO_DT=%d -DDQ_DT=%d -DDK_DT=%d -DDV_DT=%d -DD=%lld -DDV=%lld"
                               " -DFORM=%d",
                               (int)bp->d_o->dtype, (int)bp->dq->dtype, (int)bp->dk->dtype,
                               (int)bp->dv->dtype, (long long)p->D, (long long)p->Dv, pl->form) &&
              (pl->form == 0 ? clattn__opts_add(opts, sizeof opts,
                                                " -DBN=%d -DRB=%d -DQ_DIRECT=%d -DDO_DIRECT=%d -DK_DIRECT=%d"
                                                " -DDQ_DIRECT=%d",
                                                pl->bn, pl->bm, pl->q_direct ? 1 : 0, pl->do_direct ? 1 : 0,
                                                pl->k_direct ? 1 : 0, pl->dq_direct ? 1 : 0)
                             : clattn__opts_add(opts, sizeof opts, " -DBM=%d -DBN=%d -DWG=%d",
                                                pl->bm, pl->bn, pl->wg));
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "backward: build options too long");
    if (pl->form == 2) {
        clattn__log(ctx, "backward: backward_unfused.cl");
        const char *f = "backward_unfused.cl";
        CLATTN_FORWARD(clattn__kernel_get(ctx, f, opts, "bwdu_dq", &kn->dq));
        CLATTN_FORWARD(clattn__kernel_get(ctx, f, opts, "bwdu_dkdv", &kn->dkdv));
        CLATTN_FORWARD(clattn__kernel_get(ctx, f, opts, "bwdu_dmask", &kn->dmask));
        return clattn__kernel_get(ctx, f, opts, "bwdu_commit", &kn->commit);
    }
    if (pl->form == 0) {
        clattn__log(ctx, "backward: backward.cl CPU form, bn %d, rb %d, %lld splits%s%s", pl->bn, pl->bm,
                    (long long)pl->nsplit, pl->dq_direct ? ", dQ in the output" : "",
                    pl->in_place ? ", outputs in place" : "");
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_cpu_kv", &kn->dkdv));
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_dqsum", &kn->dq));
    } else {
        clattn__log(ctx, "backward: backward.cl GPU form, bm %d, bn %d, wg %d", pl->bm, pl->bn,
                    pl->wg);
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_dkdv", &kn->dkdv));
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_dq", &kn->dq));
    }
    CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_rowdot", &kn->rowdot));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_dmask", &kn->dmask));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts,
                                      pl->commit_unit == 16 ? "bwd_commit16" : "bwd_commit", &kn->commit));
    return CLATTN_SUCCESS;
}

/* q, k, v, d_o, lse, dl: the leading arguments of bwd_dkdv, bwd_dq and bwd_dmask. */
static clattn_status set_inputs(clattn_context *ctx, cl_kernel k, cl_uint *a, const bwd_state *s)
{
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.k));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.v));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->d_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.off));
    for (int i = 0; i < 3; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.st[i]));
    return CLATTN_ARG(ctx, k, a, s->dl);
}

/* q, k, v, o, d_o, lse: the leading arguments of the unfused form's kernels. */
static clattn_status set_inputs_unfused(clattn_context *ctx, cl_kernel k, cl_uint *a,
                                        const bwd_state *s)
{
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.k));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.v));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->dp.o));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &s->d_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.off));
    for (int i = 0; i < 3; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, s->lse.st[i]));
    return CLATTN_SUCCESS;
}

static clattn_status set_tail(clattn_context *ctx, cl_kernel k, cl_uint *a, const bwd_state *s)
{
    const clattn__problem *p = s->dp.p;
    const cl_long B = p->B, Hq = p->Hq, Hkv = p->Hkv;
    CLATTN_FORWARD(clattn__set_mask_args(ctx, k, a, &s->dp));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Hq));
    return CLATTN_ARG(ctx, k, a, Hkv);
}

static clattn_status enqueue_gpu_form(clattn_context *ctx, const bwd_kernels *kn,
                                      const bwd_plan *pl, bwd_state *s)
{
    const clattn__problem *p = s->dp.p;
    cl_uint a = 0;
    CLATTN_FORWARD(set_inputs(ctx, kn->dkdv, &a, s));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[1]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[2]));
    CLATTN_FORWARD(set_tail(ctx, kn->dkdv, &a, s));
    const size_t wg = (size_t)pl->wg;
    const size_t g_kv[2] = {(size_t)((p->Lk + pl->bn - 1) / pl->bn) * wg, (size_t)(p->B * p->Hkv)};
    const size_t l2[2] = {wg, 1};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->dkdv, 2, g_kv, l2, NULL));

    a = 0;
    CLATTN_FORWARD(set_inputs(ctx, kn->dq, &a, s));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dq, &a, &s->out[0]));
    CLATTN_FORWARD(set_tail(ctx, kn->dq, &a, s));
    const size_t g_q[2] = {(size_t)((p->Lq + pl->bm - 1) / pl->bm) * wg, (size_t)(p->B * p->Hq)};
    return clattn__enqueue(ctx, kn->dq, 2, g_q, l2, NULL);
}

static clattn_status enqueue_cpu_form(clattn_context *ctx, const bwd_kernels *kn,
                                      const bwd_plan *pl, bwd_state *s, cl_event *event)
{
    const clattn__problem *p = s->dp.p;
    const cl_long nsplit = pl->nsplit, B = p->B, Hq = p->Hq, Lq = p->Lq;
    cl_uint a = 0;
    CLATTN_FORWARD(set_inputs(ctx, kn->dkdv, &a, s));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[1]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[2]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[0]));
    CLATTN_FORWARD(set_tail(ctx, kn->dkdv, &a, s));
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
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, Lq));
    const size_t g_q[1] = {(size_t)(p->B * p->Hq * p->Lq)}, l_q[1] = {64};
    return clattn__enqueue(ctx, kn->dq, 1, g_q, l_q, NULL);
}

static clattn_status enqueue_unfused(clattn_context *ctx, const bwd_kernels *kn, bwd_state *s)
{
    const clattn__problem *p = s->dp.p;
    cl_uint a = 0;
    CLATTN_FORWARD(set_inputs_unfused(ctx, kn->dq, &a, s));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dq, &a, &s->out[0]));
    CLATTN_FORWARD(set_tail(ctx, kn->dq, &a, s));
    const size_t g_q[1] = {(size_t)(p->B * p->Hq * p->Lq)}, l_q[1] = {64};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->dq, 1, g_q, l_q, NULL));
    a = 0;
    CLATTN_FORWARD(set_inputs_unfused(ctx, kn->dkdv, &a, s));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[1]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[2]));
    CLATTN_FORWARD(set_tail(ctx, kn->dkdv, &a, s));
    const size_t g_kv[2] = {(size_t)p->Lk, (size_t)(p->B * p->Hkv)}, l_kv[2] = {64, 1};
    return clattn__enqueue(ctx, kn->dkdv, 2, g_kv, l_kv, NULL);
}

/* D = rowsum(dO ∘ O), then the tiled form's gradient kernels. */
static clattn_status enqueue_tiled(clattn_context *ctx, const bwd_kernels *kn, const bwd_plan *pl,
                                   bwd_state *s, cl_event *event)
{
    const clattn__problem *p = s->dp.p;
    const cl_long B = p->B, Hq = p->Hq, Lq = p->Lq;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->dp.q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->dp.o));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->d_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->dl));
    const cl_long nsplit = pl->form == 0 ? pl->nsplit : 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->qp)); /* NULL: the GPU form, or in place */
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->dop));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->part));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, nsplit));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, Lq));
    const size_t g_row[1] = {(size_t)(p->B * p->Hq * p->Lq)}, l_row[1] = {64};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->rowdot, 1, g_row, l_row, NULL));

    if (pl->form == 0) return enqueue_cpu_form(ctx, kn, pl, s, event);
    return enqueue_gpu_form(ctx, kn, pl, s);
}

static clattn_status enqueue_all(clattn_context *ctx, const bwd_kernels *kn, const bwd_plan *pl,
                                 bwd_state *s, cl_event *event)
{
    const clattn__problem *p = s->dp.p;
    cl_uint a = 0;
    if (pl->form == 2)
        CLATTN_FORWARD(enqueue_unfused(ctx, kn, s));
    else
        CLATTN_FORWARD(enqueue_tiled(ctx, kn, pl, s, event));
    if (pl->in_place) {
        /* no d_mask and no commit; an empty problem's event is a marker */
        if (event && !*event) CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
        return CLATTN_SUCCESS;
    }

    if (s->out[3].mem) {
        const clattn_tensor *m = p->mask;
        const cl_long ne[4] = {m->ne[0], m->ne[1], m->ne[2], m->ne[3]};
        a = 0;
        CLATTN_FORWARD(pl->form == 2 ? set_inputs_unfused(ctx, kn->dmask, &a, s)
                                     : set_inputs(ctx, kn->dmask, &a, s));
        CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dmask, &a, &s->out[3]));
        for (int i = 0; i < 4; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dmask, &a, ne[i]));
        CLATTN_FORWARD(set_tail(ctx, kn->dmask, &a, s));
        const size_t g_m[1] = {(size_t)(ne[0] * ne[1] * ne[2] * ne[3])}, l_m[1] = {64};
        CLATTN_FORWARD(clattn__enqueue(ctx, kn->dmask, 1, g_m, l_m, NULL));
    }

    /* the commit of cl_mem outputs, in one launch */
    bool any = false;
    cl_ulong maxn = 0;
    a = 0;
    for (int i = 0; i < 4; i++) {
        const bwd_shadow *sh = &s->sh[i];
        const cl_ulong unit = pl->form == 2 ? 2 : (cl_ulong)pl->commit_unit;
        const cl_ulong off = sh->base / unit, n = sh->scratch ? sh->span / unit : 0;
        any = any || n > 0;
        if (n > maxn) maxn = n;
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, sh->dst));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, off));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, sh->scratch));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, n));
    }
    if (any) {
        const size_t g_c[1] = {(size_t)maxn};
        CLATTN_FORWARD(clattn__enqueue(ctx, kn->commit, 1, g_c, NULL, event));
    } else if (event) {
        CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
    }
    return CLATTN_SUCCESS;
}

/* One try with the plan's form: kernels, staging, launches, read-back; a failure leaves
 * every output as it was. */
static clattn_status run_form(clattn_context *ctx, const clattn__bwd_problem *bp,
                              const bwd_plan *pl, cl_event *event)
{
    bwd_state s;
    memset(&s, 0, sizeof s);
    s.dp.p = &bp->p;
    /* the kernels first: a build failure must come before anything is allocated or queued
     * (the build options need only the problem's dtypes and features) */
    bwd_kernels kn;
    memset(&kn, 0, sizeof kn);
    CLATTN_FORWARD(get_kernels(ctx, bp, &s.dp, pl, &kn));
    clattn_status st = stage_all(ctx, bp, pl, &s);
    cl_event ev = NULL;
    if (st == CLATTN_SUCCESS) st = enqueue_all(ctx, &kn, pl, &s, event ? &ev : NULL);
    if (st == CLATTN_SUCCESS) st = download(ctx, &s);
    state_release(ctx, &s);
    if (st != CLATTN_SUCCESS) {
        if (ev) clReleaseEvent(ev);
        return st;
    }
    if (event) *event = ev;
    return CLATTN_SUCCESS;
}

clattn_status clattn_attention_backward(clattn_context *ctx, const clattn_tensor *q,
                                        const clattn_tensor *k, const clattn_tensor *v,
                                        const clattn_tensor *o, const clattn_tensor *d_o,
                                        const clattn_tensor *lse, clattn_tensor *dq,
                                        clattn_tensor *dk, clattn_tensor *dv,
                                        clattn_tensor *d_mask, const clattn_options *opt,
                                        cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    clattn__bwd_problem bp;
    char err[1024];
    clattn_status st = clattn__bwd_problem_init(&bp, q, k, v, o, d_o, lse, dq, dk, dv, d_mask,
                                                d_mask != NULL, opt, false, err, sizeof err);
    if (st != CLATTN_SUCCESS) return clattn__fail(ctx, st, "%s", err);
    const clattn__problem *p = &bp.p;
    /* key and row indices are ints in the kernels' local arrays */
    CLATTN_RETURN_IF(ctx, p->Lk > INT_MAX - 1024 || p->Lq > INT_MAX - 1024,
                     CLATTN_ERROR_INVALID_SHAPE, "backward: more than 2^31 - 1025 keys or queries");

    /* opt->path: auto tries the tiled forms and falls back to the unfused form when they
     * fail to build or run; fused and unfused run that one only */
    clattn_path want = opt ? opt->path : CLATTN_PATH_AUTO;
    CLATTN_RETURN_IF(ctx, want != CLATTN_PATH_AUTO && want != CLATTN_PATH_FUSED && want != CLATTN_PATH_UNFUSED,
                     CLATTN_ERROR_PATH_UNSUPPORTED,
                     "backward: path '%s' has no backward pass (auto, fused or unfused)",
                     clattn_path_name(want));
    /* CLATTN_PATH forces fused or unfused here too; the forward-only paths it may name
     * for a whole run leave the backward in auto mode */
    clattn_path env_path;
    if (want == CLATTN_PATH_AUTO && ctx->env.path[0] &&
        clattn_path_from_name(ctx->env.path, &env_path) == CLATTN_SUCCESS &&
        (env_path == CLATTN_PATH_FUSED || env_path == CLATTN_PATH_UNFUSED))
        want = env_path;
    bwd_plan pl;
    char first[512] = "";
    if (want != CLATTN_PATH_UNFUSED) {
        /* the tuned form, then (after a build failure, remembered for the problem's class
         * on ctx) the other tiled form */
        for (int tries = 0; tries < clattn__tform_count(CLATTN__TP_BACKWARD); tries++) {
            make_plan(ctx, &bp, &pl);
            clattn__running_path_set(ctx, CLATTN_PATH_FUSED); /* for CLATTN_FAIL_PATH, as dispatch does */
            st = run_form(ctx, &bp, &pl, event);
            clattn__running_path_set(ctx, CLATTN_PATH_AUTO);
            if (st == CLATTN_SUCCESS) {
                clattn__backward_last_form = pl.form;
                return st;
            }
            if (st != CLATTN_ERROR_BUILD_FAILED || clattn__backward_force_form >= 0 ||
                !clattn__tuning_form_failed(ctx, CLATTN__TP_BACKWARD, p, pl.form))
                break;
        }
        if (want == CLATTN_PATH_FUSED) return st;
        /* outputs are untouched by a failed call, so the fallback starts clean */
        snprintf(first, sizeof first, "%.500s", ctx->last_error);
        clattn__log(ctx, "backward: the tiled forms failed (%s); the unfused form runs", first);
    }
    memset(&pl, 0, sizeof pl);
    pl.form = 2;
    clattn__running_path_set(ctx, CLATTN_PATH_UNFUSED);
    st = run_form(ctx, &bp, &pl, event);
    clattn__running_path_set(ctx, CLATTN_PATH_AUTO);
    if (st == CLATTN_SUCCESS) clattn__backward_last_form = 2;
    if (st != CLATTN_SUCCESS && *first) {
        char second[512];
        snprintf(second, sizeof second, "%.500s", ctx->last_error);
        return clattn__fail(ctx, st, "backward: the tiled forms failed (%s), and the unfused form too (%s)",
                            first, second);
    }
    return st;
}

