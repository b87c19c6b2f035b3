/* clattn bench: measured attention throughput on one or every device and path, for the
 * shapes given (--shape) or a sweep (--sweep FILE, one line of bench options per case;
 * the built-in default sweep when neither is given). Inputs live on the device (cl_mem),
 * so only the attention call is timed: warm-up runs, then timed runs each ended by
 * clFinish, reported as median, min and max. Prints a table and, with --json, one JSON
 * object per case (SPEC §2). Cases reuse the tests' problem definitions (attn_case). */
#include "support/attn_case.h"
#include "cli_util.h"
#include "bench_backward.h"
#include "commands.h"
#include "cp_case.h"
#include "peak.h"
#include "kv_case.h"
#include "bench_paged.h"
#include "paged_case.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const CMD = "bench";

/* The default sweep: prefill and decode, f32 and f16, head sizes 64 and 128, causal and
 * not (the same lines as bench/default.sweep). */
static const char *const default_sweep[] = {
    "--shape 1,8,8,1024,1024,64 --dtype f32",
    "--shape 1,8,8,1024,1024,64 --dtype f32 --causal bottom-right",
    "--shape 1,8,8,1024,1024,64 --dtype f16",
    "--shape 1,8,8,1024,1024,128 --dtype f32",
    "--shape 1,8,8,1024,1024,128 --dtype f16 --causal bottom-right",
    "--shape 1,32,32,1,8192,128 --dtype f32",
    "--shape 1,32,32,1,8192,128 --dtype f16",
    "--shape 1,32,8,1,8192,128 --dtype f32",
    "--shape 1,32,32,1,8192,64 --dtype f16",
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: clattn bench [--json FILE] [--device SPEC|all] [--path P|all]\n"
            "                    [--shape B,Hq,Hkv,Lq,Lk,D[,Dv]] [--causal top-left|bottom-right]\n"
            "                    [--dtype f32|f16|bf16] [--kv-quant none|f32|f16|int8|int4|tq4|tq3|tq2]\n"
            "                    [--runs N] [--warmup N]\n"
            "                    [--sweep FILE] [--backward]\n"
            "                    [--paged PS[,SEED]] [--ragged MIN,MAX] [--cascade P,S] [--varlen MIN,MAX]\n"
            "                    [--context-parallel ring|zigzag|ulysses]   (under mpirun)\n"
            "\n"
            "Times clattn_attention with inputs already on the device: --warmup runs\n"
            "(default 2), then --runs timed runs (default: as many as fit in about 3 s,\n"
            "from 3 to 30), each ended by clFinish. Reports median/min/max ms, GFLOP/s\n"
            "(2*(D+Dv) per unmasked query-key pair) and GB/s (Q, K, V and O moved once).\n"
            "Without --shape or --sweep, runs the default sweep (bench/default.sweep).\n"
            "--sweep FILE: one case per line, written as bench options (# comments).\n"
            "--path all runs every path of this build; a path that cannot run a case\n"
            "is listed as n/a. --json FILE writes one JSON object per case (JSON Lines).\n"
            "--kv-quant F: K and V are appended once to a KV cache of format F (not timed),\n"
            "then attention over the cache is timed (path kv-cache; --path is not used);\n"
            "GB/s counts K and V at the cache's size.\n"
            "--backward: after each forward case, also time clattn_attention_backward on\n"
            "it (path bwd; GFLOP/s counts 2.5x the forward's FLOPs, FlashAttention-2's\n"
            "convention) and print its time over the forward's.\n"
            "Serving cases time two ways of the same work, run by run interleaved, and print\n"
            "both rows and their ratio (dtype f32 inputs; K/V format from --kv-quant, f16\n"
            "when none):\n"
            "--paged PS[,SEED]: decode (Lq = 1) over a paged KV pool with pages of PS tokens\n"
            "placed in an order shuffled by SEED (row paged:PS) against the same batch in\n"
            "the contiguous KV cache (row kv:F); --ragged MIN,MAX spreads the B sequences'\n"
            "lengths evenly from MIN to MAX (the shape's Lk is then MAX).\n"
            "--cascade P,S: B sequences sharing a P-token prefix plus S own tokens each,\n"
            "decode: cascade attention (row cascade) against one paged call in which every\n"
            "sequence reads its full keys (row paged); pages of --paged PS (default 16).\n"
            "--varlen MIN,MAX: ragged prefill of B sequences of lengths MIN..MAX (spread\n"
            "evenly) packed without padding in one clattn_attention_varlen call (row\n"
            "varlen) against one clattn_attention call per sequence on the fused path (row\n"
            "fused*n); the shape gives B, Hq, Hkv and D (its Lq and Lk are not used).\n"
            "--context-parallel S: under mpirun in an MPI build, time one --shape split over\n"
            "the ranks with scheme S; per rank: total, compute, time transfers took, time\n"
            "waiting on them, time in status agreements, overlap (the part of the\n"
            "transfer time hidden behind compute), the work the scheme gives the rank\n"
            "(GFLOP) and the CPU time its process used.\n");
}

