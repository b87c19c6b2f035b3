/* kv_quant.cl: the KV cache's work outside attention: quantize new keys/values on append,
 * and the rotation of the TQ formats applied to the query before attention and to the
 * output after it (the cache itself is never rotated back). The arithmetic repeats
 * src/kv/format.c operation for operation (explicit fma, the same constants, ties to
 * even), so the packed bytes equal the CPU reference's wherever division and sqrt are
 * correctly rounded (PoCL: always; tests/test_kv_format.c checks it).
 *
 * Build options (besides the prelude's dtypes). One program holds only the kernels one
 * call needs, since PoCL's build time grows with every kernel in the file (about 3 s per
 * program on the 2-core test machine):
 *   KV_APPEND  the append kernels, with
 *     DIM      vector length (D for keys, Dv for values), 1..256
 *     FMT      cache format, clattn_kv_format's value; K_DT the input's dtype
 *   KV_ROWS    kv_prep_q and kv_store_o, with
 *     DIM      D for kv_prep_q, Dv for kv_store_o (one program when D = Dv)
 *     ROT_Q    1: kv_prep_q rotates (TQ keys); ROT_O 1: kv_store_o rotates back (TQ
 *              values); Q_DT and O_DT the dtypes of q and o
 */
#ifndef DIM
#error "kv_quant.cl needs -DDIM=<vector length>"
#endif
#ifndef FMT
#define FMT 0
#endif
#ifndef ROT_Q
#define ROT_Q 0
#endif
#ifndef ROT_O
#define ROT_O 0
#endif

#define TQ_BITS (FMT == FMT_TQ4 ? 4 : FMT == FMT_TQ3 ? 3 : FMT == FMT_TQ2 ? 2 : 0)
#define DIMP ((DIM + 15) / 16 * 16) /* a dense row, padded to whole 16-lane vectors */
#define KV_HALF_MAX 65504.0f

/* ---- Rotation (src/kv/rotation.c documents R) ----------------------------------------
 * tab: for round k, sign[k][0..DIM) then perm[k][0..DIM), int32. */
#define ROT_ROUNDS ((DIM & (DIM - 1)) == 0 ? 1 : 2)

/* 1/sqrt(bs) for bs = 2^k, computed as src/kv/format.c's block_scale does. */
inline float kv_block_scale(int bs)
{
    int k = 0;
    while ((1 << k) < bs) k++;
    const float s = 1.0f / (float)(1 << (k / 2)); /* exact: a power of two */
    return (k & 1) ? s * 0.70710678118654752f : s;
}

inline void kv_block_fwht(float *x)
{
    int off = 0;
    for (int bs = 256; bs >= 1; bs >>= 1) {
        if (!(DIM & bs)) continue;
        for (int h = 1; h < bs; h <<= 1)
            for (int i = 0; i < bs; i += 2 * h)
                for (int j = i; j < i + h; j++) {
                    const float a = x[off + j], c = x[off + j + h];
                    x[off + j] = a + c;
                    x[off + j + h] = a - c;
                }
        const float sc = kv_block_scale(bs);
        for (int j = 0; j < bs; j++) x[off + j] *= sc;
        off += bs;
    }
}

inline void kv_rot_forward(float *x, const __global int *tab)
{
    float t[DIM];
    for (int k = 0; k < ROT_ROUNDS; k++) {
        const __global int *sg = tab + (2 * k) * DIM, *pm = tab + (2 * k + 1) * DIM;
        for (int i = 0; i < DIM; i++) t[i] = x[i] * (float)sg[i];
        for (int i = 0; i < DIM; i++) x[i] = t[pm[i]];
        kv_block_fwht(x);
    }
}

inline void kv_rot_inverse(float *x, const __global int *tab)
{
    float t[DIM];
    for (int k = ROT_ROUNDS - 1; k >= 0; k--) {
        const __global int *sg = tab + (2 * k) * DIM, *pm = tab + (2 * k + 1) * DIM;
        kv_block_fwht(x);
        for (int i = 0; i < DIM; i++) t[pm[i]] = x[i];
        for (int i = 0; i < DIM; i++) x[i] = t[i] * (float)sg[i];
    }
}

/* A float rounded to half and back, saturating at the largest finite half. */
inline float kv_round_half(float v)
{
    ushort h[1]; /* a half array needs cl_khr_fp16; a pointer to half does not */
    vstore_half_rte(clamp(v, -KV_HALF_MAX, KV_HALF_MAX), 0, (half *)h);
    return vload_half(0, (const half *)h);
}

