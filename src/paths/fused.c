/* The fused path: flash attention in one pass over the keys with an online softmax, O
 * and LSE written once, never an Lq x Lk score matrix (cl/flash_cpu.cl on CPUs,
 * cl/flash_gpu.cl and cl/flash_gpu_mm.cl on GPUs; the form comes from the tuning table,
 * each form is a row of fused_forms). The CPU form's only scratch is a packed float32
 * copy of K and V (linear in Lk), made per call by the file's pack kernel; when the copy
 * for every (batch, KV head) exceeds the workspace bound, the heads are done in groups
 * that fit. The CPU and GPU forms also run packed (varlen) sequences in one launch
 * (fused_varlen.h). */
#include "core/program.h"
#include "core/kernel_args.h"
#include "paths/form_fallback.h"
#include "paths/fused_varlen.h"
#include "core/device.h"
#include "core/probe.h"
#include "tuning/tuning.h"

#include <stdlib.h>
#include <string.h>

/* The kernel parameters of one call: the tuning row adjusted to the device and p. */
typedef struct fused_plan {
    int form, block_m, block_n, dv_chunk, row_groups, wg, tc, vw;
    int sg;         /* gpu-mm: 1 = subgroup reductions (probed: subgroups of tc work-items) */
    bool sg_intel;  /* through cl_intel_subgroups rather than cl_khr_subgroups */
    int64_t lk_pad; /* keys of the packed copies: Lk rounded up to block_n (at least one tile) */
    int64_t dv_pad; /* row length of the packed V */
    bool v_direct;  /* CPU form: V is read in place (f32, unit stride along Dv, Dv % 16 == 0) */
    clattn__tsource src; /* where the tuning row came from */
    const clattn__varlen_seqs *vl; /* packed sequences in one launch (-DVARLEN), or NULL */
} fused_plan;

/* One kernel form of the path, indexed by the form number of the tuning layer (tuning.c's
 * fallback order): adding a form is adding a row to fused_forms and its functions. */
typedef struct fused_form {
    const char *file;   /* in cl/ */
    const char *kernel; /* the main kernel */
    bool varlen;        /* runs packed sequences in one launch (fused_varlen.h) */
    /* Fit the tuning row's tiles and work-group to the device and p (local memory, the
     * work-group limit). probe_ctx: as for fused_make_plan. */
    void (*fit)(const clattn_context *ctx, clattn_context *probe_ctx, const clattn__problem *p,
                fused_plan *pl);
    /* Can the fitted plan run p on ctx's device? If not, *why says why. */
    bool (*fits)(const clattn_context *ctx, const clattn__problem *p, const fused_plan *pl,
                 const char **why);
    /* The form's own build options, appended to opts (NULL: none). */
    bool (*options)(const clattn__dev_problem *dp, const fused_plan *pl, char *opts, size_t cap);
    /* Get the form's kernels (built with opts), set their arguments and enqueue them. */
    clattn_status (*launch)(clattn_context *ctx, const struct fused_form *f, const clattn__dev_problem *dp,
                            const fused_plan *pl, const char *opts, cl_event *event);
} fused_form;

static const fused_form *fused_form_at(int form);

