/* kv_attn.cl: attention over a KV cache, reading each storage format directly (never
 * expanding the cache to floats), float32 arithmetic. The structure is the decode path's
 * split-KV one (cl/decode.cl, CPU form): one work-item per block of ROWS query rows of a
 * (batch, KV head) and one split of the keys; the row blocks of one split share a
 * work-group so one core runs them while the split sits in its cache; tiles of 32 keys
 * with one online-softmax rescale per tile. It serves decode (a few rows) and chunked
 * prefill (more row blocks per split) alike.
 *
 *   kv_partial  per (row block, split): running max m, sum l and unnormalised output
 *               acc over the split's keys into part_ml / part_o (see cl/decode.cl).
 *   kv_merge    per row: combine the splits by log-sum-exp into a dense output row
 *               (od, DVP floats; still rotated for TQ values) and LSE. kv_store_o
 *               (cl/kv_quant.cl) rotates it back and stores O.
 *
 * Formats (K_FMT, V_FMT: clattn_kv_format values; layouts in src/kv_format.h):
 *   f32, f16, int8, tq: per-token rows. A score is a dot product along D in 16-lane
 *     vectors: int8 converts 16 codes and multiplies by the block's scale; tq looks its
 *     codes up in the 16-entry codebook with one vector permute (vpermps on AVX-512; a
 *     table read elsewhere) and scales the sum by the row's scale once. The query was
 *     rotated once by kv_prep_q, so q' . c is the score: no cached vector is rotated.
 *   int4 keys: per channel over 32 tokens, so a tile's 32 scores are computed as two
 *     16-lane vectors at once: s = sum_i q_i m_i + sum_i (q_i d_i) codes_i.
 *   int4 values: per token, acc += (p d) codes + p m per block of 32.
 * Lanes at or past D (or Dv) hold zero codes or zero query lanes, so they add nothing
 * (f32/f16 rows load their last partial vector element by element).
 *
 * Keys per batch entry: len[b] = kv_lens[b] (the cache's lengths, passed as the
 * prelude's kv_lens), and positions are aligned per entry: i' = i + len[b] - Lq. The
 * prelude's Lk argument is max_b len[b], the extent of a mask's last dimension.
 *
 * Build options (besides the prelude's): D, DV, K_FMT, V_FMT, ROWS, HAS_LSE.
 */
#ifndef D
#error "kv_attn.cl needs -DD=<head dim>"
#endif
#ifndef DV
#define DV D
#endif
#ifndef K_FMT
#define K_FMT 0
#endif
#ifndef V_FMT
#define V_FMT 0
#endif
#ifndef ROWS
#define ROWS 1
#endif
#ifndef HAS_LSE
#define HAS_LSE 0
#endif

#define FMT_F32 0
#define FMT_F16 1
#define FMT_INT8 2
#define FMT_INT4 3
#define FMT_TQ4 4
#define FMT_TQ3 5
#define FMT_TQ2 6
#define IS_TQ(f) ((f) >= FMT_TQ4)
#define TQ_BITS(f) ((f) == FMT_TQ4 ? 4 : (f) == FMT_TQ3 ? 3 : 2)

#define KT 32                 /* keys per tile: one INT4 key group */
#define NDC ((D + 15) / 16)   /* 16-lane vectors per q / k row */
#define NVC ((DV + 15) / 16)  /* per v / o row */
#define DP (NDC * 16)
#define DVP (NVC * 16)

/* ---- Unpacking -------------------------------------------------------------------- */

/* 16 codes of a TQ granule as lane indices (layouts in src/kv_format.h). */
inline int16 kv_tq_codes(const __global uchar *g, int bits)
{
    if (bits == 4) {
        const uchar8 b = vload8(0, g);
        return convert_int16((uchar16)(b & (uchar)15, b >> (uchar)4));
    }
    const uchar4 b = vload4(0, g);
    int16 c = convert_int16((uchar16)(b, b >> (uchar)2, b >> (uchar)4, b >> (uchar)6) & (uchar)3);
    if (bits == 3) {
        const int w = (int)g[4] | ((int)g[5] << 8);
        const int16 lane = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        c |= (((int16)(w) >> lane) & 1) << 2;
    }
    return c;
}

/* table[c] for each lane. On AVX-512 CPUs (PoCL defines __AVX512F__ when it compiles for
 * one) this is a single vpermps; OpenCL's shuffle() is a loop of scalar loads in PoCL
 * 3.1 (measured: 6x slower decode), so it is not used. Elsewhere: a table read per lane. */
