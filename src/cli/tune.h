/* What `clattn tune`'s files share: the tuner a run carries through the search, the
 * outcome of one problem class, the SIGINT flag, and the search (tune_search.c) and
 * record writing (tune_write.c) that cmd_tune.c drives. */
#ifndef CLATTN_CLI_TUNE_H
#define CLATTN_CLI_TUNE_H

#include "support/attn_case.h"
#include "core/context.h"
#include "tuning/tuning.h"

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* One tuning run: its context and deadline, the records found so far, and the random
 * stream candidates are drawn from. */
typedef struct tuner {
    clattn_context *ctx;
    double deadline;
    char (*records)[1024]; /* the records written */
    size_t nrecords;
    uint64_t rng;
    int64_t max_candidates; /* per class; 0 = no bound */
} tuner;

/* What tune_class found for one problem class, for the summary table. */
typedef struct outcome {
    char label[96];
    double default_ms, tuned_ms;
    int tried;
    char source[24];
} outcome;

/* Set by SIGINT: the search stops and what was found is written. */
extern volatile sig_atomic_t tune_interrupted;

static inline double tune_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Tune path on case c until `until`; fills o and appends the class's record (the best
 * row, or the built-in one when nothing beat it clearly). */
void tune_class(tuner *t, clattn__tpath path, const attn_case *c, double until, outcome *o);

/* Write t's records into the tuning file out, keeping the old records of other devices,
 * paths and classes; renamed over out only once complete. false after one error line. */
bool tune_write_file(const tuner *t, const char *out);

#endif /* CLATTN_CLI_TUNE_H */
