/* backward_gpu.cl: the backward pass's GPU form (form 1 of the tuning layer's backward
 * path; bwd_rowdot and bwd_dmask, which both forms run, are in cl/backward.cl).
 *
 *   bwd_dkdv    global (ceil(Lk/BN)*WG, B*Hkv), local (WG, 1): one work-group per block of
 *               BN keys of one KV head; for every query head of its GQA group and every
 *               tile of BM query rows that can see the block, P is recomputed from Q, K
 *               and LSE, then dV += Pᵀ dO and dK += scale · dSᵀ Q, dS = P ∘ (dO Vᵀ - D)
 *               (times softcap's 1 - tanh²). Query tiles no row of which sees the block
 *               (causal, window, key lengths) are skipped.
 *   bwd_dq      global (ceil(Lq/BM)*WG, B*Hq), local (WG, 1): one work-group per BM query
 *               rows; dQ = scale · dS K over the key tiles the rows can see.
 *
 * Build options: D, DV, BM, BN, WG; dtypes as cl/backward.cl. Local memory in floats,
 * which the host keeps within its budget (src/backward/backward.c):
 *     (BM + BN) * (D + DV) + 2 * BM * BN + 4 * BM
 */
#ifndef D
#error "backward_gpu.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif
#ifndef BM
#define BM 32
#endif
#ifndef BN
#define BN 16
#endif
#ifndef WG
#define WG 64
#endif

/* Per-work-item accumulators of the dK/dV and dQ tiles. */
#define KU ((BN * D + WG - 1) / WG)
#define VU ((BN * DV + WG - 1) / WG)
#define QU ((BM * D + WG - 1) / WG)

/* Load BM query rows (b, h, i0..) of Q, dO, LSE, D and key ranges into local memory;
 * rows past Lq get an empty range. */
#define LOAD_ROWS(b, h, i0)                                                              \
    do {                                                                                 \
        for (int e = t; e < BM * D; e += WG) {                                           \
            const int r = e / D, d = e - r * D;                                          \
            const long i = (i0) + r;                                                     \
            qs[e] = i < Lq ? LOAD_Q(q, q_off + (b) * q_s0 + (h) * q_s1 + i * q_s2 + d * q_s3) \
                           : 0.0f;                                                       \
        }                                                                                \
        for (int e = t; e < BM * DV; e += WG) {                                          \
            const int r = e / DV, c = e - r * DV;                                        \
            const long i = (i0) + r;                                                     \
            dos[e] = i < Lq ? LOAD_DO(dout, dout_off + (b) * dout_s0 + (h) * dout_s1 +   \
                                                i * dout_s2 + c * dout_s3)               \
                            : 0.0f;                                                      \
        }                                                                                \
        for (int r = t; r < BM; r += WG) {                                               \
            const long i = (i0) + r;                                                     \
            long2 kr = (long2)(0, 0);                                                    \
            float l = -INFINITY, dd = 0.0f;                                              \
            if (i < Lq) {                                                                \
                kr = KEY_RANGE((b), i);                                                  \
                l = lse[lse_off + (b) * lse_s0 + (h) * lse_s1 + i * lse_s2];             \
                dd = dl[((b) * Hq + (h)) * Lq + i];                                      \
            }                                                                            \
            rl[r] = l;                                                                   \
            rd[r] = dd;                                                                  \
            rlo[r] = (int)kr.x;                                                        \
            rhi[r] = (int)kr.y;                                                        \
        }                                                                                \
    } while (0)

