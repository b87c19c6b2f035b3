/* The serving cases of `clattn bench` (--paged, --cascade, --varlen; bench_paged.c): each
 * times two ways of the same work interleaved and prints both and their ratio. */
#ifndef CLATTN_BENCH_PAGED_H
#define CLATTN_BENCH_PAGED_H

#include "commands.h"

#include <stdbool.h>
#include <stdio.h>

typedef struct bench_serving_ctx {
    clattn_context *ctx;
    const clattn_device_props *props;
    FILE *json;       /* JSON Lines output, or NULL */
    long runs, warmup; /* --runs (0: about 6 s of both ways) and --warmup */
} bench_serving_ctx;

/* Is s a serving case (--paged, --cascade or --varlen given)? */
bool bench_serving_wanted(const bench_spec *s);
/* Run it on bc->ctx, printing its rows; the status of the first failure. */
clattn_status bench_serving_run(const bench_serving_ctx *bc, const bench_spec *s);

#endif /* CLATTN_BENCH_PAGED_H */
