"""A filtered Caffe net (a ``NetGraph``) as MXNet symbols, one per tensor id.

Exact path: every layer is ``mx.sym.CaffeOp`` (weights ``<layer>_0_weight``,
``<layer>_1_bias``, ...), loss layers are ``CaffeLoss`` heads (``heads='loss'``,
the training/checkpoint symbol) or plain ``CaffeOp`` (``heads='caffe'``: the
head gradient is Caffe's top diff, so ``Net.backward`` gives Caffe's gradients
without CaffeLoss' ``x N`` for MXNet optimizers).  With ``native=True`` each
layer is first offered to ``caffedata.net.native.native_layer``.  Data and
Input layers become input Variables named by their tops.
"""
import collections

from google.protobuf import text_format

from .. import errors

# Layers that produce the net's inputs: their tops become Variables.
DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
                    "AnnotatedData", "VideoData")
INPUT_LAYER_TYPE = "Input"
# Layers with no effect on values in a forward/backward graph.
SILENT_LAYER_TYPES = ("Silence",)

# Fields of a LayerParameter that describe its place in the net, not the layer itself.
_PLACEMENT_FIELDS = ("bottom", "include", "exclude", "blobs", "propagate_down", "phase")


def layer_text(param):
    """One-line prototxt of a single layer, as CaffeOp takes it (tops kept: they count the outputs)."""
    from ..proto import LayerParameter

    layer = LayerParameter()
    layer.CopyFrom(param)
    for field in _PLACEMENT_FIELDS:
        layer.ClearField(field)
    return "layer { " + text_format.MessageToString(layer, as_one_line=True) + " }"


def layer_text_with_tops(param):
    """The layer's full prototxt (tops, include rules and all), without its weight blobs."""
    from ..proto import LayerParameter

    layer = LayerParameter()
    layer.CopyFrom(param)
    layer.ClearField("blobs")
    return "layer { " + text_format.MessageToString(layer, as_one_line=True) + " }"


# What the builder knows about each layer after building it.
LayerBinding = collections.namedtuple(
    "LayerBinding", "name type kind arg_names state_blobs native blob_count text inits")
# kind: 'input' | 'data' | 'caffe' | 'native' | 'python' | 'silent'
# arg_names: for 'caffe', the MXNet argument/aux name of each Caffe blob, in Caffe's order.


def _unknown_type_error(node, supported):
    return errors.SpecError(
        f"layer '{node.name}' has type '{node.type}', which caffedata does not implement "
        f"(built-in types: {', '.join(supported)}). Supply it as a Python layer: write a class with "
        f"setup/reshape/forward/backward as for pycaffe and either declare the layer as "
        f"`type: \"Python\" python_param {{ module: \"your_module\" layer: \"YourClass\" }}` "
        f"(the module importable from PYTHONPATH), or register a Python implementation of type "
        f"'{node.type}' with caffedata.net.python_layer before building the net.")


def _python_layers():
    try:
        from . import python_layer
    except ImportError:  # pragma: no cover - shipped together with this module
        return None
    return python_layer


def _native():
    try:
        from . import native
    except ImportError:  # pragma: no cover - shipped together with this module
        return None
    return native


def loss_weights(node, info):
    """Caffe's loss weight of each top (LossLayer default: 1 on top 0 when none is given)."""
    given = list(node.loss_weights or ())
    if len(given) == len(node.tops):
        return [float(w) for w in given]
    if given:
        raise errors.SpecError(f"layer '{node.name}': loss_weight must be unspecified or specified once per "
                               f"top blob ({len(given)} given for {len(node.tops)} tops)")
    weights = [0.0] * len(node.tops)
    if info is not None and info.is_loss and weights:
        weights[0] = 1.0
    return weights


