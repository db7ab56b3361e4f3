"""``CaffeDataIter``: a Caffe ``Data`` layer as an ``mx.io.DataIter``.

A thin adapter over ``pipeline.CaffePipeline``: MXNet names, ``DataDesc``
shapes known before the first batch, ``DataBatch.pad``, ``reset()``.
"""
import ctypes

import mxnet as mx
import numpy as np

from . import _fast
from .errors import SpecError
from .pipeline import CaffePipeline
from .prototxt import data_layer_spec


def _from_dlpack_address():
    try:
        return ctypes.cast(mx.base._LIB.MXNDArrayFromDLPackEx, ctypes.c_void_p).value
    except AttributeError:  # pragma: no cover - an MXNet without it
        return None


_FROM_DLPACK = _from_dlpack_address()


def _wrap(array):
    """An NDArray over ``array``'s memory (no copy); it keeps ``array`` referenced until freed.

    The DLPack structure is built in ``_fast`` (mx.nd.from_numpy builds it with
    ctypes, ~70 us per array); MXNet's from_numpy is the fallback.
    """
    if _FROM_DLPACK is not None:
        handle = _fast.ndarray_handle(array, _FROM_DLPACK)
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
    preprocess_threads : int
        Threads that read, decode and transform (they run without the GIL).
    prefetch_buffer : int
        Batches prepared ahead (default ``data_param.prefetch``, i.e. 4).
    last_batch_handle : 'pad', 'discard' or 'roll_over'
        What happens to a last partial batch, as in ``mx.io.NDArrayIter``.
        With 'pad' it is completed with the epoch's first records and
        ``DataBatch.pad`` counts them.
    num_parts, part_index : int
        Read only part ``part_index`` (from 0) of ``num_parts`` disjoint parts of
        every epoch, as ImageRecordIter does, for data-parallel training.  All
        parts must share ``seed``, ``shuffle``, ``num_examples`` and
        ``last_batch_handle``; every part gets the same number of batches per
        epoch (rules in ``caffedata/pipeline/shards.py``).
    shard : mx.kv.KVStore, optional
        Take the part from a kvstore: ``num_parts=kv.num_workers, part_index=kv.rank``.

    Epochs start at the first record (``reset()`` mid-epoch restarts cleanly)
    and hold exactly ``num_examples`` records (plus padding).  The arrays of a
    batch are NDArrays that stay valid for as long as you hold them: they wrap
    the pipeline's batch buffers without a copy, and a buffer is reused only
    after every NDArray made from it has been freed (by you and by MXNet's
    engine, which keeps an array alive until its pending operations ran).
    """

    def __init__(self, prototxt="layer{}", flat=False, num_examples=None, data_name="data",
                 label_name="softmax_label", dtype=None, shuffle=False, seed=0,
                 preprocess_threads=1, prefetch_buffer=None, last_batch_handle="pad",
                 num_parts=None, part_index=None, shard=None, **kwargs):
        unknown = set(kwargs) - {"ctx"}  # the old plugin accepted (and ignored) ctx
        if unknown:
            raise SpecError(f"CaffeDataIter got unknown arguments {sorted(unknown)}")
        spec = data_layer_spec(prototxt)
        self._dtype = np.dtype(dtype or "float32")
        self._pipeline = CaffePipeline(
            spec, num_examples=num_examples, dtype=self._dtype, shuffle=shuffle, seed=seed,
            preprocess_threads=preprocess_threads, prefetch_buffer=prefetch_buffer,
            last_batch_handle=last_batch_handle, flat=flat, num_parts=num_parts,
            part_index=part_index, shard=shard)
        super().__init__(spec.batch_size)
        self.spec = spec
        self.data_name, self.label_name = data_name, label_name
        self.num_examples = self._pipeline.num_examples
        self.num_parts = self._pipeline.shard.num_parts
        self.part_index = self._pipeline.shard.part_index
        layout = "NC" if flat else "NCHW"
        self._provide_data = [mx.io.DataDesc(data_name, self._pipeline.data_shape, self._dtype,
                                             layout=layout)]
        self._provide_label = ([mx.io.DataDesc(label_name, self._pipeline.label_shape, self._dtype,
                                               layout="N")] if spec.has_label else [])
        self._epoch_started = False

    @property
    def provide_data(self):
        return self._provide_data

    @property
    def provide_label(self):
        return self._provide_label

    def reset(self):
        """Start the next epoch at the first record (drops any prefetched batches)."""
        self._pipeline.start_epoch()
        self._epoch_started = True

    def next(self):
        if not self._epoch_started:
            self.reset()
        data, label, pad = self._pipeline.next_batch()
        # Zero copy: the NDArrays wrap the pipeline's pooled buffers, which are
        # not rewritten until MXNet and the caller have both let go of them.
        arrays = [_wrap(data)]
        labels = [_wrap(label)] if self.spec.has_label else []
        return mx.io.DataBatch(data=arrays, label=labels, pad=pad, index=None,
                               provide_data=self._provide_data if data.shape == self._provide_data[0].shape
                               else [mx.io.DataDesc(self.data_name, data.shape, self._dtype)],
                               provide_label=self._provide_label)

    def close(self):
        """Stop the worker threads and close the database."""
        self._pipeline.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
