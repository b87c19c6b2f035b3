/* clattn_attention_varlen: ragged sequences packed along L, each compared with the
 * float64 reference run on that sequence alone (SPEC §1 tolerances): query and key
 * lengths that differ per sequence, empty sequences and sequences with no keys, GQA,
 * both causal alignments, windows, softcap and ALiBi, f16 storage, LSE, both fused
 * kernel forms, cl_mem tensors; refused arguments leave the outputs untouched; and
 * `clattn run --varlen` against the same reference. The CPU and GPU forms run every
 * sequence in one launch: cases of many mixed lengths check that launch (and that it
 * is one). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support/npy.h"
#include "test_exe.h"
#include "test_util.h"
#include "tuning/tuning.h"
#include "core/faults.h"

static uint64_t rng_state;
static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(2.0 * ((double)(rng_state >> 11) / 9007199254740992.0) - 1.0);
}

static int close_to(double got, double want, double atol, double rtol)
{
    if (isinf(want) || isinf(got)) return got == want;
    return !isnan(got) && fabs(got - want) <= atol + rtol * fabs(want);
}

typedef struct vl_case {
    int64_t Hq, Hkv, D, Dv;
    size_t n;
    const int32_t *cu_q, *cu_k;
    clattn_dtype dtype; /* of q, k, v and o */
    clattn_causal causal;
    int64_t win_left, win_right;
    float softcap;
    int alibi;
} vl_case;

/* Packed data for c, stored in c->dtype; float copies for the reference. */
typedef struct vl_data {
    int64_t tq, tk;
    float *q, *k, *v;         /* values as stored (rounded to dtype) */
    void *sq, *sk, *sv, *so;  /* storage */
    float *lse, alibi[8];
    double *ref, *ref_lse;
} vl_data;

static void *store(const float *x, size_t n, clattn_dtype dt)
{
    if (dt == CLATTN_F32) {
        float *s = malloc(n * 4);
        memcpy(s, x, n * 4);
        return s;
    }
    uint16_t *s = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        s[i] = dt == CLATTN_BF16 ? clattn__float_to_bf16(x[i]) : clattn__float_to_half(x[i]);
    return s;
}

static double stored_get(const void *s, size_t i, clattn_dtype dt)
{
    if (dt == CLATTN_BF16) return clattn__bf16_to_float(((const uint16_t *)s)[i]);
    return dt == CLATTN_F32 ? ((const float *)s)[i] : clattn__half_to_float(((const uint16_t *)s)[i]);
}

