"""caffedata.net's MXNet-free foundation: upgrades, NetState filtering, the blob graph, .caffemodel files.

Expected values are written by hand from Caffe's rules (shared/reference/caffe-net-and-solver.md);
expected V2 nets are hand-written prototxt compared message to message; expected .caffemodel bytes are
built with protobuf's own message classes.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from caffedata.errors import DatabaseError, SpecError
from caffedata.net.caffemodel import (copy_trained_layers, encode_blob, read_caffemodel, write_caffemodel,
                                      write_caffemodel_hdf5)
from caffedata.net.graph import build_graph
from caffedata.net.netstate import filter_net
from caffedata.net.upgrade import load_net_param, load_solver_param
from caffedata.proto import BlobProto, LayerParameter, NetParameter, SolverParameter, V1LayerParameter
from caffedata.spec import Phase


def parse(text):
    return text_format.Parse(text, NetParameter())


def names(net):
    return [layer.name for layer in net.layer]


def graph_of(text, phase="TEST", **kw):
    return build_graph(filter_net(load_net_param(text), phase, **kw))


# ----------------------------------------------------------------------------------------------
# NetState rules

RULES_NET = """
name: "rules"
layer { name: "train_only" type: "Input" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "Input" top: "b" include { phase: TEST } }
layer { name: "always" type: "Input" top: "c" }
layer { name: "min2" type: "Input" top: "d" include { min_level: 2 } }
layer { name: "max1" type: "Input" top: "e" include { max_level: 1 } }
layer { name: "stages_ab" type: "Input" top: "f" include { stage: "a" stage: "b" } }
layer { name: "not_deploy" type: "Input" top: "g" include { not_stage: "deploy" } }
layer { name: "or_rules" type: "Input" top: "h" include { phase: TRAIN } include { stage: "x" } }
layer { name: "and_rule" type: "Input" top: "i" include { phase: TEST stage: "x" min_level: 1 } }
layer { name: "excl_train" type: "Input" top: "j" exclude { phase: TRAIN } }
layer { name: "excl_x_or_lvl3" type: "Input" top: "k" exclude { stage: "x" } exclude { min_level: 3 } }
"""


@pytest.mark.parametrize("phase, stages, level, expected", [
    ("TRAIN", (), 0, ["train_only", "always", "max1", "not_deploy", "or_rules", "excl_x_or_lvl3"]),
    ("TEST", (), 0, ["test_only", "always", "max1", "not_deploy", "excl_train", "excl_x_or_lvl3"]),
    ("TEST", ("deploy",), 2, ["test_only", "always", "min2", "excl_train", "excl_x_or_lvl3"]),
    ("TEST", ("a",), 0, ["test_only", "always", "max1", "not_deploy", "excl_train", "excl_x_or_lvl3"]),
    ("TEST", ("b", "a"), 0, ["test_only", "always", "max1", "stages_ab", "not_deploy", "excl_train",
                             "excl_x_or_lvl3"]),
    ("TEST", ("x",), 1, ["test_only", "always", "max1", "not_deploy", "or_rules", "and_rule", "excl_train"]),
    ("TEST", ("x",), 0, ["test_only", "always", "max1", "not_deploy", "or_rules", "excl_train"]),
    ("TEST", (), 3, ["test_only", "always", "min2", "not_deploy", "excl_train"]),
])
def test_netstate_rules(phase, stages, level, expected):
    net = filter_net(load_net_param(RULES_NET), phase, stages, level)
    assert names(net) == expected
    assert net.state.phase == (0 if phase == "TRAIN" else 1)
    assert net.state.level == level


def test_phase_accepts_caffedata_phase_and_ints():
    net = load_net_param(RULES_NET)
    train = names(filter_net(net, "TRAIN"))
    assert names(filter_net(net, Phase.TRAIN)) == train
    assert names(filter_net(net, 0)) == train
    assert names(filter_net(net, "train")) == train
    assert names(filter_net(net, Phase.TEST)) == names(filter_net(net, "TEST"))
    with pytest.raises(SpecError, match="phase must be 'TRAIN' or 'TEST'"):
        filter_net(net, "VAL")
    with pytest.raises(SpecError, match="phase"):
        filter_net(net, 2)


def test_net_state_from_file_is_the_base():
    # Net(file, phase, level, stages): phase and level overwritten, stages appended to the file's.
    text = """
    state { phase: TRAIN level: 5 stage: "file" }
    layer { name: "needs_file_and_cli" type: "Input" top: "a" include { stage: "file" stage: "cli" } }
    layer { name: "needs_level5" type: "Input" top: "b" include { min_level: 5 } }
    layer { name: "test_phase" type: "Input" top: "c" include { phase: TEST } }
    """
    net = filter_net(load_net_param(text), "TEST", stages=["cli"], level=0)
    assert names(net) == ["needs_file_and_cli", "test_phase"]
    assert list(net.state.stage) == ["file", "cli"]
    assert net.state.level == 0 and net.state.phase == 1


def test_include_and_exclude_together_is_refused():
    text = 'layer { name: "both" type: "Input" top: "a" include { phase: TRAIN } exclude { phase: TEST } }'
    with pytest.raises(SpecError, match="layer 'both': Specify either include rules or exclude rules; not both"):
        filter_net(load_net_param(text), "TRAIN")


# ----------------------------------------------------------------------------------------------
# Upgrades

V0_NET = """
name: "v0net"
input: "data"
input_dim: 10 input_dim: 3 input_dim: 32 input_dim: 32
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 16 kernelsize: 5 stride: 1 biasterm: false
          weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.25 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 bias_filler { type: "constant" value: 0.5 } }
         bottom: "norm1" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_EXPECTED = """
name: "v0net"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 16 bias_term: false pad: 2 kernel_size: 5 stride: 1
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.25 } }
layer { name: "drop" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
        inner_product_param { num_output: 10 bias_filler { type: "constant" value: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_v0_upgrade_folds_padding_and_matches_hand_written_v2():
    assert load_net_param(V0_NET) == parse(V0_EXPECTED)


def test_v0_data_layer_transform_fields_and_unknown_type():
    text = """layers { layer { name: "d" type: "data" source: "db" batchsize: 4 meanfile: "m.binaryproto"
              cropsize: 7 mirror: true scale: 0.5 rand_skip: 3 } top: "data" top: "label" }"""
    expected = """layer { name: "d" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.5 mirror: true crop_size: 7 mean_file: "m.binaryproto" }
        data_param { source: "db" batch_size: 4 rand_skip: 3 } }"""
    assert load_net_param(text) == parse(expected)
    with pytest.raises(SpecError, match="Unknown layer name: warp"):
        load_net_param('layers { layer { name: "w" type: "warp" } }')
    with pytest.raises(SpecError, match="Padding layer input to non-convolutional"):
        load_net_param('input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }'
                       'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }')


V1_NET = """
name: "v1net"
layers { name: "mnist" type: DATA top: "data" top: "label"
         data_param { source: "train_lmdb" backend: LMDB batch_size: 64 scale: 0.00390625 mirror: true }
         include: { phase: TRAIN } }
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layers { name: "ip_a" type: INNER_PRODUCT bottom: "conv1" top: "ip_a" param: "shared_w" param: ""
         blob_share_mode: PERMISSIVE inner_product_param { num_output: 10 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip_a" bottom: "label" top: "loss" loss_weight: 2 }
layers { name: "elt" type: ELTWISE bottom: "ip_a" bottom: "ip_a" top: "elt" eltwise_param { operation: MAX } }
"""

V1_EXPECTED = """
name: "v1net"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 mirror: true }
        data_param { source: "train_lmdb" backend: LMDB batch_size: 64 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "conv1" top: "ip_a"
        param { name: "shared_w" share_mode: PERMISSIVE } param { name: "" }
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip_a" bottom: "label" top: "loss" loss_weight: 2 }
layer { name: "elt" type: "Eltwise" bottom: "ip_a" bottom: "ip_a" top: "elt" eltwise_param { operation: MAX } }
"""


def test_v1_upgrade_matches_hand_written_v2(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text(V1_NET)
    assert load_net_param(str(path)) == parse(V1_EXPECTED)
    assert load_net_param(path) == parse(V1_EXPECTED)  # os.PathLike too


def test_v1_every_enum_type_name():
    enum = V1LayerParameter.LayerType
    text = "".join(f'layers {{ name: "l{v}" type: {enum.Name(v)} }}\n' for v in enum.values())
    types = {layer.name: layer.type for layer in load_net_param(text).layer}
    assert types["l39"] == "Deconvolution" and types["l21"] == "SoftmaxWithLoss" and types["l35"] == "AbsVal"
    assert types["l23"] == "TanH" and types["l11"] == "Im2col" and types["l0"] == ""
    assert types["l27"] == "SigmoidCrossEntropyLoss" and types["l29"] == "MemoryData"
    assert len(types) == 40


def test_v1_and_v2_layers_together_refused():
    with pytest.raises(SpecError, match="Refusing to upgrade inconsistent NetParameter input"):
        load_net_param('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')


@pytest.mark.parametrize("legacy, shape", [
    ('input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 7 input: "im_info" '
     'input_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1', None),
    ('input: "data" input_shape { dim: 1 dim: 3 dim: 5 dim: 7 } input: "im_info" input_shape { dim: 1 dim: 3 }',
     None),
])
def test_legacy_inputs_become_an_input_layer_first(legacy, shape):
    net = load_net_param(legacy + ' layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }')
    assert names(net) == ["input", "relu"]
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["data", "im_info"]
    assert [tuple(s.dim) for s in net.layer[0].input_param.shape][0] == (1, 3, 5, 7)
    assert not len(net.input) and not len(net.input_dim) and not len(net.input_shape)
    graph = build_graph(filter_net(net))
    assert graph.inputs == ["data", "im_info"]
    assert graph.input_shapes["data"] == (1, 3, 5, 7)


def test_build_graph_refuses_unupgraded_nets():
    with pytest.raises(SpecError, match="legacy input fields \\(data\\); read it with"):
        build_graph(parse('input: "data" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1'))
    with pytest.raises(SpecError, match="needs a V2 net"):
        build_graph(parse('layers { name: "r" type: RELU }'))


def test_legacy_input_names_without_shapes_are_just_dropped():
    net = load_net_param('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert names(net) == ["r"] and not len(net.input)
    with pytest.raises(SpecError, match="2 legacy inputs need 8 input_dim values"):
        load_net_param('input: "a" input: "b" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1')


def test_batchnorm_three_param_upgrade():
    text = """
    layer { name: "bn3" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } param { lr_mult: 1 }
            param { lr_mult: 1 decay_mult: 3 name: "keep" } }
    layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } param { lr_mult: 1 } }
    """
    net = load_net_param(text)
    assert [(p.lr_mult, p.decay_mult, p.name) for p in net.layer[0].param] == [(0, 0, ""), (0, 0, ""),
                                                                                (0, 0, "keep")]
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in net.layer[1].param] == [(1, False), (1, False)]


def test_final_master_schema_fields_parse():
    text = """
    layer { name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 round_mode: FLOOR } }
    layer { name: "c" type: "Clip" clip_param { min: -1 max: 2 } }
    layer { name: "s" type: "Swish" swish_param { beta: 1.5 } }
    layer { name: "i" type: "InfogainLoss" infogain_loss_param { source: "h.binaryproto" axis: 2 } }
    """
    net = load_net_param(text)
    assert net.layer[0].pooling_param.round_mode == 1
    assert (net.layer[1].clip_param.min, net.layer[1].clip_param.max) == (-1, 2)
    assert net.layer[2].swish_param.beta == 1.5 and net.layer[3].infogain_loss_param.axis == 2
    assert LayerParameter().infogain_loss_param.axis == 1
    assert abs(SolverParameter().rms_decay - 0.99) < 1e-7


def test_malformed_prototxt_names_file_and_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    with pytest.raises(SpecError) as info:
        load_net_param(str(path))
    message = str(info.value)
    assert f"{path}:4:" in message and "tpye" in message and 'line 4: tpye: "ReLU"' in message
    with pytest.raises(SpecError, match=r"<net prototxt text>:1:.*no field named"):
        load_net_param('layer { nme: "a" }')
    with pytest.raises(SpecError, match="file not found"):
        load_net_param(str(tmp_path / "missing.prototxt"))
    binary = tmp_path / "weights.caffemodel"
    binary.write_bytes(b"\x0a\x02\xff\xfe\x80")
    with pytest.raises(SpecError, match="not a text net prototxt"):
        load_net_param(str(binary))


def test_solver_upgrades(tmp_path):
    path = tmp_path / "lenet_solver.prototxt"
    path.write_text('net: "n.prototxt" base_lr: 0.01 solver_type: NESTEROV\n')
    solver = load_solver_param(str(path))
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver.snapshot_prefix == str(tmp_path / "lenet_solver")
    for value, name in enumerate(["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]):
        enum_name = SolverParameter.SolverType.Name(value)
        assert load_solver_param(f"solver_type: {enum_name}").type == name
    snapdir = tmp_path / "snapdir"
    snapdir.mkdir()
    path.write_text(f'type: "Adam" snapshot_prefix: "{snapdir}"\n')
    assert load_solver_param(str(path)).snapshot_prefix == str(snapdir / "lenet_solver")
    path.write_text('snapshot_prefix: "models/x"\n')
    assert load_solver_param(str(path)).snapshot_prefix == "models/x"
    assert not load_solver_param("base_lr: 0.1").HasField("snapshot_prefix")  # text: no file name
    with pytest.raises(SpecError, match="cannot be both specified"):
        load_solver_param('type: "SGD" solver_type: ADAM')
    path.write_text("base_lr: 0.1\nmomentum 0.9\n")
    with pytest.raises(SpecError, match=f"{path}:2:"):
        load_solver_param(str(path))


# ----------------------------------------------------------------------------------------------
# The graph

INPLACE_NET = """
name: "inplace"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }
"""


def test_in_place_chain_tensor_ids():
    graph = graph_of(INPLACE_NET, "TRAIN")
    by = {node.name: node for node in graph.layers}
    assert [node.name for node in graph.layers] == ["data", "conv1", "bn1", "scale1", "relu1", "ip", "loss", "acc"]
    assert by["conv1"].tops == ["conv1"] and by["conv1"].in_place == [False]
    assert by["bn1"].bottoms == ["conv1"] and by["bn1"].tops == ["conv1@1"] and by["bn1"].in_place == [True]
    assert by["scale1"].bottoms == ["conv1@1"] and by["scale1"].tops == ["conv1@2"]
    assert by["relu1"].bottoms == ["conv1@2"] and by["relu1"].tops == ["conv1@3"]
    assert by["ip"].bottoms == ["conv1@3"]
    assert graph.blob_ids["conv1"] == "conv1@3"
    # ip and label are each read twice: Caffe's splits appear in net.blobs, same tensors.
    assert by["loss"].bottoms == ["ip", "label"] and by["acc"].bottoms == ["ip", "label"]
    assert graph.blob_names == ["data", "label", "label_data_1_split_0", "label_data_1_split_1", "conv1", "ip",
                                "ip_ip_0_split_0", "ip_ip_0_split_1", "loss", "accuracy"]
    assert graph.blob_ids["ip_ip_0_split_1"] == "ip" and graph.blob_ids["label_data_1_split_0"] == "label"
    assert graph.outputs == ["accuracy", "loss"]
    assert graph.inputs == ["data", "label"] and graph.input_shapes == {"data": (2, 3, 8, 8), "label": (2,)}
    assert [layer.type for layer in graph.runtime_layers].count("Split") == 2


def test_loss_weights_and_backward():
    graph = graph_of(INPLACE_NET, "TRAIN")
    by = {node.name: node for node in graph.layers}
    assert by["loss"].loss_weights == [1.0] and by["acc"].loss_weights == [0.0]
    assert by["ip"].loss_weights == [0.0]
    assert graph.loss_terms == [("loss", 1.0)]
    assert [by[n].needs_backward for n in ["data", "conv1", "bn1", "scale1", "relu1", "ip", "loss", "acc"]] == \
        [False, True, True, True, True, True, True, False]
    assert by["loss"].bottom_needs_backward == [True, False]  # labels come from Input: no gradient
    assert by["conv1"].bottom_needs_backward == [False]
    assert by["acc"].bottom_needs_backward == [False, False]
    assert by["conv1"].param_needs_backward == [True, True]


def test_propagate_down_and_lr_mult_zero_prune_backward():
    text = """
    layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "frozen" type: "InnerProduct" bottom: "x" top: "f" param { lr_mult: 0 } param { lr_mult: 0 }
            inner_product_param { num_output: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "f" top: "f" }
    layer { name: "stop" type: "InnerProduct" bottom: "f" top: "g" inner_product_param { num_output: 3 } }
    layer { name: "cut" type: "InnerProduct" bottom: "y" top: "h" inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "g" bottom: "h" top: "loss" propagate_down: true
            propagate_down: false }
    """
    graph = graph_of(text)
    by = {node.name: node for node in graph.layers}
    # frozen: no param gradient, its input needs none -> no backward; relu sees a blob that needs none.
    assert not by["frozen"].needs_backward and by["frozen"].param_needs_backward == [False, False]
    assert not by["relu"].needs_backward
    assert by["stop"].needs_backward and by["stop"].bottom_needs_backward == [False]
    # propagate_down false on h: "cut" only feeds a skipped blob, so Caffe prunes it.
    assert by["loss"].bottom_needs_backward == [True, False]
    assert not by["cut"].needs_backward
    forced = graph_of(text.replace('layer { name: "in"', 'force_backward: true layer { name: "in"'))
    fb = {node.name: node for node in forced.layers}
    assert all(node.needs_backward for node in forced.layers)
    assert fb["loss"].bottom_needs_backward == [True, True]  # EuclideanLoss allows both
    assert fb["frozen"].param_needs_backward == [True, True] and fb["frozen"].bottom_needs_backward == [True]


def test_force_backward_never_reaches_labels():
    text = """force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }"""
    node = graph_of(text).layer("loss")
    assert node.needs_backward and node.bottom_needs_backward == [True, False]


def test_outputs_sorted_bytewise_and_consumed_loss_top():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "bn" type: "Power" bottom: "x" top: "bnout" }
    layer { name: "l2" type: "Power" bottom: "x" top: "l2" }
    layer { name: "Z" type: "Power" bottom: "x" top: "Zeta" }
    layer { name: "L" type: "EuclideanLoss" bottom: "bnout" bottom: "l2" top: "l" loss_weight: 2 }
    layer { name: "use" type: "Power" bottom: "l" top: "twice" }
    """
    graph = graph_of(text)
    # 'l' is a loss (weight 2) and is read: Caffe reports it under its split name.
    assert graph.outputs == ["Zeta", "l_L_0_split_0", "twice"]
    assert graph.blob_ids["l_L_0_split_0"] == "l"
    # Trap 5: the forward loss counts the split's 2 and the re-added default 1; the gradient uses 2.
    assert sorted(graph.loss_terms) == [("l", 1.0), ("l", 2.0)]
    assert graph.layer("L").loss_weights == [2.0]


