/* The public API's contracts: every bad argument is refused with its own status and a
 * message naming it, and leaves the output untouched; contexts on clattn's own device or
 * on the caller's cl_context and queue; cl_mem tensors with an event and no host copies;
 * parameters with bounds; status names; devices; version; descriptor helpers. */
#include "test_util.h"
#include "core/context.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A small valid problem on the host; each test breaks one thing. */
enum { B = 2, HQ = 4, HKV = 2, LQ = 3, LK = 5, D = 8, DV = 6 };
typedef struct problem {
    float q[B * HQ * LQ * D], k[B * HKV * LK * D], v[B * HKV * LK * DV], o[B * HQ * LQ * DV];
    float lse[B * HQ * LQ], alibi[HQ], fmask[LQ * LK];
    unsigned char bmask[LQ * LK];
    int32_t kv_lens[B];
    clattn_tensor tq, tk, tv, to, tlse, talibi, tmask, tkvl;
    clattn_options opt;
} problem;

static void problem_init(problem *p)
{
    memset(p, 0, sizeof *p);
    for (size_t i = 0; i < sizeof p->q / sizeof p->q[0]; i++) p->q[i] = (float)((i * 7) % 11) / 11.0f;
    for (size_t i = 0; i < sizeof p->k / sizeof p->k[0]; i++) p->k[i] = (float)((i * 5) % 13) / 13.0f;
    for (size_t i = 0; i < sizeof p->v / sizeof p->v[0]; i++) p->v[i] = (float)((i * 3) % 7) / 7.0f;
    for (size_t i = 0; i < sizeof p->o / sizeof p->o[0]; i++) p->o[i] = 42.0f;
    p->tq = clattn_tensor_host(p->q, CLATTN_F32, B, HQ, LQ, D);
    p->tk = clattn_tensor_host(p->k, CLATTN_F32, B, HKV, LK, D);
    p->tv = clattn_tensor_host(p->v, CLATTN_F32, B, HKV, LK, DV);
    p->to = clattn_tensor_host(p->o, CLATTN_F32, B, HQ, LQ, DV);
    p->tlse = clattn_tensor_host(p->lse, CLATTN_F32, B, HQ, LQ, 1);
    p->talibi = clattn_tensor_host(p->alibi, CLATTN_F32, HQ, 1, 1, 1);
    p->tmask = clattn_tensor_host(p->bmask, CLATTN_BOOL, 1, 1, LQ, LK);
    p->tkvl = clattn_tensor_host(p->kv_lens, CLATTN_I32, B, 1, 1, 1);
    p->kv_lens[0] = 2;
    p->kv_lens[1] = LK;
    clattn_options_init(&p->opt);
}

/* Run p and require status `want`, a message containing `needle`, and O untouched. */
static void expect_refused(problem *p, clattn_status want, const char *needle)
{
    clattn_status st = clattn_attention(test_shared_context(), &p->tq, &p->tk, &p->tv, &p->to, &p->opt, NULL);
    const char *msg = clattn_context_last_error(test_shared_context());
    if (st != want || (needle && !strstr(msg, needle)))
        fail_msg("expected %s mentioning '%s', got %s: '%s'", clattn_status_string(want),
                 needle ? needle : "", clattn_status_string(st), msg);
    for (size_t i = 0; i < sizeof p->o / sizeof p->o[0]; i++)
        if (p->o[i] != 42.0f) fail_msg("a refused call wrote o[%zu] = %g", i, (double)p->o[i]);
}

static void test_valid_problem_runs(void **state)
{
    (void)state;
    problem *p = malloc(sizeof *p);
    problem_init(p);
    assert_int_equal(clattn_attention(test_shared_context(), &p->tq, &p->tk, &p->tv, &p->to, &p->opt, NULL),
                     CLATTN_SUCCESS);
    assert_true(p->o[0] != 42.0f);
    free(p);
}

