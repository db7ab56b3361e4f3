"""``.caffemodel`` weights: read (V0/V1/V2, legacy 4-D shapes, double_data), write as Caffe's
``Net::ToProto`` + ``WriteProtoToBinaryFile`` do, and copy by layer name with Caffe's
``CopyTrainedLayersFrom`` checks.
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from caffedata.errors import DatabaseError, SpecError
from caffedata.formats.atomic import atomic_path
from caffedata.formats.wire import length_delimited, varint
from caffedata.net.graph import insert_splits, setup_layer_copy
from caffedata.net.upgrade import upgrade_net_param
from caffedata.proto import LayerParameter, NetParameter

log = logging.getLogger("caffedata.net")

_LEGACY = ("num", "channels", "height", "width")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class CaffeModelLayer:
    """One layer of a weights file: its name, type and parameter blobs (float32, Caffe's shapes)."""
    name: str
    type: str
    blobs: list = field(default_factory=list)
    # For each blob, the legacy (num, channels, height, width) if the file used those fields, else None.
    legacy_shapes: list = field(default_factory=list)
    # "binaryproto", or "hdf5" (Net::ToHDF5 files: no types, blob j is dataset "j", a blob shared with
    # another layer is not stored, so ``blobs`` holds None where dataset "j" is absent).
    source_format: str = "binaryproto"


# ----------------------------------------------------------------------------------------------
# Reading

def blob_shape(blob):
    """Blob::FromProto's shape: legacy 4-D fields if any is set, else ``shape.dim``."""
    if any(blob.HasField(f) for f in _LEGACY):
        return tuple(int(getattr(blob, f)) for f in _LEGACY)
    return tuple(int(d) for d in blob.shape.dim)


def blob_array(blob, where):
    """The blob's values as float32 of its shape; ``double_data`` wins over ``data``, as in Caffe."""
    shape = blob_shape(blob)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    values = blob.double_data if len(blob.double_data) else blob.data
    if len(values) != count:
        raise SpecError(f"{where}: blob of shape {shape} must hold {count} values, it holds {len(values)} "
                        f"-- the weights file is damaged or was not written by Caffe")
    dtype = np.float64 if len(blob.double_data) else np.float32
    return np.array(values, dtype=dtype).astype(np.float32, copy=False).reshape(shape)


def read_net_binary(path):
    """The NetParameter in a binary ``.caffemodel``, upgraded (ReadNetParamsFromBinaryFileOrDie)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot read the weights file ({exc.strerror})") from exc
    if raw.startswith(_HDF5_MAGIC):
        raise SpecError(f"{path}: an HDF5 weights file (.caffemodel.h5), not a NetParameter -- read it with "
                        f"read_caffemodel")
    net = NetParameter()
    try:
        net.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise SpecError(f"{path}: not a binary .caffemodel, or truncated ({exc}) -- the file must be "
                        f"the NetParameter Caffe's Net::Save / `caffe train` snapshots write") from None
    if not len(net.layer) and not len(net.layers):
        raise SpecError(f"{path}: holds no layers ({len(raw)} bytes) -- not a .caffemodel (a text "
                        f"prototxt, a mean .binaryproto or an empty file?)")
    return upgrade_net_param(net, path)


def read_caffemodel(path):
    """Layers of a weights file in file order.

    A binary ``.caffemodel`` (V2 ``layer`` or V1/V0 ``layers``, upgraded as Caffe does) or, recognised
    by content as Caffe does, an HDF5 file written by Net::ToHDF5 (``.caffemodel.h5``).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_HDF5_MAGIC))
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot read the weights file ({exc.strerror})") from exc
    if magic == _HDF5_MAGIC:
        return _read_hdf5(path)
    net = read_net_binary(path)
    layers = []
    for layer in net.layer:
        where = f"{path}: layer '{layer.name}'"
        blobs = [blob_array(b, f"{where} blob {j}") for j, b in enumerate(layer.blobs)]
        legacy = [blob_shape(b) if any(b.HasField(f) for f in _LEGACY) else None for b in layer.blobs]
        layers.append(CaffeModelLayer(layer.name, layer.type, blobs, legacy))
    return layers


