"""Caffe ``Datum`` records: the pure-Python reference path and the writers' encoder.

The iterator's hot path parses Datums in ``_fast.pyx``; this module is the
slow, obviously-correct twin (protobuf + numpy) that the command line, the
tests and the naive benchmark use, and the one place that *writes* Datums
byte-compatibly with Caffe's tools.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..proto import Datum


@dataclass
class DatumRecord:
    """One decoded Datum.  ``pixels`` is CHW (uint8 for ``data``, float32 for
    ``float_data``) or, when ``encoded`` is true, None (``payload`` holds the file)."""

    channels: int
    height: int
    width: int
    label: int
    encoded: bool
    payload: bytes
    pixels: Optional[np.ndarray]

    @property
    def kind(self):
        if self.encoded:
            return "encoded"
        return "float" if self.pixels is not None and self.pixels.dtype == np.float32 else "raw"


def parse_datum(value):
    """Parse serialized Datum bytes with protobuf (packed or unpacked float_data)."""
    datum = Datum.FromString(bytes(value))
    return datum


def datum_to_record(datum):
    """A ``DatumRecord`` from a parsed Datum; raises ValueError when sizes disagree."""
    c, h, w = datum.channels, datum.height, datum.width
    if datum.encoded:
        return DatumRecord(c, h, w, datum.label, True, datum.data, None)
    if len(datum.data):
        if len(datum.data) != c * h * w:
            raise ValueError(f"data holds {len(datum.data)} bytes but channels*height*width = "
                             f"{c}*{h}*{w} = {c * h * w}")
        pixels = np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    else:
        if len(datum.float_data) != c * h * w:
            raise ValueError(f"float_data holds {len(datum.float_data)} values but "
                             f"channels*height*width = {c}*{h}*{w} = {c * h * w}")
        pixels = np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)
    return DatumRecord(c, h, w, datum.label, False, b"", pixels)


def decode_record(value):
    return datum_to_record(parse_datum(value))


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
