/* backward.cl: the gradients of attention as FlashAttention-2 computes them, without
 * atomics (OpenCL 1.2 has none on floats): every gradient element is summed by exactly
 * one work-item in a fixed order, so results are bit-identical from run to run.
 *
 *   bwd_rowdot  global (B*Hq*Lq): D_i = dO_i · O_i into dl (float scratch, [B*Hq*Lq])
 *   bwd_dkdv    global (ceil(Lk/BN)*WG, B*Hkv), local (WG, 1): one work-group per block of
 *               BN keys of one KV head; for every query head of its GQA group and every
 *               tile of BM query rows that can see the block, P is recomputed from Q, K
 *               and LSE, then dV += Pᵀ dO and dK += scale · dSᵀ Q, dS = P ∘ (dO Vᵀ - D)
 *               (times softcap's 1 - tanh²). Query tiles no row of which sees the block
 *               (causal, window, key lengths) are skipped.
 *   bwd_dq      global (ceil(Lq/BM)*WG, B*Hq), local (WG, 1): one work-group per BM query
 *               rows; dQ = scale · dS K over the key tiles the rows can see.
 *   bwd_dmask   global (mask elements): the float mask's gradient dLoss/ds, each element
 *               summed over the extents where the mask broadcasts (no tiles: it recomputes
 *               the scores it needs; FLOPs as one forward pass).
 *   bwd_commit  global (max span): scratch copies of cl_mem outputs into the caller's
 *               buffers in one launch (a failed call leaves them as they were).
 *
 * Rows with LSE = -inf (every key excluded) contribute nothing. Scores go through the
 * prelude's SCORE and KEY_RANGE, exactly as the forward kernels compute them.
 * The dK/dV and dQ kernels above are the GPU form (FORM 1); FORM 0 replaces them with the
 * CPU form further down (bwd_cpu_pack, bwd_cpu_dkdv, bwd_cpu_dq).
 * Build options: D, DV, FORM; GPU form BM, BN, WG; CPU form MB, KW, K_DIRECT; dtypes
 * Q_DT K_DT V_DT O_DT (prelude) and DO_DT DQ_DT DK_DT DV_DT (0 f32, 1 f16, 2 bf16). Local
 * memory of the GPU form in floats, which the host keeps within its budget (src/backward.c):
 *     (BM + BN) * (D + DV) + 2 * BM * BN + 4 * BM
 */
#ifndef D
#error "backward.cl needs -DD=<head dim of q and k>"
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
#ifndef FORM
#define FORM 1 /* 0: the CPU form below, 1: work-groups with local tiles */
#endif
#ifndef DO_DT
#define DO_DT 0
#endif
#ifndef DQ_DT
#define DQ_DT 0
#endif
#ifndef DK_DT
#define DK_DT 0
#endif
#ifndef DV_DT
#define DV_DT 0
#endif

#define DO_T CLATTN_CAT(CLATTN_DT_, DO_DT)
#define DQ_T CLATTN_CAT(CLATTN_DT_, DQ_DT)
#define DK_T CLATTN_CAT(CLATTN_DT_, DK_DT)
#define DV_T CLATTN_CAT(CLATTN_DT_, DV_DT)
#define LOAD_O(p, i) CLATTN_CAT(clattn_load, O_DT)((p), (i))
#define LOAD_DO(p, i) CLATTN_CAT(clattn_load, DO_DT)((p), (i))
#define STORE_DQ(p, i, x) CLATTN_CAT(clattn_store, DQ_DT)((p), (i), (x))
#define STORE_DK(p, i, x) CLATTN_CAT(clattn_store, DK_DT)((p), (i), (x))
#define STORE_DV(p, i, x) CLATTN_CAT(clattn_store, DV_DT)((p), (i), (x))

/* Per-work-item accumulators of the dK/dV and dQ tiles. */
#define KU ((BN * D + WG - 1) / WG)
#define VU ((BN * DV + WG - 1) / WG)
#define QU ((BM * D + WG - 1) / WG)

