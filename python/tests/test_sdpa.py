"""clattn's Python package against a float64 numpy reference of SPEC §1: every keyword,
attn_mask broadcasting as PyTorch does it, GQA, the KV cache, and bad inputs (each an
exception with clattn's message, never a crash). Sizes are small and share a head size,
so the kernels build once and the suite runs in seconds."""

import numpy as np
import pytest

import clattn
from reference import close
from reference import attention as reference

D = 16
RNG = np.random.default_rng(7)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def qkv(B=2, Hq=2, Hkv=2, L=5, S=7, Dv=D, dtype=np.float32):
    return rand(B, Hq, L, D, dtype=dtype), rand(B, Hkv, S, D, dtype=dtype), rand(B, Hkv, S, Dv, dtype=dtype)


def test_plain_attention_matches_reference():
    q, k, v = qkv(Dv=8)
    close(clattn.scaled_dot_product_attention(q, k, v), reference(q, k, v)[0])


def test_is_causal_is_top_left():
    q, k, v = qkv()
    close(clattn.scaled_dot_product_attention(q, k, v, is_causal=True), reference(q, k, v, causal="top_left")[0])


def test_scale():
    q, k, v = qkv()
    close(clattn.scaled_dot_product_attention(q, k, v, scale=0.3), reference(q, k, v, scale=0.3)[0])


def test_gqa_needs_enable_gqa():
    q, k, v = qkv(Hq=4, Hkv=2)
    close(clattn.scaled_dot_product_attention(q, k, v, enable_gqa=True), reference(q, k, v)[0])
    with pytest.raises(ValueError, match="enable_gqa"):
        clattn.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("shape", [(5, 7), (1, 7), (5, 1), (2, 5, 7), (2, 1, 5, 7), (1, 2, 1, 7), (2, 2, 5, 7)])
def test_bool_mask_broadcasts_as_pytorch(shape):
    q, k, v = qkv()
    mask = RNG.random(shape) > 0.3
    close(clattn.scaled_dot_product_attention(q, k, v, attn_mask=mask), reference(q, k, v, mask=mask)[0])


@pytest.mark.parametrize("shape", [(5, 7), (2, 1, 1, 7)])
def test_float_mask_is_added(shape):
    q, k, v = qkv()
    mask = RNG.standard_normal(shape).astype(np.float32)
    mask[..., 0, :] = -np.inf  # a fully masked row gives zeros, not NaN (when it exists)
    out = clattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    close(out, reference(q, k, v, mask=mask)[0])
    assert np.isfinite(out).all()


def test_float64_mask_is_accepted_as_float32():
    q, k, v = qkv()
    mask = RNG.standard_normal((5, 7))
    close(clattn.scaled_dot_product_attention(q, k, v, attn_mask=mask),
          reference(q, k, v, mask=mask.astype(np.float32))[0])


def test_bottom_right_causal_aligns_queries_to_the_end():
    q, k, v = qkv(L=3, S=7)
    close(clattn.scaled_dot_product_attention(q, k, v, causal="bottom_right"),
          reference(q, k, v, causal="bottom_right")[0])


def test_window():
    q, k, v = qkv()
    close(clattn.scaled_dot_product_attention(q, k, v, window=(2, 1)), reference(q, k, v, window=(2, 1))[0])
    close(clattn.scaled_dot_product_attention(q, k, v, window=(None, 0)), reference(q, k, v, window=(-1, 0))[0])


def test_softcap():
    q, k, v = qkv()
    close(clattn.scaled_dot_product_attention(q, k, v, softcap=0.5), reference(q, k, v, softcap=0.5)[0])


def test_alibi_slopes():
    q, k, v = qkv()
    slopes = np.array([0.5, 0.25], dtype=np.float32)
    close(clattn.scaled_dot_product_attention(q, k, v, alibi_slopes=slopes), reference(q, k, v, alibi=slopes)[0])


def test_kv_lens_with_an_empty_entry():
    q, k, v = qkv()
    lens = np.array([0, 4])
    out = clattn.scaled_dot_product_attention(q, k, v, kv_lens=lens)
    close(out, reference(q, k, v, kv_lens=lens)[0])
    assert (out[0] == 0).all()


def test_return_lse():
    q, k, v = qkv()
    out, lse = clattn.scaled_dot_product_attention(q, k, v, is_causal=True, return_lse=True)
    want, want_lse = reference(q, k, v, causal="top_left")
    close(out, want)
    assert lse.dtype == np.float32 and lse.shape == (2, 2, 5)
    close(lse, want_lse)


@pytest.mark.parametrize("path", ["unfused", "fused"])
def test_forced_path(path):
    q, k, v = qkv()
    close(clattn.scaled_dot_product_attention(q, k, v, is_causal=True, path=path),
          reference(q, k, v, causal="top_left")[0])


def test_device_by_index_and_by_name():
    q, k, v = qkv()
    want = reference(q, k, v)[0]
    close(clattn.scaled_dot_product_attention(q, k, v, device=0), want)
    name = clattn.devices()[0]["name"]
    close(clattn.scaled_dot_product_attention(q, k, v, device=name[:6]), want)
    with pytest.raises(clattn.ClattnError, match="no context"):
        clattn.scaled_dot_product_attention(q, k, v, device="no-such-device-anywhere")