/* One INT4 block from m values v[0..m): minimum, scale (max - min) / 15, codes. Values
 * are already in the half range. Writes d, m and the 16 code bytes where told. */
inline void kv_int4_block(const float *v, int m, uchar *d_at, uchar *m_at, uchar *qs)
{
    float mn = INFINITY, mx = -INFINITY;
    for (int e = 0; e < m; e++) {
        mn = fmin(mn, v[e]);
        mx = fmax(mx, v[e]);
    }
    const float d = kv_round_half((mx - mn) / 15.0f);
    const float mf = kv_round_half(mn);
    vstore_half_rte(d, 0, (half *)d_at);
    vstore_half_rte(mf, 0, (half *)m_at);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int e = 0; e < 16; e++) qs[e] = 0;
    for (int e = 0; e < m; e++) {
        const uchar q = (uchar)clamp(rint((v[e] - mf) * id), 0.0f, 15.0f);
        /* two 16-lane words in the tq4 layout (src/kv/format.h) */
        const int l = e & 15, byte = 8 * (e >> 4) + 4 * (l & 1) + (l >> 2);
        qs[byte] |= (uchar)(q << (4 * ((l >> 1) & 1)));
    }
}

#ifdef KV_APPEND
/* Bytes of one row (src/kv/format.h): the reference layout every format quantizes into. */
#define NB32 ((DIM + 31) / 32)
#define TQ_GB (TQ_BITS == 4 ? 8 : TQ_BITS == 3 ? 6 : 4)
#if FMT == FMT_F32
#define ROW_BYTES (4 * DIM)
#elif FMT == FMT_F16
#define ROW_BYTES (2 * DIM)
#elif FMT == FMT_INT8
#define ROW_BYTES (34 * NB32)
#elif FMT == FMT_INT4
#define ROW_BYTES (20 * NB32)
#else
#define ROW_BYTES (2 + TQ_GB * (DIMP / 16))
#endif

/* Lane l's code of a 16-lane TQ word in private memory, and setting it. */
inline int kv_word_get(const uchar *w, int l)
{
#if TQ_BITS == 4
    return (w[4 * (l & 1) + (l >> 2)] >> (4 * ((l >> 1) & 1))) & 15;
#elif TQ_BITS == 3
    ulong v = 0;
    for (int k = 0; k < 6; k++) v |= (ulong)w[k] << (8 * k);
    return (int)((v >> (24 * (l & 1) + 3 * (l >> 1))) & 7);
#else
    return (w[l >> 2] >> (2 * (l & 3))) & 3;
#endif
}

inline void kv_word_set(uchar *w, int l, int c)
{
#if TQ_BITS == 4
    const int byte = 4 * (l & 1) + (l >> 2), sh = 4 * ((l >> 1) & 1);
    w[byte] = (uchar)((w[byte] & ~(15 << sh)) | (c << sh));
#elif TQ_BITS == 3
    ulong v = 0;
    for (int k = 0; k < 6; k++) v |= (ulong)w[k] << (8 * k);
    const int sh = 24 * (l & 1) + 3 * (l >> 1);
    v = (v & ~((ulong)7 << sh)) | ((ulong)(c & 7) << sh);
    for (int k = 0; k < 6; k++) w[k] = (uchar)(v >> (8 * k));
#else
    const int byte = l >> 2, sh = 2 * (l & 3);
    w[byte] = (uchar)((w[byte] & ~(3 << sh)) | ((c & 3) << sh));
#endif
}

/* The same for a word in global memory (a key tile's word, shared by 16 tokens). */
inline void kv_word_set_global(__global uchar *w, int l, int c)
{
    uchar t[8]; /* TQ_GB <= 8 */
    for (int e = 0; e < TQ_GB; e++) t[e] = w[e];
    kv_word_set(t, l, c);
    for (int e = 0; e < TQ_GB; e++) w[e] = t[e];
}

/* Quantize v (DIM floats, overwritten) into row (ROW_BYTES, private) exactly as
 * src/kv/format.c's from_float does. tq: the format's table (codebook, then thresholds;
 * clattn__kv_tq_table) and the rotation table; sqrt_n = sqrtf(DIM) from the host. */
