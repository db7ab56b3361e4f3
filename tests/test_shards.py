"""Shard arithmetic (caffedata/pipeline/shards.py) and sharded pipelines on real LMDBs.

Expectations are written independently of the code under test: hand-computed
layouts for small cases, and for 1-5 parts the property that the parts'
non-padding slots, concatenated in part order, are exactly the unsharded
iterator's epoch (same positions, same records, same random draws).
"""
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import MT19937, data_prototxt

from caffedata.errors import SpecError
from caffedata.pipeline.engine import CaffePipeline
from caffedata.pipeline.shards import Shard, check_shard, part_sizes, shard_from, split_epoch
from caffedata.formats.prototxt import data_layer_spec
from caffedata.pipeline.sampling import EpochPlanner
from caffedata.formats.spec import Phase, TransformSpec

TRAIN_RANDOM = TransformSpec(mirror=True, crop_size=3, phase=Phase.TRAIN)  # 3 draws per slot


def planners(parts, n=23, examples=None, batch=5, lbh="pad", shuffle=False, seed=7,
             transform=TRAIN_RANDOM):
    return [EpochPlanner(n, examples or n, batch, transform, shuffle=shuffle, seed=seed,
                         last_batch_handle=lbh, shard=Shard(parts, k)) for k in range(parts)]


def real_items(batches):
    """(record, draws row) of every non-padding slot, in order."""
    out = []
    for b in batches:
        keep = len(b.records) - b.pad
        out += [(int(r), tuple(d)) for r, d in zip(b.records[:keep], b.draws[:keep])]
    return out


# -- hand-computed layouts ---------------------------------------------------------

def test_pad_layout_by_hand():
    # 7 positions, 2 parts, batch 3: parts of 4 and 3 records, 2 batches each.
    p0 = split_epoch(np.arange(7), 3, Shard(2, 0), "pad")
    p1 = split_epoch(np.arange(7), 3, Shard(2, 1), "pad")
    assert p0.slots.tolist() == [0, 1, 2, 3, 0, 1] and p0.pads == [0, 2]
    assert p1.slots.tolist() == [4, 5, 6, 0, 1, 2] and p1.pads == [0, 3]  # a batch of padding only
    assert (p0.draw_start, p1.draw_start, p0.total_slots) == (0, 6, 12)


def test_discard_and_roll_over_layout_by_hand():
    order = np.arange(100, 123)  # 23 positions, 2 parts x batch 5 -> 2 batches each, 3 left
    d = [split_epoch(order, 5, Shard(2, k), "discard") for k in range(2)]
    assert d[0].slots.tolist() == list(range(100, 110)) and d[1].slots.tolist() == list(range(110, 120))
    assert d[0].pads == d[1].pads == [0, 0] and len(d[0].carry) == 0
    r = split_epoch(order, 5, Shard(2, 1), "roll_over")
    assert r.slots.tolist() == list(range(110, 120)) and r.carry.tolist() == [120, 121, 122]


def test_part_sizes_differ_by_at_most_one():
    for length in range(1, 40):
        for parts in range(1, 6):
            sizes = part_sizes(length, parts)
            assert sum(sizes) == length and max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)


# -- 1-5 parts: disjoint, complete, equal batch counts, same draws -------------------

@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n,examples,batch", [(23, None, 5), (23, 23, 4), (7, 25, 3), (10, 10, 10),
                                              (12, 12, 2)])
