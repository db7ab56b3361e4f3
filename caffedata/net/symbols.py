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
    "LayerBinding", "name type kind arg_names state_blobs native blob_count text inits covers",
    defaults=(None,))
# kind: 'input' | 'data' | 'caffe' | 'native' | 'python' | 'silent' | 'fused' (a BatchNorm run by the
#   native op of the Scale after it)
# arg_names: for 'caffe', the MXNet argument/aux name of each Caffe blob, in Caffe's order.
# covers: for 'native', the layers whose Caffe blobs (concatenated) the native op takes; None = itself.


def _unknown_type_error(node, supported):
    return errors.SpecError(
        f"layer '{node.name}' has type '{node.type}', which caffedata does not implement "
        f"(built-in types: {', '.join(supported)}). Supply it as a Python layer: write a class with "
        f"setup/reshape/forward/backward as for pycaffe and either declare the layer as "
        f"`type: \"Python\" python_param {{ module: \"your_module\" layer: \"YourClass\" }}` "
        f"(the module importable from PYTHONPATH), or register a Python implementation of type "
        f"'{node.type}' with caffedata.net.python_layer.register_layer('{node.type}', YourClass) before "
        f"building the net.")


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

    from ..mxnet import install, library
    from ..mxnet import symbols as op_symbols

    if getattr(mx.sym, "CaffeOp", None) is None:
        install()
    supported = library.supported_layers()
    input_shapes = dict(input_shapes or {})
    tensors = {}
    shapes = {}  # id -> Caffe shape, where the input shapes make it known
    bindings = []
    loss = collections.OrderedDict()
    owners = {}  # ParamSpec name -> Variable of its first user
    python_layer = _python_layers()
    native_mod = _native() if native else None

    consumers = collections.Counter(b for n in graph.layers for b in n.bottoms)
    final_ids = set(graph.blob_ids.values())
    fused = {}  # Scale layer name -> (NativeLayer, BatchNorm blob shapes, BatchNorm name)

    for index, node in enumerate(graph.layers):
        if node.name in fused:
            _bind_fused_scale(node, fused.pop(node.name), tensors, shapes, bindings, mx, library)
            continue
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
            tops, blob_vars = python_layer.python_layer_symbols(node.param, bottoms, node.name, phase,
                                                                with_blobs=True)
            _assign_tops(node, tops, tensors)
            # self.blobs are the layer's Caffe blobs: in net.params, saved and loaded as Caffe does
            bindings.append(LayerBinding(node.name, ltype, "python", [v.name for v in blob_vars], [], None,
                                         len(blob_vars), None, [v.list_attr() for v in blob_vars]))
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
        variables = op_symbols.weight_variables(name, node.param, info) if info.num_blobs else []
        inits = [v.list_attr() for v in variables]
        if native_mod is not None and not info.is_loss:
            scale = _fusable_scale(graph, index, consumers, final_ids)
            if scale is not None:
                # BatchNorm + Scale as one MXNet BatchNorm (its gamma/beta are the Scale's blobs).
                nat = native_mod.native_batchnorm_scale(node.param, scale.param, bottoms, scale.name, phase)
                if nat is not None:
                    fused[scale.name] = (nat, _caffe_top_shapes(node, text, shapes), node.name)
                    bindings.append(LayerBinding(node.name, ltype, "fused", [], list(info.state_blobs), None,
                                                 info.num_blobs, text, inits))
                    continue
            nat, bn_shapes, covers = native_mod.native_layer(node.param, bottoms, node.name, phase), [], None
            if nat is not None:
                _assign_tops(node, list(nat.tops), tensors)
                blob_shapes = _caffe_top_shapes(node, text, shapes)
                if blob_shapes is not None and bn_shapes is not None:
                    _set_native_shapes(nat, list(bn_shapes) + list(blob_shapes))
                bindings.append(LayerBinding(node.name, ltype, "native", [], list(info.state_blobs), nat,
                                             info.num_blobs, text, inits, covers))
                continue

        for i, spec in enumerate(node.param.param):
            if i < len(variables) and spec.name:
                if spec.name in owners:
                    variables[i] = owners[spec.name]
                else:
                    owners[spec.name] = variables[i]
        arg_names = [v.name for v in variables]
        ntop = len(node.tops)
        top_ids = list(node.tops)  # a loss layer given no top has Caffe's "(automatic)" one here
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


