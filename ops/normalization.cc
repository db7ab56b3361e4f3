// Normalisation layers with Caffe 1.0 semantics: LRN (ACROSS_CHANNELS and
// WITHIN_CHANNEL), Dropout, MVN and BatchNorm.
//
// The arithmetic follows Caffe's CPU code step by step (the running channel
// sum of LRN, the E((X-EX)^2) variance of MVN and BatchNorm, MVN's eps added
// after the square root, BatchNorm's scale factor blob), so float results
// agree with Caffe's to rounding.
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "layer.h"
#include "layer_util.h"
#include "powx.h"

namespace caffedata {
namespace {

using namespace layer_util;  // NOLINT

void expect_one_bottom(const char* layer, const std::vector<Shape>& bottom) {
  if (bottom.size() != 1) {
    throw LayerError(std::string(layer) + " takes exactly 1 bottom, got " +
                     std::to_string(bottom.size()));
  }
}

// out[i] = scale[i]^p * factor[i], as Caffe's caffe_powx then caffe_mul (in place
// is fine: out may be factor).  float goes through powx_float (powf's bits).
void powers_times(int64_t count, const float* scale, float p, const float* factor, float* out) {
  constexpr int64_t kChunk = 2048;
  const int threads = item_threads(count);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    float powers[kChunk];
    const int64_t len = std::min(kChunk, count - begin);
    powx_float(len, scale + begin, p, powers);
    for (int64_t j = 0; j < len; ++j) out[begin + j] = powers[j] * factor[begin + j];
  }
}

void powers_times(int64_t count, const double* scale, double p, const double* factor, double* out) {
  const int threads = item_threads(count);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < count; ++i) out[i] = std::pow(scale[i], p) * factor[i];
}

