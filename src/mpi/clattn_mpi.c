/* clattn_mpi: ring, zigzag and Ulysses context parallelism for prefill, and sharded-KV
 * decode, over MPI (include/clattn_mpi.h). Uses only clattn's public API: the blocks of
 * a ring are clattn_attention_block calls (global positions without kernel changes), the
 * partial states are merged on the host in log-sum-exp form, and every step ends with a
 * status agreement so that no rank waits forever on one that failed. */
#define _POSIX_C_SOURCE 200809L
#include "clattn_mpi.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_err[2048];

const char *clattn_mpi_last_error(void) { return last_err; }

static clattn_status mfail(clattn_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static clattn_status mfail(clattn_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_err, sizeof last_err, fmt, ap);
    va_end(ap);
    return st;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *const scheme_names[CLATTN_CP_COUNT_] = {"ring", "zigzag", "ulysses"};

const char *clattn_cp_scheme_name(clattn_cp_scheme s)
{
    return (int)s >= 0 && s < CLATTN_CP_COUNT_ ? scheme_names[s] : NULL;
}

clattn_status clattn_cp_scheme_from_name(const char *name, clattn_cp_scheme *s)
{
    if (!name || !s) return CLATTN_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < CLATTN_CP_COUNT_; i++)
        if (strcmp(name, scheme_names[i]) == 0) {
            *s = (clattn_cp_scheme)i;
            return CLATTN_SUCCESS;
        }
    return CLATTN_ERROR_INVALID_ARGUMENT;
}

/* Piece p of L cut into n: the first L % n pieces one longer. */
static void piece(int64_t L, int64_t n, int64_t p, int64_t *start, int64_t *len)
{
    const int64_t base = L / n, extra = L % n;
    *start = p * base + (p < extra ? p : extra);
    *len = base + (p < extra ? 1 : 0);
}

clattn_status clattn_cp_slices(clattn_cp_scheme scheme, int64_t L, int rank, int nranks,
                               int64_t start[2], int64_t len[2], int *nslices)
{
    if (!start || !len || !nslices || L < 0 || nranks < 1 || rank < 0 || rank >= nranks ||
        (int)scheme < 0 || scheme >= CLATTN_CP_COUNT_)
        return CLATTN_ERROR_INVALID_ARGUMENT;
    if (scheme == CLATTN_CP_ZIGZAG) {
        piece(L, 2 * (int64_t)nranks, rank, &start[0], &len[0]);
        piece(L, 2 * (int64_t)nranks, 2 * (int64_t)nranks - 1 - rank, &start[1], &len[1]);
        *nslices = 2;
    } else {
        piece(L, nranks, rank, &start[0], &len[0]);
        start[1] = len[1] = 0;
        *nslices = 1;
    }
    return CLATTN_SUCCESS;
}

/* ---- host tensor helpers ------------------------------------------------------------ */

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
    if (absx < 0x38800000u) {                                    /* subnormal or zero */
        float a;
        memcpy(&a, &absx, 4);
        float r = a * 16777216.0f; /* 2^24: subnormal halves are integer multiples */
        uint32_t m = (uint32_t)lrintf(r);
        return (uint16_t)(sign | m);
    }
    uint32_t mant = absx & 0x7fffffu, exp = (absx >> 23) - 112u;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static void store(const clattn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, float x)
{
    unsigned char *at = (unsigned char *)t->host + t->offset + a * t->nb[0] + b * t->nb[1] +
                        c * t->nb[2] + d * t->nb[3];
    if (t->dtype == CLATTN_F32) {
        memcpy(at, &x, 4);
    } else {
        uint16_t h = t->dtype == CLATTN_F16 ? f32_to_f16(x) : f32_to_bf16(x);
        memcpy(at, &h, 2);
    }
}

/* Copy a host tensor into dense [ne0, ne1, ne2, ne3] storage of its own dtype. */
static void pack_dense(const clattn_tensor *t, unsigned char *dst)
{
    const size_t es = clattn_dtype_size(t->dtype);
    const unsigned char *src = (const unsigned char *)t->host + t->offset;
    for (int64_t a = 0; a < t->ne[0]; a++)
        for (int64_t b = 0; b < t->ne[1]; b++)
            for (int64_t c = 0; c < t->ne[2]; c++) {
                const unsigned char *row = src + a * t->nb[0] + b * t->nb[1] + c * t->nb[2];
                if (t->nb[3] == (int64_t)es) {
                    memcpy(dst, row, (size_t)t->ne[3] * es);
                    dst += (size_t)t->ne[3] * es;
                } else {
                    for (int64_t d = 0; d < t->ne[3]; d++, dst += es) memcpy(dst, row + d * t->nb[3], es);
                }
            }
}

static clattn_tensor view(clattn_tensor t, int a, int64_t start, int64_t len)
{
    if (t.ne[a] == 1) return t; /* broadcast, or the only index */
    t.offset += (size_t)(start * t.nb[a]);
    t.ne[a] = len;
    return t;
}

