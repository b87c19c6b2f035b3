/* prelude.cl: helpers shared by every clattn kernel, prepended to each kernel file.
 *
 * Storage types. Q_DT, K_DT, V_DT, O_DT and the backward pass's DO_DT, DQ_DT, DK_DT,
 * DV_DT (build options) take clattn_dtype's values: 0 = float, 1 = half (read with
 * vload_half / written with vstore_half_rte, core OpenCL 1.2, so no cl_khr_fp16 is
 * needed), 2 = bfloat16 held in a ushort. Arithmetic is float.
 *
 * Masking (SPEC §1, in this order): s = scale*dot; softcap; ALiBi; additive mask; then the
 * exclusions. Exclusions by position (causal, window, key lengths) reduce to one key
 * range [lo, hi) per query row, so kernels can skip whole tiles; only a boolean mask
 * excludes keys one by one. The key range is computed once per row, so its features
 * are run-time arguments (causal 0|1|2 = none, top-left, bottom-right; win_left and
 * win_right, -1 = unbounded; has_kvlens): one build serves every combination. Features
 * that cost work per score are compiled in with -D options: HAS_SOFTCAP, HAS_ALIBI,
 * MASK_KIND 0|1|2 (none, bool, float).
 * Every kernel takes the same MASK_PARAMS arguments, set by clattn__set_mask_args().
 *
 * Fully masked rows: kernels keep -INFINITY as "excluded" and must never compute
 * exp(-inf - (-inf)); the build never uses -cl-fast-relaxed-math or -cl-finite-math-only.
 */
#ifndef Q_DT
#define Q_DT 0
#endif
#ifndef K_DT
#define K_DT 0
#endif
#ifndef V_DT
#define V_DT 0
#endif
#ifndef O_DT
#define O_DT 0
#endif
#ifndef HAS_SOFTCAP
#define HAS_SOFTCAP 0
#endif
#ifndef HAS_ALIBI
#define HAS_ALIBI 0
#endif
#ifndef MASK_KIND
#define MASK_KIND 0
#endif

#define CLATTN_CAT_(a, b) a##b
#define CLATTN_CAT(a, b) CLATTN_CAT_(a, b)

/* ---- storage types ---- */
#define CLATTN_DT_0 float
#define CLATTN_DT_1 half
#define CLATTN_DT_2 ushort
#define Q_T CLATTN_CAT(CLATTN_DT_, Q_DT)
#define K_T CLATTN_CAT(CLATTN_DT_, K_DT)
#define V_T CLATTN_CAT(CLATTN_DT_, V_DT)
#define O_T CLATTN_CAT(CLATTN_DT_, O_DT)

/* The backward pass's tensors: dO (DO_DT), dQ, dK, dV (DQ_DT, DK_DT, DV_DT), and O read
 * back (O_DT). */
#ifndef DO_DT
#define DO_DT 0
#endif
#ifndef DQ_DT
#define DQ_DT 0
#endif
#ifndef DK_DT
#define DK_DT 0
#endif
#ifndef DV_DT
#define DV_DT 0
#endif
#define DO_T CLATTN_CAT(CLATTN_DT_, DO_DT)
#define DQ_T CLATTN_CAT(CLATTN_DT_, DQ_DT)
#define DK_T CLATTN_CAT(CLATTN_DT_, DK_DT)
#define DV_T CLATTN_CAT(CLATTN_DT_, DV_DT)