static int64_t ceil_to(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

/* probe_ctx: the context again where the plan may probe the variants (a run), NULL where
 * it must not (fused_supports: the variants do not change what fits). */
static void fused_make_plan(const clattn_context *ctx, clattn_context *probe_ctx, const clattn__problem *p,
                            fused_plan *pl)
{
    pl->sg = 0;
    pl->sg_intel = false;
    pl->vl = NULL;
    /* the packed V only converts and pads: skip it when V already is f32 rows of whole
     * float16 vectors (the kernel reads V as float16 vectors) */
    pl->v_direct = p->v->dtype == CLATTN_F32 && p->v->nb[3] == (int64_t)sizeof(float) &&
                   p->Dv % 16 == 0;
    clattn__trow tu;
    clattn__tuning_row_for(ctx, CLATTN__TP_FUSED, p, -1, &tu, &pl->src);
    const int form = clattn__tuning_form(ctx, CLATTN__TP_FUSED, p, &tu);
    if (form != tu.form) clattn__tuning_apply_form(CLATTN__TP_FUSED, form, &tu); /* a fallback */
    pl->form = tu.form;
    pl->block_m = tu.block_m;
    pl->block_n = tu.block_n;
    pl->dv_chunk = tu.dv_chunk;
    pl->row_groups = tu.row_groups > 0 ? tu.row_groups : 1;
    pl->wg = tu.wg;
    pl->tc = tu.tc;
    pl->vw = tu.vw;
    fused_form_at(pl->form)->fit(ctx, probe_ctx, p, pl);
    pl->lk_pad = ceil_to(p->Lk > 0 ? p->Lk : 1, pl->block_n);
    pl->dv_pad = ceil_to(p->Dv, 16);
}

/* The work-group within the device's limit (the forms without a shape of their own). */
static void shrink_wg(const clattn_context *ctx, fused_plan *pl)
{
    while (pl->wg > 1 && (size_t)pl->wg > ctx->props.max_work_group_size) pl->wg >>= 1;
}

static void cpu_fit(const clattn_context *ctx, clattn_context *probe_ctx, const clattn__problem *p,
                    fused_plan *pl)
{
    (void)probe_ctx;
    /* one row group when the tuned count would leave compute units idle (fewer than 4
     * work-items per unit). Nothing in between: ROW_GROUPS is a build option, and
     * problems that small gain nothing measurable from 2 or 3 groups, while each
     * value would cost a kernel build of its own. */
    const int64_t want = 4 * (int64_t)(ctx->props.compute_units ? ctx->props.compute_units : 1);
    const int64_t blocks = p->B * p->Hq * ((p->Lq + pl->block_m - 1) / pl->block_m);
    if ((blocks + pl->row_groups - 1) / pl->row_groups < want) pl->row_groups = 1;
    shrink_wg(ctx, pl);
}

/* Local memory of the GPU form in bytes (cl/flash_gpu.cl's qs, kvs, ps and red). */
static uint64_t gpu_local_bytes(const clattn__problem *p, int block_m, int block_n)
{
    return clattn__fused_gpu_local_bytes(p->D, p->Dv, block_m, block_n);
}

static void gpu_fit(const clattn_context *ctx, clattn_context *probe_ctx, const clattn__problem *p,
                    fused_plan *pl)
{
    (void)probe_ctx;
    /* work-groups of 16 x TR work-items; BLOCK_M a multiple of TR; the tiles shrink
     * until the local arrays fit half the local memory (two groups per unit) */
    while (pl->wg > 16 && (size_t)pl->wg > ctx->props.max_work_group_size) pl->wg >>= 1;
    if (pl->wg < 16) pl->wg = 16;
    const uint64_t budget = ctx->props.local_mem_bytes / 2;
    while (gpu_local_bytes(p, pl->block_m, pl->block_n) > budget) {
        if (pl->block_n > 16) pl->block_n >>= 1;
        else if (pl->block_m > pl->wg / 16) pl->block_m >>= 1;
        else if (pl->wg > 16) {
            pl->wg >>= 1;
            pl->block_m = pl->wg / 16;
        } else break;
    }
    if (pl->block_m < pl->wg / 16) pl->block_m = pl->wg / 16;
}

static void mm_fit(const clattn_context *ctx, clattn_context *probe_ctx, const clattn__problem *p,
                   fused_plan *pl)
{
    /* gpu-mm: WG = (WG / TC) x TC work-items, every tile value a power of two; the
     * work-group shrinks to the device's limit, then the tiles (keys first, then
     * rows, then the work-group) until they fit the local memory */
    const uint64_t budget = ctx->props.local_mem_bytes;
    while (pl->wg > pl->tc && (size_t)pl->wg > ctx->props.max_work_group_size) pl->wg >>= 1;
    if (pl->block_m < pl->wg / pl->tc) pl->block_m = pl->wg / pl->tc;
    while (clattn__fused_gpu_mm_local_bytes(p->D, p->Dv, pl->block_m, pl->block_n, pl->tc) > budget) {
        if (pl->block_n > pl->tc) pl->block_n >>= 1;
        else if (pl->block_m > pl->wg / pl->tc) pl->block_m >>= 1;
        else if (pl->wg > pl->tc) {
            pl->wg >>= 1;
            pl->block_m = pl->wg / pl->tc;
        } else break;
    }
    /* the subgroup variant, where the probe measured subgroups of exactly tc */
    int sgsize = 0;
    if (probe_ctx && clattn__variant_usable(probe_ctx, CLATTN__VAR_SUBGROUPS, &sgsize, NULL, 0) &&
        sgsize == pl->tc) {
        pl->sg = 1;
        pl->sg_intel = !clattn__device_has_extension(ctx->device, "cl_khr_subgroups") &&
                       clattn__device_has_extension(ctx->device, "cl_intel_subgroups");
    }
    shrink_wg(ctx, pl);
}

/* gpu-mm: Q and K (V) rows contiguous along the head dim, a multiple of 4, stored as f32
 * or f16: the kernel loads them as 4-vectors (vload4 / vload_half4). */
static bool qk_vec(const clattn__dev_problem *dp)
{
    const clattn__problem *p = dp->p;
    return dp->q.st[3] == 1 && dp->k.st[3] == 1 && p->D % 4 == 0 && p->q->dtype != CLATTN_BF16 &&
           p->k->dtype != CLATTN_BF16;
}

static bool v_vec(const clattn__dev_problem *dp)
{
    const clattn__problem *p = dp->p;
    return dp->v.st[3] == 1 && p->Dv % 4 == 0 && p->v->dtype != CLATTN_BF16;
}

/* Bytes of the packed K and V of one (batch, KV head). */
static uint64_t head_bytes(const clattn__problem *p, const fused_plan *pl)
{
    return (uint64_t)pl->lk_pad * (uint64_t)(p->D + (pl->v_direct ? 0 : pl->dv_pad)) * sizeof(float);
}

static bool cpu_fits(const clattn_context *ctx, const clattn__problem *p, const fused_plan *pl,
                     const char **why)
{
    if (head_bytes(p, pl) > clattn__scratch_cap(ctx)) {
        *why = "the packed K and V of one head exceed the workspace bound";
        return false;
    }
    return true;
}

static bool gpu_fits(const clattn_context *ctx, const clattn__problem *p, const fused_plan *pl,
                     const char **why)
{
    if (gpu_local_bytes(p, pl->block_m, pl->block_n) > ctx->props.local_mem_bytes) {
        *why = "the GPU form's tiles do not fit the device's local memory";
        return false;
    }
    return true;
}

static bool mm_fits(const clattn_context *ctx, const clattn__problem *p, const fused_plan *pl,
                    const char **why)
{
    if (clattn__fused_gpu_mm_local_bytes(p->D, p->Dv, pl->block_m, pl->block_n, pl->tc) >
        ctx->props.local_mem_bytes) {
        *why = "the gpu-mm form's tiles do not fit the device's local memory";
        return false;
    }
    return true;
}

static bool fused_supports(const clattn_context *ctx, const clattn__problem *p, const char **why)
{
    fused_plan pl;
    fused_make_plan(ctx, NULL, p, &pl);
    /* key indices are int lanes in the kernels */
    if (p->Lk > (int64_t)0x7fffffff - 2 * pl.block_n) {
        *why = "more than 2^31 keys";
        return false;
    }
    return fused_form_at(pl.form)->fits(ctx, p, &pl, why);
}

/* dp restricted to batches [b0, b0+nb) and KV heads [g0, g0+ng) (with their query
 * heads): every tensor keeps its buffer and strides, only element offsets move. */
static void shift_problem(const clattn__dev_problem *dp, int64_t b0, int64_t g0,
                          clattn__dev_problem *out)
{
    *out = *dp;
    const cl_long h0 = (cl_long)(g0 * dp->p->group);
    out->q.off += b0 * dp->q.st[0] + h0 * dp->q.st[1];
    out->o.off += b0 * dp->o.st[0] + h0 * dp->o.st[1];
    out->k.off += b0 * dp->k.st[0] + g0 * dp->k.st[1];
    out->v.off += b0 * dp->v.st[0] + g0 * dp->v.st[1];
    if (dp->lse.mem) out->lse.off += b0 * dp->lse.st[0] + h0 * dp->lse.st[1];
    if (dp->mask.mem) out->mask.off += b0 * dp->mask.st[0] + h0 * dp->mask.st[1];
    if (dp->kv_lens.mem) out->kv_lens.off += b0 * dp->kv_lens.st[0];
    if (dp->alibi.mem) out->alibi.off += h0 * dp->alibi.st[0];
}

/* The arguments every form's main kernel begins with (FLASH_PARAMS in cl/prelude.cl): q,
 * k, v, o, lse, MASK_PARAMS, B, Hq, Hkv. */
static clattn_status set_main_args(clattn_context *ctx, cl_kernel k, cl_uint *a,
                                   const clattn__dev_problem *sp, cl_long B, cl_long Hq,
                                   cl_long Hkv)
{
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &sp->q));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &sp->k));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &sp->v));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, a, &sp->o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, sp->lse.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, sp->lse.off));
    for (int i = 0; i < 3; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, sp->lse.st[i]));
    CLATTN_FORWARD(clattn__set_mask_args(ctx, k, a, sp));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, B));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, Hkv));
    return CLATTN_SUCCESS;
}

