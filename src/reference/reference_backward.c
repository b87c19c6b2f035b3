/* The backward pass on the host in float64, analytically, as the device kernels compute
 * it but in one plain loop per query row, so tests can judge them (and a test checks this
 * file itself against finite differences of the forward reference):
 *   s_j  = SPEC §1 score (scale·q·k, softcap, ALiBi, float mask; exclusions = -inf)
 *   p_j  = exp(s_j - lse),  O = Σ p_j v_j,  D = dO·O
 *   dV_j += p_j dO,  dP_j = dO·v_j,  dS_j = p_j (dP_j - D)        (dLoss/ds_j)
 *   d_mask += dS_j (summed where the mask broadcasts);  softcap: dS_j *= 1 - tanh²
 *   dQ += scale dS_j k_j,  dK_j += scale dS_j q   (GQA: dK, dV summed over the group)
 * A row whose keys are all excluded contributes nothing. */
#include "backward/backward.h"
#include "reference/reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t bcast(const clattn_tensor *m, int axis, int64_t i)
{
    return m->ne[axis] == 1 ? 0 : i;
}

static double dotd(const double *a, const double *b, int64_t n)
{
    double s = 0.0;
    for (int64_t d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* Dense element count of four extents, or false on overflow. */
static bool count4(const int64_t ne[4], int64_t *n)
{
    *n = 1;
    for (int a = 0; a < 4; a++)
        if (!clattn__mul_ok(*n, ne[a], n)) return false;
    return true;
}

clattn_status clattn_reference_attention_backward(const clattn_tensor *q, const clattn_tensor *k,
                                                  const clattn_tensor *v, const clattn_tensor *d_o,
                                                  const clattn_options *opt, double *dq,
                                                  double *dk, double *dv, double *d_mask)
{
    clattn__bwd_problem bp;
    char err[256];
    clattn_status st = clattn__bwd_problem_init(&bp, q, k, v, NULL, d_o, NULL, NULL, NULL, NULL,
                                                NULL, d_mask != NULL, opt, true, err, sizeof err);
    if (st != CLATTN_SUCCESS) return st;
    const clattn__problem *p = &bp.p;
    const int64_t B = p->B, Hq = p->Hq, Hkv = p->Hkv, Lq = p->Lq, Lk = p->Lk, D = p->D, Dv = p->Dv;
    const int64_t qne[4] = {B, Hq, Lq, D}, kne[4] = {B, Hkv, Lk, D}, vne[4] = {B, Hkv, Lk, Dv};
    int64_t nq, nk, nv, nm = 0;
    if (!count4(qne, &nq) || !count4(kne, &nk) || !count4(vne, &nv) ||
        (p->mask && !count4(p->mask->ne, &nm)) || Lk > INT64_MAX / 64 ||
        nq > INT64_MAX / 8 || nk > INT64_MAX / 8 || nv > INT64_MAX / 8 || nm > INT64_MAX / 8)
        return CLATTN_ERROR_INVALID_SHAPE;
    if ((nq && !dq) || (nk && !dk) || (nv && !dv)) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (nq) memset(dq, 0, (size_t)nq * sizeof *dq);
    if (nk) memset(dk, 0, (size_t)nk * sizeof *dk);
    if (nv) memset(dv, 0, (size_t)nv * sizeof *dv);
    if (d_mask && nm) memset(d_mask, 0, (size_t)nm * sizeof *d_mask);
    if (nq == 0 || Lk == 0) return CLATTN_SUCCESS;

    const size_t lk1 = (size_t)Lk + 1;
    double *s = malloc(lk1 * sizeof *s), *t = malloc(lk1 * sizeof *t), *pr = malloc(lk1 * sizeof *pr);
    double *qrow = malloc((size_t)D * sizeof *qrow), *dorow = malloc((size_t)Dv * sizeof *dorow);
    double *orow = malloc((size_t)Dv * sizeof *orow);
    double *krow = malloc((size_t)D * sizeof *krow), *vrow = malloc((size_t)Dv * sizeof *vrow);
    if (!s || !t || !pr || !qrow || !dorow || !orow || !krow || !vrow) {
        st = CLATTN_ERROR_OUT_OF_MEMORY;
        goto done;
    }
    const double scale = p->scale, softcap = p->softcap;
    const clattn_tensor *m = p->mask;
    for (int64_t b = 0; b < B; b++) {
        const int64_t kv_len = p->kv_lens ? (int64_t)clattn__host_get(p->kv_lens, b, 0, 0, 0) : Lk;
        for (int64_t h = 0; h < Hq; h++) {
            const int64_t kvh = h / p->group;
            const double slope = p->alibi ? clattn__host_get(p->alibi, h, 0, 0, 0) : 0.0;
            for (int64_t i = 0; i < Lq; i++) {
                int64_t jlo, jhi;
                clattn__ref_key_range(p, i, kv_len, &jlo, &jhi);
                if (jlo >= jhi) continue;
                for (int64_t d = 0; d < D; d++) qrow[d] = clattn__host_get(q, b, h, i, d);
                for (int64_t d = 0; d < Dv; d++) dorow[d] = clattn__host_get(d_o, b, h, i, d);
                double mx = -INFINITY;
                for (int64_t j = jlo; j < jhi; j++) {
                    for (int64_t d = 0; d < D; d++) krow[d] = clattn__host_get(k, b, kvh, j, d);
                    double sc = scale * dotd(qrow, krow, D);
                    t[j] = 0.0;
                    if (softcap > 0.0) {
                        t[j] = tanh(sc / softcap);
                        sc = softcap * t[j];
                    }
                    sc = clattn__ref_bias(p, sc, b, h, i, j, slope);
                    s[j] = sc;
                    if (sc > mx) mx = sc;
                }
                if (mx == -INFINITY) continue; /* fully masked row: no gradient */
                double sum = 0.0;
                for (int64_t j = jlo; j < jhi; j++) sum += s[j] == -INFINITY ? 0.0 : exp(s[j] - mx);
                const double lse = mx + log(sum);
                for (int64_t d = 0; d < Dv; d++) orow[d] = 0.0;
                for (int64_t j = jlo; j < jhi; j++) {
                    pr[j] = s[j] == -INFINITY ? 0.0 : exp(s[j] - lse);
                    for (int64_t d = 0; d < Dv; d++)
                        orow[d] += pr[j] * clattn__host_get(v, b, kvh, j, d);
                }
                const double Di = dotd(dorow, orow, Dv);
                double *dqrow = dq + ((b * Hq + h) * Lq + i) * D;
                for (int64_t j = jlo; j < jhi; j++) {
                    if (pr[j] == 0.0) continue;
                    for (int64_t d = 0; d < Dv; d++) vrow[d] = clattn__host_get(v, b, kvh, j, d);
                    for (int64_t d = 0; d < D; d++) krow[d] = clattn__host_get(k, b, kvh, j, d);
                    double *dvrow = dv + ((b * Hkv + kvh) * Lk + j) * Dv;
                    double *dkrow = dk + ((b * Hkv + kvh) * Lk + j) * D;
                    for (int64_t d = 0; d < Dv; d++) dvrow[d] += pr[j] * dorow[d];
                    const double ds = pr[j] * (dotd(dorow, vrow, Dv) - Di);
                    if (d_mask) {
                        const int64_t mi[4] = {bcast(m, 0, b), bcast(m, 1, h), bcast(m, 2, i),
                                               bcast(m, 3, j)};
                        d_mask[((mi[0] * m->ne[1] + mi[1]) * m->ne[2] + mi[2]) * m->ne[3] + mi[3]] += ds;
                    }
                    const double dsp = softcap > 0.0 ? ds * (1.0 - t[j] * t[j]) : ds;
                    for (int64_t d = 0; d < D; d++) {
                        dqrow[d] += scale * dsp * krow[d];
                        dkrow[d] += scale * dsp * qrow[d];
                    }
                }
            }
        }
    }
done:
    free(s);
    free(t);
    free(pr);
    free(qrow);
    free(dorow);
    free(orow);
    free(krow);
    free(vrow);
    return st;
}
