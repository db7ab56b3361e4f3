"""CaffeOp element-wise, normalisation, Scale/Bias and Embed layers against Caffe 1.0.

Every layer is checked against an independent expectation: a plain-NumPy
reference of Caffe's formula written here, MXNet's own operator where the
semantics agree, hand-computed values for Caffe's special cases, and a numeric
gradient check (float64) for every layer that has a backward.
"""
import numpy as np
import pytest
from test_ops_core import _child_json

import mxnet as mx  # noqa: E402
import caffedata  # noqa: E402,F401  (installs mx.sym.CaffeOp)
from caffedata.errors import SpecError  # noqa: E402

if not hasattr(mx.sym, "CaffeOp"):
    pytest.skip("the caffedata ops library is not built (python setup.py build_ext --inplace)",
                allow_module_level=True)

F64 = np.float64
# Layer errors surface as SpecError when CaffeOp is built (prototxt-only
# checks) or as MXNetError when shapes are inferred or the op runs.
LAYER_ERRORS = (SpecError, mx.base.MXNetError)
RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------
# helpers

def _sym(proto, nbottom=1, num_weight=0, name="op"):
    data = [mx.sym.Variable("data%d" % i) for i in range(nbottom)]
    return mx.sym.CaffeOp(*data, num_data=nbottom, num_weight=num_weight,
                          prototxt=proto, name=name)


def _split(sym, bottoms, blobs, dtype):
    """Name the arrays: bottoms -> data<i>, blobs -> weight args then aux states."""
    args = {"data%d" % i: mx.nd.array(b, dtype=dtype) for i, b in enumerate(bottoms)}
    weight_names = [a for a in sym.list_arguments() if not a.startswith("data")]
    aux_names = sym.list_auxiliary_states()
    assert len(weight_names) + len(aux_names) == len(blobs)
    for n, b in zip(weight_names, blobs):
        args[n] = mx.nd.array(b, dtype=dtype)
    aux = {n: mx.nd.array(b, dtype=dtype) for n, b in zip(aux_names, blobs[len(weight_names):])}
    return args, aux


def bind(proto, bottoms, blobs=(), dtype=F64, grad=False):
    sym = _sym(proto, len(bottoms), len(blobs))
    args, aux = _split(sym, bottoms, list(blobs), dtype)
    grads = {k: mx.nd.zeros(v.shape, dtype=dtype) for k, v in args.items()} if grad else None
    return sym.bind(mx.cpu(), args=args, args_grad=grads, aux_states=aux,
                    grad_req="write" if grad else "null")


def fwd(proto, bottoms, blobs=(), is_train=False, dtype=F64):
    # A training forward is bound with gradients: MXNet's oneDNN subgraph pass
    # rewrites inference-only (grad_req='null') graphs, and the phase signal
    # then always reads TEST.
    ex = bind(proto, bottoms, blobs, dtype, grad=is_train)
    ex.forward(is_train=is_train)
    return ex.outputs[0].asnumpy()


def grad_check(proto, bottoms, blobs=(), grad_nodes=None, rtol=1e-4, atol=1e-6, eps=1e-6):
    sym = _sym(proto, len(bottoms), len(blobs))
    args, aux = _split(sym, bottoms, list(blobs), F64)
    location = {k: v.asnumpy() for k, v in args.items()}
    aux_states = {k: v.asnumpy() for k, v in aux.items()} or None
    mx.test_utils.check_numeric_gradient(sym, location, aux_states=aux_states, numeric_eps=eps,
                                         rtol=rtol, atol=atol, grad_nodes=grad_nodes, dtype=F64)


def away_from_zero(shape, margin=0.1):
    x = RNG.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin + x, x)


X4 = (2, 3, 4, 5)


# ---------------------------------------------------------------------------
# element-wise layers: forward vs NumPy, numeric gradients

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


NEURON_CASES = [
    # (id, prototxt, numpy reference, input generator)
    ("relu", 'layer { type: "ReLU" }', lambda x: np.maximum(x, 0), away_from_zero),
    ("leaky", 'layer { type: "ReLU" relu_param { negative_slope: 0.25 } }',
     lambda x: np.where(x > 0, x, 0.25 * x), away_from_zero),
    ("sigmoid", 'layer { type: "Sigmoid" }', _sigmoid, RNG.standard_normal),
    ("tanh", 'layer { type: "TanH" }', np.tanh, RNG.standard_normal),
    ("absval", 'layer { type: "AbsVal" }', np.abs, away_from_zero),
    ("bnll", 'layer { type: "BNLL" }', lambda x: np.log1p(np.exp(x)), RNG.standard_normal),
    ("elu", 'layer { type: "ELU" elu_param { alpha: 0.5 } }',
     lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1)), away_from_zero),
    ("exp_e", 'layer { type: "Exp" }', np.exp, RNG.standard_normal),
    ("exp_e_shift", 'layer { type: "Exp" exp_param { scale: 0.5 shift: 1.5 } }',
     lambda x: np.exp(1.5 + 0.5 * x), RNG.standard_normal),
    ("exp_base2", 'layer { type: "Exp" exp_param { base: 2 scale: 1.5 shift: -0.5 } }',
     lambda x: 2.0 ** (-0.5 + 1.5 * x), RNG.standard_normal),
    ("log_e", 'layer { type: "Log" }', np.log, lambda s: RNG.uniform(0.5, 3, s)),
    ("log_base10", 'layer { type: "Log" log_param { base: 10 scale: 2 shift: 0.5 } }',
     lambda x: np.log10(0.5 + 2 * x), lambda s: RNG.uniform(0.2, 3, s)),
    ("power_general", 'layer { type: "Power" power_param { power: 1.5 scale: 0.5 shift: 2 } }',
     lambda x: (2 + 0.5 * x) ** 1.5, RNG.standard_normal),
    ("power_square", 'layer { type: "Power" power_param { power: 2 scale: -1.5 shift: 0.25 } }',
     lambda x: (0.25 - 1.5 * x) ** 2, RNG.standard_normal),
    ("power_noshift", 'layer { type: "Power" power_param { power: 3 scale: 0.5 } }',
     lambda x: (0.5 * x) ** 3, away_from_zero),
    ("power_linear", 'layer { type: "Power" power_param { power: 1 scale: 2 shift: -1 } }',
     lambda x: 2 * x - 1, RNG.standard_normal),
    ("power_default", 'layer { type: "Power" }', lambda x: x, RNG.standard_normal),
]


