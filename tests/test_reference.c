/* The float64 CPU reference (clattn_reference_attention) against small cases worked out
 * by hand, one SPEC §1 rule at a time, and the argument checks it shares with every path
 * (clattn__problem_init). Everything else in the test suite trusts this reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "support/attn_case.h"
#include "clattn.h"
#include "reference/reference.h"

#define TOL 1e-12

static clattn_tensor f32(float *data, int64_t a, int64_t b, int64_t c, int64_t d)
{
    return clattn_tensor_host(data, CLATTN_F32, a, b, c, d);
}

static void assert_close(double got, double want)
{
    if (!(fabs(got - want) <= TOL * (1.0 + fabs(want))))
        fail_msg("got %.17g, want %.17g", got, want);
}

/* ---- single rules ------------------------------------------------------------------- */

static void test_reference_single_key_gives_that_value_row(void **state)
{
    (void)state;
    float q[2 * 3] = {1, 2, 3, -1, 0.5f, 4}; /* Lq = 2, D = 3 */
    float k[3] = {0.5f, -1, 2};
    float v[4] = {7, -8, 9, 10};              /* Dv = 4 */
    clattn_tensor tq = f32(q, 1, 1, 2, 3), tk = f32(k, 1, 1, 1, 3), tv = f32(v, 1, 1, 1, 4);
    double out[2 * 4], lse[2];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    const double scale = (double)(float)(1.0 / sqrt(3.0));
    for (int i = 0; i < 2; i++) {
        for (int d = 0; d < 4; d++) assert_close(out[i * 4 + d], v[d]);
        double dot = 0;
        for (int d = 0; d < 3; d++) dot += (double)q[i * 3 + d] * k[d];
        assert_close(lse[i], scale * dot); /* one key: LSE is its score */
    }
}

static void test_reference_equal_scores_average_the_values(void **state)
{
    (void)state;
    float q[2] = {0, 0}; /* zero query: every score is 0 */
    float k[3 * 2] = {1, 2, 3, 4, 5, 6};
    float v[3] = {1, 2, 6};
    clattn_tensor tq = f32(q, 1, 1, 1, 2), tk = f32(k, 1, 1, 3, 2), tv = f32(v, 1, 1, 3, 1);
    double out[1], lse[1];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    assert_close(out[0], 3.0);
    assert_close(lse[0], log(3.0));
}

static void test_reference_lse_and_output_of_two_keys_by_hand(void **state)
{
    (void)state;
    float q[2] = {1, 0};
    float k[4] = {1, 0, 0, 1};
    float v[4] = {1, 10, -3, 4}; /* Dv = 2 */
    clattn_tensor tq = f32(q, 1, 1, 1, 2), tk = f32(k, 1, 1, 2, 2), tv = f32(v, 1, 1, 2, 2);
    double out[2], lse[1];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    const double s0 = (double)(float)(1.0 / sqrt(2.0)), s1 = 0.0;
    const double z = exp(s0) + exp(s1);
    assert_close(lse[0], log(z));
    assert_close(out[0], (exp(s0) * 1 + exp(s1) * -3) / z);
    assert_close(out[1], (exp(s0) * 10 + exp(s1) * 4) / z);
}

static void test_reference_default_scale_is_inverse_sqrt_d_and_explicit_scale_wins(void **state)
{
    (void)state;
    float q[4] = {1, 1, 1, 1};
    float k[8] = {1, 1, 1, 1, 0, 0, 0, 0}; /* dots 4 and 0 */
    float v[2] = {1, 0};
    clattn_tensor tq = f32(q, 1, 1, 1, 4), tk = f32(k, 1, 1, 2, 4), tv = f32(v, 1, 1, 2, 1);
    double out[1], lse[1];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    assert_close(out[0], exp(2.0) / (exp(2.0) + 1.0)); /* 4 / sqrt(4) = 2 */
    clattn_options opt;
    clattn_options_init(&opt);
    opt.scale = 0.25f;
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    assert_close(out[0], exp(1.0) / (exp(1.0) + 1.0));
    assert_close(lse[0], log(exp(1.0) + 1.0));
}

