/* Soak: a KV cache through 100,000 append / attend / reset cycles over every format, and
 * a context through 10,000 attention calls over every path, host and cl_mem tensors,
 * with results checked periodically (a fresh cache replaying the same appends must give
 * the same bytes; attention against the float64 reference), the context's device bytes
 * back to the same value after every call, its peak flat after a warm-up, and the
 * process's resident memory growing less than 4 MiB after the warm-up (glibc keeps freed
 * blocks in its arenas, so RSS moves a little without any leak; a leak of even one small
 * allocation per call, 100 bytes x 200,000 calls, would show as 20 MiB).
 * Slow (CTest label `slow`): 11 s on the 2-core PoCL machine with the program caches
 * warm (100,000 cycles at ~105 us, 10,000 calls at ~70 us), plus the kernel builds when
 * cold. Counts can be lowered with CLATTN_SOAK_CYCLES / CLATTN_SOAK_CALLS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"
#include "core/context.h"

#define RSS_MARGIN_BYTES ((long)4 << 20)

static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static long count_from_env(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v && atol(v) > 0 ? atol(v) : dflt;
}

/* ---- KV cache -------------------------------------------------------------------- */

enum { B = 1, HKV = 1, HQ = 2, D = 8, CAP = 64, MAXN = 3, NFMT = 7 };

typedef struct replay {
    int n[CAP];      /* tokens of each append since the last reset */
    int nappends;
    int len;
    float k[CAP * D], v[CAP * D]; /* the tokens appended since the last reset */
} replay;

static void tokens(float *x, int n, uint64_t seed)
{
    for (int i = 0; i < n * D; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(seed >> 40) / (double)(1ull << 24)) - 0.5f;
    }
}

/* O (and LSE) of q over a cache; host tensors. */
static void attend(clattn_context *ctx, clattn_kv_cache *c, const float *q, float *o, float *lse)
{
    clattn_tensor tq = clattn_tensor_host((void *)q, CLATTN_F32, B, HQ, 1, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, HQ, 1, D);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, B, HQ, 1, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    opt.lse = &tl;
    clattn_status st = clattn_kv_cache_attention(ctx, c, &tq, &to, &opt, NULL);
    if (st != CLATTN_SUCCESS) fail_msg("kv attention: %s: %s", clattn_status_string(st), clattn_context_last_error(ctx));
}

/* A fresh cache of the same formats given the same appends must answer with the same
 * bytes: 100,000 cycles of reuse leave nothing behind. For f32 keys and values, also the
 * float64 reference. */
static void check_against_fresh(clattn_context *ctx, clattn_kv_format kf, clattn_kv_format vf,
                                const replay *r, const float *q, const float *o, const float *lse,
                                long cycle)
{
    clattn_kv_cache *fresh = NULL;
    assert_int_equal(clattn_kv_cache_create(ctx, B, HKV, CAP, D, D, kf, vf, &fresh), CLATTN_SUCCESS);
    int at = 0;
    for (int a = 0; a < r->nappends; a++) {
        clattn_tensor tk = clattn_tensor_host((void *)(r->k + at * D), CLATTN_F32, B, HKV, r->n[a], D);
        clattn_tensor tv = clattn_tensor_host((void *)(r->v + at * D), CLATTN_F32, B, HKV, r->n[a], D);
        assert_int_equal(clattn_kv_cache_append(fresh, &tk, &tv, NULL), CLATTN_SUCCESS);
        at += r->n[a];
    }
    float o2[B * HQ * D], lse2[B * HQ];
    attend(ctx, fresh, q, o2, lse2);
    clattn_kv_cache_free(fresh);
    if (memcmp(o, o2, sizeof o2) != 0 || memcmp(lse, lse2, sizeof lse2) != 0)
        fail_msg("cycle %ld (k %s, v %s, length %d): the soaked cache answers differently from a "
                 "fresh one given the same appends", cycle, clattn_kv_format_name(kf),
                 clattn_kv_format_name(vf), r->len);
    if (kf != CLATTN_KV_F32 || vf != CLATTN_KV_F32) return;
    for (int h = 0; h < HQ; h++) {
        double m = -INFINITY, s = 0.0, acc[D] = {0};
        double sc[CAP];
        for (int j = 0; j < r->len; j++) {
            double dot = 0.0;
            for (int d = 0; d < D; d++) dot += (double)q[h * D + d] * (double)r->k[j * D + d];
            sc[j] = dot / sqrt((double)D);
            m = sc[j] > m ? sc[j] : m;
        }
        for (int j = 0; j < r->len; j++) {
            const double p = exp(sc[j] - m);
            s += p;
            for (int d = 0; d < D; d++) acc[d] += p * (double)r->v[j * D + d];
        }
        for (int d = 0; d < D; d++) {
            const double ref = r->len ? acc[d] / s : 0.0;
            if (fabs((double)o[h * D + d] - ref) > 2e-4 + 2e-3 * fabs(ref))
                fail_msg("cycle %ld: f32 cache O[%d][%d] = %g, reference %g", cycle, h, d, (double)o[h * D + d], ref);
        }
        const double lref = r->len ? m + log(s) : -INFINITY;
        if (r->len && fabs((double)lse[h] - lref) > 1e-3 + 1e-4 * fabs(lref))
            fail_msg("cycle %ld: f32 cache LSE[%d] = %g, reference %g", cycle, h, (double)lse[h], lref);
    }
}

