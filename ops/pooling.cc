// Pooling, as Caffe 1.0's pooling_layer.cpp: MAX and AVE (STOCHASTIC has no
// CPU implementation in Caffe), global_pooling, ceil rounding of the output
// size (or floor with BVLC master's round_mode: FLOOR), the rule that drops a last window starting inside the padding, and
// AVE's divisor counting the padded window (clipped to height + pad).
#include <algorithm>
#include <cfloat>
#include <sstream>
#include <type_traits>

#include <immintrin.h>

#include "layer.h"
#include "layer_util.h"
#include "math.h"

namespace caffedata {

namespace {

// One row of float MAX outputs from the padded frame, 16 at a time, their
// maxima held in registers across the whole window (the flat loop below makes
// a pass over arrays in memory per window element: 2-4x slower). y[j] = the
// first maximum (strict `>`) of output j's window, visited in Caffe's order
// (rows, then columns); mask[j] = its index in the unpadded plane,
// base + j * stride + element_offset[e], or -1 if nothing beat -FLT_MAX.
// `frame_row` is the frame at the window row of output row i; the frame has
// 16 * stride + kw elements of slack after its end, read by the last block's
// unused lanes.
constexpr int64_t kMaxRowLanes = 16;

__attribute__((target("avx512f"))) void pool_max_row_avx512(const float* frame_row, int64_t frame_w, int64_t kh,
                                                             int64_t kw, int64_t stride, int64_t out_w,
                                                             const int32_t* element_offset, int64_t base,
                                                             float* y, int32_t* mask) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i lane_offset = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(stride)));
  const __m512i even = _mm512_add_epi32(lane, lane);  // lanes 0, 2, ..., 30 of two loads
  for (int64_t j0 = 0; j0 < out_w; j0 += kMaxRowLanes) {
    __m512 best = _mm512_set1_ps(-FLT_MAX);
    __m512i at = _mm512_set1_epi32(-1);  // the maximum's plane offset from the window's corner; -1: none
    const float* corner = frame_row + j0 * stride;
    for (int64_t dh = 0; dh < kh; ++dh) {
      for (int64_t dw = 0; dw < kw; ++dw) {
        const float* window = corner + dh * frame_w + dw;
        __m512 v;
        if (stride == 1) v = _mm512_loadu_ps(window);
        else if (stride == 2) v = _mm512_permutex2var_ps(_mm512_loadu_ps(window), even, _mm512_loadu_ps(window + 16));
        else v = _mm512_i32gather_ps(lane_offset, window, 4);
        const __mmask16 greater = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);  // false for NaN, as `>`
        best = _mm512_mask_mov_ps(best, greater, v);
        at = _mm512_mask_mov_epi32(at, greater, _mm512_set1_epi32(element_offset[dh * kw + dw]));
      }
    }
    const __mmask16 valid = static_cast<__mmask16>((1u << std::min(kMaxRowLanes, out_w - j0)) - 1);
    _mm512_mask_storeu_ps(y + j0, valid, best);
    __m512i index = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(base + j0 * stride)),
                                     _mm512_add_epi32(lane_offset, at));
    index = _mm512_mask_mov_epi32(index, _mm512_cmplt_epi32_mask(at, _mm512_setzero_si512()), at);
    _mm512_mask_storeu_epi32(mask + j0, valid, index);
  }
}

bool has_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

// value[q] = the first maximum (strict `>`) of output q's window in the frame,
// which[q] = its window element (dh * kw + dw), or -1 if none beat -FLT_MAX; the
// window's elements in row-major order. kStride: stride_w when it is 1 or 2
// (contiguous or paired loads), else 0 and `stride` is read.
template <typename Dtype, int kStride>
CAFFEDATA_CPU_CLONES void pool_max_flat(const Dtype* __restrict frame, int64_t frame_w, int64_t kh, int64_t kw,
                                  int64_t stride, int64_t flat, Dtype* __restrict value,
                                  int32_t* __restrict which) {
  const int64_t sw = kStride > 0 ? kStride : stride;
  for (int64_t q = 0; q < flat; ++q) {
    value[q] = -FLT_MAX;
    which[q] = -1;
  }
  for (int64_t dh = 0; dh < kh; ++dh) {
    for (int64_t dw = 0; dw < kw; ++dw) {
      const Dtype* __restrict window = frame + dh * frame_w + dw;
      const int32_t element = static_cast<int32_t>(dh * kw + dw);
      for (int64_t q = 0; q < flat; ++q) {
        const Dtype v = window[sw * q], best = value[q];
        const int32_t best_element = which[q];
        // Written as arithmetic rather than selects, so that the compiler sees
        // plain stores (a select on the stored value compiles to branchy masked stores).
        const int32_t greater = -static_cast<int32_t>(v > best);
        value[q] = v > best ? v : best;  // x86's max instruction: the same NaN rule
        which[q] = best_element ^ ((best_element ^ element) & greater);
      }
    }
  }
}

