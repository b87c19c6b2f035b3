/* The ABI policy in clattn.h: an older caller's smaller clattn_options is read with
 * defaults for the fields it lacks, a size that clattn_options_init never set is refused
 * with a message; const inputs need no cast; a KV-cache append returns an event and
 * options.wait_events hold a call back until the caller's own commands are done. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { B = 1, HQ = 4, HKV = 2, LQ = 3, LK = 7, D = 8, DV = 8 };
enum { NQ = B * HQ * LQ * D, NK = B * HKV * LK * D, NV = B * HKV * LK * DV, NO = B * HQ * LQ * DV };

/* Inputs are const arrays: clattn_tensor_host takes them as they are. */
static float g_q[NQ], g_k[NK], g_v[NV];

static void fill_inputs(void)
{
    for (int i = 0; i < NQ; i++) g_q[i] = (float)((i * 7) % 11) / 11.0f - 0.4f;
    for (int i = 0; i < NK; i++) g_k[i] = (float)((i * 5) % 13) / 13.0f - 0.5f;
    for (int i = 0; i < NV; i++) g_v[i] = (float)((i * 3) % 7) / 7.0f;
}

static void expect_close(const float *got, const double *want, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= 2e-4 + 2e-3 * fabs(want[i])))
            fail_msg("%s: o[%d] = %.7g, reference %.7g", what, i, (double)got[i], want[i]);
}

/* The reference with full-size options: causal top-left, everything else default. */
static void reference_causal(double *out)
{
    const float *cq = g_q, *ck = g_k, *cv = g_v;
    clattn_tensor tq = clattn_tensor_host(cq, CLATTN_F32, B, HQ, LQ, D);
    clattn_tensor tk = clattn_tensor_host(ck, CLATTN_F32, B, HKV, LK, D);
    clattn_tensor tv = clattn_tensor_host(cv, CLATTN_F32, B, HKV, LK, DV);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_TOP_LEFT;
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, NULL), CLATTN_SUCCESS);
}

static void test_options_init_sets_its_own_size(void **state)
{
    (void)state;
    clattn_options opt;
    memset(&opt, 0x5a, sizeof opt);
    clattn_options_init(&opt);
    assert_int_equal(opt.struct_size, sizeof(clattn_options));
    assert_null(opt.wait_events);
    assert_int_equal(opt.num_wait_events, 0);
    assert_true(CLATTN_OPTIONS_SIZE_0_2 < sizeof(clattn_options));
}

/* An older caller's struct ends after `path`; the bytes after it belong to the caller
 * (here: garbage that would be an invalid wait list) and must not be read. */
static void test_older_smaller_options_are_accepted(void **state)
{
    (void)state;
    fill_inputs();
    double want[NO];
    reference_causal(want);

    /* as an older caller's clattn_options_init does: only its own bytes are written */
    union {
        clattn_options opt;
        unsigned char raw[sizeof(clattn_options)];
    } u;
    memset(u.raw, 0xab, sizeof u.raw);
    clattn_options_init_sized(&u.opt, CLATTN_OPTIONS_SIZE_0_2);
    assert_int_equal(u.opt.struct_size, CLATTN_OPTIONS_SIZE_0_2);
    for (size_t i = CLATTN_OPTIONS_SIZE_0_2; i < sizeof u.raw; i++)
        if (u.raw[i] != 0xab) fail_msg("init of a %zu-byte struct wrote byte %zu", (size_t)CLATTN_OPTIONS_SIZE_0_2, i);
    u.opt.causal = CLATTN_CAUSAL_TOP_LEFT;
    const clattn_options *old = &u.opt;

    clattn_tensor tq = clattn_tensor_host(g_q, CLATTN_F32, B, HQ, LQ, D);
    clattn_tensor tk = clattn_tensor_host(g_k, CLATTN_F32, B, HKV, LK, D);
    clattn_tensor tv = clattn_tensor_host(g_v, CLATTN_F32, B, HKV, LK, DV);
    float o[NO];
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, HQ, LQ, DV);
    clattn_context *ctx = test_shared_context();
    clattn_status st = clattn_attention(ctx, &tq, &tk, &tv, &to, old, NULL);
    if (st != CLATTN_SUCCESS)
        fail_msg("older options refused: %s: %s", clattn_status_string(st), clattn_context_last_error(ctx));
    expect_close(o, want, NO, "attention with a smaller options struct");

    double ref[NO];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, old, ref, NULL), CLATTN_SUCCESS);
    for (int i = 0; i < NO; i++) assert_true(fabs(ref[i] - want[i]) <= 1e-12);
}

