// Structural layers with Caffe 1.0 semantics: Concat, Slice, Split, Eltwise,
// Flatten, Reshape, Crop, Tile.  None of them has parameter blobs.
//
// Caffe shares data/diff between bottom and top for Flatten, Reshape, Split
// and single-input Concat/Slice; MXNet gives each output its own buffer, so
// here those layers copy (forward) and copy or sum (backward) instead.
#include <algorithm>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "layer.h"
#include "layer_util.h"

namespace caffedata {
namespace {

using namespace layer_util;  // NOLINT

std::string join_ints(const std::vector<int64_t>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str();
}

template <typename Dtype>
void copy_n(const Dtype* src, int64_t n, Dtype* dst) {
  if (n > 0 && src != dst) std::memcpy(dst, src, sizeof(Dtype) * static_cast<size_t>(n));
}

// ---------------------------------------------------------------------------
// Concat: joins bottoms along `axis` (deprecated alias `concat_dim`).
template <typename Dtype>
class ConcatLayer : public Layer<Dtype> {
 public:
  explicit ConcatLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Concat"; }
  int MinBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    need_bottoms("Concat", bottom, 1);
    blobs->clear();
    const ProtoNode& cp = this->param().child("concat_param");
    if (cp.has("axis") && cp.has("concat_dim"))
      throw LayerError("Concat: either axis or concat_dim should be specified; not both");
    const int num_axes = static_cast<int>(bottom[0].size());
    if (cp.has("concat_dim")) {
      int64_t d = cp.get_int("concat_dim", 1);
      if (d < 0 || d >= num_axes) {
        std::ostringstream os;
        os << "Concat: concat_dim " << d << " out of range for a blob with " << num_axes
           << " axes (concat_dim does not support negative indexing)";
        throw LayerError(os.str());
      }
      axis_ = static_cast<int>(d);
    } else {
      axis_ = canonical_axis(static_cast<int>(cp.get_int("axis", 1)), num_axes);
    }
    Shape out = bottom[0];
    for (size_t i = 1; i < bottom.size(); ++i) {
      if (bottom[i].size() != bottom[0].size()) {
        throw LayerError("Concat: all inputs must have the same number of axes; input 0 is " +
                         shape_str(bottom[0]) + ", input " + std::to_string(i) + " is " +
                         shape_str(bottom[i]));
      }
      for (int j = 0; j < num_axes; ++j) {
        if (j == axis_) continue;
        if (bottom[i][j] != bottom[0][j]) {
          throw LayerError("Concat: all inputs must have the same shape except at axis " +
                           std::to_string(axis_) + "; input 0 is " + shape_str(bottom[0]) +
                           ", input " + std::to_string(i) + " is " + shape_str(bottom[i]));
        }
      }
      out[axis_] += bottom[i][axis_];
    }
    top->assign(1, out);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const int64_t num_concats = shape_count(bottom[0]->shape, 0, axis_);
    const int64_t inner = shape_count(bottom[0]->shape, axis_ + 1);
    const int64_t top_axis = top[0]->shape[axis_];
    int64_t offset = 0;
    for (auto* b : bottom) {
      const int64_t b_axis = b->shape[axis_];
      for (int64_t n = 0; n < num_concats; ++n) {
        copy_n(b->data + n * b_axis * inner, b_axis * inner,
               top[0]->data + (n * top_axis + offset) * inner);
      }
      offset += b_axis;
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    const int64_t num_concats = shape_count(bottom[0]->shape, 0, axis_);
    const int64_t inner = shape_count(bottom[0]->shape, axis_ + 1);
    const int64_t top_axis = top[0]->shape[axis_];
    int64_t offset = 0;
    for (size_t i = 0; i < bottom.size(); ++i) {
      const int64_t b_axis = bottom[i]->shape[axis_];
      if (propagate_down[i] && bottom[i]->diff) {
        for (int64_t n = 0; n < num_concats; ++n) {
          copy_n(top[0]->diff + (n * top_axis + offset) * inner, b_axis * inner,
                 bottom[i]->diff + n * b_axis * inner);
        }
      }
      offset += b_axis;
    }
  }

