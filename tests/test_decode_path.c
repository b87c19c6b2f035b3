/* The decode path (split-KV, cl/decode.cl) forced on the default device and compared with
 * the float64 CPU reference: every SPEC §1 option at Lq = 1..8, odd key counts, GQA and
 * MQA, every class of head size, storage types, layouts, fully masked rows, both kernel
 * forms (CPU and GPU, whatever the device), and its refusal of longer query blocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "tuning/tuning.h" /* clattn__tuning_force_form */
#include "core/context.h"

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv

/* Run cases on the decode path with the kernel form the device's tuning row picks. */
static void run_tuned(const attn_case *cases, size_t n)
{
    clattn__tuning_force_form(CLATTN__TP_DECODE, -1);
    test_run_cases(test_shared_context(), cases, n, CLATTN_PATH_DECODE, 0);
}

/* Run all n cases with both kernel forms, CPU (0) and GPU (1), whatever the device: the
 * form the device does not get by default must stay correct too. */
static void run_both_forms(const attn_case *cases, size_t n)
{
    clattn_context *c = test_shared_context();
    for (int form = 0; form <= 1; form++) {
        clattn__tuning_force_form(CLATTN__TP_DECODE, form);
        test_run_cases(c, cases, n, CLATTN_PATH_DECODE, 0);
    }
    clattn__tuning_force_form(CLATTN__TP_DECODE, -1);
}

/* All n cases with the tuned form, the first n_other also with both forms. Each case is
 * a kernel build of its own (compiling dominates these tests on PoCL), so the other form
 * gets the cases that stress what differs between the forms. */
static void run_forms(const attn_case *cases, size_t n, size_t n_other)
{
    run_both_forms(cases, n_other);
    if (n > n_other) run_tuned(cases + n_other, n - n_other);
}

/* ---- every rule of SPEC §1 -------------------------------------------------------- */

/* The shared suite (every option, mask rank and broadcast, causal both ways, windows,
 * kv_lens, softcap, ALiBi, scale, dtypes, layouts, fully masked rows) with each case's Lq
 * cut to 1..8, cycling, so every option meets several decode row counts. */
static void test_decode_matches_reference_on_every_spec_option_for_lq_1_to_8(void **state)
{
    (void)state;
    size_t n;
    const attn_case *suite = attn_case_suite(&n);
    attn_case *cases = calloc(n, sizeof *cases);
    assert_non_null(cases);
    for (size_t i = 0; i < n; i++) {
        cases[i] = suite[i];
        cases[i].Lq = 1 + (int64_t)(i % 8);
    }
    run_tuned(cases, n);
    free(cases);
}

static void test_decode_handles_odd_key_counts_across_splits(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {.name = "lk1", SHAPE(1, 2, 2, 1, 1, 64, 64), .lse = 1, .seed = 201},
        {.name = "lk7_lq3", SHAPE(2, 2, 2, 3, 7, 64, 64), .lse = 1, .seed = 202},
        {.name = "lk1000_lq1", SHAPE(1, 4, 4, 1, 1000, 128, 128), .lse = 1, .seed = 203},
        {.name = "lk4097_lq2_br", SHAPE(1, 4, 2, 2, 4097, 64, 64), .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
         .lse = 1, .seed = 204},
        {.name = "lk4097_lq8_tl", SHAPE(1, 2, 1, 8, 4097, 32, 32), .causal = CLATTN_CAUSAL_TOP_LEFT,
         .lse = 1, .seed = 205},
        {.name = "lk4097_window", SHAPE(1, 2, 2, 5, 4097, 64, 64), .window = 1, .win_left = 700,
         .win_right = 0, .lse = 1, .seed = 206},
    };
    run_both_forms(cases, sizeof cases / sizeof cases[0]);
}

