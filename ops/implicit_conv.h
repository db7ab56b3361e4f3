// A dilation-1 2-D correlation in float, computed without im2col (an
// "implicit GEMM"), for Convolution's forward pass and its gradient with
// respect to the input (convolution.cc).
//
// Each image is copied into zero-padded frames, one per input channel. With
// stride 1, output (oh, ow) of a plane is then q = oh * frame_w + ow of a flat
// loop whose kernel element (c, i, j) sits at q + (c * frame_h + i) * frame_w + j:
// a fixed offset per row of im2col's matrix. avx512_sgemm_implicit_b reads B
// through those offsets, 16 outputs at a time, computing and dropping the
// columns q with q mod frame_w >= out_w. Several images share a GEMM when
// their maps are small.
//
// With stride (sh, sw), each padded channel is split into sh * sw phase
// frames, phase (pi, pj) holding the padded rows pi, pi + sh, ... and columns
// pj, pj + sw, ...; kernel element (c, sh * a + pi, sw * b + pj) then sits at
// q + (((c * sh + pi) * sw + pj) * phase_h + a) * phase_w + b for output q =
// oh * phase_w + ow: again one offset per row of im2col's matrix, whose order
// (and so every sum) is unchanged.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sgemm_avx512.h"

namespace caffedata {

class ImplicitConv {
 public:
  // Up to this many GEMM columns (16 per vector) over the images of one call.
  static constexpr int64_t kColumns = 1024;

  // channels planes of height x width, padded by pad_h/pad_w, correlated with
  // kernel_h x kernel_w kernels at stride_h/stride_w into out_channels planes,
  // in `groups`; at most `num` images a call. Output size, as Caffe's:
  // (height + 2 pad - kernel) / stride + 1 per axis.
  void plan(int64_t num, int64_t channels, int64_t height, int64_t width, int64_t pad_h, int64_t pad_w,
            int64_t kernel_h, int64_t kernel_w, int64_t out_channels, int64_t groups, int64_t stride_h = 1,
            int64_t stride_w = 1) {
    // The glue reshapes before every forward, as Caffe does: keep the plan, and
    // the zeroed borders of the frames, while the geometry is the same.
    const std::vector<int64_t> geometry{num,      channels,     height, width,    pad_h,   pad_w,
                                        kernel_h, kernel_w, out_channels, groups, stride_h, stride_w};
    if (geometry == geometry_) return;
    geometry_ = geometry;
    channels_ = channels;
    height_ = height;
    width_ = width;
    pad_h_ = pad_h;
    pad_w_ = pad_w;
    out_channels_ = out_channels;
    groups_ = groups;
    stride_h_ = stride_h;
    stride_w_ = stride_w;
    const int64_t padded_h = height + 2 * pad_h, padded_w = width + 2 * pad_w;
    out_h_ = (padded_h - kernel_h) / stride_h + 1;
    out_w_ = (padded_w - kernel_w) / stride_w + 1;
    frame_h_ = (padded_h + stride_h - 1) / stride_h;  // a phase frame (the whole frame at stride 1)
    frame_w_ = (padded_w + stride_w - 1) / stride_w;
    vectors_ = ((out_h_ - 1) * frame_w_ + out_w_ + 15) / 16;
    images_ = std::max<int64_t>(1, std::min<int64_t>(num, kColumns / (vectors_ * 16)));
    frames_ = channels * stride_h * stride_w * frame_h_ * frame_w_;
    kernel_rows_ = channels / groups * kernel_h * kernel_w;
    row_offset_.resize(static_cast<size_t>(kernel_rows_));
    for (int64_t k = 0; k < kernel_rows_; ++k) {
      const int64_t c = k / (kernel_h * kernel_w), i = k / kernel_w % kernel_h, j = k % kernel_w;
      const int64_t phase = (c * stride_h + i % stride_h) * stride_w + j % stride_w;
      row_offset_[k] = (phase * frame_h_ + i / stride_h) * frame_w_ + j / stride_w;
    }
    row_offset32_.clear();
    output_offset32_.clear();
    if (images_ * frames_ < (int64_t(1) << 31)) {
      row_offset32_.assign(row_offset_.begin(), row_offset_.end());
      for (int64_t b = 0; b < images_; ++b)
        for (int64_t oh = 0; oh < out_h_; ++oh)
          for (int64_t ow = 0; ow < out_w_; ++ow)
            output_offset32_.push_back(static_cast<int32_t>(b * frames_ + oh * frame_w_ + ow));
    }
    column_start_.resize(static_cast<size_t>(images_ * vectors_));
    for (int64_t b = 0; b < images_; ++b)
      for (int64_t v = 0; v < vectors_; ++v) column_start_[b * vectors_ + v] = b * frames_ + v * 16;
    // A vector may read 15 floats past its last output: into the next image, or the slack.
    input_stride_ = static_cast<size_t>(images_ * frames_ + 16);
    ldc_ = (images_ * vectors_ + 1) / 2 * 32;
    output_stride_ = static_cast<size_t>((out_channels / groups + 7) / 8 * 8 * ldc_);
    input_.clear();  // regrown zeroed for this geometry: only a frame's inside is written later
    output_.clear();
  }

  int64_t images_per_call() const { return images_; }

  // Per-thread buffers for `threads` threads; call before the parallel loop.
  void prepare(int threads) {
    if (input_.size() < input_stride_ * threads) input_.resize(input_stride_ * threads, 0.f);
    if (output_.size() < output_stride_ * threads) output_.resize(output_stride_ * threads);
  }

