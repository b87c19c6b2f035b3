/* `clattn tune`'s search: the values tried per parameter by path and form, the
 * constrained and random candidates, and the measuring of one problem class (each
 * candidate checked against the CPU reference, then timed). */
#include "tune.h"

#include "bench_backward.h"
#include "cli_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile sig_atomic_t tune_interrupted;

/* ---- Candidates ------------------------------------------------------------------- */
/* Values tried per parameter, by path and form; the tuning layer's legality check
 * filters them per device. */
typedef struct space {
    const char *param;
    int values[8];
    int n;
} space;

static const space fused_cpu_space[] = {
    {"block_m", {4, 5, 6, 7, 8}, 5},   {"block_n", {32, 48, 64, 96, 128}, 5},
    {"dv_chunk", {1, 2, 4, 8}, 4},     {"row_groups", {1, 2, 4, 8}, 4},
};
static const space fused_gpu_space[] = {
    {"wg", {64, 128, 256}, 3}, {"block_m", {16, 32, 64}, 3}, {"block_n", {16, 32, 64}, 3},
};
static const space fused_gpu_mm_space[] = {
    {"wg", {64, 128, 256}, 3},     {"tc", {8, 16, 32}, 3},      {"block_m", {16, 32, 64, 128}, 4},
    {"block_n", {16, 32, 64}, 3},  {"vw", {1, 4}, 2},
};
static const space decode_cpu_space[] = {
    {"rows", {1, 2, 4, 8}, 4},        {"ktile", {16, 32, 64}, 3},
    {"vw", {8, 16}, 2},               {"wgs_per_cu", {2, 4, 8, 16}, 4},
    {"min_chunk", {128, 256, 512}, 3}, {"max_chunk", {1024, 2048, 4096, 0}, 4},
    {"prefetch", {0, 16, 32, 64}, 4},
};
static const space decode_gpu_space[] = {
    {"rows", {4, 8, 16}, 3},      {"ktile", {64, 128, 256}, 3},    {"wg", {64, 128, 256}, 3},
    {"wgs_per_cu", {4, 8, 16}, 3}, {"min_chunk", {64, 128, 256}, 3},
};
static const space backward_cpu_space[] = {
    {"block_m", {8, 16, 32}, 3},
    {"block_n", {32, 64, 128}, 3},
};
static const space backward_gpu_space[] = {
    {"block_m", {16, 32, 64}, 3},
    {"block_n", {16, 32, 64}, 3},
    {"wg", {64, 128, 256}, 3},
};
static const space unfused_space[] = {
    {"tile", {1, 4, 8, 16}, 4},
    {"softmax_wg", {16, 32, 64, 128}, 4},
};

static const space *space_of(clattn__tpath path, int form, size_t *n)
{
#define S(t)                                                                               \
    *n = sizeof t / sizeof t[0];                                                           \
    return t
    if (path == CLATTN__TP_FUSED) {
        if (form == 2) { S(fused_gpu_mm_space); }
        if (form) { S(fused_gpu_space); }
        S(fused_cpu_space);
    }
    if (path == CLATTN__TP_DECODE) {
        if (form) { S(decode_gpu_space); }
        S(decode_cpu_space);
    }
    if (path == CLATTN__TP_BACKWARD) {
        if (form) { S(backward_gpu_space); }
        S(backward_cpu_space);
    }
    S(unfused_space);
#undef S
}

static int *field(clattn__trow *r, const char *name)
{
    size_t np;
    const clattn__tparam_info *pi = clattn__tparams(&np);
    for (size_t i = 0; i < np; i++)
        if (strcmp(pi[i].name, name) == 0) return clattn__trow_field(r, &pi[i]);
    return NULL;
}

/* The k-th candidate of the constrained set (the path's other forms' generic rows, which
 * tell most where the built-in form is a poor fit, then the base row with one value
 * changed), or false past its end. */
