"""Whole Caffe nets: prototxt/caffemodel formats (no mxnet) and ``Net`` (imports mxnet when used)."""
