/* `clattn run`: attention on .npy files (SPEC §2). Every option is checked before any work
 * starts, the problem is validated by the library's own rules before a device context is
 * made, and the outputs are written under temporary names and renamed only once all of
 * them are complete, so a failure leaves one line on stderr and no output file. */
#include "clattn.h"
#include "cli_util.h"
#include "cmd_run.h"
#include "commands.h"
#include "cp_case.h"
#include "core/device.h"   /* clattn__device_find: the reason a --device spec matches nothing */
#include "kv_case.h"
#include "paged_case.h"
#include "support/npy.h"
#include "core/problem.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "run";

/* Everything one run holds, so one cleanup releases it whatever failed. */
typedef struct run_state {
    run_args a; /* the parsed command line (cmd_run_parse) */
    npy_array q, k, v, mask, kv_lens, alibi;
    npy_array varlen; /* --varlen: int32 cu_seqlens [n+1] */
    clattn_tensor tq, tk, tv, to, tmask, tkv, talibi, tlse;
    float *o, *lse;
    int64_t o_shape[4];
    clattn_context *ctx;
    size_t device_index;
    npy_pending out_pending, lse_pending;
    /* the backward pass (--grad-out): dO in, dq/dk/dv out, LSE kept for it */
    npy_array grad;
    clattn_tensor tgrad, tdq, tdk, tdv;
    float *dq, *dk, *dv;
    int64_t dq_shape[4], dk_shape[4], dv_shape[4];
    npy_pending grad_pending[3];
} run_state;

#define ARG(s, id) ARGV_OF(&(s)->a, id)

static void run_state_free(run_state *s)
{
    npy_write_abort(&s->out_pending);
    npy_write_abort(&s->lse_pending);
    for (int i = 0; i < 3; i++) npy_write_abort(&s->grad_pending[i]);
    npy_free(&s->grad);
    free(s->dq);
    free(s->dk);
    free(s->dv);
    clattn_context_free(s->ctx);
    npy_free(&s->q);
    npy_free(&s->k);
    npy_free(&s->v);
    npy_free(&s->mask);
    npy_free(&s->kv_lens);
    npy_free(&s->alibi);
    npy_free(&s->varlen);
    free(s->o);
    free(s->lse);
}

/* ---- Input files ----------------------------------------------------------------- */

static int load(run_state *s, int id, npy_array *a)
{
    char name[64], err[1024];
    if (npy_read(ARG(s, id), a, err, sizeof err) != 0) {
        cli_error(CMD, "%s: %s", cli_option_name(cmd_run_longopts, id, name, sizeof name), err);
        return -1;
    }
    return 0;
}

static int fail_file(run_state *s, int id, const char *fmt, const char *detail,
                     const npy_array *a)
{
    char name[64], shape[128];
    cli_option_name(cmd_run_longopts, id, name, sizeof name);
    npy_shape_string(a->rank, a->shape, shape, sizeof shape);
    char what[256];
    snprintf(what, sizeof what, fmt, detail);
    cli_error(CMD, "%s: %s: %s, got %s %s", name, ARG(s, id), what,
              npy_dtype_label(a->dtype), shape);
    return -1;
}

/* Q, K or V: float32/float16, rank 4, as a descriptor in the chosen layout. */
static int load_qkv(run_state *s, int id, npy_array *a, clattn_tensor *t)
{
    if (load(s, id, a)) return -1;
    const char *dims = id == OPT_Q   ? (s->a.blhd ? "[B,Lq,Hq,D]" : "[B,Hq,Lq,D]")
                       : id == OPT_K ? (s->a.blhd ? "[B,Lk,Hkv,D]" : "[B,Hkv,Lk,D]")
                                     : (s->a.blhd ? "[B,Lk,Hkv,Dv]" : "[B,Hkv,Lk,Dv]");
    if (a->dtype != CLATTN_F32 && a->dtype != CLATTN_F16)
        return fail_file(s, id, "expected float32 or float16 %s", dims, a);
    if (a->rank != 4) return fail_file(s, id, "expected rank 4 %s", dims, a);
    const int64_t *n = a->shape;
    if (s->a.blhd) /* memory [B, L, H, D]; the descriptor stays logical [B, H, L, D] */
        *t = clattn_tensor_blhd(clattn_tensor_host(a->data, a->dtype, n[0], n[2], n[1], n[3]));
    else
        *t = clattn_tensor_host(a->data, a->dtype, n[0], n[1], n[2], n[3]);
    return 0;
}

