"""predict_symbol: a net trained with CaffeLoss gives class probabilities for predict and score."""
import logging

import mxnet as mx
import numpy as np
import pytest

import caffedata  # noqa: F401  (registers mx.sym.CaffeOp / CaffeLoss)
from caffedata.datasets import load_digits
from caffedata.errors import SpecError
from caffedata.mxnet.predict import caffe_loss_heads, predict_symbol


def ip(data, name, n):
    return mx.sym.CaffeOp(data_0=data, num_weight=2, name=name,
                          prototxt=f'layer{{type:"InnerProduct" inner_product_param{{num_output: {n}}}}}')


def mlp(loss_prototxt='layer{type:"SoftmaxWithLoss"}'):
    data = mx.sym.Variable("data")
    act = mx.sym.CaffeOp(data_0=ip(data, "fc1", 32), prototxt='layer{type:"TanH"}')
    fc2 = ip(act, "fc2", 10)
    return mx.sym.CaffeLoss(data=fc2, label=mx.sym.Variable("softmax_label"), grad_scale=1,
                            name="softmax", prototxt=loss_prototxt)


@pytest.fixture(scope="module")
def trained():
    images, labels = load_digits()
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    y = labels.astype(np.float32)
    train = mx.io.NDArrayIter(x[:1500], y[:1500], batch_size=50, shuffle=True)
    mx.random.seed(0)
    np.random.seed(0)
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    logging.getLogger().setLevel(logging.WARNING)
    mod.fit(train, num_epoch=8, optimizer="sgd", eval_metric=mx.metric.Caffe(),
            optimizer_params={"learning_rate": 0.5, "momentum": 0.9},
            initializer=mx.init.Xavier())
    return mod, x[1500:1750], labels[1500:1750]  # 250: whole batches, so score sees no padding


def test_predict_gives_probabilities_and_score_works(trained):
    mod, x, labels = trained
    it = mx.io.NDArrayIter(x, labels.astype(np.float32), batch_size=50)
    prob_mod = mx.mod.Module(predict_symbol(mod.symbol, "softmax"), context=mx.cpu())
    prob_mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label, for_training=False)
    prob_mod.set_params(*mod.get_params())
    probs = prob_mod.predict(it).asnumpy()
    assert probs.shape == (len(x), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # the trained net's own scores (fc2), through an independent softmax in NumPy
    scores_mod = mx.mod.Module(mod.symbol.get_internals()["fc2_output"], label_names=None,
                               context=mx.cpu())
    scores_mod.bind(data_shapes=it.provide_data, for_training=False)
    scores_mod.set_params(*mod.get_params())
    scores = scores_mod.predict(it).asnumpy()
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(probs.argmax(axis=1), scores.argmax(axis=1))
    accuracy = dict(prob_mod.score(it, mx.metric.Accuracy()))["accuracy"]
    assert accuracy == pytest.approx(np.mean(probs.argmax(axis=1) == labels))
    assert accuracy > 0.85  # it learned: the probabilities are the trained net's


def test_other_heads_and_errors():
    sig = predict_symbol(mlp('layer{type:"SigmoidCrossEntropyLoss"}'))
    assert sig.list_arguments() == ["data", "fc1_0_weight", "fc1_1_bias", "fc2_0_weight",
                                    "fc2_1_bias", "softmax_label"]
    out = sig.get_internals()["softmax_output"]
    # forward on random weights: the head is the sigmoid of the loss's input (fc2)
    both = mx.sym.Group([sig, sig.get_internals()["fc2_output"]])
    exe = both.simple_bind(mx.cpu(), data=(4, 64), softmax_label=(4, 10), grad_req="null")
    rng = np.random.default_rng(0)
    for name, arr in exe.arg_dict.items():
        arr[:] = rng.normal(size=arr.shape)
    probs, fc2 = (o.asnumpy() for o in exe.forward(is_train=False))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-fc2)), rtol=1e-5, atol=1e-7)
    assert out.list_outputs() == ["softmax_output"]
    euclid = predict_symbol(mlp('layer{type:"EuclideanLoss"}'))
    assert euclid.list_outputs() == ["fc2_output"]
    net = mlp()
    assert caffe_loss_heads(net) == ["softmax"]
    grouped = mx.sym.Group([net, mx.sym.BlockGrad(net.get_internals()["fc1_output"], name="feat")])
    out = predict_symbol(grouped, "softmax")
    assert out.list_outputs() == ["softmax_output", "feat_output"]
    with pytest.raises(SpecError, match=r"no CaffeLoss named 'loss' .*\['softmax'\]"):
        predict_symbol(net, "loss")
    with pytest.raises(SpecError, match=r"has 0 CaffeLoss heads"):
        predict_symbol(net.get_internals()["fc2_output"])
