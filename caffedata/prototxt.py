"""Prototxt text to a ``DataLayerSpec``.  Touches no database.

Accepts what users hold: a NetParameter text with one (or several) ``layer {}``
entries as in the MXNet FAQ, a bare LayerParameter body, and the legacy V1
``layers { type: DATA ... }`` form, whose deprecated ``data_param`` transform
fields Caffe's upgrade moves into ``transform_param``.
"""
import os

from google.protobuf import text_format

from .errors import SpecError
from .proto import LayerParameter, NetParameter
from .spec import Backend, DataLayerSpec, Phase, TransformSpec

DATA_LAYER_TYPES = ("Data",)
_V1_DATA = 5  # V1LayerParameter.LayerType.DATA
_V1_NAMES = {5: "Data", 9: "HDF5Data", 12: "ImageData", 24: "WindowData", 29: "MemoryData",
             32: "DummyData"}


PROTOTXT_SUFFIXES = (".prototxt", ".pbtxt", ".txt")


def _looks_like_path(text):
    """A one-line argument without ``{`` and without ``field:`` text, or one ending in .prototxt."""
    if "{" in text or "\n" in text or not text.strip():
        return False
    return ":" not in text or text.lower().endswith(PROTOTXT_SUFFIXES)


def read_prototxt_arg(prototxt):
    """Text from a prototxt argument that may be the text itself or a path to it."""
    if isinstance(prototxt, os.PathLike):
        prototxt = os.fspath(prototxt)
    text = str(prototxt)
    if "{" not in text and os.path.isfile(text):
        try:
            with open(text) as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SpecError(f"{text}: cannot read the prototxt ({reason}) -- give a readable "
                            f"prototxt file or the prototxt text itself") from None
    if _looks_like_path(text):
        what = "is a folder, not a prototxt file" if os.path.isdir(text) else "no such file"
        raise SpecError(f"{text}: {what} -- give the path of a prototxt file (relative paths are "
                        f"resolved against {os.getcwd()}) or the prototxt text itself, e.g. "
                        f"'layer {{ type: \"Data\" ... }}'")
    return text


def parse_net(text):
    """NetParameter from text, or a NetParameter wrapping a bare layer body."""
    try:
        return text_format.Parse(text, NetParameter())
    except text_format.ParseError as net_error:
        try:
            layer = text_format.Parse(text, LayerParameter())
        except text_format.ParseError:
            raise SpecError(f"malformed prototxt: {net_error} -- expected `layer {{ type: \"Data\" "
                            f"... }}` in protobuf text format") from None
        net = NetParameter()
        net.layer.add().CopyFrom(layer)
        return net


def _phase_of(layer):
    """Caffe's rule: the layer's own phase, else the first include rule's phase, else TRAIN."""
    if layer.HasField("phase"):
        return Phase(layer.phase)
    for rule in layer.include:
        if rule.HasField("phase"):
            return Phase(rule.phase)
    return Phase.TRAIN


def _transform_spec(tp, phase):
    return TransformSpec(
        scale=tp.scale, mirror=tp.mirror, crop_size=tp.crop_size,
        mean_file=tp.mean_file if tp.HasField("mean_file") else None,
        mean_value=tuple(tp.mean_value), force_color=tp.force_color,
        force_gray=tp.force_gray, phase=phase).validate()


def _upgrade_v1(v1):
    """Caffe's UpgradeV1LayerParameter, for the fields a data layer uses."""
    layer = LayerParameter()
    layer.name = v1.name
    layer.type = _V1_NAMES.get(v1.type, str(v1.type))
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.transform_param.CopyFrom(v1.transform_param)
    layer.data_param.CopyFrom(v1.data_param)
    dp, tp = v1.data_param, layer.transform_param
    # UpgradeNetDataTransformation: deprecated data_param fields move over.
    if dp.HasField("scale"):
        tp.scale = dp.scale
        layer.data_param.ClearField("scale")
    if dp.HasField("mean_file"):
        tp.mean_file = dp.mean_file
        layer.data_param.ClearField("mean_file")
    if dp.HasField("crop_size"):
        tp.crop_size = dp.crop_size
        layer.data_param.ClearField("crop_size")
    if dp.HasField("mirror"):
        tp.mirror = dp.mirror
        layer.data_param.ClearField("mirror")
    return layer


def select_data_layer(net, phase=None):
    """The one data layer of ``net`` (for ``phase``, if several)."""
    if len(net.layer) and len(net.layers):
        raise SpecError("prototxt mixes `layer` and legacy `layers` entries; Caffe refuses this -- "
                        "use one form")
    layers = list(net.layer) or [_upgrade_v1(v1) for v1 in net.layers]
    if not layers:
        raise SpecError("prototxt holds no layer -- write `layer { type: \"Data\" ... }`")
    candidates = layers
    if len(layers) > 1:
        candidates = [l for l in layers if l.type in DATA_LAYER_TYPES]
        if phase is not None:
            candidates = [l for l in candidates if _phase_of(l) == phase]
        if len(candidates) != 1:
            raise SpecError(f"prototxt holds {len(layers)} layers and {len(candidates)} matching data "
                            f"layers -- pass exactly one `layer {{ type: \"Data\" ... }}`")
    return candidates[0]


def data_layer_spec(prototxt, phase=None):
    """Parse ``prototxt`` (text or path) into a DataLayerSpec."""
    layer = select_data_layer(parse_net(read_prototxt_arg(prototxt)), phase)
    if layer.type not in DATA_LAYER_TYPES:
        raise SpecError(f"layer type {layer.type!r} is not a data layer caffedata can read -- "
                        f"CaffeDataIter supports type: \"Data\" (LMDB/LevelDB of Datum records)")
    dp = layer.data_param
    if not dp.source:
        raise SpecError("data_param.source is not set -- give the path of the LMDB/LevelDB")
    if dp.batch_size <= 0:
        raise SpecError("data_param.batch_size must be > 0 (Caffe has no default) -- set batch_size")
    if len(layer.top) > 2:
        import warnings

        warnings.warn(f"layer has {len(layer.top)} tops; only the first two (data, label) are used",
                      stacklevel=3)
    phase_ = _phase_of(layer)
    return DataLayerSpec(
        source=dp.source, batch_size=dp.batch_size, backend=Backend(dp.backend),
        prefetch=dp.prefetch, transform=_transform_spec(layer.transform_param, phase_),
        name=layer.name, tops=tuple(layer.top) or ("data", "label"))
