"""CaffeOp / CaffeLoss core: glue, InnerProduct, Convolution, Deconvolution,
Pooling, Softmax, SoftmaxWithLoss, fillers, multipliers, normalisation,
phase, library loading, Module / mx.nd / Gluon.

Expectations come from MXNet's own ops (where Caffe agrees), NumPy references
of Caffe's formulas, hand-computed values and numeric gradients.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mxnet as mx  # noqa: E402
import caffedata  # noqa: E402
from caffedata.mxnet import library as ops  # noqa: E402
from caffedata.mxnet import symbols  # noqa: E402
from caffedata.errors import OpsLibraryError, SpecError  # noqa: E402

if not os.path.isfile(ops.library_path()):
    pytest.skip("ops library not built (python setup.py build_ext --inplace)", allow_module_level=True)

from childproc import run_child  # noqa: E402
from conftest import caffe_pool_windows, data_prototxt, key, raw_datum, write_db  # noqa: E402



def ip(n, extra=""):
    return 'layer{type:"InnerProduct" inner_product_param{num_output:%d %s}}' % (n, extra)


def conv(kind, extra):
    return 'layer{type:"%s" convolution_param{%s}}' % (kind, extra)


def pool(extra):
    return 'layer{type:"Pooling" pooling_param{%s}}' % extra


# ---------------------------------------------------------------------------
# Library, registry, parser, names.

def test_library_loaded_and_layers_registered():
    types = ops.supported_layers()
    for t in ("InnerProduct", "Convolution", "Deconvolution", "Pooling", "Softmax", "SoftmaxWithLoss"):
        assert t in types
    info = ops.blas_info()
    assert "OpenBLAS" in info  # the GEMM is the wheel's OpenBLAS, kernel named in the string


def test_unsupported_layer_lists_supported_ones():
    with pytest.raises(SpecError, match=r"unsupported Caffe layer type 'NoSuchLayer'.*InnerProduct"):
        mx.sym.CaffeOp(data_0=mx.sym.Variable("data"), prototxt='layer{type:"NoSuchLayer"}')


def test_bad_prototxt_errors():
    with pytest.raises(SpecError, match="invalid prototxt"):
        mx.sym.CaffeOp(data_0=mx.sym.Variable("data"), prototxt='layer{type:"ReLU" relu_param{')
    with pytest.raises(SpecError, match="exactly one"):
        mx.sym.CaffeOp(data_0=mx.sym.Variable("data"), prototxt='layer{type:"ReLU"} layer{type:"ReLU"}')
    # The C++ parser reports the position.
    with pytest.raises(SpecError, match="line 2, column"):
        ops.layer_info('layer {\n  type: "InnerProduct" inner_product_param { num_output: }\n}')


def test_cpp_parser_handles_text_format_variants():
    text = """# comment
    layer { name: 'fc' type: "Inner\\x50roduct";  # hex escape -> P
      inner_product_param: { num_output: 7, bias_term: false axis: -1 }
      param { lr_mult: 1e0 } }"""
    blobs, tops = ops.layer_shapes(text, [(2, 3, 5)])
    assert blobs == [(7, 5)]  # no bias, axis -1
    assert tops == [(2, 3, 7)]


def test_names_and_shapes():
    data = mx.sym.Variable("data")
    fc1 = mx.sym.CaffeOp(data_0=data, num_weight=2, name="fc1", prototxt=ip(16))
    assert fc1.list_arguments() == ["data", "fc1_0_weight", "fc1_1_bias"]
    assert fc1.list_outputs() == ["fc1_output"]
    args, outs, _ = fc1.infer_shape(data=(4, 3, 5))
    assert args == [(4, 3, 5), (16, 15), (16,)]
    assert outs == [(4, 16)]
    # positional symbols, several tops: output0.. (MAX pooling with its mask top)
    p = mx.sym.CaffeOp(data, num_out=2, name="p", prototxt=pool("pool:MAX kernel_size:2 stride:2"))
    assert p.list_outputs() == ["p_output0", "p_output1"]
    cv = mx.sym.CaffeOp(data, num_weight=2, name="c", prototxt=conv("Convolution", "num_output:4 kernel_size:3"))
    args, outs, _ = cv.infer_shape(data=(2, 3, 9, 9))
    assert args[1:] == [(4, 3, 3, 3), (4,)] and outs == [(2, 4, 7, 7)]


def test_num_weight_mismatch_is_clear():
    data = mx.sym.Variable("data")
    with pytest.raises(SpecError, match=r"2 parameter blob\(s\) but num_weight=1"):
        mx.sym.CaffeOp(data_0=data, num_weight=1, prototxt=ip(3))
    # The C++ check (e.g. a raw op) names both numbers too.
    x = mx.nd.ones((2, 4))
    w = mx.nd.ones((3, 4))
    with pytest.raises(mx.base.MXNetError, match=r"2 parameter blob\(s\) but num_weight=1"):
        mx.nd._internal._caffedata_op(x, w, num_weight=1, prototxt=ip(3)).wait_to_read()


def test_weight_shape_mismatch_is_clear():
    data = mx.sym.Variable("data")
    w = mx.sym.Variable("w", shape=(3, 5))
    b = mx.sym.Variable("b", shape=(3,))
    s = mx.sym.CaffeOp(data, w, b, num_weight=2, prototxt=ip(3))
    with pytest.raises(mx.base.MXNetError, match=r"parameter blob 0 has shape \(3, 5\) but the layer needs \(3, 4\)"):
        s.infer_shape(data=(2, 4))


def test_dtype_other_than_float_is_rejected():
    with pytest.raises(mx.base.MXNetError, match="float32 or float64 only"):
        mx.nd.CaffeOp(mx.nd.ones((2, 2), dtype="int32"), prototxt='layer{type:"Softmax"}').wait_to_read()


# ---------------------------------------------------------------------------
# Forward/backward against MXNet native ops (mx.nd + autograd).

def _fwd_bwd(fn, arrays, og):
    for a in arrays:
        a.attach_grad()
    with mx.autograd.record():
        y = fn(*arrays)
    y.backward(og)
    return [y.asnumpy()] + [a.grad.asnumpy() for a in arrays]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float64", 1e-10)])
def test_inner_product_matches_fully_connected(dtype, tol):
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.randn(5, 3, 4), dtype=dtype)
    w = mx.nd.array(rng.randn(6, 12), dtype=dtype)
    b = mx.nd.array(rng.randn(6), dtype=dtype)
    og = mx.nd.array(rng.randn(5, 6), dtype=dtype)
    got = _fwd_bwd(lambda x, w, b: mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=ip(6)), [x, w, b], og)
    ref = _fwd_bwd(lambda x, w, b: mx.nd.FullyConnected(x, w, b, num_hidden=6), [x, w, b], og)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol)


def test_inner_product_axis_and_transpose_numpy():
    rng = np.random.RandomState(1)
    x = rng.randn(2, 3, 4)
    w = rng.randn(4, 5)  # transpose: true -> (K, N)
    xs, ws = mx.nd.array(x, dtype="float64"), mx.nd.array(w, dtype="float64")
    y = mx.nd.CaffeOp(xs, ws, num_weight=1, prototxt=ip(5, "axis: 2 transpose: true bias_term: false"))
    np.testing.assert_allclose(y.asnumpy(), x @ w, rtol=1e-12)


def _cpu_has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def test_blas_info_names_the_float_gemm():
    use_avx512 = _cpu_has_avx512() and os.environ.get("CAFFEDATA_GEMM") != "blas"
    expected = "AVX-512 kernel" if use_avx512 else "float GEMMs: OpenBLAS"
    assert expected in ops.blas_info()


# What the child scripts below start with: the NAME=value arguments set in the environment before
# anything reads them (OpenMP's thread count when mxnet loads, CAFFEDATA_GEMM / CAFFEDATA_CONV at
# the first GEMM), and fwd_bwd, which runs fn forward and backward with autograd (og: the output
# gradient, or a function of the output that gives it).
_CHILD_PRELUDE = textwrap.dedent("""
    for setting in sys.argv[1:]:
        name, value = setting.split("=", 1)
        os.environ[name] = value
    import numpy as np, mxnet as mx, caffedata
    def fwd_bwd(fn, arrays, og):
        for a in arrays:
            a.attach_grad()
        with mx.autograd.record():
            y = fn(*arrays)
        y.backward(og(y) if callable(og) else og)
        return [y.asnumpy()] + [a.grad.asnumpy() for a in arrays]
