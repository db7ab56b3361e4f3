// Element-wise ("neuron") layers with Caffe 1.0 semantics: ReLU, Sigmoid,
// TanH, AbsVal, BNLL, ELU, Exp, Log, Power, Threshold and PReLU; Clip and
// Swish from BVLC's final master.
//
// Each follows the matching src/caffe/layers/<name>_layer.cpp of Caffe 1.0,
// including its special cases (BNLL's overflow threshold, Power's shortcuts
// for power == 0/1/2 and shift == 0, Exp/Log's base == -1 meaning e).
// Proto `float` parameters are rounded to float before use, as Caffe's
// generated accessors return float.
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "layer.h"
#include "layer_util.h"
#include "neuron_layer.h"

namespace caffedata {
namespace {

using namespace layer_util;  // NOLINT

// ReLU's loops, built per CPU (CAFFEDATA_CPU_CLONES), with Caffe's formulas as
// written. An AVX-512 build may fuse a multiply and an add; that gives the same
// bits here: forward, one of the two terms is always a zero; backward, the
// product slope * (0 or 1) is exact.

template <typename Dtype>
CAFFEDATA_CPU_CLONES void relu_forward(int64_t n, const Dtype* x, Dtype* y, Dtype slope) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::max(x[i], Dtype(0)) + slope * std::min(x[i], Dtype(0));
}

// dx = dy * ((x > 0) + slope * (x <= 0)), the comparisons as 0/1 selects (which
// vectorise; bool-to-float conversions do not). NaN: both 0, so dx = dy * 0.
template <typename Dtype>
CAFFEDATA_CPU_CLONES void relu_backward(int64_t n, const Dtype* x, const Dtype* dy, Dtype* dx, Dtype slope) {
  for (int64_t i = 0; i < n; ++i) {
    const Dtype positive = x[i] > 0 ? Dtype(1) : Dtype(0), nonpositive = x[i] <= 0 ? Dtype(1) : Dtype(0);
    dx[i] = dy[i] * (positive + slope * nonpositive);
  }
}

// ---------------------------------------------------------------------------
template <typename Dtype>
class ReLULayer : public NeuronLayer<Dtype> {
 public:
  explicit ReLULayer(const ProtoNode& p)
      : NeuronLayer<Dtype>(p),
        slope_(proto_float(p.child("relu_param"), "negative_slope", 0.f)) {}
  const char* type() const override { return "ReLU"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    relu_forward(bottom[0]->count(), bottom[0]->data, top[0]->data, slope_);
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    relu_backward(bottom[0]->count(), bottom[0]->data, top[0]->diff, bottom[0]->diff, slope_);
  }

 private:
  Dtype slope_;
};

// ---------------------------------------------------------------------------
template <typename Dtype>
class SigmoidLayer : public NeuronLayer<Dtype> {
 public:
  using NeuronLayer<Dtype>::NeuronLayer;
  const char* type() const override { return "Sigmoid"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    // Caffe's sigmoid(x) = 0.5 * tanh(0.5 * x) + 0.5 (overflow-free form).
    for (int64_t i = 0; i < n; ++i) y[i] = 0.5 * std::tanh(0.5 * x[i]) + 0.5;
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* y = top[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (1. - y[i]);
  }
};

// ---------------------------------------------------------------------------
template <typename Dtype>
class TanHLayer : public NeuronLayer<Dtype> {
 public:
  using NeuronLayer<Dtype>::NeuronLayer;
  const char* type() const override { return "TanH"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* y = top[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (1 - y[i] * y[i]);
  }
};

// ---------------------------------------------------------------------------
template <typename Dtype>
class AbsValLayer : public NeuronLayer<Dtype> {
 public:
  using NeuronLayer<Dtype>::NeuronLayer;
  const char* type() const override { return "AbsVal"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) y[i] = std::fabs(x[i]);
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    // caffe_cpu_sign: sign(0) == 0.
    for (int64_t i = 0; i < n; ++i) {
      const Dtype s = (Dtype(0) < x[i]) - (x[i] < Dtype(0));
      dx[i] = s * dy[i];
    }
  }
};

// ---------------------------------------------------------------------------
constexpr float kBNLLThreshold = 50.f;

template <typename Dtype>
class BNLLLayer : public NeuronLayer<Dtype> {
 public:
  using NeuronLayer<Dtype>::NeuronLayer;
  const char* type() const override { return "BNLL"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) {
      y[i] = x[i] > 0 ? x[i] + std::log(1. + std::exp(-x[i])) : std::log(1. + std::exp(x[i]));
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) {
      // The exponent is clipped at 50, so the gradient saturates at
      // exp(50)/(exp(50)+1) instead of overflowing.
      const Dtype e = std::exp(std::min(x[i], Dtype(kBNLLThreshold)));
      dx[i] = dy[i] * e / (e + 1.);
    }
  }
};

// ---------------------------------------------------------------------------
template <typename Dtype>
class ELULayer : public NeuronLayer<Dtype> {
 public:
  explicit ELULayer(const ProtoNode& p)
      : NeuronLayer<Dtype>(p), alpha_(proto_float(p.child("elu_param"), "alpha", 1.f)) {}
  const char* type() const override { return "ELU"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) {
      y[i] = std::max(x[i], Dtype(0)) + alpha_ * (std::exp(std::min(x[i], Dtype(0))) - Dtype(1));
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* y = top[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) {
      dx[i] = dy[i] * ((x[i] > 0) + (alpha_ + y[i]) * (x[i] <= 0));
    }
  }

