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

/* ---- Attention over stored keys, shared by the cache and the paged pool ---------- */
#include "core/staging.h"

/* Where the keys and values live for cl/kv_attn.cl: the contiguous cache's [B, Hkv]
 * slabs (lens: the device lengths), or a paged pool (paged = 1: slabs are (page, KV head)
 * pairs, the page table and the packed query rows' bounds as device int32 arrays). */
typedef struct clattn__kv_src {
    clattn_kv_format kf, vf;
    cl_mem k, v, krot, vrot, ktab, vtab;
    size_t k_slab, k_row, v_slab, v_row;
    cl_mem lens;
    int paged;
    int64_t page_size, page_slots;        /* PS and PT of cl/kv_attn.cl */
    int64_t n_seqs, lq_max;               /* the plan's B and Lq */
    cl_mem indptr, indices, last, qo_indptr;
} clattn__kv_src;

/* An append's input: the checks problem.c applies to q/k/v, for shape [B, H, n, dim]
 * ("kv append: NAME: ..." messages), and the input as kernels see it (a host tensor is
 * copied whole to a new buffer, marked owned). */
/* A device buffer of a KV store (cache or pool): a copy of host, or zeroed when host is
 * NULL (no kernel reads bytes nobody wrote); *total counts its bytes. */
clattn_status clattn__kv_buffer(clattn_context *ctx, size_t bytes, const void *host, cl_mem *mem,
                               uint64_t *total);
/* The rotation table and codebook of TQ format f at head size n (nothing for other
 * formats), as clattn__kv_buffer buffers. */
clattn_status clattn__kv_tq_buffers(clattn_context *ctx, clattn_kv_format f, int n, cl_mem *rot,
                                    cl_mem *tab, uint64_t *total);

clattn_status clattn__kv_check_input(clattn_context *ctx, const char *name, const clattn_tensor *t,
                                     int64_t B, int64_t H, int64_t n, int64_t dim);
clattn_status clattn__kv_stage_input(clattn_context *ctx, const clattn_tensor *t, clattn__dev_tensor *d);

/* Prepare q, run the partial and merge kernels and store O for the validated, staged
 * problem dp. Lmax: the longest key count (paged: in slots). The kernels are enqueued;
 * scratch buffers are released before returning (queued kernels keep them alive). */
clattn_status clattn__kv_attend(clattn_context *ctx, const clattn__kv_src *src,
                                const clattn__dev_problem *dp, int64_t Lmax, cl_event *event);

#endif /* CLATTN_KV_CACHE_H */
