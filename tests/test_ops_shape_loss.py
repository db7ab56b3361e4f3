"""Caffe 1.0 shape, reduction and loss layers run through CaffeOp / CaffeLoss.

Layers: Concat, Slice, Split, Eltwise, Flatten, Reshape, Crop, Tile (ops/shape_layers.cc);
Reduction, ArgMax, Accuracy (ops/reduce_layers.cc); EuclideanLoss, SigmoidCrossEntropyLoss,
HingeLoss, MultinomialLogisticLoss, InfogainLoss, ContrastiveLoss (ops/losses.cc).

Every expectation is independent of the C++ code: plain-NumPy transcriptions of Caffe's
formulas, MXNet's own operators where the semantics agree, hand-computed edge cases, and
float64 numeric gradients (mx.test_utils.check_numeric_gradient).  Loss layers run through
CaffeOp too, where the head gradient is the loss weight, so their gradients are Caffe's own;
the CaffeLoss scaling is tested separately.
"""
import numpy as np
import pytest

import mxnet as mx  # noqa: E402
import caffedata  # noqa: E402

if not hasattr(mx.sym, "CaffeOp"):
    pytest.skip("caffedata ops library not built (python setup.py build_ext --inplace)",
                allow_module_level=True)

from mxnet.base import MXNetError  # noqa: E402

RNG = np.random.default_rng(1234)


def layer(ltype, body=""):
    return 'layer { type: "%s" %s }' % (ltype, body)


def fwd(proto, *inputs, num_out=1, dtype=np.float64):
    """Forward through mx.nd.CaffeOp; returns a list of NumPy outputs."""
    args = [mx.nd.array(x, dtype=dtype) for x in inputs]
    out = mx.nd.CaffeOp(*args, num_data=len(args), num_out=num_out, prototxt=proto)
    if isinstance(out, mx.nd.NDArray):
        out = [out]
    return [o.asnumpy() for o in out]


def grad_check(proto, inputs, num_out=1, grad_nodes=None, eps=1e-6, rtol=1e-5, atol=1e-8):
    """Numeric gradient check (float64) of CaffeOp; all outputs flattened and joined."""
    names = ["x%d" % i for i in range(len(inputs))]
    sym = mx.sym.CaffeOp(*[mx.sym.Variable(n) for n in names], num_data=len(names),
                         num_out=num_out, prototxt=proto)
    if num_out > 1:
        sym = mx.sym.concat(*[mx.sym.reshape(sym[i], shape=(-1,)) for i in range(num_out)], dim=0)
    location = {n: np.asarray(x, dtype=np.float64) for n, x in zip(names, inputs)}
    mx.test_utils.check_numeric_gradient(
        sym, location, grad_nodes=grad_nodes or names, numeric_eps=eps, rtol=rtol, atol=atol,
        dtype=np.float64)


def backward(proto, inputs, head_grads, num_out=1, need=None):
    """Runs forward+backward with given head gradients; returns input gradients."""
    xs = [mx.nd.array(x, dtype=np.float64) for x in inputs]
    need = range(len(xs)) if need is None else need
    for i in need:
        xs[i].attach_grad()
    with mx.autograd.record():
        out = mx.nd.CaffeOp(*xs, num_data=len(xs), num_out=num_out, prototxt=proto)
    outs = [out] if isinstance(out, mx.nd.NDArray) else list(out)
    mx.autograd.backward(outs, [mx.nd.array(g, dtype=np.float64) for g in head_grads])
    return [xs[i].grad.asnumpy() for i in need]


def assert_layer_error(match, proto, *inputs, num_out=1):
    with pytest.raises(MXNetError, match=match):
        fwd(proto, *inputs, num_out=num_out)


# ---------------------------------------------------------------------------
# Concat


def test_concat_matches_mxnet_concat_on_each_axis():
    a = RNG.standard_normal((2, 3, 4))
    b = RNG.standard_normal((2, 3, 5))
    c = RNG.standard_normal((2, 3, 1))
    for proto in (layer("Concat", "concat_param { axis: 2 }"),
                  layer("Concat", "concat_param { axis: -1 }"),
                  layer("Concat", "concat_param { concat_dim: 2 }")):
        (y,) = fwd(proto, a, b, c)
        ref = mx.nd.concat(mx.nd.array(a), mx.nd.array(b), mx.nd.array(c), dim=2).asnumpy()
        np.testing.assert_allclose(y, ref, rtol=1e-6)
    # default axis is 1 (channels)
    (y,) = fwd(layer("Concat"), a, RNG.standard_normal((2, 2, 4)))
    assert y.shape == (2, 5, 4)


