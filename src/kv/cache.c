/* The KV cache object: device buffers in the formats of kv/format.h, appends that
 * quantize on the device (cl/kv_quant.cl), and attention that reads the stored formats
 * directly (cl/kv_attn.cl; host side in attention.c). The host keeps the authoritative
 * lengths, so capacity is checked before anything is written; the device copy of the
 * lengths is a new small buffer per append, so nothing waits for the queue. */
#include "kv/cache.h"
#include "kv/attention.h"
#include "kv/format.h"
#include "core/program.h"
#include "core/kernel_args.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct clattn_kv_cache {
    clattn_context *ctx;
    int64_t B, Hkv, cap, D, Dv;
    clattn_kv_format kf, vf;
    cl_mem k, v;         /* codes and scales: [B, Hkv] slabs of k_slab / v_slab bytes */
    cl_mem ktail;        /* INT4 keys: the unfinished group's keys, [B, Hkv, 32, D] halves */
    cl_mem lens;         /* int32 [B], the device copy of len */
    cl_mem krot, vrot;   /* TQ rotation tables (format.h), or NULL */
    cl_mem ktab, vtab;   /* TQ codebook + thresholds (32 floats), or NULL */
    size_t k_row, v_row; /* keys: bytes per row (f32, f16), tile of 16 (int8, tq) or
                            group of 32 (int4) tokens; values: per tile of 16 tokens */
    size_t k_slab, v_slab;
    int32_t *len;        /* host lengths: the authority for capacity checks */
    uint64_t bytes;
};

static bool is_tq(clattn_kv_format f) { return clattn__kv_traits_of(f)->tq_bits != 0; }
static bool keys_grouped(clattn_kv_format f) { return f == CLATTN_KV_INT4; }

/* ---- Create, free, reset, queries ----------------------------------------------- */

clattn_status clattn__kv_buffer(clattn_context *ctx, size_t bytes, const void *host, cl_mem *mem,
                               uint64_t *total)
{
    CLATTN_FORWARD(clattn__buffer_create_copy(ctx, bytes, host, mem));
    *total += bytes ? bytes : 16;
    if (!host) {
        /* zeroed, so no kernel ever reads bytes nobody wrote (INT4 key groups are read
         * whole, including the tokens not yet appended) */
        const cl_uchar zero = 0;
        CLATTN_FORWARD(clattn__enqueue_fill(ctx, *mem, &zero, 1, 0, bytes ? bytes : 16));
    }
    return CLATTN_SUCCESS;
}

clattn_status clattn__kv_create_begin(clattn_context *ctx, const char *what, clattn_kv_format kf,
                                     clattn_kv_format vf)
{
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !clattn__kv_traits_of(kf) || !clattn__kv_traits_of(vf), CLATTN_ERROR_INVALID_ARGUMENT,
                     "%s: format (%d, %d) is not a clattn_kv_format", what, (int)kf, (int)vf);
    return CLATTN_SUCCESS;
}

clattn_status clattn__kv_check_dims(clattn_context *ctx, const char *what, int64_t D, int64_t Dv)
{
    CLATTN_RETURN_IF(ctx, D < 1 || D > 256 || Dv < 1 || Dv > 256, CLATTN_ERROR_INVALID_SHAPE,
                     "%s: D = %lld and Dv = %lld must be within 1..256", what, (long long)D, (long long)Dv);
    return CLATTN_SUCCESS;
}

clattn_status clattn__kv_store_buffers(clattn_context *ctx, const char *what, int64_t kbytes, int64_t vbytes,
                                      clattn_kv_format kf, int D, clattn_kv_format vf, int Dv, cl_mem *k,
                                      cl_mem *v, cl_mem *krot, cl_mem *ktab, cl_mem *vrot, cl_mem *vtab,
                                      uint64_t *total)
{
    CLATTN_RETURN_IF(ctx, (uint64_t)kbytes > clattn__alloc_cap(ctx) || (uint64_t)vbytes > clattn__alloc_cap(ctx),
                     CLATTN_ERROR_OUT_OF_MEMORY,
                     "%s: %lld bytes of keys or %lld of values exceed the device's largest allocation (%llu "
                     "bytes)",
                     what, (long long)kbytes, (long long)vbytes, (unsigned long long)clattn__alloc_cap(ctx));
    /* 64 bytes of slack: a kernel reads a tq3 word as 8 bytes, 2 past its end */
    CLATTN_FORWARD(clattn__kv_buffer(ctx, (size_t)kbytes + 64u, NULL, k, total));
    CLATTN_FORWARD(clattn__kv_buffer(ctx, (size_t)vbytes + 64u, NULL, v, total));
    CLATTN_FORWARD(clattn__kv_tq_buffers(ctx, kf, D, krot, ktab, total));
    return clattn__kv_tq_buffers(ctx, vf, Dv, vrot, vtab, total);
}

