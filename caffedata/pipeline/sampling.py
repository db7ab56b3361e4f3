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

Memory.  An unsharded epoch is an ``EpochPlan``: each batch is computed on
demand from the epoch's saved random states, so memory is bounded by the
database, never by ``num_examples``.  A sharded epoch (``shards.py``) is laid
out whole, because every part must see the same epoch order to cut its slice:
its memory grows with ``num_examples``.
"""
import enum
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from .kernels import draw_count, expand_draws
from .shards import Shard, check_shard, split_epoch


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
        self._permute = permutation or (lambda rng: rng.permutation(self.num_records))
        self.shard = shard if shard is not None else Shard()
        check_shard(self.shard, self.num_records, self.num_examples, self.batch_size,
                    last_batch_handle)
        self.carry = np.zeros(0, dtype=np.int64)  # roll_over leftovers

    def _permutation(self, rng):
        """One shuffled pass over the records."""
        return self._permute(rng)

    def _order(self):
        """Record indices of one epoch, num_examples long (the sharded, eager layout)."""
        n, total = self.num_records, self.num_examples
        if not self.shuffle:
            return np.arange(total, dtype=np.int64) % n
        passes = -(-total // n)
        return np.concatenate([self._permutation(self.shuffle_rng) for _ in range(passes)])[:total]

    def batches_per_epoch(self):
        """How many batches this part of the next planned epoch holds."""
        span = self.num_examples + len(self.carry)
        if self.shard.num_parts == 1:
            full, rest = divmod(span, self.batch_size)
            return full + (1 if rest and self.last_batch_handle == "pad" else 0)
        slots = np.zeros(span, dtype=np.int64)  # only the count matters
        return len(split_epoch(slots, self.batch_size, self.shard, self.last_batch_handle).pads)

    def plan_epoch(self, epoch):
        """This part's batches of the epoch, in order.  Advances the random streams by a whole epoch."""
        if self.shard.num_parts == 1:
            return self._plan_lazily(epoch)
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

    def _plan_lazily(self, epoch):
        """The epoch's batches, in order, computed on demand (``EpochPlan``).

        Advances the random streams by a whole epoch now, in time proportional
        to num_examples but in constant memory, so that the next epoch's plan
        does not depend on how much of this one is read.
        """
        n, B = self.num_records, self.batch_size
        carry = self.carry if self.last_batch_handle == "roll_over" else np.zeros(0, dtype=np.int64)
        span = len(carry) + self.num_examples  # positions: the carry, then num_examples records
        full, rest = divmod(span, B)
        pad = 0
        if rest and self.last_batch_handle == "pad":
            full += 1
            pad = B - rest
        shuffle_state = self.shuffle_rng.bit_generator.state if self.shuffle else None
        last_pass = None
        if self.shuffle:
            for _ in range(-(-self.num_examples // n)):
                last_pass = self._permutation(self.shuffle_rng)
        plan = EpochPlan(self, epoch, carry, span, full, pad, shuffle_state,
                         self.engine.state)
        k = draw_count(self.transform)
        _advance(self.engine, full * B * k)
        if rest and self.last_batch_handle == "roll_over":
            # The leftover positions [full*B, span) start the next epoch.
            q = np.arange(full * B, span, dtype=np.int64) - len(carry)
            from_carry = q < 0
            left = np.empty(len(q), dtype=np.int64)
            left[from_carry] = carry[q[from_carry] + len(carry)]
            q = q[~from_carry]
            left[~from_carry] = last_pass[q % n] if self.shuffle else q % n
            self.carry = left
        else:
            self.carry = np.zeros(0, dtype=np.int64)
        return plan


def _advance(engine, count, chunk=1 << 20):
    """Draw and drop ``count`` raw outputs, in bounded memory."""
    while count > 0:
        step = min(count, chunk)
        engine.random_raw(step, output=False)
        count -= step


# How many record positions of an epoch plan are computed at once.
CHUNK_POSITIONS = 1 << 16


class EpochPlan(Sequence):
    """The batches of one epoch, each computed when asked for.

    Memory is bounded by the database size (one shuffled pass is kept), never
    by ``num_examples``.  Batches are meant to be read in order; an earlier
    batch is recomputed from the epoch's saved random states.  Thread-safe.
    """

    def __init__(self, planner, epoch, carry, span, batches, pad, shuffle_state, engine_state):
        self.planner, self.epoch = planner, epoch
        self.carry = carry
        self.span = span  # positions before padding
        self.batches, self.pad = batches, pad
        self._shuffle_state, self._engine_state = shuffle_state, engine_state
        self._lock = threading.Lock()
        self._passes = {}  # pass number -> permutation (the first and the latest)
        self._shuffle = None
        self._next_pass = 0
        self._engine = None
        self._drawn = 0  # positions whose draws self._engine has produced
        self._chunk_batches = max(1, CHUNK_POSITIONS // planner.batch_size)
        self._chunk = -1
        self._chunk_records = self._chunk_draws = None

    def __len__(self):
        return self.batches

    def copy(self):
        """The same plan with fresh working state (e.g. in a forked child, where a
        worker of the parent may have held the lock or been halfway through a batch)."""
        return EpochPlan(self.planner, self.epoch, self.carry, self.span, self.batches, self.pad,
                         self._shuffle_state, self._engine_state)

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[i] for i in range(*b.indices(self.batches))]
        if b < 0:
            b += self.batches
        if not 0 <= b < self.batches:
            raise IndexError(b)
        B = self.planner.batch_size
        with self._lock:
            chunk = b // self._chunk_batches
            if chunk != self._chunk:
                # Batches are computed a chunk at a time: vectorised, and bounded in memory.
                first = chunk * self._chunk_batches
                count = min(self._chunk_batches, self.batches - first) * B
                positions = np.arange(first * B, first * B + count, dtype=np.int64)
                padding = positions >= self.span
                positions[padding] = (positions[padding] - self.span) % self.span
                self._chunk_records = self._records(positions)
                self._chunk_draws = self._draws(first * B, count)
                self._chunk = chunk
            at = (b - self._chunk * self._chunk_batches) * B
            records = self._chunk_records[at:at + B]
            draws = self._chunk_draws[at:at + B]
        return Batch(self.epoch, b, records, draws, self.pad if b == self.batches - 1 else 0)

    def _records(self, positions):
        planner, carry = self.planner, self.carry
        n = planner.num_records
        q = positions - len(carry)
        out = np.empty(len(positions), dtype=np.int64)
        from_carry = q < 0
        out[from_carry] = carry[positions[from_carry]]
        q = q[~from_carry]
        if not planner.shuffle:
            out[~from_carry] = q % n
            return out
        passes = q // n
        picked = np.empty(len(q), dtype=np.int64)
        for number in np.unique(passes).tolist():  # a batch spans one or two passes
            here = passes == number
            picked[here] = self._pass(number)[q[here] % n]
        out[~from_carry] = picked
        return out

    def _pass(self, number):
        if number in self._passes:
            return self._passes[number]
        if self._shuffle is None or number < self._next_pass:
            self._shuffle = np.random.Generator(type(self.planner.shuffle_rng.bit_generator)())
            self._shuffle.bit_generator.state = self._shuffle_state
            self._next_pass = 0
        while self._next_pass <= number:
            perm = self.planner._permutation(self._shuffle)
            if self._next_pass == 0 or self._next_pass == number:
                self._passes = {k: v for k, v in self._passes.items() if k == 0}
                self._passes[self._next_pass] = perm
            self._next_pass += 1
        return self._passes[number]

    def _draws(self, first, count):
        transform = self.planner.transform
        k = draw_count(transform)
        if not k:
            return np.zeros((count, 3), dtype=np.uint32)
        if self._engine is None or first < self._drawn:
            self._engine = np.random.MT19937(0)
            self._engine.state = self._engine_state
            self._drawn = 0
        _advance(self._engine, (first - self._drawn) * k)
        raw = self._engine.random_raw(count * k).astype(np.uint32).reshape(count, k)
        self._drawn = first + count
        return np.ascontiguousarray(expand_draws(raw, transform))
