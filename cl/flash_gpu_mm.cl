/* flash_gpu_mm.cl: fused (flash) attention for GPUs as two register-blocked mini-GEMMs
 * per key tile (the fused path's "gpu-mm" form).
 *
 * One work-group of WG = TR x TC work-items owns BLOCK_M query rows of one (b, h).
 * Work-item (tr, tc) owns rows r = tr + rr * TR (rr < RM) throughout: for each tile of
 * BLOCK_N keys it computes the RM x RN scores of keys tc + c * TC (c < RN) from the Q
 * tile and a transposed K tile in local memory (S = Q K^T, RM * RN accumulators), then,
 * after the rows' maxima are combined, writes P to local memory and updates its RM x RD
 * block of O (columns tc + c * TC, c < RD) in registers: O += P V (RM * RD accumulators,
 * keys outer). Consecutive work-items of a row read consecutive local words in both
 * products, so neither has bank conflicts; the rows they share are broadcasts.
 *
 * Scores live in the log2 domain: Q is multiplied by scale * log2(e) once, as it is
 * loaded (when no softcap, ALiBi or additive mask needs the natural score; then SCORE
 * runs as in the prelude and the result is multiplied by log2(e)), so the softmax is
 * exp2 of a difference. A row's accumulators are rescaled only when its maximum moves.
 * Arithmetic and accumulation are float32 whatever the storage types.
 *
 * Schedule: dimension 0 of the grid is (b, h), dimension 1 the row block in zigzag order
 * (the last block, the first, the second last, the second, ...): under a causal mask the
 * last rows see the most keys, so the heaviest blocks of every head start first and light
 * ones fill in behind them on devices that hand out work-groups as units free up (GPUs),
 * while any contiguous run of groups holds as much work as another on devices that
 * split the grid into ranges (llvmpipe: heaviest-first alone left one thread with three
 * quarters of a causal problem, slower than full there). Only the key tiles
 * inside the union of the block's key ranges are visited (fully masked tiles are
 * skipped), and tiles inside every row's range skip the per-key range test.
 *
 *   flash_gpu_mm  global (B*Hq * WG, ceil(Lq / BLOCK_M)), local (WG, 1)
 *     (TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),
 *      TENSOR_PARAMS(const __global V_T *, v), TENSOR_PARAMS(__global O_T *, o),
 *      __global float *lse, long lse_off, long lse_s0, long lse_s1, long lse_s2,
 *      MASK_PARAMS, long B, long Hq, long Hkv)
 *   lse is NULL when no LSE is asked for. Q, K and V are read in place.
 *
 * Build options: D, DV (1..256); BLOCK_M, BLOCK_N; WG and TC (work-items along keys and
 * O columns, a power of two in 4..32 dividing WG and BLOCK_N; TR = WG / TC must divide
 * BLOCK_M); QK_VEC, V_VEC (1: Q and K / V rows are contiguous along the head dim, which
 * is a multiple of 4, and stored as f32 or f16: loaded as 4-vectors); SG_REDUCE, SG_INTEL
 * (below: subgroup reductions, a variant behind a probe). Local memory, in
 * floats (clattn__fused_gpu_mm_local_bytes):
 *   BLOCK_M*D + max(D*(BLOCK_N + 1), BLOCK_N*DV) + BLOCK_M*(BLOCK_N + 1) + BLOCK_M*TC
 */
#ifndef D
#error "flash_gpu_mm.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif
#ifndef WG
#define WG 128
#endif
#ifndef TC
#define TC 16
#endif
#ifndef BLOCK_M
#define BLOCK_M 32
#endif
#ifndef BLOCK_N
#define BLOCK_N 32
#endif
#ifndef QK_VEC
#define QK_VEC 0
#endif
#ifndef V_VEC
#define V_VEC 0
#endif
/* SG_REDUCE 1: the TC work-items of a row group are one subgroup (the host sets it only
 * when the subgroup probe measured a size of TC with subgroups as runs of consecutive
 * work-items, src/core/probe.c): row maxima and sums by sub_group_reduce_* instead of a
 * round trip through local memory. SG_INTEL: through cl_intel_subgroups. */
