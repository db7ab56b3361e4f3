"""Finding and loading the compiled layer library, and its ctypes API.

The layers live in ``caffedata/libcaffedata_ops.so``, compiled from ``ops/``
against the ``lib_api.h`` of the installed mxnet wheel (``pip install .`` or
``python setup.py build_ext --inplace``).  :func:`load_library` loads it once
per process with ``mx.library.load`` (which registers the MXNet ops) and opens
the same file with ``ctypes`` for the C API of ``ops/capi.h``: the C++
registry is the one source of truth for layer types, blob counts and ranks,
running-state blobs and default fillers.
"""
import ctypes
import os
import threading

from caffedata.errors import OpsLibraryError, SpecError

__all__ = ["LIBRARY_NAME", "REBUILD_HINT", "library_path", "load_library", "load_error", "supported_layers",
           "blas_info", "LayerInfo", "FillerSpec", "layer_info", "layer_shapes"]

LIBRARY_NAME = "libcaffedata_ops.so"
REBUILD_HINT = ("rebuild it from the source tree with `pip install .` or "
                "`python setup.py build_ext --inplace`")

_CAPI_VERSION = 1
_MAX_BLOBS = 64
_MAX_AXES = 32
_ERROR_LEN = 4096

_lock = threading.Lock()
_state = {"loaded_path": None, "error": None, "cdll": None}


# Mirrors of the structs in ops/capi.h, field for field.
class _Filler(ctypes.Structure):
    _fields_ = [("origin", ctypes.c_int32), ("type", ctypes.c_char * 32), ("value", ctypes.c_double),
                ("min", ctypes.c_double), ("max", ctypes.c_double), ("mean", ctypes.c_double),
                ("std", ctypes.c_double), ("sparse", ctypes.c_int64), ("variance_norm", ctypes.c_char * 16)]


class _LayerInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "num_blobs", "is_loss", "num_state_blobs", "num_no_grad_bottoms", "exact_bottoms", "min_bottoms",
        "max_bottoms", "exact_tops", "min_tops", "max_tops")] + [
        ("blob_axes", ctypes.c_int32 * _MAX_BLOBS), ("state_blobs", ctypes.c_int32 * _MAX_BLOBS),
        ("no_grad_bottoms", ctypes.c_int32 * _MAX_BLOBS), ("fillers", _Filler * _MAX_BLOBS),
        ("error", ctypes.c_char * _ERROR_LEN)]


class _LayerShapes(ctypes.Structure):
    _fields_ = [("num_blobs", ctypes.c_int32), ("num_tops", ctypes.c_int32),
                ("blob_ndim", ctypes.c_int32 * _MAX_BLOBS), ("blob_dims", (ctypes.c_int64 * _MAX_AXES) * _MAX_BLOBS),
                ("top_ndim", ctypes.c_int32 * _MAX_BLOBS), ("top_dims", (ctypes.c_int64 * _MAX_AXES) * _MAX_BLOBS),
                ("error", ctypes.c_char * _ERROR_LEN)]


class _BlasInfo(ctypes.Structure):
    _fields_ = [("core", ctypes.c_char * 64), ("config", ctypes.c_char * 512), ("note", ctypes.c_char * 256)]


def _text(raw):
    # The C side cuts long messages at a character boundary; 'replace' keeps
    # a message readable even from an older library that did not.
    return raw.decode("utf-8", errors="replace")


