// Loss layers with Caffe 1.0 semantics: EuclideanLoss, SigmoidCrossEntropyLoss,
// HingeLoss, MultinomialLogisticLoss, InfogainLoss, ContrastiveLoss.
//
// Every loss has a scalar top 0 (shape {}); in Backward, top[0]->diff[0] is the
// loss weight that scales the bottom gradients (Caffe's convention).  Labels
// (and InfogainLoss's H, ContrastiveLoss's similarity) are listed in
// NoGradBottoms(): Caffe refuses to backpropagate to them.
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "layer.h"
#include "loss_layer.h"

namespace caffedata {
namespace {

constexpr double kLogThreshold = 1e-20;  // Caffe's kLOG_THRESHOLD

// Caffe's legacy num()/channels()/height()/width(): axes 0..3 padded with 1.
int64_t legacy(const Shape& s, int index) {
  const int n = static_cast<int>(s.size());
  if (index >= n || index < -n) return 1;
  return s[index < 0 ? index + n : index];
}

void label_range_error(const char* type, int label, int64_t pos, int64_t n) {
  std::ostringstream os;
  os << type << ": label " << label << " at position " << pos << " is out of range [0, " << n << ")";
  throw LayerError(os.str());
}

// The losses below divide by the batch: Caffe 1.0 hard-codes num(); this is
// the shared rule with BATCH_SIZE normalisation.
template <typename Dtype>
Dtype batch_normalizer(const std::vector<Blob<Dtype>*>& bottom) {
  return static_cast<Dtype>(loss_normalizer(Normalization::BATCH_SIZE, bottom[0]->legacy_shape(0), 1, -1));
}

template <typename Dtype>
void zero_if(bool prop, Blob<Dtype>* b) {
  if (prop && b->diff) std::fill(b->diff, b->diff + b->count(), Dtype(0));
}

// ---------------------------------------------------------------------------
// EuclideanLoss: sum((a - b)^2) / num / 2; gradients to both inputs.
template <typename Dtype>
class EuclideanLossLayer : public LossLayer<Dtype> {
 public:
  explicit EuclideanLossLayer(const ProtoNode& p) : LossLayer<Dtype>(p) {}
  const char* type() const override { return "EuclideanLoss"; }
  std::vector<int> NoGradBottoms() const override { return {}; }  // both inputs get gradients

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    LossLayer<Dtype>::Reshape(bottom, blobs, top);
    if (shape_count(bottom[0], 1) != shape_count(bottom[1], 1)) {
      throw LayerError("EuclideanLoss: inputs must have the same dimension; got " +
                       shape_str(bottom[0]) + " and " + shape_str(bottom[1]));
    }
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const int64_t n = bottom[0]->count();
    diff_.resize(static_cast<size_t>(n));
    Dtype dot = 0;
    for (int64_t k = 0; k < n; ++k) {
      diff_[k] = bottom[0]->data[k] - bottom[1]->data[k];
      dot += diff_[k] * diff_[k];
    }
    top[0]->data[0] = dot / batch_normalizer(bottom) / Dtype(2);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    const int64_t n = bottom[0]->count();
    if (diff_.size() != static_cast<size_t>(n)) {
      diff_.resize(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) diff_[k] = bottom[0]->data[k] - bottom[1]->data[k];
    }
    for (int i = 0; i < 2; ++i) {
      if (!propagate_down[i] || !bottom[i]->diff) continue;
      const Dtype sign = i == 0 ? 1 : -1;
      const Dtype alpha = sign * top[0]->diff[0] / batch_normalizer(bottom);
      for (int64_t k = 0; k < n; ++k) bottom[i]->diff[k] = alpha * diff_[k];
    }
  }

 private:
  std::vector<Dtype> diff_;
};

// ---------------------------------------------------------------------------
// SigmoidCrossEntropyLoss: stable cross-entropy of sigmoid(x) against targets
// in [0, 1]; loss_param { ignore_label normalization normalize }.
template <typename Dtype>
class SigmoidCrossEntropyLossLayer : public LossLayer<Dtype> {
 public:
  explicit SigmoidCrossEntropyLossLayer(const ProtoNode& p) : LossLayer<Dtype>(p) {}
  const char* type() const override { return "SigmoidCrossEntropyLoss"; }

