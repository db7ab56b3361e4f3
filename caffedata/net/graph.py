"""The blob graph of a filtered V2 net, wired as Caffe's ``Net::Init`` wires it.

``build_graph(net_param)`` follows Caffe step by step on the runtime layer list that Caffe builds
(``InsertSplits`` adds Split layers where a blob fans out or a consumed top is also a loss), so that
every decision is Caffe's: unknown bottoms, tops produced twice, in-place tops, anonymous loss tops,
loss weights (section 1.7), which layers run backward (section 1.8), parameter ownership (1.9), the
net outputs and their order (1.10) and the ``net.blobs`` order.  It then reports the result on the
user's layers only (Split layers are Caffe machinery: a split top is the same tensor as its source).

Tensor ids: the first writer of blob ``b`` makes id ``b``; each later (in-place) writer makes
``b@1``, ``b@2``, ...; a bottom refers to the id current at that point.
"""
from dataclasses import dataclass, field

from caffedata.errors import SpecError
from caffedata.proto import LayerParameter, NetParameter

AUTOMATIC_TOP = "(automatic)"  # Caffe's name for the anonymous top of a loss layer given no top


def is_loss_type(layer_type):
    """LossLayer subclasses (every Caffe type whose name ends in "Loss"): default loss_weight 1, auto top."""
    return layer_type.endswith("Loss")


def allow_force_backward(layer_type, bottom_index):
    """Layer::AllowForceBackward: labels and sequence indicators never get gradients."""
    if layer_type == "EuclideanLoss":
        return True
    if layer_type == "ContrastiveLoss" or layer_type == "LSTMUnit":
        return bottom_index != 2
    if is_loss_type(layer_type) or layer_type in ("LSTM", "RNN"):
        return bottom_index != 1
    return True


def default_param_count(layer, num_bottoms):
    """How many parameter blobs Caffe's layer of this type creates (section 4.1); None if unknown."""
    if len(layer.blobs):
        return len(layer.blobs)  # blobs given in the prototxt are used as they are
    kind = layer.type
    if kind in ("Convolution", "Deconvolution"):
        return 1 + int(layer.convolution_param.bias_term)
    if kind == "InnerProduct":
        return 1 + int(layer.inner_product_param.bias_term)
    if kind == "Embed":
        return 1 + int(layer.embed_param.bias_term)
    if kind == "BatchNorm":
        return 3
    if kind == "Scale":
        return int(num_bottoms == 1) + int(layer.scale_param.bias_term)
    if kind == "Bias":
        return int(num_bottoms == 1)
    if kind in ("PReLU", "Parameter"):
        return 1
    if kind in ("LSTM", "RNN"):
        exposed = (2 if kind == "LSTM" else 1) if layer.recurrent_param.expose_hidden else 0
        has_static = num_bottoms - 2 - exposed > 0
        return (3 if kind == "LSTM" else 5) + int(has_static)
    if kind in ("Python",):
        return None
    if kind in _PARAMETERLESS:
        return 0
    return None


_PARAMETERLESS = frozenset("""
AbsVal Accuracy ArgMax BNLL Clip Concat ContrastiveLoss Crop Data Dropout DummyData ELU Eltwise
EuclideanLoss Exp Filter Flatten HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss Input LRN
Log LSTMUnit MemoryData MultinomialLogisticLoss MVN Pooling Power ReLU Reduction Reshape SPP Sigmoid
SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss Split Swish TanH Threshold Tile
WindowData""".split())


@dataclass
class LayerNode:
    """One layer of the net, wired: tensor ids, loss weights and backward flags."""
    name: str
    type: str
    param: LayerParameter  # the filtered net's copy, with ``phase`` set as Net::Init sets it
    bottoms: list  # tensor ids
    tops: list  # tensor ids (an anonymous loss top is "(automatic)", "(automatic)@1", ...)
    loss_weights: list  # per top: the weight that scales the top's gradient and its loss term
    in_place: list  # per top
    needs_backward: bool
    bottom_names: list = field(default_factory=list)  # blob names as the prototxt gives them
    top_names: list = field(default_factory=list)
    bottom_needs_backward: list = field(default_factory=list)  # Caffe's propagate_down per bottom
    param_needs_backward: list = field(default_factory=list)  # Caffe's param_propagate_down per blob


