/* The same attention problem on every OpenCL device found: each device's result is
 * checked against clattn's CPU reference and timed, and one table compares them (time,
 * GFLOP/s, and the ratio to the fastest device).
 *
 *   compare_devices [B,H,L,D]      default 1,4,128,64, causal
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <clattn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct row {
    char name[260]; /* "platform / device", each up to 127 characters */
    const char *path;
    double ms, gflops, err;
    int ok;
} row;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int B = 1, H = 4, L = 128, D = 64;
    if (argc > 1 && (sscanf(argv[1], "%d,%d,%d,%d", &B, &H, &L, &D) != 4 || B < 1 || H < 1 || L < 1 ||
                     D < 1 || D > 256 || (double)B * H * L * D > 1e8)) {
        fprintf(stderr, "compare_devices: expected B,H,L,D with D <= 256, got '%s'\n", argv[1]);
        return 2;
    }
    const size_t n = (size_t)B * H * L * D;
    float *q = malloc(n * sizeof(float)), *k = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
    float *o = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        q[i] = sinf(0.013f * (float)i);
        k[i] = cosf(0.007f * (float)i);
        v[i] = sinf(0.029f * (float)i + 1.0f);
    }
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, B, H, L, D);
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, B, H, L, D);
    clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, B, H, L, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, H, L, D);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_TOP_LEFT;
    if (clattn_reference_attention(&tq, &tk, &tv, &opt, ref, NULL) != CLATTN_SUCCESS) return 1;
    /* FLOPs as clattn bench counts them: 4·D per unmasked (query, key) pair */
    const double flops = 4.0 * D * (double)B * H * ((double)L * (L + 1) / 2);

    size_t count = 0;
    if (clattn_device_count(&count) != CLATTN_SUCCESS || count == 0) {
        fprintf(stderr, "compare_devices: no OpenCL device\n");
        return 1;
    }
    row *rows = calloc(count, sizeof *rows);
    int failed = 0;
    for (size_t d = 0; d < count; d++) {
        row *r = &rows[d];
        clattn_device_props props;
        clattn_device_get_props(d, &props);
        snprintf(r->name, sizeof r->name, "%s / %s", props.platform_name, props.name);
        r->path = "-";
        char spec[32];
        snprintf(spec, sizeof spec, "%zu", d);
        clattn_context *ctx = NULL;
        clattn_status st = clattn_context_create(spec, &ctx);
        /* one warm-up call (kernel builds), then the median of five */
        if (st == CLATTN_SUCCESS) st = clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, NULL);
        double t[5];
        for (int i = 0; i < 5 && st == CLATTN_SUCCESS; i++) {
            const double t0 = now();
            st = clattn_attention(ctx, &tq, &tk, &tv, &to, &opt, NULL);
            t[i] = now() - t0;
        }
        if (st != CLATTN_SUCCESS) {
            fprintf(stderr, "compare_devices: %s: %s: %s\n", r->name, clattn_status_string(st),
                    ctx ? clattn_context_last_error(ctx) : "");
            failed = 1;
            clattn_context_free(ctx);
            continue;
        }
        for (int i = 1; i < 5; i++) /* insertion sort of five */
            for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
                const double x = t[j];
                t[j] = t[j - 1];
                t[j - 1] = x;
            }
        r->ms = 1e3 * t[2];
        r->gflops = flops / t[2] * 1e-9;
        r->path = clattn_path_name(clattn_context_last_path(ctx));
        for (size_t i = 0; i < n; i++) {
            const double e = fabs((double)o[i] - ref[i]) / (2e-4 + 2e-3 * fabs(ref[i]));
            if (!(e <= r->err)) r->err = e;
        }
        r->ok = r->err <= 1.0;
        failed |= !r->ok;
        clattn_context_free(ctx);
    }

    double best = 0.0;
    for (size_t d = 0; d < count; d++)
        if (rows[d].ms > 0.0 && (best == 0.0 || rows[d].ms < best)) best = rows[d].ms;
    printf("shape B=%d H=%d L=%d D=%d causal, float32\n", B, H, L, D);
    printf("%-3s %-50s %-8s %10s %9s %9s %9s %s\n", "#", "device", "path", "ms", "GFLOP/s", "x fastest",
           "err/tol", "check");
    for (size_t d = 0; d < count; d++) {
        const row *r = &rows[d];
        printf("%-3zu %-50.50s %-8s %10.3f %9.2f %9.2f %9.3f %s\n", d, r->name, r->path, r->ms, r->gflops,
               r->ms > 0.0 ? r->ms / best : 0.0, r->err, r->ok ? "ok" : "FAILED");
    }
    free(q);
    free(k);
    free(v);
    free(o);
    free(ref);
    free(rows);
    return failed;
}
