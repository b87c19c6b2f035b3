/* The decode path: split-KV attention for a few query rows (Lq <= max_lq of the tuning row), the
 * shape of token-by-token generation. cl/decode.cl's decode_partial reads each (batch,
 * KV head) once for its whole GQA group, in key splits spread over the compute units,
 * and splitkv_merge (cl/splitkv.cl, the split-KV skeleton shared with the KV cache)
 * combines the splits by their log-sum-exp. Scratch: per row and split
 * a max, a sum and Dv floats, bounded by the context's workspace. */
#include "core/program.h"
#include "core/kernel_args.h"
#include "paths/form_fallback.h"
#include "tuning/tuning.h"

#include <string.h>

/* The tuning row (tuning.c) in force for p on ctx's device, with the form a call uses
 * (the next form when the row's failed to build here). */
static void decode_row(const clattn_context *ctx, const clattn__problem *p, clattn__trow *tu,
                       clattn__tsource *src)
{
    clattn__tuning_row_for(ctx, CLATTN__TP_DECODE, p, -1, tu, src);
    const int form = clattn__tuning_form(ctx, CLATTN__TP_DECODE, p, tu);
    if (form != tu->form) clattn__tuning_apply_form(CLATTN__TP_DECODE, form, tu);
}

/* Bytes of scratch for nsplit splits: a (max, sum) pair and Dv floats per row and split. */
static uint64_t decode_scratch_bytes(const clattn__problem *p, uint64_t nsplit)
{
    uint64_t rows = (uint64_t)p->B * (uint64_t)p->Hq * (uint64_t)p->Lq;
    return rows * nsplit * ((uint64_t)p->Dv + 2) * sizeof(float);
}

static bool decode_supports(const clattn_context *ctx, const clattn__problem *p, const char **why)
{
    clattn__trow tu;
    decode_row(ctx, p, &tu, NULL);
    if (p->Lq > tu.max_lq) {
        *why = "more query rows than the decode bound (max_lq of the tuning row) on this device";
        return false;
    }
    /* one split per row always works; more splits only if the workspace allows */
    if (decode_scratch_bytes(p, 1) > clattn__scratch_cap(ctx)) {
        *why = "the per-row partial results exceed the workspace bound";
        return false;
    }
    return true;
}

/* The launch shape of one call, derived from the tuning row, the device and p. */
typedef struct decode_plan {
    int form, rows, ktile, vw, wg;
    int prefetch;   /* CPU form: keys ahead for software prefetch, 0 = none */
    int64_t nblk;   /* row blocks per (b, kvh) */
    int64_t nsplit; /* key splits */
    int64_t chunk;  /* keys per split */
    clattn__tsource src; /* where the tuning row came from */
} decode_plan;

/* One kernel form of the path (cl/decode.cl built with its DEC_GPU), indexed by the form
 * number of the tuning layer: adding a form is adding a row to decode_forms and its
 * functions. */
typedef struct decode_form {
    const char *name;    /* in the log */
    const char *file;    /* in cl/ */
    const char *kernel;  /* the partial kernel (the merge is splitkv_merge) */
    int dec_gpu;         /* the file's DEC_GPU */
    bool wg_per_block;   /* a work-group per row block (else one per split, for all blocks) */
    /* Fit the row's values to the device and p (prefetch, local memory). */
    void (*fit)(const clattn_context *ctx, const clattn__problem *p, const clattn__trow *tu,
                decode_plan *pl);
    /* The partial kernel's NDRange: global g, local *l (NULL: the runtime's choice). */
    void (*shape)(const clattn_context *ctx, const clattn__problem *p, const decode_plan *pl,
                  size_t g[3], size_t lbuf[3], size_t **l);
} decode_form;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Local memory the GPU form needs (cl/decode.cl: qs, ss, red, red4 and per-row values). */
static uint64_t gpu_local_bytes(const clattn__problem *p, int rows, int ktile, int wg)
{
    return clattn__decode_gpu_local_bytes(p->D, p->Dv, rows, ktile, wg);
}

static void cpu_fit(const clattn_context *ctx, const clattn__problem *p, const clattn__trow *tu,
                    decode_plan *pl)
{
    (void)ctx;
    (void)p;
    pl->prefetch = tu->prefetch;
}

static void gpu_fit(const clattn_context *ctx, const clattn__problem *p, const clattn__trow *tu,
                    decode_plan *pl)
{
    (void)tu;
    pl->prefetch = 0;
    size_t maxwg = ctx->props.max_work_group_size;
    while (pl->wg > 1 && (size_t)pl->wg > maxwg) pl->wg >>= 1;
    /* the key block shrinks until the local arrays fit in half the local memory, so
     * two work-groups can share a compute unit */
    uint64_t budget = ctx->props.local_mem_bytes / 2;
    while (pl->ktile > 1 && gpu_local_bytes(p, pl->rows, pl->ktile, pl->wg) > budget)
        pl->ktile >>= 1;
}

