/* Attention problem cases (see attn_case.h): formatting a case, the fixed suite that
 * covers SPEC §1, the FLOPs of a case and the --shape parser. Random cases are in
 * attn_case_random.c, their data in attn_case_data.c, the comparison with the float64 CPU
 * reference that the tests, `clattn check` and `clattn bench` all share in
 * attn_case_compare.c. */
#include "support/attn_case_internal.h"
#include "cli_util.h"

#include "core/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int attn_case_format(const attn_case *c, char *buf, size_t n)
{
    char win[64], mask[64], scale[32];
    if (c->window)
        snprintf(win, sizeof win, "%lld,%lld", (long long)c->win_left, (long long)c->win_right);
    else
        snprintf(win, sizeof win, "none");
    if (c->mask_kind != ATTN_MASK_NONE)
        snprintf(mask, sizeof mask, "%s/rank%d/ones0x%x",
                 c->mask_kind == ATTN_MASK_BOOL ? "bool" : "float", attn_case__mask_rank(c),
                 c->mask_ones & 0xfu);
    else
        snprintf(mask, sizeof mask, "none");
    if (attn_case__has_scale(c))
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
