/* The CLBlast path (src/paths/clblast.c) forced on the default device and compared with the
 * float64 CPU reference: every SPEC §1 option (the shared suite), random cases, device
 * tensors with offsets, tiny workspaces that split work into many chunks, no keys at all,
 * and both of CLBlast's batch forms. One context for the whole file: CLBlast compiles its
 * kernels once per context, which takes from seconds to a minute on a CPU device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "core/context.h"

/* This build has the path; or the test checks that asking for it says so, prints why and
 * is skipped, so a build without CLBlast reports skips, not passes. */
static void require_clblast(void)
{
    if (clattn_path_available(CLATTN_PATH_CLBLAST)) return;
    float x[4] = {1, 2, 3, 4}, o[4];
    clattn_tensor q = clattn_tensor_host(x, CLATTN_F32, 1, 1, 1, 4);
    clattn_tensor out = clattn_tensor_host(o, CLATTN_F32, 1, 1, 1, 4);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.path = CLATTN_PATH_CLBLAST;
    assert_int_equal(clattn_attention(test_shared_context(), &q, &q, &q, &out, &opt, NULL),
                     CLATTN_ERROR_PATH_UNAVAILABLE);
    print_message("skipped: built without CLBlast (CLATTN_WITH_CLBLAST=OFF); forcing the path "
                  "answers PATH_UNAVAILABLE\n");
    skip();
}

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv

static void set_workspace(int64_t bytes)
{
    assert_int_equal(clattn_context_set_param(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES, bytes),
                     CLATTN_SUCCESS);
}

/* The suite covers masks (bool and float, ranks 2-4, broadcasts), causal both ways with
 * Lq != Lk, windows, kv_lens with 0, softcap, ALiBi, scale, GQA/MQA, Dv != D, D in
 * {1, 3, 72, 80, 96, 256}, Lq = 1, Lk = 1, f16/bf16 in and out, BLHD and padded views, and
 * fully masked rows (O = 0, LSE = -inf). */
static void test_clblast_matches_reference_on_every_spec_option(void **state)
{
    (void)state;
    require_clblast();
    size_t n;
    const attn_case *suite = attn_case_suite(&n);
    assert_int_equal(test_run_cases(test_shared_context(), suite, n, CLATTN_PATH_CLBLAST, 0), n);
}

static void test_clblast_matches_reference_on_random_cases(void **state)
{
    (void)state;
    require_clblast();
    const size_t count = test_case_count(24);
    assert_int_equal(test_run_random_cases(test_shared_context(), 0xc1b1a57ull, count, CLATTN_PATH_CLBLAST, 0),
                     count);
}

/* cl_mem tensors are used in place: CLBlast gets their element offsets and strides. */
static void test_clblast_reads_and_writes_device_tensors_in_place(void **state)
{
    (void)state;
    require_clblast();
    const attn_case cases[] = {
        {.name = "dense", SHAPE(2, 4, 4, 33, 65, 64, 64), .lse = 1, .seed = 401},
        {.name = "padded_gqa", SHAPE(2, 8, 2, 19, 33, 64, 48), .padded = 1, .lse = 1, .seed = 402},
        {.name = "blhd_mqa", SHAPE(2, 4, 1, 19, 33, 32, 32), .blhd = 1, .lse = 1, .seed = 403},
        {.name = "padded_blhd_f16", SHAPE(1, 4, 2, 19, 33, 72, 72), .padded = 1, .blhd = 1,
         .dtype = CLATTN_F16, .out_dtype = CLATTN_F16, .seed = 404},
        {.name = "strided_elements", SHAPE(1, 2, 2, 19, 33, 40, 24), .padded = 2, .lse = 1,
         .seed = 405},
    };
    size_t n = sizeof cases / sizeof cases[0];
    assert_int_equal(test_run_cases(test_shared_context(), cases, n, CLATTN_PATH_CLBLAST, TEST_ON_DEVICE), n);
}

/* With device tensors the call only enqueues; the event it returns completes when O is
 * written. */
static void test_clblast_event_completes_when_output_is_written(void **state)
{
    (void)state;
    require_clblast();
    attn_case c = {SHAPE(1, 2, 2, 40, 50, 64, 64), .lse = 1, .seed = 411,
                   .path = CLATTN_PATH_CLBLAST};
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    assert_int_equal(attn_case_data_upload(test_shared_context(), d), CLATTN_SUCCESS);
    cl_event ev = NULL;
    assert_int_equal(attn_case_run(test_shared_context(), &c, d, &ev), CLATTN_SUCCESS);
    assert_non_null(ev);
    assert_int_equal(clWaitForEvents(1, &ev), CL_SUCCESS);
    clReleaseEvent(ev);
    char buf[768];
    if (!test_case_matches(&c, d, buf, sizeof buf)) fail_msg("%s", buf);
    attn_case_data_free(d);
}

