/* Tests of the clattn executable as a user meets it: each malformed input or bad option
 * must exit non-zero with exactly one line on stderr and leave no output file, and good
 * runs must write outputs that match the float64 CPU reference (clattn_reference_attention)
 * in every layout and option combination the command line offers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "clattn.h"
#include "support/npy.h"
#include "test_scratch.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>


/* The problem every good run uses: GQA (Hq = 2 Hkv), Lq != Lk, Dv != D. */
enum { B = 2, HQ = 4, HKV = 2, LQ = 5, LK = 7, D = 8, DV = 6 };


static float q_data[B * HQ * LQ * D], k_data[B * HKV * LK * D], v_data[B * HKV * LK * DV];


static int setup(void **state)
{
    (void)state;
    if (test_scratch_create("cli") != 0) return -1;

    uint32_t seed = 7;
    for (size_t i = 0; i < sizeof q_data / sizeof q_data[0]; i++) q_data[i] = test_lcg_value(&seed);
    for (size_t i = 0; i < sizeof k_data / sizeof k_data[0]; i++) k_data[i] = test_lcg_value(&seed);
    for (size_t i = 0; i < sizeof v_data / sizeof v_data[0]; i++) v_data[i] = test_lcg_value(&seed);
    const int64_t sq[4] = {B, HQ, LQ, D}, sk[4] = {B, HKV, LK, D}, sv[4] = {B, HKV, LK, DV};
    test_save_npy("q.npy", CLATTN_F32, 4, sq, q_data);
    test_save_npy("k.npy", CLATTN_F32, 4, sk, k_data);
    test_save_npy("v.npy", CLATTN_F32, 4, sv, v_data);

    static float qt[sizeof q_data / 4], kt[sizeof k_data / 4], vt[sizeof v_data / 4];
    test_swap_hl(q_data, qt, B, HQ, LQ, D, true);
    test_swap_hl(k_data, kt, B, HKV, LK, D, true);
    test_swap_hl(v_data, vt, B, HKV, LK, DV, true);
    const int64_t tq[4] = {B, LQ, HQ, D}, tk[4] = {B, LK, HKV, D}, tv[4] = {B, LK, HKV, DV};
    test_save_npy("q_blhd.npy", CLATTN_F32, 4, tq, qt);
    test_save_npy("k_blhd.npy", CLATTN_F32, 4, tk, kt);
    test_save_npy("v_blhd.npy", CLATTN_F32, 4, tv, vt);

    /* a float16 copy of Q, to run mixed storage */
    char err[512];
    if (npy_write(test_scratch_path("q_f16.npy"), CLATTN_F16, 4, sq, q_data, CLATTN_F32, err, sizeof err))
        return -1;

    /* masks and per-option inputs */
    unsigned char band[LQ * LK];
    for (int i = 0; i < LQ; i++)
        for (int j = 0; j < LK; j++) band[i * LK + j] = (unsigned char)((i + j) % 3 != 0);
    const int64_t s2[2] = {LQ, LK};
    test_save_npy("mask_bool2.npy", CLATTN_BOOL, 2, s2, band);
    float fmask[HQ * LQ * LK];
    for (int h = 0; h < HQ; h++)
        for (int i = 0; i < LQ; i++)
            for (int j = 0; j < LK; j++)
                fmask[(h * LQ + i) * LK + j] =
                    (j == i + h) ? -INFINITY : 0.25f * (float)((h + 2 * i + 3 * j) % 5) - 0.5f;
    const int64_t s3[3] = {HQ, LQ, LK};
    test_save_npy("mask_f32_3.npy", CLATTN_F32, 3, s3, fmask);
    const int64_t bad_mask_shape[2] = {LQ, LK + 1};
    unsigned char bad_mask[LQ * (LK + 1)] = {0};
    test_save_npy("mask_badshape.npy", CLATTN_BOOL, 2, bad_mask_shape, bad_mask);
    const int64_t s1lk[1] = {LK};
    test_save_npy("mask_rank1.npy", CLATTN_BOOL, 1, s1lk, band);

    const int64_t sb[1] = {B}, shq[1] = {HQ}, shkv[1] = {HKV};
    const int32_t lens[B] = {LK - 2, 3}, bad_lens[B] = {LK + 1, 0};
    test_save_npy("kv_lens.npy", CLATTN_I32, 1, sb, lens);
    test_save_npy("kv_lens_bad.npy", CLATTN_I32, 1, sb, bad_lens);
    const float fl[B] = {1, 2};
    test_save_npy("kv_lens_f32.npy", CLATTN_F32, 1, sb, fl);
    const float slopes[HQ] = {0.5f, 0.25f, 0.125f, 0.0625f};
    test_save_npy("alibi.npy", CLATTN_F32, 1, shq, slopes);
    test_save_npy("alibi_short.npy", CLATTN_F32, 1, shkv, slopes);

    /* malformed inputs */
    test_save_bytes("not_npy.npy", "this is not a numpy file, just text\n", 36);
    FILE *f = fopen(test_scratch_path("q.npy"), "rb");
    unsigned char head[200];
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    assert_int_equal(got, sizeof head);
    test_save_bytes("q_truncated.npy", head, sizeof head); /* 128-byte header + 72 of 1280 bytes */
    const int64_t s3q[3] = {B, HQ, LQ * D};
    test_save_npy("q_rank3.npy", CLATTN_F32, 3, s3q, q_data);
    const int64_t skb[4] = {B + 1, HKV, LK, D};
    static float kb[(B + 1) * HKV * LK * D];
    test_save_npy("k_batch3.npy", CLATTN_F32, 4, skb, kb);
    const int64_t skd[4] = {B, HKV, LK, D / 2};
    test_save_npy("k_d4.npy", CLATTN_F32, 4, skd, k_data);
    test_save_npy("q_i32.npy", CLATTN_I32, 4, sq, q_data); /* int32 storage is refused for Q */
    return 0;
}

