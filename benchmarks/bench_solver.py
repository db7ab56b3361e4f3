"""Iterations/s of caffedata's Solver against the same net and optimizer written by hand in MXNet.

For LeNet (batch 64, 1x28x28) and CIFAR-10 quick (batch 100, 3x32x32), in one process:

* ``exact``: ``Solver`` over ``caffedata.Net(train prototxt)`` (every layer a CaffeOp), the
  path of ``caffedata train``;
* ``native``: the same with ``Net(..., native=True)`` (``caffedata train --native``);
* ``mxnet``: the net written by hand with MXNet's own operators and ``SoftmaxOutput``,
  trained as ``Module.fit`` trains (forward_backward, update with MXNet's ``sgd``, the
  output read back for the metric).

All three read the same in-memory batches (``NDArrayIter``, wrapping around) and run
with the same OpenMP threads (MXNet's default unless ``OMP_NUM_THREADS`` is set); A/B/C
rounds alternate and each figure is the median.  Ratio = solver / hand-written
(issue 13's target: >= 0.9).

    python benchmarks/bench_solver.py [--quick] [--iters 30] [--rounds 5] [--nets lenet,cifar10_quick]
"""
import argparse
import statistics
import time

import mxnet as mx
import numpy as np

import caffedata  # noqa: F401  (mx.sym.CaffeOp / CaffeLoss)
from caffedata.net.net import Net
from caffedata.solver.module_net import ModuleNet
from caffedata.solver.solver import Solver

# Caffe's examples: lenet_solver (inv policy) and cifar10_quick_solver (fixed), without test nets
SOLVERS = {
    "lenet": 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75 '
             'max_iter: 1000000',
    "cifar10_quick": 'base_lr: 0.001 momentum: 0.9 weight_decay: 0.004 lr_policy: "fixed" max_iter: 1000000',
}
SHAPES = {"lenet": (64, 1, 28, 28), "cifar10_quick": (100, 3, 32, 32)}


def _layer(name, kind, bottom, top, body=""):
    bottoms = "".join(f' bottom: "{b}"' for b in ([bottom] if isinstance(bottom, str) else bottom))
    return f'layer {{ name: "{name}" type: "{kind}"{bottoms} top: "{top}" {body} }}\n'


def _conv(name, bottom, num, k, pad=0, std=None):
    filler = f'type: "gaussian" std: {std}' if std else 'type: "xavier"'
    return _layer(name, "Convolution", bottom, name, f"convolution_param {{ num_output: {num} kernel_size: {k} "
                  f"pad: {pad} weight_filler {{ {filler} }} bias_filler {{ type: \"constant\" }} }}")


def _pool(name, bottom, kind, k, s):
    return _layer(name, "Pooling", bottom, name, f"pooling_param {{ pool: {kind} kernel_size: {k} stride: {s} }}")


def _ip(name, bottom, num, std=None):
    filler = f'type: "gaussian" std: {std}' if std else 'type: "xavier"'
    return _layer(name, "InnerProduct", bottom, name, f"inner_product_param {{ num_output: {num} "
                  f"weight_filler {{ {filler} }} bias_filler {{ type: \"constant\" }} }}")


def train_prototxt(net):
    """The train net of Caffe's example, fed by Input layers (the batches come from an NDArrayIter)."""
    n, c, h, w = SHAPES[net]
    text = (f'name: "{net}"\n'
            f'layer {{ name: "input" type: "Input" top: "data" top: "label" input_param {{ '
            f'shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} shape {{ dim: {n} }} }} }}\n')
    if net == "lenet":
        text += (_conv("conv1", "data", 20, 5) + _pool("pool1", "conv1", "MAX", 2, 2) + _conv("conv2", "pool1", 50, 5)
                 + _pool("pool2", "conv2", "MAX", 2, 2) + _ip("ip1", "pool2", 500)
                 + _layer("relu1", "ReLU", "ip1", "ip1") + _ip("ip2", "ip1", 10))
    else:
        text += (_conv("conv1", "data", 32, 5, 2, 0.0001) + _pool("pool1", "conv1", "MAX", 3, 2)
                 + _layer("relu1", "ReLU", "pool1", "pool1") + _conv("conv2", "pool1", 32, 5, 2, 0.01)
                 + _layer("relu2", "ReLU", "conv2", "conv2") + _pool("pool2", "conv2", "AVE", 3, 2)
                 + _conv("conv3", "pool2", 64, 5, 2, 0.01) + _layer("relu3", "ReLU", "conv3", "conv3")
                 + _pool("pool3", "conv3", "AVE", 3, 2) + _ip("ip1", "pool3", 64, 0.1) + _ip("ip2", "ip1", 10, 0.1))
    return text + _layer("loss", "SoftmaxWithLoss", ("ip2", "label"), "loss")


