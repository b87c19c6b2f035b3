/* unfused_softmax.cl: step 3 of the unfused path (and the CLBlast path): each row of a
 * chunk of masked scores becomes probabilities in place, p_j = exp(s_j - m) / sum, and
 * LSE = m + log(sum) is written when lse is not NULL. A row with no finite score (every key
 * excluded) becomes all zeros with LSE = -inf: exp(-inf - -inf) is never evaluated.
 * One work-group of WG work-items per row, reducing in local memory.
 * Build options: WG (a power of two). */


__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void unfused_softmax(__global float *S, long ldS, long row0, long nrows, long Hq, long Lq,
                     long Lk, __global float *lse, long lse_off, long lse_s0, long lse_s1,
                     long lse_s2)
{
    __local float red[WG];
    const int t = (int)get_local_id(0);
    const long r = get_group_id(1); /* the grid has exactly nrows groups: no bounds test,
                                       and no return before a barrier */
    __global float *s = S + r * ldS;

    float m = -INFINITY;
    for (long j = t; j < Lk; j += WG) m = fmax(m, s[j]);
    red[t] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = WG / 2; w > 0; w >>= 1) {
        if (t < w) red[t] = fmax(red[t], red[t + w]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);

    const bool empty = (m == -INFINITY);
    float sum = 0.0f;
    if (!empty)
        for (long j = t; j < Lk; j += WG) sum += exp(s[j] - m);
    red[t] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = WG / 2; w > 0; w >>= 1) {
        if (t < w) red[t] += red[t + w];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    sum = red[0];

    const float inv = empty ? 0.0f : 1.0f / sum;
    for (long j = t; j < Lk; j += WG) s[j] = empty ? 0.0f : exp(s[j] - m) * inv;
    if (lse) { /* LSE asked for (NULL otherwise) */
        if (t == 0) {
            const long row = row0 + r;
            const long3 bhi = clattn_decode_row(row, Hq, Lq);
            const long b = bhi.x, h = bhi.y, i = bhi.z;
            lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2] = empty ? -INFINITY : m + log(sum);
        }
    }
}