def test_anonymous_loss_top():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "e1" type: "EuclideanLoss" bottom: "a" bottom: "b" }
    layer { name: "e2" type: "EuclideanLoss" bottom: "a" bottom: "b" loss_weight: 0.5 }
    """
    graph = graph_of(text)
    assert graph.layer("e1").tops == ["(automatic)"] and graph.layer("e2").tops == ["(automatic)@1"]
    assert graph.layer("e1").loss_weights == [1.0] and graph.layer("e2").loss_weights == [0.5]
    assert graph.outputs == []
    assert graph.blob_names.count("(automatic)") == 1 and graph.blob_ids["(automatic)"] == "(automatic)@1"


def test_two_top_loss_needs_explicit_weights():
    base = """
    layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" %s }
    """
    with pytest.raises(SpecError, match="layer 'loss' .*loss_weight must be unspecified or specified once per "
                                        "top blob.*loss_weight: 1 loss_weight: 0"):
        graph_of(base % "")
    graph = graph_of(base % "loss_weight: 1 loss_weight: 0")
    assert graph.layer("loss").loss_weights == [1.0, 0.0]
    assert graph.outputs == ["loss", "prob"]


@pytest.mark.parametrize("body, message", [
    ('layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }',
     r"Unknown bottom blob 'nope' \(layer 'r', bottom index 0\)"),
    ('layer { name: "a" type: "Power" bottom: "x" top: "y" } layer { name: "b" type: "Power" bottom: "x" top: "y" }',
     r"Top blob 'y' produced by multiple sources. \(layer 'b' \(Power\), top index 0\)"),
    # in place only at the same index
    ('layer { name: "s" type: "Slice" bottom: "x" top: "p" top: "x" }',
     r"Top blob 'x' produced by multiple sources. \(layer 's' \(Slice\), top index 1\)"),
    # in place after a fan-out (trap 3)
    ('layer { name: "a" type: "Power" bottom: "x" top: "y" } layer { name: "r" type: "ReLU" bottom: "x" top: "x" }',
     r"Top blob 'x' produced by multiple sources. \(layer 'r' \(ReLU\)"),
    ('layer { name: "r" type: "ReLU" bottom: "x" top: "r" propagate_down: true propagate_down: false }',
     r"layer 'r' \(ReLU\): propagate_down param must be specified either 0 or bottom_size times"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param {} param {} param {} }',
     "Too many params specified for layer ip"),
    ('layer { name: "r" type: "ReLU" bottom: "x" top: "y" } layer { name: "r" type: "ReLU" bottom: "y" top: "z" }',
     "layer name 'r' is used by layers #1 and #2"),
    ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } }',
     "Cannot configure batch normalization statistics as layer parameters"),
])
def test_wiring_errors(body, message):
    text = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }\n' + body
    with pytest.raises(SpecError, match=message):
        graph_of(text)


def test_param_sharing():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 3 } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" lr_mult: 3 }
            param { name: "bias" decay_mult: 0 } inner_product_param { num_output: 3 } }
    layer { name: "ip_c" type: "InnerProduct" bottom: "b" top: "fc" param { name: "" }
            inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "fa" bottom: "fb" top: "loss" }
    """
    graph = graph_of(text)
    assert graph.param_owners[("ip_b", 0)] == ("ip_a", 0) and graph.param_owners[("ip_b", 1)] == ("ip_a", 1)
    assert graph.param_owners[("ip_a", 0)] == ("ip_a", 0)
    assert graph.param_owners[("ip_c", 0)] == ("ip_c", 0) and graph.param_owners[("ip_c", 1)] == ("ip_c", 1)
    assert graph.learnable_params == [("ip_a", 0), ("ip_a", 1), ("ip_c", 0), ("ip_c", 1)]
    # The owner set neither multiplier, so the sharer's explicit values become the learnable's.
    assert graph.param_mults[("ip_a", 0)] == (3.0, 1.0) and graph.param_mults[("ip_a", 1)] == (1.0, 0.0)
    clash = text.replace('param { name: "w" }', 'param { name: "w" lr_mult: 2 }')
    with pytest.raises(SpecError, match="Shared param 'w' has mismatched lr_mult"):
        graph_of(clash)


