"""caffedata.net.python_layer: pycaffe-style Python layers and registered types in MXNet graphs.

The layers live in tests/pylayers_for_tests.py, written as pycaffe users write
them (``import caffe``, ``caffe.Layer``, ``param_str``, ``self.blobs``).
Expectations are NumPy formulas; the graphs run in executors, ``mx.mod.Module``
and Gluon (``SymbolBlock`` + autograd).
"""
import os
import sys

import numpy as np
import pytest

import mxnet as mx
import caffedata  # noqa: F401
from caffedata.errors import SpecError
from caffedata.net import python_layer
from caffedata.net.python_layer import python_layer_symbols, register_layer, registered_type
from caffedata.proto import LayerParameter, text_format

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pylayers_for_tests


def py_layer(cls, param_str="", tops=1, name="py", bottoms=1, extra=""):
    text = 'name: "%s" type: "Python" %s %s python_param { module: "pylayers_for_tests" layer: "%s" ' \
           'param_str: \'%s\' } %s' % (name, " ".join(f'bottom: "b{i}"' for i in range(bottoms)),
                                       " ".join(f'top: "t{i}"' for i in range(tops)), cls, param_str, extra)
    layer = LayerParameter()
    text_format.Parse(text, layer)
    return layer


def fwd_bwd(sym, arrays, heads, is_train=True):
    args = {n: mx.nd.array(arrays[n]) for n in sym.list_arguments()}
    grads = {n: mx.nd.zeros(a.shape) for n, a in args.items()}
    exe = sym.bind(mx.cpu(), args=args, args_grad=grads)
    outs = [o.asnumpy() for o in exe.forward(is_train=is_train)]
    if heads is not None:
        exe.backward([mx.nd.array(h) for h in heads])
    return outs, {n: g.asnumpy() for n, g in grads.items()}


def test_scale_layer_with_param_str_forward_backward():
    x = mx.sym.Variable("x", shape=(2, 3, 4))
    (top,) = python_layer_symbols(py_layer("ScaleByParam", '{"factor": 2.5}'), [x], "scale", "TRAIN")
    xv = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)
    head = np.random.RandomState(1).randn(2, 3, 4).astype(np.float32)
    (y,), g = fwd_bwd(top, {"x": xv}, [head])
    np.testing.assert_allclose(y, 2.5 * xv, rtol=1e-6)
    np.testing.assert_allclose(g["x"], 2.5 * head, rtol=1e-6)