static bool parse_dtype(const char *s, clattn_dtype *dt)
{
    if (strcmp(s, "f32") == 0) *dt = CLATTN_F32;
    else if (strcmp(s, "f16") == 0) *dt = CLATTN_F16;
    else if (strcmp(s, "bf16") == 0) *dt = CLATTN_BF16;
    else return false;
    return true;
}

/* Parse bench options from argv into o (used for the command line and each sweep line).
 * Returns CLI_EXIT_OK, or prints one error line and returns CLI_EXIT_USAGE; *help is set
 * for --help. */
static int parse_args(int argc, char **argv, bench_args *o, bool *help, const char *where)
{
    static const struct option longopts[] = {
        {"json", required_argument, NULL, 'j'},   {"device", required_argument, NULL, 'd'},
        {"path", required_argument, NULL, 'p'},   {"shape", required_argument, NULL, 's'},
        {"causal", required_argument, NULL, 'c'}, {"dtype", required_argument, NULL, 't'},
        {"kv-quant", required_argument, NULL, 'k'}, {"runs", required_argument, NULL, 'r'},
        {"warmup", required_argument, NULL, 'w'}, {"sweep", required_argument, NULL, 'f'},
        {"backward", no_argument, NULL, 'b'},
        {"paged", required_argument, NULL, 'P'},  {"ragged", required_argument, NULL, 'R'},
        {"cascade", required_argument, NULL, 'C'}, {"varlen", required_argument, NULL, 'V'},
        {"context-parallel", required_argument, NULL, 'x'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    cli_getopt_reset();
    int ch;
    int64_t n;
    while ((ch = getopt_long(argc, argv, ":j:d:p:s:c:t:k:r:w:f:hbP:R:C:V:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'j': o->json = optarg; break;
        case 'd': o->device = optarg; break;
        case 'p': o->path = optarg; break;
        case 'f': o->sweep = optarg; break;
        case 's':
            if (!attn_case_parse_shape(optarg, &o->spec.c)) {
                cli_error(CMD, "%s--shape: '%s' is not B,Hq,Hkv,Lq,Lk,D[,Dv] of positive integers",
                          where, optarg);
                return CLI_EXIT_USAGE;
            }
            o->have_shape = true;
            break;
        case 'c':
            if (strcmp(optarg, "top-left") == 0) o->spec.c.causal = CLATTN_CAUSAL_TOP_LEFT;
            else if (strcmp(optarg, "bottom-right") == 0) o->spec.c.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
            else if (strcmp(optarg, "none") == 0) o->spec.c.causal = CLATTN_CAUSAL_NONE;
            else {
                cli_error(CMD, "%s--causal: '%s' is not top-left, bottom-right or none", where, optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 't':
            if (!parse_dtype(optarg, &o->spec.c.dtype)) {
                cli_error(CMD, "%s--dtype: '%s' is not f32, f16 or bf16", where, optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 'k': {
            bool quant;
            clattn_kv_format f;
            if (!kv_parse_quant(optarg, &quant, &f)) {
                cli_error(CMD, "%s--kv-quant: '%s' is not none, f32, f16, int8, int4, tq4, tq3 or tq2",
                          where, optarg);
                return CLI_EXIT_USAGE;
            }
            snprintf(o->spec.kv_quant, sizeof o->spec.kv_quant, "%s", optarg);
            break;
        }
        case 'r':
        case 'w':
            if (!cli_parse_int64(optarg, &n) || n < (ch == 'r' ? 1 : 0) || n > 10000) {
                cli_error(CMD, "%s--%s: '%s' is not a count from %d to 10000", where,
                          ch == 'r' ? "runs" : "warmup", optarg, ch == 'r' ? 1 : 0);
                return CLI_EXIT_USAGE;
            }
            if (ch == 'r') o->runs = (long)n;
            else o->warmup = (long)n;
            break;
        case 'b': o->backward = true; break;
        case 'P': {
            char err[128];
            if (!paged_parse(optarg, &o->spec.paged_ps, &o->spec.paged_seed, err, sizeof err)) {
                cli_error(CMD, "%s--paged %s", where, err);
                return CLI_EXIT_USAGE;
            }
            break;
        }
        case 'R':
        case 'C':
        case 'V': {
            int64_t a = 0, b = 0;
            const char *comma = strchr(optarg, ',');
            char first[32];
            const size_t n1 = comma ? (size_t)(comma - optarg) : 0;
            bool ok = comma && n1 < sizeof first;
            if (ok) {
                memcpy(first, optarg, n1);
                first[n1] = '\0';
                ok = cli_parse_int64(first, &a) && cli_parse_int64(comma + 1, &b) && a >= 0 && b >= 0 &&
                     (ch == 'C' ? a > 0 : a >= 1 && b >= a) && b <= (int64_t)1 << 24;
            }
            const char *name = ch == 'R' ? "ragged" : ch == 'C' ? "cascade" : "varlen";
            if (!ok) {
                cli_error(CMD, "%s--%s: '%s' is not %s", where, name, optarg,
                          ch == 'C' ? "PREFIX,SUFFIX with PREFIX >= 1" : "MIN,MAX with 1 <= MIN <= MAX");
                return CLI_EXIT_USAGE;
            }
            if (ch == 'R') {
                o->spec.ragged_min = a;
                o->spec.ragged_max = b;
            } else if (ch == 'C') {
                o->spec.cascade_prefix = a;
                o->spec.cascade_suffix = b;
            } else {
                o->spec.varlen_min = a;
                o->spec.varlen_max = b;
            }
            break;
        }
        case 'x':
            if (cp_check_args(CMD, optarg, false, false, false)) return CLI_EXIT_USAGE;
            o->context_parallel = optarg;
            break;
        case 'h': *help = true; return CLI_EXIT_OK;
        default: cli_getopt_error(CMD, ch, argv, longopts); return CLI_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_error(CMD, "%sunexpected argument '%s'", where, argv[optind]);
        return CLI_EXIT_USAGE;
    }
    /* the serving cases: one kind per case, and what each needs */
    const bench_spec *sp = &o->spec;
    const int kinds = (sp->paged_ps && !sp->cascade_prefix) + (sp->cascade_prefix > 0) + (sp->varlen_max > 0);
    if (kinds > 1) {
        cli_error(CMD, "%s--paged, --cascade and --varlen are separate cases (--cascade takes --paged for its page size)",
                  where);
        return CLI_EXIT_USAGE;
    }
    if (sp->ragged_max && !sp->paged_ps) {
        cli_error(CMD, "%s--ragged goes with --paged", where);
        return CLI_EXIT_USAGE;
    }
    if (sp->paged_ps && !sp->cascade_prefix && o->have_shape && sp->c.Lq != 1 && sp->c.B != 1) {
        cli_error(CMD, "%s--paged times decode: the shape's Lq must be 1", where);
        return CLI_EXIT_USAGE;
    }
    if (sp->cascade_prefix && sp->cascade_prefix % (sp->paged_ps ? sp->paged_ps : 16)) {
        cli_error(CMD, "%s--cascade: the prefix length must be a multiple of the page size", where);
        return CLI_EXIT_USAGE;
    }
    if (bench_serving_wanted(sp) && strcmp(sp->kv_quant, "int4") == 0) {
        cli_error(CMD, "%sint4 keys are not stored in pages; use int8 or tq4", where);
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}

/* Split a sweep line into words and parse them as bench options for one case. */
int cmd_bench_parse_line(const char *line, const bench_args *base, bench_spec *out, const char *where)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", line);
    char *hash = strchr(buf, '#');
    if (hash) *hash = '\0';
    char *words[40] = {"bench"};
    int argc = 1;
    for (char *tok = strtok(buf, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) {
        if (argc == 39) {
            cli_error(CMD, "%stoo many words", where);
            return CLI_EXIT_USAGE;
        }
        words[argc++] = tok;
    }
    if (argc == 1) return -1; /* blank or comment */
    bench_args o = *base;
    o.have_shape = false;
    bool help = false;
    int rc = parse_args(argc, words, &o, &help, where);
    if (rc != CLI_EXIT_OK) return rc;
    if (!o.have_shape || help || o.json != base->json || o.device != base->device ||
        o.path != base->path || o.sweep != base->sweep) {
        cli_error(CMD, "%sa sweep line takes --shape and optionally --causal, --dtype, --kv-quant", where);
        return CLI_EXIT_USAGE;
    }
    *out = o.spec;
    return CLI_EXIT_OK;
}

/* The path a measurement ran on; CLATTN_PATH_COUNT_ marks attention over a KV cache. */
static const char *path_label(clattn_path p)
{
    if (p == CLATTN_PATH_COUNT_ + 1) return "backward"; /* --backward's rows */
    return p == CLATTN_PATH_COUNT_ ? "kv-cache" : clattn_path_name(p);
}

static const char *causal_name(clattn_causal c)
{
    return c == CLATTN_CAUSAL_TOP_LEFT ? "top-left" : c == CLATTN_CAUSAL_BOTTOM_RIGHT ? "bottom-right" : "none";
}

typedef struct measured {
    double median, min, max, gflops, gbps;
    long runs;
    uint64_t device_bytes;
    clattn_path path;
    double peak_gflops, peak_gbps; /* the device's measured peak (--device all), or 0 */
} measured;

/* --device all: every result is kept for the side-by-side table printed at the end. */
typedef struct bench_row {
    size_t spec, device;
    clattn_path want;
    char path[24];
    measured m;
} bench_row;
typedef struct bench_table {
    bench_row *rows;
    size_t n, cap;
    char (*names)[128]; /* device names by index */
} bench_table;

static void table_add(bench_table *t, size_t spec, size_t device, clattn_path want, const char *path,
                      const measured *m)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        bench_row *r = realloc(t->rows, cap * sizeof *r);
        if (!r) return; /* the table loses a row; the line above was printed already */
        t->rows = r;
        t->cap = cap;
    }
    bench_row *r = &t->rows[t->n++];
    r->spec = spec;
    r->device = device;
    r->want = want;
    snprintf(r->path, sizeof r->path, "%s", path);
    r->m = *m;
}

/* One block per case and requested path, one line per device: time, throughput, the
 * fraction of that device's own peak, and the time over the fastest device's. */
static void table_print(const bench_table *t, const bench_spec *specs)
{
    if (t->n == 0) return;
    printf("\nside by side: %% of each device's measured peak (clattn devices --peak); "
           "x fastest = median time / the fastest device's\n");
    bool *shown = calloc(t->n, sizeof *shown);
    if (!shown) return;
    for (size_t i = 0; i < t->n; i++) {
        if (shown[i]) continue;
        const bench_row *a = &t->rows[i];
        const attn_case *c = &specs[a->spec].c;
        double best = 0.0;
        for (size_t j = i; j < t->n; j++)
            if (t->rows[j].spec == a->spec && t->rows[j].want == a->want &&
                (best == 0.0 || t->rows[j].m.median < best))
                best = t->rows[j].m.median;
        printf("case %lld,%lld,%lld,%lld,%lld,%lld,%lld %s %s%s%s, path %s\n", (long long)c->B, (long long)c->Hq,
               (long long)c->Hkv, (long long)c->Lq, (long long)c->Lk, (long long)c->D,
               (long long)attn_case_dv(c), causal_name(c->causal), clattn_dtype_name(c->dtype),
               strcmp(specs[a->spec].kv_quant, "none") ? " kv:" : "",
               strcmp(specs[a->spec].kv_quant, "none") ? specs[a->spec].kv_quant : "", clattn_path_name(a->want));
        printf("  %-3s %-44s %-9s %10s %9s %8s %7s %7s %9s\n", "#", "device", "path", "median_ms", "GFLOP/s",
               "GB/s", "%FLOP", "%BW", "x fastest");
        for (size_t j = i; j < t->n; j++) {
            const bench_row *r = &t->rows[j];
            if (r->spec != a->spec || r->want != a->want) continue;
            shown[j] = true;
            char pf[16] = "-", pb[16] = "-";
            if (r->m.peak_gflops > 0) snprintf(pf, sizeof pf, "%.1f", 100.0 * r->m.gflops / r->m.peak_gflops);
            if (r->m.peak_gbps > 0) snprintf(pb, sizeof pb, "%.1f", 100.0 * r->m.gbps / r->m.peak_gbps);
            printf("  %-3zu %-44.44s %-9s %10.3f %9.1f %8.2f %7s %7s %9.2f\n", r->device, t->names[r->device],
                   r->path, r->m.median, r->m.gflops, r->m.gbps, pf, pb, r->m.median / best);
        }
    }
    free(shown);
}

/* One timed call: attention on the case's tensors, or over the KV cache kp when set. */
static clattn_status run_once(clattn_context *ctx, const attn_case *c, attn_case_data *d, kv_prepared *kp)
{
    if (!kp) return attn_case_run(ctx, c, d, NULL);
    clattn_tensor q, k, v, o;
    attn_case_tensors(d, &q, &k, &v, &o);
    return kv_run(ctx, kp, &q, &o, NULL);
}

/* Time case c on ctx with its data on the device (over a KV cache when kp is set). */
static clattn_status measure(clattn_context *ctx, const attn_case *c, attn_case_data *d,
                             const bench_args *o, kv_prepared *kp, measured *m)
{
    cl_command_queue q = clattn_context_cl_queue(ctx);
    clattn_status st;
    clattn_context_reset_peak_device_bytes(ctx);
    const uint64_t before = clattn_context_peak_device_bytes(ctx);
    for (long i = 0; i < (o->warmup < 1 ? 1 : o->warmup); i++) { /* one at least: builds */
        if ((st = run_once(ctx, c, d, kp)) != CLATTN_SUCCESS) return st;
        clFinish(q);
    }
    m->path = clattn_context_last_path(ctx);
    m->device_bytes = clattn_context_peak_device_bytes(ctx) - before;
    double t[30];
    long runs = o->runs;
    for (long i = 0; i < (runs ? runs : 30); i++) {
        double t0 = cli_now_ms();
        if ((st = run_once(ctx, c, d, kp)) != CLATTN_SUCCESS) return st;
        clFinish(q);
        double dt = cli_now_ms() - t0;
        if (i < 30) t[i] = dt;
        m->runs = i + 1;
        /* default: stop after ~3 s once 3 runs are in */
        if (!runs && i >= 2) {
            double total = 0;
            for (long j = 0; j <= i; j++) total += t[j];
            if (total > 3000) break;
        }
    }
    long n = m->runs < 30 ? m->runs : 30;
    cli_sort_doubles(t, (size_t)n);
    m->median = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    m->min = t[0];
    m->max = t[n - 1];
    const double flops = attn_case_flops(c, d);
    const int64_t Dv = attn_case_dv(c);
    const double es = (double)clattn_dtype_size(c->dtype), eo = (double)clattn_dtype_size(c->out_dtype);
    const double kv_bytes = kp ? (double)clattn_kv_cache_bytes(kp->cache)
                               : es * (double)(c->B * c->Hkv * c->Lk * (c->D + Dv));
    const double bytes = es * (double)(c->B * c->Hq * c->Lq * c->D) + kv_bytes + eo * (double)(c->B * c->Hq * c->Lq * Dv);
    m->gflops = flops / (m->median * 1e6);
    m->gbps = bytes / (m->median * 1e6);
    return CLATTN_SUCCESS;
}

static void json_line(FILE *f, const clattn_device_props *p, const bench_spec *s, clattn_path want,
                      const measured *m)
{
    const attn_case *c = &s->c;
    fprintf(f, "{\"device\": ");
    cli_json_string(f, p->name);
    fprintf(f, ", \"platform\": ");
    cli_json_string(f, p->platform_name);
    fprintf(f, ", \"driver\": ");
    cli_json_string(f, p->driver_version);
    fprintf(f,
            ", \"path\": \"%s\", \"requested_path\": \"%s\", \"shape\": {\"B\": %lld, \"Hq\": %lld, "
            "\"Hkv\": %lld, \"Lq\": %lld, \"Lk\": %lld, \"D\": %lld, \"Dv\": %lld}, \"causal\": \"%s\", "
            "\"dtype\": \"%s\", \"kv_quant\": \"%s\", \"median_ms\": %.4f, \"min_ms\": %.4f, "
            "\"max_ms\": %.4f, \"runs\": %ld, \"gflops\": %.2f, \"gbps\": %.2f, \"device_bytes\": %llu",
            path_label(m->path), clattn_path_name(want), (long long)c->B, (long long)c->Hq,
            (long long)c->Hkv, (long long)c->Lq, (long long)c->Lk, (long long)c->D,
            (long long)attn_case_dv(c), causal_name(c->causal), clattn_dtype_name(c->dtype),
            s->kv_quant, m->median, m->min, m->max, m->runs, m->gflops, m->gbps,
            (unsigned long long)m->device_bytes);
    if (m->peak_gflops > 0)
        fprintf(f, ", \"peak_gflops\": %.2f, \"peak_gbps\": %.2f", m->peak_gflops, m->peak_gbps);
    fprintf(f, "}\n");
    fflush(f);
}

static int bench_device(size_t index, const bench_spec *specs, size_t nspecs, const bench_args *o,
                        FILE *json, size_t *done, size_t total, int *failures, bench_table *tab)
{
    clattn_device_props props;
    clattn_context *ctx;
    if (cli_open_device(CMD, index, &ctx, &props) != CLATTN_SUCCESS) return CLI_EXIT_FAILURE;
    printf("device %zu: %s | %s | driver %s\n", index, props.name, props.platform_name,
           props.driver_version);
    cli_peak peak = {0, 0, false};
    if (tab) {
        snprintf(tab->names[index], sizeof tab->names[index], "%s", props.name);
        char err[512];
        if (cli_peak_get(ctx, true, &peak, err, sizeof err) == CLATTN_SUCCESS)
            printf("peak %.1f GFLOP/s, %.1f GB/s%s\n", peak.gflops, peak.gbps, peak.cached ? " (cached)" : "");
        else /* the table then shows no fractions for this device; the timings stand */
            printf("peak not measured: %s\n", err);
    }
    printf("%-8s %-26s %-12s %-5s %9s %9s %9s %5s %9s %8s %10s\n", "path", "shape B,Hq,Hkv,Lq,Lk,D,Dv",
           "causal", "dtype", "median_ms", "min_ms", "max_ms", "runs", "GFLOP/s", "GB/s", "dev_MiB");
    clattn_path paths[CLATTN_PATH_COUNT_];
    int npaths = 0;
    if (strcmp(o->path, "all") == 0) {
        for (int p = 1; p < CLATTN_PATH_COUNT_; p++)
            if (clattn_path_available((clattn_path)p)) paths[npaths++] = (clattn_path)p;
    } else {
        clattn_path_from_name(o->path, &paths[npaths++]);
    }
    for (size_t i = 0; i < nspecs; i++) {
        if (bench_serving_wanted(&specs[i])) {
            /* the serving cases time their two ways themselves (bench_paged.c) */
            ++*done;
            const bench_serving_ctx bc = {ctx, &props, json, o->runs, o->warmup};
            const clattn_status sst = bench_serving_run(&bc, &specs[i]);
            if (sst != CLATTN_SUCCESS) {
                printf("%-8s FAILED: %s: %s\n", "serving", clattn_status_string(sst), clattn_context_last_error(ctx));
                ++*failures;
            }
            continue;
        }
        attn_case c = specs[i].c;
        c.seed = 42;
        if (o->backward) c.lse = 1; /* the backward pass needs the forward's LSE */
        attn_case_data *d = NULL;
        clattn_status st = attn_case_data_create(&c, &d);
        if (st == CLATTN_SUCCESS) st = attn_case_data_upload(ctx, d);
        char shape[64];
        snprintf(shape, sizeof shape, "%lld,%lld,%lld,%lld,%lld,%lld,%lld", (long long)c.B,
                 (long long)c.Hq, (long long)c.Hkv, (long long)c.Lq, (long long)c.Lk, (long long)c.D,
                 (long long)attn_case_dv(&c));
        for (int p = 0; p < npaths; p++) {
            ++*done;
            fprintf(stderr, "[%zu/%zu] %s %s %s ...\r", *done, total, clattn_path_name(paths[p]), shape,
                    clattn_dtype_name(c.dtype));
            c.path = paths[p];
            measured m;
            memset(&m, 0, sizeof m);
            bool quant = false;
            clattn_kv_format kvf = CLATTN_KV_F32;
            kv_parse_quant(specs[i].kv_quant, &quant, &kvf);
            kv_prepared kp;
            clattn_status mst = st;
            if (mst == CLATTN_SUCCESS && quant) {
                clattn_tensor tq, tk, tv, to;
                clattn_options opt;
                attn_case_tensors(d, &tq, &tk, &tv, &to);
                attn_case_options(&c, d, &opt);
                int32_t *lens = NULL; /* the case's key lengths become the cache's */
                if (c.kv_lens && (lens = malloc(sizeof(int32_t) * (size_t)c.B)) != NULL) {
                    const clattn_tensor *t = &d->buf[ATTN_BUF_KV_LENS].t;
                    for (int64_t b = 0; b < c.B; b++)
                        memcpy(&lens[b], (const char *)t->host + t->offset + (size_t)(b * t->nb[0]), sizeof(int32_t));
                }
                mst = c.kv_lens && !lens ? CLATTN_ERROR_OUT_OF_MEMORY : kv_prepare(ctx, &tk, &tv, &opt, lens, kvf, &kp);
                free(lens);
                clFinish(clattn_context_cl_queue(ctx));
            }
            if (mst == CLATTN_SUCCESS) mst = measure(ctx, &c, d, o, quant ? &kp : NULL, &m);
            if (quant) kv_release(&kp);
            if (quant && mst == CLATTN_SUCCESS) m.path = CLATTN_PATH_COUNT_; /* "kv-cache" */
            fprintf(stderr, "%60s\r", "");
            if (mst == CLATTN_ERROR_PATH_UNSUPPORTED) {
                printf("%-8s %-26s %-12s %-5s n/a: %s\n", clattn_path_name(paths[p]), shape,
                       causal_name(c.causal), clattn_dtype_name(c.dtype), clattn_context_last_error(ctx));
                continue;
            }
            if (mst != CLATTN_SUCCESS) {
                printf("%-8s %-26s %-12s %-5s FAILED: %s: %s\n", clattn_path_name(paths[p]), shape,
                       causal_name(c.causal), clattn_dtype_name(c.dtype), clattn_status_string(mst),
                       clattn_context_last_error(ctx));
                ++*failures;
                continue;
            }
            char pname[24];
            if (m.path == CLATTN_PATH_COUNT_) /* over a KV cache: name the format */
                snprintf(pname, sizeof pname, "kv:%s", specs[i].kv_quant);
            else
                snprintf(pname, sizeof pname, "%s%s", path_label(m.path), paths[p] == CLATTN_PATH_AUTO ? "*" : "");
            printf("%-8s %-26s %-12s %-5s %9.3f %9.3f %9.3f %5ld %9.1f %8.2f %10.2f\n", pname, shape,
                   causal_name(c.causal), clattn_dtype_name(c.dtype), m.median, m.min, m.max, m.runs,
                   m.gflops, m.gbps, (double)m.device_bytes / (1024.0 * 1024.0));
            fflush(stdout);
            bench_spec s = specs[i];
            s.c = c;
            m.peak_gflops = peak.gflops;
            m.peak_gbps = peak.gbps;
            if (json) json_line(json, &props, &s, paths[p], &m);
            if (tab) table_add(tab, i, index, paths[p], pname, &m);
            if (o->backward && !quant) {
                bench_backward_result br;
                clattn_status bst = bench_backward_measure(ctx, &c, d, o->runs, o->warmup, &br);
                if (bst != CLATTN_SUCCESS) {
                    printf("%-8s %-26s %-12s %-5s FAILED: %s: %s\n", "bwd", shape, causal_name(c.causal),
                           clattn_dtype_name(c.dtype), clattn_status_string(bst),
                           clattn_context_last_error(ctx));
                    ++*failures;
                    continue;
                }
                measured bm = m;
                bm.median = br.median;
                bm.min = br.min;
                bm.max = br.max;
                bm.runs = br.runs;
                bm.device_bytes = br.device_bytes;
                bm.gflops = m.gflops * 2.5 * m.median / br.median;
                bm.gbps = 0;
                printf("%-8s %-26s %-12s %-5s %9.3f %9.3f %9.3f %5ld %9.1f %8s %10.2f  (%.2fx forward)\n", "bwd",
                       shape, causal_name(c.causal), clattn_dtype_name(c.dtype), bm.median, bm.min, bm.max,
                       bm.runs, bm.gflops, "-", (double)bm.device_bytes / (1024.0 * 1024.0),
                       br.median / m.median);
                fflush(stdout);
                if (json) {
                    /* path "backward": the same fields, times of the backward call */
                    bm.path = CLATTN_PATH_COUNT_ + 1;
                    json_line(json, &props, &s, paths[p], &bm);
                }
            }
        }
        attn_case_data_free(d);
    }
    clattn_context_free(ctx);
    return CLI_EXIT_OK;
}

int cmd_bench_parse(int argc, char **argv, bench_args *a, bool *help)
{
    memset(a, 0, sizeof *a);
    a->path = "auto";
    a->warmup = 2;
    snprintf(a->spec.kv_quant, sizeof a->spec.kv_quant, "none");
    *help = false;
    int rc = parse_args(argc, argv, a, help, "");
    if (rc != CLI_EXIT_OK || *help) return rc;
    clattn_path want;
    if (strcmp(a->path, "all") != 0) {
        if (clattn_path_from_name(a->path, &want) != CLATTN_SUCCESS) {
            cli_error(CMD, "--path: '%s' is not auto, fused, decode, clblast, unfused or all", a->path);
            return CLI_EXIT_USAGE;
        }
        if (!clattn_path_available(want)) {
            cli_error(CMD, "--path: path '%s' is not available in this build", a->path);
            return CLI_EXIT_USAGE;
        }
    }
    if (a->have_shape && a->sweep) {
        cli_error(CMD, "--shape and --sweep cannot be combined");
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}

int cmd_bench(int argc, char **argv)
{
    bench_args o;
    bool help = false;
    int rc = cmd_bench_parse(argc, argv, &o, &help);
    if (rc != CLI_EXIT_OK) return rc;
    if (help) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (o.context_parallel) return cp_bench_command(&o); /* under mpirun: cp_case.c */
    /* The cases: --shape, or each line of the sweep file, or the default sweep. */
    bench_spec specs[256];
    size_t nspecs = 0;
    if (o.have_shape) {
        specs[nspecs++] = o.spec;
    } else if (o.sweep) {
        FILE *f = fopen(o.sweep, "r");
        if (!f) {
            cli_error(CMD, "--sweep: cannot open '%s'", o.sweep);
            return CLI_EXIT_FAILURE;
        }
        char line[512], where[600];
        int lineno = 0;
        while (fgets(line, sizeof line, f)) {
            lineno++;
            snprintf(where, sizeof where, "%s:%d: ", o.sweep, lineno);
            if (nspecs == sizeof specs / sizeof specs[0]) {
                cli_error(CMD, "%stoo many cases (at most 256)", where);
                fclose(f);
                return CLI_EXIT_USAGE;
            }
            int lrc = cmd_bench_parse_line(line, &o, &specs[nspecs], where);
            if (lrc == CLI_EXIT_OK) nspecs++;
            else if (lrc != -1) {
                fclose(f);
                return lrc;
            }
        }
        fclose(f);
    } else {
        for (size_t i = 0; i < sizeof default_sweep / sizeof default_sweep[0]; i++) {
            int lrc = cmd_bench_parse_line(default_sweep[i], &o, &specs[nspecs], "default sweep: ");
            if (lrc != CLI_EXIT_OK) return lrc;
            nspecs++;
        }
    }
    for (size_t i = 0; i < nspecs; i++) specs[i].c.out_dtype = specs[i].c.dtype;

    size_t count = 0;
    clattn_device_count(&count);
    if (count == 0) {
        cli_error(CMD, "no OpenCL device found");
        return CLI_EXIT_FAILURE;
    }
    size_t first = 0, last = count;
    if (!o.device || strcmp(o.device, "all") != 0) {
        if (clattn_device_find(o.device, &first) != CLATTN_SUCCESS) {
            cli_error(CMD, "--device: no OpenCL device matches '%s'", o.device ? o.device : "");
            return CLI_EXIT_USAGE;
        }
        last = first + 1;
    }

    /* JSON goes to a temporary name, renamed once every case ran. */
    FILE *json = NULL;
    char tmp[4096];
    if (o.json) {
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", o.json, (long)getpid());
        json = fopen(tmp, "w");
        if (!json) {
            cli_error(CMD, "--json: cannot write '%s'", o.json);
            return CLI_EXIT_FAILURE;
        }
    }
    int npaths = 1;
    if (strcmp(o.path, "all") == 0) {
        npaths = 0;
        for (int p = 1; p < CLATTN_PATH_COUNT_; p++) npaths += clattn_path_available((clattn_path)p);
    }
    size_t done = 0, total = (last - first) * nspecs * (size_t)npaths;
    int failures = 0;
    rc = CLI_EXIT_OK;
    bench_table table = {NULL, 0, 0, NULL};
    const bool side_by_side = o.device && strcmp(o.device, "all") == 0;
    if (side_by_side && !(table.names = calloc(count, sizeof *table.names))) {
        cli_error(CMD, "out of host memory");
        return CLI_EXIT_FAILURE;
    }
    for (size_t i = first; i < last && rc == CLI_EXIT_OK; i++)
        rc = bench_device(i, specs, nspecs, &o, json, &done, total, &failures, side_by_side ? &table : NULL);
    if (side_by_side && rc == CLI_EXIT_OK) table_print(&table, specs);
    free(table.rows);
    free(table.names);
    if (json) {
        bool ok = fclose(json) == 0 && rc == CLI_EXIT_OK;
        if (!ok || rename(tmp, o.json) != 0) {
            remove(tmp);
            if (rc == CLI_EXIT_OK) {
                cli_error(CMD, "--json: writing '%s' failed", o.json);
                rc = CLI_EXIT_FAILURE;
            }
        }
    }
    if (rc == CLI_EXIT_OK && failures) {
        cli_error(CMD, "%d case(s) failed to run", failures);
        rc = CLI_EXIT_FAILURE;
    }
    return rc;
}
