"""``caffedata.Net``: a Caffe net (prototxt + optional .caffemodel) run by MXNet, pycaffe's API.

    net = Net("deploy.prototxt", weights="model.caffemodel")      # phase TEST
    out = net.forward(data=images)                                # {"prob": ...}
    net.params["conv1"][0][...] = w                               # reaches the next forward
    net.save("copy.caffemodel")
    mx.model.save_checkpoint("model", 0, net.symbol, net.arg_params, net.aux_params)

Every layer runs as the project's ``CaffeOp`` (Caffe's own semantics); with
``native=True`` layers that MXNet computes identically run as native operators.
The Caffe blobs of ``net.params`` (NumPy, float32) are the master copy of the
weights: they are copied into the executor before every forward.
"""
import collections
import contextlib
import io
import logging
import os

import numpy as np

from .. import errors
from . import symbols

log = logging.getLogger("caffedata.net")

_PHASES = {"TRAIN": "TRAIN", "TEST": "TEST", 0: "TRAIN", 1: "TEST"}
# Layers whose Caffe blobs are MXNet arguments one to one (bind.arg_names): CaffeOp and Python layers.
_BLOB_ARGUMENT_KINDS = ("caffe", "python")


def _phase_name(phase):
    key = phase.upper() if isinstance(phase, str) else phase
    if hasattr(phase, "name") and not isinstance(phase, str):  # an enum such as caffedata.Phase
        key = phase.name.upper()
    if key not in _PHASES:
        raise errors.SpecError(f"phase must be 'TRAIN' or 'TEST' (or 0 / 1 as caffe.TRAIN / caffe.TEST), "
                               f"got {phase!r}")
    return _PHASES[key]


