"""Snappy decoders on the compressed blocks of W1's LevelDB: how fast can one go? (issue 12)

W1 on LevelDB is held back by the table blocks LevelDB stored Snappy-compressed
(a third of them; the rest are views of the mapped file, as LMDB's values are).
This times our decoder (``caffedata/sources/_leveldb.pyx``) on exactly those
blocks, in the same process as two independent ones where present:

* Rust's ``snap`` crate through ``cramjam`` (``pip install cramjam``), the
  decoder behind python-snappy >= 0.7;
* Google's C++ Snappy, given as ``--libsnappy PATH`` (a ``libsnappy.so`` built
  from github.com/google/snappy, e.g. with ``cmake -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=ON``); called through its C API, ``snappy_uncompress``.

Neither is a dependency of caffedata.  Every decoder's output is checked equal
to ours.  It needs the benchmark datasets (``python -m benchmarks`` makes them).

    python -m benchmarks.snappy_decoders [--leveldb PATH] [--libsnappy PATH] [--rounds 5]
"""
import argparse
import ctypes
import os
import statistics
import time

from caffedata.sources import _leveldb, leveldb_tables

from .suite import Config


def compressed_blocks(path):
    """The distinct Snappy-compressed data blocks of the LevelDB at ``path``, as bytes."""
    tables = leveldb_tables.open_tables(path)
    blocks = [bytes(tables.map_table(ti)[offset:offset + size])
              for ti, offset, size in tables.stored_blocks(leveldb_tables.SNAPPY)]
    return blocks, len(tables)


def decoders(libsnappy):
    """name -> decode(src, out) for each decoder available here."""
    found = {"caffedata": _leveldb.snappy_decompress_into}
    try:
        import cramjam

        found["Rust snap (cramjam)"] = cramjam.snappy.decompress_raw_into
    except ImportError:
        pass
    if libsnappy:
        lib = ctypes.CDLL(libsnappy)
        lib.snappy_uncompress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                          ctypes.POINTER(ctypes.c_size_t)]
        length = ctypes.c_size_t()

        def google(src, out):
            length.value = len(out)
            target = (ctypes.c_char * len(out)).from_buffer(out)
            if lib.snappy_uncompress(src, len(src), ctypes.addressof(target), ctypes.byref(length)) != 0:
                raise ValueError("snappy_uncompress failed")

        found["Google Snappy (C API)"] = google
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leveldb", default=os.path.join(Config().workdir, "w1_leveldb"),
                    help="a LevelDB (default: the benchmarks' W1 copy)")
    ap.add_argument("--libsnappy", default=None, help="path of a libsnappy.so to time too")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    blocks, records = compressed_blocks(args.leveldb)
    if not blocks:
        raise SystemExit(f"{args.leveldb}: no Snappy-compressed blocks")
    outs = [bytearray(_leveldb.snappy_uncompressed_length(b)) for b in blocks]
    expected = [bytes(_leveldb.snappy_decompress(b)) for b in blocks]
    total = sum(len(o) for o in outs)
    print(f"{args.leveldb}: {len(blocks)} compressed blocks of {records} records, "
          f"{sum(map(len, blocks)) / total:.2f} of their size compressed ({args.rounds} rounds, medians)")
    found = decoders(args.libsnappy)
    times = {name: [] for name in found}
    for _ in range(args.rounds):  # decoders alternate, so a load change hits all of them
        for name, decode in found.items():
            t = time.perf_counter()
            for src, out in zip(blocks, outs):
                decode(src, out)
            times[name].append(time.perf_counter() - t)
            if [bytes(o) for o in outs] != expected:
                raise SystemExit(f"{name}: output differs from caffedata's")
    print("| decoder | ms per block | GB/s |")
    print("|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t / len(blocks) * 1e3:.3f} | {total / t / 1e9:.2f} |")


if __name__ == "__main__":
    main()
