/* The KV cache on the default device: the device quantizers against the CPU reference
 * (packed bytes), attention over every format against the float64 reference computed on
 * the DEQUANTIZED cache (so only the kernel's own error counts, SPEC float32 tolerance)
 * across SPEC §1 options, capacity overflow refused with nothing lost, reset, the f16
 * format, bits per element, and argument checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv/cache.h"
#include "kv/format.h"
#include "test_util.h"
#include "tuning/tuning.h" /* clattn__tuning_force_form */
#include "core/faults.h"

static clattn_context *ctx;

static clattn_context *get_ctx(void)
{
    if (!ctx) ctx = test_context(); /* fails the test when there is no device */
    return ctx;
}

static int teardown(void **state)
{
    (void)state;
    clattn_context_free(ctx);
    ctx = NULL;
    return 0;
}

/* Set by the fallback test: run_case makes the GPU form the tuned one (a candidate row,
 * not forced, so the form-by-form fallback is live) and fails the attention's first
 * kernel build; build_fault_fired says whether the fault fired. */
static bool fail_gpu_build;
static bool build_fault_fired;

static uint64_t rng_state;
static double uniform01(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static float gauss(void) { return (float)(sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01())); }

/* Keys with a few large channels and a channel offset, as real keys have (the case INT4's
 * per-channel grouping is for); values plain normal. */
static void fill(float *x, size_t n, int dim, int keys)
{
    for (size_t k = 0; k < n; k++) {
        const int i = (int)(k % (size_t)dim);
        x[k] = keys ? gauss() * (i % 17 == 3 ? 6.0f : 1.0f) + (i % 17 == 3 ? 2.0f : 0.0f) : gauss();
    }
}

/* ---- Dequantizing what the device stored ------------------------------------------ */

/* The cache's K or V as floats [B, H, L, dim] (zeros past each entry's length), from the
 * bytes the device wrote, with the CPU reference's dequantizers. */
static float *dequantize_cache(clattn_kv_cache *c, int which, clattn_kv_format f, int64_t B, int64_t H,
                               int64_t L, int dim, const int32_t *len)
{
    const size_t slab = clattn__kv_cache_slab_bytes(c, which), row = clattn__kv_cache_row_bytes(c, which);
    uint8_t *bytes = malloc(slab * (size_t)(B * H));
    float *out = calloc((size_t)(B * H * L * dim) + 1, sizeof(float));
    assert_non_null(bytes);
    assert_non_null(out);
    assert_int_equal(clattn__kv_cache_download(c, which, bytes, slab * (size_t)(B * H)), CLATTN_SUCCESS);
    const clattn__kv_traits *t = clattn__kv_traits_of(f);
    clattn__kv_rot rot;
    clattn__kv_rot_init(&rot, dim);
    uint8_t rowbuf[2 + 4 * 256];
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t n = len[bh / H];
        float *o = out + bh * L * dim;
        const uint8_t *s = bytes + (size_t)bh * slab;
        if (f == CLATTN_KV_INT4 && which == CLATTN__KV_KEYS) {
            for (int64_t g = 0; g * 32 < n; g++)
                clattn__kv_dequantize_int4_keys(dim, (int)(n - g * 32 < 32 ? n - g * 32 : 32), s + (size_t)g * row,
                                                o + g * 32 * dim);
        } else if (which == CLATTN__KV_KEYS && clattn__kv_keys_tiled(f)) {
            for (int64_t j = 0; j < n; j++) {
                clattn__kv_tile_get(f, dim, s + (size_t)(j / 16) * row, (int)(j % 16), rowbuf);
                t->to_float(&rot, dim, rowbuf, o + j * dim);
            }
        } else if (which == CLATTN__KV_KEYS) {
            for (int64_t j = 0; j < n; j++) t->to_float(&rot, dim, s + (size_t)j * row, o + j * dim);
        } else {
            for (int64_t j = 0; j < n; j++) {
                clattn__kv_vtile_get(f, dim, s + (size_t)(j / 16) * row, (int)(j % 16), rowbuf);
                t->to_float(&rot, dim, rowbuf, o + j * dim);
            }
        }
    }
    free(bytes);
    return out;
}

/* ---- Device quantizers against the CPU reference -------------------------------- */

/* Append x in pieces, then compare the stored bytes with the reference quantizer's. On a
 * CPU device (correctly rounded division and sqrt) they must be identical. Elsewhere a
 * tie may round the other way: at most 1% of vectors may differ. */
