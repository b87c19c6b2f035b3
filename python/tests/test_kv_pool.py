"""clattn.KVPool and clattn.merge_states against the float64 numpy reference: random ragged
batches (a different length per sequence, one without pages, decode and chunk rows) over
pages of 1, 4 and 16 tokens placed in a shuffled order and filled by several appends;
cascade attention against per-sequence attention; page copies, prefix copies and range
removal; merges of states over split key sets; and bad page tables, slot mappings and
page lists refused with the C library's message, nothing written. Every case uses one
head size, so the kernels of a format build once and the suite stays fast on PoCL."""

import numpy as np
import pytest

import clattn
from reference import attention as reference
from reference import close

D = 32
HQ, HKV = 4, 2
RNG = np.random.default_rng(5)

# int8 stores each block of 32 values as codes of step max|x|/127, so each key and value
# moves by up to max|x|/254 (about 1% of the largest of N(0, 1) data); attention outputs
# and LSEs then differ from the float64 reference on the unquantized keys and values by
# up to 1.5e-2 on these sizes (measured over many batches). int8 pages are held to
# |got - want| <= 4e-2 + 4e-2 * |want| against that reference, more than twice the
# largest difference seen; f32 and f16 pages to SPEC's float32 and float16 tolerances.
INT8_TOL = (4e-2, 4e-2)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


class Pages:
    """The caller's side of a pool: pages handed out from a shuffled free list, each
    sequence's page list and length, and the float64 keys and values it appended (rounded
    as the pool stores them for f16: `store`)."""

    def __init__(self, pool, nseq, store=np.float64):
        self.pool, self.ps, self.store = pool, pool.page_size, store
        self.free = list(RNG.permutation(pool.num_pages))
        self.pages = [[] for _ in range(nseq)]
        self.k = [np.zeros((HKV, 0, D)) for _ in range(nseq)]
        self.v = [np.zeros((HKV, 0, D)) for _ in range(nseq)]

    def length(self, s):
        return self.k[s].shape[1]

    def table(self, seqs=None):
        seqs = range(len(self.pages)) if seqs is None else seqs
        return table_of([self.pages[s] for s in seqs], [self.length(s) for s in seqs], self.ps)

    def append(self, counts):
        """Append counts[s] new tokens to each sequence s in one call of the pool."""
        for s, n in enumerate(counts):
            while len(self.pages[s]) * self.ps < self.length(s) + n:
                self.pages[s].append(self.free.pop())
        seq_ids = np.repeat(np.arange(len(counts)), counts)
        positions = np.concatenate([self.length(s) + np.arange(n) for s, n in enumerate(counts)])
        k, v = rand(HKV, len(seq_ids), D), rand(HKV, len(seq_ids), D)
        for s, n in enumerate(counts):
            self.k[s] = np.concatenate([self.k[s], k[:, seq_ids == s].astype(self.store).astype(np.float64)], axis=1)
            self.v[s] = np.concatenate([self.v[s], v[:, seq_ids == s].astype(self.store).astype(np.float64)], axis=1)
        table = self.table()  # already showing the new lengths (the pool only reads it)
        self.pool.append(table, k, v, self.pool.slot_mapping(table, seq_ids, positions))


def table_of(page_lists, lengths, ps):
    """A clattn.PageTable of sequences holding page_lists[s] with lengths[s] tokens."""
    indptr = np.concatenate([[0], np.cumsum([len(p) for p in page_lists])]).astype(np.int32)
    indices = np.array([p for pages in page_lists for p in pages], dtype=np.int32)
    last = np.array([n - (len(p) - 1) * ps if p else 0 for p, n in zip(page_lists, lengths)], dtype=np.int32)
    return clattn.PageTable(indptr, indices, last)