@dataclass
class NetGraph:
    """The wired net.  Layer order is the prototxt's; Split layers are not listed."""
    layers: list
    inputs: list  # blob names of Input-layer tops, in layer/top order
    input_shapes: dict  # input blob name -> shape tuple (inputs whose Input layer gives a shape)
    outputs: list  # Caffe's net.outputs: the still-available blob names, sorted byte-wise
    blob_ids: dict  # every name in blob_names -> tensor id of its final version
    blob_names: list  # Caffe's net.blobs order (split blobs and "(automatic)" included, once each)
    param_owners: dict  # (layer name, param index) -> owning (layer name, param index)
    learnable_params: list = field(default_factory=list)  # owners, in Caffe's learnable_params order
    param_mults: dict = field(default_factory=dict)  # owner key -> (lr_mult, decay_mult)
    loss_terms: list = field(default_factory=list)  # (tensor id, weight) pairs Net::Forward's loss sums
    runtime_layers: list = field(default_factory=list)  # Caffe's layer_param copies (Splits included)
    name: str = ""
    force_backward: bool = False

    def layer(self, name):
        for node in self.layers:
            if node.name == name:
                return node
        raise KeyError(name)


# ----------------------------------------------------------------------------------------------
# InsertSplits (util/insert_splits.cpp)

