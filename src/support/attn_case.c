/* Attention problem cases (see attn_case.h): formatting, the fixed suite that covers
 * SPEC §1, random cases, deterministic data in any layout, and the comparison with the
 * float64 CPU reference that the tests, `clattn check` and `clattn bench` all share. */
#include "support/attn_case.h"
#include "cli_util.h"

#include "core/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Random numbers (splitmix64: tiny, and the same on every platform) ------------- */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* Uniform integer in lo..hi (inclusive). */
static int64_t rng_int(uint64_t *s, int64_t lo, int64_t hi)
{
    if (hi <= lo) return lo;
    return lo + (int64_t)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static int64_t rng_pick(uint64_t *s, const int64_t *list, size_t n)
{
    return list[rng_next(s) % n];
}

/* ---- Describing a case ------------------------------------------------------------ */
int64_t attn_case_dv(const attn_case *c) { return c->Dv > 0 ? c->Dv : c->D; }

static const char *causal_name(clattn_causal c)
{
    switch (c) {
    case CLATTN_CAUSAL_NONE: return "none";
    case CLATTN_CAUSAL_TOP_LEFT: return "top-left";
    case CLATTN_CAUSAL_BOTTOM_RIGHT: return "bottom-right";
    }
    return "?";
}

static int mask_rank(const attn_case *c) { return c->mask_rank >= 2 ? c->mask_rank : 4; }

static int has_scale(const attn_case *c) { return c->scale != 0.0f && !isnan(c->scale); }

int attn_case_format(const attn_case *c, char *buf, size_t n)
{
    char win[64], mask[64], scale[32];
    if (c->window)
        snprintf(win, sizeof win, "%lld,%lld", (long long)c->win_left, (long long)c->win_right);
    else
        snprintf(win, sizeof win, "none");
    if (c->mask_kind != ATTN_MASK_NONE)
        snprintf(mask, sizeof mask, "%s/rank%d/ones0x%x",
                 c->mask_kind == ATTN_MASK_BOOL ? "bool" : "float", mask_rank(c),
                 c->mask_ones & 0xfu);
    else
        snprintf(mask, sizeof mask, "none");
    if (has_scale(c))
        snprintf(scale, sizeof scale, "%.9g", (double)c->scale);
    else
        snprintf(scale, sizeof scale, "default");
    return snprintf(buf, n,
                    "case %s: B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld D=%lld Dv=%lld dtype=%s "
                    "out=%s layout=%s padded=%d causal=%s window=%s mask=%s kv_lens=%d "
                    "softcap=%.9g alibi=%d scale=%s lse=%d seed=%llu path=%s",
                    c->name ? c->name : "random", (long long)c->B, (long long)c->Hq,
                    (long long)c->Hkv, (long long)c->Lq, (long long)c->Lk, (long long)c->D,
                    (long long)attn_case_dv(c), clattn_dtype_name(c->dtype),
                    clattn_dtype_name(c->out_dtype), c->blhd ? "blhd" : "bhld", c->padded,
                    causal_name(c->causal), win, mask, c->kv_lens, (double)c->softcap, c->alibi,
                    scale, c->lse, (unsigned long long)c->seed, clattn_path_name(c->path));
}

/* ---- The fixed suite ---------------------------------------------------------------- */
#define SHAPE(b, hq, hkv, lq, lk, d, dv) .B = b, .Hq = hq, .Hkv = hkv, .Lq = lq, .Lk = lk, .D = d, .Dv = dv
#define WIN(l, r) .window = 1, .win_left = l, .win_right = r
#define TL .causal = CLATTN_CAUSAL_TOP_LEFT
#define BR .causal = CLATTN_CAUSAL_BOTTOM_RIGHT
#define BOOLMASK(r) .mask_kind = ATTN_MASK_BOOL, .mask_rank = r
#define FLOATMASK(r) .mask_kind = ATTN_MASK_FLOAT, .mask_rank = r
/* mask_ones bits */
#define ONE_B 1u
#define ONE_H 2u
#define ONE_Q 4u
#define ONE_K 8u

/* Each entry names the rule it exercises. Masks: mask rows r with r % 7 == 3 are fully
 * excluded (see fill_mask), so every mask case also has fully masked rows. */
static const attn_case suite[] = {
    /* plain attention and shapes */
    {.name = "basic", SHAPE(1, 2, 2, 17, 33, 64, 64), .lse = 1, .seed = 1},
    {.name = "multi_batch_square", SHAPE(2, 4, 4, 64, 64, 128, 128), .lse = 1, .seed = 2},
    {.name = "lq1_decode", SHAPE(2, 4, 4, 1, 300, 128, 128), .lse = 1, .seed = 3},
    {.name = "lk1_output_is_v_row", SHAPE(1, 2, 2, 9, 1, 32, 32), .lse = 1, .seed = 4},
    {.name = "lq1_lk1", SHAPE(1, 1, 1, 1, 1, 8, 8), .lse = 1, .seed = 5},
    {.name = "d1", SHAPE(1, 2, 2, 13, 29, 1, 1), .lse = 1, .seed = 6},
    {.name = "d3", SHAPE(1, 2, 2, 13, 29, 3, 3), .seed = 7},
    {.name = "d72", SHAPE(1, 2, 2, 33, 47, 72, 72), .seed = 8},
    {.name = "d80", SHAPE(1, 2, 2, 33, 47, 80, 80), .seed = 9},
    {.name = "d96", SHAPE(1, 2, 2, 33, 47, 96, 96), .seed = 10},
    {.name = "d256", SHAPE(1, 2, 2, 33, 65, 256, 256), .lse = 1, .seed = 11},
    {.name = "dv_smaller_than_d", SHAPE(1, 2, 2, 21, 37, 64, 32), .seed = 12},
    {.name = "dv_larger_than_d", SHAPE(1, 2, 2, 21, 37, 32, 128), .seed = 13},
    {.name = "d80_dv72", SHAPE(1, 2, 2, 21, 37, 80, 72), .seed = 14},
    {.name = "d1_dv256", SHAPE(1, 1, 1, 7, 19, 1, 256), .seed = 15},
    {.name = "larger_square", SHAPE(1, 2, 2, 256, 256, 128, 128), .lse = 1, .seed = 16},
    /* heads */
    {.name = "gqa_8_2", SHAPE(2, 8, 2, 19, 41, 64, 64), .lse = 1, .seed = 20},
    {.name = "gqa_6_2", SHAPE(1, 6, 2, 19, 41, 32, 32), .seed = 21},
    {.name = "mqa_8_1", SHAPE(1, 8, 1, 19, 41, 64, 64), .lse = 1, .seed = 22},
    {.name = "mqa_decode", SHAPE(2, 8, 1, 1, 129, 128, 128), .lse = 1, .seed = 23},
    /* boolean masks, every rank, with broadcasting */
    {.name = "bool_mask_rank2", SHAPE(1, 2, 2, 23, 31, 64, 64), BOOLMASK(2), .lse = 1, .seed = 30},
    {.name = "bool_mask_rank3", SHAPE(2, 3, 3, 23, 31, 32, 32), BOOLMASK(3), .seed = 31},
    {.name = "bool_mask_rank4", SHAPE(2, 2, 2, 23, 31, 32, 32), BOOLMASK(4), .lse = 1, .seed = 32},
    {.name = "bool_mask_rank4_bcast_b_lq", SHAPE(2, 4, 2, 23, 31, 32, 32), BOOLMASK(4),
     .mask_ones = ONE_B | ONE_Q, .lse = 1, .seed = 33},
    {.name = "bool_mask_rank3_bcast_h_lk", SHAPE(2, 4, 2, 23, 31, 32, 32), BOOLMASK(3),
     .mask_ones = ONE_H | ONE_K, .lse = 1, .seed = 34},
    {.name = "bool_mask_key_padding", SHAPE(2, 2, 2, 23, 31, 32, 32), BOOLMASK(2),
     .mask_ones = ONE_Q, .seed = 35},
    /* additive float masks, with -inf */
    {.name = "float_mask_rank2", SHAPE(1, 2, 2, 30, 37, 64, 64), FLOATMASK(2), .lse = 1,
     .seed = 40},
    {.name = "float_mask_rank3_bcast_h", SHAPE(2, 4, 4, 19, 37, 32, 32), FLOATMASK(3),
     .mask_ones = ONE_H, .seed = 41},
    {.name = "float_mask_rank4", SHAPE(2, 2, 2, 19, 37, 32, 32), FLOATMASK(4), .lse = 1,
     .seed = 42},
    {.name = "float_mask_rank4_bcast_b_gqa", SHAPE(2, 8, 2, 19, 37, 64, 64), FLOATMASK(4),
     .mask_ones = ONE_B, .lse = 1, .seed = 43},
    /* causal: top-left and bottom-right with Lq == Lk, Lq < Lk, Lq > Lk */
    {.name = "causal_tl_square", SHAPE(1, 2, 2, 37, 37, 64, 64), TL, .lse = 1, .seed = 50},
    {.name = "causal_tl_lq_lt_lk", SHAPE(1, 2, 2, 13, 50, 64, 64), TL, .lse = 1, .seed = 51},
    {.name = "causal_tl_lq_gt_lk", SHAPE(1, 2, 2, 50, 13, 64, 64), TL, .lse = 1, .seed = 52},
    {.name = "causal_tl_lq1", SHAPE(1, 2, 2, 1, 77, 64, 64), TL, .lse = 1, .seed = 53},
    {.name = "causal_br_square", SHAPE(1, 2, 2, 37, 37, 64, 64), BR, .lse = 1, .seed = 54},
    {.name = "causal_br_lq_lt_lk", SHAPE(1, 2, 2, 13, 50, 64, 64), BR, .lse = 1, .seed = 55},
    {.name = "causal_br_lq_gt_lk_masked_rows", SHAPE(1, 2, 2, 50, 13, 64, 64), BR, .lse = 1,
     .seed = 56},
    {.name = "causal_br_decode", SHAPE(2, 4, 2, 1, 77, 128, 128), BR, .lse = 1, .seed = 57},
    {.name = "causal_br_f16_long", SHAPE(1, 2, 1, 200, 333, 64, 64), BR,
     .dtype = CLATTN_F16, .seed = 58},
    /* windows (left, right), -1 = unbounded */
    {.name = "window_unbounded_0", SHAPE(1, 2, 2, 41, 41, 64, 64), WIN(-1, 0), .lse = 1, .seed = 60},
    {.name = "window_3_unbounded", SHAPE(1, 2, 2, 41, 41, 64, 64), WIN(3, -1), .lse = 1, .seed = 61},
    {.name = "window_2_2", SHAPE(1, 2, 2, 29, 47, 64, 64), WIN(2, 2), .lse = 1, .seed = 62},
    {.name = "window_0_0", SHAPE(1, 2, 2, 29, 29, 32, 32), WIN(0, 0), .lse = 1, .seed = 63},
    {.name = "window_unbounded_both", SHAPE(1, 2, 2, 29, 47, 32, 32), WIN(-1, -1), .seed = 64},
    {.name = "window_lq_gt_lk_masked_rows", SHAPE(1, 2, 2, 40, 11, 32, 32), WIN(2, 0),
     .lse = 1, .seed = 65},
    {.name = "window_with_causal_br", SHAPE(1, 2, 2, 64, 128, 64, 64), BR, WIN(16, -1),
     .lse = 1, .seed = 66},
    {.name = "window_with_causal_tl", SHAPE(1, 2, 2, 30, 20, 32, 32), TL, WIN(4, 4), .lse = 1,
     .seed = 67},
    /* per-batch key lengths (batch 1 has 0 keys, batch 2 all Lk) */
    {.name = "kv_lens", SHAPE(3, 2, 2, 17, 45, 64, 64), .kv_lens = 1, .lse = 1, .seed = 70},
    {.name = "kv_lens_causal_br", SHAPE(4, 2, 2, 9, 45, 64, 64), .kv_lens = 1, BR, .lse = 1,
     .seed = 71},
    {.name = "kv_lens_decode_mqa", SHAPE(3, 4, 1, 1, 100, 128, 128), .kv_lens = 1, .lse = 1,
     .seed = 72},
    /* score transforms */
    {.name = "softcap_1", SHAPE(1, 2, 2, 23, 41, 64, 64), .softcap = 1.0f, .lse = 1, .seed = 80},
    {.name = "softcap_30_scale_1", SHAPE(1, 2, 2, 23, 41, 64, 64), .softcap = 30.0f,
     .scale = 1.0f, .lse = 1, .seed = 81},
    {.name = "alibi", SHAPE(1, 4, 4, 23, 41, 64, 64), .alibi = 1, .lse = 1, .seed = 82},
    {.name = "alibi_causal_br", SHAPE(2, 4, 2, 20, 60, 64, 64), .alibi = 1, BR, .lse = 1,
     .seed = 83},
    {.name = "scale_explicit", SHAPE(1, 2, 2, 23, 41, 64, 64), .scale = 0.37f, .lse = 1,
     .seed = 84},
    {.name = "scale_softcap_alibi", SHAPE(1, 4, 2, 23, 41, 64, 64), .scale = 0.8f,
     .softcap = 5.0f, .alibi = 1, .lse = 1, .seed = 85},
    /* storage types */
    {.name = "f16_storage", SHAPE(1, 2, 2, 37, 53, 64, 64), .dtype = CLATTN_F16, .lse = 1,
     .seed = 90},
    {.name = "bf16_storage", SHAPE(1, 2, 2, 37, 53, 64, 64), .dtype = CLATTN_BF16, .lse = 1,
     .seed = 91},
    {.name = "f16_out", SHAPE(1, 2, 2, 37, 53, 64, 64), .out_dtype = CLATTN_F16, .seed = 92},
    {.name = "bf16_out", SHAPE(1, 2, 2, 37, 53, 64, 64), .out_dtype = CLATTN_BF16, .seed = 93},
    {.name = "f16_in_out_causal_br", SHAPE(1, 2, 2, 37, 53, 128, 128), .dtype = CLATTN_F16,
     .out_dtype = CLATTN_F16, BR, .seed = 94},
    {.name = "bf16_gqa_bool_mask", SHAPE(1, 4, 2, 37, 53, 96, 96), .dtype = CLATTN_BF16,
     BOOLMASK(4), .seed = 95},
    /* layouts and views */
    {.name = "blhd", SHAPE(2, 4, 4, 19, 33, 64, 64), .blhd = 1, .lse = 1, .seed = 100},
    {.name = "blhd_f16_gqa", SHAPE(1, 8, 2, 19, 33, 64, 64), .blhd = 1, .dtype = CLATTN_F16,
     .seed = 101},
    {.name = "padded", SHAPE(2, 2, 2, 19, 33, 64, 64), .padded = 1, .lse = 1, .seed = 102},
    {.name = "padded_strided_elements", SHAPE(1, 2, 2, 19, 33, 40, 24), .padded = 2, .lse = 1,
     .seed = 103},
    {.name = "padded_blhd_float_mask_f16_out", SHAPE(2, 4, 2, 19, 33, 64, 64), .padded = 1,
     .blhd = 1, FLOATMASK(3), .out_dtype = CLATTN_F16, .lse = 1, .seed = 104},
    /* rows with every key excluded, several ways at once */
    {.name = "fully_masked_rows_mixed", SHAPE(3, 2, 2, 30, 12, 32, 32), BOOLMASK(4),
     .kv_lens = 1, BR, .lse = 1, .seed = 110},
    {.name = "fully_masked_by_float_mask", SHAPE(1, 2, 2, 30, 25, 32, 32), FLOATMASK(2),
     .lse = 1, .seed = 111},
    /* every option together */
    {.name = "everything", SHAPE(3, 6, 2, 29, 53, 80, 72), .dtype = CLATTN_F16,
     .out_dtype = CLATTN_F16, .blhd = 1, .padded = 1, BR, WIN(7, 3), FLOATMASK(4),
     .mask_ones = ONE_H, .kv_lens = 1, .softcap = 3.0f, .alibi = 1, .scale = 0.2f, .lse = 1,
     .seed = 120},
};

const attn_case *attn_case_suite(size_t *n)
{
    if (n) *n = sizeof suite / sizeof suite[0];
    return suite;
}

/* ---- Random cases --------------------------------------------------------------------- */
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

/* ---- Data ------------------------------------------------------------------------------ */
/* A descriptor for logical extents ne stored with memory order `order` (logical axes,
 * outermost first). padded adds gaps after every inner block and a leading offset, and
 * with 2 a gap between elements, so kernels that assume dense strides read garbage.
 * *bytes receives the allocation size. */
static clattn_tensor make_layout(clattn_dtype dt, const int64_t ne[4], const int order[4],
                                 int padded, size_t *bytes)
{
    clattn_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    const int64_t es = (int64_t)clattn_dtype_size(dt);
    static const int64_t gap[4] = {1, 2, 1, 3}; /* elements added after level a's block */
    int64_t stride = es * (padded == 2 ? 2 : 1);
    for (int a = 3; a >= 0; a--) {
        const int ax = order[a];
        t.ne[ax] = ne[ax];
        t.nb[ax] = stride;
        stride = stride * ne[ax] + (padded ? gap[a] * es : 0);
    }
    t.offset = padded ? (size_t)(5 * es) : 0;
    *bytes = t.offset + (size_t)stride + 1; /* +1: never a zero-byte allocation */
    return t;
}

static void put(const clattn_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3,
                double v)
{
    unsigned char *p = (unsigned char *)t->host + t->offset + i0 * t->nb[0] + i1 * t->nb[1] +
                       i2 * t->nb[2] + i3 * t->nb[3];
    switch (t->dtype) {
    case CLATTN_F32: {
        float f = (float)v;
        memcpy(p, &f, sizeof f);
        break;
    }
    case CLATTN_F16: {
        uint16_t h = clattn__float_to_half((float)v);
        memcpy(p, &h, sizeof h);
        break;
    }
    case CLATTN_BF16: {
        uint16_t h = clattn__float_to_bf16((float)v);
        memcpy(p, &h, sizeof h);
        break;
    }
    case CLATTN_BOOL: *p = v != 0.0; break;
    case CLATTN_I32: {
        int32_t i = (int32_t)v;
        memcpy(p, &i, sizeof i);
        break;
    }
    }
}

/* Allocate buffer `which` of d laid out by make_layout; every byte starts as 0xff (NaN in
 * every float type), so padding that a kernel reads by mistake poisons the result. */
static int alloc_buf(attn_case_data *d, int which, clattn_dtype dt, const int64_t ne[4],
                     const int order[4], int padded)
{
    size_t bytes;
    clattn_tensor t = make_layout(dt, ne, order, padded, &bytes);
    d->buf[which].host = malloc(bytes);
    if (!d->buf[which].host) return 0;
    memset(d->buf[which].host, 0xff, bytes);
    t.host = d->buf[which].host;
    d->buf[which].t = t;
    d->buf[which].bytes = bytes;
    d->buf[which].present = 1;
    return 1;
}

/* Uniform values in [-amp, amp] for every element. */
static void fill_uniform(const clattn_tensor *t, uint64_t *s, double amp)
{
    for (int64_t a = 0; a < t->ne[0]; a++)
        for (int64_t b = 0; b < t->ne[1]; b++)
            for (int64_t i = 0; i < t->ne[2]; i++)
                for (int64_t j = 0; j < t->ne[3]; j++)
                    put(t, a, b, i, j, amp * (2.0 * rng_unit(s) - 1.0));
}

/* Bool masks allow a key with probability 3/4; float masks add -inf with probability
 * 1/10, else a value in [-4, 2]. Mask rows r (counted over the mask's own extents) with
 * r % 7 == 3 exclude every key, so fully masked rows appear whenever there are 4+ rows. */
static void fill_mask(const clattn_tensor *t, uint64_t *s, int kind)
{
    int64_t r = 0;
    for (int64_t a = 0; a < t->ne[0]; a++)
        for (int64_t b = 0; b < t->ne[1]; b++)
            for (int64_t i = 0; i < t->ne[2]; i++, r++)
                for (int64_t j = 0; j < t->ne[3]; j++) {
                    const int all_out = (r % 7 == 3);
                    double v;
                    if (kind == ATTN_MASK_BOOL)
                        v = !all_out && rng_unit(s) < 0.75;
                    else
                        v = all_out || rng_unit(s) < 0.1 ? -INFINITY : -4.0 + 6.0 * rng_unit(s);
                    put(t, a, b, i, j, v);
                }
}

/* Key length of batch b: see attn_case.kv_lens. */
static int64_t kv_len_value(int64_t b, int64_t Lk, uint64_t *s)
{
    if (b == 0) return rng_int(s, Lk > 0 ? 1 : 0, Lk);
    if (b == 1) return 0;
    if (b == 2) return Lk;
    return rng_int(s, 0, Lk);
}

static uint64_t stream_seed(const attn_case *c, int which)
{
    uint64_t s = c->seed * 0x2545f4914f6cdd1dull + (uint64_t)which * 0x9e3779b97f4a7c15ull;
    rng_next(&s);
    return s;
}

clattn_status attn_case_data_create(const attn_case *c, attn_case_data **out)
{
    if (!c || !out) return CLATTN_ERROR_INVALID_ARGUMENT;
    *out = NULL;
    attn_case_data *d = calloc(1, sizeof *d);
    if (!d) return CLATTN_ERROR_OUT_OF_MEMORY;
    d->c = *c;
    const int64_t Dv = attn_case_dv(c);
    static const int bhld[4] = {0, 1, 2, 3}, blhd[4] = {0, 2, 1, 3};
    const int *order = c->blhd ? blhd : bhld;
    int ok = 1;

    const int64_t qne[4] = {c->B, c->Hq, c->Lq, c->D}, kne[4] = {c->B, c->Hkv, c->Lk, c->D},
                  vne[4] = {c->B, c->Hkv, c->Lk, Dv}, one[4] = {c->B, c->Hq, c->Lq, Dv},
                  lne[4] = {c->B, c->Hq, c->Lq, 1};
    ok = ok && alloc_buf(d, ATTN_BUF_Q, c->dtype, qne, order, c->padded);
    ok = ok && alloc_buf(d, ATTN_BUF_K, c->dtype, kne, order, c->padded);
    ok = ok && alloc_buf(d, ATTN_BUF_V, c->dtype, vne, order, c->padded);
    ok = ok && alloc_buf(d, ATTN_BUF_O, c->out_dtype, one, order, c->padded);
    if (ok && c->lse) ok = alloc_buf(d, ATTN_BUF_LSE, CLATTN_F32, lne, bhld, c->padded);
    if (ok && c->mask_kind != ATTN_MASK_NONE) {
        const int64_t full[4] = {c->B, c->Hq, c->Lq, c->Lk};
        int64_t mne[4];
        for (int a = 0; a < 4; a++)
            mne[a] = (a < 4 - mask_rank(c) || (c->mask_ones >> a & 1u)) ? 1 : full[a];
        clattn_dtype mdt = c->mask_kind == ATTN_MASK_BOOL ? CLATTN_BOOL : CLATTN_F32;
        ok = alloc_buf(d, ATTN_BUF_MASK, mdt, mne, bhld, c->padded);
    }
    if (ok && c->kv_lens) {
        const int64_t ne[4] = {c->B, 1, 1, 1};
        ok = alloc_buf(d, ATTN_BUF_KV_LENS, CLATTN_I32, ne, bhld, 0);
    }
    if (ok && c->alibi) {
        const int64_t ne[4] = {c->Hq, 1, 1, 1};
        ok = alloc_buf(d, ATTN_BUF_ALIBI, CLATTN_F32, ne, bhld, 0);
    }
    if (!ok) {
        attn_case_data_free(d);
        return CLATTN_ERROR_OUT_OF_MEMORY;
    }

    /* q spans [-4, 4] and k, v [-1, 1]: scores have a spread of about 1.3, so softmax is
     * neither flat nor one-hot, and softcaps of a few units bite. */
    uint64_t s = stream_seed(c, ATTN_BUF_Q);
    fill_uniform(&d->buf[ATTN_BUF_Q].t, &s, 4.0);
    s = stream_seed(c, ATTN_BUF_K);
    fill_uniform(&d->buf[ATTN_BUF_K].t, &s, 1.0);
    s = stream_seed(c, ATTN_BUF_V);
    fill_uniform(&d->buf[ATTN_BUF_V].t, &s, 1.0);
    if (d->buf[ATTN_BUF_MASK].present) {
        s = stream_seed(c, ATTN_BUF_MASK);
        fill_mask(&d->buf[ATTN_BUF_MASK].t, &s, c->mask_kind);
    }
    if (d->buf[ATTN_BUF_KV_LENS].present) {
        s = stream_seed(c, ATTN_BUF_KV_LENS);
        for (int64_t b = 0; b < c->B; b++)
            put(&d->buf[ATTN_BUF_KV_LENS].t, b, 0, 0, 0, (double)kv_len_value(b, c->Lk, &s));
    }
    if (d->buf[ATTN_BUF_ALIBI].present) {
        /* The slopes of the ALiBi paper for a power-of-two head count. */
        for (int64_t h = 0; h < c->Hq; h++)
            put(&d->buf[ATTN_BUF_ALIBI].t, h, 0, 0, 0,
                pow(2.0, -8.0 * (double)(h + 1) / (double)c->Hq));
    }
    *out = d;
    return CLATTN_SUCCESS;
}

void attn_case_data_free(attn_case_data *d)
{
    if (!d) return;
    for (int i = 0; i < ATTN_BUF_COUNT; i++) {
        free(d->buf[i].host);
        if (d->buf[i].mem) clReleaseMemObject(d->buf[i].mem);
    }
    if (d->queue) clReleaseCommandQueue(d->queue);
    free(d);
}

/* Upload every buffer: each into a cl_mem of its own, or (packed) all into one cl_mem at
 * 256-byte-aligned offsets, each slot holding its own reference to it. */
static clattn_status upload(clattn_context *ctx, attn_case_data *d, bool packed)
{
    if (!ctx || !d) return CLATTN_ERROR_INVALID_ARGUMENT;
    cl_context clctx = clattn_context_cl_context(ctx);
    cl_command_queue queue = clattn_context_cl_queue(ctx);
    if (!d->queue) {
        cl_int err = clRetainCommandQueue(queue);
        if (err != CL_SUCCESS) return (clattn_status)err;
        d->queue = queue;
    }
    cl_mem shared = NULL;
    if (packed) {
        size_t total = 256;
        for (int i = 0; i < ATTN_BUF_COUNT; i++)
            if (d->buf[i].present && !d->buf[i].mem) total += (d->buf[i].bytes + 255) / 256 * 256;
        cl_int err;
        shared = clCreateBuffer(clctx, CL_MEM_READ_WRITE, total, NULL, &err);
        if (err != CL_SUCCESS) return (clattn_status)err;
    }
    size_t next = 256;
    for (int i = 0; i < ATTN_BUF_COUNT; i++) {
        if (!d->buf[i].present || d->buf[i].mem) continue;
        cl_int err = CL_SUCCESS;
        if (packed) {
            d->buf[i].mem = shared;
            d->buf[i].mem_off = next;
            next += (d->buf[i].bytes + 255) / 256 * 256;
            clRetainMemObject(shared);
        } else {
            d->buf[i].mem = clCreateBuffer(clctx, CL_MEM_READ_WRITE, d->buf[i].bytes, NULL, &err);
            d->buf[i].mem_off = 0;
        }
        if (err == CL_SUCCESS)
            err = clEnqueueWriteBuffer(queue, d->buf[i].mem, CL_TRUE, d->buf[i].mem_off,
                                       d->buf[i].bytes, d->buf[i].host, 0, NULL, NULL);
        if (err != CL_SUCCESS) {
            if (shared) clReleaseMemObject(shared);
            return (clattn_status)err;
        }
        d->buf[i].dt = d->buf[i].t;
        d->buf[i].dt.host = NULL;
        d->buf[i].dt.buffer = d->buf[i].mem;
        d->buf[i].dt.offset += d->buf[i].mem_off;
    }
    if (shared) clReleaseMemObject(shared); /* the slots hold it now */
    return CLATTN_SUCCESS;
}

clattn_status attn_case_data_upload(clattn_context *ctx, attn_case_data *d)
{
    return upload(ctx, d, false);
}

clattn_status attn_case_data_upload_packed(clattn_context *ctx, attn_case_data *d)
{
    return upload(ctx, d, true);
}

clattn_status attn_case_reset_outputs(attn_case_data *d)
{
    static const int outs[2] = {ATTN_BUF_O, ATTN_BUF_LSE};
    for (int k = 0; k < 2; k++) {
        const int i = outs[k];
        if (!d->buf[i].present) continue;
        memset(d->buf[i].host, 0xff, d->buf[i].bytes);
        if (d->buf[i].mem) {
            cl_int err = clEnqueueWriteBuffer(d->queue, d->buf[i].mem, CL_TRUE, d->buf[i].mem_off,
                                              d->buf[i].bytes, d->buf[i].host, 0, NULL, NULL);
            if (err != CL_SUCCESS) return (clattn_status)err;
        }
    }
    return CLATTN_SUCCESS;
}

static clattn_tensor *tensor_of(attn_case_data *d, int which, int device)
{
    if (!d->buf[which].present) return NULL;
    return device && d->buf[which].mem ? &d->buf[which].dt : &d->buf[which].t;
}

void attn_case_tensors(attn_case_data *d, clattn_tensor *q, clattn_tensor *k,
                       clattn_tensor *v, clattn_tensor *o)
{
    if (q) *q = *tensor_of(d, ATTN_BUF_Q, 1);
    if (k) *k = *tensor_of(d, ATTN_BUF_K, 1);
    if (v) *v = *tensor_of(d, ATTN_BUF_V, 1);
    if (o) *o = *tensor_of(d, ATTN_BUF_O, 1);
}

static void options_for(const attn_case *c, attn_case_data *d, int device, clattn_options *opt)
{
    clattn_options_init(opt);
    if (has_scale(c)) opt->scale = c->scale;
    opt->softcap = c->softcap;
    opt->causal = c->causal;
    if (c->window) {
        opt->window_left = c->win_left;
        opt->window_right = c->win_right;
    }
    opt->mask = tensor_of(d, ATTN_BUF_MASK, device);
    opt->kv_lens = tensor_of(d, ATTN_BUF_KV_LENS, device);
    opt->alibi = tensor_of(d, ATTN_BUF_ALIBI, device);
    opt->lse = tensor_of(d, ATTN_BUF_LSE, device);
    opt->path = c->path;
}

void attn_case_options(const attn_case *c, attn_case_data *d, clattn_options *opt)
{
    options_for(c, d, 1, opt);
}

clattn_status attn_case_run(clattn_context *ctx, const attn_case *c, attn_case_data *d,
                            cl_event *event)
{
    clattn_tensor q, k, v, o;
    clattn_options opt;
    attn_case_tensors(d, &q, &k, &v, &o);
    attn_case_options(c, d, &opt);
    return clattn_attention(ctx, &q, &k, &v, &o, &opt, event);
}

/* ---- Comparison with the reference ---------------------------------------------------- */
/* Mark the bytes t's elements occupy in used[] (indexed from the allocation start). */
static void mark_elements(const clattn_tensor *t, unsigned char *used)
{
    const size_t es = clattn_dtype_size(t->dtype);
    for (int64_t a = 0; a < t->ne[0]; a++)
        for (int64_t b = 0; b < t->ne[1]; b++)
            for (int64_t i = 0; i < t->ne[2]; i++)
                for (int64_t j = 0; j < t->ne[3]; j++) {
                    size_t off = t->offset + (size_t)(a * t->nb[0] + b * t->nb[1] +
                                                      i * t->nb[2] + j * t->nb[3]);
                    memset(used + off, 1, es);
                }
}

/* Bytes of an output allocation outside its elements that lost the 0xff sentinel. */
static int64_t clobbered_bytes(const attn_case_data *d, int which, size_t *first)
{
    unsigned char *used = calloc(d->buf[which].bytes, 1);
    if (!used) return -1;
    mark_elements(&d->buf[which].t, used);
    int64_t n = 0;
    for (size_t i = 0; i < d->buf[which].bytes; i++)
        if (!used[i] && d->buf[which].host[i] != 0xff) {
            if (n == 0) *first = i;
            n++;
        }
    free(used);
    return n;
}

static clattn_status read_back(attn_case_data *d, int which)
{
    if (!d->buf[which].present || !d->buf[which].mem) return CLATTN_SUCCESS;
    cl_int err = clEnqueueReadBuffer(d->queue, d->buf[which].mem, CL_TRUE, d->buf[which].mem_off,
                                     d->buf[which].bytes, d->buf[which].host, 0, NULL, NULL);
    return err == CL_SUCCESS ? CLATTN_SUCCESS : (clattn_status)err;
}

#define NOTE(...) \
    do { \
        if (r->msg[0] == '\0') snprintf(r->msg, sizeof r->msg, __VA_ARGS__); \
    } while (0)

clattn_status attn_case_compare(const attn_case *c, attn_case_data *d, attn_case_result *r)
{
    if (!c || !d || !r) return CLATTN_ERROR_INVALID_ARGUMENT;
    memset(r, 0, sizeof *r);
    CLATTN_FORWARD(read_back(d, ATTN_BUF_O));
    CLATTN_FORWARD(read_back(d, ATTN_BUF_LSE));

    const int64_t B = c->B, Hq = c->Hq, Lq = c->Lq, Dv = attn_case_dv(c);
    const size_t rows = (size_t)(B * Hq * Lq);
    double *ref = malloc((rows * (size_t)Dv + 1) * sizeof *ref);
    double *ref_lse = malloc((rows + 1) * sizeof *ref_lse);
    if (!ref || !ref_lse) {
        free(ref);
        free(ref_lse);
        return CLATTN_ERROR_OUT_OF_MEMORY;
    }
    /* The reference reads the host copies, which are the exact inputs the device got. */
    clattn_options opt;
    options_for(c, d, 0, &opt);
    clattn_status st =
        clattn_reference_attention(&d->buf[ATTN_BUF_Q].t, &d->buf[ATTN_BUF_K].t,
                                   &d->buf[ATTN_BUF_V].t, &opt, ref, ref_lse);
    if (st != CLATTN_SUCCESS) {
        free(ref);
        free(ref_lse);
        return st;
    }

    switch (c->out_dtype) {
    case CLATTN_F16: r->atol = 3e-3, r->rtol = 3e-3; break;
    case CLATTN_BF16: r->atol = 3e-3, r->rtol = 1e-2; break;
    default: r->atol = 2e-4, r->rtol = 2e-3; break;
    }

    const clattn_tensor *o = &d->buf[ATTN_BUF_O].t;
    const clattn_tensor *lse = c->lse ? &d->buf[ATTN_BUF_LSE].t : NULL;
    r->lse_checked = lse != NULL;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const int64_t row = (b * Hq + h) * Lq + i;
                const int masked = ref_lse[row] == -INFINITY;
                r->masked_rows += masked;
                for (int64_t e = 0; e < Dv; e++) {
                    const double got = clattn__host_get(o, b, h, i, e);
                    const double want = ref[row * Dv + e];
                    if (isnan(got)) {
                        NOTE("O[%lld,%lld,%lld,%lld] is NaN (reference %.6g)", (long long)b,
                             (long long)h, (long long)i, (long long)e, want);
                        r->nan_count++;
                        continue;
                    }
                    if (masked) {
                        if (got != 0.0) {
                            NOTE("fully masked row O[%lld,%lld,%lld,:] has %.6g at %lld, not 0",
                                 (long long)b, (long long)h, (long long)i, got, (long long)e);
                            r->masked_nonzero++;
                        }
                        continue;
                    }
                    const double err = fabs(got - want) / (r->atol + r->rtol * fabs(want));
                    if (err > r->max_err) {
                        r->max_err = err;
                        r->worst[0] = b, r->worst[1] = h, r->worst[2] = i, r->worst[3] = e;
                        r->worst_got = got;
                        r->worst_ref = want;
                    }
                }
                if (!lse) continue;
                const double got = clattn__host_get(lse, b, h, i, 0);
                const double want = ref_lse[row];
                double err;
                if (isnan(got)) {
                    NOTE("LSE[%lld,%lld,%lld] is NaN (reference %.6g)", (long long)b,
                         (long long)h, (long long)i, want);
                    r->nan_count++;
                    continue;
                }
                if (want == -INFINITY || got == -INFINITY)
                    err = got == want ? 0.0 : INFINITY;
                else
                    err = fabs(got - want) / (1e-3 + 1e-4 * fabs(want));
                if (err > r->lse_max_err) {
                    r->lse_max_err = err;
                    r->lse_worst[0] = b, r->lse_worst[1] = h, r->lse_worst[2] = i;
                    r->lse_worst_got = got;
                    r->lse_worst_ref = want;
                }
            }
    free(ref);
    free(ref_lse);

    static const int outs[2] = {ATTN_BUF_O, ATTN_BUF_LSE};
    for (int k = 0; k < 2; k++) {
        if (!d->buf[outs[k]].present) continue;
        size_t first = 0;
        int64_t n = clobbered_bytes(d, outs[k], &first);
        if (n < 0) return CLATTN_ERROR_OUT_OF_MEMORY;
        if (n > 0)
            NOTE("%lld padding bytes of %s changed (first at byte %zu)", (long long)n,
                 k == 0 ? "O" : "LSE", first);
        r->padding_clobbered += n;
    }

    if (r->max_err > 1.0)
        NOTE("O[%lld,%lld,%lld,%lld] = %.8g, reference %.8g (error %.3g x tolerance)",
             (long long)r->worst[0], (long long)r->worst[1], (long long)r->worst[2],
             (long long)r->worst[3], r->worst_got, r->worst_ref, r->max_err);
    if (r->lse_max_err > 1.0)
        NOTE("LSE[%lld,%lld,%lld] = %.8g, reference %.8g (error %.3g x tolerance)",
             (long long)r->lse_worst[0], (long long)r->lse_worst[1], (long long)r->lse_worst[2],
             r->lse_worst_got, r->lse_worst_ref, r->lse_max_err);
    r->ok = r->max_err <= 1.0 && r->lse_max_err <= 1.0 && r->nan_count == 0 &&
            r->masked_nonzero == 0 && r->padding_clobbered == 0;
    return CLATTN_SUCCESS;
}

