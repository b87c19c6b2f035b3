/* decode.cl: split-KV attention for a few query rows per head (decode, Lq <= a small
 * bound). Decode reads every key once and does little arithmetic per byte, so it is
 * bound by memory bandwidth: the keys are split across work-groups to keep every core
 * busy, and each (batch, KV head, split) is read once for ALL query rows of its GQA
 * group (group * Lq rows). The split step, the partial layout and the merge kernel
 * (splitkv_merge) are the split-KV skeleton of cl/splitkv.cl, shared with the KV cache:
 *
 *   decode_partial  one (b, kvh, split, block of ROWS rows of the group) per work-item
 *                   (DEC_GPU 0) or per work-group (DEC_GPU 1); writes for each row its
 *                   running max m, sum l and unnormalised output acc over the split's
 *                   keys to part_ml / part_o (row width W = DV), row = (b * Hq + h) * Lq + i.
 *   splitkv_merge   one work-item per (d, row): the log-sum-exp merge into O and LSE.
 *
 * Two forms of decode_partial, chosen on the host from the device (tuning data):
 *   CPU (DEC_GPU 0): one work-item per block of ROWS rows; no local memory, no barriers.
 *     Keys are taken KTILE at a time: scores as float-vector dot products along D
 *     (VW-wide vectors, a horizontal sum per key and row), one online-softmax rescale
 *     per tile, then P·V as scalar-times-vector updates of accumulators held in
 *     registers. The work-items of one (b, kvh, split) form one work-group, so PoCL runs
 *     them back to back on one core while the split's K and V are still in its cache.
 *   GPU (DEC_GPU 1): WG work-items per (b, kvh, split, row block), the split taken
 *     KTILE keys at a time with local-memory reductions: work-items compute the scores
 *     of their keys for every row (K rows read as float4), tree reductions give the
 *     block's max and sum (every work-item then holds the same running m and l), and
 *     P·V runs with each work-item owning a quad of DV columns and a group of keys, so
 *     V is read as coalesced float4 rows by several key groups at once; the key groups'
 *     accumulators are summed once per split.
 *
 * Build options (besides the prelude's dtype and masking options):
 *   D, DV      head dims (1..256)
 *   DEC_GPU    0 | 1, the form above
 *   ROWS       query rows per work-item (CPU) or work-group (GPU)
 *   KTILE      keys per tile (CPU: a multiple of VW; GPU: the local-memory block)
 *   VW         CPU float vector width: 4, 8 or 16
 *   WG         GPU work-group size
 *   K_CONTIG, V_CONTIG   1 when K / V rows are contiguous along D (element stride 1):
 *              vector loads instead of strided scalar loads
 *   DEC_PF_KEYS  CPU form: software prefetch this many keys ahead, 0 = none
 *
 * Measured numbers: docs/measurements.md.
 */
#ifndef D
#error "decode.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif
#ifndef DEC_GPU
#define DEC_GPU 0
#endif
#ifndef ROWS
#define ROWS 1
#endif
#ifndef KTILE
#define KTILE 16
#endif
#ifndef VW
#define VW 16
#endif
#ifndef WG
#define WG 64
#endif
#ifndef K_CONTIG
#define K_CONTIG 0
#endif
#ifndef V_CONTIG
#define V_CONTIG 0
#endif

/* The rows of one (b, kvh): r = g * Lq + i for query head h = kvh * group + g. Row r's
 * identity is (h, i); its partial results live at flattened row (b * Hq + h) * Lq + i. */
#define DEC_PART_ROW(b, h, i) (((b) * Hq + (h)) * Lq + (i))

#if !DEC_GPU
/* ------------------------------------------------------------------------------------
 * CPU form
 * ---------------------------------------------------------------------------------- */
#define FV CLATTN_CAT(float, VW)
#define VLOAD CLATTN_CAT(vload, VW)
#define NDC ((D + VW - 1) / VW)  /* vectors per q/k row; the last one zero-padded */
#define NVC ((DV + VW - 1) / VW) /* vectors per v/o row */
#if KTILE % VW != 0
#error "KTILE must be a multiple of VW in the CPU form"
#endif

/* Software prefetch (CPU form) of the key and value rows DEC_PF_KEYS keys ahead, a line
 * per step, from the score loop: the hardware prefetchers alone left f16 decode short of
 * the read bandwidth on PoCL. clang's builtin, which PoCL compiles to prefetcht0
 * (OpenCL's prefetch() is a no-op in PoCL 3.1); a prefetch past the end never faults. */
