"""Predictions from a net trained with ``CaffeLoss``.

``CaffeLoss`` outputs Caffe's loss value (shape ``(1,)``), not class scores,
so ``Module.predict`` and ``Module.score`` on the training symbol give the
loss.  ``predict_symbol(sym, loss_name)`` returns the same graph with the
CaffeLoss head replaced by what Caffe's deploy net computes from the loss's
input:

* ``SoftmaxWithLoss``: the softmax over ``softmax_param.axis`` (default 1) of
  the loss's input, i.e. class probabilities as Caffe's ``Softmax`` layer gives
  them, through ``mx.sym.SoftmaxOutput`` fed by the loss's own label variable
  (its forward is exactly the softmax), so the module binds and scores like
  any MXNet classifier;
* ``SigmoidCrossEntropyLoss``: the sigmoid of the input
  (``mx.sym.LogisticRegressionOutput``, same label);
* any other loss (EuclideanLoss, HingeLoss, ...): the loss's input itself (the
  scores the loss was computed from), with no label argument (bind with
  ``label_names=None``).

Use it with the trained parameters::

    prob = caffedata.mxnet.predict.predict_symbol(net, "softmax")
    mod = mx.mod.Module(prob)                   # label_names as in training
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label, for_training=False)
    mod.set_params(*trained.get_params())
    probabilities = mod.predict(it)             # (N, classes), rows sum to 1
    mod.score(it, mx.metric.Accuracy())
"""
import json

from ..errors import SpecError

__all__ = ["predict_symbol", "caffe_loss_heads"]

_LOSS_OP = "_caffedata_loss"


def caffe_loss_heads(sym):
    """Names of the CaffeLoss heads (the ``name=`` given to ``mx.sym.CaffeLoss``) in ``sym``."""
    nodes = json.loads(sym.tojson())["nodes"]
    return [node["name"] for node in nodes
            if node["op"] == "MakeLoss" and node["inputs"]
            and nodes[node["inputs"][0][0]]["op"] == _LOSS_OP]


def _head_for(layer_prototxt, scores, label, name):
    import mxnet as mx

    from ..formats.prototxt import parse_net

    net = parse_net(layer_prototxt)  # `layer { ... }` or a bare layer body, as CaffeLoss takes
    if len(net.layer) != 1:
        raise SpecError(f"CaffeLoss {name!r}: its prototxt holds {len(net.layer)} layers, not one")
    layer = net.layer[0]
    if layer.type == "SoftmaxWithLoss":
        axis = layer.softmax_param.axis if layer.HasField("softmax_param") else 1
        if axis in (1, -1):  # SoftmaxOutput's softmax runs over axis 1 (multi_output for N-D)
            return mx.sym.SoftmaxOutput(scores, label, multi_output=True, name=name)
        return mx.sym.softmax(scores, axis=axis, name=f"{name}_prob")
    if layer.type == "SigmoidCrossEntropyLoss":
        return mx.sym.LogisticRegressionOutput(scores, label, name=name)
    return scores


def predict_symbol(sym, loss_name=None):
    """``sym`` with its CaffeLoss head ``loss_name`` replaced by probabilities (see the module doc).

    ``loss_name`` is the ``name=`` given to ``mx.sym.CaffeLoss``; it may be
    omitted when the graph has exactly one CaffeLoss.  Other outputs of a
    grouped symbol are kept, in order.
    """
    heads = caffe_loss_heads(sym)
    if loss_name is None:
        if len(heads) != 1:
            raise SpecError(f"the symbol has {len(heads)} CaffeLoss heads {heads} -- pass "
                            f"loss_name=<one of them>")
        loss_name = heads[0]
    if loss_name not in heads:
        raise SpecError(f"no CaffeLoss named {loss_name!r} in the symbol (its CaffeLoss heads: "
                        f"{heads or 'none'}) -- pass the name= given to mx.sym.CaffeLoss")
    nodes = json.loads(sym.tojson())["nodes"]
    make_loss = next(n for n in nodes if n["name"] == loss_name and n["op"] == "MakeLoss")
    loss_node = nodes[make_loss["inputs"][0][0]]
    internals = sym.get_internals()
    loss_inputs = internals[f"{loss_node['name']}_output"].get_children()
    # CaffeLoss(data=..., label=..., phase): data, then label
    head = _head_for(loss_node["attrs"]["prototxt"], loss_inputs[0], loss_inputs[1], loss_name)
    outputs = sym.list_outputs()
    loss_output = f"{loss_name}_output"
    if outputs == [loss_output]:
        return head
    import mxnet as mx

    return mx.sym.Group([head if out == loss_output else sym[i] for i, out in enumerate(outputs)])
