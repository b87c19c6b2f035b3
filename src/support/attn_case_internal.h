/* What the attention case files share (support/attn_case*.c only): the random streams
 * the cases and their data are drawn from, and small facts about a case. */
#ifndef CLATTN_ATTN_CASE_INTERNAL_H
#define CLATTN_ATTN_CASE_INTERNAL_H

#include "support/attn_case.h"

#include "core/rng.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Random numbers (splitmix64: tiny, and the same on every platform) ------------- */
/* Uniform in [0, 1). */
static inline double rng_unit(uint64_t *s)
{
    return (double)(clattn__splitmix64(s) >> 11) * 0x1.0p-53;
}

/* Uniform integer in lo..hi (inclusive). */
static inline int64_t rng_int(uint64_t *s, int64_t lo, int64_t hi)
{
    if (hi <= lo) return lo;
    return lo + (int64_t)(clattn__splitmix64(s) % (uint64_t)(hi - lo + 1));
}

static inline int64_t rng_pick(uint64_t *s, const int64_t *list, size_t n)
{
    return list[clattn__splitmix64(s) % n];
}

/* ---- Facts about a case ------------------------------------------------------------- */
/* The mask's rank with its default (0 = 4) applied. */
static inline int attn_case__mask_rank(const attn_case *c)
{
    return c->mask_rank >= 2 ? c->mask_rank : 4;
}

static inline int attn_case__has_scale(const attn_case *c)
{
    return c->scale != 0.0f && !isnan(c->scale);
}

/* Options for c whose tensors point into d: the device copies when device is set and d
 * was uploaded, else the host ones (as the reference reads them). attn_case_data.c. */
void attn_case__options_for(const attn_case *c, attn_case_data *d, int device,
                            clattn_options *opt);

#endif /* CLATTN_ATTN_CASE_INTERNAL_H */
