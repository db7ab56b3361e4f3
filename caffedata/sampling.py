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
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
                 seed=0, last_batch_handle="pad"):
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
        self.carry = np.zeros(0, dtype=np.int64)  # roll_over leftovers

    def _permutation(self, rng):
        """One shuffled pass over the records."""
        return rng.permutation(self.num_records)

    def plan_epoch(self, epoch):
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
