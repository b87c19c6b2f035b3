/* KV-cache formats on the CPU: the traits table and the reference quantizers that define
 * each format (the codebooks and the TQ rotation they use are in rotation.c). The kernels
 * in cl/kv_quant.cl repeat this arithmetic operation for operation (explicit fma, the
 * same constants), so on a device with correctly rounded division and sqrt the packed
 * bytes are identical. */
#include "kv/format.h"

#include <math.h>
#include <string.h>

/* ---- Half helpers ------------------------------------------------------------------ */

#define HALF_MAX 65504.0f

/* Round to the nearest half, saturating at the largest finite half (NaN stays NaN). */
static uint16_t to_half_sat(float v)
{
    if (v > HALF_MAX) v = HALF_MAX;
    if (v < -HALF_MAX) v = -HALF_MAX;
    return clattn__float_to_half(v);
}

static float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* ---- F32, F16 -------------------------------------------------------------------- */

static void f32_from(const clattn__kv_rot *rot, int n, const float *x, uint8_t *row)
{
    (void)rot;
    memcpy(row, x, (size_t)n * sizeof(float));
}
static void f32_to(const clattn__kv_rot *rot, int n, const uint8_t *row, float *x)
{
    (void)rot;
    memcpy(x, row, (size_t)n * sizeof(float));
}
static void f16_from(const clattn__kv_rot *rot, int n, const float *x, uint8_t *row)
{
    (void)rot;
    for (int i = 0; i < n; i++) put_u16(row + 2 * i, clattn__float_to_half(x[i]));
}
static void f16_to(const clattn__kv_rot *rot, int n, const uint8_t *row, float *x)
{
    (void)rot;
    for (int i = 0; i < n; i++) x[i] = clattn__half_to_float(get_u16(row + 2 * i));
}

/* Lane l's code of a 16-lane word at w (bit layouts in kv/format.h; INT4 uses the 4-bit
 * one too). */
static uint64_t get_u48(const uint8_t *w)
{
    uint64_t v = 0;
    for (int k = 0; k < 6; k++) v |= (uint64_t)w[k] << (8 * k);
    return v;
}

static int tq_word_get(int bits, const uint8_t *w, int l)
{
    if (bits == 4) return (w[4 * (l & 1) + (l >> 2)] >> (4 * ((l >> 1) & 1))) & 15;
    if (bits == 3) return (int)((get_u48(w) >> (24 * (l & 1) + 3 * (l >> 1))) & 7);
    return (w[l >> 2] >> (2 * (l & 3))) & 3;
}

static void tq_word_set(int bits, uint8_t *w, int l, int c)
{
    if (bits == 4) {
        const int byte = 4 * (l & 1) + (l >> 2), sh = 4 * ((l >> 1) & 1);
        w[byte] = (uint8_t)((w[byte] & ~(15 << sh)) | (c << sh));
        return;
    }
    if (bits == 3) {
        const int sh = 24 * (l & 1) + 3 * (l >> 1);
        const uint64_t v = (get_u48(w) & ~((uint64_t)7 << sh)) | ((uint64_t)(c & 7) << sh);
        for (int k = 0; k < 6; k++) w[k] = (uint8_t)(v >> (8 * k));
        return;
    }
    const int byte = l >> 2, sh = 2 * (l & 3);
    w[byte] = (uint8_t)((w[byte] & ~(3 << sh)) | ((c & 3) << sh));
}

/* ---- INT8 ------------------------------------------------------------------------ *
 * d = max|x| / 127 rounded to half; codes round(x / d) (ties to even) against that
 * rounded d, so dequantization sees the scale the codes were made with. Row: d[nb] then
 * qs[nb * 32]. */