  void LayerSetUp(const std::vector<Shape>&) override {
    const ProtoNode& lp = this->param().child("loss_param");
    has_ignore_label_ = lp.has("ignore_label");
    ignore_label_ = static_cast<int>(lp.get_int("ignore_label", 0));
    // Caffe keeps BATCH_SIZE as this layer's default, for old nets.
    normalization_ = read_normalization(this->param(), Normalization::BATCH_SIZE);
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    LossLayer<Dtype>::Reshape(bottom, blobs, top);
    outer_num_ = bottom[0][0];
    inner_num_ = shape_count(bottom[0], 1);
    if (shape_count(bottom[0]) != shape_count(bottom[1])) {
      throw LayerError("SigmoidCrossEntropyLoss: inputs must have the same count; got " +
                       shape_str(bottom[0]) + " and " + shape_str(bottom[1]));
    }
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    const Dtype* t = bottom[1]->data;
    const int64_t n = bottom[0]->count();
    int64_t valid = 0;
    Dtype loss = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (has_ignore_label_ && static_cast<int>(t[i]) == ignore_label_) continue;
      const Dtype pos = x[i] >= 0 ? Dtype(1) : Dtype(0);
      loss -= x[i] * (t[i] - pos) - std::log(1 + std::exp(x[i] - 2 * x[i] * pos));
      ++valid;
    }
    top[0]->data[0] = loss / normalizer(valid);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    zero_if(propagate_down.size() > 1 && propagate_down[1], bottom[1]);
    if (!propagate_down[0] || !bottom[0]->diff) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* t = bottom[1]->data;
    Dtype* d = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    int64_t valid = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (has_ignore_label_ && static_cast<int>(t[i]) == ignore_label_) {
        d[i] = 0;
        continue;
      }
      d[i] = Dtype(0.5) * std::tanh(Dtype(0.5) * x[i]) + Dtype(0.5) - t[i];  // Caffe sigmoid
      ++valid;
    }
    const Dtype scale = top[0]->diff[0] / normalizer(valid);
    for (int64_t i = 0; i < n; ++i) d[i] *= scale;
  }

 private:
  Dtype normalizer(int64_t valid) const {
    return LossLayer<Dtype>::normalizer(normalization_, outer_num_, inner_num_, valid);
  }

  bool has_ignore_label_ = false;
  int ignore_label_ = 0;
  Normalization normalization_ = Normalization::BATCH_SIZE;
  int64_t outer_num_ = 0, inner_num_ = 0;
};

// ---------------------------------------------------------------------------
// HingeLoss: one-vs-all hinge, L1 or L2, divided by num.
template <typename Dtype>
class HingeLossLayer : public LossLayer<Dtype> {
 public:
  explicit HingeLossLayer(const ProtoNode& p) : LossLayer<Dtype>(p) {}
  const char* type() const override { return "HingeLoss"; }

  void LayerSetUp(const std::vector<Shape>&) override {
    const std::string norm = this->param().child("hinge_loss_param").get_enum("norm", "L1");
    if (norm == "L1" || norm == "1") l2_ = false;
    else if (norm == "L2" || norm == "2") l2_ = true;
    else throw LayerError("HingeLoss: unknown norm '" + norm + "' (use L1 or L2)");
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    margins(bottom);
    Dtype loss = 0;
    for (Dtype m : margin_) loss += l2_ ? m * m : std::fabs(m);
    top[0]->data[0] = loss / batch_normalizer(bottom);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    zero_if(propagate_down.size() > 1 && propagate_down[1], bottom[1]);
    if (!propagate_down[0] || !bottom[0]->diff) return;
    margins(bottom);
    const int64_t num = bottom[0]->legacy_shape(0);
    const int64_t dim = bottom[0]->count() / num;
    const Dtype* label = bottom[1]->data;
    Dtype* d = bottom[0]->diff;
    const Dtype lw = top[0]->diff[0];
    const Dtype z = batch_normalizer(bottom);
    for (int64_t i = 0; i < num; ++i) {
      const int64_t l = static_cast<int>(label[i]);
      for (int64_t j = 0; j < dim; ++j) {
        Dtype m = margin_[i * dim + j];
        if (j == l) m = -m;
        if (l2_) d[i * dim + j] = m * (lw * 2 / z);
        else d[i * dim + j] = static_cast<Dtype>((Dtype(0) < m) - (m < Dtype(0))) * (lw / z);
      }
    }
  }