@pytest.mark.parametrize("proto,ref,gen", [c[1:] for c in NEURON_CASES],
                         ids=[c[0] for c in NEURON_CASES])
def test_neuron_forward_and_gradient(proto, ref, gen):
    x = gen(X4)
    np.testing.assert_allclose(fwd(proto, [x]), ref(x), rtol=1e-12, atol=1e-12)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(fwd(proto, [x32], dtype=np.float32), ref(x32.astype(F64)),
                               rtol=2e-6, atol=1e-6)
    grad_check(proto, [gen((2, 3, 2, 2))])


@pytest.mark.parametrize("slope", [0.0, 0.3])
def test_relu_float32_forward_and_backward_bit_exact(slope):
    """ReLU's vectorised loops against Caffe's formulas in float32, bit for bit, over 4,099
    values (vector bodies and a tail) with zeros of both signs, NaN and infinities:
    y = std::max(x, 0) + slope * std::min(x, 0), dx = dy * ((x > 0) + slope * (x <= 0))."""
    x = RNG.standard_normal(4099).astype(np.float32)
    x[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45]
    dy = RNG.standard_normal(4099).astype(np.float32)
    dy[6:9] = [np.nan, -0.0, np.inf]
    s = np.float32(slope)
    zero = np.float32(0)
    with np.errstate(invalid="ignore"):
        # std::max(a, b) is (a < b) ? b : a, and std::min(a, b) is (b < a) ? b : a: unlike
        # np.maximum, they keep -0.0 and NaN in a
        want_y = np.where(x < zero, zero, x) + s * np.where(zero < x, zero, x)
        want_dx = dy * ((x > 0).astype(np.float32) + s * (x <= 0).astype(np.float32))
    proto = 'layer { type: "ReLU" relu_param { negative_slope: %g } }' % slope
    xs = mx.nd.array(x, dtype="float32")
    xs.attach_grad()
    with mx.autograd.record():
        y = mx.nd.CaffeOp(xs, prototxt=proto)
    y.backward(mx.nd.array(dy, dtype="float32"))
    assert y.asnumpy().tobytes() == want_y.tobytes()
    assert xs.grad.asnumpy().tobytes() == want_dx.tobytes()


def test_relu_matches_mxnet_leaky_relu_and_activation():
    x = RNG.standard_normal(X4).astype(np.float32)
    np.testing.assert_array_equal(
        fwd('layer { type: "ReLU" relu_param { negative_slope: 0.125 } }', [x], dtype=np.float32),
        mx.nd.LeakyReLU(mx.nd.array(x), act_type="leaky", slope=0.125).asnumpy())
    for caffe_type, act in [("ReLU", "relu"), ("Sigmoid", "sigmoid"), ("TanH", "tanh")]:
        np.testing.assert_allclose(
            fwd('layer { type: "%s" }' % caffe_type, [x], dtype=np.float32),
            mx.nd.Activation(mx.nd.array(x), act_type=act).asnumpy(), rtol=1e-6, atol=1e-7)


def _backward(proto, bottoms, blobs=(), og=None, is_train=True):
    ex = bind(proto, bottoms, blobs, grad=True)
    ex.forward(is_train=is_train)
    ex.backward(mx.nd.array(np.ones(ex.outputs[0].shape) if og is None else og, dtype=F64))
    return ex.outputs[0].asnumpy(), {k: v.asnumpy() for k, v in ex.grad_dict.items()}


def test_relu_gradient_at_zero_uses_negative_slope():
    # Caffe: dx = dy * ((x > 0) + slope * (x <= 0)), so x == 0 takes the slope.
    _, g = _backward('layer { type: "ReLU" relu_param { negative_slope: 0.25 } }',
                     [np.array([[-1.0, 0.0, 2.0]])])
    np.testing.assert_array_equal(g["data0"], [[0.25, 0.25, 1.0]])
    _, g = _backward('layer { type: "AbsVal" }', [np.array([[-3.0, 0.0, 2.0]])])
    np.testing.assert_array_equal(g["data0"], [[-1.0, 0.0, 1.0]])  # sign(0) == 0