inline float clattn_load0(const __global float *p, long i) { return p[i]; }
inline float clattn_load1(const __global half *p, long i) { return vload_half((size_t)i, p); }
inline float clattn_load2(const __global ushort *p, long i) { return as_float((uint)p[i] << 16); }
inline void clattn_store0(__global float *p, long i, float v) { p[i] = v; }
inline void clattn_store1(__global half *p, long i, float v) { vstore_half_rte(v, (size_t)i, p); }
inline void clattn_store2(__global ushort *p, long i, float v)
{
    uint u = as_uint(v);
    /* round to nearest even; a NaN stays a (quiet) NaN */
    u = isnan(v) ? (u | 0x400000u) : u + 0x7fffu + ((u >> 16) & 1u);
    p[i] = (ushort)(u >> 16);
}
#define LOAD_Q(p, i) CLATTN_CAT(clattn_load, Q_DT)((p), (i))
#define LOAD_K(p, i) CLATTN_CAT(clattn_load, K_DT)((p), (i))
#define LOAD_V(p, i) CLATTN_CAT(clattn_load, V_DT)((p), (i))
#define STORE_O(p, i, v) CLATTN_CAT(clattn_store, O_DT)((p), (i), (v))
#define LOAD_O(p, i) CLATTN_CAT(clattn_load, O_DT)((p), (i))
#define LOAD_DO(p, i) CLATTN_CAT(clattn_load, DO_DT)((p), (i))
#define STORE_DQ(p, i, x) CLATTN_CAT(clattn_store, DQ_DT)((p), (i), (x))
#define STORE_DK(p, i, x) CLATTN_CAT(clattn_store, DK_DT)((p), (i), (x))
#define STORE_DV(p, i, x) CLATTN_CAT(clattn_store, DV_DT)((p), (i), (x))

/* KV-cache storage formats (clattn_kv_format's values), for the kernels of cl/kv_*.cl. */
#define FMT_F32 0
#define FMT_F16 1
#define FMT_INT8 2
#define FMT_INT4 3
#define FMT_TQ4 4
#define FMT_TQ3 5
#define FMT_TQ2 6

/* Flattened row of [B, Hq, Lq] -> (b, h, i). Written without %: LLVM pairs / and % into a
 * `freeze` instruction that oclgrind's --uninitialized mode cannot follow. */
inline long3 clattn_decode_row(long row, long Hq, long Lq)
{
    const long bh = row / Lq;
    const long b = bh / Hq;
    return (long3)(b, bh - b * Hq, row - bh * Lq);
}

/* The start of a kernel with one work-item per query row of [B, Hq, Lq] (bwd_rowdot,
 * bwd_dqsum): this work-item's row (of rows; past the last it returns) and its (b, h, i)
 * in bhi. */
#define QUERY_ROW_ITEM()                                                                 \
    const long row = get_global_id(0);                                                   \
    const long rows = B * Hq * Lq;                                                       \
    if (row >= rows) return;                                                             \
    const long3 bhi = clattn_decode_row(row, Hq, Lq)

/* A tensor argument: pointer, element offset, four element strides. */
#define TENSOR_PARAMS(T, name) \
    T name, long name##_off, long name##_s0, long name##_s1, long name##_s2, long name##_s3

#if MASK_KIND == 1
#define MASK_T uchar
#else
#define MASK_T float
#endif

/* ---- packed (varlen) sequences in one launch: the fused path's forms built with
 * -DVARLEN (src/paths/fused.c). The kernels end with VARLEN_PARAMS, the host's table vl
 * (int): cu_seqlens_q and cu_seqlens_k (vl_n + 1 each), each sequence's first key in
 * the CPU form's key copies (its keys padded to whole tiles of BLOCK_N) and its first
 * row block (vl_n + 1 each), the row blocks' first rows (vl_blocks of them, each
 * sequence's in the order 0, n-1, 1, n-2, ...) and each key tile's sequence. Their
 * MASK_PARAMS Lq and Lk are the packed totals, named Lq_packed and Lk_packed so that
 * VARLEN_SEQ can declare the sequence's own. */
#ifndef VARLEN
#define VARLEN 0
#endif
#if VARLEN
#define VARLEN_PARAMS , const __global int *vl, long vl_n, long vl_blocks
#define CLATTN_LQ_ARG Lq_packed
#define CLATTN_LK_ARG Lk_packed
#define VL_CU_Q(s) ((long)vl[(s)])
#define VL_CU_K(s) ((long)vl[vl_n + 1 + (s)])
#define VL_KPAD(s) ((long)vl[2 * (vl_n + 1) + (s)])
#define VL_BSTART(s) ((long)vl[3 * (vl_n + 1) + (s)])
#define VL_BLOCK_ROW(t) ((long)vl[4 * (vl_n + 1) + (t)])
#define VL_TILE_SEQ(t) vl[4 * (vl_n + 1) + vl_blocks + (t)]
/* Work index w of vl_blocks x nbh (B*Hq rows) taken sequence by sequence, in each (b, h)
 * by (b, h), as one launch per sequence would (a head's keys stay in the cache): its
 * sequence s_, its (b, h) bh and its row block's first row i0. s_ is the last sequence
 * whose row blocks start at or before w's (empty sequences start where the next does). */
