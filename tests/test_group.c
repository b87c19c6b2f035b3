/* clattn_group_attention: one call split over several contexts equals the float64
 * reference (SPEC §1 tolerances) on every case of the shared suite, by (batch, KV head)
 * units and by keys with the log-sum-exp merge; the split follows the speeds (set, and
 * measured by calibration), key ranges weighted by the rows that see each key; on two
 * PoCL contexts (PoCL with rusticl: test_rusticl_group); a device that fails makes the
 * call fail with the device named and outputs untouched; bad arguments are refused. */
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

static clattn_context *make_ctx(const char *spec)
{
    clattn_context *c = NULL;
    clattn_status st = clattn_context_create(spec, &c);
    if (st != CLATTN_SUCCESS) fail_msg("context on %s: %s", spec, clattn_status_string(st));
    return c;
}

/* Every suite case on two PoCL contexts at speeds 1:3, so the parts are unequal. */
static void test_two_contexts_match_reference_on_every_suite_case(void **state)
{
    (void)state;
    clattn_context *c[2] = {make_ctx("portable"), make_ctx("portable")};
    clattn_group *g = NULL;
    assert_int_equal(clattn_group_create_from_contexts(c, 2, &g), CLATTN_SUCCESS);
    const double sp[2] = {1.0, 3.0};
    assert_int_equal(clattn_group_set_speeds(g, sp), CLATTN_SUCCESS);
    size_t n = 0, failures = 0, keys = 0;
    const attn_case *suite = attn_case_suite(&n);
    for (size_t i = 0; i < n; i++) {
        int bk = 0;
        failures += (size_t)test_group_check_case(g, &suite[i], &bk);
        keys += (size_t)bk;
    }
    /* both kinds of split ran */
    assert_true(keys > 0 && keys < n);
    clattn_group_free(g);
    clattn_context_free(c[0]);
    clattn_context_free(c[1]);
    assert_int_equal(failures, 0);
}

/* Shares of B*Hkv = 16 units at speeds 1:3, and of the keys with one unit; calibration
 * gives positive speeds and the next call follows them. */
static void test_split_follows_speeds(void **state)
{
    (void)state;
    const char *specs[2] = {"portable", "portable"};
    clattn_group *g = NULL;
    assert_int_equal(clattn_group_create(specs, 2, &g), CLATTN_SUCCESS);
    const double sp[2] = {1.0, 3.0};
    assert_int_equal(clattn_group_set_speeds(g, sp), CLATTN_SUCCESS);
    attn_case c = {.B = 4, .Hq = 8, .Hkv = 4, .Lq = 9, .Lk = 40, .D = 16, .lse = 1, .seed = 7};
    int bk = -1;
    int64_t start, count;
    assert_int_equal(test_group_check_case(g, &c, &bk), 0);
    assert_int_equal(bk, 0);
    assert_int_equal(clattn_group_last_split(g, 1, &bk, &start, &count, NULL), CLATTN_SUCCESS);
    assert_int_equal(start, 4);
    assert_int_equal(count, 12);
    attn_case one = {.B = 1, .Hq = 2, .Hkv = 1, .Lq = 9, .Lk = 40, .D = 16, .lse = 1,
                     .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 8};
    assert_int_equal(test_group_check_case(g, &one, &bk), 0);
    assert_int_equal(bk, 1);
    /* bottom-right causal, Lq 9 over Lk 40: keys 0..31 are seen by all 9 rows, key j >= 32
     * by 40 - j; work 324, a quarter is 81 = keys 0..8 */
    assert_int_equal(clattn_group_last_split(g, 0, &bk, &start, &count, NULL), CLATTN_SUCCESS);
    assert_int_equal(start, 0);
    assert_int_equal(count, 9);

    assert_int_equal(clattn_group_calibrate(g, 16, 16, CLATTN_F32), CLATTN_SUCCESS);
    double got[2];
    assert_int_equal(clattn_group_speeds(g, got), CLATTN_SUCCESS);
    assert_true(got[0] > 0.0 && got[1] > 0.0);
    assert_int_equal(test_group_check_case(g, &c, &bk), 0);
    assert_int_equal(clattn_group_last_split(g, 0, NULL, NULL, &count, NULL), CLATTN_SUCCESS);
    assert_int_equal(count, llround(16.0 * got[0] / (got[0] + got[1])));
    clattn_group_free(g);
}

/* A device that fails (a fault armed on the second context) fails the call, names the
 * device, and leaves O untouched; host-only and duplicate-context rules. */
static void test_failing_device_and_bad_arguments(void **state)
{
    (void)state;
    clattn_context *a = make_ctx("portable");
    setenv("CLATTN_FAULT", "alloc:1", 1);
    clattn_context *b = make_ctx("portable");
    unsetenv("CLATTN_FAULT");
    clattn_context *dup[2] = {a, a}, *pair[2] = {a, b};
    clattn_group *g = NULL;
    assert_int_equal(clattn_group_create_from_contexts(dup, 2, &g), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_null(g);
    assert_int_equal(clattn_group_create_from_contexts(pair, 2, &g), CLATTN_SUCCESS);
    const double sp[2] = {1.0, 1.0};
    assert_int_equal(clattn_group_set_speeds(g, sp), CLATTN_SUCCESS);
    const double bad_sp[2] = {-1.0, 1.0};
    assert_int_equal(clattn_group_set_speeds(g, bad_sp), CLATTN_ERROR_INVALID_ARGUMENT);

    float q[2 * 4 * 8], k[2 * 4 * 8], v[2 * 4 * 8], o[2 * 4 * 8];
    for (int i = 0; i < 64; i++) q[i] = k[i] = v[i] = (float)(i % 7) * 0.1f, o[i] = 42.0f;
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, 8, 2, 4);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, 1, 8, 2, 4);
    clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, 1, 8, 2, 4);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, 8, 2, 4);
    clattn_status st = clattn_group_attention(g, &tq, &tk, &tv, &to, NULL);
    assert_int_not_equal(st, CLATTN_SUCCESS);
    assert_non_null(strstr(clattn_group_last_error(g), "device 1"));
    for (int i = 0; i < 64; i++) assert_true(o[i] == 42.0f);

    clattn_tensor bad_q = tq;
    bad_q.host = NULL;
    bad_q.buffer = (cl_mem)1;
    assert_int_equal(clattn_group_attention(g, &bad_q, &tk, &tv, &to, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_group_last_error(g), "host tensors"));
    clattn_tensor bad_k = clattn_tensor_host(k, CLATTN_F32, 1, 3, 2, 4); /* 8 % 3 != 0 */
    assert_int_not_equal(clattn_group_attention(g, &tq, &bad_k, &tv, &to, NULL), CLATTN_SUCCESS);
    for (int i = 0; i < 64; i++) assert_true(o[i] == 42.0f);
    clattn_group_free(g);
    clattn_context_free(a);
    clattn_context_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_contexts_match_reference_on_every_suite_case),
        cmocka_unit_test(test_split_follows_speeds),
        cmocka_unit_test(test_failing_device_and_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
