/* Small value types of the public API: version, dtypes, tensor descriptor constructors,
 * attention options, and the names of paths and KV cache formats. */
#include "core/common.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

unsigned clattn_version_number(void) { return CLATTN_VERSION_NUMBER; }

const char *clattn_version_string(void)
{
#define CLATTN_STR_(x) #x
#define CLATTN_STR(x) CLATTN_STR_(x)
    return CLATTN_STR(CLATTN_VERSION_MAJOR) "." CLATTN_STR(CLATTN_VERSION_MINOR) "." CLATTN_STR(
        CLATTN_VERSION_PATCH);
}

size_t clattn_dtype_size(clattn_dtype dtype)
{
    switch (dtype) {
    case CLATTN_F32: return 4;
    case CLATTN_F16: return 2;
    case CLATTN_BF16: return 2;
    case CLATTN_BOOL: return 1;
    case CLATTN_I32: return 4;
    }
    return 0;
}

const char *clattn_dtype_name(clattn_dtype dtype)
{
    switch (dtype) {
    case CLATTN_F32: return "f32";
    case CLATTN_F16: return "f16";
    case CLATTN_BF16: return "bf16";
    case CLATTN_BOOL: return "bool";
    case CLATTN_I32: return "i32";
    }
    return "unknown";
}

/* Byte strides of t packed in memory order `inner_first` (dimension indices, innermost
 * first). Extents whose product does not fit int64 (or negative ones) get strides of -1,
 * which every call refuses, instead of strides that wrapped around. */
static void packed_strides(clattn_tensor *t, const int inner_first[4])
{
    int64_t stride = (int64_t)clattn_dtype_size(t->dtype);
    for (int i = 0; i < 4; i++) {
        const int d = inner_first[i];
        t->nb[d] = stride;
        if (i < 3 && !clattn__mul_ok(stride, t->ne[d], &stride)) {
            for (int j = 0; j < 4; j++) t->nb[j] = -1;
            return;
        }
    }
}

static clattn_tensor dense(const void *host, cl_mem buffer, size_t offset, clattn_dtype dtype,
                           int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    clattn_tensor t;
    memset(&t, 0, sizeof t);
    t.host = host;
    t.buffer = buffer;
    t.offset = offset;
    t.dtype = dtype;
    t.ne[0] = d0;
    t.ne[1] = d1;
    t.ne[2] = d2;
    t.ne[3] = d3;
    static const int bhld[4] = {3, 2, 1, 0};
    packed_strides(&t, bhld);
    return t;
}

clattn_tensor clattn_tensor_host(const void *host, clattn_dtype dtype, int64_t d0, int64_t d1,
                                 int64_t d2, int64_t d3)
{
    return dense(host, NULL, 0, dtype, d0, d1, d2, d3);
}

clattn_tensor clattn_tensor_cl(cl_mem buffer, size_t offset, clattn_dtype dtype, int64_t d0,
                               int64_t d1, int64_t d2, int64_t d3)
{
    return dense(NULL, buffer, offset, dtype, d0, d1, d2, d3);
}

clattn_tensor clattn_tensor_blhd(clattn_tensor t)
{
    /* memory order [B, L, H, D]: D innermost, then H, then L */
    static const int blhd[4] = {3, 1, 2, 0};
    packed_strides(&t, blhd);
    return t;
}

/* Only the caller's struct_size bytes are written: the caller may have been built
 * against an older, smaller clattn_options. A size out of range is still recorded, so
 * the call that receives the struct refuses it with a message (this function cannot). */
void clattn_options_init_sized(clattn_options *opt, size_t struct_size)
{
    if (!opt) return;
    clattn_options d;
    memset(&d, 0, sizeof d);
    d.scale = NAN;
    d.softcap = 0.0f;
    d.causal = CLATTN_CAUSAL_NONE;
    d.window_left = -1;
    d.window_right = -1;
    d.path = CLATTN_PATH_AUTO;
    if (struct_size >= sizeof d.struct_size) {
        memcpy(opt, &d, struct_size < sizeof d ? struct_size : sizeof d);
        opt->struct_size = struct_size;
    }
}

/* ---- Names of enums: value i is names[i] ---------------------------------------- */
static const char *name_of(const char *const *names, int n, int i, const char *unknown)
{
    return i >= 0 && i < n ? names[i] : unknown;
}

/* The value named `name` (ASCII case ignored where nocase), or -1; -1 for NULL. */
static int value_of(const char *const *names, int n, const char *name, bool nocase)
{
    if (!name) return -1;
    for (int i = 0; i < n; i++)
        if ((nocase ? strcasecmp(name, names[i]) : strcmp(name, names[i])) == 0) return i;
    return -1;
}

static const char *const path_names[CLATTN_PATH_COUNT_] = {"auto", "fused", "decode",
                                                            "clblast", "unfused"};

const char *clattn_path_name(clattn_path path)
{
    return name_of(path_names, CLATTN_PATH_COUNT_, (int)path, "unknown");
}

clattn_status clattn_path_from_name(const char *name, clattn_path *path)
{
    const int i = value_of(path_names, CLATTN_PATH_COUNT_, name, true);
    if (i < 0 || !path) return CLATTN_ERROR_INVALID_ARGUMENT;
    *path = (clattn_path)i;
    return CLATTN_SUCCESS;
}

/* The KV cache's formats (kv/format.c has their layouts): named here with the other
 * enums, so the tuning files can name a format without reaching up into kv/. */
static const char *const kv_format_names[CLATTN_KV_FORMAT_COUNT_] = {"f32", "f16", "int8", "int4",
                                                                     "tq4", "tq3", "tq2"};

const char *clattn_kv_format_name(clattn_kv_format format)
{
    return name_of(kv_format_names, CLATTN_KV_FORMAT_COUNT_, (int)format, NULL);
}

clattn_status clattn_kv_format_from_name(const char *name, clattn_kv_format *format)
{
    const int i = value_of(kv_format_names, CLATTN_KV_FORMAT_COUNT_, name, false);
    if (i < 0 || !format) return CLATTN_ERROR_INVALID_ARGUMENT;
    *format = (clattn_kv_format)i;
    return CLATTN_SUCCESS;
}

/* The caller's struct may be older (smaller) than ours: copy only the bytes it has and
 * keep our defaults for the rest. Fields are only appended (clattn.h's policy), so the
 * first struct_size bytes of both layouts mean the same. A size outside the known range
 * is almost always a struct that clattn_options_init never saw, so it is refused. */
clattn_status clattn__options_read(const clattn_options *in, clattn_options *out, char *err,
                                   size_t errlen)
{
    clattn_options_init_sized(out, sizeof *out);
    if (!in) return CLATTN_SUCCESS;
    const size_t size = in->struct_size;
    if (size < CLATTN_OPTIONS_SIZE_0_2 || size > sizeof *out) {
        snprintf(err, errlen,
                 "options.struct_size is %zu: expected %zu..%zu (call clattn_options_init "
                 "before setting fields; a larger size is a caller built against a newer "
                 "clattn)",
                 size, (size_t)CLATTN_OPTIONS_SIZE_0_2, sizeof *out);
        return CLATTN_ERROR_INVALID_ARGUMENT;
    }
    memcpy(out, in, size);
    out->struct_size = sizeof *out;
    if (out->num_wait_events > 0 && out->wait_events == NULL) {
        snprintf(err, errlen, "options.num_wait_events is %u but wait_events is NULL",
                 (unsigned)out->num_wait_events);
        return CLATTN_ERROR_INVALID_ARGUMENT;
    }
    return CLATTN_SUCCESS;
}
