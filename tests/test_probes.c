/* Feature probes (src/core/probe.c, cl/probes.cl): a feature the device does not report is
 * unusable and says why; a probe that cannot build or answers wrongly makes its feature
 * unusable without failing anything; answers are kept per context and on disk beside the
 * program binaries (a damaged answer file is probed again); and the gpu-mm form's
 * subgroup variant, forced on where its kernel cannot build, gives way to the same form
 * without it, with results still matching the float64 reference. Features this device
 * has are probed for real; the ones it lacks are printed as skipped, with why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/probe.h"
#include "test_util.h"
#include "tuning/tuning.h"
#include "core/faults.h"

static char dir[64];

/* A fresh cache folder for the contexts created from now on. */
static void fresh_cache(void)
{
    snprintf(dir, sizeof dir, "/tmp/clattn-probes-XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(setenv("CLATTN_CACHE_DIR", dir, 1), 0);
}

/* Remove the folder's files; the number of .probe files it held. */
static int clear_cache(void)
{
    int probes = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        const size_t n = strlen(e->d_name);
        if (n > 6 && strcmp(e->d_name + n - 6, ".probe") == 0) probes++;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        remove(path);
    }
    closedir(d);
    rmdir(dir);
    return probes;
}

/* Did the answer come from a probe run (rather than a requirement the device lacks)? */
static bool probed(bool ok, const char *why)
{
    return ok || strncmp(why, "probe ", 6) == 0 || strncmp(why, "the probe", 9) == 0;
}

static const char *const needs[] = {"cl_khr_fp16", "subgroups", "NVIDIA", "no probe kernel", "no probe kernel"};

static void test_features_the_device_lacks_are_unusable_and_say_why(void **state)
{
    (void)state;
    fresh_cache();
    clattn_context *ctx = test_context();
    for (int v = CLATTN__VAR_F16; v <= CLATTN__VAR_WMMA_AMD; v++) {
        char why[112];
        int value = -1;
        const bool ok = clattn__variant_usable(ctx, (clattn__variant)v, &value, why, sizeof why);
        if (probed(ok, why)) {
            /* the device reports the feature: its probe ran; an answer either way is real */
            print_message("feature %s probed on this device: %s (%s, value %d)\n",
                          clattn__variant_name((clattn__variant)v), ok ? "usable" : "unusable", why, value);
            if (v == CLATTN__VAR_SUBGROUPS && ok) assert_true(value >= 1 && (value & (value - 1)) == 0);
            continue;
        }
        print_message("skipped probing %s here: %s\n", clattn__variant_name((clattn__variant)v), why);
        if (!strstr(why, needs[v])) fail_msg("%s: \"%s\" does not name %s", clattn__variant_name((clattn__variant)v), why, needs[v]);
        assert_int_equal(value, 0);
        /* remembered on the context: the same answer without asking the device again */
        char again[112];
        assert_false(clattn__variant_usable(ctx, (clattn__variant)v, NULL, again, sizeof again));
        assert_string_equal(why, again);
    }
    clattn_context_free(ctx);
    /* a requirement the device lacks is not an answer to cache */
    assert_int_equal(clear_cache(), 0);
}

static void test_probe_answers_are_cached_and_a_wrong_output_is_remembered(void **state)
{
    (void)state;
    fresh_cache();
    char why[112];
    clattn_context *ctx = test_context();
    assert_true(clattn__variant_usable(ctx, CLATTN__VAR_BASELINE, NULL, why, sizeof why));
    assert_string_equal(why, "probe passed");
    clattn_context_free(ctx);
    ctx = test_context(); /* a new context reads the answer from disk: no probe runs */
    clattn__fault_arm(ctx, CLATTN__FAULT_PROBE, 1);
    assert_true(clattn__variant_usable(ctx, CLATTN__VAR_BASELINE, NULL, why, sizeof why));
    assert_non_null(strstr(why, "cached"));
    assert_int_equal(clattn__fault_sites(ctx, CLATTN__FAULT_PROBE), 0);
    clattn_context_free(ctx);
    assert_int_equal(clear_cache(), 1);

    /* a probe whose output is wrong: unusable, remembered on the context and on disk */
    fresh_cache();
    ctx = test_context();
    clattn__fault_arm(ctx, CLATTN__FAULT_PROBE, 1);
    assert_false(clattn__variant_usable(ctx, CLATTN__VAR_BASELINE, NULL, why, sizeof why));
    assert_non_null(strstr(why, "output"));
    assert_int_equal(clattn__fault_fired(ctx), 1);
    assert_false(clattn__variant_usable(ctx, CLATTN__VAR_BASELINE, NULL, why, sizeof why));
    assert_int_equal(clattn__fault_sites(ctx, CLATTN__FAULT_PROBE), 1); /* not probed again */
    clattn_context_free(ctx);
    ctx = test_context();
    assert_false(clattn__variant_usable(ctx, CLATTN__VAR_BASELINE, NULL, why, sizeof why));
    assert_non_null(strstr(why, "cached"));
    clattn_context_free(ctx);

    /* a damaged answer file is probed again (and passes, no fault armed) */
    DIR *d = opendir(dir);
    assert_non_null(d);
    int damaged = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        const size_t n = strlen(e->d_name);
        if (n > 6 && strcmp(e->d_name + n - 6, ".probe") == 0) {
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            FILE *f = fopen(path, "wb");
            assert_non_null(f);
            fputs("clattn-probe 1 7 x\n", f);
            fclose(f);
            damaged++;
        }
    }
    closedir(d);
    assert_int_equal(damaged, 1);
    ctx = test_context();
    assert_true(clattn__variant_usable(ctx, CLATTN__VAR_BASELINE, NULL, why, sizeof why));
    assert_string_equal(why, "probe passed");
    clattn_context_free(ctx);
    assert_int_equal(clear_cache(), 1);
}