// ---------------------------------------------------------------------------
// LRN.
//  ACROSS_CHANNELS: y = x * (k + alpha/n * sum_{window of n channels} x^2)^-beta
//  WITHIN_CHANNEL:  y = x * (1 + alpha * avgpool_{n x n, pad (n-1)/2}(x^2))^-beta
// Caffe builds WITHIN_CHANNEL from Split, Power(2), AVE Pooling (whose divisor
// counts the padded positions inside [-pad, H+pad)), Power(-beta, alpha, 1) and
// Eltwise PROD; k is not used there.  The code below does the same steps.
template <typename Dtype>
class LRNLayer : public Layer<Dtype> {
 public:
  explicit LRNLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& q = p.child("lrn_param");
    size_ = static_cast<int>(q.get_int("local_size", 5));
    alpha_ = proto_float(q, "alpha", 1.f);
    beta_ = proto_float(q, "beta", 0.75f);
    k_ = proto_float(q, "k", 1.f);
    const std::string region = q.get_enum("norm_region", "ACROSS_CHANNELS");
    if (region == "ACROSS_CHANNELS" || region == "0") {
      within_ = false;
    } else if (region == "WITHIN_CHANNEL" || region == "1") {
      within_ = true;
    } else {
      throw LayerError("LRN: unknown norm_region '" + region +
                       "' (expected ACROSS_CHANNELS or WITHIN_CHANNEL)");
    }
    if (size_ <= 0 || size_ % 2 == 0) {
      throw LayerError("LRN only supports odd values for local_size, got " +
                       std::to_string(size_));
    }
    pre_pad_ = (size_ - 1) / 2;
  }
  const char* type() const override { return "LRN"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    expect_one_bottom("LRN", bottom);
    if (bottom[0].size() != 4) {
      throw LayerError("LRN: input must have 4 axes, corresponding to (num, channels, height, "
                       "width); got shape " + shape_str(bottom[0]));
    }
    blobs->clear();
    top->assign(1, bottom[0]);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    set_dims(bottom[0]->shape);
    if (within_) {
      WithinForward(bottom[0]->data, top[0]->data);
    } else {
      AcrossForward(bottom[0]->data, top[0]->data);
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    set_dims(bottom[0]->shape);
    if (within_) {
      // Recompute the intermediate blobs (the layer may be fresh).
      std::vector<Dtype> tmp(bottom[0]->count());
      WithinForward(bottom[0]->data, tmp.data());
      WithinBackward(top[0]->diff, bottom[0]->data, bottom[0]->diff);
    } else {
      // scale_ is recomputed from the bottom exactly as in Forward.
      std::vector<Dtype> tmp(bottom[0]->count());
      AcrossForward(bottom[0]->data, tmp.data());
      AcrossBackward(tmp.data(), top[0]->diff, bottom[0]->data, bottom[0]->diff);
    }
  }

 private:
  void set_dims(const Shape& s) {
    num_ = s[0];
    channels_ = s[1];
    height_ = s[2];
    width_ = s[3];
  }

  void AcrossForward(const Dtype* x, Dtype* y) {
    const int64_t hw = height_ * width_;
    const int64_t count = num_ * channels_ * hw;
    scale_.assign(count, k_);
    std::vector<Dtype> padded((channels_ + size_ - 1) * hw, Dtype(0));
    const Dtype alpha_over_size = alpha_ / size_;
    Dtype* sq = padded.data() + pre_pad_ * hw;
    for (int64_t n = 0; n < num_; ++n) {
      const Dtype* xn = x + n * channels_ * hw;
      Dtype* sc = scale_.data() + n * channels_ * hw;
      for (int64_t i = 0; i < channels_ * hw; ++i) sq[i] = xn[i] * xn[i];
      // first channel: sum over the first size_ padded channels
      for (int c = 0; c < size_; ++c) {
        const Dtype* ps = padded.data() + c * hw;
        for (int64_t i = 0; i < hw; ++i) sc[i] += alpha_over_size * ps[i];
      }
      // the rest: a running window sum
      for (int64_t c = 1; c < channels_; ++c) {
        Dtype* cur = sc + c * hw;
        const Dtype* prev = sc + (c - 1) * hw;
        const Dtype* head = padded.data() + (c + size_ - 1) * hw;
        const Dtype* tail = padded.data() + (c - 1) * hw;
        for (int64_t i = 0; i < hw; ++i) {
          Dtype v = prev[i];
          v += alpha_over_size * head[i];
          v += -alpha_over_size * tail[i];
          cur[i] = v;
        }
      }
    }
    powers_times(count, scale_.data(), -beta_, x, y);  // the powers are most of LRN's time
  }

  void AcrossBackward(const Dtype* top_data, const Dtype* top_diff, const Dtype* x,
                      Dtype* bottom_diff) {
    const int64_t hw = height_ * width_;
    const int64_t count = num_ * channels_ * hw;
    std::vector<Dtype> padded_ratio((channels_ + size_ - 1) * hw, Dtype(0));
    std::vector<Dtype> accum(hw), accum_times_bottom(hw);
    const Dtype cache_ratio_value = 2. * alpha_ * beta_ / size_;
    powers_times(count, scale_.data(), -beta_, top_diff, bottom_diff);
    const int inverse_pre_pad = size_ - (size_ + 1) / 2;
    Dtype* ratio = padded_ratio.data() + inverse_pre_pad * hw;
    for (int64_t n = 0; n < num_; ++n) {
      const int64_t off = n * channels_ * hw;
      for (int64_t i = 0; i < channels_ * hw; ++i) {
        ratio[i] = top_diff[off + i] * top_data[off + i];
        ratio[i] = ratio[i] / scale_[off + i];
      }
      std::fill(accum.begin(), accum.end(), Dtype(0));
      for (int c = 0; c < size_ - 1; ++c) {
        const Dtype* pr = padded_ratio.data() + c * hw;
        for (int64_t i = 0; i < hw; ++i) accum[i] += pr[i];
      }
      for (int64_t c = 0; c < channels_; ++c) {
        const Dtype* head = padded_ratio.data() + (c + size_ - 1) * hw;
        for (int64_t i = 0; i < hw; ++i) accum[i] += head[i];
        const Dtype* xc = x + off + c * hw;
        Dtype* dc = bottom_diff + off + c * hw;
        for (int64_t i = 0; i < hw; ++i) {
          accum_times_bottom[i] = xc[i] * accum[i];
          dc[i] += -cache_ratio_value * accum_times_bottom[i];
        }
        const Dtype* tail = padded_ratio.data() + c * hw;
        for (int64_t i = 0; i < hw; ++i) accum[i] += Dtype(-1) * tail[i];
      }
    }
  }

  // AVE pooling, kernel size_, stride 1, pad pre_pad_ (output size == input
  // size); Caffe's divisor is the window clipped to [-pad, H+pad), so padded
  // positions count.
  template <typename F>
  void for_each_window(F f) const {
    for (int64_t ph = 0; ph < height_; ++ph) {
      for (int64_t pw = 0; pw < width_; ++pw) {
        int64_t hstart = ph - pre_pad_, wstart = pw - pre_pad_;
        int64_t hend = std::min<int64_t>(hstart + size_, height_ + pre_pad_);
        int64_t wend = std::min<int64_t>(wstart + size_, width_ + pre_pad_);
        const int64_t pool_size = (hend - hstart) * (wend - wstart);
        hstart = std::max<int64_t>(hstart, 0);
        wstart = std::max<int64_t>(wstart, 0);
        hend = std::min<int64_t>(hend, height_);
        wend = std::min<int64_t>(wend, width_);
        f(ph * width_ + pw, hstart, hend, wstart, wend, pool_size);
      }
    }
  }

  void WithinForward(const Dtype* x, Dtype* y) {
    const int64_t hw = height_ * width_;
    const int64_t count = num_ * channels_ * hw;
    square_.resize(count);
    pool_.assign(count, Dtype(0));
    power_.resize(count);
    for (int64_t i = 0; i < count; ++i) square_[i] = std::pow(x[i], Dtype(2));
    for (int64_t nc = 0; nc < num_ * channels_; ++nc) {
      const Dtype* in = square_.data() + nc * hw;
      Dtype* out = pool_.data() + nc * hw;
      for_each_window([&](int64_t o, int64_t hs, int64_t he, int64_t ws, int64_t we,
                          int64_t pool_size) {
        for (int64_t h = hs; h < he; ++h) {
          for (int64_t w = ws; w < we; ++w) out[o] += in[h * width_ + w];
        }
        out[o] /= pool_size;
      });
    }
    // Power(power=-beta, scale=alpha, shift=1)
    const int threads = item_threads(count);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t i = 0; i < count; ++i) {
      Dtype v = pool_[i];
      if (alpha_ != Dtype(1)) v *= alpha_;
      v += Dtype(1);
      power_[i] = std::pow(v, -beta_);
    }
    for (int64_t i = 0; i < count; ++i) y[i] = x[i] * power_[i];
  }

  void WithinBackward(const Dtype* top_diff, const Dtype* x, Dtype* bottom_diff) {
    const int64_t hw = height_ * width_;
    const int64_t count = num_ * channels_ * hw;
    // Eltwise PROD backward: d(product_input) = power * dy, d(power) = x * dy
    std::vector<Dtype> dpower(count), dpool(count), dsquare(count, Dtype(0));
    for (int64_t i = 0; i < count; ++i) dpower[i] = x[i] * top_diff[i];
    // Power(-beta, alpha, 1) backward: dy/dx = diff_scale * y / (1 + alpha * x)
    const Dtype diff_scale = -beta_ * alpha_;
    if (diff_scale == Dtype(0)) {
      std::fill(dpool.begin(), dpool.end(), Dtype(0));
    } else {
      for (int64_t i = 0; i < count; ++i) {
        Dtype v = pool_[i];
        if (alpha_ != Dtype(1)) v *= alpha_;
        v += Dtype(1);
        v = power_[i] / v;
        if (diff_scale != Dtype(1)) v *= diff_scale;
        dpool[i] = dpower[i] * v;
      }
    }
    // AVE pooling backward
    for (int64_t nc = 0; nc < num_ * channels_; ++nc) {
      const Dtype* g = dpool.data() + nc * hw;
      Dtype* out = dsquare.data() + nc * hw;
      for_each_window([&](int64_t o, int64_t hs, int64_t he, int64_t ws, int64_t we,
                          int64_t pool_size) {
        for (int64_t h = hs; h < he; ++h) {
          for (int64_t w = ws; w < we; ++w) out[h * width_ + w] += g[o] / pool_size;
        }
      });
    }
    // Power(2) backward (2 * x * d) and Split backward (sum of both paths)
    for (int64_t i = 0; i < count; ++i) {
      const Dtype d_square_in = (Dtype(2) * x[i]) * dsquare[i];
      const Dtype d_product_in = power_[i] * top_diff[i];
      bottom_diff[i] = d_product_in + d_square_in;
    }
  }

  int size_, pre_pad_;
  Dtype alpha_, beta_, k_;
  bool within_;
  int64_t num_ = 0, channels_ = 0, height_ = 0, width_ = 0;
  std::vector<Dtype> scale_;                  // ACROSS_CHANNELS
  std::vector<Dtype> square_, pool_, power_;  // WITHIN_CHANNEL
};

