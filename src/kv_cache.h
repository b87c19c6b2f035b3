/* Internal access to a KV cache's stored bytes, for the tests that compare the device
 * quantizers with the CPU reference (tests/test_kv_cache.c). Not part of the ABI. */
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

#endif /* CLATTN_KV_CACHE_H */
