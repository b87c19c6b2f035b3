/* Helpers shared by the cmocka tests (see test_util.h): creating the context every device
 * test needs, and running attention cases with a readable report when one fails. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>

clattn_context *test_context(void)
{
    size_t count = 0;
    clattn_status st = clattn_device_count(&count);
    if (st != CLATTN_SUCCESS || count == 0)
        fail_msg("no OpenCL device found (clattn_device_count: %s, count %zu): install an "
                 "OpenCL driver, e.g. pocl-opencl-icd; the tests need a device",
                 clattn_status_string(st), count);
    clattn_context *ctx = NULL;
    st = clattn_context_create(NULL, &ctx);
    if (st != CLATTN_SUCCESS || ctx == NULL)
        fail_msg("clattn_context_create(default device) failed: %s", clattn_status_string(st));
    return ctx;
}

static clattn_context *shared_ctx;

clattn_context *test_shared_context(void)
{
    if (!shared_ctx) shared_ctx = test_context();
    return shared_ctx;
}

int test_shared_context_teardown(void **state)
{
    (void)state;
    clattn_context_free(shared_ctx);
    shared_ctx = NULL;
    return 0;
}

/* 0: passed, 1: failed, 2: skipped (unsupported and allowed). */
static int run_one(clattn_context *ctx, const attn_case *base, clattn_path path, int flags)
{
    attn_case c = *base;
    c.path = path;
    char desc[512], res[768];
    attn_case_format(&c, desc, sizeof desc);

    attn_case_data *d = NULL;
    clattn_status st = attn_case_data_create(&c, &d);
    if (st != CLATTN_SUCCESS) {
        print_error("%s\n  data: %s\n", desc, clattn_status_string(st));
        return 1;
    }
    if (flags & (TEST_ON_DEVICE | TEST_ON_DEVICE_PACKED)) {
        st = (flags & TEST_ON_DEVICE_PACKED) ? attn_case_data_upload_packed(ctx, d)
                                             : attn_case_data_upload(ctx, d);
        if (st != CLATTN_SUCCESS) {
            print_error("%s\n  upload: %s\n", desc, clattn_status_string(st));
            attn_case_data_free(d);
            return 1;
        }
    }
    st = attn_case_run(ctx, &c, d, NULL);
    if (st == CLATTN_ERROR_PATH_UNSUPPORTED && (flags & TEST_ALLOW_UNSUPPORTED)) {
        attn_case_data_free(d);
        return 2;
    }
    if (st != CLATTN_SUCCESS) {
        print_error("%s\n  clattn_attention: %s: %s\n", desc, clattn_status_string(st),
                    clattn_context_last_error(ctx));
        attn_case_data_free(d);
        return 1;
    }
    attn_case_result r;
    st = attn_case_compare(&c, d, &r);
    attn_case_data_free(d);
    if (st != CLATTN_SUCCESS) {
        print_error("%s\n  compare: %s\n", desc, clattn_status_string(st));
        return 1;
    }
    if (!r.ok) {
        attn_case_result_format(&r, res, sizeof res);
        print_error("%s\n  path used: %s\n  %s\n", desc,
                    clattn_path_name(clattn_context_last_path(ctx)), res);
        return 1;
    }
    return 0;
}

size_t test_run_cases(clattn_context *ctx, const attn_case *cases, size_t n,
                      clattn_path path, int flags)
{
    size_t failed = 0, ran = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = run_one(ctx, &cases[i], path, flags);
        failed += rc == 1;
        ran += rc != 2;
    }
    if (failed)
        fail_msg("%zu of %zu cases failed on path %s (printed above)", failed, n,
                 clattn_path_name(path));
    return ran;
}

size_t test_run_random_cases(clattn_context *ctx, uint64_t first_seed, size_t count,
                             clattn_path path, int flags)
{
    size_t failed = 0, ran = 0;
    for (size_t i = 0; i < count; i++) {
        attn_case c;
        attn_case_random(first_seed + i, &c);
        int rc = run_one(ctx, &c, path, flags);
        failed += rc == 1;
        ran += rc != 2;
    }
    if (failed)
        fail_msg("%zu of %zu random cases failed on path %s (printed above; "
                 "attn_case_random(seed) rebuilds one)",
                 failed, count, clattn_path_name(path));
    return ran;
}

size_t test_case_count(size_t dflt)
{
    const char *s = getenv("CLATTN_TEST_CASES");
    if (!s || !*s) return dflt;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    return *end == '\0' ? (size_t)v : dflt;
}

bool test_case_matches(const attn_case *c, attn_case_data *d, char *why, size_t len)
{
    attn_case_result r;
    assert_int_equal(attn_case_compare(c, d, &r), CLATTN_SUCCESS);
    if (!r.ok) attn_case_result_format(&r, why, len);
    return r.ok;
}

attn_case_data *test_case_prepare(const attn_case *c, clattn_tensor *q, clattn_tensor *k,
                                  clattn_tensor *v, clattn_tensor *o, clattn_options *opt)
{
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(c, &d), CLATTN_SUCCESS);
    attn_case_tensors(d, q, k, v, o);
    attn_case_options(c, d, opt);
    return d;
}

int test_group_check_case(clattn_group *g, const attn_case *c, int *by_keys)
{
    clattn_tensor q, k, v, o;
    clattn_options opt;
    attn_case_data *d = test_case_prepare(c, &q, &k, &v, &o, &opt);
    clattn_status st = clattn_group_attention(g, &q, &k, &v, &o, &opt);
    char line[512], res[768];
    attn_case_format(c, line, sizeof line);
    int bad = 0;
    if (st != CLATTN_SUCCESS) {
        print_error("%s: %s: %s\n", line, clattn_status_string(st), clattn_group_last_error(g));
        bad = 1;
    } else if (!test_case_matches(c, d, res, sizeof res)) {
        print_error("%s: %s\n", line, res);
        bad = 1;
    }
    int split_by_keys = 0;
    clattn_group_last_split(g, 0, &split_by_keys, NULL, NULL, NULL);
    if (by_keys) *by_keys = split_by_keys;
    attn_case_data_free(d);
    return bad;
}
