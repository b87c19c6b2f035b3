/* `clattn run --context-parallel ring|zigzag|ulysses` under mpirun (2, 3 and 4 ranks):
 * rank 0 reads the .npy files and writes O and LSE, which must equal the float64
 * reference (SPEC §1 tolerances) as a single-process run's do, with every option file
 * (mask, kv-lens, alibi), causal, window, softcap and the BLHD layout; a failing rank
 * makes mpirun exit non-zero with one message and no output file; `clattn bench
 * --context-parallel` prints its per-rank table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clattn.h"
#include "support/npy.h"

static char dir[256];
static int nranks = 2;

static const char *in_dir(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void put(const char *name, clattn_dtype dt, int rank, const int64_t *shape, const void *data)
{
    char err[256];
    if (npy_write(in_dir(name), dt, rank, shape, data, dt, err, sizeof err) != 0) fail_msg("%s: %s", name, err);
}

/* Run a shell command line; returns its exit status; output to dir/log. */
static int sh(const char *cmdline)
{
    char full[4096];
    snprintf(full, sizeof full, "%s > %s/log 2>&1", cmdline, dir);
    int rc = system(full);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static void show_log(void)
{
    char path[512], line[1024];
    snprintf(path, sizeof path, "%s/log", dir);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f)) print_message("  | %s", line);
    if (f) fclose(f);
}

static int close_to(double got, double ref, double atol, double rtol)
{
    if (isinf(ref) || isinf(got)) return got == ref;
    return !isnan(got) && fabs(got - ref) <= atol + rtol * fabs(ref);
}

enum { B = 2, HQ = 4, HKV = 2, LQ = 21, LK = 27, D = 16 };

/* The inputs, and the float64 reference for the options the run gets. */
static void make_inputs(int blhd)
{
    static float q[B * HQ * LQ * D], k[B * HKV * LK * D], v[B * HKV * LK * D], alibi[HQ], fm[LQ * LK];
    static int32_t lens[B] = {20, 27};
    uint64_t x = 77;
    for (size_t i = 0; i < sizeof q / 4; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL, q[i] = (float)((x >> 40) % 2001) / 1000.0f - 1.0f;
    for (size_t i = 0; i < sizeof k / 4; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL, k[i] = (float)((x >> 40) % 2001) / 1000.0f - 1.0f, v[i] = (float)((x >> 20) % 2001) / 1000.0f - 1.0f;
    for (int h = 0; h < HQ; h++) alibi[h] = 0.25f / (float)(h + 1);
    for (int i = 0; i < LQ * LK; i++) fm[i] = (i % 7 == 0) ? -INFINITY : 0.1f * (float)(i % 5);
    /* files in the run's layout: blhd stores [B, L, H, D] */
    static float tq[sizeof q / 4], tk[sizeof k / 4], tv[sizeof v / 4];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < HQ; h++)
            for (int i = 0; i < LQ; i++)
                for (int d = 0; d < D; d++)
                    tq[blhd ? ((b * LQ + i) * HQ + h) * D + d : ((b * HQ + h) * LQ + i) * D + d] = q[((b * HQ + h) * LQ + i) * D + d];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < HKV; h++)
            for (int i = 0; i < LK; i++)
                for (int d = 0; d < D; d++) {
                    const int at = blhd ? ((b * LK + i) * HKV + h) * D + d : ((b * HKV + h) * LK + i) * D + d;
                    tk[at] = k[((b * HKV + h) * LK + i) * D + d];
                    tv[at] = v[((b * HKV + h) * LK + i) * D + d];
                }
    const int64_t sq[4] = {B, blhd ? LQ : HQ, blhd ? HQ : LQ, D}, sk[4] = {B, blhd ? LK : HKV, blhd ? HKV : LK, D};
    put("q.npy", CLATTN_F32, 4, sq, tq);
    put("k.npy", CLATTN_F32, 4, sk, tk);
    put("v.npy", CLATTN_F32, 4, sk, tv);
    const int64_t sa[1] = {HQ}, sl[1] = {B}, sm[2] = {LQ, LK};
    put("alibi.npy", CLATTN_F32, 1, sa, alibi);
    put("lens.npy", CLATTN_I32, 1, sl, lens);
    put("mask.npy", CLATTN_F32, 2, sm, fm);
}

