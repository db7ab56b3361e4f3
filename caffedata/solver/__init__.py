"""Caffe's solver machinery: lr policies, update rules, solverstate, logs, the Step loop.

Nothing here imports MXNet at import time except :mod:`caffedata.solver.optimizers`
(the ``caffe_*`` MXNet optimizers), which is imported on demand.
"""
from .lr_policy import CaffeLRScheduler, LearningRatePolicy, learning_rate
from .params import load_solver_param
from .solver import Solver, get_solver
from .state import read_solver_state, snapshot_filenames, write_solver_state

__all__ = ["Solver", "get_solver", "CaffeLRScheduler", "LearningRatePolicy", "learning_rate",
           "load_solver_param", "read_solver_state", "write_solver_state", "snapshot_filenames"]
