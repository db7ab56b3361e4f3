// powf(x, p) over arrays with powf's exact bits, eight elements at a time.
//
// Why this is exact.  glibc's powf (2.28 and later: the Arm optimized-routines
// algorithm) evaluates x^p in double precision and rounds that double to
// float once.  Its documented error before the rounding is, relative,
//   |p log2 x| * ln2 * 1.83 * 2^-33  (the log2 table and polynomial)
//   + 1.69 * 2^-34                    (exp2),
// so its float is the correctly rounded x^p unless x^p lies that close to a
// midpoint between two floats.  Here x^p = exp(p ln x) is evaluated in double
// to a far smaller error (below 2^-45 for |p ln x| <= 4) and rounded to float;
// wherever that double lies farther from a midpoint than both errors together
// (times 4, for safety), both roundings give the same float.  Elements closer
// to a midpoint (a few percent), non-normal inputs or results, |p ln x| > 4,
// other C libraries and CPUs without AVX-512 all call powf itself.
#include "powx.h"

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#include <gnu/libc-version.h>
#include <immintrin.h>
#define CAFFEDATA_POWX_VECTOR 1
#endif

namespace caffedata {

namespace {

void powx_scalar(int64_t n, const float* x, float p, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::pow(x[i], p);
}

#ifdef CAFFEDATA_POWX_VECTOR

// CAFFEDATA_POWX=libm: every element through powf (for comparisons).
bool vector_path_usable() {
  static const bool usable = [] {
    const char* choice = std::getenv("CAFFEDATA_POWX");
    if (choice != nullptr && std::strcmp(choice, "libm") == 0) return false;
    int major = 0, minor = 0;
    if (std::sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) != 2) return false;
    const bool documented_powf = major > 2 || (major == 2 && minor >= 28);
    return documented_powf && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2");
  }();
  return usable;
}

// Horner's rule over coefficients c[0] + c[1] v + ... (highest first in the loop),
// one fused multiply-add a step.
template <int N>
__attribute__((target("avx512f,avx2"), always_inline)) inline __m512d horner(__m512d v,
                                                                              const double (&c)[N]) {
  __m512d acc = _mm512_set1_pd(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) acc = _mm512_fmadd_pd(acc, v, _mm512_set1_pd(c[k]));
  return acc;
}

// The truncation errors below, relative to exp(z) (|z| <= 4), stay under 2^-47;
// the margin allows 2^-40 for ours.
// 1/(2k+1), k = 0..9: log(m) = 2 t sum t^2k/(2k+1), |t| <= 0.1716 (truncation
// below 2 |t|^21 / 21 / (1 - t^2), times |p| <= 4 / |ln x|)
constexpr double kAtanhSeries[10] = {1.0,     1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9,
                                     1.0 / 11, 1.0 / 13, 1.0 / 15, 1.0 / 17, 1.0 / 19};
// 1/j!, j = 0..11: exp(r) for |r| <= ln2/2 (truncation below 2^-47)
constexpr double kExpSeries[12] = {1.0,           1.0,           1.0 / 2,        1.0 / 6,
                                   1.0 / 24,      1.0 / 120,     1.0 / 720,      1.0 / 5040,
                                   1.0 / 40320,   1.0 / 362880,  1.0 / 3628800,  1.0 / 39916800};

__attribute__((target("avx512f,avx2"))) void powx_avx512(int64_t n, const float* x, float p, float* y) {
  // ln2 split so that e * kLn2Hi is exact for |e| < 2^21 (fdlibm's constants)
  const __m512d ln2_hi = _mm512_set1_pd(6.93147180369123816490e-01);
  const __m512d ln2_lo = _mm512_set1_pd(1.90821492927058770002e-10);
  const __m512d inv_ln2 = _mm512_set1_pd(1.44269504088896338700e+00);
  const __m512d sqrt2 = _mm512_set1_pd(1.41421356237309504880);
  const __m512d one = _mm512_set1_pd(1.0), half = _mm512_set1_pd(0.5), zero = _mm512_setzero_pd();
  const __m512d vp = _mm512_set1_pd(static_cast<double>(p));
  const __m512d flt_min = _mm512_set1_pd(FLT_MIN), flt_max = _mm512_set1_pd(FLT_MAX);
  const __m512d max_z = _mm512_set1_pd(4.0);
  // 4 x glibc's bound (constant and per-|z| parts) + ours
  const __m512d margin0 = _mm512_set1_pd(4 * 1.69 * 0x1p-34 + 0x1p-40);
  const __m512d margin1 = _mm512_set1_pd(4 * 1.83 * 0x1p-33);
  const __m512i abs_mask = _mm512_set1_epi64(0x7fffffffffffffffLL);
  const __m256i one_i = _mm256_set1_epi32(1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xf = _mm256_loadu_ps(x + i);
    const __m512d xd = _mm512_cvtps_pd(xf);
    // x = 2^e m with m in [sqrt(1/2), sqrt(2))
    __m512d m = _mm512_getmant_pd(xd, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    __m512d e = _mm512_getexp_pd(xd);
    const __mmask8 upper = _mm512_cmp_pd_mask(m, sqrt2, _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(m, upper, m, half);
    e = _mm512_mask_add_pd(e, upper, e, one);
    const __m512d t = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
    const __m512d log_m = _mm512_mul_pd(_mm512_add_pd(t, t), horner(_mm512_mul_pd(t, t), kAtanhSeries));
    const __m512d log_x = _mm512_fmadd_pd(e, ln2_hi, _mm512_fmadd_pd(e, ln2_lo, log_m));
    const __m512d z = _mm512_mul_pd(vp, log_x);
    // exp(z) = 2^k exp(r), r = z - k ln2
    const __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(z, inv_ln2), _MM_FROUND_TO_NEAREST_INT);
    const __m512d r = _mm512_fnmadd_pd(k, ln2_lo, _mm512_fnmadd_pd(k, ln2_hi, z));
    const __m512d value = _mm512_scalef_pd(horner(r, kExpSeries), k);
    const __m256 f = _mm512_cvtpd_ps(value);
    _mm256_storeu_ps(y + i, f);
    // distance from `value` to the midpoint between f and its neighbour on value's side
    const __m512d fd = _mm512_cvtps_pd(f);
    const __m512d diff = _mm512_sub_pd(value, fd);  // exact: value and fd are close
    const __m256i bits = _mm256_castps_si256(f);
    const __m512d next_up = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_add_epi32(bits, one_i)));
    const __m512d next_down = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_sub_epi32(bits, one_i)));
    const __mmask8 above = _mm512_cmp_pd_mask(diff, zero, _CMP_GT_OQ);
    const __m512d neighbour = _mm512_mask_blend_pd(above, next_down, next_up);
    const __m512d abs_diff = _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(diff), abs_mask));
    const __m512d gap = _mm512_castsi512_pd(
        _mm512_and_si512(_mm512_castpd_si512(_mm512_sub_pd(neighbour, fd)), abs_mask));
    const __m512d distance = _mm512_sub_pd(_mm512_mul_pd(gap, half), abs_diff);
    const __m512d abs_z = _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(z), abs_mask));
    const __m512d allowed = _mm512_mul_pd(value, _mm512_add_pd(margin0, _mm512_mul_pd(margin1, abs_z)));
    __mmask8 sure = _mm512_cmp_pd_mask(distance, allowed, _CMP_GT_OQ);
    sure &= _mm512_cmp_pd_mask(xd, flt_min, _CMP_GE_OQ) & _mm512_cmp_pd_mask(xd, flt_max, _CMP_LE_OQ);
    sure &= _mm512_cmp_pd_mask(value, flt_min, _CMP_GE_OQ) & _mm512_cmp_pd_mask(value, flt_max, _CMP_LT_OQ);
    sure &= _mm512_cmp_pd_mask(abs_z, max_z, _CMP_LE_OQ);
    for (unsigned unsure = static_cast<unsigned>(~sure) & 0xffu; unsure; unsure &= unsure - 1) {
      const int j = __builtin_ctz(unsure);
      y[i + j] = std::pow(x[i + j], p);
    }
  }
  powx_scalar(n - i, x + i, p, y + i);
}

#endif  // CAFFEDATA_POWX_VECTOR

}  // namespace

void powx_float(int64_t n, const float* x, float p, float* y) {
#ifdef CAFFEDATA_POWX_VECTOR
  if (vector_path_usable()) {
    powx_avx512(n, x, p, y);
    return;
  }
#endif
  powx_scalar(n, x, p, y);
}

}  // namespace caffedata
