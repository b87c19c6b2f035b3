/* The paged KV pool (clattn.h, "Paged KV cache"): pages of keys and values in the formats
 * of src/kv_format.h, caller-owned CSR page tables validated on the host before any
 * work, appends by slot mapping that quantize on the device (cl/kv_quant.cl), attention
 * of a ragged batch through cl/kv_attn.cl built with -DPAGED (the contiguous cache's
 * kernel, its addresses taken through the page table), cascade attention over a shared
 * prefix, and the page operations (copy, copy a prefix, remove a range).
 *
 * Layout: the key buffer is [num_pages][Hkv] slabs of k_page bytes and the value buffer
 * [num_pages][Hkv] slabs of v_page bytes, so one page of every head is one contiguous
 * block (a page copy is one copy per buffer). A slab holds PT slots laid out as the
 * contiguous cache lays out a slab of PT positions: key tiles of 16 tokens (int8, tq),
 * key rows (f32, f16), value tiles of 16 tokens. PT = page_size, or 16 for pages below
 * a tile when either format is tiled (the kernel skips the padding slots). */
#include "kv/cache.h"
#include "kv/format.h"
#include "core/program.h"
#include "core/kernel_args.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct clattn_kv_pool {
    clattn_context *ctx;
    int64_t npages, ps, pt, Hkv, D, Dv;
    clattn_kv_format kf, vf;
    cl_mem k, v, krot, vrot, ktab, vtab;
    size_t k_row, v_row, k_page, v_page; /* bytes: key tile / row, value tile, (page, head) slabs */
    uint64_t bytes;
};

static bool plain(clattn_kv_format f) { return f == CLATTN_KV_F32 || f == CLATTN_KV_F16; }

/* ---- Create, free --------------------------------------------------------------- */

