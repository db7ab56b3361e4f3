// BLAS wrappers with Caffe's signatures (caffe/util/math_functions.hpp), for
// float and double, plus a few small helpers layers may include.
//
// With CAFFEDATA_USE_CBLAS (what setup.py builds) the calls go to the OpenBLAS
// shipped inside the mxnet wheel (libopenblas.so.0, LP64 `int` indices).  The
// library is the one libmxnet.so already loads, so there is a single OpenBLAS
// (and a single OpenMP runtime) in the process.  See ops/README.md for which
// kernels run and how a weak fallback core is upgraded at load time
// (blas_tune() in mxnet_glue.cc).  Without the macro a plain-loop fallback is
// compiled, so throwaway test harnesses need no BLAS at all.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sgemm_avx512.h"

namespace caffedata {

enum class Trans { No, Yes };

#ifdef CAFFEDATA_USE_CBLAS
extern "C" {
enum { CD_CblasRowMajor = 101 };
enum { CD_CblasNoTrans = 111, CD_CblasTrans = 112 };
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc);
void cblas_dgemm(int order, int ta, int tb, int m, int n, int k, double alpha, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc);
void cblas_sgemv(int order, int ta, int m, int n, float alpha, const float* a, int lda, const float* x,
                 int incx, float beta, float* y, int incy);
void cblas_dgemv(int order, int ta, int m, int n, double alpha, const double* a, int lda,
                 const double* x, int incx, double beta, double* y, int incy);
void cblas_saxpy(int n, float alpha, const float* x, int incx, float* y, int incy);
void cblas_daxpy(int n, double alpha, const double* x, int incx, double* y, int incy);
void cblas_sscal(int n, float alpha, float* x, int incx);
void cblas_dscal(int n, double alpha, double* x, int incx);
float cblas_sdot(int n, const float* x, int incx, const float* y, int incy);
double cblas_ddot(int n, const double* x, int incx, const double* y, int incy);
}
#endif

namespace detail {
// Reference loops (used without CBLAS, and for tiny problems where a BLAS call
// costs more than it saves).
template <typename Dtype>
void gemm_loops(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, Dtype alpha, const Dtype* A,
                const Dtype* B, Dtype beta, Dtype* C) {
  const int64_t lda = (ta == Trans::No) ? K : M;
  const int64_t ldb = (tb == Trans::No) ? N : K;
  for (int64_t i = 0; i < M; ++i) {
    Dtype* c = C + i * N;
    if (beta == Dtype(0)) {
      std::fill(c, c + N, Dtype(0));
    } else if (beta != Dtype(1)) {
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
    for (int64_t k = 0; k < K; ++k) {
      Dtype a = alpha * ((ta == Trans::No) ? A[i * lda + k] : A[k * lda + i]);
      if (a == Dtype(0)) continue;
      if (tb == Trans::No) {
        const Dtype* b = B + k * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
      } else {
        for (int64_t j = 0; j < N; ++j) c[j] += a * B[j * ldb + k];
      }
    }
  }
}
}  // namespace detail

// C(MxN) = alpha * op(A)(MxK) * op(B)(KxN) + beta * C, row-major, contiguous.
// Same argument order as Caffe's caffe_cpu_gemm.
// Float GEMMs big enough to pay for packing (and not a gemv: N >= 16) run on
// our AVX-512 kernel where the CPU has one: the wheel's OpenBLAS has none.
constexpr int64_t kAvx512GemmMinWork = 1 << 14;  // M * N * K

inline void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 const float* B, float beta, float* C) {
  if (M <= 0 || N <= 0) return;
  if (K > 0 && N >= 16 && M * N * K >= kAvx512GemmMinWork && avx512_sgemm_available()) {
    avx512_sgemm(ta == Trans::Yes, tb == Trans::Yes, M, N, K, alpha, A, B, beta, C);
    return;
  }
#ifdef CAFFEDATA_USE_CBLAS
  if (K > 0) {
    const int lda = (ta == Trans::No) ? int(K) : int(M);
    const int ldb = (tb == Trans::No) ? int(N) : int(K);
    cblas_sgemm(CD_CblasRowMajor, ta == Trans::No ? CD_CblasNoTrans : CD_CblasTrans,
                tb == Trans::No ? CD_CblasNoTrans : CD_CblasTrans, int(M), int(N), int(K), alpha, A, lda,
                B, ldb, beta, C, int(N));
    return;
  }
#endif
  detail::gemm_loops(ta, tb, M, N, K, alpha, A, B, beta, C);
}