static void check_quantizer(clattn_kv_format f, int D, int B, int H, int n, const int *pieces, int npieces)
{
    clattn_context *cx = get_ctx();
    clattn_device_props props;
    clattn_context_device_props(cx, &props);
    clattn_kv_cache *c;
    assert_int_equal(clattn_kv_cache_create(cx, B, H, n + 5, D, D, f, f, &c), CLATTN_SUCCESS);
    float *k = malloc(sizeof(float) * (size_t)(B * H * n * D)), *v = malloc(sizeof(float) * (size_t)(B * H * n * D));
    assert_non_null(k);
    assert_non_null(v);
    fill(k, (size_t)(B * H * n * D), D, 1);
    fill(v, (size_t)(B * H * n * D), D, 0);
    /* appends of the given sizes, viewing rows [t0, t0 + m) of the full arrays */
    int t0 = 0;
    for (int p = 0; p < npieces && t0 < n; p++) {
        const int m = pieces[p] < n - t0 ? pieces[p] : n - t0;
        clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, B, H, m, D);
        clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, B, H, m, D);
        tk.nb[1] = tv.nb[1] = (int64_t)n * D * 4;
        tk.nb[0] = tv.nb[0] = tk.nb[1] * H;
        tk.offset = tv.offset = (size_t)t0 * D * 4;
        clattn_status st = clattn_kv_cache_append(c, &tk, &tv, NULL);
        if (st != CLATTN_SUCCESS) fail_msg("append: %s: %s", clattn_status_string(st), clattn_context_last_error(cx));
        t0 += m;
    }
    assert_int_equal(t0, n);
    clFinish(clattn_context_cl_queue(cx));

    for (int which = 0; which < 2; which++) {
        const float *x = which ? v : k;
        const size_t slab = clattn__kv_cache_slab_bytes(c, which), row = clattn__kv_cache_row_bytes(c, which);
        uint8_t *dev = malloc(slab * (size_t)(B * H)), *ref = calloc(slab + 2 + 4 * 256, 1);
        assert_non_null(dev);
        assert_non_null(ref);
        assert_int_equal(clattn__kv_cache_download(c, which, dev, slab * (size_t)(B * H)), CLATTN_SUCCESS);
        const clattn__kv_traits *t = clattn__kv_traits_of(f);
        clattn__kv_rot rot;
        clattn__kv_rot_init(&rot, D);
        size_t vectors = 0, differ = 0;
        uint8_t got[2 + 4 * 256];
        for (int bh = 0; bh < B * H; bh++) {
            const float *xs = x + (size_t)bh * n * D;
            const uint8_t *ds = dev + (size_t)bh * slab;
            if (f == CLATTN_KV_INT4 && which == 0) {
                for (int g = 0; g * 32 < n; g++) {
                    const int ntok = n - g * 32 < 32 ? n - g * 32 : 32;
                    clattn__kv_quantize_int4_keys(D, ntok, xs + (size_t)g * 32 * D, ref);
                    vectors++;
                    differ += memcmp(ref, ds + (size_t)g * row, row) != 0;
                }
                continue;
            }
            const size_t rb = clattn__kv_row_bytes(f, D);
            for (int j = 0; j < n; j++) {
                memset(ref, 0, rb);
                t->from_float(&rot, D, xs + (size_t)j * D, ref);
                if (which == 0 && clattn__kv_keys_tiled(f))
                    clattn__kv_tile_get(f, D, ds + (size_t)(j / 16) * row, j % 16, got);
                else if (which == 1)
                    clattn__kv_vtile_get(f, D, ds + (size_t)(j / 16) * row, j % 16, got);
                else
                    memcpy(got, ds + (size_t)j * row, rb);
                vectors++;
                if (memcmp(ref, got, rb) != 0) {
                    if (differ == 0)
                        print_error("%s %s D=%d (b*H+h=%d, t=%d): first differing vector\n", t->name,
                                    which ? "values" : "keys", D, bh, j);
                    differ++;
                }
            }
        }
        if (props.type == CLATTN_DEVICE_CPU ? differ != 0 : differ * 100 > vectors)
            fail_msg("%s %s D=%d: %zu of %zu stored vectors differ from the CPU reference", t->name,
                     which ? "values" : "keys", D, differ, vectors);
        free(dev);
        free(ref);
    }
    free(k);
    free(v);
    clattn_kv_cache_free(c);
}

static void test_device_quantizers_match_the_cpu_reference_bit_for_bit(void **state)
{
    (void)state;
    rng_state = 0x1234567;
    /* appends of 1, 7, 40, ... rows: INT4 key groups are completed across appends */
    const int pieces[] = {1, 7, 40, 3, 64, 1, 200};
    /* every format at a power of two and at 72 (a partial block of 32, a partial TQ
     * granule, the two-round rotation); the other rotation shapes on tq4 */
    for (int f = 0; f < CLATTN_KV_FORMAT_COUNT_; f++) {
        check_quantizer((clattn_kv_format)f, 128, 2, 2, 77, pieces, 7);
        check_quantizer((clattn_kv_format)f, 72, 2, 2, 77, pieces, 7);
    }
    check_quantizer(CLATTN_KV_TQ4, 80, 1, 2, 50, pieces, 7);
    check_quantizer(CLATTN_KV_TQ3, 256, 1, 2, 50, pieces, 7);
    check_quantizer(CLATTN_KV_TQ2, 40, 1, 2, 50, pieces, 7);
    /* INT4 keys: groups completed one token at a time, and one long append */
    const int one[40] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                         1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    check_quantizer(CLATTN_KV_INT4, 128, 1, 3, 35, one, 35);
    const int all[] = {300};
    check_quantizer(CLATTN_KV_INT4, 72, 1, 2, 300, all, 1);
}

/* ---- Attention against the reference on the dequantized cache ------------------ */

typedef struct kv_case {
    const char *name;
    int B, Hq, Hkv, Lq, D, Dv;
    int lens[3];              /* per-batch cache lengths (<= 3 entries) */
    clattn_causal causal;     /* used when opts is set; else the NULL-options default */
    int opts;                 /* 1: pass options (with the fields below) */
    int mask;                 /* 0 none, 1 bool [B,Hq,Lq,Lmax], 2 float [Lq,Lmax] */
    int64_t win_left, win_right;
    float softcap;
    int alibi, lse;
    clattn_dtype qdt;         /* storage of q and o */
} kv_case;

