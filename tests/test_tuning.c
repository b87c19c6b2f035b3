/* The tuning layer (src/tuning/, src/cli/cmd_tune.c and tune_*.c): built-in rows
 * found at each level of the device key, illegal rows refused with a message, a form that
 * fails to build replaced by the next form of its path, tuning files that are bad in every
 * way ignored (built-in rows, correct results), a good record beating the built-in row, and
 * a short `clattn tune` run whose record the next context uses. Kept small: every case
 * shares one shape, so the kernels are built once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "test_exe.h"
#include "test_util.h"
#include "tuning/tuning.h"
#include "core/context.h"

#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv

/* One small prefill case (fused) and one decode case, f32, D = 16. */
static const attn_case prefill = {SHAPE(1, 2, 2, 20, 40, 16, 16), .lse = 1, .seed = 811};
static const attn_case decode = {SHAPE(1, 4, 2, 2, 40, 16, 16), .lse = 1, .seed = 812};

static clattn__tdevice fake(clattn_device_type type, uint32_t vendor, const char *arch, const char *name)
{
    clattn__tdevice d;
    memset(&d, 0, sizeof d);
    d.type = type;
    d.vendor_id = vendor;
    snprintf(d.arch, sizeof d.arch, "%s", arch);
    snprintf(d.name, sizeof d.name, "%s", name);
    d.max_wg = 1024;
    d.local_mem = 48 * 1024;
    return d;
}

