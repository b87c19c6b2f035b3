/* Backward cases for the device tests (see test_backward_util.h).
 * Tolerance per gradient tensor G, with M = max|ref| over G:
 *     |g - ref| <= a·M + r·|ref|,  f32: a = r = 1e-3;  f16 anywhere: a = r = 1e-2;
 *     bf16 anywhere: a = r = 4e-2   (for d_mask, M is at least 1e-2)
 * (the device rounds O, dO and the gradients to their storage; elements the reference
 * has exactly 0, e.g. rows or keys nothing attends, must be exactly 0). */
#include "test_backward_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference/reference.h"

/* ---- the data of one backward case -------------------------------------------------- */



static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 11;
}

static void put(void *base, clattn_dtype dt, int64_t idx, double x)
{
    if (dt == CLATTN_F32) ((float *)base)[idx] = (float)x;
    else if (dt == CLATTN_F16) ((uint16_t *)base)[idx] = clattn__float_to_half((float)x);
    else ((uint16_t *)base)[idx] = clattn__float_to_bf16((float)x);
}

size_t grad_bytes(int64_t n, clattn_dtype dt) { return (size_t)n * clattn_dtype_size(dt); }

/* Build the case's inputs, O and LSE from the reference, a random dO and 0xff-filled
 * gradients (dense, in the case's output dtype, BLHD when the case is). */
void bwd_data_make(const attn_case *c0, int with_dmask, bwd_data *b)
{
    memset(b, 0, sizeof *b);
    b->c = *c0;
    b->c.lse = 1;
    attn_case *c = &b->c;
    assert_int_equal(attn_case_data_create(c, &b->d), CLATTN_SUCCESS);
    attn_case_tensors(b->d, &b->q, &b->k, &b->v, &b->o);
    attn_case_options(c, b->d, &b->opt);
    b->lse = *b->opt.lse;
    const int64_t Dv = attn_case_dv(c), Hkv = c->Hkv ? c->Hkv : c->Hq;
    b->nq = c->B * c->Hq * c->Lq * c->D;
    b->nk = c->B * Hkv * c->Lk * c->D;
    b->nv = c->B * Hkv * c->Lk * Dv;
    b->no = c->B * c->Hq * c->Lq * Dv;

    /* O and LSE from the float64 reference, rounded to their storage */
    double *o = malloc((size_t)(b->no + 1) * sizeof *o);
    double *l = malloc((size_t)(c->B * c->Hq * c->Lq + 1) * sizeof *l);
    assert_true(o && l);
    assert_int_equal(clattn_reference_attention(&b->q, &b->k, &b->v, &b->opt, o, l), CLATTN_SUCCESS);
    const clattn_dtype odt = b->o.dtype;
    const size_t oes = clattn_dtype_size(odt);
    for (int64_t bb = 0; bb < c->B; bb++)
        for (int64_t h = 0; h < c->Hq; h++)
            for (int64_t i = 0; i < c->Lq; i++) {
                const int64_t row = (bb * c->Hq + h) * c->Lq + i;
                float *lp = (float *)((char *)b->lse.host + b->lse.offset + bb * b->lse.nb[0] +
                                      h * b->lse.nb[1] + i * b->lse.nb[2]);
                *lp = (float)l[row];
                for (int64_t e = 0; e < Dv; e++) {
                    const int64_t byte = (int64_t)b->o.offset + bb * b->o.nb[0] + h * b->o.nb[1] +
                                         i * b->o.nb[2] + e * b->o.nb[3];
                    put((void *)b->o.host, odt, byte / (int64_t)oes, o[row * Dv + e]);
                }
            }
    free(o);
    free(l);

    /* dO: dense, random, in the output dtype */
    const clattn_dtype gdt = c->out_dtype;
    b->do_buf = malloc(grad_bytes(b->no, gdt) + 2);
    assert_non_null(b->do_buf);
    uint64_t s = c->seed * 7919 + 17;
    for (int64_t e = 0; e < b->no; e++)
        put(b->do_buf, gdt, e, (double)(lcg(&s) % 20001) / 10000.0 - 1.0);
    b->d_o = clattn_tensor_host(b->do_buf, gdt, c->B, c->Hq, c->Lq, Dv);
    b->dq_buf = malloc(grad_bytes(b->nq, gdt) + 2);
    b->dk_buf = malloc(grad_bytes(b->nk, gdt) + 2);
    b->dv_buf = malloc(grad_bytes(b->nv, gdt) + 2);
    assert_true(b->dq_buf && b->dk_buf && b->dv_buf);
    memset(b->dq_buf, 0xff, grad_bytes(b->nq, gdt));
    memset(b->dk_buf, 0xff, grad_bytes(b->nk, gdt));
    memset(b->dv_buf, 0xff, grad_bytes(b->nv, gdt));
    b->dq = clattn_tensor_host(b->dq_buf, gdt, c->B, c->Hq, c->Lq, c->D);
    b->dk = clattn_tensor_host(b->dk_buf, gdt, c->B, Hkv, c->Lk, c->D);
    b->dv = clattn_tensor_host(b->dv_buf, gdt, c->B, Hkv, c->Lk, Dv);
    if (c->blhd) {
        b->d_o = clattn_tensor_blhd(b->d_o);
        b->dq = clattn_tensor_blhd(b->dq);
        b->dk = clattn_tensor_blhd(b->dk);
        b->dv = clattn_tensor_blhd(b->dv);
    }
    if (with_dmask) {
        const clattn_tensor *m = b->opt.mask;
        b->nm = m->ne[0] * m->ne[1] * m->ne[2] * m->ne[3];
        b->dmask_buf = malloc((size_t)(b->nm + 1) * sizeof(float));
        assert_non_null(b->dmask_buf);
        memset(b->dmask_buf, 0xff, (size_t)b->nm * sizeof(float));
        b->dmask = clattn_tensor_host(b->dmask_buf, CLATTN_F32, m->ne[0], m->ne[1], m->ne[2], m->ne[3]);
    }
}