""")


def _run_child_script(body, *settings, timeout=300):
    """_CHILD_PRELUDE + body in a child, with NAME=value settings; the CompletedProcess."""
    return run_child(_CHILD_PRELUDE + textwrap.dedent(body), *settings, timeout=timeout)


def _child_json(body, *settings):
    """The JSON that the last line of _run_child_script(body, *settings) prints."""
    res = _run_child_script(body, *settings)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _float32_layers_against_float64(gemm_env):
    """InnerProduct and Convolution in float32, shaped so that every GEMM of forward and
    backward is big enough for the AVX-512 kernel and has edge tiles (12x32 blocks),
    against MXNet's own ops in float64.  Run in a child so CAFFEDATA_GEMM applies."""
    return _child_json("""
        import json
        from caffedata.mxnet import library as ops
        rng = np.random.RandomState(7)
        worst = {}
        # batch 300, 2100 outputs, 270 inputs: every GEMM crosses the kernel's blocks
        # (128 rows, 2048 columns, 256 deep), and the weight gradient accumulates (beta 1)
        x, w, b = rng.randn(300, 270), rng.randn(2100, 270), rng.randn(2100)
        og = rng.randn(300, 2100)
        nd = lambda a, t: mx.nd.array(a, dtype=t)
        proto = 'layer{type:"InnerProduct" inner_product_param{num_output:2100}}'
        got = fwd_bwd(lambda x, w, b: mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=proto),
                      [nd(x, "float32"), nd(w, "float32"), nd(b, "float32")], nd(og, "float32"))
        ref = fwd_bwd(lambda x, w, b: mx.nd.FullyConnected(x, w, b, num_hidden=2100),
                      [nd(x, "float64"), nd(w, "float64"), nd(b, "float64")], nd(og, "float64"))
        worst["ip"] = max(float(np.max(np.abs(g - r) / (1 + np.abs(r)))) for g, r in zip(got, ref))
        x, w, b = rng.randn(3, 13, 17, 16), rng.randn(20, 13, 3, 3), rng.randn(20)  # 272 > 256 pixels
        proto = 'layer{type:"Convolution" convolution_param{num_output:20 kernel_size:3 pad:1}}'
        og = rng.randn(3, 20, 17, 16)
        got = fwd_bwd(lambda x, w, b: mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=proto),
                      [nd(x, "float32"), nd(w, "float32"), nd(b, "float32")], nd(og, "float32"))
        ref = fwd_bwd(lambda x, w, b: mx.nd.Convolution(x, w, b, kernel=(3, 3), pad=(1, 1), num_filter=20),
                      [nd(x, "float64"), nd(w, "float64"), nd(b, "float64")], nd(og, "float64"))
        worst["conv"] = max(float(np.max(np.abs(g - r) / (1 + np.abs(r)))) for g, r in zip(got, ref))
        print(json.dumps({"worst": worst, "info": ops.blas_info()}))
    """, f"CAFFEDATA_GEMM={gemm_env}")


@pytest.mark.parametrize("gemm_env", ["auto", "blas"])
def test_float32_gemms_match_float64_references(gemm_env):
    out = _float32_layers_against_float64(gemm_env)
    if gemm_env == "blas" or not _cpu_has_avx512():
        assert "float GEMMs: OpenBLAS" in out["info"]
    else:
        assert "AVX-512 kernel" in out["info"]
    # float32 sums of up to 2,100 terms: OpenBLAS and the kernel both land near 4e-5 on the
    # InnerProduct; a wrong tile or block is off by O(1)
    assert out["worst"]["ip"] < 1e-4 and out["worst"]["conv"] < 2e-5, out


def _float32_convolutions(conv_env, threads):
    """Forward and backward of float32 Convolutions of many geometries, in a child (CAFFEDATA_CONV
    and the thread count are read once): a digest of the outputs per case, and the worst error of
    outputs and gradients against MXNet's Convolution in float64."""
    return _child_json("""
        import hashlib, json
        cases = [  # input, num_output, kernel, pad, group, stride
            ((3, 13, 17, 16), 20, (3, 3), (1, 1), 1, (1, 1)),    # several 16-output vectors per row of outputs
            ((10, 8, 7, 7), 19, (3, 3), (1, 1), 1, (1, 1)),     # 4 vectors an image, 10 images in one GEMM
            ((70, 4, 3, 3), 9, (3, 3), (1, 1), 1, (1, 1)),      # 1 vector an image: GEMMs of 64 and 6 images
            ((2, 30, 16, 16), 12, (5, 5), (2, 2), 1, (1, 1)),   # 750 kernel rows: three 256-deep blocks
            ((2, 6, 11, 9), 16, (3, 2), (2, 0), 2, (1, 1)),     # groups, a non-square kernel, uneven padding
            ((1, 3, 40, 37), 5, (7, 7), (3, 3), 1, (1, 1)),     # 108 vectors of one image
            ((4, 5, 9, 12), 7, (4, 4), (0, 0), 1, (1, 1)),      # no padding
            ((2, 16, 9, 10), 12, (3, 3), (1, 1), 2, (1, 1)),    # groups of 8 channels: their input gradient too
            ((3, 9, 6, 7), 24, (2, 3), (2, 1), 1, (1, 1)),      # pad >= kernel (rows): the input gradient via col2im
            # strides, through phase frames: conv1 of GoogLeNet/ResNet (7x7/2 pad 3), odd sizes and pads,
            # unequal strides, a strided 1x1, groups
            ((2, 3, 45, 38), 16, (7, 7), (3, 3), 1, (2, 2)),
            ((3, 10, 13, 11), 17, (3, 3), (1, 0), 1, (2, 2)),
            ((2, 12, 15, 14), 9, (3, 4), (1, 2), 1, (3, 2)),
            ((4, 16, 9, 9), 24, (1, 1), (0, 0), 1, (2, 2)),
            ((2, 8, 12, 13), 12, (3, 3), (1, 1), 2, (1, 2)),
            # a plain 1x1 (no lowering): 6 images in one GEMM, its 40 rows split over the 3 threads
            ((6, 16, 7, 7), 40, (1, 1), (0, 0), 1, (1, 1)),
        ]
        rng = np.random.RandomState(11)
        out = {"digests": [], "weight_gradient_digests": [], "worst": 0.0}
        for shape, num, (kh, kw), (ph, pw), group, (sh, sw) in cases:
            x, w = rng.randn(*shape), rng.randn(num, shape[1] // group, kh, kw)
            b = rng.randn(num)
            proto = ('layer{type:"Convolution" convolution_param{num_output:%d kernel_h:%d kernel_w:%d '
                     'pad_h:%d pad_w:%d group:%d stride_h:%d stride_w:%d}}' % (num, kh, kw, ph, pw, group, sh, sw))
            runs = []
            for dtype, op in (("float32", lambda *a: mx.nd.CaffeOp(*a, num_weight=2, prototxt=proto)),
                              ("float64", lambda *a: mx.nd.Convolution(*a, kernel=(kh, kw), pad=(ph, pw),
                                                                       stride=(sh, sw), num_filter=num,
                                                                       num_group=group))):
                og = lambda y: mx.nd.array(np.cos(np.arange(y.size)).reshape(y.shape), dtype=dtype)
                runs.append(fwd_bwd(op, [mx.nd.array(a, dtype=dtype) for a in (x, w, b)], og))
            out["digests"].append(hashlib.sha256(runs[0][0].tobytes()).hexdigest())
            out["weight_gradient_digests"].append(hashlib.sha256(runs[0][2].tobytes()).hexdigest())
            for got, ref in zip(*runs):  # output, input / weight / bias gradients
                out["worst"] = max(out["worst"], float(np.max(np.abs(got - ref) / (1 + np.abs(ref)))))
        print(json.dumps(out))
    """, f"CAFFEDATA_CONV={conv_env}", f"OMP_NUM_THREADS={threads}")


