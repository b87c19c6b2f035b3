/* The context's layout and the internal services every path uses: the kernel program
 * cache, the staging of tensors on the device, and the dispatch table's entry type. */
#ifndef CLATTN_CONTEXT_H
#define CLATTN_CONTEXT_H

#include "internal.h"

/* One compiled program (prelude + one kernel file, with build options) and its kernels. */
typedef struct clattn__program {
    char *key;       /* file name + '\n' + options */
    cl_program program;
    struct {
        char name[64];
        cl_kernel kernel;
    } kernels[8];
    int nkernels;
} clattn__program;

/* A failure of a path recorded for this context's device (see fallback in dispatch.c). */
typedef struct clattn__failure {
    clattn_path path;
    char config[192]; /* build options or a shape class the failure applies to */
    clattn_status status;
    char reason[256];
} clattn__failure;

/* The environment as read when the context was created (env.c): nothing reads getenv
 * after that, so setenv in another thread cannot race with a call. "" = unset. */
#define CLATTN__ENV_PATH_MAX 1024
struct clattn__env {
    char device[256];          /* CLATTN_DEVICE */
    char path[64];             /* CLATTN_PATH, parsed per call so a bad value is the call's error */
    char log[16];              /* CLATTN_LOG */
    char kernel_dir[CLATTN__ENV_PATH_MAX];  /* CLATTN_KERNEL_DIR */
    char cache_dir[CLATTN__ENV_PATH_MAX];   /* resolved program cache folder; "" = none/off */
    char workspace_bytes[32];  /* CLATTN_WORKSPACE_BYTES */
    char fail_path[256];       /* CLATTN_FAIL_PATH (testing) */
    char fault[128];           /* CLATTN_FAULT (testing) */
    char tuning_file[CLATTN__ENV_PATH_MAX]; /* CLATTN_TUNING_FILE */
    bool too_long;             /* some variable did not fit and was ignored */
};
void clattn__env_read(struct clattn__env *env);

/* Fault injection (faults.c), for tests of the error paths: every device allocation,
 * enqueue, read-back and kernel get passes one counted check, and an armed fault makes
 * the n-th of its kind from the arming fail as a driver would. Faults fire once. */
typedef enum clattn__fault_kind {
    CLATTN__FAULT_ALLOC = 0, /* fails with CL_MEM_OBJECT_ALLOCATION_FAILURE */
    CLATTN__FAULT_ENQUEUE,   /* kernels, fills, copies, markers, CLBlast: CL_OUT_OF_RESOURCES */
    CLATTN__FAULT_MAP,       /* read-backs to the host: CL_MAP_FAILURE */
    CLATTN__FAULT_BUILD,     /* kernel gets (built or cached): CLATTN_ERROR_BUILD_FAILED */
    CLATTN__FAULT_PROBE,     /* feature probes (probe.c): the probe's output reads as wrong */
    CLATTN__FAULT_KINDS
} clattn__fault_kind;

typedef struct clattn__faults {
    uint64_t arm[CLATTN__FAULT_KINDS];   /* fail the arm[k]-th site of kind k; 0 = off */
    uint64_t sites[CLATTN__FAULT_KINDS]; /* sites passed since the last arm */
    uint64_t fired;                      /* faults fired since the last arm */
} clattn__faults;

struct clattn_context {
    cl_context cl_ctx;
    cl_device_id device;
    cl_command_queue queue;
    clattn_device_props props;
    bool log;
    int64_t workspace_bytes;
    char last_error[16384]; /* room for a kernel build log */
    clattn_path last_path;
    char last_reason[256];
    clattn__program *programs;
    size_t nprograms, cap_programs;
    clattn__failure failures[32];
    int nfailures;
    clattn_path running_path; /* the path being run, for CLATTN_FAIL_PATH */
    unsigned clblast_warm;    /* CLBlast routines compiled on this context (path_clblast.c) */
    uint64_t device_bytes;      /* scratch and staging memory clattn holds now */
    uint64_t device_bytes_peak; /* and its peak since creation or the last reset */
    struct clattn__env env;     /* the environment at creation */
    struct clattn__tuning *tuning; /* device key, tuning file records (tuning.c) */
    clattn__faults faults;
    /* feature probes (probe.c), by clattn__variant: 0 = not asked yet, 1 = unusable,
     * 2 = usable; the value a probe measured (the subgroup size) */
    signed char probe_answer[8];
    int probe_value[8];
    char probe_why[8][112];
};

/* ---- Fault injection (faults.c) -------------------------------------------------- */
/* Arm a fault at the n-th site of `kind` from now (n >= 1; 0 disarms that kind) and zero
 * every kind's site counts and the fired count. */
void clattn__fault_arm(clattn_context *ctx, clattn__fault_kind kind, uint64_t n);
/* Sites of `kind` passed since the last arm, and faults fired since then. */
uint64_t clattn__fault_sites(const clattn_context *ctx, clattn__fault_kind kind);
uint64_t clattn__fault_fired(const clattn_context *ctx);
/* The counted check at a site: CL_SUCCESS, or the error the site must return. */
cl_int clattn__fault_check(clattn_context *ctx, clattn__fault_kind kind);
/* Parse CLATTN_FAULT ("alloc:N", "enqueue:N", "map:N", "build:N" or "probe:N", comma separated) and
 * arm it; false when the text is not of that form. */
