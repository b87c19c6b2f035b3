/* The tuning layer: every tuned value of every path (kernel form, tiles, work-group
 * shape, vector widths, rows per work-item, split plans, decode's query bound, the
 * CLBlast preference, the KV cache's plan) as data. Built-in rows are looked up as
 * CLBlast's database: device name, then architecture, then vendor, then device type,
 * then a default that fits any device. Records of a tuning file (tuning_file.c, format
 * in the README) beat the built-in row for their device and problem class. Whether a row
 * is legal on a device is decided by clattn__tuning_legal alone. */
#ifndef CLATTN_TUNING_H
#define CLATTN_TUNING_H

#include "core/device.h"
#include "core/problem.h"

/* The paths that read tuned values. DISPATCH holds the order preferences of auto mode. */
typedef enum clattn__tpath {
    CLATTN__TP_FUSED = 0,
    CLATTN__TP_DECODE,
    CLATTN__TP_UNFUSED,
    CLATTN__TP_KV,
    CLATTN__TP_DISPATCH,
    CLATTN__TP_BACKWARD, /* clattn_attention_backward's tiled forms (cl/backward_cpu.cl, cl/backward_gpu.cl) */
    CLATTN__TP_COUNT
} clattn__tpath;

/* One row: the values of every parameter; a path reads the ones its table lists
 * (clattn__tparam_info). Forms are indices into the path's ordered list of forms. */
typedef struct clattn__trow {
    int form;           /* fused, decode, backward, kv: index in the path's form list */
    int block_m;        /* fused: query rows per work-item (CPU) / per work-group (GPU);
                           backward: query rows per step (CPU) / per tile (GPU) */
    int block_n;        /* fused: keys per tile; backward: keys per block (CPU, the most:
                           wide heads halve it) / per tile (GPU) */
    int dv_chunk;       /* fused CPU: float16 vectors of O updated per pass over a tile */
    int row_groups;     /* fused CPU: groups of block_m rows per work-item */
    int wg;             /* fused, decode, backward, kv GPU form: work-group size */
    int tc;             /* fused gpu-mm: work-items along the keys and O columns of a row */
    int rows;           /* decode, kv: most query rows per work-item / work-group */
    int ktile;          /* decode, kv GPU form: keys per tile */
    int vw;             /* decode CPU: float vector width along D (4, 8 or 16);
                         * fused gpu-mm: 4 = 4-vector loads where the layout allows, 1 = none */
    int wgs_per_cu;     /* decode, kv: work-groups wanted per compute unit */
    int min_chunk;      /* decode, kv: fewest keys per split */
    int max_chunk;      /* decode, kv: most keys per split (0 = no bound) */
    int max_lq;         /* decode: largest Lq the decode path takes */
    int tile;           /* unfused: side of the QK^T and P.V tiles (1 = no local memory) */
    int softmax_wg;     /* unfused: softmax work-group size */
    int split_blocks;   /* kv: 1 = row blocks count toward the work-groups wanted */
    int prefetch;       /* kv: software prefetch in the kernel (KV_PREFETCH) */
    int prefer_clblast; /* dispatch: 1 = the CLBlast path goes ahead of the fused one */
} clattn__trow;

/* A problem class: what a tuning record is keyed by beside the device. */
typedef struct clattn__tclass {
    int dtype;  /* clattn_dtype of Q */
    int head;   /* head-size bucket: 64, 128 or 256 (max(D, Dv) rounded up) */
    int decode; /* 1: Lq <= the decode bound; 0: prefill */
    int causal; /* 0 or 1 */
    int group;  /* GQA group size bucket: 1, 2, 4, 8 or 16 (16 and up) */
    int kv;     /* KV-cache key format, or -1 for dense tensors */
} clattn__tclass;

/* Where a row came from: a built-in level, or a tuning file. */
typedef struct clattn__tsource {
    char text[192];
} clattn__tsource;