static bool constrained(clattn__tpath path, const clattn__trow *base, int k, clattn__trow *out)
{
    for (int form = 0; form < clattn__tform_count(path); form++) {
        if (form == base->form) continue;
        if (k-- == 0) {
            *out = *base;
            clattn__tuning_apply_form(path, form, out);
            return true;
        }
    }
    size_t n;
    const space *sp = space_of(path, base->form, &n);
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < sp[i].n; j++) {
            clattn__trow r = *base;
            int *f = field(&r, sp[i].param);
            if (!f || *f == sp[i].values[j]) continue;
            if (k-- == 0) {
                *f = sp[i].values[j];
                *out = r;
                return true;
            }
        }
    }
    return false;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A random row of the base row's form: every parameter drawn from its values. */
static void random_row(clattn__tpath path, const clattn__trow *base, uint64_t *rng, clattn__trow *out)
{
    *out = *base;
    size_t n;
    const space *sp = space_of(path, base->form, &n);
    for (size_t i = 0; i < n; i++) {
        int *f = field(out, sp[i].param);
        if (f) *f = sp[i].values[rng_next(rng) % (uint64_t)sp[i].n];
    }
}

static bool same_row(const clattn__trow *a, const clattn__trow *b) { return memcmp(a, b, sizeof *a) == 0; }

/* ---- Measuring -------------------------------------------------------------------- */

/* The path a case runs for tuning path p: the backward pass runs its forward on the fused
 * path and its tiled forms with the fused path forced (no unfused fallback to hide a
 * failing candidate). */
static clattn_path path_id(clattn__tpath p)
{
    return p == CLATTN__TP_DECODE ? CLATTN_PATH_DECODE : p == CLATTN__TP_UNFUSED ? CLATTN_PATH_UNFUSED : CLATTN_PATH_FUSED;
}

/* Does row give the reference's answer on a small case of the class? */
static bool check_row(tuner *t, const attn_case *small, clattn__tpath path, const clattn__trow *row, char *why,
                      size_t whylen)
{
    clattn__tuning_set_candidate(t->ctx, path, row);
    attn_case c = *small;
    c.path = path_id(path);
    attn_case_data *d = NULL;
    clattn_status st = attn_case_data_create(&c, &d);
    if (st == CLATTN_SUCCESS) st = attn_case_run(t->ctx, &c, d, NULL);
    if (path == CLATTN__TP_BACKWARD) {
        /* the forward (O and LSE) as the user's, then the candidate's gradients */
        const bool ok = st == CLATTN_SUCCESS && bench_backward_check(t->ctx, &c, d, why, whylen);
        if (st != CLATTN_SUCCESS)
            snprintf(why, whylen, "forward: %s: %.200s", clattn_status_string(st), clattn_context_last_error(t->ctx));
        attn_case_data_free(d);
        return ok;
    }
    attn_case_result r;
    memset(&r, 0, sizeof r);
    if (st == CLATTN_SUCCESS) st = attn_case_compare(&c, d, &r);
    attn_case_data_free(d);
    if (st != CLATTN_SUCCESS) {
        snprintf(why, whylen, "%s: %.200s", clattn_status_string(st), clattn_context_last_error(t->ctx));
        return false;
    }
    if (!r.ok) snprintf(why, whylen, "wrong answer: %.200s", r.msg);
    return r.ok;
}

/* The median ms of row on the class's timing case (data already on the device); a
 * negative value when a run failed. A warm-up run over `give_up` ms ends it early (its
 * time returned, *gave_up set). */
