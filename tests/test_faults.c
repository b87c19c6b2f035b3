/* Device faults: every device allocation, enqueue, read-back and kernel get of every
 * path and of the KV cache is made to fail in turn (src/core/faults.c), and each call must
 * then either succeed with the right answer or fail with a message, leaving O, LSE and
 * the cache byte for byte as they were and no device memory behind. A walk arms a fault
 * at site n = 1, 2, ... of one kind until a call passes fewer than n sites, and checks
 * at the end that it met sites of every kind the call has. Tiny shapes: each walk is a
 * few dozen calls of microseconds of work. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv/cache.h"
#include "test_exe.h"
#include "test_util.h"

#include "tuning/tuning.h" /* clattn__tuning_force_form */
#include "core/context.h"

static const char *const kind_names[CLATTN__FAULT_KINDS] = {"alloc", "enqueue", "map", "build", "probe"};

/* ---- Attention paths ------------------------------------------------------------- */

/* Every byte of d's O and LSE still 0xff (the sentinel attn_case_reset_outputs wrote)? */
static bool outputs_untouched(attn_case_data *d)
{
    static const int outs[2] = {ATTN_BUF_O, ATTN_BUF_LSE};
    for (int k = 0; k < 2; k++) {
        const int i = outs[k];
        if (!d->buf[i].present) continue;
        unsigned char *bytes = d->buf[i].host;
        unsigned char *copy = NULL;
        if (d->buf[i].mem) {
            copy = malloc(d->buf[i].bytes);
            assert_non_null(copy);
            assert_int_equal(clEnqueueReadBuffer(d->queue, d->buf[i].mem, CL_TRUE, 0, d->buf[i].bytes,
                                                 copy, 0, NULL, NULL),
                             CL_SUCCESS);
            bytes = copy;
        }
        bool same = true;
        for (size_t j = 0; j < d->buf[i].bytes; j++) same &= bytes[j] == 0xff;
        free(copy);
        if (!same) return false;
    }
    return true;
}

typedef struct walk_counts {
    uint64_t sites[CLATTN__FAULT_KINDS]; /* sites of each kind one call passes */
    int recovered, failed;               /* faulted calls that succeeded / failed cleanly */
    int recorded;                        /* most path failures recorded after one call */
} walk_counts;

/* Walk every fault site of case c on path `path` (forced, so a failure is the call's) with
 * host tensors or, with on_device, cl_mem ones. */
