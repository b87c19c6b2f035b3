/* The fallback chain (src/paths/dispatch.c): with CLATTN_FAIL_PATH making paths fail at build or
 * launch as a broken driver would, auto mode must answer correctly from the next path,
 * record the failure on the context and not retry it, and give NO_USABLE_PATH naming the
 * device when every path fails; a forced path's failure is the call's own. Written over
 * whatever paths this build has, so it keeps holding as paths are added. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "core/faults.h"

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv

/* A prefill-like case (too many queries for decode) and a decode-like one (every path). */
static const attn_case prefill = {SHAPE(1, 4, 2, 24, 40, 32, 32), .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
                                  .lse = 1, .seed = 501};
static const attn_case decode = {SHAPE(2, 4, 2, 4, 50, 32, 32), .kv_lens = 1, .lse = 1, .seed = 502};

static int teardown(void **state)
{
    (void)state;
    unsetenv("CLATTN_FAIL_PATH");
    return 0;
}

/* Run case c on ctx with path `path`; on success check O and LSE against the reference. */
static clattn_status run_checked(clattn_context *ctx, const attn_case *base, clattn_path path)
{
    attn_case c = *base;
    c.path = path;
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    clattn_status st = attn_case_run(ctx, &c, d, NULL);
    if (st == CLATTN_SUCCESS) {
        char buf[768];
        if (!test_case_matches(&c, d, buf, sizeof buf)) {
            fail_msg("path %s answered wrongly: %s", clattn_path_name(clattn_context_last_path(ctx)), buf);
        }
    }
    attn_case_data_free(d);
    return st;
}

static void add_fail(char *list, size_t cap, clattn_path p, const char *stage)
{
    size_t len = strlen(list);
    snprintf(list + len, cap - len, "%s%s:%s", len ? "," : "", clattn_path_name(p), stage);
}

static int index_of(const clattn_path *chain, size_t n, clattn_path p)
{
    for (size_t i = 0; i < n; i++)
        if (chain[i] == p) return (int)i;
    return -1;
}

/* Fail, one after another, the path auto mode answered with, on a fresh context each
 * time: each step must answer correctly from a new path with every earlier failure
 * recorded, and the last must be NO_USABLE_PATH naming the device. */
static size_t walk_chain(const attn_case *c, const char *stage, clattn_status want_status,
                         clattn_path *chain)
{
    char fail[256] = "";
    size_t n = 0;
    for (;;) {
        setenv("CLATTN_FAIL_PATH", fail, 1); /* read when the context is created */
        clattn_context *ctx = test_context();
        clattn_status st = run_checked(ctx, c, CLATTN_PATH_AUTO);
        assert_int_equal(clattn_context_failure_count(ctx), n);
        for (size_t i = 0; i < n; i++) {
            clattn_path p;
            clattn_status fst;
            const char *reason = NULL;
            assert_int_equal(clattn_context_failure_get(ctx, i, &p, &fst, &reason), CLATTN_SUCCESS);
            assert_int_equal(p, chain[i]);
            assert_int_equal(fst, want_status);
            assert_non_null(reason);
            assert_true(reason[0] != '\0');
        }
        if (st == CLATTN_ERROR_NO_USABLE_PATH) {
            clattn_device_props props;
            assert_int_equal(clattn_context_device_props(ctx, &props), CLATTN_SUCCESS);
            const char *msg = clattn_context_last_error(ctx);
            if (!strstr(msg, props.name))
                fail_msg("NO_USABLE_PATH message does not name the device '%s': %s", props.name, msg);
            clattn_context_free(ctx);
            break;
        }
        if (st != CLATTN_SUCCESS)
            fail_msg("with CLATTN_FAIL_PATH=%s: %s: %s", fail, clattn_status_string(st),
                     clattn_context_last_error(ctx));
        const clattn_path used = clattn_context_last_path(ctx);
        if (index_of(chain, n, used) >= 0)
            fail_msg("path %s answered although CLATTN_FAIL_PATH=%s", clattn_path_name(used), fail);
        assert_true(n < CLATTN_PATH_COUNT_);
        chain[n++] = used;
        add_fail(fail, sizeof fail, used, stage);
        clattn_context_free(ctx);
    }
    unsetenv("CLATTN_FAIL_PATH");
    return n;
}