/* ---- Running the executable ------------------------------------------------------ */

#define EXPECT_FAILURE(needle, out, lse, ...)                                             \
    test_expect_cli_failure((needle), (out), (lse), ARGS(__VA_ARGS__), __LINE__)

/* ---- Failures -------------------------------------------------------------------- */

static void test_missing_and_unreadable_inputs_fail_cleanly(void **state)
{
    (void)state;
    const char *o = test_scratch_path("o.npy");
    const char *q = test_scratch_path("q.npy"), *k = test_scratch_path("k.npy"), *v = test_scratch_path("v.npy");
    EXPECT_FAILURE("missing --q", o, NULL, "run");
    EXPECT_FAILURE("missing --q", o, NULL, "run", "--k", k, "--v", v, "--out", o);
    EXPECT_FAILURE("missing --out", NULL, NULL, "run", "--q", q, "--k", k, "--v", v);
    EXPECT_FAILURE("cannot open", o, NULL, "run", "--q", test_scratch_path("nope.npy"), "--k", k, "--v", v,
                   "--out", o);
    EXPECT_FAILURE("bad magic", o, NULL, "run", "--q", test_scratch_path("not_npy.npy"), "--k", k, "--v", v,
                   "--out", o);
    EXPECT_FAILURE("truncated data (expected 1280 bytes, found 72)", o, NULL, "run", "--q",
                   test_scratch_path("q_truncated.npy"), "--k", k, "--v", v, "--out", o);
    EXPECT_FAILURE("--q: ", o, NULL, "run", "--q", test_scratch_path("q_truncated.npy"), "--k", k, "--v", v,
                   "--out", o);
    EXPECT_FAILURE("is a directory", o, NULL, "run", "--q", test_scratch_dir(), "--k", k, "--v", v, "--out", o);
}

/* A damaged header's bytes reach the terminal only as \xNN: stderr is printable ASCII,
 * with no escape sequence (here: clear the screen, set the window title) left to run. */
