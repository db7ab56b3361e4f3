"""Prototxt text to a ``DataLayerSpec``.  Touches no database.

Accepts what users hold: a NetParameter text with one (or several) ``layer {}``
entries as in the MXNet FAQ, a bare LayerParameter body, and the legacy V1
``layers { type: DATA ... }`` form, whose deprecated ``data_param`` transform
fields Caffe's upgrade moves into ``transform_param``.
"""
import os

from google.protobuf import text_format

from ..errors import SpecError
from ..proto import LayerParameter, NetParameter
from .spec import (Backend, DataLayerSpec, DummyDataSpec, HDF5DataSpec, ImageDataSpec, MemoryDataSpec,
                   Phase, TransformSpec)

DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "DummyData")
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
    for name in ("data_param", "image_data_param", "hdf5_data_param", "memory_data_param",
                 "dummy_data_param"):
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    tp = layer.transform_param
    # UpgradeNetDataTransformation: the deprecated data_param (and ImageData's) copies move over.
    for param in (layer.data_param, layer.image_data_param):
        for field_name in ("scale", "mean_file", "crop_size", "mirror"):
            if param.HasField(field_name):
                setattr(tp, field_name, getattr(param, field_name))
                param.ClearField(field_name)
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
            hint = "pass exactly one data layer, or choose one with phase='TRAIN' / 'TEST'"
            if not candidates and any(l.type == "Input" for l in layers):
                hint = ("an Input layer has no data source of its own: feed its arrays yourself "
                        "(e.g. caffedata.Net(...).forward(data=...))")
            raise SpecError(f"prototxt holds {len(layers)} layers and {len(candidates)} matching data "
                            f"layers ({', '.join(DATA_LAYER_TYPES)}) -- {hint}")
    return candidates[0]


def data_layer_spec(prototxt, phase=None):
    """Parse ``prototxt`` (text or path) into a DataLayerSpec (a `Data` layer only; see layer_spec)."""
    layer = select_data_layer(parse_net(read_prototxt_arg(prototxt)), phase)
    if layer.type != "Data":
        raise SpecError(f"layer type {layer.type!r} is not a data layer of type \"Data\" (LMDB/LevelDB "
                        f"of Datum records) -- caffedata.DataLayer and CaffeDataIter read every data "
                        f"layer type ({', '.join(DATA_LAYER_TYPES)})")
    return _data_spec(layer)


def _data_spec(layer):
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


def _tops(layer, default):
    return tuple(layer.top) or default


def _positive(value, what):
    if value <= 0:
        raise SpecError(f"{what} must be > 0 -- set it in the prototxt")
    return value


def _blob_shape(shape_msg):
    return tuple(int(d) for d in shape_msg.dim)


def _filler_dict(filler):
    from ..proto import POOL

    norm = POOL.FindEnumTypeByName("caffe.FillerParameter.VarianceNorm")
    return {"type": filler.type or "constant", "value": filler.value, "min": filler.min,
            "max": filler.max, "mean": filler.mean, "std": filler.std, "sparse": filler.sparse,
            "variance_norm": norm.values_by_number[filler.variance_norm].name}


