/* clattn: scaled dot-product attention on any OpenCL device.
 *
 * One header to include, prefix clattn_ (it includes clattn_kv.h, the KV cache and the
 * paged KV pool). Handles are opaque; every call returns a clattn_status;
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
 * Environment variables read by the library. Each context reads them once, when it is
 * created (clattn_context_create, clattn_context_create_from_cl), and keeps the values:
 * changing a variable later affects only contexts created after the change, and a call
 * never reads the environment (so setenv in another thread cannot race with it).
 * clattn_device_find reads CLATTN_DEVICE when it is called.
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
 *   CLATTN_TUNING_FILE  a tuning file (JSON, format in the README) whose records beat the
 *                       built-in tuning rows; clattn.tuning.json in the cache folder is
 *                       read too. Bad files and records are ignored (logged with CLATTN_LOG).
 *   CLATTN_FAIL_PATH    testing only: "NAME:build" or "NAME:launch" (comma separated)
 *                       makes that path fail as a broken driver would, to exercise the
 *                       fallback chain.
 *   CLATTN_FAULT        testing only: "alloc:N", "enqueue:N", "map:N", "build:N" or
 *                       "probe:N" (comma separated) makes the N-th device allocation,
 *                       enqueue, read-back, kernel build or feature probe of the context
 *                       fail once, as a driver would (a failed probe: wrong output).
 *
 * Failures. A call that fails leaves its outputs (O, LSE; host or cl_mem) and the KV
 * cache (contents and lengths) as they were before the call. In auto mode a path that
 * fails is followed by the next one; a path that chunks its work (fused, unfused) first
 * retries with smaller chunks when the device cannot allocate its scratch. A path that
 * would write a cl_mem O or LSE in more than one launch writes scratch copies and
 * commits them in one launch, at the cost of a copy of those outputs.
 *
 * Compatibility policy (what a program compiled against this header can rely on):
 *  - Versions. While the major version is 0, a minor release (0.1 -> 0.2) may change
 *    the ABI, so the shared library's SONAME carries the minor (libclattn.so.0.2) and
 *    the CMake package accepts only the same minor. Patch releases keep the ABI.
 *  - Structs the caller allocates and the library reads (clattn_options) start with
 *    struct_size, set by their init function. New fields are only ever appended, so a
 *    newer library reads an older caller's smaller struct and gives the fields it lacks
 *    their defaults (the init function is inline, so it never writes past the caller's
 *    struct); a size that is smaller than the first sized layout, larger than the
 *    library's own struct, or not set by the init function is refused with
 *    CLATTN_ERROR_INVALID_ARGUMENT and a message naming the size. Always call the init
 *    function, then set fields.
 *  - Structs the library fills (clattn_device_props, clattn_tensor from the helpers)
 *    only grow at the end too; clattn_tensor's layout is fixed.
 *  - Functions keep their signatures; a new capability of an existing call comes as a
 *    new function (clattn_kv_cache_append_with_event) or a new options field, and the
 *    old function keeps working. Removals are announced in CHANGELOG.md one minor
 *    release before they happen.
 *  - Enum values are never renumbered; new ones are added before the *_COUNT_ values.
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
#define CLATTN_VERSION_MINOR 2
#define CLATTN_VERSION_PATCH 0
#define CLATTN_VERSION_NUMBER \
    (CLATTN_VERSION_MAJOR * 10000 + CLATTN_VERSION_MINOR * 100 + CLATTN_VERSION_PATCH)
CLATTN_API unsigned clattn_version_number(void); /* CLATTN_VERSION_NUMBER of the library */
CLATTN_API const char *clattn_version_string(void); /* "0.2.0" */

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
    uint64_t max_alloc_bytes;     /* largest single buffer; 0 = the device did not say:
                                     clattn then assumes no limit beyond its workspace
                                     bound (CLATTN_PARAM_WORKSPACE_BYTES) */
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
    /* Host memory, or NULL when buffer is used. const so that an input (q, k, v, a mask)
     * is described without a cast; an output's (o, lse) memory must be writable, and
     * clattn writes it. */
    const void *host;
    cl_mem buffer;     /* device memory in the context's cl_context, or NULL */
    size_t offset;     /* byte offset into host or buffer */
    clattn_dtype dtype;
    int64_t ne[4];     /* extents, outermost first */
    int64_t nb[4];     /* byte strides */
} clattn_tensor;

