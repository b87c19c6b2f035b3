/* splitkv.cl: the split-KV skeleton shared by decode (cl/decode.cl) and the KV-cache
 * attention (cl/kv_attn.cl); src/core/program.c builds it between cl/prelude.cl and either
 * file, so both run one copy of the online softmax, the partial-result layout and the
 * log-sum-exp merge.
 *
 * Split step: the keys of a (batch, KV head) are cut into splits; one work-item or
 * work-group per (row block, split) walks its split in tiles and keeps, per query row,
 * a running max m, a sum l = sum exp(s - m) and unnormalised accumulators
 * acc = sum exp(s - m) v. Per tile of scores with maximum tmax:
 *
 *   corr = splitkv_rescale(&m, tmax);   m = max(m, tmax); corr = exp(m_old - m)
 *   if (m == -INFINITY) p = 0           nothing visible yet: exp(-inf - -inf) is never
 *   else p = exp(s - m)                 evaluated
 *   l = fma(l, corr, sum p); acc = acc * corr + P V
 *
 * Partial results, per flattened row and split (pr = row * nsplit + split):
 *   part_ml[pr * 2 + {0, 1}] = m, l      (splitkv_store_ml)
 *   part_o [pr * W + d]      = acc[d]    W = DV (decode) or DV rounded up to 16 (KV cache)
 * A split where a row sees no key leaves m = -inf, l = 0, acc = 0.
 *
 * Merge (splitkv_merge, below): M = max m_s, w_s = exp(m_s - M) (a split with
 * m_s = -inf is skipped), O = sum w_s acc_s / sum w_s l_s, LSE = M + log(sum w_s l_s);
 * M = -inf gives O = 0 and LSE = -inf (SPEC §1). Rows are row = (b * Hq + h) * Lq + i.
 *
 * Build option: SPLITKV_DENSE_OUT - the merge writes dense float rows of width W (the KV
 * cache's, rotated back and stored by kv_store_o) instead of o in its dtype and strides.
 */

/* New running max after a tile whose largest score is tmax; returns the factor that
 * rescales l and acc. A row that has seen nothing finite keeps m = -inf and corr = 1. */
inline float splitkv_rescale(float *m, float tmax)
{
    const float mnew = fmax(*m, tmax);
    const float corr = mnew == -INFINITY ? 1.0f : exp(*m - mnew);
    *m = mnew;
    return corr;
}

inline void splitkv_store_ml(__global float *part_ml, long pr, float m, float l)
{
    part_ml[pr * 2] = m;
    part_ml[pr * 2 + 1] = l;
}

/* A split step's place in the grid (global (.., nsplit, B * Hkv)): its split, its (batch,
 * KV head) pair bk = b * Hkv + kvh, and the row count of its GQA group, nrows = group *
 * Lq. The row block blk (dimension 0) is the caller's: a work-item's or a work-group's. */
#define SPLITKV_PLACE()                                                                    \
    const long split = get_global_id(1);                                                   \
    const long bk = get_global_id(2);                                                      \
    const long b = bk / Hkv;                                                               \
    const long kvh = bk - b * Hkv;                                                         \
    const long nrows = group * Lq

#ifdef SPLITKV_DENSE_OUT
#define SPLITKV_OUT_PARAMS __global float *od
#define SPLITKV_STORE(row, bhi, d, val) (od[(row) * W + (d)] = (val))
#else
#define SPLITKV_OUT_PARAMS TENSOR_PARAMS(__global O_T *, o)
/* the index computed first: STORE_O's own parameters would capture a .x in it */
#define SPLITKV_STORE(row, bhi, d, val)                                                    \
    do {                                                                                   \
        const long oi_ = o_off + (bhi).s0 * o_s0 + (bhi).s1 * o_s1 + (bhi).s2 * o_s2 + (d) * o_s3; \
        STORE_O(o, oi_, (val));                                                            \
    } while (0)
#endif

/* global (NC, nrows): work-item c merges columns c, c + NC, ... of its row (decode: NC =
 * W, a column each; the KV cache: a few work-items per row), M and L found once. */
__kernel void splitkv_merge(const __global float *part_o, const __global float *part_ml,
                            long nsplit, long nrows, long Hq, long Lq, long W,
                            SPLITKV_OUT_PARAMS, __global float *lse, long lse_off, long lse_s0,
                            long lse_s1, long lse_s2)
{
    const long c = get_global_id(0), nc = get_global_size(0);
    const long row = get_global_id(1);
    if (c >= W || row >= nrows) return;
    const __global float *ml = part_ml + row * nsplit * 2;
    float M = -INFINITY;
    for (long s = 0; s < nsplit; s++) M = fmax(M, ml[s * 2]);
    float L = 0.0f;
    if (M != -INFINITY)
        for (long s = 0; s < nsplit; s++)
            if (ml[s * 2] != -INFINITY) L = fma(exp(ml[s * 2] - M), ml[s * 2 + 1], L);
    const long3 bhi = clattn_decode_row(row, Hq, Lq);
    for (long d = c; d < W; d += nc) {
        float acc = 0.0f;
        if (M != -INFINITY)
            for (long s = 0; s < nsplit; s++) {
                const float ms = ml[s * 2];
                if (ms == -INFINITY) continue; /* this split saw no key of the row */
                acc = fma(exp(ms - M), part_o[(row * nsplit + s) * W + d], acc);
            }
        SPLITKV_STORE(row, bhi, d, M == -INFINITY ? 0.0f : acc / L);
    }
    if (lse && c == 0) /* LSE asked for (NULL otherwise) */
        lse[lse_off + bhi.x * lse_s0 + bhi.y * lse_s1 + bhi.z * lse_s2] =
            M == -INFINITY ? -INFINITY : M + log(L);
}