 private:
  int axis_ = 1;
};

// ---------------------------------------------------------------------------
// Slice: splits one bottom along `axis` at `slice_point`s, or evenly.
template <typename Dtype>
class SliceLayer : public Layer<Dtype> {
 public:
  explicit SliceLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Slice"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int MinTopBlobs() const override { return 1; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    need_bottoms("Slice", bottom, 1);
    blobs->clear();
    const ProtoNode& sp = this->param().child("slice_param");
    if (sp.has("axis") && sp.has("slice_dim"))
      throw LayerError("Slice: either axis or slice_dim should be specified; not both");
    const int num_axes = static_cast<int>(bottom[0].size());
    if (sp.has("slice_dim")) {
      int64_t d = sp.get_int("slice_dim", 1);
      if (d < 0 || d >= num_axes) {
        std::ostringstream os;
        os << "Slice: slice_dim " << d << " out of range for a blob with " << num_axes
           << " axes (slice_dim does not support negative indexing)";
        throw LayerError(os.str());
      }
      axis_ = static_cast<int>(d);
    } else {
      axis_ = canonical_axis(static_cast<int>(sp.get_int("axis", 1)), num_axes);
    }
    const size_t ntop = top_count(this->num_tops(), this->param(), *top);
    const int64_t dim = bottom[0][axis_];
    std::vector<int64_t> points = sp.get_ints("slice_point");
    std::vector<int64_t> sizes;
    if (!points.empty()) {
      if (points.size() != ntop - 1) {
        std::ostringstream os;
        os << "Slice: " << points.size() << " slice_point(s) [" << join_ints(points)
           << "] need " << points.size() + 1 << " outputs, but the layer has " << ntop
           << " (set num_out to len(slice_point) + 1)";
        throw LayerError(os.str());
      }
      if (static_cast<int64_t>(ntop) > dim) {
        std::ostringstream os;
        os << "Slice: " << ntop << " outputs exceed the size " << dim << " of axis " << axis_;
        throw LayerError(os.str());
      }
      int64_t prev = 0;
      for (int64_t p : points) {
        if (p <= prev) {
          throw LayerError("Slice: slice_point values must be increasing and positive, got [" +
                           join_ints(points) + "]");
        }
        sizes.push_back(p - prev);
        prev = p;
      }
      if (dim - prev <= 0) {
        std::ostringstream os;
        os << "Slice: last slice_point " << prev << " must be smaller than the size " << dim
           << " of axis " << axis_ << " of input " << shape_str(bottom[0]);
        throw LayerError(os.str());
      }
      sizes.push_back(dim - prev);
    } else {
      if (dim % static_cast<int64_t>(ntop) != 0) {
        std::ostringstream os;
        os << "Slice: number of outputs (" << ntop << ") should evenly divide the input slice axis ("
           << dim << ") of input " << shape_str(bottom[0]) << "; give slice_point values instead";
        throw LayerError(os.str());
      }
      sizes.assign(ntop, dim / static_cast<int64_t>(ntop));
    }
    top->resize(ntop);
    for (size_t i = 0; i < ntop; ++i) {
      (*top)[i] = bottom[0];
      (*top)[i][axis_] = sizes[i];
    }
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const int64_t num_slices = shape_count(bottom[0]->shape, 0, axis_);
    const int64_t inner = shape_count(bottom[0]->shape, axis_ + 1);
    const int64_t b_axis = bottom[0]->shape[axis_];
    int64_t offset = 0;
    for (auto* t : top) {
      const int64_t t_axis = t->shape[axis_];
      for (int64_t n = 0; n < num_slices; ++n) {
        copy_n(bottom[0]->data + (n * b_axis + offset) * inner, t_axis * inner,
               t->data + n * t_axis * inner);
      }
      offset += t_axis;
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!propagate_down[0] || !bottom[0]->diff) return;
    const int64_t num_slices = shape_count(bottom[0]->shape, 0, axis_);
    const int64_t inner = shape_count(bottom[0]->shape, axis_ + 1);
    const int64_t b_axis = bottom[0]->shape[axis_];
    int64_t offset = 0;
    for (auto* t : top) {
      const int64_t t_axis = t->shape[axis_];
      for (int64_t n = 0; n < num_slices; ++n) {
        copy_n(t->diff + n * t_axis * inner, t_axis * inner,
               bottom[0]->diff + (n * b_axis + offset) * inner);
      }
      offset += t_axis;
    }
  }

