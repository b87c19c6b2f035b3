/* The attention-case harness (src/support/attn_case.c) that every device test, `clattn check`
 * and `clattn bench` rely on: its cases are valid and cover SPEC §1, its data is
 * deterministic, and its comparison accepts a perfect answer and catches each kind of
 * wrong one. A "perfect device" here is the reference written into O by hand. */
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
#include "clattn.h"
#include "reference/reference.h"

static void put_value(const clattn_tensor *t, int64_t a, int64_t b, int64_t i, int64_t j,
                      double v)
{
    unsigned char *p = (unsigned char *)t->host + t->offset + a * t->nb[0] + b * t->nb[1] +
                       i * t->nb[2] + j * t->nb[3];
    float f = (float)v;
    uint16_t h;
    switch (t->dtype) {
    case CLATTN_F16: h = clattn__float_to_half(f); memcpy(p, &h, 2); break;
    case CLATTN_BF16: h = clattn__float_to_bf16(f); memcpy(p, &h, 2); break;
    default: memcpy(p, &f, 4); break;
    }
}

/* Write the reference, rounded to the output dtype, into O and LSE: what a correct
 * device would produce. */
static void simulate_perfect_device(const attn_case *c, attn_case_data *d)
{
    const int64_t Dv = attn_case_dv(c), rows = c->B * c->Hq * c->Lq;
    double *ref = malloc((size_t)(rows * Dv + 1) * sizeof *ref);
    double *lse = malloc((size_t)(rows + 1) * sizeof *lse);
    assert_non_null(ref);
    assert_non_null(lse);
    clattn_options opt;
    attn_case_options(c, d, &opt);
    assert_int_equal(clattn_reference_attention(&d->buf[ATTN_BUF_Q].t, &d->buf[ATTN_BUF_K].t,
                                                &d->buf[ATTN_BUF_V].t, &opt, ref, lse),
                     CLATTN_SUCCESS);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hq; h++)
            for (int64_t i = 0; i < c->Lq; i++) {
                const int64_t row = (b * c->Hq + h) * c->Lq + i;
                for (int64_t e = 0; e < Dv; e++)
                    put_value(&d->buf[ATTN_BUF_O].t, b, h, i, e, ref[row * Dv + e]);
                if (c->lse) put_value(&d->buf[ATTN_BUF_LSE].t, b, h, i, 0, lse[row]);
            }
    free(ref);
    free(lse);
}

static const attn_case *suite_case(const char *name)
{
    size_t n;
    const attn_case *s = attn_case_suite(&n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(s[i].name, name) == 0) return &s[i];
    fail_msg("no suite case %s", name);
    return NULL;
}

/* Every case must pass validation exactly as clattn_attention would see it. */
static void assert_valid_problem(const attn_case *c)
{
    attn_case_data *d;
    assert_int_equal(attn_case_data_create(c, &d), CLATTN_SUCCESS);
    clattn_options opt;
    attn_case_options(c, d, &opt);
    clattn__problem p;
    char err[256] = "";
    clattn_status st = clattn__problem_init(&p, &d->buf[ATTN_BUF_Q].t, &d->buf[ATTN_BUF_K].t,
                                            &d->buf[ATTN_BUF_V].t, &d->buf[ATTN_BUF_O].t,
                                            &opt, err, sizeof err);
    if (st != CLATTN_SUCCESS) {
        char desc[512];
        attn_case_format(c, desc, sizeof desc);
        fail_msg("%s\n  invalid: %s", desc, err);
    }
    attn_case_data_free(d);
}

static void test_suite_cases_are_valid_and_uniquely_named(void **state)
{
    (void)state;
    size_t n;
    const attn_case *s = attn_case_suite(&n);
    assert_true(n >= 40);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(s[i].name);
        for (size_t j = 0; j < i; j++) assert_string_not_equal(s[i].name, s[j].name);
        assert_int_equal(s[i].path, CLATTN_PATH_AUTO);
        char buf[512];
        assert_true(attn_case_format(&s[i], buf, sizeof buf) < (int)sizeof buf);
        assert_non_null(strstr(buf, s[i].name));
        assert_valid_problem(&s[i]);
    }
}

