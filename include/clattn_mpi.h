/* clattn_mpi: context parallelism over MPI for clattn (libclattn_mpi, built with
 * -DCLATTN_WITH_MPI=ON; the core library never links MPI).
 *
 * Every call is collective over comm: each rank passes its own context (any device) and
 * its own slice of the problem, and every rank returns the same status. Transfers are
 * host-staged (no OpenCL-aware MPI exists): tensors are host tensors.
 *
 * Schemes for prefill (clattn_mpi_attention), all giving the attention over the whole
 * sequence as one device computes it (every SPEC §1 option, at global positions):
 *   RING     rank r holds the r-th contiguous slice of the query rows and of the keys
 *            (clattn_cp_slices). K/V slices travel around the ring (MPI_Isend/MPI_Irecv
 *            to the next rank, from the previous one) while the rank computes the
 *            attention of its rows over the slice in hand; the partial (O, LSE) states
 *            are merged exactly (log-sum-exp). N steps, N-1 transfers.
 *   ZIGZAG   as RING, with the sequence cut into 2N chunks and rank r holding chunks r
 *            and 2N-1-r of the rows and of the keys: with a causal mask every rank then
 *            does the same work (the early chunk sees few keys, the late one many).
 *   ULYSSES  contiguous slices as RING; an all-to-all (MPI_Alltoallv) turns them into
 *            whole sequences for Hq/N query heads and Hkv/N KV heads per rank, each rank
 *            computes its heads, and a second all-to-all brings O (and LSE) back to the
 *            rows each rank holds. Needs Hq and Hkv divisible by N.
 * Decode (clattn_mpi_kv_cache_attention): the KV cache is sharded over the ranks in rank
 * order (rank r's positions follow rank r-1's, per batch entry; any cache format); each
 * rank computes the attention of the same queries over its shard with its LSE, and one
 * MPI_Allreduce with a log-sum-exp merge operator combines them on every rank.
 *
 * Failures: ranks agree on the status (MPI_Allreduce) after validating the call and after
 * every step, so a rank that fails makes every rank return an error (the failing rank's
 * status; the others name the rank) instead of leaving them blocked in a transfer.
 * Outputs are written only after the last agreement: a failed call leaves them as they
 * were. CLATTN_MPI_FAULT=RANK:STEP (testing only, read at each call) makes that rank
 * fail at that step (0-based; decode has one step, 0) as a device error would.
 *
 * Threads: MPI is called only from the calling thread (MPI_THREAD_FUNNELED is enough);
 * during a ring step the attention runs on a second thread while the calling thread
 * drives the transfers (MPI_Testall), so they progress while the device computes.
 */
#ifndef CLATTN_MPI_H
#define CLATTN_MPI_H

#include <mpi.h>

#include "clattn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum clattn_cp_scheme {
    CLATTN_CP_RING = 0,
    CLATTN_CP_ZIGZAG = 1,
    CLATTN_CP_ULYSSES = 2,
    CLATTN_CP_COUNT_ = 3
} clattn_cp_scheme;
/* "ring", "zigzag", "ulysses"; NULL for an unknown value. */
CLATTN_API const char *clattn_cp_scheme_name(clattn_cp_scheme scheme);
CLATTN_API clattn_status clattn_cp_scheme_from_name(const char *name, clattn_cp_scheme *scheme);

/* The global positions rank holds of a sequence of length L under scheme: *nslices (1
 * or 2) slices start[s] .. start[s]+len[s]-1; a rank's local tensor holds them one after
 * the other. RING and ULYSSES: contiguous slices, the first L % nranks ranks one longer.
 * ZIGZAG: chunks rank and 2*nranks-1-rank of 2*nranks (lengths as RING's over 2N). */
CLATTN_API clattn_status clattn_cp_slices(clattn_cp_scheme scheme, int64_t L, int rank,
                                          int nranks, int64_t start[2], int64_t len[2],
                                          int *nslices);

/* What one call cost on this rank (seconds, summed over steps). */
typedef struct clattn_mpi_stats {
    double total_s;      /* the whole call */
    double compute_s;    /* attention and merges on this rank */
    double comm_s;       /* from posting each step's transfers to their completion (RING,
                            ZIGZAG: overlapped with compute); ULYSSES: the all-to-alls;
                            decode: the reduction */
    double wait_s;       /* time the rank waited on transfers with nothing to compute:
                            transfers that outlasted the step's compute (RING, ZIGZAG), the
                            all-to-alls (ULYSSES), the reduction (decode) */
    double sync_s;       /* time in the status agreements (MPI_Allreduce): mostly waiting
                            for slower ranks to finish the step */
    int steps;           /* ring steps (N), or 1 */
    int64_t bytes_sent;  /* payload bytes this rank sent */
} clattn_mpi_stats;

/* Context-parallel prefill. On every rank: q [B, Hq, lq, D], k [B, Hkv, lk, D],
 * v [B, Hkv, lk, Dv] and o [B, Hq, lq, Dv] hold the rank's rows and keys as
 * clattn_cp_slices gives them for lq_total and lk_total (f32, f16 or bf16, any strides,
 * host); opt applies to the whole problem and is the same on every rank: its mask
 * ([B|1, Hq|1, lq_total|1, lk_total|1]), kv_lens and alibi are whole host tensors;
 * opt->lse, when set, receives the rank's rows' LSE [B, Hq, lq, 1]. stats may be NULL. */
CLATTN_API clattn_status clattn_mpi_attention(clattn_context *ctx, MPI_Comm comm,
                                              clattn_cp_scheme scheme, const clattn_tensor *q,
                                              const clattn_tensor *k, const clattn_tensor *v,
                                              clattn_tensor *o, int64_t lq_total,
                                              int64_t lk_total, const clattn_options *opt,
                                              clattn_mpi_stats *stats);

/* Context-parallel decode over a KV cache sharded in rank order: cache is this rank's
 * shard (on ctx); q [B, Hq, Lq, D] (host) is the same on every rank, and every rank
 * receives the whole o [B, Hq, Lq, Dv] (and opt->lse [B, Hq, Lq, 1]). Options as
 * clattn_kv_cache_attention takes them, at global positions: query i of batch b sits at
 * i + total_len[b] - Lq and the shard's keys at the lengths of the ranks before it; a
 * mask's last extent is max_b total_len[b] (or 1). opt == NULL means bottom-right causal,
 * as for clattn_kv_cache_attention. */
CLATTN_API clattn_status clattn_mpi_kv_cache_attention(clattn_context *ctx, MPI_Comm comm,
                                                       clattn_kv_cache *cache,
                                                       const clattn_tensor *q, clattn_tensor *o,
                                                       const clattn_options *opt,
                                                       clattn_mpi_stats *stats);

/* The message of the calling thread's last failed clattn_mpi call ("" if none). */
CLATTN_API const char *clattn_mpi_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* CLATTN_MPI_H */
