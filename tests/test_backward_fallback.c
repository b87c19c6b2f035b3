/* The backward pass's forms and fallback chain (src/backward/backward.c): the unfused form
 * (cl/backward_unfused.cl) against the float64 backward reference when asked for with
 * opt.path = unfused; a tiled form that fails to build gives way to the other tiled form,
 * and when both fail or a launch or allocation fails, auto mode ends on the unfused form:
 * the call still succeeds with correct gradients. A failing forced fused path returns its
 * error with every output untouched; CLATTN_PATH=unfused forces the unfused form; paths
 * that have no backward pass are refused; a tuning file's backward record picks the
 * form, and `clattn tune --path backward` writes one.
 * Tolerances are test_backward's (tests/helpers/test_backward_util.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward/backward.h" /* clattn__backward_last_form */
#include "cli_util.h" /* CLI_EXIT_OK */
#include "commands.h" /* cmd_tune */
#include "tuning/tuning.h"   /* the built-in backward row */
#include "test_backward_util.h"
#include "core/context.h"

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv
#define UNF .path = CLATTN_PATH_UNFUSED

/* The unfused form asked for: positions, GQA, layouts, fully masked rows, masks and the
 * float mask's gradient, softcap and ALiBi, f16 storage, Dv != D. */
static void test_unfused_backward_matches_reference(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    const attn_case cases[] = {
        {SHAPE(2, 4, 2, 19, 41, 32, 32), UNF, .seed = 1},
        {SHAPE(1, 2, 1, 30, 13, 32, 32), UNF, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 2},
        {SHAPE(1, 2, 2, 23, 23, 32, 32), UNF, .causal = CLATTN_CAUSAL_TOP_LEFT, .seed = 3},
        {SHAPE(1, 2, 2, 41, 47, 32, 32), UNF, .window = 1, .win_left = 3, .win_right = 2, .seed = 4},
        {SHAPE(3, 2, 2, 9, 25, 32, 32), UNF, .kv_lens = 1, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
         .seed = 5},
        {SHAPE(2, 2, 2, 11, 21, 32, 32), UNF, .blhd = 1, .seed = 6},
        {SHAPE(1, 2, 2, 0, 9, 32, 32), UNF, .seed = 7},
        {SHAPE(1, 2, 2, 5, 0, 32, 32), UNF, .seed = 8},
        {SHAPE(2, 4, 2, 17, 29, 32, 32), UNF, .mask_kind = ATTN_MASK_BOOL, .mask_rank = 4,
         .mask_ones = 1u | 4u, .seed = 9},
        {SHAPE(1, 4, 2, 23, 41, 32, 32), UNF, .softcap = 5.0f, .alibi = 1, .scale = 0.8f, .seed = 10},
        {SHAPE(1, 2, 2, 21, 27, 64, 64), UNF, .dtype = CLATTN_F16, .out_dtype = CLATTN_F16,
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 11},
    };
    int failed = check_backward_cases(ctx, cases, sizeof cases / sizeof cases[0], 0);
    assert_int_equal(clattn__backward_last_form, 2);
    const attn_case mask_cases[] = {
        {SHAPE(2, 4, 2, 19, 37, 32, 48), UNF, .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 3,
         .mask_ones = 2u, .seed = 12},
        {SHAPE(2, 2, 2, 19, 37, 32, 48), UNF, .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 4,
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 13},
    };
    failed += check_backward_cases(ctx, mask_cases, sizeof mask_cases / sizeof mask_cases[0], 1);
    if (failed) fail_msg("%d unfused backward cases differ from the reference", failed);
}

/* On a fresh context: a failed kernel build of the tuned tiled form (the first kernel get
 * of the call) gives way to the other tiled form; a failed first allocation sends auto
 * mode to the unfused form. Both give the reference's gradients. */