static void test_damaged_header_bytes_reach_stderr_as_printable_ascii(void **state)
{
    (void)state;
    static const char header[] = "{'descr': '\x1b[2J\x1b]0;x\x07\xff<f4', 'fortran_order': False, 'shape': (3,)}";
    unsigned char img[160] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(sizeof header - 1), 0};
    memcpy(img + 10, header, sizeof header - 1);
    test_save_bytes("q_escape.npy", img, 10 + (sizeof header - 1) + 12);
    const char *o = test_scratch_path("o.npy");
    EXPECT_FAILURE("unsupported dtype '\\x1b[2J\\x1b]0;x\\x07\\xff<f4'", o, NULL, "run", "--q",
                   test_scratch_path("q_escape.npy"), "--k", test_scratch_path("k.npy"), "--v", test_scratch_path("v.npy"), "--out", o);
    test_exe_result r;
    test_run_clattn(test_scratch_dir(), &r, ARGS("run", "--q", test_scratch_path("q_escape.npy"), "--k", test_scratch_path("k.npy"), "--v",
                                  test_scratch_path("v.npy"), "--out", o));
    const size_t len = strlen(r.err);
    for (size_t i = 0; i + 1 < len; i++)
        if ((unsigned char)r.err[i] < 0x20 || (unsigned char)r.err[i] > 0x7e)
            fail_msg("stderr byte %zu is 0x%02x: \"%s\"", i, (unsigned char)r.err[i], r.err);
}

static void test_wrong_shapes_and_dtypes_fail_cleanly(void **state)
{
    (void)state;
    const char *o = test_scratch_path("o.npy"), *l = test_scratch_path("lse.npy");
    const char *q = test_scratch_path("q.npy"), *k = test_scratch_path("k.npy"), *v = test_scratch_path("v.npy");
    EXPECT_FAILURE("expected rank 4", o, NULL, "run", "--q", test_scratch_path("q_rank3.npy"), "--k", k,
                   "--v", v, "--out", o);
    EXPECT_FAILURE("expected float32 or float16", o, NULL, "run", "--q", test_scratch_path("q_i32.npy"),
                   "--k", k, "--v", v, "--out", o);
    EXPECT_FAILURE("batch sizes differ", o, l, "run", "--q", q, "--k", test_scratch_path("k_batch3.npy"),
                   "--v", v, "--out", o, "--lse", l);
    EXPECT_FAILURE("head dims differ", o, NULL, "run", "--q", q, "--k", test_scratch_path("k_d4.npy"),
                   "--v", v, "--out", o);
    /* bhld files read as blhd: Hq = 5 heads against Hkv = 7 */
    EXPECT_FAILURE("multiple of k/v heads", o, NULL, "run", "--q", q, "--k", k, "--v", v,
                   "--out", o, "--layout", "blhd");
    EXPECT_FAILURE("mask", o, NULL, "run", "--q", q, "--k", k, "--v", v, "--out", o, "--mask",
                   test_scratch_path("mask_badshape.npy"));
    EXPECT_FAILURE("rank 2..4", o, NULL, "run", "--q", q, "--k", k, "--v", v, "--out", o,
                   "--mask", test_scratch_path("mask_rank1.npy"));
    EXPECT_FAILURE("bool or float32", o, NULL, "run", "--q", q, "--k", k, "--v", v, "--out", o,
                   "--mask", test_scratch_path("kv_lens.npy"));
    EXPECT_FAILURE("outside 0..Lk", o, NULL, "run", "--q", q, "--k", k, "--v", v, "--out", o,
                   "--kv-lens", test_scratch_path("kv_lens_bad.npy"));
    EXPECT_FAILURE("expected int32 [B]", o, NULL, "run", "--q", q, "--k", k, "--v", v, "--out", o,
                   "--kv-lens", test_scratch_path("kv_lens_f32.npy"));
    EXPECT_FAILURE("alibi", o, NULL, "run", "--q", q, "--k", k, "--v", v, "--out", o, "--alibi",
                   test_scratch_path("alibi_short.npy"));
}

