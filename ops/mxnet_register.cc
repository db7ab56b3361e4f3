// MXNet side of the layer library: registers the two stateful library ops
// `_caffedata_op` (CaffeOp) and `_caffedata_loss` (CaffeLoss) through the
// lib_api.h of the mxnet 1.9.1 wheel.  The ctypes API is in capi.cc, the
// BLAS core check in blas_setup.cc.
//
// Inputs of both ops, in order:
//   data_0 .. data_{num_data-1}            Caffe bottoms
//   blob_0 .. blob_{num_weight-1}          Caffe blobs_ (CaffeOp only)
//   phase                                  only when attr phase_input=1: a (1,)
//                                          tensor made by Dropout(ones(1), p=.5)
// Outputs: the Caffe tops.
//
// Phase.  lib_api.h in 1.9.1 never tells a library op whether it runs in
// training mode (CustomFComputeDispatcher in src/c_api/c_api.cc drops
// OpContext::is_train).  The Python wrappers therefore feed the op one extra
// input, `Dropout(ones((1,)), p=0.5)`, built from MXNet's own Dropout: it is
// exactly 1 when MXNet runs the graph for inference and 0 or 2 when it runs
// it for training (Module forward(is_train=...), autograd.record(train_mode),
// Gluon hybridized or not).  The value travels through the engine like any
// other tensor, so it is race-free.  Phase::TEST iff that value is 1.
//
// Loss scaling (CaffeLoss).  Caffe normalises in the loss layer, MXNet in the
// optimizer (rescale_grad = 1/batch).  The loss op sets the loss weight (top
// 0's diff) to  grad_scale (or the prototxt's loss_weight) x N,  N = the first
// dim of bottom 0, and ignores the head gradient.  After MXNet's 1/N the
// optimizer sees exactly Caffe's gradient, so an SGD step equals Caffe's.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "blas_setup.h"
#include "layer.h"
#include "math.h"
#include "mxnet/lib_api.h"

using mxnet::ext::CustomStatefulOp;
using mxnet::ext::MXContext;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