def expect_rows(q, qo, ks, vs, tol, o, lse, **kw):
    """Each sequence's rows of O [Hq, Nq, Dv] and LSE [Hq, Nq] against the reference over
    ks[s], vs[s] [Hkv, len, D]; a sequence without keys has O = 0 and LSE = -inf."""
    for s in range(len(qo) - 1):
        rows = slice(qo[s], qo[s + 1])
        k, v = ks[s], vs[s]
        if k.shape[1] == 0:
            assert (o[:, rows] == 0).all() and (lse[:, rows] == -np.inf).all()
            continue
        want, want_lse = reference(q[None, :, rows], k[None], v[None], **kw)
        close(o[:, rows], want[0], tol=tol)
        close(lse[:, rows], want_lse[0], tol=tol)


@pytest.mark.parametrize("fmt, ps, qdtype", [("f32", 1, np.float32), ("f16", 16, np.float16), ("int8", 4, np.float32)])
def test_ragged_batch_matches_reference(fmt, ps, qdtype):
    store = np.float16 if fmt == "f16" else np.float64
    tol = INT8_TOL if fmt == "int8" else (3e-3, 3e-3) if fmt == "f16" or qdtype == np.float16 else (2e-4, 2e-3)
    with clattn.KVPool(256, ps, HKV, D, k_format=fmt) as pool:
        book = Pages(pool, 5, store)
        lengths = [int(n) for n in RNG.integers(1, 50, size=5)]
        lengths[1] = 0  # a sequence without pages
        first = [n // 3 for n in lengths]
        book.append(first)
        book.append([n - f for n, f in zip(lengths, first)])
        lq = [min(int(RNG.integers(1, 4)), max(n, 1)) for n in lengths]  # decode rows and chunks
        qo = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
        q = rand(HQ, qo[-1], D, dtype=qdtype)
        o, lse = pool.attention(book.table(), qo, q, return_lse=True)
        assert o.dtype == qdtype and o.shape == (HQ, qo[-1], D) and lse.shape == (HQ, qo[-1])
        expect_rows(q, qo, book.k, book.v, tol, o, lse, causal="bottom_right")
        # the options the pool takes, on the same pages: a window, softcap and ALiBi; and
        # the 4-D [1, Hq, Nq, D] form of the query
        slopes = np.array([0.5, 0.25, 0.125, 0.0625], dtype=np.float32)
        o, lse = pool.attention(book.table(), qo, q[None], window=(7, 0), softcap=5.0, alibi_slopes=slopes,
                                scale=0.2, return_lse=True)
        expect_rows(q, qo, book.k, book.v, tol, o[0], lse[0], causal="bottom_right", window=(7, 0),
                    softcap=5.0, alibi=slopes, scale=0.2)


@pytest.mark.parametrize("kind, shape", [("bool", "full"), ("float", "broadcast")])
def test_masked_ragged_batch_matches_reference(kind, shape):
    """attn_mask per sequence: [n_seqs, Hq, Lq_max, Lk_max], element [s, h, i, j] for
    sequence s's row i and key j; extents of 1 broadcast."""
    with clattn.KVPool(128, 4, HKV, D, k_format="f32") as pool:
        book = Pages(pool, 4)
        lengths = [30, 0, 7, 19]
        book.append(lengths)
        lq = [3, 1, 2, 1]  # chunked prefill and decode rows
        qo = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
        q = rand(HQ, qo[-1], D)
        full = (4, HQ, max(lq), max(lengths))
        dims = full if shape == "full" else (1, HQ, 1, full[3])
        mask = RNG.random(dims) < 0.7 if kind == "bool" else rand(*dims) * 2
        o, lse = pool.attention(book.table(), qo, q, attn_mask=mask, softcap=20.0, return_lse=True)
        for s in range(4):
            rows = slice(qo[s], qo[s + 1])
            ms = mask[min(s, mask.shape[0] - 1)][None]  # sequence s's part, [1, Hq|1, Lq|1, Lk|1]
            ms = ms[:, :, :lq[s] if ms.shape[2] > 1 else 1, :lengths[s] if ms.shape[3] > 1 else 1]
            expect_rows(q[:, rows], [0, lq[s]], [book.k[s]], [book.v[s]], (2e-4, 2e-3), o[:, rows], lse[:, rows],
                        causal="bottom_right", softcap=20.0, mask=ms)
        # extents other than 1 or the per-sequence ones are refused with the C message
        with pytest.raises(ValueError, match=r"must be 1 or Lk_max = 30"):
            pool.attention(book.table(), qo, q, attn_mask=np.ones((4, HQ, 3, 31), dtype=bool))
        with pytest.raises(ValueError, match=r"4-D"):
            pool.attention(book.table(), qo, q, attn_mask=np.ones((3, 30), dtype=bool))
        with pytest.raises(TypeError, match=r"not bool or a float type"):
            pool.attention(book.table(), qo, q, attn_mask=np.ones((1, 1, 1, 30), dtype=np.int32))


def test_cascade_equals_attention_over_prefix_and_own_pages():
    ps = 16
    with clattn.KVPool(64, ps, HKV, D, k_format="f16") as pool:
        # sequences 0 and 1 are the prefixes of two groups (whole pages, so a table can list
        # a prefix's pages followed by a sequence's own); 2..5 are the sequences' own pages
        book = Pages(pool, 6, np.float16)
        book.append([32, 16, 5, 20, 1, 9])
        groups = [0, 0, 1, 1]  # the group of sequences 2..5
        lq = [1, 3, 2, 1]
        qo = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
        gqo = np.array([0, qo[2], qo[4]], dtype=np.int32)
        q = rand(HQ, qo[-1], D)
        o, lse = pool.cascade_attention(book.table([0, 1]), gqo, book.table([2, 3, 4, 5]), qo, q, return_lse=True)
        # the same sequences as one table each: prefix pages first, then their own
        whole = table_of([book.pages[g] + book.pages[2 + i] for i, g in enumerate(groups)],
                         [book.length(g) + book.length(2 + i) for i, g in enumerate(groups)], ps)
        o_ref, lse_ref = pool.attention(whole, qo, q, return_lse=True)
        close(o, o_ref.astype(np.float64), tol=(2e-4, 2e-3))
        close(lse, lse_ref.astype(np.float64), tol=(2e-4, 2e-3))
        joined = [[np.concatenate([x[g], x[2 + i]], axis=1) for i, g in enumerate(groups)] for x in (book.k, book.v)]
        expect_rows(q, qo, *joined, (3e-3, 3e-3), o, lse, causal="bottom_right")
        # a sequence's rows across a group boundary are refused
        with pytest.raises(ValueError, match="cross a group boundary"):
            pool.cascade_attention(book.table([0, 1]), np.array([0, 2, qo[-1]]), book.table([2, 3, 4, 5]), qo, q)


def test_page_copies_prefix_copies_and_removal():
    ps = 4
    with clattn.KVPool(32, ps, HKV, D, k_format="int8") as pool:
        book = Pages(pool, 1)
        book.append([14])  # 4 pages, the last holding 2 tokens
        q = rand(HQ, 1, D)
        qo = [0, 1]
        base = pool.attention(book.table(), qo, q)
        src = book.pages[0]
        dst = [book.free.pop() for _ in src]
        # copy_pages: the copies hold the same bytes, so attention over them is identical
        pool.copy_pages(src, dst)
        assert (pool.attention(table_of([dst], [14], ps), qo, q) == base).all()
        # seq_copy_prefix: 6 tokens of sequence 0 into sequence 1's own two pages
        own = [book.free.pop(), book.free.pop()]
        two = table_of([src, own], [14, 8], ps)
        pool.seq_copy_prefix(two, 0, 1, 6)
        six = pool.attention(table_of([own], [6], ps), qo, q)
        assert (six == pool.attention(table_of([src[:2]], [6], ps), qo, q)).all()
        # seq_remove: tokens 3..8 of the copy go, the rest moves down
        assert pool.seq_remove(table_of([dst], [14], ps), 0, 3, 9) == 8
        got = pool.attention(table_of([dst[:2]], [8], ps), qo, q)
        keep = np.r_[0:3, 9:14]
        k, v = book.k[0][:, keep], book.v[0][:, keep]
        close(got, reference(q[None], k[None], v[None])[0][0], tol=INT8_TOL)
        # p1 None removes to the end
        assert pool.seq_remove(table_of([dst[:2]], [8], ps), 0, 5) == 5
        # the removed range moved data within dst only: src still gives the first result
        assert (pool.attention(book.table(), qo, q) == base).all()


def test_shared_pages_are_read_only():
    with clattn.KVPool(8, 4, HKV, D, k_format="f32") as pool:
        shared = table_of([[1, 2], [1, 3]], [6, 7], 4)  # page 1 is held by both
        pool.append(table_of([[1]], [4], 4), rand(HKV, 4, D), rand(HKV, 4, D), [4, 5, 6, 7])
        q = rand(HQ, 2, D)
        before = pool.attention(shared, [0, 1, 2], q)
        with pytest.raises(ValueError, match="page 1 is held 2 times"):
            pool.append(shared, rand(HKV, 1, D), rand(HKV, 1, D), [5])
        with pytest.raises(ValueError, match="held 2 times"):
            pool.seq_remove(shared, 0, 0, 1)
        with pytest.raises(ValueError, match="held 2 times"):  # the destination's page 1
            pool.seq_copy_prefix(table_of([[2, 3], [1], [1]], [8, 4, 4], 4), 0, 1, 4)
        assert (pool.attention(shared, [0, 1, 2], q) == before).all()  # nothing was written


@pytest.mark.parametrize("table, needle", [
    (([0, 2, 1], [0, 1, 2], [1, 1]), "indptr is not non-decreasing"),
    (([1, 2, 3], [0, 1, 2], [1, 1]), r"indptr\[0\] = 1, must be 0"),
    (([0, 1, 2], [0, 99], [1, 1]), r"indices\[1\] = 99 is not a page of the pool"),
    (([0, 1, 2], [0, -1], [1, 1]), "is not a page of the pool"),
    (([0, 1, 2], [0, 1], [1, 5]), r"last_page_len\[1\] = 5 is outside 1..page_size"),
    (([0, 1, 1], [0], [1, 2]), "for a sequence without pages"),
    (([0, 1, 2], [0, 1], [1, 1], 8), "page_size 8 differs from the pool's 4"),
    (([0, 1, 2], [0, 1], [1]), "last_page_len has 1 entries"),
    (([0, 1, 3], [0, 1], [1, 1]), "indices has 2 entries"),
])
def test_bad_page_tables_are_refused_with_the_message(table, needle):
    with clattn.KVPool(8, 4, HKV, D, k_format="f32") as pool:
        q = rand(HQ, 2, D)
        with pytest.raises(ValueError, match=needle):
            pool.attention(table, [0, 1, 2], q)
        with pytest.raises(ValueError, match=needle):
            pool.append(table, rand(HKV, 1, D), rand(HKV, 1, D), [0])
        with pytest.raises(ValueError, match=needle):
            pool.seq_remove(table, 0, 0)


def test_bad_arguments_are_refused_and_nothing_is_written():
    with clattn.KVPool(8, 4, HKV, D, k_format="f32") as pool:
        table = table_of([[3], [5]], [2, 3], 4)
        pool.append(table, rand(HKV, 5, D), rand(HKV, 5, D), [12, 13, 20, 21, 22])
        q = rand(HQ, 2, D)
        before = pool.attention(table, [0, 1, 2], q)
        k, v = rand(HKV, 2, D), rand(HKV, 2, D)
        for slots, needle in (([12, 40], r"slot_mapping\[1\] = 40 is outside the pool's 32 slots"),
                              ([13, 13], "slot 13 is written by two tokens"),
                              ([12], "slot_mapping has 1 entries")):
            with pytest.raises(ValueError, match=needle):
                pool.append(table, k, v, slots)
        with pytest.raises(ValueError, match="k_new"):
            pool.append(table, rand(HKV, 2, D + 1), v, [12, 13])
        with pytest.raises(TypeError, match="integer"):
            pool.append(table, k, v, [12.0, 13.0])
        with pytest.raises(ValueError, match="qo_indptr must run from 0 to Nq = 2"):
            pool.attention(table, [0, 1, 1], q)
        with pytest.raises(ValueError, match="qo_indptr has 2 entries"):
            pool.attention(table, [0, 2], q)
        with pytest.raises(ValueError, match="window"):
            pool.attention(table, [0, 1, 2], q, window=(-3, 0))
        with pytest.raises(ValueError, match="alibi"):
            pool.attention(table, [0, 1, 2], q, alibi_slopes=[1.0])
        for src, dst, needle in (([3], [9], "outside the pool"), ([3, 5], [6, 6], "destination of another pair"),
                                 ([3, 5], [5, 6], "is also a source"), ([3, 5], [6], "dst has 1 entries")):
            with pytest.raises(ValueError, match=needle):
                pool.copy_pages(src, dst)
        with pytest.raises(ValueError, match="n_tokens = 9 is outside 0..2"):
            pool.seq_copy_prefix(table, 0, 1, 9)
        with pytest.raises(ValueError, match="range 2..1 is not within"):
            pool.seq_remove(table, 1, 2, 1)
        assert (pool.attention(table, [0, 1, 2], q) == before).all()  # nothing was written
    with pytest.raises(ValueError, match="closed"):
        pool.attention(table, [0, 1, 2], q)
    with pytest.raises(ValueError, match="int4 keys"):
        clattn.KVPool(8, 4, HKV, D, k_format="int4")
    with pytest.raises(ValueError, match="power of two"):
        clattn.KVPool(8, 3, HKV, D)
    with pytest.raises(ValueError, match="k_format"):
        clattn.KVPool(8, 4, HKV, D, k_format="int3")


def test_pool_reports_its_memory():
    with clattn.KVPool(10, 16, HKV, D, k_format="f32") as a, clattn.KVPool(10, 16, HKV, D, k_format="int8") as b:
        assert a.nbytes >= 10 * 16 * HKV * D * 4 * 2  # keys and values of every page
        assert 0 < b.nbytes < a.nbytes / 3


def test_merge_states_of_split_keys_equals_attention_over_all():
    q, k, v = rand(2, HQ, 3, D), rand(2, HQ, 20, D), rand(2, HQ, 20, D)
    cuts = [0, 7, 8, 20]
    parts = [clattn.scaled_dot_product_attention(q, k[:, :, a:b], v[:, :, a:b], return_lse=True)
             for a, b in zip(cuts, cuts[1:])]
    o, lse = clattn.merge_states([p[0] for p in parts], [p[1] for p in parts])
    want, want_lse = reference(q, k, v)
    assert o.dtype == np.float32 and o.shape == q.shape and lse.shape == q.shape[:-1]
    close(o, want)
    close(lse, want_lse)
    # a part whose LSE is -inf (no key) contributes nothing, whatever its O; float16 parts
    # merge into float16
    empty_o, empty_lse = rand(2, HQ, 3, D), np.full((2, HQ, 3), -np.inf, dtype=np.float32)
    o16, lse16 = clattn.merge_states([parts[0][0].astype(np.float16), empty_o.astype(np.float16)],
                                     [parts[0][1], empty_lse])
    assert o16.dtype == np.float16
    close(o16, parts[0][0].astype(np.float64), f16=True)
    close(lse16, parts[0][1].astype(np.float64))
    # every part -inf: O = 0 and LSE = -inf, never NaN
    o0, lse0 = clattn.merge_states([empty_o], [empty_lse])
    assert (o0 == 0).all() and (lse0 == -np.inf).all()


def test_merge_states_refuses_bad_parts():
    o, lse = rand(HQ, 3, D), rand(HQ, 3)
    with pytest.raises(ValueError, match="differs from"):
        clattn.merge_states([o, o[:, :2]], [lse, lse])
    with pytest.raises(ValueError, match="should be"):
        clattn.merge_states([o], [lse[:, :2]])
    with pytest.raises(ValueError, match="2 o_parts but 1 lse_parts"):
        clattn.merge_states([o, o], [lse])
    with pytest.raises(ValueError, match="nothing to merge"):
        clattn.merge_states([], [])
    with pytest.raises(TypeError, match="float64"):
        clattn.merge_states([o.astype(np.float64)], [lse])