static void data_create(const vl_case *c, vl_data *d)
{
    memset(d, 0, sizeof *d);
    d->tq = c->cu_q[c->n];
    d->tk = c->cu_k[c->n];
    const size_t nq = (size_t)(c->Hq * d->tq * c->D), nk = (size_t)(c->Hkv * d->tk * c->D),
                 nv = (size_t)(c->Hkv * d->tk * c->Dv), no = (size_t)(c->Hq * d->tq * c->Dv);
    d->q = malloc(nq * 4 + 4), d->k = malloc(nk * 4 + 4), d->v = malloc(nv * 4 + 4);
    for (size_t i = 0; i < nq; i++) d->q[i] = frand();
    for (size_t i = 0; i < nk; i++) d->k[i] = frand();
    for (size_t i = 0; i < nv; i++) d->v[i] = frand();
    d->sq = store(d->q, nq, c->dtype), d->sk = store(d->k, nk, c->dtype), d->sv = store(d->v, nv, c->dtype);
    for (size_t i = 0; i < nq; i++) d->q[i] = (float)stored_get(d->sq, i, c->dtype);
    for (size_t i = 0; i < nk; i++) d->k[i] = (float)stored_get(d->sk, i, c->dtype);
    for (size_t i = 0; i < nv; i++) d->v[i] = (float)stored_get(d->sv, i, c->dtype);
    d->so = malloc(no * clattn_dtype_size(c->dtype) + 4);
    d->lse = malloc((size_t)(c->Hq * d->tq) * 4 + 4);
    d->ref = malloc(no * 8 + 8), d->ref_lse = malloc((size_t)(c->Hq * d->tq) * 8 + 8);
    for (int64_t h = 0; h < c->Hq && h < 8; h++) d->alibi[h] = exp2f(-8.0f * (float)(h + 1) / (float)c->Hq);

    /* the reference: each sequence alone, [1, H, L, D] views of the packed floats */
    for (size_t s = 0; s < c->n; s++) {
        const int64_t q0 = c->cu_q[s], lq = c->cu_q[s + 1] - q0, k0 = c->cu_k[s],
                      lk = c->cu_k[s + 1] - k0;
        if (lq == 0) continue;
        clattn_tensor tq = clattn_tensor_host(d->q, CLATTN_F32, 1, c->Hq, d->tq, c->D);
        clattn_tensor tk = clattn_tensor_host(d->k, CLATTN_F32, 1, c->Hkv, d->tk, c->D);
        clattn_tensor tv = clattn_tensor_host(d->v, CLATTN_F32, 1, c->Hkv, d->tk, c->Dv);
        tq.offset = (size_t)(q0 * tq.nb[2]), tq.ne[2] = lq;
        tk.offset = (size_t)(k0 * tk.nb[2]), tk.ne[2] = lk;
        tv.offset = (size_t)(k0 * tv.nb[2]), tv.ne[2] = lk;
        clattn_tensor ta = clattn_tensor_host(d->alibi, CLATTN_F32, c->Hq, 1, 1, 1);
        clattn_options opt;
        clattn_options_init(&opt);
        opt.causal = c->causal, opt.window_left = c->win_left, opt.window_right = c->win_right;
        opt.softcap = c->softcap;
        if (c->alibi) opt.alibi = &ta;
        double *o = malloc((size_t)(c->Hq * lq * c->Dv) * 8), *l = malloc((size_t)(c->Hq * lq) * 8);
        assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, o, l), CLATTN_SUCCESS);
        for (int64_t h = 0; h < c->Hq; h++)
            for (int64_t i = 0; i < lq; i++) {
                d->ref_lse[h * d->tq + q0 + i] = l[h * lq + i];
                for (int64_t e = 0; e < c->Dv; e++)
                    d->ref[(h * d->tq + q0 + i) * c->Dv + e] = o[(h * lq + i) * c->Dv + e];
            }
        free(o), free(l);
    }
}

static void data_free(vl_data *d)
{
    free(d->q), free(d->k), free(d->v), free(d->sq), free(d->sk), free(d->sv), free(d->so);
    free(d->lse), free(d->ref), free(d->ref_lse);
}

/* Compare o (stored) and lse with the reference; returns the number of bad elements. */
static int compare(const vl_case *c, const vl_data *d, const void *o, const float *lse)
{
    double atol = c->dtype == CLATTN_F32 ? 2e-4 : 3e-3, rtol = c->dtype == CLATTN_F32 ? 2e-3 : 3e-3;
    if (c->dtype == CLATTN_BF16) atol = rtol = 1e-2; /* bf16 keeps 8 significant bits */
    int bad = 0;
    const size_t no = (size_t)(c->Hq * d->tq * c->Dv);
    for (size_t i = 0; i < no; i++) {
        const double got = stored_get(o, i, c->dtype);
        if (!close_to(got, d->ref[i], atol, rtol) && bad++ < 5)
            fprintf(stderr, "O[%zu] = %.7g, reference %.7g\n", i, got, d->ref[i]);
    }
    for (int64_t i = 0; lse && i < c->Hq * d->tq; i++)
        if (!close_to(lse[i], d->ref_lse[i], 1e-3, 1e-4) && bad++ < 10)
            fprintf(stderr, "LSE[%lld] = %.7g, reference %.7g\n", (long long)i, (double)lse[i], d->ref_lse[i]);
    return bad;
}

static clattn_options case_options(const vl_case *c, vl_data *d, clattn_tensor *ta)
{
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = c->causal, opt.window_left = c->win_left, opt.window_right = c->win_right;
    opt.softcap = c->softcap;
    *ta = clattn_tensor_host(d->alibi, CLATTN_F32, c->Hq, 1, 1, 1);
    if (c->alibi) opt.alibi = ta;
    return opt;
}

