/* A second, independent OpenCL implementation: Mesa's rusticl on llvmpipe (Debian
 * mesa-opencl-icd, enabled with RUSTICL_ENABLE=llvmpipe, which CTest sets). Its limits
 * are a GPU's (OpenCL C 1.2, 32 KiB of local memory, 1024 work-items per group) and its
 * compiler is not PoCL's, so the kernels meant for GPUs (the fused and decode paths' GPU
 * forms, the unfused path's local-memory tiles) run here on the whole SPEC suite, with
 * host tensors and with cl_mem tensors at byte offsets as an application passes them,
 * forced and in auto mode (which takes them here through llvmpipe's tuning rows).
 * The CPU forms' PoCL rows (unrolled float16 vector code) take minutes to build on
 * llvmpipe; test_rusticl_cpu_forms runs those forms here with compact rows. A missing
 * rusticl device is a failure: the README's test command installs mesa-opencl-icd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_backward_util.h"
#include "test_util.h"
#include "tuning/tuning.h"

static clattn_context *ctx;

static clattn_context *rusticl(void)
{
    if (ctx) return ctx;
    size_t index;
    if (clattn_device_find("llvmpipe", &index) != CLATTN_SUCCESS)
        fail_msg("no rusticl llvmpipe device: install mesa-opencl-icd and set "
                 "RUSTICL_ENABLE=llvmpipe (CTest sets it for this test)");
    clattn_status st = clattn_context_create("llvmpipe", &ctx);
    if (st != CLATTN_SUCCESS) fail_msg("rusticl context: %s", clattn_status_string(st));
    return ctx;
}

static int teardown(void **state)
{
    (void)state;
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
    clattn__tuning_force_form(CLATTN__TP_DECODE, -1);
    clattn_context_free(ctx);
    ctx = NULL;
    return 0;
}

/* Auto mode on llvmpipe takes the GPU forms (its name-level tuning rows): the CPU forms'
 * code takes minutes to build there and runs 8-12x slower (docs/measurements.md). */
static void test_auto_mode_takes_the_gpu_forms_on_rusticl(void **state)
{
    (void)state;
    const clattn__tpath paths[] = {CLATTN__TP_FUSED, CLATTN__TP_DECODE};
    for (size_t i = 0; i < 2; i++) {
        clattn__tclass cls;
        clattn__tclass_make(rusticl(), paths[i], CLATTN_F32, 64, 64, paths[i] == CLATTN__TP_DECODE ? 1 : 256,
                            false, 1, 0, &cls);
        clattn__trow row;
        clattn__tsource src;
        clattn__tuning_row(rusticl(), paths[i], &cls, &row, &src);
        if (row.form != (paths[i] == CLATTN__TP_FUSED ? 2 : 1)) /* gpu-mm, decode gpu */
            fail_msg("%s: form %s on llvmpipe (%s)", clattn__tpath_name(paths[i]),
                     clattn__tform_name(paths[i], row.form), src.text);
    }
}

static void run_suite(clattn_path path, int flags)
{
    size_t n;
    const attn_case *suite = attn_case_suite(&n);
    test_run_cases(rusticl(), suite, n, path, flags);
}

static void test_unfused_path_matches_reference_on_rusticl(void **state)
{
    (void)state;
    run_suite(CLATTN_PATH_UNFUSED, 0);
}

static void test_fused_gpu_form_matches_reference_on_rusticl(void **state)
{
    (void)state;
    clattn__tuning_force_form(CLATTN__TP_FUSED, 1);
    run_suite(CLATTN_PATH_FUSED, 0);
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
}

/* The gpu-mm form (two register-blocked mini-GEMMs per key tile) on the whole suite,
 * within llvmpipe's 32 KiB of local memory (its tiles shrink at large heads). */
static void test_fused_gpu_mm_form_matches_reference_on_rusticl(void **state)
{
    (void)state;
    clattn__tuning_force_form(CLATTN__TP_FUSED, 2);
    run_suite(CLATTN_PATH_FUSED, 0);
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
}

static void test_decode_gpu_form_matches_reference_on_rusticl(void **state)
{
    (void)state;
    clattn__tuning_force_form(CLATTN__TP_DECODE, 1);
    /* the decode path takes the suite's few-query cases and declines the others */
    run_suite(CLATTN_PATH_DECODE, TEST_ALLOW_UNSUPPORTED);
    clattn__tuning_force_form(CLATTN__TP_DECODE, -1);
}

