/* clattn: scaled dot-product attention on any OpenCL device.
 *
 * One header, prefix clattn_. Handles are opaque; every call returns a clattn_status;
 * the detailed reason of the last failure (which argument, the kernel build log) is kept
 * on the context and read with clattn_context_last_error().
 *
 *   O = softmax(Q·Kᵀ·scale + mask)·V     (full rules: SPEC.md §1, summarised below)
 *
 * Layout. Every tensor is a descriptor: a buffer (host pointer, or cl_mem + byte offset),
 * a dtype, four extents ne[0..3] and four byte strides nb[0..3], outermost first. The
 * logical shapes are
 *     Q [B, Hq, Lq, D]   K [B, Hkv, Lk, D]   V [B, Hkv, Lk, Dv]   O [B, Hq, Lq, Dv]
 *     LSE [B, Hq, Lq] (float32, natural log; ne[3] = 1)
 * and strides say where element (a, b, c, d) lives: offset + a*nb[0] + b*nb[1] + c*nb[2]
 * + d*nb[3] bytes. So BHLD, BLHD (clattn_tensor_blhd) and views into bigger buffers all
 * work without copies. Strides must be non-negative multiples of the element size.
 *
 * Heads. Query head h reads KV head h / (Hq / Hkv) (GQA and MQA; Hq % Hkv == 0).
 *
 * Masks. A mask tensor is bool (CLATTN_BOOL, one byte, nonzero = may attend) or additive
 * float (CLATTN_F32, may hold -inf), described with four extents [B, Hq, Lq, Lk] where
 * any extent may be 1 to broadcast (numpy rules; a rank-2 mask is [1, 1, Lq, Lk]).
 *
 * A row whose keys are all excluded gives O = 0 and LSE = -inf, never NaN.
 *
 * Threads. A context may be used by one thread at a time; different contexts may be used
 * concurrently. The device list and the on-disk program cache are shared and guarded.
 *
 * Environment variables read by the library:
 *   CLATTN_DEVICE       default device for clattn_context_create(NULL, ...): an index, a
 *                       case-insensitive substring of the platform or device name, or
 *                       "cpu" / "gpu".
 *   CLATTN_PATH         force a path for every call: auto|fused|decode|clblast|unfused
 *                       (an explicit options.path other than AUTO wins).
 *   CLATTN_LOG          when set to 1, log to stderr which path was chosen and why,
 *                       kernel builds and cache hits.
 *   CLATTN_KERNEL_DIR   read kernel sources from this folder instead of the copies built
 *                       into the library (for kernel development).
 *   CLATTN_CACHE_DIR    folder of the on-disk program cache (default
 *                       $XDG_CACHE_HOME/clattn or ~/.cache/clattn); "off" disables it.
 *   CLATTN_WORKSPACE_BYTES  default for CLATTN_PARAM_WORKSPACE_BYTES.
 *   CLATTN_FAIL_PATH    testing only: "NAME:build" or "NAME:launch" (comma separated)
 *                       makes that path fail as a broken driver would, to exercise the
 *                       fallback chain.
 */
#ifndef CLATTN_H
#define CLATTN_H

#include <stddef.h>
#include <stdint.h>

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifdef __APPLE__
#include <OpenCL/cl.h>
#else
#include <CL/cl.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(CLATTN_SHARED_BUILD)
#define CLATTN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define CLATTN_API __attribute__((visibility("default")))
#else
#define CLATTN_API
#endif

/* ---- Version --------------------------------------------------------------------- */
#define CLATTN_VERSION_MAJOR 0
#define CLATTN_VERSION_MINOR 1
#define CLATTN_VERSION_PATCH 0
#define CLATTN_VERSION_NUMBER \
    (CLATTN_VERSION_MAJOR * 10000 + CLATTN_VERSION_MINOR * 100 + CLATTN_VERSION_PATCH)
CLATTN_API unsigned clattn_version_number(void); /* CLATTN_VERSION_NUMBER of the library */
CLATTN_API const char *clattn_version_string(void); /* "0.1.0" */

