/* The tuning layer's names (see tuning.h): the tuned parameters and where each lives in a
 * row, the paths that read tuned values, the kernel forms of each path in fallback order,
 * and the forms tests force. */
#include "tuning/tuning.h"

#include <stddef.h>
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
#undef P

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
 * (work-group per row block, local memory). Backward: cl/backward_cpu.cl (one pass over
 * key blocks per work-item, no local memory) or cl/backward_gpu.cl (work-groups with local
 * tiles); after both, backward.c runs cl/backward_unfused.cl. KV cache: cl/kv_attn.cl
 * (work-item per row block, no local memory) or cl/kv_attn_gpu.cl (work-group per row
 * block, the tile's keys and values dequantized into local memory once for the group's
 * rows). A form that fails to build is followed by the next index, wrapping round
 * (clattn__tuning_form), before the path gives up. The paths' form tables
 * (src/paths/fused.c, src/paths/decode.c, src/backward/forms.c, src/kv/attention.c) are
 * indexed by these numbers. */
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
