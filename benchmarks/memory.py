"""Peak RSS of CaffeDataIter over many epochs of W3, in a fresh process.

Run as ``python -m benchmarks.memory DB EPOCHS THREADS`` (the suite does it);
prints one JSON line: RSS before the iterator exists, after each epoch, the
peak (VmHWM), and the bytes of the prefetch buffers.
"""
import json
import sys


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(db, epochs, threads, batch_size=256):
    import logging

    import mxnet as mx
    import numpy as np

    import caffedata  # noqa: F401  (registers mx.io.CaffeDataIter)

    logging.disable(logging.WARNING)
    prefetch = 4
    proto = (f'layer {{ type: "Data" top: "data" top: "label" transform_param {{ scale: 0.00390625 }} '
             f'data_param {{ source: "{db}" batch_size: {batch_size} backend: LMDB prefetch: {prefetch} }} }}')
    # Warm the libraries up (MXNet's engine, numpy) before the baseline is read.
    mx.nd.from_numpy(np.zeros((2, 2), np.float32)).wait_to_read()
    base_kb = _status_kb("VmRSS")
    it = mx.io.CaffeDataIter(prototxt=proto, preprocess_threads=threads, flat=True)
    batch_bytes = int(np.prod(it.provide_data[0].shape)) * 4 + batch_size * 4
    per_epoch = []
    checksum = 0.0
    for _ in range(int(epochs)):
        it.reset()
        for batch in it:
            batch.data[0].wait_to_read()
            checksum += float(batch.label[0].asnumpy()[0])
        per_epoch.append(_status_kb("VmRSS"))
    peak_kb = _status_kb("VmHWM")
    it.close()
    print(json.dumps({
        "base_rss_mb": base_kb / 1024, "rss_per_epoch_mb": [k / 1024 for k in per_epoch],
        "peak_rss_mb": peak_kb / 1024, "peak_growth_mb": (peak_kb - base_kb) / 1024,
        "prefetch_buffers_mb": prefetch * batch_bytes / 2**20,
        "pool_buffers_mb": len(it.layer._pipeline._pool) * batch_bytes / 2**20,
        "epochs": int(epochs), "checksum": checksum}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