  // The frames of count <= images_per_call() images (x[b] at x + b * x_stride) in buffer set
  // `thread`: their insides written, their zeroed borders kept. Image b's frames start at b * frames.
  float* copy_frames(const float* x, int64_t x_stride, int64_t count, int thread) {
    float* input = input_.data() + input_stride_ * thread;
    for (int64_t b = 0; b < count; ++b)
      for (int64_t c = 0; c < channels_; ++c)
        for (int64_t h = 0; h < height_; ++h) {
          const float* row = x + b * x_stride + (c * height_ + h) * width_;
          if (stride_h_ == 1 && stride_w_ == 1) {
            std::memcpy(input + b * frames_ + (c * frame_h_ + h + pad_h_) * frame_w_ + pad_w_, row,
                        sizeof(float) * width_);
            continue;
          }
          const int64_t padded_row = h + pad_h_;
          for (int64_t pj = 0; pj < stride_w_; ++pj) {  // padded column w + pad_w goes to phase column / stride_w
            const int64_t first = ((pj - pad_w_) % stride_w_ + stride_w_) % stride_w_;  // first w of this phase
            const int64_t phase = (c * stride_h_ + padded_row % stride_h_) * stride_w_ + pj;
            float* dst = input + b * frames_ + (phase * frame_h_ + padded_row / stride_h_) * frame_w_ +
                         (first + pad_w_) / stride_w_;
            for (int64_t w = first, o = 0; w < width_; w += stride_w_, ++o) dst[o] = row[w];
          }
        }
    return input;
  }

  // For a weight gradient read from the frames (avx512_sgemm_gather_b): im2col's element
  // (k, q) of a group, for output q = b * out_h * out_w + oh * out_w + ow of images_per_call()
  // images, is frames[kernel_row_offset()[k] + output_offset()[q]] (group g: + g * frames / groups).
  // Empty when an offset would not fit an int32.
  const int32_t* kernel_row_offset() const { return row_offset32_.empty() ? nullptr : row_offset32_.data(); }
  const int32_t* output_offset() const { return output_offset32_.empty() ? nullptr : output_offset32_.data(); }
  int64_t frames_per_group() const { return frames_ / groups_; }

  // y[b] = w (*) x[b] (+ bias, one value a plane, if not null) for count <= images_per_call()
  // images (x[b] at x + b * x_stride, y[b] at y + b * y_stride), on buffer set `thread`.
  // w: out_channels x channels/groups x kh x kw. The bias is added to each finished sum, as
  // Caffe's second GEMM adds it (bias x 1). With row_threads > 1 (called outside a parallel
  // region, when the images fit in fewer calls than there are threads), the output channels
  // are split over that many threads in blocks of 8 rows: the same sums, so the same bits.
  void run(const float* x, int64_t x_stride, int64_t count, const float* w, const float* bias, float* y,
           int64_t y_stride, int thread, int row_threads = 1) {
    float* input = copy_frames(x, x_stride, count, thread);
    float* out = output_.data() + output_stride_ * thread;
    const int64_t m = out_channels_ / groups_, group_frames = frames_ / groups_;
    const int64_t chunk = row_threads > 1 ? ((m + row_threads - 1) / row_threads + 7) / 8 * 8 : m;
    const int64_t chunks = (m + chunk - 1) / chunk;
    for (int64_t g = 0; g < groups_; ++g) {
#pragma omp parallel for num_threads(row_threads) schedule(static) if (chunks > 1)
      for (int64_t ci = 0; ci < chunks; ++ci) {
        const int64_t r0 = ci * chunk, rows = std::min(chunk, m - r0);
        avx512_sgemm_implicit_b(rows, kernel_rows_, w + (m * g + r0) * kernel_rows_, input + group_frames * g,
                                row_offset_.data(), column_start_.data(), count * vectors_, out + r0 * ldc_, ldc_);
        // Image b's outputs start at column b * 16 * vectors; row i of plane r at + i * frame_w.
        for (int64_t b = 0; b < count; ++b)
          for (int64_t r = r0; r < r0 + rows; ++r)
            for (int64_t i = 0; i < out_h_; ++i) {
              float* dst = y + b * y_stride + ((g * m + r) * out_h_ + i) * out_w_;
              const float* src = out + r * ldc_ + b * 16 * vectors_ + i * frame_w_;
              if (bias) {
                const float add = bias[g * m + r];
                for (int64_t j = 0; j < out_w_; ++j) dst[j] = src[j] + add;
              } else {
                std::memcpy(dst, src, sizeof(float) * out_w_);
              }
            }
      }
    }
  }

 private:
  int64_t channels_ = 0, height_ = 0, width_ = 0, pad_h_ = 0, pad_w_ = 0, out_channels_ = 0, groups_ = 1;
  int64_t stride_h_ = 1, stride_w_ = 1;
  int64_t frame_h_ = 0, frame_w_ = 0, out_h_ = 0, out_w_ = 0;  // frame: one phase frame of a channel
  int64_t vectors_ = 0;      // 16-output vectors of one image: (out_h - 1) * frame_w + out_w outputs
  int64_t images_ = 1;       // images per call
  int64_t frames_ = 0;       // floats of one image's frames (all phases)
  int64_t kernel_rows_ = 0;  // rows of im2col's matrix in a group: channels / groups * kh * kw
  int64_t ldc_ = 0;          // columns of the GEMM's output
  std::vector<int64_t> row_offset_;    // kernel row k -> its element in a frame
  std::vector<int32_t> row_offset32_, output_offset32_;  // the same, and each output's, as int32 (weight gradients)
  std::vector<int64_t> column_start_;  // vector v -> where its 16 outputs start in the frames
  std::vector<float> input_, output_;  // per thread: padded frames, GEMM output
  std::vector<int64_t> geometry_;      // plan()'s arguments
  size_t input_stride_ = 0, output_stride_ = 0;
};

}  // namespace caffedata