static void test_null_arguments_are_refused(void **state)
{
    (void)state;
    problem *p = malloc(sizeof *p);
    problem_init(p);
    assert_int_equal(clattn_attention(NULL, &p->tq, &p->tk, &p->tv, &p->to, NULL, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_attention(test_shared_context(), NULL, &p->tk, &p->tv, &p->to, NULL, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(test_shared_context()), "q is NULL"));
    assert_int_equal(clattn_attention(test_shared_context(), &p->tq, &p->tk, NULL, &p->to, NULL, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_attention(test_shared_context(), &p->tq, &p->tk, &p->tv, NULL, NULL, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    p->tq.host = NULL; /* neither host nor buffer */
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "q: exactly one of host and buffer");
    free(p);
}

static void test_bad_extents_and_shapes_are_refused(void **state)
{
    (void)state;
    problem *p = malloc(sizeof *p);
    problem_init(p);
    p->tq.ne[3] = 0; p->tk.ne[3] = 0;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "head dim D = 0");
    problem_init(p);
    p->tq.ne[3] = 257; p->tk.ne[3] = 257;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "outside 1..256");
    problem_init(p);
    p->tv.ne[3] = 300; p->to.ne[3] = 300;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "Dv = 300");
    problem_init(p);
    p->tq.ne[1] = 3; p->to.ne[1] = 3; /* 3 % 2 != 0 */
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "multiple of k/v heads");
    problem_init(p);
    p->tk.ne[0] = 1;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "batch sizes differ");
    problem_init(p);
    p->tv.ne[2] = 4;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "key counts differ");
    problem_init(p);
    p->tk.ne[3] = 7;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "head dims differ");
    problem_init(p);
    p->to.ne[2] = 2;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "o: shape");
    problem_init(p);
    p->tq.ne[2] = -1;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "negative");
    problem_init(p);
    p->tk.ne[1] = 0; p->tv.ne[1] = 0;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "at least one head");
    free(p);
}

static void test_bad_strides_offsets_and_dtypes_are_refused(void **state)
{
    (void)state;
    problem *p = malloc(sizeof *p);
    problem_init(p);
    p->tk.nb[2] = -4;
    expect_refused(p, CLATTN_ERROR_INVALID_STRIDE, "k: stride nb[2]");
    problem_init(p);
    p->tv.nb[3] = 6; /* not a multiple of 4 */
    expect_refused(p, CLATTN_ERROR_INVALID_STRIDE, "not a multiple");
    problem_init(p);
    p->tq.offset = 2;
    expect_refused(p, CLATTN_ERROR_INVALID_STRIDE, "offset");
    problem_init(p);
    for (int i = 0; i < 4; i++) p->tq.nb[i] = INT64_MAX / 8 * 4; /* the span passes 2^64 */
    expect_refused(p, CLATTN_ERROR_INVALID_STRIDE, "overflow");
    problem_init(p);
    p->to.nb[2] = 0; /* two queries written to one place */
    expect_refused(p, CLATTN_ERROR_INVALID_STRIDE, "overlap");
    problem_init(p);
    p->tq.dtype = CLATTN_BOOL;
    expect_refused(p, CLATTN_ERROR_UNSUPPORTED_DTYPE, "q: dtype bool");
    problem_init(p);
    p->to.dtype = (clattn_dtype)99;
    expect_refused(p, CLATTN_ERROR_UNSUPPORTED_DTYPE, "unknown dtype");
    free(p);
}

/* An output whose strides step so far that their products overflow 64 bits: two of its
 * elements share an address, and it is refused as overlapping, not accepted after a
 * wrapped size. The host pointer is never read: validation refuses it first. */
static void test_output_strides_whose_products_overflow_are_refused(void **state)
{
    (void)state;
    problem *p = malloc(sizeof *p);
    problem_init(p);
    p->tq = clattn_tensor_host(p->q, CLATTN_F32, B, HKV, 1, D);
    p->to = clattn_tensor_host(p->o, CLATTN_F32, B, HKV, 1, DV);
    /* o[0][1] and o[1][0] both sit at byte 2^62 */
    p->to.nb[0] = p->to.nb[1] = (int64_t)1 << 62;
    expect_refused(p, CLATTN_ERROR_INVALID_STRIDE, "overlap");
    free(p);
}