/* Load BN keys (b, kvh, j0..) of K and V into local memory (zeros past Lk). */
#define LOAD_KEYS(b, kvh, j0)                                                            \
    do {                                                                                 \
        for (int e = t; e < BN * D; e += WG) {                                           \
            const int jj = e / D, d = e - jj * D;                                        \
            const long j = (j0) + jj;                                                    \
            ks[e] = j < Lk ? LOAD_K(k, k_off + (b) * k_s0 + (kvh) * k_s1 + j * k_s2 + d * k_s3) \
                           : 0.0f;                                                       \
        }                                                                                \
        for (int e = t; e < BN * DV; e += WG) {                                          \
            const int jj = e / DV, c = e - jj * DV;                                      \
            const long j = (j0) + jj;                                                    \
            vs[e] = j < Lk ? LOAD_V(v, v_off + (b) * v_s0 + (kvh) * v_s1 + j * v_s2 + c * v_s3) \
                           : 0.0f;                                                       \
        }                                                                                \
    } while (0)

/* P and dS of the tile (rows i0.., keys j0..) into ps and dss (ps may be skipped). Key
 * bounds are ints in local memory (the host refuses more than 2^31 - 1 keys). */
#define TILE_TERMS(b, h, i0, j0, slope, want_p)                                          \
    do {                                                                                 \
        for (int e = t; e < BM * BN; e += WG) {                                          \
            const int r = e / BN, jj = e - r * BN;                                       \
            const long i = (i0) + r, j = (j0) + jj;                                      \
            float p = 0.0f, dsf = 0.0f, dsp = 0.0f;                                      \
            if (j >= rlo[r] && j < rhi[r] && rl[r] != -INFINITY) {         \
                float dot = 0.0f, dpv = 0.0f;                                            \
                for (int d = 0; d < D; d++) dot = mad(qs[r * D + d], ks[jj * D + d], dot); \
                for (int c = 0; c < DV; c++) dpv = fma(dos[r * DV + c], vs[jj * DV + c], dpv); \
                BWD_TERMS(dot, dpv, (b), (h), i, j, (slope), rl[r], rd[r], p, dsf, dsp); \
            }                                                                            \
            if (want_p) ps[e] = p;                                                       \
            dss[e] = dsp;                                                                \
        }                                                                                \
    } while (0)