static bool cpu_options(const clattn__dev_problem *dp, const fused_plan *pl, char *opts, size_t cap)
{
    (void)dp;
    return clattn__opts_add(opts, cap, " -DDV_CHUNK=%d -DROW_GROUPS=%d -DV_DIRECT=%d", pl->dv_chunk,
                            pl->row_groups, pl->v_direct ? 1 : 0);
}

static bool mm_options(const clattn__dev_problem *dp, const fused_plan *pl, char *opts, size_t cap)
{
    return clattn__opts_add(opts, cap, " -DTC=%d -DQK_VEC=%d -DV_VEC=%d -DSG_REDUCE=%d -DSG_INTEL=%d",
                            pl->tc, pl->vw == 4 && qk_vec(dp), pl->vw == 4 && v_vec(dp), pl->sg,
                            pl->sg_intel ? 1 : 0);
}

/* Blocks of `rows` query rows: work-items (CPU) / work-groups (GPU) along the query rows. */
static int64_t row_blocks(const clattn__problem *p, int64_t rows) { return (p->Lq + rows - 1) / rows; }

/* Row blocks of `rows` rows of the packed sequences vs, every sequence's. */
static int64_t varlen_blocks(const clattn__varlen_seqs *vs, int64_t rows)
{
    int64_t n = 0;
    for (size_t s = 0; s < vs->n; s++) n += (vs->cu_q[s + 1] - vs->cu_q[s] + rows - 1) / rows;
    return n;
}