inline void kv_quantize_row(float *v, uchar *row, const __global int *rot, const __global float *tab,
                            float sqrt_n)
{
#if FMT == FMT_F32
    for (int i = 0; i < DIM; i++) {
        const uint u = as_uint(v[i]);
        for (int e = 0; e < 4; e++) row[4 * i + e] = (uchar)(u >> (8 * e));
    }
#elif FMT == FMT_F16
    for (int i = 0; i < DIM; i++) vstore_half_rte(v[i], i, (half *)row);
#elif FMT == FMT_INT8
    char *qs = (char *)(row + 2 * NB32);
    for (int b = 0; b < NB32; b++) {
        const int b0 = 32 * b, m = min(32, DIM - b0);
        float amax = 0.0f;
        for (int e = 0; e < m; e++) amax = fmax(amax, fabs(v[b0 + e]));
        const float d = kv_round_half(amax / 127.0f);
        vstore_half_rte(d, b, (half *)row);
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        for (int e = 0; e < 32; e++)
            qs[b0 + e] = e < m ? (char)clamp(rint(v[b0 + e] * id), -127.0f, 127.0f) : (char)0;
    }
#elif FMT == FMT_INT4
    for (int b = 0; b < NB32; b++) {
        float w[32];
        const int m = min(32, DIM - 32 * b);
        for (int e = 0; e < m; e++) w[e] = clamp(v[32 * b + e], -KV_HALF_MAX, KV_HALF_MAX);
        kv_int4_block(w, m, row + 2 * b, row + 2 * NB32 + 2 * b, row + 4 * NB32 + 16 * b);
    }
#else /* TQ: src/kv/format.c explains the least-squares scale */
    kv_rot_forward(v, rot);
    float ss = 0.0f;
    for (int i = 0; i < DIM; i++) ss = fma(v[i], v[i], ss);
    const float norm = sqrt(ss);
    const float f = norm > 0.0f ? sqrt_n / norm : 0.0f;
    const int nthr = (1 << TQ_BITS) - 1;
    float yc = 0.0f, cc = 0.0f;
    for (int e = 2; e < ROW_BYTES; e++) row[e] = 0;
    for (int i = 0; i < DIM; i++) {
        const float z = v[i] * f;
        int k = 0;
        for (int m = 0; m < nthr; m++) k += z > tab[16 + m];
        kv_word_set(row + 2 + TQ_GB * (i / 16), i % 16, k);
        const float c = tab[k];
        yc = fma(v[i], c, yc);
        cc = fma(c, c, cc);
    }
    vstore_half_rte(clamp(yc / cc, -KV_HALF_MAX, KV_HALF_MAX), 0, (half *)row);
#endif
}

/* ---- Append: rows, one vector per work-item ----------------------------------------
 * global (n, H, B): new row t of (b, h) goes to position p = old_len[b] + t when
 * t < new_len[b] - old_len[b]; slab = bytes per (b, h). VTILES 0: plain rows (f32 and
 * f16 keys); VTILES 1: value tiles of 16 tokens (src/kv/format.h): the row's NSCALE
 * scale halves go to their fields' lane, its codes to slot p % 16. Tokens never share a
 * byte, so one work-item per token writes without races. */
#ifndef VTILES
#define VTILES 0
#endif
#if FMT == FMT_INT8
#define NSCALE NB32
#elif FMT == FMT_INT4
#define NSCALE (2 * NB32)
#elif TQ_BITS
#define NSCALE 1
#else
#define NSCALE 0
#endif
/* Quantize v into position p of a slab: a plain row (VTILES 0) or lane p % 16 of value
 * tile p / 16 (VTILES 1). */
inline void kv_row_store(__global uchar *slab, long p, const uchar *row)
{
#if VTILES
    __global uchar *tile = slab + (p / 16) * (16 * ROW_BYTES);
    const int l = (int)(p % 16);
    for (int k = 0; k < NSCALE; k++) {
        tile[2 * (16 * k + l)] = row[2 * k];
        tile[2 * (16 * k + l) + 1] = row[2 * k + 1];
    }
    __global uchar *dst = tile + 32 * NSCALE + l * (ROW_BYTES - 2 * NSCALE);
    for (int e = 0; e < ROW_BYTES - 2 * NSCALE; e++) dst[e] = row[2 * NSCALE + e];
#else
    __global uchar *dst = slab + p * ROW_BYTES;
    for (int e = 0; e < ROW_BYTES; e++) dst[e] = row[e];
#endif
}

