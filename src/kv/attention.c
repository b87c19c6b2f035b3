/* Attention over stored keys and values: the host side of cl/kv_attn.cl, one for the
 * contiguous KV cache (cache.c) and the paged pool (pool.c). A call goes through
 * clattn_attention's machinery (api/attention.h: validation, staging, completion) with the
 * store's keys and values standing in for k and v; its work is the launch plan (tuning
 * rows), q's preparation, the partial and merge kernels and O's store. */
#include "kv/attention.h"
#include "api/attention.h"
#include "kv/format.h"
#include "tuning/tuning.h"
#include "core/program.h"
#include "core/kernel_args.h"

#include <string.h>

static bool is_tq(clattn_kv_format f) { return clattn__kv_traits_of(f)->tq_bits != 0; }

/* A paged call's page table and query bounds on the device (NULL for the contiguous
 * cache): n_seqs sequences of pages indptr / indices / last, query rows qo_indptr. */
typedef struct kv_pages {
    int64_t n_seqs;
    cl_mem indptr, indices, last, qo_indptr;
} kv_pages;

/* Launch shape: ROWS rows per work-item, key splits for the compute units; the values
 * (rows, split bounds, work-groups per unit, prefetch) are the kv rows of src/tuning/rows.c.
 *
 * Measured with bench/kv_report.py (one clattn bench run: the f16 decode path and every
 * format interleaved, five rounds; a format's time over the f16 path's in the same round,
 * median over rounds; the machine busy with other builds, load 4 to 4.5 on 2 cores):
 * tq2 0.25, tq4 0.34, int4 0.41, tq3 0.47, int8 0.51, f16 1.35. Time went to, in order:
 * horizontal sums and scalar scale conversions per key (fixed by the transposed key tiles
 * and gathered scales: int8 1.34 -> 0.63), accumulators indexed by i & 1 left on the stack
 * (explicit even/odd: tq4 0.51 -> 0.44), shuffle-port pressure of unpacking (broadcast +
 * shift words, permute-based nibble conversion: int4 0.40 -> 0.37), and memory stalls
 * (software prefetch spread over the loops: int8 0.68 -> 0.58). On one thread
 * (POCL_MAX_PTHREAD_COUNT=1) every format and the decode path run near one core's memory
 * bandwidth: tq4 0.29-0.31, int4 0.36-0.37, int8 0.49-0.50 (bytes ratios 0.26, 0.31,
 * 0.53); under CPU contention the decode path, which mostly waits on memory, loses less
 * than the formats, which also compute. */
typedef struct kv_plan {
    int form;     /* index in kv_forms: 0 = CPU form, 1 = GPU form (KV_GPU) */
    int wg, ktile; /* GPU form: work-group size, keys per tile */
    int rows;
    int prefetch; /* KV_PREFETCH */
    int64_t nblk, nsplit, chunk;
    clattn__tsource src; /* where the tuning row came from */
} kv_plan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* GPU form: tiles halved until the group's local memory fits the device (a row tuned at
 * one head size meets wider heads, e.g. D = 256 on a 32 KiB device). */
static void fit_gpu(const clattn_context *ctx, const clattn__problem *p, kv_plan *pl)
{
    while (pl->ktile > 1 && clattn__kv_gpu_local_bytes(p->D, p->Dv, pl->rows, pl->ktile) > ctx->props.local_mem_bytes)
        pl->ktile /= 2;
}

static bool options_gpu(const kv_plan *pl, char *opts, size_t cap)
{
    return clattn__opts_add(opts, cap, " -DKV_GPU=1 -DWG=%d -DKTILE=%d", pl->wg, pl->ktile);
}

/* CPU form: a work-item per (row block, split, (b, kvh)), the row blocks of a split in one
 * work-group, so one core runs them back to back while the split's keys and values are
 * in its cache. */
