/* clattn_attention_backward: the gradients of attention on the device with the kernels of
 * cl/backward.cl (FlashAttention-2's schedule, no atomics, deterministic). Inputs are
 * staged as the forward call stages them; every output is written into scratch (staging
 * copies for host outputs, copies of the caller's spans for cl_mem outputs) and reaches
 * the caller only after every launch was queued: one commit launch for cl_mem outputs, an
 * all-or-nothing read-back for host ones. So a failed call leaves every output as it was.
 * Memory beyond the tensors: one float per query row (D = rowsum(dO ∘ O)). */
#include "backward.h"
#include "context.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Tile sizes of cl/backward.cl (BM query rows x BN keys per tile, WG work-items). One
 * portable form, sized so its local arrays fit 32 KiB (the smallest local memory among the
 * GPUs clattn targets), which the plan below enforces by halving the tiles. These are the
 * starting values, not measured optima; the tuning layer is to take them over. The CPU
 * row uses 64 work-items: PoCL runs a work-group's items as a loop on one core, and
 * smaller groups left more per-group overhead in a first look (docs/backward.md). */
static const struct {
    clattn_device_type type; /* 0 = any device (the default row, last) */
    int form;                /* 0: CPU form (MB rows per work-item, no local memory);
                                1: work-groups of WG with BM x BN local tiles */
    int bm, bn, wg, mb, kw; /* kw: CPU form, keys per tile in float16 vectors */
} bwd_tile_rows[] = {
    /* type               form bm  bn  wg   mb  kw */
    {CLATTN_DEVICE_CPU,   0,   32, 16, 64,  4,  2},
    {0,                   1,   32, 16, 128, 4,  2},
};

/* Testing only: -1 = the form the table gives the device; 0 or 1 forces one. */
int clattn__backward_force_form = -1;
#define BWD_LOCAL_BUDGET 32768u

typedef struct bwd_plan {
    int form, bm, bn, wg, mb, kw;
    bool k_direct; /* CPU form: dQ reads K's rows in place (f32, unit stride, D % 16 == 0) */
    int64_t nt; /* CPU form: key tiles of 16 * kw */
} bwd_plan;

static uint64_t local_bytes(const clattn__problem *p, int bm, int bn)
{
    return 4u * ((uint64_t)(bm + bn) * (uint64_t)(p->D + p->Dv) + 2u * (uint64_t)bm * (uint64_t)bn +
                 4u * (uint64_t)bm);
}