/* A workspace of a few KiB: several (b, h) pairs per chunk for short rows, and blocks of
 * a few queries inside one pair for long ones, with f16 copies and scatters in play. */
static void test_clblast_small_workspace_splits_work_into_many_chunks(void **state)
{
    (void)state;
    require_clblast();
    const attn_case cases[] = {
        {.name = "pairs_per_chunk", SHAPE(3, 4, 2, 7, 33, 64, 64), .kv_lens = 1, .lse = 1,
         .seed = 421},
        {.name = "query_blocks", SHAPE(1, 2, 2, 200, 333, 64, 64),
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .lse = 1, .seed = 422},
        {.name = "query_blocks_f16_blhd_gqa", SHAPE(2, 4, 2, 45, 300, 96, 80), .blhd = 1,
         .dtype = CLATTN_F16, .out_dtype = CLATTN_F16, .mask_kind = ATTN_MASK_BOOL,
         .mask_rank = 4, .lse = 1, .seed = 423},
        {.name = "one_row_per_chunk", SHAPE(1, 2, 1, 9, 1000, 32, 32), .padded = 1,
         .alibi = 1, .softcap = 4.0f, .lse = 1, .seed = 424},
    };
    size_t n = sizeof cases / sizeof cases[0];
    set_workspace(4096);
    size_t ran = test_run_cases(test_shared_context(), cases, n, CLATTN_PATH_CLBLAST, 0);
    set_workspace((int64_t)256 << 20);
    assert_int_equal(ran, n);
}

/* A row of scores that cannot fit the workspace: the path declines with a reason. */
static void test_clblast_declines_rows_larger_than_the_workspace(void **state)
{
    (void)state;
    require_clblast();
    attn_case c = {SHAPE(1, 1, 1, 2, 2000, 8, 8), .seed = 431, .path = CLATTN_PATH_CLBLAST};
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    set_workspace(4096);
    clattn_status st = attn_case_run(test_shared_context(), &c, d, NULL);
    set_workspace((int64_t)256 << 20);
    assert_int_equal(st, CLATTN_ERROR_PATH_UNSUPPORTED);
    assert_non_null(strstr(clattn_context_last_error(test_shared_context()), "workspace"));
    attn_case_data_free(d);
}

/* Lk = 0: no GEMM can run; every row is fully masked, O = 0 and LSE = -inf. */
static void test_clblast_with_no_keys_gives_zeros_and_minus_infinity(void **state)
{
    (void)state;
    require_clblast();
    enum { B = 2, H = 3, LQ = 5, D = 8 };
    float q[B * H * LQ * D], kv[1], o[B * H * LQ * D], lse[B * H * LQ];
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) q[i] = (float)i * 0.01f;
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) o[i] = NAN;
    for (size_t i = 0; i < sizeof lse / sizeof lse[0]; i++) lse[i] = NAN;
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, B, H, LQ, D);
    clattn_tensor tk = clattn_tensor_host(kv, CLATTN_F32, B, H, 0, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, H, LQ, D);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, B, H, LQ, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.path = CLATTN_PATH_CLBLAST;
    opt.lse = &tl;
    clattn_status st = clattn_attention(test_shared_context(), &tq, &tk, &tk, &to, &opt, NULL);
    if (st != CLATTN_SUCCESS) fail_msg("%s: %s", clattn_status_string(st), clattn_context_last_error(test_shared_context()));
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) assert_true(o[i] == 0.0f);
    for (size_t i = 0; i < sizeof lse / sizeof lse[0]; i++) assert_true(isinf(lse[i]) && lse[i] < 0);
}

/* Evenly spaced heads go through CLBlastSgemmStridedBatched; GQA (a KV head shared by
 * neighbouring query heads) through CLBlastSgemmBatched with offsets, without copying K
 * or V. A fresh context shows which routines a call warmed (bits of clblast_warm). */