/* A 1-D input of dtype dt (--kv-lens, --alibi) as a host tensor t; fmt and dims word the
 * complaint as fail_file does. */
static int load_vector(run_state *s, int id, npy_array *a, clattn_dtype dt, const char *fmt,
                       const char *dims, clattn_tensor *t)
{
    if (load(s, id, a)) return -1;
    if (a->dtype != dt || a->rank != 1) return fail_file(s, id, fmt, dims, a);
    *t = clattn_tensor_host(a->data, dt, a->shape[0], 1, 1, 1);
    return 0;
}

static int load_inputs(run_state *s)
{
    if (load_qkv(s, OPT_Q, &s->q, &s->tq) || load_qkv(s, OPT_K, &s->k, &s->tk) ||
        load_qkv(s, OPT_V, &s->v, &s->tv))
        return -1;

    if (ARG(s, OPT_MASK)) {
        npy_array *m = &s->mask;
        if (load(s, OPT_MASK, m)) return -1;
        if (m->dtype != CLATTN_BOOL && m->dtype != CLATTN_F32)
            return fail_file(s, OPT_MASK, "expected bool or float32%s", "", m);
        if (m->rank < 2 || m->rank > 4)
            return fail_file(s, OPT_MASK, "expected rank 2..4 broadcastable to %s",
                             "[B,Hq,Lq,Lk]", m);
        /* numpy broadcasting: missing leading dimensions are 1 */
        int64_t ne[4] = {1, 1, 1, 1};
        for (int i = 0; i < m->rank; i++) ne[4 - m->rank + i] = m->shape[i];
        s->tmask = clattn_tensor_host(m->data, m->dtype, ne[0], ne[1], ne[2], ne[3]);
        s->a.opt.mask = &s->tmask;
    }
    if (ARG(s, OPT_KV_LENS)) {
        if (load_vector(s, OPT_KV_LENS, &s->kv_lens, CLATTN_I32, "expected int32 %s", "[B]",
                        &s->tkv))
            return -1;
        s->a.opt.kv_lens = &s->tkv;
    }
    if (ARG(s, OPT_GRAD_OUT)) {
        npy_array *a = &s->grad;
        if (load(s, OPT_GRAD_OUT, a)) return -1;
        const char *dims = s->a.blhd ? "[B,Lq,Hq,Dv]" : "[B,Hq,Lq,Dv]";
        if (a->dtype != CLATTN_F32 && a->dtype != CLATTN_F16)
            return fail_file(s, OPT_GRAD_OUT, "expected float32 or float16 %s", dims, a);
        if (a->rank != 4) return fail_file(s, OPT_GRAD_OUT, "expected rank 4 %s", dims, a);
        const int64_t *n = a->shape;
        if (s->a.blhd)
            s->tgrad = clattn_tensor_blhd(clattn_tensor_host(a->data, a->dtype, n[0], n[2], n[1], n[3]));
        else
            s->tgrad = clattn_tensor_host(a->data, a->dtype, n[0], n[1], n[2], n[3]);
    }
    if (ARG(s, OPT_VARLEN)) {
        npy_array *a = &s->varlen;
        if (load(s, OPT_VARLEN, a)) return -1;
        if (a->dtype != CLATTN_I32 || a->rank != 1 || a->shape[0] < 2)
            return fail_file(s, OPT_VARLEN, "expected int32 cu_seqlens %s", "[n+1], n >= 1", a);
    }
    if (ARG(s, OPT_ALIBI)) {
        if (load_vector(s, OPT_ALIBI, &s->alibi, CLATTN_F32, "expected float32 %s slopes", "[Hq]",
                        &s->talibi))
            return -1;
        s->a.opt.alibi = &s->talibi;
    }
    return 0;
}

/* Product of n extents as a size_t, or 0 with *ok false on overflow. */
static size_t checked_count(const int64_t *ne, int n, bool *ok)
{
    size_t c = 1;
    for (int i = 0; i < n; i++) {
        uint64_t d = (uint64_t)ne[i];
        if (d != 0 && c > SIZE_MAX / sizeof(float) / d) {
            *ok = false;
            return 0;
        }
        c *= (size_t)d;
    }
    return c;
}

/* The backward pass's outputs, shaped (in the chosen layout) as q, k and v, and a check
 * of dO against O's shape, before a device is touched. */
