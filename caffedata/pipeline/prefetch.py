"""Worker threads that build batches ahead of the consumer, in order.

Knows nothing of MXNet or Caffe: it runs ``work(job, worker_state)`` for each
job of an ordered job list on ``threads`` threads and hands results back in
job order, holding at most ``depth`` finished-or-running jobs.  The heavy work
(``_fast`` kernels, cv2.imdecode, LMDB reads) releases the GIL, so threads
scale.  An exception in a worker is re-raised from ``next()`` with its
traceback; ``close()`` (or dropping the object, or interpreter exit) stops the
threads without hanging.

Interpreter exit.  Workers are daemon threads, and a daemon thread still
running at finalisation is frozen wherever it stands; one inside C++ (e.g.
cv2.imdecode) is then unwound by ``pthread_exit`` through C++ frames, which
aborts the process ("terminate called without an active exception").  So an
``atexit`` hook stops and joins every live prefetcher's workers while the
interpreter is still whole: each finishes the job in hand and leaves.
"""
import atexit
import logging
import os
import queue
import threading
import time
import weakref

DEFAULT_MAX_THREADS = 4  # as ImageRecordIter's default preprocess_threads


def default_threads():
    """The usable cores of this process, capped at ``DEFAULT_MAX_THREADS``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(DEFAULT_MAX_THREADS, usable))


log = logging.getLogger("caffedata")

# How long interpreter exit waits for a worker to finish its job in hand.
EXIT_JOIN_TIMEOUT = 120.0

_live = weakref.WeakSet()
_live_lock = threading.Lock()


class _Stop(Exception):
    pass


class Prefetcher:
    def __init__(self, jobs, work, threads=1, depth=4, make_state=None, close_state=None,
                 start=0):
        # Any sequence (an epoch plan computes its batches on demand); jobs
        # before ``start`` are skipped.
        self._jobs = jobs if hasattr(jobs, "__getitem__") and hasattr(jobs, "__len__") else list(jobs)
        self._work = work
        self._make_state = make_state
        self._close_state = close_state
        self._depth = max(1, int(depth))
        self._threads = max(1, int(threads))
        self._next_submit = self._next_take = int(start)
        self._results = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._pending = queue.SimpleQueue()
        self._pid = os.getpid()
        self._workers = []
        for i in range(min(self._threads, max(1, len(self._jobs) - self._next_take))):
            t = threading.Thread(target=_worker_main, args=(weakref.ref(self), self._pending,
                                                            self._cond), daemon=True,
                                 name=f"caffedata-worker-{i}")
            t.start()
            self._workers.append(t)
        self._finalizer = weakref.finalize(self, _shutdown, self._pending, len(self._workers),
                                           self._cond)
        with _live_lock:
            _live.add(self)
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
        if self.forked:  # the workers stayed in the parent: waiting would never end
            raise RuntimeError("this prefetcher's worker threads belong to the parent process; "
                               "start a new one after fork")
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

    def wait_until_full(self, timeout=30.0):
        """Block until the next ``depth`` jobs (or the rest of the list) are finished.

        Returns how many finished jobs wait to be taken.  For benchmarks: with
        the queue full once, every buffer the workers and the queue can hold at
        a time has been allocated (a consumer faster than the workers never
        lets it fill otherwise).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                want = range(self._next_take, min(len(self._jobs), self._next_take + self._depth))
                left = deadline - time.monotonic()
                if self._stopped or left <= 0 or all(i in self._results for i in want):
                    return sum(1 for i in want if i in self._results)
                self._cond.wait(min(left, 0.5))

    @property
    def forked(self):
        """True in a child process forked after this prefetcher started: its threads are gone."""
        return self._pid != os.getpid()

    @property
    def position(self):
        """Index of the next job ``next()`` hands out."""
        return self._next_take

    def close(self, timeout=10):
        """Stop the workers and wait up to ``timeout`` s each for the job in hand to finish.

        Returns True when every worker has finished.  A worker still running
        after the timeout finishes its job and exits on its own; whatever it
        reads must stay open until then (see ``close_state``).
        """
        if self.forked:
            # The threads (and whatever lock they held at fork time) are the parent's.
            self._finalizer.detach()
            self._stopped = True
            return True
        with self._cond:
            self._stopped = True
            self._next_submit = len(self._jobs)
            self._cond.notify_all()
        self._finalizer()
        for t in self._workers:
            if t is not threading.current_thread():
                t.join(timeout=timeout)
        return not any(t.is_alive() for t in self._workers if t is not threading.current_thread())

    # worker side -----------------------------------------------------------
    def _run(self, index, state):
        try:
            result = (True, self._work(self._jobs[index], state))
        except BaseException as exc:  # forwarded with its traceback
            result = (False, exc)
        with self._cond:
            self._results[index] = result
            self._cond.notify_all()


def _reset_after_fork():
    global _live_lock
    _live_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _stop_all_at_exit():
    with _live_lock:
        live = list(_live)
    for prefetcher in live:
        if not prefetcher.close(timeout=EXIT_JOIN_TIMEOUT):
            log.warning("caffedata: a data worker did not finish within %.0f s at exit",
                        EXIT_JOIN_TIMEOUT)


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
