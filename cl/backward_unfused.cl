/* backward_unfused.cl: the backward pass's simple form, the last link of its fallback
 * chain (src/backward/backward.c runs it when the tiled forms of cl/backward.cl fail to build or
 * launch, or when the unfused path is asked for). No tiles, no local memory and no
 * scratch at all: every work-item recomputes what it needs, so only the outputs (and
 * their commit copies) take memory, whatever the shape.
 *
 *   bwdu_dq     global (B*Hq*Lq): one query row; D_i = dO_i · O_i, then for each key
 *               of its range dQ_i += dS_ij K_j.
 *   bwdu_dkdv   global (Lk, B*Hkv): one key of one KV head; for every query row of
 *               every head of its GQA group that sees it: dV_j += P_ij dO_i and
 *               dK_j += dS_ij Q_i (D_i recomputed per row).
 *   bwdu_dmask  global (mask elements): the float mask's gradient, as bwd_dmask does.
 * The commit of cl_mem outputs is cl/commit.cl's bwd_commit, as for the tiled forms.
 *
 * Every sum runs in one work-item in a fixed order (deterministic, no atomics). Scores go
 * through the prelude's SCORE and KEY_RANGE as in the forward kernels; dP and D use the
 * same fma chain, so a row that sees one key (O = V) gets dP - D = 0 exactly.
 * Build options: D, DV, dtypes Q_DT K_DT V_DT O_DT DO_DT DQ_DT DK_DT DV_DT (prelude). */
#ifndef D
#error "backward_unfused.cl needs -DD=<head dim of q and k>"
#endif
#ifndef DV
#define DV D
#endif
/* The leading arguments of every kernel here. */
#define BWDU_INPUTS                                                                      \
    TENSOR_PARAMS(const __global Q_T *, q), TENSOR_PARAMS(const __global K_T *, k),       \
        TENSOR_PARAMS(const __global V_T *, v), TENSOR_PARAMS(const __global O_T *, o),   \
        TENSOR_PARAMS(const __global DO_T *, dout), const __global float *lse,           \
        long lse_off, long lse_s0, long lse_s1, long lse_s2

/* D_i = dO_i · O_i of row (b, h, i). */
#define ROW_DELTA(b, h, i, out)                                                          \
    do {                                                                                 \
        const long ob_ = o_off + (b) * o_s0 + (h) * o_s1 + (i) * o_s2;                   \
        const long db_ = dout_off + (b) * dout_s0 + (h) * dout_s1 + (i) * dout_s2;       \
        float s_ = 0.0f;                                                                 \
        for (int c = 0; c < DV; c++)                                                     \
            s_ = fma(LOAD_DO(dout, db_ + c * dout_s3), LOAD_O(o, ob_ + c * o_s3), s_);   \
        (out) = s_;                                                                      \
    } while (0)

/* dot = Q_i · K_j and dpv = dO_i · V_j from the rows qr, dr (private) and key (b, kvh, j). */
#define PAIR_DOTS(qr, dr, b, kvh, j, dot, dpv)                                           \
    do {                                                                                 \
        const long kb_ = k_off + (b) * k_s0 + (kvh) * k_s1 + (j) * k_s2;                 \
        const long vb_ = v_off + (b) * v_s0 + (kvh) * v_s1 + (j) * v_s2;                 \
        float d_ = 0.0f, e_ = 0.0f;                                                      \
        for (int d = 0; d < D; d++) d_ = mad((qr)[d], LOAD_K(k, kb_ + d * k_s3), d_);    \
        for (int c = 0; c < DV; c++) e_ = fma((dr)[c], LOAD_V(v, vb_ + c * v_s3), e_);   \
        (dot) = d_;                                                                      \
        (dpv) = e_;                                                                      \
    } while (0)

/* Q_i and dO_i of row (b, h, i) into the private rows qr, dr; D_i into dd. */
#define ROW_INPUTS(b, h, i, qr, dr, dd)                                                  \
    do {                                                                                 \
        const long qb_ = q_off + (b) * q_s0 + (h) * q_s1 + (i) * q_s2;                   \
        const long db_ = dout_off + (b) * dout_s0 + (h) * dout_s1 + (i) * dout_s2;       \
        for (int d = 0; d < D; d++) (qr)[d] = LOAD_Q(q, qb_ + d * q_s3);                 \
        for (int c = 0; c < DV; c++) (dr)[c] = LOAD_DO(dout, db_ + c * dout_s3);         \
        ROW_DELTA((b), (h), (i), (dd));                                                  \
    } while (0)

