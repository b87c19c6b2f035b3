/* The serving cases of `clattn bench` (bench_paged.h): each measures two ways of doing
 * the same work, interleaved run by run so both see the same machine load, and prints
 * both rows and their ratio:
 *   --paged PS[,SEED]   decode over a paged pool (pages shuffled by SEED) against the
 *                       same batch in the contiguous KV cache, both of the --kv-quant
 *                       format (f16 when none), lengths from --ragged MIN,MAX;
 *   --cascade P,S       B sequences sharing a P-token prefix plus S tokens each, decode:
 *                       cascade attention against one batched paged call in which every
 *                       sequence reads its full keys (prefix pages shared in the table);
 *   --varlen MIN,MAX    ragged prefill of B sequences of lengths MIN..MAX (spread evenly)
 *                       packed without padding in one clattn_attention_varlen call,
 *                       against the same sequences one clattn_attention call each on the
 *                       fused path.
 * Inputs live on the device; only the attention calls are timed, each run ended by
 * clFinish. */
#include "bench_paged.h"
#include "cli_util.h"
#include "kv_case.h"
#include "paged_case.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Two ways of one case; run(i, way) does one call of way 0 or 1. */
typedef struct twoway {
    double t[2][64];
    long runs;
    uint64_t dev_bytes[2];
} twoway;
typedef clattn_status (*way_fn)(void *arg, int way);

static clattn_status time_two(clattn_context *ctx, way_fn fn, void *arg, long runs, long warmup, twoway *tw)
{
    cl_command_queue q = clattn_context_cl_queue(ctx);
    clattn_status st;
    for (int w = 0; w < 2; w++) {
        clattn_context_reset_peak_device_bytes(ctx);
        const uint64_t before = clattn_context_peak_device_bytes(ctx);
        for (long i = 0; i < (warmup < 1 ? 1 : warmup); i++) { /* one at least: builds */
            if ((st = fn(arg, w)) != CLATTN_SUCCESS) return st;
            clFinish(q);
        }
        tw->dev_bytes[w] = clattn_context_peak_device_bytes(ctx) - before;
    }
    const long n = runs ? (runs > 64 ? 64 : runs) : 64;
    double total = 0;
    for (tw->runs = 0; tw->runs < n;) {
        for (int w = 0; w < 2; w++) {
            const double t0 = cli_now_ms();
            if ((st = fn(arg, w)) != CLATTN_SUCCESS) return st;
            clFinish(q);
            tw->t[w][tw->runs] = cli_now_ms() - t0;
            total += tw->t[w][tw->runs];
        }
        tw->runs++;
        if (!runs && tw->runs >= 3 && total > 6000) break; /* default: about 6 s, 3 rounds at least */
    }
    return CLATTN_SUCCESS;
}

static void stats(const double *t, long n, double *med, double *mn, double *mx)
{
    double s[64];
    memcpy(s, t, sizeof(double) * (size_t)n);
    cli_sort_doubles(s, (size_t)n);
    *med = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    *mn = s[0];
    *mx = s[n - 1];
}

