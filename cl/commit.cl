/* The commit of a path's results from scratch into the caller's O and LSE buffers in a
 * single launch (src/staging.c, clattn__shadow_commit): a launch is queued whole or not
 * at all, so a call that fails leaves both buffers as they were. Spans are in 2-byte
 * units (every output dtype is 2 or 4 bytes); an absent output has n = 0. */
kernel void commit_spans(global ushort *o, ulong o_off, global const ushort *os, ulong o_n,
                         global ushort *l, ulong l_off, global const ushort *ls, ulong l_n)
{
    const ulong i = get_global_id(0);
    if (i < o_n) o[o_off + i] = os[i];
    if (i < l_n) l[l_off + i] = ls[i];
}
