// ops/sgemm_avx512.cc against a double-precision loop, then against the
// wheel's OpenBLAS on the exact Convolution's shapes (1 thread).  Build and run
// from the repository root, with the mxnet wheel installed:
//
//   MX=$(python -c "import os, mxnet; print(os.path.dirname(mxnet.__file__))")
//   g++ -O3 -std=c++17 -I ops benchmarks/sgemm_vs_openblas.cc ops/sgemm_avx512.cc \
//       -o /tmp/sgemm_vs_openblas $MX/libopenblas.so.0 -Wl,-rpath,$MX
//   OPENBLAS_CORETYPE=Haswell /tmp/sgemm_vs_openblas
//
// (OPENBLAS_CORETYPE=Haswell: what the ops library selects at load on CPUs
// that OpenBLAS 0.3.13 mistakes for an SSE3 "Prescott"; see ops/README.md.)
#include "sgemm_avx512.h"
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <ctime>
extern "C" void cblas_sgemm(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
extern "C" void openblas_set_num_threads(int);
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
using namespace caffedata;
int check(bool ta, bool tb, int M, int N, int K, float alpha, float beta) {
  std::vector<float> A(M*K), B(K*N), C(M*N), C0;
  for (auto& x : A) x = (rand() % 2001 - 1000) / 1000.f;
  for (auto& x : B) x = (rand() % 2001 - 1000) / 1000.f;
  for (auto& x : C) x = beta == 0 ? NAN : (rand() % 2001 - 1000) / 1000.f;
  C0 = C;
  avx512_sgemm(ta, tb, M, N, K, alpha, A.data(), B.data(), beta, C.data());
  double maxerr = 0;
  for (int i = 0; i < M; i++) for (int j = 0; j < N; j++) {
    double s = 0; for (int k = 0; k < K; k++) s += double(ta ? A[k*M+i] : A[i*K+k]) * double(tb ? B[j*K+k] : B[k*N+j]);
    double ref = alpha * s + (beta == 0 ? 0 : beta * double(C0[i*N+j]));
    double e = std::fabs(ref - C[i*N+j]) / (1 + std::fabs(ref));
    if (!(e <= maxerr)) maxerr = e;  // NaN propagates
  }
  if (!(maxerr < 1e-4)) { printf("FAIL ta=%d tb=%d M=%d N=%d K=%d a=%g b=%g err=%g\n", ta, tb, M, N, K, alpha, beta, maxerr); return 1; }
  return 0;
}
void perf(const char* name, bool ta, bool tb, int M, int N, int K, int reps) {
  std::vector<float> A(M*K, 0.5f), B(K*N, 0.25f), C(M*N);
  avx512_sgemm(ta, tb, M, N, K, 1, A.data(), B.data(), 0, C.data());
  double t = now(); for (int r = 0; r < reps; r++) avx512_sgemm(ta, tb, M, N, K, 1, A.data(), B.data(), 0, C.data()); double d1 = now() - t;
  int lda = ta ? M : K, ldb = tb ? K : N;
  t = now(); for (int r = 0; r < reps; r++) cblas_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, M, N, K, 1, A.data(), lda, B.data(), ldb, 0, C.data(), N); double d2 = now() - t;
  printf("%-24s ours %.1f GFLOP/s, openblas %.1f GFLOP/s (%.2fx)\n", name, 2.0*M*N*K*reps/d1/1e9, 2.0*M*N*K*reps/d2/1e9, d2/d1);
}
int main() {
  openblas_set_num_threads(1);
  int fails = 0;
  int sizes[] = {1, 3, 11, 12, 13, 31, 32, 33, 100, 257};
  for (int ta = 0; ta < 2; ta++) for (int tb = 0; tb < 2; tb++)
    for (int M : sizes) for (int N : {1, 5, 32, 33, 70, 2100}) for (int K : {1, 7, 256, 300})
      if ((long)M*N*K < 3000000) fails += check(ta, tb, M, N, K, (M+N)%3 ? 1.f : 0.5f, (K%2) ? 0.f : (N%2 ? 1.f : -0.7f));
  printf("fails %d\n", fails);
  perf("big 1024", 0, 0, 1024, 1024, 1024, 3);
  perf("conv2 fwd", 0, 0, 32, 256, 800, 400);
  perf("conv1 fwd", 0, 0, 32, 1024, 75, 400);
  perf("conv3 fwd", 0, 0, 64, 64, 800, 400);
  perf("conv2 dW (NT)", 0, 1, 32, 800, 256, 400);
  perf("conv2 dcol (TN)", 1, 0, 800, 256, 32, 400);
  perf("ip fc (NT)", 0, 1, 100, 64, 1024, 400);
  perf("googlenet conv2 fwd", 0, 0, 192, 784, 576, 20);
  perf("googlenet 1x1 fwd", 0, 0, 64, 784, 192, 100);
  return fails != 0;
}
