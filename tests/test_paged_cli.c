/* `clattn run --paged-kv PAGE_SIZE,SEED` end to end with .npy files: K and V go through a
 * paged pool of the --kv-quant format (pages shuffled by the seed), each batch entry a
 * sequence of its --kv-lens length whose queries sit at its end; O and LSE match the
 * float64 reference computed per sequence on the keys and values the pool stores, and
 * bad uses exit non-zero with one line on stderr and no output file. The serving cases
 * of `clattn bench` (--paged, --cascade, --varlen) run end to end on tiny shapes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "clattn.h"
#include "support/npy.h"
#include "test_scratch.h"

#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>


#define EXPECT_FAILURE(needle, out, ...)                                                  \
    test_expect_cli_failure((needle), (out), NULL, ARGS(__VA_ARGS__), __LINE__)

static uint32_t seed;

static int setup(void **state)
{
    (void)state;
    return test_scratch_create("pagedcli");
}

static void test_run_paged_kv_matches_reference_per_sequence(void **state)
{
    (void)state;
    enum { B = 3, HQ = 4, HKV = 2, LQ = 2, LK = 45, D = 32, DV = 32 };
    static float q[B * HQ * LQ * D], k[B * HKV * LK * D], v[B * HKV * LK * DV], kh[sizeof k / 4], vh[sizeof v / 4];
    static double ref[HQ * LQ * DV], rlse[HQ * LQ];
    const int32_t lens[B] = {45, 9, 30};
    seed = 11;
    for (size_t i = 0; i < sizeof q / 4; i++) q[i] = test_lcg_value(&seed);
    for (size_t i = 0; i < sizeof k / 4; i++) k[i] = test_lcg_value(&seed) * 2;
    for (size_t i = 0; i < sizeof v / 4; i++) v[i] = test_lcg_value(&seed);
    const int64_t sq[4] = {B, HQ, LQ, D}, sk[4] = {B, HKV, LK, D}, sv[4] = {B, HKV, LK, DV}, sl[1] = {B};
    test_save_npy("q.npy", CLATTN_F32, 4, sq, q);
    test_save_npy("k.npy", CLATTN_F32, 4, sk, k);
    test_save_npy("v.npy", CLATTN_F32, 4, sv, v);
    test_save_npy("lens.npy", CLATTN_I32, 1, sl, lens);
    /* a bool mask [B, 1, LQ, LK] for the third run: entry b's part applies to sequence b */
    static uint8_t mask[B * LQ * LK];
    for (size_t i = 0; i < sizeof mask; i++) mask[i] = test_lcg_value(&seed) > -0.5f;
    const int64_t sm[4] = {B, 1, LQ, LK};
    test_save_npy("mask.npy", CLATTN_BOOL, 4, sm, mask);
    const char *formats[] = {"int8", "none", "f16"}; /* none: f32 pages */
    const char *pages[] = {"4,7", "16,3", "8,5"};
    for (size_t f = 0; f < 3; f++) {
        clattn_kv_format fmt = CLATTN_KV_F32;
        if (f != 1) assert_int_equal(clattn_kv_format_from_name(formats[f], &fmt), CLATTN_SUCCESS);
        for (int bh = 0; bh < B * HKV; bh++) {
            clattn_kv_quantize_host(fmt, CLATTN_KV_KEYS, k + bh * LK * D, LK, D, kh + bh * LK * D, NULL);
            clattn_kv_quantize_host(fmt, CLATTN_KV_VALUES, v + bh * LK * DV, LK, DV, vh + bh * LK * DV, NULL);
        }
        test_exe_result r;
        /* the masked run passes --mask last; the others end the list before it */
        const bool masked = f == 2;
        test_run_clattn(test_scratch_dir(), &r, ARGS("run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v", test_scratch_path("v.npy"),
                                      "--out", test_scratch_path("o.npy"), "--lse", test_scratch_path("lse.npy"), "--causal",
                                      "bottom-right", "--kv-quant", formats[f], "--kv-lens", test_scratch_path("lens.npy"),
                                      "--paged-kv", pages[f], "--softcap", "25", masked ? "--mask" : NULL,
                                      test_scratch_path("mask.npy")));
        if (r.status != 0) fail_msg("run --paged-kv %s: %s", pages[f], r.err);
        if (!strstr(r.out, "kv-pool")) fail_msg("run --paged-kv printed: %s", r.out);
        npy_array a, l;
        char err[1024];
        assert_int_equal(npy_read(test_scratch_path("o.npy"), &a, err, sizeof err), 0);
        assert_int_equal(npy_read(test_scratch_path("lse.npy"), &l, err, sizeof err), 0);
        const float *o = a.data, *lse = l.data;
        double worst = 0;
        for (int b = 0; b < B; b++) {
            /* sequence b alone: its own keys, queries aligned to its own length */
            clattn_tensor tq = clattn_tensor_host(q + b * HQ * LQ * D, CLATTN_F32, 1, HQ, LQ, D);
            clattn_tensor tk = clattn_tensor_host(kh + b * HKV * LK * D, CLATTN_F32, 1, HKV, lens[b], D);
            clattn_tensor tv = clattn_tensor_host(vh + b * HKV * LK * DV, CLATTN_F32, 1, HKV, lens[b], DV);
            tk.nb[1] = (int64_t)sizeof(float) * LK * D; /* rows of the full [LK] slab */
            tv.nb[1] = (int64_t)sizeof(float) * LK * DV;
            clattn_options opt;
            clattn_options_init(&opt);
            opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
            opt.softcap = 25.0f;
            clattn_tensor tm = clattn_tensor_host(mask + b * LQ * LK, CLATTN_BOOL, 1, 1, LQ, lens[b]);
            tm.nb[2] = LK; /* rows of the full [LK] mask */
            if (masked) opt.mask = &tm;
            assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, ref, rlse), CLATTN_SUCCESS);
            for (int i = 0; i < HQ * LQ * DV; i++) {
                const double got = o[b * HQ * LQ * DV + i];
                worst = fmax(worst, fabs(got - ref[i]) / (2e-4 + 2e-3 * fabs(ref[i])));
            }
            for (int i = 0; i < HQ * LQ; i++)
                worst = fmax(worst, fabs(lse[b * HQ * LQ + i] - rlse[i]) / (1e-3 + 1e-4 * fabs(rlse[i])));
        }
        npy_free(&a);
        npy_free(&l);
        if (!(worst <= 1.0)) fail_msg("run --paged-kv %s: max error %.3g of the f32 tolerance", pages[f], worst);
    }
    EXPECT_FAILURE("power of two", test_scratch_path("o.npy"), "run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"),
                   "--v", test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--paged-kv", "12");
    EXPECT_FAILURE("seed", test_scratch_path("o.npy"), "run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v",
                   test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--paged-kv", "16,x");
    EXPECT_FAILURE("int4", test_scratch_path("o.npy"), "run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v",
                   test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--paged-kv", "16", "--kv-quant", "int4");
    const int32_t cu[2] = {0, LK};
    const int64_t sc[1] = {2};
    test_save_npy("cu.npy", CLATTN_I32, 1, sc, cu);
    EXPECT_FAILURE("--varlen", test_scratch_path("o.npy"), "run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v",
                   test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--paged-kv", "16", "--varlen", test_scratch_path("cu.npy"));
}

/* The serving cases of `clattn bench` run end to end on tiny shapes: both rows, the ratio
 * line and one JSON line per row; misuse is refused with one line. */
static void test_bench_serving_cases_print_both_ways_and_their_ratio(void **state)
{
    (void)state;
    static const struct {
        const char *args[16], *ratio;
    } cases[] = {
        {{"bench", "--shape", "3,4,2,1,80,32", "--paged", "16,2", "--ragged", "20,80", "--kv-quant", "int8", "--runs",
          "2", "--warmup", "1", "--json", NULL},
         "paged / contiguous"},
        {{"bench", "--shape", "3,4,2,1,1,32", "--cascade", "32,9", "--paged", "16", "--runs", "2", "--warmup", "1",
          "--json", NULL},
         "cascade speed-up"},
        {{"bench", "--shape", "3,4,2,1,1,32", "--varlen", "10,40", "--causal", "bottom-right", "--runs", "2", "--warmup",
          "1", "--json", NULL},
         "varlen / one call per sequence"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *args[18];
        int n = 0;
        while (cases[c].args[n]) {
            args[n] = cases[c].args[n];
            n++;
        }
        args[n++] = test_scratch_path("bench.json");
        args[n] = NULL;
        remove(test_scratch_path("bench.json"));
        test_exe_result r;
        test_run_clattn(test_scratch_dir(), &r, args);
        if (r.status != 0 || !strstr(r.out, cases[c].ratio)) fail_msg("%s: status %d: %s%s", cases[c].ratio, r.status, r.out, r.err);
        FILE *f = fopen(test_scratch_path("bench.json"), "r");
        assert_non_null(f);
        char line[2048];
        int lines = 0;
        while (fgets(line, sizeof line, f)) {
            lines++;
            if (!strstr(line, "\"median_ms\"") || !strstr(line, "\"device_bytes\"")) fail_msg("json: %s", line);
        }
        fclose(f);
        remove(test_scratch_path("bench.json"));
        assert_int_equal(lines, 2);
    }
    test_exe_result r;
    test_run_clattn(test_scratch_dir(), &r, ARGS("bench", "--shape", "3,4,2,2,80,32", "--paged", "16"));
    if (r.status != 2 || !strstr(r.err, "Lq must be 1")) fail_msg("status %d: %s", r.status, r.err);
    test_run_clattn(test_scratch_dir(), &r, ARGS("bench", "--shape", "3,4,2,1,80,32", "--ragged", "1,80"));
    if (r.status != 2 || !strstr(r.err, "--ragged goes with --paged")) fail_msg("status %d: %s", r.status, r.err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_paged_kv_matches_reference_per_sequence),
        cmocka_unit_test(test_bench_serving_cases_print_both_ways_and_their_ratio),
    };
    return cmocka_run_group_tests(tests, setup, test_scratch_remove);
}