/* d(softcap·tanh(x/softcap))/dx at x = scale·dot. */
#if HAS_SOFTCAP
#define SOFTCAP_DERIV(dot)                                                               \
    (1.0f - tanh(scale * (dot) / softcap) * tanh(scale * (dot) / softcap))
#else
#define SOFTCAP_DERIV(dot) 1.0f
#endif

/* p and dS of key j for row (b, h, i), with j inside the row's key range: dsf is dLoss/ds
 * of the final score (the mask's gradient), dsp the one before the softcap (for dQ, dK). */
#define BWD_TERMS(dot, dpv, b, h, i, j, slope, lse_r, dl_r, p, dsf, dsp)                  \
    do {                                                                                 \
        const float s_ = SCORE((dot), (b), (h), (i), (j), (slope));                      \
        (p) = (s_ == -INFINITY || (lse_r) == -INFINITY) ? 0.0f : exp(s_ - (lse_r));      \
        (dsf) = (p) * ((dpv) - (dl_r));                                                  \
        (dsp) = (dsf) * SOFTCAP_DERIV(dot);                                              \
    } while (0)

/* Also, when qp is not NULL (the CPU form), the row's Q and dO as dense float32 rows
 * qp [B*Hq*Lq, D] and dop [B*Hq*Lq, DV]: the CPU kernels read each row once per key tile,
 * and strided loads with dtype conversion there cost more than the arithmetic. */
__kernel void bwd_rowdot(TENSOR_PARAMS(const __global Q_T *, q),
                         TENSOR_PARAMS(const __global O_T *, o),
                         TENSOR_PARAMS(const __global DO_T *, dout), __global float *dl,
                         __global float *qp, __global float *dop, long B, long Hq, long Lq)
{
    const long row = get_global_id(0);
    if (row >= B * Hq * Lq) return;
    const long3 bhi = clattn_decode_row(row, Hq, Lq);
    const long ob = o_off + bhi.x * o_s0 + bhi.y * o_s1 + bhi.z * o_s2;
    const long db = dout_off + bhi.x * dout_s0 + bhi.y * dout_s1 + bhi.z * dout_s2;
    float s = 0.0f;
    for (int c = 0; c < DV; c++) {
        const float g = LOAD_DO(dout, db + c * dout_s3);
        s = mad(LOAD_O(o, ob + c * o_s3), g, s);
        if (qp) dop[row * DV + c] = g;
    }
    dl[row] = s;
    if (qp) {
        const long qb = q_off + bhi.x * q_s0 + bhi.y * q_s1 + bhi.z * q_s2;
        for (int d = 0; d < D; d++) qp[row * D + d] = LOAD_Q(q, qb + d * q_s3);
    }
}

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
                for (int c = 0; c < DV; c++) dpv = mad(dos[r * DV + c], vs[jj * DV + c], dpv); \
                BWD_TERMS(dot, dpv, (b), (h), i, j, (slope), rl[r], rd[r], p, dsf, dsp); \
            }                                                                            \
            if (want_p) ps[e] = p;                                                       \
            dss[e] = dsp;                                                                \
        }                                                                                \
    } while (0)

#if FORM == 1
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
    long jlo = Lk, jhi = 0;
    for (int r = 0; r < BM && i0 + r < Lq; r++) {
        const long2 kr = KEY_RANGE(b, i0 + r);
        if (kr.x < kr.y) {
            jlo = min(jlo, kr.x);
            jhi = max(jhi, kr.y);
        }
    }
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

#endif /* FORM == 1 */

