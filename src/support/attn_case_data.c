/* The data of an attention case: deterministic inputs in any layout and padding, built
 * from the case's seed, their device copies, and the call that runs the case. */
#include "support/attn_case_internal.h"

#include "core/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    clattn__splitmix64(&s);
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
            mne[a] = (a < 4 - attn_case__mask_rank(c) || (c->mask_ones >> a & 1u)) ? 1 : full[a];
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

void attn_case__options_for(const attn_case *c, attn_case_data *d, int device,
                            clattn_options *opt)
{
    clattn_options_init(opt);
    if (attn_case__has_scale(c)) opt->scale = c->scale;
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
    attn_case__options_for(c, d, 1, opt);
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
