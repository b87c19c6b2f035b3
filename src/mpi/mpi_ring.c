/* Ring and zigzag context parallelism: K/V slices travel around the ring while each rank
 * computes the attention of its rows over the slice in hand, and the partial states are
 * merged exactly (see clattn_mpi.h). */
#define _POSIX_C_SOURCE 200809L
#include "mpi_internal.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Write the merged float32 rows [B, Hq, lq, Dv] (and LSE) into o and opt->lse. */
static void commit(const cp_problem *p, const float *acc_o, const float *acc_l, const clattn_tensor *o)
{
    clmpi_store_rows(o, p->opt.lse, p->B, p->Hq, p->lq, p->Dv, acc_o, p->Dv, acc_l, 1);
}

typedef struct ring_job {
    clattn_context *ctx;
    const cp_problem *p;
    const clattn_tensor *q;
    const unsigned char *kv;    /* packed K [B, Hkv, lk_src, D] then V [B, Hkv, lk_src, Dv] */
    clattn_dtype kd, vd;
    int src;                    /* the rank whose keys these are */
    bool fail;                  /* simulated failure at this step */
    float *acc_o, *acc_l, *part_o, *part_l;
    clattn_status st;
    double t_end, compute_s;
    int blocks;                 /* blocks computed (not skipped) */
    char err[1024];
} ring_job;

static void *ring_compute(void *arg)
{
    ring_job *j = arg;
    const cp_problem *p = j->p;
    const double t0 = clmpi_now_s();
    j->st = CLATTN_SUCCESS;
    if (j->fail) {
        j->st = CLATTN_ERROR_INTERNAL;
        snprintf(j->err, sizeof j->err, "simulated failure (CLATTN_MPI_FAULT)");
    }
    int64_t ks[2], kl[2];
    int nk;
    clattn_cp_slices(p->scheme, p->Lk, j->src, p->n, ks, kl, &nk);
    const int64_t lk_src = kl[0] + kl[1];
    const size_t kbytes = (size_t)(p->B * p->Hkv * lk_src * p->D) * clattn_dtype_size(j->kd);
    const clattn_tensor kt = clattn_tensor_host(j->kv, j->kd, p->B, p->Hkv, lk_src, p->D);
    const clattn_tensor vt = clattn_tensor_host(j->kv + kbytes, j->vd, p->B, p->Hkv, lk_src, p->Dv);
    for (int a = 0, qoff = 0; a < p->nq && j->st == CLATTN_SUCCESS; qoff += (int)p->ql[a], a++) {
        const clattn_tensor qv = clmpi_view(*j->q, 2, qoff, p->ql[a]);
        for (int b = 0, koff = 0; b < nk && j->st == CLATTN_SUCCESS; koff += (int)kl[b], b++) {
            if (p->ql[a] == 0 || kl[b] == 0) continue; /* an empty slice (L < 2N) */
            const clattn_block bk = {p->qs[a], ks[b], p->Lq, p->Lk};
            const clattn_tensor kv_k = clmpi_view(kt, 2, koff, kl[b]), kv_v = clmpi_view(vt, 2, koff, kl[b]);
            clattn_tensor po = clattn_tensor_host(j->part_o, CLATTN_F32, p->B, p->Hq, p->ql[a], p->Dv);
            clattn_tensor pl = clattn_tensor_host(j->part_l, CLATTN_F32, p->B, p->Hq, p->ql[a], 1);
            clattn_options o = p->opt;
            o.lse = &pl;
            int computed = 0;
            j->st = clattn_attention_block(j->ctx, &bk, &qv, &kv_k, &kv_v, &po, &o, &computed);
            if (j->st != CLATTN_SUCCESS) {
                snprintf(j->err, sizeof j->err, "%s", clattn_context_last_error(j->ctx));
                break;
            }
            if (!computed) continue;
            j->blocks++;
            for (int64_t bh = 0; bh < p->B * p->Hq; bh++)
                for (int64_t i = 0; i < p->ql[a]; i++) {
                    const int64_t r = bh * p->lq + qoff + i, s = bh * p->ql[a] + i;
                    clmpi_merge_row(j->acc_o + r * p->Dv, j->acc_l + r, j->part_o + s * p->Dv, j->part_l[s], p->Dv);
                }
        }
    }
    j->t_end = clmpi_now_s();
    j->compute_s = j->t_end - t0;
    return NULL;
}

static size_t kv_bytes_of(const cp_problem *p, int rank, clattn_dtype kd, clattn_dtype vd)
{
    int64_t s[2], l[2];
    int n;
    clattn_cp_slices(p->scheme, p->Lk, rank, p->n, s, l, &n);
    return (size_t)(p->B * p->Hkv * (l[0] + l[1])) *
           ((size_t)p->D * clattn_dtype_size(kd) + (size_t)p->Dv * clattn_dtype_size(vd));
}