#if FORM == 0
/* ---- The CPU form (FORM 0) ---------------------------------------------------------
 * As cl/flash_cpu.cl does for the forward: no local memory, no barriers, one work-item per
 * block, and every product a rank-1 update "broadcast scalar x float16 vector" over the
 * keys of a tile of TW = 16*KW keys, on packed float32 copies of K and V made per call by
 * bwd_cpu_pack (NT = ceil(Lk/TW) tiles, zero padded):
 *   kt [B*Hkv, NT, D, TW]   K transposed tile by tile
 *   vt [B*Hkv, NT, DV, TW]  V the same
 *   kp [B*Hkv, NT*TW, DP]   K rows padded to DP (a multiple of 16) for dQ += dS K
 *                           (not made when K_DIRECT: K itself has such rows)
 *   bwd_cpu_pack  global (NT*TW, B*Hkv)
 *   bwd_cpu_dkdv  global (NT, B*Hkv): one tile per work-item; dK and dV of its keys held
 *                 transposed in private float16 vectors, over every query row (of every
 *                 head of the group) whose key range meets the tile, RB rows per step
 *   bwd_cpu_dq    global (ceil(Lq/MB), B*Hq): MB query rows per work-item
 * KW > 1 reuses each broadcast row value across KW vectors: fewer loads per FMA. */
#ifndef MB
#define MB 4
#endif
#ifndef KW
#define KW 1
#endif
#define TW (16 * KW)
#ifndef K_DIRECT
#define K_DIRECT 0 /* 1: dQ reads K rows in place (f32, unit stride, D % 16 == 0): no kp */
#endif
#define DP16 ((D + 15) / 16)

__kernel void bwd_cpu_pack(TENSOR_PARAMS(const __global K_T *, k),
                           TENSOR_PARAMS(const __global V_T *, v), long B, long Hkv, long Lk,
                           long nt, __global float *kt, __global float *vt, __global float *kp)
{
    const long j = get_global_id(0), bk = get_global_id(1);
    if (j >= nt * TW || bk >= B * Hkv) return;
    const long b = bk / Hkv, kvh = bk - b * Hkv;
    const long tile = j / TW, jj = j - tile * TW;
    __global float *ktt = kt + ((bk * nt + tile) * D) * TW;
    __global float *vtt = vt + ((bk * nt + tile) * DV) * TW;
    __global float *kpr = K_DIRECT ? kp : kp + (bk * nt * TW + j) * (DP16 * 16);
    const long kb = k_off + b * k_s0 + kvh * k_s1 + j * k_s2;
    const long vb = v_off + b * v_s0 + kvh * v_s1 + j * v_s2;
    for (int d = 0; d < D; d++) {
        const float x = j < Lk ? LOAD_K(k, kb + d * k_s3) : 0.0f;
        ktt[d * TW + jj] = x;
        if (!K_DIRECT) kpr[d] = x;
    }
    if (!K_DIRECT)
        for (int d = D; d < DP16 * 16; d++) kpr[d] = 0.0f;
    for (int c = 0; c < DV; c++) vtt[c * TW + jj] = j < Lk ? LOAD_V(v, vb + c * v_s3) : 0.0f;
}

/* The 16 lanes of (s, dp) for row (b, h, i) and keys j0..j0+15 into p and dS (dLoss/ds
 * before the softcap); lanes outside [lo, hi) are 0. */
#define LANE_TERMS(s16, dp16, b, h, i, j0, lo, hi, slope, l, dd, p16, ds16)              \
    do {                                                                                 \
        float sa_[16], da_[16], pa_[16], dsa_[16];                                       \
        vstore16((s16), 0, sa_);                                                         \
        vstore16((dp16), 0, da_);                                                        \
        for (int jj = 0; jj < 16; jj++) {                                                \
            const long j = (j0) + jj;                                                    \
            float p = 0.0f, dsf = 0.0f, dsp = 0.0f;                                      \
            if (j >= (lo) && j < (hi))                                                   \
                BWD_TERMS(sa_[jj], da_[jj], (b), (h), (i), j, (slope), (l), (dd), p, dsf, dsp); \
            pa_[jj] = p;                                                                 \
            dsa_[jj] = dsp;                                                              \
        }                                                                                \
        (p16) = vload16(0, pa_);                                                         \
        (ds16) = vload16(0, dsa_);                                                       \
    } while (0)

/* The same for the vector of 16 keys at once, when no mask must be read per key: the
 * prelude's SCORE steps in order (scale, softcap, ALiBi) on float16, then exclusion by the
 * key range. Positions are exact in float below 2^24 keys; the lane path serves beyond. */
