// Embed layer with Caffe 1.0 semantics: a lookup table.
//
// bottom[0] holds integer indices stored as floats (any shape); top has the
// bottom's shape plus a trailing num_output axis.  Blobs: weight
// (input_dim, num_output) and, with bias_term (default true), bias
// (num_output,).  top[..., :] = weight[index, :] (+ bias).
//
// Indices are truncated to integers as Caffe's static_cast<int> does; Caffe
// only DCHECKs their range (debug builds), here an out-of-range one is an error.  Caffe has no gradient for the
// indices: like Caffe, the layer refuses to backpropagate to them (the glue
// sees NoGradBottoms() = {0} and hands MXNet a zero gradient).
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "layer.h"

namespace caffedata {
namespace {

template <typename Dtype>
class EmbedLayer : public Layer<Dtype> {
 public:
  explicit EmbedLayer(const ProtoNode& p) : Layer<Dtype>(p) {
    const ProtoNode& q = p.child("embed_param");
    num_output_ = q.get_int("num_output", 0);
    input_dim_ = q.get_int("input_dim", 0);
    bias_term_ = q.get_bool("bias_term", true);
    if (num_output_ <= 0) throw LayerError("Embed: num_output must be positive");
    if (input_dim_ <= 0) throw LayerError("Embed: input_dim must be positive");
  }
  const char* type() const override { return "Embed"; }
  int ExactNumBottomBlobs() const override { return 1; }
  int ExactNumTopBlobs() const override { return 1; }
  std::vector<int> NoGradBottoms() const override { return {0}; }
  // Caffe's default for both is constant 0; MXNet's initializer decides instead.
  std::vector<Filler> BlobFillers() const override {
    const ProtoNode& ep = this->param().child("embed_param");
    std::vector<Filler> f{Filler::From(ep, "weight_filler", Filler::Constant(0, Filler::FRAMEWORK))};
    if (bias_term_) f.push_back(Filler::From(ep, "bias_filler", Filler::Constant(0, Filler::FRAMEWORK)));
    return f;
  }
  std::vector<int> BlobNumAxes(int) const override {
    return bias_term_ ? std::vector<int>{2, 1} : std::vector<int>{2};
  }
  void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
               std::vector<Shape>* top) override {
    if (bottom.size() != 1) {
      throw LayerError("Embed takes exactly 1 bottom, got " + std::to_string(bottom.size()));
    }
    blobs->clear();
    blobs->push_back(Shape{input_dim_, num_output_});
    if (bias_term_) blobs->push_back(Shape{num_output_});
    Shape t = bottom[0];
    t.push_back(num_output_);
    top->assign(1, t);
  }
  void Forward(const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
               const std::vector<Blob<Dtype>*>& top, Phase, std::mt19937*) override {
    const Dtype* idx = bottom[0]->data;
    const Dtype* w = blobs[0]->data;
    Dtype* y = top[0]->data;
    const int64_t m = bottom[0]->count();
    for (int64_t n = 0; n < m; ++n) {
      const int64_t index = checked_index(idx[n], n);
      const Dtype* row = w + index * num_output_;
      Dtype* out = y + n * num_output_;
      for (int64_t j = 0; j < num_output_; ++j) out[j] = row[j];
    }
    if (bias_term_) {
      const Dtype* b = blobs[1]->data;
      for (int64_t n = 0; n < m; ++n) {
        Dtype* out = y + n * num_output_;
        for (int64_t j = 0; j < num_output_; ++j) out[j] += b[j];
      }
    }
  }
  void Backward(const std::vector<Blob<Dtype>*>& top, const std::vector<bool>& pd,
                const std::vector<Blob<Dtype>*>& bottom, const std::vector<Blob<Dtype>*>& blobs,
                Phase) override {
    if (!pd.empty() && pd[0]) throw LayerError("Embed: can't backpropagate to the input indices");
    const Dtype* idx = bottom[0]->data;
    const Dtype* dy = top[0]->diff;
    const int64_t m = bottom[0]->count();
    if (Dtype* dw = blobs[0]->diff) {
      for (int64_t n = 0; n < m; ++n) {
        const int64_t index = checked_index(idx[n], n);
        Dtype* row = dw + index * num_output_;
        const Dtype* g = dy + n * num_output_;
        for (int64_t j = 0; j < num_output_; ++j) row[j] += g[j];
      }
    }
    if (bias_term_ && blobs.size() > 1 && blobs[1]->diff) {
      Dtype* db = blobs[1]->diff;
      for (int64_t j = 0; j < num_output_; ++j) {
        Dtype s = 0;
        for (int64_t n = 0; n < m; ++n) s += dy[n * num_output_ + j];
        db[j] += s;
      }
    }
  }

 private:
  // Caffe: index = static_cast<int>(bottom_data[n]) (truncation); its range
  // DCHECKs are compiled out of release builds, here they are errors.
  int64_t checked_index(Dtype v, int64_t n) const {
    if (!(v > Dtype(-1) && v < Dtype(input_dim_))) {
      std::ostringstream os;
      os << "Embed: index " << v << " at input " << n << " is out of range [0, input_dim="
         << input_dim_ << ")";
      throw LayerError(os.str());
    }
    return static_cast<int64_t>(v);
  }

  int64_t num_output_, input_dim_;
  bool bias_term_;
};

}  // namespace

CAFFEDATA_REGISTER_LAYER("Embed", EmbedLayer)

}  // namespace caffedata
