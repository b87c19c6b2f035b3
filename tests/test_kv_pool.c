/* The paged KV pool on the default device: attention of random ragged batches (decode
 * and chunked prefill rows, page sizes 1..64, pages placed in a shuffled order, several
 * appends per sequence) against the float64 reference computed per sequence on the
 * DEQUANTIZED keys and values (clattn_kv_quantize_host, which the device quantizers
 * match bit for bit, tests/test_kv_format.c), so only the kernel's float32 error counts;
 * cascade attention against the same reference over prefix + suffix; page copies, prefix
 * copies and range removal; bad page tables, slot mappings and shared pages refused with
 * a message and nothing written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "tuning/tuning.h" /* clattn__tuning_force_form */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform01(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static float gauss(void) { return (float)(sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01())); }
static int irand(int n) { return (int)(uniform01() * n) % n; }

/* ---- A host model of a pool: each sequence's tokens as the pool stores them -------- */

#define MAX_SEQS 8
typedef struct model {
    clattn_kv_pool *pool;
    clattn_kv_format kf, vf;
    int npages, ps, Hkv, D, Dv;
    int nseq;
    int len[MAX_SEQS];
    int32_t *pages[MAX_SEQS]; /* page of each of the sequence's page positions */
    int npg[MAX_SEQS];
    float *k[MAX_SEQS], *v[MAX_SEQS]; /* dequantized [Hkv][cap][D], cap = npages * ps */
    int32_t *free_pages;              /* shuffled: pages are taken from the end */
    int nfree;
    /* the CSR table built from the above */
    int32_t indptr[MAX_SEQS + 1], *indices, last[MAX_SEQS];
    clattn_page_table table;
} model;

static void model_init(model *m, clattn_context *cx, int npages, int ps, int Hkv, int D, int Dv, clattn_kv_format kf,
                       clattn_kv_format vf, int nseq)
{
    memset(m, 0, sizeof *m);
    m->kf = kf;
    m->vf = vf;
    m->npages = npages;
    m->ps = ps;
    m->Hkv = Hkv;
    m->D = D;
    m->Dv = Dv;
    m->nseq = nseq;
    assert_int_equal(clattn_kv_pool_create(cx, npages, ps, Hkv, D, Dv, kf, vf, &m->pool), CLATTN_SUCCESS);
    const size_t cap = (size_t)npages * (size_t)ps;
    for (int s = 0; s < nseq; s++) {
        m->pages[s] = calloc((size_t)npages, sizeof(int32_t));
        m->k[s] = calloc((size_t)Hkv * cap * (size_t)D, sizeof(float));
        m->v[s] = calloc((size_t)Hkv * cap * (size_t)Dv, sizeof(float));
    }
    m->free_pages = malloc(sizeof(int32_t) * (size_t)npages);
    for (int i = 0; i < npages; i++) m->free_pages[i] = i;
    for (int i = npages - 1; i > 0; i--) { /* the shuffled page order */
        const int j = irand(i + 1);
        const int32_t t = m->free_pages[i];
        m->free_pages[i] = m->free_pages[j];
        m->free_pages[j] = t;
    }
    m->nfree = npages;
    m->indices = calloc((size_t)npages * MAX_SEQS + 1, sizeof(int32_t));
}

static void model_free(model *m)
{
    clattn_kv_pool_free(m->pool);
    for (int s = 0; s < m->nseq; s++) {
        free(m->pages[s]);
        free(m->k[s]);
        free(m->v[s]);
    }
    free(m->free_pages);
    free(m->indices);
}

static const clattn_page_table *model_table(model *m)
{
    m->indptr[0] = 0;
    for (int s = 0; s < m->nseq; s++) {
        for (int i = 0; i < m->npg[s]; i++) m->indices[m->indptr[s] + i] = m->pages[s][i];
        m->indptr[s + 1] = m->indptr[s] + m->npg[s];
        m->last[s] = m->npg[s] ? m->len[s] - (m->npg[s] - 1) * m->ps : 0;
    }
    m->table = (clattn_page_table){(size_t)m->nseq, m->indptr, m->indices, m->last, m->ps};
    return &m->table;
}

/* Append n[s] new random tokens to each sequence, in one call, pages taken from the
 * shuffled free list as needed; the model keeps the dequantized values. */
