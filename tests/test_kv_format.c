/* The KV-cache formats on the CPU (src/kv/format.c), no device needed: the codebooks are
 * the Lloyd-Max fixed points they claim to be, the TQ rotation is orthogonal for every
 * head size, the TQ distortion targets of issue 5 hold on unit vectors, and the INT8 and
 * INT4 reference quantizers keep every value within half a step. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clattn.h"
#include "kv/format.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform01(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static double gauss(void) { return sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01()); }

static double phi(double x) { return exp(-0.5 * x * x) / 2.5066282746310002; }
static double Phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

/* One step of Lloyd's algorithm on the normal density moves no entry of the tables by
 * more than their printed precision, and the thresholds are the rounded midpoints. */
static void test_codebooks_are_lloyd_max_fixed_points_of_the_normal_density(void **state)
{
    (void)state;
    for (int bits = 2; bits <= 4; bits++) {
        const int n = 1 << bits;
        const float *cb = clattn__kv_codebook(bits), *thr = clattn__kv_thresholds(bits);
        double t[17];
        t[0] = -INFINITY;
        t[n] = INFINITY;
        for (int k = 1; k < n; k++) t[k] = 0.5 * ((double)cb[k - 1] + (double)cb[k]);
        for (int k = 0; k < n; k++) {
            const double centroid = (phi(t[k]) - phi(t[k + 1])) / (Phi(t[k + 1]) - Phi(t[k]));
            if (fabs(centroid - cb[k]) > 3e-7) /* the tables are floats: 2^-22 at |x| ~ 2 */
                fail_msg("%d bits: entry %d = %.9f but the centroid of its cell is %.9f", bits, k,
                         (double)cb[k], centroid);
            if (k + 1 < n) assert_true(thr[k] == (float)t[k + 1]);
        }
    }
}

/* R preserves norms and inner products (R^T R = I) and the inverse undoes it, for every
 * head size 1..256 (one round for powers of two, two otherwise). */
static void test_tq_rotation_is_orthogonal_for_every_head_size(void **state)
{
    (void)state;
    float x[256], y[256], e[256];
    for (int n = 1; n <= 256; n++) {
        clattn__kv_rot r;
        clattn__kv_rot_init(&r, n);
        double nx = 0, ny = 0, err = 0;
        for (int i = 0; i < n; i++) {
            x[i] = (float)gauss();
            nx += (double)x[i] * x[i];
        }
        memcpy(y, x, sizeof x);
        clattn__kv_rot_forward(&r, y);
        for (int i = 0; i < n; i++) ny += (double)y[i] * y[i];
        clattn__kv_rot_inverse(&r, y);
        for (int i = 0; i < n; i++) err = fmax(err, fabs(y[i] - x[i]));
        if (fabs(ny - nx) > 1e-5 * nx || err > 1e-5)
            fail_msg("n = %d: |Rx|^2 = %.8f vs |x|^2 = %.8f, max |R^T R x - x| = %g", n, ny, nx, err);
    }
    /* columns are orthonormal: <R e_i, R e_j> = delta_ij, for sizes of each kind */
    const int sizes[] = {72, 80, 96, 100, 128};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const int n = sizes[s];
        clattn__kv_rot r;
        clattn__kv_rot_init(&r, n);
        static float col[256][256];
        for (int i = 0; i < n; i++) {
            memset(e, 0, sizeof e);
            e[i] = 1.0f;
            clattn__kv_rot_forward(&r, e);
            memcpy(col[i], e, sizeof e);
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double dot = 0;
                for (int k = 0; k < n; k++) dot += (double)col[i][k] * col[j][k];
                if (fabs(dot - (i == j)) > 1e-5) fail_msg("n = %d: <R e%d, R e%d> = %g", n, i, j, dot);
            }
        /* and every coordinate of a rotated basis vector is spread: no column keeps more
         * than half its energy in one coordinate (the second round mixes the blocks) */
        for (int i = 0; i < n; i++)
            for (int k = 0; k < n; k++)
                if ((double)col[i][k] * col[i][k] > 0.5) fail_msg("n = %d: R e%d is not spread", n, i);
    }
}

/* Issue 5's targets, mean |x - x^|^2 over random unit vectors at D = 128: tq2 <= 0.118,
 * tq3 <= 0.035, tq4 <= 0.0095 (Lloyd-Max for N(0,1): 0.1175, 0.0345, 0.0095). */
