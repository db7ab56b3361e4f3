// A single-threaded float GEMM for AVX-512 CPUs, organised as BLIS/GotoBLAS do:
// op(A) is packed into panels of MR = 8 rows and a transposed op(B) into
// panels of NR = 32 columns, one KC-deep block at a time (a plain B is read in
// place, 32 columns at a time), and an 8x32 micro-kernel keeps its 16
// accumulator registers (two 16-float vectors per row) for the whole block.
// Edge tiles are computed into a scratch tile and copied out.
//
// Only this file is compiled for AVX-512 (function attributes); the library
// still loads on any x86-64, and avx512_sgemm_available() decides at run time.
#include "sgemm_avx512.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

namespace caffedata {

namespace {

constexpr int64_t MR = 8, NR = 32;
constexpr int64_t KC = 256;   // a B panel (KC x NR floats, 32 KB) stays in L1
constexpr int64_t MC = 128;   // an A block (MC x KC, 128 KB) stays in L2
constexpr int64_t NC = 2048;  // a B block (KC x NC, 2 MB) stays in L2/L3

#define CD_AVX512 __attribute__((target("avx512f")))

// dst[k * dst_stride + j] = src[j * src_stride + k] for j, k < 16, in registers:
// the transposing pack below moves 16 x 16 floats with 16 loads, 64 shuffles and
// 16 stores instead of 256 scalar stores (which made it slower than the
// multiplications it feeds when op(A) has few rows: a weight gradient).
CD_AVX512 inline void transpose_16x16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    _mm512_storeu_ps(dst + i * dst_stride, _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88));
    _mm512_storeu_ps(dst + (i + 8) * dst_stride, _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd));
  }
}

// A(ic:ic+mc, pc:pc+kc) as mc/MR panels, each kc steps of MR values (rows past M are 0).
// The loops follow op(A)'s memory order, so reads are contiguous either way; a plain
// A's rows are transposed 16 at a time (two panels), 16 steps a square.
CD_AVX512 void pack_a(const float* A, bool trans, int64_t M, int64_t K, int64_t ic, int64_t mc, int64_t pc,
                      int64_t kc, float* out) {
  int64_t p = 0;
  if (!trans) {
    alignas(64) float square[16 * 16];
    for (; p + 2 * MR <= mc; p += 2 * MR) {
      const float* rows = A + (ic + p) * K + pc;
      float* first = out + p * kc;  // panel p; panel p + MR follows it, kc * MR floats on
      int64_t k = 0;
      for (; k + 16 <= kc; k += 16) {
        transpose_16x16(rows + k, K, square, 16);
        for (int64_t kk = 0; kk < 16; ++kk) {
          _mm256_storeu_ps(first + (k + kk) * MR, _mm256_load_ps(square + kk * 16));
          _mm256_storeu_ps(first + kc * MR + (k + kk) * MR, _mm256_load_ps(square + kk * 16 + 8));
        }
      }
      for (int64_t i = 0; i < 2 * MR; ++i)
        for (int64_t kk = k; kk < kc; ++kk) first[(i / MR) * kc * MR + kk * MR + i % MR] = rows[i * K + kk];
    }
  }
  for (; p < mc; p += MR) {
    const int64_t rows = std::min(MR, mc - p);
    float* o = out + p * kc;
    if (rows < MR) std::fill(o, o + kc * MR, 0.f);
    if (trans) {  // A is K x M: row k holds op(A)(., k)
      for (int64_t k = 0; k < kc; ++k)
        std::memcpy(o + k * MR, A + (pc + k) * M + ic + p, size_t(rows) * sizeof(float));
    } else {
      for (int64_t i = 0; i < rows; ++i) {
        const float* row = A + (ic + p + i) * K + pc;
        for (int64_t k = 0; k < kc; ++k) o[k * MR + i] = row[k];
      }
    }
  }
}