clattn_status clattn__kv_tq_buffers(clattn_context *ctx, clattn_kv_format f, int n, cl_mem *rot,
                                    cl_mem *tab, uint64_t *total)
{
    if (!is_tq(f)) return CLATTN_SUCCESS;
    clattn__kv_rot r;
    clattn__kv_rot_init(&r, n);
    int32_t table[4 * CLATTN_KV_MAX_DIM];
    clattn__kv_rot_table(&r, table);
    float cb[32];
    clattn__kv_tq_table(clattn__kv_traits_of(f)->tq_bits, cb);
    CLATTN_FORWARD(clattn__kv_buffer(ctx, clattn__kv_rot_table_len(&r) * sizeof(int32_t), table, rot, total));
    return clattn__kv_buffer(ctx, sizeof cb, cb, tab, total);
}

clattn_status clattn_kv_cache_create(clattn_context *ctx, int64_t B, int64_t Hkv, int64_t capacity,
                                     int64_t D, int64_t Dv, clattn_kv_format k_format,
                                     clattn_kv_format v_format, clattn_kv_cache **cache)
{
    if (!ctx || !cache) return CLATTN_ERROR_INVALID_ARGUMENT;
    *cache = NULL;
    CLATTN_FORWARD(clattn__kv_create_begin(ctx, "kv cache", k_format, v_format));
    CLATTN_RETURN_IF(ctx, B < 1 || Hkv < 1 || capacity < 1, CLATTN_ERROR_INVALID_SHAPE,
                     "kv cache: B = %lld, Hkv = %lld and capacity = %lld must all be >= 1",
                     (long long)B, (long long)Hkv, (long long)capacity);
    CLATTN_FORWARD(clattn__kv_check_dims(ctx, "kv cache", D, Dv));
    CLATTN_RETURN_IF(ctx, B > INT32_MAX || capacity > INT32_MAX, CLATTN_ERROR_INVALID_SHAPE,
                     "kv cache: B and capacity must fit int32");

    clattn_kv_cache *c = calloc(1, sizeof *c);
    CLATTN_RETURN_IF(ctx, !c, CLATTN_ERROR_OUT_OF_MEMORY, "kv cache: out of host memory");
    *c = (clattn_kv_cache){.ctx = ctx, .B = B, .Hkv = Hkv, .cap = capacity, .D = D, .Dv = Dv, .kf = k_format,
                           .vf = v_format};
    c->len = calloc((size_t)B, sizeof(int32_t));
    if (keys_grouped(k_format)) {
        c->k_row = clattn__kv_int4_group_bytes((int)D);
        c->k_slab = c->k_row * (size_t)((capacity + 31) / 32);
    } else if (clattn__kv_keys_tiled(k_format)) {
        /* whole pairs of tiles: attention reads keys 32 at a time */
        c->k_row = clattn__kv_tile_bytes(k_format, (int)D);
        c->k_slab = c->k_row * 2u * (size_t)((capacity + 31) / 32);
    } else {
        c->k_row = clattn__kv_row_bytes(k_format, (int)D);
        c->k_slab = c->k_row * (size_t)capacity;
    }
    c->v_row = clattn__kv_vtile_bytes(v_format, (int)Dv); /* value tiles of 16 tokens, in pairs */
    c->v_slab = c->v_row * 2u * (size_t)((capacity + 31) / 32);
    /* Hkv has no bound of its own: B * Hkv and the sizes made from it are checked so they
     * never wrap into small buffers. */
    int64_t heads = 0, kbytes = 0, vbytes = 0, tbytes = 0;
    const bool sizes_ok = clattn__mul_ok(B, Hkv, &heads) &&
                          clattn__mul_ok((int64_t)c->k_slab, heads, &kbytes) && kbytes <= INT64_MAX - 64 &&
                          clattn__mul_ok((int64_t)c->v_slab, heads, &vbytes) && vbytes <= INT64_MAX - 64 &&
                          clattn__mul_ok(heads, 32 * D * 2, &tbytes);
    clattn_status st = CLATTN_SUCCESS;
    if (!c->len) {
        st = clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "kv cache: out of host memory");
    } else if (!sizes_ok) {
        st = clattn__fail(ctx, CLATTN_ERROR_INVALID_SHAPE,
                          "kv cache: B = %lld x Hkv = %lld heads of %zu key and %zu value bytes "
                          "overflow 64-bit sizes",
                          (long long)B, (long long)Hkv, c->k_slab, c->v_slab);
    } else {
        st = clattn__kv_store_buffers(ctx, "kv cache", kbytes, vbytes, k_format, (int)D, v_format, (int)Dv, &c->k,
                                      &c->v, &c->krot, &c->ktab, &c->vrot, &c->vtab, &c->bytes);
    }
    if (st == CLATTN_SUCCESS && keys_grouped(k_format))
        st = clattn__kv_buffer(c->ctx, (size_t)tbytes, NULL, &c->ktail, &c->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_buffer(c->ctx, (size_t)B * sizeof(int32_t), c->len, &c->lens, &c->bytes);
    if (st == CLATTN_SUCCESS)
        *cache = c;
    else
        clattn_kv_cache_free(c);
    return st;
}