static void int8_from(const clattn__kv_rot *rot, int n, const float *x, uint8_t *row)
{
    (void)rot;
    const int nb = (n + 31) / 32;
    memset(row, 0, (size_t)nb * sizeof(clattn__kv_blk_int8));
    int8_t *qs = (int8_t *)(row + 2 * nb);
    for (int b = 0; b < nb; b++) {
        const int b0 = 32 * b, m = n - b0 < 32 ? n - b0 : 32;
        float amax = 0.0f;
        for (int e = 0; e < m; e++) amax = fmaxf(amax, fabsf(x[b0 + e]));
        const uint16_t dh = to_half_sat(amax / 127.0f);
        put_u16(row + 2 * b, dh);
        const float d = clattn__half_to_float(dh);
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        for (int e = 0; e < m; e++) qs[b0 + e] = (int8_t)clampf(rintf(x[b0 + e] * id), -127.0f, 127.0f);
    }
}
static void int8_to(const clattn__kv_rot *rot, int n, const uint8_t *row, float *x)
{
    (void)rot;
    const int nb = (n + 31) / 32;
    const int8_t *qs = (const int8_t *)(row + 2 * nb);
    for (int i = 0; i < n; i++) x[i] = clattn__half_to_float(get_u16(row + 2 * (i / 32))) * (float)qs[i];
}

/* ---- INT4 ------------------------------------------------------------------------ *
 * One block from m (1..32) values v[e]: m = min, d = (max - min) / 15, both rounded to
 * half; codes round((v - m) / d) in 0..15. Values are clamped to the half range first
 * so the scales stay finite. Writes the block's d, m and 16 code bytes where told. */
static void int4_block(const float *v, int m, uint8_t *d_at, uint8_t *m_at, uint8_t *qs)
{
    float mn = INFINITY, mx = -INFINITY;
    for (int e = 0; e < m; e++) {
        const float t = clampf(v[e], -HALF_MAX, HALF_MAX);
        mn = fminf(mn, t);
        mx = fmaxf(mx, t);
    }
    const uint16_t dh = to_half_sat((mx - mn) / 15.0f), mh = to_half_sat(mn);
    put_u16(d_at, dh);
    put_u16(m_at, mh);
    const float d = clattn__half_to_float(dh), mf = clattn__half_to_float(mh);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    memset(qs, 0, 16);
    for (int e = 0; e < m; e++) {
        const float t = clampf(v[e], -HALF_MAX, HALF_MAX);
        const uint8_t q = (uint8_t)clampf(rintf((t - mf) * id), 0.0f, 15.0f);
        tq_word_set(4, qs + 8 * (e >> 4), e & 15, q);
    }
}

static float int4_value(const uint8_t *d_at, const uint8_t *m_at, const uint8_t *qs, int e)
{
    const int q = tq_word_get(4, qs + 8 * (e >> 4), e & 15);
    return clattn__half_to_float(get_u16(m_at)) + clattn__half_to_float(get_u16(d_at)) * (float)q;
}

/* Row: d[nb], m[nb], then qs[nb][16]. */
static void int4_from(const clattn__kv_rot *rot, int n, const float *x, uint8_t *row)
{
    (void)rot;
    const int nb = (n + 31) / 32;
    for (int b = 0; b < nb; b++)
        int4_block(x + 32 * b, n - 32 * b < 32 ? n - 32 * b : 32, row + 2 * b, row + 2 * nb + 2 * b,
                   row + 4 * nb + 16 * b);
}
static void int4_to(const clattn__kv_rot *rot, int n, const uint8_t *row, float *x)
{
    (void)rot;
    const int nb = (n + 31) / 32;
    for (int i = 0; i < n; i++) {
        const int b = i / 32;
        x[i] = int4_value(row + 2 * b, row + 2 * nb + 2 * b, row + 4 * nb + 16 * b, i % 32);
    }
}

/* Group: d[n], m[n], then qs[n][16]; channel i's block is (d[i], m[i], qs[i]). */
void clattn__kv_quantize_int4_keys(int n, int ntok, const float *x, uint8_t *group)
{
    float v[32];
    for (int i = 0; i < n; i++) {
        for (int t = 0; t < ntok; t++)
            v[t] = clattn__half_to_float(to_half_sat(x[(size_t)t * (size_t)n + (size_t)i]));
        int4_block(v, ntok, group + 2 * i, group + 2 * n + 2 * i, group + 4 * n + 16 * i);
    }
}

void clattn__kv_dequantize_int4_keys(int n, int ntok, const uint8_t *group, float *x)
{
    for (int i = 0; i < n; i++)
        for (int t = 0; t < ntok; t++)
            x[(size_t)t * (size_t)n + (size_t)i] =
                int4_value(group + 2 * i, group + 2 * n + 2 * i, group + 4 * n + 16 * i, t);
}