# ----------------------------------------------------------------------------------------------
# .caffemodel files

def _weights(seed=0):
    rng = np.random.RandomState(seed)
    return {"conv1": [rng.randn(4, 3, 3, 3), rng.randn(4)],
            "bn1": [rng.randn(4), rng.rand(4), np.array([3.0])],
            "scale1": [rng.randn(4), rng.randn(4)],
            "ip": [rng.randn(3, 144), rng.randn(3)]}


def test_caffemodel_round_trip_and_byte_identity(tmp_path):
    net = filter_net(load_net_param(INPLACE_NET), "TRAIN")
    params = _weights()
    first = tmp_path / "a.caffemodel"
    write_caffemodel(first, net, params)
    layers = read_caffemodel(first)
    assert [(l.name, l.type) for l in layers] == [
        ("data", "Input"), ("label_data_1_split", "Split"), ("conv1", "Convolution"), ("bn1", "BatchNorm"),
        ("scale1", "Scale"), ("relu1", "ReLU"), ("ip", "InnerProduct"), ("ip_ip_0_split", "Split"),
        ("loss", "SoftmaxWithLoss"), ("acc", "Accuracy")]
    by = {l.name: l for l in layers}
    for name, arrays in params.items():
        assert len(by[name].blobs) == len(arrays)
        for got, want in zip(by[name].blobs, arrays):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want.astype(np.float32))
    second = tmp_path / "b.caffemodel"
    write_caffemodel(second, net, {l.name: l.blobs for l in layers if l.blobs})
    assert first.read_bytes() == second.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.caffemodel", "b.caffemodel"]  # no temp files left


