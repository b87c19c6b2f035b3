/* --paged-kv for run and bench (paged_case.h): each batch entry becomes a sequence of a
 * paged pool, its pages taken from a list shuffled by the seed, so the pages of every
 * sequence are scattered through the pool as a server's would be. */
#include "paged_case.h"
#include "cli_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool paged_parse(const char *arg, int *page_size, unsigned long long *seed, char *err, size_t errlen)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", arg);
    char *comma = strchr(buf, ',');
    if (comma) *comma = '\0';
    int64_t ps = 0, sd = 0;
    if (!cli_parse_int64(buf, &ps) || ps < 1 || ps > 256 || (ps & (ps - 1))) {
        snprintf(err, errlen, "'%s': the page size must be a power of two from 1 to 256", arg);
        return false;
    }
    if (comma && (!cli_parse_int64(comma + 1, &sd) || sd < 0)) {
        snprintf(err, errlen, "'%s': the seed after the comma must be an integer >= 0", arg);
        return false;
    }
    *page_size = (int)ps;
    *seed = (unsigned long long)sd;
    return true;
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

void paged_release(paged_prepared *pp)
{
    clattn_kv_pool_free(pp->pool);
    free(pp->indptr);
    free(pp->indices);
    free(pp->last);
    free(pp->qo);
    free(pp->qp);
    free(pp->op);
    free(pp->lp);
    memset(pp, 0, sizeof *pp);
}

/* [B, H, L, n] viewed as the packed [1, H, B*L, n] rows without a copy: possible when L
 * is 1 (rows b are nb[0] apart) or the batch stride is L row strides (BLHD storage). */
static bool packed_view(const clattn_tensor *t, clattn_tensor *out)
{
    const int64_t B = t->ne[0], H = t->ne[1], L = t->ne[2], n = t->ne[3];
    if (L != 1 && t->nb[0] != L * t->nb[2] && B != 1) return false;
    *out = *t;
    out->ne[0] = 1;
    out->ne[1] = H;
    out->ne[2] = B * L;
    out->ne[3] = n;
    out->nb[0] = 0;
    out->nb[2] = L == 1 && B != 1 ? t->nb[0] : t->nb[2];
    return true;
}