size_t clattn__kv_int4_group_bytes(int n) { return (size_t)n * sizeof(clattn__kv_blk_int4); }

/* ---- TQ -------------------------------------------------------------------------- *
 * y = R x; each coordinate is coded by the nearest codebook entry of y_i * sqrt(n)/|y|
 * (thresholds at midpoints, a tie takes the lower code); the stored scale is the
 * least-squares fit g = <y, c> / <c, c> of y by the code vector c, so x^ = g * R^T c.
 * Storing g instead of |x| / sqrt(n) lowers the mean squared error of unit vectors at
 * D = 128 from 0.00933 to 0.00916 (tq4), 0.0340 to 0.0335 (tq3) and 0.1160 to 0.1152
 * (tq2) (200000 random vectors); the kernels need no change for it. Sums are fused
 * multiply-adds in coordinate order, as in cl/kv_quant.cl. */
static int gran_bytes(int bits) { return bits == 4 ? 8 : bits == 3 ? 6 : 4; }

static void tq_pack(int bits, const uint8_t *codes, int n, uint8_t *row)
{
    const int ng = (n + 15) / 16, gb = gran_bytes(bits);
    memset(row + 2, 0, (size_t)(ng * gb));
    for (int i = 0; i < n; i++) tq_word_set(bits, row + 2 + (i / 16) * gb, i % 16, codes[i]);
}

static int tq_code(int bits, const uint8_t *row, int i)
{
    return tq_word_get(bits, row + 2 + (i / 16) * gran_bytes(bits), i % 16);
}

static void tq_from(int bits, const clattn__kv_rot *rot, int n, const float *x, uint8_t *row)
{
    const float *cb = clattn__kv_codebook(bits);
    const float *thr = clattn__kv_thresholds(bits);
    const int nthr = (1 << bits) - 1;
    float y[CLATTN_KV_MAX_DIM];
    uint8_t codes[CLATTN_KV_MAX_DIM];
    memcpy(y, x, (size_t)n * sizeof(float));
    clattn__kv_rot_forward(rot, y);
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss = fmaf(y[i], y[i], ss);
    const float norm = sqrtf(ss);
    const float f = norm > 0.0f ? sqrtf((float)n) / norm : 0.0f;
    float yc = 0.0f, cc = 0.0f;
    for (int i = 0; i < n; i++) {
        const float z = y[i] * f;
        int k = 0;
        for (int t = 0; t < nthr; t++) k += z > thr[t];
        codes[i] = (uint8_t)k;
        yc = fmaf(y[i], cb[k], yc);
        cc = fmaf(cb[k], cb[k], cc);
    }
    put_u16(row, to_half_sat(yc / cc));
    tq_pack(bits, codes, n, row);
}

static void tq_to(int bits, const clattn__kv_rot *rot, int n, const uint8_t *row, float *x)
{
    const float *cb = clattn__kv_codebook(bits);
    const float g = clattn__half_to_float(get_u16(row));
    for (int i = 0; i < n; i++) x[i] = g * cb[tq_code(bits, row, i)];
    clattn__kv_rot_inverse(rot, x);
}

#define TQ_WRAPPERS(b)                                                                    \
    static void tq##b##_from(const clattn__kv_rot *r, int n, const float *x, uint8_t *row) \
    {                                                                                     \
        tq_from(b, r, n, x, row);                                                         \
    }                                                                                     \
    static void tq##b##_to(const clattn__kv_rot *r, int n, const uint8_t *row, float *x)   \
    {                                                                                     \
        tq_to(b, r, n, row, x);                                                           \
    }
TQ_WRAPPERS(4)
TQ_WRAPPERS(3)
TQ_WRAPPERS(2)

