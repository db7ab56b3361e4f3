"""``CaffeDataIter``: a Caffe data layer as an ``mx.io.DataIter``.

A thin adapter over ``caffedata.DataLayer``: MXNet names, ``DataDesc`` shapes
known before the first batch, ``DataBatch.pad``, ``reset()``, the whole
``DataIter`` contract (``iter_next``/``getdata``/``getlabel``/``getpad``/
``getindex``, ``len``), and NDArrays that wrap the layer's numpy buffers
without a copy.
"""
import ctypes

import mxnet as mx
import numpy as np

from . import _dlpack
from ..errors import SpecError
from ..pipeline.layer import DataLayer


def _from_dlpack_address():
    try:
        return ctypes.cast(mx.base._LIB.MXNDArrayFromDLPackEx, ctypes.c_void_p).value
    except AttributeError:  # pragma: no cover - an MXNet without it
        return None


_FROM_DLPACK = _from_dlpack_address()


def _wrap(array):
    """An NDArray over ``array``'s memory (no copy); it keeps ``array`` referenced until freed.

    The DLPack structure is built in ``_dlpack`` (mx.nd.from_numpy builds it with
    ctypes, ~70 us per array); MXNet's from_numpy is the fallback.
    """
    if _FROM_DLPACK is not None:
        handle = _dlpack.ndarray_handle(array, _FROM_DLPACK)
        if handle is None:
            raise mx.base.MXNetError(mx.base.py_str(mx.base._LIB.MXGetLastError()))
        return mx.nd.NDArray(handle=mx.base.NDArrayHandle(handle))
    # from_numpy marks what it wraps read-only: give it a view, not the pooled buffer.
    return mx.nd.from_numpy(array.view(), zero_copy=True)