int attn_case_result_format(const attn_case_result *r, char *buf, size_t n)
{
    char lse[96];
    if (r->lse_checked)
        snprintf(lse, sizeof lse, " lse_err=%.3g at [%lld,%lld,%lld]", r->lse_max_err,
                 (long long)r->lse_worst[0], (long long)r->lse_worst[1],
                 (long long)r->lse_worst[2]);
    else
        lse[0] = '\0';
    return snprintf(buf, n,
                    "%s: err=%.3g at [%lld,%lld,%lld,%lld] (got %.8g, ref %.8g; tol %.0e+%.0e|ref|)"
                    "%s nan=%lld masked_rows=%lld masked_nonzero=%lld padding_clobbered=%lld%s%s",
                    r->ok ? "ok" : "FAIL", r->max_err, (long long)r->worst[0],
                    (long long)r->worst[1], (long long)r->worst[2], (long long)r->worst[3],
                    r->worst_got, r->worst_ref, r->atol, r->rtol, lse, (long long)r->nan_count,
                    (long long)r->masked_rows, (long long)r->masked_nonzero,
                    (long long)r->padding_clobbered, r->msg[0] ? ": " : "", r->msg);
}

/* ---- Work ------------------------------------------------------------------------------- */
double attn_case_flops(const attn_case *c, const attn_case_data *d)
{
    const int64_t Lq = c->Lq, Lk = c->Lk;
    double pairs = 0.0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t kv_len = Lk;
        if (d && d->buf[ATTN_BUF_KV_LENS].present)
            kv_len = (int64_t)clattn__host_get(&d->buf[ATTN_BUF_KV_LENS].t, b, 0, 0, 0);
        for (int64_t i = 0; i < Lq; i++) {
            /* The same key range as the reference and the kernels. */
            const int64_t ip = i + Lk - Lq;
            int64_t lo = 0, hi = kv_len;
            if (c->causal == CLATTN_CAUSAL_TOP_LEFT && hi > i + 1) hi = i + 1;
            if (c->causal == CLATTN_CAUSAL_BOTTOM_RIGHT && hi > ip + 1) hi = ip + 1;
            if (c->window && c->win_left >= 0 && lo < ip - c->win_left) lo = ip - c->win_left;
            if (c->window && c->win_right >= 0 && hi > ip + c->win_right + 1)
                hi = ip + c->win_right + 1;
            if (hi > lo) pairs += (double)(hi - lo);
        }
    }
    return pairs * (double)c->Hq * 2.0 * (double)(c->D + attn_case_dv(c));
}

bool attn_case_parse_shape(const char *text, attn_case *c)
{
    int64_t v[7] = {0};
    int n = 0;
    char buf[160];
    if (strlen(text) >= sizeof buf) return false;
    strcpy(buf, text);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == 7 || !cli_parse_int64(tok, &v[n]) || v[n] < 1 || v[n] > ((int64_t)1 << 24)) return false;
        n++;
    }
    if (n != 6 && n != 7) return false;
    c->B = v[0];
    c->Hq = v[1];
    c->Hkv = v[2];
    c->Lq = v[3];
    c->Lk = v[4];
    c->D = v[5];
    c->Dv = n == 7 ? v[6] : v[5];
    return true;
}
