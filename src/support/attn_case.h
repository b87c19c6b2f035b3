/* Attention problem cases shared by the tests, `clattn check` and `clattn bench`: one
 * struct names every parameter of a call, deterministic data is built from its seed, and
 * a comparison against the float64 CPU reference reports a normalised error per case.
 *
 * Typical use:
 *     attn_case c = attn_case_suite(&n)[i];   (or attn_case_random(seed, &c))
 *     attn_case_data *d;  attn_case_data_create(&c, &d);
 *     attn_case_data_upload(ctx, d);          (optional: device buffers, as bench wants)
 *     attn_case_run(ctx, &c, d, NULL);
 *     attn_case_result r; attn_case_compare(&c, d, &r);  if (!r.ok) print the case and r
 *     attn_case_data_free(d);
 */
#ifndef CLATTN_ATTN_CASE_H
#define CLATTN_ATTN_CASE_H

#include "clattn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { ATTN_MASK_NONE = 0, ATTN_MASK_BOOL = 1, ATTN_MASK_FLOAT = 2 };

/* One attention call. A zeroed struct plus a shape is a valid case: every zero means
 * "off" or "default", so tables can use designated initialisers. */
typedef struct attn_case {
    const char *name;                    /* suite cases: a short name; NULL otherwise */
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;   /* Dv = 0 means Dv = D */
    clattn_dtype dtype;                  /* storage of q, k, v: F32, F16 or BF16 */
    clattn_dtype out_dtype;              /* storage of o: F32, F16 or BF16 */
    int blhd;                            /* 1: q, k, v, o stored [B, L, H, D] */
    int padded;                          /* 0: dense; 1: gaps after every row, head and
                                            batch plus a leading offset; 2: as 1 and also a
                                            gap between elements (stride 2 along D) */
    clattn_causal causal;
    int window;                          /* 1: pass (win_left, win_right); 0: no window */
    int64_t win_left, win_right;         /* -1 = unbounded on that side */
    int mask_kind;                       /* ATTN_MASK_NONE, _BOOL or _FLOAT */
    int mask_rank;                       /* 2..4 (0 = 4): the mask covers the last r
                                            dims of [B, Hq, Lq, Lk]; the others are 1 */
    unsigned mask_ones;                  /* bit a set: extent a (0 B, 1 Hq, 2 Lq, 3 Lk)
                                            is 1 and broadcasts */
    int kv_lens;                         /* 1: per-batch key lengths: batch 0 drawn in
                                            1..Lk, batch 1 gets 0, batch 2 Lk, others
                                            drawn in 0..Lk */
    float softcap;                       /* 0 = off */
    int alibi;                           /* 1: slopes 2^(-8(h+1)/Hq) */
    float scale;                         /* 0 or NaN = default 1/sqrt(D) */
    int lse;                             /* 1: also compute and check LSE */
    uint64_t seed;                       /* the data, and the random mask, come from it */
    clattn_path path;                    /* the path attn_case_run asks for */
} attn_case;

/* Dv with its default applied. */
int64_t attn_case_dv(const attn_case *c);

/* One line with every parameter, e.g. for a failing test; returns snprintf's value. */
int attn_case_format(const attn_case *c, char *buf, size_t n);

/* The fixed cases that cover every rule of SPEC §1 (used by `clattn check` and tests).
 * The array is static; path is AUTO in every entry. */
const attn_case *attn_case_suite(size_t *n);

/* A random case over every option, shape, dtype and layout, drawn from seed, small
 * enough (B*Hq*Lq*Lk*(D+Dv) <= 4e6) to run well under a second on a CPU device. */
void attn_case_random(uint64_t seed, attn_case *c);

/* Which buffer of a case's data. */
enum {
    ATTN_BUF_Q,
    ATTN_BUF_K,
    ATTN_BUF_V,
    ATTN_BUF_O,
    ATTN_BUF_LSE,
    ATTN_BUF_MASK,
    ATTN_BUF_KV_LENS,
    ATTN_BUF_ALIBI,
    ATTN_BUF_COUNT
};

/* The host data of a case, and optionally device copies of it. Each buffer is one
 * allocation described by a tensor (with the case's layout, padding and offset); the
 * device copy has the same size, so the same offset and strides describe it. */
typedef struct attn_case_data {
    attn_case c;                      /* the case it was built for */
    struct {
        int present;                  /* 0: this input is not used by the case */
        unsigned char *host;
        size_t bytes;                 /* allocation size, offset and padding included */
        clattn_tensor t;              /* host descriptor */
        cl_mem mem;                   /* device copy after attn_case_data_upload, or NULL */
        size_t mem_off;               /* byte offset of the copy in mem (one shared buffer) */
        clattn_tensor dt;             /* device descriptor (valid when mem is set) */
    } buf[ATTN_BUF_COUNT];
    cl_command_queue queue;           /* the queue used by upload, kept for read-back */
} attn_case_data;

