"""Caffe's six solver update rules as MXNet optimizers (reference sections 5.7, 5.8, 12.2).

Registered names: ``caffe_sgd``, ``caffe_nesterov``, ``caffe_adagrad``,
``caffe_rmsprop``, ``caffe_adadelta``, ``caffe_adam``::

    opt = mx.optimizer.create("caffe_sgd", learning_rate=0.01, momentum=0.9, wd=5e-4)
    opt = mx.optimizer.create("caffe_adam", lr_scheduler=CaffeLRScheduler(solver_param),
                              momentum=0.9, momentum2=0.999, delta=1e-8)

Each update follows SGDSolver::ApplyUpdate exactly:

1. ``g = rescale_grad * grad``: MXNet's gradient -> Caffe's accumulated diff.
   CaffeLoss emits ``N x`` Caffe's gradient and Module / Gluon set
   ``rescale_grad = 1/N`` (``trainer.step(N)``), so ``g`` is Caffe's diff.
2. clip (``clip_gradients >= 0``): one L2 norm over *all* parameters of the
   call; if it exceeds the threshold every ``g`` is scaled by ``clip / norm``.
3. normalise: ``g *= 1/iter_size`` (the gradient given is the *sum* over
   ``iter_size`` passes, as Caffe accumulates diffs).
4. regularise: ``λ = wd * wd_mult``; L2 ``g += λ w``, L1 ``g += λ sign(w)``.
5. the type's history update with ``α = lr * lr_mult``; ``w -= Δ``.

Learning rate: a fixed ``learning_rate`` or ``lr_scheduler=CaffeLRScheduler(param)``
(Caffe's policy at ``iter = num_update - 1``).  Caffe's iteration counter is
``num_update - 1`` during an update (Adam's ``t = iter + 1 = num_update``);
``begin_num_update=N`` resumes at Caffe iteration N.

Per-parameter multipliers are MXNet's ``lr_mult`` / ``wd_mult`` (CaffeOp sets
them from ``param { lr_mult decay_mult }``; Gluon uses ``Parameter.lr_mult`` /
``wd_mult``).  Unlike MXNet's optimizers, *biases are decayed too*: Caffe decays
every blob by its ``decay_mult`` (default 1), so the ``_weight``/``_gamma`` name
rule of ``Optimizer.set_wd_mult`` is not applied.

Global clipping needs every gradient in one call.  The optimizers set
``aggregate_num`` so that MXNet's ``Updater`` (used by ``Module`` on one device
and by ``gluon.Trainer`` without ``update_on_kvstore``) passes all parameters of
a dtype at once.  Where updates arrive one parameter at a time (a kvstore
updating on the server), create the optimizer with ``clip_gradients=-1`` and call
:func:`clip_gradients_` on the list of gradients before the update::

    grads = [p.grad() for p in net.collect_params().values() if p.grad_req != "null"]
    clip_gradients_(grads, threshold, rescale_grad=1.0 / batch_size)
    trainer.step(batch_size)

The optimizer state of a parameter is its Caffe history blob (one NDArray), or
a pair for AdaDelta / Adam; :mod:`caffedata.solver.state` turns states into
Caffe's ``.solverstate`` history order and back.
"""
import math

import mxnet as mx
import numpy as np
from mxnet import nd

from .lr_policy import CaffeLRScheduler

__all__ = ["CaffeSGD", "CaffeNesterov", "CaffeAdaGrad", "CaffeRMSProp", "CaffeAdaDelta", "CaffeAdam",
           "clip_gradients_", "global_norm", "create_from_solver_param", "register", "OPTIMIZER_NAMES",
           "CaffeLRScheduler"]

# Every parameter of one dtype in a single update call (needed for the global clip norm).
_ALL_AT_ONCE = 1 << 30


def global_norm(grads, rescale_grad=1.0):
    """L2 norm of ``rescale_grad * g`` over every array in ``grads`` (Caffe's ClipGradients norm)."""
    sumsq = 0.0
    for g in grads:
        sumsq += float(nd.sum(nd.square(g)).asscalar())
    return math.sqrt(sumsq) * abs(float(rescale_grad))