def test_caffemodel_bytes_are_what_net_toproto_writes(tmp_path):
    # Build by hand, with protobuf's classes, the message Caffe's Net::ToProto gives for this net.
    net = filter_net(load_net_param(INPLACE_NET), "TRAIN")
    params = _weights(1)
    expected = NetParameter(name="inplace")

    def add(text, blobs=()):
        layer = expected.layer.add()
        text_format.Parse(text, layer)
        for array in blobs:
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.astype(np.float32).ravel().tolist())
        layer.phase = 0  # TRAIN, set by Net::Init on every layer

    add('name: "data" type: "Input" top: "data" top: "label" '
        'input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } }')
    add('name: "label_data_1_split" type: "Split" bottom: "label" top: "label_data_1_split_0" '
        'top: "label_data_1_split_1"')
    add('name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        'convolution_param { num_output: 4 kernel_size: 3 }', params["conv1"])
    add('name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" '
        'param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }', params["bn1"])
    add('name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true }',
        params["scale1"])
    add('name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1"')
    add('name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 3 }',
        params["ip"])
    add('name: "ip_ip_0_split" type: "Split" bottom: "ip" top: "ip_ip_0_split_0" top: "ip_ip_0_split_1"')
    add('name: "loss" type: "SoftmaxWithLoss" bottom: "ip_ip_0_split_0" bottom: "label_data_1_split_0" '
        'top: "loss" loss_weight: 1')
    add('name: "acc" type: "Accuracy" bottom: "ip_ip_0_split_1" bottom: "label_data_1_split_1" '
        'top: "accuracy"')
    path = tmp_path / "x.caffemodel"
    write_caffemodel(path, net, params)
    assert path.read_bytes() == expected.SerializeToString()


def test_encode_blob_matches_protobuf():
    for array in [np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, np.zeros((0, 4)), np.array(7.0),
                  np.ones((300, 2, 1))]:
        blob = BlobProto()
        if array.ndim:
            blob.shape.dim.extend(array.shape)
        blob.data.extend(np.float32(array).ravel().tolist())
        assert encode_blob(array) == blob.SerializeToString()
    blob = BlobProto()
    blob.shape.dim.extend([2])
    blob.data.extend([1.0, 2.0])
    blob.diff.extend([0.5, -0.5])
    assert encode_blob(np.array([1.0, 2.0]), np.array([0.5, -0.5])) == blob.SerializeToString()


def test_write_diff_and_missing_params(tmp_path):
    net = filter_net(load_net_param(INPLACE_NET), "TRAIN")
    params = _weights()
    path = tmp_path / "d.caffemodel"
    write_caffemodel(path, net, params, write_diff=True, diffs={"ip": [np.ones((3, 144)), np.full(3, 2.0)]})
    message = NetParameter.FromString(path.read_bytes())
    ip = [l for l in message.layer if l.name == "ip"][0]
    assert list(ip.blobs[1].diff) == [2.0, 2.0, 2.0]
    conv = [l for l in message.layer if l.name == "conv1"][0]
    assert list(conv.blobs[1].diff) == [0.0] * 4
    with pytest.raises(SpecError, match="params for layers the net does not have: nope"):
        write_caffemodel(path, net, {"nope": [np.zeros(1)]})
    with pytest.raises(DatabaseError, match="cannot write"):
        write_caffemodel(tmp_path / "no_dir" / "x.caffemodel", net, params)


def _legacy_blob(values, shape4, double=False):
    blob = BlobProto(num=shape4[0], channels=shape4[1], height=shape4[2], width=shape4[3])
    (blob.double_data if double else blob.data).extend(np.asarray(values, np.float64).ravel().tolist())
    return blob


def test_hand_built_v1_caffemodel_with_legacy_shapes(tmp_path):
    rng = np.random.RandomState(3)
    w_conv, b_conv = rng.randn(2, 1, 3, 3), rng.randn(2)
    w_ip, b_ip = rng.randn(5, 8), rng.randn(5)
    message = NetParameter(name="old")
    conv = message.layers.add(name="conv1", type=V1LayerParameter.CONVOLUTION)
    conv.bottom.append("data")
    conv.top.append("conv1")
    conv.blobs.extend([_legacy_blob(w_conv, (2, 1, 3, 3)), _legacy_blob(b_conv, (1, 1, 1, 2))])
    message.layers.add(name="relu1", type=V1LayerParameter.RELU)
    ip = message.layers.add(name="ip1", type=V1LayerParameter.INNER_PRODUCT)
    ip.blobs.extend([_legacy_blob(w_ip, (1, 1, 5, 8), double=True), _legacy_blob(b_ip, (1, 1, 1, 5))])
    message.layers.add(name="gone", type=V1LayerParameter.INNER_PRODUCT).blobs.extend(
        [_legacy_blob([1.0], (1, 1, 1, 1))])
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(message.SerializeToString())

    layers = read_caffemodel(path)
    assert [(l.name, l.type) for l in layers] == [("conv1", "Convolution"), ("relu1", "ReLU"),
                                                 ("ip1", "InnerProduct"), ("gone", "InnerProduct")]
    assert [b.shape for b in layers[2].blobs] == [(1, 1, 5, 8), (1, 1, 1, 5)]  # Blob::FromProto's 4-D shape
    np.testing.assert_array_equal(layers[2].blobs[0].reshape(5, 8), w_ip.astype(np.float32))

    targets = {"data": [], "conv1": [(2, 1, 3, 3), (2,)], "relu1": [], "ip1": [(5, 8), (5,)],
               "fresh": [(4,)]}
    weights, notes = copy_trained_layers(targets, layers, str(path))
    assert [w.shape for w in weights["ip1"]] == [(5, 8), (5,)]
    np.testing.assert_array_equal(weights["ip1"][0], w_ip.astype(np.float32))
    np.testing.assert_array_equal(weights["conv1"][1], b_conv.astype(np.float32))
    assert weights["relu1"] == [] and "fresh" not in weights
    assert notes == ["Ignoring source layer gone", f"Layer fresh has no weights in {path}; it keeps its "
                                                   f"initial values"]

    with pytest.raises(SpecError, match=r"Cannot copy param 0 weights from layer 'ip1'; shape mismatch.  "
                                        r"Source param shape is 1 1 5 8 \(40\); target param shape is 8 5 \(40\)"):
        copy_trained_layers({"ip1": [(8, 5), (5,)]}, layers)
    with pytest.raises(SpecError, match="Incompatible number of blobs for layer ip1"):
        copy_trained_layers({"ip1": [(5, 8)]}, layers)
    with pytest.raises(SpecError, match="Incompatible number of blobs for layer relu1"):
        copy_trained_layers({"relu1": [(3,)]}, layers)
    # Legacy leniency: right-aligned, padded with 1s on the left (a (1, 2) target takes a 1x1x1x2 bias),
    # but a target with more than 4 axes never matches a legacy shape.
    lenient, _ = copy_trained_layers({"conv1": [(2, 1, 3, 3), (1, 2)]}, layers)
    assert lenient["conv1"][1].shape == (1, 2)
    with pytest.raises(SpecError, match="Cannot copy param 0 weights from layer 'conv1'; shape mismatch"):
        copy_trained_layers({"conv1": [(1, 2, 1, 3, 3), (2,)]}, layers)


def test_modern_shapes_must_match_exactly(tmp_path):
    net = filter_net(load_net_param(INPLACE_NET), "TRAIN")
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, net, _weights())
    layers = read_caffemodel(path)
    targets = {"conv1": [(4, 3, 3, 3), (4,)], "bn1": [(4,), (4,), (1,)], "scale1": [(4,), (4,)],
               "ip": [(1, 3, 144), (3,)]}
    with pytest.raises(SpecError, match="Cannot copy param 0 weights from layer 'ip'; shape mismatch"):
        copy_trained_layers(targets, layers)