/* Lq = Lk = 4, zero queries: a row's output is the mean of the values it may see. */
static void run_zero_query(int64_t Lq, int64_t Lk, const clattn_options *opt, double *out,
                           double *lse)
{
    static float q[64], k[64], v[64];
    memset(q, 0, sizeof q);
    for (int j = 0; j < 64; j++) {
        k[j] = (float)j;
        v[j] = (float)(1 << (j % 16)); /* distinct powers of two: sums name the keys */
    }
    clattn_tensor tq = f32(q, 1, 1, Lq, 1), tk = f32(k, 1, 1, Lk, 1), tv = f32(v, 1, 1, Lk, 1);
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, opt, out, lse), CLATTN_SUCCESS);
}

/* Mean of v[lo..hi) of run_zero_query's values. */
static double mean_v(int lo, int hi)
{
    double s = 0;
    for (int j = lo; j < hi; j++) s += (double)(1 << (j % 16));
    return s / (hi - lo);
}

static void test_reference_causal_top_left_row_i_sees_keys_0_to_i(void **state)
{
    (void)state;
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_TOP_LEFT;
    double out[4], lse[4];
    run_zero_query(4, 6, &opt, out, lse); /* Lq < Lk: top-left ignores the offset */
    for (int i = 0; i < 4; i++) {
        assert_close(out[i], mean_v(0, i + 1));
        assert_close(lse[i], log(i + 1.0));
    }
    /* Lq = 1: the single query sees only key 0 */
    run_zero_query(1, 5, &opt, out, lse);
    assert_close(out[0], mean_v(0, 1));
}

static void test_reference_causal_bottom_right_single_query_sees_all_keys(void **state)
{
    (void)state;
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    double out[6], lse[6];
    run_zero_query(1, 5, &opt, out, lse);
    assert_close(out[0], mean_v(0, 5));
    /* Lq = 2, Lk = 5: i' = i + 3 */
    run_zero_query(2, 5, &opt, out, lse);
    assert_close(out[0], mean_v(0, 4));
    assert_close(out[1], mean_v(0, 5));
}

static void test_reference_causal_bottom_right_rows_before_first_key_are_fully_masked(void **state)
{
    (void)state;
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    double out[4], lse[4];
    run_zero_query(4, 2, &opt, out, lse); /* i' = i - 2 */
    for (int i = 0; i < 2; i++) {
        assert_true(out[i] == 0.0);
        assert_true(lse[i] == -INFINITY);
    }
    assert_close(out[2], mean_v(0, 1));
    assert_close(out[3], mean_v(0, 2));
}

static void test_reference_window_keeps_keys_between_left_and_right_of_aligned_row(void **state)
{
    (void)state;
    clattn_options opt;
    clattn_options_init(&opt);
    opt.window_left = 1;
    opt.window_right = 2;
    double out[6], lse[6];
    run_zero_query(3, 6, &opt, out, lse); /* i' = i + 3: keys i'-1 .. i'+2, clipped */
    assert_close(out[0], mean_v(2, 6));
    assert_close(out[1], mean_v(3, 6));
    assert_close(out[2], mean_v(4, 6));
    /* (-1, 0) is bottom-right causal */
    opt.window_left = -1;
    opt.window_right = 0;
    double ref[6], ref_lse[6];
    run_zero_query(3, 6, &opt, out, lse);
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    run_zero_query(3, 6, &opt, ref, ref_lse);
    for (int i = 0; i < 3; i++) assert_close(out[i], ref[i]);
    /* (3, -1): unbounded on the right */
    clattn_options_init(&opt);
    opt.window_left = 3;
    opt.window_right = -1;
    run_zero_query(6, 6, &opt, out, lse);
    for (int i = 0; i < 6; i++) assert_close(out[i], mean_v(i > 3 ? i - 3 : 0, 6));
    /* (0, 0): only the diagonal */
    opt.window_left = 0;
    opt.window_right = 0;
    run_zero_query(6, 6, &opt, out, lse);
    for (int i = 0; i < 6; i++) {
        assert_close(out[i], mean_v(i, i + 1));
        assert_close(lse[i], 0.0);
    }
}

/* A window side too wide to exclude anything, up to INT64_MAX ("no limit" as callers
 * write it), is the same as unbounded: the key range must not overflow into nothing. */