/* Dense descriptors. d3 is the innermost extent. Extents whose packed size does not fit
 * int64 (or negative ones) give strides of -1, which every call refuses. */
CLATTN_API clattn_tensor clattn_tensor_host(const void *host, clattn_dtype dtype, int64_t d0,
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
    size_t struct_size;   /* sizeof(clattn_options) as compiled by the caller; set by
                             clattn_options_init (see the compatibility policy above) */
    /* ---- since 0.2 (the first sized layout) */
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
    /* ---- since 0.2, after the first layout (a caller's struct may end before these) */
    /* Events the call waits for before it reads any input (a barrier on the context's
     * queue), e.g. an app's kernel on another queue that writes Q. NULL / 0 = none. */
    const cl_event *wait_events;
    cl_uint num_wait_events;
} clattn_options;

/* The size of the first sized clattn_options layout (0.2, up to and including path):
 * the smallest struct_size a library accepts. */
#define CLATTN_OPTIONS_SIZE_0_2 (offsetof(clattn_options, path) + sizeof(clattn_path))

/* Defaults: scale NaN, softcap 0, no causal, window (-1, -1), no mask, path AUTO, no
 * wait events. clattn_options_init is inline so that sizeof is the caller's: a library
 * newer than the caller's header then writes only the caller's struct_size bytes (never
 * past an older, smaller struct) and records that size. Bindings that lay the struct out
 * themselves call clattn_options_init_sized with their own size. */
CLATTN_API void clattn_options_init_sized(clattn_options *opt, size_t struct_size);
static inline void clattn_options_init(clattn_options *opt)
{
    clattn_options_init_sized(opt, sizeof *opt);
}

/* Compute attention. With cl_mem tensors the work is only enqueued on the context's
 * queue (no host copies, no clFinish) and, when event is not NULL, *event receives an
 * event that completes when O and LSE are written (release it with clReleaseEvent).
 * With any host tensor the call returns when host outputs are written.
 * opt may be NULL for the defaults. */
CLATTN_API clattn_status clattn_attention(clattn_context *ctx, const clattn_tensor *q,
                                          const clattn_tensor *k, const clattn_tensor *v,
                                          clattn_tensor *o, const clattn_options *opt,
                                          cl_event *event);

/* Ragged (varlen) attention without padding, as FlashAttention's varlen interface:
 * n_seqs sequences packed one after another, q [1, Hq, total_q, D], k [1, Hkv, total_k, D],
 * v [1, Hkv, total_k, Dv], o and options.lse [1, Hq, total_q, Dv|1]; sequence s owns query
 * rows cu_seqlens_q[s] .. cu_seqlens_q[s+1]-1 and key rows cu_seqlens_k[s] ..
 * cu_seqlens_k[s+1]-1 (host int32 arrays of n_seqs + 1 entries, starting at 0, never
 * decreasing, ending at total_q and total_k) and attends only within itself. Every option
 * applies per sequence, as if the sequence ran alone (causal and window positions align
 * to the sequence's own Lq and Lk); options.mask and options.kv_lens are refused. Runs
 * on the fused path (AUTO chooses it; another forced path is refused with
 * CLATTN_ERROR_PATH_UNSUPPORTED). Failures leave o and lse untouched. */
CLATTN_API clattn_status clattn_attention_varlen(clattn_context *ctx, const clattn_tensor *q,
                                                 const clattn_tensor *k, const clattn_tensor *v,
                                                 clattn_tensor *o, size_t n_seqs,
                                                 const int32_t *cu_seqlens_q,
                                                 const int32_t *cu_seqlens_k,
                                                 const clattn_options *opt, cl_event *event);

