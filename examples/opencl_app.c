/* An OpenCL application that owns its cl_context, queue and buffers and calls clattn in
 * the middle of its own work: each step its kernel writes the queries, clattn computes
 * attention into the app's buffer, and its next kernel (chained on clattn's event) adds
 * the output into a running state. The buffers are made once and reused every step; no
 * data goes through the host until the end, where the state is checked against clattn's
 * CPU reference.
 *
 *   opencl_app            runs on the first GPU, else the first OpenCL device
 */
#include <clattn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { B = 1, HQ = 4, HKV = 2, L = 64, D = 64, STEPS = 3 };
enum { NQ = B * HQ * L * D, NKV = B * HKV * L * D };

static const char *app_source =
    "__kernel void make_q(__global float *q, float step) {\n"
    "  size_t i = get_global_id(0);\n"
    "  q[i] = sin(0.01f * (float)i + step);\n"
    "}\n"
    "__kernel void accumulate(__global float *state, __global const float *o) {\n"
    "  size_t i = get_global_id(0);\n"
    "  state[i] += o[i];\n"
    "}\n";

static int check(cl_int err, const char *what)
{
    if (err != CL_SUCCESS) fprintf(stderr, "opencl_app: %s failed: %s\n", what, clattn_status_string(err));
    return err != CL_SUCCESS;
}

/* The app's own device choice: the first GPU, else the first device of any kind. */
static int pick_device(cl_platform_id *platform, cl_device_id *device)
{
    cl_platform_id ps[16];
    cl_uint np = 0;
    if (clGetPlatformIDs(16, ps, &np) != CL_SUCCESS || np == 0) return 1;
    for (int pass = 0; pass < 2; pass++)
        for (cl_uint i = 0; i < np && i < 16; i++)
            if (clGetDeviceIDs(ps[i], pass == 0 ? CL_DEVICE_TYPE_GPU : CL_DEVICE_TYPE_ALL, 1, device,
                               NULL) == CL_SUCCESS) {
                *platform = ps[i];
                return 0;
            }
    return 1;
}