/* The varlen table (the layout cl/prelude.cl's VL_ macros read): cu_q, cu_k, each
 * sequence's first key in the CPU form's packed copies (its keys padded to whole tiles
 * of pl->block_n) and first row block, the row blocks' first rows (blocks of `rows` rows,
 * each sequence's in the order 0, n-1, 1, n-2, ...: with causal masks a block's cost
 * grows with its index, and this keeps consecutive work-items near the average cost) and
 * each tile's sequence; *blocks gets the number of row blocks. */
static clattn_status varlen_table(clattn_context *ctx, const fused_plan *pl, int64_t rows,
                                  cl_mem *mem, cl_long *blocks)
{
    const clattn__varlen_seqs *vs = pl->vl;
    const size_t n = vs->n, nblk = (size_t)varlen_blocks(vs, rows);
    const size_t ntiles = (size_t)(pl->lk_pad / pl->block_n), len = 4 * (n + 1) + nblk + ntiles;
    int32_t *t = calloc(len, sizeof *t); /* tiles past every sequence's (none when any
                                            sequence has keys) belong to sequence 0 */
    CLATTN_RETURN_IF(ctx, !t, CLATTN_ERROR_OUT_OF_MEMORY, "fused: out of host memory");
    int32_t *kpad = t + 2 * (n + 1), *bstart = kpad + n + 1, *blk = bstart + n + 1,
            *tile = blk + nblk;
    memcpy(t, vs->cu_q, (n + 1) * sizeof *t);
    memcpy(t + n + 1, vs->cu_k, (n + 1) * sizeof *t);
    for (size_t s = 0; s < n; s++) {
        const int32_t lk = vs->cu_k[s + 1] - vs->cu_k[s];
        kpad[s + 1] = kpad[s] + (int32_t)ceil_to(lk, pl->block_n);
        for (int32_t j = kpad[s]; j < kpad[s + 1]; j += pl->block_n) tile[j / pl->block_n] = (int32_t)s;
        const int32_t nb = (int32_t)((vs->cu_q[s + 1] - vs->cu_q[s] + rows - 1) / rows);
        bstart[s + 1] = bstart[s] + nb;
        for (int32_t g = 0; g < nb; g++)
            blk[bstart[s] + g] = (int32_t)rows * ((g & 1) ? nb - 1 - (g >> 1) : (g >> 1));
    }
    *blocks = (cl_long)nblk;
    clattn_status st = clattn__buffer_create_copy(ctx, len * sizeof *t, t, mem);
    free(t);
    return st;
}

