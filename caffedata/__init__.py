"""caffedata: Caffe datasets and layers, first-class in Apache MXNet 1.9."""
