/* Feature probes (see probe.h): the requirement each feature has of the device, its probe
 * kernel in cl/probes.cl with the input it runs on and the answer the host expects, and
 * the answers kept per context and on disk. */
#include "core/probe.h"

#include "core/program.h"
#include "core/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[CLATTN__VAR_COUNT] = {"f16-math", "subgroups", "mma-nv", "xmx-intel",
                                                     "wmma-amd", "baseline"};

const char *clattn__variant_name(clattn__variant v)
{
    return (unsigned)v < CLATTN__VAR_COUNT ? names[v] : "?";
}

static int forced[CLATTN__VAR_COUNT] = {-1, -1, -1, -1, -1, -1};

void clattn__probe_force(clattn__variant v, int mode)
{
    if ((unsigned)v < CLATTN__VAR_COUNT) forced[v] = mode >= 0 && mode <= 2 ? mode : -1;
}

/* Does the device report what v needs? opts gets the probe's build options; why says what
 * is missing otherwise. */
static bool requirement(clattn_context *ctx, clattn__variant v, char *opts, size_t cap, char *why, size_t whylen)
{
    opts[0] = '\0';
    switch (v) {
    case CLATTN__VAR_F16:
        snprintf(opts, cap, "-DPROBE_F16");
        if (clattn__device_has_extension(ctx->device, "cl_khr_fp16")) return true;
        snprintf(why, whylen, "the device lacks cl_khr_fp16");
        return false;
    case CLATTN__VAR_SUBGROUPS:
        if (clattn__device_has_extension(ctx->device, "cl_khr_subgroups")) {
            snprintf(opts, cap, "-DPROBE_SG");
            return true;
        }
        snprintf(opts, cap, "-DPROBE_SG -DPROBE_SG_INTEL");
        if (clattn__device_has_extension(ctx->device, "cl_intel_subgroups")) return true;
        snprintf(why, whylen, "the device lacks cl_khr_subgroups and cl_intel_subgroups");
        return false;
    case CLATTN__VAR_MMA_NV: {
        snprintf(opts, cap, "-DPROBE_MMA_NV");
        clattn__tdevice dev;
        clattn__tdevice_of(ctx->device, &ctx->props, &dev);
        int sm = 0;
        if (dev.vendor_id == 0x10de && sscanf(dev.arch, "sm_%d", &sm) == 1 && sm >= 80) return true;
        snprintf(why, whylen, "not an NVIDIA device of sm_80 or later (vendor 0x%x, arch \"%s\")",
                 dev.vendor_id, dev.arch);
        return false;
    }
    case CLATTN__VAR_BASELINE:
        snprintf(opts, cap, "-DPROBE_BASELINE");
        return true;
    case CLATTN__VAR_XMX_INTEL:
    case CLATTN__VAR_WMMA_AMD:
    default:
        snprintf(why, whylen, "no probe kernel for this feature in this version of clattn");
        return false;
    }
}

/* The probe's input, launch and expected output. */
typedef struct probe_case {
    const char *kernel;
    float a[256], b[256], want[256];
    size_t na, nb, nout, global, local;
} probe_case;

static void make_case(clattn__variant v, probe_case *c)
{
    memset(c, 0, sizeof *c);
    if (v == CLATTN__VAR_F16 || v == CLATTN__VAR_BASELINE) {
        /* multiples of 1/8 below 2 in magnitude: every half step is exact */
        c->kernel = v == CLATTN__VAR_F16 ? "probe_f16" : "probe_baseline";
        c->na = c->nb = c->nout = c->global = c->local = 64;
        for (int i = 0; i < 64; i++) {
            const float x = (float)((i * 7) % 31 - 15) / 8.0f, y = (float)((i * 5) % 23 - 11) / 8.0f;
            c->a[i] = x;
            c->b[i] = y;
            c->want[i] = (x * y + x) + (y * x + 1.0f);
        }
    } else if (v == CLATTN__VAR_SUBGROUPS) {
        /* a permutation of 0..63: sums and maxima are exact; want is filled per size */
        c->kernel = "probe_sg";
        c->na = c->nb = c->global = c->local = 64;
        c->nout = 3 * 64;
        for (int i = 0; i < 64; i++) c->a[i] = (float)((i * 37) % 64);
    } else {
        /* D = A B + 1 with small integers: exact in half and float */
        c->kernel = "probe_mma_nv";
        c->na = 16 * 16;
        c->nb = 16 * 8;
        c->nout = 16 * 8;
        c->global = c->local = 32;
        for (int i = 0; i < 256; i++) c->a[i] = (float)((i * 5) % 7 - 3);
        for (int i = 0; i < 128; i++) c->b[i] = (float)((i * 3) % 5 - 2);
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 8; n++) {
                float s = 1.0f;
                for (int k = 0; k < 16; k++) s += c->a[m * 16 + k] * c->b[k * 8 + n];
                c->want[m * 8 + n] = s;
            }
    }
}

