/* clattn_attention_backward on the default device against the float64 backward reference
 * (itself checked by finite differences in test_reference_backward): every SPEC §1
 * option, GQA, Dv != D, storage types, layouts, fully masked rows, the float mask's
 * gradient, random cases; bit-identical results from run to run and between host and
 * cl_mem tensors; bad input refused with every output untouched.
 *
 * O and LSE come from the float64 forward reference (rounded to their storage), so these
 * tests build only backward kernels; one test runs the device forward first, as a user
 * would. Tolerance per gradient tensor G, with M = max|ref| over G:
 *     |g - ref| <= a·M + r·|ref|,  f32: a = r = 1e-3;  f16 anywhere: a = r = 1e-2;
 *     bf16 anywhere: a = r = 4e-2   (for d_mask, M is at least 1e-2)
 * (the device rounds O, dO and the gradients to their storage; elements the reference
 * has exactly 0, e.g. rows or keys nothing attends, must be exactly 0). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward/backward.h" /* clattn__backward_force_form */
#include "test_backward_util.h"
#include "core/faults.h"

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv

static void run_cases(const attn_case *cases, size_t n, int with_dmask)
{
    const int failed = check_backward_cases(test_shared_context(), cases, n, with_dmask);
    if (failed) fail_msg("%d of %zu cases differ from the reference", failed, n);
}

#define TL .causal = CLATTN_CAUSAL_TOP_LEFT
#define BR .causal = CLATTN_CAUSAL_BOTTOM_RIGHT
#define WIN(l, r) .window = 1, .win_left = l, .win_right = r

/* One kernel build per form (D = 64, f32, no per-score features): shapes, heads, every
 * exclusion by position, layouts. */
static void test_backward_matches_reference_on_positions_heads_and_layouts(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {SHAPE(1, 2, 2, 17, 33, 64, 64), .seed = 1},
        {SHAPE(2, 8, 2, 19, 41, 64, 64), .seed = 2},                  /* GQA */
        {SHAPE(1, 4, 1, 40, 21, 64, 64), .seed = 3},                  /* MQA, Lq > Lk */
        {SHAPE(1, 2, 2, 37, 37, 64, 64), TL, .seed = 4},
        {SHAPE(1, 2, 2, 50, 13, 64, 64), TL, .seed = 5},
        {SHAPE(1, 2, 1, 50, 13, 64, 64), BR, .seed = 6},              /* fully masked rows */
        {SHAPE(1, 2, 2, 13, 50, 64, 64), BR, .seed = 7},
        {SHAPE(1, 2, 2, 41, 47, 64, 64), WIN(3, 2), .seed = 8},
        {SHAPE(1, 2, 2, 64, 128, 64, 64), BR, WIN(16, -1), .seed = 9},
        {SHAPE(4, 2, 2, 9, 45, 64, 64), .kv_lens = 1, BR, .seed = 10}, /* a batch of 0 keys */
        {SHAPE(2, 4, 2, 19, 33, 64, 64), .blhd = 1, .seed = 11},
        {SHAPE(2, 2, 2, 19, 33, 64, 64), .padded = 2, .seed = 12},
        {SHAPE(1, 1, 1, 1, 1, 64, 64), .seed = 13},
        {SHAPE(1, 2, 2, 0, 9, 64, 64), .seed = 14},                   /* no queries: dK = dV = 0 */
        {SHAPE(1, 2, 2, 5, 0, 64, 64), .seed = 15},                   /* no keys: dQ = 0 */
    };
    /* both kernel forms, CPU (0) and GPU (1), whatever the device */
    for (int form = 0; form <= 1; form++) {
        clattn__backward_force_form = form;
        run_cases(cases, sizeof cases / sizeof cases[0], 0);
    }
    clattn__backward_force_form = -1;
}

