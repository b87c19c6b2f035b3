/* libFuzzer target: validation of an attention call's descriptors and options
 * (clattn__problem_init, which every path and the CPU reference start with), and the CPU
 * reference itself on what validation accepts.
 *
 * The bytes are decoded into a problem shape and then, per tensor (q, k, v, o, mask,
 * kv_lens, alibi, lse), into a descriptor that starts out consistent with the shape and
 * is then bent by the input: another or an unknown dtype, one extent or stride replaced by
 * a raw 64-bit value, a small signed one, 0 or a broadcast, BLHD strides, a gap, an odd
 * offset, both or neither of host and buffer. Options take raw floats (NaN, inf), raw
 * window bounds and out-of-range enum values. Starting from a valid problem keeps most
 * inputs deep in the checks instead of failing the first one.
 *
 * Host tensors get real memory, sized to the descriptor's span, whenever that span is
 * small; a larger one gets a dummy cl_mem handle instead (validation never dereferences a
 * cl_mem, and must not read a host tensor it has not accepted). When validation accepts a
 * problem for the reference and the work is small, clattn_reference_attention runs on it
 * and must succeed. */
#include "reference/reference.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Host memory is given only to tensors that touch at most this many bytes. */
#define MAX_HOST_BYTES ((size_t)1 << 16)
/* The reference runs only when B*Hq*Lq*Lk*(D+Dv) is at most this. */
#define MAX_REFERENCE_WORK 2e5

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

/* Past the end every read gives 0: a short input is a valid, mostly default problem. */
static uint8_t rd_u8(reader *r)
{
    if (r->n == 0) return 0;
    r->n--;
    return *r->p++;
}

static uint64_t rd_u64(reader *r)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)rd_u8(r) << (8 * i);
    return v;
}

