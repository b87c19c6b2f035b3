/* flash_cpu.cl: fused (flash) attention for CPU OpenCL devices (PoCL and the like).
 *
 * Online softmax over key tiles: each work-item owns BLOCK_M query rows of one (b, h),
 * keeps their running max m, running sum l and the output accumulators in private
 * memory (registers), and writes O (and LSE) once. Nothing of size Lq x Lk is ever
 * stored; the only scratch is the packed K and V below, linear in Lk.
 *
 * Two kernels, enqueued in this order on the same scratch buffers:
 *
 *   flash_cpu_pack  global (LK_PAD, B*Hkv)          one work-item per key j
 *     (TENSOR_PARAMS(const __global K_T *, k), TENSOR_PARAMS(const __global V_T *, v),
 *      long Lk, long B, long Hkv,
 *      __global float *kt,     // [B, Hkv, LK_PAD / BLOCK_N, D, BLOCK_N]  K transposed
 *                              // tile by tile, f32, zero padded
 *      __global float *vp,     // [B, Hkv, LK_PAD, DV_PAD]  V, f32, zero padded
 *                              // (not written, and may be NULL, when V_DIRECT is 1)
 *      long lk_pad)
 *
 *   flash_cpu       global (ceil(Lq / BLOCK_M), B*Hq)   one work-item per BLOCK_M rows
 *     (TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),
 *      TENSOR_PARAMS(const __global V_T *, v), TENSOR_PARAMS(__global O_T *, o),
 *      __global float *lse, long lse_off, long lse_s0, long lse_s1, long lse_s2,
 *      MASK_PARAMS,
 *      long B, long Hq, long Hkv,
 *      const __global float *kt, const __global float *vp, long lk_pad)
 *   k and v are not read by flash_cpu (it reads the packed copies); they are there so
 *   every attention kernel takes the same leading arguments. lse is NULL when no
 *   LSE is asked for. Any local size works (no local memory, no barriers); 1 is fine.
 *
 * Build options (besides the prelude's dtype and masking options):
 *   D, DV        head dims of q/k and v/o, 1..256
 *   BLOCK_M      query rows per work-item (1..16)
 *   BLOCK_N      keys per tile, a multiple of 16 (16..128); LK_PAD = Lk rounded up to it
 *   DV_CHUNK     float16 vectors of the output row updated per pass over a tile (1..8)
 *   V_DIRECT     1: read V in place instead of the packed copy; only for float32 V with
 *                unit stride along Dv and DV a multiple of 16 (the host checks)
 *   FAST_EXP2    1 (default): the probabilities' exp2 is clattn_exp2_neg; 0: EXP2
 *   EXP2         exp2 (default) or native_exp2, for the rescaling factors (and FAST_EXP2 0)
 *   SKIP_RESCALE 1 (default): rescale a row's accumulators only when its running max moves
 *   VARLEN       1: packed (varlen) sequences in one launch, B = 1: both kernels end with
 *                VARLEN_PARAMS (the host's table, prelude.cl); the key copies hold each
 *                sequence's keys padded to whole tiles (LK_PAD their sum), flash_cpu runs
 *                on (vl_blocks, Hq) and takes Lq, Lk and the rows of Q, K, V, O and LSE
 *                from its sequence (its Lq and Lk arguments are the packed totals)
 *
 * Design (from measurements on PoCL 3.1, 2-core Xeon Cascade Lake with AVX-512):
 * scores and outputs are rank-1 updates "broadcast scalar x float16 vector": for each d,
 * s[r][0..BLOCK_N) += q[r][d] * Kt[d][j0..j0+BLOCK_N), so K is read as contiguous
 * vectors from the transposed copy and the reduction over D is a plain loop (D needs no
 * padding at all: D=72 costs 72/64 of D=64). P·V is the same pattern over rows of the
 * packed V, whose row is padded to a multiple of 16 floats (DV_PAD) with zeros, so
 * Dv=72 pays for 80 columns of P·V and nothing else. Scores are kept in base 2 (scale
 * * log2(e) folded into q) and exponentiated with exp2 on float16 vectors. Key tiles
 * entirely outside every row's KEY_RANGE are never visited; tiles entirely inside
 * every row's range skip the per-key range test.
 * Measured numbers: docs/measurements.md.
 */
