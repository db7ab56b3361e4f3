"""Worker threads that build batches ahead of the consumer, in order.

Knows nothing of MXNet or Caffe: it runs ``work(job, worker_state)`` for each
job of an ordered job list on ``threads`` threads and hands results back in
job order, holding at most ``depth`` finished-or-running jobs.  The heavy work
(``_fast`` kernels, cv2.imdecode, LMDB reads) releases the GIL, so threads
scale.  An exception in a worker is re-raised from ``next()`` with its
traceback; ``close()`` (or dropping the object, or interpreter exit) stops the
threads without hanging.
"""
import os
import queue
import threading
import weakref

DEFAULT_MAX_THREADS = 4  # as ImageRecordIter's default preprocess_threads


def default_threads():
    """The usable cores of this process, capped at ``DEFAULT_MAX_THREADS``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(DEFAULT_MAX_THREADS, usable))


class _Stop(Exception):
    pass


class Prefetcher:
    def __init__(self, jobs, work, threads=1, depth=4, make_state=None, close_state=None):
        self._jobs = list(jobs)
        self._work = work
        self._make_state = make_state
        self._close_state = close_state
        self._depth = max(1, int(depth))
        self._threads = max(1, int(threads))
        self._next_submit = 0
        self._next_take = 0
        self._results = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._pending = queue.SimpleQueue()
        self._workers = []
        for i in range(min(self._threads, max(1, len(self._jobs)))):
            t = threading.Thread(target=_worker_main, args=(weakref.ref(self), self._pending,
                                                            self._cond), daemon=True,
                                 name=f"caffedata-worker-{i}")
            t.start()
            self._workers.append(t)
        self._finalizer = weakref.finalize(self, _shutdown, self._pending, len(self._workers),
                                           self._cond)
        with self._cond:
            self._fill()

    def _fill(self):
        # Keep `depth` jobs submitted and not yet taken (called with the lock held).
        while self._next_submit < len(self._jobs) and self._next_submit - self._next_take < self._depth:
            self._pending.put(self._next_submit)
            self._next_submit += 1

    def __len__(self):
        return len(self._jobs)

    def __iter__(self):
        return self

    def __next__(self):
        with self._cond:
            if self._next_take >= len(self._jobs):
                raise StopIteration
            index = self._next_take
            while index not in self._results:
                if self._stopped:
                    raise RuntimeError("prefetcher was closed")
                self._cond.wait(0.5)
            ok, value = self._results.pop(index)
            self._next_take += 1
            self._fill()
        if not ok:
            raise value
        return value

    def close(self):
        with self._cond:
            self._stopped = True
            self._next_submit = len(self._jobs)
            self._cond.notify_all()
        self._finalizer()
        for t in self._workers:
            if t is not threading.current_thread():
                t.join(timeout=10)

    # worker side -----------------------------------------------------------
    def _run(self, index, state):
        try:
            result = (True, self._work(self._jobs[index], state))
        except BaseException as exc:  # forwarded with its traceback
            result = (False, exc)
        with self._cond:
            self._results[index] = result
            self._cond.notify_all()


def _shutdown(pending, count, cond):
    for _ in range(count):
        pending.put(None)
    with cond:
        cond.notify_all()


def _worker_main(owner_ref, pending, cond):
    state = None
    owner = owner_ref()
    make_state = owner._make_state if owner else None
    close_state = owner._close_state if owner else None
    del owner
    try:
        while True:
            index = pending.get()
            if index is None:
                return
            owner = owner_ref()
            if owner is None or owner._stopped:
                return
            if state is None and make_state is not None:
                try:
                    state = make_state()
                except BaseException as exc:
                    with cond:
                        owner._results[index] = (False, exc)
                        cond.notify_all()
                    del owner
                    continue
            owner._run(index, state)
            del owner
    finally:
        if state is not None and close_state is not None:
            close_state(state)