 private:
  int axis_ = 1;
};

// ---------------------------------------------------------------------------
// Split: copies its bottom to every top; the gradient is the sum of top diffs.
template <typename Dtype>
class SplitLayer : public Layer<Dtype> {
 public:
  explicit SplitLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Split"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int MinTopBlobs() const override { return 1; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    need_bottoms("Split", bottom, 1);
    blobs->clear();
    const size_t ntop = top_count(this->num_tops(), this->param(), *top);
    top->assign(ntop, bottom[0]);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    for (auto* t : top) copy_n(bottom[0]->data, bottom[0]->count(), t->data);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!propagate_down[0] || !bottom[0]->diff) return;
    const int64_t n = bottom[0]->count();
    Dtype* bd = bottom[0]->diff;
    copy_n(top[0]->diff, n, bd);
    for (size_t i = 1; i < top.size(); ++i) {
      const Dtype* td = top[i]->diff;
      for (int64_t k = 0; k < n; ++k) bd[k] += td[k];
    }
  }
};

// ---------------------------------------------------------------------------
// Eltwise: PROD, SUM (with per-bottom coeff) or MAX over 2+ same-shape bottoms.
template <typename Dtype>
class EltwiseLayer : public Layer<Dtype> {
 public:
  enum Op { PROD = 0, SUM = 1, MAX = 2 };
  explicit EltwiseLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Eltwise"; }
  int MinBottomBlobs() const override { return 2; }
  int ExactNumTopBlobs() const override { return 1; }

