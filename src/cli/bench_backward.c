/* `clattn bench --backward` (see bench_backward.h). */
#include "bench_backward.h"

#include "cli_util.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

clattn_status bench_backward_measure(clattn_context *ctx, const attn_case *c, attn_case_data *d,
                                     long runs, long warmup, bench_backward_result *r)
{
    memset(r, 0, sizeof *r);
    clattn_tensor q, k, v, o;
    clattn_options opt;
    attn_case_tensors(d, &q, &k, &v, &o);
    attn_case_options(c, d, &opt);
    if (!opt.lse) return CLATTN_ERROR_INVALID_ARGUMENT;
    const int64_t Dv = attn_case_dv(c), Hkv = c->Hkv ? c->Hkv : c->Hq;
    const int64_t n[4] = {c->B * c->Hq * c->Lq * Dv, c->B * c->Hq * c->Lq * c->D,
                          c->B * Hkv * c->Lk * c->D, c->B * Hkv * c->Lk * Dv};
    cl_context clc = clattn_context_cl_context(ctx);
    cl_command_queue queue = clattn_context_cl_queue(ctx);
    cl_mem mem[4] = {NULL, NULL, NULL, NULL}; /* dO, dq, dk, dv */
    clattn_status st = CLATTN_SUCCESS;
    float *host = malloc((size_t)(n[0] + 1) * sizeof(float));
    if (!host) return CLATTN_ERROR_OUT_OF_MEMORY;
    uint32_t s = 12345;
    for (int64_t i = 0; i < n[0]; i++) {
        s = s * 1664525u + 1013904223u;
        host[i] = (float)(s >> 8) / (float)(1u << 23) - 1.0f;
    }
    for (int i = 0; i < 4 && st == CLATTN_SUCCESS; i++) {
        cl_int err;
        mem[i] = clCreateBuffer(clc, CL_MEM_READ_WRITE | (i == 0 ? CL_MEM_COPY_HOST_PTR : 0),
                                (size_t)(n[i] + 1) * sizeof(float), i == 0 ? host : NULL, &err);
        if (err != CL_SUCCESS) st = (clattn_status)err;
    }
    free(host);
    clattn_tensor t_do = clattn_tensor_cl(mem[0], 0, CLATTN_F32, c->B, c->Hq, c->Lq, Dv);
    clattn_tensor t_dq = clattn_tensor_cl(mem[1], 0, CLATTN_F32, c->B, c->Hq, c->Lq, c->D);
    clattn_tensor t_dk = clattn_tensor_cl(mem[2], 0, CLATTN_F32, c->B, Hkv, c->Lk, c->D);
    clattn_tensor t_dv = clattn_tensor_cl(mem[3], 0, CLATTN_F32, c->B, Hkv, c->Lk, Dv);
    clattn_context_reset_peak_device_bytes(ctx);
    const uint64_t before = clattn_context_peak_device_bytes(ctx);
    double t[30];
    for (long i = 0; st == CLATTN_SUCCESS && i < (warmup < 1 ? 1 : warmup) + (runs ? runs : 30); i++) {
        const bool timed = i >= (warmup < 1 ? 1 : warmup);
        const double t0 = cli_now_ms();
        st = clattn_attention_backward(ctx, &q, &k, &v, &o, &t_do, opt.lse, &t_dq, &t_dk, &t_dv,
                                       NULL, &opt, NULL);
        clFinish(queue);
        if (!timed || st != CLATTN_SUCCESS) continue;
        const long j = r->runs++;
        if (j < 30) t[j] = cli_now_ms() - t0;
        if (!runs && j >= 2) { /* default: stop after ~3 s once 3 runs are in */
            double total = 0;
            for (long u = 0; u <= j && u < 30; u++) total += t[u];
            if (total > 3000) break;
        }
    }
    r->device_bytes = clattn_context_peak_device_bytes(ctx) - before;
    for (int i = 0; i < 4; i++)
        if (mem[i]) clReleaseMemObject(mem[i]);
    if (st != CLATTN_SUCCESS) return st;
    const long m = r->runs < 30 ? r->runs : 30;
    cli_sort_doubles(t, (size_t)m);
    r->median = m % 2 ? t[m / 2] : 0.5 * (t[m / 2 - 1] + t[m / 2]);
    r->min = t[0];
    r->max = t[m - 1];
    return CLATTN_SUCCESS;
}