class Net:
    """A Caffe net built from a prototxt (text or path), optionally with a .caffemodel.

    Parameters
    ----------
    prototxt : str
        Net definition, V0/V1/V2 text or a path to it (legacy ``input:`` fields
        and V1 ``layers`` are upgraded as Caffe's ``upgrade_proto`` does).
    weights : str, optional
        A .caffemodel (V1 or V2); layers are matched by name with Caffe's
        shape checks, as ``Net::CopyTrainedLayersFrom``.  Without it the
        prototxt's fillers initialise the parameters (an omitted filler is 0).
    phase, stages, level : NetState used to filter the layers (include/exclude rules).
    native : bool
        Run layers as native MXNet operators where the result is the same.
    ctx : mx.Context (default ``mx.cpu()``).
    """

    def __init__(self, prototxt, weights=None, phase="TEST", stages=(), level=0, native=False, ctx=None):
        import mxnet as mx

        from .graph import build_graph
        from .netstate import filter_net
        from .upgrade import load_net_param

        if isinstance(weights, int) and not isinstance(weights, bool):  # pycaffe's Net(file, caffe.TEST)
            weights, phase = None, weights
        if weights is not None and not os.path.isfile(os.fspath(weights)):
            raise errors.DatabaseError(f"{weights}: no such weights file -- give the path of a .caffemodel "
                                       f"(or .caffemodel.h5)")
        self.phase = _phase_name(phase)
        if isinstance(stages, str):
            stages = (stages,)
        self.native = bool(native)
        self.ctx = ctx if ctx is not None else mx.cpu()
        self._net_param = filter_net(load_net_param(prototxt), phase=self.phase, stages=tuple(stages),
                                     level=int(level))
        self._graph = build_graph(self._net_param)
        self._data_layers = [n for n in self._graph.layers if n.type in symbols.DATA_LAYER_TYPES]
        self._input_layers = [n for n in self._graph.layers
                              if n.type == symbols.INPUT_LAYER_TYPE or n.type in symbols.DATA_LAYER_TYPES]
        self._inputs = [t for n in self._input_layers for t in n.tops]
        self._input_shapes = self._known_input_shapes()
        self._tensors, self._bindings, self._loss = symbols.build(
            self._graph, self.phase, heads="caffe", native=self.native, input_shapes=self._input_shapes)
        self._exec_ids = self._executor_outputs()
        self._exec_symbol = mx.sym.Group([self._tensors[i] for i in self._exec_ids])
        self._export = None  # (symbol, bindings) with CaffeLoss heads, built on demand
        self._params = None  # layer name -> [np.ndarray], Caffe's blobs
        self._diffs = None  # layer name -> [np.ndarray], accumulated parameter gradients
        self._nd = {}  # MXNet argument/aux name -> NDArray shared by every executor
        self._executors = collections.OrderedDict()
        self._last = None  # (executor, input arrays, Caffe's blob shapes) of the last whole forward
        self._last_inputs = None  # the input arrays of the last forward (reused by forward())
        self._weights = weights
        self.weight_notes = []  # what copying the .caffemodel skipped (Caffe's log lines)
        if all(t in self._input_shapes for t in self._inputs):
            self._materialize()

    # ------------------------------------------------------------------
    # Structure

    @property
    def inputs(self):
        """Names fed to ``forward``: Input-layer tops, then (train_val nets) data-layer tops."""
        return list(self._inputs)

    @property
    def outputs(self):
        """Output blob names in Caffe's order (byte-wise sorted, as Net::Init's std::set)."""
        return list(self._graph.outputs)

    @property
    def layer_names(self):
        return [n.name for n in self._graph.layers]

    @property
    def layer_types(self):
        """Each layer's type, in ``layer_names`` order (pycaffe: ``[l.type for l in net.layers]``)."""
        return [n.type for n in self._graph.layers]

    @property
    def name(self):
        """The prototxt's ``name`` ('' when it has none)."""
        return self._net_param.name

    @property
    def net_param(self):
        """The NetParameter this net was built from, after upgrades and NetState filtering (a copy)."""
        copy = type(self._net_param)()
        copy.CopyFrom(self._net_param)
        return copy

    @property
    def data_layers(self):
        """Data layer name -> its top names (Data, ImageData, HDF5Data, ...), in layer order."""
        return collections.OrderedDict((n.name, list(n.tops)) for n in self._data_layers)

    @property
    def symbol_outputs(self):
        """(name, loss weight) of each output of ``net.symbol``, in its order.

        ``net.outputs`` first, then the loss tops Caffe counts in the loss
        although another layer consumes them (named ``(automatic)k``).
        """
        heads, names = self._symbol_heads()
        return [(name, float(self._loss.get(tid, 0.0))) for name, tid in zip(names, heads)]

    @property
    def loss(self):
        """Caffe's total loss of the last forward (``Net::Forward``'s): every loss top times its weight.

        Anonymous loss tops (consumed by another layer) count too; float32
        arithmetic in Caffe's order.  ``None`` before the first forward.
        """
        if self._last is None:
            return None
        exe = self._last[0]
        total = np.float32(0)
        for tid, weight in self._loss.items():
            if weight and tid in self._exec_ids:
                value = exe.outputs[self._exec_ids.index(tid)].asnumpy()
                total = np.float32(total + np.float32(weight) * np.float32(np.sum(value)))
        return float(total)

    @property
    def blob_loss_weights(self):
        """Blob name -> loss weight of its last writer (0 if none), as pycaffe's."""
        out = collections.OrderedDict((name, 0.0) for name in self._graph.blob_names)
        for node in self._graph.layers:
            for tid in node.tops:
                name = tid.split("@")[0]
                if name in out:
                    out[name] = self._loss.get(tid, 0.0)
        return out

    @property
    def blobs(self):
        """Blob name -> shape (Caffe's shape rules) in Caffe's blob order, for the current input shapes."""
        self._require_shapes()
        shapes, _ = symbols.caffe_shapes(self._graph, self._bindings, self._tensors, self._input_shapes)
        return collections.OrderedDict((name, shapes.get(self._graph.blob_ids[name]))
                                       for name in self._graph.blob_names)

    @property
    def params(self):
        """Layer name -> list of its parameter blobs (float32 NumPy arrays, writable), layer order."""
        self._require_shapes()
        return self._params

    @property
    def param_diffs(self):
        """Layer name -> accumulated parameter gradients (Caffe: backward adds to them)."""
        self._require_shapes()
        return self._diffs

    def clear_param_diffs(self):
        for diffs in (self._diffs or {}).values():
            for d in diffs:
                d[...] = 0

    def reshape(self, **shapes):
        """Set input shapes (name -> shape), as pycaffe's blob.reshape + net.reshape()."""
        unknown = set(shapes) - set(self._inputs)
        if unknown:
            raise errors.SpecError(f"reshape: {sorted(unknown)} are not net inputs; inputs: {self._inputs}")
        self._input_shapes.update({k: tuple(int(d) for d in v) for k, v in shapes.items()})
        if all(t in self._input_shapes for t in self._inputs):
            self._materialize()

    # ------------------------------------------------------------------
    # Running

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """Run the net; return {name: array} for ``net.outputs`` then the blobs named in ``blobs``.

        ``inputs`` name every net input (or none: the previous inputs are reused).
        Their batch size may differ from the prototxt's (the net is reshaped).
        As pycaffe: with ``end`` (a layer name) the net runs up to that layer and
        returns its tops (then ``blobs``, as they are at that point: a blob a later
        layer rewrites in place holds the earlier value); ``start`` (a layer name)
        skips the layers before it, which is possible when nothing from them is
        needed (their tops would be inputs here).  Only a whole forward can be
        followed by ``backward``.
        """
        import mxnet as mx

        wanted = self._check_blob_names(blobs)
        if inputs:
            if set(inputs) != set(self._inputs):
                raise errors.SpecError(f"forward: input arguments {sorted(inputs)} do not match the net "
                                       f"inputs {self._inputs}; name every input")
            arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        elif self._last_inputs is not None:
            arrays = self._last_inputs
        else:
            self._require_shapes()
            arrays = {k: np.zeros(self._input_shapes[k], np.float32) for k in self._inputs}
        shapes = {k: a.shape for k, a in arrays.items()}
        if self._params is None:
            self._input_shapes.update(shapes)
            self._materialize()
        partial = None if start is None and end is None else self._partial_outputs(start, end, blobs or [])
        exe, caffe_shapes = self._executor(shapes, None if partial is None else tuple(partial.values()))
        self._input_shapes.update(shapes)  # only once the net accepted them
        self._last_inputs = arrays
        self._push_params()
        for k, a in arrays.items():
            if k in exe.arg_dict:
                exe.arg_dict[k][:] = a
        exe.forward(is_train=self.phase == "TRAIN")
        mx.nd.waitall()
        if self.phase == "TRAIN":
            self._pull_state()
        if partial is not None:
            self._last = None  # no backward after a partial forward
            return collections.OrderedDict(
                (name, self._value(exe, list(partial.values()), arrays, caffe_shapes, tid))
                for name, tid in partial.items())
        self._last = (exe, arrays, caffe_shapes)
        return collections.OrderedDict((name, self._blob_value(name)) for name in self.outputs + wanted)

    def forward_all(self, blobs=None, **inputs):
        """pycaffe's forward_all: ``forward`` over the inputs in chunks of the net's batch size.

        The batch size is the first input's current one (the prototxt's unless reshaped);
        the net is left at it.

        Returns {name: array} (outputs, then ``blobs``) over every item, in order.
        A blob with no item axis (a loss) gives one value per chunk, stacked.
        """
        if not inputs or set(inputs) != set(self._inputs):
            raise errors.SpecError(f"forward_all: name every net input {self._inputs}")
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        total = {len(a) for a in arrays.values()}
        if len(total) != 1:
            raise errors.SpecError(f"forward_all: the inputs hold different numbers of items "
                                   f"{ {k: len(a) for k, a in arrays.items()} }")
        total = total.pop()
        declared = self._input_shapes.get(self._inputs[0]) if self._inputs else None
        step = int(declared[0]) if declared else total
        chunks, sizes = [], []
        for i in range(0, total, max(step, 1)):
            chunk = {k: a[i:i + step] for k, a in arrays.items()}
            sizes.append(len(next(iter(chunk.values()))))
            chunks.append(self.forward(blobs=blobs, **chunk))
        if step and total and declared:
            self.reshape(**{k: (step,) + tuple(a.shape[1:]) for k, a in arrays.items()})

        def joined(name):
            parts = [c[name] for c in chunks]
            per_item = all(p.ndim and p.shape[0] == n for p, n in zip(parts, sizes))
            return np.concatenate(parts) if per_item else np.stack(parts)

        return collections.OrderedDict((name, joined(name)) for name in (chunks[0] if chunks else {}))

    def backward(self, diffs=None, **top_diffs):
        """Back-propagate; return {name: gradient} for ``net.inputs`` then the inputs named in ``diffs``.

        Without ``top_diffs`` the loss tops' gradients are their loss weights,
        as in Caffe; a top named in ``top_diffs`` takes that gradient instead
        (Caffe overwrites the top's diff).  Parameter gradients accumulate in
        ``net.param_diffs`` (clear them with ``clear_param_diffs``).
        """
        import mxnet as mx

        if self._last is None:
            raise errors.SpecError("backward: call forward first")
        unknown = set(top_diffs) - set(self.outputs)
        if unknown:
            raise errors.SpecError(f"backward: {sorted(unknown)} are not net outputs; outputs: {self.outputs}")
        extra = list(diffs or [])
        bad = [d for d in extra if d not in self._inputs]
        if bad:
            raise errors.SpecError(f"backward: diffs of {bad} are not available; caffedata returns the "
                                   f"gradients of the net inputs {self._inputs}")
        exe = self._last[0]
        given = {self._graph.blob_ids[k]: v for k, v in top_diffs.items()}
        head = []
        for tid, out in zip(self._exec_ids, exe.outputs):
            if tid in given:
                g = np.broadcast_to(np.asarray(given[tid], np.float32), out.shape)
            elif self._loss.get(tid):
                g = np.full(out.shape, self._loss[tid], np.float32)
            else:
                g = np.zeros(out.shape, np.float32)
            head.append(mx.nd.array(g, ctx=self.ctx))
        exe.backward(head)
        mx.nd.waitall()
        seen = set()
        for bind in self._bindings:
            if bind.kind not in _BLOB_ARGUMENT_KINDS:
                continue
            for i, arg in enumerate(bind.arg_names):
                if arg in seen or i in bind.state_blobs or arg not in exe.grad_dict:
                    continue
                seen.add(arg)
                self._diffs[bind.name][i] += exe.grad_dict[arg].asnumpy()
        return collections.OrderedDict((name, exe.grad_dict[name].asnumpy())
                                       for name in self._inputs + [d for d in extra if d not in self._inputs])

    # ------------------------------------------------------------------
    # Weights in and out

    def save(self, path, diffs=None):
        """Write the weights as a .caffemodel (Net::ToProto's layout), as pycaffe's net.save.

        ``diffs`` (layer name -> arrays, as ``params``) are written as the blobs' diffs, as
        Caffe's ``snapshot_diff`` does (zeros for layers not given).
        """
        from .caffemodel import write_caffemodel

        self._require_shapes()
        write_caffemodel(path, self._net_param, self._params, write_diff=diffs is not None, diffs=diffs)

    def save_hdf5(self, path, diffs=None):
        """Write the weights as Net::ToHDF5 does (``/data/<layer>/<j>``), as pycaffe's net.save_hdf5.

        ``diffs``: as for :meth:`save` (a ``/diff`` group).
        """
        from .caffemodel import write_caffemodel_hdf5

        self._require_shapes()
        write_caffemodel_hdf5(path, self._net_param, self._params, write_diff=diffs is not None, diffs=diffs)

    def copy_from(self, path):
        """Copy weights from a .caffemodel by layer name (Net::CopyTrainedLayersFrom)."""
        self._require_shapes()
        self._load_weights(path)

    def set_mxnet_params(self, arg_params, aux_params=None):
        """Take the weights from an MXNet checkpoint made from this net (``net.arg_params`` naming).

        Every parameter of the net must be present with its Caffe shape;
        extra arrays are ignored with a logged note.
        """
        self._require_shapes()
        given = dict(arg_params or {})
        given.update(aux_params or {})
        used = set()
        for bind in self._bindings:
            blobs = self._params.get(bind.name)
            if blobs is None:
                continue
            if bind.kind == "fused":
                continue  # its blobs are the native op's of the Scale after it
            if bind.kind == "native":
                names = bind.native.arg_names + bind.native.aux_names
                missing = [n for n in names if n not in given]
                if missing:
                    raise errors.SpecError(f"the MXNet parameters have no {missing} (layer '{bind.name}', native "
                                           "path); they must come from this prototxt with the same native flag")
                for blob, value in zip(self._native_blobs(bind), bind.native.from_native(given)):
                    value = np.asarray(value)
                    if value.size != blob.size:
                        raise errors.SpecError(f"layer '{bind.name}': a parameter of {value.size} values, the "
                                               f"net needs {blob.shape}")
                    blob[...] = value.reshape(blob.shape)
                used.update(names)
                continue
            for arg, blob in zip(bind.arg_names, blobs):
                if arg not in given:
                    raise errors.SpecError(
                        f"the MXNet parameters have no '{arg}' (layer '{bind.name}'); they must come from "
                        f"this prototxt (caffedata import / net.arg_params name them <layer>_<i>_weight|bias)")
                value = given[arg]
                value = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
                if tuple(value.shape) != tuple(blob.shape):
                    raise errors.SpecError(f"parameter '{arg}' of layer '{bind.name}' has shape {value.shape}, "
                                           f"the net needs {blob.shape}")
                blob[...] = value
                used.add(arg)
        for name in sorted(set(given) - used):
            log.info("Ignoring MXNet parameter %s (no such layer parameter in the net)", name)

    @property
    def symbol(self):
        """The MXNet symbol: the net's outputs (loss layers as CaffeLoss heads), Caffe's output order."""
        return self._export_symbol()[0]

    @property
    def arg_params(self):
        return self._checkpoint_params()[0]

    @property
    def aux_params(self):
        return self._checkpoint_params()[1]

    @property
    def data_names(self):
        """Inputs that are data (Input tops, first top of each data layer)."""
        names = [t for n in self._input_layers if n.type == symbols.INPUT_LAYER_TYPE for t in n.tops]
        names += [n.tops[0] for n in self._data_layers if n.tops]
        return [t for t in self._inputs if t in names]

    @property
    def label_names(self):
        """Inputs that are labels (later tops of data layers)."""
        return [t for n in self._data_layers for t in n.tops[1:]]

    def to_module(self, data_shapes=None, label_shapes=None, for_training=False, **module_kwargs):
        """An ``mx.mod.Module`` over ``net.symbol``, bound and holding the weights when shapes are known."""
        import mxnet as mx

        module_kwargs.setdefault("context", self.ctx)
        mod = mx.mod.Module(self.symbol, data_names=self.data_names, label_names=self.label_names,
                            **module_kwargs)
        if data_shapes is None and all(t in self._input_shapes for t in self.data_names):
            data_shapes = [(t, self._input_shapes[t]) for t in self.data_names]
        if label_shapes is None and self.label_names and all(t in self._input_shapes for t in self.label_names):
            label_shapes = [(t, self._input_shapes[t]) for t in self.label_names]
        if data_shapes is not None:
            mod.bind(data_shapes=data_shapes, label_shapes=label_shapes or None, for_training=for_training)
            mod.set_params(self.arg_params, self.aux_params)
        return mod

    def to_gluon(self):
        """An ``mx.gluon.SymbolBlock`` over ``net.symbol`` holding the weights (inputs: ``net.inputs``)."""
        import tempfile

        import mxnet as mx

        sym = self.symbol
        names = [t for t in self._inputs if t in sym.list_arguments()]
        block = mx.gluon.SymbolBlock(sym, [mx.sym.var(t, dtype="float32") for t in names])
        params = {f"arg:{k}": v for k, v in self.arg_params.items()}
        params.update({f"aux:{k}": v for k, v in self.aux_params.items()})
        fd, tmp = tempfile.mkstemp(suffix=".params")
        os.close(fd)
        try:
            mx.nd.save(tmp, params)
            block.collect_params().load(tmp, ctx=self.ctx)
        finally:
            os.unlink(tmp)
        return block

    def data_iters(self, **iter_kwargs):
        """{layer name: CaffeDataIter} for the net's data layers (train_val nets)."""
        from ..mxnet.iterator import CaffeDataIter

        out = collections.OrderedDict()
        for node in self._data_layers:
            out[node.name] = _data_iter(CaffeDataIter, node, **iter_kwargs)
        return out

    # ------------------------------------------------------------------
    # Internals

    def _known_input_shapes(self):
        shapes = collections.OrderedDict()
        for name, shape in dict(self._graph.input_shapes or {}).items():
            if shape is not None:
                shapes[name] = tuple(int(d) for d in shape)
        for node in self._data_layers:
            shapes.update(_data_layer_shapes(node))
        return shapes

    def _require_shapes(self):
        missing = [t for t in self._inputs if t not in self._input_shapes]
        if missing:
            raise errors.SpecError(
                f"the shapes of the net inputs {missing} are unknown (a data layer whose source cannot be "
                f"read, or an input without shape); call net.reshape({missing[0]}=(N, C, H, W)) or "
                f"net.forward(...) with arrays first")
        self._materialize()

    def _executor_outputs(self):
        ids = []
        for name in self._graph.blob_names:
            tid = self._graph.blob_ids[name]
            if tid in self._tensors and tid not in self._inputs and tid not in ids:
                ids.append(tid)
        for tid in self._loss:
            if tid not in ids and tid in self._tensors:
                ids.append(tid)
        return ids

    def _check_blob_names(self, blobs):
        wanted = list(blobs or [])
        unknown = [b for b in wanted if b not in self._graph.blob_ids]
        if unknown:
            raise errors.SpecError(f"forward: unknown blobs {unknown}; blobs: {list(self._graph.blob_names)}")
        return [b for b in wanted if b not in self.outputs]

    def _blob_value(self, name):
        exe, arrays, caffe_shapes = self._last
        return self._value(exe, self._exec_ids, arrays, caffe_shapes, self._graph.blob_ids[name])

    def _value(self, exe, output_ids, arrays, caffe_shapes, tid):
        """The array of tensor ``tid`` after a forward of ``exe`` (whose outputs are ``output_ids``)."""
        computed = [t for t in output_ids if t not in self._inputs]
        if tid not in computed:
            return np.array(arrays[tid] if tid in arrays else arrays[tid.split("@")[0]])  # an input
        value = exe.outputs[computed.index(tid)].asnumpy()
        caffe_shape = caffe_shapes.get(tid)
        if caffe_shape is not None and value.shape != caffe_shape and value.size == int(np.prod(caffe_shape)):
            value = value.reshape(caffe_shape)  # a loss is 0-axis in Caffe, (1,) in MXNet
        return value

    def _partial_outputs(self, start, end, blobs):
        """{name: tensor id} a forward from layer ``start`` to layer ``end`` returns (pycaffe's rules)."""
        layers = self._graph.layers
        index = {n.name: i for i, n in enumerate(layers)}
        for what, name in (("start", start), ("end", end)):
            if name is not None and name not in index:
                raise errors.SpecError(f"forward: {what}={name!r} is not a layer of the net; layers: "
                                       f"{self.layer_names}")
        first = index[start] if start is not None else 0
        last = index[end] if end is not None else len(layers) - 1
        if first > last:
            raise errors.SpecError(f"forward: start layer '{start}' comes after end layer '{end}'")
        producer = {t: i for i, n in enumerate(layers) for t in n.tops}
        inputs = set(self._inputs)
        for node in layers[first:last + 1]:
            for b in node.bottoms:
                if b not in inputs and producer.get(b, first) < first:
                    raise errors.SpecError(
                        f"forward: start='{start}' needs blob '{b.split('@')[0]}' (layer '{node.name}' reads "
                        f"it), which an earlier layer makes; caffedata.Net feeds only its inputs "
                        f"{self._inputs} -- start at or before '{layers[producer[b]].name}'")
        outputs = collections.OrderedDict()
        if end is not None:
            for t in layers[last].tops:
                outputs[t.split("@")[0]] = t
        else:
            for name in self.outputs:
                outputs[name] = self._graph.blob_ids[name]
        for name in blobs:
            # the blob as the layers up to `last` left it: its last writer among them
            writers = [t for n in layers[:last + 1] for t in n.tops if t.split("@")[0] == name]
            if not writers:
                raise errors.SpecError(f"forward: blob '{name}' is made after layer '{layers[last].name}'")
            outputs.setdefault(name, writers[-1])
        return outputs

    def _materialize(self):
        """Create the parameter blobs (fillers, then the .caffemodel) once the input shapes are known."""
        if self._params is not None:
            return
        import mxnet as mx

        _, blob_shapes = symbols.caffe_shapes(self._graph, self._bindings, self._tensors, self._input_shapes)
        params = collections.OrderedDict()
        owners = {}
        for node, bind in zip(self._graph.layers, self._bindings):
            if not bind.blob_count:
                continue
            shapes = blob_shapes[node.name]
            blobs = []
            for i, shape in enumerate(shapes):
                arg = bind.arg_names[i] if bind.kind in _BLOB_ARGUMENT_KINDS else f"{node.name}_{i}"
                if bind.kind == "caffe" and arg in owners:  # a shared ParamSpec: one blob, two layers
                    blobs.append(owners[arg])
                    continue
                arr = mx.nd.zeros(shape, ctx=mx.cpu())
                attrs = bind.inits[i] if i < len(bind.inits) else {}
                if "__init__" in attrs:  # else an omitted filler: Caffe's default is constant 0
                    mx.init.Zero()(mx.init.InitDesc(arg, attrs=attrs), arr)
                blobs.append(arr.asnumpy().astype(np.float32))
                owners[arg] = blobs[-1]
            params[node.name] = blobs
        self._params = params
        self._diffs = collections.OrderedDict(
            (k, [np.zeros_like(b) for b in v]) for k, v in params.items())
        # A shared blob shares its diff too (Caffe accumulates every user's gradient in one diff).
        first = {}
        for bind in self._bindings:
            if bind.kind == "caffe" and bind.name in params:
                for i, arg in enumerate(bind.arg_names):
                    if arg in first:
                        layer, j = first[arg]
                        self._diffs[bind.name][i] = self._diffs[layer][j]
                    else:
                        first[arg] = (bind.name, i)
        if self._weights is not None:
            self._load_weights(self._weights)
        self._create_nd()

    def _load_weights(self, path):
        from .caffemodel import copy_trained_layers, read_caffemodel

        source = read_caffemodel(path)
        target = collections.OrderedDict((n.name, [b.shape for b in self._params.get(n.name, [])])
                                         for n in self._graph.layers)
        shared = {key for key, owner in (self._graph.param_owners or {}).items() if tuple(key) != tuple(owner)}
        copied, self.weight_notes = copy_trained_layers(target, source, source_name=str(path), shared=shared)
        for layer, blobs in copied.items():
            for dst, src in zip(self._params.get(layer, []), blobs):
                if src is not None:  # HDF5 files do not store shared parameters
                    dst[...] = src

    def _create_nd(self):
        import mxnet as mx

        aux = set(self._exec_symbol.list_auxiliary_states())
        self._aux_names = aux
        for bind in self._bindings:
            for k, v in self._mxnet_arrays(bind).items():
                if k not in self._nd:
                    self._nd[k] = mx.nd.array(np.asarray(v), ctx=self.ctx, dtype=np.float32)
        _set_variable_shapes(self._exec_symbol, self._nd)

    def _push_params(self):
        """Copy the Caffe blobs (the master copy, writable by the user) into the executors' arrays."""
        for bind in self._bindings:
            if bind.kind in _BLOB_ARGUMENT_KINDS and bind.name in self._params:
                for arg, blob in zip(bind.arg_names, self._params[bind.name]):
                    self._nd[arg][:] = blob
            elif bind.kind == "native" and self._native_blobs(bind):
                for k, v in bind.native.to_native(self._native_blobs(bind)).items():
                    self._nd[k][:] = np.asarray(v)

    def _pull_state(self):
        """TRAIN forwards update running-state blobs (BatchNorm): copy them back to the Caffe blobs."""
        for bind in self._bindings:
            if bind.kind == "caffe" and bind.state_blobs and bind.name in self._params:
                blobs = self._params[bind.name]
                for s in bind.state_blobs:
                    blobs[s][...] = self._nd[bind.arg_names[s]].asnumpy()
            elif bind.kind == "native" and bind.native.aux_names:
                for blob, value in zip(self._native_blobs(bind), bind.native.from_native(self._nd)):
                    blob[...] = np.asarray(value).reshape(blob.shape)

    def _native_blobs(self, bind):
        """The Caffe blobs a native op takes: its layer's, or a fused BatchNorm's then its Scale's."""
        return [b for layer in (bind.covers or (bind.name,)) for b in self._params.get(layer, [])]

    def _executor(self, shapes, outputs=None):
        """(executor, Caffe's blob shapes) for these input shapes; the last four are kept bound.

        ``outputs``: the tensor ids it computes (default: every blob and loss, ``_exec_ids``).
        """
        import mxnet as mx

        key = (tuple(sorted((k, tuple(v)) for k, v in shapes.items())), outputs)
        cached = self._executors.get(key)
        if cached is not None:
            self._executors.move_to_end(key)
            return cached
        if outputs is None:
            sym = self._exec_symbol
        else:
            sym = mx.sym.Group([self._tensors[t] for t in outputs if t not in self._inputs] or
                               [self._exec_symbol[0]])
        fed = {k: v for k, v in shapes.items() if k in sym.list_arguments()}  # a part may not need all
        known = {n: self._nd[n].shape for n in sym.list_arguments() + sym.list_auxiliary_states() if n in self._nd}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # MXNet prints its arguments on failure
                arg_shapes, _, aux_shapes = sym.infer_shape(**known, **fed)
        except mx.base.MXNetError as exc:
            raise errors.SpecError(f"the net does not accept inputs of shapes {dict(shapes)}: "
                                   f"{_first_reason(exc)}") from None
        args, grads = {}, {}
        attrs = sym.attr_dict()
        for name, shape in zip(sym.list_arguments(), arg_shapes):
            if name not in self._nd and name not in fed:
                # A parameter no Caffe blob backs (a Python layer's self.blobs): its own initializer.
                arr = mx.nd.zeros(shape, ctx=self.ctx)
                mx.init.Zero()(mx.init.InitDesc(name, attrs=attrs.get(name, {})), arr)
                self._nd[name] = arr
            args[name] = self._nd[name] if name in self._nd else mx.nd.zeros(shape, ctx=self.ctx)
            grads[name] = mx.nd.zeros(shape, ctx=self.ctx)
        aux = {}
        for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
            aux[name] = self._nd[name] if name in self._nd else mx.nd.zeros(shape, ctx=self.ctx)
        exe = sym.bind(self.ctx, args, args_grad=grads, grad_req="write", aux_states=aux)
        caffe_shapes = symbols.caffe_shapes(self._graph, self._bindings, self._tensors, shapes)[0]
        self._executors[key] = (exe, caffe_shapes)
        while len(self._executors) > 4:
            self._executors.popitem(last=False)
        return exe, caffe_shapes

    def _export_symbol(self):
        import mxnet as mx

        if self._export is None:
            if self._params is None and all(t in self._input_shapes for t in self._inputs):
                self._materialize()
            tensors, bindings, _ = symbols.build(self._graph, self.phase, heads="loss", native=self.native,
                                                 input_shapes=self._input_shapes)
            heads, _ = self._symbol_heads()
            self._export = (mx.sym.Group([tensors[t] for t in heads]), bindings)
            if self._params is not None:
                _set_variable_shapes(self._export[0], self._nd)
        return self._export

    def _symbol_heads(self):
        """(tensor ids, names) of ``net.symbol``'s outputs: the net outputs, then other loss tops."""
        heads = [self._graph.blob_ids[name] for name in self.outputs]
        extra = [tid for tid in self._loss if tid not in heads]
        return heads + extra, list(self.outputs) + [f"(automatic){i}" for i in range(len(extra))]

    def _checkpoint_params(self):
        import mxnet as mx

        self._require_shapes()
        sym, bindings = self._export_symbol()
        aux_names = set(sym.list_auxiliary_states())
        arg, aux = {}, {}
        for bind in bindings:
            for k, v in self._mxnet_arrays(bind).items():
                (aux if k in aux_names else arg)[k] = mx.nd.array(np.asarray(v), dtype=np.float32)
        return arg, aux

    def _mxnet_arrays(self, bind):
        """A layer's Caffe blobs as its MXNet argument/aux arrays (name -> array), or {}."""
        if bind.kind in _BLOB_ARGUMENT_KINDS and bind.name in self._params:
            return dict(zip(bind.arg_names, self._params[bind.name]))
        if bind.kind == "native" and self._native_blobs(bind):
            return bind.native.to_native(self._native_blobs(bind))
        return {}

    def __repr__(self):
        return (f"<caffedata.Net {self._net_param.name or '(unnamed)'}: {len(self._graph.layers)} layers, "
                f"phase {self.phase}, inputs {self._inputs}, outputs {self.outputs}>")


