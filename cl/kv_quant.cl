/* kv_quant.cl: the KV cache's work outside attention: quantize new keys/values on append,
 * and the rotation of the TQ formats applied to the query before attention and to the
 * output after it (the cache itself is never rotated back). The arithmetic repeats
 * src/kv_format.c operation for operation (explicit fma, the same constants, ties to
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

#define FMT_F32 0
#define FMT_F16 1
#define FMT_INT8 2
#define FMT_INT4 3
#define FMT_TQ4 4
#define FMT_TQ3 5
#define FMT_TQ2 6
#define TQ_BITS (FMT == FMT_TQ4 ? 4 : FMT == FMT_TQ3 ? 3 : FMT == FMT_TQ2 ? 2 : 0)
#define DIMP ((DIM + 15) / 16 * 16) /* a dense row, padded to whole 16-lane vectors */
#define HALF_MAX 65504.0f

/* ---- Rotation (src/kv_format.c documents R) ----------------------------------------
 * tab: for round k, sign[k][0..DIM) then perm[k][0..DIM), int32. */
#define ROT_ROUNDS ((DIM & (DIM - 1)) == 0 ? 1 : 2)

/* 1/sqrt(bs) for bs = 2^k, computed as src/kv_format.c's block_scale does. */
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
    vstore_half_rte(clamp(v, -HALF_MAX, HALF_MAX), 0, (half *)h);
    return vload_half(0, (const half *)h);
}

inline void kv_store_half(__global uchar *p, float v)
{
    vstore_half_rte(clamp(v, -HALF_MAX, HALF_MAX), 0, (__global half *)p);
}

/* One INT4 block from m values v[0..m): minimum, scale (max - min) / 15, codes. Values
 * are already in the half range. Writes d, m and the 16 code bytes at blk. */
inline void kv_int4_block(const float *v, int m, __global uchar *blk)
{
    float mn = INFINITY, mx = -INFINITY;
    for (int e = 0; e < m; e++) {
        mn = fmin(mn, v[e]);
        mx = fmax(mx, v[e]);
    }
    const float d = kv_round_half((mx - mn) / 15.0f);
    const float mf = kv_round_half(mn);
    kv_store_half(blk, d);
    kv_store_half(blk + 2, mf);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    uchar qs[16];
    for (int e = 0; e < 16; e++) qs[e] = 0;
    for (int e = 0; e < m; e++) {
        const uchar q = (uchar)clamp(rint((v[e] - mf) * id), 0.0f, 15.0f);
        qs[e & 15] |= e < 16 ? q : (uchar)(q << 4);
    }
    for (int e = 0; e < 16; e++) blk[4 + e] = qs[e];
}

#ifdef KV_APPEND
/* ---- Append: one vector per work-item --------------------------------------------
 * global (n, H, B): new row t of (b, h) goes to position old_len[b] + t when
 * t < new_len[b] - old_len[b]. The cache holds cap rows of row_bytes per (b, h). tq: the
 * format's table (codebook, then thresholds; src/kv_format.c clattn__kv_tq_table) and
 * the rotation table; sqrt_n = sqrtf(DIM) from the host. INT4 here is the per-vector
 * (values) layout; keys use kv_append_int4_keys. */