bool bench_backward_check(clattn_context *ctx, const attn_case *c, attn_case_data *d, char *why,
                          size_t whylen)
{
    clattn_tensor q, k, v, o;
    clattn_options opt;
    attn_case_tensors(d, &q, &k, &v, &o);
    attn_case_options(c, d, &opt);
    if (!opt.lse) {
        snprintf(why, whylen, "the case has no LSE");
        return false;
    }
    const int64_t Dv = attn_case_dv(c), Hkv = c->Hkv ? c->Hkv : c->Hq;
    const int64_t no = c->B * c->Hq * c->Lq * Dv, nq = c->B * c->Hq * c->Lq * c->D,
                  nk = c->B * Hkv * c->Lk * c->D, nv = c->B * Hkv * c->Lk * Dv, n = nq + nk + nv;
    float *g = malloc((size_t)(no + n + 1) * sizeof(float));
    double *ref = malloc((size_t)(n + 1) * sizeof(double));
    bool ok = g && ref;
    if (!ok) snprintf(why, whylen, "out of host memory");
    if (ok) {
        uint32_t s = 777;
        for (int64_t i = 0; i < no; i++) {
            s = s * 1664525u + 1013904223u;
            g[i] = (float)(s >> 8) / (float)(1u << 23) - 1.0f;
        }
        clattn_tensor t_do = clattn_tensor_host(g, CLATTN_F32, c->B, c->Hq, c->Lq, Dv);
        clattn_tensor t_dq = clattn_tensor_host(g + no, CLATTN_F32, c->B, c->Hq, c->Lq, c->D);
        clattn_tensor t_dk = clattn_tensor_host(g + no + nq, CLATTN_F32, c->B, Hkv, c->Lk, c->D);
        clattn_tensor t_dv = clattn_tensor_host(g + no + nq + nk, CLATTN_F32, c->B, Hkv, c->Lk, Dv);
        clattn_status st = clattn_attention_backward(ctx, &q, &k, &v, &o, &t_do, opt.lse, &t_dq, &t_dk,
                                                     &t_dv, NULL, &opt, NULL);
        if (st != CLATTN_SUCCESS) {
            snprintf(why, whylen, "%s: %.200s", clattn_status_string(st), clattn_context_last_error(ctx));
            ok = false;
        } else if (clattn_reference_attention_backward(&q, &k, &v, &t_do, &opt, ref, ref + nq, ref + nq + nk,
                                                       NULL) != CLATTN_SUCCESS) {
            snprintf(why, whylen, "the reference refused the case");
            ok = false;
        }
        /* each of dq, dk, dv within 1e-2 of its largest reference value */
        const int64_t from[3] = {0, nq, nq + nk}, to[3] = {nq, nq + nk, n};
        static const char *const names[3] = {"dq", "dk", "dv"};
        for (int t = 0; t < 3 && ok; t++) {
            double m = 1e-6, e = 0.0;
            for (int64_t i = from[t]; i < to[t]; i++) m = fmax(m, fabs(ref[i]));
            for (int64_t i = from[t]; i < to[t]; i++) {
                const double x = g[no + i];
                e = fmax(e, isfinite(x) ? fabs(x - ref[i]) : INFINITY);
            }
            if (e > 1e-2 * m) {
                snprintf(why, whylen, "wrong answer: %s off by %g (largest value %g)", names[t], e, m);
                ok = false;
            }
        }
    }
    free(g);
    free(ref);
    return ok;
}
