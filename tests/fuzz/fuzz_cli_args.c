/* libFuzzer target: the CLI's command-line parsing (cmd_<name>_parse in src/cli/cmd_*.c,
 * and bench's sweep-line parser), without any of the commands' work: no OpenCL, no file
 * is opened or written.
 *
 * Input: the first byte picks the parser; the rest is the arguments after the command
 * name, separated by NUL bytes (a trailing NUL is optional). For the sweep-line parser the
 * rest is one line of text. Every argument is copied into its own allocation so that ASan
 * sees a read past any of them. */
#include "cli_util.h"
#include "commands.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_ARGS = 64 };

static void check_run(const run_args *a)
{
    /* cmd_run relies on these after a successful parse. */
    if (!a->arg[0] || !a->arg[1] || !a->arg[2] || !a->arg[3]) abort();
    if (a->opt.window_left < -1 || a->opt.window_right < -1 || !(a->opt.softcap >= 0.0f))
        abort();
    if (a->out_dtype != CLATTN_F32 && a->out_dtype != CLATTN_F16) abort();
}

static void parse(int which, int argc, char **argv)
{
    bool help = false;
    switch (which) {
    case 0: {
        devices_args a;
        cmd_devices_parse(argc, argv, &a, &help);
        break;
    }
    case 1: {
        check_args a;
        if (cmd_check_parse(argc, argv, &a, &help) == CLI_EXIT_OK && !help &&
            (a.nrandom < 0 || a.nrandom > 100000 || a.seed < 0 || !a.path))
            abort();
        break;
    }
    case 2: {
        quantize_args a;
        if (cmd_quantize_parse(argc, argv, &a, &help) == CLI_EXIT_OK && !help &&
            (!a.in || !a.out || strcmp(a.in, a.out) == 0 || !clattn_kv_format_name(a.format)))
            abort();
        break;
    }
    case 3: {
        bench_args a;
        if (cmd_bench_parse(argc, argv, &a, &help) == CLI_EXIT_OK && !help &&
            ((a.have_shape && a.sweep) || a.runs < 0 || a.warmup < 0 ||
             (a.have_shape && (a.spec.c.B < 1 || a.spec.c.Dv < 1))))
            abort();
        break;
    }
    default: {
        run_args a;
        if (cmd_run_parse(argc, argv, &a, &help) == CLI_EXIT_OK && !help) check_run(&a);
        break;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"devices", "check", "quantize", "bench", "run", "bench"};
    if (size == 0) return 0;
    const int which = data[0] % 6;
    data++;
    size--;

    if (which == 5) {
        /* One sweep line, parsed over the defaults of a plain `clattn bench`. */
        char *line = malloc(size + 1);
        if (!line) return 0;
        memcpy(line, data, size);
        line[size] = '\0';
        bench_args base;
        bool help;
        char *argv0[] = {"bench", NULL};
        if (cmd_bench_parse(1, argv0, &base, &help) != CLI_EXIT_OK) abort();
        bench_spec spec;
        if (cmd_bench_parse_line(line, &base, &spec, "sweep:1: ") == CLI_EXIT_OK &&
            (spec.c.B < 1 || spec.c.Hq < 1 || spec.c.D < 1 || !memchr(spec.kv_quant, '\0', sizeof spec.kv_quant)))
            abort();
        free(line);
        return 0;
    }

    char *args[MAX_ARGS + 2];
    int argc = 0;
    args[argc++] = strdup(names[which]);
    size_t start = 0;
    while (start < size && argc <= MAX_ARGS) {
        const uint8_t *nul = memchr(data + start, '\0', size - start);
        const size_t len = nul ? (size_t)(nul - (data + start)) : size - start;
        char *s = malloc(len + 1);
        if (!s) break;
        memcpy(s, data + start, len);
        s[len] = '\0';
        args[argc++] = s;
        start += len + 1;
    }
    args[argc] = NULL;
    /* getopt_long permutes argv; free from a copy of the pointers. */
    char *owned[MAX_ARGS + 2];
    memcpy(owned, args, sizeof(char *) * (size_t)argc);
    bool all = true;
    for (int i = 0; i < argc; i++) all = all && args[i];
    if (all) parse(which, argc, args);
    for (int i = 0; i < argc; i++) free(owned[i]);
    return 0;
}