#ifndef SG_REDUCE
#define SG_REDUCE 0
#endif
#if SG_REDUCE
#if SG_INTEL
#pragma OPENCL EXTENSION cl_intel_subgroups : enable
#else
#pragma OPENCL EXTENSION cl_khr_subgroups : enable
#endif
#endif

#define TR (WG / TC)               /* row groups of the work-group */
#define RM (BLOCK_M / TR)          /* rows per work-item */
#define RN (BLOCK_N / TC)          /* keys per work-item and tile */
#define RD ((DV + TC - 1) / TC)    /* O columns per work-item */
#define KT_LD (BLOCK_N + 1)        /* transposed K tile: kt[d * KT_LD + j] */
#define PS_LD (BLOCK_N + 1)
#define KV_FLOATS (D * KT_LD > BLOCK_N * DV ? D * KT_LD : BLOCK_N * DV)
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
/* the natural score is needed per key (else scale * log2(e) is folded into Q) */
#define NATURAL_SCORE (HAS_SOFTCAP || HAS_ALIBI || MASK_KIND == 2)

#if (WG % TC) != 0 || (BLOCK_M % TR) != 0 || (BLOCK_N % TC) != 0
#error "flash_gpu_mm.cl: TC must divide WG and BLOCK_N, WG / TC must divide BLOCK_M"
#endif

#if Q_DT == 0
#define VLOAD4_Q(p) vload4(0, (p))
#elif Q_DT == 1
#define VLOAD4_Q(p) vload_half4(0, (p))
#endif
#if K_DT == 0
#define VLOAD4_K(p) vload4(0, (p))
#elif K_DT == 1
#define VLOAD4_K(p) vload_half4(0, (p))
#endif
#if V_DT == 0
#define VLOAD4_V(p) vload4(0, (p))
#elif V_DT == 1
#define VLOAD4_V(p) vload_half4(0, (p))
#endif
#if QK_VEC && (Q_DT == 2 || K_DT == 2 || D % 4 != 0)
#error "QK_VEC needs f32 or f16 Q and K and D a multiple of 4"
#endif
#if V_VEC && (V_DT == 2 || DV % 4 != 0)
#error "V_VEC needs f32 or f16 V and DV a multiple of 4"
#endif

