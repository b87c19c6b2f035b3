/* clattn_merge_states: attention split into disjoint key ranges, each range run through
 * clattn_attention with its LSE, merged, must equal the attention over all keys (the
 * float64 reference, SPEC §1 tolerances); synthetic parts against the float64 merge
 * reference (f16/bf16 parts, strided outputs, -inf parts and rows); associativity; cl_mem
 * parts merged in place; bad arguments and device faults refused with outputs untouched. */
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
#include "core/faults.h"

static uint64_t rng_state;
static double urand(void) /* uniform in [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float frand(void) { return (float)(2.0 * urand() - 1.0); }

/* |got - want| within atol + rtol*|want|; -inf only where want is -inf. */
static int close_to(double got, double want, double atol, double rtol)
{
    if (isinf(want) || isinf(got)) return got == want;
    return !isnan(got) && fabs(got - want) <= atol + rtol * fabs(want);
}

/* Attention over keys split into P ranges (cut points in cuts[0..P]) with a bool mask
 * that leaves whole parts, and some rows, with no key; merged on the device, compared
 * with the reference over all keys. on_device: parts in cl_mem, merged in place into
 * part 0's buffers. */
static void check_split(clattn_context *ctx, const int64_t *cuts, size_t P, bool on_device)
{
    const int64_t B = 2, Hq = 4, Hkv = 2, Lq = 9, Lk = cuts[P], D = 16, Dv = 16;
    const size_t nq = (size_t)(B * Hq * Lq * D), nk = (size_t)(B * Hkv * Lk * D),
                 no = (size_t)(B * Hq * Lq * Dv), nl = (size_t)(B * Hq * Lq),
                 nm = (size_t)(B * Lq * Lk);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
    unsigned char *m = malloc(nm);
    double *ref = malloc(no * 8), *ref_lse = malloc(nl * 8);
    float *parts_o = malloc(P * no * 4), *parts_l = malloc(P * nl * 4);
    float *out = malloc(no * 4), *out_l = malloc(nl * 4);
    assert_non_null(out_l);
    for (size_t i = 0; i < nq; i++) q[i] = frand();
    for (size_t i = 0; i < nk; i++) k[i] = frand(), v[i] = frand();
    /* row i sees keys j <= 3*i - 4: rows 0 and 1 see none at all, and the early rows see
     * none of the later parts */
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t j = 0; j < Lk; j++) m[(b * Lq + i) * Lk + j] = j <= 3 * i - 4;

    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, B, Hq, Lq, D);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, B, Hkv, Lk, D);
    clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, B, Hkv, Lk, Dv);
    clattn_tensor tm = clattn_tensor_host(m, CLATTN_BOOL, B, 1, Lq, Lk);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.mask = &tm;
    opt.softcap = 3.0f;
    assert_int_equal(clattn_reference_attention(&tq, &tk, &tv, &opt, ref, ref_lse), CLATTN_SUCCESS);

    cl_context clc = clattn_context_cl_context(ctx);
    cl_command_queue queue = clattn_context_cl_queue(ctx);
    clattn_tensor to_parts[4], tl_parts[4];
    cl_mem bufs[8] = {0};
    for (size_t p = 0; p < P; p++) {
        /* the part's keys: views of K, V and the mask starting at key cuts[p] */
        clattn_tensor pk = tk, pv = tv, pm = tm;
        pk.ne[2] = pv.ne[2] = pm.ne[3] = cuts[p + 1] - cuts[p];
        pk.offset += (size_t)(cuts[p] * tk.nb[2]);
        pv.offset += (size_t)(cuts[p] * tv.nb[2]);
        pm.offset += (size_t)(cuts[p] * tm.nb[3]);
        clattn_options po = opt;
        po.mask = &pm;
        if (on_device) {
            cl_int e;
            bufs[2 * p] = clCreateBuffer(clc, CL_MEM_READ_WRITE, no * 4, NULL, &e);
            bufs[2 * p + 1] = clCreateBuffer(clc, CL_MEM_READ_WRITE, nl * 4, NULL, &e);
            to_parts[p] = clattn_tensor_cl(bufs[2 * p], 0, CLATTN_F32, B, Hq, Lq, Dv);
            tl_parts[p] = clattn_tensor_cl(bufs[2 * p + 1], 0, CLATTN_F32, B, Hq, Lq, 1);
        } else {
            to_parts[p] = clattn_tensor_host(parts_o + p * no, CLATTN_F32, B, Hq, Lq, Dv);
            tl_parts[p] = clattn_tensor_host(parts_l + p * nl, CLATTN_F32, B, Hq, Lq, 1);
        }
        po.lse = &tl_parts[p];
        clattn_status st = clattn_attention(ctx, &tq, &pk, &pv, &to_parts[p], &po, NULL);
        if (st) fprintf(stderr, "part %zu: %s\n", p, clattn_context_last_error(ctx));
        assert_int_equal(st, CLATTN_SUCCESS);
    }
    if (on_device) {
        /* in place: the merge reads every part before it writes part 0's buffers */
        clattn_tensor o0 = to_parts[0], l0 = tl_parts[0];
        clattn_status st = clattn_merge_states(ctx, P, to_parts, tl_parts, &o0, &l0, NULL);
        if (st) fprintf(stderr, "merge: %s\n", clattn_context_last_error(ctx));
        assert_int_equal(st, CLATTN_SUCCESS);
        assert_int_equal(clEnqueueReadBuffer(queue, bufs[0], CL_TRUE, 0, no * 4, out, 0, NULL, NULL), CL_SUCCESS);
        assert_int_equal(clEnqueueReadBuffer(queue, bufs[1], CL_TRUE, 0, nl * 4, out_l, 0, NULL, NULL), CL_SUCCESS);
        for (size_t i = 0; i < 2 * P; i++) clReleaseMemObject(bufs[i]);
    } else {
        clattn_tensor to = clattn_tensor_host(out, CLATTN_F32, B, Hq, Lq, Dv);
        clattn_tensor tl = clattn_tensor_host(out_l, CLATTN_F32, B, Hq, Lq, 1);
        clattn_status st = clattn_merge_states(ctx, P, to_parts, tl_parts, &to, &tl, NULL);
        if (st) fprintf(stderr, "merge: %s\n", clattn_context_last_error(ctx));
        assert_int_equal(st, CLATTN_SUCCESS);
    }
    int bad = 0;
    for (size_t i = 0; i < no; i++)
        if (!close_to(out[i], ref[i], 2e-4, 2e-3) && bad++ < 5)
            fprintf(stderr, "O[%zu] = %.7g, reference %.7g\n", i, (double)out[i], ref[i]);
    for (size_t i = 0; i < nl; i++)
        if (!close_to(out_l[i], ref_lse[i], 1e-3, 1e-4) && bad++ < 10)
            fprintf(stderr, "LSE[%zu] = %.7g, reference %.7g\n", i, (double)out_l[i], ref_lse[i]);
    assert_int_equal(bad, 0);
    free(q), free(k), free(v), free(m), free(ref), free(ref_lse);
    free(parts_o), free(parts_l), free(out), free(out_l);
}