#ifndef D
#error "flash_cpu.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif
#ifndef BLOCK_M
#define BLOCK_M 4
#endif
#ifndef BLOCK_N
#define BLOCK_N 64
#endif
#ifndef DV_CHUNK
#define DV_CHUNK 4
#endif
#ifndef EXP2
#define EXP2 exp2
#endif
#ifndef V_DIRECT
#define V_DIRECT 0
#endif
#ifndef FAST_EXP2
#define FAST_EXP2 1
#endif
#ifndef SKIP_RESCALE
#define SKIP_RESCALE 1
#endif
#ifndef ROW_GROUPS
#define ROW_GROUPS 1
#endif
#define ROWS (BLOCK_M * ROW_GROUPS) /* query rows per work-item */
#if V_DIRECT && (V_DT != 0 || (DV % 16) != 0)
#error "V_DIRECT needs float32 V and DV a multiple of 16"
#endif

#if (BLOCK_N % 16) != 0
#error "BLOCK_N must be a multiple of 16"
#endif
#define NVN (BLOCK_N / 16)           /* float16 vectors per key tile */
#define DV_PAD (((DV) + 15) / 16 * 16) /* row length of the packed V */
#define NVD (DV_PAD / 16)            /* float16 vectors per output row */

#define CLATTN_LOG2E 1.4426950408889634f
#define CLATTN_LN2 0.6931471805599453f

__kernel void flash_cpu_pack(TENSOR_PARAMS(const __global K_T *, k),
                             TENSOR_PARAMS(const __global V_T *, v), long Lk, long B,
                             long Hkv, __global float *kt, __global float *vp, long lk_pad
                             VARLEN_PARAMS)
{
    const long j = get_global_id(0);
    const long bh = get_global_id(1);
    if (j >= lk_pad || bh >= B * Hkv) return;
    const long b = bh / Hkv, h = bh % Hkv;
#if VARLEN
    /* key j of the copy is key jv of its tile's sequence, packed key row jrow */
    const int s_ = VL_TILE_SEQ(j / BLOCK_N);
    const long jv = j - VL_KPAD(s_), jrow = VL_CU_K(s_) + jv;
#define PACK_KEY_IN (jv < VL_CU_K(s_ + 1) - VL_CU_K(s_))
#define PACK_KEY_ROW jrow
#else
#define PACK_KEY_IN (j < Lk)
#define PACK_KEY_ROW j
#endif
    /* tile-major: each tile's Kᵀ is one contiguous D x BLOCK_N block */
    __global float *ktp = kt + bh * (long)D * lk_pad + (j / BLOCK_N) * (long)(D * BLOCK_N) + j % BLOCK_N;
#if !V_DIRECT
    __global float *vpp = vp + (bh * lk_pad + j) * DV_PAD;
#endif
    if (PACK_KEY_IN) {
        const long kb = k_off + b * k_s0 + h * k_s1 + PACK_KEY_ROW * k_s2;
        for (int d = 0; d < D; d++) ktp[d * BLOCK_N] = LOAD_K(k, kb + d * k_s3);
#if !V_DIRECT
        const long vb = v_off + b * v_s0 + h * v_s1 + PACK_KEY_ROW * v_s2;
        for (int c = 0; c < DV; c++) vpp[c] = LOAD_V(v, vb + c * v_s3);
        for (int c = DV; c < DV_PAD; c++) vpp[c] = 0.0f;
#endif
    } else {
        for (int d = 0; d < D; d++) ktp[d * BLOCK_N] = 0.0f;
#if !V_DIRECT
        for (int c = 0; c < DV_PAD; c++) vpp[c] = 0.0f;
#endif
    }
#undef PACK_KEY_IN
#undef PACK_KEY_ROW
}

