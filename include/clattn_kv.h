/* clattn's KV cache and paged KV pool: the quantized key/value storage of token-by-token
 * generation and of serving. Included by clattn.h, which programs include; the types it
 * uses (contexts, tensors, options) are clattn.h's. */
#ifndef CLATTN_KV_H
#define CLATTN_KV_H

#include "clattn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- KV cache -------------------------------------------------------------------- */
/* A key/value cache on the device for token-by-token generation: K [B, Hkv, capacity, D]
 * and V [B, Hkv, capacity, Dv] stored in a (possibly compressed) format, filled by
 * appends, with per-batch lengths, and read directly by its attention kernels (the cache
 * is never expanded to floats).
 *
 * Formats (keys and values may use different ones; bits per element at D = 128):
 *   F32, F16   plain storage (32, 16).
 *   INT8       blocks of 32 along the head dim: one f16 scale d and 32 int8 codes q,
 *              x = d*q, d = max|x|/127 (8.5 bits; ggml's q8_0).
 *   INT4       blocks of 32 with an f16 scale d and an f16 minimum m, x = m + d*q, q in
 *              0..15 (5.0 bits). Keys are grouped per channel over 32 consecutive tokens
 *              and values per token over 32 channels, as KIVI does; the keys of a group
 *              that is not full yet are also kept as f16 (re-quantized on every append),
 *              which adds 512/capacity bits per key element.
 *   TQ4/3/2    TurboQuant (arXiv 2504.19874): each vector is rotated by a fixed random
 *              orthogonal transform R (randomized Hadamard; for a D that is not a power of
 *              two, two rounds of signs, a permutation and Hadamard blocks of D's binary
 *              digits), each coordinate is coded with b bits by the Lloyd-Max codebook
 *              of N(0, 1/D), and one f16 scale per vector is kept (b + 16/D bits).
 *              Attention rotates the query once and the output back once per row.
 * Scales are halves: values beyond the f16 range saturate (INT4 also clamps each value to
 * it). The quantizers are documented in src/kv/format.h. */
typedef enum clattn_kv_format {
    CLATTN_KV_F32 = 0,
    CLATTN_KV_F16 = 1,
    CLATTN_KV_INT8 = 2,
    CLATTN_KV_INT4 = 3,
    CLATTN_KV_TQ4 = 4,
    CLATTN_KV_TQ3 = 5,
    CLATTN_KV_TQ2 = 6,
    CLATTN_KV_FORMAT_COUNT_ = 7
} clattn_kv_format;
/* "f32", "f16", "int8", "int4", "tq4", "tq3", "tq2"; NULL for an unknown value. */
CLATTN_API const char *clattn_kv_format_name(clattn_kv_format format);
CLATTN_API clattn_status clattn_kv_format_from_name(const char *name, clattn_kv_format *format);
/* The format's nominal bits per element: 32, 16, 8.5, 5, 4, 3, 2 (0 if unknown). A cache
 * adds at most the per-vector scale of TQ (16/D) and INT4's f16 tail of keys. */
CLATTN_API double clattn_kv_format_nominal_bits(clattn_kv_format format);

typedef struct clattn_kv_cache clattn_kv_cache;

/* A cache of `capacity` positions per (batch, KV head) on ctx's device, empty. The cache
 * keeps a pointer to ctx, which must outlive it. Errors: INVALID_ARGUMENT (format),
 * INVALID_SHAPE (B, Hkv, capacity < 1, D or Dv outside 1..256), OUT_OF_MEMORY. */
CLATTN_API clattn_status clattn_kv_cache_create(clattn_context *ctx, int64_t B, int64_t Hkv,
                                                int64_t capacity, int64_t D, int64_t Dv,
                                                clattn_kv_format k_format,
                                                clattn_kv_format v_format,
                                                clattn_kv_cache **cache);
CLATTN_API void clattn_kv_cache_free(clattn_kv_cache *cache); /* NULL is a no-op */
/* Forget every position (lengths become 0); no memory is released. */
CLATTN_API clattn_status clattn_kv_cache_reset(clattn_kv_cache *cache);

/* Append new keys and values: k_new [B, Hkv, n, D] and v_new [B, Hkv, n, Dv] (f32, f16 or
 * bf16, host or cl_mem, any strides). Batch entry b appends its first n_per_batch[b] rows
 * (0..n) at its current length; n_per_batch NULL appends all n rows to every entry. The
 * quantization runs on the device; with cl_mem inputs the work is only enqueued. If any
 * entry would exceed the capacity the call returns CLATTN_ERROR_CAPACITY and the cache
 * is left exactly as it was (nothing is written); the same holds for every validation
 * error. */