static void model_append(model *m, const int *n)
{
    int total = 0;
    for (int s = 0; s < m->nseq; s++) total += n[s];
    const int H = m->Hkv, D = m->D, Dv = m->Dv;
    float *k = malloc(sizeof(float) * (size_t)(H * total * D) + 4), *v = malloc(sizeof(float) * (size_t)(H * total * Dv) + 4);
    float *kh = malloc(sizeof(float) * (size_t)D), *vh = malloc(sizeof(float) * (size_t)Dv);
    int32_t *slots = malloc(sizeof(int32_t) * (size_t)total + 4);
    int t = 0;
    for (int s = 0; s < m->nseq; s++)
        for (int e = 0; e < n[s]; e++, t++) {
            const int pos = m->len[s] + e;
            if (pos / m->ps >= m->npg[s]) {
                assert_true(m->nfree > 0);
                m->pages[s][m->npg[s]++] = m->free_pages[--m->nfree];
            }
            slots[t] = m->pages[s][pos / m->ps] * m->ps + pos % m->ps;
            const size_t cap = (size_t)m->npages * (size_t)m->ps;
            for (int h = 0; h < H; h++) {
                float *kr = k + ((size_t)h * total + t) * D, *vr = v + ((size_t)h * total + t) * Dv;
                for (int i = 0; i < D; i++) kr[i] = gauss() * (i % 7 == 2 ? 4.0f : 1.0f);
                for (int i = 0; i < Dv; i++) vr[i] = gauss();
                assert_int_equal(clattn_kv_quantize_host(m->kf, CLATTN_KV_KEYS, kr, 1, D, kh, NULL), CLATTN_SUCCESS);
                assert_int_equal(clattn_kv_quantize_host(m->vf, CLATTN_KV_VALUES, vr, 1, Dv, vh, NULL), CLATTN_SUCCESS);
                memcpy(m->k[s] + ((size_t)h * cap + pos) * D, kh, sizeof(float) * (size_t)D);
                memcpy(m->v[s] + ((size_t)h * cap + pos) * Dv, vh, sizeof(float) * (size_t)Dv);
            }
        }
    for (int s = 0; s < m->nseq; s++) m->len[s] += n[s];
    const clattn_page_table *pt = model_table(m);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, 1, H, total, D);
    clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, 1, H, total, Dv);
    clattn_context *cx = test_shared_context();
    const clattn_status st = clattn_kv_pool_append(m->pool, pt, &tk, &tv, slots, NULL);
    if (st != CLATTN_SUCCESS) print_error("append: %s\n", clattn_context_last_error(cx));
    assert_int_equal(st, CLATTN_SUCCESS);
    free(k);
    free(v);
    free(kh);
    free(vh);
    free(slots);
}

/* The reference of sequence s's rows: q rows [Hq][Lq_s][D] (from the packed q), keys
 * 0..len-1 of the model (prefix_of: another model's sequence placed first, for cascade). */
static double check_rows(const model *m, int s, const model *pre, int ps_, const float *q, int Hq, int Nq, int q0,
                         int lq, const float *o, const float *lse, const clattn_options *opt, char *why, size_t wl)
{
    const int H = m->Hkv, D = m->D, Dv = m->Dv;
    const int plen = pre ? pre->len[ps_] : 0, L = plen + m->len[s];
    const size_t cap = (size_t)m->npages * (size_t)m->ps;
    float *qs = malloc(sizeof(float) * (size_t)(Hq * lq * D) + 4);
    float *ks = malloc(sizeof(float) * (size_t)(H * L * D) + 4), *vs = malloc(sizeof(float) * (size_t)(H * L * Dv) + 4);
    double *ref = malloc(sizeof(double) * (size_t)(Hq * lq * Dv) + 8), *rl = malloc(sizeof(double) * (size_t)(Hq * lq) + 8);
    for (int h = 0; h < Hq; h++)
        for (int i = 0; i < lq; i++)
            memcpy(qs + ((size_t)h * lq + i) * D, q + ((size_t)h * Nq + q0 + i) * D, sizeof(float) * (size_t)D);
    for (int h = 0; h < H; h++)
        for (int j = 0; j < L; j++) {
            const model *src = j < plen ? pre : m;
            const int ss = j < plen ? ps_ : s, jj = j < plen ? j : j - plen;
            const size_t scap = (size_t)src->npages * (size_t)src->ps;
            memcpy(ks + ((size_t)h * L + j) * D, src->k[ss] + ((size_t)h * scap + jj) * D, sizeof(float) * (size_t)D);
            memcpy(vs + ((size_t)h * L + j) * Dv, src->v[ss] + ((size_t)h * scap + jj) * Dv, sizeof(float) * (size_t)Dv);
        }
    (void)cap;
    clattn_tensor tq = clattn_tensor_host(qs, CLATTN_F32, 1, Hq, lq, D);
    clattn_tensor tk = clattn_tensor_host(ks, CLATTN_F32, 1, H, L, D);
    clattn_tensor tv = clattn_tensor_host(vs, CLATTN_F32, 1, H, L, Dv);
    clattn_options ro = *opt;
    ro.lse = NULL;
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &ro, ref, rl), CLATTN_SUCCESS);
    double worst = 0;
    for (int h = 0; h < Hq; h++)
        for (int i = 0; i < lq; i++) {
            for (int d = 0; d < Dv; d++) {
                const double r = ref[((size_t)h * lq + i) * Dv + d];
                const double got = o[((size_t)h * Nq + q0 + i) * Dv + d];
                const double e = isnan(got) ? INFINITY : fabs(got - r) / (2e-4 + 2e-3 * fabs(r));
                if (e > worst) {
                    worst = e;
                    snprintf(why, wl, "seq %d head %d row %d o[%d] = %.7g, reference %.7g", s, h, i, d, got, r);
                }
            }
            if (lse) {
                const double r = rl[(size_t)h * lq + i], got = lse[(size_t)h * Nq + q0 + i];
                const double e = isinf(r) ? (got == r ? 0 : INFINITY) : fabs(got - r) / (1e-3 + 1e-4 * fabs(r));
                if (e > worst) {
                    worst = e;
                    snprintf(why, wl, "seq %d head %d row %d lse = %.7g, reference %.7g", s, h, i, got, r);
                }
            }
        }
    free(qs);
    free(ks);
    free(vs);
    free(ref);
    free(rl);
    return worst;
}