static void make_plan(const clattn_context *ctx, const clattn__problem *p, bwd_plan *pl)
{
    size_t row = sizeof bwd_tile_rows / sizeof bwd_tile_rows[0] - 1;
    for (size_t i = 0; i < row; i++)
        if (bwd_tile_rows[i].type == ctx->props.type) {
            row = i;
            break;
        }
    pl->form = clattn__backward_force_form >= 0 ? clattn__backward_force_form : bwd_tile_rows[row].form;
    pl->mb = bwd_tile_rows[row].mb;
    pl->kw = bwd_tile_rows[row].kw;
    pl->nt = (p->Lk + 16 * pl->kw - 1) / (16 * pl->kw);
    pl->k_direct = p->k->dtype == CLATTN_F32 && p->k->nb[3] == (int64_t)sizeof(float) &&
                   p->D % 16 == 0;
    pl->bm = bwd_tile_rows[row].bm;
    pl->bn = bwd_tile_rows[row].bn;
    pl->wg = bwd_tile_rows[row].wg;
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
    cl_kernel rowdot, dkdv, dq, dmask, commit, pack; /* pack: CPU form only */
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
    cl_mem kt, vt, kp; /* the CPU form's packed K and V (cl/backward.cl) */
    cl_mem qp, dop;    /* and its dense float32 rows of Q and dO */
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
    clattn__buffer_release(ctx, s->kt);
    clattn__buffer_release(ctx, s->vt);
    clattn__buffer_release(ctx, s->kp);
    clattn__buffer_release(ctx, s->qp);
    clattn__buffer_release(ctx, s->dop);
    s->dl = s->kt = s->vt = s->kp = s->qp = s->dop = NULL;
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
    /* cl_mem outputs: kernels write a copy of the caller's span (padding included) */
    for (int i = 0; i < 4; i++) {
        clattn__dev_tensor *d = &s->out[i];
        if (!d->mem || d->owned) continue;
        bwd_shadow *sh = &s->sh[i];
        clattn__tensor_span(d->src, &sh->span);
        if (!sh->span) continue;
        sh->base = d->src->offset;
        sh->dst = d->mem;
        CLATTN_FORWARD(clattn__buffer_create(ctx, sh->span, &sh->scratch));
        CLATTN_FORWARD(clattn__enqueue_copy(ctx, d->mem, sh->base, sh->scratch, 0, sh->span));
        d->mem = sh->scratch;
        d->off = 0;
    }
    const int64_t rows = p->B * p->Hq * p->Lq;
    if (pl->form == 0) {
        const size_t keys = (size_t)(p->B * p->Hkv * (pl->nt > 0 ? pl->nt : 1) * 16 * pl->kw);
        const size_t dp = (size_t)((p->D + 15) / 16 * 16);
        CLATTN_FORWARD(clattn__buffer_create(ctx, keys * (size_t)p->D * sizeof(float), &s->kt));
        CLATTN_FORWARD(clattn__buffer_create(ctx, keys * (size_t)p->Dv * sizeof(float), &s->vt));
        if (!pl->k_direct)
            CLATTN_FORWARD(clattn__buffer_create(ctx, keys * dp * sizeof(float), &s->kp));
        const size_t nrows = (size_t)(rows > 0 ? rows : 1);
        CLATTN_FORWARD(clattn__buffer_create(ctx, nrows * (size_t)p->D * sizeof(float), &s->qp));
        CLATTN_FORWARD(clattn__buffer_create(ctx, nrows * (size_t)p->Dv * sizeof(float), &s->dop));
    }
    return clattn__buffer_create(ctx, (size_t)(rows > 0 ? rows : 1) * sizeof(float), &s->dl);
}

/* Host outputs: every read-back must succeed before the first caller byte changes. */
static clattn_status download(clattn_context *ctx, bwd_state *s)
{
    void *tmp[4] = {NULL, NULL, NULL, NULL};
    clattn_status st = CLATTN_SUCCESS;
    for (int i = 0; i < 4 && st == CLATTN_SUCCESS; i++) {
        const clattn__dev_tensor *d = &s->out[i];
        if (!d->download || !d->mem || !d->span) continue;
        tmp[i] = malloc(d->span);
        if (!tmp[i])
            st = clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "reading gradients back: out of host memory");
        else
            st = clattn__read(ctx, d->mem, 0, d->span, tmp[i]);
    }
    for (int i = 0; i < 4; i++) {
        if (st == CLATTN_SUCCESS && tmp[i])
            memcpy((char *)s->out[i].src->host + s->out[i].span_base, tmp[i], s->out[i].span);
        free(tmp[i]);
    }
    return st;
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
              (pl->form == 0 ? clattn__opts_add(opts, sizeof opts, " -DMB=%d -DKW=%d -DK_DIRECT=%d", pl->mb,
                                                pl->kw, pl->k_direct ? 1 : 0)
                             : clattn__opts_add(opts, sizeof opts, " -DBM=%d -DBN=%d -DWG=%d",
                                                pl->bm, pl->bn, pl->wg));
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "backward: build options too long");
    if (pl->form == 0) {
        clattn__log(ctx, "backward: backward.cl CPU form, mb %d", pl->mb);
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_cpu_pack", &kn->pack));
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_cpu_dkdv", &kn->dkdv));
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_cpu_dq", &kn->dq));
    } else {
        clattn__log(ctx, "backward: backward.cl GPU form, bm %d, bn %d, wg %d", pl->bm, pl->bn,
                    pl->wg);
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_dkdv", &kn->dkdv));
        CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_dq", &kn->dq));
    }
    CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_rowdot", &kn->rowdot));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_dmask", &kn->dmask));
    CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_commit", &kn->commit));
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
                                      const bwd_plan *pl, bwd_state *s)
{
    const clattn__problem *p = s->dp.p;
    const cl_long B = p->B, Hkv = p->Hkv, Lk = p->Lk, nt = pl->nt;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->pack, &a, &s->dp.k));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->pack, &a, &s->dp.v));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->pack, &a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->pack, &a, Hkv));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->pack, &a, Lk));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->pack, &a, nt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->pack, &a, s->kt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->pack, &a, s->vt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->pack, &a, s->kp));
    const size_t g_pack[2] = {(size_t)(nt * 16 * pl->kw), (size_t)(p->B * p->Hkv)}, l_pack[2] = {16, 1};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->pack, 2, g_pack, l_pack, NULL));

    a = 0;
    CLATTN_FORWARD(set_inputs(ctx, kn->dkdv, &a, s));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[1]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dkdv, &a, &s->out[2]));
    CLATTN_FORWARD(set_tail(ctx, kn->dkdv, &a, s));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->kt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->vt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, nt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->qp));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dkdv, &a, s->dop));
    const size_t g_kv[2] = {(size_t)nt, (size_t)(p->B * p->Hkv)}, l1[2] = {1, 1};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->dkdv, 2, g_kv, l1, NULL));

    a = 0;
    CLATTN_FORWARD(set_inputs(ctx, kn->dq, &a, s));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dq, &a, &s->out[0]));
    CLATTN_FORWARD(set_tail(ctx, kn->dq, &a, s));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, s->kt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, s->vt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, s->kp));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, nt));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, s->qp));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dq, &a, s->dop));
    const size_t g_q[2] = {(size_t)((p->Lq + pl->mb - 1) / pl->mb), (size_t)(p->B * p->Hq)};
    return clattn__enqueue(ctx, kn->dq, 2, g_q, l1, NULL);
}