__kernel void bwdu_dq(BWDU_INPUTS, TENSOR_PARAMS(__global DQ_T *, dq), MASK_PARAMS, long B,
                      long Hq, long Hkv)
{
    const long row = get_global_id(0);
    if (row >= B * Hq * Lq) return;
    const long3 bhi = clattn_decode_row(row, Hq, Lq);
    const long b = bhi.x, h = bhi.y, i = bhi.z, kvh = h / (Hq / Hkv);
    const float slope = ALIBI_SLOPE(h);
    const float l = lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2];
    float acc[D];
    for (int d = 0; d < D; d++) acc[d] = 0.0f;
    if (l != -INFINITY) {
        float qr[D], dr[DV], dd;
        ROW_INPUTS(b, h, i, qr, dr, dd);
        const long2 kr = KEY_RANGE(b, i);
        for (long j = kr.x; j < kr.y; j++) {
            float dot, dpv;
            PAIR_DOTS(qr, dr, b, kvh, j, dot, dpv);
            const float s = SCORE(dot, b, h, i, j, slope);
            const float p = s == -INFINITY ? 0.0f : exp(s - l);
            const float ds = p * (dpv - dd) * SOFTCAP_DERIV(dot);
            if (ds == 0.0f) continue;
            const long kb = k_off + b * k_s0 + kvh * k_s1 + j * k_s2;
            for (int d = 0; d < D; d++) acc[d] = fma(ds, LOAD_K(k, kb + d * k_s3), acc[d]);
        }
    }
    const long ob = dq_off + b * dq_s0 + h * dq_s1 + i * dq_s2;
    for (int d = 0; d < D; d++) STORE_DQ(dq, ob + d * dq_s3, scale * acc[d]);
}

__kernel void bwdu_dkdv(BWDU_INPUTS, TENSOR_PARAMS(__global DK_T *, dk),
                        TENSOR_PARAMS(__global DV_T *, dv), MASK_PARAMS, long B, long Hq,
                        long Hkv)
{
    const long j = get_global_id(0), bk = get_global_id(1);
    if (j >= Lk || bk >= B * Hkv) return;
    const long b = bk / Hkv, kvh = bk - b * Hkv, group = Hq / Hkv;
    float ak[D], av[DV];
    for (int d = 0; d < D; d++) ak[d] = 0.0f;
    for (int c = 0; c < DV; c++) av[c] = 0.0f;
    for (long g = 0; g < group; g++) {
        const long h = kvh * group + g;
        const float slope = ALIBI_SLOPE(h);
        for (long i = 0; i < Lq; i++) {
            const long2 kr = KEY_RANGE(b, i);
            if (j < kr.x || j >= kr.y) continue;
            const float l = lse[lse_off + b * lse_s0 + h * lse_s1 + i * lse_s2];
            if (l == -INFINITY) continue;
            float qr[D], dr[DV], dd, dot, dpv;
            ROW_INPUTS(b, h, i, qr, dr, dd);
            PAIR_DOTS(qr, dr, b, kvh, j, dot, dpv);
            const float s = SCORE(dot, b, h, i, j, slope);
            const float p = s == -INFINITY ? 0.0f : exp(s - l);
            const float ds = p * (dpv - dd) * SOFTCAP_DERIV(dot);
            for (int c = 0; c < DV; c++) av[c] = fma(p, dr[c], av[c]);
            for (int d = 0; d < D; d++) ak[d] = fma(ds, qr[d], ak[d]);
        }
    }
    const long kb = dk_off + b * dk_s0 + kvh * dk_s1 + j * dk_s2;
    const long vb = dv_off + b * dv_s0 + kvh * dv_s1 + j * dv_s2;
    for (int d = 0; d < D; d++) STORE_DK(dk, kb + d * dk_s3, scale * ak[d]);
    for (int c = 0; c < DV; c++) STORE_DV(dv, vb + c * dv_s3, av[c]);
}

__kernel void bwdu_dmask(BWDU_INPUTS, TENSOR_PARAMS(__global float *, dm), long mne0, long mne1,
                         long mne2, long mne3, MASK_PARAMS, long B, long Hq, long Hkv)
{
    MASK_GRAD_ELEMENT();
    float sum = 0.0f;
    MASK_GRAD_ROWS(
        float qr[D], dr[DV], dd;
        ROW_INPUTS(b, h, i, qr, dr, dd);
        const long2 kr = KEY_RANGE(b, i);
        for (long j = max(k0, kr.x); j < min(k1, kr.y); j++) {
            float dot, dpv;
            PAIR_DOTS(qr, dr, b, kvh, j, dot, dpv);
            const float s = SCORE(dot, b, h, i, j, slope);
            const float p = s == -INFINITY ? 0.0f : exp(s - l);
            sum += p * (dpv - dd);
        })
    dm[dm_off + a0 * dm_s0 + a1 * dm_s1 + a2 * dm_s2 + a3 * dm_s3] = sum;
}
