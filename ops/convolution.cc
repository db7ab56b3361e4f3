// Convolution and Deconvolution, as Caffe 1.0's base_conv_layer.cpp,
// conv_layer.cpp, deconv_layer.cpp and util/im2col.cpp: N spatial axes, per-axis
// kernel/stride/pad (kernel_h/w etc. for 2-D), dilation, group, bias_term.
// Each image is lowered with im2col and multiplied with a GEMM per group; on
// small feature maps several images share one GEMM (images_per_gemm below).
// A float Convolution with stride 1 on an AVX-512 CPU skips im2col instead
// (implicit_conv.h, plan_implicit_gemm below).
// Images run in parallel over the OpenMP threads the caller allows (the GEMM
// then runs single-threaded inside each); the weight gradient is summed per
// thread and the partial sums are added in thread order, so a given thread
// count always gives the same bits (one thread, one image per GEMM: Caffe's
// own image order).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <type_traits>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "implicit_conv.h"
#include "layer.h"
#include "layer_util.h"
#include "math.h"

namespace caffedata {

namespace {

// The output columns q in [q0, q1) whose input column in_col + q * sw lies in
// [0, width): the others read the zero padding.  Computed once per row, so the
// copy between them has no per-element test (with pad 2, im2col and col2im
// took 28% of the exact CIFAR-10 quick's time with the test, 15% without).
inline void valid_cols(int64_t in_col, int64_t sw, int64_t width, int64_t ow, int64_t* q0, int64_t* q1) {
  const int64_t lo = in_col >= 0 ? 0 : (-in_col + sw - 1) / sw;
  const int64_t hi = width - in_col <= 0 ? 0 : (width - in_col + sw - 1) / sw;
  *q0 = std::min(lo, ow);
  *q1 = std::max(*q0, std::min(hi, ow));
}

// CAFFEDATA_CONV=im2col turns the implicit GEMM (implicit_conv.h) off: every
// float Convolution then lowers with im2col, as Caffe. Read once.
inline bool implicit_gemm_allowed() {
  static const bool allowed = [] {
    const char* choice = std::getenv("CAFFEDATA_CONV");
    return !(choice && std::strcmp(choice, "im2col") == 0);
  }();
  return allowed;
}

// Caffe's im2col_cpu (2-D, with dilation). Row r of the result (channel, kernel
// row, kernel column) starts at col + r * pitch: pitch oh * ow is Caffe's
// layout; a wider one leaves room for other images' columns beside it.
template <typename Dtype>
__attribute__((optimize("no-tree-loop-distribute-patterns")))  // keep the loops below loops
void im2col_2d(const Dtype* im, int64_t channels, int64_t height, int64_t width, int64_t kh, int64_t kw,
               int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
               Dtype* col, int64_t pitch) {
  const int64_t plane = height * width;
  for (int64_t c = 0; c < channels; ++c, im += plane) {
    for (int64_t ki = 0; ki < kh; ++ki) {
      for (int64_t kj = 0; kj < kw; ++kj) {
        int64_t in_row = -ph + ki * dh;
        for (int64_t r = 0; r < oh; ++r, in_row += sh) {
          if (in_row < 0 || in_row >= height) {
            for (int64_t q = 0; q < ow; ++q) *col++ = 0;
            continue;
          }
          const Dtype* row = im + in_row * width;
          const int64_t in_col = -pw + kj * dw;
          int64_t q0, q1;
          valid_cols(in_col, sw, width, ow, &q0, &q1);
          // Plain loops, not memcpy/memset: rows are short (16 values in CIFAR-10's
          // conv2), and the library calls cost more than the copies.
          for (int64_t q = 0; q < q0; ++q) col[q] = 0;
          if (sw == 1) {
            const Dtype* src = row + in_col;
            for (int64_t q = q0; q < q1; ++q) col[q] = src[q];
          } else {
            for (int64_t q = q0; q < q1; ++q) col[q] = row[in_col + q * sw];
          }
          for (int64_t q = q1; q < ow; ++q) col[q] = 0;
          col += ow;
        }
        col += pitch - oh * ow;
      }
    }
  }
}

// Caffe's col2im_cpu: accumulates into a zeroed image (rows of col `pitch` apart, as im2col_2d).
template <typename Dtype>
void col2im_2d(const Dtype* col, int64_t channels, int64_t height, int64_t width, int64_t kh, int64_t kw,
               int64_t ph, int64_t pw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
               Dtype* im, int64_t pitch) {
  set<Dtype>(channels * height * width, Dtype(0), im);
  const int64_t plane = height * width;
  for (int64_t c = 0; c < channels; ++c, im += plane) {
    for (int64_t ki = 0; ki < kh; ++ki) {
      for (int64_t kj = 0; kj < kw; ++kj) {
        int64_t in_row = -ph + ki * dh;
        for (int64_t r = 0; r < oh; ++r, in_row += sh) {
          if (in_row < 0 || in_row >= height) {
            col += ow;
            continue;
          }
          Dtype* row = im + in_row * width;
          const int64_t in_col = -pw + kj * dw;
          int64_t q0, q1;
          valid_cols(in_col, sw, width, ow, &q0, &q1);
          if (sw == 1) {
            Dtype* dst = row + in_col;
            for (int64_t q = q0; q < q1; ++q) dst[q] += col[q];
          } else {
            for (int64_t q = q0; q < q1; ++q) row[in_col + q * sw] += col[q];
          }
          col += ow;
        }
        col += pitch - oh * ow;
      }
    }
  }
}

// Caffe's im2col_nd_core_cpu, both directions (col2im accumulates; caller zeroes).
template <typename Dtype, bool IM2COL>
void im2col_nd(const Dtype* im_in, Dtype* col, Dtype* im_out, int64_t channels, const Shape& im_shape,
               const Shape& col_shape, const Shape& kernel, const Shape& pad, const Shape& stride,
               const Shape& dil) {
  const size_t n = kernel.size();
  int64_t kernel_size = shape_count(kernel);
  int64_t col_spatial = shape_count(col_shape);
  std::vector<int64_t> d_offset(n), d_iter(n);
  const int64_t channels_col = channels * kernel_size;
  for (int64_t c_col = 0; c_col < channels_col; ++c_col) {
    int64_t offset = c_col;
    for (int64_t d = static_cast<int64_t>(n) - 1; d >= 0; --d) {
      if (d < static_cast<int64_t>(n) - 1) offset /= kernel[d + 1];
      d_offset[d] = offset % kernel[d];
    }
    const int64_t c_im = c_col / kernel_size;
    std::fill(d_iter.begin(), d_iter.end(), 0);
    for (int64_t index_col = c_col * col_spatial, k = 0; k < col_spatial; ++k, ++index_col) {
      int64_t index_im = c_im;
      bool in_range = true;
      for (size_t d = 0; d < n; ++d) {
        const int64_t d_im = d_iter[d] * stride[d] - pad[d] + d_offset[d] * dil[d];
        in_range = in_range && d_im >= 0 && d_im < im_shape[d];
        index_im = index_im * im_shape[d] + d_im;
      }
      if (IM2COL) {
        col[index_col] = in_range ? im_in[index_im] : Dtype(0);
      } else if (in_range) {
        im_out[index_im] += col[index_col];
      }
      for (int64_t d = static_cast<int64_t>(n) - 1; d >= 0; --d) {
        if (++d_iter[d] < col_shape[d]) break;
        d_iter[d] = 0;
      }
    }
  }
}

Shape per_axis(const ProtoNode& cp, const char* name, const char* name_h, const char* name_w, int64_t dflt,
               size_t num_spatial) {
  Shape out(num_spatial, dflt);
  if (cp.has(name_h) || cp.has(name_w)) {
    if (num_spatial != 2) {
      std::ostringstream os;
      os << name_h << "/" << name_w << " can only be used for 2D convolution, this one has " << num_spatial
         << " spatial axes";
      throw LayerError(os.str());
    }
    if (cp.count(name)) {
      throw LayerError(std::string("either ") + name + " or " + name_h + "/" + name_w + " should be specified; not both");
    }
    if (std::string(name) == "kernel_size" && !(cp.has(name_h) && cp.has(name_w)))
      throw LayerError("for non-square filters both kernel_h and kernel_w are required");
    out[0] = cp.get_int(name_h, dflt);
    out[1] = cp.get_int(name_w, dflt);
    return out;
  }
  std::vector<int64_t> v = cp.get_ints(name);
  if (v.empty()) {
    if (std::string(name) == "kernel_size") throw LayerError("kernel_size (or kernel_h and kernel_w) is required");
    return out;
  }
  if (v.size() != 1 && v.size() != num_spatial) {
    std::ostringstream os;
    os << name << " must be specified once, or once per spatial dimension (" << name << " specified " << v.size()
       << " times; " << num_spatial << " spatial dims)";
    throw LayerError(os.str());
  }
  for (size_t i = 0; i < num_spatial; ++i) out[i] = v.size() == 1 ? v[0] : v[i];
  return out;
}

}  // namespace

template <typename Dtype, bool DECONV>
class ConvLayerT : public Layer<Dtype> {
 public:
  explicit ConvLayerT(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& cp = p.child("convolution_param");
    num_output_ = cp.get_int("num_output", 0);
    if (num_output_ <= 0) throw LayerError("convolution_param.num_output must be set (> 0)");
    bias_term_ = cp.get_bool("bias_term", true);
    group_ = cp.get_int("group", 1);
    if (group_ <= 0) throw LayerError("convolution_param.group must be > 0");
    axis_param_ = static_cast<int>(cp.get_int("axis", 1));
    // Checked now so a bad prototxt fails before any shape is known.
    if (cp.count("kernel_size") == 0 && !(cp.has("kernel_h") && cp.has("kernel_w")))
      throw LayerError("kernel_size (or kernel_h and kernel_w) is required");
  }
  const char* type() const override { return DECONV ? "Deconvolution" : "Convolution"; }
  int MinBottomBlobs() const override { return 1; }
  int MinTopBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return -1; }

