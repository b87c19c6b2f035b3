"""clattn's paged KV pool (include/clattn_kv.h, "Paged KV cache") and clattn_merge_states.

The pool only stores bytes: the caller owns the pages and keeps each sequence's page
table on the host in FlashInfer's CSR form, here a PageTable of numpy int32 arrays
(indptr [n + 1], indices, last_page_len [n]). Every call hands the table to the C
library, which validates it (page numbers, indptr order, last lengths, page size) and
refuses a bad one with a message before writing anything; this module only checks what
the C call cannot (array lengths: C reads the arrays by the counts the table gives).
Queries, keys and outputs are head-major as the C calls take them ([1, H, N, D], the
leading 1 optional); a token-major [N, H, D] array is passed as x.transpose(1, 0, 2),
which is read in place.
"""
import collections
import ctypes

import numpy as np

from . import _lib
from ._lib import lib
from . import (_DTYPES, ClattnTypeError, ClattnValueError, _KVStore, _as4d, _context, _extras, _float_input,
               _lse_output, _mask4d, _options, _tensor)

PageTable = collections.namedtuple("PageTable", "indptr indices last_page_len page_size", defaults=(None,))
PageTable.__doc__ = """A page table in FlashInfer's CSR form: sequence s owns pages
indices[indptr[s] .. indptr[s+1]) in token order, and its last page holds last_page_len[s]
tokens (1..page_size; 0 for a sequence without pages). page_size None means the pool's;
any other value must equal it (the C call checks). A plain (indptr, indices, last_page_len)
tuple is accepted wherever a PageTable is."""

_INT32 = np.iinfo(np.int32)