__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void
flash_gpu_mm(FLASH_PARAMS)
{
    __local float qs[BLOCK_M * D];
    __local float kv[KV_FLOATS]; /* K tile (transposed), then V tile (rows) */
    __local float ps[BLOCK_M * PS_LD];
    __local float red[BLOCK_M * TC];

    const int t = (int)get_local_id(0);
    /* unsigned, so a power-of-two TC makes a mask and a shift: a signed / and % pair
     * becomes LLVM's `freeze`, which oclgrind's --uninitialized checker cannot follow */
    const int tc = (int)((uint)t % TC), tr = (int)((uint)t / TC);
    const long bh = get_group_id(0);
    /* zigzag: group g takes block nblk-1-g/2 (even g) or g/2 (odd g), heaviest first */
    const long nblk = (long)get_num_groups(1), g = (long)get_group_id(1);
    const long i0 = ((g & 1) ? g / 2 : nblk - 1 - g / 2) * BLOCK_M;
    /* whole work-groups leave together, before any barrier */
    if (i0 >= Lq || bh >= B * Hq) return;
    const long b = bh / Hq, h = bh - b * Hq;
    const long kvh = h / (Hq / Hkv);
    const long qbase = q_off + b * q_s0 + h * q_s1;
    const long kbase = k_off + b * k_s0 + kvh * k_s1;
    const long vbase = v_off + b * v_s0 + kvh * v_s1;
    const float slope = ALIBI_SLOPE(h);
#if NATURAL_SCORE
    const float qmul = 1.0f;
#else
    const float qmul = scale * LOG2E;
#endif

    /* Q rows of the block, scaled (rows past Lq read as zeros). */
#if QK_VEC
    for (int e = t; e < BLOCK_M * (D / 4); e += WG) {
        const int r = e / (D / 4), d4 = e - r * (D / 4);
        const long i = i0 + r;
        float4 x = (float4)(0.0f);
        if (i < Lq) x = VLOAD4_Q(q + qbase + i * q_s2 + 4 * d4) * qmul;
        vstore4(x, 0, qs + r * D + 4 * d4);
    }
#else
    for (int e = t; e < BLOCK_M * D; e += WG) {
        const int r = e / D, d = e - r * D;
        const long i = i0 + r;
        qs[e] = i < Lq ? LOAD_Q(q, qbase + i * q_s2 + d * q_s3) * qmul : 0.0f;
    }
#endif

    /* Key ranges: this work-item's rows; the union and intersection over the block. */
    FLASH_GPU_ROW_RANGES(b, lo, hi);
    const long4 blk = ROWS_KEY_RANGE(b, i0, BLOCK_M);
    const long jlo = blk.x, jhi = blk.y, ilo = blk.z, ihi = blk.w; /* union, intersection */

    FLASH_GPU_ROW_STATE(m, l, acc, RD);

    for (long j0 = jlo / BLOCK_N * BLOCK_N; j0 < jhi; j0 += BLOCK_N) {
        barrier(CLK_LOCAL_MEM_FENCE); /* qs written / previous V tile and P consumed */
        /* K tile, transposed: kv[d * KT_LD + jj]; keys past Lk read as zeros */
#if QK_VEC
        for (int e = t; e < BLOCK_N * (D / 4); e += WG) {
            const int jj = e / (D / 4), d4 = e - jj * (D / 4);
            const long j = j0 + jj;
            float4 x = (float4)(0.0f);
            if (j < Lk) x = VLOAD4_K(k + kbase + j * k_s2 + 4 * d4);
            kv[(4 * d4 + 0) * KT_LD + jj] = x.s0;
            kv[(4 * d4 + 1) * KT_LD + jj] = x.s1;
            kv[(4 * d4 + 2) * KT_LD + jj] = x.s2;
            kv[(4 * d4 + 3) * KT_LD + jj] = x.s3;
        }
#else
        for (int e = t; e < BLOCK_N * D; e += WG) {
            const int jj = e / D, d = e - jj * D;
            const long j = j0 + jj;
            kv[d * KT_LD + jj] = j < Lk ? LOAD_K(k, kbase + j * k_s2 + d * k_s3) : 0.0f;
        }
#endif
        barrier(CLK_LOCAL_MEM_FENCE);

        /* S = Q K^T: RM x RN per work-item */
        float s[RM][RN];
        for (int rr = 0; rr < RM; rr++)
            for (int c = 0; c < RN; c++) s[rr][c] = 0.0f;
        for (int d = 0; d < D; d++) {
            float kd[RN], qd[RM];
            for (int c = 0; c < RN; c++) kd[c] = kv[d * KT_LD + tc + c * TC];
            for (int rr = 0; rr < RM; rr++) qd[rr] = qs[(tr + rr * TR) * D + d];
            for (int rr = 0; rr < RM; rr++)
                for (int c = 0; c < RN; c++) s[rr][c] = mad(qd[rr], kd[c], s[rr][c]);
        }

        /* scores (log2 domain), and each row's max over this work-item's keys; a tile
         * inside every row's range needs no range test */
        const bool inside = j0 >= ilo && j0 + BLOCK_N <= ihi;
#if SG_REDUCE
        float rmax[RM];
#endif
        for (int rr = 0; rr < RM; rr++) {
            const long i = i0 + tr + rr * TR;
            float mx = -INFINITY;
            for (int c = 0; c < RN; c++) {
                const long j = j0 + tc + c * TC;
                float x = s[rr][c];
                if (!inside && (j < lo[rr] || j >= hi[rr])) {
                    x = -INFINITY;
                } else {
#if NATURAL_SCORE
                    x = SCORE(x, b, h, i, j, slope) * LOG2E;
#elif MASK_KIND == 1
                    if (mask[mask_off + b * mask_s0 + h * mask_s1 + i * mask_s2 + j * mask_s3] == 0)
                        x = -INFINITY; /* SPEC: a false boolean mask excludes the key */
#endif
                }
                s[rr][c] = x;
                mx = fmax(mx, x);
            }
#if SG_REDUCE
            rmax[rr] = sub_group_reduce_max(mx);
#else
            red[(tr + rr * TR) * TC + tc] = mx;
#endif
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* V tile into the K tile's place (every work-item is done reading K) */
#if V_VEC
        for (int e = t; e < BLOCK_N * (DV / 4); e += WG) {
            const int jj = e / (DV / 4), c4 = e - jj * (DV / 4);
            const long j = j0 + jj;
            float4 x = (float4)(0.0f);
            if (j < Lk) x = VLOAD4_V(v + vbase + j * v_s2 + 4 * c4);
            vstore4(x, 0, kv + jj * DV + 4 * c4);
        }
#else
        for (int e = t; e < BLOCK_N * DV; e += WG) {
            const int jj = e / DV, c = e - jj * DV;
            const long j = j0 + jj;
            kv[e] = j < Lk ? LOAD_V(v, vbase + j * v_s2 + c * v_s3) : 0.0f;
        }
#endif
        /* P, with the rows' new maxima; O rescaled only where the maximum moved */
        for (int rr = 0; rr < RM; rr++) {
            const int r = tr + rr * TR;
#if SG_REDUCE
            const float mx = fmax(m[rr], rmax[rr]);
#else
            float mx = m[rr];
            for (int u = 0; u < TC; u++) mx = fmax(mx, red[r * TC + u]);
#endif
            /* a row with nothing allowed yet keeps m = -inf; never exp2(-inf - -inf) */
            const float muse = mx == -INFINITY ? 0.0f : mx;
            float sum = 0.0f;
            for (int c = 0; c < RN; c++) {
                const float p = exp2(s[rr][c] - muse);
                sum += p;
                ps[r * PS_LD + tc + c * TC] = p;
            }
            if (mx > m[rr]) { /* uniform along the row: its TC work-items agree */
                const float alpha = exp2(m[rr] - mx); /* 0 when m was -inf */
                l[rr] *= alpha;
                for (int c = 0; c < RD; c++) acc[rr][c] *= alpha;
                m[rr] = mx;
            }
            l[rr] += sum;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* O += P V: RM x RD per work-item, keys outer */
        for (int jj = 0; jj < BLOCK_N; jj++) {
            float vj[RD];
            for (int c = 0; c < RD; c++) {
                const int col = tc + c * TC;
                vj[c] = col < DV ? kv[jj * DV + col] : 0.0f;
            }
            for (int rr = 0; rr < RM; rr++) {
                const float p = ps[(tr + rr * TR) * PS_LD + jj];
                for (int c = 0; c < RD; c++) acc[rr][c] = mad(p, vj[c], acc[rr][c]);
            }
        }
    }

    /* Combine the per-work-item sums of each row, then write O and LSE once. */
#if !SG_REDUCE
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int rr = 0; rr < RM; rr++) red[(tr + rr * TR) * TC + tc] = l[rr];
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    for (int rr = 0; rr < RM; rr++) {
        const int r = tr + rr * TR;
        const long i = i0 + r;
#if SG_REDUCE
        const float lt = sub_group_reduce_add(l[rr]);
#else
        float lt = 0.0f;
        for (int u = 0; u < TC; u++) lt += red[r * TC + u];
#endif
        if (i >= Lq) continue;
        FLASH_GPU_WRITE_ROW(b, h, i, acc[rr], RD, lt, (m[rr] + log2(lt)) * LN2);
    }
}