#if MASK_KIND == 0
#define VEC_TERMS(s16, dp16, b, h, i, j0, lo, hi, slope, l, dd, p16, ds16)               \
    do {                                                                                 \
        const float16 jv_ = (float16)((float)(j0)) + (float16)(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, \
            6.0f, 7.0f, 8.0f, 9.0f, 10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f);             \
        float16 x_ = scale * (s16);                                                      \
        float16 dcap_ = (float16)(1.0f);                                                 \
        if (HAS_SOFTCAP) {                                                               \
            const float16 t_ = tanh(x_ / softcap);                                       \
            x_ = softcap * t_;                                                           \
            dcap_ = 1.0f - t_ * t_;                                                      \
        }                                                                                \
        if (HAS_ALIBI) x_ -= (slope) * fabs((float16)((float)((i) + Lk - Lq)) - jv_);    \
        const int16 in_ = jv_ >= (float16)((float)(lo)) && jv_ < (float16)((float)(hi)); \
        (p16) = select((float16)(0.0f), exp(x_ - (l)), in_);                             \
        (ds16) = (p16) * ((dp16) - (dd)) * dcap_;                                        \
    } while (0)
#define TERMS16(s16, dp16, b, h, i, j0, lo, hi, slope, l, dd, p16, ds16)                 \
    do {                                                                                 \
        if (Lk < 16777216)                                                               \
            VEC_TERMS(s16, dp16, b, h, i, j0, lo, hi, slope, l, dd, p16, ds16);          \
        else                                                                             \
            LANE_TERMS(s16, dp16, b, h, i, j0, lo, hi, slope, l, dd, p16, ds16);         \
    } while (0)
#else
#define TERMS16 LANE_TERMS
#endif

#ifndef RB
#define RB 4 /* query rows per step of bwd_cpu_dkdv: dK/dV are read and written once per RB rows */
#endif