#ifndef DEC_PF_KEYS
#define DEC_PF_KEYS 0
#endif
#if DEC_PF_KEYS && defined(__clang__)
#define DEC_PF(p) __builtin_prefetch((const __global void *)(p))
#else
#define DEC_PF(p) ((void)0)
#endif

/* Horizontal sum and max of a vector, as a tree of halves. Written through a private
 * array rather than with .lo/.hi swizzles, which crash oclgrind 21.10's --uninitialized
 * checker; PoCL's optimiser turns both forms into the same shuffles. */
inline float dec_hsum(FV x)
{
    float t[VW];
    CLATTN_CAT(vstore, VW)(x, 0, t);
#if VW == 16
    vstore8(vload8(0, t) + vload8(1, t), 0, t);
#endif
#if VW >= 8
    vstore4(vload4(0, t) + vload4(1, t), 0, t);
#endif
    vstore2(vload2(0, t) + vload2(1, t), 0, t);
    return t[0] + t[1];
}

inline float dec_hmax(FV x)
{
    float t[VW];
    CLATTN_CAT(vstore, VW)(x, 0, t);
#if VW == 16
    vstore8(fmax(vload8(0, t), vload8(1, t)), 0, t);
#endif
#if VW >= 8
    vstore4(fmax(vload4(0, t), vload4(1, t)), 0, t);
#endif
    vstore2(fmax(vload2(0, t), vload2(1, t)), 0, t);
    return fmax(t[0], t[1]);
}

/* One VW-wide chunk of a stored row as floats: elements c*VW .. c*VW+VW-1 of the row that
 * starts at element base with element stride st; elements at or beyond n read as 0.
 * Full chunks of contiguous rows are vector loads; the rest are scalar loads. */
#if K_DT == 0
#define VLOAD_K(p) VLOAD(0, (p))
#elif K_DT == 1
#define VLOAD_K(p) CLATTN_CAT(vload_half, VW)(0, (p))
#else
#define VLOAD_K(p) CLATTN_CAT(as_float, VW)(CLATTN_CAT(convert_uint, VW)(VLOAD(0, (p))) << 16)
#endif
#if V_DT == 0
#define VLOAD_V(p) VLOAD(0, (p))
#elif V_DT == 1
#define VLOAD_V(p) CLATTN_CAT(vload_half, VW)(0, (p))
#else
#define VLOAD_V(p) CLATTN_CAT(as_float, VW)(CLATTN_CAT(convert_uint, VW)(VLOAD(0, (p))) << 16)
#endif

/* dec_load_k and dec_load_v: rows of n elements of type T, read with LOAD (scalar) and
 * VLOAD_ROW (a full chunk), vector loads only when CONTIG (a constant: the branch
 * compiles away otherwise). */
#define DEC_LOAD_ROW(name, T, LOAD, VLOAD_ROW, CONTIG, n)                                 \
    inline FV name(const __global T *p, long base, long st, int c)                        \
    {                                                                                     \
        if (CONTIG && (c + 1) * VW <= (n)) return VLOAD_ROW(p + base + c * VW);           \
        float t[VW];                                                                      \
        for (int e = 0; e < VW; e++)                                                      \
            t[e] = (c * VW + e < (n)) ? LOAD(p, base + (long)(c * VW + e) * st) : 0.0f;   \
        return VLOAD(0, t);                                                               \
    }
DEC_LOAD_ROW(dec_load_k, K_T, LOAD_K, VLOAD_K, K_CONTIG, D)
DEC_LOAD_ROW(dec_load_v, V_T, LOAD_V, VLOAD_V, V_CONTIG, DV)

inline FV dec_load_q(const __global Q_T *p, long base, long st, int c)
{
    float t[VW];
    for (int e = 0; e < VW; e++)
        t[e] = (c * VW + e < D) ? LOAD_Q(p, base + (long)(c * VW + e) * st) : 0.0f;
    return VLOAD(0, t);
}

