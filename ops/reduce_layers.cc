// Reducing layers with Caffe 1.0 semantics: Reduction, ArgMax, Accuracy.
// None of them has parameter blobs; ArgMax and Accuracy have no backward.
#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "layer.h"
#include "layer_util.h"

namespace caffedata {
namespace {

using namespace layer_util;  // NOLINT

// ---------------------------------------------------------------------------
// Reduction: SUM, ASUM, SUMSQ or MEAN over all axes from `axis` on, times
// `coeff`.  The top keeps the axes before `axis` (0 axes when axis == 0).
template <typename Dtype>
class ReductionLayer : public Layer<Dtype> {
 public:
  enum Op { SUM = 1, ASUM = 2, SUMSQ = 3, MEAN = 4 };
  explicit ReductionLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Reduction"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }

  void LayerSetUp(const std::vector<Shape>&) override {
    const ProtoNode& rp = this->param().child("reduction_param");
    const std::string op = rp.get_enum("operation", "SUM");
    if (op == "SUM" || op == "1") op_ = SUM;
    else if (op == "ASUM" || op == "2") op_ = ASUM;
    else if (op == "SUMSQ" || op == "3") op_ = SUMSQ;
    else if (op == "MEAN" || op == "4") op_ = MEAN;
    else throw LayerError("Reduction: unknown operation '" + op + "' (use SUM, ASUM, SUMSQ or MEAN)");
    axis_param_ = static_cast<int>(rp.get_int("axis", 0));
    coeff_param_ = static_cast<Dtype>(rp.get_float("coeff", 1.0));
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    blobs->clear();
    const int axis = canonical_axis(axis_param_, static_cast<int>(bottom[0].size()));
    num_ = shape_count(bottom[0], 0, axis);
    dim_ = shape_count(bottom[0], axis);
    coeff_ = coeff_param_;
    if (op_ == MEAN) coeff_ /= static_cast<Dtype>(dim_);
    top->assign(1, Shape(bottom[0].begin(), bottom[0].begin() + axis));
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    for (int64_t i = 0; i < num_; ++i, x += dim_) {
      Dtype acc = 0;
      switch (op_) {
        case SUM:
        case MEAN:
          for (int64_t k = 0; k < dim_; ++k) acc += x[k];
          break;
        case ASUM:
          for (int64_t k = 0; k < dim_; ++k) acc += std::fabs(x[k]);
          break;
        case SUMSQ:
          for (int64_t k = 0; k < dim_; ++k) acc += x[k] * x[k];
          break;
      }
      y[i] = coeff_ != Dtype(1) ? acc * coeff_ : acc;
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!propagate_down[0] || !bottom[0]->diff) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* ty = top[0]->diff;
    Dtype* bd = bottom[0]->diff;
    for (int64_t i = 0; i < num_; ++i, x += dim_, bd += dim_) {
      const Dtype c = ty[i] * coeff_;
      switch (op_) {
        case SUM:
        case MEAN:
          std::fill(bd, bd + dim_, c);
          break;
        case ASUM:  // caffe_cpu_sign: sign(0) == 0
          for (int64_t k = 0; k < dim_; ++k)
            bd[k] = c * static_cast<Dtype>((Dtype(0) < x[k]) - (x[k] < Dtype(0)));
          break;
        case SUMSQ:
          for (int64_t k = 0; k < dim_; ++k) bd[k] = 2 * c * x[k];
          break;
      }
    }
  }

 private:
  Op op_ = SUM;
  int64_t num_ = 0, dim_ = 0;
  Dtype coeff_ = 1;
  int axis_param_ = 0;
  Dtype coeff_param_ = 1;
};

// ---------------------------------------------------------------------------
// ArgMax: top_k indices (and values with out_max_val) along `axis`, or over
// the flattened trailing axes of each item when no axis is given.
template <typename Dtype>
class ArgMaxLayer : public Layer<Dtype> {
 public:
  explicit ArgMaxLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "ArgMax"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }

