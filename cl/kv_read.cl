/* kv_read.cl: reading a KV cache's stored formats, shared by both forms of the KV-cache
 * attention (cl/kv_attn.cl, the CPU form, and cl/kv_attn_gpu.cl, the GPU form);
 * src/core/program.c builds it after cl/prelude.cl and cl/splitkv.cl and before either
 * file. It holds the build options' defaults, the addresses of key tiles, rows and value
 * tiles in a contiguous cache or through a paged pool's page table (PAGED; the layouts
 * and paging are described in cl/kv_attn.cl), the unpacking of stored codes and scales,
 * software prefetch, and the setup both forms share (a sequence's length and slots, the
 * row block's rows and visible ranges, where a row's partial result goes).
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
/* Value tiles (src/kv/format.h): VNS scale halves per token, gathered per field, then
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

/* The 16 codes of a TQ word as lane indices (bit layouts in src/kv/format.h): a
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

/* 16 INT4 codes (a 4-bit word, src/kv/format.h) as floats 0..15: on AVX-512 a permute of
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

/* One step of a tile pair's scores (int8, tq keys): coordinates i and i + 1 of every row
 * of the block against k00, k10 (coordinate i of tiles 0 and 1) and k01, k11 (i + 1),
 * into the accumulators sa[r][tile][i & 1], whose indices stay constant. */
#define KV_SCORE_PAIR2(i)                                                                  \
    _Pragma("unroll") for (int r = 0; r < ROWS; r++) {                                     \
        const float16 qa = (float16)(qd[qrow[r] + (i)]), qb = (float16)(qd[qrow[r] + (i) + 1]); \
        sa[r][0][0] = fma(qa, k00, sa[r][0][0]);                                           \
        sa[r][1][0] = fma(qa, k10, sa[r][1][0]);                                           \
        sa[r][0][1] = fma(qb, k01, sa[r][0][1]);                                           \
        sa[r][1][1] = fma(qb, k11, sa[r][1][1]);                                           \
    }

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

/* Row r's partial-result row pr (cl/splitkv.cl's layout; packed rows [Hq, Nq] when
 * paged), and whether the row is one of its sequence's own query rows (paged: rows past
 * a sequence's own count idle and store nothing). */
#ifdef PAGED
#define KV_PART_ROW(r) ((hr[r] * Nq + q0 + ir[r]) * nsplit + split)
#define KV_ROW_OWN(r) (ir[r] < Lqb)
#else
#define KV_PART_ROW(r) (((b * Hq + hr[r]) * Lq + ir[r]) * nsplit + split)
#define KV_ROW_OWN(r) 1
#endif