/* As an application calls clattn: its own buffer (every tensor a cl_mem view at a
 * 256-byte-aligned offset of one buffer),
 * BLHD strides, GQA, bottom-right causal, softcap, f16 storage, and LSE. */
static void test_device_buffers_at_offsets_on_rusticl(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {.name = "app_blhd_gqa_causal_softcap", .B = 2, .Hq = 8, .Hkv = 2, .Lq = 37, .Lk = 50,
         .D = 64, .Dv = 64, .blhd = 1, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .softcap = 20.0f,
         .lse = 1, .seed = 901},
        {.name = "app_decode_f16_kvlens", .B = 3, .Hq = 8, .Hkv = 2, .Lq = 1, .Lk = 70, .D = 64,
         .Dv = 64, .blhd = 1, .dtype = CLATTN_F16, .kv_lens = 1, .lse = 1, .seed = 902},
        {.name = "app_padded_float_mask", .B = 1, .Hq = 4, .Hkv = 4, .Lq = 19, .Lk = 33, .D = 40,
         .Dv = 24, .padded = 1, .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 4, .lse = 1,
         .seed = 903},
    };
    const size_t n = sizeof cases / sizeof cases[0];
    /* auto mode, as an application calls it: llvmpipe's own tuning rows (the GPU forms)
     * pick the path and form */
    test_run_cases(rusticl(), cases, n, CLATTN_PATH_AUTO, TEST_ON_DEVICE_PACKED);
    clattn__tuning_force_form(CLATTN__TP_FUSED, 1);
    clattn__tuning_force_form(CLATTN__TP_DECODE, 1);
    test_run_cases(rusticl(), cases, n, CLATTN_PATH_FUSED, TEST_ON_DEVICE_PACKED);
    clattn__tuning_force_form(CLATTN__TP_FUSED, 2);
    test_run_cases(rusticl(), cases, n, CLATTN_PATH_FUSED, TEST_ON_DEVICE_PACKED);
    test_run_cases(rusticl(), cases, n, CLATTN_PATH_DECODE, TEST_ON_DEVICE_PACKED | TEST_ALLOW_UNSUPPORTED);
    test_run_cases(rusticl(), cases, n, CLATTN_PATH_UNFUSED, TEST_ON_DEVICE_PACKED);
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
    clattn__tuning_force_form(CLATTN__TP_DECODE, -1);
}

/* The backward kernels (the GPU form the tuning layer gives llvmpipe, local tiles within
 * 32 KiB) on rusticl's GPU-like limits: GQA with key lengths and causal, a broadcast
 * float mask with its gradient and softcap, Dv != D, and a head size whose tiles shrink
 * to fit. */
static void test_backward_matches_reference_on_rusticl(void **state)
{
    (void)state;
    const attn_case cases[] = {
        {.B = 3, .Hq = 4, .Hkv = 2, .Lq = 37, .Lk = 45, .D = 64, .Dv = 64, .kv_lens = 1,
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 1},
        {.B = 2, .Hq = 4, .Hkv = 2, .Lq = 19, .Lk = 37, .D = 32, .Dv = 48,
         .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 3, .mask_ones = 2u, .softcap = 4.0f, .seed = 2},
        {.B = 1, .Hq = 2, .Hkv = 1, .Lq = 21, .Lk = 33, .D = 256, .Dv = 256, .seed = 3},
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bwd_data b;
        bwd_data_make(&cases[i], cases[i].mask_kind == ATTN_MASK_FLOAT, &b);
        failed += check_backward(rusticl(), &b) != 0;
        bwd_data_free(&b);
    }
    if (failed) fail_msg("%d backward cases differ from the reference on rusticl", failed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_mode_takes_the_gpu_forms_on_rusticl),
        cmocka_unit_test(test_unfused_path_matches_reference_on_rusticl),
        cmocka_unit_test(test_fused_gpu_form_matches_reference_on_rusticl),
        cmocka_unit_test(test_fused_gpu_mm_form_matches_reference_on_rusticl),
        cmocka_unit_test(test_decode_gpu_form_matches_reference_on_rusticl),
        cmocka_unit_test(test_device_buffers_at_offsets_on_rusticl),
        cmocka_unit_test(test_backward_matches_reference_on_rusticl),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