int main(void)
{
    cl_platform_id platform;
    cl_device_id device;
    if (pick_device(&platform, &device)) {
        fprintf(stderr, "opencl_app: no OpenCL device\n");
        return 1;
    }
    cl_int err;
    cl_context cl = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    if (check(err, "clCreateContext")) return 1;
    cl_command_queue queue = clCreateCommandQueue(cl, device, 0, &err); /* in-order */
    if (check(err, "clCreateCommandQueue")) return 1;
    cl_program prog = clCreateProgramWithSource(cl, 1, &app_source, NULL, &err);
    if (check(err, "clCreateProgramWithSource") || check(clBuildProgram(prog, 1, &device, "", NULL, NULL), "clBuildProgram"))
        return 1;
    cl_kernel make_q = clCreateKernel(prog, "make_q", &err);
    cl_kernel accumulate = clCreateKernel(prog, "accumulate", &err);
    if (check(err, "clCreateKernel")) return 1;

    /* K and V are the app's data, uploaded once; Q, O and the state live on the device. */
    float *k = malloc(sizeof(float) * NKV), *v = malloc(sizeof(float) * NKV);
    for (int i = 0; i < NKV; i++) {
        k[i] = cosf(0.03f * (float)i);
        v[i] = sinf(0.07f * (float)i);
    }
    cl_mem qb = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float) * NQ, NULL, &err);
    cl_mem kb = clCreateBuffer(cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof(float) * NKV, k, &err);
    cl_mem vb = clCreateBuffer(cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof(float) * NKV, v, &err);
    cl_mem ob = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float) * NQ, NULL, &err);
    cl_mem sb = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float) * NQ, NULL, &err);
    if (check(err, "clCreateBuffer")) return 1;
    const float zero = 0.0f;
    clEnqueueFillBuffer(queue, sb, &zero, sizeof zero, 0, sizeof(float) * NQ, 0, NULL, NULL);

    /* clattn shares the app's context and queue (retained, not copied). */
    clattn_context *ctx = NULL;
    clattn_status st = clattn_context_create_from_cl(cl, device, queue, &ctx);
    if (st != CLATTN_SUCCESS) {
        fprintf(stderr, "opencl_app: clattn_context_create_from_cl: %s\n", clattn_status_string(st));
        return 1;
    }
    clattn_tensor tq = clattn_tensor_cl(qb, 0, CLATTN_F32, B, HQ, L, D);
    clattn_tensor tk = clattn_tensor_cl(kb, 0, CLATTN_F32, B, HKV, L, D);
    clattn_tensor tv = clattn_tensor_cl(vb, 0, CLATTN_F32, B, HKV, L, D);
    clattn_tensor to = clattn_tensor_cl(ob, 0, CLATTN_F32, B, HQ, L, D);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_TOP_LEFT;

    const size_t n = NQ;
    for (int step = 0; step < STEPS; step++) {
        const float s = (float)step;
        clSetKernelArg(make_q, 0, sizeof qb, &qb);
        clSetKernelArg(make_q, 1, sizeof s, &s);
        if (check(clEnqueueNDRangeKernel(queue, make_q, 1, NULL, &n, NULL, 0, NULL, NULL), "make_q")) return 1;
        cl_event attended = NULL;
        st = clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, &attended);
        if (st != CLATTN_SUCCESS) {
            fprintf(stderr, "opencl_app: clattn_attention: %s: %s\n", clattn_status_string(st),
                    clattn_context_last_error(ctx));
            return 1;
        }
        /* The queue is in-order, so the wait list is not needed here; it is what an app
         * with an out-of-order queue or a second queue would pass. */
        clSetKernelArg(accumulate, 0, sizeof sb, &sb);
        clSetKernelArg(accumulate, 1, sizeof ob, &ob);
        err = clEnqueueNDRangeKernel(queue, accumulate, 1, NULL, &n, NULL, 1, &attended, NULL);
        clReleaseEvent(attended);
        if (check(err, "accumulate")) return 1;
    }
    float *state = malloc(sizeof(float) * NQ);
    if (check(clEnqueueReadBuffer(queue, sb, CL_TRUE, 0, sizeof(float) * NQ, state, 0, NULL, NULL), "read"))
        return 1;
    clattn_device_props props;
    clattn_context_device_props(ctx, &props);
    printf("opencl_app: %d steps on %s, path %s\n", STEPS, props.name,
           clattn_path_name(clattn_context_last_path(ctx)));

    /* The same steps on the host, with clattn's float64 reference. */
    float *q = malloc(sizeof(float) * NQ);
    double *ref = malloc(sizeof(double) * NQ), *want = calloc(NQ, sizeof(double));
    for (int step = 0; step < STEPS; step++) {
        for (int i = 0; i < NQ; i++) q[i] = sinf(0.01f * (float)i + (float)step);
        clattn_tensor hq = clattn_tensor_host(q, CLATTN_F32, B, HQ, L, D);
        clattn_tensor hk = clattn_tensor_host(k, CLATTN_F32, B, HKV, L, D);
        clattn_tensor hv = clattn_tensor_host(v, CLATTN_F32, B, HKV, L, D);
        if (clattn_reference_attention(&hq, &hk, &hv, &opt, ref, NULL) != CLATTN_SUCCESS) return 1;
        for (int i = 0; i < NQ; i++) want[i] += ref[i];
    }
    double worst = 0.0;
    for (int i = 0; i < NQ; i++) {
        const double e = fabs((double)state[i] - want[i]) / (2e-4 * STEPS + 2e-3 * fabs(want[i]));
        if (!(e <= worst)) worst = e; /* NaN counts as the worst */
    }
    printf("opencl_app: worst error / tolerance = %.3f\n", worst);

    clattn_context_free(ctx);
    clReleaseMemObject(qb);
    clReleaseMemObject(kb);
    clReleaseMemObject(vb);
    clReleaseMemObject(ob);
    clReleaseMemObject(sb);
    clReleaseKernel(make_q);
    clReleaseKernel(accumulate);
    clReleaseProgram(prog);
    clReleaseCommandQueue(queue);
    clReleaseContext(cl);
    free(k);
    free(v);
    free(q);
    free(state);
    free(ref);
    free(want);
    return worst <= 1.0 ? 0 : 1;
}