/* ---- Names (params.c) ---------------------------------------------------------- */
/* One parameter's name and where it lives, for the file reader, printing and the tuner. */
typedef struct clattn__tparam_info {
    const char *name;
    size_t offset;     /* in clattn__trow */
    unsigned paths;    /* bit per clattn__tpath that reads it */
} clattn__tparam_info;
const clattn__tparam_info *clattn__tparams(size_t *n);
int *clattn__trow_field(clattn__trow *r, const clattn__tparam_info *pi);

const char *clattn__tpath_name(clattn__tpath path);
bool clattn__tpath_from_name(const char *name, clattn__tpath *out);
/* The path's kernel forms in fallback order ("cpu", "gpu"); 1 for paths with one form. */
int clattn__tform_count(clattn__tpath path);
const char *clattn__tform_name(clattn__tpath path, int form);

/* ---- Built-in rows (rows.c) ---------------------------------------------------- */
/* A built-in row. It applies to a device when each key it sets matches; its level is the
 * most specific key it sets (name > arch > vendor > type > none: default), and the lookup
 * takes the row of the most specific level (the first such row on a tie). */
typedef struct clattn__tbuiltin {
    uint32_t vendor_id;      /* 0 = any */
    const char *arch;        /* NULL = any */
    const char *name;        /* NULL = any; case-insensitive, whole name */
    clattn_device_type type; /* 0 = any */
    clattn__trow row;
} clattn__tbuiltin;
/* The row of table t (n rows, the last a default) for dev, and its level's name. */
void clattn__tuning_lookup(const clattn__tbuiltin *t, size_t n, const clattn__tdevice *dev, clattn__trow *row,
                           const char **level);

/* The built-in row for `dev`, with the name of the level that matched ("name", "arch",
 * "vendor", "type" or "default"). */
void clattn__tuning_builtin(const clattn__tdevice *dev, clattn__tpath path, clattn__trow *row,
                            const char **level);
/* Replace the form-specific values of row with form's own generic values (the row of a
 * form other than the one tuned for the device). */
void clattn__tuning_apply_form(clattn__tpath path, int form, clattn__trow *row);

/* ---- Legality (legal.c) -------------------------------------------------------- */
/* Is row legal for path on dev for heads up to `head` (local memory, work-group size,
 * the divisibility the kernels need)? If not, why says so. The one place that decides. */
bool clattn__tuning_legal(const clattn__tdevice *dev, clattn__tpath path, const clattn__trow *row,
                          int head, char *why, size_t whylen);

/* Local memory of the GPU forms in bytes (cl/flash_gpu.cl, cl/flash_gpu_mm.cl, cl/decode.cl). */
uint64_t clattn__fused_gpu_local_bytes(int64_t D, int64_t Dv, int block_m, int block_n);
uint64_t clattn__fused_gpu_mm_local_bytes(int64_t D, int64_t Dv, int block_m, int block_n, int tc);
uint64_t clattn__decode_gpu_local_bytes(int64_t D, int64_t Dv, int rows, int ktile, int wg);
uint64_t clattn__kv_gpu_local_bytes(int64_t D, int64_t Dv, int rows, int ktile);

/* Testing: force a form of a path (-1 = the tuned one) for every context of the process;
 * a forced form never falls back to another one (params.c). */
void clattn__tuning_force_form(clattn__tpath path, int form);
int clattn__tuning_forced_form(clattn__tpath path);

/* ---- Per context (tuning.c) ----------------------------------------------------- */
/* A record of a tuning file that applies to the context's device. */
typedef struct clattn__trecord {
    clattn__tpath path;
    clattn__tclass cls;   /* a field of -2 matches any value */
    clattn__trow row;     /* values given; the others are taken from the built-in row */
    uint32_t given;       /* bit i: the i-th parameter of clattn__tparams is given */
    char source[160];     /* "file PATH, record N" */
} clattn__trecord;