 private:
  Dtype alpha_;
};

// ---------------------------------------------------------------------------
// Checks shared by Exp and Log: base must be -1 (meaning e) or > 0, and
// log(base) must be finite (and, for Log, non-zero).
template <typename Dtype>
Dtype checked_log_base(const char* layer, Dtype base) {
  if (base != Dtype(-1) && !(base > 0)) {
    std::ostringstream os;
    os << layer << ": base must be strictly positive (or -1 for e), got " << base;
    throw LayerError(os.str());
  }
  const Dtype log_base = (base == Dtype(-1)) ? Dtype(1) : std::log(base);
  if (std::isnan(log_base) || std::isinf(log_base)) {
    std::ostringstream os;
    os << layer << ": log(base) = log(" << base << ") = " << log_base << " is not finite";
    throw LayerError(os.str());
  }
  return log_base;
}

template <typename Dtype>
class ExpLayer : public NeuronLayer<Dtype> {
 public:
  explicit ExpLayer(const ProtoNode& p) : NeuronLayer<Dtype>(p) {
    const ProtoNode& e = p.child("exp_param");
    const Dtype base = proto_float(e, "base", -1.f);
    const Dtype scale = proto_float(e, "scale", 1.f);
    const Dtype shift = proto_float(e, "shift", 0.f);
    const Dtype log_base = checked_log_base<Dtype>("Exp", base);
    inner_scale_ = log_base * scale;
    outer_scale_ = (shift == Dtype(0))
                       ? Dtype(1)
                       : ((base != Dtype(-1)) ? std::pow(base, shift) : std::exp(shift));
  }
  const char* type() const override { return "Exp"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    if (inner_scale_ == Dtype(1)) {
      for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) y[i] = std::exp(Dtype(inner_scale_ * x[i]));
    }
    if (outer_scale_ != Dtype(1)) {
      for (int64_t i = 0; i < n; ++i) y[i] *= outer_scale_;
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* y = top[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) dx[i] = y[i] * dy[i];
    if (inner_scale_ != Dtype(1)) {
      for (int64_t i = 0; i < n; ++i) dx[i] *= inner_scale_;
    }
  }

 private:
  Dtype inner_scale_, outer_scale_;
};

// ---------------------------------------------------------------------------
template <typename Dtype>
class LogLayer : public NeuronLayer<Dtype> {
 public:
  explicit LogLayer(const ProtoNode& p) : NeuronLayer<Dtype>(p) {
    const ProtoNode& l = p.child("log_param");
    const Dtype base = proto_float(l, "base", -1.f);
    const Dtype log_base = checked_log_base<Dtype>("Log", base);
    base_scale_ = Dtype(1) / log_base;
    if (std::isnan(base_scale_) || std::isinf(base_scale_)) {
      std::ostringstream os;
      os << "Log: 1/log(base) = 1/log(" << base << ") is not finite (base must not be 1)";
      throw LayerError(os.str());
    }
    input_scale_ = proto_float(l, "scale", 1.f);
    input_shift_ = proto_float(l, "shift", 0.f);
    backward_num_scale_ = input_scale_ / log_base;
  }
  const char* type() const override { return "Log"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) {
      Dtype v = x[i];
      if (input_scale_ != Dtype(1)) v *= input_scale_;
      if (input_shift_ != Dtype(0)) v += input_shift_;
      v = std::log(v);
      if (base_scale_ != Dtype(1)) v *= base_scale_;
      y[i] = v;
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) {
      Dtype v = x[i];
      if (input_scale_ != Dtype(1)) v *= input_scale_;
      if (input_shift_ != Dtype(0)) v += input_shift_;
      v = std::pow(v, Dtype(-1));
      if (backward_num_scale_ != Dtype(1)) v *= backward_num_scale_;
      dx[i] = dy[i] * v;
    }
  }

 private:
  Dtype base_scale_, input_scale_, input_shift_, backward_num_scale_;
};