/* The suite must exercise each rule of SPEC §1 at least once. */
static void test_suite_covers_every_rule(void **state)
{
    (void)state;
    size_t n;
    const attn_case *s = attn_case_suite(&n);
    int seen_rank[5][3] = {{0}}, tl_lt = 0, tl_gt = 0, br_lt = 0, br_gt = 0, gqa = 0, mqa = 0;
    int dv_ne_d = 0, lq1 = 0, lk1 = 0, f16 = 0, bf16 = 0, f16_out = 0, blhd = 0, pad1 = 0,
        pad2 = 0, win_l_unb = 0, win_r_unb = 0, win_both = 0, kvl = 0, cap = 0, alibi = 0,
        scale = 0, bcast = 0;
    int dims[257] = {0};
    for (size_t i = 0; i < n; i++) {
        const attn_case *c = &s[i];
        if (c->mask_kind) seen_rank[c->mask_rank ? c->mask_rank : 4][c->mask_kind] = 1;
        bcast |= c->mask_kind && c->mask_ones;
        tl_lt |= c->causal == CLATTN_CAUSAL_TOP_LEFT && c->Lq < c->Lk;
        tl_gt |= c->causal == CLATTN_CAUSAL_TOP_LEFT && c->Lq > c->Lk;
        br_lt |= c->causal == CLATTN_CAUSAL_BOTTOM_RIGHT && c->Lq < c->Lk;
        br_gt |= c->causal == CLATTN_CAUSAL_BOTTOM_RIGHT && c->Lq > c->Lk;
        gqa |= c->Hkv > 1 && c->Hq > c->Hkv;
        mqa |= c->Hkv == 1 && c->Hq > 1;
        dv_ne_d |= attn_case_dv(c) != c->D;
        lq1 |= c->Lq == 1;
        lk1 |= c->Lk == 1;
        f16 |= c->dtype == CLATTN_F16;
        bf16 |= c->dtype == CLATTN_BF16;
        f16_out |= c->out_dtype == CLATTN_F16;
        blhd |= c->blhd;
        pad1 |= c->padded == 1;
        pad2 |= c->padded == 2;
        win_l_unb |= c->window && c->win_left == -1 && c->win_right == 0;
        win_r_unb |= c->window && c->win_left == 3 && c->win_right == -1;
        win_both |= c->window && c->win_left == 2 && c->win_right == 2;
        kvl |= c->kv_lens && c->B >= 3; /* batches with 0 and Lk keys */
        cap |= c->softcap > 0;
        alibi |= c->alibi;
        scale |= c->scale != 0 && !isnan(c->scale);
        dims[c->D] = 1;
    }
    for (int r = 2; r <= 4; r++) assert_true(seen_rank[r][ATTN_MASK_BOOL]);
    assert_true(seen_rank[2][ATTN_MASK_FLOAT] && seen_rank[4][ATTN_MASK_FLOAT]);
    assert_true(bcast && tl_lt && tl_gt && br_lt && br_gt && gqa && mqa && dv_ne_d);
    assert_true(lq1 && lk1 && f16 && bf16 && f16_out && blhd && pad1 && pad2);
    assert_true(win_l_unb && win_r_unb && win_both && kvl && cap && alibi && scale);
    static const int want_dims[] = {1, 3, 64, 72, 80, 96, 128, 256};
    for (size_t i = 0; i < sizeof want_dims / sizeof want_dims[0]; i++)
        assert_true(dims[want_dims[i]]);
}

