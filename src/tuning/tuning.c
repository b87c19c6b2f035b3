/* The tuning layer (see tuning.h): the built-in rows of every path, their lookup by
 * device, the legality of a row on a device, the forms of each path and their fallback,
 * and the per-context state (tuning file records, a candidate being timed by clattn tune).
 * To try other values without rebuilding, write a tuning file (README) or run clattn tune:
 * values become -D options or launch shapes, and the program cache keeps each variant. */
#include "tuning/tuning.h"

#include "core/context.h"
#include "core/device.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Parameters and forms ---------------------------------------------------------- */
#define P(x) (1u << CLATTN__TP_##x)
#define F(name, paths) {#name, offsetof(clattn__trow, name), paths}
static const clattn__tparam_info params[] = {
    F(form, P(FUSED) | P(DECODE) | P(BACKWARD) | P(KV)),
    F(block_m, P(FUSED) | P(BACKWARD)),
    F(block_n, P(FUSED) | P(BACKWARD)),
    F(dv_chunk, P(FUSED)),
    F(row_groups, P(FUSED)),
    F(wg, P(FUSED) | P(DECODE) | P(BACKWARD) | P(KV)),
    F(tc, P(FUSED)),
    F(rows, P(DECODE) | P(KV)),
    F(ktile, P(DECODE) | P(KV)),
    F(vw, P(DECODE) | P(FUSED)),
    F(wgs_per_cu, P(DECODE) | P(KV)),
    F(min_chunk, P(DECODE) | P(KV)),
    F(max_chunk, P(DECODE) | P(KV)),
    F(max_lq, P(DECODE)),
    F(tile, P(UNFUSED)),
    F(softmax_wg, P(UNFUSED)),
    F(split_blocks, P(KV)),
    F(prefetch, P(KV) | P(DECODE)),
    F(prefer_clblast, P(DISPATCH)),
};
#undef F

const clattn__tparam_info *clattn__tparams(size_t *n)
{
    *n = sizeof params / sizeof params[0];
    return params;
}

int *clattn__trow_field(clattn__trow *r, const clattn__tparam_info *pi)
{
    return (int *)(void *)((char *)r + pi->offset);
}

static const char *const path_names[CLATTN__TP_COUNT] = {"fused", "decode", "unfused", "kv", "dispatch",
                                                         "backward"};

const char *clattn__tpath_name(clattn__tpath path)
{
    return (unsigned)path < CLATTN__TP_COUNT ? path_names[path] : "?";
}

bool clattn__tpath_from_name(const char *name, clattn__tpath *out)
{
    for (int i = 0; i < CLATTN__TP_COUNT; i++)
        if (strcmp(name, path_names[i]) == 0) {
            *out = (clattn__tpath)i;
            return true;
        }
    return false;
}

/* Forms in fallback order. Fused: cl/flash_cpu.cl, cl/flash_gpu.cl, cl/flash_gpu_mm.cl
 * (gpu-mm: after it fails, the CPU form, which needs no local memory). Decode: cl/decode.cl
 * with DEC_GPU 0 (work-item per row block, vectors along D, no local memory) or 1
 * (work-group per row block, local memory). Backward: cl/backward.cl with FORM 0 (one
 * pass over key blocks per work-item, no local memory) or 1 (work-groups with local
 * tiles); after both, backward.c runs cl/backward_unfused.cl. KV cache: cl/kv_attn.cl with
 * KV_GPU 0 (work-item per row block, no local memory) or 1 (work-group per row block, the
 * tile's keys and values dequantized into local memory once for the group's rows). A form that fails to build is followed by the
 * next index, wrapping round (clattn__tuning_form), before the path gives up. */
int clattn__tform_count(clattn__tpath path)
{
    return path == CLATTN__TP_FUSED                                                       ? 3
           : path == CLATTN__TP_DECODE || path == CLATTN__TP_BACKWARD || path == CLATTN__TP_KV ? 2
                                                                                              : 1;
}

const char *clattn__tform_name(clattn__tpath path, int form)
{
    if (clattn__tform_count(path) == 1) return "-";
    if (form >= clattn__tform_count(path)) return "?";
    return form == 0 ? "cpu" : form == 1 ? "gpu" : form == 2 ? "gpu-mm" : "?";
}

/* ---- Built-in rows ----------------------------------------------------------------- */
typedef clattn__tbuiltin builtin_row;

/* Fused path.
 * CPU rows (cl/flash_cpu.cl), measured with PoCL 3.1 on a 2-core Xeon (Cascade Lake,
 * AVX-512) against OpenBLAS sgemm on the same machine (figures at the end of
 * cl/flash_cpu.cl): 6 rows x 64 keys (24 accumulators + 4 loads fill the 32 zmm
 * registers), 4 output vectors per P·V pass, 4 row groups so a head's K/V tiles are
 * read from L3 once per 24 rows, one work-item per work-group. 5..7 rows and 8 x 32
 * timed within noise of it; 4 x 64 and 6 x 32 were 5-10% slower.
 * The gpu form (cl/flash_gpu.cl, 32 x 32 tiles, 128 work-items: its generic values in
 * clattn__tuning_apply_form), the GPU row until gpu-mm, ran on an NVIDIA H200 (OpenCL)
 * 1x8x1024x1024x64 f32 in 0.40 ms (5.4 TFLOP/s, PyTorch SDPA 0.13 ms) and
 * 1x8x2048x2048x128 f32 in 2.7 ms (6.4 TFLOP/s, SDPA 0.42 ms).
 * The default is the CPU form: it needs no local memory and runs anywhere. */
