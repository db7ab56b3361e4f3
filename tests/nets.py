"""Caffe's published nets as prototxt text, written here from their layer facts (types, shapes, params).

Each function returns a NetParameter text.  Large nets take ``size`` (input
height/width) and ``width`` (divisor of every channel count) so that tests can
run them small; the defaults are the published nets.
"""


def _layer(name, type_, bottoms=(), tops=(), body=""):
    lines = [f'layer {{ name: "{name}" type: "{type_}"']
    lines += [f'  bottom: "{b}"' for b in bottoms]
    lines += [f'  top: "{t}"' for t in tops]
    if body:
        lines.append("  " + body)
    lines.append("}")
    return "\n".join(lines)


def _input(shape, top="data"):
    dims = " ".join(f"dim: {d}" for d in shape)
    return _layer("data", "Input", (), (top,), f"input_param {{ shape {{ {dims} }} }}")


def _conv(name, bottom, num, kernel, stride=1, pad=0, group=1, bias=True, wfill='type: "xavier"',
          bfill='type: "constant"', top=None, lr=True):
    params = "param { lr_mult: 1 } param { lr_mult: 2 } " if lr and bias else ("param { lr_mult: 1 } " if lr else "")
    cp = f"num_output: {num} kernel_size: {kernel}"
    if stride != 1:
        cp += f" stride: {stride}"
    if pad:
        cp += f" pad: {pad}"
    if group != 1:
        cp += f" group: {group}"
    if not bias:
        cp += " bias_term: false"
    cp += f" weight_filler {{ {wfill} }}"
    if bias:
        cp += f" bias_filler {{ {bfill} }}"
    return _layer(name, "Convolution", (bottom,), (top or name,), params + f"convolution_param {{ {cp} }}")


def _pool(name, bottom, pool, kernel, stride, pad=0, top=None, global_=False):
    pp = f"pool: {pool}"
    if global_:
        pp += " global_pooling: true"
    else:
        pp += f" kernel_size: {kernel} stride: {stride}"
    if pad:
        pp += f" pad: {pad}"
    return _layer(name, "Pooling", (bottom,), (top or name,), f"pooling_param {{ {pp} }}")


def _ip(name, bottom, num, wfill='type: "xavier"', bfill='type: "constant"', top=None):
    return _layer(name, "InnerProduct", (bottom,), (top or name,),
                  f"param {{ lr_mult: 1 }} param {{ lr_mult: 2 }} inner_product_param {{ num_output: {num} "
                  f"weight_filler {{ {wfill} }} bias_filler {{ {bfill} }} }}")


def _relu(name, blob):
    return _layer(name, "ReLU", (blob,), (blob,))


def _lrn(name, bottom, top=None):
    return _layer(name, "LRN", (bottom,), (top or name,),
                  "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")


def _net(name, layers):
    return f'name: "{name}"\n' + "\n".join(layers) + "\n"


# ---------------------------------------------------------------------------
# LeNet (examples/mnist/lenet.prototxt, lenet_train_test.prototxt)

def _lenet_body(softmax):
    layers = [
        _conv("conv1", "data", 20, 5),
        _pool("pool1", "conv1", "MAX", 2, 2),
        _conv("conv2", "pool1", 50, 5),
        _pool("pool2", "conv2", "MAX", 2, 2),
        _ip("ip1", "pool2", 500),
        _relu("relu1", "ip1"),
        _ip("ip2", "ip1", 10),
    ]
    return layers + softmax


def lenet(batch=64):
    return _net("LeNet", [_input((batch, 1, 28, 28))] + _lenet_body([_layer("prob", "Softmax", ("ip2",), ("prob",))]))


def lenet_train_test(train_source, test_source, train_batch=64, test_batch=100):
    def data(phase, source, batch):
        return _layer("mnist", "Data", (), ("data", "label"),
                      f"include {{ phase: {phase} }} transform_param {{ scale: 0.00390625 }} "
                      f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}')

    tail = [
        _layer("accuracy", "Accuracy", ("ip2", "label"), ("accuracy",), "include { phase: TEST }"),
        _layer("loss", "SoftmaxWithLoss", ("ip2", "label"), ("loss",)),
    ]
    return _net("LeNet", [data("TRAIN", train_source, train_batch), data("TEST", test_source, test_batch)]
                + _lenet_body(tail))


