"""Native MXNet operators for Caffe layers, where MXNet computes what Caffe computes.

``caffedata.Net(..., native=True)`` calls :func:`native_layer` for every layer.
It returns a :class:`NativeLayer` only when the native operator's forward and
backward equal Caffe's (and so ``mx.sym.CaffeOp``'s) to float tolerance, and
``None`` otherwise; the Net then runs that layer as CaffeOp.  ``None`` is also
the answer for anything unusual (wrong bottom/top counts, unknown fields):
CaffeOp then reports the error in Caffe's words.

Native types (``NATIVE_TYPES``): Convolution and Deconvolution (same weight
layout as MXNet's), InnerProduct (FullyConnected), Pooling, LRN (across
channels), ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log,
Softmax, Concat, Eltwise, Flatten, Reshape, Crop, Tile, Slice, Split, Dropout,
Scale, Bias, Reduction, Embed, BatchNorm, and a BatchNorm followed by a Scale fused into one
MXNet BatchNorm (:func:`native_batchnorm_scale`).

Phase.  CaffeOp follows MXNet's training flag at every call; so do the native
Dropout and BatchNorm in a TRAIN-phase layer.  In a TEST-phase layer (the
layer's own ``phase``, else the net's) they are fixed as Caffe fixes them:
Dropout is the identity and BatchNorm uses the stored statistics, whatever the
flag says.  MXNet defines gradients only after a training-mode forward (its
oneDNN pooling keeps no workspace otherwise).

Parameter names.  Where MXNet's parameter layout is Caffe's blob layout
(Convolution, Deconvolution, InnerProduct, Scale, Bias, PReLU, Embed) the Variables
are named as CaffeOp names them, ``{name}_0_weight`` and ``{name}_1_bias``, with the same
fillers and ``lr_mult``/``wd_mult``, so checkpoints of the two paths are
interchangeable.  BatchNorm's statistics are MXNet auxiliary states
``{name}_moving_mean`` / ``{name}_moving_var``; :meth:`NativeLayer.to_native`
and :meth:`NativeLayer.from_native` convert from and to Caffe's three blobs.

Shape-dependent choices (a few Pooling, Flatten, Reshape, Scale and
InnerProduct cases) use the bottoms' shapes as MXNet's shape inference gives
them from the graph's input Variables; where a shape is needed and unknown the
layer falls back to CaffeOp.  A symbol built with known shapes stays valid for
any batch size (dim 0 is never written into a native op), not for other
spatial sizes.

What differs from Caffe and is therefore not native (answer ``None``):
losses (SoftmaxWithLoss etc.: CaffeLoss carries Caffe's gradient scaling),
Pooling STOCHASTIC, Pooling with a mask top, Pooling whose last window Caffe
trims and MXNet does not (see ``_pooling``), BatchNorm with
``use_global_stats: false`` written explicitly (MXNet always uses the running
statistics at inference), InnerProduct with ``transpose: true`` or an axis
that is neither 1 nor the last one, layers with axes other than MXNet's
channel axis 1 where the op has no axis parameter.

BatchNorm in training: outputs and gradients equal Caffe's, but MXNet updates
its running statistics by its own rule (moving = m * moving + (1 - m) * batch,
m = ``moving_average_fraction``), whereas Caffe keeps decayed sums of the
means and of the unbiased variances plus a normaliser.
After native TRAIN forwards the statistics (and so later TEST outputs) are
therefore MXNet's, not Caffe's; use the exact path to reproduce Caffe's
accumulators bit for bit.
"""
import numpy as np

__all__ = ["NativeLayer", "native_layer", "native_batchnorm_scale", "NATIVE_TYPES"]


class NativeLayer:
    """One Caffe layer as native MXNet symbols.

    ``tops``: the output symbols, in the layer's ``top`` order.
    ``arg_names`` / ``aux_names``: the parameter Variables this layer created.
    ``to_native(caffe_blobs)``: Caffe's blobs (numpy arrays, Caffe's order) ->
    ``{name: array}`` for ``arg_params``/``aux_params``.
    ``from_native(params)``: the reverse (``params`` maps names to arrays).
    ``blob_counts``: how many Caffe blobs each covered layer has (one entry,
    or two for a fused BatchNorm + Scale: the blob lists are concatenated).
    """

    def __init__(self, tops, arg_names=(), aux_names=(), to_native=None, from_native=None, blob_counts=(0,)):
        self.tops = list(tops)
        self.arg_names = list(arg_names)
        self.aux_names = list(aux_names)
        self._to = to_native
        self._from = from_native
        self.blob_counts = tuple(blob_counts)

    def to_native(self, caffe_blobs):
        blobs = [np.asarray(b, dtype=np.float32) for b in caffe_blobs]
        if len(blobs) != sum(self.blob_counts):
            raise ValueError(f"expected {sum(self.blob_counts)} Caffe blob(s), got {len(blobs)}")
        if self._to is None:
            return {}
        return self._to(blobs)

    def from_native(self, params):
        if self._from is None:
            return []
        return [np.asarray(a.asnumpy() if hasattr(a, "asnumpy") else a, dtype=np.float32)
                for a in self._from(params)]

    def __repr__(self):
        return f"NativeLayer(tops={len(self.tops)}, args={self.arg_names}, aux={self.aux_names})"