def test_layer_reshaping_its_tops_two_outputs():
    x = mx.sym.Variable("x", shape=(2, 3, 2, 2))
    tops = python_layer_symbols(py_layer("SquareAndFlatten", tops=2), [x], "sf", "TRAIN")
    assert [t.infer_shape()[1][0] for t in tops] == [(2, 12), (2, 1, 2, 2)]
    rng = np.random.RandomState(2)
    xv = rng.randn(2, 3, 2, 2).astype(np.float32)
    h0, h1 = rng.randn(2, 12).astype(np.float32), rng.randn(2, 1, 2, 2).astype(np.float32)
    (y0, y1), g = fwd_bwd(mx.sym.Group(tops), {"x": xv}, [h0, h1])
    np.testing.assert_allclose(y0, xv.reshape(2, -1), rtol=1e-6)
    np.testing.assert_allclose(y1, (xv ** 2).sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(g["x"], h0.reshape(xv.shape) + 2 * xv * h1, rtol=1e-5)


def test_euclidean_loss_in_module():
    """pyloss.py's EuclideanLossLayer behind MakeLoss, in Module forward/backward."""
    a = mx.sym.Variable("a")
    b = mx.sym.Variable("b")
    (loss,) = python_layer_symbols(py_layer("EuclideanLossLayer", bottoms=2), [a, b], "loss", "TRAIN")
    mod = mx.mod.Module(mx.sym.MakeLoss(loss), data_names=("a", "b"), label_names=None)
    mod.bind(data_shapes=[("a", (4, 3)), ("b", (4, 3))], inputs_need_grad=True)
    mod.init_params()
    rng = np.random.RandomState(3)
    av, bv = rng.randn(4, 3).astype(np.float32), rng.randn(4, 3).astype(np.float32)
    mod.forward(mx.io.DataBatch([mx.nd.array(av), mx.nd.array(bv)]), is_train=True)
    value = mod.get_outputs()[0].asnumpy()
    np.testing.assert_allclose(value, [((av - bv) ** 2).sum() / 4 / 2], rtol=1e-6)
    mod.backward()
    ga, gb = (g.asnumpy() for g in mod.get_input_grads())
    np.testing.assert_allclose(ga, (av - bv) / 4, rtol=1e-6)
    np.testing.assert_allclose(gb, -(av - bv) / 4, rtol=1e-6)


def test_learnable_blobs_are_arguments_with_gradients_in_module():
    (top,) = python_layer_symbols(py_layer("ChannelWeights"), [mx.sym.Variable("data", shape=(2, 3, 2, 2))],
                                  "cw", "TRAIN")
    assert top.list_arguments() == ["data", "cw_0_weight"]
    mod = mx.mod.Module(mx.sym.MakeLoss(mx.sym.sum(top * top)), data_names=("data",), label_names=None)
    mod.bind(data_shapes=[("data", (2, 3, 2, 2))], inputs_need_grad=True)
    mod.init_params()  # the blob's initializer: the values setup() wrote
    w = mod.get_params()[0]["cw_0_weight"].asnumpy()
    np.testing.assert_allclose(w, [1.0, 1.1, 1.2], rtol=1e-6)
    xv = np.random.RandomState(4).randn(2, 3, 2, 2).astype(np.float32)
    mod.forward(mx.io.DataBatch([mx.nd.array(xv)]), is_train=True)
    mod.backward()
    y = xv * w.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(mod.get_outputs()[0].asnumpy(), [(y ** 2).sum()], rtol=1e-5)
    grad_w = mod._exec_group.execs[0].grad_dict["cw_0_weight"].asnumpy()
    np.testing.assert_allclose(grad_w, (2 * y * xv).sum(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(mod.get_input_grads()[0].asnumpy(), 2 * y * w.reshape(1, -1, 1, 1), rtol=1e-5)


@pytest.mark.parametrize("hybridize", [False, True])
def test_gluon_symbolblock_autograd(hybridize):
    data = mx.sym.Variable("data", shape=(2, 3, 2, 2), dtype="float32")  # SymbolBlock warns without a dtype
    (top,) = python_layer_symbols(py_layer("ChannelWeights"), [data], "cw", "TRAIN")
    (scaled,) = python_layer_symbols(py_layer("ScaleByParam", '{"factor": -3}', name="s"), [top], "s", "TRAIN")
    net = mx.gluon.SymbolBlock(scaled, [data])
    net.initialize()
    if hybridize:
        net.hybridize()
    xv = mx.nd.array(np.random.RandomState(5).randn(2, 3, 2, 2))
    xv.attach_grad()
    with mx.autograd.record():
        out = net(xv)
        loss = (out * out).sum()
    loss.backward()
    w = net.collect_params()["cw_0_weight"].data().asnumpy()  # Gluon's initializer: SymbolBlock ignores init attrs
    x = xv.asnumpy()
    y = -3 * x * w.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(out.asnumpy(), y, rtol=1e-5)
    np.testing.assert_allclose(xv.grad.asnumpy(), 2 * y * -3 * w.reshape(1, -1, 1, 1), rtol=1e-5)
    gw = net.collect_params()["cw_0_weight"].grad().asnumpy()
    np.testing.assert_allclose(gw, (2 * y * -3 * x).sum(axis=(0, 2, 3)), rtol=1e-5)


def test_phase_follows_is_train():
    x = mx.sym.Variable("x", shape=(2, 2))
    (top,) = python_layer_symbols(py_layer("PhaseTag"), [x], "ph", "TEST")
    xv = np.zeros((2, 2), np.float32)
    (train,), _ = fwd_bwd(top, {"x": xv}, None, is_train=True)
    (test,), _ = fwd_bwd(top, {"x": xv}, None, is_train=False)
    np.testing.assert_array_equal(train, 0)   # TRAIN = 0
    np.testing.assert_array_equal(test, 1)    # TEST = 1
    with mx.autograd.record(train_mode=True):
        out = mx.nd.Custom(mx.nd.array(xv), op_type=python_layer.OP_TYPE, layer=top.attr("layer"),
                           num_bottoms="1", num_blobs="0", phase="1")
    np.testing.assert_array_equal(out.asnumpy(), 0)


def test_symbol_json_round_trip():
    x = mx.sym.Variable("x", shape=(2, 3))
    (top,) = python_layer_symbols(py_layer("ScaleByParam", '{"factor": 4}'), [x], "s4", "TRAIN")
    loaded = mx.sym.load_json(top.tojson())
    (y,), _ = fwd_bwd(loaded, {"x": np.ones((2, 3), np.float32)}, None)
    np.testing.assert_allclose(y, 4)


def test_registered_type_runs_with_the_same_lifecycle():
    class AbsVal:  # a plain class: no base, no constructor argument
        def setup(self, bottom, top):
            self.ready = True

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].shape)

        def forward(self, bottom, top):
            assert self.ready and self.param_str == ""
            top[0].data[...] = np.abs(bottom[0].data)

        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = np.sign(bottom[0].data) * top[0].diff

    register_layer("MyAbsVal", AbsVal)
    assert registered_type("MyAbsVal") is AbsVal
    assert registered_type("NotRegistered") is None
    layer = LayerParameter()
    text_format.Parse('name: "abs" type: "MyAbsVal" bottom: "x" top: "y"', layer)
    x = mx.sym.Variable("x", shape=(3, 4))
    (top,) = python_layer_symbols(layer, [x], "abs", "TEST")
    xv = np.random.RandomState(6).randn(3, 4).astype(np.float32)
    head = np.random.RandomState(7).randn(3, 4).astype(np.float32)
    (y,), g = fwd_bwd(top, {"x": xv}, [head])
    np.testing.assert_allclose(y, np.abs(xv))
    np.testing.assert_allclose(g["x"], np.sign(xv) * head)
    with pytest.raises(SpecError, match="no setup"):
        register_layer("Broken", type("Broken", (), {}))


# ---------------------------------------------------------------------------
# Errors

def test_module_not_importable():
    layer = LayerParameter()
    text_format.Parse('name: "p" type: "Python" top: "t" python_param { module: "no_such_module_xyz" '
                      'layer: "L" }', layer)
    with pytest.raises(SpecError, match=r"Python layer 'p' \(module 'no_such_module_xyz', class 'L'\).*"
                                        "PYTHONPATH") as err:
        python_layer_symbols(layer, [mx.sym.Variable("x", shape=(1,))], "p", "TEST")
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


def test_class_missing():
    with pytest.raises(SpecError, match=r"module 'pylayers_for_tests' .*has no class 'Nope'"):
        python_layer_symbols(py_layer("Nope"), [mx.sym.Variable("x", shape=(1,))], "p", "TEST")


def test_exception_in_setup_is_chained():
    with pytest.raises(SpecError, match=r"class 'FailsInSetup'\): setup\(\) raised ValueError: setup exploded") \
            as err:
        python_layer_symbols(py_layer("FailsInSetup"), [mx.sym.Variable("x", shape=(2,))], "p", "TEST")
    assert isinstance(err.value.__cause__, ValueError)


def test_exception_in_forward_names_layer_and_carries_traceback():
    x = mx.sym.Variable("x", shape=(2, 2))
    (top,) = python_layer_symbols(py_layer("FailsInForward", name="boom"), [x], "boom", "TEST")
    assert python_layer.pending_error() is None
    with pytest.raises(mx.base.MXNetError):
        fwd_bwd(top, {"x": np.zeros((2, 2), np.float32)}, None)
    err = python_layer.pending_error()
    assert isinstance(err, SpecError)
    text = str(err)
    assert "Python layer 'boom' (module 'pylayers_for_tests', class 'FailsInForward'): forward() raised" in text
    assert "forward exploded on purpose" in text and "pylayers_for_tests.py" in text
    assert isinstance(err.__cause__, RuntimeError)
    assert python_layer.pending_error() is None  # taken


def test_top_shape_must_follow_bottom_shapes():
    x = mx.sym.Variable("x", shape=(2, 2))
    (top,) = python_layer_symbols(py_layer("WrongTopShape", name="w"), [x], "w", "TEST")
    with pytest.raises(mx.base.MXNetError):
        fwd_bwd(top, {"x": np.zeros((2, 2), np.float32)}, None)
    assert "top 0 has shape (2,) after reshape() but (1,) was inferred" in str(python_layer.pending_error())


def test_unregistered_type_and_missing_top():
    layer = LayerParameter()
    text_format.Parse('name: "u" type: "Unheard" top: "t"', layer)
    with pytest.raises(SpecError, match=r"register_layer\('Unheard'"):
        python_layer_symbols(layer, [mx.sym.Variable("x")], "u", "TEST")
    with pytest.raises(SpecError, match="no top"):
        python_layer_symbols(py_layer("ScaleByParam", '{"factor": 1}', tops=0), [mx.sym.Variable("x")], "p",
                             "TEST")


def test_blob_object_api():
    b = python_layer.Blob((2, 3, 4, 5))
    assert (b.num, b.channels, b.height, b.width, b.count, b.shape) == (2, 3, 4, 5, 120, (2, 3, 4, 5))
    b.reshape(6)
    assert b.data.shape == b.diff.shape == (6,) and (b.num, b.channels, b.width) == (6, 1, 1)
    v = python_layer.BlobVec()
    v.add_blob(2, 2)
    assert v[0].data.shape == (2, 2) and not v[0].data.any()


def test_caffe_lifecycle_setup_once_reshape_every_forward():
    x = mx.sym.Variable("x")
    (top,) = python_layer_symbols(py_layer("Traced", "hello"), [x], "tr", "TEST")  # imports the module
    import pylayers_for_tests as mod

    mod.Traced.calls.clear()
    args = {"x": mx.nd.ones((2, 2))}
    exe = top.bind(mx.cpu(), args=args, args_grad={"x": mx.nd.zeros((2, 2))})
    exe.forward(is_train=False)
    mx.nd.waitall()  # MXNet hands a custom op the executor's latest training flag, not the one of its call
    exe.forward(is_train=True)
    exe.backward([mx.nd.ones((2, 2))])
    mx.nd.waitall()
    runs = {}
    for obj, what, phase, param_str in mod.Traced.calls:
        assert param_str == "hello"
        runs.setdefault(obj, []).append((what, phase))
    # Every instance starts with setup + reshape (construction, shape inference, the bound operator).
    assert all(r[:2] == [("setup", 1), ("reshape", 1)] for r in runs.values())
    (bound,) = [r for r in runs.values() if len(r) > 2]
    assert bound[2:] == [("reshape", 1), ("forward", 1), ("reshape", 0), ("forward", 0), ("backward", 0)]


def test_setup_error_at_bind_when_shapes_were_unknown():
    """Without bottom shapes at construction, setup runs at shape inference (bind)."""
    (top,) = python_layer_symbols(py_layer("FailsInSetup", name="late"), [mx.sym.Variable("x")], "late", "TEST")
    with pytest.raises((SpecError, mx.base.MXNetError)) as raised:
        top.infer_shape(x=(2, 2))
    pending = python_layer.pending_error()  # set either way; MXNet may pass the SpecError through itself
    err = raised.value if isinstance(raised.value, SpecError) else pending
    assert "Python layer 'late'" in str(err) and "setup exploded on purpose" in str(err)
    assert isinstance(err.__cause__, ValueError)
