/* clattn check: every path on every chosen device against the float64 CPU reference, on
 * the fixed suite of cases that covers each rule of SPEC §1 (attn_case_suite) plus a few
 * random ones. One line per case; exit status 1 when any case is outside tolerance. */
#include "attn_case.h"
#include "cli_util.h"
#include "commands.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: clattn check [--device SPEC|all] [--path P|all] [--random N] [--seed S] [--quiet]\n"
            "\n"
            "Runs every SPEC §1 case of the built-in suite, plus N random cases (default 8),\n"
            "on each path of this build (default all) and device (default: the default device),\n"
            "and compares each result with the float64 CPU reference.\n");
}

typedef struct tally {
    int passed, failed, unsupported;
} tally;

static void check_case(clattn_context *ctx, const char *dev, attn_case c, clattn_path path,
                       bool quiet, tally *t)
{
    c.path = path;
    char line[600], res[400];
    attn_case_format(&c, line, sizeof line);
    attn_case_data *d = NULL;
    clattn_status st = attn_case_data_create(&c, &d);
    if (st == CLATTN_SUCCESS) st = attn_case_run(ctx, &c, d, NULL);
    if (st == CLATTN_ERROR_PATH_UNSUPPORTED) {
        t->unsupported++;
        if (!quiet) printf("  %-8s n/a   %s\n", clattn_path_name(path), line);
    } else if (st != CLATTN_SUCCESS) {
        t->failed++;
        printf("  %-8s FAIL  %s\n           %s: %s\n", clattn_path_name(path), line,
               clattn_status_string(st), clattn_context_last_error(ctx));
    } else {
        attn_case_result r;
        st = attn_case_compare(&c, d, &r);
        attn_case_result_format(&r, res, sizeof res);
        if (st != CLATTN_SUCCESS || !r.ok) {
            t->failed++;
            printf("  %-8s FAIL  %s\n           %s\n", clattn_path_name(path), line, res);
        } else {
            t->passed++;
            if (!quiet) printf("  %-8s ok    err %.3f  %s\n", clattn_path_name(path), r.max_err, line);
        }
    }
    (void)dev;
    attn_case_data_free(d);
}

static int check_device(size_t index, const char *path_arg, long nrandom, uint64_t seed, bool quiet,
                        tally *t)
{
    clattn_device_props props;
    char spec[32];
    snprintf(spec, sizeof spec, "%zu", index);
    clattn_context *ctx;
    if (clattn_device_get_props(index, &props) != CLATTN_SUCCESS ||
        clattn_context_create(spec, &ctx) != CLATTN_SUCCESS) {
        cli_error("check", "cannot open device %zu", index);
        return CLI_EXIT_FAILURE;
    }
    printf("device %zu: %s (%s, driver %s)\n", index, props.name, props.platform_name,
           props.driver_version);
    clattn_path paths[CLATTN_PATH_COUNT_];
    int npaths = 0;
    for (int p = 1; p < CLATTN_PATH_COUNT_; p++) {
        if (!clattn_path_available((clattn_path)p)) continue;
        if (strcmp(path_arg, "all") != 0 && strcmp(path_arg, clattn_path_name((clattn_path)p)) != 0)
            continue;
        paths[npaths++] = (clattn_path)p;
    }
    if (strcmp(path_arg, "auto") == 0) paths[npaths++] = CLATTN_PATH_AUTO;
    size_t n;
    const attn_case *suite = attn_case_suite(&n);
    for (int p = 0; p < npaths; p++) {
        for (size_t i = 0; i < n; i++) check_case(ctx, props.name, suite[i], paths[p], quiet, t);
        for (long i = 0; i < nrandom; i++) {
            attn_case c;
            attn_case_random(seed + (uint64_t)i, &c);
            check_case(ctx, props.name, c, paths[p], quiet, t);
        }
    }
    clattn_context_free(ctx);
    return CLI_EXIT_OK;
}

int cmd_check_parse(int argc, char **argv, check_args *a, bool *help)
{
    static const struct option longopts[] = {{"device", required_argument, NULL, 'd'},
                                              {"path", required_argument, NULL, 'p'},
                                              {"random", required_argument, NULL, 'r'},
                                              {"seed", required_argument, NULL, 's'},
                                              {"quiet", no_argument, NULL, 'q'},
                                              {"help", no_argument, NULL, 'h'},
                                              {NULL, 0, NULL, 0}};
    a->device = NULL;
    a->path = "all";
    a->nrandom = 8;
    a->seed = 1;
    a->quiet = false;
    *help = false;
    cli_getopt_reset();
    int c;
    while ((c = getopt_long(argc, argv, ":d:p:r:s:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': a->device = optarg; break;
        case 'p': a->path = optarg; break;
        case 'r':
            if (!cli_parse_int64(optarg, &a->nrandom) || a->nrandom < 0 || a->nrandom > 100000) {
                cli_error("check", "--random: '%s' is not a count from 0 to 100000", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 's':
            if (!cli_parse_int64(optarg, &a->seed) || a->seed < 0) {
                cli_error("check", "--seed: '%s' is not a non-negative integer", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 'q': a->quiet = true; break;
        case 'h': *help = true; return CLI_EXIT_OK;
        default: cli_getopt_error("check", c, argv, longopts); return CLI_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("check", "unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    const char *path = a->path;
    clattn_path want;
    if (strcmp(path, "all") != 0 &&
        (clattn_path_from_name(path, &want) != CLATTN_SUCCESS)) {
        cli_error("check", "--path: '%s' is not auto, fused, decode, clblast, unfused or all", path);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(path, "all") != 0 && strcmp(path, "auto") != 0 && !clattn_path_available(want)) {
        cli_error("check", "--path: path '%s' is not available in this build", path);
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}

int cmd_check(int argc, char **argv)
{
    check_args a;
    bool help;
    int rc = cmd_check_parse(argc, argv, &a, &help);
    if (rc != CLI_EXIT_OK) return rc;
    if (help) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    const char *device = a.device, *path = a.path;
    const int64_t nrandom = a.nrandom, seed = a.seed;
    const bool quiet = a.quiet;

    size_t count = 0;
    clattn_device_count(&count);
    if (count == 0) {
        cli_error("check", "no OpenCL device found");
        return CLI_EXIT_FAILURE;
    }
    tally t = {0, 0, 0};
    if (device && strcmp(device, "all") == 0) {
        for (size_t i = 0; i < count; i++)
            if (check_device(i, path, (long)nrandom, (uint64_t)seed, quiet, &t) != CLI_EXIT_OK)
                t.failed++;
    } else {
        size_t index;
        if (clattn_device_find(device, &index) != CLATTN_SUCCESS) {
            cli_error("check", "--device: no OpenCL device matches '%s'", device ? device : "");
            return CLI_EXIT_USAGE;
        }
        if (check_device(index, path, (long)nrandom, (uint64_t)seed, quiet, &t) != CLI_EXIT_OK)
            t.failed++;
    }
    printf("check: %d cases within tolerance, %d outside, %d not supported by the path\n",
           t.passed, t.failed, t.unsupported);
    return t.failed ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