#define FUSED_CPU {.form = 0, .block_m = 6, .block_n = 64, .dv_chunk = 4, .row_groups = 4, .wg = 1}
/* gpu-mm (cl/flash_gpu_mm.cl): 32 rows x 32 keys per tile, 128 work-items as 8 row
 * groups x 16 along the keys: 4 x 2 scores and 4 x ceil(Dv / 16) outputs per work-item;
 * 23 KiB of local memory at head size 64, so it fits 32 KiB devices (Apple) as it is.
 * Untuned: the host shrinks the tiles to the device's local memory (path_fused.c). */
#define FUSED_GPU_MM                                                                       \
    {.form = 2, .block_m = 32, .block_n = 32, .dv_chunk = 0, .row_groups = 1, .wg = 128, .tc = 16, .vw = 4}
static const builtin_row fused_rows[] = {
    /* Mesa rusticl on llvmpipe: a CPU device that runs the GPU forms 12x faster than the
     * CPU form (clattn tune, docs/measurements.md), and builds them in seconds where the
     * CPU form's code takes minutes (docs/measurements.md has why); gpu-mm ran
     * 1x8x8x1024x1024x64 f32 1.8-3.4x faster than the gpu form there (docs/measurements.md). */
    {0, NULL, "llvmpipe", 0, FUSED_GPU_MM},
    {0, NULL, NULL, CLATTN_DEVICE_CPU, FUSED_CPU},
    {0, NULL, NULL, CLATTN_DEVICE_GPU, FUSED_GPU_MM},
    {0, NULL, NULL, 0, FUSED_CPU},
};

/* Decode path (cl/decode.cl), taken for Lq <= max_lq.
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
 * runs (figures at the end of cl/decode.cl). The default row takes the CPU form.
 * prefetch (CPU form): software prefetch of the key and value rows this many keys ahead,
 * 0 = none. 16 on PoCL: f16 decode 1x32x32x1x8192x128 on a quiet machine took 7.7-8.1 ms
 * without, 4.7-5.2 at 16, 5.0-5.5 at 32, 5.5-5.8 at 64 (docs/measurements.md).
 * max_lq 8: decode re-reads K and V once per block of rows, so a longer query block goes
 * to the fused path, which tiles queries. */
static const builtin_row decode_rows[] = {
    /* rusticl on llvmpipe: the GPU form, 8x faster there than the CPU form (clattn tune,
     * docs/measurements.md: rows 8, ktile 64, wg 64 won) */
    {0, NULL, "llvmpipe", 0,
     {.form = 1, .max_lq = 8, .rows = 8, .ktile = 64, .vw = 4, .wg = 64, .wgs_per_cu = 8,
      .min_chunk = 128, .max_chunk = 0}},
    {0, NULL, NULL, CLATTN_DEVICE_CPU,
     {.form = 0, .max_lq = 8, .rows = 4, .ktile = 16, .vw = 16, .wg = 1, .wgs_per_cu = 8,
      .min_chunk = 256, .max_chunk = 2048, .prefetch = 16}},
    {0, NULL, NULL, CLATTN_DEVICE_GPU,
     {.form = 1, .max_lq = 8, .rows = 8, .ktile = 256, .vw = 4, .wg = 128, .wgs_per_cu = 8,
      .min_chunk = 128, .max_chunk = 0}},
    {0, NULL, NULL, 0,
     {.form = 0, .max_lq = 8, .rows = 4, .ktile = 16, .vw = 8, .wg = 1, .wgs_per_cu = 4,
      .min_chunk = 256, .max_chunk = 4096}},
};

/* Unfused path: square QK^T and P·V tiles of 16 (256 work-items, shrunk to the device's
 * work-group limit); 1 (no local-memory tiles) on CPU devices, where barriers cost more
 * than they save. Softmax: 64 work-items per row (shrunk likewise). */
static const builtin_row unfused_rows[] = {
    {0, NULL, NULL, CLATTN_DEVICE_CPU, {.tile = 1, .softmax_wg = 64}},
    {0, NULL, NULL, 0, {.tile = 16, .softmax_wg = 64}},
};

/* KV-cache attention (cl/kv_attn.cl through kv_cache.c). CPU (PoCL, 2-core Xeon with
 * AVX-512, decode 1x32x32x1x8192x128): as the decode path, splits of 256 to 2048 keys
 * (K and V of a split stay within a core's 2 MiB L2 for every format), about 8
 * work-groups per compute unit with a split's row blocks in one work-group, software
 * prefetch (memory stalls: int8 0.68 -> 0.58 of the f16 time, kv_cache.c has the
 * figures). Other devices: untuned, smaller splits for more work-groups, each row block
 * counted as a work-group.
 * GPU devices take the GPU form (KV_GPU 1): 64 work-items per (row block, split), tiles
 * of 16 keys (qs, ks, vs and ss take 18.3 KiB at D = Dv = 128 with 4 rows, within the
 * 32 KiB of the smallest GPUs clattn targets). Untuned: no GPU has run it yet. */