void clattn_kv_cache_free(clattn_kv_cache *c)
{
    if (!c) return;
    cl_mem all[] = {c->k, c->v, c->ktail, c->lens, c->krot, c->vrot, c->ktab, c->vtab};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clattn__buffer_release(c->ctx, all[i]);
    free(c->len);
    free(c);
}

/* Replace the device lengths by the host's (a new buffer, so queued kernels keep theirs). */
static clattn_status upload_lengths(clattn_kv_cache *c, const int32_t *len)
{
    cl_mem m;
    CLATTN_FORWARD(clattn__buffer_create_copy(c->ctx, (size_t)c->B * sizeof(int32_t), len, &m));
    clattn__buffer_release(c->ctx, c->lens);
    c->lens = m;
    return CLATTN_SUCCESS;
}

clattn_status clattn_kv_cache_reset(clattn_kv_cache *c)
{
    if (!c) return CLATTN_ERROR_INVALID_ARGUMENT;
    int32_t *zero = calloc((size_t)c->B, sizeof(int32_t));
    CLATTN_RETURN_IF(c->ctx, !zero, CLATTN_ERROR_OUT_OF_MEMORY, "kv cache: out of host memory");
    clattn_status st = upload_lengths(c, zero);
    if (st == CLATTN_SUCCESS) memset(c->len, 0, (size_t)c->B * sizeof(int32_t));
    free(zero);
    return st;
}

uint64_t clattn_kv_cache_bytes(const clattn_kv_cache *c) { return c ? c->bytes : 0; }

double clattn_kv_cache_bits_per_element(const clattn_kv_cache *c)
{
    if (!c) return 0.0;
    return 8.0 * (double)c->bytes / ((double)c->B * (double)c->Hkv * (double)c->cap * (double)(c->D + c->Dv));
}

clattn_status clattn_kv_cache_lengths(const clattn_kv_cache *c, int32_t *lengths)
{
    if (!c || !lengths) return CLATTN_ERROR_INVALID_ARGUMENT;
    memcpy(lengths, c->len, (size_t)c->B * sizeof(int32_t));
    return CLATTN_SUCCESS;
}

/* ---- Append --------------------------------------------------------------------- */

