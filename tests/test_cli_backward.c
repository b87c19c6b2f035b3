/* `clattn run --grad-out dO.npy --dq DQ.npy --dk DK.npy --dv DV.npy` as a user meets it:
 * good runs write gradients that match the float64 backward reference (within 1e-3 of
 * each tensor's largest value plus 1e-3 relative: f32 files), in both layouts and with
 * masks and options; bad uses exit non-zero with one stderr line and leave no file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "clattn.h"
#include "support/npy.h"
#include "test_scratch.h"

#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* GQA (Hq = 2 Hkv), Lq != Lk, Dv != D. */
enum { B = 2, HQ = 4, HKV = 2, LQ = 6, LK = 9, D = 8, DV = 5 };

static float q_data[B * HQ * LQ * D], k_data[B * HKV * LK * D], v_data[B * HKV * LK * DV];
static float do_data[B * HQ * LQ * DV], fmask[LQ * LK];

static int setup(void **state)
{
    (void)state;
    if (test_scratch_create("clibwd") != 0) return -1;
    uint32_t s = 11;
    float *all[4] = {q_data, k_data, v_data, do_data};
    size_t n[4] = {sizeof q_data / 4, sizeof k_data / 4, sizeof v_data / 4, sizeof do_data / 4};
    for (int a = 0; a < 4; a++)
        for (size_t i = 0; i < n[a]; i++) all[a][i] = test_lcg_value(&s);
    for (int i = 0; i < LQ; i++)
        for (int j = 0; j < LK; j++) fmask[i * LK + j] = (i + j) % 4 == 1 ? -INFINITY : 0.1f * (float)(j - i);
    const int64_t sq[4] = {B, HQ, LQ, D}, sk[4] = {B, HKV, LK, D}, sv[4] = {B, HKV, LK, DV},
                  so[4] = {B, HQ, LQ, DV}, sm[2] = {LQ, LK};
    test_save_npy("q.npy", CLATTN_F32, 4, sq, q_data);
    test_save_npy("k.npy", CLATTN_F32, 4, sk, k_data);
    test_save_npy("v.npy", CLATTN_F32, 4, sv, v_data);
    test_save_npy("do.npy", CLATTN_F32, 4, so, do_data);
    test_save_npy("mask.npy", CLATTN_F32, 2, sm, fmask);
    static float t[sizeof q_data / 4];
    const int64_t tq[4] = {B, LQ, HQ, D}, tk[4] = {B, LK, HKV, D}, tv[4] = {B, LK, HKV, DV},
                  to[4] = {B, LQ, HQ, DV};
    test_swap_hl(q_data, t, B, HQ, LQ, D, true);
    test_save_npy("q_blhd.npy", CLATTN_F32, 4, tq, t);
    test_swap_hl(k_data, t, B, HKV, LK, D, true);
    test_save_npy("k_blhd.npy", CLATTN_F32, 4, tk, t);
    test_swap_hl(v_data, t, B, HKV, LK, DV, true);
    test_save_npy("v_blhd.npy", CLATTN_F32, 4, tv, t);
    test_swap_hl(do_data, t, B, HQ, LQ, DV, true);
    test_save_npy("do_blhd.npy", CLATTN_F32, 4, to, t);
    const int64_t bad[4] = {B, HQ, LQ, DV + 1};
    static float zeros[B * HQ * LQ * (DV + 1)];
    test_save_npy("do_bad.npy", CLATTN_F32, 4, bad, zeros);
    return 0;
}


/* Compare a written gradient file with dense BHLD reference values. */
static void check_file(const char *name, const double *ref, int h, int l, int x, bool blhd)
{
    npy_array a;
    char err[512];
    if (npy_read(test_scratch_path(name), &a, err, sizeof err) != 0) fail_msg("%s: %s", name, err);
    const int n = B * h * l * x;
    float *g = malloc((size_t)n * sizeof *g);
    assert_non_null(g);
    if (blhd) test_swap_hl((const float *)a.data, g, B, h, l, x, false);
    else memcpy(g, a.data, (size_t)n * sizeof *g);
    double m = 0.0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs(ref[i]));
    assert_true(m > 0.0);
    for (int i = 0; i < n; i++)
        if (!(fabs(g[i] - ref[i]) <= 1e-3 * m + 1e-3 * fabs(ref[i])))
            fail_msg("%s[%d] = %g, reference %g", name, i, (double)g[i], ref[i]);
    free(g);
    npy_free(&a);
}