static void run_host(clattn_context *ctx, const vl_case *c)
{
    vl_data d;
    data_create(c, &d);
    clattn_tensor tq = clattn_tensor_host(d.sq, c->dtype, 1, c->Hq, d.tq, c->D);
    clattn_tensor tk = clattn_tensor_host(d.sk, c->dtype, 1, c->Hkv, d.tk, c->D);
    clattn_tensor tv = clattn_tensor_host(d.sv, c->dtype, 1, c->Hkv, d.tk, c->Dv);
    clattn_tensor to = clattn_tensor_host(d.so, c->dtype, 1, c->Hq, d.tq, c->Dv);
    clattn_tensor tl = clattn_tensor_host(d.lse, CLATTN_F32, 1, c->Hq, d.tq, 1), ta;
    clattn_options opt = case_options(c, &d, &ta);
    opt.lse = &tl;
    clattn_status st = clattn_attention_varlen(ctx, &tq, &tk, &tv, &to, c->n, c->cu_q, c->cu_k, &opt, NULL);
    if (st) fprintf(stderr, "varlen: %s\n", clattn_context_last_error(ctx));
    assert_int_equal(st, CLATTN_SUCCESS);
    assert_int_equal(clattn_context_last_path(ctx), CLATTN_PATH_FUSED);
    assert_int_equal(compare(c, &d, d.so, d.lse), 0);
    data_free(&d);
}

/* lengths 0..37 with different query and key counts, an empty sequence, one with no keys */
static const int32_t cu_q1[] = {0, 7, 7, 40, 41, 53};
static const int32_t cu_k1[] = {0, 19, 23, 60, 60, 97};

static void test_varlen_matches_each_sequence_alone(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    rng_state = 21;
    const vl_case cases[] = {
        {.Hq = 4, .Hkv = 2, .D = 16, .Dv = 16, .n = 5, .cu_q = cu_q1, .cu_k = cu_k1,
         .dtype = CLATTN_F32, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .win_left = -1, .win_right = -1},
        {.Hq = 4, .Hkv = 1, .D = 16, .Dv = 16, .n = 5, .cu_q = cu_q1, .cu_k = cu_k1,
         .dtype = CLATTN_F32, .causal = CLATTN_CAUSAL_TOP_LEFT, .win_left = 5, .win_right = 2},
    };
    /* both kernel forms of the fused path, whatever the device */
    for (int form = 0; form <= 1; form++) {
        clattn__tuning_force_form(CLATTN__TP_FUSED, form);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_host(ctx, &cases[i]);
    }
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
}

static void test_varlen_f16_softcap_alibi(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    rng_state = 22;
    static const int32_t cu[] = {0, 3, 30, 31, 50};
    const vl_case c = {.Hq = 2, .Hkv = 2, .D = 8, .Dv = 12, .n = 4, .cu_q = cu, .cu_k = cu,
                       .dtype = CLATTN_F16, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
                       .win_left = 6, .win_right = -1, .softcap = 2.0f, .alibi = 1};
    run_host(ctx, &c);
}

/* The packed f32 tensors of case c in one cl_mem buffer at byte offsets, after `lead`
 * bytes: q, k and v written from d, then o and lse (lse right after o). */
typedef struct vl_mem {
    cl_mem buf;
    cl_command_queue queue;
    clattn_tensor q, k, v, o, lse;
    size_t oo, bo, bl; /* o's offset and bytes, lse's bytes */
} vl_mem;