def _same_layout(names):
    """Blob i <-> Variable names[i], arrays unchanged."""
    def to_native(blobs):
        return {n: b for n, b in zip(names, blobs)}

    def from_native(params):
        return [params[n] for n in names]

    return to_native, from_native


# ---------------------------------------------------------------------------
# Helpers

def _mx():
    import mxnet as mx

    return mx


def _shape(sym):
    """The fully known shape of a single-output symbol, or None."""
    try:
        _, out, _ = sym.infer_shape_partial()
    except Exception:  # unknown inputs, a CaffeOp without shapes, ...
        return None
    if not out or out[0] is None or len(out[0]) == 0 or any(d <= 0 for d in out[0]):
        return None
    return tuple(int(d) for d in out[0])


def _ndim(sym):
    s = _shape(sym)
    return None if s is None else len(s)


def _param_var(layer, name, index, num_data=1):
    """CaffeOp's Variable for parameter blob ``index``: name, filler, multipliers."""
    mx = _mx()
    from .. import ops

    vname = f"{name}_{index}_weight" if index == 0 else f"{name}_{index}_bias"
    kw = {}
    fillers = ops._fillers(layer)
    if layer.type == "Embed":
        p = layer.embed_param
        fillers = [p.weight_filler if p.HasField("weight_filler") else None,
                   p.bias_filler if p.HasField("bias_filler") else None]
    if layer.type == "Scale" and num_data >= 2:
        fillers = fillers[1:]
    filler = fillers[index] if index < len(fillers) else None
    if filler is not None and ops.CaffeFiller is not None:
        kw["init"] = ops.CaffeFiller(**ops._filler_kwargs(filler))
    elif layer.type == "Scale" and index == 0 and num_data < 2:
        kw["init"] = mx.init.One()
    elif layer.type in ("Scale", "Bias"):
        kw["init"] = mx.init.Zero()
    elif layer.type == "PReLU":
        kw["init"] = mx.init.Constant(0.25)  # Caffe's PReLU default
    params = list(layer.param)
    if index < len(params):
        if params[index].HasField("lr_mult"):
            kw["lr_mult"] = params[index].lr_mult
        if params[index].HasField("decay_mult"):
            kw["wd_mult"] = params[index].decay_mult
    return mx.sym.Variable(vname, **kw), vname


def _spatial(p, name, n, default, allow_hw=True):
    """Caffe's repeated spatial field or its _h/_w form, as an n-tuple (or None)."""
    base = "kernel" if name == "kernel_size" else name
    hname, wname = f"{base}_h", f"{base}_w"
    if allow_hw and (p.HasField(hname) or p.HasField(wname)):
        if n != 2:
            return None
        return (getattr(p, hname), getattr(p, wname))
    vals = list(getattr(p, name))
    if not vals:
        return (default,) * n
    if len(vals) == 1:
        return (vals[0],) * n
    if len(vals) == n:
        return tuple(vals)
    return None


def _test_phase(layer, phase):
    """True when the layer runs in Caffe's TEST phase (its own phase, else the net's)."""
    if layer.HasField("phase"):
        return layer.phase == 1
    if isinstance(phase, str):
        return phase.upper() == "TEST"
    return phase is not None and int(phase) == 1


def _counts(layer, bottoms, nb, nt):
    """True when the layer has the given bottom/top counts (None = any)."""
    if nb is not None and len(bottoms) != nb:
        return False
    if nt is not None and len(layer.top) not in (0, nt):  # no top written: the single implicit one
        return False
    return True


# ---------------------------------------------------------------------------
# Layers

def _convolution(layer, bottoms, name, phase, deconv=False):
    mx = _mx()
    p = layer.convolution_param
    if not bottoms or len(layer.top) not in (0, len(bottoms)) or p.axis != 1 or p.num_output <= 0:
        return None
    if len(p.kernel_size) > 1:
        n = len(p.kernel_size)
    elif p.HasField("kernel_h") or p.HasField("kernel_w"):
        n = 2
    else:
        n = _ndim(bottoms[0])
        n = 2 if n is None else n - 2
    if n not in (1, 2, 3):
        return None
    kernel = _spatial(p, "kernel_size", n, 0)
    stride = _spatial(p, "stride", n, 1)
    pad = _spatial(p, "pad", n, 0)
    dilation = _spatial(p, "dilation", n, 1, allow_hw=False)
    if None in (kernel, stride, pad, dilation) or min(kernel) <= 0 or min(stride) <= 0:
        return None
    group = p.group
    if group < 1 or p.num_output % group:
        return None
    w, wname = _param_var(layer, name, 0)
    names = [wname]
    kw = dict(kernel=kernel, stride=stride, pad=pad, dilate=dilation, num_filter=p.num_output, num_group=group,
              no_bias=not p.bias_term)
    inputs = {"weight": w}
    if p.bias_term:
        b, bname = _param_var(layer, name, 1)
        inputs["bias"] = b
        names.append(bname)
    op = mx.sym.Deconvolution if deconv else mx.sym.Convolution
    if deconv:
        kw["adj"] = (0,) * n
    tops = []
    for i, bottom in enumerate(bottoms):
        suffix = "" if len(bottoms) == 1 else f"_{i}"
        tops.append(op(data=bottom, name=f"{name}{suffix}", **inputs, **kw))
    return NativeLayer(tops, names, (), *_same_layout(names), blob_counts=(len(names),))