  void LayerSetUp(const std::vector<Shape>& bottom) override {
    const ProtoNode& ep = this->param().child("eltwise_param");
    const std::string op = ep.get_enum("operation", "SUM");
    if (op == "PROD" || op == "0") op_ = PROD;
    else if (op == "SUM" || op == "1") op_ = SUM;
    else if (op == "MAX" || op == "2") op_ = MAX;
    else throw LayerError("Eltwise: unknown operation '" + op + "' (use PROD, SUM or MAX)");
    std::vector<double> coeff = ep.get_floats("coeff");
    if (!coeff.empty() && coeff.size() != bottom.size()) {
      std::ostringstream os;
      os << "Eltwise layer takes one coefficient per bottom blob: got " << coeff.size()
         << " coeff for " << bottom.size() << " inputs";
      throw LayerError(os.str());
    }
    if (op_ == PROD && !coeff.empty())
      throw LayerError("Eltwise layer only takes coefficients for summation (operation SUM)");
    coeffs_.assign(bottom.size(), Dtype(1));
    for (size_t i = 0; i < coeff.size(); ++i) coeffs_[i] = static_cast<Dtype>(coeff[i]);
    stable_prod_grad_ = ep.get_bool("stable_prod_grad", true);
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    blobs->clear();
    for (size_t i = 1; i < bottom.size(); ++i) {
      if (bottom[i] != bottom[0]) {
        throw LayerError("Eltwise: all inputs must have the same shape; input 0 is " +
                         shape_str(bottom[0]) + ", input " + std::to_string(i) + " is " +
                         shape_str(bottom[i]));
      }
    }
    top->assign(1, bottom[0]);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const int64_t n = top[0]->count();
    Dtype* y = top[0]->data;
    switch (op_) {
      case PROD: {
        const Dtype* a = bottom[0]->data;
        const Dtype* b = bottom[1]->data;
        for (int64_t k = 0; k < n; ++k) y[k] = a[k] * b[k];
        for (size_t i = 2; i < bottom.size(); ++i) {
          const Dtype* c = bottom[i]->data;
          for (int64_t k = 0; k < n; ++k) y[k] *= c[k];
        }
        break;
      }
      case SUM: {
        std::fill(y, y + n, Dtype(0));
        for (size_t i = 0; i < bottom.size(); ++i) {
          const Dtype* c = bottom[i]->data;
          const Dtype w = coeffs_[i];
          for (int64_t k = 0; k < n; ++k) y[k] += w * c[k];
        }
        break;
      }
      case MAX: {
        mask_.assign(static_cast<size_t>(n), -1);
        const Dtype* a = bottom[0]->data;
        const Dtype* b = bottom[1]->data;
        for (int64_t k = 0; k < n; ++k) {
          if (a[k] > b[k]) {
            y[k] = a[k];
            mask_[k] = 0;
          } else {
            y[k] = b[k];
            mask_[k] = 1;
          }
        }
        for (size_t i = 2; i < bottom.size(); ++i) {
          const Dtype* c = bottom[i]->data;
          for (int64_t k = 0; k < n; ++k) {
            if (c[k] > y[k]) {
              y[k] = c[k];
              mask_[k] = static_cast<int>(i);
            }
          }
        }
        break;
      }
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    const int64_t n = top[0]->count();
    const Dtype* ty = top[0]->data;
    const Dtype* tdiff = top[0]->diff;
    if (op_ == MAX && mask_.size() != static_cast<size_t>(n)) {
      throw LayerError("Eltwise MAX: backward called without a forward pass");
    }
    for (size_t i = 0; i < bottom.size(); ++i) {
      if (!propagate_down[i] || !bottom[i]->diff) continue;
      Dtype* bd = bottom[i]->diff;
      switch (op_) {
        case PROD: {
          if (stable_prod_grad_) {
            bool initialized = false;
            for (size_t j = 0; j < bottom.size(); ++j) {
              if (j == i) continue;
              const Dtype* c = bottom[j]->data;
              if (!initialized) {
                copy_n(c, n, bd);
                initialized = true;
              } else {
                for (int64_t k = 0; k < n; ++k) bd[k] *= c[k];
              }
            }
          } else {
            const Dtype* x = bottom[i]->data;
            for (int64_t k = 0; k < n; ++k) bd[k] = ty[k] / x[k];
          }
          for (int64_t k = 0; k < n; ++k) bd[k] *= tdiff[k];
          break;
        }
        case SUM: {
          const Dtype w = coeffs_[i];
          for (int64_t k = 0; k < n; ++k) bd[k] = w * tdiff[k];
          break;
        }
        case MAX: {
          const int idx = static_cast<int>(i);
          for (int64_t k = 0; k < n; ++k) bd[k] = mask_[k] == idx ? tdiff[k] : Dtype(0);
          break;
        }
      }
    }
  }

 private:
  Op op_ = SUM;
  std::vector<Dtype> coeffs_;
  bool stable_prod_grad_ = true;
  std::vector<int> mask_;
};

// ---------------------------------------------------------------------------
// Flatten: merges axes [axis, end_axis] into one.
template <typename Dtype>
class FlattenLayer : public Layer<Dtype> {
 public:
  explicit FlattenLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Flatten"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    need_bottoms("Flatten", bottom, 1);
    blobs->clear();
    const ProtoNode& fp = this->param().child("flatten_param");
    const int num_axes = static_cast<int>(bottom[0].size());
    const int start = canonical_axis(static_cast<int>(fp.get_int("axis", 1)), num_axes);
    const int end = canonical_axis(static_cast<int>(fp.get_int("end_axis", -1)), num_axes);
    if (end + 1 < start) {
      std::ostringstream os;
      os << "Flatten: end_axis (" << end << ") must not precede axis (" << start
         << ") for input " << shape_str(bottom[0]);
      throw LayerError(os.str());
    }
    Shape out(bottom[0].begin(), bottom[0].begin() + start);
    out.push_back(shape_count(bottom[0], start, end + 1));
    out.insert(out.end(), bottom[0].begin() + end + 1, bottom[0].end());
    top->assign(1, out);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    copy_n(bottom[0]->data, bottom[0]->count(), top[0]->data);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (propagate_down[0] && bottom[0]->diff)
      copy_n(top[0]->diff, bottom[0]->count(), bottom[0]->diff);
  }
};