__kernel void kv_append_rows(TENSOR_PARAMS(const __global K_T *, x), __global uchar *cache,
                             long row_bytes, long cap, long H, const __global int *old_len,
                             const __global int *new_len, const __global int *rot,
                             const __global float *tab, float sqrt_n)
{
    const long t = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const long l0 = old_len[b];
    if (t >= (long)new_len[b] - l0) return;
    __global uchar *row = cache + ((b * H + h) * cap + l0 + t) * row_bytes;
    const long xb = x_off + b * x_s0 + h * x_s1 + t * x_s2;
    float v[DIM];
    for (int i = 0; i < DIM; i++) v[i] = LOAD_K(x, xb + i * x_s3);

#if FMT == FMT_F32
    __global float *r = (__global float *)row;
    for (int i = 0; i < DIM; i++) r[i] = v[i];
#elif FMT == FMT_F16
    for (int i = 0; i < DIM; i++) vstore_half_rte(v[i], i, (__global half *)row);
#elif FMT == FMT_INT8
    for (int b0 = 0; b0 < DIM; b0 += 32) {
        __global uchar *blk = row + (b0 / 32) * 34;
        const int m = min(32, DIM - b0);
        float amax = 0.0f;
        for (int e = 0; e < m; e++) amax = fmax(amax, fabs(v[b0 + e]));
        const float d = kv_round_half(amax / 127.0f);
        kv_store_half(blk, d);
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        __global char *qs = (__global char *)(blk + 2);
        for (int e = 0; e < 32; e++)
            qs[e] = e < m ? (char)clamp(rint(v[b0 + e] * id), -127.0f, 127.0f) : (char)0;
    }
#elif FMT == FMT_INT4
    for (int b0 = 0; b0 < DIM; b0 += 32) {
        float w[32];
        const int m = min(32, DIM - b0);
        for (int e = 0; e < m; e++) w[e] = clamp(v[b0 + e], -HALF_MAX, HALF_MAX);
        kv_int4_block(w, m, row + (b0 / 32) * 20);
    }
#else /* TQ */
    kv_rot_forward(v, rot);
    float ss = 0.0f;
    for (int i = 0; i < DIM; i++) ss = fma(v[i], v[i], ss);
    const float norm = sqrt(ss);
    const float f = norm > 0.0f ? sqrt_n / norm : 0.0f;
    const int nthr = (1 << TQ_BITS) - 1;
    float yc = 0.0f, cc = 0.0f;
    uchar codes[DIMP];
    for (int i = 0; i < DIMP; i++) codes[i] = 0;
    for (int i = 0; i < DIM; i++) {
        const float z = v[i] * f;
        int k = 0;
        for (int m = 0; m < nthr; m++) k += z > tab[16 + m];
        codes[i] = (uchar)k;
        const float c = tab[k];
        yc = fma(v[i], c, yc);
        cc = fma(c, c, cc);
    }
    kv_store_half(row, yc / cc);
    for (int g = 0; g < DIMP / 16; g++) {
        const uchar *c = codes + 16 * g;
#if TQ_BITS == 4
        __global uchar *p = row + 2 + 8 * g;
        for (int e = 0; e < 8; e++) p[e] = (uchar)(c[e] | (c[e + 8] << 4));
#else
        __global uchar *p = row + 2 + (TQ_BITS == 3 ? 6 : 4) * g;
        for (int e = 0; e < 4; e++)
            p[e] = (uchar)((c[e] & 3) | ((c[e + 4] & 3) << 2) | ((c[e + 8] & 3) << 4) |
                           ((c[e + 12] & 3) << 6));
#if TQ_BITS == 3
        for (int hb = 0; hb < 2; hb++) {
            uchar w = 0;
            for (int e = 0; e < 8; e++) w |= (uchar)(((c[8 * hb + e] >> 2) & 1) << e);
            p[4 + hb] = w;
        }
#endif
#endif
    }
#endif
}

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
    __global uchar *groups = cache + (b * H + h) * ngroups * (DIM * 20) + i * 20;
    const long xb = x_off + b * x_s0 + h * x_s1 + i * x_s3;
    float v[32];
    const long g0 = l0 / 32;
    for (long t = g0 * 32; t < l0; t++) v[t - g0 * 32] = vload_half((t - g0 * 32) * DIM, tl);
    for (long g = g0; g * 32 < l1; g++) {
        const long t_lo = g * 32, t_hi = min(t_lo + 32, l1);
        for (long t = max(t_lo, l0); t < t_hi; t++)
            v[t - t_lo] = kv_round_half(LOAD_K(x, xb + (t - l0) * x_s2));
        kv_int4_block(v, (int)(t_hi - t_lo), groups + g * (DIM * 20));
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