def _inner_product(layer, bottoms, name, phase):
    mx = _mx()
    p = layer.inner_product_param
    if not _counts(layer, bottoms, 1, 1) or p.transpose or p.num_output <= 0:
        return None
    axis = p.axis
    if axis == 1:
        flatten = True
    else:
        nd = _ndim(bottoms[0])
        if nd is None or nd < 2 or axis not in (-1, nd - 1):
            return None
        flatten = False  # MXNet applies the product on the last axis
    w, wname = _param_var(layer, name, 0)
    names = [wname]
    inputs = {"weight": w}
    if p.bias_term:
        b, bname = _param_var(layer, name, 1)
        inputs["bias"] = b
        names.append(bname)
    top = mx.sym.FullyConnected(data=bottoms[0], num_hidden=p.num_output, no_bias=not p.bias_term,
                                flatten=flatten, name=name, **inputs)
    return NativeLayer([top], names, (), *_same_layout(names), blob_counts=(len(names),))


def _pooling(layer, bottoms, name, phase):
    """Caffe Pooling -> MXNet Pooling.

    Caffe sizes the output with ceil ((i + 2p - k) / s) + 1 and then drops a
    last window that would start inside the bottom/right padding; MXNet's
    'full' convention is the same ceil rule without the drop.  The drop can
    only happen when p + s > k, so otherwise 'full' is exact for every input
    size; in the remaining cases the bottom's shape decides.

    Every window must also start inside the padded input (a window wholly
    in the overhang, possible when s > k, averages nothing in Caffe); both
    hold for every size when p + s <= k.

    AVE: Caffe divides each window by its size clipped to [-p, i + p).  So does
    MXNet's forward with count_include_pad, but its (oneDNN) backward divides
    some windows that overhang the padded input by the full k_h * k_w.  Where
    a window may overhang (stride > 1 and the shape unknown, or the shape says
    so) the input is therefore zero-padded explicitly and pooled without
    padding and with count_include_pad=False: each window is then divided by
    its part inside the padded input, Caffe's divisor, forward and backward
    (checked on 422 kernel/stride/pad/size combinations).
    """
    mx = _mx()
    p = layer.pooling_param
    if not _counts(layer, bottoms, 1, 1):
        return None
    method = p.pool  # 0 MAX, 1 AVE, 2 STOCHASTIC
    if method not in (0, 1):
        return None
    pool_type = "max" if method == 0 else "avg"
    ceil = True
    desc = p.DESCRIPTOR.fields_by_name
    if "round_mode" in desc and p.HasField("round_mode"):
        ceil = p.round_mode == 0  # CEIL = 0, FLOOR = 1
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            return None
        if p.pad or p.pad_h or p.pad_w or (p.HasField("stride") and p.stride != 1):
            return None
        top = mx.sym.Pooling(data=bottoms[0], global_pool=True, kernel=(1, 1), pool_type=pool_type, name=name)
        return NativeLayer([top])
    if p.HasField("kernel_h") != p.HasField("kernel_w") or p.HasField("kernel_size") == p.HasField("kernel_h"):
        return None
    kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size,) * 2
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = (p.pad_h, p.pad_w)
    else:
        pad = (p.pad,) * 2
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = (p.stride_h, p.stride_w)
    else:
        stride = (p.stride,) * 2
    if min(kernel) <= 0 or min(stride) <= 0 or pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        return None
    shape = _shape(bottoms[0])
    if shape is not None and len(shape) != 4:
        return None
    overhang = False
    for ax in range(2):
        k, s, q = kernel[ax], stride[ax], pad[ax]
        if not ceil:
            continue  # floor: no window is trimmed, starts outside or overhangs
        if shape is None:
            if q + s > k:
                return None  # Caffe may trim, MXNet never does: depends on the size
            overhang = overhang or s > 1
        else:
            i = shape[2 + ax]
            last = -(-(i + 2 * q - k) // s) * s  # start of MXNet's last window, in padded coordinates
            if last >= i + q:
                return None  # it starts in the padding: Caffe trims it
            overhang = overhang or last + k > i + 2 * q
    if pool_type == "avg" and overhang:
        data = bottoms[0]
        if any(pad):
            data = mx.sym.pad(data, mode="constant", constant_value=0,
                              pad_width=(0, 0, 0, 0, pad[0], pad[0], pad[1], pad[1]), name=f"{name}_pad")
        top = mx.sym.Pooling(data=data, kernel=kernel, stride=stride, pad=(0, 0), pool_type="avg",
                             pooling_convention="full", count_include_pad=False, name=name)
        return NativeLayer([top])
    top = mx.sym.Pooling(data=bottoms[0], kernel=kernel, stride=stride, pad=pad, pool_type=pool_type,
                         pooling_convention="full" if ceil else "valid", name=name)
    return NativeLayer([top])


def _relu(layer, bottoms, name, phase):
    mx = _mx()
    if not _counts(layer, bottoms, 1, 1):
        return None
    slope = layer.relu_param.negative_slope
    if slope == 0:
        top = mx.sym.Activation(bottoms[0], act_type="relu", name=name)
    else:
        top = mx.sym.LeakyReLU(bottoms[0], act_type="leaky", slope=slope, name=name)
    return NativeLayer([top])


def _activation(kind):
    def make(layer, bottoms, name, phase):
        if not _counts(layer, bottoms, 1, 1):
            return None
        return NativeLayer([_mx().sym.Activation(bottoms[0], act_type=kind, name=name)])

    return make


def _elu(layer, bottoms, name, phase):
    if not _counts(layer, bottoms, 1, 1):
        return None
    top = _mx().sym.LeakyReLU(bottoms[0], act_type="elu", slope=layer.elu_param.alpha, name=name)
    return NativeLayer([top])


def _softmax(layer, bottoms, name, phase):
    if not _counts(layer, bottoms, 1, 1):
        return None
    axis = layer.softmax_param.axis
    if axis < 0:
        nd = _ndim(bottoms[0])
        if nd is None:
            return None
        axis += nd
    return NativeLayer([_mx().sym.softmax(bottoms[0], axis=axis, name=name)])


def _concat(layer, bottoms, name, phase):
    p = layer.concat_param
    if not bottoms or len(layer.top) > 1:
        return None
    if p.HasField("axis") and p.HasField("concat_dim"):
        return None
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    if axis < 0:
        nd = _ndim(bottoms[0])
        if nd is None or axis < -nd:
            return None
        axis += nd
    if len(bottoms) == 1:
        return NativeLayer([bottoms[0]])
    return NativeLayer([_mx().sym.concat(*bottoms, dim=axis, name=name)])


def _eltwise(layer, bottoms, name, phase):
    mx = _mx()
    p = layer.eltwise_param
    if len(bottoms) < 2 or len(layer.top) > 1:
        return None
    op = p.operation  # 0 PROD, 1 SUM, 2 MAX
    coeff = list(p.coeff)
    if coeff and (op != 1 or len(coeff) != len(bottoms)):
        return None
    if op == 1:
        if coeff and any(c != 1 for c in coeff):
            terms = [b if c == 1 else b * float(c) for b, c in zip(bottoms, coeff)]
        else:
            terms = list(bottoms)
        top = mx.sym.add_n(*terms, name=name)
    elif op == 0:
        top = bottoms[0]
        for i, b in enumerate(bottoms[1:]):
            top = mx.sym.elemwise_mul(top, b, name=name if i == len(bottoms) - 2 else f"{name}_mul{i}")
    elif op == 2:
        # Caffe sends the gradient to the first maximal bottom; MXNet's maximum
        # sends it to the left operand on ties, so a left fold agrees.
        top = bottoms[0]
        for i, b in enumerate(bottoms[1:]):
            top = mx.sym.broadcast_maximum(top, b, name=name if i == len(bottoms) - 2 else f"{name}_max{i}")
    else:
        return None
    return NativeLayer([top])


def _flatten(layer, bottoms, name, phase):
    mx = _mx()
    p = layer.flatten_param
    if not _counts(layer, bottoms, 1, 1):
        return None
    shape = _shape(bottoms[0])
    if p.axis == 1 and p.end_axis == -1 and (shape is None or len(shape) >= 2):
        return NativeLayer([mx.sym.flatten(bottoms[0], name=name)])
    if shape is None:
        return None
    nd = len(shape)
    a = p.axis + nd if p.axis < 0 else p.axis
    e = p.end_axis + nd if p.end_axis < 0 else p.end_axis
    if not (0 <= a < nd and 0 <= e < nd and a <= e):
        return None
    # 0 keeps the leading dims (the batch among them), -1 takes the merged
    # range, the trailing dims are written out.
    code = (0,) * a + (-1,) + tuple(shape[e + 1:])
    return NativeLayer([mx.sym.reshape(bottoms[0], shape=code, name=name)])


def _reshape(layer, bottoms, name, phase):
    """Caffe Reshape -> MXNet reshape codes.

    Caffe replaces bottom axes [axis, axis + num_axes) by ``shape.dim``, where
    0 copies the bottom dim at the same position and -1 is inferred.  MXNet's
    codes 0 / -1 / d advance one input axis each, so leading 0s for the kept
    axes followed by Caffe's dims mean the same; the kept trailing axes are
    MXNet's -2 when the replaced range has as many dims as it had, else
    written out from the bottom's known shape.
    """
    mx = _mx()
    p = layer.reshape_param
    if not _counts(layer, bottoms, 1, 1):
        return None
    dims = list(p.shape.dim)
    if sum(1 for d in dims if d == -1) > 1 or any(d < -1 for d in dims):
        return None
    axis, num_axes = p.axis, p.num_axes
    if num_axes < -1:
        return None
    shape = _shape(bottoms[0])
    nd = None if shape is None else len(shape)
    if axis < 0:
        if nd is None:
            return None
        start = axis + nd + 1  # Caffe: -1 means "after the last axis"
    else:
        start = axis
    if nd is not None and not 0 <= start <= nd:
        return None
    if num_axes == -1:
        trailing = ()
    else:
        end = start + num_axes
        if nd is not None and end > nd:
            return None
        if len(dims) == num_axes:
            trailing = (-2,)  # the input axis counter is at `end`: copy the rest
        elif shape is not None:
            trailing = tuple(shape[end:])
        else:
            return None
    code = (0,) * start + tuple(dims) + trailing
    if not code:
        return None
    return NativeLayer([mx.sym.reshape(bottoms[0], shape=code, name=name)])


def _dropout(layer, bottoms, name, phase):
    """Caffe Dropout: TRAIN keeps each value with probability 1 - r and scales
    it by 1 / (1 - r), TEST is the identity; MXNet's Dropout (mode 'training')
    is the same, with MXNet's random stream instead of Caffe's.  In a TEST-phase
    layer it is the identity whatever MXNet's training flag says, as in Caffe."""
    if not _counts(layer, bottoms, 1, 1):
        return None
    if _test_phase(layer, phase):
        return NativeLayer([bottoms[0]])
    p = layer.dropout_param
    ratio = p.dropout_ratio
    if not 0 <= ratio < 1:
        return None
    desc = p.DESCRIPTOR.fields_by_name
    if "scale_train" in desc and not p.scale_train:
        return None
    return NativeLayer([_mx().sym.Dropout(bottoms[0], p=ratio, name=name)])


def _split(layer, bottoms, name, phase):
    if len(bottoms) != 1 or not layer.top:
        return None
    # Distinct nodes, so that grouping several tops still sums their gradients.
    tops = [bottoms[0]] + [_mx().sym.identity(bottoms[0], name=f"{name}_{i}") for i in range(1, len(layer.top))]
    return NativeLayer(tops)


def _slice(layer, bottoms, name, phase):
    mx = _mx()
    p = layer.slice_param
    n = len(layer.top)
    if len(bottoms) != 1 or n < 1 or (p.HasField("axis") and p.HasField("slice_dim")):
        return None
    axis = p.slice_dim if p.HasField("slice_dim") else p.axis
    points = list(p.slice_point)
    if n == 1:
        return NativeLayer([bottoms[0]])
    if not points:
        shape = _shape(bottoms[0])
        if shape is not None and (not -len(shape) <= axis < len(shape) or shape[axis] % n):
            return None
        out = mx.sym.SliceChannel(bottoms[0], num_outputs=n, axis=axis, name=name)
        return NativeLayer([out[i] for i in range(n)])
    if len(points) != n - 1 or points != sorted(points) or points[0] <= 0 or len(set(points)) != len(points):
        return None
    bounds = [0] + points + [None]
    tops = [mx.sym.slice_axis(bottoms[0], axis=axis, begin=bounds[i], end=bounds[i + 1], name=f"{name}_{i}")
            for i in range(n)]
    return NativeLayer(tops)


def _broadcast_shape(ndim, axis, param_shape):
    return (1,) * axis + tuple(param_shape) + (1,) * (ndim - axis - len(param_shape))


def _scale(layer, bottoms, name, phase, bias_layer=False):
    """Caffe Scale (y = x * s (+ b)) or Bias (y = x + b): the parameter (or
    bottom 1) covers bottom axes [axis, axis + num_axes) and is broadcast over
    the others."""
    mx = _mx()
    p = layer.bias_param if bias_layer else layer.scale_param
    if len(bottoms) not in (1, 2) or len(layer.top) > 1:
        return None
    shape = _shape(bottoms[0])
    if shape is None:
        return None
    nd = len(shape)
    axis = p.axis + nd if p.axis < 0 else p.axis
    if not 0 <= axis <= nd:
        return None
    names = []
    if len(bottoms) == 2:
        sshape = _shape(bottoms[1])
        if sshape is None or tuple(shape[axis:axis + len(sshape)]) != sshape:
            return None
        factor = bottoms[1]
        pshape = sshape
    else:
        if p.num_axes < -1 or (p.num_axes != -1 and axis + p.num_axes > nd):
            return None
        pshape = tuple(shape[axis:]) if p.num_axes == -1 else tuple(shape[axis:axis + p.num_axes])
        factor, fname = _param_var(layer, name, 0)
        names.append(fname)
    bshape = _broadcast_shape(nd, axis, pshape)
    if bias_layer:
        top = mx.sym.broadcast_add(bottoms[0], mx.sym.reshape(factor, shape=bshape), name=name)
    else:
        top = mx.sym.broadcast_mul(bottoms[0], mx.sym.reshape(factor, shape=bshape),
                                   name=f"{name}_mul" if p.bias_term else name)
        if p.bias_term:
            bias, bname = _param_var(layer, name, len(names), num_data=len(bottoms))
            names.append(bname)
            top = mx.sym.broadcast_add(top, mx.sym.reshape(bias, shape=bshape), name=name)
    return NativeLayer([top], names, (), *_same_layout(names), blob_counts=(len(names),))


def _prelu(layer, bottoms, name, phase):
    """Caffe PReLU = MXNet LeakyReLU(act_type='prelu'); Caffe's shared slope
    is a scalar blob (shape []), MXNet's gamma then has shape (1,)."""
    mx = _mx()
    if not _counts(layer, bottoms, 1, 1):
        return None
    nd = _ndim(bottoms[0])
    if nd is not None and nd < 2:
        return None
    shared = layer.prelu_param.channel_shared
    gamma, gname = _param_var(layer, name, 0)
    if shared:
        gamma = mx.sym.reshape(gamma, shape=(1,))
    top = mx.sym.LeakyReLU(bottoms[0], gamma=gamma, act_type="prelu", name=name)
    return NativeLayer([top], [gname], (), *_same_layout([gname]), blob_counts=(1,))


def _elementwise(kind):
    """AbsVal, Power, Exp, Log, BNLL with Caffe's parameters."""
    def make(layer, bottoms, name, phase):
        mx = _mx()
        if not _counts(layer, bottoms, 1, 1):
            return None
        x = bottoms[0]
        if kind == "AbsVal":
            return NativeLayer([mx.sym.abs(x, name=name)])
        if kind == "BNLL":
            return NativeLayer([mx.sym.Activation(x, act_type="softrelu", name=name)])
        p = {"Power": layer.power_param, "Exp": layer.exp_param, "Log": layer.log_param}[kind]
        inner = x if p.scale == 1 else x * float(p.scale)
        if p.shift != 0:
            inner = inner + float(p.shift)
        if kind == "Power":
            if p.power == 1:
                top = inner if inner is not x else mx.sym.identity(x)
            elif p.scale == 0:
                return None  # a constant top: Caffe's gradient is 0, MXNet's too, but keep CaffeOp
            else:
                top = inner ** float(p.power)
            return NativeLayer([mx.sym.identity(top, name=name)])
        if p.base != -1 and p.base <= 0:
            return None
        ln_base = 1.0 if p.base == -1 else float(np.log(p.base))
        if kind == "Exp":
            arg = inner if ln_base == 1.0 else inner * ln_base
            return NativeLayer([mx.sym.exp(arg, name=name)])
        top = mx.sym.log(inner)
        if ln_base != 1.0:
            top = top * (1.0 / ln_base)
        return NativeLayer([mx.sym.identity(top, name=name)])

    return make


def _crop(layer, bottoms, name, phase):
    """Caffe Crop: bottom 0 cut to bottom 1's shape on the axes from ``axis``
    on, at the given offsets; bottom 1 gets no gradient.  A static slice
    (shapes known); the axes before ``axis`` are left whole."""
    mx = _mx()
    if len(bottoms) != 2 or len(layer.top) > 1:
        return None
    a, b = _shape(bottoms[0]), _shape(bottoms[1])
    if a is None or b is None or len(a) != len(b):
        return None
    p = layer.crop_param
    nd = len(a)
    start = p.axis + nd if p.axis < 0 else p.axis
    offsets = list(p.offset)
    if not 0 <= start < nd or (len(offsets) > 1 and len(offsets) != nd - start):
        return None
    begin, end = [], []
    for i in range(nd):
        if i < start:
            begin.append(None)
            end.append(None)
            continue
        off = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets else 0)
        if off + b[i] > a[i]:
            return None
        begin.append(off)
        end.append(off + b[i])
    return NativeLayer([mx.sym.slice(bottoms[0], begin=tuple(begin), end=tuple(end), name=name)])