def test_implicit_gemm_convolution_matches_im2col_bit_for_bit():
    """A float32 Convolution reads its input through per-row offsets (no im2col) on AVX-512 CPUs,
    strides through phase frames: forward, the same bits as lowering with im2col
    (CAFFEDATA_CONV=im2col), on 3 threads and on 1; the weight gradient, read from the same
    frames, the same bits too (1 thread); forward and both gradients (the input's as a correlation with the flipped
    kernels where there are 8 or more channels a group and pad < kernel, else with col2im) within
    float32 rounding of MXNet's float64 Convolution. (Every case is big enough for the im2col path's GEMM
    to be the AVX-512 kernel too; tiny ones go to OpenBLAS.)"""
    if not _cpu_has_avx512() or os.environ.get("CAFFEDATA_GEMM") == "blas":
        pytest.skip("the implicit GEMM is an AVX-512 kernel; this CPU (or CAFFEDATA_GEMM=blas) does not use it")
    implicit = _float32_convolutions("auto", 3)
    lowered = _float32_convolutions("im2col", 1)
    assert implicit["digests"] == lowered["digests"]
    # The weight gradient read from the padded frames: im2col's sums, bit for bit, on one thread
    # (on several, each thread sums its images apart: another order, either way)
    implicit_one_thread = _float32_convolutions("auto", 1)
    assert implicit_one_thread["weight_gradient_digests"] == lowered["weight_gradient_digests"]
    assert implicit_one_thread["digests"] == lowered["digests"]
    # float32 sums of up to 1,480 terms (the weight gradient of the 40x37 image)
    assert implicit["worst"] < 1e-4 and lowered["worst"] < 1e-4, (implicit["worst"], lowered["worst"])
    print("worst relative error: implicit %.2e, im2col %.2e" % (implicit["worst"], lowered["worst"]))


CONV_CASES = [
    dict(no=6, k=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), g=2),
    dict(no=4, k=(3, 2), s=(1, 2), p=(0, 1), d=(2, 1), g=1),
    dict(no=5, k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1), g=1),
]


def _conv_proto(kind, c):
    return conv(kind, "num_output:%d kernel_h:%d kernel_w:%d stride_h:%d stride_w:%d pad_h:%d pad_w:%d "
                "group:%d %s" % (c["no"], *c["k"], *c["s"], *c["p"], c["g"],
                                 " ".join("dilation:%d" % v for v in c["d"])))


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolution_matches_mxnet(case):
    rng = np.random.RandomState(2)
    x = mx.nd.array(rng.randn(2, 4, 9, 8), dtype="float64")
    w = mx.nd.array(rng.randn(case["no"], 4 // case["g"], *case["k"]), dtype="float64")
    b = mx.nd.array(rng.randn(case["no"]), dtype="float64")
    proto = _conv_proto("Convolution", case)
    y0 = mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=proto)
    og = mx.nd.array(rng.randn(*y0.shape), dtype="float64")
    got = _fwd_bwd(lambda x, w, b: mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=proto), [x, w, b], og)
    ref = _fwd_bwd(lambda x, w, b: mx.nd.Convolution(x, w, b, kernel=case["k"], stride=case["s"], pad=case["p"],
                                                     dilate=case["d"], num_filter=case["no"],
                                                     num_group=case["g"]), [x, w, b], og)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES[:1] + [dict(no=3, k=(4, 4), s=(2, 2), p=(1, 1), d=(1, 1), g=1)])
def test_deconvolution_matches_mxnet(case):
    rng = np.random.RandomState(3)
    x = mx.nd.array(rng.randn(2, 4, 5, 6), dtype="float64")
    w = mx.nd.array(rng.randn(4, case["no"] // case["g"], *case["k"]), dtype="float64")
    b = mx.nd.array(rng.randn(case["no"]), dtype="float64")
    proto = _conv_proto("Deconvolution", case)
    y0 = mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=proto)
    og = mx.nd.array(rng.randn(*y0.shape), dtype="float64")
    got = _fwd_bwd(lambda x, w, b: mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=proto), [x, w, b], og)
    ref = _fwd_bwd(lambda x, w, b: mx.nd.Deconvolution(x, w, b, kernel=case["k"], stride=case["s"], pad=case["p"],
                                                       dilate=case["d"], num_filter=case["no"],
                                                       num_group=case["g"], no_bias=False), [x, w, b], og)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