CLATTN_API clattn_status clattn_kv_cache_append(clattn_kv_cache *cache, const clattn_tensor *k_new,
                                                const clattn_tensor *v_new,
                                                const int32_t *n_per_batch);
/* clattn_kv_cache_append that also returns, when event is not NULL, an event that
 * completes when the cache holds the new rows (release it with clReleaseEvent); with a
 * call that appends nothing the event is a marker on the queue. On failure *event is
 * NULL. */
CLATTN_API clattn_status clattn_kv_cache_append_with_event(clattn_kv_cache *cache,
                                                           const clattn_tensor *k_new,
                                                           const clattn_tensor *v_new,
                                                           const int32_t *n_per_batch,
                                                           cl_event *event);

/* Attention of new queries q [B, Hq, Lq, D] over the cache into o [B, Hq, Lq, Dv]
 * (Hq a multiple of Hkv), for decode (Lq = 1 or a few) and chunked prefill (the chunk's
 * own keys appended first). Every SPEC §1 option applies, with per-batch key counts taken
 * from the cache: for batch b the keys are 0 .. len[b]-1 and query i sits at position
 * i' = i + len[b] - Lq (bottom-right alignment per batch entry). opt == NULL means the
 * defaults with causal = CLATTN_CAUSAL_BOTTOM_RIGHT (a chunk's queries see the keys up
 * to their own position); with options, opt->causal is used as given (clattn_options_init
 * gives NONE). A mask's last extent is max_b len[b] (or 1). opt->kv_lens must be NULL
 * (lengths come from the cache) and opt->path is ignored (the cache has its own kernels).
 * Events and host tensors behave as in clattn_attention; ctx must be the cache's. */
CLATTN_API clattn_status clattn_kv_cache_attention(clattn_context *ctx, clattn_kv_cache *cache,
                                                   const clattn_tensor *q, clattn_tensor *o,
                                                   const clattn_options *opt, cl_event *event);

/* Device memory the cache holds, in bytes (codes, scales, INT4's key tail, tables). */
CLATTN_API uint64_t clattn_kv_cache_bytes(const clattn_kv_cache *cache);
/* clattn_kv_cache_bytes * 8 / (B * Hkv * capacity * (D + Dv)). */
CLATTN_API double clattn_kv_cache_bits_per_element(const clattn_kv_cache *cache);
/* The current length of each batch entry into lengths[0 .. B-1]. */
CLATTN_API clattn_status clattn_kv_cache_lengths(const clattn_kv_cache *cache, int32_t *lengths);

typedef enum clattn_kv_role {
    CLATTN_KV_KEYS = 0,  /* INT4 groups 32 consecutive vectors per channel */
    CLATTN_KV_VALUES = 1 /* INT4 groups 32 channels per vector */
} clattn_kv_role;
/* The CPU reference quantizer: quantize n_vectors consecutive vectors of D floats
 * (x, dense) as a cache of that format stores them for the role, and write the
 * dequantized values to x_hat (may equal x). *bytes (or NULL) receives the packed size
 * of the n vectors. This is what the device quantizers are tested against (bit-exact on
 * devices with correctly rounded division and sqrt, within one code otherwise). */
CLATTN_API clattn_status clattn_kv_quantize_host(clattn_kv_format format, clattn_kv_role role,
                                                 const float *x, size_t n_vectors, int64_t D,
                                                 float *x_hat, uint64_t *bytes);

/* ---- Paged KV cache ------------------------------------------------------------- */
/* A pool of fixed-size pages of keys and values on the device, in any clattn_kv_format
 * but INT4 keys (their 32-token groups need the cache's f16 tail of unfinished groups;
 * INT4 values are fine), for serving many sequences of different lengths (vLLM's block
 * tables, FlashInfer's page tables). A page holds page_size tokens (a power of two,
 * 1..256) of every KV head; pages below 16 tokens with a tiled format (anything but
 * F32/F16 for both keys and values) take the storage of 16 tokens each.
 *
 * Who owns what. The pool only stores bytes: the caller allocates and frees pages and
 * keeps each sequence's page table on the host, in FlashInfer's CSR form
 * (clattn_page_table): sequence s owns pages indices[indptr[s] .. indptr[s+1]), in
 * token order, and its last page holds last_page_len[s] tokens (1..page_size; 0 for a
 * sequence without pages), so its length is (pages - 1) * page_size + last_page_len[s].
 * clattn never changes a page table and never allocates or frees a page; every call
 * reads the table it is given and validates it on the host first (indptr[0] = 0 and
 * non-decreasing, page numbers within the pool, last lengths within range, the table's
 * page_size equal to the pool's): a bad table is refused with a message and nothing is
 * written. Pages may be shared by sequences (a common prefix) for reading; a call that
 * writes (append, copy, remove) refuses to write a page that more than one sequence of
 * the table holds (copy it first: clattn_kv_pool_copy_pages, copy-on-write). Every
 * argument is checked before anything is enqueued; a writing call that the driver then
 * fails part-way (an enqueue refused) may have written some of its destination slots
 * or pages, never any other. */