static void test_failures_fall_back_form_by_form(void **state)
{
    (void)state;
    clattn_context *ctx = test_context();
    const attn_case cases[] = {
        {SHAPE(1, 4, 2, 21, 35, 32, 32), .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 20},
        {SHAPE(2, 2, 2, 19, 37, 32, 48), .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 4, .seed = 21},
        {SHAPE(1, 4, 2, 21, 35, 32, 32), .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 22},
    };
    const clattn__fault_kind kinds[] = {CLATTN__FAULT_BUILD, CLATTN__FAULT_BUILD, CLATTN__FAULT_ALLOC};
    int first_fallback = -1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bwd_data b;
        bwd_data_make(&cases[i], cases[i].mask_kind == ATTN_MASK_FLOAT, &b);
        clattn__backward_last_form = -1;
        clattn__fault_arm(ctx, kinds[i], 1);
        const int bad = check_backward(ctx, &b);
        const uint64_t fired = clattn__fault_fired(ctx);
        clattn__fault_arm(ctx, kinds[i], 0);
        bwd_data_free(&b);
        assert_int_equal(fired, 1); /* the tiled form did fail */
        assert_int_equal(bad, 0);
        if (kinds[i] == CLATTN__FAULT_ALLOC) {
            assert_int_equal(clattn__backward_last_form, 2);
        } else {
            /* the other tiled form: CPU and GPU forms are 0 and 1 */
            assert_true(clattn__backward_last_form == 0 || clattn__backward_last_form == 1);
            if (i == 0) first_fallback = clattn__backward_last_form;
        }
    }
    /* the class whose tuned form failed keeps to the other form on this context */
    bwd_data b;
    bwd_data_make(&cases[0], 0, &b);
    assert_int_equal(check_backward(ctx, &b), 0);
    assert_int_equal(clattn__backward_last_form, first_fallback);
    bwd_data_free(&b);
    clattn_context_free(ctx);
}

/* CLATTN_FAIL_PATH's failures of the fused path, at build and at launch, fall back too;
 * with the fused path forced, failures are returned and nothing is written. */
static void test_fail_path_falls_back_or_is_returned_when_forced(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    const attn_case c = {SHAPE(1, 2, 2, 17, 33, 32, 32), .causal = CLATTN_CAUSAL_TOP_LEFT, .seed = 30};
    const char *stages[] = {"fused:build", "fused:launch"};
    for (int i = 0; i < 2; i++) {
        bwd_data b;
        bwd_data_make(&c, 0, &b);
        clattn__backward_last_form = -1;
        clattn__fail_path_set(ctx, stages[i]);
        const int bad = check_backward(ctx, &b);
        clattn__fail_path_set(ctx, "");
        bwd_data_free(&b);
        assert_int_equal(bad, 0);
        assert_int_equal(clattn__backward_last_form, 2); /* both tiled forms failed */
    }
    for (int i = 0; i < 2; i++) {
        attn_case cf = c;
        cf.path = CLATTN_PATH_FUSED;
        bwd_data b;
        bwd_data_make(&cf, 0, &b);
        const size_t bq = grad_bytes(b.nq, CLATTN_F32), bk = grad_bytes(b.nk, CLATTN_F32);
        unsigned char *sentinel = malloc(bq + bk);
        assert_non_null(sentinel);
        memset(sentinel, 0xff, bq + bk);
        /* a failed kernel get (the program is built by now, so CLATTN_FAIL_PATH's build
         * stage, which fails builds, no longer applies), then a failed launch */
        if (i == 0) clattn__fault_arm(ctx, CLATTN__FAULT_BUILD, 1);
        else clattn__fail_path_set(ctx, "fused:launch");
        const clattn_status st = run_backward(ctx, &b);
        clattn__fault_arm(ctx, CLATTN__FAULT_BUILD, 0);
        clattn__fail_path_set(ctx, "");
        assert_int_equal(st, i == 0 ? CLATTN_ERROR_BUILD_FAILED : (clattn_status)CL_OUT_OF_RESOURCES);
        assert_non_null(strstr(clattn_context_last_error(ctx), i == 0 ? "injected fault" : "launching"));
        assert_memory_equal(b.dq_buf, sentinel, bq);
        assert_memory_equal(b.dk_buf, sentinel, bk);
        free(sentinel);
        bwd_data_free(&b);
    }
}

/* CLATTN_PATH=unfused (read when the context is created) forces the unfused form in auto
 * mode; CLATTN_PATH=decode, a forward-only path, leaves the backward in auto mode. */
static void test_clattn_path_forces_the_unfused_form(void **state)
{
    (void)state;
    const char *values[] = {"unfused", "decode"};
    for (int i = 0; i < 2; i++) {
        setenv("CLATTN_PATH", values[i], 1);
        clattn_context *ctx = test_context();
        unsetenv("CLATTN_PATH");
        const attn_case c = {SHAPE(1, 2, 2, 17, 33, 32, 32), .seed = 35};
        bwd_data b;
        bwd_data_make(&c, 0, &b);
        clattn__backward_last_form = -1;
        assert_int_equal(check_backward(ctx, &b), 0);
        if (i == 0) assert_int_equal(clattn__backward_last_form, 2);
        else assert_true(clattn__backward_last_form == 0 || clattn__backward_last_form == 1);
        bwd_data_free(&b);
        clattn_context_free(ctx);
    }
}