inline void kv_row_put(__global uchar *slab, long p, float *v, const __global int *rot,
                       const __global float *tab, float sqrt_n)
{
    ushort rowbuf[(ROW_BYTES + 1) / 2]; /* ushort: halves inside are 2-byte aligned */
    uchar *row = (uchar *)rowbuf;
    kv_quantize_row(v, row, rot, tab, sqrt_n);
    kv_row_store(slab, p, row);
}

#if defined(PAGED) && defined(KV_MOVE)
/* The stored row of position p of a slab, back in the row layout (kv_row_store's
 * inverse). */
inline void kv_row_load(const __global uchar *slab, long p, uchar *row)
{
#if VTILES
    const __global uchar *tile = slab + (p / 16) * (16 * ROW_BYTES);
    const int l = (int)(p % 16);
    for (int k = 0; k < NSCALE; k++) {
        row[2 * k] = tile[2 * (16 * k + l)];
        row[2 * k + 1] = tile[2 * (16 * k + l) + 1];
    }
    const __global uchar *src = tile + 32 * NSCALE + l * (ROW_BYTES - 2 * NSCALE);
    for (int e = 0; e < ROW_BYTES - 2 * NSCALE; e++) row[2 * NSCALE + e] = src[e];
#else
    const __global uchar *src = slab + p * ROW_BYTES;
    for (int e = 0; e < ROW_BYTES; e++) row[e] = src[e];
#endif
}
#endif

__kernel void kv_append_rows(TENSOR_PARAMS(const __global K_T *, x), __global uchar *cache, long slab,
                             long H, const __global int *old_len, const __global int *new_len,
                             const __global int *rot, const __global float *tab, float sqrt_n)
{
    const long t = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const long l0 = old_len[b];
    if (t >= (long)new_len[b] - l0) return;
    const long p = l0 + t;
    const long xb = x_off + b * x_s0 + h * x_s1 + t * x_s2;
    float v[DIM];
    for (int i = 0; i < DIM; i++) v[i] = LOAD_K(x, xb + i * x_s3);
    kv_row_put(cache + (b * H + h) * slab, p, v, rot, tab, sqrt_n);
}

#ifdef PAGED
/* ---- Append to a paged pool: rows, one vector per work-item -----------------------
 * global (N, H): token t of x goes to slot slots[t] = page * ps + offset of the pool,
 * whose (page, head) slabs hold page_bytes each (pt slots: ps, or a tile of 16 for
 * pages below it). Tokens never share a byte here (plain rows, value tiles), so one
 * work-item per token writes without races. */
__kernel void kv_paged_append_rows(TENSOR_PARAMS(const __global K_T *, x), __global uchar *pool,
                                   long page_bytes, long H, long ps, const __global int *slots,
                                   const __global int *rot, const __global float *tab, float sqrt_n)
{
    const long t = get_global_id(0), h = get_global_id(1);
    const long slot = slots[t], page = slot / ps;
    const long xb = x_off + h * x_s1 + t * x_s2;
    float v[DIM];
    for (int i = 0; i < DIM; i++) v[i] = LOAD_K(x, xb + i * x_s3);
    kv_row_put(pool + (page * H + h) * page_bytes, slot - page * ps, v, rot, tab, sqrt_n);
}
#endif

#if FMT == FMT_INT8 || TQ_BITS
/* Quantize the input row at x[xb + i * xs] into lane l of key tile tp (16 rows
 * transposed, src/kv/format.h). */
inline void kv_tile_store(__global uchar *tp, int l, const uchar *row)
{
#if FMT == FMT_INT8
    for (int bb = 0; bb < NB32; bb++) {
        tp[2 * (16 * bb + l)] = row[2 * bb];
        tp[2 * (16 * bb + l) + 1] = row[2 * bb + 1];
    }
    for (int i = 0; i < DIM; i++) tp[32 * NB32 + 16 * i + l] = row[2 * NB32 + i];
#else
    tp[2 * l] = row[0];
    tp[2 * l + 1] = row[1];
    for (int i = 0; i < DIM; i++)
        kv_word_set_global(tp + 32 + TQ_GB * i, l, kv_word_get(row + 2 + TQ_GB * (i / 16), i % 16));
#endif
}

