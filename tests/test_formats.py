"""Datum wire parsing (Cython), mean files and prototxt parsing, against hand-made bytes."""
import struct

import numpy as np
import pytest

from conftest import varint

from caffedata import _fast
from caffedata.errors import SpecError
from caffedata.formats.mean import load_mean_file, mean_to_blobproto_bytes
from caffedata.proto import BlobProto
from caffedata.formats.prototxt import data_layer_spec
from caffedata.formats.spec import Backend, Phase



def header(buf):
    (err, c, h, w, label, encoded, data_off, data_len, float_off, float_count,
     layout) = _fast.datum_header(buf)
    return dict(err=err, c=c, h=h, w=w, label=label, encoded=encoded, data=bytes(buf[data_off:data_off + data_len]) if data_len >= 0 else None,
                float_count=float_count, layout=layout, float_off=float_off)


def test_reference_encoding_from_protoc():
    # protoc's encoding of Datum{channels:1 height:1 width:2 label:3 float_data:[1,2] encoded:false}
    buf = bytes.fromhex("08011001180228033500" "00803f" "35" "00000040" "3800")
    h = header(buf)
    assert (h["err"], h["c"], h["h"], h["w"], h["label"], h["encoded"]) == (0, 1, 1, 2, 3, 0)
    assert h["float_count"] == 2 and h["layout"] == _fast.FLOAT_LAYOUTS["unpacked"]
    assert struct.unpack("<f", buf[h["float_off"]:h["float_off"] + 4])[0] == 1.0


def test_all_fields_packed_floats_and_unknown_fields_skipped():
    floats = struct.pack("<3f", 0.5, -2.0, 7.25)
    buf = (b"\x08\x03" + b"\x10\x01" + b"\x18\x01"
           + b"\xa0\x01" + varint(12345)             # field 20 varint (unknown)
           + b"\xa9\x01" + b"\x00" * 8                # field 21 fixed64 (unknown)
           + b"\xb2\x01" + varint(3) + b"abc"         # field 22 bytes (unknown)
           + b"\xbd\x01" + b"\x01\x02\x03\x04"        # field 23 fixed32 (unknown)
           + b"\xc3\x01" + b"\x08\x01" + b"\xc4\x01"  # field 24 group holding a varint
           + b"\x28" + varint(-5)                     # negative label: 10-byte varint
           + b"\x32" + varint(12) + floats            # packed float_data
           + b"\x38\x01")
    h = header(buf)
    assert h["err"] == 0
    assert (h["c"], h["h"], h["w"], h["label"], h["encoded"]) == (3, 1, 1, -5, 1)
    assert h["layout"] == _fast.FLOAT_LAYOUTS["packed"] and h["float_count"] == 3
    assert buf[h["float_off"]:h["float_off"] + 12] == floats


def test_last_occurrence_wins_and_data_field():
    buf = b"\x08\x01\x08\x02" + b"\x22\x03xyz" + b"\x22\x02ok"
    h = header(buf)
    assert h["c"] == 2 and h["data"] == b"ok"


@pytest.mark.parametrize("cut", [1, 3, 5, 9])
def test_truncated_records_are_errors_not_reads(cut):
    full = bytes.fromhex("0801100218032206") + b"abcdef" + b"\x28\x07"
    assert header(full)["err"] == 0
    assert header(full[:len(full) - cut])["err"] in _fast.DATUM_ERRORS  # never 0 (success)


def test_garbage_is_an_error():
    for junk in [b"\x07", b"\x0f\x00", b"\xff" * 12, b"\x22\xff\xff\xff\xff\x0f"]:
        assert header(junk)["err"] in _fast.DATUM_ERRORS


# -- mean files ---------------------------------------------------------------

def test_mean_round_trip_bytes_match_compute_image_mean_layout(tmp_path):
    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    raw = mean_to_blobproto_bytes(mean)
    assert raw[:8] == bytes([0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4])
    assert raw[8] == 0x2A and raw[9] == 24 * 4
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(raw)
    np.testing.assert_array_equal(load_mean_file(str(path)), mean)


