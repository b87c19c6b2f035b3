/* The float64 backward reference (src/reference/reference_backward.c) checked on its own, by
 * central finite differences of the forward reference: for the loss L = Σ dO ∘ O, each
 * element of q, k, v (and of a float mask) is moved by ±1e-3 and (L+ - L-) / (x+ - x-)
 * must match the analytic gradient within 1e-5 + 1e-4·|g| (the truncation error of the
 * central difference is about 1e-7·L''' at that step). Small random cases cover every
 * SPEC §1 option; the device kernels are then tested against this reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clattn.h"

typedef struct fd_case {
    const char *name;
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
    clattn_causal causal;
    int64_t wl, wr; /* window; both 0 with window = 0 means none */
    int window;
    int kv_lens;
    float softcap, scale;
    int alibi;
    int mask;                 /* 0 none, 1 bool, 2 float */
    int64_t mask_ne[4];       /* mask extents (1 = broadcast) */
} fd_case;

static uint64_t rng_state;
static double rnd(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / (double)(1ULL << 52) - 1.0;
}

typedef struct fd_data {
    float *q, *k, *v, *dout, *mask_f, *alibi;
    unsigned char *mask_b;
    int32_t kvl[4];
    clattn_tensor tq, tk, tv, tdo, tmask, tkvl, talibi;
    clattn_options opt;
    int64_t nq, nk, nv, no, nm;
} fd_data;

static void fd_data_make(const fd_case *c, uint64_t seed, fd_data *d)
{
    memset(d, 0, sizeof *d);
    rng_state = seed;
    d->nq = c->B * c->Hq * c->Lq * c->D;
    d->nk = c->B * c->Hkv * c->Lk * c->D;
    d->nv = c->B * c->Hkv * c->Lk * c->Dv;
    d->no = c->B * c->Hq * c->Lq * c->Dv;
    d->q = malloc((size_t)d->nq * sizeof(float));
    d->k = malloc((size_t)d->nk * sizeof(float));
    d->v = malloc((size_t)d->nv * sizeof(float));
    d->dout = malloc((size_t)d->no * sizeof(float));
    assert_non_null(d->q);
    assert_non_null(d->k);
    assert_non_null(d->v);
    assert_non_null(d->dout);
    for (int64_t i = 0; i < d->nq; i++) d->q[i] = (float)(1.5 * rnd());
    for (int64_t i = 0; i < d->nk; i++) d->k[i] = (float)(1.5 * rnd());
    for (int64_t i = 0; i < d->nv; i++) d->v[i] = (float)rnd();
    for (int64_t i = 0; i < d->no; i++) d->dout[i] = (float)rnd();
    d->tq = clattn_tensor_host(d->q, CLATTN_F32, c->B, c->Hq, c->Lq, c->D);
    d->tk = clattn_tensor_host(d->k, CLATTN_F32, c->B, c->Hkv, c->Lk, c->D);
    d->tv = clattn_tensor_host(d->v, CLATTN_F32, c->B, c->Hkv, c->Lk, c->Dv);
    d->tdo = clattn_tensor_host(d->dout, CLATTN_F32, c->B, c->Hq, c->Lq, c->Dv);
    clattn_options_init(&d->opt);
    d->opt.causal = c->causal;
    if (c->window) {
        d->opt.window_left = c->wl;
        d->opt.window_right = c->wr;
    }
    d->opt.softcap = c->softcap;
    if (c->scale > 0) d->opt.scale = c->scale;
    if (c->kv_lens) {
        for (int64_t b = 0; b < c->B; b++) d->kvl[b] = (int32_t)(b == 1 ? 0 : c->Lk - 1 - b);
        d->tkvl = clattn_tensor_host(d->kvl, CLATTN_I32, c->B, 1, 1, 1);
        d->opt.kv_lens = &d->tkvl;
    }
    if (c->alibi) {
        d->alibi = malloc((size_t)c->Hq * sizeof(float));
        assert_non_null(d->alibi);
        for (int64_t h = 0; h < c->Hq; h++) d->alibi[h] = 0.25f * (float)(h + 1);
        d->talibi = clattn_tensor_host(d->alibi, CLATTN_F32, c->Hq, 1, 1, 1);
        d->opt.alibi = &d->talibi;
    }
    if (c->mask) {
        const int64_t *ne = c->mask_ne;
        d->nm = ne[0] * ne[1] * ne[2] * ne[3];
        if (c->mask == 1) {
            d->mask_b = malloc((size_t)d->nm);
            assert_non_null(d->mask_b);
            for (int64_t i = 0; i < d->nm; i++) d->mask_b[i] = rnd() > -0.4;
            d->tmask = clattn_tensor_host(d->mask_b, CLATTN_BOOL, ne[0], ne[1], ne[2], ne[3]);
        } else {
            d->mask_f = malloc((size_t)d->nm * sizeof(float));
            assert_non_null(d->mask_f);
            for (int64_t i = 0; i < d->nm; i++)
                d->mask_f[i] = i % 7 == 3 ? -INFINITY : (float)rnd();
            d->tmask = clattn_tensor_host(d->mask_f, CLATTN_F32, ne[0], ne[1], ne[2], ne[3]);
        }
        d->opt.mask = &d->tmask;
    }
}

static void fd_data_free(fd_data *d)
{
    free(d->q);
    free(d->k);
    free(d->v);
    free(d->dout);
    free(d->mask_f);
    free(d->mask_b);
    free(d->alibi);
}

static double loss(const fd_case *c, fd_data *d, double *o)
{
    assert_int_equal(clattn_reference_attention(&d->tq, &d->tk, &d->tv, &d->opt, o, NULL),
                     CLATTN_SUCCESS);
    double l = 0.0;
    for (int64_t i = 0; i < d->no; i++) l += o[i] * (double)d->dout[i];
    (void)c;
    return l;
}

