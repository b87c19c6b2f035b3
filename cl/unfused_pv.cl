/* unfused_pv.cl: step 4 of the unfused path, O = P·V for a chunk of probability rows laid
 * out as unfused_qk.cl lays out scores (nheads whole heads from bh0, or queries
 * [i0, i0 + ni) of one head). A fully masked row is all zeros, so its O is 0.
 * TILE > 1 (GPUs): TILE x TILE output tiles (queries x value dims), P and V staged
 * through local memory. TILE = 1 (CPU drivers): one work-item per output element.
 * Build options: DV, TILE, plus the prelude's dtype options. */

#if TILE == 1
__kernel void unfused_pv(const __global float *P, long ldP, TENSOR_PARAMS(const __global V_T *, v),
                         TENSOR_PARAMS(__global O_T *, o), long bh0, long i0, long ni, long Hq,
                         long Lk, long group)
{
    const long d = get_global_id(0), r = get_global_id(1), hc = get_global_id(2);
    if (d >= DV || r >= ni) return;
    const long bh = bh0 + hc;
    const long b = bh / Hq, h = bh - b * Hq, kvh = h / group;
    const __global float *p = P + (hc * ni + r) * ldP;
    const long vb = v_off + b * v_s0 + kvh * v_s1 + d * v_s3;
    float acc = 0.0f;
    for (long j = 0; j < Lk; j++) acc = fma(p[j], LOAD_V(v, vb + j * v_s2), acc);
    STORE_O(o, o_off + b * o_s0 + h * o_s1 + (i0 + r) * o_s2 + d * o_s3, acc);
}
#else
__kernel __attribute__((reqd_work_group_size(TILE, TILE, 1)))
void unfused_pv(const __global float *P, long ldP, TENSOR_PARAMS(const __global V_T *, v),
                TENSOR_PARAMS(__global O_T *, o), long bh0, long i0, long ni, long Hq, long Lk,
                long group)
{
    __local float pt[TILE][TILE + 1]; /* [query][key] */
    __local float vt[TILE][TILE + 1]; /* [key][dim] */
    const int td = (int)get_local_id(0), ti = (int)get_local_id(1);
    const long d0 = (long)get_group_id(0) * TILE, r0 = (long)get_group_id(1) * TILE;
    const long hc = (long)get_global_id(2);
    const long bh = bh0 + hc;
    const long b = bh / Hq, h = bh - b * Hq, kvh = h / group;
    const long vbase = v_off + b * v_s0 + kvh * v_s1;
    const long d = d0 + td;
    float acc = 0.0f;
    for (long j0 = 0; j0 < Lk; j0 += TILE) {
        /* work-item (td, ti) loads P[r0 + ti][j0 + td] and V[j0 + ti][d0 + td] */
        const long pr = r0 + ti, pj = j0 + td, vj = j0 + ti;
        pt[ti][td] = (pr < ni && pj < Lk) ? P[(hc * ni + pr) * ldP + pj] : 0.0f;
        vt[ti][td] = (vj < Lk && d < DV) ? LOAD_V(v, vbase + vj * v_s2 + d * v_s3) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = 0; e < TILE; e++) acc = fma(pt[ti][e], vt[e][td], acc);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const long r = r0 + ti;
    if (r < ni && d < DV)
        STORE_O(o, o_off + b * o_s0 + h * o_s1 + (i0 + r) * o_s2 + d * o_s3, acc);
}
#endif
