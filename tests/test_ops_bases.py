"""The ops library's structure: Caffe's SetUp/CheckBlobCounts, the shared
LossLayer normaliser, per-layer default fillers through the ctypes API, the
INT_MAX blob limit, the text parser's depth limit, UTF-8-safe error messages,
and the fields of BVLC's final caffe.proto (Pooling round_mode, spatial
InfogainLoss, Clip, Swish).  References are plain NumPy, hand-computed sizes and
numeric gradients.
"""
import re
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from conftest import package_env

import mxnet as mx  # noqa: E402
import caffedata  # noqa: E402,F401  (installs mx.sym.CaffeOp)
from caffedata.errors import SpecError  # noqa: E402
from caffedata.mxnet import library  # noqa: E402

if not os.path.isfile(library.library_path()):
    pytest.skip("the caffedata ops library is not built (python setup.py build_ext --inplace)",
                allow_module_level=True)

F64 = np.float64


def _run_op(proto, bottoms, num_out=1, head=None):
    """Forward + backward of mx.nd.CaffeOp in float64; the head gradient is the loss weight."""
    xs = [mx.nd.array(b, dtype="float64") for b in bottoms]
    xs[0].attach_grad()
    with mx.autograd.record():
        out = mx.nd.CaffeOp(*xs, num_data=len(xs), num_out=num_out, prototxt=proto)
    first = out[0] if num_out > 1 else out
    first.backward(mx.nd.array(head if head is not None else np.ones(first.shape), dtype="float64"))
    return first.asnumpy(), xs[0].grad.asnumpy()


