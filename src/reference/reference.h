/* What the float64 CPU references (reference.c, reference_backward.c) share. */
#ifndef CLATTN_REFERENCE_H
#define CLATTN_REFERENCE_H

#include "core/problem.h"

/* The keys query row i may see by position (causal, window), up to kv_len: [*jlo, *jhi). */
void clattn__ref_key_range(const clattn__problem *p, int64_t i, int64_t kv_len, int64_t *jlo,
                           int64_t *jhi);
/* SPEC §1 steps 3-5 on a score already scaled and soft-capped: ALiBi (slope of head h),
 * the float mask added, -INFINITY where a bool mask excludes key j. */
double clattn__ref_bias(const clattn__problem *p, double sc, int64_t b, int64_t h, int64_t i,
                        int64_t j, double slope);

#endif /* CLATTN_REFERENCE_H */