def test_convolution_images_in_parallel_threads_match_mxnet_and_repeat_bit_for_bit():
    """3 OpenMP threads with per-thread weight-gradient sums: over a batch of 5 images one GEMM each
    (2 + 2 + 1 images; 24x24 outputs are too wide to share a GEMM, as are Deconvolution's), and over
    13 images of 10x10 outputs, which share GEMMs 5 at a time (5 + 5 + 3)."""
    res = _run_child_script("""
        rng = np.random.RandomState(4)
        for kind, xshape, wshape, native in (
                ("Convolution", (5, 4, 24, 24), (6, 4, 3, 3), mx.nd.Convolution),
                ("Convolution", (13, 4, 10, 10), (6, 4, 3, 3), mx.nd.Convolution),
                ("Deconvolution", (5, 4, 9, 8), (4, 6, 3, 3), mx.nd.Deconvolution)):
            x = mx.nd.array(rng.randn(*xshape), dtype="float64")
            w = mx.nd.array(rng.randn(*wshape), dtype="float64")
            b = mx.nd.array(rng.randn(6), dtype="float64")
            proto = 'layer { type: "%s" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }' % kind
            og = lambda y: mx.nd.array(np.random.RandomState(5).randn(*y.shape), dtype="float64")
            runs = [fwd_bwd(fn, [a.copy() for a in (x, w, b)], og)
                    for fn in [lambda x, w, b: mx.nd.CaffeOp(x, w, b, num_weight=2, prototxt=proto)] * 2 + [
                        lambda x, w, b: native(x, w, b, kernel=(3, 3), pad=(1, 1), num_filter=6, no_bias=False)]]
            for a, b2, ref in zip(*runs):
                assert np.array_equal(a, b2), kind + ": not bit-identical on a repeat"
                np.testing.assert_allclose(a, ref, rtol=1e-10, atol=1e-10)
        print("ok")
    """, "OMP_NUM_THREADS=3", timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_pooling_planes_in_parallel_threads_match_numpy_and_one_thread():
    """Max and average pooling big enough for the plane-parallel path (3 OpenMP threads), against
    a NumPy reference of Caffe's loops (ceil rounding, windows clipped to the image; AVE divides by
    the window clipped to height + pad), and bit-identical to the same op on one thread; LRN's
    parallel powers bit-identical too."""
    code = """
        os.environ["OMP_NUM_THREADS"] = sys.argv[1]  # read when libgomp loads with mxnet
        import hashlib
        import numpy as np, mxnet as mx, caffedata
        from math import ceil
        rng = np.random.RandomState(6)
        x = rng.randn(4, 16, 33, 31).astype(np.float32)
        x[0, 0, :4, :4] = 1.0  # ties: Caffe keeps the first maximum of the window
        og = rng.randn(4, 16, 17, 16).astype(np.float32)
        k, s, p = 3, 2, 1
        def reference(x, og, kind):
            n, c, H, W = x.shape
            oh, ow = ceil((H + 2 * p - k) / s) + 1, ceil((W + 2 * p - k) / s) + 1
            y = np.zeros((n, c, oh, ow), np.float64)
            dx = np.zeros(x.shape, np.float64)
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * s - p, j * s - p
                    he, we = min(hs + k, H + p), min(ws + k, W + p)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                    win = x[:, :, hs:he, ws:we].reshape(n, c, -1)
                    if kind == "MAX":
                        arg = win.argmax(axis=2)  # the first maximum, as Caffe's strict >
                        y[:, :, i, j] = win.max(axis=2)
                        r, q = np.divmod(arg, we - ws)
                        for a in range(n):
                            for b in range(c):
                                dx[a, b, hs + r[a, b], ws + q[a, b]] += og[a, b, i, j]
                    else:
                        y[:, :, i, j] = win.sum(axis=2) / size
                        dx[:, :, hs:he, ws:we] += (og[:, :, i, j] / size)[:, :, None, None]
            return y, dx
        for kind in ("MAX", "AVE"):
            proto = ('layer { type: "Pooling" pooling_param { pool: %s kernel_size: %d stride: %d pad: %d } }'
                     % (kind, k, s, p))
            runs = []
            for _ in range(2):
                xs = mx.nd.array(x)
                xs.attach_grad()
                with mx.autograd.record():
                    y = mx.nd.CaffeOp(xs, prototxt=proto)
                y.backward(mx.nd.array(og))
                runs.append((y.asnumpy(), xs.grad.asnumpy()))
            ref = reference(x.astype(np.float64), og.astype(np.float64), kind)
            for got in runs:
                for g, r in zip(got, ref):
                    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
            for a, b in zip(runs[0], runs[1]):
                assert np.array_equal(a, b), kind + ": not bit-identical on a repeat"
            print(kind, hashlib.sha256(b"".join(a.tobytes() for a in runs[0])).hexdigest())
        # LRN's per-element powers run on the same threads: its bits too
        x = rng.randn(4, 16, 33, 32).astype(np.float32)
        for region in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
            proto = 'layer { type: "LRN" lrn_param { local_size: 5 alpha: 0.5 norm_region: %s } }' % region
            xs = mx.nd.array(x)
            xs.attach_grad()
            with mx.autograd.record():
                y = mx.nd.CaffeOp(xs, prototxt=proto)
            y.backward(mx.nd.array(np.cos(x)))
            print(region, hashlib.sha256(y.asnumpy().tobytes() + xs.grad.asnumpy().tobytes()).hexdigest())
    """
    digests = []
    for threads in ("3", "1"):
        res = run_child(code, threads, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        digests.append(res.stdout.split())
    assert digests[0] == digests[1] and len(digests[0]) == 8  # the same bits on 3 threads and on 1


def test_convolution_3d_matches_mxnet():
    rng = np.random.RandomState(4)
    x = mx.nd.array(rng.randn(1, 2, 5, 4, 6), dtype="float64")
    w = mx.nd.array(rng.randn(3, 2, 2, 3, 2), dtype="float64")
    proto = conv("Convolution", "num_output:3 kernel_size:2 kernel_size:3 kernel_size:2 stride:2 pad:1 bias_term:false")
    y = mx.nd.CaffeOp(x, w, num_weight=1, prototxt=proto)
    r = mx.nd.Convolution(x, w, kernel=(2, 3, 2), stride=(2, 2, 2), pad=(1, 1, 1), num_filter=3, no_bias=True)
    np.testing.assert_allclose(y.asnumpy(), r.asnumpy(), rtol=1e-10, atol=1e-10)


def test_max_pooling_matches_mxnet_without_padding():
    rng = np.random.RandomState(5)
    x = mx.nd.array(rng.randn(2, 3, 7, 7), dtype="float64")
    og = mx.nd.array(rng.randn(2, 3, 3, 3), dtype="float64")
    got = _fwd_bwd(lambda x: mx.nd.CaffeOp(x, prototxt=pool("pool:MAX kernel_size:3 stride:2")), [x], og)
    ref = _fwd_bwd(lambda x: mx.nd.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type="max",
                                           pooling_convention="full"), [x], og)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-12)


# ---------------------------------------------------------------------------
# Pooling edge cases by hand.

def _pool_out(x, proto, num_out=1):
    y = mx.nd.CaffeOp(mx.nd.array(x, dtype="float64"), num_out=num_out, prototxt=pool(proto))
    return [a.asnumpy() for a in y] if num_out > 1 else y.asnumpy()


def test_pooling_ceil_rounding():
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    y = _pool_out(x, "pool:MAX kernel_size:3 stride:2")  # ceil((6-3)/2)+1 = 3 (floor would give 2)
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(y[0, 0], [[14, 16, 17], [26, 28, 29], [32, 34, 35]])


def test_pooling_trims_window_starting_in_padding():
    # n=3, k=2, s=2, p=1: ceil((3+2-2)/2)+1 = 3, but window 2 would start at 4-1=3 >= 3+1-... -> trimmed to 2.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = _pool_out(x, "pool:MAX kernel_size:2 stride:2 pad:1")
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [[0, 2], [6, 8]])