static walk_counts walk_attention(clattn_context *ctx, const char *what, const attn_case *base,
                                  clattn_path path, bool on_device)
{
    attn_case c = *base;
    c.path = path;
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    if (on_device) assert_int_equal(attn_case_data_upload(ctx, d), CLATTN_SUCCESS);
    walk_counts wc;
    memset(&wc, 0, sizeof wc);
    /* once without faults: the kernels are built, so the walk counts a warm call */
    assert_int_equal(attn_case_run(ctx, &c, d, NULL), CLATTN_SUCCESS);
    clFinish(clattn_context_cl_queue(ctx));
    const uint64_t held = ctx->device_bytes;
    for (int kind = 0; kind < CLATTN__FAULT_KINDS; kind++) {
        for (uint64_t n = 1;; n++) {
            assert_int_equal(attn_case_reset_outputs(d), CLATTN_SUCCESS);
            /* auto mode remembers a path that failed to launch and skips it afterwards:
             * forget, so every fault meets the whole chain */
            int recorded = ctx->nfailures;
            ctx->nfailures = 0;
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, n);
            clattn_status st = attn_case_run(ctx, &c, d, NULL);
            if (ctx->nfailures > recorded) recorded = ctx->nfailures;
            wc.recorded = recorded > wc.recorded ? recorded : wc.recorded;
            const uint64_t fired = clattn__fault_fired(ctx), sites = clattn__fault_sites(ctx, kind);
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, 0);
            clFinish(clattn_context_cl_queue(ctx));
            if (ctx->device_bytes != held)
                fail_msg("%s: %s fault at site %llu: %llu device bytes held after the call, %llu before",
                         what, kind_names[kind], (unsigned long long)n,
                         (unsigned long long)ctx->device_bytes, (unsigned long long)held);
            if (st == CLATTN_SUCCESS) {
                char buf[768];
                if (!test_case_matches(&c, d, buf, sizeof buf)) {
                    fail_msg("%s: %s fault at site %llu: the call succeeded with a wrong answer: %s",
                             what, kind_names[kind], (unsigned long long)n, buf);
                }
                if (!fired) {
                    assert_true(sites == n - 1);
                    wc.sites[kind] = sites;
                    break;
                }
                wc.recovered++;
                continue;
            }
            if (!fired)
                fail_msg("%s: %s: the call failed with no fault fired: %s", what, kind_names[kind],
                         clattn_context_last_error(ctx));
            wc.failed++;
            if (!clattn_context_last_error(ctx)[0])
                fail_msg("%s: %s fault at site %llu: %s without a message", what, kind_names[kind],
                         (unsigned long long)n, clattn_status_string(st));
            if (!outputs_untouched(d))
                fail_msg("%s: %s fault at site %llu failed the call (%s: %s) but O or LSE changed",
                         what, kind_names[kind], (unsigned long long)n, clattn_status_string(st),
                         clattn_context_last_error(ctx));
        }
    }
    print_message("%-34s sites: alloc %2llu, enqueue %2llu, map %llu, build %llu; faulted calls "
                  "recovered %d, failed cleanly %d\n",
                  what, (unsigned long long)wc.sites[0], (unsigned long long)wc.sites[1],
                  (unsigned long long)wc.sites[2], (unsigned long long)wc.sites[3], wc.recovered,
                  wc.failed);
    /* every call enqueues and gets kernels; host tensors are staged (allocations) and
     * their outputs read back (the fused GPU form on cl_mem tensors allocates nothing) */
    if (!on_device) assert_true(wc.sites[CLATTN__FAULT_ALLOC] >= 5); /* q, k, v, o, lse */
    assert_true(wc.sites[CLATTN__FAULT_ENQUEUE] > 0);
    assert_true(wc.sites[CLATTN__FAULT_BUILD] > 0);
    if (on_device) assert_true(wc.sites[CLATTN__FAULT_MAP] == 0);
    else assert_true(wc.sites[CLATTN__FAULT_MAP] >= 2); /* O and LSE */
    /* a forced path's faults are the call's; in auto mode the next path may answer them all */
    if (path != CLATTN_PATH_AUTO) assert_true(wc.failed > 0);
    attn_case_data_free(d);
    return wc;
}

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv

/* GQA, padded tensors (padding must survive a failed call), LSE, a few query rows so the
 * decode path takes it too. */
static const attn_case tiny = {SHAPE(2, 4, 2, 3, 20, 16, 16), .padded = 1, .lse = 1,
                               .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 9101};

static void walk_path_both_ways(clattn_context *ctx, const char *name, clattn_path path)
{
    char what[64];
    snprintf(what, sizeof what, "%s, host tensors", name);
    walk_attention(ctx, what, &tiny, path, false);
    snprintf(what, sizeof what, "%s, cl_mem tensors", name);
    walk_attention(ctx, what, &tiny, path, true);
}

static void test_decode_path_survives_every_fault(void **state)
{
    (void)state;
    walk_path_both_ways(test_shared_context(), "decode", CLATTN_PATH_DECODE);
}

static void test_fused_path_both_forms_survive_every_fault(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    clattn__tuning_force_form(CLATTN__TP_FUSED, 0);
    walk_path_both_ways(ctx, "fused cpu form", CLATTN_PATH_FUSED);
    clattn__tuning_force_form(CLATTN__TP_FUSED, 1);
    walk_path_both_ways(ctx, "fused gpu form", CLATTN_PATH_FUSED);
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
}

/* With the smallest workspace (4 KiB, one or two heads' packed K) the CPU form runs in
 * chunks, so its cl_mem outputs go through scratch copies and one commit. */
