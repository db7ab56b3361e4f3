// Scale and Bias layers with Caffe 1.0 semantics.
//
//   Bias:  top = bottom[0] + b      Scale: top = bottom[0] * s (+ b)
//
// b / s is either a learned blob (one bottom) or the second bottom.  Its
// shape must equal bottom[0]'s shape over axes [axis, axis + b.num_axes), and
// it is broadcast over the outer (before axis) and inner (after) axes.  With
// one bottom the blob spans `num_axes` axes from `axis` (-1: to the end; 0: a
// scalar).  Scale's bias_term adds a Bias blob after the scale blob, set up as
// Caffe's internal BiasLayer (axis = scale's axis; num_axes = scale's
// num_axes, or bottom[1]'s number of axes with two bottoms).
//
// Caffe's 0-axis (scalar) blobs are exposed with shape (1,), because MXNet
// 1.9.1 reads a 0-dim shape as "unknown"; the arithmetic is the same.
//
// BlobNumAxes() cannot see the bottoms themselves.  It reads the bottom count
// from num_bottoms() (the op's num_data, set by the glue); when that is unknown
// it assumes one bottom unless the layer text lists two `bottom:` fields (as a
// Caffe prototxt does).
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "layer.h"
#include "layer_util.h"

namespace caffedata {
namespace {

using namespace layer_util;  // NOLINT

// The broadcast geometry shared by Scale and Bias.
struct Broadcast {
  int axis = 0;           // first axis of bottom[0] the operand covers
  int operand_axes = 0;   // Caffe's number of axes of the operand (0 = scalar)
  Shape operand_shape;    // Caffe's operand shape (empty for a scalar)
  int64_t outer = 1, dim = 1, inner = 1;
};

// Caffe's LayerSetUp checks for a learned operand, then its shape.
Shape param_operand_shape(const char* layer, const Shape& b0, int axis_param, int num_axes) {
  const int nax = static_cast<int>(b0.size());
  int axis;
  try {
    axis = canonical_axis(axis_param, nax);
  } catch (const LayerError& e) {
    throw LayerError(std::string(layer) + ": " + e.what() + " (bottom[0] shape " + shape_str(b0) + ")");
  }
  if (num_axes < -1) {
    throw LayerError(std::string(layer) +
                     ": num_axes must be non-negative, or -1 to extend to the end of bottom[0]");
  }
  if (num_axes >= 0 && nax < axis + num_axes) {
    std::ostringstream os;
    os << layer << ": the " << (std::string(layer) == "Bias" ? "bias" : "scale")
       << " blob's shape extends past bottom[0]'s shape " << shape_str(b0)
       << " when applied starting with bottom[0] axis = " << axis << " (num_axes = " << num_axes
       << ")";
    throw LayerError(os.str());
  }
  const auto start = b0.begin() + axis;
  const auto end = num_axes == -1 ? b0.end() : start + num_axes;
  return Shape(start, end);
}

// Caffe's Reshape: where the operand sits in bottom[0].
Broadcast broadcast_geometry(const char* layer, const Shape& b0, const Shape& operand,
                             int axis_param) {
  Broadcast g;
  g.operand_shape = operand;
  g.operand_axes = static_cast<int>(operand.size());
  const int nax = static_cast<int>(b0.size());
  if (g.operand_axes == 0) {
    g.axis = 0;
  } else {
    try {
      g.axis = canonical_axis(axis_param, nax);
    } catch (const LayerError& e) {
      throw LayerError(std::string(layer) + ": " + e.what() + " (bottom[0] shape " +
                       shape_str(b0) + ")");
    }
  }
  const char* what = std::string(layer) == "Bias" ? "bias" : "scale";
  if (nax < g.axis + g.operand_axes) {
    std::ostringstream os;
    os << layer << ": the " << what << " blob's shape " << shape_str(operand)
       << " extends past bottom[0]'s shape " << shape_str(b0)
       << " when applied starting with bottom[0] axis = " << g.axis;
    throw LayerError(os.str());
  }
  for (int i = 0; i < g.operand_axes; ++i) {
    if (b0[g.axis + i] != operand[i]) {
      std::ostringstream os;
      os << layer << ": dimension mismatch between bottom[0]->shape(" << g.axis + i << ") = "
         << b0[g.axis + i] << " and " << what << "->shape(" << i << ") = " << operand[i]
         << " (bottom[0] " << shape_str(b0) << ", " << what << " " << shape_str(operand) << ")";
      throw LayerError(os.str());
    }
  }
  g.outer = shape_count(b0, 0, g.axis);
  g.dim = shape_count(operand);
  g.inner = shape_count(b0, g.axis + g.operand_axes);
  return g;
}

// Exposed blob shape: a scalar becomes (1,).
Shape exposed(const Shape& s) { return s.empty() ? Shape{1} : s; }

template <typename Dtype>
void add_bias(const Broadcast& g, const Dtype* x, const Dtype* b, Dtype* y) {
  for (int64_t n = 0; n < g.outer; ++n) {
    for (int64_t d = 0; d < g.dim; ++d) {
      const int64_t off = (n * g.dim + d) * g.inner;
      const Dtype v = b[d];
      for (int64_t i = 0; i < g.inner; ++i) y[off + i] = x[off + i] + v;
    }
  }
}

// db[d] (+)= sum over outer and inner of dy.
template <typename Dtype>
void bias_grad(const Broadcast& g, const Dtype* dy, Dtype* db, bool accumulate) {
  for (int64_t d = 0; d < g.dim; ++d) {
    Dtype s = 0;
    for (int64_t n = 0; n < g.outer; ++n) {
      const Dtype* r = dy + (n * g.dim + d) * g.inner;
      for (int64_t i = 0; i < g.inner; ++i) s += r[i];
    }
    db[d] = accumulate ? db[d] + s : s;
  }
}

// The bottom count: the glue's hint, else the `bottom:` fields of the text.
template <typename Dtype>
int bottom_count(const Layer<Dtype>& L) {
  return L.num_bottoms() >= 0 ? L.num_bottoms() : L.param().count("bottom");
}

// ---------------------------------------------------------------------------
template <typename Dtype>
class BiasLayer : public Layer<Dtype> {
 public:
  explicit BiasLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& q = p.child("bias_param");
    axis_ = static_cast<int>(q.get_int("axis", 1));
    num_axes_ = static_cast<int>(q.get_int("num_axes", 1));
  }
  const char* type() const override { return "Bias"; }
  int MinBottomBlobs() const override { return 1; }
  int MaxBottomBlobs() const override { return 2; }
  int ExactNumTopBlobs() const override { return 1; }
  // Caffe's Bias default: constant 0.
  std::vector<Filler> BlobFillers() const override {
    if (bottom_count(*this) >= 2) return {};
    return {Filler::From(this->param().child("bias_param"), "filler", Filler::Constant(0, Filler::LAYER_DEFAULT))};
  }
  std::vector<int> BlobNumAxes(int bottom0_axes) const override {
    if (bottom_count(*this) >= 2) return {};
    int n = num_axes_;
    if (n == -1) {
      const int a = axis_ < 0 ? axis_ + bottom0_axes : axis_;
      n = std::max(0, bottom0_axes - a);
    }
    return {std::max(1, n)};
  }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    if (bottom.empty() || bottom.size() > 2) {
      throw LayerError("Bias takes 1 or 2 bottoms, got " + std::to_string(bottom.size()));
    }
    blobs->clear();
    Shape operand;
    if (bottom.size() == 1) {
      operand = param_operand_shape("Bias", bottom[0], axis_, num_axes_);
      blobs->push_back(exposed(operand));
    } else {
      operand = bottom[1];
    }
    g_ = broadcast_geometry("Bias", bottom[0], operand, axis_);
    top->assign(1, bottom[0]);
  }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* b = bottom.size() > 1 ? bottom[1]->data : blobs[0]->data;
    add_bias(g_, bottom[0]->data, b, top[0]->data);
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
                Phase) override {
    const Dtype* dy = top[0]->diff;
    if (wants_diff(pd, bottom, 0) && bottom[0]->diff != dy) {
      std::copy(dy, dy + bottom[0]->count(), bottom[0]->diff);
    }
    if (bottom.size() > 1) {
      if (wants_diff(pd, bottom, 1)) bias_grad(g_, dy, bottom[1]->diff, false);
    } else if (!blobs.empty() && blobs[0]->diff) {
      bias_grad(g_, dy, blobs[0]->diff, true);
    }
  }

 private:
  int axis_, num_axes_;
  Broadcast g_;
};