#define KV_GPU_FORM {.form = 1, .rows = 4, .ktile = 16, .wg = 64}
static const builtin_row kv_rows[] = {
    /* rusticl on llvmpipe: the GPU form, 8.5x faster there than the CPU form (int8 K/V,
     * 1x32x8x1x4096x128 f16: 302 against 2583 ms, docs/measurements.md); the CPU row's
     * software prefetch does not even build there (rusticl's SPIR-V writer rejects
     * llvm.prefetch) */
    {0, NULL, "llvmpipe", 0,
     {.form = 1, .rows = 4, .ktile = 16, .wg = 64, .min_chunk = 64, .max_chunk = 1024, .wgs_per_cu = 4,
      .split_blocks = 1, .prefetch = 0}},
    {0, NULL, NULL, CLATTN_DEVICE_CPU,
     {.rows = 4, .min_chunk = 256, .max_chunk = 2048, .wgs_per_cu = 8, .split_blocks = 0, .prefetch = 1}},
    {0, NULL, NULL, CLATTN_DEVICE_GPU,
     {.form = 1, .rows = 4, .ktile = 16, .wg = 64, .min_chunk = 64, .max_chunk = 1024, .wgs_per_cu = 4,
      .split_blocks = 1, .prefetch = 0}},
    {0, NULL, NULL, 0,
     {.rows = 4, .min_chunk = 64, .max_chunk = 1024, .wgs_per_cu = 4, .split_blocks = 1, .prefetch = 0}},
};

/* Auto mode's order (dispatch.c): where the CLBlast path beat the fused one (clattn bench
 * --path all --shape 1,8,8,1024,1024,64). Only CPU measurements exist: on PoCL CLBlast's
 * untuned GEMMs ran it at 0.6 to 20 GFLOP/s, behind the fused kernels, so CPUs say no,
 * and so does the default (fused first, the safe order) until a GPU is measured. */
static const builtin_row dispatch_rows[] = {
    {0, NULL, NULL, CLATTN_DEVICE_CPU, {.prefer_clblast = 0}},
    {0, NULL, NULL, 0, {.prefer_clblast = 0}},
};

/* Backward pass (cl/backward.cl, src/backward.c).
 * CPU row (FORM 0): PoCL 3.1 on a 2-core Xeon with AVX-512, 1x8x8x1024x1024x64 f32
 * (docs/measurements.md): blocks of 64 keys (their dK and dV, 32 KiB of float16
 * vectors, stay in L1; 32 ran 4% slower, and wide heads halve the block to stay within
 * 32 KiB), 16 query rows per step (8 ran 10% slower, 32 the same); wg is 1 (a CPU runs
 * a work-group's items as a loop, and this form has no barriers to share).
 * GPU row (FORM 1): untuned starting values; the plan halves the tiles to fit 32 KiB of
 * local memory (the smallest among the GPUs clattn targets). It is also the default:
 * the CPU form puts one work-item on each (batch, KV head, key split), too few for a GPU.
 * llvmpipe takes the GPU form as the fused and decode paths do (its CPU-form builds
 * are slow). */
#define BACKWARD_CPU {.form = 0, .block_m = 16, .block_n = 64, .wg = 1}
#define BACKWARD_GPU {.form = 1, .block_m = 32, .block_n = 16, .wg = 128}
static const builtin_row backward_rows[] = {
    {0, NULL, "llvmpipe", 0, BACKWARD_GPU},
    {0, NULL, NULL, CLATTN_DEVICE_CPU, BACKWARD_CPU},
    {0, NULL, NULL, CLATTN_DEVICE_GPU, BACKWARD_GPU},
    {0, NULL, NULL, 0, BACKWARD_GPU},
};

static const builtin_row *table_of(clattn__tpath path, size_t *n)
{
#define T(t)                                                                               \
    *n = sizeof t / sizeof t[0];                                                           \
    return t
    switch (path) {
    case CLATTN__TP_FUSED: T(fused_rows);
    case CLATTN__TP_DECODE: T(decode_rows);
    case CLATTN__TP_UNFUSED: T(unfused_rows);
    case CLATTN__TP_KV: T(kv_rows);
    case CLATTN__TP_BACKWARD: T(backward_rows);
    default: T(dispatch_rows);
    }
#undef T
}

/* The values a form takes when it runs on a device whose row is tuned for another form
 * (or a record names a form without its values): the form's generic values. */
void clattn__tuning_apply_form(clattn__tpath path, int form, clattn__trow *r)
{
    if (path == CLATTN__TP_FUSED) {
        if (form == 2) {
            const clattn__trow mm = FUSED_GPU_MM;
            *r = mm;
            return;
        }
        r->block_m = form ? 32 : 6;
        r->block_n = form ? 32 : 64;
        r->dv_chunk = 4;
        r->row_groups = form ? 1 : 4;
        r->wg = form ? 128 : 1;
    } else if (path == CLATTN__TP_BACKWARD) {
        const clattn__trow g = form ? (clattn__trow)BACKWARD_GPU : (clattn__trow)BACKWARD_CPU;
        r->block_m = g.block_m;
        r->block_n = g.block_n;
        r->wg = g.wg;
    } else if (path == CLATTN__TP_KV) {
        const clattn__trow g = KV_GPU_FORM;
        r->rows = 4;
        r->ktile = form ? g.ktile : 0;
        r->wg = form ? g.wg : 0;
        if (form) r->prefetch = 0; /* KV_PREFETCH is the CPU form's */
    } else if (path == CLATTN__TP_DECODE) {
        if (form) {
            r->rows = 8;
            r->wg = 64;
            r->ktile = 64;
        } else {
            r->rows = 4;
            r->vw = 16;
            r->ktile = 16;
        }
    }
    r->form = form;
}