static void test_reference_window_wider_than_the_problem_is_unbounded(void **state)
{
    (void)state;
    clattn_options opt;
    clattn_options_init(&opt);
    const int64_t sides[] = {9, 1000, INT64_MAX - 1, INT64_MAX};
    for (size_t s = 0; s < sizeof sides / sizeof sides[0]; s++) {
        opt.window_left = sides[s];
        opt.window_right = sides[s];
        double out[3], lse[3];
        run_zero_query(3, 6, &opt, out, lse);
        for (int i = 0; i < 3; i++) assert_close(out[i], mean_v(0, 6));
    }
}

static void test_reference_kv_len_zero_gives_zeros_and_neg_inf_lse(void **state)
{
    (void)state;
    float q[2] = {0, 0}, k[2 * 4] = {0}, v[2 * 4] = {1, 2, 3, 4, 5, 6, 7, 8};
    int32_t lens[2] = {0, 2};
    clattn_tensor tq = f32(q, 2, 1, 1, 1), tk = f32(k, 2, 1, 4, 1), tv = f32(v, 2, 1, 4, 1);
    clattn_tensor tl = clattn_tensor_host(lens, CLATTN_I32, 2, 1, 1, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.kv_lens = &tl;
    double out[2], lse[2];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    assert_true(out[0] == 0.0);
    assert_true(lse[0] == -INFINITY);
    assert_close(out[1], 5.5); /* keys 0 and 1 of batch 1: values 5 and 6 */
    assert_close(lse[1], log(2.0));
}

static void test_reference_fully_masked_row_is_zero_and_lse_neg_inf(void **state)
{
    (void)state;
    float q[2 * 2] = {1, 2, 3, 4}, k[3 * 2] = {1, 0, 0, 1, 1, 1}, v[3 * 2] = {1, 2, 3, 4, 5, 6};
    unsigned char mask[2 * 3] = {0, 0, 0, 1, 0, 1}; /* row 0: nothing; row 1: keys 0, 2 */
    clattn_tensor tq = f32(q, 1, 1, 2, 2), tk = f32(k, 1, 1, 3, 2), tv = f32(v, 1, 1, 3, 2);
    clattn_tensor tm = clattn_tensor_host(mask, CLATTN_BOOL, 1, 1, 2, 3);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.mask = &tm;
    double out[4], lse[2];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    assert_true(out[0] == 0.0 && out[1] == 0.0);
    assert_true(lse[0] == -INFINITY);
    assert_false(isnan(out[2]) || isnan(out[3]) || isnan(lse[1]));
    /* row 1 by hand: scores scale*(3, 7) for keys 0 and 2 */
    const double sc = (double)(float)(1.0 / sqrt(2.0));
    const double e0 = exp(sc * 3), e2 = exp(sc * 7);
    assert_close(out[2], (e0 * 1 + e2 * 5) / (e0 + e2));
    assert_close(out[3], (e0 * 2 + e2 * 6) / (e0 + e2));
    assert_close(lse[1], log(e0 + e2));
}

static void test_reference_float_mask_adds_to_scores_and_all_neg_inf_row_is_masked(void **state)
{
    (void)state;
    float q[2] = {0, 0}, k[2] = {0, 0}, v[2] = {1, 5};
    /* row 0: weights 1:3 through log; row 1: every key -inf */
    float mask[4] = {0.0f, (float)log(3.0), -INFINITY, -INFINITY};
    clattn_tensor tq = f32(q, 1, 1, 2, 1), tk = f32(k, 1, 1, 2, 1), tv = f32(v, 1, 1, 2, 1);
    clattn_tensor tm = f32(mask, 1, 1, 2, 2);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.mask = &tm;
    double out[2], lse[2];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    const double w1 = exp((double)(float)log(3.0));
    assert_close(out[0], (1 + w1 * 5) / (1 + w1));
    assert_close(lse[0], log(1 + w1));
    assert_true(out[1] == 0.0);
    assert_true(lse[1] == -INFINITY);
}

static void test_reference_bool_mask_excludes_false_keys(void **state)
{
    (void)state;
    float q[1] = {0}, k[3] = {0, 0, 0}, v[3] = {2, 100, 4};
    unsigned char mask[3] = {1, 0, 7}; /* any nonzero byte is true */
    clattn_tensor tq = f32(q, 1, 1, 1, 1), tk = f32(k, 1, 1, 3, 1), tv = f32(v, 1, 1, 3, 1);
    clattn_tensor tm = clattn_tensor_host(mask, CLATTN_BOOL, 1, 1, 1, 3);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.mask = &tm;
    double out[1], lse[1];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    assert_close(out[0], 3.0);
    assert_close(lse[0], log(2.0));
}

static void test_reference_mask_broadcasts_like_its_expanded_copy(void **state)
{
    (void)state;
    /* B = 2, Hq = 2, Lq = 3, Lk = 4; a [1, Hq, 1, Lk] mask and the same expanded */
    enum { B = 2, H = 2, LQ = 3, LK = 4, D = 2 };
    float q[B * H * LQ * D], k[B * H * LK * D], v[B * H * LK * D];
    for (int i = 0; i < B * H * LQ * D; i++) q[i] = (float)sin(i * 0.7);
    for (int i = 0; i < B * H * LK * D; i++) {
        k[i] = (float)cos(i * 1.3);
        v[i] = (float)sin(i * 0.31 + 1);
    }
    unsigned char small[H * LK] = {1, 0, 1, 1, 0, 1, 1, 0};
    unsigned char full[B * H * LQ * LK];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < LQ; i++)
                for (int j = 0; j < LK; j++) full[((b * H + h) * LQ + i) * LK + j] = small[h * LK + j];
    clattn_tensor tq = f32(q, B, H, LQ, D), tk = f32(k, B, H, LK, D), tv = f32(v, B, H, LK, D);
    clattn_tensor ts = clattn_tensor_host(small, CLATTN_BOOL, 1, H, 1, LK);
    clattn_tensor tf = clattn_tensor_host(full, CLATTN_BOOL, B, H, LQ, LK);
    clattn_options opt;
    clattn_options_init(&opt);
    double a[B * H * LQ * D], la[B * H * LQ], e[B * H * LQ * D], le[B * H * LQ];
    opt.mask = &ts;
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, a, la), CLATTN_SUCCESS);
    opt.mask = &tf;
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, e, le), CLATTN_SUCCESS);
    assert_memory_equal(a, e, sizeof a);
    assert_memory_equal(la, le, sizeof la);
}