__kernel void bwd_cpu_dkdv(TENSOR_PARAMS(const __global Q_T *, q),
                           TENSOR_PARAMS(const __global K_T *, k),
                           TENSOR_PARAMS(const __global V_T *, v),
                           TENSOR_PARAMS(const __global DO_T *, dout), const __global float *lse,
                           long lse_off, long lse_s0, long lse_s1, long lse_s2,
                           const __global float *dl, TENSOR_PARAMS(__global DK_T *, dk),
                           TENSOR_PARAMS(__global DV_T *, dv), MASK_PARAMS, long B, long Hq,
                           long Hkv, const __global float *kt, const __global float *vt, long nt,
                           const __global float *qp, const __global float *dop)
{
    const long tile = get_global_id(0), bk = get_global_id(1);
    if (tile >= nt || bk >= B * Hkv) return;
    const long b = bk / Hkv, kvh = bk - b * Hkv, group = Hq / Hkv;
    const long j0 = tile * TW, j1 = min(j0 + TW, Lk);
    const __global float16 *ktt = (const __global float16 *)(kt + ((bk * nt + tile) * D) * TW);
    const __global float16 *vtt = (const __global float16 *)(vt + ((bk * nt + tile) * DV) * TW);
    float16 dkt[D][KW], dvt[DV][KW];
    for (int d = 0; d < D; d++)
        for (int w = 0; w < KW; w++) dkt[d][w] = (float16)(0.0f);
    for (int c = 0; c < DV; c++)
        for (int w = 0; w < KW; w++) dvt[c][w] = (float16)(0.0f);
    /* the step's rows in qp and dop; rows past its count point at row 0: computed with,
     * never used */
    const __global float *qr[RB], *dr[RB];
    float16 pr[RB][KW], dsr[RB][KW];
    for (long g = 0; g < group; g++) {
        const long h = kvh * group + g;
        const float slope = ALIBI_SLOPE(h);
        for (long i0 = 0; i0 < Lq; i0 += RB) {
            /* the rows of this step that see a key of the tile, packed to the front */
            int n = 0;
            long lo[RB], hi[RB], rows[RB];
            float lr[RB], ddr[RB];
            for (int r = 0; r < RB; r++) {
                qr[r] = qp;
                dr[r] = dop;
            }
            for (int r = 0; r < RB && i0 + r < Lq; r++) {
                const long i = i0 + r;
                const long2 kr = KEY_RANGE(b, i);
                if (kr.x >= j1 || kr.y <= j0 || kr.x >= kr.y) continue;
                const float l = lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2];
                if (l == -INFINITY) continue;
                const long row = (b * Hq + h) * Lq + i;
                qr[n] = qp + row * D;
                dr[n] = dop + row * DV;
                lo[n] = kr.x;
                hi[n] = kr.y;
                rows[n] = i;
                lr[n] = l;
                ddr[n] = dl[row];
                n++;
            }
            if (n == 0) continue;
            /* all RB rows at once: independent chains of FMAs, not one chain per row */
            float16 s16[RB][KW], dp16[RB][KW];
            for (int r = 0; r < RB; r++)
                for (int w = 0; w < KW; w++) s16[r][w] = dp16[r][w] = (float16)(0.0f);
            for (int d = 0; d < D; d++) {
                float16 kd[KW];
                for (int w = 0; w < KW; w++) kd[w] = ktt[d * KW + w];
                for (int r = 0; r < RB; r++) {
                    const float16 x = (float16)(qr[r][d]);
                    for (int w = 0; w < KW; w++) s16[r][w] = mad(x, kd[w], s16[r][w]);
                }
            }
            for (int c = 0; c < DV; c++) {
                float16 vc[KW];
                for (int w = 0; w < KW; w++) vc[w] = vtt[c * KW + w];
                for (int r = 0; r < RB; r++) {
                    const float16 x = (float16)(dr[r][c]);
                    for (int w = 0; w < KW; w++) dp16[r][w] = mad(x, vc[w], dp16[r][w]);
                }
            }
            for (int r = 0; r < n; r++)
                for (int w = 0; w < KW; w++)
                    TERMS16(s16[r][w], dp16[r][w], b, h, rows[r], j0 + 16 * w, lo[r], hi[r], slope,
                            lr[r], ddr[r], pr[r][w], dsr[r][w]);
            for (int c = 0; c < DV; c++) {
                float16 a[KW];
                for (int w = 0; w < KW; w++) a[w] = dvt[c][w];
                for (int r = 0; r < n; r++) {
                    const float16 x = (float16)(dr[r][c]);
                    for (int w = 0; w < KW; w++) a[w] = mad(x, pr[r][w], a[w]);
                }
                for (int w = 0; w < KW; w++) dvt[c][w] = a[w];
            }
            for (int d = 0; d < D; d++) {
                float16 a[KW];
                for (int w = 0; w < KW; w++) a[w] = dkt[d][w];
                for (int r = 0; r < n; r++) {
                    const float16 x = (float16)(qr[r][d]);
                    for (int w = 0; w < KW; w++) a[w] = mad(x, dsr[r][w], a[w]);
                }
                for (int w = 0; w < KW; w++) dkt[d][w] = a[w];
            }
        }
    }
    const long kb = dk_off + b * dk_s0 + kvh * dk_s1, vb = dv_off + b * dv_s0 + kvh * dv_s1;
    for (int d = 0; d < D; d++)
        for (int w = 0; w < KW; w++) {
            float t[16];
            vstore16(dkt[d][w] * scale, 0, t);
            for (int e = 0; e < 16; e++) {
                const long j = j0 + 16 * w + e;
                if (j < j1) STORE_DK(dk, kb + j * dk_s2 + d * dk_s3, t[e]);
            }
        }
    for (int c = 0; c < DV; c++)
        for (int w = 0; w < KW; w++) {
            float t[16];
            vstore16(dvt[c][w], 0, t);
            for (int e = 0; e < 16; e++) {
                const long j = j0 + 16 * w + e;
                if (j < j1) STORE_DV(dv, vb + j * dv_s2 + c * dv_s3, t[e]);
            }
        }
}

