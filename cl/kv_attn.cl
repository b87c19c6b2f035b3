/* kv_attn.cl: attention over a KV cache, reading each storage format directly (never
 * expanding the cache to floats), float32 arithmetic. The structure is the decode path's
 * split-KV one (cl/decode.cl, CPU form): one work-item per block of ROWS query rows of a
 * (batch, KV head) and one split of the keys; the row blocks of one split share a
 * work-group so one core runs them while the split sits in its cache; tiles of 32 keys
 * with one online-softmax rescale per tile. It serves decode (a few rows) and chunked
 * prefill (more row blocks per split) alike.
 *
 *   kv_partial     per (row block, split): running max m, sum l and unnormalised output
 *                  acc over the split's keys into part_ml / part_o (row width DVP), the
 *                  split-KV skeleton of cl/splitkv.cl shared with decode.
 *   splitkv_merge  (cl/splitkv.cl, built with -DSPLITKV_DENSE_OUT) per (d, row): combine
 *                  the splits by log-sum-exp into a dense output row (od, DVP floats;
 *                  still rotated for TQ values) and LSE. kv_store_o (cl/kv_quant.cl)
 *                  rotates it back and stores O.
 *
 * Scores (K_FMT; layouts in src/kv/format.h):
 *   int8, tq   keys in 16-token tiles, coordinate-major: for each coordinate i one
 *              vector holds the codes of 16 tokens, so a tile's 16 scores are one
 *              vector accumulated over i with the query's q_i broadcast (no horizontal
 *              sums), and the 16 scales are converted by one instruction. int8 converts
 *              16 codes per coordinate; tq unpacks a 16-lane word with a broadcast load
 *              and a shift and looks the codes up in the codebook with one vector
 *              permute (vpermd on AVX-512; a table read per lane elsewhere). The query
 *              was rotated once by kv_prep_q, so q'.c is the score: nothing cached is
 *              rotated.
 *   int4       keys per channel over 32 tokens (KIVI): s = sum_i q_i m_i +
 *              sum_i (q_i d_i) codes_i, again one vector per 16 tokens; codes become
 *              floats by a permute of the table 0..15.
 *   f32, f16   per-token rows: dot products along D, 4 keys side by side.
 * Values (V_FMT) are value tiles of 16 tokens: per token acc += w * v with v unpacked 16
 * lanes at a time, where the weights w = p * scale were formed for the tile's 32 tokens
 * as vectors before the token loop (int8: per block; int4: p d per block, and the p m
 * terms summed per block as one dot product per tile; tq: p g with the codebook vector).
 * Lanes at or past D (or Dv) hold zero codes or zero query lanes, so they add nothing.
 * Software prefetch (KV_PREFETCH, CPU devices) fetches the next 32 keys and values from
 * within the key loops.
 *
 * Keys per batch entry: len[b] = kv_lens[b] (the cache's lengths, passed as the
 * prelude's kv_lens), and positions are aligned per entry: i' = i + len[b] - Lq. The
 * prelude's Lk argument is max_b len[b], the extent of a mask's last dimension.
 *
 * Build options (besides the prelude's): D, DV, K_FMT, V_FMT, ROWS, KV_PREFETCH (CPU form);
 * KV_GPU 1 with WG work-items and KTILE keys per tile for the GPU form (cl/kv_attn_gpu.cl,
 * the same kernel name and arguments). Both forms read the stored formats through
 * cl/kv_read.cl, built before either. Measured on the 2-core Xeon (AVX-512) with PoCL
 * 3.1: see src/kv/attention.c.
 *
 * Paged pools (-DPAGED -DPS=<page size> -DPT=<slots per page>, src/kv/pool.c): the same
 * kernel reads a ragged batch of sequences whose keys lie in pages of a pool. Every
 * address of a key tile, key row or value tile goes through K_PAGE / V_PAGE (the
 * (page, KV head) slab holding slot j) and IN_PAGE (j's slot within it); without PAGED
 * they are the contiguous cache's slab and j, so both builds run the same loops. A page
 * of PS tokens takes PT = max(PS, 16) slots when its format stores tiles of 16 (pages
 * below a tile are padded to one), so the kernel walks slots: slot j is token
 * (j / PT) * PS + j % PT when j % PT < PS, and a padding slot otherwise. Sequence b
 * (dimension 2 of the grid, with the KV head) owns pages pg_indices[pg_indptr[b] ..
 * pg_indptr[b+1]), its last page holding pg_last[b] tokens, and the query rows
 * qo_indptr[b] .. qo_indptr[b+1] of the packed [Hq, Nq] rows (Lq = the longest count,
 * rows past a sequence's own count idle); causal and window positions align bottom-right
 * per sequence as in the cache. A mask is per sequence ([n_seqs, Hq, Lq_max, Lk_max],
 * src/kv/pool.c): the score reads element (b, h, i, j) with b the sequence, i its own
 * query row and j the token, as the contiguous cache reads (batch entry, h, i, j).
 */

