"""``caffe train`` (tools/caffe.cpp, reference section 6.1) as a function, for the CLI.

    train("lenet_solver.prototxt")                       # solve from scratch
    train("lenet_solver.prototxt", weights="a.caffemodel,b.caffemodel")   # finetune
    train("lenet_solver.prototxt", snapshot="lenet_iter_5000.solverstate")  # resume
"""
import sys

from ..errors import SpecError
from . import log as caffe_log
from .params import load_solver_param
from .solver import NONE, SNAPSHOT, STOP, Solver

EFFECTS = (STOP, SNAPSHOT, NONE)


def train(solver, weights=None, snapshot=None, stages=(), level=0, sigint_effect=STOP,
          sighup_effect=SNAPSHOT, log_stream=None, fast=None):
    """Run ``caffe train``: returns the finished :class:`Solver`.

    ``weights`` (comma-separated caffemodels) replaces the solver's ``weights``;
    ``snapshot`` resumes from a ``.solverstate`` (and clears them); both at once
    is an error, as in Caffe.  ``stages``/``level`` go to the train net's state.
    Log lines (glog format) go to ``log_stream`` (default stderr).
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
    result = Solver(param, log_stream=log_stream, fast=fast)
    try:
        result.sigint_effect, result.sighup_effect = sigint_effect, sighup_effect
        if snapshot:
            log_stream.write(caffe_log.glog_prefix(("caffe.cpp", 255)) + f"Resuming from {snapshot}\n")
            result.restore(snapshot)
        log_stream.write(caffe_log.glog_prefix(("caffe.cpp", 258)) + "Starting Optimization\n")
        result.solve()
        log_stream.write(caffe_log.glog_prefix(("caffe.cpp", 261)) + caffe_log.OPTIMIZATION_DONE + "\n")
    finally:
        result.close()
    return result
