"""``mx.sym.CaffeOp`` / ``mx.sym.CaffeLoss``: Caffe layers as MXNet operators.

The layers live in a C++ extension library, ``caffedata/libcaffedata_ops.so``,
compiled from ``ops/`` against the ``lib_api.h`` of the installed mxnet wheel
(``pip install .`` or ``python setup.py build_ext --inplace``).  :func:`install`
(called by ``import caffedata``) loads it once with ``mx.library.load`` and
puts the wrappers on ``mx.sym``, ``mx.symbol``, ``mx.nd`` and ``mx.ndarray``
(so ``F.CaffeOp`` works in Gluon, hybridized or not).  If the library is
missing or does not load, ``import caffedata`` still works and the wrappers
raise :class:`caffedata.errors.OpsLibraryError` saying how to rebuild.

Interface (as the MXNet 1.x Caffe plugin had it)::

    fc1 = mx.sym.CaffeOp(data_0=data, num_weight=2, name="fc1",
                         prototxt='layer{type:"InnerProduct" inner_product_param{num_output: 128}}')
    # arguments: data, fc1_0_weight, fc1_1_bias; output: fc1_output
    loss = mx.sym.CaffeLoss(data=fc3, label=mx.sym.Variable("softmax_label"), grad_scale=1,
                            name="softmax", prototxt='layer{type:"SoftmaxWithLoss"}')
    # output: the loss value, shape (1,); use mx.metric.Caffe()

Gradient normalisation.  Caffe normalises in the loss layer (SoftmaxWithLoss
divides by the number of valid labels by default), MXNet in the optimizer
(``Module`` uses ``rescale_grad = 1/batch_size``, Gluon ``trainer.step(batch_size)``).
CaffeLoss therefore emits ``grad_scale x N x`` Caffe's gradient, N being the
first dimension of its first input (the batch).  After MXNet's ``1/N`` the
optimizer sees exactly Caffe's gradient: replacing ``SoftmaxOutput`` by
``CaffeLoss`` trains the same with the same optimizer settings, and one SGD
step (lr, momentum, wd) equals Caffe's solver step.  ``loss_weight`` in the
prototxt overrides ``grad_scale``.  The output value is Caffe's loss itself
(not multiplied by N).  The head gradient of CaffeLoss is ignored (it is
wrapped in ``MakeLoss`` so that ``Module.fit`` needs no ``out_grads``).

Phase.  MXNet 1.9.1's library API never tells an op whether it runs in
training mode, so both wrappers add a hidden input ``Dropout(ones((1,)), p=0.5)``
(nodes ``<name>_phase_ones`` / ``<name>_phase``) whose value (1 at inference,
0 or 2 in training) gives the layer Caffe's TEST/TRAIN phase at each call.

Weights.  CaffeOp creates one Variable per Caffe blob, ``<name>_0_weight``,
``<name>_1_bias``, ``<name>_2_bias``, ... with partial shapes of the right
number of axes (MXNet 1.9.1 crashes on fully unknown shapes of library-op
inputs); the layer's own shape logic fills in the dims.  ``weight_filler`` /
``bias_filler`` become the Variables' initializers (:class:`CaffeFiller`);
without a filler the layer's Caffe default applies where Caffe has one (Scale's
scale: 1; Bias, Scale's bias: 0; PReLU's slope: 0.25), otherwise (InnerProduct,
Convolution, ...) the Module's initializer decides (``*_weight`` / ``*_bias``
patterns).  ``param { lr_mult decay_mult }`` become ``lr_mult`` / ``wd_mult``.
Running-state blobs (BatchNorm's mean, variance and factor) are auxiliary
states, initialised to zero and never touched by the optimizer, as Caffe
masks them.

Limits: CPU only; ``grad_req='add'`` is not supported (the library API never
passes the request, so gradients are always overwritten).
"""
import ctypes
import math
import os
import threading

import numpy as np