static void test_reference_softcap_bounds_scores(void **state)
{
    (void)state;
    float q[1] = {100}, k[2] = {100, -100}, v[2] = {1, 0}; /* scores +-10000 */
    clattn_tensor tq = f32(q, 1, 1, 1, 1), tk = f32(k, 1, 1, 2, 1), tv = f32(v, 1, 1, 2, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.softcap = 2.0f;
    double out[1], lse[1];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    /* tanh saturates: scores become +-2 */
    const double s0 = 2.0 * tanh(10000.0 / 2.0), s1 = -s0;
    assert_close(out[0], exp(s0) / (exp(s0) + exp(s1)));
    assert_close(lse[0], log(exp(s0) + exp(s1)));
    assert_true(lse[0] <= 2.0 + log(2.0));
    /* a moderate score: 3 -> 2*tanh(1.5) */
    q[0] = 1;
    k[0] = 3;
    k[1] = 0;
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    const double m = 2.0 * tanh(1.5);
    assert_close(out[0], exp(m) / (exp(m) + 1.0));
}

static void test_reference_alibi_penalises_distance_on_equal_keys(void **state)
{
    (void)state;
    /* Hq = 2 with different slopes; Lq = 1, Lk = 3: i' = 2, distances 2, 1, 0 */
    float q[2] = {0, 0}, k[3] = {0, 0, 0}, v[3] = {1, 2, 3};
    float slopes[2] = {0.5f, 0.0f};
    clattn_tensor tq = f32(q, 1, 2, 1, 1), tk = f32(k, 1, 1, 3, 1), tv = f32(v, 1, 1, 3, 1);
    clattn_tensor ta = f32(slopes, 2, 1, 1, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.alibi = &ta;
    double out[2], lse[2];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, out, lse), CLATTN_SUCCESS);
    const double w0 = exp(-1.0), w1 = exp(-0.5), w2 = 1.0;
    assert_close(out[0], (w0 * 1 + w1 * 2 + w2 * 3) / (w0 + w1 + w2));
    assert_close(lse[0], log(w0 + w1 + w2));
    assert_close(out[1], 2.0); /* slope 0: plain mean */
}

