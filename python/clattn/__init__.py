"""clattn: scaled dot-product attention on any OpenCL device, from numpy.

A ctypes binding of libclattn (see _lib.py for how the library is found). The main
entry point mirrors torch.nn.functional.scaled_dot_product_attention on numpy arrays;
clattn's extras are keyword arguments. Every error clattn reports becomes ValueError
(bad shapes, values, arguments), TypeError (dtypes) or ClattnError, with clattn's message.
"""
import ctypes
import math
import threading

import numpy as np

from . import _lib
from ._lib import lib

__all__ = ["scaled_dot_product_attention", "scaled_dot_product_attention_backward", "KVCache", "KVPool",
           "PageTable", "merge_states", "devices", "ClattnError", "ClattnValueError", "ClattnTypeError",
           "__version__"]
__version__ = lib.clattn_version_string().decode()


class ClattnError(RuntimeError):
    """A failure reported by clattn; .status is the clattn_status code."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class ClattnValueError(ClattnError, ValueError):
    pass


class ClattnTypeError(ClattnError, TypeError):
    pass


def _raise(status, detail):
    name = lib.clattn_status_string(status).decode()
    text = "clattn: %s (%s)" % (detail, name) if detail else "clattn: %s" % name
    if status == _lib.UNSUPPORTED_DTYPE:
        raise ClattnTypeError(status, text)
    if status in (_lib.INVALID_ARGUMENT, _lib.INVALID_SHAPE, _lib.INVALID_STRIDE, _lib.CAPACITY):
        raise ClattnValueError(status, text)
    raise ClattnError(status, text)


class _Context:
    """One clattn context per device spec, shared by calls (its kernels stay built). A
    context serves one thread at a time, hence the lock."""

    def __init__(self, spec):
        handle = ctypes.c_void_p()
        st = lib.clattn_context_create(None if spec is None else spec.encode(), ctypes.byref(handle))
        if st != _lib.SUCCESS:
            _raise(st, "no context on device %r" % ("default" if spec is None else spec))
        self.handle = handle
        self.lock = threading.Lock()

    def check(self, st):
        if st != _lib.SUCCESS:
            _raise(st, lib.clattn_context_last_error(self.handle).decode(errors="replace"))

    def __del__(self):
        handle = getattr(self, "handle", None)
        if handle and lib is not None:
            lib.clattn_context_free(handle)


_contexts = {}
_contexts_lock = threading.Lock()


def _context(device):
    spec = None if device is None else str(device)
    with _contexts_lock:
        ctx = _contexts.get(spec)
        if ctx is None:
            ctx = _Context(spec)
            _contexts[spec] = ctx
        return ctx


_DTYPES = {np.dtype(np.float32): _lib.F32, np.dtype(np.float16): _lib.F16}


def _float_input(x, name):
    a = np.asarray(x)
    if a.dtype not in _DTYPES:
        raise ClattnTypeError(
            _lib.UNSUPPORTED_DTYPE,
            "clattn: %s: dtype %s is not supported: use float32 or float16" % (name, a.dtype),
        )
    if a.ndim < 2:
        raise ClattnValueError(
            _lib.INVALID_SHAPE, "clattn: %s must have at least 2 dimensions (..., L, E), got shape %s" % (name, a.shape)
        )
    return a


def _as4d(a):
    """[..., L, E] as [B, H, L, E]: 2-D is one batch and head, 3-D (N, L, E) one head,
    more than 4 dimensions fold the leading ones into the batch."""
    if a.ndim == 2:
        a = a.reshape((1, 1) + a.shape)
    elif a.ndim == 3:
        a = a.reshape((a.shape[0], 1) + a.shape[1:])
    elif a.ndim > 4:
        a = a.reshape((-1,) + a.shape[-3:])
    # clattn takes any non-negative byte strides; negative ones (reversed views) are copied.
    if any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)
    return a


def _tensor(a, dtype):
    t = _lib.Tensor()
    t.host = a.ctypes.data
    t.buffer = None
    t.offset = 0
    t.dtype = dtype
    for i in range(4):
        t.ne[i] = a.shape[i]
        t.nb[i] = a.strides[i] if a.shape[i] > 1 else 0
    return t


def _small_tensor(a, dtype):
    """A 1-D array as the [n, 1, 1, 1] descriptor clattn uses for slopes and lengths."""
    return _tensor(a.reshape(a.shape[0], 1, 1, 1), dtype)


def _mask4d(mask, q_shape, s_len):
    """attn_mask broadcast as PyTorch does against (N..., L, S), as a 4-D array whose
    size-1 extents clattn broadcasts itself (no copy of the repeated parts)."""
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        code = _lib.BOOL
    elif np.issubdtype(m.dtype, np.floating):
        code = _lib.F32
        m = m.astype(np.float32, copy=False)
    else:
        raise ClattnTypeError(
            _lib.UNSUPPORTED_DTYPE, "clattn: attn_mask: dtype %s is not bool or a float type" % m.dtype
        )
    full = tuple(q_shape[:-1]) + (s_len,)
    try:
        if np.broadcast_shapes(m.shape, full) != full:
            raise ValueError
    except ValueError:
        raise ClattnValueError(
            _lib.INVALID_SHAPE,
            "clattn: attn_mask of shape %s does not broadcast to (..., L, S) = %s" % (m.shape, full),
        ) from None
    m = m.reshape((1,) * (len(full) - m.ndim) + m.shape)
    if len(full) == 2:
        m = m.reshape((1, 1) + m.shape)
    elif len(full) == 3:
        m = m.reshape((m.shape[0], 1) + m.shape[1:])
    elif len(full) > 4:
        lead = full[:-3]
        if all(d == 1 for d in m.shape[:-3]):
            m = m.reshape((1,) + m.shape[-3:])
        else:  # folded batch dimensions: repeat the mask over them
            m = np.broadcast_to(m, lead + m.shape[-3:]).reshape((-1,) + m.shape[-3:])
    return np.ascontiguousarray(m), code


def _options(scale, causal, window, softcap, path):
    opt = _lib.Options()
    lib.clattn_options_init_sized(ctypes.byref(opt), ctypes.sizeof(_lib.Options))
    opt.scale = math.nan if scale is None else float(scale)
    opt.softcap = 0.0 if softcap is None else float(softcap)
    if causal not in _lib.CAUSAL:
        raise ClattnValueError(
            _lib.INVALID_ARGUMENT, "clattn: causal=%r: expected 'top_left', 'bottom_right' or None" % (causal,)
        )
    opt.causal = _lib.CAUSAL[causal]
    if window is not None:
        try:
            left, right = window
        except (TypeError, ValueError):
            raise ClattnValueError(
                _lib.INVALID_ARGUMENT, "clattn: window=%r: expected (left, right)" % (window,)
            ) from None
        opt.window_left = -1 if left is None else int(left)
        opt.window_right = -1 if right is None else int(right)
    if path not in _lib.PATHS:
        raise ClattnValueError(
            _lib.INVALID_ARGUMENT, "clattn: path=%r: expected one of %s" % (path, ", ".join(_lib.PATHS))
        )
    opt.path = _lib.PATHS[path]
    return opt


def _extras(opt, keep, attn_mask, q, s_len, alibi_slopes, kv_lens, batch):
    """Mask, slopes and lengths into opt; the arrays go to keep so they outlive the call."""
    if attn_mask is not None:
        m, code = _mask4d(attn_mask, q.shape, s_len)
        mt = _tensor(m, code)
        keep += [m, mt]
        opt.mask = ctypes.pointer(mt)
    if alibi_slopes is not None:
        a = np.ascontiguousarray(np.asarray(alibi_slopes, dtype=np.float32).reshape(-1))
        at = _small_tensor(a, _lib.F32)
        keep += [a, at]
        opt.alibi = ctypes.pointer(at)
    if kv_lens is not None:
        kl = np.asarray(kv_lens)
        if not np.issubdtype(kl.dtype, np.integer):
            raise ClattnTypeError(_lib.UNSUPPORTED_DTYPE, "clattn: kv_lens: dtype %s is not an integer type" % kl.dtype)
        kl = np.ascontiguousarray(kl.astype(np.int32).reshape(-1))
        if kl.shape[0] != batch:
            raise ClattnValueError(
                _lib.INVALID_SHAPE, "clattn: kv_lens has %d entries, the batch is %d" % (kl.shape[0], batch)
            )
        kt = _small_tensor(kl, _lib.I32)
        keep += [kl, kt]
        opt.kv_lens = ctypes.pointer(kt)


def _resolve_causal(is_causal, causal, attn_mask):
    if is_causal and causal not in (None, "top_left"):
        raise ClattnValueError(
            _lib.INVALID_ARGUMENT, "clattn: is_causal=True is top-left causal; it conflicts with causal=%r" % (causal,)
        )
    c = "top_left" if is_causal else (causal or "none")
    if is_causal and attn_mask is not None:
        # PyTorch refuses the pair too: is_causal means the mask is implied.
        raise ClattnValueError(
            _lib.INVALID_ARGUMENT, "clattn: attn_mask must be None when is_causal=True (use causal= with a mask)"
        )
    return c


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False, *, causal=None, window=None,
                                 softcap=None, alibi_slopes=None, kv_lens=None, return_lse=False,
                                 path="auto", device=None):
    """softmax(query·keyᵀ·scale + mask)·value, as torch.nn.functional.scaled_dot_product_attention.

    query (N..., Hq, L, E), key (N..., Hkv, S, E), value (N..., Hkv, S, Ev): float32 or
    float16, all the same dtype; the result has query's dtype. attn_mask: bool (True =
    may attend) or float (added to the scores), broadcastable to (N..., Hq, L, S).
    dropout_p must be 0 (clattn is for inference). enable_gqa allows Hq a multiple of Hkv.

    Keywords beyond PyTorch: causal ('top_left' = is_causal, or 'bottom_right': the
    queries aligned to the end of the keys), window (left, right) with -1/None unbounded,
    softcap (s = softcap·tanh(s/softcap)), alibi_slopes [Hq], kv_lens [N] (keys beyond
    are masked), return_lse (also return the log-sum-exp, float32 (N..., Hq, L)), path
    ('auto', 'fused', 'decode', 'clblast', 'unfused'), device (index or name; default:
    CLATTN_DEVICE, else the first GPU, else the first device).
    """
    q, k, v, q4, k4, v4, code, opt, keep = _prepare(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal, window, softcap,
        alibi_slopes, kv_lens, path)
    o4, lse4 = _forward(_context(device), q4, k4, v4, code, opt, keep, q.dtype, return_lse)
    out = o4.reshape(q.shape[:-1] + (v.shape[-1],))
    if return_lse:
        return out, lse4.reshape(q.shape[:-1])
    return out


def _prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal, window,
             softcap, alibi_slopes, kv_lens, path):
    """The checks and conversions scaled_dot_product_attention and its backward share:
    (q, k, v, q4, k4, v4, dtype code, options, arrays to keep alive)."""
    if dropout_p != 0.0:
        raise ClattnValueError(
            _lib.INVALID_ARGUMENT, "clattn: dropout_p=%r: clattn computes inference attention; dropout_p must be 0" % (dropout_p,)
        )
    q = _float_input(query, "query")
    k = _float_input(key, "key")
    v = _float_input(value, "value")
    if not (q.dtype == k.dtype == v.dtype):
        raise ClattnTypeError(
            _lib.UNSUPPORTED_DTYPE,
            "clattn: query, key and value must share a dtype, got %s, %s, %s" % (q.dtype, k.dtype, v.dtype),
        )
    if not (q.ndim == k.ndim == v.ndim):
        raise ClattnValueError(
            _lib.INVALID_SHAPE,
            "clattn: query, key and value must have the same rank, got shapes %s, %s, %s" % (q.shape, k.shape, v.shape),
        )
    if q.ndim > 4 and not (q.shape[:-3] == k.shape[:-3] == v.shape[:-3]):
        raise ClattnValueError(
            _lib.INVALID_SHAPE, "clattn: batch dimensions differ: %s, %s, %s" % (q.shape, k.shape, v.shape)
        )
    if q.ndim >= 4 and not enable_gqa and q.shape[-3] != k.shape[-3]:
        raise ClattnValueError(
            _lib.INVALID_SHAPE,
            "clattn: query has %d heads and key %d: pass enable_gqa=True for grouped-query attention"
            % (q.shape[-3], k.shape[-3]),
        )
    c = _resolve_causal(is_causal, causal, attn_mask)
    opt = _options(scale, c, window, softcap, path)
    q4, k4, v4 = _as4d(q), _as4d(k), _as4d(v)
    code = _DTYPES[q.dtype]
    keep = []
    _extras(opt, keep, attn_mask, q, k.shape[-2], alibi_slopes, kv_lens, q4.shape[0])
    return q, k, v, q4, k4, v4, code, opt, keep


def _lse_output(opt, keep, rows):
    """A float32 LSE array [B, H, L, 1] for rows = (B, H, L), set as opt.lse; its
    descriptor goes to keep so it outlives the call."""
    lse4 = np.empty(tuple(rows) + (1,), dtype=np.float32)
    lt = _tensor(lse4, _lib.F32)
    keep.append(lt)
    opt.lse = ctypes.pointer(lt)
    return lse4


def _forward(ctx, q4, k4, v4, code, opt, keep, dtype, return_lse):
    """clattn_attention on 4-D arrays: (o4, lse4 or None)."""
    o4 = np.empty(q4.shape[:3] + (v4.shape[3],), dtype=dtype)
    lse4 = _lse_output(opt, keep, q4.shape[:3]) if return_lse else None
    tq, tk, tv, to = _tensor(q4, code), _tensor(k4, code), _tensor(v4, code), _tensor(o4, code)
    with ctx.lock:
        st = lib.clattn_attention(ctx.handle, tq, tk, tv, to, opt, None)
        ctx.check(st)
    opt.lse = None
    return o4, lse4


def scaled_dot_product_attention_backward(grad_out, query, key, value, attn_mask=None, dropout_p=0.0,
                                          is_causal=False, scale=None, enable_gqa=False, *, out=None,
                                          lse=None, causal=None, window=None, softcap=None,
                                          alibi_slopes=None, kv_lens=None, path="auto", device=None):
    """The gradients (dq, dk, dv) of scaled_dot_product_attention at (query, key, value).

    grad_out is dLoss/dout, shaped like the forward's result (N..., Hq, L, Ev) with
    query's dtype. Every other argument means what it means for
    scaled_dot_product_attention; dq, dk and dv have the shapes and dtype of query, key
    and value (with GQA, dk and dv are summed over each KV head's query heads). out and
    lse are the forward's result and its log-sum-exp (return_lse=True); when either is
    None the forward runs first to get both. path: 'auto' (the tiled kernels, falling
    back to the unfused ones if those fail), 'fused' or 'unfused'; the forward-only paths
    are refused. Deterministic: the same inputs give bit-identical gradients.
    """
    q, k, v, q4, k4, v4, code, opt, keep = _prepare(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal, window, softcap,
        alibi_slopes, kv_lens, path)
    out_shape = q.shape[:-1] + (v.shape[-1],)
    g = np.asarray(grad_out)
    if g.dtype != q.dtype:
        raise ClattnTypeError(
            _lib.UNSUPPORTED_DTYPE, "clattn: grad_out has dtype %s, query %s: they must match" % (g.dtype, q.dtype)
        )
    if g.shape != out_shape:
        raise ClattnValueError(
            _lib.INVALID_SHAPE, "clattn: grad_out has shape %s; the forward's result has %s" % (g.shape, out_shape)
        )
    ctx = _context(device)
    if out is None or lse is None:
        fwd_opt = _options(scale, _resolve_causal(is_causal, causal, attn_mask), window, softcap, "auto")
        fwd_opt.mask, fwd_opt.alibi, fwd_opt.kv_lens = opt.mask, opt.alibi, opt.kv_lens
        o4, lse4 = _forward(ctx, q4, k4, v4, code, fwd_opt, keep, q.dtype, True)
    else:
        o = np.asarray(out)
        if o.dtype != q.dtype or o.shape != out_shape:
            raise ClattnValueError(
                _lib.INVALID_SHAPE,
                "clattn: out has shape %s and dtype %s; expected %s and %s" % (o.shape, o.dtype, out_shape, q.dtype),
            )
        l = np.asarray(lse)
        if l.dtype != np.float32 or l.shape != q.shape[:-1]:
            raise ClattnValueError(
                _lib.INVALID_SHAPE,
                "clattn: lse has shape %s and dtype %s; expected %s and float32" % (l.shape, l.dtype, q.shape[:-1]),
            )
        o4 = _as4d(o)
        lse4 = _as4d(l.reshape(l.shape + (1,)))
    g4 = _as4d(g)
    dq4 = np.empty(q4.shape, dtype=q.dtype)
    dk4 = np.empty(k4.shape, dtype=q.dtype)
    dv4 = np.empty(v4.shape, dtype=q.dtype)
    tensors = [_tensor(a, code) for a in (q4, k4, v4, o4, g4)] + [_tensor(lse4, _lib.F32)]
    grads = [_tensor(a, code) for a in (dq4, dk4, dv4)]
    keep += [o4, lse4, g4]
    with ctx.lock:
        st = lib.clattn_attention_backward(ctx.handle, *tensors, *grads, None, opt, None)
        ctx.check(st)
    return dq4.reshape(q.shape), dk4.reshape(k.shape), dv4.reshape(v.shape)


def _kv_formats(k_format, v_format):
    """The clattn_kv_format codes of a (keys, values) pair; v_format None means k_format."""
    v_format = k_format if v_format is None else v_format
    for name, f in (("k_format", k_format), ("v_format", v_format)):
        if f not in _lib.KV_FORMATS:
            raise ClattnValueError(
                _lib.INVALID_ARGUMENT, "clattn: %s=%r: expected one of %s" % (name, f, ", ".join(_lib.KV_FORMATS))
            )
    return _lib.KV_FORMATS[k_format], _lib.KV_FORMATS[v_format]


class _KVStore:
    """Keys and values on a context's device (the KV cache, the paged KV pool): it keeps
    the context alive (self._ctx, which the store must not outlive), refuses calls once
    closed, and frees itself on close(), at the end of a with block, or when collected."""

    _what = "store"  # for the message of a call on a closed store
    _free = None     # the name of the C call that frees the handle

    def _create(self, device, create, sizes, head_dim, v_head_dim, k_format, v_format):
        """self._handle from create(ctx, *sizes, D, Dv, k_format, v_format, &handle), under
        the context's lock; v_head_dim None means head_dim, v_format None k_format."""
        kf, vf = _kv_formats(k_format, v_format)
        self.head_dim = int(head_dim)
        self.v_head_dim = self.head_dim if v_head_dim is None else int(v_head_dim)
        self._ctx = _context(device)
        self._handle = ctypes.c_void_p()
        with self._ctx.lock:
            st = getattr(lib, create)(self._ctx.handle, *sizes, self.head_dim, self.v_head_dim, kf, vf,
                                      ctypes.byref(self._handle))
            self._ctx.check(st)

    def _live(self):
        if not self._handle:
            raise ClattnValueError(_lib.INVALID_ARGUMENT, "clattn: the %s is closed" % self._what)
        return self._handle

    def close(self):
        if getattr(self, "_handle", None):
            with self._ctx.lock:
                getattr(lib, self._free)(self._handle)
            self._handle = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if lib is not None:
            self.close()


class KVCache(_KVStore):
    """A key/value cache on the device for token-by-token generation.

    KVCache(batch, kv_heads, capacity, head_dim, v_head_dim=None, k_format='f16',
    v_format=None, device=None). Formats: 'f32', 'f16', 'int8', 'int4', 'tq4', 'tq3',
    'tq2' (clattn.h describes each). append() adds keys and values [batch, kv_heads, n, D];
    attention() attends new queries [batch, Hq, Lq, D] over everything appended, by
    default causal bottom-right (each query sees the keys up to its own position).
    """

    _what = "KV cache"
    _free = "clattn_kv_cache_free"

    def __init__(self, batch, kv_heads, capacity, head_dim, v_head_dim=None, k_format="f16",
                 v_format=None, device=None):
        self.batch, self.kv_heads, self.capacity = int(batch), int(kv_heads), int(capacity)
        self._create(device, "clattn_kv_cache_create", (self.batch, self.kv_heads, self.capacity), head_dim,
                     v_head_dim, k_format, v_format)

    def append(self, key, value, n_per_batch=None):
        """Append key [B, Hkv, n, D] and value [B, Hkv, n, Dv]; batch entry b takes its
        first n_per_batch[b] rows (all n when None)."""
        k = _float_input(key, "key")
        v = _float_input(value, "value")
        if k.ndim != 4 or v.ndim != 4:
            raise ClattnValueError(_lib.INVALID_SHAPE, "clattn: key and value must be 4-D [B, Hkv, n, D]")
        k4, v4 = _as4d(k), _as4d(v)
        tk, tv = _tensor(k4, _DTYPES[k.dtype]), _tensor(v4, _DTYPES[v.dtype])
        counts = None
        if n_per_batch is not None:
            counts = np.ascontiguousarray(np.asarray(n_per_batch).astype(np.int32).reshape(-1))
            if counts.shape[0] != self.batch:
                raise ClattnValueError(
                    _lib.INVALID_SHAPE, "clattn: n_per_batch has %d entries, the batch is %d" % (counts.shape[0], self.batch)
                )
        with self._ctx.lock:
            st = lib.clattn_kv_cache_append(self._live(), tk, tv, None if counts is None else counts.ctypes.data)
            self._ctx.check(st)

    def attention(self, query, attn_mask=None, causal="bottom_right", scale=None, window=None, softcap=None,
                  alibi_slopes=None, return_lse=False):
        """Attention of query [B, Hq, Lq, D] over the cache: [B, Hq, Lq, Dv] in query's dtype."""
        q = _float_input(query, "query")
        if q.ndim != 4:
            raise ClattnValueError(_lib.INVALID_SHAPE, "clattn: query must be 4-D [B, Hq, Lq, D]")
        opt = _options(scale, causal or "none", window, softcap, "auto")
        lengths = self.lengths
        keep = []
        _extras(opt, keep, attn_mask, q, int(lengths.max()) if lengths.size else 0, alibi_slopes, None, q.shape[0])
        q4 = _as4d(q)
        o4 = np.empty(q4.shape[:3] + (self.v_head_dim,), dtype=q.dtype)
        lse4 = _lse_output(opt, keep, q4.shape[:3]) if return_lse else None
        tq, to = _tensor(q4, _DTYPES[q.dtype]), _tensor(o4, _DTYPES[q.dtype])
        with self._ctx.lock:
            st = lib.clattn_kv_cache_attention(self._ctx.handle, self._live(), tq, to, opt, None)
            self._ctx.check(st)
        return (o4, lse4.reshape(q4.shape[:3])) if return_lse else o4

    def reset(self):
        """Forget every position (the memory stays allocated)."""
        with self._ctx.lock:
            self._ctx.check(lib.clattn_kv_cache_reset(self._live()))

    @property
    def lengths(self):
        out = np.zeros(self.batch, dtype=np.int32)
        with self._ctx.lock:
            st = lib.clattn_kv_cache_lengths(self._live(), out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))
            self._ctx.check(st)
        return out

    @property
    def nbytes(self):
        return int(lib.clattn_kv_cache_bytes(self._live()))

    @property
    def bits_per_element(self):
        return float(lib.clattn_kv_cache_bits_per_element(self._live()))


