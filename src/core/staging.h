/* Tensors on the device (staging.c): host tensors copied to scratch, cl_mem tensors used
 * in place, outputs written back or committed all at once; every buffer clattn allocates
 * and every enqueue other than a kernel's. */
#ifndef CLATTN_CORE_STAGING_H
#define CLATTN_CORE_STAGING_H

#include "core/problem.h"

/* A tensor as kernels see it: a buffer, an element offset and element strides. */
typedef struct clattn__dev_tensor {
    cl_mem mem;        /* NULL when the tensor is absent */
    cl_long off;       /* element offset */
    cl_long st[4];     /* element strides */
    clattn_dtype dtype;
    bool owned;        /* mem is a staging copy to release */
    bool download;     /* host output: read the span back after the kernels */
    const clattn_tensor *src;
    size_t span_base;  /* byte offset in the host memory the staging copy starts at */
    size_t span;
} clattn__dev_tensor;

typedef struct clattn__dev_problem {
    const clattn__problem *p;
    clattn__dev_tensor q, k, v, o, mask, kv_lens, alibi, lse;
} clattn__dev_problem;

/* Make every tensor of p visible to kernels: cl_mem tensors are used in place, host
 * tensors are copied to new buffers (outputs too, so padding between elements survives
 * the copy back). clattn__stage_finish copies host outputs back and releases copies. */
clattn_status clattn__stage(clattn_context *ctx, const clattn__problem *p,
                            clattn__dev_problem *dp);
clattn_status clattn__stage_finish(clattn_context *ctx, clattn__dev_problem *dp, bool ok);
/* One tensor as clattn__stage presents it (t may be NULL: d is then absent); a host output
 * is marked for download. The caller releases d->mem when d->owned. */
clattn_status clattn__stage_tensor(clattn_context *ctx, const char *name, const clattn_tensor *t,
                                   bool output, clattn__dev_tensor *d);
/* Read the host outputs among outs[0..n) (those marked download; n at most
 * CLATTN__DOWNLOAD_MAX) back into the caller's tensors, all or none: a failed read-back
 * leaves every one as it was. `what` names them in the out-of-memory message. */
#define CLATTN__DOWNLOAD_MAX 4
clattn_status clattn__download(clattn_context *ctx, const clattn__dev_tensor *const *outs, int n,
                               const char *what);
/* End a staged call whose work returned st and (maybe) the event ev of its last command:
 * finish the staging, hand ev to *event (a marker when the work enqueued nothing) or
 * release it, and return the call's status. */
clattn_status clattn__stage_complete(clattn_context *ctx, clattn__dev_problem *dp, clattn_status st,
                                     cl_event ev, cl_event *event);

/* A scratch buffer of at least `bytes` (never 0), or, when host is not NULL, a copy of
 * host's first `bytes`. Every buffer clattn allocates goes through here and back through
 * clattn__buffer_release, so the context knows its peak device memory. */
clattn_status clattn__buffer_create(clattn_context *ctx, size_t bytes, cl_mem *mem);
clattn_status clattn__buffer_create_copy(clattn_context *ctx, size_t bytes, const void *host,
                                         cl_mem *mem);
void clattn__buffer_release(clattn_context *ctx, cl_mem mem); /* NULL is a no-op */
/* Is st an allocation failure a smaller buffer may avoid (a path that chunks retries)? */
bool clattn__alloc_retryable(clattn_status st);

/* Enqueues other than kernels, each through the fault check and with a message naming
 * the device on failure: a marker, a fill, a copy, and a blocking read to the host. */
clattn_status clattn__enqueue_marker(clattn_context *ctx, cl_event *event);
/* A barrier that holds back later commands on the queue until the caller's events
 * (options.wait_events) complete; nothing is enqueued when there are none. */
clattn_status clattn__enqueue_wait(clattn_context *ctx, const cl_event *events, cl_uint n);
clattn_status clattn__enqueue_fill(clattn_context *ctx, cl_mem mem, const void *pattern,
                                   size_t pattern_size, size_t offset, size_t bytes);
clattn_status clattn__enqueue_copy(clattn_context *ctx, cl_mem src, size_t src_off, cl_mem dst,
                                   size_t dst_off, size_t bytes);
/* rows x width bytes, rows src_pitch / dst_pitch bytes apart, from src_off / dst_off */
clattn_status clattn__enqueue_copy_rect(clattn_context *ctx, cl_mem src, size_t src_off,
                                        size_t src_pitch, cl_mem dst, size_t dst_off, size_t dst_pitch,
                                        size_t width, size_t rows);
clattn_status clattn__read(clattn_context *ctx, cl_mem mem, size_t offset, size_t bytes, void *dst);

/* Scratch copies of the caller's cl_mem outputs for a path that writes O or LSE in more
 * than one launch (staging.c): with `needed`, *out is dp with those outputs moved to
 * copies of the caller's bytes; clattn__shadow_commit writes them back in one launch
 * (whose event goes to *event), so a failure anywhere before leaves the caller's buffers
 * untouched. Without `needed`, or with no cl_mem outputs, *out = *dp and commit does
 * nothing. Release always (after commit or failure). */
typedef struct clattn__shadow {
    bool active;
    cl_kernel commit;
    cl_mem o, lse;         /* the scratch copies, or NULL */
    cl_mem o_dst, lse_dst; /* the caller's buffers, or NULL */
    size_t o_base, o_span, lse_base, lse_span;
} clattn__shadow;
clattn_status clattn__shadow_begin(clattn_context *ctx, const clattn__dev_problem *dp, bool needed,
                                   clattn__dev_problem *out, clattn__shadow *sh);
/* The same for a path that writes every element of O and LSE (varlen: every row
 * belongs to a sequence): a dense output's copy then starts empty instead of as a copy
 * of the caller's bytes (outputs with gaps between elements are still copied). */
clattn_status clattn__shadow_begin_whole(clattn_context *ctx, const clattn__dev_problem *dp, bool needed,
                                         bool written_whole, clattn__dev_problem *out, clattn__shadow *sh);
clattn_status clattn__shadow_commit(clattn_context *ctx, clattn__shadow *sh, cl_event *event);
void clattn__shadow_release(clattn_context *ctx, clattn__shadow *sh);

/* The largest single buffer clattn asks ctx's device for: props.max_alloc_bytes, or no
 * limit (UINT64_MAX) when that is 0, which means the device did not say (clattn.h). Every
 * check against the device's allocation limit goes through here, so 0 means one thing. */
uint64_t clattn__alloc_cap(const clattn_context *ctx);
/* The most scratch one call may hold in one buffer: the workspace bound and the above. */
uint64_t clattn__scratch_cap(const clattn_context *ctx);

#endif /* CLATTN_CORE_STAGING_H */
