"""Mean images: Caffe ``BlobProto`` files (``mean.binaryproto``) to and from numpy.

Reading parses the protobuf wire format directly and views the packed float
payload with ``np.frombuffer``, so loading a mean peaks at about twice its file
size in memory (the file's bytes and one float32 array), where protobuf's
Python objects cost 3 to 12 times (by protobuf backend).  Files in a layout the direct reader
does not cover (unpacked floats, groups, truncation) go through protobuf, which
gives the same values or the same error.
"""
import math
from collections import namedtuple

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import SpecError
from ..proto import BlobProto
from .wire import varint

__all__ = ["Blob", "parse_blob_bytes", "read_blob_file", "blob_to_array", "load_mean_file",
           "mean_to_blobproto_bytes"]

_LEGACY = ("num", "channels", "height", "width")
INT_MAX = (1 << 31) - 1  # Caffe's Blob::Reshape checks count <= INT_MAX

Blob = namedtuple("Blob", "array legacy values_from")
Blob.__doc__ = """A parsed BlobProto: float32 ``array`` in the shape Caffe gives it, whether the
shape came from the ``legacy`` num/channels/height/width fields, and which field held the
values (``"data"`` or ``"double_data"``)."""


def _checked_count(shape, path):
    """C*H*W... as Caffe's Reshape allows it: no negative dimension, at most INT_MAX values."""
    for d in shape:
        if d < 0:
            raise SpecError(f"{path}: blob shape {tuple(shape)} has a negative dimension -- the "
                            f"mean file is corrupt; rewrite it with `caffedata mean`")
    count = math.prod(shape)
    if count > INT_MAX:
        raise SpecError(f"{path}: blob shape {tuple(shape)} holds {count} values, over Caffe's "
                        f"limit of 2^31-1 -- the mean file is corrupt; rewrite it with "
                        f"`caffedata mean`")
    return count


def _finish(shape, values, legacy, from_double, path):
    count = _checked_count(shape, path)
    if len(values) != count:
        raise SpecError(f"{path}: blob of shape {tuple(shape)} must hold {count} values, it holds "
                        f"{len(values)} -- the mean file is truncated or not a BlobProto")
    array = np.asarray(values, dtype=np.float64 if from_double else np.float32)
    with np.errstate(over="ignore"):  # a double beyond float's range becomes inf, as in Caffe's cast
        array = array.astype(np.float32, copy=False).reshape(tuple(shape))
    return Blob(array, legacy, "double_data" if from_double else "data")


def blob_to_array(blob, path="<blob>"):
    """Caffe's Blob::FromProto: legacy 4-D fields win over ``shape``; ``double_data`` wins over ``data``."""
    legacy = any(blob.HasField(f) for f in _LEGACY)
    shape = [getattr(blob, f) for f in _LEGACY] if legacy else list(blob.shape.dim)
    from_double = len(blob.double_data) > 0
    return _finish(shape, blob.double_data if from_double else blob.data, legacy, from_double,
                   path).array


class _NotDirect(Exception):
    """The bytes are outside what the direct reader handles: let protobuf decide."""


