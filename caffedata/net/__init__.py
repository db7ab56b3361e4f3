"""Caffe nets without MXNet: prototxt upgrades, NetState filtering, the blob graph, .caffemodel files.

Nothing here imports mxnet; ``caffedata.Net`` builds on these modules.
"""
from caffedata.net.caffemodel import CaffeModelLayer, copy_trained_layers, read_caffemodel, write_caffemodel
from caffedata.net.graph import LayerNode, NetGraph, build_graph
from caffedata.net.netstate import filter_net
from caffedata.net.upgrade import load_net_param, load_solver_param, upgrade_net_param

__all__ = ["load_net_param", "load_solver_param", "upgrade_net_param", "filter_net", "build_graph", "NetGraph",
           "LayerNode", "read_caffemodel", "write_caffemodel", "copy_trained_layers", "CaffeModelLayer"]
