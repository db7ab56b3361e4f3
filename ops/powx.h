// y[i] = powf(x[i], p), bit for bit the C library's powf, as Caffe's
// caffe_powx<float> computes it (LRN's scale^-beta is most of LRN's time).
#pragma once

#include <cstdint>

namespace caffedata {

// Vectorised where that provably gives powf's bits (see powx.cc); elsewhere,
// and for every element it cannot vouch for, it calls powf.
void powx_float(int64_t n, const float* x, float p, float* y);

}  // namespace caffedata
