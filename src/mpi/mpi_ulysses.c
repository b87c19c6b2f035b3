/* Ulysses context parallelism: all-to-alls turn sequence slices into whole sequences for
 * a share of the heads and back (see clattn_mpi.h). */
#include "mpi_internal.h"

#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Whether every rank got its buffers: a rank that did not must not leave the others
 * inside a collective it never enters, so all of them give up together. */
static bool all_allocated(MPI_Comm comm, bool mine)
{
    int in = mine ? 1 : 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MIN, comm);
    return out == 1;
}

/* The buffers of one all-to-all: send and receive counts and displacements (bytes, one
 * per rank), and the send and receive buffers. */
typedef struct a2a {
    int *sc, *sd, *rc, *rd;
    unsigned char *sb, *rb;
    size_t sbytes;
} a2a;

static void a2a_free(a2a *x)
{
    free(x->sc), free(x->sd), free(x->rc), free(x->rd), free(x->sb), free(x->rb);
}

/* Allocate the buffers of an all-to-all over n ranks; false on every rank when any rank
 * could not (see all_allocated), with nothing left allocated. */
static bool a2a_alloc(MPI_Comm comm, a2a *x, int n, size_t sbytes, size_t rbytes)
{
    x->sc = calloc((size_t)n, sizeof *x->sc), x->sd = calloc((size_t)n, sizeof *x->sd),
    x->rc = calloc((size_t)n, sizeof *x->rc), x->rd = calloc((size_t)n, sizeof *x->rd);
    x->sb = malloc(sbytes + 1), x->rb = malloc(rbytes + 1);
    x->sbytes = sbytes;
    if (!all_allocated(comm, x->sc && x->sd && x->rc && x->rd && x->sb && x->rb)) {
        a2a_free(x);
        return false;
    }
    return true;
}

/* The exchange itself, counted in s as communication the rank waits for. */
static int a2a_exchange(MPI_Comm comm, const a2a *x, clattn_mpi_stats *s)
{
    const double t0 = clmpi_now_s();
    int rc_mpi = MPI_Alltoallv(x->sb, x->sc, x->sd, MPI_BYTE, x->rb, x->rc, x->rd, MPI_BYTE, comm);
    s->comm_s += clmpi_now_s() - t0;
    s->wait_s += clmpi_now_s() - t0;
    s->bytes_sent += (int64_t)x->sbytes;
    return rc_mpi;
}

/* Copy the rows l0 .. l0+len-1 of heads h0 .. h0+h-1 (every batch entry) of a dense
 * [B, H, L, row bytes] array to or from a packed run of them, one after the other: from is
 * the dense array when from_dense, else the packed run. Returns the bytes copied. */
static size_t copy_rows(const unsigned char *from, unsigned char *to, bool from_dense, int64_t B,
                        int64_t H, int64_t L, int64_t h0, int64_t h, int64_t l0, int64_t len,
                        size_t row)
{
    size_t off = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t hh = 0; hh < h; hh++) {
            const size_t at = (size_t)((b * H + h0 + hh) * L + l0) * row;
            memcpy(to + (from_dense ? off : at), from + (from_dense ? at : off), (size_t)len * row);
            off += (size_t)len * row;
        }
    return off;
}

/* Rank t's contiguous slice of a sequence of length L over n ranks (the split the
 * all-to-alls use): its length, and its start in *start. */
static int64_t slice_of(int64_t L, int t, int n, int64_t *start)
{
    int64_t st[2] = {0, 0}, ln[2] = {0, 0};
    int ns;
    clattn_cp_slices(CLATTN_CP_RING, L, t, n, st, ln, &ns);
    *start = st[0];
    return ln[0];
}

/* An all-to-all of head groups: in is dense [B, H, l_self, W] (elements of es bytes);
 * rank t receives heads t*H/N .. of every rank's rows, assembled by global position into
 * out [B, H/N, L_total, W]. */