static void mem_create(clattn_context *ctx, const vl_case *c, const vl_data *d, size_t lead, vl_mem *m)
{
    const size_t bq = (size_t)(c->Hq * d->tq * c->D) * 4, bk = (size_t)(c->Hkv * d->tk * c->D) * 4;
    m->bo = (size_t)(c->Hq * d->tq * c->Dv) * 4;
    m->bl = (size_t)(c->Hq * d->tq) * 4;
    const size_t ok = lead + bq, ov = ok + bk;
    m->oo = ov + bk;
    cl_int e;
    m->buf = clCreateBuffer(clattn_context_cl_context(ctx), CL_MEM_READ_WRITE, m->oo + m->bo + m->bl, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    m->queue = clattn_context_cl_queue(ctx);
    clEnqueueWriteBuffer(m->queue, m->buf, CL_TRUE, lead, bq, d->sq, 0, NULL, NULL);
    clEnqueueWriteBuffer(m->queue, m->buf, CL_TRUE, ok, bk, d->sk, 0, NULL, NULL);
    clEnqueueWriteBuffer(m->queue, m->buf, CL_TRUE, ov, bk, d->sv, 0, NULL, NULL);
    m->q = clattn_tensor_cl(m->buf, lead, CLATTN_F32, 1, c->Hq, d->tq, c->D);
    m->k = clattn_tensor_cl(m->buf, ok, CLATTN_F32, 1, c->Hkv, d->tk, c->D);
    m->v = clattn_tensor_cl(m->buf, ov, CLATTN_F32, 1, c->Hkv, d->tk, c->Dv);
    m->o = clattn_tensor_cl(m->buf, m->oo, CLATTN_F32, 1, c->Hq, d->tq, c->Dv);
    m->lse = clattn_tensor_cl(m->buf, m->oo + m->bo, CLATTN_F32, 1, c->Hq, d->tq, 1);
}

/* A run of the cl_mem case: five sequences (cu_q1, cu_k1) in one buffer, its options
 * with LSE, and a sentinel pattern of O and LSE's bytes with room to read them back. */
typedef struct vl_mem_run {
    vl_case c;
    vl_data d;
    vl_mem m;
    clattn_tensor alibi;
    clattn_options opt;
    float *sentinel, *after;
} vl_mem_run;

static void mem_run_begin(clattn_context *ctx, uint64_t seed, size_t lead, vl_mem_run *r)
{
    rng_state = seed;
    const vl_case c = {.Hq = 4, .Hkv = 2, .D = 16, .Dv = 16, .n = 5, .cu_q = cu_q1, .cu_k = cu_k1,
                       .dtype = CLATTN_F32, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
                       .win_left = -1, .win_right = -1};
    r->c = c;
    data_create(&r->c, &r->d);
    mem_create(ctx, &r->c, &r->d, lead, &r->m);
    r->opt = case_options(&r->c, &r->d, &r->alibi);
    r->opt.lse = &r->m.lse;
    const size_t n = (r->m.bo + r->m.bl) / 4;
    r->sentinel = malloc(n * 4);
    r->after = malloc(n * 4);
    for (size_t i = 0; i < n; i++) r->sentinel[i] = 42.0f;
}

static void mem_run_end(vl_mem_run *r)
{
    free(r->sentinel), free(r->after);
    clReleaseMemObject(r->m.buf);
    data_free(&r->d);
}

/* cl_mem tensors at byte offsets inside one buffer; O committed in one launch */
static void test_varlen_cl_mem(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    vl_mem_run r;
    mem_run_begin(ctx, 23, 64, &r);
    /* a failed enqueue or allocation anywhere in the call leaves O and LSE as they were
     * (several sequences write them through scratch and one commit launch) */
    for (int kind = CLATTN__FAULT_ALLOC; kind <= CLATTN__FAULT_ENQUEUE; kind++)
        for (uint64_t nth = 1; nth <= 24; nth++) {
            clEnqueueWriteBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo, r.m.bo + r.m.bl, r.sentinel, 0, NULL, NULL);
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, nth);
            clattn_status fst = clattn_attention_varlen(ctx, &r.m.q, &r.m.k, &r.m.v, &r.m.o, r.c.n, r.c.cu_q,
                                                       r.c.cu_k, &r.opt, NULL);
            const bool fired = clattn__fault_fired(ctx) > 0;
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, 0);
            clEnqueueReadBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo, r.m.bo + r.m.bl, r.after, 0, NULL, NULL);
            if (fired) {
                assert_int_not_equal(fst, CLATTN_SUCCESS);
                assert_memory_equal(r.after, r.sentinel, r.m.bo + r.m.bl);
            } else {
                assert_int_equal(fst, CLATTN_SUCCESS);
            }
        }
    cl_event ev = NULL;
    clattn_status st = clattn_attention_varlen(ctx, &r.m.q, &r.m.k, &r.m.v, &r.m.o, r.c.n, r.c.cu_q,
                                                       r.c.cu_k, &r.opt, &ev);
    if (st) fprintf(stderr, "varlen: %s\n", clattn_context_last_error(ctx));
    assert_int_equal(st, CLATTN_SUCCESS);
    assert_non_null(ev);
    clWaitForEvents(1, &ev);
    clReleaseEvent(ev);
    clEnqueueReadBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo, r.m.bo, r.d.so, 0, NULL, NULL);
    clEnqueueReadBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo + r.m.bo, r.m.bl, r.d.lse, 0, NULL, NULL);
    assert_int_equal(compare(&r.c, &r.d, r.d.so, r.d.lse), 0);
    mem_run_end(&r);
}

/* cl_mem outputs under workspace bounds from the smallest up: where one launch cannot
 * hold the packed sequences, each sequence runs alone under varlen's shadow of O and LSE,
 * and where one sequence's heads do not fit either, the fused path splits them and must
 * write into that shadow (not shadow it again). Every bound either succeeds with the
 * reference's results or is refused for memory with O and LSE untouched. */