static void test_merge_of_key_ranges_equals_full_attention(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    rng_state = 11;
    const int64_t two[] = {0, 21, 40}, three[] = {0, 5, 30, 47}, four[] = {0, 1, 17, 18, 33};
    check_split(ctx, two, 2, false);
    check_split(ctx, three, 3, false);
    check_split(ctx, four, 4, false);
}

static void test_merge_in_place_on_cl_mem(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    rng_state = 12;
    const int64_t three[] = {0, 13, 14, 40};
    check_split(ctx, three, 3, true);
}

/* Synthetic parts: f32, f16 and bf16 storage, LSE with -inf entries (some rows -inf in
 * every part), outputs f16 in BLHD order with a leading offset; against the float64
 * merge reference of the same stored values. */
static void test_merge_matches_reference_with_dtypes_and_inf(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    rng_state = 13;
    enum { P = 3, B = 2, H = 3, L = 5, Dv = 7 };
    const size_t no = B * H * L * Dv, nl = B * H * L;
    const clattn_dtype dts[P] = {CLATTN_F32, CLATTN_F16, CLATTN_BF16};
    float of32[no], lsev[P][nl];
    uint16_t o16[P][no];
    clattn_tensor to[P], tl[P];
    for (int p = 0; p < P; p++) {
        for (size_t i = 0; i < no; i++) {
            const float x = 4.0f * frand();
            if (p == 0) of32[i] = x;
            o16[p][i] = dts[p] == CLATTN_F16 ? clattn__float_to_half(x) : clattn__float_to_bf16(x);
        }
        for (size_t r = 0; r < nl; r++) {
            /* rows 0 and 7: every part -inf; otherwise one part in four -inf; LSEs far
             * apart too, so a merge without the maximum first would overflow */
            const bool dead = r == 0 || r == 7 || urand() < 0.25;
            lsev[p][r] = dead ? -INFINITY : (float)(80.0 * frand());
        }
        const void *data = p == 0 ? (const void *)of32 : (const void *)o16[p];
        to[p] = clattn_tensor_host(data, dts[p], B, H, L, Dv);
        tl[p] = clattn_tensor_host(lsev[p], CLATTN_F32, B, H, L, 1);
    }
    double ref[no], ref_l[nl];
    assert_int_equal(clattn_reference_merge_states(P, to, tl, ref, ref_l), CLATTN_SUCCESS);

    /* O stored f16 as [B, L, H, Dv] after a 3-element offset */
    uint16_t ob[3 + no];
    float lout[nl];
    for (size_t i = 0; i < 3 + no; i++) ob[i] = 0x7e00; /* NaN: every element must be written */
    clattn_tensor o = clattn_tensor_blhd(clattn_tensor_host(ob + 3, CLATTN_F16, B, H, L, Dv));
    clattn_tensor lse = clattn_tensor_host(lout, CLATTN_F32, B, H, L, 1);
    clattn_status st = clattn_merge_states(ctx, P, to, tl, &o, &lse, NULL);
    if (st) fprintf(stderr, "%s\n", clattn_context_last_error(ctx));
    assert_int_equal(st, CLATTN_SUCCESS);
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < L; i++) {
                const size_t r = (size_t)((b * H + h) * L + i);
                if (!close_to(lout[r], ref_l[r], 1e-3, 1e-4) && bad++ < 5)
                    fprintf(stderr, "LSE[%zu] = %g, reference %g\n", r, (double)lout[r], ref_l[r]);
                if (r == 0 || r == 7) {
                    assert_true(isinf(lout[r]) && lout[r] < 0);
                }
                for (int d = 0; d < Dv; d++) {
                    const double got = clattn__half_to_float(ob[3 + ((b * L + i) * H + h) * Dv + d]);
                    if (r == 0 || r == 7) assert_true(got == 0.0);
                    if (!close_to(got, ref[r * Dv + d], 3e-3, 3e-3) && bad++ < 10)
                        fprintf(stderr, "O[%zu,%d] = %g, reference %g\n", r, d, got, ref[r * Dv + d]);
                }
            }
    assert_int_equal(bad, 0);
    assert_int_equal(ob[0], 0x7e00); /* the bytes before the view stay */

    /* associative: ((p0, p1), p2) equals (p0, p1, p2) */
    float m01[no], l01[nl], m012[no], l012[nl];
    clattn_tensor t01 = clattn_tensor_host(m01, CLATTN_F32, B, H, L, Dv);
    clattn_tensor u01 = clattn_tensor_host(l01, CLATTN_F32, B, H, L, 1);
    assert_int_equal(clattn_merge_states(ctx, 2, to, tl, &t01, &u01, NULL), CLATTN_SUCCESS);
    clattn_tensor po[2] = {to[2], t01}, pl[2] = {tl[2], u01};
    clattn_tensor t012 = clattn_tensor_host(m012, CLATTN_F32, B, H, L, Dv);
    clattn_tensor u012 = clattn_tensor_host(l012, CLATTN_F32, B, H, L, 1);
    assert_int_equal(clattn_merge_states(ctx, 2, po, pl, &t012, &u012, NULL), CLATTN_SUCCESS);
    for (size_t r = 0; r < nl; r++) {
        assert_true(close_to(l012[r], ref_l[r], 1e-3, 1e-4));
        for (int d = 0; d < Dv; d++) assert_true(close_to(m012[r * Dv + d], ref[r * Dv + d], 2e-4, 2e-3));
    }
}

