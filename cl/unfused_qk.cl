/* unfused_qk.cl: step 1 of the unfused path, raw scores S[r, j] = dot(Q[b,h,i,:], K[b,kvh,j,:])
 * for a chunk of query rows. Row r of the chunk is the flattened row row0 + r of
 * [B, Hq, Lq]; S is float32 with leading dimension ldS. Scaling and masking follow in
 * unfused_scale_mask.cl. One work-item per score, keys along dimension 0 so neighbouring
 * work-items (which PoCL vectorises together) share the query row.
 * Build options: D, plus the prelude's dtype options. */

__kernel void unfused_qk(TENSOR_PARAMS(const __global Q_T *, q),
                         TENSOR_PARAMS(const __global K_T *, k), __global float *S, long ldS,
                         long row0, long nrows, long Hq, long Lq, long Lk, long group)
{
    const long j = get_global_id(0);
    const long r = get_global_id(1);
    if (j >= Lk || r >= nrows) return;
    const long row = row0 + r;
    const long3 bhi = clattn_decode_row(row, Hq, Lq);
    const long b = bhi.x, h = bhi.y, i = bhi.z;
    const long kvh = h / group;
    const long qb = q_off + b * q_s0 + h * q_s1 + i * q_s2;
    const long kb = k_off + b * k_s0 + kvh * k_s1 + j * k_s2;
    float acc = 0.0f;
    for (int d = 0; d < D; d++) acc = fma(LOAD_Q(q, qb + d * q_s3), LOAD_K(k, kb + d * k_s3), acc);
    S[r * ldS + j] = acc;
}
