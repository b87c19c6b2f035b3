/* The paths (dispatch.c and one file per path): the table dispatch chooses from and the
 * unfused steps the CLBlast path shares. */
#ifndef CLATTN_PATHS_PATH_H
#define CLATTN_PATHS_PATH_H

#include "core/staging.h"

typedef struct clattn__path_impl {
    clattn_path id;
    /* Can this path compute p on ctx's device? If not, *why says why (static string). */
    bool (*supports)(const clattn_context *ctx, const clattn__problem *p, const char **why);
    /* Enqueue the computation; the last command's event goes to *event when not NULL. */
    clattn_status (*run)(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event);
} clattn__path_impl;

extern const clattn__path_impl clattn__path_decode;
extern const clattn__path_impl clattn__path_fused;
extern const clattn__path_impl clattn__path_unfused;

/* Steps 2 and 3 of the unfused pipeline, shared with the CLBlast path: on a chunk of raw
 * scores S (rows [row0, row0 + n) of the flattened [B, Hq, Lq], leading dimension ldS),
 * scale + mask (cl/unfused_scale_mask.cl), then softmax and LSE (cl/unfused_softmax.cl),
 * in place. Get the kernels once per call, enqueue per chunk. */
typedef struct clattn__softmax_kernels {
    cl_kernel mask, soft;
    size_t wg; /* softmax work-group size */
} clattn__softmax_kernels;
clattn_status clattn__softmax_kernels_get(clattn_context *ctx, const clattn__dev_problem *dp,
                                          clattn__softmax_kernels *k);
clattn_status clattn__softmax_enqueue(clattn_context *ctx, const clattn__dev_problem *dp,
                                      const clattn__softmax_kernels *k, cl_mem S, cl_long ldS,
                                      cl_long row0, cl_long n);
#if CLATTN_WITH_CLBLAST
extern const clattn__path_impl clattn__path_clblast;
#endif

/* Choose a path for dp (forced or auto with fallback) and run it. */
clattn_status clattn__dispatch(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event);

#endif /* CLATTN_PATHS_PATH_H */
