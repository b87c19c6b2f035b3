/* KV-cache formats: the packed blocks each format stores (with compile-time size checks),
 * a table of their traits, the Lloyd-Max codebooks and the rotation of the TQ formats, and
 * the CPU reference quantizers. The device kernels (cl/kv_quant.cl, cl/kv_attn.cl) follow
 * exactly these layouts and arithmetic; the tests compare the two. */
#ifndef CLATTN_KV_FORMAT_H
#define CLATTN_KV_FORMAT_H

#include "core/common.h"

#include <stdint.h>

/* ---- Packed blocks ----------------------------------------------------------------
 * Every scale is an IEEE half stored as uint16_t. The block structs define each format's
 * unit; rows and key tiles store the same fields grouped by kind (all scales, then all
 * codes), so a kernel converts many scales with one vector instruction and loads codes as
 * whole vectors (cl/kv_attn.cl). */

/* INT8: 32 consecutive elements of a vector; x = d * qs[e]. (ggml's q8_0.) */
typedef struct clattn__kv_blk_int8 {
    uint16_t d;
    int8_t qs[32];
} clattn__kv_blk_int8;

/* INT4: 32 elements (32 channels of one value vector, or one key channel over 32
 * consecutive tokens); x = m + d * q, q in 0..15. qs holds two 16-lane words, elements
 * 0..15 then 16..31, in the tq4 word layout below: a kernel turns 16 codes into floats
 * with a broadcast load, a shift and one permute of the table 0..15. */
typedef struct clattn__kv_blk_int4 {
    uint16_t d, m;
    uint8_t qs[16];
} clattn__kv_blk_int4;

/* TQ words: 16 codes, the lanes of one vector register. In a row (one vector) the lanes
 * are 16 consecutive rotated coordinates; in a key tile they are one coordinate of 16
 * consecutive tokens. Bit positions are chosen so a kernel unpacks a word with one
 * broadcast load and one per-lane shift (no shuffle, which would share x86's single
 * shuffle port with the codebook permute):
 *   tq4: lane l in bits 32*(l&1) + 4*(l>>1) of the little-endian 64-bit word;
 *   tq3: lane l in bits 24*(l&1) + 3*(l>>1) of the little-endian 48-bit word (even
 *        lanes in bytes 0..2, odd lanes in bytes 3..5; a kernel moves bytes 3..5 up by
 *        one to make the 64-bit word of tq4's shape);
 *   tq2: lane l in bits 2l of the little-endian 32-bit word. */
typedef struct clattn__kv_gran_tq4 {
    uint8_t qs[8];
} clattn__kv_gran_tq4;
typedef struct clattn__kv_gran_tq3 {
    uint8_t lo[4];
    uint8_t hi[2]; /* little-endian 16-bit word */
} clattn__kv_gran_tq3;
typedef struct clattn__kv_gran_tq2 {
    uint8_t qs[4];
} clattn__kv_gran_tq2;

_Static_assert(sizeof(clattn__kv_blk_int8) == 34, "int8 block must be packed: 2 + 32 bytes");
_Static_assert(sizeof(clattn__kv_blk_int4) == 20, "int4 block must be packed: 4 + 16 bytes");
_Static_assert(sizeof(clattn__kv_gran_tq4) == 8, "tq4 word: 16 x 4 bits");
_Static_assert(sizeof(clattn__kv_gran_tq3) == 6, "tq3 word: 16 x 3 bits");
_Static_assert(sizeof(clattn__kv_gran_tq2) == 4, "tq2 word: 16 x 2 bits");

/* Rows: one vector of n elements (values, f32/f16 keys, and the CPU reference's unit).
 *   f32, f16  n elements.
 *   int8      d[nb] then qs[nb * 32], nb = ceil(n / 32) blocks; codes past n are 0.
 *   int4      d[nb], m[nb], then qs[nb][16] (one block's 16 bytes each).
 *   tq        the scale g, then ceil(n / 16) words of 16 coordinates (code 0 past n).
 * Key tiles: keys of int8 and tq are stored 16 tokens to a tile, transposed, so
 * attention computes 16 scores as one vector per coordinate (no horizontal sums, and
 * 16 scales converted at once):
 *   int8      d[nb][16] then qs[n][16] (coordinate-major: byte 16 i + l is token l's
 *             code of coordinate i).
 *   tq        g[16], then n words (coordinate i's codes of the 16 tokens).
 * A tile is exactly 16 rows transposed (clattn__kv_tile_put / _get).
 * INT4 key groups: 32 tokens per group, per channel: d[n], m[n], then qs[n][16].
 * Value tiles: values are stored 16 tokens to a tile too, but only the scales are
 * gathered: each of a row's ns scale halves (ns = nb for int8, 2 nb for int4 (all d then
 * all m), 1 for tq, 0 for f32/f16) as 16 halves, field-major, then the 16 rows' codes one
 * after the other (clattn__kv_vtile_put / _get). Attention converts 16 tokens' scales
 * with one instruction and folds them into the softmax weights before the value loop. */
#define CLATTN_KV_QBLOCK 32 /* elements per INT8 / INT4 block */
#define CLATTN_KV_TQ_GRAN 16 /* lanes per TQ word */
#define CLATTN_KV_KTILE 16   /* tokens per key tile (int8, tq) */
#define CLATTN_KV_MAX_DIM 256