def _lrn(layer, bottoms, name, phase):
    """Caffe LRN ACROSS_CHANNELS: x / (k + alpha / n * sum of x^2 over n
    channels)^beta, MXNet's LRN formula; WITHIN_CHANNEL has no MXNet op."""
    if not _counts(layer, bottoms, 1, 1):
        return None
    p = layer.lrn_param
    if p.norm_region != 0 or p.local_size % 2 == 0:
        return None
    nd = _ndim(bottoms[0])
    if nd is not None and nd != 4:
        return None
    top = _mx().sym.LRN(bottoms[0], alpha=p.alpha, beta=p.beta, knorm=p.k, nsize=p.local_size, name=name)
    return NativeLayer([top])


def _reduction(layer, bottoms, name, phase):
    """Caffe Reduction over the axes from ``axis`` on (SUM, ASUM, SUMSQ, MEAN), times coeff."""
    mx = _mx()
    if not _counts(layer, bottoms, 1, 1):
        return None
    p = layer.reduction_param
    nd = _ndim(bottoms[0])
    if nd is None:
        return None
    axis = p.axis + nd if p.axis < 0 else p.axis
    if not 0 <= axis < nd:
        return None
    x = bottoms[0]
    op = p.operation  # 1 SUM, 2 ASUM, 3 SUMSQ, 4 MEAN
    if op == 2:
        x = mx.sym.abs(x)
    elif op == 3:
        x = mx.sym.square(x)
    elif op not in (1, 4):
        return None
    axes = tuple(range(axis, nd))
    top = (mx.sym.mean if op == 4 else mx.sym.sum)(x, axis=axes) if axis > 0 else \
        (mx.sym.mean if op == 4 else mx.sym.sum)(x)  # Caffe's 0-axis top is MXNet's (1,)
    if p.coeff != 1:
        top = top * float(p.coeff)
    return NativeLayer([mx.sym.identity(top, name=name)])