/* Check the subgroup probe's output: one power-of-two size for every work-item,
 * subgroups as runs of consecutive work-items, and their reductions. */
static bool check_subgroups(const probe_case *c, const float *out, int *size, char *why, size_t whylen)
{
    const int s = (int)out[0];
    if (s < 1 || s > 64 || (s & (s - 1)) || 64 % s) {
        snprintf(why, whylen, "the probe measured a subgroup size of %g", (double)out[0]);
        return false;
    }
    for (int i = 0; i < 64; i++) {
        const int base = i / s * s;
        float mx = c->a[base], sum = 0.0f;
        for (int u = base; u < base + s; u++) {
            mx = c->a[u] > mx ? c->a[u] : mx;
            sum += c->a[u];
        }
        if ((int)out[3 * i] != s || out[3 * i + 1] != mx || out[3 * i + 2] != sum) {
            snprintf(why, whylen, "work-item %d: size %g max %g sum %g, expected %d, %g, %g", i,
                     (double)out[3 * i], (double)out[3 * i + 1], (double)out[3 * i + 2], s, (double)mx,
                     (double)sum);
            return false;
        }
    }
    *size = s;
    return true;
}

/* Build and run v's probe; true when its output is the expected one. */
static bool run_probe(clattn_context *ctx, clattn__variant v, const char *opts, const char *src, int *value,
                      char *why, size_t whylen)
{
    probe_case *pc = malloc(sizeof *pc); /* 3 KiB: not on the stack */
    if (!pc) {
        snprintf(why, whylen, "out of host memory");
        return false;
    }
    make_case(v, pc);
    bool ok = false;
    cl_int err;
    cl_program prog = clCreateProgramWithSource(ctx->cl_ctx, 1, &src, NULL, &err);
    cl_kernel k = NULL;
    cl_mem a = NULL, b = NULL, o = NULL;
    float out[256];
    if (err != CL_SUCCESS) {
        snprintf(why, whylen, "clCreateProgramWithSource: %s", clattn_status_string(err));
        goto done;
    }
    if (clBuildProgram(prog, 1, &ctx->device, opts, NULL, NULL) != CL_SUCCESS) {
        char log[160] = "";
        clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
        log[sizeof log - 1] = '\0';
        for (char *p = log; *p; p++)
            if (*p == '\n') *p = ' ';
        snprintf(why, whylen, "the probe kernel did not build: %.70s", log);
        goto done;
    }
    k = clCreateKernel(prog, pc->kernel, &err);
    if (err == CL_SUCCESS)
        a = clCreateBuffer(ctx->cl_ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, pc->na * sizeof(float), pc->a, &err);
    if (err == CL_SUCCESS)
        b = clCreateBuffer(ctx->cl_ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, pc->nb * sizeof(float), pc->b, &err);
    if (err == CL_SUCCESS) o = clCreateBuffer(ctx->cl_ctx, CL_MEM_WRITE_ONLY, pc->nout * sizeof(float), NULL, &err);
    if (err == CL_SUCCESS) err = clSetKernelArg(k, 0, sizeof a, &a);
    if (err == CL_SUCCESS) err = clSetKernelArg(k, 1, sizeof b, &b);
    if (err == CL_SUCCESS) err = clSetKernelArg(k, 2, sizeof o, &o);
    if (err == CL_SUCCESS) err = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &pc->global, &pc->local, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, o, CL_TRUE, 0, pc->nout * sizeof(float), out, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        snprintf(why, whylen, "the probe kernel did not run: %s", clattn_status_string(err));
        goto done;
    }
    if (clattn__fault_check(ctx, CLATTN__FAULT_PROBE) != CL_SUCCESS) out[0] += 1.0f; /* tests */
    *value = 0;
    if (v == CLATTN__VAR_SUBGROUPS) {
        ok = check_subgroups(pc, out, value, why, whylen);
    } else {
        ok = true;
        for (size_t i = 0; i < pc->nout && ok; i++)
            if (out[i] != pc->want[i]) {
                snprintf(why, whylen, "the probe's output %zu is %g, expected %g", i, (double)out[i],
                         (double)pc->want[i]);
                ok = false;
            }
    }