static double time_row(tuner *t, const attn_case *c, attn_case_data *d, clattn__tpath path,
                       const clattn__trow *row, double give_up, bool *gave_up)
{
    *gave_up = false;
    clattn__tuning_set_candidate(t->ctx, path, row);
    if (path == CLATTN__TP_BACKWARD) {
        /* O and LSE are on the device since tune_class ran the forward; the median of 3
         * after one warm-up (the candidate's kernel build) */
        bench_backward_result br;
        (void)give_up;
        return bench_backward_measure(t->ctx, c, d, 3, 1, &br) == CLATTN_SUCCESS ? br.median : -1;
    }
    cl_command_queue q = clattn_context_cl_queue(t->ctx);
    double ms[7];
    int runs = 0;
    for (int i = -1; i < 7; i++) {
        const double t0 = tune_now_s();
        if (attn_case_run(t->ctx, c, d, NULL) != CLATTN_SUCCESS || clFinish(q) != CL_SUCCESS) return -1;
        const double dt = (tune_now_s() - t0) * 1e3;
        if (i < 0) {
            if (dt > give_up) { /* far slower than the best: not worth the runs */
                *gave_up = true;
                return dt;
            }
            continue;
        }
        ms[runs++] = dt;
        /* at least 3 runs; up to 7 for short ones, while time allows */
        if (runs >= 3 && (dt * (double)runs > 200.0 || tune_now_s() > t->deadline)) break;
    }
    cli_sort_doubles(ms, (size_t)runs);
    return runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
}

/* Tune path on case c until `until`; fills o and appends the class's record (the best
 * row, or the built-in one when nothing beat it clearly). */