static void test_merge_refuses_bad_arguments(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    enum { B = 1, H = 2, L = 3, Dv = 4 };
    float a[B * H * L * Dv] = {0}, la[B * H * L] = {0}, o[B * H * L * Dv], lo[B * H * L + 8];
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) o[i] = 42.0f;
    for (size_t i = 0; i < sizeof lo / sizeof lo[0]; i++) lo[i] = 42.0f;
    clattn_tensor tp[2] = {clattn_tensor_host(a, CLATTN_F32, B, H, L, Dv),
                           clattn_tensor_host(a, CLATTN_F32, B, H, L, Dv)};
    clattn_tensor tl[2] = {clattn_tensor_host(la, CLATTN_F32, B, H, L, 1),
                           clattn_tensor_host(la, CLATTN_F32, B, H, L, 1)};
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, H, L, Dv);
    clattn_tensor tlo = clattn_tensor_host(lo, CLATTN_F32, B, H, L, 1);
    struct {
        const char *what;
        clattn_status want;
    } cases[] = {{"n_parts is 0", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"differs from o", CLATTN_ERROR_INVALID_SHAPE},
                 {"lse_parts[1]: dtype", CLATTN_ERROR_UNSUPPORTED_DTYPE},
                 {"lse_parts[0]: shape", CLATTN_ERROR_INVALID_SHAPE},
                 {"o and lse overlap", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"o: dtype", CLATTN_ERROR_UNSUPPORTED_DTYPE},
                 {"o is NULL", CLATTN_ERROR_INVALID_ARGUMENT},
                 {"o: strides make elements overlap", CLATTN_ERROR_INVALID_STRIDE},
                 {"exactly one of host and buffer", CLATTN_ERROR_INVALID_ARGUMENT}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        clattn_tensor p2[2] = {tp[0], tp[1]}, l2[2] = {tl[0], tl[1]}, oo = to, ll = tlo;
        size_t n = 2;
        clattn_tensor *op = &oo;
        switch (c) {
        case 0: n = 0; break;
        case 1: p2[1].ne[2] = 2; break;
        case 2: l2[1].dtype = CLATTN_F16, l2[1].nb[0] /= 2, l2[1].nb[1] /= 2, l2[1].nb[2] /= 2; break;
        case 3: l2[0].ne[3] = 2; break;
        case 4: ll = clattn_tensor_host(o + 4, CLATTN_F32, B, H, L, 1); break;
        case 5: oo.dtype = CLATTN_I32; break;
        case 6: op = NULL; break;
        case 7: oo.nb[2] = 0; break;
        case 8: p2[0].host = NULL; break;
        }
        clattn_status st = clattn_merge_states(ctx, n, p2, l2, op, &ll, NULL);
        const char *msg = clattn_context_last_error(ctx);
        if (st != cases[c].want || !strstr(msg, cases[c].what))
            fprintf(stderr, "case %zu: status %s, message '%s', expected '%s'\n", c,
                    clattn_status_string(st), msg, cases[c].what);
        assert_int_equal(st, cases[c].want);
        assert_non_null(strstr(msg, cases[c].what));
    }
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) assert_true(o[i] == 42.0f);
    for (size_t i = 0; i < sizeof lo / sizeof lo[0]; i++) assert_true(lo[i] == 42.0f);
}