def test_bnll_large_inputs_use_caffe_threshold():
    x = np.array([[-1000.0, -60.0, 0.0, 60.0, 1000.0]])
    y, g = _backward('layer { type: "BNLL" }', [x])
    # Caffe computes log(1 + exp(x)) (not log1p), so x = -60 gives exactly 0
    np.testing.assert_allclose(y, [[0.0, 0.0, np.log(2.0), 60.0, 1000.0]], rtol=1e-15, atol=0)
    # Backward clips the exponent at 50: exp(50)/(exp(50)+1), never inf/inf = nan.
    e50 = np.exp(50.0)
    np.testing.assert_allclose(g["data0"], [[0.0, np.exp(-60.0) / (np.exp(-60.0) + 1), 0.5,
                                             e50 / (e50 + 1), e50 / (e50 + 1)]], rtol=1e-15)
    assert np.isfinite(g["data0"]).all()


def test_power_special_cases():
    x = np.array([[-2.0, 0.0, 0.5, 3.0]])
    # power == 0: output 1 whatever the input, zero gradient
    y, g = _backward('layer { type: "Power" power_param { power: 0 scale: 3 shift: -7 } }', [x])
    np.testing.assert_array_equal(y, np.ones_like(x))
    np.testing.assert_array_equal(g["data0"], np.zeros_like(x))
    # scale == 0: constant shift^power
    y, g = _backward('layer { type: "Power" power_param { power: 2 scale: 0 shift: 3 } }', [x])
    np.testing.assert_array_equal(y, np.full_like(x, 9.0))
    np.testing.assert_array_equal(g["data0"], np.zeros_like(x))
    # power == 1: gradient is the constant scale
    y, g = _backward('layer { type: "Power" power_param { scale: -2 shift: 1 } }', [x])
    np.testing.assert_array_equal(y, 1 - 2 * x)
    np.testing.assert_array_equal(g["data0"], np.full_like(x, -2.0))
    # power == 2: dy/dx = 2 * scale * (shift + scale * x), finite at any x
    _, g = _backward('layer { type: "Power" power_param { power: 2 scale: 3 shift: 1 } }', [x])
    np.testing.assert_allclose(g["data0"], 6 * (1 + 3 * x))
    # shift == 0, power != 2: Caffe's shortcut power * y / x, which is nan at x == 0
    _, g = _backward('layer { type: "Power" power_param { power: 3 scale: 2 } }', [x])
    np.testing.assert_allclose(g["data0"][0, [0, 2, 3]], (3 * 8 * x ** 2)[0, [0, 2, 3]])
    assert np.isnan(g["data0"][0, 1])


def test_exp_and_log_reject_bad_base():
    for proto in ['layer { type: "Exp" exp_param { base: -2 } }',
                  'layer { type: "Log" log_param { base: 0 } }',
                  'layer { type: "Log" log_param { base: 1 } }']:
        with pytest.raises(LAYER_ERRORS, match="base"):
            fwd(proto, [np.ones((2, 2))])


