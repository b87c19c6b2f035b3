/* Runs the paged pool's kernels (cl/kv_quant.cl's paged append, move and row kernels,
 * cl/kv_attn.cl built with -DPAGED) on small pools: appends through shuffled slot
 * mappings in two pieces, attention of a ragged batch with decode and chunked rows,
 * padded small pages and unpadded ones, GQA, LSE and causal, bool and float masks,
 * cascade attention, page copies and a range removal, so that under oclgrind each variant is checked for
 * out-of-bounds accesses, races and API misuse. Correctness is tests/test_kv_pool.c's
 * job; here every output must be finite and within the range of the values appended.
 * Exit 0 when every case ran clean. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "clattn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NSEQ = 3, HQ = 4, HKV = 2, D = 24, DV = 20, NPAGES = 24, MAXTOK = 40 };

static float rnd(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 23) - 1.0f;
}

static int run_case(clattn_kv_format kf, clattn_kv_format vf, int ps, int ops)
{
    static float k[HKV * 2 * MAXTOK * D], v[HKV * 2 * MAXTOK * DV], q[HQ * 8 * D], o[HQ * 8 * DV], lse[HQ * 8];
    unsigned s = 99u + (unsigned)kf * 7u + (unsigned)vf * 3u + (unsigned)ps;
    for (size_t i = 0; i < sizeof k / 4; i++) k[i] = rnd(&s);
    for (size_t i = 0; i < sizeof v / 4; i++) v[i] = rnd(&s);
    for (size_t i = 0; i < sizeof q / 4; i++) q[i] = rnd(&s);
    /* sequence lengths 21, 0, 13, appended as 10+11, 0, 6+7; pages from a shuffled list */
    const int len[NSEQ] = {21, 0, 13}, first[NSEQ] = {10, 0, 6};
    int32_t order[NPAGES];
    for (int i = 0; i < NPAGES; i++) order[i] = (i * 7 + 3) % NPAGES;
    int32_t indptr[NSEQ + 1] = {0}, indices[NPAGES], last[NSEQ];
    int used = 0;
    for (int b = 0; b < NSEQ; b++) {
        const int np = (len[b] + ps - 1) / ps;
        for (int i = 0; i < np; i++) indices[used + i] = order[used + i];
        used += np;
        indptr[b + 1] = used;
        last[b] = np ? len[b] - (np - 1) * ps : 0;
    }
    const clattn_page_table table = {NSEQ, indptr, indices, last, ps};
    clattn_context *ctx = NULL;
    clattn_kv_pool *pool = NULL;
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st == CLATTN_SUCCESS) st = clattn_kv_pool_create(ctx, NPAGES, ps, HKV, D, DV, kf, vf, &pool);
    for (int piece = 0; piece < 2 && st == CLATTN_SUCCESS; piece++) {
        int32_t slots[MAXTOK];
        int n = 0;
        for (int b = 0; b < NSEQ; b++)
            for (int t = piece ? first[b] : 0; t < (piece ? len[b] : first[b]); t++)
                slots[n++] = indices[indptr[b] + t / ps] * ps + t % ps;
        clattn_tensor tk = clattn_tensor_host(k + piece * MAXTOK * D, CLATTN_F32, 1, HKV, n, D);
        clattn_tensor tv = clattn_tensor_host(v + piece * MAXTOK * DV, CLATTN_F32, 1, HKV, n, DV);
        tk.nb[1] = (int64_t)sizeof(float) * 2 * MAXTOK * D;
        tv.nb[1] = (int64_t)sizeof(float) * 2 * MAXTOK * DV;
        st = clattn_kv_pool_append(pool, &table, &tk, &tv, slots, NULL);
    }
    const int32_t qo[NSEQ + 1] = {0, 3, 4, 6}; /* 3 chunked rows, 1, 2 */
    const int nq = 6;
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, HQ, nq, D), to = clattn_tensor_host(o, CLATTN_F32, 1, HQ, nq, DV);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, 1, HQ, nq, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    opt.lse = &tl;
    if (st == CLATTN_SUCCESS) st = clattn_kv_pool_attention(ctx, pool, &table, qo, &tq, &to, &opt, NULL);
    if (ops && st == CLATTN_SUCCESS) {
        /* a per-sequence mask [NSEQ, HQ|1, 3, 21] (the longest rows and sequence): bool
         * with every extent for f16 pages, float broadcast over heads with some -inf
         * otherwise; a mask buffer of the exact size, so any read past it is reported */
        static uint8_t mb[NSEQ * HQ * 3 * 21];
        static float mf[NSEQ * 3 * 21];
        for (size_t i = 0; i < sizeof mb; i++) mb[i] = (i * 7 + 1) % 5 != 0;
        for (size_t i = 0; i < sizeof mf / 4; i++) mf[i] = i % 9 == 4 ? -INFINITY : rnd(&s);
        clattn_tensor tm = kf == CLATTN_KV_F16 ? clattn_tensor_host(mb, CLATTN_BOOL, NSEQ, HQ, 3, 21)
                                               : clattn_tensor_host(mf, CLATTN_F32, NSEQ, 1, 3, 21);
        clattn_options mo = opt;
        mo.mask = &tm;
        st = clattn_kv_pool_attention(ctx, pool, &table, qo, &tq, &to, &mo, NULL);
    }
    if (ops && st == CLATTN_SUCCESS) {
        /* cascade: sequence 0 as the prefix of every row, sequences 0..2 as suffixes */
        const int32_t gqo[2] = {0, nq};
        const clattn_page_table prefix = {1, indptr, indices, last, ps};
        st = clattn_kv_pool_cascade_attention(ctx, pool, &prefix, gqo, &table, qo, &tq, &to, &opt, NULL);
        /* copy sequence 2's pages to free ones, then remove a range of sequence 0 */
        int32_t src[NPAGES], dst[NPAGES];
        const int n = indptr[3] - indptr[2];
        for (int i = 0; i < n; i++) {
            src[i] = indices[indptr[2] + i];
            dst[i] = order[used + i];
        }
        if (st == CLATTN_SUCCESS) st = clattn_kv_pool_copy_pages(pool, (size_t)n, src, dst, NULL);
        int64_t nl = 0;
        if (st == CLATTN_SUCCESS) st = clattn_kv_pool_seq_remove(pool, &table, 0, 3, 9, &nl, NULL);
        last[0] = (int32_t)(nl - (nl - 1) / ps * ps);
        indptr[1] = indptr[0] + (int32_t)((nl + ps - 1) / ps);
        const clattn_page_table t2 = {1, indptr, indices, last, ps};
        const int32_t qo1[2] = {0, nq};
        if (st == CLATTN_SUCCESS) st = clattn_kv_pool_attention(ctx, pool, &t2, qo1, &tq, &to, &opt, NULL);
    }
    int bad = 0;
    for (int i = 0; st == CLATTN_SUCCESS && i < HQ * nq * DV; i++)
        if (!(o[i] >= -1.1f && o[i] <= 1.1f)) bad++;
    printf("k %-4s v %-4s page %3d%s: %s%s\n", clattn_kv_format_name(kf), clattn_kv_format_name(vf), ps,
           ops ? " +cascade/copy/remove" : "", st ? clattn_status_string(st) : bad ? "outputs out of range" : "ok",
           st ? clattn_context_last_error(ctx) : "");
    clattn_kv_pool_free(pool);
    clattn_context_free(ctx);
    return st != CLATTN_SUCCESS || bad;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    setenv("CLATTN_CACHE_DIR", "off", 1); /* build under the checker */
    int failures = 0;
    failures += run_case(CLATTN_KV_F16, CLATTN_KV_F16, 16, 1);
    failures += run_case(CLATTN_KV_INT8, CLATTN_KV_INT8, 4, 1); /* pages padded to a tile */
    failures += run_case(CLATTN_KV_TQ3, CLATTN_KV_INT4, 32, 0);
    failures += run_case(CLATTN_KV_F32, CLATTN_KV_F32, 2, 0);   /* small unpadded pages */
    return failures ? 1 : 0;
}
