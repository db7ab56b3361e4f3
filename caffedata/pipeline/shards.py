"""Shards: which part of every epoch each of ``num_parts`` data-parallel readers takes.

Pure arithmetic on record positions (no MXNet, no I/O), used by the epoch
planner.  ``num_parts`` and ``part_index`` are ImageRecordIter's names; with
distributed training they are ``kv.num_workers`` and ``kv.rank``
(``shard_from(kv)``).

The rules
---------
Every part computes the same *epoch order* ``G``: the record positions of the
epoch (``num_examples`` of them, wrapping around the database as Caffe's
cursor does), shuffled by the same seeded permutation on every part when
``shuffle`` is on, preceded by the previous epoch's leftovers under
``roll_over``.  All parts must therefore be built with the same ``seed``,
``shuffle``, ``num_examples``, ``batch_size`` and ``last_batch_handle``.
``G`` is then split into ``num_parts`` *contiguous* slices, part ``k`` taking
the ``k``-th one: the parts are disjoint and together cover the epoch exactly.
With ``shuffle`` the permutation is new every epoch, so records move between
parts from epoch to epoch, none lost or duplicated.

Every part has the same number of batches per epoch, so that ``dist_sync``
workers never wait on one another at an epoch's end:

=============  ==============================================================
``pad``        ``G`` is split as evenly as possible (slices differ by at most
               one record); every part gets ``ceil(ceil(len(G) / P) / B)``
               batches and the short parts are completed with the epoch's
               first records (``G`` from its start, cyclically).  Each
               batch's ``pad`` counts its trailing padding items; a part can
               get a batch that is padding only (``pad == B``) when the epoch
               is too short to give every part a record in its last batch.
``discard``    ``G`` is cut to the largest multiple of ``P * B`` positions, the
               tail is dropped, and every part gets ``len(G) // (P * B)`` full
               batches.
``roll_over``  As ``discard``, but the tail (fewer than ``P * B`` positions)
               starts the next epoch's ``G``, on every part alike.
=============  ==============================================================

With ``num_parts=1`` these are exactly the unsharded iterator's rules.

Random draws.  The crops and mirrors follow the seed rule of ``sampling.py``:
at an epoch's start every part draws the raw values for *all* parts' slots
(``total_slots``, in part order) and keeps those of its own slots
(``draw_start`` onwards).  So every part's engine advances identically, the
draws are a function of the seed, the epoch and the shard only.  Under
``discard``/``roll_over`` the parts' batches, laid end to end in part order,
are slot for slot (records, crops, mirrors) those of one unsharded iterator
with batch size ``P * B``; under ``pad`` the parts hold the same records as
the unsharded epoch, with their own slots' draws.

Errors.  ``part_index`` outside ``[0, num_parts)``, ``num_parts`` larger than
the database or than the records of one epoch, or a ``discard``/``roll_over``
epoch too short to give each part one batch, raise ``SpecError``.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError

__all__ = ["Shard", "PartPlan", "shard_from", "check_shard", "split_epoch", "part_sizes"]


@dataclass(frozen=True)
class Shard:
    """Part ``part_index`` of ``num_parts`` (the default is the whole epoch)."""

    num_parts: int = 1
    part_index: int = 0

    def __post_init__(self):
        for name in ("num_parts", "part_index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SpecError(f"{name} must be an integer, got {value!r}")
        if self.num_parts < 1:
            raise SpecError(f"num_parts must be >= 1, got {self.num_parts}")
        if not 0 <= self.part_index < self.num_parts:
            raise SpecError(f"part_index must be in [0, {self.num_parts}) for num_parts="
                            f"{self.num_parts}, got {self.part_index} -- parts are numbered "
                            f"from 0 (use kv.rank)")


def shard_from(shard=None, num_parts=None, part_index=None):
    """The ``Shard`` asked for: ``shard`` (a kvstore or a ``Shard``) or the two numbers.

    A kvstore gives ``num_parts=kv.num_workers, part_index=kv.rank``; any
    object with those two attributes works.  Giving both a ``shard`` and the
    numbers is an error, unless they agree.
    """
    explicit = None
    if num_parts is not None or part_index is not None:
        explicit = Shard(int(num_parts) if num_parts is not None else 1,
                         int(part_index) if part_index is not None else 0)
    if shard is None:
        return explicit or Shard()
    if isinstance(shard, Shard):
        from_shard = shard
    elif hasattr(shard, "num_workers") and hasattr(shard, "rank"):
        from_shard = Shard(int(shard.num_workers), int(shard.rank))
    else:
        raise SpecError(f"shard must be a kvstore (with num_workers and rank) or a Shard, "
                        f"got {type(shard).__name__}")
    if explicit is not None and explicit != from_shard:
        raise SpecError(f"shard gives num_parts={from_shard.num_parts}, part_index="
                        f"{from_shard.part_index} but num_parts={num_parts}, part_index="
                        f"{part_index} were also given -- pass one or the other")
    return from_shard


def check_shard(shard, num_records, num_examples, batch_size, last_batch_handle, where=""):
    """SpecError unless every part of ``shard`` gets records (and, under discard/roll_over, a batch)."""
    prefix = f"{where}: " if where else ""
    parts = shard.num_parts
    if parts > num_records:
        raise SpecError(f"{prefix}num_parts={parts} is larger than the {num_records} records of "
                        f"the database -- use at most {num_records} parts")
    if parts > num_examples:
        raise SpecError(f"{prefix}num_parts={parts} is larger than num_examples={num_examples} "
                        f"-- every part needs at least one record per epoch")
    if (parts > 1 and last_batch_handle in ("discard", "roll_over")
            and num_examples < parts * batch_size):
        raise SpecError(f"{prefix}last_batch_handle={last_batch_handle!r} with num_examples="
                        f"{num_examples} < num_parts * batch_size = {parts * batch_size} leaves "
                        f"the first epoch without a batch on every part -- use 'pad', fewer "
                        f"parts or a smaller batch_size")


def part_sizes(length, num_parts):
    """Records of each part when ``length`` positions are split as evenly as possible."""
    base, extra = divmod(int(length), int(num_parts))
    return [base + (1 if k < extra else 0) for k in range(num_parts)]


@dataclass
class PartPlan:
    """One part's share of an epoch.

    ``slots``: record index per slot (``len(pads) * batch_size`` of them);
    ``pads``: trailing padding items of each batch; ``draw_start`` and
    ``total_slots``: where this part's slots lie among all parts' slots (for
    the random draws); ``carry``: roll_over leftovers for the next epoch.
    """

    slots: np.ndarray
    pads: list
    draw_start: int
    total_slots: int
    carry: np.ndarray


def split_epoch(order, batch_size, shard, last_batch_handle):
    """Part ``shard.part_index``'s slots of the epoch order ``order`` (see the module rules)."""
    order = np.asarray(order, dtype=np.int64)
    B, P, k = int(batch_size), shard.num_parts, shard.part_index
    empty = np.zeros(0, dtype=np.int64)
    if last_batch_handle == "pad":
        sizes = part_sizes(len(order), P)
        batches = -(-sizes[0] // B)  # part 0 is never shorter than the others
        per_part = batches * B
        start = sum(sizes[:k])
        mine = order[start:start + sizes[k]]
        need = per_part - len(mine)
        if need:
            # np.resize repeats the epoch order cyclically: its first records, then again.
            mine = np.concatenate([mine, np.resize(order, need) if len(order) else empty])
        pads = [min(B, max(0, (b + 1) * B - sizes[k])) for b in range(batches)]
        return PartPlan(mine, pads, k * per_part, P * per_part, empty)
    if last_batch_handle not in ("discard", "roll_over"):
        raise SpecError(f"last_batch_handle must be 'pad', 'discard' or 'roll_over', "
                        f"got {last_batch_handle!r}")
    batches = len(order) // (P * B)
    per_part = batches * B
    used = P * per_part
    carry = order[used:] if last_batch_handle == "roll_over" else empty
    mine = order[k * per_part:(k + 1) * per_part]
    return PartPlan(mine, [0] * batches, k * per_part, used, carry)
