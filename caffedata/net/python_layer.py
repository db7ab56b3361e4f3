"""Caffe Python layers (``type: "Python"``) and user-registered layer types, as MXNet custom ops.

A layer written for pycaffe::

    class ScaleLayer(caffe.Layer):
        def setup(self, bottom, top):      self.k = float(self.param_str)
        def reshape(self, bottom, top):    top[0].reshape(*bottom[0].data.shape)
        def forward(self, bottom, top):    top[0].data[...] = self.k * bottom[0].data
        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = self.k * top[0].diff

runs unchanged: ``python_param { module: "m" layer: "ScaleLayer" param_str: "2" }``
imports ``m`` from ``sys.path`` (``PYTHONPATH``) and :func:`python_layer_symbols`
returns the layer's tops as symbols of one ``mx.sym.Custom`` op.  The same
machinery runs a class given to :func:`register_layer` for any layer type.

Lifecycle, as in Caffe (include/caffe/layers/python_layer.hpp):

* the class is called with the ``LayerParameter`` (``cls(param)``; a class
  whose constructor takes no argument is called as ``cls()``); then
  ``self.param_str`` (str) and ``self.phase`` (0 TRAIN, 1 TEST) are set;
* ``setup(bottom, top)`` runs once per MXNet operator instance (each bind),
  followed by ``reshape``; zero-filled bottoms of the input shapes are used
  for this first call, and again at shape inference, which takes the top
  shapes from that ``reshape``;
* every forward: ``self.phase`` = 0 if MXNet trains (``is_train``) else 1,
  then ``reshape(bottom, top)`` and ``forward(bottom, top)``.  A top shaped
  differently from the inferred shape is an error (MXNet's outputs are
  allocated before the op runs);
* backward: ``backward(top, propagate_down, bottom)`` with ``top[i].diff`` the
  head gradients; ``bottom[i].diff`` (zeroed first) become the input
  gradients.  ``propagate_down[i]`` is false for inputs MXNet needs no
  gradient for.

``bottom`` and ``top`` are lists of :class:`Blob`: ``.data`` / ``.diff``
(float32 NumPy arrays), ``.shape``, ``.count``, ``.num`` / ``.channels`` /
``.height`` / ``.width`` and ``.reshape(*shape)``.

``self.blobs``: a list with ``add_blob(*shape)`` (zero-filled).  Blobs the
layer adds in ``setup`` become learnable MXNet arguments named as CaffeOp names
parameter blobs (``{name}_0_weight``, ``{name}_1_bias``, ...), initialised to
the values ``setup`` left in them (Module and ``init_params`` use that
initializer; Gluon's ``SymbolBlock.initialize`` uses its own, so load the
values as parameters there).  In a ``caffedata.Net`` they are the layer's
``net.params`` entry, written by ``net.save`` and read from a .caffemodel as
Caffe does for any layer's blobs.  Their gradients are the ``.diff`` values
``backward`` writes (zeroed before each backward, so they are one pass's
gradient as MXNet expects, not Caffe's accumulation).  The blob count and
shapes are taken from a ``setup`` at symbol construction, which needs the
bottoms' shapes; a layer that adds blobs when they are unknown is an error.

Layer files usually start with ``import caffe`` to derive from ``caffe.Layer``.
When no ``caffe`` module is importable, a stand-in module ``caffe`` holding
:class:`Layer` (and ``TRAIN``/``TEST``) is put in ``sys.modules`` the first
time such a file is imported, so those files run unchanged.

A Python loss layer gets no loss weight (as in Caffe): it sees whatever head
gradient MXNet gives (``mx.sym.MakeLoss`` gives ones).

Errors (module not importable, class missing, an exception in the layer)
are :class:`caffedata.errors.SpecError` naming the layer, the module and the
class, chained to the original exception when raised in the calling thread.
Inside MXNet's engine (forward/backward) MXNet prints the error with its
traceback and raises a bare ``MXNetError``; :func:`pending_error` then returns
the SpecError (chained to the layer's exception) for the caller to re-raise.
"""
import importlib
import sys
import threading
import traceback
import types