static void test_varlen_cl_mem_small_workspace(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    vl_mem_run r;
    mem_run_begin(ctx, 29, 128, &r);
    int64_t saved = 0;
    assert_int_equal(clattn_context_get_param(ctx, CLATTN_PARAM_WORKSPACE_BYTES, &saved), CLATTN_SUCCESS);
    /* the bound is restored before any check fails, so later tests see the default */
    int succeeded = 0, wrong = 0;
    for (int64_t w = 4096; w <= ((int64_t)1 << 20) && !wrong; w *= 2) {
        assert_int_equal(clattn_context_set_param(ctx, CLATTN_PARAM_WORKSPACE_BYTES, w), CLATTN_SUCCESS);
        clEnqueueWriteBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo, r.m.bo + r.m.bl, r.sentinel, 0, NULL, NULL);
        const clattn_status st = clattn_attention_varlen(ctx, &r.m.q, &r.m.k, &r.m.v, &r.m.o, r.c.n, r.c.cu_q,
                                                       r.c.cu_k, &r.opt, NULL);
        clFinish(r.m.queue);
        if (st != CLATTN_SUCCESS) {
            clEnqueueReadBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo, r.m.bo + r.m.bl, r.after, 0, NULL, NULL);
            if (st != CLATTN_ERROR_OUT_OF_MEMORY || memcmp(r.after, r.sentinel, r.m.bo + r.m.bl) != 0) {
                fprintf(stderr, "workspace %lld: %s\n", (long long)w, clattn_context_last_error(ctx));
                wrong++;
            }
            continue;
        }
        succeeded++;
        clEnqueueReadBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo, r.m.bo, r.d.so, 0, NULL, NULL);
        clEnqueueReadBuffer(r.m.queue, r.m.buf, CL_TRUE, r.m.oo + r.m.bo, r.m.bl, r.d.lse, 0, NULL, NULL);
        if (compare(&r.c, &r.d, r.d.so, r.d.lse) != 0) {
            fprintf(stderr, "workspace %lld: results differ from the reference\n", (long long)w);
            wrong++;
        }
    }
    assert_int_equal(clattn_context_set_param(ctx, CLATTN_PARAM_WORKSPACE_BYTES, saved), CLATTN_SUCCESS);
    assert_int_equal(wrong, 0);
    assert_true(succeeded > 0);
    mem_run_end(&r);
}

/* Many sequences of mixed lengths (0, 1, one tile, several tiles, more keys than queries
 * and fewer), keys with none for some, for the one-launch cases below. */
static const int32_t cu_q2[] = {0, 1, 1, 70, 71, 71, 200, 203, 203, 267, 268, 400};
static const int32_t cu_k2[] = {0, 1, 9, 79, 79, 79, 150, 290, 291, 355, 356, 488};

/* Enqueues of the one launch by kernel form: the CPU form's K and V copies and main
 * kernel, the GPU form's kernel; and allocations with cl_mem tensors and V read in place:
 * the table of sequences, and the CPU form's K copy. */
static const uint64_t one_launch_enqueues[2] = {2, 1}, one_launch_allocs[2] = {2, 1};

/* Run c on both kernel forms that run packed sequences in one launch, with host
 * tensors: every sequence in one launch, and each matches the reference. */
static void run_one_launch(clattn_context *ctx, const vl_case *c)
{
    for (int form = 0; form <= 1; form++) {
        clattn__tuning_force_form(CLATTN__TP_FUSED, form);
        clattn__fault_arm(ctx, CLATTN__FAULT_ENQUEUE, 0); /* zero the counts */
        run_host(ctx, c);
        assert_int_equal(clattn__fault_sites(ctx, CLATTN__FAULT_ENQUEUE), one_launch_enqueues[form]);
    }
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
}