/* The rules problem.c applies to q/k/v, for an append's input. */
static clattn_status check_input(clattn_context *ctx, const char *name, const clattn_tensor *t, int64_t B,
                                 int64_t H, int64_t n, int64_t dim)
{
    CLATTN_RETURN_IF(ctx, !t, CLATTN_ERROR_INVALID_ARGUMENT, "kv append: %s is NULL", name);
    CLATTN_RETURN_IF(ctx, t->dtype != CLATTN_F32 && t->dtype != CLATTN_F16 && t->dtype != CLATTN_BF16,
                     CLATTN_ERROR_UNSUPPORTED_DTYPE, "kv append: %s: dtype %d is not f32, f16 or bf16",
                     name, (int)t->dtype);
    CLATTN_RETURN_IF(ctx, (t->host == NULL) == (t->buffer == NULL), CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv append: %s: exactly one of host and buffer must be set", name);
    const int64_t es = (int64_t)clattn_dtype_size(t->dtype);
    for (int i = 0; i < 4; i++)
        CLATTN_RETURN_IF(ctx, t->ne[i] < 0 || t->nb[i] < 0 || t->nb[i] % es != 0,
                         CLATTN_ERROR_INVALID_STRIDE,
                         "kv append: %s: extent %lld / stride %lld of dimension %d is negative or "
                         "not a multiple of the element size",
                         name, (long long)t->ne[i], (long long)t->nb[i], i);
    CLATTN_RETURN_IF(ctx, t->offset % (size_t)es != 0, CLATTN_ERROR_INVALID_STRIDE,
                     "kv append: %s: offset %zu is not a multiple of the element size", name, t->offset);
    CLATTN_RETURN_IF(ctx, t->ne[0] != B || t->ne[1] != H || t->ne[2] != n || t->ne[3] != dim,
                     CLATTN_ERROR_INVALID_SHAPE,
                     "kv append: %s: shape [%lld,%lld,%lld,%lld] should be [B,Hkv,n,%s] = "
                     "[%lld,%lld,%lld,%lld]",
                     name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                     (long long)t->ne[3], name[0] == 'k' ? "D" : "Dv", (long long)B, (long long)H,
                     (long long)n, (long long)dim);
    size_t span;
    CLATTN_RETURN_IF(ctx, !clattn__tensor_span(t, &span) || span > SIZE_MAX - t->offset,
                     CLATTN_ERROR_INVALID_STRIDE, "kv append: %s: extents and strides overflow", name);
    if (t->buffer) {
        size_t size = 0;
        clGetMemObjectInfo(t->buffer, CL_MEM_SIZE, sizeof size, &size, NULL);
        CLATTN_RETURN_IF(ctx, size && t->offset + span > size, CLATTN_ERROR_INVALID_ARGUMENT,
                         "kv append: %s: offset %zu + span %zu bytes runs past its %zu-byte buffer",
                         name, t->offset, span, size);
    }
    return CLATTN_SUCCESS;
}

clattn_status clattn__kv_check_inputs(clattn_context *ctx, const char *what, const clattn_tensor *k_new,
                                      const clattn_tensor *v_new, int64_t B, int64_t H, int64_t D, int64_t Dv)
{
    CLATTN_RETURN_IF(ctx, !k_new || !v_new, CLATTN_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", what,
                     !k_new ? "k_new" : "v_new");
    const int64_t n = k_new->ne[2];
    CLATTN_FORWARD(check_input(ctx, "k_new", k_new, B, H, n, D));
    return check_input(ctx, "v_new", v_new, B, H, n, Dv);
}

/* The append kernel for keys or values of dtype dt. */
static clattn_status append_kernel(clattn_kv_cache *c, clattn_kv_format f, bool keys, clattn_dtype dt,
                                   cl_kernel *k)
{
    const int64_t dim = keys ? c->D : c->Dv;
    char opts[128] = "";
    clattn__opts_add(opts, sizeof opts, "-DKV_APPEND -DDIM=%lld -DFMT=%d -DK_DT=%d -DVTILES=%d", (long long)dim,
                     (int)f, (int)dt, keys ? 0 : 1);
    const bool grouped = keys && keys_grouped(f), tiled = keys && clattn__kv_keys_tiled(f);
    return clattn__kernel_get(c->ctx, "kv_quant.cl", opts,
                              grouped ? "kv_append_int4_keys" : tiled ? "kv_append_tiles" : "kv_append_rows", k);
}

/* Enqueue append kernel k (from append_kernel) for keys or values. */
static clattn_status enqueue_append(clattn_kv_cache *c, cl_kernel k, clattn_kv_format f, bool keys,
                                    const clattn__dev_tensor *x, int64_t n, cl_mem old_lens,
                                    cl_mem new_lens, cl_event *event)
{
    clattn_context *ctx = c->ctx;
    const int64_t dim = keys ? c->D : c->Dv;
    const bool grouped = keys && keys_grouped(f), tiled = keys && clattn__kv_keys_tiled(f);
    cl_uint a = 0;
    const cl_long H = c->Hkv;
    const cl_mem dst = keys ? c->k : c->v, rot = keys ? c->krot : c->vrot, tab = keys ? c->ktab : c->vtab;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, &a, x));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, dst));
    if (grouped) {
        const cl_long ngroups = (c->cap + 31) / 32;
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, c->ktail));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, ngroups));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, H));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, old_lens));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, new_lens));
        const size_t g[3] = {(size_t)dim, (size_t)c->Hkv, (size_t)c->B};
        return clattn__enqueue(ctx, k, 3, g, NULL, event);
    }
    const cl_float sqrt_n = sqrtf((float)dim);
    size_t g[3] = {(size_t)n, (size_t)c->Hkv, (size_t)c->B};
    if (tiled) {
        const cl_long tile_bytes = (cl_long)c->k_row, tiles = (cl_long)(c->k_slab / c->k_row);
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, tile_bytes));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, tiles));
        g[0] = (size_t)(n + 15) / 16 + 1; /* an append of n tokens touches at most this many tiles */
    } else {
        const cl_long slab = (cl_long)(keys ? c->k_slab : c->v_slab);
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, slab));
    }
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, H));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, old_lens));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, new_lens));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, rot));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, tab));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, sqrt_n));
    return clattn__enqueue(ctx, k, 3, g, NULL, event);
}