/* ---- Traits ----------------------------------------------------------------------- */
static const clattn__kv_traits traits[CLATTN_KV_FORMAT_COUNT_] = {
    /* format         name    bits  block bytes tq  from_float  to_float */
    {CLATTN_KV_F32,  "f32",  32.0, 1,  4,  0, f32_from,  f32_to},
    {CLATTN_KV_F16,  "f16",  16.0, 1,  2,  0, f16_from,  f16_to},
    {CLATTN_KV_INT8, "int8", 8.5,  32, 34, 0, int8_from, int8_to},
    {CLATTN_KV_INT4, "int4", 5.0,  32, 20, 0, int4_from, int4_to},
    {CLATTN_KV_TQ4,  "tq4",  4.0,  16, 8,  4, tq4_from,  tq4_to},
    {CLATTN_KV_TQ3,  "tq3",  3.0,  16, 6,  3, tq3_from,  tq3_to},
    {CLATTN_KV_TQ2,  "tq2",  2.0,  16, 4,  2, tq2_from,  tq2_to},
};

const clattn__kv_traits *clattn__kv_traits_of(clattn_kv_format format)
{
    if ((int)format < 0 || format >= CLATTN_KV_FORMAT_COUNT_) return NULL;
    return &traits[format];
}

size_t clattn__kv_row_bytes(clattn_kv_format format, int n)
{
    const clattn__kv_traits *t = clattn__kv_traits_of(format);
    if (!t) return 0;
    const size_t blocks = (size_t)((n + t->block - 1) / t->block);
    return blocks * (size_t)t->block_bytes + (t->tq_bits ? 2u : 0u);
}

/* ---- Key tiles ---------------------------------------------------------------------- */

bool clattn__kv_keys_tiled(clattn_kv_format format)
{
    return format == CLATTN_KV_INT8 || (clattn__kv_traits_of(format) && clattn__kv_traits_of(format)->tq_bits);
}

size_t clattn__kv_tile_bytes(clattn_kv_format format, int n)
{
    const clattn__kv_traits *t = clattn__kv_traits_of(format);
    if (format == CLATTN_KV_INT8) return 16u * (2u * (size_t)((n + 31) / 32) + (size_t)n);
    if (t && t->tq_bits) return 32u + (size_t)n * (size_t)gran_bytes(t->tq_bits);
    return 16u * clattn__kv_row_bytes(format, n);
}

void clattn__kv_tile_put(clattn_kv_format format, int n, const uint8_t *row, int l, uint8_t *tile)
{
    const clattn__kv_traits *t = clattn__kv_traits_of(format);
    if (format == CLATTN_KV_INT8) {
        const int nb = (n + 31) / 32;
        for (int b = 0; b < nb; b++) memcpy(tile + 2 * (16 * b + l), row + 2 * b, 2);
        for (int i = 0; i < n; i++) tile[32 * nb + 16 * i + l] = row[2 * nb + i];
    } else if (t->tq_bits) {
        const int gb = gran_bytes(t->tq_bits);
        memcpy(tile + 2 * l, row, 2);
        for (int i = 0; i < n; i++) tq_word_set(t->tq_bits, tile + 32 + gb * i, l, tq_code(t->tq_bits, row, i));
    } else {
        const size_t rb = clattn__kv_row_bytes(format, n);
        memcpy(tile + (size_t)l * rb, row, rb);
    }
}

void clattn__kv_tile_get(clattn_kv_format format, int n, const uint8_t *tile, int l, uint8_t *row)
{
    const clattn__kv_traits *t = clattn__kv_traits_of(format);
    if (format == CLATTN_KV_INT8) {
        const int nb = (n + 31) / 32;
        memset(row, 0, clattn__kv_row_bytes(format, n));
        for (int b = 0; b < nb; b++) memcpy(row + 2 * b, tile + 2 * (16 * b + l), 2);
        for (int i = 0; i < n; i++) row[2 * nb + i] = tile[32 * nb + 16 * i + l];
    } else if (t->tq_bits) {
        const int gb = gran_bytes(t->tq_bits);
        uint8_t codes[CLATTN_KV_MAX_DIM];
        for (int i = 0; i < n; i++) codes[i] = (uint8_t)tq_word_get(t->tq_bits, tile + 32 + gb * i, l);
        memcpy(row, tile + 2 * l, 2);
        tq_pack(t->tq_bits, codes, n, row);
    } else {
        const size_t rb = clattn__kv_row_bytes(format, n);
        memcpy(row, tile + (size_t)l * rb, rb);
    }
}