#if defined(__AVX512F__) && defined(__clang__)
#define KV_LOOKUP(table, tabp, c) __builtin_ia32_permvarsf512((table), (c))
#else
inline float16 kv_lookup_generic(const __global float *tab, int16 c)
{
    return (float16)(tab[c.s0], tab[c.s1], tab[c.s2], tab[c.s3], tab[c.s4], tab[c.s5], tab[c.s6],
                     tab[c.s7], tab[c.s8], tab[c.s9], tab[c.sa], tab[c.sb], tab[c.sc], tab[c.sd],
                     tab[c.se], tab[c.sf]);
}
#define KV_LOOKUP(table, tabp, c) kv_lookup_generic((tabp), (c))
#endif

/* Lanes c*16 .. c*16+15 of a plain f32 / f16 row of n elements (0 past n). */
inline float16 kv_plain_f32(const __global uchar *row, int c, int n)
{
    const __global float *p = (const __global float *)row;
    if ((c + 1) * 16 <= n) return vload16(c, p);
    float t[16];
    for (int e = 0; e < 16; e++) t[e] = c * 16 + e < n ? p[c * 16 + e] : 0.0f;
    return vload16(0, t);
}
inline float16 kv_plain_f16(const __global uchar *row, int c, int n)
{
    const __global half *p = (const __global half *)row;
    if ((c + 1) * 16 <= n) return vload_half16(c, p);
    float t[16];
    for (int e = 0; e < 16; e++) t[e] = c * 16 + e < n ? vload_half(c * 16 + e, p) : 0.0f;
    return vload16(0, t);
}

/* Lanes of an INT8 row: the codes times the block's scale. */
inline float16 kv_int8_chunk(const __global uchar *row, int c)
{
    const __global uchar *blk = row + (c >> 1) * 34;
    const float d = vload_half(0, (const __global half *)blk);
    return convert_float16(vload16(0, (const __global char *)(blk + 2 + (c & 1) * 16))) * d;
}

/* Bytes per TQ row: the half scale and the granules. */
#define TQ_GB(bits) ((bits) == 4 ? 8 : (bits) == 3 ? 6 : 4)

/* ---- Partial attention -------------------------------------------------------------
 * global (nblk, nsplit, B*Hkv), local (nblk, 1, 1) when it fits.
 *   qd       dense query rows [B*Hq*Lq, DP] (rotated for TQ keys)
 *   kc, vc   the cache; k_rs / v_rs bytes per (b, kvh) slab, k_row / v_row bytes per
 *            token (INT4 keys: bytes per group of 32 tokens)
 *   ktab, vtab  TQ tables (codebook in lanes 0..15) or any buffer
 */
__kernel void kv_partial(const __global float *qd, const __global uchar *kc,
                         const __global uchar *vc, long k_rs, long k_row, long v_rs, long v_row,
                         const __global float *ktab, const __global float *vtab,
                         __global float *part_o, __global float *part_ml, long Hq, long Hkv,
                         long group, long nsplit, long chunk, MASK_PARAMS)
{
    const long blk = get_global_id(0);
    const long split = get_global_id(1);
    const long bk = get_global_id(2);
    const long b = bk / Hkv;
    const long kvh = bk - b * Hkv;
    const long nrows = group * Lq;
    const long len = clamp((long)kv_lens[kvl_off + b * kvl_st], 0L, Lk);
    const long c_lo = split * chunk;
    const long c_hi = min(len, c_lo + chunk);

#if IS_TQ(K_FMT)
    const float16 ktable = vload16(0, ktab);
#endif
#if IS_TQ(V_FMT)
    const float16 vtable = vload16(0, vtab);
#endif

    long hr[ROWS], ir[ROWS], lo[ROWS], hi[ROWS], qrow[ROWS];
    float slope[ROWS];
    long jlo = c_hi, jhi = c_lo;
    for (int r = 0; r < ROWS; r++) {
        const long row = blk * ROWS + r;
        const bool active = row < nrows;
        const long g = active ? row / Lq : 0;
        const long i = active ? row - g * Lq : 0;
        hr[r] = kvh * group + g;
        ir[r] = i;
        const long2 range = clattn_key_range(b, i, Lq, len, win_left, win_right, kv_lens,
                                             kvl_off, kvl_st);
        lo[r] = active ? max(range.x, c_lo) : c_hi;
        hi[r] = active ? min(range.y, c_hi) : c_lo;
        if (lo[r] < hi[r]) {
            jlo = min(jlo, lo[r]);
            jhi = max(jhi, hi[r]);
        }
        slope[r] = active ? ALIBI_SLOPE(hr[r]) : 0.0f;
        qrow[r] = ((b * Hq + hr[r]) * Lq + i) * DP;
    }
    float16 qv[ROWS][NDC];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < NDC; c++) qv[r][c] = vload16(c, qd + qrow[r]);

    float m[ROWS], l[ROWS];
    float16 acc[ROWS][NVC];
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < NVC; c++) acc[r][c] = (float16)(0.0f);
    }

    const __global uchar *kslab = kc + bk * k_rs;
    const __global uchar *vslab = vc + bk * v_rs;
    for (long j0 = jlo / KT * KT; j0 < jhi; j0 += KT) {
        const int nt = (int)min((long)KT, jhi - j0);
        float s[ROWS][KT];

        /* ---- scores ---- */
#if K_FMT == FMT_INT4
        {
            const __global uchar *gk = kslab + (j0 / KT) * k_row;
            float16 slo[ROWS], shi[ROWS];
            float c0[ROWS];
            for (int r = 0; r < ROWS; r++) {
                slo[r] = (float16)(0.0f);
                shi[r] = (float16)(0.0f);
                c0[r] = 0.0f;
            }
            for (int i = 0; i < D; i++) {
                const __global uchar *kb = gk + i * 20;
                const float d = vload_half(0, (const __global half *)kb);
                const float mn = vload_half(1, (const __global half *)kb);
                const uchar16 codes = vload16(0, kb + 4);
                const float16 clo = convert_float16(codes & (uchar)15);
                const float16 chi = convert_float16(codes >> (uchar)4);
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float qi = qd[qrow[r] + i];
                    const float w = qi * d;
                    c0[r] = fma(qi, mn, c0[r]);
                    slo[r] = fma((float16)(w), clo, slo[r]);
                    shi[r] = fma((float16)(w), chi, shi[r]);
                }
            }
            for (int r = 0; r < ROWS; r++) {
                vstore16(slo[r] + c0[r], 0, s[r]);
                vstore16(shi[r] + c0[r], 1, s[r]);
            }
        }
