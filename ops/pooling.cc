// Pooling, as Caffe 1.0's pooling_layer.cpp: MAX and AVE (STOCHASTIC has no
// CPU implementation in Caffe), global_pooling, ceil rounding of the output
// size (or floor with BVLC master's round_mode: FLOOR), the rule that drops a last window starting inside the padding, and
// AVE's divisor counting the padded window (clipped to height + pad).
#include <algorithm>
#include <cfloat>
#include <sstream>

#include "layer.h"
#include "layer_util.h"
#include "math.h"

namespace caffedata {

template <typename Dtype>
class PoolingLayer : public Layer<Dtype> {
 public:
  explicit PoolingLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& pp = p.child("pooling_param");
    std::string m = pp.get_enum("pool", "MAX");
    if (m == "MAX" || m == "0") {
      max_ = true;
    } else if (m == "AVE" || m == "1") {
      max_ = false;
    } else if (m == "STOCHASTIC" || m == "2") {
      throw LayerError("pooling method STOCHASTIC is not supported (Caffe has no CPU implementation of it)");
    } else {
      throw LayerError("unknown pooling method '" + m + "' (MAX, AVE)");
    }
    global_ = pp.get_bool("global_pooling", false);
    if (global_) {
      if (pp.has("kernel_size") || pp.has("kernel_h") || pp.has("kernel_w"))
        throw LayerError("with global_pooling: true filter size cannot be specified");
    } else {
      if (pp.has("kernel_size") == (pp.has("kernel_h") || pp.has("kernel_w")))
        throw LayerError("filter size is kernel_size OR kernel_h and kernel_w; not both");
      if (!pp.has("kernel_size") && !(pp.has("kernel_h") && pp.has("kernel_w")))
        throw LayerError("for non-square filters both kernel_h and kernel_w are required");
      kh_ = pp.has("kernel_h") ? pp.get_int("kernel_h", 0) : pp.get_int("kernel_size", 0);
      kw_ = pp.has("kernel_w") ? pp.get_int("kernel_w", 0) : pp.get_int("kernel_size", 0);
      if (kh_ <= 0 || kw_ <= 0) throw LayerError("filter dimensions cannot be zero");
    }
    if (!pp.has("pad_h")) {
      ph_ = pw_ = pp.get_int("pad", 0);
    } else {
      ph_ = pp.get_int("pad_h", 0);
      pw_ = pp.get_int("pad_w", 0);
    }
    if (!pp.has("stride_h")) {
      sh_ = sw_ = pp.get_int("stride", 1);
    } else {
      sh_ = pp.get_int("stride_h", 1);
      sw_ = pp.get_int("stride_w", 1);
    }
    if (sh_ <= 0 || sw_ <= 0) throw LayerError("stride must be > 0");
    if (ph_ < 0 || pw_ < 0) throw LayerError("pad must be >= 0");
    if (global_ && (ph_ != 0 || pw_ != 0 || sh_ != 1 || sw_ != 1))
      throw LayerError("with global_pooling: true only pad = 0 and stride = 1 are allowed");
    if (!global_ && (ph_ >= kh_ || pw_ >= kw_)) throw LayerError("pad must be smaller than the kernel");
    // BVLC's final caffe.proto: round_mode { CEIL (default) | FLOOR }.
    const std::string r = pp.get_enum("round_mode", "CEIL");
    if (r == "CEIL" || r == "0") floor_ = false;
    else if (r == "FLOOR" || r == "1") floor_ = true;
    else throw LayerError("unknown pooling round_mode '" + r + "' (CEIL, FLOOR)");
  }
  const char* type() const override { return "Pooling"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int MinTopBlobs() const override { return 1; }
  int MaxTopBlobs() const override { return max_ ? 2 : 1; }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) override {
    const Shape& b = bottom[0];
    if (b.size() != 4)
      throw LayerError("input must have 4 axes, corresponding to (num, channels, height, width), got " + shape_str(b));
    num_ = b[0];
    channels_ = b[1];
    height_ = b[2];
    width_ = b[3];
    if (global_) {
      kh_ = height_;
      kw_ = width_;
    }
    auto round = [this](float v) { return static_cast<int64_t>(floor_ ? std::floor(v) : std::ceil(v)); };
    pooled_h_ = round(static_cast<float>(height_ + 2 * ph_ - kh_) / sh_) + 1;
    pooled_w_ = round(static_cast<float>(width_ + 2 * pw_ - kw_) / sw_) + 1;
    if (ph_ || pw_) {
      // The last pooling window must start inside the image, not the padding.
      if ((pooled_h_ - 1) * sh_ >= height_ + ph_) --pooled_h_;
      if ((pooled_w_ - 1) * sw_ >= width_ + pw_) --pooled_w_;
    }
    if (pooled_h_ <= 0 || pooled_w_ <= 0)
      throw LayerError("input " + shape_str(b) + " is smaller than the pooling kernel");
    blobs->clear();
    Shape t{num_, channels_, pooled_h_, pooled_w_};
    top->assign(1, t);
    if (this->num_tops() >= 2) top->push_back(t);
    if (max_) mask_.resize(static_cast<size_t>(shape_count(t)));
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    const int64_t in_plane = height_ * width_, out_plane = pooled_h_ * pooled_w_;
    const int64_t planes = num_ * channels_;
    const int threads = layer_util::item_threads(planes * out_plane * kh_ * kw_);
    if (max_) {
      Dtype* top_mask = top.size() > 1 ? top[1]->data : nullptr;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
      for (int64_t p = 0; p < planes; ++p) {
        const Dtype* xp = x + p * in_plane;
        for (int64_t i = 0; i < pooled_h_; ++i) {
          int64_t hs = i * sh_ - ph_, he = std::min(hs + kh_, height_);
          hs = std::max<int64_t>(hs, 0);
          for (int64_t j = 0; j < pooled_w_; ++j) {
            int64_t ws = j * sw_ - pw_, we = std::min(ws + kw_, width_);
            ws = std::max<int64_t>(ws, 0);
            Dtype best = -FLT_MAX;
            int64_t arg = -1;
            for (int64_t h = hs; h < he; ++h) {
              for (int64_t w = ws; w < we; ++w) {
                // Caffe's strict `>` (the first maximum wins, NaN never does), as
                // selects rather than a branch, which random data mispredicts.
                const Dtype v = xp[h * width_ + w];
                const bool greater = v > best;
                best = greater ? v : best;
                arg = greater ? h * width_ + w : arg;
              }
            }
            const int64_t o = p * out_plane + i * pooled_w_ + j;
            y[o] = best;
            mask_[o] = arg;
            if (top_mask) top_mask[o] = static_cast<Dtype>(arg);
          }
        }
      }
    } else {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
      for (int64_t p = 0; p < planes; ++p) {
        const Dtype* xp = x + p * in_plane;
        for (int64_t i = 0; i < pooled_h_; ++i) {
          for (int64_t j = 0; j < pooled_w_; ++j) {
            int64_t hs = i * sh_ - ph_, ws = j * sw_ - pw_;
            int64_t he = std::min(hs + kh_, height_ + ph_), we = std::min(ws + kw_, width_ + pw_);
            const int64_t pool_size = (he - hs) * (we - ws);
            hs = std::max<int64_t>(hs, 0);
            ws = std::max<int64_t>(ws, 0);
            he = std::min(he, height_);
            we = std::min(we, width_);
            Dtype s = 0;
            for (int64_t h = hs; h < he; ++h)
              for (int64_t w = ws; w < we; ++w) s += xp[h * width_ + w];
            y[p * out_plane + i * pooled_w_ + j] = s / pool_size;
          }
        }
      }
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&, Phase) override {
    if (!propagate_down[0]) return;
    const Dtype* dy = top[0]->diff;
    Dtype* dx = bottom[0]->diff;
    const int64_t in_plane = height_ * width_, out_plane = pooled_h_ * pooled_w_;
    const int64_t planes = num_ * channels_;
    set<Dtype>(planes * in_plane, Dtype(0), dx);
    const int threads = layer_util::item_threads(planes * out_plane * kh_ * kw_);
    if (max_) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
      for (int64_t p = 0; p < planes; ++p) {
        Dtype* dxp = dx + p * in_plane;
        for (int64_t o = 0; o < out_plane; ++o) {
          const int64_t arg = mask_[p * out_plane + o];
          if (arg >= 0) dxp[arg] += dy[p * out_plane + o];
        }
      }
    } else {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
      for (int64_t p = 0; p < planes; ++p) {
        Dtype* dxp = dx + p * in_plane;
        for (int64_t i = 0; i < pooled_h_; ++i) {
          for (int64_t j = 0; j < pooled_w_; ++j) {
            int64_t hs = i * sh_ - ph_, ws = j * sw_ - pw_;
            int64_t he = std::min(hs + kh_, height_ + ph_), we = std::min(ws + kw_, width_ + pw_);
            const int64_t pool_size = (he - hs) * (we - ws);
            hs = std::max<int64_t>(hs, 0);
            ws = std::max<int64_t>(ws, 0);
            he = std::min(he, height_);
            we = std::min(we, width_);
            const Dtype g = dy[p * out_plane + i * pooled_w_ + j] / pool_size;
            for (int64_t h = hs; h < he; ++h)
              for (int64_t w = ws; w < we; ++w) dxp[h * width_ + w] += g;
          }
        }
      }
    }
  }

 private:
  bool max_ = true, global_ = false, floor_ = false;
  int64_t kh_ = 0, kw_ = 0, ph_ = 0, pw_ = 0, sh_ = 1, sw_ = 1;
  int64_t num_ = 0, channels_ = 0, height_ = 0, width_ = 0, pooled_h_ = 0, pooled_w_ = 0;
  std::vector<int64_t> mask_;
};

CAFFEDATA_REGISTER_LAYER("Pooling", PoolingLayer)

}  // namespace caffedata