static void test_lookup_takes_the_most_specific_level(void **state)
{
    (void)state;
    /* a table with a row at every level; block_m tells them apart */
    const clattn__tbuiltin t[] = {
        {0, NULL, NULL, CLATTN_DEVICE_GPU, {.block_m = 1}},
        {0x10de, NULL, NULL, 0, {.block_m = 2}},
        {0x10de, "sm_90", NULL, 0, {.block_m = 3}},
        {0x10de, "sm_90", "NVIDIA H200", 0, {.block_m = 4}},
        {0, NULL, NULL, 0, {.block_m = 5}},
    };
    const size_t n = sizeof t / sizeof t[0];
    const struct {
        clattn__tdevice dev;
        int block_m;
        const char *level;
    } want[] = {
        {fake(CLATTN_DEVICE_GPU, 0x10de, "sm_90", "nvidia h200"), 4, "name"},
        {fake(CLATTN_DEVICE_GPU, 0x10de, "sm_90", "NVIDIA H100"), 3, "arch"},
        {fake(CLATTN_DEVICE_GPU, 0x10de, "sm_80", "NVIDIA A100"), 2, "vendor"},
        {fake(CLATTN_DEVICE_GPU, 0x1002, "gfx1100", "gfx1100"), 1, "type"},
        {fake(CLATTN_DEVICE_ACCELERATOR, 0x1234, "", "mystery"), 5, "default"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        clattn__trow row;
        const char *level = NULL;
        clattn__tuning_lookup(t, n, &want[i].dev, &row, &level);
        if (row.block_m != want[i].block_m || strcmp(level, want[i].level) != 0)
            fail_msg("%s: got block_m %d at level %s, want %d at %s", want[i].dev.name, row.block_m, level,
                     want[i].block_m, want[i].level);
    }
    /* the real tables: every device gets a legal row, CPUs the CPU forms, GPUs the GPU forms */
    const clattn__tdevice devs[] = {fake(CLATTN_DEVICE_CPU, 0x8086, "", "some cpu"),
                                    fake(CLATTN_DEVICE_GPU, 0x10de, "sm_90", "NVIDIA H200"),
                                    fake(CLATTN_DEVICE_OTHER, 0, "", "unknown")};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
        for (int p = 0; p < CLATTN__TP_COUNT; p++) {
            clattn__trow row;
            const char *level;
            clattn__tuning_builtin(&devs[i], (clattn__tpath)p, &row, &level);
            char why[160];
            if (!clattn__tuning_legal(&devs[i], (clattn__tpath)p, &row, 64, why, sizeof why))
                fail_msg("built-in %s row for %s is illegal: %s", clattn__tpath_name((clattn__tpath)p),
                         devs[i].name, why);
            /* GPUs: fused gpu-mm (2), decode gpu (1) */
            if (p == CLATTN__TP_FUSED || p == CLATTN__TP_DECODE)
                assert_int_equal(row.form, devs[i].type == CLATTN_DEVICE_GPU ? 2 - p : 0);
            /* the backward's CPU form is for CPUs only: too few work-items for a GPU */
            if (p == CLATTN__TP_BACKWARD)
                assert_int_equal(row.form, devs[i].type == CLATTN_DEVICE_CPU ? 0 : 1);
            /* every table has a CPU row; an unknown kind of device gets the default */
            if (devs[i].type != CLATTN_DEVICE_GPU)
                assert_string_equal(level, devs[i].type == CLATTN_DEVICE_CPU ? "type" : "default");
        }
    }
    /* llvmpipe (a CPU device to OpenCL, GPU-like limits) gets the GPU forms at the name
     * level, whatever LLVM version and width its name carries; a longer name does not */
    clattn__tdevice pipe = fake(CLATTN_DEVICE_CPU, 0x10005, "", "llvmpipe (LLVM 15.0.6, 256 bits)");
    pipe.local_mem = 32 * 1024;
    const clattn__tpath pipe_paths[] = {CLATTN__TP_FUSED, CLATTN__TP_DECODE, CLATTN__TP_BACKWARD};
    for (size_t k = 0; k < sizeof pipe_paths / sizeof pipe_paths[0]; k++) {
        const clattn__tpath p = pipe_paths[k];
        clattn__trow row;
        const char *level;
        char why[160];
        clattn__tuning_builtin(&pipe, (clattn__tpath)p, &row, &level);
        assert_string_equal(level, "name");
        assert_int_equal(row.form, p == CLATTN__TP_FUSED ? 2 : 1); /* gpu-mm, decode gpu */
        if (!clattn__tuning_legal(&pipe, (clattn__tpath)p, &row, 64, why, sizeof why))
            fail_msg("llvmpipe's %s row is illegal: %s", clattn__tpath_name((clattn__tpath)p), why);
    }
    /* Apple-class GPUs (32 KiB of local memory, 256 work-items per group) get legal GPU
     * rows for both paths as built in, with no tuning file */
    clattn__tdevice apple = fake(CLATTN_DEVICE_GPU, 0x1027f00, "", "Apple M2");
    apple.local_mem = 32 * 1024;
    apple.max_wg = 256;
    for (int p = CLATTN__TP_FUSED; p <= CLATTN__TP_DECODE; p++) {
        clattn__trow row;
        const char *level;
        char why[160];
        clattn__tuning_builtin(&apple, (clattn__tpath)p, &row, &level);
        assert_int_equal(row.form, p == CLATTN__TP_FUSED ? 2 : 1);
        if (!clattn__tuning_legal(&apple, (clattn__tpath)p, &row, 64, why, sizeof why))
            fail_msg("the %s row for a 32 KiB / 256 work-item GPU is illegal: %s",
                     clattn__tpath_name((clattn__tpath)p), why);
    }
    clattn__tdevice other = fake(CLATTN_DEVICE_CPU, 0x10005, "", "llvmpipe2");
    clattn__trow row;
    const char *level;
    clattn__tuning_builtin(&other, CLATTN__TP_FUSED, &row, &level);
    assert_string_equal(level, "type");
}