typedef struct pool_case {
    const char *name;
    clattn_kv_format kf, vf;
    int ps, Hq, Hkv, D, Dv, nseq;
    int maxlen;      /* lengths drawn in 0..maxlen (one sequence is always empty-capable) */
    int max_lq;      /* query rows per sequence: 1 (decode) .. max_lq (chunked prefill) */
    int options;     /* 1: softcap + ALiBi + window + scale */
    clattn_causal causal;
    int mask;        /* 0 none, 1 bool, 2 float (with some -inf) */
    int bcast;       /* bit i: the mask's extent i is 1 (broadcast) */
} pool_case;

/* A random mask of the pool's per-sequence shape [nseq, Hq, Lq_max, Lk_max], extents of
 * pc->bcast's bits 1, in *t (its data malloc'ed; NULL for none). */
static void *make_mask(const pool_case *pc, int Lq_max, int Lk_max, clattn_tensor *t)
{
    if (!pc->mask) return NULL;
    const int64_t full[4] = {pc->nseq, pc->Hq, Lq_max, Lk_max};
    int64_t ne[4], n = 1;
    for (int i = 0; i < 4; i++) {
        ne[i] = (pc->bcast >> i) & 1 ? 1 : full[i];
        n *= ne[i];
    }
    const clattn_dtype dt = pc->mask == 1 ? CLATTN_BOOL : CLATTN_F32;
    void *data = malloc((size_t)(n > 0 ? n : 1) * clattn_dtype_size(dt));
    for (int64_t e = 0; e < n; e++) {
        if (pc->mask == 1) ((uint8_t *)data)[e] = uniform01() < 0.75;
        else ((float *)data)[e] = uniform01() < 0.05 ? -INFINITY : 2.0f * gauss();
    }
    *t = clattn_tensor_host(data, dt, ne[0], ne[1], ne[2], ne[3]);
    return data;
}

/* Sequence s's part of the pool's mask as the reference's [1, Hq|1, lq|1, len|1] mask:
 * element (s, h, i, j) of the pool's mask is (0, h, i, j) of the sequence's. */
static clattn_tensor seq_mask_view(const clattn_tensor *m, int s, int lq, int len)
{
    clattn_tensor v = *m;
    if (v.ne[0] != 1) v.offset += (size_t)(s * v.nb[0]);
    v.ne[0] = 1;
    if (v.ne[2] != 1) v.ne[2] = lq;
    if (v.ne[3] != 1) v.ne[3] = len;
    return v;
}

static void run_pool_case(const pool_case *pc)
{
    clattn_context *cx = test_shared_context();
    model m;
    const int npages = pc->nseq * ((pc->maxlen + pc->ps - 1) / pc->ps + 1) + 2;
    model_init(&m, cx, npages, pc->ps, pc->Hkv, pc->D, pc->Dv, pc->kf, pc->vf, pc->nseq);
    /* two appends per sequence, so partial last pages are continued */
    int n1[MAX_SEQS], n2[MAX_SEQS], lq[MAX_SEQS];
    for (int s = 0; s < pc->nseq; s++) {
        const int L = s == 1 ? 0 : 1 + irand(pc->maxlen); /* sequence 1 has no keys */
        n1[s] = L / 3;
        n2[s] = L - n1[s];
    }
    model_append(&m, n1);
    model_append(&m, n2);
    int32_t qo[MAX_SEQS + 1];
    qo[0] = 0;
    for (int s = 0; s < pc->nseq; s++) {
        lq[s] = 1 + irand(pc->max_lq);
        if (lq[s] > m.len[s] && m.len[s] > 0 && pc->causal) lq[s] = m.len[s];
        qo[s + 1] = qo[s] + lq[s];
    }
    const int Nq = qo[pc->nseq], Hq = pc->Hq, D = pc->D, Dv = pc->Dv;
    float *q = malloc(sizeof(float) * (size_t)(Hq * Nq * D)), *o = malloc(sizeof(float) * (size_t)(Hq * Nq * Dv));
    float *lse = malloc(sizeof(float) * (size_t)(Hq * Nq));
    for (int i = 0; i < Hq * Nq * D; i++) q[i] = gauss();
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, Hq, Nq, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, Hq, Nq, Dv);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, 1, Hq, Nq, 1);
    float alibi[64];
    for (int h = 0; h < Hq; h++) alibi[h] = exp2f(-8.0f * (float)(h + 1) / (float)Hq);
    clattn_tensor ta = clattn_tensor_host(alibi, CLATTN_F32, Hq, 1, 1, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = pc->causal;
    opt.lse = &tl;
    if (pc->options) {
        opt.softcap = 20.0f;
        opt.alibi = &ta;
        opt.window_left = 37;
        opt.scale = 0.11f;
    }
    int lq_max = 0, len_max = 0;
    for (int s = 0; s < pc->nseq; s++) {
        lq_max = lq[s] > lq_max ? lq[s] : lq_max;
        len_max = m.len[s] > len_max ? m.len[s] : len_max;
    }
    clattn_tensor tm;
    void *mask = make_mask(pc, lq_max, len_max, &tm);
    if (mask) opt.mask = &tm;
    const clattn_status st = clattn_kv_pool_attention(cx, m.pool, model_table(&m), qo, &tq, &to, &opt, NULL);
    if (st != CLATTN_SUCCESS) print_error("%s: %s\n", pc->name, clattn_context_last_error(cx));
    assert_int_equal(st, CLATTN_SUCCESS);
    double worst = 0;
    char why[256] = "";
    for (int s = 0; s < pc->nseq; s++) {
        char w[256];
        clattn_options so = opt; /* the reference sees sequence s's part of the mask */
        clattn_tensor sm;
        if (mask) {
            sm = seq_mask_view(&tm, s, lq[s], m.len[s]);
            so.mask = &sm;
        }
        const double e = check_rows(&m, s, NULL, 0, q, Hq, Nq, qo[s], lq[s], o, lse, &so, w, sizeof w);
        if (e > worst) {
            worst = e;
            snprintf(why, sizeof why, "%s", w);
        }
    }
    if (!(worst <= 1.0))
        print_error("FAILED %s (k %s v %s, page %d): %.3g of tolerance: %s\n", pc->name, clattn_kv_format_name(pc->kf),
                    clattn_kv_format_name(pc->vf), pc->ps, worst, why);
    assert_true(worst <= 1.0);
    model_free(&m);
    free(q);
    free(o);
    free(lse);
    free(mask);
}