void tune_class(tuner *t, clattn__tpath path, const attn_case *c, double until, outcome *o)
{
    clattn_context *ctx = t->ctx;
    const int64_t Dv = attn_case_dv(c);
    clattn__tclass cls;
    clattn__tclass_make(ctx, path, (int)c->dtype, c->D, Dv, c->Lq, c->causal != CLATTN_CAUSAL_NONE,
                        c->Hq / (c->Hkv ? c->Hkv : 1), -1, &cls);
    snprintf(o->label, sizeof o->label, "%s %lldx%lldx%lldx%lldx%lldx%lld%s %s", clattn__tpath_name(path),
             (long long)c->B, (long long)c->Hq, (long long)c->Hkv, (long long)c->Lq, (long long)c->Lk,
             (long long)c->D, c->causal ? " causal" : "", clattn_dtype_name(c->dtype));
    o->default_ms = o->tuned_ms = -1;
    snprintf(o->source, sizeof o->source, "built-in");

    clattn__trow base;
    clattn__tuning_builtin(&ctx->tuning->dev, path, &base, NULL);
    /* the small case: the class's head sizes, dtype, group and masking, few rows */
    attn_case small = *c;
    small.B = 1;
    if (small.Lq > 33) small.Lq = 33;
    if (small.Lk > 77) small.Lk = 77;
    small.seed = 4242;
    small.lse = 1;
    char why[320];
    if (!check_row(t, &small, path, &base, why, sizeof why)) {
        fprintf(stderr, "tune: %s: skipped, the built-in row does not run it (%s)\n", o->label, why);
        clattn__tuning_set_candidate(ctx, path, NULL);
        return;
    }
    attn_case tc = *c;
    tc.path = path_id(path);
    if (path == CLATTN__TP_BACKWARD) tc.lse = 1; /* the backward pass needs the forward's LSE */
    attn_case_data *d = NULL;
    if (attn_case_data_create(&tc, &d) != CLATTN_SUCCESS || attn_case_data_upload(ctx, d) != CLATTN_SUCCESS) {
        fprintf(stderr, "tune: %s: skipped, no memory for the case\n", o->label);
        attn_case_data_free(d);
        clattn__tuning_set_candidate(ctx, path, NULL);
        return;
    }
    bool gave_up;
    if (path == CLATTN__TP_BACKWARD) {
        /* the forward once: the backward pass reads its O and LSE on the device */
        if (attn_case_run(ctx, &tc, d, NULL) != CLATTN_SUCCESS) {
            fprintf(stderr, "tune: %s: skipped, the forward pass failed\n", o->label);
            attn_case_data_free(d);
            clattn__tuning_set_candidate(ctx, path, NULL);
            return;
        }
    }
    o->default_ms = time_row(t, &tc, d, path, &base, 1e30, &gave_up);
    if (o->default_ms < 0) {
        fprintf(stderr, "tune: %s: skipped, the built-in row failed on the timing case\n", o->label);
        attn_case_data_free(d);
        clattn__tuning_set_candidate(ctx, path, NULL);
        return;
    }
    fprintf(stderr, "tune: %s: built-in %.3f ms\n", o->label, o->default_ms);
    clattn__trow best = base;
    double best_ms = o->default_ms;
    clattn__trow seen[256];
    int nseen = 0;
    seen[nseen++] = base;
    /* a candidate is started only when one as long as the longest so far still fits */
    double longest = 0;
    for (int k = 0; !tune_interrupted && tune_now_s() + longest < until && nseen < 256; k++) {
        clattn__trow cand;
        if (!constrained(path, &base, k, &cand)) {
            /* random rows of every form, each form's generic row as the base */
            clattn__trow fb = base;
            const int form = (int)(rng_next(&t->rng) % (uint64_t)clattn__tform_count(path));
            if (form != base.form) clattn__tuning_apply_form(path, form, &fb);
            random_row(path, &fb, &t->rng, &cand);
        }
        bool dup = false;
        for (int i = 0; i < nseen && !dup; i++) dup = same_row(&seen[i], &cand);
        if (dup) {
            if (k > 2000) break; /* the space is exhausted */
            continue;
        }
        seen[nseen++] = cand;
        if (!clattn__tuning_legal(&ctx->tuning->dev, path, &cand, cls.head, why, sizeof why)) continue;
        if (t->max_candidates > 0 && o->tried >= t->max_candidates) break;
        o->tried++;
        const double c0 = tune_now_s();
        if (!check_row(t, &small, path, &cand, why, sizeof why)) {
            fprintf(stderr, "tune: %s: candidate refused (%s)\n", o->label, why);
            if (tune_now_s() - c0 > longest) longest = tune_now_s() - c0;
            continue;
        }
        const double ms = time_row(t, &tc, d, path, &cand, 4 * best_ms, &gave_up);
        char desc[512];
        clattn__tuning_format_record(&ctx->tuning->dev, path, &cls, &cand, 0, 0, desc, sizeof desc);
        const char *params = strstr(desc, "\"params\"");
        fprintf(stderr, "tune: %s: %.3f ms%s %s\n", o->label, ms, gave_up ? " (warm-up; given up)" : "",
                params ? params : "");
        if (ms > 0 && !gave_up && ms < best_ms) {
            best_ms = ms;
            best = cand;
        }
        if (tune_now_s() - c0 > longest) longest = tune_now_s() - c0;
    }
    /* The winner against the built-in row once more, back to back: the first timing of
     * the built-in row may have met a busier machine than the candidates did. */
    if (!same_row(&best, &base) && !tune_interrupted) {
        const double again_default = time_row(t, &tc, d, path, &base, 1e30, &gave_up);
        const double again_best = time_row(t, &tc, d, path, &best, 1e30, &gave_up);
        if (again_default > 0 && again_default < o->default_ms) o->default_ms = again_default;
        if (again_best > 0) best_ms = again_best;
    }
    attn_case_data_free(d);
    clattn__tuning_set_candidate(ctx, path, NULL);
    /* a row other than the built-in one only for a clear gain: run-to-run noise is a few
     * percent on CPUs. The class gets a record either way, so the file says it was tuned. */
    if (!(best_ms < 0.97 * o->default_ms)) {
        best = base;
        best_ms = o->default_ms;
    }
    o->tuned_ms = best_ms;
    snprintf(o->source, sizeof o->source, same_row(&best, &base) ? "built-in kept" : "tuned");
    char (*grown)[1024] = realloc(t->records, (t->nrecords + 1) * sizeof *t->records);
    if (grown) {
        t->records = grown;
        if (clattn__tuning_format_record(&ctx->tuning->dev, path, &cls, &best, best_ms, o->default_ms,
                                         t->records[t->nrecords], sizeof t->records[0]))
            t->nrecords++;
    }
}