def clip_gradients_(grads, threshold, rescale_grad=1.0):
    """Caffe's ClipGradients on MXNet gradients, in place -> ``(norm, scale)``.

    ``norm`` is taken of ``rescale_grad * g`` (Caffe's diff); when it exceeds
    ``threshold`` (>= 0) every gradient is multiplied by ``threshold / norm``,
    otherwise ``scale`` is 1 and nothing changes.  A negative threshold disables.
    """
    if threshold is None or threshold < 0:
        return None, 1.0
    norm = global_norm(grads, rescale_grad)
    if norm > threshold:
        scale = threshold / norm
        for g in grads:
            g *= scale
        return norm, scale
    return norm, 1.0


class _CaffeOptimizer(mx.optimizer.Optimizer):
    """Shared ApplyUpdate steps; subclasses give the state and ComputeUpdateValue."""

    solver_type = None
    blocks = 1  # history blobs per parameter

    def __init__(self, momentum=0.0, delta=1e-8, clip_gradients=-1.0, iter_size=1,
                 regularization_type="L2", **kwargs):
        super().__init__(**kwargs)
        if regularization_type not in ("L1", "L2"):
            raise ValueError(f"regularization_type must be 'L2' or 'L1', got {regularization_type!r}")
        if int(iter_size) < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}")
        self.momentum = float(momentum)
        self.delta = float(delta)
        self.clip_gradients = float(clip_gradients)
        self.iter_size = int(iter_size)
        self.regularization_type = regularization_type
        self.aggregate_num = _ALL_AT_ONCE
        self.last_clip = None  # (norm, scale) when the last update clipped
        # snapshot_diff: keep each parameter's last applied update (Caffe's diff after ApplyUpdate)
        self.keep_updates = False
        self.last_updates = {}  # index -> NDArray

    def set_wd_mult(self, args_wd_mult):
        # Caffe decays biases too: only explicit multipliers (CaffeOp's __wd_mult__, the dict).
        self.wd_mult = {}
        if self.sym_info:
            attr, arg_names = self.sym_info
            for name in arg_names:
                if name in attr and "__wd_mult__" in attr[name]:
                    self.wd_mult[name] = float(attr[name]["__wd_mult__"])
        self.wd_mult.update(args_wd_mult)

    @property
    def caffe_iter(self):
        """Caffe's ``iter_`` during the update being applied (``num_update - 1``)."""
        return max(self.num_update - 1, 0)

    def _zeros(self, weight):
        return nd.zeros(weight.shape, ctx=weight.context, dtype=weight.dtype)

    def create_state(self, index, weight):
        if self.blocks == 2:
            return (self._zeros(weight), self._zeros(weight))
        return self._zeros(weight)

    def create_state_multi_precision(self, index, weight):
        return self.create_state(index, weight)

    def update(self, index, weight, grad, state):
        self._apply(index, weight, grad, state)

    def update_multi_precision(self, index, weight, grad, state):
        self._apply(index, weight, grad, state)

    def _apply(self, index, weight, grad, state):
        if isinstance(index, (list, tuple)):
            indices, weights, grads, states = list(index), list(weight), list(grad), list(state)
        else:
            indices, weights, grads, states = [index], [weight], [grad], [state]
        self._update_count(indices)
        lrs = self._get_lrs(indices)
        wds = self._get_wds(indices)
        # 1.-3. one factor turns MXNet's gradient into Caffe's clipped, normalised diff
        scale = float(self.rescale_grad)
        self.last_clip = None
        if self.clip_gradients >= 0:
            # 2. the global L2 norm of the (summed, not yet normalised) diffs
            norm = global_norm(grads, scale)
            if norm > self.clip_gradients:
                self.last_clip = (norm, self.clip_gradients / norm)
                scale *= self.last_clip[1]
        if self.iter_size != 1:
            # 3. normalise over iter_size (float, as Caffe's Dtype(1)/iter_size)
            scale *= float(np.float32(1.0) / np.float32(self.iter_size))
        for i, w, g, s, lr, wd in zip(indices, weights, grads, states, lrs, wds):
            delta = self._update_param(w, g, s, lr, wd, scale)
            if self.keep_updates:
                self.last_updates[i] = (delta if delta is not None else self.caffe_history(s)[0]).copy()

    def _update_param(self, w, grad, state, lr, wd, scale):
        """Apply one parameter's update; return Δ (None: Δ is the history, as for fused SGD)."""
        g = grad * scale  # a new array: MXNet's gradient buffers are left alone
        # 4. regularise
        if wd != 0:
            if self.regularization_type == "L2":
                g += wd * w
            else:
                g += wd * nd.sign(w)
        # 5. ComputeUpdateValue, then Net::Update
        delta = self._update_value(w, g, state, lr)
        w -= delta
        return delta

    def _update_value(self, weight, g, state, lr):
        raise NotImplementedError

    # Caffe's history blobs <-> this optimizer's state (the same arrays except for CaffeSGD)
    def caffe_history(self, state):
        """The Caffe history blobs (one or two NDArrays) held by ``state``."""
        return tuple(state) if isinstance(state, (tuple, list)) else (state,)

    def state_from_caffe_history(self, blocks, weight):
        """The optimizer state for Caffe history blobs (NumPy or NDArray) of ``weight``."""
        arrays = tuple(nd.array(b, ctx=weight.context, dtype=weight.dtype) for b in blocks)
        return arrays if self.blocks == 2 else arrays[0]


