"""Fixtures that write real, small Caffe databases into temporary folders.

Records are written with protobuf's own Datum class (not caffedata's writer),
so the reader is checked against an independent producer.  Each record's
pixels are a function of its id and its label is the id, so a batch says
exactly which records it holds.
"""
import importlib.util
import os
import re

import cv2
import lmdb
import numpy as np
import plyvel
import pytest

from caffedata.proto import Datum

# CAFFEDATA_CORE_ONLY=1: the core-only venv (Python >= 3.12, numpy 2, no mxnet).  Test
# files that import mxnet are left out there, by name in the summary; everywhere else
# they run, and a missing mxnet fails them instead of skipping them.
CORE_ONLY = os.environ.get("CAFFEDATA_CORE_ONLY") == "1"
_IMPORTS_MXNET = re.compile(r"^\s*(import mxnet|from mxnet)", re.M)
_left_out = []

if CORE_ONLY and importlib.util.find_spec("mxnet") is not None:
    raise RuntimeError("CAFFEDATA_CORE_ONLY=1 but mxnet is installed: the core-only run must have no mxnet")


@pytest.fixture(scope="session", autouse=True)
def _outside_the_checkout(tmp_path_factory):
    """Run every test, and so every child process, in a scratch folder.

    A child Python started in the checkout would import its ``caffedata/``
    source folder (``python -c`` / ``-m`` put the working directory first on
    sys.path), which in CI is unbuilt: the package under test is installed.
    """
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


def package_env(**extra):
    """``os.environ`` for a child Python that must import the caffedata under test.

    That is the installed package in CI, or the in-place build a developer runs
    the tests with (PYTHONPATH); never an unbuilt source folder.
    """
    import caffedata

    root = os.path.dirname(os.path.dirname(os.path.abspath(caffedata.__file__)))
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def pytest_ignore_collect(collection_path, config):
    if CORE_ONLY and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        if _IMPORTS_MXNET.search(collection_path.read_text()):
            _left_out.append(collection_path.name)
            return True
    return None


def pytest_terminal_summary(terminalreporter):
    if _left_out:
        names = sorted(set(_left_out))  # pytest may ask twice about one file
        terminalreporter.write_line(f"core-only run: {len(names)} MXNet test files not collected: "
                                    + ", ".join(names))


class MT19937:
    """Textbook MT19937 (init_genrand seeding), as std::mt19937 / boost::mt19937."""

    def __init__(self, seed):
        self.mt = [0] * 624
        self.mt[0] = seed & 0xFFFFFFFF
        for i in range(1, 624):
            self.mt[i] = (1812433253 * (self.mt[i - 1] ^ (self.mt[i - 1] >> 30)) + i) & 0xFFFFFFFF
        self.index = 624

    def __call__(self):
        if self.index >= 624:
            for i in range(624):
                y = (self.mt[i] & 0x80000000) | (self.mt[(i + 1) % 624] & 0x7FFFFFFF)
                self.mt[i] = self.mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.index = 0
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y


def record_pixels(record_id, c, h, w):
    """The uint8 CHW image of record ``record_id``: distinct per record and position."""
    cc, hh, ww = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    return ((record_id * 7 + cc * 31 + hh * 5 + ww * 3) % 256).astype(np.uint8)


def raw_datum(pixels, label):
    c, h, w = pixels.shape
    d = Datum(channels=c, height=h, width=w, data=pixels.tobytes(), label=label, encoded=False)
    return d.SerializeToString()


def float_datum(values, label):
    c, h, w = values.shape
    d = Datum(channels=c, height=h, width=w, label=label)
    d.float_data.extend(values.ravel().tolist())
    return d.SerializeToString()


def encoded_datum(file_bytes, label):
    return Datum(data=file_bytes, label=label, encoded=True).SerializeToString()


def write_db(path, items, backend="lmdb"):
    """Write (key, value) pairs to an LMDB or LevelDB folder at ``path``."""
    path = str(path)
    if backend == "lmdb":
        env = lmdb.open(path, map_size=1 << 28)
        with env.begin(write=True) as txn:
            for k, v in items:
                txn.put(k, v)
        env.close()
    else:
        db = plyvel.DB(path, create_if_missing=True)
        with db.write_batch() as wb:
            for k, v in items:
                wb.put(k, v)
        db.close()
    return path


def key(i):
    return b"%08d" % i


def data_prototxt(source, batch_size, backend="LMDB", phase="TEST", transform="", extra=""):
    return (f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f'include {{ phase: {phase} }} transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch_size} backend: {backend} {extra} }} }}')


@pytest.fixture
def raw_db(tmp_path):
    """Factory: an LMDB/LevelDB of ``n`` raw uint8 Datums of shape (c, h, w); label = id."""

    def make(n=23, c=3, h=6, w=5, backend="lmdb", name="db"):
        items = [(key(i), raw_datum(record_pixels(i, c, h, w), i)) for i in range(n)]
        return write_db(tmp_path / name, items, backend)

    return make


def png_bytes(image):
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def jpeg_bytes(image, quality=90):
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(autouse=True)
def _no_stray_threads():
    """Every test must leave no caffedata worker thread running."""
    import threading

    yield
    import gc

    gc.collect()
    for t in threading.enumerate():
        if t.name.startswith("caffedata-worker"):
            t.join(timeout=5)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("caffedata-worker")]
    assert not alive, f"worker threads left running: {alive}"


# -- Datum wire bytes built by hand (independent of protobuf) --------------------

def varint(n):
    """Protobuf base-128 varint; negatives as 10-byte two's complement."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def wire_raw_datum(chw, label):
    """Datum bytes as CVMatToDatum + set_label write them (fields 1,2,3,4,5,7)."""
    c, h, w = chw.shape
    data = chw.tobytes()
    return (b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w) + b"\x22"
            + varint(len(data)) + data + b"\x28" + varint(label) + b"\x38\x00")


def wire_encoded_datum(payload, label):
    """Datum bytes as ReadFileToDatum writes them: data, label, encoded=true."""
    return b"\x22" + varint(len(payload)) + payload + b"\x28" + varint(label) + b"\x38\x01"



# -- Caffe's pooling geometry ------------------------------------------------------

def caffe_pool_windows(H, W, kh, kw, sh, sw, ph, pw):
    """PoolingLayer's output size and windows: ((oh, ow), [(i, j, hs, he, ws, we, size), ...]).

    The size rounds up, and a last window that would start in the padding is
    dropped; each window is clipped to the image, while ``size`` (AVE's divisor)
    counts the window clipped to height/width + pad.
    """
    oh, ow = -(-(H + 2 * ph - kh) // sh) + 1, -(-(W + 2 * pw - kw) // sw) + 1
    if ph or pw:
        oh, ow = oh - ((oh - 1) * sh >= H + ph), ow - ((ow - 1) * sw >= W + pw)
    windows = []
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
            size = (he - hs) * (we - ws)
            windows.append((i, j, max(hs, 0), min(he, H), max(ws, 0), min(we, W), size))
    return (oh, ow), windows