class CaffeDataIter(mx.io.DataIter):
    """Iterate a Caffe LMDB/LevelDB dataset exactly as Caffe's Data layer transforms it.

    Parameters (the old plugin's first, then ImageRecordIter's words)
    ----------
    prototxt : str
        A Caffe data layer in protobuf text, e.g. ``layer { type: "Data" top: "data"
        top: "label" include { phase: TEST } transform_param { scale: 0.00390625 }
        data_param { source: "mnist_test_lmdb" batch_size: 100 backend: LMDB } }``,
        or the path of a file holding it.  Legacy ``layers { type: DATA ... }`` works.
    flat : bool
        Report data as (N, C*H*W) instead of (N, C, H, W).
    num_examples : int, optional
        Records per epoch (default: all records).  Larger than the database wraps
        around it, as Caffe's cursor does.
    data_name, label_name : str
        Names in ``provide_data`` / ``provide_label``.
    dtype : 'float32' or 'float64'
        Data and label dtype.
    shuffle : bool
        A fresh permutation of the records every pass (default off: Caffe's key order).
    seed : int
        Seed of the random crops/mirrors (an ``std::mt19937(seed)`` stream drawn in
        Caffe's order) and of the shuffle.  The same seed gives the same batches,
        whatever ``preprocess_threads`` is.
    preprocess_threads : int, optional
        Threads that read, decode and transform (they run without the GIL).  Default:
        the usable cores of the process, at most 4; pass a number to pin it.
    prefetch_buffer : int
        Batches prepared ahead (default ``data_param.prefetch``, i.e. 4).
    last_batch_handle : 'pad', 'discard' or 'roll_over'
        What happens to a last partial batch, as in ``mx.io.NDArrayIter``.
        With 'pad' it is completed with the epoch's first records and
        ``DataBatch.pad`` counts them.
    on_error : 'raise', 'skip' or 'warn'
        Bad records raise (default) or are replaced by the next good record
        (counted in ``it.layer.skipped``); 'warn' also logs each once.
    arrays : dict, optional
        A MemoryData layer's arrays by top name, e.g. ``{"data": X, "label": y}``.
    num_parts, part_index : int
        Read only part ``part_index`` (from 0) of ``num_parts`` disjoint parts of
        every epoch, as ImageRecordIter does, for data-parallel training.  All
        parts must share ``seed``, ``shuffle``, ``num_examples`` and
        ``last_batch_handle``; every part gets the same number of batches per
        epoch (rules in ``caffedata/pipeline/shards.py``).
    shard : mx.kv.KVStore, optional
        Take the part from a kvstore: ``num_parts=kv.num_workers, part_index=kv.rank``.

    Epochs start at the first record (``reset()`` mid-epoch restarts cleanly)
    and hold exactly ``num_examples`` records (plus padding); ``len(it)`` is the
    number of batches per epoch.  The arrays of a batch are NDArrays that stay
    valid for as long as you hold them: they wrap the layer's batch buffers
    without a copy, and a buffer is reused only after every NDArray made from
    it has been freed (by you and by MXNet's engine, which keeps an array alive
    until its pending operations ran).  For numpy batches without MXNet in
    between, iterate ``it.layer`` (a ``caffedata.DataLayer``) instead.
    """

    def __init__(self, prototxt="layer{}", flat=False, num_examples=None, data_name="data",
                 label_name="softmax_label", dtype=None, shuffle=False, seed=0,
                 preprocess_threads=None, prefetch_buffer=None, last_batch_handle="pad",
                 on_error="raise", arrays=None, num_parts=None, part_index=None, shard=None,
                 **kwargs):
        unknown = set(kwargs) - {"ctx"}  # the old plugin accepted (and ignored) ctx
        if unknown:
            raise SpecError(f"CaffeDataIter got unknown arguments {sorted(unknown)}")
        self._dtype = np.dtype(dtype or "float32")
        self.layer = DataLayer(prototxt, flat=flat, num_examples=num_examples, dtype=self._dtype,
                               shuffle=shuffle, seed=seed, preprocess_threads=preprocess_threads,
                               prefetch_buffer=prefetch_buffer, last_batch_handle=last_batch_handle,
                               on_error=on_error, arrays=arrays, num_parts=num_parts,
                               part_index=part_index, shard=shard)
        spec = self.layer.spec
        super().__init__(spec.batch_size)
        self.spec = spec
        self.data_name, self.label_name = data_name, label_name
        self.num_examples = self.layer.num_examples
        self.num_parts, self.part_index = self.layer.num_parts, self.layer.part_index
        # Top 0 is the data, top 1 the label; further tops (HDF5Data) join the data by their names.
        shapes = list(self.layer.shapes.values())
        names = [data_name, label_name] + list(self.layer.tops[2:])
        layouts = ["NC" if flat else "NCHW", "N"]
        descs = [mx.io.DataDesc(name, shape, self._dtype, layout=layout)
                 if layout and len(layout) == len(shape) else mx.io.DataDesc(name, shape, self._dtype)
                 for name, shape, layout in zip(names, shapes, layouts + [None] * len(shapes))]
        self._provide_data = [descs[0]] + descs[2:]
        self._provide_label = descs[1:2]
        self._current = None  # the batch iter_next() fetched

    @property
    def provide_data(self):
        return self._provide_data

    @property
    def provide_label(self):
        return self._provide_label

    def __len__(self):
        """Batches per epoch."""
        return len(self.layer)

    def reset(self):
        """Start the next epoch at the first record (drops any prefetched batches)."""
        self.layer.reset()
        self._current = None

    def iter_next(self):
        """Fetch the next batch for getdata()/getlabel()/getpad(); False at the end of the epoch."""
        try:
            self._current = self._next_batch()
        except StopIteration:
            self._current = None
            return False
        return True

    def next(self):
        if self.iter_next():
            return self._current
        raise StopIteration

    def _next_batch(self):
        batch = self.layer.next_batch()
        arrays = list(batch.values())
        # Zero copy: the NDArrays wrap the layer's pooled buffers, which are
        # not rewritten until MXNet and the caller have both let go of them.
        data = [_wrap(arrays[0])] + [_wrap(a) for a in arrays[2:]]
        labels = [_wrap(a) for a in arrays[1:2]]
        provide_data = self._provide_data
        if arrays[0].shape != provide_data[0].shape:  # records of varying size, batch 1
            provide_data = [mx.io.DataDesc(self.data_name, arrays[0].shape, self._dtype)]
        return mx.io.DataBatch(data=data, label=labels, pad=batch.pad, index=batch.index,
                               provide_data=provide_data, provide_label=self._provide_label)

    def _fetched(self):
        if self._current is None:
            raise mx.base.MXNetError("no current batch: call iter_next() first (and check that it "
                                     "returned True)")
        return self._current

    def getdata(self):
        return self._fetched().data

    def getlabel(self):
        return self._fetched().label

    def getpad(self):
        return self._fetched().pad

    def getindex(self):
        """The record numbers (positions in the database's key order) of the current batch."""
        return self._fetched().index

    def close(self):
        """Stop the worker threads and close the database."""
        self.layer.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
