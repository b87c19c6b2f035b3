/* Random attention cases over every option, shape, dtype and layout (see
 * attn_case_random in attn_case.h), drawn from a seed so a failing one can be rebuilt. */
#include "support/attn_case_internal.h"

#include <string.h>

/* Head dims: the sizes kernels specialise for, and odd ones that catch tail handling. */
static int64_t random_head_dim(uint64_t *s)
{
    static const int64_t common[] = {1, 3, 64, 72, 80, 96, 128, 256, 32, 16};
    if (rng_unit(s) < 0.6) return rng_pick(s, common, sizeof common / sizeof common[0]);
    return rng_int(s, 1, 256);
}

static int64_t random_length(uint64_t *s)
{
    static const int64_t lens[] = {1,  1,  2,  3,  5,  7,  8,   15,  16,  17,  31, 32,
                                   33, 63, 64, 65, 100, 127, 128, 129, 255, 257, 300};
    if (rng_unit(s) < 0.7) return rng_pick(s, lens, sizeof lens / sizeof lens[0]);
    return rng_int(s, 1, 300);
}

static int64_t random_window_side(uint64_t *s, int64_t L)
{
    static const int64_t sides[] = {-1, -1, 0, 1, 3, 16};
    if (rng_unit(s) < 0.7) return rng_pick(s, sides, sizeof sides / sizeof sides[0]);
    return rng_int(s, 0, L);
}

static double case_work(const attn_case *c)
{
    return (double)c->B * (double)c->Hq * (double)c->Lq * (double)c->Lk *
           (double)(c->D + attn_case_dv(c));
}

void attn_case_random(uint64_t seed, attn_case *c)
{
    uint64_t s = seed ^ 0x5eedc0de12345678ull;
    memset(c, 0, sizeof *c);
    c->seed = seed; /* attn_case_random(seed) rebuilds the same case */

    c->D = random_head_dim(&s);
    c->Dv = rng_unit(&s) < 0.6 ? c->D : random_head_dim(&s);
    c->Lq = random_length(&s);
    c->Lk = rng_unit(&s) < 0.3 ? c->Lq : random_length(&s);
    c->B = rng_int(&s, 1, 3);
    c->Hkv = rng_int(&s, 1, 3);
    static const int64_t groups[] = {1, 1, 2, 3, 4, 8};
    c->Hq = c->Hkv * rng_pick(&s, groups, sizeof groups / sizeof groups[0]);

    double u = rng_unit(&s);
    c->dtype = u < 0.5 ? CLATTN_F32 : u < 0.8 ? CLATTN_F16 : CLATTN_BF16;
    u = rng_unit(&s);
    c->out_dtype = u < 0.6 ? CLATTN_F32 : u < 0.9 ? CLATTN_F16 : CLATTN_BF16;
    c->blhd = rng_unit(&s) < 0.3;
    u = rng_unit(&s);
    c->padded = u < 0.6 ? 0 : u < 0.85 ? 1 : 2;

    u = rng_unit(&s);
    c->causal = u < 0.5 ? CLATTN_CAUSAL_NONE
                : u < 0.75 ? CLATTN_CAUSAL_TOP_LEFT : CLATTN_CAUSAL_BOTTOM_RIGHT;
    if (rng_unit(&s) < 0.25) {
        c->window = 1;
        c->win_left = random_window_side(&s, c->Lk);
        c->win_right = random_window_side(&s, c->Lk);
    } else {
        c->win_left = c->win_right = -1;
    }
    u = rng_unit(&s);
    if (u < 0.35) {
        c->mask_kind = u < 0.175 ? ATTN_MASK_BOOL : ATTN_MASK_FLOAT;
        c->mask_rank = (int)rng_int(&s, 2, 4);
        for (int a = 4 - c->mask_rank; a < 4; a++)
            if (rng_unit(&s) < 0.25) c->mask_ones |= 1u << a;
    }
    c->kv_lens = rng_unit(&s) < 0.25;
    if (rng_unit(&s) < 0.2) c->softcap = (float)(0.5 + 29.5 * rng_unit(&s));
    c->alibi = rng_unit(&s) < 0.2;
    if (rng_unit(&s) < 0.2) c->scale = (float)(0.05 + 0.95 * rng_unit(&s));
    c->lse = rng_unit(&s) < 0.7;
    c->path = CLATTN_PATH_AUTO;

    /* Shrink the longest axis first until the case is cheap on a CPU device. */
    while (case_work(c) > 4e6) {
        if (c->Lk >= c->Lq && c->Lk > 16)
            c->Lk = c->Lk / 2 + 1;
        else if (c->Lq > 16)
            c->Lq = c->Lq / 2 + 1;
        else if (c->B > 1)
            c->B--;
        else if (c->Hq > c->Hkv)
            c->Hq -= c->Hkv;
        else if (c->Hkv > 1)
            c->Hq = --c->Hkv;
        else if (c->Lk > 1)
            c->Lk = c->Lk / 2 + 1;
        else
            break;
    }
}
