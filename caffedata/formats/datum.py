"""Caffe ``Datum`` records: the pure-Python reference path and the writers' encoder.

The iterator's hot path parses Datums in ``_fast.pyx``; this module is the
slow, obviously-correct twin (protobuf + numpy) that the command line, the
tests and the naive benchmark use, and the one place that *writes* Datums
byte-compatibly with Caffe's tools.
"""
import numpy as np

from ..errors import RecordError
from ..proto import Datum


def parse_datum(value):
    """Parse serialized Datum bytes with protobuf (packed or unpacked float_data)."""
    datum = Datum.FromString(bytes(value))
    return datum


def decode_datum(value, db_path="<db>", key=b"", index=None, flag=-1):
    """``(CHW pixels, label)`` of one serialized Datum, the slow reference way (protobuf + OpenCV).

    Raw records give their ``data`` bytes (uint8) or ``float_data`` (float32)
    with the stored channels/height/width; encoded records are decoded with
    ``cv2.imdecode(flag)`` (-1: as stored, BGR(A)) and must be 8-bit, as Caffe
    requires.  Any problem is a ``RecordError`` naming the DB and the key.
    The tools (mean, inspect) use this; the iterator's hot path is ``_fast``.
    """
    try:
        d = parse_datum(value)
    except Exception as exc:  # protobuf DecodeError and friends
        raise RecordError(db_path, key, index, f"not a Datum ({exc})",
                          "the record is corrupt or the DB holds something else") from None
    if d.encoded:
        import cv2

        img = cv2.imdecode(np.frombuffer(d.data, np.uint8), flag)
        if img is None:
            raise RecordError(db_path, key, index, f"encoded image of {len(d.data)} bytes cannot be "
                              "decoded by OpenCV", "the record is truncated or not JPEG/PNG")
        if img.dtype != np.uint8:
            raise RecordError(db_path, key, index, f"encoded image decodes to {img.dtype}, Caffe "
                              "needs 8-bit pixels", "re-encode the image as 8-bit")
        chw = img[np.newaxis] if img.ndim == 2 else img.transpose(2, 0, 1)
        return np.ascontiguousarray(chw), d.label
    c, h, w = d.channels, d.height, d.width
    size = max(len(d.data), len(d.float_data))
    if size != c * h * w or size == 0:
        raise RecordError(db_path, key, index,
                          f"holds {size} values but channels*height*width = {c}*{h}*{w} = {c * h * w}",
                          "the record is corrupt")
    if len(d.data):
        return np.frombuffer(d.data, np.uint8).reshape(c, h, w), d.label
    return np.asarray(d.float_data, np.float32).reshape(c, h, w), d.label


def array_to_datum_bytes(array, label=0):
    """Serialize a CHW array as Caffe's CVMatToDatum does.

    uint8 arrays go to ``data`` and carry ``encoded: false`` (as convert_imageset
    writes); other dtypes go to unpacked ``float_data`` (as caffe.io.array_to_datum).
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a CHW array, got shape {array.shape}")
    c, h, w = array.shape
    datum = Datum(channels=c, height=h, width=w)
    if array.dtype == np.uint8:
        datum.data = np.ascontiguousarray(array).tobytes()
        datum.label = int(label)
        datum.encoded = False
    else:
        datum.float_data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
        datum.label = int(label)
    return datum.SerializeToString()


def encoded_datum_bytes(file_bytes, label=0):
    """An encoded Datum as convert_imageset writes it: data, label, encoded=true only."""
    return Datum(data=bytes(file_bytes), label=int(label), encoded=True).SerializeToString()
