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
 * Scores (K_FMT; layouts in src/kv_format.h):
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
 * KV_GPU 1 selects the GPU form (below), with WG work-items and KTILE keys per tile.
 * Measured on the 2-core Xeon (AVX-512) with PoCL 3.1: see src/kv_cache.c.
 *
 * Paged pools (-DPAGED -DPS=<page size> -DPT=<slots per page>, src/kv_pool.c): the same
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
 * per sequence as in the cache.
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

#ifdef PAGED
#ifndef PS
#error "a paged build needs -DPS=<page size> and -DPT=<slots per page>"
#endif
/* the slab of (page of slot j, kvh); the page index is clamped to the sequence's last
 * page so a prefetch one tile past the end never reads past its indices */
#define K_PAGE(j) (kc + ((long)pg_idx[min((long)(j) / PT, npg - 1)] * Hkv + kvh) * k_rs)
#define V_PAGE(j) (vc + ((long)pg_idx[min((long)(j) / PT, npg - 1)] * Hkv + kvh) * v_rs)
#define IN_PAGE(j) ((long)(j) & (PT - 1))
/* token of slot j (valid when SLOT_USED), and the first slot of token t */
#define SLOT_TOKEN(j) (((long)(j) / PT) * PS + ((long)(j) & (PT - 1)))
#define SLOT_USED(j) (PT == PS || ((long)(j) & (PT - 1)) < PS)
#define TOKEN_SLOT(t) (((long)(t) / PS) * PT + ((long)(t) & (PS - 1)))
#define PAGED_PARAMS                                                                     \
    const __global int *pg_indptr, const __global int *pg_indices, const __global int *pg_last, \
        const __global int *qo_indptr, long Nq,
#else
#define K_PAGE(j) kslab
#define V_PAGE(j) vslab
#define IN_PAGE(j) ((long)(j))
#define SLOT_TOKEN(j) ((long)(j))
#define SLOT_USED(j) 1
#define TOKEN_SLOT(t) ((long)(t))
#define PAGED_PARAMS
#endif
/* Key tile / INT4 group / key row / value tile holding slot j. Rows of 16 slots never
 * cross a page (PT >= 16 for every tiled format), so a tile's rows share one page. */
#define K_TILE(j) (K_PAGE(j) + (IN_PAGE(j) / 16) * k_row)
#define K_GROUP(j) (K_PAGE(j) + (IN_PAGE(j) / KT) * k_row)
#define K_ROWP(j) (K_PAGE(j) + IN_PAGE(j) * k_row)
#define V_TILE(j) (V_PAGE(j) + (IN_PAGE(j) / 16) * v_row)
/* Per-token rows tt = 0..31 of the tile pair at j0 (f32 / f16 keys and values; a plain
 * value tile is 16 rows): contiguous, the slab's row; paged with pages of 16 slots or
 * more, the row within the two half-tile bases h0 / h1 (found once per tile); smaller
 * pages (plain formats only), a page lookup per row. */
#ifndef PAGED
#define PAIR_KROW(h0, h1, tt) (kslab + (j0 + (tt)) * k_row)
#define PAIR_VROW(h0, h1, tt) (vslab + (j0 + (tt)) * VCB)
#define NEXT_KROW(h0, h1, tt) (kslab + (j0 + KT + (tt)) * k_row)
#define NEXT_VROW(h0, h1, tt) (vslab + (j0 + KT + (tt)) * VCB)
#elif PT < 16
#define PAIR_KROW(h0, h1, tt) K_ROWP(j0 + (tt))
#define PAIR_VROW(h0, h1, tt) (V_PAGE(j0 + (tt)) + IN_PAGE(j0 + (tt)) * VCB)
#define NEXT_KROW(h0, h1, tt) K_ROWP(j0 + KT + (tt))
#define NEXT_VROW(h0, h1, tt) (V_PAGE(j0 + KT + (tt)) + IN_PAGE(j0 + KT + (tt)) * VCB)
#else
#define PAIR_KROW(h0, h1, tt) (((tt) >= 16 ? (h1) : (h0)) + ((tt) & 15) * k_row)
#define PAIR_VROW(h0, h1, tt) (((tt) >= 16 ? (h1) : (h0)) + ((tt) & 15) * VCB)
#define NEXT_KROW PAIR_KROW
#define NEXT_VROW PAIR_VROW
#endif