namespace caffedata {
namespace {

using Attrs = std::unordered_map<std::string, std::string>;

// ---------------------------------------------------------------------------
// Attributes.

std::string attr_str(const Attrs& a, const std::string& key, const std::string& dflt) {
  auto it = a.find(key);
  return it == a.end() ? dflt : it->second;
}

int attr_int(const Attrs& a, const std::string& key, int dflt) {
  auto it = a.find(key);
  if (it == a.end()) return dflt;
  char* end = nullptr;
  long v = std::strtol(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end) throw LayerError("attribute " + key + "='" + it->second + "' is not an integer");
  return static_cast<int>(v);
}

double attr_float(const Attrs& a, const std::string& key, double dflt) {
  auto it = a.find(key);
  if (it == a.end()) return dflt;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end) throw LayerError("attribute " + key + "='" + it->second + "' is not a number");
  return v;
}

bool attr_bool(const Attrs& a, const std::string& key, bool dflt) {
  auto it = a.find(key);
  if (it == a.end()) return dflt;
  const std::string& v = it->second;
  if (v == "1" || v == "True" || v == "true") return true;
  if (v == "0" || v == "False" || v == "false") return false;
  throw LayerError("attribute " + key + "='" + v + "' is not a bool");
}

struct OpConfig {
  bool loss = false;
  int num_data = 1;
  int num_weight = 0;
  int num_out = 1;
  bool phase_input = false;
  double grad_scale = 1.0;
  std::string prototxt;
  int num_inputs() const { return num_data + num_weight + (phase_input ? 1 : 0); }
};

OpConfig read_config(const Attrs& a, bool loss) {
  OpConfig c;
  c.loss = loss;
  c.num_data = attr_int(a, "num_data", loss ? 2 : 1);
  c.num_weight = loss ? 0 : attr_int(a, "num_weight", 0);
  c.num_out = attr_int(a, "num_out", 1);
  c.phase_input = attr_bool(a, "phase_input", false);
  c.grad_scale = loss ? attr_float(a, "grad_scale", 1.0) : 1.0;
  c.prototxt = attr_str(a, "prototxt", "layer{}");
  if (c.num_data < 0 || c.num_data > 100) throw LayerError("num_data must be in [0, 100]");
  if (c.num_weight < 0 || c.num_weight > 100) throw LayerError("num_weight must be in [0, 100]");
  if (c.num_out < 1 || c.num_out > 100) throw LayerError("num_out must be in [1, 100]");
  return c;
}

template <typename Dtype>
std::unique_ptr<Layer<Dtype>> make_layer(const ProtoNode& node) {
  return LayerRegistry<Dtype>::Create(node);
}

void check_num_weight(const char* type, int num_weight, size_t blobs) {
  if (static_cast<size_t>(num_weight) != blobs) {
    std::ostringstream os;
    os << type << " layer has " << blobs << " parameter blob(s) but num_weight=" << num_weight
       << "; pass num_weight=" << blobs;
    throw LayerError(os.str());
  }
}

// Scalars (Caffe's 0-axis loss tops) are (1,) in MXNet.
Shape mx_shape(const Shape& s) { return s.empty() ? Shape{1} : s; }

// Runs f, turning any exception into an MXNet error message.
template <typename F>
MXReturnValue guarded(const char* what, const Attrs& attrs, F&& f) {
  try {
    f();
    return MX_SUCCESS;
  } catch (const std::exception& e) {
    std::string where;
    try {
      ProtoNode n = layer_node(attr_str(attrs, "prototxt", "layer{}"));
      where = layer_label(n) + ": ";
    } catch (...) {
    }
    MX_ERROR_MSG << "caffedata " << what << ": " << where << e.what();
    return MX_FAIL;
  }
}

// ---------------------------------------------------------------------------
// Registration callbacks.

template <bool LOSS>
MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  return guarded("parseAttrs", attrs, [&] {
    OpConfig c = read_config(attrs, LOSS);
    *num_in = c.num_inputs();
    *num_out = c.num_out;
  });
}

const char* dtype_name(int t) {
  switch (t) {
    case mxnet::ext::kFloat32: return "float32";
    case mxnet::ext::kFloat64: return "float64";
    case mxnet::ext::kFloat16: return "float16";
    case mxnet::ext::kUint8: return "uint8";
    case mxnet::ext::kInt32: return "int32";
    case mxnet::ext::kInt8: return "int8";
    case mxnet::ext::kInt64: return "int64";
    default: return "unknown";
  }
}

template <bool LOSS>
MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  return guarded("inferType", attrs, [&] {
    OpConfig c = read_config(attrs, LOSS);
    const int nt = c.num_data + c.num_weight;  // typed like the data
    int t = -1;
    for (int i = 0; i < nt && i < static_cast<int>(in->size()); ++i) {
      int ti = (*in)[i];
      if (ti < 0) continue;
      if (ti != mxnet::ext::kFloat32 && ti != mxnet::ext::kFloat64)
        throw LayerError(std::string("input ") + std::to_string(i) + " has dtype " + dtype_name(ti) +
                         "; Caffe layers run in float32 or float64 only");
      if (t >= 0 && ti != t)
        throw LayerError(std::string("all inputs must share one dtype, got ") + dtype_name(t) + " and " +
                         dtype_name(ti) + " (input " + std::to_string(i) + "); labels too: cast them");
      t = ti;
    }
    if (t < 0)
      for (int o : *out)
        if (o == mxnet::ext::kFloat32 || o == mxnet::ext::kFloat64) t = o;
    if (t < 0) t = mxnet::ext::kFloat32;
    for (int i = 0; i < nt && i < static_cast<int>(in->size()); ++i) (*in)[i] = t;
    if (c.phase_input) {
      int& p = (*in)[nt];
      if (p < 0) p = mxnet::ext::kFloat32;
      if (p != mxnet::ext::kFloat32 && p != mxnet::ext::kFloat64)
        throw LayerError(std::string("phase input has dtype ") + dtype_name(p));
    }
    for (auto& o : *out) o = t;
  });
}

