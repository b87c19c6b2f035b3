/* Fault injection (faults.c), for tests of the error paths: every device allocation,
 * enqueue, read-back and kernel get passes one counted check, and an armed fault makes
 * the n-th of its kind from the arming fail as a driver would. Faults fire once. */
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

#endif /* CLATTN_CORE_FAULTS_H */