inline void kv_tile_put(__global uchar *tp, int l, const __global K_T *x, long xb, long xs,
                        const __global int *rot, const __global float *tab, float sqrt_n)
{
    float v[DIM];
    for (int i = 0; i < DIM; i++) v[i] = LOAD_K(x, xb + i * xs);
    ushort rowbuf[(ROW_BYTES + 1) / 2];
    uchar *row = (uchar *)rowbuf;
    kv_quantize_row(v, row, rot, tab, sqrt_n);
    kv_tile_store(tp, l, row);
}

#if defined(PAGED) && defined(KV_MOVE)
/* Lane l of key tile tp back in the row layout (kv_tile_store's inverse). */
inline void kv_tile_load(const __global uchar *tp, int l, uchar *row)
{
#if FMT == FMT_INT8
    for (int bb = 0; bb < NB32; bb++) {
        row[2 * bb] = tp[2 * (16 * bb + l)];
        row[2 * bb + 1] = tp[2 * (16 * bb + l) + 1];
    }
    for (int i = 0; i < NB32 * 32; i++) row[2 * NB32 + i] = i < DIM ? tp[32 * NB32 + 16 * i + l] : 0;
#else
    row[0] = tp[2 * l];
    row[1] = tp[2 * l + 1];
    for (int e = 2; e < ROW_BYTES; e++) row[e] = 0;
    for (int i = 0; i < DIM; i++) {
        uchar w[8];
        for (int e = 0; e < TQ_GB; e++) w[e] = tp[32 + TQ_GB * i + e];
        kv_word_set(row + 2 + TQ_GB * (i / 16), i % 16, kv_word_get(w, l));
    }
#endif
}
#endif

/* ---- Append: key tiles, one tile per work-item -------------------------------------
 * global (ntiles, H, B): work-item k owns tile old_len[b] / 16 + k of (b, h) and writes
 * the lanes of its new tokens (src/kv/format.h: 16 rows transposed). TQ packs several
 * tokens into one byte, so a tile has one writer. tile_bytes, tiles per (b, h) slab. */
__kernel void kv_append_tiles(TENSOR_PARAMS(const __global K_T *, x), __global uchar *cache,
                              long tile_bytes, long tiles, long H, const __global int *old_len,
                              const __global int *new_len, const __global int *rot,
                              const __global float *tab, float sqrt_n)
{
    const long k = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const long l0 = old_len[b], l1 = new_len[b];
    const long tile = l0 / 16 + k;
    if (l1 <= l0 || tile * 16 >= l1) return;
    __global uchar *tp = cache + ((b * H + h) * tiles + tile) * tile_bytes;
    for (long p = max(tile * 16, l0); p < min(tile * 16 + 16, l1); p++)
        kv_tile_put(tp, (int)(p - tile * 16), x, x_off + b * x_s0 + h * x_s1 + (p - l0) * x_s2,
                    x_s3, rot, tab, sqrt_n);
}

#ifdef PAGED
/* ---- Append to a paged pool: key tiles, one tile per work-item -------------------
 * global (ntiles, H). The host sorted the tokens by slot and grouped them by 16-slot
 * tile: tile k's tokens are order[grp[k] .. grp[k+1]), so a tile has one writer (TQ
 * packs several tokens into one byte). tile_bytes per key tile; pages as above. */
__kernel void kv_paged_append_tiles(TENSOR_PARAMS(const __global K_T *, x), __global uchar *pool,
                                    long page_bytes, long tile_bytes, long H, long ps,
                                    const __global int *slots, const __global int *grp,
                                    const __global int *order, const __global int *rot,
                                    const __global float *tab, float sqrt_n)
{
    const long k = get_global_id(0), h = get_global_id(1);
    for (long e = grp[k]; e < grp[k + 1]; e++) {
        const long t = order[e], slot = slots[t], page = slot / ps, p = slot - page * ps;
        __global uchar *tp = pool + (page * H + h) * page_bytes + (p / 16) * tile_bytes;
        kv_tile_put(tp, (int)(p % 16), x, x_off + h * x_s1 + t * x_s2, x_s3, rot, tab, sqrt_n);
    }
}
#endif
#endif

#if defined(PAGED) && defined(KV_MOVE)
/* ---- Moving stored tokens within a paged pool (clattn_kv_pool_seq_remove) ---------
 * Exact byte moves, never re-quantized: kv_paged_gather copies token t's stored row
 * (slot src[t], every head) into rows[(t * H + h) * ROW_BYTES]; kv_paged_scatter
 * writes them to slots dst[t], one destination tile per work-item as the append (TQ
 * tiles pack several tokens into one byte). KTILES: keys in 16-token tiles (int8, tq). */