done:
    if (o) clReleaseMemObject(o);
    if (b) clReleaseMemObject(b);
    if (a) clReleaseMemObject(a);
    if (k) clReleaseKernel(k);
    if (prog) clReleaseProgram(prog);
    free(pc);
    return ok;
}

bool clattn__variant_usable(clattn_context *ctx, clattn__variant v, int *value, char *why, size_t whylen)
{
    char tmp[112];
    if (!why || whylen == 0) {
        why = tmp;
        whylen = sizeof tmp;
    }
    int dummy;
    if (!value) value = &dummy;
    *value = 0;
    why[0] = '\0';
    if ((unsigned)v >= CLATTN__VAR_COUNT) {
        snprintf(why, whylen, "unknown feature");
        return false;
    }
    const int mode = forced[v];
    if (ctx->probe_answer[v] && mode != 2) {
        *value = ctx->probe_value[v];
        snprintf(why, whylen, "%s", ctx->probe_why[v]);
        return ctx->probe_answer[v] == 2;
    }
    if (mode == 0 || mode == 1) {
        /* a forced answer is remembered as a probed one, so a variant kernel that then
         * fails to build is switched off by clattn__variant_failed like any other */
        snprintf(why, whylen, "forced %s (test hook)", mode ? "usable" : "unusable");
        *value = mode && v == CLATTN__VAR_SUBGROUPS ? 16 : 0;
        ctx->probe_answer[v] = mode ? 2 : 1;
        ctx->probe_value[v] = *value;
        clattn__copy_str(ctx->probe_why[v], sizeof ctx->probe_why[v], why);
        return mode == 1;
    }
    char opts[96];
    bool ok = requirement(ctx, v, opts, sizeof opts, why, whylen);
    const char *src = clattn__kernel_source(ctx->env.kernel_dir, "probes.cl");
    if (!src) {
        snprintf(why, whylen, "cl/probes.cl is missing from this build");
        ok = false;
    } else if (ok || mode == 2) {
        int answer = 0, val = 0;
        if (mode != 2 && clattn__disk_probe_load(ctx, src, opts, &answer, &val)) {
            ok = answer == 2;
            *value = val;
            snprintf(why, whylen, "probe %s (cached)", ok ? "passed" : "failed");
        } else {
            why[0] = '\0';
            ok = run_probe(ctx, v, opts, src, value, why, whylen);
            if (ok) snprintf(why, whylen, "probe passed%s", v == CLATTN__VAR_SUBGROUPS ? ": subgroup size measured" : "");
            clattn__log(ctx, "probe %s: %s", names[v], ok ? "passed" : why);
            /* a forced probe ran where the device lacks the feature: not its real answer */
            if (mode != 2) clattn__disk_probe_store(ctx, src, opts, ok ? 2 : 1, *value);
        }
    }
    if (mode != 2) {
        ctx->probe_answer[v] = ok ? 2 : 1;
        ctx->probe_value[v] = *value;
        clattn__copy_str(ctx->probe_why[v], sizeof ctx->probe_why[v], why);
    }
    return ok;
}

void clattn__variant_failed(clattn_context *ctx, clattn__variant v, const char *why)
{
    if ((unsigned)v >= CLATTN__VAR_COUNT) return;
    ctx->probe_answer[v] = 1;
    ctx->probe_value[v] = 0;
    clattn__copy_str(ctx->probe_why[v], sizeof ctx->probe_why[v], why);
    clattn__log(ctx, "variant %s switched off on this context: %s", names[v], why);
}
