/* The paged KV pool inside (pool.c): its layout, and the page-table checks and slot
 * grouping that its append (pool.c), cascade (cascade.c) and page operations (pages.c)
 * share.
 *
 * Layout: the key buffer is [num_pages][Hkv] slabs of k_page bytes and the value buffer
 * [num_pages][Hkv] slabs of v_page bytes, so one page of every head is one contiguous
 * block (a page copy is one copy per buffer). A slab holds PT slots laid out as the
 * contiguous cache lays out a slab of PT positions: key tiles of 16 tokens (int8, tq),
 * key rows (f32, f16), value tiles of 16 tokens. PT = page_size, or 16 for pages below
 * a tile when either format is tiled (the kernel skips the padding slots). */
#ifndef CLATTN_KV_POOL_H
#define CLATTN_KV_POOL_H

#include "kv/cache.h"

struct clattn_kv_pool {
    clattn_context *ctx;
    int64_t npages, ps, pt, Hkv, D, Dv;
    clattn_kv_format kf, vf;
    cl_mem k, v, krot, vrot, ktab, vtab;
    size_t k_row, v_row, k_page, v_page; /* bytes: key tile / row, value tile, (page, head) slabs */
    uint64_t bytes;
};

/* Every rule of a page table (clattn.h); *max_len / *max_slots (may be NULL) receive the
 * longest sequence in tokens and in slots. Failures read "what: ...". */
clattn_status clattn__kv_pool_check_table(const clattn_kv_pool *p, const char *what, const clattn_page_table *t,
                                          int64_t *max_len, int64_t *max_slots);
/* qo_indptr of n sequences runs from 0 to Nq without decreasing; *lq_max: the longest. */
clattn_status clattn__kv_pool_check_qo(clattn_context *ctx, const char *what, const int32_t *qo, size_t n,
                                       int64_t Nq, int64_t *lq_max);
/* No page of pages[0..n) may be held by two sequences of the table. */
clattn_status clattn__kv_pool_check_written(clattn_kv_pool *p, const char *what, const clattn_page_table *t,
                                            const int32_t *pages, size_t n);
/* Sequence s's length in tokens. */
int64_t clattn__kv_pool_seq_len(const clattn_kv_pool *p, const clattn_page_table *t, size_t s);
/* Sort tokens by slot and group them by 16-slot tile: order[], grp[ntiles + 1] (caller
 * frees). *dup receives a token whose slot another token shares, or -1. */
clattn_status clattn__kv_group_tiles(clattn_context *ctx, const int32_t *slots, int64_t n, int64_t ps,
                                     int32_t **order, int32_t **grp, int64_t *ntiles, int64_t *dup);

#endif /* CLATTN_KV_POOL_H */
