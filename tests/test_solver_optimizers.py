"""Caffe's update rules (reference sections 5.7, 5.8) against hand-written NumPy references.

The problem: two parameters, a weight w (2,) and a bias b (1,), of a linear
least-squares model on four fixed samples; the gradient is written out in
NumPy.  Each reference below is the reference sheet's formula table, written
out step by step in float64, independent of caffedata's code.
"""
import math

import mxnet as mx
import numpy as np
import pytest

from caffedata.solver import optimizers  # noqa: F401  (registers caffe_*)
from caffedata.solver.lr_policy import CaffeLRScheduler
from caffedata.solver.params import load_solver_param

X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.25, -2.0], [3.0, 1.0]])
Y = np.array([1.5, -0.5, 2.0, 0.25])
W0 = np.array([0.3, -0.7])
B0 = np.array([0.2])


def caffe_grads(w, b):
    """d/dθ of 0.5 * mean((Xw + b - Y)^2): Caffe's (normalised) diff for one pass."""
    r = X @ w + b[0] - Y
    return [X.T @ r / len(Y), np.array([r.mean()])]


def run_optimizer(opt, steps=3, iter_size=1, grad_scale=1.0):
    """Feed the optimizer ``steps`` updates through MXNet's own Updater (all params in one call)."""
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array(W0, dtype=np.float64)
    b = mx.nd.array(B0, dtype=np.float64)
    for _ in range(steps):
        gw, gb = caffe_grads(w.asnumpy(), b.asnumpy())
        # iter_size passes of the same batch accumulate (sum), MXNet-side scaled by grad_scale
        grads = [mx.nd.array(iter_size * grad_scale * gw, dtype=np.float64),
                 mx.nd.array(iter_size * grad_scale * gb, dtype=np.float64)]
        updater([0, 1], grads, [w, b])
    return w.asnumpy(), b.asnumpy()


def reference(kind, steps=3, rates=None, lr=0.1, momentum=0.0, wd=0.0, reg="L2",
              lr_mult=(1.0, 1.0), decay_mult=(1.0, 1.0), clip=-1.0, iter_size=1, delta=1e-8,
              rms_decay=0.99, momentum2=0.999, first_iter=0):
    theta = [W0.copy(), B0.copy()]
    h1 = [np.zeros_like(p) for p in theta]
    h2 = [np.zeros_like(p) for p in theta]
    for step in range(steps):
        it = first_iter + step
        rate = rates[step] if rates is not None else lr
        g = [iter_size * gi for gi in caffe_grads(*theta)]  # accumulated diffs
        if clip >= 0:
            norm = math.sqrt(sum(float(np.sum(gi * gi)) for gi in g))
            if norm > clip:
                g = [gi * (clip / norm) for gi in g]
        for i in range(2):
            gi = g[i] / iter_size if iter_size != 1 else g[i]
            lam = wd * decay_mult[i]
            if lam:
                gi = gi + lam * (theta[i] if reg == "L2" else np.sign(theta[i]))
            a = rate * lr_mult[i]
            if kind == "SGD":
                h1[i] = momentum * h1[i] + a * gi
                d = h1[i]
            elif kind == "Nesterov":
                prev = h1[i]
                h1[i] = momentum * h1[i] + a * gi
                d = (1 + momentum) * h1[i] - momentum * prev
            elif kind == "AdaGrad":
                h1[i] = h1[i] + gi ** 2
                d = a * gi / (np.sqrt(h1[i]) + delta)
            elif kind == "RMSProp":
                h1[i] = rms_decay * h1[i] + (1 - rms_decay) * gi ** 2
                d = a * gi / (np.sqrt(h1[i]) + delta)
            elif kind == "AdaDelta":
                h1[i] = momentum * h1[i] + (1 - momentum) * gi ** 2
                u = gi * np.sqrt((h2[i] + delta) / (h1[i] + delta))
                h2[i] = momentum * h2[i] + (1 - momentum) * u ** 2
                d = a * u
            elif kind == "Adam":
                t = it + 1
                h1[i] = momentum * h1[i] + (1 - momentum) * gi
                h2[i] = momentum2 * h2[i] + (1 - momentum2) * gi ** 2
                d = a * math.sqrt(1 - momentum2 ** t) / (1 - momentum ** t) * h1[i] / (np.sqrt(h2[i]) + delta)
            theta[i] = theta[i] - d
    return theta


