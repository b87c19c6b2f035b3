/* The clattn executable: picks the subcommand named by argv[1] and hands it the rest.
 * Everything a command does lives in src/cli/cmd_*.c (library clattn_cli); this file only
 * knows the table of commands, the global --help and --version. */
#include "clattn.h"
#include "cli_util.h"
#include "commands.h"

#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"devices", cmd_devices, "list every OpenCL platform/device with its capabilities"},
    {"run", cmd_run, "compute attention on .npy files (clattn run --help)"},
    {"check", cmd_check, "correctness of every path on every device against the CPU reference"},
    {"bench", cmd_bench, "measure attention speed per device, path and shape"},
    {"quantize", cmd_quantize, "quantize and dequantize [..., D] vectors with a KV-cache format"},
    {"tune", cmd_tune, "search each path's tuning parameters on a device; write a tuning file"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f,
            "usage: clattn COMMAND [options]\n"
            "       clattn --help | --version\n"
            "\n"
            "Scaled dot-product attention on any OpenCL device.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f,
            "\n"
            "Every command takes --help. Errors print one line on stderr and exit non-zero\n"
            "(1: the work failed, 2: bad command line); no partial output file is left.\n"
            "Environment: CLATTN_DEVICE, CLATTN_PATH, CLATTN_LOG=1, CLATTN_CACHE_DIR\n"
            "(see include/clattn.h).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        cli_error(NULL, "missing command (try clattn --help)");
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        /* "clattn help run" is "clattn run --help" */
        if (strcmp(name, "help") == 0 && argc > 2) {
            for (size_t i = 0; i < NCOMMANDS; i++)
                if (strcmp(argv[2], commands[i].name) == 0) {
                    char *sub[3] = {argv[2], "--help", NULL};
                    return commands[i].run(2, sub);
                }
            cli_error(NULL, "unknown command '%s' (try clattn --help)", argv[2]);
            return CLI_EXIT_USAGE;
        }
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("clattn %s\n", clattn_version_string());
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    if (name[0] == '-')
        cli_error(NULL, "unknown option '%s' before the command (try clattn --help)", name);
    else
        cli_error(NULL, "unknown command '%s' (try clattn --help)", name);
    return CLI_EXIT_USAGE;
}
