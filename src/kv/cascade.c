/* Cascade attention over the paged pool (clattn.h, clattn_kv_pool_cascade_attention):
 * each group's shared prefix is attended once as a dense problem, every sequence's own
 * suffix through clattn_kv_pool_attention, and the two parts merged by their LSE. */
#include "kv/pool.h"
#include "kv/attention.h"
#include "kv/format.h"
#include "core/program.h"
#include "core/kernel_args.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
        const int64_t l = clattn__kv_pool_seq_len(p, prefix, g);
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
        const int64_t len = clattn__kv_pool_seq_len(p, prefix, g), r0 = gqo[g], nr = gqo[g + 1] - gqo[g];
        if (len == 0 || nr == 0) continue;
        const int32_t *idx = prefix->indices + prefix->indptr[g];
        for (int64_t t = 0; t < len; t++) slots[t] = (int32_t)(idx[t / p->ps] * p->ps + t % p->ps);
        clattn__buffer_release(ctx, dslots);
        dslots = NULL;
        st = clattn__kv_upload_ints(ctx, slots, (size_t)len, &dslots);
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
    CLATTN_FORWARD(clattn__kv_options(ctx, "kv pool cascade", opt, &base));
    CLATTN_RETURN_IF(ctx, base.alibi || base.window_left >= 0 || base.window_right >= 0,
                     CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool cascade: ALiBi and windows depend on each query's absolute position, which "
                     "the shared prefix problem does not have; use clattn_kv_pool_attention");
    CLATTN_RETURN_IF(ctx, base.mask || base.kv_lens, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv pool cascade: options.mask and options.kv_lens must be NULL");
    CLATTN_FORWARD(clattn__kv_pool_check_table(p, "kv pool cascade (prefix)", prefix, NULL, NULL));
    CLATTN_FORWARD(clattn__kv_pool_check_table(p, "kv pool cascade (suffix)", suffix, NULL, NULL));
    CLATTN_RETURN_IF(ctx, q->ne[0] != 1 || o->ne[0] != 1 || o->ne[1] != q->ne[1] || o->ne[2] != q->ne[2] ||
                              o->ne[3] != p->Dv,
                     CLATTN_ERROR_INVALID_SHAPE,
                     "kv pool cascade: q [1, Hq, Nq, D] and o [1, Hq, Nq, Dv = %lld] do not fit together",
                     (long long)p->Dv);
    int64_t lq = 0;
    const int64_t Nq = q->ne[2];
    CLATTN_FORWARD(clattn__kv_pool_check_qo(ctx, "kv pool cascade (groups)", group_qo_indptr, prefix->n_seqs, Nq, &lq));
    CLATTN_FORWARD(clattn__kv_pool_check_qo(ctx, "kv pool cascade (sequences)", qo_indptr, suffix->n_seqs, Nq, &lq));
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
