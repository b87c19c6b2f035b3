/* `clattn devices [--json]`: every OpenCL device clattn can use, with the properties the
 * library reports (clattn_device_props), as text for people or as a JSON array for
 * scripts. The device a plain `clattn run` would pick is marked as the default. */
#include "clattn.h"
#include "cli_util.h"
#include "commands.h"
#include "core/context.h"
#include "peak.h"
#include "core/probe.h"
#include "tuning/tuning.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char *const CMD = "devices";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: clattn devices [--json] [--peak] [--tuning] [--variants]\n"
            "\n"
            "List every OpenCL platform/device with its capabilities. The default device\n"
            "(CLATTN_DEVICE if set, else the first GPU, else the first device) is marked '*'.\n"
            "Devices are chosen elsewhere with --device SPEC: an index from this list, a\n"
            "case-insensitive substring of the platform or device name, or cpu|gpu.\n"
            "\n"
            "  --json     print a JSON array with one object per device\n"
            "  --peak     also measure each device's peak: an FMA kernel (GFLOP/s) and a copy\n"
            "             kernel (GB/s), as clpeak does; cached per device and driver in the\n"
            "             program cache's folder (CLATTN_CACHE_DIR=off measures again)\n"
            "  --tuning   also print, per path and problem class, the tuning row in force and\n"
            "             where it came from (a built-in level, or a tuning file record)\n"
            "  --variants also print whether each optional feature (f16 arithmetic,\n"
            "             subgroups, matrix units) is usable: what the device reports, then a\n"
            "             probe kernel run once against the expected answer (cached per device\n"
            "             and driver with the programs); the subgroup size is the probe's\n"
            "  -h, --help this text\n");
}

static const char *type_name(clattn_device_type t)
{
    switch (t) {
    case CLATTN_DEVICE_CPU: return "cpu";
    case CLATTN_DEVICE_GPU: return "gpu";
    case CLATTN_DEVICE_ACCELERATOR: return "accelerator";
    case CLATTN_DEVICE_OTHER: return "other";
    }
    return "other";
}

static void print_text(const clattn_device_props *p, int is_default)
{
    printf("%c[%zu] %s: %s (%s)\n", is_default ? '*' : ' ', p->index, p->platform_name, p->name,
           type_name(p->type));
    printf("     vendor %s; driver %s; %s; %s\n", p->vendor, p->driver_version,
           p->platform_version, p->opencl_c_version);
    printf("     %" PRIu32 " compute units at %" PRIu32 " MHz; global memory %" PRIu64
           " MiB (max allocation %" PRIu64 " MiB); local memory %" PRIu64 " KiB (%s)\n",
           p->compute_units, p->max_clock_mhz, p->global_mem_bytes >> 20,
           p->max_alloc_bytes >> 20, p->local_mem_bytes >> 10,
           p->local_mem_is_dedicated ? "dedicated" : "emulated in global memory");
    printf("     max work-group size %zu; fp16 %s; subgroups %s\n", p->max_work_group_size,
           p->has_fp16 ? "yes" : "no", p->has_subgroups ? "yes" : "no");
}

/* One device's object, left open: the caller may add the peak before closing it. */
static void print_json(const clattn_device_props *p, int is_default)
{
    printf("  {\"index\": %zu, \"default\": %s, \"platform_name\": ", p->index,
           is_default ? "true" : "false");
    cli_json_string(stdout, p->platform_name);
    printf(", \"platform_version\": ");
    cli_json_string(stdout, p->platform_version);
    printf(", \"name\": ");
    cli_json_string(stdout, p->name);
    printf(", \"vendor\": ");
    cli_json_string(stdout, p->vendor);
    printf(", \"driver_version\": ");
    cli_json_string(stdout, p->driver_version);
    printf(", \"opencl_c_version\": ");
    cli_json_string(stdout, p->opencl_c_version);
    printf(", \"type\": \"%s\", \"compute_units\": %" PRIu32 ", \"max_clock_mhz\": %" PRIu32
           ", \"global_mem_bytes\": %" PRIu64 ", \"max_alloc_bytes\": %" PRIu64
           ", \"local_mem_bytes\": %" PRIu64 ", \"local_mem_is_dedicated\": %s"
           ", \"max_work_group_size\": %zu, \"has_fp16\": %s, \"has_subgroups\": %s",
           type_name(p->type), p->compute_units, p->max_clock_mhz, p->global_mem_bytes,
           p->max_alloc_bytes, p->local_mem_bytes, p->local_mem_is_dedicated ? "true" : "false",
           p->max_work_group_size, p->has_fp16 ? "true" : "false",
           p->has_subgroups ? "true" : "false");
}