def test_mean_shape_field_unpacked_data_and_double_data(tmp_path):
    values = np.linspace(0, 1, 6).astype(np.float32)
    # shape {dim: 1 dim: 2 dim: 1 dim: 3}, data unpacked (tag 0x2d per float)
    shape = b"\x3a" + varint(6) + b"\x0a\x04\x01\x02\x01\x03"
    unpacked = b"".join(b"\x2d" + struct.pack("<f", v) for v in values)
    path = tmp_path / "m1.binaryproto"
    path.write_bytes(unpacked + shape)
    np.testing.assert_array_equal(load_mean_file(str(path)), values.reshape(2, 1, 3))
    # double_data wins over data
    blob = BlobProto(num=1, channels=1, height=1, width=2)
    blob.data.extend([9, 9])
    blob.double_data.extend([0.25, 0.5])
    path2 = tmp_path / "m2.binaryproto"
    path2.write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(load_mean_file(str(path2)), np.array([[[0.25, 0.5]]], np.float32))


def test_mean_3d_shape_is_refused_like_caffe(tmp_path):
    blob = BlobProto()
    blob.shape.dim.extend([3, 2, 2])
    blob.data.extend([0.0] * 12)
    path = tmp_path / "m3.binaryproto"
    path.write_bytes(blob.SerializeToString())
    with pytest.raises(SpecError, match="m3.binaryproto.*\\(1, C, H, W\\)"):
        load_mean_file(str(path))
    with pytest.raises(SpecError, match="cannot read mean_file"):
        load_mean_file(str(tmp_path / "missing.binaryproto"))


# -- prototxt -------------------------------------------------------------------

FAQ_TEST = '''layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "caffe/examples/mnist/mnist_test_lmdb" batch_size: 100 backend: LMDB } }'''


def test_faq_prototxt():
    spec = data_layer_spec(FAQ_TEST)
    assert spec.phase == Phase.TEST and spec.batch_size == 100 and spec.backend == Backend.LMDB
    assert spec.transform.scale == np.float32(0.00390625) and spec.prefetch == 4
    assert spec.tops == ("data", "label")


def test_defaults_phase_and_backend():
    spec = data_layer_spec('layer { type: "Data" data_param { source: "x" batch_size: 2 } }')
    assert spec.phase == Phase.TRAIN and spec.backend == Backend.LEVELDB  # Caffe's defaults
    spec = data_layer_spec('layer { type: "Data" phase: TEST include { phase: TRAIN } '
                           'data_param { source: "x" batch_size: 2 } }')
    assert spec.phase == Phase.TEST  # the layer's own phase wins


def test_legacy_v1_layers_moves_deprecated_transform_fields():
    spec = data_layer_spec('layers { name: "d" type: DATA top: "data" top: "label" '
                           'data_param { source: "x" batch_size: 4 scale: 0.5 mirror: true crop_size: 3 '
                           'mean_file: "m.binaryproto" backend: LMDB } include { phase: TEST } }')
    t = spec.transform
    assert (t.scale, t.mirror, t.crop_size, t.mean_file, t.phase) == (0.5, True, 3, "m.binaryproto", Phase.TEST)


def test_new_format_ignores_deprecated_data_param_transform_fields():
    spec = data_layer_spec('layer { type: "Data" data_param { source: "x" batch_size: 4 scale: 0.5 } }')
    assert spec.transform.scale == 1.0


@pytest.mark.parametrize("text, match", [
    ('layer { type: "Data" data_param { source: "x" batch_size: 2 }', "malformed prototxt"),
    ('layer { type: "Data" data_param { sauce: "x" } }', "malformed prototxt"),
    ('layer { type: "InnerProduct" }', "not a data layer"),
    ('layer { type: "Data" data_param { batch_size: 2 } }', "source is not set"),
    ('layer { type: "Data" data_param { source: "x" } }', "batch_size must be > 0"),
    ('layer { type: "Data" transform_param { mean_file: "a" mean_value: 1 } '
     'data_param { source: "x" batch_size: 1 } }', "mean_file and mean_value"),
])
def test_bad_prototxt(text, match):
    with pytest.raises(SpecError, match=match):
        data_layer_spec(text)