// B(pc:pc+kc, jc:jc+nc) as nc/NR panels, each kc rows of NR values (columns past N are 0).
CD_AVX512 void pack_b(const float* B, bool trans, int64_t K, int64_t N, int64_t pc, int64_t kc, int64_t jc,
                      int64_t nc, float* out) {
  for (int64_t q = 0; q < nc; q += NR) {
    const int64_t cols = std::min(NR, nc - q);
    float* o = out + q * kc;
    if (cols < NR) std::fill(o, o + kc * NR, 0.f);
    if (trans) {  // B is N x K: row j holds op(B)(., j)
      int64_t j = 0, k = 0;
      for (; j + 16 <= cols; j += 16) {  // whole 16 x 16 squares
        const float* rows = B + (jc + q + j) * K + pc;
        for (k = 0; k + 16 <= kc; k += 16) transpose_16x16(rows + k, K, o + k * NR + j, NR);
        for (int64_t jj = j; jj < j + 16; ++jj)
          for (int64_t kk = k; kk < kc; ++kk) o[kk * NR + jj] = B[(jc + q + jj) * K + pc + kk];
      }
      for (; j < cols; ++j) {
        const float* row = B + (jc + q + j) * K + pc;
        for (int64_t kk = 0; kk < kc; ++kk) o[kk * NR + j] = row[kk];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        std::memcpy(o + k * NR, B + (pc + k) * N + jc + q, size_t(cols) * sizeof(float));
    }
  }
}

// C(8x32, stride ldc) = alpha * Ap * B + beta * C, over kc steps; beta == 0 does not read C.
// Step k's two 16-float vectors of B are at b0 + offset and b1 + offset, where offset is
// k * ldb (a packed panel, ldb = NR, or a plain row-major B, ldb = N; b1 = b0 + 16) or,
// with kRowOffsets, row_offset[k] (an implicit B, avx512_sgemm_implicit_b).
template <bool kRowOffsets>
CD_AVX512 void micro_kernel(int64_t kc, const float* Ap, const float* b0, const float* b1, int64_t ldb,
                            const int64_t* row_offset, float* C, int64_t ldc, float alpha, float beta) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t offset = kRowOffsets ? row_offset[k] : k * ldb;
    const __m512 v0 = _mm512_loadu_ps(b0 + offset), v1 = _mm512_loadu_ps(b1 + offset);
    const float* a = Ap + k * MR;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      c0[i] = _mm512_fmadd_ps(ai, v0, c0[i]);
      c1[i] = _mm512_fmadd_ps(ai, v1, c1[i]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    __m512 r0 = _mm512_mul_ps(c0[i], va), r1 = _mm512_mul_ps(c1[i], va);
    if (beta != 0.f) {
      r0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c), r0);
      r1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + 16), r1);
    }
    _mm512_storeu_ps(c, r0);
    _mm512_storeu_ps(c + 16, r1);
  }
}

CD_AVX512 inline void kernel_8x32(int64_t kc, const float* Ap, const float* B, int64_t ldb, float* C,
                                  int64_t ldc, float alpha, float beta) {
  micro_kernel<false>(kc, Ap, B, B + 16, ldb, nullptr, C, ldc, alpha, beta);
}

struct Scratch {
  float* a = nullptr;
  float* b = nullptr;
  Scratch() {
    a = static_cast<float*>(std::aligned_alloc(64, MC * KC * sizeof(float)));
    b = static_cast<float*>(std::aligned_alloc(64, KC * NC * sizeof(float)));
    if (!a || !b) {
      std::free(a);
      std::free(b);
      throw std::bad_alloc();
    }
  }
  ~Scratch() {
    std::free(a);
    std::free(b);
  }
};

// One pair of packing buffers per thread, shared by both GEMMs: the exact
// Convolution calls them from every OpenMP thread at once.
Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

bool avx512_sgemm_available() {
  static const bool available = [] {
    const char* choice = std::getenv("CAFFEDATA_GEMM");
    if (choice && std::strcmp(choice, "blas") == 0) return false;
    __builtin_cpu_init();
    return bool(__builtin_cpu_supports("avx512f"));
  }();
  return available;
}

namespace {

// The blocked product shared by avx512_sgemm and avx512_sgemm_gather_b: op(B)'s
// columns [0, direct_cols) of each NC block are read in place from direct_b
// (a plain row-major B); the rest are packed by pack_b_block(pc, kc, j0, n, out).
template <class PackB>
CD_AVX512 void sgemm_blocks(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                            const float* direct_b, float beta, float* C, PackB pack_b_block) {
  Scratch& scratch = thread_scratch();
  alignas(64) float tile[MR * NR];
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const float block_beta = pc == 0 ? beta : 1.f;  // later K blocks add to what the first wrote
      const int64_t direct_cols = direct_b ? nc / NR * NR : 0;
      if (direct_cols < nc) pack_b_block(pc, kc, jc + direct_cols, nc - direct_cols, scratch.b);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = std::min(MC, M - ic);
        pack_a(A, trans_a, M, K, ic, mc, pc, kc, scratch.a);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t cols = std::min(NR, nc - jr);
          const bool direct = jr < direct_cols;
          const float* bp = direct ? direct_b + pc * N + jc + jr : scratch.b + (jr - direct_cols) * kc;
          const int64_t ldb = direct ? N : NR;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t rows = std::min(MR, mc - ir);
            float* c = C + (ic + ir) * N + jc + jr;
            const float* ap = scratch.a + ir * kc;
            if (rows == MR && cols == NR) {
              kernel_8x32(kc, ap, bp, ldb, c, N, alpha, block_beta);
              continue;
            }
            kernel_8x32(kc, ap, bp, ldb, tile, NR, alpha, 0.f);
            for (int64_t i = 0; i < rows; ++i) {
              for (int64_t j = 0; j < cols; ++j) {
                c[i * N + j] = block_beta == 0.f ? tile[i * NR + j] : tile[i * NR + j] + block_beta * c[i * N + j];
              }
            }
          }
        }
      }
    }
  }
}