static void test_kv_cache_soak(void **state)
{
    (void)state;
    const long cycles = count_from_env("CLATTN_SOAK_CYCLES", 100000);
    clattn_context *ctx = test_context();
    static const clattn_kv_format fmts[NFMT] = {CLATTN_KV_F32, CLATTN_KV_F16, CLATTN_KV_INT8, CLATTN_KV_INT4,
                                               CLATTN_KV_TQ4, CLATTN_KV_TQ3, CLATTN_KV_TQ2};
    /* one cache per format pair (k fmts[i], v fmts[(i + 3) % NFMT]), used in turn */
    clattn_kv_cache *caches[NFMT];
    static replay rp[NFMT];
    memset(rp, 0, sizeof rp);
    for (int i = 0; i < NFMT; i++)
        assert_int_equal(clattn_kv_cache_create(ctx, B, HKV, CAP, D, D, fmts[i], fmts[(i + 3) % NFMT], &caches[i]),
                         CLATTN_SUCCESS);
    const long warmup = cycles < 2000 ? cycles / 2 : 1000;
    long rss0 = 0, resets = 0, checks = 0;
    uint64_t held0 = 0, peak0 = 0;
    float q[B * HQ * D], o[B * HQ * D], lse[B * HQ], kn[MAXN * D], vn[MAXN * D];
    const double t0 = now_s();
    double tw = t0;
    for (long cyc = 0; cyc < cycles; cyc++) {
        const int i = (int)(cyc % NFMT);
        clattn_kv_cache *c = caches[i];
        replay *r = &rp[i];
        const int n = 1 + (int)((cyc / NFMT) % MAXN);
        if (r->len + n > CAP) {
            assert_int_equal(clattn_kv_cache_reset(c), CLATTN_SUCCESS);
            r->len = 0;
            r->nappends = 0;
            resets++;
        }
        tokens(kn, n, (uint64_t)cyc * 2 + 1);
        tokens(vn, n, (uint64_t)cyc * 2 + 2);
        clattn_tensor tk = clattn_tensor_host(kn, CLATTN_F32, B, HKV, n, D);
        clattn_tensor tv = clattn_tensor_host(vn, CLATTN_F32, B, HKV, n, D);
        clattn_status st = clattn_kv_cache_append(c, &tk, &tv, NULL);
        if (st != CLATTN_SUCCESS) fail_msg("cycle %ld: append: %s", cyc, clattn_context_last_error(ctx));
        memcpy(r->k + r->len * D, kn, sizeof(float) * (size_t)(n * D));
        memcpy(r->v + r->len * D, vn, sizeof(float) * (size_t)(n * D));
        r->n[r->nappends++] = n;
        r->len += n;
        tokens(q, HQ, (uint64_t)cyc * 2 + 3);
        attend(ctx, c, q, o, lse);
        if (ctx->device_bytes != (cyc < warmup ? ctx->device_bytes : held0))
            fail_msg("cycle %ld: the context holds %llu device bytes, %llu after the warm-up", cyc,
                     (unsigned long long)ctx->device_bytes, (unsigned long long)held0);
        /* every format once at the end of the warm-up, so the fresh caches' memory is in
         * the peak the rest is held to */
        if (cyc % 4999 == 4998 || cyc == cycles - 1 || (cyc >= warmup - NFMT && cyc < warmup)) {
            check_against_fresh(ctx, fmts[i], fmts[(i + 3) % NFMT], r, q, o, lse, cyc);
            checks++;
        }
        if (cyc == warmup - 1) {
            held0 = ctx->device_bytes;
            peak0 = clattn_context_peak_device_bytes(ctx);
            rss0 = rss_bytes();
            tw = now_s();
        }
    }
    const double t1 = now_s();
    const long rss1 = rss_bytes();
    print_message("kv soak: %ld cycles (append + attention, %ld resets, %ld checks) in %.1f s, %.1f us per "
                  "cycle after the warm-up; device bytes %llu -> %llu (peak %llu -> %llu); RSS %.1f -> %.1f MiB\n",
                  cycles, resets, checks, t1 - t0, 1e6 * (t1 - tw) / (double)(cycles - warmup),
                  (unsigned long long)held0, (unsigned long long)ctx->device_bytes, (unsigned long long)peak0,
                  (unsigned long long)clattn_context_peak_device_bytes(ctx), rss0 / 1048576.0, rss1 / 1048576.0);
    assert_int_equal(ctx->device_bytes, held0);
    assert_int_equal(clattn_context_peak_device_bytes(ctx), peak0);
    assert_true(rss0 > 0 && rss1 > 0);
    if (rss1 - rss0 > RSS_MARGIN_BYTES)
        fail_msg("resident memory grew by %.1f MiB over %ld cycles", (rss1 - rss0) / 1048576.0, cycles - warmup);
    for (int i = 0; i < NFMT; i++) clattn_kv_cache_free(caches[i]);
    assert_int_equal(ctx->device_bytes, 0);
    clattn_context_free(ctx);
}

