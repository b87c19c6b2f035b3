/* clattn_mpi_attention: the prefill call's validation, the agreement on the problem, and
 * the dispatch to the ring/zigzag (mpi_ring.c) or Ulysses (mpi_ulysses.c) scheme. */
#include "mpi_internal.h"

#include <stdbool.h>
#include <string.h>

static clattn_status validate(cp_problem *p, const clattn_tensor *q, const clattn_tensor *k,
                              const clattn_tensor *v, const clattn_tensor *o)
{
    clattn_status st;
    if ((st = clmpi_check_tensor(q, "q", true)) || (st = clmpi_check_tensor(k, "k", true)) ||
        (st = clmpi_check_tensor(v, "v", true)) || (st = clmpi_check_tensor(o, "o", true)))
        return st;
    if (p->opt.lse && (st = clmpi_check_tensor(p->opt.lse, "options.lse", false))) return st;
    if (p->opt.mask && (st = clmpi_check_tensor(p->opt.mask, "options.mask", false))) return st;
    if (p->opt.kv_lens && (st = clmpi_check_tensor(p->opt.kv_lens, "options.kv_lens", false))) return st;
    if (p->opt.alibi && (st = clmpi_check_tensor(p->opt.alibi, "options.alibi", false))) return st;
    if (p->opt.num_wait_events) return clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT, "wait events are not taken");
    if ((int)p->scheme < 0 || p->scheme >= CLATTN_CP_COUNT_)
        return clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT, "unknown context-parallel scheme %d", (int)p->scheme);
    p->B = q->ne[0], p->Hq = q->ne[1], p->Hkv = k->ne[1], p->D = q->ne[3], p->Dv = v->ne[3];
    if (p->Lq < 0 || p->Lk < 0) return clmpi_fail(CLATTN_ERROR_INVALID_SHAPE, "negative totals");
    clattn_cp_slices(p->scheme, p->Lq, p->rank, p->n, p->qs, p->ql, &p->nq);
    clattn_cp_slices(p->scheme, p->Lk, p->rank, p->n, p->ks, p->kl, &p->nk);
    p->lq = p->ql[0] + p->ql[1];
    p->lk = p->kl[0] + p->kl[1];
    if (q->ne[2] != p->lq || o->ne[2] != p->lq)
        return clmpi_fail(CLATTN_ERROR_INVALID_SHAPE,
                          "rank %d holds %lld query rows of %lld under %s, but q has %lld and o %lld",
                          p->rank, (long long)p->lq, (long long)p->Lq, clattn_cp_scheme_name(p->scheme),
                          (long long)q->ne[2], (long long)o->ne[2]);
    if (k->ne[2] != p->lk || v->ne[2] != p->lk)
        return clmpi_fail(CLATTN_ERROR_INVALID_SHAPE,
                          "rank %d holds %lld keys of %lld under %s, but k has %lld and v %lld",
                          p->rank, (long long)p->lk, (long long)p->Lk, clattn_cp_scheme_name(p->scheme),
                          (long long)k->ne[2], (long long)v->ne[2]);
    if (p->Hkv < 1 || p->Hq % p->Hkv || k->ne[0] != p->B || v->ne[0] != p->B || v->ne[1] != p->Hkv ||
        k->ne[3] != p->D || o->ne[0] != p->B || o->ne[1] != p->Hq || o->ne[3] != p->Dv ||
        p->D < 1 || p->D > 256 || p->Dv < 1 || p->Dv > 256)
        return clmpi_fail(CLATTN_ERROR_INVALID_SHAPE,
                          "q [%lld, %lld, ., %lld], k [%lld, %lld, ., %lld], v [%lld, %lld, ., %lld] and "
                          "o [%lld, %lld, ., %lld] do not fit together",
                          (long long)q->ne[0], (long long)q->ne[1], (long long)q->ne[3], (long long)k->ne[0],
                          (long long)k->ne[1], (long long)k->ne[3], (long long)v->ne[0], (long long)v->ne[1],
                          (long long)v->ne[3], (long long)o->ne[0], (long long)o->ne[1], (long long)o->ne[3]);
    if (p->opt.lse && (p->opt.lse->dtype != CLATTN_F32 || p->opt.lse->ne[0] != p->B ||
                       p->opt.lse->ne[1] != p->Hq || p->opt.lse->ne[2] != p->lq))
        return clmpi_fail(CLATTN_ERROR_INVALID_SHAPE, "options.lse must be f32 [B, Hq, local rows, 1]");
    if (p->scheme == CLATTN_CP_ULYSSES && (p->Hq % p->n || p->Hkv % p->n))
        return clmpi_fail(CLATTN_ERROR_INVALID_SHAPE,
                          "ulysses needs Hq (%lld) and Hkv (%lld) divisible by the %d ranks",
                          (long long)p->Hq, (long long)p->Hkv, p->n);
    return CLATTN_SUCCESS;
}

clattn_status clattn_mpi_attention(clattn_context *ctx, MPI_Comm comm, clattn_cp_scheme scheme,
                                   const clattn_tensor *q, const clattn_tensor *k,
                                   const clattn_tensor *v, clattn_tensor *o, int64_t lq_total,
                                   int64_t lk_total, const clattn_options *opt,
                                   clattn_mpi_stats *stats)
{
    clattn_mpi_stats local;
    clattn_mpi_stats *s = clmpi_begin(stats, &local);
    const double t0 = clmpi_now_s();
    cp_problem p;
    memset(&p, 0, sizeof p);
    MPI_Comm_rank(comm, &p.rank);
    MPI_Comm_size(comm, &p.n);
    p.scheme = scheme;
    p.Lq = lq_total;
    p.Lk = lk_total;
    clattn_status st = CLATTN_SUCCESS;
    if (!ctx) st = clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT, "ctx is NULL");
    /* a copy of the caller's options whatever its struct_size (clattn_options_init
     * recorded it); older, smaller structs keep our defaults for the fields they lack */
    clattn_options_init(&p.opt);
    if (opt) {
        const clattn_status os = clmpi_copy_options(&p.opt, opt);
        if (os != CLATTN_SUCCESS) st = os;
    }
    if (st == CLATTN_SUCCESS) st = validate(&p, q, k, v, o);
    st = clmpi_agree(comm, st, p.rank, -1, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t sig[] = {p.B, p.Hq, p.Hkv, p.D, p.Dv, q->dtype, k->dtype, v->dtype, p.Lq, p.Lk,
                               scheme, p.opt.causal, p.opt.window_left, p.opt.window_right,
                               !!p.opt.mask + 2 * !!p.opt.kv_lens + 4 * !!p.opt.alibi + 8 * !!p.opt.lse};
        st = clmpi_same_everywhere(comm, sig, (int)(sizeof sig / sizeof sig[0]), s);
    }
    if (st == CLATTN_SUCCESS)
        st = scheme == CLATTN_CP_ULYSSES ? clmpi_ulysses(ctx, comm, &p, q, k, v, o, s)
                                         : clmpi_ring(ctx, comm, &p, q, k, v, o, s);
    s->total_s = clmpi_now_s() - t0;
    return st;
}