/* The reference for the same files and options (BHLD tensors over the files' data). */
static void reference(int blhd, const clattn_options *opt, double *out, double *lse)
{
    npy_array q, k, v;
    char err[256];
    assert_int_equal(npy_read(in_dir("q.npy"), &q, err, sizeof err), 0);
    assert_int_equal(npy_read(in_dir("k.npy"), &k, err, sizeof err), 0);
    assert_int_equal(npy_read(in_dir("v.npy"), &v, err, sizeof err), 0);
    clattn_tensor tq = clattn_tensor_host(q.data, CLATTN_F32, B, HQ, LQ, D),
                  tk = clattn_tensor_host(k.data, CLATTN_F32, B, HKV, LK, D),
                  tv = clattn_tensor_host(v.data, CLATTN_F32, B, HKV, LK, D);
    if (blhd) tq = clattn_tensor_blhd(tq), tk = clattn_tensor_blhd(tk), tv = clattn_tensor_blhd(tv);
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, opt, out, lse), CLATTN_SUCCESS);
    npy_free(&q), npy_free(&k), npy_free(&v);
}

static long compare_out(int blhd, const double *ref, const double *ref_l)
{
    npy_array o, l;
    char err[256];
    if (npy_read(in_dir("o.npy"), &o, err, sizeof err) != 0) fail_msg("o.npy: %s", err);
    if (npy_read(in_dir("lse.npy"), &l, err, sizeof err) != 0) fail_msg("lse.npy: %s", err);
    const float *of = o.data, *lf = l.data;
    long bad = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < HQ; h++)
            for (int i = 0; i < LQ; i++) {
                for (int d = 0; d < D; d++) {
                    const double got = of[blhd ? ((b * LQ + i) * HQ + h) * D + d : ((b * HQ + h) * LQ + i) * D + d];
                    const double want = ref[((b * HQ + h) * LQ + i) * D + d];
                    if (!close_to(got, want, 2e-4, 2e-3) && bad++ < 3)
                        print_error("O[%d,%d,%d,%d] %g, ref %g\n", b, h, i, d, got, want);
                }
                if (!close_to(lf[(b * HQ + h) * LQ + i], ref_l[(b * HQ + h) * LQ + i], 1e-3, 1e-4) && bad++ < 3)
                    print_error("LSE[%d,%d,%d] %g, ref %g\n", b, h, i, (double)lf[(b * HQ + h) * LQ + i],
                                ref_l[(b * HQ + h) * LQ + i]);
            }
    npy_free(&o), npy_free(&l);
    return bad;
}

static void test_run_context_parallel_writes_the_reference_output(void **state)
{
    (void)state;
    static double ref[B * HQ * LQ * D], ref_l[B * HQ * LQ];
    const char *schemes[3] = {"ring", "zigzag", "ulysses"};
    for (int variant = 0; variant < 2; variant++) {
        const int blhd = variant;
        make_inputs(blhd);
        npy_array al, ln, mk;
        char err[256];
        assert_int_equal(npy_read(in_dir("alibi.npy"), &al, err, sizeof err), 0);
        assert_int_equal(npy_read(in_dir("lens.npy"), &ln, err, sizeof err), 0);
        assert_int_equal(npy_read(in_dir("mask.npy"), &mk, err, sizeof err), 0);
        clattn_tensor ta = clattn_tensor_host(al.data, CLATTN_F32, HQ, 1, 1, 1),
                      tl = clattn_tensor_host(ln.data, CLATTN_I32, B, 1, 1, 1),
                      tm = clattn_tensor_host(mk.data, CLATTN_F32, 1, 1, LQ, LK);
        clattn_options opt;
        clattn_options_init(&opt);
        char extra[512];
        if (variant == 0) { /* causal, ALiBi, key lengths, softcap */
            opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT, opt.alibi = &ta, opt.kv_lens = &tl, opt.softcap = 8.0f;
            snprintf(extra, sizeof extra, "--causal bottom-right --alibi %s --kv-lens %s --softcap 8",
                     in_dir("alibi.npy"), in_dir("lens.npy"));
        } else { /* BLHD files, a float mask, a window, top-left causal */
            opt.causal = CLATTN_CAUSAL_TOP_LEFT, opt.mask = &tm, opt.window_left = 5, opt.window_right = 3;
            snprintf(extra, sizeof extra, "--layout blhd --causal top-left --mask %s --window 5,3", in_dir("mask.npy"));
        }
        reference(blhd, &opt, ref, ref_l);
        for (int s = 0; s < 3; s++) {
            if (s == 2 && (HQ % nranks || HKV % nranks)) continue;
            char cmd[2048];
            unlink(in_dir("o.npy")), unlink(in_dir("lse.npy"));
            snprintf(cmd, sizeof cmd,
                     "%s --oversubscribe -np %d %s/clattn run --q %s --k %s --v %s --out %s --lse %s %s "
                     "--context-parallel %s",
                     MPIEXEC, nranks, CLATTN_TEST_BINARY_DIR, in_dir("q.npy"), in_dir("k.npy"), in_dir("v.npy"),
                     in_dir("o.npy"), in_dir("lse.npy"), extra, schemes[s]);
            const int rc = sh(cmd);
            if (rc != 0) {
                show_log();
                fail_msg("%s exited %d", cmd, rc);
            }
            if (compare_out(blhd, ref, ref_l)) {
                show_log();
                fail_msg("%s: output differs from the reference", cmd);
            }
        }
        npy_free(&al), npy_free(&ln), npy_free(&mk);
    }
}

