/* --kv-quant for run and bench (kv_case.h): the keys and values go through a KV cache of
 * the chosen format, exactly as an application's cache would hold them. */
#include "kv_case.h"

#include <string.h>

bool kv_parse_quant(const char *name, bool *quant, clattn_kv_format *format)
{
    if (strcmp(name, "none") == 0) {
        *quant = false;
        return true;
    }
    *quant = true;
    return clattn_kv_format_from_name(name, format) == CLATTN_SUCCESS;
}

clattn_status kv_prepare(clattn_context *ctx, const clattn_tensor *k, const clattn_tensor *v,
                         const clattn_options *opt, const int32_t *lens, clattn_kv_format format,
                         kv_prepared *kp)
{
    memset(kp, 0, sizeof *kp);
    if (opt) kp->opt = *opt;
    else clattn_options_init(&kp->opt);
    kp->opt.kv_lens = NULL;
    const int64_t B = k->ne[0], Hkv = k->ne[1], Lk = k->ne[2];
    int64_t Lmax = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t n = lens ? lens[b] : Lk;
        Lmax = n > Lmax ? n : Lmax;
    }
    if (kp->opt.mask && kp->opt.mask->ne[3] != 1) {
        kp->mask = *kp->opt.mask; /* the columns past every entry's length are never read */
        kp->mask.ne[3] = Lmax;
        kp->opt.mask = &kp->mask;
    }
    clattn_status st = clattn_kv_cache_create(ctx, B, Hkv, Lk > 0 ? Lk : 1, k->ne[3], v->ne[3], format,
                                              format, &kp->cache);
    if (st == CLATTN_SUCCESS && Lk > 0) st = clattn_kv_cache_append(kp->cache, k, v, lens);
    if (st != CLATTN_SUCCESS) kv_release(kp);
    return st;
}

clattn_status kv_run(clattn_context *ctx, kv_prepared *kp, const clattn_tensor *q, clattn_tensor *o,
                     cl_event *event)
{
    return clattn_kv_cache_attention(ctx, kp->cache, q, o, &kp->opt, event);
}

void kv_release(kv_prepared *kp)
{
    clattn_kv_cache_free(kp->cache);
    kp->cache = NULL;
}
