"""Solver(solver.prototxt) building caffedata.Net train/test nets, as caffe.get_solver does."""
import io
import json
import os

import numpy as np
import pytest

from caffedata.net.net import Net
from caffedata.proto import NetParameter
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


@pytest.mark.parametrize("kind, fmt", [("SGD", "BINARYPROTO"), ("Nesterov", "HDF5"), ("AdaDelta", "BINARYPROTO")])
def test_net_solver_resumes_with_identical_losses(files, kind, fmt):
    text = (f'net: "{files}/tiny.prototxt" base_lr: 0.5 lr_policy: "step" gamma: 0.5 stepsize: 4 '
            f'type: "{kind}" momentum: 0.9 weight_decay: 0.001 max_iter: 15 snapshot: 5 '
            f'snapshot_prefix: "{files}/snap" snapshot_format: {fmt}')
    whole = Solver(text, batches=[BATCH])
    set_init(whole)
    whole.solve()
    ext = ".h5" if fmt == "HDF5" else ""
    assert os.path.isfile(f"{files}/snap_iter_5.caffemodel{ext}")
    assert read_solver_state(f"{files}/snap_iter_5.solverstate{ext}").iter == 5
    resumed = Solver(text, batches=[BATCH])
    resumed.restore(f"{files}/snap_iter_5.solverstate{ext}")
    resumed.step(10)
    np.testing.assert_array_equal([h["loss"] for h in resumed.history],
                                  [h["loss"] for h in whole.history][5:])
    np.testing.assert_array_equal(resumed.net.net.params["fc"][0], whole.net.net.params["fc"][0])


@pytest.mark.parametrize("kind, fmt", [("SGD", "BINARYPROTO"), ("Adam", "HDF5")])
def test_snapshot_diff_holds_the_last_applied_update(files, kind, fmt):
    """snapshot_diff: the model file's diffs are Δ of the update just applied (w_before - w_after)."""
    text = (f'net: "{files}/tiny.prototxt" base_lr: 0.1 lr_policy: "fixed" type: "{kind}" momentum: 0.9 '
            f'weight_decay: 0.01 max_iter: 3 snapshot_diff: true snapshot_prefix: "{files}/d" '
            f'snapshot_format: {fmt}')
    solver = Solver(text, batches=[BATCH])
    set_init(solver)
    solver.step(2)
    before = [b.copy() for b in solver.net.net.params["fc"]]
    solver.step(1)
    model, _ = solver.snapshot()
    after = solver.net.net.params["fc"]
    if fmt == "HDF5":
        import h5py
        with h5py.File(model, "r") as f:
            diffs = [f["diff/fc/0"][()], f["diff/fc/1"][()]]
            assert f["diff/loss"] is not None and len(f["diff/loss"]) == 0
    else:
        with open(model, "rb") as f:
            layer = {lp.name: lp for lp in NetParameter.FromString(f.read()).layer}["fc"]
        diffs = [np.asarray(b.diff, np.float32).reshape(w.shape) for b, w in zip(layer.blobs, after)]
    for d, b, a in zip(diffs, before, after):
        assert np.abs(d).max() > 0
        np.testing.assert_allclose(d, b - a, rtol=1e-4, atol=1e-8)
    if kind == "SGD":  # Caffe's SGD: Δ is the momentum history, stored in the .solverstate too
        np.testing.assert_array_equal(diffs[0], solver.history_arrays()[0])


def test_fast_module_path_equals_the_net_path(files):
    """ModuleNet.from_net (one bound executor, NDArray weights) trains exactly as the Net adapter."""
    import mxnet as mx

    from caffedata.solver.module_net import ModuleNet

    text = (f'base_lr: 0.1 lr_policy: "fixed" type: "Adam" momentum: 0.9 weight_decay: 0.01 max_iter: 4 '
            f'snapshot_prefix: "{files}/fast"')
    slow = Solver(f'net: "{files}/tiny.prototxt" ' + text, batches=[BATCH])
    set_init(slow)
    slow.step(4)
    net = Net(str(files / "tiny.prototxt"), phase="TRAIN")
    net.params["fc"][0][...] = W_INIT
    net.params["fc"][1][...] = B_INIT
    it = mx.io.NDArrayIter(BATCH["data"], BATCH["label"], batch_size=8, label_name="label")
    fast_net = ModuleNet.from_net(net, it)
    assert fast_net.rescale_grad == 1 / 8 and fast_net.output_loss_weights == {"loss": 1.0}
    fast = Solver(text, fast_net)
    fast.step(4)
    np.testing.assert_allclose([h["loss"] for h in fast.history], [h["loss"] for h in slow.history], rtol=1e-6)
    w_fast = fast_net.exe.arg_dict[fast_net.learnable_names[0]].asnumpy()
    np.testing.assert_allclose(w_fast, slow.net.net.params["fc"][0], rtol=1e-5, atol=1e-7)
    # its snapshot is the Net's .caffemodel, readable back into a fresh Net
    model, _ = fast.snapshot()
    back = Net(str(files / "tiny.prototxt"), phase="TEST", weights=model)
    np.testing.assert_allclose(back.params["fc"][0], w_fast, rtol=0, atol=0)