  int setup_axes_ = 0;

  // Caffe's default for both is constant 0; MXNet's initializer decides instead.
  std::vector<Filler> BlobFillers() const override {
    const ProtoNode& cp = this->param().child("convolution_param");
    std::vector<Filler> f{Filler::From(cp, "weight_filler", Filler::Constant(0, Filler::FRAMEWORK))};
    if (bias_term_) f.push_back(Filler::From(cp, "bias_filler", Filler::Constant(0, Filler::FRAMEWORK)));
    return f;
  }

  std::vector<int> BlobNumAxes(int bottom0_axes) const override {
    const ProtoNode& cp = this->param().child("convolution_param");
    int ns;
    if (cp.has("kernel_h") || cp.has("kernel_w")) {
      ns = 2;
    } else if (cp.count("kernel_size") > 1) {
      ns = cp.count("kernel_size");
    } else {
      int axis = axis_param_ < 0 ? axis_param_ + bottom0_axes : axis_param_;
      ns = bottom0_axes - axis - 1;
      if (ns < 1) ns = 2;
    }
    std::vector<int> v{ns + 2};
    if (bias_term_) v.push_back(1);
    return v;
  }

  // Caffe's BaseConvolutionLayer::LayerSetUp: the geometry, once.
  void LayerSetUp(const std::vector<Shape>& bottom) override {
    const ProtoNode& cp = this->param().child("convolution_param");
    const int nax = static_cast<int>(bottom.at(0).size());
    setup_axes_ = nax;
    channel_axis_ = canonical_axis(axis_param_, nax);
    const int64_t ns = nax - channel_axis_ - 1;
    if (ns < 1) throw LayerError("convolution input " + shape_str(bottom[0]) + " has no spatial axes after axis " +
                                 std::to_string(channel_axis_));
    num_spatial_ = static_cast<size_t>(ns);
    kernel_ = per_axis(cp, "kernel_size", "kernel_h", "kernel_w", 0, num_spatial_);
    stride_ = per_axis(cp, "stride", "stride_h", "stride_w", 1, num_spatial_);
    pad_ = per_axis(cp, "pad", "pad_h", "pad_w", 0, num_spatial_);
    dilation_ = Shape(num_spatial_, 1);
    {
      std::vector<int64_t> v = cp.get_ints("dilation");
      if (!v.empty() && v.size() != 1 && v.size() != num_spatial_)
        throw LayerError("dilation must be specified once, or once per spatial dimension");
      for (size_t i = 0; i < num_spatial_ && !v.empty(); ++i) dilation_[i] = v.size() == 1 ? v[0] : v[i];
    }
    for (size_t i = 0; i < num_spatial_; ++i) {
      if (kernel_[i] <= 0) throw LayerError("filter dimensions must be nonzero");
      if (stride_[i] <= 0) throw LayerError("stride dimensions must be nonzero");
      if (pad_[i] < 0) throw LayerError("pad must be >= 0");
      if (dilation_[i] <= 0) throw LayerError("dilation must be > 0");
    }
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) override {
    if (static_cast<int>(bottom[0].size()) != setup_axes_)
      throw LayerError("bottom num_axes may not change: set up with " + std::to_string(setup_axes_) +
                       " axes, got " + shape_str(bottom[0]));
    const Shape& b0 = bottom[0];
    channels_ = b0[channel_axis_];
    if (channels_ % group_) throw LayerError("number of input channels " + std::to_string(channels_) +
                                             " is not a multiple of group " + std::to_string(group_));
    if (num_output_ % group_) throw LayerError("num_output should be a multiple of group");
    conv_out_channels_ = DECONV ? channels_ : num_output_;
    conv_in_channels_ = DECONV ? num_output_ : channels_;
    for (size_t i = 1; i < bottom.size(); ++i) {
      if (bottom[i] != b0) throw LayerError("all inputs must have the same shape, got " + shape_str(b0) + " and " +
                                            shape_str(bottom[i]));
    }
    num_ = shape_count(b0, 0, channel_axis_);
    in_spatial_.assign(b0.begin() + channel_axis_ + 1, b0.end());
    out_spatial_.resize(num_spatial_);
    for (size_t i = 0; i < num_spatial_; ++i) {
      const int64_t ext = dilation_[i] * (kernel_[i] - 1) + 1;
      if (DECONV) {
        out_spatial_[i] = stride_[i] * (in_spatial_[i] - 1) + ext - 2 * pad_[i];
      } else {
        out_spatial_[i] = (in_spatial_[i] + 2 * pad_[i] - ext) / stride_[i] + 1;
      }
      if (out_spatial_[i] <= 0)
        throw LayerError("input " + shape_str(b0) + " is too small for the kernel: output size " +
                         std::to_string(out_spatial_[i]) + " on spatial axis " + std::to_string(i));
    }
    Shape ts(b0.begin(), b0.begin() + channel_axis_);
    ts.push_back(num_output_);
    ts.insert(ts.end(), out_spatial_.begin(), out_spatial_.end());
    top->assign(bottom.size(), ts);
    // im2col geometry (for Deconvolution the "image" is the top).
    conv_in_spatial_ = DECONV ? out_spatial_ : in_spatial_;
    col_spatial_ = DECONV ? in_spatial_ : out_spatial_;
    conv_out_spatial_dim_ = shape_count(col_spatial_);
    kernel_dim_ = conv_in_channels_ / group_ * shape_count(kernel_);
    weight_offset_ = conv_out_channels_ * kernel_dim_ / group_;
    col_offset_ = kernel_dim_ * conv_out_spatial_dim_;
    output_offset_ = conv_out_channels_ * conv_out_spatial_dim_ / group_;
    bottom_dim_ = shape_count(b0, channel_axis_);
    top_dim_ = shape_count(ts, channel_axis_);
    out_spatial_dim_ = shape_count(out_spatial_);
    is_1x1_ = true;
    for (size_t i = 0; i < num_spatial_; ++i)
      is_1x1_ = is_1x1_ && kernel_[i] == 1 && stride_[i] == 1 && pad_[i] == 0;
    Shape ws{conv_out_channels_, conv_in_channels_ / group_};
    ws.insert(ws.end(), kernel_.begin(), kernel_.end());
    blobs->clear();
    blobs->push_back(ws);
    if (bias_term_) blobs->push_back(Shape{num_output_});
    col_buffer_.resize(static_cast<size_t>(kernel_dim_ * group_ * conv_out_spatial_dim_));  // grown per thread
    plan_implicit_gemm();
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* w = blobs[0]->data;
    const int64_t per = implicit_ ? implicit_forward_.images_per_call() : images_per_gemm();
    const int64_t groups_of_images = (num_ + per - 1) / per;
    // Fewer GEMMs than threads (small maps, several images a GEMM): one GEMM at a
    // time, its output channels split over the threads instead. (That parallel
    // region must not be nested in the one over groups of images: libgomp
    // would start fresh threads for it every time, which then spin.)
    const int row_threads =
        (implicit_ || per > 1) && groups_of_images < layer_util::max_threads() ? layer_util::max_threads() : 1;
    const int threads = prepare_threads(row_threads > 1 ? 1 : groups_of_images);
    for (size_t i = 0; i < bottom.size(); ++i) {
      const Dtype* x = bottom[i]->data;
      Dtype* y = top[i]->data;
      auto images = [&](int64_t gi, int gemm_threads) {
        const int64_t n0 = gi * per, count = std::min(per, num_ - n0);
        if (implicit_) {  // adds the bias too
          forward_implicit(x + n0 * bottom_dim_, w, bias_term_ ? blobs[1]->data : nullptr, y + n0 * top_dim_, count,
                           gemm_threads);
          return;
        }
        if (per > 1) {
          forward_images(x, w, y, n0, count, gemm_threads);
        } else if (DECONV) {
          backward_gemm(x + n0 * bottom_dim_, w, y + n0 * top_dim_, thread_col());
        } else {
          forward_gemm(x + n0 * bottom_dim_, w, y + n0 * top_dim_, thread_col());
        }
        if (bias_term_) {
          const Dtype* b = blobs[1]->data;
          for (int64_t n = n0; n < n0 + count; ++n) {
            Dtype* yn = y + n * top_dim_;
            for (int64_t c = 0; c < num_output_; ++c) {
              Dtype* p = yn + c * out_spatial_dim_;
              for (int64_t s = 0; s < out_spatial_dim_; ++s) p[s] += b[c];
            }
          }
        }
      };
      if (row_threads > 1) {
        for (int64_t gi = 0; gi < groups_of_images; ++gi) images(gi, row_threads);
        continue;
      }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
      for (int64_t gi = 0; gi < groups_of_images; ++gi) images(gi, 1);
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs, Phase) override {
    const Dtype* w = blobs[0]->data;
    Dtype* wd = blobs[0]->diff;
    for (size_t i = 0; i < top.size(); ++i) {
      const Dtype* dy = top[i]->diff;
      const Dtype* x = bottom[i]->data;
      if (bias_term_ && blobs[1]->diff) {
        Dtype* bd = blobs[1]->diff;
        for (int64_t n = 0; n < num_; ++n) {
          const Dtype* dyn = dy + n * top_dim_;
          for (int64_t c = 0; c < num_output_; ++c) {
            const Dtype* p = dyn + c * out_spatial_dim_;
            Dtype s = 0;
            for (int64_t k = 0; k < out_spatial_dim_; ++k) s += p[k];
            bd[c] += s;
          }
        }
      }
      const bool pd = propagate_down[i] && bottom[i]->diff;
      // The input gradient through the implicit GEMM, in its own pass below; else with the weights'.
      const bool pd_implicit = pd && implicit_backward_;
      if (pd_implicit) backward_data_implicit(dy, w, bottom[i]->diff);
      if (!wd && !(pd && !pd_implicit)) continue;
      const int64_t per = images_per_gemm(), groups_of_images = (num_ + per - 1) / per;
      const int threads = prepare_threads(groups_of_images);
      const int64_t wcount = blobs[0]->count();
      // One thread adds straight into wd, in Caffe's order; several add into their own
      // partial sums (zeroed), added into wd in thread order afterwards.
      if (wd && threads > 1) wd_partial_.assign(static_cast<size_t>(threads * wcount), Dtype(0));
#pragma omp parallel num_threads(threads) if (threads > 1)
      {
        Dtype* my_wd = wd && threads > 1 ? wd_partial_.data() + thread_index() * wcount : wd;
#pragma omp for schedule(static)
        for (int64_t gi = 0; gi < groups_of_images; ++gi) {
          const int64_t n0 = gi * per, count = std::min(per, num_ - n0);
          Dtype* dx = pd && !pd_implicit ? bottom[i]->diff : nullptr;
          Dtype* wd_here = wd ? my_wd : nullptr;
          if (wd_here && weight_gradient_from_frames(count)) {
            weight_gradient_frames(x, dy, wd_here, n0, count);
            wd_here = nullptr;
          }
          if (per > 1) {
            if (wd_here || dx) backward_images(x, dy, w, wd_here, dx, n0, count);
          } else if (DECONV) {
            // gradient w.r.t. weight: im2col(top diff) x bottom data.
            if (wd_here) weight_gemm(dy + n0 * top_dim_, x + n0 * bottom_dim_, wd_here, thread_col());
            // gradient w.r.t. bottom: a forward convolution of top diff.
            if (dx) forward_gemm(dy + n0 * top_dim_, w, dx + n0 * bottom_dim_, thread_col());
          } else {
            if (wd_here) weight_gemm(x + n0 * bottom_dim_, dy + n0 * top_dim_, wd_here, thread_col());
            if (dx) backward_gemm(dy + n0 * top_dim_, w, dx + n0 * bottom_dim_, thread_col());
          }
        }
      }
      if (wd && threads > 1) {
        for (int t = 0; t < threads; ++t) {
          const Dtype* part = wd_partial_.data() + t * wcount;
          for (int64_t k = 0; k < wcount; ++k) wd[k] += part[k];
        }
      }
    }
  }

 private:
  int64_t num_output_ = 0, group_ = 1;
  bool bias_term_ = true;
  int axis_param_ = 1;
  int channel_axis_ = 1;
  size_t num_spatial_ = 0;
  Shape kernel_, stride_, pad_, dilation_, in_spatial_, out_spatial_, conv_in_spatial_, col_spatial_;
  int64_t channels_ = 0, conv_out_channels_ = 0, conv_in_channels_ = 0, num_ = 0;
  int64_t conv_out_spatial_dim_ = 0, kernel_dim_ = 0, weight_offset_ = 0, col_offset_ = 0, output_offset_ = 0;
  int64_t bottom_dim_ = 0, top_dim_ = 0, out_spatial_dim_ = 0;
  bool is_1x1_ = false;
  std::vector<Dtype> col_buffer_;   // one im2col buffer per image thread, side by side
  std::vector<Dtype> wd_partial_;   // per-thread weight-gradient sums (several threads)
  std::vector<Dtype> batch_buffer_; // per-thread columns + outputs of a group of images (images_per_gemm() > 1)
  size_t batch_stride_ = 0;
  // The implicit GEMM (plan_implicit_gemm): the forward pass, and the input
  // gradient as a correlation of the top gradient with the flipped kernels.
  bool implicit_ = false, implicit_backward_ = false;
  ImplicitConv implicit_forward_, implicit_backward_data_;
  std::vector<float> flipped_weights_;

  // Caffe runs one GEMM per image. On a small feature map that GEMM is mostly
  // edge tiles and packing (a 7x7 map has 49 columns), so, for Convolution with
  // 2-D kernels, the columns of several images are set side by side and
  // multiplied at once, up to kBatchColumns columns. Each output is still one
  // dot product over the kernel window (the AVX-512 kernel sums it in the same
  // order whatever the number of columns); the weight gradient sums over the
  // images' columns in one GEMM instead of one GEMM per image, a different
  // order of the same float sums. Which images share a GEMM depends on the
  // shapes only, never on the thread count.
  static constexpr int64_t kBatchColumns = 512;
  int64_t images_per_gemm() const {
    if (DECONV || num_spatial_ != 2 || num_ < 2 || conv_out_spatial_dim_ * 2 > kBatchColumns) return 1;
    return std::min<int64_t>(num_, kBatchColumns / conv_out_spatial_dim_);
  }

  // Threads for the loop over groups of images: what OpenMP allows here, at most
  // one per group; grows this layer's per-thread buffers to match.
  int prepare_threads(int64_t groups_of_images) {
    const int threads = static_cast<int>(std::min<int64_t>(layer_util::max_threads(), std::max<int64_t>(groups_of_images, 1)));
    const size_t per = static_cast<size_t>(kernel_dim_ * group_ * conv_out_spatial_dim_);
    if (col_buffer_.size() < per * threads) col_buffer_.resize(per * threads);
    if (implicit_) implicit_forward_.prepare(threads);
    const int64_t images = images_per_gemm();
    if (images > 1) {
      const size_t columns = static_cast<size_t>(images * conv_out_spatial_dim_);
      batch_stride_ = columns * static_cast<size_t>(kernel_dim_ * group_ + conv_out_channels_);
      if (batch_buffer_.size() < batch_stride_ * threads) batch_buffer_.resize(batch_stride_ * threads);
    }
    return threads;
  }

  // This thread's batch buffers: the columns of its images (kernel_dim * group
  // rows) and a matrix of their outputs or output gradients (out channels rows).
  Dtype* thread_batch_cols() { return batch_buffer_.data() + batch_stride_ * thread_index(); }
  Dtype* thread_batch_outputs() {
    return thread_batch_cols() + static_cast<size_t>(kernel_dim_ * group_ * images_per_gemm() * conv_out_spatial_dim_);
  }

  // Rows of `rows` values per image <-> one matrix with the images' rows side by side.
  void gather_rows(const Dtype* image0, int64_t image_stride, int64_t count, int64_t rows, Dtype* matrix) const {
    const int64_t n = conv_out_spatial_dim_, width = count * n;
    for (int64_t b = 0; b < count; ++b)
      for (int64_t r = 0; r < rows; ++r) copy<Dtype>(n, image0 + b * image_stride + r * n, matrix + r * width + b * n);
  }
  void scatter_rows(const Dtype* matrix, int64_t count, int64_t rows, Dtype* image0, int64_t image_stride) const {
    const int64_t n = conv_out_spatial_dim_, width = count * n;
    for (int64_t b = 0; b < count; ++b)
      for (int64_t r = 0; r < rows; ++r) copy<Dtype>(n, matrix + r * width + b * n, image0 + b * image_stride + r * n);
  }

  // The columns of images n0 .. n0 + count - 1, side by side (Convolution only).
  const Dtype* batch_columns(const Dtype* x, int64_t n0, int64_t count) {
    Dtype* cols = thread_batch_cols();
    const int64_t width = count * conv_out_spatial_dim_;
    if (is_1x1_) {
      gather_rows(x + n0 * bottom_dim_, bottom_dim_, count, kernel_dim_ * group_, cols);
    } else {
      for (int64_t b = 0; b < count; ++b) im2col(x + (n0 + b) * bottom_dim_, cols + b * conv_out_spatial_dim_, width);
    }
    return cols;
  }

  // y = W x columns for images n0 .. n0 + count - 1 at once.
  void forward_images(const Dtype* x, const Dtype* w, Dtype* y, int64_t n0, int64_t count, int row_threads) {
    const Dtype* cols = batch_columns(x, n0, count);
    Dtype* out = thread_batch_outputs();
    const int64_t width = count * conv_out_spatial_dim_, m = conv_out_channels_ / group_;
    for (int64_t g = 0; g < group_; ++g)
      gemm_split_rows(Trans::No, m, width, kernel_dim_, Dtype(1), w + weight_offset_ * g,
                      cols + kernel_dim_ * width * g, Dtype(0), out + m * width * g, row_threads);
    scatter_rows(out, count, conv_out_channels_, y + n0 * top_dim_, top_dim_);
  }

  // dW += dy x columns^T and dx = col2im(W^T x dy) for images n0 .. n0 + count - 1 at once.
  void backward_images(const Dtype* x, const Dtype* dy, const Dtype* w, Dtype* wd, Dtype* dx, int64_t n0,
                       int64_t count) {
    const int64_t width = count * conv_out_spatial_dim_, m = conv_out_channels_ / group_;
    Dtype* dy_batch = thread_batch_outputs();
    gather_rows(dy + n0 * top_dim_, top_dim_, count, conv_out_channels_, dy_batch);
    if (wd) {
      const Dtype* cols = batch_columns(x, n0, count);
      for (int64_t g = 0; g < group_; ++g)
        gemm(Trans::No, Trans::Yes, m, kernel_dim_, width, Dtype(1), dy_batch + m * width * g,
             cols + kernel_dim_ * width * g, Dtype(1), wd + weight_offset_ * g);
    }
    if (dx) {
      Dtype* cols = thread_batch_cols();
      for (int64_t g = 0; g < group_; ++g)
        gemm(Trans::Yes, Trans::No, kernel_dim_, width, m, Dtype(1), w + weight_offset_ * g,
             dy_batch + m * width * g, Dtype(0), cols + kernel_dim_ * width * g);
      if (is_1x1_) {
        scatter_rows(cols, count, kernel_dim_ * group_, dx + n0 * bottom_dim_, bottom_dim_);
      } else {
        for (int64_t b = 0; b < count; ++b) col2im(cols + b * conv_out_spatial_dim_, dx + (n0 + b) * bottom_dim_, width);
      }
    }
  }

  // A float Convolution with dilation 1, other than a plain 1x1 (which needs no
  // lowering), runs forward without im2col on AVX-512 CPUs (implicit_conv.h;
  // strides through phase frames). Each output is summed as the im2col path
  // sums it when that path's GEMM is the AVX-512 kernel too (not too small a
  // product), to the bit; CAFFEDATA_CONV=im2col switches this off, and the
  // tests compare. With stride 1, the input gradient, Caffe's col2im(W^T x dy),
  // is the same sum as a correlation of dy padded by kernel - 1 - pad with the
  // kernels flipped and transposed; computed so (where pad < kernel and there
  // are 8 or more input channels a group), its terms are added in another
  // order than col2im's.
  void plan_implicit_gemm() {
    implicit_ = implicit_backward_ = false;
    if (!std::is_same<Dtype, float>::value || DECONV || num_spatial_ != 2 || is_1x1_ || !implicit_gemm_allowed() ||
        !avx512_sgemm_available())
      return;
    for (size_t i = 0; i < 2; ++i)
      if (dilation_[i] != 1) return;
    implicit_forward_.plan(num_, conv_in_channels_, conv_in_spatial_[0], conv_in_spatial_[1], pad_[0], pad_[1],
                           kernel_[0], kernel_[1], conv_out_channels_, group_, stride_[0], stride_[1]);
    implicit_ = true;
    if (stride_[0] != 1 || stride_[1] != 1) return;  // the input gradient below is for stride 1
    // Its GEMM has one row per input channel, in blocks of 8: with fewer (an RGB
    // image's 3), most of each block would be zeros, and col2im is faster.
    if (pad_[0] < kernel_[0] && pad_[1] < kernel_[1] && conv_in_channels_ / group_ >= 8) {
      implicit_backward_data_.plan(num_, conv_out_channels_, col_spatial_[0], col_spatial_[1], kernel_[0] - 1 - pad_[0],
                                   kernel_[1] - 1 - pad_[1], kernel_[0], kernel_[1], conv_in_channels_, group_);
      implicit_backward_ = true;
    }
  }

  // The weight gradient of a convolution with the implicit forward reads im2col's
  // matrix from the forward's padded frames (avx512_sgemm_gather_b) instead of
  // storing it: the same products summed in the same order as the im2col path's
  // GEMM, so the same bits, wherever that GEMM would be the AVX-512 kernel (a
  // product too small for it goes to OpenBLAS) and the frames hold the images.
  bool weight_gradient_from_frames(int64_t count) const {
    if (!implicit_ || implicit_forward_.kernel_row_offset() == nullptr || count > implicit_forward_.images_per_call())
      return false;
    const int64_t m = conv_out_channels_ / group_, width = count * conv_out_spatial_dim_;
    return kernel_dim_ >= 16 && width > 0 && m * kernel_dim_ * width >= kAvx512GemmMinWork;
  }

  // dW += dy x columns^T for images n0 .. n0 + count - 1 (one GEMM, as backward_images).
  void weight_gradient_frames(const Dtype* x, const Dtype* dy, Dtype* wd, int64_t n0, int64_t count) {
    if constexpr (std::is_same<Dtype, float>::value) {
      const float* frames = implicit_forward_.copy_frames(x + n0 * bottom_dim_, bottom_dim_, count, thread_index());
      const float* dy_rows = dy + n0 * top_dim_;  // one image: its planes are the rows already
      if (count > 1) {
        Dtype* dy_batch = thread_batch_outputs();
        gather_rows(dy + n0 * top_dim_, top_dim_, count, conv_out_channels_, dy_batch);
        dy_rows = dy_batch;
      }
      const int64_t width = count * conv_out_spatial_dim_, m = conv_out_channels_ / group_;
      for (int64_t g = 0; g < group_; ++g)
        avx512_sgemm_gather_b(m, kernel_dim_, width, dy_rows + m * width * g,
                              frames + implicit_forward_.frames_per_group() * g, implicit_forward_.kernel_row_offset(),
                              implicit_forward_.output_offset(), 1.f, wd + weight_offset_ * g);
    }
  }

  // y (+ bias, if not null) for `count` images from x (image strides bottom_dim_, top_dim_).
  void forward_implicit(const Dtype* x, const Dtype* w, const Dtype* bias, Dtype* y, int64_t count,
                        int row_threads) {
    if constexpr (std::is_same<Dtype, float>::value) {
      implicit_forward_.run(x, bottom_dim_, count, w, bias, y, top_dim_, thread_index(), row_threads);
    } else {
      (void)x, (void)w, (void)bias, (void)y, (void)count;  // planned for float only
    }
  }

  // dx = the correlation of dy with the flipped, transposed kernels, all images.
  void backward_data_implicit(const Dtype* dy, const Dtype* w, Dtype* dx) {
    if constexpr (std::is_same<Dtype, float>::value) {
      // Per group, W is (out / group) x (in / group) x kh x kw; W' is (in / group) x (out / group) x kh x kw
      // with W'[c][m][i][j] = W[m][c][kh - 1 - i][kw - 1 - j].
      const int64_t m_count = conv_out_channels_ / group_, c_count = conv_in_channels_ / group_;
      const int64_t kh = kernel_[0], kw = kernel_[1], area = kh * kw;
      flipped_weights_.resize(static_cast<size_t>(group_ * m_count * c_count * area));
      for (int64_t g = 0; g < group_; ++g)
        for (int64_t m = 0; m < m_count; ++m)
          for (int64_t c = 0; c < c_count; ++c)
            for (int64_t e = 0; e < area; ++e)
              flipped_weights_[((g * c_count + c) * m_count + m) * area + (area - 1 - e)] =
                  w[((g * m_count + m) * c_count + c) * area + e];
      const int64_t per = implicit_backward_data_.images_per_call(), calls = (num_ + per - 1) / per;
      const int threads = static_cast<int>(std::min<int64_t>(layer_util::max_threads(), calls));
      implicit_backward_data_.prepare(threads);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
      for (int64_t ci = 0; ci < calls; ++ci) {
        const int64_t n0 = ci * per, count = std::min(per, num_ - n0);
        implicit_backward_data_.run(dy + n0 * top_dim_, top_dim_, count, flipped_weights_.data(), nullptr,
                                    dx + n0 * bottom_dim_, bottom_dim_, thread_index());
      }
    } else {
      (void)dy, (void)w, (void)dx;
    }
  }

  static int thread_index() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
  }