// ---------------------------------------------------------------------------
// Dropout: TRAIN keeps each unit with probability 1 - p and scales it by
// 1 / (1 - p); TEST is the identity (Caffe 1.0 has no scale_train option).
template <typename Dtype>
class DropoutLayer : public Layer<Dtype> {
 public:
  explicit DropoutLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    threshold_ = proto_float(p.child("dropout_param"), "dropout_ratio", 0.5f);
    if (!(threshold_ >= 0.f && threshold_ < 1.f)) {
      std::ostringstream os;
      os << "Dropout: dropout_ratio must be in [0, 1), got " << threshold_;
      throw LayerError(os.str());
    }
    scale_ = 1. / (1. - threshold_);
  }
  const char* type() const override { return "Dropout"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    expect_one_bottom("Dropout", bottom);
    blobs->clear();
    top->assign(1, bottom[0]);
  }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase phase, std::mt19937* rng) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t n = bottom[0]->count();
    if (phase == Phase::TRAIN) {
      if (rng == nullptr) throw LayerError("Dropout: no random generator in TRAIN phase");
      // caffe_rng_bernoulli(count, 1 - p, mask)
      std::bernoulli_distribution keep(1. - static_cast<double>(threshold_));
      mask_.resize(n);
      for (int64_t i = 0; i < n; ++i) mask_[i] = keep(*rng) ? 1u : 0u;
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] * mask_[i] * scale_;
    } else {
      if (y != x) std::copy(x, x + n, y);
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t n = bottom[0]->count();
    if (phase == Phase::TRAIN) {
      if (static_cast<int64_t>(mask_.size()) != n) {
        throw LayerError("Dropout: backward in TRAIN phase without a matching TRAIN forward");
      }
      for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * mask_[i] * scale_;
    } else {
      if (dx != dy) std::copy(dy, dy + n, dx);
    }
  }

 private:
  float threshold_;
  Dtype scale_;
  std::vector<unsigned int> mask_;
};