// Columns [j0, j0 + nc) of op(B)(pc:pc+kc, .) = src[row_offset[j] + column_offset[k]] as
// pack_b lays a transposed B out: each step k of a panel is two 16-wide gathers.
CD_AVX512 void pack_b_gather(const float* src, const int32_t* row_offset, const int32_t* column_offset, int64_t pc,
                             int64_t kc, int64_t j0, int64_t nc, float* out) {
  for (int64_t q = 0; q < nc; q += NR) {
    const int64_t cols = std::min(NR, nc - q);
    const __mmask16 m0 = static_cast<__mmask16>(cols >= 16 ? 0xffffu : (1u << cols) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(cols >= 32 ? 0xffffu : cols > 16 ? (1u << (cols - 16)) - 1 : 0u);
    const __m512i r0 = _mm512_maskz_loadu_epi32(m0, row_offset + j0 + q);
    const __m512i r1 = _mm512_maskz_loadu_epi32(m1, row_offset + j0 + q + 16);
    const __m512 zero = _mm512_setzero_ps();
    float* o = out + q * kc;
    for (int64_t k = 0; k < kc; ++k) {
      const __m512i column = _mm512_set1_epi32(column_offset[pc + k]);
      _mm512_storeu_ps(o + k * NR, _mm512_mask_i32gather_ps(zero, m0, _mm512_add_epi32(r0, column), src, 4));
      _mm512_storeu_ps(o + k * NR + 16, _mm512_mask_i32gather_ps(zero, m1, _mm512_add_epi32(r1, column), src, 4));
    }
  }
}

}  // namespace

CD_AVX512 void avx512_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                            const float* A, const float* B, float beta, float* C) {
  if (alpha == 0.f) {  // as BLAS: C = beta * C, without reading A or B (0 * inf would be NaN)
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == 0.f ? 0.f : beta * C[i];
    return;
  }
  // A plain B is read in place, NR columns at a time; only a transposed B and
  // the last, narrower columns are packed.
  sgemm_blocks(trans_a, M, N, K, alpha, A, trans_b ? nullptr : B, beta, C,
               [&](int64_t pc, int64_t kc, int64_t j0, int64_t nc, float* out) {
                 pack_b(B, trans_b, K, N, pc, kc, j0, nc, out);
               });
}

CD_AVX512 void avx512_sgemm_gather_b(int64_t M, int64_t N, int64_t K, const float* A, const float* src,
                                     const int32_t* row_offset, const int32_t* column_offset, float beta, float* C) {
  sgemm_blocks(false, M, N, K, 1.f, A, nullptr, beta, C,
               [&](int64_t pc, int64_t kc, int64_t j0, int64_t nc, float* out) {
                 pack_b_gather(src, row_offset, column_offset, pc, kc, j0, nc, out);
               });
}

CD_AVX512 void avx512_sgemm_implicit_b(int64_t M, int64_t K, const float* A, const float* src,
                                       const int64_t* row_offset, const int64_t* column_start, int64_t V, float* C,
                                       int64_t ldc) {
  Scratch& scratch = thread_scratch();
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    const float block_beta = pc == 0 ? 0.f : 1.f;  // later K blocks add to what the first wrote
    for (int64_t ic = 0; ic < M; ic += MC) {
      const int64_t mc = std::min(MC, M - ic);
      pack_a(A, false, M, K, ic, mc, pc, kc, scratch.a);  // rows past M are packed as 0
      for (int64_t v = 0; v < V; v += 2) {
        const float* b0 = src + column_start[v];
        const float* b1 = src + column_start[v + 1 < V ? v + 1 : v];  // an odd last vector: computed twice
        for (int64_t ir = 0; ir < mc; ir += MR)
          micro_kernel<true>(kc, scratch.a + ir * kc, b0, b1, 0, row_offset + pc, C + (ic + ir) * ldc + v * 16, ldc,
                             1.f, block_beta);
      }
    }
  }
}

}  // namespace caffedata
