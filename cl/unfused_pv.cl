/* unfused_pv.cl: step 4 of the unfused path, O[b,h,i,:] = sum_j P[r,j] V[b,kvh,j,:] for a
 * chunk of rows of probabilities (a fully masked row is all zeros, so O = 0). One
 * work-item per output element, value dimension along dimension 0.
 * Build options: DV, plus the prelude's dtype options. */

__kernel void unfused_pv(const __global float *P, long ldP, TENSOR_PARAMS(const __global V_T *, v),
                         TENSOR_PARAMS(__global O_T *, o), long row0, long nrows, long Hq,
                         long Lq, long Lk, long group)
{
    const long d = get_global_id(0);
    const long r = get_global_id(1);
    if (d >= DV || r >= nrows) return;
    const long row = row0 + r;
    const long3 bhi = clattn_decode_row(row, Hq, Lq);
    const long b = bhi.x, h = bhi.y, i = bhi.z;
    const long kvh = h / group;
    const __global float *p = P + r * ldP;
    const long vb = v_off + b * v_s0 + kvh * v_s1 + d * v_s3;
    float acc = 0.0f;
    for (long j = 0; j < Lk; j++) acc = fma(p[j], LOAD_V(v, vb + j * v_s2), acc);
    STORE_O(o, o_off + b * o_s0 + h * o_s1 + i * o_s2 + d * o_s3, acc);
}