static bool is_float_dtype(clattn_dtype d) { return d == CLATTN_F32 || d == CLATTN_F16 || d == CLATTN_BF16; }

static clattn_status check_tensor(const clattn_tensor *t, const char *name, bool float_data)
{
    if (!t) return mfail(CLATTN_ERROR_INVALID_ARGUMENT, "%s is NULL", name);
    if (!t->host || t->buffer)
        return mfail(CLATTN_ERROR_INVALID_ARGUMENT, "%s must be a host tensor (transfers are host-staged)", name);
    if (float_data && !is_float_dtype(t->dtype))
        return mfail(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s must be f32, f16 or bf16", name);
    for (int a = 0; a < 4; a++)
        if (t->ne[a] < 0 || t->nb[a] < 0)
            return mfail(CLATTN_ERROR_INVALID_STRIDE, "%s has a negative extent or stride", name);
    return CLATTN_SUCCESS;
}

/* ---- agreement and the fault hook ------------------------------------------------- */

/* Every rank learns the worst status (and which rank had it). A rank that succeeded
 * returns an error naming the failing rank; a failing rank keeps its own message. */
static clattn_status agree(MPI_Comm comm, clattn_status mine, int rank, int step,
                           clattn_mpi_stats *s)
{
    int in[2] = {(int)mine, rank}, out[2];
    const double t0 = now_s();
    int rc = MPI_Allreduce(in, out, 1, MPI_2INT, MPI_MINLOC, comm);
    s->sync_s += now_s() - t0;
    if (rc != MPI_SUCCESS) return mfail(CLATTN_ERROR_INTERNAL, "MPI_Allreduce failed (%d)", rc);
    if (out[0] == CLATTN_SUCCESS) return CLATTN_SUCCESS;
    if (mine != CLATTN_SUCCESS) return mine;
    if (step < 0)
        return mfail((clattn_status)out[0], "rank %d refused the call (%s); this rank stopped too",
                     out[1], clattn_status_string(out[0]));
    return mfail((clattn_status)out[0], "rank %d failed at step %d (%s); this rank stopped too",
                 out[1], step, clattn_status_string(out[0]));
}

/* CLATTN_MPI_FAULT=RANK:STEP: the step at which this rank fails, or -1. */
static int fault_step(int rank)
{
    const char *e = getenv("CLATTN_MPI_FAULT");
    int r, s;
    if (!e || sscanf(e, "%d:%d", &r, &s) != 2 || r != rank || s < 0) return -1;
    return s;
}

/* Ranks must agree on the problem: min and max of a signature over the ranks. */
static clattn_status same_everywhere(MPI_Comm comm, const int64_t *sig, int n, clattn_mpi_stats *s)
{
    int64_t mn[16], mx[16];
    const double t0 = now_s();
    MPI_Allreduce(sig, mn, n, MPI_INT64_T, MPI_MIN, comm);
    MPI_Allreduce(sig, mx, n, MPI_INT64_T, MPI_MAX, comm);
    s->sync_s += now_s() - t0;
    for (int i = 0; i < n; i++)
        if (mn[i] != mx[i])
            return mfail(CLATTN_ERROR_INVALID_ARGUMENT,
                         "the ranks disagree on the problem (field %d: %lld vs %lld): shapes, "
                         "dtypes, totals, scheme and options must be the same on every rank",
                         i, (long long)mn[i], (long long)mx[i]);
    return CLATTN_SUCCESS;
}

/* Merge a part (o2, l2) into the running state (o1, l1): exact log-sum-exp. */
static void merge_row(float *o1, float *l1, const float *o2, float l2, int64_t Dv)
{
    if (l2 == -INFINITY) return;
    if (*l1 == -INFINITY) {
        memcpy(o1, o2, (size_t)Dv * sizeof *o1);
        *l1 = l2;
        return;
    }
    const double m = *l1 > l2 ? *l1 : l2;
    const double w1 = exp((double)*l1 - m), w2 = exp((double)l2 - m), den = w1 + w2;
    for (int64_t d = 0; d < Dv; d++) o1[d] = (float)((w1 * o1[d] + w2 * o2[d]) / den);
    *l1 = (float)(m + log(den));
}

/* ---- common validation of a prefill call -------------------------------------------- */

typedef struct cp_problem {
    int rank, n;
    clattn_cp_scheme scheme;
    int64_t B, Hq, Hkv, D, Dv, Lq, Lk;
    int nq, nk;                       /* this rank's slices */
    int64_t qs[2], ql[2], ks[2], kl[2];
    int64_t lq, lk;                   /* this rank's local rows and keys */
    clattn_options opt;
} cp_problem;

static clattn_status validate(cp_problem *p, const clattn_tensor *q, const clattn_tensor *k,
                              const clattn_tensor *v, const clattn_tensor *o)
{
    clattn_status st;
    if ((st = check_tensor(q, "q", true)) || (st = check_tensor(k, "k", true)) ||
        (st = check_tensor(v, "v", true)) || (st = check_tensor(o, "o", true)))
        return st;
    if (p->opt.lse && (st = check_tensor(p->opt.lse, "options.lse", false))) return st;
    if (p->opt.mask && (st = check_tensor(p->opt.mask, "options.mask", false))) return st;
    if (p->opt.kv_lens && (st = check_tensor(p->opt.kv_lens, "options.kv_lens", false))) return st;
    if (p->opt.alibi && (st = check_tensor(p->opt.alibi, "options.alibi", false))) return st;
    if (p->opt.num_wait_events) return mfail(CLATTN_ERROR_INVALID_ARGUMENT, "wait events are not taken");
    if ((int)p->scheme < 0 || p->scheme >= CLATTN_CP_COUNT_)
        return mfail(CLATTN_ERROR_INVALID_ARGUMENT, "unknown context-parallel scheme %d", (int)p->scheme);
    p->B = q->ne[0], p->Hq = q->ne[1], p->Hkv = k->ne[1], p->D = q->ne[3], p->Dv = v->ne[3];
    if (p->Lq < 0 || p->Lk < 0) return mfail(CLATTN_ERROR_INVALID_SHAPE, "negative totals");
    clattn_cp_slices(p->scheme, p->Lq, p->rank, p->n, p->qs, p->ql, &p->nq);
    clattn_cp_slices(p->scheme, p->Lk, p->rank, p->n, p->ks, p->kl, &p->nk);
    p->lq = p->ql[0] + p->ql[1];
    p->lk = p->kl[0] + p->kl[1];
    if (q->ne[2] != p->lq || o->ne[2] != p->lq)
        return mfail(CLATTN_ERROR_INVALID_SHAPE,
                     "rank %d holds %lld query rows of %lld under %s, but q has %lld and o %lld",
                     p->rank, (long long)p->lq, (long long)p->Lq, scheme_names[p->scheme],
                     (long long)q->ne[2], (long long)o->ne[2]);
    if (k->ne[2] != p->lk || v->ne[2] != p->lk)
        return mfail(CLATTN_ERROR_INVALID_SHAPE,
                     "rank %d holds %lld keys of %lld under %s, but k has %lld and v %lld",
                     p->rank, (long long)p->lk, (long long)p->Lk, scheme_names[p->scheme],
                     (long long)k->ne[2], (long long)v->ne[2]);
    if (p->Hkv < 1 || p->Hq % p->Hkv || k->ne[0] != p->B || v->ne[0] != p->B || v->ne[1] != p->Hkv ||
        k->ne[3] != p->D || o->ne[0] != p->B || o->ne[1] != p->Hq || o->ne[3] != p->Dv ||
        p->D < 1 || p->D > 256 || p->Dv < 1 || p->Dv > 256)
        return mfail(CLATTN_ERROR_INVALID_SHAPE,
                     "q [%lld, %lld, ., %lld], k [%lld, %lld, ., %lld], v [%lld, %lld, ., %lld] and "
                     "o [%lld, %lld, ., %lld] do not fit together",
                     (long long)q->ne[0], (long long)q->ne[1], (long long)q->ne[3], (long long)k->ne[0],
                     (long long)k->ne[1], (long long)k->ne[3], (long long)v->ne[0], (long long)v->ne[1],
                     (long long)v->ne[3], (long long)o->ne[0], (long long)o->ne[1], (long long)o->ne[3]);
    if (p->opt.lse && (p->opt.lse->dtype != CLATTN_F32 || p->opt.lse->ne[0] != p->B ||
                       p->opt.lse->ne[1] != p->Hq || p->opt.lse->ne[2] != p->lq))
        return mfail(CLATTN_ERROR_INVALID_SHAPE, "options.lse must be f32 [B, Hq, local rows, 1]");
    if (p->scheme == CLATTN_CP_ULYSSES && (p->Hq % p->n || p->Hkv % p->n))
        return mfail(CLATTN_ERROR_INVALID_SHAPE,
                     "ulysses needs Hq (%lld) and Hkv (%lld) divisible by the %d ranks",
                     (long long)p->Hq, (long long)p->Hkv, p->n);
    return CLATTN_SUCCESS;
}

/* Write the merged float32 rows [B, Hq, lq, Dv] (and LSE) into o and opt->lse. */
static void commit(const cp_problem *p, const float *acc_o, const float *acc_l, const clattn_tensor *o)
{
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hq; h++)
            for (int64_t i = 0; i < p->lq; i++) {
                const int64_t r = (b * p->Hq + h) * p->lq + i;
                for (int64_t d = 0; d < p->Dv; d++) store(o, b, h, i, d, acc_o[r * p->Dv + d]);
                if (p->opt.lse) store(p->opt.lse, b, h, i, 0, acc_l[r]);
            }
}