static clattn_status launch_cpu(clattn_context *ctx, cl_kernel kp, const kv_plan *pl, size_t nbk)
{
    size_t wg = 0;
    clGetKernelWorkGroupInfo(kp, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    const size_t gp[3] = {(size_t)pl->nblk, (size_t)pl->nsplit, nbk};
    const size_t lp[3] = {(size_t)pl->nblk, 1, 1};
    return clattn__enqueue(ctx, kp, 3, gp, (size_t)pl->nblk <= wg ? lp : NULL, NULL);
}

/* GPU form: a work-group per (row block, split, (b, kvh)). */
static clattn_status launch_gpu(clattn_context *ctx, cl_kernel kp, const kv_plan *pl, size_t nbk)
{
    const size_t gp[3] = {(size_t)pl->wg * (size_t)pl->nblk, (size_t)pl->nsplit, nbk};
    const size_t lp[3] = {(size_t)pl->wg, 1, 1};
    return clattn__enqueue(ctx, kp, 3, gp, lp, NULL);
}

/* The forms of kv_partial, indexed by the tuning layer's kv form number
 * (tuning/params.c). Each is its own file (both build on cl/kv_read.cl, core/program.c),
 * and the merge kernel comes from the same program. A form that may fail to build gives
 * way to the next; the CPU form runs on every device, so its failure is reported (a CPU
 * running the GPU form would take ~50x as long, docs/measurements.md). */
static const struct kv_form {
    const char *name; /* in CLATTN_LOG */
    const char *file;
    bool gives_way;   /* a build failure moves on to the next form */
    void (*fit)(const clattn_context *ctx, const clattn__problem *p, kv_plan *pl); /* NULL: none */
    bool (*options)(const kv_plan *pl, char *opts, size_t cap);                    /* NULL: none */
    clattn_status (*launch)(clattn_context *ctx, cl_kernel kp, const kv_plan *pl, size_t nbk);
} kv_forms[] = {
    {"cpu", "kv_attn.cl", false, NULL, NULL, launch_cpu},
    {"gpu", "kv_attn_gpu.cl", true, fit_gpu, options_gpu, launch_gpu},
};

static void make_plan(const clattn_context *ctx, const clattn__problem *p, int kf, int64_t Lmax,
                      kv_plan *pl)
{
    clattn__trow tu; /* the tuned values (tuning.c; the measurements are above and there) */
    clattn__tuning_row_for(ctx, CLATTN__TP_KV, p, kf, &tu, &pl->src);
    /* the next form when the row's failed to build on this context (tuning.c) */
    const int form = clattn__tuning_form(ctx, CLATTN__TP_KV, p, &tu);
    if (form != tu.form) clattn__tuning_apply_form(CLATTN__TP_KV, form, &tu);
    pl->form = tu.form;
    pl->wg = tu.wg;
    pl->ktile = tu.ktile;
    const int64_t nrows = p->group * p->Lq;
    pl->nblk = ceil_div(nrows, tu.rows);
    pl->rows = (int)ceil_div(nrows, pl->nblk);
    if (kv_forms[pl->form].fit) kv_forms[pl->form].fit(ctx, p, pl);
    pl->prefetch = tu.prefetch;
    const int64_t min_chunk = tu.min_chunk, max_chunk = tu.max_chunk;
    const int64_t per_cu = tu.wgs_per_cu;
    const int64_t L = Lmax > 0 ? Lmax : 1;
    const int64_t want = (int64_t)(ctx->props.compute_units ? ctx->props.compute_units : 1) * per_cu;
    int64_t nsplit = ceil_div(want, p->B * p->Hkv * (tu.split_blocks ? pl->nblk : 1));
    if (nsplit < ceil_div(L, max_chunk)) nsplit = ceil_div(L, max_chunk);
    if (nsplit > ceil_div(L, min_chunk)) nsplit = ceil_div(L, min_chunk);
    /* the rows are bounded by o's validated size; a product past 64 bits leaves one split,
     * which run_kernels then refuses */
    int64_t per_split_i = 0;
    const uint64_t per_split = clattn__mul_ok(p->B * p->Hq * p->Lq, (ceil_div(p->Dv, 16) * 16 + 2) * 4, &per_split_i)
                                   ? (uint64_t)per_split_i
                                   : UINT64_MAX;
    const uint64_t cap = clattn__scratch_cap(ctx);
    /* compared by division: nsplit * per_split could itself pass 64 bits */
    if ((uint64_t)nsplit > cap / per_split) nsplit = (int64_t)(cap / per_split);
    if (nsplit < 1) nsplit = 1;
    pl->chunk = ceil_div(ceil_div(L, nsplit), 32) * 32;
    pl->nsplit = ceil_div(L, pl->chunk);
}


static void rows_options(const clattn__kv_src *c, const clattn__problem *p, int64_t dim, char *opts,
                         size_t cap)
{
    opts[0] = '\0';
    clattn__opts_add(opts, cap, "-DKV_ROWS -DDIM=%lld -DQ_DT=%d -DO_DT=%d -DROT_Q=%d -DROT_O=%d",
                     (long long)dim, (int)p->q->dtype, (int)p->o->dtype, is_tq(c->kf), is_tq(c->vf));
}

/* One kernel argument: its size and where its value is (KV_ARG(x) for a variable x). */
typedef struct kv_arg {
    size_t size;
    const void *value;
} kv_arg;
#define KV_ARG(x) {sizeof(x), &(x)}

/* Set n arguments of k from *a on, in order. */
static clattn_status set_args(clattn_context *ctx, cl_kernel k, cl_uint *a, const kv_arg *args, size_t n)
{
    for (size_t i = 0; i < n; i++) CLATTN_FORWARD(clattn__set_arg(ctx, k, a, args[i].size, args[i].value));
    return CLATTN_SUCCESS;
}

typedef struct kv_scratch {
    cl_mem qd, part_o, part_ml, od;
} kv_scratch;

static clattn_status run_kernels(clattn_context *ctx, const clattn__kv_src *c, const kv_pages *pg,
                                 const clattn__dev_problem *dp, int64_t Lmax, kv_scratch *s,
                                 cl_event *event)
{
    const clattn__problem *p = dp->p;
    kv_plan pl;
    char opts[640] = "";
    cl_kernel kp, km;
    for (;;) {
        if (pg) {
            /* the plan sees the ragged batch as n_seqs entries of the longest query count */
            clattn__problem pp = *p;
            pp.B = pg->n_seqs;
            pp.Lq = c->lq_max;
            make_plan(ctx, &pp, (int)c->kf, Lmax, &pl);
        } else {
            make_plan(ctx, p, (int)c->kf, Lmax, &pl);
        }
        /* partial attention's program first, so a form that gives way does so (tuning.c
         * remembers it) before any scratch exists */
        opts[0] = '\0';
        bool ok = clattn__mask_options(dp, opts, sizeof opts) &&
                  clattn__opts_add(opts, sizeof opts, " -DD=%lld -DDV=%lld -DK_FMT=%d -DV_FMT=%d -DROWS=%d -DKV_PREFETCH=%d"
                                   " -DSPLITKV_DENSE_OUT",
                                   (long long)p->D, (long long)p->Dv, (int)c->kf, (int)c->vf, pl.rows,
                                   pl.prefetch);
        if (ok && pg)
            ok = clattn__opts_add(opts, sizeof opts, " -DPAGED -DPS=%lld -DPT=%lld", (long long)c->page_size,
                                  (long long)c->page_slots);
        const struct kv_form *f = &kv_forms[pl.form];
        if (ok && f->options) ok = f->options(&pl, opts, sizeof opts);
        CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "kv attention: build options too long");
        const clattn_status bst = clattn__kernel_get(ctx, f->file, opts, "kv_partial", &kp);
        if (bst == CLATTN_ERROR_BUILD_FAILED && f->gives_way &&
            clattn__tuning_form_failed(ctx, CLATTN__TP_KV, p, pl.form))
            continue;
        CLATTN_FORWARD(bst);
        break;
    }
    CLATTN_FORWARD(clattn__kernel_get(ctx, kv_forms[pl.form].file, opts, "splitkv_merge", &km));
    const int64_t rows_all = p->B * p->Hq * p->Lq;
    const int64_t DP = ceil_div(p->D, 16) * 16, DVP = ceil_div(p->Dv, 16) * 16;
    int64_t scratch_i = 0, q_bytes = 0, o_bytes = 0;
    const bool sized = clattn__mul_ok(rows_all, pl.nsplit, &scratch_i) &&
                       clattn__mul_ok(scratch_i, (DVP + 2) * 4, &scratch_i) &&
                       clattn__mul_ok(rows_all, DP * 4, &q_bytes) && clattn__mul_ok(rows_all, DVP * 4, &o_bytes);
    CLATTN_RETURN_IF(ctx, !sized, CLATTN_ERROR_INVALID_SHAPE,
                     "kv attention: the scratch sizes of %lld query rows overflow 64 bits",
                     (long long)rows_all);
    const uint64_t scratch = (uint64_t)scratch_i;
    CLATTN_RETURN_IF(ctx, scratch > clattn__scratch_cap(ctx),
                     CLATTN_ERROR_OUT_OF_MEMORY,
                     "kv attention: %lld query rows need %llu bytes of partial results, over the "
                     "workspace bound; pass fewer queries per call",
                     (long long)rows_all, (unsigned long long)scratch);
    /* part_o and part_ml together are the scratch checked above */
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)q_bytes, &s->qd));
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)(rows_all * pl.nsplit * DVP) * 4u, &s->part_o));
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)(rows_all * pl.nsplit * 2) * 4u, &s->part_ml));
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)o_bytes, &s->od));
    clattn__log(ctx, "kv attention%s: form %s, k %s, v %s, %d rows x %lld blocks, %lld splits of %lld keys (tuning: %s)",
                pg ? " (paged)" : "", kv_forms[pl.form].name, clattn_kv_format_name(c->kf), clattn_kv_format_name(c->vf),
                pl.rows, (long long)pl.nblk, (long long)pl.nsplit, (long long)pl.chunk, pl.src.text);

    const cl_long Hq = p->Hq, Lq = p->Lq, Hkv = p->Hkv, group = p->group;
    const size_t gq[3] = {(size_t)p->Lq, (size_t)p->Hq, (size_t)p->B};

    /* q: dense float rows, rotated for TQ keys (the same program as kv_store_o's when
     * D = Dv) */
    char ropts[640] = "";
    rows_options(c, p, p->D, ropts, sizeof ropts);
    cl_kernel kq;
    CLATTN_FORWARD(clattn__kernel_get(ctx, "kv_quant.cl", ropts, "kv_prep_q", &kq));
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kq, &a, &dp->q));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, s->qd));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, Lq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, c->krot));
    CLATTN_FORWARD(clattn__enqueue(ctx, kq, 3, gq, NULL, NULL));

    /* partial attention over the splits */
    clattn__dev_problem dpl = *dp; /* the cache's lengths play kv_lens */
    dpl.kv_lens.mem = pg ? pg->indptr : c->lens; /* any int buffer when paged (unread) */
    dpl.kv_lens.off = 0;
    dpl.kv_lens.st[0] = 1;
    const cl_long k_rs = (cl_long)c->k_slab, k_row = (cl_long)c->k_row, v_rs = (cl_long)c->v_slab,
                  v_row = (cl_long)c->v_row, nsplit = pl.nsplit, chunk = pl.chunk;
    const kv_arg pargs[] = {KV_ARG(s->qd),     KV_ARG(c->k),       KV_ARG(c->v),        KV_ARG(k_rs),
                            KV_ARG(k_row),     KV_ARG(v_rs),       KV_ARG(v_row),       KV_ARG(c->ktab),
                            KV_ARG(c->vtab),   KV_ARG(s->part_o),  KV_ARG(s->part_ml),  KV_ARG(Hq),
                            KV_ARG(Hkv),       KV_ARG(group),      KV_ARG(nsplit),      KV_ARG(chunk)};
    a = 0;
    CLATTN_FORWARD(set_args(ctx, kp, &a, pargs, sizeof pargs / sizeof pargs[0]));
    clattn__problem pq = *p;
    if (pg) {
        const cl_long Nq = p->Lq;
        const kv_arg gargs[] = {KV_ARG(pg->indptr), KV_ARG(pg->indices), KV_ARG(pg->last), KV_ARG(pg->qo_indptr),
                                KV_ARG(Nq)};
        CLATTN_FORWARD(set_args(ctx, kp, &a, gargs, sizeof gargs / sizeof gargs[0]));
        /* the kernel takes Lq from the prelude's arguments: the longest query count */
        pq.Lq = c->lq_max;
        dpl.p = &pq;
    }
    CLATTN_FORWARD(clattn__set_mask_args(ctx, kp, &a, &dpl));
    const size_t nbk = (size_t)((pg ? pg->n_seqs : p->B) * p->Hkv);
    CLATTN_FORWARD(kv_forms[pl.form].launch(ctx, kp, &pl, nbk));

    const cl_long nrows = rows_all;
    const cl_long width = DVP; /* part_o's and od's row width */
    const kv_arg margs[] = {KV_ARG(s->part_o),   KV_ARG(s->part_ml),  KV_ARG(nsplit),       KV_ARG(nrows),
                            KV_ARG(Hq),          KV_ARG(Lq),          KV_ARG(width),        KV_ARG(s->od),
                            KV_ARG(dp->lse.mem), KV_ARG(dp->lse.off), KV_ARG(dp->lse.st[0]), KV_ARG(dp->lse.st[1]),
                            KV_ARG(dp->lse.st[2])};
    a = 0;
    CLATTN_FORWARD(set_args(ctx, km, &a, margs, sizeof margs / sizeof margs[0]));
    /* 16 work-items per row, DVP / 16 columns each: a work-group's items share the row's
     * (m, l) and PoCL vectorises across them */
    const size_t gm[2] = {16, (size_t)rows_all};
    CLATTN_FORWARD(clattn__enqueue(ctx, km, 2, gm, NULL, NULL));

    /* O: rotated back for TQ values, stored in o's dtype and strides */
    rows_options(c, p, p->Dv, ropts, sizeof ropts);
    cl_kernel ko;
    CLATTN_FORWARD(clattn__kernel_get(ctx, "kv_quant.cl", ropts, "kv_store_o", &ko));
    a = 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, s->od));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, ko, &a, &dp->o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, Lq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, c->vrot));
    return clattn__enqueue(ctx, ko, 3, gq, NULL, event);
}