  void LayerSetUp(const std::vector<Shape>&) override {
    const ProtoNode& ap = this->param().child("argmax_param");
    out_max_val_ = ap.get_bool("out_max_val", false);
    top_k_ = ap.get_int("top_k", 1);
    has_axis_ = ap.has("axis");
    axis_param_ = static_cast<int>(ap.get_int("axis", 0));
    if (top_k_ < 1) throw LayerError("ArgMax: top k must not be less than 1");
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    blobs->clear();
    const Shape& in = bottom[0];
    if (in.empty()) throw LayerError("ArgMax: the input must have at least one axis");
    if (has_axis_) {
      axis_ = canonical_axis(axis_param_, static_cast<int>(in.size()));
      if (top_k_ > in[axis_]) {
        std::ostringstream os;
        os << "ArgMax: top_k (" << top_k_ << ") must be less than or equal to the dimension of the axis ("
           << in[axis_] << ") of input " << shape_str(in);
        throw LayerError(os.str());
      }
    } else if (top_k_ > shape_count(in, 1)) {
      std::ostringstream os;
      os << "ArgMax: top_k (" << top_k_ << ") must be less than or equal to the dimension of the "
         << "flattened bottom blob per instance (" << shape_count(in, 1) << ") of input " << shape_str(in);
      throw LayerError(os.str());
    }
    Shape out;
    if (has_axis_) {
      out = in;
      out[axis_] = top_k_;
    } else {
      out.assign(std::max<size_t>(in.size(), 3), 1);
      out[0] = in[0];
      out[2] = top_k_;
      if (out_max_val_) out[1] = 2;
    }
    top->assign(1, out);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    int64_t dim, axis_dist;
    if (has_axis_) {
      dim = bottom[0]->shape[axis_];
      axis_dist = shape_count(bottom[0]->shape, axis_) / dim;
    } else {
      dim = shape_count(bottom[0]->shape, 1);
      axis_dist = 1;
    }
    const int64_t num = bottom[0]->count() / dim;
    std::vector<std::pair<Dtype, int64_t>> v(static_cast<size_t>(dim));
    for (int64_t i = 0; i < num; ++i) {
      for (int64_t j = 0; j < dim; ++j)
        v[j] = std::make_pair(x[(i / axis_dist * dim + j) * axis_dist + i % axis_dist], j);
      // Caffe's ordering: larger value first; ties put the larger index first.
      std::partial_sort(v.begin(), v.begin() + top_k_, v.end(),
                        std::greater<std::pair<Dtype, int64_t>>());
      for (int64_t j = 0; j < top_k_; ++j) {
        if (out_max_val_) {
          if (has_axis_) {
            y[(i / axis_dist * top_k_ + j) * axis_dist + i % axis_dist] = v[j].first;
          } else {
            y[2 * i * top_k_ + j] = static_cast<Dtype>(v[j].second);
            y[2 * i * top_k_ + top_k_ + j] = v[j].first;
          }
        } else {
          y[(i / axis_dist * top_k_ + j) * axis_dist + i % axis_dist] =
              static_cast<Dtype>(v[j].second);
        }
      }
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>&, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>&, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    for (bool p : propagate_down) {
      if (p) throw LayerError("ArgMax has no backward (Caffe: NOT_IMPLEMENTED); do not ask for a gradient through it");
    }
  }

 private:
  bool out_max_val_ = false, has_axis_ = false;
  int64_t top_k_ = 1;
  int axis_ = 0;
  int axis_param_ = 0;
};

// ---------------------------------------------------------------------------
// Accuracy: top-k classification accuracy of bottom 0 (scores along `axis`)
// against the labels in bottom 1; optional top 1 holds per-class accuracy.
template <typename Dtype>
class AccuracyLayer : public Layer<Dtype> {
 public:
  explicit AccuracyLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Accuracy"; }
  int ExactNumBottomBlobs() const override { return 2; }
  int MinTopBlobs() const override { return 1; }
  int MaxTopBlobs() const override { return 2; }
  std::vector<int> NoGradBottoms() const override { return {1}; }

