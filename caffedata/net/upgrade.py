"""Read net and solver prototxts and upgrade old formats as Caffe's ``upgrade_proto.cpp`` does.

``load_net_param`` = ``ReadNetParamsFromTextFileOrDie``: parse, then apply in Caffe's order every step
whose detector fires: V0 -> V1 (padding layers folded into conv/pool), data-transformation fields ->
``transform_param``, V1 -> V2 (enum types -> strings, ``blobs_lr``/``weight_decay`` -> ``param {}``),
legacy ``input``/``input_shape``/``input_dim`` -> an ``Input`` layer named ``input``, and the old
three-``param`` BatchNorm form.  ``upgrade_net_param`` runs the same chain on a parsed message (the
binary ``.caffemodel`` reader uses it).  ``load_solver_param`` = ``ReadSolverParamsFromTextFileOrDie``.

Where Caffe aborts, a SpecError names the file, the layer and the fix; where Caffe logs an error and
continues ("continuing anyway"), a warning is logged on the ``caffedata.net`` logger.
"""
import logging
import os

from google.protobuf import text_format

from caffedata.errors import SpecError
from caffedata.proto import NetParameter, SolverParameter, V1LayerParameter

log = logging.getLogger("caffedata.net")

# V1LayerParameter.LayerType value -> V2 type string (upgrade_proto.cpp, UpgradeV1LayerType).
V1_TYPE_NAMES = {
    0: "", 35: "AbsVal", 1: "Accuracy", 30: "ArgMax", 2: "BNLL", 3: "Concat", 37: "ContrastiveLoss",
    4: "Convolution", 39: "Deconvolution", 5: "Data", 6: "Dropout", 32: "DummyData", 7: "EuclideanLoss",
    25: "Eltwise", 38: "Exp", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 28: "HingeLoss",
    11: "Im2col", 12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 29: "MemoryData",
    16: "MultinomialLogisticLoss", 34: "MVN", 17: "Pooling", 26: "Power", 18: "ReLU", 19: "Sigmoid",
    27: "SigmoidCrossEntropyLoss", 36: "Silence", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split",
    33: "Slice", 23: "TanH", 24: "WindowData", 31: "Threshold",
}

# V0 type string -> V1 enum name (UpgradeV0LayerType).
V0_TYPE_NAMES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS", "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING", "relu": "RELU",
    "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT",
    "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# Flat V0 field -> {V0 type: (V1 typed param, field, how)}; how is "set", "append" or "copy".
# A field present on a type not listed is logged and dropped, as UpgradeV0LayerParameter does.
_DATA_SOURCES = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
                 "window_data": "window_data_param"}
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output", "set"),
                   "innerproduct": ("inner_product_param", "num_output", "set")},
    "biasterm": {"conv": ("convolution_param", "bias_term", "set"),
                 "innerproduct": ("inner_product_param", "bias_term", "set")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler", "copy"),
                      "innerproduct": ("inner_product_param", "weight_filler", "copy")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler", "copy"),
                    "innerproduct": ("inner_product_param", "bias_filler", "copy")},
    "pad": {"conv": ("convolution_param", "pad", "append"), "pool": ("pooling_param", "pad", "set")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size", "append"),
                   "pool": ("pooling_param", "kernel_size", "set")},
    "group": {"conv": ("convolution_param", "group", "set")},
    "stride": {"conv": ("convolution_param", "stride", "append"), "pool": ("pooling_param", "stride", "set")},
    "pool": {"pool": ("pooling_param", "pool", "set")},  # MAX/AVE/STOCHASTIC keep their numbers
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", "set")},
    "local_size": {"lrn": ("lrn_param", "local_size", "set")},
    "alpha": {"lrn": ("lrn_param", "alpha", "set")},
    "beta": {"lrn": ("lrn_param", "beta", "set")},
    "k": {"lrn": ("lrn_param", "k", "set")},
    "source": dict({t: (p, "source", "set") for t, p in _DATA_SOURCES.items()},
                   infogain_loss=("infogain_loss_param", "source", "set")),
    "batchsize": {t: (p, "batch_size", "set") for t, p in _DATA_SOURCES.items()},
    "rand_skip": {"data": ("data_param", "rand_skip", "set"), "images": ("image_data_param", "rand_skip", "set")},
    "shuffle_images": {"images": ("image_data_param", "shuffle", "set")},
    "new_height": {"images": ("image_data_param", "new_height", "set")},
    "new_width": {"images": ("image_data_param", "new_width", "set")},
    "concat_dim": {"concat": ("concat_param", "concat_dim", "set")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", "set")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", "set")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", "set")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", "set")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", "set")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None, "copy")},
}
# Transformation fields go to transform_param whatever the V0 type.
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}

