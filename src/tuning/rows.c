/* The built-in rows of every path (see tuning.h), as data with the measurements behind
 * them, each form's generic values, and the lookup of a device's row: device name, then
 * architecture, then vendor, then device type, then the default.
 * To try other values without rebuilding, write a tuning file (README) or run clattn tune:
 * values become -D options or launch shapes, and the program cache keeps each variant. */
#include "tuning/tuning.h"

#include "core/device.h"

#include <string.h>

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
 * Untuned: the host shrinks the tiles to the device's local memory (src/paths/fused.c). */
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

/* KV-cache attention (cl/kv_attn.cl through kv/attention.c). CPU (PoCL, 2-core Xeon with
 * AVX-512, decode 1x32x32x1x8192x128): as the decode path, splits of 256 to 2048 keys
 * (K and V of a split stay within a core's 2 MiB L2 for every format), about 8
 * work-groups per compute unit with a split's row blocks in one work-group, software
 * prefetch (memory stalls: int8 0.68 -> 0.58 of the f16 time, kv/attention.c has the
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

/* Backward pass (cl/backward_cpu.cl and cl/backward_gpu.cl, src/backward/forms.c).
 * CPU row (form 0): PoCL 3.1 on a 2-core Xeon with AVX-512, 1x8x8x1024x1024x64 f32
 * (docs/measurements.md): blocks of 64 keys (their dK and dV, 32 KiB of float16
 * vectors, stay in L1; 32 ran 4% slower, and wide heads halve the block to stay within
 * 32 KiB), 16 query rows per step (8 ran 10% slower, 32 the same); wg is 1 (a CPU runs
 * a work-group's items as a loop, and this form has no barriers to share).
 * GPU row (form 1): untuned starting values; the plan halves the tiles to fit 32 KiB of
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