/* ---- Partial attention -------------------------------------------------------------
 * global (nblk, nsplit, B*Hkv), local (nblk, 1, 1) when it fits.
 *   qd       dense query rows [B*Hq*Lq, DP] (rotated for TQ keys)
 *   kc, vc   the cache; k_rs / v_rs bytes per (b, kvh) slab; k_row bytes per key row,
 *            tile of 16 (int8, tq) or group of 32 (int4); v_row bytes per value tile
 *   ktab, vtab  TQ tables (codebook in lanes 0..15) or any buffer
 */
__kernel void kv_partial(const __global float *qd, const __global uchar *kc,
                         const __global uchar *vc, long k_rs, long k_row, long v_rs, long v_row,
                         const __global float *ktab, const __global float *vtab,
                         __global float *part_o, __global float *part_ml, long Hq, long Hkv,
                         long group, long nsplit, long chunk, PAGED_PARAMS MASK_PARAMS)
{
    const long blk = get_global_id(0);
    SPLITKV_PLACE();
    KV_SEQUENCE();
    const long c_lo = split * chunk; /* slots (tokens when contiguous) */
    const long c_hi = min(slot_end, c_lo + chunk);

#if IS_TQ(K_FMT)
    const float16 ktable = vload16(0, ktab);
#endif
#if IS_TQ(V_FMT)
    const float16 vtable = vload16(0, vtab);
#endif
#if K_FMT == FMT_INT4 || V_FMT == FMT_INT4
    const float16 ntable = (float16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#endif

    KV_ROWS_SETUP();
#if K_FMT == FMT_F32 || K_FMT == FMT_F16 || K_FMT == FMT_INT4
    float16 qv[ROWS][NDC];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < NDC; c++) qv[r][c] = vload16(c, qd + qrow[r]);
#endif

    float m[ROWS], l[ROWS];
    float16 acc[ROWS][NVC];
#if V_FMT == FMT_INT4
    float accm[ROWS][NVB]; /* sum of p m per value block, added to its lanes at the end */
#endif
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < NVC; c++) acc[r][c] = (float16)(0.0f);
#if V_FMT == FMT_INT4
        for (int vb = 0; vb < NVB; vb++) accm[r][vb] = 0.0f;
#endif
    }

#ifndef PAGED
    const __global uchar *kslab = kc + bk * k_rs;
    const __global uchar *vslab = vc + bk * v_rs;
