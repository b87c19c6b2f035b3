/* probes.cl: tiny kernels that decide whether a device's optional features work as
 * clattn needs them (src/core/probe.c). Each is built on its own, with one -DPROBE_* option,
 * run once on a small fixed input, and its output compared with the host's answer; a
 * probe that fails to build, fails to run or answers wrongly marks its feature unusable
 * on that device and driver. The answers are cached with the program binaries.
 *
 *   PROBE_BASELINE  the same arithmetic as PROBE_F16 in float: every device passes it,
 *                 so it checks the probe machinery (answers cached, failures handled).
 *   PROBE_F16     half arithmetic (cl_khr_fp16): products and sums of half2 vectors.
 *   PROBE_SG      subgroups (cl_khr_subgroups, or cl_intel_subgroups with PROBE_SG_INTEL):
 *                 every work-item writes get_sub_group_size() and the subgroup's max and
 *                 sum of its input; the host checks that the size is one power of two
 *                 for all, that subgroups are runs of consecutive work-items, and the
 *                 reductions. The size comes from this kernel, not from a query.
 *   PROBE_MMA_NV  NVIDIA tensor cores through inline PTX: one warp computes
 *                 D = A x B + C with mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32.
 *
 *   probe_*  global (64), local (64) except probe_mma_nv: global (32), local (32)
 *     (const __global float *a, const __global float *b, __global float *out)
 */
#if defined(PROBE_F16)
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
/* out[i] = a*b + b*a + a + 1 computed in half; inputs are multiples of 1/8 below 4, so
 * every step is exact in half */
__kernel void probe_f16(const __global float *a, const __global float *b, __global float *out)
{
    const int i = (int)get_global_id(0);
    const half x = (half)a[i], y = (half)b[i];
    const half2 v = (half2)(x, y) * (half2)(y, x) + (half2)(x, (half)1.0f);
    out[i] = (float)v.x + (float)v.y;
}
#endif

#if defined(PROBE_BASELINE)
__kernel void probe_baseline(const __global float *a, const __global float *b, __global float *out)
{
    const int i = (int)get_global_id(0);
    const float x = a[i], y = b[i];
    const float2 v = (float2)(x, y) * (float2)(y, x) + (float2)(x, 1.0f);
    out[i] = v.x + v.y;
}
#endif

#if defined(PROBE_SG)
#if defined(PROBE_SG_INTEL)
#pragma OPENCL EXTENSION cl_intel_subgroups : enable
#else
#pragma OPENCL EXTENSION cl_khr_subgroups : enable
#endif
/* out[3i] = subgroup size, out[3i+1] = max over the subgroup, out[3i+2] = sum */
__kernel void probe_sg(const __global float *a, const __global float *b, __global float *out)
{
    const int i = (int)get_global_id(0);
    (void)b;
    const float x = a[i];
    out[3 * i] = (float)get_sub_group_size();
    out[3 * i + 1] = sub_group_reduce_max(x);
    out[3 * i + 2] = sub_group_reduce_add(x);
}
#endif

#if defined(PROBE_MMA_NV)
/* a: A 16x16 row-major, b: B 16x8 row-major (k, n), out: D 16x8 row-major, C = 1.
 * Fragment layouts of the PTX ISA for m16n8k16 (g = lane / 4, t = lane % 4):
 *   A: a0,a1 = A[g][2t..2t+1], a2,a3 = A[g+8][2t..], a4,a5 = A[g][2t+8..], a6,a7 = A[g+8][2t+8..]
 *   B: b0,b1 = B[2t..2t+1][g], b2,b3 = B[2t+8..2t+9][g]
 *   C, D: c0,c1 = [g][2t..2t+1], c2,c3 = [g+8][2t..2t+1]
 * Half pairs are packed into 32-bit registers with vstore_half (no cl_khr_fp16 needed). */
inline uint probe_pack(float lo, float hi)
{
    ushort h[2];
    vstore_half_rte(lo, 0, (__private half *)h);
    vstore_half_rte(hi, 1, (__private half *)h);
    return (uint)h[0] | ((uint)h[1] << 16);
}

__kernel __attribute__((reqd_work_group_size(32, 1, 1))) void
probe_mma_nv(const __global float *a, const __global float *b, __global float *out)
{
    const int lane = (int)get_local_id(0), g = lane / 4, t = lane % 4;
    const uint a01 = probe_pack(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
    const uint a23 = probe_pack(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
    const uint a45 = probe_pack(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
    const uint a67 = probe_pack(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
    const uint b01 = probe_pack(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]);
    const uint b23 = probe_pack(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]);
    float d0 = 1.0f, d1 = 1.0f, d2 = 1.0f, d3 = 1.0f;
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                 : "r"(a01), "r"(a23), "r"(a45), "r"(a67), "r"(b01), "r"(b23));
    out[g * 8 + 2 * t] = d0;
    out[g * 8 + 2 * t + 1] = d1;
    out[(g + 8) * 8 + 2 * t] = d2;
    out[(g + 8) * 8 + 2 * t + 1] = d3;
}
#endif