def test_float16_in_float16_out():
    q, k, v = qkv(dtype=np.float16)
    out = clattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == np.float16
    close(out, reference(q, k, v, causal="top_left")[0], f16=True)


def test_ranks_two_three_and_five():
    q, k, v = rand(5, D), rand(7, D), rand(7, D)
    close(clattn.scaled_dot_product_attention(q, k, v), reference(q[None, None], k[None, None], v[None, None])[0][0, 0])
    q3, k3, v3 = rand(3, 5, D), rand(3, 7, D), rand(3, 7, D)
    close(clattn.scaled_dot_product_attention(q3, k3, v3),
          reference(q3[:, None], k3[:, None], v3[:, None])[0][:, 0])
    q5, k5, v5 = rand(2, 3, 2, 5, D), rand(2, 3, 2, 7, D), rand(2, 3, 2, 7, D)
    mask = RNG.random((3, 1, 5, 7)) > 0.4  # broadcast over the outer batch dimension
    out = clattn.scaled_dot_product_attention(q5, k5, v5, attn_mask=mask)
    want = reference(q5.reshape(6, 2, 5, D), k5.reshape(6, 2, 7, D), v5.reshape(6, 2, 7, D),
                     mask=np.broadcast_to(mask, (2, 3, 2, 5, 7)).reshape(6, 2, 5, 7))[0]
    close(out, want.reshape(2, 3, 2, 5, D))


def test_strided_views_are_read_in_place():
    q, k, v = qkv()
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # BLHD memory
    close(clattn.scaled_dot_product_attention(qt, k[:, :, ::-1], v[:, :, ::-1]),
          reference(q, k[:, :, ::-1], v[:, :, ::-1])[0])


@pytest.mark.parametrize("kwargs, exc, needle", [
    (dict(dropout_p=0.1), ValueError, "dropout_p"),
    (dict(attn_mask=np.ones((5, 7), bool), is_causal=True), ValueError, "is_causal"),
    (dict(attn_mask=np.ones((4, 7), bool)), ValueError, "broadcast"),
    (dict(attn_mask=np.ones((5, 7), np.int32)), TypeError, "attn_mask"),
    (dict(path="fastest"), ValueError, "path"),
    (dict(causal="top-right"), ValueError, "causal"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(window=(-2, 0)), ValueError, "window"),
    (dict(kv_lens=[1, 2, 3]), ValueError, "kv_lens"),
    (dict(alibi_slopes=[0.5]), ValueError, "alibi"),
])
def test_bad_arguments_raise_with_clattns_message(kwargs, exc, needle):
    q, k, v = qkv()
    with pytest.raises(exc, match=needle):
        clattn.scaled_dot_product_attention(q, k, v, **kwargs)


def test_bad_dtypes_and_shapes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="float64"):
        clattn.scaled_dot_product_attention(q.astype(np.float64), k, v)
    with pytest.raises(TypeError, match="share a dtype"):
        clattn.scaled_dot_product_attention(q, k.astype(np.float16), v)
    with pytest.raises(TypeError):
        clattn.scaled_dot_product_attention(None, k, v)
    with pytest.raises(ValueError, match="D"):  # clattn's own check: key's head size differs
        clattn.scaled_dot_product_attention(q, rand(2, 2, 7, D + 1), v)
    with pytest.raises(ValueError, match="rank"):
        clattn.scaled_dot_product_attention(q, k[0], v)
    with pytest.raises(ValueError, match="2 dimensions"):
        clattn.scaled_dot_product_attention(q[0, 0, 0], k[0, 0, 0], v[0, 0, 0])


def test_kv_cache_append_attend_reset():
    B, Hq, Hkv, cap = 2, 4, 2, 16
    k, v = rand(B, Hkv, 6, D), rand(B, Hkv, 6, D)
    k16, v16 = k.astype(np.float16), v.astype(np.float16)  # what an f16 cache stores
    with clattn.KVCache(B, Hkv, cap, D, k_format="f16") as cache:
        cache.append(k[:, :, :4], v[:, :, :4])
        cache.append(k[:, :, 4:], v[:, :, 4:], n_per_batch=[2, 1])
        assert list(cache.lengths) == [6, 5]
        assert cache.bits_per_element > 0 and cache.nbytes > 0
        q = rand(B, Hq, 1, D)
        out, lse = cache.attention(q, return_lse=True)
        want, want_lse = reference(q, k16, v16, kv_lens=[6, 5], causal="bottom_right")
        # per-batch bottom-right alignment: for one query it is every key up to the length
        close(out, want, f16=True)
        close(lse, want_lse, f16=True)
        with pytest.raises(ValueError, match="capacity"):
            cache.append(rand(B, Hkv, 12, D), rand(B, Hkv, 12, D))
        assert list(cache.lengths) == [6, 5]
        cache.reset()
        assert list(cache.lengths) == [0, 0]
        with pytest.raises(ValueError, match="k_new"):
            cache.append(rand(B, Hkv, 2, D + 1), rand(B, Hkv, 2, D))
    with pytest.raises(ValueError, match="closed"):
        cache.reset()
    with pytest.raises(ValueError, match="k_format"):
        clattn.KVCache(B, Hkv, cap, D, k_format="int3")


def test_devices_are_listed():
    devs = clattn.devices()
    assert devs and all(d["name"] and d["type"] in ("cpu", "gpu", "accelerator", "other") for d in devs)
    assert clattn.__version__ == "0.2.0"
