/* kv_attn_gpu.cl: the GPU form of the KV-cache attention's partial kernel (kv_partial,
 * built with -DKV_GPU=1; the CPU form, the structure of both and their build options are
 * in cl/kv_attn.cl). src/core/program.c builds it after cl/prelude.cl, cl/splitkv.cl and
 * cl/kv_read.cl, whose format readers, paging and setup it shares with the CPU form.
 */

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

/* Lane l's code of a 16-lane TQ or INT4 word at w (layouts in src/kv/format.h), reading
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
    SPLITKV_PLACE();
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
        if (!KV_ROW_OWN(r)) continue; /* paged: past this sequence's own query rows */
        const long pr = KV_PART_ROW(r);
        if (t == 0) splitkv_store_ml(part_ml, pr, m[r], l[r]);
        for (int u = 0; u < NU; u++) {
            const int d = t + u * WG;
            if (d < DVP) part_o[pr * DVP + d] = d < DV ? acc[r][u] : 0.0f;
        }
    }
}
#undef NU