static void test_reference_gqa_query_head_reads_kv_head_h_over_group(void **state)
{
    (void)state;
    /* Hq = 6, Hkv = 2 (group 3) and MQA Hkv = 1, Lk = 1: O[h] = V[h / group] */
    float q[6 * 2] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    float k[2 * 2] = {1, -1, 2, 0}, v[2 * 3] = {10, 11, 12, 20, 21, 22};
    clattn_tensor tq = f32(q, 1, 6, 1, 2), tk = f32(k, 1, 2, 1, 2), tv = f32(v, 1, 2, 1, 3);
    double out[6 * 3], lse[6];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    const double sc = (double)(float)(1.0 / sqrt(2.0));
    for (int h = 0; h < 6; h++) {
        const int kvh = h / 3;
        for (int d = 0; d < 3; d++) assert_close(out[h * 3 + d], v[kvh * 3 + d]);
        assert_close(lse[h], sc * ((double)q[h * 2] * k[kvh * 2] + (double)q[h * 2 + 1] * k[kvh * 2 + 1]));
    }
    tk = f32(k, 1, 1, 1, 2);
    tv = f32(v, 1, 1, 1, 3);
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    for (int h = 0; h < 6; h++)
        for (int d = 0; d < 3; d++) assert_close(out[h * 3 + d], v[d]);
}

static void test_reference_empty_key_axis_gives_masked_rows(void **state)
{
    (void)state;
    float q[2] = {1, 2}, k[1] = {0}, v[1] = {0};
    clattn_tensor tq = f32(q, 1, 1, 2, 1), tk = f32(k, 1, 1, 0, 1), tv = f32(v, 1, 1, 0, 1);
    double out[2] = {5, 5}, lse[2] = {5, 5};
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    assert_true(out[0] == 0.0 && out[1] == 0.0);
    assert_true(lse[0] == -INFINITY && lse[1] == -INFINITY);
}

static void test_reference_huge_scores_stay_finite(void **state)
{
    (void)state;
    float q[1] = {1e4f}, k[2] = {1e4f, 9e3f}, v[2] = {1, 3};
    clattn_tensor tq = f32(q, 1, 1, 1, 1), tk = f32(k, 1, 1, 2, 1), tv = f32(v, 1, 1, 2, 1);
    double out[1], lse[1];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, lse), CLATTN_SUCCESS);
    assert_close(out[0], 1.0);
    assert_close(lse[0], 1e8);
}

static void test_reference_f16_and_bf16_inputs_are_read_as_stored(void **state)
{
    (void)state;
    uint16_t qh[1] = {clattn__float_to_half(0.0f)}, kh[1] = {clattn__float_to_half(0.0f)};
    uint16_t vh[2] = {clattn__float_to_half(0.1f), clattn__float_to_bf16(0.1f)};
    clattn_tensor tq = clattn_tensor_host(qh, CLATTN_F16, 1, 1, 1, 1);
    clattn_tensor tk = clattn_tensor_host(kh, CLATTN_F16, 1, 1, 1, 1);
    clattn_tensor tv = clattn_tensor_host(vh, CLATTN_F16, 1, 1, 1, 1);
    double out[1];
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, NULL), CLATTN_SUCCESS);
    assert_true(out[0] == (double)clattn__half_to_float(vh[0]));
    assert_true(out[0] != 0.1);
    tv = clattn_tensor_host(&vh[1], CLATTN_BF16, 1, 1, 1, 1);
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, NULL, out, NULL), CLATTN_SUCCESS);
    assert_true(out[0] == (double)clattn__bf16_to_float(vh[1]));
}

/* The same values stored BHLD densely and BLHD with padding and element gaps give
 * bitwise the same reference: layout only changes where elements live. */
