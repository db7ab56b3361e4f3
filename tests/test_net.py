"""caffedata.Net on Caffe's published nets (written in tests/nets.py), checked against independent computations.

References: LeNet and CIFAR-10 quick written by hand with MXNet's own operators; every other net run by a
small NumPy interpreter of Caffe's layer formulas (below), independent of the C++ layers.
The large nets run at reduced input size and width (channel counts divided), to keep CI fast:
CaffeNet/AlexNet at 67x67 with width/8 and fc 64, GoogLeNet at 96x96 with width/4, ResNet at 64x64 with
width/4; their layer types, kernels, strides, pads, groups and wiring are the published ones.
"""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from conftest import caffe_pool_windows, package_env
from google.protobuf import text_format

import caffedata  # noqa: F401  (registers CaffeOp)
from caffedata import errors
from caffedata.net.caffemodel import read_caffemodel, write_caffemodel
from caffedata.net.net import Net
from caffedata.net.upgrade import load_net_param
from caffedata.proto import NetParameter

sys.path.insert(0, os.path.dirname(__file__))
import nets  # noqa: E402


NETS = {
    "lenet": lambda: nets.lenet(batch=2),
    "cifar10_quick": lambda: nets.cifar10_quick(batch=2),
    "caffenet": lambda: nets.caffenet(batch=2, size=67, width=8, fc=64, classes=10),
    "alexnet": lambda: nets.caffenet(batch=2, size=67, width=8, fc=64, classes=10, alexnet=True),
    "googlenet": lambda: nets.googlenet(batch=2, size=96, width=4, classes=10),
    "resnet": lambda: nets.resnet(batch=2, size=64, width=4, classes=10),
    "fcn": lambda: nets.fcn(batch=2),
}


# ---------------------------------------------------------------------------
# Known weights, written by our own .caffemodel writer

def random_params(net, seed=0):
    """Random Caffe blobs of the net's parameter shapes (BatchNorm statistics kept valid)."""
    rng = np.random.default_rng(seed)
    params = {}
    for layer, blobs in net.params.items():
        ltype = net._graph.layer(layer).type
        arrays = []
        for i, b in enumerate(blobs):
            if ltype == "BatchNorm":
                a = [rng.normal(0, 1, b.shape), rng.uniform(0.5, 2.0, b.shape), np.array([2.0])][i]
            else:
                fan = max(1, int(np.prod(b.shape[1:]))) if b.ndim > 1 else 1
                a = rng.normal(0, 1.0 / np.sqrt(fan), b.shape)
            arrays.append(np.asarray(a, np.float32).reshape(b.shape))
        params[layer] = arrays
    return params


def write_weights(path, text, params):
    write_caffemodel(str(path), load_net_param(text), params)
    return str(path)


# ---------------------------------------------------------------------------
# Independent reference: Caffe's formulas in NumPy

def _conv_out(i, k, s, p, d=1):
    return (i + 2 * p - (d * (k - 1) + 1)) // s + 1


def np_conv(x, w, b, stride, pad, group):
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = _conv_out(h, k, stride, pad), _conv_out(wd, k, stride, pad)
    out = np.zeros((n, o, oh, ow), np.float64)
    og = o // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        cols = np.empty((n, cg, k, k, oh, ow))
        for i in range(k):
            for j in range(k):
                cols[:, :, i, j] = xs[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
        out[:, g * og:(g + 1) * og] = np.einsum("nckluv,ockl->nouv", cols, w[g * og:(g + 1) * og])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def np_deconv(x, w, stride, pad, group):
    """Caffe's Deconvolution (bias-free): the transpose of the convolution with the same weights."""
    n, c, h, wd = x.shape
    _, og, k, _ = w.shape
    oh, ow = stride * (h - 1) + k - 2 * pad, stride * (wd - 1) + k - 2 * pad
    full = np.zeros((n, og * group, stride * (h - 1) + k, stride * (wd - 1) + k))
    cg = c // group
    for g in range(group):
        for i in range(k):
            for j in range(k):
                contrib = np.einsum("nchw,co->nohw", x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg, :, i, j])
                full[:, g * og:(g + 1) * og, i:i + stride * h:stride, j:j + stride * wd:stride] += contrib
    return full[:, :, pad:pad + oh, pad:pad + ow]


def np_pool(x, pool, k, s, p, global_=False):
    n, c, h, w = x.shape
    if global_:
        k, s, p = h, 1, 0
    (oh, ow), windows = caffe_pool_windows(h, w, k, k, s, s, p, p)
    out = np.empty((n, c, oh, ow))
    for i, j, hs, he, ws, we, size in windows:
        win = x[:, :, hs:he, ws:we]
        out[:, :, i, j] = win.max(axis=(2, 3)) if pool == 0 else win.sum(axis=(2, 3)) / size
    return out


