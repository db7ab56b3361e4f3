"""inspect: counts, histograms and JSON of DBs, mean files and prototxts; grids are real PNGs."""
import json
import math
import struct
import zlib

import numpy as np
import pytest

import cv2  # noqa: E402
import lmdb  # noqa: E402
import plyvel  # noqa: E402

from caffedata.tools import inspect_db  # noqa: E402
from conftest import varint  # noqa: E402,F401
from conftest import wire_encoded_datum as enc_datum  # noqa: E402
from conftest import wire_raw_datum as raw_datum  # noqa: E402








def float_datum(chw, label):
    c, h, w = chw.shape
    return (b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w) + b"\x28"
            + varint(label) + b"".join(b"\x35" + struct.pack("<f", v) for v in chw.ravel()))


@pytest.fixture
def mixed_db(tmp_path):
    """17 records: 10 raw 3x4x5, 4 PNG 1x6x6, 2 JPEG 3x8x8, 1 float_data 1x2x2."""
    rng = np.random.default_rng(0)
    values = []
    for i in range(10):
        values.append(raw_datum(rng.integers(0, 256, (3, 4, 5), dtype=np.uint8), i % 3))
    for i in range(4):
        png = cv2.imencode(".png", rng.integers(0, 256, (6, 6), dtype=np.uint8))[1].tobytes()
        values.append(enc_datum(png, 7))
    for i in range(2):
        jpg = cv2.imencode(".jpg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))[1].tobytes()
        values.append(enc_datum(jpg, 8))
    values.append(float_datum(np.arange(4, dtype=np.float32).reshape(1, 2, 2), 9))
    keys = [b"%08d_img%d.png" % (i, i) for i in range(len(values))]
    return keys, values


def write(path, backend, keys, values):
    if backend == "lmdb":
        env = lmdb.open(str(path), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for k, v in zip(keys, values):
                txn.put(k, v)
        env.close()
    else:
        db = plyvel.DB(str(path), create_if_missing=True)
        for k, v in zip(keys, values):
            db.put(k, v)
        db.close()


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_db_counts_and_histograms(tmp_path, mixed_db, backend):
    keys, values = mixed_db
    write(tmp_path / "db", backend, keys, values)
    r = inspect_db.inspect(tmp_path / "db")
    assert r["kind"] == "db" and r["backend"] == backend
    assert r["count"] == 17
    assert r["count_from"] == ("LMDB statistics" if backend == "lmdb" else "key scan")
    assert r["first_key"] == "00000000_img0.png" and r["last_key"] == "00000016_img16.png"
    assert r["key_pattern"].startswith("%08d_<name>")
    assert r["records"] == {"raw": 10, "encoded": 6, "float_data": 1}
    assert r["encoded_formats"] == {"png": 4, "jpeg": 2}
    assert r["shapes"] == {"3x4x5": 10, "1x6x6": 4, "3x8x8": 2, "1x2x2": 1}
    assert r["labels"] == {"0": 4, "1": 3, "2": 3, "7": 4, "8": 2, "9": 1}
    sizes = [len(v) for v in values]
    assert r["bytes_per_record"] == {"min": min(sizes), "mean": pytest.approx(sum(sizes) / 17),
                                     "max": max(sizes)}
    assert r["value_bytes"] == sum(sizes)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "db").iterdir())
    assert r["size_on_disk"] == on_disk
    assert not r["estimated"]
    text = inspect_db.format_report(r)
    assert "17 records" in text and "3x4x5" in text