void bwd_data_free(bwd_data *b)
{
    attn_case_data_free(b->d);
    free(b->do_buf);
    free(b->dq_buf);
    free(b->dk_buf);
    free(b->dv_buf);
    free(b->dmask_buf);
}

clattn_status run_backward(clattn_context *ctx, bwd_data *b)
{
    return clattn_attention_backward(ctx, &b->q, &b->k, &b->v, &b->o, &b->d_o, &b->lse, &b->dq,
                                     &b->dk, &b->dv, b->dmask_buf ? &b->dmask : NULL, &b->opt,
                                     NULL);
}

/* Element (a0..a3) of a host tensor as double. */
static double get(const clattn_tensor *t, int64_t a0, int64_t a1, int64_t a2, int64_t a3)
{
    return clattn__host_get(t, a0, a1, a2, a3);
}

/* Compare one gradient tensor (4-D host descriptor) with dense reference values. */
static int compare(const char *name, const clattn_tensor *t, const double *ref, double a, double r,
                   double floor, const char *desc)
{
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    double m = floor;
    for (int64_t e = 0; e < n; e++) m = fmax(m, fabs(ref[e]));
    int bad = 0;
    double worst = 0.0;
    int64_t e = 0;
    for (int64_t i0 = 0; i0 < t->ne[0]; i0++)
        for (int64_t i1 = 0; i1 < t->ne[1]; i1++)
            for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
                for (int64_t i3 = 0; i3 < t->ne[3]; i3++, e++) {
                    const double g = get(t, i0, i1, i2, i3), x = ref[e];
                    const double err = fabs(g - x) / (a * m + r * fabs(x) + 1e-30);
                    const bool ok = x == 0.0 ? g == 0.0 : err <= 1.0;
                    if (!ok) {
                        if (bad < 3)
                            print_error("%s\n  %s[%lld,%lld,%lld,%lld] = %.7g, reference %.7g "
                                        "(max|ref| %.3g)\n",
                                        desc, name, (long long)i0, (long long)i1, (long long)i2,
                                        (long long)i3, g, x, m);
                        bad++;
                    }
                    if (err > worst && !isnan(err)) worst = err;
                }
    return bad;
}

static void tolerances(const attn_case *c, double *a, double *r)
{
    if (c->dtype == CLATTN_BF16 || c->out_dtype == CLATTN_BF16) *a = *r = 4e-2;
    else if (c->dtype == CLATTN_F16 || c->out_dtype == CLATTN_F16) *a = *r = 1e-2;
    else *a = *r = 1e-3;
}

/* Run the backward on b and compare with the reference; returns failing elements. */
int check_backward(clattn_context *ctx, bwd_data *b)
{
    char desc[512];
    attn_case_format(&b->c, desc, sizeof desc);
    clattn_status st = run_backward(ctx, b);
    if (st != CLATTN_SUCCESS) {
        print_error("%s\n  backward: %s: %s\n", desc, clattn_status_string(st),
                    clattn_context_last_error(ctx));
        return 1;
    }
    double *rq = malloc((size_t)(b->nq + 1) * sizeof(double));
    double *rk = malloc((size_t)(b->nk + 1) * sizeof(double));
    double *rv = malloc((size_t)(b->nv + 1) * sizeof(double));
    double *rm = b->dmask_buf ? malloc((size_t)(b->nm + 1) * sizeof(double)) : NULL;
    assert_true(rq && rk && rv && (!b->dmask_buf || rm));
    assert_int_equal(clattn_reference_attention_backward(&b->q, &b->k, &b->v, &b->d_o, &b->opt,
                                                         rq, rk, rv, rm),
                     CLATTN_SUCCESS);
    double a, r;
    tolerances(&b->c, &a, &r);
    int bad = compare("dq", &b->dq, rq, a, r, 0.0, desc) +
              compare("dk", &b->dk, rk, a, r, 0.0, desc) + compare("dv", &b->dv, rv, a, r, 0.0, desc);
    /* a mask broadcast over the keys has a zero gradient (softmax ignores a shift of its
     * row), which the device gets as rounding noise of sums of terms of size ~1: M is
     * at least 1e-2 for d_mask */
    if (rm) bad += compare("d_mask", &b->dmask, rm, a, r, 1e-2, desc);
    free(rq);
    free(rk);
    free(rv);
    free(rm);
    return bad;
}


int check_backward_cases(clattn_context *ctx, const attn_case *cases, size_t n, int with_dmask)
{
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        bwd_data b;
        bwd_data_make(&cases[i], with_dmask, &b);
        failed += check_backward(ctx, &b) != 0;
        bwd_data_free(&b);
    }
    return failed;
}