TRAIN_VAL = """name: "dbnet"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "{db}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "{db}" batch_size: 5 backend: LMDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param {{ num_output: 23 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
"""


def test_train_val_with_data_layers_fast_and_net_paths_agree(tmp_path, raw_db):
    from caffedata.solver.module_net import ModuleNet
    from caffedata.solver.net_adapter import CaffeNetAdapter

    db = raw_db(n=23)
    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL.format(db=db))
    text = (f'net: "{tmp_path}/train_val.prototxt" test_iter: 2 test_interval: 3 base_lr: 0.05 '
            f'lr_policy: "inv" gamma: 0.1 power: 0.75 momentum: 0.9 weight_decay: 0.0005 max_iter: 6 '
            f'display: 3 snapshot_prefix: "{tmp_path}/dbnet" random_seed: 5 snapshot_diff: true')
    runs = {}
    for fast in (True, False):
        log = io.StringIO()
        with Solver(text, fast=fast, log_stream=log) as solver:
            kind = ModuleNet if fast else CaffeNetAdapter
            assert isinstance(solver.net, kind) and isinstance(solver.test_nets[0], kind)
            solver.solve()
            with open(tmp_path / "dbnet_iter_6.caffemodel", "rb") as f:
                ip = {lp.name: lp for lp in NetParameter.FromString(f.read()).layer}["ip"]
            runs[fast] = ([h["loss"] for h in solver.history],
                          [t["outputs"]["accuracy"] for t in solver.test_history], log.getvalue(),
                          np.asarray(ip.blobs[0].diff))
    # the same random_seed gives the same xavier weights, the same data order gives the same losses
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-6)
    assert len(runs[True][1]) == 3  # tests at 0, 3 and 6 (the last in Solve)
    assert runs[True][3].size == 23 * 90 and np.abs(runs[True][3]).max() > 0  # snapshot_diff, both paths
    np.testing.assert_allclose(runs[True][3], runs[False][3], rtol=1e-4, atol=1e-9)
    assert "Test net output #0: accuracy = " in runs[True][2]
    assert "Test net output #1: loss = " in runs[True][2]
    assert os.path.isfile(tmp_path / "dbnet_iter_6.caffemodel")


CONV_TRAIN_VAL = """name: "convnet"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "{db}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "{db}" batch_size: 5 backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param {{ bias_term: true }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param {{ num_output: 23 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
"""


def test_native_solver_trains_like_the_exact_one(tmp_path, raw_db):
    """Solver(native=True): native MXNet Convolution/Scale/Pooling/FullyConnected, the same numbers.

    (Not BatchNorm: its native running statistics follow MXNet's rule, see caffedata/net/native.py.)
    """
    db = raw_db(n=23)
    (tmp_path / "train_val.prototxt").write_text(CONV_TRAIN_VAL.format(db=db))
    text = (f'net: "{tmp_path}/train_val.prototxt" test_iter: 2 test_interval: 4 base_lr: 0.05 '
            f'momentum: 0.9 weight_decay: 0.0005 max_iter: 8 lr_policy: "fixed" '
            f'snapshot_prefix: "{tmp_path}/convnet" random_seed: 3')
    runs = {}
    for native in (False, True):
        with Solver(text, native=native, log_stream=io.StringIO()) as solver:
            ops = {node["op"] for node in json.loads(solver.net.symbol.tojson())["nodes"]}
            assert ("Convolution" in ops and "FullyConnected" in ops) == native
            solver.solve()
            model, _ = solver.snapshot()
            runs[native] = ([h["loss"] for h in solver.history],
                            [t["outputs"]["loss"] for t in solver.test_history],  # (accuracy: argmax ties)
                            Net(str(tmp_path / "train_val.prototxt"), phase="TEST", weights=model).params)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-4)
    for layer in ("conv", "scale", "ip"):
        for got, want in zip(runs[True][2][layer], runs[False][2][layer]):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_train_function_like_caffe_train(tmp_path, raw_db):
    from caffedata.errors import SpecError
    from caffedata.solver.commands import train

    db = raw_db(n=23)
    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL.format(db=db))
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{tmp_path}/train_val.prototxt" test_iter: 1 test_interval: 4 base_lr: 0.05 '
                           f'lr_policy: "fixed" momentum: 0.9 max_iter: 4 snapshot: 2 display: 2')
    log = io.StringIO()
    first = train(str(solver_file), log_stream=log)
    text = log.getvalue()
    assert first.iter == 4 and text.count("Optimization Done.") == 2  # Solve's and caffe train's
    assert "Starting Optimization" in text and "Iteration 4, Testing net (#0)" in text
    assert os.path.isfile(tmp_path / "solver_iter_2.caffemodel")  # prefix from the solver file name
    log = io.StringIO()
    resumed = train(str(solver_file), snapshot=str(tmp_path / "solver_iter_2.solverstate"), log_stream=log)
    assert resumed.iter == 4 and len(resumed.history) == 2
    assert f"Resuming from {tmp_path}/solver_iter_2.solverstate" in log.getvalue()
    # finetuning: the weights file is loaded into the nets before the first step
    finetuned = train(str(solver_file), weights=str(tmp_path / "solver_iter_4.caffemodel"), log_stream=io.StringIO())
    assert finetuned.history[0]["loss"] < first.history[0]["loss"]
    with pytest.raises(SpecError, match="not both"):
        train(str(solver_file), weights="a.caffemodel", snapshot="b.solverstate")