# V1 data layers whose own param may still hold transformation fields (UpgradeNetDataTransformation).
_V1_DATA_PARAMS = {5: "data_param", 12: "image_data_param", 24: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# Typed V1 params copied verbatim to V2 (every ``*_param`` field of V1LayerParameter).
_V1_TYPED_PARAMS = tuple(f.name for f in V1LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param"))

SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


# ----------------------------------------------------------------------------------------------
# Reading text

def _read_source(source, what):
    """(text, name for messages, path or None) from prototxt text or a path to it."""
    if isinstance(source, bytes):
        source = source.decode("utf-8", "replace")
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
        try:
            return raw.decode("utf-8"), path, path
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not a text {what} (it is binary; a .caffemodel is read with "
                            f"caffedata.net.caffemodel.read_caffemodel)") from None
    if not isinstance(source, str):
        raise SpecError(f"{what} must be prototxt text or a path, got {type(source).__name__}")
    if source.strip() and not any(c in source for c in "{:\n"):
        raise SpecError(f"{what} file not found: {source!r} -- pass an existing path or the prototxt text")
    return source, f"<{what} text>", None


def _parse_text(text, message, where, what):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line_no, col = exc.GetLine(), exc.GetColumn()
        lines = text.splitlines()
        context = ""
        if line_no and 0 < line_no <= len(lines):
            context = f"\n  line {line_no}: {lines[line_no - 1].strip()}"
        detail = str(exc)
        prefix = f"{line_no}:{col} : " if line_no else ""
        if prefix and detail.startswith(prefix):
            detail = detail[len(prefix):]
        loc = f"{where}:{line_no}:{col}" if line_no else where
        raise SpecError(f"{loc}: malformed {what}: {detail}{context} -- fix the text (protobuf text "
                        f"format of caffe.{message.DESCRIPTOR.name})") from None
    return message


def parse_net_text(source):
    """Parse a net prototxt (text or path) without upgrading it; returns (NetParameter, name)."""
    text, where, _ = _read_source(source, "net prototxt")
    return _parse_text(text, NetParameter(), where, "net prototxt"), where


def load_net_param(source):
    """NetParameter from prototxt text or a path, upgraded to the current format as Caffe does."""
    if isinstance(source, NetParameter):
        net = NetParameter()
        net.CopyFrom(source)
        return upgrade_net_param(net, "<NetParameter>")
    net, where = parse_net_text(source)
    return upgrade_net_param(net, where)


# ----------------------------------------------------------------------------------------------
# The upgrade chain (UpgradeNetAsNeeded)

def upgrade_net_param(net, where="<net>"):
    """Apply Caffe's upgrade chain to ``net`` in place and return it."""
    if any(layer.HasField("layer") for layer in net.layers):
        log.info("Attempting to upgrade input file specified using deprecated V0LayerParameter: %s", where)
        _upgrade_v0_net(net, where)
    if _needs_data_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated transformation "
                 "parameters: %s", where)
        _upgrade_data_transformation(net)
    if len(net.layers):
        log.info("Attempting to upgrade input file specified using deprecated V1LayerParameter: %s", where)
        _upgrade_v1_net(net, where)
    if len(net.input):
        log.info("Attempting to upgrade input file specified using deprecated input fields: %s", where)
        _upgrade_input(net, where)
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            # The old definition listed the 3 statistics blobs as params; they are not learned.
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return net


def _upgrade_v0_net(net, where):
    """UpgradeV0Net: fold padding layers, then each V0 layer becomes a V1 layer."""
    padded = _fold_v0_padding(net, where)
    name = padded.name if padded.HasField("name") else None
    force_backward = padded.force_backward if padded.HasField("force_backward") else None
    net.Clear()
    if name is not None:
        net.name = name
    compatible = True
    for connection in padded.layers:
        compatible &= _upgrade_v0_layer(connection, net.layers.add(), where)
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if force_backward is not None:
        net.force_backward = force_backward
    if not compatible:
        log.warning("%s: had one or more problems upgrading V0NetParameter to NetParameter; "
                    "continuing anyway.", where)


def _fold_v0_padding(net, where):
    """UpgradeV0PaddingLayers: drop ``padding`` layers, moving their pad into the consuming conv/pool."""
    out = NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top = {name: -1 for name in net.input}
    for i, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_top:
                raise SpecError(f"{where}: V0 layer '{v0.name}' (bottom index {j}): unknown blob input "
                                f"'{blob}' -- it must be a net input or the top of an earlier layer")
            source_index = last_top[blob]
            if source_index == -1:
                continue
            source = net.layers[source_index]
            if source.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise SpecError(f"{where}: V0 layer '{v0.name}': Padding layer input to "
                                f"non-convolutional / non-pooling layer type {v0.type}")
            if len(connection.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                raise SpecError(f"{where}: V0 padding layer '{source.layer.name}' and its consumer "
                                f"'{v0.name}' must each take a single blob (and padding produce one)")
            target = out.layers[len(out.layers) - 1]
            target.layer.pad = source.layer.pad
            target.bottom[j] = source.bottom[0]
        for blob in connection.top:
            last_top[blob] = i
    return out


def _upgrade_v0_layer(connection, v1, where):
    """UpgradeV0LayerParameter.  Returns False where a field did not fit the layer type."""
    v1.bottom.extend(connection.bottom)
    v1.top.extend(connection.top)
    if not connection.HasField("layer"):
        return True
    v0 = connection.layer
    compatible = True
    if v0.HasField("name"):
        v1.name = v0.name
    v0_type = v0.type
    if v0.HasField("type"):
        if v0_type not in V0_TYPE_NAMES:
            raise SpecError(f"{where}: V0 layer '{v0.name}': Unknown layer name: {v0_type} -- V0 types are "
                            f"{', '.join(sorted(V0_TYPE_NAMES))}")
        v1.type = V1LayerParameter.LayerType.Value(V0_TYPE_NAMES[v0_type])
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        if v0_type not in targets:
            log.warning("%s: V0 layer '%s': Unknown parameter %s for layer type %s", where, v0.name,
                        field, v0_type)
            compatible = False
            continue
        param_name, target_field, how = targets[v0_type]
        param = getattr(v1, param_name)
        value = getattr(v0, field)
        if how == "append":
            getattr(param, target_field).append(value)
        elif how == "copy" and target_field is None:
            param.CopyFrom(value)
        elif how == "copy":
            getattr(param, target_field).CopyFrom(value)
        else:
            setattr(param, target_field, value)
    for field, target_field in _V0_TRANSFORM.items():
        if v0.HasField(field):
            setattr(v1.transform_param, target_field, getattr(v0, field))
    return compatible


def _needs_data_upgrade(net):
    for layer in net.layers:
        param_name = _V1_DATA_PARAMS.get(layer.type)
        if param_name and any(getattr(layer, param_name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def _upgrade_data_transformation(net):
    for layer in net.layers:
        param_name = _V1_DATA_PARAMS.get(layer.type)
        if not param_name:
            continue
        param = getattr(layer, param_name)
        for field in _TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


def _upgrade_v1_net(net, where):
    """UpgradeV1Net: every ``layers`` entry becomes a ``layer``."""
    if len(net.layer):
        raise SpecError(f"{where}: Refusing to upgrade inconsistent NetParameter input; the definition "
                        f"includes both 'layer' and 'layers' fields. The current format defines 'layer' "
                        f"fields with string type like layer {{ type: 'Layer' ... }} and not layers {{ "
                        f"type: LAYER ... }}. Manually switch the definition to 'layer' format to continue.")
    v1_layers = list(net.layers)
    old = NetParameter()
    old.layers.extend(v1_layers)
    del net.layers[:]
    compatible = True
    for i, v1 in enumerate(old.layers):
        if not _upgrade_v1_layer(v1, net.layer.add(), where):
            log.warning("%s: Upgrade of input layer %d failed.", where, i)
            compatible = False
    if not compatible:
        log.warning("%s: had one or more problems upgrading V1LayerParameter; continuing anyway.", where)


def _upgrade_v1_layer(v1, layer, where):
    """UpgradeV1LayerParameter."""
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        if v1.type not in V1_TYPE_NAMES:
            raise SpecError(f"{where}: V1 layer '{v1.name}': Unknown V1LayerParameter layer type: {v1.type}")
        layer.type = V1_TYPE_NAMES[v1.type]
    layer.blobs.extend(v1.blobs)

    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode  # STRICT=0, PERMISSIVE=1 in both enums
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_TYPED_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        log.warning("%s: Input NetParameter has V0 layer -- ignoring.", where)
        return False
    return True


def _upgrade_input(net, where):
    """UpgradeNetInput: legacy input fields become layer ``input`` of type Input, first in the net."""
    if len(net.input_shape) or len(net.input_dim):
        inputs = list(net.input)
        if len(net.input_shape) and len(net.input_shape) < len(inputs):
            raise SpecError(f"{where}: {len(inputs)} legacy inputs but {len(net.input_shape)} input_shape "
                            f"entries -- give one input_shape per input")
        if not len(net.input_shape) and len(net.input_dim) < 4 * len(inputs):
            raise SpecError(f"{where}: {len(inputs)} legacy inputs need {4 * len(inputs)} input_dim values "
                            f"(N, C, H, W each), the net gives {len(net.input_dim)}")
        layer = net.layer.add()
        layer.name = "input"
        layer.type = "Input"
        for i, name in enumerate(inputs):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if len(net.input_shape):
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        # Move it to the front; the other layers keep their order.
        reordered = NetParameter()
        reordered.layer.extend([net.layer[-1]] + list(net.layer)[:-1])
        del net.layer[:]
        net.layer.extend(reordered.layer)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


# ----------------------------------------------------------------------------------------------
# Solver

def load_solver_param(source):
    """SolverParameter from prototxt text or a path, upgraded as ReadSolverParamsFromTextFileOrDie.

    ``solver_type`` (enum) becomes ``type`` (string).  For a path, an absent ``snapshot_prefix``
    becomes the path without its extension and a directory prefix becomes ``<dir>/<file stem>``;
    for text (no file name) ``snapshot_prefix`` is left as written.
    """
    if isinstance(source, SolverParameter):
        solver = SolverParameter()
        solver.CopyFrom(source)
        where, path = "<SolverParameter>", None
    else:
        text, where, path = _read_source(source, "solver prototxt")
        solver = _parse_text(text, SolverParameter(), where, "solver prototxt")
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise SpecError(f"{where}: Failed to upgrade solver: old solver_type field (enum) and new type "
                            f"field (string) cannot be both specified in solver proto text.")
        log.info("Attempting to upgrade input file specified using deprecated 'solver_type' field "
                 "(enum)': %s", where)
        solver.type = SOLVER_TYPE_NAMES[solver.solver_type]
        solver.ClearField("solver_type")
    if path is not None:
        if not solver.HasField("snapshot_prefix"):
            solver.snapshot_prefix = os.path.splitext(path)[0]
            log.info("snapshot_prefix was not specified and is set to %s", solver.snapshot_prefix)
        elif os.path.isdir(solver.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(path))[0]
            solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
            log.info("snapshot_prefix was a directory and is replaced to %s", solver.snapshot_prefix)
    return solver