static void test_bad_option_values_fail_cleanly(void **state)
{
    (void)state;
    const char *o = test_scratch_path("o.npy");
    const char *q = test_scratch_path("q.npy"), *k = test_scratch_path("k.npy"), *v = test_scratch_path("v.npy");
#define BAD(needle, ...) EXPECT_FAILURE(needle, o, NULL, "run", "--q", q, "--k", k, "--v", v, \
                                        "--out", o, __VA_ARGS__)
    BAD("--causal", "--causal", "sideways");
    BAD("--causal", "--causal=");
    BAD("--window", "--window=abc");
    BAD("--window", "--window", "5");
    BAD("--window", "--window", "1,2,3");
    BAD("--window", "--window", "-2,0");
    BAD("--window", "--window", "1,");
    BAD("--scale", "--scale=inf");
    BAD("--scale", "--scale", "nan");
    BAD("--scale", "--scale", "1e400");
    BAD("--scale", "--scale", "0.5x");
    BAD("--softcap", "--softcap", "-1");
    BAD("--layout", "--layout", "xyz");
    BAD("--path", "--path", "nope");
    BAD("--out-dtype", "--out-dtype", "bf16");
    BAD("no OpenCL device matches", "--device", "nosuchdevice");
    BAD("out of range", "--device", "999");
    BAD("unknown option '--bogus'", "--bogus");
    BAD("unknown option '--bogus'", "--bogus=1");
    BAD("ambiguous option '--s'", "--s", "1");
    BAD("unknown option '-x'", "-x");
    BAD("--kv-quant", "--kv-quant", "int9");
    BAD("--q given twice", "--q", q);
    BAD("unexpected argument 'extra'", "extra");
    BAD("needs a value", "--scale");
    BAD("same file", "--lse", o);
#undef BAD
}

static void test_unwritable_outputs_leave_nothing_behind(void **state)
{
    (void)state;
    const char *o = test_scratch_path("o.npy"), *l = test_scratch_path("lse.npy");
    const char *q = test_scratch_path("q.npy"), *k = test_scratch_path("k.npy"), *v = test_scratch_path("v.npy");
    const char *missing_o = test_scratch_path("no-such-dir/o.npy"), *missing_l = test_scratch_path("no-such-dir/l.npy");
    EXPECT_FAILURE("cannot create", missing_o, NULL, "run", "--q", q, "--k", k, "--v", v,
                   "--out", missing_o);
    /* --out could be written, --lse cannot: --out must not appear either */
    EXPECT_FAILURE("--lse", o, missing_l, "run", "--q", q, "--k", k, "--v", v, "--out", o,
                   "--lse", missing_l);
    EXPECT_FAILURE("--out", o, l, "run", "--q", q, "--k", k, "--v", v, "--out", missing_o,
                   "--lse", l);
    assert_false(test_file_exists(o));
    assert_false(test_file_exists(l));

    /* a failed run leaves an existing output as it was */
    test_save_bytes("o.npy", "old", 3);
    test_exe_result r;
    test_run_clattn(test_scratch_dir(), &r, ARGS("run", "--q", q, "--k", k, "--v", v, "--out", o, "--scale", "x"));
    assert_int_equal(r.status, 2);
    assert_true(test_file_exists(o));
    struct stat st;
    assert_int_equal(stat(o, &st), 0);
    assert_int_equal(st.st_size, 3);
    remove(o);
}

static void test_top_level_and_devices_errors_are_one_line(void **state)
{
    (void)state;
    test_expect_cli_failure("missing command", NULL, NULL, (const char *const[]){NULL}, __LINE__);
    EXPECT_FAILURE("unknown command 'frobnicate'", NULL, NULL, "frobnicate");
    EXPECT_FAILURE("unknown option '--bogus'", NULL, NULL, "devices", "--bogus");
    EXPECT_FAILURE("takes no value", NULL, NULL, "devices", "--json=yes");
    EXPECT_FAILURE("unexpected argument", NULL, NULL, "devices", "extra");
}