static void test_fused_path_in_chunks_survives_every_fault(void **state)
{
    (void)state;
    clattn_context *ctx = test_context();
    clattn__tuning_force_form(CLATTN__TP_FUSED, 0);
    assert_int_equal(clattn_context_set_param(ctx, CLATTN_PARAM_WORKSPACE_BYTES, 4096), CLATTN_SUCCESS);
    walk_counts wc = walk_attention(ctx, "fused cpu form in chunks, cl_mem", &tiny, CLATTN_PATH_FUSED, true);
    /* the packed K, then scratch O and LSE, each filled by a copy, and the commit */
    assert_true(wc.sites[CLATTN__FAULT_ALLOC] >= 3 && wc.sites[CLATTN__FAULT_ENQUEUE] >= 4 + 3);
    walk_attention(ctx, "fused cpu form in chunks, host", &tiny, CLATTN_PATH_FUSED, false);
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
    clattn_context_free(ctx);
}

static void test_unfused_path_survives_every_fault(void **state)
{
    (void)state;
    walk_path_both_ways(test_shared_context(), "unfused", CLATTN_PATH_UNFUSED);
    /* without LSE, in one chunk, P·V is the only writer: no scratch copies */
    attn_case no_lse = tiny;
    no_lse.lse = 0;
    clattn_context *ctx = test_shared_context();
    walk_attention(ctx, "unfused without lse, cl_mem", &no_lse, CLATTN_PATH_UNFUSED, true);
}

/* Auto mode: a fault in a path makes the next one answer, correctly; on a fresh context
 * per walk, as the failures it records change which paths later calls try. An
 * allocation failure is not recorded: the path is tried again on the next call. */
static void test_auto_mode_falls_back_on_every_fault(void **state)
{
    (void)state;
    for (int dev = 0; dev < 2; dev++) {
        clattn_context *ctx = test_context();
        walk_counts wc = walk_attention(ctx, dev ? "auto, cl_mem tensors" : "auto, host tensors", &tiny,
                                        CLATTN_PATH_AUTO, dev == 1);
        assert_true(wc.recovered > 0 && wc.recorded == 1);
        for (size_t i = 0; i < clattn_context_failure_count(ctx); i++) {
            clattn_status st;
            assert_int_equal(clattn_context_failure_get(ctx, i, NULL, &st, NULL), CLATTN_SUCCESS);
            assert_int_not_equal(st, (clattn_status)CL_MEM_OBJECT_ALLOCATION_FAILURE);
        }
        clattn_context_free(ctx);
    }
}

static void test_clblast_path_survives_every_fault(void **state)
{
    (void)state;
    if (!clattn_path_available(CLATTN_PATH_CLBLAST)) {
        print_message("this build has no CLBlast path\n");
        skip();
    }
    walk_path_both_ways(test_shared_context(), "clblast", CLATTN_PATH_CLBLAST);
}

/* ---- KV cache -------------------------------------------------------------------- */

enum { KV_B = 2, KV_H = 2, KV_D = 16, KV_CAP = 48, KV_N0 = 5, KV_N = 3 };

/* Everything a cache holds: its three buffers and its lengths. */
typedef struct kv_state {
    unsigned char *buf[3];
    size_t bytes[3];
    int32_t len[KV_B];
} kv_state;

static void kv_snapshot(clattn_context *ctx, clattn_kv_cache *c, kv_state *s)
{
    for (int w = 0; w < 3; w++) {
        s->bytes[w] = clattn__kv_cache_slab_bytes(c, w) * KV_B * KV_H;
        s->buf[w] = s->bytes[w] ? malloc(s->bytes[w]) : NULL;
        if (s->bytes[w]) {
            assert_non_null(s->buf[w]);
            assert_int_equal(clattn__kv_cache_download(c, w, s->buf[w], s->bytes[w]), CLATTN_SUCCESS);
        }
    }
    assert_int_equal(clattn_kv_cache_lengths(c, s->len), CLATTN_SUCCESS);
    (void)ctx;
}

static bool kv_same(const kv_state *a, const kv_state *b)
{
    for (int w = 0; w < 3; w++)
        if (a->bytes[w] != b->bytes[w] || (a->bytes[w] && memcmp(a->buf[w], b->buf[w], a->bytes[w]) != 0))
            return false;
    return memcmp(a->len, b->len, sizeof a->len) == 0;
}

