"""Caffe's Step/Solve loop on a tiny real MXNet net (CaffeOp InnerProduct + CaffeLoss SoftmaxWithLoss).

Expected values come from a NumPy softmax-regression written out here, Caffe's
update formulas, and runs of the same solver with other settings.
"""
import io
import os
import re
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

import caffedata  # noqa: F401  (installs mx.sym.CaffeOp / CaffeLoss)
from caffedata.solver import optimizers  # noqa: F401  (registers caffe_*)
from caffedata.solver.module_net import ModuleNet
from caffedata.solver.solver import Solver
from caffedata.solver.state import read_solver_state

RNG = np.random.default_rng(7)
N, D, K = 8, 3, 2
X = RNG.standard_normal((N, D)).astype(np.float32).astype(np.float64)  # NDArrayIter holds float32
LABELS = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=np.float64)
W_INIT = np.array([[0.1, -0.2, 0.3], [-0.1, 0.25, 0.05]])
B_INIT = np.array([0.01, -0.02])


def symbol(bias_lr_mult=2.0, bias_decay_mult=0.0):
    data, label = mx.sym.Variable("data"), mx.sym.Variable("label")
    fc = mx.sym.CaffeOp(data_0=data, num_weight=2, name="fc", prototxt=(
        "layer { type: 'InnerProduct' inner_product_param { num_output: 2 } "
        f"param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: {bias_lr_mult} decay_mult: {bias_decay_mult} }} }}"))
    return mx.sym.CaffeLoss(data=fc, label=label, name="loss", prototxt="layer { type: 'SoftmaxWithLoss' }")


def make_net(batch, phase="TRAIN", x=X, labels=LABELS, dtype=np.float64):
    it = mx.io.NDArrayIter(x, labels, batch_size=batch, label_name="label", shuffle=False)
    sym = symbol()
    assert len(sym.list_outputs()) == 1
    return ModuleNet(sym, it, phase=phase, loss_weights={"loss": 1.0}, dtype=dtype,
                     arg_params={"fc_0_weight": W_INIT, "fc_1_bias": B_INIT}, name="tiny",
                     output_names=["loss"])


def solver_text(extra="", max_iter=3, policy='lr_policy: "fixed"'):
    return f'base_lr: 0.1 {policy} momentum: 0.9 weight_decay: 0.01 max_iter: {max_iter} {extra}'


def numpy_sgd(steps, lr=0.1, momentum=0.9, wd=0.01, lr_mult=(1.0, 2.0), decay_mult=(1.0, 0.0)):
    """Caffe's SGD on softmax regression over the whole batch, in NumPy."""
    theta = [W_INIT.copy(), B_INIT.copy()]
    hist = [np.zeros_like(t) for t in theta]
    losses = []
    onehot = np.eye(K)[LABELS.astype(int)]
    for _ in range(steps):
        z = X @ theta[0].T + theta[1]
        z -= z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        losses.append(-np.mean(np.log(p[np.arange(N), LABELS.astype(int)])))
        dz = (p - onehot) / N  # SoftmaxWithLoss, VALID normalisation
        grads = [dz.T @ X, dz.sum(0)]
        for i in range(2):
            g = grads[i] + wd * decay_mult[i] * theta[i]
            hist[i] = momentum * hist[i] + lr * lr_mult[i] * g
            theta[i] = theta[i] - hist[i]
    return theta, losses


def weights(net):
    return [a.asnumpy() for a in net.param_arrays]


def test_solver_step_equals_caffe_sgd_in_numpy():
    net = make_net(N)
    solver = Solver(solver_text(), net)
    assert net.learnable_names == ["fc_0_weight", "fc_1_bias"]
    assert (net.lr_mults, net.decay_mults) == ([1.0, 2.0], [1.0, 0.0])
    solver.step(3)
    f32 = lambda v: float(np.float32(v))  # noqa: E731  (SolverParameter fields are floats)
    theta, losses = numpy_sgd(3, lr=f32(0.1), momentum=f32(0.9), wd=f32(0.01))
    np.testing.assert_allclose(weights(net)[0], theta[0], rtol=1e-12)
    np.testing.assert_allclose(weights(net)[1], theta[1], rtol=1e-12)
    np.testing.assert_allclose([h["loss"] for h in solver.history], losses, rtol=1e-6)  # float32 loss
    assert [h["iter"] for h in solver.history] == [0, 1, 2] and solver.iter == 3
    assert solver.history[0]["lr"] == float(np.float32(0.1))


