"""Batch engines for the per-sample data layers: ImageData, MemoryData, HDF5Data, DummyData.

Each is a source (``caffedata/sources``) plus the shared ``BatchEngine``:

* ``ImageEngine``: sources whose records are images (an ImageData list, a
  MemoryData array).  Every record goes through the same checks and the same
  Cython transform as a Data layer's (crop, mirror, mean, scale), drawn from
  the same seeded stream.
* ``TensorEngine``: sources whose records are rows of arrays with no
  transform, as in Caffe (HDF5Data, DummyData): one array per top, any rank.
"""
import numpy as np

from ..formats.mean import load_mean_file
from .engine import BatchEngine
from .kernels import BatchAssembler


class ImageEngine(BatchEngine):
    """Transformed image batches: top 0 the data (B, C, H, W), top 1 (if any) the labels (B,)."""

    def __init__(self, spec, source, flat=False, **options):
        self.spec, self.source, self.flat = spec, source, bool(flat)
        self.path = source.path
        super().__init__(where=self.path, num_records=len(source), batch_size=spec.batch_size,
                         transform=spec.transform, **options)
        t = spec.transform
        mean = load_mean_file(t.mean_file) if t.mean_file else None
        self.assembler = BatchAssembler(t, mean, self.path, self.dtype)
        first = source.record(0)
        self.first_chw = (first.channels, first.height, first.width)
        self.assembler.check(first, source.key(0), 0, self.first_chw)
        B = spec.batch_size
        data = (B,) + self.assembler.out_chw(*self.first_chw)
        self.shapes = ((B, int(np.prod(data[1:]))) if self.flat else data, (B,))[:len(spec.tops)]

    def _build_batch(self, batch, state):
        records = np.ascontiguousarray(batch.records, dtype=np.int64)
        B = len(records)
        first = self.source.record(int(records[0]))
        chw = self.assembler.batch_chw(first, self.source.key(int(records[0])), int(records[0]),
                                       self.first_chw, B, what="image",
                                       hint="images of different sizes need crop_size, "
                                            "new_height/new_width, or batch_size 1")
        out, labels = self._pool.acquire(((B,) + self.assembler.out_chw(*chw), (B,)), self.dtype)
        tp = self.assembler.params(*chw)
        self._transform_checked(first, records, 0, chw, batch.draws, out, labels)
        i = 1
        while i < B:
            # The source's fast loop runs up to the first item it cannot do; that one takes the
            # general path, which raises (or, under on_error, skips) it with its message.
            i = self.source.transform_records(records, i, B, tp, batch.draws, out, labels)
            if i < B:
                self._transform_checked(self.source.record(int(records[i])), records, i, chw,
                                        batch.draws, out, labels)
                i += 1
        if self.flat:
            out = out.reshape(B, -1)
        return (out, labels)[:len(self.spec.tops)], batch.pad, batch.records

    def _transform_checked(self, rec, records, i, chw, draws, out, labels):
        """Item ``i`` of a batch from its ``Record``: checked against the batch, then transformed."""
        r = int(records[i])
        self.assembler.check(rec, self.source.key(r), r, chw)
        self.assembler.transform_record(rec, draws[i], out[i])
        labels[i] = rec.label


class TensorEngine(BatchEngine):
    """Untransformed batches: top ``t`` is ``(B,) + source.row_shapes[t]``."""

    def __init__(self, spec, source, **options):
        self.spec, self.source = spec, source
        self.path = source.path
        permutation = getattr(source, "permutation", None)
        super().__init__(where=self.path, num_records=len(source), batch_size=spec.batch_size,
                         permutation=permutation, **options)
        self.shapes = tuple((spec.batch_size,) + tuple(shape) for shape in source.row_shapes)

    def _make_state(self):
        return self.source.open_state()

    def _close_state(self, state):
        self.source.close_state(state)

    def _build_batch(self, batch, state):
        B = len(batch.records)
        outs = self._pool.acquire(tuple((B,) + s[1:] for s in self.shapes), self.dtype)
        if hasattr(self.source, "fill_batch"):
            self.source.fill_batch(batch.epoch, batch.number, outs)
        else:
            self.source.read_into(batch.records, outs, state)
        return outs, batch.pad, batch.records
