/* flash_gpu.cl: fused (flash) attention for GPUs: work-groups cooperating through
 * local memory (FlashAttention-2's schedule in OpenCL 1.2).
 *
 * One work-group of WG = TR x 16 work-items owns BLOCK_M query rows of one (b, h). Q of
 * those rows stays in local memory; for each tile of BLOCK_N keys inside the block's key
 * range, the group loads K (then V, into the same local array), every work-item computes
 * the scores of RM = BLOCK_M / TR rows x SC = BLOCK_N / 16 keys, the rows' running max
 * is combined through local memory, and P·V is accumulated into per-work-item registers
 * (RM rows x ceil(DV / 16) columns). The running sums stay per work-item (every
 * rescaling factor is uniform along a row) and are combined once at the end. O and LSE
 * are written once. Scores use the prelude's SCORE and KEY_RANGE as they are.
 *
 *   flash_gpu  global (ceil(Lq / BLOCK_M) * WG, B*Hq), local (WG, 1)
 *     (TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),
 *      TENSOR_PARAMS(const __global V_T *, v), TENSOR_PARAMS(__global O_T *, o),
 *      __global float *lse, long lse_off, long lse_s0, long lse_s1, long lse_s2,
 *      MASK_PARAMS,
 *      long B, long Hq, long Hkv)
 *   lse is NULL when no LSE is asked for. K and V are read in place (any dtype, any strides),
 *   so this form needs no scratch.
 *
 * Build options: D, DV (1..256), BLOCK_M (a multiple of WG / 16), BLOCK_N (a multiple
 * of 16), WG (a multiple of 16); VARLEN 1: packed sequences in one launch (B = 1), the
 * kernel ending with VARLEN_PARAMS (prelude.cl), on (vl_blocks * WG, Hq). Local memory, in floats:
 *   BLOCK_M*D + BLOCK_N*(max(D, DV) + 1) + BLOCK_M*(BLOCK_N + 1) + BLOCK_M*16
 * which the host keeps within the device's local memory (src/paths/fused.c).
 * Where it was checked and what it measured: docs/measurements.md.
 * P·V runs key-inner per output column: the register-blocked order (keys outer, RM x OC
 * accumulators updated per key) gave wrong rows or heap corruption on PoCL 3.1 at some
 * sizes (correct under oclgrind and with -cl-opt-disable), so it was not kept.
 */
#ifndef D
#error "flash_gpu.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif
#ifndef WG
#define WG 128
#endif
#ifndef BLOCK_M
#define BLOCK_M 32
#endif
#ifndef BLOCK_N
#define BLOCK_N 32
#endif

#define TC 16               /* work-items along a row */
#define TR (WG / TC)        /* row groups */
#define RM (BLOCK_M / TR)   /* rows per work-item */
#define SC (BLOCK_N / TC)   /* scores per row and work-item */
#define OC ((DV + TC - 1) / TC) /* output columns per row and work-item */
#define DMAX (D > DV ? D : DV)
#define KS_LD (DMAX + 1)    /* K/V tile row stride (odd: no bank conflicts) */
#define PS_LD (BLOCK_N + 1)

#if (WG % TC) != 0 || (BLOCK_M % TR) != 0 || (BLOCK_N % TC) != 0
#error "flash_gpu.cl: WG must be a multiple of 16, BLOCK_M of WG/16, BLOCK_N of 16"
#endif