  Dtype* thread_col() {
    return col_buffer_.data() + static_cast<size_t>(kernel_dim_ * group_ * conv_out_spatial_dim_) * thread_index();
  }

  // pitch: the distance between rows of col (conv_out_spatial_dim_ but in a batch; 2-D only)
  void im2col(const Dtype* im, Dtype* col, int64_t pitch = 0) {
    if (num_spatial_ == 2) {
      im2col_2d(im, conv_in_channels_, conv_in_spatial_[0], conv_in_spatial_[1], kernel_[0], kernel_[1], pad_[0],
                pad_[1], stride_[0], stride_[1], dilation_[0], dilation_[1], col_spatial_[0], col_spatial_[1], col,
                pitch ? pitch : conv_out_spatial_dim_);
    } else {
      im2col_nd<Dtype, true>(im, col, nullptr, conv_in_channels_, conv_in_spatial_, col_spatial_, kernel_, pad_,
                             stride_, dilation_);
    }
  }

  void col2im(const Dtype* col, Dtype* im, int64_t pitch = 0) {
    if (num_spatial_ == 2) {
      col2im_2d(col, conv_in_channels_, conv_in_spatial_[0], conv_in_spatial_[1], kernel_[0], kernel_[1], pad_[0],
                pad_[1], stride_[0], stride_[1], dilation_[0], dilation_[1], col_spatial_[0], col_spatial_[1], im,
                pitch ? pitch : conv_out_spatial_dim_);
    } else {
      set<Dtype>(conv_in_channels_ * shape_count(conv_in_spatial_), Dtype(0), im);
      im2col_nd<Dtype, false>(nullptr, const_cast<Dtype*>(col), im, conv_in_channels_, conv_in_spatial_,
                              col_spatial_, kernel_, pad_, stride_, dilation_);
    }
  }