static int prepare_gradients(run_state *s)
{
    const clattn_tensor *src[3] = {&s->tq, &s->tk, &s->tv};
    clattn_tensor *dst[3] = {&s->tdq, &s->tdk, &s->tdv};
    float **buf[3] = {&s->dq, &s->dk, &s->dv};
    int64_t *shape[3] = {s->dq_shape, s->dk_shape, s->dv_shape};
    const int64_t *o = s->to.ne;
    const int64_t *g = s->tgrad.ne;
    if (g[0] != o[0] || g[1] != o[1] || g[2] != o[2] || g[3] != o[3]) {
        char want[128], got[128];
        npy_shape_string(4, s->o_shape, want, sizeof want);
        npy_shape_string(s->grad.rank, s->grad.shape, got, sizeof got);
        cli_error(CMD, "--grad-out: %s: expected O's shape %s, got %s", ARG(s, OPT_GRAD_OUT),
                  want, got);
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        const int64_t *n = src[i]->ne;
        bool ok = true;
        size_t count = checked_count(n, 4, &ok);
        *buf[i] = ok ? malloc(count ? count * sizeof(float) : 1) : NULL;
        if (!*buf[i]) {
            cli_error(CMD, "out of memory for the gradients (%zu floats)", count);
            return -1;
        }
        *dst[i] = clattn_tensor_host(*buf[i], CLATTN_F32, n[0], n[1], n[2], n[3]);
        if (s->a.blhd) *dst[i] = clattn_tensor_blhd(*dst[i]);
        shape[i][0] = n[0];
        shape[i][1] = s->a.blhd ? n[2] : n[1];
        shape[i][2] = s->a.blhd ? n[1] : n[2];
        shape[i][3] = n[3];
    }
    return 0;
}

/* Allocate O and LSE and let the library check every rule about the problem, before a
 * device is touched. */
static int prepare_outputs(run_state *s)
{
    const int64_t B = s->tq.ne[0], Hq = s->tq.ne[1], Lq = s->tq.ne[2], Dv = s->tv.ne[3];
    const int64_t logical[4] = {B, Hq, Lq, Dv};
    bool ok = true;
    size_t count = checked_count(logical, 4, &ok);
    size_t lse_count = checked_count(logical, 3, &ok);
    if (!ok) {
        cli_error(CMD, "the output [B,Hq,Lq,Dv] is too large for this machine");
        return -1;
    }
    s->o = malloc(count ? count * sizeof(float) : 1);
    /* the backward pass needs the LSE even when no --lse file is asked for */
    if (ARG(s, OPT_LSE) || ARG(s, OPT_GRAD_OUT))
        s->lse = malloc(lse_count ? lse_count * sizeof(float) : 1);
    if (!s->o || ((ARG(s, OPT_LSE) || ARG(s, OPT_GRAD_OUT)) && !s->lse)) {
        cli_error(CMD, "out of memory for the output (%zu floats)", count);
        return -1;
    }
    s->to = clattn_tensor_host(s->o, CLATTN_F32, B, Hq, Lq, Dv);
    if (s->a.blhd) s->to = clattn_tensor_blhd(s->to);
    s->o_shape[0] = B;
    s->o_shape[1] = s->a.blhd ? Lq : Hq;
    s->o_shape[2] = s->a.blhd ? Hq : Lq;
    s->o_shape[3] = Dv;
    if (s->lse) {
        s->tlse = clattn_tensor_host(s->lse, CLATTN_F32, B, Hq, Lq, 1);
        s->a.opt.lse = &s->tlse;
    }
    clattn__problem p;
    char err[1024];
    clattn_status st =
        clattn__problem_init(&p, &s->tq, &s->tk, &s->tv, &s->to, &s->a.opt, err, sizeof err);
    if (st != CLATTN_SUCCESS) {
        cli_error(CMD, "%s", err);
        return -1;
    }
    return ARG(s, OPT_GRAD_OUT) ? prepare_gradients(s) : 0;
}

/* ---- Device and outputs ---------------------------------------------------------- */

static int resolve_device(run_state *s)
{
    char err[1024] = "";
    const char *env_device = getenv("CLATTN_DEVICE"); /* what the library's default would be */
    clattn_status st = clattn__device_find(ARG(s, OPT_DEVICE), env_device ? env_device : "",
                                           &s->device_index, err, sizeof err);
    if (st != CLATTN_SUCCESS) {
        cli_error(CMD, "%s%s", ARG(s, OPT_DEVICE) ? "--device: " : "",
                  err[0] ? err : clattn_status_string(st));
        return -1;
    }
    return 0;
}