/* The peak of device index (peak.h), through a context of its own. */
static int device_peak(size_t index, cli_peak *peak)
{
    char err[512];
    clattn_context *ctx = NULL;
    if (cli_open_device(CMD, index, &ctx, NULL) != CLATTN_SUCCESS) return CLI_EXIT_FAILURE;
    clattn_status st = cli_peak_get(ctx, true, peak, err, sizeof err);
    clattn_context_free(ctx);
    if (st != CLATTN_SUCCESS) {
        cli_error(CMD, "%s", err);
        return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK;
}

int cmd_devices_parse(int argc, char **argv, devices_args *a, bool *help)
{
    enum { OPT_JSON = 256, OPT_PEAK, OPT_TUNING, OPT_VARIANTS };
    static const struct option longopts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"peak", no_argument, NULL, OPT_PEAK},
        {"tuning", no_argument, NULL, OPT_TUNING},
        {"variants", no_argument, NULL, OPT_VARIANTS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    a->json = false;
    a->peak = false;
    a->tuning = false;
    a->variants = false;
    *help = false;
    cli_getopt_reset();
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_JSON: a->json = true; break;
        case OPT_PEAK: a->peak = true; break;
        case OPT_TUNING: a->tuning = true; break;
        case OPT_VARIANTS: a->variants = true; break;
        case 'h': *help = true; return CLI_EXIT_OK;
        default: cli_getopt_error(CMD, c, argv, longopts); return CLI_EXIT_USAGE;
        }
    }
    if (cli_no_operands(CMD, argc, argv, " (see clattn devices --help)") != CLI_EXIT_OK)
        return CLI_EXIT_USAGE;
    if (a->json && (a->tuning || a->variants)) {
        cli_error(CMD, "--tuning and --variants print text only: leave out --json");
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}

/* A class as text; -2 fields (any) are left out, all of them make "*". */
static void class_text(const clattn__tclass *c, char *buf, size_t cap)
{
    static const char *const dt[] = {"f32", "f16", "bf16"};
    size_t at = 0;
    buf[0] = '\0';
#define ADD(...)                                                                           \
    do {                                                                                   \
        int n_ = snprintf(buf + at, cap - at, __VA_ARGS__);                                \
        if (n_ > 0 && (size_t)n_ < cap - at) at += (size_t)n_;                             \
    } while (0)
    if (c->dtype >= 0 && c->dtype < 3) ADD("%s ", dt[c->dtype]);
    if (c->head > 0) ADD("head<=%d ", c->head);
    if (c->decode >= 0) ADD("%s ", c->decode ? "decode" : "prefill");
    if (c->causal >= 0) ADD("%s ", c->causal ? "causal" : "full");
    if (c->group > 0) ADD("group %d ", c->group);
    if (c->kv == -1) ADD("kv none ");
    else if (c->kv >= 0) ADD("kv %s ", clattn_kv_format_name((clattn_kv_format)c->kv));
#undef ADD
    if (at == 0) snprintf(buf, cap, "*");
    else buf[at - 1] = '\0';
}

static void row_text(clattn__tpath path, const clattn__trow *r, char *buf, size_t cap)
{
    size_t np, at = 0;
    const clattn__tparam_info *pi = clattn__tparams(&np);
    buf[0] = '\0';
    for (size_t i = 0; i < np; i++) {
        if (!(pi[i].paths & (1u << path))) continue;
        const int v = *clattn__trow_field((clattn__trow *)r, &pi[i]);
        int n = strcmp(pi[i].name, "form") == 0
                    ? snprintf(buf + at, cap - at, "%sform %s", at ? ", " : "", clattn__tform_name(path, v))
                    : snprintf(buf + at, cap - at, "%s%s %d", at ? ", " : "", pi[i].name, v);
        if (n < 0 || (size_t)n >= cap - at) break;
        at += (size_t)n;
    }
}

/* A context on device i for its --tuning or --variants lines, or NULL after a line saying
 * it cannot be opened (what names the lines). */
static clattn_context *open_listed(size_t i, const char *what)
{
    char spec[32];
    snprintf(spec, sizeof spec, "%zu", i);
    clattn_context *ctx = NULL;
    if (clattn_context_create(spec, &ctx) != CLATTN_SUCCESS) {
        printf("     %s: cannot open a context on this device\n", what);
        return NULL;
    }
    return ctx;
}

/* The rows in force on device i: each path for any class, then each class a tuning
 * file record names. Opens a context (no kernel is built). */