def test_pad_parts_cover_each_epoch_exactly(parts, shuffle, n, examples, batch):
    whole = planners(1, n, examples, batch, "pad", shuffle)[0]
    mine = planners(parts, n, examples, batch, "pad", shuffle)
    mt = MT19937(7)  # the planners' seed: std::mt19937(7), drawn for all parts' slots
    for epoch in range(3):
        expected = [r for r, _ in real_items(whole.plan_epoch(epoch))]
        plans = [p.plan_epoch(epoch) for p in mine]
        batches = len(plans[0])
        assert [len(plan) for plan in plans] == [batches] * parts  # equal on every part
        got = sum(([r for r, _ in real_items(plan)] for plan in plans), [])
        assert got == expected  # disjoint, complete, in the epoch's order
        sizes = [sum(batch - b.pad for b in plan) for plan in plans]
        assert max(sizes) - min(sizes) <= 1 and batches == -(-max(sizes) // batch)
        raw = np.array([[mt(), mt(), mt()] for _ in range(parts * batches * batch)], np.uint32)
        for k, plan in enumerate(plans):
            draws = np.concatenate([b.draws for b in plan])
            assert (draws == raw[k * batches * batch:(k + 1) * batches * batch]).all()
            for b in plan:
                assert len(b.records) == batch and 0 <= b.pad <= batch
                # padding is the epoch's first records, as in the unsharded iterator
                assert expected[:b.pad] == b.records[batch - b.pad:].tolist()


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shuffle", [False, True])
def test_discard_parts_drop_only_the_epoch_tail(parts, shuffle):
    n, batch = 29, 3
    whole = planners(1, n, None, batch * parts, "discard", shuffle)[0]  # same cut: P*B
    mine = planners(parts, n, None, batch, "discard", shuffle)
    for epoch in range(3):
        expected = real_items(whole.plan_epoch(epoch))
        plans = [p.plan_epoch(epoch) for p in mine]
        assert [len(plan) for plan in plans] == [n // (parts * batch)] * parts
        assert all(b.pad == 0 for plan in plans for b in plan)
        assert sum((real_items(plan) for plan in plans), []) == expected


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shuffle", [False, True])
def test_roll_over_parts_carry_the_same_leftovers(parts, shuffle):
    n, batch, epochs = 23, 2, 5
    mine = planners(parts, n, None, batch, "roll_over", shuffle)
    # Independent reference: the epoch orders laid end to end, cut into P*B chunks.
    rng = np.random.default_rng(7)
    stream = np.concatenate([rng.permutation(n) if shuffle else np.arange(n) for _ in range(epochs)])
    seen, chunk = [], parts * batch
    for epoch in range(epochs):
        plans = [p.plan_epoch(epoch) for p in mine]
        assert len({len(plan) for plan in plans}) == 1
        assert len({len(p.carry) for p in mine}) == 1 and all(
            (p.carry == mine[0].carry).all() for p in mine)
        seen += sum(([int(r) for b in plan for r in b.records] for plan in plans), [])
        # epoch e consumed whole chunks of the stream; the rest is carried
        assert len(seen) == (n * (epoch + 1) // chunk) * chunk
    assert seen == stream[:len(seen)].tolist()


def test_shuffle_moves_records_between_parts_and_is_seeded():
    a = planners(3, 30, None, 4, "pad", shuffle=True, seed=11)
    b = planners(3, 30, None, 4, "pad", shuffle=True, seed=11)
    first = [[r for r, _ in real_items(p.plan_epoch(0))] for p in a]
    second = [[r for r, _ in real_items(p.plan_epoch(1))] for p in a]
    assert first == [[r for r, _ in real_items(p.plan_epoch(0))] for p in b]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(30))
    assert set(first[0]) != set(second[0])  # part 0 holds other records in epoch 1


def test_num_examples_larger_than_the_db_splits_positions():
    parts = planners(3, 7, 25, 3, "pad")
    got = sum(([r for r, _ in real_items(p.plan_epoch(0))] for p in parts), [])
    assert got == [i % 7 for i in range(25)]  # each record as often as the unsharded epoch has it


# -- errors and the kvstore helper -----------------------------------------------------

def test_bad_shards_are_spec_errors():
    with pytest.raises(SpecError, match=r"part_index must be in \[0, 2\).*got 2"):
        Shard(2, 2)
    with pytest.raises(SpecError, match="part_index"):
        Shard(2, -1)
    with pytest.raises(SpecError, match="num_parts must be >= 1"):
        Shard(0, 0)
    with pytest.raises(SpecError, match="integer"):
        Shard(2.0, 0)
    with pytest.raises(SpecError, match="num_parts=9 is larger than the 8 records"):
        check_shard(Shard(9, 0), 8, 8, 1, "pad")
    with pytest.raises(SpecError, match="larger than num_examples=4"):
        check_shard(Shard(5, 0), 8, 4, 1, "pad")
    for lbh in ("discard", "roll_over"):
        with pytest.raises(SpecError, match="without a batch on every part"):
            check_shard(Shard(3, 0), 8, 8, 3, lbh)
    check_shard(Shard(3, 0), 8, 8, 3, "pad")  # pad gives every part a (padded) batch
    with pytest.raises(SpecError, match="larger than the 8 records"):
        EpochPlanner(8, 8, 2, TRAIN_RANDOM, shard=Shard(9, 3))


def test_shard_from_a_kvstore_or_numbers():
    kv = SimpleNamespace(num_workers=4, rank=3)  # what mx.kv.KVStore exposes
    assert shard_from(kv) == Shard(4, 3)
    assert shard_from(None, 3, 1) == Shard(3, 1)
    assert shard_from() == Shard(1, 0)
    assert shard_from(kv, 4, 3) == Shard(4, 3)
    with pytest.raises(SpecError, match="pass one or the other"):
        shard_from(kv, 2, 0)
    with pytest.raises(SpecError, match="kvstore"):
        shard_from("dist_sync")


# -- a sharded pipeline on a real LMDB (labels carry the record ids) -------------------

def _items(batches):
    """(label, data bytes) of every non-padding item."""
    return [(int(l), d.tobytes()) for (data, labels), pad, _ in batches
            for d, l in zip(data[:len(data) - pad], labels[:len(labels) - pad])]


@pytest.mark.parametrize("lbh", ["pad", "discard", "roll_over"])
def test_sharded_pipelines_read_disjoint_parts_of_a_real_db(raw_db, lbh):
    db = raw_db(n=23)
    text = dict(phase="TRAIN", transform="mirror: true crop_size: 3")
    parts = []
    for k in range(2):
        runs = []
        for threads in (1, 3):  # the same seed gives the same batches whatever the threads
            pipe = CaffePipeline(data_layer_spec(data_prototxt(db, 4, **text)), shuffle=True, seed=5,
                                 last_batch_handle=lbh, num_parts=2, part_index=k,
                                 preprocess_threads=threads)
            runs.append([list(pipe) for _ in range(2)])
            pipe.close()
        assert [_items(e) for e in runs[0]] == [_items(e) for e in runs[1]]
        parts.append(runs[0])
    for epoch in range(2):
        assert len(parts[0][epoch]) == len(parts[1][epoch])
        got = _items(parts[0][epoch]) + _items(parts[1][epoch])
        if lbh == "pad":
            assert sorted(r for r, _ in got) == list(range(23))
    if lbh != "pad":
        # one unsharded pipeline with batch 2 x 4 cuts the epochs where the 2 parts do,
        # and gives the same records with the same crops and mirrors
        whole = CaffePipeline(data_layer_spec(data_prototxt(db, 8, **text)), shuffle=True, seed=5,
                              last_batch_handle=lbh)
        for epoch in range(2):
            expected = _items(list(whole))
            assert _items(parts[0][epoch]) + _items(parts[1][epoch]) == expected
        whole.close()