/* max |o - ref| / (2e-4 + 2e-3 |ref|) (SPEC f32) for one format pair and case. */
static double run_case(const kv_case *kc, clattn_kv_format kf, clattn_kv_format vf, char *why, size_t whylen)
{
    clattn_context *cx = get_ctx();
    const int B = kc->B, Hq = kc->Hq, Hkv = kc->Hkv, Lq = kc->Lq, D = kc->D, Dv = kc->Dv;
    int32_t len[3];
    int Lmax = 0;
    for (int b = 0; b < B; b++) {
        len[b] = kc->lens[b];
        Lmax = len[b] > Lmax ? len[b] : Lmax;
    }
    const int cap = Lmax + 3;
    clattn_kv_cache *c;
    clattn_status st = clattn_kv_cache_create(cx, B, Hkv, cap, D, Dv, kf, vf, &c);
    if (st != CLATTN_SUCCESS) {
        snprintf(why, whylen, "create: %s", clattn_context_last_error(cx));
        return INFINITY;
    }
    /* two appends with per-batch counts: the first half, then the rest */
    float *k = malloc(sizeof(float) * (size_t)(B * Hkv * (Lmax + 1) * D));
    float *v = malloc(sizeof(float) * (size_t)(B * Hkv * (Lmax + 1) * Dv));
    fill(k, (size_t)(B * Hkv * (Lmax + 1) * D), D, 1);
    fill(v, (size_t)(B * Hkv * (Lmax + 1) * Dv), Dv, 0);
    int32_t first[3], second[3];
    int n1 = 0;
    for (int b = 0; b < B; b++) {
        first[b] = len[b] / 2;
        second[b] = len[b] - first[b];
        n1 = first[b] > n1 ? first[b] : n1;
    }
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, B, Hkv, n1, D), tv = clattn_tensor_host(v, CLATTN_F32, B, Hkv, n1, Dv);
    st = clattn_kv_cache_append(c, &tk, &tv, first);
    int n2 = 0;
    for (int b = 0; b < B; b++) n2 = second[b] > n2 ? second[b] : n2;
    tk = clattn_tensor_host(k, CLATTN_F32, B, Hkv, n2, D);
    tv = clattn_tensor_host(v, CLATTN_F32, B, Hkv, n2, Dv);
    if (st == CLATTN_SUCCESS) st = clattn_kv_cache_append(c, &tk, &tv, second);
    if (st != CLATTN_SUCCESS) {
        snprintf(why, whylen, "append: %s", clattn_context_last_error(cx));
        clattn_kv_cache_free(c);
        free(k);
        free(v);
        return INFINITY;
    }

    /* queries, outputs and options */
    const size_t nq = (size_t)(B * Hq * Lq * D), no = (size_t)(B * Hq * Lq * Dv);
    float *q = malloc(sizeof(float) * nq), *o = malloc(sizeof(float) * no), *lse = malloc(sizeof(float) * (size_t)(B * Hq * Lq));
    uint16_t *qh = malloc(2 * nq), *oh = malloc(2 * no);
    fill(q, nq, D, 0);
    for (size_t i = 0; i < nq; i++) {
        qh[i] = clattn__float_to_half(q[i]);
        if (kc->qdt == CLATTN_F16) q[i] = clattn__half_to_float(qh[i]);
    }
    clattn_tensor tq = kc->qdt == CLATTN_F16 ? clattn_tensor_host(qh, CLATTN_F16, B, Hq, Lq, D)
                                             : clattn_tensor_host(q, CLATTN_F32, B, Hq, Lq, D);
    clattn_tensor to = kc->qdt == CLATTN_F16 ? clattn_tensor_host(oh, CLATTN_F16, B, Hq, Lq, Dv)
                                             : clattn_tensor_host(o, CLATTN_F32, B, Hq, Lq, Dv);
    clattn_tensor tlse = clattn_tensor_host(lse, CLATTN_F32, B, Hq, Lq, 1);
    float *alibi = malloc(sizeof(float) * (size_t)Hq);
    for (int h = 0; h < Hq; h++) alibi[h] = exp2f(-8.0f * (float)(h + 1) / (float)Hq);
    clattn_tensor talibi = clattn_tensor_host(alibi, CLATTN_F32, Hq, 1, 1, 1);
    const int Lm = Lmax > 0 ? Lmax : 1;
    uint8_t *bmask = malloc((size_t)(B * Hq * Lq * Lm));
    float *fmask = malloc(sizeof(float) * (size_t)(Lq * Lm));
    for (int i = 0; i < B * Hq * Lq * Lm; i++) bmask[i] = uniform01() < 0.7;
    for (int i = 0; i < Lq * Lm; i++) fmask[i] = uniform01() < 0.1 ? -INFINITY : (float)(uniform01() - 0.5);
    clattn_tensor tmask = kc->mask == 1 ? clattn_tensor_host(bmask, CLATTN_BOOL, B, Hq, Lq, Lmax)
                                        : clattn_tensor_host(fmask, CLATTN_F32, 1, 1, Lq, Lmax);
    clattn_options opt;
    clattn_options_init(&opt);
    if (kc->opts) {
        opt.causal = kc->causal;
        opt.window_left = kc->win_left;
        opt.window_right = kc->win_right;
        opt.softcap = kc->softcap;
        if (kc->alibi) opt.alibi = &talibi;
        if (kc->mask) opt.mask = &tmask;
        if (kc->lse) opt.lse = &tlse;
    } else {
        opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT; /* what opt == NULL means */
    }
    if (fail_gpu_build) {
        clattn__trow row = {.rows = 4, .min_chunk = 256, .max_chunk = 2048, .wgs_per_cu = 8};
        clattn__tuning_apply_form(CLATTN__TP_KV, 1, &row);
        clattn__tuning_set_candidate(cx, CLATTN__TP_KV, &row);
        clattn__fault_arm(cx, CLATTN__FAULT_BUILD, 1);
    }
    st = clattn_kv_cache_attention(cx, c, &tq, &to, kc->opts ? &opt : NULL, NULL);
    if (fail_gpu_build) {
        build_fault_fired = clattn__fault_fired(cx) != 0;
        clattn__fault_arm(cx, CLATTN__FAULT_BUILD, 0);
        clattn__tuning_set_candidate(cx, CLATTN__TP_KV, NULL);
    }
    double worst = 0;
    if (st != CLATTN_SUCCESS) {
        snprintf(why, whylen, "attention: %s", clattn_context_last_error(cx));
        worst = INFINITY;
    } else {
        if (kc->qdt == CLATTN_F16)
            for (size_t i = 0; i < no; i++) o[i] = clattn__half_to_float(oh[i]);
        float *kh = dequantize_cache(c, CLATTN__KV_KEYS, kf, B, Hkv, Lm, D, len);
        float *vh = dequantize_cache(c, CLATTN__KV_VALUES, vf, B, Hkv, Lm, Dv, len);
        /* the reference per batch entry: its own length aligns the positions */
        double *ref = malloc(sizeof(double) * no), *rlse = malloc(sizeof(double) * (size_t)(B * Hq * Lq));
        for (int b = 0; b < B && worst < INFINITY; b++) {
            clattn_tensor rq = clattn_tensor_host(q + (size_t)b * Hq * Lq * D, CLATTN_F32, 1, Hq, Lq, D);
            clattn_tensor rk = clattn_tensor_host(kh + (size_t)b * Hkv * Lm * D, CLATTN_F32, 1, Hkv, len[b], D);
            clattn_tensor rv = clattn_tensor_host(vh + (size_t)b * Hkv * Lm * Dv, CLATTN_F32, 1, Hkv, len[b], Dv);
            rk.nb[1] = (int64_t)Lm * D * 4;
            rv.nb[1] = (int64_t)Lm * Dv * 4;
            clattn_options ro = opt;
            ro.lse = NULL;
            clattn_tensor rm;
            if (opt.mask) {
                rm = *opt.mask;
                if (rm.ne[0] == B) {
                    rm.host = (char *)rm.host + (size_t)b * (size_t)rm.nb[0];
                    rm.ne[0] = 1;
                }
                if (rm.ne[3] != 1) rm.ne[3] = len[b];
                ro.mask = &rm;
            }
            st = clattn_reference_attention(&rq, &rk, &rv, &ro, ref + (size_t)b * Hq * Lq * Dv,
                                            rlse + (size_t)b * Hq * Lq);
            if (st != CLATTN_SUCCESS) {
                snprintf(why, whylen, "reference: %s", clattn_status_string(st));
                worst = INFINITY;
            }
        }
        for (size_t i = 0; i < no && worst < INFINITY; i++) {
            const double tol = kc->qdt == CLATTN_F16 ? 3e-3 + 3e-3 * fabs(ref[i]) : 2e-4 + 2e-3 * fabs(ref[i]);
            const double e = isnan(o[i]) ? INFINITY : fabs(o[i] - ref[i]) / tol;
            if (e > worst) {
                worst = e;
                snprintf(why, whylen, "o[%zu] = %.7g, reference %.7g", i, (double)o[i], ref[i]);
            }
        }
        if (kc->opts && kc->lse)
            for (int i = 0; i < B * Hq * Lq && worst < INFINITY; i++) {
                const double e = isinf(rlse[i]) ? (lse[i] == rlse[i] ? 0 : INFINITY)
                                                : fabs(lse[i] - rlse[i]) / (1e-3 + 1e-4 * fabs(rlse[i]));
                if (e > worst) {
                    worst = e;
                    snprintf(why, whylen, "lse[%d] = %.7g, reference %.7g", i, (double)lse[i], rlse[i]);
                }
            }
        free(kh);
        free(vh);
        free(ref);
        free(rlse);
    }
    clattn_kv_cache_free(c);
    free(k);
    free(v);
    free(q);
    free(o);
    free(lse);
    free(qh);
    free(oh);
    free(alibi);
    free(bmask);
    free(fmask);
    return worst;
}

