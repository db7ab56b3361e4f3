"""Caffe nets without MXNet: prototxt upgrades, NetState filtering, the blob graph, .caffemodel files.

Nothing here imports mxnet; ``caffedata.Net`` builds on these modules.
"""