/* The order every device must keep: fused (if built) before CLBlast (if built) on this
 * CPU device, where CLBlast is not measured faster, and unfused last. */
static void check_order(const clattn_path *chain, size_t n)
{
    assert_true(n >= 1);
    assert_int_equal(chain[n - 1], CLATTN_PATH_UNFUSED);
    int fused = index_of(chain, n, CLATTN_PATH_FUSED);
    int blas = index_of(chain, n, CLATTN_PATH_CLBLAST);
    if (clattn_path_available(CLATTN_PATH_CLBLAST)) assert_true(blas >= 0);
    if (clattn_path_available(CLATTN_PATH_FUSED)) assert_true(fused >= 0);
    clattn_device_props props;
    clattn_context *ctx = test_context();
    assert_int_equal(clattn_context_device_props(ctx, &props), CLATTN_SUCCESS);
    clattn_context_free(ctx);
    if (fused >= 0 && blas >= 0 && props.type == CLATTN_DEVICE_CPU) assert_true(fused < blas);
}

static void print_chain(const char *what, const clattn_path *chain, size_t n)
{
    char buf[128] = "";
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, sizeof buf - len, "%s%s", i ? " -> " : "", clattn_path_name(chain[i]));
    }
    print_message("%s: %s -> no usable path\n", what, buf);
}

static void test_build_failures_fall_through_every_path_to_no_usable_path(void **state)
{
    (void)state;
    clattn_path chain[CLATTN_PATH_COUNT_];
    size_t n = walk_chain(&prefill, "build", CLATTN_ERROR_BUILD_FAILED, chain);
    print_chain("prefill, build failures", chain, n);
    check_order(chain, n);
    n = walk_chain(&decode, "build", CLATTN_ERROR_BUILD_FAILED, chain);
    print_chain("decode, build failures", chain, n);
    check_order(chain, n);
    if (clattn_path_available(CLATTN_PATH_DECODE)) assert_int_equal(chain[0], CLATTN_PATH_DECODE);
}

static void test_launch_failures_fall_through_every_path_to_no_usable_path(void **state)
{
    (void)state;
    clattn_path chain[CLATTN_PATH_COUNT_];
    size_t n = walk_chain(&prefill, "launch", (clattn_status)CL_OUT_OF_RESOURCES, chain);
    print_chain("prefill, launch failures", chain, n);
    check_order(chain, n);
    n = walk_chain(&decode, "launch", (clattn_status)CL_OUT_OF_RESOURCES, chain);
    print_chain("decode, launch failures", chain, n);
    check_order(chain, n);
}

/* A failed path is skipped on later calls of the same problem class on that context (no
 * retry, no new record) and still used for other classes. The decode-like case, which
 * every build can answer from at least two paths. */
