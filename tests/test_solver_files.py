"""Solver parameters, lr-policy bookkeeping, log lines and .solverstate files (reference §2.7, §3.3, §5)."""
import datetime
import os
import math
import re

import h5py
import numpy as np
import pytest

from caffedata.errors import SpecError
from caffedata.proto import message_class
from caffedata.solver import log
from caffedata.solver.lr_policy import CaffeLRScheduler, LearningRatePolicy, learning_rate
from caffedata.solver.params import load_solver_param
from caffedata.solver.state import (SolverStateData, history_from_states, read_solver_state,
                                    snapshot_filenames, states_from_history, write_solver_state)

# --- SolverParameter ------------------------------------------------------------------------------


def test_defaults_and_upgrades(tmp_path):
    path = tmp_path / "lenet_solver.prototxt"
    path.write_text('net: "train_val.prototxt"\nbase_lr: 0.01\nlr_policy: "inv"\ngamma: 0.0001\n'
                    'power: 0.75\nsolver_type: NESTEROV\n')
    p = load_solver_param(str(path))
    assert p.type == "Nesterov" and not p.HasField("solver_type")
    assert p.snapshot_prefix == str(tmp_path / "lenet_solver")  # extension removed
    assert math.isclose(p.rms_decay, 0.99, rel_tol=1e-7)
    assert (p.average_loss, p.iter_size, p.test_initialization, p.clip_gradients) == (1, 1, True, -1)
    assert p.regularization_type == "L2" and math.isclose(p.momentum2, 0.999, rel_tol=1e-7)
    assert math.isclose(p.delta, 1e-8, rel_tol=1e-6) and p.snapshot_after_train


def test_snapshot_prefix_directory(tmp_path):
    (tmp_path / "snapdir").mkdir()
    path = tmp_path / "e5solver.prototxt"
    path.write_text(f'base_lr: 0.1 lr_policy: "fixed" snapshot_prefix: "{tmp_path / "snapdir"}"')
    assert load_solver_param(str(path)).snapshot_prefix == str(tmp_path / "snapdir" / "e5solver")


@pytest.mark.parametrize("text, field", [
    ('base_lr: 0.1', "lr_policy"),
    ('lr_policy: "cosine"', "lr_policy"),
    ('lr_policy: "step" gamma: 0.1', "stepsize"),
    ('lr_policy: "sigmoid" gamma: 0.1', "stepsize"),
    ('lr_policy: "exp" gamma: -0.1', "gamma"),
    ('lr_policy: "poly" power: 1', "max_iter"),
    ('lr_policy: "fixed" type: "Adagrad2"', "type"),
    ('lr_policy: "fixed" type: "AdaGrad" momentum: 0.9', "momentum"),
    ('lr_policy: "fixed" type: "RMSProp" rms_decay: 1.0', "rms_decay"),
    ('lr_policy: "fixed" average_loss: 0', "average_loss"),
    ('lr_policy: "fixed" regularization_type: "L3"', "regularization_type"),
    ('lr_policy: "fixed" type: "SGD" solver_type: ADAM', "solver_type"),
    ('lr_policy: "fixed" net: "a" test_iter: 10', "test_interval"),
    ('lr_policy: "fixed" train_net: "a" test_net: "b"', "test_iter"),
    ('lr_policy: "fixed" net: "a" train_net: "b"', "train_net"),
])
def test_invalid_solver_names_the_field(text, field):
    with pytest.raises(SpecError, match=field):
        load_solver_param(text)


