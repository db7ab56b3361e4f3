"""Reading a ``solver.prototxt`` as Caffe does (upgrade_proto.cpp, ReadSolverParamsFromTextFileOrDie).

:func:`load_solver_param` parses and upgrades with :mod:`caffedata.net.upgrade`
(reference section 2.7), then validates with :class:`~caffedata.errors.SpecError`
messages that name the field (Caffe's CHECKs, and a few that Caffe leaves to
NaNs).  No MXNet needed.
"""
import os

from ..errors import SpecError
from ..net import upgrade as _upgrade
from .lr_policy import check_policy

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
RMS_DECAY_DEFAULT = 0.99  # BVLC master's default (the rc4 schema had none)

# Caffe's own spelling is the registry's; accept case variants users write ("sgd", "ADAM").
_TYPE_BY_LOWER = {t.lower(): t for t in SOLVER_TYPES}


def _has(param, name):
    try:
        return param.HasField(name)
    except ValueError:  # the field does not exist in this schema
        return False


def load_solver_param(solver, check=True, check_nets=True):
    """A SolverParameter from a path, prototxt text or message, upgraded and validated as Caffe does.

    Parsing and the §2.7 upgrades are :func:`caffedata.net.upgrade.load_solver_param`'s
    (``solver_type`` -> ``type``; for a path, ``snapshot_prefix`` absent -> the
    path without its extension, a directory -> ``<dir>/<file stem>``).  Then the
    type's spelling is normalised, defaults missing from an older schema are
    filled, and (``check``) Caffe's fatal checks become SpecErrors naming the field.
    ``check_nets=False`` skips the checks of the net fields (for a solver given
    net objects rather than net files).
    """
    param = _upgrade.load_solver_param(solver)
    path = solver if isinstance(solver, (str, os.PathLike)) and os.path.isfile(solver) else None
    if param.type.lower() in _TYPE_BY_LOWER:
        param.type = _TYPE_BY_LOWER[param.type.lower()]
    if not _has(param, "rms_decay") and param.rms_decay == 0:  # a pre-master schema without the default
        param.rms_decay = RMS_DECAY_DEFAULT
    if check:
        validate_solver_param(param, os.fspath(path) if path is not None else None, check_nets)
    return param


def validate_solver_param(param, path=None, check_nets=True):
    """Caffe's fatal checks as SpecErrors naming the field (and a few that Caffe leaves to NaNs)."""
    where = f"{path}: " if path else ""

    def fail(msg):
        raise SpecError(where + msg)

    try:
        check_policy(param)
    except SpecError as exc:
        fail(str(exc))
    if param.type not in SOLVER_TYPES:
        fail(f"type: unknown solver type {param.type!r} -- use one of {', '.join(SOLVER_TYPES)}")
    if param.average_loss < 1:
        fail(f"average_loss: must be >= 1, got {param.average_loss}")
    if param.iter_size < 1:
        fail(f"iter_size: must be >= 1, got {param.iter_size}")
    if param.regularization_type not in ("L1", "L2"):
        fail(f"regularization_type: unknown regularization type {param.regularization_type!r} "
             f"-- use \"L2\" or \"L1\"")
    if param.type in ("AdaGrad", "RMSProp") and param.momentum != 0:
        fail(f"momentum: Momentum cannot be used with {param.type} (got {param.momentum}) -- "
             f"remove `momentum` from the solver")
    if param.type == "RMSProp" and not 0 <= param.rms_decay < 1:
        fail(f"rms_decay: RMSProp needs 0 <= rms_decay < 1, got {param.rms_decay}")
    if param.max_iter < 0:
        fail(f"max_iter: must be >= 0, got {param.max_iter}")
    for name in ("display", "snapshot", "test_interval"):
        if getattr(param, name) < 0:
            fail(f"{name}: must be >= 0, got {getattr(param, name)}")
    if any(n < 0 for n in param.test_iter):
        fail(f"test_iter: entries must be >= 0, got {list(param.test_iter)}")
    if not check_nets:
        return param
    train_sources = [n for n in ("net", "net_param", "train_net", "train_net_param") if _has(param, n)]
    if len(train_sources) > 1:
        fail(f"{' and '.join(train_sources)}: exactly one train net source may be given")
    if _has(param, "net") and _has(param, "net_param"):
        fail("net and net_param: give only one")
    explicit_tests = len(param.test_net) + len(param.test_net_param)
    generic = _has(param, "net") or _has(param, "net_param")
    if generic:
        if len(param.test_iter) < explicit_tests:
            fail(f"test_iter: {len(param.test_iter)} entries for {explicit_tests} test nets -- "
                 f"give one test_iter per test net")
    elif len(param.test_iter) != explicit_tests:
        fail(f"test_iter: {len(param.test_iter)} entries for {explicit_tests} test nets -- "
             f"give exactly one test_iter per test_net / test_net_param")
    num_tests = max(len(param.test_iter), explicit_tests)
    if param.test_state and len(param.test_state) != num_tests:
        fail(f"test_state: {len(param.test_state)} entries for {num_tests} test nets -- give "
             f"none or one per test net")
    if num_tests and param.test_interval <= 0:
        fail(f"test_interval: {num_tests} test net(s) need test_interval > 0, got "
             f"{param.test_interval}")
    return param


def num_test_nets(param):
    """How many test nets Caffe builds (§5.2 step 3)."""
    return max(len(param.test_iter), len(param.test_net) + len(param.test_net_param))