from ..errors import OpsLibraryError, SpecError

__all__ = ["install", "load_library", "library_path", "CaffeOp", "CaffeLoss", "CaffeFiller",
           "supported_layers", "layer_info", "blas_info"]

LIBRARY_NAME = "libcaffedata_ops.so"
_REBUILD_HINT = ("rebuild it from the source tree with `pip install .` or "
                 "`python setup.py build_ext --inplace`")

_lock = threading.Lock()
_state = {"loaded_path": None, "error": None, "cdll": None}


def library_path():
    """Absolute path of the bundled ops library (it may not exist)."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package_dir, LIBRARY_NAME)


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
            err = OpsLibraryError(f"the CaffeOp/CaffeLoss library {path} does not exist; " + _REBUILD_HINT)
            _state["error"] = err
            raise err
        import mxnet as mx
        try:
            mx.library.load(path, verbose=False)
            cdll = ctypes.CDLL(path)
        except Exception as exc:  # MXNetError, OSError
            err = OpsLibraryError(f"the CaffeOp/CaffeLoss library {path} failed to load ({exc}); "
                                  + _REBUILD_HINT + " against the installed mxnet")
            _state["error"] = err
            raise err from exc
        cdll.caffedata_layer_types.argtypes = [ctypes.c_char_p, ctypes.c_int]
        cdll.caffedata_blas_info.argtypes = [ctypes.c_char_p, ctypes.c_int]
        cdll.caffedata_layer_info.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                              ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
                                              ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        cdll.caffedata_layer_shapes.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64),
                                                ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_char_p,
                                                ctypes.c_int]
        _state.update(loaded_path=path, error=None, cdll=cdll)
        return cdll


def _lib():
    if _state["cdll"] is not None:
        return _state["cdll"]
    if _state["error"] is not None:
        raise OpsLibraryError(str(_state["error"]))
    return load_library()


def _call_str(fn, *args):
    buf = ctypes.create_string_buffer(1 << 14)
    fn(*args, buf, len(buf))
    return buf.value.decode()


def supported_layers():
    """Layer types the compiled library implements (sorted)."""
    return sorted(t for t in _call_str(_lib().caffedata_layer_types).split(",") if t)


def blas_info():
    """'<OpenBLAS core> | <OpenBLAS config> | <note>' for the GEMM the layers use."""
    return _call_str(_lib().caffedata_blas_info)


class LayerInfo:
    """What the C++ layer says about itself before any input shape is known."""

    def __init__(self, blob_axes, is_loss, state_blobs, bottoms, tops):
        self.blob_axes = blob_axes      # number of axes of each parameter blob
        self.is_loss = is_loss
        self.state_blobs = state_blobs  # indices of running-state blobs (BatchNorm)
        self.bottoms = bottoms          # (exact, min, max), -1 = any
        self.tops = tops

    @property
    def num_blobs(self):
        return len(self.blob_axes)


def layer_info(prototxt, bottom0_axes=4, num_bottoms=-1):
    """Parse ``prototxt`` in C++ and return a :class:`LayerInfo` (SpecError on error).

    ``num_bottoms`` is the op's number of data inputs (-1: unknown; Scale and
    Bias then count the layer's ``bottom:`` fields).
    """
    lib = _lib()
    info = (ctypes.c_int * 10)()
    axes = (ctypes.c_int * 64)()
    state = (ctypes.c_int * 64)()
    err = ctypes.create_string_buffer(4096)
    rc = lib.caffedata_layer_info(prototxt.encode(), int(bottom0_axes), int(num_bottoms), info, axes, state, 64,
                                  err, len(err))
    if rc != 0:
        raise SpecError(f"CaffeOp prototxt: {err.value.decode()}")
    n = info[0]
    return LayerInfo([axes[i] for i in range(n)], bool(info[1]), [state[i] for i in range(info[2])],
                     (info[4], info[5], info[6]), (info[7], info[8], info[9]))


def layer_shapes(prototxt, bottom_shapes):
    """Caffe's shape logic: (blob shapes, top shapes) for the given bottom shapes."""
    lib = _lib()
    dims = [int(d) for s in bottom_shapes for d in s]
    nd = [len(s) for s in bottom_shapes]
    buf = ctypes.create_string_buffer(1 << 14)
    rc = lib.caffedata_layer_shapes(prototxt.encode(), (ctypes.c_int64 * max(1, len(dims)))(*dims),
                                    (ctypes.c_int * max(1, len(nd)))(*nd), len(nd), buf, len(buf))
    text = buf.value.decode()
    if rc != 0:
        raise SpecError(f"CaffeOp prototxt: {text}")
    blobs, tops = text.split("|")

    def parse(part):
        return [tuple(int(d) for d in s.split(",") if d) for s in part.split(";")] if part else []

    return parse(blobs), parse(tops)