def _embed(layer, bottoms, name, phase):
    """Caffe Embed: W[index] (+ b), W of shape [input_dim, num_output] like
    MXNet's Embedding weight.  Neither gives the indices a gradient."""
    mx = _mx()
    if not _counts(layer, bottoms, 1, 1):
        return None
    p = layer.embed_param
    if p.num_output <= 0 or p.input_dim <= 0:
        return None
    w, wname = _param_var(layer, name, 0)
    names = [wname]
    # BlockGrad: MXNet's Embedding refuses to be asked for an index gradient.
    top = mx.sym.Embedding(mx.sym.BlockGrad(bottoms[0]), weight=w, input_dim=p.input_dim, output_dim=p.num_output,
                           name=f"{name}_lookup" if p.bias_term else name)
    if p.bias_term:
        b, bname = _param_var(layer, name, 1)
        names.append(bname)
        top = mx.sym.broadcast_add(top, b, name=name)
    return NativeLayer([top], names, (), *_same_layout(names), blob_counts=(len(names),))


def _tile(layer, bottoms, name, phase):
    if not _counts(layer, bottoms, 1, 1):
        return None
    p = layer.tile_param
    nd = _ndim(bottoms[0])
    if nd is None or p.tiles < 1:
        return None
    axis = p.axis + nd if p.axis < 0 else p.axis
    if not 0 <= axis < nd:
        return None
    reps = [1] * nd
    reps[axis] = p.tiles
    return NativeLayer([_mx().sym.tile(bottoms[0], reps=tuple(reps), name=name)])