/* The varlen arguments the kernels end with (VARLEN_PARAMS in cl/prelude.cl). */
static clattn_status set_varlen_args(clattn_context *ctx, cl_kernel k, cl_uint *a, cl_mem vtab,
                                     cl_long n, cl_long blocks)
{
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, vtab));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, a, n));
    return CLATTN_ARG(ctx, k, a, blocks);
}

/* The GPU forms' one launch: work-groups of wg work-items, global size g. */
static clattn_status launch_one(clattn_context *ctx, const fused_form *f, const clattn__dev_problem *dp,
                                const fused_plan *pl, const char *opts, const size_t g[2], cl_event *event)
{
    const clattn__problem *p = dp->p;
    cl_kernel kmain;
    CLATTN_FORWARD(clattn__kernel_get(ctx, f->file, opts, f->kernel, &kmain));
    cl_uint a = 0;
    CLATTN_FORWARD(set_main_args(ctx, kmain, &a, dp, p->B, p->Hq, p->Hq / p->group));
    cl_mem vtab = NULL; /* packed sequences (pl->vl): their table, row blocks of block_m */
    cl_long vl_blocks = 0;
    clattn_status st = CLATTN_SUCCESS;
    if (pl->vl) {
        CLATTN_FORWARD(varlen_table(ctx, pl, pl->block_m, &vtab, &vl_blocks));
        st = set_varlen_args(ctx, kmain, &a, vtab, (cl_long)pl->vl->n, vl_blocks);
    }
    const size_t l[2] = {(size_t)pl->wg, 1};
    if (st == CLATTN_SUCCESS) st = clattn__enqueue(ctx, kmain, 2, g, l, event);
    clattn__buffer_release(ctx, vtab);
    return st;
}

static clattn_status mm_launch(clattn_context *ctx, const fused_form *f, const clattn__dev_problem *dp,
                               const fused_plan *pl, const char *opts, cl_event *event)
{
    const clattn__problem *p = dp->p;
    clattn__log(ctx, "fused: flash_gpu_mm.cl, block_m %d, block_n %d, wg %d = %d x %d, vw %d%s "
                "(tuning: %s)", pl->block_m, pl->block_n, pl->wg, pl->wg / pl->tc, pl->tc, pl->vw,
                pl->sg ? ", subgroup reductions" : "", pl->src.text);
    /* (b, h) along dimension 0, the row blocks along 1 (in zigzag order in the kernel) */
    const size_t g[2] = {(size_t)(p->B * p->Hq * pl->wg), (size_t)row_blocks(p, pl->block_m)};
    return launch_one(ctx, f, dp, pl, opts, g, event);
}

