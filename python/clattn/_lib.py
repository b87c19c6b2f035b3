"""Loading libclattn and the ctypes mirror of include/clattn.h.

The structs here must match the header field for field; clattn_options carries its size
(struct_size), so a library newer than this file still reads it correctly (the policy at
the top of clattn.h).
"""
import ctypes
import ctypes.util
import glob
import os

SONAME = "libclattn.so.0.2"

# clattn_status values the binding maps to Python exceptions.
SUCCESS = 0
INVALID_ARGUMENT = -3000
INVALID_SHAPE = -3001
INVALID_STRIDE = -3002
UNSUPPORTED_DTYPE = -3003
CAPACITY = -3011

F32, F16, BF16, BOOL, I32 = 0, 1, 2, 3, 4
CAUSAL = {"none": 0, "top_left": 1, "bottom_right": 2}
PATHS = {"auto": 0, "fused": 1, "decode": 2, "clblast": 3, "unfused": 4}
KV_FORMATS = {"f32": 0, "f16": 1, "int8": 2, "int4": 3, "tq4": 4, "tq3": 5, "tq2": 6}
DEVICE_TYPES = {1: "cpu", 2: "gpu", 3: "accelerator", 4: "other"}


class Tensor(ctypes.Structure):
    _fields_ = [
        ("host", ctypes.c_void_p),
        ("buffer", ctypes.c_void_p),
        ("offset", ctypes.c_size_t),
        ("dtype", ctypes.c_int),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_int64 * 4),
    ]


class Options(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("causal", ctypes.c_int),
        ("window_left", ctypes.c_int64),
        ("window_right", ctypes.c_int64),
        ("mask", ctypes.POINTER(Tensor)),
        ("kv_lens", ctypes.POINTER(Tensor)),
        ("alibi", ctypes.POINTER(Tensor)),
        ("lse", ctypes.POINTER(Tensor)),
        ("path", ctypes.c_int),
        ("wait_events", ctypes.c_void_p),
        ("num_wait_events", ctypes.c_uint32),
    ]


class PageTable(ctypes.Structure):
    """clattn_page_table: a paged pool's CSR page table (the arrays stay the caller's)."""
    _fields_ = [
        ("n_seqs", ctypes.c_size_t),
        ("indptr", ctypes.c_void_p),
        ("indices", ctypes.c_void_p),
        ("last_page_len", ctypes.c_void_p),
        ("page_size", ctypes.c_int64),
    ]


class DeviceProps(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_size_t),
        ("platform_name", ctypes.c_char * 128),
        ("platform_version", ctypes.c_char * 128),
        ("name", ctypes.c_char * 128),
        ("vendor", ctypes.c_char * 128),
        ("driver_version", ctypes.c_char * 128),
        ("opencl_c_version", ctypes.c_char * 64),
        ("type", ctypes.c_int),
        ("compute_units", ctypes.c_uint32),
        ("max_clock_mhz", ctypes.c_uint32),
        ("global_mem_bytes", ctypes.c_uint64),
        ("max_alloc_bytes", ctypes.c_uint64),
        ("local_mem_bytes", ctypes.c_uint64),
        ("local_mem_is_dedicated", ctypes.c_int),
        ("max_work_group_size", ctypes.c_size_t),
        ("has_fp16", ctypes.c_int),
        ("has_subgroups", ctypes.c_int),
    ]


def _candidates():
    env = os.environ.get("CLATTN_LIBRARY")
    if env:
        # An explicit choice is the only one tried: a wrong path must not silently pick
        # up another copy of the library.
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "libclattn.so*")))
    found += sorted(glob.glob(os.path.join(here, "libclattn*.dylib")))
    found.append(SONAME)
    name = ctypes.util.find_library("clattn")
    if name:
        found.append(name)
    return found


def _load():
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append("%s: %s" % (path, e))
            continue
        _declare(lib)
        return lib
    raise ImportError(
        "clattn: cannot load libclattn (set CLATTN_LIBRARY to its path): " + "; ".join(errors)
    )


def _declare(lib):
    P = ctypes.POINTER
    vp = ctypes.c_void_p
    st = ctypes.c_int
    i64 = ctypes.c_int64
    size = ctypes.c_size_t
    sigs = {
        "clattn_version_string": (ctypes.c_char_p, []),
        "clattn_status_string": (ctypes.c_char_p, [ctypes.c_int]),
        "clattn_options_init_sized": (None, [P(Options), ctypes.c_size_t]),
        "clattn_device_count": (st, [P(ctypes.c_size_t)]),
        "clattn_device_get_props": (st, [ctypes.c_size_t, P(DeviceProps)]),
        "clattn_device_find": (st, [ctypes.c_char_p, P(ctypes.c_size_t)]),
        "clattn_context_create": (st, [ctypes.c_char_p, P(vp)]),
        "clattn_context_free": (None, [vp]),
        "clattn_context_last_error": (ctypes.c_char_p, [vp]),
        "clattn_context_last_path": (ctypes.c_int, [vp]),
        "clattn_context_device_props": (st, [vp, P(DeviceProps)]),
        "clattn_path_name": (ctypes.c_char_p, [ctypes.c_int]),
        "clattn_attention": (st, [vp, P(Tensor), P(Tensor), P(Tensor), P(Tensor), P(Options), vp]),
        "clattn_attention_backward": (
            st,
            [vp, P(Tensor), P(Tensor), P(Tensor), P(Tensor), P(Tensor), P(Tensor), P(Tensor),
             P(Tensor), P(Tensor), P(Tensor), P(Options), vp],
        ),
        "clattn_kv_cache_create": (
            st,
            [vp, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
             ctypes.c_int, ctypes.c_int, P(vp)],
        ),
        "clattn_kv_cache_free": (None, [vp]),
        "clattn_kv_cache_reset": (st, [vp]),
        "clattn_kv_cache_append": (st, [vp, P(Tensor), P(Tensor), vp]),
        "clattn_kv_cache_attention": (st, [vp, vp, P(Tensor), P(Tensor), P(Options), vp]),
        "clattn_kv_cache_bytes": (ctypes.c_uint64, [vp]),
        "clattn_kv_cache_bits_per_element": (ctypes.c_double, [vp]),
        "clattn_kv_cache_lengths": (st, [vp, P(ctypes.c_int32)]),
        "clattn_kv_pool_create": (
            st, [vp, i64, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int, P(vp)],
        ),
        "clattn_kv_pool_free": (None, [vp]),
        "clattn_kv_pool_bytes": (ctypes.c_uint64, [vp]),
        # int32 arrays (slot mappings, qo_indptr, page lists) travel as void pointers
        "clattn_kv_pool_append": (st, [vp, P(PageTable), P(Tensor), P(Tensor), vp, vp]),
        "clattn_kv_pool_attention": (
            st, [vp, vp, P(PageTable), vp, P(Tensor), P(Tensor), P(Options), vp],
        ),
        "clattn_kv_pool_cascade_attention": (
            st, [vp, vp, P(PageTable), vp, P(PageTable), vp, P(Tensor), P(Tensor), P(Options), vp],
        ),
        "clattn_kv_pool_copy_pages": (st, [vp, size, vp, vp, vp]),
        "clattn_kv_pool_seq_copy_prefix": (st, [vp, P(PageTable), size, size, i64, vp]),
        "clattn_kv_pool_seq_remove": (st, [vp, P(PageTable), size, i64, i64, P(i64), vp]),
        "clattn_merge_states": (st, [vp, size, P(Tensor), P(Tensor), P(Tensor), P(Tensor), vp]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


lib = _load()
