/* What the two halves of `clattn run` share: the option ids and table, the usage text,
 * and the macro that finds an option's value (cmd_run_args.c parses the command line,
 * cmd_run.c does the work). */
#ifndef CLATTN_CMD_RUN_H
#define CLATTN_CMD_RUN_H

#include "commands.h"

#include <getopt.h>
#include <stdio.h>

enum {
    OPT_Q = 256,
    OPT_K,
    OPT_V,
    OPT_OUT,
    OPT_LSE,
    OPT_MASK,
    OPT_CAUSAL,
    OPT_WINDOW,
    OPT_KV_LENS,
    OPT_SCALE,
    OPT_SOFTCAP,
    OPT_ALIBI,
    OPT_LAYOUT,
    OPT_PATH,
    OPT_DEVICE,
    OPT_OUT_DTYPE,
    OPT_KV_QUANT,
    OPT_GRAD_OUT,
    OPT_DQ,
    OPT_DK,
    OPT_DV,
    OPT_VARLEN,
    OPT_PAGED_KV,
    OPT_CONTEXT_PARALLEL,
    OPT_END_
};
#define NOPTS (OPT_END_ - OPT_Q)

extern const struct option cmd_run_longopts[];

/* The value of option id in run_args a (NULL when not given). */
#define ARGV_OF(a, id) ((a)->arg[(id) - OPT_Q])

void cmd_run_usage(FILE *f);

#endif /* CLATTN_CMD_RUN_H */