// ---------------------------------------------------------------------------
// y = (shift + scale * x) ^ power
template <typename Dtype>
class PowerLayer : public NeuronLayer<Dtype> {
 public:
  explicit PowerLayer(const ProtoNode& p) : NeuronLayer<Dtype>(p) {
    const ProtoNode& q = p.child("power_param");
    power_ = proto_float(q, "power", 1.f);
    scale_ = proto_float(q, "scale", 1.f);
    shift_ = proto_float(q, "shift", 0.f);
    diff_scale_ = power_ * scale_;
  }
  const char* type() const override { return "Power"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    // Special case where the input is ignored: scale or power is 0.
    if (diff_scale_ == Dtype(0)) {
      const Dtype value = (power_ == 0) ? Dtype(1) : std::pow(shift_, power_);
      std::fill(y, y + n, value);
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      Dtype v = x[i];
      if (scale_ != Dtype(1)) v *= scale_;
      if (shift_ != Dtype(0)) v += shift_;
      if (power_ != Dtype(1)) v = std::pow(v, power_);
      y[i] = v;
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* y = top[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    if (diff_scale_ == Dtype(0) || power_ == Dtype(1)) {
      std::fill(dx, dx + n, diff_scale_);
    } else if (power_ == Dtype(2)) {
      // dy/dx = 2 * scale * (shift + scale * x) = diff_scale * scale * x + diff_scale * shift
      const Dtype a = diff_scale_ * scale_;
      for (int64_t i = 0; i < n; ++i) dx[i] = a * x[i];
      if (shift_ != Dtype(0)) {
        const Dtype b = diff_scale_ * shift_;
        for (int64_t i = 0; i < n; ++i) dx[i] += b;
      }
    } else if (shift_ == Dtype(0)) {
      // dy/dx = power * y / x (Caffe's shortcut; undefined at x == 0)
      for (int64_t i = 0; i < n; ++i) dx[i] = (y[i] / x[i]) * power_;
    } else {
      // dy/dx = diff_scale * y / (shift + scale * x)
      for (int64_t i = 0; i < n; ++i) {
        Dtype v = x[i];
        if (scale_ != Dtype(1)) v *= scale_;
        if (shift_ != Dtype(0)) v += shift_;
        v = y[i] / v;
        if (diff_scale_ != Dtype(1)) v *= diff_scale_;
        dx[i] = v;
      }
    }
    if (diff_scale_ != Dtype(0)) {
      for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * dx[i];
    }
  }

 private:
  Dtype power_, scale_, shift_, diff_scale_;
};

// ---------------------------------------------------------------------------
template <typename Dtype>
class ThresholdLayer : public NeuronLayer<Dtype> {
 public:
  explicit ThresholdLayer(const ProtoNode& p)
      : NeuronLayer<Dtype>(p),
        threshold_(proto_float(p.child("threshold_param"), "threshold", 0.f)) {}
  const char* type() const override { return "Threshold"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] > threshold_) ? Dtype(1) : Dtype(0);
  }
  void Backward(const std::vector<Blob<Dtype>*>&, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    throw LayerError(
        "Threshold has no backward in Caffe (its gradient is zero almost everywhere and "
        "Caffe leaves Backward unimplemented); do not backpropagate through it, e.g. wrap "
        "its input in mx.sym.BlockGrad or use it only for inference");
  }

 private:
  Dtype threshold_;
};

// ---------------------------------------------------------------------------
// Clip (BVLC's final caffe.proto): y = max(min, min(x, max)); the gradient
// passes where min <= x <= max.  clip_param { min max } are required.
template <typename Dtype>
class ClipLayer : public NeuronLayer<Dtype> {
 public:
  explicit ClipLayer(const ProtoNode& p) : NeuronLayer<Dtype>(p) {
    const ProtoNode& cp = p.child("clip_param");
    if (!cp.has("min") || !cp.has("max"))
      throw LayerError("Clip needs clip_param { min: <float> max: <float> } (both are required)");
    min_ = proto_float(cp, "min", 0.f);
    max_ = proto_float(cp, "max", 0.f);
    if (min_ > max_) throw LayerError("Clip: clip_param.min must not exceed clip_param.max");
  }
  const char* type() const override { return "Clip"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) y[i] = std::max(min_, std::min(x[i], max_));
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (x[i] >= min_ && x[i] <= max_);
  }

 private:
  Dtype min_, max_;
};

