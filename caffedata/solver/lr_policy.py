"""Caffe's learning-rate policies (sgd_solver.cpp, SGDSolver::GetLearningRate).

``iter`` is Caffe's ``iter_``: the number of updates already applied, so the
update that produces iterate N+1 uses ``iter = N``.  The rate is a C++ ``float``
in Caffe; we follow its arithmetic: hyper-parameters are float32 (they are proto
``float`` fields), ``pow(float, int)`` (step, exp, multistep) is evaluated in
double, ``pow(float, float)`` (inv, poly) and ``exp(float)`` (sigmoid) in float,
and the result is rounded to float32.  This module needs no MXNet.

:class:`CaffeLRScheduler` is an MXNet ``lr_scheduler`` (duck-typed: ``base_lr``
and ``__call__(num_update)``): MXNet calls it with ``num_update`` = the number of
updates *including* the current one, so it uses Caffe's ``iter = num_update - 1``.
"""
import math

import numpy as np

from ..errors import SpecError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_f32 = np.float32


def _field(param, name, default=0):
    value = getattr(param, name, default)
    return default if value is None else value


def check_policy(param):
    """Raise SpecError naming the field if ``param`` cannot give a rate (Caffe's CHECKs)."""
    policy = _field(param, "lr_policy", "")
    if policy not in POLICIES:
        raise SpecError(f"lr_policy: unknown learning rate policy {policy!r} -- use one of "
                        f"{', '.join(POLICIES)} (Caffe has no default: the field must be set)")
    gamma = float(_field(param, "gamma"))
    stepsize = int(_field(param, "stepsize"))
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and gamma < 0:
        raise SpecError(f"gamma: lr_policy {policy!r} needs gamma >= 0, got {gamma}")
    if policy in ("step", "sigmoid") and stepsize <= 0:
        raise SpecError(f"stepsize: lr_policy {policy!r} needs stepsize > 0, got {stepsize} "
                        f"-- add `stepsize: N` to the solver")
    if policy == "multistep":
        values = list(_field(param, "stepvalue", ()))
        if any(b < a for a, b in zip(values, values[1:])):
            raise SpecError(f"stepvalue: multistep needs increasing stepvalue entries, got {values}")
    if policy == "poly" and int(_field(param, "max_iter")) <= 0:
        raise SpecError(f"max_iter: lr_policy 'poly' divides by max_iter, got "
                        f"{int(_field(param, 'max_iter'))} -- set `max_iter: N` > 0")


def learning_rate(param, iter, current_step=0):
    """Caffe's rate at ``iter`` -> ``(rate, current_step)``.

    ``current_step`` is Caffe's ``current_step_`` (saved in the solverstate):
    ``step`` recomputes it, ``multistep`` advances it by at most one per call,
    exactly as GetLearningRate does; other policies return it unchanged.
    """
    policy = _field(param, "lr_policy", "")
    base_lr = _f32(_field(param, "base_lr"))
    gamma = _f32(_field(param, "gamma"))
    power = _f32(_field(param, "power"))
    stepsize = int(_field(param, "stepsize"))
    iter = int(iter)
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        check_policy(param)
        current_step = iter // stepsize
        rate = float(base_lr) * math.pow(float(gamma), current_step)
    elif policy == "exp":
        check_policy(param)
        rate = float(base_lr) * math.pow(float(gamma), iter)
    elif policy == "inv":
        check_policy(param)
        with np.errstate(all="ignore"):
            base = _f32(1) + gamma * _f32(iter)
            rate = base_lr * np.power(base, -power)
    elif policy == "multistep":
        check_policy(param)
        stepvalue = list(_field(param, "stepvalue", ()))
        if current_step < len(stepvalue) and iter >= stepvalue[current_step]:
            current_step += 1
        rate = float(base_lr) * math.pow(float(gamma), current_step)
    elif policy == "poly":
        check_policy(param)
        max_iter = int(_field(param, "max_iter"))
        with np.errstate(all="ignore"):
            rate = base_lr * np.power(_f32(1) - _f32(iter) / _f32(max_iter), power)
    elif policy == "sigmoid":
        check_policy(param)
        with np.errstate(all="ignore"):
            rate = base_lr * (_f32(1) / (_f32(1) + np.exp(-gamma * (_f32(iter) - _f32(stepsize)))))
    else:
        check_policy(param)  # raises
    return float(_f32(rate)), current_step


class LearningRatePolicy:
    """Stateful Caffe policy: ``rate(iter)`` advances ``current_step`` like Caffe.

    Caffe computes the rate once per iteration; MXNet asks once per parameter,
    so repeated calls for the same ``iter`` return the cached rate without
    advancing ``multistep`` again.
    """

    def __init__(self, param, current_step=0):
        check_policy(param)
        self.param = param
        self.current_step = int(current_step)
        self._cached = None  # (iter, rate)
        self.messages = []  # "MultiStep Status: ..." lines not yet logged

    def rate(self, iter):
        iter = int(iter)
        if self._cached is not None and self._cached[0] == iter:
            return self._cached[1]
        before = self.current_step
        rate, self.current_step = learning_rate(self.param, iter, self.current_step)
        if _field(self.param, "lr_policy", "") == "multistep" and self.current_step != before:
            self.messages.append(f"MultiStep Status: Iteration {iter}, step = {self.current_step}")
        self._cached = (iter, rate)
        return rate

    def reset(self, current_step=0):
        """After restoring a solverstate."""
        self.current_step = int(current_step)
        self._cached = None


class CaffeLRScheduler:
    """An MXNet ``lr_scheduler`` giving Caffe's rate: pass it as ``lr_scheduler=``.

    MXNet increments ``num_update`` before asking, so the first update sees
    ``num_update = begin_num_update + 1``; Caffe's iteration is ``num_update - 1``.
    To resume at Caffe iteration N, create the optimizer with ``begin_num_update=N``.
    ``base_lr`` mirrors the solver's ``base_lr`` (MXNet overwrites it with the
    optimizer's ``learning_rate`` argument when that is given).
    """

    def __init__(self, solver_param, current_step=0):
        self.policy = LearningRatePolicy(solver_param, current_step)
        self.base_lr = float(_f32(_field(solver_param, "base_lr")))

    @property
    def current_step(self):
        return self.policy.current_step

    def rate_at_iter(self, iter):
        if self.base_lr != float(_f32(_field(self.policy.param, "base_lr"))):
            return self._scaled(iter)
        return self.policy.rate(iter)

    def _scaled(self, iter):
        # base_lr was overridden by the optimizer's learning_rate: every policy is linear in it
        original = float(_f32(_field(self.policy.param, "base_lr")))
        rate = self.policy.rate(iter)
        if original == 0:
            raise SpecError("base_lr: 0 in the solver parameter; cannot rescale the policy to "
                            f"learning_rate={self.base_lr} -- set base_lr in the solver instead")
        return float(_f32(rate / original * self.base_lr))

    def __call__(self, num_update):
        return self.rate_at_iter(max(int(num_update) - 1, 0))