/* One row of the table and, with json, one JSON line (SPEC §2's fields plus "case"). */
static void report(const bench_serving_ctx *bc, const char *label, const char *shape, const bench_spec *s, const double *t,
                   long runs, double flops, double bytes, uint64_t dev_bytes)
{
    double med, mn, mx;
    stats(t, runs, &med, &mn, &mx);
    const attn_case *c = &s->c;
    printf("%-8s %-26s %-12s %-5s %9.3f %9.3f %9.3f %5ld %9.1f %8.2f %10.2f\n", label, shape,
           c->causal == CLATTN_CAUSAL_NONE ? "none" : c->causal == CLATTN_CAUSAL_TOP_LEFT ? "top-left" : "bottom-right",
           clattn_dtype_name(c->dtype), med, mn, mx, runs, flops / (med * 1e6), bytes / (med * 1e6),
           (double)dev_bytes / (1024.0 * 1024.0));
    fflush(stdout);
    if (!bc->json) return;
    FILE *f = bc->json;
    fprintf(f, "{\"device\": ");
    cli_json_string(f, bc->props->name);
    fprintf(f, ", \"platform\": ");
    cli_json_string(f, bc->props->platform_name);
    fprintf(f, ", \"driver\": ");
    cli_json_string(f, bc->props->driver_version);
    fprintf(f,
            ", \"path\": \"%s\", \"case\": \"%s\", \"shape\": {\"B\": %lld, \"Hq\": %lld, \"Hkv\": %lld, \"Lq\": %lld, "
            "\"Lk\": %lld, \"D\": %lld, \"Dv\": %lld}, \"causal\": \"%s\", \"dtype\": \"%s\", \"kv_quant\": \"%s\", "
            "\"page_size\": %d, \"ragged\": [%lld, %lld], \"cascade\": [%lld, %lld], \"varlen\": [%lld, %lld], "
            "\"median_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"runs\": %ld, \"gflops\": %.2f, "
            "\"gbps\": %.2f, \"device_bytes\": %llu}\n",
            label, s->cascade_prefix ? "cascade" : s->varlen_max ? "varlen" : "paged", (long long)c->B,
            (long long)c->Hq, (long long)c->Hkv, (long long)c->Lq, (long long)c->Lk, (long long)c->D,
            (long long)attn_case_dv(c),
            c->causal == CLATTN_CAUSAL_NONE ? "none" : c->causal == CLATTN_CAUSAL_TOP_LEFT ? "top-left" : "bottom-right",
            clattn_dtype_name(c->dtype), s->kv_quant, s->paged_ps, (long long)s->ragged_min,
            (long long)s->ragged_max, (long long)s->cascade_prefix, (long long)s->cascade_suffix,
            (long long)s->varlen_min, (long long)s->varlen_max, med, mn, mx, runs, flops / (med * 1e6),
            bytes / (med * 1e6), (unsigned long long)dev_bytes);
    fflush(f);
}

static double median_of(const double *t, long n)
{
    double med, mn, mx;
    stats(t, n, &med, &mn, &mx);
    return med;
}

/* Evenly spread lengths lo..hi over n entries. */
static void spread(int32_t *len, int64_t n, int64_t lo, int64_t hi)
{
    for (int64_t b = 0; b < n; b++) len[b] = (int32_t)(n > 1 ? lo + (hi - lo) * b / (n - 1) : hi);
}

/* ---- --paged: contiguous cache (way 0) against the paged pool (way 1) ------------- */

typedef struct paged_arg {
    clattn_context *ctx;
    kv_prepared kp;
    paged_prepared pp;
    clattn_tensor q, o;
} paged_arg;

static clattn_status paged_way(void *arg, int way)
{
    paged_arg *a = arg;
    if (way == 0) return kv_run(a->ctx, &a->kp, &a->q, &a->o, NULL);
    return paged_run(a->ctx, &a->pp, &a->o, NULL);
}