/* The key bytes an append may write, saved before its key kernel so that a failure to
 * queue the value kernel after it can put them back: the cache is then byte for byte as
 * before the call. Per (b, h) slab the appended tokens lie in one range of units (a
 * token for rows, a tile of 16 for tiled keys, a group of 32 for INT4), the same range
 * for every slab once taken over all batch entries, so one rectangular copy saves it;
 * INT4's tail of unfinished groups is saved whole. */
typedef struct key_backup {
    cl_mem keys, tail;
    size_t origin, width; /* bytes within each slab */
} key_backup;

static clattn_status backup_keys(clattn_kv_cache *c, const int32_t *newlen, key_backup *kb)
{
    clattn_context *ctx = c->ctx;
    int64_t lo = c->cap, hi = 0;
    for (int64_t b = 0; b < c->B; b++) {
        if (newlen[b] == c->len[b]) continue;
        lo = c->len[b] < lo ? c->len[b] : lo;
        hi = newlen[b] > hi ? newlen[b] : hi;
    }
    const int64_t unit = keys_grouped(c->kf) ? 32 : clattn__kv_keys_tiled(c->kf) ? 16 : 1;
    /* one unit more than the tokens need: the tile kernel's last work-item may touch it */
    size_t end = (size_t)((hi + unit - 1) / unit + 1) * c->k_row;
    if (end > c->k_slab) end = c->k_slab;
    kb->origin = (size_t)(lo / unit) * c->k_row;
    kb->width = end - kb->origin;
    const size_t slabs = (size_t)(c->B * c->Hkv);
    CLATTN_FORWARD(clattn__buffer_create(ctx, kb->width * slabs, &kb->keys));
    CLATTN_FORWARD(clattn__enqueue_copy_rect(ctx, c->k, kb->origin, c->k_slab, kb->keys, 0, kb->width,
                                             kb->width, slabs));
    if (c->ktail) {
        const size_t tail = (size_t)(c->B * c->Hkv * 32 * c->D) * 2u;
        CLATTN_FORWARD(clattn__buffer_create(ctx, tail, &kb->tail));
        CLATTN_FORWARD(clattn__enqueue_copy(ctx, c->ktail, 0, kb->tail, 0, tail));
    }
    return CLATTN_SUCCESS;
}

