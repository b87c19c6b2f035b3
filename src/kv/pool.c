/* The paged KV pool (clattn.h, "Paged KV cache"): pages of keys and values in the formats
 * of kv/format.h (layout in kv/pool.h), caller-owned CSR page tables validated on the
 * host before any work, appends by slot mapping that quantize on the device
 * (cl/kv_quant.cl), and attention of a ragged batch through cl/kv_attn.cl built with
 * -DPAGED (the contiguous cache's kernel, its addresses taken through the page table;
 * host side in attention.c). Cascade attention over a shared prefix is in cascade.c, the
 * page operations (copy, copy a prefix, remove a range) in pages.c. */
#include "kv/pool.h"
#include "kv/attention.h"
#include "kv/format.h"
#include "core/program.h"
#include "core/kernel_args.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool plain(clattn_kv_format f) { return f == CLATTN_KV_F32 || f == CLATTN_KV_F16; }

/* ---- Create, free --------------------------------------------------------------- */

clattn_status clattn_kv_pool_create(clattn_context *ctx, int64_t num_pages, int64_t page_size, int64_t Hkv,
                                    int64_t D, int64_t Dv, clattn_kv_format k_format,
                                    clattn_kv_format v_format, clattn_kv_pool **pool)
{
    if (!ctx || !pool) return CLATTN_ERROR_INVALID_ARGUMENT;
    *pool = NULL;
    CLATTN_FORWARD(clattn__kv_create_begin(ctx, "kv pool", k_format, v_format));
    CLATTN_RETURN_IF(ctx, k_format == CLATTN_KV_INT4, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool: int4 keys are not supported in pages (their 32-token groups are "
                     "re-quantized from an f16 tail as they fill); use int8 or tq4 keys");
    CLATTN_RETURN_IF(ctx, page_size < 1 || page_size > 256 || (page_size & (page_size - 1)),
                     CLATTN_ERROR_INVALID_SHAPE, "kv pool: page_size %lld is not a power of two in 1..256",
                     (long long)page_size);
    CLATTN_RETURN_IF(ctx, num_pages < 1 || Hkv < 1, CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool: num_pages = %lld and Hkv = %lld must be >= 1", (long long)num_pages,
                     (long long)Hkv);
    CLATTN_FORWARD(clattn__kv_check_dims(ctx, "kv pool", D, Dv));
    CLATTN_RETURN_IF(ctx, num_pages > INT32_MAX / page_size, CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool: %lld pages of %lld tokens: slot numbers must fit int32",
                     (long long)num_pages, (long long)page_size);

    clattn_kv_pool *p = calloc(1, sizeof *p);
    CLATTN_RETURN_IF(ctx, !p, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    *p = (clattn_kv_pool){.ctx = ctx, .npages = num_pages, .ps = page_size, .Hkv = Hkv, .D = D, .Dv = Dv,
                          .kf = k_format, .vf = v_format};
    /* pages below a tile take a tile's storage when either format is tiled */
    p->pt = page_size < 16 && !(plain(k_format) && plain(v_format)) ? 16 : page_size;
    if (clattn__kv_keys_tiled(k_format)) {
        p->k_row = clattn__kv_tile_bytes(k_format, (int)D);
        p->k_page = p->k_row * (size_t)(p->pt / 16);
    } else {
        p->k_row = clattn__kv_row_bytes(k_format, (int)D);
        p->k_page = p->k_row * (size_t)p->pt;
    }
    p->v_row = clattn__kv_vtile_bytes(v_format, (int)Dv);
    p->v_page = p->pt >= 16 ? p->v_row * (size_t)(p->pt / 16) : p->v_row / 16 * (size_t)p->pt;
    int64_t kbytes = 0, vbytes = 0, slabs = 0;
    const bool sizes_ok = clattn__mul_ok(num_pages, Hkv, &slabs) &&
                          clattn__mul_ok(slabs, (int64_t)p->k_page, &kbytes) && kbytes <= INT64_MAX - 64 &&
                          clattn__mul_ok(slabs, (int64_t)p->v_page, &vbytes) && vbytes <= INT64_MAX - 64;
    clattn_status st = CLATTN_SUCCESS;
    if (!sizes_ok)
        st = clattn__fail(ctx, CLATTN_ERROR_INVALID_SHAPE, "kv pool: %lld pages x %lld heads overflow 64-bit sizes",
                          (long long)num_pages, (long long)Hkv);
    else
        st = clattn__kv_store_buffers(ctx, "kv pool", kbytes, vbytes, k_format, (int)D, v_format, (int)Dv, &p->k,
                                      &p->v, &p->krot, &p->ktab, &p->vrot, &p->vtab, &p->bytes);
    if (st == CLATTN_SUCCESS)
        *pool = p;
    else
        clattn_kv_pool_free(p);
    return st;
}

uint64_t clattn_kv_pool_bytes(const clattn_kv_pool *p) { return p ? p->bytes : 0; }

void clattn_kv_pool_free(clattn_kv_pool *p)
{
    if (!p) return;
    cl_mem all[] = {p->k, p->v, p->krot, p->vrot, p->ktab, p->vtab};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clattn__buffer_release(p->ctx, all[i]);
    free(p);
}

/* ---- Page tables ------------------------------------------------------------------ */

/* Every rule of a page table (clattn.h); *max_len / *max_slots receive the longest
 * sequence in tokens and in slots. */
clattn_status clattn__kv_pool_check_table(const clattn_kv_pool *p, const char *what, const clattn_page_table *t,
                                          int64_t *max_len, int64_t *max_slots)
{
    clattn_context *ctx = p->ctx;
    CLATTN_RETURN_IF(ctx, !t, CLATTN_ERROR_INVALID_ARGUMENT, "%s: the page table is NULL", what);
    CLATTN_RETURN_IF(ctx, t->page_size != p->ps, CLATTN_ERROR_INVALID_ARGUMENT,
                     "%s: the page table's page_size %lld differs from the pool's %lld", what,
                     (long long)t->page_size, (long long)p->ps);
    CLATTN_RETURN_IF(ctx, t->n_seqs < 1 || t->n_seqs > INT32_MAX, CLATTN_ERROR_INVALID_ARGUMENT,
                     "%s: n_seqs = %zu must be within 1..INT32_MAX", what, t->n_seqs);
    CLATTN_RETURN_IF(ctx, !t->indptr || !t->last_page_len, CLATTN_ERROR_INVALID_ARGUMENT,
                     "%s: page table %s is NULL", what, !t->indptr ? "indptr" : "last_page_len");
    CLATTN_RETURN_IF(ctx, t->indptr[0] != 0, CLATTN_ERROR_INVALID_ARGUMENT,
                     "%s: page table indptr[0] = %d, must be 0", what, t->indptr[0]);
    int64_t ml = 0, ms = 0;
    for (size_t s = 0; s < t->n_seqs; s++) {
        const int64_t a = t->indptr[s], b = t->indptr[s + 1], last = t->last_page_len[s];
        CLATTN_RETURN_IF(ctx, b < a, CLATTN_ERROR_INVALID_ARGUMENT,
                         "%s: page table indptr is not non-decreasing: indptr[%zu] = %lld > indptr[%zu] = %lld",
                         what, s, (long long)a, s + 1, (long long)b);
        CLATTN_RETURN_IF(ctx, b > a && (last < 1 || last > p->ps), CLATTN_ERROR_INVALID_ARGUMENT,
                         "%s: page table last_page_len[%zu] = %lld is outside 1..page_size (%lld)", what, s,
                         (long long)last, (long long)p->ps);
        CLATTN_RETURN_IF(ctx, b == a && last != 0, CLATTN_ERROR_INVALID_ARGUMENT,
                         "%s: page table last_page_len[%zu] = %lld for a sequence without pages (must be 0)",
                         what, s, (long long)last);
        const int64_t len = b > a ? (b - a - 1) * p->ps + last : 0;
        const int64_t slots = b > a ? (b - a - 1) * p->pt + last : 0;
        ml = len > ml ? len : ml;
        ms = slots > ms ? slots : ms;
    }
    const int64_t n = t->indptr[t->n_seqs];
    CLATTN_RETURN_IF(ctx, n > 0 && !t->indices, CLATTN_ERROR_INVALID_ARGUMENT, "%s: page table indices is NULL",
                     what);
    for (int64_t i = 0; i < n; i++)
        CLATTN_RETURN_IF(ctx, t->indices[i] < 0 || t->indices[i] >= p->npages, CLATTN_ERROR_INVALID_ARGUMENT,
                         "%s: page table indices[%lld] = %d is not a page of the pool (0..%lld)", what,
                         (long long)i, t->indices[i], (long long)p->npages - 1);
    CLATTN_RETURN_IF(ctx, ms > INT32_MAX, CLATTN_ERROR_INVALID_SHAPE, "%s: a sequence of %lld slots passes int32",
                     what, (long long)ms);
    if (max_len) *max_len = ml;
    if (max_slots) *max_slots = ms;
    return CLATTN_SUCCESS;
}

/* How many sequences of t hold each page: counts[npages] (caller frees). */
static clattn_status page_holders(const clattn_kv_pool *p, const clattn_page_table *t, uint16_t **counts)
{
    *counts = calloc((size_t)p->npages, sizeof **counts);
    CLATTN_RETURN_IF(p->ctx, !*counts, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    for (size_t s = 0; s < t->n_seqs; s++)
        for (int32_t i = t->indptr[s]; i < t->indptr[s + 1]; i++) {
            /* a page twice in one sequence counts twice: appends would clash there too */
            uint16_t *c = &(*counts)[t->indices[i]];
            if (*c < UINT16_MAX) (*c)++;
        }
    return CLATTN_SUCCESS;
}

clattn_status clattn__kv_pool_check_qo(clattn_context *ctx, const char *what, const int32_t *qo, size_t n, int64_t Nq,
                                       int64_t *lq_max)
{
    CLATTN_RETURN_IF(ctx, !qo, CLATTN_ERROR_INVALID_ARGUMENT, "%s: qo_indptr is NULL", what);
    CLATTN_RETURN_IF(ctx, qo[0] != 0 || qo[n] != Nq, CLATTN_ERROR_INVALID_ARGUMENT,
                     "%s: qo_indptr must run from 0 to Nq = %lld (it runs from %d to %d)", what,
                     (long long)Nq, qo[0], qo[n]);
    int64_t m = 0;
    for (size_t s = 0; s < n; s++) {
        CLATTN_RETURN_IF(ctx, qo[s + 1] < qo[s], CLATTN_ERROR_INVALID_ARGUMENT,
                         "%s: qo_indptr is not non-decreasing: qo_indptr[%zu] = %d > qo_indptr[%zu] = %d", what,
                         s, qo[s], s + 1, qo[s + 1]);
        m = qo[s + 1] - qo[s] > m ? qo[s + 1] - qo[s] : m;
    }
    *lq_max = m;
    return CLATTN_SUCCESS;
}

/* ---- Append ----------------------------------------------------------------------- */

/* Sort tokens by slot and group them by 16-slot tile: order[], grp[ntiles + 1]. false
 * when two tokens share a slot (*dup receives one of them). */
typedef struct slot_ref {
    int32_t slot, token;
} slot_ref;
static int cmp_slot(const void *a, const void *b)
{
    const slot_ref *x = a, *y = b;
    return x->slot < y->slot ? -1 : x->slot > y->slot ? 1 : x->token - y->token;
}
clattn_status clattn__kv_group_tiles(clattn_context *ctx, const int32_t *slots, int64_t n, int64_t ps, int32_t **order,
                                     int32_t **grp, int64_t *ntiles, int64_t *dup)
{
    slot_ref *r = malloc((size_t)(n ? n : 1) * sizeof *r);
    *order = malloc((size_t)(n ? n : 1) * sizeof **order);
    *grp = malloc((size_t)(n + 1) * sizeof **grp);
    if (!r || !*order || !*grp) {
        free(r);
        free(*order);
        free(*grp);
        *order = *grp = NULL;
        return clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    }
    for (int64_t t = 0; t < n; t++) r[t] = (slot_ref){slots[t], (int32_t)t};
    qsort(r, (size_t)n, sizeof *r, cmp_slot);
    int64_t k = 0;
    *dup = -1;
    for (int64_t t = 0; t < n; t++) {
        (*order)[t] = r[t].token;
        if (t > 0 && r[t].slot == r[t - 1].slot) *dup = r[t].token;
        /* a new tile when the page or the 16-slot tile within it changes */
        const int64_t tile = (r[t].slot / ps) * 1024 + (r[t].slot % ps) / 16;
        const int64_t prev = t > 0 ? (r[t - 1].slot / ps) * 1024 + (r[t - 1].slot % ps) / 16 : -1;
        if (t == 0 || tile != prev) (*grp)[k++] = (int32_t)t;
    }
    (*grp)[k] = (int32_t)n;
    *ntiles = k;
    free(r);
    return CLATTN_SUCCESS;
}

static clattn_status append_kernel(clattn_kv_pool *p, bool keys, clattn_dtype dt, cl_kernel *k)
{
    const clattn_kv_format f = keys ? p->kf : p->vf;
    char opts[160] = "";
    clattn__opts_add(opts, sizeof opts, "-DKV_APPEND -DPAGED -DDIM=%lld -DFMT=%d -DK_DT=%d -DVTILES=%d",
                     (long long)(keys ? p->D : p->Dv), (int)f, (int)dt, keys ? 0 : 1);
    const bool tiled = keys && clattn__kv_keys_tiled(f);
    return clattn__kernel_get(p->ctx, "kv_quant.cl", opts, tiled ? "kv_paged_append_tiles" : "kv_paged_append_rows", k);
}

static clattn_status enqueue_append(clattn_kv_pool *p, cl_kernel k, bool keys, const clattn__dev_tensor *x,
                                    int64_t n, cl_mem slots, cl_mem grp, cl_mem order, int64_t ntiles,
                                    cl_event *event)
{
    clattn_context *ctx = p->ctx;
    const clattn_kv_format f = keys ? p->kf : p->vf;
    const bool tiled = keys && clattn__kv_keys_tiled(f);
    const cl_long page_bytes = (cl_long)(keys ? p->k_page : p->v_page), H = p->Hkv, ps = p->ps;
    const cl_long tile_bytes = (cl_long)p->k_row;
    const cl_float sqrt_n = sqrtf((float)(keys ? p->D : p->Dv));
    const cl_mem dst = keys ? p->k : p->v, rot = keys ? p->krot : p->vrot, tab = keys ? p->ktab : p->vtab;
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, &a, x));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, dst));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, page_bytes));
    if (tiled) CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, tile_bytes));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, H));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, ps));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, slots));
    if (tiled) {
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, grp));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, order));
    }
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, rot));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, tab));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, sqrt_n));
    const size_t g[2] = {(size_t)(tiled ? ntiles : n), (size_t)p->Hkv};
    return clattn__enqueue(ctx, k, 2, g, NULL, event);
}

