/* Runs the backward kernels (the CPU form of cl/backward_cpu.cl, the GPU form of
 * cl/backward_gpu.cl, both with cl/backward.cl's, and the unfused form of
 * cl/backward_unfused.cl) on small cases that switch on every build option they take
 * (dtypes, mask kinds with the mask's gradient, softcap, ALiBi, odd head sizes, GQA,
 * causal, window, key lengths), so that under oclgrind each
 * variant is checked for out-of-bounds accesses, races and API misuse. O and LSE come from
 * the float64 reference; gradients are compared with the backward reference (within
 * 1e-2 of each tensor's largest value: a smoke check, test_backward is the real one).
 * Exit status 0 when every case matched. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "support/attn_case.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int clattn__backward_force_form; /* src/backward/backward.c, testing only */

static const attn_case cases[] = {
    {.name = "plain-odd-d", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 5, .Lk = 19, .D = 3, .Dv = 5},
    {.name = "float-mask-br-window", .B = 1, .Hq = 4, .Hkv = 2, .Lq = 6, .Lk = 17, .D = 16,
     .Dv = 4, .mask_kind = ATTN_MASK_FLOAT, .mask_rank = 3, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT,
     .window = 1, .win_left = 5, .win_right = 1},
    {.name = "bool-mask-tl-f16", .B = 2, .Hq = 2, .Hkv = 2, .Lq = 7, .Lk = 5, .D = 8,
     .dtype = CLATTN_F16, .mask_kind = ATTN_MASK_BOOL, .mask_rank = 4,
     .causal = CLATTN_CAUSAL_TOP_LEFT},
    {.name = "bf16-kvlens-softcap-alibi", .B = 3, .Hq = 2, .Hkv = 1, .Lq = 4, .Lk = 18, .D = 17,
     .Dv = 9, .dtype = CLATTN_BF16, .out_dtype = CLATTN_BF16, .kv_lens = 1, .softcap = 3.0f,
     .alibi = 1},
};

/* Dense f32 [n] from a host tensor of any dtype and strides. */
static void gather(const clattn_tensor *t, double *out)
{
    size_t e = 0;
    for (int64_t a = 0; a < t->ne[0]; a++)
        for (int64_t b = 0; b < t->ne[1]; b++)
            for (int64_t c = 0; c < t->ne[2]; c++)
                for (int64_t d = 0; d < t->ne[3]; d++, e++) {
                    const char *p = (const char *)t->host + t->offset + a * t->nb[0] +
                                    b * t->nb[1] + c * t->nb[2] + d * t->nb[3];
                    out[e] = *(const float *)p;
                }
}

static int max_err(const char *what, const double *got, const double *ref, int64_t n)
{
    double m = 1e-2, e = 0.0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++) e = fmax(e, isnan(got[i]) ? INFINITY : fabs(got[i] - ref[i]));
    if (e <= 1e-2 * m) return 0;
    printf("  %s: max error %g (max |ref| %g)\n", what, e, m);
    return 1;
}