/* global (nblk, nsplit, B*Hkv), local (nblk, 1, 1): nblk = ceil(group*Lq / ROWS). */
__kernel void decode_partial(TENSOR_PARAMS(const __global Q_T *, q),
                             TENSOR_PARAMS(const __global K_T *, k),
                             TENSOR_PARAMS(const __global V_T *, v), __global float *part_o,
                             __global float *part_ml, long Hq, long Hkv, long group,
                             long nsplit, long chunk, MASK_PARAMS)
{
    const long blk = get_global_id(0);
    SPLITKV_PLACE();
    const long c_lo = split * chunk;
    const long c_hi = min(Lk, c_lo + chunk);

    /* The block's rows: identity, visible keys within this split, ALiBi slope, q. */
    long hr[ROWS], ir[ROWS], lo[ROWS], hi[ROWS];
    float slope[ROWS];
    FV qv[ROWS][NDC];
    long jlo = c_hi, jhi = c_lo;
    for (int r = 0; r < ROWS; r++) {
        const long row = blk * ROWS + r;
        const bool active = row < nrows;
        const long g = active ? row / Lq : 0;
        const long i = active ? row - g * Lq : 0;
        hr[r] = kvh * group + g;
        ir[r] = i;
        const long2 range = KEY_RANGE(b, i);
        lo[r] = active ? max(range.x, c_lo) : c_hi;
        hi[r] = active ? min(range.y, c_hi) : c_lo;
        if (lo[r] < hi[r]) {
            jlo = min(jlo, lo[r]);
            jhi = max(jhi, hi[r]);
        }
        slope[r] = active ? ALIBI_SLOPE(hr[r]) : 0.0f;
        const long qb = q_off + b * q_s0 + hr[r] * q_s1 + i * q_s2;
        for (int c = 0; c < NDC; c++) qv[r][c] = active ? dec_load_q(q, qb, q_s3, c) : (FV)(0.0f);
    }

    float m[ROWS], l[ROWS];
    FV acc[ROWS][NVC];
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < NVC; c++) acc[r][c] = (FV)(0.0f);
    }

    const long kb0 = k_off + b * k_s0 + kvh * k_s1;
    const long vb0 = v_off + b * v_s0 + kvh * v_s1;
    for (long j0 = jlo; j0 < jhi; j0 += KTILE) {
        const int nt = (int)min((long)KTILE, jhi - j0);
        /* scores of the tile; keys past the tile's end and outside a row's range: -inf */
        float s[ROWS][KTILE];
        for (int t = 0; t < KTILE; t++) {
            const long j = j0 + t;
            const long kb = kb0 + j * k_s2;
            /* two partial sums per row halve the chain of dependent FMAs */
            FV dot[ROWS][2];
#pragma unroll
            for (int r = 0; r < ROWS; r++) dot[r][0] = dot[r][1] = (FV)(0.0f);
            if (t < nt) {
#if DEC_PF_KEYS
                /* the key and value rows DEC_PF_KEYS keys ahead, every line of each */
                for (int c = 0; c < (D * (int)sizeof(K_T) + 63) / 64; c++)
                    DEC_PF((const __global uchar *)(k + kb + DEC_PF_KEYS * k_s2) + 64 * c);
                for (int c = 0; c < (DV * (int)sizeof(V_T) + 63) / 64; c++)
                    DEC_PF((const __global uchar *)(v + vb0 + (j + DEC_PF_KEYS) * v_s2) + 64 * c);
#endif
#pragma unroll
                for (int c = 0; c < NDC; c++) {
                    const FV kv = dec_load_k(k, kb, k_s3, c);
#pragma unroll
                    for (int r = 0; r < ROWS; r++) dot[r][c & 1] = fma(qv[r][c], kv, dot[r][c & 1]);
                }
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++)
                s[r][t] = (j >= lo[r] && j < hi[r])
                              ? SCORE(dec_hsum(dot[r][0] + dot[r][1]), b, hr[r], ir[r], j, slope[r])
                              : -INFINITY;
        }
        /* One rescale per tile and row, on whole vectors of scores. A row that has seen
         * no finite score keeps m = -inf and gets p = 0: exp(-inf - -inf) is never
         * evaluated. */
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            FV sv[KTILE / VW];
            FV vmax = (FV)(-INFINITY);
#pragma unroll
            for (int u = 0; u < KTILE / VW; u++) {
                sv[u] = VLOAD(u, s[r]);
                vmax = fmax(vmax, sv[u]);
            }
            const float corr = splitkv_rescale(&m[r], dec_hmax(vmax));
            if (m[r] == -INFINITY) {
#pragma unroll
                for (int u = 0; u < KTILE / VW; u++) CLATTN_CAT(vstore, VW)((FV)(0.0f), u, s[r]);
                continue;
            }
            FV sum = (FV)(0.0f);
#pragma unroll
            for (int u = 0; u < KTILE / VW; u++) {
                const FV pv = exp(sv[u] - (FV)(m[r]));
                sum += pv;
                CLATTN_CAT(vstore, VW)(pv, u, s[r]);
            }
            l[r] = fma(l[r], corr, dec_hsum(sum));
#pragma unroll
            for (int c = 0; c < NVC; c++) acc[r][c] *= corr;
        }
        for (int t = 0; t < nt; t++) {
            const long vb = vb0 + (j0 + t) * v_s2;
#pragma unroll
            for (int c = 0; c < NVC; c++) {
                const FV vv = dec_load_v(v, vb, v_s3, c);
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][c] = fma((FV)(s[r][t]), vv, acc[r][c]);
            }
        }
    }

    for (int r = 0; r < ROWS; r++) {
        if (blk * ROWS + r >= nrows) break;
        const long pr = DEC_PART_ROW(b, hr[r], ir[r]) * nsplit + split;
        splitkv_store_ml(part_ml, pr, m[r], l[r]);
        __global float *po = part_o + pr * DV;
        for (int c = 0; c < NVC; c++) {
            if ((c + 1) * VW <= DV) {
                CLATTN_CAT(vstore, VW)(acc[r][c], 0, po + c * VW);
            } else {
                float t[VW];
                CLATTN_CAT(vstore, VW)(acc[r][c], 0, t);
                for (int e = 0; c * VW + e < DV; e++) po[c * VW + e] = t[e];
            }
        }
    }
}