def test_iter_size_2_on_batch_B_equals_batch_2B():
    half = make_net(N // 2)
    full = make_net(N)
    s_half = Solver(solver_text("iter_size: 2"), half)
    s_full = Solver(solver_text(), full)
    s_half.step(3)
    s_full.step(3)
    for a, b in zip(weights(half), weights(full)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([h["loss"] for h in s_half.history], [h["loss"] for h in s_full.history],
                               rtol=1e-6)  # the loss is averaged as a float, as Caffe
    assert np.abs(weights(full)[0] - W_INIT).max() > 1e-3


def test_iter_size_clipping_applies_to_the_sum():
    # the same problem with clip_gradients: iter_size 2 clips the summed diff (2x the mean)
    half, full = make_net(N // 2), make_net(N)
    s_half = Solver(solver_text("iter_size: 2 clip_gradients: 0.2"), half)
    s_full = Solver(solver_text("clip_gradients: 0.1"), full)  # threshold / iter_size on the mean
    s_half.step(3)
    s_full.step(3)
    for a, b in zip(weights(half), weights(full)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    unclipped = make_net(N)
    Solver(solver_text(), unclipped).step(3)
    assert np.abs(weights(unclipped)[0] - weights(full)[0]).max() > 1e-4


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_from_solverstate_gives_the_same_next_losses(tmp_path, fmt):
    prefix = tmp_path / "tiny"
    text = ('base_lr: 0.05 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 4 stepvalue: 7 '
            'type: "Adam" momentum: 0.9 momentum2: 0.999 weight_decay: 0.01 max_iter: 13 snapshot: 3 '
            f'snapshot_format: {fmt} snapshot_prefix: "{prefix}"')
    # float32 as Caffe: snapshots hold float32 blobs, so the resumed run is bit-identical
    whole = Solver(text, make_net(N, dtype=np.float32))
    whole.solve()
    losses = [h["loss"] for h in whole.history]
    assert len(losses) == 13
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state_file = f"{prefix}_iter_3{ext}"
    state = read_solver_state(state_file)
    assert state.iter == 3 and state.current_step == 1 and len(state.history) == 4  # Adam: m, m, v, v
    assert os.path.isfile(state.learned_net)
    # a fresh net with other weights: restore brings weights, iter, current_step and history back
    other = make_net(N, dtype=np.float32)
    other.param_arrays[0][:] = 0
    resumed = Solver(text, other)
    resumed.restore(state_file)
    assert resumed.iter == 3 and resumed.current_step == 1
    resumed.step(10)
    np.testing.assert_array_equal([h["loss"] for h in resumed.history], losses[3:])
    for a, b in zip(weights(other), weights(whole.net)):
        np.testing.assert_array_equal(a, b)
    # a mismatched solver type cannot take this state
    sgd = Solver(text.replace('type: "Adam"', 'type: "SGD"'), make_net(N))
    with pytest.raises(caffedata.SpecError, match="Incorrect length of history blobs"):
        sgd.restore(state_file)


def test_solve_logs_in_caffe_format(tmp_path):
    prefix = tmp_path / "tiny"
    stream = io.StringIO()
    text = solver_text(f'display: 2 average_loss: 2 test_iter: 2 test_interval: 2 snapshot: 0 '
                       f'snapshot_prefix: "{prefix}"', max_iter=4,
                       policy='lr_policy: "step" stepsize: 2 gamma: 0.5')
    solver = Solver(text, make_net(N // 2), [make_net(N // 2, phase="TEST")], log_stream=stream)
    solver.solve()
    raw = stream.getvalue().splitlines()
    # glog prints a multi-line message (the solver parameters) with one prefix, as Caffe's log shows
    assert raw[0].endswith("Initializing solver from parameters: ") and 'lr_policy: "step"' in raw
    body = raw[raw.index(next(ln for ln in raw if ln.endswith("Solver scaffolding done."))):]
    assert all(re.match(r"^I\d{4} ", ln) for ln in body)
    lines = [re.sub(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [a-z_]+\.cpp:\d+\] ", "", ln) for ln in body]
    expected_order = ["Solving tiny", "Learning Rate Policy: step", "Iteration 0, Testing net (#0)",
                      "    Test net output #0: loss = ", "Iteration 0 (", "    Train net output #0: loss = ",
                      "Iteration 0, lr = 0.1", "Iteration 2, Testing net (#0)", "Iteration 2 (",
                      "Iteration 2, lr = 0.05",
                      f"Snapshotting to binary proto file {prefix}_iter_4.caffemodel",
                      f"Snapshotting solver state to binary proto file {prefix}_iter_4.solverstate",
                      "Iteration 4, loss = ", "Iteration 4, Testing net (#0)", "Optimization Done."]
    pos = 0
    for want in expected_order:
        while pos < len(lines) and not lines[pos].startswith(want):
            pos += 1
        assert pos < len(lines), f"missing (in order): {want!r}\n" + "\n".join(lines)
    # the display line's loss is the smoothed loss over average_loss = 2 iterations
    display = [ln for ln in lines if re.match(r"Iteration 2 \(", ln)][0]
    smoothed = float(display.rsplit("= ", 1)[1])
    assert smoothed == pytest.approx((solver.history[1]["loss"] + solver.history[2]["loss"]) / 2, rel=1e-5)
    test_line = [ln for ln in lines if ln.startswith("    Test net output #0")][0]
    assert test_line.endswith("loss)") and "(* 1 = " in test_line
    assert len(solver.test_history) == 3 and solver.test_history[0]["iter"] == 0
    assert os.path.isfile(f"{prefix}_iter_4.caffemodel")


def test_snapshot_prefix_must_be_writable(tmp_path):
    with pytest.raises(caffedata.SpecError, match="Cannot write to snapshot prefix"):
        Solver(solver_text(f'snapshot: 1 snapshot_prefix: "{tmp_path}/missing/dir/x"'), make_net(N))


def test_test_nets_must_match_test_iter():
    with pytest.raises(caffedata.SpecError, match="test_iter"):
        Solver(solver_text('net: "x" test_iter: 2 test_interval: 1'), make_net(N))


def _solve_with_signal(tmp_path, signame, max_iter):
    """Solve in a child that sends itself ``signame`` during iteration 2; the child's CompletedProcess."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r}); sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_solver_loop as t
        from caffedata.solver.solver import Solver
        net = t.make_net(t.N)
        original = net.forward_backward
        def forward_backward(batch=None):
            if solver.iter == 2:
                os.kill(os.getpid(), signal.{signame})
            return original(batch)
        net.forward_backward = forward_backward
        solver = Solver(t.solver_text('snapshot_prefix: "{tmp_path}/run"', max_iter={max_iter}), net)
        solver.solve()
        print("ITER", solver.iter)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_sigint_snapshots_and_stops(tmp_path):
    proc = _solve_with_signal(tmp_path, "SIGINT", 1000)
    assert proc.returncode == 0, proc.stderr
    assert "ITER 3" in proc.stdout  # the iteration in progress finishes, then Step breaks
    assert os.path.isfile(tmp_path / "run_iter_3.caffemodel")
    assert os.path.isfile(tmp_path / "run_iter_3.solverstate")


# --- the optimizers on their own: Module and Gluon -----------------------------------------------


def test_caffe_sgd_in_module_equals_caffe_step():
    """Module passes the symbol (lr_mult/wd_mult attributes) and rescale_grad = 1/batch."""
    mod = mx.mod.Module(symbol(), data_names=["data"], label_names=["label"])
    it = mx.io.NDArrayIter(X, LABELS, batch_size=N, label_name="label")
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    mod.init_params(arg_params={"fc_0_weight": mx.nd.array(W_INIT), "fc_1_bias": mx.nd.array(B_INIT)})
    mod.init_optimizer(optimizer="caffe_sgd", optimizer_params={"learning_rate": 0.1, "momentum": 0.9,
                                                                "wd": 0.01})
    batch = next(iter(it))
    for _ in range(3):
        mod.forward_backward(batch)
        mod.update()
    theta, _ = numpy_sgd(3)
    args, _ = mod.get_params()
    np.testing.assert_allclose(args["fc_0_weight"].asnumpy(), theta[0], rtol=2e-5, atol=1e-7)  # float32 net
    np.testing.assert_allclose(args["fc_1_bias"].asnumpy(), theta[1], rtol=2e-5, atol=1e-7)


def test_caffe_adam_in_gluon_trainer():
    """Gluon: Parameter.lr_mult / wd_mult, trainer.step(batch) rescales; t follows the update count."""
    net = mx.gluon.nn.Dense(1, in_units=D, dtype="float64")
    net.initialize()
    net.weight.set_data(mx.nd.array([[0.2, -0.1, 0.3]], dtype=np.float64))
    net.bias.set_data(mx.nd.array([0.05], dtype=np.float64))
    net.bias.lr_mult, net.bias.wd_mult = 2.0, 0.0
    trainer = mx.gluon.Trainer(net.collect_params(), "caffe_adam",
                               {"learning_rate": 0.01, "momentum": 0.9, "momentum2": 0.999, "wd": 0.1})
    x, y = mx.nd.array(X, dtype=np.float64), mx.nd.array(LABELS, dtype=np.float64)
    theta = [np.array([[0.2, -0.1, 0.3]]), np.array([0.05])]
    m = [np.zeros_like(t) for t in theta]
    v = [np.zeros_like(t) for t in theta]
    for t in range(1, 4):
        with mx.autograd.record():
            loss = 0.5 * ((net(x).reshape(-1) - y) ** 2).sum()
        loss.backward()
        trainer.step(N)
        r = X @ theta[0][0] + theta[1][0] - LABELS
        grads = [np.array([X.T @ r / N]), np.array([r.mean()])]
        for i, (lr_mult, decay_mult) in enumerate([(1.0, 1.0), (2.0, 0.0)]):
            g = grads[i] + 0.1 * decay_mult * theta[i]
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g ** 2
            step = 0.01 * lr_mult * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
            theta[i] = theta[i] - step * m[i] / (np.sqrt(v[i]) + 1e-8)
    np.testing.assert_allclose(net.weight.data().asnumpy(), theta[0], rtol=1e-12)
    np.testing.assert_allclose(net.bias.data().asnumpy(), theta[1], rtol=1e-12)


def test_test_compute_loss_and_plain_batch_means():
    stream = io.StringIO()
    test_net = make_net(N // 2, phase="TEST")
    solver = Solver(solver_text("test_iter: 2 test_interval: 1 test_compute_loss: true"), make_net(N),
                    [test_net], log_stream=stream)
    result = solver.test(0)
    # the two test batches are the two halves of the data: the printed value is the mean of their losses
    halves = [test_net.forward()[0] for _ in range(2)]
    assert result["outputs"]["loss"][0] == pytest.approx(np.mean(halves), rel=1e-6)
    printed = float(re.search(r"\] Test loss: (\S+)", stream.getvalue()).group(1))
    assert printed == pytest.approx(np.mean(halves), rel=1e-5)


def test_sighup_snapshots_and_continues(tmp_path):
    proc = _solve_with_signal(tmp_path, "SIGHUP", 5)
    assert proc.returncode == 0, proc.stderr
    assert "ITER 5" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run_iter_3.caffemodel", "run_iter_3.solverstate", "run_iter_5.caffemodel", "run_iter_5.solverstate"]
