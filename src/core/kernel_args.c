/* Kernel arguments and build options shared by every path: the dtype and masking -D
 * options that specialise cl/prelude.cl, and the argument lists TENSOR_PARAMS and
 * MASK_PARAMS in the order the prelude declares them. */
#include "core/program.h"
#include "core/kernel_args.h"
#include "core/faults.h"

clattn_status clattn__set_arg(clattn_context *ctx, cl_kernel k, cl_uint *arg, size_t size,
                              const void *value)
{
    cl_int err = clSetKernelArg(k, *arg, size, value);
    if (err != CL_SUCCESS)
        return clattn__fail(ctx, (clattn_status)err, "clSetKernelArg(%u): %s", *arg,
                            clattn_status_string(err));
    (*arg)++;
    return CLATTN_SUCCESS;
}

clattn_status clattn__set_tensor_args(clattn_context *ctx, cl_kernel k, cl_uint *arg,
                                      const clattn__dev_tensor *t)
{
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, t->mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, t->off));
    for (int i = 0; i < 4; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, t->st[i]));
    return CLATTN_SUCCESS;
}

bool clattn__feature_options(const clattn__dev_problem *dp, char *buf, size_t cap)
{
    const clattn__problem *p = dp->p;
    int mask_kind = !p->mask ? 0 : p->mask->dtype == CLATTN_BOOL ? 1 : 2;
    /* causal, window and key lengths are run-time arguments (clattn__set_mask_args) */
    return clattn__opts_add(buf, cap, " -DMASK_KIND=%d -DHAS_SOFTCAP=%d -DHAS_ALIBI=%d", mask_kind,
                            p->softcap > 0 ? 1 : 0, p->alibi ? 1 : 0);
}

bool clattn__mask_options(const clattn__dev_problem *dp, char *buf, size_t cap)
{
    const clattn__problem *p = dp->p;
    return clattn__opts_add(buf, cap, " -DQ_DT=%d -DK_DT=%d -DV_DT=%d -DO_DT=%d", (int)p->q->dtype,
                            (int)p->k->dtype, (int)p->v->dtype, (int)p->o->dtype) &&
           clattn__feature_options(dp, buf, cap);
}

clattn_status clattn__set_mask_args(clattn_context *ctx, cl_kernel k, cl_uint *arg,
                                    const clattn__dev_problem *dp)
{
    const clattn__problem *p = dp->p;
    cl_float scale = p->scale, softcap = p->softcap;
    cl_long win_left = p->win_left, win_right = p->win_right;
    cl_int causal = (cl_int)p->causal, has_kvlens = dp->kv_lens.mem ? 1 : 0;
    cl_long Lq = p->Lq, Lk = p->Lk;
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, scale));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, softcap));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, dp->alibi.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, dp->alibi.off));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, dp->alibi.st[0]));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, arg, &dp->mask));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, causal));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, win_left));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, win_right));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, has_kvlens));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, dp->kv_lens.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, dp->kv_lens.off));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, dp->kv_lens.st[0]));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, Lq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, arg, Lk));
    return CLATTN_SUCCESS;
}

clattn_status clattn__enqueue(clattn_context *ctx, cl_kernel k, cl_uint dims,
                              const size_t *global, const size_t *local, cl_event *event)
{
    size_t g[3];
    for (cl_uint i = 0; i < dims; i++) {
        g[i] = global[i];
        if (g[i] == 0) return CLATTN_SUCCESS; /* nothing to do */
        if (local) g[i] = (g[i] + local[i] - 1) / local[i] * local[i];
    }
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    if (err == CL_SUCCESS && clattn__fail_injected(ctx, CLATTN__FAIL_LAUNCH))
        err = CL_OUT_OF_RESOURCES; /* as a driver short of registers would say */
    if (err == CL_SUCCESS)
        err = clEnqueueNDRangeKernel(ctx->queue, k, dims, NULL, g, local, 0, NULL, event);
    if (err != CL_SUCCESS) {
        char name[64] = "?";
        clGetKernelInfo(k, CL_KERNEL_FUNCTION_NAME, sizeof name - 1, name, NULL);
        name[sizeof name - 1] = '\0';
        return clattn__fail(ctx, (clattn_status)err, "launching %s on %s failed: %s", name,
                            ctx->props.name, clattn_status_string(err));
    }
    return CLATTN_SUCCESS;
}