// ---------------------------------------------------------------------------
// Reshape: reshape_param { shape { dim: ... } axis num_axes }; 0 copies the
// corresponding bottom dimension, -1 is inferred.
template <typename Dtype>
class ReshapeLayer : public Layer<Dtype> {
 public:
  explicit ReshapeLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Reshape"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }

  // Caffe's ReshapeLayer::LayerSetUp: classify the requested dims, once.
  void LayerSetUp(const std::vector<Shape>&) override {
    const ProtoNode& rp = this->param().child("reshape_param");
    dims_ = rp.child("shape").get_ints("dim");
    const std::vector<int64_t>& dims = dims_;
    for (size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == 0) {
        copy_axes_.push_back(static_cast<int>(i));
      } else if (dims[i] == -1) {
        if (inferred_axis_ != -1)
          throw LayerError("Reshape: new shape [" + join_ints(dims) +
                           "] contains multiple -1 dims; at most a single (1) value of -1 may be "
                           "specified");
        inferred_axis_ = static_cast<int>(i);
      } else if (dims[i] < 0) {
        throw LayerError("Reshape: new shape [" + join_ints(dims) +
                         "] has a negative dim other than -1");
      } else {
        constant_count_ *= dims[i];
      }
    }
    axis_param_ = rp.get_int("axis", 0);
    num_axes_param_ = rp.get_int("num_axes", -1);
    if (num_axes_param_ < -1) throw LayerError("Reshape: num_axes must be >= 0, or -1 for all");
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    blobs->clear();
    const std::vector<int64_t>& dims = dims_;
    const std::vector<int>& copy_axes = copy_axes_;
    const int inferred_axis = inferred_axis_;
    const int64_t constant_count = constant_count_;
    const Shape& in = bottom[0];
    const int in_axes = static_cast<int>(in.size());
    const int64_t input_start = axis_param_;
    const int64_t start = input_start >= 0 ? input_start : in_axes + input_start + 1;
    if (start < 0 || start > in_axes) {
      std::ostringstream os;
      os << "Reshape: axis " << input_start << " out of range for " << in_axes
         << "-D input blob " << shape_str(in);
      throw LayerError(os.str());
    }
    const int64_t num_axes = num_axes_param_;
    const int64_t end = num_axes == -1 ? in_axes : start + num_axes;
    if (end > in_axes) {
      std::ostringstream os;
      os << "Reshape: end_axis = axis + num_axes = " << end << " is out of range for input "
         << shape_str(in);
      throw LayerError(os.str());
    }
    Shape out(in.begin(), in.begin() + start);
    out.insert(out.end(), dims.begin(), dims.end());
    out.insert(out.end(), in.begin() + end, in.end());
    for (int c : copy_axes) {
      if (in_axes <= start + c) {
        throw LayerError("Reshape: new shape [" + join_ints(dims) +
                         "] contains a 0, but there was no corresponding bottom axis to copy in " +
                         shape_str(in));
      }
      out[start + c] = in[start + c];
    }
    const int64_t in_count = shape_count(in);
    if (inferred_axis >= 0) {
      int64_t explicit_count = constant_count * shape_count(in, 0, start) * shape_count(in, end);
      for (int c : copy_axes) explicit_count *= out[start + c];
      if (explicit_count == 0 || in_count % explicit_count != 0) {
        std::ostringstream os;
        os << "Reshape: bottom count (" << in_count
           << ") must be divisible by the product of the specified dimensions (" << explicit_count
           << "); input " << shape_str(in) << ", shape [" << join_ints(dims) << "]";
        throw LayerError(os.str());
      }
      out[start + inferred_axis] = in_count / explicit_count;
    }
    if (shape_count(out) != in_count) {
      std::ostringstream os;
      os << "Reshape: output count must match input count; input " << shape_str(in) << " ("
         << in_count << ") cannot become " << shape_str(out) << " (" << shape_count(out) << ")";
      throw LayerError(os.str());
    }
    top->assign(1, out);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    copy_n(bottom[0]->data, bottom[0]->count(), top[0]->data);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (propagate_down[0] && bottom[0]->diff)
      copy_n(top[0]->diff, bottom[0]->count(), bottom[0]->diff);
  }

 private:
  std::vector<int64_t> dims_;
  std::vector<int> copy_axes_;
  int inferred_axis_ = -1;
  int64_t constant_count_ = 1;
  int64_t axis_param_ = 0, num_axes_param_ = -1;
};

