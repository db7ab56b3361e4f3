// BLAS setup of the layer library (see ops/README.md, "BLAS: which kernels
// run").  blas_tune() runs once at library load (initialize() in
// mxnet_register.cc); blas_info() is what caffedata's blas_info() reports.
#include "blas_setup.h"

#include "sgemm_avx512.h"

#include <cctype>
#include <cstdlib>
#include <string>

namespace caffedata {

// BLAS core check (see ops/README.md).  OpenBLAS 0.3.13 DYNAMIC_ARCH in the
// wheel has no SkylakeX kernels and on some AVX-512 CPUs settles for the
// SSE3 "Prescott" core.  When no OPENBLAS_CORETYPE was set by the user and
// the detected core is such a weak fallback on a CPU with AVX2+FMA, re-run
// OpenBLAS' core selection with Haswell forced.  Runs once, at library load.
extern "C" {
__attribute__((weak)) char* openblas_get_corename();
__attribute__((weak)) char* openblas_get_config();
__attribute__((weak)) void gotoblas_dynamic_init();
__attribute__((weak)) void gotoblas_dynamic_quit();
}

namespace {
std::string g_blas_note = "not checked";

void tune_once() {
#ifdef CAFFEDATA_USE_CBLAS
  if (!openblas_get_corename) {
    g_blas_note = "not OpenBLAS";
    return;
  }
  std::string core = openblas_get_corename();
  std::string low;
  for (char ch : core) low += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  static const char* weak[] = {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom",
                               "katmai", "coppermine", "northwood", "banias", "athlon", "opteron",
                               "opteron_sse3", "barcelona", "bobcat", "unknown"};
  bool is_weak = false;
  for (const char* w : weak) is_weak = is_weak || low == w;
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (is_weak && avx2 && !user && gotoblas_dynamic_init && gotoblas_dynamic_quit) {
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");
    g_blas_note = "upgraded from " + core + " to " + openblas_get_corename();
  } else {
    g_blas_note = "as detected" + std::string(user ? " (OPENBLAS_CORETYPE set by the user)" : "");
  }
#else
  g_blas_note = "no BLAS (reference loops)";
#endif
}

}  // namespace

void blas_tune() { tune_once(); }

std::string blas_info() {
  std::string s;
#ifdef CAFFEDATA_USE_CBLAS
  if (openblas_get_corename) s = std::string(openblas_get_corename()) + " | " + openblas_get_config() + " | ";
#endif
  const char* gemm = avx512_sgemm_available()
                         ? "; float GEMMs: caffedata's AVX-512 kernel (CAFFEDATA_GEMM=blas for OpenBLAS)"
                         : "; float GEMMs: OpenBLAS";
  return s + g_blas_note + gemm;
}

}  // namespace caffedata