static int seq_to_heads(MPI_Comm comm, const cp_problem *p, const unsigned char *in, int64_t H,
                        int64_t W, size_t es, int64_t L, unsigned char *out, clattn_mpi_stats *s)
{
    const int n = p->n;
    const int64_t h = H / n;
    int64_t start;
    const int64_t lself = slice_of(L, p->rank, n, &start);
    const size_t row = (size_t)W * es;
    size_t sbytes = (size_t)(p->B * H * lself) * row, rbytes = 0;
    for (int t = 0; t < n; t++) rbytes += (size_t)(p->B * h * slice_of(L, t, n, &start)) * row;
    a2a x;
    if (!a2a_alloc(comm, &x, n, sbytes, rbytes)) return -1;
    size_t off = 0;
    for (int t = 0; t < n; t++) { /* to rank t: [B, h, lself, W] of heads t*h .. */
        x.sd[t] = (int)off;
        off += copy_rows(in, x.sb + off, true, p->B, H, lself, t * h, h, 0, lself, row);
        x.sc[t] = (int)(off - (size_t)x.sd[t]);
    }
    off = 0;
    for (int t = 0; t < n; t++) {
        x.rd[t] = (int)off;
        x.rc[t] = (int)((size_t)(p->B * h * slice_of(L, t, n, &start)) * row);
        off += (size_t)x.rc[t];
    }
    int rc_mpi = a2a_exchange(comm, &x, s);
    for (int t = 0; t < n && rc_mpi == MPI_SUCCESS; t++) {
        const int64_t len = slice_of(L, t, n, &start);
        copy_rows(x.rb + x.rd[t], out, false, p->B, h, L, 0, h, start, len, row);
    }
    a2a_free(&x);
    return rc_mpi == MPI_SUCCESS ? 0 : -1;
}

/* The way back: in is [B, H/N, L_total, W] for this rank's heads; out [B, H, l_self, W]. */
static int heads_to_seq(MPI_Comm comm, const cp_problem *p, const unsigned char *in, int64_t H,
                        int64_t W, size_t es, int64_t L, unsigned char *out, clattn_mpi_stats *s)
{
    const int n = p->n;
    const int64_t h = H / n;
    const size_t row = (size_t)W * es;
    int64_t start;
    const int64_t lself = slice_of(L, p->rank, n, &start);
    const size_t sbytes = (size_t)(p->B * h * L) * row, rbytes = (size_t)(p->B * H * lself) * row;
    a2a x;
    if (!a2a_alloc(comm, &x, n, sbytes, rbytes)) return -1;
    size_t off = 0;
    for (int t = 0; t < n; t++) { /* to rank t: its rows of my heads, [B, h, l_t, W] */
        const int64_t len = slice_of(L, t, n, &start);
        x.sd[t] = (int)off;
        off += copy_rows(in, x.sb + off, true, p->B, h, L, 0, h, start, len, row);
        x.sc[t] = (int)(off - (size_t)x.sd[t]);
        x.rd[t] = (int)((size_t)t * (size_t)(p->B * h * lself) * row);
        x.rc[t] = (int)((size_t)(p->B * h * lself) * row);
    }
    int rc_mpi = a2a_exchange(comm, &x, s);
    for (int t = 0; t < n && rc_mpi == MPI_SUCCESS; t++)
        copy_rows(x.rb + x.rd[t], out, false, p->B, H, lself, t * h, h, 0, lself, row);
    a2a_free(&x);
    return rc_mpi == MPI_SUCCESS ? 0 : -1;
}

