/* Kernel arguments and launches (kernel_args.c): the tensor and masking arguments every
 * kernel of cl/ shares, and the one place an NDRange is enqueued. */
#ifndef CLATTN_CORE_KERNEL_ARGS_H
#define CLATTN_CORE_KERNEL_ARGS_H

#include "core/staging.h"

/* -D options that specialise the scoring code of cl/prelude.cl and the dtypes of q, k,
 * v and o (Q_DT, K_DT, V_DT, O_DT, MASK_KIND, HAS_SOFTCAP, HAS_ALIBI). The key-range
 * features (causal, window, key lengths) are arguments, not options. */
bool clattn__mask_options(const clattn__dev_problem *dp, char *buf, size_t cap);
/* Only the masking features (no dtypes): for kernels that read no tensor but the mask. */
bool clattn__feature_options(const clattn__dev_problem *dp, char *buf, size_t cap);
/* Set the MASK_PARAMS arguments of cl/prelude.cl starting at *arg. */
clattn_status clattn__set_mask_args(clattn_context *ctx, cl_kernel k, cl_uint *arg,
                                    const clattn__dev_problem *dp);
/* Set a tensor's (pointer, offset, 4 strides) arguments starting at *arg. */
clattn_status clattn__set_tensor_args(clattn_context *ctx, cl_kernel k, cl_uint *arg,
                                      const clattn__dev_tensor *t);
clattn_status clattn__set_arg(clattn_context *ctx, cl_kernel k, cl_uint *arg, size_t size,
                              const void *value);
#define CLATTN_ARG(ctx, k, argi, value) clattn__set_arg((ctx), (k), (argi), sizeof(value), &(value))

/* Enqueue an NDRange; local may be NULL. Global sizes are rounded up to local ones. */
clattn_status clattn__enqueue(clattn_context *ctx, cl_kernel k, cl_uint dims,
                              const size_t *global, const size_t *local, cl_event *event);

#endif /* CLATTN_CORE_KERNEL_ARGS_H */