static clattn_status kv_attend(clattn_context *ctx, const clattn__kv_src *src, const kv_pages *pg,
                                const clattn__dev_problem *dp, int64_t Lmax, cl_event *event)
{
    kv_scratch s;
    memset(&s, 0, sizeof s);
    cl_event ev = NULL;
    /* LSE (splitkv_merge) is written before O (kv_store_o): with both, the caller's cl_mem
     * outputs are shadowed so a failed second launch leaves them untouched (staging.c). */
    clattn__dev_problem sp;
    clattn__shadow sh;
    clattn_status st = clattn__shadow_begin(ctx, dp, dp->p->lse != NULL, &sp, &sh);
    if (st == CLATTN_SUCCESS) st = run_kernels(ctx, src, pg, &sp, Lmax, &s, sh.active ? NULL : &ev);
    if (st == CLATTN_SUCCESS) st = clattn__shadow_commit(ctx, &sh, &ev);
    clattn__shadow_release(ctx, &sh);
    /* releasing scratch while kernels are queued is safe: OpenCL keeps it alive */
    clattn__buffer_release(ctx, s.qd);
    clattn__buffer_release(ctx, s.part_o);
    clattn__buffer_release(ctx, s.part_ml);
    clattn__buffer_release(ctx, s.od);
    if (event) *event = ev;
    else if (ev) clReleaseEvent(ev);
    return st;
}