/* max without fmax's NaN handling (scores are never NaN). */
#define CLATTN_VMAX(a, b) max((a), (b))
#if FAST_EXP2
#define CLATTN_EXP2V(x) clattn_exp2_neg(x)
#else
#define CLATTN_EXP2V(x) EXP2(x)
#endif

/* Largest lane of a float16. */
inline float clattn_hmax16(float16 x)
{
    float8 a = CLATTN_VMAX(x.lo, x.hi);
    float4 b = CLATTN_VMAX(a.lo, a.hi);
    float2 c = CLATTN_VMAX(b.lo, b.hi);
    return CLATTN_VMAX(c.lo, c.hi);
}
inline float clattn_hsum16(float16 x)
{
    float8 a = x.lo + x.hi;
    float4 b = a.lo + a.hi;
    float2 c = b.lo + b.hi;
    return c.lo + c.hi;
}

__kernel void flash_cpu(FLASH_PARAMS, const __global float *kt, const __global float *vp,
                        long lk_pad VARLEN_PARAMS)
{
    /* Row blocks in the order 0, n-1, 1, n-2, ...: with causal masks a block's cost grows
     * with its index, and this keeps any run of consecutive work-items (as a CPU runtime
     * hands them to its threads) near the average cost. */
#if VARLEN
    const long nblk = vl_blocks; /* the table's row blocks, every sequence's */
#else
    const long nblk = (Lq + ROWS - 1) / ROWS;
#endif
    const long gid = get_global_id(0);
#if VARLEN
    if (gid >= nblk || get_global_id(1) >= B * Hq) return;
    /* work-items in the order a CPU runtime hands them out (dimension 0 first); the
     * copies of the sequence's keys start at its first tile */
    VARLEN_ITEM(get_global_id(1) * nblk + gid, B * Hq, s_, bh, i0);
    VARLEN_SEQ(s_);
    kt += VL_KPAD(s_) * D;
#if !V_DIRECT
    vp += VL_KPAD(s_) * DV_PAD;
#endif
#else
    const long bh = get_global_id(1);
    if (gid >= nblk || bh >= B * Hq) return;
    const long blk = (gid & 1) ? nblk - 1 - (gid >> 1) : (gid >> 1);
    const long i0 = blk * ROWS;
#endif
    const long b = bh / Hq, h = bh % Hq;
    const long kvh = h / (Hq / Hkv);
    const __global float *ktb = kt + (b * Hkv + kvh) * (long)D * lk_pad;
#if V_DIRECT
    const __global float *vrows = v + v_off + b * v_s0 + kvh * v_s1;
    const long vld = v_s2;
#else
    const __global float *vrows = vp + (b * Hkv + kvh) * lk_pad * DV_PAD;
    const long vld = DV_PAD;
#endif

    /* Per-row key ranges; per group of BLOCK_M rows their union (tiles to visit) and
     * intersection (tiles needing no per-key test); the union over all rows. */
    int lo[ROWS], hi[ROWS];
    int g_lo_min[ROW_GROUPS], g_hi_max[ROW_GROUPS], g_lo_max[ROW_GROUPS], g_hi_min[ROW_GROUPS];
    long lo_min = Lk, hi_max = 0;
    for (int g = 0; g < ROW_GROUPS; g++) {
        int glmin = (int)Lk, ghmax = 0, glmax = 0, ghmin = (int)Lk;
        for (int r = g * BLOCK_M; r < (g + 1) * BLOCK_M; r++) {
            long2 kr = (long2)(0, 0);
            if (i0 + r < Lq) kr = KEY_RANGE(b, i0 + r);
            lo[r] = (int)kr.x;
            hi[r] = (int)kr.y;
            if (kr.x < kr.y) {
                glmin = min(glmin, lo[r]);
                ghmax = max(ghmax, hi[r]);
            }
            glmax = max(glmax, lo[r]);
            ghmin = min(ghmin, hi[r]);
        }
        g_lo_min[g] = glmin;
        g_hi_max[g] = ghmax;
        g_lo_max[g] = glmax;
        g_hi_min[g] = ghmin;
        if (glmin < ghmax) {
            lo_min = min(lo_min, (long)glmin);
            hi_max = max(hi_max, (long)ghmax);
        }
    }

    /* q rows, pre-scaled so that scores come out in base 2 (or scaled for softcap). */
#if HAS_SOFTCAP
    const float qmul = scale;
#else
    const float qmul = scale * CLATTN_LOG2E;
#endif
    float qp[ROWS][D];
    for (int r = 0; r < ROWS; r++) {
        const long qb = q_off + b * q_s0 + h * q_s1 + min(i0 + r, Lq - 1) * q_s2;
        for (int d = 0; d < D; d++) qp[r][d] = qmul * LOAD_Q(q, qb + d * q_s3);
    }
#if HAS_ALIBI
    const float slope2 = ALIBI_SLOPE(h) * CLATTN_LOG2E;
#endif

    float16 acc[ROWS][NVD];
    float m[ROWS];
    float16 lv[ROWS]; /* running sums, lane-wise; reduced once at the end */
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        lv[r] = (float16)0.0f;
        for (int c = 0; c < NVD; c++) acc[r][c] = (float16)0.0f;
    }
    float pbuf[BLOCK_M][BLOCK_N];
    const int16 lane = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

    for (long j0 = lo_min / BLOCK_N * BLOCK_N; j0 < hi_max; j0 += BLOCK_N) {
        const __global float *vt = vrows + j0 * vld;
#if V_DIRECT
        const int jn = (int)min((long)BLOCK_N, Lk - j0); /* V has no rows past Lk */
#else
        const int jn = BLOCK_N;
#endif
        /* The groups of rows take the tile in turn while it is in the cache. */
        for (int g = 0; g < ROW_GROUPS; g++) {
        if (j0 + BLOCK_N <= g_lo_min[g] || j0 >= g_hi_max[g]) continue; /* nothing here */
        const int rb = g * BLOCK_M;
        /* S = Q Kᵀ for this tile: rank-1 updates over d. */
        float16 s[BLOCK_M][NVN];
#pragma unroll
        for (int r = 0; r < BLOCK_M; r++)
#pragma unroll
            for (int n = 0; n < NVN; n++) s[r][n] = (float16)0.0f;
        const __global float *kp = ktb + j0 * D; /* tile j0 / BLOCK_N */
        for (int d = 0; d < D; d++) {
            float16 kv[NVN];
#pragma unroll
            for (int n = 0; n < NVN; n++) kv[n] = vload16(n, kp);
            kp += BLOCK_N;
#pragma unroll
            for (int r = 0; r < BLOCK_M; r++) {
                const float qd = qp[rb + r][d];
#pragma unroll
                for (int n = 0; n < NVN; n++) s[r][n] = fma((float16)qd, kv[n], s[r][n]);
            }
        }

        /* Scores (SPEC §1 order, as clattn_score in the prelude, on vectors), then the
         * online softmax update. */
        const bool full = j0 >= g_lo_max[g] && j0 + BLOCK_N <= g_hi_min[g];
#pragma unroll
        for (int r = 0; r < BLOCK_M; r++) {
            const int R = rb + r;
            float16 sv[NVN];
#pragma unroll
            for (int n = 0; n < NVN; n++) {
                float16 x = s[r][n];
                const int16 jv = (int)(j0 + n * 16) + lane;
#if HAS_SOFTCAP
                x = softcap * tanh(x / softcap) * CLATTN_LOG2E;
#endif
#if HAS_ALIBI
                {
                    const int ip = (int)(i0 + R + Lk - Lq);
                    x -= slope2 * convert_float16(abs(ip - jv));
                }
#endif
#if MASK_KIND != 0
                {
                    const long ir = min(i0 + R, Lq - 1);
                    const __global MASK_T *mp =
                        mask + mask_off + b * mask_s0 + h * mask_s1 + ir * mask_s2;
                    const long jb = j0 + n * 16;
                    float mv[16];
                    for (int t = 0; t < 16; t++) {
                        const long jj = min(jb + t, Lk - 1);
#if MASK_KIND == 1
                        mv[t] = mp[jj * mask_s3] ? 0.0f : -INFINITY;
#else
                        mv[t] = mp[jj * mask_s3] * CLATTN_LOG2E;
#endif
                    }
                    x += vload16(0, mv);
                }
#endif
                if (!full) x = select(x, (float16)(-INFINITY), (jv < lo[R]) | (jv >= hi[R]));
                sv[n] = x;
            }
            float16 mx = sv[0];
#pragma unroll
            for (int n = 1; n < NVN; n++) mx = CLATTN_VMAX(mx, sv[n]);
            const float mold = m[R];
            const float mnew = CLATTN_VMAX(mold, clattn_hmax16(mx));
            /* a row with nothing allowed yet keeps m = -inf; never exp(-inf - -inf) */
            const float muse = mnew == -INFINITY ? 0.0f : mnew;
            float16 ps = (float16)0.0f;
#pragma unroll
            for (int n = 0; n < NVN; n++) {
                const float16 p = CLATTN_EXP2V(sv[n] - muse);
                ps += p;
                vstore16(p, n, pbuf[r]);
            }
#if SKIP_RESCALE
            /* the running max rarely moves once a row has seen a few tiles: rescale only
             * when it does (alpha = 1 otherwise) */
            if (mnew > mold) {
#else
            {
#endif
                const float alpha = EXP2(mold - muse);
                lv[R] *= alpha;
                for (int c = 0; c < NVD; c++) acc[R][c] *= alpha;
            }
            lv[R] += ps;
            m[R] = mnew;
        }

        /* keys of the tile some row of the group may see (p = 0 outside) */
        const int jb = max(0, g_lo_min[g] - (int)j0), je = min(jn, g_hi_max[g] - (int)j0);
        /* O += P V for this tile, DV_CHUNK vectors of the output row at a time,
         * unrolled so each chunk's width is known and its loop keeps a[][] in registers
         * (a run-time chunk loop spilled: D = 80 ran at 0.45x the speed of D = 64). */
#pragma unroll
        for (int c0 = 0; c0 < NVD; c0 += DV_CHUNK) {
            float16 a[BLOCK_M][DV_CHUNK];
#pragma unroll
            for (int r = 0; r < BLOCK_M; r++)
#pragma unroll
                for (int c = 0; c < DV_CHUNK; c++)
                    if (c0 + c < NVD) a[r][c] = acc[rb + r][c0 + c];
#define V_ROW(j) (vt + (j) * vld)
#define P_OF(r, j) pbuf[r][j]
            TILE_KEYS_UPDATE(a, BLOCK_M, DV_CHUNK, NVD, c0, jb, je, V_ROW, P_OF);
#undef V_ROW
#undef P_OF
#pragma unroll
            for (int r = 0; r < BLOCK_M; r++)
#pragma unroll
                for (int c = 0; c < DV_CHUNK; c++)
                    if (c0 + c < NVD) acc[rb + r][c0 + c] = a[r][c];
        }
        } /* groups */
    }

    /* Write O and LSE once. A row with no allowed key: O = 0, LSE = -inf. */
    for (int r = 0; r < ROWS; r++) {
        const long i = i0 + r;
        if (i >= Lq) break;
        const float l = clattn_hsum16(lv[r]);
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float orow[DV_PAD];
        for (int c = 0; c < NVD; c++) vstore16(acc[r][c] * inv, c, orow);
        const long ob = o_off + b * o_s0 + h * o_s1 + i * o_s2;
        for (int c = 0; c < DV; c++) STORE_O(o, ob + c * o_s3, orow[c]);
        if (lse) { /* LSE asked for (NULL otherwise) */
            lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2] =
                l > 0.0f ? (m[r] + log2(l)) * CLATTN_LN2 : -INFINITY;
        }
    }
}
