/* backward_cpu.cl: the backward pass's CPU form (form 0 of the tuning layer's backward
 * path; bwd_rowdot and bwd_dmask, which both forms run, are in cl/backward.cl).
 * As cl/flash_cpu.cl does for the forward: no local memory, no barriers, one work-item
 * per work-group, every product a rank-1 update "broadcast scalar x float16 vector".
 * One kernel computes all three gradients in one pass over the keys, so P and dS are
 * recomputed once (5 products of the forward's size against the forward's 2, where
 * separate dK/dV and dQ kernels cost 7):
 *
 *   bwd_cpu_kv  global (NSPLIT, B*Hkv): work-item (s, b, kvh) walks key blocks s, s +
 *               NSPLIT, s + 2 NSPLIT, ... of BN keys (interleaved, so causal masks give
 *               every split the same share). For each block it copies K and V into its
 *               own scratch (Kᵀ and Vᵀ by tiles for S = Q Kᵀ and dP = dO Vᵀ, K rows
 *               padded to DP for dQ), keeps the block's dK and dV in private float16
 *               vectors, and visits, for every query head of the GQA group, the rows
 *               that see a key of the block, RB rows per step: S and dP, then P and dS,
 *               then dV += Pᵀ dO, dK += dSᵀ Q, and dQ_s += dS K into its own partial
 *               dQ (read-modify-write of rows no other work-item writes).
 *   bwd_dqsum   global (B*Hq*Lq): dQ = scale · (dQ_0 + dQ_1 + ...) in split order.
 *
 * Every sum runs in a fixed order in one work-item: bit-identical results, no atomics.
 * Memory beyond the tensors: NSPLIT partial dQ of [B*Hq*Lq, DP] floats (the host bounds
 * NSPLIT), a few KiB of scratch per work-item, and dense float32 rows of Q and dO
 * (qp [rows, DP], dop [rows, DVP]) unless those are read in place (Q_DIRECT, DO_DIRECT:
 * float32 with unit stride and D, DV multiples of 16).
 * Build options: BN (keys per block, a multiple of 16), RB (rows per step, a multiple of
 * RT = 4), Q_DIRECT, DO_DIRECT, K_DIRECT (the K rows of dQ += dS K read in place rather
 * than from the work-item's padded copy: float32 K with unit stride and D % 16 == 0),
 * DQ_DIRECT. dS is kept multiplied by the scale, so dK and dQ need no final scaling and
 * dQ comes out the same whether it went through a partial or not. D, DV and the dtypes as
 * cl/backward.cl. */
#ifndef D
#error "backward_cpu.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif
#ifndef BN
#define BN 16
#endif
#if (BN % 16) != 0
#error "the CPU form needs BN a multiple of 16"
#endif
#ifndef RB
#define RB 16
#endif
#define RT 4 /* rows per register tile of S and dP */
#if (RB % RT) != 0
#error "RB must be a multiple of 4"
#endif
#ifndef Q_DIRECT
#define Q_DIRECT 0
#endif
#ifndef DO_DIRECT
#define DO_DIRECT 0
#endif
#ifndef K_DIRECT
#define K_DIRECT 0 /* 1: dQ reads K's rows in place (f32, unit stride, D % 16 == 0) */
#endif
#ifndef DQ_DIRECT
#define DQ_DIRECT 0 /* 1: one split accumulates dQ in the output itself (f32, dense, unit
                       stride, D % 16 == 0; zeroed by the kernel first): no bwd_dqsum */
#endif
#define NVN (BN / 16)
#define CT 4 /* float16 vectors of a gradient row per register tile */
#define ZP16 (DP16 > DVP16 ? DP16 : DVP16)
/* scratch floats per work-item: Kᵀ [D][BN], Vᵀ [DV][BN], K rows [BN][DP], a zero row
 * (the Q and dO rows of a step's unused slots) and a dummy dQ row (their dQ) */
#define SCR_FLOATS ((long)(D + DV) * BN + (long)BN * DP16 * 16 + 16 * ZP16 + 16 * DP16)
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

/* e^x for x <= ~0 (a score minus its row's LSE), through the prelude's clattn_exp2_neg. */
#define bwd_exp_neg(x) clattn_exp2_neg((x) * 1.4426950408889634f)

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
        (p16) = select((float16)(0.0f), bwd_exp_neg(x_ - (l)), in_);                     \
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