static void test_bad_options_are_refused(void **state)
{
    (void)state;
    problem *p = malloc(sizeof *p);
    problem_init(p);
    p->opt.scale = INFINITY;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "scale");
    problem_init(p);
    p->opt.softcap = -1.0f;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "softcap");
    problem_init(p);
    p->opt.softcap = NAN;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "softcap");
    problem_init(p);
    p->opt.causal = (clattn_causal)7;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "causal");
    problem_init(p);
    p->opt.window_left = -2;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "window");
    problem_init(p);
    p->opt.path = (clattn_path)99;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "path");
    problem_init(p);
    p->tmask.ne[2] = 2; /* neither 1 nor Lq */
    p->opt.mask = &p->tmask;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "mask: extent ne[2]");
    problem_init(p);
    p->tmask = clattn_tensor_host(p->fmask, CLATTN_I32, 1, 1, LQ, LK);
    p->opt.mask = &p->tmask;
    expect_refused(p, CLATTN_ERROR_UNSUPPORTED_DTYPE, "mask: dtype");
    problem_init(p);
    p->kv_lens[1] = LK + 1;
    p->opt.kv_lens = &p->tkvl;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "kv_lens[1]");
    problem_init(p);
    p->kv_lens[0] = -1;
    p->opt.kv_lens = &p->tkvl;
    expect_refused(p, CLATTN_ERROR_INVALID_ARGUMENT, "kv_lens[0]");
    problem_init(p);
    p->tkvl.dtype = CLATTN_F32;
    p->opt.kv_lens = &p->tkvl;
    expect_refused(p, CLATTN_ERROR_UNSUPPORTED_DTYPE, "kv_lens");
    problem_init(p);
    p->talibi.ne[0] = HQ - 1;
    p->opt.alibi = &p->talibi;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "alibi");
    problem_init(p);
    p->tlse.ne[2] = 1;
    p->opt.lse = &p->tlse;
    expect_refused(p, CLATTN_ERROR_INVALID_SHAPE, "lse");
    problem_init(p);
    p->tlse.dtype = CLATTN_F16;
    p->tlse.nb[0] /= 2; p->tlse.nb[1] /= 2; p->tlse.nb[2] /= 2; p->tlse.nb[3] /= 2;
    p->opt.lse = &p->tlse;
    expect_refused(p, CLATTN_ERROR_UNSUPPORTED_DTYPE, "lse: dtype");
    free(p);
}

/* The environment is read when a context is created (so setenv in another thread never
 * races with a call): a bad CLATTN_PATH is reported by the calls of contexts created
 * with it, and changing the variable later changes only contexts created after. */
static void test_clattn_path_is_read_when_the_context_is_created(void **state)
{
    (void)state;
    problem *p = malloc(sizeof *p);
    problem_init(p);
    setenv("CLATTN_PATH", "warp-drive", 1);
    clattn_context *bad = test_context();
    setenv("CLATTN_PATH", "unfused", 1);
    clattn_context *unf = test_context();
    unsetenv("CLATTN_PATH");
    clattn_context *plain = test_context();

    /* created with warp-drive: refused, O untouched, though the variable is now unset */
    assert_int_equal(clattn_attention(bad, &p->tq, &p->tk, &p->tv, &p->to, &p->opt, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(bad), "CLATTN_PATH=warp-drive"));
    for (size_t i = 0; i < sizeof p->o / sizeof p->o[0]; i++) assert_true(p->o[i] == 42.0f);
    /* created with unfused: keeps unfused after the variable changed and was unset */
    setenv("CLATTN_PATH", "warp-drive", 1);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(clattn_attention(unf, &p->tq, &p->tk, &p->tv, &p->to, &p->opt, NULL), CLATTN_SUCCESS);
        assert_int_equal(clattn_context_last_path(unf), CLATTN_PATH_UNFUSED);
        unsetenv("CLATTN_PATH");
    }
    /* created unset: the library's own choice, whatever the variable says now */
    setenv("CLATTN_PATH", "unfused", 1);
    assert_int_equal(clattn_attention(plain, &p->tq, &p->tk, &p->tv, &p->to, &p->opt, NULL), CLATTN_SUCCESS);
    assert_int_not_equal(clattn_context_last_path(plain), CLATTN_PATH_UNFUSED);
    assert_string_equal(clattn_context_last_path_reason(plain), "first supported path");
    /* a context created after the change uses the new value */
    clattn_context *later = test_context();
    unsetenv("CLATTN_PATH");
    assert_int_equal(clattn_attention(later, &p->tq, &p->tk, &p->tv, &p->to, &p->opt, NULL), CLATTN_SUCCESS);
    assert_int_equal(clattn_context_last_path(later), CLATTN_PATH_UNFUSED);
    clattn_context_free(bad);
    clattn_context_free(unf);
    clattn_context_free(plain);
    clattn_context_free(later);
    free(p);
}