def _varint(raw, pos):
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise _NotDirect
        b = raw[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7


def _tag(raw, pos):
    """A field tag; protobuf refuses tags longer than 5 bytes or over 32 bits, so those go to it."""
    tag, end = _varint(raw, pos)
    if end - pos > 5 or tag > 0xFFFFFFFF:
        raise _NotDirect
    return tag, end


def _length(raw, pos):
    """A length prefix; protobuf refuses ones longer than 5 bytes or over 2^31 - 1."""
    n, end = _varint(raw, pos)
    if end - pos > 5 or n > 0x7FFFFFFF:
        raise _NotDirect
    return n, end


def _signed(value, bits):
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _skip(raw, pos, wire):
    if wire == 0:
        return _varint(raw, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        n, pos = _length(raw, pos)
        return pos + n
    if wire == 5:
        return pos + 4
    raise _NotDirect  # groups


def _shape_dims(raw, start, end):
    """BlobShape's ``dim`` (repeated int64, packed or not) from raw[start:end]."""
    dims, pos = [], start
    while pos < end:
        tag, pos = _tag(raw, pos)
        field, wire = tag >> 3, tag & 7
        if field == 1 and wire == 0:
            v, pos = _varint(raw, pos)
            dims.append(_signed(v, 64))
        elif field == 1 and wire == 2:
            n, pos = _length(raw, pos)
            stop = pos + n
            if stop > end:
                raise _NotDirect
            while pos < stop:
                v, pos = _varint(raw, pos)
                dims.append(_signed(v, 64))
            if pos != stop:
                raise _NotDirect
        else:
            pos = _skip(raw, pos, wire)
        if pos > end:
            raise _NotDirect
    return dims


def _parse_direct(raw, path):
    legacy = {}
    chunks = {5: [], 8: []}  # data, double_data: (offset, length) of each packed run
    dims = None
    pos, n = 0, len(raw)
    while pos < n:
        tag, pos = _tag(raw, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0 or tag > 0xFFFFFFFF:
            raise _NotDirect
        if 1 <= field <= 4 and wire == 0:
            v, pos = _varint(raw, pos)
            legacy[field] = _signed(v, 32)  # int32: protobuf keeps the low 32 bits
        elif field in (5, 8) and wire == 2:
            length, pos = _length(raw, pos)
            if length % (4 if field == 5 else 8) or pos + length > n:
                raise _NotDirect
            chunks[field].append((pos, length))
            pos += length
        elif field == 7 and wire == 2:
            length, pos = _length(raw, pos)
            if pos + length > n:
                raise _NotDirect
            more = _shape_dims(raw, pos, pos + length)
            dims = more if dims is None else dims + more  # repeated sub-message fields merge
            pos += length
        elif field in (1, 2, 3, 4, 5, 7, 8):  # a known field with an unusual wire type
            raise _NotDirect
        elif field in (6, 9):  # diff / double_diff: never in a mean file; protobuf judges them
            raise _NotDirect
        else:
            pos = _skip(raw, pos, wire)
        if pos > n:
            raise _NotDirect
    from_double = bool(chunks[8]) and sum(length for _, length in chunks[8]) > 0
    field, dtype = (8, "<f8") if from_double else (5, "<f4")
    parts = [np.frombuffer(raw, dtype, length // np.dtype(dtype).itemsize, offset)
             for offset, length in chunks[field]]
    values = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts
                                               else np.empty(0, dtype))
    is_legacy = bool(legacy)
    shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if is_legacy else (dims or [])
    return _finish(shape, values, is_legacy, from_double, path)


def parse_blob_bytes(raw, path="<blob>"):
    """A Blob from serialized BlobProto bytes (SpecError naming ``path`` when invalid)."""
    try:
        return _parse_direct(raw, path)
    except _NotDirect:
        pass
    try:
        blob = BlobProto.FromString(raw)
    except DecodeError as exc:
        raise SpecError(f"{path}: not a binary BlobProto ({exc}) -- mean_file must be written by "
                        f"compute_image_mean or `caffedata mean`") from None
    legacy = any(blob.HasField(f) for f in _LEGACY)
    shape = [getattr(blob, f) for f in _LEGACY] if legacy else list(blob.shape.dim)
    from_double = len(blob.double_data) > 0
    return _finish(shape, blob.double_data if from_double else blob.data, legacy, from_double, path)


def read_blob_file(path, hint="check transform_param.mean_file"):
    """``(Blob, file size)`` of a .binaryproto; SpecError naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read mean_file ({exc.strerror}) -- {hint}") from None
    return parse_blob_bytes(raw, path), len(raw)


def load_mean_file(path):
    """The mean as Caffe's transformer sees it: float32 of shape (C, H, W).

    Caffe reads channels/height/width through the blob's legacy accessors
    (axes 1..3 with one-padding), so the blob must be (1, C, H, W)-shaped; a
    3-D (C, H, W) blob mis-maps in Caffe and is refused here with a clear error.
    """
    array = read_blob_file(path)[0].array
    if array.ndim != 4 or array.shape[0] != 1:
        raise SpecError(f"{path}: mean blob has shape {array.shape}; Caffe needs (1, C, H, W) -- "
                        f"rewrite it with `caffedata mean` or with legacy num=1 channels/height/width")
    return np.array(array[0], copy=True)  # writable, and frees the file's bytes


def mean_to_blobproto_bytes(mean_chw):
    """Serialize a (C, H, W) mean exactly as compute_image_mean does: legacy fields, packed data.

    The bytes are what protobuf writes (fields 1..4 as varints, then field 5
    packed), built directly so that no Python float objects are created.
    """
    mean_chw = np.asarray(mean_chw, dtype=np.float32)
    c, h, w = mean_chw.shape
    payload = mean_chw.astype("<f4", copy=False).tobytes()
    head = b"".join(bytes([tag]) + varint(v) for tag, v in
                    ((0x08, 1), (0x10, c), (0x18, h), (0x20, w)))
    return head + b"\x2a" + varint(len(payload)) + payload