#ifndef KTILES
#define KTILES 0
#endif
__kernel void kv_paged_gather(const __global uchar *pool, long page_bytes, long tile_bytes, long H,
                              long ps, const __global int *src, __global uchar *rows)
{
    const long t = get_global_id(0), h = get_global_id(1);
    const long slot = src[t], page = slot / ps, p = slot - page * ps;
    const __global uchar *base = pool + (page * H + h) * page_bytes;
    uchar row[ROW_BYTES];
#if KTILES
    kv_tile_load(base + (p / 16) * tile_bytes, (int)(p % 16), row);
#else
    kv_row_load(base, p, row);
#endif
    for (int e = 0; e < ROW_BYTES; e++) rows[(t * H + h) * ROW_BYTES + e] = row[e];
}

/* kv_paged_dequant: token t's stored row (slot src[t], every head) as floats, into
 * out[(t * H + h) * DIM + i] (a dense [tokens, H, DIM] block, [1, H, tokens, DIM] with
 * BLHD strides), dequantized as src/kv/format.c's to_float does (TQ: codebook times
 * the scale, then the inverse rotation). Cascade attention reads a shared prefix this
 * way once per call and runs it as one dense problem. */
__kernel void kv_paged_dequant(const __global uchar *pool, long page_bytes, long tile_bytes, long H, long ps,
                               const __global int *src, __global float *out, const __global int *rot,
                               const __global float *tab)
{
    const long t = get_global_id(0), h = get_global_id(1);
    const long slot = src[t], page = slot / ps, p = slot - page * ps;
    const __global uchar *base = pool + (page * H + h) * page_bytes;
    ushort rowbuf[(ROW_BYTES + 1) / 2]; /* halves inside are 2-byte aligned */
    uchar *row = (uchar *)rowbuf;
#if KTILES
    kv_tile_load(base + (p / 16) * tile_bytes, (int)(p % 16), row);
#else
    kv_row_load(base, p, row);
#endif
    float x[DIM];
#if FMT == FMT_F32
    for (int i = 0; i < DIM; i++)
        x[i] = as_float((uint)row[4 * i] | ((uint)row[4 * i + 1] << 8) | ((uint)row[4 * i + 2] << 16) |
                        ((uint)row[4 * i + 3] << 24));
#elif FMT == FMT_F16
    for (int i = 0; i < DIM; i++) x[i] = vload_half(i, (const half *)row);
#elif FMT == FMT_INT8
    for (int i = 0; i < DIM; i++) x[i] = vload_half(i / 32, (const half *)row) * (float)((const char *)row)[2 * NB32 + i];
#elif FMT == FMT_INT4
    for (int i = 0; i < DIM; i++) {
        const int b = i / 32, e = i % 32, l = e & 15;
        const uchar *w = row + 4 * NB32 + 16 * b + 8 * (e >> 4);
        const int q = (w[4 * (l & 1) + (l >> 2)] >> (4 * ((l >> 1) & 1))) & 15;
        x[i] = vload_half(NB32 + b, (const half *)row) + vload_half(b, (const half *)row) * (float)q;
    }
#else
    const float g = vload_half(0, (const half *)row);
    for (int i = 0; i < DIM; i++) x[i] = g * tab[kv_word_get(row + 2 + TQ_GB * (i / 16), i % 16)];
    kv_rot_inverse(x, rot);
#endif
    for (int i = 0; i < DIM; i++) out[(t * H + h) * DIM + i] = x[i];
}

__kernel void kv_paged_scatter(__global uchar *pool, long page_bytes, long tile_bytes, long H, long ps,
                               const __global int *dst, const __global int *grp,
                               const __global int *order, const __global uchar *rows)
{
    const long k = get_global_id(0), h = get_global_id(1);
    for (long e = grp[k]; e < grp[k + 1]; e++) {
        const long t = order[e], slot = dst[t], page = slot / ps, p = slot - page * ps;
        __global uchar *base = pool + (page * H + h) * page_bytes;
        uchar row[ROW_BYTES];
        for (int b = 0; b < ROW_BYTES; b++) row[b] = rows[(t * H + h) * ROW_BYTES + b];
#if KTILES
        kv_tile_store(base + (p / 16) * tile_bytes, (int)(p % 16), row);
#else
        kv_row_store(base, p, row);
#endif
    }
}
#endif