def lenet_v1(batch=64):
    """lenet.prototxt in the V1 format (``layers``, enum types, ``blobs_lr``, legacy ``input_dim``)."""
    def conv(name, bottom, num):
        return (f'layers {{ name: "{name}" type: CONVOLUTION bottom: "{bottom}" top: "{name}" blobs_lr: 1 '
                f'blobs_lr: 2 convolution_param {{ num_output: {num} kernel_size: 5 stride: 1 '
                f'weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}')

    def pool(name, bottom):
        return (f'layers {{ name: "{name}" type: POOLING bottom: "{bottom}" top: "{name}" '
                f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}')

    def ip(name, bottom, num):
        return (f'layers {{ name: "{name}" type: INNER_PRODUCT bottom: "{bottom}" top: "{name}" blobs_lr: 1 '
                f'blobs_lr: 2 inner_product_param {{ num_output: {num} weight_filler {{ type: "xavier" }} '
                f'bias_filler {{ type: "constant" }} }} }}')

    return "\n".join([
        'name: "LeNet"', 'input: "data"', f"input_dim: {batch}", "input_dim: 1", "input_dim: 28",
        "input_dim: 28",
        conv("conv1", "data", 20), pool("pool1", "conv1"), conv("conv2", "pool1", 50), pool("pool2", "conv2"),
        ip("ip1", "pool2", 500),
        'layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }',
        ip("ip2", "ip1", 10),
        'layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }',
    ]) + "\n"


# ---------------------------------------------------------------------------
# CIFAR-10 quick (examples/cifar10/cifar10_quick.prototxt)

def cifar10_quick(batch=1):
    g = 'type: "gaussian" std: {}'
    return _net("CIFAR10_quick", [
        _input((batch, 3, 32, 32)),
        _conv("conv1", "data", 32, 5, pad=2, wfill=g.format(0.0001)),
        _pool("pool1", "conv1", "MAX", 3, 2),
        _relu("relu1", "pool1"),
        _conv("conv2", "pool1", 32, 5, pad=2, wfill=g.format(0.01)),
        _relu("relu2", "conv2"),
        _pool("pool2", "conv2", "AVE", 3, 2),
        _conv("conv3", "pool2", 64, 5, pad=2, wfill=g.format(0.01)),
        _relu("relu3", "conv3"),
        _pool("pool3", "conv3", "AVE", 3, 2),
        _ip("ip1", "pool3", 64, wfill=g.format(0.1)),
        _ip("ip2", "ip1", 10, wfill=g.format(0.1)),
        _layer("prob", "Softmax", ("ip2",), ("prob",)),
    ])


# ---------------------------------------------------------------------------
# CaffeNet (models/bvlc_reference_caffenet/deploy.prototxt) and AlexNet (bvlc_alexnet):
# grouped convolutions and LRN; CaffeNet pools before normalising, AlexNet after.

def caffenet(batch=10, size=227, width=1, fc=4096, classes=1000, alexnet=False):
    c = [96 // width, 256 // width, 384 // width, 384 // width, 256 // width]
    g = 'type: "gaussian" std: 0.01'
    layers = [_input((batch, 3, size, size)),
              _conv("conv1", "data", c[0], 11, stride=4, wfill=g), _relu("relu1", "conv1")]
    if alexnet:
        layers += [_lrn("norm1", "conv1"), _pool("pool1", "norm1", "MAX", 3, 2)]
        last = "pool1"
    else:
        layers += [_pool("pool1", "conv1", "MAX", 3, 2), _lrn("norm1", "pool1")]
        last = "norm1"
    layers += [_conv("conv2", last, c[1], 5, pad=2, group=2, wfill=g), _relu("relu2", "conv2")]
    if alexnet:
        layers += [_lrn("norm2", "conv2"), _pool("pool2", "norm2", "MAX", 3, 2)]
        last = "pool2"
    else:
        layers += [_pool("pool2", "conv2", "MAX", 3, 2), _lrn("norm2", "pool2")]
        last = "norm2"
    layers += [
        _conv("conv3", last, c[2], 3, pad=1, wfill=g), _relu("relu3", "conv3"),
        _conv("conv4", "conv3", c[3], 3, pad=1, group=2, wfill=g), _relu("relu4", "conv4"),
        _conv("conv5", "conv4", c[4], 3, pad=1, group=2, wfill=g), _relu("relu5", "conv5"),
        _pool("pool5", "conv5", "MAX", 3, 2),
        _ip("fc6", "pool5", fc, wfill='type: "gaussian" std: 0.005'), _relu("relu6", "fc6"),
        _layer("drop6", "Dropout", ("fc6",), ("fc6",), "dropout_param { dropout_ratio: 0.5 }"),
        _ip("fc7", "fc6", fc, wfill='type: "gaussian" std: 0.005'), _relu("relu7", "fc7"),
        _layer("drop7", "Dropout", ("fc7",), ("fc7",), "dropout_param { dropout_ratio: 0.5 }"),
        _ip("fc8", "fc7", classes, wfill=g),
        _layer("prob", "Softmax", ("fc8",), ("prob",)),
    ]
    return _net("AlexNet" if alexnet else "CaffeNet", layers)


# ---------------------------------------------------------------------------
# GoogLeNet (models/bvlc_googlenet/deploy.prototxt): inception blocks, Concat, ceil-mode pooling.

INCEPTION = [  # name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj
    ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64), ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64), ("4e", 256, 160, 320, 32, 128, 128),
    ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128),
]


