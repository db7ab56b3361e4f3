"""``mx.sym.CaffeOp`` / ``mx.sym.CaffeLoss``: Caffe layers as MXNet operators.

The layers live in a C++ extension library (see caffedata.mxnet.library).
:func:`install` (called by ``import caffedata``) loads it once and
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
inputs); the layer's own shape logic fills in the dims.  Each blob's initializer comes
from the filler the C++ layer declares (caffedata.mxnet.fillers): the
prototxt's ``weight_filler`` / ``bias_filler`` / ``filler``, else the layer's
Caffe default where Caffe applies one (Scale's scale: 1; Bias, Scale's bias: 0;
PReLU's slope: 0.25), otherwise (InnerProduct, Convolution, Deconvolution,
Embed) the Module's initializer decides (``*_weight`` / ``*_bias`` patterns).  ``param { lr_mult decay_mult }`` become ``lr_mult`` / ``wd_mult``.
Running-state blobs (BatchNorm's mean, variance and factor) are auxiliary
states, initialised to zero and never touched by the optimizer, as Caffe
masks them.

Limits: CPU only; ``grad_req='add'`` is not supported (the library API never
passes the request, so gradients are always overwritten).
"""
import mxnet as mx

from caffedata.errors import OpsLibraryError, SpecError
from caffedata.mxnet import fillers, library
from caffedata.mxnet.library import layer_info, supported_layers

__all__ = ["install", "CaffeOp", "CaffeLoss"]


# ---------------------------------------------------------------------------
# prototxt validation (protobuf, the project's schema) and field extraction.

def _parse_layer(prototxt):
    """Validate with protobuf text_format; return the single LayerParameter."""
    from caffedata.proto import LayerParameter, NetParameter, text_format

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
    return mx.name.NameManager.current.get(None, hint)


def _attr_str(v):
    return str(v)


def _make_caffe_op(F):
    def CaffeOp(*args, num_data=None, num_weight=0, num_out=1, prototxt="layer{}", name=None, attr=None,
                **kwargs):
        """Apply a Caffe layer (see caffedata.mxnet.symbols for the full description).

        Inputs: ``data_0=..``, ``data_1=..`` (or positional symbols), then
        optionally the ``num_weight`` parameter blobs positionally (in Gluon);
        in mx.sym the parameter Variables are created when not given.
        Outputs: ``output`` or ``output0..``.
        """
        library.load_library()
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
            inputs = inputs + weight_variables(name, layer, info)
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


def weight_variables(name, layer, info):
    """The parameter Variables CaffeOp creates for ``layer`` (names, fillers, multipliers).

    ``info`` is the layer's ``library.layer_info``.  Shared with the native path
    (``caffedata.net.native``), so both name and initialise parameters alike.
    """
    params = list(layer.param)
    out = []
    for i, ndim in enumerate(info.blob_axes):
        vname = f"{name}_{i}_weight" if i == 0 else f"{name}_{i}_bias"
        kw = {"shape": (0,) * ndim}
        if i in info.state_blobs:
            kw.update(init=mx.init.Zero(), lr_mult=0.0, wd_mult=0.0)
        else:
            init = fillers.initializer_for(info.fillers[i] if i < len(info.fillers) else None)
            if init is not None:
                kw["init"] = init
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
        library.load_library()
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
    return mx.sym.Variable(name, **kw)


def _missing(what):
    def stub(*args, **kwargs):
        err = library.load_error()
        raise OpsLibraryError(f"{what} is unavailable: {err}" if err else
                              f"{what} is unavailable: the ops library is not loaded; " + library.REBUILD_HINT)

    stub.__name__ = what
    return stub


CaffeOp = None
CaffeLoss = None


def install(path=None):
    """Load the ops library (once) and register mx.sym/mx.nd.CaffeOp and CaffeLoss.

    Never raises for a missing or broken library: the wrappers then raise
    OpsLibraryError with the rebuild instructions when called.
    """
    global CaffeOp, CaffeLoss

    fillers.filler_class()
    import mxnet.ndarray
    import mxnet.symbol

    # mx.sym / mx.nd may be the .op submodules after mx.library.load; Gluon's
    # F is the package module: register on all of them.
    sym_mods = {id(m): m for m in (mxnet.symbol, mx.sym, mx.symbol)}.values()
    nd_mods = {id(m): m for m in (mxnet.ndarray, mx.nd, mx.ndarray)}.values()
    try:
        library.load_library(path)
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