/* ---- ring and zigzag -------------------------------------------------------------- */

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
    const double t0 = now_s();
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
        const clattn_tensor qv = view(*j->q, 2, qoff, p->ql[a]);
        for (int b = 0, koff = 0; b < nk && j->st == CLATTN_SUCCESS; koff += (int)kl[b], b++) {
            if (p->ql[a] == 0 || kl[b] == 0) continue; /* an empty slice (L < 2N) */
            const clattn_block bk = {p->qs[a], ks[b], p->Lq, p->Lk};
            const clattn_tensor kv_k = view(kt, 2, koff, kl[b]), kv_v = view(vt, 2, koff, kl[b]);
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
                    merge_row(j->acc_o + r * p->Dv, j->acc_l + r, j->part_o + s * p->Dv, j->part_l[s], p->Dv);
                }
        }
    }
    j->t_end = now_s();
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

static clattn_status ring(clattn_context *ctx, MPI_Comm comm, cp_problem *p, const clattn_tensor *q,
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
        st = mfail(CLATTN_ERROR_INVALID_SHAPE, "a K/V slice of %zu bytes is over one MPI message's 2 GiB: "
                                               "use more ranks", cap);
    else if (!cur || !nxt || !acc_o || !acc_l || !part_o || !part_l)
        st = mfail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the ring buffers (%zu bytes each)", cap);
    st = agree(comm, st, p->rank, -1, s);
    if (st == CLATTN_SUCCESS) {
        for (int64_t r = 0; r < rows; r++) acc_l[r] = -INFINITY;
        memset(acc_o, 0, (size_t)(rows * p->Dv) * 4);
        pack_dense(k, cur);
        pack_dense(v, cur + (size_t)(p->B * p->Hkv * p->lk * p->D) * clattn_dtype_size(k->dtype));
    }
    const int next = (p->rank + 1) % p->n, prev = (p->rank + p->n - 1) % p->n;
    const int fail_at = fault_step(p->rank);
    for (int step = 0; st == CLATTN_SUCCESS && step < p->n; step++) {
        const int src = (p->rank - step + p->n) % p->n;
        const double t0 = now_s();
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
                t_comm = now_s();
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
            mfail(job.st, "rank %d, step %d (keys of rank %d): %s", p->rank, step, src, job.err);
        st = agree(comm, job.st, p->rank, step, s);
        unsigned char *t = cur;
        cur = nxt;
        nxt = t;
    }
    if (st == CLATTN_SUCCESS) commit(p, acc_o, acc_l, o);
    free(cur), free(nxt), free(acc_o), free(acc_l), free(part_o), free(part_l);
    return st;
}