clattn_status clmpi_ring(clattn_context *ctx, MPI_Comm comm, cp_problem *p, const clattn_tensor *q,
                         const clattn_tensor *k, const clattn_tensor *v, const clattn_tensor *o,
                         clattn_mpi_stats *s)
{
    size_t cap = 0;
    for (int r = 0; r < p->n; r++) {
        size_t b = kv_bytes_of(p, r, k->dtype, v->dtype);
        if (b > cap) cap = b;
    }
    const int64_t rows = p->B * p->Hq * p->lq, qmax = p->ql[0] > p->ql[1] ? p->ql[0] : p->ql[1];
    unsigned char *cur = malloc(cap ? cap : 1), *nxt = malloc(cap ? cap : 1);
    float *acc_o = malloc((size_t)(rows * p->Dv + 1) * 4), *acc_l = malloc((size_t)(rows + 1) * 4);
    float *part_o = malloc((size_t)(p->B * p->Hq * qmax * p->Dv + 1) * 4),
          *part_l = malloc((size_t)(p->B * p->Hq * qmax + 1) * 4);
    clattn_status st = CLATTN_SUCCESS;
    if (cap > (size_t)INT_MAX) /* MPI counts are int: one message per slice */
        st = clmpi_fail(CLATTN_ERROR_INVALID_SHAPE, "a K/V slice of %zu bytes is over one MPI message's 2 GiB: "
                                                    "use more ranks", cap);
    else if (!cur || !nxt || !acc_o || !acc_l || !part_o || !part_l)
        st = clmpi_fail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the ring buffers (%zu bytes each)", cap);
    st = clmpi_agree(comm, st, p->rank, -1, s);
    if (st == CLATTN_SUCCESS) {
        for (int64_t r = 0; r < rows; r++) acc_l[r] = -INFINITY;
        memset(acc_o, 0, (size_t)(rows * p->Dv) * 4);
        clmpi_pack_dense(k, cur);
        clmpi_pack_dense(v, cur + (size_t)(p->B * p->Hkv * p->lk * p->D) * clattn_dtype_size(k->dtype));
    }
    const int next = (p->rank + 1) % p->n, prev = (p->rank + p->n - 1) % p->n;
    const int fail_at = clmpi_fault_step(p->rank);
    for (int step = 0; st == CLATTN_SUCCESS && step < p->n; step++) {
        const int src = (p->rank - step + p->n) % p->n;
        const double t0 = clmpi_now_s();
        MPI_Request req[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
        if (step + 1 < p->n) {
            const size_t out_b = kv_bytes_of(p, src, k->dtype, v->dtype);
            const size_t in_b = kv_bytes_of(p, (src + p->n - 1) % p->n, k->dtype, v->dtype);
            MPI_Isend(cur, (int)out_b, MPI_BYTE, next, 7001, comm, &req[0]);
            MPI_Irecv(nxt, (int)in_b, MPI_BYTE, prev, 7001, comm, &req[1]);
            s->bytes_sent += (int64_t)out_b;
        }
        ring_job job = {ctx, p, q, cur, k->dtype, v->dtype, src, step == fail_at,
                        acc_o, acc_l, part_o, part_l, CLATTN_SUCCESS, 0.0, 0.0, 0, ""};
        pthread_t th;
        const bool threaded = pthread_create(&th, NULL, ring_compute, &job) == 0;
        if (!threaded) ring_compute(&job);
        /* drive the transfers while the device computes: Open MPI progresses large
         * messages only inside MPI calls */
        double t_comm = t0;
        for (;;) {
            int done = 0;
            MPI_Testall(2, req, &done, MPI_STATUSES_IGNORE);
            if (done) {
                t_comm = clmpi_now_s();
                break;
            }
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
        if (threaded) pthread_join(th, NULL);
        s->comm_s += t_comm - t0;
        s->compute_s += job.compute_s;
        if (t_comm > job.t_end) s->wait_s += t_comm - job.t_end;
        s->steps++;
        if (job.st != CLATTN_SUCCESS)
            clmpi_fail(job.st, "rank %d, step %d (keys of rank %d): %s", p->rank, step, src, job.err);
        st = clmpi_agree(comm, job.st, p->rank, step, s);
        unsigned char *t = cur;
        cur = nxt;
        nxt = t;
    }
    if (st == CLATTN_SUCCESS) commit(p, acc_o, acc_l, o);
    free(cur), free(nxt), free(acc_o), free(acc_l), free(part_o), free(part_l);
    return st;
}