static void test_tq_distortion_of_unit_vectors_meets_the_targets(void **state)
{
    (void)state;
    const int D = 128, N = 20000;
    const clattn_kv_format fmts[3] = {CLATTN_KV_TQ2, CLATTN_KV_TQ3, CLATTN_KV_TQ4};
    const double target[3] = {0.118, 0.035, 0.0095};
    float *x = malloc(sizeof(float) * (size_t)(N * D)), *xh = malloc(sizeof(float) * (size_t)(N * D));
    assert_non_null(x);
    assert_non_null(xh);
    for (int v = 0; v < N; v++) {
        double nn = 0;
        for (int i = 0; i < D; i++) {
            x[v * D + i] = (float)gauss();
            nn += (double)x[v * D + i] * x[v * D + i];
        }
        for (int i = 0; i < D; i++) x[v * D + i] = (float)(x[v * D + i] / sqrt(nn));
    }
    for (int f = 0; f < 3; f++) {
        uint64_t bytes = 0;
        assert_int_equal(clattn_kv_quantize_host(fmts[f], CLATTN_KV_KEYS, x, (size_t)N, D, xh, &bytes),
                         CLATTN_SUCCESS);
        double mse = 0;
        for (int k = 0; k < N * D; k++) mse += ((double)x[k] - xh[k]) * ((double)x[k] - xh[k]);
        mse /= N;
        const double bits = 8.0 * (double)bytes / ((double)N * D);
        printf("  %s: mean |x - x^|^2 = %.5f (target %.4f), %.3f bits/element\n",
               clattn_kv_format_name(fmts[f]), mse, target[f], bits);
        assert_true(mse <= target[f]);
        assert_true(fabs(bits - clattn_kv_format_nominal_bits(fmts[f])) <= 0.25);
    }
    free(x);
    free(xh);
}

/* INT8: |x - x^| <= d/2 per block (d = max|x|/127 as a half), and zero stays zero. INT4
 * (values per vector, keys per channel over 32 tokens): within d/2 of each block's
 * range, where d = (max - min)/15. */
static void test_int8_and_int4_reference_errors_stay_within_half_a_step(void **state)
{
    (void)state;
    const int D = 80, N = 70; /* a partial block along D and a partial key group */
    float x[70 * 80], xh[70 * 80];
    for (int k = 0; k < N * D; k++) x[k] = (float)(gauss() * (1 + (k % 7)));
    for (int i = 0; i < D; i++) x[3 * D + i] = 0.0f; /* an all-zero vector */

    assert_int_equal(clattn_kv_quantize_host(CLATTN_KV_INT8, CLATTN_KV_VALUES, x, N, D, xh, NULL), CLATTN_SUCCESS);
    for (int v = 0; v < N; v++)
        for (int b0 = 0; b0 < D; b0 += 32) {
            float amax = 0;
            for (int e = b0; e < b0 + 32 && e < D; e++) amax = fmaxf(amax, fabsf(x[v * D + e]));
            const float d = amax / 127.0f;
            for (int e = b0; e < b0 + 32 && e < D; e++)
                if (fabsf(x[v * D + e] - xh[v * D + e]) > 0.5f * d * 1.002f + 1e-30f)
                    fail_msg("int8 vector %d element %d: %g -> %g (d %g)", v, e, x[v * D + e], xh[v * D + e], d);
        }
    for (int i = 0; i < D; i++) assert_true(xh[3 * D + i] == 0.0f);

    for (int role = 0; role < 2; role++) {
        assert_int_equal(clattn_kv_quantize_host(CLATTN_KV_INT4, (clattn_kv_role)role, x, N, D, xh, NULL),
                         CLATTN_SUCCESS);
        double worst = 0;
        /* the block of element (v, i): values over 32 channels, or keys over 32 tokens */
        for (int v = 0; v < N; v++)
            for (int i = 0; i < D; i++) {
                float mn = INFINITY, mx = -INFINITY;
                if (role == CLATTN_KV_VALUES)
                    for (int e = i / 32 * 32; e < i / 32 * 32 + 32 && e < D; e++) {
                        mn = fminf(mn, x[v * D + e]);
                        mx = fmaxf(mx, x[v * D + e]);
                    }
                else
                    for (int t = v / 32 * 32; t < v / 32 * 32 + 32 && t < N; t++) {
                        mn = fminf(mn, x[t * D + i]);
                        mx = fmaxf(mx, x[t * D + i]);
                    }
                const double step = (mx - mn) / 15.0;
                const double err = fabs((double)x[v * D + i] - xh[v * D + i]);
                /* half a step, plus the half rounding of the minimum and of the keys */
                const double allowed = 0.5 * step * 1.01 + 1e-3 * fmax(fabs(mn), fabs(mx)) + 1e-30;
                if (err > allowed)
                    fail_msg("int4 %s (%d, %d): %g -> %g, step %g", role ? "values" : "keys", v, i,
                             x[v * D + i], xh[v * D + i], step);
                worst = fmax(worst, err / (step > 0 ? step : 1));
            }
        printf("  int4 %s: worst error %.3f steps\n", role ? "values" : "keys", worst);
    }
}

