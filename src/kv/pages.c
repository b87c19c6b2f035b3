/* The paged pool's page operations (clattn.h): copy whole pages, copy a sequence's prefix
 * into another's pages, and remove a range of a sequence's tokens (the later tokens move
 * down on the device, through cl/kv_quant.cl's gather and scatter kernels). */
#include "kv/pool.h"
#include "kv/attention.h"
#include "kv/format.h"
#include "core/program.h"
#include "core/kernel_args.h"

#include <stdlib.h>
#include <string.h>

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
    CLATTN_FORWARD(clattn__kv_pool_check_table(p, "kv pool copy prefix", table, NULL, NULL));
    CLATTN_RETURN_IF(ctx, src_seq >= table->n_seqs || dst_seq >= table->n_seqs || src_seq == dst_seq,
                     CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool copy prefix: sequences %zu and %zu must be two different sequences of the "
                     "table's %zu",
                     src_seq, dst_seq, table->n_seqs);
    const int64_t len = clattn__kv_pool_seq_len(p, table, src_seq);
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
    clattn_status st = clattn__kv_pool_check_written(p, "kv pool copy prefix", table, dst, n);
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
    CLATTN_FORWARD(clattn__kv_pool_check_table(p, "kv pool remove", table, NULL, NULL));
    CLATTN_RETURN_IF(ctx, seq >= table->n_seqs, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool remove: sequence %zu is not in the table (%zu sequences)", seq, table->n_seqs);
    const int64_t len = clattn__kv_pool_seq_len(p, table, seq);
    if (p1 > len) p1 = len;
    CLATTN_RETURN_IF(ctx, p0 < 0 || p0 > p1, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool remove: range %lld..%lld is not within 0..%lld (sequence %zu's length)",
                     (long long)p0, (long long)p1, (long long)len, seq);
    const int32_t *idx = table->indices + table->indptr[seq];
    const int64_t np = table->indptr[seq + 1] - table->indptr[seq];
    CLATTN_FORWARD(clattn__kv_pool_check_written(p, "kv pool remove", table, idx, (size_t)np));
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
    if (st == CLATTN_SUCCESS) st = clattn__kv_group_tiles(ctx, dst, n, p->ps, &order, &grp, &ntiles, &dup);
    cl_kernel kg = NULL, ks = NULL, vg = NULL, vs = NULL;
    if (st == CLATTN_SUCCESS) st = move_kernels(p, true, &kg, &ks);
    if (st == CLATTN_SUCCESS) st = move_kernels(p, false, &vg, &vs);
    cl_mem dsrc = NULL, ddst = NULL, dgrp = NULL, dorder = NULL;
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, src, (size_t)n, &dsrc);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, dst, (size_t)n, &ddst);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, grp, (size_t)ntiles + 1, &dgrp);
    if (st == CLATTN_SUCCESS) st = clattn__kv_upload_ints(ctx, order, (size_t)n, &dorder);
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
