"""``DataLayer``: a Caffe data layer as a framework-neutral iterator of numpy batches.

The one user-facing iterator of the core.  ``caffedata.mxnet.CaffeDataIter``
is a thin adapter over it; PyTorch and JAX users take the numpy arrays as they
come, or without a copy through DLPack::

    layer = caffedata.DataLayer("train_val.prototxt", phase="TRAIN", shuffle=True)
    for epoch in range(epochs):
        for batch in layer:                          # one epoch
            x = torch.from_dlpack(batch["data"])     # no copy
            y = torch.from_dlpack(batch["label"])
            n = len(y) - batch.pad                   # the last `pad` items repeat the epoch's first

A batch's arrays are pooled buffers: each one is rewritten only after every
holder has let it go (a numpy view, a torch or jax tensor made by DLPack, an
MXNet NDArray all hold a reference), so keeping a batch is always safe.
"""
from ..errors import SpecError
from ..formats.prototxt import layer_spec
from ..formats.spec import DataLayerSpec, DummyDataSpec, HDF5DataSpec, ImageDataSpec, MemoryDataSpec
from .engine import CaffePipeline
from .sample_engine import ImageEngine, TensorEngine


def make_engine(spec, arrays=None, flat=False, seed=0, **options):
    """The batch engine of a data layer spec (a source plus the shared engine)."""
    if arrays is not None and not isinstance(spec, MemoryDataSpec):
        raise SpecError(f"arrays= feeds a MemoryData layer, but this is a {type(spec).__name__[:-4]} "
                        f"layer -- drop arrays=")
    if isinstance(spec, DataLayerSpec):
        return CaffePipeline(spec, flat=flat, seed=seed, **options)
    if isinstance(spec, ImageDataSpec):
        from ..sources.image_list import ImageListSource

        if spec.shuffle:
            options["shuffle"] = True
        return ImageEngine(spec, ImageListSource(spec, seed), flat=flat, seed=seed, **options)
    if isinstance(spec, MemoryDataSpec):
        from ..sources.image_list import MemorySource

        if arrays is None:
            raise SpecError(f"MemoryData layer '{spec.name}' needs its arrays: DataLayer(prototxt, "
                            f"arrays={{'{spec.tops[0]}': X}}) with X of shape (N, C, H, W)")
        unknown = set(arrays) - set(spec.tops)
        if unknown:
            raise SpecError(f"arrays has {sorted(unknown)} but the layer's tops are {list(spec.tops)}")
        labels = arrays.get(spec.tops[1]) if spec.has_label else None
        source = MemorySource(spec, arrays.get(spec.tops[0]), labels)
        return ImageEngine(spec, source, flat=flat, seed=seed, **options)
    if isinstance(spec, HDF5DataSpec):
        from ..sources.hdf5 import HDF5Source

        if spec.shuffle:
            options["shuffle"] = True
        return TensorEngine(spec, HDF5Source(spec), seed=seed, **options)
    if isinstance(spec, DummyDataSpec):
        from ..sources.dummy import DummySource

        return TensorEngine(spec, DummySource(spec, seed), seed=seed, **options)
    raise SpecError(f"no engine for {type(spec).__name__}")


class Batch(dict):
    """One batch: ``{top name: numpy array}``; ``pad`` trailing items are padding.

    ``index`` holds each item's record number (its position in the source's
    key order), so a batch says exactly which records it holds.
    """

    def __init__(self, arrays, pad, index):
        super().__init__(arrays)
        self.pad = int(pad)
        self.index = index

    def __repr__(self):
        shapes = ", ".join(f"{k}: {v.shape}" for k, v in self.items())
        return f"Batch({{{shapes}}}, pad={self.pad})"