/* ---- Ulysses ---------------------------------------------------------------------- */

/* Whether every rank got its buffers: a rank that did not must not leave the others
 * inside a collective it never enters, so all of them give up together. */
static bool all_allocated(MPI_Comm comm, bool mine)
{
    int in = mine ? 1 : 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MIN, comm);
    return out == 1;
}

/* An all-to-all of head groups: in is dense [B, H, l_self, W] (elements of es bytes);
 * rank t receives heads t*H/N .. of every rank's rows, assembled by global position into
 * out [B, H/N, L_total, W]. */
static int seq_to_heads(MPI_Comm comm, const cp_problem *p, const unsigned char *in, int64_t H,
                        int64_t W, size_t es, int64_t L, unsigned char *out, clattn_mpi_stats *s)
{
    const int n = p->n;
    const int64_t h = H / n;
    int64_t st[2] = {0, 0}, ln[2] = {0, 0};
    int ns;
    clattn_cp_slices(CLATTN_CP_RING, L, p->rank, n, st, ln, &ns);
    const int64_t lself = ln[0];
    const size_t row = (size_t)W * es;
    int *sc = calloc((size_t)n, sizeof *sc), *sd = calloc((size_t)n, sizeof *sd),
        *rc = calloc((size_t)n, sizeof *rc), *rd = calloc((size_t)n, sizeof *rd);
    size_t sbytes = (size_t)(p->B * H * lself) * row, rbytes = 0;
    for (int t = 0; t < n; t++) {
        clattn_cp_slices(CLATTN_CP_RING, L, t, n, st, ln, &ns);
        rbytes += (size_t)(p->B * h * ln[0]) * row;
    }
    unsigned char *sb = malloc(sbytes + 1), *rb = malloc(rbytes + 1);
    if (!all_allocated(comm, sc && sd && rc && rd && sb && rb)) {
        free(sc), free(sd), free(rc), free(rd), free(sb), free(rb);
        return -1;
    }
    size_t off = 0;
    for (int t = 0; t < n; t++) { /* to rank t: [B, h, lself, W] of heads t*h .. */
        sd[t] = (int)off;
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t hh = 0; hh < h; hh++) {
                memcpy(sb + off, in + (size_t)((b * H + t * h + hh) * lself) * row, (size_t)lself * row);
                off += (size_t)lself * row;
            }
        sc[t] = (int)(off - (size_t)sd[t]);
    }
    off = 0;
    for (int t = 0; t < n; t++) {
        clattn_cp_slices(CLATTN_CP_RING, L, t, n, st, ln, &ns);
        rd[t] = (int)off;
        rc[t] = (int)((size_t)(p->B * h * ln[0]) * row);
        off += (size_t)rc[t];
    }
    const double t0 = now_s();
    int rc_mpi = MPI_Alltoallv(sb, sc, sd, MPI_BYTE, rb, rc, rd, MPI_BYTE, comm);
    s->comm_s += now_s() - t0;
    s->wait_s += now_s() - t0;
    s->bytes_sent += (int64_t)sbytes;
    for (int t = 0; t < n && rc_mpi == MPI_SUCCESS; t++) {
        clattn_cp_slices(CLATTN_CP_RING, L, t, n, st, ln, &ns);
        const unsigned char *src = rb + rd[t];
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t hh = 0; hh < h; hh++) {
                memcpy(out + (size_t)((b * h + hh) * L + st[0]) * row, src, (size_t)ln[0] * row);
                src += (size_t)ln[0] * row;
            }
    }
    free(sc), free(sd), free(rc), free(rd), free(sb), free(rb);
    return rc_mpi == MPI_SUCCESS ? 0 : -1;
}