def build(graph, phase, heads="caffe", native=False, input_shapes=None):
    """Symbols of ``graph``: (tensors: id -> Symbol, bindings: [LayerBinding], loss: id -> weight).

    ``input_shapes`` (name -> shape) lets layers whose parameter ranks depend on
    the bottom's rank (Scale, Bias) see it.
    """
    import mxnet as mx

    from ..mxnet import library
    from ..mxnet import symbols as mx_symbols

    if mx_symbols.CaffeOp is None or getattr(mx.sym, "CaffeOp", None) is None:
        mx_symbols.install()
    supported = library.supported_layers()
    input_shapes = dict(input_shapes or {})
    tensors = {}
    shapes = {}  # id -> Caffe shape, where the input shapes make it known
    bindings = []
    loss = collections.OrderedDict()
    owners = {}  # ParamSpec name -> Variable of its first user
    python_layer = _python_layers()
    native_mod = _native() if native else None

    for node in graph.layers:
        bottoms = []
        for b in node.bottoms:
            if b not in tensors:
                raise errors.SpecError(f"layer '{node.name}': bottom '{b}' is produced by no earlier layer")
            bottoms.append(tensors[b])
        ltype = node.type
        if ltype == INPUT_LAYER_TYPE or ltype in DATA_LAYER_TYPES:
            for top in node.tops:
                shape = input_shapes.get(top)
                var = mx.sym.Variable(top, shape=tuple(shape)) if shape else mx.sym.Variable(top)
                tensors[top] = var
                if shape:
                    shapes[top] = tuple(shape)
            kind = "input" if ltype == INPUT_LAYER_TYPE else "data"
            bindings.append(LayerBinding(node.name, ltype, kind, [], [], None, 0, None, []))
            continue
        if ltype in SILENT_LAYER_TYPES:
            bindings.append(LayerBinding(node.name, ltype, "silent", [], [], None, 0, None, []))
            continue
        if ltype == "Python" or (python_layer is not None and python_layer.registered_type(ltype)):
            if python_layer is None:
                raise errors.SpecError(f"layer '{node.name}' (type {ltype}): Python layers need "
                                       "caffedata.net.python_layer, which is not installed")
            tops = python_layer.python_layer_symbols(node.param, bottoms, node.name, phase)
            _assign_tops(node, tops, tensors)
            bindings.append(LayerBinding(node.name, ltype, "python", [], [], None, 0, None, []))
            for t, w in zip(node.tops, loss_weights(node, None)):
                if w:
                    loss[t] = w
            continue
        if ltype not in supported:
            raise _unknown_type_error(node, supported)

        text = layer_text(node.param)
        bottom0_ndim = len(shapes[node.bottoms[0]]) if node.bottoms and node.bottoms[0] in shapes else 4
        info = library.layer_info(text, bottom0_ndim, len(bottoms))
        weights = loss_weights(node, info)
        for t, w in zip(node.tops, weights):
            if w:
                loss[t] = w

        name = node.name
        variables = mx_symbols.weight_variables(name, node.param, info) if info.num_blobs else []
        for v in variables:
            # A known storage type: simple_bind (Module) cannot infer it for the aux states of a
            # library op ("input tensors are not dense for custom operator").
            v._set_attr(__storage_type__="0")
        inits = [v.list_attr() for v in variables]
        if native_mod is not None and not info.is_loss:
            nat = native_mod.native_layer(node.param, bottoms, node.name, phase)
            if nat is not None:
                _assign_tops(node, list(nat.tops), tensors)
                _caffe_top_shapes(node, text, shapes)
                bindings.append(LayerBinding(node.name, ltype, "native", [], list(info.state_blobs), nat,
                                             info.num_blobs, text, inits))
                continue

        for i, spec in enumerate(node.param.param):
            if i < len(variables) and spec.name:
                if spec.name in owners:
                    variables[i] = owners[spec.name]
                else:
                    owners[spec.name] = variables[i]
        arg_names = [v.name for v in variables]
        ntop = len(node.tops)
        top_ids = list(node.tops)
        if ntop == 0 and info.is_loss:
            # Caffe's anonymous "(automatic)" loss top: not a blob anyone can read, but it is a loss.
            top_ids = [f"(automatic)/{name}"]
            ntop = 1
            weights = [float(node.loss_weights[0]) if node.loss_weights else 1.0]
            loss[top_ids[0]] = weights[0]
        if info.is_loss and heads == "loss":
            out = mx.sym.CaffeLoss(*bottoms, num_data=len(bottoms), num_out=max(1, ntop),
                                   grad_scale=weights[0] if weights else 1.0, prototxt=text, name=name)
        else:
            out = mx.sym.CaffeOp(*bottoms, *variables, num_data=len(bottoms), num_weight=info.num_blobs,
                                 num_out=max(1, ntop), prototxt=text, name=name)
        tops = [out] if ntop <= 1 else [out[i] for i in range(ntop)]
        for tid, sym in zip(top_ids, tops):
            tensors[tid] = sym
        _caffe_top_shapes(node, text, shapes)
        bindings.append(LayerBinding(name, ltype, "caffe", arg_names, list(info.state_blobs), None,
                                     info.num_blobs, text, inits))
    return tensors, bindings, loss


def _assign_tops(node, tops, tensors):
    if len(tops) != len(node.tops):
        raise errors.SpecError(f"layer '{node.name}' (type {node.type}) produced {len(tops)} outputs for "
                               f"{len(node.tops)} tops")
    for tid, sym in zip(node.tops, tops):
        tensors[tid] = sym


def _caffe_top_shapes(node, text, shapes):
    """Record the layer's top shapes (Caffe's shape rules) when its bottom shapes are known.

    Returns the layer's parameter blob shapes, or None when unknown.
    """
    from ..mxnet import library

    if not all(b in shapes for b in node.bottoms):
        return None
    try:
        blobs, tops = library.layer_shapes(text, [shapes[b] for b in node.bottoms])
    except errors.SpecError as exc:
        raise errors.SpecError(f"layer '{node.name}' (type {node.type}): {exc}") from None
    for tid, shape in zip(node.tops, tops):
        shapes[tid] = tuple(shape)
    return blobs


def caffe_shapes(graph, bindings, tensors, input_shapes):
    """Caffe's shape rules over the net: (blob id -> shape, layer name -> [param blob shapes]).

    Python layers are asked through MXNet's shape inference of their tops.
    """
    shapes = {k: tuple(v) for k, v in input_shapes.items()}
    params = collections.OrderedDict()
    for node, bind in zip(graph.layers, bindings):
        if bind.kind in ("caffe", "native"):
            blobs = _caffe_top_shapes(node, bind.text, shapes)
            if blobs is None:
                raise errors.SpecError(f"layer '{node.name}': the shapes of its bottoms {list(node.bottoms)} "
                                       "are unknown; give the net's input shapes")
            if blobs:
                params[node.name] = [tuple(b) for b in blobs]
        elif bind.kind == "python":
            import mxnet as mx

            group = mx.sym.Group([tensors[t] for t in node.tops])
            known = {k: v for k, v in input_shapes.items() if k in group.list_arguments()}
            _, outs, _ = group.infer_shape_partial(**known)
            for tid, shape in zip(node.tops, outs or []):
                shapes[tid] = tuple(shape)
    return shapes, params