def _bn_checks(layer, bottoms):
    p = layer.batch_norm_param
    if not _counts(layer, bottoms, 1, 1):
        return None
    if p.HasField("use_global_stats") and not p.use_global_stats:
        return None  # Caffe: batch statistics even at inference; MXNet cannot
    nd = _ndim(bottoms[0])
    if nd is not None and nd < 2:
        return None
    return p


def _bn_stats(blobs):
    s = float(blobs[2].reshape(-1)[0]) if blobs[2].size else 0.0
    f = 0.0 if s == 0 else 1.0 / s
    return (blobs[0] * np.float32(f)).astype(np.float32), (blobs[1] * np.float32(f)).astype(np.float32)


def _bn_symbol(bn_layer, bottom, bn_name, gamma, beta, fix_gamma, out_name, phase):
    mx = _mx()
    p = bn_layer.batch_norm_param
    mean = mx.sym.Variable(f"{bn_name}_moving_mean", init=mx.init.Zero())
    var = mx.sym.Variable(f"{bn_name}_moving_var", init=mx.init.One())
    kw = {}
    # Caffe: use_global_stats as written, else true in TEST; MXNet's default
    # follows its training flag, which is Caffe's rule in a TRAIN-phase net.
    if p.use_global_stats if p.HasField("use_global_stats") else _test_phase(bn_layer, phase):
        kw["use_global_stats"] = True
    top = mx.sym.BatchNorm(data=bottom, gamma=gamma, beta=beta, moving_mean=mean, moving_var=var,
                           eps=p.eps, momentum=p.moving_average_fraction, fix_gamma=fix_gamma, axis=1,
                           cudnn_off=False, name=out_name, **kw)
    return top, [f"{bn_name}_moving_mean", f"{bn_name}_moving_var"]


