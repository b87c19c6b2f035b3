/* Token-by-token generation over a GQA model's quantized KV cache: 8 query heads share
 * 2 KV heads, keys and values are stored as int8 blocks. A prompt is appended and
 * attended in one chunk, then each new token appends its key and value and attends over
 * everything so far; the cache is reset for the next sequence. Prints tokens per second
 * and checks the last step against clattn's reference over the dequantized cache.
 *
 *   generate [DEVICE] [TOKENS]     DEVICE as for CLATTN_DEVICE (default: the default device)
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <clattn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { HQ = 8, HKV = 2, D = 64, PROMPT = 16 };

/* A stand-in for a model's projections: deterministic vectors per (token, head). */
static void project(float *x, int heads, int tokens, int first, float salt)
{
    for (int h = 0; h < heads; h++)
        for (int t = 0; t < tokens; t++)
            for (int d = 0; d < D; d++)
                x[((size_t)h * tokens + t) * D + d] =
                    sinf(salt * (float)(first + t + 1) + 0.37f * (float)d + 1.3f * (float)h);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(clattn_context *ctx, clattn_status st, const char *what)
{
    fprintf(stderr, "generate: %s: %s: %s\n", what, clattn_status_string(st), ctx ? clattn_context_last_error(ctx) : "");
    return 1;
}

/* One sequence: prompt, then `tokens` decode steps. Returns the worst error over the
 * tolerance of the last step (negative on a failed call). */
static double sequence(clattn_context *ctx, clattn_kv_cache *cache, int tokens, float salt, double *tps)
{
    const int cap = PROMPT + tokens;
    float *k = malloc(sizeof(float) * HKV * cap * D), *v = malloc(sizeof(float) * HKV * cap * D);
    float *q = malloc(sizeof(float) * HQ * PROMPT * D), *o = malloc(sizeof(float) * HQ * PROMPT * D);
    float *kn = malloc(sizeof(float) * HKV * PROMPT * D), *vn = malloc(sizeof(float) * HKV * PROMPT * D);
    double worst = -1.0;
    clattn_status st;

    /* prompt: append its keys and values, attend its queries (causal, bottom-right) */
    project(kn, HKV, PROMPT, 0, 0.11f * salt);
    project(vn, HKV, PROMPT, 0, 0.23f * salt);
    project(q, HQ, PROMPT, 0, 0.05f * salt);
    clattn_tensor tk = clattn_tensor_host(kn, CLATTN_F32, 1, HKV, PROMPT, D);
    clattn_tensor tv = clattn_tensor_host(vn, CLATTN_F32, 1, HKV, PROMPT, D);
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, 1, HQ, PROMPT, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, 1, HQ, PROMPT, D);
    if ((st = clattn_kv_cache_append(cache, &tk, &tv, NULL)) != CLATTN_SUCCESS) goto out;
    if ((st = clattn_kv_cache_attention(ctx, cache, &tq, &to, NULL, NULL)) != CLATTN_SUCCESS) goto out;
    for (int h = 0; h < HKV; h++)
        for (int t = 0; t < PROMPT; t++)
            for (int d = 0; d < D; d++) {
                k[((size_t)h * cap + t) * D + d] = kn[((size_t)h * PROMPT + t) * D + d];
                v[((size_t)h * cap + t) * D + d] = vn[((size_t)h * PROMPT + t) * D + d];
            }

    /* decode: one token at a time */
    const double t0 = now();
    for (int i = 0; i < tokens; i++) {
        const int pos = PROMPT + i;
        project(kn, HKV, 1, pos, 0.11f * salt);
        project(vn, HKV, 1, pos, 0.23f * salt);
        project(q, HQ, 1, pos, 0.05f * salt);
        tk = clattn_tensor_host(kn, CLATTN_F32, 1, HKV, 1, D);
        tv = clattn_tensor_host(vn, CLATTN_F32, 1, HKV, 1, D);
        tq = clattn_tensor_host(q, CLATTN_F32, 1, HQ, 1, D);
        to = clattn_tensor_host(o, CLATTN_F32, 1, HQ, 1, D);
        if ((st = clattn_kv_cache_append(cache, &tk, &tv, NULL)) != CLATTN_SUCCESS) goto out;
        if ((st = clattn_kv_cache_attention(ctx, cache, &tq, &to, NULL, NULL)) != CLATTN_SUCCESS) goto out;
        for (int h = 0; h < HKV; h++)
            for (int d = 0; d < D; d++) {
                k[((size_t)h * cap + pos) * D + d] = kn[(size_t)h * D + d];
                v[((size_t)h * cap + pos) * D + d] = vn[(size_t)h * D + d];
            }
    }
    *tps = tokens / (now() - t0);

    /* the last step against the reference over what the cache stores (int8 blocks) */
    clattn_kv_quantize_host(CLATTN_KV_INT8, CLATTN_KV_KEYS, k, (size_t)HKV * cap, D, k, NULL);
    clattn_kv_quantize_host(CLATTN_KV_INT8, CLATTN_KV_VALUES, v, (size_t)HKV * cap, D, v, NULL);
    double ref[HQ * D];
    clattn_tensor rk = clattn_tensor_host(k, CLATTN_F32, 1, HKV, cap, D);
    clattn_tensor rv = clattn_tensor_host(v, CLATTN_F32, 1, HKV, cap, D);
    if ((st = clattn_reference_attention(&tq, &rk, &rv, NULL, ref, NULL)) != CLATTN_SUCCESS) goto out;
    worst = 0.0;
    for (int i = 0; i < HQ * D; i++) {
        const double e = fabs((double)o[i] - ref[i]) / (1e-3 + 1e-2 * fabs(ref[i]));
        if (!(e <= worst)) worst = e;
    }
out:
    if (st != CLATTN_SUCCESS) fail(ctx, st, "sequence");
    free(k);
    free(v);
    free(q);
    free(o);
    free(kn);
    free(vn);
    return worst;
}