__kernel void bwd_cpu_dq(TENSOR_PARAMS(const __global Q_T *, q),
                         TENSOR_PARAMS(const __global K_T *, k),
                         TENSOR_PARAMS(const __global V_T *, v),
                         TENSOR_PARAMS(const __global DO_T *, dout), const __global float *lse,
                         long lse_off, long lse_s0, long lse_s1, long lse_s2,
                         const __global float *dl, TENSOR_PARAMS(__global DQ_T *, dq), MASK_PARAMS,
                         long B, long Hq, long Hkv, const __global float *kt,
                         const __global float *vt, const __global float *kp, long nt,
                         const __global float *qp, const __global float *dop)
{
    const long blk = get_global_id(0), bh = get_global_id(1);
    const long i0 = blk * MB;
    if (i0 >= Lq || bh >= B * Hq) return;
    const long b = bh / Hq, h = bh - b * Hq, kvh = h / (Hq / Hkv), bk = b * Hkv + kvh;
    const float slope = ALIBI_SLOPE(h);
    const __global float *qr[MB], *dr[MB]; /* rows past Lq read row i0: never used */
    float lr[MB], ddr[MB];
    long lo[MB], hi[MB];
    long jlo = Lk, jhi = 0;
    for (int r = 0; r < MB; r++) {
        const long row = (b * Hq + h) * Lq + (i0 + r < Lq ? i0 + r : i0);
        qr[r] = qp + row * D;
        dr[r] = dop + row * DV;
    }
    for (int r = 0; r < MB; r++) {
        const long i = i0 + r;
        lo[r] = hi[r] = 0;
        lr[r] = -INFINITY;
        ddr[r] = 0.0f;
        if (i >= Lq) continue;
        const long2 kr = KEY_RANGE(b, i);
        lr[r] = lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2];
        if (kr.x >= kr.y || lr[r] == -INFINITY) continue;
        lo[r] = kr.x;
        hi[r] = kr.y;
        jlo = min(jlo, kr.x);
        jhi = max(jhi, kr.y);
        ddr[r] = dl[(b * Hq + h) * Lq + i];
    }
    float16 acc[MB][DP16];
    for (int r = 0; r < MB; r++)
        for (int u = 0; u < DP16; u++) acc[r][u] = (float16)(0.0f);
    const __global float16 *kpb = K_DIRECT ? 0 : (const __global float16 *)(kp + bk * nt * TW * (DP16 * 16));
    for (long tile = jlo / TW; tile * TW < jhi; tile++) {
        const long j0 = tile * TW;
        const __global float16 *ktt = (const __global float16 *)(kt + ((bk * nt + tile) * D) * TW);
        const __global float16 *vtt = (const __global float16 *)(vt + ((bk * nt + tile) * DV) * TW);
        /* all MB rows at once: independent chains of FMAs */
        float16 s16[MB][KW], dp16[MB][KW];
        for (int r = 0; r < MB; r++)
            for (int w = 0; w < KW; w++) s16[r][w] = dp16[r][w] = (float16)(0.0f);
        for (int d = 0; d < D; d++) {
            float16 kd[KW];
            for (int w = 0; w < KW; w++) kd[w] = ktt[d * KW + w];
            for (int r = 0; r < MB; r++) {
                const float16 x = (float16)(qr[r][d]);
                for (int w = 0; w < KW; w++) s16[r][w] = mad(x, kd[w], s16[r][w]);
            }
        }
        for (int c = 0; c < DV; c++) {
            float16 vc[KW];
            for (int w = 0; w < KW; w++) vc[w] = vtt[c * KW + w];
            for (int r = 0; r < MB; r++) {
                const float16 x = (float16)(dr[r][c]);
                for (int w = 0; w < KW; w++) dp16[r][w] = mad(x, vc[w], dp16[r][w]);
            }
        }
        for (int r = 0; r < MB; r++) {
            if (lo[r] >= j0 + TW || hi[r] <= j0) continue;
            for (int w = 0; w < KW; w++) {
                const long jw = j0 + 16 * w;
                if (lo[r] >= jw + 16 || hi[r] <= jw) continue;
                float16 p16, ds16;
                TERMS16(s16[r][w], dp16[r][w], b, h, i0 + r, jw, lo[r], hi[r], slope, lr[r], ddr[r],
                        p16, ds16);
                float dsa[16];
                vstore16(ds16, 0, dsa);
                for (int jj = 0; jj < 16; jj++) {
                    const float x = dsa[jj];
                    if (x == 0.0f) continue;
#if K_DIRECT
                    /* lanes past Lk have dS == 0: no row beyond K is read */
                    const __global float *krow =
                        (const __global float *)k + k_off + b * k_s0 + kvh * k_s1 + (jw + jj) * k_s2;
                    for (int u = 0; u < DP16; u++) acc[r][u] = mad((float16)(x), vload16(u, krow), acc[r][u]);
#else
                    const __global float16 *krow = kpb + (jw + jj) * DP16;
                    for (int u = 0; u < DP16; u++) acc[r][u] = mad((float16)(x), krow[u], acc[r][u]);
#endif
                }
            }
        }
    }
    for (int r = 0; r < MB; r++) {
        const long i = i0 + r;
        if (i >= Lq) break;
        const long ob = dq_off + b * dq_s0 + h * dq_s1 + i * dq_s2;
        for (int u = 0; u < DP16; u++) {
            float t[16];
            vstore16(acc[r][u] * scale, 0, t);
            for (int e = 0; e < 16 && u * 16 + e < D; e++) STORE_DQ(dq, ob + (u * 16 + e) * dq_s3, t[e]);
        }
    }
}
#endif

