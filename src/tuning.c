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
 * AVX-512) against OpenBLAS sgemm on the same machine (figures at the end of
 * cl/flash_cpu.cl): 6 rows x 64 keys (24 accumulators + 4 loads fill the 32 zmm
 * registers), 4 output vectors per P·V pass, 4 row groups so a head's K/V tiles are
 * read from L3 once per 24 rows, one work-item per work-group. 5..7 rows and 8 x 32
 * timed within noise of it; 4 x 64 and 6 x 32 were 5-10% slower.
 * GPU row (cl/flash_gpu.cl): untuned defaults; on an NVIDIA H200 (OpenCL) it ran
 * 1x8x1024x1024x64 f32 in 0.40 ms (5.4 TFLOP/s, PyTorch SDPA 0.13 ms) and
 * 1x8x2048x2048x128 f32 in 2.7 ms (6.4 TFLOP/s, SDPA 0.42 ms). */
static const clattn__fused_tuning fused_table[] = {
    /* type               vendor max_d form block_m block_n dv_chunk row_groups wg */
    {CLATTN_DEVICE_CPU,   NULL,  256,  0,   6,      64,     4,       4,         1},
    {CLATTN_DEVICE_GPU,   NULL,  256,  1,   32,     32,     0,       1,         128},
    {0,                   NULL,  256,  0,   6,      64,     4,       4,         1},
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

/* ---- Decode path ----------------------------------------------------------------- *
 * cl/decode.cl, chosen by src/path_decode.c for Lq <= max_lq.
 * CPU row: PoCL 3.1 on a 2-core Xeon with AVX-512 (figures at the end of cl/decode.cl).
 * vw 16 is one zmm register. With rows 4 at Dv = 128 the 32 accumulator vectors spill
 * to L1 (objdump of PoCL's code); a loop order keeping one column chunk of every row in
 * registers timed the same (GQA 32/8, f32 and f16), so the simpler order stayed. Splits
 * of 256..2048 keys keep a split's K and V (2 MiB at D = 128, f32) within one core's L2
 * for the row blocks that share it; 8 work-groups per core balance the two cores.
 * Variants (rows 2/8, ktile 32, vw 8, splits up to 1024/8192 keys, 2 work-groups per
 * core) timed within this machine's run-to-run noise, so these are reasoned defaults,
 * not measured optima.
 * GPU row: NVIDIA H200 through its OpenCL driver, measured against variants in the same
 * runs (figures at the end of cl/decode.cl). The generic row takes the CPU form, which
 * needs no local memory and runs anywhere.
 * max_lq 8: decode re-reads K and V once per block of rows, so a longer query block goes
 * to the fused path, which tiles queries. */
#define DECODE_MAX_LQ 8

/* Each value can be overridden at compile time for tuning runs (-DDECODE_CPU_ROWS=2),
 * so variants can be timed without editing the table. */
#ifndef DECODE_CPU_ROWS
#define DECODE_CPU_ROWS 4
#endif
#ifndef DECODE_CPU_KTILE
#define DECODE_CPU_KTILE 16
#endif
#ifndef DECODE_CPU_VW
#define DECODE_CPU_VW 16
#endif
#ifndef DECODE_CPU_WGS_PER_CU
#define DECODE_CPU_WGS_PER_CU 8
#endif
#ifndef DECODE_CPU_MIN_CHUNK
#define DECODE_CPU_MIN_CHUNK 256
#endif
#ifndef DECODE_CPU_MAX_CHUNK
#define DECODE_CPU_MAX_CHUNK 2048
#endif
#ifndef DECODE_GPU_ROWS
#define DECODE_GPU_ROWS 8
#endif
#ifndef DECODE_GPU_KTILE
#define DECODE_GPU_KTILE 256
#endif
#ifndef DECODE_GPU_WG
#define DECODE_GPU_WG 128
#endif
#ifndef DECODE_GPU_WGS_PER_CU
#define DECODE_GPU_WGS_PER_CU 8
#endif
#ifndef DECODE_GPU_MIN_CHUNK
#define DECODE_GPU_MIN_CHUNK 128
#endif

static const clattn__decode_tuning decode_table[] = {
    /* type              vendor form max_lq         rows             ktile             vw             wg
     *                   wgs/cu                 min_chunk             max_chunk */
    {CLATTN_DEVICE_CPU,  NULL, 0,   DECODE_MAX_LQ, DECODE_CPU_ROWS, DECODE_CPU_KTILE, DECODE_CPU_VW, 1,
                         DECODE_CPU_WGS_PER_CU, DECODE_CPU_MIN_CHUNK, DECODE_CPU_MAX_CHUNK},
    {CLATTN_DEVICE_GPU,  NULL, 1,   DECODE_MAX_LQ, DECODE_GPU_ROWS, DECODE_GPU_KTILE, 4,             DECODE_GPU_WG,
                         DECODE_GPU_WGS_PER_CU, DECODE_GPU_MIN_CHUNK, 0},
    /* anything else: the CPU form, which needs no local memory and runs everywhere */
    {0,                  NULL, 0,   DECODE_MAX_LQ, 4,               16,               8,             1,
                         4,                     256,                  4096},
};

const clattn__decode_tuning *clattn__decode_tuning_for(const clattn_device_props *props)
{
    const size_t n = sizeof decode_table / sizeof decode_table[0];
    for (size_t i = 0; i + 1 < n; i++) {
        const clattn__decode_tuning *t = &decode_table[i];
        if (t->type && t->type != props->type) continue;
        if (t->vendor && !contains_ci(props->vendor, t->vendor)) continue;
        return t;
    }
    return &decode_table[n - 1];
}
