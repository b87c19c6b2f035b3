/* clattn_attention_backward: the gradients of attention on the device. The tiled forms
 * (cl/backward_cpu.cl: one pass over the keys; cl/backward_gpu.cl: FlashAttention-2's two
 * kernels; both with cl/backward.cl's row sums and mask gradient; no atomics,
 * deterministic) come from the tuning layer's backward path, with the unfused form of
 * cl/backward_unfused.cl at the end of the fallback chain (the table of forms.c). Inputs
 * are staged as the forward call stages them; every output is written into scratch
 * (staging copies for host outputs, copies of the caller's spans for cl_mem outputs) and
 * reaches the caller only after every launch was queued: one commit launch for cl_mem
 * outputs, an all-or-nothing read-back for host ones; or, when a single launch writes
 * every output and is the call's last command (the CPU form, in_place), in place. So a
 * failed call leaves every output as it was.
 * Memory beyond the tensors: one float per query row (D = rowsum(dO ∘ O)); the CPU form
 * adds its partial dQ (NSPLIT x rows x D floats, bounded below; none with one split and
 * a dense float32 dQ), dense copies of Q and dO where they cannot be read in place, and
 * a few KiB per work-item. */
#include "backward/forms.h"
#include "core/program.h"
#include "core/faults.h"
#include "core/kernel_args.h"
#include "tuning/tuning.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Testing only: -1 = the form the tuning layer gives the device; 0 or 1 forces one. */
int clattn__backward_force_form = -1;
/* Testing only: the form of the calling thread's last successful call (0 CPU, 1 GPU, 2
 * unfused). */
_Thread_local int clattn__backward_last_form = -1; /* per thread: no race between threads */

/* The plan of a tiled form: the tuning layer's backward row (src/tuning/tuning.c), its form
 * unless that failed to build for this class on ctx (then the other), or a forced one. */
static void make_plan(const clattn_context *ctx, const clattn__bwd_problem *bp, clattn__bwd_plan *pl)
{
    const clattn__problem *p = &bp->p;
    memset(pl, 0, sizeof *pl);
    clattn__trow tu;
    clattn__tsource src;
    clattn__tuning_row_for(ctx, CLATTN__TP_BACKWARD, p, -1, &tu, &src);
    int form = clattn__tuning_form(ctx, CLATTN__TP_BACKWARD, p, &tu);
    if (clattn__backward_force_form >= 0) form = clattn__backward_force_form;
    if (form != tu.form) clattn__tuning_apply_form(CLATTN__TP_BACKWARD, form, &tu);
    pl->form = form;
    /* the commit copies 16 bytes per work-item when every cl_mem output's offset and span
     * allow it */
    pl->commit_unit = 16;
    const clattn_tensor *outs[4] = {bp->dq, bp->dk, bp->dv, bp->d_mask};
    for (int i = 0; i < 4; i++) {
        size_t span = 0;
        if (!outs[i] || !outs[i]->buffer || !clattn__tensor_span(outs[i], &span)) continue;
        if (outs[i]->offset % 16 || span % 16) pl->commit_unit = 2;
    }
    pl->bm = tu.block_m;
    pl->bn = tu.block_n;
    pl->wg = tu.wg;
    clattn__log(ctx, "backward: tuning row from %s", src.text);
    clattn__bwd_form_at(pl->form)->fit(ctx, bp, pl);
}

static void state_release(clattn_context *ctx, clattn__bwd_state *s)
{
    clattn__dev_tensor *all[] = {&s->dp.q, &s->dp.k, &s->dp.v, &s->dp.o, &s->dp.mask,
                                 &s->dp.kv_lens, &s->dp.alibi, &s->d_o, &s->lse,
                                 &s->out[0], &s->out[1], &s->out[2], &s->out[3]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (all[i]->owned) clattn__buffer_release(ctx, all[i]->mem);
        all[i]->mem = NULL;
        all[i]->owned = false;
    }
    for (int i = 0; i < 4; i++) {
        clattn__buffer_release(ctx, s->sh[i].scratch);
        s->sh[i].scratch = NULL;
    }
    clattn__buffer_release(ctx, s->dl);
    clattn__buffer_release(ctx, s->qp);
    clattn__buffer_release(ctx, s->dop);
    clattn__buffer_release(ctx, s->scr);
    clattn__buffer_release(ctx, s->part);
    s->dl = s->qp = s->dop = s->scr = s->part = NULL;
}

