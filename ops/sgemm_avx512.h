// A single-threaded float GEMM for AVX-512 CPUs (sgemm_avx512.cc).
//
// Why: the OpenBLAS 0.3.13 in the mxnet wheel has no AVX-512 kernels. On an
// AVX-512 CPU its best core (Haswell, see blas_setup.cc) reaches 36-46
// GFLOP/s on the exact Convolution's per-image shapes, while oneDNN, which
// MXNet's own Convolution uses, is about 3x faster. That gap was most of the
// exact path's time on CIFAR-10 quick (issue 10).
#pragma once

#include <cstdint>

namespace caffedata {

// True when this CPU has AVX-512F (checked once) and CAFFEDATA_GEMM is not "blas".
bool avx512_sgemm_available();

// C(MxN) = alpha * op(A)(MxK) * op(B)(KxN) + beta * C; row-major, contiguous,
// Caffe's argument order. With beta == 0, C is written without being read.
// Call only when avx512_sgemm_available().
void avx512_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, const float* B, float beta, float* C);

// The same product with op(B) never stored (an "implicit GEMM", for a
// convolution without im2col): C(M x 16V) = A(M x K, row-major) * B, where the
// columns of B come in V vectors of 16 and element (k, 16v + l) is
// src[row_offset[k] + column_start[v] + l]. C has ceil(M / 8) * 8 rows and
// ceil(V / 2) * 32 columns (row stride ldc); the rows and columns past M and
// 16V are written with what they compute and are for the caller to drop.
// Each C(i, j) is summed over k exactly as avx512_sgemm sums it (alpha 1,
// beta 0), so the two agree to the bit on the same numbers. src must be
// readable 16 floats past every column start plus row offset used.
void avx512_sgemm_implicit_b(int64_t M, int64_t K, const float* A, const float* src, const int64_t* row_offset,
                             const int64_t* column_start, int64_t V, float* C, int64_t ldc);

// C(M x N) = A(M x K, row-major) * op(B)(K x N) + beta * C, where op(B)(k, j) =
// src[row_offset[j] + column_offset[k]]: a convolution's weight gradient with its
// im2col matrix read from zero-padded frames instead of stored (ImplicitConv).
// Each C(i, j) is summed exactly as avx512_sgemm(false, true, ...) sums it on the
// same numbers. Offsets are element indices and must fit an int32.
void avx512_sgemm_gather_b(int64_t M, int64_t N, int64_t K, const float* A, const float* src,
                           const int32_t* row_offset, const int32_t* column_offset, float beta, float* C);

}  // namespace caffedata