/* ---- Rotation of the TQ formats -------------------------------------------------- *
 * R is exactly orthogonal and fast: a round is y = H_blocks(P(s ⊙ x)) with random signs s,
 * a permutation P (y[i] = x[perm[i]]) and normalised Walsh-Hadamard transforms on blocks
 * whose sizes are the binary digits of n, largest first (n = 80: 64 and 16). A power of
 * two takes one round with P = identity (the randomized Hadamard transform); any other n
 * takes two rounds, the second with a random permutation so energy crosses the blocks.
 * Signs and permutations come from a fixed seed per n, so every cache, device and the
 * reference agree. Cost per vector: rounds * n * log2(n) additions. */
typedef struct clattn__kv_rot {
    int n, rounds;
    int32_t sign[2][CLATTN_KV_MAX_DIM]; /* +1 or -1 */
    int32_t perm[2][CLATTN_KV_MAX_DIM];
} clattn__kv_rot;

void clattn__kv_rot_init(clattn__kv_rot *r, int n);
void clattn__kv_rot_forward(const clattn__kv_rot *r, float *x);  /* x = R x */
void clattn__kv_rot_inverse(const clattn__kv_rot *r, float *x);  /* x = Rᵀ x */
/* The table the kernels read: for round k, sign[k][0..n) then perm[k][0..n), as int32. */
size_t clattn__kv_rot_table_len(const clattn__kv_rot *r);
void clattn__kv_rot_table(const clattn__kv_rot *r, int32_t *out);

/* ---- Codebooks --------------------------------------------------------------------
 * Lloyd-Max codebooks of the standard normal for 2, 3 and 4 bits, ascending; the TQ
 * coordinate of a unit vector in dimension D is ~N(0, 1/D), so code k stands for
 * codebook[k] / sqrt(D). thresholds[k] is the midpoint between entries k and k + 1. */
const float *clattn__kv_codebook(int bits);
const float *clattn__kv_thresholds(int bits);
/* The 32 floats a kernel reads for a TQ format: the 2^bits codebook entries repeated to
 * fill 16 lanes (a 16-entry table for one vector permute), then 2^bits - 1 thresholds
 * padded with +inf. */
void clattn__kv_tq_table(int bits, float out[32]);

/* ---- Traits ----------------------------------------------------------------------- */
typedef struct clattn__kv_traits {
    clattn_kv_format format;
    const char *name;
    double nominal_bits;
    int block;       /* elements per block (1 for f32/f16, 32 for int8/int4, 16 for tq) */
    int block_bytes; /* bytes per block (a TQ row adds 2 bytes of scale) */
    int tq_bits;     /* 2..4 for the TQ formats, 0 otherwise */
    /* CPU reference for one vector of n elements in the per-vector layout (every format;
     * INT4 keys use clattn__kv_quantize_int4_keys instead). rot is the rotation for n
     * (TQ only, NULL otherwise). */
    void (*from_float)(const clattn__kv_rot *rot, int n, const float *x, uint8_t *row);
    void (*to_float)(const clattn__kv_rot *rot, int n, const uint8_t *row, float *x);
} clattn__kv_traits;

/* The traits of a format, or NULL when the value is not a format. */
const clattn__kv_traits *clattn__kv_traits_of(clattn_kv_format format);
/* Bytes of one stored vector of n elements in the row layout. */
size_t clattn__kv_row_bytes(clattn_kv_format format, int n);

/* Key storage: does the format keep keys in 16-token tiles (int8, tq), and the bytes of
 * one tile; INT4 keys: the bytes of one 32-token group. */
bool clattn__kv_keys_tiled(clattn_kv_format format);
size_t clattn__kv_tile_bytes(clattn_kv_format format, int n);
size_t clattn__kv_int4_group_bytes(int n);
/* Value tiles (every format): half scales per row, and the bytes of a tile. */
int clattn__kv_scale_halves(clattn_kv_format format, int n);
size_t clattn__kv_vtile_bytes(clattn_kv_format format, int n);
void clattn__kv_vtile_put(clattn_kv_format format, int n, const uint8_t *row, int l, uint8_t *tile);
void clattn__kv_vtile_get(clattn_kv_format format, int n, const uint8_t *tile, int l, uint8_t *row);
/* Copy one row into lane l (0..15) of a key tile, or lane l of a tile out to a row. */
void clattn__kv_tile_put(clattn_kv_format format, int n, const uint8_t *row, int l, uint8_t *tile);
void clattn__kv_tile_get(clattn_kv_format format, int n, const uint8_t *tile, int l, uint8_t *row);

/* INT4 keys: ntok (1..32) consecutive key vectors of n channels, x[t * n + i], as one
 * group (layout above; tokens past ntok get code 0). Values are first clamped to the f16
 * range and rounded to f16, as the cache keeps the keys of an unfinished group as f16
 * (clattn_kv_format in clattn.h). */
void clattn__kv_quantize_int4_keys(int n, int ntok, const float *x, uint8_t *group);
void clattn__kv_dequantize_int4_keys(int n, int ntok, const uint8_t *group, float *x);

#endif /* CLATTN_KV_FORMAT_H */