/* The caller's own cl_context and queue, cl_mem tensors at byte offsets, an event back. */
static void test_caller_owned_opencl_objects_and_buffers_work_with_an_event(void **state)
{
    (void)state;
    cl_context clctx = clattn_context_cl_context(test_shared_context());
    cl_device_id dev = clattn_context_cl_device(test_shared_context());
    cl_int err;
    cl_command_queue queue = clCreateCommandQueue(clctx, dev, 0, &err);
    assert_int_equal(err, CL_SUCCESS);
    clattn_context *mine = NULL;
    assert_int_equal(clattn_context_create_from_cl(clctx, dev, queue, &mine), CLATTN_SUCCESS);
    clReleaseCommandQueue(queue); /* the clattn context holds its own reference */

    problem *p = malloc(sizeof *p);
    problem_init(p);
    const size_t off = 64; /* every tensor sits 64 bytes into its buffer */
    cl_mem mq = clCreateBuffer(clctx, CL_MEM_READ_WRITE, off + sizeof p->q, NULL, &err);
    cl_mem mk = clCreateBuffer(clctx, CL_MEM_READ_WRITE, off + sizeof p->k, NULL, &err);
    cl_mem mv = clCreateBuffer(clctx, CL_MEM_READ_WRITE, off + sizeof p->v, NULL, &err);
    cl_mem mo = clCreateBuffer(clctx, CL_MEM_READ_WRITE, off + sizeof p->o, NULL, &err);
    cl_command_queue cq = clattn_context_cl_queue(mine);
    clEnqueueWriteBuffer(cq, mq, CL_TRUE, off, sizeof p->q, p->q, 0, NULL, NULL);
    clEnqueueWriteBuffer(cq, mk, CL_TRUE, off, sizeof p->k, p->k, 0, NULL, NULL);
    clEnqueueWriteBuffer(cq, mv, CL_TRUE, off, sizeof p->v, p->v, 0, NULL, NULL);
    clattn_tensor q = clattn_tensor_cl(mq, off, CLATTN_F32, B, HQ, LQ, D);
    clattn_tensor k = clattn_tensor_cl(mk, off, CLATTN_F32, B, HKV, LK, D);
    clattn_tensor v = clattn_tensor_cl(mv, off, CLATTN_F32, B, HKV, LK, DV);
    clattn_tensor o = clattn_tensor_cl(mo, off, CLATTN_F32, B, HQ, LQ, DV);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    cl_event ev = NULL;
    assert_int_equal(clattn_attention(mine, &q, &k, &v, &o, &opt, &ev), CLATTN_SUCCESS);
    assert_non_null(ev);
    assert_int_equal(clWaitForEvents(1, &ev), CL_SUCCESS);
    clReleaseEvent(ev);
    float got[B * HQ * LQ * DV];
    clEnqueueReadBuffer(cq, mo, CL_TRUE, off, sizeof got, got, 0, NULL, NULL);

    double ref[B * HQ * LQ * DV];
    assert_int_equal(clattn_reference_attention(&p->tq, &p->tk, &p->tv, &opt, ref, NULL), CLATTN_SUCCESS);
    for (int i = 0; i < B * HQ * LQ * DV; i++)
        assert_true(fabs(got[i] - ref[i]) <= 2e-4 + 2e-3 * fabs(ref[i]));

    /* a buffer too small for the descriptor is refused before anything runs */
    clattn_tensor short_o = clattn_tensor_cl(mo, off + 8, CLATTN_F32, B, HQ, LQ, DV);
    assert_int_equal(clattn_attention(mine, &q, &k, &v, &short_o, &opt, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(mine), "runs past the end"));

    clReleaseMemObject(mq);
    clReleaseMemObject(mk);
    clReleaseMemObject(mv);
    clReleaseMemObject(mo);
    clattn_context_free(mine);
    free(p);
}