#define IS_TQ(f) ((f) >= FMT_TQ4)
#define TQ_BITS(f) ((f) == FMT_TQ4 ? 4 : (f) == FMT_TQ3 ? 3 : 2)
#define TQ_GB(f) ((f) == FMT_TQ4 ? 8 : (f) == FMT_TQ3 ? 6 : 4) /* bytes per 16-lane word */

#define KT 32                 /* keys per tile: one INT4 key group, two key tiles */
#define NDC ((D + 15) / 16)   /* 16-lane vectors per q / k row */
#define NVC ((DV + 15) / 16)  /* per v / o row */
#define DP (NDC * 16)
#define DVP (NVC * 16)
#define NKB ((D + 31) / 32)   /* int8 blocks per key */
#define NVB ((DV + 31) / 32)  /* int8 / int4 blocks per value */
/* Value tiles (src/kv_format.h): VNS scale halves per token, gathered per field, then
 * each token's VCB code bytes. */
#if V_FMT == FMT_INT8
#define VNS NVB
#define VCB (32 * NVB)
#elif V_FMT == FMT_INT4
#define VNS (2 * NVB)
#define VCB (16 * NVB)
#elif IS_TQ(V_FMT)
#define VNS 1
#define VCB (TQ_GB(V_FMT) * NVC)
#elif V_FMT == FMT_F16
#define VNS 0
#define VCB (2 * DV)
#else
#define VNS 0
#define VCB (4 * DV)
#endif

/* ---- Unpacking -------------------------------------------------------------------- */

/* A stored half as float, exactly (normals, subnormals, zero, inf, NaN). PoCL 3.1 lowers
 * a scalar vload_half to a longer software sequence; vector loads use vcvtph2ps. */
inline float kv_h2f(const __global uchar *p)
{
    const uint h = *(const __global ushort *)p;
    const uint a = h & 0x7fffu;
    const float mag = a >= 0x400u ? as_float((a << 13) + (a >= 0x7c00u ? 0x70000000u : 0x38000000u))
                                  : (float)a * 0x1.0p-24f;
    return as_float(as_uint(mag) | ((h & 0x8000u) << 16));
}

/* 8 / 16 consecutive halves at p as floats. PoCL 3.1 turns vload_half8 on a global
 * pointer into an aligned 16-byte load, which faults on rows that are only 2-byte
 * aligned; an unaligned integer load, then the conversion from a private copy, is safe
 * and still one vcvtph2ps. */
inline float8 kv_halves8(const __global uchar *p)
{
    const ushort8 raw = vload8(0, (const __global ushort *)p);
    return vload_half8(0, (const half *)&raw);
}
inline float16 kv_halves16(const __global uchar *p)
{
    const ushort16 raw = vload16(0, (const __global ushort *)p);
    return vload_half16(0, (const half *)&raw);
}

/* The 16 codes of a TQ word as lane indices (bit layouts in src/kv_format.h): a
 * broadcast load and a per-lane shift, so no shuffle competes with the permute below.
 * With the AVX-512 permute only the low 4 bits of an index count and the tables repeat
 * with the codebook's period, so bits above a code need no mask (KV_MASKED 0). */
