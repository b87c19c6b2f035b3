/* The KV cache inside (cache.c): access to its stored bytes for the tests that compare
 * the device quantizers with the CPU reference (tests/test_kv_cache.c), and the helpers
 * of a store's creation and appends that the paged pool (pool.c) shares. Not part of
 * the ABI. */
#ifndef CLATTN_KV_CACHE_H
#define CLATTN_KV_CACHE_H

#include "clattn.h"

#include <stddef.h>

enum { CLATTN__KV_KEYS = 0, CLATTN__KV_VALUES = 1, CLATTN__KV_KEY_TAIL = 2 };

/* Bytes of one (batch, KV head) slab of keys, values or the INT4 key tail (0 if none),
 * and bytes per stored token (INT4 keys: per group of 32 tokens). */
size_t clattn__kv_cache_slab_bytes(const clattn_kv_cache *c, int which);
size_t clattn__kv_cache_row_bytes(const clattn_kv_cache *c, int which);
/* Copy the whole buffer (B * Hkv slabs) to host memory dst of `bytes` bytes (blocking). */
clattn_status clattn__kv_cache_download(clattn_kv_cache *c, int which, void *dst, size_t bytes);

/* ---- Device buffers and append inputs, shared by the cache and the paged pool ---- */
#include "core/staging.h"

/* A device buffer of a KV store (cache or pool): a copy of host, or zeroed when host is
 * NULL (no kernel reads bytes nobody wrote); *total counts its bytes. */
clattn_status clattn__kv_buffer(clattn_context *ctx, size_t bytes, const void *host, cl_mem *mem,
                               uint64_t *total);
/* The start of a store's creation: clear ctx's last error; the formats must be
 * clattn_kv_format values. Then the head sizes D and Dv must be within 1..256. Failures
 * read "what: ...". */
clattn_status clattn__kv_create_begin(clattn_context *ctx, const char *what, clattn_kv_format kf,
                                     clattn_kv_format vf);
clattn_status clattn__kv_check_dims(clattn_context *ctx, const char *what, int64_t D, int64_t Dv);
/* The buffers every store holds (what: "kv cache" or "kv pool" in messages): keys and
 * values of kbytes and vbytes, zeroed, after checking each against the device's largest
 * allocation (64 bytes of slack each), then the TQ tables of formats kf and vf at head
 * sizes D and Dv (clattn__kv_tq_buffers). */
clattn_status clattn__kv_store_buffers(clattn_context *ctx, const char *what, int64_t kbytes, int64_t vbytes,
                                      clattn_kv_format kf, int D, clattn_kv_format vf, int Dv, cl_mem *k,
                                      cl_mem *v, cl_mem *krot, cl_mem *ktab, cl_mem *vrot, cl_mem *vtab,
                                      uint64_t *total);
/* The rotation table and codebook of TQ format f at head size n (nothing for other
 * formats), as clattn__kv_buffer buffers. */
clattn_status clattn__kv_tq_buffers(clattn_context *ctx, clattn_kv_format f, int n, cl_mem *rot,
                                    cl_mem *tab, uint64_t *total);

/* An append's inputs k_new and v_new (what: the call, for "what: k_new is NULL"): the
 * checks problem.c applies to q/k/v, for shapes [B, H, n, D] and [B, H, n, Dv] with n
 * k_new's ne[2] ("kv append: NAME: ..." messages). They then reach the kernels through
 * clattn__stage_tensor (a host tensor is copied whole to a new buffer, marked owned). */
clattn_status clattn__kv_check_inputs(clattn_context *ctx, const char *what, const clattn_tensor *k_new,
                                      const clattn_tensor *v_new, int64_t B, int64_t H, int64_t D, int64_t Dv);

#endif /* CLATTN_KV_CACHE_H */