def _read_hdf5(path):
    """Net::ToHDF5's layout: group ``data``, a subgroup per layer, datasets "0", "1", ... (float)."""
    try:
        import h5py
    except ImportError:
        raise SpecError(f"{path}: an HDF5 weights file; reading it needs h5py (pip install h5py)") from None
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or not isinstance(f["data"], h5py.Group):
                raise SpecError(f"{path}: HDF5 file without a 'data' group -- not written by Net::ToHDF5")
            layers = []
            for name in f["data"]:  # link-name order, as Caffe's hdf5_get_name_by_idx walks it
                group = f["data"][name]
                if not isinstance(group, h5py.Group):
                    raise SpecError(f"{path}: /data/{name} is not a group -- not written by Net::ToHDF5")
                indices = {}
                for key in group:
                    if not key.isdigit() or not isinstance(group[key], h5py.Dataset):
                        raise SpecError(f"{path}: /data/{name}/{key} is not a blob dataset named by its index")
                    indices[int(key)] = np.asarray(group[key][()], dtype=np.float32)
                blobs = [indices.get(j) for j in range(max(indices) + 1)] if indices else []
                layers.append(CaffeModelLayer(name, "", blobs, [None] * len(blobs), "hdf5"))
            return layers
    except OSError as exc:
        raise SpecError(f"{path}: unreadable HDF5 weights file ({exc}) -- truncated or damaged") from None


# ----------------------------------------------------------------------------------------------
# Copying by name (Net::CopyTrainedLayersFrom)

def _shape_string(shape):
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    return " ".join(str(d) for d in shape) + f" ({count})"


def shape_equals(target_shape, source_shape, legacy):
    """Blob::ShapeEquals: legacy 4-D source shapes match a target right-aligned and padded with 1s."""
    target_shape = tuple(int(d) for d in target_shape)
    if legacy:
        return len(target_shape) <= 4 and (1,) * (4 - len(target_shape)) + target_shape == tuple(source_shape)
    return target_shape == tuple(source_shape)


def copy_trained_layers(target_shapes, source_layers, source_name="<weights>", shared=()):
    """Weights for the target net from ``source_layers`` (``read_caffemodel``'s list), as Caffe copies them.

    ``target_shapes`` maps every layer name of the target net (parameterless layers with ``[]``) to the
    shapes of its parameter blobs.  Each source layer goes to the target layer of the same name (type is
    ignored); a source layer the net lacks is skipped with a note; blob counts must match and each blob's
    shape must equal the target's (legacy 4-D shapes compared right-aligned).  Returns
    ``(weights, notes)``: ``weights`` maps layer name -> list of float32 arrays in the target shapes;
    target layers with parameters that the file lacks are absent (they keep their initial values) and
    noted.  Source layers of type Split without blobs are Caffe's machinery and are skipped silently.

    HDF5 sources follow CopyTrainedLayersFromHDF5: shapes must match exactly, and a blob the file does
    not store is allowed only for a parameter that shares another layer's (``shared``: a set of
    (layer name, index) pairs that are not owners); its entry in the result is None.
    """
    weights, notes = {}, []
    shared = set(shared)
    for source in source_layers:
        if source.name not in target_shapes:
            if not (source.type == "Split" and not source.blobs):
                notes.append(f"Ignoring source layer {source.name}")
                log.info("Ignoring source layer %s", source.name)
            continue
        targets = list(target_shapes[source.name])
        hdf5 = source.source_format == "hdf5"
        count_error = SpecError(f"{source_name}: Incompatible number of blobs for layer {source.name} (the "
                                f"weights file has {len(source.blobs)}, the net's layer has {len(targets)}) "
                                f"-- rename the layer to learn it from scratch")
        if len(source.blobs) > len(targets) or (not hdf5 and len(source.blobs) != len(targets)):
            raise count_error
        arrays = []
        for j, target in enumerate(targets):
            blob = source.blobs[j] if j < len(source.blobs) else None
            if blob is None:  # HDF5 only: sharers are not stored
                if (source.name, j) not in shared:
                    raise count_error
                arrays.append(None)
                continue
            legacy = source.legacy_shapes[j] if j < len(source.legacy_shapes) else None
            if not shape_equals(target, blob.shape, legacy is not None):
                raise SpecError(f"{source_name}: Cannot copy param {j} weights from layer '{source.name}'; "
                                f"shape mismatch.  Source param shape is {_shape_string(blob.shape)}; "
                                f"target param shape is {_shape_string(tuple(target))}. To learn this "
                                f"layer's parameters from scratch rather than copying from a saved net, "
                                f"rename the layer.")
            arrays.append(np.ascontiguousarray(blob, dtype=np.float32).reshape(tuple(target)))
        weights[source.name] = arrays
    for name, shapes in target_shapes.items():
        if len(shapes) and name not in weights:
            notes.append(f"Layer {name} has no weights in {source_name}; it keeps its initial values")
            log.info("Layer %s has no weights in %s; it keeps its initial values", name, source_name)
    return weights, notes


