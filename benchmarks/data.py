"""Deterministic benchmark datasets made from real photos (scikit-image's sample images).

Nothing here is random noise: every image is a crop of a photograph, chosen
by a seeded generator, so the JPEG sizes and decode times are those of real
pictures.  ``make_workloads`` writes, under one folder:

* ``w1_lmdb``  raw 3x256x256 Datums (BGR, CHW), as convert_imageset writes them;
* ``w2_lmdb``  the same images as JPEG-encoded Datums (quality 90);
* ``w2.rec``   the same JPEG bytes packed as MXNet RecordIO (for ImageRecordIter);
* ``mean.binaryproto``  the W1 mean, (1, 3, 256, 256), as compute_image_mean writes it;
* ``mean227.nd`` the centre crop of that mean, for ImageRecordIter's ``mean_img``;
* ``w3_lmdb``  raw 1x28x28 Datums (MNIST-size handwritten digits, from the UCI
  digits bundled with caffedata), labels 0-9.
"""
import os

import cv2
import lmdb
import numpy as np

from caffedata.formats.datum import array_to_datum_bytes, encoded_datum_bytes
from caffedata.formats.mean import mean_to_blobproto_bytes

COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "motorcycle_left",
                 "motorcycle_right", "retina", "rocket", "ihc", "immunohistochemistry")


def _load_photos(names, colour):
    from skimage import data  # benchmark-only dependency (the `bench` extra)

    photos = []
    for name in names:
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # a sample that needs a download: skip it
            continue
        if img.dtype != np.uint8:
            continue
        if colour:
            if img.ndim != 3 or img.shape[2] < 3:
                continue
            img = np.ascontiguousarray(img[:, :, 2::-1])  # RGB -> BGR, as cv::imread
        else:
            if img.ndim == 3:
                img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_RGB2GRAY)
        if min(img.shape[:2]) >= 64:
            photos.append(img)
    if not photos:
        raise RuntimeError("no scikit-image sample photos found (pip install 'caffedata[bench]')")
    return photos


def photo_crops(n, size, seed, colour=True):
    """``n`` HWC (or HW) uint8 crops of real photos, resized to size x size, deterministically."""
    photos = _load_photos(COLOUR_PHOTOS, colour)
    # Shrink big photos once so that small targets (28x28) are cheap to cut.
    for k, img in enumerate(photos):
        f = 8 * size / min(img.shape[:2])
        if f < 1:
            photos[k] = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    out = []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # many small resizes: threads only add overhead
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = img[y:y + side, x:x + side]
        if rng.integers(2):
            crop = crop[:, ::-1]
        out.append(cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA))
    cv2.setNumThreads(threads)
    return out


def mnist_size_digits(n, seed):
    """``n`` 28x28 uint8 handwritten digits and their labels, MNIST-style.

    Made from caffedata's bundled UCI digits (8x8, real handwriting): each is
    upscaled to 20x20 and placed in a 28x28 frame with a small random shift.
    """
    from caffedata.datasets import load_digits

    images, labels = load_digits()
    rng = np.random.default_rng(seed)
    big = [cv2.resize(im, (20, 20), interpolation=cv2.INTER_LINEAR) for im in images]
    picks = rng.integers(0, len(images), n)
    shifts = rng.integers(0, 9, (n, 2))
    out = np.zeros((n, 28, 28), np.uint8)
    for i, (k, (y, x)) in enumerate(zip(picks.tolist(), shifts.tolist())):
        out[i, y:y + 20, x:x + 20] = big[k]
    return out, labels[picks].astype(np.int64)


def _write_recordio(paths, jpegs, labels, mean, crop):
    import mxnet as mx

    record = mx.recordio.MXIndexedRecordIO(paths["idx"], paths["rec"], "w")
    for i, (j, l) in enumerate(zip(jpegs, labels)):
        record.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(l), i, 0), j))
    record.close()
    off = (256 - crop) // 2
    # ImageRecordIter's mean_img is in its output (RGB, cropped) space.
    mean_rgb = mean[::-1, off:off + crop, off:off + crop].copy()
    mx.nd.save(paths["mean_nd"], {"mean_img": mx.nd.array(mean_rgb)})


def _write_lmdb(path, values):
    total = sum(len(v) for v in values)
    env = lmdb.open(path, map_size=max(1 << 24, 2 * total + (len(values) << 10)), subdir=True,
                    lock=True, sync=False, metasync=False)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(f"{i:08d}".encode(), v, append=True)
    env.close()
    return total


def make_workloads(root, n_colour=512, n_digits=60000, jpeg_quality=90, crop=227, seed=0,
                   recordio=True):
    """Write the datasets (once; reused when the folder already holds them).  Returns paths.

    ``recordio=False`` skips the RecordIO copy (and MXNet) for pipeline-only runs."""
    os.makedirs(root, exist_ok=True)
    tag = os.path.join(root, f"READY-v2-{n_colour}-{n_digits}-{jpeg_quality}-{crop}-{seed}-{int(recordio)}")
    paths = {
        "w1": os.path.join(root, "w1_lmdb"),
        "w2": os.path.join(root, "w2_lmdb"),
        "rec": os.path.join(root, "w2.rec"),
        "idx": os.path.join(root, "w2.idx"),
        "mean": os.path.join(root, "mean.binaryproto"),
        "mean_nd": os.path.join(root, f"mean{crop}.nd"),
        "w3": os.path.join(root, "w3_lmdb"),
    }
    if os.path.exists(tag):
        return paths
    for name in os.listdir(root):
        if name.startswith("READY-"):
            os.remove(os.path.join(root, name))
    import shutil

    for key in ("w1", "w2", "w3"):
        shutil.rmtree(paths[key], ignore_errors=True)

    images = photo_crops(n_colour, 256, seed)
    chw = [np.ascontiguousarray(im.transpose(2, 0, 1)) for im in images]
    labels = [i % 1000 for i in range(n_colour)]
    _write_lmdb(paths["w1"], [array_to_datum_bytes(a, l) for a, l in zip(chw, labels)])
    jpegs = []
    for im in images:
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        assert ok
        jpegs.append(buf.tobytes())
    _write_lmdb(paths["w2"], [encoded_datum_bytes(j, l) for j, l in zip(jpegs, labels)])
    total = np.zeros(chw[0].shape, dtype=np.float64)
    for a in chw:
        total += a
    mean = (total / len(chw)).astype(np.float32)
    with open(paths["mean"], "wb") as f:
        f.write(mean_to_blobproto_bytes(mean))

    if recordio:
        _write_recordio(paths, jpegs, labels, mean, crop)
    digits, digit_labels = mnist_size_digits(n_digits, seed + 1)
    _write_lmdb(paths["w3"], [array_to_datum_bytes(d[None], l) for d, l in zip(digits, digit_labels)])
    open(tag, "w").close()
    return paths
