/* Entry points of the clattn subcommands (SPEC §2), one file each in src/cli/. Each takes
 * the arguments after "clattn" (argv[0] is the subcommand's name), prints its own usage
 * for --help, and returns a CLI_EXIT_* status (cli_util.h). They live in the clattn_cli
 * library rather than in main.c so tests and tools can call them directly. */
#ifndef CLATTN_COMMANDS_H
#define CLATTN_COMMANDS_H

int cmd_devices(int argc, char **argv); /* cmd_devices.c */
int cmd_run(int argc, char **argv);     /* cmd_run.c */
int cmd_check(int argc, char **argv);   /* cmd_check.c */
int cmd_bench(int argc, char **argv);   /* cmd_bench.c */
int cmd_quantize(int argc, char **argv); /* cmd_quantize.c */

#endif /* CLATTN_COMMANDS_H */
