"""Iterations/s of caffedata's Solver (ModuleNet fast path, caffe_sgd) against a hand-written MXNet
Module loop (forward_backward + update with MXNet's own 'sgd', loss read back each batch) on the same
LeNet symbol (CaffeOp layers + CaffeLoss) and the same in-memory batches, alternating A/B rounds in
one process.  Ratio = solver / hand-written (issue 13's target: >= 0.9).

    python benchmarks/bench_solver.py [--quick] [--iters 50] [--rounds 5]
"""
import argparse
import statistics
import time

import mxnet as mx
import numpy as np

import caffedata  # noqa: F401  (mx.sym.CaffeOp / CaffeLoss)
from caffedata.solver.module_net import ModuleNet
from caffedata.solver.solver import Solver

SOLVER = 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75 max_iter: 1000000'


def lenet():
    def op(x, name, nw, text):
        return mx.sym.CaffeOp(data_0=x, num_weight=nw, name=name, prototxt=f"layer {{ {text} }}")
    x = mx.sym.Variable("data")
    x = op(x, "conv1", 2, 'type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 '
                          'weight_filler { type: "xavier" } }')
    x = op(x, "pool1", 0, 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
    x = op(x, "conv2", 2, 'type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 '
                          'weight_filler { type: "xavier" } }')
    x = op(x, "pool2", 0, 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
    x = op(x, "ip1", 2, 'type: "InnerProduct" inner_product_param { num_output: 500 weight_filler { type: "xavier" } }')
    x = op(x, "relu1", 0, 'type: "ReLU"')
    x = op(x, "ip2", 2, 'type: "InnerProduct" inner_product_param { num_output: 10 weight_filler { type: "xavier" } }')
    return mx.sym.CaffeLoss(data=x, label=mx.sym.Variable("label"), name="loss",
                            prototxt='layer { type: "SoftmaxWithLoss" }')


def data_iter(batch, batches):
    rng = np.random.RandomState(0)
    x = rng.rand(batch * batches, 1, 28, 28).astype(np.float32)
    y = rng.randint(0, 10, batch * batches).astype(np.float32)
    return mx.io.NDArrayIter(x, y, batch_size=batch, label_name="label")


def run_solver(solver, iters):
    t = time.perf_counter()
    solver.step(iters)
    mx.nd.waitall()
    return iters / (time.perf_counter() - t)


def run_module(mod, it, iters):
    t = time.perf_counter()
    for _ in range(iters):
        try:
            batch = next(it)
        except StopIteration:
            it.reset()
            batch = next(it)
        mod.forward_backward(batch)
        mod.update()
        mod.get_outputs()[0].asnumpy()
    mx.nd.waitall()
    return iters / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    iters = args.iters or (15 if args.quick else 100)
    rounds = args.rounds or (3 if args.quick else 5)
    sym = lenet()
    solver = Solver(SOLVER, ModuleNet(sym, data_iter(args.batch, 10), loss_weights={"loss_output": 1.0},
                                      initializer=mx.init.Xavier()))
    it = data_iter(args.batch, 10)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=["label"])
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    mod.init_params(mx.init.Xavier())
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01, "momentum": 0.9, "wd": 0.0005})
    run_solver(solver, 3)  # warm-up both
    run_module(mod, it, 3)
    a, b = [], []
    for _ in range(rounds):
        a.append(run_solver(solver, iters))
        b.append(run_module(mod, it, iters))
    sa, sb = statistics.median(a), statistics.median(b)
    print(f"LeNet batch {args.batch}: solver {sa:.1f} it/s, hand-written Module {sb:.1f} it/s, "
          f"ratio {sa / sb:.3f}")


if __name__ == "__main__":
    main()
