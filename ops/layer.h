// The contract every Caffe-style layer in this library implements.
//
// caffedata has no Caffe to call, so each layer re-implements Caffe 1.0's
// semantics (forward, backward, parameter-blob shapes) against this small
// interface.  The MXNet glue (ops/mxnet_glue.cc) owns everything MXNet-specific:
// it parses the prototxt into a ProtoNode, builds the layer through the
// registry, wraps MXNet tensors as Blobs and calls Reshape/Forward/Backward.
//
// Conventions, all taken from Caffe:
//  * Reshape() is pure shape logic.  It is called during MXNet shape inference
//    and again before every Forward with the real shapes.  It must throw
//    LayerError (never abort) for anything a user can get wrong.
//  * Forward() overwrites tops.
//  * Backward() overwrites bottom diffs where propagate_down[i] is true, and
//    ACCUMULATES into parameter-blob diffs (the glue zeroes them first).
//  * A layer instance lives from a forward to its backward, so it may keep
//    buffers (dropout mask, max-pool argmax, softmax probabilities) as members.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace caffedata {

using Shape = std::vector<int64_t>;

inline int64_t shape_count(const Shape& s, size_t start = 0, size_t end = SIZE_MAX) {
  if (end > s.size()) end = s.size();
  int64_t n = 1;
  for (size_t i = start; i < end; ++i) n *= s[i];
  return n;
}

// Caffe's CanonicalAxisIndex: negative axes count from the end.
int canonical_axis(int axis, int num_axes);  // throws LayerError when out of range

std::string shape_str(const Shape& s);  // "(2, 3, 4)"

class LayerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A parsed protobuf text-format message: the `layer { ... }` node and its
// sub-messages.  Field order and repetition are kept.  Lookups of a missing
// optional field return the caller's default (the proto's default), exactly as
// Caffe's generated accessors would.  Enum values are kept as their identifier
// text (e.g. "MAX"); get_enum returns that text.
class ProtoNode {
 public:
  static ProtoNode parse(const std::string& text);  // throws LayerError on bad syntax

  bool has(const std::string& field) const;
  int count(const std::string& field) const;           // repetitions of a field
  // Scalar fields: the last occurrence wins (proto2 `optional` semantics).
  double get_float(const std::string& field, double dflt) const;
  int64_t get_int(const std::string& field, int64_t dflt) const;
  bool get_bool(const std::string& field, bool dflt) const;
  std::string get_string(const std::string& field, const std::string& dflt) const;
  std::string get_enum(const std::string& field, const std::string& dflt) const;
  // Repeated scalar fields, in order.
  std::vector<double> get_floats(const std::string& field) const;
  std::vector<int64_t> get_ints(const std::string& field) const;
  // Sub-messages.  child() returns an empty node when the field is absent, so
  // `p.child("inner_product_param").get_int("num_output", 0)` is always safe.
  const ProtoNode& child(const std::string& field) const;
  std::vector<const ProtoNode*> children(const std::string& field) const;

  // Storage (public so the parser can fill it; layers use the accessors).
  struct Entry {
    std::string name;
    bool is_message = false;
    std::string scalar;  // raw token text; strings already unquoted/unescaped
    std::shared_ptr<ProtoNode> message;
  };
  std::vector<Entry> entries;
};

// The op's prototxt: a NetParameter text with exactly one `layer { ... }`,
// or a bare LayerParameter text.  Returns the layer node; throws LayerError.
ProtoNode layer_node(const std::string& text);
// "layer type 'X' (name 'y')" for error messages.
std::string layer_label(const ProtoNode& node);

// A non-owning view of one MXNet tensor (data) and its gradient (diff).
// diff is null where no gradient buffer exists (forward, or no propagation).
template <typename Dtype>
struct Blob {
  Dtype* data = nullptr;
  Dtype* diff = nullptr;
  Shape shape;
  int64_t count() const { return shape_count(shape); }
  int num_axes() const { return static_cast<int>(shape.size()); }
  // Caffe's legacy accessors: axes 0..3 with one-padding for fewer axes.
  int64_t legacy_shape(int index) const {
    if (index >= num_axes() || index < -num_axes()) return 1;
    return shape[canonical_axis(index, num_axes())];
  }
};

enum class Phase { TRAIN = 0, TEST = 1 };