static void kv_state_free(kv_state *s)
{
    for (int w = 0; w < 3; w++) free(s->buf[w]);
}

/* n tokens of keys (or values) from seed, as a host tensor or a cl_mem one. */
typedef struct kv_input {
    float host[KV_B * KV_H * 8 * KV_D];
    cl_mem mem;
    clattn_tensor t;
} kv_input;

static void kv_input_make(clattn_context *ctx, kv_input *in, int n, unsigned seed, bool on_device)
{
    for (int i = 0; i < KV_B * KV_H * n * KV_D; i++)
        in->host[i] = (float)((i * 37 + (int)seed * 11) % 29) / 29.0f - 0.5f;
    in->t = clattn_tensor_host(in->host, CLATTN_F32, KV_B, KV_H, n, KV_D);
    in->mem = NULL;
    if (on_device) {
        cl_int err;
        in->mem = clCreateBuffer(clattn_context_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                                 sizeof in->host, in->host, &err);
        assert_int_equal(err, CL_SUCCESS);
        in->t.host = NULL;
        in->t.buffer = in->mem;
    }
}

static void kv_input_free(kv_input *in)
{
    if (in->mem) clReleaseMemObject(in->mem);
}

typedef struct kv_formats {
    clattn_kv_format k, v;
} kv_formats;

/* INT4 keys have a tail buffer, TQ values rotation tables; then the plain float formats. */
static const kv_formats kv_pairs[] = {{CLATTN_KV_INT4, CLATTN_KV_TQ4}, {CLATTN_KV_F16, CLATTN_KV_INT8}};

static clattn_kv_cache *kv_filled(clattn_context *ctx, kv_formats f, const kv_input *k0, const kv_input *v0)
{
    clattn_kv_cache *c = NULL;
    assert_int_equal(clattn_kv_cache_create(ctx, KV_B, KV_H, KV_CAP, KV_D, KV_D, f.k, f.v, &c), CLATTN_SUCCESS);
    const int32_t per_batch[KV_B] = {KV_N0, KV_N0 - 2};
    assert_int_equal(clattn_kv_cache_append(c, &k0->t, &v0->t, per_batch), CLATTN_SUCCESS);
    return c;
}

static void check_held(clattn_context *ctx, uint64_t held, const char *what, int kind, uint64_t n)
{
    clFinish(clattn_context_cl_queue(ctx));
    if (ctx->device_bytes != held)
        fail_msg("%s: %s fault at site %llu: %llu device bytes held after, %llu before", what,
                 kind_names[kind], (unsigned long long)n, (unsigned long long)ctx->device_bytes,
                 (unsigned long long)held);
}

/* Creation: a failed create returns no cache and holds no device memory. */
static void walk_kv_create(clattn_context *ctx, kv_formats f)
{
    uint64_t sites[CLATTN__FAULT_KINDS] = {0};
    const uint64_t held = ctx->device_bytes;
    for (int kind = 0; kind < CLATTN__FAULT_KINDS; kind++) {
        for (uint64_t n = 1;; n++) {
            clattn_kv_cache *c = NULL;
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, n);
            clattn_status st = clattn_kv_cache_create(ctx, KV_B, KV_H, KV_CAP, KV_D, KV_D, f.k, f.v, &c);
            const uint64_t fired = clattn__fault_fired(ctx), s = clattn__fault_sites(ctx, kind);
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, 0);
            if (!fired) {
                assert_int_equal(st, CLATTN_SUCCESS);
                clattn_kv_cache_free(c);
                sites[kind] = s;
                break;
            }
            assert_int_not_equal(st, CLATTN_SUCCESS);
            assert_null(c);
            assert_true(clattn_context_last_error(ctx)[0] != '\0');
            check_held(ctx, held, "kv create", kind, n);
        }
    }
    print_message("kv create %s/%s: sites alloc %llu, enqueue %llu\n", clattn_kv_format_name(f.k),
                  clattn_kv_format_name(f.v), (unsigned long long)sites[0], (unsigned long long)sites[1]);
    assert_true(sites[CLATTN__FAULT_ALLOC] >= 3 && sites[CLATTN__FAULT_ENQUEUE] >= 2);
}