// ---------------------------------------------------------------------------
// Crop: crops bottom 0 to the shape of bottom 1 on axes >= `axis`, starting
// at `offset` (one value for all axes, or one per cropped axis).
template <typename Dtype>
class CropLayer : public Layer<Dtype> {
 public:
  explicit CropLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Crop"; }
  int ExactNumBottomBlobs() const override { return 2; }
  int ExactNumTopBlobs() const override { return 1; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    need_bottoms("Crop", bottom, 2);
    blobs->clear();
    const ProtoNode& cp = this->param().child("crop_param");
    const int input_dim = static_cast<int>(bottom[0].size());
    const int start = canonical_axis(static_cast<int>(cp.get_int("axis", 2)), input_dim);
    const std::vector<int64_t> offset = cp.get_ints("offset");
    if (offset.size() > 1 && start + static_cast<int>(offset.size()) != input_dim) {
      std::ostringstream os;
      os << "Crop: number of offset values specified (" << offset.size()
         << ") must be equal to the number of dimensions following axis (" << input_dim - start
         << ") for input " << shape_str(bottom[0]);
      throw LayerError(os.str());
    }
    if (static_cast<int>(bottom[1].size()) != input_dim) {
      throw LayerError("Crop: the reference input must have the same number of axes as the data; "
                       "data " + shape_str(bottom[0]) + ", reference " + shape_str(bottom[1]));
    }
    Shape out = bottom[0];
    offsets_.assign(input_dim, 0);
    for (int i = start; i < input_dim; ++i) {
      int64_t off = 0;
      if (offset.size() == 1) off = offset[0];
      else if (offset.size() > 1) off = offset[i - start];
      if (off < 0 || bottom[0][i] - off < bottom[1][i]) {
        std::ostringstream os;
        os << "Crop: the crop for dimension " << i << " is out-of-bounds with size "
           << bottom[1][i] << " and offset " << off << " (data " << shape_str(bottom[0])
           << ", reference " << shape_str(bottom[1]) << ")";
        throw LayerError(os.str());
      }
      out[i] = bottom[1][i];
      offsets_[i] = off;
    }
    top->assign(1, out);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    crop_copy(bottom[0]->shape, top[0]->shape, bottom[0]->data, top[0]->data, true);
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (propagate_down[0] && bottom[0]->diff) {
      std::fill(bottom[0]->diff, bottom[0]->diff + bottom[0]->count(), Dtype(0));
      crop_copy(bottom[0]->shape, top[0]->shape, top[0]->diff, bottom[0]->diff, false);
    }
    // Caffe never writes a gradient for the reference input: it is zero.
    if (propagate_down.size() > 1 && propagate_down[1] && bottom[1]->diff)
      std::fill(bottom[1]->diff, bottom[1]->diff + bottom[1]->count(), Dtype(0));
  }