 private:
  // max(0, 1 - y_ij * x_ij) with y = +1 for the true class, -1 otherwise.
  void margins(const std::vector<Blob<Dtype>*>& bottom) {
    const int64_t num = bottom[0]->legacy_shape(0);
    const int64_t dim = bottom[0]->count() / num;
    const Dtype* x = bottom[0]->data;
    const Dtype* label = bottom[1]->data;
    margin_.resize(static_cast<size_t>(num * dim));
    for (int64_t i = 0; i < num; ++i) {
      const int l = static_cast<int>(label[i]);
      if (l < 0 || l >= dim) label_range_error("HingeLoss", l, i, dim);
      for (int64_t j = 0; j < dim; ++j) {
        const Dtype v = j == l ? -x[i * dim + j] : x[i * dim + j];
        margin_[i * dim + j] = std::max(Dtype(0), 1 + v);
      }
    }
  }

  bool l2_ = false;
  std::vector<Dtype> margin_;
};

// ---------------------------------------------------------------------------
// MultinomialLogisticLoss: -log(max(p[label], 1e-20)) / num over
// probabilities.
template <typename Dtype>
class MultinomialLogisticLossLayer : public LossLayer<Dtype> {
 public:
  explicit MultinomialLogisticLossLayer(const ProtoNode& p) : LossLayer<Dtype>(p) {}
  const char* type() const override { return "MultinomialLogisticLoss"; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    LossLayer<Dtype>::Reshape(bottom, blobs, top);
    if (legacy(bottom[1], 1) != 1 || legacy(bottom[1], 2) != 1 || legacy(bottom[1], 3) != 1) {
      throw LayerError("MultinomialLogisticLoss: the label must hold one value per item, shape (N,) "
                       "or (N, 1, 1, 1); got " + shape_str(bottom[1]));
    }
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const int64_t num = bottom[0]->legacy_shape(0);
    const int64_t dim = bottom[0]->count() / num;
    const Dtype* p = bottom[0]->data;
    const Dtype* label = bottom[1]->data;
    Dtype loss = 0;
    for (int64_t i = 0; i < num; ++i) {
      const int l = static_cast<int>(label[i]);
      if (l < 0 || l >= dim) label_range_error("MultinomialLogisticLoss", l, i, dim);
      loss -= std::log(std::max(p[i * dim + l], Dtype(kLogThreshold)));
    }
    top[0]->data[0] = loss / batch_normalizer(bottom);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    zero_if(propagate_down.size() > 1 && propagate_down[1], bottom[1]);
    if (!propagate_down[0] || !bottom[0]->diff) return;
    const int64_t num = bottom[0]->legacy_shape(0);
    const int64_t dim = bottom[0]->count() / num;
    const Dtype* p = bottom[0]->data;
    const Dtype* label = bottom[1]->data;
    Dtype* d = bottom[0]->diff;
    std::fill(d, d + bottom[0]->count(), Dtype(0));
    const Dtype scale = -top[0]->diff[0] / batch_normalizer(bottom);
    for (int64_t i = 0; i < num; ++i) {
      const int l = static_cast<int>(label[i]);
      if (l < 0 || l >= dim) label_range_error("MultinomialLogisticLoss", l, i, dim);
      d[i * dim + l] = scale / std::max(p[i * dim + l], Dtype(kLogThreshold));
    }
  }
};