static void test_illegal_rows_are_refused_with_a_message(void **state)
{
    (void)state;
    clattn__tdevice small = fake(CLATTN_DEVICE_GPU, 0x1002, "gfx900", "small gpu");
    small.max_wg = 256;
    small.local_mem = 16 * 1024;
    const struct {
        clattn__tpath path;
        clattn__trow row;
        const char *mentions;
    } bad[] = {
        {CLATTN__TP_FUSED, {.form = 1, .block_m = 32, .block_n = 32, .wg = 512}, "wg"},
        {CLATTN__TP_FUSED, {.form = 1, .block_m = 64, .block_n = 64, .wg = 128}, "local memory"},
        {CLATTN__TP_FUSED, {.form = 0, .block_m = 6, .block_n = 40, .dv_chunk = 4, .row_groups = 4, .wg = 1}, "block_n"},
        {CLATTN__TP_FUSED, {.form = 0, .block_m = 17, .block_n = 64, .dv_chunk = 4, .row_groups = 1, .wg = 1}, "block_m"},
        {CLATTN__TP_FUSED, {.form = 2, .block_m = 32, .block_n = 32, .wg = 128, .tc = 12, .vw = 4}, "tc"},
        {CLATTN__TP_FUSED, {.form = 2, .block_m = 32, .block_n = 8, .wg = 128, .tc = 16, .vw = 4}, "block_n"},
        {CLATTN__TP_FUSED, {.form = 2, .block_m = 128, .block_n = 16, .wg = 128, .tc = 16, .vw = 4}, "block_m"},
        {CLATTN__TP_FUSED, {.form = 2, .block_m = 32, .block_n = 32, .wg = 128, .tc = 16, .vw = 2}, "vw"},
        {CLATTN__TP_FUSED, {.form = 2, .block_m = 64, .block_n = 64, .wg = 256, .tc = 16, .vw = 4}, "local memory"},
        {CLATTN__TP_FUSED, {.form = 2, .block_m = 64, .block_n = 64, .wg = 512, .tc = 16, .vw = 4}, "wg"},
        {CLATTN__TP_FUSED, {.form = 3, .block_m = 32, .block_n = 32, .wg = 128}, "form"},
        {CLATTN__TP_DECODE, {.form = 0, .max_lq = 8, .rows = 4, .ktile = 20, .vw = 8, .wg = 1, .wgs_per_cu = 4,
                             .min_chunk = 256, .max_chunk = 0}, "ktile"},
        {CLATTN__TP_DECODE, {.form = 0, .max_lq = 8, .rows = 4, .ktile = 16, .vw = 16, .wg = 1, .wgs_per_cu = 4,
                             .min_chunk = 256, .max_chunk = 100}, "max_chunk"},
        {CLATTN__TP_DECODE, {.form = 1, .max_lq = 8, .rows = 16, .ktile = 1024, .wg = 256, .wgs_per_cu = 4,
                             .min_chunk = 64, .max_chunk = 0}, "local memory"},
        {CLATTN__TP_UNFUSED, {.tile = 32, .softmax_wg = 64}, "tile"},
        {CLATTN__TP_KV, {.rows = 4, .min_chunk = 64, .max_chunk = 0, .wgs_per_cu = 4}, "max_chunk"},
        {CLATTN__TP_DISPATCH, {.prefer_clblast = 2}, "prefer_clblast"},
        {CLATTN__TP_BACKWARD, {.form = 0, .block_m = 6, .block_n = 64, .wg = 1}, "block_m"},
        {CLATTN__TP_BACKWARD, {.form = 0, .block_m = 16, .block_n = 40, .wg = 1}, "block_n"},
        {CLATTN__TP_BACKWARD, {.form = 1, .block_m = 32, .block_n = 16, .wg = 512}, "wg"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char why[160] = "";
        if (clattn__tuning_legal(&small, bad[i].path, &bad[i].row, 128, why, sizeof why))
            fail_msg("row %zu of the %s path was accepted", i, clattn__tpath_name(bad[i].path));
        if (!strstr(why, bad[i].mentions))
            fail_msg("row %zu: the message \"%s\" does not name %s", i, why, bad[i].mentions);
    }
}

/* ---- Tuning files --------------------------------------------------------------------- */
static int reports;
static void count_report(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
    reports++;
}

static const char *tmp_path(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/test-tuning-%s.json", CLATTN_TEST_BINARY_DIR, name);
    return path;
}

static void write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* A context on the test device reading `file` as CLATTN_TUNING_FILE. */
static clattn_context *context_with_file(const char *file)
{
    setenv("CLATTN_TUNING_FILE", file, 1);
    clattn_context *ctx = test_context();
    unsetenv("CLATTN_TUNING_FILE");
    return ctx;
}

static void run_case(clattn_context *ctx, const attn_case *base, clattn_path path)
{
    attn_case c = *base;
    c.path = path;
    test_run_cases(ctx, &c, 1, path, 0);
}

/* The source of the fused row in force for `prefill` on ctx. */
static void fused_source(clattn_context *ctx, clattn__trow *row, clattn__tsource *src)
{
    clattn__tclass cls;
    clattn__tclass_make(ctx, CLATTN__TP_FUSED, CLATTN_F32, prefill.D, prefill.Dv, prefill.Lq, false, 1, -1, &cls);
    clattn__tuning_row(ctx, CLATTN__TP_FUSED, &cls, row, src);
}

/* A tuning file with one fused record for `device` (JSON; NULL = ctx's device). */
static void record_text(clattn_context *ctx, const char *device, const char *params, char *buf, size_t cap)
{
    char dev[300];
    if (!device) {
        snprintf(dev, sizeof dev, "{\"name\": \"%s\", \"type\": \"%s\"}", ctx->props.name,
                 ctx->props.type == CLATTN_DEVICE_CPU ? "cpu" : ctx->props.type == CLATTN_DEVICE_GPU ? "gpu" : "other");
        device = dev;
    }
    snprintf(buf, cap,
             "{\"clattn_tuning\": 1, \"records\": [{\"device\": %s, \"path\": \"fused\", "
             "\"class\": {\"dtype\": \"f32\", \"head\": 64, \"phase\": \"prefill\"}, \"params\": %s}]}",
             device, params);
}

static void test_bad_tuning_files_are_ignored(void **state)
{
    (void)state;
    clattn_context *probe = test_context();
    char good[2048], illegal[2048], wrong_type[2048], unknown_param[2048], foreign[2048], truncated[2048];
    record_text(probe, NULL, "{\"block_m\": 5}", good, sizeof good);
    record_text(probe, NULL, "{\"block_m\": 5, \"block_n\": 40}", illegal, sizeof illegal);
    record_text(probe, NULL, "{\"block_m\": \"5\"}", wrong_type, sizeof wrong_type);
    record_text(probe, NULL, "{\"tile\": 4}", unknown_param, sizeof unknown_param);
    record_text(probe, "{\"name\": \"Some Other Device\", \"vendor_id\": 4318}", "{\"block_m\": 5}", foreign,
                sizeof foreign);
    snprintf(truncated, sizeof truncated, "%.*s", (int)(strlen(good) - 7), good);
    clattn_context_free(probe);

    /* a huge file: valid JSON, past the size bound */
    const size_t huge_len = CLATTN__TUNING_FILE_MAX + 64;
    char *huge = malloc(huge_len);
    assert_non_null(huge);
    memset(huge, ' ', huge_len);
    memcpy(huge, good, strlen(good));

    char deep[200];
    memset(deep, '[', sizeof deep - 1);
    deep[sizeof deep - 1] = '\0';

    const struct {
        const char *name, *text;
        size_t len;
    } bad[] = {
        {"malformed", "{\"clattn_tuning\": 1, \"records\": [}", 0},
        {"truncated", truncated, 0},
        {"foreign", foreign, 0},
        {"illegal", illegal, 0},
        {"wrong_types", wrong_type, 0},
        {"unknown_param", unknown_param, 0},
        {"not_an_object", "[1, 2, 3]", 0},
        {"no_version", "{\"records\": []}", 0},
        {"deep", deep, 0},
        {"binary", "\x7f\x45\x4c\x46\x02\x01\x01\x00", 8},
        {"empty", "", 0},
        {"huge", huge, huge_len},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const size_t len = bad[i].len ? bad[i].len : strlen(bad[i].text);
        /* the parser alone: refused, reported */
        clattn__tdevice dev;
        clattn_context *ctx = test_context();
        dev = ctx->tuning->dev;
        clattn_context_free(ctx);
        clattn__trecord *recs = NULL;
        size_t nrec = 0;
        reports = 0;
        clattn__tuning_parse(bad[i].text, len, bad[i].name, &dev, &recs, &nrec, count_report, NULL);
        free(recs);
        if (nrec != 0 || reports == 0)
            fail_msg("%s: %zu record(s) kept, %d report(s)", bad[i].name, nrec, reports);
        /* through a context: built-in rows, correct results */
        const char *path = tmp_path(bad[i].name);
        write_text(path, bad[i].text, len);
        ctx = context_with_file(path);
        clattn__trow row;
        clattn__tsource src;
        fused_source(ctx, &row, &src);
        if (strncmp(src.text, "built-in", 8) != 0) fail_msg("%s: the fused row came from %s", bad[i].name, src.text);
        run_case(ctx, &prefill, CLATTN_PATH_FUSED);
        clattn_context_free(ctx);
        remove(path);
    }
    free(huge);

    /* and the good record is used: it beats the built-in row */
    reports = 0;
    const char *path = tmp_path("good");
    write_text(path, good, strlen(good));
    clattn_context *ctx = context_with_file(path);
    clattn__trow row;
    clattn__tsource src;
    fused_source(ctx, &row, &src);
    if (!strstr(src.text, "file") || row.block_m != 5) fail_msg("good record: block_m %d from %s", row.block_m, src.text);
    run_case(ctx, &prefill, CLATTN_PATH_FUSED);
    clattn_context_free(ctx);
    remove(path);
}

/* ---- Form fallback -------------------------------------------------------------------- */
static void form_falls_back(clattn__tpath tpath, clattn_path path, const attn_case *c)
{
    clattn_context *ctx = test_context();
    /* the first kernel get fails as a broken compiler would; the path answers with its
     * next form, correctly, and remembers the failure for the class */
    clattn__fault_arm(ctx, CLATTN__FAULT_BUILD, 1);
    run_case(ctx, c, path);
    assert_int_equal(clattn__fault_fired(ctx), 1);
    assert_int_equal(clattn_context_last_path(ctx), path);
    assert_int_equal(ctx->tuning->nfailed_forms, 1);
    char want[32];
    snprintf(want, sizeof want, "%s ", clattn__tpath_name(tpath));
    assert_true(strncmp(ctx->tuning->failed_forms[0], want, strlen(want)) == 0);
    /* a later call goes straight to the next form: no fault armed, no new failure */
    run_case(ctx, c, path);
    assert_int_equal(ctx->tuning->nfailed_forms, 1);
    /* a forced form does not fall back: its failure is the call's */
    clattn__tuning_force_form(tpath, 0);
    clattn__fault_arm(ctx, CLATTN__FAULT_BUILD, 1);
    attn_case cc = *c;
    cc.path = path;
    attn_case_data *d = NULL;
    assert_int_equal(attn_case_data_create(&cc, &d), CLATTN_SUCCESS);
    assert_int_equal(attn_case_run(ctx, &cc, d, NULL), CLATTN_ERROR_BUILD_FAILED);
    attn_case_data_free(d);
    clattn__tuning_force_form(tpath, -1);
    clattn_context_free(ctx);
}

static void test_a_form_that_fails_to_build_gives_way_to_the_next(void **state)
{
    (void)state;
    form_falls_back(CLATTN__TP_FUSED, CLATTN_PATH_FUSED, &prefill);
    form_falls_back(CLATTN__TP_DECODE, CLATTN_PATH_DECODE, &decode);
}

/* ---- clattn tune ------------------------------------------------------------------------ */
static void test_tune_writes_a_record_the_next_context_uses(void **state)
{
    (void)state;
    const char *out = tmp_path("tuned");
    remove(out);
    /* the constrained set's first rows only (the other form, two block_m values): kernels
     * the other tests build too, so the run stays short on any machine */
    char *argv[] = {"tune", "--budget", "20", "--max-candidates", "3", "--path", "fused",
                    "--shape", "1,2,2,20,40,16", "--out", (char *)out, NULL};
    const int rc = cmd_tune(11, argv);
    assert_int_equal(rc, CLI_EXIT_OK);
    clattn_context *ctx = context_with_file(out);
    assert_true(ctx->tuning->nrecords >= 1);
    clattn__trow row;
    clattn__tsource src;
    fused_source(ctx, &row, &src);
    if (!strstr(src.text, out)) fail_msg("the fused row came from %s, not %s", src.text, out);
    run_case(ctx, &prefill, CLATTN_PATH_FUSED);
    clattn_context_free(ctx);
    /* and `clattn devices --tuning` shows the record as the source of the fused row */
    setenv("CLATTN_TUNING_FILE", out, 1);
    test_exe_result er;
    const char *const args[] = {"devices", "--tuning", NULL};
    test_run_clattn(CLATTN_TEST_BINARY_DIR, &er, args);
    unsetenv("CLATTN_TUNING_FILE");
    assert_int_equal(er.status, 0);
    char want[600];
    snprintf(want, sizeof want, "[file %s, record 0]", out);
    if (!strstr(er.out, want)) fail_msg("clattn devices --tuning does not show %s:\n%s", want, er.out);
    assert_non_null(strstr(er.out, "fused    f32 head<=64 prefill full group 1 kv none"));

    /* a second run keeps records it did not retune (here: a record for another device) */
    FILE *f = fopen(out, "rb");
    assert_non_null(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *end = strrchr(text, ']');
    assert_non_null(end);
    char more[9000];
    snprintf(more, sizeof more,
             "%.*s, {\"device\": {\"name\": \"elsewhere\"}, \"path\": \"unfused\", \"params\": {\"tile\": 4}}\n]}\n",
             (int)(end - text - 1), text);
    write_text(out, more, strlen(more));
    char *argv2[] = {"tune", "--budget", "20", "--max-candidates", "1", "--path", "fused",
                     "--shape", "1,2,2,20,40,16", "--out", (char *)out, NULL};
    assert_int_equal(cmd_tune(11, argv2), CLI_EXIT_OK);
    f = fopen(out, "rb");
    assert_non_null(f);
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    assert_non_null(strstr(text, "elsewhere"));
    remove(out);

    /* bad command lines */
    char *bad1[] = {"tune", "--budget", "-3", NULL};
    assert_int_equal(cmd_tune(3, bad1), CLI_EXIT_USAGE);
    char *bad2[] = {"tune", "--path", "clblast", NULL};
    assert_int_equal(cmd_tune(3, bad2), CLI_EXIT_USAGE);
    char *bad3[] = {"tune", "--max-candidates", "0", NULL};
    assert_int_equal(cmd_tune(3, bad3), CLI_EXIT_USAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_takes_the_most_specific_level),
        cmocka_unit_test(test_illegal_rows_are_refused_with_a_message),
        cmocka_unit_test(test_bad_tuning_files_are_ignored),
        cmocka_unit_test(test_a_form_that_fails_to_build_gives_way_to_the_next),
        cmocka_unit_test(test_tune_writes_a_record_the_next_context_uses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