#define VARLEN_ITEM(w, nbh, s_, bh, i0)                                                  \
    const long w_ = (w), q_ = w_ / (nbh);                                                \
    int s_ = 0;                                                                          \
    for (int lo_ = 0, hi_ = (int)vl_n; lo_ <= hi_;) {                                    \
        const int mid_ = (lo_ + hi_) / 2;                                                \
        if (VL_BSTART(mid_) <= q_) s_ = mid_, lo_ = mid_ + 1;                            \
        else hi_ = mid_ - 1;                                                             \
    }                                                                                    \
    const long nbs_ = VL_BSTART(s_ + 1) - VL_BSTART(s_), r_ = w_ - (nbh) * VL_BSTART(s_); \
    const long bh = r_ / nbs_;                                                           \
    const long i0 = VL_BLOCK_ROW(VL_BSTART(s_) + r_ - bh * nbs_)
/* Sequence s_'s Lq and Lk, and Q, K, V, O and LSE moved to its first rows. */
#define VARLEN_SEQ(s_)                                                                   \
    const long Lq = VL_CU_Q(s_ + 1) - VL_CU_Q(s_), Lk = VL_CU_K(s_ + 1) - VL_CU_K(s_);  \
    q_off += VL_CU_Q(s_) * q_s2;                                                         \
    o_off += VL_CU_Q(s_) * o_s2;                                                         \
    lse_off += VL_CU_Q(s_) * lse_s2;                                                     \
    k_off += VL_CU_K(s_) * k_s2;                                                         \
    v_off += VL_CU_K(s_) * v_s2
#else
#define VARLEN_PARAMS
#define CLATTN_LQ_ARG Lq
#define CLATTN_LK_ARG Lk
#endif

/* The masking arguments every kernel takes, in this order. */
#define MASK_PARAMS                                                                      \
    float scale, float softcap, const __global float *alibi, long alibi_off,             \
        long alibi_st, const __global MASK_T *mask, long mask_off, long mask_s0,          \
        long mask_s1, long mask_s2, long mask_s3, int causal, long win_left,              \
        long win_right, int has_kvlens, const __global int *kv_lens, long kvl_off,        \
        long kvl_st, long CLATTN_LQ_ARG, long CLATTN_LK_ARG

/* The arguments the fused path's kernels (cl/flash_*.cl) begin with, in this order (set
 * by src/paths/fused.c's set_main_args): Q, K, V, O, the LSE (NULL when not asked for),
 * MASK_PARAMS, B, Hq, Hkv. */
#define FLASH_PARAMS                                                                     \
    TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),       \
        TENSOR_PARAMS(const __global V_T *, v), TENSOR_PARAMS(__global O_T *, o),         \
        __global float *lse, long lse_off, long lse_s0, long lse_s1, long lse_s2,         \
        MASK_PARAMS, long B, long Hq, long Hkv

/* The GPU forms of the fused path (cl/flash_gpu.cl, cl/flash_gpu_mm.cl): the key ranges
 * [lo[rr], hi[rr]) of the RM rows i0 + tr + rr * TR of batch b this work-item scores
 * (rows past Lq get an empty range). */
#define FLASH_GPU_ROW_RANGES(b, lo, hi)                                                  \
    long lo[RM], hi[RM];                                                                 \
    for (int rr = 0; rr < RM; rr++) {                                                    \
        const long i = i0 + tr + rr * TR;                                                \
        long2 kr = (long2)(0, 0);                                                        \
        if (i < Lq) kr = KEY_RANGE((b), i);                                              \
        lo[rr] = kr.x;                                                                   \
        hi[rr] = kr.y;                                                                   \
    }