/* ---- Attention calls ------------------------------------------------------------- */

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv

static void test_context_soak(void **state)
{
    (void)state;
    const long calls = count_from_env("CLATTN_SOAK_CALLS", 10000);
    clattn_context *ctx = test_context();
    /* every path this build has, and auto; a decode-sized case (every path takes it) and a
     * padded f16 one with a mask and LSE (every path but decode) */
    clattn_path paths[CLATTN_PATH_COUNT_];
    int npaths = 0;
    for (int p = 0; p < CLATTN_PATH_COUNT_; p++)
        if (clattn_path_available((clattn_path)p)) paths[npaths++] = (clattn_path)p;
    const attn_case cases[2] = {
        {SHAPE(1, 2, 1, 2, 17, 8, 8), .kv_lens = 1, .seed = 7701},
        {SHAPE(1, 2, 2, 12, 9, 16, 8), .dtype = CLATTN_F16, .out_dtype = CLATTN_F16, .padded = 1,
         .mask_kind = ATTN_MASK_BOOL, .lse = 1, .causal = CLATTN_CAUSAL_TOP_LEFT, .seed = 7702},
    };
    attn_case_data *data[2][2]; /* [case][host 0 / cl_mem 1] */
    for (int c = 0; c < 2; c++)
        for (int dev = 0; dev < 2; dev++) {
            assert_int_equal(attn_case_data_create(&cases[c], &data[c][dev]), CLATTN_SUCCESS);
            if (dev) assert_int_equal(attn_case_data_upload(ctx, data[c][dev]), CLATTN_SUCCESS);
        }
    const long warmup = calls < 400 ? calls / 2 : 200;
    long rss0 = 0, checks = 0, ran = 0;
    uint64_t peak0 = 0;
    const double t0 = now_s();
    double tw = t0;
    for (long call = 0; call < calls; call++) {
        attn_case c = cases[call % 2];
        const int dev = (int)((call / 2) % 2);
        c.path = paths[(call / 4) % npaths];
        if (c.path == CLATTN_PATH_DECODE && c.Lq > 8) c.path = CLATTN_PATH_AUTO;
        attn_case_data *d = data[call % 2][dev];
        const bool check = call % 487 == 0 || call == calls - 1;
        if (check) assert_int_equal(attn_case_reset_outputs(d), CLATTN_SUCCESS);
        clattn_status st = attn_case_run(ctx, &c, d, NULL);
        if (st != CLATTN_SUCCESS)
            fail_msg("call %ld (path %s): %s: %s", call, clattn_path_name(c.path), clattn_status_string(st),
                     clattn_context_last_error(ctx));
        ran++;
        /* staging and scratch go back when the call returns */
        if (ctx->device_bytes != 0)
            fail_msg("call %ld (path %s): %llu device bytes still held", call, clattn_path_name(c.path),
                     (unsigned long long)ctx->device_bytes);
        if (check) {
            char buf[768];
            if (!test_case_matches(&c, d, buf, sizeof buf)) {
                fail_msg("call %ld (path %s, %s tensors): %s", call, clattn_path_name(c.path),
                         dev ? "cl_mem" : "host", buf);
            }
            checks++;
        }
        if (call == warmup - 1) {
            peak0 = clattn_context_peak_device_bytes(ctx);
            rss0 = rss_bytes();
            tw = now_s();
        }
    }
    const double t1 = now_s();
    const long rss1 = rss_bytes();
    print_message("context soak: %ld calls over %d paths (%ld checked) in %.1f s, %.1f us per call after the "
                  "warm-up; peak device bytes %llu -> %llu; RSS %.1f -> %.1f MiB\n",
                  ran, npaths, checks, t1 - t0, 1e6 * (t1 - tw) / (double)(calls - warmup),
                  (unsigned long long)peak0, (unsigned long long)clattn_context_peak_device_bytes(ctx),
                  rss0 / 1048576.0, rss1 / 1048576.0);
    assert_int_equal(clattn_context_peak_device_bytes(ctx), peak0);
    assert_true(rss0 > 0 && rss1 > 0);
    if (rss1 - rss0 > RSS_MARGIN_BYTES)
        fail_msg("resident memory grew by %.1f MiB over %ld calls", (rss1 - rss0) / 1048576.0, calls - warmup);
    for (int c = 0; c < 2; c++)
        for (int dev = 0; dev < 2; dev++) attn_case_data_free(data[c][dev]);
    clattn_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_cache_soak),
        cmocka_unit_test(test_context_soak),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
