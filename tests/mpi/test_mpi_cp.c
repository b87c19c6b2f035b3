/* clattn_mpi under mpirun (2, 3 and 4 ranks): ring, zigzag and Ulysses prefill give each
 * rank the rows of the float64 reference over the whole problem (SPEC §1 tolerances) on
 * every case of the shared suite (every option, GQA/MQA, masks, kv_lens, f16/bf16 inputs,
 * BLHD strides); decode over a KV cache sharded in rank order, in every cache format,
 * against the reference on the dequantized shards, with causal chunks, windows, ALiBi
 * and masks at global positions; a rank that fails mid-call makes every rank return an
 * error (no hang) and leaves the outputs untouched; ranks that disagree are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/attn_case.h"
#include "clattn_mpi.h"
#include "test_util.h"

static int rank, nranks;
static clattn_context *ctx;

/* Rows of full (along dim 2) that this rank holds under scheme, copied into a new host
 * buffer described as BHLD, or BLHD when blhd. */
static clattn_tensor local_rows(const clattn_tensor *full, clattn_cp_scheme s, int blhd,
                                unsigned char **buf)
{
    int64_t st[2], ln[2];
    int ns;
    clattn_cp_slices(s, full->ne[2], rank, nranks, st, ln, &ns);
    const int64_t l = ln[0] + ln[1];
    const size_t es = clattn_dtype_size(full->dtype);
    *buf = malloc((size_t)(full->ne[0] * full->ne[1] * l * full->ne[3]) * es + 1);
    assert_non_null(*buf);
    clattn_tensor t = clattn_tensor_host(*buf, full->dtype, full->ne[0], full->ne[1], l, full->ne[3]);
    if (blhd) t = clattn_tensor_blhd(t);
    for (int64_t a = 0; a < t.ne[0]; a++)
        for (int64_t b = 0; b < t.ne[1]; b++)
            for (int x = 0, li = 0; x < ns; x++)
                for (int64_t i = 0; i < ln[x]; i++, li++)
                    for (int64_t d = 0; d < t.ne[3]; d++)
                        memcpy(*buf + a * t.nb[0] + b * t.nb[1] + li * t.nb[2] + d * t.nb[3],
                               (const unsigned char *)full->host + full->offset + a * full->nb[0] +
                                   b * full->nb[1] + (st[x] + i) * full->nb[2] + d * full->nb[3],
                               es);
    return t;
}

static int close_to(double got, double ref, double atol, double rtol)
{
    if (isinf(ref) || isinf(got)) return got == ref;
    return !isnan(got) && fabs(got - ref) <= atol + rtol * fabs(ref);
}

/* Every rank's failures, summed: every rank then asserts the same thing. */
static long total_failures(long mine)
{
    long all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    return all;
}