/* The way back: in is [B, H/N, L_total, W] for this rank's heads; out [B, H, l_self, W]. */
static int heads_to_seq(MPI_Comm comm, const cp_problem *p, const unsigned char *in, int64_t H,
                        int64_t W, size_t es, int64_t L, unsigned char *out, clattn_mpi_stats *s)
{
    const int n = p->n;
    const int64_t h = H / n;
    int64_t st[2] = {0, 0}, ln[2] = {0, 0};
    int ns;
    const size_t row = (size_t)W * es;
    int *sc = calloc((size_t)n, sizeof *sc), *sd = calloc((size_t)n, sizeof *sd),
        *rc = calloc((size_t)n, sizeof *rc), *rd = calloc((size_t)n, sizeof *rd);
    clattn_cp_slices(CLATTN_CP_RING, L, p->rank, n, st, ln, &ns);
    const int64_t lself = ln[0];
    const size_t sbytes = (size_t)(p->B * h * L) * row, rbytes = (size_t)(p->B * H * lself) * row;
    unsigned char *sb = malloc(sbytes + 1), *rb = malloc(rbytes + 1);
    if (!all_allocated(comm, sc && sd && rc && rd && sb && rb)) {
        free(sc), free(sd), free(rc), free(rd), free(sb), free(rb);
        return -1;
    }
    size_t off = 0;
    for (int t = 0; t < n; t++) { /* to rank t: its rows of my heads, [B, h, l_t, W] */
        clattn_cp_slices(CLATTN_CP_RING, L, t, n, st, ln, &ns);
        sd[t] = (int)off;
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t hh = 0; hh < h; hh++) {
                memcpy(sb + off, in + (size_t)((b * h + hh) * L + st[0]) * row, (size_t)ln[0] * row);
                off += (size_t)ln[0] * row;
            }
        sc[t] = (int)(off - (size_t)sd[t]);
        rd[t] = (int)((size_t)t * (size_t)(p->B * h * lself) * row);
        rc[t] = (int)((size_t)(p->B * h * lself) * row);
    }
    const double t0 = now_s();
    int rc_mpi = MPI_Alltoallv(sb, sc, sd, MPI_BYTE, rb, rc, rd, MPI_BYTE, comm);
    s->comm_s += now_s() - t0;
    s->wait_s += now_s() - t0;
    s->bytes_sent += (int64_t)sbytes;
    for (int t = 0; t < n && rc_mpi == MPI_SUCCESS; t++) {
        const unsigned char *src = rb + rd[t];
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t hh = 0; hh < h; hh++) {
                memcpy(out + (size_t)((b * H + t * h + hh) * lself) * row, src, (size_t)lself * row);
                src += (size_t)lself * row;
            }
    }
    free(sc), free(sd), free(rc), free(rd), free(sb), free(rb);
    return rc_mpi == MPI_SUCCESS ? 0 : -1;
}