#if defined(__AVX512F__) && defined(__clang__)
#define KV_MASKED 0
#else
#define KV_MASKED 1
#endif
inline int16 kv_tq_codes(const __global uchar *g, int bits)
{
    if (bits == 4) {
        const uint2 w = as_uint2(vload8(0, g));
        const uint16 x = (uint16)(w, w, w, w, w, w, w, w) >>
                         (uint16)(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
        return as_int16(KV_MASKED ? x & 15u : x);
    }
    if (bits == 3) {
        /* 8 bytes read (the cache buffers carry slack past their end); bytes 3..5 move
         * up to the high half, then as tq4 with 3-bit steps (table period 8) */
        ulong q = as_ulong(vload8(0, g));
        q = (q & 0xFFFFFFUL) | ((q << 8) & 0x00FFFFFF00000000UL);
        const uint2 w = as_uint2(q);
        const uint16 x = (uint16)(w, w, w, w, w, w, w, w) >>
                         (uint16)(0, 0, 3, 3, 6, 6, 9, 9, 12, 12, 15, 15, 18, 18, 21, 21);
        return as_int16(KV_MASKED ? x & 7u : x);
    }
    const uint16 lo = (uint16)(as_uint(vload4(0, g))) >>
                      (uint16)(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return as_int16(KV_MASKED ? lo & 3u : lo);
}

/* table[c] for each lane. On AVX-512 CPUs (PoCL defines __AVX512F__ when it compiles for
 * one) this is a single vpermd; OpenCL's shuffle() becomes a spill and 16 scalar loads in
 * PoCL 3.1, so it is not used. Elsewhere: a table read per lane. */
#if !KV_MASKED
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

/* 16 INT4 codes (a 4-bit word, src/kv_format.h) as floats 0..15: on AVX-512 a permute of
 * the table 0..15 (so the conversion shares the shuffle port with nothing else and needs
 * no mask); elsewhere a mask and a conversion. */
#if !KV_MASKED
#define KV_NIB(w) __builtin_ia32_permvarsf512(ntable, kv_tq_codes((w), 4))
#else
#define KV_NIB(w) convert_float16(kv_tq_codes((w), 4))
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
    if ((c + 1) * 16 <= n) return kv_halves16(row + 32 * c);
    float t[16];
    for (int e = 0; e < 16; e++) t[e] = c * 16 + e < n ? vload_half(c * 16 + e, p) : 0.0f;
    return vload16(0, t);
}

inline float kv_hsum(float16 v)
{
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
}

/* Software prefetch of the next tile's keys and values (KV_PREFETCH, set by the host for
 * CPU devices; clang's builtin, which PoCL compiles to prefetcht0; OpenCL's prefetch()
 * is a no-op in PoCL 3.1). */
#ifndef KV_PREFETCH
#define KV_PREFETCH 0
#endif
#if KV_PREFETCH && defined(__clang__)
#define KV_PF(p) __builtin_prefetch((const __global void *)(p))
#else
#define KV_PF(p) ((void)0)
#endif

/* Bytes of a key tile (int8, tq), and the prefetch for coordinate step i (2 coordinates)
 * of a tile pair: its share of the next pair, two lines when the share exceeds one. */
#if K_FMT == FMT_INT8
#define K_TILE_BYTES (16 * (2 * NKB + D))
#elif IS_TQ(K_FMT)
#define K_TILE_BYTES (32 + TQ_GB(K_FMT) * D)
#else
#define K_TILE_BYTES 0
#endif
/* The prefetch address at byte off of the next tile pair, whose tiles of TB bytes start
 * at b0 and b1 (b1 = b0 + TB when contiguous; any page when paged). */
#ifdef PAGED
#define KV_PF_AT(b0, b1, off, TB) ((off) < (TB) ? (b0) + (off) : (b1) + ((off) - (TB)))
#else
#define KV_PF_AT(b0, b1, off, TB) ((b0) + (off)) /* b1 = b0 + TB: the same address */
#endif
#define KV_PF_PAIR(nk, nk1, i)                                                                            \
    do {                                                                                                  \
        KV_PF(KV_PF_AT(nk, nk1, (i) * (2 * K_TILE_BYTES) / D, K_TILE_BYTES));                             \
        if (4 * K_TILE_BYTES / D > 64) KV_PF(KV_PF_AT(nk, nk1, (i) * (2 * K_TILE_BYTES) / D + 64, K_TILE_BYTES)); \
    } while (0)
/* The same for the next pair of value tiles (16 rows each), from the key loops, so the
 * value loop carries no prefetch instructions. */
#define V_TILE_BYTES (16 * (2 * VNS + VCB))
#define KV_PF_VPAIR(nv, nv1, i)                                                                           \
    do {                                                                                                  \
        KV_PF(KV_PF_AT(nv, nv1, (i) * (2 * V_TILE_BYTES) / D, V_TILE_BYTES));                             \
        if (4 * V_TILE_BYTES / D > 64) KV_PF(KV_PF_AT(nv, nv1, (i) * (2 * V_TILE_BYTES) / D + 64, V_TILE_BYTES)); \
        if (4 * V_TILE_BYTES / D > 128) KV_PF(KV_PF_AT(nv, nv1, (i) * (2 * V_TILE_BYTES) / D + 128, V_TILE_BYTES)); \
    } while (0)

/* Per-token keys (f32, f16): keys whose dot products one work-item computes side by
 * side, so independent FMA chains hide the FMA latency. */
#define TU (ROWS >= 3 ? 1 : 4 / ROWS)

/* ---- The setup both forms of kv_partial share ------------------------------------
 * KV_SEQUENCE: sequence b's length len, its own query count Lqb and its slots' end (paged:
 * also its pages and first packed query row q0). */
#ifdef PAGED
#define KV_SEQUENCE()                                                                      \
    /* sequence b: its pages, length, and its own query rows (Lq is the longest count) */ \
    const long pg0 = pg_indptr[b], npg = pg_indptr[b + 1] - pg0;                          \
    const __global int *pg_idx = pg_indices + pg0;                                         \
    const long len = npg > 0 ? (npg - 1) * PS + pg_last[b] : 0;                            \
    const long q0 = qo_indptr[b], Lqb = qo_indptr[b + 1] - q0;                             \
    const long slot_end = npg > 0 ? (npg - 1) * PT + pg_last[b] : 0
#define KV_QROW(h, i) (((h) * Nq + q0 + (i)) * DP) /* packed rows [Hq, Nq] */
#else
#define KV_SEQUENCE()                                                                      \
    const long len = clamp((long)kv_lens[kvl_off + b * kvl_st], 0L, Lk);                   \
    const long Lqb = Lq, slot_end = len
#define KV_QROW(h, i) (((b * Hq + (h)) * Lq + (i)) * DP)
#endif
/* KV_ROWS_SETUP: the block's rows r (row blk * ROWS + r of the group): query head hr,
 * row ir (Lq marks an idle row: paged, not written), visible slots [lo, hi) within the
 * split [c_lo, c_hi), ALiBi slope, dense query row qrow; jlo..jhi spans them all. */
#define KV_ROWS_SETUP()                                                                    \
    long hr[ROWS], ir[ROWS], lo[ROWS], hi[ROWS], qrow[ROWS];                               \
    float slope[ROWS];                                                                     \
    long jlo = c_hi, jhi = c_lo;                                                           \
    for (int r = 0; r < ROWS; r++) {                                                       \
        const long row = blk * ROWS + r;                                                   \
        const long g0 = row / Lq;                                                          \
        const bool active = row < nrows && row - g0 * Lq < Lqb;                            \
        const long g = active ? g0 : 0;                                                    \
        const long i = active ? row - g * Lq : 0;                                          \
        hr[r] = kvh * group + g;                                                           \
        ir[r] = active ? i : Lq;                                                           \
        /* len already bounds the keys: no second key-length test */                       \
        const long2 range = clattn_key_range(b, i, Lqb, len, causal, win_left, win_right, 0, \
                                             kv_lens, kvl_off, kvl_st);                    \
        /* the token range as slots: [slot of lo, slot of hi-1, plus one) */               \
        const long s_lo = TOKEN_SLOT(range.x);                                             \
        const long s_hi = range.y > range.x ? TOKEN_SLOT(range.y - 1) + 1 : s_lo;          \
        lo[r] = active ? max(s_lo, c_lo) : c_hi;                                           \
        hi[r] = active ? min(s_hi, c_hi) : c_lo;                                           \
        if (lo[r] < hi[r]) {                                                               \
            jlo = min(jlo, lo[r]);                                                         \
            jhi = max(jhi, hi[r]);                                                         \
        }                                                                                  \
        slope[r] = active ? ALIBI_SLOPE(hr[r]) : 0.0f;                                     \
        qrow[r] = KV_QROW(hr[r], i);                                                       \
    }

#ifndef KV_GPU
#define KV_GPU 0
#endif
#if !KV_GPU
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
    const long split = get_global_id(1);
    const long bk = get_global_id(2);
    const long b = bk / Hkv;
    const long kvh = bk - b * Hkv;
    const long nrows = group * Lq;
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
#pragma unroll
                    for (int r = 0; r < ROWS; r++) {
                        const float16 qa = (float16)(qd[qrow[r] + i]), qb = (float16)(qd[qrow[r] + i + 1]);
                        sa[r][0][0] = fma(qa, k00, sa[r][0][0]);
                        sa[r][1][0] = fma(qa, k10, sa[r][1][0]);
                        sa[r][0][1] = fma(qb, k01, sa[r][0][1]);
                        sa[r][1][1] = fma(qb, k11, sa[r][1][1]);
                    }
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
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float16 qa = (float16)(qd[qrow[r] + i]), qb = (float16)(qd[qrow[r] + i + 1]);
                    sa[r][0][0] = fma(qa, k00, sa[r][0][0]);
                    sa[r][1][0] = fma(qa, k10, sa[r][1][0]);
                    sa[r][0][1] = fma(qb, k01, sa[r][0][1]);
                    sa[r][1][1] = fma(qb, k11, sa[r][1][1]);
                }
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
#ifdef PAGED
        if (ir[r] >= Lqb) continue; /* past this sequence's own query rows */
        const long pr = (hr[r] * Nq + q0 + ir[r]) * nsplit + split;