clattn_status clmpi_ulysses(clattn_context *ctx, MPI_Comm comm, cp_problem *p,
                            const clattn_tensor *q, const clattn_tensor *k,
                            const clattn_tensor *v, const clattn_tensor *o, clattn_mpi_stats *s)
{
    const int n = p->n;
    const int64_t hq = p->Hq / n, hk = p->Hkv / n;
    const size_t eq = clattn_dtype_size(q->dtype), ek = clattn_dtype_size(k->dtype),
                 ev = clattn_dtype_size(v->dtype);
    unsigned char *ql = malloc((size_t)(p->B * p->Hq * p->lq * p->D) * eq + 1),
                  *kl = malloc((size_t)(p->B * p->Hkv * p->lk * p->D) * ek + 1),
                  *vl = malloc((size_t)(p->B * p->Hkv * p->lk * p->Dv) * ev + 1),
                  *qh = malloc((size_t)(p->B * hq * p->Lq * p->D) * eq + 1),
                  *kh = malloc((size_t)(p->B * hk * p->Lk * p->D) * ek + 1),
                  *vh = malloc((size_t)(p->B * hk * p->Lk * p->Dv) * ev + 1);
    /* O and LSE travel back together as float rows of Dv + 1 */
    float *oh = malloc((size_t)(p->B * hq * p->Lq * (p->Dv + 1)) * 4 + 4),
          *back = malloc((size_t)(p->B * p->Hq * p->lq * (p->Dv + 1)) * 4 + 4),
          *o_dense = malloc((size_t)(p->B * hq * p->Lq * p->Dv) * 4 + 4),
          *l_dense = malloc((size_t)(p->B * hq * p->Lq) * 4 + 4);
    clattn_status st = CLATTN_SUCCESS;
    const double most = (double)(p->B * p->Hq * (p->Lq > p->Lk ? p->Lq : p->Lk)) *
                        (double)(p->D > p->Dv + 1 ? p->D : p->Dv + 1) * 4.0;
    if (most > (double)INT_MAX) /* MPI counts and displacements are int */
        st = clmpi_fail(CLATTN_ERROR_INVALID_SHAPE, "ulysses moves %.0f bytes per all-to-all, over MPI's "
                                                    "int counts: use ring or zigzag", most);
    else if (!ql || !kl || !vl || !qh || !kh || !vh || !oh || !back || !o_dense || !l_dense)
        st = clmpi_fail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the all-to-all buffers");
    st = clmpi_agree(comm, st, p->rank, -1, s);
    const bool started = st == CLATTN_SUCCESS; /* the same on every rank */
    if (started) {
        clmpi_pack_dense(q, ql), clmpi_pack_dense(k, kl), clmpi_pack_dense(v, vl);
        if (seq_to_heads(comm, p, ql, p->Hq, p->D, eq, p->Lq, qh, s) ||
            seq_to_heads(comm, p, kl, p->Hkv, p->D, ek, p->Lk, kh, s) ||
            seq_to_heads(comm, p, vl, p->Hkv, p->Dv, ev, p->Lk, vh, s))
            st = clmpi_fail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for an all-to-all on some rank, "
                                                        "or MPI_Alltoallv failed");
        clattn_tensor tq = clattn_tensor_host(qh, q->dtype, p->B, hq, p->Lq, p->D),
                      tk = clattn_tensor_host(kh, k->dtype, p->B, hk, p->Lk, p->D),
                      tv = clattn_tensor_host(vh, v->dtype, p->B, hk, p->Lk, p->Dv),
                      to = clattn_tensor_host(o_dense, CLATTN_F32, p->B, hq, p->Lq, p->Dv),
                      tl = clattn_tensor_host(l_dense, CLATTN_F32, p->B, hq, p->Lq, 1), m, al;
        clattn_options opt = p->opt;
        if (opt.mask) {
            m = clmpi_view(*opt.mask, 1, p->rank * hq, hq);
            opt.mask = &m;
        }
        if (opt.alibi) {
            al = clmpi_view(*opt.alibi, 0, p->rank * hq, hq);
            opt.alibi = &al;
        }
        opt.lse = &tl;
        const double t0 = clmpi_now_s();
        if (st == CLATTN_SUCCESS && clmpi_fault_step(p->rank) == 0)
            st = clmpi_fail(CLATTN_ERROR_INTERNAL, "rank %d, step 0: simulated failure (CLATTN_MPI_FAULT)", p->rank);
        if (st == CLATTN_SUCCESS) {
            st = clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, NULL);
            if (st != CLATTN_SUCCESS)
                clmpi_fail(st, "rank %d: %s", p->rank, clattn_context_last_error(ctx));
        }
        s->compute_s += clmpi_now_s() - t0;
        s->steps = 1;
    }
    if (started) st = clmpi_agree(comm, st, p->rank, 0, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t rows = p->B * hq * p->Lq;
        clmpi_pack_records(oh, o_dense, l_dense, rows, p->Dv);
        if (heads_to_seq(comm, p, (unsigned char *)oh, p->Hq, p->Dv + 1, 4, p->Lq,
                         (unsigned char *)back, s))
            st = clmpi_fail(CLATTN_ERROR_INTERNAL, "MPI_Alltoallv failed");
        st = clmpi_agree(comm, st, p->rank, 1, s);
    }
    if (st == CLATTN_SUCCESS)
        clmpi_store_rows(o, p->opt.lse, p->B, p->Hq, p->lq, p->Dv, back, p->Dv + 1, back + p->Dv,
                         p->Dv + 1);
    free(ql), free(kl), free(vl), free(qh), free(kh), free(vh), free(oh), free(back), free(o_dense),
        free(l_dense);
    return st;
}
