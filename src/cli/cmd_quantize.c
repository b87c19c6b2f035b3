/* `clattn quantize`: quantize and dequantize an array of vectors [..., D] with a KV-cache
 * format's CPU reference quantizer (the one the device quantizers are tested against),
 * write the dequantized array and print bits per element and the error, so users can judge
 * a format on their own KV dumps before using it in a cache. */
#include "clattn.h"
#include "cli_util.h"
#include "commands.h"
#include "support/npy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "quantize";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: clattn quantize --format F --in X.npy --out Y.npy [--role keys|values]\n"
            "\n"
            "Quantize every vector along the last axis of X ([..., D], float32 or float16,\n"
            "D in 1..256) as a KV cache of format F stores it, dequantize, and write Y\n"
            "(float32, same shape). Prints bits per element (packed size / elements) and the\n"
            "error: mean over vectors of |x - x^|^2 / |x|^2 (vectors of norm 0 skipped) and\n"
            "the largest |x - x^| of any element.\n"
            "\n"
            "  --format F        f32, f16, int8, int4, tq4, tq3, tq2\n"
            "  --role R          keys (default) or values: int4 groups keys per channel over\n"
            "                    32 consecutive vectors of the second-to-last axis, values\n"
            "                    per vector; other formats do not depend on the role\n"
            "  -h, --help        this text\n"
            "Exit status: 0 done, 1 the work failed, 2 bad command line.\n");
}