// ---------------------------------------------------------------------------
// InfogainLoss over probabilities (Caffe 1.0's input contract: no internal
// softmax), with the fields of BVLC's final caffe.proto: infogain_loss_param
// { axis } (the class axis: predictions (N, K, H, W) with axis 1 and labels
// N*H*W make a spatial infogain loss), loss_param { ignore_label,
// normalization (default VALID), normalize }.
//   loss = -sum_{i,j not ignored} sum_k H[label_ij, k] log(max(p_ikj, 1e-20)) / normalizer
// With axis 1 on (N, K) inputs and no ignore_label this is Caffe 1.0's
// "/ num".  H (K x K) is the third input.
template <typename Dtype>
class InfogainLossLayer : public LossLayer<Dtype> {
 public:
  explicit InfogainLossLayer(const ProtoNode& p) : LossLayer<Dtype>(p) {}
  const char* type() const override { return "InfogainLoss"; }
  int ExactNumBottomBlobs() const override { return -1; }
  int MinBottomBlobs() const override { return 2; }
  int MaxBottomBlobs() const override { return 3; }
  std::vector<int> NoGradBottoms() const override { return {1, 2}; }

  void LayerSetUp(const std::vector<Shape>& bottom) override {
    const ProtoNode& lp = this->param().child("loss_param");
    has_ignore_label_ = lp.has("ignore_label");
    ignore_label_ = static_cast<int>(lp.get_int("ignore_label", 0));
    normalization_ = read_normalization(this->param(), Normalization::VALID);
    const ProtoNode& ip = this->param().child("infogain_loss_param");
    axis_param_ = static_cast<int>(ip.get_int("axis", 1));
    if (bottom.size() < 3) {
      throw LayerError(std::string("InfogainLoss: ") +
                       (ip.has("source") ? "infogain_loss_param.source (a binaryproto file) is not supported"
                                         : "the infogain matrix H is missing") +
                       "; pass H as a third input (data_2, a (K, K) or (1, 1, K, K) array, K = number "
                       "of classes) with num_data=3");
    }
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    LossLayer<Dtype>::Reshape(bottom, blobs, top);
    const Shape& b = bottom[0];
    axis_ = canonical_axis(axis_param_, static_cast<int>(b.size()));
    outer_ = shape_count(b, 0, axis_);
    inner_ = shape_count(b, axis_ + 1);
    classes_ = b[axis_];
    if (outer_ * inner_ != shape_count(bottom[1])) {
      std::ostringstream os;
      os << "InfogainLoss: number of labels must match number of predictions; e.g., if infogain axis == 1 "
            "and prediction shape is (N, C, H, W), label count (number of labels) must be N*H*W, with "
            "integer values in {0, 1, ..., C-1}; got predictions "
         << shape_str(b) << " (axis " << axis_ << ") and labels " << shape_str(bottom[1]);
      throw LayerError(os.str());
    }
    // Caffe wants H as a (1, 1, K, K) blob; a plain (K, K) matrix is accepted too.
    const Shape& h = bottom[2];
    const int64_t k = classes_;
    bool ok = h.size() >= 2 && h[h.size() - 1] == k && h[h.size() - 2] == k && shape_count(h) == k * k;
    if (!ok) {
      std::ostringstream os;
      os << "InfogainLoss: H must be a " << k << "x" << k << " matrix, shape (" << k << ", " << k
         << ") or (1, 1, " << k << ", " << k << "), to match the predictions " << shape_str(b)
         << " (axis " << axis_ << "); got " << shape_str(h);
      throw LayerError(os.str());
    }
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* p = bottom[0]->data;
    const Dtype* label = bottom[1]->data;
    const Dtype* H = bottom[2]->data;
    const int64_t dim = classes_ * inner_;
    Dtype loss = 0;
    int64_t count = 0;
    for (int64_t i = 0; i < outer_; ++i) {
      for (int64_t j = 0; j < inner_; ++j) {
        const int l = label_at(label, i, j);
        if (l < 0) continue;
        for (int64_t c = 0; c < classes_; ++c)
          loss -= H[l * classes_ + c] * std::log(std::max(p[i * dim + c * inner_ + j], Dtype(kLogThreshold)));
        ++count;
      }
    }
    top[0]->data[0] = loss / this->normalizer(normalization_, outer_, inner_, count);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    zero_if(propagate_down.size() > 1 && propagate_down[1], bottom[1]);
    zero_if(propagate_down.size() > 2 && propagate_down[2], bottom[2]);
    if (!propagate_down[0] || !bottom[0]->diff) return;
    const Dtype* p = bottom[0]->data;
    const Dtype* label = bottom[1]->data;
    const Dtype* H = bottom[2]->data;
    Dtype* d = bottom[0]->diff;
    const int64_t dim = classes_ * inner_;
    int64_t count = 0;
    for (int64_t i = 0; i < outer_; ++i) {
      for (int64_t j = 0; j < inner_; ++j) {
        const int l = label_at(label, i, j);
        for (int64_t c = 0; c < classes_; ++c) {
          const int64_t o = i * dim + c * inner_ + j;
          d[o] = l < 0 ? Dtype(0) : -H[l * classes_ + c] / std::max(p[o], Dtype(kLogThreshold));
        }
        if (l >= 0) ++count;
      }
    }
    const Dtype scale = top[0]->diff[0] / this->normalizer(normalization_, outer_, inner_, count);
    for (int64_t o = 0; o < bottom[0]->count(); ++o) d[o] *= scale;
  }