/* Appends: a failed append leaves keys, values, the INT4 tail and the lengths byte for
 * byte as they were; a successful one after a fault stores what a clean one stores. */
static void walk_kv_append(clattn_context *ctx, kv_formats f, bool on_device)
{
    kv_input k0, v0, k1, v1;
    kv_input_make(ctx, &k0, KV_N0, 1, on_device);
    kv_input_make(ctx, &v0, KV_N0, 2, on_device);
    kv_input_make(ctx, &k1, KV_N, 3, on_device);
    kv_input_make(ctx, &v1, KV_N, 4, on_device);
    const int32_t per_batch[KV_B] = {KV_N, KV_N - 1};
    kv_state want;
    {
        clattn_kv_cache *c = kv_filled(ctx, f, &k0, &v0);
        assert_int_equal(clattn_kv_cache_append(c, &k1.t, &v1.t, per_batch), CLATTN_SUCCESS);
        kv_snapshot(ctx, c, &want);
        clattn_kv_cache_free(c);
    }
    uint64_t sites[CLATTN__FAULT_KINDS] = {0};
    for (int kind = 0; kind < CLATTN__FAULT_KINDS; kind++) {
        for (uint64_t n = 1;; n++) {
            clattn_kv_cache *c = kv_filled(ctx, f, &k0, &v0);
            kv_state before, after;
            kv_snapshot(ctx, c, &before);
            clFinish(clattn_context_cl_queue(ctx));
            const uint64_t held = ctx->device_bytes;
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, n);
            clattn_status st = clattn_kv_cache_append(c, &k1.t, &v1.t, per_batch);
            const uint64_t fired = clattn__fault_fired(ctx), s = clattn__fault_sites(ctx, kind);
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, 0);
            check_held(ctx, held, "kv append", kind, n);
            kv_snapshot(ctx, c, &after);
            if (st == CLATTN_SUCCESS) {
                if (!kv_same(&after, &want))
                    fail_msg("kv append %s/%s: %s fault at site %llu: the append succeeded but stored "
                             "other bytes than a clean one", clattn_kv_format_name(f.k),
                             clattn_kv_format_name(f.v), kind_names[kind], (unsigned long long)n);
            } else {
                assert_true(fired);
                assert_true(clattn_context_last_error(ctx)[0] != '\0');
                if (!kv_same(&after, &before))
                    fail_msg("kv append %s/%s (%s): %s fault at site %llu failed the append (%s) but "
                             "the cache changed", clattn_kv_format_name(f.k), clattn_kv_format_name(f.v),
                             on_device ? "cl_mem" : "host", kind_names[kind], (unsigned long long)n,
                             clattn_context_last_error(ctx));
            }
            kv_state_free(&before);
            kv_state_free(&after);
            clattn_kv_cache_free(c);
            if (!fired) {
                assert_int_equal(st, CLATTN_SUCCESS);
                sites[kind] = s;
                break;
            }
        }
    }
    print_message("kv append %s/%s, %s inputs: sites alloc %llu, enqueue %llu, build %llu\n",
                  clattn_kv_format_name(f.k), clattn_kv_format_name(f.v), on_device ? "cl_mem" : "host",
                  (unsigned long long)sites[0], (unsigned long long)sites[1], (unsigned long long)sites[3]);
    assert_true(sites[CLATTN__FAULT_ALLOC] >= 1 && sites[CLATTN__FAULT_ENQUEUE] >= 2 &&
                sites[CLATTN__FAULT_BUILD] == 2);
    kv_state_free(&want);
    kv_input_free(&k0);
    kv_input_free(&v0);
    kv_input_free(&k1);
    kv_input_free(&v1);
}

/* Attention over the cache: a failed call leaves O, LSE and the cache as they were; a
 * successful one after a fault gives the bytes a clean one gives (the clean result is
 * checked against the reference by test_kv_cache). */