static void test_backward_matches_reference_with_masks_softcap_alibi(void **state)
{
    (void)state;
    const attn_case bool_cases[] = {
        {SHAPE(2, 4, 2, 23, 31, 32, 32), .mask_kind = ATTN_MASK_BOOL, .mask_rank = 4,
         .mask_ones = 1u | 4u, .seed = 20},
        {SHAPE(1, 2, 2, 23, 31, 32, 32), .mask_kind = ATTN_MASK_BOOL, .mask_rank = 2, TL, .seed = 21},
    };
    run_cases(bool_cases, sizeof bool_cases / sizeof bool_cases[0], 0);
    const attn_case transform_cases[] = {
        {SHAPE(1, 4, 2, 23, 41, 32, 32), .scale = 0.8f, .softcap = 5.0f, .alibi = 1, .seed = 22},
        {SHAPE(2, 4, 2, 20, 60, 32, 32), .softcap = 1.0f, .alibi = 1, BR, .seed = 23},
    };
    run_cases(transform_cases, sizeof transform_cases / sizeof transform_cases[0], 0);
}

/* Float masks with their gradient, broadcast over B, Hq, Lq or Lk; Dv != D. */
static void test_backward_float_mask_gradient_is_reduced_over_broadcast(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {SHAPE(2, 2, 2, 19, 37, 32, 48), .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 4, .seed = 30},
        {SHAPE(2, 4, 2, 19, 37, 32, 48), .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 3,
         .mask_ones = 2u, .seed = 31},
        {SHAPE(2, 4, 4, 19, 37, 32, 48), .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 4,
         .mask_ones = 1u | 4u, BR, .seed = 32},
        {SHAPE(2, 2, 1, 19, 37, 32, 48), .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 2,
         .mask_ones = 8u, .seed = 33},
    };
    run_cases(cases, sizeof cases / sizeof cases[0], 1);
}

/* Storage types, and head sizes whose tiles shrink to fit 32 KiB of local memory. */
static void test_backward_matches_reference_on_dtypes_and_head_sizes(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {SHAPE(1, 2, 2, 37, 53, 64, 64), .dtype = CLATTN_F16, .out_dtype = CLATTN_F16, BR, .seed = 40},
        {SHAPE(1, 4, 2, 37, 53, 64, 64), .dtype = CLATTN_BF16, .out_dtype = CLATTN_BF16, .seed = 41},
        {SHAPE(1, 2, 2, 33, 65, 256, 256), TL, .seed = 42},
        {SHAPE(1, 2, 2, 13, 29, 3, 3), .seed = 43},
    };
    run_cases(cases, sizeof cases / sizeof cases[0], 0);
}

static void test_backward_matches_reference_on_random_cases(void **state)
{
    (void)state;
    const size_t n = test_case_count(3);
    attn_case *cases = calloc(n, sizeof *cases);
    assert_non_null(cases);
    for (size_t i = 0; i < n; i++) attn_case_random(9100 + i, &cases[i]);
    run_cases(cases, n, 0);
    free(cases);
}

/* Two runs give bit-identical gradients; so do host tensors and cl_mem tensors (through
 * the commit of scratch copies); the event completes when they are written. O and LSE
 * here come from the device's own forward pass, as a training step would get them. */
