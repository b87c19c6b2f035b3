/* The backward pass's validated problem, shared by the device implementation
 * (backward.c) and the float64 reference (reference_backward.c). */
#ifndef CLATTN_BACKWARD_H
#define CLATTN_BACKWARD_H

#include "core/problem.h"

typedef struct clattn__bwd_problem {
    clattn__problem p;           /* the forward problem; p.o is the forward output (input here) */
    const clattn_tensor *d_o;    /* [B, Hq, Lq, Dv] */
    const clattn_tensor *lse;    /* f32 [B, Hq, Lq, 1]; NULL for the reference */
    clattn_tensor *dq, *dk, *dv; /* NULL for the reference (dense doubles instead) */
    clattn_tensor *d_mask;       /* NULL: not asked for */
} clattn__bwd_problem;

/* Validate a backward call. Reference mode (ref = true): o, lse and the outputs are not
 * given (NULL), every tensor must be on the host, and want_dmask says whether the mask's
 * gradient is asked for. Otherwise every argument is checked as the forward call checks
 * its own, plus: d_o shaped like O, lse present and [B, Hq, Lq], gradients shaped like
 * q, k, v, d_mask f32 shaped like an f32 mask, and no output overlapping another
 * tensor of the call. */
clattn_status clattn__bwd_problem_init(clattn__bwd_problem *bp, const clattn_tensor *q,
                                       const clattn_tensor *k, const clattn_tensor *v,
                                       const clattn_tensor *o, const clattn_tensor *d_o,
                                       const clattn_tensor *lse, clattn_tensor *dq,
                                       clattn_tensor *dk, clattn_tensor *dv,
                                       clattn_tensor *d_mask, bool want_dmask,
                                       const clattn_options *opt, bool ref, char *err,
                                       size_t errlen);

/* Testing only: -1 = the kernel form the device's table row gives; 0 = CPU form, 1 = GPU
 * form (so both run on whatever device runs the tests). Not part of the ABI. */
extern int clattn__backward_force_form;
/* Testing only: the form that computed the calling thread's last successful call (0 CPU,
 * 1 GPU, 2 the unfused fallback of cl/backward_unfused.cl). */
extern _Thread_local int clattn__backward_last_form;

#endif /* CLATTN_BACKWARD_H */
