"""The baselines that every caffedata figure is divided by, run in the same process.

* ``memcpy_bound``: numpy copies of the input + output bytes of one image, one thread.
* ``decode_bound``: cv2.imdecode of the same JPEG bytes alone, at a thread count.
* ``NaiveReader``: py-lmdb cursor + protobuf ``Datum.FromString`` + numpy
  crop/mirror/mean/scale into a float32 batch: what users write by hand.
* ``image_record_iter``: MXNet's own fast path, ``mx.io.ImageRecordIter`` over
  the same JPEGs packed as RecordIO with the same transform.
"""
import threading
import time

import lmdb
import numpy as np

from caffedata.proto import Datum


def memcpy_bound(in_bytes, out_bytes, images=2000, batch=64):
    """Images/s of copying ``in_bytes`` + ``out_bytes`` per image with numpy, one thread.

    Sources and destinations are batch-sized rings (like the pipeline's record
    views and batch buffers), allocated and touched beforehand, so this is the
    machine's copy bandwidth for the bytes one image moves.  Small images are
    copied a batch per call, as the pipeline's kernel handles a batch per call.
    """
    src_in = np.ones((batch, in_bytes), np.uint8)
    dst_in = np.ones((batch, in_bytes), np.uint8)
    src_out = np.ones((batch, out_bytes), np.uint8)
    dst_out = np.ones((batch, out_bytes), np.uint8)
    per_image = in_bytes + out_bytes >= 65536
    t = time.perf_counter()
    done = 0
    while done < images:
        if per_image:
            for i in range(batch):
                np.copyto(dst_in[i], src_in[i])
                np.copyto(dst_out[i], src_out[i])
        else:
            np.copyto(dst_in, src_in)
            np.copyto(dst_out, src_out)
        done += batch
    return done / (time.perf_counter() - t)


def _jpeg_payloads(path, limit):
    from caffedata.pipeline.kernels import BatchAssembler  # noqa: F401  (same parser as the pipeline)

    env = lmdb.open(path, readonly=True, lock=False, subdir=True)
    payloads = []
    with env.begin() as txn:
        for _, value in txn.cursor():
            d = Datum.FromString(value)
            payloads.append(np.frombuffer(d.data, np.uint8))
            if len(payloads) >= limit:
                break
    env.close()
    return payloads


def decode_bound(payloads, threads, images, flag=-1):
    """Images/s of cv2.imdecode alone over ``payloads`` on ``threads`` threads."""
    import cv2

    per = -(-images // threads)

    def work(k):
        n = len(payloads)
        for i in range(per):
            cv2.imdecode(payloads[(k * per + i) % n], flag)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return per * threads / (time.perf_counter() - t)


class NaiveReader:
    """py-lmdb + protobuf + numpy, one thread: the hand-written reader caffedata replaces."""

    def __init__(self, path, batch_size, crop=0, mean=None, mirror=False, scale=1.0, train=True,
                 seed=0):
        self.env = lmdb.open(path, readonly=True, lock=False, subdir=True)
        self.txn = self.env.begin()
        self.cursor = self.txn.cursor()
        self.cursor.first()
        self.batch_size, self.crop, self.mean = batch_size, crop, mean
        self.mirror, self.scale, self.train = mirror, np.float32(scale), train
        self.rng = np.random.default_rng(seed)
        self.out = None

    def next_batch(self):
        B, crop = self.batch_size, self.crop
        labels = np.empty(B, np.float32)
        out = None
        for i in range(B):
            if not self.cursor.next() and not self.cursor.first():
                raise RuntimeError("empty database")
            d = Datum.FromString(self.cursor.value())
            c, h, w = d.channels, d.height, d.width
            img = np.frombuffer(d.data, np.uint8).reshape(c, h, w)
            if crop:
                if self.train:
                    ho = int(self.rng.integers(h - crop + 1))
                    wo = int(self.rng.integers(w - crop + 1))
                else:
                    ho, wo = (h - crop) // 2, (w - crop) // 2
                img = img[:, ho:ho + crop, wo:wo + crop]
                mean = self.mean[:, ho:ho + crop, wo:wo + crop] if self.mean is not None else None
            else:
                mean = self.mean
            x = img.astype(np.float32)
            if mean is not None:
                x -= mean
            if self.mirror and self.rng.integers(2):
                x = x[:, :, ::-1]
            if out is None:
                out = np.empty((B,) + x.shape, np.float32)
            np.multiply(x, self.scale, out=out[i])
            labels[i] = d.label
        return out, labels

    def close(self):
        self.txn.abort()
        self.env.close()


def image_record_iter(rec, idx, batch_size, crop, mean_nd, threads, mirror=True, scale=1.0,
                      seed=0):
    """MXNet's ImageRecordIter with the W2 transform (random crop, mirror, mean image, scale)."""
    import mxnet as mx

    return mx.io.ImageRecordIter(path_imgrec=rec, path_imgidx=idx, data_shape=(3, crop, crop),
                                 batch_size=batch_size, rand_crop=True, rand_mirror=mirror,
                                 mean_img=mean_nd, scale=scale, preprocess_threads=threads,
                                 shuffle=False, seed=seed, round_batch=True, verbose=False)