clattn_status paged_prepare(clattn_context *ctx, const clattn_tensor *q, const clattn_tensor *k,
                            const clattn_tensor *v, const clattn_options *opt, const int32_t *lens,
                            clattn_kv_format format, int page_size, unsigned long long seed, paged_prepared *pp)
{
    memset(pp, 0, sizeof *pp);
    if (opt) pp->opt = *opt;
    else {
        clattn_options_init(&pp->opt);
        pp->opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
    }
    pp->opt.kv_lens = NULL;
    const int64_t B = k->ne[0], Hkv = k->ne[1], Lk = k->ne[2], D = k->ne[3], Dv = v->ne[3];
    pp->B = B;
    pp->Hq = q->ne[1];
    pp->Lq = q->ne[2];
    pp->D = D;
    pp->Dv = Dv;
    if (B > 65536) return CLATTN_ERROR_INVALID_SHAPE;
    /* pages per sequence, then every page of the pool in an order shuffled by seed */
    pp->indptr = calloc((size_t)B + 1, sizeof(int32_t));
    pp->last = calloc((size_t)B, sizeof(int32_t));
    pp->qo = calloc((size_t)B + 1, sizeof(int32_t));
    if (!pp->indptr || !pp->last || !pp->qo) {
        paged_release(pp);
        return CLATTN_ERROR_OUT_OF_MEMORY;
    }
    int64_t npages = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t n = lens ? lens[b] : Lk;
        n = n < 0 ? 0 : n > Lk ? Lk : n;
        const int64_t np = (n + page_size - 1) / page_size;
        pp->last[b] = (int32_t)(np ? n - (np - 1) * page_size : 0);
        npages += np;
        pp->indptr[b + 1] = (int32_t)npages;
        pp->qo[b + 1] = (int32_t)((b + 1) * pp->Lq);
    }
    const int64_t pool_pages = npages > 0 ? npages : 1;
    pp->indices = malloc(sizeof(int32_t) * (size_t)pool_pages);
    if (!pp->indices) {
        paged_release(pp);
        return CLATTN_ERROR_OUT_OF_MEMORY;
    }
    for (int64_t i = 0; i < npages; i++) pp->indices[i] = (int32_t)i;
    uint64_t s = 0x9e3779b97f4a7c15ull ^ (seed * 0xbf58476d1ce4e5b9ull);
    if (seed)
        for (int64_t i = npages - 1; i > 0; i--) {
            const int64_t j = (int64_t)(next_rand(&s) % (uint64_t)(i + 1));
            const int32_t t = pp->indices[i];
            pp->indices[i] = pp->indices[j];
            pp->indices[j] = t;
        }
    pp->table = (clattn_page_table){(size_t)B, pp->indptr, pp->indices, pp->last, page_size};
    /* the pool's mask is [n_seqs, Hq, Lq_max, Lk_max] (clattn_kv.h): the same as the
     * batch's but for the keys, which end at the longest sequence; a view of the first
     * columns (other extents are left for the library to refuse) */
    if (pp->opt.mask) {
        int64_t lk_max = 0;
        for (int64_t b = 0; b < B; b++) {
            const int64_t n = pp->indptr[b + 1] > pp->indptr[b]
                                  ? (int64_t)(pp->indptr[b + 1] - pp->indptr[b] - 1) * page_size + pp->last[b]
                                  : 0;
            lk_max = n > lk_max ? n : lk_max;
        }
        pp->tm = *pp->opt.mask;
        if (pp->tm.ne[3] == Lk) pp->tm.ne[3] = lk_max;
        pp->opt.mask = &pp->tm;
    }
    clattn_status st = clattn_kv_pool_create(ctx, pool_pages, page_size, Hkv, D, Dv, format, format, &pp->pool);
    /* one append per sequence: k[b, :, 0:len, :] is a view, whatever k's strides */
    int32_t *slots = malloc(sizeof(int32_t) * (size_t)(Lk > 0 ? Lk : 1));
    if (st == CLATTN_SUCCESS && !slots) st = CLATTN_ERROR_OUT_OF_MEMORY;
    for (int64_t b = 0; b < B && st == CLATTN_SUCCESS; b++) {
        const int64_t n = pp->indptr[b + 1] > pp->indptr[b]
                              ? (int64_t)(pp->indptr[b + 1] - pp->indptr[b] - 1) * page_size + pp->last[b]
                              : 0;
        if (n == 0) continue;
        for (int64_t t = 0; t < n; t++)
            slots[t] = (int32_t)(pp->indices[pp->indptr[b] + t / page_size] * page_size + t % page_size);
        clattn_tensor kb = *k, vb = *v;
        kb.offset += (size_t)(b * k->nb[0]);
        vb.offset += (size_t)(b * v->nb[0]);
        kb.ne[0] = vb.ne[0] = 1;
        kb.ne[2] = vb.ne[2] = n;
        st = clattn_kv_pool_append(pp->pool, &pp->table, &kb, &vb, slots, NULL);
    }
    free(slots);
    /* queries packed [1, Hq, B*Lq, D]: a view when the layout allows, else a host copy */
    if (st == CLATTN_SUCCESS && !packed_view(q, &pp->tq)) {
        if (!q->host) {
            st = CLATTN_ERROR_INVALID_ARGUMENT;
        } else {
            const size_t es = clattn_dtype_size(q->dtype);
            pp->qp = malloc(es * (size_t)(B * pp->Hq * pp->Lq * D));
            if (!pp->qp) st = CLATTN_ERROR_OUT_OF_MEMORY;
            for (int64_t b = 0; st == CLATTN_SUCCESS && b < B; b++)
                for (int64_t h = 0; h < pp->Hq; h++)
                    for (int64_t i = 0; i < pp->Lq; i++)
                        for (int64_t d = 0; d < D; d++)
                            memcpy((char *)pp->qp + es * (size_t)(((h * B + b) * pp->Lq + i) * D + d),
                                   (const char *)q->host + q->offset +
                                       (size_t)(b * q->nb[0] + h * q->nb[1] + i * q->nb[2] + d * q->nb[3]),
                                   es);
            pp->tq = clattn_tensor_host(pp->qp, q->dtype, 1, pp->Hq, B * pp->Lq, D);
        }
    }
    if (st == CLATTN_SUCCESS) {
        pp->op = malloc(sizeof(float) * (size_t)(pp->Hq * B * pp->Lq * Dv + 1));
        pp->lp = malloc(sizeof(float) * (size_t)(pp->Hq * B * pp->Lq + 1));
        if (!pp->op || !pp->lp) st = CLATTN_ERROR_OUT_OF_MEMORY;
        pp->to = clattn_tensor_host(pp->op, CLATTN_F32, 1, pp->Hq, B * pp->Lq, Dv);
        pp->tl = clattn_tensor_host(pp->lp, CLATTN_F32, 1, pp->Hq, B * pp->Lq, 1);
    }
    if (st != CLATTN_SUCCESS) paged_release(pp);
    return st;
}

clattn_status paged_run(clattn_context *ctx, paged_prepared *pp, clattn_tensor *o, clattn_tensor *lse)
{
    clattn_tensor ov, lv;
    /* outputs on the device (bench) are written in place through a packed view */
    if (o && !o->host && packed_view(o, &ov)) {
        clattn_options opt = pp->opt;
        if (lse && packed_view(lse, &lv)) opt.lse = &lv;
        else opt.lse = NULL;
        return clattn_kv_pool_attention(ctx, pp->pool, &pp->table, pp->qo, &pp->tq, &ov, &opt, NULL);
    }
    clattn_options opt = pp->opt;
    opt.lse = lse ? &pp->tl : NULL;
    clattn_status st = clattn_kv_pool_attention(ctx, pp->pool, &pp->table, pp->qo, &pp->tq, &pp->to, &opt, NULL);
    if (st != CLATTN_SUCCESS || !o) return st;
    if (!o->host || o->dtype != CLATTN_F32 || (lse && (!lse->host || lse->dtype != CLATTN_F32)))
        return CLATTN_ERROR_INVALID_ARGUMENT;
    const int64_t B = pp->B, Hq = pp->Hq, Lq = pp->Lq, Dv = pp->Dv;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const int64_t r = (h * B + b) * Lq + i;
                for (int64_t d = 0; d < Dv; d++)
                    *(float *)((char *)o->host + o->offset +
                               (size_t)(b * o->nb[0] + h * o->nb[1] + i * o->nb[2] + d * o->nb[3])) = pp->op[r * Dv + d];
                if (lse)
                    *(float *)((char *)lse->host + lse->offset + (size_t)(b * lse->nb[0] + h * lse->nb[1] + i * lse->nb[2])) =
                        pp->lp[r];
            }
    return CLATTN_SUCCESS;
}