def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(net_param):
    """Caffe's InsertSplits: a copy of the net with a Split layer after every top read more than once.

    Returns (net, origin) where origin[i] is the index of runtime layer i in ``net_param`` (None for
    Split layers).
    """
    last_top = {}
    source_of = {}
    count = {}
    loss_weight_of = {}
    for i, layer in enumerate(net_param.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise SpecError(f"Unknown bottom blob '{blob}' (layer '{layer.name}', bottom index {j}) -- "
                                f"no earlier layer produces it; Caffe runs layers in prototxt order")
            source_of[(i, j)] = last_top[blob]
            count[last_top[blob]] = count.get(last_top[blob], 0) + 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        # Being a loss is a use of the top, like being a bottom.
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight_of[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                count[top] = count.get(top, 0) + 1
    out = NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    origin = []
    next_split = {}
    for i, layer in enumerate(net_param.layer):
        copy = out.layer.add()
        copy.CopyFrom(layer)
        origin.append(i)
        for j in range(len(copy.bottom)):
            top = source_of[(i, j)]
            if count.get(top, 0) > 1:
                producer = net_param.layer[top[0]].name
                k = next_split.get(top, 0)
                next_split[top] = k + 1
                copy.bottom[j] = split_blob_name(producer, copy.bottom[j], top[1], k)
        for j, blob in enumerate(layer.top):
            n = count.get((i, j), 0)
            if n <= 1:
                continue
            weight = loss_weight_of.get((i, j), 0.0)
            split = out.layer.add()
            split.name = split_layer_name(layer.name, blob, j)
            split.type = "Split"
            split.bottom.append(blob)
            for k in range(n):
                split.top.append(split_blob_name(layer.name, blob, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            origin.append(None)
            if weight:
                copy.ClearField("loss_weight")
                next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out, origin


def setup_layer_copy(layer, num_blobs, phase):
    """The LayerParameter a Caffe layer holds after SetUp (what Net::ToProto writes, minus blobs).

    Net::Init sets ``phase``; LossLayer adds ``loss_weight: 1`` when none is given; BatchNorm adds
    ``param { lr_mult: 0 }`` for each statistics blob without a ParamSpec.
    """
    copy = LayerParameter()
    copy.CopyFrom(layer)
    if not copy.HasField("phase"):
        copy.phase = phase
    if is_loss_type(copy.type) and not len(copy.loss_weight):
        copy.loss_weight.append(1.0)
    if copy.type == "BatchNorm" and num_blobs:
        for i in range(num_blobs):
            if len(copy.param) == i:
                copy.param.add().lr_mult = 0.0
            elif copy.param[i].lr_mult != 0:
                raise SpecError(f"layer '{copy.name}' (BatchNorm): Cannot configure batch normalization "
                                f"statistics as layer parameters. -- set lr_mult: 0 on its param {{}} "
                                f"entries (or drop them)")
    return copy


# ----------------------------------------------------------------------------------------------
# Net::Init

def _check_unique_names(net_param):
    seen = {}
    for i, layer in enumerate(net_param.layer):
        if layer.name in seen:
            raise SpecError(f"layer name '{layer.name}' is used by layers #{seen[layer.name]} and #{i} -- "
                            f"caffedata identifies layers (and their weights) by name; rename one")
        seen[layer.name] = i


def build_graph(net_param, param_count=None):
    """Wire a filtered V2 NetParameter as Caffe's Net::Init does.

    ``param_count(layer_param, num_bottoms)`` may give the number of parameter blobs of a layer (for
    Python layers and types caffedata does not know); it returns None to fall back to Caffe's table
    (section 4.1), and failing that the number of ``param {}`` entries is used.
    """
    if len(net_param.layers):
        raise SpecError("build_graph needs a V2 net (layer {...}); upgrade V1 `layers` with "
                        "caffedata.net.upgrade.load_net_param first")
    if len(net_param.input):
        raise SpecError(f"the net still has legacy input fields ({', '.join(net_param.input)}); read it with "
                        f"caffedata.net.upgrade.load_net_param, which turns them into an Input layer")
    _check_unique_names(net_param)
    phase = net_param.state.phase
    runtime, origin = insert_splits(net_param)

    blob_names = []  # Caffe's blob_names_ (one entry per blob object)
    blob_need_backward = []
    name_to_blob = {}
    available = set()
    blob_current_id = []  # tensor id of each blob object's current version
    writes = {}  # name -> number of tensors created under that name
    used_ids = set()

    def new_id(name):
        k = writes.get(name, 0)
        writes[name] = k + 1
        tensor_id = name if k == 0 else f"{name}@{k}"
        if tensor_id in used_ids:
            raise SpecError(f"blob name '{tensor_id}' collides with caffedata's id for version {k} of "
                            f"blob '{name}' -- rename the blob")
        used_ids.add(tensor_id)
        return tensor_id

    inputs = []
    input_shapes = {}
    rt = []  # per runtime layer: dict of wiring facts
    for i, layer in enumerate(runtime.layer):
        where = f"layer '{layer.name}' ({layer.type or 'no type'})"
        if len(layer.propagate_down) and len(layer.propagate_down) != len(layer.bottom):
            raise SpecError(f"{where}: propagate_down param must be specified either 0 or bottom_size "
                            f"times ({len(layer.propagate_down)} given, {len(layer.bottom)} bottoms)")
        bottoms, bottom_blobs, bottom_need = [], [], []
        need_backward = False
        for j, blob in enumerate(layer.bottom):
            if blob not in available:
                raise SpecError(f"Unknown bottom blob '{blob}' ({where}, bottom index {j}) -- no earlier "
                                f"layer produces it")
            b = name_to_blob[blob]
            available.discard(blob)
            bottom_blobs.append(b)
            bottoms.append(blob_current_id[b])
            need = blob_need_backward[b]
            if len(layer.propagate_down):
                need = layer.propagate_down[j]
            bottom_need.append(bool(need))
            need_backward |= blob_need_backward[b]
        tops, top_blobs, in_place = [], [], []
        num_top = len(layer.top)
        top_names = list(layer.top)
        if is_loss_type(layer.type) and num_top < 1:
            top_names.append(AUTOMATIC_TOP)
        for j, blob in enumerate(top_names):
            anonymous = j >= num_top
            if not anonymous and j < len(layer.bottom) and blob == layer.bottom[j]:
                b = name_to_blob[blob]
                blob_current_id[b] = new_id(blob)
                in_place.append(True)
            elif not anonymous and blob in name_to_blob:
                raise SpecError(f"Top blob '{blob}' produced by multiple sources. ({where}, top index {j}) "
                                f"-- a layer works in place only when top j names bottom j, and not on a "
                                f"blob that other layers also read (Caffe's split insertion); give the "
                                f"top a new name")
            else:
                b = len(blob_names)
                blob_names.append(blob)
                blob_need_backward.append(False)
                # A split top is the tensor it splits, under another name.
                blob_current_id.append(bottoms[0] if origin[i] is None else new_id(blob))
                if not anonymous:
                    name_to_blob[blob] = b
                in_place.append(False)
            if not anonymous:
                available.add(blob)
            top_blobs.append(b)
            tops.append(blob_current_id[b])
            if layer.type == "Input":
                inputs.append(blob)
        if layer.type == "Input":
            shapes = layer.input_param.shape
            if len(shapes) not in (0, 1, num_top):
                raise SpecError(f"{where}: Must specify 'shape' once, once per top blob, or not at all: "
                                f"{num_top} tops vs. {len(shapes)} shapes.")
            for j, blob in enumerate(layer.top):
                if len(shapes):
                    input_shapes[blob] = tuple(int(d) for d in shapes[0 if len(shapes) == 1 else j].dim)
        # Parameter blobs and the first backward pass.
        count = None
        if origin[i] is not None and param_count is not None:
            count = param_count(layer, len(layer.bottom))
        if count is None:
            count = default_param_count(layer, len(layer.bottom))
            if count is None:
                count = len(layer.param)
        if len(layer.param) > count:
            raise SpecError(f"Too many params specified for layer {layer.name} ({len(layer.param)} param "
                            f"{{}} entries, the {layer.type} layer has {count} parameter blobs)")
        param_need = [(layer.param[p].lr_mult if p < len(layer.param) else 1.0) != 0 for p in range(count)]
        need_backward |= any(param_need)
        setup = setup_layer_copy(layer, count, phase)
        own_weights = list(setup.loss_weight)
        if own_weights and len(own_weights) != len(top_names):
            hint = (" -- a two-top loss layer needs `loss_weight: 1 loss_weight: 0`" if is_loss_type(layer.type)
                    else "")
            raise SpecError(f"{where}: loss_weight must be unspecified or specified once per top blob. "
                            f"({len(own_weights)} given, {len(top_names)} tops){hint}")
        weights = [float(w) for w in own_weights] if own_weights else [0.0] * len(top_names)
        if need_backward:
            for b in top_blobs:
                blob_need_backward[b] = True
        rt.append(dict(layer=layer, setup=setup, bottoms=bottoms, bottom_blobs=bottom_blobs,
                       bottom_need=bottom_need, tops=tops, top_blobs=top_blobs, top_names=top_names,
                       in_place=in_place, weights=weights, need=need_backward, param_need=param_need,
                       count=count))

    # Second pass, in reverse: prune layers that do not reach a loss (by blob name, as Caffe does).
    under_loss, skip = set(), set()
    for info in reversed(rt):
        names = [blob_names[b] for b in info["top_blobs"]]
        contributes = any(w != 0 for w in info["weights"]) or any(n in under_loss for n in names)
        all_skipped = all(n in skip for n in names)
        if info["need"] and all_skipped:
            info["need"] = False
            info["bottom_need"] = [False] * len(info["bottom_need"])
        if not contributes:
            info["need"] = False
        for j, b in enumerate(info["bottom_blobs"]):
            if contributes:
                under_loss.add(blob_names[b])
            else:
                info["bottom_need"][j] = False
            if not info["bottom_need"][j]:
                skip.add(blob_names[b])
    if net_param.force_backward:
        for info in rt:
            info["need"] = True
            kind = info["layer"].type
            for j, b in enumerate(info["bottom_blobs"]):
                info["bottom_need"][j] = info["bottom_need"][j] or allow_force_backward(kind, j)
                blob_need_backward[b] = blob_need_backward[b] or info["bottom_need"][j]
            info["param_need"] = [True] * info["count"]

    # Loss terms and gradient weights.  A consumed top with an explicit loss weight hands the weight
    # to its Split (Caffe's InsertSplits); a loss layer then re-adds its default 1, which Caffe adds
    # to the forward loss but which the Split's backward overwrites in the gradient.
    loss_terms = []
    split_weight = {}  # tensor id -> weight its Split carries
    for info in rt:
        if info["layer"].type == "Split" and info["weights"] and info["weights"][0]:
            split_weight[info["bottoms"][0]] = info["weights"][0]
    for info in rt:
        for tensor_id, w in zip(info["tops"], info["weights"]):
            if w:
                loss_terms.append((tensor_id, w))

    # Parameters: ownership by ParamSpec name, learnable params and their multipliers (AppendParam).
    param_owners, learnable, mults, has_lr, has_decay, owner_of_name = {}, [], {}, {}, {}, {}
    for info in rt:
        setup = info["setup"]
        for p in range(info["count"]):
            key = (setup.name, p)
            spec = setup.param[p] if p < len(setup.param) else None
            pname = spec.name if spec is not None else ""
            if not pname or pname not in owner_of_name:
                param_owners[key] = key
                if pname:
                    owner_of_name[pname] = key
                learnable.append(key)
                mults[key] = (spec.lr_mult if spec is not None else 1.0,
                              spec.decay_mult if spec is not None else 1.0)
                has_lr[key] = spec is not None and spec.HasField("lr_mult")
                has_decay[key] = spec is not None and spec.HasField("decay_mult")
                continue
            owner = owner_of_name[pname]
            param_owners[key] = owner
            lr, decay = mults[owner]
            if spec.HasField("lr_mult"):
                if has_lr[owner] and spec.lr_mult != lr:
                    raise SpecError(f"Shared param '{pname}' has mismatched lr_mult. (layer '{setup.name}' "
                                    f"gives {spec.lr_mult:g}, owner layer '{owner[0]}' gives {lr:g})")
                has_lr[owner], lr = True, spec.lr_mult
            if spec.HasField("decay_mult"):
                if has_decay[owner] and spec.decay_mult != decay:
                    raise SpecError(f"Shared param '{pname}' has mismatched decay_mult. (layer "
                                    f"'{setup.name}' gives {spec.decay_mult:g}, owner layer '{owner[0]}' "
                                    f"gives {decay:g})")
                has_decay[owner], decay = True, spec.decay_mult
            mults[owner] = (lr, decay)

    layers = []
    for i, info in enumerate(rt):
        if origin[i] is None:
            continue
        layer = info["layer"]
        param = LayerParameter()
        param.CopyFrom(net_param.layer[origin[i]])
        if not param.HasField("phase"):
            param.phase = phase
        weights = [split_weight.get(t, w) for t, w in zip(info["tops"], info["weights"])]
        layers.append(LayerNode(
            name=layer.name, type=layer.type, param=param, bottoms=info["bottoms"], tops=info["tops"],
            loss_weights=weights, in_place=info["in_place"], needs_backward=info["need"],
            bottom_names=list(net_param.layer[origin[i]].bottom), top_names=info["top_names"],
            bottom_needs_backward=info["bottom_need"], param_needs_backward=info["param_need"]))

    blob_ids, ordered_names = {}, []
    for b, name in enumerate(blob_names):
        if name not in blob_ids:
            ordered_names.append(name)
        blob_ids[name] = blob_current_id[b]
    return NetGraph(
        layers=layers, inputs=inputs, input_shapes=input_shapes, outputs=sorted(available, key=_bytewise),
        blob_ids=blob_ids, blob_names=ordered_names, param_owners=param_owners, learnable_params=learnable,
        param_mults=mults, loss_terms=loss_terms, runtime_layers=[info["setup"] for info in rt],
        name=net_param.name, force_backward=net_param.force_backward)


def _bytewise(name):
    return name.encode("utf-8")


def check_shared_param_shapes(graph, shapes):
    """Caffe's sharing checks once shapes are known: ``shapes`` maps layer name -> list of shapes.

    STRICT (default) sharing needs equal shapes, PERMISSIVE equal counts.
    """
    def count(shape):
        n = 1
        for d in shape:
            n *= int(d)
        return n

    for (layer_name, p), (owner_name, q) in graph.param_owners.items():
        if (layer_name, p) == (owner_name, q):
            continue
        mine, theirs = tuple(shapes[layer_name][p]), tuple(shapes[owner_name][q])
        node = graph.layer(layer_name)
        spec = node.param.param[p]
        fmt = lambda s: " ".join(str(d) for d in s) + f" ({count(s)})"  # noqa: E731
        if spec.share_mode == spec.PERMISSIVE:
            if count(mine) != count(theirs):
                raise SpecError(f"Cannot share param '{spec.name}' owned by layer '{owner_name}' with layer "
                                f"'{layer_name}'; count mismatch.  Owner layer param shape is {fmt(theirs)}; "
                                f"sharing layer shape is {fmt(mine)}")
        elif mine != theirs:
            raise SpecError(f"Cannot share param '{spec.name}' owned by layer '{owner_name}' with layer "
                            f"'{layer_name}'; shape mismatch.  Owner layer param shape is {fmt(theirs)}; "
                            f"sharing layer expects shape {fmt(mine)}")
