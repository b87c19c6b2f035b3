/* Device groups: one attention call split over several contexts (any mix of devices and
 * platforms) in one process. The work is split by (batch, KV head) units, or by keys
 * with an exact log-sum-exp merge when there are too few units, in proportion to each
 * device's measured speed; each device runs its part on its own thread (a context is
 * used by one thread at a time, as clattn.h requires), into host scratch that is
 * committed to the caller's outputs only when every part succeeded. */
#include "core/problem.h"
#include "core/context.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GROUP_MAX_ 64

struct clattn_group {
    size_t n;
    clattn_context *ctx[GROUP_MAX_];
    bool owned;                 /* contexts created by clattn_group_create */
    double speed[GROUP_MAX_];   /* relative speeds; 0 = not measured yet */
    bool have_speed;
    /* the last call's split */
    bool by_keys;
    int64_t start[GROUP_MAX_], count[GROUP_MAX_];
    double seconds[GROUP_MAX_];
    char last_error[2048];
};

static clattn_status gfail(clattn_group *g, clattn_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static clattn_status gfail(clattn_group *g, clattn_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->last_error, sizeof g->last_error, fmt, ap);
    va_end(ap);
    if (g->ctx[0] && g->ctx[0]->log) fprintf(stderr, "clattn: group: %s\n", g->last_error);
    return st;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

clattn_status clattn_group_create_from_contexts(clattn_context *const *ctxs, size_t n,
                                                clattn_group **group)
{
    if (!group) return CLATTN_ERROR_INVALID_ARGUMENT;
    *group = NULL;
    if (!ctxs || n == 0 || n > GROUP_MAX_) return CLATTN_ERROR_INVALID_ARGUMENT;
    for (size_t i = 0; i < n; i++) {
        if (!ctxs[i]) return CLATTN_ERROR_INVALID_ARGUMENT;
        /* one context twice would be used by two threads at once */
        for (size_t j = 0; j < i; j++)
            if (ctxs[j] == ctxs[i]) return CLATTN_ERROR_INVALID_ARGUMENT;
    }
    clattn_group *g = calloc(1, sizeof *g);
    if (!g) return CLATTN_ERROR_OUT_OF_MEMORY;
    g->n = n;
    for (size_t i = 0; i < n; i++) g->ctx[i] = ctxs[i];
    *group = g;
    return CLATTN_SUCCESS;
}

clattn_status clattn_group_create(const char *const *specs, size_t n, clattn_group **group)
{
    if (!group) return CLATTN_ERROR_INVALID_ARGUMENT;
    *group = NULL;
    if (!specs || n == 0 || n > GROUP_MAX_) return CLATTN_ERROR_INVALID_ARGUMENT;
    clattn_context *c[GROUP_MAX_] = {0};
    clattn_status st = CLATTN_SUCCESS;
    for (size_t i = 0; i < n && st == CLATTN_SUCCESS; i++) st = clattn_context_create(specs[i], &c[i]);
    if (st == CLATTN_SUCCESS) st = clattn_group_create_from_contexts(c, n, group);
    if (st != CLATTN_SUCCESS) {
        for (size_t i = 0; i < n; i++) clattn_context_free(c[i]);
        return st;
    }
    (*group)->owned = true;
    return CLATTN_SUCCESS;
}

void clattn_group_free(clattn_group *g)
{
    if (!g) return;
    if (g->owned)
        for (size_t i = 0; i < g->n; i++) clattn_context_free(g->ctx[i]);
    free(g);
}

size_t clattn_group_size(const clattn_group *g) { return g ? g->n : 0; }

clattn_context *clattn_group_context(const clattn_group *g, size_t i)
{
    return g && i < g->n ? g->ctx[i] : NULL;
}

const char *clattn_group_last_error(const clattn_group *g) { return g ? g->last_error : ""; }

clattn_status clattn_group_set_speeds(clattn_group *g, const double *speeds)
{
    if (!g || !speeds) return CLATTN_ERROR_INVALID_ARGUMENT;
    double total = 0.0;
    for (size_t i = 0; i < g->n; i++) {
        if (!(speeds[i] >= 0.0) || !isfinite(speeds[i]))
            return gfail(g, CLATTN_ERROR_INVALID_ARGUMENT, "speed %zu is %g: must be >= 0", i,
                         speeds[i]);
        total += speeds[i];
    }
    if (!(total > 0.0)) return gfail(g, CLATTN_ERROR_INVALID_ARGUMENT, "every speed is 0");
    for (size_t i = 0; i < g->n; i++) g->speed[i] = speeds[i];
    g->have_speed = true;
    return CLATTN_SUCCESS;
}

clattn_status clattn_group_speeds(const clattn_group *g, double *speeds)
{
    if (!g || !speeds) return CLATTN_ERROR_INVALID_ARGUMENT;
    for (size_t i = 0; i < g->n; i++) speeds[i] = g->have_speed ? g->speed[i] : 0.0;
    return CLATTN_SUCCESS;
}

clattn_status clattn_group_calibrate(clattn_group *g, int64_t D, int64_t Dv, clattn_dtype dtype)
{
    if (!g) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (D < 1 || D > 256 || Dv < 1 || Dv > 256)
        return gfail(g, CLATTN_ERROR_INVALID_SHAPE, "calibration head dims %lld, %lld: 1..256",
                     (long long)D, (long long)Dv);
    size_t es = clattn_dtype_size(dtype);
    if (dtype != CLATTN_F32 && dtype != CLATTN_F16 && dtype != CLATTN_BF16)
        return gfail(g, CLATTN_ERROR_UNSUPPORTED_DTYPE, "calibration dtype must be f32, f16 or bf16");
    /* 1 x 4 x 256 x 256: big enough that launch overhead is a small part on a CPU device,
     * small enough to take milliseconds on one */
    const int64_t H = 4, L = 256;
    size_t nq = (size_t)(H * L * D), nv = (size_t)(H * L * Dv);
    unsigned char *q = calloc(nq, es), *kk = calloc(nq, es), *v = calloc(nv, es),
                  *o = calloc(nv, 4);
    if (!q || !kk || !v || !o) {
        free(q), free(kk), free(v), free(o);
        return gfail(g, CLATTN_ERROR_OUT_OF_MEMORY, "no memory for the calibration problem");
    }
    clattn_tensor tq = clattn_tensor_host(q, dtype, 1, H, L, D),
                  tk = clattn_tensor_host(kk, dtype, 1, H, L, D),
                  tv = clattn_tensor_host(v, dtype, 1, H, L, Dv),
                  to = clattn_tensor_host(o, CLATTN_F32, 1, H, L, Dv);
    clattn_status st = CLATTN_SUCCESS;
    double sp[GROUP_MAX_];
    for (size_t i = 0; i < g->n && st == CLATTN_SUCCESS; i++) {
        double best = INFINITY;
        /* the first run builds the kernel; the best of the next three is the speed */
        for (int r = 0; r < 4 && st == CLATTN_SUCCESS; r++) {
            double t0 = now_s();
            st = clattn_attention(g->ctx[i], &tq, &tk, &tv, &to, NULL, NULL);
            double t = now_s() - t0;
            if (r > 0 && t < best) best = t;
        }
        if (st != CLATTN_SUCCESS)
            gfail(g, st, "calibration on device %zu failed: %s", i,
                  clattn_context_last_error(g->ctx[i]));
        sp[i] = 4.0 * (double)(H * L * L) * (double)(D + Dv) / 2.0 / (best > 0 ? best : 1e-9) / 1e9;
    }
    free(q), free(kk), free(v), free(o);
    if (st != CLATTN_SUCCESS) return st;
    for (size_t i = 0; i < g->n; i++) g->speed[i] = sp[i];
    g->have_speed = true;
    return CLATTN_SUCCESS;
}

clattn_status clattn_group_last_split(const clattn_group *g, size_t i, int *by_keys,
                                      int64_t *start, int64_t *count, double *seconds)
{
    if (!g || i >= g->n) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (by_keys) *by_keys = g->by_keys;
    if (start) *start = g->start[i];
    if (count) *count = g->count[i];
    if (seconds) *seconds = g->seconds[i];
    return CLATTN_SUCCESS;
}

/* ---- one call ---------------------------------------------------------------------- */

static clattn_tensor view(clattn_tensor t, int a, int64_t start, int64_t len)
{
    if (t.ne[a] == 1) return t; /* a broadcast extent (or a start of 0) stays as it is */
    t.offset += (size_t)(start * t.nb[a]);
    t.ne[a] = len;
    return t;
}

typedef struct part {
    clattn_group *g;
    size_t dev;
    const clattn_tensor *q, *k, *v, *o;
    const clattn_options *opt;
    int64_t u0, u1;     /* units (b * Hkv + kv head) or keys */
    bool by_keys;
    float *o_buf, *l_buf; /* dense f32 scratch: [units * group heads, Lq, Dv] and LSE */
    clattn_status st;
    double seconds;
} part;

/* The calls of a unit range: one per run of whole batch entries, one per partial one. */
static clattn_status run_units(part *p)
{
    clattn_context *ctx = p->g->ctx[p->dev];
    const int64_t Hq = p->q->ne[1], Hkv = p->k->ne[1], G = Hq / Hkv, Lq = p->q->ne[2],
                  Dv = p->v->ne[3];
    int64_t u = p->u0, row = 0; /* row: next (head, query) row of the scratch, over Lq */
    while (u < p->u1) {
        int64_t b = u / Hkv, h0 = u % Hkv, nb = 1, h1;
        if (h0 == 0 && p->u1 - u >= Hkv) {
            nb = (p->u1 - u) / Hkv;
            h1 = Hkv;
        } else {
            h1 = h0 + (p->u1 - u) < Hkv ? h0 + (p->u1 - u) : Hkv;
        }
        const int64_t nh = h1 - h0;
        clattn_tensor q = view(view(*p->q, 0, b, nb), 1, h0 * G, nh * G);
        clattn_tensor k = view(view(*p->k, 0, b, nb), 1, h0, nh);
        clattn_tensor v = view(view(*p->v, 0, b, nb), 1, h0, nh);
        clattn_tensor o = clattn_tensor_host(p->o_buf + row * Lq * Dv, CLATTN_F32, nb, nh * G, Lq, Dv);
        clattn_tensor l = clattn_tensor_host(p->l_buf + row * Lq, CLATTN_F32, nb, nh * G, Lq, 1);
        clattn_options opt = *p->opt;
        clattn_tensor m, kl, al;
        if (opt.mask) {
            m = view(view(*opt.mask, 0, b, nb), 1, h0 * G, nh * G);
            opt.mask = &m;
        }
        if (opt.kv_lens) {
            kl = view(*opt.kv_lens, 0, b, nb);
            opt.kv_lens = &kl;
        }
        if (opt.alibi) {
            al = view(*opt.alibi, 0, h0 * G, nh * G);
            opt.alibi = &al;
        }
        opt.lse = &l;
        CLATTN_FORWARD(clattn_attention(ctx, &q, &k, &v, &o, &opt, NULL));
        row += nb * nh * G;
        u += nb * nh;
    }
    return CLATTN_SUCCESS;
}

static clattn_status run_keys(part *p)
{
    clattn_context *ctx = p->g->ctx[p->dev];
    const int64_t B = p->q->ne[0], Hq = p->q->ne[1], Lq = p->q->ne[2], Dv = p->v->ne[3];
    clattn_block bk = {0, p->u0, Lq, p->k->ne[2]};
    clattn_tensor k = view(*p->k, 2, p->u0, p->u1 - p->u0);
    clattn_tensor v = view(*p->v, 2, p->u0, p->u1 - p->u0);
    clattn_tensor o = clattn_tensor_host(p->o_buf, CLATTN_F32, B, Hq, Lq, Dv);
    clattn_tensor l = clattn_tensor_host(p->l_buf, CLATTN_F32, B, Hq, Lq, 1);
    clattn_options opt = *p->opt;
    opt.lse = &l;
    return clattn_attention_block(ctx, &bk, p->q, &k, &v, &o, &opt, NULL);
}

static void *part_thread(void *arg)
{
    part *p = arg;
    double t0 = now_s();
    p->st = p->by_keys ? run_keys(p) : run_units(p);
    p->seconds = now_s() - t0;
    return NULL;
}

static void store(const clattn_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, float x)
{
    unsigned char *at = (unsigned char *)t->host + t->offset + a * t->nb[0] + b * t->nb[1] +
                        c * t->nb[2] + d * t->nb[3];
    if (t->dtype == CLATTN_F32) {
        memcpy(at, &x, 4);
    } else {
        uint16_t h = t->dtype == CLATTN_F16 ? clattn__float_to_half(x) : clattn__float_to_bf16(x);
        memcpy(at, &h, 2);
    }
}

clattn_status clattn_group_attention(clattn_group *g, const clattn_tensor *q,
                                     const clattn_tensor *k, const clattn_tensor *v,
                                     clattn_tensor *o, const clattn_options *opt)
{
    if (!g) return CLATTN_ERROR_INVALID_ARGUMENT;
    g->last_error[0] = '\0';
    if (!q || !k || !v || !o) return gfail(g, CLATTN_ERROR_INVALID_ARGUMENT, "q, k, v and o must not be NULL");
    char err[1024];
    clattn_options full;
    clattn_status st = clattn__options_read(opt, &full, err, sizeof err);
    if (st != CLATTN_SUCCESS) return gfail(g, st, "%s", err);
    const clattn_tensor *ts[] = {q, k, v, o, full.lse, full.mask, full.kv_lens, full.alibi};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i] && (!ts[i]->host || ts[i]->buffer))
            return gfail(g, CLATTN_ERROR_INVALID_ARGUMENT,
                         "a group takes host tensors only (each device stages its part)");
    if (full.num_wait_events)
        return gfail(g, CLATTN_ERROR_INVALID_ARGUMENT, "a group takes no wait events");
    /* the whole call validated once, as one device would */
    clattn__problem pr;
    st = clattn__problem_init(&pr, q, k, v, o, &full, err, sizeof err);
    if (st != CLATTN_SUCCESS) return gfail(g, st, "%s", err);
    const int64_t B = pr.B, Hq = pr.Hq, Hkv = pr.Hkv, Lq = pr.Lq, Lk = pr.Lk, Dv = pr.Dv;
    if (B == 0 || Hq == 0 || Lq == 0) return CLATTN_SUCCESS;
    if (!g->have_speed) CLATTN_FORWARD(clattn_group_calibrate(g, pr.D, Dv, q->dtype));

    /* Units keep each KV head with its query heads. Too few units for the devices'
     * proportions (fewer than 4 per device) and keys to split: split the keys. */
    const int64_t units = B * Hkv;
    const bool by_keys = units < 4 * (int64_t)g->n && Lk >= (int64_t)g->n && g->n > 1;
    const int64_t total = by_keys ? Lk : units;
    double sum = 0.0, cum = 0.0;
    for (size_t i = 0; i < g->n; i++) sum += g->speed[i];
    /* A key split shares the work, not the keys: with causal edges or a window, later keys
     * are seen by fewer rows. work[j] = sum of the rows that see keys 0 .. j-1. */
    double *work = NULL;
    if (by_keys) {
        work = malloc((size_t)(Lk + 1) * sizeof *work);
        if (!work) return gfail(g, CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the split");
        int64_t gmin = INT64_MIN / 4, gmax = INT64_MAX / 4; /* allowed i' - j */
        if (full.causal == CLATTN_CAUSAL_BOTTOM_RIGHT) gmin = 0;
        if (full.causal == CLATTN_CAUSAL_TOP_LEFT) gmin = Lk - Lq;
        if (full.window_right >= 0 && -full.window_right > gmin) gmin = -full.window_right;
        if (full.window_left >= 0) gmax = full.window_left;
        work[0] = 0.0;
        for (int64_t j = 0; j < Lk; j++) {
            /* rows i with gmin <= i + Lk - Lq - j <= gmax */
            int64_t lo = gmin + j - (Lk - Lq), hi = gmax + j - (Lk - Lq);
            if (lo < 0) lo = 0;
            if (hi > Lq - 1) hi = Lq - 1;
            work[j + 1] = work[j] + (double)(hi >= lo ? hi - lo + 1 : 0);
        }
        if (!(work[Lk] > 0.0)) /* nothing visible: share the keys */
            for (int64_t j = 0; j <= Lk; j++) work[j] = (double)j;
    }
    part parts[GROUP_MAX_];
    pthread_t th[GROUP_MAX_];
    bool started[GROUP_MAX_] = {false};
    memset(parts, 0, sizeof parts);
    int64_t prev = 0;
    st = CLATTN_SUCCESS;
    for (size_t i = 0; i < g->n; i++) {
        cum += g->speed[i];
        int64_t end = i + 1 == g->n ? total : (int64_t)llround((double)total * cum / sum);
        if (by_keys && i + 1 < g->n) { /* the key whose prefix work is nearest the share */
            const double target = work[Lk] * cum / sum;
            int64_t j = prev;
            while (j < Lk && work[j] < target) j++;
            if (j > prev && target - work[j - 1] < work[j] - target) j--;
            end = j;
        }
        if (end < prev) end = prev;
        part *p = &parts[i];
        *p = (part){g, i, q, k, v, o, &full, prev, end, by_keys, NULL, NULL, CLATTN_SUCCESS, 0.0};
        g->start[i] = prev;
        g->count[i] = end - prev;
        g->seconds[i] = 0.0;
        prev = end;
        if (p->u1 == p->u0) continue;
        const int64_t rows = by_keys ? B * Hq : (p->u1 - p->u0) * (Hq / Hkv);
        p->o_buf = malloc((size_t)(rows * Lq * Dv) * sizeof(float));
        p->l_buf = malloc((size_t)(rows * Lq) * sizeof(float));
        if (!p->o_buf || !p->l_buf) st = gfail(g, CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the parts");
    }
    g->by_keys = by_keys;
    for (size_t i = 0; i < g->n && st == CLATTN_SUCCESS; i++) {
        if (parts[i].u1 == parts[i].u0) continue;
        if (pthread_create(&th[i], NULL, part_thread, &parts[i]) != 0) {
            st = gfail(g, CLATTN_ERROR_INTERNAL, "could not start a thread for device %zu", i);
            break;
        }
        started[i] = true;
    }
    for (size_t i = 0; i < g->n; i++) {
        if (!started[i]) continue;
        pthread_join(th[i], NULL);
        g->seconds[i] = parts[i].seconds;
        if (parts[i].st != CLATTN_SUCCESS && st == CLATTN_SUCCESS) {
            clattn_device_props dp;
            clattn_context_device_props(g->ctx[i], &dp);
            st = gfail(g, parts[i].st, "device %zu (%s): %s", i, dp.name,
                       clattn_context_last_error(g->ctx[i]));
        }
    }
    /* commit: every part succeeded */
    if (st == CLATTN_SUCCESS && !by_keys) {
        for (size_t i = 0; i < g->n; i++) {
            const part *p = &parts[i];
            const int64_t G = Hq / Hkv;
            for (int64_t u = p->u0; u < p->u1; u++) {
                const int64_t b = u / Hkv, kh = u % Hkv;
                for (int64_t hh = 0; hh < G; hh++) {
                    const int64_t r = (u - p->u0) * G + hh, h = kh * G + hh;
                    for (int64_t iq = 0; iq < Lq; iq++) {
                        const float *src = p->o_buf + (r * Lq + iq) * Dv;
                        for (int64_t d = 0; d < Dv; d++) store(o, b, h, iq, d, src[d]);
                        if (full.lse) store(full.lse, b, h, iq, 0, p->l_buf[r * Lq + iq]);
                    }
                }
            }
        }
    } else if (st == CLATTN_SUCCESS) {
        /* exact log-sum-exp merge of the key parts, in double on the host */
        double *acc = malloc((size_t)Dv * sizeof *acc);
        if (!acc) st = gfail(g, CLATTN_ERROR_OUT_OF_MEMORY, "no host memory for the merge");
        for (int64_t r = 0; acc && r < B * Hq * Lq; r++) {
            double mx = -INFINITY;
            for (size_t i = 0; i < g->n; i++)
                if (parts[i].l_buf && parts[i].l_buf[r] > mx) mx = parts[i].l_buf[r];
            double den = 0.0;
            for (int64_t d = 0; d < Dv; d++) acc[d] = 0.0;
            if (mx != -INFINITY)
                for (size_t i = 0; i < g->n; i++) {
                    if (!parts[i].l_buf || parts[i].l_buf[r] == -INFINITY) continue;
                    const double w = exp((double)parts[i].l_buf[r] - mx);
                    den += w;
                    for (int64_t d = 0; d < Dv; d++) acc[d] += w * parts[i].o_buf[r * Dv + d];
                }
            const int64_t b = r / (Hq * Lq), h = (r / Lq) % Hq, iq = r % Lq;
            for (int64_t d = 0; d < Dv; d++) store(o, b, h, iq, d, den > 0 ? (float)(acc[d] / den) : 0.0f);
            if (full.lse) store(full.lse, b, h, iq, 0, den > 0 ? (float)(mx + log(den)) : -INFINITY);
        }
        free(acc);
    }
    for (size_t i = 0; i < g->n; i++) free(parts[i].o_buf), free(parts[i].l_buf);
    free(work);
    return st;
}