TYPE_CASES = {
    "SGD": ("caffe_sgd", dict(momentum=0.9)),
    "Nesterov": ("caffe_nesterov", dict(momentum=0.9)),
    "AdaGrad": ("caffe_adagrad", dict(delta=1e-6)),
    "RMSProp": ("caffe_rmsprop", dict(rms_decay=0.98, delta=1e-6)),
    "AdaDelta": ("caffe_adadelta", dict(momentum=0.95, delta=1e-6)),
    "Adam": ("caffe_adam", dict(momentum=0.9, momentum2=0.999, delta=1e-8)),
}


@pytest.mark.parametrize("kind", list(TYPE_CASES))
def test_three_steps_of_each_solver_type(kind):
    name, hyper = TYPE_CASES[kind]
    lr = 1.0 if kind == "AdaDelta" else 0.1
    opt = mx.optimizer.create(name, learning_rate=lr, wd=0.01, **hyper)
    w, b = run_optimizer(opt)
    ew, eb = reference(kind, lr=lr, wd=0.01, **hyper)
    np.testing.assert_allclose(w, ew, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b, eb, rtol=1e-12, atol=1e-15)
    # and the update really moved the parameters (the test could fail)
    assert np.abs(w - W0).max() > 1e-3


@pytest.mark.parametrize("kind", list(TYPE_CASES))
def test_lr_mult_and_decay_mult_per_parameter(kind):
    name, hyper = TYPE_CASES[kind]
    opt = mx.optimizer.create(name, learning_rate=0.05, wd=0.1, **hyper)
    opt.set_lr_mult({1: 2.0})
    opt.set_wd_mult({1: 0.0})
    w, b = run_optimizer(opt)
    ew, eb = reference(kind, lr=0.05, wd=0.1, lr_mult=(1.0, 2.0), decay_mult=(1.0, 0.0), **hyper)
    np.testing.assert_allclose(w, ew, rtol=1e-12)
    np.testing.assert_allclose(b, eb, rtol=1e-12)


@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_l1_l2_decay_with_decay_mult_zero_on_bias(reg):
    opt = mx.optimizer.create("caffe_sgd", learning_rate=0.1, momentum=0.9, wd=0.5, regularization_type=reg)
    opt.set_wd_mult({1: 0.0})
    w, b = run_optimizer(opt)
    ew, eb = reference("SGD", lr=0.1, momentum=0.9, wd=0.5, reg=reg, decay_mult=(1.0, 0.0))
    np.testing.assert_allclose(w, ew, rtol=1e-12)
    np.testing.assert_allclose(b, eb, rtol=1e-12)
    # the bias saw no decay: it equals the undecayed run's bias only if decay never reached it
    plain = mx.optimizer.create("caffe_sgd", learning_rate=0.1, momentum=0.9, wd=0.5, regularization_type=reg)
    w_all, b_all = run_optimizer(plain)
    _, eb_all = reference("SGD", lr=0.1, momentum=0.9, wd=0.5, reg=reg)
    np.testing.assert_allclose(b_all, eb_all, rtol=1e-12)
    assert abs(b_all[0] - b[0]) > 1e-4  # biases are decayed by default, as in Caffe


def test_l1_uses_sign_of_weight():
    # one step from a known point: Δ = lr * (g + wd * sign(w)), sign(0) = 0
    opt = mx.optimizer.create("caffe_sgd", learning_rate=1.0, wd=0.25, regularization_type="L1")
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array([2.0, -3.0, 0.0], dtype=np.float64)
    updater([0], [mx.nd.zeros(3, dtype=np.float64)], [w])
    np.testing.assert_array_equal(w.asnumpy(), [1.75, -2.75, 0.0])


