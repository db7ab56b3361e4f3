"""ImageData and HDF5Data throughput against their baselines, in the same process.

``python -m benchmarks.bench_layers [--quick] [--threads 1,2]``

* ImageData over a folder of JPEGs (256x256 crops of real photos, q90),
  crop 227 + mirror + mean_value, TRAIN: ``caffedata.DataLayer`` against
  the decode-only bound (``cv2.imread`` of the same files alone, on the same
  number of threads) and a naive OpenCV loop (imread + NumPy transform, one
  thread).  Target: >= 0.85x the decode bound.
* HDF5Data, 20,000 rows of 3x32x32 float32 in 4 files, batch 100: against
  plain ``h5py`` slicing of the same batches, one thread.  Target: >= 1x.

Rounds alternate A/B and the medians are printed as ratios.
"""
import argparse
import os
import statistics
import tempfile
import threading
import time

import cv2
import h5py
import numpy as np

import caffedata

from .data import photo_crops


def _rate(fn, items):
    t = time.perf_counter()
    fn()
    return items / (time.perf_counter() - t)


def make_jpeg_folder(folder, n):
    names = []
    for i, image in enumerate(photo_crops(n, 256, seed=5)):
        name = f"img {i:05d}.jpg"  # a space, as real lists have
        cv2.imwrite(os.path.join(folder, name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        names.append(name)
    listing = os.path.join(folder, "list.txt")
    with open(listing, "w") as f:
        f.writelines(f"{name} {i % 10}\n" for i, name in enumerate(names))
    return listing, [os.path.join(folder, n) for n in names]


def decode_bound(files, threads):
    """Images/s of cv2.imread alone over ``files`` on ``threads`` threads."""
    chunks = [files[k::threads] for k in range(threads)]

    def decode_all(chunk):
        for f in chunk:  # each image dropped before the next, as a loader does (keeping them all
            cv2.imread(f, cv2.IMREAD_COLOR)  # page-faults fresh memory for every image: ~30% slower)

    def run():
        workers = [threading.Thread(target=decode_all, args=(c,)) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return _rate(run, len(files))


def naive_image_loop(files, batch=64, crop=227):
    mean = np.array([104, 117, 123], np.float32)[:, None, None]
    rng = np.random.default_rng(0)

    def run():
        out = np.empty((batch, 3, crop, crop), np.float32)
        for start in range(0, len(files), batch):
            for i, f in enumerate(files[start:start + batch]):
                img = cv2.imread(f, cv2.IMREAD_COLOR).transpose(2, 0, 1).astype(np.float32)
                y, x = rng.integers(0, 256 - crop + 1, 2)
                patch = img[:, y:y + crop, x:x + crop] - mean
                out[i] = patch[:, :, ::-1] if rng.integers(2) else patch

    return _rate(run, len(files))


def _consume(layer):
    for _ in layer:  # as a training loop: each batch dropped before the next (the pool reuses it)
        pass


def _warm(layer):
    """One epoch untimed: files in the page cache, and every buffer the timed epoch can need.

    A timed epoch holds at most the prefetch queue plus two batches of its own;
    the queue is filled once here while two are held, so no buffer is touched
    for the first time while timing (that cost up to 100 ms per buffer on a VM).
    """
    batches = iter(layer)
    held = [next(batches), next(batches)]
    layer._pipeline.wait_until_prefetched()
    for _ in batches:
        pass
    del held


def layer_rate(text, threads, count, **kw):
    layer = caffedata.DataLayer(text, preprocess_threads=threads, **kw)
    _warm(layer)
    rate = _rate(lambda: _consume(layer), count)
    layer.close()
    return rate


def image_data(folder, n, threads, rounds):
    listing, files = make_jpeg_folder(folder, n)
    text = (f'layer {{ type: "ImageData" top: "data" top: "label" include {{ phase: TRAIN }} '
            f'transform_param {{ crop_size: 227 mirror: true mean_value: 104 mean_value: 117 '
            f'mean_value: 123 }} image_data_param {{ source: "{listing}" root_folder: "{folder}/" '
            f'batch_size: 64 }} }}')
    rows = {}
    for t in threads:
        ours, bound = [], []
        for _ in range(rounds):
            ours.append(layer_rate(text, t, n - n % 64 + (64 if n % 64 else 0)))
            bound.append(decode_bound(files, t))
        rows[t] = (statistics.median(ours), statistics.median(bound))
    naive = statistics.median(naive_image_loop(files) for _ in range(rounds))
    return rows, naive


def hdf5_data(folder, rounds, rows_per_file=5000, files=4, batch=100):
    names = []
    rng = np.random.default_rng(0)
    for f in range(files):
        name = os.path.join(folder, f"part{f}.h5")
        with h5py.File(name, "w") as h5:
            h5["data"] = rng.standard_normal((rows_per_file, 3, 32, 32), dtype=np.float32)
            h5["label"] = rng.integers(0, 10, rows_per_file).astype(np.float32)
        names.append(name)
    listing = os.path.join(folder, "h5.txt")
    with open(listing, "w") as f:
        f.write("\n".join(names))
    total = rows_per_file * files
    text = (f'layer {{ type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{listing}" '
            f'batch_size: {batch} }} }}')

    def plain():
        handles = [h5py.File(n, "r") for n in names]
        for h5 in handles:
            for start in range(0, rows_per_file, batch):
                np.asarray(h5["data"][start:start + batch], dtype=np.float32)  # float32 already: no copy
                np.asarray(h5["label"][start:start + batch], dtype=np.float32)
        for h5 in handles:
            h5.close()

    # glibc serves the baseline's 1.2 MB arrays from fresh, page-faulting mmaps until a freed
    # large block raises its mmap threshold (a fresh process reads at ~0.4x the rate of a warm
    # one); warm it first, as any process that already moved big arrays is.
    warm = np.empty(16 << 20, np.uint8)
    del warm

    ours, base = [], []
    for _ in range(rounds):
        ours.append(layer_rate(text, 1, total))
        base.append(_rate(plain, total))
    return statistics.median(ours), statistics.median(base)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and rounds (about 30 s)")
    ap.add_argument("--threads", default="1,2", help="thread counts for ImageData (default 1,2)")
    args = ap.parse_args(argv)
    n, rounds = (256, 3) if args.quick else (1024, 5)
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="caffedata-bench-layers-") as folder:
        rows, naive = image_data(folder, n, threads, rounds)
        ours_h5, base_h5 = hdf5_data(folder, rounds)
    print(f"ImageData, {n} JPEGs 256x256 -> crop 227 + mirror + mean, TRAIN, batch 64 ({rounds} rounds, medians)")
    print("| threads | DataLayer img/s | decode bound img/s | ratio (target >= 0.85) | vs naive loop (1 thread) |")
    print("|---|---|---|---|---|")
    for t, (ours, bound) in rows.items():
        print(f"| {t} | {ours:,.0f} | {bound:,.0f} | {ours / bound:.2f}x | {ours / naive:.2f}x |")
    print(f"\nHDF5Data, 20,000 rows of 3x32x32 in 4 files, batch 100, 1 thread: {ours_h5:,.0f} rows/s, "
          f"plain h5py slicing {base_h5:,.0f} rows/s: {ours_h5 / base_h5:.2f}x (target >= 1x)")


if __name__ == "__main__":
    main()
