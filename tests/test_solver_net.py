"""Solver(solver.prototxt) building caffedata.Net train/test nets, as caffe.get_solver does."""
import io
import os

import numpy as np
import pytest

from caffedata.solver.solver import Solver, get_solver
from caffedata.solver.state import read_solver_state

from test_solver_loop import B_INIT, LABELS, W_INIT, X, numpy_sgd

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 3 } shape { dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
"""
BATCH = {"data": X.astype(np.float32), "label": LABELS.astype(np.float32)}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tiny.prototxt").write_text(NET)
    return tmp_path


def set_init(solver):
    solver.net.net.params["fc"][0][...] = W_INIT
    solver.net.net.params["fc"][1][...] = B_INIT


def test_solver_from_prototxt_steps_like_caffe_sgd(files):
    path = files / "solver.prototxt"
    path.write_text(f'net: "{files}/tiny.prototxt" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 '
                    f'weight_decay: 0.01 max_iter: 3 test_iter: 1 test_interval: 2 display: 1')
    log = io.StringIO()
    solver = get_solver(str(path), batches=[BATCH], test_batches=[[BATCH]], log_stream=log)
    assert solver.param.snapshot_prefix == str(files / "solver")
    assert len(solver.test_nets) == 1 and solver.net.learnable_names == ["fc[0]", "fc[1]"]
    assert (solver.net.lr_mults, solver.net.decay_mults) == ([1.0, 2.0], [1.0, 0.0])
    set_init(solver)
    solver.step(3)
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    theta, losses = numpy_sgd(3, lr=f32(0.1), momentum=f32(0.9), wd=f32(0.01))
    np.testing.assert_allclose(solver.net.net.params["fc"][0], theta[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(solver.net.net.params["fc"][1], theta[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([h["loss"] for h in solver.history], losses, rtol=1e-5)
    text = log.getvalue()
    assert "Test net output #0: accuracy = " in text and "Test net output #1: loss = " in text
    assert "Train net output #0: loss = " in text and "(* 1 = " in text


@pytest.mark.parametrize("kind", ["Nesterov", "AdaDelta"])
def test_net_solver_resumes_with_identical_losses(files, kind):
    text = (f'net: "{files}/tiny.prototxt" base_lr: 0.5 lr_policy: "step" gamma: 0.5 stepsize: 4 '
            f'type: "{kind}" momentum: 0.9 weight_decay: 0.001 max_iter: 15 snapshot: 5 '
            f'snapshot_prefix: "{files}/snap"')
    whole = Solver(text, batches=[BATCH])
    set_init(whole)
    whole.solve()
    assert os.path.isfile(f"{files}/snap_iter_5.caffemodel")
    assert read_solver_state(f"{files}/snap_iter_5.solverstate").iter == 5
    resumed = Solver(text, batches=[BATCH])
    resumed.restore(f"{files}/snap_iter_5.solverstate")
    resumed.step(10)
    np.testing.assert_array_equal([h["loss"] for h in resumed.history],
                                  [h["loss"] for h in whole.history][5:])
    np.testing.assert_array_equal(resumed.net.net.params["fc"][0], whole.net.net.params["fc"][0])