/* ---- Value tiles ------------------------------------------------------------------- */

int clattn__kv_scale_halves(clattn_kv_format format, int n)
{
    const clattn__kv_traits *t = clattn__kv_traits_of(format);
    if (format == CLATTN_KV_INT8) return (n + 31) / 32;
    if (format == CLATTN_KV_INT4) return 2 * ((n + 31) / 32);
    return t && t->tq_bits ? 1 : 0;
}

size_t clattn__kv_vtile_bytes(clattn_kv_format format, int n) { return 16u * clattn__kv_row_bytes(format, n); }

void clattn__kv_vtile_put(clattn_kv_format format, int n, const uint8_t *row, int l, uint8_t *tile)
{
    const int ns = clattn__kv_scale_halves(format, n);
    const size_t rb = clattn__kv_row_bytes(format, n), cb = rb - 2u * (size_t)ns;
    for (int k = 0; k < ns; k++) memcpy(tile + 2 * (16 * k + l), row + 2 * k, 2);
    memcpy(tile + 32 * ns + (size_t)l * cb, row + 2 * ns, cb);
}

void clattn__kv_vtile_get(clattn_kv_format format, int n, const uint8_t *tile, int l, uint8_t *row)
{
    const int ns = clattn__kv_scale_halves(format, n);
    const size_t rb = clattn__kv_row_bytes(format, n), cb = rb - 2u * (size_t)ns;
    for (int k = 0; k < ns; k++) memcpy(row + 2 * k, tile + 2 * (16 * k + l), 2);
    memcpy(row + 2 * ns, tile + 32 * ns + (size_t)l * cb, cb);
}

/* ---- Public helpers ------------------------------------------------------------- */

double clattn_kv_format_nominal_bits(clattn_kv_format format)
{
    const clattn__kv_traits *t = clattn__kv_traits_of(format);
    return t ? t->nominal_bits : 0.0;
}

clattn_status clattn_kv_quantize_host(clattn_kv_format format, clattn_kv_role role, const float *x,
                                      size_t n_vectors, int64_t D, float *x_hat, uint64_t *bytes)
{
    const clattn__kv_traits *t = clattn__kv_traits_of(format);
    if (!t || (role != CLATTN_KV_KEYS && role != CLATTN_KV_VALUES)) return CLATTN_ERROR_INVALID_ARGUMENT;
    if (D < 1 || D > CLATTN_KV_MAX_DIM) return CLATTN_ERROR_INVALID_SHAPE;
    if (n_vectors && (!x || !x_hat)) return CLATTN_ERROR_INVALID_ARGUMENT;
    const int n = (int)D;
    if (format == CLATTN_KV_INT4 && role == CLATTN_KV_KEYS) {
        uint8_t group[CLATTN_KV_MAX_DIM * sizeof(clattn__kv_blk_int4)];
        for (size_t v0 = 0; v0 < n_vectors; v0 += 32) {
            const int ntok = n_vectors - v0 < 32 ? (int)(n_vectors - v0) : 32;
            clattn__kv_quantize_int4_keys(n, ntok, x + v0 * (size_t)n, group);
            clattn__kv_dequantize_int4_keys(n, ntok, group, x_hat + v0 * (size_t)n);
        }
        if (bytes) *bytes = (uint64_t)((n_vectors + 31) / 32) * (uint64_t)n * sizeof(clattn__kv_blk_int4);
        return CLATTN_SUCCESS;
    }
    clattn__kv_rot rot;
    if (t->tq_bits) clattn__kv_rot_init(&rot, n);
    uint8_t row[2 + CLATTN_KV_MAX_DIM * 4];
    float tmp[CLATTN_KV_MAX_DIM];
    for (size_t v = 0; v < n_vectors; v++) {
        memcpy(tmp, x + v * (size_t)n, (size_t)n * sizeof(float));
        t->from_float(t->tq_bits ? &rot : NULL, n, tmp, row);
        t->to_float(t->tq_bits ? &rot : NULL, n, row, x_hat + v * (size_t)n);
    }
    if (bytes) *bytes = (uint64_t)n_vectors * (uint64_t)clattn__kv_row_bytes(format, n);
    return CLATTN_SUCCESS;
}
