/* `clattn tune`: search the tuning layer's parameter space of each path on one device and
 * write the best rows as records of a tuning file (default: clattn.tuning.json in the
 * cache folder, which every later context on the device reads). Per problem class: the
 * built-in row is timed, then legal candidates, a constrained set first (the path's other
 * form, then the row with one value changed at a time), then random ones while the budget
 * lasts. Each candidate is checked against the CPU reference on a small case of the class
 * before it is timed (warm-up, then the median of at least 3 runs). Interrupted (SIGINT)
 * or out of budget, it still writes what it found. */
#include "support/attn_case.h"
#include "bench_backward.h"
#include "cli_util.h"
#include "commands.h"
#include "core/context.h"
#include "tuning/tuning.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const CMD = "tune";

/* 9 minutes: with the start-up and the writing, a run fits in 10 on a GPU */
#define DEFAULT_BUDGET_S 540.0
#define MAX_CLASSES 64

static void usage(FILE *f)
{
    fprintf(f,
            "usage: clattn tune [--device SPEC] [--budget SECONDS] [--path P] [--shape S | --sweep F]\n"
            "                   [--causal C] [--dtype T] [--max-candidates N] [--out FILE]\n"
            "\n"
            "Time the legal rows of each path's tuning parameters on one device, per problem\n"
            "class, and write the best as records of a tuning file (see the README). Every\n"
            "candidate is checked against the CPU reference before it is timed. Progress goes\n"
            "to stderr; a table of default versus tuned time per class ends the run.\n"
            "\n"
            "  --device SPEC     index, substring of platform/device name, cpu or gpu\n"
            "  --budget SECONDS  time for the whole search (default %.0f)\n"
            "  --path P          fused, decode, unfused, backward or all (default all: fused\n"
            "                    and decode; the unfused and backward paths when named)\n"
            "  --shape B,Hq,Hkv,Lq,Lk,D[,Dv]  one problem to tune (with --causal, --dtype)\n"
            "  --sweep FILE      one problem per line: --shape S [--causal C] [--dtype T]\n"
            "  --max-candidates N  time at most N candidates per class (smoke runs: the\n"
            "                    constrained set comes first, so N small tries it alone)\n"
            "  --out FILE        the tuning file to write (default: clattn.tuning.json in the\n"
            "                    cache folder); its records for other devices and classes stay\n"
            "  -h, --help        this text\n",
            DEFAULT_BUDGET_S);
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct tune_args {
    const char *device, *path, *shape, *sweep, *out, *causal, *dtype;
    double budget;
    int64_t max_candidates; /* per class; 0 = while the budget lasts */
} tune_args;

static int parse_args(int argc, char **argv, tune_args *a, bool *help)
{
    enum { O_DEVICE = 256, O_BUDGET, O_PATH, O_SHAPE, O_SWEEP, O_OUT, O_CAUSAL, O_DTYPE, O_MAXC };
    static const struct option longopts[] = {
        {"device", required_argument, NULL, O_DEVICE}, {"budget", required_argument, NULL, O_BUDGET},
        {"path", required_argument, NULL, O_PATH},     {"shape", required_argument, NULL, O_SHAPE},
        {"sweep", required_argument, NULL, O_SWEEP},   {"out", required_argument, NULL, O_OUT},
        {"causal", required_argument, NULL, O_CAUSAL}, {"dtype", required_argument, NULL, O_DTYPE},
        {"max-candidates", required_argument, NULL, O_MAXC},
        {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    a->budget = DEFAULT_BUDGET_S;
    *help = false;
    cli_getopt_reset();
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case O_DEVICE: a->device = optarg; break;
        case O_BUDGET:
            if (!cli_parse_double(optarg, &a->budget) || a->budget <= 0 || a->budget > 86400) {
                cli_error(CMD, "--budget %s is not a number of seconds in (0, 86400]", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_MAXC:
            if (!cli_parse_int64(optarg, &a->max_candidates) || a->max_candidates < 1 ||
                a->max_candidates > 1000000) {
                cli_error(CMD, "--max-candidates %s is not an integer in 1..1000000", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case O_PATH: a->path = optarg; break;
        case O_SHAPE: a->shape = optarg; break;
        case O_SWEEP: a->sweep = optarg; break;
        case O_OUT: a->out = optarg; break;
        case O_CAUSAL: a->causal = optarg; break;
        case O_DTYPE: a->dtype = optarg; break;
        case 'h': *help = true; return CLI_EXIT_OK;
        default: cli_getopt_error(CMD, c, argv, longopts); return CLI_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_error(CMD, "unexpected argument '%s' (see clattn tune --help)", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    if ((a->causal || a->dtype) && !a->shape) {
        cli_error(CMD, "--causal and --dtype go with --shape (a sweep line carries its own)");
        return CLI_EXIT_USAGE;
    }
    if (a->shape && a->sweep) {
        cli_error(CMD, "--shape and --sweep exclude each other");
        return CLI_EXIT_USAGE;
    }
    if (a->path && strcmp(a->path, "all") != 0 && strcmp(a->path, "fused") != 0 &&
        strcmp(a->path, "decode") != 0 && strcmp(a->path, "unfused") != 0 && strcmp(a->path, "backward") != 0) {
        cli_error(CMD, "--path %s is not fused, decode, unfused, backward or all", a->path);
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}

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
typedef struct tuner {
    clattn_context *ctx;
    double deadline;
    char (*records)[1024]; /* the records written */
    size_t nrecords;
    uint64_t rng;
    int64_t max_candidates; /* per class; 0 = no bound */
} tuner;

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
        const double t0 = now_s();
        if (attn_case_run(t->ctx, c, d, NULL) != CLATTN_SUCCESS || clFinish(q) != CL_SUCCESS) return -1;
        const double dt = (now_s() - t0) * 1e3;
        if (i < 0) {
            if (dt > give_up) { /* far slower than the best: not worth the runs */
                *gave_up = true;
                return dt;
            }
            continue;
        }
        ms[runs++] = dt;
        /* at least 3 runs; up to 7 for short ones, while time allows */
        if (runs >= 3 && (dt * (double)runs > 200.0 || now_s() > t->deadline)) break;
    }
    cli_sort_doubles(ms, (size_t)runs);
    return runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
}

typedef struct outcome {
    char label[96];
    double default_ms, tuned_ms;
    int tried;
    char source[24];
} outcome;

/* Tune path on case c until `until`; fills o and appends the class's record (the best
 * row, or the built-in one when nothing beat it clearly). */
static void tune_class(tuner *t, clattn__tpath path, const attn_case *c, double until, outcome *o)
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
    for (int k = 0; !interrupted && now_s() + longest < until && nseen < 256; k++) {
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
        const double c0 = now_s();
        if (!check_row(t, &small, path, &cand, why, sizeof why)) {
            fprintf(stderr, "tune: %s: candidate refused (%s)\n", o->label, why);
            if (now_s() - c0 > longest) longest = now_s() - c0;
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
        if (now_s() - c0 > longest) longest = now_s() - c0;
    }
    /* The winner against the built-in row once more, back to back: the first timing of
     * the built-in row may have met a busier machine than the candidates did. */
    if (!same_row(&best, &base) && !interrupted) {
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

/* ---- Writing ---------------------------------------------------------------------- */
typedef struct keep_ctx {
    FILE *f;
    const tuner *t;
    const clattn__tdevice *dev;
    int written;
} keep_ctx;

/* Keep an old record unless a new one has its device, path and class (compared as the
 * text the writer makes, which is what an earlier run wrote). */
static void keep_old(void *arg, const char *rec, size_t n)
{
    keep_ctx *k = arg;
    for (size_t i = 0; i < k->t->nrecords; i++) {
        const char *nr = k->t->records[i], *pp = strstr(nr, "\"params\"");
        const size_t key = pp ? (size_t)(pp - nr) : 0;
        if (key && n > key && memcmp(rec, nr, key) == 0) return;
    }
    fprintf(k->f, "%s\n  %.*s", k->written++ ? "," : "", (int)n, rec);
}

static bool write_file(const tuner *t, const char *out)
{
    char *old = NULL;
    size_t old_len = 0;
    FILE *f = fopen(out, "rb");
    if (f) {
        old = malloc(CLATTN__TUNING_FILE_MAX + 1);
        if (old) old_len = fread(old, 1, CLATTN__TUNING_FILE_MAX + 1, f);
        fclose(f);
        if (old_len > CLATTN__TUNING_FILE_MAX) old_len = 0;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", out, (long)getpid());
    f = fopen(tmp, "wb");
    if (!f) {
        free(old);
        cli_error(CMD, "cannot write %s: %s", tmp, strerror(errno));
        return false;
    }
    keep_ctx k = {f, t, &t->ctx->tuning->dev, 0};
    fprintf(f, "{\"clattn_tuning\": 1, \"records\": [");
    if (old && old_len) clattn__tuning_record_spans(old, old_len, keep_old, &k);
    for (size_t i = 0; i < t->nrecords; i++) fprintf(f, "%s\n  %s", k.written++ ? "," : "", t->records[i]);
    fprintf(f, "\n]}\n");
    free(old);
    bool ok = fflush(f) == 0 && !ferror(f);
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, out) != 0) {
        remove(tmp);
        cli_error(CMD, "writing %s failed", out);
        return false;
    }
    return true;
}

/* ---- The command ------------------------------------------------------------------ */
/* One problem: "--shape S [--causal C] [--dtype T]" (a sweep line, or the command line's
 * options put together); blank lines and '#' comments are skipped. */
static int add_case(const char *line, attn_case *cases, int *n, const char *where)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", line);
    char *hash = strchr(buf, '#');
    if (hash) *hash = '\0';
    attn_case c;
    memset(&c, 0, sizeof c);
    bool have_shape = false;
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t\r\n", &save); tok; tok = strtok_r(NULL, " \t\r\n", &save)) {
        char *val = strchr(tok, '=');
        if (val) *val++ = '\0';
        else val = strtok_r(NULL, " \t\r\n", &save);
        if (!val) {
            cli_error(CMD, "%s%s needs a value", where, tok);
            return CLI_EXIT_USAGE;
        }
        if (strcmp(tok, "--shape") == 0) {
            if (!attn_case_parse_shape(val, &c) || c.Hq % c.Hkv != 0 || c.D > 256 || c.Dv > 256) {
                cli_error(CMD, "%s--shape: '%s' is not B,Hq,Hkv,Lq,Lk,D[,Dv] of positive integers "
                          "(Hq a multiple of Hkv, D and Dv up to 256)", where, val);
                return CLI_EXIT_USAGE;
            }
            have_shape = true;
        } else if (strcmp(tok, "--causal") == 0) {
            if (strcmp(val, "none") == 0) c.causal = CLATTN_CAUSAL_NONE;
            else if (strcmp(val, "top-left") == 0) c.causal = CLATTN_CAUSAL_TOP_LEFT;
            else if (strcmp(val, "bottom-right") == 0) c.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
            else {
                cli_error(CMD, "%s--causal: '%s' is not none, top-left or bottom-right", where, val);
                return CLI_EXIT_USAGE;
            }
        } else if (strcmp(tok, "--dtype") == 0) {
            if (strcmp(val, "f32") == 0) c.dtype = CLATTN_F32;
            else if (strcmp(val, "f16") == 0) c.dtype = CLATTN_F16;
            else if (strcmp(val, "bf16") == 0) c.dtype = CLATTN_BF16;
            else {
                cli_error(CMD, "%s--dtype: '%s' is not f32, f16 or bf16", where, val);
                return CLI_EXIT_USAGE;
            }
        } else {
            cli_error(CMD, "%s'%s': a problem takes --shape and optionally --causal and --dtype", where, tok);
            return CLI_EXIT_USAGE;
        }
    }
    if (!have_shape) {
        if (c.causal || c.dtype) {
            cli_error(CMD, "%s--causal and --dtype need --shape", where);
            return CLI_EXIT_USAGE;
        }
        return CLI_EXIT_OK; /* blank or comment */
    }
    if (*n >= MAX_CLASSES) {
        cli_error(CMD, "%smore than %d problems", where, MAX_CLASSES);
        return CLI_EXIT_USAGE;
    }
    c.out_dtype = c.dtype;
    c.seed = 77;
    cases[(*n)++] = c;
    return CLI_EXIT_OK;
}

int cmd_tune(int argc, char **argv)
{
    tune_args a;
    bool help;
    int rc = parse_args(argc, argv, &a, &help);
    if (rc != CLI_EXIT_OK) return rc;
    if (help) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    const double start = now_s();
    attn_case cases[MAX_CLASSES];
    int ncases = 0;
    char line[512];
    if (a.shape) {
        snprintf(line, sizeof line, "--shape %s%s%s%s%s", a.shape, a.causal ? " --causal " : "",
                 a.causal ? a.causal : "", a.dtype ? " --dtype " : "", a.dtype ? a.dtype : "");
        if ((rc = add_case(line, cases, &ncases, "")) != CLI_EXIT_OK) return rc;
    } else if (a.sweep) {
        FILE *f = fopen(a.sweep, "r");
        if (!f) {
            cli_error(CMD, "cannot open %s: %s", a.sweep, strerror(errno));
            return CLI_EXIT_FAILURE;
        }
        int lineno = 0;
        while (fgets(line, sizeof line, f)) {
            char where[600];
            snprintf(where, sizeof where, "%s:%d: ", a.sweep, ++lineno);
            if ((rc = add_case(line, cases, &ncases, where)) != CLI_EXIT_OK) {
                fclose(f);
                return rc;
            }
        }
        fclose(f);
    } else {
        /* the default classes: prefill full and causal, and GQA decode */
        static const char *const defaults[] = {
            "--shape 1,8,8,1024,1024,64",
            "--shape 1,8,8,1024,1024,64 --causal bottom-right",
            "--shape 1,32,8,1,4096,128",
        };
        for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
            if ((rc = add_case(defaults[i], cases, &ncases, "")) != CLI_EXIT_OK) return rc;
    }

    size_t index;
    if (clattn_device_find(a.device, &index) != CLATTN_SUCCESS) {
        cli_error(CMD, "no OpenCL device matches '%s' (see clattn devices)", a.device ? a.device : "(default)");
        return CLI_EXIT_FAILURE;
    }
    clattn_context *ctx = NULL;
    if (cli_open_device(CMD, index, &ctx, NULL) != CLATTN_SUCCESS) return CLI_EXIT_FAILURE;
    char out[4096];
    if (a.out) {
        snprintf(out, sizeof out, "%s", a.out);
    } else if (ctx->env.cache_dir[0]) {
        snprintf(out, sizeof out, "%s/clattn.tuning.json", ctx->env.cache_dir);
    } else {
        clattn_context_free(ctx);
        cli_error(CMD, "no cache folder (CLATTN_CACHE_DIR=off and no HOME): give --out FILE");
        return CLI_EXIT_USAGE;
    }

    /* which (path, case) pairs: each path on the cases it takes */
    struct job {
        clattn__tpath path;
        int c;
    } jobs[4 * MAX_CLASSES];
    int njobs = 0;
    const clattn__tpath paths[] = {CLATTN__TP_DECODE, CLATTN__TP_FUSED, CLATTN__TP_UNFUSED, CLATTN__TP_BACKWARD};
    for (int i = 0; i < ncases; i++) {
        for (int j = 0; j < 4; j++) {
            const clattn__tpath p = paths[j];
            if (a.path && strcmp(a.path, "all") != 0 && strcmp(a.path, clattn__tpath_name(p)) != 0) continue;
            clattn__tclass cls;
            clattn__tclass_make(ctx, CLATTN__TP_FUSED, (int)cases[i].dtype, cases[i].D, attn_case_dv(&cases[i]),
                                cases[i].Lq, false, 1, -1, &cls);
            /* decode tunes decode classes; the others prefill ones, unless asked for alone */
            const bool asked = a.path && strcmp(a.path, "all") != 0;
            if (p == CLATTN__TP_DECODE && !cls.decode) continue;
            if (p != CLATTN__TP_DECODE && cls.decode && !asked) continue;
            /* the unfused path is the fallback, and the backward pass a training call:
             * tuned only when asked for */
            if ((p == CLATTN__TP_UNFUSED || p == CLATTN__TP_BACKWARD) && !asked) continue;
            jobs[njobs].path = p;
            jobs[njobs++].c = i;
        }
    }
    if (njobs == 0) {
        clattn_context_free(ctx);
        cli_error(CMD, "no path of --path takes the given problems");
        return CLI_EXIT_USAGE;
    }

    interrupted = 0;
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);

    tuner t = {ctx, start + a.budget, NULL, 0, 0x9e3779b97f4a7c15ull, a.max_candidates};
    outcome *res = calloc((size_t)njobs, sizeof *res);
    if (!res) {
        sigaction(SIGINT, &old_sa, NULL);
        clattn_context_free(ctx);
        cli_error(CMD, "out of memory");
        return CLI_EXIT_FAILURE;
    }
    fprintf(stderr, "tune: %s, %d class(es), budget %.0f s, writing %s\n", ctx->props.name, njobs, a.budget, out);
    int done = 0;
    for (int j = 0; j < njobs && !interrupted; j++) {
        const double now = now_s();
        if (now >= t.deadline) break;
        /* an equal share of what is left, keeping a little for the writing */
        const double until = now + (t.deadline - now) * 0.97 / (double)(njobs - j);
        tune_class(&t, jobs[j].path, &cases[jobs[j].c], until, &res[j]);
        done = j + 1;
    }
    sigaction(SIGINT, &old_sa, NULL);
    if (interrupted) fprintf(stderr, "tune: interrupted; writing what was found\n");
    else if (done < njobs) fprintf(stderr, "tune: out of budget; writing what was found\n");

    const bool wrote = write_file(&t, out);
    printf("%-44s %12s %12s %8s %s\n", "class", "default ms", "tuned ms", "speedup", "row");
    for (int j = 0; j < done; j++) {
        if (res[j].default_ms < 0) {
            printf("%-44s %12s %12s %8s %s\n", res[j].label, "-", "-", "-", "skipped");
            continue;
        }
        printf("%-44s %12.3f %12.3f %7.2fx %s (%d tried)\n", res[j].label, res[j].default_ms, res[j].tuned_ms,
               res[j].default_ms / res[j].tuned_ms, res[j].source, res[j].tried);
    }
    printf("%zu record(s) written to %s in %.1f s\n", wrote ? t.nrecords : 0, out, now_s() - start);
    free(res);
    free(t.records);
    clattn_context_free(ctx);
    return wrote ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
