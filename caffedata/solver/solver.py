"""Caffe's solver loop (solver.cpp: Solver::Step, Solve, TestAll, Snapshot, Restore).

:class:`Solver` drives any train net offering this small interface (what
``caffedata.Net`` is to provide; :class:`caffedata.solver.module_net.ModuleNet`
provides it for an MXNet symbol and a data iterator):

``learnable_names``
    learnable parameters in Caffe's ``learnable_params`` order;
``param_arrays`` / ``grad_arrays``
    NDArrays in that order: the weights (updated in place) and the gradients
    of the last ``forward_backward`` (MXNet's scale: ``1/rescale_grad`` x Caffe's);
``lr_mults`` / ``decay_mults``, ``rescale_grad``
    per-parameter multipliers and the factor that turns a gradient into Caffe's diff;
``forward_backward() -> (loss, outputs)`` / ``forward() -> (loss, outputs)``
    one pass on the net's next batch; ``loss`` is the weighted sum of the loss
    outputs, ``outputs`` a list of ``(name, array)`` in Caffe's output order;
``output_loss_weights``
    ``{output name: loss weight}`` for the ``(* w = l loss)`` suffixes;
``save(path)`` / ``copy_from(path)``
    write / read a ``.caffemodel`` (``.h5`` names: HDF5).

Test nets offer ``forward()``, ``output_loss_weights`` and
``share_weights_from(train_net)`` (Caffe's ShareTrainedLayersWith).

Updates use the ``caffe_*`` MXNet optimizers (:mod:`caffedata.solver.optimizers`)
through MXNet's ``Updater``; the optimizer state is Caffe's history and goes
into the ``.solverstate`` in Caffe's order.
"""
import logging
import os
import signal
import threading
import time

import numpy as np

from ..errors import SpecError
from . import log as caffe_log
from .params import load_solver_param
from .state import (HDF5, SolverStateData, history_from_states, read_solver_state, snapshot_filenames,
                    states_from_history, write_solver_state)

logger = logging.getLogger("caffedata.solver")

STOP, SNAPSHOT, NONE = "stop", "snapshot", "none"


def get_solver(solver, **kwargs):
    """pycaffe's ``caffe.get_solver``: a :class:`Solver` of the file's ``type``."""
    return Solver(solver, **kwargs)