enum { LEVEL_DEFAULT = 0, LEVEL_TYPE, LEVEL_VENDOR, LEVEL_ARCH, LEVEL_NAME };
static const char *const level_names[] = {"default", "type", "vendor", "arch", "name"};

/* A row's name matches the whole device name, case-insensitively, or its head before
 * " (": Mesa names a device "llvmpipe (LLVM 15.0.6, 256 bits)", the suffix changing with
 * every LLVM build and vector width while the device stays the same kind. */
bool clattn__tuning_name_matches(const char *row_name, const char *dev_name)
{
    const size_t n = strlen(row_name);
    char head[sizeof ((clattn__tdevice *)0)->name];
    if (n >= sizeof head || strlen(dev_name) < n) return false;
    memcpy(head, dev_name, n);
    head[n] = '\0';
    if (!clattn__ieq(row_name, head)) return false;
    return dev_name[n] == '\0' || (dev_name[n] == ' ' && dev_name[n + 1] == '(');
}

/* The level of row t on dev, or -1 when a key it sets does not match. */
static int row_level(const builtin_row *t, const clattn__tdevice *dev)
{
    int level = LEVEL_DEFAULT;
    if (t->type) {
        if (t->type != dev->type) return -1;
        level = LEVEL_TYPE;
    }
    if (t->vendor_id) {
        if (t->vendor_id != dev->vendor_id) return -1;
        level = LEVEL_VENDOR;
    }
    if (t->arch) {
        if (strcmp(t->arch, dev->arch) != 0) return -1;
        level = LEVEL_ARCH;
    }
    if (t->name) {
        if (!clattn__tuning_name_matches(t->name, dev->name)) return -1;
        level = LEVEL_NAME;
    }
    return level;
}

void clattn__tuning_builtin(const clattn__tdevice *dev, clattn__tpath path, clattn__trow *row,
                            const char **level)
{
    size_t n;
    const builtin_row *t = table_of(path, &n);
    clattn__tuning_lookup(t, n, dev, row, level);
}

void clattn__tuning_lookup(const clattn__tbuiltin *t, size_t n, const clattn__tdevice *dev, clattn__trow *row,
                           const char **level)
{
    int best = -1;
    size_t at = n - 1;
    for (size_t i = 0; i < n; i++) {
        int l = row_level(&t[i], dev);
        if (l > best) {
            best = l;
            at = i;
        }
    }
    *row = t[at].row;
    if (level) *level = level_names[best < 0 ? 0 : best];
}

/* ---- Legality ---------------------------------------------------------------------- */
static bool pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

/* Local memory of the fused GPU form (cl/flash_gpu.cl's qs, kvs, ps and red). */
uint64_t clattn__fused_gpu_local_bytes(int64_t D, int64_t Dv, int block_m, int block_n)
{
    const uint64_t dmax = (uint64_t)(D > Dv ? D : Dv);
    return sizeof(float) * ((uint64_t)block_m * (uint64_t)D + (uint64_t)block_n * (dmax + 1) +
                            (uint64_t)block_m * (uint64_t)(block_n + 1) + (uint64_t)block_m * 16u);
}

/* Local memory of the gpu-mm form (cl/flash_gpu_mm.cl's qs, kv, ps and red). */
uint64_t clattn__fused_gpu_mm_local_bytes(int64_t D, int64_t Dv, int block_m, int block_n, int tc)
{
    const uint64_t kt = (uint64_t)D * (uint64_t)(block_n + 1), vt = (uint64_t)block_n * (uint64_t)Dv;
    return sizeof(float) * ((uint64_t)block_m * (uint64_t)D + (kt > vt ? kt : vt) +
                            (uint64_t)block_m * (uint64_t)(block_n + 1) + (uint64_t)block_m * (uint64_t)tc);
}

/* Local memory of the KV cache's GPU form (cl/kv_attn.cl KV_GPU 1: qs, ks, vs, ss). */
uint64_t clattn__kv_gpu_local_bytes(int64_t D, int64_t Dv, int rows, int ktile)
{
    return sizeof(float) * ((uint64_t)rows * (uint64_t)D + (uint64_t)ktile * (uint64_t)(D + Dv) +
                            (uint64_t)rows * (uint64_t)ktile);
}

/* Local memory of the decode GPU form (cl/decode.cl: qs, ss, red, red4, per-row values). */
uint64_t clattn__decode_gpu_local_bytes(int64_t D, int64_t Dv, int rows, int ktile, int wg)
{
    uint64_t nq4 = ((uint64_t)Dv + 3) / 4, cq = 1;
    while (cq < nq4 && cq < (uint64_t)wg) cq <<= 1;
    const uint64_t nu = (nq4 + cq - 1) / cq;
    return sizeof(float) * (uint64_t)rows * ((uint64_t)D + (uint64_t)ktile + (uint64_t)wg + 1u) +
           4u * sizeof(float) * nu * (uint64_t)wg + sizeof(cl_long) * 4u * (uint64_t)rows;
}