static void test_clblast_uses_strided_batches_for_mha_and_offset_batches_for_gqa(void **state)
{
    (void)state;
    require_clblast();
    clattn_context *fresh = test_context();
    attn_case mha = {SHAPE(2, 4, 4, 17, 33, 32, 32), .seed = 441, .path = CLATTN_PATH_CLBLAST};
    attn_case gqa = {SHAPE(1, 4, 2, 17, 33, 32, 32), .seed = 442, .path = CLATTN_PATH_CLBLAST};
    const attn_case *cases[2] = {&mha, &gqa};
    const unsigned want[2] = {1u /* strided */, 1u | 2u /* and offsets */};
    for (int i = 0; i < 2; i++) {
        attn_case_data *d = NULL;
        assert_int_equal(attn_case_data_create(cases[i], &d), CLATTN_SUCCESS);
        assert_int_equal(attn_case_run(fresh, cases[i], d, NULL), CLATTN_SUCCESS);
        attn_case_result r;
        assert_int_equal(attn_case_compare(cases[i], d, &r), CLATTN_SUCCESS);
        assert_true(r.ok);
        assert_int_equal(fresh->clblast_warm, want[i]);
        attn_case_data_free(d);
    }
    clattn_context_free(fresh);
}

/* K as a broadcast view (stride 0 along the keys, one key row for all of them) is copied
 * to dense float32 and matches the reference. With so many keys that the path's sizes
 * overflow 64 bits, the path declines with a reason instead of wrapping them. */
static void test_clblast_broadcast_k_with_stride_0(void **state)
{
    (void)state;
    require_clblast();
    enum { LQ = 3, LK = 40, D = 8, DV = 8 };
    float q[LQ * D], k[D], v[LK * DV], o[LQ * DV];
    for (int i = 0; i < LQ * D; i++) q[i] = (float)((i * 7) % 11) / 11.0f - 0.5f;
    for (int i = 0; i < D; i++) k[i] = (float)((i * 5) % 13) / 13.0f;
    for (int i = 0; i < LK * DV; i++) v[i] = (float)((i * 3) % 17) / 17.0f;
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, 1, LQ, D);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, 1, 1, LK, D);
    clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, 1, 1, LK, DV);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, 1, LQ, DV);
    tk.nb[2] = 0;
    clattn_options opt;
    clattn_options_init(&opt);
    opt.path = CLATTN_PATH_CLBLAST;
    clattn_context *cx = test_shared_context();
    clattn_status st = clattn_attention(cx, &tq, &tk, &tv, &to, &opt, NULL);
    if (st != CLATTN_SUCCESS) fail_msg("%s: %s", clattn_status_string(st), clattn_context_last_error(cx));
    double ref[LQ * DV];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, ref, NULL), CLATTN_SUCCESS);
    for (int i = 0; i < LQ * DV; i++)
        if (fabs((double)o[i] - ref[i]) > 1e-5 * (1.0 + fabs(ref[i])))
            fail_msg("o[%d] = %.9g, reference %.9g", i, (double)o[i], ref[i]);

    /* 2^62 keys: 4 bytes of scores per key, a float32 copy of K, a 32-bit index limit */
    clattn_tensor hk = clattn_tensor_host(k, CLATTN_F32, 1, 1, (int64_t)1 << 62, D);
    clattn_tensor hv = clattn_tensor_host(v, CLATTN_F32, 1, 1, (int64_t)1 << 62, DV);
    /* one key row repeated (stride 0 along the keys); the dense helper's strides for 2^62
     * rows do not fit int64, so they are set by hand */
    hk.nb[0] = hk.nb[1] = D * (int64_t)sizeof(float);
    hv.nb[0] = hv.nb[1] = DV * (int64_t)sizeof(float);
    hk.nb[2] = hv.nb[2] = 0;
    hk.nb[3] = hv.nb[3] = sizeof(float);
    st = clattn_attention(cx, &tq, &hk, &hv, &to, &opt, NULL);
    if (st != CLATTN_ERROR_PATH_UNSUPPORTED || !strstr(clattn_context_last_error(cx), "overflow"))
        fail_msg("2^62 broadcast keys: got %s: '%s'", clattn_status_string(st), clattn_context_last_error(cx));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clblast_matches_reference_on_every_spec_option),
        cmocka_unit_test(test_clblast_matches_reference_on_random_cases),
        cmocka_unit_test(test_clblast_reads_and_writes_device_tensors_in_place),
        cmocka_unit_test(test_clblast_event_completes_when_output_is_written),
        cmocka_unit_test(test_clblast_small_workspace_splits_work_into_many_chunks),
        cmocka_unit_test(test_clblast_declines_rows_larger_than_the_workspace),
        cmocka_unit_test(test_clblast_with_no_keys_gives_zeros_and_minus_infinity),
        cmocka_unit_test(test_clblast_uses_strided_batches_for_mha_and_offset_batches_for_gqa),
        cmocka_unit_test(test_clblast_broadcast_k_with_stride_0),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