int main(int argc, char **argv)
{
    const char *device = argc > 1 ? argv[1] : NULL;
    const int tokens = argc > 2 ? atoi(argv[2]) : 48;
    if (tokens < 1 || tokens > 100000) {
        fprintf(stderr, "generate: TOKENS must be 1..100000\n");
        return 2;
    }
    clattn_context *ctx = NULL;
    clattn_status st = clattn_context_create(device, &ctx);
    if (st != CLATTN_SUCCESS) return fail(NULL, st, "clattn_context_create");
    clattn_kv_cache *cache = NULL;
    st = clattn_kv_cache_create(ctx, 1, HKV, PROMPT + tokens, D, D, CLATTN_KV_INT8, CLATTN_KV_INT8, &cache);
    if (st != CLATTN_SUCCESS) return fail(ctx, st, "clattn_kv_cache_create");
    clattn_device_props props;
    clattn_context_device_props(ctx, &props);
    printf("generate: %s, Hq %d, Hkv %d, D %d, int8 cache %.2f bits/element, %llu bytes\n", props.name, HQ,
           HKV, D, clattn_kv_cache_bits_per_element(cache), (unsigned long long)clattn_kv_cache_bytes(cache));
    int bad = 0;
    for (int seq = 0; seq < 2; seq++) {
        double tps = 0.0;
        const double worst = sequence(ctx, cache, tokens, 1.0f + (float)seq, &tps);
        printf("generate: sequence %d: %d prompt + %d tokens, %.1f tokens/s, worst error / tolerance %.3f\n",
               seq, PROMPT, tokens, tps, worst);
        bad |= !(worst >= 0.0 && worst <= 1.0);
        if ((st = clattn_kv_cache_reset(cache)) != CLATTN_SUCCESS) return fail(ctx, st, "clattn_kv_cache_reset");
    }
    clattn_kv_cache_free(cache);
    clattn_context_free(ctx);
    return bad;
}
