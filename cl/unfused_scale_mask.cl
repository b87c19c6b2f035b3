/* unfused_scale_mask.cl: step 2 of the unfused path (and the CLBlast path), in place on
 * a chunk of raw scores: s = SCORE(dot) (scale, softcap, ALiBi, additive and boolean
 * masks) for keys inside the row's KEY_RANGE, -INFINITY outside it. Row r of the chunk is
 * the flattened row row0 + r of [B, Hq, Lq]. */

__kernel void unfused_scale_mask(__global float *S, long ldS, long row0, long nrows, long Hq,
                                 MASK_PARAMS)
{
    const long j = get_global_id(0);
    const long r = get_global_id(1);
    if (j >= Lk || r >= nrows) return;
    const long row = row0 + r;
    const long3 bhi = clattn_decode_row(row, Hq, Lq);
    const long b = bhi.x, h = bhi.y, i = bhi.z;
    const long2 range = KEY_RANGE(b, i);
    __global float *s = S + r * ldS + j;
    if (j < range.x || j >= range.y)
        *s = -INFINITY;
    else
        *s = SCORE(*s, b, h, i, j, ALIBI_SLOPE(h));
}
