"""The Solver's net interface over ``caffedata.net.net.Net`` (pycaffe-style, NumPy master weights).

``Net.params`` (layer -> float32 blobs) are the weights Caffe's solver updates:
before each update they are copied into NDArrays, the ``caffe_*`` optimizer
updates those, and :meth:`CaffeNetAdapter.after_update` writes them back (blobs
with ``lr_mult 0``, e.g. BatchNorm's statistics, come back unchanged, as in
Caffe where their update is 0).  ``Net.backward`` gives Caffe's own gradient
scale, so ``rescale_grad`` is 1.

Batches: a net with ``Data`` layers reads them through ``net.data_iters()``;
otherwise pass ``batches``, an iterable (re-iterated at its end, as Caffe's
data layers wrap around) or a zero-argument callable returning
``{input name: array}``.
"""
import os

import numpy as np

from ..errors import SpecError
from .state import diffs_by_layer


def _param_specs(net_param, layer_name):
    for layer in net_param.layer:
        if layer.name == layer_name:
            return list(layer.param)
    return []


class CaffeNetAdapter:
    def __init__(self, net, batches=None, name=None):
        self.net = net
        self.name = name or net.name or "net"
        self._batches = batches
        self._iter = None
        self._data_iters = None
        if batches is None:
            iters = net.data_iters() if net.data_layers else {}
            if not iters and net.inputs:
                raise SpecError(f"net '{self.name}' has inputs {net.inputs} but no Data layer -- pass "
                                f"batches= (an iterable or callable giving {{input name: array}})")
            self._data_iters = iters
        self.learnable_names, self.lr_mults, self.decay_mults, self._blobs = [], [], [], []
        owners = {}
        net_param = net.net_param
        for layer, blobs in net.params.items():
            specs = _param_specs(net_param, layer)
            for j, blob in enumerate(blobs):
                spec = specs[j] if j < len(specs) else None
                shared = spec.name if spec is not None and spec.name else None
                if shared and shared in owners:  # Caffe: only the owner is a learnable param
                    continue
                if shared:
                    owners[shared] = (layer, j)
                self.learnable_names.append(f"{layer}[{j}]")
                self.lr_mults.append(spec.lr_mult if spec is not None and spec.HasField("lr_mult") else 1.0)
                self.decay_mults.append(spec.decay_mult if spec is not None and spec.HasField("decay_mult")
                                        else 1.0)
                self._blobs.append((layer, j))
        self.rescale_grad = 1.0
        weights = net.blob_loss_weights
        self.output_loss_weights = {o: float(weights.get(o, 0.0)) for o in net.outputs}
        self._nd = None
        self._grads = None

    # ---------------------------------------------------------------- weights as NDArrays
    @property
    def param_arrays(self):
        import mxnet as mx

        params = self.net.params
        self._nd = [mx.nd.array(params[layer][j], dtype=np.float32) for layer, j in self._blobs]
        return self._nd

    @property
    def grad_arrays(self):
        return self._grads

    def after_update(self):
        params = self.net.params
        for (layer, j), arr in zip(self._blobs, self._nd):
            params[layer][j][...] = arr.asnumpy()

    # ---------------------------------------------------------------- passes
    def _next_inputs(self):
        if self._data_iters is not None:
            inputs = {}
            for it in self._data_iters.values():
                try:
                    batch = next(it)
                except StopIteration:
                    it.reset()
                    batch = next(it)
                descs = list(it.provide_data) + list(it.provide_label or [])
                for desc, arr in zip(descs, list(batch.data) + list(batch.label or [])):
                    inputs[desc.name] = arr.asnumpy()
            return inputs
        if callable(self._batches):
            return self._batches()
        if self._iter is None:
            self._iter = iter(self._batches)
        try:
            return next(self._iter)
        except StopIteration:
            self._iter = iter(self._batches)
            return next(self._iter)

    def _result(self, outputs):
        """(Caffe's total loss: every loss top, anonymous ones included, x its weight; the outputs)."""
        return self.net.loss, [(n, np.array(v)) for n, v in outputs.items()]

    def forward_backward(self, batch=None):
        import mxnet as mx

        inputs = batch if batch is not None else self._next_inputs()
        self.net.clear_param_diffs()
        outputs = self.net.forward(**inputs) if inputs else self.net.forward()
        self.net.backward()
        diffs = self.net.param_diffs
        self._grads = [mx.nd.array(diffs[layer][j], dtype=np.float32) for layer, j in self._blobs]
        return self._result(outputs)

    def forward(self, batch=None):
        inputs = batch if batch is not None else self._next_inputs()
        outputs = self.net.forward(**inputs) if inputs else self.net.forward()
        return self._result(outputs)

    def share_weights_from(self, other):
        """Caffe's ShareTrainedLayersWith: same-named layers take the train net's blobs."""
        source = other.net.params
        for layer, blobs in self.net.params.items():
            if layer in source:
                for mine, theirs in zip(blobs, source[layer]):
                    if mine.shape == theirs.shape:
                        mine[...] = theirs

    def close(self):
        for it in (self._data_iters or {}).values():
            if hasattr(it, "close"):
                it.close()

    # ---------------------------------------------------------------- files
    def save(self, path, diffs=None):
        """``.caffemodel`` (Net::ToProto) or, for a ``.h5`` name, Net::ToHDF5's layout.

        ``diffs``: one array (or None) per learnable parameter, written as the blobs' diffs.
        """
        by_layer = None if diffs is None else diffs_by_layer(self.net.params, zip(self._blobs, diffs))
        if str(path).endswith(".h5"):
            self.net.save_hdf5(path, diffs=by_layer)
        else:
            self.net.save(path, diffs=by_layer)
        return path

    def copy_from(self, path):
        """Net::CopyTrainedLayersFrom (binary or HDF5, detected by content)."""
        if not os.path.isfile(path):
            raise SpecError(f"{path}: weights file not found")
        self.net.copy_from(path)