/* Probes forced to run where the device lacks the feature: the kernel cannot build (an
 * extension pragma or built-in the compiler does not know, PTX on a non-NVIDIA device),
 * the feature is unusable, the call that asked goes on, and nothing is cached. */
static void test_a_probe_that_cannot_build_makes_its_feature_unusable(void **state)
{
    (void)state;
    fresh_cache();
    clattn_context *ctx = test_context();
    const clattn__variant vs[] = {CLATTN__VAR_F16, CLATTN__VAR_SUBGROUPS, CLATTN__VAR_MMA_NV};
    int ran = 0;
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        char why[112];
        const bool has = clattn__variant_usable(ctx, vs[i], NULL, why, sizeof why);
        if (probed(has, why)) {
            print_message("skipped %s: this device has it, so its probe cannot be made to fail by "
                          "building it here (%s)\n", clattn__variant_name(vs[i]), why);
            continue;
        }
        clattn__probe_force(vs[i], 2);
        const bool ok = clattn__variant_usable(ctx, vs[i], NULL, why, sizeof why);
        clattn__probe_force(vs[i], -1);
        if (ok || !strstr(why, "did not build"))
            fail_msg("%s forced to probe: %s (%s)", clattn__variant_name(vs[i]), ok ? "usable" : "unusable", why);
        ran++;
    }
    clattn_context_free(ctx);
    assert_int_equal(clear_cache(), 0);
    print_message("%d probe(s) built where they cannot\n", ran);
}

/* The subgroup variant of the gpu-mm form forced on: where its kernel does not build the
 * variant is switched off for the context and the same form runs without it; where it
 * builds (a device whose subgroups are 16 wide) it must match the reference too. */
static void test_the_subgroup_variant_gives_way_to_the_plain_gpu_mm_form(void **state)
{
    (void)state;
    unsetenv("CLATTN_CACHE_DIR");
    const attn_case cases[] = {
        {.B = 1, .Hq = 4, .Hkv = 2, .Lq = 40, .Lk = 70, .D = 32, .Dv = 32, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
         .lse = 1, .seed = 4301},
        {.B = 2, .Hq = 2, .Hkv = 2, .Lq = 17, .Lk = 33, .D = 16, .Dv = 24, .softcap = 4.0f, .lse = 1, .seed = 4302},
    };
    clattn_context *ctx = test_context();
    clattn__tuning_force_form(CLATTN__TP_FUSED, 2);
    clattn__probe_force(CLATTN__VAR_SUBGROUPS, 1);
    test_run_cases(ctx, cases, 2, CLATTN_PATH_FUSED, 0);
    char why[112];
    int value = 0;
    const bool still = clattn__variant_usable(ctx, CLATTN__VAR_SUBGROUPS, &value, why, sizeof why);
    if (still)
        print_message("the subgroup variant built and matched the reference on this device\n");
    else if (!strstr(why, "did not build"))
        fail_msg("the subgroup variant is off for another reason: %s", why);
    /* forced off: the plain form, the same results */
    clattn_context_free(ctx);
    ctx = test_context();
    clattn__probe_force(CLATTN__VAR_SUBGROUPS, 0);
    test_run_cases(ctx, cases, 2, CLATTN_PATH_FUSED, 0);
    clattn__probe_force(CLATTN__VAR_SUBGROUPS, -1);
    clattn__tuning_force_form(CLATTN__TP_FUSED, -1);
    clattn_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features_the_device_lacks_are_unusable_and_say_why),
        cmocka_unit_test(test_probe_answers_are_cached_and_a_wrong_output_is_remembered),
        cmocka_unit_test(test_a_probe_that_cannot_build_makes_its_feature_unusable),
        cmocka_unit_test(test_the_subgroup_variant_gives_way_to_the_plain_gpu_mm_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