static void test_reference_strided_blhd_view_matches_dense_bhld(void **state)
{
    (void)state;
    attn_case c;
    memset(&c, 0, sizeof c);
    c.B = 2, c.Hq = 4, c.Hkv = 2, c.Lq = 5, c.Lk = 7, c.D = 3, c.Dv = 6;
    c.mask_kind = ATTN_MASK_FLOAT, c.mask_rank = 3, c.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    c.seed = 42;
    attn_case s = c;
    s.blhd = 1;
    s.padded = 2;
    attn_case_data *dd, *ds;
    assert_int_equal(attn_case_data_create(&c, &dd), CLATTN_SUCCESS);
    assert_int_equal(attn_case_data_create(&s, &ds), CLATTN_SUCCESS);
    assert_true(ds->buf[ATTN_BUF_Q].t.nb[2] > ds->buf[ATTN_BUF_Q].t.nb[1]); /* really BLHD */
    assert_true(ds->buf[ATTN_BUF_Q].t.offset > 0);
    enum { N = 2 * 4 * 5 * 6, R = 2 * 4 * 5 };
    double a[N], la[R], b[N], lb[R];
    clattn_options opt;
    attn_case_options(&c, dd, &opt);
    assert_int_equal(clattn_reference_attention(&dd->buf[ATTN_BUF_Q].t, &dd->buf[ATTN_BUF_K].t,
                                                &dd->buf[ATTN_BUF_V].t, &opt, a, la),
                     CLATTN_SUCCESS);
    attn_case_options(&s, ds, &opt);
    assert_int_equal(clattn_reference_attention(&ds->buf[ATTN_BUF_Q].t, &ds->buf[ATTN_BUF_K].t,
                                                &ds->buf[ATTN_BUF_V].t, &opt, b, lb),
                     CLATTN_SUCCESS);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(la, lb, sizeof la);
    attn_case_data_free(dd);
    attn_case_data_free(ds);
}

/* ---- argument rejection ------------------------------------------------------------------ */

/* A valid small problem that each rejection test breaks in one way. */
typedef struct small_problem {
    float q[2 * 4 * 3 * 8], k[2 * 2 * 5 * 8], v[2 * 2 * 5 * 8], mask[3 * 5];
    int32_t lens[2];
    float slopes[4];
    clattn_tensor tq, tk, tv, tm, tl, ta;
    clattn_options opt;
    double out[2 * 4 * 3 * 8], lse[2 * 4 * 3];
} small_problem;

static void small_init(small_problem *s)
{
    memset(s, 0, sizeof *s);
    s->tq = f32(s->q, 2, 4, 3, 8);
    s->tk = f32(s->k, 2, 2, 5, 8);
    s->tv = f32(s->v, 2, 2, 5, 8);
    s->tm = f32(s->mask, 1, 1, 3, 5);
    s->lens[0] = 5, s->lens[1] = 0;
    s->tl = clattn_tensor_host(s->lens, CLATTN_I32, 2, 1, 1, 1);
    s->ta = f32(s->slopes, 4, 1, 1, 1);
    clattn_options_init(&s->opt);
}

static clattn_status small_run(small_problem *s)
{
    return clattn_reference_attention(&s->tq, &s->tk, &s->tv, &s->opt, s->out, s->lse);
}

static void test_reference_accepts_the_valid_base_problem(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.opt.mask = &s.tm;
    s.opt.kv_lens = &s.tl;
    s.opt.alibi = &s.ta;
    s.opt.window_left = 0;
    s.opt.window_right = -1;
    s.opt.softcap = 1.0f;
    s.opt.scale = 0.5f;
    assert_int_equal(small_run(&s), CLATTN_SUCCESS);
    /* and problem_init agrees, resolving the default scale */
    clattn__problem p;
    char err[256];
    clattn_options_init(&s.opt);
    assert_int_equal(clattn__problem_init(&p, &s.tq, &s.tk, &s.tv, NULL, &s.opt, err, sizeof err),
                     CLATTN_SUCCESS);
    assert_true(p.scale == (float)(1.0 / sqrt(8.0)));
    assert_int_equal(p.group, 2);
}

