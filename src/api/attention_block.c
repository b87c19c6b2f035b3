/* clattn_attention_block: the attention of one block of query rows over one block of
 * keys, placed at global positions inside a bigger problem. Ring attention, zigzag
 * slicing and the key split of a device group all compute such blocks and merge the
 * partial (O, LSE) states. Causal, window and ALiBi are functions of global positions;
 * they become the block's own window after trimming the rows and keys that see nothing
 * (always exact), and ALiBi at an offset becomes a float mask for the block built on the
 * host, so the kernels never need to know about offsets. */
#include "core/problem.h"
#include "core/context.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Positions: g = i'_global - j_global must lie in [gmin, gmax] (causal, window). */
#define BIG_ (INT64_MAX / 4)

/* How the block is computed. In the block's own coordinates a pair (i, j) has
 * x = i + lk - lq - j (clattn's bottom-right alignment), and g = x + delta. The allowed
 * band of g is always one interval of x; the block's own window can express an interval
 * [-right, left] with both ends on their side of 0. Two trims move any other band there
 * exactly: dropping the last query rows (which see no key at all) raises x, and dropping
 * the last keys (which no row sees) lowers it. */
typedef struct block_plan {
    bool skip;          /* every (query, key) pair of the block is excluded by position */
    bool materialize;   /* ALiBi at an offset across g = 0, or with a mask: one float mask */
    int alibi_sign;     /* ALiBi at an offset, g of one sign: +1 (g >= 0) or -1 (g <= 0);
                           0 = the slopes are passed as they are, or materialized */
    int64_t rows;       /* query rows computed (0 .. rows-1); the others see no key */
    int64_t keys;       /* keys passed (0 .. keys-1); no row sees the others */
    int64_t wl, wr;     /* the trimmed block's own window, -1 = unbounded */
    int64_t gmin, gmax; /* allowed g, for the materialized mask */
    int64_t delta;      /* g = (i + keys - rows - j) + delta in the trimmed block */
} block_plan;

static void plan_block(const clattn_options *o, const clattn_block *bk, int64_t lq, int64_t lk,
                       block_plan *p)
{
    memset(p, 0, sizeof *p);
    p->wl = p->wr = -1;
    p->rows = lq;
    p->keys = lk;
    int64_t gmin = -BIG_, gmax = BIG_;
    if (o->causal == CLATTN_CAUSAL_BOTTOM_RIGHT) gmin = 0;
    if (o->causal == CLATTN_CAUSAL_TOP_LEFT) gmin = bk->lk_total - bk->lq_total;
    if (o->window_right >= 0 && -o->window_right > gmin) gmin = -o->window_right;
    if (o->window_left >= 0) gmax = o->window_left;
    p->gmin = gmin;
    p->gmax = gmax;
    const int64_t delta = bk->q_start + bk->lk_total - bk->lq_total - bk->k_start - (lk - lq);
    /* x spans [1 - lq, lk - 1]; allowed x is [al, au] */
    const int64_t al = gmin == -BIG_ ? -BIG_ : gmin - delta;
    const int64_t au = gmax == BIG_ ? BIG_ : gmax - delta;
    if (lk == 0 || lq == 0 || al > au || au < 1 - lq || al > lk - 1) {
        p->skip = true;
        return;
    }
    /* au < 0: row i sees keys j >= i + lk - lq - au only, so rows from lq + au on see none;
     * without them x rises by -au and the upper edge sits at 0 */
    int64_t shift = 0;
    if (au < 0) {
        p->rows = lq + au;
        shift = -au;
    }
    const int64_t al1 = al == -BIG_ ? -BIG_ : al + shift, au1 = au == BIG_ ? BIG_ : au + shift;
    /* al1 > 0: row i sees keys j <= i + lk - lq - al1 only, so the last al1 keys are seen
     * by no row; without them x falls by al1 and the lower edge sits at 0 */
    int64_t m = 0;
    if (al1 > 0) {
        m = al1;
        p->keys = lk - m;
    }
    const int64_t al2 = al1 == -BIG_ ? -BIG_ : al1 - m, au2 = au1 == BIG_ ? BIG_ : au1 - m;
    if (al2 > 1 - p->rows) p->wr = -al2;        /* al2 <= 0 here */
    if (au2 < p->keys - 1) p->wl = au2;         /* au2 >= 0 here */
    p->delta = delta + m - shift;
    /* ALiBi reads |i' - j|: the block's own positions give it only when they are global.
     * Otherwise, when every pair the block computes has g of one sign, |g| = ±g splits
     * into a per-key bias (a [1, Hq, 1, keys] mask) and a per-row constant, which leaves
     * O alone and is added to the LSE afterwards; else one float mask holds it all. */
    if (o->alibi && p->delta != 0) {
        const int64_t lo = 1 - p->rows + p->delta, hi = p->keys - 1 + p->delta;
        const int64_t gl = gmin > lo ? gmin : lo, gu = gmax < hi ? gmax : hi;
        if (!o->mask && gl >= 0)
            p->alibi_sign = 1;
        else if (!o->mask && gu <= 0)
            p->alibi_sign = -1;
        else
            p->materialize = true;
    }
}