def test_threshold_forward_and_no_backward():
    x = np.array([[-1.0, 0.0, 0.25, 0.5, 0.75, 2.0]])
    np.testing.assert_array_equal(fwd('layer { type: "Threshold" }', [x]),
                                  [[0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        fwd('layer { type: "Threshold" threshold_param { threshold: 0.5 } }', [x]),
        [[0, 0, 0, 0, 1, 1]])  # strictly greater
    with pytest.raises(LAYER_ERRORS, match="Threshold has no backward"):
        _backward('layer { type: "Threshold" }', [x])


@pytest.mark.parametrize("shared", [False, True])
def test_prelu(shared):
    proto = 'layer { type: "PReLU" prelu_param { channel_shared: %s } }' % str(shared).lower()
    x = away_from_zero(X4)
    slope = np.array([0.3]) if shared else np.array([0.1, -0.5, 2.0])
    ref = np.where(x > 0, x, x * (slope[0] if shared else slope.reshape(1, 3, 1, 1)))
    np.testing.assert_allclose(fwd(proto, [x], [slope]), ref, rtol=1e-14)
    grad_check(proto, [away_from_zero((2, 3, 2, 2))], [slope])
    # blob shape: (channels,), or (1,) for Caffe's shared scalar
    sym = _sym(proto, 1, 1)
    arg_shapes, _, _ = sym.infer_shape(data0=X4)
    assert arg_shapes[1] == ((1,) if shared else (3,))


# ---------------------------------------------------------------------------
# LRN

def lrn_across_ref(x, size, alpha, beta, k):
    pad = (size - 1) // 2
    c = x.shape[1]
    sq = np.pad(x ** 2, ((0, 0), (pad, pad), (0, 0), (0, 0)))
    s = sum(sq[:, i:i + c] for i in range(size))
    return x * (k + alpha / size * s) ** (-beta)


def lrn_within_ref(x, size, alpha, beta):
    # Caffe: Power(2) -> AVE pool (kernel size, pad (size-1)/2, stride 1) ->
    # Power(-beta, scale alpha, shift 1) -> product.  Caffe's AVE divisor counts
    # the padded cells, so with stride 1 every window divides by size * size.
    pad = (size - 1) // 2
    h, w = x.shape[2:]
    sq = np.pad(x ** 2, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    s = sum(sq[:, :, i:i + h, j:j + w] for i in range(size) for j in range(size))
    return x * (1 + alpha * s / size ** 2) ** (-beta)


def test_lrn_across_channels_matches_reference_and_mxnet():
    x = RNG.standard_normal((2, 7, 3, 4))
    proto = ('layer { type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 } }')
    y = fwd(proto, [x])
    np.testing.assert_allclose(y, lrn_across_ref(x, 5, 0.5, 0.75, 2.0), rtol=1e-12)
    mx_y = mx.nd.LRN(mx.nd.array(x), nsize=5, alpha=0.5, beta=0.75, knorm=2).asnumpy()
    np.testing.assert_allclose(y, mx_y, rtol=1e-5)
    # defaults: local_size 5, alpha 1, beta 0.75, k 1
    np.testing.assert_allclose(fwd('layer { type: "LRN" }', [x]),
                               lrn_across_ref(x, 5, 1.0, 0.75, 1.0), rtol=1e-12)
    grad_check('layer { type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }',
               [RNG.standard_normal((2, 4, 2, 3))])


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.3, 2.5])
def test_lrn_float32_powers_are_powf_bit_for_bit(beta):
    """Caffe computes LRN's scale^-beta with powf (caffe_powx).  One channel and local_size 1
    make the scale k + alpha * x^2 exactly, so the float32 reference is NumPy's (whose float32
    power is the C library's powf): 10^6 scales across [1, 50], the vector path's fallback
    near rounding midpoints included."""
    x = RNG.uniform(-7, 7, (1, 1, 1000, 1000)).astype(np.float32)
    x[0, 0, 0, :4] = [0.0, -0.0, 1e-20, 7.0]
    proto = 'layer { type: "LRN" lrn_param { local_size: 1 alpha: 1 beta: %r k: 1 } }' % beta
    scale = np.float32(1) + np.float32(1) * (x * x)
    want = np.power(scale, np.float32(-beta)) * x
    assert fwd(proto, [x], dtype=np.float32).tobytes() == want.tobytes()


def test_lrn_float32_forward_and_backward_identical_with_libm_powers():
    """The vectorised powers against powf for every element (CAFFEDATA_POWX=libm, read once
    per process): LRN forward and backward across 5 channels, byte for byte, for GoogLeNet's
    alpha and for one that spreads the scales."""
    body = """
        import hashlib, json
        rng = np.random.RandomState(3)
        x = mx.nd.array(rng.randn(4, 24, 33, 35) * 3, dtype="float32")
        og = mx.nd.array(rng.randn(4, 24, 33, 35), dtype="float32")
        digests = []
        for alpha in (0.0001, 2):  # GoogLeNet's LRN, and scales spread over [1, 100]
            proto = 'layer { type: "LRN" lrn_param { local_size: 5 alpha: %g beta: 0.75 } }' % alpha
            outs = fwd_bwd(lambda x: mx.nd.CaffeOp(x, prototxt=proto), [x], og)
            digests += [hashlib.sha256(a.tobytes()).hexdigest() for a in outs]
        print(json.dumps(digests))
    """
    default = _child_json(body)
    libm = _child_json(body, "CAFFEDATA_POWX=libm")
    assert default == libm


def test_lrn_within_channel():
    proto = ('layer { type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 '
             'alpha: 0.5 beta: 0.75 } }')
    x = RNG.standard_normal((2, 2, 5, 4))
    np.testing.assert_allclose(fwd(proto, [x]), lrn_within_ref(x, 3, 0.5, 0.75), rtol=1e-12)
    grad_check(proto, [RNG.standard_normal((1, 2, 4, 3))])
    # hand-computed: ones(3x3), size 3, alpha 1, beta 1.  The corner window sees
    # 4 cells but divides by 9 (padding counts), so y = 1 / (1 + 4/9) = 9/13.
    y = fwd('layer { type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 '
            'alpha: 1 beta: 1 k: 5 } }', [np.ones((1, 1, 3, 3))])
    np.testing.assert_allclose(y[0, 0], [[9 / 13, 9 / 15, 9 / 13],
                                         [9 / 15, 9 / 18, 9 / 15],
                                         [9 / 13, 9 / 15, 9 / 13]], rtol=1e-14)


def test_lrn_errors():
    with pytest.raises(LAYER_ERRORS, match="odd values for local_size"):
        fwd('layer { type: "LRN" lrn_param { local_size: 4 } }', [np.ones((1, 4, 2, 2))])
    with pytest.raises(LAYER_ERRORS, match="4 axes"):
        fwd('layer { type: "LRN" }', [np.ones((2, 6))])


# ---------------------------------------------------------------------------
# Dropout

def test_dropout_test_phase_is_identity():
    x = RNG.standard_normal((4, 5))
    np.testing.assert_array_equal(fwd('layer { type: "Dropout" }', [x], is_train=False), x)
    y, g = _backward('layer { type: "Dropout" }', [x], og=np.full(x.shape, 3.0), is_train=False)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(g["data0"], np.full(x.shape, 3.0))


def test_dropout_train_phase_mask_and_scale():
    p = 0.3
    x = np.ones((200, 100))
    y, g = _backward('layer { type: "Dropout" dropout_param { dropout_ratio: 0.3 } }', [x],
                     is_train=True)
    scale = 1.0 / (1.0 - np.float32(p))  # Caffe: 1 / (1 - (float)ratio)
    kept = y != 0
    assert set(np.unique(y)) <= {0.0, scale}
    assert abs(kept.mean() - (1 - p)) < 0.02
    # backward applies the same mask and scale
    np.testing.assert_array_equal(g["data0"], np.where(kept, scale, 0.0))
    # a second training forward draws a new mask
    y2 = fwd('layer { type: "Dropout" dropout_param { dropout_ratio: 0.3 } }', [x], is_train=True)
    assert (y2 != y).any()


def test_dropout_bad_ratio():
    with pytest.raises(LAYER_ERRORS, match="dropout_ratio"):
        fwd('layer { type: "Dropout" dropout_param { dropout_ratio: 1.0 } }', [np.ones((2, 2))])


# ---------------------------------------------------------------------------
# MVN

def mvn_ref(x, normalize_variance=True, across_channels=False, eps=1e-9):
    x4 = x.reshape(x.shape + (1,) * (4 - x.ndim))
    axes = (1, 2, 3) if across_channels else (2, 3)
    d = x4 - x4.mean(axis=axes, keepdims=True)
    if normalize_variance:
        # Caffe 1.0 adds eps after the square root
        d = d / (np.sqrt((d ** 2).mean(axis=axes, keepdims=True)) + eps)
    return d


@pytest.mark.parametrize("nv", [True, False])
@pytest.mark.parametrize("across", [False, True])
def test_mvn(nv, across):
    proto = ('layer { type: "MVN" mvn_param { normalize_variance: %s across_channels: %s } }'
             % (str(nv).lower(), str(across).lower()))
    x = RNG.standard_normal(X4) * 3 + 1
    np.testing.assert_allclose(fwd(proto, [x]), mvn_ref(x, nv, across), rtol=1e-10, atol=1e-12)
    grad_check(proto, [RNG.standard_normal((2, 3, 2, 3))])


def test_mvn_eps_after_sqrt_and_legacy_4d_top():
    x = RNG.standard_normal((3, 4, 2, 2))
    y = fwd('layer { type: "MVN" mvn_param { eps: 0.5 } }', [x])
    np.testing.assert_allclose(y, mvn_ref(x, eps=0.5), rtol=1e-12)
    d = x - x.mean(axis=(2, 3), keepdims=True)
    assert not np.allclose(y, d / np.sqrt((d ** 2).mean(axis=(2, 3), keepdims=True) + 0.5))
    # Caffe reshapes the top as (num, channels, height, width)
    x2 = RNG.standard_normal((5, 6))
    y2 = fwd('layer { type: "MVN" mvn_param { across_channels: true } }', [x2])
    assert y2.shape == (5, 6, 1, 1)
    np.testing.assert_allclose(y2, mvn_ref(x2, True, True), rtol=1e-10)


# ---------------------------------------------------------------------------
# BatchNorm

BN = 'layer { type: "BatchNorm" %s }'


def bn_ref(x, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def test_batchnorm_train_and_test_phase_with_running_stats():
    proto = BN % "batch_norm_param { moving_average_fraction: 0.5 eps: 0.001 }"
    x1 = RNG.standard_normal((4, 3, 2, 2)) * 2 + 1
    x2 = RNG.standard_normal((4, 3, 2, 2)) - 3
    eps = F64(np.float32(1e-3))  # Caffe's eps is a proto float
    ex = bind(proto, [x1], [np.zeros(3), np.zeros(3), np.zeros(1)], grad=True)
    m = x1.size // 3
    ex.forward(is_train=True)
    mean1, var1 = x1.mean(axis=(0, 2, 3)), x1.var(axis=(0, 2, 3))
    np.testing.assert_allclose(ex.outputs[0].asnumpy(), bn_ref(x1, mean1, var1, eps), rtol=1e-10)
    aux = [ex.aux_dict[n].asnumpy() for n in sorted(ex.aux_dict)]
    np.testing.assert_allclose(aux[0], mean1, rtol=1e-12)
    np.testing.assert_allclose(aux[1], var1 * m / (m - 1), rtol=1e-12)
    np.testing.assert_allclose(aux[2], [1.0])
    # second training step: factor = 0.5 * 1 + 1, stats = 0.5 * old + new
    ex.arg_dict["data0"][:] = x2
    ex.forward(is_train=True)
    # MXNet's graph executor registers aux states as inputs an op only reads,
    # so reading one is not ordered after the op's in-place update (MXNet's own
    # BatchNorm, which updates in backward, races the same way): wait first.
    mx.nd.waitall()
    mean2, var2 = x2.mean(axis=(0, 2, 3)), x2.var(axis=(0, 2, 3))
    aux = [ex.aux_dict[n].asnumpy() for n in sorted(ex.aux_dict)]
    np.testing.assert_allclose(aux[2], [1.5])
    np.testing.assert_allclose(aux[0], 0.5 * mean1 + mean2, rtol=1e-12)
    np.testing.assert_allclose(aux[1], 0.5 * var1 * m / (m - 1) + var2 * m / (m - 1), rtol=1e-12)
    # TEST phase: stored sums divided by the factor; statistics are not updated
    ex.forward(is_train=False)
    np.testing.assert_allclose(ex.outputs[0].asnumpy(),
                               bn_ref(x2, aux[0] / 1.5, aux[1] / 1.5, eps), rtol=1e-10)
    np.testing.assert_allclose(ex.aux_dict[sorted(ex.aux_dict)[2]].asnumpy(), [1.5])


def test_batchnorm_binds_in_module_and_simple_bind():
    # MXNet 1.9.1 refuses to bind a library op whose inputs' storage types are still
    # unknown (BatchNorm's aux states) unless the op declares them dense.
    x = RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)
    net = mx.sym.CaffeOp(data_0=mx.sym.Variable("data"), num_weight=3, prototxt=BN % "", name="bn")
    mod = mx.mod.Module(net, data_names=["data"], label_names=None, context=mx.cpu())
    # inputs_need_grad: with no gradient anywhere MXNet runs the op in TEST (ops/README.md)
    mod.bind(data_shapes=[("data", x.shape)], for_training=True, inputs_need_grad=True)
    mod.init_params()
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=True)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(mod.get_outputs()[0].asnumpy(), bn_ref(x, mean, var, 1e-5), rtol=1e-4,
                               atol=1e-5)
    ex = net.simple_bind(mx.cpu(), data=x.shape)
    assert sorted(ex.aux_dict) and all(a.shape in ((3,), (1,)) for a in ex.aux_dict.values())