__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void
bwd_dkdv(TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),
         TENSOR_PARAMS(const __global V_T *, v), TENSOR_PARAMS(const __global DO_T *, dout),
         const __global float *lse, long lse_off, long lse_s0, long lse_s1, long lse_s2,
         const __global float *dl, TENSOR_PARAMS(__global DK_T *, dk),
         TENSOR_PARAMS(__global DV_T *, dv), MASK_PARAMS, long B, long Hq, long Hkv)
{
    __local float qs[BM * D], dos[BM * DV], ks[BN * D], vs[BN * DV];
    __local float ps[BM * BN], dss[BM * BN], rl[BM], rd[BM];
    __local int rlo[BM], rhi[BM];
    const int t = (int)get_local_id(0);
    const long j0 = (long)get_group_id(0) * BN;
    const long bk = get_global_id(1);
    if (j0 >= Lk || bk >= B * Hkv) return; /* whole work-groups, before any barrier */
    const long b = bk / Hkv, kvh = bk - b * Hkv;
    const long group = Hq / Hkv;
    const long j1 = min(j0 + BN, Lk);

    LOAD_KEYS(b, kvh, j0);
    float dka[KU], dva[VU];
    for (int u = 0; u < KU; u++) dka[u] = 0.0f;
    for (int u = 0; u < VU; u++) dva[u] = 0.0f;

    for (long g = 0; g < group; g++) {
        const long h = kvh * group + g;
        const float slope = ALIBI_SLOPE(h);
        for (long i0 = 0; i0 < Lq; i0 += BM) {
            /* the same answer in every work-item, so the skip is uniform */
            bool any = false;
            for (int r = 0; r < BM && i0 + r < Lq && !any; r++) {
                const long2 kr = KEY_RANGE(b, i0 + r);
                any = kr.x < j1 && kr.y > j0 && kr.x < kr.y;
            }
            if (!any) continue;
            barrier(CLK_LOCAL_MEM_FENCE); /* the previous tile is consumed */
            LOAD_ROWS(b, h, i0);
            barrier(CLK_LOCAL_MEM_FENCE);
            TILE_TERMS(b, h, i0, j0, slope, 1);
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int u = 0; u < KU; u++) {
                const int e = t + u * WG;
                if (e >= BN * D) break;
                const int jj = e / D, d = e - jj * D;
                float a = dka[u];
                for (int r = 0; r < BM; r++) a = mad(dss[r * BN + jj], qs[r * D + d], a);
                dka[u] = a;
            }
            for (int u = 0; u < VU; u++) {
                const int e = t + u * WG;
                if (e >= BN * DV) break;
                const int jj = e / DV, c = e - jj * DV;
                float a = dva[u];
                for (int r = 0; r < BM; r++) a = mad(ps[r * BN + jj], dos[r * DV + c], a);
                dva[u] = a;
            }
        }
    }
    for (int u = 0; u < KU; u++) {
        const int e = t + u * WG;
        if (e >= BN * D) break;
        const int jj = e / D, d = e - jj * D;
        const long j = j0 + jj;
        if (j < Lk) STORE_DK(dk, dk_off + b * dk_s0 + kvh * dk_s1 + j * dk_s2 + d * dk_s3, scale * dka[u]);
    }
    for (int u = 0; u < VU; u++) {
        const int e = t + u * WG;
        if (e >= BN * DV) break;
        const int jj = e / DV, c = e - jj * DV;
        const long j = j0 + jj;
        if (j < Lk) STORE_DV(dv, dv_off + b * dv_s0 + kvh * dv_s1 + j * dv_s2 + c * dv_s3, dva[u]);
    }
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void
bwd_dq(TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),
       TENSOR_PARAMS(const __global V_T *, v), TENSOR_PARAMS(const __global DO_T *, dout),
       const __global float *lse, long lse_off, long lse_s0, long lse_s1, long lse_s2,
       const __global float *dl, TENSOR_PARAMS(__global DQ_T *, dq), MASK_PARAMS, long B,
       long Hq, long Hkv)
{
    __local float qs[BM * D], dos[BM * DV], ks[BN * D], vs[BN * DV];
    __local float dss[BM * BN], rl[BM], rd[BM];
    __local int rlo[BM], rhi[BM];
    const int t = (int)get_local_id(0);
    const long i0 = (long)get_group_id(0) * BM;
    const long bh = get_global_id(1);
    if (i0 >= Lq || bh >= B * Hq) return;
    const long b = bh / Hq, h = bh - b * Hq;
    const long kvh = h / (Hq / Hkv);
    const float slope = ALIBI_SLOPE(h);

    LOAD_ROWS(b, h, i0);
    /* the union of the rows' key ranges, the same in every work-item */
    const long4 blk = ROWS_KEY_RANGE(b, i0, BM);
    const long jlo = blk.x, jhi = blk.y;
    float dqa[QU];
    for (int u = 0; u < QU; u++) dqa[u] = 0.0f;
    for (long j0 = jlo / BN * BN; j0 < jhi; j0 += BN) {
        barrier(CLK_LOCAL_MEM_FENCE); /* rows loaded / previous keys consumed */
        LOAD_KEYS(b, kvh, j0);
        barrier(CLK_LOCAL_MEM_FENCE);
        __local float *ps = dss; /* unused: TILE_TERMS(.., 0) writes dss only */
        TILE_TERMS(b, h, i0, j0, slope, 0);
        (void)ps;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int u = 0; u < QU; u++) {
            const int e = t + u * WG;
            if (e >= BM * D) break;
            const int r = e / D, d = e - r * D;
            float a = dqa[u];
            for (int jj = 0; jj < BN; jj++) a = mad(dss[r * BN + jj], ks[jj * D + d], a);
            dqa[u] = a;
        }
    }
    for (int u = 0; u < QU; u++) {
        const int e = t + u * WG;
        if (e >= BM * D) break;
        const int r = e / D, d = e - r * D;
        const long i = i0 + r;
        if (i < Lq) STORE_DQ(dq, dq_off + b * dq_s0 + h * dq_s1 + i * dq_s2 + d * dq_s3, scale * dqa[u]);
    }
}