/* ---- Backward pass ---------------------------------------------------------------- */
/* Gradients of attention (FlashAttention-2's backward): given the forward call's inputs
 * q, k, v and options, its output o and its log-sum-exp lse (f32 [B, Hq, Lq, 1], as
 * returned through clattn_options.lse; required), and d_o = dLoss/dO [B, Hq, Lq, Dv],
 * write dq [B, Hq, Lq, D], dk [B, Hkv, Lk, D] and dv [B, Hkv, Lk, Dv]. Every SPEC §1
 * option applies as in the forward call: scale, softcap (through its derivative 1 - tanh²),
 * ALiBi and float masks (constants), causal, window, kv_lens, boolean masks; with GQA, dk
 * and dv are summed over each KV head's query heads; rows whose keys are all excluded
 * contribute nothing (their dq rows are 0). d_mask, when not NULL, receives the gradient
 * of a float additive mask (opt->mask must be f32; d_mask f32 with the mask's extents):
 * dLoss/ds summed over the extents the mask broadcasts. Inputs and outputs take any of
 * f32, f16 and bf16 storage (d_mask: f32) and any strides; arithmetic is float32.
 * Outputs must not overlap each other or any input. opt->lse is not used. opt->path:
 * AUTO runs the tiled kernels (the tuning layer's form for the device, then its other
 * form if that one fails to build) and, when they fail to build or run, falls back to
 * the unfused kernels (no scratch, slower); FUSED runs the tiled kernels only, UNFUSED
 * the unfused ones only; DECODE and CLBLAST are refused (CLATTN_ERROR_PATH_UNSUPPORTED).
 * With AUTO, CLATTN_PATH=fused or unfused forces those (other values leave it AUTO).
 * The result is deterministic (no atomics): the same inputs give bit-identical gradients.
 * Memory: scratch linear in B*Hq*Lq, plus a copy of each cl_mem output (outputs are
 * written into scratch and committed in one launch, so a failed call leaves every output
 * as it was; host outputs likewise; where a single launch writes every output, as the
 * CPU form's can, it writes them in place instead). Events and host tensors behave as in
 * clattn_attention. Accuracy and speed: docs/backward.md. */
