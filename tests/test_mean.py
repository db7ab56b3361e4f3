"""compute_image_mean: bit-identical float32 sequential mean and compute_image_mean's exact bytes."""
import struct

import numpy as np
import pytest

import cv2  # noqa: E402
import lmdb  # noqa: E402
import plyvel  # noqa: E402

from conftest import varint  # noqa: E402
from conftest import wire_raw_datum  # noqa: E402

from caffedata.tools.compute_mean import compute_image_mean  # noqa: E402
from caffedata.errors import CaffeDataError, RecordError  # noqa: E402


def raw_datum(chw, label=0):
    return wire_raw_datum(np.asarray(chw).astype(np.uint8), label)


def float_datum(chw, label=0):
    """caffe.io.array_to_datum for a float array: unpacked float_data (tag 0x35 per value)."""
    c, h, w = chw.shape
    body = b"".join(b"\x35" + struct.pack("<f", v) for v in chw.astype(np.float32).ravel())
    return (b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w) + b"\x28"
            + varint(label) + body)


def encoded_datum(payload, label=0):
    return b"\x22" + varint(len(payload)) + payload + b"\x28" + varint(label) + b"\x38\x01"


def write_lmdb(path, values):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(b"%08d" % i, v)
    env.close()


def write_leveldb(path, values):
    db = plyvel.DB(str(path), create_if_missing=True)
    for i, v in enumerate(values):
        db.put(b"%08d" % i, v)
    db.close()


def sequential_mean(records):
    """compute_image_mean by the letter: one float32 scalar addition per element and record."""
    flat = [r.ravel() for r in records]
    acc = [np.float32(0)] * flat[0].size
    for r in flat:
        for i, x in enumerate(r):
            acc[i] = np.float32(acc[i] + np.float32(x))
    n = np.float32(len(records))
    return np.array([a / n for a in acc], np.float32).reshape(records[0].shape)


def parse_legacy_blob(raw):
    """Split compute_image_mean's file into its header fields and float payload by hand."""
    pos, fields = 0, {}
    for tag in (0x08, 0x10, 0x18, 0x20):
        assert raw[pos] == tag
        pos += 1
        value, shift = 0, 0
        while True:
            b = raw[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[tag] = value
    assert raw[pos] == 0x2A
    pos += 1
    length, shift = 0, 0
    while True:
        b = raw[pos]
        pos += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    assert len(raw) == pos + length
    return fields, np.frombuffer(raw[pos:], "<f4")


def test_float_data_mean_is_bit_identical(tmp_path):
    rng = np.random.default_rng(3)
    records = [rng.normal(100, 60, (2, 3, 4)).astype(np.float32) for _ in range(300)]
    write_lmdb(tmp_path / "db", [float_datum(r) for r in records])
    res = compute_image_mean(tmp_path / "db", tmp_path / "m.binaryproto", progress=False)
    expect = sequential_mean(records)
    assert res.count == 300
    assert res.mean.dtype == np.float32
    assert res.mean.tobytes() == expect.tobytes()
    # the test bites: a float64 (or pairwise) mean differs in some element
    assert not np.array_equal(np.mean(np.stack(records), axis=0, dtype=np.float64).astype(np.float32),
                              expect)
    fields, data = parse_legacy_blob((tmp_path / "m.binaryproto").read_bytes())
    assert fields == {0x08: 1, 0x10: 2, 0x18: 3, 0x20: 4}
    assert data.tobytes() == expect.tobytes()


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_uint8_mean_bytes_and_npy(tmp_path, backend):
    rng = np.random.default_rng(1)
    records = [rng.integers(0, 256, (3, 5, 7), dtype=np.uint8) for _ in range(37)]
    (write_lmdb if backend == "lmdb" else write_leveldb)(tmp_path / "db",
                                                        [raw_datum(r, i) for i, r in enumerate(records)])
    res = compute_image_mean(tmp_path / "db", tmp_path / "mean.binaryproto", backend=backend,
                             npy=tmp_path / "mean.npy", progress=False)
    expect = sequential_mean(records)
    raw = (tmp_path / "mean.binaryproto").read_bytes()
    header = bytes([0x08, 1, 0x10, 3, 0x18, 5, 0x20, 7, 0x2A]) + varint(3 * 5 * 7 * 4)
    assert raw == header + expect.astype("<f4").tobytes()
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), expect)
    # per-channel means as the tool logs them: float32 running sum / (H*W)
    for c in range(3):
        s = np.float32(0)
        for v in expect[c].ravel():
            s = np.float32(s + v)
        assert res.channel_means[c] == pytest.approx(float(s / np.float32(35)), abs=0, rel=0)


def test_encoded_records_are_decoded_natively(tmp_path):
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (6, 5, 4), dtype=np.uint8) for _ in range(4)]  # BGRA PNGs
    values = [encoded_datum(cv2.imencode(".png", im)[1].tobytes(), i) for i, im in enumerate(imgs)]
    write_lmdb(tmp_path / "db", values)
    res = compute_image_mean(tmp_path / "db", None, progress=False)
    assert res.mean.shape == (4, 6, 5)  # native channels kept, alpha included
    expect = sequential_mean([im.transpose(2, 0, 1) for im in imgs])
    assert res.mean.tobytes() == expect.tobytes()