def devices():
    """Every OpenCL device clattn sees, as dicts (index, platform, name, vendor, driver,
    type, compute_units, global_mem_bytes, has_fp16, ...)."""
    count = ctypes.c_size_t()
    st = lib.clattn_device_count(ctypes.byref(count))
    if st != _lib.SUCCESS:
        _raise(st, "listing devices failed")
    out = []
    for i in range(count.value):
        p = _lib.DeviceProps()
        st = lib.clattn_device_get_props(i, ctypes.byref(p))
        if st != _lib.SUCCESS:
            _raise(st, "device %d" % i)
        out.append({
            "index": p.index,
            "platform": p.platform_name.decode(errors="replace"),
            "platform_version": p.platform_version.decode(errors="replace"),
            "name": p.name.decode(errors="replace"),
            "vendor": p.vendor.decode(errors="replace"),
            "driver": p.driver_version.decode(errors="replace"),
            "opencl_c_version": p.opencl_c_version.decode(errors="replace"),
            "type": _lib.DEVICE_TYPES.get(p.type, "other"),
            "compute_units": p.compute_units,
            "max_clock_mhz": p.max_clock_mhz,
            "global_mem_bytes": p.global_mem_bytes,
            "max_alloc_bytes": p.max_alloc_bytes,
            "local_mem_bytes": p.local_mem_bytes,
            "max_work_group_size": p.max_work_group_size,
            "has_fp16": bool(p.has_fp16),
            "has_subgroups": bool(p.has_subgroups),
        })
    return out


# The paged KV pool and the merge of states live in their own module, which uses the
# helpers above (hence imported last).
from .kv_pool import KVPool, PageTable, merge_states  # noqa: E402