static void test_foreign_queue_is_refused(void **state)
{
    (void)state;
    cl_device_id dev = clattn_context_cl_device(test_shared_context());
    cl_int err;
    cl_context other = clCreateContext(NULL, 1, &dev, NULL, NULL, &err);
    assert_int_equal(err, CL_SUCCESS);
    cl_command_queue q = clCreateCommandQueue(other, dev, 0, &err);
    clattn_context *c = (clattn_context *)1;
    assert_int_equal(clattn_context_create_from_cl(clattn_context_cl_context(test_shared_context()), dev, q, &c),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_null(c);
    assert_int_equal(clattn_context_create_from_cl(NULL, dev, q, &c), CLATTN_ERROR_INVALID_ARGUMENT);
    clReleaseCommandQueue(q);
    clReleaseContext(other);
    clattn_context_free(NULL); /* a no-op */
}

static void test_parameters_have_bounds(void **state)
{
    (void)state;
    clattn_bounds b;
    assert_int_equal(clattn_param_bounds(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES, &b), CLATTN_SUCCESS);
    assert_true(b.lower == 4096 && b.upper > b.lower);
    assert_int_equal(clattn_context_set_param(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES, 100),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_context_set_param(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES, 1 << 20),
                     CLATTN_SUCCESS);
    int64_t v = 0;
    assert_int_equal(clattn_context_get_param(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES, &v), CLATTN_SUCCESS);
    assert_int_equal(v, 1 << 20);
    assert_int_equal(clattn_context_set_param(test_shared_context(), (clattn_param)77, 1), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_context_get_param(test_shared_context(), CLATTN_PARAM_LOG, NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_context_set_param(test_shared_context(), CLATTN_PARAM_WORKSPACE_BYTES, (int64_t)256 << 20),
                     CLATTN_SUCCESS);
}

/* A device that reports no largest allocation (max_alloc_bytes 0) means "unknown", not
 * "nothing fits": every path, forced, still matches the reference within the workspace
 * bound, and a KV cache can still be created and read. */
static void test_unknown_max_alloc_limits_nothing_but_the_workspace(void **state)
{
    (void)state;
    clattn_context *cx = test_context();
    cx->props.max_alloc_bytes = 0;
    const attn_case c = {.name = "max_alloc_0", .B = 1, .Hq = 4, .Hkv = 2, .Lq = 3, .Lk = 70, .D = 32,
                         .Dv = 32, .lse = 1, .seed = 61};
    for (int path = CLATTN_PATH_FUSED; path < CLATTN_PATH_COUNT_; path++)
        if (clattn_path_available((clattn_path)path))
            assert_int_equal(test_run_cases(cx, &c, 1, (clattn_path)path, 0), 1);

    clattn_kv_cache *kv = NULL;
    clattn_status st = clattn_kv_cache_create(cx, 1, 2, 64, 32, 32, CLATTN_KV_INT8, CLATTN_KV_INT8, &kv);
    if (st != CLATTN_SUCCESS) fail_msg("kv cache: %s: %s", clattn_status_string(st), clattn_context_last_error(cx));
    float x[2 * 5 * 32], q[4 * 32], o[4 * 32];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = (float)(i % 7) / 7.0f;
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) q[i] = (float)(i % 5) / 5.0f;
    clattn_tensor tk = clattn_tensor_host(x, CLATTN_F32, 1, 2, 5, 32);
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, 4, 1, 32), to = clattn_tensor_host(o, CLATTN_F32, 1, 4, 1, 32);
    assert_int_equal(clattn_kv_cache_append(kv, &tk, &tk, NULL), CLATTN_SUCCESS);
    st = clattn_kv_cache_attention(cx, kv, &tq, &to, NULL, NULL);
    if (st != CLATTN_SUCCESS) fail_msg("kv attention: %s: %s", clattn_status_string(st), clattn_context_last_error(cx));
    clattn_kv_cache_free(kv);
    clattn_context_free(cx);
}

