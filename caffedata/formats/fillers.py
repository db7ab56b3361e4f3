"""Caffe's fillers (include/caffe/filler.hpp) in NumPy, for DummyData and anything without MXNet.

``fill(shape, filler, rng)`` returns a float64 array; ``filler`` is a dict of
FillerParameter fields (``formats.prototxt._filler_dict``) and ``rng`` a
``numpy.random.Generator``.  The distributions and their parameters are
Caffe's; the random stream is NumPy's, so values are not Caffe's own draws.
"""
import math

import numpy as np

from ..errors import SpecError


def _legacy(shape, index):
    """Caffe's Blob::LegacyShape: num/channels/height/width with 1-padding."""
    return shape[index] if -len(shape) <= index < len(shape) else 1


def fan_in_out(shape):
    count = int(np.prod(shape)) if len(shape) else 1
    return count / _legacy(shape, 0), count / _legacy(shape, 1)


def _variance_n(shape, norm):
    fan_in, fan_out = fan_in_out(shape)
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out}.get(norm, (fan_in + fan_out) / 2.0)


def bilinear(shape):
    """Caffe's BilinearFiller: upsampling kernels for a Deconvolution."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise SpecError(f"the bilinear filler needs a 4-axis blob with square kernels, got {shape}")
    w = shape[3]
    f = math.ceil(w / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    i = np.arange(int(np.prod(shape)))
    x, y = i % w, (i // w) % shape[2]
    return ((1 - np.abs(x / f - c)) * (1 - np.abs(y / f - c))).reshape(shape)


def fill(shape, filler, rng):
    """An array of ``shape`` filled as Caffe's filler ``filler['type']`` would."""
    shape = tuple(int(d) for d in shape)
    kind = filler.get("type", "constant")
    if kind == "constant":
        return np.full(shape, filler.get("value", 0.0))
    if kind == "uniform":
        return rng.uniform(filler.get("min", 0.0), filler.get("max", 1.0), shape)
    if kind == "gaussian":
        values = rng.normal(filler.get("mean", 0.0), filler.get("std", 1.0), shape)
        sparse = filler.get("sparse", -1)
        if sparse >= 0:  # each weight kept with probability sparse / num_outputs
            if len(shape) != 2:
                raise SpecError("a sparse gaussian filler needs a 2-axis blob (InnerProduct weights)")
            values *= rng.uniform(0, 1, shape) < sparse / float(_legacy(shape, 0))
        return values
    if kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(shape, filler.get("variance_norm", "FAN_IN")))
        return rng.uniform(-scale, scale, shape)
    if kind == "msra":
        return rng.normal(0.0, math.sqrt(2.0 / _variance_n(shape, filler.get("variance_norm", "FAN_IN"))),
                          shape)
    if kind == "positive_unitball":
        values = rng.uniform(0, 1, shape).reshape(_legacy(shape, 0), -1)
        return (values / values.sum(axis=1, keepdims=True)).reshape(shape)
    if kind == "bilinear":
        return bilinear(shape)
    raise SpecError(f"unknown Caffe filler type '{kind}' -- use constant, uniform, gaussian, xavier, "
                    f"msra, positive_unitball or bilinear")
