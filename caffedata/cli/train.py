"""``caffedata train --solver S [--weights W[,W2] | --snapshot S.solverstate]``: ``caffe train`` on MXNet.

Caffe's log lines go to stderr (glog format, readable by Caffe's ``parse_log.py``);
a progress bar is added only when stderr is a terminal; ``--log-json FILE``
writes one JSON object per line for machines.  Beside every Caffe snapshot
(``PREFIX_iter_N.caffemodel`` + ``.solverstate``) goes an MXNet checkpoint of the
train net: ``PREFIX_iter_N-symbol.json`` and ``PREFIX_iter_N-0000.params``
(``mx.model.load_checkpoint("PREFIX_iter_N", 0)``).
"""
import json
import math
import sys

import numpy as np

from . import runtime


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train or finetune a model from a Caffe solver.prototxt (caffe train)",
        description=("Run Caffe's solver (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam; every lr policy) "
                     "on MXNet, printing caffe train's log lines on stderr. Snapshots are Caffe's "
                     ".caffemodel/.solverstate plus an MXNet checkpoint (PREFIX_iter_N-symbol.json, "
                     "PREFIX_iter_N-0000.params). SIGINT snapshots and stops, SIGHUP snapshots."),
        epilog="example: caffedata train --solver lenet_solver.prototxt --log-json train.jsonl")
    p.add_argument("--solver", required=True, metavar="SOLVER.prototxt", help="the solver definition")
    p.add_argument("--weights", default=None, metavar="W[,W2]",
                   help="comma-separated .caffemodel files to finetune from (replaces the solver's weights)")
    p.add_argument("--snapshot", default=None, metavar="S.solverstate",
                   help="resume training from this solver state (not with --weights)")
    p.add_argument("--log-json", default=None, metavar="FILE",
                   help="write one JSON object per line: iterations (iter, loss, smoothed_loss, lr, outputs), "
                        "tests (iter, test_net, test_outputs) and snapshots")
    p.add_argument("--sigint-effect", choices=("stop", "snapshot", "none"), default="stop",
                   help="on SIGINT (default stop: snapshot, then stop, as caffe)")
    p.add_argument("--sighup-effect", choices=("stop", "snapshot", "none"), default="snapshot",
                   help="on SIGHUP (default snapshot, as caffe)")
    p.add_argument("--native", action="store_true",
                   help="run the layers MXNet computes identically as native MXNet operators (faster; "
                        "caffedata.Net(native=True)); default: every layer as Caffe's own code")
    runtime.add_state_flags(p)
    runtime.add_thread_flag(p)
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args):
    from . import CommandError

    weights = [w.strip() for w in (args.weights or "").split(",") if w.strip()]
    if weights and args.snapshot:
        raise CommandError("Give a snapshot to resume training or weights to finetune but not both.", 2)
    runtime.require_files(("--solver", args.solver), ("--snapshot", args.snapshot),
                          *(("--weights", w) for w in weights))
    from ..solver.params import load_solver_param

    load_solver_param(args.solver)  # a broken solver file: one error line, before any log line
    threads = runtime.configure_threads(args.threads)  # before anything imports mxnet
    stream = _LogStream(sys.stderr)
    runtime.say(stream, 0, threads, source="caffedata")
    json_log = _JsonLog(args.log_json) if args.log_json else None
    progress = _Progress(stream) if _is_terminal(sys.stderr) else None

    def attach(solver):
        solver.observers.append(lambda event, record: _write_checkpoint(event, record, solver, stream))
        if json_log is not None:
            solver.observers.append(json_log)
        if progress is not None:
            progress.max_iter = solver.param.max_iter
            solver.observers.append(progress)

    from ..solver.commands import train

    try:
        train(args.solver, weights=",".join(weights) or None, snapshot=args.snapshot,
              stages=runtime.stages_from(args.stage), level=args.level, sigint_effect=args.sigint_effect,
              sighup_effect=args.sighup_effect, log_stream=stream, on_solver=attach, native=args.native)
    finally:
        if progress is not None:
            progress.close()
        if json_log is not None:
            json_log.close()
    return 0


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _write_checkpoint(event, record, solver, stream):
    """After each Caffe snapshot: the train net as an MXNet checkpoint with the same weights."""
    if event != "snapshot":
        return
    import mxnet as mx

    net = getattr(solver.net, "caffe_net", None) or getattr(solver.net, "net", None)  # the caffedata.Net
    if net is None:
        return
    model = record["caffemodel"]
    base = model[:-len(".caffemodel.h5")] if model.endswith(".caffemodel.h5") else model[:-len(".caffemodel")]
    mx.model.save_checkpoint(base, 0, net.symbol, net.arg_params, net.aux_params)
    record["mxnet_symbol"], record["mxnet_params"] = f"{base}-symbol.json", f"{base}-0000.params"
    runtime.say(stream, 0, f"Snapshotting MXNet checkpoint to {base}-symbol.json, {base}-0000.params",
                source="caffedata")


class _LogStream:
    """stderr, or tqdm.write while a progress bar is on screen (so lines do not tear the bar)."""

    def __init__(self, stream):
        self.stream = stream
        self.bar = None

    def write(self, text):
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(text.rstrip("\n"), file=self.stream)
        else:
            self.stream.write(text)

    def flush(self):
        self.stream.flush()


class _Progress:
    """A tqdm bar over the iterations, created at the first one (after any --snapshot restore)."""

    def __init__(self, stream):
        self.stream = stream
        self.max_iter = 0
        self.bar = None

    def __call__(self, event, record):
        if event != "iteration":
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.max_iter, initial=record["iter"], file=self.stream.stream, unit="iter",
                            dynamic_ncols=True, leave=False)
            self.stream.bar = self.bar
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.stream.bar = None


def _plain(value):
    """An output as JSON: one number for a one-element blob, else a flat list; NaN/inf as null."""
    flat = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
    flat = [v if math.isfinite(v) else None for v in flat]
    return flat[0] if len(flat) == 1 else flat


class _JsonLog:
    """``--log-json``: one object per line, flushed at once (a killed run leaves whole lines)."""

    def __init__(self, path):
        from . import CommandError

        try:
            self.file = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"--log-json {path}: {exc.strerror}") from None

    def __call__(self, event, record):
        if event == "iteration":
            obj = {"event": "iteration", "iter": record["iter"], "loss": _plain(record["loss"]),
                   "smoothed_loss": _plain(record["smoothed_loss"]), "lr": _plain(record["lr"]),
                   "outputs": {name: _plain(v) for name, v in record["outputs"].items()}}
        elif event == "test":
            obj = {"event": "test", "iter": record["iter"], "test_net": record["net"],
                   "test_outputs": {name: _plain(v) for name, v in record["outputs"].items()}}
        else:
            obj = {"event": event, **record}
        self.file.write(json.dumps(obj) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()
