"""Imported Caffe nets against the same nets written in native MXNet by hand, in one process.

For CIFAR-10 quick, GoogLeNet and a ResNet (tests/nets.py generators), three
executors are bound at the same input shape from the same weights:

* ``exact``: ``caffedata.Net(prototxt).symbol`` (every layer a CaffeOp),
* ``native``: ``Net(prototxt, native=True).symbol`` (native ops where equal),
* ``mxnet``: the net written by hand below with MXNet's own operators,

and A/B/C runs alternate; each row reports the median time per forward
(``is_train=False``) and per forward+backward (``is_train=True``) and the
ratios to the hand-written net (targets: native <= 1.05x, exact <= 1.5x).

    python benchmarks/bench_nets.py [--quick] [--full] [--repeats 5] [--iters 5]

``--quick`` runs small inputs, a few iterations (a smoke run); the default
uses reduced inputs (GoogLeNet 112x112, ResNet 112x112); ``--full`` the
published 224x224.
"""
import argparse
import os
import statistics
import sys
import time

import mxnet as mx
import numpy as np

import caffedata  # noqa: F401  (registers mx.sym.CaffeOp)
from caffedata.net.net import Net

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import nets  # noqa: E402


# ---------------------------------------------------------------------------
# The same nets, by hand, with MXNet operators (parameter names as CaffeOp's)

def _conv(x, name, num, k, s=1, p=0, g=1, bias=True):
    return mx.sym.Convolution(x, num_filter=num, kernel=(k, k), stride=(s, s), pad=(p, p), num_group=g,
                              no_bias=not bias, name=name, weight=mx.sym.var(f"{name}_0_weight"),
                              bias=mx.sym.var(f"{name}_1_bias") if bias else None)


def _pool(x, kind, k, s, p=0, global_=False):
    return mx.sym.Pooling(x, pool_type=kind, kernel=(k, k), stride=(s, s), pad=(p, p), global_pool=global_,
                          pooling_convention="full")


def _fc(x, name, num):
    return mx.sym.FullyConnected(x, num_hidden=num, name=name, weight=mx.sym.var(f"{name}_0_weight"),
                                 bias=mx.sym.var(f"{name}_1_bias"))


def _lrn(x):
    return mx.sym.LRN(x, nsize=5, alpha=1e-4, beta=0.75, knorm=1.0)


def mx_cifar10_quick():
    d = mx.sym.var("data")
    h = mx.sym.relu(_pool(_conv(d, "conv1", 32, 5, p=2), "max", 3, 2))
    h = _pool(mx.sym.relu(_conv(h, "conv2", 32, 5, p=2)), "avg", 3, 2)
    h = _pool(mx.sym.relu(_conv(h, "conv3", 64, 5, p=2)), "avg", 3, 2)
    return mx.sym.softmax(_fc(_fc(h, "ip1", 64), "ip2", 10), axis=1)