static void walk_kv_attention(clattn_context *ctx, kv_formats f, bool on_device)
{
    enum { LQ = 2, HQ = 4 };
    kv_input k0, v0;
    kv_input_make(ctx, &k0, KV_N0, 5, false);
    kv_input_make(ctx, &v0, KV_N0, 6, false);
    clattn_kv_cache *c = kv_filled(ctx, f, &k0, &v0);
    float q[KV_B * HQ * LQ * KV_D], o[KV_B * HQ * LQ * KV_D], lse[KV_B * HQ * LQ];
    float want_o[sizeof o / sizeof o[0]], want_lse[sizeof lse / sizeof lse[0]];
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) q[i] = (float)((i * 13) % 17) / 17.0f - 0.5f;
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, KV_B, HQ, LQ, KV_D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, KV_B, HQ, LQ, KV_D);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, KV_B, HQ, LQ, 1);
    cl_mem mo = NULL, ml = NULL;
    cl_command_queue queue = clattn_context_cl_queue(ctx);
    if (on_device) {
        cl_int err;
        mo = clCreateBuffer(clattn_context_cl_context(ctx), CL_MEM_READ_WRITE, sizeof o, NULL, &err);
        assert_int_equal(err, CL_SUCCESS);
        ml = clCreateBuffer(clattn_context_cl_context(ctx), CL_MEM_READ_WRITE, sizeof lse, NULL, &err);
        assert_int_equal(err, CL_SUCCESS);
        to.host = NULL;
        to.buffer = mo;
        tl.host = NULL;
        tl.buffer = ml;
    }
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    opt.lse = &tl;
    /* outputs to 0xff, run, read back */
    memset(o, 0xff, sizeof o);
    memset(lse, 0xff, sizeof lse);
#define RESET_OUTPUTS()                                                                              \
    do {                                                                                            \
        memset(o, 0xff, sizeof o);                                                                  \
        memset(lse, 0xff, sizeof lse);                                                              \
        if (on_device) {                                                                            \
            assert_int_equal(clEnqueueWriteBuffer(queue, mo, CL_TRUE, 0, sizeof o, o, 0, NULL, NULL), 0); \
            assert_int_equal(clEnqueueWriteBuffer(queue, ml, CL_TRUE, 0, sizeof lse, lse, 0, NULL, NULL), 0); \
        }                                                                                           \
    } while (0)
#define READ_OUTPUTS()                                                                               \
    do {                                                                                            \
        if (on_device) {                                                                            \
            assert_int_equal(clEnqueueReadBuffer(queue, mo, CL_TRUE, 0, sizeof o, o, 0, NULL, NULL), 0); \
            assert_int_equal(clEnqueueReadBuffer(queue, ml, CL_TRUE, 0, sizeof lse, lse, 0, NULL, NULL), 0); \
        }                                                                                           \
    } while (0)
    RESET_OUTPUTS();
    assert_int_equal(clattn_kv_cache_attention(ctx, c, &tq, &to, &opt, NULL), CLATTN_SUCCESS);
    READ_OUTPUTS();
    memcpy(want_o, o, sizeof o);
    memcpy(want_lse, lse, sizeof lse);
    kv_state cache0;
    kv_snapshot(ctx, c, &cache0);
    clFinish(queue);
    const uint64_t held = ctx->device_bytes;
    uint64_t sites[CLATTN__FAULT_KINDS] = {0};
    for (int kind = 0; kind < CLATTN__FAULT_KINDS; kind++) {
        for (uint64_t n = 1;; n++) {
            RESET_OUTPUTS();
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, n);
            clattn_status st = clattn_kv_cache_attention(ctx, c, &tq, &to, &opt, NULL);
            const uint64_t fired = clattn__fault_fired(ctx), s = clattn__fault_sites(ctx, kind);
            clattn__fault_arm(ctx, (clattn__fault_kind)kind, 0);
            check_held(ctx, held, "kv attention", kind, n);
            READ_OUTPUTS();
            kv_state now;
            kv_snapshot(ctx, c, &now);
            assert_true(kv_same(&now, &cache0));
            kv_state_free(&now);
            if (st == CLATTN_SUCCESS) {
                assert_memory_equal(o, want_o, sizeof o);
                assert_memory_equal(lse, want_lse, sizeof lse);
            } else {
                assert_true(fired);
                const unsigned char *ob = (const unsigned char *)o, *lb = (const unsigned char *)lse;
                for (size_t i = 0; i < sizeof o; i++)
                    if (ob[i] != 0xff)
                        fail_msg("kv attention (%s): %s fault at site %llu failed the call (%s) but O changed",
                                 on_device ? "cl_mem" : "host", kind_names[kind], (unsigned long long)n,
                                 clattn_context_last_error(ctx));
                for (size_t i = 0; i < sizeof lse; i++)
                    if (lb[i] != 0xff)
                        fail_msg("kv attention (%s): %s fault at site %llu failed the call (%s) but LSE changed",
                                 on_device ? "cl_mem" : "host", kind_names[kind], (unsigned long long)n,
                                 clattn_context_last_error(ctx));
            }
            if (!fired) {
                assert_int_equal(st, CLATTN_SUCCESS);
                sites[kind] = s;
                break;
            }
        }
    }