static int64_t bcast(const clattn_tensor *t, int a, int64_t i) { return t->ne[a] == 1 ? 0 : i; }

/* Extents start .. start+len-1 of dimension a of a host tensor. */
static clattn_tensor dim_view(const clattn_tensor *t, int a, int64_t start, int64_t len)
{
    clattn_tensor v = *t;
    v.offset += (size_t)(start * v.nb[a]);
    v.ne[a] = len;
    return v;
}

/* A view of a global mask's rows and keys for the block (broadcast extents stay 1). */
static clattn_tensor mask_view(const clattn_tensor *m, const clattn_block *bk, int64_t lq,
                               int64_t lk)
{
    clattn_tensor t = *m;
    if (t.ne[2] != 1) {
        t.offset += (size_t)(bk->q_start * t.nb[2]);
        t.ne[2] = lq;
    }
    if (t.ne[3] != 1) {
        t.offset += (size_t)(bk->k_start * t.nb[3]);
        t.ne[3] = lk;
    }
    return t;
}

static clattn_status check_host(clattn_context *ctx, const clattn_tensor *t, const char *name)
{
    CLATTN_RETURN_IF(ctx, t && (!t->host || t->buffer), CLATTN_ERROR_INVALID_ARGUMENT,
                     "clattn_attention_block: %s must be a host tensor", name);
    if (t)
        for (int a = 0; a < 4; a++)
            CLATTN_RETURN_IF(ctx, t->nb[a] < 0 || t->ne[a] < 0, CLATTN_ERROR_INVALID_STRIDE,
                             "clattn_attention_block: %s has a negative extent or stride", name);
    return CLATTN_SUCCESS;
}

/* O = 0 and LSE = -inf for every row of the block: all of its keys are excluded. */
static void write_empty(const clattn_tensor *o, const clattn_tensor *lse)
{
    const size_t es = clattn_dtype_size(o->dtype);
    unsigned char *ob = (unsigned char *)o->host + o->offset;
    for (int64_t a = 0; a < o->ne[0]; a++)
        for (int64_t b = 0; b < o->ne[1]; b++)
            for (int64_t c = 0; c < o->ne[2]; c++)
                for (int64_t d = 0; d < o->ne[3]; d++)
                    memset(ob + a * o->nb[0] + b * o->nb[1] + c * o->nb[2] + d * o->nb[3], 0, es);
    if (!lse) return;
    unsigned char *lb = (unsigned char *)lse->host + lse->offset;
    const float ninf = -INFINITY;
    for (int64_t a = 0; a < lse->ne[0]; a++)
        for (int64_t b = 0; b < lse->ne[1]; b++)
            for (int64_t c = 0; c < lse->ne[2]; c++)
                memcpy(lb + a * lse->nb[0] + b * lse->nb[1] + c * lse->nb[2], &ninf, sizeof ninf);
}