def test_sample_estimates(tmp_path):
    keys = [b"%05d" % i for i in range(200)]
    values = [raw_datum(np.full((1, 2, 2), i % 256, np.uint8), i // 100) for i in range(200)]
    write(tmp_path / "db", "lmdb", keys, values)
    r = inspect_db.inspect(tmp_path / "db", sample=20)
    assert r["examined"] == 20 and r["estimated"]
    assert r["count"] == 200
    assert r["key_pattern"].startswith("%05d")
    assert r["first_key"] == "00000" and r["last_key"] == "00199"
    assert r["records"] == {"raw": 200}
    assert r["labels"] == {"0": 100, "1": 100}  # evenly spaced sample: 10 of each, x10


def test_mean_file_summary(tmp_path):
    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    blob = bytes([0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4, 0x2A]) + varint(96) + mean.tobytes()
    (tmp_path / "m.binaryproto").write_bytes(blob)
    r = inspect_db.inspect(tmp_path / "m.binaryproto")
    assert r["kind"] == "mean" and r["shape"] == [1, 2, 3, 4] and r["caffe_usable"]
    assert r["shape_from"].startswith("legacy") and r["values_from"] == "data"
    assert r["channel_means"] == [pytest.approx(5.5), pytest.approx(17.5)]
    assert (r["min"], r["max"]) == (0.0, 23.0)
    # a 3-D `shape` blob is reported as unusable by Caffe's transformer
    shaped = b"\x2a" + varint(96) + mean.tobytes() + b"\x3a\x05\x0a\x03\x02\x03\x04"
    (tmp_path / "s.binaryproto").write_bytes(shaped)
    r = inspect_db.inspect(tmp_path / "s.binaryproto")
    assert r["shape"] == [2, 3, 4] and not r["caffe_usable"] and "warning" in r


def test_prototxt_effective_settings_and_batch_shapes(tmp_path, mixed_db):
    keys, values = mixed_db
    write(tmp_path / "db", "lmdb", keys, values)
    proto = tmp_path / "net.prototxt"
    proto.write_text(f"""
layer {{ name: "train" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ crop_size: 3 mirror: true }}
  data_param {{ source: "{tmp_path / 'db'}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "test" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  data_param {{ source: "{tmp_path / 'nothere'}" batch_size: 4 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" }}
""")
    r = inspect_db.inspect(proto)
    assert r["kind"] == "prototxt"
    train, test, ip = r["layers"]
    assert train["phase"] == "TRAIN" and test["phase"] == "TEST"
    assert train["transform_param"] == {"scale": 1.0, "mirror": True, "crop_size": 3,
                                        "mean_file": None, "mean_value": [], "force_color": False,
                                        "force_gray": False}
    assert train["data_param"]["prefetch"] == 4 and train["crop"].startswith("random")
    assert train["batch_shapes"] == {"data": [8, 3, 3, 3], "data_flat": [8, 27], "label": [8]}
    assert test["data_param"]["backend"] == "LEVELDB"  # Caffe's default filled in
    assert "batch_shapes" not in test and "nothere" in test["batch_shapes_error"]
    assert ip["type"] == "InnerProduct" and "not a data layer" in ip["note"]


def read_png_size(path):
    """(width, height) from a PNG's IHDR, after checking signature and chunk CRCs."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(raw):
        length, ctype = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) & 0xFFFFFFFF == crc
        chunks.append(ctype)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    ihdr = raw[16:24]
    return struct.unpack(">II", ihdr)


def test_grid_png_size_and_true_colour(tmp_path):
    # 5 records of solid colours, stored BGR: pure blue, green, red ...
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)]
    values = [raw_datum(np.array(c, np.uint8).reshape(3, 1, 1) * np.ones((3, 10, 10), np.uint8), i)
              for i, c in enumerate(colours)]
    write(tmp_path / "db", "lmdb", [b"%08d" % i for i in range(5)], values)
    h, w = inspect_db.db_grid(tmp_path / "db", tmp_path / "g.png", n=5, tile=32)
    cols = math.ceil(math.sqrt(5))
    rows = math.ceil(5 / cols)
    pad, band = inspect_db.GRID_PAD, inspect_db.GRID_LABEL_H
    assert (w, h) == (cols * (32 + 2 * pad), rows * (32 + band + 2 * pad))
    assert read_png_size(tmp_path / "g.png") == (w, h)
    img = cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_COLOR)  # back to BGR
    # the centre of tile 2 is red in the file: R=255 after the BGR->RGB storing
    y, x = pad + 16, 2 * (32 + 2 * pad) + pad + 16
    assert tuple(img[y, x]) == (0, 0, 255)
    rgb_y, rgb_x = pad + 16, pad + 16
    assert tuple(img[rgb_y, rgb_x]) == (255, 0, 0)


def test_json_from_the_command_line(tmp_path, mixed_db, capsys):
    from caffedata.cli import main

    keys, values = mixed_db
    write(tmp_path / "db", "lmdb", keys, values)
    assert main(["inspect", str(tmp_path / "db"), "--json", "--grid", str(tmp_path / "g.png"),
                 "-n", "17", "--random"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 17 and out["records"]["encoded"] == 6
    w, h = read_png_size(tmp_path / "g.png")
    assert (out["grid"]["width"], out["grid"]["height"]) == (w, h) == (5 * 68, 4 * 82)


def test_mixed_size_db_is_summarised_numerically(tmp_path):
    shapes = [(100, 202), (1024, 612), (102, 160)] + [(50 + i, 60 + 2 * i) for i in range(30)]
    shapes += [(64, 64)] * 20
    values = [enc_datum(cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))[1].tobytes(), i % 2)
              for i, (h, w) in enumerate(shapes)]
    write(tmp_path / "db", "lmdb", [b"%08d" % i for i in range(len(values))], values)
    r = inspect_db.inspect(tmp_path / "db")
    keys = list(r["shapes"])
    assert keys[0] == "3x64x64" and r["shapes"]["3x64x64"] == 20
    # the rest in numeric order, not string order
    assert keys.index("3x100x202") < keys.index("3x102x160") < keys.index("3x1024x612")
    assert keys[1:] == sorted(keys[1:], key=lambda k: tuple(int(x) for x in k.split("x")))
    heights = sorted(h for h, _ in shapes)
    widths = sorted(w for _, w in shapes)
    n = len(shapes)
    assert r["shape_summary"] == {
        "distinct": 34, "one_off": 33, "channels": {"3": n},
        "height": {"min": 50, "p10": heights[round(0.1 * (n - 1))], "median": heights[(n - 1) // 2],
                   "p90": heights[round(0.9 * (n - 1))], "max": 1024},
        "width": {"min": 60, "p10": widths[round(0.1 * (n - 1))], "median": widths[(n - 1) // 2],
                  "p90": widths[round(0.9 * (n - 1))], "max": 612}}
    text = inspect_db.format_report(r)
    assert "34 distinct shapes, 33 of them seen once" in text
    assert "height:  min 50" in text and "max 1024" in text
    assert "3x64x64" in text and "3x1024x612" not in text and "... " not in text


def test_sample_extrapolations_are_marked(tmp_path):
    keys = [b"%05d" % i for i in range(200)]
    values = [raw_datum(np.full((1, 2, 2 + (i // 10) % 2), 0, np.uint8), i // 100) for i in range(200)]
    write(tmp_path / "db", "lmdb", keys, values)
    text = inspect_db.format_report(inspect_db.inspect(tmp_path / "db", sample=20))
    lines = text.splitlines()
    assert any(l.split()[:2] == ["1x2x2", "~100"] for l in lines), text
    assert any(l.split()[:2] == ["0", "~100"] for l in lines), text
    assert "~200 raw" in text and "200 records (from LMDB statistics)" in text
    exact = inspect_db.format_report(inspect_db.inspect(tmp_path / "db"))
    assert "~" not in exact