/* Put the saved key bytes back (after a failed append; the error is the append's). */
static void restore_keys(clattn_kv_cache *c, const key_backup *kb)
{
    clattn_context *ctx = c->ctx;
    char why[512];
    clattn__copy_str(why, sizeof why, ctx->last_error);
    const size_t slabs = (size_t)(c->B * c->Hkv);
    clattn_status st = clattn__enqueue_copy_rect(ctx, kb->keys, 0, kb->width, c->k, kb->origin,
                                                 c->k_slab, kb->width, slabs);
    if (st == CLATTN_SUCCESS && kb->tail)
        st = clattn__enqueue_copy(ctx, kb->tail, 0, c->ktail, 0, (size_t)(c->B * c->Hkv * 32 * c->D) * 2u);
    if (st == CLATTN_SUCCESS)
        clattn__copy_str(ctx->last_error, sizeof ctx->last_error, why);
    else /* two failures in a row: the lengths are still the old ones, so no call reads them */
        clattn__fail(ctx, st, "%s; restoring the keys after it failed too: keys past the cache's "
                     "lengths may have changed", why);
}

clattn_status clattn_kv_cache_append(clattn_kv_cache *c, const clattn_tensor *k_new,
                                     const clattn_tensor *v_new, const int32_t *n_per_batch)
{
    return clattn_kv_cache_append_with_event(c, k_new, v_new, n_per_batch, NULL);
}

clattn_status clattn_kv_cache_append_with_event(clattn_kv_cache *c, const clattn_tensor *k_new,
                                                const clattn_tensor *v_new,
                                                const int32_t *n_per_batch, cl_event *event)
{
    if (event) *event = NULL;
    if (!c) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_context *ctx = c->ctx;
    ctx->last_error[0] = '\0';
    CLATTN_FORWARD(clattn__kv_check_inputs(ctx, "kv append", k_new, v_new, c->B, c->Hkv, c->D, c->Dv));
    const int64_t n = k_new->ne[2];

    /* Every check before any write: the cache is untouched on any error below. */
    int32_t *newlen = malloc((size_t)c->B * sizeof(int32_t));
    CLATTN_RETURN_IF(ctx, !newlen, CLATTN_ERROR_OUT_OF_MEMORY, "kv append: out of host memory");
    bool any = false;
    for (int64_t b = 0; b < c->B; b++) {
        const int64_t nb = n_per_batch ? n_per_batch[b] : n;
        if (nb < 0 || nb > n) {
            free(newlen);
            return clattn__fail(ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                                "kv append: n_per_batch[%lld] = %lld is outside 0..n (%lld)",
                                (long long)b, (long long)nb, (long long)n);
        }
        if ((int64_t)c->len[b] + nb > c->cap) {
            free(newlen);
            return clattn__fail(ctx, CLATTN_ERROR_CAPACITY,
                                "kv append: batch entry %lld holds %d positions; %lld more exceed "
                                "the capacity %lld (nothing was appended)",
                                (long long)b, c->len[b], (long long)nb, (long long)c->cap);
        }
        newlen[b] = (int32_t)(c->len[b] + nb);
        any |= nb > 0;
    }
    if (!any) {
        free(newlen);
        /* nothing to write, but the caller may still chain on the event */
        return event ? clattn__enqueue_marker(ctx, event) : CLATTN_SUCCESS;
    }

    clattn__dev_tensor kx, vx;
    memset(&vx, 0, sizeof vx);
    cl_mem new_lens = NULL;
    clattn_status st = clattn__stage_tensor(ctx, "k_new", k_new, false, &kx);
    if (st == CLATTN_SUCCESS) st = clattn__stage_tensor(ctx, "v_new", v_new, false, &vx);
    if (st == CLATTN_SUCCESS)
        st = clattn__buffer_create_copy(ctx, (size_t)c->B * sizeof(int32_t), newlen, &new_lens);
    /* Both kernels before either launch: once the key kernel is queued the keys are
     * written, so nothing that can fail without a launch may come after it. */
    cl_kernel kk = NULL, kv = NULL;
    if (st == CLATTN_SUCCESS) st = append_kernel(c, c->kf, true, k_new->dtype, &kk);
    if (st == CLATTN_SUCCESS) st = append_kernel(c, c->vf, false, v_new->dtype, &kv);
    key_backup kb;
    memset(&kb, 0, sizeof kb);
    if (st == CLATTN_SUCCESS) st = backup_keys(c, newlen, &kb);
    if (st == CLATTN_SUCCESS) st = enqueue_append(c, kk, c->kf, true, &kx, n, c->lens, new_lens, NULL);
    if (st == CLATTN_SUCCESS) {
        /* the value kernel is queued last on the in-order queue: its event is the append's */
        st = enqueue_append(c, kv, c->vf, false, &vx, n, c->lens, new_lens, event);
        if (st != CLATTN_SUCCESS) restore_keys(c, &kb);
    }
    clattn__buffer_release(ctx, kb.keys); /* queued copies keep them alive */
    clattn__buffer_release(ctx, kb.tail);
    if (kx.owned) clattn__buffer_release(ctx, kx.mem); /* queued kernels keep them alive */
    if (vx.owned) clattn__buffer_release(ctx, vx.mem);
    if (st == CLATTN_SUCCESS) {
        clattn__buffer_release(ctx, c->lens);
        c->lens = new_lens;
        memcpy(c->len, newlen, (size_t)c->B * sizeof(int32_t));
    } else {
        clattn__buffer_release(ctx, new_lens);
    }
    free(newlen);
    return st;
}

