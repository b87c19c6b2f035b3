/* What every internal source file uses: error recording and its macros, logging, checked
 * size arithmetic and host half-float conversions. Nothing here is part of the public ABI. */
#ifndef CLATTN_CORE_COMMON_H
#define CLATTN_CORE_COMMON_H

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

#endif /* CLATTN_CORE_COMMON_H */
