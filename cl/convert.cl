/* convert.cl: copies between a strided tensor of any storage type and dense float32 rows,
 * for the CLBlast path. CLBlast's GEMMs read and write float32 matrices with one unit
 * stride; f16/bf16 tensors, and layouts with no unit stride, go through these copies.
 * Rows are the flattened rows of a [B, H, L, X] tensor, so one chunk of query rows (or
 * every row of K or V) is one launch. Build options: IN_DT (gather's source type) and
 * OUT_DT (scatter's destination type), with the prelude's dtype numbering. */

#ifndef IN_DT
#define IN_DT 0
#endif
#ifndef OUT_DT
#define OUT_DT 0
#endif
#define IN_T CLATTN_CAT(CLATTN_DT_, IN_DT)
#define OUT_T CLATTN_CAT(CLATTN_DT_, OUT_DT)

/* dst[r * ld + x] = src[b, h, i, x] for rows row0 + r = (b, h, i), r < nrows, x < X. */
__kernel void convert_gather_rows(TENSOR_PARAMS(const __global IN_T *, src),
                                  __global float *dst, long ld, long row0, long nrows, long H,
                                  long L, long X)
{
    const long x = get_global_id(0);
    const long r = get_global_id(1);
    if (x >= X || r >= nrows) return;
    const long3 bhi = clattn_decode_row(row0 + r, H, L);
    const long at = src_off + bhi.x * src_s0 + bhi.y * src_s1 + bhi.z * src_s2 + x * src_s3;
    dst[r * ld + x] = CLATTN_CAT(clattn_load, IN_DT)(src, at);
}

/* dst[b, h, i, x] = src[r * ld + x]: the inverse, writing only the tensor's elements (a
 * padded view keeps its padding). */
__kernel void convert_scatter_rows(const __global float *src, long ld,
                                   TENSOR_PARAMS(__global OUT_T *, dst), long row0, long nrows,
                                   long H, long L, long X)
{
    const long x = get_global_id(0);
    const long r = get_global_id(1);
    if (x >= X || r >= nrows) return;
    const long3 bhi = clattn_decode_row(row0 + r, H, L);
    const long at = dst_off + bhi.x * dst_s0 + bhi.y * dst_s1 + bhi.z * dst_s2 + x * dst_s3;
    CLATTN_CAT(clattn_store, OUT_DT)(dst, at, src[r * ld + x]);
}