#else
        for (int t = 0; t < KT; t++) {
            float16 dot[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; r++) dot[r] = (float16)(0.0f);
            float kscale = 1.0f;
            if (t < nt) {
                const __global uchar *kr = kslab + (j0 + t) * k_row;
#if IS_TQ(K_FMT)
                kscale = vload_half(0, (const __global half *)kr);
#endif
#pragma unroll
                for (int c = 0; c < NDC; c++) {
#if K_FMT == FMT_F32
                    const float16 kv = kv_plain_f32(kr, c, D);
#elif K_FMT == FMT_F16
                    const float16 kv = kv_plain_f16(kr, c, D);
#elif K_FMT == FMT_INT8
                    const float16 kv = kv_int8_chunk(kr, c);
#else
                    const float16 kv = KV_LOOKUP(ktable, ktab,
                                                 kv_tq_codes(kr + 2 + c * TQ_GB(TQ_BITS(K_FMT)),
                                                             TQ_BITS(K_FMT)));
#endif
#pragma unroll
                    for (int r = 0; r < ROWS; r++) dot[r] = fma(qv[r][c], kv, dot[r]);
                }
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const float8 a = dot[r].lo + dot[r].hi;
                const float4 a4 = a.lo + a.hi;
                const float2 a2 = a4.lo + a4.hi;
                s[r][t] = (a2.x + a2.y) * kscale;
            }
        }
#endif
        /* ---- masking and one online-softmax step per row ---- */
        for (int r = 0; r < ROWS; r++) {
            for (int t = 0; t < KT; t++) {
                const long j = j0 + t;
                s[r][t] = (j >= lo[r] && j < hi[r])
                              ? clattn_score(s[r][t], b, hr[r], ir[r], j, slope[r], scale, softcap,
                                             Lq, len, mask, mask_off, mask_s0, mask_s1, mask_s2,
                                             mask_s3)
                              : -INFINITY;
            }
            const float16 s0 = vload16(0, s[r]), s1 = vload16(1, s[r]);
            const float16 vm = fmax(s0, s1);
            const float8 m8 = fmax(vm.lo, vm.hi);
            const float4 m4 = fmax(m8.lo, m8.hi);
            const float2 m2 = fmax(m4.lo, m4.hi);
            const float mnew = fmax(m[r], fmax(m2.x, m2.y));
            if (mnew == -INFINITY) { /* nothing visible yet: p = 0, never exp(-inf - -inf) */
                vstore16((float16)(0.0f), 0, s[r]);
                vstore16((float16)(0.0f), 1, s[r]);
                continue;
            }
            const float corr = exp(m[r] - mnew);
            const float16 p0 = exp(s0 - (float16)(mnew)), p1 = exp(s1 - (float16)(mnew));
            vstore16(p0, 0, s[r]);
            vstore16(p1, 1, s[r]);
            const float16 ps = p0 + p1;
            const float8 p8 = ps.lo + ps.hi;
            const float4 p4 = p8.lo + p8.hi;
            const float2 p2 = p4.lo + p4.hi;
            l[r] = fma(l[r], corr, p2.x + p2.y);
            m[r] = mnew;
            for (int c = 0; c < NVC; c++) acc[r][c] *= corr;
        }

        /* ---- P V ---- */
        for (int t = 0; t < nt; t++) {
            const __global uchar *vr = vslab + (j0 + t) * v_row;
#if V_FMT == FMT_F32 || V_FMT == FMT_F16
#pragma unroll
            for (int c = 0; c < NVC; c++) {
#if V_FMT == FMT_F32
                const float16 vv = kv_plain_f32(vr, c, DV);
#else
                const float16 vv = kv_plain_f16(vr, c, DV);
#endif
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][c] = fma((float16)(s[r][t]), vv, acc[r][c]);
            }
