/* The commit of a path's results from scratch into the caller's O and LSE buffers in a
 * single launch (src/staging.c, clattn__shadow_commit): a launch is queued whole or not
 * at all, so a call that fails leaves both buffers as they were. Spans are in 2-byte
 * units (every output dtype is 2 or 4 bytes); an absent output has n = 0. */
#define COMMIT_RUN 64 /* units per work-item: one per unit made PoCL copy at ~1 GB/s */
kernel void commit_spans(global ushort *o, ulong o_off, global const ushort *os, ulong o_n,
                         global ushort *l, ulong l_off, global const ushort *ls, ulong l_n)
{
    const ulong i0 = get_global_id(0) * COMMIT_RUN;
    for (ulong i = i0; i < min(o_n, i0 + COMMIT_RUN); i++) o[o_off + i] = os[i];
    for (ulong i = i0; i < min(l_n, i0 + COMMIT_RUN); i++) l[l_off + i] = ls[i];
}
