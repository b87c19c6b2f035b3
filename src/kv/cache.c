/* The KV cache object: device buffers in the formats of src/kv_format.h, appends that
 * quantize on the device (cl/kv_quant.cl), and attention that reads the stored formats
 * directly (cl/kv_attn.cl). The host keeps the authoritative lengths, so capacity is
 * checked before anything is written; the device copy of the lengths is a new small
 * buffer per append, so nothing waits for the queue. */
#include "kv/cache.h"
#include "tuning/tuning.h"
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
    cl_mem krot, vrot;   /* TQ rotation tables (kv_format.h), or NULL */
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
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !clattn__kv_traits_of(k_format) || !clattn__kv_traits_of(v_format),
                     CLATTN_ERROR_INVALID_ARGUMENT, "kv cache: format (%d, %d) is not a clattn_kv_format",
                     (int)k_format, (int)v_format);
    CLATTN_RETURN_IF(ctx, B < 1 || Hkv < 1 || capacity < 1, CLATTN_ERROR_INVALID_SHAPE,
                     "kv cache: B = %lld, Hkv = %lld and capacity = %lld must all be >= 1",
                     (long long)B, (long long)Hkv, (long long)capacity);
    CLATTN_RETURN_IF(ctx, D < 1 || D > 256 || Dv < 1 || Dv > 256, CLATTN_ERROR_INVALID_SHAPE,
                     "kv cache: D = %lld and Dv = %lld must be within 1..256", (long long)D,
                     (long long)Dv);
    CLATTN_RETURN_IF(ctx, B > INT32_MAX || capacity > INT32_MAX, CLATTN_ERROR_INVALID_SHAPE,
                     "kv cache: B and capacity must fit int32");

    clattn_kv_cache *c = calloc(1, sizeof *c);
    CLATTN_RETURN_IF(ctx, !c, CLATTN_ERROR_OUT_OF_MEMORY, "kv cache: out of host memory");
    c->ctx = ctx;
    c->B = B;
    c->Hkv = Hkv;
    c->cap = capacity;
    c->D = D;
    c->Dv = Dv;
    c->kf = k_format;
    c->vf = v_format;
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
     * never wrap into small buffers. 64 bytes of slack: a kernel reads a tq3 word as 8
     * bytes, 2 past its end. */
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
    } else if ((uint64_t)kbytes > clattn__alloc_cap(ctx) || (uint64_t)vbytes > clattn__alloc_cap(ctx)) {
        st = clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY,
                          "kv cache: %lld bytes of keys or %lld of values exceed the device's largest "
                          "allocation (%llu bytes)",
                          (long long)kbytes, (long long)vbytes, (unsigned long long)clattn__alloc_cap(ctx));
    }
    if (st == CLATTN_SUCCESS) st = clattn__kv_buffer(c->ctx, (size_t)kbytes + 64u, NULL, &c->k, &c->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_buffer(c->ctx, (size_t)vbytes + 64u, NULL, &c->v, &c->bytes);
    if (st == CLATTN_SUCCESS && keys_grouped(k_format))
        st = clattn__kv_buffer(c->ctx, (size_t)tbytes, NULL, &c->ktail, &c->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_buffer(c->ctx, (size_t)B * sizeof(int32_t), c->len, &c->lens, &c->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_tq_buffers(c->ctx, k_format, (int)D, &c->krot, &c->ktab, &c->bytes);
    if (st == CLATTN_SUCCESS) st = clattn__kv_tq_buffers(c->ctx, v_format, (int)Dv, &c->vrot, &c->vtab, &c->bytes);
    if (st != CLATTN_SUCCESS) {
        clattn_kv_cache_free(c);
        return st;
    }
    *cache = c;
    return CLATTN_SUCCESS;
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
clattn_status clattn__kv_check_input(clattn_context *ctx, const char *name, const clattn_tensor *t,
                                     int64_t B, int64_t H, int64_t n, int64_t dim)
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

/* A tensor as kernels see it; host tensors are copied (whole span) to a new buffer. */
clattn_status clattn__kv_stage_input(clattn_context *ctx, const clattn_tensor *t, clattn__dev_tensor *d)
{
    memset(d, 0, sizeof *d);
    const cl_long es = (cl_long)clattn_dtype_size(t->dtype);
    d->dtype = t->dtype;
    for (int i = 0; i < 4; i++) d->st[i] = t->ne[i] == 1 ? 0 : t->nb[i] / es;
    if (t->buffer) {
        d->mem = t->buffer;
        d->off = (cl_long)(t->offset / (size_t)es);
        return CLATTN_SUCCESS;
    }
    size_t span = 0;
    clattn__tensor_span(t, &span);
    d->owned = true;
    return clattn__buffer_create_copy(ctx, span, (const char *)t->host + t->offset, &d->mem);
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
    CLATTN_RETURN_IF(ctx, !k_new || !v_new, CLATTN_ERROR_INVALID_ARGUMENT, "kv append: %s is NULL",
                     !k_new ? "k_new" : "v_new");
    const int64_t n = k_new->ne[2];
    CLATTN_FORWARD(clattn__kv_check_input(ctx, "k_new", k_new, c->B, c->Hkv, n, c->D));
    CLATTN_FORWARD(clattn__kv_check_input(ctx, "v_new", v_new, c->B, c->Hkv, n, c->Dv));

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
    clattn_status st = clattn__kv_stage_input(ctx, k_new, &kx);
    if (st == CLATTN_SUCCESS) st = clattn__kv_stage_input(ctx, v_new, &vx);
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

/* ---- Attention ------------------------------------------------------------------ */

/* Launch shape: ROWS rows per work-item, key splits for the compute units; the values
 * (rows, split bounds, work-groups per unit, prefetch) are the kv rows of src/tuning.c.
 *
 * Measured with bench/kv_report.py (one clattn bench run: the f16 decode path and every
 * format interleaved, five rounds; a format's time over the f16 path's in the same round,
 * median over rounds; the machine busy with other builds, load 4 to 4.5 on 2 cores):
 * tq2 0.25, tq4 0.34, int4 0.41, tq3 0.47, int8 0.51, f16 1.35. Time went to, in order:
 * horizontal sums and scalar scale conversions per key (fixed by the transposed key tiles
 * and gathered scales: int8 1.34 -> 0.63), accumulators indexed by i & 1 left on the stack
 * (explicit even/odd: tq4 0.51 -> 0.44), shuffle-port pressure of unpacking (broadcast +
 * shift words, permute-based nibble conversion: int4 0.40 -> 0.37), and memory stalls
 * (software prefetch spread over the loops: int8 0.68 -> 0.58). On one thread
 * (POCL_MAX_PTHREAD_COUNT=1) every format and the decode path run near one core's memory
 * bandwidth: tq4 0.29-0.31, int4 0.36-0.37, int8 0.49-0.50 (bytes ratios 0.26, 0.31,
 * 0.53); under CPU contention the decode path, which mostly waits on memory, loses less
 * than the formats, which also compute. */
typedef struct kv_plan {
    int form;     /* 0 = CPU form, 1 = GPU form (KV_GPU) */
    int wg, ktile; /* GPU form: work-group size, keys per tile */
    int rows;
    int prefetch; /* KV_PREFETCH */
    int64_t nblk, nsplit, chunk;
    clattn__tsource src; /* where the tuning row came from */
} kv_plan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static void make_plan(const clattn_context *ctx, const clattn__problem *p, int kf, int64_t Lmax,
                      kv_plan *pl)
{
    clattn__trow tu; /* the tuned values (tuning.c; the measurements are above and there) */
    clattn__tuning_row_for(ctx, CLATTN__TP_KV, p, kf, &tu, &pl->src);
    /* the next form when the row's failed to build on this context (tuning.c) */
    const int form = clattn__tuning_form(ctx, CLATTN__TP_KV, p, &tu);
    if (form != tu.form) clattn__tuning_apply_form(CLATTN__TP_KV, form, &tu);
    pl->form = tu.form;
    pl->wg = tu.wg;
    pl->ktile = tu.ktile;
    const int64_t nrows = p->group * p->Lq;
    pl->nblk = ceil_div(nrows, tu.rows);
    pl->rows = (int)ceil_div(nrows, pl->nblk);
    /* GPU form: tiles halved until the group's local memory fits the device (a row tuned
     * at one head size meets wider heads, e.g. D = 256 on a 32 KiB device) */
    if (pl->form == 1)
        while (pl->ktile > 1 && clattn__kv_gpu_local_bytes(p->D, p->Dv, pl->rows, pl->ktile) > ctx->props.local_mem_bytes)
            pl->ktile /= 2;
    pl->prefetch = tu.prefetch;
    const int64_t min_chunk = tu.min_chunk, max_chunk = tu.max_chunk;
    const int64_t per_cu = tu.wgs_per_cu;
    const int64_t L = Lmax > 0 ? Lmax : 1;
    const int64_t want = (int64_t)(ctx->props.compute_units ? ctx->props.compute_units : 1) * per_cu;
    int64_t nsplit = ceil_div(want, p->B * p->Hkv * (tu.split_blocks ? pl->nblk : 1));
    if (nsplit < ceil_div(L, max_chunk)) nsplit = ceil_div(L, max_chunk);
    if (nsplit > ceil_div(L, min_chunk)) nsplit = ceil_div(L, min_chunk);
    /* the rows are bounded by o's validated size; a product past 64 bits leaves one split,
     * which run_kernels then refuses */
    int64_t per_split_i = 0;
    const uint64_t per_split = clattn__mul_ok(p->B * p->Hq * p->Lq, (ceil_div(p->Dv, 16) * 16 + 2) * 4, &per_split_i)
                                   ? (uint64_t)per_split_i
                                   : UINT64_MAX;
    const uint64_t cap = clattn__scratch_cap(ctx);
    /* compared by division: nsplit * per_split could itself pass 64 bits */
    if ((uint64_t)nsplit > cap / per_split) nsplit = (int64_t)(cap / per_split);
    if (nsplit < 1) nsplit = 1;
    pl->chunk = ceil_div(ceil_div(L, nsplit), 32) * 32;
    pl->nsplit = ceil_div(L, pl->chunk);
}

static void rows_options(const clattn__kv_src *c, const clattn__problem *p, int64_t dim, char *opts,
                         size_t cap)
{
    opts[0] = '\0';
    clattn__opts_add(opts, cap, "-DKV_ROWS -DDIM=%lld -DQ_DT=%d -DO_DT=%d -DROT_Q=%d -DROT_O=%d",
                     (long long)dim, (int)p->q->dtype, (int)p->o->dtype, is_tq(c->kf), is_tq(c->vf));
}

typedef struct kv_scratch {
    cl_mem qd, part_o, part_ml, od;
} kv_scratch;

static clattn_status run_kernels(clattn_context *ctx, const clattn__kv_src *c,
                                 const clattn__dev_problem *dp, int64_t Lmax, kv_scratch *s,
                                 cl_event *event)
{
    const clattn__problem *p = dp->p;
    kv_plan pl;
    char opts[640] = "";
    cl_kernel kp, km;
    for (;;) {
        if (c->paged) {
            /* the plan sees the ragged batch as n_seqs entries of the longest query count */
            clattn__problem pp = *p;
            pp.B = c->n_seqs;
            pp.Lq = c->lq_max;
            make_plan(ctx, &pp, (int)c->kf, Lmax, &pl);
        } else {
            make_plan(ctx, p, (int)c->kf, Lmax, &pl);
        }
        /* partial attention's program first: a GPU form that fails to build gives way to
         * the CPU form (tuning.c remembers it) before any scratch exists. Not the other
         * way round: the CPU form runs on every device, so its failure is reported (a
         * CPU running the GPU form would take ~50x as long, docs/measurements.md). */
        opts[0] = '\0';
        bool ok = clattn__mask_options(dp, opts, sizeof opts) &&
                  clattn__opts_add(opts, sizeof opts, " -DD=%lld -DDV=%lld -DK_FMT=%d -DV_FMT=%d -DROWS=%d -DKV_PREFETCH=%d"
                                   " -DSPLITKV_DENSE_OUT",
                                   (long long)p->D, (long long)p->Dv, (int)c->kf, (int)c->vf, pl.rows,
                                   pl.prefetch);
        if (ok && c->paged)
            ok = clattn__opts_add(opts, sizeof opts, " -DPAGED -DPS=%lld -DPT=%lld", (long long)c->page_size,
                                  (long long)c->page_slots);
        if (ok && pl.form == 1)
            ok = clattn__opts_add(opts, sizeof opts, " -DKV_GPU=1 -DWG=%d -DKTILE=%d", pl.wg, pl.ktile);
        CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "kv attention: build options too long");
        const clattn_status bst = clattn__kernel_get(ctx, "kv_attn.cl", opts, "kv_partial", &kp);
        if (bst == CLATTN_ERROR_BUILD_FAILED && pl.form == 1 && clattn__tuning_form_failed(ctx, CLATTN__TP_KV, p, pl.form))
            continue;
        CLATTN_FORWARD(bst);
        break;
    }
    CLATTN_FORWARD(clattn__kernel_get(ctx, "kv_attn.cl", opts, "splitkv_merge", &km));
    const int64_t rows_all = p->B * p->Hq * p->Lq;
    const int64_t DP = ceil_div(p->D, 16) * 16, DVP = ceil_div(p->Dv, 16) * 16;
    int64_t scratch_i = 0, q_bytes = 0, o_bytes = 0;
    const bool sized = clattn__mul_ok(rows_all, pl.nsplit, &scratch_i) &&
                       clattn__mul_ok(scratch_i, (DVP + 2) * 4, &scratch_i) &&
                       clattn__mul_ok(rows_all, DP * 4, &q_bytes) && clattn__mul_ok(rows_all, DVP * 4, &o_bytes);
    CLATTN_RETURN_IF(ctx, !sized, CLATTN_ERROR_INVALID_SHAPE,
                     "kv attention: the scratch sizes of %lld query rows overflow 64 bits",
                     (long long)rows_all);
    const uint64_t scratch = (uint64_t)scratch_i;
    CLATTN_RETURN_IF(ctx, scratch > clattn__scratch_cap(ctx),
                     CLATTN_ERROR_OUT_OF_MEMORY,
                     "kv attention: %lld query rows need %llu bytes of partial results, over the "
                     "workspace bound; pass fewer queries per call",
                     (long long)rows_all, (unsigned long long)scratch);
    /* part_o and part_ml together are the scratch checked above */
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)q_bytes, &s->qd));
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)(rows_all * pl.nsplit * DVP) * 4u, &s->part_o));
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)(rows_all * pl.nsplit * 2) * 4u, &s->part_ml));
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)o_bytes, &s->od));
    clattn__log(ctx, "kv attention%s: form %s, k %s, v %s, %d rows x %lld blocks, %lld splits of %lld keys (tuning: %s)",
                c->paged ? " (paged)" : "", pl.form ? "gpu" : "cpu", clattn_kv_format_name(c->kf), clattn_kv_format_name(c->vf),
                pl.rows, (long long)pl.nblk, (long long)pl.nsplit, (long long)pl.chunk, pl.src.text);

    const cl_long Hq = p->Hq, Lq = p->Lq, Hkv = p->Hkv, group = p->group;
    const size_t gq[3] = {(size_t)p->Lq, (size_t)p->Hq, (size_t)p->B};

    /* q: dense float rows, rotated for TQ keys (the same program as kv_store_o's when
     * D = Dv) */
    char ropts[640] = "";
    rows_options(c, p, p->D, ropts, sizeof ropts);
    cl_kernel kq;
    CLATTN_FORWARD(clattn__kernel_get(ctx, "kv_quant.cl", ropts, "kv_prep_q", &kq));
    cl_uint a = 0;
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, kq, &a, &dp->q));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, s->qd));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, Lq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kq, &a, c->krot));
    CLATTN_FORWARD(clattn__enqueue(ctx, kq, 3, gq, NULL, NULL));

    /* partial attention over the splits */
    clattn__dev_problem dpl = *dp; /* the cache's lengths play kv_lens */
    dpl.kv_lens.mem = c->paged ? c->indptr : c->lens; /* any int buffer when paged (unread) */
    dpl.kv_lens.off = 0;
    dpl.kv_lens.st[0] = 1;
    const cl_long k_rs = (cl_long)c->k_slab, k_row = (cl_long)c->k_row, v_rs = (cl_long)c->v_slab,
                  v_row = (cl_long)c->v_row, nsplit = pl.nsplit, chunk = pl.chunk;
    a = 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, s->qd));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->k));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->v));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, k_rs));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, k_row));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, v_rs));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, v_row));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->ktab));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->vtab));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, s->part_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, s->part_ml));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, Hkv));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, group));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, nsplit));
    CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, chunk));
    if (c->paged) {
        const cl_long Nq = p->Lq;
        CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->indptr));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->indices));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->last));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, c->qo_indptr));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kp, &a, Nq));
        /* the kernel takes Lq from the prelude's arguments: the longest query count */
        clattn__problem pq = *p;
        pq.Lq = c->lq_max;
        dpl.p = &pq;
        CLATTN_FORWARD(clattn__set_mask_args(ctx, kp, &a, &dpl));
    } else {
        CLATTN_FORWARD(clattn__set_mask_args(ctx, kp, &a, &dpl));
    }
    /* the row blocks of a split in one work-group: one core runs them back to back while
     * the split's keys and values are in its cache */
    const size_t nbk = (size_t)((c->paged ? c->n_seqs : p->B) * p->Hkv);
    if (pl.form == 1) { /* a work-group per (row block, split, (b, kvh)) */
        const size_t gp[3] = {(size_t)pl.wg * (size_t)pl.nblk, (size_t)pl.nsplit, nbk};
        const size_t lp[3] = {(size_t)pl.wg, 1, 1};
        CLATTN_FORWARD(clattn__enqueue(ctx, kp, 3, gp, lp, NULL));
    } else {
        size_t wg = 0;
        clGetKernelWorkGroupInfo(kp, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
        const size_t gp[3] = {(size_t)pl.nblk, (size_t)pl.nsplit, nbk};
        const size_t lp[3] = {(size_t)pl.nblk, 1, 1};
        CLATTN_FORWARD(clattn__enqueue(ctx, kp, 3, gp, (size_t)pl.nblk <= wg ? lp : NULL, NULL));
    }

    const cl_long nrows = rows_all;
    a = 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, s->part_o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, s->part_ml));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, nsplit));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, nrows));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, Lq));
    const cl_long width = DVP; /* part_o's and od's row width */
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, width));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, s->od));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, dp->lse.mem));
    CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, dp->lse.off));
    for (int i = 0; i < 3; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, km, &a, dp->lse.st[i]));
    /* 16 work-items per row, DVP / 16 columns each: a work-group's items share the row's
     * (m, l) and PoCL vectorises across them */
    const size_t gm[2] = {16, (size_t)rows_all};
    CLATTN_FORWARD(clattn__enqueue(ctx, km, 2, gm, NULL, NULL));

    /* O: rotated back for TQ values, stored in o's dtype and strides */
    rows_options(c, p, p->Dv, ropts, sizeof ropts);
    cl_kernel ko;
    CLATTN_FORWARD(clattn__kernel_get(ctx, "kv_quant.cl", ropts, "kv_store_o", &ko));
    a = 0;
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, s->od));
    CLATTN_FORWARD(clattn__set_tensor_args(ctx, ko, &a, &dp->o));
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, Hq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, Lq));
    CLATTN_FORWARD(CLATTN_ARG(ctx, ko, &a, c->vrot));
    return clattn__enqueue(ctx, ko, 3, gq, NULL, event);
}