static void test_reference_rejects_null_tensors_and_output(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    assert_int_equal(clattn_reference_attention(NULL, &s.tk, &s.tv, NULL, s.out, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_reference_attention(&s.tq, NULL, &s.tv, NULL, s.out, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_reference_attention(&s.tq, &s.tk, NULL, NULL, s.out, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_reference_attention(&s.tq, &s.tk, &s.tv, NULL, NULL, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
}

static void test_reference_rejects_device_tensors(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.tk.host = NULL;
    s.tk.buffer = (cl_mem)(uintptr_t)0x1000; /* never dereferenced: rejected first */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
}

static void test_reference_rejects_head_dims_outside_1_to_256(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.tq.ne[3] = 0, s.tk.ne[3] = 0;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    static float big[257 * 2];
    small_init(&s);
    s.tq = f32(big, 1, 1, 1, 257);
    s.tk = f32(big, 1, 1, 1, 257);
    s.tv = f32(big, 1, 1, 1, 2);
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    small_init(&s);
    s.tv.ne[3] = 0;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
}

static void test_reference_rejects_query_heads_not_multiple_of_kv_heads(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.tq.ne[1] = 3; /* 3 % 2 != 0 */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
}

static void test_reference_rejects_mismatched_shapes(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.tk.ne[0] = 1; /* batch */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    small_init(&s);
    s.tv.ne[2] = 4; /* key count of v */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    small_init(&s);
    s.tk.ne[3] = 7; /* head dim of k */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    small_init(&s);
    s.tv.ne[1] = 1; /* heads of v */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
}

static void test_reference_rejects_mask_that_does_not_broadcast(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.tm = f32(s.mask, 1, 1, 2, 5); /* Lq is 3 */
    s.opt.mask = &s.tm;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    small_init(&s);
    s.tm = f32(s.mask, 1, 3, 1, 5); /* Hq is 4 */
    s.opt.mask = &s.tm;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    small_init(&s);
    s.tm = clattn_tensor_host(s.mask, CLATTN_I32, 1, 1, 3, 5);
    s.opt.mask = &s.tm;
    assert_int_equal(small_run(&s), CLATTN_ERROR_UNSUPPORTED_DTYPE);
}

static void test_reference_rejects_bad_strides_and_offsets(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.tq.nb[2] = -s.tq.nb[2];
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_STRIDE);
    small_init(&s);
    s.tk.nb[3] = 6; /* not a multiple of 4 bytes */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_STRIDE);
    small_init(&s);
    s.tv.offset = 2; /* misaligned for f32 */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_STRIDE);
    small_init(&s);
    s.tq.nb[1] = INT64_MAX - 3; /* 3 steps of it overflow the address space */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_STRIDE);
}

static void test_reference_rejects_bad_scale_and_softcap(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.opt.scale = INFINITY;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    s.opt.scale = -INFINITY;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    small_init(&s);
    s.opt.softcap = -1.0f;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    s.opt.softcap = NAN;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    s.opt.softcap = INFINITY;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
}

static void test_reference_rejects_window_below_minus_one_and_bad_causal(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.opt.window_left = -2;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    small_init(&s);
    s.opt.window_right = -5;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    small_init(&s);
    s.opt.causal = (clattn_causal)3;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
}

static void test_reference_rejects_kv_lens_outside_0_to_lk(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.opt.kv_lens = &s.tl;
    s.lens[1] = 6; /* Lk = 5 */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    s.lens[1] = -1;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_ARGUMENT);
    s.lens[1] = 5;
    s.tl.ne[0] = 1; /* must be [B] */
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
    small_init(&s);
    s.tl.dtype = CLATTN_F32;
    s.opt.kv_lens = &s.tl;
    assert_int_equal(small_run(&s), CLATTN_ERROR_UNSUPPORTED_DTYPE);
}

static void test_reference_rejects_bad_alibi(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.ta.ne[0] = 2; /* Hq = 4 */
    s.opt.alibi = &s.ta;
    assert_int_equal(small_run(&s), CLATTN_ERROR_INVALID_SHAPE);
}

static void test_reference_rejects_bad_dtypes(void **state)
{
    (void)state;
    small_problem s;
    small_init(&s);
    s.tq.dtype = (clattn_dtype)99;
    assert_int_equal(small_run(&s), CLATTN_ERROR_UNSUPPORTED_DTYPE);
    small_init(&s);
    s.tk.dtype = CLATTN_BOOL; /* a mask type, not storage */
    assert_int_equal(small_run(&s), CLATTN_ERROR_UNSUPPORTED_DTYPE);
    small_init(&s);
    s.tv.dtype = CLATTN_I32;
    assert_int_equal(small_run(&s), CLATTN_ERROR_UNSUPPORTED_DTYPE);
}

/* Zero strides make views of any extent valid and tiny; extents whose products overflow
 * 64 bits are refused, never wrapped into a small row count or a small scratch buffer. */
