/* Tuned parameters as data: one small table per path, each with a row per device class
 * (type, then vendor) and a generic default last, so every device gets a row and none is
 * "unsupported". Values become -D build options of the path's kernels. Rows are chosen
 * by the first match; the measurements behind each row are cited next to it in tuning.c. */
#ifndef CLATTN_TUNING_H
#define CLATTN_TUNING_H

#include "internal.h"

/* The fused (flash) path, cl/flash_cpu.cl (form 0) or cl/flash_gpu.cl (form 1). */
typedef struct clattn__fused_tuning {
    clattn_device_type type; /* 0 = any type */
    const char *vendor;      /* case-insensitive substring of the device vendor; NULL = any */
    int max_d;               /* the row applies when max(D, Dv) <= max_d */
    int form;                /* 0 = CPU form, 1 = GPU form */
    int block_m;             /* query rows per work-item (CPU) / per work-group (GPU) */
    int block_n;             /* keys per tile (multiple of 16 for the CPU form) */
    int dv_chunk;            /* CPU: float16 vectors of O updated per pass over a tile */
    int row_groups;          /* CPU: groups of block_m rows per work-item, taking each K/V
                                tile in turn while it is in the cache */
    int wg;                  /* work-group size (CPU: work-items per group, 1 = one each) */
} clattn__fused_tuning;

/* Testing only (path_fused.c): force the fused path's CPU (0) or GPU (1) form; -1 = tuned. */
extern int clattn__fused_force_form;

const clattn__fused_tuning *clattn__fused_tuning_for(const clattn_device_props *props,
                                                     int64_t D, int64_t Dv);

/* The decode path, cl/decode.cl (see path_decode.c). */
typedef struct clattn__decode_tuning {
    clattn_device_type type; /* 0 = any type */
    const char *vendor;      /* case-insensitive substring of the device vendor; NULL = any */
    int form;       /* 0 = CPU form (work-item per row block, vectors along D, no local
                       memory), 1 = GPU form (work-group per row block, local memory) */
    int max_lq;     /* largest Lq the path takes; above it the fused path tiles queries */
    int rows;       /* most query rows per work-item (CPU) / work-group (GPU) */
    int ktile;      /* keys per tile (CPU: a multiple of vw) / per local block (GPU) */
    int vw;         /* CPU: float vector width along D (4, 8 or 16) */
    int wg;         /* GPU: work-group size (a power of two) */
    int wgs_per_cu; /* work-groups wanted per compute unit (load balance) */
    int min_chunk;  /* fewest keys per split (the merge costs Dv floats per split and row) */
    int max_chunk;  /* most keys per split (0 = no bound) */
} clattn__decode_tuning;

/* Testing only (path_decode.c): force the decode path's CPU (0) or GPU (1) form; -1 = tuned. */
extern int clattn__decode_force_form;

const clattn__decode_tuning *clattn__decode_tuning_for(const clattn_device_props *props);

#endif /* CLATTN_TUNING_H */