/* ---- Attention (attention.c) ------------------------------------------------------ */

clattn_status clattn_kv_cache_attention(clattn_context *ctx, clattn_kv_cache *c, const clattn_tensor *q,
                                        clattn_tensor *o, const clattn_options *opt, cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_options o2;
    CLATTN_FORWARD(clattn__kv_start(ctx, "kv attention", "cache", c, c ? c->ctx : NULL, q, o, opt,
                                    "the cache's lengths are used", event, &o2));
    int64_t Lmax = 0;
    for (int64_t b = 0; b < c->B; b++) Lmax = c->len[b] > Lmax ? c->len[b] : Lmax;
    const clattn__kv_src src = {.kf = c->kf, .vf = c->vf, .Hkv = c->Hkv, .D = c->D, .Dv = c->Dv, .k = c->k,
                                .v = c->v, .krot = c->krot, .vrot = c->vrot, .ktab = c->ktab, .vtab = c->vtab,
                                .k_slab = c->k_slab, .k_row = c->k_row, .v_slab = c->v_slab, .v_row = c->v_row,
                                .lens = c->lens};
    return clattn__kv_call(ctx, "kv attention", &src, q, o, &o2, c->B, Lmax, Lmax, event);
}

/* ---- Testing access (cache.h) ------------------------------------------------ */

size_t clattn__kv_cache_slab_bytes(const clattn_kv_cache *c, int which)
{
    if (which == CLATTN__KV_KEYS) return c->k_slab;
    if (which == CLATTN__KV_VALUES) return c->v_slab;
    return c->ktail ? (size_t)(32 * c->D) * 2u : 0;
}

size_t clattn__kv_cache_row_bytes(const clattn_kv_cache *c, int which)
{
    return which == CLATTN__KV_KEYS ? c->k_row : which == CLATTN__KV_VALUES ? c->v_row : (size_t)c->D * 2u;
}

clattn_status clattn__kv_cache_download(clattn_kv_cache *c, int which, void *dst, size_t bytes)
{
    cl_mem m = which == CLATTN__KV_KEYS ? c->k : which == CLATTN__KV_VALUES ? c->v : c->ktail;
    const size_t total = clattn__kv_cache_slab_bytes(c, which) * (size_t)(c->B * c->Hkv);
    CLATTN_RETURN_IF(c->ctx, !m || bytes < total, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv cache download: no such buffer or %zu bytes are too few (%zu)", bytes, total);
    CLATTN_FORWARD(clattn__read(c->ctx, m, 0, total, dst));
    return CLATTN_SUCCESS;
}