/* s[r][w] += Σ_d x_{r0+r}[d] · tT[d][16w .. 16w + 15] for the RT rows of a register tile
 * (x_r: the row xr[r]) and the block's BN keys, d over the n_d columns of the transposed
 * tile tT ([n_d][BN]): S = Q Kᵀ (s = sa, tT = Kᵀ) and dP = dO Vᵀ (s = pa, tT = Vᵀ). */
#define ROW_TILE_DOTS(s, n_d, tT, xr)                                                    \
    for (int d = 0; d < (n_d); d++) {                                                    \
        float16 kv[NVN];                                                                 \
        _Pragma("unroll") for (int w = 0; w < NVN; w++) kv[w] = vload16(w, (tT) + d * BN); \
        _Pragma("unroll") for (int r = 0; r < RT; r++) {                                 \
            const float x = xr[r0 + r][d];                                               \
            _Pragma("unroll") for (int w = 0; w < NVN; w++)                              \
                s[r][w] = fma((float16)(x), kv[w], s[r][w]);                             \
        }                                                                                \
    }

/* g[jj0 + t] += Σ_r w[r][jj0 + t] · x_r for the 4 keys jj0.. of a register tile and the
 * NV float16 vectors of a gradient row, CT vectors at a time, over the step's n rows
 * (x_r: the row xr[r]): dV += Pᵀ dO (g = dva, w = pb, x = dO) and dK += dSᵀ Q (g = dka,
 * w = dsb, x = Q). */
#define KEY_TILE_UPDATE(g, NV, w, xr)                                                    \
    _Pragma("unroll") for (int c0 = 0; c0 < (NV); c0 += CT) {                            \
        float16 a[4][CT];                                                                \
        _Pragma("unroll") for (int t = 0; t < 4; t++)                                    \
            _Pragma("unroll") for (int c = 0; c < CT; c++)                               \
                if (c0 + c < (NV)) a[t][c] = g[jj0 + t][c0 + c];                         \
        for (int r = 0; r < n; r++) {                                                    \
            float16 x[CT];                                                               \
            _Pragma("unroll") for (int c = 0; c < CT; c++)                               \
                if (c0 + c < (NV)) x[c] = vload16(c0 + c, xr[r]);                        \
            _Pragma("unroll") for (int t = 0; t < 4; t++) {                              \
                const float wv = w[r][jj0 + t];                                          \
                _Pragma("unroll") for (int c = 0; c < CT; c++)                           \
                    if (c0 + c < (NV)) a[t][c] = fma((float16)(wv), x[c], a[t][c]);      \
            }                                                                            \
        }                                                                                \
        _Pragma("unroll") for (int t = 0; t < 4; t++)                                    \
            _Pragma("unroll") for (int c = 0; c < CT; c++)                               \
                if (c0 + c < (NV)) g[jj0 + t][c0 + c] = a[t][c];                         \
    }