// value[q] = the sum of output q's window in the frame, in row-major order.
template <typename Dtype, int kStride>
CAFFEDATA_CPU_CLONES void pool_sum_flat(const Dtype* __restrict frame, int64_t frame_w, int64_t kh, int64_t kw,
                                  int64_t stride, int64_t flat, Dtype* __restrict value) {
  const int64_t sw = kStride > 0 ? kStride : stride;
  for (int64_t q = 0; q < flat; ++q) value[q] = 0;
  for (int64_t dh = 0; dh < kh; ++dh)
    for (int64_t dw = 0; dw < kw; ++dw) {
      const Dtype* __restrict window = frame + dh * frame_w + dw;
      for (int64_t q = 0; q < flat; ++q) value[q] += window[sw * q];
    }
}

}  // namespace

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
    // The frame holds the padded image and every window (ceil rounding can reach past the pad).
    frame_h_ = std::max(height_ + ph_, (pooled_h_ - 1) * sh_ + kh_);
    frame_w_ = std::max(width_ + pw_, (pooled_w_ - 1) * sw_ + kw_);
    frame_w_ = (frame_w_ + sw_ - 1) / sw_ * sw_;  // a multiple of stride_w, so that out_pitch is whole
    out_pitch_ = sh_ * frame_w_ / sw_;            // >= pooled_w, so rows of outputs do not overlap
    if (height_ * width_ >= (int64_t(1) << 31))  // the argmax is an int, as Caffe's max_idx_
      throw LayerError("input " + shape_str(b) + ": a plane of 2^31 or more elements is not supported");
    element_offset_.resize(static_cast<size_t>(kh_ * kw_));
    for (int64_t e = 0; e < kh_ * kw_; ++e) element_offset_[e] = static_cast<int32_t>(e / kw_ * width_ + e % kw_);
    // AVE divides by the window clipped to height + pad and width + pad, as Caffe.
    window_h_.resize(static_cast<size_t>(pooled_h_));
    window_w_.resize(static_cast<size_t>(pooled_w_));
    for (int64_t i = 0; i < pooled_h_; ++i) window_h_[i] = std::min(i * sh_ - ph_ + kh_, height_ + ph_) - (i * sh_ - ph_);
    for (int64_t j = 0; j < pooled_w_; ++j) window_w_[j] = std::min(j * sw_ - pw_ + kw_, width_ + pw_) - (j * sw_ - pw_);
  }

  // Each plane is copied into a frame padded with values that never count
  // (-FLT_MAX, which Caffe's strict `>` never takes, for MAX; 0, which leaves a
  // sum unchanged, for AVE), so that no window needs clipping and each output
  // still visits its window in Caffe's order (rows, then columns): the results
  // are Caffe's to the bit.
  //  * float MAX on AVX-512: a row of outputs at a time (pool_max_row_avx512).
  //  * otherwise output (i, j) is q = i * out_pitch + j of a flat loop, its
  //    window element (dh, dw) at stride_w * q + dh * frame_w + dw (out_pitch =
  //    stride_h * frame_w / stride_w): one long loop per window element, which
  //    vectorises. Columns j >= pooled_w of the flat loop are computed and dropped.
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>&,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    Dtype* y = top[0]->data;
    Dtype* top_mask = max_ && top.size() > 1 ? top[1]->data : nullptr;
    const int64_t in_plane = height_ * width_, out_plane = pooled_h_ * pooled_w_;
    const int64_t planes = num_ * channels_;
    const bool max_rows = max_ && std::is_same<Dtype, float>::value && has_avx512f();
    const int64_t flat = max_rows ? 0 : (pooled_h_ - 1) * out_pitch_ + pooled_w_;  // outputs of the flat loop
    const int threads = layer_util::item_threads(planes * out_plane * kh_ * kw_);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
      std::vector<Dtype> frame(static_cast<size_t>(frame_h_ * frame_w_ + kMaxRowLanes * sw_ + kw_),
                               max_ ? Dtype(-FLT_MAX) : Dtype(0));
      std::vector<Dtype> value(static_cast<size_t>(flat));
      std::vector<int32_t> which(max_ ? static_cast<size_t>(flat) : 0);
