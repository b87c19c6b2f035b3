"""The float64 numpy reference of SPEC §1 shared by the Python tests: scores in the SPEC's
order (scale, softcap, ALiBi, additive mask), the keys each row may see (boolean mask,
causal both ways, window, key lengths), the softmax probabilities, the attention's output
and LSE, and the SPEC's comparison of a result with it."""
import math

import numpy as np


def probabilities(q, k, mask=None, causal="none", scale=None, window=None, softcap=None,
                  alibi=None, kv_lens=None):
    """For 4-D [B, H, L, D] q and k (GQA: k's heads repeated), in float64: p, the softmax
    of each row over the keys it may see (0 elsewhere, all 0 for a row that sees none);
    dcap, the derivative of softcap (1 without); sc, the scale; and the row maxima m and
    sums z of the unnormalised exponentials, for LSE."""
    q, k = (np.asarray(x, dtype=np.float64) for x in (q, k))
    B, Hq, L, Dq = q.shape
    S = k.shape[2]
    k = np.repeat(k, Hq // k.shape[1], axis=1)  # query head h reads KV head h // g
    sc = 1.0 / math.sqrt(Dq) if scale is None else scale
    s = np.einsum("bhld,bhsd->bhls", q, k) * sc
    dcap = np.ones_like(s)
    if softcap:
        t = np.tanh(s / softcap)
        s, dcap = softcap * t, 1.0 - t * t
    i = np.arange(L)[:, None]
    j = np.arange(S)[None, :]
    ip = i + S - L
    if alibi is not None:
        s = s - np.asarray(alibi, np.float64)[None, :, None, None] * np.abs(ip - j)
    allowed = np.ones((B, Hq, L, S), dtype=bool)
    if mask is not None:
        mk = np.asarray(mask)
        mk = mk.reshape((1,) * (4 - mk.ndim) + mk.shape) if mk.ndim < 4 else mk
        if mk.dtype == np.bool_:
            allowed &= np.broadcast_to(mk, allowed.shape)
        else:
            s = s + np.broadcast_to(mk.astype(np.float64), allowed.shape)
    if causal == "top_left":
        allowed &= j <= i
    elif causal == "bottom_right":
        allowed &= j <= ip
    if window is not None:
        left, right = window
        if left >= 0:
            allowed &= j >= ip - left
        if right >= 0:
            allowed &= j <= ip + right
    if kv_lens is not None:
        allowed &= j[None, None] < np.asarray(kv_lens)[:, None, None, None]
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    empty = ~np.isfinite(m)
    e = np.where(allowed, np.exp(s - np.where(empty, 0.0, m)), 0.0)
    z = e.sum(axis=-1, keepdims=True)
    p = np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)
    return p, dcap, sc, m, z


def attention(q, k, v, **kw):
    """SPEC §1 in float64 on 4-D [B, H, L, D] inputs; returns (out, lse)."""
    p, _, _, m, z = probabilities(q, k, **kw)
    v = np.asarray(v, dtype=np.float64)
    v = np.repeat(v, q.shape[1] // v.shape[1], axis=1)
    empty = z <= 0
    out = np.einsum("bhls,bhsd->bhld", p, v)
    lse = np.where(empty[..., 0], -np.inf, (m + np.log(np.where(empty, 1.0, z)))[..., 0])
    return out, lse


def close(got, want, f16=False, tol=None):
    """got within SPEC's tolerance of want: |got - want| <= atol + rtol * |want| with
    (atol, rtol) = (2e-4, 2e-3) for float32, (3e-3, 3e-3) for float16, or tol if given;
    -inf where want is -inf (an LSE with no key)."""
    atol, rtol = tol if tol else (3e-3, 3e-3) if f16 else (2e-4, 2e-3)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    bad = ~((np.abs(got - want) <= atol + rtol * np.abs(want)) | ((got == want) & np.isinf(want)))
    assert not bad.any(), "worst at %s: got %r, want %r" % (
        np.argwhere(bad)[0], got[tuple(np.argwhere(bad)[0])], want[tuple(np.argwhere(bad)[0])])