def _first_reason(exc):
    """The informative line of an MXNet shape error (they repeat the layer's message many times)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):  # the library keeps earlier calls' messages: the last one is this call's
        if "caffedata" in ln:
            return ln.split("]: ", 1)[-1][:600]
    for ln in lines:
        if "Check failed" in ln or "Error in operator" in ln:
            return ln.split("] ", 1)[-1][:600]
    return (lines[0] if lines else repr(exc))[:600]


def _set_variable_shapes(sym, arrays):
    """Write the parameters' shapes on their Variables (a native Scale's cannot be inferred from data)."""
    internals = sym.get_internals()
    names = set(internals.list_outputs())
    for name, arr in arrays.items():
        if name in names:
            var = internals[name]
            if var.get_children() is None and not var.attr("__shape__"):
                var._set_attr(__shape__=str(tuple(arr.shape)))


def _data_iter(cls, node, **kwargs):
    from .symbols import layer_text_with_tops

    if node.type != "Data":
        raise errors.SpecError(f"data layer '{node.name}' has type '{node.type}'; caffedata's CaffeDataIter "
                               "reads type \"Data\" (LMDB/LevelDB) layers -- feed this input yourself")
    kwargs.setdefault("data_name", node.tops[0])
    if len(node.tops) > 1:
        kwargs.setdefault("label_name", node.tops[1])
    return cls(layer_text_with_tops(node.param), **kwargs)


def _data_layer_shapes(node):
    """Shapes of a data layer's tops when Caffe could know them at setup (Data: the DB's first record)."""
    if node.type == "DummyData":
        p = node.param.dummy_data_param
        out = {}
        for i, top in enumerate(node.tops):
            if len(p.shape):
                out[top] = tuple(p.shape[min(i, len(p.shape) - 1)].dim)
            elif len(p.num):
                j = min(i, len(p.num) - 1)
                out[top] = (p.num[j], p.channels[j], p.height[j], p.width[j])
        return out
    if node.type != "Data" or not os.path.exists(node.param.data_param.source):
        return {}
    from ..mxnet.iterator import CaffeDataIter

    it = _data_iter(CaffeDataIter, node)
    try:
        shapes = {d.name: tuple(d.shape) for d in it.provide_data + it.provide_label}
    finally:
        it.close()
    return shapes