def test_anonymous_loss_counts_in_the_loss_but_is_no_output(files):
    """Caffe's displayed loss includes an (automatic) loss top; the output lines do not list it."""
    import mxnet as mx

    from caffedata.solver.module_net import ModuleNet

    two_losses = NET.replace('layer { name: "acc"', 'layer { name: "loss2" type: "EuclideanLoss" bottom: "fc" '
                             'bottom: "fc2" loss_weight: 0.5 }\nlayer { name: "acc"').replace(
        'layer { name: "loss" type', 'layer { name: "fc2" type: "InnerProduct" bottom: "data" top: "fc2" '
        'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }\n'
        'layer { name: "loss" type')
    (files / "two.prototxt").write_text(two_losses)
    slow = Solver(f'net: "{files}/two.prototxt" base_lr: 0.1 lr_policy: "fixed" random_seed: 3',
                  batches=[BATCH])
    loss, outputs = slow.net.forward_backward()
    assert [name for name, _ in outputs] == ["loss"]
    fc = slow.net.net.forward(**BATCH, blobs=["fc", "fc2"])
    euclid = np.sum((fc["fc"] - fc["fc2"]) ** 2) / 8 / 2
    assert loss == pytest.approx(float(np.ravel(outputs[0][1])[0]) + 0.5 * euclid, rel=1e-5)
    net = Net(str(files / "two.prototxt"), phase="TRAIN")
    for layer in ("fc", "fc2"):
        for mine, theirs in zip(net.params[layer], slow.net.net.params[layer]):
            mine[...] = theirs
    fast = ModuleNet.from_net(net, mx.io.NDArrayIter(BATCH["data"], BATCH["label"], batch_size=8,
                                                     label_name="label"))
    fast_loss, fast_outputs = fast.forward_backward()
    assert [name for name, _ in fast_outputs] == ["loss"]
    assert fast_loss == pytest.approx(loss, rel=1e-6)


def test_score_like_caffe_test(tmp_path, raw_db):
    from caffedata.solver.commands import score, train

    db = raw_db(n=23)
    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL.format(db=db))
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{tmp_path}/train_val.prototxt" test_iter: 2 test_interval: 6 base_lr: 0.05 '
                           f'lr_policy: "fixed" momentum: 0.9 max_iter: 6 test_initialization: false')
    solver = train(str(solver_file), log_stream=io.StringIO())
    log = io.StringIO()
    result = score(str(tmp_path / "train_val.prototxt"), str(tmp_path / "solver_iter_6.caffemodel"),
                   iterations=2, log_stream=log)
    # the same weights, the same first two TEST batches as the solver's final test pass
    final = solver.test_history[-1]["outputs"]
    assert result["outputs"]["accuracy"][0] == pytest.approx(float(final["accuracy"][0]), rel=1e-6)
    assert result["outputs"]["loss"][0] == pytest.approx(float(final["loss"][0]), rel=1e-5)
    assert result["loss"] == pytest.approx(float(final["loss"][0]), rel=1e-5)  # the only loss
    text = log.getvalue()
    assert "Running for 2 iterations." in text and "Batch 1, accuracy = " in text
    assert "] Loss: " in text and "] loss = " in text and "(* 1 = " in text