CLATTN_API clattn_status clattn_attention_backward(
    clattn_context *ctx, const clattn_tensor *q, const clattn_tensor *k, const clattn_tensor *v,
    const clattn_tensor *o, const clattn_tensor *d_o, const clattn_tensor *lse, clattn_tensor *dq,
    clattn_tensor *dk, clattn_tensor *dv, clattn_tensor *d_mask, const clattn_options *opt,
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

/* ---- Merge of partial states ------------------------------------------------------ */
/* Merge n_parts attention states computed over disjoint sets of keys (split-KV chunks, a
 * shared prefix and each sequence's suffix) into the attention over all of them:
 *     LSE = log sum_i exp(LSE_i)           (largest first, so nothing overflows)
 *     O   = sum_i exp(LSE_i - LSE) * O_i
 * o_parts[i] is [B, H, Lq, Dv] (f32, f16 or bf16; parts may differ) and lse_parts[i] its
 * f32 [B, H, Lq, 1], as clattn_attention writes them with options.lse; o has the parts'
 * shape (f32, f16 or bf16) and lse, which may be NULL, is f32 [B, H, Lq, 1]. Host or
 * cl_mem, any strides. A part whose LSE is -inf (every key excluded) contributes nothing;
 * a row with every part -inf gives O = 0 and LSE = -inf, never NaN. The operation is
 * associative and commutative: merging merged results gives the same states (to float32
 * rounding). Arithmetic is float32 on the device. o and lse may alias a part (in place):
 * the parts are read before anything is written; o and lse must not overlap each other.
 * The work is enqueued on the context's queue after what is already there; on failure o
 * and lse are as they were. */
CLATTN_API clattn_status clattn_merge_states(clattn_context *ctx, size_t n_parts,
                                             const clattn_tensor *o_parts,
                                             const clattn_tensor *lse_parts, clattn_tensor *o,
                                             clattn_tensor *lse, cl_event *event);

/* ---- One block of a bigger problem (ring attention, key splits) ------------------ */
/* Where a block of query rows and a block of keys sit in the whole problem. */
typedef struct clattn_block {
    int64_t q_start;  /* global position of the block's first query row */
    int64_t k_start;  /* global position of the block's first key */
    int64_t lq_total; /* Lq of the whole problem */
    int64_t lk_total; /* Lk of the whole problem */
} clattn_block;

/* The attention of query rows q_start .. q_start+lq-1 (q [B, Hq, lq, D]) over keys
 * k_start .. k_start+lk-1 only (k [B, Hkv, lk, D], v [B, Hkv, lk, Dv]), with every SPEC
 * §1 option taken at the rows' and keys' global positions: causal edges, windows and
 * ALiBi use i' = i + lk_total - lq_total and global j; opt->mask is the whole problem's
 * mask ([B|1, Hq|1, lq_total|1, lk_total|1]); opt->kv_lens holds global key counts;
 * opt->lse receives the block's LSE [B, Hq, lq, 1]. Merging the (O, LSE) of blocks over
 * disjoint key sets (clattn_merge_states) gives the attention over their union, so ring
 * attention and key splits are built from this call.
 * A block whose pairs are all excluded by causal/window positions does no device work:
 * O = 0 and LSE = -inf are written and *computed (may be NULL) is 0; otherwise 1.
 * Causal edges and windows become the block's own window after the rows that see no
 * key (O = 0, LSE = -inf) and the keys no row sees are left out, which is exact for any
 * band. ALiBi at an offset (a block off the diagonal) whose computed pairs all lie on one
 * side of i' = j becomes a per-key bias ([1, Hq, 1, keys] floats) plus a per-row constant
 * added to the LSE; only ALiBi across i' = j at an offset, or ALiBi at an offset with a
 * mask, builds a float32 mask of [B|1, Hq, rows, keys] on the host for the call. All tensors, outputs and option
 * tensors are host tensors (the call returns when O and LSE are written); wait events
 * are refused. */
CLATTN_API clattn_status clattn_attention_block(clattn_context *ctx, const clattn_block *block,
                                                const clattn_tensor *q, const clattn_tensor *k,
                                                const clattn_tensor *v, clattn_tensor *o,
                                                const clattn_options *opt, int *computed);

/* ---- Device groups: one call over several devices --------------------------------- */
/* A group of contexts (any mix of devices and platforms: two GPUs, a GPU and the CPU,
 * PoCL and rusticl) that computes one attention call together. The call is split by
 * (batch, KV head) units, each device taking a contiguous range of B*Hkv in proportion
 * to its speed; when there are fewer than 4 units per device it is split by keys instead
 * and the parts' (O, LSE) are merged exactly on the host (log-sum-exp, in double); the
 * key ranges then carry shares of the work (the rows that causal edges and windows let
 * see each key), not of the keys. Each
 * device runs its part on a thread of its own, so a group uses each of its contexts from
 * one thread at a time: do not use them elsewhere during a group call, and use a group
 * from one thread at a time.
 * Speeds: clattn_group_set_speeds, or measured by clattn_group_calibrate (also run by
 * the first call when no speeds are set, with that call's D, Dv and dtype): each device
 * runs a 1x4x256x256 problem, the first run builds the kernel and the best of the next
 * three gives the speed in GFLOP/s. The split is recomputed from the speeds on every
 * call.
 * Host staging: the tensors are host tensors (the devices have no memory in common), so
 * each device copies its part in and its results out: in a unit split Q, K, V and O each
 * cross once over the whole group; in a key split K and V cross once, while Q goes to
 * every device and every device returns a whole O and LSE for the merge. Results land in
 * float32 host scratch (the output's size, per device in a key split), committed to o
 * (converted to o's dtype) only when every device succeeded: a failed call leaves o and
 * options.lse as they were. On a CPU device a copy costs about as much as reading the
 * data once; on a discrete GPU it crosses PCIe: B*Hq*Lq*D*e (Q) + B*Hkv*Lk*(D+Dv)*e
 * (K, V) + B*Hq*Lq*(Dv+1)*4 (O, LSE) bytes per unit-split call, e the input element size
 * (docs/scaling.md). */
typedef struct clattn_group clattn_group;

/* A group of new contexts, one per device spec (see clattn_device_find); the group owns
 * them. At most 64 devices. On failure *group is NULL and no context is left. */
CLATTN_API clattn_status clattn_group_create(const char *const *specs, size_t n,
                                             clattn_group **group);
/* A group over the caller's contexts (not owned: they must outlive the group and are not
 * freed by it). The same context twice is refused (INVALID_ARGUMENT). */
CLATTN_API clattn_status clattn_group_create_from_contexts(clattn_context *const *ctxs,
                                                           size_t n, clattn_group **group);
CLATTN_API void clattn_group_free(clattn_group *group); /* NULL is a no-op */
CLATTN_API size_t clattn_group_size(const clattn_group *group);
CLATTN_API clattn_context *clattn_group_context(const clattn_group *group, size_t i);
/* The message of the last failed group call ("" if none); it names the device. */
CLATTN_API const char *clattn_group_last_error(const clattn_group *group);
/* Relative speeds (n values >= 0, not all 0), e.g. `clattn devices --peak` figures. */
CLATTN_API clattn_status clattn_group_set_speeds(clattn_group *group, const double *speeds);
/* Measure each device's speed now (one device after the other, so they do not compete
 * for a shared host) with head dims D, Dv and storage dtype. */
CLATTN_API clattn_status clattn_group_calibrate(clattn_group *group, int64_t D, int64_t Dv,
                                                clattn_dtype dtype);
/* The speeds in use (GFLOP/s when measured), 0 each before any are set or measured. */
CLATTN_API clattn_status clattn_group_speeds(const clattn_group *group, double *speeds);
/* Attention as clattn_attention computes it (every SPEC §1 option, any strides), with
 * host tensors only (q, k, v, o and the options' tensors); no wait events. Returns when
 * o and options.lse are written. */
CLATTN_API clattn_status clattn_group_attention(clattn_group *group, const clattn_tensor *q,
                                                const clattn_tensor *k, const clattn_tensor *v,
                                                clattn_tensor *o, const clattn_options *opt);
/* Device i's share of the last call: by_keys 1 when keys were split (start, count over
 * Lk), else 0 (over the B*Hkv units, unit = b*Hkv + kv head), and its wall time. */
CLATTN_API clattn_status clattn_group_last_split(const clattn_group *group, size_t i,
                                                 int *by_keys, int64_t *start, int64_t *count,
                                                 double *seconds);

/* ---- CPU reference --------------------------------------------------------------- */
/* The SPEC §1 computation on the host in float64, for tests and `clattn check`. All
 * tensors must be host tensors; opt->lse and opt->path are ignored. out receives dense
 * [B, Hq, Lq, Dv] doubles; lse (or NULL) dense [B, Hq, Lq]. Extents whose element counts
 * or buffer sizes overflow 64 bits (zero strides allow any) give INVALID_SHAPE. */
CLATTN_API clattn_status clattn_reference_attention(const clattn_tensor *q,
                                                    const clattn_tensor *k,
                                                    const clattn_tensor *v,
                                                    const clattn_options *opt, double *out,
                                                    double *lse);

/* clattn_merge_states on the host in float64 (host tensors only): out [B*H*Lq*Dv] and
 * lse [B*H*Lq] (may be NULL), dense, row-major. */
CLATTN_API clattn_status clattn_reference_merge_states(size_t n_parts,
                                                       const clattn_tensor *o_parts,
                                                       const clattn_tensor *lse_parts,
                                                       double *out, double *lse);

/* The backward pass on the host in float64 (analytic; O and LSE are recomputed from q,
 * k, v): dense doubles dq [B, Hq, Lq, D], dk [B, Hkv, Lk, D], dv [B, Hkv, Lk, Dv] and,
 * when d_mask is not NULL (opt->mask must be f32), d_mask dense over the mask's extents.
 * All tensors must be host tensors; d_o is [B, Hq, Lq, Dv]. */
CLATTN_API clattn_status clattn_reference_attention_backward(
    const clattn_tensor *q, const clattn_tensor *k, const clattn_tensor *v,
    const clattn_tensor *d_o, const clattn_options *opt, double *dq, double *dk, double *dv,
    double *d_mask);

#ifdef __cplusplus
}
#endif

/* The KV cache and the paged KV pool (after the types they use). */
#include "clattn_kv.h"

#endif /* CLATTN_H */
