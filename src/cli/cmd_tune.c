/* `clattn tune`: search the tuning layer's parameter space of each path on one device and
 * write the best rows as records of a tuning file (default: clattn.tuning.json in the
 * cache folder, which every later context on the device reads). Per problem class: the
 * built-in row is timed, then legal candidates, a constrained set first (the path's other
 * form, then the row with one value changed at a time), then random ones while the budget
 * lasts. Each candidate is checked against the CPU reference on a small case of the class
 * before it is timed (warm-up, then the median of at least 3 runs). Interrupted (SIGINT)
 * or out of budget, it still writes what it found. */
#include "tune.h"

#include "bench_backward.h"
#include "cli_util.h"
#include "commands.h"

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

static void on_sigint(int sig)
{
    (void)sig;
    tune_interrupted = 1;
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
    if (cli_no_operands(CMD, argc, argv, " (see clattn tune --help)") != CLI_EXIT_OK)
        return CLI_EXIT_USAGE;
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
    int choice;
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
            if (!cli_choose(CMD, where, "--causal", val, cli_causal_modes,
                            "none, top-left or bottom-right", &choice))
                return CLI_EXIT_USAGE;
            c.causal = (clattn_causal)choice;
        } else if (strcmp(tok, "--dtype") == 0) {
            if (!cli_choose(CMD, where, "--dtype", val, cli_dtypes, "f32, f16 or bf16", &choice))
                return CLI_EXIT_USAGE;
            c.dtype = (clattn_dtype)choice;
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
    if (rc != CLI_EXIT_OK || help) return cli_parse_stop(rc, help, usage);
    const double start = tune_now_s();
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

    tune_interrupted = 0;
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
    for (int j = 0; j < njobs && !tune_interrupted; j++) {
        const double now = tune_now_s();
        if (now >= t.deadline) break;
        /* an equal share of what is left, keeping a little for the writing */
        const double until = now + (t.deadline - now) * 0.97 / (double)(njobs - j);
        tune_class(&t, jobs[j].path, &cases[jobs[j].c], until, &res[j]);
        done = j + 1;
    }
    sigaction(SIGINT, &old_sa, NULL);
    if (tune_interrupted) fprintf(stderr, "tune: interrupted; writing what was found\n");
    else if (done < njobs) fprintf(stderr, "tune: out of budget; writing what was found\n");

    const bool wrote = tune_write_file(&t, out);
    printf("%-44s %12s %12s %8s %s\n", "class", "default ms", "tuned ms", "speedup", "row");
    for (int j = 0; j < done; j++) {
        if (res[j].default_ms < 0) {
            printf("%-44s %12s %12s %8s %s\n", res[j].label, "-", "-", "-", "skipped");
            continue;
        }
        printf("%-44s %12.3f %12.3f %7.2fx %s (%d tried)\n", res[j].label, res[j].default_ms, res[j].tuned_ms,
               res[j].default_ms / res[j].tuned_ms, res[j].source, res[j].tried);
    }
    printf("%zu record(s) written to %s in %.1f s\n", wrote ? t.nrecords : 0, out, tune_now_s() - start);
    free(res);
    free(t.records);
    clattn_context_free(ctx);
    return wrote ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