/* No page written through `slots` may be held by two sequences of the table. */
clattn_status clattn__kv_pool_check_written(clattn_kv_pool *p, const char *what, const clattn_page_table *t,
                                            const int32_t *pages, size_t n)
{
    uint16_t *holders;
    CLATTN_FORWARD(page_holders(p, t, &holders));
    for (size_t i = 0; i < n; i++)
        if (holders[pages[i]] > 1) {
            const int32_t pg = pages[i];
            const unsigned h = holders[pg];
            free(holders);
            return clattn__fail(p->ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                                "%s: page %d is held %u times in the page table; a page shared between "
                                "sequences is read-only (copy it first with clattn_kv_pool_copy_pages); "
                                "nothing was written",
                                what, pg, h);
        }
    free(holders);
    return CLATTN_SUCCESS;
}

clattn_status clattn_kv_pool_append(clattn_kv_pool *p, const clattn_page_table *table, const clattn_tensor *k_new,
                                    const clattn_tensor *v_new, const int32_t *slot_mapping, cl_event *event)
{
    if (event) *event = NULL;
    if (!p) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_context *ctx = p->ctx;
    ctx->last_error[0] = '\0';
    CLATTN_FORWARD(clattn__kv_check_inputs(ctx, "kv pool append", k_new, v_new, 1, p->Hkv, p->D, p->Dv));
    const int64_t n = k_new->ne[2];
    CLATTN_FORWARD(clattn__kv_pool_check_table(p, "kv pool append", table, NULL, NULL));
    CLATTN_RETURN_IF(ctx, n > 0 && !slot_mapping, CLATTN_ERROR_INVALID_ARGUMENT, "kv pool append: slot_mapping is NULL");
    CLATTN_RETURN_IF(ctx, n > INT32_MAX, CLATTN_ERROR_INVALID_SHAPE, "kv pool append: %lld tokens pass int32",
                     (long long)n);
    if (n == 0) return event ? clattn__enqueue_marker(ctx, event) : CLATTN_SUCCESS;
    for (int64_t t = 0; t < n; t++)
        CLATTN_RETURN_IF(ctx, slot_mapping[t] < 0 || slot_mapping[t] >= p->npages * p->ps, CLATTN_ERROR_INVALID_ARGUMENT,
                         "kv pool append: slot_mapping[%lld] = %d is outside the pool's %lld slots; nothing "
                         "was written",
                         (long long)t, slot_mapping[t], (long long)(p->npages * p->ps));
    int32_t *order = NULL, *grp = NULL, *pages = malloc((size_t)n * sizeof *pages);
    CLATTN_RETURN_IF(ctx, !pages, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    for (int64_t t = 0; t < n; t++) pages[t] = (int32_t)(slot_mapping[t] / p->ps);
    clattn_status st = clattn__kv_pool_check_written(p, "kv pool append", table, pages, (size_t)n);
    free(pages);
    CLATTN_FORWARD(st);
    int64_t ntiles = 0, dup = -1;
    CLATTN_FORWARD(clattn__kv_group_tiles(ctx, slot_mapping, n, p->ps, &order, &grp, &ntiles, &dup));
    if (dup >= 0) {
        free(order);
        free(grp);
        return clattn__fail(ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                            "kv pool append: slot %d is written by two tokens (token %lld and another); "
                            "nothing was written",
                            slot_mapping[dup], (long long)dup);
    }

    clattn__dev_tensor kx, vx;
    memset(&kx, 0, sizeof kx);
    memset(&vx, 0, sizeof vx);
    cl_mem dslots = NULL, dgrp = NULL, dorder = NULL;
    cl_kernel kk = NULL, kv = NULL;
    /* kernels and inputs first: once the key kernel is queued the keys are written */
    st = append_kernel(p, true, k_new->dtype, &kk);
    if (st == CLATTN_SUCCESS) st = append_kernel(p, false, v_new->dtype, &kv);
    if (st == CLATTN_SUCCESS) st = clattn__stage_tensor(ctx, "k_new", k_new, false, &kx);
    if (st == CLATTN_SUCCESS) st = clattn__stage_tensor(ctx, "v_new", v_new, false, &vx);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, slot_mapping, (size_t)n, &dslots);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, grp, (size_t)ntiles + 1, &dgrp);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, order, (size_t)n, &dorder);
    if (st == CLATTN_SUCCESS) st = enqueue_append(p, kk, true, &kx, n, dslots, dgrp, dorder, ntiles, NULL);
    if (st == CLATTN_SUCCESS) st = enqueue_append(p, kv, false, &vx, n, dslots, dgrp, dorder, ntiles, event);
    free(order);
    free(grp);
    if (kx.owned) clattn__buffer_release(ctx, kx.mem); /* queued kernels keep them alive */
    if (vx.owned) clattn__buffer_release(ctx, vx.mem);
    clattn__buffer_release(ctx, dslots);
    clattn__buffer_release(ctx, dgrp);
    clattn__buffer_release(ctx, dorder);
    return st;
}