#elif V_FMT == FMT_INT8
#pragma unroll
            for (int c = 0; c < NVC; c++) {
                const __global uchar *vb = vr + (c >> 1) * 34;
                const float d = vload_half(0, (const __global half *)vb);
                const float16 codes =
                    convert_float16(vload16(0, (const __global char *)(vb + 2 + (c & 1) * 16)));
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][c] = fma((float16)(s[r][t] * d), codes, acc[r][c]);
            }
#elif V_FMT == FMT_INT4
#pragma unroll
            for (int c = 0; c < NVC; c += 2) {
                const __global uchar *vb = vr + (c >> 1) * 20;
                const float d = vload_half(0, (const __global half *)vb);
                const float mn = vload_half(1, (const __global half *)vb);
                const uchar16 codes = vload16(0, vb + 4);
                const float16 clo = convert_float16(codes & (uchar)15);
                const float16 chi = convert_float16(codes >> (uchar)4);
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float16 pd = (float16)(s[r][t] * d), pm = (float16)(s[r][t] * mn);
                    acc[r][c] = fma(pd, clo, acc[r][c] + pm);
                    if (c + 1 < NVC) acc[r][c + 1] = fma(pd, chi, acc[r][c + 1] + pm);
                }
            }
#else /* TQ */
            const float g = vload_half(0, (const __global half *)vr);
#pragma unroll
            for (int c = 0; c < NVC; c++) {
                const float16 vv = KV_LOOKUP(vtable, vtab,
                                             kv_tq_codes(vr + 2 + c * TQ_GB(TQ_BITS(V_FMT)),
                                                         TQ_BITS(V_FMT)));
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][c] = fma((float16)(s[r][t] * g), vv, acc[r][c]);
            }
#endif
        }
    }

    for (int r = 0; r < ROWS; r++) {
        if (blk * ROWS + r >= nrows) break;
        const long pr = ((b * Hq + hr[r]) * Lq + ir[r]) * nsplit + split;
        part_ml[pr * 2] = m[r];
        part_ml[pr * 2 + 1] = l[r];
        for (int c = 0; c < NVC; c++) vstore16(acc[r][c], c, part_o + pr * DVP);
    }
}

/* ---- Merge -------------------------------------------------------------------------
 * global (nrows): row = (b*Hq + h)*Lq + i. M = max m_s; w_s = exp(m_s - M) (a split
 * with m_s = -inf is skipped, never exp(-inf - -inf)); od = sum w_s acc_s / sum w_s l_s,
 * LSE = M + log(sum w_s l_s); a row with M = -inf gives 0 and -inf (SPEC §1). */
__kernel void kv_merge(const __global float *part_o, const __global float *part_ml, long nsplit,
                       long nrows, long Hq, long Lq, __global float *od, __global float *lse,
                       long lse_off, long lse_s0, long lse_s1, long lse_s2)
{
    const long row = get_global_id(0);
    if (row >= nrows) return;
    const __global float *ml = part_ml + row * nsplit * 2;
    float M = -INFINITY;
    for (long s = 0; s < nsplit; s++) M = fmax(M, ml[s * 2]);
    float L = 0.0f;
    float16 acc[NVC];
    for (int c = 0; c < NVC; c++) acc[c] = (float16)(0.0f);
    if (M != -INFINITY) {
        for (long s = 0; s < nsplit; s++) {
            const float ms = ml[s * 2];
            if (ms == -INFINITY) continue;
            const float w = exp(ms - M);
            L = fma(w, ml[s * 2 + 1], L);
            const __global float *po = part_o + (row * nsplit + s) * DVP;
            for (int c = 0; c < NVC; c++) acc[c] = fma((float16)(w), vload16(c, po), acc[c]);
        }
    }
    const float inv = M == -INFINITY ? 0.0f : 1.0f / L;
    for (int c = 0; c < NVC; c++) vstore16(acc[c] * inv, c, od + row * DVP);
#if HAS_LSE
    const long3 bhi = clattn_decode_row(row, Hq, Lq);
    lse[lse_off + bhi.x * lse_s0 + bhi.y * lse_s1 + bhi.z * lse_s2] =
        M == -INFINITY ? -INFINITY : M + log(L);
#endif
}