/* ---- Status ---------------------------------------------------------------------- */
/* OpenCL errors keep OpenCL's own (negative) values, e.g. CL_OUT_OF_RESOURCES = -5.
 * clattn's own errors live in a separate range from -3000 down. */
typedef enum clattn_status {
    CLATTN_SUCCESS = 0,
    CLATTN_ERROR_INVALID_ARGUMENT = -3000, /* a NULL pointer, bad enum, bad option value */
    CLATTN_ERROR_INVALID_SHAPE = -3001,    /* extents that do not fit together */
    CLATTN_ERROR_INVALID_STRIDE = -3002,   /* negative, misaligned or overflowing strides */
    CLATTN_ERROR_UNSUPPORTED_DTYPE = -3003,
    CLATTN_ERROR_NO_DEVICE = -3004,        /* no OpenCL device, or none matches the spec */
    CLATTN_ERROR_BUILD_FAILED = -3005,     /* kernel compile failed: log in last_error */
    CLATTN_ERROR_PATH_UNAVAILABLE = -3006, /* the forced path is not in this build */
    CLATTN_ERROR_PATH_UNSUPPORTED = -3007, /* the forced path cannot run this problem */
    CLATTN_ERROR_OUT_OF_MEMORY = -3008,    /* host allocation failed, or workspace too small */
    CLATTN_ERROR_NO_USABLE_PATH = -3009,   /* every path that supports it failed on this device */
    CLATTN_ERROR_IO = -3010,               /* file I/O (program cache, CLI) */
    CLATTN_ERROR_CAPACITY = -3011,         /* a KV cache append would exceed capacity */
    CLATTN_ERROR_INTERNAL = -3099
} clattn_status;

/* A static string naming the code, for OpenCL codes too ("CL_OUT_OF_RESOURCES"). */
CLATTN_API const char *clattn_status_string(int status);

/* ---- Data types ------------------------------------------------------------------ */
typedef enum clattn_dtype {
    CLATTN_F32 = 0,  /* float32 */
    CLATTN_F16 = 1,  /* IEEE half, stored as 16 bits; read with vload_half on any device */
    CLATTN_BF16 = 2, /* bfloat16, stored as 16 bits */
    CLATTN_BOOL = 3, /* one byte, nonzero = true; masks only */
    CLATTN_I32 = 4   /* int32; per-batch key lengths only */
} clattn_dtype;
CLATTN_API size_t clattn_dtype_size(clattn_dtype dtype); /* 0 for an unknown dtype */
CLATTN_API const char *clattn_dtype_name(clattn_dtype dtype);

/* ---- Devices --------------------------------------------------------------------- */
typedef enum clattn_device_type {
    CLATTN_DEVICE_CPU = 1,
    CLATTN_DEVICE_GPU = 2,
    CLATTN_DEVICE_ACCELERATOR = 3,
    CLATTN_DEVICE_OTHER = 4
} clattn_device_type;

typedef struct clattn_device_props {
    size_t index;                 /* global index over all platforms, as listed */
    char platform_name[128];
    char platform_version[128];
    char name[128];
    char vendor[128];
    char driver_version[128];
    char opencl_c_version[64];
    clattn_device_type type;
    uint32_t compute_units;
    uint32_t max_clock_mhz;
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes;
    uint64_t local_mem_bytes;
    int local_mem_is_dedicated;   /* CL_LOCAL: 1; emulated in global memory: 0 */
    size_t max_work_group_size;
    int has_fp16;                 /* cl_khr_fp16 (clattn reads f16 without it too) */
    int has_subgroups;            /* cl_khr_subgroups or cl_intel_subgroups */
} clattn_device_props;

/* Number of OpenCL devices over every platform (0 is not an error). */
CLATTN_API clattn_status clattn_device_count(size_t *count);
CLATTN_API clattn_status clattn_device_get_props(size_t index, clattn_device_props *props);
/* Resolve a device spec (see CLATTN_DEVICE; NULL or "" = the default device: CLATTN_DEVICE
 * if set, else the first GPU, else the first device) to its index. */
CLATTN_API clattn_status clattn_device_find(const char *spec, size_t *index);

/* ---- Context --------------------------------------------------------------------- */
typedef struct clattn_context clattn_context;

