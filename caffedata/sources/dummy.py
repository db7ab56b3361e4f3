"""Caffe's `DummyData` source: every batch made by the layer's fillers, no records read.

As ``DummyDataLayer``: a constant filler fills its top once (every batch is
the same), any other filler refills its top for every batch.  The random
values come from a NumPy generator seeded by (seed, epoch, batch number), so
the same seed gives the same batches whatever the thread count.
"""
import numpy as np

from ..formats.fillers import fill


class DummySource:
    def __init__(self, spec, seed=0):
        self.spec = spec
        self.path = f"DummyData layer '{spec.name}'"
        self.seed = int(seed)
        self.row_shapes = tuple(shape[1:] for shape in spec.shapes)

    def __len__(self):
        return self.spec.batch_size  # one batch per epoch unless num_examples says otherwise

    def open_state(self):
        return None

    def close_state(self, state):
        pass

    def fill_batch(self, epoch, number, outs):
        rng = np.random.default_rng([self.seed, epoch, number])
        for out, filler in zip(outs, self.spec.fillers):
            out[...] = fill(out.shape, filler, rng)
