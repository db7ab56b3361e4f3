"""The lazy epoch plan: the same batches and draws as planning a whole epoch at once, in bounded memory."""
import tracemalloc

import numpy as np
import pytest

from caffedata.pipeline.kernels import draw_count, expand_draws
from caffedata.pipeline.sampling import EpochPlanner, caffe_engine
from caffedata.formats.spec import Phase, TransformSpec


def eager_plan(n, total, B, transform, shuffle, seed, handle, epochs):
    """The plan as it was computed before it became lazy: every epoch materialised."""
    engine, rng, carry, out = caffe_engine(seed), np.random.default_rng(seed), np.zeros(0, np.int64), []
    for _ in range(epochs):
        if shuffle:
            order = np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]
        else:
            order = np.arange(total, dtype=np.int64) % n
        if handle == "roll_over" and len(carry):
            order = np.concatenate([carry, order])
        full, rest = divmod(len(order), B)
        pad = 0
        if rest and handle == "pad":
            order = np.concatenate([order, np.resize(order, B - rest)])
            full, pad = full + 1, B - rest
        elif rest and handle == "roll_over":
            carry, order = order[full * B:], order[:full * B]
        else:
            order = order[:full * B]
        if not (handle == "roll_over" and rest):
            carry = np.zeros(0, np.int64)
        k = draw_count(transform)
        raw = engine.random_raw(len(order) * k).astype(np.uint32).reshape(len(order), k)
        draws = expand_draws(raw, transform)
        out.append([(order[b * B:(b + 1) * B], draws[b * B:(b + 1) * B], pad if b == full - 1 else 0)
                    for b in range(full)])
    return out


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("handle", ["pad", "discard", "roll_over"])
@pytest.mark.parametrize("n,total,B", [(7, 7, 3), (5, 23, 4), (10, 4, 6), (3, 3, 8), (50, 120, 7)])
def test_lazy_plan_equals_the_eager_plan(shuffle, handle, n, total, B):
    transform = TransformSpec(mirror=True, crop_size=2, phase=Phase.TRAIN)  # 3 draws per record
    planner = EpochPlanner(n, total, B, transform, shuffle=shuffle, seed=11, last_batch_handle=handle)
    expected = eager_plan(n, total, B, transform, shuffle, 11, handle, epochs=4)
    for epoch, want in enumerate(expected):
        plan = planner.plan_epoch(epoch)
        assert len(plan) == len(want)
        order = list(range(len(plan)))
        if epoch == 2:
            order = order[::-1]  # out of order: recomputed from the saved states
        for b in order:
            got = plan[b]
            np.testing.assert_array_equal(got.records, want[b][0])
            np.testing.assert_array_equal(got.draws, want[b][1])
            assert got.pad == want[b][2]
        if epoch == 1 and len(plan) > 1:
            plan[0]  # a reset mid-epoch reads from the start again: nothing changes after


def test_huge_num_examples_plans_in_bounded_memory():
    transform = TransformSpec(mirror=False)
    planner = EpochPlanner(100_000, 2 * 10 ** 7, 256, transform, shuffle=True, seed=3)
    tracemalloc.start()
    plan = planner.plan_epoch(0)
    first = plan[0]
    last = plan[len(plan) - 1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(plan) == -(-2 * 10 ** 7 // 256)
    assert peak < 16 << 20, peak  # an eager plan needs 160 MB for the record order alone
    assert sorted(first.records[:256].tolist()) != list(range(256))  # shuffled
    assert last.pad == 256 * len(plan) - 2 * 10 ** 7
    assert 0 <= last.records.min() and last.records.max() < 100_000
