"""The mean image of a Caffe DB, byte-identical to Caffe's ``compute_image_mean``.

``compute_image_mean(db, output)`` follows ``1.0:tools/compute_image_mean.cpp``:

* the shape (C, H, W) comes from the first record (encoded records are decoded
  with ``cv2.imdecode(buf, -1)``: native channels, BGR(A), as
  ``DecodeDatumNative``);
* the sum is a float32 array accumulated **record by record in cursor order**,
  ``sum[i] = float(sum[i] + uint8)`` (or ``+ float_data[i]``);  NumPy's
  ``sum += pixels`` with ``sum`` float32 and ``pixels`` uint8 performs exactly
  that float32 addition per element, so vectorising over one record changes
  no bit;
* every record must hold C*H*W values;
* ``mean = sum / count`` in float32;
* the file is a ``BlobProto`` with the legacy ``num=1, channels, height, width``
  fields and packed ``data``: ``08 01 10 C 18 H 20 W 2a <len> <floats>``;
* the per-channel means it reports are float32 sums over H*W (in order)
  divided by H*W, as the tool logs them.
"""
import collections
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..errors import CaffeDataError, DatabaseError, RecordError
from ..formats.atomic import atomic_path
from ..formats.datum import decode_datum
from ..formats.mean import mean_to_blobproto_bytes
from ..sources.db import open_source

__all__ = ["compute_image_mean", "MeanResult", "record_pixels", "channel_means", "open_db_arg"]


def open_db_arg(path, backend="auto"):
    """open_source for a DB named on the command line, with errors that speak of the argument.

    (The reader's own messages speak of a prototxt's data_param, which a
    command given a DB path does not have.)
    """
    from ..sources.db import detect_backend

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatabaseError(f"{path}: no such database -- give the LMDB or LevelDB folder (a "
                            f"relative path is resolved against {os.getcwd()})")
    found = detect_backend(path)
    if found is None:
        raise DatabaseError(f"{path}: not an LMDB (no data.mdb) nor a LevelDB (no CURRENT file) -- "
                            f"give the database folder itself")
    if backend != "auto" and found.name.lower() != str(backend).lower():
        names = {"lmdb": "an LMDB", "leveldb": "a LevelDB"}
        raise DatabaseError(f"{path}: this is {names[found.name.lower()]} database, not "
                            f"{names[str(backend).lower()][2:].strip()} -- drop --backend (it is "
                            f"detected) or pass --backend {found.name.lower()}")
    return open_source(path, backend)


@dataclass
class MeanResult:
    mean: np.ndarray  # (C, H, W) float32
    count: int
    channel_means: List[float] = field(default_factory=list)
    output: Optional[str] = None
    npy: Optional[str] = None
    seconds: float = 0.0

    @property
    def shape(self):
        return self.mean.shape

    def summary(self):
        c, h, w = self.mean.shape
        lines = [f"mean of {self.count} records, {c}x{h}x{w}"
                 + (f", written to {self.output}" if self.output else " (no output file given)")]
        if self.npy:
            lines.append(f"also saved as {self.npy}")
        for i, m in enumerate(self.channel_means):
            lines.append(f"mean_value channel [{i}]: {m:.6g}")
        return "\n".join(lines)


def record_pixels(value, db_path="<db>", key=b"", index=None):
    """The values compute_image_mean adds for one serialized Datum: uint8 or float32, CHW.

    Encoded records are decoded as stored (``imdecode(-1)``), as Caffe's tool does.
    """
    return decode_datum(value, db_path, key, index)[0]


def channel_means(mean):
    """compute_image_mean's log line values: float32 running sum over H*W, divided by H*W."""
    c = mean.shape[0]
    flat = mean.reshape(c, -1).astype(np.float32)
    dim = flat.shape[1]
    # np.add.accumulate is a strict left-to-right float32 sum (np.sum would be pairwise)
    return [float(np.add.accumulate(flat[i], dtype=np.float32)[-1] / np.float32(dim))
            for i in range(c)]


def _write_atomic(path, data):
    try:
        with atomic_path(path, "mean file") as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot write ({exc.strerror}) -- check the folder exists "
                            f"and is writable") from None


def compute_image_mean(db_path, output=None, backend="auto", npy=None, progress=True,
                       threads=None):
    """Mean image of ``db_path``; writes ``output`` (.binaryproto) and ``npy`` when given.

    ``backend`` is "lmdb", "leveldb" or "auto" (detect from the folder; Caffe's
    tool defaults to lmdb).  ``npy`` saves the (C, H, W) float32 mean with
    ``np.save``.  Returns a MeanResult.
    """
    db_path = os.fspath(db_path)
    threads = max(1, min(4, os.cpu_count() or 1)) if threads is None else max(1, int(threads))
    start = time.perf_counter()
    source = open_db_arg(db_path, backend)
    bar = None
    try:
        total = len(source) if source.counts_cheaply else None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="rec", desc="mean", file=sys.stderr, dynamic_ncols=True)
        acc = None
        count = 0
        with ThreadPoolExecutor(threads) as pool:
            window = collections.deque()
            items = enumerate(source.items())

            def submit():
                for index, (key, value) in items:
                    window.append((key, index, pool.submit(record_pixels, bytes(value), db_path,
                                                           bytes(key), index)))
                    return True
                return False

            while len(window) < threads * 8 and submit():
                pass
            while window:
                key, index, fut = window.popleft()
                pixels = fut.result()
                submit()
                if acc is None:
                    acc = np.zeros(pixels.shape, np.float32)
                elif pixels.size != acc.size:
                    c, h, w = acc.shape
                    raise RecordError(db_path, key, index,
                                      f"holds {pixels.size} values ({'x'.join(map(str, pixels.shape))})"
                                      f", the first record has {c}x{h}x{w} = {acc.size}",
                                      "a mean needs records of one size; resize the images when "
                                      "converting (--resize-height/--resize-width)")
                # float32 + uint8 (or float32) per element, in cursor order
                np.add(acc, pixels.reshape(acc.shape), out=acc)
                count += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        source.close()
    if count == 0:
        raise CaffeDataError(f"{db_path}: the database holds no records -- a mean needs at least "
                             f"one (compute_image_mean would crash here)")
    mean = (acc / np.float32(count)).astype(np.float32, copy=False)
    result = MeanResult(mean=mean, count=count, channel_means=channel_means(mean))
    if output:
        output = os.fspath(output)
        _write_atomic(output, mean_to_blobproto_bytes(mean))
        result.output = output
    if npy:
        npy = os.fspath(npy)
        if not npy.endswith(".npy"):
            npy += ".npy"  # np.save would add it silently
        import io

        buf = io.BytesIO()
        np.save(buf, mean)
        _write_atomic(npy, buf.getvalue())
        result.npy = npy
    result.seconds = time.perf_counter() - start
    return result