def _int32(x, name):
    """x as a dense 1-D int32 array; integers outside int32 are refused, not wrapped."""
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(0, dtype=np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        raise ClattnTypeError(_lib.UNSUPPORTED_DTYPE, "clattn: %s: dtype %s is not an integer type" % (name, a.dtype))
    if a.min() < _INT32.min or a.max() > _INT32.max:
        raise ClattnValueError(_lib.INVALID_ARGUMENT, "clattn: %s holds values outside int32" % name)
    return np.ascontiguousarray(a.astype(np.int32).reshape(-1))


def _length(a, n, name, what):
    if a.shape[0] != n:
        raise ClattnValueError(_lib.INVALID_SHAPE, "clattn: %s has %d entries; %s" % (name, a.shape[0], what))


def _packed(x, name):
    """A head-major [H, N, E] or [1, H, N, E] float array: (the array, its 4-D view)."""
    a = _float_input(x, name)
    if a.ndim not in (3, 4):
        raise ClattnValueError(
            _lib.INVALID_SHAPE, "clattn: %s must be [H, N, E] or [1, H, N, E], got shape %s" % (name, a.shape))
    return a, _as4d(a if a.ndim == 4 else a[None])


def _seq_mask(mask, opt, keep):
    """attn_mask of a pool's attention into opt: bool or float, 4-D [n_seqs, Hq, Lq_max,
    Lk_max] with extents of 1 broadcast; the C call checks the extents against the table
    and the queries."""
    shape = np.shape(mask)
    if len(shape) != 4:
        raise ClattnValueError(
            _lib.INVALID_SHAPE, "clattn: attn_mask must be 4-D [n_seqs, Hq, Lq_max, Lk_max] (extents of 1 "
            "broadcast), got shape %s" % (shape,))
    m, code = _mask4d(mask, shape[:3] + (1,), shape[3])  # dtype and layout as every clattn mask
    mt = _tensor(m, code)
    keep += [m, mt]
    opt.mask = ctypes.pointer(mt)


class KVPool(_KVStore):
    """A pool of num_pages pages of page_size tokens (a power of two, 1..256) of keys
    [kv_heads, head_dim] and values [kv_heads, v_head_dim] on the device, in any KV
    format but int4 keys (keys: 'f32', 'f16', 'int8', 'tq4', 'tq3', 'tq2'; values: those
    or 'int4'; clattn_kv.h describes each).
    The pages start zeroed. Methods take page tables (PageTable) and mirror the C calls
    clattn_kv_pool_*, argument for argument; a call that writes (append, copy_pages,
    seq_copy_prefix, seq_remove) refuses a page that two sequences of the table hold.
    """

    _what = "KV pool"
    _free = "clattn_kv_pool_free"

    def __init__(self, num_pages, page_size, kv_heads, head_dim, v_head_dim=None, k_format="f16",
                 v_format=None, device=None):
        self.num_pages, self.page_size, self.kv_heads = int(num_pages), int(page_size), int(kv_heads)
        self._create(device, "clattn_kv_pool_create", (self.num_pages, self.page_size, self.kv_heads), head_dim,
                     v_head_dim, k_format, v_format)

    def _table(self, table, keep, name="table"):
        """table as a clattn_page_table; its arrays go to keep so they outlive the call."""
        try:
            t = PageTable(*table)
        except TypeError:
            raise ClattnValueError(
                _lib.INVALID_ARGUMENT, "clattn: %s: expected (indptr, indices, last_page_len[, page_size])" % name
            ) from None
        indptr = _int32(t.indptr, name + ".indptr")
        indices = _int32(t.indices, name + ".indices")
        last = _int32(t.last_page_len, name + ".last_page_len")
        if indptr.shape[0] < 1:
            raise ClattnValueError(_lib.INVALID_SHAPE, "clattn: %s.indptr is empty (it has n_seqs + 1 entries)" % name)
        n = indptr.shape[0] - 1
        _length(last, n, name + ".last_page_len", "the table has %d sequences" % n)
        if indptr[-1] > indices.shape[0]:
            raise ClattnValueError(
                _lib.INVALID_SHAPE, "clattn: %s.indptr[-1] = %d but indices has %d entries"
                % (name, indptr[-1], indices.shape[0]))
        keep += [indptr, indices, last]
        return _lib.PageTable(n, indptr.ctypes.data, indices.ctypes.data, last.ctypes.data,
                              self.page_size if t.page_size is None else int(t.page_size))

    def slot_mapping(self, table, seq_ids, positions):
        """The slots (page * page_size + offset, int32) of tokens at positions[i] of
        sequences seq_ids[i] under table: what append() takes. Every position must lie
        within the sequence's pages (len(its pages) * page_size)."""
        t = PageTable(*table)
        indptr, indices = _int32(t.indptr, "table.indptr"), _int32(t.indices, "table.indices")
        seqs, pos = np.broadcast_arrays(_int32(seq_ids, "seq_ids"), _int32(positions, "positions"))
        n = indptr.shape[0] - 1
        if ((seqs < 0) | (seqs >= n)).any():
            raise ClattnValueError(_lib.INVALID_ARGUMENT, "clattn: slot_mapping: a sequence is not in the table")
        page = pos // self.page_size
        if ((pos < 0) | (page >= indptr[seqs + 1] - indptr[seqs])).any():
            raise ClattnValueError(
                _lib.INVALID_ARGUMENT, "clattn: slot_mapping: a position lies outside its sequence's pages")
        return (indices[indptr[seqs] + page] * self.page_size + pos % self.page_size).astype(np.int32)

    def append(self, table, key, value, slot_mapping):
        """Store N tokens: key [Hkv, N, D] and value [Hkv, N, Dv] (or [1, Hkv, N, ...]),
        float32 or float16; token t goes to slot slot_mapping[t] (distinct slots, within
        the pool), quantized on the device. table is only read (for shared pages); the
        caller then raises last_page_len or adds pages. On any error nothing is written."""
        keep = []
        tt = self._table(table, keep)
        _, k4 = _packed(key, "key")
        _, v4 = _packed(value, "value")
        slots = _int32(slot_mapping, "slot_mapping")
        _length(slots, k4.shape[2], "slot_mapping", "key has %d tokens" % k4.shape[2])
        tk = _tensor(k4, _DTYPES[k4.dtype])
        tv = _tensor(v4, _DTYPES[v4.dtype])
        with self._ctx.lock:
            self._ctx.check(lib.clattn_kv_pool_append(self._live(), tt, tk, tv, slots.ctypes.data, None))

    def attention(self, table, qo_indptr, query, *, causal="bottom_right", scale=None, window=None, softcap=None,
                  alibi_slopes=None, attn_mask=None, return_lse=False):
        """Attention of a ragged batch over its pages: query [Hq, Nq, D] (or [1, Hq, Nq, D];
        Hq a multiple of kv_heads), sequence s's rows qo_indptr[s] .. qo_indptr[s+1]-1.
        Each sequence is aligned bottom-right to its own length (query i at position
        i + len - Lq_s). Returns O [Hq, Nq, Dv] in query's dtype and rank, and with
        return_lse its float32 log-sum-exp [Hq, Nq]. A sequence without pages gives O = 0
        and LSE = -inf. causal: 'bottom_right', 'top_left' or None; window (left, right),
        softcap and alibi_slopes [Hq] as in scaled_dot_product_attention. attn_mask (bool,
        True = may attend, or float, added to the scores) is per sequence: 4-D [n_seqs,
        Hq, Lq_max, Lk_max] (Lq_max the largest query count of a sequence, Lk_max the
        longest sequence), extents of 1 broadcast; element [s, h, i, j] applies to sequence
        s's query row i (row qo_indptr[s] + i) and its key position j."""
        keep = []
        tt = self._table(table, keep)
        qo = self._qo(qo_indptr, "qo_indptr", tt.n_seqs)
        q, q4 = _packed(query, "query")
        opt = _options(scale, causal or "none", window, softcap, "auto")
        _extras(opt, keep, None, q, 0, alibi_slopes, None, 1)
        if attn_mask is not None:
            _seq_mask(attn_mask, opt, keep)
        return self._attend(q, q4, opt, keep, return_lse, lambda tq, to: lib.clattn_kv_pool_attention(
            self._ctx.handle, self._live(), tt, qo.ctypes.data, tq, to, opt, None))

    def cascade_attention(self, prefix, group_qo_indptr, suffix, qo_indptr, query, *, causal="bottom_right",
                          scale=None, softcap=None, return_lse=False):
        """Shared-prefix attention: group g's prefix is sequence g of the prefix table and
        its rows group_qo_indptr[g] .. group_qo_indptr[g+1]-1 of query all see the whole
        prefix; sequence s's own pages are sequence s of the suffix table and its rows
        qo_indptr[s] .. qo_indptr[s+1]-1 lie within one group. Equals attention() over
        each sequence's prefix pages followed by its own, to float32 rounding; causal
        applies within the suffix. Returns as attention() does (ALiBi and windows are not
        available here: they need each query's absolute position)."""
        keep = []
        tp = self._table(prefix, keep, "prefix")
        ts = self._table(suffix, keep, "suffix")
        gqo = self._qo(group_qo_indptr, "group_qo_indptr", tp.n_seqs)
        qo = self._qo(qo_indptr, "qo_indptr", ts.n_seqs)
        q, q4 = _packed(query, "query")
        opt = _options(scale, causal or "none", None, softcap, "auto")
        return self._attend(q, q4, opt, keep, return_lse, lambda tq, to: lib.clattn_kv_pool_cascade_attention(
            self._ctx.handle, self._live(), tp, gqo.ctypes.data, ts, qo.ctypes.data, tq, to, opt, None))

    @staticmethod
    def _qo(x, name, n_seqs):
        qo = _int32(x, name)
        _length(qo, n_seqs + 1, name, "the table has %d sequences (n_seqs + 1 are needed)" % n_seqs)
        return qo

    def _attend(self, q, q4, opt, keep, return_lse, call):
        """O (and LSE) of call(tq, to), which runs one of the pool's attention calls."""
        o4 = np.empty(q4.shape[:3] + (self.v_head_dim,), dtype=q.dtype)
        lse4 = _lse_output(opt, keep, q4.shape[:3]) if return_lse else None
        tq, to = _tensor(q4, _DTYPES[q4.dtype]), _tensor(o4, _DTYPES[o4.dtype])
        with self._ctx.lock:
            self._ctx.check(call(tq, to))
        lead = 0 if q.ndim == 3 else slice(None)  # O and LSE in query's rank
        return (o4[lead], lse4[lead][..., 0]) if return_lse else o4[lead]

    def copy_pages(self, src, dst):
        """Copy whole pages on the device, src[i] to dst[i] (every KV head, keys and
        values), for copy-on-write of a shared page. Pages must be within the pool, and
        no dst may repeat or be a src. On any error nothing is written."""
        s, d = _int32(src, "src"), _int32(dst, "dst")
        _length(d, s.shape[0], "dst", "src has %d" % s.shape[0])
        with self._ctx.lock:
            self._ctx.check(lib.clattn_kv_pool_copy_pages(self._live(), s.shape[0], s.ctypes.data, d.ctypes.data,
                                                          None))

    def seq_copy_prefix(self, table, src_seq, dst_seq, n_tokens):
        """Copy the first n_tokens tokens of sequence src_seq into the first pages of
        dst_seq, which must already hold ceil(n_tokens / page_size) pages that no other
        sequence holds (pages both already share are left alone). The caller then sets
        dst_seq's last_page_len."""
        keep = []
        tt = self._table(table, keep)
        with self._ctx.lock:
            self._ctx.check(lib.clattn_kv_pool_seq_copy_prefix(self._live(), tt, int(src_seq), int(dst_seq),
                                                               int(n_tokens), None))

    def seq_remove(self, table, seq, p0, p1=None):
        """Remove tokens p0 .. p1-1 of sequence seq (p1 None or past the length: to the
        end); the tokens after them move down. Returns the sequence's new length; the
        caller then updates last_page_len and drops the pages past it."""
        keep = []
        tt = self._table(table, keep)
        new_len = ctypes.c_int64()
        end = np.iinfo(np.int64).max if p1 is None else int(p1)
        with self._ctx.lock:
            self._ctx.check(lib.clattn_kv_pool_seq_remove(self._live(), tt, int(seq), int(p0), end,
                                                          ctypes.byref(new_len), None))
        return new_len.value

    @property
    def nbytes(self):
        """Device memory of the pool's pages and tables, in bytes."""
        return int(lib.clattn_kv_pool_bytes(self._live()))


def merge_states(o_parts, lse_parts, *, device=None):
    """Merge attention states over disjoint key sets into the attention over all of them:
    LSE = log sum_i exp(LSE_i), O = sum_i exp(LSE_i - LSE) * O_i (clattn_merge_states).
    o_parts[i] (..., L, Dv) float32 or float16 and lse_parts[i] (..., L), as
    scaled_dot_product_attention(..., return_lse=True) returns them; every part has the
    same shape. Returns (o, lse): o in the parts' common dtype, lse float32. A part whose
    LSE is -inf contributes nothing; a row with every part -inf gives O = 0, LSE = -inf."""
    os_, ls = list(o_parts), list(lse_parts)
    if len(os_) != len(ls):
        raise ClattnValueError(
            _lib.INVALID_ARGUMENT, "clattn: merge: %d o_parts but %d lse_parts" % (len(os_), len(ls)))
    if not os_:
        raise ClattnValueError(_lib.INVALID_ARGUMENT, "clattn: merge: no parts: nothing to merge")
    os_ = [_float_input(o, "o_parts[%d]" % i) for i, o in enumerate(os_)]
    for i, l in enumerate(ls):
        l = np.asarray(l)
        if not np.issubdtype(l.dtype, np.floating):
            raise ClattnTypeError(
                _lib.UNSUPPORTED_DTYPE, "clattn: lse_parts[%d]: dtype %s is not a float type" % (i, l.dtype))
        if l.ndim < 1:
            raise ClattnValueError(_lib.INVALID_SHAPE, "clattn: lse_parts[%d] is a scalar, not (..., L)" % i)
        ls[i] = l.astype(np.float32, copy=False)
    o = np.empty(os_[0].shape, dtype=np.result_type(*[x.dtype for x in os_]))
    lse = np.empty(os_[0].shape[:-1], dtype=np.float32)
    o4s = [_as4d(x) for x in os_]
    l4s = [_as4d(l.reshape(l.shape + (1,))) for l in ls]
    o4, l4 = _as4d(o), _as4d(lse.reshape(lse.shape + (1,)))
    n = len(o4s)
    to_parts = (_lib.Tensor * n)(*[_tensor(x, _DTYPES[x.dtype]) for x in o4s])
    tl_parts = (_lib.Tensor * n)(*[_tensor(x, _lib.F32) for x in l4s])
    to, tl = _tensor(o4, _DTYPES[o4.dtype]), _tensor(l4, _lib.F32)
    ctx = _context(device)
    with ctx.lock:
        ctx.check(lib.clattn_merge_states(ctx.handle, n, to_parts, tl_parts, to, tl, None))
    return o, lse