/* --paged-kv (paged_case.c): the batch through a paged pool, outputs unpacked into o. */
static clattn_status paged_compute(run_state *s)
{
    int ps = 1;
    unsigned long long seed = 0;
    char err[128];
    paged_parse(ARG(s, OPT_PAGED_KV), &ps, &seed, err, sizeof err); /* checked by parse_options */
    paged_prepared pp;
    const int32_t *lens = s->a.opt.kv_lens ? (const int32_t *)s->kv_lens.data : NULL;
    clattn_status st = paged_prepare(s->ctx, &s->tq, &s->tk, &s->tv, &s->a.opt, lens,
                                     s->a.kv_quant ? s->a.kv_format : CLATTN_KV_F32, ps, seed, &pp);
    if (st == CLATTN_SUCCESS) st = paged_run(s->ctx, &pp, &s->to, s->a.opt.lse ? &s->tlse : NULL);
    paged_release(&pp);
    return st;
}

static int compute(run_state *s)
{
    char spec[32];
    snprintf(spec, sizeof spec, "%zu", s->device_index);
    clattn_status st = clattn_context_create(spec, &s->ctx);
    if (st != CLATTN_SUCCESS) {
        clattn_device_props props;
        const char *dev = clattn_device_get_props(s->device_index, &props) == CLATTN_SUCCESS
                              ? props.name
                              : "?";
        cli_error(CMD, "cannot create an OpenCL context on device %zu (%s): %s",
                  s->device_index, dev, clattn_status_string(st));
        return -1;
    }
    if (ARG(s, OPT_PAGED_KV)) {
        st = paged_compute(s);
    } else if (s->a.kv_quant) {
        kv_prepared kp;
        const int32_t *lens = s->a.opt.kv_lens ? (const int32_t *)s->kv_lens.data : NULL;
        st = kv_prepare(s->ctx, &s->tk, &s->tv, &s->a.opt, lens, s->a.kv_format, &kp);
        if (st == CLATTN_SUCCESS) st = kv_run(s->ctx, &kp, &s->tq, &s->to, NULL);
        kv_release(&kp);
    } else if (ARG(s, OPT_VARLEN)) {
        /* one cu_seqlens for queries and keys: each sequence's own prompt (SPEC §2) */
        const int32_t *cu = (const int32_t *)s->varlen.data;
        st = clattn_attention_varlen(s->ctx, &s->tq, &s->tk, &s->tv, &s->to,
                                     (size_t)s->varlen.shape[0] - 1, cu, cu, &s->a.opt, NULL);
    } else {
        st = clattn_attention(s->ctx, &s->tq, &s->tk, &s->tv, &s->to, &s->a.opt, NULL);
    }
    if (st != CLATTN_SUCCESS) {
        const char *why = clattn_context_last_error(s->ctx);
        cli_error(CMD, "attention failed: %s%s%s", clattn_status_string(st),
                  why && *why ? ": " : "", why ? why : "");
        return -1;
    }
    if (ARG(s, OPT_GRAD_OUT)) {
        st = clattn_attention_backward(s->ctx, &s->tq, &s->tk, &s->tv, &s->to, &s->tgrad,
                                       &s->tlse, &s->tdq, &s->tdk, &s->tdv, NULL, &s->a.opt, NULL);
        if (st != CLATTN_SUCCESS) {
            const char *why = clattn_context_last_error(s->ctx);
            cli_error(CMD, "the backward pass failed: %s%s%s", clattn_status_string(st),
                      why && *why ? ": " : "", why ? why : "");
            return -1;
        }
    }
    return 0;
}