static void deterministic_and_same_on_cl_mem(const attn_case *c)
{
    clattn_context *ctx = test_shared_context();
    bwd_data b;
    bwd_data_make(c, 0, &b);
    attn_case fc = b.c;
    assert_int_equal(attn_case_run(ctx, &fc, b.d, NULL), CLATTN_SUCCESS); /* device O, LSE */
    assert_int_equal(check_backward(ctx, &b), 0);
    const size_t bq = grad_bytes(b.nq, CLATTN_F32), bk = grad_bytes(b.nk, CLATTN_F32),
                 bv = grad_bytes(b.nv, CLATTN_F32);
    void *q1 = malloc(bq), *k1 = malloc(bk), *v1 = malloc(bv);
    assert_true(q1 && k1 && v1);
    memcpy(q1, b.dq_buf, bq);
    memcpy(k1, b.dk_buf, bk);
    memcpy(v1, b.dv_buf, bv);
    memset(b.dq_buf, 0, bq);
    assert_int_equal(run_backward(ctx, &b), CLATTN_SUCCESS);
    assert_memory_equal(q1, b.dq_buf, bq);
    assert_memory_equal(k1, b.dk_buf, bk);
    assert_memory_equal(v1, b.dv_buf, bv);

    /* cl_mem gradients at byte offsets inside one buffer, with dO on the device: offsets
     * of 16-byte multiples (the commit copies 16 bytes per work-item), then of 4 (2) */
    cl_context clc = clattn_context_cl_context(ctx);
    cl_command_queue queue = clattn_context_cl_queue(ctx);
    const size_t bo = grad_bytes(b.no, CLATTN_F32);
    for (int pass = 0; pass < 2; pass++) {
        const size_t gap = pass ? 260 : 256;
        const size_t off_q = gap, off_k = off_q + bq + gap, off_v = off_k + bk + gap,
                     off_do = off_v + bv + gap, total = off_do + bo;
        cl_int err;
        cl_mem buf = clCreateBuffer(clc, CL_MEM_READ_WRITE, total, NULL, &err);
        assert_int_equal(err, CL_SUCCESS);
        unsigned char *host = malloc(total);
        assert_non_null(host);
        memset(host, 0x5a, total);
        memcpy(host + off_do, b.do_buf, bo);
        assert_int_equal(clEnqueueWriteBuffer(queue, buf, CL_TRUE, 0, total, host, 0, NULL, NULL), CL_SUCCESS);
        clattn_tensor dq = b.dq, dk = b.dk, dv = b.dv, d_o = b.d_o;
        dq.host = dk.host = dv.host = d_o.host = NULL;
        dq.buffer = dk.buffer = dv.buffer = d_o.buffer = buf;
        dq.offset = off_q;
        dk.offset = off_k;
        dv.offset = off_v;
        d_o.offset = off_do;
        cl_event ev = NULL;
        assert_int_equal(clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &d_o, &b.lse, &dq, &dk,
                                                   &dv, NULL, &b.opt, &ev),
                         CLATTN_SUCCESS);
        assert_non_null(ev);
        assert_int_equal(clWaitForEvents(1, &ev), CL_SUCCESS);
        clReleaseEvent(ev);
        unsigned char *back = malloc(total);
        assert_non_null(back);
        assert_int_equal(clEnqueueReadBuffer(queue, buf, CL_TRUE, 0, total, back, 0, NULL, NULL), CL_SUCCESS);
        assert_memory_equal(q1, back + off_q, bq);
        assert_memory_equal(k1, back + off_k, bk);
        assert_memory_equal(v1, back + off_v, bv);
        /* around and between them: untouched */
        for (size_t i = 0; i < off_q; i++) assert_int_equal(back[i], 0x5a);
        for (size_t i = off_q + bq; i < off_k; i++) assert_int_equal(back[i], 0x5a);
        for (size_t i = off_k + bk; i < off_v; i++) assert_int_equal(back[i], 0x5a);
        clReleaseMemObject(buf);
        free(host);
        free(back);
    }
    free(q1);
    free(k1);
    free(v1);
    bwd_data_free(&b);
}

static void test_backward_is_deterministic_and_same_on_cl_mem(void **state)
{
    (void)state;
    /* on a CPU device: key splits with partial dQ and a commit of scratch copies; then
     * one split, where the CPU form writes cl_mem outputs in place */
    const attn_case cases[] = {{SHAPE(1, 4, 2, 45, 70, 64, 64), BR, .seed = 50},
                               {SHAPE(2, 4, 4, 45, 60, 64, 64), BR, .seed = 51}};
    for (int i = 0; i < 2; i++) deterministic_and_same_on_cl_mem(&cases[i]);
}

