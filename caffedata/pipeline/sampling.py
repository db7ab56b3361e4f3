"""Which records each batch of an epoch holds, and the random draws that go with them.

Framework-neutral and deterministic: everything here is a function of the
seed, the epoch number and the options, never of thread timing.

Epochs.  Epoch ``e`` covers ``num_examples`` record positions starting at the
first key (so every validation epoch sees the same records).  Position ``i``
holds record ``order[i % N]`` of the current pass over the ``N`` records;
a ``num_examples`` larger than the database wraps around it, as Caffe's cursor
does.  With ``shuffle`` every pass is a fresh permutation.

The last partial batch follows ``last_batch_handle`` (a ``LastBatch``, or
NDArrayIter's strings).  For 7 records (0..6), batch 3, no shuffle:

=============  =========================================  ==========================================
policy         epoch 1                                    epochs 2 and 3
=============  =========================================  ==========================================
``pad``        [0 1 2] [3 4 5] [6 0 1] (pad = 2: the      the same as epoch 1
               epoch's first records complete the batch)
``discard``    [0 1 2] [3 4 5] (6 is dropped)             the same as epoch 1
``roll_over``  [0 1 2] [3 4 5] (6 carried over)           [6 0 1] [2 3 4] (5, 6 carried), then
                                                          [5 6 0] [1 2 3] [4 5 6]
=============  =========================================  ==========================================

Random draws.  The engine is MT19937 seeded exactly like C++'s
``std::mt19937(seed)`` (and Caffe's ``boost::mt19937``).  Per record, in
Caffe's order, it draws the mirror bit (if mirror) and then the crop offsets
(TRAIN with crop_size), each used as ``draw % n``.  An epoch's draws are made
at its start for all its slots, so a mid-epoch ``reset()`` leaves the stream
where a full epoch would.  With ``seed`` equal to a Caffe transformer's engine
seed, crops and mirrors match that Caffe run record for record.
"""
import enum
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from .shards import Shard, check_shard, split_epoch
from .kernels import draw_count, expand_draws


class LastBatch(str, enum.Enum):
    """What happens to an epoch's last partial batch (see the table above)."""

    PAD = "pad"
    DISCARD = "discard"
    ROLL_OVER = "roll_over"

    @classmethod
    def parse(cls, value):
        try:
            return cls(value.value if isinstance(value, cls) else str(value).lower())
        except ValueError:
            raise SpecError(f"last_batch_handle must be one of {[m.value for m in cls]}, "
                            f"got {value!r}") from None


LAST_BATCH_HANDLES = tuple(m.value for m in LastBatch)


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
                 seed=0, last_batch_handle="pad", permutation=None, shard=None):
        last_batch_handle = LastBatch.parse(last_batch_handle).value
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
        # permutation(rng) -> one shuffled pass; a source may impose its own structure
        # (HDF5Data permutes files, then rows within each file).
        self.permutation = permutation or (lambda rng: rng.permutation(self.num_records))
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
        return np.concatenate([self.permutation(self.shuffle_rng) for _ in range(passes)])[:total]

    def batches_per_epoch(self):
        """How many batches this part of the next planned epoch holds."""
        slots = np.zeros(self.num_examples + len(self.carry), dtype=np.int64)  # only the count matters
        return len(split_epoch(slots, self.batch_size, self.shard, self.last_batch_handle).pads)

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