// A Caffe FillerParameter for one parameter blob, declared by the layer next
// to its code (Layer::BlobFillers) and read by the Python side through the
// ctypes API to build the blob's initializer.  `origin` says whose it is:
//   USER           the layer's prototxt gave it (weight_filler, filler, ...);
//   LAYER_DEFAULT  Caffe's default for this layer, applied as is (PReLU 0.25,
//                  Scale 1, Bias 0, BatchNorm's running state 0);
//   FRAMEWORK      Caffe's default (the fields say what it is, usually
//                  constant 0) deferred to the framework's own initializer
//                  (Module.init_params(initializer=...)), as MXNet users expect
//                  for InnerProduct, Convolution, Deconvolution and Embed.
struct Filler {
  enum Origin { USER = 0, LAYER_DEFAULT = 1, FRAMEWORK = 2 };
  Origin origin = FRAMEWORK;
  std::string type = "constant";
  double value = 0, min = 0, max = 1, mean = 0, std = 1;
  int64_t sparse = -1;
  std::string variance_norm = "FAN_IN";  // FAN_IN, FAN_OUT, AVERAGE

  static Filler Constant(double v, Origin o) {
    Filler f;
    f.origin = o;
    f.value = v;
    return f;
  }
  // parent's `field` sub-message (proto defaults for unset fields) as USER,
  // or `dflt` when the field is absent.
  static Filler From(const ProtoNode& parent, const std::string& field, const Filler& dflt);
};

template <typename Dtype>
class Layer {
 public:
  explicit Layer(const ProtoNode& param) : param_(param) {}
  virtual ~Layer() = default;

  // Caffe's "type" string, e.g. "InnerProduct".
  virtual const char* type() const = 0;

  // Number of bottoms/tops accepted; -1 means "any" (Caffe's CheckBlobCounts).
  virtual int ExactNumBottomBlobs() const { return -1; }
  virtual int MinBottomBlobs() const { return -1; }
  virtual int MaxBottomBlobs() const { return -1; }
  virtual int ExactNumTopBlobs() const { return -1; }
  virtual int MinTopBlobs() const { return -1; }
  virtual int MaxTopBlobs() const { return -1; }
  // Loss layers (their top 0 is a loss, weighted by the top diff).
  virtual bool IsLoss() const { return false; }
  // Bottoms Caffe refuses to backpropagate to (e.g. labels); index list.
  virtual std::vector<int> NoGradBottoms() const { return {}; }

  // Number of axes of each parameter blob, from the prototxt alone, so the
  // Python side can create weight Variables with ndim-correct partial shapes
  // before any input shape is known (MXNet 1.9.1 crashes on fully unknown
  // shapes).  `bottom0_axes` is the assumed number of axes of bottom 0 (4
  // unless the caller knows better).  Its size is the layer's blob count.
  virtual std::vector<int> BlobNumAxes(int bottom0_axes) const { return {}; }
  // One Filler per parameter blob (same count and order as BlobNumAxes).
  virtual std::vector<Filler> BlobFillers() const { return {}; }
  // Parameter blobs that are running state, not learned (BatchNorm's mean,
  // variance and factor).  The glue marks them as mutable (auxiliary) inputs.
  virtual std::vector<int> StateBlobs() const { return {}; }

  // Caffe's Layer::SetUp, non-virtual.  The first call checks the bottom and
  // top counts (CheckBlobCounts) and runs LayerSetUp once, so parameters are
  // parsed once per layer instance; every call then runs Reshape and checks
  // that no blob holds more than INT_MAX elements (Caffe's Blob::Reshape
  // check; the mxnet 1.9.1 wheel has 32-bit tensor sizes).  The glue calls
  // SetUp wherever Caffe would call SetUp or Reshape.
  void SetUp(const std::vector<Shape>& bottom, std::vector<Shape>* blobs, std::vector<Shape>* top) {
    if (!set_up_) {
      CheckBlobCounts(static_cast<int>(bottom.size()), num_tops_);
      LayerSetUp(bottom);
      set_up_ = true;
    }
    Reshape(bottom, blobs, top);
    CheckCountLimit("parameter blob", *blobs);
    CheckCountLimit("top", *top);
  }

  // Caffe's CheckBlobCounts; num_top < 0 (unknown) skips the top checks.
  // Throws LayerError naming the layer type and both counts.
  void CheckBlobCounts(int num_bottom, int num_top) const {
    check_count("bottom", "num_data", num_bottom, ExactNumBottomBlobs(), MinBottomBlobs(), MaxBottomBlobs());
    if (num_top >= 0) check_count("top", "num_out", num_top, ExactNumTopBlobs(), MinTopBlobs(), MaxTopBlobs());
  }

  // One-time setup from the prototxt (and the first bottom shapes): parse and
  // validate parameters here, not in Reshape.
  virtual void LayerSetUp(const std::vector<Shape>& bottom) {}