/* Their online softmax state per row rr of the work-item, at the start: the running max
 * m (-inf: no key yet), the running sum l and nc accumulators of O's columns. */
#define FLASH_GPU_ROW_STATE(m, l, acc, nc)                                               \
    float m[RM], l[RM], acc[RM][nc];                                                     \
    for (int rr = 0; rr < RM; rr++) {                                                    \
        m[rr] = -INFINITY;                                                               \
        l[rr] = 0.0f;                                                                    \
        for (int c = 0; c < (nc); c++) acc[rr][c] = 0.0f;                                \
    }

/* The GPU forms of the fused path write row i of head (b, h) once: O's columns tc, tc + TC, ... from the accumulators acc_row[0..nc)
 * over the row's sum lt (zeros for a row that saw no key), and, from the row's first
 * work-item (tc == 0), the LSE lse_v (-inf for a row that saw no key) when one is asked
 * for (lse not NULL). */
#define FLASH_GPU_WRITE_ROW(b, h, i, acc_row, nc, lt, lse_v)                             \
    do {                                                                                 \
        const float inv_ = (lt) > 0.0f ? 1.0f / (lt) : 0.0f;                             \
        const long ob_ = o_off + (b) * o_s0 + (h) * o_s1 + (i) * o_s2;                   \
        for (int c_ = 0; c_ < (nc); c_++) {                                              \
            const int col_ = tc + c_ * TC;                                               \
            if (col_ < DV) STORE_O(o, ob_ + col_ * o_s3, (acc_row)[c_] * inv_);          \
        }                                                                                \
        if (lse && tc == 0)                                                              \
            lse[lse_off + (b) * lse_s0 + (h) * lse_s1 + (i) * lse_s2] =                  \
                (lt) > 0.0f ? (lse_v) : -INFINITY;                                       \
    } while (0)

/* The keys row (b, i) may see by position: [lo, hi). Empty when lo >= hi. The branches
 * are uniform across a work-group (every argument is), so they cost one row's worth. */
inline long2 clattn_key_range(long b, long i, long Lq, long Lk, int causal, long win_left,
                              long win_right, int has_kvlens, const __global int *kv_lens,
                              long kvl_off, long kvl_st)
{
    long lo = 0, hi = Lk;
    const long ip = i + Lk - Lq; /* the query's position aligned to the end of the keys */
    if (causal == 1) hi = min(hi, i + 1);
    else if (causal == 2) hi = min(hi, ip + 1);
    if (win_left >= 0) lo = max(lo, ip - win_left);
    if (win_right >= 0) hi = min(hi, ip + win_right + 1);
    if (has_kvlens)
        hi = min(hi, (long)clamp(kv_lens[kvl_off + b * kvl_st], 0, (int)min(Lk, (long)INT_MAX)));
    return (long2)(lo, max(lo, hi));
}
#define KEY_RANGE(b, i)                                                                   \
    clattn_key_range((b), (i), Lq, Lk, causal, win_left, win_right, has_kvlens, kv_lens,  \
                     kvl_off, kvl_st)

/* The keys rows [i0, i0 + n) of batch b see (rows past Lq left out), for a block of rows
 * that walks key tiles together: (x, y) the union of their KEY_RANGEs, empty ranges left
 * out ([Lk, 0) when all are empty: the tiles to visit), (z, w) their intersection (tiles
 * inside it need no per-key test). */
inline long4 clattn_rows_key_range(long b, long i0, long n, long Lq, long Lk, int causal,
                                   long win_left, long win_right, int has_kvlens,
                                   const __global int *kv_lens, long kvl_off, long kvl_st)
{
    long jlo = Lk, jhi = 0, ilo = 0, ihi = Lk;
    for (long i = i0; i < min(i0 + n, Lq); i++) {
        const long2 kr = clattn_key_range(b, i, Lq, Lk, causal, win_left, win_right, has_kvlens,
                                          kv_lens, kvl_off, kvl_st);
        ilo = max(ilo, kr.x);
        ihi = min(ihi, kr.y);
        if (kr.x < kr.y) {
            jlo = min(jlo, kr.x);
            jhi = max(jhi, kr.y);
        }
    }
    return (long4)(jlo, jhi, ilo, ihi);
}
#define ROWS_KEY_RANGE(b, i0, n)                                                          \
    clattn_rows_key_range((b), (i0), (n), Lq, Lk, causal, win_left, win_right, has_kvlens, \
                          kv_lens, kvl_off, kvl_st)