#endif
    for (long j0 = jlo / KT * KT; j0 < jhi; j0 += KT) {
        const int nt = (int)min((long)KT, jhi - j0);
        float s[ROWS][KT];

        /* ---- scores (unscaled dot products) ---- */
        /* prefetch targets: the next 32 keys (one INT4 group or two tiles) and values, a
         * line or two per step of the loops below (measured against all at once at the
         * start of a tile and against none: int8 decode 0.58 / 0.68 / 0.74 of the f16
         * decode path's time, tq4 0.40 / 0.47 / 0.47) */
#if KV_PREFETCH
        const __global uchar *nk = K_FMT == FMT_INT4 ? K_GROUP(j0 + KT) : K_TILE(j0 + KT);
        const __global uchar *nv = V_TILE(j0 + KT), *nv1 = V_TILE(j0 + KT + 16);
#if K_FMT != FMT_INT4
        const __global uchar *nk1 = K_TILE(j0 + KT + 16);
#endif
#endif

#if K_FMT == FMT_INT4
        {
            /* w_i = q_i d_i and c0 = sum_i q_i m_i, 16 channels at a time */
            const __global uchar *gk = K_GROUP(j0);
            float w[ROWS][DP];
            float c0[ROWS];
            for (int r = 0; r < ROWS; r++) {
                float16 cm = (float16)(0.0f);
                for (int c = 0; c < NDC; c++) {
                    const float16 dv = kv_halves16(gk + 32 * c);
                    float16 mv = kv_halves16(gk + 2 * D + 32 * c);
                    if ((c + 1) * 16 > D) /* lanes past D read the next field: drop them */
                        mv = select(mv, (float16)(0.0f),
                                    (int16)(c * 16) + (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) >= (int16)(D));
                    vstore16(qv[r][c] * dv, c, w[r]);
                    cm = fma(qv[r][c], mv, cm);
                }
                c0[r] = kv_hsum(cm);
            }
            float16 slo[ROWS][2], shi[ROWS][2];
            for (int r = 0; r < ROWS; r++)
                for (int e = 0; e < 2; e++) slo[r][e] = shi[r][e] = (float16)(0.0f);
            const __global uchar *codes = gk + 4 * D;
            for (int i = 0; i + 1 < D; i += 2) { /* constant indices: see tq */
#if KV_PREFETCH
                KV_PF(nk + 20 * i);
                KV_PF_VPAIR(nv, nv1, i);
#endif
                /* tokens 0..15 and 16..31 of channels i and i + 1 */
                const float16 alo = KV_NIB(codes + 16 * i), ahi = KV_NIB(codes + 16 * i + 8);
                const float16 blo = KV_NIB(codes + 16 * i + 16), bhi = KV_NIB(codes + 16 * i + 24);
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float16 wa = (float16)(w[r][i]), wb = (float16)(w[r][i + 1]);
                    slo[r][0] = fma(wa, alo, slo[r][0]);
                    shi[r][0] = fma(wa, ahi, shi[r][0]);
                    slo[r][1] = fma(wb, blo, slo[r][1]);
                    shi[r][1] = fma(wb, bhi, shi[r][1]);
                }
            }
            if (D & 1) {
                const float16 alo = KV_NIB(codes + 16 * (D - 1)), ahi = KV_NIB(codes + 16 * (D - 1) + 8);
                for (int r = 0; r < ROWS; r++) {
                    const float16 wa = (float16)(w[r][D - 1]);
                    slo[r][0] = fma(wa, alo, slo[r][0]);
                    shi[r][0] = fma(wa, ahi, shi[r][0]);
                }
            }
            for (int r = 0; r < ROWS; r++) {
                vstore16(slo[r][0] + slo[r][1] + (float16)(c0[r]), 0, s[r]);
                vstore16(shi[r][0] + shi[r][1] + (float16)(c0[r]), 1, s[r]);
            }
        }
