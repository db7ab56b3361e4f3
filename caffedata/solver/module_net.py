"""A Solver train/test net over an MXNet symbol and a data iterator (until ``caffedata.Net`` drives it).

    net = ModuleNet(symbol, train_iter, loss_weights={"loss": 1.0}, initializer=mx.init.Xavier())
    test = ModuleNet(symbol, val_iter, phase="TEST", loss_weights={"loss": 1.0})
    solver = Solver("solver.prototxt", net, [test])

The symbol's outputs are the net outputs (CaffeLoss outputs are Caffe's loss
values; CaffeLoss gradients are ``N x`` Caffe's, so ``rescale_grad = 1/N``
with N the batch size).  Arguments that are not data or labels are the
learnable parameters, in ``list_arguments`` order, with the ``lr_mult`` /
``wd_mult`` attributes CaffeOp gives them (Caffe's ``param { lr_mult
decay_mult }``).  The iterator wraps around at its end as Caffe's data layers do.
``save`` / ``copy_from`` write and read a ``.caffemodel`` whose layers are the
CaffeOp names (``fc1_0_weight`` -> layer ``fc1``, blob 0).
"""
import collections
import re

import numpy as np

from ..errors import SpecError
from ..formats.atomic import atomic_path
from ..proto import NetParameter
from .state import _array, _blob, diffs_by_layer

_CAFFEOP_ARG = re.compile(r"^(?P<layer>.+)_(?P<index>\d+)_(?:weight|bias)$")


