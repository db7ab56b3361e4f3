// The ctypes API (declared in capi.h): what caffedata's Python side asks the
// C++ registry before any MXNet op exists, so the registry stays the one
// source of truth for layer types, blob counts and ranks, running-state blobs
// and default fillers.
#include "capi.h"

#include <cstring>
#include <string>
#include <vector>

#include "blas_setup.h"
#include "layer.h"

namespace caffedata {
namespace {

// Copies s into dst[cap] NUL-terminated; a cut never splits a UTF-8
// character (the Python side decodes the result).
void copy_text(const std::string& s, char* dst, size_t cap) {
  if (!dst || cap == 0) return;
  size_t n = s.size();
  if (n >= cap) {
    n = cap - 1;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // back to a lead byte
  }
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

void too_many(const char* what, size_t n) {
  throw LayerError(std::string("the layer has ") + std::to_string(n) + " " + what + "; at most " +
                   std::to_string(CAFFEDATA_MAX_BLOBS) + " are supported");
}

void fill_shapes(const std::vector<Shape>& shapes, int32_t* ndim, int64_t (*dims)[CAFFEDATA_MAX_AXES],
                 const char* what) {
  if (shapes.size() > CAFFEDATA_MAX_BLOBS) too_many(what, shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (shapes[i].size() > CAFFEDATA_MAX_AXES)
      throw LayerError(std::string(what) + " " + std::to_string(i) + " has more than " +
                       std::to_string(CAFFEDATA_MAX_AXES) + " axes");
    ndim[i] = static_cast<int32_t>(shapes[i].size());
    for (size_t k = 0; k < shapes[i].size(); ++k) dims[i][k] = shapes[i][k];
  }
}

const std::vector<std::string>& type_names() {
  static const std::vector<std::string> names = LayerRegistry<float>::Types();
  return names;
}

}  // namespace
}  // namespace caffedata

extern "C" {

int caffedata_capi_version(void) { return CAFFEDATA_CAPI_VERSION; }

int caffedata_layer_type_count(void) { return static_cast<int>(caffedata::type_names().size()); }

const char* caffedata_layer_type_name(int index) {
  const auto& names = caffedata::type_names();
  if (index < 0 || index >= static_cast<int>(names.size())) return nullptr;
  return names[index].c_str();
}

void caffedata_blas_info(caffedata_blas_info_t* out) {
  std::memset(out, 0, sizeof(*out));
  const std::string s = caffedata::blas_info();
  // "<core> | <config> | <note>", or just the note without OpenBLAS.
  const size_t a = s.find(" | "), b = a == std::string::npos ? a : s.find(" | ", a + 3);
  if (b == std::string::npos) {
    caffedata::copy_text(s, out->note, sizeof(out->note));
  } else {
    caffedata::copy_text(s.substr(0, a), out->core, sizeof(out->core));
    caffedata::copy_text(s.substr(a + 3, b - a - 3), out->config, sizeof(out->config));
    caffedata::copy_text(s.substr(b + 3), out->note, sizeof(out->note));
  }
}

int caffedata_layer_info(const char* prototxt, int bottom0_axes, int num_bottoms, caffedata_layer_info_t* out) {
  std::memset(out, 0, sizeof(*out));
  try {
    caffedata::ProtoNode node = caffedata::layer_node(prototxt);
    auto L = caffedata::LayerRegistry<float>::Create(node);
    L->set_num_bottoms(num_bottoms);
    const std::vector<int> axes = L->BlobNumAxes(bottom0_axes);
    const std::vector<int> state = L->StateBlobs();
    const std::vector<int> no_grad = L->NoGradBottoms();
    const std::vector<caffedata::Filler> fillers = L->BlobFillers();
    if (axes.size() > CAFFEDATA_MAX_BLOBS) caffedata::too_many("parameter blobs", axes.size());
    if (no_grad.size() > CAFFEDATA_MAX_BLOBS) caffedata::too_many("no-gradient bottoms", no_grad.size());
    if (fillers.size() != axes.size())
      throw caffedata::LayerError("internal: " + std::string(L->type()) + " declares " +
                                  std::to_string(fillers.size()) + " filler(s) for " + std::to_string(axes.size()) +
                                  " parameter blob(s)");
    out->num_blobs = static_cast<int32_t>(axes.size());
    out->is_loss = L->IsLoss() ? 1 : 0;
    out->num_state_blobs = static_cast<int32_t>(state.size());
    out->num_no_grad_bottoms = static_cast<int32_t>(no_grad.size());
    out->exact_bottoms = L->ExactNumBottomBlobs();
    out->min_bottoms = L->MinBottomBlobs();
    out->max_bottoms = L->MaxBottomBlobs();
    out->exact_tops = L->ExactNumTopBlobs();
    out->min_tops = L->MinTopBlobs();
    out->max_tops = L->MaxTopBlobs();
    for (size_t i = 0; i < axes.size(); ++i) out->blob_axes[i] = axes[i];
    for (size_t i = 0; i < state.size() && i < CAFFEDATA_MAX_BLOBS; ++i) out->state_blobs[i] = state[i];
    for (size_t i = 0; i < no_grad.size(); ++i) out->no_grad_bottoms[i] = no_grad[i];
    for (size_t i = 0; i < fillers.size(); ++i) {
      const caffedata::Filler& f = fillers[i];
      caffedata_filler_t& o = out->fillers[i];
      o.origin = f.origin;
      caffedata::copy_text(f.type, o.type, sizeof(o.type));
      o.value = f.value;
      o.min = f.min;
      o.max = f.max;
      o.mean = f.mean;
      o.std = f.std;
      o.sparse = f.sparse;
      caffedata::copy_text(f.variance_norm, o.variance_norm, sizeof(o.variance_norm));
    }
    return 0;
  } catch (const std::exception& e) {
    caffedata::copy_text(e.what(), out->error, sizeof(out->error));
    return -1;
  }
}

int caffedata_layer_shapes(const char* prototxt, const int64_t* dims, const int32_t* ndims, int nbottom,
                           caffedata_layer_shapes_t* out) {
  std::memset(out, 0, sizeof(*out));
  try {
    caffedata::ProtoNode node = caffedata::layer_node(prototxt);
    auto L = caffedata::LayerRegistry<double>::Create(node);
    L->set_num_bottoms(nbottom);
    std::vector<caffedata::Shape> bottom;
    for (int i = 0, k = 0; i < nbottom; ++i) {
      bottom.emplace_back(dims + k, dims + k + ndims[i]);
      k += ndims[i];
    }
    std::vector<caffedata::Shape> blobs, tops;
    L->SetUp(bottom, &blobs, &tops);
    caffedata::fill_shapes(blobs, out->blob_ndim, out->blob_dims, "parameter blob");
    caffedata::fill_shapes(tops, out->top_ndim, out->top_dims, "top");
    out->num_blobs = static_cast<int32_t>(blobs.size());
    out->num_tops = static_cast<int32_t>(tops.size());
    return 0;
  } catch (const std::exception& e) {
    caffedata::copy_text(e.what(), out->error, sizeof(out->error));
    return -1;
  }
}

}  // extern "C"
