"""Mutation fuzzer for the fast Datum parser and the mean-file reader.

Every input the fast parser (``_fast.datum_header``) accepts must be accepted
by protobuf too, with the same fields; every input protobuf accepts must be
accepted by the fast parser.  Every mean file ``load_mean_file`` accepts must
match protobuf's parse, and every one it refuses must be refused with a
``CaffeDataError`` (never another exception).

    python -m tests.fuzz.fuzz_datum --seconds 600 [--seed N]

Exit status 1 and the offending inputs (hex) on the first mismatches.  For a
run under AddressSanitizer, build the core with ``CAFFEDATA_SANITIZE=1`` (see
the README) and preload the sanitizer runtime.
"""
import argparse
import os
import random
import struct
import sys
import tempfile
import time

import numpy as np

from caffedata import _fast
from caffedata.errors import CaffeDataError
from caffedata.formats.mean import load_mean_file
from caffedata.proto import BlobProto, Datum


def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def datum_seeds(rng):
    """Valid Datums of every shape caffedata reads, written by protobuf."""
    seeds = []
    for c, h, w in [(1, 2, 3), (3, 4, 4), (1, 1, 1)]:
        pixels = bytes(rng.randrange(256) for _ in range(c * h * w))
        seeds.append(Datum(channels=c, height=h, width=w, data=pixels, label=rng.randrange(-5, 1000),
                           encoded=False).SerializeToString())
        floats = [rng.uniform(-9, 9) for _ in range(c * h * w)]
        d = Datum(channels=c, height=h, width=w, label=7)
        d.float_data.extend(floats)
        seeds.append(d.SerializeToString())
        # unpacked floats: one tag per value, as old writers produced
        seeds.append(b"\x08" + _varint(c) + b"\x10" + _varint(h) + b"\x18" + _varint(w)
                     + b"".join(b"\x35" + struct.pack("<f", f) for f in floats))
    seeds.append(Datum(data=b"\xff\xd8\xff\xe0 jpeg bytes", label=3, encoded=True).SerializeToString())
    # unknown fields of every wire type, and a group
    seeds.append(b"\x48\x05\x51" + b"\x00" * 8 + b"\x5a\x02hi\x65" + b"\x00" * 4 + b"\x5b\x48\x01\x5c"
                 + seeds[0])
    return seeds


def mean_seeds():
    seeds = []
    for c, h, w in [(3, 2, 2), (1, 3, 1)]:
        blob = BlobProto(num=1, channels=c, height=h, width=w)
        blob.data.extend(float(i) / 3 for i in range(c * h * w))
        seeds.append(blob.SerializeToString())
        blob = BlobProto()
        blob.shape.dim.extend([1, c, h, w])
        blob.double_data.extend(float(i) for i in range(c * h * w))
        seeds.append(blob.SerializeToString())
    return seeds


def mutate(data, rng, pool):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # set a byte to an interesting value
            b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x08, 0x22, 0x35, 0x32, 0x5B, 0x5C])
        elif op == 2:  # insert random bytes
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:  # delete a run
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 4:  # truncate
            del b[pos:]
        elif op == 5:  # an overlong varint (continuation bytes)
            b[pos:pos] = b"\x80" * rng.randint(1, 11) + bytes([rng.randrange(128)])
        elif op == 6:  # a field with a random tag
            tag = rng.choice([rng.randrange(1 << 35), rng.randrange(1, 16) << 3 | rng.randrange(8)])
            b[pos:pos] = _varint(tag) + _varint(rng.randrange(300))
        elif op == 7:  # splice another input in
            other = rng.choice(pool)
            a = rng.randrange(len(other) + 1)
            b[pos:pos] = other[a:a + rng.randint(1, 40)]
        elif op == 8 and b:  # duplicate a run
            run = b[pos:pos + rng.randint(1, 16)]
            b[pos:pos] = run
    return bytes(b)