def test_batchnorm_use_global_stats_and_zero_factor():
    x = RNG.standard_normal((2, 3, 2))
    mean, var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0])
    proto = BN % "batch_norm_param { use_global_stats: true }"
    y = fwd(proto, [x], [mean * 2, var * 2, [2.0]], is_train=True)
    np.testing.assert_allclose(y, bn_ref(x, mean, var, 1e-5), rtol=1e-12)
    # factor 0 -> Caffe uses scale 0: mean 0, variance 0
    y = fwd(proto, [x], [mean, var, [0.0]], is_train=False)
    np.testing.assert_allclose(y, x / np.sqrt(F64(np.float32(1e-5))), rtol=1e-12)
    # use_global_stats: false computes batch statistics even in TEST phase
    y = fwd(BN % "batch_norm_param { use_global_stats: false }", [x],
            [mean, var, [1.0]], is_train=False)
    np.testing.assert_allclose(y, bn_ref(x, x.mean(axis=(0, 2)), x.var(axis=(0, 2)),
                                         np.float32(1e-5)), rtol=1e-9)


def test_batchnorm_gradients():
    stats = [np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 0.5]), [1.0]]
    # batch statistics (TRAIN): the full Caffe backward through mean and variance
    grad_check(BN % "", [RNG.standard_normal((3, 3, 2, 2))], stats)
    grad_check(BN % "", [RNG.standard_normal((4, 3))], stats)
    # global statistics: dx = dy / sqrt(var + eps)
    grad_check(BN % "batch_norm_param { use_global_stats: true }",
               [RNG.standard_normal((2, 3, 2, 2))], stats)
    og = RNG.standard_normal((2, 3, 2))
    _, g = _backward(BN % "batch_norm_param { use_global_stats: true eps: 0.5 }",
                     [RNG.standard_normal((2, 3, 2))], stats, og=og)
    np.testing.assert_allclose(g["data0"], og / np.sqrt(stats[1].reshape(1, 3, 1) + 0.5),
                               rtol=1e-12)