 private:
  // The label at (i, j), -1 when ignored; throws when out of range.
  int label_at(const Dtype* label, int64_t i, int64_t j) const {
    const int l = static_cast<int>(label[i * inner_ + j]);
    if (has_ignore_label_ && l == ignore_label_) return -1;
    if (l < 0 || l >= classes_) label_range_error("InfogainLoss", l, i * inner_ + j, classes_);
    return l;
  }

  bool has_ignore_label_ = false;
  int ignore_label_ = 0;
  Normalization normalization_ = Normalization::VALID;
  int axis_param_ = 1, axis_ = 1;
  int64_t outer_ = 0, inner_ = 0, classes_ = 0;
};

// ---------------------------------------------------------------------------
// ContrastiveLoss: bottoms a, b (N, C[, 1, 1]) and similarity y (N[, 1, 1, 1]).
template <typename Dtype>
class ContrastiveLossLayer : public LossLayer<Dtype> {
 public:
  explicit ContrastiveLossLayer(const ProtoNode& p) : LossLayer<Dtype>(p) {}
  const char* type() const override { return "ContrastiveLoss"; }
  int ExactNumBottomBlobs() const override { return 3; }
  std::vector<int> NoGradBottoms() const override { return {2}; }

  void LayerSetUp(const std::vector<Shape>&) override {
    const ProtoNode& cp = this->param().child("contrastive_loss_param");
    margin_ = static_cast<Dtype>(cp.get_float("margin", 1.0));
    legacy_version_ = cp.get_bool("legacy_version", false);
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    LossLayer<Dtype>::Reshape(bottom, blobs, top);
    const Shape &a = bottom[0], &b = bottom[1], &y = bottom[2];
    if (a.size() > 4 || b.size() > 4 || y.size() > 4)
      throw LayerError("ContrastiveLoss: inputs may have at most 4 axes");
    if (legacy(a, 0) != legacy(b, 0) || legacy(a, 0) != legacy(y, 0) ||
        legacy(a, 1) != legacy(b, 1) || legacy(a, 2) != 1 || legacy(a, 3) != 1 ||
        legacy(b, 2) != 1 || legacy(b, 3) != 1 || legacy(y, 1) != 1 || legacy(y, 2) != 1 ||
        legacy(y, 3) != 1) {
      throw LayerError("ContrastiveLoss: expected features a, b of shape (N, C) or (N, C, 1, 1) and a "
                       "similarity label of shape (N,) or (N, 1, 1, 1); got " + shape_str(a) + ", " +
                       shape_str(b) + ", " + shape_str(y));
    }
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    compute_dist(bottom);
    const int64_t num = bottom[0]->legacy_shape(0);
    const Dtype* y = bottom[2]->data;
    Dtype loss = 0;
    for (int64_t i = 0; i < num; ++i) {
      if (static_cast<int>(y[i])) {
        loss += dist_sq_[i];
      } else if (legacy_version_) {
        loss += std::max(margin_ - dist_sq_[i], Dtype(0));
      } else {
        const Dtype dist = std::max<Dtype>(margin_ - std::sqrt(dist_sq_[i]), Dtype(0));
        loss += dist * dist;
      }
    }
    top[0]->data[0] = loss / batch_normalizer(bottom) / Dtype(2);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    zero_if(propagate_down.size() > 2 && propagate_down[2], bottom[2]);
    compute_dist(bottom);
    const int64_t num = bottom[0]->legacy_shape(0);
    const int64_t channels = bottom[0]->legacy_shape(1);
    const Dtype* y = bottom[2]->data;
    for (int i = 0; i < 2; ++i) {
      if (!propagate_down[i] || !bottom[i]->diff) continue;
      const Dtype sign = i == 0 ? 1 : -1;
      const Dtype alpha = sign * top[0]->diff[0] / batch_normalizer(bottom);
      Dtype* out = bottom[i]->diff;
      for (int64_t j = 0; j < num; ++j) {
        const Dtype* dj = diff_.data() + j * channels;
        Dtype* oj = out + j * channels;
        if (static_cast<int>(y[j])) {
          for (int64_t c = 0; c < channels; ++c) oj[c] = alpha * dj[c];
        } else {
          Dtype mdist, beta;
          if (legacy_version_) {
            mdist = margin_ - dist_sq_[j];
            beta = -alpha;
          } else {
            const Dtype dist = std::sqrt(dist_sq_[j]);
            mdist = margin_ - dist;
            beta = -alpha * mdist / (dist + Dtype(1e-4));
          }
          if (mdist > Dtype(0)) {
            for (int64_t c = 0; c < channels; ++c) oj[c] = beta * dj[c];
          } else {
            std::fill(oj, oj + channels, Dtype(0));
          }
        }
      }
    }
  }