static void test_varlen_one_launch(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    rng_state = 25;
    const vl_case base = {.Hq = 4, .Hkv = 2, .D = 16, .Dv = 16, .n = 11, .cu_q = cu_q2,
                          .cu_k = cu_k2, .dtype = CLATTN_F32, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
                          .win_left = -1, .win_right = -1};
    vl_case c = base; /* causal bottom-right, V read in place (f32, Dv % 16 == 0) */
    run_one_launch(ctx, &c);
    c.causal = CLATTN_CAUSAL_TOP_LEFT, c.Hkv = 1, c.Dv = 24; /* MQA, V packed */
    run_one_launch(ctx, &c);
    c = base; /* windows both sides, no causal mask; Hq = Hkv */
    c.causal = CLATTN_CAUSAL_NONE, c.Hkv = 4, c.win_left = 9, c.win_right = 3;
    run_one_launch(ctx, &c);
    c = base; /* ALiBi positions and softcap per sequence, D not a multiple of 16 */
    c.D = 40, c.Dv = 8, c.softcap = 3.0f, c.alibi = 1, c.win_left = 30;
    run_one_launch(ctx, &c);
    c = base;
    c.dtype = CLATTN_F16, c.Hq = 8, c.causal = CLATTN_CAUSAL_TOP_LEFT;
    run_one_launch(ctx, &c);
    c.dtype = CLATTN_BF16, c.causal = CLATTN_CAUSAL_BOTTOM_RIGHT, c.alibi = 1;
    run_one_launch(ctx, &c);
}

/* cl_mem outputs and the one launch on kernel form `form`: a fault at the copies' or the
 * main kernel's enqueue, or at an allocation, fails the call and leaves O and LSE as they
 * were. */
