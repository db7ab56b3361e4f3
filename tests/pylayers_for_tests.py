"""Python layers written the way pycaffe users write them (used by test_net_python_layer.py)."""
import json

import caffe  # caffedata provides a stand-in when there is no Caffe
import numpy as np


class EuclideanLossLayer(caffe.Layer):
    """Caffe's examples/pycaffe/layers/pyloss.py semantics: 1/(2N) * sum((a - b)^2)."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class ScaleByParam(caffe.Layer):
    """top = factor * bottom, factor from param_str (JSON)."""

    def setup(self, bottom, top):
        self.factor = float(json.loads(self.param_str)["factor"])

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.factor * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.factor * top[0].diff


class ChannelWeights(caffe.Layer):
    """A learnable per-channel weight, initialised to 1 + c / 10 in setup."""

    def setup(self, bottom, top):
        self.blobs.add_blob(bottom[0].channels)
        self.blobs[0].data[...] = 1 + np.arange(bottom[0].channels) / 10.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data.reshape(1, -1, 1, 1)

    def backward(self, top, propagate_down, bottom):
        w = self.blobs[0].data.reshape(1, -1, 1, 1)
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=(0, 2, 3))
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * w


class SquareAndFlatten(caffe.Layer):
    """Two tops of new shapes: x flattened to (N, C*H*W), and x^2 summed over channels (N, 1, H, W)."""

    def reshape(self, bottom, top):
        n, c, h, w = bottom[0].data.shape
        top[0].reshape(n, c * h * w)
        top[1].reshape(n, 1, h, w)

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data[...] = x.reshape(x.shape[0], -1)
        top[1].data[...] = (x ** 2).sum(axis=1, keepdims=True)

    def backward(self, top, propagate_down, bottom):
        x = bottom[0].data
        bottom[0].diff[...] = top[0].diff.reshape(x.shape) + 2 * x * top[1].diff


class PhaseTag(caffe.Layer):
    """top = bottom + phase (0 TRAIN, 1 TEST)."""

    def setup(self, bottom, top):
        self.setup_calls = getattr(self, "setup_calls", 0) + 1

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.phase

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff


class FailsInSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise ValueError("setup exploded on purpose")

    def reshape(self, bottom, top):
        top[0].reshape(1)


class FailsInForward(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise RuntimeError("forward exploded on purpose")


class WrongTopShape(caffe.Layer):
    """Its top shape depends on how often it ran: not allowed."""

    def reshape(self, bottom, top):
        self.calls = getattr(self, "calls", 0) + 1
        top[0].reshape(self.calls)

    def forward(self, bottom, top):
        top[0].data[...] = 0


class Traced(caffe.Layer):
    """Records every lifecycle call, per instance (numbered at setup), in Traced.calls."""

    calls = []
    instances = 0

    def _log(self, what):
        Traced.calls.append((self.number, what, self.phase, self.param_str))

    def setup(self, bottom, top):
        Traced.instances += 1
        self.number = Traced.instances
        self._log("setup")

    def reshape(self, bottom, top):
        self._log("reshape")
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self._log("forward")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self._log("backward")
        bottom[0].diff[...] = top[0].diff
