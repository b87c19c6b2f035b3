/* Ragged (varlen) attention: sequences packed one after another along the L axis of
 * [1, H, total, D] tensors, cu_seqlens giving where each starts (FlashAttention's varlen
 * interface), every sequence attending only within itself. It runs on the fused path:
 * every tensor is staged once as packed, and each sequence has its own Lq and Lk, so
 * causal alignment, windows and ALiBi positions are per sequence and no padding is ever
 * allocated. Where the planned kernel form supports it (fused_varlen.h), one launch
 * covers every sequence and writes O and LSE once. Otherwise each sequence is the fused
 * path's problem on views of the packed buffers (element offsets moved to its rows), and
 * results reach the caller's cl_mem outputs in one commit launch (staging.c); either
 * way a failure in any sequence leaves them untouched. */
#include "core/context.h"
#include "core/faults.h"
#include "paths/path.h"
#include "paths/fused_varlen.h"
#include "api/attention.h"

#include <stdlib.h>
#include <string.h>

#define FAILP(st, ...) return clattn__failbuf(err, errlen, (st), __VA_ARGS__)

/* One sequence: its views of the packed tensors and the problem validated on them. */
typedef struct varlen_seq {
    clattn_tensor q, k, v, o, lse;
    clattn_options opt;
    clattn__problem p;
    int64_t q0, k0; /* first row of the sequence in the packed queries and keys */
} varlen_seq;

static clattn_status check_cu(const char *name, const int32_t *cu, size_t n, int64_t total,
                              const char *axis, char *err, size_t errlen)
{
    if (!cu) FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s is NULL", name);
    if (cu[0] != 0) FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "%s[0] = %d, must be 0", name, (int)cu[0]);
    for (size_t s = 0; s < n; s++)
        if (cu[s + 1] < cu[s])
            FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
                  "%s must not decrease: %s[%zu] = %d < %s[%zu] = %d", name, name, s + 1,
                  (int)cu[s + 1], name, s, (int)cu[s]);
    if ((int64_t)cu[n] != total)
        FAILP(CLATTN_ERROR_INVALID_SHAPE, "%s[%zu] = %d must equal the packed %s count %lld",
              name, n, (int)cu[n], axis, (long long)total);
    return CLATTN_SUCCESS;
}

/* A view of rows [r0, r0 + n) along axis 2 of a packed tensor. */
static clattn_tensor rows_view(const clattn_tensor *t, int64_t r0, int64_t n)
{
    clattn_tensor v = *t;
    v.offset += (size_t)(r0 * t->nb[2]);
    v.ne[2] = n;
    return v;
}

/* Validation of the whole call before anything is staged or enqueued: the packed
 * problem, the cu_seqlens arrays, and each sequence as the fused path's problem. */
static clattn_status varlen_validate(clattn_context *ctx, const clattn__problem *pk,
                                     size_t n, const int32_t *cu_q, const int32_t *cu_k,
                                     const clattn_options *full, varlen_seq *seqs, char *err,
                                     size_t errlen)
{
    if (pk->B != 1)
        FAILP(CLATTN_ERROR_INVALID_SHAPE,
              "varlen: q, k, v and o are packed as [1, H, total, D]; batch is %lld",
              (long long)pk->B);
    if (pk->mask)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
              "varlen: options.mask is not supported (a mask has no packed layout); causal, "
              "window, softcap and ALiBi are");
    if (pk->kv_lens)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT,
              "varlen: options.kv_lens is not supported: cu_seqlens_k gives each sequence's keys");
    clattn_path want = pk->path;
    if (want == CLATTN_PATH_AUTO && ctx->env.path[0] &&
        clattn_path_from_name(ctx->env.path, &want) != CLATTN_SUCCESS)
        want = CLATTN_PATH_AUTO; /* a bad CLATTN_PATH is clattn_attention's error to report */
    if (want != CLATTN_PATH_AUTO && want != CLATTN_PATH_FUSED)
        FAILP(CLATTN_ERROR_PATH_UNSUPPORTED,
              "varlen: path '%s'%s cannot run packed sequences; only the fused path can",
              clattn_path_name(want), pk->path == CLATTN_PATH_AUTO ? " (CLATTN_PATH)" : "");
    if (n == 0) FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "varlen: n_seqs is 0");
    if (n > (size_t)0x7fffffff)
        FAILP(CLATTN_ERROR_INVALID_ARGUMENT, "varlen: n_seqs = %zu is too many", n);
    clattn_status st = check_cu("cu_seqlens_q", cu_q, n, pk->Lq, "query", err, errlen);
    if (st == CLATTN_SUCCESS) st = check_cu("cu_seqlens_k", cu_k, n, pk->Lk, "key", err, errlen);
    if (st != CLATTN_SUCCESS) return st;
    for (size_t s = 0; s < n; s++) {
        varlen_seq *q = &seqs[s];
        q->q0 = cu_q[s];
        q->k0 = cu_k[s];
        const int64_t lq = cu_q[s + 1] - cu_q[s], lk = cu_k[s + 1] - cu_k[s];
        q->q = rows_view(pk->q, q->q0, lq);
        q->k = rows_view(pk->k, q->k0, lk);
        q->v = rows_view(pk->v, q->k0, lk);
        q->o = rows_view(pk->o, q->q0, lq);
        q->opt = *full;
        q->opt.path = CLATTN_PATH_FUSED;
        q->opt.wait_events = NULL;
        q->opt.num_wait_events = 0;
        if (pk->lse) {
            q->lse = rows_view(pk->lse, q->q0, lq);
            q->opt.lse = &q->lse;
        }
        char inner[512];
        st = clattn__problem_init(&q->p, &q->q, &q->k, &q->v, &q->o, &q->opt, inner, sizeof inner);
        if (st != CLATTN_SUCCESS) FAILP(st, "varlen: sequence %zu: %s", s, inner);
        const char *why = "";
        if (lq > 0 && !clattn__path_fused.supports(ctx, &q->p, &why))
            FAILP(CLATTN_ERROR_PATH_UNSUPPORTED,
                  "varlen: sequence %zu (%lld queries, %lld keys): the fused path cannot run it "
                  "on %s: %s",
                  s, (long long)lq, (long long)lk, ctx->props.name, why);
    }
    return CLATTN_SUCCESS;
}