bool dim_known(unsigned d) { return d != 0 && d != 0xFFFFFFFFu; }

template <bool LOSS>
MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned>>* in,
                          std::vector<std::vector<unsigned>>* out) {
  return guarded("inferShape", attrs, [&] {
    OpConfig c = read_config(attrs, LOSS);
    ProtoNode node = layer_node(c.prototxt);
    auto L = make_layer<float>(node);
    L->set_num_tops(c.num_out);
    L->set_num_bottoms(c.num_data);
    L->CheckBlobCounts(c.num_data, c.num_out);
    std::vector<Shape> bottom;
    for (int i = 0; i < c.num_data; ++i) {
      const auto& s = (*in)[i];
      bool known = !s.empty() || false;
      for (unsigned d : s) known = known && dim_known(d);
      if (!known) {
        std::ostringstream os;
        os << "the shape of input " << i << " (data_" << i << ") is not known";
        if (!s.empty()) {
          os << " (";
          for (size_t k = 0; k < s.size(); ++k) os << (k ? ", " : "") << (dim_known(s[k]) ? std::to_string(s[k]) : "?");
          os << ")";
        }
        os << "; give every data input a full shape (Module.bind data_shapes/label_shapes, or "
              "Variable(shape=...))";
        throw LayerError(os.str());
      }
      bottom.emplace_back(s.begin(), s.end());
    }
    std::vector<Shape> blobs, tops;
    L->SetUp(bottom, &blobs, &tops);
    check_num_weight(L->type(), c.num_weight, blobs.size());
    for (int j = 0; j < c.num_weight; ++j) {
      auto& s = (*in)[c.num_data + j];
      const Shape& want = blobs[j];
      bool ok = s.empty() || s.size() == want.size();
      for (size_t k = 0; ok && k < s.size(); ++k) ok = !dim_known(s[k]) || s[k] == want[k];
      if (!ok) {
        Shape got;
        for (unsigned d : s) got.push_back(dim_known(d) ? int64_t(d) : int64_t(0));
        std::ostringstream os;
        os << "parameter blob " << j << " has shape " << shape_str(got) << " but the layer needs "
           << shape_str(want) << " (0 = unknown)";
        throw LayerError(os.str());
      }
      s.assign(want.begin(), want.end());  // fits: SetUp refused counts over INT_MAX
    }
    if (c.phase_input) (*in)[c.num_data + c.num_weight] = {1};
    if (static_cast<int>(tops.size()) != c.num_out) {
      std::ostringstream os;
      os << L->type() << " produced " << tops.size() << " top(s) but num_out=" << c.num_out;
      throw LayerError(os.str());
    }
    out->resize(tops.size());
    for (size_t t = 0; t < tops.size(); ++t) {
      Shape s = mx_shape(tops[t]);
      (*out)[t].assign(s.begin(), s.end());  // lib_api's unsigned dims; SetUp refused counts over INT_MAX
    }
  });
}

MXReturnValue mutate_inputs(const Attrs& attrs, std::vector<int>* idx) {
  return guarded("mutateInputs", attrs, [&] {
    OpConfig c = read_config(attrs, false);
    if (c.num_weight == 0) return;
    auto L = make_layer<float>(layer_node(c.prototxt));
    L->set_num_bottoms(c.num_data);
    for (int s : L->StateBlobs())
      if (s < c.num_weight) idx->push_back(c.num_data + s);
  });
}

// ---------------------------------------------------------------------------
// The stateful op: one Layer<Dtype> instance per MXNet op state.