 private:
  // Copies every innermost row of the top window; forward: bottom -> top,
  // backward: top -> bottom.
  void crop_copy(const Shape& bshape, const Shape& tshape, const Dtype* src, Dtype* dst,
                 bool forward) const {
    const int nd = static_cast<int>(tshape.size());
    if (nd == 0) return;
    const int64_t rows = shape_count(tshape, 0, nd - 1);
    const int64_t row_len = tshape[nd - 1];
    std::vector<int64_t> idx(nd, 0);
    for (int64_t r = 0; r < rows; ++r) {
      // idx[0..nd-2] is the row index in top coordinates.
      int64_t b_off = 0, t_off = 0;
      for (int d = 0; d < nd; ++d) {
        b_off = b_off * bshape[d] + (d < nd - 1 ? idx[d] : 0) + offsets_[d];
        t_off = t_off * tshape[d] + (d < nd - 1 ? idx[d] : 0);
      }
      if (forward) copy_n(src + b_off, row_len, dst + t_off);
      else copy_n(src + t_off, row_len, dst + b_off);
      for (int d = nd - 2; d >= 0; --d) {
        if (++idx[d] < tshape[d]) break;
        idx[d] = 0;
      }
    }
  }

  std::vector<int64_t> offsets_;
};

// ---------------------------------------------------------------------------
// Tile: repeats the blob `tiles` times along `axis`.
template <typename Dtype>
class TileLayer : public Layer<Dtype> {
 public:
  explicit TileLayer(const ProtoNode& p) : Layer<Dtype>(p) {}
  const char* type() const override { return "Tile"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }

  void LayerSetUp(const std::vector<Shape>&) override {
    const ProtoNode& tp = this->param().child("tile_param");
    axis_param_ = static_cast<int>(tp.get_int("axis", 1));
    if (!tp.has("tiles")) throw LayerError("Tile: number of tiles must be specified (tile_param { tiles: N })");
    tiles_ = tp.get_int("tiles", 0);
    if (tiles_ <= 0) throw LayerError("Tile: number of tiles must be positive, got " + std::to_string(tiles_));
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    blobs->clear();
    axis_ = canonical_axis(axis_param_, static_cast<int>(bottom[0].size()));
    Shape out = bottom[0];
    out[axis_] *= tiles_;
    top->assign(1, out);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const int64_t outer = shape_count(bottom[0]->shape, 0, axis_);
    const int64_t inner = shape_count(bottom[0]->shape, axis_);
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    for (int64_t i = 0; i < outer; ++i) {
      for (int64_t t = 0; t < tiles_; ++t) {
        copy_n(x, inner, y);
        y += inner;
      }
      x += inner;
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!propagate_down[0] || !bottom[0]->diff) return;
    const int64_t outer = shape_count(bottom[0]->shape, 0, axis_);
    const int64_t inner = shape_count(bottom[0]->shape, axis_);
    const Dtype* ty = top[0]->diff;
    Dtype* bd = bottom[0]->diff;
    for (int64_t i = 0; i < outer; ++i) {
      copy_n(ty, inner, bd);
      ty += inner;
      for (int64_t t = 1; t < tiles_; ++t) {
        for (int64_t k = 0; k < inner; ++k) bd[k] += ty[k];
        ty += inner;
      }
      bd += inner;
    }
  }

 private:
  int axis_ = 1;
  int64_t tiles_ = 1;
  int axis_param_ = 1;
};

CAFFEDATA_REGISTER_LAYER("Concat", ConcatLayer)
CAFFEDATA_REGISTER_LAYER("Slice", SliceLayer)
CAFFEDATA_REGISTER_LAYER("Split", SplitLayer)
CAFFEDATA_REGISTER_LAYER("Eltwise", EltwiseLayer)
CAFFEDATA_REGISTER_LAYER("Flatten", FlattenLayer)
CAFFEDATA_REGISTER_LAYER("Reshape", ReshapeLayer)
CAFFEDATA_REGISTER_LAYER("Crop", CropLayer)
CAFFEDATA_REGISTER_LAYER("Tile", TileLayer)

}  // namespace
}  // namespace caffedata