__kernel void bwd_dmask(TENSOR_PARAMS(const __global Q_T *, q),
                        TENSOR_PARAMS(const __global K_T *, k),
                        TENSOR_PARAMS(const __global V_T *, v),
                        TENSOR_PARAMS(const __global DO_T *, dout), const __global float *lse,
                        long lse_off, long lse_s0, long lse_s1, long lse_s2,
                        const __global float *dl, TENSOR_PARAMS(__global float *, dm), long mne0,
                        long mne1, long mne2, long mne3, MASK_PARAMS, long B, long Hq, long Hkv)
{
    const long idx = get_global_id(0);
    if (idx >= mne0 * mne1 * mne2 * mne3) return;
    long rest = idx;
    const long a3 = rest % mne3;
    rest /= mne3;
    const long a2 = rest % mne2;
    rest /= mne2;
    const long a1 = rest % mne1;
    const long a0 = rest / mne1;
    /* a broadcast extent (1) sums over the whole dimension */
    const long b0 = mne0 == 1 ? 0 : a0, b1 = mne0 == 1 ? B : a0 + 1;
    const long h0 = mne1 == 1 ? 0 : a1, h1 = mne1 == 1 ? Hq : a1 + 1;
    const long q0 = mne2 == 1 ? 0 : a2, q1 = mne2 == 1 ? Lq : a2 + 1;
    const long k0 = mne3 == 1 ? 0 : a3, k1 = mne3 == 1 ? Lk : a3 + 1;
    float sum = 0.0f;
    for (long b = b0; b < b1; b++)
        for (long h = h0; h < h1; h++) {
            const long kvh = h / (Hq / Hkv);
            const float slope = ALIBI_SLOPE(h);
            for (long i = q0; i < q1; i++) {
                const float l = lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2];
                if (l == -INFINITY) continue;
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
                }
            }
        }
    dm[dm_off + a0 * dm_s0 + a1 * dm_s1 + a2 * dm_s2 + a3 * dm_s3] = sum;
}

/* Spans in 2-byte units (every output dtype is 2 or 4 bytes); an absent one has n = 0. */
kernel void bwd_commit(global ushort *d0, ulong o0, global const ushort *s0, ulong n0,
                       global ushort *d1, ulong o1, global const ushort *s1, ulong n1,
                       global ushort *d2, ulong o2, global const ushort *s2, ulong n2,
                       global ushort *d3, ulong o3, global const ushort *s3, ulong n3)
{
    const ulong i = get_global_id(0);
    if (i < n0) d0[o0 + i] = s0[i];
    if (i < n1) d1[o1 + i] = s1[i];
    if (i < n2) d2[o2 + i] = s2[i];
    if (i < n3) d3[o3 + i] = s3[i];
}