clattn_status clattn_kv_pool_create(clattn_context *ctx, int64_t num_pages, int64_t page_size, int64_t Hkv,
                                    int64_t D, int64_t Dv, clattn_kv_format k_format,
                                    clattn_kv_format v_format, clattn_kv_pool **pool)
{
    if (!ctx || !pool) return CLATTN_ERROR_INVALID_ARGUMENT;
    *pool = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !clattn__kv_traits_of(k_format) || !clattn__kv_traits_of(v_format),
                     CLATTN_ERROR_INVALID_ARGUMENT, "kv pool: format (%d, %d) is not a clattn_kv_format",
                     (int)k_format, (int)v_format);
    CLATTN_RETURN_IF(ctx, k_format == CLATTN_KV_INT4, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool: int4 keys are not supported in pages (their 32-token groups are "
                     "re-quantized from an f16 tail as they fill); use int8 or tq4 keys");
    CLATTN_RETURN_IF(ctx, page_size < 1 || page_size > 256 || (page_size & (page_size - 1)),
                     CLATTN_ERROR_INVALID_SHAPE, "kv pool: page_size %lld is not a power of two in 1..256",
                     (long long)page_size);
    CLATTN_RETURN_IF(ctx, num_pages < 1 || Hkv < 1, CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool: num_pages = %lld and Hkv = %lld must be >= 1", (long long)num_pages,
                     (long long)Hkv);
    CLATTN_RETURN_IF(ctx, D < 1 || D > 256 || Dv < 1 || Dv > 256, CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool: D = %lld and Dv = %lld must be within 1..256", (long long)D, (long long)Dv);
    CLATTN_RETURN_IF(ctx, num_pages > INT32_MAX / page_size, CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool: %lld pages of %lld tokens: slot numbers must fit int32",
                     (long long)num_pages, (long long)page_size);

    clattn_kv_pool *p = calloc(1, sizeof *p);
    CLATTN_RETURN_IF(ctx, !p, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    p->ctx = ctx;
    p->npages = num_pages;
    p->ps = page_size;
    p->Hkv = Hkv;
    p->D = D;
    p->Dv = Dv;
    p->kf = k_format;
    p->vf = v_format;
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
    else if ((uint64_t)kbytes > clattn__alloc_cap(ctx) || (uint64_t)vbytes > clattn__alloc_cap(ctx))
        st = clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY,
                          "kv pool: %lld bytes of keys or %lld of values exceed the device's largest "
                          "allocation (%llu bytes)",
                          (long long)kbytes, (long long)vbytes, (unsigned long long)clattn__alloc_cap(ctx));
    /* 64 bytes of slack: a kernel reads a tq3 word as 8 bytes, 2 past its end */
    if (st == CLATTN_SUCCESS) st = clattn__kv_buffer(p->ctx, (size_t)kbytes + 64u, NULL, &p->k, &p->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_buffer(p->ctx, (size_t)vbytes + 64u, NULL, &p->v, &p->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_tq_buffers(p->ctx, k_format, (int)D, &p->krot, &p->ktab, &p->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_tq_buffers(p->ctx, v_format, (int)Dv, &p->vrot, &p->vtab, &p->bytes);
    if (st != CLATTN_SUCCESS) {
        clattn_kv_pool_free(p);
        return st;
    }
    *pool = p;
    return CLATTN_SUCCESS;
}

void clattn_kv_pool_free(clattn_kv_pool *p)
{
    if (!p) return;
    cl_mem all[] = {p->k, p->v, p->krot, p->vrot, p->ktab, p->vtab};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clattn__buffer_release(p->ctx, all[i]);
    free(p);
}

uint64_t clattn_kv_pool_bytes(const clattn_kv_pool *p) { return p ? p->bytes : 0; }

/* ---- Page tables ------------------------------------------------------------------ */

/* Every rule of a page table (clattn.h); *max_len / *max_slots receive the longest
 * sequence in tokens and in slots. */
static clattn_status check_table(const clattn_kv_pool *p, const char *what, const clattn_page_table *t,
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

static clattn_status check_qo(clattn_context *ctx, const char *what, const int32_t *qo, size_t n, int64_t Nq,
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

/* Device copies of an int32 array (at least one element, so empty tables get a buffer). */
static clattn_status upload_ints(clattn_context *ctx, const int32_t *a, size_t n, cl_mem *m)
{
    const int32_t zero = 0;
    return clattn__buffer_create_copy(ctx, (n ? n : 1) * sizeof(int32_t), n ? (const void *)a : &zero, m);
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
static clattn_status group_tiles(clattn_context *ctx, const int32_t *slots, int64_t n, int64_t ps, int32_t **order,
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
static clattn_status check_written_pages(clattn_kv_pool *p, const char *what, const clattn_page_table *t,
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
    CLATTN_RETURN_IF(ctx, !k_new || !v_new, CLATTN_ERROR_INVALID_ARGUMENT, "kv pool append: %s is NULL",
                     !k_new ? "k_new" : "v_new");
    const int64_t n = k_new->ne[2];
    CLATTN_FORWARD(clattn__kv_check_input(ctx, "k_new", k_new, 1, p->Hkv, n, p->D));
    CLATTN_FORWARD(clattn__kv_check_input(ctx, "v_new", v_new, 1, p->Hkv, n, p->Dv));
    CLATTN_FORWARD(check_table(p, "kv pool append", table, NULL, NULL));
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
    clattn_status st = check_written_pages(p, "kv pool append", table, pages, (size_t)n);
    free(pages);
    CLATTN_FORWARD(st);
    int64_t ntiles = 0, dup = -1;
    CLATTN_FORWARD(group_tiles(ctx, slot_mapping, n, p->ps, &order, &grp, &ntiles, &dup));
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
    if (st == CLATTN_SUCCESS) st = clattn__kv_stage_input(ctx, k_new, &kx);
    if (st == CLATTN_SUCCESS) st = clattn__kv_stage_input(ctx, v_new, &vx);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, slot_mapping, (size_t)n, &dslots);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, grp, (size_t)ntiles + 1, &dgrp);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, order, (size_t)n, &dorder);
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

clattn_status clattn_kv_pool_attention(clattn_context *ctx, clattn_kv_pool *p, const clattn_page_table *table,
                                       const int32_t *qo_indptr, const clattn_tensor *q, clattn_tensor *o,
                                       const clattn_options *opt, cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !p, CLATTN_ERROR_INVALID_ARGUMENT, "kv pool attention: pool is NULL");
    CLATTN_RETURN_IF(ctx, p->ctx != ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool attention: the pool belongs to another context");
    CLATTN_RETURN_IF(ctx, !q || !o, CLATTN_ERROR_INVALID_ARGUMENT, "kv pool attention: %s is NULL", !q ? "q" : "o");
    clattn_options o2;
    if (opt) {
        char oerr[512];
        clattn_status ost = clattn__options_read(opt, &o2, oerr, sizeof oerr);
        if (ost != CLATTN_SUCCESS) return clattn__fail(ctx, ost, "kv pool attention: %s", oerr);
    } else {
        clattn_options_init(&o2);
        o2.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    }
    CLATTN_RETURN_IF(ctx, o2.kv_lens, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool attention: options.kv_lens must be NULL: the page table gives the lengths");
    CLATTN_RETURN_IF(ctx, o2.mask, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool attention: options.mask is not supported over pages (a ragged batch has no "
                     "common mask shape)");
    o2.path = CLATTN_PATH_AUTO;
    int64_t max_len = 0, max_slots = 0, lq_max = 0;
    CLATTN_FORWARD(check_table(p, "kv pool attention", table, &max_len, &max_slots));
    CLATTN_RETURN_IF(ctx, q->ne[0] != 1, CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool attention: q must be packed as [1, Hq, Nq, D] (its first extent is %lld)",
                     (long long)q->ne[0]);
    CLATTN_FORWARD(check_qo(ctx, "kv pool attention", qo_indptr, table->n_seqs, q->ne[2], &lq_max));

    /* K and V stand in as cl_mem descriptors of [1, Hkv, max_len, D|Dv] so the library's
     * own validation checks q, o and every option against the pool */
    clattn_tensor kd = {NULL, p->k, 0, CLATTN_F32, {1, p->Hkv, max_len, p->D}, {0, 0, 0, 0}};
    clattn_tensor vd = {NULL, p->v, 0, CLATTN_F32, {1, p->Hkv, max_len, p->Dv}, {0, 0, 0, 0}};
    clattn__problem pr;
    char err[1024];
    clattn_status st = clattn__problem_init(&pr, q, &kd, &vd, o, &o2, err, sizeof err);
    if (st != CLATTN_SUCCESS) return clattn__fail(ctx, st, "kv pool attention: %s", err);
    CLATTN_FORWARD(clattn__enqueue_wait(ctx, o2.wait_events, o2.num_wait_events));
    if (clattn__tensor_numel(o) == 0) {
        if (event) CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
        return CLATTN_SUCCESS;
    }
    clattn__kv_src src;
    memset(&src, 0, sizeof src);
    src.kf = p->kf;
    src.vf = p->vf;
    src.k = p->k;
    src.v = p->v;
    src.krot = p->krot;
    src.vrot = p->vrot;
    src.ktab = p->ktab;
    src.vtab = p->vtab;
    src.k_slab = p->k_page;
    src.k_row = p->k_row;
    src.v_slab = p->v_page;
    src.v_row = p->v_row;
    src.paged = 1;
    src.page_size = p->ps;
    src.page_slots = p->pt;
    src.n_seqs = (int64_t)table->n_seqs;
    src.lq_max = lq_max > 0 ? lq_max : 1;
    const size_t ns = table->n_seqs;
    st = upload_ints(ctx, table->indptr, ns + 1, &src.indptr);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, table->indices, (size_t)table->indptr[ns], &src.indices);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, table->last_page_len, ns, &src.last);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, qo_indptr, ns + 1, &src.qo_indptr);
    clattn__dev_problem dp;
    memset(&dp, 0, sizeof dp);
    bool staged = false;
    if (st == CLATTN_SUCCESS) {
        st = clattn__stage(ctx, &pr, &dp);
        staged = st == CLATTN_SUCCESS;
    }
    cl_event ev = NULL;
    if (st == CLATTN_SUCCESS) st = clattn__kv_attend(ctx, &src, &dp, max_slots, event ? &ev : NULL);
    clattn__buffer_release(ctx, src.indptr); /* queued kernels keep them alive */
    clattn__buffer_release(ctx, src.indices);
    clattn__buffer_release(ctx, src.last);
    clattn__buffer_release(ctx, src.qo_indptr);
    if (!staged) return st;
    return clattn__stage_complete(ctx, &dp, st, ev, event);
}

static int64_t seq_len(const clattn_kv_pool *p, const clattn_page_table *t, size_t s)
{
    const int64_t np = t->indptr[s + 1] - t->indptr[s];
    return np > 0 ? (np - 1) * p->ps + t->last_page_len[s] : 0;
}

/* ---- Cascade ---------------------------------------------------------------------- */

/* The dequantizing gather (cl/kv_quant.cl kv_paged_dequant) of keys or values. */
static clattn_status dequant_kernel(clattn_kv_pool *p, bool keys, cl_kernel *k)
{
    const clattn_kv_format f = keys ? p->kf : p->vf;
    const bool tiled = keys && clattn__kv_keys_tiled(f);
    char opts[160] = "";
    clattn__opts_add(opts, sizeof opts, "-DKV_APPEND -DKV_MOVE -DPAGED -DDIM=%lld -DFMT=%d -DVTILES=%d -DKTILES=%d",
                     (long long)(keys ? p->D : p->Dv), (int)f, keys ? 0 : 1, tiled ? 1 : 0);
    return clattn__kernel_get(p->ctx, "kv_quant.cl", opts, "kv_paged_dequant", k);
}

/* Tokens src[0..n) of every head as floats into out, [n, Hkv, dim] (keys or values). */
static clattn_status enqueue_dequant(clattn_kv_pool *p, bool keys, cl_kernel k, int64_t n, cl_mem src, cl_mem out)
{
    clattn_context *ctx = p->ctx;
    const cl_long page_bytes = (cl_long)(keys ? p->k_page : p->v_page), tile_bytes = (cl_long)p->k_row, H = p->Hkv,
                  ps = p->ps;
    const cl_mem pool = keys ? p->k : p->v, rot = keys ? p->krot : p->vrot, tab = keys ? p->ktab : p->vtab;
    cl_uint a = 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, pool));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, page_bytes));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, tile_bytes));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, H));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, ps));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, src));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, out));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, rot));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, tab));
    const size_t g[2] = {(size_t)n, (size_t)p->Hkv};
    return clattn__enqueue(ctx, k, 2, g, NULL, NULL);
}

