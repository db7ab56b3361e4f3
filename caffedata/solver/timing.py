"""``caffe time`` (tools/caffe.cpp, reference section 6.3) on MXNet: per-layer forward/backward times.

How the times are measured (honestly, and what a Caffe user can redo with MXNet's
own profiler): the net's MXNet symbol is bound once, as training runs it, and
MXNet's profiler records every operator it executes.  MXNet 1.9.1 names profiler
events by operator *type* only (``_caffedata_op``, ``Convolution``...), and its
aggregate table sums them by type, so the events are attributed to nodes by
position: under ``MXNET_ENGINE_TYPE=NaiveEngine`` with operator bulking off
(``MXNET_EXEC_BULK_EXEC_TRAIN/INFERENCE=0``) the executor runs its nodes one at a
time in the order ``Executor.debug_str()`` lists them, so the k-th event is the
k-th node; the type of every event is checked against its node.  A node belongs
to the Caffe layer whose name it carries (``conv1``, ``conv1_phase``,
``conv1_backward``...).  Data layers are timed around reading their next batch
(Caffe's Data layer forward copies a prefetched batch too); Input layers do no work.

The engine must be chosen before mxnet is imported: ``caffedata time`` does it.
"""
import collections
import json
import os
import re
import tempfile
import time

import numpy as np

from ..errors import SpecError
from . import log as caffe_log

ENGINE_VARIABLES = {"MXNET_ENGINE_TYPE": "NaiveEngine", "MXNET_EXEC_BULK_EXEC_TRAIN": "0",
                    "MXNET_EXEC_BULK_EXEC_INFERENCE": "0"}
_NODE = re.compile(r"^Op:(?P<type>[^,]+), Name=(?P<name>.*)$", re.M)


def prepare_environment(environ=None):
    """Set the engine variables :func:`time_net` needs; call before mxnet is imported."""
    environ = os.environ if environ is None else environ
    environ.update(ENGINE_VARIABLES)


def layer_of(node_name, layer_names):
    """The Caffe layer an executor node belongs to: exact name, else the longest ``<layer>_`` prefix."""
    name = node_name[:-len("_backward")] if node_name.endswith("_backward") else node_name
    if name in layer_names:
        return name
    best = None
    for layer in layer_names:
        if name.startswith(layer + "_") and (best is None or len(layer) > len(best)):
            best = layer
    return best


def _emit(stream, line, text):
    if stream is not None:
        stream.write(caffe_log.glog_prefix(("caffe.cpp", line)) + text + "\n")
        stream.flush()


def _operator_spans(trace_file):
    """[(operator type, microseconds)] of the profiler trace, in execution order."""
    with open(trace_file) as f:
        events = [e for e in json.load(f).get("traceEvents", []) if e.get("cat") == "operator"]
    events.sort(key=lambda e: e["ts"])
    spans, open_spans = [], collections.defaultdict(list)
    for e in events:
        key = (e.get("tid"), e["name"])
        if e["ph"] == "B":
            open_spans[key].append(len(spans))
            spans.append([e["name"], e["ts"], None])
        elif e["ph"] == "E" and open_spans[key]:
            span = spans[open_spans[key].pop()]
            span[2] = e["ts"] - span[1]
        elif e["ph"] == "X":
            spans.append([e["name"], e["ts"], e.get("dur", 0)])
    return [(name, float(dur or 0)) for name, _, dur in spans]


