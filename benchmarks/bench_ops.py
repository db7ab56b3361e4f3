"""Forward+backward time of CaffeOp InnerProduct / Convolution against MXNet's
native FullyConnected / Convolution at the same shapes, in the same process.

Each case binds two executors (CaffeOp and native), then alternates A/B runs
of `iters` forward(is_train=True)+backward calls and reports the median per
call and the ratio CaffeOp / native (target <= 1.5).  Also prints which BLAS
core the ops library runs.

    python benchmarks/bench_ops.py [--repeats 7] [--iters 20]
"""
import argparse
import statistics
import time

import mxnet as mx
import numpy as np

import caffedata  # noqa: F401  (registers mx.sym.CaffeOp)
from caffedata.mxnet import library as ops

CASES = [
    # name, data shape, caffe prototxt, native symbol builder
    ("InnerProduct 256x784->128", (256, 784),
     'layer{type:"InnerProduct" inner_product_param{num_output:128}}',
     lambda d: mx.sym.FullyConnected(d, num_hidden=128, name="fc")),
    ("InnerProduct 64x4096->1024", (64, 4096),
     'layer{type:"InnerProduct" inner_product_param{num_output:1024}}',
     lambda d: mx.sym.FullyConnected(d, num_hidden=1024, name="fc")),
    ("Convolution LeNet1 64x1x28x28 k5 ->20", (64, 1, 28, 28),
     'layer{type:"Convolution" convolution_param{num_output:20 kernel_size:5}}',
     lambda d: mx.sym.Convolution(d, num_filter=20, kernel=(5, 5), name="fc")),
    ("Convolution LeNet2 64x20x12x12 k5 ->50", (64, 20, 12, 12),
     'layer{type:"Convolution" convolution_param{num_output:50 kernel_size:5}}',
     lambda d: mx.sym.Convolution(d, num_filter=50, kernel=(5, 5), name="fc")),
    ("Convolution 32x64x28x28 k3 p1 ->64", (32, 64, 28, 28),
     'layer{type:"Convolution" convolution_param{num_output:64 kernel_size:3 pad:1}}',
     lambda d: mx.sym.Convolution(d, num_filter=64, kernel=(3, 3), pad=(1, 1), name="fc")),
]


def _bind(sym, shape, params):
    ex = sym.simple_bind(mx.cpu(), data=shape, grad_req="write")
    for k, v in params.items():
        ex.arg_dict[k][:] = v
    ex.arg_dict["data"][:] = np.random.RandomState(0).randn(*shape)
    og = mx.nd.array(np.random.RandomState(1).randn(*ex.outputs[0].shape))
    return ex, og


def _time(ex, og, iters):
    t = time.perf_counter()
    for _ in range(iters):
        ex.forward(is_train=True)
        ex.backward([og])
    mx.nd.waitall()
    for g in ex.grad_arrays:
        if g is not None:
            g.wait_to_read()
    return (time.perf_counter() - t) / iters


def run_case(name, shape, proto, native_fn, repeats, iters):
    data = mx.sym.Variable("data")
    caffe = mx.sym.CaffeOp(data_0=data, num_weight=2, name="fc", prototxt=proto)
    native = native_fn(data)
    ex_c, og = _bind(caffe, shape, {})
    rng = np.random.RandomState(2)
    w = rng.randn(*ex_c.arg_dict["fc_0_weight"].shape) * 0.01
    b = rng.randn(*ex_c.arg_dict["fc_1_bias"].shape) * 0.01
    ex_c.arg_dict["fc_0_weight"][:] = w
    ex_c.arg_dict["fc_1_bias"][:] = b
    ex_n, og_n = _bind(native, shape, {"fc_weight": w.reshape(ex_c.arg_dict["fc_0_weight"].shape), "fc_bias": b})
    # Same results before timing.
    ex_c.forward(is_train=True)
    ex_n.forward(is_train=True)
    err = float(np.abs(ex_c.outputs[0].asnumpy() - ex_n.outputs[0].asnumpy()).max())
    for ex, o in ((ex_c, og), (ex_n, og_n)):  # warm-up
        _time(ex, o, 3)
    tc, tn = [], []
    for _ in range(repeats):  # A/B interleaved
        tc.append(_time(ex_c, og, iters))
        tn.append(_time(ex_n, og_n, iters))
    mc, mn = statistics.median(tc), statistics.median(tn)
    print(f"{name:40s} caffe {mc * 1e3:8.3f} ms  native {mn * 1e3:8.3f} ms  ratio {mc / mn:5.2f}x  "
          f"(max |diff| fwd {err:.1e})")
    return mc / mn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    print("ops library BLAS:", ops.blas_info())
    print("mxnet features: MKLDNN=%s BLAS_OPEN=%s" % (mx.runtime.Features().is_enabled("MKLDNN"),
                                                       mx.runtime.Features().is_enabled("BLAS_OPEN")))
    ratios = [run_case(*c, repeats=args.repeats, iters=args.iters) for c in CASES]
    print("median ratio %.2fx, worst %.2fx" % (statistics.median(ratios), max(ratios)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