import numpy as np

from ..errors import SpecError

__all__ = ["Layer", "Blob", "BlobVec", "python_layer_symbols", "register_layer", "registered_type",
           "pending_error", "OP_TYPE"]

OP_TYPE = "caffedata_python_layer"

_registry = {}
_lock = threading.Lock()


class Blob:
    """pycaffe's Blob: ``data`` and ``diff`` arrays of one shape."""

    def __init__(self, shape=(), data=None):
        shape = tuple(int(d) for d in shape)
        self.data = np.zeros(shape, np.float32) if data is None else np.array(data, np.float32, copy=True)
        self.diff = np.zeros(self.data.shape, np.float32)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob dims must be >= 0, got {shape}")
        if shape != self.data.shape:
            self.data = np.zeros(shape, np.float32)
            self.diff = np.zeros(shape, np.float32)

    @property
    def shape(self):
        return self.data.shape

    @property
    def count(self):
        return int(self.data.size)

    def _legacy(self, index):
        shape = self.data.shape
        return shape[index] if -len(shape) <= index < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self):
        return f"Blob{self.data.shape}"


class BlobVec(list):
    """``self.blobs`` of a Python layer: a list of Blob with ``add_blob``."""

    def add_blob(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self.append(Blob(shape))


class Layer:
    """Base class for layers written against this module (pycaffe's ``caffe.Layer``).

    Classes deriving from pycaffe's ``caffe.Layer`` or from nothing work too;
    this one only provides the constructor and empty defaults.
    """

    def __init__(self, param=None):
        self.layer_param = param
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = 0
        self.blobs = BlobVec()

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


def register_layer(type_name, cls):
    """Run layers of ``type: "<type_name>"`` with ``cls`` (Caffe's Python-layer lifecycle).

    Use it for a layer type caffedata does not implement; the prototxt's own
    parameters reach the class as ``self.layer_param`` (the LayerParameter)
    and ``self.param_str`` (from ``python_param``, usually empty).
    """
    if not isinstance(type_name, str) or not type_name:
        raise SpecError(f"register_layer: the layer type must be a non-empty str, got {type_name!r}")
    if not isinstance(cls, type):
        raise SpecError(f"register_layer('{type_name}'): expected a class, got {type(cls).__name__}")
    for method in ("setup", "reshape", "forward"):
        if not callable(getattr(cls, method, None)):
            raise SpecError(f"register_layer('{type_name}'): class {cls.__qualname__} has no {method}() method")
    with _lock:
        _registry[type_name] = cls


def registered_type(type_name):
    """The class registered for ``type_name``, or None."""
    with _lock:
        return _registry.get(type_name)


# ---------------------------------------------------------------------------
# Resolving the class and running the lifecycle

def _where(layer):
    if layer.type == "Python":
        p = layer.python_param
        return f"Python layer '{layer.name}' (module '{p.module}', class '{p.layer}')"
    cls = registered_type(layer.type)
    cname = f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "?"
    return f"layer '{layer.name}' of type '{layer.type}' (registered class {cname})"


def _resolve(layer):
    if layer.type != "Python":
        cls = registered_type(layer.type)
        if cls is None:
            raise SpecError(f"layer '{layer.name}': no Python implementation registered for type "
                            f"'{layer.type}'; call caffedata.register_layer('{layer.type}', YourClass)")
        return cls
    p = layer.python_param
    if not p.module or not p.layer:
        raise SpecError(f"Python layer '{layer.name}': python_param needs both 'module' and 'layer' "
                        f"(got module '{p.module}', layer '{p.layer}')")
    try:
        try:
            mod = importlib.import_module(p.module)
        except ModuleNotFoundError as exc:
            if exc.name != "caffe" or "caffe" in sys.modules:
                raise
            sys.modules["caffe"] = _caffe_shim()  # no Caffe here: `import caffe; caffe.Layer` gets ours
            mod = importlib.import_module(p.module)
    except Exception as exc:
        raise SpecError(f"{_where(layer)}: cannot import module '{p.module}' ({type(exc).__name__}: {exc}); "
                        "put its folder on PYTHONPATH (or sys.path)") from exc
    cls = getattr(mod, p.layer, None)
    if cls is None:
        raise SpecError(f"{_where(layer)}: module '{p.module}' ({getattr(mod, '__file__', '?')}) has no "
                        f"class '{p.layer}'")
    return cls


def _caffe_shim():
    """A stand-in ``caffe`` module for layer files that ``import caffe`` for ``caffe.Layer``."""
    mod = types.ModuleType("caffe", "caffedata's stand-in for pycaffe: only Layer, TRAIN and TEST")
    mod.Layer = Layer
    mod.TRAIN, mod.TEST = 0, 1
    return mod


def _instantiate(cls, layer, phase):
    try:
        try:
            obj = cls(layer)
        except TypeError:
            if cls.__init__ is not object.__init__:
                raise
            obj = cls()
    except Exception as exc:
        raise SpecError(f"{_where(layer)}: constructing the class failed ({type(exc).__name__}: {exc})") from exc
    obj.param_str = layer.python_param.param_str
    obj.phase = phase
    if not isinstance(getattr(obj, "blobs", None), BlobVec):
        obj.blobs = BlobVec()
    if not hasattr(obj, "layer_param"):
        obj.layer_param = layer
    return obj


_pending = []  # errors raised inside MXNet's engine, for pending_error()


def pending_error():
    """The last SpecError a Python layer raised inside MXNet's engine, or None; clears it.

    MXNet reports an exception in a custom op's forward/backward only as a
    failed check (the traceback goes to stderr).  A caller that gets that
    ``MXNetError`` can re-raise this SpecError, which names the layer, module
    and class and is chained to the layer's own exception::

        except mx.base.MXNetError as exc:
            err = python_layer.pending_error()
            if err is not None:
                raise err from err.__cause__
            raise
    """
    with _lock:
        err = _pending[-1] if _pending else None
        _pending.clear()
    return err


def _fail(err, in_engine):
    if in_engine:
        with _lock:
            _pending.append(err)
    raise err


def _call(layer, obj, method, *args, in_engine=False):
    try:
        return getattr(obj, method)(*args)
    except SpecError:
        raise
    except Exception as exc:
        err = SpecError(f"{_where(layer)}: {method}() raised {type(exc).__name__}: {exc}\n"
                        f"{traceback.format_exc()}")
        err.__cause__ = exc
        _fail(err, in_engine)


def _phase_number(phase):
    if isinstance(phase, str):
        return 1 if phase.upper() == "TEST" else 0
    return 1 if phase is not None and int(phase) == 1 else 0


def _set_up(layer, cls, bottom_shapes, phase, num_tops):
    """A fresh instance after setup + reshape on zero bottoms: (obj, bottom, top)."""
    obj = _instantiate(cls, layer, phase)
    bottom = [Blob(s) for s in bottom_shapes]
    top = [Blob(()) for _ in range(num_tops)]
    _call(layer, obj, "setup", bottom, top)
    _call(layer, obj, "reshape", bottom, top)
    return obj, bottom, top


def _parse(text):
    from ..proto import LayerParameter, text_format

    layer = LayerParameter()
    text_format.Parse(text, layer)
    return layer


# ---------------------------------------------------------------------------
# The MXNet custom op

def _make_op_classes():
    import mxnet as mx

    class PythonLayerOp(mx.operator.CustomOp):
        def __init__(self, layer, cls, bottom_shapes, num_blobs, phase, top_shapes):
            super().__init__()
            self.layer = layer
            self.num_bottoms = len(bottom_shapes)
            self.top_shapes = top_shapes
            self.obj, self.bottom, self.top = _set_up(layer, cls, bottom_shapes, phase, len(top_shapes))
            if len(self.obj.blobs) != num_blobs:
                raise SpecError(f"{_where(layer)}: setup() created {len(self.obj.blobs)} blob(s) but the symbol "
                                f"has {num_blobs}; build the symbol with known bottom shapes so that the "
                                "parameter blobs can be found")

        def _load(self, in_data):
            for blob, arr in zip(self.bottom, in_data[:self.num_bottoms]):
                blob.reshape(arr.shape)
                blob.data[...] = arr.asnumpy()
            for blob, arr in zip(self.obj.blobs, in_data[self.num_bottoms:]):
                blob.data = arr.asnumpy().astype(np.float32)
                blob.diff = np.zeros_like(blob.data)

        def forward(self, is_train, req, in_data, out_data, aux):
            self.obj.phase = 0 if is_train else 1
            self._load(in_data)
            _call(self.layer, self.obj, "reshape", self.bottom, self.top, in_engine=True)
            _call(self.layer, self.obj, "forward", self.bottom, self.top, in_engine=True)
            for i, (blob, out) in enumerate(zip(self.top, out_data)):
                if blob.shape != tuple(out.shape):
                    _fail(SpecError(f"{_where(self.layer)}: top {i} has shape {blob.shape} after reshape() but "
                                    f"{tuple(out.shape)} was inferred; a Python layer's top shapes must "
                                    "follow from its bottom shapes"), True)
                self.assign(out, req[i], mx.nd.array(blob.data, ctx=out.context, dtype=out.dtype))

        def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
            self._load(in_data)
            for blob, data, grad in zip(self.top, out_data, out_grad):
                blob.data[...] = data.asnumpy()
                blob.diff[...] = grad.asnumpy()
            for blob in self.bottom:
                blob.diff[...] = 0
            propagate = [r != "null" for r in req[:self.num_bottoms]]
            _call(self.layer, self.obj, "backward", self.top, propagate, self.bottom, in_engine=True)
            blobs = list(self.bottom) + list(self.obj.blobs)
            for i, (blob, grad) in enumerate(zip(blobs, in_grad)):
                if req[i] == "null":
                    continue
                diff = blob.diff if blob.diff.shape == tuple(grad.shape) else blob.diff.reshape(grad.shape)
                self.assign(grad, req[i], mx.nd.array(diff, ctx=grad.context, dtype=grad.dtype))

    @mx.operator.register(OP_TYPE)
    class PythonLayerProp(mx.operator.CustomOpProp):
        def __init__(self, layer="", num_bottoms="1", num_blobs="0", phase="0"):
            super().__init__(need_top_grad=True)
            self.layer = _parse(layer)
            self.num_bottoms = int(num_bottoms)
            self.num_blobs = int(num_blobs)
            self.phase = int(phase)
            self.cls = _resolve(self.layer)
            self._cache = {}

        def list_arguments(self):
            return [f"bottom{i}" for i in range(self.num_bottoms)] + [f"blob{i}" for i in range(self.num_blobs)]

        def list_outputs(self):
            return [f"top{i}" for i in range(len(self.layer.top))]

        def _shapes(self, bottom_shapes):
            key = tuple(tuple(s) for s in bottom_shapes)
            if key not in self._cache:
                obj, _, top = _set_up(self.layer, self.cls, bottom_shapes, self.phase, len(self.layer.top))
                self._cache[key] = ([b.shape for b in obj.blobs], [t.shape for t in top])
            return self._cache[key]

        def infer_shape(self, in_shape):
            bottom_shapes = [tuple(s) for s in in_shape[:self.num_bottoms]]
            try:
                blob_shapes, top_shapes = self._shapes(bottom_shapes)
            except SpecError as err:  # MXNet shows only a failed check: keep it for pending_error()
                _fail(err, True)
            if len(blob_shapes) != self.num_blobs:
                raise SpecError(f"{_where(self.layer)}: setup() created {len(blob_shapes)} blob(s), the symbol "
                                f"has {self.num_blobs}")
            return bottom_shapes + [list(s) for s in blob_shapes], [list(s) for s in top_shapes], []

        def infer_type(self, in_type):
            return [np.float32] * len(in_type), [np.float32] * len(self.layer.top), []

        def declare_backward_dependency(self, out_grad, in_data, out_data):
            return list(out_grad) + list(in_data) + list(out_data)

        def create_operator(self, ctx, in_shapes, in_dtypes):
            bottom_shapes = [tuple(s) for s in in_shapes[:self.num_bottoms]]
            try:
                _, top_shapes = self._shapes(bottom_shapes)
                return PythonLayerOp(self.layer, self.cls, bottom_shapes, self.num_blobs, self.phase, top_shapes)
            except SpecError as err:
                _fail(err, True)

    return PythonLayerProp


_prop_class = []


def _ensure_registered():
    with _lock:
        if not _prop_class:
            _prop_class.append(_make_op_classes())


def _known_shape(sym):
    try:
        _, out, _ = sym.infer_shape_partial()
    except Exception:
        return None
    if not out or not out[0] or any(d <= 0 for d in out[0]):
        return None  # () is MXNet's "unknown" (no 0-axis tensors outside numpy mode)
    return tuple(int(d) for d in out[0])


def _blob_init(blob):
    import mxnet as mx

    values = blob.data.reshape(-1)
    if values.size and np.all(values == values[0]):
        return mx.init.Constant(float(values[0]))
    return mx.init.Constant(blob.data.copy())


def python_layer_symbols(layer_param, bottoms, name, phase=None, with_blobs=False):
    """The tops of a Python (or registered-type) layer as MXNet symbols.

    ``layer_param``: the caffe.LayerParameter (``type: "Python"`` with
    ``python_param``, or a type given to :func:`register_layer`);
    ``bottoms``: input symbols in ``bottom`` order; ``name``: node name;
    ``phase``: the net's phase ('TRAIN'/'TEST' or 0/1), seen by ``setup``.
    With ``with_blobs``: ``(tops, blob Variables)``, the Variables of
    ``self.blobs`` in order (their ``__init__`` holds what ``setup`` left).
    """
    import mxnet as mx
    from ..proto import text_format

    cls = _resolve(layer_param)
    if not layer_param.top:
        raise SpecError(f"{_where(layer_param)}: the layer has no top; MXNet ops need at least one output")
    _ensure_registered()
    bottoms = list(bottoms)
    phase_no = _phase_number(phase)
    shapes = [_known_shape(b) for b in bottoms]
    blobs = []
    if all(s is not None for s in shapes):
        # Caffe runs setup at net construction: do it now, so import and setup
        # errors surface here and the parameter blobs are known.
        obj, _, _ = _set_up(layer_param, cls, shapes, phase_no, len(layer_param.top))
        blobs = list(obj.blobs)
    params = list(layer_param.param)
    blob_vars = []
    for i, blob in enumerate(blobs):
        kw = {"shape": blob.shape, "init": _blob_init(blob)}
        if i < len(params):
            if params[i].HasField("lr_mult"):
                kw["lr_mult"] = params[i].lr_mult
            if params[i].HasField("decay_mult"):
                kw["wd_mult"] = params[i].decay_mult
        blob_vars.append(mx.sym.Variable(f"{name}_{i}_weight" if i == 0 else f"{name}_{i}_bias", **kw))
    text = text_format.MessageToString(layer_param, as_one_line=True)
    out = mx.sym.Custom(*bottoms, *blob_vars, op_type=OP_TYPE, layer=text, num_bottoms=str(len(bottoms)),
                        num_blobs=str(len(blobs)), phase=str(phase_no), name=name)
    tops = [out[i] for i in range(len(layer_param.top))]
    return (tops, blob_vars) if with_blobs else tops
