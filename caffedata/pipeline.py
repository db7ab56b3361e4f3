"""The framework-neutral data pipeline of one Caffe ``Data`` layer.

``CaffePipeline`` ties the pieces together: the spec (``prototxt.py``), the
record source (``db.py``), the epoch plan (``sampling.py``), the kernels
(``kernels.py``) and the worker threads (``prefetch.py``).  It yields numpy
batches; ``iterator.py`` adapts it to ``mx.io.DataIter``.

Lifecycle.  The constructor reads the key list and the first record (for the
output shape) through a short-lived handle that it closes again.  Worker
threads open the database lazily, in the thread that reads it, one shared
environment per pipeline and one read transaction per thread.  ``close()``
stops the threads and closes the database.
"""
import logging
import os
import threading

import numpy as np

from .db import open_source
from .errors import RecordError, SpecError
from .kernels import BatchAssembler
from .mean import load_mean_file
from .prefetch import Prefetcher
from .sampling import EpochPlanner

log = logging.getLogger("caffedata")

SUPPORTED_DTYPES = ("float32", "float64")


def output_shapes(spec, first_chw, flat=False):
    """(data_shape, label_shape) of every batch, from the spec and the first record's C, H, W."""
    c, h, w = first_chw
    oh, ow = spec.transform.output_hw(h, w)
    data = (spec.batch_size, c * oh * ow) if flat else (spec.batch_size, c, oh, ow)
    return data, (spec.batch_size,)


class _SharedSource:
    """One database handle per pipeline, opened on first use by a worker."""

    def __init__(self, path, backend):
        self.path, self.backend = path, backend
        self._source = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._source is None:
                self._source = open_source(self.path, self.backend)
            return self._source

    def close(self):
        with self._lock:
            if self._source is not None:
                self._source.close()
                self._source = None


class _WorkerState:
    """Per-thread reader: an LMDB read transaction, or the LevelDB handle."""

    def __init__(self, shared):
        self.source = shared.get()
        self.txn = self.source.env.begin(buffers=True) if hasattr(self.source, "env") else None

    def get(self, key):
        return self.txn.get(key) if self.txn is not None else self.source.get(key)

    def close(self):
        if self.txn is not None:
            self.txn.abort()
            self.txn = None


class CaffePipeline:
    """Batches of one Caffe Data layer, as numpy arrays.

    Parameters mirror ``CaffeDataIter``; see its docstring.
    """

    def __init__(self, spec, num_examples=None, dtype="float32", shuffle=False, seed=0,
                 preprocess_threads=None, prefetch_buffer=None, last_batch_handle="pad",
                 flat=False):
        if str(np.dtype(dtype)) not in SUPPORTED_DTYPES:
            raise SpecError(f"dtype {dtype!r} is not supported -- use float32 or float64 "
                            f"(Caffe layers run in float or double)")
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.flat = bool(flat)
        self.path = spec.source
        self.threads = int(preprocess_threads or 1)
        if self.threads < 1:
            raise SpecError(f"preprocess_threads must be >= 1, got {preprocess_threads}")
        self.depth = int(prefetch_buffer if prefetch_buffer is not None else spec.prefetch)
        if self.depth < 1:
            raise SpecError(f"prefetch_buffer must be >= 1, got {prefetch_buffer}")
        mean = load_mean_file(spec.transform.mean_file) if spec.transform.mean_file else None
        with open_source(self.path, spec.backend) as source:
            self.keys = source.keys()
            if not self.keys:
                raise SpecError(f"{self.path}: the database holds no records -- nothing to iterate")
            first = source.get(self.keys[0])
        self.assembler = BatchAssembler(spec.transform, mean, self.path, self.dtype)
        rec = self.assembler.parse(first, self.keys[0], 0)
        self.first_chw = (rec.channels, rec.height, rec.width)
        self.assembler.check(rec, self.keys[0], 0, self.first_chw)
        self.num_records = len(self.keys)
        self.num_examples = int(num_examples) if num_examples is not None else self.num_records
        if self.num_examples < 1:
            raise SpecError(f"num_examples must be >= 1, got {num_examples}")
        if self.num_examples > self.num_records or spec.batch_size > self.num_records:
            log.warning("%s: num_examples=%d / batch_size=%d exceed the %d records of the "
                        "database; reading wraps around it as Caffe's cursor does", self.path,
                        self.num_examples, spec.batch_size, self.num_records)
        self.data_shape, self.label_shape = output_shapes(spec, self.first_chw, self.flat)
        self.planner = EpochPlanner(self.num_records, self.num_examples, spec.batch_size,
                                    spec.transform, shuffle=shuffle, seed=seed,
                                    last_batch_handle=last_batch_handle)
        self._shared = _SharedSource(self.path, spec.backend)
        self._epoch = -1
        self._prefetcher = None

    # -- epochs -------------------------------------------------------------
    def start_epoch(self):
        """Plan the next epoch and start its workers (stopping any running epoch)."""
        self._stop_workers()
        self._epoch += 1
        jobs = self.planner.plan_epoch(self._epoch)
        self._prefetcher = Prefetcher(jobs, self._build_batch, threads=self.threads,
                                      depth=self.depth, make_state=self._make_state,
                                      close_state=_WorkerState.close)
        return len(jobs)

    def _make_state(self):
        return _WorkerState(self._shared)

    def next_batch(self):
        """(data, label, pad) of the next batch; StopIteration at the end of the epoch."""
        if self._prefetcher is None:
            self.start_epoch()
        return next(self._prefetcher)

    def __iter__(self):
        """Iterate one epoch."""
        self.start_epoch()
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    # -- one batch (runs on a worker thread) --------------------------------
    def _build_batch(self, batch, state):
        keys = [self.keys[r] for r in batch.records]
        values = [state.get(k) for k in keys]
        for i, v in enumerate(values):
            if v is None:
                raise RecordError(self.path, keys[i], int(batch.records[i]),
                                  "record vanished while reading", "do not modify a database while "
                                  "training from it")
        B = len(values)
        first = self.assembler.parse(values[0], keys[0], int(batch.records[0]))
        chw = (first.channels, first.height, first.width)
        self.assembler.check(first, keys[0], int(batch.records[0]), chw)
        if chw != self.first_chw and B > 1 and not self.spec.transform.crop_size:
            raise RecordError(self.path, keys[0], int(batch.records[0]),
                              f"record is {'x'.join(map(str, chw))} but the first record of the "
                              f"database is {'x'.join(map(str, self.first_chw))}",
                              "records of different sizes need crop_size, or batch_size 1")
        out = np.empty((B,) + self.assembler.out_chw(*chw), dtype=self.dtype)
        labels = np.empty(B, dtype=self.dtype)
        self.assembler.fill(values, keys, batch.records, batch.draws, out, labels, chw)
        if self.flat:
            out = out.reshape(B, -1)
        return out, labels, batch.pad

    # -- shutdown -----------------------------------------------------------
    def _stop_workers(self):
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def close(self):
        self._stop_workers()
        self._shared.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def resolve_source(spec, base_dir=None):
    """Resolve a relative data_param.source against ``base_dir`` when it exists there."""
    if base_dir and not os.path.isabs(spec.source):
        candidate = os.path.join(base_dir, spec.source)
        if os.path.exists(candidate):
            from dataclasses import replace

            return replace(spec, source=candidate)
    return spec