def check_datum(value):
    """None when the fast parser and protobuf agree on ``value``, else a description."""
    (err, c, h, w, label, encoded, data_off, data_len, float_off, float_count,
     float_layout) = _fast.datum_header(value)
    try:
        d = Datum()
        d.ParseFromString(value)
        accepted = True
    except Exception:
        accepted = False
    if (err == 0) != accepted:
        return f"fast parser {'accepts' if err == 0 else 'rejects'} what protobuf " \
               f"{'rejects' if not accepted else 'accepts'} (error {err})"
    if not accepted:
        return None
    got = (c, h, w, label, bool(encoded))
    want = (d.channels, d.height, d.width, d.label, d.encoded)
    if got != want:
        return f"fields {got} != protobuf's {want}"
    data = value[data_off:data_off + data_len] if data_len >= 0 else b""
    if data != d.data or (data_len >= 0) != d.HasField("data"):
        return "data differs from protobuf's"
    if float_count != len(d.float_data):
        return f"{float_count} floats, protobuf has {len(d.float_data)}"
    if float_layout in (_fast.FLOAT_LAYOUTS["packed"], _fast.FLOAT_LAYOUTS["unpacked"]) and float_count:
        stride = 4 if float_layout == _fast.FLOAT_LAYOUTS["packed"] else 5
        floats = [struct.unpack_from("<f", value, float_off + stride * i)[0] for i in range(float_count)]
        want_f = np.asarray(d.float_data, dtype=np.float32)
        got_f = np.asarray(floats, np.float32)
        # protobuf hands floats out as Python floats, which quiets a signalling NaN: compare
        # NaNs as NaNs, everything else bit for bit
        same = (got_f.view(np.uint32) == want_f.view(np.uint32)) | (np.isnan(got_f) & np.isnan(want_f))
        if not same.all():
            return "float_data differs from protobuf's"
    return None


def check_mean(blob_bytes, path):
    """None when load_mean_file agrees with protobuf's parse of ``blob_bytes``, else a description."""
    with open(path, "wb") as f:
        f.write(blob_bytes)
    try:
        got = load_mean_file(path)
    except CaffeDataError:
        got = None
    except Exception as exc:
        return f"load_mean_file raised {type(exc).__name__}: {exc}"
    try:
        blob = BlobProto.FromString(blob_bytes)
    except Exception:
        return None if got is None else "load_mean_file accepts what protobuf rejects"
    legacy = ("num", "channels", "height", "width")
    shape = tuple(getattr(blob, f) for f in legacy) if any(blob.HasField(f) for f in legacy) \
        else tuple(blob.shape.dim)
    values = blob.double_data if len(blob.double_data) else blob.data
    valid = (len(shape) == 4 and shape[0] == 1 and all(s >= 0 for s in shape)
             and int(np.prod(shape, dtype=object)) == len(values))
    if got is None:
        return None if not valid else f"load_mean_file refuses a valid (1, C, H, W) blob {shape}"
    if not valid:
        return f"load_mean_file accepts an invalid blob of shape {shape} with {len(values)} values"
    want = np.asarray(values, dtype=np.float64 if len(blob.double_data) else np.float32)
    with np.errstate(over="ignore"):  # C's double-to-float cast: out of range is inf
        want = want.astype(np.float32).reshape(shape[1:])
    if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
        return "mean values differ from protobuf's"
    return None


def fuzz(seconds, seed=0, max_failures=5, log=print):
    """Fuzz for ``seconds``; returns (inputs tried, list of (kind, hex input, problem))."""
    rng = random.Random(seed)
    datums, means = datum_seeds(rng), mean_seeds()
    failures, tried = [], 0
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as tmp:
        mean_path = os.path.join(tmp, "mean.binaryproto")
        while time.monotonic() < deadline and len(failures) < max_failures:
            for _ in range(200):
                tried += 1
                if tried % 8:
                    value = mutate(rng.choice(datums), rng, datums)
                    problem = check_datum(value)
                    kind = "datum"
                else:
                    value = mutate(rng.choice(means), rng, means)
                    problem = check_mean(value, mean_path)
                    kind = "mean"
                if problem:
                    failures.append((kind, value.hex(), problem))
                    log(f"{kind} {value.hex()}: {problem}")
                elif kind == "datum" and len(datums) < 400 and rng.random() < 0.01:
                    datums.append(value)  # grow the corpus with accepted and refused inputs
    return tried, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    tried, failures = fuzz(args.seconds, args.seed)
    print(f"seed {args.seed}: {tried} inputs, {len(failures)} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
