"""Whole nets three ways, in one process: CaffeOp (exact path), native MXNet ops
chosen by caffedata.net.native (native path), and the same net written in
MXNet by hand.

Nets: CIFAR-10 quick (Caffe's cifar10_quick layer list) and a small ResNet
(conv-BN-Scale-ReLU stem, one projection block, one identity block, global
average pooling, classifier).  The exact and native graphs are built here
from the layer texts with the two functions the Net uses (native_layer,
native_batchnorm_scale, falling back to CaffeOp), not with caffedata.Net.
All three run on the same weights; the script first prints how far their
outputs are apart, then the median time of forward (inference) and
forward+backward (training) per batch, round after round (A/B/C), and the
ratios exact / hand-written and native / hand-written (targets: <= 1.5 and
<= 1.05).

    python benchmarks/bench_net.py [--quick] [--repeats 5] [--iters 10]
"""
import argparse
import statistics
import time

import mxnet as mx
import numpy as np

import caffedata  # noqa: F401  (registers mx.sym.CaffeOp)
from caffedata import ops
from caffedata.net import native
from caffedata.proto import LayerParameter, text_format


# ---------------------------------------------------------------------------
# The nets as Caffe layer lists

def conv(name, bottom, top, n, k, pad=0, stride=1, bias=True):
    return (f'name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" convolution_param {{ '
            f'num_output: {n} kernel_size: {k} pad: {pad} stride: {stride} bias_term: {str(bias).lower()} }}')


def pool(name, bottom, top, method, k=3, s=2, global_pool=False):
    if global_pool:
        return f'name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{top}" pooling_param {{ pool: {method} ' \
               'global_pooling: true }'
    return f'name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{top}" pooling_param {{ pool: {method} ' \
           f'kernel_size: {k} stride: {s} }}'


def simple(name, kind, bottom, top, extra=""):
    return f'name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top}" {extra}'


def ip(name, bottom, top, n):
    return f'name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" ' \
           f'inner_product_param {{ num_output: {n} }}'


def cifar10_quick():
    return [
        conv("conv1", "data", "conv1", 32, 5, pad=2),
        pool("pool1", "conv1", "pool1", "MAX"),
        simple("relu1", "ReLU", "pool1", "pool1"),
        conv("conv2", "pool1", "conv2", 32, 5, pad=2),
        simple("relu2", "ReLU", "conv2", "conv2"),
        pool("pool2", "conv2", "pool2", "AVE"),
        conv("conv3", "pool2", "conv3", 64, 5, pad=2),
        simple("relu3", "ReLU", "conv3", "conv3"),
        pool("pool3", "conv3", "pool3", "AVE"),
        ip("ip1", "pool3", "ip1", 64),
        ip("ip2", "ip1", "ip2", 10),
    ]


def wb(name, bias=True):
    """CaffeOp's parameter names, so that one arg dict serves all three graphs."""
    out = {"weight": mx.sym.Variable(f"{name}_0_weight")}
    if bias:
        out["bias"] = mx.sym.Variable(f"{name}_1_bias")
    return out


def cifar10_quick_mxnet(data):
    x = mx.sym.Convolution(data, num_filter=32, kernel=(5, 5), pad=(2, 2), name="conv1", **wb("conv1"))
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type="max", pooling_convention="full")
    x = mx.sym.Activation(x, act_type="relu")
    x = mx.sym.Convolution(x, num_filter=32, kernel=(5, 5), pad=(2, 2), name="conv2", **wb("conv2"))
    x = mx.sym.Activation(x, act_type="relu")
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type="avg", pooling_convention="full")
    x = mx.sym.Convolution(x, num_filter=64, kernel=(5, 5), pad=(2, 2), name="conv3", **wb("conv3"))
    x = mx.sym.Activation(x, act_type="relu")
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type="avg", pooling_convention="full")
    x = mx.sym.FullyConnected(x, num_hidden=64, name="ip1", **wb("ip1"))
    return mx.sym.FullyConnected(x, num_hidden=10, name="ip2", **wb("ip2"))


def conv_bn(name, bottom, n, k, pad=0, stride=1, relu=True):
    layers = [conv(name, bottom, name, n, k, pad, stride, bias=False),
              simple(f"bn_{name}", "BatchNorm", name, name),
              simple(f"scale_{name}", "Scale", name, name, "scale_param { bias_term: true }")]
    if relu:
        layers.append(simple(f"relu_{name}", "ReLU", name, name))
    return layers


