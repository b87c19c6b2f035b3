/* The backward pass's kernel forms (forms.c) as the call that runs them (backward.c) sees
 * them: a call's plan, its device state, and one row per form. */
#ifndef CLATTN_BACKWARD_FORMS_H
#define CLATTN_BACKWARD_FORMS_H

#include "backward/backward.h"
#include "core/staging.h"

/* The plan of one call: the form and its tiles, adjusted to the device and the problem. */
typedef struct clattn__bwd_plan {
    int form, bm, bn, wg;
    int commit_unit; /* bytes per work-item of the commit: 16 or 2 */
    /* CPU form: Q, dO and K rows read in place (f32, unit stride, D or Dv % 16 == 0);
     * dQ accumulated in the output (one split, f32, dense, unit stride, D % 16 == 0) */
    bool q_direct, do_direct, k_direct, dq_direct;
    /* CPU form, dq_direct, every output a cl_mem tensor and no d_mask: one launch writes
     * dQ, dK and dV in the caller's buffers, so no copies and no commit are needed (it
     * is the call's last command: queued whole or not at all) */
    bool in_place;
    int64_t nsplit; /* CPU form: work-items per (batch, KV head), each with a partial dQ */
} clattn__bwd_plan;

/* The kernels of one call. */
typedef struct clattn__bwd_kernels {
    cl_kernel rowdot, dkdv, dq, dmask, commit; /* CPU form: dkdv = bwd_cpu_kv, dq = bwd_dqsum */
} clattn__bwd_kernels;

/* A cl_mem output moved to scratch until the commit. */
typedef struct clattn__bwd_shadow {
    cl_mem dst, scratch;
    size_t base, span;
} clattn__bwd_shadow;

/* One call's tensors on the device, its outputs' scratch copies and the forms' scratch. */
typedef struct clattn__bwd_state {
    clattn__dev_problem dp; /* q, k, v, o, mask, kv_lens, alibi (all inputs here) */
    clattn__dev_tensor d_o, lse, out[4]; /* out: dq, dk, dv, d_mask */
    clattn__bwd_shadow sh[4];
    cl_mem dl;
    cl_mem qp, dop; /* the CPU form's dense float32 rows of Q and dO (NULL: read in place) */
    cl_mem scr;     /* its per-work-item scratch */
    cl_mem part;    /* its partial dQ, one per split */
} clattn__bwd_state;

/* One form of the backward pass, indexed by its form number: the tuning layer's tiled
 * forms in its order (0 CPU, 1 GPU), then the unfused form (CLATTN__BWD_UNFUSED), the
 * end of the fallback chain. Adding a form is adding a row to forms.c's table and its
 * functions. */
typedef struct clattn__bwd_form {
    const char *file;              /* in cl/: the form's gradient kernels */
    const char *dkdv, *dq;         /* their names */
    const char *dmask_file, *dmask; /* the float mask's gradient */
    /* true: D = rowsum(dO ∘ O) once per row into scratch (cl/backward.cl's bwd_rowdot),
     * which the kernels take after the LSE; false: they take O and recompute D per row */
    bool row_sums;
    /* Fit the tuning row's tiles to the device and p (local memory, splits, direct reads). */
    void (*fit)(const clattn_context *ctx, const clattn__bwd_problem *bp, clattn__bwd_plan *pl);
    /* The form's own build options, appended to opts (NULL: none). */
    bool (*options)(const clattn__bwd_plan *pl, char *opts, size_t cap);
    void (*log)(clattn_context *ctx, const clattn__bwd_plan *pl);
    /* The form's scratch beyond the row sums (NULL: none). */
    clattn_status (*stage)(clattn_context *ctx, const clattn__problem *p, const clattn__bwd_plan *pl,
                           clattn__bwd_state *s);
    /* Set the arguments of its gradient kernels and enqueue them (the event: where one
     * launch writes every output in place). */
    clattn_status (*enqueue)(clattn_context *ctx, const clattn__bwd_kernels *kn, const clattn__bwd_plan *pl,
                             clattn__bwd_state *s, cl_event *event);
} clattn__bwd_form;

#define CLATTN__BWD_UNFUSED 2 /* the unfused form's number */
const clattn__bwd_form *clattn__bwd_form_at(int form);

/* q, k, v, [o,] d_o, lse[, dl]: the leading arguments of the gradient kernels; a form
 * with row sums takes D after the LSE, the others O before dO. */
clattn_status clattn__bwd_set_inputs(clattn_context *ctx, cl_kernel k, cl_uint *a,
                                     const clattn__bwd_state *s, bool row_sums);
/* MASK_PARAMS, B, Hq, Hkv: the trailing arguments of the gradient kernels. */
clattn_status clattn__bwd_set_tail(clattn_context *ctx, cl_kernel k, cl_uint *a,
                                   const clattn__bwd_state *s);

#endif /* CLATTN_BACKWARD_FORMS_H */