/* Case i runs on format pair i % npairs, so every pair meets several cases without a
 * kernel build for every combination (PoCL builds take seconds each). */
static void run_cases(const kv_case *cases, size_t n, const clattn_kv_format (*pairs)[2], size_t npairs,
                      size_t per_case)
{
    int failures = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t r = 0; r < per_case; r++) {
            const size_t p = (i * per_case + r) % npairs;
            char why[256] = "";
            const double e = run_case(&cases[i], pairs[p][0], pairs[p][1], why, sizeof why);
            if (!(e <= 1.0)) {
                failures++;
                print_error("FAILED k %s v %s, case %s (B=%d Hq=%d Hkv=%d Lq=%d D=%d Dv=%d lens %d,%d,%d): "
                            "max err %.3g of tolerance: %s\n",
                            clattn_kv_format_name(pairs[p][0]), clattn_kv_format_name(pairs[p][1]),
                            cases[i].name, cases[i].B, cases[i].Hq, cases[i].Hkv, cases[i].Lq, cases[i].D,
                            cases[i].Dv, cases[i].lens[0], cases[i].lens[1], cases[i].lens[2], e, why);
            }
        }
    if (failures) fail_msg("%d case(s) failed", failures);
}

static const clattn_kv_format same_pairs[][2] = {
    {CLATTN_KV_F32, CLATTN_KV_F32},   {CLATTN_KV_F16, CLATTN_KV_F16}, {CLATTN_KV_INT8, CLATTN_KV_INT8},
    {CLATTN_KV_INT4, CLATTN_KV_INT4}, {CLATTN_KV_TQ4, CLATTN_KV_TQ4}, {CLATTN_KV_TQ3, CLATTN_KV_TQ3},
    {CLATTN_KV_TQ2, CLATTN_KV_TQ2},
};