// ---------------------------------------------------------------------------
// MVN: per (num, channel) -- or per num with across_channels -- subtract the
// mean and, with normalize_variance, divide by sqrt(E((X-EX)^2)) + eps.
// Caffe reshapes the top with the legacy 4-D accessors, so a 2-D bottom
// (N, C) gives a (N, C, 1, 1) top; that is kept.
template <typename Dtype>
class MVNLayer : public Layer<Dtype> {
 public:
  explicit MVNLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& q = p.child("mvn_param");
    normalize_variance_ = q.get_bool("normalize_variance", true);
    across_channels_ = q.get_bool("across_channels", false);
    eps_ = proto_float(q, "eps", 1e-9f);
  }
  const char* type() const override { return "MVN"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    expect_one_bottom("MVN", bottom);
    const Shape& s = bottom[0];
    if (s.size() > 4) {
      throw LayerError("MVN: Caffe's MVN uses the legacy (num, channels, height, width) "
                       "accessors and accepts at most 4 axes; got shape " + shape_str(s));
    }
    Shape t(4, 1);
    for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
    blobs->clear();
    top->assign(1, t);
  }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    int64_t num, dim;
    dims(*bottom[0], &num, &dim);
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    Forward_(x, y, num, dim);
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
                Phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    int64_t num, dim;
    dims(*bottom[0], &num, &dim);
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    if (normalize_variance_) {
      // Recompute the normalised output and sqrt(var) + eps from the bottom.
      std::vector<Dtype> y(bottom[0]->count());
      Forward_(bottom[0]->data, y.data(), num, dim);
      for (int64_t r = 0; r < num; ++r) {
        const Dtype* yr = y.data() + r * dim;
        const Dtype* gr = dy + r * dim;
        Dtype* dr = dx + r * dim;
        Dtype sum_gy = 0, sum_g = 0;
        for (int64_t j = 0; j < dim; ++j) sum_gy += yr[j] * gr[j];
        for (int64_t j = 0; j < dim; ++j) sum_g += gr[j];
        for (int64_t j = 0; j < dim; ++j) {
          Dtype v = sum_gy * yr[j];
          v = v + sum_g * Dtype(1);
          dr[j] = Dtype(1) * gr[j] + Dtype(-1. / dim) * v;
          dr[j] = dr[j] / variance_[r];
        }
      }
    } else {
      for (int64_t r = 0; r < num; ++r) {
        const Dtype* gr = dy + r * dim;
        Dtype* dr = dx + r * dim;
        Dtype mean = 0;
        for (int64_t j = 0; j < dim; ++j) mean += gr[j];
        mean *= Dtype(1. / dim);
        for (int64_t j = 0; j < dim; ++j) dr[j] = gr[j] + Dtype(-1) * mean;
      }
    }
  }

 private:
  void dims(const Blob<Dtype>& b, int64_t* num, int64_t* dim) const {
    *num = across_channels_ ? b.legacy_shape(0) : b.legacy_shape(0) * b.legacy_shape(1);
    *dim = *num ? b.count() / *num : 0;
  }
  void Forward_(const Dtype* x, Dtype* y, int64_t num, int64_t dim) {
    variance_.assign(num, Dtype(0));
    for (int64_t r = 0; r < num; ++r) {
      const Dtype* xr = x + r * dim;
      Dtype* yr = y + r * dim;
      // gemv with alpha = 1/dim: sum first, then scale
      Dtype mean = 0;
      for (int64_t j = 0; j < dim; ++j) mean += xr[j];
      mean *= Dtype(1. / dim);  // EX
      for (int64_t j = 0; j < dim; ++j) yr[j] = xr[j] + Dtype(-1) * mean;  // X - EX
      if (normalize_variance_) {
        Dtype var = 0;
        for (int64_t j = 0; j < dim; ++j) var += std::pow(yr[j], Dtype(2));
        var *= Dtype(1. / dim);
        Dtype sd = std::pow(var, Dtype(0.5));
        sd += eps_;
        variance_[r] = sd;
        for (int64_t j = 0; j < dim; ++j) yr[j] = yr[j] / sd;
      }
    }
  }

  bool normalize_variance_, across_channels_;
  Dtype eps_;
  std::vector<Dtype> variance_;  // sqrt(var) + eps per row
};