# ----------------------------------------------------------------------------------------------
# Writing (Net::ToProto, Blob<float>::ToProto)

def encode_blob(data, diff=None):
    """A BlobProto as Blob<float>::ToProto serializes it: packed float ``data`` (5), ``diff`` (6), then
    ``shape`` (7) with packed int64 dims; no shape field for a 0-axis blob.  Built directly from the
    array bytes because going through protobuf's repeated-float container is slow for large nets."""
    data = np.asarray(data)
    out = b""
    flat = np.ascontiguousarray(data, dtype="<f4").ravel()
    if flat.size:
        out += length_delimited(5, flat.tobytes())
    if diff is not None:
        flat_diff = np.ascontiguousarray(diff, dtype="<f4").ravel()
        if flat_diff.size != flat.size:
            raise SpecError(f"diff of shape {np.shape(diff)} does not match data of shape {data.shape}")
        if flat_diff.size:
            out += length_delimited(6, flat_diff.tobytes())
    if data.ndim:
        dims = b"".join(varint(int(d)) for d in data.shape)
        out += length_delimited(7, length_delimited(1, dims))
    return out


_BLOBS_FIELD = LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number  # 7


def encode_layer(layer, blobs, diffs=None):
    """A LayerParameter with ``blobs`` replaced, serialized in field-number order as C++ protobuf does."""
    before, after = LayerParameter(), LayerParameter()
    before.CopyFrom(layer)
    after.CopyFrom(layer)
    for descriptor, _ in layer.ListFields():
        if descriptor.number >= _BLOBS_FIELD:
            before.ClearField(descriptor.name)
        if descriptor.number <= _BLOBS_FIELD:
            after.ClearField(descriptor.name)
    body = before.SerializeToString()
    for j, array in enumerate(blobs):
        diff = diffs[j] if diffs is not None else None
        body += length_delimited(_BLOBS_FIELD, encode_blob(array, diff))
    return body + after.SerializeToString()