__kernel void bwd_cpu_kv(TENSOR_PARAMS(const __global Q_T *, q),
                         TENSOR_PARAMS(const __global K_T *, k),
                         TENSOR_PARAMS(const __global V_T *, v),
                         TENSOR_PARAMS(const __global DO_T *, dout), const __global float *lse,
                         long lse_off, long lse_s0, long lse_s1, long lse_s2,
                         const __global float *dl, TENSOR_PARAMS(__global DK_T *, dk),
                         TENSOR_PARAMS(__global DV_T *, dv), TENSOR_PARAMS(__global DQ_T *, dq),
                         MASK_PARAMS, long B, long Hq, long Hkv, const __global float *qp,
                         const __global float *dop, __global float *scr, __global float *part,
                         long nsplit)
{
    const long s = get_global_id(0), bk = get_global_id(1);
    if (s >= nsplit || bk >= B * Hkv) return;
    const long b = bk / Hkv, kvh = bk - b * Hkv, group = Hq / Hkv;
    __global float *kt = scr + (bk * nsplit + s) * SCR_FLOATS;
    __global float *vt = kt + D * BN;
    __global float *kr = vt + DV * BN;
    __global float *zrow = kr + BN * DP16 * 16;
    __global float *dummy = zrow + 16 * ZP16;
    for (int e = 0; e < 16 * ZP16; e++) zrow[e] = 0.0f;
#if !DQ_DIRECT
    __global float *dqs = part + s * (B * Hq * Lq) * (DP16 * 16);
#endif
    const long nkb = (Lk + BN - 1) / BN;
#if DQ_DIRECT
    /* the rows of dQ this work-item owns (every head of its group), zeroed here rather
     * than by another command: this launch is the only one that writes the outputs */
    for (long g = 0; g < group; g++)
        for (long i = 0; i < Lq; i++) {
            __global float *r = (__global float *)dq + dq_off + b * dq_s0 + (kvh * group + g) * dq_s1 + i * dq_s2;
            for (int u = 0; u < DP16; u++) vstore16((float16)(0.0f), u, r);
        }
#endif
#if K_DIRECT
#define KROW(jj) ((const __global float *)k + k_off + b * k_s0 + kvh * k_s1 + (j0 + (jj)) * k_s2)
#else
#define KROW(jj) (kr + (jj) * (DP16 * 16))
#endif

    float16 dka[BN][DP16], dva[BN][DVP16];
    float pb[RB][BN], dsb[RB][BN];
    const __global float *qr[RB], *dr[RB];
    __global float *dqr[RB];
    long rows[RB], lo[RB], hi[RB];
    float lr[RB], ddr[RB];

    for (long kb = s; kb < nkb; kb += nsplit) {
        const long j0 = kb * BN, j1 = min(j0 + BN, Lk);
        /* the block's K and V, zero past Lk */
        for (int jj = 0; jj < BN; jj++) {
            const long j = j0 + jj;
            const long kb0 = k_off + b * k_s0 + kvh * k_s1 + j * k_s2;
            const long vb0 = v_off + b * v_s0 + kvh * v_s1 + j * v_s2;
            for (int d = 0; d < D; d++) {
                const float x = j < Lk ? LOAD_K(k, kb0 + d * k_s3) : 0.0f;
                kt[d * BN + jj] = x;
                if (!K_DIRECT) kr[jj * (DP16 * 16) + d] = x;
            }
            if (!K_DIRECT)
                for (int d = D; d < DP16 * 16; d++) kr[jj * (DP16 * 16) + d] = 0.0f;
            for (int c = 0; c < DV; c++) vt[c * BN + jj] = j < Lk ? LOAD_V(v, vb0 + c * v_s3) : 0.0f;
        }
        for (int jj = 0; jj < BN; jj++) {
            for (int u = 0; u < DP16; u++) dka[jj][u] = (float16)(0.0f);
            for (int u = 0; u < DVP16; u++) dva[jj][u] = (float16)(0.0f);
        }
        for (long g = 0; g < group; g++) {
            const long h = kvh * group + g;
            const float slope = ALIBI_SLOPE(h);
            for (long i0 = 0; i0 < Lq; i0 += RB) {
                /* Key ranges only move forward with the row (causal, window and key
                 * lengths all bound them by the row's position or not at all): a step
                 * whose last row ends before the block sees none of it, and once a
                 * step's first row starts past the block no later row sees it. */
                const long2 first = KEY_RANGE(b, i0), last = KEY_RANGE(b, min(i0 + RB, Lq) - 1);
                if (first.x >= j1) break;
                if (last.y <= j0) continue;
                /* the rows of this step that see a key of the block, packed to the front;
                 * [ulo, uhi): the keys of the block some of them see */
                int n = 0, ulo = BN, uhi = 0;
                for (int r = 0; r < RB && i0 + r < Lq; r++) {
                    const long i = i0 + r;
                    const long2 kr2 = KEY_RANGE(b, i);
                    if (kr2.x >= j1 || kr2.y <= j0 || kr2.x >= kr2.y) continue;
                    const float l = lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2];
                    if (l == -INFINITY) continue;
                    const long row = (b * Hq + h) * Lq + i;
#if Q_DIRECT
                    qr[n] = (const __global float *)q + q_off + b * q_s0 + h * q_s1 + i * q_s2;
#else
                    qr[n] = qp + row * (DP16 * 16);
#endif
#if DO_DIRECT
                    dr[n] = (const __global float *)dout + dout_off + b * dout_s0 + h * dout_s1 +
                            i * dout_s2;
#else
                    dr[n] = dop + row * (DVP16 * 16);
#endif
#if DQ_DIRECT
                    dqr[n] = (__global float *)dq + dq_off + b * dq_s0 + h * dq_s1 + i * dq_s2;
#else
                    dqr[n] = dqs + row * (DP16 * 16);
#endif
                    lo[n] = kr2.x;
                    hi[n] = kr2.y;
                    ulo = min(ulo, (int)(max(kr2.x, j0) - j0));
                    uhi = max(uhi, (int)(min(kr2.y, j1) - j0));
                    rows[n] = i;
                    lr[n] = l;
                    ddr[n] = dl[row];
                    n++;
                }
                if (n == 0) continue;
                const int nt = (n + RT - 1) / RT * RT; /* whole register tiles */
                /* the products below skip keys no row of the step sees, in groups of 4 */
                const int jlo = ulo / 4 * 4, jhi = uhi;
                for (int r = n; r < nt; r++) {
                    qr[r] = zrow;
                    dr[r] = zrow;
                    dqr[r] = dummy;
                }
                /* S = Q Kᵀ and dP = dO Vᵀ, RT rows at a time; then P and dS */
                for (int r0 = 0; r0 < nt; r0 += RT) {
                    float16 sa[RT][NVN], pa[RT][NVN];
#pragma unroll
                    for (int r = 0; r < RT; r++)
#pragma unroll
                        for (int w = 0; w < NVN; w++) sa[r][w] = pa[r][w] = (float16)(0.0f);
                    ROW_TILE_DOTS(sa, D, kt, qr);
                    ROW_TILE_DOTS(pa, DV, vt, dr);
                    for (int r = 0; r < RT; r++) {
                        const int R = r0 + r;
                        for (int w = 0; w < NVN; w++) {
                            float16 p16 = (float16)(0.0f), ds16 = (float16)(0.0f);
                            if (R < n && lo[R] < j0 + 16 * w + 16 && hi[R] > j0 + 16 * w)
                                TERMS16(sa[r][w], pa[r][w], b, h, rows[R], j0 + 16 * w, lo[R],
                                        hi[R], slope, lr[R], ddr[R], p16, ds16);
                            vstore16(p16, w, pb[R]);
                            vstore16(ds16 * scale, w, dsb[R]); /* scale · dS for dK and dQ */
                        }
                    }
                }
                /* dV += Pᵀ dO and dK += dSᵀ Q: 4 keys x CT vectors per register tile */
                for (int jj0 = jlo; jj0 < jhi; jj0 += 4) {
                    KEY_TILE_UPDATE(dva, DVP16, pb, dr);
                    KEY_TILE_UPDATE(dka, DP16, dsb, qr);
                }
                /* dQ_s += dS K for the step's rows: RT rows x CT vectors per register tile
                 * (keys below jhi only: no K row past Lk is read in place) */
                for (int r0 = 0; r0 < nt; r0 += RT) {
#pragma unroll
                    for (int c0 = 0; c0 < DP16; c0 += CT) {
                        float16 a[RT][CT];
#pragma unroll
                        for (int r = 0; r < RT; r++)
#pragma unroll
                            for (int c = 0; c < CT; c++)
                                if (c0 + c < DP16) a[r][c] = vload16(c0 + c, dqr[r0 + r]);
#define DS_OF(r, jj) dsb[r0 + (r)][jj]
                        TILE_KEYS_UPDATE(a, RT, CT, DP16, c0, jlo, jhi, KROW, DS_OF);
#undef DS_OF
#pragma unroll
                        for (int r = 0; r < RT; r++)
#pragma unroll
                            for (int c = 0; c < CT; c++)
                                if (c0 + c < DP16) vstore16(a[r][c], c0 + c, dqr[r0 + r]);
                    }
                }
            }
        }
        const long kb0 = dk_off + b * dk_s0 + kvh * dk_s1, vb0 = dv_off + b * dv_s0 + kvh * dv_s1;
        for (int jj = 0; jj < BN && j0 + jj < j1; jj++) {
            const long j = j0 + jj;
            float t[16 * ZP16];
            for (int u = 0; u < DP16; u++) vstore16(dka[jj][u], u, t);
            for (int d = 0; d < D; d++) STORE_DK(dk, kb0 + j * dk_s2 + d * dk_s3, t[d]);
            for (int u = 0; u < DVP16; u++) vstore16(dva[jj][u], u, t);
            for (int c = 0; c < DV; c++) STORE_DV(dv, vb0 + j * dv_s2 + c * dv_s3, t[c]);
        }
    }
}

/* dQ = the sum of the partials (of scale · dS K), in split order. */
__kernel void bwd_dqsum(const __global float *part, long nsplit, TENSOR_PARAMS(__global DQ_T *, dq),
                        float scale, long B, long Hq, long Lq)
{
    QUERY_ROW_ITEM();
    const long ob = dq_off + bhi.x * dq_s0 + bhi.y * dq_s1 + bhi.z * dq_s2;
    for (int d = 0; d < D; d++) {
        float x = 0.0f;
        for (long s = 0; s < nsplit; s++) x += part[(s * rows + row) * (DP16 * 16) + d];
        STORE_DQ(dq, ob + d * dq_s3, x);
    }
}