static void test_status_codes_have_names(void **state)
{
    (void)state;
    const int codes[] = {CLATTN_SUCCESS, CLATTN_ERROR_INVALID_ARGUMENT, CLATTN_ERROR_INVALID_SHAPE,
                         CLATTN_ERROR_INVALID_STRIDE, CLATTN_ERROR_UNSUPPORTED_DTYPE,
                         CLATTN_ERROR_NO_DEVICE, CLATTN_ERROR_BUILD_FAILED,
                         CLATTN_ERROR_PATH_UNAVAILABLE, CLATTN_ERROR_PATH_UNSUPPORTED,
                         CLATTN_ERROR_OUT_OF_MEMORY, CLATTN_ERROR_NO_USABLE_PATH, CLATTN_ERROR_IO,
                         CLATTN_ERROR_CAPACITY, CLATTN_ERROR_INTERNAL};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        assert_int_equal(strncmp(clattn_status_string(codes[i]), "CLATTN_", 7), 0);
    assert_string_equal(clattn_status_string(CL_OUT_OF_RESOURCES), "CL_OUT_OF_RESOURCES");
    assert_string_equal(clattn_status_string(12345), "unknown status");
}

static void test_devices_are_listed_and_found_by_spec(void **state)
{
    (void)state;
    size_t n = 0, index = 99;
    assert_int_equal(clattn_device_count(&n), CLATTN_SUCCESS);
    assert_true(n >= 1);
    clattn_device_props props;
    assert_int_equal(clattn_device_get_props(0, &props), CLATTN_SUCCESS);
    assert_true(props.name[0] != '\0' && props.compute_units >= 1 && props.max_work_group_size >= 1);
    assert_int_equal(clattn_device_get_props(n, &props), CLATTN_ERROR_NO_DEVICE);
    assert_int_equal(clattn_device_find("0", &index), CLATTN_SUCCESS);
    assert_int_equal(index, 0);
    assert_int_equal(clattn_device_find("no-such-device-anywhere", &index), CLATTN_ERROR_NO_DEVICE);
    assert_int_equal(clattn_device_find("9999", &index), CLATTN_ERROR_NO_DEVICE);
    clattn_context *c = (clattn_context *)1;
    assert_int_equal(clattn_context_create("no-such-device-anywhere", &c), CLATTN_ERROR_NO_DEVICE);
    assert_null(c);
    /* a case-insensitive substring of the platform name finds it */
    char upper[128];
    size_t i = 0;
    for (; props.platform_name[i] && i < 5; i++)
        upper[i] = (char)((props.platform_name[i] >= 'a' && props.platform_name[i] <= 'z')
                              ? props.platform_name[i] - 32 : props.platform_name[i]);
    upper[i] = '\0';
    assert_int_equal(clattn_device_find(upper, &index), CLATTN_SUCCESS);
}