typedef struct clattn__tuning {
    clattn__tdevice dev;
    clattn__trecord *records;
    size_t nrecords;
    bool have_candidate[CLATTN__TP_COUNT]; /* clattn tune: a row being tried */
    clattn__trow candidate[CLATTN__TP_COUNT];
    char failed_forms[16][160]; /* forms that failed to build, by path, form and class */
    int nfailed_forms;
} clattn__tuning;

/* Set up ctx->tuning: the device key and the records of the tuning files named by the
 * context's environment (CLATTN_TUNING_FILE, then clattn.tuning.json in the cache
 * folder). A file that cannot be used is logged and skipped; this never fails the context. */
clattn_status clattn__tuning_init(clattn_context *ctx);
void clattn__tuning_free(clattn_context *ctx);

/* The class of problem p for path on ctx. kv_format: -1 for dense tensors. */
void clattn__tclass_of(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                       int kv_format, clattn__tclass *cls);
/* The same from the class's ingredients (clattn tune). */
void clattn__tclass_make(const clattn_context *ctx, clattn__tpath path, int dtype, int64_t D, int64_t Dv,
                         int64_t Lq, bool causal, int64_t group, int kv_format, clattn__tclass *cls);
/* A row's or record's device name matches the whole device name, case-insensitively, or
 * its head before " (" (Mesa's "llvmpipe (LLVM 15.0.6, 256 bits)" is "llvmpipe"). */
bool clattn__tuning_name_matches(const char *row_name, const char *dev_name);

/* The row in force for path and class on ctx: built-in, overridden by the best matching
 * record, then by a forced form; src (may be NULL) gets where it came from. */
void clattn__tuning_row(const clattn_context *ctx, clattn__tpath path, const clattn__tclass *cls,
                        clattn__trow *row, clattn__tsource *src);
/* The same for problem p (its class computed here). */
void clattn__tuning_row_for(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                            int kv_format, clattn__trow *row, clattn__tsource *src);

/* clattn tune: try `row` for path on ctx (NULL = back to the rows in force). */
void clattn__tuning_set_candidate(clattn_context *ctx, clattn__tpath path, const clattn__trow *row);

/* The form a call uses: the row's, unless it failed to build for this problem class on
 * ctx (then the next form of the path); a forced form is used as is. */
int clattn__tuning_form(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                        const clattn__trow *row);
/* Remember that `form` of path failed to build on ctx for p's class (so later calls take
 * the next form); false when there is no next form to fall back to, or the form is forced. */
bool clattn__tuning_form_failed(clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                                int form);

/* ---- Tuning files (tuning_file.c) ---------------------------------------------- */
/* Parse a tuning file's text; keep the records that apply to dev and are legal there.
 * Every record refused, and the file itself when malformed, is reported through
 * report(arg, message) once. Returns false when the whole file was refused. The
 * records array (malloc'ed) is appended to. Never reads past len. */
typedef void (*clattn__treport)(void *arg, const char *msg);
bool clattn__tuning_parse(const char *text, size_t len, const char *name, const clattn__tdevice *dev,
                          clattn__trecord **records, size_t *nrecords, clattn__treport report,
                          void *arg);
/* Files bigger than this are refused unread (a tuning file has a few records per class). */
#define CLATTN__TUNING_FILE_MAX ((size_t)1 << 20)
/* Call each(arg, text, n) with the source text of every record of a tuning file (to keep
 * other devices' records when clattn tune rewrites it); false when it is not JSON. */
bool clattn__tuning_record_spans(const char *text, size_t len,
                                 void (*each)(void *arg, const char *rec, size_t n), void *arg);
/* One record as a line of JSON (no newline), for clattn tune. */
bool clattn__tuning_format_record(const clattn__tdevice *dev, clattn__tpath path,
                                  const clattn__tclass *cls, const clattn__trow *row, double ms,
                                  double default_ms, char *buf, size_t cap);

#endif /* CLATTN_TUNING_H */