def test_biases_are_decayed_in_module_too():
    """Module passes parameter names; MXNet's own optimizers would zero wd for *_bias, Caffe's do not."""
    opt = mx.optimizer.create("caffe_sgd", learning_rate=1.0, wd=0.5,
                              param_idx2name={0: "fc_weight", 1: "fc_bias"})
    assert opt._get_wds([0, 1]) == [0.5, 0.5]


@pytest.mark.parametrize("iter_size", [1, 2])
def test_clipping_by_global_norm_on_accumulated_diff(iter_size):
    # the first gradient's global norm is ~1.9 (x iter_size); clip at 0.5 scales every step
    opt = mx.optimizer.create("caffe_sgd", learning_rate=0.1, momentum=0.9, wd=0.01, clip_gradients=0.5,
                              iter_size=iter_size)
    w, b = run_optimizer(opt, iter_size=iter_size)
    ew, eb = reference("SGD", lr=0.1, momentum=0.9, wd=0.01, clip=0.5, iter_size=iter_size)
    np.testing.assert_allclose(w, ew, rtol=1e-12)
    np.testing.assert_allclose(b, eb, rtol=1e-12)
    assert opt.last_clip is not None and opt.last_clip[1] < 1
    unclipped = reference("SGD", lr=0.1, momentum=0.9, wd=0.01, iter_size=iter_size)
    assert np.abs(unclipped[0] - ew).max() > 1e-3  # clipping made a difference


def test_clip_gradients_helper_in_place():
    a = mx.nd.array([3.0, 0.0], dtype=np.float64)
    b = mx.nd.array([4.0], dtype=np.float64)
    norm, scale = optimizers.clip_gradients_([a, b], 1.0)
    assert norm == 5.0 and scale == 0.2
    np.testing.assert_allclose(a.asnumpy(), [0.6, 0.0])
    np.testing.assert_allclose(b.asnumpy(), [0.8])
    # norm is of rescale_grad * g: 0.5 * |(0.6, 0, 0.8)| = 0.5 < 1 -> untouched
    assert optimizers.clip_gradients_([a, b], 1.0, rescale_grad=0.5) == (0.5, 1.0)
    assert optimizers.clip_gradients_([a, b], -1) == (None, 1.0)


def test_rescale_grad_composes_with_caffeloss_scaling():
    # MXNet's gradient is N x Caffe's (CaffeLoss); rescale_grad = 1/N gives Caffe's step
    opt = mx.optimizer.create("caffe_nesterov", learning_rate=0.1, momentum=0.9, wd=0.01, rescale_grad=1 / 4)
    w, b = run_optimizer(opt, grad_scale=4.0)
    ew, eb = reference("Nesterov", lr=0.1, momentum=0.9, wd=0.01)
    np.testing.assert_allclose(w, ew, rtol=1e-12)
    np.testing.assert_allclose(b, eb, rtol=1e-12)


def test_adam_bias_correction_uses_global_iteration():
    # resuming at Caffe iteration 5: the first update uses t = 6 (not 1)
    opt = mx.optimizer.create("caffe_adam", learning_rate=0.1, momentum=0.9, momentum2=0.999,
                              begin_num_update=5)
    w, b = run_optimizer(opt)
    ew, eb = reference("Adam", lr=0.1, momentum=0.9, momentum2=0.999, first_iter=5)
    np.testing.assert_allclose(w, ew, rtol=1e-12)
    np.testing.assert_allclose(b, eb, rtol=1e-12)
    fresh = reference("Adam", lr=0.1, momentum=0.9, momentum2=0.999)
    assert np.abs(fresh[0] - ew).max() > 1e-3


def test_lr_mult_zero_keeps_adaptive_statistics():
    opt = mx.optimizer.create("caffe_adagrad", learning_rate=0.1)
    opt.set_lr_mult({1: 0.0})
    updater = mx.optimizer.get_updater(opt)
    w, b = mx.nd.array(W0, dtype=np.float64), mx.nd.array(B0, dtype=np.float64)
    gw, gb = caffe_grads(W0, B0)
    updater([0, 1], [mx.nd.array(gw, dtype=np.float64), mx.nd.array(gb, dtype=np.float64)], [w, b])
    np.testing.assert_array_equal(b.asnumpy(), B0)  # Δ = 0
    np.testing.assert_allclose(updater.states[1].asnumpy(), gb ** 2)  # h still updated