clattn_status clattn_attention_block(clattn_context *ctx, const clattn_block *bk,
                                     const clattn_tensor *q, const clattn_tensor *k,
                                     const clattn_tensor *v, clattn_tensor *o,
                                     const clattn_options *opt, int *computed)
{
    if (!ctx) return CLATTN_ERROR_INVALID_ARGUMENT;
    ctx->last_error[0] = '\0';
    if (computed) *computed = 0;
    CLATTN_RETURN_IF(ctx, !bk || !q || !k || !v || !o, CLATTN_ERROR_INVALID_ARGUMENT,
                     "clattn_attention_block: block, q, k, v and o must not be NULL");
    char err[1024];
    clattn_options full;
    clattn_status st = clattn__options_read(opt, &full, err, sizeof err);
    if (st != CLATTN_SUCCESS) return clattn__fail(ctx, st, "%s", err);
    CLATTN_FORWARD(check_host(ctx, q, "q"));
    CLATTN_FORWARD(check_host(ctx, k, "k"));
    CLATTN_FORWARD(check_host(ctx, v, "v"));
    CLATTN_FORWARD(check_host(ctx, o, "o"));
    CLATTN_FORWARD(check_host(ctx, full.lse, "options.lse"));
    CLATTN_FORWARD(check_host(ctx, full.mask, "options.mask"));
    CLATTN_FORWARD(check_host(ctx, full.kv_lens, "options.kv_lens"));
    CLATTN_FORWARD(check_host(ctx, full.alibi, "options.alibi"));
    CLATTN_RETURN_IF(ctx, full.num_wait_events, CLATTN_ERROR_INVALID_ARGUMENT,
                     "clattn_attention_block: wait events are not taken (host tensors only)");
    const int64_t B = q->ne[0], Hq = q->ne[1], lq = q->ne[2], lk = k->ne[2];
    CLATTN_RETURN_IF(ctx,
                     bk->lq_total < 0 || bk->lk_total < 0 || bk->q_start < 0 || bk->k_start < 0 ||
                         lq > bk->lq_total - bk->q_start || lk > bk->lk_total - bk->k_start,
                     CLATTN_ERROR_INVALID_SHAPE,
                     "clattn_attention_block: rows %lld..+%lld and keys %lld..+%lld do not fit "
                     "in Lq = %lld, Lk = %lld",
                     (long long)bk->q_start, (long long)lq, (long long)bk->k_start, (long long)lk,
                     (long long)bk->lq_total, (long long)bk->lk_total);
    const clattn_tensor *m = full.mask;
    if (m) {
        CLATTN_RETURN_IF(ctx, m->dtype != CLATTN_BOOL && m->dtype != CLATTN_F32,
                         CLATTN_ERROR_UNSUPPORTED_DTYPE, "clattn_attention_block: mask must be bool or f32");
        CLATTN_RETURN_IF(ctx,
                         (m->ne[0] != 1 && m->ne[0] != B) || (m->ne[1] != 1 && m->ne[1] != Hq) ||
                             (m->ne[2] != 1 && m->ne[2] != bk->lq_total) ||
                             (m->ne[3] != 1 && m->ne[3] != bk->lk_total),
                         CLATTN_ERROR_INVALID_SHAPE,
                         "clattn_attention_block: mask [%lld, %lld, %lld, %lld] does not broadcast "
                         "to the whole problem [%lld, %lld, %lld, %lld]",
                         (long long)m->ne[0], (long long)m->ne[1], (long long)m->ne[2],
                         (long long)m->ne[3], (long long)B, (long long)Hq,
                         (long long)bk->lq_total, (long long)bk->lk_total);
    }
    const clattn_tensor *kl = full.kv_lens;
    if (kl)
        CLATTN_RETURN_IF(ctx, kl->dtype != CLATTN_I32 || kl->ne[0] != B,
                         CLATTN_ERROR_INVALID_SHAPE, "clattn_attention_block: kv_lens must be int32 [B]");
    if (full.alibi)
        CLATTN_RETURN_IF(ctx, full.alibi->dtype != CLATTN_F32 || full.alibi->ne[0] != Hq,
                         CLATTN_ERROR_INVALID_SHAPE, "clattn_attention_block: alibi must be f32 [Hq]");
    CLATTN_RETURN_IF(ctx, full.window_left < -1 || full.window_right < -1,
                     CLATTN_ERROR_INVALID_ARGUMENT,
                     "clattn_attention_block: window (%lld, %lld): each side >= 0 or -1",
                     (long long)full.window_left, (long long)full.window_right);

    block_plan p;
    plan_block(&full, bk, lq, lk, &p);
    const int64_t rows = p.skip ? 0 : p.rows, keys = p.skip ? 0 : p.keys;

    /* The trimmed block's tensors and options: global ones translated. */
    clattn_tensor qv = dim_view(q, 2, 0, rows), kv = dim_view(k, 2, 0, keys),
                  vv = dim_view(v, 2, 0, keys), ov = dim_view(o, 2, 0, rows), lv;
    clattn_options loc = full;
    loc.causal = CLATTN_CAUSAL_NONE;
    loc.window_left = p.wl;
    loc.window_right = p.wr;
    if (full.lse) {
        lv = dim_view(full.lse, 2, 0, rows);
        loc.lse = &lv;
    }
    clattn_tensor mview, lens_t, mat_t;
    int32_t *lens = NULL;
    float *mat = NULL;
    if (kl) {
        lens = malloc((size_t)(B ? B : 1) * sizeof *lens);
        CLATTN_RETURN_IF(ctx, !lens, CLATTN_ERROR_OUT_OF_MEMORY, "clattn_attention_block: no memory");
        for (int64_t b = 0; b < B; b++) {
            int64_t n = (int64_t)clattn__host_get(kl, b, 0, 0, 0) - bk->k_start;
            lens[b] = (int32_t)(n < 0 ? 0 : n > keys ? keys : n);
        }
        lens_t = clattn_tensor_host(lens, CLATTN_I32, B, 1, 1, 1);
        loc.kv_lens = &lens_t;
    }
    if (m && !p.materialize && !p.skip) {
        mview = mask_view(m, bk, rows, keys);
        loc.mask = &mview;
    }
    if (p.alibi_sign && !p.skip) {
        /* s - slope*|g| = s + sign*slope*j - sign*slope*(i + keys - rows + delta) */
        mat = malloc((size_t)(Hq * keys) * sizeof *mat + sizeof *mat);
        if (!mat) {
            free(lens);
            return clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "clattn_attention_block: no memory");
        }
        for (int64_t h = 0; h < Hq; h++) {
            const double slope = clattn__host_get(full.alibi, h, 0, 0, 0);
            for (int64_t j = 0; j < keys; j++) mat[h * keys + j] = (float)(p.alibi_sign * slope * (double)j);
        }
        mat_t = clattn_tensor_host(mat, CLATTN_F32, 1, Hq, 1, keys);
        loc.mask = &mat_t;
        loc.alibi = NULL;
    }
    if (p.materialize && !p.skip) {
        /* positions, ALiBi and the caller's mask in one additive mask */
        const int64_t Bm = m && m->ne[0] != 1 ? B : 1;
        const int64_t Hm = full.alibi || (m && m->ne[1] != 1) ? Hq : 1;
        int64_t n = 0;
        bool ok = clattn__mul_ok(Bm, Hm, &n) && clattn__mul_ok(n, rows, &n) &&
                  clattn__mul_ok(n, keys, &n) && n <= (int64_t)(SIZE_MAX / sizeof(float));
        mat = ok ? malloc((size_t)(n ? n : 1) * sizeof *mat) : NULL;
        if (!mat) {
            free(lens);
            return clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY,
                                "clattn_attention_block: no memory for the block's mask "
                                "[%lld, %lld, %lld, %lld]",
                                (long long)Bm, (long long)Hm, (long long)rows, (long long)keys);
        }
        float *w = mat;
        for (int64_t b = 0; b < Bm; b++)
            for (int64_t h = 0; h < Hm; h++) {
                const double slope = full.alibi ? clattn__host_get(full.alibi, h, 0, 0, 0) : 0.0;
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < keys; j++) {
                        const int64_t g = i + keys - rows - j + p.delta;
                        double sv = 0.0;
                        if (g < p.gmin || g > p.gmax) sv = -INFINITY;
                        if (m && sv == 0.0) {
                            double mv = clattn__host_get(m, bcast(m, 0, b), bcast(m, 1, h),
                                                         bcast(m, 2, bk->q_start + i),
                                                         bcast(m, 3, bk->k_start + j));
                            if (m->dtype == CLATTN_BOOL)
                                sv = mv == 0.0 ? -INFINITY : 0.0;
                            else
                                sv = mv;
                        }
                        if (full.alibi && sv != -INFINITY) sv -= slope * (double)(g < 0 ? -g : g);
                        *w++ = (float)sv;
                    }
            }
        mat_t = clattn_tensor_host(mat, CLATTN_F32, Bm, Hm, rows, keys);
        loc.mask = &mat_t;
        loc.window_left = loc.window_right = -1;
        loc.alibi = NULL;
    }
    if (p.skip || lk == 0) {
        /* validate the block's tensors as a real call would, then write the empty rows */
        clattn__problem pr;
        loc.mask = NULL; /* the global mask was checked above; the block reads none */
        loc.window_left = loc.window_right = -1;
        loc.lse = full.lse;
        st = lk == 0 || lq == 0 ? CLATTN_SUCCESS
                                : clattn__problem_init(&pr, q, k, v, o, &loc, err, sizeof err);
        if (st == CLATTN_SUCCESS) write_empty(o, full.lse);
        else st = clattn__fail(ctx, st, "%s", err);
    } else {
        st = clattn_attention(ctx, &qv, &kv, &vv, &ov, &loc, NULL);
        if (st == CLATTN_SUCCESS && p.alibi_sign && full.lse) /* the per-row ALiBi constant */
            for (int64_t b = 0; b < B; b++)
                for (int64_t h = 0; h < Hq; h++) {
                    const double slope = clattn__host_get(full.alibi, h, 0, 0, 0);
                    for (int64_t i = 0; i < rows; i++) {
                        unsigned char *at = (unsigned char *)lv.host + lv.offset + b * lv.nb[0] +
                                            h * lv.nb[1] + i * lv.nb[2];
                        float x;
                        memcpy(&x, at, sizeof x);
                        if (x == -INFINITY) continue;
                        x = (float)((double)x - p.alibi_sign * slope * (double)(i + keys - rows + p.delta));
                        memcpy(at, &x, sizeof x);
                    }
                }
        if (st == CLATTN_SUCCESS && rows < lq) {
            /* the trimmed rows see no key */
            clattn_tensor orest = dim_view(o, 2, rows, lq - rows), lrest;
            if (full.lse) lrest = dim_view(full.lse, 2, rows, lq - rows);
            write_empty(&orest, full.lse ? &lrest : NULL);
        }
        if (st == CLATTN_SUCCESS && computed) *computed = 1;
    }
    free(lens);
    free(mat);
    return st;
}