class Solver:
    """Caffe's SGD-family solver over a train net and test nets (see the module docstring).

    Parameters
    ----------
    solver : path, prototxt text or SolverParameter (read with :func:`load_solver_param`).
    train_net : the train net (interface above).  Without it the solver builds
        ``caffedata.Net`` train and test nets from the solver's net fields, as
        ``caffe.get_solver(file)`` (see :func:`caffedata.solver.net_adapter.build_nets`;
        ``batches`` / ``test_batches`` feed nets without Data layers; ``native``
        builds them with ``caffedata.Net(native=True)``).
    test_nets : test nets, one per ``test_iter`` entry.
    log_stream : a text stream receiving Caffe-format lines with glog prefixes
        (besides the ``caffedata.solver`` logger, which gets the bare text).
    """

    def __init__(self, solver, train_net=None, test_nets=None, log_stream=None, batches=None,
                 test_batches=None, stages=(), level=0, fast=None, native=False):
        from . import optimizers  # imports mxnet

        self._optimizers = optimizers
        self.log_stream = log_stream
        if train_net is None:
            # pycaffe's caffe.get_solver(file): build the nets the solver names (reference §5.2)
            self.param = load_solver_param(solver)
            self._seed()
            from .net_adapter import build_nets
            train_net, test_nets = build_nets(self.param, batches, test_batches, stages, level, fast, native)
        else:
            self.param = load_solver_param(solver, check_nets=False)
            self._seed()
        if self.param.debug_info:
            logger.warning("debug_info: true is not supported by caffedata's solver; no per-layer debug "
                           "lines are printed")
        from google.protobuf import text_format
        self._emit("init", "Initializing solver from parameters: \n" + text_format.MessageToString(self.param))
        self.net = train_net
        self.test_nets = list(test_nets or ())
        if len(self.test_nets) != len(self.param.test_iter):
            raise SpecError(f"test_iter: the solver has {len(self.param.test_iter)} test_iter entries but "
                            f"{len(self.test_nets)} test net(s) were given -- give one test net per entry")
        if self.test_nets and self.param.test_interval <= 0:
            raise SpecError(f"test_interval: {len(self.test_nets)} test net(s) need test_interval > 0, "
                            f"got {self.param.test_interval}")
        self._check_snapshot_prefix()
        self.iter = 0
        self.history = []  # one dict per iteration: iter, loss, smoothed_loss, lr, outputs
        self.test_history = []  # one dict per test pass: iter, net, outputs, loss
        self.smoothed = caffe_log.SmoothedLoss(self.param.average_loss)
        self.requested_action = None
        self.sigint_effect, self.sighup_effect = STOP, SNAPSHOT  # caffe train's defaults
        # callables observer(event, record): ("iteration", history entry), ("test", test_history
        # entry), ("snapshot", {"iter", "caffemodel", "solverstate"}) -- for progress bars and logs
        self.observers = []
        self._make_optimizer(begin_iter=0, current_step=0)
        self._emit("scaffolding", caffe_log.SCAFFOLDING_DONE)

    def _seed(self):
        """random_seed >= 0 seeds MXNet's and NumPy's generators before nets are built (fillers)."""
        if self.param.random_seed >= 0:
            import mxnet as mx
            mx.random.seed(int(self.param.random_seed))
            np.random.seed(int(self.param.random_seed) % (1 << 32))

    def close(self):
        """Stop the nets' data readers (CaffeDataIter worker threads)."""
        for net in [self.net] + self.test_nets:
            if hasattr(net, "close"):
                net.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---------------------------------------------------------------- optimizer and its state
    def _make_optimizer(self, begin_iter, current_step):
        import mxnet as mx

        self.optimizer = self._optimizers.create_from_solver_param(
            self.param, rescale_grad=float(self.net.rescale_grad), begin_num_update=begin_iter,
            current_step=current_step)
        self.optimizer.keep_updates = bool(self.param.snapshot_diff)
        n = len(self.net.learnable_names)
        self.optimizer.set_lr_mult({i: float(self.net.lr_mults[i]) for i in range(n)})
        self.optimizer.set_wd_mult({i: float(self.net.decay_mults[i]) for i in range(n)})
        self.updater = mx.optimizer.get_updater(self.optimizer)
        for i, w in enumerate(self.net.param_arrays):  # Caffe's PreSolve: zero histories
            self.updater.states[i] = self.optimizer.create_state(i, w)
            self.updater.states_synced[i] = True

    @property
    def current_step(self):
        return self.optimizer.lr_scheduler.current_step

    def learning_rate(self):
        """The rate of the next update (Caffe's GetLearningRate at ``iter``), without side effects."""
        from .lr_policy import learning_rate
        return learning_rate(self.param, self.iter, self.current_step)[0]

    def history_arrays(self):
        """Caffe's history blobs (NumPy float32) in ``.solverstate`` order."""
        states = [self.optimizer.caffe_history(self.updater.states[i])
                  for i in range(len(self.net.learnable_names))]
        states = [s if len(s) == 2 else s[0] for s in states]
        blobs = history_from_states(states, self.param.type)
        return [b.asnumpy().astype(np.float32) for b in blobs]

    # ---------------------------------------------------------------- logging
    def _notify(self, event, record):
        for observer in self.observers:
            observer(event, record)

    def _emit(self, site, text):
        logger.info(text)
        if self.log_stream is not None:
            self.log_stream.write(caffe_log.glog_prefix(site) + text + "\n")
            self.log_stream.flush()

    # ---------------------------------------------------------------- the loop
    def step(self, iters):
        """Caffe's Step(iters): ``iters`` updates with testing, display and snapshots as configured."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self.smoothed.reset(start_iter)
        timer = time.perf_counter()
        iterations_last = self.iter
        while self.iter < stop_iter:
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self.requested_action == STOP:
                    break
            display_now = p.display > 0 and self.iter % p.display == 0
            loss, outputs, grads = self._forward_backward_accumulated()
            smoothed = self.smoothed.update(loss, self.iter)
            if display_now:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iterations_last) / (lapse if lapse else 1.0)
                self._emit("display", caffe_log.display_line(self.iter, per_s, round(lapse, 3), p.display,
                                                             smoothed))
                weights = getattr(self.net, "output_loss_weights", {})
                for line in caffe_log.output_lines("Train", outputs, weights):
                    self._emit("train_output", line)
                timer = time.perf_counter()
                iterations_last = self.iter
            rate = self._apply_update(grads, display_now)
            self.history.append({"iter": self.iter - 1, "loss": loss, "smoothed_loss": smoothed,
                                 "lr": rate, "outputs": {n: np.array(v) for n, v in outputs}})
            self._notify("iteration", self.history[-1])
            if (p.snapshot and self.iter % p.snapshot == 0) or self.requested_action == SNAPSHOT:
                if self.requested_action == SNAPSHOT:
                    self.requested_action = None
                self.snapshot()
            if self.requested_action == STOP:
                break

    def _forward_backward_accumulated(self):
        """iter_size passes; Caffe sums the diffs and averages the loss (float)."""
        k = self.param.iter_size
        total = np.float32(0)
        grads = None
        for _ in range(k):
            loss, outputs = self.net.forward_backward()
            total = np.float32(total + np.float32(loss))
            if k == 1:
                grads = list(self.net.grad_arrays)
            elif grads is None:
                grads = [g.copy() for g in self.net.grad_arrays]
            else:
                for acc, g in zip(grads, self.net.grad_arrays):
                    acc += g
        return float(np.float32(total / np.float32(k))), outputs, grads

    def _apply_update(self, grads, display_now):
        """ApplyUpdate: rate (and its log lines), clip, normalise, regularise, update; ``iter += 1``."""
        rate = self.optimizer.lr_scheduler.rate_at_iter(self.iter)
        for message in self.optimizer.lr_scheduler.policy.messages:
            self._emit("multistep", message)
        self.optimizer.lr_scheduler.policy.messages.clear()
        if display_now:
            self._emit("lr", caffe_log.lr_line(self.iter, rate))
        n = len(self.net.learnable_names)
        self.updater(list(range(n)), list(grads), list(self.net.param_arrays))
        if hasattr(self.net, "after_update"):  # nets whose master weights are not these NDArrays
            self.net.after_update()
        if self.optimizer.last_clip is not None:
            norm, scale = self.optimizer.last_clip
            self._emit("clipping", caffe_log.clipping_line(norm, self.param.clip_gradients, scale))
        self.iter += 1
        if self.optimizer.num_update != self.iter:
            raise RuntimeError(f"internal: optimizer at update {self.optimizer.num_update}, solver at "
                               f"iteration {self.iter}")
        return rate

    def solve(self, resume_file=None):
        """Caffe's Solve: optional restore, Step(max_iter - iter), final snapshot, display and test."""
        p = self.param
        self._emit("solving", caffe_log.solving_line(getattr(self.net, "name", "net")))
        self._emit("policy", caffe_log.policy_line(p.lr_policy))
        if resume_file:
            self._emit("restoring", caffe_log.restoring_line(resume_file))
            self.restore(resume_file)
        with self._signal_actions(self.sigint_effect, self.sighup_effect):
            self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_action == STOP:
            self._emit("stopped", caffe_log.OPTIMIZATION_STOPPED)
            return
        if p.display and self.iter % p.display == 0:
            loss, _ = self.net.forward()
            smoothed = self.smoothed.update(loss, self.iter)
            self._emit("final_loss", caffe_log.final_loss_line(self.iter, smoothed))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self._emit("done", caffe_log.OPTIMIZATION_DONE)

    # ---------------------------------------------------------------- testing
    def test_all(self):
        for k in range(len(self.test_nets)):
            self.test(k)
            if self.requested_action == STOP:
                return

    def test(self, k=0):
        """Caffe's Test(k): plain means of each output element over ``test_iter[k]`` batches."""
        net = self.test_nets[k]
        self._emit("testing", caffe_log.testing_line(self.iter, k))
        if hasattr(net, "share_weights_from"):
            net.share_weights_from(self.net)
        scores, names, loss_sum = None, None, np.float32(0)
        n = self.param.test_iter[k]
        for _ in range(n):
            if self.requested_action == SNAPSHOT:
                self.requested_action = None
                self.snapshot()
            if self.requested_action == STOP:
                self._emit("testing", "Test interrupted.")
                return None
            loss, outputs = net.forward()
            if self.param.test_compute_loss:
                loss_sum = np.float32(loss_sum + np.float32(loss))
            flat = [(name, np.asarray(v, dtype=np.float32).reshape(-1)) for name, v in outputs]
            if scores is None:
                names = [(name, len(v)) for name, v in flat]
                scores = [v.copy() for _, v in flat]
            else:
                for acc, (_, v) in zip(scores, flat):
                    acc += v
        if self.param.test_compute_loss:
            self._emit("test_loss", caffe_log.test_loss_line(loss_sum / np.float32(max(n, 1))))
        means = [(name, s / np.float32(max(n, 1))) for (name, _), s in zip(names or [], scores or [])]
        for line in caffe_log.output_lines("Test", means, getattr(net, "output_loss_weights", {})):
            self._emit("test_output", line)
        result = {"iter": self.iter, "net": k, "outputs": {name: m for name, m in means}}
        self.test_history.append(result)
        self._notify("test", result)
        return result

    # ---------------------------------------------------------------- snapshots
    def _check_snapshot_prefix(self):
        p = self.param
        if not p.snapshot:
            return
        if not p.snapshot_prefix:
            raise SpecError("snapshot_prefix: snapshot > 0 needs a snapshot_prefix -- add "
                            "`snapshot_prefix: \"dir/name\"` to the solver")
        probe = f"{p.snapshot_prefix}_iter_{os.getpid()}.tempfile"
        try:
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError:
            raise SpecError(f"Cannot write to snapshot prefix '{p.snapshot_prefix}'.  Make sure that "
                            f"the directory exists and is writable.") from None

    def snapshot(self):
        """Write ``<prefix>_iter_<iter>.caffemodel`` then ``.solverstate`` (or their .h5 forms)."""
        p = self.param
        if not p.snapshot_prefix:
            raise SpecError("snapshot_prefix: not set -- add `snapshot_prefix: \"dir/name\"` to the solver")
        hdf5 = p.snapshot_format == HDF5
        model_file, state_file = snapshot_filenames(p.snapshot_prefix, self.iter, p.snapshot_format)
        self._emit("snapshot_hdf5" if hdf5 else "snapshot_binary",
                   caffe_log.snapshot_model_line(model_file, hdf5))
        if p.snapshot_diff:  # the diffs after ApplyUpdate: each parameter's last update
            updates = self.optimizer.last_updates
            self.net.save(model_file, diffs=[updates[i].asnumpy() if i in updates else None
                                             for i in range(len(self.net.learnable_names))])
        else:
            self.net.save(model_file)
        self._emit("state_hdf5" if hdf5 else "state_binary", caffe_log.snapshot_state_line(state_file, hdf5))
        write_solver_state(state_file, SolverStateData(iter=self.iter, learned_net=model_file,
                                                       history=self.history_arrays(),
                                                       current_step=self.current_step),
                           snapshot_format=p.snapshot_format)
        self._notify("snapshot", {"iter": self.iter, "caffemodel": model_file, "solverstate": state_file})
        return model_file, state_file

    def restore(self, state_file):
        """Caffe's Restore: iter, the learned net's weights, current_step and the history blobs."""
        import mxnet as mx

        state = read_solver_state(state_file)
        n = len(self.net.learnable_names)
        states = states_from_history(state.history, self.param.type, n)
        if state.learned_net:
            learned = state.learned_net
            if not os.path.isfile(learned):
                raise SpecError(f"{state_file}: learned_net '{learned}' not found -- Caffe stores it as "
                                f"written at snapshot time (relative to that working directory)")
            self.net.copy_from(learned)
        self._make_optimizer(begin_iter=state.iter, current_step=state.current_step)
        for i, w in enumerate(self.net.param_arrays):
            blocks = states[i] if isinstance(states[i], tuple) else (states[i],)
            for b in blocks:
                if tuple(b.shape) != tuple(w.shape):
                    raise SpecError(f"{state_file}: history blob of shape {tuple(b.shape)} for parameter "
                                    f"'{self.net.learnable_names[i]}' of shape {tuple(w.shape)}")
            self.updater.states[i] = self.optimizer.state_from_caffe_history(blocks, w)
        self.iter = state.iter
        logger.info("SGDSolver: restoring history")

    # ---------------------------------------------------------------- signals
    def request(self, action):
        """Ask the loop to ``"snapshot"`` or ``"stop"`` at the next check (Caffe's SolverAction)."""
        if action not in (STOP, SNAPSHOT, NONE, None):
            raise ValueError(f"action must be 'stop', 'snapshot' or 'none', got {action!r}")
        self.requested_action = None if action in (NONE, None) else action

    def _signal_actions(self, sigint_effect=STOP, sighup_effect=SNAPSHOT):
        return _SignalActions(self, sigint_effect, sighup_effect)


class _SignalActions:
    """SIGINT -> stop (snapshot first, in Solve), SIGHUP -> snapshot, as ``caffe train``; main thread only."""

    def __init__(self, solver, sigint_effect, sighup_effect):
        self.solver = solver
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig, effect in self.effects.items():
            self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        self.solver.request(self.effects.get(signum, NONE))

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
