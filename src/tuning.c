/* Tuned parameters of clattn's kernels, as data (see tuning.h). Each table lists rows
 * from the most specific device class to the generic default, which matches anything.
 * To try other values without rebuilding the tables, edit a row here: the values become
 * -D options, so the program cache keeps each variant apart. */
#include "tuning.h"

#include <ctype.h>
#include <string.h>

/* Case-insensitive substring test (ASCII, no locale). */
static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] &&
               tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n) return true;
    }
    return n == 0;
}

/* ---- Fused path ------------------------------------------------------------------ *
 * CPU rows (cl/flash_cpu.cl), measured with PoCL 3.1 on a 2-core Xeon (Cascade Lake,
 * AVX-512) against OpenBLAS sgemm on the same machine; the figures are in the comment at
 * the end of cl/flash_cpu.cl. FILLED IN BELOW.
 * GPU rows (cl/flash_gpu.cl): untuned defaults. */
static const clattn__fused_tuning fused_table[] = {
    /* type               vendor max_d form block_m block_n dv_chunk wg */
    {CLATTN_DEVICE_CPU,   NULL,  256,  0,   8,      32,     2,       1},
    {CLATTN_DEVICE_GPU,   NULL,  256,  1,   32,     32,     0,       128},
    {0,                   NULL,  256,  0,   8,      32,     2,       1},
};

const clattn__fused_tuning *clattn__fused_tuning_for(const clattn_device_props *props,
                                                     int64_t D, int64_t Dv)
{
    const size_t n = sizeof fused_table / sizeof fused_table[0];
    const int64_t d = D > Dv ? D : Dv;
    for (size_t i = 0; i + 1 < n; i++) {
        const clattn__fused_tuning *t = &fused_table[i];
        if (t->type && t->type != props->type) continue;
        if (t->vendor && !contains_ci(props->vendor, t->vendor)) continue;
        if (d > t->max_d) continue;
        return t;
    }
    return &fused_table[n - 1];
}