def test_bad_caffemodel_files(tmp_path):
    net = filter_net(load_net_param(INPLACE_NET), "TRAIN")
    good = tmp_path / "good.caffemodel"
    write_caffemodel(good, net, _weights())
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(raw[:len(raw) - 100])
    with pytest.raises(SpecError, match="truncated"):
        read_caffemodel(truncated)
    text = tmp_path / "deploy.prototxt"
    text.write_text(INPLACE_NET)
    with pytest.raises(SpecError, match="not a binary .caffemodel|holds no layers"):
        read_caffemodel(text)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(SpecError, match="holds no layers"):
        read_caffemodel(empty)
    with pytest.raises(DatabaseError, match="cannot read the weights file"):
        read_caffemodel(tmp_path / "missing.caffemodel")
    short = NetParameter()
    short.layer.add(name="ip").blobs.add().shape.dim.extend([2, 3])
    short.layer[0].blobs[0].data.extend([1.0, 2.0])
    bad = tmp_path / "short.caffemodel"
    bad.write_bytes(short.SerializeToString())
    with pytest.raises(SpecError, match="layer 'ip' blob 0: blob of shape \\(2, 3\\) must hold 6 values"):
        read_caffemodel(bad)


def test_net_modules_do_not_import_mxnet():
    # Load caffedata.net without running caffedata/__init__ (which, before the package split, imports
    # mxnet): the net modules themselves must not pull mxnet in.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('caffedata'); pkg.__path__ = [{os.path.join(root, 'caffedata')!r}]\n"
        "sys.modules['caffedata'] = pkg\n"
        "import caffedata.net, caffedata.net.upgrade, caffedata.net.netstate, caffedata.net.graph\n"
        "import caffedata.net.caffemodel\n"
        "assert 'mxnet' not in sys.modules, 'mxnet was imported'\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


