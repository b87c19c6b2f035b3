/* The legality of a tuning row on a device (see tuning.h): the one place that decides
 * whether a path's values fit the device's local memory and work-group size and the
 * divisibility its kernels need, with the local memory each GPU form takes. */
#include "tuning/tuning.h"

#include <stdio.h>

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
/* A GPU form whose local memory at head size `head` (`need` bytes) the device lacks;
 * `it` says what needs it ("its tiles need", "it needs"). `need` is read twice. */
#define REFUSE_LOCAL(need, it)                                                             \
    REFUSE_IF((need) > dev->local_mem, "%s %llu bytes of local memory at head size %d, "  \
              "the device has %llu", it, (unsigned long long)(need), head,                 \
              (unsigned long long)dev->local_mem)

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
            REFUSE_LOCAL(need, "its tiles need");
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
            REFUSE_LOCAL(need, "its tiles need");
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
            REFUSE_LOCAL(need, "it needs");
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
            REFUSE_LOCAL(need, "it needs");
        }
        return true;
    case CLATTN__TP_DISPATCH:
        REFUSE_IF(r->prefer_clblast < 0 || r->prefer_clblast > 1, "prefer_clblast %d is not 0 or 1",
                  r->prefer_clblast);
        return true;
    case CLATTN__TP_BACKWARD:
        /* local memory is no criterion: src/backward/backward.c halves the GPU form's tiles until
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
#undef REFUSE_LOCAL
#undef REFUSE_IF