static void one_launch_fault(clattn_context *ctx, int form)
{
    rng_state = 26;
    const vl_case c = {.Hq = 4, .Hkv = 2, .D = 16, .Dv = 16, .n = 11, .cu_q = cu_q2,
                       .cu_k = cu_k2, .dtype = CLATTN_F32, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
                       .win_left = 20, .win_right = -1};
    clattn__tuning_force_form(CLATTN__TP_FUSED, form);
    vl_data d;
    data_create(&c, &d);
    const size_t bq = (size_t)(c.Hq * d.tq * c.D) * 4, bk = (size_t)(c.Hkv * d.tk * c.D) * 4,
                 bo = (size_t)(c.Hq * d.tq * c.Dv) * 4, bl = (size_t)(c.Hq * d.tq) * 4;
    cl_context clctx = clattn_context_cl_context(ctx);
    cl_command_queue queue = clattn_context_cl_queue(ctx);
    cl_int e;
    cl_mem mq = clCreateBuffer(clctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bq, d.sq, &e);
    cl_mem mk = clCreateBuffer(clctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bk, d.sk, &e);
    cl_mem mv = clCreateBuffer(clctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bk, d.sv, &e);
    cl_mem mo = clCreateBuffer(clctx, CL_MEM_READ_WRITE, bo, NULL, &e);
    cl_mem ml = clCreateBuffer(clctx, CL_MEM_READ_WRITE, bl, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    clattn_tensor tq = clattn_tensor_cl(mq, 0, CLATTN_F32, 1, c.Hq, d.tq, c.D);
    clattn_tensor tk = clattn_tensor_cl(mk, 0, CLATTN_F32, 1, c.Hkv, d.tk, c.D);
    clattn_tensor tv = clattn_tensor_cl(mv, 0, CLATTN_F32, 1, c.Hkv, d.tk, c.Dv);
    clattn_tensor to = clattn_tensor_cl(mo, 0, CLATTN_F32, 1, c.Hq, d.tq, c.Dv);
    clattn_tensor tl = clattn_tensor_cl(ml, 0, CLATTN_F32, 1, c.Hq, d.tq, 1), ta;
    clattn_options opt = case_options(&c, &d, &ta);
    opt.lse = &tl;
    float *sentinel = malloc(bo), *after = malloc(bo);
    for (size_t i = 0; i < bo / 4; i++) sentinel[i] = 42.0f;
    struct {
        clattn__fault_kind kind;
        uint64_t nth;
    } faults[] = {{CLATTN__FAULT_ENQUEUE, 1}, {CLATTN__FAULT_ENQUEUE, 2}, {CLATTN__FAULT_ALLOC, 1},
                  {CLATTN__FAULT_ALLOC, 2}};
    for (size_t f = 0; f < sizeof faults / sizeof faults[0]; f++) {
        if (faults[f].nth > (faults[f].kind == CLATTN__FAULT_ENQUEUE ? one_launch_enqueues
                                                                     : one_launch_allocs)[form])
            continue;
        clEnqueueWriteBuffer(queue, mo, CL_TRUE, 0, bo, sentinel, 0, NULL, NULL);
        clEnqueueWriteBuffer(queue, ml, CL_TRUE, 0, bl, sentinel, 0, NULL, NULL);
        clattn__fault_arm(ctx, faults[f].kind, faults[f].nth);
        clattn_status st = clattn_attention_varlen(ctx, &tq, &tk, &tv, &to, c.n, c.cu_q, c.cu_k, &opt, NULL);
        assert_int_equal(clattn__fault_fired(ctx), 1);
        clattn__fault_arm(ctx, faults[f].kind, 0);
        assert_int_not_equal(st, CLATTN_SUCCESS);
        clEnqueueReadBuffer(queue, mo, CL_TRUE, 0, bo, after, 0, NULL, NULL);
        assert_memory_equal(after, sentinel, bo);
        clEnqueueReadBuffer(queue, ml, CL_TRUE, 0, bl, after, 0, NULL, NULL);
        assert_memory_equal(after, sentinel, bl);
    }
    clattn__fault_arm(ctx, CLATTN__FAULT_ENQUEUE, 0);
    clattn_status st = clattn_attention_varlen(ctx, &tq, &tk, &tv, &to, c.n, c.cu_q, c.cu_k, &opt, NULL);
    assert_int_equal(st, CLATTN_SUCCESS);
    /* no commit launch */
    assert_int_equal(clattn__fault_sites(ctx, CLATTN__FAULT_ENQUEUE), one_launch_enqueues[form]);
    clEnqueueReadBuffer(queue, mo, CL_TRUE, 0, bo, d.so, 0, NULL, NULL);
    clEnqueueReadBuffer(queue, ml, CL_TRUE, 0, bl, d.lse, 0, NULL, NULL);
    assert_int_equal(compare(&c, &d, d.so, d.lse), 0);
    clReleaseMemObject(mq), clReleaseMemObject(mk), clReleaseMemObject(mv);
    clReleaseMemObject(mo), clReleaseMemObject(ml);
    free(sentinel), free(after);
    data_free(&d);
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
}

static void test_varlen_one_launch_fault(void **state)
{
    (void)state;
    for (int form = 0; form <= 1; form++) one_launch_fault(test_shared_context(), form);
}

static void test_varlen_refuses_bad_arguments(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    enum { H = 2, T = 6, D = 4 };
    float q[H * T * D] = {0}, o[2 * H * T * D];
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) o[i] = 42.0f;
    static const int32_t good[] = {0, 2, 6}, bad_start[] = {1, 2, 6}, down[] = {0, 4, 3},
                         short_end[] = {0, 2, 5};
    unsigned char m[T * T] = {1};
    int32_t lens[1] = {1};
    struct {
        const char *what;
        clattn_status want;
    } cases[] = {{"options.mask is not supported", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"options.kv_lens is not supported", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"cu_seqlens_q[0] = 1", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"cu_seqlens_k must not decrease", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"cu_seqlens_q[2] = 5 must equal the packed query count 6", CLATTN_ERROR_INVALID_SHAPE},
                 {"packed as [1, H, total, D]; batch is 2", CLATTN_ERROR_INVALID_SHAPE},
                 {"path 'unfused' cannot run packed sequences", CLATTN_ERROR_PATH_UNSUPPORTED},
                 {"cu_seqlens_k is NULL", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"n_seqs is 0", CLATTN_ERROR_INVALID_ARGUMENT}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, H, T, D), tk = tq, tv = tq;
        clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, H, T, D);
        clattn_tensor tm = clattn_tensor_host(m, CLATTN_BOOL, 1, 1, T, T);
        clattn_tensor tlen = clattn_tensor_host(lens, CLATTN_I32, 1, 1, 1, 1);
        clattn_options opt;
        clattn_options_init(&opt);
        const int32_t *cq = good, *ck = good;
        size_t n = 2;
        switch (c) {
        case 0: opt.mask = &tm; break;
        case 1: opt.kv_lens = &tlen; break;
        case 2: cq = bad_start; break;
        case 3: ck = down; break;
        case 4: cq = short_end; break;
        case 5:
            tq = clattn_tensor_host(q, CLATTN_F32, 2, H, T / 2, D), tk = tv = tq;
            to = clattn_tensor_host(o, CLATTN_F32, 2, H, T / 2, D);
            break;
        case 6: opt.path = CLATTN_PATH_UNFUSED; break;
        case 7: ck = NULL; break;
        case 8: n = 0; break;
        }
        clattn_status st = clattn_attention_varlen(ctx, &tq, &tk, &tv, &to, n, cq, ck, &opt, NULL);
        const char *msg = clattn_context_last_error(ctx);
        if (st != cases[c].want || !strstr(msg, cases[c].what))
            fprintf(stderr, "case %zu: %s, '%s', expected '%s'\n", c, clattn_status_string(st), msg,
                    cases[c].what);
        assert_int_equal(st, cases[c].want);
        assert_non_null(strstr(msg, cases[c].what));
    }
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) assert_true(o[i] == 42.0f);
}

