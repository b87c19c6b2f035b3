/* backward.cl: the gradients of attention as FlashAttention-2 computes them, without
 * atomics (OpenCL 1.2 has none on floats): every gradient element is summed by exactly
 * one work-item in a fixed order, so results are bit-identical from run to run.
 * This file holds the kernels both tiled forms run; each form's dK, dV and dQ kernels are
 * in a file of their own, built as a program of their own (src/backward/backward.c):
 * cl/backward_gpu.cl (the GPU form, form 1: work-groups with local tiles) and
 * cl/backward_cpu.cl (the CPU form, form 0: one pass over the keys for all three
 * gradients). The commit of cl_mem outputs is cl/commit.cl's bwd_commit.
 *
 *   bwd_rowdot  global (B*Hq*Lq): D_i = dO_i · O_i into dl (float scratch, [B*Hq*Lq])
 *   bwd_dmask   global (mask elements): the float mask's gradient dLoss/ds, each element
 *               summed over the extents where the mask broadcasts (no tiles: it recomputes
 *               the scores it needs; FLOPs as one forward pass).
 *
 * Rows with LSE = -inf (every key excluded) contribute nothing. Scores go through the
 * prelude's SCORE, KEY_RANGE and BWD_TERMS, exactly as the forward kernels compute them.
 * Build options: D, DV; dtypes Q_DT K_DT V_DT O_DT DO_DT DQ_DT DK_DT DV_DT (prelude; 0 f32,
 * 1 f16, 2 bf16).
 */
#ifndef D
#error "backward.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif

/* The CPU form also gets, when qp or dop is not NULL, the row's Q and dO as dense float32
 * rows padded with zeros, qp [B*Hq*Lq, 16*DP16] and dop [B*Hq*Lq, 16*DVP16] (its kernel
 * reads each row once per key block, and strided loads with dtype conversion there cost
 * more than the arithmetic), and when part is not NULL zeros the row in each of the
 * nsplit partial dQ ([nsplit][B*Hq*Lq][16*DP16]). */
__kernel void bwd_rowdot(TENSOR_PARAMS(const __global Q_T *, q),
                         TENSOR_PARAMS(const __global O_T *, o),
                         TENSOR_PARAMS(const __global DO_T *, dout), __global float *dl,
                         __global float *qp, __global float *dop, __global float *part,
                         long nsplit, long B, long Hq, long Lq)
{
    QUERY_ROW_ITEM();
    const long ob = o_off + bhi.x * o_s0 + bhi.y * o_s1 + bhi.z * o_s2;
    const long db = dout_off + bhi.x * dout_s0 + bhi.y * dout_s1 + bhi.z * dout_s2;
    /* fma in the order the kernels compute dP = dO · V: a row that sees one key (O = V)
     * gets dP - D = 0 exactly */
    float s = 0.0f;
    for (int c = 0; c < DV; c++) s = fma(LOAD_DO(dout, db + c * dout_s3), LOAD_O(o, ob + c * o_s3), s);
    dl[row] = s;
    if (dop) {
        for (int c = 0; c < DV; c++) dop[row * (DVP16 * 16) + c] = LOAD_DO(dout, db + c * dout_s3);
        for (int c = DV; c < DVP16 * 16; c++) dop[row * (DVP16 * 16) + c] = 0.0f;
    }
    if (qp) {
        const long qb = q_off + bhi.x * q_s0 + bhi.y * q_s1 + bhi.z * q_s2;
        for (int d = 0; d < D; d++) qp[row * (DP16 * 16) + d] = LOAD_Q(q, qb + d * q_s3);
        for (int d = D; d < DP16 * 16; d++) qp[row * (DP16 * 16) + d] = 0.0f;
    }
    if (part)
        for (long sp = 0; sp < nsplit; sp++)
            for (int d = 0; d < DP16 * 16; d++) part[(sp * rows + row) * (DP16 * 16) + d] = 0.0f;
}

__kernel void bwd_dmask(TENSOR_PARAMS(const __global Q_T *, q),
                        TENSOR_PARAMS(const __global K_T *, k),
                        TENSOR_PARAMS(const __global V_T *, v),
                        TENSOR_PARAMS(const __global DO_T *, dout), const __global float *lse,
                        long lse_off, long lse_s0, long lse_s1, long lse_s2,
                        const __global float *dl, TENSOR_PARAMS(__global float *, dm), long mne0,
                        long mne1, long mne2, long mne3, MASK_PARAMS, long B, long Hq, long Hkv)
{
    MASK_GRAD_ELEMENT();
    float sum = 0.0f;
    MASK_GRAD_ROWS(
        const long2 kr = KEY_RANGE(b, i);
        const float dd = dl[(b * Hq + h) * Lq + i];
        const long qb = q_off + b * q_s0 + h * q_s1 + i * q_s2;
        const long db = dout_off + b * dout_s0 + h * dout_s1 + i * dout_s2;
        for (long j = max(k0, kr.x); j < min(k1, kr.y); j++) {
            const long kb = k_off + b * k_s0 + kvh * k_s1 + j * k_s2;
            const long vb = v_off + b * v_s0 + kvh * v_s1 + j * v_s2;
            float dot = 0.0f, dpv = 0.0f;
            for (int d = 0; d < D; d++)
                dot = mad(LOAD_Q(q, qb + d * q_s3), LOAD_K(k, kb + d * k_s3), dot);
            for (int c = 0; c < DV; c++)
                dpv = mad(LOAD_DO(dout, db + c * dout_s3), LOAD_V(v, vb + c * v_s3), dpv);
            float p, dsf, dsp;
            BWD_TERMS(dot, dpv, b, h, i, j, slope, l, dd, p, dsf, dsp);
            (void)dsp;
            sum += dsf;
        })
    dm[dm_off + a0 * dm_s0 + a1 * dm_s1 + a2 * dm_s2 + a3 * dm_s3] = sum;
}
