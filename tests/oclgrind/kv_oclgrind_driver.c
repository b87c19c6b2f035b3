/* Runs the KV-cache kernels (cl/kv_quant.cl, cl/kv_attn.cl) on small caches of every
 * format, appends in pieces with per-batch counts, and attention with the options that
 * change the kernels (mask, causal, LSE, GQA, D not a multiple of 16, Dv != D), so that
 * under oclgrind each variant is checked for out-of-bounds accesses, races and API misuse.
 * Correctness is tests/test_kv_cache.c's job; here every output must only be finite and
 * lie within the range of the values appended (attention averages value rows). Exit 0
 * when every case ran clean. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "clattn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 2, HQ = 4, HKV = 2, LQ = 3, CAP = 40, D = 24, DV = 20 };

static float rnd(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 23) - 1.0f;
}

static int run_case(clattn_kv_format kf, clattn_kv_format vf, int opts)
{
    static float k[B * HKV * 30 * D], v[B * HKV * 30 * DV], q[B * HQ * LQ * D], o[B * HQ * LQ * DV], lse[B * HQ * LQ];
    static unsigned char mask[B * HQ * LQ * CAP];
    unsigned s = 1234u + (unsigned)kf * 7u + (unsigned)vf;
    float vmin = INFINITY, vmax = -INFINITY;
    for (size_t i = 0; i < sizeof k / 4; i++) k[i] = rnd(&s);
    for (size_t i = 0; i < sizeof v / 4; i++) {
        v[i] = rnd(&s);
        vmin = fminf(vmin, v[i]);
        vmax = fmaxf(vmax, v[i]);
    }
    for (size_t i = 0; i < sizeof q / 4; i++) q[i] = rnd(&s);
    clattn_context *ctx = NULL;
    clattn_kv_cache *c = NULL;
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st == CLATTN_SUCCESS) st = clattn_kv_cache_create(ctx, B, HKV, CAP, D, DV, kf, vf, &c);
    /* appends of 17 and 13 rows, one entry taking fewer: partial tiles and INT4 groups */
    const int32_t n1[B] = {17, 9}, n2[B] = {13, 13};
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, B, HKV, 17, D), tv = clattn_tensor_host(v, CLATTN_F32, B, HKV, 17, DV);
    if (st == CLATTN_SUCCESS) st = clattn_kv_cache_append(c, &tk, &tv, n1);
    tk.ne[2] = tv.ne[2] = 13;
    if (st == CLATTN_SUCCESS) st = clattn_kv_cache_append(c, &tk, &tv, n2);
    int32_t lens[B];
    if (st == CLATTN_SUCCESS) st = clattn_kv_cache_lengths(c, lens);
    const int lmax = lens[0] > lens[1] ? lens[0] : lens[1];
    for (size_t i = 0; i < sizeof mask; i++) mask[i] = (i % 5) != 0;
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, B, HQ, LQ, D), to = clattn_tensor_host(o, CLATTN_F32, B, HQ, LQ, DV);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, B, HQ, LQ, 1);
    clattn_tensor tm = clattn_tensor_host(mask, CLATTN_BOOL, B, HQ, LQ, lmax);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = opts ? CLATTN_CAUSAL_BOTTOM_RIGHT : CLATTN_CAUSAL_NONE;
    if (opts) {
        opt.mask = &tm;
        opt.lse = &tl;
    }
    if (st == CLATTN_SUCCESS) st = clattn_kv_cache_attention(ctx, c, &tq, &to, &opt, NULL);
    int bad = 0;
    for (size_t i = 0; st == CLATTN_SUCCESS && i < sizeof o / 4; i++)
        if (!(o[i] >= vmin - 0.1f && o[i] <= vmax + 0.1f)) bad++;
    printf("k %-4s v %-4s %s: %s%s\n", clattn_kv_format_name(kf), clattn_kv_format_name(vf),
           opts ? "mask+causal+lse" : "plain", st ? clattn_status_string(st) : bad ? "outputs out of range" : "ok",
           st ? clattn_context_last_error(ctx) : "");
    clattn_kv_cache_free(c);
    clattn_context_free(ctx);
    return st != CLATTN_SUCCESS || bad;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    setenv("CLATTN_CACHE_DIR", "off", 1); /* build under the checker */
    int failures = 0;
    for (int f = 0; f < CLATTN_KV_FORMAT_COUNT_; f++) failures += run_case((clattn_kv_format)f, (clattn_kv_format)f, f & 1);
    /* mixed pairs, options on */
    failures += run_case(CLATTN_KV_TQ3, CLATTN_KV_INT4, 1);
    failures += run_case(CLATTN_KV_INT4, CLATTN_KV_TQ2, 1);
    failures += run_case(CLATTN_KV_INT8, CLATTN_KV_F16, 1);
    return failures ? 1 : 0;
}
