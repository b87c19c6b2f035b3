/* The CPU kernel forms (cl/flash_cpu.cl, cl/decode.cl's work-item form) on Mesa's rusticl,
 * an OpenCL implementation independent of PoCL, where test_fused_path and
 * test_decode_path run them. Auto mode on llvmpipe takes the GPU forms (test_rusticl);
 * here a tuning file gives llvmpipe rows of the CPU forms with one row and one output
 * vector per pass, which llvmpipe builds in seconds where the PoCL rows' unrolled float16
 * code takes minutes (docs/measurements.md). The cases are the SPEC suite's that share
 * one build per form: float32, no mask, softcap or ALiBi (those are -D options), every
 * run-time option (causal both ways, windows, key lengths, LSE, GQA, scale). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_scratch.h"
#include "test_util.h"
#include "tuning/tuning.h"

#include <stdio.h>
#include <stdlib.h>

static clattn_context *ctx;

static int setup(void **state)
{
    (void)state;
    if (test_scratch_create("rusticl-cpu") != 0) return -1;
    const char *file = test_scratch_path("tuning.json");
    FILE *f = fopen(file, "w");
    if (!f) return -1;
    fputs("{\"clattn_tuning\": 1, \"records\": [\n"
          " {\"device\": {\"name\": \"llvmpipe\"}, \"path\": \"fused\",\n"
          "  \"params\": {\"form\": \"cpu\", \"block_m\": 1, \"block_n\": 64, \"dv_chunk\": 1,"
          " \"row_groups\": 1, \"wg\": 1}},\n"
          " {\"device\": {\"name\": \"llvmpipe\"}, \"path\": \"decode\",\n"
          "  \"params\": {\"form\": \"cpu\", \"rows\": 1, \"vw\": 4, \"ktile\": 16, \"wg\": 1,"
          " \"prefetch\": 0}}]}\n",
          f);
    if (fclose(f) != 0) return -1;
    return 0;
}

static int teardown(void **state)
{
    clattn_context_free(ctx);
    ctx = NULL;
    return test_scratch_remove(state);
}

/* The rusticl context, reading the tuning file (the environment is read once, when a
 * context is created). */
static clattn_context *rusticl(void)
{
    if (ctx) return ctx;
    size_t index;
    if (clattn_device_find("llvmpipe", &index) != CLATTN_SUCCESS)
        fail_msg("no rusticl llvmpipe device: install mesa-opencl-icd and set "
                 "RUSTICL_ENABLE=llvmpipe (CTest sets it for this test)");
    setenv("CLATTN_TUNING_FILE", test_scratch_path("tuning.json"), 1);
    clattn_status st = clattn_context_create("llvmpipe", &ctx);
    unsetenv("CLATTN_TUNING_FILE");
    if (st != CLATTN_SUCCESS) fail_msg("rusticl context: %s", clattn_status_string(st));
    return ctx;
}

/* Suite cases of one build: float32 storage, no mask, softcap or ALiBi, head size d. */
static size_t one_build_cases(int64_t d, bool decode, attn_case *out, size_t cap)
{
    size_t n, k = 0;
    const attn_case *suite = attn_case_suite(&n);
    for (size_t i = 0; i < n && k < cap; i++) {
        const attn_case *c = &suite[i];
        if (c->dtype != CLATTN_F32 || c->out_dtype != CLATTN_F32 || c->mask_kind != ATTN_MASK_NONE ||
            c->softcap != 0.0f || c->alibi || c->D != d || attn_case_dv(c) != d)
            continue;
        if (decode != (c->Lq <= 8)) continue;
        out[k++] = *c;
    }
    if (k < 4) fail_msg("only %zu suite cases for head size %lld", k, (long long)d);
    return k;
}

static void check_form(clattn_path path, clattn__tpath tpath, int64_t d, bool decode)
{
    /* the row in force is the file's CPU form, not llvmpipe's built-in GPU form */
    clattn__tclass cls;
    clattn__tclass_make(rusticl(), tpath, CLATTN_F32, d, d, decode ? 1 : 256, false, 1, 0, &cls);
    clattn__trow row;
    clattn__tsource src;
    clattn__tuning_row(rusticl(), tpath, &cls, &row, &src);
    if (row.form != 0) fail_msg("%s: form %s (%s)", clattn__tpath_name(tpath),
                                clattn__tform_name(tpath, row.form), src.text);
    attn_case cases[64];
    const size_t n = one_build_cases(d, decode, cases, 64);
    test_run_cases(rusticl(), cases, n, path, 0);
}

static void test_fused_cpu_form_matches_reference_on_rusticl(void **state)
{
    (void)state;
    check_form(CLATTN_PATH_FUSED, CLATTN__TP_FUSED, 64, false);
}

static void test_decode_cpu_form_matches_reference_on_rusticl(void **state)
{
    (void)state;
    check_form(CLATTN_PATH_DECODE, CLATTN__TP_DECODE, 128, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fused_cpu_form_matches_reference_on_rusticl),
        cmocka_unit_test(test_decode_cpu_form_matches_reference_on_rusticl),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