static clattn_status ulysses(clattn_context *ctx, MPI_Comm comm, cp_problem *p, const clattn_tensor *q,
                             const clattn_tensor *k, const clattn_tensor *v, const clattn_tensor *o,
                             clattn_mpi_stats *s)
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
        st = mfail(CLATTN_ERROR_INVALID_SHAPE, "ulysses moves %.0f bytes per all-to-all, over MPI's "
                                               "int counts: use ring or zigzag", most);
    else if (!ql || !kl || !vl || !qh || !kh || !vh || !oh || !back || !o_dense || !l_dense)
        st = mfail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the all-to-all buffers");
    st = agree(comm, st, p->rank, -1, s);
    const bool started = st == CLATTN_SUCCESS; /* the same on every rank */
    if (started) {
        pack_dense(q, ql), pack_dense(k, kl), pack_dense(v, vl);
        if (seq_to_heads(comm, p, ql, p->Hq, p->D, eq, p->Lq, qh, s) ||
            seq_to_heads(comm, p, kl, p->Hkv, p->D, ek, p->Lk, kh, s) ||
            seq_to_heads(comm, p, vl, p->Hkv, p->Dv, ev, p->Lk, vh, s))
            st = mfail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for an all-to-all on some rank, "
                                                   "or MPI_Alltoallv failed");
        clattn_tensor tq = clattn_tensor_host(qh, q->dtype, p->B, hq, p->Lq, p->D),
                      tk = clattn_tensor_host(kh, k->dtype, p->B, hk, p->Lk, p->D),
                      tv = clattn_tensor_host(vh, v->dtype, p->B, hk, p->Lk, p->Dv),
                      to = clattn_tensor_host(o_dense, CLATTN_F32, p->B, hq, p->Lq, p->Dv),
                      tl = clattn_tensor_host(l_dense, CLATTN_F32, p->B, hq, p->Lq, 1), m, al;
        clattn_options opt = p->opt;
        if (opt.mask) {
            m = view(*opt.mask, 1, p->rank * hq, hq);
            opt.mask = &m;
        }
        if (opt.alibi) {
            al = view(*opt.alibi, 0, p->rank * hq, hq);
            opt.alibi = &al;
        }
        opt.lse = &tl;
        const double t0 = now_s();
        if (st == CLATTN_SUCCESS && fault_step(p->rank) == 0)
            st = mfail(CLATTN_ERROR_INTERNAL, "rank %d, step 0: simulated failure (CLATTN_MPI_FAULT)", p->rank);
        if (st == CLATTN_SUCCESS) {
            st = clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, NULL);
            if (st != CLATTN_SUCCESS)
                mfail(st, "rank %d: %s", p->rank, clattn_context_last_error(ctx));
        }
        s->compute_s += now_s() - t0;
        s->steps = 1;
    }
    if (started) st = agree(comm, st, p->rank, 0, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t rows = p->B * hq * p->Lq;
        for (int64_t r = 0; r < rows; r++) {
            memcpy(oh + r * (p->Dv + 1), o_dense + r * p->Dv, (size_t)p->Dv * 4);
            oh[r * (p->Dv + 1) + p->Dv] = l_dense[r];
        }
        if (heads_to_seq(comm, p, (unsigned char *)oh, p->Hq, p->Dv + 1, 4, p->Lq,
                         (unsigned char *)back, s))
            st = mfail(CLATTN_ERROR_INTERNAL, "MPI_Alltoallv failed");
        st = agree(comm, st, p->rank, 1, s);
    }
    if (st == CLATTN_SUCCESS) {
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t h = 0; h < p->Hq; h++)
                for (int64_t i = 0; i < p->lq; i++) {
                    const float *r = back + ((b * p->Hq + h) * p->lq + i) * (p->Dv + 1);
                    for (int64_t d = 0; d < p->Dv; d++) store(o, b, h, i, d, r[d]);
                    if (p->opt.lse) store(p->opt.lse, b, h, i, 0, r[p->Dv]);
                }
    }
    free(ql), free(kl), free(vl), free(qh), free(kh), free(vh), free(oh), free(back), free(o_dense),
        free(l_dense);
    return st;
}

