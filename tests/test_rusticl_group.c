/* clattn_group_attention over two OpenCL implementations in one process, PoCL and Mesa's
 * rusticl (llvmpipe; RUSTICL_ENABLE=llvmpipe is set by CTest): the first call measures
 * both devices and splits by the speeds; with equal shares, cases over the options equal
 * the float64 reference. Apart from test_group because sanitizer builds leave rusticl out
 * (as test_rusticl). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* PoCL and rusticl in one group: speeds measured on first use; a few cases over the
 * options (rusticl builds are slow, so the shapes share one head dim). */
static void test_pocl_and_rusticl_match_reference(void **state)
{
    (void)state;
    size_t idx;
    if (clattn_device_find("llvmpipe", &idx) != CLATTN_SUCCESS)
        fail_msg("no rusticl llvmpipe device: install mesa-opencl-icd and set RUSTICL_ENABLE=llvmpipe");
    const char *specs[2] = {"portable", "llvmpipe"};
    clattn_group *g = NULL;
    assert_int_equal(clattn_group_create(specs, 2, &g), CLATTN_SUCCESS);
    const attn_case cases[] = {
        {.B = 2, .Hq = 8, .Hkv = 4, .Lq = 16, .Lk = 24, .D = 32, .lse = 1, .seed = 1},
        {.B = 1, .Hq = 2, .Hkv = 2, .Lq = 16, .Lk = 24, .D = 32, .lse = 1, .seed = 2,
         .causal = CLATTN_CAUSAL_TOP_LEFT, .alibi = 1, .softcap = 20.0f},
        {.B = 1, .Hq = 2, .Hkv = 1, .Lq = 16, .Lk = 24, .D = 32, .lse = 1, .seed = 3,
         .window = 1, .win_left = 5, .win_right = 2, .mask_kind = ATTN_MASK_BOOL, .kv_lens = 1},
    };
    /* the first call measures the speeds and splits by them */
    int bk;
    size_t failures = (size_t)test_group_check_case(g, &cases[0], &bk);
    double sp[2];
    int64_t count;
    clattn_group_speeds(g, sp);
    print_message("measured speeds: PoCL %.3f, rusticl %.3f GFLOP/s\n", sp[0], sp[1]);
    assert_true(sp[0] > 0.0 && sp[1] > 0.0);
    assert_int_equal(clattn_group_last_split(g, 0, &bk, NULL, &count, NULL), CLATTN_SUCCESS);
    assert_int_equal(bk, 0);
    assert_int_equal(count, llround(8.0 * sp[0] / (sp[0] + sp[1])));
    /* equal shares, so rusticl computes half of every case */
    const double even[2] = {1.0, 1.0};
    assert_int_equal(clattn_group_set_speeds(g, even), CLATTN_SUCCESS);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        failures += (size_t)test_group_check_case(g, &cases[i], &bk);
    clattn_group_free(g);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pocl_and_rusticl_match_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