// ---------------------------------------------------------------------------
template <typename Dtype>
class ScaleLayer : public Layer<Dtype> {
 public:
  explicit ScaleLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& q = p.child("scale_param");
    axis_ = static_cast<int>(q.get_int("axis", 1));
    num_axes_ = static_cast<int>(q.get_int("num_axes", 1));
    bias_term_ = q.get_bool("bias_term", false);
  }
  const char* type() const override { return "Scale"; }
  int MinBottomBlobs() const override { return 1; }
  int MaxBottomBlobs() const override { return 2; }
  int ExactNumTopBlobs() const override { return 1; }
  // Caffe's Scale defaults: the scale constant 1 (`filler`), the bias constant
  // 0 (`bias_filler`).  With two bottoms the scale is bottom 1: only the bias.
  std::vector<Filler> BlobFillers() const override {
    const ProtoNode& q = this->param().child("scale_param");
    std::vector<Filler> f;
    if (bottom_count(*this) < 2) f.push_back(Filler::From(q, "filler", Filler::Constant(1, Filler::LAYER_DEFAULT)));
    if (bias_term_) f.push_back(Filler::From(q, "bias_filler", Filler::Constant(0, Filler::LAYER_DEFAULT)));
    return f;
  }
  std::vector<int> BlobNumAxes(int bottom0_axes) const override {
    int n = num_axes_;
    if (n == -1) {
      const int a = axis_ < 0 ? axis_ + bottom0_axes : axis_;
      n = std::max(0, bottom0_axes - a);
    }
    n = std::max(1, n);
    if (bottom_count(*this) >= 2) {
      // The bias spans bottom[1]'s axes, unknown here; num_axes is the guess.
      return bias_term_ ? std::vector<int>{n} : std::vector<int>{};
    }
    return bias_term_ ? std::vector<int>{n, n} : std::vector<int>{n};
  }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    if (bottom.empty() || bottom.size() > 2) {
      throw LayerError("Scale takes 1 or 2 bottoms, got " + std::to_string(bottom.size()));
    }
    blobs->clear();
    Shape operand;
    int bias_num_axes;
    if (bottom.size() == 1) {
      operand = param_operand_shape("Scale", bottom[0], axis_, num_axes_);
      blobs->push_back(exposed(operand));
      bias_num_axes = num_axes_;
    } else {
      operand = bottom[1];
      bias_num_axes = static_cast<int>(bottom[1].size());
    }
    g_ = broadcast_geometry("Scale", bottom[0], operand, axis_);
    if (bias_term_) {
      Shape bias = param_operand_shape("Scale (bias_term)", bottom[0], axis_, bias_num_axes);
      bias_g_ = broadcast_geometry("Scale (bias_term)", bottom[0], bias, axis_);
      blobs->push_back(exposed(bias));
    }
    top->assign(1, bottom[0]);
  }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const bool scale_param = bottom.size() == 1;
    const Dtype* s = scale_param ? blobs[0]->data : bottom[1]->data;
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    for (int64_t n = 0; n < g_.outer; ++n) {
      for (int64_t d = 0; d < g_.dim; ++d) {
        const int64_t off = (n * g_.dim + d) * g_.inner;
        const Dtype v = s[d];
        for (int64_t i = 0; i < g_.inner; ++i) y[off + i] = x[off + i] * v;
      }
    }
    if (bias_term_) {
      const Dtype* b = blobs[scale_param ? 1 : 0]->data;
      add_bias(bias_g_, y, b, y);
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
                Phase) override {
    const bool scale_param = bottom.size() == 1;
    const Dtype* dy = top[0]->diff;
    const Dtype* x = bottom[0]->data;
    if (bias_term_) {
      Blob<Dtype>* b = blobs[scale_param ? 1 : 0];
      if (b->diff) bias_grad(bias_g_, dy, b->diff, true);
    }
    // d scale[d] = sum over outer, inner of dy * x
    Dtype* ds = nullptr;
    bool accumulate = true;
    if (scale_param) {
      ds = blobs[0]->diff;
    } else if (wants_diff(pd, bottom, 1)) {
      ds = bottom[1]->diff;
      accumulate = false;
    }
    if (ds) {
      for (int64_t d = 0; d < g_.dim; ++d) {
        Dtype acc = 0;
        for (int64_t n = 0; n < g_.outer; ++n) {
          const int64_t off = (n * g_.dim + d) * g_.inner;
          for (int64_t i = 0; i < g_.inner; ++i) acc += dy[off + i] * x[off + i];
        }
        ds[d] = accumulate ? ds[d] + acc : acc;
      }
    }
    if (wants_diff(pd, bottom, 0)) {
      const Dtype* s = scale_param ? blobs[0]->data : bottom[1]->data;
      Dtype* dx = bottom[0]->diff;
      for (int64_t n = 0; n < g_.outer; ++n) {
        for (int64_t d = 0; d < g_.dim; ++d) {
          const int64_t off = (n * g_.dim + d) * g_.inner;
          const Dtype v = s[d];
          for (int64_t i = 0; i < g_.inner; ++i) dx[off + i] = dy[off + i] * v;
        }
      }
    }
  }

 private:
  int axis_, num_axes_;
  bool bias_term_;
  Broadcast g_, bias_g_;
};

}  // namespace

CAFFEDATA_REGISTER_LAYER("Bias", BiasLayer)
CAFFEDATA_REGISTER_LAYER("Scale", ScaleLayer)

}  // namespace caffedata