static clattn_status stage_all(clattn_context *ctx, const clattn__bwd_problem *bp,
                               const clattn__bwd_plan *pl, clattn__bwd_state *s)
{
    const clattn__problem *p = &bp->p;
    s->dp.p = p;
    struct {
        const char *name;
        const clattn_tensor *t;
        bool output;
        clattn__dev_tensor *d;
    } all[] = {{"q", p->q, false, &s->dp.q},
               {"k", p->k, false, &s->dp.k},
               {"v", p->v, false, &s->dp.v},
               {"o", p->o, false, &s->dp.o},
               {"mask", p->mask, false, &s->dp.mask},
               {"kv_lens", p->kv_lens, false, &s->dp.kv_lens},
               {"alibi", p->alibi, false, &s->dp.alibi},
               {"d_o", bp->d_o, false, &s->d_o},
               {"lse", bp->lse, false, &s->lse},
               {"dq", bp->dq, true, &s->out[0]},
               {"dk", bp->dk, true, &s->out[1]},
               {"dv", bp->dv, true, &s->out[2]},
               {"d_mask", bp->d_mask, true, &s->out[3]}};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        CLATTN_FORWARD(clattn__stage_tensor(ctx, all[i].name, all[i].t, all[i].output, all[i].d));
    /* cl_mem outputs: kernels write a copy of the caller's span (padding included),
     * unless one launch writes them all in place */
    for (int i = 0; i < 4 && !pl->in_place; i++) {
        clattn__dev_tensor *d = &s->out[i];
        if (!d->mem || d->owned) continue;
        clattn__bwd_shadow *sh = &s->sh[i];
        clattn__tensor_span(d->src, &sh->span);
        if (!sh->span) continue;
        sh->base = d->src->offset;
        sh->dst = d->mem;
        CLATTN_FORWARD(clattn__buffer_create(ctx, sh->span, &sh->scratch));
        /* the kernels write every element; only a span with gaps (padding between rows)
         * needs the caller's bytes in the copy, so the commit leaves the gaps as they were */
        const clattn_tensor *t = d->src;
        const uint64_t dense = (uint64_t)t->ne[0] * (uint64_t)t->ne[1] * (uint64_t)t->ne[2] *
                               (uint64_t)t->ne[3] * (uint64_t)clattn_dtype_size(t->dtype);
        if (dense != (uint64_t)sh->span)
            CLATTN_FORWARD(clattn__enqueue_copy(ctx, d->mem, sh->base, sh->scratch, 0, sh->span));
        d->mem = sh->scratch;
        d->off = 0;
    }
    const clattn__bwd_form *f = clattn__bwd_form_at(pl->form);
    if (f->stage) CLATTN_FORWARD(f->stage(ctx, p, pl, s));
    if (!f->row_sums) return CLATTN_SUCCESS; /* the form recomputes D per row */
    const int64_t rows = p->B * p->Hq * p->Lq;
    return clattn__buffer_create(ctx, (size_t)(rows > 0 ? rows : 1) * sizeof(float), &s->dl);
}

/* Host outputs: every read-back must succeed before the first caller byte changes. */
static clattn_status download(clattn_context *ctx, clattn__bwd_state *s)
{
    const clattn__dev_tensor *outs[4] = {&s->out[0], &s->out[1], &s->out[2], &s->out[3]};
    return clattn__download(ctx, outs, 4, "gradients");
}

/* The form's kernels first (a build failure is the form's), then the row sums, the mask's
 * gradient and the commit. */
static clattn_status get_kernels(clattn_context *ctx, const clattn__bwd_problem *bp,
                                 const clattn__dev_problem *dp, const clattn__bwd_plan *pl,
                                 clattn__bwd_kernels *kn)
{
    const clattn__problem *p = &bp->p;
    const clattn__bwd_form *f = clattn__bwd_form_at(pl->form);
    /* opts: what every backward kernel file takes; fopts: the form's file adds its own */
    char opts[640] = "", fopts[640];
    bool ok = clattn__mask_options(dp, opts, sizeof opts) &&
              clattn__opts_add(opts, sizeof opts,
                               " -DDO_DT=%d -DDQ_DT=%d -DDK_DT=%d -DDV_DT=%d -DD=%lld -DDV=%lld",
                               (int)bp->d_o->dtype, (int)bp->dq->dtype, (int)bp->dk->dtype,
                               (int)bp->dv->dtype, (long long)p->D, (long long)p->Dv);
    if (ok) memcpy(fopts, opts, sizeof opts);
    ok = ok && (!f->options || f->options(pl, fopts, sizeof fopts));
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL, "backward: build options too long");
    f->log(ctx, pl);
    CLATTN_FORWARD(clattn__kernel_get(ctx, f->file, fopts, f->dkdv, &kn->dkdv));
    CLATTN_FORWARD(clattn__kernel_get(ctx, f->file, fopts, f->dq, &kn->dq));
    if (f->row_sums) CLATTN_FORWARD(clattn__kernel_get(ctx, "backward.cl", opts, "bwd_rowdot", &kn->rowdot));
    CLATTN_FORWARD(clattn__kernel_get(ctx, f->dmask_file, f->dmask_file == f->file ? fopts : opts, f->dmask,
                                      &kn->dmask));
    return clattn__kernel_get(ctx, "commit.cl", "", pl->commit_unit == 16 ? "bwd_commit16" : "bwd_commit",
                              &kn->commit);
}