// ---------------------------------------------------------------------------
// Swish (BVLC's final caffe.proto): y = x * sigmoid(beta * x), swish_param
// { beta (default 1) }; dy/dx = beta * y + sigmoid(beta * x) * (1 - beta * y).
template <typename Dtype>
class SwishLayer : public NeuronLayer<Dtype> {
 public:
  explicit SwishLayer(const ProtoNode& p)
      : NeuronLayer<Dtype>(p), beta_(proto_float(p.child("swish_param"), "beta", 1.f)) {}
  const char* type() const override { return "Swish"; }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i)
      y[i] = x[i] * (Dtype(0.5) * std::tanh(Dtype(0.5) * beta_ * x[i]) + Dtype(0.5));  // Caffe's sigmoid
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* x = bottom[0]->data;
    const Dtype* y = top[0]->data;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    for (int64_t i = 0; i < n; ++i) {
      const Dtype s = Dtype(0.5) * std::tanh(Dtype(0.5) * beta_ * x[i]) + Dtype(0.5);
      dx[i] = dy[i] * (beta_ * y[i] + s * (1 - beta_ * y[i]));
    }
  }

 private:
  Dtype beta_;
};

// ---------------------------------------------------------------------------
// PReLU: y = max(0, x) + a_c * min(0, x), with one learned slope per channel
// (axis 1) or a single shared slope.  Caffe's shared slope is a 0-axis blob;
// MXNet 1.9.1 reads a 0-dim shape as "unknown", so it is exposed as (1,).
template <typename Dtype>
class PReLULayer : public Layer<Dtype> {
 public:
  explicit PReLULayer(const ProtoNode& p)
      : Layer<Dtype>(p),
        channel_shared_(p.child("prelu_param").get_bool("channel_shared", false)) {}
  const char* type() const override { return "PReLU"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  std::vector<int> BlobNumAxes(int) const override { return {1}; }
  // Caffe's PReLU default: constant 0.25.
  std::vector<Filler> BlobFillers() const override {
    return {Filler::From(this->param().child("prelu_param"), "filler", Filler::Constant(0.25, Filler::LAYER_DEFAULT))};
  }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    if (bottom.size() != 1) {
      throw LayerError("PReLU takes exactly 1 bottom, got " + std::to_string(bottom.size()));
    }
    if (bottom[0].size() < 2) {
      throw LayerError("PReLU: number of axes of the bottom blob must be >= 2, got shape " +
                       shape_str(bottom[0]));
    }
    blobs->assign(1, Shape{channel_shared_ ? 1 : bottom[0][1]});
    top->assign(1, bottom[0]);
  }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    const Dtype* slope = blobs[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    const int64_t channels = bottom[0]->shape[1];
    const int64_t dim = shape_count(bottom[0]->shape, 2);
    const int64_t div = channel_shared_ ? channels : 1;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = (i / dim) % channels / div;
      y[i] = std::max(x[i], Dtype(0)) + slope[c] * std::min(x[i], Dtype(0));
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
                Phase) override {
    const Dtype* x = bottom[0]->data;
    const Dtype* slope = blobs[0]->data;
    const Dtype* dy = top[0]->diff;
    const int64_t n = bottom[0]->count();
    const int64_t channels = bottom[0]->shape[1];
    const int64_t dim = shape_count(bottom[0]->shape, 2);
    const int64_t div = channel_shared_ ? channels : 1;
    if (Dtype* dslope = blobs[0]->diff) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = (i / dim) % channels / div;
        dslope[c] += dy[i] * x[i] * (x[i] <= 0);
      }
    }
    if (wants_diff(pd, bottom, 0)) {
      Dtype* dx = bottom[0]->diff;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = (i / dim) % channels / div;
        dx[i] = dy[i] * ((x[i] > 0) + slope[c] * (x[i] <= 0));
      }
    }
  }

 private:
  bool channel_shared_;
};

}  // namespace

CAFFEDATA_REGISTER_LAYER("ReLU", ReLULayer)
CAFFEDATA_REGISTER_LAYER("Sigmoid", SigmoidLayer)
CAFFEDATA_REGISTER_LAYER("TanH", TanHLayer)
CAFFEDATA_REGISTER_LAYER("AbsVal", AbsValLayer)
CAFFEDATA_REGISTER_LAYER("BNLL", BNLLLayer)
CAFFEDATA_REGISTER_LAYER("ELU", ELULayer)
CAFFEDATA_REGISTER_LAYER("Exp", ExpLayer)
CAFFEDATA_REGISTER_LAYER("Log", LogLayer)
CAFFEDATA_REGISTER_LAYER("Power", PowerLayer)
CAFFEDATA_REGISTER_LAYER("Threshold", ThresholdLayer)
CAFFEDATA_REGISTER_LAYER("PReLU", PReLULayer)
CAFFEDATA_REGISTER_LAYER("Clip", ClipLayer)
CAFFEDATA_REGISTER_LAYER("Swish", SwishLayer)

}  // namespace caffedata