/* Decode and chunked prefill over each format with the default options (bottom-right
 * causal), per-batch lengths, GQA, Dv != D and head sizes that are not powers of two:
 * seven shapes, each on two formats, so each format meets two of them. */
static void test_attention_over_each_format_matches_reference_on_dequantized_cache(void **state)
{
    (void)state;
    rng_state = 42;
    static const kv_case cases[] = {
        {"decode", 1, 4, 4, 1, 128, 128, {300}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
        {"gqa+lens", 3, 8, 2, 1, 64, 64, {77, 1, 130}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
        {"prefill chunk", 2, 4, 2, 19, 96, 96, {70, 45}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
        {"D72 Dv40", 2, 6, 3, 3, 72, 40, {33, 64}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
        {"D80 Dv128", 1, 2, 1, 2, 80, 128, {2049}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
        {"D256", 1, 2, 2, 1, 256, 256, {45}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
        {"gqa8 decode", 2, 16, 2, 1, 128, 128, {700, 512}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
    };
    run_cases(cases, sizeof cases / sizeof cases[0], same_pairs, sizeof same_pairs / sizeof same_pairs[0], 2);
}

/* Every other option of SPEC §1 with the cache: masks (bool per element, float
 * broadcast), top-left causal and none, windows, softcap, ALiBi, LSE, f16 q and o, an
 * empty batch entry; on mixed K and V formats. */
static void test_attention_over_cache_honours_every_spec_option(void **state)
{
    (void)state;
    rng_state = 7;
    static const kv_case cases[] = {
        {"bool mask+lse", 2, 4, 2, 3, 64, 64, {40, 70}, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 1, -1, -1, 0, 0, 1, CLATTN_F32},
        {"float mask", 2, 2, 2, 5, 80, 80, {50, 33}, CLATTN_CAUSAL_NONE, 1, 2, -1, -1, 0, 0, 0, CLATTN_F32},
        {"top-left", 1, 4, 1, 6, 64, 32, {90}, CLATTN_CAUSAL_TOP_LEFT, 1, 0, -1, -1, 0, 0, 1, CLATTN_F32},
        {"window", 2, 2, 2, 4, 96, 96, {200, 64}, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 0, 37, 0, 0, 0, 1, CLATTN_F32},
        {"window both", 1, 2, 1, 4, 64, 64, {150}, CLATTN_CAUSAL_NONE, 1, 0, 20, 5, 0, 0, 0, CLATTN_F32},
        {"softcap+alibi", 2, 4, 4, 2, 128, 128, {100, 61}, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 0, -1, -1, 5.0f, 1, 1, CLATTN_F32},
        {"f16 q,o", 1, 4, 2, 2, 128, 64, {120}, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 0, -1, -1, 0, 0, 0, CLATTN_F16},
        {"empty entry", 3, 2, 1, 2, 64, 64, {0, 40, 3}, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 0, -1, -1, 0, 0, 1, CLATTN_F32},
    };
    static const clattn_kv_format pairs[][2] = {
        {CLATTN_KV_INT8, CLATTN_KV_INT8}, {CLATTN_KV_INT4, CLATTN_KV_INT4}, {CLATTN_KV_TQ4, CLATTN_KV_TQ3},
        {CLATTN_KV_F16, CLATTN_KV_TQ2},   {CLATTN_KV_TQ3, CLATTN_KV_INT4}, {CLATTN_KV_TQ2, CLATTN_KV_F32},
    };
    run_cases(cases, sizeof cases / sizeof cases[0], pairs, sizeof pairs / sizeof pairs[0], 1);
}

/* The GPU form (cl/kv_attn_gpu.cl, a work-group per row block with the tile's keys
 * and values dequantized into local memory), forced through the tuning layer: every
 * format as keys and values, GQA groups split over row blocks, per-batch lengths with
 * an empty entry and one long enough for several key splits (the shared merge), head sizes off the 16-lane grid (D 72, Dv 40), a tile boundary inside
 * a split, and the options that act per key (mask, window, softcap, ALiBi, LSE, f16 q
 * and o). Few shapes, so the builds stay few. */
static void test_gpu_form_matches_reference_on_every_format(void **state)
{
    (void)state;
    rng_state = 99;
    clattn__tuning_force_form(CLATTN__TP_KV, 1);
    static const kv_case cases[] = {
        {"gpu gqa+lens, splits", 3, 8, 2, 1, 64, 64, {77, 0, 700}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
        {"gpu D72 Dv40 prefill", 2, 6, 3, 3, 72, 40, {33, 64}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
    };
    run_cases(cases, sizeof cases / sizeof cases[0], same_pairs, sizeof same_pairs / sizeof same_pairs[0], 4);
    static const kv_case opts[] = {
        {"gpu bool mask+lse", 2, 4, 2, 3, 64, 64, {40, 70}, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 1, -1, -1, 0, 0, 1, CLATTN_F32},
        {"gpu window+softcap+alibi, f16", 2, 4, 4, 2, 64, 64, {100, 61}, CLATTN_CAUSAL_BOTTOM_RIGHT, 1, 0, 37, 0, 5.0f, 1, 1,
         CLATTN_F16},
    };
    static const clattn_kv_format pairs[][2] = {{CLATTN_KV_TQ3, CLATTN_KV_INT4}, {CLATTN_KV_INT8, CLATTN_KV_TQ2}};
    run_cases(opts, sizeof opts / sizeof opts[0], pairs, sizeof pairs / sizeof pairs[0], 1);
}

/* The GPU form's build fails (an injected fault on the attention's first build, the
 * partial kernel's): the call gives way to the CPU form and still matches the reference. */
static void test_failed_gpu_form_build_gives_way_to_the_cpu_form(void **state)
{
    (void)state;
    rng_state = 5;
    static const kv_case cases[] = {
        {"fallback", 2, 4, 2, 2, 64, 64, {50, 90}, 0, 0, 0, 0, 0, 0, 0, 0, CLATTN_F32},
    };
    static const clattn_kv_format pairs[][2] = {{CLATTN_KV_INT8, CLATTN_KV_TQ4}};
    fail_gpu_build = true;
    build_fault_fired = false;
    run_cases(cases, 1, pairs, 1, 1);
    fail_gpu_build = false;
    assert_true(build_fault_fired);
}

static int fallback_teardown(void **state)
{
    fail_gpu_build = false;
    return teardown(state); /* a fresh context: this one remembers the failed form */
}

static int unforce_kv_form(void **state)
{
    (void)state;
    clattn__tuning_force_form(CLATTN__TP_KV, -1);
    return 0;
}

/* ---- Capacity, reset, sizes, arguments --------------------------------------------- */

static void expect_same_content(clattn_kv_cache *c, int which, const uint8_t *before, size_t bytes)
{
    uint8_t *after = malloc(bytes);
    assert_non_null(after);
    assert_int_equal(clattn__kv_cache_download(c, which, after, bytes), CLATTN_SUCCESS);
    assert_memory_equal(before, after, bytes);
    free(after);
}

/* An append that would pass the capacity of any batch entry is refused with
 * CLATTN_ERROR_CAPACITY, and every byte and length of the cache is as it was. */
static void test_append_past_capacity_is_refused_and_nothing_is_lost(void **state)
{
    (void)state;
    clattn_context *cx = get_ctx();
    for (int f = 0; f < CLATTN_KV_FORMAT_COUNT_; f++) {
        const int B = 2, H = 2, D = 64, cap = 40;
        clattn_kv_cache *c;
        assert_int_equal(clattn_kv_cache_create(cx, B, H, cap, D, D, (clattn_kv_format)f, (clattn_kv_format)f, &c),
                         CLATTN_SUCCESS);
        float x[2 * 2 * 30 * 64];
        fill(x, sizeof x / sizeof x[0], D, 1);
        clattn_tensor t = clattn_tensor_host(x, CLATTN_F32, B, H, 30, D);
        const int32_t n1[2] = {30, 5};
        assert_int_equal(clattn_kv_cache_append(c, &t, &t, n1), CLATTN_SUCCESS);
        clFinish(clattn_context_cl_queue(cx));
        size_t bytes[3];
        uint8_t *snap[3] = {NULL, NULL, NULL};
        for (int w = 0; w < 3; w++) {
            bytes[w] = clattn__kv_cache_slab_bytes(c, w) * (size_t)(B * H);
            if (!bytes[w]) continue;
            snap[w] = malloc(bytes[w]);
            assert_int_equal(clattn__kv_cache_download(c, w, snap[w], bytes[w]), CLATTN_SUCCESS);
        }
        /* entry 0 has 10 free positions: 11 is one too many, even though entry 1 fits */
        const int32_t n2[2] = {11, 1};
        assert_int_equal(clattn_kv_cache_append(c, &t, &t, n2), CLATTN_ERROR_CAPACITY);
        assert_non_null(strstr(clattn_context_last_error(cx), "capacity"));
        clattn_tensor all = clattn_tensor_host(x, CLATTN_F32, B, H, 11, D);
        assert_int_equal(clattn_kv_cache_append(c, &all, &all, NULL), CLATTN_ERROR_CAPACITY);
        int32_t len[2];
        assert_int_equal(clattn_kv_cache_lengths(c, len), CLATTN_SUCCESS);
        assert_int_equal(len[0], 30);
        assert_int_equal(len[1], 5);
        for (int w = 0; w < 3; w++)
            if (snap[w]) expect_same_content(c, w, snap[w], bytes[w]);
        /* exactly full is fine */
        const int32_t n3[2] = {10, 0};
        assert_int_equal(clattn_kv_cache_append(c, &t, &t, n3), CLATTN_SUCCESS);
        assert_int_equal(clattn_kv_cache_lengths(c, len), CLATTN_SUCCESS);
        assert_int_equal(len[0], 40);
        for (int w = 0; w < 3; w++) free(snap[w]);
        clattn_kv_cache_free(c);
    }
}

/* Reset forgets every position: lengths are 0, attention over the empty cache gives O = 0
 * and LSE = -inf, and what is appended next is what attention sees. */
static void test_reset_empties_the_cache(void **state)
{
    (void)state;
    clattn_context *cx = get_ctx();
    const int D = 32;
    clattn_kv_cache *c;
    assert_int_equal(clattn_kv_cache_create(cx, 1, 1, 64, D, D, CLATTN_KV_TQ4, CLATTN_KV_INT8, &c), CLATTN_SUCCESS);
    float k[64 * 32], v[64 * 32], q[32], o[32], lse;
    fill(k, 64 * 32, D, 1);
    for (int i = 0; i < 64 * 32; i++) v[i] = 100.0f; /* what must not come back */
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, 1, 1, 64, D), tv = clattn_tensor_host(v, CLATTN_F32, 1, 1, 64, D);
    assert_int_equal(clattn_kv_cache_append(c, &tk, &tv, NULL), CLATTN_SUCCESS);
    assert_int_equal(clattn_kv_cache_reset(c), CLATTN_SUCCESS);
    int32_t len = -1;
    assert_int_equal(clattn_kv_cache_lengths(c, &len), CLATTN_SUCCESS);
    assert_int_equal(len, 0);
    fill(q, 32, D, 0);
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, 1, 1, D), to = clattn_tensor_host(o, CLATTN_F32, 1, 1, 1, D);
    clattn_tensor tl = clattn_tensor_host(&lse, CLATTN_F32, 1, 1, 1, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.lse = &tl;
    assert_int_equal(clattn_kv_cache_attention(cx, c, &tq, &to, &opt, NULL), CLATTN_SUCCESS);
    for (int i = 0; i < D; i++) assert_true(o[i] == 0.0f);
    assert_true(isinf(lse) && lse < 0);
    /* new content: values 1 everywhere, so O = 1 */
    for (int i = 0; i < 64 * 32; i++) v[i] = 1.0f;
    tk.ne[2] = tv.ne[2] = 5;
    assert_int_equal(clattn_kv_cache_append(c, &tk, &tv, NULL), CLATTN_SUCCESS);
    assert_int_equal(clattn_kv_cache_attention(cx, c, &tq, &to, &opt, NULL), CLATTN_SUCCESS);
    for (int i = 0; i < D; i++) assert_true(fabsf(o[i] - 1.0f) < 1e-3f);
    assert_true(isfinite(lse));
    clattn_kv_cache_free(c);
    clattn_kv_cache_free(NULL); /* a no-op */
}

/* At D = 128 and a realistic capacity each format costs its nominal bits plus at most a
 * quarter bit (TQ's per-vector scale: 0.125; INT4's key tail: 512/capacity; tiles are
 * allocated in pairs, so a capacity that is a multiple of 32 wastes nothing). */
static void test_bits_per_element_are_within_a_quarter_of_nominal(void **state)
{
    (void)state;
    clattn_context *cx = get_ctx();
    for (int f = 0; f < CLATTN_KV_FORMAT_COUNT_; f++) {
        clattn_kv_cache *c;
        assert_int_equal(clattn_kv_cache_create(cx, 1, 4, 8192, 128, 128, (clattn_kv_format)f, (clattn_kv_format)f, &c),
                         CLATTN_SUCCESS);
        const double bits = clattn_kv_cache_bits_per_element(c), nominal = clattn_kv_format_nominal_bits((clattn_kv_format)f);
        printf("  %-5s %.4f bits per element (nominal %.2f), %llu bytes\n", clattn_kv_format_name((clattn_kv_format)f),
               bits, nominal, (unsigned long long)clattn_kv_cache_bytes(c));
        assert_true(bits >= nominal && bits - nominal <= 0.25);
        clattn_kv_cache_free(c);
    }
}

/* An f16 cache appended from cl_mem buffers in BLHD order stores exactly the f16 values. */
static void test_f16_cache_from_device_buffers_stores_the_rounded_values(void **state)
{
    (void)state;
    clattn_context *cx = get_ctx();
    const int B = 2, H = 3, n = 9, D = 24;
    float x[2 * 9 * 3 * 24];
    fill(x, sizeof x / sizeof x[0], D, 0);
    cl_int err;
    cl_mem m = clCreateBuffer(clattn_context_cl_context(cx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof x, x, &err);
    assert_int_equal(err, CL_SUCCESS);
    clattn_tensor t = clattn_tensor_blhd(clattn_tensor_cl(m, 0, CLATTN_F32, B, H, n, D));
    clattn_kv_cache *c;
    assert_int_equal(clattn_kv_cache_create(cx, B, H, n, D, D, CLATTN_KV_F16, CLATTN_KV_F16, &c), CLATTN_SUCCESS);
    assert_int_equal(clattn_kv_cache_append(c, &t, &t, NULL), CLATTN_SUCCESS);
    uint16_t got[2 * 3 * 9 * 24];
    assert_int_equal(clattn__kv_cache_download(c, CLATTN__KV_KEYS, got, sizeof got), CLATTN_SUCCESS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < n; j++)
                for (int d = 0; d < D; d++)
                    assert_int_equal(got[((b * H + h) * n + j) * D + d],
                                     clattn__float_to_half(x[((b * n + j) * H + h) * D + d]));
    clattn_kv_cache_free(c);
    clReleaseMemObject(m);
}

/* Bad arguments give a clear status and message, never a crash. */
static void test_bad_arguments_are_refused_with_a_message(void **state)
{
    (void)state;
    clattn_context *cx = get_ctx();
    clattn_kv_cache *c = NULL;
    assert_int_equal(clattn_kv_cache_create(cx, 1, 1, 8, 300, 64, CLATTN_KV_TQ4, CLATTN_KV_TQ4, &c), CLATTN_ERROR_INVALID_SHAPE);
    assert_null(c);
    assert_int_equal(clattn_kv_cache_create(cx, 0, 1, 8, 64, 64, CLATTN_KV_TQ4, CLATTN_KV_TQ4, &c), CLATTN_ERROR_INVALID_SHAPE);
    assert_int_equal(clattn_kv_cache_create(cx, 1, 1, 8, 64, 64, (clattn_kv_format)42, CLATTN_KV_TQ4, &c),
                     CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_kv_cache_create(NULL, 1, 1, 8, 64, 64, CLATTN_KV_TQ4, CLATTN_KV_TQ4, &c), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_kv_cache_create(cx, 2, 2, 8, 64, 32, CLATTN_KV_INT8, CLATTN_KV_TQ3, &c), CLATTN_SUCCESS);

    float x[2 * 2 * 4 * 64] = {0}, q[2 * 4 * 64] = {0}, o[2 * 4 * 32];
    clattn_tensor k = clattn_tensor_host(x, CLATTN_F32, 2, 2, 4, 64), v = clattn_tensor_host(x, CLATTN_F32, 2, 2, 4, 32);
    clattn_tensor bad = clattn_tensor_host(x, CLATTN_F32, 2, 2, 4, 32);
    assert_int_equal(clattn_kv_cache_append(c, &bad, &v, NULL), CLATTN_ERROR_INVALID_SHAPE);
    assert_int_equal(clattn_kv_cache_append(c, &k, NULL, NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    const int32_t neg[2] = {-1, 2};
    assert_int_equal(clattn_kv_cache_append(c, &k, &v, neg), CLATTN_ERROR_INVALID_ARGUMENT);
    clattn_tensor b16 = clattn_tensor_host(x, CLATTN_BOOL, 2, 2, 4, 64);
    assert_int_equal(clattn_kv_cache_append(c, &b16, &v, NULL), CLATTN_ERROR_UNSUPPORTED_DTYPE);
    assert_int_equal(clattn_kv_cache_append(c, &k, &v, NULL), CLATTN_SUCCESS);

    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 2, 4, 1, 64), to = clattn_tensor_host(o, CLATTN_F32, 2, 4, 1, 32);
    clattn_tensor to_bad = clattn_tensor_host(o, CLATTN_F32, 2, 4, 1, 64);
    assert_int_equal(clattn_kv_cache_attention(cx, c, &tq, &to_bad, NULL, NULL), CLATTN_ERROR_INVALID_SHAPE);
    clattn_tensor tq3 = clattn_tensor_host(q, CLATTN_F32, 2, 3, 1, 64), to3 = clattn_tensor_host(o, CLATTN_F32, 2, 3, 1, 32);
    assert_int_equal(clattn_kv_cache_attention(cx, c, &tq3, &to3, NULL, NULL), CLATTN_ERROR_INVALID_SHAPE);
    int32_t lens[2] = {1, 1};
    clattn_tensor tl = clattn_tensor_host(lens, CLATTN_I32, 2, 1, 1, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.kv_lens = &tl;
    assert_int_equal(clattn_kv_cache_attention(cx, c, &tq, &to, &opt, NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(clattn_context_last_error(cx), "kv_lens"));
    clattn_context *other = test_context();
    assert_int_equal(clattn_kv_cache_attention(other, c, &tq, &to, NULL, NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    clattn_context_free(other);
    assert_int_equal(clattn_kv_cache_attention(cx, c, &tq, &to, NULL, NULL), CLATTN_SUCCESS);
    assert_int_equal(clattn_kv_cache_reset(NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_kv_cache_lengths(c, NULL), CLATTN_ERROR_INVALID_ARGUMENT);
    assert_int_equal(clattn_kv_cache_bytes(NULL), 0);
    clattn_kv_cache_free(c);
}

/* Sizes are products of B, Hkv and the row bytes: extents whose product overflows 64 bits
 * are refused with a message, never wrapped into a small allocation. */
static void test_sizes_that_overflow_are_refused_not_wrapped(void **state)
{
    (void)state;
    clattn_context *cx = get_ctx();
    const clattn_kv_format formats[] = {CLATTN_KV_F16, CLATTN_KV_INT4, CLATTN_KV_TQ4};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        clattn_kv_cache *c = NULL;
        /* B * Hkv = 4 * 2^62 = 2^64, which wraps to 0 bytes */
        clattn_status st = clattn_kv_cache_create(cx, 4, (int64_t)1 << 62, 8, 64, 64, formats[i], formats[i], &c);
        if (st != CLATTN_ERROR_INVALID_SHAPE || c || !strstr(clattn_context_last_error(cx), "overflow"))
            fail_msg("%s: got %s, cache %p: '%s'", clattn_kv_format_name(formats[i]), clattn_status_string(st),
                     (void *)c, clattn_context_last_error(cx));
    }
}

/* An argument names the tests to run (cmocka's pattern, e.g. test_gpu_form_*): CTest runs
 * the GPU-form tests alone on rusticl that way. */
int main(int argc, char **argv)
{
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_quantizers_match_the_cpu_reference_bit_for_bit),
        cmocka_unit_test(test_attention_over_each_format_matches_reference_on_dequantized_cache),
        cmocka_unit_test(test_attention_over_cache_honours_every_spec_option),
        cmocka_unit_test_teardown(test_gpu_form_matches_reference_on_every_format, unforce_kv_form),
        cmocka_unit_test_teardown(test_failed_gpu_form_build_gives_way_to_the_cpu_form, fallback_teardown),
        cmocka_unit_test(test_append_past_capacity_is_refused_and_nothing_is_lost),
        cmocka_unit_test(test_reset_empties_the_cache),
        cmocka_unit_test(test_bits_per_element_are_within_a_quarter_of_nominal),
        cmocka_unit_test(test_f16_cache_from_device_buffers_stores_the_rounded_values),
        cmocka_unit_test(test_bad_arguments_are_refused_with_a_message),
        cmocka_unit_test(test_sizes_that_overflow_are_refused_not_wrapped),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