# ---------------------------------------------------------------------------
# prototxt validation (protobuf, the project's schema) and field extraction.

def _parse_layer(prototxt):
    """Validate with protobuf text_format; return the single LayerParameter."""
    from ..proto import LayerParameter, NetParameter, text_format

    if not isinstance(prototxt, str):
        raise SpecError(f"prototxt must be a str, got {type(prototxt).__name__}")
    net = NetParameter()
    try:
        text_format.Parse(prototxt, net)
    except text_format.ParseError as exc:
        # A bare LayerParameter text is accepted too.
        layer = LayerParameter()
        try:
            text_format.Parse(prototxt, layer)
        except text_format.ParseError:
            raise SpecError(f"invalid prototxt for a Caffe layer: {exc}\n  prototxt: {prototxt!r}") from None
        if not layer.type:
            raise SpecError(f"prototxt has no layer type: {prototxt!r}")
        return layer
    if len(net.layers):
        raise SpecError("prototxt uses the V1 'layers { ... }' syntax; write 'layer { type: \"...\" ... }'")
    if len(net.layer) != 1:
        raise SpecError(f"prototxt must hold exactly one 'layer {{ ... }}', found {len(net.layer)}: {prototxt!r}")
    layer = net.layer[0]
    if not layer.type:
        raise SpecError(f"the layer in the prototxt has no 'type': {prototxt!r}")
    return layer


def _check_supported(layer):
    types = supported_layers()
    if layer.type not in types:
        raise SpecError(f"unsupported Caffe layer type '{layer.type}'; supported types: {', '.join(types)}")


def _fillers(layer):
    """Per-blob filler (a FillerParameter or None), Caffe's blob order."""
    for fname in ("inner_product_param", "convolution_param", "embed_param", "scale_param", "bias_param",
                  "prelu_param"):
        if layer.HasField(fname):
            p = getattr(layer, fname)
            out = []
            for attr in ("weight_filler", "bias_filler", "filler"):
                if p.DESCRIPTOR.fields_by_name.get(attr) is not None:
                    out.append(getattr(p, attr) if p.HasField(attr) else None)
                else:
                    out.append(None)
            if fname in ("scale_param", "bias_param", "prelu_param"):
                # Scale: blob 0 from `filler` (default 1), blob 1 from bias_filler.
                main = out[2]
                return [main, out[1]]
            return out[:2]
    return [None, None]


# ---------------------------------------------------------------------------
# Fillers as MXNet initializers.

def _legacy(shape, index):
    """Caffe's Blob::LegacyShape (num/channels/height/width with 1-padding)."""
    n = len(shape)
    if index >= n or index < -n:
        return 1
    return shape[index]