/* A device failure at any allocation, enqueue or read-back of the call leaves host and
 * cl_mem outputs as they were. */
static void test_merge_faults_leave_outputs_untouched(void **state)
{
    (void)state;
    clattn_context *ctx = test_shared_context();
    enum { B = 1, H = 2, L = 3, Dv = 4, NO = B * H * L * Dv, NL = B * H * L };
    float a[NO], b[NO], la[NL], lb[NL];
    rng_state = 14;
    for (int i = 0; i < NO; i++) a[i] = frand(), b[i] = frand();
    for (int i = 0; i < NL; i++) la[i] = frand(), lb[i] = frand();
    clattn_tensor tp[2] = {clattn_tensor_host(a, CLATTN_F32, B, H, L, Dv),
                           clattn_tensor_host(b, CLATTN_F32, B, H, L, Dv)};
    clattn_tensor tl[2] = {clattn_tensor_host(la, CLATTN_F32, B, H, L, 1),
                           clattn_tensor_host(lb, CLATTN_F32, B, H, L, 1)};
    cl_context clc = clattn_context_cl_context(ctx);
    cl_command_queue queue = clattn_context_cl_queue(ctx);
    for (int on_device = 0; on_device <= 1; on_device++)
        for (int kind = CLATTN__FAULT_ALLOC; kind <= CLATTN__FAULT_MAP; kind++)
            for (uint64_t nth = 1; nth <= 8; nth++) {
                float o[NO], lo[NL];
                for (int i = 0; i < NO; i++) o[i] = 42.0f;
                for (int i = 0; i < NL; i++) lo[i] = 42.0f;
                cl_mem mo = NULL, ml = NULL;
                clattn_tensor to, tlo;
                if (on_device) {
                    cl_int e;
                    mo = clCreateBuffer(clc, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof o, o, &e);
                    ml = clCreateBuffer(clc, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof lo, lo, &e);
                    to = clattn_tensor_cl(mo, 0, CLATTN_F32, B, H, L, Dv);
                    tlo = clattn_tensor_cl(ml, 0, CLATTN_F32, B, H, L, 1);
                } else {
                    to = clattn_tensor_host(o, CLATTN_F32, B, H, L, Dv);
                    tlo = clattn_tensor_host(lo, CLATTN_F32, B, H, L, 1);
                }
                clattn__fault_arm(ctx, (clattn__fault_kind)kind, nth);
                clattn_status st = clattn_merge_states(ctx, 2, tp, tl, &to, &tlo, NULL);
                const bool fired = clattn__fault_fired(ctx) > 0;
                clattn__fault_arm(ctx, (clattn__fault_kind)kind, 0);
                if (on_device) {
                    clFinish(queue);
                    clEnqueueReadBuffer(queue, mo, CL_TRUE, 0, sizeof o, o, 0, NULL, NULL);
                    clEnqueueReadBuffer(queue, ml, CL_TRUE, 0, sizeof lo, lo, 0, NULL, NULL);
                    clReleaseMemObject(mo);
                    clReleaseMemObject(ml);
                }
                if (fired) {
                    assert_int_not_equal(st, CLATTN_SUCCESS);
                    for (int i = 0; i < NO; i++) assert_true(o[i] == 42.0f);
                    for (int i = 0; i < NL; i++) assert_true(lo[i] == 42.0f);
                } else {
                    assert_int_equal(st, CLATTN_SUCCESS);
                    assert_true(o[0] != 42.0f);
                }
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_of_key_ranges_equals_full_attention),
        cmocka_unit_test(test_merge_in_place_on_cl_mem),
        cmocka_unit_test(test_merge_matches_reference_with_dtypes_and_inf),
        cmocka_unit_test(test_merge_refuses_bad_arguments),
        cmocka_unit_test(test_merge_faults_leave_outputs_untouched),
    };
    return cmocka_run_group_tests(tests, NULL, test_shared_context_teardown);
}