static float rd_f32(reader *r)
{
    uint32_t u = 0;
    for (int i = 0; i < 4; i++) u |= (uint32_t)rd_u8(r) << (8 * i);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* A raw 64-bit value, a small signed one, 0, 1 or -1: the edges validation must handle. */
static int64_t rd_edge(reader *r)
{
    const uint8_t mode = rd_u8(r);
    switch (mode % 6) {
    case 0: return (int64_t)rd_u64(r);
    case 1: return (int8_t)rd_u8(r);
    case 2: return 0;
    case 3: return -1;
    case 4: return INT64_MAX - (int64_t)rd_u8(r);
    default: return INT64_MIN + (int64_t)rd_u8(r);
    }
}

/* A descriptor of `shape` in a dtype chosen from `natural` (or an unknown one), dense,
 * then bent as the input says. host and buffer are set later, from the span. */
typedef struct fuzz_tensor {
    clattn_tensor t;
    uint8_t storage;   /* 0: neither host nor buffer; 1: both; otherwise one of them */
    unsigned char *mem;
} fuzz_tensor;

static void decode_tensor(reader *r, fuzz_tensor *ft, const clattn_dtype *natural, int nnat,
                          const int64_t shape[4])
{
    clattn_tensor *t = &ft->t;
    memset(ft, 0, sizeof *ft);
    const uint8_t kind = rd_u8(r);
    ft->storage = rd_u8(r) % 16;
    if (kind & 0x80) t->dtype = (clattn_dtype)((int)((kind >> 4) & 7) - 1); /* -1 .. 6 */
    else t->dtype = natural[kind % nnat];
    for (int i = 0; i < 4; i++) t->ne[i] = shape[i];
    if (kind & 0x40) {
        const int i = rd_u8(r) & 3;
        t->ne[i] = rd_edge(r);
    }
    /* Dense strides, in unsigned arithmetic: bent extents may be huge or negative, and
     * what validation must see is exactly what a caller could pass. */
    const uint64_t es = clattn_dtype_size(t->dtype) ? clattn_dtype_size(t->dtype) : 4;
    uint64_t stride = es;
    for (int i = 3; i >= 0; i--) {
        t->nb[i] = (int64_t)stride;
        stride *= (uint64_t)t->ne[i];
    }
    if (kind & 0x20) { /* stored [B, L, H, D] */
        t->nb[1] = t->nb[2];
        t->nb[2] = (int64_t)((uint64_t)t->nb[1] * (uint64_t)t->ne[1]);
        t->nb[0] = (int64_t)((uint64_t)t->nb[2] * (uint64_t)t->ne[2]);
    }
    if (kind & 0x10) {
        const int i = rd_u8(r) & 3;
        const uint8_t mode = rd_u8(r);
        switch (mode % 4) {
        case 0: t->nb[i] = rd_edge(r); break;
        case 1: t->nb[i] = (int64_t)(int8_t)rd_u8(r) * (int64_t)es; break;
        case 2: t->nb[i] = 0; break; /* broadcast */
        default: t->nb[i] = (int64_t)((uint64_t)t->nb[i] + es * rd_u8(r)); break; /* a gap */
        }
    }
    if (kind & 0x08) {
        const uint8_t mode = rd_u8(r);
        t->offset = mode & 1 ? (size_t)rd_u64(r) : (size_t)rd_u8(r);
    }
}

/* Element values from the input: small numbers, with NaN and infinities now and then,
 * and key lengths around 0..Lk. */
static void fill_element(unsigned char *dst, clattn_dtype dtype, uint8_t b)
{
    float f = (float)(int8_t)b / 16.0f;
    if (b == 0x80) f = NAN;
    else if (b == 0x7f) f = INFINITY;
    else if (b == 0x81) f = -INFINITY;
    switch (dtype) {
    case CLATTN_F32: memcpy(dst, &f, 4); break;
    case CLATTN_F16: {
        const uint16_t h = clattn__float_to_half(f);
        memcpy(dst, &h, 2);
        break;
    }
    case CLATTN_BF16: {
        const uint16_t h = clattn__float_to_bf16(f);
        memcpy(dst, &h, 2);
        break;
    }
    case CLATTN_BOOL: *dst = b & 1; break;
    case CLATTN_I32: {
        const int32_t v = (int32_t)(b % 12) - 1;
        memcpy(dst, &v, 4);
        break;
    }
    default: *dst = b; break;
    }
}

static struct {
    char c;
} fake_mem_object; /* what a dummy cl_mem points to; never read */

/* Host memory for a small span, a dummy cl_mem for a large or unknown one; or neither or
 * both when the input asks. Returns false when out of memory. */
static bool place_tensor(fuzz_tensor *ft, reader *r)
{
    clattn_tensor *t = &ft->t;
    static unsigned char dummy[8];
    cl_mem fake = (cl_mem)(void *)&fake_mem_object;
    if (ft->storage == 0) return true;
    if (ft->storage == 1) {
        t->host = dummy;
        t->buffer = fake;
        return true;
    }
    bool sane = true;
    for (int i = 0; i < 4; i++) sane = sane && t->ne[i] >= 0 && t->nb[i] >= 0;
    size_t span = 0;
    const size_t es = clattn_dtype_size(t->dtype);
    if (!sane || es == 0 || !clattn__tensor_span(t, &span) || span > MAX_HOST_BYTES ||
        t->offset > MAX_HOST_BYTES) {
        t->buffer = fake;
        return true;
    }
    const size_t bytes = t->offset + span;
    ft->mem = malloc(bytes ? bytes : 1);
    if (!ft->mem) return false;
    memset(ft->mem, 0, bytes ? bytes : 1);
    for (size_t i = 0; i + es <= bytes; i += es) fill_element(ft->mem + i, t->dtype, rd_u8(r));
    t->host = ft->mem;
    return true;
}

static bool terminated(const char *s, size_t cap) { return memchr(s, '\0', cap) != NULL; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    static const clattn_dtype floats[] = {CLATTN_F32, CLATTN_F16, CLATTN_BF16};
    static const clattn_dtype mask_types[] = {CLATTN_BOOL, CLATTN_F32};
    static const clattn_dtype i32[] = {CLATTN_I32};
    static const clattn_dtype f32[] = {CLATTN_F32};

    /* The problem all descriptors start from. */
    const int64_t B = rd_u8(&r) % 4, Hkv = 1 + rd_u8(&r) % 3, Hq = Hkv * (1 + rd_u8(&r) % 3);
    const int64_t Lq = rd_u8(&r) % 9, Lk = rd_u8(&r) % 9;
    const int64_t D = 1 + rd_u8(&r) % 20, Dv = 1 + rd_u8(&r) % 20;
    const int64_t sq[4] = {B, Hq, Lq, D}, sk[4] = {B, Hkv, Lk, D}, sv[4] = {B, Hkv, Lk, Dv};
    const int64_t so[4] = {B, Hq, Lq, Dv}, sl[4] = {B, Hq, Lq, 1};
    const int64_t skv[4] = {B, 1, 1, 1}, sa[4] = {Hq, 1, 1, 1};

    fuzz_tensor ft[8];
    enum { Q, K, V, O, MASK, KVLENS, ALIBI, LSE };
    decode_tensor(&r, &ft[Q], floats, 3, sq);
    decode_tensor(&r, &ft[K], floats, 3, sk);
    decode_tensor(&r, &ft[V], floats, 3, sv);
    decode_tensor(&r, &ft[O], floats, 3, so);

    clattn_options opt;
    clattn_options_init(&opt);
    const uint8_t f = rd_u8(&r), g = rd_u8(&r);
    if (f & 1) opt.scale = rd_f32(&r);
    if (f & 2) opt.softcap = rd_f32(&r);
    if (f & 4) opt.causal = (clattn_causal)(int8_t)rd_u8(&r);
    if (f & 8) {
        opt.window_left = g & 1 ? rd_edge(&r) : (int8_t)rd_u8(&r);
        opt.window_right = g & 2 ? rd_edge(&r) : (int8_t)rd_u8(&r);
    }
    if (f & 16) opt.path = (clattn_path)(int8_t)rd_u8(&r);
    int64_t sm[4] = {B, Hq, Lq, Lk};
    const uint8_t bcast = rd_u8(&r);
    for (int i = 0; i < 4; i++)
        if (bcast & (1u << i)) sm[i] = 1;
    decode_tensor(&r, &ft[MASK], mask_types, 2, sm);
    decode_tensor(&r, &ft[KVLENS], i32, 1, skv);
    decode_tensor(&r, &ft[ALIBI], f32, 1, sa);
    decode_tensor(&r, &ft[LSE], f32, 1, sl);
    bool ok = true;
    for (int i = 0; i < 8; i++) ok = ok && place_tensor(&ft[i], &r);
    if (!ok) goto done;
    if (f & 32) opt.mask = &ft[MASK].t;
    if (f & 64) opt.kv_lens = &ft[KVLENS].t;
    if (f & 128) opt.alibi = &ft[ALIBI].t;
    if (g & 4) opt.lse = &ft[LSE].t;
    const clattn_tensor *q = &ft[Q].t, *k = &ft[K].t, *v = &ft[V].t;

    /* As clattn_attention validates (an output, LSE checked too). */
    clattn__problem p;
    char err[256];
    clattn_status st = clattn__problem_init(&p, q, k, v, &ft[O].t, &opt, err, sizeof err);
    if (st != CLATTN_SUCCESS) {
        if (!terminated(err, sizeof err) || err[0] == '\0') abort();
    } else if (p.Hkv < 1 || p.Hq % p.Hkv != 0 || p.D < 1 || p.D > 256 || p.Dv < 1 ||
               p.Dv > 256 || isnan(p.scale) || p.group != p.Hq / p.Hkv) {
        abort();
    }

    /* As the reference validates (host tensors only, no output descriptor). */
    st = clattn__problem_init(&p, q, k, v, NULL, &opt, err, sizeof err);
    if (st != CLATTN_SUCCESS) {
        if (!terminated(err, sizeof err) || err[0] == '\0') abort();
        goto done;
    }
    const double work = (double)p.B * (double)p.Hq * (double)p.Lq * (double)p.Lk *
                        (double)(p.D + p.Dv);
    const double rows = (double)p.B * (double)p.Hq * (double)p.Lq;
    if (work > MAX_REFERENCE_WORK || rows * (double)p.Dv > MAX_REFERENCE_WORK) goto done;
    const size_t nrows = (size_t)rows, nout = nrows * (size_t)p.Dv;
    double *out = malloc(sizeof(double) * (nout ? nout : 1));
    double *lse = malloc(sizeof(double) * (nrows ? nrows : 1));
    if (out && lse) {
        st = clattn_reference_attention(q, k, v, &opt, out, lse);
        /* Validation accepted exactly this problem, so the reference must compute it. */
        if (st != CLATTN_SUCCESS) abort();
        /* LSE = -inf means no key has weight: the row must be 0 (SPEC §1), or NaN when
         * infinite inputs made the scores NaN, but never a finite nonzero value. */
        for (size_t i = 0; i < nrows; i++)
            if (isinf(lse[i]) && lse[i] < 0)
                for (int64_t d = 0; d < p.Dv; d++) {
                    const double o = out[i * (size_t)p.Dv + (size_t)d];
                    if (o != 0.0 && !isnan(o)) abort();
                }
    }
    free(out);
    free(lse);
done:
    for (int i = 0; i < 8; i++) free(ft[i].mem);
    return 0;
}