/* One prefill case under one scheme: this rank's rows against the reference. */
static long check_prefill(const attn_case *c, clattn_cp_scheme s, clattn_mpi_stats *stats)
{
    clattn_tensor q, k, v, o;
    clattn_options opt;
    attn_case_data *d = test_case_prepare(c, &q, &k, &v, &o, &opt);
    const int64_t B = c->B, Hq = c->Hq, Lq = c->Lq, Dv = attn_case_dv(c);
    double *ref = malloc((size_t)(B * Hq * Lq * Dv) * 8 + 8), *ref_l = malloc((size_t)(B * Hq * Lq) * 8 + 8);
    assert_int_equal(clattn_reference_attention(&q, &k, &v, &opt, ref, ref_l), CLATTN_SUCCESS);

    unsigned char *qb, *kb, *vb;
    clattn_tensor tq = local_rows(&q, s, c->blhd, &qb), tk = local_rows(&k, s, c->blhd, &kb),
                  tv = local_rows(&v, s, c->blhd, &vb);
    const int64_t lq = tq.ne[2];
    float *ob = malloc((size_t)(B * Hq * lq * Dv) * 4 + 4), *lb = malloc((size_t)(B * Hq * lq) * 4 + 4);
    for (int64_t i = 0; i < B * Hq * lq * Dv; i++) ob[i] = NAN;
    for (int64_t i = 0; i < B * Hq * lq; i++) lb[i] = NAN;
    clattn_tensor to = clattn_tensor_host(ob, CLATTN_F32, B, Hq, lq, Dv);
    clattn_tensor tl = clattn_tensor_host(lb, CLATTN_F32, B, Hq, lq, 1);
    opt.lse = &tl;
    clattn_status st = clattn_mpi_attention(ctx, MPI_COMM_WORLD, s, &tq, &tk, &tv, &to, c->Lq, c->Lk, &opt, stats);
    long bad = 0;
    char line[512];
    attn_case_format(c, line, sizeof line);
    if (st != CLATTN_SUCCESS) {
        print_error("rank %d, %s: %s: %s\n", rank, clattn_cp_scheme_name(s), line, clattn_mpi_last_error());
        bad = 1;
    } else {
        int64_t gs[2], gl[2];
        int ns;
        clattn_cp_slices(s, Lq, rank, nranks, gs, gl, &ns);
        /* f32 storage tolerance: the inputs are the stored (rounded) values */
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                for (int x = 0, li = 0; x < ns; x++)
                    for (int64_t i = 0; i < gl[x]; i++, li++) {
                        const int64_t gi = gs[x] + i, r = (b * Hq + h) * Lq + gi, lr = (b * Hq + h) * lq + li;
                        for (int64_t dd = 0; dd < Dv; dd++) {
                            const double want = ref[r * Dv + dd], got = ob[lr * Dv + dd];
                            if (!close_to(got, want, 2e-4, 2e-3) && bad++ < 3)
                                print_error("rank %d %s %s: O[%lld,%lld,%lld,%lld] %g, ref %g\n", rank,
                                            clattn_cp_scheme_name(s), line, (long long)b, (long long)h,
                                            (long long)gi, (long long)dd, got, want);
                        }
                        if (!close_to(lb[lr], ref_l[r], 1e-3, 1e-4) && bad++ < 3)
                            print_error("rank %d %s %s: LSE[%lld,%lld,%lld] %g, ref %g\n", rank,
                                        clattn_cp_scheme_name(s), line, (long long)b, (long long)h,
                                        (long long)gi, (double)lb[lr], ref_l[r]);
                    }
    }
    free(ref), free(ref_l), free(qb), free(kb), free(vb), free(ob), free(lb);
    attn_case_data_free(d);
    return bad;
}

/* Every suite case through ring and zigzag, and Ulysses where the heads divide. */
static void test_prefill_schemes_match_reference_on_every_suite_case(void **state)
{
    (void)state;
    size_t n = 0;
    const attn_case *suite = attn_case_suite(&n);
    long bad = 0;
    size_t ulysses_cases = 0;
    for (size_t i = 0; i < n; i++) {
        /* head dims 16..64 only: every option is in them, and each other size is a
         * kernel build of its own per rank (the single-device tests cover the sizes) */
        if (suite[i].D > 64 || attn_case_dv(&suite[i]) != suite[i].D || suite[i].D < 16) continue;
        bad += check_prefill(&suite[i], CLATTN_CP_RING, NULL);
        bad += check_prefill(&suite[i], CLATTN_CP_ZIGZAG, NULL);
        if (suite[i].Hq % nranks == 0 && suite[i].Hkv % nranks == 0) {
            bad += check_prefill(&suite[i], CLATTN_CP_ULYSSES, NULL);
            ulysses_cases++;
        }
    }
    /* Ulysses on a case of its own whose heads divide at every rank count */
    const attn_case u = {.B = 2, .Hq = 24, .Hkv = 12, .Lq = 23, .Lk = 31, .D = 16, .lse = 1,
                         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .alibi = 1, .mask_kind = ATTN_MASK_FLOAT,
                         .kv_lens = 1, .seed = 99};
    bad += check_prefill(&u, CLATTN_CP_ULYSSES, NULL);
    /* sliding windows narrower than a slice (the band crosses blocks below the diagonal),
     * and causal cross-attention with Lq != Lk, through ring and zigzag */
    const attn_case more[] = {
        {.B = 1, .Hq = 2, .Hkv = 1, .Lq = 96, .Lk = 96, .D = 16, .lse = 1, .seed = 11,
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .window = 1, .win_left = 5, .win_right = -1},
        {.B = 1, .Hq = 2, .Hkv = 2, .Lq = 70, .Lk = 90, .D = 16, .lse = 1, .seed = 12,
         .window = 1, .win_left = 7, .win_right = 3, .alibi = 1},
        {.B = 2, .Hq = 2, .Hkv = 1, .Lq = 37, .Lk = 80, .D = 16, .lse = 1, .seed = 13,
         .causal = CLATTN_CAUSAL_TOP_LEFT, .kv_lens = 1},
        {.B = 1, .Hq = 2, .Hkv = 2, .Lq = 80, .Lk = 37, .D = 16, .lse = 1, .seed = 14,
         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .window = 1, .win_left = 2, .win_right = 0},
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        bad += check_prefill(&more[i], CLATTN_CP_RING, NULL);
        bad += check_prefill(&more[i], CLATTN_CP_ZIGZAG, NULL);
    }
    assert_int_equal(total_failures(bad), 0);
}

