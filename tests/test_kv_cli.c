/* The KV-cache side of the clattn executable: `clattn quantize` writes the dequantized
 * array and reports bits and error as the reference quantizer gives them, `clattn run
 * --kv-quant F` matches the float64 reference on the K and V a cache of format F holds,
 * and bad input to either exits non-zero with one line on stderr and no output file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "clattn.h"
#include "support/npy.h"
#include "test_scratch.h"

#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>


#define EXPECT_FAILURE(needle, out, ...)                                                  \
    test_expect_cli_failure((needle), (out), NULL, ARGS(__VA_ARGS__), __LINE__)

static uint32_t seed;
static float rnd(void)
{
    seed = seed * 1664525u + 1013904223u;
    return (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
}

static int setup(void **state)
{
    (void)state;
    return test_scratch_create("kvcli");
}

/* quantize writes exactly the reference quantizer's output and prints its bits and error. */
static void test_quantize_writes_the_reference_dequantization_and_reports_bits(void **state)
{
    (void)state;
    enum { M = 3, N = 40, D = 72 };
    static float x[M * N * D], want[M * N * D];
    seed = 11;
    for (int i = 0; i < M * N * D; i++) x[i] = rnd() * (i % 5 + 1);
    const int64_t shape[3] = {M, N, D};
    test_save_npy("x.npy", CLATTN_F32, 3, shape, x);
    const char *formats[] = {"int8", "int4", "tq4", "tq3", "tq2", "f16"};
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
        clattn_kv_format fmt;
        assert_int_equal(clattn_kv_format_from_name(formats[f], &fmt), CLATTN_SUCCESS);
        for (int m = 0; m < M; m++) /* int4 keys group along N, per slice */
            assert_int_equal(clattn_kv_quantize_host(fmt, CLATTN_KV_KEYS, x + m * N * D, N, D, want + m * N * D, NULL),
                             CLATTN_SUCCESS);
        test_exe_result r;
        test_run_clattn(test_scratch_dir(), &r, ARGS("quantize", "--format", formats[f], "--in", test_scratch_path("x.npy"), "--out", test_scratch_path("xh.npy")));
        if (r.status != 0) fail_msg("quantize %s: status %d: %s", formats[f], r.status, r.err);
        if (!strstr(r.out, "bits/element") || !strstr(r.out, "max |x-x^|"))
            fail_msg("quantize %s printed: %s", formats[f], r.out);
        npy_array a;
        char err[1024];
        assert_int_equal(npy_read(test_scratch_path("xh.npy"), &a, err, sizeof err), 0);
        assert_int_equal(a.dtype, CLATTN_F32);
        assert_int_equal(a.rank, 3);
        assert_memory_equal(a.data, want, sizeof want);
        npy_free(&a);
        printf("  %s", r.out);
    }
    /* float16 input and the values role */
    static uint16_t xh16[M * N * D];
    for (int i = 0; i < M * N * D; i++) xh16[i] = 0x3c00 | (uint16_t)(i % 1000); /* 1.0 .. 2.0 */
    test_save_npy("xb.npy", CLATTN_F16, 3, shape, xh16);
    test_exe_result r;
    test_run_clattn(test_scratch_dir(), &r, ARGS("quantize", "--format", "int4", "--role", "values", "--in", test_scratch_path("xb.npy"), "--out",
                        test_scratch_path("xh.npy")));
    if (r.status != 0) fail_msg("quantize f16 input: %s", r.err);
}

static void test_quantize_rejects_bad_input_with_one_line(void **state)
{
    (void)state;
    const char *o = test_scratch_path("xh.npy"), *x = test_scratch_path("x.npy");
    float v[4] = {1, 2, 3, 4};
    int32_t iv[4] = {1, 2, 3, 4};
    const int64_t s1[1] = {4};
    test_save_npy("x.npy", CLATTN_F32, 1, s1, v);
    test_save_npy("i.npy", CLATTN_I32, 1, s1, iv);
    EXPECT_FAILURE("--format", o, "quantize", "--format", "q8_0", "--in", x, "--out", o);
    EXPECT_FAILURE("--role", o, "quantize", "--format", "int8", "--role", "both", "--in", x, "--out", o);
    EXPECT_FAILURE("missing --in", o, "quantize", "--format", "int8", "--out", o);
    EXPECT_FAILURE("expected float32 or float16", o, "quantize", "--format", "int8", "--in", test_scratch_path("i.npy"), "--out", o);
    EXPECT_FAILURE("--in", o, "quantize", "--format", "int8", "--in", test_scratch_path("nope.npy"), "--out", o);
    EXPECT_FAILURE("same file", x, "quantize", "--format", "int8", "--in", x, "--out", x);
    test_save_npy("x.npy", CLATTN_F32, 1, s1, v); /* put back what the last case removed */
    EXPECT_FAILURE("unknown option", o, "quantize", "--format", "int8", "--in", x, "--out", o, "--bogus");
}