  void LayerSetUp(const std::vector<Shape>&) override {
    const ProtoNode& ap = this->param().child("accuracy_param");
    top_k_ = ap.get_int("top_k", 1);
    has_ignore_label_ = ap.has("ignore_label");
    ignore_label_ = static_cast<int>(ap.get_int("ignore_label", 0));
    axis_param_ = static_cast<int>(ap.get_int("axis", 1));
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    blobs->clear();
    const Shape& in = bottom[0];
    const int64_t label_count = shape_count(bottom[1]);
    if (in.empty()) throw LayerError("Accuracy: the predictions must have at least one axis");
    if (label_count == 0 || top_k_ > shape_count(in) / label_count) {
      std::ostringstream os;
      os << "Accuracy: top_k (" << top_k_ << ") must be less than or equal to the number of classes ("
         << (label_count ? shape_count(in) / label_count : 0) << "); predictions "
         << shape_str(in) << ", labels " << shape_str(bottom[1]);
      throw LayerError(os.str());
    }
    if (top_k_ < 1) throw LayerError("Accuracy: top_k must be at least 1");
    label_axis_ = canonical_axis(axis_param_, static_cast<int>(in.size()));
    outer_num_ = shape_count(in, 0, label_axis_);
    inner_num_ = shape_count(in, label_axis_ + 1);
    if (outer_num_ * inner_num_ != label_count) {
      std::ostringstream os;
      os << "Accuracy: number of labels must match number of predictions; e.g., if label axis == 1 "
         << "and prediction shape is (N, C, H, W), label count (number of labels) must be N*H*W, "
         << "with integer values in {0, 1, ..., C-1}; got predictions " << shape_str(in)
         << " (axis " << label_axis_ << ") and labels " << shape_str(bottom[1]);
      throw LayerError(os.str());
    }
    const size_t ntop = top_count(this->num_tops(), this->param(), *top);
    if (ntop > 2) throw LayerError("Accuracy has at most 2 outputs (accuracy, per-class accuracy)");
    top->assign(1, Shape{});
    if (ntop == 2) top->push_back(Shape{in[label_axis_]});
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    const Dtype* label = bottom[1]->data;
    const int64_t dim = bottom[0]->count() / outer_num_;
    const int64_t num_labels = bottom[0]->shape[label_axis_];
    const bool per_class = top.size() > 1;
    std::vector<Dtype> nums(per_class ? num_labels : 0, Dtype(0));
    Dtype* class_acc = per_class ? top[1]->data : nullptr;
    if (per_class) std::fill(class_acc, class_acc + num_labels, Dtype(0));
    Dtype accuracy = 0;
    int64_t count = 0;
    std::vector<std::pair<Dtype, int64_t>> v(static_cast<size_t>(num_labels));
    for (int64_t i = 0; i < outer_num_; ++i) {
      for (int64_t j = 0; j < inner_num_; ++j) {
        const int label_value = static_cast<int>(label[i * inner_num_ + j]);
        if (has_ignore_label_ && label_value == ignore_label_) continue;
        if (label_value < 0 || label_value >= num_labels) {
          std::ostringstream os;
          os << "Accuracy: label " << label_value << " at position " << i * inner_num_ + j
             << " is out of range [0, " << num_labels << ")";
          throw LayerError(os.str());
        }
        if (per_class) nums[label_value] += 1;
        for (int64_t k = 0; k < num_labels; ++k)
          v[k] = std::make_pair(x[i * dim + k * inner_num_ + j], k);
        // Caffe 1.0 sorts (score, class) pairs descending: ties rank the
        // larger class index first.
        std::partial_sort(v.begin(), v.begin() + top_k_, v.end(),
                          std::greater<std::pair<Dtype, int64_t>>());
        for (int64_t k = 0; k < top_k_; ++k) {
          if (v[k].second == label_value) {
            accuracy += 1;
            if (per_class) class_acc[label_value] += 1;
            break;
          }
        }
        ++count;
      }
    }
    top[0]->data[0] = accuracy / static_cast<Dtype>(count);
    if (per_class) {
      for (int64_t c = 0; c < num_labels; ++c)
        class_acc[c] = nums[c] == 0 ? Dtype(0) : class_acc[c] / nums[c];
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>&, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>&, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    for (bool p : propagate_down) {
      if (p) throw LayerError("Accuracy has no backward (Caffe: NOT_IMPLEMENTED); do not ask for a gradient through it");
    }
  }

 private:
  int64_t top_k_ = 1;
  int axis_param_ = 1;
  bool has_ignore_label_ = false;
  int ignore_label_ = 0;
  int label_axis_ = 1;
  int64_t outer_num_ = 0, inner_num_ = 0;
};

CAFFEDATA_REGISTER_LAYER("Reduction", ReductionLayer)
CAFFEDATA_REGISTER_LAYER("ArgMax", ArgMaxLayer)
CAFFEDATA_REGISTER_LAYER("Accuracy", AccuracyLayer)

}  // namespace
}  // namespace caffedata