template <typename Dtype>
class CaffeState : public CustomStatefulOp {
 public:
  CaffeState(const OpConfig& c, const ProtoNode& node) : c_(c), node_(node), layer_(make_layer<Dtype>(node)) {
    layer_->set_num_tops(c_.num_out);
    layer_->set_num_bottoms(c_.num_data);
    layer_->CheckBlobCounts(c_.num_data, c_.num_out);
    no_grad_ = layer_->NoGradBottoms();
    state_ = layer_->StateBlobs();
    if (c_.loss || layer_->IsLoss()) {
      std::vector<double> lw = node_.get_floats("loss_weight");
      loss_weight_ = lw.empty() ? c_.grad_scale : lw[0];
    }
  }

  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override {
    return run("forward", [&] {
      auto& in = *inputs;
      auto& out = *outputs;
      expect(in.size(), static_cast<size_t>(c_.num_inputs()), "forward inputs");
      expect(out.size(), static_cast<size_t>(c_.num_out), "forward outputs");
      Phase ph = phase(in);
      std::vector<Shape> bshapes;
      for (int i = 0; i < c_.num_data; ++i) bshapes.push_back(in[i].shape);
      std::vector<Shape> blob_shapes, top_shapes;
      layer_->SetUp(bshapes, &blob_shapes, &top_shapes);
      check_num_weight(layer_->type(), c_.num_weight, blob_shapes.size());
      bottom_.assign(c_.num_data, Blob<Dtype>());
      blobs_.assign(c_.num_weight, Blob<Dtype>());
      top_.assign(c_.num_out, Blob<Dtype>());
      for (int i = 0; i < c_.num_data; ++i) {
        bottom_[i].data = in[i].data<Dtype>();
        bottom_[i].shape = bshapes[i];
      }
      for (int j = 0; j < c_.num_weight; ++j) {
        blobs_[j].data = in[c_.num_data + j].data<Dtype>();
        blobs_[j].shape = blob_shapes[j];
        if (shape_count(in[c_.num_data + j].shape) != shape_count(blob_shapes[j]))
          throw LayerError("parameter blob " + std::to_string(j) + " has shape " +
                           shape_str(in[c_.num_data + j].shape) + ", the layer needs " + shape_str(blob_shapes[j]));
      }
      for (int t = 0; t < c_.num_out; ++t) {
        top_[t].data = out[t].data<Dtype>();
        top_[t].shape = top_shapes[t];
        if (shape_count(out[t].shape) != shape_count(mx_shape(top_shapes[t])))
          throw LayerError("output " + std::to_string(t) + " has shape " + shape_str(out[t].shape) +
                           ", the layer produces " + shape_str(top_shapes[t]));
      }
      std::mt19937* rng = res.get_cpu_rand_states();
      have_fwd_ = true;
      fwd_bshapes_ = bshapes;
      blob_shapes_ = blob_shapes;
      top_shapes_ = top_shapes;
      layer_->Forward(ptrs(bottom_), ptrs(blobs_), ptrs(top_), ph, rng);
    });
  }

