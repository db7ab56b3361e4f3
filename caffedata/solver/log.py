"""Caffe's solver log lines (reference section 5.9) and loss smoothing (section 5.5).

The ``*_line`` functions return the text after glog's prefix; :func:`glog_prefix`
gives the prefix (``I1129 13:05:51.738376 19622 solver.cpp:239] ``), so
``glog_prefix("display") + display_line(...)`` is a line Caffe's
``tools/extra/parse_log.py`` reads.  Numbers
use C++ iostream's default format (``%g``, 6 significant digits) of the float32
value, with C++'s ``-nan`` for NaN.  No MXNet needed.
"""
import math
import os
import threading
import time

import numpy as np

# (file, line) of each message in Caffe's sources (solver.cpp / sgd_solver.cpp at 9b89154)
SITES = {
    "init": ("solver.cpp", 45), "train_net": ("solver.cpp", 102), "test_net": ("solver.cpp", 190),
    "scaffolding": ("solver.cpp", 57), "solving": ("solver.cpp", 289), "policy": ("solver.cpp", 290),
    "restoring": ("solver.cpp", 296), "testing": ("solver.cpp", 347), "test_loss": ("solver.cpp", 401),
    "test_output": ("solver.cpp", 414), "display": ("solver.cpp", 239),
    "train_output": ("solver.cpp", 258), "multistep": ("sgd_solver.cpp", 50),
    "lr": ("sgd_solver.cpp", 112), "clipping": ("sgd_solver.cpp", 99),
    "snapshot_binary": ("solver.cpp", 464), "snapshot_hdf5": ("solver.cpp", 474),
    "state_binary": ("sgd_solver.cpp", 284), "state_hdf5": ("sgd_solver.cpp", 296),
    "final_loss": ("solver.cpp", 327), "stopped": ("solver.cpp", 311), "done": ("solver.cpp", 332),
}


def fmt(x):
    """C++ ``ostream << float``: ``%g`` of the float32 value; NaN prints as ``-nan`` (x86 default NaN)."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    v = float(np.float32(x))
    if math.isnan(v):
        return "-nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "%g" % v


def glog_prefix(site="display", when=None, thread_id=None, severity="I", year=False):
    """``I<mmdd> <hh:mm:ss.uuuuuu> <tid> <file>:<line>] ``; ``year=True``: ``I<yyyymmdd> ...``.

    The default is glog's classic form because Caffe's ``parse_log.py`` (its
    ``extract_seconds``) reads the date as ``I<mm><dd>`` and rejects the
    ``I<yyyymmdd>`` form of glog >= 0.6.
    """
    file, line = SITES[site] if isinstance(site, str) else site
    when = time.time() if when is None else when
    t = time.localtime(when)
    micros = int(round((when - int(when)) * 1e6)) % 1000000
    tid = thread_id if thread_id is not None else (threading.get_native_id() or os.getpid())
    date = time.strftime("%Y%m%d" if year else "%m%d", t)
    return (f"{severity}{date} {time.strftime('%H:%M:%S', t)}.{micros:06d} "
            f"{tid:>5} {file}:{line}] ")


def display_line(iter, per_s, lapse, display, smoothed_loss):
    return (f"Iteration {iter} ({fmt(per_s)} iter/s, {fmt(lapse)}s/{display} iters), "
            f"loss = {fmt(smoothed_loss)}")


def _output_line(kind, index, name, value, loss_weight):
    text = f"    {kind} net output #{index}: {name} = {fmt(value)}"
    if loss_weight:
        lw = np.float32(loss_weight)
        text += f" (* {fmt(lw)} = {fmt(lw * np.float32(value))} loss)"
    return text


def train_output_line(index, name, value, loss_weight=0.0):
    return _output_line("Train", index, name, value, loss_weight)


def test_output_line(index, name, value, loss_weight=0.0):
    return _output_line("Test", index, name, value, loss_weight)


def output_lines(kind, outputs, loss_weights=None):
    """One line per element of each output, the index running over all elements (Caffe's order).

    ``outputs``: list of ``(name, array)`` in net-output order (sorted by name in Caffe).
    """
    loss_weights = loss_weights or {}
    lines, k = [], 0
    for name, value in outputs:
        w = loss_weights.get(name, 0.0)
        for v in np.asarray(value, dtype=np.float32).reshape(-1):
            lines.append(_output_line(kind, k, name, v, w))
            k += 1
    return lines


def lr_line(iter, rate):
    return f"Iteration {iter}, lr = {fmt(rate)}"


def multistep_line(iter, step):
    return f"MultiStep Status: Iteration {iter}, step = {step}"


def testing_line(iter, net_index=0):
    return f"Iteration {iter}, Testing net (#{net_index})"


def test_loss_line(loss):
    return f"Test loss: {fmt(loss)}"


def clipping_line(norm, clip, scale):
    return (f"Gradient clipping: scaling down gradients (L2 norm {fmt(norm)} > {fmt(clip)}) "
            f"by scale factor {fmt(scale)}")


def snapshot_model_line(filename, hdf5=False):
    return f"Snapshotting to {'HDF5' if hdf5 else 'binary proto'} file {filename}"


def snapshot_state_line(filename, hdf5=False):
    return f"Snapshotting solver state to {'HDF5' if hdf5 else 'binary proto'} file {filename}"


def final_loss_line(iter, smoothed_loss):
    return f"Iteration {iter}, loss = {fmt(smoothed_loss)}"


def solving_line(name):
    return f"Solving {name}"


def policy_line(policy):
    return f"Learning Rate Policy: {policy}"


def restoring_line(filename):
    return f"Restoring previous solver status from {filename}"


OPTIMIZATION_DONE = "Optimization Done."
OPTIMIZATION_STOPPED = "Optimization stopped early."
SCAFFOLDING_DONE = "Solver scaffolding done."


class SmoothedLoss:
    """Caffe's UpdateSmoothedLoss: running mean until the window is full, then a float32 ring update.

    Reset at the start of every ``Step`` call (``reset(start_iter)``), as Caffe does.
    """

    def __init__(self, average_loss=1):
        if int(average_loss) < 1:
            raise ValueError(f"average_loss must be >= 1, got {average_loss}")
        self.window = int(average_loss)
        self.reset(0)

    def reset(self, start_iter=0):
        self.start_iter = int(start_iter)
        self.losses = []
        self.value = np.float32(0)

    def update(self, loss, iter):
        """Feed the loss of iteration ``iter`` (Caffe's ``iter_`` before the update); return the smoothed loss."""
        loss = np.float32(loss)
        if len(self.losses) < self.window:
            self.losses.append(loss)
            n = np.float32(len(self.losses))
            self.value = np.float32((self.value * (n - np.float32(1)) + loss) / n)
        else:
            k = (int(iter) - self.start_iter) % self.window
            self.value = np.float32(self.value + (loss - self.losses[k]) / np.float32(self.window))
            self.losses[k] = loss
        return float(self.value)