#else
        const long pr = ((b * Hq + hr[r]) * Lq + ir[r]) * nsplit + split;
#endif
        splitkv_store_ml(part_ml, pr, m[r], l[r]);
        for (int c = 0; c < NVC; c++) vstore16(acc[r][c], c, part_o + pr * DVP);
    }
}

#else
/* ---- Partial attention, GPU form (KV_GPU 1) -----------------------------------------
 * global (WG * nblk, nsplit, B*Hkv), local (WG, 1, 1): one work-group per (block of ROWS
 * query rows of the GQA group, split, (b, kvh)), the arguments as in the CPU form. The
 * split is walked KTILE slots at a time. The work-items dequantize the tile's keys and
 * values into local memory once, element by element (kv_key_at / kv_val_at, any format,
 * contiguous or paged), so every row of the group reads them from there; they then score
 * (row, key) pairs from local memory; every work-item runs the same online-softmax step
 * (splitkv_rescale) on its private m and l, reading the row's KTILE scores (a few local
 * reads replace tree reductions at these tile sizes); and P·V gives work-item t the
 * columns t, t + WG, ... of every row. Four barriers per tile. Local memory:
 * 4 (ROWS D + KTILE (D + DV) + ROWS KTILE) bytes (clattn__kv_gpu_local_bytes).
 * Arithmetic differs from the CPU form only in order: a key is dequantized and then
 * multiplied by q (the CPU form folds the scales in after the dot product).
 */