/* A context on the device named by spec (see clattn_device_find); clattn creates and owns
 * the cl_context and an in-order, profiling-enabled queue. On failure *ctx is NULL. */
CLATTN_API clattn_status clattn_context_create(const char *spec, clattn_context **ctx);
/* A context on the caller's own OpenCL objects, retained (not copied) and released by
 * clattn_context_free. The queue must be in-order and belong to cl_ctx and device. */
CLATTN_API clattn_status clattn_context_create_from_cl(cl_context cl_ctx, cl_device_id device,
                                                       cl_command_queue queue,
                                                       clattn_context **ctx);
CLATTN_API void clattn_context_free(clattn_context *ctx); /* NULL is a no-op */

CLATTN_API cl_context clattn_context_cl_context(const clattn_context *ctx);
CLATTN_API cl_device_id clattn_context_cl_device(const clattn_context *ctx);
CLATTN_API cl_command_queue clattn_context_cl_queue(const clattn_context *ctx);
CLATTN_API clattn_status clattn_context_device_props(const clattn_context *ctx,
                                                     clattn_device_props *props);
/* The detailed message of the last failed call on this context ("" if none). The string
 * lives until the next call on the context. */
CLATTN_API const char *clattn_context_last_error(const clattn_context *ctx);

/* Tunable parameters, set through one enum so new knobs never change the ABI. */
typedef enum clattn_param {
    /* Largest scratch buffer one call may allocate for scores (bytes). Default 256 MiB,
     * or CLATTN_WORKSPACE_BYTES; bounds: 4096 .. device max allocation. */
    CLATTN_PARAM_WORKSPACE_BYTES = 1,
    /* 1: log path choices and builds to stderr (default: CLATTN_LOG). */
    CLATTN_PARAM_LOG = 2
} clattn_param;
typedef struct clattn_bounds {
    int64_t lower, upper;
} clattn_bounds;
CLATTN_API clattn_status clattn_context_set_param(clattn_context *ctx, clattn_param p,
                                                  int64_t value);
CLATTN_API clattn_status clattn_context_get_param(const clattn_context *ctx, clattn_param p,
                                                  int64_t *value);
CLATTN_API clattn_status clattn_param_bounds(const clattn_context *ctx, clattn_param p,
                                             clattn_bounds *bounds);

/* ---- Tensors --------------------------------------------------------------------- */
typedef struct clattn_tensor {
    void *host;        /* host memory, or NULL when buffer is used */
    cl_mem buffer;     /* device memory in the context's cl_context, or NULL */
    size_t offset;     /* byte offset into host or buffer */
    clattn_dtype dtype;
    int64_t ne[4];     /* extents, outermost first */
    int64_t nb[4];     /* byte strides */
} clattn_tensor;

/* Dense descriptors. d3 is the innermost extent. */
CLATTN_API clattn_tensor clattn_tensor_host(void *host, clattn_dtype dtype, int64_t d0,
                                            int64_t d1, int64_t d2, int64_t d3);