__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void
flash_gpu(FLASH_PARAMS VARLEN_PARAMS)
{
    __local float qs[BLOCK_M * D];
    __local float kvs[BLOCK_N * KS_LD]; /* K tile, then V tile */
    __local float ps[BLOCK_M * PS_LD];
    __local float red[BLOCK_M * TC];

    const int t = (int)get_local_id(0);
    const int tc = t % TC, tr = t / TC;
#if VARLEN
    /* a work-group per entry of the table's row blocks (prelude.cl) */
    if ((long)get_group_id(0) >= vl_blocks || get_global_id(1) >= B * Hq) return;
    VARLEN_ITEM(get_global_id(1) * vl_blocks + (long)get_group_id(0), B * Hq, s_, bh, i0);
    VARLEN_SEQ(s_);
#else
    const long i0 = (long)get_group_id(0) * BLOCK_M;
    const long bh = get_global_id(1);
    /* whole work-groups leave together, before any barrier */
    if (i0 >= Lq || bh >= B * Hq) return;
#endif
    const long b = bh / Hq, h = bh - b * Hq;
    const long kvh = h / (Hq / Hkv);
    const long kbase = k_off + b * k_s0 + kvh * k_s1;
    const long vbase = v_off + b * v_s0 + kvh * v_s1;
    const float slope = ALIBI_SLOPE(h);

    /* Q rows of the block (rows past Lq read as zeros). */
    for (int e = t; e < BLOCK_M * D; e += WG) {
        const int r = e / D, d = e - r * D;
        const long i = i0 + r;
        qs[e] = i < Lq ? LOAD_Q(q, q_off + b * q_s0 + h * q_s1 + i * q_s2 + d * q_s3) : 0.0f;
    }

    /* Key ranges: this work-item's rows, and the union over the block. */
    FLASH_GPU_ROW_RANGES(b, lo, hi);
    const long4 blk = ROWS_KEY_RANGE(b, i0, BLOCK_M);
    const long jlo = blk.x, jhi = blk.y;

    FLASH_GPU_ROW_STATE(m, l, acc, OC);

    for (long j0 = jlo / BLOCK_N * BLOCK_N; j0 < jhi; j0 += BLOCK_N) {
        barrier(CLK_LOCAL_MEM_FENCE); /* qs written / previous V tile consumed */
        for (int e = t; e < BLOCK_N * D; e += WG) {
            const int jj = e / D, d = e - jj * D;
            const long j = j0 + jj;
            kvs[jj * KS_LD + d] = j < Lk ? LOAD_K(k, kbase + j * k_s2 + d * k_s3) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        float s[RM][SC];
        for (int rr = 0; rr < RM; rr++)
            for (int c = 0; c < SC; c++) s[rr][c] = 0.0f;
        for (int d = 0; d < D; d++) {
            float kd[SC];
            for (int c = 0; c < SC; c++) kd[c] = kvs[(tc + c * TC) * KS_LD + d];
            for (int rr = 0; rr < RM; rr++) {
                const float qd = qs[(tr + rr * TR) * D + d];
                for (int c = 0; c < SC; c++) s[rr][c] = mad(qd, kd[c], s[rr][c]);
            }
        }

        /* scores, and each row's max over this work-item's keys */
        for (int rr = 0; rr < RM; rr++) {
            const long i = i0 + tr + rr * TR;
            float mx = -INFINITY;
            for (int c = 0; c < SC; c++) {
                const long j = j0 + tc + c * TC;
                float x = -INFINITY;
                if (j >= lo[rr] && j < hi[rr]) x = SCORE(s[rr][c], b, h, i, j, slope);
                s[rr][c] = x;
                mx = fmax(mx, x);
            }
            red[(tr + rr * TR) * TC + tc] = mx;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* V tile into the K tile's place (every work-item is done reading K) */
        for (int e = t; e < BLOCK_N * DV; e += WG) {
            const int jj = e / DV, c = e - jj * DV;
            const long j = j0 + jj;
            kvs[jj * KS_LD + c] = j < Lk ? LOAD_V(v, vbase + j * v_s2 + c * v_s3) : 0.0f;
        }
        for (int rr = 0; rr < RM; rr++) {
            const int r = tr + rr * TR;
            float mx = m[rr];
            for (int u = 0; u < TC; u++) mx = fmax(mx, red[r * TC + u]);
            /* a row with nothing allowed yet keeps m = -inf; never exp(-inf - -inf) */
            const float muse = mx == -INFINITY ? 0.0f : mx;
            const float alpha = exp(m[rr] - muse);
            float sum = 0.0f;
            for (int c = 0; c < SC; c++) {
                const float p = exp(s[rr][c] - muse);
                sum += p;
                ps[r * PS_LD + tc + c * TC] = p;
            }
            l[rr] = l[rr] * alpha + sum;
            m[rr] = mx;
            for (int c = 0; c < OC; c++) acc[rr][c] *= alpha;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        for (int rr = 0; rr < RM; rr++) {
            const int r = tr + rr * TR;
            for (int c = 0; c < OC; c++) {
                const int col = tc + c * TC;
                if (col >= DV) break;
                float a = acc[rr][c];
                for (int jj = 0; jj < BLOCK_N; jj++)
                    a = mad(ps[r * PS_LD + jj], kvs[jj * KS_LD + col], a);
                acc[rr][c] = a;
            }
        }
    }

    /* Combine the per-work-item sums of each row, then write O and LSE once. */
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int rr = 0; rr < RM; rr++) red[(tr + rr * TR) * TC + tc] = l[rr];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int rr = 0; rr < RM; rr++) {
        const int r = tr + rr * TR;
        const long i = i0 + r;
        float lt = 0.0f;
        for (int u = 0; u < TC; u++) lt += red[r * TC + u];
        if (i >= Lq) continue;
        FLASH_GPU_WRITE_ROW(b, h, i, acc[rr], OC, lt, m[rr] + log(lt));
    }
}