def inception(name, bottom, n1, n3r, n3, n5r, n5, npool, width=1):
    p = f"inception_{name}"
    n1, n3r, n3, n5r, n5, npool = (v // width for v in (n1, n3r, n3, n5r, n5, npool))
    layers = [
        _conv(f"{p}/1x1", bottom, n1, 1), _relu(f"{p}/relu_1x1", f"{p}/1x1"),
        _conv(f"{p}/3x3_reduce", bottom, n3r, 1), _relu(f"{p}/relu_3x3_reduce", f"{p}/3x3_reduce"),
        _conv(f"{p}/3x3", f"{p}/3x3_reduce", n3, 3, pad=1), _relu(f"{p}/relu_3x3", f"{p}/3x3"),
        _conv(f"{p}/5x5_reduce", bottom, n5r, 1), _relu(f"{p}/relu_5x5_reduce", f"{p}/5x5_reduce"),
        _conv(f"{p}/5x5", f"{p}/5x5_reduce", n5, 5, pad=2), _relu(f"{p}/relu_5x5", f"{p}/5x5"),
        _pool(f"{p}/pool", bottom, "MAX", 3, 1, pad=1),
        _conv(f"{p}/pool_proj", f"{p}/pool", npool, 1), _relu(f"{p}/relu_pool_proj", f"{p}/pool_proj"),
        _layer(f"{p}/output", "Concat", (f"{p}/1x1", f"{p}/3x3", f"{p}/5x5", f"{p}/pool_proj"),
               (f"{p}/output",)),
    ]
    return layers, f"{p}/output"


def googlenet(batch=10, size=224, width=1, classes=1000):
    w = width
    layers = [
        _input((batch, 3, size, size)),
        _conv("conv1/7x7_s2", "data", 64 // w, 7, stride=2, pad=3), _relu("conv1/relu_7x7", "conv1/7x7_s2"),
        _pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2), _lrn("pool1/norm1", "pool1/3x3_s2"),
        _conv("conv2/3x3_reduce", "pool1/norm1", 64 // w, 1), _relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce"),
        _conv("conv2/3x3", "conv2/3x3_reduce", 192 // w, 3, pad=1), _relu("conv2/relu_3x3", "conv2/3x3"),
        _lrn("conv2/norm2", "conv2/3x3"),
        _pool("pool2/3x3_s2", "conv2/norm2", "MAX", 3, 2),
    ]
    bottom = "pool2/3x3_s2"
    for spec in INCEPTION:
        block, bottom = inception(*spec[:1], bottom, *spec[1:], width=w)
        layers += block
        if spec[0] == "3b":
            layers.append(_pool("pool3/3x3_s2", bottom, "MAX", 3, 2))
            bottom = "pool3/3x3_s2"
        if spec[0] == "4e":
            layers.append(_pool("pool4/3x3_s2", bottom, "MAX", 3, 2))
            bottom = "pool4/3x3_s2"
    final = size // 32  # 7 at 224
    layers += [
        _pool("pool5/7x7_s1", bottom, "AVE", final, 1),
        _layer("pool5/drop_7x7_s1", "Dropout", ("pool5/7x7_s1",), ("pool5/7x7_s1",),
               "dropout_param { dropout_ratio: 0.4 }"),
        _ip("loss3/classifier", "pool5/7x7_s1", classes),
        _layer("prob", "Softmax", ("loss3/classifier",), ("prob",)),
    ]
    return _net("GoogleNet", layers)


# ---------------------------------------------------------------------------
# ResNet (KaimingHe/deep-residual-networks ResNet-50 deploy): conv (no bias) -> BatchNorm -> Scale -> ReLU,
# bottleneck blocks, projection shortcuts (branch1), Eltwise SUM.

def _conv_bn(name, bottom, num, kernel, stride=1, pad=0, relu=True, suffix=None):
    s = suffix or name[3:]  # res2a_branch2a -> 2a_branch2a
    layers = [
        _conv(name, bottom, num, kernel, stride=stride, pad=pad, bias=False, lr=False),
        _layer(f"bn{s}", "BatchNorm", (name,), (name,), "batch_norm_param { use_global_stats: true }"),
        _layer(f"scale{s}", "Scale", (name,), (name,), "scale_param { bias_term: true }"),
    ]
    if relu:
        layers.append(_layer(f"{name}_relu", "ReLU", (name,), (name,)))
    return layers


def bottleneck(stage, bottom, planes, stride=1, project=False, width=1):
    p = f"res{stage}"
    planes //= width
    layers = []
    if project:
        layers += _conv_bn(f"{p}_branch1", bottom, planes * 4, 1, stride=stride, relu=False)
        shortcut = f"{p}_branch1"
    else:
        shortcut = bottom
    layers += _conv_bn(f"{p}_branch2a", bottom, planes, 1, stride=stride)
    layers += _conv_bn(f"{p}_branch2b", f"{p}_branch2a", planes, 3, pad=1)
    layers += _conv_bn(f"{p}_branch2c", f"{p}_branch2b", planes * 4, 1, relu=False)
    layers += [_layer(p, "Eltwise", (shortcut, f"{p}_branch2c"), (p,)), _layer(f"{p}_relu", "ReLU", (p,), (p,))]
    return layers, p


def resnet(batch=1, size=224, width=1, classes=1000, blocks=(("2a", 64, 1, True), ("2b", 64, 1, False),
                                                          ("3a", 128, 2, True), ("3b", 128, 1, False))):
    """A short ResNet-50-style net: conv1 stage, then the given bottleneck blocks, global average pool, fc."""
    layers = [_input((batch, 3, size, size))]
    layers += _conv_bn("conv1", "data", 64 // width, 7, stride=2, pad=3, suffix="_conv1")
    layers.append(_pool("pool1", "conv1", "MAX", 3, 2))
    bottom = "pool1"
    for stage, planes, stride, project in blocks:
        block, bottom = bottleneck(stage, bottom, planes, stride, project, width)
        layers += block
    layers += [_pool("pool5", bottom, "AVE", 0, 0, global_=True), _ip("fc", "pool5", classes),
               _layer("prob", "Softmax", ("fc",), ("prob",))]
    return _net("ResNet", layers)


# ---------------------------------------------------------------------------
# FCN-style (shelhamer/fcn.berkeleyvision.org voc-fcn32s, reduced): padded convs, a score layer,
# a bilinear Deconvolution upsampling (grouped, no bias, lr_mult 0), Crop back to the input, Slice.

def fcn(batch=1, size=20, classes=4):
    return _net("FCN", [
        _input((batch, 3, size, size)),
        _conv("conv1_1", "data", 8, 3, pad=10), _relu("relu1_1", "conv1_1"),
        _conv("conv1_2", "conv1_1", 8, 3, pad=1), _relu("relu1_2", "conv1_2"),
        _pool("pool1", "conv1_2", "MAX", 2, 2),
        _conv("score_fr", "pool1", classes, 1),
        _layer("upscore", "Deconvolution", ("score_fr",), ("upscore",),
               f"param {{ lr_mult: 0 }} convolution_param {{ num_output: {classes} bias_term: false "
               f'kernel_size: 4 stride: 2 group: {classes} weight_filler {{ type: "bilinear" }} }}'),
        _layer("score", "Crop", ("upscore", "data"), ("score",), "crop_param { axis: 2 offset: 9 }"),
        _layer("slice", "Slice", ("score",), ("score_bg", "score_fg"),
               "slice_param { axis: 1 slice_point: 1 }"),
    ])
