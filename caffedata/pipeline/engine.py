"""The batch engine under ``DataLayer``, for one Caffe ``Data`` layer.

``CaffePipeline`` ties the pieces together: the spec (``formats/prototxt.py``),
the record source (``sources/db.py``), the epoch plan (``sampling.py``), the
kernels (``kernels.py``) and the worker threads (``prefetch.py``).  It yields
numpy batches; ``layer.DataLayer`` names them by top, and
``caffedata.mxnet.iterator`` adapts that to ``mx.io.DataIter``.

Lifecycle.  The constructor reads the key list and the first record (for the
output shape) through a short-lived handle that it closes again.  Worker
threads open the database lazily, in the thread that reads it, one shared
environment per pipeline and one read transaction per thread.  ``close()``
stops the threads and closes the database.

Shards (``num_parts``, ``part_index``, ``shard=kv``): every engine takes them;
the rules are in ``shards.py``.
"""
import dataclasses
import logging
import os
import sys
import threading

import numpy as np

from .. import _fast
from ..errors import DatabaseError, RecordError, SpecError
from ..formats.mean import load_mean_file
from ..formats.spec import TransformSpec
from ..sources.db import check_unchanged, open_source
from . import shards
from .kernels import MAX_IMAGE_PIXELS, BatchAssembler
from .prefetch import DEFAULT_MAX_THREADS, Prefetcher, default_threads
from .sampling import EpochPlanner

log = logging.getLogger("caffedata")

SUPPORTED_DTYPES = ("float32", "float64")
ON_ERROR = ("raise", "skip", "warn")

# How long close() waits for the workers' jobs in hand by default.  A worker
# still running after it finishes on its own; the database stays open for it.
CLOSE_TIMEOUT = 10.0


def output_shapes(spec, first_chw, flat=False):
    """(data_shape, label_shape) of every batch, from the spec and the first record's C, H, W."""
    c, h, w = first_chw
    oh, ow = spec.transform.output_hw(h, w)
    data = (spec.batch_size, c * oh * ow) if flat else (spec.batch_size, c, oh, ow)
    return data, (spec.batch_size,)


class _SharedSource:
    """One database handle per pipeline and database state, opened on first use by a worker.

    For a memory-mapped source (LMDB) it also keeps where each record's value lies in the read-only
    memory map (``addr``/``size``, filled lazily by the workers), so that a
    batch of raw records is parsed and transformed in one nogil call with no
    per-record Python.  Those addresses hold for one state of the database
    (``state``, see ``db.lmdb_state``): when a writer commits, the pipeline
    replaces this object at the next epoch start.

    Reference-counted: each worker holds it from its first job to its exit,
    and the handle closes when the pipeline has closed it *and* the last worker
    is done, so no close ever unmaps the database under a running worker.
    """

    def __init__(self, path, backend, num_records, state):
        self.path, self.backend = path, backend
        self.num_records = num_records
        self.state = state
        self._source = None
        self._users = 0
        self._closed = False
        self.addr = self.size = None
        self._lock = threading.Lock()

    def acquire(self):
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.path}: the pipeline was closed")
            if self._source is None:
                self._source = open_source(self.path, self.backend)
                if self._source.memory_mapped:
                    self.addr = np.zeros(self.num_records, dtype=np.int64)
                    self.size = np.zeros(self.num_records, dtype=np.int64)
            self._users += 1
            return self._source

    def release(self):
        with self._lock:
            self._users -= 1
            self._close_if_unused()

    def close(self):
        with self._lock:
            self._closed = True
            self._close_if_unused()

    def _close_if_unused(self):
        if self._closed and self._users == 0 and self._source is not None:
            self.addr = self.size = None
            self._source.close()
            self._source = None