def test_batchnorm_blobs_are_auxiliary_states():
    sym = _sym(BN % "", 1, 3, name="bn")
    assert sym.list_arguments() == ["data0"]
    assert len(sym.list_auxiliary_states()) == 3
    _, _, aux_shapes = sym.infer_shape(data0=(2, 5, 3, 3))
    assert aux_shapes == [(5,), (5,), (1,)]


# ---------------------------------------------------------------------------
# Scale and Bias

def bcast(v, x_ndim, axis, naxes):
    return v.reshape((1,) * axis + v.shape + (1,) * (x_ndim - axis - naxes))


SCALE_PARAM_CASES = [
    # (scale_param text, axis, number of scale axes, blob shape for X4)
    ("", 1, 1, (3,)),
    ("axis: 0 num_axes: 2", 0, 2, (2, 3)),
    ("axis: -2 num_axes: -1", 2, 2, (4, 5)),
    ("num_axes: 0", 0, 0, ()),
]


@pytest.mark.parametrize("text,axis,naxes,shape", SCALE_PARAM_CASES)
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_learned(text, axis, naxes, shape, bias_term):
    proto = 'layer { type: "Scale" scale_param { %s bias_term: %s } }' % (
        text, str(bias_term).lower())
    x = RNG.standard_normal(X4)
    s = RNG.standard_normal(shape)
    b = RNG.standard_normal(shape)
    blobs = [s.reshape(shape or (1,)), b.reshape(shape or (1,))][:2 if bias_term else 1]
    ref = x * bcast(s, 4, axis, naxes) + (bcast(b, 4, axis, naxes) if bias_term else 0)
    np.testing.assert_allclose(fwd(proto, [x], blobs), ref, rtol=1e-14)
    sym = _sym(proto, 1, len(blobs))
    arg_shapes, _, _ = sym.infer_shape(data0=X4)
    assert arg_shapes[1:] == [shape or (1,)] * len(blobs)
    grad_check(proto, [RNG.standard_normal(X4)], blobs)


def test_scale_two_bottoms():
    x = RNG.standard_normal(X4)
    s = RNG.standard_normal((2, 3))
    # CaffeOp reads the bottom count of Scale/Bias from the layer's `bottom:` fields
    proto = 'layer { type: "Scale" bottom: "x" bottom: "s" scale_param { axis: 0 } }'
    np.testing.assert_allclose(fwd(proto, [x, s]), x * s[:, :, None, None], rtol=1e-14)
    grad_check(proto, [x, s])
    # with bias_term the bias spans bottom[1]'s axes
    proto = ('layer { type: "Scale" bottom: "x" bottom: "s" '
             'scale_param { axis: 1 bias_term: true } }')
    s = RNG.standard_normal((3, 4))
    b = RNG.standard_normal((3, 4))
    np.testing.assert_allclose(fwd(proto, [x, s], [b]), x * s[:, :, None] + b[:, :, None],
                               rtol=1e-14)
    grad_check(proto, [x, s], [b])


