/* Feature probes: whether a device's optional features (half arithmetic, subgroups,
 * matrix units) work as clattn needs them. A feature is usable when the device reports
 * what it needs (an extension, a vendor and architecture) and its probe kernel
 * (cl/probes.cl), built and run once on a tiny case, matches the host's answer. The
 * answer is kept on the context and on disk beside the program binaries
 * (program_disk.c), keyed by device, driver and probe source, so a device is probed once
 * per driver; a probe that fails to build or run, or answers wrongly, makes the feature
 * unusable there and never fails a call. */
#ifndef CLATTN_PROBE_H
#define CLATTN_PROBE_H

#include "core/common.h"

typedef enum clattn__variant {
    CLATTN__VAR_F16 = 0,   /* half arithmetic (cl_khr_fp16) */
    CLATTN__VAR_SUBGROUPS, /* subgroup reductions (cl_khr_subgroups, cl_intel_subgroups);
                            * value: the subgroup size the probe measured */
    CLATTN__VAR_MMA_NV,    /* NVIDIA tensor cores: mma.sync through inline PTX (sm_80 and up) */
    CLATTN__VAR_XMX_INTEL, /* Intel XMX (cl_intel_subgroup_matrix_multiply_accumulate) */
    CLATTN__VAR_WMMA_AMD,  /* AMD RDNA3 WMMA (__builtin_amdgcn_wmma_*, gfx11) */
    CLATTN__VAR_BASELINE,  /* float32 arithmetic, which every device has: a probe of the
                            * probe machinery itself (its cache, its failure handling) */
    CLATTN__VAR_COUNT
} clattn__variant;

const char *clattn__variant_name(clattn__variant v);

/* Is feature v usable on ctx's device? value (may be NULL) gets what the probe measured
 * (the subgroup size; 0 otherwise); why (may be NULL) a line saying why or why not.
 * Probes at most once per context and, through the disk cache, per device and driver. */
bool clattn__variant_usable(clattn_context *ctx, clattn__variant v, int *value, char *why, size_t whylen);

/* A kernel using v failed to build on ctx although the probe passed: v is unusable on
 * ctx from now on (the path retries without it). */
void clattn__variant_failed(clattn_context *ctx, clattn__variant v, const char *why);

/* Testing: mode -1 = as the device says; 0 = unusable without probing; 1 = usable without
 * probing; 2 = probe even where the device lacks what the feature needs (so a probe that
 * cannot build is exercised). Process-wide, as clattn__tuning_force_form. */
void clattn__probe_force(clattn__variant v, int mode);

#endif /* CLATTN_PROBE_H */