/* ---- Help, version, devices ------------------------------------------------------ */

static void test_help_version_and_device_list(void **state)
{
    (void)state;
    test_exe_result r;
    test_run_clattn(test_scratch_dir(), &r, ARGS("--help"));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "devices"));
    assert_non_null(strstr(r.out, "run"));
    assert_string_equal(r.err, "");

    test_run_clattn(test_scratch_dir(), &r, ARGS("run", "--help"));
    assert_int_equal(r.status, 0);
    for (const char *opt = "--q\0--k\0--v\0--out\0--lse\0--mask\0--causal\0--window\0--kv-lens\0"
                           "--scale\0--softcap\0--alibi\0--layout\0--path\0--device\0--out-dtype\0";
         *opt; opt += strlen(opt) + 1)
        if (!strstr(r.out, opt)) fail_msg("clattn run --help does not mention %s", opt);

    test_run_clattn(test_scratch_dir(), &r, ARGS("--version"));
    assert_int_equal(r.status, 0);
    char want[64];
    snprintf(want, sizeof want, "clattn %s\n", clattn_version_string());
    assert_string_equal(r.out, want);

    size_t count = 0;
    assert_int_equal(clattn_device_count(&count), CLATTN_SUCCESS);
    test_run_clattn(test_scratch_dir(), &r, ARGS("devices"));
    assert_int_equal(r.status, 0);
    test_run_clattn(test_scratch_dir(), &r, ARGS("devices", "--json"));
    assert_int_equal(r.status, 0);
    assert_string_equal(r.err, "");
    assert_int_equal(r.out[0], '[');
    /* one object per device, each with every property */
    size_t objects = 0;
    for (const char *p = r.out; (p = strstr(p, "\"index\": ")) != NULL; p++) objects++;
    assert_int_equal(objects, count);
    if (count > 0) {
        clattn_device_props props;
        assert_int_equal(clattn_device_get_props(0, &props), CLATTN_SUCCESS);
        const char *keys[] = {"\"platform_name\"", "\"platform_version\"", "\"name\"",
                              "\"vendor\"", "\"driver_version\"", "\"opencl_c_version\"",
                              "\"type\"", "\"compute_units\"", "\"max_clock_mhz\"",
                              "\"global_mem_bytes\"", "\"max_alloc_bytes\"",
                              "\"local_mem_bytes\"", "\"local_mem_is_dedicated\"",
                              "\"max_work_group_size\"", "\"has_fp16\"", "\"has_subgroups\""};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (!strstr(r.out, keys[i])) fail_msg("devices --json lacks %s", keys[i]);
        /* the device name is listed (JSON escaping aside, names are plain ASCII) */
        if (!strchr(props.name, '"') && !strchr(props.name, '\\'))
            assert_non_null(strstr(r.out, props.name));
    }
}

/* ---- Good runs against the reference --------------------------------------------- */

typedef struct good_case {
    const char *label;
    int blhd;
    int f16_q;            /* Q stored as float16 */
    int f16_out;          /* --out-dtype f16 */
    int lse;
    clattn_causal causal;
    int window;
    int64_t wl, wr;
    const char *mask;     /* file name in dir, or NULL */
    int kv_lens;
    int alibi;
    float scale;          /* NaN: default */
    float softcap;
    const char *path;     /* --path value, or NULL */
} good_case;