clattn_status clattn__kv_upload_ints(clattn_context *ctx, const int32_t *a, size_t n, cl_mem *m)
{
    const int32_t zero = 0;
    return clattn__buffer_create_copy(ctx, (n ? n : 1) * sizeof(int32_t), n ? (const void *)a : &zero, m);
}

clattn_status clattn__kv_options(clattn_context *ctx, const char *what, const clattn_options *opt,
                                 clattn_options *full)
{
    if (!opt) {
        clattn_options_init(full);
        full->causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
        return CLATTN_SUCCESS;
    }
    /* a copy of the caller's struct, which may be an older, smaller one */
    char err[512];
    const clattn_status st = clattn__options_read(opt, full, err, sizeof err);
    return st == CLATTN_SUCCESS ? st : clattn__fail(ctx, st, "%s: %s", what, err);
}

clattn_status clattn__kv_start(clattn_context *ctx, const char *what, const char *store, const void *s,
                               const clattn_context *s_ctx, const clattn_tensor *q, const clattn_tensor *o,
                               const clattn_options *opt, const char *lengths, cl_event *event,
                               clattn_options *full)
{
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !s, CLATTN_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", what, store);
    CLATTN_RETURN_IF(ctx, s_ctx != ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                     "%s: the %s belongs to another context", what, store);
    CLATTN_RETURN_IF(ctx, !q || !o, CLATTN_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", what, !q ? "q" : "o");
    CLATTN_FORWARD(clattn__kv_options(ctx, what, opt, full));
    CLATTN_RETURN_IF(ctx, full->kv_lens, CLATTN_ERROR_INVALID_ARGUMENT, "%s: options.kv_lens must be NULL: %s",
                     what, lengths);
    full->path = CLATTN_PATH_AUTO;
    return CLATTN_SUCCESS;
}

typedef struct kv_work_arg {
    const clattn__kv_src *src;
    int64_t Lmax;
    bool want_event; /* the caller asked for an event: else the kernels create none */
} kv_work_arg;

/* The work of a staged KV attention call (clattn__call_work): a paged call's table goes
 * to the device first (released after: queued kernels keep the buffers alive). */
static clattn_status kv_work(clattn_context *ctx, const clattn__dev_problem *dp, void *arg, cl_event *event)
{
    const kv_work_arg *w = arg;
    const clattn_page_table *t = w->src->table;
    cl_event *ev = w->want_event ? event : NULL;
    if (!t) return kv_attend(ctx, w->src, NULL, dp, w->Lmax, ev);
    kv_pages pg;
    memset(&pg, 0, sizeof pg);
    pg.n_seqs = (int64_t)t->n_seqs;
    const size_t ns = t->n_seqs;
    clattn_status st = clattn__kv_upload_ints(ctx, t->indptr, ns + 1, &pg.indptr);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, t->indices, (size_t)t->indptr[ns], &pg.indices);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, t->last_page_len, ns, &pg.last);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, w->src->qo_indptr, ns + 1, &pg.qo_indptr);
    if (st == CLATTN_SUCCESS) st = kv_attend(ctx, w->src, &pg, dp, w->Lmax, ev);
    clattn__buffer_release(ctx, pg.indptr);
    clattn__buffer_release(ctx, pg.indices);
    clattn__buffer_release(ctx, pg.last);
    clattn__buffer_release(ctx, pg.qo_indptr);
    return st;
}

clattn_status clattn__kv_call(clattn_context *ctx, const char *what, const clattn__kv_src *src,
                              const clattn_tensor *q, clattn_tensor *o, const clattn_options *full,
                              int64_t B, int64_t Lk, int64_t Lmax, cl_event *event)
{
    clattn_tensor kd = {NULL, src->k, 0, CLATTN_F32, {B, src->Hkv, Lk, src->D}, {0, 0, 0, 0}};
    clattn_tensor vd = {NULL, src->v, 0, CLATTN_F32, {B, src->Hkv, Lk, src->Dv}, {0, 0, 0, 0}};
    clattn__problem p;
    clattn_options all;
    CLATTN_FORWARD(clattn__call_begin_as(ctx, what, q, &kd, &vd, o, full, event, &all, &p));
    if (src->seq_mask) p.mask = src->seq_mask; /* staged with the rest (broadcast strides 0) */
    kv_work_arg w = {src, Lmax, event != NULL};
    return clattn__call_run(ctx, &p, &all, kv_work, &w, event);
}