#else
/* ------------------------------------------------------------------------------------
 * GPU form
 * ---------------------------------------------------------------------------------- */
/* Pass 2 layout: work-item t owns column quads cq = t % CQ (+ CQ, ...) and keys
 * kg = t / CQ (+ KG, ...): CQ is the smallest power of two >= ceil(DV / 4), at most WG, so
 * each V load moves 4 elements and KG = WG / CQ key groups stream V side by side. The KG
 * partial accumulators of a column are summed once, at the end of the split. */
#define NQ4 ((DV + 3) / 4)
#if NQ4 > 64 && WG >= 128
#define CQ 128
#elif NQ4 > 32 && WG >= 64
#define CQ 64
#elif NQ4 > 16 && WG >= 32
#define CQ 32
#elif NQ4 > 8 && WG >= 16
#define CQ 16
#elif NQ4 > 4 && WG >= 8
#define CQ 8
#elif NQ4 > 2 && WG >= 4
#define CQ 4
#elif NQ4 > 1 && WG >= 2
#define CQ 2
#else
#define CQ 1
#endif
#define KG (WG / CQ)
#define NU ((NQ4 + CQ - 1) / CQ) /* column quads per work-item */

#if V_CONTIG
#if V_DT == 0
#define VLOAD4_V(p) vload4(0, (p))
#elif V_DT == 1
#define VLOAD4_V(p) vload_half4(0, (p))
#else
#define VLOAD4_V(p) as_float4(convert_uint4(vload4(0, (p))) << 16)
#endif
#endif

/* Four elements d .. d+3 of the V row at base; those at or past DV read as 0. */
inline float4 dec_load_v4(const __global V_T *p, long base, long st, int d)
{
#ifdef VLOAD4_V
    if (d + 4 <= DV) return VLOAD4_V(p + base + d);
#endif
    float4 x;
    x.x = d < DV ? LOAD_V(p, base + (long)d * st) : 0.0f;
    x.y = d + 1 < DV ? LOAD_V(p, base + (long)(d + 1) * st) : 0.0f;
    x.z = d + 2 < DV ? LOAD_V(p, base + (long)(d + 2) * st) : 0.0f;
    x.w = d + 3 < DV ? LOAD_V(p, base + (long)(d + 3) * st) : 0.0f;
    return x;
}

#if K_CONTIG && (D % 4) == 0
#if K_DT == 0
#define VLOAD4_K(p) vload4(0, (p))
#elif K_DT == 1
#define VLOAD4_K(p) vload_half4(0, (p))
#else
#define VLOAD4_K(p) as_float4(convert_uint4(vload4(0, (p))) << 16)
#endif
#endif