class _WorkerState:
    """Per-thread reader of the shared source (an LMDB read transaction, or the LevelDB handle)."""

    def __init__(self, shared):
        self.shared = shared
        source = shared.acquire()
        try:
            self.reader = source.reader()
        except Exception:
            shared.release()
            raise
        self.get = self.reader.get
        self.addr, self.size = shared.addr, shared.size

    def close(self):
        if self.reader is not None:
            self.reader.close()
            self.reader = self.get = None
        if self.shared is not None:
            self.shared.release()
            self.shared = None


class BufferPool:
    """Preallocated batch buffers (one array per top), reused only when nobody holds them.

    A buffer goes back into use only when the pool's own reference is the
    last one: no queued batch, no caller, no numpy view and no MXNet NDArray
    made from it with zero copy (``mx.nd.from_numpy`` holds a reference until
    MXNet frees the array, which it does only after its last pending
    operation on it has run).  So a buffer is never rewritten while anyone
    can still read it.  Buffers that the caller keeps are dropped from the
    pool (they live on as ordinary arrays) once the pool exceeds ``limit``.
    """

    def __init__(self, limit):
        self.limit = max(1, int(limit))
        self._slots = []  # tuples of arrays, one per top; most recently used last
        self._lock = threading.Lock()

    def _is_free(self, k):
        # the slot's tuple + getrefcount's argument; anything more is a holder.
        slot = self._slots[k]
        return all(sys.getrefcount(slot[i]) <= 2 for i in range(len(slot)))

    def acquire(self, shapes, dtype):
        """A list of free arrays of ``shapes`` (one shape per top) and ``dtype``."""
        shapes = tuple(tuple(s) for s in shapes)
        with self._lock:
            for k, slot in enumerate(self._slots):
                if (tuple(a.shape for a in slot) == shapes and slot[0].dtype == dtype
                        and self._is_free(k)):
                    self._slots.append(self._slots.pop(k))
                    return list(slot)  # a new list: holding it counts on each array
            slot = tuple(np.empty(shape, dtype=dtype) for shape in shapes)
            self._slots.append(slot)
            slot = list(slot)
            while len(self._slots) > self.limit:
                # forget the oldest buffer held elsewhere (or, failing that, the oldest)
                held = [k for k in range(len(self._slots) - 1) if not self._is_free(k)]
                del self._slots[held[0] if held else 0]
            return slot

    def __len__(self):
        return len(self._slots)