#define REFUSE_IF(cond, ...)                                                               \
    do {                                                                                   \
        if (cond) {                                                                        \
            snprintf(why, whylen, __VA_ARGS__);                                            \
            return false;                                                                  \
        }                                                                                  \
    } while (0)

bool clattn__tuning_legal(const clattn__tdevice *dev, clattn__tpath path, const clattn__trow *r,
                          int head, char *why, size_t whylen)
{
    const int maxwg = dev->max_wg > 0 && dev->max_wg < 4096 ? (int)dev->max_wg : 4096;
    if (head <= 0 || head > 256) head = 256;
    switch (path) {
    case CLATTN__TP_FUSED:
        REFUSE_IF(r->form < 0 || r->form > 2, "form %d is not cpu (0), gpu (1) or gpu-mm (2)", r->form);
        if (r->form == 2) {
            /* cl/flash_gpu_mm.cl: WG = TR x TC, TC | BLOCK_N, TR | BLOCK_M */
            REFUSE_IF(!pow2(r->tc) || r->tc < 4 || r->tc > 32, "tc %d is not a power of two in 4..32", r->tc);
            REFUSE_IF(!pow2(r->wg) || r->wg < r->tc || r->wg > maxwg,
                      "wg %d is not a power of two in tc..%d", r->wg, maxwg);
            REFUSE_IF(!pow2(r->block_n) || r->block_n < r->tc || r->block_n > 128 || r->block_n / r->tc > 8,
                      "block_n %d is not a power of two in tc..128 with at most 8 keys per work-item",
                      r->block_n);
            REFUSE_IF(!pow2(r->block_m) || r->block_m < r->wg / r->tc || r->block_m > 256 ||
                          r->block_m / (r->wg / r->tc) > 8,
                      "block_m %d is not a power of two in wg/tc = %d..256 with at most 8 rows per "
                      "work-item", r->block_m, r->wg / r->tc);
            REFUSE_IF(r->vw != 1 && r->vw != 4, "vw %d is not 1 or 4", r->vw);
            const uint64_t need = clattn__fused_gpu_mm_local_bytes(head, head, r->block_m, r->block_n, r->tc);
            REFUSE_IF(need > dev->local_mem, "its tiles need %llu bytes of local memory at head size %d, "
                      "the device has %llu", (unsigned long long)need, head,
                      (unsigned long long)dev->local_mem);
            return true;
        }
        REFUSE_IF(r->block_n < 16 || r->block_n > 256 || r->block_n % 16,
                  "block_n %d is not a multiple of 16 in 16..256", r->block_n);
        if (r->form == 0) {
            REFUSE_IF(r->block_m < 1 || r->block_m > 16, "block_m %d is not in 1..16", r->block_m);
            REFUSE_IF(r->dv_chunk < 1 || r->dv_chunk > 8, "dv_chunk %d is not in 1..8", r->dv_chunk);
            REFUSE_IF(r->row_groups < 1 || r->row_groups > 16, "row_groups %d is not in 1..16",
                      r->row_groups);
            REFUSE_IF(!pow2(r->wg) || r->wg > maxwg, "wg %d is not a power of two up to %d", r->wg, maxwg);
        } else {
            REFUSE_IF(r->wg < 16 || r->wg % 16 || r->wg > maxwg,
                      "wg %d is not a multiple of 16 up to the device's %d", r->wg, maxwg);
            REFUSE_IF(r->block_m < r->wg / 16 || r->block_m > 256 || r->block_m % (r->wg / 16),
                      "block_m %d is not a multiple of wg/16 = %d up to 256", r->block_m, r->wg / 16);
            const uint64_t need = clattn__fused_gpu_local_bytes(head, head, r->block_m, r->block_n);
            REFUSE_IF(need > dev->local_mem, "its tiles need %llu bytes of local memory at head size %d, "
                      "the device has %llu", (unsigned long long)need, head,
                      (unsigned long long)dev->local_mem);
        }
        return true;
    case CLATTN__TP_DECODE:
        REFUSE_IF(r->form < 0 || r->form > 1, "form %d is not cpu (0) or gpu (1)", r->form);
        REFUSE_IF(r->max_lq < 1 || r->max_lq > 64, "max_lq %d is not in 1..64", r->max_lq);
        REFUSE_IF(r->rows < 1 || r->rows > 16, "rows %d is not in 1..16", r->rows);
        REFUSE_IF(r->wgs_per_cu < 1 || r->wgs_per_cu > 256, "wgs_per_cu %d is not in 1..256", r->wgs_per_cu);
        REFUSE_IF(r->min_chunk < 16 || r->min_chunk > (1 << 20), "min_chunk %d is not in 16..2^20",
                  r->min_chunk);
        REFUSE_IF(r->max_chunk != 0 && (r->max_chunk < r->min_chunk || r->max_chunk > (1 << 24)),
                  "max_chunk %d is neither 0 nor in min_chunk..2^24", r->max_chunk);
        if (r->form == 0) {
            REFUSE_IF(r->vw != 4 && r->vw != 8 && r->vw != 16, "vw %d is not 4, 8 or 16", r->vw);
            REFUSE_IF(r->prefetch < 0 || r->prefetch > 1024, "prefetch %d is not in 0..1024 keys",
                      r->prefetch);
            REFUSE_IF(r->ktile < r->vw || r->ktile > 256 || r->ktile % r->vw,
                      "ktile %d is not a multiple of vw %d up to 256", r->ktile, r->vw);
            REFUSE_IF(r->wg < 1 || r->wg > maxwg, "wg %d is not in 1..%d", r->wg, maxwg);
        } else {
            REFUSE_IF(!pow2(r->wg) || r->wg < 16 || r->wg > maxwg,
                      "wg %d is not a power of two in 16..%d", r->wg, maxwg);
            REFUSE_IF(!pow2(r->ktile) || r->ktile > 1024, "ktile %d is not a power of two up to 1024",
                      r->ktile);
            const uint64_t need = clattn__decode_gpu_local_bytes(head, head, r->rows, r->ktile, r->wg);
            REFUSE_IF(need > dev->local_mem, "it needs %llu bytes of local memory at head size %d, "
                      "the device has %llu", (unsigned long long)need, head,
                      (unsigned long long)dev->local_mem);
        }
        return true;
    case CLATTN__TP_UNFUSED:
        REFUSE_IF(!pow2(r->tile) || r->tile > 16 || r->tile * r->tile > maxwg,
                  "tile %d is not a power of two up to 16 with tile^2 <= %d", r->tile, maxwg);
        REFUSE_IF(!pow2(r->softmax_wg) || r->softmax_wg > maxwg,
                  "softmax_wg %d is not a power of two up to %d", r->softmax_wg, maxwg);
        return true;
    case CLATTN__TP_KV:
        REFUSE_IF(r->rows < 1 || r->rows > 8, "rows %d is not in 1..8", r->rows);
        REFUSE_IF(r->wgs_per_cu < 1 || r->wgs_per_cu > 256, "wgs_per_cu %d is not in 1..256", r->wgs_per_cu);
        REFUSE_IF(r->min_chunk < 32 || r->min_chunk > (1 << 20), "min_chunk %d is not in 32..2^20",
                  r->min_chunk);
        REFUSE_IF(r->max_chunk < r->min_chunk || r->max_chunk > (1 << 24),
                  "max_chunk %d is not in min_chunk..2^24", r->max_chunk);
        REFUSE_IF(r->split_blocks < 0 || r->split_blocks > 1, "split_blocks %d is not 0 or 1", r->split_blocks);
        REFUSE_IF(r->prefetch < 0 || r->prefetch > 1, "prefetch %d is not 0 or 1", r->prefetch);
        REFUSE_IF(r->form < 0 || r->form > 1, "form %d is not cpu (0) or gpu (1)", r->form);
        if (r->form == 1) {
            REFUSE_IF(!pow2(r->wg) || r->wg < 16 || r->wg > maxwg,
                      "wg %d is not a power of two in 16..%d", r->wg, maxwg);
            REFUSE_IF(!pow2(r->ktile) || r->ktile < 4 || r->ktile > 128,
                      "ktile %d is not a power of two in 4..128", r->ktile);
            const uint64_t need = clattn__kv_gpu_local_bytes(head, head, r->rows, r->ktile);
            REFUSE_IF(need > dev->local_mem, "it needs %llu bytes of local memory at head size %d, "
                      "the device has %llu", (unsigned long long)need, head,
                      (unsigned long long)dev->local_mem);
        }
        return true;
    case CLATTN__TP_DISPATCH:
        REFUSE_IF(r->prefer_clblast < 0 || r->prefer_clblast > 1, "prefer_clblast %d is not 0 or 1",
                  r->prefer_clblast);
        return true;
    case CLATTN__TP_BACKWARD:
        /* local memory is no criterion: src/backward.c halves the GPU form's tiles until
         * they fit the device, and the CPU form's block for wide heads */
        REFUSE_IF(r->form < 0 || r->form > 1, "form %d is not cpu (0) or gpu (1)", r->form);
        if (r->form == 0) {
            REFUSE_IF(r->block_m < 4 || r->block_m > 64 || r->block_m % 4,
                      "block_m %d is not a multiple of 4 in 4..64", r->block_m);
            REFUSE_IF(r->block_n < 16 || r->block_n > 128 || r->block_n % 16,
                      "block_n %d is not a multiple of 16 in 16..128", r->block_n);
            REFUSE_IF(r->wg != 1, "wg %d is not 1 (the CPU form runs one work-item per group)", r->wg);
        } else {
            REFUSE_IF(!pow2(r->block_m) || r->block_m > 128, "block_m %d is not a power of two up to 128",
                      r->block_m);
            REFUSE_IF(!pow2(r->block_n) || r->block_n > 128, "block_n %d is not a power of two up to 128",
                      r->block_n);
            REFUSE_IF(!pow2(r->wg) || r->wg > maxwg, "wg %d is not a power of two up to %d", r->wg, maxwg);
        }
        return true;
    default:
        REFUSE_IF(true, "unknown path");
    }
}
#undef REFUSE_IF