static int write_outputs(run_state *s)
{
    char err[1024];
    if (npy_write_begin(&s->out_pending, ARG(s, OPT_OUT), s->a.out_dtype, 4, s->o_shape, s->o,
                        CLATTN_F32, err, sizeof err) != 0) {
        cli_error(CMD, "--out: %s", err);
        return -1;
    }
    if (s->lse && ARG(s, OPT_LSE)) {
        const int64_t shape[3] = {s->tlse.ne[0], s->tlse.ne[1], s->tlse.ne[2]};
        if (npy_write_begin(&s->lse_pending, ARG(s, OPT_LSE), CLATTN_F32, 3, shape, s->lse,
                            CLATTN_F32, err, sizeof err) != 0) {
            cli_error(CMD, "--lse: %s", err);
            return -1; /* run_state_free removes the pending --out */
        }
    }
    const int grad_ids[3] = {OPT_DQ, OPT_DK, OPT_DV};
    if (ARG(s, OPT_GRAD_OUT)) {
        const float *data[3] = {s->dq, s->dk, s->dv};
        const int64_t *shape[3] = {s->dq_shape, s->dk_shape, s->dv_shape};
        for (int i = 0; i < 3; i++)
            if (npy_write_begin(&s->grad_pending[i], ARG(s, grad_ids[i]), s->a.out_dtype, 4,
                                shape[i], data[i], CLATTN_F32, err, sizeof err) != 0) {
                char name[64];
                cli_error(CMD, "%s: %s", cli_option_name(cmd_run_longopts, grad_ids[i], name, sizeof name), err);
                return -1; /* run_state_free removes the pending ones */
            }
    }
    /* All complete on disk: now rename. If a later rename fails, take the earlier
     * outputs away again so no part of the result is left. */
    if (npy_write_commit(&s->out_pending, err, sizeof err) != 0) {
        cli_error(CMD, "--out: %s", err);
        return -1;
    }
    if (s->lse && ARG(s, OPT_LSE) && npy_write_commit(&s->lse_pending, err, sizeof err) != 0) {
        remove(ARG(s, OPT_OUT));
        cli_error(CMD, "--lse: %s", err);
        return -1;
    }
    for (int i = 0; i < 3 && ARG(s, OPT_GRAD_OUT); i++) {
        if (npy_write_commit(&s->grad_pending[i], err, sizeof err) != 0) {
            char name[64];
            remove(ARG(s, OPT_OUT));
            if (ARG(s, OPT_LSE)) remove(ARG(s, OPT_LSE));
            for (int j = 0; j < i; j++) remove(ARG(s, grad_ids[j]));
            cli_error(CMD, "%s: %s", cli_option_name(cmd_run_longopts, grad_ids[i], name, sizeof name), err);
            return -1;
        }
    }
    return 0;
}

/* rank 0 writes a --context-parallel run's outputs as a plain run does */
static int cp_write(void *state) { return write_outputs(state); }

int cmd_run(int argc, char **argv)
{
    run_state s;
    memset(&s, 0, sizeof s);
    bool help;
    int prc = cmd_run_parse(argc, argv, &s.a, &help);
    if (prc != CLI_EXIT_OK || help) return cli_parse_stop(prc, help, cmd_run_usage);

    int rc = CLI_EXIT_FAILURE;
    /* Under --context-parallel (mpirun, cp_case.c) only rank 0 reads and writes files. */
    const char *cp = ARG(&s, OPT_CONTEXT_PARALLEL);
    const int rank = cp ? cp_begin() : 0;
    /* Files and the problem first: a bad input is reported without touching OpenCL. */
    const bool loaded = rank == 0 && !(load_inputs(&s) || prepare_outputs(&s));
    if (cp) {
        cp_io io = {&s, cp_write, &s.tq, &s.tk, &s.tv, &s.to, &s.a.opt, ARG(&s, OPT_OUT)};
        rc = cp_run_command(&s.a, cp, ARG(&s, OPT_DEVICE), rank > 0 || loaded, &io);
        goto done;
    }
    if (!loaded || resolve_device(&s) || compute(&s) || write_outputs(&s))
        goto done;

    clattn_device_props props;
    if (clattn_context_device_props(s.ctx, &props) != CLATTN_SUCCESS)
        snprintf(props.name, sizeof props.name, "device %zu", s.device_index);
    char shape[128];
    npy_shape_string(4, s.o_shape, shape, sizeof shape);
    char path[64];
    if (ARG(&s, OPT_PAGED_KV))
        snprintf(path, sizeof path, "kv-pool (%s, pages %s)",
                 clattn_kv_format_name(s.a.kv_quant ? s.a.kv_format : CLATTN_KV_F32), ARG(&s, OPT_PAGED_KV));
    else if (s.a.kv_quant)
        snprintf(path, sizeof path, "kv-cache (%s)", clattn_kv_format_name(s.a.kv_format));
    else
        snprintf(path, sizeof path, "%s", clattn_path_name(clattn_context_last_path(s.ctx)));
    printf("clattn run: wrote %s (%s %s)%s%s using path %s on %s\n", ARG(&s, OPT_OUT),
           npy_dtype_label(s.a.out_dtype), shape, ARG(&s, OPT_LSE) ? " and " : "",
           ARG(&s, OPT_LSE) ? ARG(&s, OPT_LSE) : "", path, props.name);
    if (ARG(&s, OPT_GRAD_OUT))
        printf("clattn run: backward pass wrote %s, %s and %s\n", ARG(&s, OPT_DQ), ARG(&s, OPT_DK),
               ARG(&s, OPT_DV));
    rc = CLI_EXIT_OK;
done:
    run_state_free(&s);
    return rc;
}