/* ---- Attention -------------------------------------------------------------------- */

/* The mask of a pool's attention is described per sequence (clattn_kv.h): bool or f32,
 * [n_seqs, Hq, Lq_max, Lk_max] = ne (the validation's descriptor checks; each extent 1
 * or ne[i], numpy broadcasting). The kernel reads element (s, h, i, j) with s the
 * sequence, i its own query row and j its key position. */
/* A pool's mask is per sequence: [n_seqs, Hq, Lq_max, Lk_max], each extent 1 or that. */
static clattn_status check_seq_mask(clattn_context *ctx, const clattn_tensor *m, const int64_t ne[4])
{
    static const char *const dims[4] = {"n_seqs", "Hq", "Lq_max", "Lk_max"};
    char note[192], err[768];
    snprintf(note, sizeof note,
             " (a pool's mask is per sequence: [n_seqs, Hq, Lq_max, Lk_max] = [%lld, %lld, %lld, %lld], each "
             "extent 1 or that)",
             (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3]);
    const clattn_status st = clattn__check_mask(m, ne, dims, false, note, err, sizeof err);
    CLATTN_RETURN_IF(ctx, st != CLATTN_SUCCESS, st, "kv pool attention: %s", err);
    return CLATTN_SUCCESS;
}

clattn_status clattn_kv_pool_attention(clattn_context *ctx, clattn_kv_pool *p, const clattn_page_table *table,
                                       const int32_t *qo_indptr, const clattn_tensor *q, clattn_tensor *o,
                                       const clattn_options *opt, cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_options o2;
    CLATTN_FORWARD(clattn__kv_start(ctx, "kv pool attention", "pool", p, p ? p->ctx : NULL, q, o, opt,
                                    "the page table gives the lengths", event, &o2));
    int64_t max_len = 0, max_slots = 0, lq_max = 0;
    CLATTN_FORWARD(clattn__kv_pool_check_table(p, "kv pool attention", table, &max_len, &max_slots));
    CLATTN_RETURN_IF(ctx, q->ne[0] != 1, CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool attention: q must be packed as [1, Hq, Nq, D] (its first extent is %lld)",
                     (long long)q->ne[0]);
    CLATTN_FORWARD(clattn__kv_pool_check_qo(ctx, "kv pool attention", qo_indptr, table->n_seqs, q->ne[2], &lq_max));
    const int64_t mask_ne[4] = {(int64_t)table->n_seqs, q->ne[1], lq_max, max_len};
    if (o2.mask) CLATTN_FORWARD(check_seq_mask(ctx, o2.mask, mask_ne));
    const clattn__kv_src src = {.kf = p->kf, .vf = p->vf, .Hkv = p->Hkv, .D = p->D, .Dv = p->Dv, .k = p->k,
                                .v = p->v, .krot = p->krot, .vrot = p->vrot, .ktab = p->ktab, .vtab = p->vtab,
                                .k_slab = p->k_page, .k_row = p->k_row, .v_slab = p->v_page, .v_row = p->v_row,
                                .table = table, .qo_indptr = qo_indptr, .page_size = p->ps, .page_slots = p->pt,
                                .lq_max = lq_max > 0 ? lq_max : 1, .seq_mask = o2.mask};
    /* the packed rows are one batch entry of max_len keys to the validation, which would
     * read the mask as [1, Hq, Nq, max_len]: it is checked above and set after that */
    o2.mask = NULL;
    return clattn__kv_call(ctx, "kv pool attention", &src, q, o, &o2, 1, max_len, max_slots, event);
}

int64_t clattn__kv_pool_seq_len(const clattn_kv_pool *p, const clattn_page_table *t, size_t s)
{
    const int64_t np = t->indptr[s + 1] - t->indptr[s];
    return np > 0 ? (np - 1) * p->ps + t->last_page_len[s] : 0;
}