def _dummy_spec(layer, phase):
    p = layer.dummy_data_param
    tops = _tops(layer, ("data",))
    n = len(tops)
    legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
    if len(p.shape) and any(legacy):
        raise SpecError(f"DummyData layer '{layer.name}': give `shape` or num/channels/height/width, "
                        f"not both (Caffe refuses this too)")
    if len(p.shape):
        shapes = [_blob_shape(s) for s in p.shape]
    elif any(legacy):
        for field_name, values in zip(("num", "channels", "height", "width"), legacy):
            if len(values) not in (1, n):
                raise SpecError(f"DummyData layer '{layer.name}': {len(values)} `{field_name}` values for "
                                f"{n} tops -- give 1 or one per top")
        shapes = [tuple(v[i if len(v) > 1 else 0] for v in legacy) for i in range(n)]
    else:
        raise SpecError(f"DummyData layer '{layer.name}' has no shape -- add `shape {{ dim: ... }}`")
    if len(shapes) not in (1, n):
        raise SpecError(f"DummyData layer '{layer.name}': {len(shapes)} shapes for {n} tops -- give 1 or "
                        f"one per top")
    shapes = shapes * n if len(shapes) == 1 else shapes
    for shape in shapes:
        if not shape or min(shape) <= 0:
            raise SpecError(f"DummyData layer '{layer.name}': shape {shape} must have positive dims, the "
                            f"first being the batch size")
    if len({s[0] for s in shapes}) != 1:
        raise SpecError(f"DummyData layer '{layer.name}': tops have different batch sizes "
                        f"{[s[0] for s in shapes]} -- a batch needs one")
    fillers = [_filler_dict(f) for f in p.data_filler] or [_filler_dict(p.data_filler.add())]
    if len(fillers) not in (1, n):
        raise SpecError(f"DummyData layer '{layer.name}': {len(fillers)} data_filler for {n} tops -- "
                        f"give 0, 1 or one per top")
    fillers = fillers * n if len(fillers) == 1 else fillers
    return DummyDataSpec(shapes=tuple(shapes), fillers=tuple(fillers), name=layer.name, tops=tops,
                         phase=phase)


def layer_spec(prototxt, phase=None):
    """Parse ``prototxt`` (text or path) into the spec of its data layer, whatever its type.

    Data -> DataLayerSpec, ImageData -> ImageDataSpec, HDF5Data -> HDF5DataSpec,
    MemoryData -> MemoryDataSpec, DummyData -> DummyDataSpec.
    """
    layer = select_data_layer(parse_net(read_prototxt_arg(prototxt)), phase)
    phase_ = _phase_of(layer)
    if layer.type == "Data":
        return _data_spec(layer)
    where = f"{layer.type} layer '{layer.name}'"
    if layer.type == "ImageData":
        p = layer.image_data_param
        if not p.source:
            raise SpecError(f"{where}: image_data_param.source is not set -- give the list file")
        if bool(p.new_height) != bool(p.new_width):
            raise SpecError(f"{where}: new_height and new_width must be both set or both 0 (Caffe "
                            f"refuses one alone)")
        return ImageDataSpec(
            source=p.source, batch_size=_positive(p.batch_size, f"{where}: batch_size"),
            root_folder=p.root_folder, new_height=p.new_height, new_width=p.new_width,
            is_color=p.is_color, shuffle=p.shuffle, rand_skip=p.rand_skip,
            transform=_transform_spec(layer.transform_param, phase_), name=layer.name,
            tops=_tops(layer, ("data", "label")))
    if layer.type == "HDF5Data":
        p = layer.hdf5_data_param
        if layer.HasField("transform_param"):
            raise SpecError(f"{where}: HDF5Data does not transform data (Caffe refuses "
                            f"transform_param here) -- remove transform_param")
        if not p.source:
            raise SpecError(f"{where}: hdf5_data_param.source is not set -- give the text file "
                            f"listing the .h5 files")
        if not layer.top:
            raise SpecError(f"{where} has no top -- each top names the HDF5 dataset it reads")
        return HDF5DataSpec(source=p.source, batch_size=_positive(p.batch_size, f"{where}: batch_size"),
                            shuffle=p.shuffle, name=layer.name, tops=tuple(layer.top), phase=phase_)
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return MemoryDataSpec(
            batch_size=_positive(p.batch_size, f"{where}: batch_size"),
            channels=_positive(p.channels, f"{where}: channels"),
            height=_positive(p.height, f"{where}: height"), width=_positive(p.width, f"{where}: width"),
            transform=_transform_spec(layer.transform_param, phase_), name=layer.name,
            tops=_tops(layer, ("data", "label")))
    if layer.type == "DummyData":
        return _dummy_spec(layer, phase_)
    raise SpecError(f"layer type {layer.type!r} is not a data layer caffedata can read -- use one of "
                    f"{', '.join(DATA_LAYER_TYPES)}")