// gemm(No, tb, ...) with op(A)'s rows split over `threads` OpenMP threads (in
// blocks of 8, the AVX-512 kernel's panel height) when the whole product is one
// for the AVX-512 kernel: each C(i, j) is then summed exactly as the whole
// product sums it, so the bits do not depend on the thread count. Otherwise
// (a smaller product, OpenBLAS, double) one call on this thread.
template <typename Dtype>
void gemm_split_rows(Trans tb, int64_t M, int64_t N, int64_t K, Dtype alpha, const Dtype* A, const Dtype* B,
                     Dtype beta, Dtype* C, int threads) {
  const bool split = std::is_same<Dtype, float>::value && threads > 1 && M >= 16 && K > 0 && N >= 16 &&
                     M * N * K >= kAvx512GemmMinWork && avx512_sgemm_available();
  if (!split) {
    gemm(Trans::No, tb, M, N, K, alpha, A, B, beta, C);
    return;
  }
  const int64_t chunk = ((M + threads - 1) / threads + 7) / 8 * 8;
  const int64_t chunks = (M + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = c * chunk, rows = std::min(chunk, M - r0);
    avx512_sgemm(false, tb == Trans::Yes, rows, N, K, static_cast<float>(alpha),
                 reinterpret_cast<const float*>(A) + r0 * K, reinterpret_cast<const float*>(B),
                 static_cast<float>(beta), reinterpret_cast<float*>(C) + r0 * N);
  }
}

inline void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                 const double* B, double beta, double* C) {
  if (M <= 0 || N <= 0) return;
#ifdef CAFFEDATA_USE_CBLAS
  if (K > 0) {
    const int lda = (ta == Trans::No) ? int(K) : int(M);
    const int ldb = (tb == Trans::No) ? int(N) : int(K);
    cblas_dgemm(CD_CblasRowMajor, ta == Trans::No ? CD_CblasNoTrans : CD_CblasTrans,
                tb == Trans::No ? CD_CblasNoTrans : CD_CblasTrans, int(M), int(N), int(K), alpha, A, lda,
                B, ldb, beta, C, int(N));
    return;
  }
#endif
  detail::gemm_loops(ta, tb, M, N, K, alpha, A, B, beta, C);
}

// y = alpha * op(A) * x + beta * y, A is MxN row-major (Caffe's caffe_cpu_gemv).
template <typename Dtype>
inline void gemv(Trans ta, int64_t M, int64_t N, Dtype alpha, const Dtype* A, const Dtype* x, Dtype beta,
                 Dtype* y) {
  // A gemv is a gemm with one output column/row.
  if (ta == Trans::No) {
    gemm(Trans::No, Trans::No, M, 1, N, alpha, A, x, beta, y);
  } else {
    gemm(Trans::No, Trans::No, 1, N, M, alpha, x, A, beta, y);
  }
}

// y += alpha * x
inline void axpy(int64_t n, float alpha, const float* x, float* y) {
#ifdef CAFFEDATA_USE_CBLAS
  if (n > 0) { cblas_saxpy(int(n), alpha, x, 1, y, 1); return; }
#endif
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}
inline void axpy(int64_t n, double alpha, const double* x, double* y) {
#ifdef CAFFEDATA_USE_CBLAS
  if (n > 0) { cblas_daxpy(int(n), alpha, x, 1, y, 1); return; }
#endif
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// x *= alpha
template <typename Dtype>
inline void scal(int64_t n, Dtype alpha, Dtype* x) {
  for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

template <typename Dtype>
inline Dtype dot(int64_t n, const Dtype* x, const Dtype* y) {
  Dtype s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

template <typename Dtype>
inline void set(int64_t n, Dtype v, Dtype* x) {
  if (v == Dtype(0)) {
    std::memset(x, 0, sizeof(Dtype) * size_t(n));
  } else {
    std::fill(x, x + n, v);
  }
}

template <typename Dtype>
inline void copy(int64_t n, const Dtype* src, Dtype* dst) {
  if (src != dst) std::memcpy(dst, src, sizeof(Dtype) * size_t(n));
}

}  // namespace caffedata
