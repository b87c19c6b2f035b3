/* The CPU reference: SPEC §1 computed on the host in float64, rule by rule, so tests and
 * `clattn check` can judge every device path against one plain, obviously-correct loop.
 * Speed matters only enough for test shapes: K and V of a head are gathered once. */
#include "core/problem.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Index into a broadcast mask: an extent of 1 repeats index 0. */
static int64_t bcast(const clattn_tensor *m, int axis, int64_t i)
{
    return m->ne[axis] == 1 ? 0 : i;
}

/* Four partial sums: the compiler may not reorder a float reduction, and one chain of
 * dependent adds made the reference several times slower on test shapes. */
static double dot(const double *restrict a, const double *restrict b, int64_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t d = 0;
    for (; d + 4 <= n; d += 4) {
        s0 += a[d] * b[d];
        s1 += a[d + 1] * b[d + 1];
        s2 += a[d + 2] * b[d + 2];
        s3 += a[d + 3] * b[d + 3];
    }
    for (; d < n; d++) s0 += a[d] * b[d];
    return (s0 + s1) + (s2 + s3);
}

/* Accumulate w * v into acc (n elements); separate arrays, so it vectorises. */
static void axpy(double *restrict acc, double w, const double *restrict v, int64_t n)
{
    for (int64_t d = 0; d < n; d++) acc[d] += w * v[d];
}

void clattn__ref_key_range(const clattn__problem *p, int64_t i, int64_t kv_len, int64_t *jlo,
                           int64_t *jhi)
{
    const int64_t ip = i + p->Lk - p->Lq; /* the query aligned to the end of the keys */
    int64_t lo = 0, hi = kv_len;
    if (p->causal == CLATTN_CAUSAL_TOP_LEFT && hi > i + 1) hi = i + 1;
    if (p->causal == CLATTN_CAUSAL_BOTTOM_RIGHT && hi > ip + 1) hi = ip + 1;
    if (p->win_left >= 0 && lo < ip - p->win_left) lo = ip - p->win_left;
    if (p->win_right >= 0 && hi > ip + p->win_right + 1) hi = ip + p->win_right + 1;
    *jlo = lo;
    *jhi = hi;
}

double clattn__ref_bias(const clattn__problem *p, double sc, int64_t b, int64_t h, int64_t i,
                        int64_t j, double slope)
{
    if (p->alibi) sc -= slope * fabs((double)(i + p->Lk - p->Lq - j));
    const clattn_tensor *m = p->mask;
    if (m) {
        double mv = clattn__host_get(m, bcast(m, 0, b), bcast(m, 1, h), bcast(m, 2, i),
                                     bcast(m, 3, j));
        if (m->dtype == CLATTN_BOOL) {
            if (mv == 0.0) sc = -INFINITY;
        } else {
            sc += mv;
        }
    }
    return sc;
}

/* One query row: scores into s[jlo..jhi), then softmax and P·V into out_row.
 * Returns the row's LSE (-inf when every key is excluded, out_row then zero). */
static double reference_row(const clattn__problem *p, int64_t b, int64_t h, int64_t i,
                            int64_t kv_len, const double *qrow, const double *kbuf,
                            const double *vbuf, double *s, double *out_row)
{
    const int64_t D = p->D, Dv = p->Dv;

    /* Exclusions by position reduce to a key range [jlo, jhi). */
    int64_t jlo, jhi;
    clattn__ref_key_range(p, i, kv_len, &jlo, &jhi);

    const double scale = (double)p->scale;
    const double softcap = (double)p->softcap;
    const double slope = p->alibi ? clattn__host_get(p->alibi, h, 0, 0, 0) : 0.0;
    double mx = -INFINITY;
    for (int64_t j = jlo; j < jhi; j++) {
        double sc = scale * dot(qrow, kbuf + j * D, D);
        if (softcap > 0.0) sc = softcap * tanh(sc / softcap);
        sc = clattn__ref_bias(p, sc, b, h, i, j, slope);
        s[j] = sc;
        if (sc > mx) mx = sc;
    }

    for (int64_t d = 0; d < Dv; d++) out_row[d] = 0.0;
    /* Also catches a float mask that sets every score to -inf. */
    if (mx == -INFINITY) return -INFINITY;

    double sum = 0.0;
    for (int64_t j = jlo; j < jhi; j++) {
        if (s[j] == -INFINITY) continue;
        const double e = exp(s[j] - mx);
        sum += e;
        axpy(out_row, e, vbuf + j * Dv, Dv);
    }
    for (int64_t d = 0; d < Dv; d++) out_row[d] /= sum;
    return mx + log(sum);
}

