"""clattn.scaled_dot_product_attention_backward against a float64 numpy reference of the
gradients of SPEC §1 attention: every keyword, GQA, layouts of rank 2 to 5, the forward's
out and lse given or recomputed, float16, the unfused fallback path, and bad inputs. Sizes
are small and share a head size, so the kernels build once per feature set."""

import numpy as np
import pytest

import clattn
from reference import probabilities

D = 16
RNG = np.random.default_rng(11)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def reference_grads(do, q, k, v, **kw):
    """dq, dk, dv of SPEC §1 attention in float64 on 4-D [B, H, L, D] inputs."""
    q, k, v, do = (np.asarray(x, dtype=np.float64) for x in (q, k, v, do))
    B, Hq, L, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    g = Hq // Hkv
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    p, dcap, sc, _, _ = probabilities(q, k, **kw)
    o = np.einsum("bhls,bhse->bhle", p, vr)
    dv = np.einsum("bhls,bhle->bhse", p, do)
    dp = np.einsum("bhle,bhse->bhls", do, vr)
    ds = p * (dp - (do * o).sum(axis=-1, keepdims=True)) * dcap
    dq = np.einsum("bhls,bhsd->bhld", ds, kr) * sc
    dk = np.einsum("bhls,bhld->bhsd", ds, q) * sc
    fold = lambda x: x.reshape(B, Hkv, g, S, x.shape[-1]).sum(axis=2)  # noqa: E731
    return dq, fold(dk), fold(dv)


def close(got, ref, tol):
    got = np.asarray(got, dtype=np.float64)
    m = max(float(np.abs(ref).max(initial=0.0)), 1e-6)
    err = np.abs(got - ref)
    assert np.all(err <= tol * m + tol * np.abs(ref)), "max error %g (max |ref| %g)" % (err.max(), m)


def check(q, k, v, tol=2e-3, **kw):
    """The backward of q, k, v (4-D) with keywords kw against the reference."""
    out_shape = q.shape[:-1] + (v.shape[-1],)
    do = rand(*out_shape, dtype=q.dtype)
    ref_kw = {n: kw[n] for n in ("causal", "scale", "window", "softcap", "kv_lens") if n in kw}
    if "attn_mask" in kw:
        ref_kw["mask"] = kw["attn_mask"]
    if "alibi_slopes" in kw:
        ref_kw["alibi"] = kw["alibi_slopes"]
    if kw.get("is_causal"):
        ref_kw["causal"] = "top_left"
    grads = clattn.scaled_dot_product_attention_backward(do, q, k, v, enable_gqa=True, **kw)
    refs = reference_grads(do, q, k, v, **ref_kw)
    for got, ref, x in zip(grads, refs, (q, k, v)):
        assert got.shape == x.shape and got.dtype == x.dtype
        close(got, ref, tol)
    return grads


def test_plain_and_gqa():
    check(rand(2, 2, 9, D), rand(2, 2, 13, D), rand(2, 2, 13, D))
    check(rand(1, 4, 7, D), rand(1, 2, 11, D), rand(1, 2, 11, D + 8))  # GQA, Dv != D


@pytest.mark.parametrize(
    "kw",
    [
        {"is_causal": True},
        {"causal": "bottom_right"},
        {"window": (3, 1)},
        {"softcap": 2.0, "scale": 0.7},
        {"alibi_slopes": np.array([0.5, 0.25], np.float32), "causal": "bottom_right"},
        {"kv_lens": np.array([5, 0], np.int32)},  # a batch with no keys: zero gradients
    ],
)
def test_keywords(kw):
    check(rand(2, 2, 9, D), rand(2, 2, 13, D), rand(2, 2, 13, D), **kw)


def test_masks():
    m = RNG.random((2, 1, 9, 13)) > 0.3
    check(rand(2, 2, 9, D), rand(2, 2, 13, D), rand(2, 2, 13, D), attn_mask=m)
    f = rand(9, 13)  # a float mask, broadcast over batch and heads
    check(rand(2, 2, 9, D), rand(2, 2, 13, D), rand(2, 2, 13, D), attn_mask=f)


def test_given_out_and_lse_match_recomputed_and_are_deterministic():
    q, k, v = rand(1, 2, 10, D), rand(1, 2, 12, D), rand(1, 2, 12, D)
    do = rand(1, 2, 10, D)
    out, lse = clattn.scaled_dot_product_attention(q, k, v, causal="bottom_right", return_lse=True)
    given = clattn.scaled_dot_product_attention_backward(do, q, k, v, causal="bottom_right", out=out, lse=lse)
    again = clattn.scaled_dot_product_attention_backward(do, q, k, v, causal="bottom_right", out=out, lse=lse)
    recomputed = clattn.scaled_dot_product_attention_backward(do, q, k, v, causal="bottom_right")
    ref = reference_grads(do, q, k, v, causal="bottom_right")
    for a, b, c, r in zip(given, again, recomputed, ref):
        assert np.array_equal(a, b)  # bit-identical from run to run
        close(a, r, 2e-3)
        close(c, r, 2e-3)


def test_ranks_and_float16():
    q, k, v = rand(7, D), rand(9, D), rand(9, D)  # 2-D: one batch, one head
    do = rand(7, D)
    dq, dk, dv = clattn.scaled_dot_product_attention_backward(do, q, k, v)
    for got, ref in zip((dq, dk, dv), reference_grads(do[None, None], q[None, None], k[None, None], v[None, None])):
        close(got, ref[0, 0], 2e-3)
    q, k, v = rand(2, 1, 2, 5, D), rand(2, 1, 2, 6, D), rand(2, 1, 2, 6, D)  # 5-D
    do = rand(2, 1, 2, 5, D)
    grads = clattn.scaled_dot_product_attention_backward(do, q, k, v)
    refs = reference_grads(do.reshape(2, 2, 5, D), q.reshape(2, 2, 5, D), k.reshape(2, 2, 6, D), v.reshape(2, 2, 6, D))
    for got, ref, x in zip(grads, refs, (q, k, v)):
        assert got.shape == x.shape
        close(got.reshape(ref.shape), ref, 2e-3)
    h = np.float16
    check(rand(1, 2, 9, D, dtype=h), rand(1, 2, 11, D, dtype=h), rand(1, 2, 11, D, dtype=h), tol=3e-2)


def test_unfused_path_matches_reference():
    check(rand(1, 2, 9, D), rand(1, 2, 13, D), rand(1, 2, 13, D), path="unfused", causal="bottom_right")


def test_bad_inputs_raise_with_a_message():
    q, k, v = rand(1, 2, 4, D), rand(1, 2, 5, D), rand(1, 2, 5, D)
    with pytest.raises(ValueError, match="grad_out"):
        clattn.scaled_dot_product_attention_backward(rand(1, 2, 3, D), q, k, v)
    with pytest.raises(TypeError, match="grad_out"):
        clattn.scaled_dot_product_attention_backward(rand(1, 2, 4, D, dtype=np.float16), q, k, v)
    with pytest.raises(ValueError, match="lse"):
        clattn.scaled_dot_product_attention_backward(rand(1, 2, 4, D), q, k, v, out=rand(1, 2, 4, D),
                                                     lse=np.zeros((1, 2, 3), np.float32))
    with pytest.raises(clattn.ClattnError, match="no backward pass"):
        clattn.scaled_dot_product_attention_backward(rand(1, 2, 4, D), q, k, v, path="decode")
    with pytest.raises(ValueError, match="dropout_p"):
        clattn.scaled_dot_product_attention_backward(rand(1, 2, 4, D), q, k, v, dropout_p=0.1)