/* Load a file written by clattn and compare with the reference for c. */
static void check_case(const good_case *c)
{
    char err[1024];
    const char *o = test_scratch_path("good_o.npy"), *l = test_scratch_path("good_lse.npy");
    remove(o);
    remove(l);

    const char *args[48];
    size_t n = 0;
    char window[64], scale[64], softcap[64];
    args[n++] = "run";
    args[n++] = "--q";
    args[n++] = test_scratch_path(c->blhd ? "q_blhd.npy" : c->f16_q ? "q_f16.npy" : "q.npy");
    args[n++] = "--k";
    args[n++] = test_scratch_path(c->blhd ? "k_blhd.npy" : "k.npy");
    args[n++] = "--v";
    args[n++] = test_scratch_path(c->blhd ? "v_blhd.npy" : "v.npy");
    args[n++] = "--out";
    args[n++] = o;
    if (c->blhd) {
        args[n++] = "--layout";
        args[n++] = "blhd";
    }
    if (c->f16_out) args[n++] = "--out-dtype=f16";
    if (c->lse) {
        args[n++] = "--lse";
        args[n++] = l;
    }
    if (c->causal) {
        args[n++] = "--causal";
        args[n++] = c->causal == CLATTN_CAUSAL_TOP_LEFT ? "top-left" : "bottom-right";
    }
    if (c->window) {
        snprintf(window, sizeof window, "--window=%lld,%lld", (long long)c->wl,
                 (long long)c->wr);
        args[n++] = window;
    }
    if (c->mask) {
        args[n++] = "--mask";
        args[n++] = test_scratch_path(c->mask);
    }
    if (c->kv_lens) {
        args[n++] = "--kv-lens";
        args[n++] = test_scratch_path("kv_lens.npy");
    }
    if (c->alibi) {
        args[n++] = "--alibi";
        args[n++] = test_scratch_path("alibi.npy");
    }
    if (!isnan(c->scale)) {
        snprintf(scale, sizeof scale, "%.9g", (double)c->scale);
        args[n++] = "--scale";
        args[n++] = scale;
    }
    if (c->softcap > 0) {
        snprintf(softcap, sizeof softcap, "--softcap=%.9g", (double)c->softcap);
        args[n++] = softcap;
    }
    if (c->path) {
        args[n++] = "--path";
        args[n++] = c->path;
    }
    args[n] = NULL;

    test_exe_result r;
    test_run_clattn(test_scratch_dir(), &r, args);
    if (c->path && r.status == 1 && strstr(r.err, "CLATTN_ERROR_PATH_UNSUPPORTED")) {
        print_message("%s: the path declines this problem: %s", c->label, r.err);
        skip();
    }
    if (r.status != 0) fail_msg("%s: exit %d: %s", c->label, r.status, r.err);
    if (c->path) {
        char want[64];
        snprintf(want, sizeof want, "using path %s ", c->path);
        if (!strstr(r.out, want)) fail_msg("%s: stdout does not say \"%s\": %s", c->label, want, r.out);
    }
    if (r.err[0] != '\0') fail_msg("%s: unexpected stderr: %s", c->label, r.err);
    assert_int_equal(test_scratch_tmp_files(), 0);

    /* The reference, on the same stored inputs (Q rounded through float16 if so). */
    npy_array qa, ka, va, ma = {0}, la = {0}, aa = {0};
    if (npy_read(args[2], &qa, err, sizeof err) || npy_read(args[4], &ka, err, sizeof err) ||
        npy_read(args[6], &va, err, sizeof err))
        fail_msg("%s", err);
    clattn_tensor tq = clattn_tensor_host(qa.data, qa.dtype, B, HQ, LQ, D);
    clattn_tensor tk = clattn_tensor_host(ka.data, ka.dtype, B, HKV, LK, D);
    clattn_tensor tv = clattn_tensor_host(va.data, va.dtype, B, HKV, LK, DV);
    if (c->blhd) {
        tq = clattn_tensor_blhd(tq);
        tk = clattn_tensor_blhd(tk);
        tv = clattn_tensor_blhd(tv);
    }
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = c->causal;
    if (c->window) {
        opt.window_left = c->wl;
        opt.window_right = c->wr;
    }
    opt.scale = c->scale;
    opt.softcap = c->softcap;
    clattn_tensor tm, tl, ta;
    if (c->mask) {
        assert_int_equal(npy_read(test_scratch_path(c->mask), &ma, err, sizeof err), 0);
        int64_t ne[4] = {1, 1, 1, 1};
        for (int i = 0; i < ma.rank; i++) ne[4 - ma.rank + i] = ma.shape[i];
        tm = clattn_tensor_host(ma.data, ma.dtype, ne[0], ne[1], ne[2], ne[3]);
        opt.mask = &tm;
    }
    if (c->kv_lens) {
        assert_int_equal(npy_read(test_scratch_path("kv_lens.npy"), &la, err, sizeof err), 0);
        tl = clattn_tensor_host(la.data, CLATTN_I32, B, 1, 1, 1);
        opt.kv_lens = &tl;
    }
    if (c->alibi) {
        assert_int_equal(npy_read(test_scratch_path("alibi.npy"), &aa, err, sizeof err), 0);
        ta = clattn_tensor_host(aa.data, CLATTN_F32, HQ, 1, 1, 1);
        opt.alibi = &ta;
    }
    static double ref[B * HQ * LQ * DV], ref_lse[B * HQ * LQ];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, ref, ref_lse),
                     CLATTN_SUCCESS);

    npy_array out;
    if (npy_read(o, &out, err, sizeof err)) fail_msg("%s: %s", c->label, err);
    assert_int_equal(out.dtype, c->f16_out ? CLATTN_F16 : CLATTN_F32);
    assert_int_equal(out.rank, 4);
    const int64_t want_shape[4] = {B, c->blhd ? LQ : HQ, c->blhd ? HQ : LQ, DV};
    for (int i = 0; i < 4; i++) assert_int_equal(out.shape[i], want_shape[i]);
    clattn_tensor to = clattn_tensor_host(out.data, out.dtype, B, HQ, LQ, DV);
    if (c->blhd) to = clattn_tensor_blhd(to);
    const double atol = c->f16_out || c->f16_q ? 3e-3 : 2e-4;
    const double rtol = c->f16_out || c->f16_q ? 3e-3 : 2e-3;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < HQ; h++)
            for (int i = 0; i < LQ; i++)
                for (int d = 0; d < DV; d++) {
                    const char *p = (const char *)out.data + b * to.nb[0] + h * to.nb[1] +
                                    i * to.nb[2] + d * to.nb[3];
                    double got;
                    if (out.dtype == CLATTN_F16) {
                        uint16_t hv;
                        memcpy(&hv, p, 2);
                        /* decode without internal helpers: exponent/mantissa by hand */
                        int e = (hv >> 10) & 0x1f, m = hv & 0x3ff;
                        double mag = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
                        got = (hv & 0x8000) ? -mag : mag;
                        if (e == 0x1f) got = NAN;
                    } else {
                        float fv;
                        memcpy(&fv, p, 4);
                        got = fv;
                    }
                    double want = ref[((b * HQ + h) * LQ + i) * DV + d];
                    if (!(fabs(got - want) <= atol + rtol * fabs(want)))
                        fail_msg("%s: O[%d,%d,%d,%d] = %.7g, reference %.7g", c->label, b, h, i,
                                 d, got, want);
                }
    npy_free(&out);
    if (c->lse) {
        npy_array ls;
        if (npy_read(l, &ls, err, sizeof err)) fail_msg("%s: %s", c->label, err);
        assert_int_equal(ls.dtype, CLATTN_F32);
        assert_int_equal(ls.rank, 3);
        assert_int_equal(ls.shape[0], B);
        assert_int_equal(ls.shape[1], HQ);
        assert_int_equal(ls.shape[2], LQ);
        const float *lv = ls.data;
        for (int i = 0; i < B * HQ * LQ; i++) {
            double want = ref_lse[i];
            if (isinf(want) ? lv[i] != want : !(fabs(lv[i] - want) <= 1e-3 + 1e-4 * fabs(want)))
                fail_msg("%s: LSE[%d] = %.7g, reference %.7g", c->label, i, (double)lv[i], want);
        }
        npy_free(&ls);
    } else {
        assert_false(test_file_exists(l));
    }
    npy_free(&qa);
    npy_free(&ka);
    npy_free(&va);
    npy_free(&ma);
    npy_free(&la);
    npy_free(&aa);
}