/* Check every element of x (n floats) against the analytic gradient g. */
static int check_elements(const fd_case *c, fd_data *d, float *x, int64_t n, const double *g,
                          const char *what, double *o)
{
    int bad = 0;
    for (int64_t e = 0; e < n; e++) {
        const float x0 = x[e];
        if (isinf(x0)) continue;
        const float xp = (float)(x0 + 1e-3), xm = (float)(x0 - 1e-3);
        x[e] = xp;
        const double lp = loss(c, d, o);
        x[e] = xm;
        const double lm = loss(c, d, o);
        x[e] = x0;
        const double fd = (lp - lm) / ((double)xp - (double)xm);
        if (!(fabs(fd - g[e]) <= 1e-5 + 1e-4 * fabs(g[e]))) {
            if (bad < 5)
                print_error("%s: d%s[%lld]: analytic %.9g, finite difference %.9g\n", c->name,
                            what, (long long)e, g[e], fd);
            bad++;
        }
    }
    return bad;
}

static void check_case(const fd_case *c, uint64_t seed)
{
    fd_data d;
    fd_data_make(c, seed, &d);
    double *dq = calloc((size_t)d.nq, sizeof(double)), *dk = calloc((size_t)d.nk, sizeof(double));
    double *dv = calloc((size_t)d.nv, sizeof(double)), *o = calloc((size_t)d.no, sizeof(double));
    double *dm = c->mask == 2 ? calloc((size_t)d.nm, sizeof(double)) : NULL;
    assert_true(dq && dk && dv && o && (c->mask != 2 || dm));
    assert_int_equal(clattn_reference_attention_backward(&d.tq, &d.tk, &d.tv, &d.tdo, &d.opt, dq,
                                                         dk, dv, dm),
                     CLATTN_SUCCESS);
    int bad = check_elements(c, &d, d.q, d.nq, dq, "q", o);
    bad += check_elements(c, &d, d.k, d.nk, dk, "k", o);
    bad += check_elements(c, &d, d.v, d.nv, dv, "v", o);
    if (dm) bad += check_elements(c, &d, d.mask_f, d.nm, dm, "mask", o);
    /* the gradient must not be trivially zero (a case that tests nothing) */
    double gmax = 0.0;
    for (int64_t i = 0; i < d.nq; i++) gmax = fmax(gmax, fabs(dq[i]));
    if (!(gmax > 1e-3)) {
        print_error("%s: dq is all (near) zero: %g\n", c->name, gmax);
        bad++;
    }
    free(dq);
    free(dk);
    free(dv);
    free(o);
    free(dm);
    fd_data_free(&d);
    if (bad) fail_msg("%s (seed %llu): %d gradient elements differ from finite differences",
                      c->name, (unsigned long long)seed, bad);
}

#define SH(b, hq, hkv, lq, lk, dd, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = dd, .Dv = dv

static const fd_case cases[] = {
    {.name = "plain", SH(1, 2, 2, 4, 5, 3, 3)},
    {.name = "gqa_dv_ne_d", SH(2, 4, 2, 3, 6, 3, 2)},
    {.name = "mqa", SH(1, 3, 1, 3, 4, 2, 3)},
    {.name = "causal_top_left", SH(1, 2, 1, 5, 4, 3, 2), .causal = CLATTN_CAUSAL_TOP_LEFT},
    {.name = "causal_bottom_right_masked_rows", SH(1, 2, 2, 6, 3, 2, 2),
     .causal = CLATTN_CAUSAL_BOTTOM_RIGHT},
    {.name = "window", SH(1, 2, 2, 5, 7, 3, 3), .window = 1, .wl = 2, .wr = 1},
    {.name = "kv_lens", SH(3, 2, 1, 3, 5, 2, 3), .kv_lens = 1},
    {.name = "softcap", SH(1, 2, 2, 4, 5, 3, 3), .softcap = 0.7f, .scale = 1.3f},
    {.name = "alibi", SH(1, 2, 2, 4, 6, 3, 2), .alibi = 1, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT},
    {.name = "bool_mask_bcast", SH(2, 2, 2, 4, 5, 2, 2), .mask = 1, .mask_ne = {1, 2, 4, 5}},
    {.name = "float_mask_full", SH(2, 2, 1, 3, 4, 2, 3), .mask = 2, .mask_ne = {2, 2, 3, 4}},
    {.name = "float_mask_bcast_softcap", SH(2, 4, 2, 3, 5, 3, 2), .mask = 2,
     .mask_ne = {1, 4, 1, 5}, .softcap = 2.0f},
};

static void test_reference_backward_matches_finite_differences(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i], 1000 + i);
}

/* The reference refuses a d_o of the wrong shape and a mask gradient without a float mask. */
static void test_reference_backward_refuses_bad_shapes(void **state)
{
    (void)state;
    const fd_case c = {.name = "bad", SH(1, 2, 2, 4, 5, 3, 3)};
    fd_data d;
    fd_data_make(&c, 7, &d);
    double g[256];
    clattn_tensor bad_do = clattn_tensor_host(d.dout, CLATTN_F32, 1, 2, 4, 2);
    assert_int_equal(clattn_reference_attention_backward(&d.tq, &d.tk, &d.tv, &bad_do, &d.opt, g,
                                                         g, g, NULL),
                     CLATTN_ERROR_INVALID_SHAPE);
    assert_int_equal(clattn_reference_attention_backward(&d.tq, &d.tk, &d.tv, &d.tdo, &d.opt, g,
                                                         g, g, g),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    fd_data_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_backward_matches_finite_differences),
        cmocka_unit_test(test_reference_backward_refuses_bad_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