typedef struct clattn_kv_pool clattn_kv_pool;

/* The caller fills this struct and the library only reads it; its layout is fixed (as
 * clattn_tensor's), so it carries no struct_size. */
typedef struct clattn_page_table {
    size_t n_seqs;
    const int32_t *indptr;        /* [n_seqs + 1] */
    const int32_t *indices;       /* [indptr[n_seqs]] page numbers 0 .. num_pages-1 */
    const int32_t *last_page_len; /* [n_seqs] */
    int64_t page_size;            /* must equal the pool's */
} clattn_page_table;

/* A pool of num_pages pages of page_size tokens for Hkv KV heads of D (keys) and Dv
 * (values) elements. The pool keeps a pointer to ctx, which must outlive it. Errors:
 * INVALID_ARGUMENT (format, INT4 keys), INVALID_SHAPE (page_size not a power of two in
 * 1..256, num_pages or Hkv < 1, D or Dv outside 1..256, slots past int32),
 * OUT_OF_MEMORY. The pages start zeroed. */
CLATTN_API clattn_status clattn_kv_pool_create(clattn_context *ctx, int64_t num_pages,
                                               int64_t page_size, int64_t Hkv, int64_t D,
                                               int64_t Dv, clattn_kv_format k_format,
                                               clattn_kv_format v_format, clattn_kv_pool **pool);
CLATTN_API void clattn_kv_pool_free(clattn_kv_pool *pool); /* NULL is a no-op */
/* Device memory of the pool's pages and tables, in bytes. */
CLATTN_API uint64_t clattn_kv_pool_bytes(const clattn_kv_pool *pool);

/* Store N new tokens: k_new [1, Hkv, N, D] and v_new [1, Hkv, N, Dv] (f32, f16 or bf16,
 * host or cl_mem, any strides); token t goes to slot slot_mapping[t] = page * page_size
 * + offset (vLLM's slot mapping), quantized on the device. Slots must be distinct and
 * within the pool, and no written page may be held by more than one sequence of table
 * (which is only read; the caller then raises the sequences' last_page_len or adds
 * pages). On any error nothing is written. The work is enqueued; event (or NULL) gets
 * an event that completes when the pool holds the tokens. */
CLATTN_API clattn_status clattn_kv_pool_append(clattn_kv_pool *pool, const clattn_page_table *table,
                                               const clattn_tensor *k_new,
                                               const clattn_tensor *v_new,
                                               const int32_t *slot_mapping, cl_event *event);

/* Attention of a ragged batch over its pages: the queries of every sequence packed as
 * q [1, Hq, Nq, D] (Hq a multiple of Hkv), sequence s's rows qo_indptr[s] ..
 * qo_indptr[s+1]-1 (qo_indptr [n_seqs + 1], qo_indptr[0] = 0, non-decreasing, last =
 * Nq), into o [1, Hq, Nq, Dv] and, with options.lse, LSE [1, Hq, Nq, 1]. Decode is one
 * row per sequence; chunked prefill appends the chunk's keys first and passes its
 * rows. Each sequence attends as clattn_kv_cache_attention's batch entry would: its keys
 * are 0 .. len-1 and its query i sits at position i + len - Lq_s (bottom-right per
 * sequence). Options: scale, softcap, ALiBi ([Hq]), causal (opt == NULL means the
 * defaults with CLATTN_CAUSAL_BOTTOM_RIGHT, as the cache), window, GQA, LSE and a mask
 * apply; options.kv_lens is refused (the page table gives the lengths) and options.path
 * is ignored. The mask (bool or additive f32, as clattn_attention's) is described per
 * sequence, not over the packed rows: [n_seqs or 1, Hq or 1, Lq_max or 1, Lk_max or 1]
 * with n_seqs = table->n_seqs, Lq_max the largest query count of a sequence
 * (max_s qo_indptr[s+1] - qo_indptr[s]) and Lk_max the longest sequence in tokens;
 * element (s, h, i, j) applies to sequence s's query row i (row qo_indptr[s] + i of q,
 * 0 <= i < its own count) and its key position j (0 .. len_s - 1), and elements past a
 * sequence's own rows or length are never read. Extents of 1 broadcast; any other
 * extent is refused with CLATTN_ERROR_INVALID_SHAPE and a message naming the expected
 * ones. A sequence without pages gives O = 0 and LSE = -inf. Events and host tensors
 * behave as in clattn_attention; ctx must be the pool's. */