/* Each good case is its own cmocka test, named by its label, so one failing option
 * combination does not hide the others. */
static const good_case good_cases[] = {
    {.label = "good run: plain", .scale = NAN},
    {.label = "good run: plain with lse", .lse = 1, .scale = NAN},
    {.label = "good run: causal top-left", .causal = CLATTN_CAUSAL_TOP_LEFT, .lse = 1,
     .scale = NAN},
    {.label = "good run: causal bottom-right, blhd", .blhd = 1,
     .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .scale = NAN},
    {.label = "good run: blhd, f16 out, lse", .blhd = 1, .f16_out = 1, .lse = 1, .scale = NAN},
    {.label = "good run: f16 q", .f16_q = 1, .scale = NAN},
    {.label = "good run: bool mask rank 2, window, kv-lens, lse", .mask = "mask_bool2.npy",
     .window = 1, .wl = 2, .wr = 1, .kv_lens = 1, .lse = 1, .scale = NAN},
    {.label = "good run: float mask rank 3, alibi, softcap, scale", .mask = "mask_f32_3.npy",
     .alibi = 1, .softcap = 2.5f, .scale = 0.3f, .lse = 1},
};

/* Every path this build has, forced, with and without --lse. */
static const char *const forced_paths[] = {"fused", "decode", "clblast", "unfused"};
static good_case forced_cases[2 * sizeof forced_paths / sizeof forced_paths[0]];
static char forced_labels[sizeof forced_cases / sizeof forced_cases[0]][96];