static clattn_status gpu_launch(clattn_context *ctx, const fused_form *f, const clattn__dev_problem *dp,
                                const fused_plan *pl, const char *opts, cl_event *event)
{
    const clattn__problem *p = dp->p;
    clattn__log(ctx, "fused: flash_gpu.cl, block_m %d, block_n %d, wg %d (tuning: %s)", pl->block_m,
                pl->block_n, pl->wg, pl->src.text);
    const int64_t nblk = pl->vl ? varlen_blocks(pl->vl, pl->block_m) : row_blocks(p, pl->block_m);
    const size_t g[2] = {(size_t)(nblk * pl->wg), (size_t)(p->B * p->Hq)};
    return launch_one(ctx, f, dp, pl, opts, g, event);
}

static clattn_status cpu_launch(clattn_context *ctx, const fused_form *f, const clattn__dev_problem *dp,
                                const fused_plan *plan, const char *opts, cl_event *event)
{
    const clattn__problem *p = dp->p;
    const fused_plan pl = *plan;
    const int64_t Hkv = p->Hq / p->group;
    int64_t nblk = row_blocks(p, (int64_t)pl.block_m * pl.row_groups);
    cl_mem vtab = NULL; /* the varlen table (varlen_table), with pl.vl */
    cl_long vl_n = 0, vl_blocks = 0;
    if (pl.vl) {
        CLATTN_FORWARD(varlen_table(ctx, &pl, (int64_t)pl.block_m * pl.row_groups, &vtab, &vl_blocks));
        vl_n = (cl_long)pl.vl->n;
        nblk = vl_blocks;
    }
    cl_kernel kpack, kmain;
    clattn_status st = clattn__kernel_get(ctx, f->file, opts, "flash_cpu_pack", &kpack);
    if (st == CLATTN_SUCCESS) st = clattn__kernel_get(ctx, f->file, opts, f->kernel, &kmain);
    if (st != CLATTN_SUCCESS) {
        clattn__buffer_release(ctx, vtab);
        return st;
    }

    /* Heads per launch: all of them if their packed copies fit, else whole batches, else
     * groups of KV heads of one batch. */
    const uint64_t per_head = head_bytes(p, &pl);
    uint64_t cap = clattn__scratch_cap(ctx);
    int64_t nb, ng;
    cl_mem kt = NULL, vp = NULL;
    /* The packed copies; when the device cannot allocate them, fewer heads per launch
     * (half the bytes each time, down to one head) before this path gives up. */
    for (;;) {
        nb = p->B;
        ng = Hkv;
        if ((uint64_t)(p->B * Hkv) * per_head > cap) {
            nb = (int64_t)(cap / (per_head * (uint64_t)Hkv));
            if (nb < 1) {
                nb = 1;
                ng = (int64_t)(cap / per_head);
            }
        }
        CLATTN_RETURN_IF(ctx, ng < 1, CLATTN_ERROR_OUT_OF_MEMORY,
                         "fused: the packed K and V of one head (%llu bytes) exceed the workspace",
                         (unsigned long long)per_head); /* never with pl.vl: cpu_fits */
        const uint64_t heads = (uint64_t)(nb * ng);
        st = clattn__buffer_create(
            ctx, (size_t)(heads * (uint64_t)pl.lk_pad * (uint64_t)p->D * sizeof(float)), &kt);
        if (st == CLATTN_SUCCESS && !pl.v_direct)
            st = clattn__buffer_create(
                ctx, (size_t)(heads * (uint64_t)pl.lk_pad * (uint64_t)pl.dv_pad * sizeof(float)), &vp);
        if (st == CLATTN_SUCCESS) break;
        clattn__buffer_release(ctx, kt);
        kt = NULL;
        /* packed sequences (pl.vl) keep their one launch: the call fails instead */
        if (!clattn__alloc_retryable(st) || heads == 1 || pl.vl) {
            clattn__buffer_release(ctx, vtab);
            return st;
        }
        cap = heads / 2 * per_head;
        clattn__log(ctx, "fused: retrying with %llu head(s) per launch", (unsigned long long)(heads / 2));
    }
    clattn__log(ctx, "fused: flash_cpu.cl, block_m %d x %d groups, block_n %d, dv_chunk %d, wg %d, "
                "V %s, %lld batch(es) x %lld KV head(s) per launch (tuning: %s)",
                pl.block_m, pl.row_groups, pl.block_n, pl.dv_chunk, pl.wg,
                pl.v_direct ? "in place" : "packed", (long long)nb, (long long)ng, pl.src.text);

    /* One launch of the main kernel writes O and LSE only when all heads fit one chunk;
     * else the caller's cl_mem outputs are shadowed (staging.c). */
    clattn__dev_problem shadowed;
    clattn__shadow sh;
    st = clattn__shadow_begin(ctx, dp, nb < p->B || ng < Hkv, &shadowed, &sh);
    cl_event *last_event = sh.active ? NULL : event;
    const clattn__dev_problem *dpw = &shadowed;

    const cl_long lk_pad = pl.lk_pad, Lk = p->Lk;
#define TRY(x)                                                                             \
    if (st == CLATTN_SUCCESS) st = (x)
    for (int64_t b0 = 0; b0 < p->B && st == CLATTN_SUCCESS; b0 += nb) {
        for (int64_t g0 = 0; g0 < Hkv && st == CLATTN_SUCCESS; g0 += ng) {
            const cl_long cb = p->B - b0 < nb ? p->B - b0 : nb;
            const cl_long cg = Hkv - g0 < ng ? Hkv - g0 : ng;
            const cl_long cq = cg * p->group;
            const bool last = b0 + nb >= p->B && g0 + ng >= Hkv;
            clattn__dev_problem sp;
            shift_problem(dpw, b0, g0, &sp);

            cl_uint a = 0;
            TRY(clattn__set_tensor_args(ctx, kpack, &a, &sp.k));
            TRY(clattn__set_tensor_args(ctx, kpack, &a, &sp.v));
            TRY(CLATTN_ARG(ctx, kpack, &a, Lk));
            TRY(CLATTN_ARG(ctx, kpack, &a, cb));
            TRY(CLATTN_ARG(ctx, kpack, &a, cg));
            TRY(CLATTN_ARG(ctx, kpack, &a, kt));
            TRY(CLATTN_ARG(ctx, kpack, &a, vp));
            TRY(CLATTN_ARG(ctx, kpack, &a, lk_pad));
            if (pl.vl) TRY(set_varlen_args(ctx, kpack, &a, vtab, vl_n, vl_blocks));
            /* lk_pad is a multiple of block_n, itself a multiple of 16 */
            size_t gp[2] = {(size_t)lk_pad, (size_t)(cb * cg)}, lp[2] = {16, 1};
            TRY(clattn__enqueue(ctx, kpack, 2, gp, lp, NULL));

            a = 0;
            TRY(set_main_args(ctx, kmain, &a, &sp, cb, cq, cg));
            TRY(CLATTN_ARG(ctx, kmain, &a, kt));
            TRY(CLATTN_ARG(ctx, kmain, &a, vp));
            TRY(CLATTN_ARG(ctx, kmain, &a, lk_pad));
            if (pl.vl) TRY(set_varlen_args(ctx, kmain, &a, vtab, vl_n, vl_blocks));
            size_t g[2] = {(size_t)nblk, (size_t)(cb * cq)}, l[2] = {(size_t)pl.wg, 1};
            TRY(clattn__enqueue(ctx, kmain, 2, g, l, last ? last_event : NULL));
        }
    }
#undef TRY
    if (st == CLATTN_SUCCESS) st = clattn__shadow_commit(ctx, &sh, event);
    clattn__shadow_release(ctx, &sh);
    /* Releasing the scratch while kernels are queued is safe: OpenCL keeps it alive. */
    clattn__buffer_release(ctx, kt);
    clattn__buffer_release(ctx, vp);
    clattn__buffer_release(ctx, vtab);
    return st;
}

