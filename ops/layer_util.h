// Small helpers shared by the layer implementations (header-only, internal linkage).
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "layer.h"

// A hot loop built several times (AVX-512, AVX2 and baseline x86-64), the CPU
// picking one when the library loads. That needs GNU ifunc (Linux, ELF);
// elsewhere the loop is built once, for the baseline.
#if defined(__x86_64__) && defined(__ELF__) && defined(__GNUC__)
#define CAFFEDATA_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CAFFEDATA_CPU_CLONES
#endif

namespace caffedata {
namespace layer_util {

// A proto `float` field, rounded to float as Caffe stores it.
inline float proto_float(const ProtoNode& node, const char* field, float dflt) {
  return static_cast<float>(node.get_float(field, dflt));
}

// Whether bottom i asked for a gradient and has a buffer for it.
template <typename Dtype>
inline bool wants_diff(const std::vector<bool>& propagate_down,
                       const std::vector<Blob<Dtype>*>& bottom, size_t i) {
  return i < propagate_down.size() && propagate_down[i] && i < bottom.size() &&
         bottom[i]->diff != nullptr;
}

// Number of tops: the op's num_out (Layer::num_tops(), set by the glue); else
// the size the caller gave `top`, else the prototxt's `top:` entries, else 1.
inline size_t top_count(int hint, const ProtoNode& layer, const std::vector<Shape>& top) {
  if (hint > 0) return static_cast<size_t>(hint);
  if (!top.empty()) return top.size();
  const int n = layer.count("top");
  return n > 0 ? static_cast<size_t>(n) : 1;
}

// The OpenMP threads the calling thread allows (1 without OpenMP).
inline int max_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

// OpenMP threads for a loop of independent items (pooling planes, LRN's
// per-element powers): what the caller allows when there are at least 2^16
// units of work, else 1.  Each item is computed as Caffe computes it, so the
// thread count changes no bit.
inline int item_threads(int64_t work) { return work >= (int64_t(1) << 16) ? max_threads() : 1; }

inline void need_bottoms(const char* type, const std::vector<Shape>& bottom, size_t n) {
  if (bottom.size() < n) {
    std::ostringstream os;
    os << type << " needs " << n << " input(s), got " << bottom.size();
    throw LayerError(os.str());
  }
}

}  // namespace layer_util
}  // namespace caffedata