/* ---- Forced forms (tests) ---------------------------------------------------------- */
/* Process-wide, as the test hooks they replace: tests set them between calls. */
static int forced_form[CLATTN__TP_COUNT] = {-1, -1, -1, -1, -1, -1};

void clattn__tuning_force_form(clattn__tpath path, int form)
{
    if ((unsigned)path < CLATTN__TP_COUNT)
        forced_form[path] = form >= 0 && form < clattn__tform_count(path) ? form : -1;
}

int clattn__tuning_forced_form(clattn__tpath path)
{
    return (unsigned)path < CLATTN__TP_COUNT ? forced_form[path] : -1;
}

/* ---- Per context --------------------------------------------------------------------- */
static void report_log(void *arg, const char *msg)
{
    clattn__log((const clattn_context *)arg, "tuning: %s", msg);
}

/* Read one tuning file into ctx's records; a missing cache-folder file is not reported. */
static void load_file(clattn_context *ctx, const char *path, bool report_missing)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (report_missing) clattn__log(ctx, "tuning: cannot open %s; built-in rows", path);
        return;
    }
    char *text = malloc(CLATTN__TUNING_FILE_MAX + 1);
    size_t len = text ? fread(text, 1, CLATTN__TUNING_FILE_MAX + 1, f) : 0;
    fclose(f);
    if (!text) return;
    if (len > CLATTN__TUNING_FILE_MAX) {
        clattn__log(ctx, "tuning: %s is larger than %zu bytes; ignored", path, CLATTN__TUNING_FILE_MAX);
    } else {
        clattn__tuning *t = ctx->tuning;
        const size_t before = t->nrecords;
        if (clattn__tuning_parse(text, len, path, &t->dev, &t->records, &t->nrecords, report_log, ctx))
            clattn__log(ctx, "tuning: %s: %zu record(s) for this device", path, t->nrecords - before);
    }
    free(text);
}

