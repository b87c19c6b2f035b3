/* unfused_qk.cl: step 1 of the unfused path, raw scores S = Q·Kᵀ for a chunk of query
 * rows that never crosses a head boundary within a tile: the chunk is `nheads` whole
 * heads starting at flattened head bh0 = b*Hq + h, or (nheads = 1) the queries
 * [i0, i0 + ni) of one head. Row (bh - bh0)*ni + (i - i0) of S (leading dimension ldS)
 * holds query i of head bh. Scaling and masking follow in unfused_scale_mask.cl.
 * TILE > 1 (GPUs): TILE x TILE output tiles, Q and K staged through local memory TILE
 * dims at a time. TILE = 1 (CPU drivers, where barriers cost more than they save: PoCL
 * ran 1x8x256x256x64 in ~1000 ms tiled and ~370 ms untiled): one work-item per score.
 * Build options: D, TILE, plus the prelude's dtype options. */

#if TILE == 1
__kernel void unfused_qk(TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),
                         __global float *S, long ldS, long bh0, long i0, long ni, long Hq, long Lk,
                         long group)
{
    const long j = get_global_id(0), r = get_global_id(1), hc = get_global_id(2);
    if (j >= Lk || r >= ni) return;
    const long bh = bh0 + hc;
    const long b = bh / Hq, h = bh - b * Hq, kvh = h / group;
    const long qb = q_off + b * q_s0 + h * q_s1 + (i0 + r) * q_s2;
    const long kb = k_off + b * k_s0 + kvh * k_s1 + j * k_s2;
    float acc = 0.0f;
    for (int d = 0; d < D; d++) acc = fma(LOAD_Q(q, qb + d * q_s3), LOAD_K(k, kb + d * k_s3), acc);
    S[(hc * ni + r) * ldS + j] = acc;
}
#else
__kernel __attribute__((reqd_work_group_size(TILE, TILE, 1)))
void unfused_qk(TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),
                __global float *S, long ldS, long bh0, long i0, long ni, long Hq, long Lk,
                long group)
{
    __local float qt[TILE][TILE + 1]; /* [query][dim]; +1 avoids bank conflicts on GPUs */
    __local float kt[TILE][TILE + 1]; /* [key][dim] */
    const int tj = (int)get_local_id(0), ti = (int)get_local_id(1);
    const long j0 = (long)get_group_id(0) * TILE, r0 = (long)get_group_id(1) * TILE;
    const long bh = bh0 + (long)get_global_id(2);
    const long b = bh / Hq, h = bh - b * Hq, kvh = h / group;
    const long qbase = q_off + b * q_s0 + h * q_s1;
    const long kbase = k_off + b * k_s0 + kvh * k_s1;
    float acc = 0.0f;
    for (int d0 = 0; d0 < D; d0 += TILE) {
        /* work-item (tj, ti) loads Q[r0 + ti][d0 + tj] and K[j0 + ti][d0 + tj] */
        const int d = d0 + tj;
        const long qi = i0 + r0 + ti, kj = j0 + ti;
        qt[ti][tj] = (d < D && r0 + ti < ni) ? LOAD_Q(q, qbase + qi * q_s2 + d * q_s3) : 0.0f;
        kt[ti][tj] = (d < D && kj < Lk) ? LOAD_K(k, kbase + kj * k_s2 + d * k_s3) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = 0; e < TILE; e++) acc = fma(qt[ti][e], kt[tj][e], acc);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const long r = r0 + ti, j = j0 + tj;
    if (r < ni && j < Lk) S[((long)get_global_id(2) * ni + r) * ldS + j] = acc;
}
#endif