def test_scale_bias_two_bottoms_without_bottom_fields():
    # The bottom count comes from num_data (Layer::num_bottoms), not `bottom:` fields.
    x = RNG.standard_normal(X4)
    s = RNG.standard_normal((3, 4))
    b = RNG.standard_normal((3, 4))
    proto = 'layer { type: "Scale" }'
    sym = mx.sym.CaffeOp(data_0=mx.sym.Variable("data0"), data_1=mx.sym.Variable("data1"), num_data=2,
                         prototxt=proto, name="op")
    assert sym.list_arguments() == ["data0", "data1"]
    s3 = RNG.standard_normal(3)
    np.testing.assert_allclose(fwd(proto, [x, s3]), x * s3[:, None, None], rtol=1e-14)
    grad_check(proto, [x, s3])
    proto = 'layer { type: "Scale" scale_param { bias_term: true } }'
    sym = mx.sym.CaffeOp(data_0=mx.sym.Variable("data0"), data_1=mx.sym.Variable("data1"), num_data=2,
                         num_weight=1, prototxt=proto, name="op")
    assert sym.list_arguments() == ["data0", "data1", "op_0_weight"]
    np.testing.assert_allclose(fwd(proto, [x, s], [b]), x * s[:, :, None] + b[:, :, None], rtol=1e-14)
    grad_check(proto, [x, s], [b])
    proto = 'layer { type: "Bias" bias_param { axis: 2 } }'
    sym = mx.sym.CaffeOp(data_0=mx.sym.Variable("data0"), data_1=mx.sym.Variable("data1"), num_data=2,
                         prototxt=proto, name="op")
    assert sym.list_arguments() == ["data0", "data1"]
    b2 = RNG.standard_normal((4, 5))
    np.testing.assert_allclose(fwd(proto, [x, b2]), x + b2, rtol=1e-14)
    grad_check(proto, [x, b2])


def test_bias():
    x = RNG.standard_normal(X4)
    b = RNG.standard_normal(3)
    proto = 'layer { type: "Bias" }'
    np.testing.assert_allclose(fwd(proto, [x], [b]), x + b[:, None, None], rtol=1e-14)
    grad_check(proto, [RNG.standard_normal(X4)], [b])
    # two bottoms
    b2 = RNG.standard_normal((4, 5))
    proto2 = 'layer { type: "Bias" bottom: "x" bottom: "b" bias_param { axis: 2 } }'
    np.testing.assert_allclose(fwd(proto2, [x, b2]), x + b2, rtol=1e-14)
    grad_check(proto2, [x, b2])
    # scalar
    proto3 = 'layer { type: "Bias" bias_param { num_axes: 0 } }'
    np.testing.assert_allclose(fwd(proto3, [x], [[0.5]]), x + 0.5, rtol=1e-14)
    grad_check(proto3, [RNG.standard_normal((2, 3))], [[0.5]])


def test_scale_bias_shape_errors():
    with pytest.raises(LAYER_ERRORS, match="dimension mismatch"):
        fwd('layer { type: "Scale" bottom: "x" bottom: "s" }', [np.ones((2, 3, 4)), np.ones(4)])
    with pytest.raises(LAYER_ERRORS, match="extends past"):
        fwd('layer { type: "Bias" bias_param { axis: 2 num_axes: 3 } }', [np.ones((2, 3, 4))],
            [np.ones(4)])


# ---------------------------------------------------------------------------
# Embed

def test_embed():
    idx = np.array([[0, 4, 2], [2, 1, 4]], dtype=F64)
    w = RNG.standard_normal((5, 3))
    b = RNG.standard_normal(3)
    proto = 'layer { type: "Embed" embed_param { num_output: 3 input_dim: 5 } }'
    y = fwd(proto, [idx], [w, b])
    assert y.shape == (2, 3, 3)
    np.testing.assert_allclose(y, w[idx.astype(int)] + b, rtol=1e-14)
    proto_nb = 'layer { type: "Embed" embed_param { num_output: 3 input_dim: 5 bias_term: false } }'
    np.testing.assert_array_equal(fwd(proto_nb, [idx], [w]), w[idx.astype(int)])
    # gradients: rows of repeated indices accumulate; no gradient to the indices
    og = RNG.standard_normal((2, 3, 3))
    _, g = _backward(proto, [idx], [w, b], og=og)
    expect = np.zeros_like(w)
    np.add.at(expect, idx.astype(int).ravel(), og.reshape(-1, 3))
    weight_name = [k for k in g if k.endswith("_weight")][0]
    bias_name = [k for k in g if k.endswith("_bias")][0]
    np.testing.assert_allclose(g[weight_name], expect, rtol=1e-14)
    np.testing.assert_allclose(g[bias_name], og.sum(axis=(0, 1)), rtol=1e-14)
    np.testing.assert_array_equal(g["data0"], np.zeros_like(idx))
    grad_check(proto, [idx], [w, b], grad_nodes=[weight_name, bias_name])


def test_embed_index_range_and_truncation():
    proto = 'layer { type: "Embed" embed_param { num_output: 2 input_dim: 3 bias_term: false } }'
    w = np.arange(6.0).reshape(3, 2)
    # Caffe casts the float index to int (truncation toward zero)
    np.testing.assert_array_equal(fwd(proto, [np.array([1.9, -0.5, 2.0])], [w]),
                                  w[[1, 0, 2]])
    for bad in (3.0, -1.0, np.nan):
        with pytest.raises(LAYER_ERRORS, match="out of range"):
            fwd(proto, [np.array([0.0, bad])], [w])