  // inputs: [ograd_0..ograd_{nout-1}, in_0..in_{nin-1}, out_0..out_{nout-1}]
  // outputs: [d in_0 .. d in_{nin-1}]
  MXReturnValue Backward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                         const OpResource& res) override {
    return run("backward", [&] {
      auto& in = *inputs;
      auto& out = *outputs;
      const int nin = c_.num_inputs(), nout = c_.num_out;
      expect(in.size(), static_cast<size_t>(nin + 2 * nout), "backward inputs");
      MXTensor* fin = &in[nout];
      MXTensor* fout = &in[nout + nin];
      Phase ph = phase_from(fin);
      std::vector<Shape> bshapes;
      for (int i = 0; i < c_.num_data; ++i) bshapes.push_back(fin[i].shape);
      std::vector<Shape> blob_shapes = blob_shapes_, top_shapes = top_shapes_;
      if (!have_fwd_ || bshapes != fwd_bshapes_) layer_->SetUp(bshapes, &blob_shapes, &top_shapes);
      bottom_.assign(c_.num_data, Blob<Dtype>());
      top_.assign(nout, Blob<Dtype>());
      for (int i = 0; i < c_.num_data; ++i) {
        bottom_[i].data = fin[i].data<Dtype>();
        bottom_[i].shape = bshapes[i];
        bottom_[i].diff = i < static_cast<int>(out.size()) ? out[i].data<Dtype>() : nullptr;
      }
      blobs_.assign(c_.num_weight, Blob<Dtype>());
      for (int j = 0; j < c_.num_weight; ++j) {
        blobs_[j].data = fin[c_.num_data + j].data<Dtype>();
        blobs_[j].shape = blob_shapes[j];
        int k = c_.num_data + j;
        if (k < static_cast<int>(out.size())) {
          blobs_[j].diff = out[k].data<Dtype>();
          set<Dtype>(out[k].size(), Dtype(0), blobs_[j].diff);
        }
      }
      for (int t = 0; t < nout; ++t) {
        top_[t].data = fout[t].data<Dtype>();
        top_[t].shape = top_shapes[t];
        top_[t].diff = in[t].data<Dtype>();
      }
      if (c_.loss) {
        // Caffe: top[0]'s diff holds the loss weight.  x N: see the header.
        int64_t n = bshapes.empty() || bshapes[0].empty() ? 1 : bshapes[0][0];
        loss_diff_.assign(static_cast<size_t>(std::max<int64_t>(1, top_[0].count())),
                          static_cast<Dtype>(loss_weight_ * static_cast<double>(n)));
        top_[0].diff = loss_diff_.data();
        // Other tops (e.g. SoftmaxWithLoss' prob) get no gradient from MXNet.
        zero_tops_.resize(nout);
        for (int t = 1; t < nout; ++t) {
          zero_tops_[t].assign(static_cast<size_t>(top_[t].count()), Dtype(0));
          top_[t].diff = zero_tops_[t].data();
        }
      }
      std::vector<bool> prop(c_.num_data, true);
      for (int i : no_grad_)
        if (i >= 0 && i < c_.num_data) prop[i] = false;
      layer_->Backward(ptrs(top_), prop, ptrs(bottom_), ptrs(blobs_), ph);
      // Gradients nobody may ask for: labels, running state, the phase input.
      for (int i = 0; i < c_.num_data; ++i)
        if (!prop[i] && i < static_cast<int>(out.size())) set<Dtype>(out[i].size(), Dtype(0), out[i].data<Dtype>());
      for (int s : state_) {
        int k = c_.num_data + s;
        if (s < c_.num_weight && k < static_cast<int>(out.size())) set<Dtype>(out[k].size(), Dtype(0), out[k].data<Dtype>());
      }
      if (c_.phase_input && nin - 1 < static_cast<int>(out.size())) zero_tensor(out[nin - 1]);
    });
  }

 private:
  OpConfig c_;
  ProtoNode node_;
  std::unique_ptr<Layer<Dtype>> layer_;
  std::vector<int> no_grad_, state_;
  double loss_weight_ = 1.0;
  std::vector<Blob<Dtype>> bottom_, blobs_, top_;
  // Shapes of the last forward, reused by the backward (no second Reshape, so
  // buffers a layer sized in Reshape keep what Forward stored in them).
  bool have_fwd_ = false;
  std::vector<Shape> fwd_bshapes_, blob_shapes_, top_shapes_;
  std::vector<Dtype> loss_diff_;
  std::vector<std::vector<Dtype>> zero_tops_;


  static void zero_tensor(MXTensor& t) {
    if (t.dtype == mxnet::ext::kFloat64)
      set<double>(t.size(), 0.0, t.data<double>());
    else if (t.dtype == mxnet::ext::kFloat32)
      set<float>(t.size(), 0.0f, t.data<float>());
  }

  static std::vector<Blob<Dtype>*> ptrs(std::vector<Blob<Dtype>>& v) {
    std::vector<Blob<Dtype>*> p;
    for (auto& b : v) p.push_back(&b);
    return p;
  }

  static void expect(size_t got, size_t want, const char* what) {
    if (got != want) {
      std::ostringstream os;
      os << "internal: " << what << " " << got << " != " << want;
      throw LayerError(os.str());
    }
  }

  Phase phase(std::vector<MXTensor>& in) { return phase_from(in.data()); }

  Phase phase_from(MXTensor* fin) {
    if (!c_.phase_input) return Phase::TRAIN;
    MXTensor& p = fin[c_.num_data + c_.num_weight];
    double v = p.dtype == mxnet::ext::kFloat64 ? p.data<double>()[0] : double(p.data<float>()[0]);
    return v == 1.0 ? Phase::TEST : Phase::TRAIN;
  }

  template <typename F>
  MXReturnValue run(const char* what, F&& f) {
    try {
      f();
      return MX_SUCCESS;
    } catch (const std::exception& e) {
      MX_ERROR_MSG << "caffedata " << what << ": " << layer_label(node_) << ": " << e.what();
      return MX_FAIL;
    }
  }
};