clattn_status clattn_mpi_attention(clattn_context *ctx, MPI_Comm comm, clattn_cp_scheme scheme,
                                   const clattn_tensor *q, const clattn_tensor *k,
                                   const clattn_tensor *v, clattn_tensor *o, int64_t lq_total,
                                   int64_t lk_total, const clattn_options *opt,
                                   clattn_mpi_stats *stats)
{
    last_err[0] = '\0';
    clattn_mpi_stats local;
    clattn_mpi_stats *s = stats ? stats : &local;
    memset(s, 0, sizeof *s);
    const double t0 = now_s();
    cp_problem p;
    memset(&p, 0, sizeof p);
    MPI_Comm_rank(comm, &p.rank);
    MPI_Comm_size(comm, &p.n);
    p.scheme = scheme;
    p.Lq = lq_total;
    p.Lk = lk_total;
    clattn_status st = CLATTN_SUCCESS;
    if (!ctx) st = mfail(CLATTN_ERROR_INVALID_ARGUMENT, "ctx is NULL");
    /* a copy of the caller's options whatever its struct_size (clattn_options_init
     * recorded it); older, smaller structs keep our defaults for the fields they lack */
    clattn_options_init(&p.opt);
    if (opt) {
        if (opt->struct_size < CLATTN_OPTIONS_SIZE_0_2 || opt->struct_size > sizeof p.opt)
            st = mfail(CLATTN_ERROR_INVALID_ARGUMENT, "options.struct_size %zu is not a known layout",
                       opt->struct_size);
        else
            memcpy(&p.opt, opt, opt->struct_size);
        p.opt.struct_size = sizeof p.opt;
    }
    if (st == CLATTN_SUCCESS) st = validate(&p, q, k, v, o);
    st = agree(comm, st, p.rank, -1, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t sig[] = {p.B, p.Hq, p.Hkv, p.D, p.Dv, q->dtype, k->dtype, v->dtype, p.Lq, p.Lk,
                               scheme, p.opt.causal, p.opt.window_left, p.opt.window_right,
                               !!p.opt.mask + 2 * !!p.opt.kv_lens + 4 * !!p.opt.alibi + 8 * !!p.opt.lse};
        st = same_everywhere(comm, sig, (int)(sizeof sig / sizeof sig[0]), s);
    }
    if (st == CLATTN_SUCCESS)
        st = scheme == CLATTN_CP_ULYSSES ? ulysses(ctx, comm, &p, q, k, v, o, s)
                                         : ring(ctx, comm, &p, q, k, v, o, s);
    s->total_s = now_s() - t0;
    return st;
}

/* ---- decode over a sharded KV cache ------------------------------------------------- */

/* The log-sum-exp merge as an MPI operator on records of (Dv floats of O, then LSE). */
static void lse_merge_op(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes = 0;
    MPI_Type_size(*dt, &bytes);
    const int64_t w = bytes / 4, Dv = w - 1;
    float *a = in, *b = inout;
    for (int r = 0; r < *len; r++, a += w, b += w) merge_row(b, b + Dv, a, a[Dv], Dv);
}