static clattn_status bench_paged(const bench_serving_ctx *bc, const bench_spec *s, const char *shape)
{
    clattn_context *ctx = bc->ctx;
    attn_case c = s->c;
    c.seed = 42;
    c.lse = 0;
    c.Lk = s->ragged_max ? s->ragged_max : c.Lk;
    if (c.Lq != 1 && c.B != 1) return CLATTN_ERROR_INVALID_ARGUMENT; /* refused by the parser */
    attn_case_data *d = NULL;
    clattn_status st = attn_case_data_create(&c, &d);
    if (st == CLATTN_SUCCESS) st = attn_case_data_upload(ctx, d);
    int32_t *lens = malloc(sizeof(int32_t) * (size_t)c.B);
    if (st == CLATTN_SUCCESS && !lens) st = CLATTN_ERROR_OUT_OF_MEMORY;
    if (st == CLATTN_SUCCESS) spread(lens, c.B, s->ragged_max ? s->ragged_min : c.Lk, c.Lk);
    bool quant = false;
    clattn_kv_format f = CLATTN_KV_F16;
    kv_parse_quant(s->kv_quant, &quant, &f);
    if (!quant) f = CLATTN_KV_F16;
    paged_arg a;
    memset(&a, 0, sizeof a);
    a.ctx = ctx;
    clattn_tensor tk, tv;
    clattn_options opt;
    if (st == CLATTN_SUCCESS) {
        attn_case_tensors(d, &a.q, &tk, &tv, &a.o);
        attn_case_options(&c, d, &opt);
        st = kv_prepare(ctx, &tk, &tv, &opt, lens, f, &a.kp);
    }
    if (st == CLATTN_SUCCESS)
        st = paged_prepare(ctx, &a.q, &tk, &tv, &opt, lens, f, s->paged_ps, s->paged_seed, &a.pp);
    clFinish(clattn_context_cl_queue(ctx));
    twoway tw;
    memset(&tw, 0, sizeof tw);
    if (st == CLATTN_SUCCESS) st = time_two(ctx, paged_way, &a, bc->runs, bc->warmup, &tw);
    if (st == CLATTN_SUCCESS) {
        double pairs = 0;
        for (int64_t b = 0; b < c.B; b++) pairs += (double)lens[b];
        const double flops = pairs * (double)(c.Hq * c.Lq) * 2.0 * (double)(c.D + attn_case_dv(&c));
        const double qo = (double)(c.B * c.Hq * c.Lq) * (double)(c.D + attn_case_dv(&c)) * 4.0;
        char l0[24], l1[24];
        snprintf(l0, sizeof l0, "kv:%s", clattn_kv_format_name(f));
        snprintf(l1, sizeof l1, "paged:%d", s->paged_ps);
        report(bc, l0, shape, s, tw.t[0], tw.runs, flops, qo + (double)clattn_kv_cache_bytes(a.kp.cache), tw.dev_bytes[0]);
        report(bc, l1, shape, s, tw.t[1], tw.runs, flops, qo + (double)clattn_kv_pool_bytes(a.pp.pool), tw.dev_bytes[1]);
        printf("         paged / contiguous (%s, pages of %d, lengths %lld..%lld): %.3f (medians of %ld interleaved runs)\n",
               clattn_kv_format_name(f), s->paged_ps, (long long)(s->ragged_max ? s->ragged_min : c.Lk),
               (long long)c.Lk, median_of(tw.t[1], tw.runs) / median_of(tw.t[0], tw.runs), tw.runs);
    }
    if (a.kp.cache) kv_release(&a.kp);
    if (a.pp.pool) paged_release(&a.pp);
    free(lens);
    attn_case_data_free(d);
    return st;
}

/* ---- --cascade: every sequence over its full keys (way 0) against cascade (way 1) ---- */

typedef struct cascade_arg {
    clattn_context *ctx;
    clattn_kv_pool *pool;
    clattn_page_table full, prefix, suffix;
    int32_t *qo, gqo[2];
    clattn_tensor q, o;
    clattn_options opt;
} cascade_arg;

static clattn_status cascade_way(void *arg, int way)
{
    cascade_arg *a = arg;
    if (way == 0) return clattn_kv_pool_attention(a->ctx, a->pool, &a->full, a->qo, &a->q, &a->o, &a->opt, NULL);
    return clattn_kv_pool_cascade_attention(a->ctx, a->pool, &a->prefix, a->gqo, &a->suffix, a->qo, &a->q, &a->o,
                                            &a->opt, NULL);
}