static void run_good(bool blhd, bool with_mask)
{
    test_exe_result r;
    const char *suffix = blhd ? "_blhd.npy" : ".npy";
    char q[64], k[64], v[64], dO[64];
    snprintf(q, sizeof q, "q%s", suffix);
    snprintf(k, sizeof k, "k%s", suffix);
    snprintf(v, sizeof v, "v%s", suffix);
    snprintf(dO, sizeof dO, "do%s", suffix);
    if (with_mask)
        test_run_clattn(test_scratch_dir(), &r,
                        ARGS("run", "--q", test_scratch_path(q), "--k", test_scratch_path(k), "--v", test_scratch_path(v), "--out",
                             test_scratch_path("o.npy"), "--grad-out", test_scratch_path(dO), "--dq", test_scratch_path("dq.npy"),
                             "--dk", test_scratch_path("dk.npy"), "--dv", test_scratch_path("dv.npy"), "--mask",
                             test_scratch_path("mask.npy"), "--causal", "bottom-right", "--softcap", "3",
                             "--layout", blhd ? "blhd" : "bhld"));
    else
        test_run_clattn(test_scratch_dir(), &r,
                        ARGS("run", "--q", test_scratch_path(q), "--k", test_scratch_path(k), "--v", test_scratch_path(v), "--out",
                             test_scratch_path("o.npy"), "--grad-out", test_scratch_path(dO), "--dq", test_scratch_path("dq.npy"),
                             "--dk", test_scratch_path("dk.npy"), "--dv", test_scratch_path("dv.npy"), "--layout",
                             blhd ? "blhd" : "bhld"));
    if (r.status != 0) fail_msg("clattn run --grad-out: exit %d: %s", r.status, r.err);
    assert_non_null(strstr(r.out, "backward pass wrote"));

    clattn_tensor tq = clattn_tensor_host(q_data, CLATTN_F32, B, HQ, LQ, D);
    clattn_tensor tk = clattn_tensor_host(k_data, CLATTN_F32, B, HKV, LK, D);
    clattn_tensor tv = clattn_tensor_host(v_data, CLATTN_F32, B, HKV, LK, DV);
    clattn_tensor tdo = clattn_tensor_host(do_data, CLATTN_F32, B, HQ, LQ, DV);
    clattn_tensor tm = clattn_tensor_host(fmask, CLATTN_F32, 1, 1, LQ, LK);
    clattn_options opt;
    clattn_options_init(&opt);
    if (with_mask) {
        opt.mask = &tm;
        opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
        opt.softcap = 3.0f;
    }
    static double rq[B * HQ * LQ * D], rk[B * HKV * LK * D], rv[B * HKV * LK * DV];
    assert_int_equal(clattn_reference_attention_backward(&tq, &tk, &tv, &tdo, &opt, rq, rk, rv, NULL),
                     CLATTN_SUCCESS);
    check_file("dq.npy", rq, HQ, LQ, D, blhd);
    check_file("dk.npy", rk, HKV, LK, D, blhd);
    check_file("dv.npy", rv, HKV, LK, DV, blhd);
}

static void test_run_grad_out_writes_reference_gradients(void **state)
{
    (void)state;
    run_good(false, false);
    run_good(true, true);
}

/* One stderr line naming the problem, a non-zero exit, no output file left. */
static void expect_failure(const char *needle, const char *const *args)
{
    const char *outs[4] = {"o.npy", "dq.npy", "dk.npy", "dv.npy"};
    for (int i = 0; i < 4; i++) remove(test_scratch_path(outs[i]));
    test_exe_result r;
    test_run_clattn(test_scratch_dir(), &r, args);
    if (r.status != 1 && r.status != 2) fail_msg("exit status %d; stderr: %s", r.status, r.err);
    const char *nl = strchr(r.err, '\n');
    if (!nl || nl[1] != '\0' || !strstr(r.err, needle))
        fail_msg("want one stderr line with \"%s\", got \"%s\"", needle, r.err);
    for (int i = 0; i < 4; i++)
        if (test_file_exists(test_scratch_path(outs[i]))) fail_msg("%s left behind (%s)", outs[i], needle);
}

static void test_run_grad_out_bad_uses_fail_cleanly(void **state)
{
    (void)state;
    expect_failure("--grad-out", ARGS("run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v",
                                      test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--grad-out",
                                      test_scratch_path("do_bad.npy"), "--dq", test_scratch_path("dq.npy"), "--dk",
                                      test_scratch_path("dk.npy"), "--dv", test_scratch_path("dv.npy")));
    expect_failure("needs all of", ARGS("run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v",
                                        test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--grad-out",
                                        test_scratch_path("do.npy"), "--dq", test_scratch_path("dq.npy")));
    expect_failure("same file", ARGS("run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v",
                                     test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--grad-out",
                                     test_scratch_path("do.npy"), "--dq", test_scratch_path("dq.npy"), "--dk",
                                     test_scratch_path("dq.npy"), "--dv", test_scratch_path("dv.npy")));
    expect_failure("--kv-quant", ARGS("run", "--q", test_scratch_path("q.npy"), "--k", test_scratch_path("k.npy"), "--v",
                                      test_scratch_path("v.npy"), "--out", test_scratch_path("o.npy"), "--grad-out",
                                      test_scratch_path("do.npy"), "--dq", test_scratch_path("dq.npy"), "--dk",
                                      test_scratch_path("dk.npy"), "--dv", test_scratch_path("dv.npy"), "--kv-quant",
                                      "int8"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_grad_out_writes_reference_gradients),
        cmocka_unit_test(test_run_grad_out_bad_uses_fail_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, test_scratch_remove);
}
