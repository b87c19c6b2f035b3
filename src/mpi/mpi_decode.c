/* clattn_mpi_kv_cache_attention: decode over a KV cache sharded over the ranks; each
 * rank attends over its shard and one MPI_Allreduce with a log-sum-exp merge operator
 * combines the states (see clattn_mpi.h). */
#include "mpi_internal.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The log-sum-exp merge as an MPI operator on records of (Dv floats of O, then LSE). */
static void lse_merge_op(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes = 0;
    MPI_Type_size(*dt, &bytes);
    const int64_t w = bytes / 4, Dv = w - 1;
    float *a = in, *b = inout;
    for (int r = 0; r < *len; r++, a += w, b += w) clmpi_merge_row(b, b + Dv, a, a[Dv], Dv);
}

clattn_status clattn_mpi_kv_cache_attention(clattn_context *ctx, MPI_Comm comm,
                                            clattn_kv_cache *cache, const clattn_tensor *q,
                                            clattn_tensor *o, const clattn_options *opt,
                                            clattn_mpi_stats *stats)
{
    clattn_mpi_stats local;
    clattn_mpi_stats *s = clmpi_begin(stats, &local);
    const double t0 = clmpi_now_s();
    int rank, n;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &n);
    clattn_options g;
    clattn_options_init(&g);
    if (!opt) g.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    clattn_status st = CLATTN_SUCCESS;
    if (opt) st = clmpi_copy_options(&g, opt);
    if (!ctx || !cache) st = clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT, "ctx and cache must not be NULL");
    if (st == CLATTN_SUCCESS && ((st = clmpi_check_tensor(q, "q", true)) || (st = clmpi_check_tensor(o, "o", true))))
        (void)0;
    if (st == CLATTN_SUCCESS && g.lse && (st = clmpi_check_tensor(g.lse, "options.lse", false))) (void)0;
    if (st == CLATTN_SUCCESS && g.mask && (st = clmpi_check_tensor(g.mask, "options.mask", false))) (void)0;
    if (st == CLATTN_SUCCESS && g.alibi && (st = clmpi_check_tensor(g.alibi, "options.alibi", false))) (void)0;
    if (st == CLATTN_SUCCESS && (g.kv_lens || g.num_wait_events))
        st = clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT, "options.kv_lens and wait events are not taken "
                                                       "(lengths come from the cache shards)");
    const int64_t B = q ? q->ne[0] : 0, Hq = q ? q->ne[1] : 0, Lq = q ? q->ne[2] : 0,
                  Dv = o ? o->ne[3] : 0;
    if (st == CLATTN_SUCCESS && (o->ne[0] != B || o->ne[1] != Hq || o->ne[2] != Lq || Dv < 1 || Dv > 256 ||
                                 B < 1 || B > 1 << 20))
        st = clmpi_fail(CLATTN_ERROR_INVALID_SHAPE, "o must be [B, Hq, Lq, Dv] as q is [B, Hq, Lq, D]");
    if (st == CLATTN_SUCCESS && g.lse &&
        (g.lse->dtype != CLATTN_F32 || g.lse->ne[0] != B || g.lse->ne[1] != Hq || g.lse->ne[2] != Lq))
        st = clmpi_fail(CLATTN_ERROR_INVALID_SHAPE, "options.lse must be f32 [B, Hq, Lq, 1]");
    int32_t *len = NULL;
    int64_t *start = NULL, *total = NULL, *mylen = NULL;
    float *rec = NULL, *mat = NULL, *ob = NULL, *lb = NULL;
    if (st == CLATTN_SUCCESS) {
        len = calloc((size_t)B, sizeof *len);
        start = calloc((size_t)B, sizeof *start);
        total = calloc((size_t)B, sizeof *total);
        mylen = calloc((size_t)B, sizeof *mylen);
        ob = malloc((size_t)(B * Hq * Lq * Dv) * 4 + 4);
        lb = malloc((size_t)(B * Hq * Lq) * 4 + 4);
        rec = malloc((size_t)(B * Hq * Lq * (Dv + 1)) * 4 + 4);
        if (!len || !start || !total || !mylen || !ob || !lb || !rec)
            st = clmpi_fail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory");
        else if ((st = clattn_kv_cache_lengths(cache, len)) != CLATTN_SUCCESS)
            clmpi_fail(st, "clattn_kv_cache_lengths: %s", clattn_context_last_error(ctx));
    }
    st = clmpi_agree(comm, st, rank, -1, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t sig[] = {B, Hq, Lq, Dv, q->ne[3], g.causal, g.window_left, g.window_right,
                               !!g.mask + 2 * !!g.alibi + 4 * !!g.lse};
        st = clmpi_same_everywhere(comm, sig, (int)(sizeof sig / sizeof sig[0]), s);
    }
    const bool started = st == CLATTN_SUCCESS; /* the same on every rank */
    if (st == CLATTN_SUCCESS) {
        for (int64_t b = 0; b < B; b++) mylen[b] = len[b];
        const double tc = clmpi_now_s();
        MPI_Exscan(mylen, start, (int)B, MPI_INT64_T, MPI_SUM, comm);
        if (rank == 0) memset(start, 0, (size_t)B * sizeof *start);
        MPI_Allreduce(mylen, total, (int)B, MPI_INT64_T, MPI_SUM, comm);
        s->sync_s += clmpi_now_s() - tc;
    }
    if (st == CLATTN_SUCCESS) {
        const double tc = clmpi_now_s();
        int64_t maxlen = 0, maxtot = 0;
        for (int64_t b = 0; b < B; b++) {
            if (len[b] > maxlen) maxlen = len[b];
            if (total[b] > maxtot) maxtot = total[b];
        }
        const clattn_tensor *m = g.mask;
        if (m && (m->dtype != CLATTN_BOOL && m->dtype != CLATTN_F32))
            st = clmpi_fail(CLATTN_ERROR_UNSUPPORTED_DTYPE, "options.mask must be bool or f32");
        if (m && ((m->ne[0] != 1 && m->ne[0] != B) || (m->ne[1] != 1 && m->ne[1] != Hq) ||
                  (m->ne[2] != 1 && m->ne[2] != Lq) || (m->ne[3] != 1 && m->ne[3] != maxtot)))
            st = clmpi_fail(CLATTN_ERROR_INVALID_SHAPE,
                            "options.mask must broadcast to [B, Hq, Lq, max total length %lld]", (long long)maxtot);
        if (g.alibi && (g.alibi->dtype != CLATTN_F32 || g.alibi->ne[0] != Hq))
            st = clmpi_fail(CLATTN_ERROR_INVALID_SHAPE, "options.alibi must be f32 [Hq]");
        if (clmpi_fault_step(rank) == 0 && st == CLATTN_SUCCESS)
            st = clmpi_fail(CLATTN_ERROR_INTERNAL, "rank %d, step 0: simulated failure (CLATTN_MPI_FAULT)", rank);
        clattn_options loc = g;
        clattn_tensor to = clattn_tensor_host(ob, CLATTN_F32, B, Hq, Lq, Dv);
        clattn_tensor tl = clattn_tensor_host(lb, CLATTN_F32, B, Hq, Lq, 1), tm;
        loc.lse = &tl;
        /* Global positions differ per batch entry, so anything that reads them (a causal
         * edge inside the chunk, windows, ALiBi, the caller's mask) becomes one float mask
         * over [B, Hq, Lq, this shard's longest length]; plain decode needs none. */
        const bool plain = (g.causal == CLATTN_CAUSAL_NONE ||
                            (g.causal == CLATTN_CAUSAL_BOTTOM_RIGHT && Lq == 1)) &&
                           g.window_left < 0 && g.window_right < 0 && !g.alibi && !m;
        if (st == CLATTN_SUCCESS && maxlen == 0) {
            for (int64_t r = 0; r < B * Hq * Lq; r++) lb[r] = -INFINITY;
            memset(ob, 0, (size_t)(B * Hq * Lq * Dv) * 4);
        } else if (st == CLATTN_SUCCESS) {
            if (!plain) {
                mat = malloc((size_t)(B * Hq * Lq * maxlen) * 4);
                if (!mat) st = clmpi_fail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the shard's mask");
                for (int64_t b = 0; mat && b < B; b++)
                    for (int64_t h = 0; h < Hq; h++) {
                        const double slope = g.alibi ? *(const float *)((const unsigned char *)g.alibi->host +
                                                                          g.alibi->offset + h * g.alibi->nb[0])
                                                     : 0.0;
                        int64_t gmin = INT64_MIN / 4, gmax = INT64_MAX / 4;
                        if (g.causal == CLATTN_CAUSAL_BOTTOM_RIGHT) gmin = 0;
                        if (g.causal == CLATTN_CAUSAL_TOP_LEFT) gmin = total[b] - Lq;
                        if (g.window_right >= 0 && -g.window_right > gmin) gmin = -g.window_right;
                        if (g.window_left >= 0) gmax = g.window_left;
                        for (int64_t i = 0; i < Lq; i++)
                            for (int64_t j = 0; j < maxlen; j++) {
                                float *w = mat + ((b * Hq + h) * Lq + i) * maxlen + j;
                                const int64_t jg = start[b] + j, gg = i + total[b] - Lq - jg;
                                double sv = 0.0;
                                if (j >= len[b]) {
                                    *w = 0.0f; /* beyond the shard: excluded by its length */
                                    continue;
                                }
                                if (gg < gmin || gg > gmax) sv = -INFINITY;
                                if (m && sv == 0.0) {
                                    const unsigned char *at =
                                        (const unsigned char *)m->host + m->offset +
                                        (m->ne[0] == 1 ? 0 : b) * m->nb[0] + (m->ne[1] == 1 ? 0 : h) * m->nb[1] +
                                        (m->ne[2] == 1 ? 0 : i) * m->nb[2] + (m->ne[3] == 1 ? 0 : jg) * m->nb[3];
                                    if (m->dtype == CLATTN_BOOL)
                                        sv = *at ? 0.0 : -INFINITY;
                                    else {
                                        float f;
                                        memcpy(&f, at, 4);
                                        sv = f;
                                    }
                                }
                                if (g.alibi && sv != -INFINITY) sv -= slope * (double)(gg < 0 ? -gg : gg);
                                *w = (float)sv;
                            }
                    }
                tm = clattn_tensor_host(mat, CLATTN_F32, B, Hq, Lq, maxlen);
                loc.mask = &tm;
                loc.causal = CLATTN_CAUSAL_NONE;
                loc.window_left = loc.window_right = -1;
                loc.alibi = NULL;
            }
            if (st == CLATTN_SUCCESS) {
                st = clattn_kv_cache_attention(ctx, cache, q, &to, &loc, NULL);
                if (st != CLATTN_SUCCESS) clmpi_fail(st, "rank %d: %s", rank, clattn_context_last_error(ctx));
            }
        }
        s->compute_s += clmpi_now_s() - tc;
        s->steps = 1;
    }
    if (started) st = clmpi_agree(comm, st, rank, 0, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t rows = B * Hq * Lq;
        clmpi_pack_records(rec, ob, lb, rows, Dv);
        MPI_Datatype rt;
        MPI_Op op;
        MPI_Type_contiguous((int)(Dv + 1), MPI_FLOAT, &rt);
        MPI_Type_commit(&rt);
        MPI_Op_create(lse_merge_op, 1, &op);
        const double tc = clmpi_now_s();
        int rc = MPI_Allreduce(MPI_IN_PLACE, rec, (int)rows, rt, op, comm);
        s->comm_s += clmpi_now_s() - tc;
        s->wait_s += clmpi_now_s() - tc;
        s->bytes_sent += rows * (Dv + 1) * 4;
        MPI_Op_free(&op);
        MPI_Type_free(&rt);
        if (rc != MPI_SUCCESS) st = clmpi_fail(CLATTN_ERROR_INTERNAL, "MPI_Allreduce of the states failed (%d)", rc);
        st = clmpi_agree(comm, st, rank, 1, s);
        if (st == CLATTN_SUCCESS)
            clmpi_store_rows(o, g.lse, B, Hq, Lq, Dv, rec, Dv + 1, rec + Dv, Dv + 1);
    }
    free(len), free(start), free(total), free(mylen), free(rec), free(mat), free(ob), free(lb);
    s->total_s = clmpi_now_s() - t0;
    return st;
}

