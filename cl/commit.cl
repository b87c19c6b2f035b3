/* commit.cl: the commits of results from scratch into the caller's buffers, each in a
 * single launch, built without options.
 *
 * The commit of a path's results from scratch into the caller's O and LSE buffers in a
 * single launch (src/core/staging.c, clattn__shadow_commit): a launch is queued whole or not
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

/* The backward pass's commit of up to four outputs (dQ, dK, dV, d_mask) from their scratch
 * copies, in one launch, for every form (src/backward/backward.c). Spans in units of T:
 * bwd_commit in 2 bytes (every output dtype is 2 or 4 bytes), bwd_commit16 in 16 when
 * every offset and span is a multiple of 16 bytes (8 times fewer work-items for the same
 * copy); an absent span has n = 0. */
#define BWD_COMMIT(name, T)                                                              \
    kernel void name(global T *d0, ulong o0, global const T *s0, ulong n0, global T *d1,  \
                     ulong o1, global const T *s1, ulong n1, global T *d2, ulong o2,      \
                     global const T *s2, ulong n2, global T *d3, ulong o3,               \
                     global const T *s3, ulong n3)                                       \
    {                                                                                    \
        const ulong i = get_global_id(0);                                                \
        if (i < n0) d0[o0 + i] = s0[i];                                                  \
        if (i < n1) d1[o1 + i] = s1[i];                                                  \
        if (i < n2) d2[o2 + i] = s2[i];                                                  \
        if (i < n3) d3[o3 + i] = s3[i];                                                  \
    }
BWD_COMMIT(bwd_commit, ushort)
BWD_COMMIT(bwd_commit16, uint4)