#if FMT == FMT_INT4
/* ---- Append: INT4 keys, one channel per work-item --------------------------------
 * global (DIM, H, B). Keys are grouped per channel over 32 consecutive tokens. The
 * keys of the last, unfinished group are kept as halves in `tail` ([B, H, 32, DIM]) so
 * the group is quantized again, from the same values, each time it grows: the stored
 * group always equals the reference quantizer applied to the tokens present. One
 * work-item owns one channel of one (b, h), so it reads the old tail before it writes
 * the new one (no other work-item touches them). */
__kernel void kv_append_int4_keys(TENSOR_PARAMS(const __global K_T *, x), __global uchar *cache,
                                  __global half *tail, long ngroups, long H,
                                  const __global int *old_len, const __global int *new_len)
{
    const long i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const long l0 = old_len[b], l1 = new_len[b];
    if (l1 <= l0) return;
    __global half *tl = tail + (b * H + h) * 32 * DIM + i;
    /* group layout (src/kv/format.h): d[DIM], m[DIM], qs[DIM][16] */
    __global uchar *groups = cache + (b * H + h) * ngroups * (DIM * 20);
    const long xb = x_off + b * x_s0 + h * x_s1 + i * x_s3;
    float v[32];
    const long g0 = l0 / 32;
    for (long t = g0 * 32; t < l0; t++) v[t - g0 * 32] = vload_half((t - g0 * 32) * DIM, tl);
    for (long g = g0; g * 32 < l1; g++) {
        const long t_lo = g * 32, t_hi = min(t_lo + 32, l1);
        for (long t = max(t_lo, l0); t < t_hi; t++)
            v[t - t_lo] = kv_round_half(LOAD_K(x, xb + (t - l0) * x_s2));
        ushort d2[1], m2[1];
        uchar qs[16];
        kv_int4_block(v, (int)(t_hi - t_lo), (uchar *)d2, (uchar *)m2, qs);
        __global uchar *gp = groups + g * (DIM * 20);
        ((__global ushort *)gp)[i] = d2[0];
        ((__global ushort *)gp)[DIM + i] = m2[0];
        for (int e = 0; e < 16; e++) gp[4 * DIM + 16 * i + e] = qs[e];
        if (t_hi - t_lo < 32)
            for (long t = max(t_lo, l0); t < t_hi; t++)
                vstore_half(v[t - t_lo], (t - t_lo) * DIM, tl);
    }
}

#endif /* FMT == FMT_INT4 */
#endif /* KV_APPEND */

#ifdef KV_ROWS
/* ---- Query and output rows ---------------------------------------------------------
 * global (Lq, Hq, B). kv_prep_q: q row (b, h, i) as float, rotated when ROT_Q, into the
 * dense [B*Hq*Lq, DIMP] buffer (zero padding), row (b*Hq + h)*Lq + i. kv_store_o: the
 * dense output row, rotated back when ROT_O, stored into o. */
__kernel void kv_prep_q(TENSOR_PARAMS(const __global Q_T *, q), __global float *qd, long Hq,
                        long Lq, const __global int *rot)
{
    const long i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const long qb = q_off + b * q_s0 + h * q_s1 + i * q_s2;
    float v[DIM];
    for (int d = 0; d < DIM; d++) v[d] = LOAD_Q(q, qb + d * q_s3);
#if ROT_Q
    kv_rot_forward(v, rot);
#endif
    __global float *out = qd + ((b * Hq + h) * Lq + i) * DIMP;
    for (int d = 0; d < DIMP; d++) out[d] = d < DIM ? v[d] : 0.0f;
}

__kernel void kv_store_o(const __global float *od, TENSOR_PARAMS(__global O_T *, o), long Hq,
                         long Lq, const __global int *rot)
{
    const long i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const __global float *in = od + ((b * Hq + h) * Lq + i) * DIMP;
    float v[DIM];
    for (int d = 0; d < DIM; d++) v[d] = in[d];
#if ROT_O
    kv_rot_inverse(v, rot);
#endif
    const long ob = o_off + b * o_s0 + h * o_s1 + i * o_s2;
    for (int d = 0; d < DIM; d++) STORE_O(o, ob + d * o_s3, v[d]);
}
#endif /* KV_ROWS */