# --- the seven lr policies, through CaffeLRScheduler, on SGD with momentum -------------------------

POLICIES = {
    "fixed": ("", lambda it: 0.1),
    "step": ("gamma: 0.5 stepsize: 2", lambda it: 0.1 * 0.5 ** (it // 2)),
    "exp": ("gamma: 0.5", lambda it: 0.1 * 0.5 ** it),
    "inv": ("gamma: 0.25 power: 0.75", lambda it: 0.1 * (1 + 0.25 * it) ** -0.75),
    "multistep": ("gamma: 0.5 stepvalue: 1 stepvalue: 2", lambda it: 0.1 * 0.5 ** min(it, 2)),
    "poly": ("power: 2 max_iter: 4", lambda it: 0.1 * (1 - it / 4) ** 2),
    "sigmoid": ("gamma: 0.5 stepsize: 2", lambda it: 0.1 / (1 + math.exp(-0.5 * (it - 2)))),
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_three_steps_of_each_lr_policy(policy):
    extra, formula = POLICIES[policy]
    param = load_solver_param(f'base_lr: 0.1 lr_policy: "{policy}" {extra}')
    rates = [formula(it) for it in range(3)]
    scheduler = CaffeLRScheduler(param)
    opt = mx.optimizer.create("caffe_sgd", lr_scheduler=scheduler, momentum=0.9)
    w, b = run_optimizer(opt)
    # Caffe's rate is a float: compare at float32 precision
    ew, eb = reference("SGD", rates=rates, momentum=0.9)
    np.testing.assert_allclose(w, ew, rtol=2e-7)
    np.testing.assert_allclose(b, eb, rtol=2e-7)
    # MXNet's num_update 1, 2, 3 are Caffe's iterations 0, 1, 2
    fresh = CaffeLRScheduler(param)
    np.testing.assert_allclose([fresh(n) for n in (1, 2, 3)], rates, rtol=1e-7)


def test_float32_sgd_fused_path_and_caffe_history_sign():
    """float32 L2 SGD runs MXNet's fused sgd_mom_update (state = −h); caffe_history gives Caffe's h."""
    opt = mx.optimizer.create("caffe_sgd", learning_rate=0.1, momentum=0.9, wd=0.01, clip_gradients=0.5,
                              iter_size=2)
    updater = mx.optimizer.get_updater(opt)
    w, b = mx.nd.array(W0, dtype=np.float32), mx.nd.array(B0, dtype=np.float32)
    h_ref = [np.zeros(2), np.zeros(1)]
    theta = [W0.copy(), B0.copy()]
    for _ in range(3):
        gw, gb = caffe_grads(w.asnumpy().astype(np.float64), b.asnumpy().astype(np.float64))
        updater([0, 1], [mx.nd.array(2 * gw, dtype=np.float32), mx.nd.array(2 * gb, dtype=np.float32)], [w, b])
        g = [2 * gi for gi in caffe_grads(*theta)]
        norm = math.sqrt(sum(float(np.sum(gi * gi)) for gi in g))
        g = [gi * min(1.0, 0.5 / norm) / 2 for gi in g]
        for i in range(2):
            h_ref[i] = 0.9 * h_ref[i] + 0.1 * (g[i] + 0.01 * theta[i])
            theta[i] = theta[i] - h_ref[i]
    assert w.dtype == np.float32
    np.testing.assert_allclose(w.asnumpy(), theta[0], rtol=2e-6)
    np.testing.assert_allclose(b.asnumpy(), theta[1], rtol=2e-6)
    (h0,) = opt.caffe_history(updater.states[0])
    np.testing.assert_allclose(h0.asnumpy(), h_ref[0], rtol=2e-5)
    restored = opt.state_from_caffe_history([h_ref[0]], w)
    np.testing.assert_allclose(restored.asnumpy(), -h_ref[0], rtol=1e-6)