CLATTN_API clattn_status clattn_kv_pool_attention(clattn_context *ctx, clattn_kv_pool *pool,
                                                  const clattn_page_table *table,
                                                  const int32_t *qo_indptr, const clattn_tensor *q,
                                                  clattn_tensor *o, const clattn_options *opt,
                                                  cl_event *event);

/* Shared-prefix (cascade) attention: sequences that share a prefix attend it as one
 * problem, so the prefix's keys and values are read once per group instead of once per
 * sequence, then their own pages, and the two states are merged on the device with
 * clattn_merge_states. Group g's prefix is sequence g of prefix (its pages, usually
 * shared with nothing that writes) and its query rows are group_qo_indptr[g] ..
 * group_qo_indptr[g+1]-1 of q, all of which see the whole prefix; sequence s's own pages
 * are sequence s of suffix and its rows are qo_indptr[s] .. qo_indptr[s+1]-1, which must
 * lie within one group. The result equals clattn_kv_pool_attention over each sequence's
 * prefix pages followed by its own (prefix tokens first), to float32 rounding. Options:
 * scale, softcap, causal (within the suffix; the prefix precedes every query), GQA and
 * LSE as in clattn_kv_pool_attention; ALiBi, windows and masks are refused (they depend
 * on each query's absolute position, which the shared prefix problem does not have). Memory:
 * two float32 copies of O and LSE as scratch. */
CLATTN_API clattn_status clattn_kv_pool_cascade_attention(
    clattn_context *ctx, clattn_kv_pool *pool, const clattn_page_table *prefix,
    const int32_t *group_qo_indptr, const clattn_page_table *suffix, const int32_t *qo_indptr,
    const clattn_tensor *q, clattn_tensor *o, const clattn_options *opt, cl_event *event);

/* Copy n whole pages on the device: page src[i] to page dst[i] (every KV head, keys and
 * values), for copy-on-write of a shared page before appending to it. Pages must be
 * within the pool, no dst may repeat or be a src. The caller then points its table at
 * the copies. On any error nothing is written. */
CLATTN_API clattn_status clattn_kv_pool_copy_pages(clattn_kv_pool *pool, size_t n,
                                                   const int32_t *src, const int32_t *dst,
                                                   cl_event *event);

/* llama.cpp's sequence operations with caller-owned tables.
 * copy_prefix: the first n_tokens tokens of sequence src_seq are copied into the first
 * pages of dst_seq (which must already hold ceil(n_tokens / page_size) pages that no
 * other sequence of table holds; pages both sequences already share are left as they
 * are). The caller then sets dst_seq's last_page_len (and drops pages it no longer
 * needs). Sharing the prefix's full pages in dst's table, with no copy at all, is the
 * cheaper way when dst only reads them; copy the last, partial page before appending.
 * remove: tokens p0 .. p1-1 of sequence seq are removed and the tokens after them move
 * down on the device (p1 past the length means "to the end"), so the sequence keeps
 * its first p0 tokens followed by its tokens from p1 on; *new_len receives its new
 * length. The caller then updates the table: last_page_len and the pages past
 * ceil(new_len / page_size), which it may free. The sequence's pages must not be held
 * by another sequence of table. On any error nothing is written. */
CLATTN_API clattn_status clattn_kv_pool_seq_copy_prefix(clattn_kv_pool *pool,
                                                        const clattn_page_table *table,
                                                        size_t src_seq, size_t dst_seq,
                                                        int64_t n_tokens, cl_event *event);
CLATTN_API clattn_status clattn_kv_pool_seq_remove(clattn_kv_pool *pool,
                                                   const clattn_page_table *table, size_t seq,
                                                   int64_t p0, int64_t p1, int64_t *new_len,
                                                   cl_event *event);

#ifdef __cplusplus
}
#endif
#endif /* CLATTN_KV_H */