class CaffeSGD(_CaffeOptimizer):
    """Caffe SGD: ``h = μh + αg``; ``Δ = h`` (the rate lives inside the history).

    With L2 decay on float32 weights this is MXNet's fused ``sgd_mom_update``
    (``mom = −h``), the other steps folded into its ``rescale_grad``; the state
    is ``mom`` and :meth:`caffe_history` gives Caffe's ``h``.
    """

    solver_type = "SGD"

    def _update_param(self, w, grad, mom, lr, wd, scale):
        # the fused op takes its scalars as float32: float64 weights keep the exact NDArray path
        if self.regularization_type != "L2" or w.dtype != np.float32:
            return super()._update_param(w, grad, mom, lr, wd, scale)
        nd.sgd_mom_update(w, grad, mom, out=w, lr=lr, wd=wd, momentum=self.momentum, rescale_grad=scale,
                          clip_gradient=-1.0)
        return None  # Δ = h = -mom

    def _update_value(self, weight, g, mom, lr):
        mom[:] = self.momentum * mom - lr * g
        return -mom

    def caffe_history(self, state):
        return (-state,)

    def state_from_caffe_history(self, blocks, weight):
        return -nd.array(blocks[0], ctx=weight.context, dtype=weight.dtype)


class CaffeNesterov(_CaffeOptimizer):
    """Caffe Nesterov: ``h' = μh + αg``; ``Δ = (1+μ)h' − μh``."""

    solver_type = "Nesterov"

    def _update_value(self, weight, g, h, lr):
        previous = h.copy()
        h[:] = self.momentum * h + lr * g
        return (1.0 + self.momentum) * h - self.momentum * previous


class CaffeAdaGrad(_CaffeOptimizer):
    """Caffe AdaGrad: ``h += g²``; ``Δ = αg / (sqrt(h) + δ)``."""

    solver_type = "AdaGrad"

    def _update_value(self, weight, g, h, lr):
        h += nd.square(g)
        return lr * (g / (nd.sqrt(h) + self.delta))  # Caffe divides, then scales


class CaffeRMSProp(_CaffeOptimizer):
    """Caffe RMSProp: ``h = ρh + (1−ρ)g²``; ``Δ = αg / (sqrt(h) + δ)``; ρ = ``rms_decay`` (0.99)."""

    solver_type = "RMSProp"

    def __init__(self, rms_decay=0.99, **kwargs):
        super().__init__(**kwargs)
        self.rms_decay = float(rms_decay)

    def _update_value(self, weight, g, h, lr):
        h[:] = self.rms_decay * h + (1.0 - self.rms_decay) * nd.square(g)
        return lr * (g / (nd.sqrt(h) + self.delta))  # Caffe divides, then scales


