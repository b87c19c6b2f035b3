/* Attention with K and V held in a KV cache of a given format, for `clattn run --kv-quant`
 * and `clattn bench --kv-quant`: the keys and values are appended to a cache (quantized on
 * the device as a cache stores them), then the queries attend over it. Kept apart from
 * the commands so run and bench share one definition of what --kv-quant measures. */
#ifndef CLATTN_KV_CASE_H
#define CLATTN_KV_CASE_H

#include "clattn.h"

#include <stdbool.h>

typedef struct kv_prepared {
    clattn_kv_cache *cache;
    clattn_tensor mask;  /* opt's mask seen up to the longest entry */
    clattn_options opt;  /* opt without kv_lens (the cache's lengths replace them) */
} kv_prepared;

/* "none" -> *quant = false; a format name -> *quant = true and *format. false if neither. */
bool kv_parse_quant(const char *name, bool *quant, clattn_kv_format *format);

/* A cache of capacity Lk on ctx holding k [B, Hkv, Lk, D] and v in `format`: batch entry
 * b gets its first lens[b] keys (lens NULL: all Lk). With per-batch lengths, query
 * positions align to each entry's own length, as in a cache (clattn.h). opt's kv_lens is
 * dropped (use lens) and its mask is viewed up to the longest entry. */
clattn_status kv_prepare(clattn_context *ctx, const clattn_tensor *k, const clattn_tensor *v,
                         const clattn_options *opt, const int32_t *lens, clattn_kv_format format,
                         kv_prepared *kp);
/* Attention of q over the prepared cache into o. */
clattn_status kv_run(clattn_context *ctx, kv_prepared *kp, const clattn_tensor *q, clattn_tensor *o,
                     cl_event *event);
void kv_release(kv_prepared *kp);

#endif /* CLATTN_KV_CASE_H */