#undef RESET_OUTPUTS
#undef READ_OUTPUTS
    print_message("kv attention %s/%s, %s outputs: sites alloc %llu, enqueue %llu, map %llu, build %llu\n",
                  clattn_kv_format_name(f.k), clattn_kv_format_name(f.v), on_device ? "cl_mem" : "host",
                  (unsigned long long)sites[0], (unsigned long long)sites[1], (unsigned long long)sites[2],
                  (unsigned long long)sites[3]);
    assert_true(sites[CLATTN__FAULT_ALLOC] >= 4 && sites[CLATTN__FAULT_ENQUEUE] >= 4 &&
                sites[CLATTN__FAULT_BUILD] >= 4);
    assert_true(on_device ? sites[CLATTN__FAULT_MAP] == 0 : sites[CLATTN__FAULT_MAP] == 2);
    kv_state_free(&cache0);
    clattn_kv_cache_free(c);
    if (mo) clReleaseMemObject(mo);
    if (ml) clReleaseMemObject(ml);
    kv_input_free(&k0);
    kv_input_free(&v0);
}

static void test_kv_cache_create_survives_every_fault(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof kv_pairs / sizeof kv_pairs[0]; i++)
        walk_kv_create(test_shared_context(), kv_pairs[i]);
}

static void test_kv_cache_append_survives_every_fault(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof kv_pairs / sizeof kv_pairs[0]; i++) {
        walk_kv_append(test_shared_context(), kv_pairs[i], false);
        walk_kv_append(test_shared_context(), kv_pairs[i], true);
    }
}

static void test_kv_cache_attention_survives_every_fault(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof kv_pairs / sizeof kv_pairs[0]; i++) {
        walk_kv_attention(test_shared_context(), kv_pairs[i], false);
        walk_kv_attention(test_shared_context(), kv_pairs[i], true);
    }
}

/* The value kernel's build failing must leave the keys alone: the append used to launch
 * the key kernel before getting the value kernel. Build faults count kernel gets, so
 * site 2 is the value kernel's. */
static void test_kv_append_whose_value_kernel_fails_to_build_leaves_the_cache_as_it_was(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    for (size_t i = 0; i < sizeof kv_pairs / sizeof kv_pairs[0]; i++) {
        kv_input k0, v0, k1, v1;
        kv_input_make(ctx, &k0, KV_N0, 7, false);
        kv_input_make(ctx, &v0, KV_N0, 8, false);
        kv_input_make(ctx, &k1, KV_N, 9, false);
        kv_input_make(ctx, &v1, KV_N, 10, false);
        clattn_kv_cache *c = kv_filled(ctx, kv_pairs[i], &k0, &v0);
        kv_state before, after;
        kv_snapshot(ctx, c, &before);
        clattn__fault_arm(ctx, CLATTN__FAULT_BUILD, 2);
        clattn_status st = clattn_kv_cache_append(c, &k1.t, &v1.t, NULL);
        assert_int_equal(clattn__fault_fired(ctx), 1);
        clattn__fault_arm(ctx, CLATTN__FAULT_BUILD, 0);
        assert_int_equal(st, CLATTN_ERROR_BUILD_FAILED);
        kv_snapshot(ctx, c, &after);
        if (!kv_same(&before, &after))
            fail_msg("kv cache %s/%s: a failed value-kernel build changed the cache",
                     clattn_kv_format_name(kv_pairs[i].k), clattn_kv_format_name(kv_pairs[i].v));
        kv_state_free(&before);
        kv_state_free(&after);
        clattn_kv_cache_free(c);
    }
}