def test_ave_pooling_divisor_clipped_to_padded_bounds():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = _pool_out(x, "pool:AVE kernel_size:2 stride:2 pad:1")
    # Each window counts the padding it covers (size 4), even the corner one.
    np.testing.assert_allclose(y[0, 0], [[0 / 4, (1 + 2) / 4], [(3 + 6) / 4, (4 + 5 + 7 + 8) / 4]])
    # k=3, s=2, p=1 on 4x4: 3 windows per axis starting at -1, 1, 3.  The last one covers
    # rows 3..5 but is clipped to height+pad = 5, so its divisor counts 2 rows, not 3.
    x = np.ones((1, 1, 4, 4))
    y = _pool_out(x, "pool:AVE kernel_size:3 stride:2 pad:1")
    inside, size = np.array([2, 3, 1]), np.array([3, 3, 2])
    np.testing.assert_allclose(y[0, 0], np.outer(inside, inside) / np.outer(size, size))


def test_global_pooling_and_mask_top():
    x = np.random.RandomState(6).randn(2, 3, 4, 5)
    y = _pool_out(x, "pool:AVE global_pooling:true")
    np.testing.assert_allclose(y[:, :, 0, 0], x.mean(axis=(2, 3)))
    y, mask = _pool_out(x, "pool:MAX global_pooling:true", num_out=2)
    np.testing.assert_allclose(y[:, :, 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(mask[:, :, 0, 0], x.reshape(2, 3, -1).argmax(-1))


def _caffe_pooling_float32(x, kind, kh, kw, sh, sw, ph, pw):
    """Caffe's pooling loops over one float32 image, element by element: output size by ceil
    rounding with the window that starts in the padding dropped; MAX keeps the first maximum of
    the window in row-major order (strict >, from -FLT_MAX) and its index, -1 if none; AVE sums in
    row-major order in float32 and divides by the window clipped to height/width + pad."""
    n, c, H, W = x.shape
    (oh, ow), windows = caffe_pool_windows(H, W, kh, kw, sh, sw, ph, pw)
    y = np.zeros((n, c, oh, ow), np.float32)
    mask = np.full((n, c, oh, ow), -1, np.int64)
    for a in range(n):
        for b in range(c):
            for i, j, hs, he, ws, we, size in windows:
                best, arg, total = np.float32(-np.finfo(np.float32).max), -1, np.float32(0)
                for h in range(hs, he):
                    for w in range(ws, we):
                        v = x[a, b, h, w]
                        if v > best:
                            best, arg = v, h * W + w
                        if kind == "AVE":
                            total = np.float32(total + v)
                y[a, b, i, j] = best if kind == "MAX" else np.float32(total / np.float32(size))
                mask[a, b, i, j] = arg
    return y, mask


@pytest.mark.parametrize("geometry,hw", [((3, 3, 1, 1, 1, 1), (9, 11)), ((3, 3, 2, 2, 0, 0), (9, 11)),
                                         ((2, 2, 2, 2, 1, 1), (9, 11)), ((3, 2, 2, 1, 1, 0), (9, 11)),
                                         ((5, 5, 3, 3, 2, 2), (9, 11)), ((4, 3, 1, 2, 0, 1), (9, 11)),
                                         ((7, 7, 1, 1, 0, 0), (9, 11)),
                                         # rows of several 16-output blocks, the last one partial
                                         ((3, 3, 1, 1, 1, 1), (7, 37)), ((3, 3, 2, 2, 0, 0), (9, 70)),
                                         ((3, 3, 3, 3, 1, 1), (8, 61))])
def test_pooling_float32_bit_exact_against_caffes_loops(geometry, hw):
    """The vectorised pooling (each plane in a padded frame; MAX a row of 16 outputs at a time on
    AVX-512, else one flat loop per window element) against Caffe's per-output loops in float32,
    bit for bit: strides 1, 2 and 3, unequal strides, padding, ceil rounding past the pad, a
    global-size kernel, rows wider than a block; ties, NaN, -inf and -FLT_MAX, which Caffe's
    strict > never takes (the mask top then says -1)."""
    kh, kw, sh, sw, ph, pw = geometry
    rng = np.random.RandomState(sum(geometry))
    x = rng.randn(2, 3, *hw).astype(np.float32)
    x[0, 0, :3, :3] = 0.5  # ties: the first in row-major order wins
    x[0, 1, 2:5, 4:7] = np.nan  # never taken
    x[1, 2] = -np.inf  # a plane where nothing beats -FLT_MAX ...
    x[1, 2, 0, :4] = -np.finfo(np.float32).max  # ... not even -FLT_MAX itself
    x[1, 0, 4:, 5:] = np.round(x[1, 0, 4:, 5:])  # more ties
    proto = "kernel_h:%d kernel_w:%d stride_h:%d stride_w:%d pad_h:%d pad_w:%d" % geometry
    for kind in ("MAX", "AVE"):
        if kind == "AVE":
            x = np.where(np.isfinite(x) & (x > -1e30), x, np.float32(0.25))
        num_out = 2 if kind == "MAX" else 1
        out = mx.nd.CaffeOp(mx.nd.array(x, dtype="float32"), num_out=num_out, prototxt=pool(f"pool:{kind} {proto}"))
        y, mask = (out[0].asnumpy(), out[1].asnumpy()) if kind == "MAX" else (out.asnumpy(), None)
        ref_y, ref_mask = _caffe_pooling_float32(x, kind, kh, kw, sh, sw, ph, pw)
        assert y.shape == ref_y.shape
        assert y.tobytes() == ref_y.tobytes(), f"{kind} {geometry}: values differ"
        if mask is not None:
            np.testing.assert_array_equal(mask, ref_mask.astype(np.float32))


def test_pooling_errors():
    with pytest.raises(SpecError, match="STOCHASTIC"):
        ops.layer_info(pool("pool:STOCHASTIC kernel_size:2"))
    with pytest.raises(SpecError, match="pad must be smaller than the kernel"):
        ops.layer_info(pool("pool:MAX kernel_size:1 stride:2 pad:1"))


# ---------------------------------------------------------------------------
# Numeric gradients (float64).

def _numgrad(sym, shapes, grad_nodes=None, seed=0, **kw):
    rng = np.random.RandomState(seed)
    loc = {k: rng.randn(*s) for k, s in shapes.items()}
    mx.test_utils.check_numeric_gradient(sym, loc, grad_nodes=grad_nodes, numeric_eps=1e-6, rtol=1e-4,
                                         atol=1e-6, dtype=np.float64, **kw)


def test_numeric_gradient_inner_product():
    d = mx.sym.Variable("data")
    s = mx.sym.CaffeOp(d, num_weight=2, name="fc", prototxt=ip(4, "transpose: true"))
    _numgrad(s, {"data": (3, 5), "fc_0_weight": (5, 4), "fc_1_bias": (4,)})


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_numeric_gradient_convolution(kind):
    d = mx.sym.Variable("data")
    proto = conv(kind, "num_output:4 kernel_size:3 stride:2 pad:1 group:2 dilation:1")
    s = mx.sym.CaffeOp(d, num_weight=2, name="c", prototxt=proto)
    wshape = (4, 2, 3, 3)
    _numgrad(s, {"data": (2, 4, 5, 5), "c_0_weight": wshape, "c_1_bias": (4,)})


@pytest.mark.parametrize("proto", ["pool:MAX kernel_size:3 stride:2 pad:1", "pool:AVE kernel_size:3 stride:2 pad:1"])
def test_numeric_gradient_pooling(proto):
    d = mx.sym.Variable("data")
    _numgrad(mx.sym.CaffeOp(d, prototxt=pool(proto)), {"data": (2, 2, 5, 5)})


def test_numeric_gradient_softmax():
    d = mx.sym.Variable("data")
    _numgrad(mx.sym.CaffeOp(d, prototxt='layer{type:"Softmax" softmax_param{axis: 2}}'), {"data": (2, 3, 4)})


def test_numeric_gradient_softmax_with_loss():
    d = mx.sym.Variable("data")
    lab = mx.sym.Variable("label", shape=(0, 0))
    # As a plain CaffeOp the head gradient is the loss weight, so this is Caffe's exact gradient.
    s = mx.sym.CaffeOp(d, lab, num_data=2, prototxt='layer{type:"SoftmaxWithLoss" loss_param{ignore_label: 1}}')
    rng = np.random.RandomState(7)
    loc = {"data": rng.randn(3, 4, 2), "label": rng.randint(0, 4, size=(3, 2)).astype(np.float64)}
    mx.test_utils.check_numeric_gradient(s, loc, grad_nodes=["data"], numeric_eps=1e-6, rtol=1e-4, atol=1e-6,
                                         dtype=np.float64)


# ---------------------------------------------------------------------------
# SoftmaxWithLoss normalisation by hand; CaffeLoss scaling.

def _softmax_np(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("loss_param,norm", [
    ("", "valid"), ("normalization: FULL", "full"), ("normalization: VALID", "valid"),
    ("normalization: BATCH_SIZE", "batch"), ("normalization: NONE", "none"),
    ("normalize: false", "batch"), ("normalize: true", "valid")])
def test_softmax_with_loss_normalization(loss_param, norm):
    rng = np.random.RandomState(8)
    x = rng.randn(3, 4, 2)  # N=3, C=4, inner=2
    lab = np.array([[0, 2], [2, 3], [1, 2]], dtype=np.float64)
    proto = 'layer{type:"SoftmaxWithLoss" loss_param{ignore_label: 2 %s}}' % loss_param
    xs = mx.nd.array(x, dtype="float64")
    xs.attach_grad()
    with mx.autograd.record():
        loss = mx.nd.CaffeOp(xs, mx.nd.array(lab, dtype="float64"), num_data=2, prototxt=proto)
    loss.backward(mx.nd.array([1.5], dtype="float64"))  # top diff = loss weight
    p = _softmax_np(x, 1)
    valid = lab != 2
    nll = -sum(np.log(p[i, int(lab[i, j]), j]) for i in range(3) for j in range(2) if valid[i, j])
    denom = {"full": 6, "valid": valid.sum(), "batch": 3, "none": 1}[norm]
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss.asnumpy()[0], nll / denom, rtol=1e-12)
    g = p.copy()
    for i in range(3):
        for j in range(2):
            if valid[i, j]:
                g[i, int(lab[i, j]), j] -= 1
            else:
                g[i, :, j] = 0
    np.testing.assert_allclose(xs.grad.asnumpy(), 1.5 * g / denom, rtol=1e-10, atol=1e-14)


def test_softmax_with_loss_prob_top_and_axis():
    rng = np.random.RandomState(9)
    x = rng.randn(2, 3, 5)
    lab = rng.randint(0, 5, size=(2, 3)).astype(np.float64)
    loss, prob = mx.nd.CaffeOp(mx.nd.array(x, dtype="float64"), mx.nd.array(lab, dtype="float64"), num_data=2,
                               num_out=2, prototxt='layer{type:"SoftmaxWithLoss" softmax_param{axis: -1}}')
    p = _softmax_np(x, -1)
    np.testing.assert_allclose(prob.asnumpy(), p, rtol=1e-12)
    ref = -np.mean([np.log(p[i, j, int(lab[i, j])]) for i in range(2) for j in range(3)])
    np.testing.assert_allclose(loss.asnumpy()[0], ref, rtol=1e-12)


@pytest.mark.parametrize("grad_scale,loss_weight,expect", [(1.0, None, 1.0), (0.5, None, 0.5), (0.5, 2.0, 2.0)])
def test_caffe_loss_gradient_is_scaled_caffe_gradient_times_batch(grad_scale, loss_weight, expect):
    rng = np.random.RandomState(10)
    x = rng.randn(4, 3)
    lab = np.array([0, 2, 1, 1.0])
    lw = "" if loss_weight is None else "loss_weight: %g" % loss_weight
    xs = mx.nd.array(x, dtype="float64")
    xs.attach_grad()
    with mx.autograd.record():
        out = mx.nd.CaffeLoss(data=xs, label=mx.nd.array(lab, dtype="float64"), grad_scale=grad_scale,
                              prototxt='layer{type:"SoftmaxWithLoss" %s}' % lw)
    out.backward()
    p = _softmax_np(x, 1)
    np.testing.assert_allclose(out.asnumpy()[0], -np.mean(np.log(p[np.arange(4), lab.astype(int)])), rtol=1e-12)
    g = p.copy()
    g[np.arange(4), lab.astype(int)] -= 1
    np.testing.assert_allclose(xs.grad.asnumpy(), expect * 4 * g / 4, rtol=1e-10)  # x N / VALID count N


def test_caffe_loss_symbol_names_and_label_keywords():
    fc = mx.sym.Variable("fc")
    loss = mx.sym.CaffeLoss(data=fc, label=mx.sym.Variable("softmax_label"), name="softmax",
                            prototxt='layer{type:"SoftmaxWithLoss"}')
    assert loss.list_arguments() == ["fc", "softmax_label"]
    assert loss.list_outputs() == ["softmax_output"]
    assert loss.infer_shape(fc=(8, 10), softmax_label=(8,))[1] == [(1,)]
    loss2 = mx.sym.CaffeLoss(data_0=fc, data_1=mx.sym.Variable("softmax_label"),
                             prototxt='layer{type:"SoftmaxWithLoss"}')
    assert loss2.list_arguments() == ["fc", "softmax_label"]


# ---------------------------------------------------------------------------
# Fillers and multipliers.

def _init_module(sym, data_shape):
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", data_shape)], for_training=True)
    mx.random.seed(0)
    mod.init_params(initializer=mx.init.Constant(123.0))  # used only where no filler is given
    return {k: v.asnumpy() for k, v in mod.get_params()[0].items()}


def test_fillers_become_initializers():
    d = mx.sym.Variable("data")
    layers = {
        "c": 'weight_filler{type:"constant" value: 0.25} bias_filler{type:"constant" value: -2}',
        "u": 'weight_filler{type:"uniform" min: -0.5 max: 0.1}',
        "g": 'weight_filler{type:"gaussian" std: 0.02}',
        "x": 'weight_filler{type:"xavier"}',
        "xo": 'weight_filler{type:"xavier" variance_norm: FAN_OUT}',
        "m": 'weight_filler{type:"msra" variance_norm: AVERAGE}',
        "n": '',
    }
    outs = [mx.sym.CaffeOp(d, num_weight=2, name=k, prototxt=ip(300, v)) for k, v in layers.items()]
    p = _init_module(mx.sym.Group(outs), (2, 200))
    assert np.all(p["c_0_weight"] == 0.25) and np.all(p["c_1_bias"] == -2)
    assert p["u_0_weight"].min() >= -0.5 and p["u_0_weight"].max() <= 0.1
    assert abs(p["g_0_weight"].std() - 0.02) < 0.002
    # Caffe fans: fan_in = count/num = 200, fan_out = count/channels = 300.
    assert abs(np.abs(p["x_0_weight"]).max() - np.sqrt(3 / 200)) < 0.002
    assert np.abs(p["x_0_weight"]).max() <= np.sqrt(3 / 200)
    assert abs(np.abs(p["xo_0_weight"]).max() - np.sqrt(3 / 300)) < 0.002
    assert abs(p["m_0_weight"].std() - np.sqrt(2 / 250)) < 0.003
    assert np.all(p["n_0_weight"] == 123.0)  # no filler: the Module's initializer decides
    assert np.all(p["x_1_bias"] == 0.0)  # MXNet initializers zero *_bias


def test_lr_and_decay_multipliers():
    d = mx.sym.Variable("data")
    s = mx.sym.CaffeOp(d, num_weight=2, name="fc",
                       prototxt=ip(3, "") [:-1] + " param{lr_mult: 1 decay_mult: 1} param{lr_mult: 2 decay_mult: 0}}")
    attrs = s.attr_dict()
    assert float(attrs["fc_0_weight"]["__lr_mult__"]) == 1.0
    assert float(attrs["fc_1_bias"]["__lr_mult__"]) == 2.0
    assert float(attrs["fc_1_bias"]["__wd_mult__"]) == 0.0


# ---------------------------------------------------------------------------
# One Module SGD step equals Caffe's solver step.

def test_module_sgd_step_equals_caffe_solver_step():
    rng = np.random.RandomState(11)
    n, k, c = 6, 5, 3
    x = rng.randn(n, k).astype(np.float32)
    y = rng.randint(0, c, size=n).astype(np.float32)
    w0 = rng.randn(c, k).astype(np.float32) * 0.1
    b0 = rng.randn(c).astype(np.float32) * 0.1
    lr, mom, wd = 0.1, 0.9, 0.01
    data = mx.sym.Variable("data")
    fc = mx.sym.CaffeOp(data, num_weight=2, name="fc", prototxt=ip(c, "") [:-1] + " param{lr_mult: 1} "
                        "param{lr_mult: 2 decay_mult: 0}}")
    loss = mx.sym.CaffeLoss(data=fc, label=mx.sym.Variable("softmax_label"), name="softmax",
                            prototxt='layer{type:"SoftmaxWithLoss"}')
    mod = mx.mod.Module(loss, context=mx.cpu())
    mod.bind(data_shapes=[("data", (n, k))], label_shapes=[("softmax_label", (n,))])
    mod.init_params(arg_params={"fc_0_weight": mx.nd.array(w0), "fc_1_bias": mx.nd.array(b0)})
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": lr, "momentum": mom, "wd": wd})
    batch = mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)])

    # Caffe: diff = dL/dW (normalised by N in the loss) + wd*decay_mult*W; V = mom*V + lr*lr_mult*diff; W -= V
    w, b = w0.astype(np.float64), b0.astype(np.float64)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(2):
        mod.forward_backward(batch)
        mod.update()
        logits = x @ w.T + b
        p = _softmax_np(logits, 1)
        p[np.arange(n), y.astype(int)] -= 1
        gw, gb = p.T @ x / n, p.sum(0) / n
        vw = mom * vw + lr * 1 * (gw + wd * 1 * w)
        vb = mom * vb + lr * 2 * (gb + wd * 0 * b)
        w, b = w - vw, b - vb
    args = mod.get_params()[0]
    np.testing.assert_allclose(args["fc_0_weight"].asnumpy(), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(args["fc_1_bias"].asnumpy(), b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Phase follows is_train.

DROPOUT = 'layer{type:"Dropout" dropout_param{dropout_ratio: 0.5}}'


@pytest.mark.skipif("Dropout" not in ops.supported_layers(), reason="Dropout layer (layers-A) not built")
def test_phase_follows_is_train_module_and_autograd():
    x = np.ones((4, 50), dtype=np.float32)
    data = mx.sym.Variable("data")
    # A trainable parameter in the graph: an executor bound without any gradient
    # runs its ops as inference even for forward(is_train=True) -- MXNet's own
    # Dropout behaves the same way there, and so does the phase signal.
    s = mx.sym.Group([mx.sym.CaffeOp(data, prototxt=DROPOUT), mx.sym.FullyConnected(data, num_hidden=2)])
    mod = mx.mod.Module(s, label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", x.shape)], for_training=True)
    mod.init_params()
    batch = mx.io.DataBatch([mx.nd.array(x)])
    for is_train in (True, False, True, False):
        mod.forward(batch, is_train=is_train)
        out = mod.get_outputs()[0].asnumpy()
        if is_train:  # TRAIN: Caffe's dropout scales kept units by 1/(1-p)
            assert set(np.unique(out)) <= {0.0, 2.0} and (out == 0).any()
        else:         # TEST: identity
            np.testing.assert_array_equal(out, x)
    xs = mx.nd.array(x)
    np.testing.assert_array_equal(mx.nd.CaffeOp(xs, prototxt=DROPOUT).asnumpy(), x)  # not recording: TEST
    with mx.autograd.record():
        out = mx.nd.CaffeOp(xs, prototxt=DROPOUT).asnumpy()
    assert (out == 0).any()
    with mx.autograd.record(train_mode=False):
        np.testing.assert_array_equal(mx.nd.CaffeOp(xs, prototxt=DROPOUT).asnumpy(), x)


# ---------------------------------------------------------------------------
# Library missing / broken: import still works, CaffeOp says how to rebuild.

def _copy_package(tmp_path, lib_bytes):
    dst = tmp_path / "pkg" / "caffedata"
    # Copy the package under test (installed, or the in-place build), minus the ops library.
    shutil.copytree(os.path.dirname(caffedata.__file__), dst,
                    ignore=shutil.ignore_patterns("libcaffedata_ops.so", "__pycache__"))
    if lib_bytes is not None:
        (dst / "libcaffedata_ops.so").write_bytes(lib_bytes)
    return dst.parent


@pytest.mark.parametrize("lib_bytes", [None, b"not an ELF file"])
def test_missing_or_broken_library(tmp_path, lib_bytes):
    root = _copy_package(tmp_path, lib_bytes)
    code = textwrap.dedent("""
        import mxnet as mx
        import caffedata
        from caffedata.errors import OpsLibraryError
        try:
            mx.sym.CaffeOp(data_0=mx.sym.Variable("data"), prototxt='layer{type:"ReLU"}')
        except OpsLibraryError as e:
            print("OK", e)
        try:
            mx.nd.CaffeLoss(mx.nd.ones((1, 2)), mx.nd.ones((1,)), prototxt='layer{type:"SoftmaxWithLoss"}')
        except OpsLibraryError as e:
            print("OK2")
    """)
    env = dict(os.environ, PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "OK2" in r.stdout
    assert "pip install ." in r.stdout and "build_ext --inplace" in r.stdout


def test_install_is_idempotent():
    assert symbols.install() is True
    assert symbols.install() is True
    y = mx.nd.CaffeOp(mx.nd.ones((2, 3)), prototxt='layer{type:"Softmax"}')
    np.testing.assert_allclose(y.asnumpy(), 1 / 3, rtol=1e-6)


# ---------------------------------------------------------------------------
# Gluon, hybridized and not.

class _GluonNet(mx.gluon.HybridBlock):
    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.w1 = self.params.get("fc1_0_weight", shape=(16, 0), allow_deferred_init=True)
            self.b1 = self.params.get("fc1_1_bias", shape=(16,), init=mx.init.Zero())
            self.w2 = self.params.get("fc2_0_weight", shape=(3, 16))
            self.b2 = self.params.get("fc2_1_bias", shape=(3,), init=mx.init.Zero())

    def hybrid_forward(self, F, x, label, w1, b1, w2, b2):
        h = F.tanh(F.CaffeOp(x, w1, b1, num_weight=2, prototxt=ip(16)))
        out = F.CaffeOp(h, w2, b2, num_weight=2, prototxt=ip(3))
        return F.CaffeLoss(out, label, prototxt='layer{type:"SoftmaxWithLoss"}')


def _gluon_train(hybridize):
    rng = np.random.RandomState(12)
    x = rng.randn(60, 4).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32) + (x[:, 1] > 0)
    mx.random.seed(1)
    net = _GluonNet()
    net.initialize(mx.init.Xavier())
    if hybridize:
        net.hybridize()
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    losses = []
    for _ in range(30):
        with mx.autograd.record():
            loss = net(mx.nd.array(x), mx.nd.array(y))
        loss.backward()
        trainer.step(60)
        losses.append(float(loss.asscalar()))
    return losses


def test_gluon_hybridized_and_not_agree_and_train():
    a = _gluon_train(False)
    b = _gluon_train(True)
    np.testing.assert_allclose(a, b, rtol=1e-4)
    assert a[-1] < 0.5 * a[0]


# ---------------------------------------------------------------------------
# Module.fit: the FAQ's MLP and a LeNet on the bundled handwritten digits, read from
# real LMDBs by CaffeDataIter.

@pytest.fixture(scope="module")
def digits_lmdbs(tmp_path_factory):
    """The bundled UCI digits as two real Caffe LMDBs (1400 train, 397 val records); fixed split."""
    from caffedata.datasets import load_digits

    images, labels = load_digits()
    idx = np.random.RandomState(0).permutation(len(images))
    images, labels = images[idx], labels[idx]
    root = tmp_path_factory.mktemp("digits")
    records = [(key(i), raw_datum(images[i][None], int(labels[i]))) for i in range(len(images))]
    train = write_db(root / "digits_train_lmdb", records[:1400])
    val = write_db(root / "digits_val_lmdb", [(k, v) for k, v in records[1400:]])
    return train, val, labels[1400:]


def _fit_and_score(net, feat_name, flat, epochs, lr, dbs):
    """Module.fit fed by CaffeDataIter (TRAIN, FAQ scale 1/256), then accuracy on the TEST iterator."""
    train_db, val_db, val_labels = dbs
    mx.random.seed(3)
    train = mx.io.CaffeDataIter(prototxt=data_prototxt(train_db, 50, phase="TRAIN",
                                                       transform="scale: 0.00390625"),
                                flat=flat, shuffle=True, seed=3)
    mod = mx.mod.Module(net, context=mx.cpu())
    mod.fit(train, num_epoch=epochs, optimizer="sgd",
            optimizer_params={"learning_rate": lr, "momentum": 0.9, "wd": 0.00001},
            initializer=mx.init.Xavier(factor_type="in", magnitude=2.34), eval_metric=mx.metric.Caffe())
    feat = net.get_internals()[feat_name]
    pm = mx.mod.Module(feat, label_names=None, context=mx.cpu())
    val = mx.io.CaffeDataIter(prototxt=data_prototxt(val_db, 50, transform="scale: 0.00390625"),
                              flat=flat)
    pm.bind(data_shapes=val.provide_data, for_training=False)
    pm.set_params(*mod.get_params())
    pred = pm.predict(val).asnumpy().argmax(axis=1)  # predict drops the padded tail
    train.close(), val.close()
    assert len(pred) == len(val_labels)
    acc = (pred == val_labels).mean()
    print(f"{feat_name}: validation accuracy {acc:.4f}")
    return acc


def _tanh(x):
    # TanH is a layers-A layer; use it when built, else MXNet's tanh.
    if "TanH" in ops.supported_layers():
        return mx.sym.CaffeOp(data_0=x, prototxt='layer{type:"TanH"}')
    return mx.sym.tanh(x)


def test_module_fit_faq_mlp_on_digits(digits_lmdbs):
    data = mx.sym.Variable("data")
    fc1 = mx.sym.CaffeOp(data_0=data, num_weight=2, name="fc1", prototxt=ip(128))
    act1 = _tanh(fc1)
    fc2 = mx.sym.CaffeOp(data_0=act1, num_weight=2, name="fc2", prototxt=ip(64))
    act2 = _tanh(fc2)
    fc3 = mx.sym.CaffeOp(data_0=act2, num_weight=2, name="fc3", prototxt=ip(10))
    mlp = mx.sym.CaffeLoss(data=fc3, label=mx.sym.Variable("softmax_label"), grad_scale=1, name="softmax",
                           prototxt='layer{type:"SoftmaxWithLoss"}')
    assert _fit_and_score(mlp, "fc3_output", flat=True, epochs=10, lr=0.1, dbs=digits_lmdbs) >= 0.95


def test_module_fit_lenet_on_digits(digits_lmdbs):
    # LeNet shrunk to 8x8 inputs: conv(20,k3,p1)-tanh-maxpool2-conv(50,k3,p1)-tanh-maxpool2-ip(500)-tanh-ip(10)
    data = mx.sym.Variable("data")
    c1 = mx.sym.CaffeOp(data_0=data, num_weight=2, name="conv1",
                        prototxt=conv("Convolution", "num_output:20 kernel_size:3 pad:1"))
    p1 = mx.sym.CaffeOp(data_0=_tanh(c1), prototxt=pool("pool:MAX kernel_size:2 stride:2"))
    c2 = mx.sym.CaffeOp(data_0=p1, num_weight=2, name="conv2",
                        prototxt=conv("Convolution", "num_output:50 kernel_size:3 pad:1"))
    p2 = mx.sym.CaffeOp(data_0=_tanh(c2), prototxt=pool("pool:MAX kernel_size:2 stride:2"))
    f1 = mx.sym.CaffeOp(data_0=p2, num_weight=2, name="ip1", prototxt=ip(500))
    f2 = mx.sym.CaffeOp(data_0=_tanh(f1), num_weight=2, name="ip2", prototxt=ip(10))
    lenet = mx.sym.CaffeLoss(data=f2, label=mx.sym.Variable("softmax_label"), name="softmax",
                             prototxt='layer{type:"SoftmaxWithLoss"}')
    assert _fit_and_score(lenet, "ip2_output", flat=False, epochs=6, lr=0.05, dbs=digits_lmdbs) >= 0.95