#elif K_FMT == FMT_INT8 || IS_TQ(K_FMT)
        {
            /* two tiles of 16 tokens; two accumulators each (even and odd coordinates),
             * so four FMA chains are in flight per row */
            const __global uchar *t0 = K_TILE(j0);
            const __global uchar *t1 = K_TILE(j0 + 16);
            float16 sa[ROWS][2][2];
#if K_FMT == FMT_INT8
            float16 sc[ROWS][2];
            for (int r = 0; r < ROWS; r++) sc[r][0] = sc[r][1] = (float16)(0.0f);
            for (int kb = 0; kb < NKB; kb++) {
                for (int r = 0; r < ROWS; r++)
                    for (int u = 0; u < 2; u++) sa[r][u][0] = sa[r][u][1] = (float16)(0.0f);
                const __global char *q0 = (const __global char *)(t0 + 32 * NKB);
                const __global char *q1 = (const __global char *)(t1 + 32 * NKB);
                const int iend = min(32 * kb + 32, D);
                for (int i = 32 * kb; i + 1 < iend; i += 2) { /* constant indices: see tq */
#if KV_PREFETCH
                    KV_PF_PAIR(nk, nk1, i);
                    KV_PF_VPAIR(nv, nv1, i);
#endif
                    const float16 k00 = convert_float16(vload16(i, q0)), k10 = convert_float16(vload16(i, q1));
                    const float16 k01 = convert_float16(vload16(i + 1, q0)), k11 = convert_float16(vload16(i + 1, q1));
                    KV_SCORE_PAIR2(i);
                }
                if ((iend - 32 * kb) & 1) {
                    const float16 k00 = convert_float16(vload16(iend - 1, q0)), k10 = convert_float16(vload16(iend - 1, q1));
                    for (int r = 0; r < ROWS; r++) {
                        const float16 qa = (float16)(qd[qrow[r] + iend - 1]);
                        sa[r][0][0] = fma(qa, k00, sa[r][0][0]);
                        sa[r][1][0] = fma(qa, k10, sa[r][1][0]);
                    }
                }
                const float16 d0 = kv_halves16(t0 + 32 * kb);
                const float16 d1 = kv_halves16(t1 + 32 * kb);
                for (int r = 0; r < ROWS; r++) {
                    sc[r][0] = fma(sa[r][0][0] + sa[r][0][1], d0, sc[r][0]);
                    sc[r][1] = fma(sa[r][1][0] + sa[r][1][1], d1, sc[r][1]);
                }
            }
            for (int r = 0; r < ROWS; r++) {
                vstore16(sc[r][0], 0, s[r]);
                vstore16(sc[r][1], 1, s[r]);
            }
#else
            for (int r = 0; r < ROWS; r++)
                for (int u = 0; u < 2; u++) sa[r][u][0] = sa[r][u][1] = (float16)(0.0f);
            const __global uchar *w0 = t0 + 32, *w1 = t1 + 32;
            /* two coordinates per step with constant accumulator indices: an index
             * i & 1 kept the accumulators on the stack (a load and store per FMA) */
            for (int i = 0; i + 1 < D; i += 2) {
#if KV_PREFETCH
                KV_PF_PAIR(nk, nk1, i);
                KV_PF_VPAIR(nv, nv1, i);
#endif
                const float16 k00 = KV_LOOKUP(ktable, ktab, kv_tq_codes(w0 + TQ_GB(K_FMT) * i, TQ_BITS(K_FMT)));
                const float16 k10 = KV_LOOKUP(ktable, ktab, kv_tq_codes(w1 + TQ_GB(K_FMT) * i, TQ_BITS(K_FMT)));
                const float16 k01 = KV_LOOKUP(ktable, ktab, kv_tq_codes(w0 + TQ_GB(K_FMT) * (i + 1), TQ_BITS(K_FMT)));
                const float16 k11 = KV_LOOKUP(ktable, ktab, kv_tq_codes(w1 + TQ_GB(K_FMT) * (i + 1), TQ_BITS(K_FMT)));
                KV_SCORE_PAIR2(i);
            }
            if (D & 1) {
                const float16 k00 = KV_LOOKUP(ktable, ktab, kv_tq_codes(w0 + TQ_GB(K_FMT) * (D - 1), TQ_BITS(K_FMT)));
                const float16 k10 = KV_LOOKUP(ktable, ktab, kv_tq_codes(w1 + TQ_GB(K_FMT) * (D - 1), TQ_BITS(K_FMT)));
                for (int r = 0; r < ROWS; r++) {
                    const float16 qa = (float16)(qd[qrow[r] + D - 1]);
                    sa[r][0][0] = fma(qa, k00, sa[r][0][0]);
                    sa[r][1][0] = fma(qa, k10, sa[r][1][0]);
                }
            }
            const float16 g0 = kv_halves16(t0);
            const float16 g1 = kv_halves16(t1);
            for (int r = 0; r < ROWS; r++) {
                vstore16((sa[r][0][0] + sa[r][0][1]) * g0, 0, s[r]);
                vstore16((sa[r][1][0] + sa[r][1][1]) * g1, 1, s[r]);
            }
#endif
        }