def test_size_mismatch_names_the_record(tmp_path):
    write_lmdb(tmp_path / "db", [raw_datum(np.zeros((1, 2, 2))), raw_datum(np.zeros((1, 2, 3)))])
    with pytest.raises(RecordError, match=r"db: record '00000001' \(#1\): holds 6 values \(1x2x3\), "
                                          r"the first record has 1x2x2 = 4 -- "):
        compute_image_mean(tmp_path / "db", tmp_path / "m.binaryproto", progress=False)
    assert not (tmp_path / "m.binaryproto").exists()


def test_empty_db_is_an_error(tmp_path):
    write_lmdb(tmp_path / "db", [])
    with pytest.raises(CaffeDataError, match="holds no records"):
        compute_image_mean(tmp_path / "db", None, progress=False)


# ----------------------------------------------------------------------------- reading mean files

def protobuf_mean(raw, path="m"):
    """The reference: protobuf's own parse, then Caffe's FromProto rules, by hand."""
    from caffedata.proto import BlobProto as PB

    blob = PB.FromString(raw)
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    shape = ([blob.num, blob.channels, blob.height, blob.width] if legacy
             else list(blob.shape.dim))
    values = blob.double_data if len(blob.double_data) else blob.data
    with np.errstate(over="ignore"):  # C's double-to-float cast: out of range is inf
        return np.asarray(values, np.float64 if len(blob.double_data) else np.float32).astype(
            np.float32).reshape(shape)


def test_mean_file_loads_in_about_twice_its_size(tmp_path):
    import tracemalloc

    from caffedata.formats.mean import load_mean_file, mean_to_blobproto_bytes

    mean = np.random.default_rng(0).random((3, 256, 256), dtype=np.float32) * 255
    raw = mean_to_blobproto_bytes(mean)
    from caffedata.proto import BlobProto as PB

    reference = PB(num=1, channels=3, height=256, width=256)
    reference.data.extend(mean.ravel().tolist())
    assert raw == reference.SerializeToString()  # the writer's bytes are protobuf's
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        got = load_mean_file(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, mean)
    assert peak < 2.5 * len(raw), f"peak {peak / len(raw):.1f}x the file size"


def test_mean_file_bad_dimensions_are_spec_errors_naming_the_file(tmp_path):
    from caffedata.errors import SpecError
    from caffedata.formats.mean import load_mean_file

    def neg(v):
        return varint(v & 0xFFFFFFFFFFFFFFFF)

    cases = {
        "negative_legacy": b"\x08\x01\x10" + neg(-3) + b"\x18\x02\x20\x02",
        "negative_shape": b"\x3a\x0c\x0a\x0a" + neg(-1)[:10],
        "overflow_legacy": b"\x08\x01\x10" + varint(65536) + b"\x18" + varint(65536) + b"\x20\x02",
        "overflow_int64": b"\x3a" + varint(2 + 2 * 9) + b"\x0a" + varint(18) + varint(1 << 62) * 2,
    }
    for name, raw in cases.items():
        path = tmp_path / f"{name}.binaryproto"
        path.write_bytes(raw)
        with pytest.raises(SpecError, match=rf"{name}\.binaryproto: blob shape .*(negative|over "
                                            rf"Caffe's limit).* -- "):
            load_mean_file(str(path))


def test_direct_mean_reader_agrees_with_protobuf_on_mutations(tmp_path):
    from caffedata.errors import SpecError
    from caffedata.formats.mean import mean_to_blobproto_bytes, parse_blob_bytes
    from caffedata.proto import BlobProto as PB

    blob = PB()
    blob.shape.dim.extend([1, 2, 2, 2])
    blob.double_data.extend([0.5, 1, 2, 3, 4, 5, 6, 7.25])
    seeds = [mean_to_blobproto_bytes(np.arange(12, dtype=np.float32).reshape(3, 2, 2)),
             blob.SerializeToString()]
    rng = np.random.default_rng(1)
    agreed = 0
    for trial in range(3000):
        raw = bytearray(seeds[trial % 2])
        for _ in range(rng.integers(1, 4)):
            op = rng.integers(3)
            pos = int(rng.integers(len(raw) + 1))
            if op == 0 and pos < len(raw):
                raw[pos] = int(rng.integers(256))
            elif op == 1:
                raw[pos:pos] = bytes([int(rng.integers(256))])
            else:
                del raw[pos:pos + int(rng.integers(1, 4))]
        raw = bytes(raw)
        try:
            expect = protobuf_mean(raw)
        except Exception:
            expect = None
        try:
            got = parse_blob_bytes(raw, "m").array
        except SpecError:
            got = None
        if expect is None or got is None:
            # protobuf rejects only what we reject; we may also refuse what Caffe would (bad shape)
            assert not (expect is None and got is not None), raw
            continue
        np.testing.assert_array_equal(got, expect)
        agreed += 1
    assert agreed > 300
