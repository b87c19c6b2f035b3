/* Host-side conversion between float32 and the 16-bit storage types (IEEE half and
 * bfloat16), and reading one element of a host tensor of any dtype as double. Used by
 * the CPU reference, the CLI and the tests; kernels have their own in cl/prelude.cl. */
#include "core/common.h"

#include <string.h>

/* A float's bits and back, through memcpy (no aliasing question; compilers make it a move). */
static float float_of_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint32_t bits_of_float(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return x;
}

float clattn__half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    return float_of_bits(bits);
}

uint16_t clattn__float_to_half(float f)
{
    const uint32_t x = bits_of_float(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or NaN (keep NaN quiet and non-zero) */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (ax < 0x33000000u) return sign; /* < 2^-25 rounds to zero */
        /* value = man * 2^(e - 150); the half subnormal unit is 2^-24 */
        uint32_t e = ax >> 23;
        uint32_t man = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 .. 24 */
        uint32_t res = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (res & 1u))) res++; /* may carry into a normal */
        return (uint16_t)(sign | res);
    }
    uint32_t res = ((ax >> 13) - ((127 - 15) << 10));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (res & 1u))) res++;
    return (uint16_t)(sign | res);
}

float clattn__bf16_to_float(uint16_t b) { return float_of_bits((uint32_t)b << 16); }

uint16_t clattn__float_to_bf16(float f)
{
    uint32_t x = bits_of_float(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

double clattn__host_get(const clattn_tensor *t, int64_t i0, int64_t i1, int64_t i2,
                        int64_t i3)
{
    const unsigned char *p = (const unsigned char *)t->host + t->offset + i0 * t->nb[0] +
                             i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
    switch (t->dtype) {
    case CLATTN_F32: {
        float f;
        memcpy(&f, p, sizeof f);
        return f;
    }
    case CLATTN_F16: {
        uint16_t h;
        memcpy(&h, p, sizeof h);
        return clattn__half_to_float(h);
    }
    case CLATTN_BF16: {
        uint16_t h;
        memcpy(&h, p, sizeof h);
        return clattn__bf16_to_float(h);
    }
    case CLATTN_BOOL: return *p ? 1.0 : 0.0;
    case CLATTN_I32: {
        int32_t i;
        memcpy(&i, p, sizeof i);
        return i;
    }
    }
    return 0.0;
}