static void test_version_options_and_descriptor_helpers(void **state)
{
    (void)state;
    assert_int_equal(clattn_version_number(), CLATTN_VERSION_NUMBER);
    assert_string_equal(clattn_version_string(), "0.2.0");
    clattn_options o;
    clattn_options_init(&o);
    assert_true(isnan(o.scale) && o.softcap == 0.0f && o.window_left == -1 && o.window_right == -1);
    assert_true(o.causal == CLATTN_CAUSAL_NONE && o.path == CLATTN_PATH_AUTO && !o.mask && !o.lse);
    float x;
    clattn_tensor t = clattn_tensor_blhd(clattn_tensor_host(&x, CLATTN_F16, 2, 3, 5, 7));
    assert_int_equal(t.nb[3], 2);
    assert_int_equal(t.nb[1], 2 * 7);
    assert_int_equal(t.nb[2], 2 * 7 * 3);
    assert_int_equal(t.nb[0], 2 * 7 * 3 * 5);
    clattn_path p;
    assert_int_equal(clattn_path_from_name("UnFused", &p), CLATTN_SUCCESS);
    assert_int_equal(p, CLATTN_PATH_UNFUSED);
    assert_int_equal(clattn_path_from_name("nope", &p), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_true(clattn_path_available(CLATTN_PATH_UNFUSED));
    assert_int_equal(clattn_dtype_size(CLATTN_BF16), 2);
    assert_int_equal(clattn_dtype_size((clattn_dtype)42), 0);
}

/* Dense descriptors whose packed size does not fit int64 get strides every call refuses,
 * never strides that wrapped around to small numbers. */
static void test_dense_descriptors_of_overflowing_extents_are_refused(void **state)
{
    (void)state;
    float x[4] = {0};
    const int64_t huge = (int64_t)1 << 61;
    clattn_tensor t[3] = {clattn_tensor_host(x, CLATTN_F32, 1, 1, huge, 8),
                          clattn_tensor_cl(NULL, 0, CLATTN_F16, 4, huge, 4, 4),
                          clattn_tensor_blhd(clattn_tensor_host(x, CLATTN_F32, 1, huge, 16, 4))};
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < 4; i++) assert_true(t[j].nb[i] == -1);
    clattn_tensor q = clattn_tensor_host(x, CLATTN_F32, 1, 1, 1, 4);
    double out[4];
    assert_int_equal(clattn_reference_attention(&q, &t[0], &t[0], NULL, out, NULL),
                     CLATTN_ERROR_INVALID_STRIDE);
    /* sizes that fit keep their packed strides */
    clattn_tensor ok = clattn_tensor_host(x, CLATTN_F32, 2, 3, 5, 7);
    assert_true(ok.nb[3] == 4 && ok.nb[2] == 28 && ok.nb[1] == 140 && ok.nb[0] == 420);
    ok = clattn_tensor_blhd(ok);
    assert_true(ok.nb[3] == 4 && ok.nb[1] == 28 && ok.nb[2] == 84 && ok.nb[0] == 420);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_problem_runs),
        cmocka_unit_test(test_null_arguments_are_refused),
        cmocka_unit_test(test_bad_extents_and_shapes_are_refused),
        cmocka_unit_test(test_bad_strides_offsets_and_dtypes_are_refused),
        cmocka_unit_test(test_bad_options_are_refused),
        cmocka_unit_test(test_output_strides_whose_products_overflow_are_refused),
        cmocka_unit_test(test_dense_descriptors_of_overflowing_extents_are_refused),
        cmocka_unit_test(test_clattn_path_is_read_when_the_context_is_created),
        cmocka_unit_test(test_caller_owned_opencl_objects_and_buffers_work_with_an_event),
        cmocka_unit_test(test_foreign_queue_is_refused),
        cmocka_unit_test(test_parameters_have_bounds),
        cmocka_unit_test(test_unknown_max_alloc_limits_nothing_but_the_workspace),
        cmocka_unit_test(test_status_codes_have_names),
        cmocka_unit_test(test_devices_are_listed_and_found_by_spec),
        cmocka_unit_test(test_version_options_and_descriptor_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