static const fused_form fused_forms[] = {
    {"flash_cpu.cl", "flash_cpu", true, cpu_fit, cpu_fits, cpu_options, cpu_launch},
    {"flash_gpu.cl", "flash_gpu", true, gpu_fit, gpu_fits, NULL, gpu_launch},
    {"flash_gpu_mm.cl", "flash_gpu_mm", false, mm_fit, mm_fits, mm_options, mm_launch},
};

static const fused_form *fused_form_at(int form) { return &fused_forms[form]; }

static clattn_status fused_run_plan(clattn_context *ctx, const clattn__dev_problem *dp,
                                    const fused_plan *pl, cl_event *event)
{
    const clattn__problem *p = dp->p;
    const fused_form *f = fused_form_at(pl->form);
    char opts[640] = "";
    bool ok = clattn__mask_options(dp, opts, sizeof opts) &&
              clattn__opts_add(opts, sizeof opts,
                               " -DD=%lld -DDV=%lld -DBLOCK_M=%d -DBLOCK_N=%d -DWG=%d",
                               (long long)p->D, (long long)p->Dv, pl->block_m, pl->block_n, pl->wg) &&
              (!f->options || f->options(dp, pl, opts, sizeof opts)) &&
              (!pl->vl || clattn__opts_add(opts, sizeof opts, " -DVARLEN=1"));
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "fused: build options too long");
    return f->launch(ctx, f, dp, pl, opts, event);
}