/* Build the inputs from c->seed, in the case's dtypes and layout; outputs are filled with
 * 0xff bytes (NaN in every float type) so unwritten elements and clobbered padding show. */
clattn_status attn_case_data_create(const attn_case *c, attn_case_data **out);
void attn_case_data_free(attn_case_data *d); /* NULL is a no-op */

/* Copy every buffer to new cl_mem buffers on ctx (blocking). After this, attn_case_run
 * and attn_case_options use the device buffers and attn_case_compare reads O and LSE back. */
clattn_status attn_case_data_upload(clattn_context *ctx, attn_case_data *d);
/* The same, as an application often lays tensors out: all of them in one cl_mem, each at
 * a 256-byte-aligned byte offset (none at 0). */
clattn_status attn_case_data_upload_packed(clattn_context *ctx, attn_case_data *d);

/* Fill O and LSE (padding included) with the 0xff sentinel again, on the host and, when
 * uploaded, on the device (blocking): call before running a second path on one data. */
clattn_status attn_case_reset_outputs(attn_case_data *d);

/* The tensors of d as clattn_attention takes them: device ones once uploaded. */
void attn_case_tensors(attn_case_data *d, clattn_tensor *q, clattn_tensor *k,
                       clattn_tensor *v, clattn_tensor *o);

/* Options for case c whose mask, kv_lens, alibi and lse point into d (device tensors
 * once uploaded). The pointers stay valid while d lives; path is c->path. */
void attn_case_options(const attn_case *c, attn_case_data *d, clattn_options *opt);

/* Run clattn_attention on ctx for case c with data d and path c->path. event is passed
 * through (NULL is fine). */
clattn_status attn_case_run(clattn_context *ctx, const attn_case *c, attn_case_data *d,
                            cl_event *event);

/* What attn_case_compare found. err values are normalised: <= 1 is within tolerance. */
typedef struct attn_case_result {
    int ok;                       /* every check below passed */
    double atol, rtol;            /* O tolerance used (from c->out_dtype) */
    double max_err;               /* max over O of |o - ref| / (atol + rtol*|ref|) */
    int64_t worst[4];             /* (b, h, i, d) of max_err */
    double worst_got, worst_ref;
    int lse_checked;              /* c->lse was set */
    double lse_max_err;           /* max of |lse - ref| / (1e-3 + 1e-4*|ref|); inf when
                                     only one of the two is -inf */
    int64_t lse_worst[3];         /* (b, h, i) of lse_max_err */
    double lse_worst_got, lse_worst_ref;
    int64_t nan_count;            /* NaN in O or LSE (unwritten elements count here) */
    int64_t masked_rows;          /* rows the reference found fully masked */
    int64_t masked_nonzero;       /* elements of those rows that are not exactly 0 */
    int64_t padding_clobbered;    /* bytes of O or LSE outside their elements that changed */
    char msg[256];                /* the first failure in words ("" when ok) */
} attn_case_result;

/* Compare d's O (and LSE) with the float64 reference on the same stored inputs.
 * The return value is about the comparison itself (read-back, memory); r->ok is the
 * verdict. Tolerances by output dtype: f32 2e-4 + 2e-3|ref| (SPEC §1); f16
 * 3e-3 + 3e-3|ref| (SPEC §1); bf16 3e-3 + 1e-2|ref| (8 bits of mantissa). Inputs are the
 * already rounded stored values, so only f32 arithmetic and output rounding count. */
clattn_status attn_case_compare(const attn_case *c, attn_case_data *d, attn_case_result *r);

/* One line describing r (max errors, worst index, counts, msg). */
int attn_case_result_format(const attn_case_result *r, char *buf, size_t n);

/* FLOPs of the case as SPEC §2 counts them: 2*(D+Dv) per (query, key) pair left by
 * causal and window, and by kv_lens when d is given (d may be NULL), summed over B*Hq.
 * Masks are not counted (their exclusions are data, not shape). */
double attn_case_flops(const attn_case *c, const attn_case_data *d);

/* "B,Hq,Hkv,Lq,Lk,D[,Dv]" (positive integers up to 2^24; Dv defaults to D) into c's shape,
 * as `clattn bench --shape` and `clattn tune --shape` take it. Other fields untouched;
 * false on any other text. */
bool attn_case_parse_shape(const char *text, attn_case *c);

#endif /* CLATTN_ATTN_CASE_H */