/* Zigzag's causal balance: the blocks each rank computes (not skipped) are equal. */
static void test_zigzag_balances_causal_work(void **state)
{
    (void)state;
    const attn_case c = {.B = 1, .Hq = 2, .Hkv = 2, .Lq = 64, .Lk = 64, .D = 16, .lse = 1,
                         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .seed = 5};
    clattn_mpi_stats st;
    assert_int_equal(total_failures(check_prefill(&c, CLATTN_CP_ZIGZAG, &st)), 0);
    assert_int_equal(st.steps, nranks);
    assert_true(st.bytes_sent > 0 || nranks == 1);
}

/* ---- decode over a sharded cache --------------------------------------------------- */

static long check_decode(clattn_kv_format f, int64_t Lq, int variant)
{
    const int64_t B = 3, Hq = 4, Hkv = 2, D = 32, Dv = 32, Lmax = 45;
    const int32_t total[3] = {45, 7, 2};
    const size_t nk = (size_t)(B * Hkv * Lmax * D);
    float *K = malloc(nk * 4), *V = malloc(nk * 4), *Kh = calloc(nk, 4), *Vh = calloc(nk, 4);
    float *Q = malloc((size_t)(B * Hq * Lq * D) * 4), *O = malloc((size_t)(B * Hq * Lq * Dv) * 4),
          *L = malloc((size_t)(B * Hq * Lq) * 4);
    uint64_t x = 12345 + (uint64_t)f * 7 + (uint64_t)variant;
    for (size_t i = 0; i < nk; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        K[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2 - 1);
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        V[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2 - 1);
    }
    for (int64_t i = 0; i < B * Hq * Lq * D; i++) Q[i] = K[i % (int64_t)nk] * 1.5f;
    for (int64_t i = 0; i < B * Hq * Lq * Dv; i++) O[i] = NAN;
    /* this rank's shard, and every rank's shard dequantized (the reference's K and V) */
    int32_t mine[3];
    int64_t mstart[3];
    for (int r = 0; r < nranks; r++)
        for (int64_t b = 0; b < B; b++) {
            int64_t s[2], l[2];
            int ns;
            clattn_cp_slices(CLATTN_CP_RING, total[b], r, nranks, s, l, &ns);
            if (r == rank) mine[b] = (int32_t)l[0], mstart[b] = s[0];
            for (int64_t h = 0; h < Hkv; h++) {
                const size_t at = (size_t)(((b * Hkv + h) * Lmax + s[0]) * D);
                if (l[0] == 0) continue;
                assert_int_equal(clattn_kv_quantize_host(f, CLATTN_KV_KEYS, K + at, (size_t)l[0], D, Kh + at, NULL), CLATTN_SUCCESS);
                assert_int_equal(clattn_kv_quantize_host(f, CLATTN_KV_VALUES, V + at, (size_t)l[0], Dv, Vh + at, NULL), CLATTN_SUCCESS);
            }
        }
    int64_t cap = 1;
    for (int64_t b = 0; b < B; b++) cap = mine[b] > cap ? mine[b] : cap;
    float *kn = calloc((size_t)(B * Hkv * cap * D), 4), *vn = calloc((size_t)(B * Hkv * cap * Dv), 4);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hkv; h++)
            for (int64_t j = 0; j < mine[b]; j++) {
                memcpy(kn + ((b * Hkv + h) * cap + j) * D, K + ((b * Hkv + h) * Lmax + mstart[b] + j) * D, (size_t)D * 4);
                memcpy(vn + ((b * Hkv + h) * cap + j) * Dv, V + ((b * Hkv + h) * Lmax + mstart[b] + j) * Dv, (size_t)Dv * 4);
            }
    clattn_kv_cache *cache = NULL;
    assert_int_equal(clattn_kv_cache_create(ctx, B, Hkv, cap, D, Dv, f, f, &cache), CLATTN_SUCCESS);
    clattn_tensor tkn = clattn_tensor_host(kn, CLATTN_F32, B, Hkv, cap, D), tvn = clattn_tensor_host(vn, CLATTN_F32, B, Hkv, cap, Dv);
    assert_int_equal(clattn_kv_cache_append(cache, &tkn, &tvn, mine), CLATTN_SUCCESS);

    /* options at global positions */
    float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
    float *fm = malloc((size_t)(Lq * Lmax) * 4);
    for (int64_t i = 0; i < Lq * Lmax; i++) fm[i] = (i * 7) % 5 == 0 ? -INFINITY : (float)((i % 3) - 1) * 0.5f;
    clattn_tensor ta = clattn_tensor_host(slopes, CLATTN_F32, Hq, 1, 1, 1);
    clattn_tensor tm = clattn_tensor_host(fm, CLATTN_F32, 1, 1, Lq, Lmax);
    clattn_options opt;
    clattn_options_init(&opt);
    clattn_tensor tl = clattn_tensor_host(L, CLATTN_F32, B, Hq, Lq, 1);
    opt.lse = &tl;
    switch (variant) {
    case 0: opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT; break;
    case 1: opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT, opt.window_left = 6, opt.alibi = &ta; break;
    case 2: opt.causal = CLATTN_CAUSAL_TOP_LEFT, opt.mask = &tm, opt.softcap = 5.0f; break;
    default: break;
    }
    clattn_tensor tq = clattn_tensor_host(Q, CLATTN_F32, B, Hq, Lq, D), to = clattn_tensor_host(O, CLATTN_F32, B, Hq, Lq, Dv);
    clattn_status st = clattn_mpi_kv_cache_attention(ctx, MPI_COMM_WORLD, cache, &tq, &to, &opt, NULL);
    long bad = 0;
    if (st != CLATTN_SUCCESS) {
        print_error("rank %d decode %s Lq=%lld variant %d: %s\n", rank, clattn_kv_format_name(f), (long long)Lq,
                    variant, clattn_mpi_last_error());
        bad = 1;
    }
    /* the reference per batch entry: its own Lk (the cache aligns queries per entry) */
    double *ref = malloc((size_t)(Hq * Lq * Dv) * 8), *ref_l = malloc((size_t)(Hq * Lq) * 8);
    for (int64_t b = 0; st == CLATTN_SUCCESS && b < B; b++) {
        clattn_tensor rq = clattn_tensor_host(Q + b * Hq * Lq * D, CLATTN_F32, 1, Hq, Lq, D);
        clattn_tensor rk = clattn_tensor_host(Kh + b * Hkv * Lmax * D, CLATTN_F32, 1, Hkv, Lmax, D);
        clattn_tensor rv = clattn_tensor_host(Vh + b * Hkv * Lmax * Dv, CLATTN_F32, 1, Hkv, Lmax, Dv);
        rk.ne[2] = rv.ne[2] = total[b];
        clattn_options ro = opt;
        ro.lse = NULL;
        clattn_tensor rm = tm;
        rm.ne[3] = total[b];
        if (ro.mask) ro.mask = &rm;
        assert_int_equal(clattn_reference_attention(&rq, &rk, &rv, &ro, ref, ref_l), CLATTN_SUCCESS);
        for (int64_t r = 0; r < Hq * Lq; r++) {
            for (int64_t dd = 0; dd < Dv; dd++) {
                const double got = O[(b * Hq * Lq + r) * Dv + dd], want = ref[r * Dv + dd];
                if (!close_to(got, want, 2e-4, 2e-3) && bad++ < 3)
                    print_error("rank %d decode %s Lq=%lld variant %d: O[%lld, row %lld, %lld] %g, ref %g\n", rank,
                                clattn_kv_format_name(f), (long long)Lq, variant, (long long)b, (long long)r,
                                (long long)dd, got, want);
            }
            if (!close_to(L[b * Hq * Lq + r], ref_l[r], 1e-3, 1e-4) && bad++ < 3)
                print_error("rank %d decode %s variant %d: LSE[%lld, row %lld] %g, ref %g\n", rank,
                            clattn_kv_format_name(f), variant, (long long)b, (long long)r,
                            (double)L[b * Hq * Lq + r], ref_l[r]);
        }
    }
    clattn_kv_cache_free(cache);
    free(K), free(V), free(Kh), free(Vh), free(Q), free(O), free(L), free(kn), free(vn), free(fm), free(ref), free(ref_l);
    return bad;
}