static clattn_status enqueue_all(clattn_context *ctx, const clattn__bwd_kernels *kn, const clattn__bwd_plan *pl,
                                 clattn__bwd_state *s, cl_event *event)
{
    const clattn__problem *p = s->dp.p;
    cl_uint a = 0;
    const clattn__bwd_form *f = clattn__bwd_form_at(pl->form);
    CLATTN_FORWARD(f->enqueue(ctx, kn, pl, s, event));
    if (pl->in_place) {
        /* no d_mask and no commit; an empty problem's event is a marker */
        if (event && !*event) CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
        return CLATTN_SUCCESS;
    }

    if (s->out[3].mem) {
        const clattn_tensor *m = p->mask;
        const cl_long ne[4] = {m->ne[0], m->ne[1], m->ne[2], m->ne[3]};
        a = 0;
        CLATTN_FORWARD(clattn__bwd_set_inputs(ctx, kn->dmask, &a, s, f->row_sums));
        CLATTN_FORWARD(clattn__set_tensor_args(ctx, kn->dmask, &a, &s->out[3]));
        for (int i = 0; i < 4; i++) CLATTN_FORWARD(CLATTN_ARG(ctx, kn->dmask, &a, ne[i]));
        CLATTN_FORWARD(clattn__bwd_set_tail(ctx, kn->dmask, &a, s));
        const size_t g_m[1] = {(size_t)(ne[0] * ne[1] * ne[2] * ne[3])}, l_m[1] = {64};
        CLATTN_FORWARD(clattn__enqueue(ctx, kn->dmask, 1, g_m, l_m, NULL));
    }

    /* the commit of cl_mem outputs, in one launch */
    bool any = false;
    cl_ulong maxn = 0;
    a = 0;
    for (int i = 0; i < 4; i++) {
        const clattn__bwd_shadow *sh = &s->sh[i];
        const cl_ulong unit = (cl_ulong)pl->commit_unit;
        const cl_ulong off = sh->base / unit, n = sh->scratch ? sh->span / unit : 0;
        any = any || n > 0;
        if (n > maxn) maxn = n;
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, sh->dst));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, off));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, sh->scratch));
        CLATTN_FORWARD(CLATTN_ARG(ctx, kn->commit, &a, n));
    }
    if (any) {
        const size_t g_c[1] = {(size_t)maxn};
        CLATTN_FORWARD(clattn__enqueue(ctx, kn->commit, 1, g_c, NULL, event));
    } else if (event) {
        CLATTN_FORWARD(clattn__enqueue_marker(ctx, event));
    }
    return CLATTN_SUCCESS;
}

/* One try with the plan's form: kernels, staging, launches, read-back; a failure leaves
 * every output as it was. */
static clattn_status run_form(clattn_context *ctx, const clattn__bwd_problem *bp,
                              const clattn__bwd_plan *pl, cl_event *event)
{
    clattn__bwd_state s;
    memset(&s, 0, sizeof s);
    s.dp.p = &bp->p;
    /* the kernels first: a build failure must come before anything is allocated or queued
     * (the build options need only the problem's dtypes and features) */
    clattn__bwd_kernels kn;
    memset(&kn, 0, sizeof kn);
    CLATTN_FORWARD(get_kernels(ctx, bp, &s.dp, pl, &kn));
    clattn_status st = stage_all(ctx, bp, pl, &s);
    cl_event ev = NULL;
    if (st == CLATTN_SUCCESS) st = enqueue_all(ctx, &kn, pl, &s, event ? &ev : NULL);
    if (st == CLATTN_SUCCESS) st = download(ctx, &s);
    state_release(ctx, &s);
    if (st != CLATTN_SUCCESS) {
        if (ev) clReleaseEvent(ev);
        return st;
    }
    if (event) *event = ev;
    return CLATTN_SUCCESS;
}