#ifndef WG
#define WG 64
#endif
#ifndef KTILE
#define KTILE 16
#endif

/* Lane l's code of a 16-lane TQ or INT4 word at w (layouts in src/kv_format.h), reading
 * only the bytes of the word. */
inline int kv_code_at(const __global uchar *w, int bits, int l)
{
    if (bits == 4) return (w[4 * (l & 1) + (l >> 2)] >> (4 * ((l >> 1) & 1))) & 15;
    if (bits == 3) {
        const int sh = 24 * (l & 1) + 3 * (l >> 1), byte = sh >> 3, bit = sh & 7;
        const uint x = bit <= 5 ? (uint)w[byte] >> bit : ((uint)w[byte] >> bit) | ((uint)w[byte + 1] << (8 - bit));
        return (int)(x & 7u);
    }
    return (w[l >> 2] >> (2 * (l & 3))) & 3;
}

/* Coordinate i of the key in slot j, as a float in the stored (rotated for TQ) basis. */
#if K_FMT == FMT_F32
#define KV_KEY_AT(j, i) (((const __global float *)K_ROWP(j))[i])
#elif K_FMT == FMT_F16
#define KV_KEY_AT(j, i) kv_h2f(K_ROWP(j) + 2 * (i))
#elif K_FMT == FMT_INT8
#define KV_KEY_AT(j, i) kv_key_int8(K_TILE(j), (int)(IN_PAGE(j) & 15), (i))
inline float kv_key_int8(const __global uchar *tile, int l, int i)
{
    return kv_h2f(tile + 32 * (i >> 5) + 2 * l) * (float)((const __global char *)(tile + 32 * NKB))[16 * i + l];
}
#elif K_FMT == FMT_INT4
#define KV_KEY_AT(j, i) kv_key_int4(K_GROUP(j), (int)(IN_PAGE(j) & (KT - 1)), (i))
inline float kv_key_int4(const __global uchar *gk, int u, int i)
{
    return fma(kv_h2f(gk + 2 * i), (float)kv_code_at(gk + 4 * D + 16 * i + 8 * (u >> 4), 4, u & 15),
               kv_h2f(gk + 2 * D + 2 * i));
}
#else
#define KV_KEY_AT(j, i) kv_key_tq(K_TILE(j), (int)(IN_PAGE(j) & 15), (i), ktab)
inline float kv_key_tq(const __global uchar *tile, int l, int i, const __global float *tab)
{
    return kv_h2f(tile + 2 * l) * tab[kv_code_at(tile + 32 + TQ_GB(K_FMT) * i, TQ_BITS(K_FMT), l)];
}
#endif