def _numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        d = np.zeros_like(x)
        d.flat[i] = eps
        g.flat[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


# ---------------------------------------------------------------------------
# SetUp: Caffe's CheckBlobCounts, with the layer type and both counts named.

@pytest.mark.parametrize("proto,shapes,num_out,message", [
    ('layer{type:"ReLU"}', [(2, 3), (2, 3)], 1, "ReLU layer takes exactly 1 bottom blob(s), got 2"),
    ('layer{type:"Pooling" pooling_param{pool: AVE kernel_size: 2}}', [(1, 1, 4, 4)], 2,
     "Pooling layer takes at most 1 top blob(s), got 2"),
    ('layer{type:"SoftmaxWithLoss"}', [(2, 3), (2,)], 3, "SoftmaxWithLoss layer takes at most 2 top blob(s), got 3"),
    ('layer{type:"InfogainLoss"}', [(2, 3)], 1, "InfogainLoss layer takes at least 2 bottom blob(s), got 1"),
    ('layer{type:"Eltwise"}', [(2, 3)], 1, "Eltwise layer takes at least 2 bottom blob(s), got 1"),
])
def test_blob_count_errors_name_layer_and_counts(proto, shapes, num_out, message):
    data = [mx.sym.Variable(f"d{i}", shape=s) for i, s in enumerate(shapes)]
    sym = mx.sym.CaffeOp(*data, num_data=len(data), num_out=num_out, prototxt=proto)
    with pytest.raises(mx.base.MXNetError, match=re.escape(message)):
        sym.infer_shape()


def test_blob_count_error_through_the_c_api():
    with pytest.raises(SpecError, match="ReLU layer takes exactly 1 bottom blob"):
        library.layer_shapes('layer{type:"ReLU"}', [(2, 3), (2, 3)])


def test_setup_parses_once_and_reshapes_for_new_shapes():
    # One op state, two batch sizes: parameters come from LayerSetUp, shapes from Reshape.
    proto = 'layer{type:"Convolution" convolution_param{num_output: 2 kernel_size: 3 pad: 1}}'
    w = np.random.RandomState(0).randn(2, 1, 3, 3)
    b = np.zeros(2)
    net = mx.sym.CaffeOp(mx.sym.Variable("data"), num_weight=2, prototxt=proto, name="c")
    for n in (1, 3):
        x = np.random.RandomState(n).randn(n, 1, 5, 5)
        ex = net.bind(mx.cpu(), {"data": mx.nd.array(x), "c_0_weight": mx.nd.array(w), "c_1_bias": mx.nd.array(b)})
        y = ex.forward()[0].asnumpy()
        assert y.shape == (n, 2, 5, 5)
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        ref = np.zeros((n, 2, 5, 5))
        for o in range(2):
            for i in range(5):
                for j in range(5):
                    ref[:, o, i, j] = (xp[:, 0, i:i + 3, j:j + 3] * w[o, 0]).sum(axis=(1, 2))
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# One normaliser (LossLayer::GetNormalizer) for every loss.

def _sigmoid_ce_np(x, t, ignore=None):
    valid = np.ones_like(t, dtype=bool) if ignore is None else (t != ignore)
    loss = -(x * (t - (x >= 0)) - np.log1p(np.exp(x - 2 * x * (x >= 0))))
    grad = 1 / (1 + np.exp(-x)) - t
    return (loss * valid).sum(), grad * valid, valid.sum()


@pytest.mark.parametrize("loss_param,norm", [
    ("", "batch"),  # SigmoidCrossEntropyLoss keeps BATCH_SIZE as its default
    ("normalization: FULL", "full"), ("normalization: VALID", "valid"), ("normalization: BATCH_SIZE", "batch"),
    ("normalization: NONE", "none"), ("normalize: true", "valid"), ("normalize: false", "batch")])
def test_sigmoid_cross_entropy_normalization(loss_param, norm):
    rng = np.random.RandomState(3)
    x = rng.randn(4, 3, 2)
    t = rng.randint(0, 2, size=(4, 3, 2)).astype(F64)
    t[0, 0, 0] = t[2, 1, 1] = -1  # ignored
    proto = 'layer{type:"SigmoidCrossEntropyLoss" loss_param{ignore_label: -1 %s}}' % loss_param
    loss, grad = _run_op(proto, [x, t], head=[2.0])
    total, g, valid = _sigmoid_ce_np(x, t, ignore=-1)
    denom = {"full": x.size, "valid": valid, "batch": 4, "none": 1}[norm]
    np.testing.assert_allclose(loss[0], total / denom, rtol=1e-12)
    np.testing.assert_allclose(grad, 2.0 * g / denom, rtol=1e-10, atol=1e-14)


def test_bad_normalization_names_the_modes():
    # The Python schema refuses it first; the C++ path (mx.sym.load of a graph) names the modes.
    with pytest.raises(SpecError, match="FULL, VALID, BATCH_SIZE or NONE"):
        library.layer_shapes('layer{type:"SigmoidCrossEntropyLoss" loss_param{normalization: 7}}', [(2, 3), (2, 3)])


# ---------------------------------------------------------------------------
# Spatial InfogainLoss (infogain_loss_param.axis), normalised by the shared rule.

def _infogain_np(p, lab, H, axis, ignore=None):
    pm = np.moveaxis(p, axis, -1).reshape(-1, p.shape[axis])
    lab = lab.reshape(-1).astype(int)
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    logp = np.log(np.maximum(pm, 1e-20))
    loss = -sum((H[lab[i]] * logp[i]).sum() for i in range(len(lab)) if valid[i])
    g = np.zeros_like(pm)
    for i in range(len(lab)):
        if valid[i]:
            g[i] = -H[lab[i]] / np.maximum(pm[i], 1e-20)
    shape = np.moveaxis(p, axis, -1).shape
    return loss, np.moveaxis(g.reshape(shape), -1, axis), valid.sum()


@pytest.mark.parametrize("extra,norm", [("", "valid"), ("loss_param{normalization: FULL}", "full"),
                                        ("loss_param{normalization: BATCH_SIZE}", "batch"),
                                        ("loss_param{normalization: NONE}", "none")])
def test_spatial_infogain_loss(extra, norm):
    rng = np.random.RandomState(5)
    scores = rng.randn(2, 3, 2, 2)
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    lab = rng.randint(0, 3, size=(2, 2, 2)).astype(F64)
    lab[1, 0, 1] = 9  # ignored
    H = rng.rand(3, 3)
    proto = 'layer{type:"InfogainLoss" infogain_loss_param{axis: 1} loss_param{ignore_label: 9} %s}' % extra
    proto = proto.replace("loss_param{ignore_label: 9} loss_param{", "loss_param{ignore_label: 9 ")
    loss, grad = _run_op(proto, [p, lab, H], head=[1.5])
    total, g, valid = _infogain_np(p, lab, H, 1, ignore=9)
    denom = {"full": 8, "valid": valid, "batch": 2, "none": 1}[norm]
    np.testing.assert_allclose(loss[0], total / denom, rtol=1e-12)
    np.testing.assert_allclose(grad, 1.5 * g / denom, rtol=1e-10)
    # The gradient is the derivative of the loss.
    def f(pp):
        return _run_op(proto, [pp, lab, H])[0][0]
    np.testing.assert_allclose(grad / 1.5, _numeric_grad(f, p), rtol=1e-4, atol=1e-7)


def test_infogain_axis_label_count_mismatch():
    sym = mx.sym.CaffeOp(mx.sym.Variable("p", shape=(2, 3, 4)), mx.sym.Variable("l", shape=(2, 3)),
                         mx.sym.Variable("h", shape=(3, 3)), num_data=3,
                         prototxt='layer{type:"InfogainLoss" infogain_loss_param{axis: 1}}')
    with pytest.raises(mx.base.MXNetError, match="number of labels must match number of predictions"):
        sym.infer_shape()


# ---------------------------------------------------------------------------
# Pooling round_mode (FLOOR / CEIL), sizes computed by hand.

@pytest.mark.parametrize("hw,k,s,pad,ceil_out,floor_out", [
    (6, 3, 2, 0, 3, 2),   # (6-3)/2 = 1.5: ceil 2+1, floor 1+1
    (6, 3, 2, 1, 4, 3),   # (6+2-3)/2 = 2.5: ceil 3+1 (last window starts at 6 < 6+1), floor 2+1
    (7, 3, 2, 0, 3, 3),   # exact
    (5, 2, 2, 1, 3, 3),   # (5+2-2)/2 = 2.5: ceil 4, last window starts at 6 >= 5+1 -> 3; floor 3
])
def test_pooling_round_mode_sizes(hw, k, s, pad, ceil_out, floor_out):
    for mode, want in (("", ceil_out), ("round_mode: CEIL", ceil_out), ("round_mode: FLOOR", floor_out)):
        proto = f'layer{{type:"Pooling" pooling_param{{pool: MAX kernel_size: {k} stride: {s} pad: {pad} {mode}}}}}'
        _, tops = library.layer_shapes(proto, [(1, 2, hw, hw)])
        assert tops == [(1, 2, want, want)], (proto, tops)
        sym = mx.sym.CaffeOp(mx.sym.Variable("data"), prototxt=proto)  # the Python schema accepts it too
        assert sym.infer_shape(data=(1, 2, hw, hw))[1] == [(1, 2, want, want)]


def test_floor_pooling_values_and_gradient():
    rng = np.random.RandomState(11)
    x = rng.permutation(2 * 6 * 6).reshape(1, 2, 6, 6).astype(F64)  # distinct values: unique argmax
    for pool in ("MAX", "AVE"):
        proto = f'layer{{type:"Pooling" pooling_param{{pool: {pool} kernel_size: 3 stride: 2 round_mode: FLOOR}}}}'
        y, g = _run_op(proto, [x])
        assert y.shape == (1, 2, 2, 2)
        red = np.max if pool == "MAX" else np.mean
        ref = np.array([[[[red(x[0, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]) for j in range(2)] for i in range(2)]
                         for c in range(2)]])
        np.testing.assert_allclose(y, ref, rtol=1e-12)
        np.testing.assert_allclose(g, _numeric_grad(lambda v: _run_op(proto, [v])[0].sum(), x), rtol=1e-5, atol=1e-7)


def test_unknown_round_mode():
    with pytest.raises(SpecError, match="round_mode"):
        library.layer_info('layer{type:"Pooling" pooling_param{kernel_size: 2 round_mode: ROUND}}')


# ---------------------------------------------------------------------------
# Clip and Swish: forward against NumPy, backward against NumPy and numeric gradients.

def test_clip_forward_backward():
    rng = np.random.RandomState(2)
    x = rng.uniform(-3, 3, size=(2, 3, 4))
    x[np.abs(np.abs(x) - 1) < 0.05] = 0.5  # keep the numeric gradient away from the kinks
    proto = 'layer{type:"Clip" clip_param{min: -1 max: 1}}'
    head = rng.randn(*x.shape)
    y, g = _run_op(proto, [x], head=head)
    np.testing.assert_allclose(y, np.clip(x, -1, 1), rtol=0)
    np.testing.assert_allclose(g, head * ((x >= -1) & (x <= 1)), rtol=0)
    num = _numeric_grad(lambda v: (_run_op(proto, [v])[0] * head).sum(), x)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


def test_clip_needs_min_and_max():
    with pytest.raises(SpecError, match="clip_param"):
        library.layer_info('layer{type:"Clip" clip_param{min: 0}}')


@pytest.mark.parametrize("beta", [None, 1.0, 0.5, 2.0])
def test_swish_forward_backward(beta):
    rng = np.random.RandomState(4)
    x = rng.randn(2, 3, 5) * 3
    b = 1.0 if beta is None else beta
    proto = 'layer{type:"Swish"%s}' % ("" if beta is None else f" swish_param{{beta: {beta}}}")
    head = rng.randn(*x.shape)
    y, g = _run_op(proto, [x], head=head)
    sig = 1 / (1 + np.exp(-b * x))
    np.testing.assert_allclose(y, x * sig, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g, head * (sig + b * x * sig * (1 - sig)), rtol=1e-10, atol=1e-14)
    num = _numeric_grad(lambda v: (_run_op(proto, [v])[0] * head).sum(), x)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------
# Default fillers, declared by the C++ layers and read through the ctypes API.

@pytest.mark.parametrize("proto,num_bottoms,want", [
    ('layer{type:"PReLU"}', 1, [("layer_default", "constant", 0.25)]),
    ('layer{type:"PReLU" prelu_param{filler{type: "constant" value: 0.1}}}', 1, [("user", "constant", 0.1)]),
    ('layer{type:"Scale" scale_param{bias_term: true}}', 1,
     [("layer_default", "constant", 1.0), ("layer_default", "constant", 0.0)]),
    ('layer{type:"Scale" scale_param{bias_term: true bias_filler{type: "constant" value: 3}}}', 2,
     [("user", "constant", 3.0)]),
    ('layer{type:"Bias"}', 1, [("layer_default", "constant", 0.0)]),
    ('layer{type:"InnerProduct" inner_product_param{num_output: 4}}', 1,
     [("framework", "constant", 0.0), ("framework", "constant", 0.0)]),
    ('layer{type:"Convolution" convolution_param{num_output: 4 kernel_size: 3 bias_term: false '
     'weight_filler{type: "xavier" variance_norm: AVERAGE}}}', 1, [("user", "xavier", 0.0)]),
    ('layer{type:"Embed" embed_param{num_output: 4 input_dim: 5 weight_filler{type: "gaussian" std: 0.5}}}', 1,
     [("user", "gaussian", 0.0), ("framework", "constant", 0.0)]),
])
def test_layer_default_fillers(proto, num_bottoms, want):
    info = library.layer_info(proto, num_bottoms=num_bottoms)
    got = [(f.origin, f.params["type"], f.params["value"]) for f in info.fillers]
    assert got == [(o, t, pytest.approx(v)) for o, t, v in want]
    if "xavier" in proto:
        assert info.fillers[0].params["variance_norm"] == "AVERAGE"
    if "gaussian" in proto:
        assert info.fillers[0].params["std"] == pytest.approx(0.5)


def test_default_fillers_reach_the_module():
    data = mx.sym.Variable("data")
    net = mx.sym.CaffeOp(data, num_weight=1, prototxt='layer{type:"PReLU"}', name="p")
    net = mx.sym.CaffeOp(net, num_weight=2, prototxt='layer{type:"Scale" scale_param{bias_term: true}}', name="s")
    mod = mx.mod.Module(net, data_names=["data"], label_names=None)
    mod.bind(data_shapes=[("data", (2, 3, 4, 4))])
    mod.init_params(mx.init.Uniform(5.0))
    args, _ = mod.get_params()
    np.testing.assert_array_equal(args["p_0_weight"].asnumpy(), 0.25)
    np.testing.assert_array_equal(args["s_0_weight"].asnumpy(), 1.0)
    np.testing.assert_array_equal(args["s_1_bias"].asnumpy(), 0.0)


# ---------------------------------------------------------------------------
# Blobs over INT_MAX elements: a clear error in shape inference, never a crash.

def _in_subprocess(code, timeout=180):
    env = package_env()
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=timeout)