static int run_case(clattn_context *ctx, const attn_case *c0)
{
    attn_case c = *c0;
    c.lse = 1;
    attn_case_data *d;
    if (attn_case_data_create(&c, &d) != CLATTN_SUCCESS) return 1;
    clattn_tensor q, k, v, o;
    clattn_options opt;
    attn_case_tensors(d, &q, &k, &v, &o);
    attn_case_options(&c, d, &opt);
    int failures = 0;
    /* O and LSE from the device's forward pass (also under the checker) */
    if (clattn_attention(ctx, &q, &k, &v, &o, &opt, NULL) != CLATTN_SUCCESS) {
        printf("  forward failed: %s\n", clattn_context_last_error(ctx));
        attn_case_data_free(d);
        return 1;
    }
    const int64_t Dv = attn_case_dv(&c);
    const int64_t nq = c.B * c.Hq * c.Lq * c.D, nk = c.B * c.Hkv * c.Lk * c.D,
                  nv = c.B * c.Hkv * c.Lk * Dv, no = c.B * c.Hq * c.Lq * Dv;
    float *dout = malloc((size_t)no * sizeof(float));
    float *g = malloc((size_t)(nq + nk + nv) * sizeof(float));
    double *got = malloc((size_t)(nq + nk + nv) * sizeof(double));
    double *ref = malloc((size_t)(nq + nk + nv) * sizeof(double));
    const clattn_tensor *m = opt.mask;
    const int64_t nm = m ? m->ne[0] * m->ne[1] * m->ne[2] * m->ne[3] : 0;
    float *gm = malloc((size_t)(nm + 1) * sizeof(float));
    double *gmd = malloc((size_t)(nm + 1) * sizeof(double)), *rm = malloc((size_t)(nm + 1) * sizeof(double));
    if (!dout || !g || !got || !ref || !gm || !gmd || !rm) return 1;
    for (int64_t i = 0; i < no; i++) dout[i] = (float)((i * 37 % 101) - 50) / 50.0f;
    clattn_tensor t_do = clattn_tensor_host(dout, CLATTN_F32, c.B, c.Hq, c.Lq, Dv);
    clattn_tensor t_dq = clattn_tensor_host(g, CLATTN_F32, c.B, c.Hq, c.Lq, c.D);
    clattn_tensor t_dk = clattn_tensor_host(g + nq, CLATTN_F32, c.B, c.Hkv, c.Lk, c.D);
    clattn_tensor t_dv = clattn_tensor_host(g + nq + nk, CLATTN_F32, c.B, c.Hkv, c.Lk, Dv);
    const bool with_dm = m && m->dtype == CLATTN_F32;
    clattn_tensor t_dm = with_dm ? clattn_tensor_host(gm, CLATTN_F32, m->ne[0], m->ne[1], m->ne[2], m->ne[3])
                                 : t_do;
    if (clattn_reference_attention_backward(&q, &k, &v, &t_do, &opt, ref, ref + nq, ref + nq + nk,
                                            with_dm ? rm : NULL) != CLATTN_SUCCESS)
        failures++;
    static const char *const form_names[3] = {"cpu form dq/dk/dv", "gpu form dq/dk/dv",
                                              "unfused form dq/dk/dv"};
    for (int form = 0; form <= 2 && !failures; form++) {
        /* 0, 1: the tiled forms forced; 2: the unfused form, asked for by its path */
        clattn__backward_force_form = form < 2 ? form : -1;
        clattn_options bopt = opt;
        bopt.path = form < 2 ? CLATTN_PATH_AUTO : CLATTN_PATH_UNFUSED;
        clattn_status st = clattn_attention_backward(ctx, &q, &k, &v, &o, &t_do, opt.lse, &t_dq,
                                                     &t_dk, &t_dv, with_dm ? &t_dm : NULL, &bopt, NULL);
        if (st != CLATTN_SUCCESS) {
            printf("  form %d: %s: %s\n", form, clattn_status_string(st), clattn_context_last_error(ctx));
            failures++;
            continue;
        }
        gather(&t_dq, got);
        gather(&t_dk, got + nq);
        gather(&t_dv, got + nq + nk);
        failures += max_err(form_names[form], got, ref, nq + nk + nv);
        if (with_dm) {
            gather(&t_dm, gmd);
            failures += max_err("d_mask", gmd, rm, nm);
        }
    }
    clattn__backward_force_form = -1;
    free(dout);
    free(g);
    free(got);
    free(ref);
    free(gm);
    free(gmd);
    free(rm);
    attn_case_data_free(d);
    return failures;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    setenv("CLATTN_CACHE_DIR", "off", 1); /* build under the checker */
    clattn_context *ctx;
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st != CLATTN_SUCCESS) {
        printf("no OpenCL device: %s\n", clattn_status_string(st));
        return 1;
    }
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        printf("backward case %s\n", cases[i].name);
        failures += run_case(ctx, &cases[i]) != 0;
    }
    clattn_context_free(ctx);
    printf("%d case(s) failed\n", failures);
    return failures ? 1 : 0;
}