bool clattn__fault_parse(clattn_context *ctx, const char *spec);
/* Replace the CLATTN_FAIL_PATH value the context was created with (tests). */
void clattn__fail_path_set(clattn_context *ctx, const char *spec);

/* ---- Kernel sources and programs (program.c, sources.c) -------------------------- */
/* The text of cl/<name> (built in, or read from folder `dir`, the context's
 * CLATTN_KERNEL_DIR, when not ""). NULL if unknown. A source read from a folder is cached
 * for the process. */
const char *clattn__kernel_source(const char *dir, const char *name);

/* The kernel `kernel_name` from the program built from cl/prelude.cl + cl/<file> with
 * build options `options` (cached on ctx; the kernel is owned by the cache, do not
 * release). Build failures return CLATTN_ERROR_BUILD_FAILED with the log in last_error. */
clattn_status clattn__kernel_get(clattn_context *ctx, const char *file, const char *options,
                                 const char *kernel_name, cl_kernel *kernel);
void clattn__programs_free(clattn_context *ctx);

/* On-disk cache of program binaries (program_disk.c), keyed by a hash of the sources,
 * options, device name, driver and platform version. A load that finds nothing or a
 * damaged file sets *prog = NULL and returns success: the caller builds from source. */
clattn_status clattn__disk_cache_load(clattn_context *ctx, const char *file, const char *prelude,
                                      const char *body, const char *options, cl_program *prog);
/* FNV-1a of an OpenCL C source with its comments left out, continuing from h: the part
 * of the disk cache's key that a kernel file contributes. */
uint64_t clattn__code_hash(uint64_t h, const char *src);
/* A feature probe's answer (probe.c), kept beside the program binaries as
 * `<key>.probe`, the key made of the probe's source and options, the device and the
 * driver as a binary's is. load: false when there is none (or the cache is off). */
bool clattn__disk_probe_load(clattn_context *ctx, const char *source, const char *options, int *answer,
                             int *value);
void clattn__disk_probe_store(clattn_context *ctx, const char *source, const char *options, int answer,
                              int value);
void clattn__disk_cache_store(clattn_context *ctx, const char *file, const char *prelude,
                              const char *body, const char *options, cl_program prog);

/* Append printf-formatted text to an options buffer (truncation is reported). */
bool clattn__opts_add(char *buf, size_t cap, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- Tensors on the device (staging.c) ------------------------------------------- */
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
/* End a staged call whose work returned st and (maybe) the event ev of its last command:
 * finish the staging, hand ev to *event (a marker when the work enqueued nothing) or
 * release it, and return the call's status. */
clattn_status clattn__stage_complete(clattn_context *ctx, clattn__dev_problem *dp, clattn_status st,
                                     cl_event ev, cl_event *event);

/* The start of every public attention call (ctx not NULL): clear *event and the last
 * error, read the caller's options into *full (an older, smaller struct gets defaults)
 * and validate the problem into *p; a failure is recorded on ctx with its message. */
clattn_status clattn__call_begin(clattn_context *ctx, const clattn_tensor *q,
                                 const clattn_tensor *k, const clattn_tensor *v, clattn_tensor *o,
                                 const clattn_options *opt, cl_event *event, clattn_options *full,
                                 clattn__problem *p);

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

/* ---- Kernel argument helpers (kernel_args.c) ------------------------------------- */
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

/* ---- Paths (dispatch.c and path_*.c) --------------------------------------------- */
typedef struct clattn__path_impl {
    clattn_path id;
    /* Can this path compute p on ctx's device? If not, *why says why (static string). */
    bool (*supports)(const clattn_context *ctx, const clattn__problem *p, const char **why);
    /* Enqueue the computation; the last command's event goes to *event when not NULL. */
    clattn_status (*run)(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event);
} clattn__path_impl;

extern const clattn__path_impl clattn__path_decode;
extern const clattn__path_impl clattn__path_fused;
extern const clattn__path_impl clattn__path_unfused;

/* Steps 2 and 3 of the unfused pipeline, shared with the CLBlast path: on a chunk of raw
 * scores S (rows [row0, row0 + n) of the flattened [B, Hq, Lq], leading dimension ldS),
 * scale + mask (cl/unfused_scale_mask.cl), then softmax and LSE (cl/unfused_softmax.cl),
 * in place. Get the kernels once per call, enqueue per chunk. */
typedef struct clattn__softmax_kernels {
    cl_kernel mask, soft;
    size_t wg; /* softmax work-group size */
} clattn__softmax_kernels;
clattn_status clattn__softmax_kernels_get(clattn_context *ctx, const clattn__dev_problem *dp,
                                          clattn__softmax_kernels *k);
clattn_status clattn__softmax_enqueue(clattn_context *ctx, const clattn__dev_problem *dp,
                                      const clattn__softmax_kernels *k, cl_mem S, cl_long ldS,
                                      cl_long row0, cl_long n);
#if CLATTN_WITH_CLBLAST
extern const clattn__path_impl clattn__path_clblast;
#endif

/* Choose a path for dp (forced or auto with fallback) and run it. */
clattn_status clattn__dispatch(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event);
/* Test switch CLATTN_FAIL_PATH (as read at context creation): should the path running on
 * ctx fail at `stage` ("build" or "launch")? */
bool clattn__fail_injected(const clattn_context *ctx, const char *stage);

#endif /* CLATTN_CONTEXT_H */