static void print_tuning(size_t i)
{
    clattn_context *ctx = open_listed(i, "tuning");
    if (!ctx) return;
    const clattn__tdevice *dev = &ctx->tuning->dev;
    printf("     tuning key: vendor_id 0x%x, arch \"%s\", name \"%s\"\n", dev->vendor_id, dev->arch, dev->name);
    char cls_s[128], row_s[512];
    for (int p = 0; p < CLATTN__TP_COUNT; p++) {
        clattn__trow row;
        clattn__tsource src;
        /* a class no record names: what every class without a record gets */
        clattn__tclass none = {99, 0, 0, 0, 0, -99};
        clattn__tuning_row(ctx, (clattn__tpath)p, &none, &row, &src);
        row_text((clattn__tpath)p, &row, row_s, sizeof row_s);
        printf("     %-8s %-36s %s  [%s]\n", clattn__tpath_name((clattn__tpath)p), "*", row_s, src.text);
        for (size_t r = 0; r < ctx->tuning->nrecords; r++) {
            const clattn__trecord *rec = &ctx->tuning->records[r];
            if (rec->path != (clattn__tpath)p) continue;
            clattn__tuning_row(ctx, rec->path, &rec->cls, &row, &src);
            class_text(&rec->cls, cls_s, sizeof cls_s);
            row_text(rec->path, &row, row_s, sizeof row_s);
            printf("     %-8s %-36s %s  [%s]\n", clattn__tpath_name(rec->path), cls_s, row_s, src.text);
        }
    }
    clattn_context_free(ctx);
}

/* Each optional feature's answer on device i (probe.h): probes run here when the device
 * reports the feature and no cached answer exists. */
static void print_variants(size_t i)
{
    clattn_context *ctx = open_listed(i, "variants");
    if (!ctx) return;
    for (int v = 0; v < CLATTN__VAR_COUNT; v++) {
        char why[112];
        int value = 0;
        const bool ok = clattn__variant_usable(ctx, (clattn__variant)v, &value, why, sizeof why);
        if (ok && value) printf("     variant %-10s yes, %d (%s)\n", clattn__variant_name((clattn__variant)v), value, why);
        else printf("     variant %-10s %s (%s)\n", clattn__variant_name((clattn__variant)v), ok ? "yes" : "no", why);
    }
    clattn_context_free(ctx);
}

int cmd_devices(int argc, char **argv)
{
    devices_args a;
    bool help;
    int rc = cmd_devices_parse(argc, argv, &a, &help);
    if (rc != CLI_EXIT_OK || help) return cli_parse_stop(rc, help, usage);
    const int json = a.json;

    size_t count = 0;
    clattn_status st = clattn_device_count(&count);
    if (st != CLATTN_SUCCESS) {
        cli_error(CMD, "listing OpenCL devices failed: %s", clattn_status_string(st));
        return CLI_EXIT_FAILURE;
    }
    size_t default_index = (size_t)-1;
    if (count > 0 && clattn_device_find(NULL, &default_index) != CLATTN_SUCCESS)
        default_index = (size_t)-1; /* CLATTN_DEVICE names nothing: mark no default */

    if (json) printf("[");
    for (size_t i = 0; i < count; i++) {
        clattn_device_props p;
        st = clattn_device_get_props(i, &p);
        if (st != CLATTN_SUCCESS) {
            if (json) printf("]\n");
            fflush(stdout);
            cli_error(CMD, "reading the properties of device %zu failed: %s", i,
                      clattn_status_string(st));
            return CLI_EXIT_FAILURE;
        }
        cli_peak peak;
        if (a.peak && (rc = device_peak(i, &peak)) != CLI_EXIT_OK) {
            if (json) printf("]\n");
            fflush(stdout);
            return rc;
        }
        if (json) {
            printf(i ? ",\n" : "\n");
            print_json(&p, i == default_index);
            if (a.peak) printf(", \"peak_gflops\": %.2f, \"peak_gbps\": %.2f", peak.gflops, peak.gbps);
            printf("}");
        } else {
            print_text(&p, i == default_index);
            if (a.peak)
                printf("     peak %.1f GFLOP/s (float32 FMA), %.1f GB/s (copy)%s\n", peak.gflops, peak.gbps,
                       peak.cached ? ", cached" : "");
            if (a.tuning) print_tuning(i);
            if (a.variants) print_variants(i);
        }
    }
    if (json) printf(count ? "\n]\n" : "]\n");
    else if (count == 0) printf("no OpenCL devices (is an OpenCL driver such as pocl-opencl-icd installed?)\n");
    if (fflush(stdout) != 0 || ferror(stdout)) {
        cli_error(CMD, "writing the list failed");
        return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK;
}
