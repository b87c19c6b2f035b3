/* clattn check: every path on every chosen device against the float64 CPU reference. By
 * default a quick check: a dozen cases of the SPEC §1 suite that together switch on every
 * rule, so a new user sees a first correct result within seconds of the build; --full
 * runs the whole suite (attn_case_suite) plus random cases, building every kernel
 * variant. One line per case; exit status 1 when any case is outside tolerance. */
#include "support/attn_case.h"
#include "cli_util.h"
#include "commands.h"

#include <stdlib.h>
#include <string.h>

/* The quick check's cases, by name in attn_case_suite(): each SPEC §1 rule at least
 * once, on few distinct kernel builds (head sizes and dtypes drive the builds). */
static const char *const quick_cases[] = {
    "basic",           "lq1_decode",           "causal_tl_lq_gt_lk",   "causal_br_lq_lt_lk",
    "bool_mask_rank4", "float_mask_rank4_bcast_b_gqa", "window_with_causal_br", "kv_lens_causal_br",
    "scale_softcap_alibi", "dv_smaller_than_d", "f16_storage", "fully_masked_rows_mixed",
};
enum { NQUICK = sizeof quick_cases / sizeof quick_cases[0] };

static size_t suite_size(void)
{
    size_t n;
    attn_case_suite(&n);
    return n;
}

static bool is_quick(const attn_case *c)
{
    for (size_t i = 0; i < NQUICK; i++)
        if (c->name && strcmp(c->name, quick_cases[i]) == 0) return true;
    return false;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: clattn check [--full] [--device SPEC|all] [--path P|all] [--random N] [--seed S]\n"
            "                    [--quiet]\n"
            "\n"
            "Runs cases of the built-in SPEC §1 suite on each path of this build (default all)\n"
            "and device (default: the default device) and compares each result with the\n"
            "float64 CPU reference. By default a quick check: %d cases that together cover\n"
            "every rule (masks, causal both ways, window, key lengths, softcap, ALiBi, GQA,\n"
            "Dv != D, f16, fully masked rows, decode). --full runs all %d cases plus N random\n"
            "ones (default 8; the first run builds every kernel variant: minutes on a CPU).\n",
            (int)NQUICK, (int)suite_size());
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

static int check_device(size_t index, const char *path_arg, bool full, long nrandom, uint64_t seed,
                        bool quiet, tally *t)
{
    clattn_device_props props;
    clattn_context *ctx;
    if (cli_open_device("check", index, &ctx, &props) != CLATTN_SUCCESS) return CLI_EXIT_FAILURE;
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
        for (size_t i = 0; i < n; i++)
            if (full || is_quick(&suite[i])) check_case(ctx, props.name, suite[i], paths[p], quiet, t);
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
                                              {"full", no_argument, NULL, 'f'},
                                              {"help", no_argument, NULL, 'h'},
                                              {NULL, 0, NULL, 0}};
    a->device = NULL;
    a->path = "all";
    a->nrandom = -1; /* random cases: 8 with --full, none in the quick check */
    a->seed = 1;
    a->quiet = false;
    a->full = false;
    *help = false;
    cli_getopt_reset();
    int c;
    while ((c = getopt_long(argc, argv, ":d:p:r:s:qfh", longopts, NULL)) != -1) {
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
        case 'f': a->full = true; break;
        case 'h': *help = true; return CLI_EXIT_OK;
        default: cli_getopt_error("check", c, argv, longopts); return CLI_EXIT_USAGE;
        }
    }
    if (cli_no_operands("check", argc, argv, NULL) != CLI_EXIT_OK) return CLI_EXIT_USAGE;
    if (a->nrandom < 0) a->nrandom = a->full ? 8 : 0;
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
    if (rc != CLI_EXIT_OK || help) return cli_parse_stop(rc, help, usage);
    /* one line per case as it finishes, also into a pipe or a log (where stdout would
     * otherwise be block-buffered and the first result would wait for the last) */
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *device = a.device, *path = a.path;
    const int64_t nrandom = a.nrandom, seed = a.seed;
    const bool quiet = a.quiet, full = a.full;

    size_t count = 0;
    clattn_device_count(&count);
    if (count == 0) {
        cli_error("check", "no OpenCL device found");
        return CLI_EXIT_FAILURE;
    }
    tally t = {0, 0, 0};
    if (device && strcmp(device, "all") == 0) {
        for (size_t i = 0; i < count; i++)
            if (check_device(i, path, full, (long)nrandom, (uint64_t)seed, quiet, &t) != CLI_EXIT_OK)
                t.failed++;
    } else {
        size_t index;
        if (clattn_device_find(device, &index) != CLATTN_SUCCESS) {
            cli_error("check", "--device: no OpenCL device matches '%s'", device ? device : "");
            return CLI_EXIT_USAGE;
        }
        if (check_device(index, path, full, (long)nrandom, (uint64_t)seed, quiet, &t) != CLI_EXIT_OK)
            t.failed++;
    }
    printf("check: %d cases within tolerance, %d outside, %d not supported by the path\n",
           t.passed, t.failed, t.unsupported);
    return t.failed ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
