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

int cmd_bench(int argc, char **argv)
{
    bench_args o;
    bool help = false;
    int rc = cmd_bench_parse(argc, argv, &o, &help);
    if (rc != CLI_EXIT_OK || help) return cli_parse_stop(rc, help, cmd_bench_usage);
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