class DataLayer:
    """Batches of one Caffe data layer, exactly as Caffe transforms them.

    Parameters
    ----------
    prototxt : str
        The layer in protobuf text (``layer { type: "Data" ... }``, legacy
        ``layers {}`` too), or the path of a file holding it.  In a net with
        several data layers, ``phase`` picks one.
    phase : 'TRAIN', 'TEST' or None
        Which data layer of a train_val net to use (default: the only one).
    flat, num_examples, dtype, shuffle, seed, prefetch_buffer, last_batch_handle
        As ``CaffeDataIter`` (see its docstring).  ``shuffle`` is also on when the
        layer's own ``shuffle: true`` (ImageData, HDF5Data) says so.
    on_error : 'raise', 'skip' or 'warn'
        A corrupt record, an unreadable image or a missing file raises
        ``RecordError`` (default), or is replaced by the next good record
        ('skip'), or that and logged once per record ('warn').  ``skipped`` and
        ``bad_records`` (record number -> message) count them.
    num_parts, part_index, shard
        Read only part ``part_index`` of ``num_parts`` disjoint parts of every
        epoch (``shard=kv`` takes them from an MXNet kvstore); every part has the
        same number of batches (rules in ``caffedata/pipeline/shards.py``).
    arrays : dict, optional
        A MemoryData layer's arrays by top name: ``{"data": X, "label": y}`` with X
        of shape (N, C, H, W) (after the transform's crop, (C, H, W) is the layer's
        channels/height/width) and y of length N.
    preprocess_threads : int or None
        Worker threads; None takes the usable cores, at most 4.  The same seed
        gives the same batches whatever the thread count.

    Iterating the layer runs one epoch; the next ``iter()`` starts the next
    epoch (at the first record again, with the random streams moved on).
    """

    def __init__(self, prototxt, phase=None, flat=False, num_examples=None, dtype="float32",
                 shuffle=False, seed=0, preprocess_threads=None, prefetch_buffer=None,
                 last_batch_handle="pad", arrays=None, on_error="raise", num_parts=None,
                 part_index=None, shard=None):
        if isinstance(phase, str):
            from ..formats.spec import Phase

            try:
                phase = Phase[phase.upper()]
            except KeyError:
                raise SpecError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}") from None
        self.spec = layer_spec(prototxt, phase)
        self._pipeline = make_engine(
            self.spec, arrays=arrays, flat=flat, seed=seed, num_examples=num_examples, dtype=dtype,
            shuffle=shuffle, preprocess_threads=preprocess_threads, prefetch_buffer=prefetch_buffer,
            last_batch_handle=last_batch_handle, on_error=on_error, num_parts=num_parts,
            part_index=part_index, shard=shard)
        self.tops = tuple(self.spec.tops[:len(self._pipeline.shapes)])
        self._epoch_length = None  # batches of the running epoch; None before the first
        self._epoch_done = False

    # -- what the batches look like (known before the first batch) -----------
    @property
    def batch_size(self):
        return self.spec.batch_size

    @property
    def num_examples(self):
        return self._pipeline.num_examples

    @property
    def dtype(self):
        return self._pipeline.dtype

    @property
    def num_parts(self):
        return self._pipeline.shard.num_parts

    @property
    def part_index(self):
        return self._pipeline.shard.part_index

    @property
    def skipped(self):
        """How many distinct bad records were skipped under on_error 'skip'/'warn'."""
        return self._pipeline.skipped

    @property
    def bad_records(self):
        return dict(self._pipeline.bad_records)

    @property
    def preprocess_threads(self):
        return self._pipeline.threads

    @property
    def shapes(self):
        """``{top name: shape}`` of every batch."""
        return dict(zip(self.tops, self._pipeline.shapes))

    def __len__(self):
        """Batches of the running epoch or, between epochs, of the next one.

        Constant under 'pad' and 'discard'; under 'roll_over' it varies with the
        records carried over.
        """
        if self._epoch_length is not None and not self._epoch_done:
            return self._epoch_length
        return self._pipeline.planner.batches_per_epoch()

    # -- epochs --------------------------------------------------------------
    def reset(self):
        """Start the next epoch at its first record (drops prefetched batches)."""
        self._epoch_length = self._pipeline.start_epoch()
        self._epoch_done = False

    def next_batch(self):
        """The next ``Batch`` of the current epoch; StopIteration at its end, until ``reset()``.

        The first call starts the first epoch.
        """
        if self._epoch_length is None:
            self.reset()
        try:
            arrays, pad, records = self._pipeline.next_batch()
        except StopIteration:
            self._epoch_done = True
            raise
        return Batch(zip(self.tops, arrays), pad, records)

    def __iter__(self):
        self.reset()
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    # -- shutdown ------------------------------------------------------------
    def close(self):
        """Stop the worker threads and close the source."""
        self._pipeline.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