static void test_decode_gqa_groups_1_4_8_and_mqa_match_reference(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {.name = "group1", SHAPE(2, 4, 4, 1, 300, 64, 64), .lse = 1, .seed = 211},
        {.name = "group4", SHAPE(2, 8, 2, 3, 300, 64, 64), .lse = 1, .seed = 212},
        {.name = "group4_lq8", SHAPE(1, 8, 2, 8, 513, 128, 128), .lse = 1, .seed = 213},
        {.name = "group8", SHAPE(1, 16, 2, 1, 700, 128, 128), .lse = 1, .seed = 214},
        {.name = "group8_lq5_alibi", SHAPE(1, 8, 1, 5, 333, 64, 64), .alibi = 1, .lse = 1,
         .seed = 215},
        {.name = "mqa_32", SHAPE(1, 32, 1, 1, 257, 128, 128), .lse = 1, .seed = 216},
        {.name = "mqa_16_lq8_bool_mask", SHAPE(2, 16, 1, 8, 99, 64, 64),
         .mask_kind = ATTN_MASK_BOOL, .mask_rank = 4, .lse = 1, .seed = 217},
    };
    run_both_forms(cases, sizeof cases / sizeof cases[0]);
}

static void test_decode_every_head_size_and_dv_unlike_d(void **state)
{
    (void)state;
    static const int64_t dims[] = {1, 3, 72, 64, 80, 96, 128, 256};
    enum { ND = sizeof dims / sizeof dims[0] };
    attn_case cases[ND + 3];
    size_t n = 0;
    cases[n++] = (attn_case){.name = "d72_dv80_f16", SHAPE(1, 4, 4, 1, 650, 72, 80),
                             .dtype = CLATTN_F16, .seed = 260};
    cases[n++] = (attn_case){.name = "d256_dv1_br", SHAPE(1, 2, 2, 4, 640, 256, 1),
                             .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .lse = 1, .seed = 261};
    cases[n++] = (attn_case){.name = "d3_dv200", SHAPE(1, 2, 1, 3, 640, 3, 200), .seed = 262};
    for (int i = 0; i < ND; i++)
        cases[n++] = (attn_case){.name = "d_eq_dv", SHAPE(1, 4, 2, 1 + i % 3, 600 + i, dims[i], dims[i]),
                                 .lse = 1, .seed = 220 + (uint64_t)i};
    run_forms(cases, n, 5); /* Dv != D, and D = 1 and 3, in both forms */
}

static void test_decode_f16_bf16_storage_and_f16_output(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {.name = "f16", SHAPE(1, 4, 4, 1, 1000, 128, 128), .dtype = CLATTN_F16, .lse = 1, .seed = 271},
        {.name = "bf16", SHAPE(1, 4, 2, 2, 777, 128, 128), .dtype = CLATTN_BF16, .lse = 1, .seed = 272},
        {.name = "f16_out", SHAPE(1, 4, 4, 3, 300, 64, 64), .out_dtype = CLATTN_F16, .seed = 273},
        {.name = "f16_in_out_d72", SHAPE(1, 8, 2, 1, 300, 72, 72), .dtype = CLATTN_F16,
         .out_dtype = CLATTN_F16, .seed = 274},
        {.name = "bf16_in_out", SHAPE(1, 2, 2, 4, 100, 64, 64), .dtype = CLATTN_BF16,
         .out_dtype = CLATTN_BF16, .seed = 275},
    };
    run_forms(cases, sizeof cases / sizeof cases[0], 2); /* f16 and bf16 K/V in both */
}

static void test_decode_blhd_and_padded_views(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {.name = "padded_strided_d", SHAPE(1, 4, 2, 2, 300, 40, 24), .padded = 2, .lse = 1,
         .seed = 284},
        {.name = "padded_blhd_bf16", SHAPE(2, 4, 1, 4, 200, 80, 80), .padded = 1, .blhd = 1,
         .dtype = CLATTN_BF16, .lse = 1, .seed = 285},
        {.name = "blhd", SHAPE(2, 8, 2, 2, 300, 64, 64), .blhd = 1, .lse = 1, .seed = 281},
        {.name = "blhd_f16", SHAPE(1, 4, 4, 1, 300, 128, 128), .blhd = 1, .dtype = CLATTN_F16,
         .seed = 282},
        {.name = "padded", SHAPE(2, 4, 2, 3, 300, 64, 64), .padded = 1, .lse = 1, .seed = 283},
    };
    run_forms(cases, sizeof cases / sizeof cases[0], 2); /* strided views in both forms */
}