def _caffe_fill(arr, p):
    import mxnet as mx

    shape = arr.shape
    count = int(np.prod(shape)) if len(shape) else 1
    kind = p["type"]
    dtype = arr.dtype

    def uniform(lo, hi):
        return mx.nd.random.uniform(lo, hi, shape=shape, dtype="float32").astype(dtype)

    def normal(mu, sigma):
        return mx.nd.random.normal(mu, sigma, shape=shape, dtype="float32").astype(dtype)

    if kind == "constant":
        arr[:] = p["value"]
    elif kind == "uniform":
        arr[:] = uniform(p["min"], p["max"])
    elif kind == "gaussian":
        val = normal(p["mean"], p["std"])
        if p["sparse"] >= 0:
            if len(shape) != 2:
                raise SpecError("a sparse gaussian filler needs a 2-axis blob (InnerProduct weights)")
            prob = p["sparse"] / float(_legacy(shape, 0))
            mask = mx.nd.random.uniform(0, 1, shape=shape) < prob
            val = val * mask.astype(dtype)
        arr[:] = val
    elif kind in ("xavier", "msra"):
        fan_in = count / _legacy(shape, 0)
        fan_out = count / _legacy(shape, 1)
        norm = p["variance_norm"]
        if norm == "FAN_IN":
            n = fan_in
        elif norm == "FAN_OUT":
            n = fan_out
        else:  # AVERAGE
            n = (fan_in + fan_out) / 2.0
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            arr[:] = uniform(-scale, scale)
        else:
            arr[:] = normal(0.0, math.sqrt(2.0 / n))
    elif kind == "positive_unitball":
        val = mx.nd.random.uniform(0, 1, shape=shape, dtype="float32").asnumpy().reshape(_legacy(shape, 0), -1)
        val /= val.sum(axis=1, keepdims=True)
        arr[:] = val.reshape(shape).astype(dtype)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise SpecError("the bilinear filler needs a 4-axis blob with square kernels")
        w = shape[3]
        f = math.ceil(w / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        i = np.arange(count)
        x = i % w
        y = (i // w) % shape[2]
        arr[:] = ((1 - np.abs(x / f - c)) * (1 - np.abs(y / f - c))).reshape(shape).astype(dtype)
    else:
        raise SpecError(f"unknown Caffe filler type '{kind}' (constant, uniform, gaussian, xavier, msra, "
                        "positive_unitball, bilinear)")


_FILLER_DEFAULTS = {"type": "constant", "value": 0.0, "min": 0.0, "max": 1.0, "mean": 0.0, "std": 1.0,
                    "sparse": -1, "variance_norm": "FAN_IN"}


def _filler_kwargs(filler):
    """FillerParameter message -> CaffeFiller kwargs (proto defaults applied)."""
    from ..proto import POOL

    enum = POOL.FindEnumTypeByName("caffe.FillerParameter.VarianceNorm")
    kw = dict(_FILLER_DEFAULTS)
    kw.update(type=filler.type or "constant", value=filler.value, min=filler.min, max=filler.max,
              mean=filler.mean, std=filler.std, sparse=filler.sparse,
              variance_norm=enum.values_by_number[filler.variance_norm].name)
    return kw


def _make_filler_class():
    import mxnet as mx

    @mx.init.register
    class CaffeFiller(mx.init.Initializer):
        """Caffe's FillerParameter as an MXNet initializer (serializable).

        ``type`` is one of constant, uniform, gaussian (with ``sparse``),
        xavier, msra (with ``variance_norm`` FAN_IN / FAN_OUT / AVERAGE),
        positive_unitball, bilinear.  Fans follow Caffe: fan_in = count / num,
        fan_out = count / channels (legacy num/channels, 1 for missing axes).
        """

        def __init__(self, type="constant", value=0.0, min=0.0, max=1.0, mean=0.0, std=1.0, sparse=-1,
                     variance_norm="FAN_IN"):
            super().__init__(type=type, value=value, min=min, max=max, mean=mean, std=std, sparse=sparse,
                             variance_norm=variance_norm)
            self._p = dict(type=type, value=value, min=min, max=max, mean=mean, std=std, sparse=sparse,
                           variance_norm=variance_norm)

        def _init_weight(self, name, arr):
            _caffe_fill(arr, self._p)

        _init_bias = _init_weight
        _init_gamma = _init_weight
        _init_beta = _init_weight
        _init_default = _init_weight

    return CaffeFiller


CaffeFiller = None  # set by install()


# ---------------------------------------------------------------------------
# The wrappers.

def _phase_signal(F, name, ctx=None):
    """(1,) tensor: 1 at inference, 0 or 2 in training (MXNet's own Dropout)."""
    if _is_symbol_api(F):
        ones = F.ones(shape=(1,), name=f"{name}_phase_ones")
        return F.Dropout(ones, p=0.5, name=f"{name}_phase")
    return F.Dropout(F.ones((1,), ctx=ctx), p=0.5)


def _is_symbol_api(F):
    return "symbol" in F.__name__.split(".")


def _collect_inputs(args, kwargs, names_first):
    """Data inputs from data_0.. / named keywords / positionals."""
    data = {}
    for key in list(kwargs):
        if key.startswith("data_") and key[5:].isdigit():
            data[int(key[5:])] = kwargs.pop(key)
    for i, key in enumerate(names_first):
        if key in kwargs:
            if i in data:
                raise SpecError(f"input {i} given twice ({key}= and data_{i}=)")
            data[i] = kwargs.pop(key)
    if data and sorted(data) != list(range(len(data))):
        raise SpecError(f"data inputs must be data_0..data_{{n-1}} without gaps, got {sorted(data)}")
    return [data[i] for i in range(len(data))] + list(args), len(data)


def _unnamed(F, hint):
    import mxnet as mx

    return mx.name.NameManager.current.get(None, hint)


def _attr_str(v):
    return str(v)


def _make_caffe_op(F):
    def CaffeOp(*args, num_data=None, num_weight=0, num_out=1, prototxt="layer{}", name=None, attr=None,
                **kwargs):
        """Apply a Caffe layer (see caffedata.ops for the full description).

        Inputs: ``data_0=..``, ``data_1=..`` (or positional symbols), then
        optionally the ``num_weight`` parameter blobs positionally (in Gluon);
        in mx.sym the parameter Variables are created when not given.
        Outputs: ``output`` or ``output0..``.
        """
        _lib()
        layer = _parse_layer(prototxt)
        _check_supported(layer)
        inputs, n_named = _collect_inputs(args, kwargs, [])
        num_weight = int(num_weight)
        num_out = int(num_out)
        if num_data is None:
            if n_named and not args:
                num_data = n_named
            elif num_weight and len(inputs) > num_weight:
                num_data = len(inputs) - num_weight
            else:
                num_data = max(1, len(inputs))
        num_data = int(num_data)
        if len(inputs) not in (num_data, num_data + num_weight):
            raise SpecError(f"CaffeOp got {len(inputs)} input(s); expected num_data={num_data} data inputs "
                            f"(+ num_weight={num_weight} parameter blobs)")
        first = inputs[0] if inputs else None
        axes0 = 4
        if first is not None and hasattr(first, "shape") and not _is_symbol_api(F):
            axes0 = len(first.shape)
        elif first is not None and _is_symbol_api(F):
            shp = first.attr("__shape__")
            if shp:
                axes0 = len(eval(shp, {}, {}))  # "(2, 3)" written by mx.sym.Variable
        info = layer_info(prototxt, axes0, num_data)
        if info.num_blobs != num_weight:
            raise SpecError(f"CaffeOp: layer type '{layer.type}' has {info.num_blobs} parameter blob(s) but "
                            f"num_weight={num_weight}; pass num_weight={info.num_blobs}")
        symbolic = _is_symbol_api(F)
        if symbolic:
            name = name or _unnamed(F, "caffeop")
        if len(inputs) == num_data and num_weight:
            if not symbolic:
                raise SpecError("mx.nd.CaffeOp needs the parameter blobs passed after the data inputs "
                                f"({num_weight} of them)")
            inputs = inputs + _weight_variables(name, layer, info, num_data)
        extra = {k: _attr_str(v) for k, v in kwargs.items()}
        if symbolic:
            phase = _phase_signal(F, name)
            return F._internal._caffedata_op(*inputs, phase, num_data=num_data, num_weight=num_weight,
                                             num_out=num_out, phase_input=1, prototxt=prototxt, name=name,
                                             attr=attr, **extra)
        ctx = first.context if first is not None else None
        phase = _phase_signal(F, name, ctx)
        return F._internal._caffedata_op(*inputs, phase, num_data=num_data, num_weight=num_weight,
                                         num_out=num_out, phase_input=1, prototxt=prototxt, **extra)

    return CaffeOp


def _weight_variables(name, layer, info, num_data=1):
    import mxnet as mx

    fillers = _fillers(layer)
    if layer.type == "Scale" and num_data >= 2:
        fillers = fillers[1:]  # the scale is bottom 1: blob 0 is the bias (bias_filler)
    params = list(layer.param)
    out = []
    for i, ndim in enumerate(info.blob_axes):
        vname = f"{name}_{i}_weight" if i == 0 else f"{name}_{i}_bias"
        kw = {"shape": (0,) * ndim}
        if i in info.state_blobs:
            kw.update(init=mx.init.Zero(), lr_mult=0.0, wd_mult=0.0)
        else:
            filler = fillers[i] if i < len(fillers) else None
            if filler is not None:
                kw["init"] = CaffeFiller(**_filler_kwargs(filler))
            elif layer.type == "Scale" and i == 0 and num_data < 2:
                kw["init"] = mx.init.One()  # Caffe's Scale default filler: constant 1
            elif layer.type in ("Scale", "Bias"):
                kw["init"] = mx.init.Zero()  # Caffe's Bias default filler (and Scale's bias): constant 0
            elif layer.type == "PReLU":
                kw["init"] = mx.init.Constant(0.25)  # Caffe's PReLU default filler: constant 0.25
            if i < len(params):
                if params[i].HasField("lr_mult"):
                    kw["lr_mult"] = params[i].lr_mult
                if params[i].HasField("decay_mult"):
                    kw["wd_mult"] = params[i].decay_mult
        out.append(mx.sym.Variable(vname, **kw))
    return out


def _label_shape_guard(sym):
    """Give a shapeless label Variable a 1-axis partial shape (MXNet 1.9.1 trap 1)."""
    try:
        is_var = sym.get_children() is None
    except Exception:  # pragma: no cover - defensive
        return
    if is_var and not sym.attr("__shape__"):
        sym._set_attr(__shape__="(0,)")


def _make_caffe_loss(F):
    def CaffeLoss(*args, num_data=2, num_out=1, grad_scale=1.0, prototxt="layer{}", name=None, attr=None,
                  **kwargs):
        """Apply a Caffe loss layer; output: the loss value (shape (1,) for scalars).

        Inputs: ``data=``, ``label=`` (or ``data_0``/``data_1``, or positional).
        The gradient is ``grad_scale`` (or the prototxt's ``loss_weight``) times
        Caffe's normalised gradient times N (first dim of data): MXNet's
        optimizer divides by the batch size (Module's rescale_grad, Gluon's
        trainer.step(batch_size)), so the update equals Caffe's solver step.
        Wrapped in MakeLoss: no head gradient needed in Module.fit; with
        num_out > 1 the extra tops (e.g. SoftmaxWithLoss' prob) are BlockGrad outputs.
        """
        _lib()
        layer = _parse_layer(prototxt)
        _check_supported(layer)
        inputs, _ = _collect_inputs(args, kwargs, ["data", "label"])
        num_data = int(num_data)
        num_out = int(num_out)
        symbolic = _is_symbol_api(F)
        if symbolic:
            name = name or _unnamed(F, "caffeloss")
            if len(inputs) == num_data - 1 and num_data >= 2:
                inputs.append(mx_variable(f"{name}_label"))
            for s in inputs[1:]:
                _label_shape_guard(s)
        if len(inputs) != num_data:
            raise SpecError(f"CaffeLoss got {len(inputs)} input(s), expected num_data={num_data} "
                            "(data=..., label=...)")
        info = layer_info(prototxt, num_bottoms=num_data)
        if info.num_blobs:
            raise SpecError(f"CaffeLoss: layer type '{layer.type}' has parameter blobs; use CaffeOp")
        extra = {k: _attr_str(v) for k, v in kwargs.items()}
        if symbolic:
            phase = _phase_signal(F, name)
            out = F._internal._caffedata_loss(*inputs, phase, num_data=num_data, num_out=num_out,
                                              grad_scale=float(grad_scale), phase_input=1, prototxt=prototxt,
                                              name=f"{name}_caffe", attr=attr, **extra)
            if num_out == 1:
                return F.MakeLoss(out, name=name)
            parts = [F.MakeLoss(out[0], name=name)]
            parts += [F.BlockGrad(out[i], name=f"{name}_top{i}") for i in range(1, num_out)]
            return F.Group(parts)
        ctx = inputs[0].context
        phase = _phase_signal(F, name, ctx)
        out = F._internal._caffedata_loss(*inputs, phase, num_data=num_data, num_out=num_out,
                                          grad_scale=float(grad_scale), phase_input=1, prototxt=prototxt,
                                          **extra)
        if num_out == 1:
            return F.MakeLoss(out)
        return [F.MakeLoss(out[0])] + [F.BlockGrad(out[i]) for i in range(1, num_out)]

    return CaffeLoss


def mx_variable(name, **kw):
    import mxnet as mx

    return mx.sym.Variable(name, **kw)


def _missing(what):
    def stub(*args, **kwargs):
        err = _state["error"]
        raise OpsLibraryError(f"{what} is unavailable: {err}" if err else
                              f"{what} is unavailable: the ops library is not loaded; " + _REBUILD_HINT)

    stub.__name__ = what
    return stub


CaffeOp = None
CaffeLoss = None


def install(path=None):
    """Load the ops library (once) and register mx.sym/mx.nd.CaffeOp and CaffeLoss.

    Never raises for a missing or broken library: the wrappers then raise
    OpsLibraryError with the rebuild instructions when called.
    """
    global CaffeFiller, CaffeOp, CaffeLoss
    import mxnet as mx

    if CaffeFiller is None:
        CaffeFiller = _make_filler_class()
    import mxnet.ndarray
    import mxnet.symbol

    # mx.sym / mx.nd may be the .op submodules after mx.library.load; Gluon's
    # F is the package module: register on all of them.
    sym_mods = {id(m): m for m in (mxnet.symbol, mx.sym, mx.symbol)}.values()
    nd_mods = {id(m): m for m in (mxnet.ndarray, mx.nd, mx.ndarray)}.values()
    try:
        load_library(path)
    except OpsLibraryError:
        for mod in list(sym_mods) + list(nd_mods):
            mod.CaffeOp = _missing("CaffeOp")
            mod.CaffeLoss = _missing("CaffeLoss")
        CaffeOp, CaffeLoss = mxnet.symbol.CaffeOp, mxnet.symbol.CaffeLoss
        return False
    sym_op, sym_loss = _make_caffe_op(mxnet.symbol), _make_caffe_loss(mxnet.symbol)
    nd_op, nd_loss = _make_caffe_op(mxnet.ndarray), _make_caffe_loss(mxnet.ndarray)
    for mod in sym_mods:
        mod.CaffeOp, mod.CaffeLoss = sym_op, sym_loss
    for mod in nd_mods:
        mod.CaffeOp, mod.CaffeLoss = nd_op, nd_loss
    CaffeOp, CaffeLoss = sym_op, sym_loss
    return True