def test_concat_gradient_and_errors():
    grad_check(layer("Concat", "concat_param { axis: 1 }"),
               [RNG.standard_normal((2, 2, 3)), RNG.standard_normal((2, 4, 3))])
    grad_check(layer("Concat", "concat_param { axis: 0 }"), [RNG.standard_normal((3, 2))])
    assert_layer_error("same shape except at axis", layer("Concat"),
                       np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    assert_layer_error("not both", layer("Concat", "concat_param { axis: 1 concat_dim: 1 }"),
                       np.zeros((2, 3)), np.zeros((2, 3)))


# ---------------------------------------------------------------------------
# Slice


def test_slice_points_and_equal_split_match_slice_axis():
    x = RNG.standard_normal((2, 7, 3))
    ys = fwd(layer("Slice", "slice_param { axis: 1 slice_point: 2 slice_point: 3 }"), x, num_out=3)
    bounds = [(0, 2), (2, 3), (3, 7)]
    for y, (b, e) in zip(ys, bounds):
        ref = mx.nd.slice_axis(mx.nd.array(x, dtype=np.float64), axis=1, begin=b, end=e).asnumpy()
        np.testing.assert_array_equal(y, ref)
    ys = fwd(layer("Slice", "slice_param { slice_dim: 2 }"), x, num_out=3)
    for k, y in enumerate(ys):
        np.testing.assert_array_equal(y, x[:, :, k:k + 1])
    ys = fwd(layer("Slice", "slice_param { axis: -1 }"), RNG.standard_normal((4, 6)), num_out=2)
    assert [y.shape for y in ys] == [(4, 3), (4, 3)]


def test_slice_gradient_and_errors():
    grad_check(layer("Slice", "slice_param { axis: 0 slice_point: 1 }"),
               [RNG.standard_normal((3, 2, 2))], num_out=2)
    grad_check(layer("Slice", "slice_param { axis: 2 }"), [RNG.standard_normal((2, 2, 4))], num_out=2)
    assert_layer_error("evenly divide", layer("Slice"), np.zeros((2, 5)), num_out=2)
    assert_layer_error("slice_point", layer("Slice", "slice_param { slice_point: 1 }"),
                       np.zeros((2, 5)), num_out=3)
    assert_layer_error("increasing",
                       layer("Slice", "slice_param { slice_point: 3 slice_point: 2 }"),
                       np.zeros((2, 5)), num_out=3)


# ---------------------------------------------------------------------------
# Split


def test_split_copies_forward_and_sums_gradients():
    x = RNG.standard_normal((3, 4))
    ys = fwd(layer("Split"), x, num_out=3)
    for y in ys:
        np.testing.assert_array_equal(y, x)
    heads = [RNG.standard_normal((3, 4)) for _ in range(3)]
    (g,) = backward(layer("Split"), [x], heads, num_out=3)
    np.testing.assert_allclose(g, heads[0] + heads[1] + heads[2], rtol=1e-12)
    grad_check(layer("Split"), [x], num_out=2)


# ---------------------------------------------------------------------------
# Eltwise


def test_eltwise_forward_sum_prod_max():
    a, b, c = (RNG.standard_normal((2, 3, 2)) for _ in range(3))
    (y,) = fwd(layer("Eltwise"), a, b, c)  # default SUM
    np.testing.assert_allclose(y, a + b + c, rtol=1e-12)
    (y,) = fwd(layer("Eltwise", "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }"),
               a, b, c)
    np.testing.assert_allclose(y, a - 0.5 * b + 2 * c, rtol=1e-12)
    (y,) = fwd(layer("Eltwise", "eltwise_param { operation: PROD }"), a, b, c)
    np.testing.assert_allclose(y, a * b * c, rtol=1e-12)
    (y,) = fwd(layer("Eltwise", "eltwise_param { operation: MAX }"), a, b, c)
    np.testing.assert_array_equal(y, np.maximum(np.maximum(a, b), c))


def test_eltwise_gradients():
    a, b, c = (RNG.uniform(0.5, 2.0, (2, 3)) * RNG.choice([-1, 1], (2, 3)) for _ in range(3))
    grad_check(layer("Eltwise", "eltwise_param { operation: SUM coeff: 0.5 coeff: -3 coeff: 1 }"),
               [a, b, c])
    grad_check(layer("Eltwise", "eltwise_param { operation: PROD }"), [a, b, c])
    grad_check(layer("Eltwise", "eltwise_param { operation: PROD stable_prod_grad: false }"),
               [a, b, c])
    # MAX: inputs well apart so the numeric derivative is defined
    base = np.arange(6, dtype=np.float64).reshape(2, 3)
    grad_check(layer("Eltwise", "eltwise_param { operation: MAX }"),
               [base, base[::-1] + 0.5, np.full((2, 3), 2.25)])


def test_eltwise_max_tie_routes_gradient_like_caffe():
    # Caffe: bottom0 wins over bottom1 only if strictly greater; later bottoms only if strictly
    # greater than the running max.  Ties therefore go to bottom 1, never to bottom 2.
    a = np.array([[1.0, 2.0, 3.0]])
    b = np.array([[1.0, 5.0, 0.0]])
    c = np.array([[1.0, 5.0, 3.0]])
    g = np.array([[10.0, 20.0, 30.0]])
    ga, gb, gc = backward(layer("Eltwise", "eltwise_param { operation: MAX }"), [a, b, c], [g])
    np.testing.assert_array_equal(ga, [[0, 0, 30]])
    np.testing.assert_array_equal(gb, [[10, 20, 0]])
    np.testing.assert_array_equal(gc, [[0, 0, 0]])


def test_eltwise_errors():
    assert_layer_error("one coefficient per bottom",
                       layer("Eltwise", "eltwise_param { coeff: 1 }"), np.zeros(3), np.zeros(3))
    assert_layer_error("only takes coefficients for summation",
                       layer("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }"),
                       np.zeros(3), np.zeros(3))
    assert_layer_error("same shape", layer("Eltwise"), np.zeros((2, 3)), np.zeros((3, 2)))


# ---------------------------------------------------------------------------
# Flatten and Reshape


def test_flatten_shapes_and_gradient():
    x = RNG.standard_normal((2, 3, 4, 5))
    (y,) = fwd(layer("Flatten"), x)
    np.testing.assert_array_equal(y, x.reshape(2, 60))
    (y,) = fwd(layer("Flatten", "flatten_param { axis: 1 end_axis: 2 }"), x)
    np.testing.assert_array_equal(y, x.reshape(2, 12, 5))
    (y,) = fwd(layer("Flatten", "flatten_param { axis: 0 end_axis: -2 }"), x)
    assert y.shape == (24, 5)
    (y,) = fwd(layer("Flatten", "flatten_param { axis: 2 end_axis: 1 }"), x)  # empty range
    assert y.shape == (2, 3, 1, 4, 5)
    grad_check(layer("Flatten"), [RNG.standard_normal((2, 2, 3))])


@pytest.mark.parametrize("body, in_shape, out_shape", [
    # examples from the ReshapeParameter documentation in caffe.proto
    ("shape { dim: 0 dim: -1 }", (2, 8), (2, 8)),
    ("shape { dim: 0 dim: 2 dim: -1 }", (2, 8), (2, 2, 4)),
    ("shape { dim: 0 dim: 2 dim: 4 }", (2, 8), (2, 2, 4)),
    ("shape { dim: -1 }", (2, 3, 4), (24,)),
    ("shape { dim: 0 dim: 0 dim: -1 dim: 1 dim: 1 }", (2, 3, 4), (2, 3, 4, 1, 1)),
    ("axis: 1 num_axes: 0 shape { dim: 1 }", (2, 8), (2, 1, 8)),
    ("axis: 1 num_axes: 1 shape { dim: 2 dim: 4 }", (2, 8, 3), (2, 2, 4, 3)),
    ("axis: -1 shape { dim: 1 }", (2, 8), (2, 8, 1)),
    ("axis: 0 num_axes: 2 shape { dim: -1 }", (2, 3, 4), (6, 4)),
    ("axis: 1 shape { dim: 0 dim: -1 }", (2, 3, 4), (2, 3, 4)),
])
def test_reshape_hand_computed_shapes(body, in_shape, out_shape):
    x = RNG.standard_normal(in_shape)
    (y,) = fwd(layer("Reshape", "reshape_param { %s }" % body), x)
    assert y.shape == out_shape
    np.testing.assert_array_equal(y.ravel(), x.ravel())


def test_reshape_matches_mxnet_reshape_and_gradient():
    x = RNG.standard_normal((2, 3, 4))
    (y,) = fwd(layer("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"), x)
    ref = mx.nd.reshape(mx.nd.array(x, dtype=np.float64), shape=(0, -1, 2)).asnumpy()
    np.testing.assert_array_equal(y, ref)
    grad_check(layer("Reshape", "reshape_param { shape { dim: -1 dim: 3 } }"),
               [RNG.standard_normal((2, 3, 2))])


def test_reshape_errors():
    x = np.zeros((2, 3, 4))
    assert_layer_error("multiple -1", layer("Reshape", "reshape_param { shape { dim: -1 dim: -1 } }"), x)
    assert_layer_error("divisible", layer("Reshape", "reshape_param { shape { dim: 5 dim: -1 } }"), x)
    assert_layer_error("count must match", layer("Reshape", "reshape_param { shape { dim: 5 dim: 5 } }"), x)
    assert_layer_error("no corresponding bottom axis",
                       layer("Reshape", "reshape_param { axis: 2 shape { dim: 0 dim: 0 } }"), x)
    assert_layer_error("out of range", layer("Reshape", "reshape_param { axis: 4 shape { dim: 1 } }"), x)


# ---------------------------------------------------------------------------
# Crop


def test_crop_offsets_hand_computed():
    x = np.arange(2 * 3 * 5 * 6, dtype=np.float64).reshape(2, 3, 5, 6)
    ref_shape = np.zeros((1, 1, 2, 3))
    (y,) = fwd(layer("Crop", "crop_param { offset: 1 }"), x, ref_shape)  # default axis 2
    np.testing.assert_array_equal(y, x[:, :, 1:3, 1:4])
    (y,) = fwd(layer("Crop", "crop_param { axis: 2 offset: 3 offset: 2 }"), x, ref_shape)
    np.testing.assert_array_equal(y, x[:, :, 3:5, 2:5])
    (y,) = fwd(layer("Crop", "crop_param { axis: 1 offset: 0 offset: 1 offset: 2 }"), x,
               np.zeros((7, 2, 3, 4)))
    np.testing.assert_array_equal(y, x[:, 0:2, 1:4, 2:6])
    (y,) = fwd(layer("Crop", "crop_param { axis: -1 }"), x, np.zeros((1, 1, 1, 2)))
    np.testing.assert_array_equal(y, x[..., 0:2])


def test_crop_gradient_only_to_data():
    x = RNG.standard_normal((2, 2, 4, 5))
    r = RNG.standard_normal((1, 1, 2, 3))
    grad_check(layer("Crop", "crop_param { offset: 1 offset: 2 }"), [x, r])  # d/d r == 0
    g = RNG.standard_normal((2, 2, 2, 3))
    gx, gr = backward(layer("Crop", "crop_param { offset: 1 offset: 2 }"), [x, r], [g])
    expect = np.zeros_like(x)
    expect[:, :, 1:3, 2:5] = g
    np.testing.assert_array_equal(gx, expect)
    np.testing.assert_array_equal(gr, np.zeros_like(r))


def test_crop_errors():
    x = np.zeros((1, 1, 4, 4))
    assert_layer_error("out-of-bounds", layer("Crop", "crop_param { offset: 2 }"), x, np.zeros((1, 1, 3, 3)))
    assert_layer_error("number of offset values",
                       layer("Crop", "crop_param { offset: 1 offset: 1 offset: 1 }"), x, np.zeros((1, 1, 2, 2)))


# ---------------------------------------------------------------------------
# Tile


def test_tile_matches_numpy_and_mxnet_tile():
    x = RNG.standard_normal((2, 3, 2))
    (y,) = fwd(layer("Tile", "tile_param { tiles: 3 }"), x)  # default axis 1
    np.testing.assert_array_equal(y, np.tile(x, (1, 3, 1)))
    (y,) = fwd(layer("Tile", "tile_param { axis: -1 tiles: 2 }"), x)
    ref = mx.nd.tile(mx.nd.array(x, dtype=np.float64), reps=(1, 1, 2)).asnumpy()
    np.testing.assert_array_equal(y, ref)
    grad_check(layer("Tile", "tile_param { axis: 0 tiles: 3 }"), [RNG.standard_normal((2, 3))])
    assert_layer_error("tiles must be specified", layer("Tile"), x)
    assert_layer_error("positive", layer("Tile", "tile_param { tiles: 0 }"), x)


# ---------------------------------------------------------------------------
# Reduction


@pytest.mark.parametrize("op, ref", [
    ("SUM", lambda v: v.sum(-1)),
    ("ASUM", lambda v: np.abs(v).sum(-1)),
    ("SUMSQ", lambda v: (v * v).sum(-1)),
    ("MEAN", lambda v: v.mean(-1)),
])
def test_reduction_ops_axes_and_coeff(op, ref):
    x = RNG.standard_normal((2, 3, 4))
    for axis, keep in ((0, ()), (1, (2,)), (-1, (2, 3))):
        body = "reduction_param { operation: %s axis: %d coeff: -1.5 }" % (op, axis)
        (y,) = fwd(layer("Reduction", body), x)
        expect = -1.5 * ref(x.reshape(int(np.prod(keep)), -1))
        # Caffe's top keeps the axes before `axis`; a 0-axis top is (1,) in MXNet
        assert y.shape == (keep or (1,))
        np.testing.assert_allclose(y.ravel(), expect, rtol=1e-12)
    x = RNG.uniform(0.2, 1.0, (2, 3, 2)) * RNG.choice([-1, 1], (2, 3, 2))  # away from |x| kink
    grad_check(layer("Reduction", "reduction_param { operation: %s axis: 1 coeff: 0.7 }" % op), [x])


def test_reduction_default_is_sum_over_everything():
    x = RNG.standard_normal((3, 2))
    (y,) = fwd(layer("Reduction"), x)
    np.testing.assert_allclose(y, [x.sum()], rtol=1e-12)


# ---------------------------------------------------------------------------
# ArgMax


def caffe_topk(v, k):
    """Caffe's partial_sort with std::greater<pair<value, index>>: ties favour larger index."""
    order = sorted(range(len(v)), key=lambda j: (v[j], j), reverse=True)
    return order[:k]


def test_argmax_default_flattens_per_item():
    x = RNG.standard_normal((3, 2, 4))
    (y,) = fwd(layer("ArgMax"), x)
    assert y.shape == (3, 1, 1)
    np.testing.assert_array_equal(y.ravel(), x.reshape(3, -1).argmax(1))
    (y,) = fwd(layer("ArgMax", "argmax_param { out_max_val: true top_k: 3 }"), x)
    assert y.shape == (3, 2, 3)
    flat = x.reshape(3, -1)
    for i in range(3):
        idx = caffe_topk(flat[i], 3)
        np.testing.assert_array_equal(y[i, 0], idx)
        np.testing.assert_array_equal(y[i, 1], flat[i, idx])


def test_argmax_along_axis_and_ties():
    x = RNG.standard_normal((2, 5, 3))
    (y,) = fwd(layer("ArgMax", "argmax_param { axis: 1 top_k: 2 }"), x)
    assert y.shape == (2, 2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(y[i, :, j], caffe_topk(x[i, :, j], 2))
    (y,) = fwd(layer("ArgMax", "argmax_param { axis: -1 out_max_val: true }"), x)
    np.testing.assert_array_equal(y[..., 0], x.max(-1))
    # ties: the larger index ranks first (std::greater on (value, index) pairs)
    (y,) = fwd(layer("ArgMax", "argmax_param { top_k: 3 }"), np.array([[1.0, 3.0, 0.0, 3.0, 1.0]]))
    np.testing.assert_array_equal(y.ravel(), [3, 1, 4])
    assert_layer_error("top_k", layer("ArgMax", "argmax_param { top_k: 6 }"), np.zeros((2, 5)))


# ---------------------------------------------------------------------------
# Accuracy


def test_accuracy_top1_topk_against_numpy():
    scores = RNG.standard_normal((8, 5))
    labels = RNG.integers(0, 5, 8).astype(np.float64)
    (acc,) = fwd(layer("Accuracy"), scores, labels)
    np.testing.assert_allclose(acc, [np.mean(scores.argmax(1) == labels)])
    (acc,) = fwd(layer("Accuracy", "accuracy_param { top_k: 3 }"), scores, labels)
    top3 = np.argsort(-scores, 1)[:, :3]
    np.testing.assert_allclose(acc, [np.mean([labels[i] in top3[i] for i in range(8)])])


def test_accuracy_spatial_axis_ignore_label_and_per_class():
    scores = RNG.standard_normal((2, 3, 4))  # N=2, C=3 along axis 1, 4 positions
    labels = RNG.integers(0, 3, (2, 4)).astype(np.float64)
    labels[0, 1] = labels[1, 3] = -1
    body = "accuracy_param { ignore_label: -1 }"
    acc, per_class = fwd(layer("Accuracy", body), scores, labels, num_out=2)
    pred = scores.argmax(1)
    valid = labels != -1
    np.testing.assert_allclose(acc, [np.mean(pred[valid] == labels[valid])])
    assert per_class.shape == (3,)
    for c in range(3):
        sel = valid & (labels == c)
        expect = np.mean(pred[sel] == c) if sel.any() else 0.0
        np.testing.assert_allclose(per_class[c], expect)


def test_accuracy_ties_follow_caffe_ordering():
    # Caffe 1.0 sorts (score, class) pairs descending, so of two equal scores the larger class
    # index is ranked first: label 2 counts as a top-1 hit, label 0 does not.
    scores = np.array([[0.5, 0.1, 0.5], [0.5, 0.1, 0.5]])
    (acc,) = fwd(layer("Accuracy"), scores, np.array([2.0, 0.0]))
    np.testing.assert_allclose(acc, [0.5])
    (acc,) = fwd(layer("Accuracy", "accuracy_param { top_k: 2 }"), scores, np.array([2.0, 0.0]))
    np.testing.assert_allclose(acc, [1.0])


def test_accuracy_and_argmax_have_no_backward():
    for proto, inputs in ((layer("Accuracy"), [np.zeros((2, 3)), np.zeros(2)]),
                          (layer("ArgMax"), [np.zeros((2, 3))])):
        with pytest.raises(MXNetError, match="no backward"):
            backward(proto, inputs, [np.ones(1) if proto.find("Accuracy") > 0 else np.ones((2, 1, 1))],
                     need=[0])


# ---------------------------------------------------------------------------
# Losses (through CaffeOp: the head gradient is the loss weight)


def loss_grad(proto, inputs, weight=1.0, need=(0,)):
    return backward(proto, inputs, [np.array([weight])], need=list(need))


def test_euclidean_loss():
    a, b = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    (loss,) = fwd(layer("EuclideanLoss"), a, b)
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss, [np.sum((a - b) ** 2) / 4 / 2], rtol=1e-12)
    ga, gb = loss_grad(layer("EuclideanLoss"), [a, b], weight=2.0, need=(0, 1))
    np.testing.assert_allclose(ga, 2.0 * (a - b) / 4, rtol=1e-12)
    np.testing.assert_allclose(gb, -2.0 * (a - b) / 4, rtol=1e-12)
    grad_check(layer("EuclideanLoss"), [a.reshape(4, 3, 1), b])
    assert_layer_error("same dimension", layer("EuclideanLoss"), a, np.zeros((4, 2)))
    assert_layer_error("same first dimension", layer("EuclideanLoss"), a, np.zeros((3, 3)))


def sigmoid_ce_ref(x, t, ignore=None, norm="BATCH_SIZE"):
    keep = np.ones_like(t, bool) if ignore is None else (t.astype(int) != ignore)
    per = -(x * (t - (x >= 0)) - np.log1p(np.exp(x - 2 * x * (x >= 0))))
    loss = per[keep].sum()
    z = {"FULL": t.size, "VALID": keep.sum(), "BATCH_SIZE": x.shape[0], "NONE": 1}[norm]
    z = max(1.0, z)
    grad = np.where(keep, 1 / (1 + np.exp(-x)) - t, 0.0) / z
    return loss / z, grad


@pytest.mark.parametrize("body, ignore, norm", [
    ("", None, "BATCH_SIZE"),  # Caffe 1.0 default when neither field is set
    ("loss_param { normalize: true }", None, "VALID"),
    ("loss_param { normalize: false }", None, "BATCH_SIZE"),
    ("loss_param { normalization: FULL }", None, "FULL"),
    ("loss_param { ignore_label: 2 normalization: VALID }", 2, "VALID"),
    ("loss_param { ignore_label: 2 normalization: NONE }", 2, "NONE"),
])
def test_sigmoid_cross_entropy_loss(body, ignore, norm):
    x = RNG.standard_normal((3, 2, 2)) * 3
    x[0, 0, 0] = 40.0  # the stable formula stays finite
    x[0, 0, 1] = -40.0
    t = RNG.uniform(0, 1, (3, 2, 2))
    if ignore is not None:
        t[1, 0, 0] = t[2, 1, 1] = ignore
    proto = layer("SigmoidCrossEntropyLoss", body)
    (loss,) = fwd(proto, x, t)
    ref_loss, ref_grad = sigmoid_ce_ref(x, t, ignore, norm)
    np.testing.assert_allclose(loss, [ref_loss], rtol=1e-10)
    (g,) = loss_grad(proto, [x, t], weight=1.5)
    np.testing.assert_allclose(g, 1.5 * ref_grad, rtol=1e-10, atol=1e-15)
    xs = RNG.standard_normal((3, 2, 2))
    grad_check(proto, [xs, t], grad_nodes=["x0"])


def test_sigmoid_cross_entropy_label_gets_no_gradient():
    x, t = RNG.standard_normal((2, 3)), RNG.uniform(0, 1, (2, 3))
    gx, gt = loss_grad(layer("SigmoidCrossEntropyLoss"), [x, t], need=(0, 1))
    np.testing.assert_array_equal(gt, np.zeros_like(t))
    assert np.abs(gx).sum() > 0


def hinge_ref(x, label, l2):
    n = x.shape[0]
    flat = x.reshape(n, -1)
    sign = -np.ones_like(flat)
    sign[np.arange(n), label.astype(int)] = 1
    m = np.maximum(0, 1 - sign * flat)
    if l2:
        return (m * m).sum() / n, (-2 * sign * m / n).reshape(x.shape)
    return m.sum() / n, (-sign * (m > 0) / n).reshape(x.shape)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x = RNG.uniform(-2, 2, (5, 4))
    x[np.abs(np.abs(x) - 1) < 0.05] = 0.3  # stay off the hinge kinks
    label = RNG.integers(0, 4, 5).astype(np.float64)
    proto = layer("HingeLoss", "hinge_loss_param { norm: %s }" % norm)
    (loss,) = fwd(proto, x, label)
    ref_loss, ref_grad = hinge_ref(x, label, norm == "L2")
    np.testing.assert_allclose(loss, [ref_loss], rtol=1e-12)
    (g,) = loss_grad(proto, [x, label], weight=0.5)
    np.testing.assert_allclose(g, 0.5 * ref_grad, rtol=1e-12)
    grad_check(proto, [x, label], grad_nodes=["x0"])
    # default norm is L1; label range is checked
    (loss1,) = fwd(layer("HingeLoss"), x, label)
    np.testing.assert_allclose(loss1, [hinge_ref(x, label, False)[0]], rtol=1e-12)
    assert_layer_error("out of range", proto, x, np.array([0, 1, 2, 3, 4.0]))


def test_multinomial_logistic_loss():
    p = RNG.uniform(0.05, 1, (4, 3))
    p /= p.sum(1, keepdims=True)
    label = np.array([0, 2, 1, 2.0])
    p[3, 2] = 0.0  # clipped at kLOG_THRESHOLD = 1e-20
    proto = layer("MultinomialLogisticLoss")
    (loss,) = fwd(proto, p, label)
    picked = np.maximum(p[np.arange(4), label.astype(int)], 1e-20)
    np.testing.assert_allclose(loss, [-np.log(picked).sum() / 4], rtol=1e-12)
    (g,) = loss_grad(proto, [p, label], weight=1.0)
    expect = np.zeros_like(p)
    expect[np.arange(4), label.astype(int)] = -1.0 / 4 / picked
    np.testing.assert_allclose(g, expect, rtol=1e-12)
    p[3, 2] = 0.3
    grad_check(proto, [p, label], grad_nodes=["x0"], rtol=1e-4)
    assert_layer_error("one value per item", proto, p, np.zeros((4, 2)))


def test_infogain_loss_with_h_as_third_input():
    p = RNG.uniform(0.05, 1, (4, 3))
    p /= p.sum(1, keepdims=True)
    label = np.array([0, 2, 1, 2.0])
    H = RNG.uniform(0, 1, (3, 3))
    proto = layer("InfogainLoss")
    li = label.astype(int)
    expect = -(H[li] * np.log(p)).sum() / 4
    for Hin in (H, H.reshape(1, 1, 3, 3)):
        (loss,) = fwd(proto, p, label, Hin)
        np.testing.assert_allclose(loss, [expect], rtol=1e-12)
    gp, gl, gh = loss_grad(proto, [p, label, H], weight=3.0, need=(0, 1, 2))
    np.testing.assert_allclose(gp, -3.0 * H[li] / p / 4, rtol=1e-12)
    np.testing.assert_array_equal(gl, 0)
    np.testing.assert_array_equal(gh, 0)
    grad_check(proto, [p, label, H], grad_nodes=["x0"], rtol=1e-4)
    # H = identity reduces to MultinomialLogisticLoss
    (l_id,) = fwd(proto, p, label, np.eye(3))
    (l_ml,) = fwd(layer("MultinomialLogisticLoss"), p, label)
    np.testing.assert_allclose(l_id, l_ml, rtol=1e-12)
    assert_layer_error("pass H as a third input",
                       layer("InfogainLoss", 'infogain_loss_param { source: "H.binaryproto" }'), p, label)
    assert_layer_error("3x3 matrix", proto, p, label, np.eye(4))


def contrastive_ref(a, b, y, margin, legacy):
    d2 = ((a - b) ** 2).sum(1)
    d = np.sqrt(d2)
    sim = y.astype(int) != 0
    if legacy:
        per = np.where(sim, d2, np.maximum(margin - d2, 0))
    else:
        per = np.where(sim, d2, np.maximum(margin - d, 0) ** 2)
    return per.sum() / a.shape[0] / 2


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(legacy):
    n, c = 6, 3
    a = RNG.uniform(-0.6, 0.6, (n, c))
    b = RNG.uniform(-0.6, 0.6, (n, c))
    y = np.array([1, 0, 0, 1, 0, 0.0])
    b[2] = a[2] + 3.0  # dissimilar pair beyond the margin: zero gradient
    margin = 1.7
    body = "contrastive_loss_param { margin: %g legacy_version: %s }" % (margin, str(legacy).lower())
    proto = layer("ContrastiveLoss", body)
    (loss,) = fwd(proto, a, b, y)
    np.testing.assert_allclose(loss, [contrastive_ref(a, b, y, margin, legacy)], rtol=1e-6)
    ga, gb, gy = loss_grad(proto, [a, b, y], need=(0, 1, 2))
    np.testing.assert_allclose(ga[2], 0)
    np.testing.assert_array_equal(gy, 0)
    if legacy:
        # legacy: exact derivative of (margin - d^2) / 2N for active dissimilar pairs
        grad_check(proto, [a, b, y], grad_nodes=["x0", "x1"], rtol=1e-5)
    else:
        # Caffe divides by (d + 1e-4), not d: compare against that formula by hand
        diff = a - b
        d = np.sqrt((diff ** 2).sum(1))
        sim = y != 0
        mdist = margin - d
        beta = np.where(sim, 1.0, np.where(mdist > 0, -mdist / (d + 1e-4), 0.0)) / n
        np.testing.assert_allclose(ga, beta[:, None] * diff, rtol=1e-10)
        np.testing.assert_allclose(gb, -beta[:, None] * diff, rtol=1e-10)
        # and within 1e-3 of the true derivative
        grad_check(proto, [a, b, y], grad_nodes=["x0", "x1"], rtol=2e-3, atol=1e-5)
    (l4,) = fwd(proto, a.reshape(n, c, 1, 1), b.reshape(n, c, 1, 1), y.reshape(n, 1, 1, 1))
    np.testing.assert_allclose(l4, loss, rtol=1e-12)
    assert_layer_error("similarity label", proto, a, b, np.zeros((n, 2)))


def test_loss_top_is_scalar_and_float32_works():
    a, b = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    (l32,) = fwd(layer("EuclideanLoss"), a, b, dtype=np.float32)
    assert l32.shape == (1,) and l32.dtype == np.float32
    np.testing.assert_allclose(l32, [np.sum((a - b) ** 2) / 8], rtol=1e-5)


# ---------------------------------------------------------------------------
# CaffeLoss scaling (gradient = grad_scale x N x Caffe's gradient; see caffedata.mxnet.symbols)


@pytest.mark.skipif(not hasattr(mx.nd, "CaffeLoss"), reason="CaffeLoss wrapper not available")
def test_caffeloss_scales_euclidean_gradient_by_batch():
    a, b = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    x = mx.nd.array(a, dtype=np.float64)
    x.attach_grad()
    with mx.autograd.record():
        loss = mx.nd.CaffeLoss(data=x, label=mx.nd.array(b, dtype=np.float64), grad_scale=0.5,
                               prototxt=layer("EuclideanLoss"))
    loss.backward()
    np.testing.assert_allclose(loss.asnumpy(), [np.sum((a - b) ** 2) / 8], rtol=1e-12)
    np.testing.assert_allclose(x.grad.asnumpy(), 0.5 * 4 * (a - b) / 4, rtol=1e-12)


@pytest.mark.skipif(not hasattr(mx.nd, "CaffeLoss"), reason="CaffeLoss wrapper not available")
def test_caffeloss_three_input_losses():
    n = 6
    a, b = RNG.uniform(-0.5, 0.5, (n, 3)), RNG.uniform(-0.5, 0.5, (n, 3))
    y = np.array([1, 0, 0, 1, 0, 0.0])
    x = mx.nd.array(a, dtype=np.float64)
    x.attach_grad()
    proto = layer("ContrastiveLoss", "contrastive_loss_param { legacy_version: true margin: 10 }")
    with mx.autograd.record():
        loss = mx.nd.CaffeLoss(x, mx.nd.array(b, dtype=np.float64), mx.nd.array(y, dtype=np.float64),
                               num_data=3, grad_scale=0.5, prototxt=proto)
    loss.backward()
    d2 = ((a - b) ** 2).sum(1)  # all < margin: every dissimilar pair is active
    np.testing.assert_allclose(loss.asnumpy(), [np.where(y > 0, d2, 10 - d2).sum() / n / 2], rtol=1e-12)
    caffe_grad = np.where(y > 0, 1.0, -1.0)[:, None] * (a - b) / n
    np.testing.assert_allclose(x.grad.asnumpy(), 0.5 * n * caffe_grad, rtol=1e-12)
    sym = mx.sym.CaffeLoss(mx.sym.Variable("p"), mx.sym.Variable("l"), mx.sym.Variable("H"), num_data=3,
                           prototxt=layer("InfogainLoss"))
    assert sym.infer_shape(p=(4, 3), l=(4,), H=(3, 3))[1] == [(1,)]