/* A staged tensor moved to the sequence's first row (r0 rows along axis 2). */
static void shift_rows(clattn__dev_tensor *d, const clattn_tensor *t, int64_t r0)
{
    if (!d->mem || !t) return;
    d->off += (cl_long)(r0 * (t->nb[2] / (int64_t)clattn_dtype_size(t->dtype)));
}

/* What varlen's staged work needs: the validated sequences and the packed tensors. */
typedef struct varlen_work_arg {
    const varlen_seq *seqs;
    size_t n_seqs, nonempty;
    const clattn__varlen_seqs *vs;
    const clattn_tensor *q, *k, *v, *o, *lse;
} varlen_work_arg;

/* One launch for every sequence where the planned form can; else each sequence is the
 * fused path's problem on views of the packed buffers, under one shadow of O and LSE. */
static clattn_status varlen_work(clattn_context *ctx, const clattn__dev_problem *dp, void *arg,
                                 cl_event *ev)
{
    const varlen_work_arg *w = arg;
    clattn_status st = CLATTN_ERROR_BUILD_FAILED;
    if (w->nonempty > 1 && clattn__fused_varlen_supported(ctx, dp->p, w->vs)) {
        clattn__running_path_set(ctx, CLATTN_PATH_FUSED); /* for CLATTN_FAIL_PATH, as dispatch does */
        st = clattn__fused_run_varlen(ctx, dp, w->vs, ev);
        clattn__running_path_set(ctx, CLATTN_PATH_AUTO);
    }
    /* a varlen kernel that fails to build gives way to one launch per sequence */
    if (st == CLATTN_ERROR_BUILD_FAILED) {
        /* more than one sequence writes O and LSE in more than one launch: shadow them */
        clattn__dev_problem packed;
        clattn__shadow sh;
        /* every row of O and LSE belongs to a sequence and is written: nothing to copy in */
        st = clattn__shadow_begin_whole(ctx, dp, w->nonempty > 1, true, &packed, &sh);
        const bool shadowed = st == CLATTN_SUCCESS;
        for (size_t s = 0; s < w->n_seqs && st == CLATTN_SUCCESS; s++) {
            const varlen_seq *sq = &w->seqs[s];
            if (sq->p.Lq == 0) continue;
            clattn__dev_problem sp = packed;
            sp.p = &sq->p;
            shift_rows(&sp.q, w->q, sq->q0);
            shift_rows(&sp.o, w->o, sq->q0);
            shift_rows(&sp.lse, w->lse, sq->q0);
            shift_rows(&sp.k, w->k, sq->k0);
            shift_rows(&sp.v, w->v, sq->k0);
            clattn__running_path_set(ctx, CLATTN_PATH_FUSED);
            st = clattn__path_fused.run(ctx, &sp, NULL);
            clattn__running_path_set(ctx, CLATTN_PATH_AUTO);
        }
        if (st == CLATTN_SUCCESS && sh.active) st = clattn__shadow_commit(ctx, &sh, ev);
        if (shadowed) clattn__shadow_release(ctx, &sh);
    }
    if (st == CLATTN_SUCCESS) {
        ctx->last_path = CLATTN_PATH_FUSED;
        snprintf(ctx->last_reason, sizeof ctx->last_reason, "varlen: %zu sequence(s)", w->n_seqs);
    }
    return st;
}

clattn_status clattn_attention_varlen(clattn_context *ctx, const clattn_tensor *q,
                                      const clattn_tensor *k, const clattn_tensor *v,
                                      clattn_tensor *o, size_t n_seqs,
                                      const int32_t *cu_seqlens_q, const int32_t *cu_seqlens_k,
                                      const clattn_options *opt, cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn__problem p;
    clattn_options full;
    CLATTN_FORWARD(clattn__call_begin(ctx, q, k, v, o, opt, event, &full, &p));
    char err[1024];
    clattn_status st;
    varlen_seq *seqs = calloc(n_seqs ? n_seqs : 1, sizeof *seqs);
    CLATTN_RETURN_IF(ctx, !seqs, CLATTN_ERROR_OUT_OF_MEMORY, "varlen: out of host memory");
    st = varlen_validate(ctx, &p, n_seqs, cu_seqlens_q, cu_seqlens_k, &full, seqs, err, sizeof err);
    if (st != CLATTN_SUCCESS) {
        free(seqs);
        return clattn__fail(ctx, st, "%s", err);
    }
    size_t nonempty = 0;
    for (size_t s = 0; s < n_seqs; s++) nonempty += seqs[s].p.Lq > 0;
    const clattn__varlen_seqs vs = {n_seqs, cu_seqlens_q, cu_seqlens_k};
    const varlen_work_arg w = {seqs, n_seqs, nonempty, &vs, q, k, v, o, p.lse};
    st = clattn__call_run(ctx, &p, &full, varlen_work, (void *)&w, event);
    free(seqs);
    return st;
}