/* Bad input is refused with a message, and no output changes. */
static void test_backward_refuses_bad_input_and_writes_nothing(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    const attn_case c = {SHAPE(1, 2, 2, 9, 11, 64, 64), .mask_kind = ATTN_MASK_BOOL,
                         .mask_rank = 2, .seed = 60};
    bwd_data b;
    bwd_data_make(&c, 0, &b);
    const size_t bq = grad_bytes(b.nq, CLATTN_F32), bk = grad_bytes(b.nk, CLATTN_F32),
                 bv = grad_bytes(b.nv, CLATTN_F32);
    unsigned char *sentinel = malloc(bq + bk + bv);
    assert_non_null(sentinel);
    memset(sentinel, 0xff, bq + bk + bv);
#define UNTOUCHED()                                                                        \
    do {                                                                                   \
        assert_memory_equal(b.dq_buf, sentinel, bq);                                       \
        assert_memory_equal(b.dk_buf, sentinel, bk);                                       \
        assert_memory_equal(b.dv_buf, sentinel, bv);                                       \
    } while (0)
    clattn_status st;
    /* dO of the wrong shape */
    clattn_tensor bad_do = clattn_tensor_host(b.do_buf, CLATTN_F32, 1, 2, 8, 64);
    st = clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &bad_do, &b.lse, &b.dq, &b.dk,
                                   &b.dv, NULL, &b.opt, NULL);
    assert_int_equal(st, CLATTN_ERROR_INVALID_SHAPE);
    assert_non_null(strstr(clattn_context_last_error(ctx), "d_o"));
    UNTOUCHED();
    /* missing LSE */
    st = clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &b.d_o, NULL, &b.dq, &b.dk, &b.dv,
                                   NULL, &b.opt, NULL);
    assert_int_equal(st, CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(ctx), "lse"));
    UNTOUCHED();
    /* LSE of the wrong shape */
    clattn_tensor bad_lse = b.lse;
    bad_lse.ne[2] = 8;
    st = clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &b.d_o, &bad_lse, &b.dq, &b.dk,
                                   &b.dv, NULL, &b.opt, NULL);
    assert_int_equal(st, CLATTN_ERROR_INVALID_SHAPE);
    assert_non_null(strstr(clattn_context_last_error(ctx), "lse"));
    UNTOUCHED();
    /* dk of the wrong shape; dv overlapping dk; dq overlapping an input */
    clattn_tensor bad_dk = b.dk;
    bad_dk.ne[2] = 10;
    st = clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &b.d_o, &b.lse, &b.dq, &bad_dk,
                                   &b.dv, NULL, &b.opt, NULL);
    assert_int_equal(st, CLATTN_ERROR_INVALID_SHAPE);
    UNTOUCHED();
    st = clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &b.d_o, &b.lse, &b.dq, &b.dk,
                                   &b.dk, NULL, &b.opt, NULL);
    assert_int_equal(st, CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(ctx), "overlap"));
    UNTOUCHED();
    clattn_tensor dq_on_do = b.dq;
    dq_on_do.host = b.do_buf;
    st = clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &b.d_o, &b.lse, &dq_on_do, &b.dk,
                                   &b.dv, NULL, &b.opt, NULL);
    assert_int_equal(st, CLATTN_ERROR_INVALID_ARGUMENT);
    UNTOUCHED();
    /* a mask gradient for a boolean mask */
    float dm[9 * 11];
    clattn_tensor tdm = clattn_tensor_host(dm, CLATTN_F32, 1, 1, 9, 11);
    st = clattn_attention_backward(ctx, &b.q, &b.k, &b.v, &b.o, &b.d_o, &b.lse, &b.dq, &b.dk,
                                   &b.dv, &tdm, &b.opt, NULL);
    assert_int_equal(st, CLATTN_ERROR_INVALID_ARGUMENT);
    UNTOUCHED();
    /* a failing device (the first allocation, the second read-back) leaves the outputs as
     * they were too, with the fused path forced (auto mode would fall back to the
     * unfused form: test_backward_fallback) */
    b.opt.path = CLATTN_PATH_FUSED;
    clattn__fault_arm(ctx, CLATTN__FAULT_ALLOC, 1);
    st = run_backward(ctx, &b);
    assert_int_not_equal(st, CLATTN_SUCCESS);
    UNTOUCHED();
    clattn__fault_arm(ctx, CLATTN__FAULT_MAP, 2);
    st = run_backward(ctx, &b);
    assert_int_not_equal(st, CLATTN_SUCCESS);
    UNTOUCHED();
    clattn__fault_arm(ctx, CLATTN__FAULT_ALLOC, 0);
    clattn__fault_arm(ctx, CLATTN__FAULT_MAP, 0);
    /* and then the same call works */
    assert_int_equal(check_backward(ctx, &b), 0);
    b.opt.path = CLATTN_PATH_AUTO;
#undef UNTOUCHED
    free(sentinel);
    bwd_data_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backward_matches_reference_on_positions_heads_and_layouts),
        cmocka_unit_test(test_backward_matches_reference_with_masks_softcap_alibi),
        cmocka_unit_test(test_backward_float_mask_gradient_is_reduced_over_broadcast),
        cmocka_unit_test(test_backward_matches_reference_on_dtypes_and_head_sizes),
        cmocka_unit_test(test_backward_matches_reference_on_random_cases),
        cmocka_unit_test(test_backward_is_deterministic_and_same_on_cl_mem),
        cmocka_unit_test(test_backward_refuses_bad_input_and_writes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