clattn_status clattn__tuning_init(clattn_context *ctx)
{
    ctx->tuning = calloc(1, sizeof *ctx->tuning);
    if (!ctx->tuning) return CLATTN_ERROR_OUT_OF_MEMORY;
    clattn__tdevice_of(ctx->device, &ctx->props, &ctx->tuning->dev);
    /* CLATTN_TUNING_FILE first: on equally specific records, the earlier one wins */
    if (ctx->env.tuning_file[0]) load_file(ctx, ctx->env.tuning_file, true);
    if (ctx->env.cache_dir[0]) {
        char path[CLATTN__ENV_PATH_MAX + 32];
        int n = snprintf(path, sizeof path, "%s/clattn.tuning.json", ctx->env.cache_dir);
        if (n > 0 && (size_t)n < sizeof path) load_file(ctx, path, false);
    }
    return CLATTN_SUCCESS;
}

void clattn__tuning_free(clattn_context *ctx)
{
    if (!ctx->tuning) return;
    free(ctx->tuning->records);
    free(ctx->tuning);
    ctx->tuning = NULL;
}

static int head_bucket(int64_t D, int64_t Dv)
{
    const int64_t d = D > Dv ? D : Dv;
    return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

static int group_bucket(int64_t g)
{
    int b = 1;
    while (b < g && b < 16) b <<= 1;
    return b;
}

static const clattn__tdevice *dev_of(const clattn_context *ctx, clattn__tdevice *tmp)
{
    if (ctx->tuning) return &ctx->tuning->dev;
    /* a context whose tuning state could not be allocated still gets built-in rows */
    clattn__tdevice_of(ctx->device, &ctx->props, tmp);
    return tmp;
}

void clattn__tclass_of(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                       int kv_format, clattn__tclass *cls)
{
    clattn__tclass_make(ctx, path, (int)p->q->dtype, p->D, p->Dv, p->Lq, p->causal != CLATTN_CAUSAL_NONE,
                        p->group, kv_format, cls);
}

void clattn__tclass_make(const clattn_context *ctx, clattn__tpath path, int dtype, int64_t D, int64_t Dv,
                         int64_t Lq, bool causal, int64_t group, int kv_format, clattn__tclass *cls)
{
    cls->dtype = dtype;
    cls->head = head_bucket(D, Dv);
    cls->causal = causal;
    cls->group = group_bucket(group);
    cls->kv = kv_format;
    if (path == CLATTN__TP_DECODE || path == CLATTN__TP_KV) {
        cls->decode = 1;
    } else {
        /* the decode bound of the decode row for this problem decides the phase */
        clattn__tclass dc = *cls;
        dc.decode = 1;
        clattn__trow dr;
        clattn__tuning_row(ctx, CLATTN__TP_DECODE, &dc, &dr, NULL);
        cls->decode = Lq <= dr.max_lq;
    }
}

/* How many of a record's class fields are set, or -1 when one differs from cls. */
static int class_score(const clattn__tclass *rc, const clattn__tclass *cls)
{
    const int a[6] = {rc->dtype, rc->head, rc->decode, rc->causal, rc->group, rc->kv};
    const int b[6] = {cls->dtype, cls->head, cls->decode, cls->causal, cls->group, cls->kv};
    int score = 0;
    for (int i = 0; i < 6; i++) {
        if (a[i] == -2) continue;
        if (a[i] != b[i] && b[i] != -2) return -1; /* -2 in cls: any (devices --tuning) */
        score++;
    }
    return score;
}

void clattn__tuning_row(const clattn_context *ctx, clattn__tpath path, const clattn__tclass *cls,
                        clattn__trow *row, clattn__tsource *src)
{
    clattn__tdevice tmp;
    const clattn__tdevice *dev = dev_of(ctx, &tmp);
    const char *level;
    clattn__tuning_builtin(dev, path, row, &level);
    if (src) snprintf(src->text, sizeof src->text, "built-in %s", level);
    const clattn__tuning *t = ctx->tuning;
    if (t && t->have_candidate[path]) {
        *row = t->candidate[path];
        if (src) snprintf(src->text, sizeof src->text, "candidate");
    } else if (t) {
        const clattn__trecord *best = NULL;
        int best_score = -1;
        for (size_t i = 0; i < t->nrecords; i++) {
            if (t->records[i].path != path) continue;
            const int s = class_score(&t->records[i].cls, cls);
            if (s > best_score) {
                best_score = s;
                best = &t->records[i];
            }
        }
        if (best) {
            size_t np;
            const clattn__tparam_info *pi = clattn__tparams(&np);
            /* a record naming another form starts from that form's generic values */
            if ((best->given & 1u) && best->row.form != row->form)
                clattn__tuning_apply_form(path, best->row.form, row);
            for (size_t i = 0; i < np; i++)
                if (best->given & (1u << i))
                    *clattn__trow_field(row, &pi[i]) = *clattn__trow_field((clattn__trow *)&best->row, &pi[i]);
            if (src) clattn__copy_str(src->text, sizeof src->text, best->source);
        }
    }
    const int forced = clattn__tuning_forced_form(path);
    if (forced >= 0 && forced != row->form) {
        clattn__tuning_apply_form(path, forced, row);
        if (src) {
            char s[sizeof src->text];
            snprintf(s, sizeof s, "%.150s, form forced", src->text);
            clattn__copy_str(src->text, sizeof src->text, s);
        }
    }
}

void clattn__tuning_row_for(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                            int kv_format, clattn__trow *row, clattn__tsource *src)
{
    clattn__tclass cls;
    clattn__tclass_of(ctx, path, p, kv_format, &cls);
    clattn__tuning_row(ctx, path, &cls, row, src);
}

void clattn__tuning_set_candidate(clattn_context *ctx, clattn__tpath path, const clattn__trow *row)
{
    if (!ctx->tuning || (unsigned)path >= CLATTN__TP_COUNT) return;
    ctx->tuning->have_candidate[path] = row != NULL;
    if (row) ctx->tuning->candidate[path] = *row;
}

/* Forms that failed to build on this context, by problem class (the build options that
 * matter), so a later call goes straight to the next form. */
static void form_config(clattn__tpath path, const clattn__problem *p, int form, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s %s D=%lld Dv=%lld dt=%d%d%d%d mask=%d cap=%d alibi=%d",
             clattn__tpath_name(path), clattn__tform_name(path, form), (long long)p->D, (long long)p->Dv,
             (int)p->q->dtype, (int)p->k->dtype, (int)p->v->dtype, (int)p->o->dtype,
             p->mask ? (int)p->mask->dtype + 1 : 0, p->softcap > 0, p->alibi != NULL);
}