static void test_random_cases_are_deterministic_valid_and_small(void **state)
{
    (void)state;
    for (uint64_t seed = 0; seed < 300; seed++) {
        attn_case a, b;
        attn_case_random(seed, &a);
        attn_case_random(seed, &b);
        char fa[512], fb[512];
        attn_case_format(&a, fa, sizeof fa);
        attn_case_format(&b, fb, sizeof fb);
        assert_string_equal(fa, fb);
        assert_true(a.D >= 1 && a.D <= 256 && attn_case_dv(&a) >= 1 && attn_case_dv(&a) <= 256);
        assert_true(a.Lq >= 1 && a.Lk >= 1 && a.B >= 1 && a.Hkv >= 1 && a.Hq % a.Hkv == 0);
        const double work = (double)a.B * a.Hq * a.Lq * a.Lk * (a.D + attn_case_dv(&a));
        if (work > 4e6) fail_msg("%s: work %.3g", fa, work);
        assert_valid_problem(&a);
    }
}

static void test_random_cases_reach_every_option(void **state)
{
    (void)state;
    int dt[3] = {0}, odt[3] = {0}, causal[3] = {0}, mask[3] = {0}, rank[5] = {0}, pad[3] = {0};
    int blhd = 0, window = 0, kvl = 0, cap = 0, alibi = 0, scale = 0, lse = 0, lq1 = 0,
        lk1 = 0, gqa = 0, mqa = 0, ones = 0, dv = 0;
    for (uint64_t seed = 0; seed < 1000; seed++) {
        attn_case c;
        attn_case_random(seed, &c);
        dt[c.dtype] = odt[c.out_dtype] = causal[c.causal] = mask[c.mask_kind] = 1;
        if (c.mask_kind) rank[c.mask_rank] = 1;
        pad[c.padded] = 1;
        blhd |= c.blhd;
        window |= c.window && (c.win_left >= 0 || c.win_right >= 0);
        kvl |= c.kv_lens;
        cap |= c.softcap > 0;
        alibi |= c.alibi;
        scale |= c.scale != 0;
        lse |= c.lse;
        lq1 |= c.Lq == 1;
        lk1 |= c.Lk == 1;
        gqa |= c.Hkv > 1 && c.Hq > c.Hkv;
        mqa |= c.Hkv == 1 && c.Hq > 1;
        ones |= c.mask_kind && c.mask_ones;
        dv |= attn_case_dv(&c) != c.D;
    }
    for (int i = 0; i < 3; i++) assert_true(dt[i] && odt[i] && causal[i] && mask[i] && pad[i]);
    assert_true(rank[2] && rank[3] && rank[4]);
    assert_true(blhd && window && kvl && cap && alibi && scale && lse && lq1 && lk1);
    assert_true(gqa && mqa && ones && dv);
}

static void test_case_data_is_deterministic_and_outputs_start_as_sentinel(void **state)
{
    (void)state;
    const attn_case *c = suite_case("everything");
    attn_case_data *a, *b;
    assert_int_equal(attn_case_data_create(c, &a), CLATTN_SUCCESS);
    assert_int_equal(attn_case_data_create(c, &b), CLATTN_SUCCESS);
    for (int i = 0; i < ATTN_BUF_COUNT; i++) {
        assert_int_equal(a->buf[i].present, b->buf[i].present);
        assert_int_equal(a->buf[i].bytes, b->buf[i].bytes);
        if (a->buf[i].present) assert_memory_equal(a->buf[i].host, b->buf[i].host, a->buf[i].bytes);
    }
    for (int i = 0; i < ATTN_BUF_COUNT; i++) assert_true(a->buf[i].present);
    for (size_t j = 0; j < a->buf[ATTN_BUF_O].bytes; j++)
        assert_int_equal(a->buf[ATTN_BUF_O].host[j], 0xff);
    /* kv_lens: batch 1 has no keys, batch 2 all of them */
    assert_int_equal((int)clattn__host_get(&a->buf[ATTN_BUF_KV_LENS].t, 1, 0, 0, 0), 0);
    assert_int_equal((int)clattn__host_get(&a->buf[ATTN_BUF_KV_LENS].t, 2, 0, 0, 0), c->Lk);
    attn_case_data_free(a);
    attn_case_data_free(b);
    attn_case_data_free(NULL);
}

