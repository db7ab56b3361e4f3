"""Caffe's fillers (FillerParameter) as MXNet initializers.

The C++ layer declares each parameter blob's filler next to its code
(``Layer::BlobFillers`` in ops/layer.h): the prototxt's own filler, or Caffe's
default for that layer.  :func:`initializer_for` turns that declaration into
the Variable's initializer: :class:`CaffeFiller` (registered with ``mx.init``,
so it survives symbol JSON) for the prototxt's fillers and for the layer
defaults Caffe applies (PReLU 0.25, Scale 1, Bias 0); ``None`` where Caffe's
default is deferred to the Module's initializer (InnerProduct, Convolution,
Deconvolution and Embed without a filler: Caffe would fill constant 0).
"""
import math

import numpy as np

from caffedata.errors import SpecError

__all__ = ["CaffeFiller", "filler_class", "initializer_for"]


def _legacy(shape, index):
    """Caffe's Blob::LegacyShape (num/channels/height/width with 1-padding)."""
    n = len(shape)
    if index >= n or index < -n:
        return 1
    return shape[index]


def _caffe_fill(arr, p):
    import mxnet as mx

    shape = arr.shape
    count = int(np.prod(shape)) if len(shape) else 1
    kind = p["type"]
    dtype = arr.dtype

    def uniform(lo, hi):
        return mx.nd.random.uniform(lo, hi, shape=shape, dtype="float32").astype(dtype)

    def normal(mu, sigma):
        return mx.nd.random.normal(mu, sigma, shape=shape, dtype="float32").astype(dtype)

    if kind == "constant":
        arr[:] = p["value"]
    elif kind == "uniform":
        arr[:] = uniform(p["min"], p["max"])
    elif kind == "gaussian":
        val = normal(p["mean"], p["std"])
        if p["sparse"] >= 0:
            if len(shape) != 2:
                raise SpecError("a sparse gaussian filler needs a 2-axis blob (InnerProduct weights)")
            prob = p["sparse"] / float(_legacy(shape, 0))
            mask = mx.nd.random.uniform(0, 1, shape=shape) < prob
            val = val * mask.astype(dtype)
        arr[:] = val
    elif kind in ("xavier", "msra"):
        fan_in = count / _legacy(shape, 0)
        fan_out = count / _legacy(shape, 1)
        norm = p["variance_norm"]
        if norm == "FAN_IN":
            n = fan_in
        elif norm == "FAN_OUT":
            n = fan_out
        else:  # AVERAGE
            n = (fan_in + fan_out) / 2.0
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            arr[:] = uniform(-scale, scale)
        else:
            arr[:] = normal(0.0, math.sqrt(2.0 / n))
    elif kind == "positive_unitball":
        val = mx.nd.random.uniform(0, 1, shape=shape, dtype="float32").asnumpy().reshape(_legacy(shape, 0), -1)
        val /= val.sum(axis=1, keepdims=True)
        arr[:] = val.reshape(shape).astype(dtype)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise SpecError("the bilinear filler needs a 4-axis blob with square kernels")
        w = shape[3]
        f = math.ceil(w / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        i = np.arange(count)
        x = i % w
        y = (i // w) % shape[2]
        arr[:] = ((1 - np.abs(x / f - c)) * (1 - np.abs(y / f - c))).reshape(shape).astype(dtype)
    else:
        raise SpecError(f"unknown Caffe filler type '{kind}' (constant, uniform, gaussian, xavier, msra, "
                        "positive_unitball, bilinear)")


def _make_filler_class():
    import mxnet as mx

    @mx.init.register
    class CaffeFiller(mx.init.Initializer):
        """Caffe's FillerParameter as an MXNet initializer (serializable).

        ``type`` is one of constant, uniform, gaussian (with ``sparse``),
        xavier, msra (with ``variance_norm`` FAN_IN / FAN_OUT / AVERAGE),
        positive_unitball, bilinear.  Fans follow Caffe: fan_in = count / num,
        fan_out = count / channels (legacy num/channels, 1 for missing axes).
        """

        def __init__(self, type="constant", value=0.0, min=0.0, max=1.0, mean=0.0, std=1.0, sparse=-1,
                     variance_norm="FAN_IN"):
            super().__init__(type=type, value=value, min=min, max=max, mean=mean, std=std, sparse=sparse,
                             variance_norm=variance_norm)
            self._p = dict(type=type, value=value, min=min, max=max, mean=mean, std=std, sparse=sparse,
                           variance_norm=variance_norm)

        def _init_weight(self, name, arr):
            _caffe_fill(arr, self._p)

        _init_bias = _init_weight
        _init_gamma = _init_weight
        _init_beta = _init_weight
        _init_default = _init_weight

    return CaffeFiller


_filler_class = None


def filler_class():
    """The CaffeFiller initializer class (made and registered with mx.init once)."""
    global _filler_class, CaffeFiller
    if _filler_class is None:
        _filler_class = CaffeFiller = _make_filler_class()
    return _filler_class


CaffeFiller = None  # set by filler_class()


def initializer_for(spec):
    """A FillerSpec (caffedata.mxnet.library) -> an MXNet initializer, or None."""
    if spec is None or spec.origin == "framework":
        return None
    return filler_class()(**spec.params)