/* Column d < DV of the value in slot j: token t of its value tile vt, codes at cr. */
inline float kv_val_at(const __global uchar *vt, int t, int d, const __global float *tab)
{
    const __global uchar *cr = vt + 32 * VNS + t * VCB;
#if V_FMT == FMT_F32
    return ((const __global float *)cr)[d];
#elif V_FMT == FMT_F16
    return kv_h2f(cr + 2 * d);
#elif V_FMT == FMT_INT8
    return kv_h2f(vt + 32 * (d >> 5) + 2 * t) * (float)((const __global char *)cr)[d];
#elif V_FMT == FMT_INT4
    return fma(kv_h2f(vt + 32 * (d >> 5) + 2 * t), (float)kv_code_at(cr + 8 * (d >> 4), 4, d & 15),
               kv_h2f(vt + 32 * (NVB + (d >> 5)) + 2 * t));
#else
    return kv_h2f(vt + 2 * t) * tab[kv_code_at(cr + TQ_GB(V_FMT) * (d >> 4), TQ_BITS(V_FMT), d & 15)];
#endif
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void kv_partial(const __global float *qd, const __global uchar *kc, const __global uchar *vc,
                long k_rs, long k_row, long v_rs, long v_row, const __global float *ktab,
                const __global float *vtab, __global float *part_o, __global float *part_ml, long Hq,
                long Hkv, long group, long nsplit, long chunk, PAGED_PARAMS MASK_PARAMS)
{
    __local float qs[ROWS][D];
    __local float ks[KTILE][D];
    __local float vs[KTILE][DV];
    __local float ss[ROWS][KTILE]; /* scores, then probabilities, of the tile */

    const int t = (int)get_local_id(0);
    const long blk = get_group_id(0);
    const long split = get_global_id(1);
    const long bk = get_global_id(2);
    const long b = bk / Hkv;
    const long kvh = bk - b * Hkv;
    const long nrows = group * Lq;
    KV_SEQUENCE();
#ifndef PAGED
    const __global uchar *kslab = kc + bk * k_rs;
    const __global uchar *vslab = vc + bk * v_rs;
#endif
    const long c_lo = split * chunk;
    const long c_hi = min(slot_end, c_lo + chunk);

    KV_ROWS_SETUP(); /* every work-item holds every row's identity and range */
    for (int x = t; x < ROWS * D; x += WG) {
        const int r = x / D, i = x - r * D;
        qs[r][i] = qd[qrow[r] + i];
    }

    float m[ROWS], l[ROWS];
#define NU ((DVP + WG - 1) / WG) /* columns per work-item */
    float acc[ROWS][NU];
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int u = 0; u < NU; u++) acc[r][u] = 0.0f;
    }

    for (long j0 = jlo; j0 < jhi; j0 += KTILE) {
        const int nt = (int)min((long)KTILE, jhi - j0);
        barrier(CLK_LOCAL_MEM_FENCE); /* qs written; the previous tile's ks, vs, ss used up */
        for (int x = t; x < KTILE * D; x += WG) {
            const int kk = x / D, i = x - kk * D;
            ks[kk][i] = kk < nt && SLOT_USED(j0 + kk) ? KV_KEY_AT(j0 + kk, i) : 0.0f;
        }
        for (int x = t; x < KTILE * DV; x += WG) {
            const int kk = x / DV, d = x - kk * DV;
            const long j = j0 + kk;
            vs[kk][d] = kk < nt && SLOT_USED(j) ? kv_val_at(V_TILE(j), (int)(IN_PAGE(j) & 15), d, vtab) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int x = t; x < ROWS * KTILE; x += WG) {
            const int r = x / KTILE, kk = x - r * KTILE;
            const long j = j0 + kk; /* a slot; the token SLOT_TOKEN(j) when SLOT_USED(j) */
            float sc = -INFINITY;
            if (kk < nt && j >= lo[r] && j < hi[r] && SLOT_USED(j)) {
                float dot = 0.0f;
                for (int i = 0; i < D; i++) dot = fma(qs[r][i], ks[kk][i], dot);
                sc = clattn_score(dot, b, hr[r], ir[r], SLOT_TOKEN(j), slope[r], scale, softcap, Lqb,
                                  len, mask, mask_off, mask_s0, mask_s1, mask_s2, mask_s3);
            }
            ss[r][kk] = sc;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        float corr[ROWS];
        for (int r = 0; r < ROWS; r++) {
            float tmax = -INFINITY;
            for (int kk = 0; kk < KTILE; kk++) tmax = fmax(tmax, ss[r][kk]);
            corr[r] = splitkv_rescale(&m[r], tmax);
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* every score read before it becomes a probability */
        for (int x = t; x < ROWS * KTILE; x += WG) {
            const int r = x / KTILE, kk = x - r * KTILE;
            /* nothing visible yet: p = 0, never exp(-inf - -inf) */
            ss[r][kk] = m[r] == -INFINITY ? 0.0f : exp(ss[r][kk] - m[r]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int r = 0; r < ROWS; r++) {
            float sum = 0.0f;
            for (int kk = 0; kk < KTILE; kk++) sum += ss[r][kk];
            l[r] = fma(l[r], corr[r], sum);
        }
        for (int u = 0; u < NU; u++) {
            const int d = t + u * WG;
            if (d >= DV) break;
            for (int r = 0; r < ROWS; r++) {
                float a = acc[r][u] * corr[r];
                for (int kk = 0; kk < nt; kk++) a = fma(ss[r][kk], vs[kk][d], a);
                acc[r][u] = a;
            }
        }
    }

    /* m and l are the same in every work-item; lanes DV..DVP of part_o are written 0 */
    for (int r = 0; r < ROWS; r++) {
        if (blk * ROWS + r >= nrows) break;
#ifdef PAGED
        if (ir[r] >= Lqb) continue; /* past this sequence's own query rows */
        const long pr = (hr[r] * Nq + q0 + ir[r]) * nsplit + split;
#else
        const long pr = ((b * Hq + hr[r]) * Lq + ir[r]) * nsplit + split;
#endif
        if (t == 0) splitkv_store_ml(part_ml, pr, m[r], l[r]);
        for (int u = 0; u < NU; u++) {
            const int d = t + u * WG;
            if (d < DVP) part_o[pr * DVP + d] = d < DV ? acc[r][u] : 0.0f;
        }
    }
}
#undef NU
#endif /* KV_GPU */