def net_to_proto_bytes(net_param, params, write_diff=False, diffs=None):
    """Bytes of the NetParameter Caffe's Net::ToProto(write_diff) gives for the filtered ``net_param``.

    Every runtime layer in order (Split layers included), each with its LayerParameter as Caffe's layer
    holds it after setup (``phase`` set, ``loss_weight: 1`` on loss layers, BatchNorm's
    ``param { lr_mult: 0 }``) and its blobs from ``params`` (layer name -> list of arrays; a layer not in
    ``params`` is written without blobs).  Only ``name`` and ``layer`` are written at net level.
    """
    if len(net_param.layers):
        raise SpecError("write_caffemodel needs a V2 net; upgrade V1 `layers` with load_net_param first")
    runtime, origin = insert_splits(net_param)
    names = {layer.name for layer in net_param.layer}
    unknown = sorted(set(params) - names)
    if unknown:
        raise SpecError(f"params for layers the net does not have: {', '.join(unknown)} -- check the "
                        f"layer names (after NetState filtering)")
    diffs = diffs or {}
    head = NetParameter()
    head.name = net_param.name
    out = [head.SerializeToString()]
    for i, layer in enumerate(runtime.layer):
        blobs = list(params.get(layer.name, ())) if origin[i] is not None else []
        setup = setup_layer_copy(layer, len(blobs), net_param.state.phase)
        layer_diffs = None
        if write_diff:
            layer_diffs = list(diffs.get(layer.name, [np.zeros_like(np.asarray(b)) for b in blobs]))
            if len(layer_diffs) != len(blobs):
                raise SpecError(f"layer '{layer.name}': {len(layer_diffs)} diffs for {len(blobs)} blobs")
        out.append(length_delimited(NetParameter.DESCRIPTOR.fields_by_name["layer"].number,
                                     encode_layer(setup, blobs, layer_diffs)))
    return b"".join(out)


def write_caffemodel(path, net_param, params, write_diff=False, diffs=None):
    """Write a ``.caffemodel`` exactly as Caffe's ``Net::Save`` would for this net and these weights.

    ``net_param`` is the filtered V2 net; ``params`` maps layer name -> list of arrays (written as
    float32); with ``write_diff``, ``diffs`` (same layout) are written too (zeros where not given, as a
    fresh Caffe net holds).  The file is written to a temporary file beside ``path`` and renamed over it.
    """
    raw = net_to_proto_bytes(net_param, params, write_diff, diffs)
    with atomic_path(path, "weights file") as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)
    return os.fspath(path)


def write_caffemodel_hdf5(path, net_param, params, write_diff=False, diffs=None):
    """Write weights as Caffe's ``Net::ToHDF5`` does (``snapshot_format: HDF5``, ``.caffemodel.h5``).

    Group ``data`` with a subgroup per runtime layer (Split layers included, even without blobs) and a
    float dataset ``"j"`` per parameter blob that owns itself (a shared blob is stored once, by its
    owner); with ``write_diff`` a ``diff`` group holds every blob's diff (zeros where not given).
    Written to a temporary file beside ``path`` and renamed over it.
    """
    try:
        import h5py
    except ImportError:
        raise SpecError("writing HDF5 weights needs h5py (pip install h5py)") from None
    from caffedata.net.graph import build_graph

    names = {layer.name for layer in net_param.layer}
    unknown = sorted(set(params) - names)
    if unknown:
        raise SpecError(f"params for layers the net does not have: {', '.join(unknown)} -- check the "
                        f"layer names (after NetState filtering)")
    graph = build_graph(net_param, param_count=lambda layer, _: len(params[layer.name])
                        if layer.name in params else None)
    diffs = diffs or {}
    with atomic_path(path, "weights file") as tmp:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff_group = f.create_group("diff") if write_diff else None
            for layer in graph.runtime_layers:
                blobs = list(params.get(layer.name, ())) if layer.type != "Split" else []
                group = data.create_group(layer.name)
                layer_diff = diff_group.create_group(layer.name) if write_diff else None
                for j, array in enumerate(blobs):
                    array = np.asarray(array, dtype=np.float32)
                    if graph.param_owners.get((layer.name, j), (layer.name, j)) == (layer.name, j):
                        group.create_dataset(str(j), data=array)
                    if write_diff:
                        given = diffs.get(layer.name)
                        diff = np.zeros_like(array) if given is None else np.asarray(given[j], np.float32)
                        layer_diff.create_dataset(str(j), data=diff)
    return os.fspath(path)


__all__ = ["CaffeModelLayer", "read_caffemodel", "read_net_binary", "write_caffemodel", "write_caffemodel_hdf5",
           "copy_trained_layers", "net_to_proto_bytes", "blob_array", "blob_shape", "shape_equals",
           "encode_blob", "encode_layer"]
