"""``caffe train`` and ``caffe test`` (tools/caffe.cpp, reference sections 6.1, 6.2) as functions, for the CLI.

    train("lenet_solver.prototxt")                       # solve from scratch
    train("lenet_solver.prototxt", weights="a.caffemodel,b.caffemodel")   # finetune
    train("lenet_solver.prototxt", snapshot="lenet_iter_5000.solverstate")  # resume
    score("lenet_train_test.prototxt", "lenet_iter_10000.caffemodel", iterations=100)
"""
import sys

import numpy as np

from ..errors import SpecError
from . import log as caffe_log
from .params import load_solver_param
from .solver import NONE, SNAPSHOT, STOP, Solver

EFFECTS = (STOP, SNAPSHOT, NONE)


def train(solver, weights=None, snapshot=None, stages=(), level=0, sigint_effect=STOP,
          sighup_effect=SNAPSHOT, log_stream=None, fast=None, on_solver=None, native=False):
    """Run ``caffe train``: returns the finished :class:`Solver`.

    ``weights`` (comma-separated caffemodels) replaces the solver's ``weights``;
    ``snapshot`` resumes from a ``.solverstate`` (and clears them); both at once
    is an error, as in Caffe.  ``stages``/``level`` go to the train net's state.
    Log lines (glog format) go to ``log_stream`` (default stderr).  ``on_solver(solver)``
    is called once the solver is built, before any restore or step (to add observers).
    ``native`` runs the layers MXNet computes identically as native operators
    (``caffedata.Net(native=True)``).
    """
    if weights and snapshot:
        raise SpecError("Give a snapshot to resume training or weights to finetune but not both.")
    for name, effect in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
        if effect not in EFFECTS:
            raise SpecError(f"{name}: must be one of {', '.join(EFFECTS)}, got {effect!r}")
    log_stream = sys.stderr if log_stream is None else log_stream
    param = load_solver_param(solver)
    if snapshot or weights:
        del param.weights[:]
    if weights:
        param.weights.append(weights)
    if stages or level:
        param.train_state.level = int(level)
        param.train_state.stage.extend(stages)
    log_stream.write(caffe_log.glog_prefix(("caffe.cpp", 217)) + "Use CPU.\n")
    result = Solver(param, log_stream=log_stream, fast=fast, native=native)
    try:
        result.sigint_effect, result.sighup_effect = sigint_effect, sighup_effect
        if on_solver is not None:
            on_solver(result)
        if snapshot:
            log_stream.write(caffe_log.glog_prefix(("caffe.cpp", 255)) + f"Resuming from {snapshot}\n")
            result.restore(snapshot)
        log_stream.write(caffe_log.glog_prefix(("caffe.cpp", 258)) + "Starting Optimization\n")
        result.solve()
        log_stream.write(caffe_log.glog_prefix(("caffe.cpp", 261)) + caffe_log.OPTIMIZATION_DONE + "\n")
    finally:
        result.close()
    return result


def score(model, weights, iterations=50, stages=(), level=0, log_stream=None, batches=None, fast=None,
          phase="TEST"):
    """Run ``caffe test``: ``iterations`` forward passes (``phase`` TEST, as Caffe's; TRAIN allowed).

    Returns ``{"loss": mean forward loss, "outputs": {name: np.array of per-element means}}``.

    Logs ``Batch <i>, <name> = <value>`` for every element of every output,
    then ``Loss: <mean>`` and ``<name> = <mean>`` (with `` (* w = l loss)`` for
    loss outputs), as Caffe does.  ``batches`` feeds a net without Data layers.
    """
    from ..net.net import Net
    from .net_adapter import _adapter

    if not weights:
        raise SpecError("score: weights are required (caffe test needs --weights)")
    log_stream = sys.stderr if log_stream is None else log_stream

    def emit(line, text):
        log_stream.write(caffe_log.glog_prefix(("caffe.cpp", line)) + text + "\n")

    net = _adapter(Net(model, weights=weights, phase=phase, stages=tuple(stages), level=level), batches, fast)
    try:
        emit(302, f"Running for {int(iterations)} iterations.")
        total, sums, names = np.float32(0), None, []
        for i in range(int(iterations)):
            loss, outputs = net.forward()
            total = np.float32(total + np.float32(loss))
            flat = [(name, v) for name, arr in outputs for v in np.asarray(arr, np.float32).reshape(-1)]
            if sums is None:
                names = [name for name, _ in flat]
                sums = np.zeros(len(flat), np.float32)
            for k, (name, v) in enumerate(flat):
                sums[k] += v
                emit(318, f"Batch {i}, {name} = {caffe_log.fmt(v)}")
        n = max(int(iterations), 1)
        mean_loss = np.float32(total / np.float32(n))
        emit(323, f"Loss: {caffe_log.fmt(mean_loss)}")
        means = {}
        weights_of = getattr(net, "output_loss_weights", {})
        for k, name in enumerate(names):
            mean = np.float32(sums[k] / np.float32(n))
            text = f"{name} = {caffe_log.fmt(mean)}"
            w = weights_of.get(name, 0.0)
            if w:
                text += f" (* {caffe_log.fmt(w)} = {caffe_log.fmt(np.float32(w) * mean)} loss)"
            emit(335, text)
            means.setdefault(name, []).append(mean)
        return {"loss": float(mean_loss),
                "outputs": {name: np.array(v, dtype=np.float32) for name, v in means.items()}}
    finally:
        if hasattr(net, "close"):
            net.close()
