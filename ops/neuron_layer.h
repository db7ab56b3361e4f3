// Caffe's NeuronLayer (neuron_layer.hpp): one bottom, one top of the same
// shape, no parameter blobs.  Element-wise layers derive from it and write
// only Forward and Backward.
#pragma once

#include <vector>

#include "layer.h"

namespace caffedata {

template <typename Dtype>
class NeuronLayer : public Layer<Dtype> {
 public:
  using Layer<Dtype>::Layer;
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) override {
    blobs->clear();
    top->assign(1, bottom.at(0));
  }
};

}  // namespace caffedata