static void test_decode_kv_lens_with_zero_and_per_batch_values(void **state)
{
    (void)state;
    /* batch 1 has 0 keys, batch 2 all of them, the others random (attn_case) */
    const attn_case cases[] = {
        {.name = "kv_lens", SHAPE(4, 4, 2, 1, 1000, 64, 64), .kv_lens = 1, .lse = 1, .seed = 291},
        {.name = "kv_lens_lq8_br", SHAPE(3, 2, 2, 8, 300, 64, 64), .kv_lens = 1,
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .lse = 1, .seed = 292},
        {.name = "kv_lens_mqa_f16", SHAPE(5, 8, 1, 2, 4097, 128, 128), .kv_lens = 1,
         .dtype = CLATTN_F16, .lse = 1, .seed = 293},
    };
    run_both_forms(cases, sizeof cases / sizeof cases[0]);
}

/* Rows that see no key: O must be exactly 0 and LSE -inf (attn_case_compare counts any
 * nonzero element of such a row and any LSE that is not -inf as a failure), including
 * splits that see nothing next to splits that see something. */
static void test_decode_fully_masked_rows_are_zero_with_lse_minus_inf(void **state)
{
    (void)state;
    const attn_case cases[] = {
        /* top-left causal with a left window: i' - 2 > i, every row empty */
        {.name = "all_rows_empty", SHAPE(1, 4, 2, 4, 100, 64, 64), .causal = CLATTN_CAUSAL_TOP_LEFT,
         .window = 1, .win_left = 2, .win_right = -1, .lse = 1, .seed = 301},
        /* kv_lens 0 for batch 1 over many splits */
        {.name = "kv_len_zero_many_splits", SHAPE(2, 4, 4, 1, 5000, 32, 32), .kv_lens = 1,
         .lse = 1, .seed = 302},
        /* bool mask rows r % 7 == 3 excluded (attn_case), with GQA and Lq = 8 */
        {.name = "bool_mask_rows", SHAPE(2, 8, 2, 8, 600, 64, 64), .mask_kind = ATTN_MASK_BOOL,
         .mask_rank = 4, .lse = 1, .seed = 303},
        {.name = "float_mask_rows_f16_out", SHAPE(1, 4, 1, 7, 600, 64, 64),
         .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 3, .out_dtype = CLATTN_F16, .lse = 1,
         .seed = 304},
        /* a window visible in one split only: the other splits contribute nothing */
        {.name = "window_in_one_split", SHAPE(1, 2, 2, 1, 3000, 64, 64), .window = 1,
         .win_left = 5, .win_right = 0, .lse = 1, .seed = 305},
    };
    run_both_forms(cases, sizeof cases / sizeof cases[0]);
}

/* Inputs and outputs as cl_mem tensors (no staging copies), as an application would pass
 * its KV cache. */
static void test_decode_on_device_buffers(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {.name = "device_gqa", SHAPE(1, 8, 2, 1, 2000, 128, 128), .lse = 1, .seed = 311},
        {.name = "device_f16_blhd", SHAPE(2, 4, 4, 3, 700, 64, 64), .dtype = CLATTN_F16,
         .blhd = 1, .kv_lens = 1, .lse = 1, .seed = 312},
    };
    test_run_cases(test_shared_context(), cases, sizeof cases / sizeof cases[0], CLATTN_PATH_DECODE,
                   TEST_ON_DEVICE);
}