/* The packed sizes add up to the traits: bytes per vector and nominal bits. */
static void test_packed_sizes_follow_the_traits_table(void **state)
{
    (void)state;
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_F32, 128), 512);
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_F16, 128), 256);
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_INT8, 128), 4 * 34);
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_INT4, 128), 4 * 20);
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_TQ4, 128), 2 + 8 * 8);
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_TQ3, 128), 2 + 8 * 6);
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_TQ2, 128), 2 + 8 * 4);
    assert_int_equal(clattn__kv_row_bytes(CLATTN_KV_TQ3, 72), 2 + 5 * 6);
    for (int f = 0; f < CLATTN_KV_FORMAT_COUNT_; f++) {
        const clattn__kv_traits *t = clattn__kv_traits_of((clattn_kv_format)f);
        assert_non_null(t);
        const double bits = 8.0 * t->block_bytes / t->block;
        assert_true(fabs(bits - t->nominal_bits) < 1e-9);
        clattn_kv_format back;
        assert_int_equal(clattn_kv_format_from_name(t->name, &back), CLATTN_SUCCESS);
        assert_int_equal(back, f);
    }
    clattn_kv_format f;
    assert_int_equal(clattn_kv_format_from_name("q8_0", &f), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_null(clattn_kv_format_name((clattn_kv_format)99));
    float x[4] = {0}, y[4];
    assert_int_equal(clattn_kv_quantize_host((clattn_kv_format)99, CLATTN_KV_KEYS, x, 1, 4, y, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_kv_quantize_host(CLATTN_KV_TQ4, CLATTN_KV_KEYS, x, 1, 257, y, NULL),
                     CLATTN_ERROR_INVALID_SHAPE);
    assert_int_equal(clattn_kv_quantize_host(CLATTN_KV_TQ4, CLATTN_KV_KEYS, NULL, 1, 4, y, NULL),
                     CLATTN_ERROR_INVALID_ARGUMENT);
}

/* Zero and huge vectors: no NaN, no infinity; a zero vector comes back as zero. */
static void test_tq_handles_zero_and_huge_vectors(void **state)
{
    (void)state;
    float x[2 * 96], y[2 * 96];
    for (int i = 0; i < 96; i++) {
        x[i] = 0.0f;
        x[96 + i] = 1e30f * (i % 2 ? 1 : -1);
    }
    for (int f = CLATTN_KV_TQ4; f <= CLATTN_KV_TQ2; f++) {
        assert_int_equal(clattn_kv_quantize_host((clattn_kv_format)f, CLATTN_KV_KEYS, x, 2, 96, y, NULL),
                         CLATTN_SUCCESS);
        for (int i = 0; i < 96; i++) {
            assert_true(y[i] == 0.0f);
            assert_true(isfinite(y[96 + i]));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codebooks_are_lloyd_max_fixed_points_of_the_normal_density),
        cmocka_unit_test(test_tq_rotation_is_orthogonal_for_every_head_size),
        cmocka_unit_test(test_tq_distortion_of_unit_vectors_meets_the_targets),
        cmocka_unit_test(test_int8_and_int4_reference_errors_stay_within_half_a_step),
        cmocka_unit_test(test_packed_sizes_follow_the_traits_table),
        cmocka_unit_test(test_tq_handles_zero_and_huge_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