def library_path():
    """Absolute path of the bundled ops library (it may not exist)."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package_dir, LIBRARY_NAME)


def _declare(cdll):
    cdll.caffedata_capi_version.restype = ctypes.c_int
    cdll.caffedata_layer_type_count.restype = ctypes.c_int
    cdll.caffedata_layer_type_name.argtypes = [ctypes.c_int]
    cdll.caffedata_layer_type_name.restype = ctypes.c_char_p
    cdll.caffedata_blas_info.argtypes = [ctypes.POINTER(_BlasInfo)]
    cdll.caffedata_blas_info.restype = None
    cdll.caffedata_layer_info.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_LayerInfo)]
    cdll.caffedata_layer_shapes.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64),
                                            ctypes.POINTER(ctypes.c_int32), ctypes.c_int,
                                            ctypes.POINTER(_LayerShapes)]


def load_library(path=None):
    """Load the ops library once (idempotent); raise OpsLibraryError on failure.

    ``mx.library.load`` must see each library once: a second load re-registers
    the ops and a third one fails inside MXNet, so the loaded path is
    remembered for the process.
    """
    path = os.path.abspath(path or library_path())
    with _lock:
        if _state["loaded_path"] is not None:
            return _state["cdll"]
        if not os.path.isfile(path):
            err = OpsLibraryError(f"the CaffeOp/CaffeLoss library {path} does not exist; " + REBUILD_HINT)
            _state["error"] = err
            raise err
        import mxnet as mx
        try:
            mx.library.load(path, verbose=False)
            cdll = ctypes.CDLL(path)
            _declare(cdll)
            version = cdll.caffedata_capi_version()
        except Exception as exc:  # MXNetError, OSError, AttributeError (an older library)
            err = OpsLibraryError(f"the CaffeOp/CaffeLoss library {path} failed to load ({exc}); "
                                  + REBUILD_HINT + " against the installed mxnet")
            _state["error"] = err
            raise err from exc
        if version != _CAPI_VERSION:
            err = OpsLibraryError(f"the CaffeOp/CaffeLoss library {path} has C API version {version}, this "
                                  f"caffedata needs {_CAPI_VERSION}; " + REBUILD_HINT)
            _state["error"] = err
            raise err
        _state.update(loaded_path=path, error=None, cdll=cdll)
        return cdll


def load_error():
    """The OpsLibraryError of the last failed load, or None."""
    return _state["error"]


def _lib():
    if _state["cdll"] is not None:
        return _state["cdll"]
    if _state["error"] is not None:
        raise OpsLibraryError(str(_state["error"]))
    return load_library()


def supported_layers():
    """Layer types the compiled library implements (sorted)."""
    lib = _lib()
    return sorted(_text(lib.caffedata_layer_type_name(i)) for i in range(lib.caffedata_layer_type_count()))


def blas_info():
    """'<OpenBLAS core> | <OpenBLAS config> | <note>' for the GEMM the layers use."""
    info = _BlasInfo()
    _lib().caffedata_blas_info(ctypes.byref(info))
    parts = [_text(info.core), _text(info.config), _text(info.note)]
    return " | ".join(parts) if parts[0] else parts[2]


class FillerSpec:
    """A blob's filler as the C++ layer declares it (ops/layer.h, ``Filler``).

    ``origin``: ``"user"`` (the prototxt gave it), ``"layer_default"`` (Caffe's
    default for this layer, applied) or ``"framework"`` (Caffe's default,
    deferred to MXNet's initializer).
    """

    ORIGINS = ("user", "layer_default", "framework")

    def __init__(self, origin, **params):
        self.origin = origin
        self.params = params  # CaffeFiller keyword arguments

    def __repr__(self):
        return f"FillerSpec({self.origin!r}, {self.params!r})"


class LayerInfo:
    """What the C++ layer says about itself before any input shape is known."""

    def __init__(self, blob_axes, is_loss, state_blobs, bottoms, tops, fillers=(), no_grad_bottoms=()):
        self.blob_axes = blob_axes      # number of axes of each parameter blob
        self.is_loss = is_loss
        self.state_blobs = state_blobs  # indices of running-state blobs (BatchNorm)
        self.bottoms = bottoms          # (exact, min, max), -1 = any
        self.tops = tops
        self.fillers = list(fillers)    # one FillerSpec per blob
        self.no_grad_bottoms = list(no_grad_bottoms)

    @property
    def num_blobs(self):
        return len(self.blob_axes)


def layer_info(prototxt, bottom0_axes=4, num_bottoms=-1):
    """Parse ``prototxt`` in C++ and return a :class:`LayerInfo` (SpecError on error).

    ``num_bottoms`` is the op's number of data inputs (-1: unknown; Scale and
    Bias then count the layer's ``bottom:`` fields).
    """
    out = _LayerInfo()
    if _lib().caffedata_layer_info(prototxt.encode(), int(bottom0_axes), int(num_bottoms), ctypes.byref(out)) != 0:
        raise SpecError(f"CaffeOp prototxt: {_text(out.error)}")
    n = out.num_blobs
    fillers = []
    for f in out.fillers[:n]:
        fillers.append(FillerSpec(FillerSpec.ORIGINS[f.origin], type=_text(f.type), value=f.value, min=f.min,
                                  max=f.max, mean=f.mean, std=f.std, sparse=int(f.sparse),
                                  variance_norm=_text(f.variance_norm)))
    return LayerInfo(list(out.blob_axes[:n]), bool(out.is_loss), list(out.state_blobs[:out.num_state_blobs]),
                     (out.exact_bottoms, out.min_bottoms, out.max_bottoms),
                     (out.exact_tops, out.min_tops, out.max_tops), fillers,
                     list(out.no_grad_bottoms[:out.num_no_grad_bottoms]))


def layer_shapes(prototxt, bottom_shapes):
    """Caffe's shape logic: (blob shapes, top shapes) for the given bottom shapes."""
    dims = [int(d) for s in bottom_shapes for d in s]
    nd = [len(s) for s in bottom_shapes]
    out = _LayerShapes()
    rc = _lib().caffedata_layer_shapes(prototxt.encode(), (ctypes.c_int64 * max(1, len(dims)))(*dims),
                                       (ctypes.c_int32 * max(1, len(nd)))(*nd), len(nd), ctypes.byref(out))
    if rc != 0:
        raise SpecError(f"CaffeOp prototxt: {_text(out.error)}")

    def shapes(count, ndim, table):
        return [tuple(int(table[i][k]) for k in range(ndim[i])) for i in range(count)]

    return shapes(out.num_blobs, out.blob_ndim, out.blob_dims), shapes(out.num_tops, out.top_ndim, out.top_dims)
