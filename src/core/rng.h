/* splitmix64 (Steele, Lea and Flood): a tiny random stream that is the same on every
 * platform. The KV formats' rotation seeds its signs and permutations with it, and the
 * test cases their data, so a seed means the same numbers everywhere. */
#ifndef CLATTN_CORE_RNG_H
#define CLATTN_CORE_RNG_H

#include <stdint.h>

static inline uint64_t clattn__splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#endif /* CLATTN_CORE_RNG_H */