static void test_good_case(void **state)
{
    check_case((const good_case *)*state);
}

int main(void)
{
    struct CMUnitTest tests[64] = {
        cmocka_unit_test(test_missing_and_unreadable_inputs_fail_cleanly),
        cmocka_unit_test(test_damaged_header_bytes_reach_stderr_as_printable_ascii),
        cmocka_unit_test(test_wrong_shapes_and_dtypes_fail_cleanly),
        cmocka_unit_test(test_bad_option_values_fail_cleanly),
        cmocka_unit_test(test_unwritable_outputs_leave_nothing_behind),
        cmocka_unit_test(test_top_level_and_devices_errors_are_one_line),
        cmocka_unit_test(test_help_version_and_device_list),
    };
    size_t n = 6;
    for (size_t i = 0; i < sizeof good_cases / sizeof good_cases[0]; i++) {
        struct CMUnitTest t = {good_cases[i].label, test_good_case, NULL, NULL,
                               (void *)&good_cases[i]};
        tests[n++] = t;
    }
    size_t nf = 0;
    for (size_t i = 0; i < sizeof forced_paths / sizeof forced_paths[0]; i++) {
        clattn_path p;
        if (clattn_path_from_name(forced_paths[i], &p) != CLATTN_SUCCESS ||
            !clattn_path_available(p))
            continue;
        for (int lse = 0; lse < 2; lse++, nf++) {
            good_case *c = &forced_cases[nf];
            snprintf(forced_labels[nf], sizeof forced_labels[nf],
                     "good run: --path %s, causal bottom-right%s", forced_paths[i],
                     lse ? ", lse" : "");
            c->label = forced_labels[nf];
            c->path = forced_paths[i];
            c->causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
            c->lse = lse;
            c->scale = NAN;
            struct CMUnitTest t = {c->label, test_good_case, NULL, NULL, c};
            tests[n++] = t;
        }
    }
    return _cmocka_run_group_tests("test_cli", tests, n, setup, test_scratch_remove);
}