SHARED_NET = """
name: "shared"
layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 3 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" } param { name: "own" }
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fa" bottom: "fb" top: "loss" }
"""


def test_hdf5_weights_write_read_and_sharing(tmp_path):
    import h5py
    net = filter_net(load_net_param(SHARED_NET))
    rng = np.random.RandomState(5)
    w, b_a, b_b = rng.randn(3, 4), rng.randn(3), rng.randn(3)
    params = {"ip_a": [w, b_a], "ip_b": [w, b_b]}
    path = tmp_path / "s.caffemodel.h5"
    write_caffemodel_hdf5(path, net, params)
    with h5py.File(path, "r") as f:  # Net::ToHDF5's layout: every layer, datasets only for owners
        assert sorted(f["data"]) == ["in", "ip_a", "ip_b", "loss"]
        assert sorted(f["data/ip_a"]) == ["0", "1"] and sorted(f["data/ip_b"]) == ["1"]
        np.testing.assert_array_equal(f["data/ip_b/1"][()], b_b.astype(np.float32))
    layers = read_caffemodel(path)
    assert [(l.name, l.source_format) for l in layers] == [("in", "hdf5"), ("ip_a", "hdf5"), ("ip_b", "hdf5"),
                                                          ("loss", "hdf5")]
    assert layers[2].blobs[0] is None
    targets = {"in": [], "ip_a": [(3, 4), (3,)], "ip_b": [(3, 4), (3,)], "loss": []}
    weights, notes = copy_trained_layers(targets, layers, shared={("ip_b", 0)})
    assert notes == [] and weights["ip_b"][0] is None
    np.testing.assert_array_equal(weights["ip_a"][0], w.astype(np.float32))
    np.testing.assert_array_equal(weights["ip_b"][1], b_b.astype(np.float32))
    with pytest.raises(SpecError, match="Incompatible number of blobs for layer ip_b"):
        copy_trained_layers(targets, layers)  # ip_b's blob 0 is missing and not shared
    with pytest.raises(SpecError, match="Cannot copy param 1 weights from layer 'ip_a'; shape mismatch"):
        copy_trained_layers({"ip_a": [(3, 4), (1, 3)]}, layers)  # HDF5: no legacy leniency


def test_hdf5_weights_written_by_hand(tmp_path):
    import h5py
    path = tmp_path / "hand.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/conv/0", data=np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
        f.create_dataset("data/conv/1", data=np.array([1.5, -2.0], dtype=np.float64))
        f.create_group("data/relu")
    layers = read_caffemodel(path)
    assert [(l.name, [b.shape for b in l.blobs]) for l in layers] == [("conv", [(2, 3, 2, 2), (2,)]),
                                                                     ("relu", [])]
    assert layers[0].blobs[1].dtype == np.float32 and list(layers[0].blobs[1]) == [1.5, -2.0]
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(SpecError, match="without a 'data' group"):
        read_caffemodel(bad)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[:600])
    with pytest.raises(SpecError, match="truncated or damaged"):
        read_caffemodel(truncated)