/* ALiBi slope of query head h (0 when off). */
#if HAS_ALIBI
#define ALIBI_SLOPE(h) (alibi[alibi_off + (long)(h) * alibi_st])
#else
#define ALIBI_SLOPE(h) 0.0f
#endif

/* Score of key j for row (b, h, i) from the raw dot product, for j inside KEY_RANGE.
 * slope = ALIBI_SLOPE(h). Returns -INFINITY when a boolean mask excludes the key. */
inline float clattn_score(float dot, long b, long h, long i, long j, float slope, float scale,
                          float softcap, long Lq, long Lk, const __global MASK_T *mask,
                          long mask_off, long mask_s0, long mask_s1, long mask_s2,
                          long mask_s3)
{
    float s = scale * dot;
#if HAS_SOFTCAP
    s = softcap * tanh(s / softcap);
#endif
#if HAS_ALIBI
    s -= slope * (float)abs((i + Lk - Lq) - j);
#endif
#if MASK_KIND != 0
    const MASK_T m = mask[mask_off + b * mask_s0 + h * mask_s1 + i * mask_s2 + j * mask_s3];
#if MASK_KIND == 1
    if (m == 0) s = -INFINITY;
#else
    s += m;
#endif
#endif
    return s;
}
#define SCORE(dot, b, h, i, j, slope)                                                 \
    clattn_score((dot), (b), (h), (i), (j), (slope), scale, softcap, Lq, Lk, mask,     \
                 mask_off, mask_s0, mask_s1, mask_s2, mask_s3)

/* The float mask's gradient, one work-item per element of the [mne0, mne1, mne2, mne3]
 * mask (kernels bwd_dmask, bwdu_dmask): this work-item's element (a0..a3; it returns past
 * the last) and the ranges of batch [b0, b1), head [h0, h1), query [q0, q1) and key
 * [k0, k1) it sums over; a broadcast extent (1) sums over the whole dimension. */
#define MASK_GRAD_ELEMENT()                                                              \
    const long idx = get_global_id(0);                                                   \
    if (idx >= mne0 * mne1 * mne2 * mne3) return;                                        \
    const long a3 = idx % mne3, r3_ = idx / mne3;                                        \
    const long a2 = r3_ % mne2, r2_ = r3_ / mne2;                                        \
    const long a1 = r2_ % mne1, a0 = r2_ / mne1;                                         \
    const long b0 = mne0 == 1 ? 0 : a0, b1 = mne0 == 1 ? B : a0 + 1;                     \
    const long h0 = mne1 == 1 ? 0 : a1, h1 = mne1 == 1 ? Hq : a1 + 1;                    \
    const long q0 = mne2 == 1 ? 0 : a2, q1 = mne2 == 1 ? Lq : a2 + 1;                    \
    const long k0 = mne3 == 1 ? 0 : a3, k1 = mne3 == 1 ? Lk : a3 + 1

/* d(softcap·tanh(x/softcap))/dx at x = scale·dot. */
#if HAS_SOFTCAP
#define SOFTCAP_DERIV(dot)                                                               \
    (1.0f - tanh(scale * (dot) / softcap) * tanh(scale * (dot) / softcap))
#else
#define SOFTCAP_DERIV(dot) 1.0f
#endif

/* The rows (b, h, i) whose gradients the element a0..a3 of MASK_GRAD_ELEMENT sums over,
 * each with its query head's KV head kvh and slope and its LSE l, rows with l = -inf
 * (every key excluded: no gradient) left out: runs the statements given for each. */
#define MASK_GRAD_ROWS(...)                                                              \
    for (long b = b0; b < b1; b++)                                                       \
        for (long h = h0; h < h1; h++) {                                                 \
            const long kvh = h / (Hq / Hkv);                                             \
            const float slope = ALIBI_SLOPE(h);                                          \
            for (long i = q0; i < q1; i++) {                                             \
                const float l = lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2];     \
                if (l == -INFINITY) continue;                                            \
                __VA_ARGS__                                                              \
            }                                                                            \
        }