/* decode and clblast have no backward pass: refused with a message, nothing written. */
static void test_paths_without_backward_are_refused(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    const clattn_path paths[] = {CLATTN_PATH_DECODE, CLATTN_PATH_CLBLAST};
    for (int i = 0; i < 2; i++) {
        const attn_case c = {SHAPE(1, 2, 2, 5, 9, 32, 32), .path = paths[i], .seed = 40};
        bwd_data b;
        bwd_data_make(&c, 0, &b);
        const size_t bq = grad_bytes(b.nq, CLATTN_F32);
        unsigned char *sentinel = malloc(bq);
        assert_non_null(sentinel);
        memset(sentinel, 0xff, bq);
        assert_int_equal(run_backward(ctx, &b), CLATTN_ERROR_PATH_UNSUPPORTED);
        assert_non_null(strstr(clattn_context_last_error(ctx), "no backward pass"));
        assert_memory_equal(b.dq_buf, sentinel, bq);
        free(sentinel);
        bwd_data_free(&b);
    }
}

/* A tuning file's backward record for this device picks the form (here the one the
 * built-in row does not) and its tiles; `clattn devices --tuning` shows the same row. */
static void test_tuning_file_record_picks_the_form(void **state)
{
    (void)state;
    clattn_context *probe = test_context();
    clattn_device_props props;
    assert_int_equal(clattn_context_device_props(probe, &props), CLATTN_SUCCESS);
    clattn__trow builtin;
    clattn__tuning_builtin(&probe->tuning->dev, CLATTN__TP_BACKWARD, &builtin, NULL);
    clattn_context_free(probe);
    const int other = 1 - builtin.form;
    char path[512], text[1024];
    snprintf(path, sizeof path, "%s/test-backward-tuning.json", CLATTN_TEST_BINARY_DIR);
    snprintf(text, sizeof text,
             "{\"clattn_tuning\": 1, \"records\": [{\"device\": {\"name\": \"%s\"}, "
             "\"path\": \"backward\", \"params\": {\"form\": \"%s\", \"block_m\": %d, \"block_n\": %d}}]}",
             props.name, other ? "gpu" : "cpu", other ? 16 : 8, other ? 16 : 32);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    setenv("CLATTN_TUNING_FILE", path, 1);
    clattn_context *ctx = test_context();
    unsetenv("CLATTN_TUNING_FILE");
    const attn_case c = {SHAPE(1, 4, 2, 37, 45, 32, 32), .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 50};
    bwd_data b;
    bwd_data_make(&c, 0, &b);
    clattn__backward_last_form = -1;
    assert_int_equal(check_backward(ctx, &b), 0);
    assert_int_equal(clattn__backward_last_form, other);
    bwd_data_free(&b);
    clattn_context_free(ctx);
    remove(path);
}

/* `clattn tune --path backward` times the backward rows and writes a backward record,
 * which the next context's backward row comes from. */
static void test_tune_path_backward_writes_a_record(void **state)
{
    (void)state;
    char out[512];
    snprintf(out, sizeof out, "%s/test-backward-tuned.json", CLATTN_TEST_BINARY_DIR);
    remove(out);
    /* one candidate: the other form's generic row */
    char *argv[] = {"tune", "--budget", "30", "--max-candidates", "1", "--path", "backward",
                    "--shape", "1,2,2,20,40,32", "--out", out, NULL};
    assert_int_equal(cmd_tune(11, argv), CLI_EXIT_OK);
    setenv("CLATTN_TUNING_FILE", out, 1);
    clattn_context *ctx = test_context();
    unsetenv("CLATTN_TUNING_FILE");
    const attn_case c = {SHAPE(1, 2, 2, 20, 40, 32, 32), .seed = 60};
    clattn__tclass cls;
    clattn__tclass_make(ctx, CLATTN__TP_BACKWARD, CLATTN_F32, 32, 32, 20, false, 1, -1, &cls);
    clattn__trow row;
    clattn__tsource src;
    clattn__tuning_row(ctx, CLATTN__TP_BACKWARD, &cls, &row, &src);
    if (!strstr(src.text, out)) fail_msg("the backward row came from %s, not %s", src.text, out);
    bwd_data b;
    bwd_data_make(&c, 0, &b);
    assert_int_equal(check_backward(ctx, &b), 0);
    assert_int_equal(clattn__backward_last_form, row.form);
    bwd_data_free(&b);
    clattn_context_free(ctx);
    remove(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unfused_backward_matches_reference),
        cmocka_unit_test(test_failures_fall_back_form_by_form),
        cmocka_unit_test(test_fail_path_falls_back_or_is_returned_when_forced),
        cmocka_unit_test(test_clattn_path_forces_the_unfused_form),
        cmocka_unit_test(test_paths_without_backward_are_refused),
        cmocka_unit_test(test_tuning_file_record_picks_the_form),
        cmocka_unit_test(test_tune_path_backward_writes_a_record),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
