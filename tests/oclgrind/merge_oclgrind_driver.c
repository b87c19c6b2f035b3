/* Runs cl/merge.cl (parts of each storage type, strided f16 output, with and without LSE,
 * -inf parts and rows) and clattn_attention_varlen (the fused kernels on views of packed
 * tensors: empty sequences, sequences without keys, key rows that differ from query rows)
 * so that under oclgrind every launch is checked for out-of-bounds accesses, races and
 * API misuse. Correctness is tests/test_merge.c's and tests/test_varlen.c's job; here
 * every output must only be finite (LSE may be -inf). Exit 0 when every case ran clean. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "clattn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { B = 2, H = 3, L = 4, DV = 5, NO = B * H * L * DV, NL = B * H * L };

static float rnd(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 23) - 1.0f;
}

/* float bits to half / bfloat16 bits, truncating (any value will do here) */
static uint16_t to_bf16(float f)
{
    union {
        float f;
        uint32_t u;
    } x = {f};
    return (uint16_t)(x.u >> 16);
}

static int merge_case(clattn_context *ctx, int with_lse)
{
    static float o32[NO], l[3][NL], lse[NL];
    static uint16_t o16[NO], obf[NO], out[NO + 8];
    unsigned s = 99u + (unsigned)with_lse;
    for (int i = 0; i < NO; i++) {
        o32[i] = rnd(&s);
        o16[i] = 0x3c00; /* 1.0 in half */
        obf[i] = to_bf16(rnd(&s));
    }
    for (int p = 0; p < 3; p++)
        for (int r = 0; r < NL; r++) l[p][r] = (r == 0 || (r + p) % 4 == 0) ? -INFINITY : 10.0f * rnd(&s);
    clattn_tensor op[3] = {clattn_tensor_host(o32, CLATTN_F32, B, H, L, DV),
                           clattn_tensor_host(o16, CLATTN_F16, B, H, L, DV),
                           clattn_tensor_host(obf, CLATTN_BF16, B, H, L, DV)};
    clattn_tensor lp[3];
    for (int p = 0; p < 3; p++) lp[p] = clattn_tensor_host(l[p], CLATTN_F32, B, H, L, 1);
    clattn_tensor o = clattn_tensor_blhd(clattn_tensor_host(out + 8, CLATTN_F16, B, H, L, DV));
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, B, H, L, 1);
    clattn_status st = clattn_merge_states(ctx, 3, op, lp, &o, with_lse ? &tl : NULL, NULL);
    int bad = 0;
    for (int i = 0; st == CLATTN_SUCCESS && with_lse && i < NL; i++)
        if (isnan(lse[i]) || lse[i] == INFINITY) bad++;
    printf("merge %s: %s%s\n", with_lse ? "with lse" : "o only",
           st ? clattn_status_string(st) : bad ? "NaN or +inf in LSE" : "ok",
           st ? clattn_context_last_error(ctx) : "");
    return st != CLATTN_SUCCESS || bad;
}

static int varlen_case(clattn_context *ctx)
{
    enum { HQ = 4, HKV = 2, D = 12, TQ = 23, TK = 31 };
    static const int32_t cu_q[] = {0, 5, 5, 22, 23}, cu_k[] = {0, 9, 12, 31, 31};
    static float q[HQ * TQ * D], k[HKV * TK * D], v[HKV * TK * D], o[HQ * TQ * D], lse[HQ * TQ];
    unsigned s = 7u;
    for (size_t i = 0; i < sizeof q / 4; i++) q[i] = rnd(&s);
    for (size_t i = 0; i < sizeof k / 4; i++) k[i] = rnd(&s), v[i] = rnd(&s);
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, HQ, TQ, D);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, 1, HKV, TK, D);
    clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, 1, HKV, TK, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, HQ, TQ, D);
    clattn_tensor tl = clattn_tensor_host(lse, CLATTN_F32, 1, HQ, TQ, 1);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    opt.lse = &tl;
    clattn_status st = clattn_attention_varlen(ctx, &tq, &tk, &tv, &to, 4, cu_q, cu_k, &opt, NULL);
    int bad = 0;
    for (size_t i = 0; st == CLATTN_SUCCESS && i < sizeof o / 4; i++)
        if (!isfinite(o[i])) bad++;
    printf("varlen: %s%s\n", st ? clattn_status_string(st) : bad ? "outputs not finite" : "ok",
           st ? clattn_context_last_error(ctx) : "");
    return st != CLATTN_SUCCESS || bad;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    setenv("CLATTN_CACHE_DIR", "off", 1); /* build under the checker */
    clattn_context *ctx = NULL;
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st != CLATTN_SUCCESS) {
        fprintf(stderr, "no context: %s\n", clattn_status_string(st));
        return 1;
    }
    int failures = merge_case(ctx, 1) + merge_case(ctx, 0) + varlen_case(ctx);
    clattn_context_free(ctx);
    return failures ? 1 : 0;
}