  // output = W x im2col(input)   (Caffe's forward_cpu_gemm); col_buf: this thread's buffer
  void forward_gemm(const Dtype* input, const Dtype* w, Dtype* output, Dtype* col_buf) {
    const Dtype* col = input;
    if (!is_1x1_) {
      im2col(input, col_buf);
      col = col_buf;
    }
    for (int64_t g = 0; g < group_; ++g) {
      gemm(Trans::No, Trans::No, conv_out_channels_ / group_, conv_out_spatial_dim_, kernel_dim_, Dtype(1),
           w + weight_offset_ * g, col + col_offset_ * g, Dtype(0), output + output_offset_ * g);
    }
  }

  // input = col2im(W^T x output)   (Caffe's backward_cpu_gemm)
  void backward_gemm(const Dtype* output, const Dtype* w, Dtype* input, Dtype* col_buf) {
    Dtype* col = is_1x1_ ? input : col_buf;
    for (int64_t g = 0; g < group_; ++g) {
      gemm(Trans::Yes, Trans::No, kernel_dim_, conv_out_spatial_dim_, conv_out_channels_ / group_, Dtype(1),
           w + weight_offset_ * g, output + output_offset_ * g, Dtype(0), col + col_offset_ * g);
    }
    if (!is_1x1_) col2im(col, input);
  }

  // dW += output x im2col(input)^T   (Caffe's weight_cpu_gemm)
  void weight_gemm(const Dtype* input, const Dtype* output, Dtype* wd, Dtype* col_buf) {
    const Dtype* col = input;
    if (!is_1x1_) {
      im2col(input, col_buf);
      col = col_buf;
    }
    for (int64_t g = 0; g < group_; ++g) {
      gemm(Trans::No, Trans::Yes, conv_out_channels_ / group_, kernel_dim_, conv_out_spatial_dim_, Dtype(1),
           output + output_offset_ * g, col + col_offset_ * g, Dtype(1), wd + weight_offset_ * g);
    }
  }
};

template <typename Dtype>
class ConvolutionLayer : public ConvLayerT<Dtype, false> {
 public:
  using ConvLayerT<Dtype, false>::ConvLayerT;
};
template <typename Dtype>
class DeconvolutionLayer : public ConvLayerT<Dtype, true> {
 public:
  using ConvLayerT<Dtype, true>::ConvLayerT;
};

CAFFEDATA_REGISTER_LAYER("Convolution", ConvolutionLayer)
CAFFEDATA_REGISTER_LAYER("Deconvolution", DeconvolutionLayer)

}  // namespace caffedata
