/* The TQ formats' Lloyd-Max codebooks and their rotation (kv/format.h): the fixed tables
 * and transforms the reference quantizers (format.c) and the device buffers of a cache
 * or pool (cl/kv_quant.cl, cl/kv_attn.cl) share. The signs and permutations come from
 * clattn__splitmix64, so every platform draws the same rotation. */
#include "kv/format.h"
#include "core/rng.h"

#include <math.h>
#include <string.h>

/* ---- Codebooks --------------------------------------------------------------------
 * Lloyd-Max quantizers of the standard normal density: Lloyd's algorithm run on the
 * density itself (not on samples), in double precision, from a uniform start on
 * [-3, 3]: thresholds at the midpoints of neighbouring entries, each entry replaced by
 * the centroid of its cell, E[X | a < X < b] = (phi(a) - phi(b)) / (Phi(b) - Phi(a)),
 * until no entry moved by 1e-15. Mean squared errors for N(0, 1): 0.1174818 (2 bits),
 * 0.0345478 (3 bits), 0.0095010 (4 bits), matching Max (1960). tests/test_kv_format.c
 * re-runs the iteration and checks these tables are its fixed point. */
static const float codebook2[4] = {-1.510417608f, -0.452780035f, 0.452780035f, 1.510417608f};
static const float codebook3[8] = {-2.151945705f, -1.343909279f, -0.756005281f, -0.245094179f,
                                   0.245094179f,  0.756005281f,  1.343909279f,  2.151945705f};
static const float codebook4[16] = {
    -2.732589571f, -2.069017227f, -1.618046386f, -1.256231197f, -0.942340456f, -0.656759119f,
    -0.388048299f, -0.128395030f, 0.128395030f,  0.388048299f,  0.656759119f,  0.942340456f,
    1.256231197f,  1.618046386f,  2.069017227f,  2.732589571f};

/* Thresholds: midpoints of neighbouring entries of the float tables above, computed in
 * double and rounded once to float (the test checks this). A value equal to a threshold
 * takes the lower code. */
static const float thresholds2[3] = {-0.981598794f, 0.0f, 0.981598794f};
static const float thresholds3[7] = {-1.74792743f, -1.04995728f, -0.500549734f, 0.0f,
                                     0.500549734f, 1.04995728f,  1.74792743f};
static const float thresholds4[15] = {
    -2.40080333f, -1.84353185f, -1.4371388f,  -1.09928584f, -0.799549818f,
    -0.522403717f, -0.258221656f, 0.0f,        0.258221656f, 0.522403717f,
    0.799549818f, 1.09928584f,  1.4371388f,   1.84353185f,  2.40080333f};

const float *clattn__kv_codebook(int bits)
{
    return bits == 2 ? codebook2 : bits == 3 ? codebook3 : bits == 4 ? codebook4 : NULL;
}

const float *clattn__kv_thresholds(int bits)
{
    return bits == 2 ? thresholds2 : bits == 3 ? thresholds3 : bits == 4 ? thresholds4 : NULL;
}

void clattn__kv_tq_table(int bits, float out[32])
{
    const float *cb = clattn__kv_codebook(bits);
    const float *thr = clattn__kv_thresholds(bits);
    const int n = 1 << bits;
    for (int i = 0; i < 16; i++) out[i] = cb[i % n];
    for (int i = 0; i < 16; i++) out[16 + i] = i + 1 < n ? thr[i] : INFINITY;
}

/* ---- Rotation -------------------------------------------------------------------- */

static bool is_pow2(int n) { return n > 0 && (n & (n - 1)) == 0; }

void clattn__kv_rot_init(clattn__kv_rot *r, int n)
{
    memset(r, 0, sizeof *r);
    r->n = n;
    r->rounds = is_pow2(n) ? 1 : 2;
    uint64_t s = 0x636c6174746e4b56ull ^ (uint64_t)n; /* "clattnKV" ^ n */
    for (int k = 0; k < r->rounds; k++) {
        for (int i = 0; i < n; i++) r->sign[k][i] = (clattn__splitmix64(&s) >> 63) ? -1 : 1;
        for (int i = 0; i < n; i++) r->perm[k][i] = i;
        if (k == 0) continue; /* the first round keeps the order: its blocks are mixed by H */
        for (int i = n - 1; i > 0; i--) { /* Fisher-Yates */
            int j = (int)(clattn__splitmix64(&s) % (uint64_t)(i + 1));
            int32_t t = r->perm[k][i];
            r->perm[k][i] = r->perm[k][j];
            r->perm[k][j] = t;
        }
    }
}

/* 1/sqrt(bs) for bs = 2^k: an exact power of two times 1/sqrt(2) when k is odd. The
 * kernels compute the same product, so host and device scale identically. */
static float block_scale(int bs)
{
    int k = 0;
    while ((1 << k) < bs) k++;
    float s = ldexpf(1.0f, -(k / 2));
    return (k & 1) ? s * 0.70710678118654752f : s;
}

/* Normalised Walsh-Hadamard transform of each block of x (blocks: n's binary digits,
 * largest first). It is symmetric and its own inverse. */
static void block_fwht(float *x, int n)
{
    int off = 0;
    for (int bs = CLATTN_KV_MAX_DIM; bs >= 1; bs >>= 1) {
        if (!(n & bs)) continue;
        float *b = x + off;
        for (int h = 1; h < bs; h <<= 1)
            for (int i = 0; i < bs; i += 2 * h)
                for (int j = i; j < i + h; j++) {
                    float a = b[j], c = b[j + h];
                    b[j] = a + c;
                    b[j + h] = a - c;
                }
        const float sc = block_scale(bs);
        for (int j = 0; j < bs; j++) b[j] *= sc;
        off += bs;
    }
}

void clattn__kv_rot_forward(const clattn__kv_rot *r, float *x)
{
    float t[CLATTN_KV_MAX_DIM];
    for (int k = 0; k < r->rounds; k++) {
        for (int i = 0; i < r->n; i++) t[i] = x[i] * (float)r->sign[k][i];
        for (int i = 0; i < r->n; i++) x[i] = t[r->perm[k][i]];
        block_fwht(x, r->n);
    }
}

void clattn__kv_rot_inverse(const clattn__kv_rot *r, float *x)
{
    float t[CLATTN_KV_MAX_DIM];
    for (int k = r->rounds - 1; k >= 0; k--) {
        block_fwht(x, r->n);
        for (int i = 0; i < r->n; i++) t[r->perm[k][i]] = x[i];
        for (int i = 0; i < r->n; i++) x[i] = t[i] * (float)r->sign[k][i];
    }
}

size_t clattn__kv_rot_table_len(const clattn__kv_rot *r) { return (size_t)r->rounds * 2u * (size_t)r->n; }

void clattn__kv_rot_table(const clattn__kv_rot *r, int32_t *out)
{
    for (int k = 0; k < r->rounds; k++) {
        memcpy(out + (size_t)(2 * k) * (size_t)r->n, r->sign[k], (size_t)r->n * sizeof(int32_t));
        memcpy(out + (size_t)(2 * k + 1) * (size_t)r->n, r->perm[k], (size_t)r->n * sizeof(int32_t));
    }
}