/* CLATTN_FAULT arms a context when it is created (the CLI's way in). */
static void test_clattn_fault_environment_arms_new_contexts(void **state)
{
    (void)state;
    setenv("CLATTN_FAULT", "alloc:1", 1);
    clattn_context *ctx = test_context();
    unsetenv("CLATTN_FAULT");
    float x[4] = {0};
    clattn_tensor t = clattn_tensor_host(x, CLATTN_F32, 1, 1, 1, 4);
    clattn_tensor o = clattn_tensor_host(x, CLATTN_F32, 1, 1, 1, 4);
    clattn_status st = clattn_attention(ctx, &t, &t, &t, &o, NULL, NULL);
    assert_int_equal(st, (clattn_status)CL_MEM_OBJECT_ALLOCATION_FAILURE);
    assert_non_null(strstr(clattn_context_last_error(ctx), "CL_MEM_OBJECT_ALLOCATION_FAILURE"));
    /* once: the next call works */
    assert_int_equal(clattn_attention(ctx, &t, &t, &t, &o, NULL, NULL), CLATTN_SUCCESS);
    clattn_context_free(ctx);
    /* a malformed value arms nothing */
    setenv("CLATTN_FAULT", "alloc:zero", 1);
    ctx = test_context();
    unsetenv("CLATTN_FAULT");
    assert_int_equal(clattn_attention(ctx, &t, &t, &t, &o, NULL, NULL), CLATTN_SUCCESS);
    clattn_context_free(ctx);
}

/* The CLI's way in: CLATTN_FAULT in the environment of `clattn check` fails exactly one
 * call (the third allocation: the staging of O in the first case), with the driver's
 * error in the report, and every other case passes. */
static void test_cli_reports_a_fault_from_clattn_fault(void **state)
{
    (void)state;
    char dir[] = "/tmp/clattn-faults-XXXXXX";
    assert_non_null(mkdtemp(dir));
    setenv("CLATTN_FAULT", "alloc:3", 1);
    test_exe_result r;
    const char *const args[] = {"check", "--path", "unfused", "--random", "0", "--quiet", NULL};
    test_run_clattn(dir, &r, args);
    unsetenv("CLATTN_FAULT");
    rmdir(dir);
    if (r.status != 1 || !strstr(r.out, "CL_MEM_OBJECT_ALLOCATION_FAILURE") || !strstr(r.out, " 1 outside"))
        fail_msg("clattn check with CLATTN_FAULT=alloc:3 exited %d:\n%s\n%s", r.status, r.out, r.err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_path_survives_every_fault),
        cmocka_unit_test(test_fused_path_both_forms_survive_every_fault),
        cmocka_unit_test(test_fused_path_in_chunks_survives_every_fault),
        cmocka_unit_test(test_unfused_path_survives_every_fault),
        cmocka_unit_test(test_clblast_path_survives_every_fault),
        cmocka_unit_test(test_auto_mode_falls_back_on_every_fault),
        cmocka_unit_test(test_kv_cache_create_survives_every_fault),
        cmocka_unit_test(test_kv_cache_append_survives_every_fault),
        cmocka_unit_test(test_kv_cache_attention_survives_every_fault),
        cmocka_unit_test(test_kv_append_whose_value_kernel_fails_to_build_leaves_the_cache_as_it_was),
        cmocka_unit_test(test_clattn_fault_environment_arms_new_contexts),
        cmocka_unit_test(test_cli_reports_a_fault_from_clattn_fault),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