def hand_written(net):
    """The same net with MXNet's operators (Caffe's ceil-mode pooling is pooling_convention='full')."""
    def conv(x, num, k, pad=0):
        return mx.sym.Convolution(x, num_filter=num, kernel=(k, k), pad=(pad, pad))

    def pool(x, kind, k, s):
        return mx.sym.Pooling(x, pool_type=kind, kernel=(k, k), stride=(s, s), pooling_convention="full")

    x = mx.sym.var("data")
    if net == "lenet":
        x = pool(conv(pool(conv(x, 20, 5), "max", 2, 2), 50, 5), "max", 2, 2)
        x = mx.sym.FullyConnected(mx.sym.relu(mx.sym.FullyConnected(x, num_hidden=500)), num_hidden=10)
    else:
        x = mx.sym.relu(pool(conv(x, 32, 5, 2), "max", 3, 2))
        x = pool(mx.sym.relu(conv(x, 32, 5, 2)), "avg", 3, 2)
        x = pool(mx.sym.relu(conv(x, 64, 5, 2)), "avg", 3, 2)
        x = mx.sym.FullyConnected(mx.sym.FullyConnected(x, num_hidden=64), num_hidden=10)
    return mx.sym.SoftmaxOutput(x, mx.sym.var("label"), name="softmax")


def batches(net, count=10):
    rng = np.random.RandomState(0)
    n, c, h, w = SHAPES[net]
    x = rng.rand(n * count, c, h, w).astype(np.float32)
    y = rng.randint(0, 10, n * count).astype(np.float32)
    return mx.io.NDArrayIter(x, y, batch_size=n, label_name="label")


def make_solver(net, native):
    caffe_net = Net(train_prototxt(net), phase="TRAIN", native=native)
    return Solver(SOLVERS[net], ModuleNet.from_net(caffe_net, data_iter=batches(net)))


def make_module(net):
    it = batches(net)
    mod = mx.mod.Module(hand_written(net), data_names=["data"], label_names=["label"])
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    mod.init_params(mx.init.Xavier())
    lr = 0.01 if net == "lenet" else 0.001
    wd = 0.0005 if net == "lenet" else 0.004
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": lr, "momentum": 0.9, "wd": wd})
    return mod, it


def run_solver(solver, iters):
    t = time.perf_counter()
    solver.step(iters)
    mx.nd.waitall()
    return iters / (time.perf_counter() - t)


def run_module(mod_it, iters):
    mod, it = mod_it
    t = time.perf_counter()
    for _ in range(iters):
        try:
            batch = next(it)
        except StopIteration:
            it.reset()
            batch = next(it)
        mod.forward_backward(batch)
        mod.update()
        mod.get_outputs()[0].asnumpy()  # Module.fit's metric reads the output
    mx.nd.waitall()
    return iters / (time.perf_counter() - t)


def measure(net, iters, rounds):
    runners = {
        "exact": (run_solver, make_solver(net, native=False)),
        "native": (run_solver, make_solver(net, native=True)),
        "mxnet": (run_module, make_module(net)),
    }
    rates = {k: [] for k in runners}
    for run, obj in runners.values():
        run(obj, 3)  # warm-up
    for _ in range(rounds):
        for k, (run, obj) in runners.items():
            rates[k].append(run(obj, iters))
    return {k: statistics.median(v) for k, v in rates.items()}, rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--nets", default="lenet,cifar10_quick")
    args = p.parse_args(argv)
    iters = args.iters or (10 if args.quick else 30)
    rounds = args.rounds or (3 if args.quick else 5)
    for net in args.nets.split(","):
        med, rates = measure(net, iters, rounds)
        spread = {k: f"{min(v):.1f}-{max(v):.1f}" for k, v in rates.items()}
        print(f"{net} batch {SHAPES[net][0]}: exact {med['exact']:.1f} it/s ({spread['exact']}), "
              f"native {med['native']:.1f} it/s ({spread['native']}), hand-written Module "
              f"{med['mxnet']:.1f} it/s ({spread['mxnet']}); ratios exact {med['exact'] / med['mxnet']:.2f}x, "
              f"native {med['native'] / med['mxnet']:.2f}x")


if __name__ == "__main__":
    main()