def small_resnet():
    layers = conv_bn("conv1", "data", 16, 3, pad=1)
    # projection block
    layers += conv_bn("res2a_branch1", "conv1", 32, 1, stride=2, relu=False)
    layers += conv_bn("res2a_branch2a", "conv1", 32, 3, pad=1, stride=2)
    layers += conv_bn("res2a_branch2b", "res2a_branch2a", 32, 3, pad=1, relu=False)
    layers.append('name: "res2a" type: "Eltwise" bottom: "res2a_branch1" bottom: "res2a_branch2b" top: "res2a"')
    layers.append(simple("res2a_relu", "ReLU", "res2a", "res2a"))
    # identity block
    layers += conv_bn("res2b_branch2a", "res2a", 32, 3, pad=1)
    layers += conv_bn("res2b_branch2b", "res2b_branch2a", 32, 3, pad=1, relu=False)
    layers.append('name: "res2b" type: "Eltwise" bottom: "res2a" bottom: "res2b_branch2b" top: "res2b"')
    layers.append(simple("res2b_relu", "ReLU", "res2b", "res2b"))
    layers.append(pool("pool5", "res2b", "pool5", "AVE", global_pool=True))
    layers.append(ip("fc10", "pool5", "fc10", 10))
    return layers


def small_resnet_mxnet(data):
    def cbr(x, name, n, k, pad=0, stride=1, relu=True):
        x = mx.sym.Convolution(x, num_filter=n, kernel=(k, k), pad=(pad, pad), stride=(stride, stride),
                               no_bias=True, name=name, **wb(name, bias=False))
        x = mx.sym.BatchNorm(x, fix_gamma=False, eps=1e-5, momentum=0.999, name=f"scale_{name}",
                             gamma=mx.sym.Variable(f"scale_{name}_0_weight"),
                             beta=mx.sym.Variable(f"scale_{name}_1_bias"),
                             moving_mean=mx.sym.Variable(f"bn_{name}_moving_mean"),
                             moving_var=mx.sym.Variable(f"bn_{name}_moving_var"))
        return mx.sym.Activation(x, act_type="relu") if relu else x

    x = cbr(data, "conv1", 16, 3, pad=1)
    b1 = cbr(x, "res2a_branch1", 32, 1, stride=2, relu=False)
    b2 = cbr(cbr(x, "res2a_branch2a", 32, 3, pad=1, stride=2), "res2a_branch2b", 32, 3, pad=1, relu=False)
    x = mx.sym.Activation(b1 + b2, act_type="relu")
    b2 = cbr(cbr(x, "res2b_branch2a", 32, 3, pad=1), "res2b_branch2b", 32, 3, pad=1, relu=False)
    x = mx.sym.Activation(x + b2, act_type="relu")
    x = mx.sym.Pooling(x, global_pool=True, kernel=(1, 1), pool_type="avg")
    return mx.sym.FullyConnected(x, num_hidden=10, name="fc10", **wb("fc10"))


NETS = [("CIFAR-10 quick", (3, 32, 32), cifar10_quick, cifar10_quick_mxnet, 100, 16),
        ("small ResNet", (3, 32, 32), small_resnet, small_resnet_mxnet, 32, 8)]


# ---------------------------------------------------------------------------
# Building the exact and native graphs

def parse(text):
    layer = LayerParameter()
    text_format.Parse(text, layer)
    return layer


def caffe_blobs(text, bottom_shapes, rng):
    shapes, _ = ops.layer_shapes(text, bottom_shapes)
    layer = parse(text)
    if layer.type == "BatchNorm":
        c = shapes[0][0]
        return [rng.normal(0, 0.1, c).astype(np.float32), rng.uniform(0.5, 1.5, c).astype(np.float32),
                np.ones(1, np.float32)]
    if layer.type == "Scale":
        return [rng.uniform(0.8, 1.2, s).astype(np.float32) if i == 0 else rng.normal(0, 0.1, s).astype(np.float32)
                for i, s in enumerate(shapes)]
    out = []
    for i, s in enumerate(shapes):
        fan_in = int(np.prod(s[1:])) if len(s) > 1 else 1
        out.append(rng.normal(0, np.sqrt(2.0 / fan_in) if i == 0 else 0.01, s).astype(np.float32))
    return out


def build(texts, data_shape, use_native, rng=None, blobs_by_layer=None):
    """(output symbol, arg_params, aux_params, number of native layers)."""
    data = mx.sym.Variable("data", shape=data_shape)
    blobs = {"data": data}
    args, aux = {}, {}
    layers = [parse(t) for t in texts]
    n_native = 0
    i = 0
    while i < len(layers):
        layer, text = layers[i], texts[i]
        bottoms = [blobs[b] for b in layer.bottom]
        shapes = [b.infer_shape()[1][0] for b in bottoms]
        if layer.name not in blobs_by_layer:
            blobs_by_layer[layer.name] = caffe_blobs(text, shapes, rng)
        caffe = blobs_by_layer[layer.name]
        nl = None
        used = 1
        if use_native:
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if layer.type == "BatchNorm" and nxt is not None and nxt.type == "Scale" and \
                    list(nxt.bottom) == list(layer.top):
                if nxt.name not in blobs_by_layer:
                    blobs_by_layer[nxt.name] = caffe_blobs(texts[i + 1], shapes, rng)
                nl = native.native_batchnorm_scale(layer, nxt, bottoms, nxt.name, "TRAIN")
                if nl is not None:
                    caffe = caffe + blobs_by_layer[nxt.name]
                    used = 2
                    layer = nxt
            if nl is None:
                nl = native.native_layer(layer, bottoms, layer.name, "TRAIN")
        if nl is not None:
            n_native += used
            tops = nl.tops
            for name, arr in nl.to_native(caffe).items():
                (aux if name in nl.aux_names else args)[name] = arr
        else:
            info = ops.layer_info(text, len(shapes[0]), len(bottoms))
            out = mx.sym.CaffeOp(*bottoms, num_data=len(bottoms), num_weight=info.num_blobs,
                                 num_out=max(1, len(layer.top)), prototxt=text, name=layer.name)
            tops = [out] if len(layer.top) <= 1 else [out[j] for j in range(len(layer.top))]
            for j, arr in enumerate(caffe):
                vname = f"{layer.name}_{j}_weight" if j == 0 else f"{layer.name}_{j}_bias"
                (aux if j in info.state_blobs else args)[vname] = arr
        for name, top in zip(layer.top, tops):
            blobs[name] = top
        i += used
    return blobs[layers[-1].top[0]], args, aux, n_native