class CaffeAdaDelta(_CaffeOptimizer):
    """Caffe AdaDelta: ``h1 = μh1 + (1−μ)g²``; ``u = g sqrt((h2+δ)/(h1+δ))``;
    ``h2 = μh2 + (1−μ)u²``; ``Δ = αu`` (use base_lr 1 for the paper's rule)."""

    solver_type = "AdaDelta"
    blocks = 2

    def _update_value(self, weight, g, state, lr):
        h1, h2 = state
        mu = self.momentum
        h1[:] = mu * h1 + (1.0 - mu) * nd.square(g)
        u = g * nd.sqrt((h2 + self.delta) / (h1 + self.delta))
        h2[:] = mu * h2 + (1.0 - mu) * nd.square(u)
        return lr * u


class CaffeAdam(_CaffeOptimizer):
    """Caffe Adam with ``t = iter + 1`` (global): ``m = β1 m + (1−β1)g``; ``v = β2 v + (1−β2)g²``;
    ``Δ = α sqrt(1−β2^t)/(1−β1^t) · m/(sqrt(v) + δ)``; β1 = ``momentum``, β2 = ``momentum2``."""

    solver_type = "Adam"
    blocks = 2

    def __init__(self, momentum2=0.999, **kwargs):
        super().__init__(**kwargs)
        self.momentum2 = float(momentum2)

    def _update_value(self, weight, g, state, lr):
        m, v = state
        b1, b2 = self.momentum, self.momentum2
        t = self.num_update  # = Caffe's iter_ + 1
        m[:] = b1 * m + (1.0 - b1) * g
        v[:] = b2 * v + (1.0 - b2) * nd.square(g)
        correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        return (lr * correction) * (m / (nd.sqrt(v) + self.delta))


_CLASSES = {c.solver_type: c for c in (CaffeSGD, CaffeNesterov, CaffeAdaGrad, CaffeRMSProp,
                                       CaffeAdaDelta, CaffeAdam)}
OPTIMIZER_NAMES = {"SGD": "caffe_sgd", "Nesterov": "caffe_nesterov", "AdaGrad": "caffe_adagrad",
                   "RMSProp": "caffe_rmsprop", "AdaDelta": "caffe_adadelta", "Adam": "caffe_adam"}


def register():
    """Put the six optimizers in MXNet's registry under ``caffe_sgd`` ... ``caffe_adam`` (idempotent).

    ``mx.optimizer.register`` keys by the lower-cased class name, so the names
    with an underscore are entered directly into the same registry.
    """
    registry = mx.optimizer.Optimizer.opt_registry
    for solver_type, name in OPTIMIZER_NAMES.items():
        registry[name] = _CLASSES[solver_type]


def create_from_solver_param(param, rescale_grad=1.0, begin_num_update=None, current_step=None,
                             **kwargs):
    """The optimizer Caffe's solver ``param`` describes (type, rate policy, momentum, decay, ...).

    ``begin_num_update`` defaults to 0 (a fresh solver); pass the restored
    ``iter`` and ``current_step`` to resume.
    """
    scheduler = CaffeLRScheduler(param, current_step=current_step or 0)
    options = dict(lr_scheduler=scheduler, momentum=param.momentum, wd=param.weight_decay,
                   regularization_type=param.regularization_type,
                   clip_gradients=param.clip_gradients, iter_size=param.iter_size,
                   delta=param.delta, rescale_grad=rescale_grad,
                   begin_num_update=int(begin_num_update or 0))
    if param.type == "RMSProp":
        options["rms_decay"] = param.rms_decay
    if param.type == "Adam":
        options["momentum2"] = param.momentum2
    options.update(kwargs)
    return mx.optimizer.create(OPTIMIZER_NAMES[param.type], **options)


register()