class BatchEngine:
    """Epochs of batches from one source: the plan, the worker threads, pooled buffers, shutdown.

    What every Caffe data layer shares.  A subclass says how a worker builds
    one batch (``_build_batch``), what each worker thread keeps open
    (``_make_state``/``_close_state``) and how the source closes
    (``_close_source``).  ``next_batch()`` returns ``(arrays, pad, records)``:
    one array per top, how many trailing items are padding, and each item's
    record number.
    """

    def __init__(self, *, where, num_records, batch_size, num_examples=None, dtype="float32",
                 shuffle=False, seed=0, preprocess_threads=None, prefetch_buffer=None,
                 default_prefetch=4, last_batch_handle="pad", transform=None, permutation=None,
                 on_error="raise", num_parts=None, part_index=None, shard=None):
        if str(np.dtype(dtype)) not in SUPPORTED_DTYPES:
            raise SpecError(f"dtype {dtype!r} is not supported -- use float32 or float64 "
                            f"(Caffe layers run in float or double)")
        self.dtype = np.dtype(dtype)
        # None: the usable cores, at most 4; 0 is an error, as prefetch_buffer=0 is.
        self.threads = default_threads() if preprocess_threads is None else int(preprocess_threads)
        if self.threads < 1:
            raise SpecError(f"preprocess_threads must be >= 1, got {preprocess_threads} (leave it "
                            f"unset for the usable cores, at most {DEFAULT_MAX_THREADS})")
        self.depth = int(prefetch_buffer if prefetch_buffer is not None else default_prefetch)
        if self.depth < 1:
            raise SpecError(f"prefetch_buffer must be >= 1, got {prefetch_buffer}")
        if on_error not in ON_ERROR:
            raise SpecError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.bad_records = {}  # record number -> the RecordError text, under 'skip'/'warn'
        self._bad_lock = threading.Lock()
        self.num_records = int(num_records)
        self.num_examples = int(num_examples) if num_examples is not None else self.num_records
        if self.num_examples < 1:
            raise SpecError(f"num_examples must be >= 1, got {num_examples}")
        if self.num_examples > self.num_records or batch_size > self.num_records:
            log.warning("%s: num_examples=%d / batch_size=%d exceed its %d records; reading wraps "
                        "around them as Caffe's cursor does", where, self.num_examples, batch_size,
                        self.num_records)
        self.shard = shards.shard_from(shard, num_parts, part_index)
        shards.check_shard(self.shard, self.num_records, self.num_examples, batch_size,
                           last_batch_handle, where=where)
        self.planner = EpochPlanner(self.num_records, self.num_examples, batch_size,
                                    transform or TransformSpec(), shuffle=shuffle, seed=seed,
                                    last_batch_handle=last_batch_handle, permutation=permutation,
                                    shard=self.shard)
        # Enough buffers for the queue, the running workers and the batches a
        # consumer typically holds (Module.fit keeps the next one).
        self._pool = BufferPool(self.depth + self.threads + 4)
        self._epoch = -1
        self._prefetcher = None
        self._jobs = None

    # -- what subclasses provide -------------------------------------------
    def _build_batch(self, batch, state):
        raise NotImplementedError

    def _make_state(self):
        return None

    def _close_state(self, state):
        pass

    def _close_source(self):
        pass

    def _check_source(self):
        """At an epoch start: raise if the source changed in a way the plan cannot follow."""

    def _renew_source_after_fork(self):
        """In a forked child: replace what a parent thread may have left locked."""

    # -- the bad record policy ---------------------------------------------
    def _build_with_policy(self, batch, state):
        """``_build_batch``, where a bad record under 'skip'/'warn' is replaced and the batch rebuilt.

        The replacement of record r is the first record after it (in key order,
        wrapping) not known to be bad: a function of the data alone, so the same
        seed still gives the same batches whatever the thread count.  The slot
        keeps its random draws, and shapes and epoch length stay exact.
        """
        while True:
            try:
                return self._build_batch(batch, state)
            except RecordError as exc:
                if self.on_error == "raise" or exc.index is None:
                    raise
                bad = int(exc.index)
                self._note_bad(bad, exc)
                records = batch.records.copy()
                records[records == bad] = self._replacement(bad, exc)
                batch = dataclasses.replace(batch, records=records)

    def _note_bad(self, record, exc):
        with self._bad_lock:
            first_time = record not in self.bad_records
            self.bad_records[record] = str(exc)
        if first_time and self.on_error == "warn":
            log.warning("caffedata: skipping a bad record: %s", exc)

    def _replacement(self, record, exc):
        with self._bad_lock:
            for step in range(1, self.num_records):
                candidate = (record + step) % self.num_records
                if candidate not in self.bad_records:
                    return candidate
        raise RecordError(exc.db_path, exc.key, exc.index, "every record is bad (on_error skipped them "
                          "all)", "fix the data source") from exc

    @property
    def skipped(self):
        """How many distinct bad records were skipped (on_error 'skip' or 'warn')."""
        return len(self.bad_records)

    # -- epochs -------------------------------------------------------------
    def start_epoch(self):
        """Plan the next epoch and start its workers (stopping any running epoch)."""
        self._stop_workers()
        self._check_source()
        self._epoch += 1
        self._jobs = self.planner.plan_epoch(self._epoch)
        self._prefetcher = self._start_workers(0)
        return len(self._jobs)

    def _start_workers(self, first_job):
        # Keep every thread busy: prefetch_buffer bounds the finished batches
        # waiting, but with more threads than that, each thread needs a batch.
        return Prefetcher(self._jobs, self._build_with_policy, threads=self.threads,
                          depth=max(self.depth, self.threads), make_state=self._make_state,
                          close_state=self._close_state, start=first_job)

    def _resume_after_fork(self):
        """In a forked child: the parent's threads are gone; start our own where we stand."""
        old = self._prefetcher
        old.close()
        # Locks that a parent thread held at fork time stay held here: new objects.
        self._pool = BufferPool(self._pool.limit)
        self._bad_lock = threading.Lock()
        self._renew_source_after_fork()
        self._jobs = self._jobs.copy()
        self._prefetcher = self._start_workers(old.position)

    def next_batch(self):
        """(arrays, pad, record indices) of the next batch; StopIteration at the epoch's end."""
        if self._prefetcher is None:
            self.start_epoch()
        elif self._prefetcher.forked:
            self._resume_after_fork()
        return next(self._prefetcher)

    def wait_until_prefetched(self, timeout=30.0):
        """Block until the prefetch queue is full; returns how many batches wait in it.

        For benchmarks: every pooled buffer the queue can hold is then allocated.
        """
        if self._prefetcher is None:
            self.start_epoch()
        return self._prefetcher.wait_until_full(timeout)

    def __iter__(self):
        """Iterate one epoch."""
        self.start_epoch()
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    # -- shutdown -----------------------------------------------------------
    def _stop_workers(self, timeout=None):
        if self._prefetcher is not None:
            self._prefetcher.close(CLOSE_TIMEOUT if timeout is None else timeout)
            self._prefetcher = None

    def close(self, timeout=None):
        """Stop the workers and close the source.

        Waits up to ``timeout`` seconds (default ``CLOSE_TIMEOUT``) for the
        batches being built; a worker still running after that finishes its
        batch on its own, and the source closes when it is done.
        """
        if sys.is_finalizing():
            # Interpreter exit: daemon workers are frozen wherever they stood, perhaps
            # inside an LMDB call, and closing the environment would wait for them
            # forever.  Tell them to stop and leave the rest to the operating system.
            if self._prefetcher is not None:
                self._prefetcher._stopped = True
            return
        self._stop_workers(timeout)
        self._close_source()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class CaffePipeline(BatchEngine):
    """Batches of one Caffe `Data` layer (LMDB/LevelDB of Datums), as numpy arrays.

    Parameters mirror ``CaffeDataIter``; see its docstring.
    """

    def __init__(self, spec, num_examples=None, dtype="float32", shuffle=False, seed=0,
                 preprocess_threads=None, prefetch_buffer=None, last_batch_handle="pad",
                 flat=False, on_error="raise", num_parts=None, part_index=None, shard=None,
                 max_image_pixels=None):
        self.spec = spec
        self.flat = bool(flat)
        self.path = spec.source
        mean = load_mean_file(spec.transform.mean_file) if spec.transform.mean_file else None
        with open_source(self.path, spec.backend) as source:
            state = source.state
            self.keys = source.keys()
            if not self.keys:
                raise SpecError(f"{self.path}: the database holds no records -- nothing to iterate")
            first = source.get(self.keys[0])
        super().__init__(where=self.path, num_records=len(self.keys), batch_size=spec.batch_size,
                         num_examples=num_examples, dtype=dtype, shuffle=shuffle, seed=seed,
                         preprocess_threads=preprocess_threads, prefetch_buffer=prefetch_buffer,
                         default_prefetch=spec.prefetch, last_batch_handle=last_batch_handle,
                         transform=spec.transform, on_error=on_error, num_parts=num_parts,
                         part_index=part_index, shard=shard)
        # Encoded images whose header claims more pixels are refused (RecordError).
        self.max_image_pixels = int(max_image_pixels or MAX_IMAGE_PIXELS)
        self.assembler = BatchAssembler(spec.transform, mean, self.path, self.dtype,
                                        self.max_image_pixels)
        rec = self.assembler.parse(first, self.keys[0], 0)
        self.first_chw = (rec.channels, rec.height, rec.width)
        self.assembler.check(rec, self.keys[0], 0, self.first_chw)
        self.data_shape, self.label_shape = output_shapes(spec, self.first_chw, self.flat)
        self.shapes = (self.data_shape, self.label_shape)[:2 if spec.has_label else 1]
        self._shared = _SharedSource(self.path, spec.backend, self.num_records, state)

    def _make_state(self):
        return _WorkerState(self._shared)

    def _close_state(self, state):
        state.close()

    def _close_source(self):
        self._shared.close()

    def _check_source(self):
        """At an epoch start: the database must still be the one whose keys were read.

        A commit by a writer (LMDB's txnid, file size or mtime changed) or a
        database rebuilt at the same path drops the cached record addresses:
        the next epoch reads the new values.  A changed key list is an error,
        since the epoch plan was made for the old one.  A truncated file is an
        error here rather than a SIGBUS in a worker.
        """
        shared = self._shared
        state = check_unchanged(self.path, self.spec.backend, shared.state)
        if not isinstance(state, tuple) or state == shared.state:
            return  # unchanged (for LevelDB only truncation matters: check_unchanged raised)
        with open_source(self.path, self.spec.backend) as source:
            state = source.state
            keys = source.keys()
        if keys != self.keys:
            raise DatabaseError(
                f"{self.path}: the database changed since this iterator read it ({self.num_records} "
                f"records then, {len(keys)} now, or other keys) -- create a new iterator after "
                f"adding or deleting records; between epochs a writer may only change the values "
                f"of existing keys")
        shared.close()  # closes once its last worker (if any is still running) is done
        self._shared = _SharedSource(self.path, self.spec.backend, self.num_records, state)

    def _renew_source_after_fork(self):
        self._shared = _SharedSource(self.path, self.spec.backend, self.num_records,
                                     self._shared.state)

    # -- one batch (runs on a worker thread) --------------------------------
    def _build_batch(self, batch, state):
        records = np.ascontiguousarray(batch.records, dtype=np.int64)
        keys = [self.keys[r] for r in records.tolist()]
        B = len(keys)
        if state.addr is not None:
            # LMDB: values by address in the map, one nogil pass over the batch.
            missing = _fast.resolve_values(state.get, self.keys, records, state.addr, state.size)
            if missing >= 0:
                self._vanished(keys, records, missing)
            values = None
            first_value = state.get(keys[0])
        else:
            values = [state.get(k) for k in keys]
            for i, v in enumerate(values):
                if v is None:
                    self._vanished(keys, records, i)
            first_value = values[0]
        first = self.assembler.parse(first_value, keys[0], int(records[0]))
        chw = self.assembler.batch_chw(first, keys[0], int(records[0]), self.first_chw, B)
        out, labels = self._pool.acquire(((B,) + self.assembler.out_chw(*chw), (B,)), self.dtype)
        if values is None:
            self.assembler.fill_resolved(records, state.addr, state.size,
                                         lambda i: state.get(keys[i]), keys, records,
                                         batch.draws, out, labels, chw)
        else:
            self.assembler.fill(values, keys, records, batch.draws, out, labels, chw)
        if self.flat:
            out = out.reshape(B, -1)
        return (out, labels), batch.pad, batch.records

    def _vanished(self, keys, records, i):
        raise RecordError(self.path, keys[i], int(records[i]), "record vanished while reading",
                          "do not modify a database while training from it")


def resolve_source(spec, base_dir=None):
    """Resolve a relative data_param.source against ``base_dir`` when it exists there."""
    if base_dir and not os.path.isabs(spec.source):
        candidate = os.path.join(base_dir, spec.source)
        if os.path.exists(candidate):
            from dataclasses import replace

            return replace(spec, source=candidate)
    return spec
