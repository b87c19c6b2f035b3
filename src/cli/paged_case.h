/* `clattn run --paged-kv PAGE_SIZE[,SEED]` and the paged cases of `clattn bench`: the
 * batch of K and V goes into a paged pool (clattn_kv_pool) whose pages are placed in an
 * order shuffled by SEED, each batch entry a sequence of its own length (--kv-lens), and
 * the queries attend over the pages (clattn_kv_pool_attention). Kept apart from the
 * commands so run and bench share one definition of what a paged case is. */
#ifndef CLATTN_PAGED_CASE_H
#define CLATTN_PAGED_CASE_H

#include "clattn.h"

#include <stdbool.h>

/* "PAGE_SIZE" or "PAGE_SIZE,SEED": page size a power of two in 1..256, seed >= 0 (0 when
 * absent). false with a message in err otherwise. */
bool paged_parse(const char *arg, int *page_size, unsigned long long *seed, char *err, size_t errlen);

typedef struct paged_prepared {
    clattn_kv_pool *pool;
    int32_t *indptr, *indices, *last, *qo;
    clattn_page_table table;
    int64_t B, Hq, Lq, D, Dv;
    void *qp;         /* q packed as [1, Hq, B*Lq, D] in q's dtype */
    clattn_tensor tq; /* its descriptor */
    float *op, *lp;   /* packed O and LSE (float32) */
    clattn_tensor to, tl;
    clattn_tensor tm;   /* the mask as the pool takes it (paged_prepare) */
    clattn_options opt; /* the caller's options without kv_lens, lse on the packed LSE */
} paged_prepared;

/* A pool on ctx holding k [B, Hkv, Lk, D] and v (host or cl_mem) in `format` with pages
 * of page_size tokens in the order shuffled by seed; batch entry b keeps its first
 * lens[b] keys (lens NULL: all Lk). q [B, Hq, Lq, D] must be a host tensor (it is packed
 * once here). A mask [B, Hq, Lq, Lk] (broadcastable) is the pool's per-sequence mask
 * (batch entries are the sequences), its keys cut to the longest sequence. pp must not
 * move until paged_release (its options point at pp->tm). */
clattn_status paged_prepare(clattn_context *ctx, const clattn_tensor *q, const clattn_tensor *k,
                            const clattn_tensor *v, const clattn_options *opt, const int32_t *lens,
                            clattn_kv_format format, int page_size, unsigned long long seed,
                            paged_prepared *pp);
/* Attention over the pool into the packed outputs; with o (host f32, [B, Hq, Lq, Dv],
 * any strides) and lse (host f32 [B, Hq, Lq, 1] or NULL) the results are unpacked there. */
clattn_status paged_run(clattn_context *ctx, paged_prepared *pp, clattn_tensor *o, clattn_tensor *lse);
void paged_release(paged_prepared *pp);

#endif /* CLATTN_PAGED_CASE_H */
