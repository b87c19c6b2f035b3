/* The validated problem (problem.c): every descriptor and option of a call checked once,
 * into the clattn__problem the paths, the KV cache and the references read. */
#ifndef CLATTN_CORE_PROBLEM_H
#define CLATTN_CORE_PROBLEM_H

#include "core/common.h"

typedef struct clattn__problem {
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
    int64_t group;          /* Hq / Hkv */
    float scale;            /* resolved (never NaN) */
    float softcap;          /* 0 = off */
    clattn_causal causal;
    int64_t win_left, win_right; /* -1 = unbounded */
    const clattn_tensor *q, *k, *v;
    clattn_tensor *o;       /* NULL for the reference */
    const clattn_tensor *mask, *kv_lens, *alibi;
    clattn_tensor *lse;
    clattn_path path;       /* requested path (options, before CLATTN_PATH) */
} clattn__problem;

/* A full-size copy of the caller's options (NULL = defaults), whatever struct_size says
 * within the accepted range; an out-of-range size is refused with a message in err. */
clattn_status clattn__options_read(const clattn_options *in, clattn_options *out, char *err,
                                   size_t errlen);

/* Validate every descriptor and option; fill p. o may be NULL (reference). On error the
 * message names the argument and the status says what kind of error. */
clattn_status clattn__problem_init(clattn__problem *p, const clattn_tensor *q,
                                   const clattn_tensor *k, const clattn_tensor *v,
                                   clattn_tensor *o, const clattn_options *opt, char *err,
                                   size_t errlen);

/* problem_init's checks of one descriptor (buffer, dtype, extents, strides, span) and
 * of an output's strides (no element written twice), for the backward pass's tensors. */
clattn_status clattn__check_tensor(const char *name, const clattn_tensor *t, bool host_only,
                                   char *err, size_t errlen);
/* problem_init's check of a mask (descriptor, bool or f32, each extent 1 or full[i],
 * named dims[i]) against the full extents of the call that takes it; note is appended
 * to an extent's message ("" for none). */
clattn_status clattn__check_mask(const clattn_tensor *m, const int64_t full[4], const char *const dims[4],
                                 bool host_only, const char *note, char *err, size_t errlen);
clattn_status clattn__check_no_self_overlap(const char *name, const clattn_tensor *t, char *err,
                                            size_t errlen);

/* Bytes from the first to one past the last element a descriptor touches (0 if empty).
 * Returns false on overflow. */
bool clattn__tensor_span(const clattn_tensor *t, size_t *span);
/* Elements of t: 0 when any extent is 0, INT64_MAX when the product does not fit. */
int64_t clattn__tensor_numel(const clattn_tensor *t);

#endif /* CLATTN_CORE_PROBLEM_H */