/* `clattn run --varlen CU.npy` on packed .npy files equals each sequence alone. */
static void test_cli_varlen(void **state)
{
    (void)state;
    rng_state = 24;
    static const int32_t cu[] = {0, 5, 5, 22, 30};
    const vl_case c = {.Hq = 2, .Hkv = 1, .D = 8, .Dv = 8, .n = 4, .cu_q = cu, .cu_k = cu,
                       .dtype = CLATTN_F32, .causal = CLATTN_CAUSAL_TOP_LEFT,
                       .win_left = -1, .win_right = -1};
    vl_data d;
    data_create(&c, &d);
    char dir[] = "/tmp/clattn_varlen_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pq[64], pk[64], pv[64], pcu[64], po[64], pl[64];
    snprintf(pq, sizeof pq, "%s/q.npy", dir), snprintf(pk, sizeof pk, "%s/k.npy", dir);
    snprintf(pv, sizeof pv, "%s/v.npy", dir), snprintf(pcu, sizeof pcu, "%s/cu.npy", dir);
    snprintf(po, sizeof po, "%s/o.npy", dir), snprintf(pl, sizeof pl, "%s/lse.npy", dir);
    const int64_t sq[4] = {1, c.Hq, d.tq, c.D}, sk[4] = {1, c.Hkv, d.tk, c.D}, scu[1] = {5};
    char err[256];
    assert_int_equal(npy_write(pq, CLATTN_F32, 4, sq, d.q, CLATTN_F32, err, sizeof err), 0);
    assert_int_equal(npy_write(pk, CLATTN_F32, 4, sk, d.k, CLATTN_F32, err, sizeof err), 0);
    assert_int_equal(npy_write(pv, CLATTN_F32, 4, sk, d.v, CLATTN_F32, err, sizeof err), 0);
    assert_int_equal(npy_write(pcu, CLATTN_I32, 1, scu, cu, CLATTN_I32, err, sizeof err), 0);
    test_exe_result r;
    const char *args[] = {"run", "--q", pq, "--k", pk, "--v", pv, "--out", po, "--lse", pl,
                          "--varlen", pcu, "--causal", "top-left", NULL};
    test_run_clattn(dir, &r, args);
    if (r.status) fprintf(stderr, "clattn run: %s%s\n", r.out, r.err);
    assert_int_equal(r.status, 0);
    npy_array ao, al;
    assert_int_equal(npy_read(po, &ao, err, sizeof err), 0);
    assert_int_equal(npy_read(pl, &al, err, sizeof err), 0);
    assert_int_equal(compare(&c, &d, ao.data, (const float *)al.data), 0);
    npy_free(&ao), npy_free(&al);

    /* a cu file that does not end at the packed length is refused, and says so */
    static const int32_t cu_bad[] = {0, 5, 29};
    const int64_t sbad[1] = {3};
    assert_int_equal(npy_write(pcu, CLATTN_I32, 1, sbad, cu_bad, CLATTN_I32, err, sizeof err), 0);
    test_run_clattn(dir, &r, args);
    assert_int_not_equal(r.status, 0);
    assert_non_null(strstr(r.err, "cu_seqlens"));
    unlink(pq), unlink(pk), unlink(pv), unlink(pcu), unlink(po), unlink(pl);
    rmdir(dir);
    data_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_varlen_matches_each_sequence_alone),
        cmocka_unit_test(test_varlen_f16_softcap_alibi),
        cmocka_unit_test(test_varlen_cl_mem),
        cmocka_unit_test(test_varlen_cl_mem_small_workspace),
        cmocka_unit_test(test_varlen_one_launch),
        cmocka_unit_test(test_varlen_one_launch_fault),
        cmocka_unit_test(test_varlen_refuses_bad_arguments),
        cmocka_unit_test(test_cli_varlen),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
