/* The unfused path (src/paths/unfused.c) forced on the default device and compared with the
 * float64 CPU reference: every SPEC §1 rule (the shared suite), random cases over every
 * option, shape, dtype and layout, device tensors, workspaces small enough to split one
 * head's queries into many chunks, and problems with no keys or no queries. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* masks (bool, float, ranks 2-4, broadcast), causal both ways with Lq != Lk, windows,
 * kv_lens with 0, softcap, ALiBi, scale, GQA/MQA, Dv != D, D in {1, 3, 72, 80, 96, 256},
 * Lq = 1, Lk = 1, f16/bf16 in and out, BLHD and padded views, fully masked rows */
static void test_unfused_matches_reference_on_every_spec_rule(void **state)
{
    (void)state;
    size_t n;
    const attn_case *suite = attn_case_suite(&n);
    assert_int_equal(test_run_cases(test_shared_context(), suite, n, CLATTN_PATH_UNFUSED, 0), n);
}

static void test_unfused_matches_reference_on_random_cases(void **state)
{
    (void)state;
    const size_t count = test_case_count(24);
    assert_int_equal(test_run_random_cases(test_shared_context(), 0x5eed0001ull, count, CLATTN_PATH_UNFUSED, 0),
                     count);
}

static void test_unfused_reads_and_writes_device_buffers_in_place(void **state)
{
    (void)state;
    size_t n;
    const attn_case *suite = attn_case_suite(&n);
    /* every fourth suite case with cl_mem tensors (offsets and padding included) */
    attn_case some[32];
    size_t m = 0;
    for (size_t i = 0; i < n && m < 32; i += 4) some[m++] = suite[i];
    assert_int_equal(test_run_cases(test_shared_context(), some, m, CLATTN_PATH_UNFUSED, TEST_ON_DEVICE), m);
}

/* A 4 KiB workspace holds 4096 / (Lk * 4) score rows: Lk = 300 gives 3 rows per chunk, so
 * one head's 37 queries take 13 chunks and every chunk boundary is exercised. */
static void test_small_workspace_splits_queries_into_chunks_with_the_same_result(void **state)
{
    (void)state;
    assert_int_equal(clattn_context_set_param(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES, 4096),
                     CLATTN_SUCCESS);
    const attn_case cases[] = {
        {.B = 2, .Hq = 4, .Hkv = 2, .Lq = 37, .Lk = 300, .D = 24, .Dv = 20, .lse = 1,
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .mask_kind = ATTN_MASK_BOOL, .seed = 3},
        {.B = 1, .Hq = 3, .Hkv = 3, .Lq = 5, .Lk = 100, .D = 16, .lse = 1, .kv_lens = 1, .seed = 4},
        {.B = 2, .Hq = 2, .Hkv = 1, .Lq = 9, .Lk = 7, .D = 8, .blhd = 1, .padded = 1, .seed = 5},
    };
    const size_t n = sizeof cases / sizeof cases[0];
    size_t ran = test_run_cases(test_shared_context(), cases, n, CLATTN_PATH_UNFUSED, 0);
    assert_int_equal(clattn_context_set_param(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES,
                                              (int64_t)256 << 20),
                     CLATTN_SUCCESS);
    assert_int_equal(ran, n);
}

/* A row of scores larger than the workspace cannot be computed in pieces: a clear error. */
static void test_row_larger_than_workspace_is_refused_with_a_reason(void **state)
{
    (void)state;
    clattn_context *c = test_shared_context();
    assert_int_equal(clattn_context_set_param(c, CLATTN_PARAM_WORKSPACE_BYTES, 4096), CLATTN_SUCCESS);
    const int Lk = 2000, D = 4;
    float *k = calloc((size_t)Lk * D, sizeof *k), q[4] = {1, 0, 0, 0}, o[4];
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, 1, 1, D);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, 1, 1, Lk, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, 1, 1, D);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.path = CLATTN_PATH_UNFUSED;
    clattn_status st = clattn_attention(c, &tq, &tk, &tk, &to, &opt, NULL);
    free(k);
    assert_int_equal(clattn_context_set_param(c, CLATTN_PARAM_WORKSPACE_BYTES, (int64_t)256 << 20),
                     CLATTN_SUCCESS);
    assert_int_equal(st, CLATTN_ERROR_PATH_UNSUPPORTED);
    assert_non_null(strstr(clattn_context_last_error(c), "workspace"));
}

/* Lk = 0: every row is fully masked, O = 0 and LSE = -inf. */
static void test_no_keys_gives_zero_output_and_negative_infinite_lse(void **state)
{
    (void)state;
    float q[2 * 3 * 5], k[1], o[2 * 3 * 4], lse[2 * 3];
    for (int i = 0; i < 30; i++) q[i] = (float)i;
    for (int i = 0; i < 24; i++) o[i] = 7.0f;
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 2, 1, 3, 5);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, 2, 1, 0, 5);
    clattn_tensor tv = clattn_tensor_host(k, CLATTN_F32, 2, 1, 0, 4);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 2, 1, 3, 4);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, 2, 1, 3, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.path = CLATTN_PATH_UNFUSED;
    opt.lse = &tl;
    assert_int_equal(clattn_attention(test_shared_context(), &tq, &tk, &tv, &to, &opt, NULL), CLATTN_SUCCESS);
    for (int i = 0; i < 24; i++) assert_true(o[i] == 0.0f);
    for (int i = 0; i < 6; i++) assert_true(isinf(lse[i]) && lse[i] < 0);
}

/* Lq = 0 or B = 0: nothing to compute, success, the output untouched. */
static void test_empty_problem_succeeds_without_work(void **state)
{
    (void)state;
    float x[8] = {0}, o[8] = {5, 5, 5, 5, 5, 5, 5, 5};
    clattn_tensor tq = clattn_tensor_host(x, CLATTN_F32, 1, 1, 0, 4);
    clattn_tensor tk = clattn_tensor_host(x, CLATTN_F32, 1, 1, 2, 4);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, 1, 0, 4);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.path = CLATTN_PATH_UNFUSED;
    assert_int_equal(clattn_attention(test_shared_context(), &tq, &tk, &tk, &to, &opt, NULL), CLATTN_SUCCESS);
    assert_true(o[0] == 5.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unfused_matches_reference_on_every_spec_rule),
        cmocka_unit_test(test_unfused_matches_reference_on_random_cases),
        cmocka_unit_test(test_unfused_reads_and_writes_device_buffers_in_place),
        cmocka_unit_test(test_small_workspace_splits_queries_into_chunks_with_the_same_result),
        cmocka_unit_test(test_row_larger_than_workspace_is_refused_with_a_reason),
        cmocka_unit_test(test_no_keys_gives_zero_output_and_negative_infinite_lse),
        cmocka_unit_test(test_empty_problem_succeeds_without_work),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