static void cpu_shape(const clattn_context *ctx, const clattn__problem *p, const decode_plan *pl,
                      size_t g[3], size_t lbuf[3], size_t **l)
{
    /* the blocks of one split share a work-group, so one core runs them while the
     * split is in its cache */
    g[0] = (size_t)pl->nblk;
    g[1] = (size_t)pl->nsplit;
    g[2] = (size_t)(p->B * (p->Hq / p->group));
    lbuf[0] = (size_t)pl->nblk;
    lbuf[1] = lbuf[2] = 1;
    *l = (size_t)pl->nblk <= ctx->props.max_work_group_size ? lbuf : NULL;
}

static void gpu_shape(const clattn_context *ctx, const clattn__problem *p, const decode_plan *pl,
                      size_t g[3], size_t lbuf[3], size_t **l)
{
    (void)ctx;
    g[0] = (size_t)pl->wg * (size_t)pl->nblk;
    g[1] = (size_t)pl->nsplit;
    g[2] = (size_t)(p->B * (p->Hq / p->group));
    lbuf[0] = (size_t)pl->wg;
    lbuf[1] = lbuf[2] = 1;
    *l = lbuf;
}

static const decode_form decode_forms[] = {
    {"cpu", "decode.cl", "decode_partial", 0, false, cpu_fit, cpu_shape},
    {"gpu", "decode.cl", "decode_partial", 1, true, gpu_fit, gpu_shape},
};

static const decode_form *decode_form_at(int form) { return &decode_forms[form]; }

static void decode_make_plan(const clattn_context *ctx, const clattn__problem *p,
                             decode_plan *pl)
{
    clattn__trow row;
    decode_row(ctx, p, &row, &pl->src);
    const clattn__trow *tu = &row;
    const decode_form *f = decode_form_at(tu->form);
    const int64_t nrows = p->group * p->Lq; /* rows of one (b, kvh) */
    pl->form = tu->form;
    pl->vw = tu->vw;
    pl->ktile = tu->ktile;
    pl->wg = tu->wg;
    /* rows per block: at most tu->rows, spread evenly over the blocks */
    const int max_rows = tu->rows;
    pl->nblk = ceil_div(nrows, max_rows);
    pl->rows = (int)ceil_div(nrows, pl->nblk);
    /* ROWS is a build option: a power of two (or the bound) so that few builds serve
     * every group size and query count; the kernels skip a block's rows past the end */
    int rows = 1;
    while (rows < pl->rows) rows <<= 1;
    pl->rows = rows < max_rows ? rows : max_rows;
    pl->nblk = ceil_div(nrows, pl->rows);
    f->fit(ctx, p, tu, pl);

    /* splits: enough work-groups for every compute unit, within the chunk bounds */
    const int64_t Lk = p->Lk > 0 ? p->Lk : 1;
    const int64_t groups = p->B * (p->Hq / p->group) * (f->wg_per_block ? pl->nblk : 1);
    const int64_t want = (int64_t)(ctx->props.compute_units ? ctx->props.compute_units : 1) *
                         tu->wgs_per_cu;
    int64_t nsplit = ceil_div(want, groups);
    if (tu->max_chunk > 0 && nsplit < ceil_div(Lk, tu->max_chunk)) nsplit = ceil_div(Lk, tu->max_chunk);
    if (nsplit > ceil_div(Lk, tu->min_chunk)) nsplit = ceil_div(Lk, tu->min_chunk);
    /* the scratch must fit the workspace and one allocation */
    const uint64_t cap = clattn__scratch_cap(ctx);
    uint64_t per_split = decode_scratch_bytes(p, 1);
    if ((uint64_t)nsplit * per_split > cap) nsplit = (int64_t)(cap / per_split);
    if (nsplit < 1) nsplit = 1;
    int64_t chunk = ceil_div(Lk, nsplit);
    chunk = ceil_div(chunk, 16) * 16; /* aligned splits; the kernels take any chunk */
    pl->chunk = chunk;
    pl->nsplit = ceil_div(Lk, chunk);
}