template <bool LOSS>
MXReturnValue create_state(const Attrs& attrs, const MXContext& ctx,
                           const std::vector<std::vector<unsigned>>& in_shapes, const std::vector<int> in_types,
                           CustomStatefulOp** out) {
  return guarded("createOpState", attrs, [&] {
    OpConfig c = read_config(attrs, LOSS);
    if (ctx.dev_type != "cpu") throw LayerError("caffedata ops run on the CPU only, got context " + ctx.dev_type);
    ProtoNode node = layer_node(c.prototxt);
    int t = in_types.empty() ? mxnet::ext::kFloat32 : in_types[0];
    if (t == mxnet::ext::kFloat64)
      *out = CustomStatefulOp::create<CaffeState<double>>(c, node);
    else if (t == mxnet::ext::kFloat32 || t < 0)
      *out = CustomStatefulOp::create<CaffeState<float>>(c, node);
    else
      throw LayerError(std::string("dtype ") + dtype_name(t) + " is not supported (float32/float64 only)");
  });
}

// Every input and output is a dense array.  Without this callback MXNet 1.9.1
// refuses to bind a library op whose inputs are not all known to be dense yet
// (BatchNorm's aux states, before Module.bind allocates them): "input tensors
// are not dense for custom operator".
MXReturnValue infer_storage_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  for (auto& s : *in) s = mxnet::ext::kDefaultStorage;
  for (auto& s : *out) s = mxnet::ext::kDefaultStorage;
  return MX_SUCCESS;
}

}  // namespace

}  // namespace caffedata

// ---------------------------------------------------------------------------
// Registration.

REGISTER_OP(_caffedata_op)
    .setParseAttrs(caffedata::parse_attrs<false>)
    .setInferType(caffedata::infer_type<false>)
    .setInferShape(caffedata::infer_shape<false>)
    .setInferSType(caffedata::infer_storage_type)
    .setMutateInputs(caffedata::mutate_inputs)
    .setCreateOpState(caffedata::create_state<false>, "cpu");

REGISTER_OP(_caffedata_loss)
    .setParseAttrs(caffedata::parse_attrs<true>)
    .setInferType(caffedata::infer_type<true>)
    .setInferShape(caffedata::infer_shape<true>)
    .setInferSType(caffedata::infer_storage_type)
    .setCreateOpState(caffedata::create_state<true>, "cpu");

MXReturnValue initialize(int version) {
  if (version < 10900) {
    MX_ERROR_MSG << "caffedata ops need MXNet >= 1.9.0, got " << version;
    return MX_FAIL;
  }
  caffedata::blas_tune();
  return MX_SUCCESS;
}