def bind(sym, batch, data_shape, args, aux, rng):
    # bind() with explicit arrays: simple_bind (and so Module.bind) fails on a
    # CaffeOp BatchNorm in MXNet 1.9.1 (its auxiliary states' storage type is
    # left undefined; see the report of branch net-native).
    arg_shapes, out_shapes, aux_shapes = sym.infer_shape(data=(batch,) + data_shape)
    arrays = {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        arrays[name] = mx.nd.array(rng.normal(0, 1, shape) if name == "data" else args[name])
    grads = {name: mx.nd.zeros(a.shape) for name, a in arrays.items()}
    auxs = {name: mx.nd.array(aux[name]) for name in sym.list_auxiliary_states()}
    ex = sym.bind(mx.cpu(), args=arrays, args_grad=grads, grad_req="write", aux_states=auxs)
    head = mx.nd.array(rng.normal(0, 1, out_shapes[0]))
    return ex, head


def time_forward(ex, iters):
    t = time.perf_counter()
    for _ in range(iters):
        ex.forward(is_train=False)
    ex.outputs[0].wait_to_read()
    return (time.perf_counter() - t) / iters


def time_train(ex, head, iters):
    t = time.perf_counter()
    for _ in range(iters):
        ex.forward(is_train=True)
        ex.backward([head])
    mx.nd.waitall()
    return (time.perf_counter() - t) / iters


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches, 2 rounds of 3 iterations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    opts = parser.parse_args(argv)
    repeats, iters = (2, 3) if opts.quick else (opts.repeats, opts.iters)
    print(f"ops BLAS: {ops.blas_info()}")
    for title, data_shape, layers_fn, hand_fn, batch, quick_batch in NETS:
        batch = quick_batch if opts.quick else batch
        rng = np.random.RandomState(0)
        texts = layers_fn()
        caffe = {}
        exact_sym, e_args, e_aux, _ = build(texts, (batch,) + data_shape, False, rng, caffe)
        native_sym, n_args, n_aux, n_native = build(texts, (batch,) + data_shape, True, rng, caffe)
        hand_sym = hand_fn(mx.sym.Variable("data"))
        execs = {}
        for key, sym, args, aux in (("exact", exact_sym, e_args, e_aux), ("native", native_sym, n_args, n_aux),
                                    ("hand", hand_sym, n_args, n_aux)):
            execs[key] = bind(sym, batch, data_shape, args, aux, np.random.RandomState(1))
        outs = {k: ex.forward(is_train=False)[0].asnumpy() for k, (ex, _) in execs.items()}
        scale = float(np.abs(outs["exact"]).max())
        print(f"\n{title}, batch {batch}: {n_native}/{len(texts)} layers native; max |difference| / max |exact| "
              f"of the outputs: native {np.abs(outs['native'] - outs['exact']).max() / scale:.1e}, "
              f"hand-written {np.abs(outs['hand'] - outs['exact']).max() / scale:.1e}")
        times = {(k, m): [] for k in execs for m in ("forward", "train")}
        for ex, head in execs.values():  # warm-up
            time_train(ex, head, 1)
            time_forward(ex, 1)
        for _ in range(repeats):
            for key, (ex, head) in execs.items():
                times[(key, "forward")].append(time_forward(ex, iters))
                times[(key, "train")].append(time_train(ex, head, iters))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{'path':<14}{'forward ms':>12}{'fwd+bwd ms':>12}{'fwd ratio':>11}{'fwd+bwd ratio':>15}")
        for key, label in (("hand", "hand-written"), ("native", "native"), ("exact", "exact")):
            f, t = med[(key, "forward")], med[(key, "train")]
            print(f"{label:<14}{f * 1e3:>12.2f}{t * 1e3:>12.2f}{f / med[('hand', 'forward')]:>10.2f}x"
                  f"{t / med[('hand', 'train')]:>14.2f}x")


if __name__ == "__main__":
    main()