/* A view of rows r0 .. r0+n-1 of a packed [1, H, N, d] tensor. */
static clattn_tensor rows_view(const clattn_tensor *t, int64_t r0, int64_t n)
{
    clattn_tensor x = *t;
    x.offset += (size_t)(r0 * t->nb[2]);
    x.ne[2] = n;
    return x;
}

/* The prefix part of cascade: each group's prefix is read once from its pages into a
 * dense float32 block (dequantized on the device), and the group's query rows attend it
 * as one dense problem (clattn_attention: on CPUs the fused path, whose tiles reuse every
 * key across many rows), writing O and LSE rows of the group into o / lse. Rows of a
 * group without a prefix get O = 0 and LSE = -inf (filled first). */
static clattn_status cascade_prefix(clattn_context *ctx, clattn_kv_pool *p, const clattn_page_table *prefix,
                                    const int32_t *gqo, const clattn_tensor *q, clattn_tensor *o, clattn_tensor *lse,
                                    const clattn_options *base)
{
    const int64_t Hq = q->ne[1], Nq = q->ne[2], Dv = o->ne[3];
    const cl_float ninf = -INFINITY, zero = 0.0f;
    CLATTN_FORWARD(clattn__enqueue_fill(ctx, o->buffer, &zero, sizeof zero, 0, (size_t)(Hq * Nq * Dv) * 4u));
    CLATTN_FORWARD(clattn__enqueue_fill(ctx, lse->buffer, &ninf, sizeof ninf, 0, (size_t)(Hq * Nq) * 4u));
    int64_t maxlen = 0;
    for (size_t g = 0; g < prefix->n_seqs; g++) {
        const int64_t l = seq_len(p, prefix, g);
        maxlen = l > maxlen ? l : maxlen;
    }
    if (maxlen == 0) return CLATTN_SUCCESS;
    int64_t kb = 0, vb = 0;
    CLATTN_RETURN_IF(ctx, !clattn__mul_ok(maxlen, p->Hkv * p->D * 4, &kb) || !clattn__mul_ok(maxlen, p->Hkv * p->Dv * 4, &vb) ||
                              (uint64_t)kb > clattn__alloc_cap(ctx) || (uint64_t)vb > clattn__alloc_cap(ctx),
                     CLATTN_ERROR_OUT_OF_MEMORY,
                     "kv pool cascade: a prefix of %lld tokens needs %lld + %lld bytes of float keys and values, "
                     "over the largest allocation",
                     (long long)maxlen, (long long)kb, (long long)vb);
    cl_kernel kk, kv;
    CLATTN_FORWARD(dequant_kernel(p, true, &kk));
    CLATTN_FORWARD(dequant_kernel(p, false, &kv));
    int32_t *slots = malloc((size_t)maxlen * sizeof *slots);
    CLATTN_RETURN_IF(ctx, !slots, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    cl_mem kd = NULL, vd = NULL, dslots = NULL;
    clattn_status st = clattn__buffer_create(ctx, (size_t)kb, &kd);
    if (st == CLATTN_SUCCESS) st = clattn__buffer_create(ctx, (size_t)vb, &vd);
    clattn_options op = *base;
    op.causal = CLATTN_CAUSAL_NONE; /* the prefix precedes every query of its group */
    op.wait_events = NULL;          /* waited for by the caller */
    op.num_wait_events = 0;
    op.path = CLATTN_PATH_AUTO;
    for (size_t g = 0; g < prefix->n_seqs && st == CLATTN_SUCCESS; g++) {
        const int64_t len = seq_len(p, prefix, g), r0 = gqo[g], nr = gqo[g + 1] - gqo[g];
        if (len == 0 || nr == 0) continue;
        const int32_t *idx = prefix->indices + prefix->indptr[g];
        for (int64_t t = 0; t < len; t++) slots[t] = (int32_t)(idx[t / p->ps] * p->ps + t % p->ps);
        clattn__buffer_release(ctx, dslots);
        dslots = NULL;
        st = upload_ints(ctx, slots, (size_t)len, &dslots);
        if (st == CLATTN_SUCCESS) st = enqueue_dequant(p, true, kk, len, dslots, kd);
        if (st == CLATTN_SUCCESS) st = enqueue_dequant(p, false, kv, len, dslots, vd);
        /* the dense blocks are [len, Hkv, dim]: [1, Hkv, len, dim] with BLHD strides */
        clattn_tensor tk = clattn_tensor_blhd(clattn_tensor_cl(kd, 0, CLATTN_F32, 1, p->Hkv, len, p->D));
        clattn_tensor tv = clattn_tensor_blhd(clattn_tensor_cl(vd, 0, CLATTN_F32, 1, p->Hkv, len, p->Dv));
        clattn_tensor qg = rows_view(q, r0, nr), og = rows_view(o, r0, nr), lg = rows_view(lse, r0, nr);
        op.lse = &lg;
        if (st == CLATTN_SUCCESS) st = clattn_attention(ctx, &qg, &tk, &tv, &og, &op, NULL);
    }
    free(slots);
    clattn__buffer_release(ctx, dslots); /* queued kernels keep them alive */
    clattn__buffer_release(ctx, kd);
    clattn__buffer_release(ctx, vd);
    return st;
}

clattn_status clattn_kv_pool_cascade_attention(clattn_context *ctx, clattn_kv_pool *p,
                                               const clattn_page_table *prefix, const int32_t *group_qo_indptr,
                                               const clattn_page_table *suffix, const int32_t *qo_indptr,
                                               const clattn_tensor *q, clattn_tensor *o, const clattn_options *opt,
                                               cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !p || !q || !o, CLATTN_ERROR_INVALID_ARGUMENT, "kv pool cascade: %s is NULL",
                     !p ? "pool" : !q ? "q" : "o");
    CLATTN_RETURN_IF(ctx, p->ctx != ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool cascade: the pool belongs to another context");
    clattn_options base;
    if (opt) {
        char oerr[512];
        clattn_status ost = clattn__options_read(opt, &base, oerr, sizeof oerr);
        if (ost != CLATTN_SUCCESS) return clattn__fail(ctx, ost, "kv pool cascade: %s", oerr);
    } else {
        clattn_options_init(&base);
        base.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    }
    CLATTN_RETURN_IF(ctx, base.alibi || base.window_left >= 0 || base.window_right >= 0,
                     CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool cascade: ALiBi and windows depend on each query's absolute position, which "
                     "the shared prefix problem does not have; use clattn_kv_pool_attention");
    CLATTN_RETURN_IF(ctx, base.mask || base.kv_lens, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool cascade: options.mask and options.kv_lens must be NULL");
    CLATTN_FORWARD(check_table(p, "kv pool cascade (prefix)", prefix, NULL, NULL));
    CLATTN_FORWARD(check_table(p, "kv pool cascade (suffix)", suffix, NULL, NULL));
    CLATTN_RETURN_IF(ctx, q->ne[0] != 1 || o->ne[0] != 1 || o->ne[1] != q->ne[1] || o->ne[2] != q->ne[2] ||
                              o->ne[3] != p->Dv,
                     CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool cascade: q [1, Hq, Nq, D] and o [1, Hq, Nq, Dv = %lld] do not fit together",
                     (long long)p->Dv);
    int64_t lq = 0;
    const int64_t Nq = q->ne[2];
    CLATTN_FORWARD(check_qo(ctx, "kv pool cascade (groups)", group_qo_indptr, prefix->n_seqs, Nq, &lq));
    CLATTN_FORWARD(check_qo(ctx, "kv pool cascade (sequences)", qo_indptr, suffix->n_seqs, Nq, &lq));
    /* every sequence's rows within one group */
    size_t g = 0;
    for (size_t s = 0; s < suffix->n_seqs; s++) {
        if (qo_indptr[s + 1] == qo_indptr[s]) continue;
        while (g < prefix->n_seqs && group_qo_indptr[g + 1] <= qo_indptr[s]) g++;
        CLATTN_RETURN_IF(ctx, g >= prefix->n_seqs || qo_indptr[s + 1] > group_qo_indptr[g + 1],
                         CLATTN_ERROR_INVALID_ARGUMENT,
                         "kv pool cascade: sequence %zu's query rows %d..%d cross a group boundary", s,
                         qo_indptr[s], qo_indptr[s + 1] - 1);
    }
    const int64_t Hq = q->ne[1], Dv = o->ne[3];
    int64_t n_o = 0, n_l = 0;
    CLATTN_RETURN_IF(ctx, !clattn__mul_ok(Hq, Nq, &n_l) || !clattn__mul_ok(n_l, Dv, &n_o) ||
                              !clattn__mul_ok(n_o, 4, &n_o) || !clattn__mul_ok(n_l, 4, &n_l),
                     CLATTN_ERROR_INVALID_SHAPE, "kv pool cascade: o's size overflows");
    CLATTN_FORWARD(clattn__enqueue_wait(ctx, base.wait_events, base.num_wait_events));
    cl_mem parts[4] = {NULL, NULL, NULL, NULL}; /* o_prefix, lse_prefix, o_suffix, lse_suffix */
    clattn_status st = CLATTN_SUCCESS;
    for (int i = 0; i < 4 && st == CLATTN_SUCCESS; i++)
        st = clattn__buffer_create(ctx, (size_t)(i & 1 ? n_l : n_o) + 4u, &parts[i]);
    clattn_tensor to[2], tl[2];
    for (int i = 0; i < 2; i++) {
        to[i] = clattn_tensor_cl(parts[2 * i], 0, CLATTN_F32, 1, Hq, Nq, Dv);
        tl[i] = clattn_tensor_cl(parts[2 * i + 1], 0, CLATTN_F32, 1, Hq, Nq, 1);
    }
    /* q on the device once for both parts (a host q would be staged by each call) */
    clattn__dev_tensor qx;
    memset(&qx, 0, sizeof qx);
    clattn_tensor qd = *q;
    if (st == CLATTN_SUCCESS && q->host) {
        size_t span = 0;
        clattn__tensor_span(q, &span);
        st = clattn__buffer_create_copy(ctx, span ? span : 4, (const char *)q->host + q->offset, &qx.mem);
        qd.host = NULL;
        qd.buffer = qx.mem;
        qd.offset = 0;
    }
    if (st == CLATTN_SUCCESS) st = cascade_prefix(ctx, p, prefix, group_qo_indptr, &qd, &to[0], &tl[0], &base);
    clattn_options os = base;
    os.lse = &tl[1];
    os.wait_events = NULL; /* already waited for */
    os.num_wait_events = 0;
    if (st == CLATTN_SUCCESS) st = clattn_kv_pool_attention(ctx, p, suffix, qo_indptr, &qd, &to[1], &os, NULL);
    if (st == CLATTN_SUCCESS) st = clattn_merge_states(ctx, 2, to, tl, o, base.lse, event);
    for (int i = 0; i < 4; i++) clattn__buffer_release(ctx, parts[i]);
    clattn__buffer_release(ctx, qx.mem);
    return st;
}

/* ---- Page operations -------------------------------------------------------------- */

static clattn_status copy_pages(clattn_kv_pool *p, size_t n, const int32_t *src, const int32_t *dst,
                                cl_event *event)
{
    clattn_context *ctx = p->ctx;
    const size_t kb = p->k_page * (size_t)p->Hkv, vb = p->v_page * (size_t)p->Hkv;
    for (size_t i = 0; i < n; i++) {
        CLATTN_FORWARD(clattn__enqueue_copy(ctx, p->k, (size_t)src[i] * kb, p->k, (size_t)dst[i] * kb, kb));
        CLATTN_FORWARD(clattn__enqueue_copy(ctx, p->v, (size_t)src[i] * vb, p->v, (size_t)dst[i] * vb, vb));
    }
    return event ? clattn__enqueue_marker(ctx, event) : CLATTN_SUCCESS;
}

clattn_status clattn_kv_pool_copy_pages(clattn_kv_pool *p, size_t n, const int32_t *src, const int32_t *dst,
                                        cl_event *event)
{
    if (event) *event = NULL;
    if (!p) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_context *ctx = p->ctx;
    ctx->last_error[0] = '\0';
    if (n == 0) return event ? clattn__enqueue_marker(ctx, event) : CLATTN_SUCCESS;
    CLATTN_RETURN_IF(ctx, !src || !dst, CLATTN_ERROR_INVALID_ARGUMENT, "kv pool copy: %s is NULL",
                     !src ? "src" : "dst");
    uint8_t *role = calloc((size_t)p->npages, 1); /* 1: a source, 2: a destination */
    CLATTN_RETURN_IF(ctx, !role, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    clattn_status st = CLATTN_SUCCESS;
    for (size_t i = 0; i < n && st == CLATTN_SUCCESS; i++) {
        if (src[i] < 0 || src[i] >= p->npages || dst[i] < 0 || dst[i] >= p->npages)
            st = clattn__fail(ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                              "kv pool copy: pair %zu (%d -> %d) names a page outside the pool (0..%lld); "
                              "nothing was written",
                              i, src[i], dst[i], (long long)p->npages - 1);
        else
            role[src[i]] |= 1;
    }
    for (size_t i = 0; i < n && st == CLATTN_SUCCESS; i++) {
        if (role[dst[i]])
            st = clattn__fail(ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                              "kv pool copy: destination page %d (pair %zu) is also a %s; nothing was written",
                              dst[i], i, role[dst[i]] & 2 ? "destination of another pair" : "source");
        role[dst[i]] |= 2;
    }
    free(role);
    CLATTN_FORWARD(st);
    return copy_pages(p, n, src, dst, event);
}


clattn_status clattn_kv_pool_seq_copy_prefix(clattn_kv_pool *p, const clattn_page_table *table, size_t src_seq,
                                             size_t dst_seq, int64_t n_tokens, cl_event *event)
{
    if (event) *event = NULL;
    if (!p) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_context *ctx = p->ctx;
    ctx->last_error[0] = '\0';
    CLATTN_FORWARD(check_table(p, "kv pool copy prefix", table, NULL, NULL));
    CLATTN_RETURN_IF(ctx, src_seq >= table->n_seqs || dst_seq >= table->n_seqs || src_seq == dst_seq,
                     CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool copy prefix: sequences %zu and %zu must be two different sequences of the "
                     "table's %zu",
                     src_seq, dst_seq, table->n_seqs);
    const int64_t len = seq_len(p, table, src_seq);
    CLATTN_RETURN_IF(ctx, n_tokens < 0 || n_tokens > len, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool copy prefix: n_tokens = %lld is outside 0..%lld (sequence %zu's length)",
                     (long long)n_tokens, (long long)len, src_seq);
    const int64_t need = (n_tokens + p->ps - 1) / p->ps;
    const int64_t have = table->indptr[dst_seq + 1] - table->indptr[dst_seq];
    CLATTN_RETURN_IF(ctx, have < need, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool copy prefix: sequence %zu holds %lld pages, %lld tokens need %lld; add pages "
                     "to its table first",
                     dst_seq, (long long)have, (long long)n_tokens, (long long)need);
    int32_t *src = malloc((size_t)(need ? need : 1) * sizeof *src), *dst = malloc((size_t)(need ? need : 1) * sizeof *dst);
    if (!src || !dst) {
        free(src);
        free(dst);
        return clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    }
    size_t n = 0;
    for (int64_t i = 0; i < need; i++) {
        const int32_t s = table->indices[table->indptr[src_seq] + i], d = table->indices[table->indptr[dst_seq] + i];
        if (s == d) continue; /* already shared: nothing to copy */
        src[n] = s;
        dst[n++] = d;
    }
    clattn_status st = check_written_pages(p, "kv pool copy prefix", table, dst, n);
    if (st == CLATTN_SUCCESS) st = clattn_kv_pool_copy_pages(p, n, src, dst, event);
    free(src);
    free(dst);
    return st;
}

/* The move kernels of one buffer (keys or values). */
static clattn_status move_kernels(clattn_kv_pool *p, bool keys, cl_kernel *kg, cl_kernel *ks)
{
    const clattn_kv_format f = keys ? p->kf : p->vf;
    const bool tiled = keys && clattn__kv_keys_tiled(f);
    char opts[160] = "";
    clattn__opts_add(opts, sizeof opts, "-DKV_APPEND -DKV_MOVE -DPAGED -DDIM=%lld -DFMT=%d -DVTILES=%d -DKTILES=%d",
                     (long long)(keys ? p->D : p->Dv), (int)f, keys ? 0 : 1, tiled ? 1 : 0);
    CLATTN_FORWARD(clattn__kernel_get(p->ctx, "kv_quant.cl", opts, "kv_paged_gather", kg));
    return clattn__kernel_get(p->ctx, "kv_quant.cl", opts, "kv_paged_scatter", ks);
}

static clattn_status enqueue_move(clattn_kv_pool *p, bool keys, cl_kernel kg, cl_kernel ks, int64_t n,
                                  cl_mem dsrc, cl_mem ddst, cl_mem dgrp, cl_mem dorder, int64_t ntiles)
{
    clattn_context *ctx = p->ctx;
    const clattn_kv_format f = keys ? p->kf : p->vf;
    const size_t row = clattn__kv_row_bytes(f, (int)(keys ? p->D : p->Dv));
    cl_mem rows = NULL;
    CLATTN_FORWARD(clattn__buffer_create(ctx, row * (size_t)(n * p->Hkv), &rows));
    const cl_long page_bytes = (cl_long)(keys ? p->k_page : p->v_page), tile_bytes = (cl_long)p->k_row,
                  H = p->Hkv, ps = p->ps;
    const cl_mem pool = keys ? p->k : p->v;
    clattn_status st = CLATTN_SUCCESS;
    cl_uint a = 0;
#define ARG(k, x)                                                                          \
    do {                                                                                   \
        if (st == CLATTN_SUCCESS) st = CLATTN_ARG(ctx, k, &a, x);                          \
    } while (0)
    ARG(kg, pool);
    ARG(kg, page_bytes);
    ARG(kg, tile_bytes);
    ARG(kg, H);
    ARG(kg, ps);
    ARG(kg, dsrc);
    ARG(kg, rows);
    a = 0;
    ARG(ks, pool);
    ARG(ks, page_bytes);
    ARG(ks, tile_bytes);
    ARG(ks, H);
    ARG(ks, ps);
    ARG(ks, ddst);
    ARG(ks, dgrp);
    ARG(ks, dorder);
    ARG(ks, rows);
#undef ARG
    const size_t g1[2] = {(size_t)n, (size_t)p->Hkv}, g2[2] = {(size_t)ntiles, (size_t)p->Hkv};
    if (st == CLATTN_SUCCESS) st = clattn__enqueue(ctx, kg, 2, g1, NULL, NULL);
    if (st == CLATTN_SUCCESS) st = clattn__enqueue(ctx, ks, 2, g2, NULL, NULL);
    clattn__buffer_release(ctx, rows);
    return st;
}

clattn_status clattn_kv_pool_seq_remove(clattn_kv_pool *p, const clattn_page_table *table, size_t seq, int64_t p0,
                                        int64_t p1, int64_t *new_len, cl_event *event)
{
    if (event) *event = NULL;
    if (!p) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_context *ctx = p->ctx;
    ctx->last_error[0] = '\0';
    CLATTN_FORWARD(check_table(p, "kv pool remove", table, NULL, NULL));
    CLATTN_RETURN_IF(ctx, seq >= table->n_seqs, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool remove: sequence %zu is not in the table (%zu sequences)", seq, table->n_seqs);
    const int64_t len = seq_len(p, table, seq);
    if (p1 > len) p1 = len;
    CLATTN_RETURN_IF(ctx, p0 < 0 || p0 > p1, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool remove: range %lld..%lld is not within 0..%lld (sequence %zu's length)",
                     (long long)p0, (long long)p1, (long long)len, seq);
    const int32_t *idx = table->indices + table->indptr[seq];
    const int64_t np = table->indptr[seq + 1] - table->indptr[seq];
    CLATTN_FORWARD(check_written_pages(p, "kv pool remove", table, idx, (size_t)np));
    const int64_t n = len - p1; /* tokens that move down */
    if (new_len) *new_len = len - (p1 - p0);
    if (n == 0 || p1 == p0) return event ? clattn__enqueue_marker(ctx, event) : CLATTN_SUCCESS;
    int32_t *src = malloc((size_t)n * sizeof *src), *dst = malloc((size_t)n * sizeof *dst);
    int32_t *order = NULL, *grp = NULL;
    clattn_status st = CLATTN_SUCCESS;
    if (!src || !dst) st = clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "kv pool: out of host memory");
    for (int64_t t = 0; st == CLATTN_SUCCESS && t < n; t++) {
        const int64_t a = p1 + t, b = p0 + t;
        src[t] = (int32_t)(idx[a / p->ps] * p->ps + a % p->ps);
        dst[t] = (int32_t)(idx[b / p->ps] * p->ps + b % p->ps);
    }
    int64_t ntiles = 0, dup = -1;
    if (st == CLATTN_SUCCESS) st = group_tiles(ctx, dst, n, p->ps, &order, &grp, &ntiles, &dup);
    cl_kernel kg = NULL, ks = NULL, vg = NULL, vs = NULL;
    if (st == CLATTN_SUCCESS) st = move_kernels(p, true, &kg, &ks);
    if (st == CLATTN_SUCCESS) st = move_kernels(p, false, &vg, &vs);
    cl_mem dsrc = NULL, ddst = NULL, dgrp = NULL, dorder = NULL;
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, src, (size_t)n, &dsrc);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, dst, (size_t)n, &ddst);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, grp, (size_t)ntiles + 1, &dgrp);
    if (st == CLATTN_SUCCESS) st = upload_ints(ctx, order, (size_t)n, &dorder);
    if (st == CLATTN_SUCCESS) st = enqueue_move(p, true, kg, ks, n, dsrc, ddst, dgrp, dorder, ntiles);
    if (st == CLATTN_SUCCESS) st = enqueue_move(p, false, vg, vs, n, dsrc, ddst, dgrp, dorder, ntiles);
    if (st == CLATTN_SUCCESS && event) st = clattn__enqueue_marker(ctx, event);
    free(src);
    free(dst);
    free(order);
    free(grp);
    clattn__buffer_release(ctx, dsrc);
    clattn__buffer_release(ctx, ddst);
    clattn__buffer_release(ctx, dgrp);
    clattn__buffer_release(ctx, dorder);
    if (st != CLATTN_SUCCESS && new_len) *new_len = len;
    return st;
}