def _batchnorm(layer, bottoms, name, phase):
    """Caffe BatchNorm (no scale, no shift) = MXNet BatchNorm with gamma fixed
    at 1 and a beta of 0 that the optimizer never moves (lr_mult 0)."""
    mx = _mx()
    if _bn_checks(layer, bottoms) is None:
        return None
    gname, bname = f"{name}_gamma", f"{name}_beta"
    gamma = mx.sym.Variable(gname, init=mx.init.One(), lr_mult=0.0, wd_mult=0.0)
    beta = mx.sym.Variable(bname, init=mx.init.Zero(), lr_mult=0.0, wd_mult=0.0)
    top, aux = _bn_symbol(layer, bottoms[0], name, gamma, beta, True, name, phase)

    def to_native(blobs):
        mean, var = _bn_stats(blobs)
        c = mean.shape[0]
        return {gname: np.ones(c, np.float32), bname: np.zeros(c, np.float32), aux[0]: mean, aux[1]: var}

    def from_native(params):
        return [params[aux[0]], params[aux[1]], np.ones(1, np.float32)]

    return NativeLayer([top], [gname, bname], aux, to_native, from_native, blob_counts=(3,))


def native_batchnorm_scale(bn_param, scale_param, bottoms, name, phase=None):
    """A BatchNorm followed by a Scale on its output, as one MXNet BatchNorm.

    ``bn_param`` / ``scale_param``: the two LayerParameters; ``bottoms``: the
    BatchNorm's bottom; ``name``: the Scale layer's name (its blobs become the
    op's gamma ``{name}_0_weight`` and beta ``{name}_1_bias``, CaffeOp's
    names; without ``bias_term`` beta is a fixed zero ``{name}_beta``).  The
    statistics are ``{bn name}_moving_mean`` / ``_moving_var``.  The single top
    is the Scale's output.  ``to_native`` takes the BatchNorm's three blobs
    followed by the Scale's one or two (``blob_counts`` = (3, 1 or 2));
    ``from_native`` returns them in the same order.  None where either layer
    is not native on its own, or the Scale is not per-channel on axis 1 with a
    single bottom.
    """
    mx = _mx()
    if _bn_checks(bn_param, bottoms) is None:
        return None
    sp = scale_param.scale_param
    if len(scale_param.bottom) > 1 or len(scale_param.top) != 1 or sp.axis != 1 or sp.num_axes != 1:
        return None
    gamma, gname = _param_var(scale_param, name, 0)
    names = [gname]
    if sp.bias_term:
        beta, bname = _param_var(scale_param, name, 1)
        names.append(bname)
        arg_names = names
    else:
        bname = f"{name}_beta"
        beta = mx.sym.Variable(bname, init=mx.init.Zero(), lr_mult=0.0, wd_mult=0.0)
        arg_names = names + [bname]
    top, aux = _bn_symbol(bn_param, bottoms[0], bn_param.name, gamma, beta, False, name, phase)

    def to_native(blobs):
        mean, var = _bn_stats(blobs[:3])
        out = {aux[0]: mean, aux[1]: var, gname: blobs[3].reshape(-1)}
        out[bname] = blobs[4].reshape(-1) if sp.bias_term else np.zeros(mean.shape[0], np.float32)
        return out

    def from_native(params):
        out = [params[aux[0]], params[aux[1]], np.ones(1, np.float32), params[gname]]
        if sp.bias_term:
            out.append(params[bname])
        return out

    return NativeLayer([top], arg_names, aux, to_native, from_native, blob_counts=(3, len(names)))