static clattn_status enqueue_all(clattn_context *ctx, const bwd_kernels *kn, const bwd_plan *pl,
                                 bwd_state *s, cl_event *event)
{
    const clattn__problem *p = s->dp.p;
    const cl_long B = p->B, Hq = p->Hq, Lq = p->Lq;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->dp.q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->dp.o));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->rowdot, &a, &s->d_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->dl));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->qp)); /* NULL: the GPU form */
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, s->dop));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kn->rowdot, &a, Lq));
    const size_t g_row[1] = {(size_t)(p->B * p->Hq * p->Lq)}, l_row[1] = {64};
    CLATTN_FORWARD(clattn__enqueue(ctx, kn->rowdot, 1, g_row, l_row, NULL));

    if (pl->form == 0)
        CLATTN_FORWARD(enqueue_cpu_form(ctx, kn, pl, s));
    else
        CLATTN_FORWARD(enqueue_gpu_form(ctx, kn, pl, s));

    if (s->out[3].mem) {
        const clattn_tensor *m = p->mask;
        const cl_long ne[4] = {m->ne[0], m->ne[1], m->ne[2], m->ne[3]};
        a = 0;
        CLATTN_FORWARD(set_inputs(ctx, kn->dmask, &a, s));
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
        const cl_ulong off = sh->base / 2, n = sh->scratch ? sh->span / 2 : 0;
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

    bwd_plan pl;
    make_plan(ctx, p, &pl);
    bwd_state s;
    memset(&s, 0, sizeof s);
    s.dp.p = p;
    /* the kernels first: a build failure must come before anything is allocated or queued
     * (the build options need only the problem's dtypes and features) */
    bwd_kernels kn;
    memset(&kn, 0, sizeof kn);
    CLATTN_FORWARD(get_kernels(ctx, &bp, &s.dp, &pl, &kn));
    st = stage_all(ctx, &bp, &pl, &s);
    cl_event ev = NULL;
    if (st == CLATTN_SUCCESS) st = enqueue_all(ctx, &kn, &pl, &s, event ? &ev : NULL);
    if (st == CLATTN_SUCCESS) st = download(ctx, &s);
    state_release(ctx, &s);
    if (st != CLATTN_SUCCESS) {
        if (ev) clReleaseEvent(ev);
        return st;
    }
    if (event) *event = ev;
    return CLATTN_SUCCESS;
}