static void test_garbage_options_size_is_refused(void **state)
{
    (void)state;
    fill_inputs();
    clattn_tensor tq = clattn_tensor_host(g_q, CLATTN_F32, B, HQ, LQ, D);
    clattn_tensor tk = clattn_tensor_host(g_k, CLATTN_F32, B, HKV, LK, D);
    clattn_tensor tv = clattn_tensor_host(g_v, CLATTN_F32, B, HKV, LK, DV);
    float o[NO];
    for (int i = 0; i < NO; i++) o[i] = 42.0f;
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, HQ, LQ, DV);
    clattn_context *ctx = test_shared_context();
    const size_t bad[] = {0, 8, CLATTN_OPTIONS_SIZE_0_2 - 1, sizeof(clattn_options) + 8,
                          (size_t)0xdeadbeefcafe};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        clattn_options opt;
        clattn_options_init(&opt);
        opt.struct_size = bad[i];
        clattn_status st = clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, NULL);
        const char *msg = clattn_context_last_error(ctx);
        if (st != CLATTN_ERROR_INVALID_ARGUMENT || !strstr(msg, "struct_size"))
            fail_msg("struct_size %zu: expected INVALID_ARGUMENT naming struct_size, got %s: '%s'",
                     bad[i], clattn_status_string(st), msg);
        double ref[NO];
        assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, ref, NULL),
                         CLATTN_ERROR_INVALID_ARGUMENT);
    }
    for (int i = 0; i < NO; i++) assert_true(o[i] == 42.0f);

    clattn_options opt;
    clattn_options_init(&opt);
    opt.num_wait_events = 2; /* and no list */
    assert_int_equal(clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(ctx), "wait_events"));
}

/* The app writes Q on a queue of its own; clattn waits for that write through
 * options.wait_events, appends K and V to a cache returning an event, and its
 * attention's event completes with the right output. */
static void test_events_chain_into_and_out_of_clattn(void **state)
{
    (void)state;
    fill_inputs();
    clattn_context *ctx = test_shared_context();
    cl_context cl = clattn_context_cl_context(ctx);
    cl_device_id dev = clattn_context_cl_device(ctx);
    cl_int err;
    cl_command_queue app_queue = clCreateCommandQueue(cl, dev, 0, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_mem qb = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof g_q, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_mem kb = clCreateBuffer(cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof g_k, g_k, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_mem vb = clCreateBuffer(cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof g_v, g_v, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_mem ob = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float) * NO, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);

    clattn_kv_cache *cache = NULL;
    assert_int_equal(clattn_kv_cache_create(ctx, B, HKV, 16, D, DV, CLATTN_KV_F32, CLATTN_KV_F32, &cache),
                     CLATTN_SUCCESS);
    clattn_tensor tk = clattn_tensor_cl(kb, 0, CLATTN_F32, B, HKV, LK, D);
    clattn_tensor tv = clattn_tensor_cl(vb, 0, CLATTN_F32, B, HKV, LK, DV);
    cl_event appended = NULL;
    assert_int_equal(clattn_kv_cache_append_with_event(cache, &tk, &tv, NULL, &appended), CLATTN_SUCCESS);
    assert_non_null(appended);
    assert_int_equal(clWaitForEvents(1, &appended), CL_SUCCESS);
    clReleaseEvent(appended);
    /* appending nothing still gives an event to chain on */
    const int32_t none[B] = {0};
    appended = NULL;
    assert_int_equal(clattn_kv_cache_append_with_event(cache, &tk, &tv, none, &appended), CLATTN_SUCCESS);
    assert_non_null(appended);
    assert_int_equal(clWaitForEvents(1, &appended), CL_SUCCESS);
    clReleaseEvent(appended);

    cl_event written = NULL;
    assert_int_equal(clEnqueueWriteBuffer(app_queue, qb, CL_FALSE, 0, sizeof g_q, g_q, 0, NULL, &written),
                     CL_SUCCESS);
    clFlush(app_queue);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_TOP_LEFT;
    opt.wait_events = &written;
    opt.num_wait_events = 1;
    clattn_tensor tq = clattn_tensor_cl(qb, 0, CLATTN_F32, B, HQ, LQ, D);
    clattn_tensor to = clattn_tensor_cl(ob, 0, CLATTN_F32, B, HQ, LQ, DV);
    cl_event done = NULL;
    clattn_status st = clattn_kv_cache_attention(ctx, cache, &tq, &to, &opt, &done);
    if (st != CLATTN_SUCCESS) fail_msg("kv attention: %s", clattn_context_last_error(ctx));
    float o[NO];
    /* the read waits on clattn's event from the app's queue */
    assert_int_equal(clEnqueueReadBuffer(app_queue, ob, CL_TRUE, 0, sizeof o, o, 1, &done, NULL), CL_SUCCESS);
    double want[NO];
    reference_causal(want);
    expect_close(o, want, NO, "kv attention chained through events");

    /* the same through clattn_attention */
    for (int i = 0; i < NO; i++) o[i] = 0.0f;
    clReleaseEvent(done);
    done = NULL;
    st = clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, &done);
    if (st != CLATTN_SUCCESS) fail_msg("attention: %s", clattn_context_last_error(ctx));
    assert_int_equal(clEnqueueReadBuffer(app_queue, ob, CL_TRUE, 0, sizeof o, o, 1, &done, NULL), CL_SUCCESS);
    expect_close(o, want, NO, "attention chained through events");

    clReleaseEvent(done);
    clReleaseEvent(written);
    clattn_kv_cache_free(cache);
    clReleaseMemObject(qb);
    clReleaseMemObject(kb);
    clReleaseMemObject(vb);
    clReleaseMemObject(ob);
    clReleaseCommandQueue(app_queue);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_init_sets_its_own_size),
        cmocka_unit_test(test_older_smaller_options_are_accepted),
        cmocka_unit_test(test_garbage_options_size_is_refused),
        cmocka_unit_test(test_events_chain_into_and_out_of_clattn),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
