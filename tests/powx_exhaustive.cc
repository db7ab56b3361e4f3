// Every float x in [lo, hi): powx_float(x, p) against powf(x, p), bit for bit.
// Built and run by test_ops_powx.py:  powx_exhaustive LO HI P [P ...]
// Prints "<p> <values> <mismatches>" per exponent and exits 1 on any mismatch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "powx.h"

static uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

static float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s LO HI P [P ...]\n", argv[0]);
    return 2;
  }
  const uint32_t first = bits_of(std::strtof(argv[1], nullptr));
  const uint32_t last = bits_of(std::strtof(argv[2], nullptr));
  constexpr uint32_t kChunk = 4096;
  std::vector<float> x(kChunk), y(kChunk);
  int status = 0;
  for (int a = 3; a < argc; ++a) {
    const float p = std::strtof(argv[a], nullptr);
    uint64_t values = 0, mismatches = 0;
    for (uint32_t b = first; b < last; b += kChunk) {
      const uint32_t n = last - b < kChunk ? last - b : kChunk;
      for (uint32_t j = 0; j < n; ++j) x[j] = float_of(b + j);
      caffedata::powx_float(n, x.data(), p, y.data());
      for (uint32_t j = 0; j < n; ++j) {
        if (bits_of(y[j]) != bits_of(std::pow(x[j], p))) {
          if (mismatches < 5) std::fprintf(stderr, "x=%a p=%a: %a, powf %a\n", x[j], p, y[j], std::pow(x[j], p));
          ++mismatches;
        }
      }
      values += n;
    }
    std::printf("%g %llu %llu\n", p, static_cast<unsigned long long>(values),
                static_cast<unsigned long long>(mismatches));
    if (mismatches) status = 1;
  }
  return status;
}
