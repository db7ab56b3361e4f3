"""Throughput of the CaffeDataIter pipeline: images/s and MB/s for 1..K threads.

``measure(spec, threads)`` times one configuration: it builds the pipeline
that ``CaffeDataIter`` runs (read, decode, fused transform, threaded
prefetch), lets ``warmup`` batches pass, then times ``batches`` batches
``repeats`` times and keeps the median.  MB/s counts the database bytes
consumed (serialized records), so raw and encoded DBs compare by what they
read.  The NDArray hand-off to MXNet is not included.

``run_bench`` sweeps thread counts; ``spec_for_db`` makes a Data-layer spec for
a bare DB from transform flags.  ``caffedata bench`` and ``benchmarks/`` both
call these functions.
"""
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from ..errors import SpecError
from ..formats.spec import Backend, DataLayerSpec, Phase, TransformSpec

__all__ = ["BenchPoint", "measure", "run_bench", "spec_for_db", "format_table"]


@dataclass
class BenchPoint:
    threads: int
    batch_size: int
    batches: int
    repeats: int
    images_per_second: float
    mb_per_second: float
    seconds: List[float] = field(default_factory=list)  # each timed window
    data_shape: Optional[tuple] = None

    def as_dict(self):
        d = asdict(self)
        d["data_shape"] = list(self.data_shape) if self.data_shape else None
        return d


def spec_for_db(db, batch_size=64, backend="auto", phase="TRAIN", scale=1.0, mirror=False,
                crop_size=0, mean_file=None, mean_value=(), force_color=False, force_gray=False):
    """A Data-layer spec for ``db`` with the given transform_param values."""
    from ..sources.db import detect_backend

    db = os.fspath(db)
    if backend == "auto":
        found = detect_backend(db) if os.path.exists(db) else None
        if found is None:
            from ..sources.db import open_source

            open_source(db, "auto").close()  # raises the precise error
        backend = found
    elif not isinstance(backend, Backend):
        backend = Backend[str(backend).upper()]
    phase = phase if isinstance(phase, Phase) else Phase[str(phase).upper()]
    if batch_size < 1:
        raise SpecError(f"batch size must be >= 1, got {batch_size}")
    transform = TransformSpec(scale=float(scale), mirror=bool(mirror), crop_size=int(crop_size),
                              mean_file=mean_file or None, mean_value=tuple(mean_value or ()),
                              force_color=bool(force_color), force_gray=bool(force_gray),
                              phase=phase).validate()
    return DataLayerSpec(source=db, batch_size=int(batch_size), backend=backend,
                         transform=transform, name="bench")


def _mean_record_bytes(spec, n=64):
    from ..sources.db import open_source

    sizes = []
    with open_source(spec.source, spec.backend) as source:
        for _, value in source.items():
            sizes.append(len(value))
            if len(sizes) >= n:
                break
    return sum(sizes) / len(sizes) if sizes else 0.0


def measure(spec, threads, batches=50, warmup=5, repeats=3, dtype="float32", seed=0,
            record_bytes=None):
    """Time ``batches`` batches (median of ``repeats`` windows) after ``warmup`` batches.

    After the warm-up (if any) the prefetch queue is filled once and drained
    untimed, so that the timed windows see a steady state: every pooled buffer
    allocated, as after the first batches of a training run.
    """
    from ..pipeline.engine import CaffePipeline

    if batches < 1 or repeats < 1 or warmup < 0:
        raise SpecError("batches and repeats must be >= 1, warmup >= 0")
    if record_bytes is None:
        record_bytes = _mean_record_bytes(spec)
    queue = max(int(spec.prefetch), int(threads)) if warmup else 0  # drained after the warm-up
    total = warmup + queue + batches * repeats
    # One epoch long enough for every timed batch: it wraps around a small DB as Caffe's
    # cursor does (the pipeline's warning about that is expected here, so it is muted).
    logger = logging.getLogger("caffedata")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        pipe = CaffePipeline(spec, num_examples=total * spec.batch_size, dtype=dtype, seed=seed,
                             preprocess_threads=threads, last_batch_handle="discard")
    finally:
        logger.setLevel(level)
    try:
        pipe.start_epoch()
        held = []
        for _ in range(warmup):
            held = (held + [pipe.next_batch()[0]])[-2:]
        if warmup:
            # The timed loop can hold `queue` batches in flight plus two of its own (the one it
            # keeps and the one being returned).  Fill the queue once while holding two, then
            # drain it untimed: every buffer the timed loop can need is then allocated and
            # touched.  (Memory touched for the first time cost up to 100 ms per 40 MB batch on
            # a VM: a once-per-buffer cost of a run's first batches, not of its steady state.)
            for _ in range(pipe.wait_until_prefetched()):
                pipe.next_batch()
        del held
        windows = []
        shape = None
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(batches):
                data = pipe.next_batch()[0][0]  # (arrays, pad, records): the data top
            windows.append(time.perf_counter() - t)
            shape = tuple(data.shape)
    finally:
        pipe.close()
    sec = statistics.median(windows)
    images = batches * spec.batch_size
    return BenchPoint(threads=threads, batch_size=spec.batch_size, batches=batches,
                      repeats=repeats, images_per_second=images / sec,
                      mb_per_second=images * record_bytes / sec / 1e6, seconds=windows,
                      data_shape=shape)


def run_bench(spec, threads=None, batches=50, warmup=5, repeats=3, dtype="float32", log=None):
    """``measure`` for each thread count in ``threads`` (default 1..CPU count)."""
    if threads is None:
        threads = list(range(1, (os.cpu_count() or 1) + 1))
    record_bytes = _mean_record_bytes(spec)
    points = []
    for t in threads:
        p = measure(spec, int(t), batches=batches, warmup=warmup, repeats=repeats, dtype=dtype,
                    record_bytes=record_bytes)
        points.append(p)
        if log:
            log(p)
    return points


def format_table(points):
    lines = [f"{'threads':>7}  {'images/s':>12}  {'MB/s':>9}  {'speed-up':>8}"]
    base = points[0].images_per_second if points else 1.0
    for p in points:
        lines.append(f"{p.threads:>7}  {p.images_per_second:>12,.0f}  {p.mb_per_second:>9.1f}  "
                     f"{p.images_per_second / base:>7.2f}x")
    return "\n".join(lines)
