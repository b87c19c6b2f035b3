/* `clattn bench`'s command line: the usage text, the options (the same parser reads the
 * command line and each sweep line), and the checks made before any device is opened. */
#include "support/attn_case.h"
#include "cli_util.h"
#include "commands.h"
#include "cp_case.h"
#include "kv_case.h"
#include "paged_case.h"
#include "bench_paged.h"

#include <stdlib.h>
#include <string.h>

static const char *const CMD = "bench";

void cmd_bench_usage(FILE *f)
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
    int ch, choice;
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
            if (!cli_choose(CMD, where, "--causal", optarg, cli_causal_modes,
                            "top-left, bottom-right or none", &choice))
                return CLI_EXIT_USAGE;
            o->spec.c.causal = (clattn_causal)choice;
            break;
        case 't':
            if (!cli_choose(CMD, where, "--dtype", optarg, cli_dtypes, "f32, f16 or bf16", &choice))
                return CLI_EXIT_USAGE;
            o->spec.c.dtype = (clattn_dtype)choice;
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