clattn_status clattn_mpi_kv_cache_attention(clattn_context *ctx, MPI_Comm comm,
                                            clattn_kv_cache *cache, const clattn_tensor *q,
                                            clattn_tensor *o, const clattn_options *opt,
                                            clattn_mpi_stats *stats)
{
    last_err[0] = '\0';
    clattn_mpi_stats local;
    clattn_mpi_stats *s = stats ? stats : &local;
    memset(s, 0, sizeof *s);
    const double t0 = now_s();
    int rank, n;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &n);
    clattn_options g;
    clattn_options_init(&g);
    if (!opt) g.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    clattn_status st = CLATTN_SUCCESS;
    if (opt) {
        if (opt->struct_size < CLATTN_OPTIONS_SIZE_0_2 || opt->struct_size > sizeof g)
            st = mfail(CLATTN_ERROR_INVALID_ARGUMENT, "options.struct_size %zu is not a known layout",
                       opt->struct_size);
        else
            memcpy(&g, opt, opt->struct_size);
        g.struct_size = sizeof g;
    }
    if (!ctx || !cache) st = mfail(CLATTN_ERROR_INVALID_ARGUMENT, "ctx and cache must not be NULL");
    if (st == CLATTN_SUCCESS && ((st = check_tensor(q, "q", true)) || (st = check_tensor(o, "o", true))))
        (void)0;
    if (st == CLATTN_SUCCESS && g.lse && (st = check_tensor(g.lse, "options.lse", false))) (void)0;
    if (st == CLATTN_SUCCESS && g.mask && (st = check_tensor(g.mask, "options.mask", false))) (void)0;
    if (st == CLATTN_SUCCESS && g.alibi && (st = check_tensor(g.alibi, "options.alibi", false))) (void)0;
    if (st == CLATTN_SUCCESS && (g.kv_lens || g.num_wait_events))
        st = mfail(CLATTN_ERROR_INVALID_ARGUMENT, "options.kv_lens and wait events are not taken "
                                                  "(lengths come from the cache shards)");
    const int64_t B = q ? q->ne[0] : 0, Hq = q ? q->ne[1] : 0, Lq = q ? q->ne[2] : 0,
                  Dv = o ? o->ne[3] : 0;
    if (st == CLATTN_SUCCESS && (o->ne[0] != B || o->ne[1] != Hq || o->ne[2] != Lq || Dv < 1 || Dv > 256 ||
                                 B < 1 || B > 1 << 20))
        st = mfail(CLATTN_ERROR_INVALID_SHAPE, "o must be [B, Hq, Lq, Dv] as q is [B, Hq, Lq, D]");
    if (st == CLATTN_SUCCESS && g.lse &&
        (g.lse->dtype != CLATTN_F32 || g.lse->ne[0] != B || g.lse->ne[1] != Hq || g.lse->ne[2] != Lq))
        st = mfail(CLATTN_ERROR_INVALID_SHAPE, "options.lse must be f32 [B, Hq, Lq, 1]");
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
            st = mfail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory");
        else if ((st = clattn_kv_cache_lengths(cache, len)) != CLATTN_SUCCESS)
            mfail(st, "clattn_kv_cache_lengths: %s", clattn_context_last_error(ctx));
    }
    st = agree(comm, st, rank, -1, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t sig[] = {B, Hq, Lq, Dv, q->ne[3], g.causal, g.window_left, g.window_right,
                               !!g.mask + 2 * !!g.alibi + 4 * !!g.lse};
        st = same_everywhere(comm, sig, (int)(sizeof sig / sizeof sig[0]), s);
    }
    const bool started = st == CLATTN_SUCCESS; /* the same on every rank */
    if (st == CLATTN_SUCCESS) {
        for (int64_t b = 0; b < B; b++) mylen[b] = len[b];
        const double tc = now_s();
        MPI_Exscan(mylen, start, (int)B, MPI_INT64_T, MPI_SUM, comm);
        if (rank == 0) memset(start, 0, (size_t)B * sizeof *start);
        MPI_Allreduce(mylen, total, (int)B, MPI_INT64_T, MPI_SUM, comm);
        s->sync_s += now_s() - tc;
    }
    if (st == CLATTN_SUCCESS) {
        const double tc = now_s();
        int64_t maxlen = 0, maxtot = 0;
        for (int64_t b = 0; b < B; b++) {
            if (len[b] > maxlen) maxlen = len[b];
            if (total[b] > maxtot) maxtot = total[b];
        }
        const clattn_tensor *m = g.mask;
        if (m && (m->dtype != CLATTN_BOOL && m->dtype != CLATTN_F32))
            st = mfail(CLATTN_ERROR_UNSUPPORTED_DTYPE, "options.mask must be bool or f32");
        if (m && ((m->ne[0] != 1 && m->ne[0] != B) || (m->ne[1] != 1 && m->ne[1] != Hq) ||
                  (m->ne[2] != 1 && m->ne[2] != Lq) || (m->ne[3] != 1 && m->ne[3] != maxtot)))
            st = mfail(CLATTN_ERROR_INVALID_SHAPE,
                       "options.mask must broadcast to [B, Hq, Lq, max total length %lld]", (long long)maxtot);
        if (g.alibi && (g.alibi->dtype != CLATTN_F32 || g.alibi->ne[0] != Hq))
            st = mfail(CLATTN_ERROR_INVALID_SHAPE, "options.alibi must be f32 [Hq]");
        if (fault_step(rank) == 0 && st == CLATTN_SUCCESS)
            st = mfail(CLATTN_ERROR_INTERNAL, "rank %d, step 0: simulated failure (CLATTN_MPI_FAULT)", rank);
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
                if (!mat) st = mfail(CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the shard's mask");
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
                if (st != CLATTN_SUCCESS) mfail(st, "rank %d: %s", rank, clattn_context_last_error(ctx));
            }
        }
        s->compute_s += now_s() - tc;
        s->steps = 1;
    }
    if (started) st = agree(comm, st, rank, 0, s);
    if (st == CLATTN_SUCCESS) {
        const int64_t rows = B * Hq * Lq;
        for (int64_t r = 0; r < rows; r++) {
            memcpy(rec + r * (Dv + 1), ob + r * Dv, (size_t)Dv * 4);
            rec[r * (Dv + 1) + Dv] = lb[r];
        }
        MPI_Datatype rt;
        MPI_Op op;
        MPI_Type_contiguous((int)(Dv + 1), MPI_FLOAT, &rt);
        MPI_Type_commit(&rt);
        MPI_Op_create(lse_merge_op, 1, &op);
        const double tc = now_s();
        int rc = MPI_Allreduce(MPI_IN_PLACE, rec, (int)rows, rt, op, comm);
        s->comm_s += now_s() - tc;
        s->wait_s += now_s() - tc;
        s->bytes_sent += rows * (Dv + 1) * 4;
        MPI_Op_free(&op);
        MPI_Type_free(&rt);
        if (rc != MPI_SUCCESS) st = mfail(CLATTN_ERROR_INTERNAL, "MPI_Allreduce of the states failed (%d)", rc);
        st = agree(comm, st, rank, 1, s);
        for (int64_t b = 0; st == CLATTN_SUCCESS && b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                for (int64_t i = 0; i < Lq; i++) {
                    const float *r = rec + ((b * Hq + h) * Lq + i) * (Dv + 1);
                    for (int64_t d = 0; d < Dv; d++) store(o, b, h, i, d, r[d]);
                    if (g.lse) store(g.lse, b, h, i, 0, r[Dv]);
                }
    }
    free(len), free(start), free(total), free(mylen), free(rec), free(mat), free(ob), free(lb);
    s->total_s = now_s() - t0;
    return st;
}
