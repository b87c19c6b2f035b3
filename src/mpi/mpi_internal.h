/* What the clattn_mpi files share (src/mpi/ only): the last error, timing, host tensor
 * helpers, the status agreement between ranks, the log-sum-exp merge, and the prefill
 * problem that the ring and Ulysses schemes both work on. */
#ifndef CLATTN_MPI_INTERNAL_H
#define CLATTN_MPI_INTERNAL_H

#include "clattn_mpi.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- errors and time (clattn_mpi.c) ------------------------------------------------ */

/* Set this thread's clattn_mpi_last_error() to the message; returns st. */
clattn_status clmpi_fail(clattn_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* The start of every call: this thread's last error emptied, and the stats to fill (the
 * caller's, or local when it passed none) zeroed. Returns them. */
clattn_mpi_stats *clmpi_begin(clattn_mpi_stats *stats, clattn_mpi_stats *local);
/* Seconds on a monotonic clock. */
double clmpi_now_s(void);

/* ---- host tensor helpers (clattn_mpi.c) ------------------------------------------- */

void clmpi_store(const clattn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, float x);
/* Write float rows [B, H, L] of Dv values into o and, when lse is not NULL, each row's
 * LSE into lse: row r's values start at rows_o[r * stride_o], its LSE is
 * rows_l[r * stride_l]. */
void clmpi_store_rows(const clattn_tensor *o, const clattn_tensor *lse, int64_t B, int64_t H,
                      int64_t L, int64_t Dv, const float *rows_o, int64_t stride_o,
                      const float *rows_l, int64_t stride_l);
/* Pack rows of Dv floats (o) and their LSE (l) into records of Dv + 1 floats, as the
 * exchanges move O and LSE together. */
void clmpi_pack_records(float *rec, const float *o, const float *l, int64_t rows, int64_t Dv);
/* Copy a host tensor into dense [ne0, ne1, ne2, ne3] storage of its own dtype. */
void clmpi_pack_dense(const clattn_tensor *t, unsigned char *dst);
/* Elements start .. start+len-1 of axis a (an axis of extent 1 broadcasts: unchanged). */
clattn_tensor clmpi_view(clattn_tensor t, int a, int64_t start, int64_t len);
clattn_status clmpi_check_tensor(const clattn_tensor *t, const char *name, bool float_data);
/* Copy the caller's options over *dst (initialised by clattn_options_init) whatever its
 * struct_size: older, smaller structs keep our defaults for the fields they lack. */
clattn_status clmpi_copy_options(clattn_options *dst, const clattn_options *opt);

/* ---- agreement, the fault hook and the merge (clattn_mpi.c) ------------------------ */

clattn_status clmpi_agree(MPI_Comm comm, clattn_status mine, int rank, int step,
                          clattn_mpi_stats *s);
/* CLATTN_MPI_FAULT=RANK:STEP: the step at which this rank fails, or -1. */
int clmpi_fault_step(int rank);
/* Ranks must agree on the problem: min and max of a signature (n <= 16) over the ranks. */
clattn_status clmpi_same_everywhere(MPI_Comm comm, const int64_t *sig, int n,
                                    clattn_mpi_stats *s);
/* Merge a part (o2, l2) into the running state (o1, l1): exact log-sum-exp. */
void clmpi_merge_row(float *o1, float *l1, const float *o2, float l2, int64_t Dv);

/* ---- the prefill problem (mpi_prefill.c) ------------------------------------------- */

typedef struct cp_problem {
    int rank, n;
    clattn_cp_scheme scheme;
    int64_t B, Hq, Hkv, D, Dv, Lq, Lk;
    int nq, nk;                       /* this rank's slices */
    int64_t qs[2], ql[2], ks[2], kl[2];
    int64_t lq, lk;                   /* this rank's local rows and keys */
    clattn_options opt;
} cp_problem;

/* The schemes, on a validated problem (mpi_ring.c: ring and zigzag; mpi_ulysses.c). */
clattn_status clmpi_ring(clattn_context *ctx, MPI_Comm comm, cp_problem *p, const clattn_tensor *q,
                         const clattn_tensor *k, const clattn_tensor *v, const clattn_tensor *o,
                         clattn_mpi_stats *s);
clattn_status clmpi_ulysses(clattn_context *ctx, MPI_Comm comm, cp_problem *p,
                            const clattn_tensor *q, const clattn_tensor *k,
                            const clattn_tensor *v, const clattn_tensor *o, clattn_mpi_stats *s);

#endif /* CLATTN_MPI_INTERNAL_H */
