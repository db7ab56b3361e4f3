// BLAS core check at library load and the report of it (blas_setup.cc).
#pragma once

#include <string>

namespace caffedata {

// Re-run OpenBLAS' core selection with Haswell forced when it settled for a
// weak SSE3 fallback on an AVX2+FMA CPU and the user set no OPENBLAS_CORETYPE.
void blas_tune();
// "<OpenBLAS core> | <OpenBLAS config> | <note>".
std::string blas_info();

}  // namespace caffedata