# ---------------------------------------------------------------------------
# phase switching in mx.nd: TRAIN inside autograd.record(), TEST outside

def test_phase_follows_autograd_train_mode():
    x = RNG.standard_normal((4, 3, 2, 2))
    xs = mx.nd.array(x, dtype=F64)
    stats = [mx.nd.zeros(3, dtype=F64), mx.nd.zeros(3, dtype=F64), mx.nd.zeros(1, dtype=F64)]
    bn = 'layer { type: "BatchNorm" }'
    eps = F64(np.float32(1e-5))
    with mx.autograd.record():  # TRAIN: batch statistics, running sums updated in place
        y = mx.nd.CaffeOp(xs, *stats, num_data=1, num_weight=3, prototxt=bn)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.asnumpy(), bn_ref(x, mean, var, eps), rtol=1e-10)
    np.testing.assert_allclose(stats[0].asnumpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(stats[2].asnumpy(), [1.0])
    # TEST (no recording, or recording with train_mode=False): stored statistics, no update
    x2 = RNG.standard_normal((4, 3, 2, 2))
    m = x.size // 3
    for scope in (None, mx.autograd.record(train_mode=False)):
        if scope is None:
            y = mx.nd.CaffeOp(mx.nd.array(x2, dtype=F64), *stats, num_data=1, num_weight=3,
                              prototxt=bn)
        else:
            with scope:
                y = mx.nd.CaffeOp(mx.nd.array(x2, dtype=F64), *stats, num_data=1, num_weight=3,
                                  prototxt=bn)
        np.testing.assert_allclose(y.asnumpy(), bn_ref(x2, mean, var * m / (m - 1), eps),
                                   rtol=1e-10)
        np.testing.assert_allclose(stats[2].asnumpy(), [1.0])
    ones = mx.nd.ones((1000,), dtype=F64)
    dropout = 'layer { type: "Dropout" }'
    np.testing.assert_array_equal(mx.nd.CaffeOp(ones, prototxt=dropout).asnumpy(), 1.0)
    with mx.autograd.record():
        y = mx.nd.CaffeOp(ones, prototxt=dropout).asnumpy()
    assert set(np.unique(y)) == {0.0, 2.0}


# ---------------------------------------------------------------------------
# Default initial values without a filler (Caffe's layer defaults)

def _init_params(sym, data_shapes):
    mod = mx.mod.Module(sym, data_names=[n for n, _ in data_shapes], label_names=None, context=mx.cpu())
    # bottom 1 (a scale) has no batch axis
    descs = [mx.io.DataDesc(n, shp, layout="NCHW" if i == 0 else "C") for i, (n, shp) in enumerate(data_shapes)]
    mod.bind(data_shapes=descs, for_training=True)
    mod.init_params()  # the default initializer (Uniform(0.01))
    args, _ = mod.get_params()
    return {k: v.asnumpy() for k, v in args.items()}


@pytest.mark.parametrize("proto,nbottom,expect", [
    ('layer { type: "PReLU" }', 1, {"op_0_weight": (0.25, (3,))}),
    ('layer { type: "PReLU" prelu_param { channel_shared: true } }', 1, {"op_0_weight": (0.25, (1,))}),
    ('layer { type: "Bias" }', 1, {"op_0_weight": (0.0, (3,))}),
    ('layer { type: "Scale" }', 1, {"op_0_weight": (1.0, (3,))}),
    ('layer { type: "Scale" scale_param { bias_term: true } }', 1,
     {"op_0_weight": (1.0, (3,)), "op_1_bias": (0.0, (3,))}),
    ('layer { type: "Scale" scale_param { bias_term: true } }', 2, {"op_0_weight": (0.0, (3,))}),
    ('layer { type: "Scale" scale_param { bias_term: true bias_filler { type: "constant" value: 2 } } }', 2,
     {"op_0_weight": (2.0, (3,))}),
    ('layer { type: "PReLU" prelu_param { filler { type: "constant" value: 0.5 } } }', 1,
     {"op_0_weight": (0.5, (3,))}),
])
def test_default_initial_values(proto, nbottom, expect):
    data = [mx.sym.Variable("data%d" % i) for i in range(nbottom)]
    sym = mx.sym.CaffeOp(*data, num_data=nbottom, num_weight=len(expect), prototxt=proto, name="op")
    shapes = [("data0", (2, 3, 4, 5))] + ([("data1", (3,))] if nbottom == 2 else [])
    params = _init_params(sym, shapes)
    assert sorted(params) == sorted(expect)
    for k, (value, shape) in expect.items():
        assert params[k].shape == shape
        np.testing.assert_array_equal(params[k], np.full(shape, value, dtype=np.float32))


def test_default_initial_values_inner_product_left_to_module_initializer():
    proto = 'layer { type: "InnerProduct" inner_product_param { num_output: 4 } }'
    sym = mx.sym.CaffeOp(mx.sym.Variable("data0"), num_weight=2, prototxt=proto, name="op")
    params = _init_params(sym, [("data0", (2, 6, 1, 1))])
    w = params["op_0_weight"]
    assert w.shape == (4, 6) and np.all(np.abs(w) <= 0.01) and np.any(w != 0)  # Uniform(0.01)
    np.testing.assert_array_equal(params["op_1_bias"], np.zeros(4, np.float32))
