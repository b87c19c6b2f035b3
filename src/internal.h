/* Internal declarations shared by clattn's source files: the validated problem, the
 * context's layout, error macros, host half-float conversion and kernel program access.
 * Nothing here is part of the public ABI. */
#ifndef CLATTN_INTERNAL_H
#define CLATTN_INTERNAL_H

#include "clattn.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

/* ---- Errors ---------------------------------------------------------------------- */
/* Record a message on ctx (may be NULL) and return status. Never aborts. */
clattn_status clattn__fail(clattn_context *ctx, clattn_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Same, into a caller's buffer (for code that runs without a context). */
clattn_status clattn__failbuf(char *buf, size_t len, clattn_status status, const char *fmt,
                              ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#define CLATTN_RETURN_IF(ctx, cond, status, ...)                                          \
    do {                                                                                  \
        if (cond) return clattn__fail((ctx), (status), __VA_ARGS__);                      \
    } while (0)

/* Forward an OpenCL error with the call that raised it. */
#define CLATTN_CL_CHECK(ctx, call)                                                        \
    do {                                                                                  \
        cl_int clattn_err_ = (call);                                                      \
        if (clattn_err_ != CL_SUCCESS)                                                    \
            return clattn__fail((ctx), (clattn_status)clattn_err_, "%s failed: %s (%s:%d)", \
                                #call, clattn_status_string(clattn_err_), __FILE__,       \
                                __LINE__);                                                \
    } while (0)

#define CLATTN_FORWARD(call)                                                              \
    do {                                                                                  \
        clattn_status clattn_st_ = (call);                                                \
        if (clattn_st_ != CLATTN_SUCCESS) return clattn_st_;                              \
    } while (0)

void clattn__log(const clattn_context *ctx, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Copy a string into a fixed buffer, truncating (truncation is intended where used). */
static inline void clattn__copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    if (!cap) return;
    while (n + 1 < cap && src[n]) {
        dst[n] = src[n];
        n++;
    }
    dst[n] = '\0';
}

/* ---- Checked sizes --------------------------------------------------------------- */
/* *out = a * b for non-negative a and b; false when either is negative or the product
 * does not fit int64. Zero strides let valid descriptors have extents of any size, so
 * every product of extents, strides and element sizes goes through here (chained for
 * more than two factors) before it becomes a count or an allocation. */
static inline bool clattn__mul_ok(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0) return false;
#if defined(__GNUC__) || defined(__clang__)
    return !__builtin_mul_overflow(a, b, out);
#else
    if (b != 0 && a > INT64_MAX / b) return false;
    *out = a * b;
    return true;
#endif
}

/* ---- Host conversions ------------------------------------------------------------ */
float clattn__half_to_float(uint16_t h);
uint16_t clattn__float_to_half(float f);   /* round to nearest even */
float clattn__bf16_to_float(uint16_t b);
uint16_t clattn__float_to_bf16(float f);   /* round to nearest even, NaN stays NaN */

/* Element (i0, i1, i2, i3) of a host tensor as double (f32/f16/bf16/bool/i32). */
double clattn__host_get(const clattn_tensor *t, int64_t i0, int64_t i1, int64_t i2,
                        int64_t i3);

/* ---- The validated problem ------------------------------------------------------- */
typedef struct clattn__problem {
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
    int64_t group;          /* Hq / Hkv */
    float scale;            /* resolved (never NaN) */
    float softcap;          /* 0 = off */
    clattn_causal causal;
    int64_t win_left, win_right; /* -1 = unbounded */
    const clattn_tensor *q, *k, *v;
    clattn_tensor *o;       /* NULL for the reference */
    const clattn_tensor *mask, *kv_lens, *alibi;
    clattn_tensor *lse;
    clattn_path path;       /* requested path (options, before CLATTN_PATH) */
} clattn__problem;

/* A full-size copy of the caller's options (NULL = defaults), whatever struct_size says
 * within the accepted range; an out-of-range size is refused with a message in err. */
clattn_status clattn__options_read(const clattn_options *in, clattn_options *out, char *err,
                                   size_t errlen);

/* Validate every descriptor and option; fill p. o may be NULL (reference). On error the
 * message names the argument and the status says what kind of error. */
clattn_status clattn__problem_init(clattn__problem *p, const clattn_tensor *q,
                                   const clattn_tensor *k, const clattn_tensor *v,
                                   clattn_tensor *o, const clattn_options *opt, char *err,
                                   size_t errlen);

/* problem_init's checks of one descriptor (buffer, dtype, extents, strides, span) and
 * of an output's strides (no element written twice), for the backward pass's tensors. */
clattn_status clattn__check_tensor(const char *name, const clattn_tensor *t, bool host_only,
                                   char *err, size_t errlen);
clattn_status clattn__check_no_self_overlap(const char *name, const clattn_tensor *t, char *err,
                                            size_t errlen);

/* ---- Shared by the float64 references (reference.c, reference_backward.c) --------- */
/* The keys query row i may see by position (causal, window), up to kv_len: [*jlo, *jhi). */
void clattn__ref_key_range(const clattn__problem *p, int64_t i, int64_t kv_len, int64_t *jlo,
                           int64_t *jhi);
/* SPEC §1 steps 3-5 on a score already scaled and soft-capped: ALiBi (slope of head h),
 * the float mask added, -INFINITY where a bool mask excludes key j. */
double clattn__ref_bias(const clattn__problem *p, double sc, int64_t b, int64_t h, int64_t i,
                        int64_t j, double slope);

/* Bytes from the first to one past the last element a descriptor touches (0 if empty).
 * Returns false on overflow. */
bool clattn__tensor_span(const clattn_tensor *t, size_t *span);
/* Elements of t: 0 when any extent is 0, INT64_MAX when the product does not fit. */
int64_t clattn__tensor_numel(const clattn_tensor *t);

#endif /* CLATTN_INTERNAL_H */
