/* Fault injection (faults.c), for tests of the error paths: every device allocation,
 * enqueue, read-back and kernel get passes one counted check, and an armed fault makes
 * the n-th of its kind from the arming fail as a driver would. Faults fire once.
 * CLATTN_FAIL_PATH makes a named path fail at every build or launch while it runs. */
#ifndef CLATTN_CORE_FAULTS_H
#define CLATTN_CORE_FAULTS_H

#include "core/common.h"

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

/* The stages at which CLATTN_FAIL_PATH can make a path fail. */
typedef enum clattn__fail_stage {
    CLATTN__FAIL_BUILD = 0, /* "build": program builds, CLBlast's kernel compiles */
    CLATTN__FAIL_LAUNCH,    /* "launch": kernel enqueues, CLBlast GEMMs */
    CLATTN__FAIL_STAGES
} clattn__fail_stage;

/* CLATTN_FAIL_PATH as parsed when the context was created (or replaced by
 * clattn__fail_path_set), and the path running now, which the stages apply to. */
typedef struct clattn__fail_paths {
    unsigned char stages[CLATTN_PATH_COUNT_]; /* by path: bit per clattn__fail_stage */
    clattn_path running;                      /* CLATTN_PATH_AUTO while no path runs */
} clattn__fail_paths;

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
/* Arm what the context's environment asks for: CLATTN_FAULT (a malformed value is logged
 * and ignored) and CLATTN_FAIL_PATH. Once, when the context is created. */
void clattn__faults_init(clattn_context *ctx);

/* Replace the CLATTN_FAIL_PATH value the context was created with (tests). */
void clattn__fail_path_set(clattn_context *ctx, const char *spec);
/* Mark the path now running on ctx (CLATTN_PATH_AUTO when it has finished): the dispatcher
 * and the calls that run a path themselves (varlen, backward) set it around the run. */
void clattn__running_path_set(clattn_context *ctx, clattn_path path);
clattn_path clattn__running_path(const clattn_context *ctx);
/* Does CLATTN_FAIL_PATH ask the path running on ctx to fail at `stage`? */
bool clattn__fail_injected(const clattn_context *ctx, clattn__fail_stage stage);

#endif /* CLATTN_CORE_FAULTS_H */