/* The planned form; a subgroup variant that fails to build gives way to the same form
 * without it. */
static clattn_status fused_run_form(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event,
                                    int *form)
{
    for (;;) {
        fused_plan pl;
        fused_make_plan(ctx, ctx, dp->p, &pl);
        *form = pl.form;
        clattn_status st = fused_run_plan(ctx, dp, &pl, event);
        if (st != CLATTN_ERROR_BUILD_FAILED || !pl.sg) return st;
        /* the variant, not the form, failed: the same form without it */
        clattn__variant_failed(ctx, CLATTN__VAR_SUBGROUPS, "the gpu-mm kernel with subgroup reductions did not build");
    }
}

/* The planned form, then (after a build failure) the next forms of the path. */
static clattn_status fused_run(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event)
{
    return clattn__run_with_form_fallback(ctx, CLATTN__TP_FUSED, &clattn__path_fused, dp, event,
                                          fused_run_form);
}

const clattn__path_impl clattn__path_fused = {CLATTN_PATH_FUSED, fused_supports, fused_run};

/* The plan for packed sequences in one launch: the packed problem's plan, its key copies
 * every sequence's keys padded to whole tiles; false when the form cannot (no varlen
 * support, int key indices, or the copies of one head beyond the workspace bound). */
static bool varlen_plan(const clattn_context *ctx, clattn_context *probe_ctx,
                        const clattn__problem *p, const clattn__varlen_seqs *vs, fused_plan *pl)
{
    fused_make_plan(ctx, probe_ctx, p, pl);
    const fused_form *f = fused_form_at(pl->form);
    if (!f->varlen) return false;
    int64_t pad = 0;
    for (size_t s = 0; s < vs->n; s++) pad += ceil_to(vs->cu_k[s + 1] - vs->cu_k[s], pl->block_n);
    if (pad > (int64_t)0x7fffffff - 2 * pl->block_n) return false;
    pl->lk_pad = pad > 0 ? pad : pl->block_n;
    pl->vl = vs;
    const char *why = "";
    return f->fits(ctx, p, pl, &why);
}

bool clattn__fused_varlen_supported(const clattn_context *ctx, const clattn__problem *p,
                                    const clattn__varlen_seqs *vs)
{
    fused_plan pl;
    return varlen_plan(ctx, NULL, p, vs, &pl);
}

clattn_status clattn__fused_run_varlen(clattn_context *ctx, const clattn__dev_problem *dp,
                                       const clattn__varlen_seqs *vs, cl_event *event)
{
    fused_plan pl;
    if (!varlen_plan(ctx, ctx, dp->p, vs, &pl)) return CLATTN_ERROR_PATH_UNSUPPORTED;
    clattn__log(ctx, "fused: %zu packed sequence(s) in one launch", vs->n);
    return fused_run_plan(ctx, dp, &pl, event);
}