static clattn_status decode_run_plan(clattn_context *ctx, const clattn__dev_problem *dp,
                                     const decode_plan *plan, cl_event *event)
{
    const clattn__problem *p = dp->p;
    const decode_plan pl = *plan;
    const decode_form *f = decode_form_at(pl.form);

    char opts[640] = "";
    bool ok = clattn__mask_options(dp, opts, sizeof opts) &&
              clattn__opts_add(opts, sizeof opts,
                               " -DD=%lld -DDV=%lld -DDEC_GPU=%d -DROWS=%d -DKTILE=%d -DVW=%d"
                               " -DWG=%d -DK_CONTIG=%d -DV_CONTIG=%d -DDEC_PF_KEYS=%d",
                               (long long)p->D, (long long)p->Dv, f->dec_gpu, pl.rows, pl.ktile,
                               pl.vw, pl.wg, dp->k.st[3] == 1, dp->v.st[3] == 1, pl.prefetch);
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "decode: build options too long");
    clattn__log(ctx, "decode: form %s, %d rows x %lld blocks, %lld splits of %lld keys, ktile %d (tuning: %s)",
                f->name, pl.rows, (long long)pl.nblk, (long long)pl.nsplit,
                (long long)pl.chunk, pl.ktile, pl.src.text);

    cl_kernel kpart, kmerge;
    CLATTN_FORWARD(clattn__kernel_get(ctx, f->file, opts, f->kernel, &kpart));
    CLATTN_FORWARD(clattn__kernel_get(ctx, f->file, opts, "splitkv_merge", &kmerge));

    cl_mem part_o, part_ml;
    const uint64_t nrows_all = (uint64_t)(p->B * p->Hq * p->Lq);
    CLATTN_FORWARD(clattn__buffer_create(
        ctx, (size_t)(nrows_all * (uint64_t)pl.nsplit * (uint64_t)p->Dv * sizeof(float)), &part_o));
    clattn_status st = clattn__buffer_create(
        ctx, (size_t)(nrows_all * (uint64_t)pl.nsplit * 2u * sizeof(float)), &part_ml);
    if (st != CLATTN_SUCCESS) {
        clattn__buffer_release(ctx, part_o);
        return st;
    }

    const cl_long Hq = p->Hq, Hkv = p->Hq / p->group, group = p->group, Lq = p->Lq;
    const cl_long nsplit = pl.nsplit, chunk = pl.chunk, nrows = (cl_long)nrows_all;
    cl_uint a = 0;
#define TRY(x)                                                                             \
    if (st == CLATTN_SUCCESS) st = (x)
    TRY(clattn__set_tensor_args(ctx, kpart, &a, &dp->q));
    TRY(clattn__set_tensor_args(ctx, kpart, &a, &dp->k));
    TRY(clattn__set_tensor_args(ctx, kpart, &a, &dp->v));
    TRY(CLATTN_ARG(ctx, kpart, &a, part_o));
    TRY(CLATTN_ARG(ctx, kpart, &a, part_ml));
    TRY(CLATTN_ARG(ctx, kpart, &a, Hq));
    TRY(CLATTN_ARG(ctx, kpart, &a, Hkv));
    TRY(CLATTN_ARG(ctx, kpart, &a, group));
    TRY(CLATTN_ARG(ctx, kpart, &a, nsplit));
    TRY(CLATTN_ARG(ctx, kpart, &a, chunk));
    TRY(clattn__set_mask_args(ctx, kpart, &a, dp));
    size_t g[3], lbuf[3], *l;
    f->shape(ctx, p, &pl, g, lbuf, &l);
    TRY(clattn__enqueue(ctx, kpart, 3, g, l, NULL));

    a = 0;
    TRY(CLATTN_ARG(ctx, kmerge, &a, part_o));
    TRY(CLATTN_ARG(ctx, kmerge, &a, part_ml));
    TRY(CLATTN_ARG(ctx, kmerge, &a, nsplit));
    TRY(CLATTN_ARG(ctx, kmerge, &a, nrows));
    TRY(CLATTN_ARG(ctx, kmerge, &a, Hq));
    TRY(CLATTN_ARG(ctx, kmerge, &a, Lq));
    const cl_long width = p->Dv; /* part_o's row width */
    TRY(CLATTN_ARG(ctx, kmerge, &a, width));
    TRY(clattn__set_tensor_args(ctx, kmerge, &a, &dp->o));
    TRY(CLATTN_ARG(ctx, kmerge, &a, dp->lse.mem));
    TRY(CLATTN_ARG(ctx, kmerge, &a, dp->lse.off));
    for (int i = 0; i < 3; i++) TRY(CLATTN_ARG(ctx, kmerge, &a, dp->lse.st[i]));
    size_t gm[2] = {(size_t)p->Dv, (size_t)nrows};
    TRY(clattn__enqueue(ctx, kmerge, 2, gm, NULL, event));
#undef TRY
    /* Releasing the scratch while kernels are queued is safe: OpenCL keeps it alive. It goes
     * back through the counting allocator it came from, so the context's device bytes (and
     * `clattn bench`'s peak) do not keep every earlier call's scratch. */
    clattn__buffer_release(ctx, part_o);
    clattn__buffer_release(ctx, part_ml);
    return st;
}

static clattn_status decode_run_form(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event,
                                     int *form)
{
    decode_plan pl;
    decode_make_plan(ctx, dp->p, &pl);
    *form = pl.form;
    return decode_run_plan(ctx, dp, &pl, event);
}

/* The planned form, then (after a build failure) the next forms of the path. */
static clattn_status decode_run(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event)
{
    return clattn__run_with_form_fallback(ctx, CLATTN__TP_DECODE, &clattn__path_decode, dp, event,
                                          decode_run_form);
}

const clattn__path_impl clattn__path_decode = {CLATTN_PATH_DECODE, decode_supports, decode_run};
