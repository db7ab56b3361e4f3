"""Which records each batch of an epoch holds, and the random draws that go with them.

Framework-neutral and deterministic: everything here is a function of the
seed, the epoch number and the options, never of thread timing.

Epochs.  Epoch ``e`` covers ``num_examples`` record positions starting at the
first key (so every validation epoch sees the same records).  Position ``i``
holds record ``order[i % N]`` of the current pass over the ``N`` records;
a ``num_examples`` larger than the database wraps around it, as Caffe's cursor
does.  With ``shuffle`` every pass is a fresh permutation.

The last partial batch follows ``last_batch_handle`` (NDArrayIter's words):

=============  ==========================================================
``pad``        filled with the epoch's first records; ``DataBatch.pad``
               says how many trailing items are padding
``discard``    dropped
``roll_over``  its records start the next epoch's first batch
=============  ==========================================================

Random draws.  The engine is MT19937 seeded exactly like C++'s
``std::mt19937(seed)`` (and Caffe's ``boost::mt19937``).  Per record, in
Caffe's order, it draws the mirror bit (if mirror) and then the crop offsets
(TRAIN with crop_size), each used as ``draw % n``.  An epoch's draws are made
at its start for all its slots, so a mid-epoch ``reset()`` leaves the stream
where a full epoch would.  With ``seed`` equal to a Caffe transformer's engine
seed, crops and mirrors match that Caffe run record for record.
"""
from dataclasses import dataclass

import numpy as np

from caffedata.pipeline.shards import Shard, check_shard, split_epoch

from .errors import SpecError
from .kernels import draw_count, expand_draws

LAST_BATCH_HANDLES = ("pad", "discard", "roll_over")


def caffe_engine(seed):
    """An MT19937 bit generator seeded like ``std::mt19937(seed)``."""
    engine = np.random.MT19937(0)
    engine._legacy_seeding(int(seed) & 0xFFFFFFFF)
    return engine


@dataclass
class Batch:
    """One planned batch: record indices, raw draws (B, 3) and how many items are padding."""

    epoch: int
    number: int
    records: np.ndarray
    draws: np.ndarray
    pad: int


class EpochPlanner:
    def __init__(self, num_records, num_examples, batch_size, transform, shuffle=False,
                 seed=0, last_batch_handle="pad", shard=None):
        if last_batch_handle not in LAST_BATCH_HANDLES:
            raise SpecError(f"last_batch_handle must be one of {LAST_BATCH_HANDLES}, "
                            f"got {last_batch_handle!r}")
        if num_records <= 0:
            raise SpecError("the database holds no records")
        self.num_records = int(num_records)
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.last_batch_handle = last_batch_handle
        self.engine = caffe_engine(seed)
        self.shuffle_rng = np.random.default_rng(seed)
        self.shard = shard if shard is not None else Shard()
        check_shard(self.shard, self.num_records, self.num_examples, self.batch_size,
                    last_batch_handle)
        self.carry = np.zeros(0, dtype=np.int64)  # roll_over leftovers

    def _order(self):
        """Record indices of one epoch, num_examples long."""
        n, total = self.num_records, self.num_examples
        if not self.shuffle:
            return np.arange(total, dtype=np.int64) % n
        passes = -(-total // n)
        return np.concatenate([self.shuffle_rng.permutation(n) for _ in range(passes)])[:total]

    def plan_epoch(self, epoch):
        """This part's batches of the epoch, in order.  Advances the random streams by a whole epoch."""
        order = self._order()
        if len(self.carry):
            order = np.concatenate([self.carry, order])
        part = split_epoch(order, self.batch_size, self.shard, self.last_batch_handle)
        self.carry = part.carry
        # Draws for every part's slots, so all parts' engines stay in step; keep ours.
        k = draw_count(self.transform)
        raw = (self.engine.random_raw(part.total_slots * k).astype(np.uint32)
               .reshape(part.total_slots, k) if k
               else np.zeros((part.total_slots, 0), dtype=np.uint32))
        draws = expand_draws(raw[part.draw_start:part.draw_start + len(part.slots)], self.transform)
        B = self.batch_size
        return [Batch(epoch, b, part.slots[b * B:(b + 1) * B],
                      np.ascontiguousarray(draws[b * B:(b + 1) * B]), pad)
                for b, pad in enumerate(part.pads)]