// ---------------------------------------------------------------------------
// BatchNorm: normalises each channel (axis 1) over all other axes.
// Blobs (running state, never learned): 0 = mean sum, 1 = variance sum, 2 =
// the scale factor; the stored estimates are blob / factor.  In TRAIN with
// batch statistics the forward updates them as Caffe does:
//   factor = factor * maf + 1;  mean = maf * mean + batch_mean;
//   var = maf * var + m/(m-1) * batch_var   (m = count / channels).
template <typename Dtype>
class BatchNormLayer : public Layer<Dtype> {
 public:
  explicit BatchNormLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& q = p.child("batch_norm_param");
    has_global_ = q.has("use_global_stats");
    global_ = q.get_bool("use_global_stats", false);
    maf_ = proto_float(q, "moving_average_fraction", 0.999f);
    eps_ = proto_float(q, "eps", 1e-5f);
  }
  const char* type() const override { return "BatchNorm"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  std::vector<int> BlobNumAxes(int) const override { return {1, 1, 1}; }
  std::vector<int> StateBlobs() const override { return {0, 1, 2}; }
  std::vector<Filler> BlobFillers() const override {
    return std::vector<Filler>(3, Filler::Constant(0, Filler::LAYER_DEFAULT));  // running state starts at 0
  }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    expect_one_bottom("BatchNorm", bottom);
    const Shape& s = bottom[0];
    if (s.empty()) throw LayerError("BatchNorm: bottom must have at least 1 axis");
    const int64_t channels = s.size() == 1 ? 1 : s[1];
    *blobs = {Shape{channels}, Shape{channels}, Shape{1}};
    top->assign(1, s);
  }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
               const std::vector<Blob<Dtype>*>& top, Phase phase, std::mt19937*) override {
    const bool use_global = has_global_ ? global_ : (phase == Phase::TEST);
    Normalize(*bottom[0], blobs, top[0]->data, use_global, /*update=*/true);
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
                Phase phase) override {
    if (!wants_diff(pd, bottom, 0)) return;
    const bool use_global = has_global_ ? global_ : (phase == Phase::TEST);
    const Blob<Dtype>& b = *bottom[0];
    const int64_t num = b.shape[0];
    const int64_t channels = b.num_axes() == 1 ? 1 : b.shape[1];
    const int64_t spatial = b.count() / (num * channels);
    // Recompute x_norm and sqrt(var + eps) exactly as the forward did, without
    // touching the running statistics again.
    std::vector<Dtype> xnorm(b.count());
    Normalize(b, blobs, xnorm.data(), use_global, /*update=*/false);
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    if (use_global) {
      for (int64_t n = 0; n < num; ++n) {
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t off = (n * channels + c) * spatial;
          for (int64_t i = 0; i < spatial; ++i) dx[off + i] = dy[off + i] / sd_[c];
        }
      }
      return;
    }
    // dE/dX = (dE/dY - mean(dE/dY) - mean(dE/dY . Y) . Y) ./ sqrt(var(X) + eps)
    std::vector<Dtype> sum_gy(channels, Dtype(0)), sum_g(channels, Dtype(0));
    for (int64_t n = 0; n < num; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t off = (n * channels + c) * spatial;
        Dtype a = 0, g = 0;
        for (int64_t i = 0; i < spatial; ++i) a += xnorm[off + i] * dy[off + i];
        for (int64_t i = 0; i < spatial; ++i) g += dy[off + i];
        sum_gy[c] += a;
        sum_g[c] += g;
      }
    }
    const Dtype inv_m = Dtype(-1. / (num * spatial));
    for (int64_t n = 0; n < num; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t off = (n * channels + c) * spatial;
        for (int64_t i = 0; i < spatial; ++i) {
          Dtype v = xnorm[off + i] * sum_gy[c];
          v = Dtype(1) * sum_g[c] + v;
          v = Dtype(1) * dy[off + i] + inv_m * v;
          dx[off + i] = v / sd_[c];
        }
      }
    }
  }

 private:
  // Writes the normalised bottom into `out` and leaves sqrt(var + eps) per
  // channel in sd_.  With update, batch statistics also update the blobs.
  void Normalize(const Blob<Dtype>& b, const std::vector<Blob<Dtype>*>& blobs, Dtype* out,
                 bool use_global, bool update) {
    if (blobs.size() != 3) throw LayerError("BatchNorm needs its 3 blobs (mean, variance, factor)");
    const int64_t num = b.shape[0];
    const int64_t channels = b.num_axes() == 1 ? 1 : b.shape[1];
    const int64_t spatial = (num * channels != 0) ? b.count() / (num * channels) : 0;
    const Dtype* x = b.data;
    std::vector<Dtype> mean(channels, Dtype(0)), var(channels, Dtype(0));
    if (use_global) {
      const Dtype f = blobs[2]->data[0];
      const Dtype scale_factor = f == 0 ? Dtype(0) : Dtype(1) / f;
      for (int64_t c = 0; c < channels; ++c) {
        mean[c] = scale_factor * blobs[0]->data[c];
        var[c] = scale_factor * blobs[1]->data[c];
      }
    } else {
      const Dtype inv = Dtype(1. / (num * spatial));
      for (int64_t n = 0; n < num; ++n) {
        for (int64_t c = 0; c < channels; ++c) {
          const Dtype* xr = x + (n * channels + c) * spatial;
          Dtype s = 0;
          for (int64_t i = 0; i < spatial; ++i) s += xr[i];
          mean[c] += inv * s;
        }
      }
    }
    for (int64_t n = 0; n < num; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t off = (n * channels + c) * spatial;
        for (int64_t i = 0; i < spatial; ++i) out[off + i] = x[off + i] + Dtype(-1) * mean[c];
      }
    }
    if (!use_global) {
      const Dtype inv = Dtype(1. / (num * spatial));
      for (int64_t n = 0; n < num; ++n) {
        for (int64_t c = 0; c < channels; ++c) {
          const Dtype* yr = out + (n * channels + c) * spatial;
          Dtype s = 0;
          for (int64_t i = 0; i < spatial; ++i) s += yr[i] * yr[i];
          var[c] += inv * s;
        }
      }
      if (update) {
        Dtype* factor = blobs[2]->data;
        factor[0] *= maf_;
        factor[0] += 1;
        const int64_t m = b.count() / channels;
        const Dtype bias_correction = m > 1 ? Dtype(m) / (m - 1) : Dtype(1);
        for (int64_t c = 0; c < channels; ++c) {
          blobs[0]->data[c] = Dtype(1) * mean[c] + maf_ * blobs[0]->data[c];
          blobs[1]->data[c] = bias_correction * var[c] + maf_ * blobs[1]->data[c];
        }
      }
    }
    sd_.resize(channels);
    for (int64_t c = 0; c < channels; ++c) sd_[c] = std::sqrt(var[c] + eps_);
    for (int64_t n = 0; n < num; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t off = (n * channels + c) * spatial;
        for (int64_t i = 0; i < spatial; ++i) out[off + i] = out[off + i] / sd_[c];
      }
    }
  }

  bool has_global_, global_;
  Dtype maf_, eps_;
  std::vector<Dtype> sd_;  // sqrt(var + eps) per channel
};

}  // namespace

CAFFEDATA_REGISTER_LAYER("LRN", LRNLayer)
CAFFEDATA_REGISTER_LAYER("Dropout", DropoutLayer)
CAFFEDATA_REGISTER_LAYER("MVN", MVNLayer)
CAFFEDATA_REGISTER_LAYER("BatchNorm", BatchNormLayer)

}  // namespace caffedata
