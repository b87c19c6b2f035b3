/* Attention over stored keys and values (attention.c), the one host side of
 * cl/kv_attn.cl for the contiguous KV cache (cache.c) and the paged pool (pool.c, built
 * with -DPAGED): the calls' shared start, staging and launches. */
#ifndef CLATTN_KV_ATTENTION_H
#define CLATTN_KV_ATTENTION_H

#include "core/staging.h"

/* Where the keys and values live for cl/kv_attn.cl: the contiguous cache's [B, Hkv]
 * slabs (lens: the device lengths), or a paged pool (table not NULL: slabs are (page, KV
 * head) pairs; the page table and the packed query rows' bounds qo_indptr go to the
 * device for the call). */
typedef struct clattn__kv_src {
    clattn_kv_format kf, vf;
    int64_t Hkv, D, Dv;
    cl_mem k, v, krot, vrot, ktab, vtab;
    size_t k_slab, k_row, v_slab, v_row;
    cl_mem lens;
    const clattn_page_table *table;
    const int32_t *qo_indptr;
    int64_t page_size, page_slots; /* PS and PT of cl/kv_attn.cl */
    int64_t lq_max;                /* the longest query count of a sequence */
    /* paged: the per-sequence mask [n_seqs, Hq, Lq_max, Lk_max] (broadcastable), checked
     * by pool.c and kept out of the validation's options (which would read it as the
     * packed [1, Hq, Nq, Lk] shape); NULL for none */
    const clattn_tensor *seq_mask;
} clattn__kv_src;

/* The options of a KV attention call: a copy of the caller's (an older, smaller struct
 * gets defaults), or without options the defaults with causal bottom-right (the queries
 * are the newest positions). A failure is recorded as "what: message". */
clattn_status clattn__kv_options(clattn_context *ctx, const char *what, const clattn_options *opt,
                                 clattn_options *full);

/* The start of a KV attention call what ("kv attention", ...) on ctx (not NULL): clear
 * *event and the last error; the store s ("cache" or "pool", of context s_ctx) must
 * exist and belong to ctx, q and o must not be NULL, and the options (clattn__kv_options)
 * must leave kv_lens NULL (lengths: where the lengths come from instead). The store
 * chooses the path: full->path is auto. */
clattn_status clattn__kv_start(clattn_context *ctx, const char *what, const char *store, const void *s,
                               const clattn_context *s_ctx, const clattn_tensor *q, const clattn_tensor *o,
                               const clattn_options *opt, const char *lengths, cl_event *event,
                               clattn_options *full);

/* Attention of q over src into o with the options full (from clattn__kv_options), as
 * clattn_attention runs a call (api/attention.h): K and V stand in as cl_mem descriptors of
 * the logical [B, Hkv, Lk, D|Dv] shape so the library's own validation checks q, o and
 * every option against the store ("what: message" on failure); then q and o are staged
 * and the kernels run. Lmax: the longest key count in slots (the key splits' extent). */
clattn_status clattn__kv_call(clattn_context *ctx, const char *what, const clattn__kv_src *src,
                              const clattn_tensor *q, clattn_tensor *o, const clattn_options *full,
                              int64_t B, int64_t Lk, int64_t Lmax, cl_event *event);

/* A device copy of an int32 array (at least one element, so empty tables get a buffer). */
clattn_status clattn__kv_upload_ints(clattn_context *ctx, const int32_t *a, size_t n, cl_mem *m);

#endif /* CLATTN_KV_ATTENTION_H */