static void test_failing_rank_fails_the_run_without_output(void **state)
{
    (void)state;
    make_inputs(0);
    char cmd[2048];
    unlink(in_dir("o.npy"));
    snprintf(cmd, sizeof cmd,
             "%s --oversubscribe -np %d -x CLATTN_MPI_FAULT=%d:0 %s/clattn run --q %s --k %s --v %s --out %s "
             "--context-parallel ring",
             MPIEXEC, nranks, nranks - 1, CLATTN_TEST_BINARY_DIR, in_dir("q.npy"), in_dir("k.npy"), in_dir("v.npy"),
             in_dir("o.npy"));
    const int rc = sh(cmd);
    assert_int_not_equal(rc, 0);
    struct stat st;
    assert_int_not_equal(stat(in_dir("o.npy"), &st), 0);
    char path[512], log[4096] = "";
    snprintf(path, sizeof path, "%s/log", dir);
    FILE *f = fopen(path, "r");
    size_t nread = f ? fread(log, 1, sizeof log - 1, f) : 0;
    log[nread] = '\0';
    if (f) fclose(f);
    char want[64];
    snprintf(want, sizeof want, "rank %d failed at step 0", nranks - 1);
    if (!strstr(log, want)) fail_msg("no '%s' in:\n%s", want, log);
}

static void test_bench_context_parallel_reports_every_rank(void **state)
{
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s --oversubscribe -np %d %s/clattn bench --context-parallel zigzag --shape 1,2,2,64,64,16 "
             "--causal bottom-right --runs 2 --warmup 1",
             MPIEXEC, nranks, CLATTN_TEST_BINARY_DIR);
    if (sh(cmd) != 0) {
        show_log();
        fail_msg("%s failed", cmd);
    }
    char path[512], log[8192] = "";
    snprintf(path, sizeof path, "%s/log", dir);
    FILE *f = fopen(path, "r");
    size_t nread = f ? fread(log, 1, sizeof log - 1, f) : 0;
    log[nread] = '\0';
    if (f) fclose(f);
    assert_non_null(strstr(log, "compute_ms"));
    assert_non_null(strstr(log, "overlap"));
    char last[16];
    snprintf(last, sizeof last, "\n%4d ", nranks - 1);
    if (!strstr(log, last)) fail_msg("no row for rank %d in:\n%s", nranks - 1, log);
}

int main(int argc, char **argv)
{
    if (argc > 1) nranks = atoi(argv[1]);
    snprintf(dir, sizeof dir, "%s/mpi-cli-%d", CLATTN_TEST_BINARY_DIR, nranks);
    mkdir(dir, 0755);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_context_parallel_writes_the_reference_output),
        cmocka_unit_test(test_failing_rank_fails_the_run_without_output),
        cmocka_unit_test(test_bench_context_parallel_reports_every_rank),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