#else /* f32, f16 rows */
        /* half-tile bases of this pair's keys and of the next pair's keys and values
         * (used by paged builds with pages of 16 slots or more) */
        const __global uchar *kh0 = K_ROWP(j0), *kh1 = K_ROWP(j0 + 16);
#if KV_PREFETCH
        const __global uchar *kn0 = K_ROWP(j0 + KT), *kn1 = K_ROWP(j0 + KT + 16);
        const __global uchar *vn0 = V_TILE(j0 + KT), *vn1 = V_TILE(j0 + KT + 16);
#endif
        for (int t = 0; t < KT; t += TU) {
            /* keys past the tile's end repeat its last key; the range check drops them */
            const __global uchar *kr[TU];
            float16 dot[ROWS][TU];
#if KV_PREFETCH
            /* the next tile's keys (and plain values), every line of each row: f16 rows
             * ran 1.28x the decode path's time without (which prefetches the same way) */
            for (int u = 0; u < TU; u++) {
                const __global uchar *pk = NEXT_KROW(kn0, kn1, t + u);
                for (int c = 0; c < (int)((k_row + 63) / 64); c++) KV_PF(pk + 64 * c);
#if V_FMT == FMT_F32 || V_FMT == FMT_F16
                const int tv = t + u;
                const __global uchar *pv = NEXT_VROW(vn0, vn1, tv);
                for (int c = 0; c < (VCB + 63) / 64; c++) KV_PF(pv + 64 * c);
#endif
            }
#endif
#pragma unroll
            for (int u = 0; u < TU; u++) {
                kr[u] = PAIR_KROW(kh0, kh1, min(t + u, nt - 1));
#pragma unroll
                for (int r = 0; r < ROWS; r++) dot[r][u] = (float16)(0.0f);
            }
#pragma unroll
            for (int c = 0; c < NDC; c++) {
#pragma unroll
                for (int u = 0; u < TU; u++) {
#if K_FMT == FMT_F32
                    const float16 kv = kv_plain_f32(kr[u], c, D);
#else
                    const float16 kv = kv_plain_f16(kr[u], c, D);
#endif
#pragma unroll
                    for (int r = 0; r < ROWS; r++) dot[r][u] = fma(qv[r][c], kv, dot[r][u]);
                }
            }
#pragma unroll
            for (int u = 0; u < TU; u++)
#pragma unroll
                for (int r = 0; r < ROWS; r++) s[r][t + u] = kv_hsum(dot[r][u]);
        }
#endif

        /* ---- masking and one online-softmax step per row ---- */
        for (int r = 0; r < ROWS; r++) {
            for (int t = 0; t < KT; t++) {
                const long j = j0 + t; /* a slot; the token SLOT_TOKEN(j) when SLOT_USED(j) */
                s[r][t] = (j >= lo[r] && j < hi[r] && SLOT_USED(j))
                              ? clattn_score(s[r][t], b, hr[r], ir[r], SLOT_TOKEN(j), slope[r], scale,
                                             softcap, Lqb, len, mask, mask_off, mask_s0, mask_s1,
                                             mask_s2, mask_s3)
                              : -INFINITY;
            }
            const float16 s0 = vload16(0, s[r]), s1 = vload16(1, s[r]);
            const float16 vm = fmax(s0, s1);
            const float8 m8 = fmax(vm.lo, vm.hi);
            const float4 m4 = fmax(m8.lo, m8.hi);
            const float2 m2 = fmax(m4.lo, m4.hi);
            const float corr = splitkv_rescale(&m[r], fmax(m2.x, m2.y));
            if (m[r] == -INFINITY) { /* nothing visible yet: p = 0, never exp(-inf - -inf) */
                vstore16((float16)(0.0f), 0, s[r]);
                vstore16((float16)(0.0f), 1, s[r]);
                continue;
            }
            const float16 p0 = exp(s0 - (float16)(m[r])), p1 = exp(s1 - (float16)(m[r]));
            vstore16(p0, 0, s[r]);
            vstore16(p1, 1, s[r]);
            l[r] = fma(l[r], corr, kv_hsum(p0 + p1));
            for (int c = 0; c < NVC; c++) acc[r][c] *= corr;
#if V_FMT == FMT_INT4
            for (int vb = 0; vb < NVB; vb++) accm[r][vb] *= corr;
#endif
        }

        /* ---- P V ---- */
        /* this tile pair's values: tokens 0..15 in vt, 16..31 in vt1 */
        const __global uchar *vt = V_TILE(j0), *vt1 = V_TILE(j0 + 16);
