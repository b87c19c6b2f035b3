/* The .npy pieces the reader and the writer share (see npy.h for the rules): the magic
 * bytes, error messages, byte order, and the names of dtypes and shapes. The header dict
 * parser is in npy_header.c, reading in npy_read.c, writing in npy_write.c. */
#include "support/npy_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const unsigned char npy__magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

void npy__set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

bool npy__host_is_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

void npy__swap_bytes(void *data, size_t count, size_t es)
{
    unsigned char *p = data;
    if (es == 1) return;
    for (size_t i = 0; i < count; i++, p += es)
        for (size_t a = 0, b = es - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

const char *npy_descr(clattn_dtype dtype)
{
    switch (dtype) {
    case CLATTN_F32: return "<f4";
    case CLATTN_F16: return "<f2";
    case CLATTN_BOOL: return "|b1";
    case CLATTN_I32: return "<i4";
    case CLATTN_BF16: return NULL; /* numpy has no bfloat16 */
    }
    return NULL;
}

const char *npy_dtype_label(clattn_dtype dtype)
{
    switch (dtype) {
    case CLATTN_F32: return "float32";
    case CLATTN_F16: return "float16";
    case CLATTN_BOOL: return "bool";
    case CLATTN_I32: return "int32";
    case CLATTN_BF16: return "bfloat16";
    }
    return "unknown";
}

const char *npy_shape_string(int rank, const int64_t *shape, char *buf, size_t len)
{
    if (!buf || len == 0) return buf;
    size_t used = 0;
    buf[0] = '\0';
#define APPEND(...)                                                                       \
    do {                                                                                  \
        if (used < len) {                                                                 \
            int n_ = snprintf(buf + used, len - used, __VA_ARGS__);                        \
            if (n_ > 0) used += (size_t)n_;                                               \
        }                                                                                 \
    } while (0)
    APPEND("(");
    for (int i = 0; i < rank; i++) APPEND(i ? ", %lld" : "%lld", (long long)shape[i]);
    APPEND(rank == 1 ? ",)" : ")");
#undef APPEND
    return buf;
}

