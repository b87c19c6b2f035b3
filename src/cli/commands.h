/* Entry points of the clattn subcommands (SPEC §2), one file each in src/cli/ (run and
 * bench read their command line in a second one, cmd_run_args.c and cmd_bench_args.c,
 * tune its search and output in tune_search.c and tune_write.c). Each takes
 * the arguments after "clattn" (argv[0] is the subcommand's name), prints its own usage
 * for --help, and returns a CLI_EXIT_* status (cli_util.h). They live in the clattn_cli
 * library rather than in main.c so tests and tools can call them directly. */
#ifndef CLATTN_COMMANDS_H
#define CLATTN_COMMANDS_H

#include "support/attn_case.h"
#include "clattn.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

int cmd_devices(int argc, char **argv); /* cmd_devices.c */
int cmd_run(int argc, char **argv);     /* cmd_run.c */
int cmd_check(int argc, char **argv);   /* cmd_check.c */
int cmd_bench(int argc, char **argv);   /* cmd_bench.c */
int cmd_quantize(int argc, char **argv); /* cmd_quantize.c */
int cmd_tune(int argc, char **argv);     /* cmd_tune.c */

/* Each command's command-line parsing, apart from its work: no OpenCL call, no file opened
 * or written, nothing printed but cli_error lines; so the parsers can be tested and fuzzed
 * on their own (tests/fuzz/fuzz_cli_args.c). Each returns CLI_EXIT_OK or, after one
 * cli_error line, CLI_EXIT_USAGE. With --help, parsing stops right there with *help set
 * (later arguments are not looked at, as before). argv must be NULL-terminated and may be
 * permuted (getopt_long); the strings stay owned by the caller and are pointed to. */
typedef struct devices_args {
    bool json;
    bool peak;   /* --peak: measure (or read the cached) FMA GFLOP/s and copy GB/s */
    bool tuning; /* --tuning: the tuning rows in force per path and class */
    bool variants; /* --variants: each optional feature's probe answer */
} devices_args;
int cmd_devices_parse(int argc, char **argv, devices_args *a, bool *help);

typedef struct check_args {
    const char *device; /* NULL: the default device; "all" */
    const char *path;   /* a path name or "all" (checked) */
    int64_t nrandom, seed;
    bool quiet;
    bool full; /* --full: the whole suite and random cases, not the quick check */
} check_args;
int cmd_check_parse(int argc, char **argv, check_args *a, bool *help);

typedef struct quantize_args {
    const char *in, *out, *format_name;
    clattn_kv_format format;
    clattn_kv_role role;
} quantize_args;
int cmd_quantize_parse(int argc, char **argv, quantize_args *a, bool *help);

/* One case of `clattn bench`: the problem and the options that are not the problem's. */
typedef struct bench_spec {
    attn_case c;
    char kv_quant[16];
    /* serving cases (bench_paged.c), 0 when not asked for */
    int paged_ps;                            /* --paged PS[,SEED] */
    unsigned long long paged_seed;
    int64_t ragged_min, ragged_max;          /* --ragged MIN,MAX */
    int64_t cascade_prefix, cascade_suffix;  /* --cascade P,S */
    int64_t varlen_min, varlen_max;          /* --varlen MIN,MAX */
} bench_spec;
typedef struct bench_args {
    const char *json, *device, *path, *sweep;
    long runs, warmup;
    bench_spec spec; /* from --shape/--causal/--dtype on the command line */
    bool have_shape;
    bool backward; /* --backward: also time clattn_attention_backward per case */
    const char *context_parallel; /* --context-parallel (cp_case.c), or NULL */
} bench_args;
/* Also checks --path and that --shape and --sweep are not combined; the sweep file itself
 * is read by the command, each line through cmd_bench_parse_line. */
int cmd_bench_parse(int argc, char **argv, bench_args *a, bool *help);
void cmd_bench_usage(FILE *f); /* cmd_bench_args.c */
/* One sweep line as bench options for one case into *out. Returns CLI_EXIT_OK, -1 for a
 * blank or comment line, or CLI_EXIT_USAGE after one cli_error line (where prefixes it). */
int cmd_bench_parse_line(const char *line, const bench_args *base, bench_spec *out,
                         const char *where);

/* `clattn run`: the value of each option (NULL when not given) and those already decoded. */
#define CMD_RUN_MAX_OPTS 32
typedef struct run_args {
    const char *arg[CMD_RUN_MAX_OPTS]; /* by option, in cmd_run.h's order */
    int blhd;
    clattn_dtype out_dtype;
    clattn_options opt;  /* scale, softcap, causal, window, path; no tensors yet */
    bool kv_quant;       /* --kv-quant other than none */
    clattn_kv_format kv_format;
} run_args;
int cmd_run_parse(int argc, char **argv, run_args *a, bool *help);

#endif /* CLATTN_COMMANDS_H */
