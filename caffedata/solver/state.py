"""``.solverstate`` files and snapshot file names (reference section 3.3).

A SolverState holds ``iter`` (updates done), ``learned_net`` (the model file
name exactly as built from the prefix), ``history`` (one blob per learnable
parameter in ``learnable_params`` order; AdaDelta and Adam append a second block
of the same size) and ``current_step``.  Binary protobuf by default; the HDF5
form (``.solverstate.h5``) has int datasets ``iter`` and ``current_step``, a
string dataset ``learned_net`` and a group ``history`` with datasets ``"0"``,
``"1"``, ...  No MXNet needed.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import SpecError
from ..formats.atomic import atomic_path
from ..proto import BlobProto, message_class

SolverState = message_class("SolverState")

BINARYPROTO, HDF5 = 1, 0  # SolverParameter.SnapshotFormat


def snapshot_filename(prefix, iter, extension):
    """``<prefix>_iter_<N><extension>``, no zero padding (Solver::SnapshotFilename)."""
    return f"{prefix}_iter_{int(iter)}{extension}"


def snapshot_filenames(prefix, iter, snapshot_format=BINARYPROTO):
    """(model file, state file) for a snapshot after ``iter`` updates."""
    if snapshot_format == HDF5:
        return (snapshot_filename(prefix, iter, ".caffemodel.h5"),
                snapshot_filename(prefix, iter, ".solverstate.h5"))
    return (snapshot_filename(prefix, iter, ".caffemodel"),
            snapshot_filename(prefix, iter, ".solverstate"))


@dataclass
class SolverStateData:
    iter: int = 0
    learned_net: str = ""
    history: list = field(default_factory=list)  # float32 numpy arrays, Caffe's order
    current_step: int = 0


def _blob(array):
    blob = BlobProto()
    array = np.asarray(array, dtype=np.float32)
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.reshape(-1).tolist())
    return blob


def diffs_by_layer(params, located):
    """Diffs in the layout of ``params`` (layer -> arrays), zeros where none is given.

    ``located``: ``((layer, blob index), diff or None)`` pairs, as a snapshot with
    ``snapshot_diff`` writes them.
    """
    out = {layer: [np.zeros_like(b) for b in blobs] for layer, blobs in params.items()}
    for (layer, j), diff in located:
        if diff is not None and layer in out and j < len(out[layer]):
            out[layer][j] = np.asarray(diff, np.float32).reshape(out[layer][j].shape)
    return out


def _array(blob, where):
    if len(blob.double_data):
        data = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        data = np.asarray(blob.data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:  # legacy 4-D fields
        shape = (blob.num, blob.channels, blob.height, blob.width)
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise SpecError(f"{where}: history blob of shape {shape} holds {data.size} values -- "
                        f"the solverstate is corrupt")
    return data.reshape(shape)


def write_solver_state(path, state, snapshot_format=None):
    """Write ``state`` (SolverStateData) as binary proto, or HDF5 when the name ends in ``.h5``."""
    if snapshot_format is None:
        snapshot_format = HDF5 if str(path).endswith(".h5") else BINARYPROTO
    if snapshot_format == HDF5:
        _write_hdf5(path, state)
        return path
    msg = SolverState()
    msg.iter = int(state.iter)
    msg.learned_net = state.learned_net
    msg.current_step = int(state.current_step)
    for h in state.history:
        msg.history.add().CopyFrom(_blob(h))
    with atomic_path(path, "solver state") as tmp:
        with open(tmp, "wb") as f:
            f.write(msg.SerializeToString())
    return path


def read_solver_state(path):
    """SolverStateData from a ``.solverstate`` (binary) or ``.solverstate.h5`` (HDF5) file."""
    path = str(path)
    if not os.path.isfile(path):
        raise SpecError(f"{path}: solver state file not found -- pass a <prefix>_iter_N.solverstate")
    if path.endswith(".h5"):
        return _read_hdf5(path)
    msg = SolverState()
    with open(path, "rb") as f:
        data = f.read()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise SpecError(f"{path}: not a SolverState protobuf ({exc}) -- is it a .solverstate file?") from None
    history = [_array(b, f"{path}: history[{i}]") for i, b in enumerate(msg.history)]
    return SolverStateData(iter=msg.iter, learned_net=msg.learned_net, history=history,
                           current_step=msg.current_step)


def _write_hdf5(path, state):
    import h5py

    with atomic_path(path, "solver state") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
        name = state.learned_net.encode()
        f.create_dataset("learned_net", data=np.array(name, dtype=f"S{len(name) + 1}"))
        f.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
        group = f.create_group("history")
        for i, h in enumerate(state.history):
            group.create_dataset(str(i), data=np.asarray(h, dtype=np.float32))


def _read_hdf5(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for key in ("iter", "learned_net", "history"):
                if key not in f:
                    raise SpecError(f"{path}: HDF5 solver state has no '{key}' dataset -- is it a "
                                    f".solverstate.h5 file?")
            learned = f["learned_net"][()]
            learned = learned.decode() if isinstance(learned, bytes) else str(learned)
            group = f["history"]
            history = [np.asarray(group[str(i)], dtype=np.float32) for i in range(len(group))]
            return SolverStateData(
                iter=int(np.asarray(f["iter"]).reshape(-1)[0]), learned_net=learned.rstrip("\0"),
                history=history,
                current_step=int(np.asarray(f["current_step"]).reshape(-1)[0]) if "current_step" in f else 0)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read HDF5 solver state ({exc})") from None


def history_from_states(states, solver_type):
    """Caffe's history order from per-parameter optimizer states (see optimizers.py).

    SGD/Nesterov/AdaGrad/RMSProp: one array per parameter.  AdaDelta/Adam: the
    first block for every parameter, then the second block.
    """
    if solver_type in ("AdaDelta", "Adam"):
        return [s[0] for s in states] + [s[1] for s in states]
    return list(states)


def states_from_history(history, solver_type, num_params):
    """Inverse of :func:`history_from_states`; checks the count as Caffe does."""
    blocks = 2 if solver_type in ("AdaDelta", "Adam") else 1
    if len(history) != blocks * num_params:
        raise SpecError(f"Incorrect length of history blobs: the solverstate has {len(history)}, "
                        f"a {solver_type} solver over {num_params} learnable parameters needs "
                        f"{blocks * num_params} -- restore it into the solver type that wrote it")
    if blocks == 2:
        return [(history[i], history[num_params + i]) for i in range(num_params)]
    return list(history)