clattn_status clattn_kv_cache_attention(clattn_context *ctx, clattn_kv_cache *c, const clattn_tensor *q,
                                        clattn_tensor *o, const clattn_options *opt, cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    CLATTN_RETURN_IF(ctx, !c, CLATTN_ERROR_INVALID_ARGUMENT, "kv attention: cache is NULL");
    CLATTN_RETURN_IF(ctx, c->ctx != ctx, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv attention: the cache belongs to another context");
    CLATTN_RETURN_IF(ctx, !q || !o, CLATTN_ERROR_INVALID_ARGUMENT, "kv attention: %s is NULL", !q ? "q" : "o");
    clattn_options o2;
    if (opt) {
        /* a copy of the caller's struct, which may be an older, smaller one */
        char oerr[512];
        clattn_status ost = clattn__options_read(opt, &o2, oerr, sizeof oerr);
        if (ost != CLATTN_SUCCESS) return clattn__fail(ctx, ost, "kv attention: %s", oerr);
    } else {
        clattn_options_init(&o2);
        o2.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    }
    CLATTN_RETURN_IF(ctx, o2.kv_lens, CLATTN_ERROR_INVALID_ARGUMENT,
                     "kv attention: options.kv_lens must be NULL: the cache's lengths are used");
    o2.path = CLATTN_PATH_AUTO;

    /* K and V stand in as cl_mem descriptors of the logical [B, Hkv, Lmax, D|Dv] shape so
     * the library's own validation checks q, o and every option against the cache. */
    int64_t Lmax = 0;
    for (int64_t b = 0; b < c->B; b++) Lmax = c->len[b] > Lmax ? c->len[b] : Lmax;
    clattn_tensor kd = {NULL, c->k, 0, CLATTN_F32, {c->B, c->Hkv, Lmax, c->D}, {0, 0, 0, 0}};
    clattn_tensor vd = {NULL, c->v, 0, CLATTN_F32, {c->B, c->Hkv, Lmax, c->Dv}, {0, 0, 0, 0}};
    clattn__problem p;
    char err[1024];
    clattn_status st = clattn__problem_init(&p, q, &kd, &vd, o, &o2, err, sizeof err);
    if (st != CLATTN_SUCCESS) return clattn__fail(ctx, st, "kv attention: %s", err);
    CLATTN_FORWARD(clattn__enqueue_wait(ctx, o2.wait_events, o2.num_wait_events));
    if (clattn__tensor_numel(o) == 0) {
        if (event) CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
        return CLATTN_SUCCESS;
    }
    clattn__dev_problem dp;
    CLATTN_FORWARD(clattn__stage(ctx, &p, &dp));
    clattn__kv_src src;
    memset(&src, 0, sizeof src);
    src.kf = c->kf;
    src.vf = c->vf;
    src.k = c->k;
    src.v = c->v;
    src.krot = c->krot;
    src.vrot = c->vrot;
    src.ktab = c->ktab;
    src.vtab = c->vtab;
    src.k_slab = c->k_slab;
    src.k_row = c->k_row;
    src.v_slab = c->v_slab;
    src.v_row = c->v_row;
    src.lens = c->lens;
    cl_event ev = NULL;
    st = clattn__kv_attend(ctx, &src, &dp, Lmax, event ? &ev : NULL);
    return clattn__stage_complete(ctx, &dp, st, ev, event);
}

clattn_status clattn__kv_attend(clattn_context *ctx, const clattn__kv_src *src,
                                const clattn__dev_problem *dp, int64_t Lmax, cl_event *event)
{
    kv_scratch s;
    memset(&s, 0, sizeof s);
    cl_event ev = NULL;
    /* LSE (splitkv_merge) is written before O (kv_store_o): with both, the caller's cl_mem
     * outputs are shadowed so a failed second launch leaves them untouched (staging.c). */
    clattn__dev_problem sp;
    clattn__shadow sh;
    clattn_status st = clattn__shadow_begin(ctx, dp, dp->p->lse != NULL, &sp, &sh);
    if (st == CLATTN_SUCCESS) st = run_kernels(ctx, src, &sp, Lmax, &s, sh.active ? NULL : &ev);
    if (st == CLATTN_SUCCESS) st = clattn__shadow_commit(ctx, &sh, &ev);
    clattn__shadow_release(ctx, &sh);
    /* releasing scratch while kernels are queued is safe: OpenCL keeps it alive */
    clattn__buffer_release(ctx, s.qd);
    clattn__buffer_release(ctx, s.part_o);
    clattn__buffer_release(ctx, s.part_ml);
    clattn__buffer_release(ctx, s.od);
    if (event) *event = ev;
    else if (ev) clReleaseEvent(ev);
    return st;
}

/* ---- Testing access (kv_cache.h) ------------------------------------------------ */

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