CLATTN_API clattn_tensor clattn_tensor_cl(cl_mem buffer, size_t offset, clattn_dtype dtype,
                                          int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* Re-stride a dense [B, H, L, D] descriptor as stored in BLHD order (memory [B, L, H, D]). */
CLATTN_API clattn_tensor clattn_tensor_blhd(clattn_tensor t);

/* ---- Attention ------------------------------------------------------------------- */
typedef enum clattn_causal {
    CLATTN_CAUSAL_NONE = 0,
    CLATTN_CAUSAL_TOP_LEFT = 1,     /* j > i excluded (PyTorch is_causal=True) */
    CLATTN_CAUSAL_BOTTOM_RIGHT = 2  /* j > i + Lk - Lq excluded (FlashAttention >= 2.1) */
} clattn_causal;

typedef enum clattn_path {
    CLATTN_PATH_AUTO = 0,
    CLATTN_PATH_FUSED = 1,   /* flash attention: tiled, online softmax */
    CLATTN_PATH_DECODE = 2,  /* split-KV for a few queries */
    CLATTN_PATH_CLBLAST = 3, /* QKᵀ and P·V as CLBlast batched GEMMs */
    CLATTN_PATH_UNFUSED = 4, /* QKᵀ, scale+mask, softmax, P·V kernels */
    CLATTN_PATH_COUNT_ = 5
} clattn_path;
CLATTN_API const char *clattn_path_name(clattn_path path); /* "auto", "fused", ... */
CLATTN_API clattn_status clattn_path_from_name(const char *name, clattn_path *path);
/* 1 when this build has the path's code (it may still not support a given problem). */
CLATTN_API int clattn_path_available(clattn_path path);

typedef struct clattn_options {
    float scale;          /* NaN (the default) = 1/sqrt(D) */
    float softcap;        /* > 0: s = softcap * tanh(s / softcap); 0 = off */
    clattn_causal causal;
    int64_t window_left;  /* keys j < i' - left are excluded; -1 = unbounded */
    int64_t window_right; /* keys j > i' + right are excluded; -1 = unbounded */
    const clattn_tensor *mask;    /* bool or f32 [B|1, Hq|1, Lq|1, Lk|1], or NULL */
    const clattn_tensor *kv_lens; /* int32 [B] as ne = {B,1,1,1}: keys j >= kv_lens[b]
                                     are excluded; values are clamped to 0..Lk; or NULL */
    const clattn_tensor *alibi;   /* f32 slopes [Hq] as ne = {Hq,1,1,1}: s -= slope*|i'-j| */
    clattn_tensor *lse;           /* f32 [B, Hq, Lq, 1] output, or NULL */
    clattn_path path;             /* AUTO = best supported path (CLATTN_PATH may force) */
} clattn_options;

/* Defaults: scale NaN, softcap 0, no causal, window (-1, -1), no mask, path AUTO. */
CLATTN_API void clattn_options_init(clattn_options *opt);

/* Compute attention. With cl_mem tensors the work is only enqueued on the context's
 * queue (no host copies, no clFinish) and, when event is not NULL, *event receives an
 * event that completes when O and LSE are written (release it with clReleaseEvent).
 * With any host tensor the call returns when host outputs are written.
 * opt may be NULL for the defaults. */
CLATTN_API clattn_status clattn_attention(clattn_context *ctx, const clattn_tensor *q,
                                          const clattn_tensor *k, const clattn_tensor *v,
                                          clattn_tensor *o, const clattn_options *opt,
                                          cl_event *event);

/* The path that computed the last successful clattn_attention call on ctx, and why it
 * was chosen (a static or context-owned string). */
CLATTN_API clattn_path clattn_context_last_path(const clattn_context *ctx);
CLATTN_API const char *clattn_context_last_path_reason(const clattn_context *ctx);

/* Device memory clattn allocated itself on ctx (score scratch, staging copies of host
 * tensors): the peak since the context was created or the peak was last reset. */
CLATTN_API uint64_t clattn_context_peak_device_bytes(const clattn_context *ctx);
CLATTN_API void clattn_context_reset_peak_device_bytes(clattn_context *ctx);

/* Failures of paths recorded on ctx by the fallback chain: in auto mode a path that fails
 * to build or launch is skipped for that problem class on this context from then on,
 * and the next path answers. reason is owned by ctx. */
CLATTN_API size_t clattn_context_failure_count(const clattn_context *ctx);
CLATTN_API clattn_status clattn_context_failure_get(const clattn_context *ctx, size_t i,
                                                    clattn_path *path, clattn_status *status,
                                                    const char **reason);

/* ---- CPU reference --------------------------------------------------------------- */
/* The SPEC §1 computation on the host in float64, for tests and `clattn check`. All
 * tensors must be host tensors; opt->lse and opt->path are ignored. out receives dense
 * [B, Hq, Lq, Dv] doubles; lse (or NULL) dense [B, Hq, Lq]. */
CLATTN_API clattn_status clattn_reference_attention(const clattn_tensor *q,
                                                    const clattn_tensor *k,
                                                    const clattn_tensor *v,
                                                    const clattn_options *opt, double *out,
                                                    double *lse);

#ifdef __cplusplus
}
#endif
#endif /* CLATTN_H */