static void test_compare_accepts_a_perfect_answer_for_every_suite_case(void **state)
{
    (void)state;
    size_t n;
    const attn_case *s = attn_case_suite(&n);
    for (size_t i = 0; i < n; i++) {
        attn_case_data *d;
        assert_int_equal(attn_case_data_create(&s[i], &d), CLATTN_SUCCESS);
        simulate_perfect_device(&s[i], d);
        attn_case_result r;
        assert_int_equal(attn_case_compare(&s[i], d, &r), CLATTN_SUCCESS);
        if (!r.ok) {
            char desc[512], res[768];
            attn_case_format(&s[i], desc, sizeof desc);
            attn_case_result_format(&r, res, sizeof res);
            fail_msg("%s\n  %s", desc, res);
        }
        attn_case_data_free(d);
    }
}

static void test_suite_fully_masked_cases_have_fully_masked_rows(void **state)
{
    (void)state;
    static const char *names[] = {"causal_br_lq_gt_lk_masked_rows", "window_lq_gt_lk_masked_rows",
                                  "kv_lens", "fully_masked_rows_mixed",
                                  "fully_masked_by_float_mask", "bool_mask_rank4", "everything"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const attn_case *c = suite_case(names[i]);
        attn_case_data *d;
        assert_int_equal(attn_case_data_create(c, &d), CLATTN_SUCCESS);
        simulate_perfect_device(c, d);
        attn_case_result r;
        assert_int_equal(attn_case_compare(c, d, &r), CLATTN_SUCCESS);
        if (r.masked_rows == 0) fail_msg("%s has no fully masked row", names[i]);
        assert_true(r.ok);
        attn_case_data_free(d);
    }
}

/* Run a perfect answer for case `name`, let `spoil` damage it, and return the verdict. */
static attn_case_result spoiled(const char *name, void (*spoil)(attn_case_data *d))
{
    const attn_case *c = suite_case(name);
    attn_case_data *d;
    assert_int_equal(attn_case_data_create(c, &d), CLATTN_SUCCESS);
    simulate_perfect_device(c, d);
    spoil(d);
    attn_case_result r;
    assert_int_equal(attn_case_compare(c, d, &r), CLATTN_SUCCESS);
    attn_case_data_free(d);
    return r;
}

static void spoil_one_value(attn_case_data *d)
{
    const clattn_tensor *o = &d->buf[ATTN_BUF_O].t;
    put_value(o, 0, 1, 2, 3, clattn__host_get(o, 0, 1, 2, 3) + 0.01);
}
static void spoil_nan(attn_case_data *d)
{
    put_value(&d->buf[ATTN_BUF_O].t, 0, 0, 0, 0, NAN);
}
static void spoil_masked_row(attn_case_data *d)
{
    /* row 0 of causal_br_lq_gt_lk_masked_rows sees no key */
    put_value(&d->buf[ATTN_BUF_O].t, 0, 0, 0, 5, 1e-30);
}
static void spoil_padding(attn_case_data *d)
{
    const clattn_tensor *o = &d->buf[ATTN_BUF_O].t;
    /* the byte right after row 0's last element of a padded case */
    d->buf[ATTN_BUF_O].host[o->offset + (size_t)(o->nb[3] * o->ne[3])] = 0;
}
static void spoil_leading_offset(attn_case_data *d) { d->buf[ATTN_BUF_O].host[0] = 0; }
static void spoil_lse(attn_case_data *d)
{
    const clattn_tensor *l = &d->buf[ATTN_BUF_LSE].t;
    put_value(l, 0, 0, 5, 0, clattn__host_get(l, 0, 0, 5, 0) + 0.01);
}
static void spoil_masked_lse(attn_case_data *d)
{
    put_value(&d->buf[ATTN_BUF_LSE].t, 0, 0, 0, 0, -1e30);
}