/* p and dS of key j for row (b, h, i), with j inside the row's key range: dsf is dLoss/ds
 * of the final score (the mask's gradient), dsp the one before the softcap (for dQ, dK). */
#define BWD_TERMS(dot, dpv, b, h, i, j, slope, lse_r, dl_r, p, dsf, dsp)                  \
    do {                                                                                 \
        const float s_ = SCORE((dot), (b), (h), (i), (j), (slope));                      \
        (p) = (s_ == -INFINITY || (lse_r) == -INFINITY) ? 0.0f : exp(s_ - (lse_r));      \
        (dsf) = (p) * ((dpv) - (dl_r));                                                  \
        (dsp) = (dsf) * SOFTCAP_DERIV(dot);                                              \
    } while (0)

/* The backward CPU form's dense float32 rows (cl/backward.cl's bwd_rowdot writes them,
 * cl/backward_cpu.cl reads them): float16 vectors of a Q or dQ row, zero padded, and of
 * a dO row. */
#define DP16 ((D + 15) / 16)
#define DVP16 ((DV + 15) / 16)

/* The CPU forms' register tile a[R][CH] (float16 vectors c0 .. c0 + CH - 1 of rows of nv
 * vectors) += Σ_j W(r, j) · x_j over the keys j in [jb, je), x_j the same vectors of the
 * row at XROW(j): cl/flash_cpu.cl's O += P V and cl/backward_cpu.cl's dQ += dS K, every
 * product a "broadcast scalar x float16" update. */
#define TILE_KEYS_UPDATE(a, R, CH, nv, c0, jb, je, XROW, W)                               \
    for (int j_ = (jb); j_ < (je); j_++) {                                               \
        float16 x_[CH];                                                                  \
        _Pragma("unroll") for (int c = 0; c < (CH); c++)                                 \
            if ((c0) + c < (nv)) x_[c] = vload16((c0) + c, XROW(j_));                    \
        _Pragma("unroll") for (int r = 0; r < (R); r++) {                                \
            const float w_ = W(r, j_);                                                   \
            _Pragma("unroll") for (int c = 0; c < (CH); c++)                             \
                if ((c0) + c < (nv)) a[r][c] = fma((float16)(w_), x_[c], a[r][c]);       \
        }                                                                                \
    }

/* 2^x for x <= 0 or -inf (a score minus a running max or an LSE), within 2e-7 relative,
 * for the CPU forms of the fused and backward kernels:
 * 2^n by the exponent bits times a degree-6 Taylor polynomial of 2^f, n = round(x),
 * |f| <= 1/2; exactly 0 below 2^-126, so -inf gives 0 and never NaN. PoCL's exp2 on a
 * float16 ran as two 8-wide halves with range handling this input never needs (about
 * 35 instructions against 15 here; the kernel ran about 5% faster with this one). */
inline float16 clattn_exp2_neg(float16 x)
{
    const float16 xc = fmax(x, (float16)(-127.0f));
    const float16 t = xc + 12582912.0f;       /* 1.5 * 2^23: rounds xc to an integer */
    const float16 f = xc - (t - 12582912.0f); /* in [-1/2, 1/2] */
    float16 p = (float16)1.5403530393381606e-4f;
    p = fma(p, f, (float16)1.3333558146428443e-3f);
    p = fma(p, f, (float16)9.6181291076284772e-3f);
    p = fma(p, f, (float16)5.5504108664821580e-2f);
    p = fma(p, f, (float16)2.4022650695910071e-1f);
    p = fma(p, f, (float16)6.9314718055994531e-1f);
    p = fma(p, f, (float16)1.0f);
    const int16 n = as_int16(t) - 0x4b400000; /* round(xc), from t's low mantissa bits */
    const float16 r = as_float16(as_int16(p) + (n << 23));
    return select(r, (float16)0.0f, xc < (float16)(-126.0f));
}