#pragma omp for schedule(static)
      for (int64_t p = 0; p < planes; ++p) {
        const Dtype* xp = x + p * in_plane;
        for (int64_t h = 0; h < height_; ++h)
          std::copy(xp + h * width_, xp + (h + 1) * width_, frame.data() + (h + ph_) * frame_w_ + pw_);
        const int64_t o = p * out_plane;
        if (max_rows) {
          for (int64_t i = 0; i < pooled_h_; ++i)
            pool_max_row_avx512(reinterpret_cast<const float*>(frame.data()) + i * sh_ * frame_w_, frame_w_, kh_,
                                kw_, sw_, pooled_w_, element_offset_.data(), (i * sh_ - ph_) * width_ - pw_,
                                reinterpret_cast<float*>(y) + o + i * pooled_w_, mask_.data() + o + i * pooled_w_);
        } else if (max_) {
          if (sw_ == 1) pool_max_flat<Dtype, 1>(frame.data(), frame_w_, kh_, kw_, sw_, flat, value.data(), which.data());
          else if (sw_ == 2) pool_max_flat<Dtype, 2>(frame.data(), frame_w_, kh_, kw_, sw_, flat, value.data(), which.data());
          else pool_max_flat<Dtype, 0>(frame.data(), frame_w_, kh_, kw_, sw_, flat, value.data(), which.data());
          // Locals, so that the stores below need not reload this layer's fields.
          const int64_t out_w = pooled_w_, pitch = out_pitch_, stride_w = sw_;
          const int32_t* element_offset = element_offset_.data();
          for (int64_t i = 0; i < pooled_h_; ++i) {
            const int64_t corner = (i * sh_ - ph_) * width_ - pw_;  // the window of (i, 0), in the plane
            const Dtype* __restrict value_row = value.data() + i * pitch;
            const int32_t* __restrict which_row = which.data() + i * pitch;
            Dtype* __restrict y_row = y + o + i * out_w;
            int32_t* __restrict mask_row = mask_.data() + o + i * out_w;
            for (int64_t j = 0; j < out_w; ++j) {
              const int32_t e = which_row[j];  // -1: no element beat -FLT_MAX
              y_row[j] = value_row[j];
              mask_row[j] = e < 0 ? -1 : static_cast<int32_t>(corner + j * stride_w + element_offset[e]);
            }
          }
        } else {
          if (sw_ == 1) pool_sum_flat<Dtype, 1>(frame.data(), frame_w_, kh_, kw_, sw_, flat, value.data());
          else if (sw_ == 2) pool_sum_flat<Dtype, 2>(frame.data(), frame_w_, kh_, kw_, sw_, flat, value.data());
          else pool_sum_flat<Dtype, 0>(frame.data(), frame_w_, kh_, kw_, sw_, flat, value.data());
          for (int64_t i = 0; i < pooled_h_; ++i)
            for (int64_t j = 0; j < pooled_w_; ++j)
              y[o + i * pooled_w_ + j] = value[i * out_pitch_ + j] / (window_h_[i] * window_w_[j]);
        }
        if (top_mask)
          for (int64_t q = 0; q < out_plane; ++q) top_mask[o + q] = static_cast<Dtype>(mask_[o + q]);
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
          const int32_t arg = mask_[p * out_plane + o];
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
  std::vector<int32_t> mask_;  // Caffe's max_idx_ (a Blob<int>): the argmax in the plane, or -1
  int64_t frame_h_ = 0, frame_w_ = 0, out_pitch_ = 0;  // the padded frame of a plane (Forward)
  std::vector<int64_t> window_h_, window_w_;      // AVE's divisor per output row / column
  std::vector<int32_t> element_offset_;           // window element dh * kw + dw -> dh * width + dw
};

CAFFEDATA_REGISTER_LAYER("Pooling", PoolingLayer)

}  // namespace caffedata