static clattn_status bench_cascade(const bench_serving_ctx *bc, const bench_spec *s, const char *shape)
{
    clattn_context *ctx = bc->ctx;
    const attn_case *c = &s->c;
    const int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, D = c->D, Dv = attn_case_dv(c), P = s->cascade_prefix,
                  S = s->cascade_suffix;
    const int ps = s->paged_ps ? s->paged_ps : 16;
    if (P % ps) return CLATTN_ERROR_INVALID_ARGUMENT; /* refused by the parser */
    bool quant = false;
    clattn_kv_format f = CLATTN_KV_F16;
    kv_parse_quant(s->kv_quant, &quant, &f);
    if (!quant) f = CLATTN_KV_F16;
    const int64_t ppages = P / ps, spages = (S + ps - 1) / ps, npages = ppages + B * spages;
    cascade_arg a;
    memset(&a, 0, sizeof a);
    a.ctx = ctx;
    clattn_status st = clattn_kv_pool_create(ctx, npages, ps, Hkv, D, Dv, f, f, &a.pool);
    /* tables: pages 0..ppages-1 the prefix, then each sequence's own */
    const int64_t nfull = B * (ppages + spages);
    int32_t *mem = calloc((size_t)(nfull + B * spages + ppages + 6 * B + 16), sizeof(int32_t));
    float *kx = NULL, *vx = NULL;
    cl_mem qm = NULL, om = NULL;
    if (st == CLATTN_SUCCESS && !mem) st = CLATTN_ERROR_OUT_OF_MEMORY;
    if (st == CLATTN_SUCCESS) {
        int32_t *full_idx = mem, *suf_idx = full_idx + nfull, *pre_idx = suf_idx + B * spages;
        int32_t *full_ptr = pre_idx + ppages, *suf_ptr = full_ptr + B + 1, *last = suf_ptr + B + 1;
        int32_t *pre_ptr = last + B, *pre_last = pre_ptr + 2;
        a.qo = pre_last + 1;
        for (int64_t i = 0; i < ppages; i++) pre_idx[i] = (int32_t)i;
        full_ptr[0] = suf_ptr[0] = 0;
        for (int64_t b = 0; b < B; b++) {
            int32_t *fp = full_idx + b * (ppages + spages);
            for (int64_t i = 0; i < ppages; i++) fp[i] = (int32_t)i;
            for (int64_t i = 0; i < spages; i++) fp[ppages + i] = suf_idx[b * spages + i] = (int32_t)(ppages + b * spages + i);
            full_ptr[b + 1] = (int32_t)((b + 1) * (ppages + spages));
            suf_ptr[b + 1] = (int32_t)((b + 1) * spages);
            last[b] = (int32_t)(spages ? S - (spages - 1) * ps : (ppages ? ps : 0));
            a.qo[b + 1] = (int32_t)(b + 1);
        }
        pre_ptr[0] = 0;
        pre_ptr[1] = (int32_t)ppages;
        pre_last[0] = (int32_t)(ppages ? ps : 0);
        a.gqo[0] = 0;
        a.gqo[1] = (int32_t)B;
        a.full = (clattn_page_table){(size_t)B, full_ptr, full_idx, last, ps};
        a.prefix = (clattn_page_table){1, pre_ptr, pre_idx, pre_last, ps};
        /* the suffix table's last lengths: 0 for sequences without own pages */
        int32_t *suf_last = a.qo + B + 1;
        for (int64_t b = 0; b < B; b++) suf_last[b] = spages ? last[b] : 0;
        a.suffix = (clattn_page_table){(size_t)B, suf_ptr, suf_idx, suf_last, ps};
        /* keys and values: every page filled with random tokens in one append */
        const int64_t n = npages * ps;
        kx = malloc(sizeof(float) * (size_t)(Hkv * n * D));
        vx = malloc(sizeof(float) * (size_t)(Hkv * n * Dv));
        int32_t *slots = malloc(sizeof(int32_t) * (size_t)n);
        const clattn_page_table none = {1, (const int32_t[]){0, 0}, NULL, (const int32_t[]){0}, ps};
        if (!kx || !vx || !slots) st = CLATTN_ERROR_OUT_OF_MEMORY;
        uint64_t r = 42;
        for (int64_t i = 0; st == CLATTN_SUCCESS && i < Hkv * n * (D > Dv ? D : Dv); i++) {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            const float x = (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
            if (i < Hkv * n * D) kx[i] = x;
            if (i < Hkv * n * Dv) vx[i] = -x;
        }
        for (int64_t t = 0; st == CLATTN_SUCCESS && t < n; t++) slots[t] = (int32_t)t;
        clattn_tensor tk = clattn_tensor_host(kx, CLATTN_F32, 1, Hkv, n, D), tv = clattn_tensor_host(vx, CLATTN_F32, 1, Hkv, n, Dv);
        if (st == CLATTN_SUCCESS) st = clattn_kv_pool_append(a.pool, &none, &tk, &tv, slots, NULL);
        free(slots);
        /* queries [1, Hq, B, D] and o on the device */
        float *qh = malloc(sizeof(float) * (size_t)(Hq * B * D));
        if (st == CLATTN_SUCCESS && !qh) st = CLATTN_ERROR_OUT_OF_MEMORY;
        for (int64_t i = 0; st == CLATTN_SUCCESS && i < Hq * B * D; i++) qh[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
        cl_int err = CL_SUCCESS;
        if (st == CLATTN_SUCCESS) {
            qm = clCreateBuffer(clattn_context_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                sizeof(float) * (size_t)(Hq * B * D), qh, &err);
            if (err == CL_SUCCESS)
                om = clCreateBuffer(clattn_context_cl_context(ctx), CL_MEM_READ_WRITE, sizeof(float) * (size_t)(Hq * B * Dv),
                                    NULL, &err);
            if (err != CL_SUCCESS) st = (clattn_status)err;
        }
        free(qh);
        a.q = clattn_tensor_cl(qm, 0, CLATTN_F32, 1, Hq, B, D);
        a.o = clattn_tensor_cl(om, 0, CLATTN_F32, 1, Hq, B, Dv);
        clattn_options_init(&a.opt);
        a.opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    }
    clFinish(clattn_context_cl_queue(ctx));
    twoway tw;
    memset(&tw, 0, sizeof tw);
    if (st == CLATTN_SUCCESS) st = time_two(ctx, cascade_way, &a, bc->runs, bc->warmup, &tw);
    if (st == CLATTN_SUCCESS) {
        const double flops = (double)B * (double)(P + S) * (double)Hq * 2.0 * (double)(D + Dv);
        const double es = f == CLATTN_KV_F32 ? 4.0 : 2.0 * clattn_kv_format_nominal_bits(f) / 16.0;
        const double qo = (double)(B * Hq) * (double)(D + Dv) * 4.0;
        const double sep = qo + es * (double)(B * (P + S) * Hkv * (D + Dv)), cas = qo + es * (double)((P + B * S) * Hkv * (D + Dv));
        report(bc, "paged", shape, s, tw.t[0], tw.runs, flops, sep, tw.dev_bytes[0]);
        report(bc, "cascade", shape, s, tw.t[1], tw.runs, flops, cas, tw.dev_bytes[1]);
        printf("         cascade speed-up over every sequence reading its full keys (%s, %lld sequences, prefix %lld, "
               "own %lld, pages of %d): %.2fx (medians of %ld interleaved runs)\n",
               clattn_kv_format_name(f), (long long)B, (long long)P, (long long)S, ps,
               median_of(tw.t[0], tw.runs) / median_of(tw.t[1], tw.runs), tw.runs);
    }
    if (qm) clReleaseMemObject(qm);
    if (om) clReleaseMemObject(om);
    clattn_kv_pool_free(a.pool);
    free(kx);
    free(vx);
    free(mem);
    return st;
}

/* ---- --varlen: one call per sequence on the fused path (way 0) against varlen (way 1) */

typedef struct varlen_arg {
    clattn_context *ctx;
    int64_t n;
    int32_t *cu;
    clattn_tensor q, k, v, o;
    clattn_options opt;
} varlen_arg;

static clattn_tensor rows_of(const clattn_tensor *t, int64_t r0, int64_t n)
{
    clattn_tensor x = *t;
    x.offset += (size_t)(r0 * t->nb[2]);
    x.ne[2] = n;
    return x;
}

static clattn_status varlen_way(void *arg, int way)
{
    varlen_arg *a = arg;
    if (way == 1)
        return clattn_attention_varlen(a->ctx, &a->q, &a->k, &a->v, &a->o, (size_t)a->n, a->cu, a->cu, &a->opt, NULL);
    clattn_options opt = a->opt;
    opt.path = CLATTN_PATH_FUSED;
    for (int64_t s = 0; s < a->n; s++) {
        const int64_t r0 = a->cu[s], len = a->cu[s + 1] - a->cu[s];
        clattn_tensor q = rows_of(&a->q, r0, len), k = rows_of(&a->k, r0, len), v = rows_of(&a->v, r0, len),
                      o = rows_of(&a->o, r0, len);
        const clattn_status st = clattn_attention(a->ctx, &q, &k, &v, &o, &opt, NULL);
        if (st != CLATTN_SUCCESS) return st;
    }
    return CLATTN_SUCCESS;
}

static clattn_status bench_varlen(const bench_serving_ctx *bc, const bench_spec *s, const char *shape)
{
    clattn_context *ctx = bc->ctx;
    varlen_arg a;
    memset(&a, 0, sizeof a);
    a.ctx = ctx;
    a.n = s->c.B;
    a.cu = calloc((size_t)a.n + 1, sizeof(int32_t));
    int32_t *len = malloc(sizeof(int32_t) * (size_t)a.n);
    if (!a.cu || !len) {
        free(a.cu);
        free(len);
        return CLATTN_ERROR_OUT_OF_MEMORY;
    }
    spread(len, a.n, s->varlen_min, s->varlen_max);
    for (int64_t i = 0; i < a.n; i++) a.cu[i + 1] = a.cu[i] + len[i];
    attn_case c = s->c;
    c.B = 1;
    c.Lq = c.Lk = a.cu[a.n];
    c.seed = 42;
    c.lse = 0;
    c.kv_lens = 0;
    attn_case_data *d = NULL;
    clattn_status st = attn_case_data_create(&c, &d);
    if (st == CLATTN_SUCCESS) st = attn_case_data_upload(ctx, d);
    if (st == CLATTN_SUCCESS) {
        attn_case_tensors(d, &a.q, &a.k, &a.v, &a.o);
        clattn_options_init(&a.opt);
        a.opt.causal = c.causal;
    }
    twoway tw;
    memset(&tw, 0, sizeof tw);
    if (st == CLATTN_SUCCESS) st = time_two(ctx, varlen_way, &a, bc->runs, bc->warmup, &tw);
    if (st == CLATTN_SUCCESS) {
        double pairs = 0;
        for (int64_t i = 0; i < a.n; i++)
            pairs += c.causal ? (double)len[i] * (double)(len[i] + 1) / 2.0 : (double)len[i] * (double)len[i];
        const int64_t Dv = attn_case_dv(&c);
        const double flops = pairs * (double)c.Hq * 2.0 * (double)(c.D + Dv);
        const double es = (double)clattn_dtype_size(c.dtype);
        const double bytes = es * (double)a.cu[a.n] * (double)(c.Hq * c.D + c.Hkv * (c.D + Dv)) +
                             4.0 * (double)a.cu[a.n] * (double)(c.Hq * Dv);
        report(bc, "fused*n", shape, s, tw.t[0], tw.runs, flops, bytes, tw.dev_bytes[0]);
        report(bc, "varlen", shape, s, tw.t[1], tw.runs, flops, bytes, tw.dev_bytes[1]);
        /* what a padded batch [n, H, max, D] would hold, against the packed tensors */
        const double padded = es * (double)(a.n * s->varlen_max) * (double)(c.Hq * c.D + c.Hkv * (c.D + Dv)) +
                              4.0 * (double)(a.n * s->varlen_max) * (double)(c.Hq * Dv);
        printf("         varlen / one call per sequence (%lld sequences, %lld..%lld, %d tokens): %.3f (medians of %ld "
               "interleaved runs); packed Q/K/V/O %.1f MiB, padded to the longest %.1f MiB, scratch %.2f MiB\n",
               (long long)a.n, (long long)s->varlen_min, (long long)s->varlen_max, a.cu[a.n],
               median_of(tw.t[1], tw.runs) / median_of(tw.t[0], tw.runs), tw.runs, bytes / 1048576.0,
               padded / 1048576.0, (double)tw.dev_bytes[1] / 1048576.0);
    }
    attn_case_data_free(d);
    free(a.cu);
    free(len);
    return st;
}

bool bench_serving_wanted(const bench_spec *s)
{
    return s->paged_ps || s->cascade_prefix || s->varlen_max;
}

clattn_status bench_serving_run(const bench_serving_ctx *bc, const bench_spec *s)
{
    const attn_case *c = &s->c;
    char shape[64];
    snprintf(shape, sizeof shape, "%lld,%lld,%lld,%lld,%lld,%lld,%lld", (long long)c->B, (long long)c->Hq,
             (long long)c->Hkv, (long long)(s->varlen_max ? 0 : c->Lq),
             (long long)(s->cascade_prefix ? s->cascade_prefix + s->cascade_suffix
                         : s->varlen_max                   ? 0
                         : s->ragged_max                   ? s->ragged_max
                                                           : c->Lk),
             (long long)c->D, (long long)attn_case_dv(c));
    if (s->cascade_prefix) return bench_cascade(bc, s, shape);
    if (s->varlen_max) return bench_varlen(bc, s, shape);
    return bench_paged(bc, s, shape);
}