static bool form_has_failed(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p, int form)
{
    const clattn__tuning *t = ctx->tuning;
    if (!t) return false;
    char cfg[sizeof t->failed_forms[0]];
    form_config(path, p, form, cfg, sizeof cfg);
    for (int i = 0; i < t->nfailed_forms; i++)
        if (strcmp(t->failed_forms[i], cfg) == 0) return true;
    return false;
}

int clattn__tuning_form(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                        const clattn__trow *row)
{
    if (clattn__tuning_forced_form(path) >= 0) return row->form;
    const int n = clattn__tform_count(path);
    for (int k = 0; k < n; k++) {
        const int form = (row->form + k) % n;
        if (!form_has_failed(ctx, path, p, form)) return form;
    }
    return row->form; /* every form failed: the tuned one reports its error again */
}

bool clattn__tuning_form_failed(clattn_context *ctx, clattn__tpath path, const clattn__problem *p, int form)
{
    clattn__tuning *t = ctx->tuning;
    if (clattn__tuning_forced_form(path) >= 0 || !t) return false;
    const int cap = (int)(sizeof t->failed_forms / sizeof t->failed_forms[0]);
    if (t->nfailed_forms == cap) { /* keep the newest */
        memmove(&t->failed_forms[0], &t->failed_forms[1], (size_t)(cap - 1) * sizeof t->failed_forms[0]);
        t->nfailed_forms--;
    }
    form_config(path, p, form, t->failed_forms[t->nfailed_forms], sizeof t->failed_forms[0]);
    t->nfailed_forms++;
    clattn__log(ctx, "%s: form %s failed to build; trying the next form", clattn__tpath_name(path),
                clattn__tform_name(path, form));
    for (int k = 1; k < clattn__tform_count(path); k++)
        if (!form_has_failed(ctx, path, p, (form + k) % clattn__tform_count(path))) return true;
    return false;
}