def _bind_fused_scale(node, fused, tensors, shapes, bindings, mx, library):
    """The Scale half of a fused BatchNorm + Scale: its top is the native op's output."""
    from ..mxnet import symbols as op_symbols

    nat, bn_shapes, bn_name = fused
    text = layer_text(node.param)
    info = library.layer_info(text, len(shapes.get(node.bottoms[0], (0,) * 4)), 1)
    _assign_tops(node, list(nat.tops), tensors)
    blob_shapes = _caffe_top_shapes(node, text, shapes)
    if blob_shapes is not None and bn_shapes is not None:
        _set_native_shapes(nat, list(bn_shapes) + list(blob_shapes))
    variables = op_symbols.weight_variables(node.name, node.param, info)
    bindings.append(LayerBinding(node.name, node.type, "native", [], [], nat, info.num_blobs, text,
                                 [v.list_attr() for v in variables], (bn_name, node.name)))


def _fusable_scale(graph, index, consumers, final_ids):
    """The Scale layer right after BatchNorm ``index`` that alone reads its (not user-visible) top, or None."""
    node = graph.layers[index]
    if node.type != "BatchNorm" or index + 1 >= len(graph.layers) or len(node.tops) != 1:
        return None
    nxt = graph.layers[index + 1]
    top = node.tops[0]
    if nxt.type != "Scale" or list(nxt.bottoms) != [top] or consumers[top] != 1 or top in final_ids:
        return None
    if any(w for w in (node.loss_weights or ())):
        return None
    return nxt


def _set_native_shapes(nat, blob_shapes):
    """Shapes on a native layer's parameter Variables, so that MXNet's shape inference (and the native
    layers after it, which read it) sees through e.g. a native Scale."""
    import mxnet as mx
    import numpy as np

    if not blob_shapes:
        return
    arrays = nat.to_native([np.zeros(b, np.float32) for b in blob_shapes])
    internals = mx.sym.Group(list(nat.tops)).get_internals()
    names = set(internals.list_outputs())
    for vname, arr in arrays.items():
        if vname in names and not internals[vname].attr("__shape__"):
            internals[vname]._set_attr(__shape__=str(tuple(arr.shape)))


def _shape_attr(text):
    """A Variable's ``__shape__`` attribute, e.g. ``'(2, 3)'`` or ``'[2, 3]'``, as a tuple."""
    return tuple(int(d) for d in text.strip("()[] ").replace(" ", "").split(",") if d)


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
    if not tops and len(node.tops) == 1:
        tops = [()]  # one 0-axis top (a loss) prints as nothing in layer_shapes' text
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
        if bind.kind in ("caffe", "native", "fused"):
            blobs = _caffe_top_shapes(node, bind.text, shapes)
            if blobs is None:
                raise errors.SpecError(f"layer '{node.name}': the shapes of its bottoms {list(node.bottoms)} "
                                       "are unknown; give the net's input shapes")
            if blobs:
                params[node.name] = [tuple(b) for b in blobs]
        elif bind.kind == "python":
            import mxnet as mx

            if bind.blob_count:
                params[node.name] = [_shape_attr(attrs["__shape__"]) for attrs in bind.inits]
            group = mx.sym.Group([tensors[t] for t in node.tops])
            known = {k: v for k, v in input_shapes.items() if k in group.list_arguments()}
            _, outs, _ = group.infer_shape_partial(**known)
            for tid, shape in zip(node.tops, outs or []):
                shapes[tid] = tuple(shape)
    return shapes, params