static void test_failed_path_is_remembered_and_not_retried(void **state)
{
    (void)state;
    clattn_context *ctx = test_context();
    assert_int_equal(run_checked(ctx, &decode, CLATTN_PATH_AUTO), CLATTN_SUCCESS);
    const clattn_path first = clattn_context_last_path(ctx);

    /* the context read CLATTN_FAIL_PATH when it was created: change its copy */
    char fail[64] = "";
    add_fail(fail, sizeof fail, first, "launch");
    clattn__fail_path_set(ctx, fail);
    assert_int_equal(run_checked(ctx, &decode, CLATTN_PATH_AUTO), CLATTN_SUCCESS);
    const clattn_path second = clattn_context_last_path(ctx);
    assert_int_not_equal(second, first);
    assert_int_equal(clattn_context_failure_count(ctx), 1);
    clattn_path p;
    clattn_status fst;
    const char *reason;
    assert_int_equal(clattn_context_failure_get(ctx, 0, &p, &fst, &reason), CLATTN_SUCCESS);
    assert_int_equal(p, first);
    assert_int_equal(fst, (clattn_status)CL_OUT_OF_RESOURCES);
    assert_non_null(strstr(reason, "CL_OUT_OF_RESOURCES"));

    /* the driver "recovers", but the context remembers */
    clattn__fail_path_set(ctx, "");
    assert_int_equal(run_checked(ctx, &decode, CLATTN_PATH_AUTO), CLATTN_SUCCESS);
    assert_int_equal(clattn_context_last_path(ctx), second);
    assert_non_null(strstr(clattn_context_last_path_reason(ctx), "failed before"));
    assert_int_equal(clattn_context_failure_count(ctx), 1);

    /* another problem class (head size) is not affected */
    attn_case other = decode;
    other.D = other.Dv = 48;
    assert_int_equal(run_checked(ctx, &other, CLATTN_PATH_AUTO), CLATTN_SUCCESS);
    assert_int_equal(clattn_context_last_path(ctx), first);

    /* a failure_get index out of range is an argument error */
    assert_int_equal(clattn_context_failure_get(ctx, 1, &p, &fst, &reason),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    clattn_context_free(ctx);
}

/* A forced path does not fall back: its build or launch failure is the call's status.
 * Fresh contexts: a program already built on a context is not built again, so a build
 * failure can only show on a context that has not built it yet. */
static void test_forced_path_failure_is_returned_without_fallback(void **state)
{
    (void)state;
    for (int p = CLATTN_PATH_AUTO + 1; p < CLATTN_PATH_COUNT_; p++) {
        if (!clattn_path_available((clattn_path)p)) continue;
        /* with the switch off the forced path answers (or declines this shape) */
        unsetenv("CLATTN_FAIL_PATH");
        clattn_context *ctx = test_context();
        clattn_status ok = run_checked(ctx, &decode, (clattn_path)p);
        if (ok == CLATTN_ERROR_PATH_UNSUPPORTED) {
            print_message("path %s does not support the case: %s\n", clattn_path_name((clattn_path)p),
                          clattn_context_last_error(ctx));
            clattn_context_free(ctx);
            continue;
        }
        assert_int_equal(ok, CLATTN_SUCCESS);
        assert_int_equal(clattn_context_last_path(ctx), p);
        clattn_context_free(ctx);

        const char *stages[2] = {"build", "launch"};
        const clattn_status want[2] = {CLATTN_ERROR_BUILD_FAILED, (clattn_status)CL_OUT_OF_RESOURCES};
        for (int s = 0; s < 2; s++) {
            char fail[64] = "";
            add_fail(fail, sizeof fail, (clattn_path)p, stages[s]);
            setenv("CLATTN_FAIL_PATH", fail, 1);
            ctx = test_context();
            clattn_status st = run_checked(ctx, &decode, (clattn_path)p);
            if (st != want[s])
                fail_msg("forced %s with CLATTN_FAIL_PATH=%s returned %s (%s), want %s",
                         clattn_path_name((clattn_path)p), fail, clattn_status_string(st),
                         clattn_context_last_error(ctx), clattn_status_string(want[s]));
            /* the message says why: the switch for builds, the driver's code for launches */
            const char *why = s == 0 ? "CLATTN_FAIL_PATH" : "CL_OUT_OF_RESOURCES";
            if (!strstr(clattn_context_last_error(ctx), why))
                fail_msg("message does not mention %s: %s", why, clattn_context_last_error(ctx));
            assert_int_equal(clattn_context_failure_count(ctx), 0);
            clattn_context_free(ctx);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_build_failures_fall_through_every_path_to_no_usable_path, teardown),
        cmocka_unit_test_teardown(test_launch_failures_fall_through_every_path_to_no_usable_path, teardown),
        cmocka_unit_test_teardown(test_failed_path_is_remembered_and_not_retried, teardown),
        cmocka_unit_test_teardown(test_forced_path_failure_is_returned_without_fallback, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