static void test_sharded_decode_matches_reference_in_every_format(void **state)
{
    (void)state;
    long bad = 0;
    for (int f = 0; f < CLATTN_KV_FORMAT_COUNT_; f++) bad += check_decode((clattn_kv_format)f, 1, 0);
    /* options at global positions: a 3-query chunk, windows with ALiBi, top-left with a mask */
    for (int variant = 0; variant < 4; variant++) bad += check_decode(CLATTN_KV_F32, 3, variant);
    bad += check_decode(CLATTN_KV_INT8, 1, 1);
    assert_int_equal(total_failures(bad), 0);
}

/* ---- failures ------------------------------------------------------------------------ */

/* Rank 1 (the last rank with 2) fails at step 1 (ring) or 0: every rank returns an
 * error, the others name rank 1, and no output was written. */
static void test_failing_rank_fails_every_rank(void **state)
{
    (void)state;
    const int64_t B = 1, H = 12, L = 12, D = 8; /* 12 heads: Ulysses at 2, 3 and 4 ranks */
    static float q[1 * 12 * 12 * 8], o[1 * 12 * 12 * 8];
    for (int i = 0; i < 1152; i++) q[i] = (float)(i % 11) * 0.1f;
    int64_t st2[2], ln[2];
    int ns;
    clattn_cp_slices(CLATTN_CP_RING, L, rank, nranks, st2, ln, &ns);
    const char *faults[3] = {"1:1", "1:0", "1:0"};
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < 1152; i++) o[i] = 42.0f;
        clattn_tensor t = clattn_tensor_host(q, CLATTN_F32, B, H, ln[0], D);
        clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, H, ln[0], D);
        setenv("CLATTN_MPI_FAULT", faults[s], 1);
        clattn_status st = clattn_mpi_attention(ctx, MPI_COMM_WORLD, (clattn_cp_scheme)s, &t, &t, &t, &to, L, L, NULL, NULL);
        unsetenv("CLATTN_MPI_FAULT");
        assert_int_not_equal(st, CLATTN_SUCCESS);
        print_message("rank %d, %s: %s\n", rank, clattn_cp_scheme_name((clattn_cp_scheme)s), clattn_mpi_last_error());
        if (rank != 1) assert_non_null(strstr(clattn_mpi_last_error(), "rank 1"));
        else assert_non_null(strstr(clattn_mpi_last_error(), "simulated"));
        for (int i = 0; i < 1152; i++) assert_true(o[i] == 42.0f);
    }
    /* the next call works again */
    clattn_tensor t = clattn_tensor_host(q, CLATTN_F32, B, H, ln[0], D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, H, ln[0], D);
    assert_int_equal(clattn_mpi_attention(ctx, MPI_COMM_WORLD, CLATTN_CP_RING, &t, &t, &t, &to, L, L, NULL, NULL),
                     CLATTN_SUCCESS);
    /* decode: rank 1 fails its shard */
    clattn_kv_cache *cache = NULL;
    assert_int_equal(clattn_kv_cache_create(ctx, 1, 2, 4, 8, 8, CLATTN_KV_F32, CLATTN_KV_F32, &cache), CLATTN_SUCCESS);
    clattn_tensor kn = clattn_tensor_host(q, CLATTN_F32, 1, 2, 4, 8);
    assert_int_equal(clattn_kv_cache_append(cache, &kn, &kn, NULL), CLATTN_SUCCESS);
    clattn_tensor dq = clattn_tensor_host(q, CLATTN_F32, 1, 2, 1, 8), dout = clattn_tensor_host(o, CLATTN_F32, 1, 2, 1, 8);
    for (int i = 0; i < 16; i++) o[i] = 42.0f;
    setenv("CLATTN_MPI_FAULT", "1:0", 1);
    clattn_status st = clattn_mpi_kv_cache_attention(ctx, MPI_COMM_WORLD, cache, &dq, &dout, NULL, NULL);
    unsetenv("CLATTN_MPI_FAULT");
    assert_int_not_equal(st, CLATTN_SUCCESS);
    for (int i = 0; i < 16; i++) assert_true(o[i] == 42.0f);
    clattn_kv_cache_free(cache);
}

