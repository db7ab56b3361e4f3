// Softmax and SoftmaxWithLoss, as Caffe 1.0's softmax_layer.cpp and
// softmax_loss_layer.cpp.
#include <cfloat>
#include <cmath>
#include <sstream>

#include "layer.h"
#include "loss_layer.h"
#include "math.h"

namespace caffedata {

namespace {
// softmax over `channels` with stride `inner`, for each (outer, inner) pair.
template <typename Dtype>
void softmax_forward(const Dtype* x, Dtype* y, int64_t outer, int64_t channels, int64_t inner) {
  const int64_t dim = channels * inner;
  for (int64_t i = 0; i < outer; ++i) {
    const Dtype* xi = x + i * dim;
    Dtype* yi = y + i * dim;
    for (int64_t k = 0; k < inner; ++k) {
      Dtype m = xi[k];
      for (int64_t c = 1; c < channels; ++c) m = std::max(m, xi[c * inner + k]);
      Dtype s = 0;
      for (int64_t c = 0; c < channels; ++c) {
        Dtype e = std::exp(xi[c * inner + k] - m);
        yi[c * inner + k] = e;
        s += e;
      }
      for (int64_t c = 0; c < channels; ++c) yi[c * inner + k] /= s;
    }
  }
}
}  // namespace

template <typename Dtype>
class SoftmaxLayer : public Layer<Dtype> {
 public:
  explicit SoftmaxLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    axis_param_ = static_cast<int>(p.child("softmax_param").get_int("axis", 1));
  }
  const char* type() const override { return "Softmax"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) override {
    const Shape& b = bottom[0];
    const int axis = canonical_axis(axis_param_, static_cast<int>(b.size()));
    outer_ = shape_count(b, 0, axis);
    channels_ = b[axis];
    inner_ = shape_count(b, axis + 1);
    blobs->clear();
    top->assign(1, b);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    softmax_forward(bottom[0]->data, top[0]->data, outer_, channels_, inner_);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&, Phase) override {
    if (!propagate_down[0]) return;
    const Dtype* y = top[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t dim = channels_ * inner_;
    for (int64_t i = 0; i < outer_; ++i) {
      for (int64_t k = 0; k < inner_; ++k) {
        Dtype d = 0;
        for (int64_t c = 0; c < channels_; ++c) d += dy[i * dim + c * inner_ + k] * y[i * dim + c * inner_ + k];
        for (int64_t c = 0; c < channels_; ++c) {
          const int64_t idx = i * dim + c * inner_ + k;
          dx[idx] = (dy[idx] - d) * y[idx];
        }
      }
    }
  }

 private:
  int axis_param_ = 1;
  int64_t outer_ = 0, channels_ = 0, inner_ = 0;
};

template <typename Dtype>
class SoftmaxWithLossLayer : public LossLayer<Dtype> {
 public:
  explicit SoftmaxWithLossLayer(const ProtoNode& p) : LossLayer<Dtype>(p) {}
  const char* type() const override { return "SoftmaxWithLoss"; }
  int ExactNumTopBlobs() const override { return -1; }
  int MinTopBlobs() const override { return 1; }
  int MaxTopBlobs() const override { return 2; }

  void LayerSetUp(const std::vector<Shape>&) override {
    axis_param_ = static_cast<int>(this->param().child("softmax_param").get_int("axis", 1));
    const ProtoNode& lp = this->param().child("loss_param");
    has_ignore_label_ = lp.has("ignore_label");
    ignore_label_ = static_cast<int>(lp.get_int("ignore_label", 0));
    norm_ = read_normalization(this->param(), Normalization::VALID);
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) override {
    const Shape& b = bottom[0];
    const Shape& l = bottom[1];
    if (b.empty() || l.empty() || b[0] != l[0]) {
      throw LayerError("the data and label should have the same first dimension, got data " + shape_str(b) +
                       " and label " + shape_str(l));
    }
    const int axis = canonical_axis(axis_param_, static_cast<int>(b.size()));
    outer_ = shape_count(b, 0, axis);
    channels_ = b[axis];
    inner_ = shape_count(b, axis + 1);
    if (outer_ * inner_ != shape_count(l)) {
      std::ostringstream os;
      os << "number of labels must match number of predictions; e.g., if softmax axis == 1 and prediction "
            "shape is (N, C, H, W), label count (number of labels) must be N*H*W, with integer values in "
            "{0, 1, ..., C-1}; got data "
         << shape_str(b) << " (axis " << axis << ") and label " << shape_str(l);
      throw LayerError(os.str());
    }
    blobs->clear();
    top->clear();
    top->push_back(Shape{});  // scalar loss
    if (this->num_tops() >= 2) top->push_back(b);
    prob_.resize(static_cast<size_t>(shape_count(b)));
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    softmax_forward(bottom[0]->data, prob_.data(), outer_, channels_, inner_);
    const Dtype* label = bottom[1]->data;
    const int64_t dim = channels_ * inner_;
    Dtype loss = 0;
    int64_t count = 0;
    for (int64_t i = 0; i < outer_; ++i) {
      for (int64_t j = 0; j < inner_; ++j) {
        const int lv = static_cast<int>(label[i * inner_ + j]);
        if (has_ignore_label_ && lv == ignore_label_) continue;
        check_label(lv);
        loss -= std::log(std::max(prob_[i * dim + lv * inner_ + j], Dtype(FLT_MIN)));
        ++count;
      }
    }
    top[0]->data[0] = loss / normalizer(count);
    if (top.size() >= 2) copy<Dtype>(static_cast<int64_t>(prob_.size()), prob_.data(), top[1]->data);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&, Phase) override {
    if (propagate_down.size() > 1 && propagate_down[1])
      throw LayerError("SoftmaxWithLoss cannot backpropagate to label inputs");
    if (!propagate_down[0]) return;
    Dtype* dx = bottom[0]->diff;
    copy<Dtype>(static_cast<int64_t>(prob_.size()), prob_.data(), dx);
    const Dtype* label = bottom[1]->data;
    const int64_t dim = channels_ * inner_;
    int64_t count = 0;
    for (int64_t i = 0; i < outer_; ++i) {
      for (int64_t j = 0; j < inner_; ++j) {
        const int lv = static_cast<int>(label[i * inner_ + j]);
        if (has_ignore_label_ && lv == ignore_label_) {
          for (int64_t c = 0; c < channels_; ++c) dx[i * dim + c * inner_ + j] = 0;
        } else {
          check_label(lv);
          dx[i * dim + lv * inner_ + j] -= 1;
          ++count;
        }
      }
    }
    const Dtype w = top[0]->diff[0] / normalizer(count);
    scal<Dtype>(static_cast<int64_t>(prob_.size()), w, dx);
  }

 private:
  int axis_param_ = 1;
  bool has_ignore_label_ = false;
  int ignore_label_ = 0;
  Normalization norm_ = Normalization::VALID;
  int64_t outer_ = 0, channels_ = 0, inner_ = 0;
  std::vector<Dtype> prob_;

  void check_label(int lv) const {
    if (lv < 0 || lv >= channels_) {
      std::ostringstream os;
      os << "label value " << lv << " out of range [0, " << channels_ << ")";
      throw LayerError(os.str());
    }
  }

  Dtype normalizer(int64_t valid_count) const {
    return LossLayer<Dtype>::normalizer(norm_, outer_, inner_, valid_count);
  }
};

CAFFEDATA_REGISTER_LAYER("Softmax", SoftmaxLayer)
CAFFEDATA_REGISTER_LAYER("SoftmaxWithLoss", SoftmaxWithLossLayer)

}  // namespace caffedata
