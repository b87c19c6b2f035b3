/* The context's layout (created by api/context.c, set up by context.c): its device and
 * queue, the programs built for it, the failures recorded per path, the environment read
 * at creation (env.c), the tuning and probe answers, and the fault injection state. */
#ifndef CLATTN_CORE_CONTEXT_H
#define CLATTN_CORE_CONTEXT_H

#include "core/faults.h"

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
    unsigned clblast_warm;    /* CLBlast routines compiled on this context (src/paths/clblast.c) */
    uint64_t device_bytes;      /* scratch and staging memory clattn holds now */
    uint64_t device_bytes_peak; /* and its peak since creation or the last reset */
    struct clattn__env env;     /* the environment at creation */
    struct clattn__tuning *tuning; /* device key, tuning file records (tuning.c) */
    clattn__faults faults;
    clattn__fail_paths fail_paths; /* CLATTN_FAIL_PATH, parsed, and the running path */
    /* feature probes (probe.c), by clattn__variant: 0 = not asked yet, 1 = unusable,
     * 2 = usable; the value a probe measured (the subgroup size) */
    signed char probe_answer[8];
    int probe_value[8];
    char probe_why[8][112];
};

/* The smallest workspace bound CLATTN_WORKSPACE_BYTES or the parameter may set. */
#define CLATTN__MIN_WORKSPACE ((int64_t)4096)

/* ctx->env is read and its device and queue are set: set what derives from them (context.c).
 * The tuning state is set up after this, by the caller. */
void clattn__context_init(clattn_context *ctx);
/* Release the programs, queue and cl_context a context holds, and the context itself
 * (its tuning state is released first, by the caller). */
void clattn__context_release(clattn_context *ctx);

#endif /* CLATTN_CORE_CONTEXT_H */