clattn_status clattn_reference_attention(const clattn_tensor *q, const clattn_tensor *k,
                                         const clattn_tensor *v, const clattn_options *opt,
                                         double *out, double *lse)
{
    clattn__problem p;
    char err[256];
    /* o == NULL asks problem_init for reference mode: every tensor must be on the host.
     * There is no context to keep the message on, so only the status is returned. */
    clattn_status st = clattn__problem_init(&p, q, k, v, NULL, opt, err, sizeof err);
    if (st != CLATTN_SUCCESS) return st;
    const int64_t B = p.B, Hq = p.Hq, Lq = p.Lq, Lk = p.Lk, D = p.D, Dv = p.Dv;
    if (B == 0 || Hq == 0 || Lq == 0) return CLATTN_SUCCESS; /* nothing to write */
    if (out == NULL) return CLATTN_ERROR_INVALID_ARGUMENT;
    /* Zero strides make views of any extent valid and tiny: the row count, out's size and
     * the gather buffers' sizes must not wrap into small loop bounds or small buffers.
     * +1 so that Lk == 0 never asks malloc for zero bytes. */
    int64_t rows, out_n, kn, vn, kbytes, vbytes, sbytes;
    if (!clattn__mul_ok(B, Hq, &rows) || !clattn__mul_ok(rows, Lq, &rows) ||
        !clattn__mul_ok(rows, Dv, &out_n) || !clattn__mul_ok(out_n, (int64_t)sizeof *out, &out_n) ||
        !clattn__mul_ok(Lk, D, &kn) || kn == INT64_MAX ||
        !clattn__mul_ok(kn + 1, (int64_t)sizeof(double), &kbytes) ||
        !clattn__mul_ok(Lk, Dv, &vn) || vn == INT64_MAX ||
        !clattn__mul_ok(vn + 1, (int64_t)sizeof(double), &vbytes) || Lk == INT64_MAX ||
        !clattn__mul_ok(Lk + 1, (int64_t)sizeof(double), &sbytes))
        return CLATTN_ERROR_INVALID_SHAPE;

    double *kbuf = malloc((size_t)kbytes);
    double *vbuf = malloc((size_t)vbytes);
    double *s = malloc((size_t)sbytes);
    double *qrow = malloc((size_t)D * sizeof *qrow);
    if (!kbuf || !vbuf || !s || !qrow) {
        free(kbuf);
        free(vbuf);
        free(s);
        free(qrow);
        return CLATTN_ERROR_OUT_OF_MEMORY;
    }

    for (int64_t b = 0; b < B; b++) {
        /* problem_init has checked host kv_lens values are within 0..Lk. */
        const int64_t kv_len = p.kv_lens ? (int64_t)clattn__host_get(p.kv_lens, b, 0, 0, 0) : Lk;
        for (int64_t kvh = 0; kvh < p.Hkv; kvh++) {
            /* Keys past kv_len are never read, so they need not be gathered. */
            for (int64_t j = 0; j < kv_len; j++) {
                for (int64_t d = 0; d < D; d++) kbuf[j * D + d] = clattn__host_get(k, b, kvh, j, d);
                for (int64_t d = 0; d < Dv; d++)
                    vbuf[j * Dv + d] = clattn__host_get(v, b, kvh, j, d);
            }
            /* Query heads kvh*group .. kvh*group+group-1 read this KV head. */
            for (int64_t h = kvh * p.group; h < (kvh + 1) * p.group; h++) {
                for (int64_t i = 0; i < Lq; i++) {
                    for (int64_t d = 0; d < D; d++) qrow[d] = clattn__host_get(q, b, h, i, d);
                    const int64_t row = (b * Hq + h) * Lq + i;
                    const double l =
                        reference_row(&p, b, h, i, kv_len, qrow, kbuf, vbuf, s, out + row * Dv);
                    if (lse) lse[row] = l;
                }
            }
        }
    }
    free(kbuf);
    free(vbuf);
    free(s);
    free(qrow);
    return CLATTN_SUCCESS;
}
