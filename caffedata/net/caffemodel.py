"""``.caffemodel`` weights: read (V0/V1/V2, legacy 4-D shapes, double_data), write as Caffe's
``Net::ToProto`` + ``WriteProtoToBinaryFile`` do, and copy by layer name with Caffe's
``CopyTrainedLayersFrom`` checks.
"""
import logging
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from caffedata.errors import DatabaseError, SpecError
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
        raise SpecError(f"{path}: an HDF5 weights file (.caffemodel.h5); caffedata reads binary-protobuf "
                        f".caffemodel files -- save the net with Net::Save/`net.save` instead of save_hdf5")
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
    """Layers of a ``.caffemodel`` (V2 ``layer`` or V1/V0 ``layers``, upgraded) in file order."""
    net = read_net_binary(path)
    layers = []
    for i, layer in enumerate(net.layer):
        where = f"{os.fspath(path)}: layer '{layer.name}'"
        blobs = [blob_array(b, f"{where} blob {j}") for j, b in enumerate(layer.blobs)]
        legacy = [blob_shape(b) if any(b.HasField(f) for f in _LEGACY) else None for b in layer.blobs]
        layers.append(CaffeModelLayer(layer.name, layer.type, blobs, legacy))
    return layers


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


def copy_trained_layers(target_shapes, source_layers, source_name="<weights>"):
    """Weights for the target net from ``source_layers`` (``read_caffemodel``'s list), as Caffe copies them.

    ``target_shapes`` maps every layer name of the target net (parameterless layers with ``[]``) to the
    shapes of its parameter blobs.  Each source layer goes to the target layer of the same name (type is
    ignored); a source layer the net lacks is skipped with a note; blob counts must match and each blob's
    shape must equal the target's (legacy 4-D shapes compared right-aligned).  Returns
    ``(weights, notes)``: ``weights`` maps layer name -> list of float32 arrays in the target shapes;
    target layers with parameters that the file lacks are absent (they keep their initial values) and
    noted.  Source layers of type Split without blobs are Caffe's machinery and are skipped silently.
    """
    weights, notes = {}, []
    for source in source_layers:
        if source.name not in target_shapes:
            if not (source.type == "Split" and not source.blobs):
                notes.append(f"Ignoring source layer {source.name}")
                log.info("Ignoring source layer %s", source.name)
            continue
        targets = list(target_shapes[source.name])
        if len(targets) != len(source.blobs):
            raise SpecError(f"{source_name}: Incompatible number of blobs for layer {source.name} (the "
                            f"weights file has {len(source.blobs)}, the net's layer has {len(targets)}) "
                            f"-- rename the layer to learn it from scratch")
        arrays = []
        for j, (target, blob) in enumerate(zip(targets, source.blobs)):
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

def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field_number, payload):
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def encode_blob(data, diff=None):
    """A BlobProto as Blob<float>::ToProto serializes it: packed float ``data`` (5), ``diff`` (6), then
    ``shape`` (7) with packed int64 dims; no shape field for a 0-axis blob.  Built directly from the
    array bytes because going through protobuf's repeated-float container is slow for large nets."""
    data = np.asarray(data)
    out = b""
    flat = np.ascontiguousarray(data, dtype="<f4").ravel()
    if flat.size:
        out += _length_delimited(5, flat.tobytes())
    if diff is not None:
        flat_diff = np.ascontiguousarray(diff, dtype="<f4").ravel()
        if flat_diff.size != flat.size:
            raise SpecError(f"diff of shape {np.shape(diff)} does not match data of shape {data.shape}")
        if flat_diff.size:
            out += _length_delimited(6, flat_diff.tobytes())
    if data.ndim:
        dims = b"".join(_varint(int(d)) for d in data.shape)
        out += _length_delimited(7, _length_delimited(1, dims))
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
        body += _length_delimited(_BLOBS_FIELD, encode_blob(array, diff))
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
        out.append(_length_delimited(NetParameter.DESCRIPTOR.fields_by_name["layer"].number,
                                     encode_layer(setup, blobs, layer_diffs)))
    return b"".join(out)


def _umask():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_caffemodel(path, net_param, params, write_diff=False, diffs=None):
    """Write a ``.caffemodel`` exactly as Caffe's ``Net::Save`` would for this net and these weights.

    ``net_param`` is the filtered V2 net; ``params`` maps layer name -> list of arrays (written as
    float32); with ``write_diff``, ``diffs`` (same layout) are written too (zeros where not given, as a
    fresh Caffe net holds).  The file is written to a temporary file beside ``path`` and renamed over it.
    """
    raw = net_to_proto_bytes(net_param, params, write_diff, diffs)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot write the weights file ({exc.strerror}) -- check that the "
                            f"directory exists and is writable") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved model is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


__all__ = ["CaffeModelLayer", "read_caffemodel", "read_net_binary", "write_caffemodel", "copy_trained_layers",
           "net_to_proto_bytes", "blob_array", "blob_shape", "shape_equals", "encode_blob", "encode_layer"]