static void test_compare_catches_wrong_value_nan_nonzero_masked_row_padding_and_lse(void **state)
{
    (void)state;
    attn_case_result r = spoiled("basic", spoil_one_value);
    assert_false(r.ok);
    assert_true(r.max_err > 1.0);
    assert_int_equal(r.worst[1], 1);
    assert_int_equal(r.worst[2], 2);
    assert_int_equal(r.worst[3], 3);
    r = spoiled("basic", spoil_nan);
    assert_false(r.ok);
    assert_int_equal(r.nan_count, 1);
    r = spoiled("causal_br_lq_gt_lk_masked_rows", spoil_masked_row);
    assert_false(r.ok);
    assert_int_equal(r.masked_nonzero, 1);
    r = spoiled("padded", spoil_padding);
    assert_false(r.ok);
    assert_int_equal(r.padding_clobbered, 1);
    r = spoiled("padded_strided_elements", spoil_padding);
    assert_false(r.ok);
    r = spoiled("padded", spoil_leading_offset);
    assert_false(r.ok);
    r = spoiled("basic", spoil_lse);
    assert_false(r.ok);
    assert_true(r.lse_max_err > 1.0);
    r = spoiled("causal_br_lq_gt_lk_masked_rows", spoil_masked_lse);
    assert_false(r.ok);
    assert_true(isinf(r.lse_max_err));
    char buf[768];
    attn_case_result_format(&r, buf, sizeof buf);
    assert_non_null(strstr(buf, "FAIL"));
}

static void test_compare_tolerance_follows_output_dtype(void **state)
{
    (void)state;
    static const char *names[] = {"basic", "f16_out", "bf16_out", "f16_storage"};
    static const double atol[] = {2e-4, 3e-3, 3e-3, 2e-4}, rtol[] = {2e-3, 3e-3, 1e-2, 2e-3};
    for (int i = 0; i < 4; i++) {
        attn_case_result r = spoiled(names[i], spoil_one_value);
        assert_true(r.atol == atol[i] && r.rtol == rtol[i]);
    }
}

static void test_flops_count_pairs_left_by_causal_window_and_kv_lens(void **state)
{
    (void)state;
    attn_case c;
    memset(&c, 0, sizeof c);
    c.B = 2, c.Hq = 3, c.Hkv = 3, c.Lq = 10, c.Lk = 10, c.D = 16;
    assert_true(attn_case_flops(&c, NULL) == 4.0 * 2 * 3 * 10 * 10 * 16);
    c.causal = CLATTN_CAUSAL_TOP_LEFT;
    assert_true(attn_case_flops(&c, NULL) == 2.0 * 32 * 2 * 3 * (10 * 11 / 2));
    c.causal = CLATTN_CAUSAL_NONE;
    c.window = 1, c.win_left = 0, c.win_right = 0;
    assert_true(attn_case_flops(&c, NULL) == 2.0 * 32 * 2 * 3 * 10);
    c.window = 0;
    c.kv_lens = 1;
    c.B = 3;
    attn_case_data *d;
    assert_int_equal(attn_case_data_create(&c, &d), CLATTN_SUCCESS);
    const double len0 = clattn__host_get(&d->buf[ATTN_BUF_KV_LENS].t, 0, 0, 0, 0);
    assert_true(attn_case_flops(&c, d) == 2.0 * 32 * 3 * 10 * (len0 + 0 + 10));
    attn_case_data_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_suite_cases_are_valid_and_uniquely_named),
        cmocka_unit_test(test_suite_covers_every_rule),
        cmocka_unit_test(test_random_cases_are_deterministic_valid_and_small),
        cmocka_unit_test(test_random_cases_reach_every_option),
        cmocka_unit_test(test_case_data_is_deterministic_and_outputs_start_as_sentinel),
        cmocka_unit_test(test_compare_accepts_a_perfect_answer_for_every_suite_case),
        cmocka_unit_test(test_suite_fully_masked_cases_have_fully_masked_rows),
        cmocka_unit_test(test_compare_catches_wrong_value_nan_nonzero_masked_row_padding_and_lse),
        cmocka_unit_test(test_compare_tolerance_follows_output_dtype),
        cmocka_unit_test(test_flops_count_pairs_left_by_causal_window_and_kv_lens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