/* global (WG * nblk, nsplit, B*Hkv), local (WG, 1, 1); WG a power of two.
 * The split's keys are taken KTILE at a time. Pass 1: each work-item computes the scores
 * of its keys (kk = t, t + WG, ...) for every row of the block, reading its K rows from
 * global memory, and the block's max and sum come from tree reductions in local memory;
 * every work-item then holds the same running m and l. Pass 2: work-item t accumulates
 * P·V for columns t, t + WG, ... of DV, reading V rows coalesced. Three barriers and two
 * reductions per KTILE keys. */
__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void decode_partial(TENSOR_PARAMS(const __global Q_T *, q),
                    TENSOR_PARAMS(const __global K_T *, k),
                    TENSOR_PARAMS(const __global V_T *, v), __global float *part_o,
                    __global float *part_ml, long Hq, long Hkv, long group, long nsplit,
                    long chunk, MASK_PARAMS)
{
    __local float qs[ROWS][D];
    __local float ss[ROWS][KTILE]; /* scores, then probabilities, of the current keys */
    __local float red[ROWS][WG];   /* reductions */
    __local float4 red4[NU][WG];   /* the key groups' accumulators of one row, summed */
    __local long lo_s[ROWS], hi_s[ROWS], h_s[ROWS], i_s[ROWS];
    __local float slope_s[ROWS];

    const int t = (int)get_local_id(0);
    const long blk = get_group_id(0);
    SPLITKV_PLACE();
    const long c_lo = split * chunk;
    const long c_hi = min(Lk, c_lo + chunk);

    if (t < ROWS) {
        const long row = blk * ROWS + t;
        const bool active = row < nrows;
        const long g = active ? row / Lq : 0;
        const long i = active ? row - g * Lq : 0;
        const long h = kvh * group + g;
        const long2 range = KEY_RANGE(b, i);
        h_s[t] = h;
        i_s[t] = i;
        lo_s[t] = active ? max(range.x, c_lo) : c_hi;
        hi_s[t] = active ? min(range.y, c_hi) : c_lo;
        slope_s[t] = active ? ALIBI_SLOPE(h) : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int x = t; x < ROWS * D; x += WG) {
        const int r = x / D;
        const int d = x - r * D;
        const bool active = blk * ROWS + r < nrows;
        qs[r][d] = active ? LOAD_Q(q, q_off + b * q_s0 + h_s[r] * q_s1 + i_s[r] * q_s2 + d * q_s3)
                          : 0.0f;
    }
    /* The union of the rows' key ranges (every work-item computes the same). */
    long jlo = c_hi, jhi = c_lo;
    float m[ROWS], l[ROWS];
    for (int r = 0; r < ROWS; r++) {
        if (lo_s[r] < hi_s[r]) {
            jlo = min(jlo, lo_s[r]);
            jhi = max(jhi, hi_s[r]);
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }

    const int cq = t & (CQ - 1);
    const int kg = t / CQ;
    float4 acc[ROWS][NU];
    for (int r = 0; r < ROWS; r++)
        for (int u = 0; u < NU; u++) acc[r][u] = (float4)(0.0f);

    const long kb0 = k_off + b * k_s0 + kvh * k_s1;
    const long vb0 = v_off + b * v_s0 + kvh * v_s1;
    for (long j0 = jlo; j0 < jhi; j0 += KTILE) {
        const int nt = (int)min((long)KTILE, jhi - j0);
        barrier(CLK_LOCAL_MEM_FENCE); /* qs written; the previous keys' ss and red used up */
        /* pass 1: scores of this work-item's keys, and its max per row */
        float tmax[ROWS];
        for (int r = 0; r < ROWS; r++) tmax[r] = -INFINITY;
        for (int kk = t; kk < KTILE; kk += WG) {
            const long j = j0 + kk;
            float sdot[ROWS];
            for (int r = 0; r < ROWS; r++) sdot[r] = 0.0f;
            if (kk < nt) {
                const long kb = kb0 + j * k_s2;
#ifdef VLOAD4_K
#pragma unroll 8
                for (int c = 0; c < D / 4; c++) {
                    const float4 kv = VLOAD4_K(k + kb + 4 * c);
                    for (int r = 0; r < ROWS; r++) sdot[r] += dot(vload4(c, qs[r]), kv);
                }
#else
#pragma unroll 8
                for (int d = 0; d < D; d++) {
                    const float kv = LOAD_K(k, kb + d * k_s3);
                    for (int r = 0; r < ROWS; r++) sdot[r] = fma(qs[r][d], kv, sdot[r]);
                }
#endif
            }
            for (int r = 0; r < ROWS; r++) {
                const float sc = (kk < nt && j >= lo_s[r] && j < hi_s[r])
                                     ? SCORE(sdot[r], b, h_s[r], i_s[r], j, slope_s[r])
                                     : -INFINITY;
                ss[r][kk] = sc;
                tmax[r] = fmax(tmax[r], sc);
            }
        }
        for (int r = 0; r < ROWS; r++) red[r][t] = tmax[r];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int w = WG / 2; w > 0; w >>= 1) {
            if (t < w)
                for (int r = 0; r < ROWS; r++) red[r][t] = fmax(red[r][t], red[r][t + w]);
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        /* new running max; a row with nothing visible yet keeps m = -inf and p = 0, so
         * exp(-inf - -inf) is never evaluated */
        float corr[ROWS], psum[ROWS];
        for (int r = 0; r < ROWS; r++) {
            corr[r] = splitkv_rescale(&m[r], red[r][0]);
            psum[r] = 0.0f;
            for (int kk = t; kk < KTILE; kk += WG) {
                const float p = m[r] == -INFINITY ? 0.0f : exp(ss[r][kk] - m[r]);
                ss[r][kk] = p;
                psum[r] += p;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* every red[r][0] read before it is overwritten */
        for (int r = 0; r < ROWS; r++) red[r][t] = psum[r];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int w = WG / 2; w > 0; w >>= 1) {
            if (t < w)
                for (int r = 0; r < ROWS; r++) red[r][t] += red[r][t + w];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        for (int r = 0; r < ROWS; r++) l[r] = fma(l[r], corr[r], red[r][0]);
        /* pass 2: P·V for this work-item's column quads over its key group's keys */
        for (int u = 0; u < NU; u++) {
            const int d = 4 * (cq + u * CQ);
            if (d >= DV) break;
            float4 a[ROWS];
            for (int r = 0; r < ROWS; r++) a[r] = acc[r][u] * corr[r];
            int kk = kg;
            for (; kk + 3 * KG < nt; kk += 4 * KG) { /* four loads in flight */
                const long jb = vb0 + (j0 + kk) * v_s2;
                const float4 v0 = dec_load_v4(v, jb, v_s3, d);
                const float4 v1 = dec_load_v4(v, jb + KG * v_s2, v_s3, d);
                const float4 v2 = dec_load_v4(v, jb + 2 * KG * v_s2, v_s3, d);
                const float4 v3 = dec_load_v4(v, jb + 3 * KG * v_s2, v_s3, d);
                for (int r = 0; r < ROWS; r++) {
                    a[r] = fma((float4)(ss[r][kk]), v0, a[r]);
                    a[r] = fma((float4)(ss[r][kk + KG]), v1, a[r]);
                    a[r] = fma((float4)(ss[r][kk + 2 * KG]), v2, a[r]);
                    a[r] = fma((float4)(ss[r][kk + 3 * KG]), v3, a[r]);
                }
            }
            for (; kk < nt; kk += KG) {
                const float4 vv = dec_load_v4(v, vb0 + (j0 + kk) * v_s2, v_s3, d);
                for (int r = 0; r < ROWS; r++) a[r] = fma((float4)(ss[r][kk]), vv, a[r]);
            }
            for (int r = 0; r < ROWS; r++) acc[r][u] = a[r];
        }
    }

    /* m and l are the same in every work-item; the key groups' accumulators are summed
     * through local memory, one row at a time. */
    for (int r = 0; r < ROWS; r++) {
        if (blk * ROWS + r >= nrows) break; /* uniform across the work-group */
        const long pr = DEC_PART_ROW(b, h_s[r], i_s[r]) * nsplit + split;
        if (t == 0) splitkv_store_ml(part_ml, pr, m[r], l[r]);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int u = 0; u < NU; u++) red4[u][t] = acc[r][u];
        barrier(CLK_LOCAL_MEM_FENCE);
        if (kg == 0) {
            for (int u = 0; u < NU; u++) {
                const int d = 4 * (cq + u * CQ);
                if (d >= DV) break;
                float4 sum = red4[u][cq];
                for (int g = 1; g < KG; g++) sum += red4[u][g * CQ + cq];
                __global float *po = part_o + pr * DV + d;
                po[0] = sum.x;
                if (d + 1 < DV) po[1] = sum.y;
                if (d + 2 < DV) po[2] = sum.z;
                if (d + 3 < DV) po[3] = sum.w;
            }
        }
    }
}
#endif