def time_net(model, iterations=50, phase="TRAIN", stages=(), level=0, log_stream=None):
    """Run ``caffe time``; returns ``{"layers": [(name, forward_ms, backward_ms)], "forward_ms",
    "backward_ms", "forward_backward_ms", "total_ms", "initial_loss"}`` (averages per iteration,
    except ``total_ms``) and logs caffe's lines to ``log_stream``."""
    import mxnet as mx

    from ..net.net import Net

    if int(iterations) < 1:
        raise SpecError(f"iterations: must be >= 1, got {iterations}")
    wrong = {k: os.environ.get(k) for k, v in ENGINE_VARIABLES.items() if os.environ.get(k) != v}
    if wrong:
        raise SpecError(f"time_net needs {ENGINE_VARIABLES} in the environment before mxnet is imported "
                        f"(got {wrong}); the `caffedata time` command sets them")
    n = int(iterations)
    net = Net(model, phase=phase, stages=tuple(stages), level=level)
    layer_names = net.layer_names
    shapes = collections.OrderedDict((name, tuple(net.blobs[name])) for name in net.inputs)
    data_iters = net.data_iters()  # {} for a net fed by Input layers (their blobs stay 0, as Caffe's)
    try:
        weights = _head_loss_weights(net, len(net.symbol.list_outputs()))
        # MXNet cannot skip the backward of a layer that feeds no loss (Caffe's need_backward does,
        # e.g. Accuracy, which has none): bind the loss heads only; such layers are then not run.
        losses = [i for i, w in enumerate(weights) if w]
        sym = mx.sym.Group([net.symbol[i] for i in losses]) if losses else net.symbol
        weights = [weights[i] for i in losses] if losses else [0.0] * len(weights)
        backward = bool(losses)
        inputs = [name for name in shapes if name in sym.list_arguments()]
        grad_req = {a: ("null" if a in shapes or not backward else "write") for a in sym.list_arguments()}
        exe = sym.simple_bind(mx.cpu(), grad_req=grad_req, **{k: shapes[k] for k in inputs})
        for params, arrays in ((net.arg_params, exe.arg_dict), (net.aux_params, exe.aux_dict)):
            for k, v in params.items():
                if k in arrays:
                    arrays[k][:] = v
        head_grads = [mx.nd.zeros(o.shape, dtype=o.dtype) for o in exe.outputs]  # CaffeLoss ignores its own
        is_train = net.phase == "TRAIN"
        data_time = collections.Counter()

        def load():
            for layer, it in data_iters.items():
                start = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:  # Caffe's data layers wrap around
                    it.reset()
                    batch = next(it)
                descs = list(it.provide_data) + list(it.provide_label or [])
                for desc, arr in zip(descs, list(batch.data) + list(batch.label or [])):
                    if desc.name in exe.arg_dict:
                        exe.arg_dict[desc.name][:] = arr
                mx.nd.waitall()
                data_time[layer] += (time.perf_counter() - start) * 1e6

        _emit(log_stream, 352, "Performing Forward")
        load()
        exe.forward(is_train=is_train)
        loss = np.float32(0)
        for w, out in zip(weights, exe.outputs):
            if w:
                loss = np.float32(loss + np.float32(w) * np.float32(out.asnumpy().sum()))
        _emit(log_stream, 356, f"Initial loss: {caffe_log.fmt(loss)}")
        _emit(log_stream, 357, "Performing Backward")
        if backward:
            exe.backward(head_grads)
        mx.nd.waitall()
        nodes = [(m.group("type"), m.group("name")) for m in _NODE.finditer(exe.debug_str())]
        data_time.clear()

        fd, trace = tempfile.mkstemp(prefix="caffedata-time-", suffix=".json")
        os.close(fd)
        try:
            mx.profiler.set_config(profile_symbolic=True, profile_imperative=False, profile_memory=False,
                                   profile_api=False, aggregate_stats=True, filename=trace)
            _emit(log_stream, 365, "*** Benchmark begins ***")
            _emit(log_stream, 366, f"Testing for {n} iterations.")
            forward_us = backward_us = 0.0
            total_start = time.perf_counter()
            mx.profiler.set_state("run")
            for j in range(n):
                iter_start = time.perf_counter()
                mx.profiler.pause()
                load()
                mx.profiler.resume()
                exe.forward(is_train=is_train)
                mx.nd.waitall()
                backward_start = time.perf_counter()
                forward_us += (backward_start - iter_start) * 1e6
                if backward:
                    exe.backward(head_grads)
                mx.nd.waitall()
                end = time.perf_counter()
                backward_us += (end - backward_start) * 1e6
                _emit(log_stream, 396, f"Iteration: {j + 1} forward-backward time: "
                                       f"{caffe_log.fmt((end - iter_start) * 1e3)} ms.")
            mx.profiler.set_state("stop")
            total_ms = (time.perf_counter() - total_start) * 1e3
            mx.profiler.dump(finished=True)
            spans = _operator_spans(trace)
        finally:
            os.unlink(trace)
    finally:
        for it in data_iters.values():
            if hasattr(it, "close"):
                it.close()
    per_layer = _attribute(spans, nodes, n, layer_names)
    run = {layer_of(name, layer_names) for _, name in nodes} | set(data_iters)
    input_layers = {name for name, kind in zip(net.layer_names, net.layer_types) if kind == "Input"}  # no work
    idle = [name for name in layer_names if name not in run and name not in input_layers]
    if not backward:
        _emit(log_stream, 398, "The net has no loss: backward is not run")
    if idle:
        _emit(log_stream, 398, f"Not run (no operator; MXNet runs only what feeds a loss): {', '.join(idle)}")
    for layer, us in data_time.items():
        per_layer[layer][0] += us
    _emit(log_stream, 399, "Average time per layer: ")
    rows = []
    for layer in layer_names + [k for k in per_layer if k not in layer_names]:
        f_ms, b_ms = (per_layer[layer][0] / 1000 / n, per_layer[layer][1] / 1000 / n)
        rows.append((layer, f_ms, b_ms))
        _emit(log_stream, 403, f"{layer:>10}\tforward: {caffe_log.fmt(f_ms)} ms.")
        _emit(log_stream, 406, f"{layer:>10}\tbackward: {caffe_log.fmt(b_ms)} ms.")
    result = {"layers": rows, "forward_ms": forward_us / 1000 / n, "backward_ms": backward_us / 1000 / n,
              "forward_backward_ms": total_ms / n, "total_ms": total_ms, "initial_loss": float(loss)}
    _emit(log_stream, 410, f"Average Forward pass: {caffe_log.fmt(result['forward_ms'])} ms.")
    _emit(log_stream, 412, f"Average Backward pass: {caffe_log.fmt(result['backward_ms'])} ms.")
    _emit(log_stream, 414, f"Average Forward-Backward: {caffe_log.fmt(result['forward_backward_ms'])} ms.")
    _emit(log_stream, 416, f"Total Time: {caffe_log.fmt(total_ms)} ms.")
    _emit(log_stream, 417, "*** Benchmark ends ***")
    return result