/* One rank with a wrong local shape, or ranks that disagree on the problem: every rank
 * refuses the call. */
static void test_bad_and_inconsistent_calls_are_refused_everywhere(void **state)
{
    (void)state;
    float q[2 * 16 * 8], o[2 * 16 * 8];
    for (int i = 0; i < 256; i++) q[i] = 0.01f * (float)i, o[i] = 42.0f;
    int64_t st2[2], ln[2];
    int ns;
    clattn_cp_slices(CLATTN_CP_RING, 16, rank, nranks, st2, ln, &ns);
    const int64_t mine = rank == 0 ? ln[0] + 1 : ln[0]; /* rank 0 has one row too many */
    clattn_tensor t = clattn_tensor_host(q, CLATTN_F32, 1, 2, mine, 8), to = clattn_tensor_host(o, CLATTN_F32, 1, 2, mine, 8);
    assert_int_not_equal(clattn_mpi_attention(ctx, MPI_COMM_WORLD, CLATTN_CP_RING, &t, &t, &t, &to, 16, 16, NULL, NULL),
                         CLATTN_SUCCESS);
    if (rank == 0) assert_non_null(strstr(clattn_mpi_last_error(), "query rows"));
    /* disagreement on the options */
    clattn_cp_slices(CLATTN_CP_ZIGZAG, 16, rank, nranks, st2, ln, &ns);
    t = clattn_tensor_host(q, CLATTN_F32, 1, 2, ln[0] + ln[1], 8);
    to = clattn_tensor_host(o, CLATTN_F32, 1, 2, ln[0] + ln[1], 8);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = rank == 0 ? CLATTN_CAUSAL_TOP_LEFT : CLATTN_CAUSAL_NONE;
    assert_int_equal(clattn_mpi_attention(ctx, MPI_COMM_WORLD, CLATTN_CP_ZIGZAG, &t, &t, &t, &to, 16, 16, &opt, NULL),
                     nranks > 1 ? CLATTN_ERROR_INVALID_ARGUMENT : CLATTN_SUCCESS);
    /* Ulysses with heads that do not divide (3 heads) */
    if (nranks > 1 && 3 % nranks) {
        clattn_cp_slices(CLATTN_CP_ULYSSES, 16, rank, nranks, st2, ln, &ns);
        t = clattn_tensor_host(q, CLATTN_F32, 1, 3, ln[0], 8), to = clattn_tensor_host(o, CLATTN_F32, 1, 3, ln[0], 8);
        assert_int_equal(clattn_mpi_attention(ctx, MPI_COMM_WORLD, CLATTN_CP_ULYSSES, &t, &t, &t, &to, 16, 16, NULL, NULL),
                         CLATTN_ERROR_INVALID_SHAPE);
    }
    for (int i = 0; i < 256; i++) assert_true(o[i] == 42.0f || nranks == 1);
}

int main(int argc, char **argv)
{
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (clattn_context_create(NULL, &ctx) != CLATTN_SUCCESS) {
        fprintf(stderr, "rank %d: no OpenCL device\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_schemes_match_reference_on_every_suite_case),
        cmocka_unit_test(test_zigzag_balances_causal_work),
        cmocka_unit_test(test_sharded_decode_matches_reference_in_every_format),
        cmocka_unit_test(test_failing_rank_fails_every_rank),
        cmocka_unit_test(test_bad_and_inconsistent_calls_are_refused_everywhere),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    clattn_context_free(ctx);
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any ? 1 : 0;
}
