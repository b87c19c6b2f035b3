/* Merge of partial attention states (src/api/merge.c): parts (O_i, LSE_i) computed over
 * disjoint key sets combine into O = sum_i exp(LSE_i - LSE) O_i, LSE = log sum_i
 * exp(LSE_i). One work-item per row [B, H, Lq]. Each part is folded into a float32
 * accumulator with a running maximum (merge_accum, one launch per part, so any number
 * of parts and any mix of their buffers works), then merge_finish writes O and LSE in
 * one launch: the caller's outputs change in that launch only, so a failure before it
 * leaves them as they were, and an output may alias a part (every part is read first).
 *
 * Build options: V_DT = the part's O storage type, O_DT = the output's. A part whose
 * LSE is -inf contributes nothing; a row whose every part is -inf gives O = 0 and
 * LSE = -inf, never exp(-inf - (-inf)). */

/* acc [rows, Dv], m [rows] (running maximum), s [rows] (sum of exp(LSE_i - m)). */
kernel void merge_accum(TENSOR_PARAMS(const __global V_T *, op),
                        TENSOR_PARAMS(const __global float *, lp),
                        __global float *acc, __global float *m, __global float *s,
                        long H, long Lq, long Dv, long rows, int first)
{
    const long row = get_global_id(0);
    if (row >= rows) return;
    const long3 bhi = clattn_decode_row(row, H, Lq);
    const float l = lp[lp_off + bhi.x * lp_s0 + bhi.y * lp_s1 + bhi.z * lp_s2];
    const long obase = op_off + bhi.x * op_s0 + bhi.y * op_s1 + bhi.z * op_s2;
    __global float *a = acc + row * Dv;
    float mo = first ? -INFINITY : m[row];
    float so = first ? 0.0f : s[row];
    if (l == -INFINITY) {
        /* nothing from this part; the first part still initialises the row */
        if (first) {
            for (long d = 0; d < Dv; d++) a[d] = 0.0f;
            m[row] = mo;
            s[row] = so;
        }
        return;
    }
    const float mn = fmax(mo, l);
    /* mo = -inf (nothing yet): its weight is 0, and exp(-inf - finite) is exactly 0 */
    const float wo = exp(mo - mn);
    const float wl = exp(l - mn);
    for (long d = 0; d < Dv; d++) {
        const float prev = first ? 0.0f : a[d];
        a[d] = prev * wo + wl * LOAD_V(op, obase + d * op_s3);
    }
    m[row] = mn;
    s[row] = so * wo + wl;
}

kernel void merge_finish(const __global float *acc, const __global float *m,
                         const __global float *s, TENSOR_PARAMS(__global O_T *, o),
                         __global float *lse, long lse_off, long lse_s0, long lse_s1,
                         long lse_s2, int has_lse, long H, long Lq, long Dv, long rows)
{
    const long row = get_global_id(0);
    if (row >= rows) return;
    const long3 bhi = clattn_decode_row(row, H, Lq);
    const float sum = s[row];
    const bool any = sum > 0.0f;
    const float inv = any ? 1.0f / sum : 0.0f;
    const long obase = o_off + bhi.x * o_s0 + bhi.y * o_s1 + bhi.z * o_s2;
    for (long d = 0; d < Dv; d++) STORE_O(o, obase + d * o_s3, acc[row * Dv + d] * inv);
    if (has_lse)
        lse[lse_off + bhi.x * lse_s0 + bhi.y * lse_s1 + bhi.z * lse_s2] =
            any ? m[row] + log(sum) : -INFINITY;
}