def test_unparsable_solver_file(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text("base_lr: 0.1 lr_polic: 3")
    with pytest.raises(SpecError, match=str(path)):
        load_solver_param(str(path))
    with pytest.raises(SpecError, match="not found"):
        load_solver_param(str(tmp_path / "missing.prototxt"))


# --- lr policies: Caffe's bookkeeping ------------------------------------------------------------


def test_multistep_advances_at_most_one_step_per_call():
    p = load_solver_param('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 3')
    # jumping to iter 10 from step 0: Caffe advances once per GetLearningRate call
    assert learning_rate(p, 10, 0) == (0.5, 1)
    assert learning_rate(p, 11, 1) == (0.25, 2)
    assert learning_rate(p, 12, 2) == (0.25, 2)
    policy = LearningRatePolicy(p)
    assert [policy.rate(i) for i in range(5)] == [1.0, 1.0, 0.5, 0.25, 0.25]
    assert policy.messages == ["MultiStep Status: Iteration 2, step = 1",
                               "MultiStep Status: Iteration 3, step = 2"]
    # asking again for the same iteration (MXNet asks once per parameter) does not advance
    policy = LearningRatePolicy(p)
    assert [policy.rate(2), policy.rate(2), policy.rate(2)] == [0.5, 0.5, 0.5]


def test_step_sets_current_step_and_rates_are_float32():
    p = load_solver_param('base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 3')
    rate, step = learning_rate(p, 7, 0)
    assert step == 2
    assert rate == float(np.float32(float(np.float32(0.01)) * float(np.float32(0.1)) ** 2))


def test_inv_rate_as_logged_by_caffe():
    # lenet_solver: base_lr 0.01, inv, gamma 1e-4, power 0.75; Caffe logs "Iteration 5, lr = 0.00999625"
    p = load_solver_param('base_lr: 0.01 lr_policy: "inv" gamma: 0.0001 power: 0.75')
    assert log.fmt(learning_rate(p, 5)[0]) == "0.00999625"


def test_scheduler_first_update_is_caffe_iteration_zero():
    p = load_solver_param('base_lr: 1 lr_policy: "exp" gamma: 0.5')
    s = CaffeLRScheduler(p)
    assert [s(1), s(2), s(3)] == [1.0, 0.5, 0.25]
    assert s.base_lr == 1.0


# --- log lines --------------------------------------------------------------------------------------

# Caffe's tools/extra/parse_log.py (master), re-implemented: its regexes and its date parsing.
RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def parse_log_datetime(line, year):
    """extract_seconds.extract_datetime_from_line: ``I<mm><dd> <hh:mm:ss.us> ...``."""
    fields = line.strip().split()
    month, day = int(fields[0][1:3]), int(fields[0][3:])
    stamp = fields[1]
    pos = stamp.rfind(".")
    hour, minute, second = (int(x) for x in stamp[:pos].split(":"))
    return datetime.datetime(year, month, day, hour, minute, second, int(stamp[pos + 1:]))


def test_line_texts_match_the_reference():
    assert log.display_line(5, 38.4615, 0.13, 5, 2.13447) == \
        "Iteration 5 (38.4615 iter/s, 0.13s/5 iters), loss = 2.13447"
    assert log.train_output_line(0, "loss", 2.48986, 1.0) == \
        "    Train net output #0: loss = 2.48986 (* 1 = 2.48986 loss)"
    assert log.test_output_line(0, "accuracy", 0.1) == "    Test net output #0: accuracy = 0.1"
    assert log.lr_line(0, 0.01) == "Iteration 0, lr = 0.01"
    assert log.lr_line(3, 1e-5) == "Iteration 3, lr = 1e-05"
    assert log.testing_line(20) == "Iteration 20, Testing net (#0)"
    assert log.multistep_line(2, 1) == "MultiStep Status: Iteration 2, step = 1"
    assert log.snapshot_model_line("snap/lenet_rand_iter_20.caffemodel") == \
        "Snapshotting to binary proto file snap/lenet_rand_iter_20.caffemodel"
    assert log.snapshot_state_line("s_iter_2.solverstate.h5", hdf5=True) == \
        "Snapshotting solver state to HDF5 file s_iter_2.solverstate.h5"
    assert log.final_loss_line(20, 0.306209) == "Iteration 20, loss = 0.306209"
    assert log.OPTIMIZATION_DONE == "Optimization Done."
    assert log.clipping_line(7.5, 5, 2 / 3) == \
        "Gradient clipping: scaling down gradients (L2 norm 7.5 > 5) by scale factor 0.666667"
    assert log.fmt(1.23456789e8) == "1.23457e+08" and log.fmt(float("nan")) == "-nan"


def test_output_lines_number_every_element():
    lines = log.output_lines("Test", [("accuracy", 0.5), ("prob", np.array([0.25, 0.75]))],
                             {"prob": 2.0})
    assert lines == ["    Test net output #0: accuracy = 0.5",
                     "    Test net output #1: prob = 0.25 (* 2 = 0.5 loss)",
                     "    Test net output #2: prob = 0.75 (* 2 = 1.5 loss)"]


def test_caffe_parse_log_regexes_read_our_lines():
    when = datetime.datetime(2026, 11, 29, 13, 5, 51, 738376).timestamp()
    text = [
        log.glog_prefix("solving", when, 19622) + log.solving_line("LeNet"),
        log.glog_prefix("testing", when, 19622) + log.testing_line(0),
        log.glog_prefix("test_output", when, 19622) + log.test_output_line(0, "accuracy", 0.1),
        log.glog_prefix("test_output", when, 19622) + log.test_output_line(1, "loss", 2.47257, 1),
        log.glog_prefix("display", when + 1, 19622) + log.display_line(0, 1.6e18, 0.103, 5, 2.48986),
        log.glog_prefix("train_output", when + 1, 19622) + log.train_output_line(0, "loss", 2.48986, 1),
        log.glog_prefix("lr", when + 1.5, 19622) + log.lr_line(0, 1e-5),
    ]
    assert re.match(r"I1129 13:05:51\.738376 19622 solver\.cpp:289\] Solving LeNet$", text[0])
    assert [RE_ITERATION.search(t).group(1) for t in text if RE_ITERATION.search(t)] == ["0"] * 3
    assert RE_TEST_OUTPUT.search(text[2]).groups() == ("0", "accuracy", "0.1")
    assert RE_TEST_OUTPUT.search(text[3]).groups() == ("1", "loss", "2.47257")
    assert RE_TRAIN_OUTPUT.search(text[5]).groups() == ("0", "loss", "2.48986")
    assert float(RE_LR.search(text[6]).group(1)) == 1e-5
    start = parse_log_datetime(text[0], 2026)
    assert (parse_log_datetime(text[6], 2026) - start).total_seconds() == pytest.approx(1.5, abs=2e-6)
    assert log.glog_prefix("display", when, 1, year=True).startswith("I20261129 13:05:51.738376")


def test_smoothed_loss_matches_caffe_update():
    s = log.SmoothedLoss(3)
    s.reset(start_iter=10)
    losses = [4.0, 2.0, 3.0, 1.0, 5.0]
    out = [s.update(L, 10 + i) for i, L in enumerate(losses)]
    # running means, then ring update: 3 + (1 - 4)/3 = 2, 2 + (5 - 2)/3 = 3
    assert out == [4.0, 3.0, 3.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        log.SmoothedLoss(0)


# --- .solverstate ---------------------------------------------------------------------------------


def test_snapshot_file_names():
    assert snapshot_filenames("snap/lenet", 20) == ("snap/lenet_iter_20.caffemodel",
                                                   "snap/lenet_iter_20.solverstate")
    assert snapshot_filenames("p", 5, snapshot_format=0) == ("p_iter_5.caffemodel.h5",
                                                            "p_iter_5.solverstate.h5")


@pytest.mark.parametrize("suffix", [".solverstate", ".solverstate.h5"])
def test_solverstate_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    history = [rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)]
    path = str(tmp_path / f"s_iter_7{suffix}")
    state = SolverStateData(iter=7, learned_net="snap/s_iter_7.caffemodel", history=history, current_step=2)
    write_solver_state(path, state)
    back = read_solver_state(path)
    assert (back.iter, back.learned_net, back.current_step) == (7, "snap/s_iter_7.caffemodel", 2)
    assert len(back.history) == 2
    for a, b in zip(history, back.history):
        np.testing.assert_array_equal(a, b)
        assert a.shape == b.shape


def test_binary_solverstate_is_caffes_message(tmp_path):
    # parse with the schema directly: iter / learned_net / history with shape.dim / current_step
    path = str(tmp_path / "x.solverstate")
    write_solver_state(path, SolverStateData(3, "x_iter_3.caffemodel", [np.ones((2, 1), np.float32)], 1))
    msg = message_class("SolverState")()
    with open(path, "rb") as f:
        msg.ParseFromString(f.read())
    assert msg.iter == 3 and msg.current_step == 1 and msg.learned_net == "x_iter_3.caffemodel"
    assert list(msg.history[0].shape.dim) == [2, 1] and list(msg.history[0].data) == [1.0, 1.0]


def test_hdf5_solverstate_layout(tmp_path):
    path = str(tmp_path / "x.solverstate.h5")
    write_solver_state(path, SolverStateData(3, "x.caffemodel.h5", [np.zeros(4, np.float32)], 0))
    with h5py.File(path, "r") as f:
        assert f["iter"][0] == 3 and f["current_step"][0] == 0
        assert f["learned_net"][()].rstrip(b"\0") == b"x.caffemodel.h5"
        assert list(f["history"].keys()) == ["0"] and f["history"]["0"].shape == (4,)


def test_history_order_two_blocks_and_count_check():
    states = [("m0", "v0"), ("m1", "v1")]
    assert history_from_states(states, "Adam") == ["m0", "m1", "v0", "v1"]
    assert states_from_history(["m0", "m1", "v0", "v1"], "Adam", 2) == states
    assert history_from_states(["h0", "h1"], "SGD") == ["h0", "h1"]
    with pytest.raises(SpecError, match="Incorrect length of history blobs"):
        states_from_history(["h0", "h1"], "Adam", 2)


def test_corrupt_solverstate(tmp_path):
    path = tmp_path / "bad.solverstate"
    path.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(SpecError, match="bad.solverstate"):
        read_solver_state(str(path))
    with pytest.raises(SpecError, match="not found"):
        read_solver_state(str(tmp_path / "none.solverstate"))


def test_solver_modules_import_without_mxnet():
    """Only caffedata.solver.optimizers may import mxnet when imported (the lead registers it lazily)."""
    import subprocess
    import sys
    import textwrap

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(f"""
        import importlib, os, sys, types
        sys.modules["mxnet"] = None  # importing mxnet now fails
        pkg = types.ModuleType("caffedata")  # skip caffedata/__init__ (the old layout imports mxnet)
        pkg.__path__ = [os.path.join({root!r}, "caffedata")]
        sys.modules["caffedata"] = pkg
        for name in ["lr_policy", "params", "log", "state", "solver", "module_net", "net_adapter", "commands"]:
            importlib.import_module("caffedata.solver." + name)
        importlib.import_module("caffedata.solver")
        try:
            importlib.import_module("caffedata.solver.optimizers")
        except ImportError:
            print("optimizers needs mxnet")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "optimizers needs mxnet"