def _head_loss_weights(net, num_heads):
    """Loss weight of each symbol head: the net's outputs, then its anonymous loss tops (as Net exports)."""
    weights = [w for _, w in net.symbol_outputs]
    return (weights + [0.0] * num_heads)[:num_heads]


def _attribute(spans, nodes, iterations, layer_names):
    """{layer or node name: [forward us, backward us]} from the spans of ``iterations`` passes over ``nodes``."""
    expected = len(nodes) * iterations
    if len(spans) != expected or any(spans[i][0] != nodes[i % len(nodes)][0] for i in range(len(spans))):
        got = [name for name, _ in spans[:len(nodes)]]
        raise SpecError(f"MXNet's profiler recorded {len(spans)} operators, expected {expected} "
                        f"({iterations} x {len(nodes)} nodes in the executor's order); first ones: {got[:8]} -- "
                        f"run with MXNET_ENGINE_TYPE=NaiveEngine and operator bulking off "
                        f"(the `caffedata time` command sets them)")
    per_layer = collections.OrderedDict((name, [0.0, 0.0]) for name in layer_names)
    for i, (op_type, us) in enumerate(spans):
        node_type, node_name = nodes[i % len(nodes)]
        owner = layer_of(node_name, layer_names) or node_name
        per_layer.setdefault(owner, [0.0, 0.0])[1 if node_type.startswith("_backward") else 0] += us
    return per_layer