/* Random cases over every option with Lq drawn in 1..8. */
static void test_decode_matches_reference_on_random_cases(void **state)
{
    (void)state;
    size_t count = test_case_count(10);
    attn_case *cases = calloc(count ? count : 1, sizeof *cases);
    assert_non_null(cases);
    for (size_t i = 0; i < count; i++) {
        attn_case_random(9000 + i, &cases[i]);
        cases[i].Lq = 1 + (int64_t)(i % 8);
    }
    run_tuned(cases, count);
    free(cases);
}

static void test_decode_refuses_more_query_rows_than_its_bound(void **state)
{
    (void)state;
    attn_case c = {.name = "lq9", SHAPE(1, 2, 2, 9, 64, 32, 32), .seed = 321,
                   .path = CLATTN_PATH_DECODE};
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    assert_int_equal(attn_case_run(test_shared_context(), &c, d, NULL), CLATTN_ERROR_PATH_UNSUPPORTED);
    attn_case_data_free(d);
}

static void test_auto_mode_picks_decode_for_short_queries(void **state)
{
    (void)state;
    attn_case c = {.name = "auto_decode", SHAPE(1, 8, 2, 1, 300, 64, 64), .seed = 331};
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    assert_int_equal(attn_case_run(test_shared_context(), &c, d, NULL), CLATTN_SUCCESS);
    assert_int_equal(clattn_context_last_path(test_shared_context()), CLATTN_PATH_DECODE);
    attn_case_data_free(d);
}

/* The decode path's scratch goes back through the counting allocator: after each call
 * the context holds no device memory, and a call's peak does not grow with the calls
 * before it (`clattn bench` reports it as the path's device memory). */
static void test_decode_releases_its_scratch_to_the_device_byte_count(void **state)
{
    (void)state;
    attn_case c = {.name = "scratch", SHAPE(1, 4, 2, 2, 300, 64, 64), .lse = 1, .seed = 341,
                   .path = CLATTN_PATH_DECODE};
    clattn_context *ctx = test_context();
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    assert_int_equal(ctx->device_bytes, 0);
    uint64_t first_peak = 0;
    for (int call = 0; call < 4; call++) {
        clattn_context_reset_peak_device_bytes(ctx);
        assert_int_equal(attn_case_run(ctx, &c, d, NULL), CLATTN_SUCCESS);
        assert_int_equal(clattn_context_last_path(ctx), CLATTN_PATH_DECODE);
        const uint64_t peak = clattn_context_peak_device_bytes(ctx);
        if (ctx->device_bytes != 0 || (call > 0 && peak != first_peak))
            fail_msg("call %d: %llu device bytes held after the call, peak %llu (first call's %llu)",
                     call, (unsigned long long)ctx->device_bytes, (unsigned long long)peak,
                     (unsigned long long)first_peak);
        if (call == 0) first_peak = peak;
    }
    assert_true(first_peak > 0);
    attn_case_data_free(d);
    clattn_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_matches_reference_on_every_spec_option_for_lq_1_to_8),
        cmocka_unit_test(test_decode_handles_odd_key_counts_across_splits),
        cmocka_unit_test(test_decode_gqa_groups_1_4_8_and_mqa_match_reference),
        cmocka_unit_test(test_decode_every_head_size_and_dv_unlike_d),
        cmocka_unit_test(test_decode_f16_bf16_storage_and_f16_output),
        cmocka_unit_test(test_decode_blhd_and_padded_views),
        cmocka_unit_test(test_decode_kv_lens_with_zero_and_per_batch_values),
        cmocka_unit_test(test_decode_fully_masked_rows_are_zero_with_lse_minus_inf),
        cmocka_unit_test(test_decode_on_device_buffers),
        cmocka_unit_test(test_decode_matches_reference_on_random_cases),
        cmocka_unit_test(test_decode_refuses_more_query_rows_than_its_bound),
        cmocka_unit_test(test_auto_mode_picks_decode_for_short_queries),
        cmocka_unit_test(test_decode_releases_its_scratch_to_the_device_byte_count),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
