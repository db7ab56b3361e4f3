// Caffe's LossLayer (loss_layer.hpp): bottoms (data, label) sharing their
// first dimension, a scalar top 0 whose diff holds the loss weight in
// Backward, labels refused as gradient targets.  Also the one normalisation
// rule every loss uses (LossLayer::GetNormalizer of Caffe).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "layer.h"

namespace caffedata {

// loss_param { normalization } (FULL = 0, VALID = 1, BATCH_SIZE = 2, NONE = 3).
enum class Normalization { FULL, VALID, BATCH_SIZE, NONE };

// loss_param's normalization; else the legacy `normalize` (true -> VALID,
// false -> BATCH_SIZE); else the layer's own default (VALID for
// SoftmaxWithLoss as the proto says, BATCH_SIZE for SigmoidCrossEntropyLoss).
inline Normalization read_normalization(const ProtoNode& layer, Normalization dflt) {
  const ProtoNode& lp = layer.child("loss_param");
  if (lp.has("normalization")) {
    const std::string n = lp.get_enum("normalization", "VALID");
    if (n == "FULL" || n == "0") return Normalization::FULL;
    if (n == "VALID" || n == "1") return Normalization::VALID;
    if (n == "BATCH_SIZE" || n == "2") return Normalization::BATCH_SIZE;
    if (n == "NONE" || n == "3") return Normalization::NONE;
    throw LayerError("loss_param.normalization must be FULL, VALID, BATCH_SIZE or NONE, got '" + n + "'");
  }
  if (lp.has("normalize")) return lp.get_bool("normalize", true) ? Normalization::VALID : Normalization::BATCH_SIZE;
  return dflt;
}

// Caffe's LossLayer::GetNormalizer: the divisor of a loss over outer x inner
// items of which valid_count were not ignored (-1: all).  Never below 1.
inline double loss_normalizer(Normalization mode, int64_t outer, int64_t inner, int64_t valid_count) {
  double n = 1.0;
  switch (mode) {
    case Normalization::FULL: n = double(outer * inner); break;
    case Normalization::VALID: n = valid_count == -1 ? double(outer * inner) : double(valid_count); break;
    case Normalization::BATCH_SIZE: n = double(outer); break;
    case Normalization::NONE: n = 1.0; break;
  }
  return std::max(1.0, n);
}

template <typename Dtype>
class LossLayer : public Layer<Dtype> {
 public:
  using Layer<Dtype>::Layer;
  int ExactNumBottomBlobs() const override { return 2; }
  int ExactNumTopBlobs() const override { return 1; }
  bool IsLoss() const override { return true; }
  std::vector<int> NoGradBottoms() const override { return {1}; }

  // Data and label share the first dimension; top 0 is a scalar.
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) override {
    if (bottom.size() < 2 || bottom[0].empty() || bottom[1].empty() || bottom[0][0] != bottom[1][0]) {
      throw LayerError(std::string(this->type()) +
                       ": the data and label should have the same first dimension; data " +
                       (bottom.empty() ? "?" : shape_str(bottom[0])) + ", label " +
                       (bottom.size() < 2 ? "?" : shape_str(bottom[1])));
    }
    blobs->clear();
    top->assign(1, Shape{});
  }

 protected:
  static Dtype normalizer(Normalization mode, int64_t outer, int64_t inner, int64_t valid_count) {
    return static_cast<Dtype>(loss_normalizer(mode, outer, inner, valid_count));
  }
};

}  // namespace caffedata