static void test_paged_attention_matches_reference_on_dequantized_pages(void **state)
{
    (void)state;
    /* each case is its own kernel build (format pair, page size, options): few of them,
     * and D = 32 where the case does not test odd head sizes, so the query and output
     * programs and the appends of a format are shared between cases */
    static const pool_case cases[] = {
        {"f16 decode+prefill, page 16, GQA", CLATTN_KV_F16, CLATTN_KV_F16, 16, 4, 2, 32, 32, 5, 90, 4, 0,
         CLATTN_CAUSAL_BOTTOM_RIGHT, 0, 0},
        {"int8, page 4 (padded to a tile), every option", CLATTN_KV_INT8, CLATTN_KV_INT8, 4, 2, 1, 40, 24, 4, 70, 3,
         1, CLATTN_CAUSAL_BOTTOM_RIGHT, 0, 0},
        {"tq4 keys, f16 values, page 64, no causal", CLATTN_KV_TQ4, CLATTN_KV_F16, 64, 4, 1, 32, 32, 4, 150, 2, 0,
         CLATTN_CAUSAL_NONE, 0, 0},
        {"f32 keys, int4 values, page 1", CLATTN_KV_F32, CLATTN_KV_INT4, 1, 4, 2, 32, 32, 3, 40, 2, 0,
         CLATTN_CAUSAL_BOTTOM_RIGHT, 0, 0},
        {"f16, page 2 (unpadded small pages)", CLATTN_KV_F16, CLATTN_KV_F16, 2, 4, 2, 32, 32, 3, 50, 3, 0,
         CLATTN_CAUSAL_BOTTOM_RIGHT, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_pool_case(&cases[i]);
}

/* Masks described per sequence ([n_seqs, Hq, Lq_max, Lk_max], clattn_kv.h), bool and
 * float, full and broadcast extents, over decode and chunked prefill rows. */
static void test_paged_attention_with_masks_matches_reference(void **state)
{
    (void)state;
    static const pool_case cases[] = {
        {"bool mask, every extent, chunked prefill, GQA, page 16", CLATTN_KV_F16, CLATTN_KV_F16, 16, 4, 2, 32, 32, 5,
         90, 4, 0, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 0},
        {"float mask over heads (Hq 1), every option, page 4", CLATTN_KV_INT8, CLATTN_KV_INT8, 4, 2, 1, 40, 24, 4, 70,
         3, 1, CLATTN_CAUSAL_BOTTOM_RIGHT, 2, 2},
        {"float mask [n_seqs, Hq, 1, Lk_max], decode, tq4 keys, page 64", CLATTN_KV_TQ4, CLATTN_KV_F16, 64, 4, 1, 32,
         32, 4, 150, 1, 0, CLATTN_CAUSAL_NONE, 2, 4},
        {"bool mask [1, 1, Lq_max, Lk_max], f32 keys, int4 values, page 1", CLATTN_KV_F32, CLATTN_KV_INT4, 1, 4, 2, 32,
         32, 3, 40, 3, 0, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_pool_case(&cases[i]);
}

/* The GPU form (KV_GPU 1) over pages, forced through the tuning layer: tiled keys on
 * pages padded to a tile and on pages of two tiles, INT4 and TQ value tiles, small
 * unpadded pages of plain rows, every per-key option. */
static void test_gpu_form_over_pages_matches_reference(void **state)
{
    (void)state;
    clattn__tuning_force_form(CLATTN__TP_KV, 1);
    static const pool_case cases[] = {
        {"gpu: int8 keys, tq4 values, page 4 (padded to a tile), every option", CLATTN_KV_INT8, CLATTN_KV_TQ4, 4, 2, 1,
         40, 24, 4, 70, 3, 1, CLATTN_CAUSAL_BOTTOM_RIGHT, 0, 0},
        {"gpu: tq3 keys, int4 values, page 32, GQA", CLATTN_KV_TQ3, CLATTN_KV_INT4, 32, 4, 2, 32, 32, 3, 90, 2, 0,
         CLATTN_CAUSAL_BOTTOM_RIGHT, 0, 0},
        {"gpu: f16, page 2 (unpadded small pages)", CLATTN_KV_F16, CLATTN_KV_F16, 2, 4, 2, 32, 32, 3, 50, 3, 0,
         CLATTN_CAUSAL_NONE, 0, 0},
        {"gpu: bool mask [n_seqs, 1, Lq_max, Lk_max], int8 keys, page 16", CLATTN_KV_INT8, CLATTN_KV_F16, 16, 4, 2,
         32, 32, 3, 60, 3, 0, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 2},
        {"gpu: float mask, every extent, every option, page 4", CLATTN_KV_INT8, CLATTN_KV_TQ4, 4, 2, 1, 40, 24, 4, 70,
         3, 1, CLATTN_CAUSAL_BOTTOM_RIGHT, 2, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_pool_case(&cases[i]);
}

static int unforce_kv_form(void **state)
{
    (void)state;
    clattn__tuning_force_form(CLATTN__TP_KV, -1);
    return 0;
}

/* Attention of the whole table into host o / lse (f32). */
static void attend(model *m, const int32_t *qo, const float *q, int Hq, int Nq, float *o, float *lse)
{
    clattn_context *cx = test_shared_context();
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, Hq, Nq, m->D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, Hq, Nq, m->Dv);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, 1, Hq, Nq, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    opt.lse = &tl;
    const clattn_status st = clattn_kv_pool_attention(cx, m->pool, model_table(m), qo, &tq, &to, &opt, NULL);
    if (st != CLATTN_SUCCESS) print_error("attention: %s\n", clattn_context_last_error(cx));
    assert_int_equal(st, CLATTN_SUCCESS);
}

static void expect_matches_model(model *m, const int32_t *qo, const float *q, int Hq, int Nq)
{
    float *o = malloc(sizeof(float) * (size_t)(Hq * Nq * m->Dv)), *lse = malloc(sizeof(float) * (size_t)(Hq * Nq));
    attend(m, qo, q, Hq, Nq, o, lse);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    for (int s = 0; s < m->nseq; s++) {
        char why[256] = "";
        const double e = check_rows(m, s, NULL, 0, q, Hq, Nq, qo[s], qo[s + 1] - qo[s], o, lse, &opt, why, sizeof why);
        if (!(e <= 1.0)) print_error("FAILED: %.3g of tolerance: %s\n", e, why);
        assert_true(e <= 1.0);
    }
    free(o);
    free(lse);
}

/* The same pool and queries for the error and page-operation tests: tq4 keys (tiles
 * shared by 16 tokens), int8 values, page 16. */
#define OPS_HQ 2
static void ops_model(model *m, int nseq, const int *lens)
{
    model_init(m, test_shared_context(), 24, 16, 1, 32, 32, CLATTN_KV_TQ4, CLATTN_KV_INT8, nseq);
    model_append(m, lens);
}

static void test_bad_tables_and_slots_are_refused_and_nothing_is_written(void **state)
{
    (void)state;
    clattn_context *cx = test_shared_context();
    model m;
    const int lens[2] = {20, 9};
    ops_model(&m, 2, lens);
    int32_t qo[3] = {0, 1, 2};
    float q[OPS_HQ * 2 * 32], before[OPS_HQ * 2 * 32], after[OPS_HQ * 2 * 32], lb[OPS_HQ * 2], la[OPS_HQ * 2];
    for (int i = 0; i < OPS_HQ * 2 * 32; i++) q[i] = gauss();
    attend(&m, qo, q, OPS_HQ, 2, before, lb);

    const clattn_page_table *good = model_table(&m);
    float kx[64 * 32], vx[64 * 32];
    for (int i = 0; i < 64 * 32; i++) kx[i] = vx[i] = gauss();
    clattn_tensor tk = clattn_tensor_host(kx, CLATTN_F32, 1, 1, 2, 32), tv = clattn_tensor_host(vx, CLATTN_F32, 1, 1, 2, 32);
    /* the slots of sequence 0's next two tokens: inside its last page */
    const int32_t next0 = m.pages[0][1] * 16 + 4;
    int32_t slots[2] = {next0, next0 + 1};

    typedef struct bad {
        const char *expect; /* a word the message must contain */
        int32_t indptr[3], last[2], idx0;
        int64_t page_size;
        int32_t slot1;
    } bad;
    const bad cases[] = {
        {"not a page", {0, 2, 3}, {4, 9}, 999, 16, -1},         /* page index out of range */
        {"non-decreasing", {0, 3, 2}, {4, 9}, -1, 16, -1},      /* indptr decreasing */
        {"last_page_len", {0, 2, 3}, {17, 9}, -1, 16, -1},      /* last-page length too big */
        {"last_page_len", {0, 2, 3}, {0, 9}, -1, 16, -1},       /* and zero with pages */
        {"page_size", {0, 2, 3}, {4, 9}, -1, 32, -1},           /* page size mismatch */
        {"outside", {0, 2, 3}, {4, 9}, -1, 16, 24 * 16},        /* slot outside the pool */
        {"two tokens", {0, 2, 3}, {4, 9}, -1, 16, -2},          /* one slot twice */
        {"held 2 times", {0, 2, 3}, {4, 9}, -3, 16, -1},        /* shared page written */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int32_t idx[3] = {good->indices[0], good->indices[1], good->indices[2]};
        if (cases[c].idx0 >= 0) idx[0] = cases[c].idx0;
        if (cases[c].idx0 == -3) idx[2] = idx[1]; /* sequence 1 shares sequence 0's last page */
        clattn_page_table t = {2, cases[c].indptr, idx, cases[c].last, cases[c].page_size};
        int32_t sl[2] = {slots[0], cases[c].slot1 == -1 ? slots[1] : cases[c].slot1 == -2 ? slots[0] : cases[c].slot1};
        clattn_status st = clattn_kv_pool_append(m.pool, &t, &tk, &tv, sl, NULL);
        assert_int_not_equal(st, CLATTN_SUCCESS);
        const char *msg = clattn_context_last_error(cx);
        if (!strstr(msg, cases[c].expect)) print_error("case %zu: message \"%s\" lacks \"%s\"\n", c, msg, cases[c].expect);
        assert_non_null(strstr(msg, cases[c].expect));
        if (cases[c].slot1 == -1 && cases[c].idx0 != -3) { /* table errors: attention refuses too */
            clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, OPS_HQ, 2, 32);
            clattn_tensor to = clattn_tensor_host(after, CLATTN_F32, 1, OPS_HQ, 2, 32);
            assert_int_not_equal(clattn_kv_pool_attention(cx, m.pool, &t, qo, &tq, &to, NULL, NULL), CLATTN_SUCCESS);
            assert_non_null(strstr(clattn_context_last_error(cx), cases[c].expect));
        }
    }
    /* qo_indptr that does not cover the rows */
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, OPS_HQ, 2, 32);
    clattn_tensor to = clattn_tensor_host(after, CLATTN_F32, 1, OPS_HQ, 2, 32);
    const int32_t qo_bad[3] = {0, 1, 3};
    assert_int_equal(clattn_kv_pool_attention(cx, m.pool, good, qo_bad, &tq, &to, NULL, NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(cx), "qo_indptr"));
    /* masks of the wrong shape or dtype: the message names the per-sequence extents
     * [n_seqs, Hq, Lq_max, Lk_max] = [2, 2, 1, 20]; o keeps its contents */
    static uint8_t mb[2 * OPS_HQ * 2 * 21];
    static const struct {
        int64_t ne[4];
        clattn_dtype dt;
        clattn_status st;
        const char *expect;
    } bad_masks[] = {
        {{2, OPS_HQ, 1, 21}, CLATTN_BOOL, CLATTN_ERROR_INVALID_SHAPE, "ne[3] = 21 must be 1 or Lk_max = 20"},
        {{3, 1, 1, 20}, CLATTN_BOOL, CLATTN_ERROR_INVALID_SHAPE, "ne[0] = 3 must be 1 or n_seqs = 2"},
        {{1, 1, 2, 20}, CLATTN_BOOL, CLATTN_ERROR_INVALID_SHAPE, "[n_seqs, Hq, Lq_max, Lk_max] = [2, 2, 1, 20]"},
        {{2, 3, 1, 1}, CLATTN_BOOL, CLATTN_ERROR_INVALID_SHAPE, "ne[1] = 3 must be 1 or Hq = 2"},
        {{2, 1, 1, 20}, CLATTN_I32, CLATTN_ERROR_UNSUPPORTED_DTYPE, "not bool or f32"},
    };
    for (size_t c = 0; c < sizeof bad_masks / sizeof bad_masks[0]; c++) {
        clattn_tensor tm = clattn_tensor_host(mb, bad_masks[c].dt, bad_masks[c].ne[0], bad_masks[c].ne[1],
                                              bad_masks[c].ne[2], bad_masks[c].ne[3]);
        clattn_options mo;
        clattn_options_init(&mo);
        mo.mask = &tm;
        for (size_t i = 0; i < sizeof after / sizeof after[0]; i++) after[i] = 7.0f;
        assert_int_equal(clattn_kv_pool_attention(cx, m.pool, good, qo, &tq, &to, &mo, NULL), bad_masks[c].st);
        const char *msg = clattn_context_last_error(cx);
        if (!strstr(msg, bad_masks[c].expect)) print_error("mask %zu: \"%s\" lacks \"%s\"\n", c, msg, bad_masks[c].expect);
        assert_non_null(strstr(msg, bad_masks[c].expect));
        for (size_t i = 0; i < sizeof after / sizeof after[0]; i++) assert_true(after[i] == 7.0f);
    }
    /* pool creation: page size not a power of two, int4 keys */
    clattn_kv_pool *p2 = NULL;
    assert_int_equal(clattn_kv_pool_create(cx, 4, 12, 1, 32, 32, CLATTN_KV_F16, CLATTN_KV_F16, &p2), CLATTN_ERROR_INVALID_SHAPE);
    assert_null(p2);
    assert_int_equal(clattn_kv_pool_create(cx, 4, 16, 1, 32, 32, CLATTN_KV_INT4, CLATTN_KV_F16, &p2),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(cx), "int4"));
    /* page copies onto their own sources */
    const int32_t cs[2] = {1, 2}, cd[2] = {3, 1};
    assert_int_equal(clattn_kv_pool_copy_pages(m.pool, 2, cs, cd, NULL), CLATTN_ERROR_INVALID_ARGUMENT);

    /* nothing was written: the same attention, bit for bit */
    attend(&m, qo, q, OPS_HQ, 2, after, la);
    assert_memory_equal(before, after, sizeof before);
    assert_memory_equal(lb, la, sizeof lb);
    model_free(&m);
}

static void test_page_copy_prefix_copy_and_range_removal(void **state)
{
    (void)state;
    clattn_context *cx = test_shared_context();
    model m;
    const int lens[3] = {45, 0, 30};
    ops_model(&m, 3, lens);
    int32_t qo[4] = {0, 1, 3, 4}; /* sequence 1 gets two rows (chunked) */
    float q[OPS_HQ * 4 * 32];
    for (int i = 0; i < OPS_HQ * 4 * 32; i++) q[i] = gauss();
    const size_t cap = (size_t)m.npages * 16;

    /* copy-on-write: sequence 2's pages copied to fresh pages, the table pointed there */
    int32_t src[2], dst[2];
    for (int i = 0; i < 2; i++) {
        src[i] = m.pages[2][i];
        dst[i] = m.free_pages[--m.nfree];
        m.pages[2][i] = dst[i];
    }
    assert_int_equal(clattn_kv_pool_copy_pages(m.pool, 2, src, dst, NULL), CLATTN_SUCCESS);
    expect_matches_model(&m, qo, q, OPS_HQ, 4);

    /* copy the first 37 tokens of sequence 0 into sequence 1 (3 pages of its own) */
    for (int i = 0; i < 3; i++) m.pages[1][i] = m.free_pages[--m.nfree];
    m.npg[1] = 3;
    m.len[1] = 37; /* what the caller sets after the copy */
    const clattn_page_table *pt = model_table(&m);
    m.last[1] = 0; /* the copy's table: sequence 1 holds its pages, still empty */
    clattn_status st = clattn_kv_pool_seq_copy_prefix(m.pool, pt, 0, 1, 37, NULL);
    /* last_page_len 0 with pages is a bad table: the call must refuse it */
    assert_int_equal(st, CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(cx), "last_page_len[1]"));
    pt = model_table(&m);
    assert_int_equal(clattn_kv_pool_seq_copy_prefix(m.pool, pt, 0, 1, 37, NULL), CLATTN_SUCCESS);
    for (int h = 0; h < m.Hkv; h++) {
        memcpy(m.k[1] + (size_t)h * cap * 32, m.k[0] + (size_t)h * cap * 32, sizeof(float) * 37 * 32);
        memcpy(m.v[1] + (size_t)h * cap * 32, m.v[0] + (size_t)h * cap * 32, sizeof(float) * 37 * 32);
    }
    expect_matches_model(&m, qo, q, OPS_HQ, 4);

    /* remove tokens 5..22 of sequence 0 (crossing a page), then a tail */
    int64_t nl = -1;
    st = clattn_kv_pool_seq_remove(m.pool, model_table(&m), 0, 5, 23, &nl, NULL);
    if (st != CLATTN_SUCCESS) print_error("remove: %s\n", clattn_context_last_error(cx));
    assert_int_equal(st, CLATTN_SUCCESS);
    assert_int_equal(nl, 45 - 18);
    for (int h = 0; h < m.Hkv; h++) {
        memmove(m.k[0] + ((size_t)h * cap + 5) * 32, m.k[0] + ((size_t)h * cap + 23) * 32, sizeof(float) * 22 * 32);
        memmove(m.v[0] + ((size_t)h * cap + 5) * 32, m.v[0] + ((size_t)h * cap + 23) * 32, sizeof(float) * 22 * 32);
    }
    m.len[0] = (int)nl;
    m.npg[0] = (int)((nl + 15) / 16); /* the caller drops the page it no longer needs */
    expect_matches_model(&m, qo, q, OPS_HQ, 4);
    assert_int_equal(clattn_kv_pool_seq_remove(m.pool, model_table(&m), 2, 17, 1000, &nl, NULL), CLATTN_SUCCESS);
    assert_int_equal(nl, 17);
    m.len[2] = 17;
    m.npg[2] = 2;
    expect_matches_model(&m, qo, q, OPS_HQ, 4);
    /* appends continue after a removal */
    const int more[3] = {11, 0, 20};
    model_append(&m, more);
    expect_matches_model(&m, qo, q, OPS_HQ, 4);
    model_free(&m);
}

static void cascade_case(clattn_kv_format kf, clattn_kv_format vf)
{
    clattn_context *cx = test_shared_context();
    /* one pool: sequences 0 and 1 of the model are the prefixes of two groups, 2..5 the
     * suffixes (2, 3 in group 0; 4, 5 in group 1) */
    model m;
    model_init(&m, cx, 40, 16, 2, 32, 32, kf, vf, 6);
    const int lens[6] = {70, 33, 5, 20, 0, 17};
    model_append(&m, lens);
    model_table(&m);
    const int32_t pre_indptr[3] = {0, m.npg[0], m.npg[0] + m.npg[1]};
    int32_t pre_idx[16], suf_idx[16], suf_indptr[5], pre_last[2] = {m.last[0], m.last[1]}, suf_last[4];
    for (int i = 0; i < m.npg[0] + m.npg[1]; i++) pre_idx[i] = m.indices[i];
    suf_indptr[0] = 0;
    for (int s = 0; s < 4; s++) {
        for (int i = 0; i < m.npg[2 + s]; i++) suf_idx[suf_indptr[s] + i] = m.pages[2 + s][i];
        suf_indptr[s + 1] = suf_indptr[s] + m.npg[2 + s];
        suf_last[s] = m.last[2 + s];
    }
    const clattn_page_table prefix = {2, pre_indptr, pre_idx, pre_last, 16};
    const clattn_page_table suffix = {4, suf_indptr, suf_idx, suf_last, 16};
    const int32_t qo[5] = {0, 1, 4, 5, 6}; /* sequence 3: three rows (chunked prefill) */
    const int32_t gqo[3] = {0, 4, 6};
    const int Hq = 4, Nq = 6;
    float q[4 * 6 * 32], o[4 * 6 * 32], lse[4 * 6];
    for (int i = 0; i < Hq * Nq * 32; i++) q[i] = gauss();
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, Hq, Nq, 32);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, Hq, Nq, 32);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, 1, Hq, Nq, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    opt.softcap = 30.0f;
    opt.lse = &tl;
    const clattn_status st = clattn_kv_pool_cascade_attention(cx, m.pool, &prefix, gqo, &suffix, qo, &tq, &to, &opt, NULL);
    if (st != CLATTN_SUCCESS) print_error("cascade: %s\n", clattn_context_last_error(cx));
    assert_int_equal(st, CLATTN_SUCCESS);
    for (int s = 0; s < 4; s++) {
        char why[256] = "";
        const double e =
            check_rows(&m, 2 + s, &m, s < 2 ? 0 : 1, q, Hq, Nq, qo[s], qo[s + 1] - qo[s], o, lse, &opt, why, sizeof why);
        if (!(e <= 1.0))
            print_error("FAILED cascade (k %s v %s): %.3g of tolerance: %s\n", clattn_kv_format_name(kf),
                        clattn_kv_format_name(vf), e, why);
        assert_true(e <= 1.0);
    }
    /* a sequence whose rows cross a group boundary, and ALiBi, are refused */
    const int32_t gbad[3] = {0, 3, 6};
    assert_int_equal(clattn_kv_pool_cascade_attention(cx, m.pool, &prefix, gbad, &suffix, qo, &tq, &to, &opt, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(cx), "group"));
    model_free(&m);
}

static void test_cascade_matches_reference_over_prefix_and_suffix(void **state)
{
    (void)state;
    cascade_case(CLATTN_KV_F16, CLATTN_KV_F16);
    /* the prefix is dequantized on the device before its dense problem: tq (rotation),
     * and int4 values */
    cascade_case(CLATTN_KV_TQ4, CLATTN_KV_INT4);
}

/* An argument names the tests to run (cmocka's pattern, e.g. test_gpu_form_*): CTest runs
 * the GPU-form tests alone on rusticl that way. */
int main(int argc, char **argv)
{
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paged_attention_matches_reference_on_dequantized_pages),
        cmocka_unit_test(test_paged_attention_with_masks_matches_reference),
        cmocka_unit_test_teardown(test_gpu_form_over_pages_matches_reference, unforce_kv_form),
        cmocka_unit_test(test_bad_tables_and_slots_are_refused_and_nothing_is_written),
        cmocka_unit_test(test_page_copy_prefix_copy_and_range_removal),
        cmocka_unit_test(test_cascade_matches_reference_over_prefix_and_suffix),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
