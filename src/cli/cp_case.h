/* `clattn run` and `clattn bench` with --context-parallel ring|zigzag|ulysses, under
 * mpirun in a build with -DCLATTN_WITH_MPI=ON (libclattn_mpi). Without MPI the option is
 * refused with a message saying how to get it. */
#ifndef CLATTN_CP_CASE_H
#define CLATTN_CP_CASE_H

#include <stdbool.h>

#include "clattn.h"
#include "commands.h"

/* Check --context-parallel's value and what it cannot combine with; one cli_error line
 * and -1 when refused (always, in a build without MPI), else 0. */
int cp_check_args(const char *cmd, const char *scheme, bool kv_quant, bool varlen, bool backward);

/* Start MPI (if the program has not) and return this rank, or -1 (message printed). */
int cp_begin(void);

/* What `clattn run` lends the context-parallel run: rank 0 has read the files into the
 * inputs and whole output tensors, as a plain run prepares them, and writes them (write);
 * every rank computes its slices. */
typedef struct cp_io {
    void *state;
    int (*write)(void *state); /* 0 on success, else one cli_error line printed */
    const clattn_tensor *q, *k, *v;
    clattn_tensor *o;
    const clattn_options *opt; /* rank 0's: mask, kv_lens, alibi and lse set by load */
    const char *out_name;      /* --out, for the line printed on success */
} cp_io;

/* The rest of `clattn run --context-parallel` after cp_begin: loaded is rank 0's verdict
 * on reading the files (the other ranks pass true). Returns the exit status, the same on
 * every rank. device: --device (NULL = the default). */
int cp_run_command(const run_args *a, const char *scheme, const char *device, bool loaded,
                   cp_io *io);

/* `clattn bench --context-parallel`: per-rank compute, transfer, wait and overlap for
 * one --shape. */
int cp_bench_command(const bench_args *o);

#endif