clattn_status clattn_attention_backward(clattn_context *ctx, const clattn_tensor *q,
                                        const clattn_tensor *k, const clattn_tensor *v,
                                        const clattn_tensor *o, const clattn_tensor *d_o,
                                        const clattn_tensor *lse, clattn_tensor *dq,
                                        clattn_tensor *dk, clattn_tensor *dv,
                                        clattn_tensor *d_mask, const clattn_options *opt,
                                        cl_event *event)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (event) *event = NULL;
    ctx->last_error[0] = '\0';
    clattn__bwd_problem bp;
    char err[1024];
    clattn_status st = clattn__bwd_problem_init(&bp, q, k, v, o, d_o, lse, dq, dk, dv, d_mask,
                                                d_mask != NULL, opt, false, err, sizeof err);
    if (st != CLATTN_SUCCESS) return clattn__fail(ctx, st, "%s", err);
    const clattn__problem *p = &bp.p;
    /* key and row indices are ints in the kernels' local arrays */
    CLATTN_RETURN_IF(ctx, p->Lk > INT_MAX - 1024 || p->Lq > INT_MAX - 1024,
                     CLATTN_ERROR_INVALID_SHAPE, "backward: more than 2^31 - 1025 keys or queries");

    /* opt->path: auto tries the tiled forms and falls back to the unfused form when they
     * fail to build or run; fused and unfused run that one only */
    clattn_path want = opt ? opt->path : CLATTN_PATH_AUTO;
    CLATTN_RETURN_IF(ctx, want != CLATTN_PATH_AUTO && want != CLATTN_PATH_FUSED && want != CLATTN_PATH_UNFUSED,
                     CLATTN_ERROR_PATH_UNSUPPORTED,
                     "backward: path '%s' has no backward pass (auto, fused or unfused)",
                     clattn_path_name(want));
    /* CLATTN_PATH forces fused or unfused here too; the forward-only paths it may name
     * for a whole run leave the backward in auto mode */
    clattn_path env_path;
    if (want == CLATTN_PATH_AUTO && ctx->env.path[0] &&
        clattn_path_from_name(ctx->env.path, &env_path) == CLATTN_SUCCESS &&
        (env_path == CLATTN_PATH_FUSED || env_path == CLATTN_PATH_UNFUSED))
        want = env_path;
    clattn__bwd_plan pl;
    char first[512] = "";
    if (want != CLATTN_PATH_UNFUSED) {
        /* the tuned form, then (after a build failure, remembered for the problem's class
         * on ctx) the other tiled form */
        for (int tries = 0; tries < clattn__tform_count(CLATTN__TP_BACKWARD); tries++) {
            make_plan(ctx, &bp, &pl);
            clattn__running_path_set(ctx, CLATTN_PATH_FUSED); /* for CLATTN_FAIL_PATH, as dispatch does */
            st = run_form(ctx, &bp, &pl, event);
            clattn__running_path_set(ctx, CLATTN_PATH_AUTO);
            if (st == CLATTN_SUCCESS) {
                clattn__backward_last_form = pl.form;
                return st;
            }
            if (st != CLATTN_ERROR_BUILD_FAILED || clattn__backward_force_form >= 0 ||
                !clattn__tuning_form_failed(ctx, CLATTN__TP_BACKWARD, p, pl.form))
                break;
        }
        if (want == CLATTN_PATH_FUSED) return st;
        /* outputs are untouched by a failed call, so the fallback starts clean */
        snprintf(first, sizeof first, "%.500s", ctx->last_error);
        clattn__log(ctx, "backward: the tiled forms failed (%s); the unfused form runs", first);
    }
    memset(&pl, 0, sizeof pl);
    pl.form = CLATTN__BWD_UNFUSED;
    pl.commit_unit = 2; /* any offset and span */
    clattn__running_path_set(ctx, CLATTN_PATH_UNFUSED);
    st = run_form(ctx, &bp, &pl, event);
    clattn__running_path_set(ctx, CLATTN_PATH_AUTO);
    if (st == CLATTN_SUCCESS) clattn__backward_last_form = CLATTN__BWD_UNFUSED;
    if (st != CLATTN_SUCCESS && *first) {
        char second[512];
        snprintf(second, sizeof second, "%.500s", ctx->last_error);
        return clattn__fail(ctx, st, "backward: the tiled forms failed (%s), and the unfused form too (%s)",
                            first, second);
    }
    return st;
}