/* run --kv-quant F: the output equals attention over the K and V as the cache holds them
 * (the reference quantizer's, which the device matches bit for bit on CPU devices), within
 * the SPEC f32 tolerance; --kv-quant f32 equals the plain run. */
static void test_run_with_kv_quant_matches_reference_on_the_quantized_cache(void **state)
{
    (void)state;
    enum { B = 2, HQ = 4, HKV = 2, LQ = 3, LK = 45, D = 64, DV = 32 };
    static float q[B * HQ * LQ * D], k[B * HKV * LK * D], v[B * HKV * LK * DV], kh[sizeof k / 4], vh[sizeof v / 4];
    static double ref[B * HQ * LQ * DV];
    seed = 5;
    for (size_t i = 0; i < sizeof q / 4; i++) q[i] = rnd();
    for (size_t i = 0; i < sizeof k / 4; i++) k[i] = rnd() * 2;
    for (size_t i = 0; i < sizeof v / 4; i++) v[i] = rnd();
    const int64_t sq[4] = {B, HQ, LQ, D}, sk[4] = {B, HKV, LK, D}, sv[4] = {B, HKV, LK, DV};
    test_save_npy("q.npy", CLATTN_F32, 4, sq, q);
    test_save_npy("k.npy", CLATTN_F32, 4, sk, k);
    test_save_npy("v.npy", CLATTN_F32, 4, sv, v);
    const char *formats[] = {"f32", "int8", "int4", "tq4", "tq2"};
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
        clattn_kv_format fmt;
        assert_int_equal(clattn_kv_format_from_name(formats[f], &fmt), CLATTN_SUCCESS);
        for (int bh = 0; bh < B * HKV; bh++) {
            clattn_kv_quantize_host(fmt, CLATTN_KV_KEYS, k + bh * LK * D, LK, D, kh + bh * LK * D, NULL);
            clattn_kv_quantize_host(fmt, CLATTN_KV_VALUES, v + bh * LK * DV, LK, DV, vh + bh * LK * DV, NULL);
        }
        clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, B, HQ, LQ, D);
        clattn_tensor tk = clattn_tensor_host(kh, CLATTN_F32, B, HKV, LK, D);
        clattn_tensor tv = clattn_tensor_host(vh, CLATTN_F32, B, HKV, LK, DV);
        clattn_options opt;
        clattn_options_init(&opt);
        opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
        assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, ref, NULL), CLATTN_SUCCESS);
        test_exe_result r;
        test_run_clattn(test_scratch_dir(), &r, ARGS("run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v", test_scratch_path("v.npy"),
                            "--out", test_scratch_path("o.npy"), "--causal", "bottom-right", "--kv-quant", formats[f]));
        if (r.status != 0) fail_msg("run --kv-quant %s: %s", formats[f], r.err);
        if (!strstr(r.out, "kv-cache")) fail_msg("run --kv-quant %s printed: %s", formats[f], r.out);
        npy_array a;
        char err[1024];
        assert_int_equal(npy_read(test_scratch_path("o.npy"), &a, err, sizeof err), 0);
        const float *o = a.data;
        double worst = 0;
        for (size_t i = 0; i < a.count; i++) worst = fmax(worst, fabs(o[i] - ref[i]) / (2e-4 + 2e-3 * fabs(ref[i])));
        npy_free(&a);
        if (!(worst <= 1.0)) fail_msg("run --kv-quant %s: max error %.3g of the f32 tolerance", formats[f], worst);
    }
    EXPECT_FAILURE("--kv-quant", test_scratch_path("o.npy"), "run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"),
                   "--v", test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--kv-quant", "int3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantize_writes_the_reference_dequantization_and_reports_bits),
        cmocka_unit_test(test_quantize_rejects_bad_input_with_one_line),
        cmocka_unit_test(test_run_with_kv_quant_matches_reference_on_the_quantized_cache),
    };
    return cmocka_run_group_tests(tests, setup, test_scratch_remove);
}