#if VNS
        /* the 32 tokens' scales times their weights, as vectors, before the token loop */
#if IS_TQ(V_FMT)
        float wv[ROWS][1][KT];
#else
        float wv[ROWS][NVB][KT];
#endif
        for (int f = 0; f < (IS_TQ(V_FMT) ? 1 : NVB); f++) {
            const float16 d0 = kv_halves16(vt + 32 * f), d1 = kv_halves16(vt1 + 32 * f);
#if V_FMT == FMT_INT4
            const float16 m0 = kv_halves16(vt + 32 * (NVB + f)), m1 = kv_halves16(vt1 + 32 * (NVB + f));
#endif
            for (int r = 0; r < ROWS; r++) {
                const float16 p0 = vload16(0, s[r]), p1 = vload16(1, s[r]);
                vstore16(p0 * d0, 0, wv[r][f]);
                vstore16(p1 * d1, 1, wv[r][f]);
#if V_FMT == FMT_INT4
                accm[r][f] += kv_hsum(fma(p0, m0, p1 * m1));
#endif
            }
        }
#endif
        for (int t = 0; t < nt; t++) {
            /* tokens 0..15 in the first tile, 16..31 in the second */
#if VNS
            const __global uchar *cr = (t >= 16 ? vt1 : vt) + 32 * VNS + (t & 15) * VCB;
#else
            const __global uchar *cr = PAIR_VROW(vt, vt1, t);
#endif
#if V_FMT == FMT_F32 || V_FMT == FMT_F16
#pragma unroll
            for (int c = 0; c < NVC; c++) {
#if V_FMT == FMT_F32
                const float16 vv = kv_plain_f32(cr, c, DV);
#else
                const float16 vv = kv_plain_f16(cr, c, DV);
#endif
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][c] = fma((float16)(s[r][t]), vv, acc[r][c]);
            }
#elif V_FMT == FMT_INT8
#pragma unroll
            for (int c = 0; c < NVC; c++) {
                const float16 codes = convert_float16(vload16(c, (const __global char *)cr));
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][c] = fma((float16)(wv[r][c >> 1][t]), codes, acc[r][c]);
            }
#elif V_FMT == FMT_INT4
#pragma unroll
            for (int c = 0; c < NVC; c += 2) {
                const float16 clo = KV_NIB(cr + 8 * c), chi = KV_NIB(cr + 8 * c + 8);
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float16 w = (float16)(wv[r][c >> 1][t]);
                    acc[r][c] = fma(w, clo, acc[r][c]);
                    if (c + 1 < NVC) acc[r][c + 1] = fma(w, chi, acc[r][c + 1]);
                }
            }
#else /* TQ */
#pragma unroll
            for (int c = 0; c < NVC; c++) {
                const float16 vv = KV_LOOKUP(vtable, vtab, kv_tq_codes(cr + c * TQ_GB(V_FMT), TQ_BITS(V_FMT)));
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][c] = fma((float16)(wv[r][0][t]), vv, acc[r][c]);
            }
#endif
        }
    }

    for (int r = 0; r < ROWS; r++) {
        if (blk * ROWS + r >= nrows) break;
#if V_FMT == FMT_INT4
        /* each block's sum of p m goes to its 32 lanes */
        for (int c = 0; c < NVC; c++) acc[r][c] += (float16)(accm[r][c >> 1]);
#endif
        if (!KV_ROW_OWN(r)) continue; /* paged: past this sequence's own query rows */
        const long pr = KV_PART_ROW(r);
        splitkv_store_ml(part_ml, pr, m[r], l[r]);
        for (int c = 0; c < NVC; c++) vstore16(acc[r][c], c, part_o + pr * DVP);
    }
}