int cmd_quantize_parse(int argc, char **argv, quantize_args *a, bool *help)
{
    static const struct option longopts[] = {
        {"format", required_argument, NULL, 'f'}, {"in", required_argument, NULL, 'i'},
        {"out", required_argument, NULL, 'o'},    {"role", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    const char *fmt = NULL, *in = NULL, *out = NULL, *role_s = "keys";
    *help = false;
    cli_getopt_reset();
    int c;
    while ((c = getopt_long(argc, argv, ":f:i:o:r:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'r': role_s = optarg; break;
        case 'h': *help = true; return CLI_EXIT_OK;
        default: cli_getopt_error(CMD, c, argv, longopts); return CLI_EXIT_USAGE;
        }
    }
    if (cli_no_operands(CMD, argc, argv, NULL) != CLI_EXIT_OK) return CLI_EXIT_USAGE;
    if (!fmt || !in || !out) {
        cli_error(CMD, "missing %s (see clattn quantize --help)", !fmt ? "--format" : !in ? "--in" : "--out");
        return CLI_EXIT_USAGE;
    }
    if (clattn_kv_format_from_name(fmt, &a->format) != CLATTN_SUCCESS) {
        cli_error(CMD, "--format %s: expected f32, f16, int8, int4, tq4, tq3 or tq2", fmt);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(role_s, "keys") == 0) a->role = CLATTN_KV_KEYS;
    else if (strcmp(role_s, "values") == 0) a->role = CLATTN_KV_VALUES;
    else {
        cli_error(CMD, "--role %s: expected keys or values", role_s);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(in, out) == 0) {
        cli_error(CMD, "--in and --out name the same file %s", in);
        return CLI_EXIT_USAGE;
    }
    a->in = in;
    a->out = out;
    a->format_name = fmt;
    return CLI_EXIT_OK;
}

int cmd_quantize(int argc, char **argv)
{
    quantize_args qa;
    bool help;
    int prc = cmd_quantize_parse(argc, argv, &qa, &help);
    if (prc != CLI_EXIT_OK || help) return cli_parse_stop(prc, help, usage);
    const char *fmt = qa.format_name, *in = qa.in, *out = qa.out;
    const clattn_kv_format format = qa.format;
    const clattn_kv_role role = qa.role;

    npy_array a;
    char err[1024], shape[256];
    if (npy_read(in, &a, err, sizeof err) != 0) {
        cli_error(CMD, "--in: %s", err);
        return CLI_EXIT_FAILURE;
    }
    npy_shape_string(a.rank, a.shape, shape, sizeof shape);
    if ((a.dtype != CLATTN_F32 && a.dtype != CLATTN_F16) || a.rank < 1 || a.shape[a.rank - 1] < 1 ||
        a.shape[a.rank - 1] > 256) {
        cli_error(CMD, "--in: %s: expected float32 or float16 [..., D] with D in 1..256, got %s %s", in,
                  npy_dtype_label(a.dtype), shape);
        npy_free(&a);
        return CLI_EXIT_FAILURE;
    }
    const int64_t D = a.shape[a.rank - 1];
    const size_t nvec = a.count / (size_t)D;
    /* int4 keys are grouped along the second-to-last axis: one run of vectors per slice */
    const size_t run = a.rank >= 2 && a.shape[a.rank - 2] > 0 ? (size_t)a.shape[a.rank - 2] : (nvec ? nvec : 1);
    float *x = malloc(sizeof(float) * (a.count ? a.count : 1));
    float *xh = malloc(sizeof(float) * (a.count ? a.count : 1));
    if (!x || !xh) {
        cli_error(CMD, "out of memory for %zu elements", a.count);
        free(x);
        free(xh);
        npy_free(&a);
        return CLI_EXIT_FAILURE;
    }
    for (size_t i = 0; i < a.count; i++) {
        if (a.dtype == CLATTN_F32) {
            x[i] = ((const float *)a.data)[i];
        } else {
            /* half to float, exactly (normals, subnormals, inf, NaN) */
            const uint16_t h = ((const uint16_t *)a.data)[i];
            const int e = (h >> 10) & 31, m = h & 1023;
            const float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
            x[i] = (h & 0x8000) ? -v : v;
        }
    }
    uint64_t bytes = 0;
    clattn_status st = CLATTN_SUCCESS;
    for (size_t v0 = 0; v0 < nvec && st == CLATTN_SUCCESS; v0 += run) {
        uint64_t b = 0;
        const size_t n = nvec - v0 < run ? nvec - v0 : run;
        st = clattn_kv_quantize_host(format, role, x + v0 * (size_t)D, n, D, xh + v0 * (size_t)D, &b);
        bytes += b;
    }
    if (st != CLATTN_SUCCESS) {
        cli_error(CMD, "quantizing failed: %s", clattn_status_string(st));
        free(x);
        free(xh);
        npy_free(&a);
        return CLI_EXIT_FAILURE;
    }
    double rel = 0, max_abs = 0;
    size_t counted = 0;
    for (size_t v = 0; v < nvec; v++) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < D; i++) {
            const double xi = x[v * (size_t)D + (size_t)i], di = xi - xh[v * (size_t)D + (size_t)i];
            num += di * di;
            den += xi * xi;
            if (fabs(di) > max_abs || isnan(di)) max_abs = isnan(di) ? NAN : fmax(max_abs, fabs(di));
        }
        if (den > 0) {
            rel += num / den;
            counted++;
        }
    }
    const int rc = npy_write(out, CLATTN_F32, a.rank, a.shape, xh, CLATTN_F32, err, sizeof err);
    if (rc != 0) {
        cli_error(CMD, "--out: %s", err);
    } else {
        const double bits = a.count ? 8.0 * (double)bytes / (double)a.count : 0.0;
        printf("clattn quantize: %s %s: %zu vectors of %lld as %s (%s): %.4f bits/element (nominal %g), "
               "mean |x-x^|^2/|x|^2 = %.6g over %zu nonzero vectors, max |x-x^| = %.6g; wrote %s\n",
               in, shape, nvec, (long long)D, fmt, role == CLATTN_KV_KEYS ? "keys" : "values", bits,
               clattn_kv_format_nominal_bits(format), counted ? rel / (double)counted : 0.0, counted,
               max_abs, out);
    }
    free(x);
    free(xh);
    npy_free(&a);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