 private:
  void compute_dist(const std::vector<Blob<Dtype>*>& bottom) {
    const int64_t num = bottom[0]->legacy_shape(0);
    const int64_t channels = bottom[0]->legacy_shape(1);
    const int64_t n = bottom[0]->count();
    diff_.resize(static_cast<size_t>(n));
    dist_sq_.assign(static_cast<size_t>(num), Dtype(0));
    for (int64_t k = 0; k < n; ++k) diff_[k] = bottom[0]->data[k] - bottom[1]->data[k];
    for (int64_t i = 0; i < num; ++i) {
      Dtype s = 0;
      for (int64_t c = 0; c < channels; ++c) s += diff_[i * channels + c] * diff_[i * channels + c];
      dist_sq_[i] = s;
    }
  }

  Dtype margin_ = 1;
  bool legacy_version_ = false;
  std::vector<Dtype> diff_, dist_sq_;
};

CAFFEDATA_REGISTER_LAYER("EuclideanLoss", EuclideanLossLayer)
CAFFEDATA_REGISTER_LAYER("SigmoidCrossEntropyLoss", SigmoidCrossEntropyLossLayer)
CAFFEDATA_REGISTER_LAYER("HingeLoss", HingeLossLayer)
CAFFEDATA_REGISTER_LAYER("MultinomialLogisticLoss", MultinomialLogisticLossLayer)
CAFFEDATA_REGISTER_LAYER("InfogainLoss", InfogainLossLayer)
CAFFEDATA_REGISTER_LAYER("ContrastiveLoss", ContrastiveLossLayer)

}  // namespace
}  // namespace caffedata