def test_outputs_over_int_max_raise_in_shape_inference():
    r = _in_subprocess("""
        import mxnet as mx, caffedata
        cases = [
            ('layer{type:"Embed" embed_param{num_output: 1000000000 input_dim: 10}}', 2, (2,)),
            ('layer{type:"Tile" tile_param{axis: 1 tiles: 1000000000}}', 0, (2, 3)),
            ('layer{type:"InnerProduct" inner_product_param{num_output: 1073741824}}', 2, (2, 4)),
        ]
        for proto, nw, shape in cases:
            sym = mx.sym.CaffeOp(mx.sym.Variable("data"), num_weight=nw, prototxt=proto)
            try:
                sym.infer_shape(data=shape)
            except mx.base.MXNetError as e:
                assert "INT_MAX" in str(e), str(e)
                print("REFUSED")
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("REFUSED") == 3, r.stdout


def test_int_max_boundary_through_the_c_api():
    _, tops = library.layer_shapes('layer{type:"Tile" tile_param{axis: 0 tiles: 2147483647}}', [(1,)])
    assert tops == [(2147483647,)]
    with pytest.raises(SpecError, match="INT_MAX"):
        library.layer_shapes('layer{type:"Tile" tile_param{axis: 0 tiles: 1073741824}}', [(2,)])


# ---------------------------------------------------------------------------
# The C++ text parser's depth limit.

def test_deeply_nested_prototxt_is_refused_not_a_stack_overflow():
    r = _in_subprocess("""
        import json, mxnet as mx, caffedata
        sym = mx.sym.CaffeOp(mx.sym.Variable("data"), prototxt='layer{type:"ReLU"}', name="r")
        graph = json.loads(sym.tojson())
        deep = 'layer { type: "ReLU" ' + 'a { ' * 200000 + '}' * 200000 + ' }'
        for node in graph["nodes"]:
            if node["op"] == "_caffedata_op":
                node["attrs"]["prototxt"] = deep
        loaded = mx.sym.load_json(json.dumps(graph))
        try:
            loaded.infer_shape(data=(2, 3))
        except mx.base.MXNetError as e:
            assert "nested more than 100 levels" in str(e), str(e)[-2000:]
            print("REFUSED")
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "REFUSED" in r.stdout


def test_moderate_nesting_still_parses():
    # Unknown sub-messages are ignored by the schema-free parser; 50 levels are fine.
    proto = 'layer { type: "ReLU" ' + 'a { ' * 50 + '}' * 50 + ' }'
    assert library.layer_shapes(proto, [(2, 3)])[1] == [(2, 3)]


# ---------------------------------------------------------------------------
# C++ messages cut inside a UTF-8 character.

@pytest.mark.parametrize("prefix", ["", "x", "xy"])
def test_long_utf8_error_messages_are_cut_at_a_character(prefix):
    proto = 'layer { type: "' + prefix + "\u00e9\u20ac" * 1500 + '" }'
    with pytest.raises(SpecError) as err:
        library.layer_info(proto)
    msg = str(err.value)
    assert "\ufffd" not in msg
    assert "\u00e9\u20ac" in msg