  // Shapes: given the bottom shapes, fill the parameter-blob shapes (in Caffe
  // blobs_ order) and the top shapes.  Throws LayerError on inconsistency.
  // Called through SetUp only.
  virtual void Reshape(const std::vector<Shape>& bottom, std::vector<Shape>* blobs,
                       std::vector<Shape>* top) = 0;

  // Called after Reshape with the real tensors.  `rng` is MXNet's CPU random
  // generator for this op (Dropout).
  virtual void Forward(const std::vector<Blob<Dtype>*>& bottom,
                       const std::vector<Blob<Dtype>*>& blobs,
                       const std::vector<Blob<Dtype>*>& top, Phase phase,
                       std::mt19937* rng) = 0;

  // top[i]->diff holds the incoming gradient (for a loss layer top 0's diff
  // holds the loss weight, as in Caffe).  Layers without a backward throw
  // LayerError.
  virtual void Backward(const std::vector<Blob<Dtype>*>& top,
                        const std::vector<bool>& propagate_down,
                        const std::vector<Blob<Dtype>*>& bottom,
                        const std::vector<Blob<Dtype>*>& blobs, Phase phase) = 0;

  const ProtoNode& param() const { return param_; }

  // Number of tops the op was built with (num_out), set by the glue before
  // the first Reshape; -1 when unknown (then produce the minimal set).
  // Layers with optional tops (SoftmaxWithLoss' prob, Accuracy's per-class
  // top) size their top list from it.
  void set_num_tops(int n) { num_tops_ = n; }
  int num_tops() const { return num_tops_; }
  // Number of bottoms the op was built with (num_data), set by the glue right
  // after creating the layer (also for BlobNumAxes); -1 when unknown.  Layers
  // whose blob count depends on the bottom count (Scale, Bias) read it.
  void set_num_bottoms(int n) { num_bottoms_ = n; }
  int num_bottoms() const { return num_bottoms_; }

 protected:
  ProtoNode param_;  // the whole `layer { ... }` node
  int num_tops_ = -1;
  int num_bottoms_ = -1;

 private:
  bool set_up_ = false;

  void check_count(const char* what, const char* attr, int got, int exact, int min, int max) const {
    const char* rel = nullptr;
    int want = 0;
    if (exact >= 0 && got != exact) rel = "exactly ", want = exact;
    else if (min >= 0 && got < min) rel = "at least ", want = min;
    else if (max >= 0 && got > max) rel = "at most ", want = max;
    if (!rel) return;
    throw LayerError(std::string(type()) + " layer takes " + rel + std::to_string(want) + " " + what +
                     " blob(s), got " + std::to_string(got) + " (" + attr + "=" + std::to_string(got) + ")");
  }

  void CheckCountLimit(const char* what, const std::vector<Shape>& shapes) const {
    for (size_t i = 0; i < shapes.size(); ++i) {
      int64_t count = 1;
      for (int64_t d : shapes[i]) {
        if (d < 0 || (d > 0 && count > INT32_MAX / d))
          throw LayerError(std::string(type()) + ": " + what + " " + std::to_string(i) + " would have shape " +
                           shape_str(shapes[i]) + ", more than INT_MAX (2147483647) elements; Caffe and the "
                           "mxnet 1.9.1 wheel (32-bit tensor sizes) cannot hold it");
        count *= d;
      }
    }
  }
};

// Registry: type string -> factory, filled by REGISTER_LAYER in each .cc file.
template <typename Dtype>
class LayerRegistry {
 public:
  using Creator = std::function<std::unique_ptr<Layer<Dtype>>(const ProtoNode&)>;
  static std::map<std::string, Creator>& Registry() {
    static std::map<std::string, Creator> registry;
    return registry;
  }
  static bool Add(const std::string& type, Creator creator) {
    Registry()[type] = std::move(creator);
    return true;
  }
  // Throws LayerError naming the supported types when `type` is unknown.
  static std::unique_ptr<Layer<Dtype>> Create(const ProtoNode& layer_param);
  static std::vector<std::string> Types();
};

// Registers `Class<float>` and `Class<double>` under `type_name`.
#define CAFFEDATA_REGISTER_LAYER(type_name, Class)                                  \
  static bool caffedata_registered_f_##Class = ::caffedata::LayerRegistry<float>::Add( \
      type_name, [](const ::caffedata::ProtoNode& p) {                                \
        return std::unique_ptr<::caffedata::Layer<float>>(new Class<float>(p));     \
      });                                                                            \
  static bool caffedata_registered_d_##Class = ::caffedata::LayerRegistry<double>::Add( \
      type_name, [](const ::caffedata::ProtoNode& p) {                                \
        return std::unique_ptr<::caffedata::Layer<double>>(new Class<double>(p));   \
      });

}  // namespace caffedata
