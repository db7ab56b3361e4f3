// InnerProduct, as Caffe 1.0's inner_product_layer.cpp: top = bottom * W^T + b
// over the axes from `axis` on (W is (N, K), or (K, N) with transpose: true).
#include "layer.h"
#include "math.h"

namespace caffedata {

template <typename Dtype>
class InnerProductLayer : public Layer<Dtype> {
 public:
  explicit InnerProductLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& ip = p.child("inner_product_param");
    num_output_ = ip.get_int("num_output", 0);
    bias_term_ = ip.get_bool("bias_term", true);
    transpose_ = ip.get_bool("transpose", false);
    axis_ = static_cast<int>(ip.get_int("axis", 1));
    if (num_output_ <= 0) throw LayerError("inner_product_param.num_output must be set (> 0)");
  }
  const char* type() const override { return "InnerProduct"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  // Caffe's default for both is constant 0; MXNet's initializer decides instead.
  std::vector<Filler> BlobFillers() const override {
    const ProtoNode& ip = this->param().child("inner_product_param");
    std::vector<Filler> f{Filler::From(ip, "weight_filler", Filler::Constant(0, Filler::FRAMEWORK))};
    if (bias_term_) f.push_back(Filler::From(ip, "bias_filler", Filler::Constant(0, Filler::FRAMEWORK)));
    return f;
  }
  std::vector<int> BlobNumAxes(int) const override {
    return bias_term_ ? std::vector<int>{2, 1} : std::vector<int>{2};
  }

  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) override {
    const Shape& b = bottom[0];
    const int axis = canonical_axis(axis_, static_cast<int>(b.size()));
    K_ = shape_count(b, axis);
    M_ = shape_count(b, 0, axis);
    N_ = num_output_;
    blobs->clear();
    blobs->push_back(transpose_ ? Shape{K_, N_} : Shape{N_, K_});
    if (bias_term_) blobs->push_back(Shape{N_});
    Shape t(b.begin(), b.begin() + axis);
    t.push_back(N_);
    top->assign(1, t);
  }

  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* x = bottom[0]->data;
    const Dtype* w = blobs[0]->data;
    Dtype* y = top[0]->data;
    gemm(Trans::No, transpose_ ? Trans::No : Trans::Yes, M_, N_, K_, Dtype(1), x, w, Dtype(0), y);
    if (bias_term_) {
      const Dtype* bias = blobs[1]->data;
      for (int64_t i = 0; i < M_; ++i) {
        Dtype* row = y + i * N_;
        for (int64_t j = 0; j < N_; ++j) row[j] += bias[j];
      }
    }
  }

  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& propagate_down,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs, Phase) override {
    const Dtype* dy = top[0]->diff;
    const Dtype* x = bottom[0]->data;
    if (blobs[0]->diff) {
      if (transpose_) {
        gemm(Trans::Yes, Trans::No, K_, N_, M_, Dtype(1), x, dy, Dtype(1), blobs[0]->diff);
      } else {
        gemm(Trans::Yes, Trans::No, N_, K_, M_, Dtype(1), dy, x, Dtype(1), blobs[0]->diff);
      }
    }
    if (bias_term_ && blobs[1]->diff) {
      Dtype* db = blobs[1]->diff;
      for (int64_t i = 0; i < M_; ++i) {
        const Dtype* row = dy + i * N_;
        for (int64_t j = 0; j < N_; ++j) db[j] += row[j];
      }
    }
    if (propagate_down[0] && bottom[0]->diff) {
      gemm(Trans::No, transpose_ ? Trans::Yes : Trans::No, M_, K_, N_, Dtype(1), dy, blobs[0]->data, Dtype(0),
           bottom[0]->diff);
    }
  }

 private:
  int64_t num_output_ = 0;
  bool bias_term_ = true;
  bool transpose_ = false;
  int axis_ = 1;
  int64_t M_ = 0, K_ = 0, N_ = 0;
};

CAFFEDATA_REGISTER_LAYER("InnerProduct", InnerProductLayer)

}  // namespace caffedata