def np_lrn(x, n, alpha, beta, k=1.0):
    sq = np.pad(x ** 2, ((0, 0), (n // 2, n // 2), (0, 0), (0, 0)))
    acc = sum(sq[:, i:i + x.shape[1]] for i in range(n))
    return x * (k + alpha / n * acc) ** -beta


def np_softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def reference_forward(text, params, inputs, phase=1):
    """Run a V2 prototxt layer by layer with Caffe's formulas; returns every blob (last writer wins)."""
    net = text_format.Parse(text, NetParameter())
    blobs = {k: np.asarray(v, np.float64) for k, v in inputs.items()}
    for layer in net.layer:
        if any(r.HasField("phase") and r.phase != phase for r in layer.include):
            continue
        x = [blobs[b] for b in layer.bottom]
        w = [np.asarray(a, np.float64) for a in params.get(layer.name, [])]
        t = layer.type
        if t in ("Input", "Data"):
            continue
        if t == "Convolution":
            cp = layer.convolution_param
            y = [np_conv(x[0], w[0], w[1] if cp.bias_term else None, (list(cp.stride) or [1])[0],
                         (list(cp.pad) or [0])[0], cp.group)]
        elif t == "Deconvolution":
            cp = layer.convolution_param
            y = [np_deconv(x[0], w[0], (list(cp.stride) or [1])[0], (list(cp.pad) or [0])[0], cp.group)]
        elif t == "Pooling":
            pp = layer.pooling_param
            y = [np_pool(x[0], pp.pool, pp.kernel_size, pp.stride, pp.pad, pp.global_pooling)]
        elif t == "LRN":
            lp = layer.lrn_param
            y = [np_lrn(x[0], lp.local_size, lp.alpha, lp.beta, lp.k)]
        elif t == "ReLU":
            y = [np.maximum(x[0], 0)]
        elif t == "InnerProduct":
            y = [x[0].reshape(len(x[0]), -1) @ w[0].T + w[1]]
        elif t == "Dropout":
            y = [x[0]]
        elif t == "Softmax":
            y = [np_softmax(x[0])]
        elif t == "Concat":
            y = [np.concatenate(x, axis=1)]
        elif t == "BatchNorm":
            f = 1.0 / w[2][0]
            mean, var = (v.reshape(1, -1, 1, 1) * f for v in w[:2])
            y = [(x[0] - mean) / np.sqrt(var + layer.batch_norm_param.eps)]
        elif t == "Scale":
            y = [x[0] * w[0].reshape(1, -1, 1, 1) + w[1].reshape(1, -1, 1, 1)]
        elif t == "Eltwise":
            y = [sum(x)]
        elif t == "Crop":
            o = layer.crop_param.offset[0]
            h, wd = x[1].shape[2:]
            y = [x[0][:, :, o:o + h, o:o + wd]]
        elif t == "Slice":
            y = np.split(x[0], list(layer.slice_param.slice_point), axis=layer.slice_param.axis)
        elif t == "SoftmaxWithLoss":
            p = np_softmax(x[0])
            label = x[1].astype(int)
            y = [np.array([-np.mean(np.log(p[np.arange(len(label)), label]))])]
        elif t == "Accuracy":
            y = [np.array([np.mean(x[0].argmax(axis=1) == x[1])])]
        else:
            raise NotImplementedError(t)
        for top, v in zip(layer.top, y):
            blobs[top] = v
    return blobs


# ---------------------------------------------------------------------------
# Hand-written native MXNet references (LeNet, CIFAR-10 quick)

def mx_lenet(x, p):
    nd = mx.nd
    h = nd.Convolution(nd.array(x), nd.array(p["conv1"][0]), nd.array(p["conv1"][1]), kernel=(5, 5),
                       num_filter=20)
    h = nd.Pooling(h, kernel=(2, 2), stride=(2, 2), pool_type="max", pooling_convention="full")
    h = nd.Convolution(h, nd.array(p["conv2"][0]), nd.array(p["conv2"][1]), kernel=(5, 5), num_filter=50)
    h = nd.Pooling(h, kernel=(2, 2), stride=(2, 2), pool_type="max", pooling_convention="full")
    h = nd.relu(nd.FullyConnected(h, nd.array(p["ip1"][0]), nd.array(p["ip1"][1]), num_hidden=500))
    h = nd.FullyConnected(h, nd.array(p["ip2"][0]), nd.array(p["ip2"][1]), num_hidden=10)
    return nd.softmax(h, axis=1).asnumpy()


def mx_cifar10_quick(x, p):
    nd = mx.nd

    def conv(h, name, num):
        return nd.Convolution(h, nd.array(p[name][0]), nd.array(p[name][1]), kernel=(5, 5), pad=(2, 2),
                              num_filter=num)

    def pool(h, kind):
        return nd.Pooling(h, kernel=(3, 3), stride=(2, 2), pool_type=kind, pooling_convention="full")

    h = nd.relu(pool(conv(nd.array(x), "conv1", 32), "max"))
    h = pool(nd.relu(conv(h, "conv2", 32)), "avg")
    h = pool(nd.relu(conv(h, "conv3", 64)), "avg")
    h = nd.FullyConnected(h, nd.array(p["ip1"][0]), nd.array(p["ip1"][1]), num_hidden=64)
    h = nd.FullyConnected(h, nd.array(p["ip2"][0]), nd.array(p["ip2"][1]), num_hidden=10)
    return nd.softmax(h, axis=1).asnumpy()


# ---------------------------------------------------------------------------
# Per-net checks

def _input(net, seed=1):
    return np.random.default_rng(seed).normal(0, 1, net.blobs["data"]).astype(np.float32)


@pytest.mark.parametrize("name", sorted(NETS))
def test_forward_with_written_weights_matches_reference(name, tmp_path):
    text = NETS[name]()
    params = random_params(Net(text))
    path = write_weights(tmp_path / f"{name}.caffemodel", text, params)
    net = Net(text, weights=path)
    for layer, arrays in params.items():
        assert [a.shape for a in net.params[layer]] == [a.shape for a in arrays]
        for got, want in zip(net.params[layer], arrays):
            np.testing.assert_array_equal(got, want)
    x = _input(net)
    out = net.forward(data=x, blobs=list(net.blobs))
    ref = reference_forward(text, params, {"data": x})
    for blob in [b for b in net.outputs + list(net.blobs) if "_split_" not in b]:  # Caffe's Split copies
        np.testing.assert_allclose(out[blob], ref[blob], rtol=1e-4, atol=1e-5 * max(1, np.abs(ref[blob]).max()),
                                   err_msg=f"{name}: blob {blob}")
    if name == "lenet":
        np.testing.assert_allclose(out["prob"], mx_lenet(x, params), rtol=1e-5, atol=1e-6)
    if name == "cifar10_quick":
        np.testing.assert_allclose(out["prob"], mx_cifar10_quick(x, params), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NETS))
def test_save_and_reload_give_the_same_arrays(name, tmp_path):
    text = NETS[name]()
    params = random_params(Net(text), seed=3)
    net = Net(text, weights=write_weights(tmp_path / "in.caffemodel", text, params))
    net.save(str(tmp_path / "out.caffemodel"))
    again = Net(text, weights=str(tmp_path / "out.caffemodel"))
    assert list(again.params) == list(params)
    for layer, arrays in params.items():
        for got, want in zip(again.params[layer], arrays):
            np.testing.assert_array_equal(got, want)
    again.save(str(tmp_path / "again.caffemodel"))
    with open(tmp_path / "out.caffemodel", "rb") as a, open(tmp_path / "again.caffemodel", "rb") as b:
        assert a.read() == b.read()
    x = _input(net)
    np.testing.assert_array_equal(net.forward(data=x)[net.outputs[0]], again.forward(data=x)[net.outputs[0]])


# Caffe's shape rules computed by hand: conv (i + 2p - k) / s + 1 (floor), pooling ceil((i + 2p - k) / s) + 1.
EXPECTED_SHAPES = {
    "lenet": {"data": (2, 1, 28, 28), "conv1": (2, 20, 24, 24), "pool1": (2, 20, 12, 12), "conv2": (2, 50, 8, 8),
              "pool2": (2, 50, 4, 4), "ip1": (2, 500), "ip2": (2, 10), "prob": (2, 10)},
    "cifar10_quick": {"conv1": (2, 32, 32, 32), "pool1": (2, 32, 16, 16), "conv2": (2, 32, 16, 16),
                      "pool2": (2, 32, 8, 8), "conv3": (2, 64, 8, 8), "pool3": (2, 64, 4, 4), "ip1": (2, 64),
                      "prob": (2, 10)},
    # 67: conv1 (67-11)/4+1 = 15, pool 3/2 ceil(12/2)+1 = 7, conv2 7, pool2 3, conv3-5 3, pool5 1
    "caffenet": {"conv1": (2, 12, 15, 15), "pool1": (2, 12, 7, 7), "norm1": (2, 12, 7, 7), "conv2": (2, 32, 7, 7),
                 "pool2": (2, 32, 3, 3), "conv3": (2, 48, 3, 3), "conv4": (2, 48, 3, 3), "conv5": (2, 32, 3, 3),
                 "pool5": (2, 32, 1, 1), "fc6": (2, 64), "fc8": (2, 10)},
    "alexnet": {"conv1": (2, 12, 15, 15), "norm1": (2, 12, 15, 15), "pool1": (2, 12, 7, 7), "norm2": (2, 32, 7, 7),
                "pool2": (2, 32, 3, 3), "pool5": (2, 32, 1, 1), "prob": (2, 10)},
    # 96: conv1 48, pool1 ceil(45/2)+1 = 24, pool2 ceil(21/2)+1 = 12, pool3 6, pool4 ceil(3/2)+1 = 3, pool5 (k3) 1
    "googlenet": {"conv1/7x7_s2": (2, 16, 48, 48), "pool1/3x3_s2": (2, 16, 24, 24), "conv2/3x3": (2, 48, 24, 24),
                  "pool2/3x3_s2": (2, 48, 12, 12), "inception_3a/output": (2, 64, 12, 12),
                  "inception_3b/output": (2, 120, 12, 12), "pool3/3x3_s2": (2, 120, 6, 6),
                  "inception_4e/output": (2, 208, 6, 6), "pool4/3x3_s2": (2, 208, 3, 3),
                  "inception_5b/output": (2, 256, 3, 3), "pool5/7x7_s1": (2, 256, 1, 1),
                  "loss3/classifier": (2, 10)},
    # 64: conv1 32, pool1 ceil(29/2)+1 = 16, res3 stride 2: 8
    "resnet": {"conv1": (2, 16, 32, 32), "pool1": (2, 16, 16, 16), "res2a_branch1": (2, 64, 16, 16),
               "res2a_branch2a": (2, 16, 16, 16), "res2a": (2, 64, 16, 16), "res2b": (2, 64, 16, 16),
               "res3a_branch1": (2, 128, 8, 8), "res3a_branch2b": (2, 32, 8, 8), "res3b": (2, 128, 8, 8),
               "pool5": (2, 128, 1, 1), "fc": (2, 10)},
    # 20 + 2*10 - 2 = 38, pool 19, deconv 2*(19-1)+4 = 40, crop to 20
    "fcn": {"conv1_1": (2, 8, 38, 38), "pool1": (2, 8, 19, 19), "score_fr": (2, 4, 19, 19),
            "upscore": (2, 4, 40, 40), "score": (2, 4, 20, 20), "score_bg": (2, 1, 20, 20),
            "score_fg": (2, 3, 20, 20)},
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_blob_shapes_follow_caffe_rules(name):
    net = Net(NETS[name]())
    blobs = net.blobs
    for blob, shape in EXPECTED_SHAPES[name].items():
        assert blobs[blob] == shape, (name, blob)
    out = net.forward(data=_input(net), blobs=list(EXPECTED_SHAPES[name]))
    for blob, shape in EXPECTED_SHAPES[name].items():
        assert out[blob].shape == shape, (name, blob)


def test_lenet_param_shapes_and_filler_defaults():
    net = Net(nets.lenet(batch=2))
    assert {k: [a.shape for a in v] for k, v in net.params.items()} == {
        "conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)], "ip1": [(500, 800), (500,)],
        "ip2": [(10, 500), (10,)]}
    # xavier: uniform in +-sqrt(3 / fan_in); constant bias filler: 0
    w = net.params["ip1"][0]
    assert np.abs(w).max() <= np.sqrt(3.0 / 800) and w.std() > 0
    assert not net.params["ip1"][1].any()
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert list(net.blobs) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]


def test_v1_lenet_equals_v2_lenet(tmp_path):
    v2 = nets.lenet(batch=2)
    params = random_params(Net(v2), seed=5)
    path = write_weights(tmp_path / "lenet.caffemodel", v2, params)
    old = Net(nets.lenet_v1(batch=2), weights=path)
    new = Net(v2, weights=path)
    assert old.inputs == ["data"] and old.outputs == ["prob"]
    assert old.blobs == new.blobs
    x = _input(new)
    np.testing.assert_allclose(old.forward(data=x)["prob"], mx_lenet(x, params), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# pycaffe semantics

def test_in_place_chain_blob_holds_the_last_writer(tmp_path):
    """conv -> BatchNorm -> Scale -> ReLU all in place on conv1: conv1 is the ReLU output."""
    text = nets.resnet(batch=2, size=32, width=8, classes=3)
    net = Net(text)
    params = random_params(net, seed=7)
    net = Net(text, weights=write_weights(tmp_path / "r.caffemodel", text, params))
    x = _input(net)
    out = net.forward(data=x, blobs=["conv1", "res2a_branch2c", "res2a"])
    raw = np_conv(x.astype(np.float64), params["conv1"][0], None, 2, 3, 1)
    s0, s1, f = params["bn_conv1"]
    bn = (raw - (s0 / f[0]).reshape(1, -1, 1, 1)) / np.sqrt((s1 / f[0]).reshape(1, -1, 1, 1) + 1e-5)
    scale, bias = params["scale_conv1"]
    expected = np.maximum(bn * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1), 0)
    assert (expected < 0).sum() == 0 and (bn < 0).any()  # the ReLU mattered
    np.testing.assert_allclose(out["conv1"], expected, rtol=1e-4, atol=1e-4)
    assert list(net.blobs).count("conv1") == 1
    ref = reference_forward(text, params, {"data": x})
    np.testing.assert_allclose(out["res2a"], ref["res2a"], rtol=1e-4, atol=1e-4)
    assert (out["res2a"] >= 0).all()  # res2a is written again by the in-place ReLU res2a_relu


def test_batch_size_may_differ_from_the_prototxt():
    net = Net(nets.lenet(batch=64))
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    out = net.forward(data=x)["prob"]
    assert out.shape == (3, 10)
    assert net.blobs["conv1"] == (3, 20, 24, 24)
    one = net.forward(data=x[1:2])["prob"]
    np.testing.assert_allclose(one[0], out[1], rtol=1e-5)
    np.testing.assert_allclose(out, mx_lenet(x, net.params), rtol=1e-5, atol=1e-6)


def test_params_are_writable_and_reach_the_next_forward():
    net = Net(nets.lenet(batch=2))
    x = _input(net)
    net.params["ip2"][0][...] = 0
    net.params["ip2"][1][...] = np.arange(10, dtype=np.float32)
    np.testing.assert_allclose(net.forward(data=x)["prob"], np.tile(np_softmax(np.arange(10.0)[None]), (2, 1)),
                               rtol=1e-5)


def test_forward_input_names_must_match():
    net = Net(nets.lenet(batch=2))
    with pytest.raises(errors.SpecError, match="do not match the net inputs"):
        net.forward(image=np.zeros((2, 1, 28, 28)))
    with pytest.raises(errors.SpecError, match="unknown blobs"):
        net.forward(data=np.zeros((2, 1, 28, 28)), blobs=["nope"])


TINY = """
name: "tiny"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "tanh" type: "TanH" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" loss_weight: 2 }
"""


def test_tiny_net_hand_computed_forward_and_numeric_gradients():
    mx.random.seed(4)
    net = Net(TINY)
    assert net.inputs == ["data", "label"] and net.outputs == ["loss"]
    assert net.blobs == {"data": (3, 4), "label": (3,), "ip1": (3, 5), "ip2": (3, 3), "loss": ()}
    assert net.blob_loss_weights == {"data": 0, "label": 0, "ip1": 0, "ip2": 0, "loss": 2.0}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    label = np.array([0, 2, 1], np.float32)
    (w1, b1), (w2, b2) = net.params["ip1"], net.params["ip2"]

    def loss_of(x_, w1_=w1):
        h = np.tanh(x_.astype(np.float64) @ w1_.T + b1)
        p = np_softmax(h @ w2.T + b2)
        return -np.mean(np.log(p[np.arange(3), label.astype(int)]))

    out = net.forward(data=x, label=label)
    assert out["loss"].shape == ()  # Caffe's 0-axis loss blob
    np.testing.assert_allclose(out["loss"], loss_of(x), rtol=1e-5)
    grads = net.backward()
    eps = 1e-3
    num = np.zeros_like(x, np.float64)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        num[i] = (loss_of(x + d) - loss_of(x - d)) / (2 * eps)
    np.testing.assert_allclose(grads["data"], 2 * num, rtol=1e-3, atol=1e-5)  # loss_weight 2
    num_w = np.zeros_like(w1, np.float64)
    for i in np.ndindex(w1.shape):
        d = np.zeros_like(w1)
        d[i] = eps
        num_w[i] = (loss_of(x, w1 + d) - loss_of(x, w1 - d)) / (2 * eps)
    np.testing.assert_allclose(net.param_diffs["ip1"][0], 2 * num_w, rtol=1e-3, atol=1e-5)
    # Caffe: parameter diffs accumulate over backward calls; a top diff given overrides the loss weight
    net.backward()
    np.testing.assert_allclose(net.param_diffs["ip1"][0], 4 * num_w, rtol=1e-3, atol=1e-5)
    net.clear_param_diffs()
    np.testing.assert_allclose(net.backward(loss=np.array([1.0]))["data"], num, rtol=1e-3, atol=1e-5)


def test_shared_params_are_one_blob():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ipa" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "ipb" type: "InnerProduct" bottom: "b" top: "yb" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 2 } }
    """
    net = Net(text)
    assert net.params["ipa"][0] is net.params["ipb"][0]
    x = np.ones((2, 3), np.float32)
    out = net.forward(a=x, b=x)
    np.testing.assert_array_equal(out["ya"], out["yb"])


def test_unknown_layer_type_names_layer_type_and_python_layers():
    text = nets.lenet(batch=2).replace('type: "ReLU"', 'type: "FancyReLU"')
    with pytest.raises(errors.SpecError) as err:
        Net(text)
    msg = str(err.value)
    assert "relu1" in msg and "FancyReLU" in msg and 'type: "Python"' in msg and "python_param" in msg


def test_caffemodel_shape_mismatch_is_refused(tmp_path):
    text = nets.lenet(batch=2)
    params = random_params(Net(text))
    path = write_weights(tmp_path / "w.caffemodel", text, params)
    with pytest.raises(errors.SpecError, match="ip1"):
        Net(text.replace("num_output: 500", "num_output: 400"), weights=path)


# ---------------------------------------------------------------------------
# The MXNet checkpoint triple, Module and Gluon

def test_symbol_arg_aux_params_work_in_module_checkpoint_and_gluon(tmp_path):
    text = nets.resnet(batch=2, size=32, width=8, classes=3)
    net = Net(text)
    params = random_params(net, seed=9)
    net = Net(text, weights=write_weights(tmp_path / "r.caffemodel", text, params))
    x = _input(net)
    want = net.forward(data=x)["prob"]
    assert "bn_conv1_0_weight" in net.aux_params and "conv1_0_weight" in net.arg_params
    mod = net.to_module()
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    np.testing.assert_allclose(mod.get_outputs()[0].asnumpy(), want, rtol=1e-5, atol=1e-6)
    mx.model.save_checkpoint(str(tmp_path / "ck"), 0, net.symbol, net.arg_params, net.aux_params)
    sym, arg, aux = mx.model.load_checkpoint(str(tmp_path / "ck"), 0)
    exe = sym.bind(mx.cpu(), dict(arg, data=mx.nd.array(x)), aux_states=aux)
    np.testing.assert_allclose(exe.forward(is_train=False)[0].asnumpy(), want, rtol=1e-5, atol=1e-6)
    block = net.to_gluon()
    np.testing.assert_allclose(block(mx.nd.array(x)).asnumpy(), want, rtol=1e-5, atol=1e-6)


def test_train_test_lenet_reads_its_lmdb_and_computes_the_loss(tmp_path):
    from conftest import raw_datum, write_db

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=8)
    db = str(tmp_path / "digits_lmdb")
    write_db(db, [(f"{i:08d}".encode(), raw_datum(images[i], int(labels[i]))) for i in range(8)])
    text = nets.lenet_train_test(db, db, train_batch=4, test_batch=8)
    test_net = Net(text, phase="TEST")
    assert test_net.inputs == ["data", "label"] and test_net.outputs == ["accuracy", "loss"]
    assert test_net.blobs["data"] == (8, 1, 28, 28) and test_net.blobs["label"] == (8,)
    train_net = Net(text, phase="TRAIN")
    assert train_net.outputs == ["loss"] and train_net.blobs["data"] == (4, 1, 28, 28)
    it = test_net.data_iters()["mnist"]
    try:
        batch = it.next()
        data, label = batch.data[0].asnumpy(), batch.label[0].asnumpy()
    finally:
        it.close()
    np.testing.assert_allclose(data, images / 256.0, rtol=1e-6)
    np.testing.assert_array_equal(label, labels)
    out = test_net.forward(data=data, label=label)
    ref = reference_forward(text, test_net.params, {"data": data, "label": label})
    np.testing.assert_allclose(out["loss"].reshape(()), ref["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(out["accuracy"].reshape(()), ref["accuracy"][0], rtol=1e-6)
    # The training symbol: CaffeLoss head, weights named <layer>_<i>_weight|bias
    assert set(test_net.arg_params) == {"conv1_0_weight", "conv1_1_bias", "conv2_0_weight", "conv2_1_bias",
                                        "ip1_0_weight", "ip1_1_bias", "ip2_0_weight", "ip2_1_bias"}
    assert train_net.label_names == ["label"] and train_net.data_names == ["data"]
    # train_val -> Module: bound from the DB's shapes, trains through the CaffeLoss head
    mod = train_net.to_module(for_training=True)
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1})
    before = mod.get_params()[0]["ip2_0_weight"].asnumpy()
    it = train_net.data_iters()["mnist"]
    try:
        mod.forward_backward(it.next())
        mod.update()
    finally:
        it.close()
    assert np.abs(mod.get_params()[0]["ip2_0_weight"].asnumpy() - before).max() > 0


# ---------------------------------------------------------------------------
# CLI: caffedata import / export

def test_cli_import_export_round_trip(tmp_path):
    text = nets.cifar10_quick(batch=2)
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(text)
    params = random_params(Net(text), seed=11)
    weights = write_weights(tmp_path / "w.caffemodel", text, params)
    prefix = str(tmp_path / "cifar")
    env = package_env()
    run = [sys.executable, "-m", "caffedata"]
    res = subprocess.run(run + ["import", str(proto), weights, prefix], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert os.path.isfile(prefix + "-symbol.json") and os.path.isfile(prefix + "-0000.params")
    x = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, mxnet as mx, caffedata\n"
        f"sym, arg, aux = mx.model.load_checkpoint({prefix!r}, 0)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "exe = sym.bind(mx.cpu(), dict(arg, data=mx.nd.array(x)), aux_states=aux)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, exe.forward(is_train=False)[0].asnumpy())\n")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mx_cifar10_quick(x, params), rtol=1e-5, atol=1e-6)
    out = str(tmp_path / "back.caffemodel")
    res = subprocess.run(run + ["export", prefix, "0", str(proto), out], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    back = Net(text, weights=out)
    for layer, arrays in params.items():
        for got, want in zip(back.params[layer], arrays):
            np.testing.assert_array_equal(got, want)
    res = subprocess.run(run + ["export", prefix, "0", str(tmp_path / "missing.prototxt"), out], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "missing.prototxt" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.prototxt"
    bad.write_text(text.replace('type: "ReLU"', 'type: "FancyReLU"'))
    res = subprocess.run(run + ["import", str(bad), weights, prefix], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "relu1" in res.stderr and "FancyReLU" in res.stderr and "Python" in res.stderr


# ---------------------------------------------------------------------------
# native=True: native MXNet operators where they equal Caffe, CaffeOp elsewhere

@pytest.mark.parametrize("name", sorted(NETS))
def test_native_path_agrees_with_exact_path(name, tmp_path):
    text = NETS[name]()
    params = random_params(Net(text), seed=13)
    path = write_weights(tmp_path / "w.caffemodel", text, params)
    exact = Net(text, weights=path)
    native = Net(text, weights=path, native=True)
    assert any(b.kind == "native" for b in native._bindings)
    assert native.blobs == exact.blobs and list(native.params) == list(exact.params)
    x = _input(exact)
    want = exact.forward(data=x, blobs=list(exact.blobs))
    got = native.forward(data=x, blobs=list(exact.blobs))
    for blob, value in want.items():
        np.testing.assert_allclose(got[blob], value, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(value).max()),
                                   err_msg=f"{name}: blob {blob}")
    # the native checkpoint triple computes the same outputs
    sym, arg, aux = native.symbol, native.arg_params, native.aux_params
    exe = sym.bind(mx.cpu(), dict(arg, data=mx.nd.array(x)), aux_states=aux)
    np.testing.assert_allclose(exe.forward(is_train=False)[0].asnumpy(), want[exact.outputs[0]], rtol=1e-5,
                               atol=1e-6)
    # and its weights go back to Caffe's blobs
    back = Net(text)
    back_native = Net(text, native=True)
    back_native.set_mxnet_params(arg, aux)
    for layer, arrays in params.items():
        for got_blob, want_blob in zip(back_native.params[layer], arrays):
            if exact._graph.layer(layer).type == "BatchNorm":
                continue  # stored as mean/var with factor 1: compared through the outputs above
            np.testing.assert_array_equal(got_blob, want_blob)
    del back


# ---------------------------------------------------------------------------
# Python layers inside a net

def test_python_layer_in_a_net_forward_and_backward(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    text = """
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "triple" type: "Python" bottom: "ip" top: "out"
            python_param { module: "pylayers_for_tests" layer: "ScaleByParam" param_str: '{"factor": 3}' } }
    """
    net = Net(text)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    w, b = net.params["ip"]
    np.testing.assert_allclose(net.forward(data=x)["out"], 3 * (x @ w.T + b), rtol=1e-5)
    g = net.backward(out=np.ones((2, 4), np.float32))
    np.testing.assert_allclose(g["data"], 3 * np.ones((2, 4)) @ w, rtol=1e-5)


def test_python_layer_blobs_are_net_params_saved_and_loaded(monkeypatch, tmp_path):
    """self.blobs of a Python layer: in net.params (setup's values), trained, saved, read back (as Caffe)."""
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    text = """
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
    layer { name: "cw" type: "Python" bottom: "data" top: "out"
            python_param { module: "pylayers_for_tests" layer: "ChannelWeights" } }
    """
    net = Net(text)
    np.testing.assert_allclose(net.params["cw"][0], [1.0, 1.1, 1.2], rtol=1e-6)  # setup's values
    net.params["cw"][0][...] = [2.0, -1.0, 0.5]  # reaches the next forward
    x = np.random.default_rng(2).normal(size=(2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(net.forward(data=x)["out"], x * np.array([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1),
                               rtol=1e-6)
    net.backward(out=np.ones_like(x))
    np.testing.assert_allclose(net.param_diffs["cw"][0], x.sum(axis=(0, 2, 3)), rtol=1e-5)
    net.save(str(tmp_path / "cw.caffemodel"))
    with open(tmp_path / "cw.caffemodel", "rb") as f:
        layers = {lp.name: lp for lp in NetParameter.FromString(f.read()).layer}
    assert list(layers["cw"].blobs[0].data) == [2.0, -1.0, 0.5]
    back = Net(text, weights=str(tmp_path / "cw.caffemodel"))
    np.testing.assert_array_equal(back.params["cw"][0], [2.0, -1.0, 0.5])
    assert back.arg_params["cw_0_weight"].asnumpy().tolist() == [2.0, -1.0, 0.5]


def test_caffe_loss_heads_give_module_n_times_caffe_gradient():
    """net.symbol's CaffeLoss heads: loss_weight x N x Caffe's gradient (MXNet's optimizer divides by N)."""
    mx.random.seed(5)
    net = Net(TINY)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    label = np.array([1, 0, 2], np.float32)
    net.forward(data=x, label=label)
    net.backward()
    mod = net.to_module(for_training=True)
    assert mod.data_names == ["data", "label"]
    mod.forward(mx.io.DataBatch([mx.nd.array(x), mx.nd.array(label)]), is_train=True)
    mod.backward()
    grad = mod._exec_group.execs[0].grad_dict["ip1_0_weight"].asnumpy()
    np.testing.assert_allclose(grad, 3 * net.param_diffs["ip1"][0], rtol=1e-5, atol=1e-7)


def test_train_phase_batchnorm_updates_caffe_accumulators():
    text = """
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 3 dim: 3 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "y" batch_norm_param { moving_average_fraction: 0.5 } }
    """
    net = Net(text, phase="TRAIN")
    rng = np.random.default_rng(2)
    x1, x2 = (rng.normal(1, 2, (4, 2, 3, 3)).astype(np.float32) for _ in range(2))
    y = net.forward(data=x1)["y"]
    mean, var = x1.mean(axis=(0, 2, 3)), x1.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y, (x1 - mean.reshape(1, 2, 1, 1)) / np.sqrt(var.reshape(1, 2, 1, 1) + 1e-5),
                               rtol=1e-4, atol=1e-5)
    net.forward(data=x2)
    m = 4 * 9
    s0, s1, f = net.params["bn"]
    np.testing.assert_allclose(f, [0.5 * 1 + 1])
    np.testing.assert_allclose(s0, x2.mean(axis=(0, 2, 3)) + 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(s1, m / (m - 1) * x2.var(axis=(0, 2, 3)) + 0.5 * m / (m - 1) * var, rtol=1e-4)
    # a TEST net reading these statistics (through net.save) normalises with them
    test = Net(text)
    for dst, src in zip(test.params["bn"], net.params["bn"]):
        dst[...] = src
    yt = test.forward(data=x1)["y"]
    mu, sig = s0 / f[0], s1 / f[0]
    np.testing.assert_allclose(yt, (x1 - mu.reshape(1, 2, 1, 1)) / np.sqrt(sig.reshape(1, 2, 1, 1) + 1e-5),
                               rtol=1e-4, atol=1e-5)


def test_inputs_the_weights_do_not_fit_are_refused_and_the_net_still_works():
    net = Net(nets.lenet(batch=2))
    with pytest.raises(errors.SpecError, match=r"conv1.*\(20, 1, 5, 5\).*\(20, 3, 5, 5\)"):
        net.forward(data=np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(errors.SpecError, match=r"ip1.*\(500, 800\).*\(500, 200\)"):
        net.forward(data=np.zeros((2, 1, 20, 20), np.float32))
    assert net.blobs["conv1"] == (2, 20, 24, 24)
    assert net.forward(data=np.zeros((2, 1, 28, 28), np.float32))["prob"].shape == (2, 10)


def test_missing_and_extra_weight_layers_follow_copy_trained_layers(tmp_path):
    text = nets.lenet(batch=2)
    params = random_params(Net(text), seed=21)
    # the file's net calls the last layer ip2_old: the target's ip2 is missing from it
    old_text = text.replace('name: "ip2"', 'name: "ip2_old"')
    params["ip2_old"] = params.pop("ip2")
    path = write_weights(tmp_path / "partial.caffemodel", old_text, params)
    renamed = text.replace('name: "conv1"', 'name: "conv1_new"')
    net = Net(renamed, weights=path)
    np.testing.assert_array_equal(net.params["conv2"][0], params["conv2"][0])
    assert any("Ignoring source layer conv1" in n for n in net.weight_notes)
    assert any("Ignoring source layer ip2_old" in n for n in net.weight_notes)
    assert any("ip2" in n and "initial values" in n for n in net.weight_notes)
    assert not net.params["ip2"][1].any()  # kept its filler (constant 0)
    # a same-named layer without blobs in the file: Caffe's "Incompatible number of blobs"
    params["ip2"] = []
    path = write_weights(tmp_path / "empty.caffemodel", text, {k: v for k, v in params.items() if k != "ip2_old"})
    with pytest.raises(errors.SpecError, match="Incompatible number of blobs for layer ip2"):
        Net(text, weights=path)


def test_stages_and_level_select_layers():
    text = """
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
    layer { name: "double" type: "Power" bottom: "data" top: "out" power_param { scale: 2 }
            include { stage: "deploy" } }
    layer { name: "triple" type: "Power" bottom: "data" top: "out" power_param { scale: 3 }
            exclude { stage: "deploy" } }
    layer { name: "extra" type: "Power" bottom: "data" top: "extra" include { min_level: 1 } }
    """
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_allclose(Net(text, stages=["deploy"]).forward(data=x)["out"], 2 * x)
    net = Net(text)
    np.testing.assert_allclose(net.forward(data=x)["out"], 3 * x)
    assert net.outputs == ["out"] and Net(text, level=1).outputs == ["extra", "out"]


def test_loss_layer_without_top_is_an_anonymous_loss():
    """Caffe's "(automatic)" top: in net.blobs, never an output, still the loss backward starts from."""
    mx.random.seed(6)
    named = Net(TINY.replace("loss_weight: 2", ""))
    anon = Net(TINY.replace('top: "loss" loss_weight: 2', ""))
    assert "(automatic)" in anon.blobs and anon.outputs == []
    for layer, blobs in named.params.items():
        for dst, src in zip(anon.params[layer], blobs):
            dst[...] = src
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    label = np.array([2, 2, 0], np.float32)
    named.forward(data=x, label=label)
    anon.forward(data=x, label=label)
    np.testing.assert_allclose(anon.backward()["data"], named.backward()["data"], rtol=1e-6)
    assert len(anon.symbol.list_outputs()) == 1  # the CaffeLoss head trains the net in a Module


def test_forward_start_end_and_forward_all_like_pycaffe():
    mx.random.seed(8)
    net = Net(TINY)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    label = np.array([0, 2, 1], np.float32)
    (w1, b1), (w2, b2) = net.params["ip1"], net.params["ip2"]
    pre = x.astype(np.float64) @ w1.T + b1
    full = net.forward(data=x, label=label, blobs=["ip1", "ip2"])
    np.testing.assert_allclose(full["ip1"], np.tanh(pre), rtol=1e-5)  # the in-place TanH wrote last
    # end: the layer's tops as that layer left them (before the in-place TanH)
    up_to_ip1 = net.forward(end="ip1")
    assert list(up_to_ip1) == ["ip1"]
    np.testing.assert_allclose(up_to_ip1["ip1"], pre, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.forward(end="tanh", blobs=["ip1"])["ip1"], np.tanh(pre), rtol=1e-5)
    # start: allowed where nothing before it is needed; else a clear error
    np.testing.assert_allclose(net.forward(start="ip1", end="ip2")["ip2"], full["ip2"], rtol=1e-6)
    with pytest.raises(errors.SpecError, match="start='ip2' needs blob 'ip1'"):
        net.forward(start="ip2")
    with pytest.raises(errors.SpecError, match="end='nope' is not a layer"):
        net.forward(end="nope")
    with pytest.raises(errors.SpecError, match="call forward first"):
        net.backward()  # a partial forward cannot be back-propagated
    # forward_all: chunks of the prototxt's batch (3), the last one short
    xs = rng.normal(size=(7, 4)).astype(np.float32)
    labels = np.arange(7, dtype=np.float32) % 3
    every = net.forward_all(data=xs, label=labels, blobs=["ip2"])
    want = np.tanh(xs.astype(np.float64) @ w1.T + b1) @ w2.T + b2
    np.testing.assert_allclose(every["ip2"], want, rtol=1e-4, atol=1e-5)
    assert every["loss"].shape == (3,)  # one loss per chunk
    assert net.blobs["data"] == (3, 4)  # back to the prototxt's batch


def test_public_structure_and_total_loss():
    """What the solver reads from a Net: name, layer types, NetParameter copy, data layers, heads, loss."""
    mx.random.seed(7)
    net = Net(TINY.replace('top: "loss" loss_weight: 2', "loss_weight: 3"))  # an anonymous loss
    assert net.name == "tiny" and net.data_layers == {}
    assert net.layer_types == ["Input", "InnerProduct", "TanH", "InnerProduct", "SoftmaxWithLoss"]
    param = net.net_param
    param.layer[1].name = "changed"
    assert net.net_param.layer[1].name == "ip1"  # a copy
    assert net.symbol_outputs == [("(automatic)0", 3.0)] and net.loss is None
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    label = np.array([1, 0, 2], np.float32)
    net.forward(data=x, label=label)
    (w1, b1), (w2, b2) = net.params["ip1"], net.params["ip2"]
    p = np_softmax(np.tanh(x.astype(np.float64) @ w1.T + b1) @ w2.T + b2)
    np.testing.assert_allclose(net.loss, 3 * -np.mean(np.log(p[np.arange(3), label.astype(int)])), rtol=1e-5)
    train = Net(nets.lenet_train_test("no_such_train_db", "no_such_test_db"), phase="TRAIN")
    assert train.data_layers == {"mnist": ["data", "label"]}


def test_registered_python_type_fills_in_a_missing_layer_type(monkeypatch):
    from caffedata.net import python_layer

    class FancyReLU(python_layer.Layer):
        """y = max(x, 0.1 x), written the pycaffe way."""

        def setup(self, bottom, top):
            pass

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = np.maximum(bottom[0].data, 0.1 * bottom[0].data)

        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = top[0].diff * np.where(bottom[0].data > 0, 1.0, 0.1)

    monkeypatch.setitem(python_layer._registry, "FancyReLU", FancyReLU)
    text = nets.lenet(batch=2).replace('type: "ReLU"', 'type: "FancyReLU"')
    net = Net(text)
    x = _input(net)
    out = net.forward(data=x, blobs=["ip1"])
    p = net.params
    h = mx.nd.Pooling(mx.nd.Convolution(mx.nd.array(x), mx.nd.array(p["conv1"][0]), mx.nd.array(p["conv1"][1]),
                                        kernel=(5, 5), num_filter=20),
                      kernel=(2, 2), stride=(2, 2), pool_type="max", pooling_convention="full")
    h = mx.nd.Pooling(mx.nd.Convolution(h, mx.nd.array(p["conv2"][0]), mx.nd.array(p["conv2"][1]), kernel=(5, 5),
                                        num_filter=50),
                      kernel=(2, 2), stride=(2, 2), pool_type="max", pooling_convention="full").asnumpy()
    ip1 = h.reshape(2, -1) @ p["ip1"][0].T + p["ip1"][1]
    np.testing.assert_allclose(out["ip1"], np.maximum(ip1, 0.1 * ip1), rtol=1e-4, atol=1e-5)


def test_hdf5_weights_round_trip(tmp_path):
    text = nets.fcn(batch=1)
    params = random_params(Net(text), seed=17)
    net = Net(text, weights=write_weights(tmp_path / "w.caffemodel", text, params))
    net.save_hdf5(str(tmp_path / "w.caffemodel.h5"))
    again = Net(text, weights=str(tmp_path / "w.caffemodel.h5"))
    for layer, arrays in params.items():
        for got, want in zip(again.params[layer], arrays):
            np.testing.assert_array_equal(got, want)


def test_split_blobs_of_an_input_hold_the_input():
    net = Net(nets.fcn(batch=1))
    splits = [b for b in net.blobs if b.startswith("data_") and "_split_" in b]
    assert len(splits) == 2  # data feeds conv1_1 and the Crop
    x = _input(net)
    out = net.forward(data=x, blobs=splits)
    for b in splits:
        np.testing.assert_array_equal(out[b], x)
    assert net.backward(score_bg=np.ones((1, 1, 20, 20)), score_fg=np.zeros((1, 3, 20, 20)))["data"].shape == x.shape


def test_pycaffe_positional_phase_and_missing_weights_file(tmp_path):
    text = nets.lenet_train_test(str(tmp_path / "no_db"), str(tmp_path / "no_db"))
    assert Net(text, 0).phase == "TRAIN" and Net(text, 1).outputs == ["accuracy", "loss"]
    with pytest.raises(errors.DatabaseError, match="nope.caffemodel"):
        Net(nets.lenet(), weights=str(tmp_path / "nope.caffemodel"))
    net = Net(text)  # the DB does not exist: shapes come with the first forward
    with pytest.raises(errors.SpecError, match="reshape"):
        net.params
    out = net.forward(data=np.zeros((3, 1, 28, 28), np.float32), label=np.zeros(3, np.float32))
    assert out["loss"].shape == () and net.blobs["ip1"] == (3, 500)