class ModuleNet:
    def __init__(self, symbol, data_iter, phase="TRAIN", loss_weights=None, initializer=None,
                 arg_params=None, ctx=None, dtype=np.float32, name=None, output_names=None,
                 aux_params=None, caffe_net=None):
        import mxnet as mx

        self.symbol = symbol
        self.caffe_net = caffe_net  # a caffedata Net: snapshots go through its .caffemodel writer
        self.data_iter = data_iter
        self.phase = phase
        self.ctx = ctx or mx.cpu()
        self.name = name or symbol.name
        descs = list(data_iter.provide_data) + list(data_iter.provide_label or [])
        self.input_names = [d.name for d in descs]
        shapes = {d.name: d.shape for d in descs}
        args = symbol.list_arguments()
        missing = [n for n in self.input_names if n not in args]
        if missing:
            raise SpecError(f"data iterator provides {missing}, which the symbol does not take -- "
                            f"the symbol's arguments are {args}")
        self.learnable_names = [n for n in args if n not in self.input_names]
        type_dict = {n: dtype for n in args}
        # Gradient buffers even in a TEST net, never filled: MXNet's oneDNN subgraph pass rewrites
        # inference-only executors and caches their weights at the first forward, so a test net
        # would go on scoring the initial weights after share_weights_from copied newer ones.
        grad_req = {n: ("write" if n in self.learnable_names else "null") for n in args}
        self.exe = symbol.simple_bind(self.ctx, grad_req=grad_req, type_dict=type_dict, **shapes)
        self.batch_size = descs[0].shape[0]
        self.rescale_grad = 1.0 / self.batch_size
        attrs = symbol.attr_dict()
        self.lr_mults = [float(attrs.get(n, {}).get("__lr_mult__", 1.0)) for n in self.learnable_names]
        self.decay_mults = [float(attrs.get(n, {}).get("__wd_mult__", 1.0)) for n in self.learnable_names]
        self.output_names = list(output_names or symbol.list_outputs())
        self.output_loss_weights = dict(loss_weights or {})
        unknown = set(self.output_loss_weights) - set(self.output_names)
        if unknown:
            raise SpecError(f"loss_weights names {sorted(unknown)}, not outputs of the symbol "
                            f"({self.output_names})")
        initializer = initializer or mx.init.Uniform(0.07)
        for n in self.learnable_names:
            arr = self.exe.arg_dict[n]
            if arg_params and n in arg_params:
                arr[:] = arg_params[n]
            else:
                initializer(mx.init.InitDesc(n, attrs.get(n, {})), arr)
        for n, arr in self.exe.aux_dict.items():
            arr[:] = aux_params[n] if aux_params and n in aux_params else 0
        # head gradients: CaffeLoss ignores its own; outputs that are not losses get 0
        self._head_grads = [mx.nd.zeros(o.shape, ctx=self.ctx, dtype=o.dtype) for o in self.exe.outputs]

    @classmethod
    def from_net(cls, net, data_iter=None, ctx=None):
        """The fast path for a ``caffedata.Net``: its exported symbol bound once, weights as NDArrays.

        ``data_iter`` defaults to the net's only Data layer's ``CaffeDataIter``.
        """
        if data_iter is None:
            iters = net.data_iters()
            if len(iters) != 1:
                raise SpecError(f"net has {len(iters)} Data layers; pass data_iter= (one iterator giving "
                                f"every input: {net.inputs})")
            data_iter = next(iter(iters.values()))
        outputs = net.symbol_outputs
        return cls(net.symbol, data_iter, phase=net.phase, loss_weights={n: w for n, w in outputs if w},
                   arg_params=net.arg_params, aux_params=net.aux_params, ctx=ctx or net.ctx,
                   name=net.name or "net", output_names=[n for n, _ in outputs], caffe_net=net)

    # -------------------------------------------------------------- Solver interface
    @property
    def param_arrays(self):
        return [self.exe.arg_dict[n] for n in self.learnable_names]

    @property
    def grad_arrays(self):
        return [self.exe.grad_dict[n] for n in self.learnable_names]

    def _next_batch(self):
        try:
            return next(self.data_iter)
        except StopIteration:  # Caffe's data layers wrap around
            self.data_iter.reset()
            return next(self.data_iter)

    def _load(self, batch):
        arrays = list(batch.data) + list(batch.label or [])
        for name, arr in zip(self.input_names, arrays):
            self.exe.arg_dict[name][:] = arr

    def _result(self):
        outputs = [(n, o.asnumpy()) for n, o in zip(self.output_names, self.exe.outputs)]
        loss = np.float32(0)
        for n, v in outputs:
            w = self.output_loss_weights.get(n, 0.0)
            if w:
                loss = np.float32(loss + np.float32(w) * np.float32(np.sum(v)))
        # Caffe sorts outputs by name; anonymous loss tops count in the loss but are no outputs
        shown = [item for item in outputs if not item[0].startswith("(automatic)")]
        return float(loss), sorted(shown, key=lambda item: item[0])

    def forward_backward(self, batch=None):
        self._load(batch if batch is not None else self._next_batch())
        self.exe.forward(is_train=True)
        self.exe.backward(self._head_grads)
        return self._result()

    def forward(self, batch=None):
        self._load(batch if batch is not None else self._next_batch())
        self.exe.forward(is_train=self.phase == "TRAIN")
        return self._result()

    def share_weights_from(self, other):
        _wait_for_running_state()
        for n in self.learnable_names:
            if n in other.learnable_names:
                other.exe.arg_dict[n].copyto(self.exe.arg_dict[n])
        for n, arr in self.exe.aux_dict.items():
            if n in other.exe.aux_dict:
                other.exe.aux_dict[n].copyto(arr)

    def close(self):
        if hasattr(self.data_iter, "close"):
            self.data_iter.close()

    # -------------------------------------------------------------- weights files
    def _layers(self):
        layers = collections.OrderedDict()
        for n in self.learnable_names:
            m = _CAFFEOP_ARG.match(n)
            layer, index = (m.group("layer"), int(m.group("index"))) if m else (n, 0)
            layers.setdefault(layer, {})[index] = n
        return layers

    def _sync_caffe_net(self):
        _wait_for_running_state()
        self.caffe_net.set_mxnet_params({n: self.exe.arg_dict[n] for n in self.learnable_names},
                                        dict(self.exe.aux_dict))

    def save(self, path, diffs=None):
        """A .caffemodel (NetParameter: one layer per CaffeOp name with its blobs); ``.h5``: Caffe's HDF5.

        Built from a ``caffedata.Net`` (:meth:`from_net`), the binary file is the Net's own
        ``Net::ToProto`` layout.  ``diffs``: one array (or None) per learnable parameter, written
        as the blobs' diffs (Caffe's ``snapshot_diff``).
        """
        diff_of = dict(zip(self.learnable_names, diffs)) if diffs is not None else None
        if self.caffe_net is not None:
            self._sync_caffe_net()
            by_layer = None
            if diff_of is not None:
                located = (((layer, j), diff_of.get(name)) for layer, blobs in self._layers().items()
                           for j, name in blobs.items())
                by_layer = diffs_by_layer(self.caffe_net.params, located)
            if str(path).endswith(".h5"):
                self.caffe_net.save_hdf5(path, diffs=by_layer)
            else:
                self.caffe_net.save(path, diffs=by_layer)
            return path
        layers = self._layers()
        with atomic_path(path, "weights file") as tmp:
            if str(path).endswith(".h5"):
                self._write_hdf5(tmp, layers, diff_of)
            else:
                self._write_binary(tmp, layers, diff_of)
        return path

    def _write_hdf5(self, path, layers, diff_of):
        import h5py

        with h5py.File(path, "w") as f:
            for group_name in ("data", "diff") if diff_of is not None else ("data",):
                group = f.create_group(group_name)
                for layer, blobs in layers.items():
                    g = group.create_group(layer)
                    for j in sorted(blobs):
                        value = self.exe.arg_dict[blobs[j]].asnumpy().astype(np.float32)
                        if group_name == "diff":
                            diff = diff_of.get(blobs[j])
                            value = (np.zeros_like(value) if diff is None
                                     else np.asarray(diff, np.float32).reshape(value.shape))
                        g.create_dataset(str(j), data=value)

    def _write_binary(self, path, layers, diff_of):
        net = NetParameter()
        net.name = self.name
        for layer, blobs in layers.items():
            lp = net.layer.add()
            lp.name = layer
            for j in sorted(blobs):
                value = self.exe.arg_dict[blobs[j]].asnumpy()
                blob = lp.blobs.add()
                blob.CopyFrom(_blob(value))
                if diff_of is not None:
                    diff = diff_of.get(blobs[j])
                    blob.diff.extend((np.zeros(value.size, np.float32) if diff is None
                                      else np.asarray(diff, np.float32).reshape(-1)).tolist())
        with open(path, "wb") as f:
            f.write(net.SerializeToString())

    def copy_from(self, path):
        """Load weights written by :meth:`save` (layers matched by name, as Caffe does)."""
        if self.caffe_net is not None:
            self._sync_caffe_net()
            self.caffe_net.copy_from(path)
            for n, v in self.caffe_net.arg_params.items():
                if n in self.exe.arg_dict and n in self.learnable_names:
                    self.exe.arg_dict[n][:] = v
            for n, v in self.caffe_net.aux_params.items():
                if n in self.exe.aux_dict:
                    self.exe.aux_dict[n][:] = v
            return
        layers = self._layers()
        found = {}
        if str(path).endswith(".h5"):
            import h5py
            with h5py.File(path, "r") as f:
                for layer in f["data"]:
                    found[layer] = [np.asarray(f["data"][layer][str(j)]) for j in range(len(f["data"][layer]))]
        else:
            net = NetParameter()
            with open(path, "rb") as f:
                net.ParseFromString(f.read())
            for lp in net.layer:
                found.setdefault(lp.name, [_array(b, f"{path}: layer {lp.name}") for b in lp.blobs])
        for layer, blobs in layers.items():
            if layer not in found:
                continue
            if len(found[layer]) != len(blobs):
                raise SpecError(f"{path}: layer '{layer}' has {len(found[layer])} blobs, the net "
                                f"{len(blobs)} -- Incompatible number of blobs")
            for j, name in sorted(blobs.items()):
                target = self.exe.arg_dict[name]
                value = found[layer][j]
                if value.size != target.size:
                    raise SpecError(f"{path}: layer '{layer}' blob {j} has shape {value.shape}, the net "
                                    f"{tuple(target.shape)}")
                target[:] = value.reshape(target.shape)


def _wait_for_running_state():
    """Let in-place updates of aux states (BatchNorm's running statistics) finish.

    MXNet's graph executor registers an op's aux states as inputs it only reads,
    so neither ``asnumpy`` nor ``copyto`` of them waits for the op's update.
    """
    import mxnet as mx

    mx.nd.waitall()