def _adapter(net, batches, fast):
    """The fast :class:`ModuleNet` for a net fed by exactly one Data layer, else the Net adapter."""
    data_tops = list(net.data_layers.values())
    can_be_fast = batches is None and len(data_tops) == 1 and set(data_tops[0]) == set(net.inputs)
    if fast is None:
        fast = can_be_fast
    if fast:
        if not can_be_fast:
            raise SpecError(f"net '{net.name}': the fast path needs exactly one Data layer "
                            f"feeding every input ({net.inputs}) -- use fast=False")
        from .module_net import ModuleNet
        return ModuleNet.from_net(net)
    return CaffeNetAdapter(net, batches)


def build_nets(param, batches=None, test_batches=None, stages=(), level=0, fast=None, native=False):
    """(train adapter, [test adapters]) from a SolverParameter's net fields (reference §5.2).

    Paths in ``net`` / ``train_net`` / ``test_net`` are used as written (relative
    to the working directory, as ``caffe train``).  ``test_batches``: one batch
    source per test net (None where the net has Data layers).  ``fast`` (default:
    where possible) runs a net with one Data layer as a bound MXNet executor
    (:meth:`ModuleNet.from_net`) instead of through ``Net.forward``/``backward``.
    ``native``: layers MXNet computes identically run as native operators.
    """
    from ..net.net import Net

    def state_of(state, default_stages=()):
        if state is None:
            return tuple(default_stages), level
        return tuple(default_stages) + tuple(state.stage), (state.level if state.HasField("level") else level)

    if param.HasField("train_net"):
        train_source = param.train_net
    elif param.HasField("train_net_param"):
        train_source = param.train_net_param
    elif param.HasField("net"):
        train_source = param.net
    elif param.HasField("net_param"):
        train_source = param.net_param
    else:
        raise SpecError("net: the solver names no train net -- set one of net, net_param, train_net, "
                        "train_net_param")
    train_source = _as_source(train_source)
    train_stages, train_level = state_of(param.train_state if param.HasField("train_state") else None, stages)
    train = _adapter(Net(train_source, phase="TRAIN", stages=train_stages, level=train_level, native=native),
                     batches, fast)
    sources = [_as_source(p) for p in param.test_net_param] + list(param.test_net)
    generic = param.net if param.HasField("net") else (param.net_param if param.HasField("net_param") else None)
    while generic is not None and len(sources) < len(param.test_iter):
        sources.append(_as_source(generic))
    tests = []
    test_batches = list(test_batches or [None] * len(sources))
    for k, source in enumerate(sources):
        state = param.test_state[k] if k < len(param.test_state) else None
        t_stages, t_level = state_of(state)
        tests.append(_adapter(Net(source, phase="TEST", stages=t_stages, level=t_level, native=native),
                              test_batches[k] if k < len(test_batches) else None, fast))
    for entry in getattr(param, "weights", []):
        for path in (p.strip() for p in entry.split(",") if p.strip()):
            for adapter in [train] + tests:
                adapter.copy_from(path)
    return train, tests


def _as_source(value):
    if isinstance(value, str):
        return value
    from google.protobuf import text_format
    return text_format.MessageToString(value)
