/* Runs clattn_attention_varlen on small packed cases (sequences of 0, 1 and several
 * queries, one with no keys, GQA, both causal alignments, a window, softcap, ALiBi, f16
 * storage, LSE), so that run under oclgrind the fused kernels' varlen builds (every
 * sequence in one launch, on the form that fused_cpu_form.json or fused_gpu_form.json
 * selects) are checked for out-of-bounds accesses, races and API misuse. Each sequence is compared with the
 * float64 reference run on it alone. Exit status 0 when every case matched. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "clattn.h"
#include "core/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct vcase {
    const char *name;
    int64_t Hq, Hkv, D, Dv;
    clattn_dtype dtype;
    clattn_causal causal;
    int64_t win_left;
    float softcap;
    int alibi;
} vcase;

enum { NSEQ = 5 };
static const int32_t cu_q[NSEQ + 1] = {0, 1, 1, 9, 12, 19};
static const int32_t cu_k[NSEQ + 1] = {0, 3, 5, 9, 9, 26};

static const vcase cases[] = {
    {"f32-causal-br-gqa", 4, 2, 16, 16, CLATTN_F32, CLATTN_CAUSAL_BOTTOM_RIGHT, -1, 0.0f, 0},
    {"f16-tl-window-softcap-alibi", 2, 1, 9, 5, CLATTN_F16, CLATTN_CAUSAL_TOP_LEFT, 3, 2.0f, 1},
};

static float value(size_t i, int64_t salt) { return (float)((i * 37 + (size_t)salt * 11) % 23) / 11.5f - 1.0f; }

/* Fill x (n floats, rounded to dt) and its storage s. */
static void fill(float *x, uint16_t *s, size_t n, clattn_dtype dt, int64_t salt)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = value(i, salt);
        if (dt == CLATTN_F16) x[i] = clattn__half_to_float(s[i] = clattn__float_to_half(x[i]));
    }
}

static int run_case(const vcase *c)
{
    const int64_t tq = cu_q[NSEQ], tk = cu_k[NSEQ];
    const size_t nq = (size_t)(c->Hq * tq * c->D), nk = (size_t)(c->Hkv * tk * c->D),
                 nv = (size_t)(c->Hkv * tk * c->Dv), no = (size_t)(c->Hq * tq * c->Dv);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nv * 4), *o = malloc(no * 4);
    float *lse = malloc((size_t)(c->Hq * tq) * 4), alibi[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
    uint16_t *sq = malloc(nq * 2), *sk = malloc(nk * 2), *sv = malloc(nv * 2), *so = malloc(no * 2);
    fill(q, sq, nq, c->dtype, 1), fill(k, sk, nk, c->dtype, 2), fill(v, sv, nv, c->dtype, 3);
    const bool f16 = c->dtype == CLATTN_F16;
    clattn_tensor tqt = clattn_tensor_host(f16 ? (void *)sq : q, c->dtype, 1, c->Hq, tq, c->D);
    clattn_tensor tkt = clattn_tensor_host(f16 ? (void *)sk : k, c->dtype, 1, c->Hkv, tk, c->D);
    clattn_tensor tvt = clattn_tensor_host(f16 ? (void *)sv : v, c->dtype, 1, c->Hkv, tk, c->Dv);
    clattn_tensor tot = clattn_tensor_host(f16 ? (void *)so : o, c->dtype, 1, c->Hq, tq, c->Dv);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, 1, c->Hq, tq, 1);
    clattn_tensor ta = clattn_tensor_host(alibi, CLATTN_F32, c->Hq, 1, 1, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = c->causal, opt.window_left = c->win_left, opt.softcap = c->softcap;
    if (c->alibi) opt.alibi = &ta;
    opt.lse = &tl;
    int bad = 0;
    clattn_context *ctx;
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st == CLATTN_SUCCESS) {
        st = clattn_attention_varlen(ctx, &tqt, &tkt, &tvt, &tot, NSEQ, cu_q, cu_k, &opt, NULL);
        if (st) printf("FAIL %s: %s\n", c->name, clattn_context_last_error(ctx));
        clattn_context_free(ctx);
    }
    if (st) bad++;
    for (size_t i = 0; f16 && i < no; i++) o[i] = clattn__half_to_float(so[i]);
    opt.lse = NULL;
    for (int s = 0; s < NSEQ && !bad; s++) {
        const int64_t q0 = cu_q[s], lq = cu_q[s + 1] - q0, k0 = cu_k[s], lk = cu_k[s + 1] - k0;
        if (lq == 0) continue;
        clattn_tensor rq = clattn_tensor_host(q, CLATTN_F32, 1, c->Hq, tq, c->D);
        clattn_tensor rk = clattn_tensor_host(k, CLATTN_F32, 1, c->Hkv, tk, c->D);
        clattn_tensor rv = clattn_tensor_host(v, CLATTN_F32, 1, c->Hkv, tk, c->Dv);
        rq.offset = (size_t)(q0 * rq.nb[2]), rq.ne[2] = lq;
        rk.offset = (size_t)(k0 * rk.nb[2]), rk.ne[2] = lk;
        rv.offset = (size_t)(k0 * rv.nb[2]), rv.ne[2] = lk;
        double *ro = malloc((size_t)(c->Hq * lq * c->Dv) * 8), *rl = malloc((size_t)(c->Hq * lq) * 8);
        if (clattn_reference_attention(&rq, &rk, &rv, &opt, ro, rl) != CLATTN_SUCCESS) bad++;
        for (int64_t h = 0; h < c->Hq && !bad; h++)
            for (int64_t i = 0; i < lq; i++) {
                const double l = lse[h * tq + q0 + i], rlv = rl[h * lq + i];
                if (isinf(rlv) ? l != rlv : fabs(l - rlv) > 1e-3) bad++;
                for (int64_t e = 0; e < c->Dv; e++) {
                    const double got = o[(h * tq + q0 + i) * c->Dv + e], want = ro[(h * lq + i) * c->Dv + e];
                    if (fabs(got - want) > 3e-3 + 3e-3 * fabs(want)) bad++;
                }
            }
        free(ro), free(rl);
    }
    printf("%-30s %s\n", c->name, bad ? "FAIL" : "ok");
    free(q), free(k), free(v), free(o), free(lse), free(sq), free(sk), free(sv), free(so);
    return bad;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0); /* keep case lines in order with oclgrind's reports */
    /* kernels must be built here, under the checker, not loaded from an earlier cache */
    setenv("CLATTN_CACHE_DIR", "off", 1);
    int failures = 0;
    /* a fresh context per case (oclgrind_driver.c says why) */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) failures += run_case(&cases[i]) != 0;
    return failures ? 1 : 0;
}
