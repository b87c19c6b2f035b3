/* clattn_mpi: ring, zigzag and Ulysses context parallelism for prefill, and sharded-KV
 * decode, over MPI (include/clattn_mpi.h). Uses only clattn's public API: the blocks of
 * a ring are clattn_attention_block calls (global positions without kernel changes), the
 * partial states are merged on the host in log-sum-exp form, and every step ends with a
 * status agreement so that no rank waits forever on one that failed.
 *
 * This file holds what every scheme shares: the last error, scheme names and slices, host
 * tensor helpers, the agreement and the merge. The prefill entry is mpi_prefill.c (its
 * schemes mpi_ring.c and mpi_ulysses.c), the sharded decode mpi_decode.c. */
#define _POSIX_C_SOURCE 200809L
#include "mpi_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_err[2048];

const char *clattn_mpi_last_error(void) { return last_err; }

clattn_mpi_stats *clmpi_begin(clattn_mpi_stats *stats, clattn_mpi_stats *local)
{
    last_err[0] = '\0';
    clattn_mpi_stats *s = stats ? stats : local;
    memset(s, 0, sizeof *s);
    return s;
}

clattn_status clmpi_fail(clattn_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_err, sizeof last_err, fmt, ap);
    va_end(ap);
    return st;
}

double clmpi_now_s(void)
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

void clmpi_store(const clattn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, float x)
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

void clmpi_store_rows(const clattn_tensor *o, const clattn_tensor *lse, int64_t B, int64_t H,
                      int64_t L, int64_t Dv, const float *rows_o, int64_t stride_o,
                      const float *rows_l, int64_t stride_l)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                const int64_t r = (b * H + h) * L + i;
                for (int64_t d = 0; d < Dv; d++) clmpi_store(o, b, h, i, d, rows_o[r * stride_o + d]);
                if (lse) clmpi_store(lse, b, h, i, 0, rows_l[r * stride_l]);
            }
}

void clmpi_pack_records(float *rec, const float *o, const float *l, int64_t rows, int64_t Dv)
{
    for (int64_t r = 0; r < rows; r++) {
        memcpy(rec + r * (Dv + 1), o + r * Dv, (size_t)Dv * 4);
        rec[r * (Dv + 1) + Dv] = l[r];
    }
}

/* Copy a host tensor into dense [ne0, ne1, ne2, ne3] storage of its own dtype. */
void clmpi_pack_dense(const clattn_tensor *t, unsigned char *dst)
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

clattn_tensor clmpi_view(clattn_tensor t, int a, int64_t start, int64_t len)
{
    if (t.ne[a] == 1) return t; /* broadcast, or the only index */
    t.offset += (size_t)(start * t.nb[a]);
    t.ne[a] = len;
    return t;
}

static bool is_float_dtype(clattn_dtype d) { return d == CLATTN_F32 || d == CLATTN_F16 || d == CLATTN_BF16; }

clattn_status clmpi_copy_options(clattn_options *dst, const clattn_options *opt)
{
    if (opt->struct_size < CLATTN_OPTIONS_SIZE_0_2 || opt->struct_size > sizeof *dst)
        return clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT,
                          "options.struct_size %zu is not a known layout", opt->struct_size);
    memcpy(dst, opt, opt->struct_size);
    dst->struct_size = sizeof *dst;
    return CLATTN_SUCCESS;
}

clattn_status clmpi_check_tensor(const clattn_tensor *t, const char *name, bool float_data)
{
    if (!t) return clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT, "%s is NULL", name);
    if (!t->host || t->buffer)
        return clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT, "%s must be a host tensor (transfers are host-staged)", name);
    if (float_data && !is_float_dtype(t->dtype))
        return clmpi_fail(CLATTN_ERROR_UNSUPPORTED_DTYPE, "%s must be f32, f16 or bf16", name);
    for (int a = 0; a < 4; a++)
        if (t->ne[a] < 0 || t->nb[a] < 0)
            return clmpi_fail(CLATTN_ERROR_INVALID_STRIDE, "%s has a negative extent or stride", name);
    return CLATTN_SUCCESS;
}

/* ---- agreement and the fault hook ------------------------------------------------- */

/* Every rank learns the worst status (and which rank had it). A rank that succeeded
 * returns an error naming the failing rank; a failing rank keeps its own message. */
clattn_status clmpi_agree(MPI_Comm comm, clattn_status mine, int rank, int step,
                          clattn_mpi_stats *s)
{
    int in[2] = {(int)mine, rank}, out[2];
    const double t0 = clmpi_now_s();
    int rc = MPI_Allreduce(in, out, 1, MPI_2INT, MPI_MINLOC, comm);
    s->sync_s += clmpi_now_s() - t0;
    if (rc != MPI_SUCCESS) return clmpi_fail(CLATTN_ERROR_INTERNAL, "MPI_Allreduce failed (%d)", rc);
    if (out[0] == CLATTN_SUCCESS) return CLATTN_SUCCESS;
    if (mine != CLATTN_SUCCESS) return mine;
    if (step < 0)
        return clmpi_fail((clattn_status)out[0], "rank %d refused the call (%s); this rank stopped too",
                          out[1], clattn_status_string(out[0]));
    return clmpi_fail((clattn_status)out[0], "rank %d failed at step %d (%s); this rank stopped too",
                      out[1], step, clattn_status_string(out[0]));
}

/* CLATTN_MPI_FAULT=RANK:STEP: the step at which this rank fails, or -1. */
int clmpi_fault_step(int rank)
{
    const char *e = getenv("CLATTN_MPI_FAULT");
    int r, s;
    if (!e || sscanf(e, "%d:%d", &r, &s) != 2 || r != rank || s < 0) return -1;
    return s;
}

/* Ranks must agree on the problem: min and max of a signature over the ranks. */
clattn_status clmpi_same_everywhere(MPI_Comm comm, const int64_t *sig, int n, clattn_mpi_stats *s)
{
    int64_t mn[16], mx[16];
    const double t0 = clmpi_now_s();
    MPI_Allreduce(sig, mn, n, MPI_INT64_T, MPI_MIN, comm);
    MPI_Allreduce(sig, mx, n, MPI_INT64_T, MPI_MAX, comm);
    s->sync_s += clmpi_now_s() - t0;
    for (int i = 0; i < n; i++)
        if (mn[i] != mx[i])
            return clmpi_fail(CLATTN_ERROR_INVALID_ARGUMENT,
                              "the ranks disagree on the problem (field %d: %lld vs %lld): shapes, "
                              "dtypes, totals, scheme and options must be the same on every rank",
                              i, (long long)mn[i], (long long)mx[i]);
    return CLATTN_SUCCESS;
}

/* Merge a part (o2, l2) into the running state (o1, l1): exact log-sum-exp. */
void clmpi_merge_row(float *o1, float *l1, const float *o2, float l2, int64_t Dv)
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