def mx_googlenet(size, width, classes=1000):
    w = width
    d = mx.sym.var("data")
    h = _lrn(_pool(mx.sym.relu(_conv(d, "conv1/7x7_s2", 64 // w, 7, 2, 3)), "max", 3, 2))
    h = mx.sym.relu(_conv(h, "conv2/3x3_reduce", 64 // w, 1))
    h = _pool(_lrn(mx.sym.relu(_conv(h, "conv2/3x3", 192 // w, 3, p=1))), "max", 3, 2)
    for name, n1, n3r, n3, n5r, n5, npool in nets.INCEPTION:
        p = f"inception_{name}"
        b1 = mx.sym.relu(_conv(h, f"{p}/1x1", n1 // w, 1))
        b3 = mx.sym.relu(_conv(mx.sym.relu(_conv(h, f"{p}/3x3_reduce", n3r // w, 1)), f"{p}/3x3", n3 // w, 3, p=1))
        b5 = mx.sym.relu(_conv(mx.sym.relu(_conv(h, f"{p}/5x5_reduce", n5r // w, 1)), f"{p}/5x5", n5 // w, 5, p=2))
        bp = mx.sym.relu(_conv(_pool(h, "max", 3, 1, 1), f"{p}/pool_proj", npool // w, 1))
        h = mx.sym.concat(b1, b3, b5, bp, dim=1)
        if name in ("3b", "4e"):
            h = _pool(h, "max", 3, 2)
    h = _pool(h, "avg", size // 32, 1)
    return mx.sym.softmax(_fc(h, "loss3/classifier", classes), axis=1)


def _conv_bn(x, name, num, k, s=1, p=0, relu=True, suffix=None):
    sfx = suffix or name[3:]
    h = _conv(x, name, num, k, s, p, bias=False)
    h = mx.sym.BatchNorm(h, gamma=mx.sym.var(f"scale{sfx}_0_weight"), beta=mx.sym.var(f"scale{sfx}_1_bias"),
                         moving_mean=mx.sym.var(f"bn{sfx}_moving_mean"), moving_var=mx.sym.var(f"bn{sfx}_moving_var"),
                         fix_gamma=False, use_global_stats=True, eps=1e-5, name=f"bn{sfx}")
    return mx.sym.relu(h) if relu else h


def mx_resnet(size, width, classes=1000):
    d = mx.sym.var("data")
    h = _pool(_conv_bn(d, "conv1", 64 // width, 7, 2, 3, suffix="_conv1"), "max", 3, 2)
    for stage, planes, stride, project in (("2a", 64, 1, True), ("2b", 64, 1, False), ("3a", 128, 2, True),
                                           ("3b", 128, 1, False)):
        p, planes = f"res{stage}", planes // width
        short = _conv_bn(h, f"{p}_branch1", planes * 4, 1, stride, relu=False) if project else h
        b = _conv_bn(h, f"{p}_branch2a", planes, 1, stride)
        b = _conv_bn(b, f"{p}_branch2b", planes, 3, p=1)
        b = _conv_bn(b, f"{p}_branch2c", planes * 4, 1, relu=False)
        h = mx.sym.relu(short + b)
    h = _pool(h, "avg", 1, 1, global_=True)
    return mx.sym.softmax(_fc(h, "fc", classes), axis=1)


# ---------------------------------------------------------------------------

def _executor(sym, shape, values):
    ex = sym.simple_bind(mx.cpu(), data=shape, grad_req="write")
    rng = np.random.default_rng(0)
    for name, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
        if name == "data":
            arr[:] = rng.normal(size=shape)
        elif name in values:
            arr[:] = values[name]
        elif name.endswith("moving_var"):
            arr[:] = 1.0
        else:  # hand-written net: BatchNorm statistics take the Caffe net's values below
            arr[:] = rng.normal(0, 0.05, arr.shape)
    return ex


def _hand_values(net):
    """The hand-written net's parameters from the Caffe blobs (BatchNorm: mean/var from the sums)."""
    values = {k: v.asnumpy() for k, v in net.arg_params.items()}
    for layer, blobs in net.params.items():
        if net._graph.layer(layer).type == "BatchNorm":
            f = 1.0 / blobs[2][0] if blobs[2][0] else 0.0
            values[f"{layer}_moving_mean"] = blobs[0] * f
            values[f"{layer}_moving_var"] = blobs[1] * f
    return values


def _time(ex, backward, iters):
    og = [mx.nd.ones(o.shape) for o in ex.outputs] if backward else None
    t = time.perf_counter()
    for _ in range(iters):
        ex.forward(is_train=backward)
        if backward:
            ex.backward(og)
    mx.nd.waitall()
    return (time.perf_counter() - t) / iters


def run(cases, repeats, iters):
    print(f"{'net':<34}{'pass':<10}{'mxnet ms':>10}{'native ms':>11}{'exact ms':>10}{'native/mx':>11}"
          f"{'exact/mx':>10}")
    for label, text, hand, shape in cases:
        exact = Net(text)
        native = Net(text, native=True)
        values = {**{k: v.asnumpy() for k, v in exact.arg_params.items()},
                  **{k: v.asnumpy() for k, v in exact.aux_params.items()}}
        rng = np.random.default_rng(1)
        for k in values:  # BatchNorm sums and factor: valid statistics
            if k.startswith("bn") and k.endswith("_2_bias"):
                values[k][:] = 1.0
            elif k.startswith("bn") and k.endswith("_1_bias"):
                values[k][:] = rng.uniform(0.5, 2, values[k].shape)
        exact.set_mxnet_params({k: v for k, v in values.items() if k in exact.arg_params},
                               {k: v for k, v in values.items() if k in exact.aux_params})
        for dst_layer, blobs in exact.params.items():
            for dst, src in zip(native.params[dst_layer], blobs):
                dst[...] = src
        execs = {
            "mxnet": _executor(hand, shape, _hand_values(exact)),
            "native": _executor(native.symbol, shape, {**{k: v.asnumpy() for k, v in native.arg_params.items()},
                                                      **{k: v.asnumpy() for k, v in native.aux_params.items()}}),
            "exact": _executor(exact.symbol, shape, values),
        }
        outs = {k: e.forward(is_train=False)[0].asnumpy() for k, e in execs.items()}
        for k in ("native", "exact"):
            err = np.abs(outs[k] - outs["mxnet"]).max()
            if err > 1e-4:
                print(f"  warning: {label} {k} output differs from the hand-written net by {err:.2e}")
        for backward in (False, True):
            times = {k: [] for k in execs}
            for k, e in execs.items():
                _time(e, backward, 1)  # warm-up
            for _ in range(repeats):
                for k, e in execs.items():
                    times[k].append(_time(e, backward, iters))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(f"{label:<34}{'fwd+bwd' if backward else 'fwd':<10}{med['mxnet']:>10.2f}{med['native']:>11.2f}"
                  f"{med['exact']:>10.2f}{med['native'] / med['mxnet']:>10.2f}x{med['exact'] / med['mxnet']:>9.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, few iterations (smoke run)")
    ap.add_argument("--full", action="store_true", help="published input sizes (224x224)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    size, width, batch = (224, 1, args.batch) if args.full else (112, 1, args.batch)
    if args.quick:
        size, width, batch, args.repeats, args.iters = 64, 4, 2, 2, 2
    cases = [
        (f"CIFAR-10 quick {batch}x3x32x32", nets.cifar10_quick(batch), mx_cifar10_quick(), (batch, 3, 32, 32)),
        (f"GoogLeNet {batch}x3x{size}x{size} w/{width}", nets.googlenet(batch, size, width),
         mx_googlenet(size, width), (batch, 3, size, size)),
        (f"ResNet {batch}x3x{size}x{size} w/{width}", nets.resnet(batch, size, width),
         mx_resnet(size, width), (batch, 3, size, size)),
    ]
    run(cases, args.repeats, args.iters)


if __name__ == "__main__":
    main()