static void test_reference_refuses_extents_whose_products_overflow(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4};
    double out[4] = {0}, lse[1] = {0};
    const int64_t big = (int64_t)1 << 21;
    /* B * Hq * Lq = 2^64 rows, which wraps to 0: "nothing to write" */
    clattn_tensor q = f32(x, 2 * big, big, big, 4), k = f32(x, 2 * big, 1, 1, 4), v = f32(x, 2 * big, 1, 1, 4);
    for (int i = 0; i < 4; i++) q.nb[i] = k.nb[i] = v.nb[i] = 0;
    assert_int_equal(clattn_reference_attention(&q, &k, &v, NULL, out, lse), CLATTN_ERROR_INVALID_SHAPE);
    /* Lk * D = 2^64 key elements, which wraps to a 0-element gather buffer */
    q = f32(x, 1, 1, 1, 4);
    k = f32(x, 1, 1, (int64_t)1 << 62, 4);
    v = f32(x, 1, 1, (int64_t)1 << 62, 4);
    /* one key row repeated: stride 0 along the keys (the dense helper's strides for 2^62
     * rows do not fit int64, so they are set by hand) */
    const int64_t row_nb[4] = {16, 16, 0, 4};
    for (int i = 0; i < 4; i++) k.nb[i] = v.nb[i] = row_nb[i];
    assert_int_equal(clattn_reference_attention(&q, &k, &v, NULL, out, lse), CLATTN_ERROR_INVALID_SHAPE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_single_key_gives_that_value_row),
        cmocka_unit_test(test_reference_equal_scores_average_the_values),
        cmocka_unit_test(test_reference_lse_and_output_of_two_keys_by_hand),
        cmocka_unit_test(test_reference_default_scale_is_inverse_sqrt_d_and_explicit_scale_wins),
        cmocka_unit_test(test_reference_causal_top_left_row_i_sees_keys_0_to_i),
        cmocka_unit_test(test_reference_causal_bottom_right_single_query_sees_all_keys),
        cmocka_unit_test(test_reference_causal_bottom_right_rows_before_first_key_are_fully_masked),
        cmocka_unit_test(test_reference_window_keeps_keys_between_left_and_right_of_aligned_row),
        cmocka_unit_test(test_reference_window_wider_than_the_problem_is_unbounded),
        cmocka_unit_test(test_reference_kv_len_zero_gives_zeros_and_neg_inf_lse),
        cmocka_unit_test(test_reference_fully_masked_row_is_zero_and_lse_neg_inf),
        cmocka_unit_test(test_reference_float_mask_adds_to_scores_and_all_neg_inf_row_is_masked),
        cmocka_unit_test(test_reference_bool_mask_excludes_false_keys),
        cmocka_unit_test(test_reference_mask_broadcasts_like_its_expanded_copy),
        cmocka_unit_test(test_reference_softcap_bounds_scores),
        cmocka_unit_test(test_reference_alibi_penalises_distance_on_equal_keys),
        cmocka_unit_test(test_reference_gqa_query_head_reads_kv_head_h_over_group),
        cmocka_unit_test(test_reference_empty_key_axis_gives_masked_rows),
        cmocka_unit_test(test_reference_huge_scores_stay_finite),
        cmocka_unit_test(test_reference_f16_and_bf16_inputs_are_read_as_stored),
        cmocka_unit_test(test_reference_strided_blhd_view_matches_dense_bhld),
        cmocka_unit_test(test_reference_accepts_the_valid_base_problem),
        cmocka_unit_test(test_reference_rejects_null_tensors_and_output),
        cmocka_unit_test(test_reference_rejects_device_tensors),
        cmocka_unit_test(test_reference_rejects_head_dims_outside_1_to_256),
        cmocka_unit_test(test_reference_rejects_query_heads_not_multiple_of_kv_heads),
        cmocka_unit_test(test_reference_rejects_mismatched_shapes),
        cmocka_unit_test(test_reference_rejects_mask_that_does_not_broadcast),
        cmocka_unit_test(test_reference_rejects_bad_strides_and_offsets),
        cmocka_unit_test(test_reference_rejects_bad_scale_and_softcap),
        cmocka_unit_test(test_reference_rejects_window_below_minus_one_and_bad_causal),
        cmocka_unit_test(test_reference_rejects_kv_lens_outside_0_to_lk),
        cmocka_unit_test(test_reference_rejects_bad_alibi),
        cmocka_unit_test(test_reference_rejects_bad_dtypes),
        cmocka_unit_test(test_reference_refuses_extents_whose_products_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