_BUILDERS = {
    "Convolution": _convolution,
    "Deconvolution": lambda *a: _convolution(*a, deconv=True),
    "InnerProduct": _inner_product,
    "Pooling": _pooling,
    "ReLU": _relu,
    "Sigmoid": _activation("sigmoid"),
    "TanH": _activation("tanh"),
    "ELU": _elu,
    "Softmax": _softmax,
    "Concat": _concat,
    "Eltwise": _eltwise,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Dropout": _dropout,
    "Split": _split,
    "Slice": _slice,
    "Scale": _scale,
    "Bias": lambda *a: _scale(*a, bias_layer=True),
    "PReLU": _prelu,
    "AbsVal": _elementwise("AbsVal"),
    "Power": _elementwise("Power"),
    "Exp": _elementwise("Exp"),
    "Log": _elementwise("Log"),
    "BNLL": _elementwise("BNLL"),
    "Crop": _crop,
    "Tile": _tile,
    "LRN": _lrn,
    "Reduction": _reduction,
    "Embed": _embed,
    "BatchNorm": _batchnorm,
}

NATIVE_TYPES = tuple(sorted(_BUILDERS))


def native_layer(layer_param, bottoms, name, phase=None):
    """A native MXNet implementation of one Caffe layer, or None (use CaffeOp).

    ``layer_param``: the caffe.LayerParameter; ``bottoms``: its input symbols
    in ``bottom`` order; ``name``: the node name prefix (normally the layer
    name); ``phase``: the net's phase ('TRAIN'/'TEST' or 0/1).  Layers with a
    loss weight on any top are never native.
    """
    builder = _BUILDERS.get(layer_param.type)
    if builder is None or any(w != 0 for w in layer_param.loss_weight):
        return None
    return builder(layer_param, list(bottoms), name, phase)
