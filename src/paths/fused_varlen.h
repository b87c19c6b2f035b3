/* Packed (varlen) sequences on the fused path in one launch (fused.c): the forms that
 * support it (the form table's varlen column) build their kernels with -DVARLEN and index
 * their work over a table of every sequence's row blocks, so O and LSE are written once,
 * by one launch, with no scratch copy of them. */
#ifndef CLATTN_PATHS_FUSED_VARLEN_H
#define CLATTN_PATHS_FUSED_VARLEN_H

#include "paths/path.h"

/* The sequences of a varlen call: n of them, cu_q and cu_k (n + 1 entries each, already
 * validated) their first query and key rows in the packed tensors. */
typedef struct clattn__varlen_seqs {
    size_t n;
    const int32_t *cu_q, *cu_k;
} clattn__varlen_seqs;

/* Can the form the fused path plans for the packed problem p (B = 1, Lq and Lk the
 * totals) run every sequence of vs in one launch within the workspace bound? */
bool clattn__fused_varlen_supported(const clattn_context *ctx, const clattn__problem *p,
                                    const clattn__varlen_seqs *vs);
/* Run them so (dp: the packed problem staged); CLATTN_ERROR_PATH_UNSUPPORTED when the
 * planned form cannot. */
clattn_status clattn__fused_run_varlen(clattn_context *ctx, const clattn__dev_problem *dp,
                                       const clattn__varlen_seqs *vs, cl_event *event);

#endif /* CLATTN_PATHS_FUSED_VARLEN_H */
